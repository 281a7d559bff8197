/* ban.c - the kernel ban sets (ban4, ban6 in prism's nft table): add, delete
 * and list sources with a timeout. Adds, deletes and the lookup of one
 * source's ban are nf_tables messages built with libnftnl, on a netlink
 * socket the caller may keep (the ban thread does: a ban then needs no new
 * fd, and connections can hold every fd during the floods that cause
 * bans). Lists go through libnftables, which parses and prints the set.
 *
 * The sets themselves are declared by netsetup_nft.c; this file only edits their
 * elements. The kernel expires each element by itself, so a ban ends on time
 * even when prism is gone.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <nftables/libnftables.h>

#include "addr.h"
#include "ban.h"
#include "netsetup.h"
#include "nl.h"

/* The result of one libnftables run: its output and its error text. */
struct nft_res {
	char *out; /* malloc'd, or NULL */
	char *err; /* malloc'd first error, trimmed, or NULL */
};

static void nft_res_free(struct nft_res *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

/* Runs <cmd>. Returns 0, -EINVAL when nft refused it (text in r->err), or
 * -ENOMEM.
 */
static int nft_exec(const char *cmd, struct nft_res *r)
{
	struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	const char *o, *e;
	int ret = 0;

	r->out = r->err = NULL;
	if (!ctx)
		return -ENOMEM;
	if (nft_ctx_buffer_output(ctx) != 0 || nft_ctx_buffer_error(ctx) != 0) {
		ret = -ENOMEM;
		goto out;
	}
	if (nft_run_cmd_from_buffer(ctx, cmd) != 0)
		ret = -EINVAL;
	o = nft_ctx_get_output_buffer(ctx);
	e = nft_ctx_get_error_buffer(ctx);
	if (o && *o && !(r->out = strdup(o)))
		ret = -ENOMEM;
	if (ret == -EINVAL) {
		size_t n = e ? strlen(e) : 0;
		const char *next = n ? strstr(e + 1, "\nError:") : NULL;

		/* The first error is the cause; nft follows it with the
		 * command and a caret line, which say nothing to a user of
		 * `prism ban`.
		 */
		if (next)
			n = (size_t)(next - e);
		if (n && memchr(e, '\n', n))
			n = (size_t)((const char *)memchr(e, '\n', n) - e);
		if (asprintf(&r->err, "%.*s", (int)n,
			     n ? e : "nftables failed without a message") == -1)
			r->err = NULL;
	}
out:
	nft_ctx_free(ctx);
	return ret;
}

/* Maps nft's error text to an errno: libnftables reports the kernel's
 * strerror() inside its message and no number.
 */
static int nft_errno(const char *msg)
{
	if (!msg)
		return -EINVAL;
	if (strstr(msg, strerror(ENOENT)))
		return -ENOENT;
	if (strstr(msg, strerror(EPERM)))
		return -EPERM;
	return -EINVAL;
}

/* The socket of one exchange: <keep>, the caller's, opened now if it is
 * closed and emptied of what an exchange that failed left queued; or, when
 * <keep> is NULL, a new one in <tmp> (zeroed), which the caller closes.
 * NULL with -errno in <*ret> when there is none.
 */
static struct nl *sock_for(struct nl *keep, struct nl *tmp, int *ret)
{
	struct nl *nl = keep ? keep : tmp;

	*ret = 0;
	if (nl->sock && nl_drain(nl) < 0)
		nl_close(nl);
	if (!nl->sock && (*ret = nl_open(nl, NETLINK_NETFILTER, NULL)) < 0)
		return NULL;
	return nl;
}

/* Whether table <table> has set <set>: 0, -ENOENT, or another -errno. The
 * set alone, without its elements (which `list set` would fetch).
 */
static int set_get(struct nl *nl, const char *table, const char *set)
{
	struct nftnl_set *s = nftnl_set_alloc();
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	int ret = -ENOMEM;

	if (!s)
		return ret;
	if (nftnl_set_set_str(s, NFTNL_SET_TABLE, table) == 0 &&
	    nftnl_set_set_str(s, NFTNL_SET_NAME, set) == 0) {
		nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSET, NFPROTO_INET, NLM_F_ACK, 0);
		nftnl_set_nlmsg_build_payload(nlh, s);
		ret = nl_talk(nl, nlh, NULL, NULL);
	}
	nftnl_set_free(s);
	return ret;
}

/* After a failed edit or list of the ban sets (<code>: -errno; <detail>:
 * what failed, nft's text or strerror): says whether the table or its ban
 * sets are missing, which is what a user most likely hit, else "<what>:
 * <detail>". <nl>: a socket to ask on, or NULL for one of its own.
 */
static int explain(struct nl *nl, const char *table, int code, const char *what, const char *detail,
		   char **err)
{
	struct nl tmp = {0};
	int r;

	if (code == -EPERM)
		return net_set_err(err, -EPERM, "%s: %s (editing the ban sets needs CAP_NET_ADMIN)",
				   what, detail);
	if (code == -ENOENT || code == -EINVAL) {
		nl = sock_for(nl, &tmp, &r);
		r = nl ? set_get(nl, table, "ban4") : r;
		nl_close(&tmp);
		if (r == -ENOENT)
			return net_set_err(
			    err, -ESRCH,
			    "prism's table %s is not loaded (or has no ban sets): is "
			    "prism running / net up?",
			    table);
	}
	return net_set_err(err, code, "%s: %s", what, detail);
}

/* Parses nft's time format ("1d2h3m4s500ms", as `list set` prints a
 * timeout or an expiry) into milliseconds. Returns the characters read, 0
 * when there is no duration at <s>.
 */
static size_t parse_nft_time(const char *s, uint64_t *ms)
{
	const char *p = s;

	*ms = 0;
	while (*p >= '0' && *p <= '9') {
		uint64_t v = 0, unit;

		while (*p >= '0' && *p <= '9')
			v = v * 10 + (uint64_t)(*p++ - '0');
		if (p[0] == 'm' && p[1] == 's') {
			unit = 1;
			p += 2;
		} else if (*p == 'd') {
			unit = 86400000;
			p++;
		} else if (*p == 'h') {
			unit = 3600000;
			p++;
		} else if (*p == 'm') {
			unit = 60000;
			p++;
		} else if (*p == 's') {
			unit = 1000;
			p++;
		} else {
			break;
		}
		*ms += v * unit;
	}
	return (size_t)(p - s);
}

struct ban_seen {
	uint64_t left;
	bool found;
};

static int elem_left(struct nftnl_set_elem *e, void *data)
{
	struct ban_seen *b = data;

	b->found = true;
	b->left = nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION)
		      ? nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION)
		      : UINT64_MAX;
	return 0;
}

static int ban_seen(const struct nlmsghdr *nlh, void *data)
{
	struct ban_seen *b = data;
	struct nftnl_set *s = nftnl_set_alloc();

	if (!s) {
		errno = ENOMEM;
		return MNL_CB_ERROR;
	}
	if (nftnl_set_elems_nlmsg_parse(nlh, s) < 0) {
		nftnl_set_free(s);
		errno = EBADMSG;
		return MNL_CB_ERROR;
	}
	nftnl_set_elem_foreach(s, elem_left, b);
	nftnl_set_free(s);
	return MNL_CB_OK;
}

/* The time left of the ban of <src>'s source, asked on <nl>: 0 and
 * <*left> (UINT64_MAX when it never ends), -ENOENT when there is none (nor
 * the set or table), or another -errno when the kernel could not be asked
 * (the add that follows says why). One element from the kernel: `get
 * element` through libnftables would fetch the whole set first (0.4 s
 * with 60,000 bans, and the ban thread asks before each ban its own record
 * does not cover).
 */
static int ban_left(struct nl *nl, const char *table, const struct in6_addr *src, uint64_t *left)
{
	struct in6_addr k = addr_source(src);
	bool v4 = addr_is_v4(&k);
	struct ban_seen seen = {.left = UINT64_MAX};
	struct nftnl_set *s = nftnl_set_alloc();
	struct nftnl_set_elem *e = nftnl_set_elem_alloc();
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	int ret = -ENOMEM;

	if (!s || !e)
		goto out;
	if (nftnl_set_set_str(s, NFTNL_SET_TABLE, table) ||
	    nftnl_set_set_str(s, NFTNL_SET_NAME, v4 ? "ban4" : "ban6") ||
	    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, v4 ? &k.s6_addr[12] : k.s6_addr, v4 ? 4 : 16))
		goto out;
	nftnl_set_elem_add(s, e);
	e = NULL;
	nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_ACK, 0);
	nftnl_set_elems_nlmsg_build_payload(nlh, s);
	ret = nl_talk(nl, nlh, ban_seen, &seen);
	if (ret == 0 && !seen.found)
		ret = -ENOENT;
	if (ret == 0)
		*left = seen.left;
out:
	if (e)
		nftnl_set_elem_free(e);
	if (s)
		nftnl_set_free(s);
	return ret;
}

/* One message of a transaction on a source's element of its ban set. */
struct elem_op {
	uint16_t type;	     /* NFT_MSG_NEWSETELEM or NFT_MSG_DELSETELEM */
	uint16_t flags;	     /* NLM_F_CREATE, NLM_F_EXCL */
	uint32_t timeout_ms; /* 0: none */
};

/* The most messages of one transaction, and room for them: each is about
 * 100 bytes (a table name has at most 31).
 */
#define TXN_OPS	 3
#define TXN_SIZE 1024

/* Runs <ops> on the element of <src>'s source (its set: ban4 or ban6 of
 * <table>) as one nf_tables transaction on <nl>: all of them or none.
 * Returns 0, the first error the kernel reports (-EEXIST from a create;
 * -ENOENT: no such element, set or table; -ENFILE: the set is full;
 * -EPERM...), or -errno when the socket failed.
 */
static int elem_txn(struct nl *nl, const char *table, const struct in6_addr *src,
		    const struct elem_op *ops, unsigned n)
{
	struct in6_addr k = addr_source(src);
	bool v4 = addr_is_v4(&k);
	char out[TXN_SIZE], buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	unsigned seq0, acked = 0;
	size_t len;
	int err = 0;

	if (n > TXN_OPS)
		return -E2BIG;
	seq0 = ++nl->seq;
	nlh = nftnl_batch_begin(out, seq0);
	len = nlh->nlmsg_len;
	for (unsigned i = 0; i < n; i++) {
		struct nftnl_set *s = nftnl_set_alloc();
		struct nftnl_set_elem *e = nftnl_set_elem_alloc();

		if (!s || !e || nftnl_set_set_str(s, NFTNL_SET_TABLE, table) ||
		    nftnl_set_set_str(s, NFTNL_SET_NAME, v4 ? "ban4" : "ban6") ||
		    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, v4 ? &k.s6_addr[12] : k.s6_addr,
				       v4 ? 4 : 16)) {
			if (e)
				nftnl_set_elem_free(e);
			if (s)
				nftnl_set_free(s);
			return -ENOMEM;
		}
		if (ops[i].timeout_ms)
			nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, ops[i].timeout_ms);
		nftnl_set_elem_add(s, e);
		/* An ack for each message: the transaction is answered when
		 * every one has its own.
		 */
		nlh = nftnl_nlmsg_build_hdr(out + len, ops[i].type, NFPROTO_INET,
					    ops[i].flags | NLM_F_ACK, ++nl->seq);
		nftnl_set_elems_nlmsg_build_payload(nlh, s);
		nftnl_set_free(s);
		len += nlh->nlmsg_len;
	}
	nlh = nftnl_batch_end(out + len, ++nl->seq);
	len += nlh->nlmsg_len;
	if (mnl_socket_sendto(nl->sock, out, len) == -1)
		return -errno;
	/* The kernel runs the transaction while it receives it, and then has
	 * queued every answer: an ack or an error per message, after an
	 * error for the transaction as a whole if there is one (no
	 * permission: under <seq0>; a failed commit, or no memory for the
	 * answers: under the first message's number, and then it may be the
	 * only answer). After an error, the rest is read without waiting.
	 */
	for (;;) {
		ssize_t r =
		    err ? nl_recv_nowait(nl, buf, sizeof(buf)) : nl_recv(nl, buf, sizeof(buf));
		int left;

		if (r == -1)
			return err ? err : -errno;
		left = (int)r;
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; mnl_nlmsg_ok(m, left);
		     m = mnl_nlmsg_next(m, &left)) {
			const struct nlmsgerr *e;

			if (m->nlmsg_type != NLMSG_ERROR || m->nlmsg_seq - seq0 > n)
				continue;
			if (m->nlmsg_len < mnl_nlmsg_size(sizeof(*e)))
				return -EBADMSG;
			e = mnl_nlmsg_get_payload(m);
			if (e->error && !err)
				err = e->error < 0 ? e->error : -EPROTO;
			if (m->nlmsg_seq != seq0)
				acked++;
		}
		if (!err && acked >= n)
			return 0;
	}
}

int ban_add(struct nl *keep, const char *table, const struct in6_addr *src, uint32_t duration_ms,
	    uint64_t *kept_ms, char **err)
{
	/* On older kernels (Debian 12's 6.1) "add" leaves an existing
	 * element's timeout as it was; newer ones (6.18 here) set the new
	 * one. To refresh it on either, make sure the element exists, delete
	 * it, add it anew: one transaction, so the source is never unbanned
	 * in between. A source the kernel just said it holds no ban for
	 * gets a create alone. Either takes about 10 us on a kept socket
	 * (`bench/ban_bench.c`); a socket of the call's own costs about 14
	 * ms more when a transaction that deleted an element closes it, and
	 * so does a transaction the kernel aborts (the create's EEXIST, a
	 * full set).
	 */
	const struct elem_op refresh[] = {
	    {NFT_MSG_NEWSETELEM, NLM_F_CREATE, 0},
	    {NFT_MSG_DELSETELEM, 0, 0},
	    {NFT_MSG_NEWSETELEM, NLM_F_CREATE, duration_ms},
	};
	/* Should a ban appear since the kernel said none: EEXIST, and the
	 * refresh sets ours.
	 */
	const struct elem_op create = {NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, duration_ms};
	char name[ADDR_STRLEN], what[ADDR_STRLEN + 16];
	struct nl tmp = {0}, *nl;
	int ret = net_check_table(table, err);

	if (ret)
		return ret;
	/* A ban without an end would be a deny list entry that nothing in
	 * the config shows.
	 */
	if (duration_ms == 0)
		return net_set_err(err, -EINVAL, "a ban needs a duration");
	snprintf(what, sizeof(what), "cannot ban %s", addr_fmt_source(src, name));
	nl = sock_for(keep, &tmp, &ret);
	if (!nl)
		return net_set_err(err, ret, "%s: %s", what, strerror(-ret));
	ret = -EEXIST;
	if (kept_ms) {
		int left = ban_left(nl, table, src, kept_ms);

		if (left == 0 && *kept_ms >= duration_ms) {
			ret = 1;
			goto out;
		}
		if (left == -ENOENT)
			ret = elem_txn(nl, table, src, &create, 1);
	}
	if (ret == -EEXIST)
		ret = elem_txn(nl, table, src, refresh, sizeof(refresh) / sizeof(refresh[0]));
	if (ret == -ENFILE || ret == -ENOSPC)
		/* A full set: the kernel says ENFILE ("Too many open files
		 * in system"), older ones ENOSPC.
		 */
		ret = net_set_err(err, -ENOSPC, "%s: the set ban%c of table %s is full", what,
				  addr_is_v4(src) ? '4' : '6', table);
	else if (ret < 0)
		ret = explain(nl, table, ret, what, strerror(-ret), err);
out:
	nl_close(&tmp);
	return ret;
}

int ban_get(struct nl *keep, const char *table, const struct in6_addr *src, uint64_t *left_ms)
{
	struct nl tmp = {0}, *nl;
	int ret;

	nl = sock_for(keep, &tmp, &ret);
	if (nl)
		ret = ban_left(nl, table, src, left_ms);
	nl_close(&tmp);
	return ret;
}

int ban_del(const char *table, const struct in6_addr *src, char **err)
{
	const struct elem_op del = {NFT_MSG_DELSETELEM, 0, 0};
	char name[ADDR_STRLEN], what[ADDR_STRLEN + 16];
	struct nl tmp = {0}, *nl;
	int ret = net_check_table(table, err);

	if (ret)
		return ret;
	snprintf(what, sizeof(what), "cannot unban %s", addr_fmt_source(src, name));
	nl = sock_for(NULL, &tmp, &ret);
	if (!nl)
		return net_set_err(err, ret, "%s: %s", what, strerror(-ret));
	ret = elem_txn(nl, table, src, &del, 1);
	if (ret < 0) {
		ret = explain(nl, table, ret, what, strerror(-ret), err);
		/* The table is there, so ENOENT is about the element. */
		if (ret == -ENOENT && err) {
			free(*err);
			ret = net_set_err(err, -ENOENT, "%s is not banned", name);
		}
	}
	nl_close(&tmp);
	return ret;
}

/* Prints the elements of one `list set` output: "elements = { ADDR timeout
 * T expires E, ... }", over several lines when long, each address followed
 * by <suffix> ("/64" for ban6, whose elements are /64s). Returns the count.
 */
static int print_elems(const char *text, const char *suffix, FILE *out)
{
	const char *p = text ? strstr(text, "elements = {") : NULL;
	char addr[INET6_ADDRSTRLEN];
	bool have = false, exp = false;
	uint64_t expires = 0;
	int count = 0;

	if (!p)
		return 0;
	p += strlen("elements = {");
	for (;;) {
		size_t n;

		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		if (*p == ',' || *p == '}' || *p == '\0') {
			/* The end of one element: print it. */
			if (have) {
				if (exp)
					fprintf(out, "%s%s expires in %llus\n", addr, suffix,
						(unsigned long long)((expires + 999) / 1000));
				else
					fprintf(out, "%s%s never expires\n", addr, suffix);
				count++;
			}
			have = exp = false;
			if (*p != ',')
				break;
			p++;
			continue;
		}
		n = strcspn(p, " \t\n,}");
		if (!have) {
			snprintf(addr, sizeof(addr), "%.*s", (int)n, p);
			have = true;
		} else if (n == 7 && !strncmp(p, "expires", 7)) {
			p += n;
			while (*p == ' ')
				p++;
			n = parse_nft_time(p, &expires);
			exp = true;
		}
		/* "timeout T" and anything newer nft prints are skipped. */
		p += n ? n : 1;
	}
	return count;
}

int ban_list(const char *table, FILE *out, char **err)
{
	int count = 0, ret = net_check_table(table, err);

	if (ret)
		return ret;
	for (char d = '4'; d <= '6'; d += 2) {
		char *cmd = NULL;
		struct nft_res r;

		if (asprintf(&cmd, "list set inet %s ban%c", table, d) == -1)
			return net_set_err(err, -ENOMEM, "out of memory");
		ret = nft_exec(cmd, &r);
		free(cmd);
		if (ret == -EINVAL)
			ret = explain(NULL, table, nft_errno(r.err), "cannot list the bans",
				      r.err ? r.err : "nftables failed", err);
		else if (ret)
			ret = net_set_err(err, ret, "cannot list the bans: %s", strerror(-ret));
		if (ret == 0)
			count += print_elems(r.out, d == '6' ? "/64" : "", out);
		nft_res_free(&r);
		if (ret)
			return ret;
	}
	errno = 0; /* what a failed write sets, not what came before */
	if (fflush(out) != 0 || ferror(out))
		return net_set_err(err, errno ? -errno : -EIO, "cannot write the list: %s",
				   strerror(errno ? errno : EIO));
	return count;
}

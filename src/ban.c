/* ban.c - the kernel ban sets (ban4, ban6 in prism's nft table): add, delete
 * and list sources with a timeout, through libnftables; one source's ban is
 * read through libnftnl (ban_left), as libnftables would fetch the whole
 * set for it.
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
	if (strstr(msg, strerror(EEXIST)))
		return -EEXIST;
	/* A full set: the kernel says ENFILE ("Too many open files in
	 * system"), older ones ENOSPC. Either means full here: no ban
	 * command opens a file.
	 */
	if (strstr(msg, strerror(ENOSPC)) || strstr(msg, strerror(ENFILE)))
		return -ENOSPC;
	return -EINVAL;
}

/* Whether table <table> has set <set>: 0, -ENOENT, or another -errno. The
 * set alone, without its elements (which `list set` would fetch).
 */
static int set_get(const char *table, const char *set)
{
	struct nftnl_set *s = nftnl_set_alloc();
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	struct nl nl = {0};
	int ret = -ENOMEM;

	if (!s)
		return ret;
	if (nftnl_set_set_str(s, NFTNL_SET_TABLE, table) == 0 &&
	    nftnl_set_set_str(s, NFTNL_SET_NAME, set) == 0) {
		nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSET, NFPROTO_INET, NLM_F_ACK, 0);
		nftnl_set_nlmsg_build_payload(nlh, s);
		ret = nl_open(&nl, NETLINK_NETFILTER, NULL);
		if (ret == 0)
			ret = nl_talk(&nl, nlh, NULL, NULL);
		nl_close(&nl);
	}
	nftnl_set_free(s);
	return ret;
}

/* After a failed command: says whether the table or its ban sets are
 * missing, which is what a user most likely hit, else passes nft's text on.
 */
static int explain(const char *table, const char *cmd_err, char **err)
{
	int code = nft_errno(cmd_err);

	if (code == -EPERM)
		return net_set_err(err, -EPERM, "%s (editing the ban sets needs CAP_NET_ADMIN)",
				   cmd_err);
	if (set_get(table, "ban4") != 0)
		return net_set_err(err, -ESRCH,
				   "prism's table %s is not loaded (or has no ban sets): is prism "
				   "running / net up?",
				   table);
	return net_set_err(err, code, "%s", cmd_err ? cmd_err : "nftables failed");
}

/* The set of <src>, its element's text (IPv4 from its v4-mapped form; an
 * IPv6 address's /64 as the /64's first address, which the ban rule
 * matches against the source masked to its /64, see addr_source) and
 * what messages call it ("2001:db8::/64").
 */
static char fmt_src(const struct in6_addr *src, char elem[INET6_ADDRSTRLEN], char name[ADDR_STRLEN])
{
	struct in6_addr k = addr_source(src);

	addr_fmt_source(src, name);
	if (addr_is_v4(&k)) {
		inet_ntop(AF_INET, &k.s6_addr[12], elem, INET6_ADDRSTRLEN);
		return '4';
	}
	inet_ntop(AF_INET6, &k, elem, INET6_ADDRSTRLEN);
	return '6';
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

/* The time left of the ban of <src>'s source: 0 and <*left> (UINT64_MAX
 * when it never ends), -ENOENT when there is none (nor the set or table),
 * or another -errno when the kernel could not be asked (the add that
 * follows says why). One element from the kernel: `get element` through
 * libnftables would fetch the whole set first (0.4 s with 60,000 bans,
 * and the ban thread asks before each ban its own record does not
 * cover).
 */
static int ban_left(const char *table, const struct in6_addr *src, uint64_t *left)
{
	struct in6_addr k = addr_source(src);
	bool v4 = addr_is_v4(&k);
	struct ban_seen seen = {.left = UINT64_MAX};
	struct nftnl_set *s = nftnl_set_alloc();
	struct nftnl_set_elem *e = nftnl_set_elem_alloc();
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	struct nl nl = {0};
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
	ret = nl_open(&nl, NETLINK_NETFILTER, NULL);
	if (ret == 0)
		ret = nl_talk(&nl, nlh, ban_seen, &seen);
	nl_close(&nl);
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

int ban_add(const char *table, const struct in6_addr *src, uint32_t duration_ms, uint64_t *kept_ms,
	    char **err)
{
	char a[INET6_ADDRSTRLEN], name[ADDR_STRLEN], d, *cmd = NULL;
	struct nft_res r;
	bool fresh = false;
	int ret = net_check_table(table, err);

	if (ret)
		return ret;
	/* A ban without an end would be a deny list entry that nothing in
	 * the config shows.
	 */
	if (duration_ms == 0)
		return net_set_err(err, -EINVAL, "a ban needs a duration");
	d = fmt_src(src, a, name);
	if (kept_ms) {
		ret = ban_left(table, src, kept_ms);
		if (ret == 0 && *kept_ms >= duration_ms)
			return 1;
		fresh = ret == -ENOENT;
	}
	/* On older kernels (Debian 12's 6.1) "add" leaves an existing
	 * element's timeout as it was; newer ones (6.18 here) set the new
	 * one. To refresh it on either, make sure the element exists, delete
	 * it, add it anew: one transaction, so the source is never unbanned
	 * in between. The delete makes the commit wait for an RCU grace
	 * period (about 14 ms here): a source the kernel just said it holds
	 * no ban for gets the add alone, so that the ban thread keeps up
	 * with a flood of sources (`bench/ban_bench.c`).
	 */
	if (fresh) {
		/* "create": should a ban appear since the kernel said none,
		 * EEXIST, and the transaction below sets ours.
		 */
		if (asprintf(&cmd, "create element inet %s ban%c { %s timeout %ums }\n", table, d,
			     a, duration_ms) == -1)
			return net_set_err(err, -ENOMEM, "out of memory");
		ret = nft_exec(cmd, &r);
		free(cmd);
		cmd = NULL;
		if (ret != -EINVAL || nft_errno(r.err) != -EEXIST)
			goto done;
		nft_res_free(&r);
	}
	if (asprintf(&cmd,
		     "add element inet %s ban%c { %s }\n"
		     "delete element inet %s ban%c { %s }\n"
		     "add element inet %s ban%c { %s timeout %ums }\n",
		     table, d, a, table, d, a, table, d, a, duration_ms) == -1)
		return net_set_err(err, -ENOMEM, "out of memory");
	ret = nft_exec(cmd, &r);
	free(cmd);
done:
	if (ret == -EINVAL && nft_errno(r.err) == -ENOSPC)
		ret = net_set_err(err, -ENOSPC, "cannot ban %s: the set ban%c of table %s is full",
				  name, d, table);
	else if (ret == -EINVAL)
		ret = explain(table, r.err, err);
	else if (ret)
		ret = net_set_err(err, ret, "cannot ban %s: %s", name, strerror(-ret));
	nft_res_free(&r);
	return ret;
}

int ban_get(const char *table, const struct in6_addr *src, uint64_t *left_ms)
{
	return ban_left(table, src, left_ms);
}

int ban_del(const char *table, const struct in6_addr *src, char **err)
{
	char a[INET6_ADDRSTRLEN], name[ADDR_STRLEN], d, *cmd = NULL;
	struct nft_res r;
	int ret = net_check_table(table, err);

	if (ret)
		return ret;
	d = fmt_src(src, a, name);
	if (asprintf(&cmd, "delete element inet %s ban%c { %s }\n", table, d, a) == -1)
		return net_set_err(err, -ENOMEM, "out of memory");
	ret = nft_exec(cmd, &r);
	free(cmd);
	if (ret == -EINVAL) {
		ret = explain(table, r.err, err);
		/* The table is there, so ENOENT is about the element. */
		if (ret == -ENOENT && err) {
			free(*err);
			ret = net_set_err(err, -ENOENT, "%s is not banned", name);
		}
	} else if (ret) {
		ret = net_set_err(err, ret, "cannot unban %s: %s", name, strerror(-ret));
	}
	nft_res_free(&r);
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
			ret = explain(table, r.err, err);
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

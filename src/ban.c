/* ban.c - the kernel ban sets (ban4, ban6 in prism's nft table): add, delete
 * and list sources with a timeout. Adds, deletes and the lookup of one
 * source's ban are nf_tables messages built with libnftnl, on a netlink
 * socket the caller may keep (the ban thread does: a ban then needs no new
 * fd, and connections can hold every fd during the floods that cause
 * bans). Lists are dumps of the sets' elements, the same way.
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

#include "addr.h"
#include "ban.h"
#include "netsetup.h"
#include "nl.h"

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

/* Ban set ban4 (<v4>) or ban6 of table <table> as a message names it,
 * holding the element of <src>'s source with <timeout_ms> (0: none) when
 * <src> is not NULL. NULL: out of memory.
 */
static struct nftnl_set *ban_set(const char *table, bool v4, const struct in6_addr *src,
				 uint64_t timeout_ms)
{
	struct nftnl_set *s = nftnl_set_alloc();
	struct nftnl_set_elem *e = NULL;
	struct in6_addr k;

	if (!s || nftnl_set_set_str(s, NFTNL_SET_TABLE, table) ||
	    nftnl_set_set_str(s, NFTNL_SET_NAME, v4 ? "ban4" : "ban6"))
		goto fail;
	if (!src)
		return s;
	k = addr_source(src);
	e = nftnl_set_elem_alloc();
	if (!e ||
	    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, v4 ? &k.s6_addr[12] : k.s6_addr, v4 ? 4 : 16))
		goto fail;
	if (timeout_ms)
		nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
	nftnl_set_elem_add(s, e);
	return s;
fail:
	if (e)
		nftnl_set_elem_free(e);
	if (s)
		nftnl_set_free(s);
	return NULL;
}

/* Whether table <table> has set ban4: 0, -ENOENT, or another -errno. The
 * set alone, without its elements (which `list set` would fetch).
 */
static int set_get(struct nl *nl, const char *table)
{
	struct nftnl_set *s = ban_set(table, true, NULL, 0);
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;

	if (!s)
		return -ENOMEM;
	nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSET, NFPROTO_INET, NLM_F_ACK, 0);
	nftnl_set_nlmsg_build_payload(nlh, s);
	nftnl_set_free(s);
	return nl_talk(nl, nlh, NULL, NULL);
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
		r = nl ? set_get(nl, table) : r;
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

/* A walk over elements of a ban set as the kernel sends them: <fn> is
 * called with each one's source and time left, until it returns non-zero
 * (kept in <stop>).
 */
struct elem_walk {
	bool v4; /* the set: ban4 (4-byte keys) or ban6 (16) */
	int (*fn)(const struct ban_entry *b, void *arg);
	void *arg;
	int stop;
};

static int elem_visit(struct nftnl_set_elem *e, void *data)
{
	struct elem_walk *w = data;
	struct ban_entry b = {.left_ms = UINT64_MAX};
	uint32_t len = 0;
	const void *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &len);

	if (!key || len != (w->v4 ? 4u : 16u))
		return 0;
	if (w->v4) {
		b.src.s6_addr[10] = b.src.s6_addr[11] = 0xff;
		memcpy(&b.src.s6_addr[12], key, 4);
	} else {
		memcpy(b.src.s6_addr, key, 16);
	}
	if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION)) {
		b.left_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION);
		/* Expired while the kernel wrote it: put back with "timeout
		 * 0s", it would never end.
		 */
		if (b.left_ms == 0)
			return 0;
	}
	w->stop = w->fn(&b, w->arg);
	return w->stop ? -1 : 0;
}

/* nl_talk's callback for the messages of a get or a dump of elements. */
static int elems_cb(const struct nlmsghdr *nlh, void *data)
{
	struct elem_walk *w = data;
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
	nftnl_set_elem_foreach(s, elem_visit, w);
	nftnl_set_free(s);
	if (w->stop) {
		errno = ECANCELED;
		return MNL_CB_ERROR;
	}
	return MNL_CB_OK;
}

struct ban_seen {
	uint64_t left;
	bool found;
};

/* Keeps the walk going: the answer holds the one element asked for, and
 * nl_talk then reads on to the ack, leaving nothing queued.
 */
static int seen_left(const struct ban_entry *b, void *arg)
{
	struct ban_seen *seen = arg;

	seen->left = b->left_ms;
	seen->found = true;
	return 0;
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
	bool v4 = addr_is_v4(src);
	struct ban_seen seen = {0};
	struct elem_walk w = {.v4 = v4, .fn = seen_left, .arg = &seen};
	struct nftnl_set *s = ban_set(table, v4, src, 0);
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh;
	int ret;

	if (!s)
		return -ENOMEM;
	nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_ACK, 0);
	nftnl_set_elems_nlmsg_build_payload(nlh, s);
	nftnl_set_free(s);
	ret = nl_talk(nl, nlh, elems_cb, &w);
	if (ret == 0 && !seen.found)
		ret = -ENOENT;
	if (ret == 0)
		*left = seen.left;
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
	bool v4 = addr_is_v4(src);
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
		struct nftnl_set *s = ban_set(table, v4, src, ops[i].timeout_ms);

		if (!s)
			return -ENOMEM;
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

/* Calls <fn> for each ban of table <table>, ban4's then ban6's, until it
 * returns non-zero, which is then returned. Returns 0, or -errno with
 * *err (-ESRCH: the table or its ban sets are not loaded).
 */
static int ban_each(const char *table, int (*fn)(const struct ban_entry *b, void *arg), void *arg,
		    char **err)
{
	struct nl tmp = {0}, *nl;
	int ret = net_check_table(table, err);

	if (ret)
		return ret;
	nl = sock_for(NULL, &tmp, &ret);
	if (!nl)
		return net_set_err(err, ret, "cannot list the bans: %s", strerror(-ret));
	for (int v4 = 1; v4 >= 0 && ret == 0; v4--) {
		struct elem_walk w = {.v4 = v4, .fn = fn, .arg = arg};
		struct nftnl_set *s = ban_set(table, v4, NULL, 0);
		char buf[NL_BUFSZ];
		struct nlmsghdr *nlh;

		if (!s) {
			ret = net_set_err(err, -ENOMEM, "out of memory");
			break;
		}
		nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_DUMP, 0);
		nftnl_set_elems_nlmsg_build_payload(nlh, s);
		nftnl_set_free(s);
		ret = nl_talk(nl, nlh, elems_cb, &w);
		if (w.stop)
			ret = w.stop;
		else if (ret < 0)
			ret = explain(nl, table, ret, "cannot list the bans", strerror(-ret), err);
	}
	nl_close(&tmp);
	return ret;
}

struct ban_vec {
	struct ban_entry *v;
	size_t n, cap;
};

static int collect_ban(const struct ban_entry *b, void *arg)
{
	struct ban_vec *bv = arg;

	if (bv->n == bv->cap) {
		size_t cap = bv->cap ? bv->cap * 2 : 256;
		struct ban_entry *v = realloc(bv->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		bv->v = v;
		bv->cap = cap;
	}
	bv->v[bv->n++] = *b;
	return 0;
}

int ban_entry_cmp(const void *pa, const void *pb)
{
	const struct ban_entry *a = pa, *b = pb;
	int c = memcmp(&a->src, &b->src, sizeof(a->src));

	if (c)
		return c;
	return a->left_ms > b->left_ms ? -1 : a->left_ms < b->left_ms;
}

int ban_read(const char *table, struct ban_entry **out, size_t *n, char **err)
{
	struct ban_vec bv = {0};
	int ret = ban_each(table, collect_ban, &bv, err);

	if (ret == -ENOMEM && err && !*err)
		ret = net_set_err(err, ret, "cannot list the bans: out of memory");
	if (ret < 0) {
		free(bv.v);
		return ret;
	}
	if (bv.n)
		qsort(bv.v, bv.n, sizeof(*bv.v), ban_entry_cmp);
	*out = bv.v;
	*n = bv.n;
	return 0;
}

int ban_list(const char *table, FILE *out, char **err)
{
	struct ban_entry *v = NULL;
	size_t n = 0;
	int count = 0, ret = ban_read(table, &v, &n, err);

	if (ret < 0)
		return ret;
	for (size_t i = 0; i < n; i++) {
		const struct ban_entry *b = &v[i];
		const char *suffix = addr_is_v4(&b->src) ? "" : "/64";
		char a[ADDR_STRLEN];

		if (i && !memcmp(&b->src, &v[i - 1].src, sizeof(b->src)))
			continue;
		addr_fmt(&b->src, a);
		if (b->left_ms == UINT64_MAX)
			fprintf(out, "%s%s never expires\n", a, suffix);
		else
			fprintf(out, "%s%s expires in %llus\n", a, suffix,
				(unsigned long long)((b->left_ms + 999) / 1000));
		count++;
	}
	free(v);
	errno = 0; /* what a failed write sets, not what came before */
	if (fflush(out) != 0 || ferror(out))
		return net_set_err(err, errno ? -errno : -EIO, "cannot write the list: %s",
				   strerror(errno ? errno : EIO));
	return count;
}

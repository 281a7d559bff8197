/* netsetup.c - installs and removes the network state prism owns: AnyIP
 * "local" routes in table local (libmnl) and one nftables table that TPROXYs
 * claimed (address . port) pairs to the listener (libnftables).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <nftables/libnftables.h>

#include "addr.h"
#include "cfg.h"
#include "netsetup.h"
#include "rt.h"

/* ---- helpers ---------------------------------------------------------- */

/* Stores a malloc'd message in <*err> (NULL when even that fails: callers
 * print a generic message then) and returns <ret>.
 */
__attribute__((format(printf, 3, 4))) static int set_err(char **err, int ret, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return ret;
	va_start(ap, fmt);
	if (vasprintf(err, fmt, ap) == -1)
		*err = NULL;
	va_end(ap);
	return ret;
}

static bool is_mapped(const struct in6_addr *a)
{
	static const uint8_t pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	return memcmp(a->s6_addr, pfx, sizeof(pfx)) == 0;
}

static bool is_v4_prefix(const struct addr_prefix *p)
{
	return is_mapped(&p->addr) && p->len >= 96;
}

/* Formats a bare address: IPv4 from its v4-mapped form. */
static void fmt_addr(const struct in6_addr *a, bool v4, char *buf, size_t len)
{
	if (v4)
		inet_ntop(AF_INET, &a->s6_addr[12], buf, len);
	else
		inet_ntop(AF_INET6, a, buf, len);
}

/* Formats a prefix in its own family: "192.0.2.0/24", "2001:db8::/64". */
static void fmt_prefix(const struct addr_prefix *p, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];
	bool v4 = is_v4_prefix(p);

	fmt_addr(&p->addr, v4, a, sizeof(a));
	snprintf(buf, len, "%s/%u", a, v4 ? p->len - 96u : p->len);
}

/* Returns the prefix length (in the family's own bits) when [lo, hi] is
 * exactly one prefix, else -1. <bytes> is 4 or 16, <lo>/<hi> point at them.
 */
static int range_prefix_len(const uint8_t *lo, const uint8_t *hi, int bytes)
{
	int len = -1;

	for (int i = 0; i < bytes; i++) {
		uint8_t x = lo[i] ^ hi[i];

		if (len < 0) {
			if (x == 0)
				continue;
			/* First differing byte: the differing bits must be a
			 * run of trailing ones, zero in lo.
			 */
			if ((x & (x + 1)) != 0 || (lo[i] & x) != 0)
				return -1;
			len = i * 8 + 8 - __builtin_popcount(x);
		} else if (x != 0xff || lo[i] != 0) {
			return -1;
		}
	}
	return len < 0 ? bytes * 8 : len;
}

/* The table name is pasted into nft's language: accept only what its
 * scanner reads as one identifier, so a name can never inject a command.
 * cfg validates it too; this is the last line of defense.
 */
static int check_table(const char *t, char **err)
{
	size_t n = strlen(t);

	if (n == 0 || n > 64 || !((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z')))
		goto bad;
	for (size_t i = 1; i < n; i++) {
		char c = t[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			goto bad;
	}
	return 0;
bad:
	return set_err(err, -EINVAL,
		       "invalid nftables table name \"%s\" (a letter, then letters, digits, "
		       "_ - or .; at most 64)",
		       t);
}

/* ---- the nft script ---------------------------------------------------- */

struct elem_out {
	FILE *f;
	bool v4;
	size_t n;
};

static int print_elem(const struct rt_elem *e, void *arg)
{
	struct elem_out *o = arg;
	char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	int bytes = o->v4 ? 4 : 16, off = o->v4 ? 12 : 0;
	int plen = range_prefix_len(&e->lo.s6_addr[off], &e->hi.s6_addr[off], bytes);

	/* One element per line: a big config stays readable in `net show`,
	 * and nft parses newlines inside the braces as it does in its own
	 * `list ruleset` output.
	 */
	fputs(o->n++ ? ",\n\t\t\t" : "\t\telements = {\n\t\t\t", o->f);
	fmt_addr(&e->lo, o->v4, a, sizeof(a));
	if (plen == bytes * 8) {
		fputs(a, o->f);
	} else if (plen >= 0) {
		fprintf(o->f, "%s/%d", a, plen);
	} else {
		fmt_addr(&e->hi, o->v4, b, sizeof(b));
		fprintf(o->f, "%s-%s", a, b);
	}
	if (e->plo == e->phi)
		fprintf(o->f, " . %u", e->plo);
	else
		fprintf(o->f, " . %u-%u", e->plo, e->phi);
	return 0;
}

static void print_set(FILE *f, const struct cfg *cfg, bool v4)
{
	struct elem_out o = {.f = f, .v4 = v4};

	fprintf(f, "\tset claims%c {\n\t\ttype %s . inet_service; flags interval;\n",
		v4 ? '4' : '6', v4 ? "ipv4_addr" : "ipv6_addr");
	if (cfg->rt)
		rt_cover(cfg->rt, v4, print_elem, &o);
	/* nft rejects "elements = { }": an empty set simply has none. */
	if (o.n)
		fputs("\n\t\t}\n", f);
	fputs("\t}\n", f);
}

char *net_nft_script(const struct cfg *cfg)
{
	const char *t = cfg->nft_table;
	char a4[INET_ADDRSTRLEN], a6[INET6_ADDRSTRLEN];
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	inet_ntop(AF_INET, &cfg->listen4.sin_addr, a4, sizeof(a4));
	inet_ntop(AF_INET6, &cfg->listen6.sin6_addr, a6, sizeof(a6));

	/* One transaction: create the table if missing, delete it, build it
	 * anew. nft applies the whole buffer atomically, so the old rules stay
	 * in force until the new ones replace them, and a failure leaves the
	 * old table untouched.
	 */
	fprintf(f, "table inet %s\ndelete table inet %s\ntable inet %s {\n", t, t, t);
	print_set(f, cfg, true);
	if (cfg->listen6_on)
		print_set(f, cfg, false);
	/* Hook prerouting: TPROXY must act before the routing decision it
	 * steers to the local socket. Priority mangle (-150) is where the
	 * iptables TPROXY target lived and where nft documents it. tproxy
	 * needs an explicit "meta l4proto tcp" in family inet.
	 */
	fputs("\tchain prerouting {\n"
	      "\t\ttype filter hook prerouting priority mangle; policy accept;\n",
	      f);
	fprintf(f, "\t\tmeta l4proto tcp ip daddr . tcp dport @claims4 tproxy ip to %s:%u\n", a4,
		ntohs(cfg->listen4.sin_port));
	if (cfg->listen6_on)
		fprintf(
		    f,
		    "\t\tmeta l4proto tcp ip6 daddr . tcp dport @claims6 tproxy ip6 to [%s]:%u\n",
		    a6, ntohs(cfg->listen6.sin6_port));
	fputs("\t}\n}\n", f);

	if (ferror(f)) {
		fclose(f);
		free(buf);
		return NULL;
	}
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* Runs <script> in one libnftables context. On failure returns -EINVAL (nft
 * gives no errno) with "<what>: <nft's error text>" in <*err> (just the
 * text when <what> is NULL).
 */
static int nft_run(const char *script, const char *what, char **err)
{
	struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	int ret = 0;

	if (!ctx)
		return set_err(err, -ENOMEM, "%s: cannot create an nftables context",
			       what ? what : "nft");
	/* Capture both streams: nft's messages go into ours, not on stdout. */
	if (nft_ctx_buffer_error(ctx) != 0 || nft_ctx_buffer_output(ctx) != 0) {
		ret =
		    set_err(err, -ENOMEM, "%s: cannot buffer nftables output", what ? what : "nft");
		goto out;
	}
	if (nft_run_cmd_from_buffer(ctx, script) != 0) {
		const char *e = nft_ctx_get_error_buffer(ctx);
		size_t n = e ? strlen(e) : 0;
		const char *next = e ? strstr(e + (n ? 1 : 0), "\nError:") : NULL;

		/* The first error is the cause; the rest are mostly the
		 * parser losing its footing after it.
		 */
		if (next && (size_t)(next - e) < n)
			n = (size_t)(next - e);
		while (n > 0 && (e[n - 1] == '\n' || e[n - 1] == ' '))
			n--;
		ret = set_err(err, -EINVAL, "%s%s%.*s", what ? what : "", what ? ": " : "", (int)n,
			      n ? e : "nftables failed without a message");
	}
out:
	nft_ctx_free(ctx);
	return ret;
}

/* ---- netlink ------------------------------------------------------------ */

/* MNL_SOCKET_BUFFER_SIZE depends on the page size (a VLA); the kernel sends
 * dump batches of up to 32 KiB when the reader offers that much, as iproute2
 * does.
 */
#define NL_BUFSZ 32768

struct nl {
	struct mnl_socket *sock;
	unsigned int portid;
	unsigned int seq;
};

static int nl_open(struct nl *nl, char **err)
{
	struct timeval tmo = {.tv_sec = 10};
	int one = 1;

	nl->sock = mnl_socket_open(NETLINK_ROUTE);
	if (!nl->sock)
		return set_err(err, -errno, "cannot open a netlink socket: %s", strerror(errno));
	if (mnl_socket_bind(nl->sock, 0, MNL_SOCKET_AUTOPID) == -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return set_err(err, -e, "cannot bind a netlink socket: %s", strerror(e));
	}
	/* Bounds every wait for the kernel: an ack or a dump batch that
	 * never comes turns into EAGAIN instead of a hang.
	 */
	if (setsockopt(mnl_socket_get_fd(nl->sock), SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo)) ==
	    -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return set_err(err, -e, "cannot set a netlink socket timeout: %s", strerror(e));
	}
	/* Extended acks carry the kernel's sentence for an error ("Nexthop
	 * device is not up"); best effort, older kernels just give errno.
	 */
	mnl_socket_setsockopt(nl->sock, NETLINK_EXT_ACK, &one, sizeof(one));
	nl->portid = mnl_socket_get_portid(nl->sock);
	nl->seq = (unsigned int)time(NULL);
	return 0;
}

static void nl_close(struct nl *nl)
{
	if (nl->sock)
		mnl_socket_close(nl->sock);
	nl->sock = NULL;
}

static int extack_attr(const struct nlattr *attr, void *data)
{
	const char **msg = data;

	if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
	    mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0)
		*msg = mnl_attr_get_str(attr);
	return MNL_CB_OK;
}

/* Sends <nlh> with NLM_F_ACK and waits for its ack. Returns 0 or -errno;
 * the kernel's extended-ack sentence, if any, is copied to <why>.
 */
static int nl_request(struct nl *nl, struct nlmsghdr *nlh, char *why, size_t why_len)
{
	char buf[NL_BUFSZ];
	ssize_t r;
	int n;

	why[0] = '\0';
	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) == -1)
		return -errno;
	for (int tries = 0; tries < 16; tries++) {
		r = mnl_socket_recvfrom(nl->sock, buf, sizeof(buf));
		if (r == -1)
			return -errno;
		n = (int)r;
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; mnl_nlmsg_ok(m, n);
		     m = mnl_nlmsg_next(m, &n)) {
			struct nlmsgerr *e;
			const char *msg = NULL;
			size_t off;

			if (m->nlmsg_seq != nl->seq || m->nlmsg_type != NLMSG_ERROR)
				continue;
			if (m->nlmsg_len < mnl_nlmsg_size(sizeof(*e)))
				return -EBADMSG;
			e = mnl_nlmsg_get_payload(m);
			if (e->error == 0)
				return 0;
			if (m->nlmsg_flags & NLM_F_ACK_TLVS) {
				/* The TLVs follow the echoed request: just
				 * its header when capped, all of it if not.
				 */
				off = sizeof(*e);
				if (!(m->nlmsg_flags & NLM_F_CAPPED))
					off += e->msg.nlmsg_len - NLMSG_HDRLEN;
				if (mnl_nlmsg_size(off) <= m->nlmsg_len)
					mnl_attr_parse(m, (unsigned int)off, extack_attr, &msg);
				if (msg)
					snprintf(why, why_len, "%s", msg);
			}
			return e->error;
		}
	}
	return -EPROTO;
}

/* ---- routes --------------------------------------------------------------- */

static int prefix_cmp(const void *a, const void *b)
{
	const struct addr_prefix *x = a, *y = b;
	int c = memcmp(&x->addr, &y->addr, sizeof(x->addr));

	return c ? c : (int)x->len - (int)y->len;
}

/* Collects the distinct edge prefixes of all apps, sorted, into a malloc'd
 * array. Returns the count, or -ENOMEM.
 */
static long edge_prefixes(const struct cfg *cfg, struct addr_prefix **out)
{
	struct addr_prefix *v;
	size_t total = 0, n = 0;

	*out = NULL;
	for (size_t i = 0; i < cfg->n_apps; i++)
		total += cfg->apps[i].n_edges;
	if (total == 0)
		return 0;
	v = calloc(total, sizeof(*v));
	if (!v)
		return -ENOMEM;
	/* Without an IPv6 listener there is no IPv6 TPROXY rule, and a local
	 * route alone would only make the host itself answer (RST).
	 */
	for (size_t i = 0; i < cfg->n_apps; i++)
		for (size_t j = 0; j < cfg->apps[i].n_edges; j++)
			if (cfg->listen6_on || is_v4_prefix(&cfg->apps[i].edges[j]))
				v[n++] = cfg->apps[i].edges[j];
	qsort(v, n, sizeof(*v), prefix_cmp);
	total = n;
	n = 0;
	for (size_t i = 0; i < total; i++)
		if (n == 0 || prefix_cmp(&v[n - 1], &v[i]) != 0)
			v[n++] = v[i];
	if (n == 0) {
		free(v);
		return 0;
	}
	*out = v;
	return (long)n;
}

static void route_msg_init(struct nlmsghdr *nlh, uint16_t type, uint16_t flags,
			   const struct addr_prefix *p, unsigned int oif)
{
	bool v4 = is_v4_prefix(p);
	struct rtmsg *rtm;

	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | flags;
	rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = v4 ? AF_INET : AF_INET6;
	rtm->rtm_dst_len = v4 ? p->len - 96 : p->len;
	rtm->rtm_table = RT_TABLE_LOCAL;
	rtm->rtm_protocol = RTPROT_PRISM;
	rtm->rtm_scope = RT_SCOPE_HOST;
	rtm->rtm_type = RTN_LOCAL;
	if (v4)
		mnl_attr_put(nlh, RTA_DST, 4, &p->addr.s6_addr[12]);
	else
		mnl_attr_put(nlh, RTA_DST, 16, &p->addr);
	mnl_attr_put_u32(nlh, RTA_TABLE, RT_TABLE_LOCAL);
	mnl_attr_put_u32(nlh, RTA_OIF, oif);
}

/* Routes found by the dump, kept whole so each can be sent back as its own
 * RTM_DELROUTE (as `ip route flush` does): the kernel then matches exactly
 * that route, with its table, device and metric.
 */
struct route_list {
	struct nlmsghdr **v;
	size_t n, cap;
	int err;
	const struct addr_prefix *keep; /* sorted; routes to these stay */
	size_t n_keep;
};

static int dump_route(const struct nlmsghdr *nlh, void *data)
{
	struct route_list *l = data;
	const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *attr;
	struct addr_prefix dst = {0};
	uint32_t table;
	struct nlmsghdr *copy;

	if (nlh->nlmsg_type != RTM_NEWROUTE || nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*rtm)))
		return MNL_CB_OK;
	dst.len = rtm->rtm_dst_len;
	table = rtm->rtm_table;
	/* Tables above 255 exist only in RTA_TABLE; the kernel may not filter
	 * the dump for us, so check here.
	 */
	mnl_attr_for_each(attr, nlh, sizeof(*rtm))
	{
		if (mnl_attr_get_type(attr) == RTA_TABLE &&
		    mnl_attr_validate(attr, MNL_TYPE_U32) == 0)
			table = mnl_attr_get_u32(attr);
		if (mnl_attr_get_type(attr) == RTA_DST && rtm->rtm_family == AF_INET &&
		    mnl_attr_get_payload_len(attr) == 4)
			memcpy(&dst.addr.s6_addr[12], mnl_attr_get_payload(attr), 4);
		if (mnl_attr_get_type(attr) == RTA_DST && rtm->rtm_family == AF_INET6 &&
		    mnl_attr_get_payload_len(attr) == 16)
			memcpy(&dst.addr, mnl_attr_get_payload(attr), 16);
	}
	if (table != RT_TABLE_LOCAL || rtm->rtm_protocol != RTPROT_PRISM)
		return MNL_CB_OK;
	if (rtm->rtm_family == AF_INET) {
		dst.addr.s6_addr[10] = dst.addr.s6_addr[11] = 0xff;
		dst.len += 96;
	}
	if (l->n_keep && bsearch(&dst, l->keep, l->n_keep, sizeof(dst), prefix_cmp))
		return MNL_CB_OK;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct nlmsghdr **v = realloc(l->v, cap * sizeof(*v));

		if (!v) {
			l->err = -ENOMEM;
			return MNL_CB_ERROR;
		}
		l->v = v;
		l->cap = cap;
	}
	copy = malloc(nlh->nlmsg_len);
	if (!copy) {
		l->err = -ENOMEM;
		return MNL_CB_ERROR;
	}
	memcpy(copy, nlh, nlh->nlmsg_len);
	l->v[l->n++] = copy;
	return MNL_CB_OK;
}

static int routes_dump(struct nl *nl, int family, struct route_list *l)
{
	char buf[NL_BUFSZ];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	struct rtmsg *rtm;
	ssize_t n;
	int ret;

	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = ++nl->seq;
	rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = (unsigned char)family;
	rtm->rtm_table = RT_TABLE_LOCAL;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) == -1)
		return -errno;
	/* The dump ends with NLMSG_DONE (MNL_CB_STOP); the batch count and
	 * the socket's receive timeout only guard against a kernel that
	 * never says so.
	 */
	for (int batches = 0; batches < 1000000; batches++) {
		n = mnl_socket_recvfrom(nl->sock, buf, sizeof(buf));
		if (n == -1)
			return -errno;
		ret = mnl_cb_run(buf, (size_t)n, nl->seq, nl->portid, dump_route, l);
		if (ret == MNL_CB_STOP)
			return 0;
		if (ret == MNL_CB_ERROR)
			return l->err ? l->err : -errno;
	}
	return -EPROTO;
}

/* Deletes every RTPROT_PRISM route in table local except those to the
 * <n_keep> sorted prefixes in <keep>.
 */
static int routes_prune(const struct addr_prefix *keep, size_t n_keep, char **err)
{
	struct route_list l = {.keep = keep, .n_keep = n_keep};
	struct nl nl = {0};
	char why[256];
	int ret;
	static const int families[] = {AF_INET, AF_INET6};

	ret = nl_open(&nl, err);
	if (ret)
		return ret;
	for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
		ret = routes_dump(&nl, families[f], &l);
		if (ret) {
			set_err(err, ret, "cannot list the routes of table local: %s",
				strerror(-ret));
			goto out;
		}
	}
	for (size_t i = 0; i < l.n; i++) {
		struct nlmsghdr *nlh = l.v[i];

		nlh->nlmsg_type = RTM_DELROUTE;
		nlh->nlmsg_flags = NLM_F_REQUEST;
		ret = nl_request(&nl, nlh, why, sizeof(why));
		/* Gone meanwhile (ESRCH) is what we wanted anyway. */
		if (ret == -ESRCH) {
			ret = 0;
			continue;
		}
		if (ret) {
			const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);

			set_err(err, ret,
				"cannot delete a proto %d route (family %s, /%u): %s%s%s%s",
				RTPROT_PRISM, rtm->rtm_family == AF_INET ? "inet" : "inet6",
				rtm->rtm_dst_len, why[0] ? why : strerror(-ret), why[0] ? " (" : "",
				why[0] ? strerror(-ret) : "", why[0] ? ")" : "");
			goto out;
		}
	}
out:
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i]);
	free(l.v);
	nl_close(&nl);
	return ret;
}

/* Adds the routes, then loads <script>. When either fails, takes back the
 * routes this call added, so a failed `net up` changes nothing.
 */
static int routes_add_and_load(const struct cfg *cfg, const char *script, const char *what,
			       char **err)
{
	struct addr_prefix *pfx = NULL;
	bool *added = NULL;
	struct nl nl = {0};
	char buf[NL_BUFSZ], why[256], ps[ADDR_STRLEN];
	unsigned int lo = 0;
	long n, i = 0;
	int ret;

	n = edge_prefixes(cfg, &pfx);
	if (n < 0)
		return set_err(err, (int)n, "cannot add routes: %s", strerror((int)-n));
	if (n == 0) {
		ret = nft_run(script, what, err);
		return ret ? ret : routes_prune(NULL, 0, err);
	}
	added = calloc((size_t)n, sizeof(*added));
	if (!added) {
		ret = set_err(err, -ENOMEM, "cannot add routes: %s", strerror(ENOMEM));
		goto out;
	}
	lo = if_nametoindex("lo");
	if (lo == 0) {
		ret = set_err(err, -errno, "cannot find interface lo: %s", strerror(errno));
		goto out;
	}
	ret = nl_open(&nl, err);
	if (ret)
		goto out;
	for (i = 0; i < n; i++) {
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

		/* CREATE|EXCL, never REPLACE: an identical route that is
		 * already there (EEXIST) belongs to whoever made it, so it
		 * keeps its protocol and `net down` will not remove it.
		 */
		route_msg_init(nlh, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &pfx[i], lo);
		ret = nl_request(&nl, nlh, why, sizeof(why));
		if (ret == -EEXIST)
			ret = 0;
		else if (ret == 0)
			added[i] = true;
		else
			break;
	}
	if (ret) {
		fmt_prefix(&pfx[i], ps, sizeof(ps));
		set_err(err, ret, "cannot add route local %s dev lo table local: %s%s%s%s", ps,
			why[0] ? why : strerror(-ret), why[0] ? " (" : "",
			why[0] ? strerror(-ret) : "", why[0] ? ")" : "");
	} else {
		ret = nft_run(script, what, err);
	}
	if (ret) {
		/* Leave nothing half-done: take back the routes this call
		 * added (best effort; `net down` removes any that remain).
		 */
		for (long j = 0; j < n; j++) {
			struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

			if (!added[j])
				continue;
			route_msg_init(nlh, RTM_DELROUTE, 0, &pfx[j], lo);
			nl_request(&nl, nlh, why, sizeof(why));
		}
	} else {
		/* A prefix dropped from the config must stop being local,
		 * or the host would keep answering for it itself.
		 */
		ret = routes_prune(pfx, (size_t)n, err);
	}
out:
	nl_close(&nl);
	free(added);
	free(pfx);
	return ret;
}

/* ---- public --------------------------------------------------------------- */

int net_check(char **err)
{
	cap_flag_value_t v = CAP_CLEAR;
	cap_t caps = cap_get_proc();
	char script[512], *e = NULL;
	int ret;

	if (!caps)
		return set_err(err, -errno, "cannot read this process's capabilities: %s",
			       strerror(errno));
	ret = cap_get_flag(caps, CAP_NET_ADMIN, CAP_EFFECTIVE, &v);
	cap_free(caps);
	if (ret == -1 || v != CAP_SET)
		return set_err(err, -EPERM,
			       "prism needs CAP_NET_ADMIN (run as root or grant the capability)");

	/* Create a throwaway table with a tproxy rule and delete it in the
	 * same transaction: the kernel must still instantiate the expression
	 * (loading nft_tproxy if it can), so the batch fails exactly when
	 * TPROXY is missing, and nothing is left behind either way.
	 */
	snprintf(script, sizeof(script),
		 "table inet prism_probe_%d {\n"
		 "\tchain c {\n"
		 "\t\ttype filter hook prerouting priority mangle;\n"
		 "\t\tmeta l4proto tcp tproxy ip to 127.0.0.1:1\n"
		 "\t}\n"
		 "}\n"
		 "delete table inet prism_probe_%d\n",
		 (int)getpid(), (int)getpid());
	ret = nft_run(script, NULL, &e);
	if (ret) {
		ret = set_err(err, -EOPNOTSUPP,
			      "the kernel lacks nftables TPROXY support (CONFIG_NFT_TPROXY / "
			      "nft_tproxy module): %s",
			      e ? e : "nft failed");
	}
	free(e);
	return ret;
}

int net_up(const struct cfg *cfg, char **err)
{
	char *script, *what = NULL;
	int ret = check_table(cfg->nft_table, err);

	if (ret)
		return ret;
	script = net_nft_script(cfg);
	if (!script)
		return set_err(err, -ENOMEM, "cannot build the nft script: out of memory");
	if (asprintf(&what, "cannot load nftables table inet %s", cfg->nft_table) == -1) {
		free(script);
		return set_err(err, -ENOMEM, "out of memory");
	}
	/* Routes first, then the table: traffic is TPROXYed only once it
	 * would also be delivered locally.
	 */
	ret = routes_add_and_load(cfg, script, what, err);
	free(what);
	free(script);
	return ret;
}

int net_down(const struct cfg *cfg, char **err)
{
	const char *t = cfg->nft_table;
	char *script = NULL, *what = NULL;
	int ret = check_table(t, err);

	if (ret)
		return ret;
	/* Add-if-missing then delete, in one transaction: removes the table
	 * when it is there, and is no error when it is not.
	 */
	if (asprintf(&script, "table inet %s\ndelete table inet %s\n", t, t) == -1)
		return set_err(err, -ENOMEM, "out of memory");
	if (asprintf(&what, "cannot delete nftables table inet %s", t) == -1) {
		free(script);
		return set_err(err, -ENOMEM, "out of memory");
	}
	ret = nft_run(script, what, err);
	free(what);
	free(script);
	if (ret)
		return ret;
	return routes_prune(NULL, 0, err);
}

int net_show(const struct cfg *cfg, FILE *out)
{
	struct addr_prefix *pfx = NULL;
	char ps[ADDR_STRLEN];
	char *script;
	long n = edge_prefixes(cfg, &pfx);

	for (long i = 0; i < n; i++) {
		fmt_prefix(&pfx[i], ps, sizeof(ps));
		fprintf(out, "ip route add local %s dev lo table local proto %d\n", ps,
			RTPROT_PRISM);
	}
	free(pfx);
	script = net_nft_script(cfg);
	if (script) {
		fputs(script, out);
		free(script);
	}
	return 0;
}

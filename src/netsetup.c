/* netsetup.c - installs and removes the network state prism owns: AnyIP
 * "local" routes in table local (libmnl) and one nftables table that TPROXYs
 * claimed (address . port) pairs to the listener; also the SYN-cookie
 * sysctls, the privilege/TPROXY check and the bans kept across a reload.
 * The table's layout and the script that builds it are in netsetup_nft.c;
 * netsetup-int.h is what the two files share.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include "addr.h"
#include "ban.h"
#include "cfg.h"
#include "log.h"
#include "netsetup-int.h"
#include "nl.h"

/* ---- helpers ---------------------------------------------------------- */

/* Stores a malloc'd message in <*err> (NULL when even that fails: callers
 * print a generic message then) and returns <ret>.
 */
int net_set_err(char **err, int ret, const char *fmt, ...)
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

bool net_is_v4_prefix(const struct addr_prefix *p)
{
	return addr_is_v4(&p->addr) && p->len >= 96;
}

/* Formats a bare address: IPv4 from its v4-mapped form. */
void net_fmt_addr(const struct in6_addr *a, bool v4, char *buf, size_t len)
{
	if (v4)
		inet_ntop(AF_INET, &a->s6_addr[12], buf, len);
	else
		inet_ntop(AF_INET6, a, buf, len);
}

/* The table name is pasted into nft's language: accept only what its
 * scanner reads as one identifier, so a name can never inject a command.
 * The rule is cfg's, so `net down -t NAME` takes exactly the names a
 * config can give; this is the last line of defense.
 */
int net_check_table(const char *t, char **err)
{
	switch (cfg_table_name_check(t)) {
	case 0:
		return 0;
	case CFG_TABLE_KEYWORD:
		return net_set_err(
		    err, -EINVAL,
		    "invalid nftables table name \"%s\" (a keyword of nft's language, "
		    "which no prism table is named)",
		    t);
	default:
		return net_set_err(
		    err, -EINVAL,
		    "invalid nftables table name \"%s\" (a letter or _, then up to 30 "
		    "letters, digits or _)",
		    t ? t : "");
	}
}

/* Whether process <pid> holds an fd on socket inode <ino>. */
static bool holds_inode(long pid, unsigned long ino)
{
	char path[64], link[64], want[40];
	struct dirent *d;
	bool found = false;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
	snprintf(want, sizeof(want), "socket:[%lu]", ino);
	dir = opendir(path);
	if (!dir)
		return false;
	while (!found && (d = readdir(dir))) {
		ssize_t n = readlinkat(dirfd(dir), d->d_name, link, sizeof(link) - 1);

		if (n > 0) {
			link[n] = '\0';
			found = !strcmp(link, want);
		}
	}
	closedir(dir);
	return found;
}

/* Who holds the claim named <name> (without the leading NUL): its pid and
 * command, as `ss -xp` finds them (the socket's inode in this namespace's
 * /proc/net/unix, then the process with an fd on it). Only on the error
 * path. Returns false when it cannot tell.
 */
static bool lock_holder(const char *name, pid_t *pid, char *comm, size_t comm_len)
{
	char line[512], path[64];
	unsigned long ino = 0;
	struct dirent *d;
	bool found = false;
	FILE *f = fopen("/proc/net/unix", "re");
	DIR *dir;

	if (!f)
		return false;
	/* Num RefCount Protocol Flags Type St Inode Path: an abstract name
	 * shows as @name.
	 */
	while (!ino && fgets(line, sizeof(line), f)) {
		unsigned long i;
		int off = 0;

		if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %n", &i, &off) == 1 && off > 0 &&
		    line[off] == '@' && !strncmp(line + off + 1, name, strlen(name)) &&
		    (line[off + 1 + strlen(name)] == '\n' || line[off + 1 + strlen(name)] == '\0'))
			ino = i;
	}
	fclose(f);
	if (!ino || !(dir = opendir("/proc")))
		return false;
	while (!found && (d = readdir(dir))) {
		char *end;
		long p = strtol(d->d_name, &end, 10);

		if (p > 0 && *end == '\0' && holds_inode(p, ino)) {
			*pid = (pid_t)p;
			found = true;
		}
	}
	closedir(dir);
	if (!found)
		return false;
	snprintf(comm, comm_len, "?");
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)*pid);
	if ((f = fopen(path, "re"))) {
		if (fgets(comm, (int)comm_len, f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	return true;
}

int net_table_lock(const char *table, char **err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len;
	char comm[32], who[64];
	pid_t pid;
	int fd, n, ret = net_check_table(table, err);

	if (ret)
		return ret;
	/* sun_path[0] stays 0: an abstract name, gone with its last fd. */
	n = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "prism-table/%s", table);
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return net_set_err(err, -errno, "cannot claim table %s: socket: %s", table,
				   strerror(errno));
	if (bind(fd, (struct sockaddr *)&sa, len) == 0)
		return fd;
	ret = -errno;
	close(fd);
	if (ret != -EADDRINUSE)
		return net_set_err(err, ret, "cannot claim table %s: %s", table, strerror(-ret));
	/* An abstract name has no permissions: any process of this network
	 * namespace can take it, so the message names the holder.
	 */
	if (lock_holder(sa.sun_path + 1, &pid, comm, sizeof(comm)))
		snprintf(who, sizeof(who), "pid %d (%s)", (int)pid, comm);
	else
		snprintf(who, sizeof(who), "a running prism");
	return net_set_err(err, -EBUSY,
			   "table %s is in use by %s in this network namespace (a prism: stop it "
			   "first, its routes and rules would be replaced or removed under it; "
			   "prism claims a table through the abstract unix socket "
			   "@prism-table/%s, which any process can hold)",
			   table, who, table);
}

/* ---- routes --------------------------------------------------------------- */

int net_prefix_cmp(const void *a, const void *b)
{
	const struct addr_prefix *x = a, *y = b;
	int c = memcmp(&x->addr, &y->addr, sizeof(x->addr));

	return c ? c : (int)x->len - (int)y->len;
}

/* Collects the distinct edge prefixes of all apps, sorted, into a malloc'd
 * array. Returns the count, or -ENOMEM.
 */
long net_edge_prefixes(const struct cfg *cfg, struct addr_prefix **out)
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
			if (cfg->listen6_on || net_is_v4_prefix(&cfg->apps[i].edges[j]))
				v[n++] = cfg->apps[i].edges[j];
	qsort(v, n, sizeof(*v), net_prefix_cmp);
	total = n;
	n = 0;
	for (size_t i = 0; i < total; i++)
		if (n == 0 || net_prefix_cmp(&v[n - 1], &v[i]) != 0)
			v[n++] = v[i];
	if (n == 0) {
		free(v);
		return 0;
	}
	*out = v;
	return (long)n;
}

/* The routes: the fewest prefixes that make exactly the edge prefixes local.
 * A prefix inside another needs no route of its own, and prefixes that
 * touch merge into the largest aligned blocks of their union: 65,536 apps
 * of one address each in a /16 take one route, not 65,536 (which took
 * about 0.5 s to add and as long to remove, and made every input route
 * lookup walk a deeper trie). The union is the same set of addresses, so
 * nothing changes for traffic. Each family is merged on its own (the
 * config refuses IPv6 edges that overlap ::ffff:0:0/96, so the two never
 * touch in the 128-bit space, and no IPv6 block falls in it).
 */
static addr_u128 host_mask(unsigned len)
{
	return len >= 128 ? 0 : ~(addr_u128)0 >> len;
}

/* Appends the largest aligned blocks that make up [lo, hi] to <out>. */
static void range_blocks(addr_u128 lo, addr_u128 hi, struct addr_prefix *out, size_t *n)
{
	for (;;) {
		unsigned len = 0;

		/* The shortest prefix at <lo> that lo is aligned to and that
		 * ends by <hi>.
		 */
		while (len < 128 && ((lo & host_mask(len)) != 0 || (lo | host_mask(len)) > hi))
			len++;
		addr_from_key(lo, &out[*n].addr);
		out[(*n)++].len = (uint8_t)len;
		if ((lo | host_mask(len)) == hi)
			return;
		lo = (lo | host_mask(len)) + 1;
	}
}

long net_route_prefixes(const struct cfg *cfg, struct addr_prefix **out)
{
	struct addr_prefix *in, *v;
	long n = net_edge_prefixes(cfg, &in);
	size_t k = 0;

	*out = NULL;
	if (n <= 0)
		return n;
	/* At most one block per edge: each block of the union's minimal
	 * cover holds at least one whole edge prefix.
	 */
	v = calloc((size_t)n, sizeof(*v));
	if (!v) {
		free(in);
		return -ENOMEM;
	}
	for (int v4 = 0; v4 < 2; v4++) {
		addr_u128 lo = 0, hi = 0;
		bool open = false;

		/* Sorted by address: each prefix starts at or after the last. */
		for (long i = 0; i < n; i++) {
			addr_u128 a, b;

			if (net_is_v4_prefix(&in[i]) != (bool)v4)
				continue;
			a = addr_key(&in[i].addr);
			b = a | host_mask(in[i].len);
			if (open && (hi == ~(addr_u128)0 || a <= hi + 1)) {
				if (b > hi)
					hi = b;
				continue;
			}
			if (open)
				range_blocks(lo, hi, v, &k);
			lo = a;
			hi = b;
			open = true;
		}
		if (open)
			range_blocks(lo, hi, v, &k);
	}
	free(in);
	qsort(v, k, sizeof(*v), net_prefix_cmp);
	*out = v;
	return (long)k;
}

uint32_t net_route_metric(const char *table)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const unsigned char *c = (const unsigned char *)table; *c; c++)
		h = (h ^ *c) * 16777619u;
	return h | 0x10000u;
}

/* IPv4's metric when none is given, and IPv6's (IP6_RT_PRIO_USER). */
#define METRIC_DEFAULT4 0u
#define METRIC_DEFAULT6 1024u

static void route_msg_init(struct nlmsghdr *nlh, uint16_t type, uint16_t flags,
			   const struct addr_prefix *p, unsigned int oif, uint32_t metric)
{
	bool v4 = net_is_v4_prefix(p);
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
	mnl_attr_put_u32(nlh, RTA_PRIORITY, metric);
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
	uint32_t metric; /* this instance's (net_route_metric) */
};

static int dump_route(const struct nlmsghdr *nlh, void *data)
{
	struct route_list *l = data;
	const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *attr;
	struct addr_prefix dst = {0};
	uint32_t table, metric = METRIC_DEFAULT4; /* an IPv4 route without RTA_PRIORITY */
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
		if (mnl_attr_get_type(attr) == RTA_PRIORITY &&
		    mnl_attr_validate(attr, MNL_TYPE_U32) == 0)
			metric = mnl_attr_get_u32(attr);
		if (mnl_attr_get_type(attr) == RTA_DST && rtm->rtm_family == AF_INET &&
		    mnl_attr_get_payload_len(attr) == 4)
			memcpy(&dst.addr.s6_addr[12], mnl_attr_get_payload(attr), 4);
		if (mnl_attr_get_type(attr) == RTA_DST && rtm->rtm_family == AF_INET6 &&
		    mnl_attr_get_payload_len(attr) == 16)
			memcpy(&dst.addr, mnl_attr_get_payload(attr), 16);
	}
	if (table != RT_TABLE_LOCAL || rtm->rtm_protocol != RTPROT_PRISM)
		return MNL_CB_OK;
	/* Another instance's (another table's metric) stay; the defaults are
	 * what prism set before routes had a metric: stale even to a kept
	 * prefix, which has its route with the metric by now.
	 */
	if (metric != l->metric &&
	    metric != (rtm->rtm_family == AF_INET ? METRIC_DEFAULT4 : METRIC_DEFAULT6))
		return MNL_CB_OK;
	if (rtm->rtm_family == AF_INET) {
		dst.addr.s6_addr[10] = dst.addr.s6_addr[11] = 0xff;
		dst.len += 96;
	}
	if (metric == l->metric && l->n_keep &&
	    bsearch(&dst, l->keep, l->n_keep, sizeof(dst), net_prefix_cmp))
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
	int ret;

	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = (unsigned char)family;
	rtm->rtm_table = RT_TABLE_LOCAL;
	ret = nl_talk(nl, nlh, dump_route, l);
	return ret && l->err ? l->err : ret;
}

/* Deletes every route of the instance of nft table <table> in table local
 * (RTPROT_PRISM, its metric or a legacy default) except those to the
 * <n_keep> sorted prefixes in <keep>. A legacy route to a kept prefix goes
 * too: the new one with the metric was added next to it.
 */
static int routes_prune(const char *table, const struct addr_prefix *keep, size_t n_keep,
			char **err)
{
	struct route_list l = {.keep = keep, .n_keep = n_keep, .metric = net_route_metric(table)};
	struct nl nl = {0};
	char why[256];
	int ret, first = 0, removed = 0;
	static const int families[] = {AF_INET, AF_INET6};

	ret = nl_open(&nl, NETLINK_ROUTE, err);
	if (ret)
		return ret;
	for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
		ret = routes_dump(&nl, families[f], &l);
		if (ret) {
			net_set_err(err, ret, "cannot list the routes of table local: %s",
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
		if (!ret) {
			removed++;
			continue;
		}
		/* The others still go: each one left is a prefix this host
		 * answers for. The first failure is the one reported.
		 */
		if (!first) {
			const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);

			first = ret;
			net_set_err(
			    err, ret, "cannot delete a proto %d route (family %s, /%u): %s%s%s%s",
			    RTPROT_PRISM, rtm->rtm_family == AF_INET ? "inet" : "inet6",
			    rtm->rtm_dst_len, why[0] ? why : strerror(-ret), why[0] ? " (" : "",
			    why[0] ? strerror(-ret) : "", why[0] ? ")" : "");
		}
		/* No ack in SO_RCVTIMEO (10 s): the next ones would each
		 * wait as long.
		 */
		if (ret == -EAGAIN)
			break;
	}
	ret = first;
out:
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i]);
	free(l.v);
	nl_close(&nl);
	return ret < 0 ? ret : removed;
}

/* After the table loaded: a prefix dropped from the config must stop being
 * local, or the host would keep answering for it itself. Failing that is
 * a warning, not a failed `net up`: the table and routes this config needs
 * are in place, and failing would leave them installed with no prism
 * behind them (a later `net up` or `net down` prunes again).
 */
static void routes_prune_stale(const char *table, const struct addr_prefix *keep, size_t n)
{
	char *err = NULL;

	if (routes_prune(table, keep, n, &err) < 0)
		log_warn("%s; routes of prefixes no longer configured may remain", err);
	free(err);
}

static void saved_bans(const char *table, char *out[2]);

/* Builds the table's script, with the bans in force put back, and loads
 * it: the bans are read as the last step before the load, so a ban that
 * begins or ends in between is only missed for the build and one nft
 * round trip, and one put back gets no more than that on top of its time.
 */
static int load_table(const struct cfg *cfg, const char *what, char **err)
{
	char *bans[2], *script;
	int ret;

	saved_bans(cfg->nft_table, bans);
	script = net_build_script(cfg, (const char *const *)bans);
	free(bans[0]);
	free(bans[1]);
	if (!script)
		return net_set_err(err, -ENOMEM, "cannot build the nft script: out of memory");
	ret = net_nft_run(script, what, err);
	free(script);
	return ret;
}

/* Adds the routes, then loads the table (load_table). When either fails,
 * takes back the routes this call added, so a failed `net up` changes
 * nothing.
 */
static int routes_add_and_load(const struct cfg *cfg, const char *what, char **err)
{
	struct addr_prefix *pfx = NULL;
	bool *added = NULL;
	struct nl nl = {0};
	char buf[NL_BUFSZ], why[256], ps[ADDR_STRLEN];
	unsigned int lo = 0;
	uint32_t metric = net_route_metric(cfg->nft_table);
	long n, i = 0;
	int ret;

	n = net_route_prefixes(cfg, &pfx);
	if (n < 0)
		return net_set_err(err, (int)n, "cannot add routes: %s", strerror((int)-n));
	if (n == 0) {
		ret = load_table(cfg, what, err);
		if (ret == 0)
			routes_prune_stale(cfg->nft_table, NULL, 0);
		return ret;
	}
	added = calloc((size_t)n, sizeof(*added));
	if (!added) {
		ret = net_set_err(err, -ENOMEM, "cannot add routes: %s", strerror(ENOMEM));
		goto out;
	}
	lo = if_nametoindex("lo");
	if (lo == 0) {
		ret = net_set_err(err, -errno, "cannot find interface lo: %s", strerror(errno));
		goto out;
	}
	ret = nl_open(&nl, NETLINK_ROUTE, err);
	if (ret)
		goto out;
	for (i = 0; i < n; i++) {
		struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

		/* CREATE|EXCL, never REPLACE: an identical route (same
		 * prefix and metric) that is already there (EEXIST) is this
		 * instance's from an earlier `net up`, or else it keeps the
		 * protocol whoever made it gave it. An operator's route to
		 * the same prefix with another metric stays as it is, next
		 * to prism's.
		 */
		route_msg_init(nlh, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &pfx[i], lo, metric);
		ret = nl_request(&nl, nlh, why, sizeof(why));
		if (ret == -EEXIST)
			ret = 0;
		else if (ret == 0)
			added[i] = true;
		else
			break;
	}
	if (ret) {
		addr_fmt_prefix(&pfx[i], ps);
		net_set_err(err, ret, "cannot add route local %s dev lo table local: %s%s%s%s", ps,
			    why[0] ? why : strerror(-ret), why[0] ? " (" : "",
			    why[0] ? strerror(-ret) : "", why[0] ? ")" : "");
	} else {
		ret = load_table(cfg, what, err);
	}
	if (ret) {
		/* Leave nothing half-done: take back the routes this call
		 * added (best effort; `net down` removes any that remain).
		 */
		for (long j = 0; j < n; j++) {
			struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);

			if (!added[j])
				continue;
			route_msg_init(nlh, RTM_DELROUTE, 0, &pfx[j], lo, metric);
			nl_request(&nl, nlh, why, sizeof(why));
		}
	} else {
		routes_prune_stale(cfg->nft_table, pfx, (size_t)n);
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
		return net_set_err(err, -errno, "cannot read this process's capabilities: %s",
				   strerror(errno));
	ret = cap_get_flag(caps, CAP_NET_ADMIN, CAP_EFFECTIVE, &v);
	cap_free(caps);
	if (ret == -1 || v != CAP_SET)
		return net_set_err(
		    err, -EPERM, "prism needs CAP_NET_ADMIN (run as root or grant the capability)");

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
	ret = net_nft_run(script, NULL, &e);
	if (ret) {
		ret = net_set_err(err, -EOPNOTSUPP,
				  "the kernel lacks nftables TPROXY support (CONFIG_NFT_TPROXY / "
				  "nft_tproxy module): %s",
				  e ? e : "nft failed");
	}
	free(e);
	return ret;
}

/* ---- sysctls ---------------------------------------------------------- */

static int sysctl_read(const char *path, long *val)
{
	char buf[32];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd == -1)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n == -1) {
		int e = errno;

		close(fd);
		return -e;
	}
	close(fd);
	buf[n] = '\0';
	*val = strtol(buf, NULL, 10);
	return 0;
}

static int sysctl_write(const char *path, const char *val)
{
	size_t n = strlen(val);
	int fd = open(path, O_WRONLY | O_CLOEXEC), ret = 0;
	ssize_t w;

	if (fd == -1)
		return -errno;
	w = write(fd, val, n);
	if (w == -1)
		ret = -errno;
	else if ((size_t)w != n)
		ret = -EIO;
	close(fd);
	return ret;
}

#define SYSCTL_SYNCOOKIES "/proc/sys/net/ipv4/tcp_syncookies"
#define SYSCTL_SOMAXCONN  "/proc/sys/net/core/somaxconn"
#define SOMAXCONN_WANT	  4096

/* SYN cookies let the listener answer a SYN flood without keeping state:
 * 1 (the Linux default) sends them only when a listen queue overflows;
 * 2 would send them always and lose TCP options for everyone, so prism
 * never sets it. Both sysctls are per network namespace. Problems here
 * are warnings: proxying works without them.
 */
static void check_sysctls(const struct cfg *cfg)
{
	long v;
	int ret;

	ret = sysctl_read(SYSCTL_SYNCOOKIES, &v);
	if (ret) {
		log_warn("cannot read %s: %s", SYSCTL_SYNCOOKIES, strerror(-ret));
	} else if (v == 0 && cfg->manage_sysctls) {
		ret = sysctl_write(SYSCTL_SYNCOOKIES, "1");
		if (ret)
			log_warn("SYN cookies are off and cannot be turned on (%s: %s): a SYN "
				 "flood will fill the listen queue",
				 SYSCTL_SYNCOOKIES, strerror(-ret));
		else
			log_info("turned on SYN cookies (net.ipv4.tcp_syncookies = 1)");
	} else if (v == 0) {
		log_warn("SYN cookies are off (net.ipv4.tcp_syncookies = 0) and network.sysctls "
			 "is false: a SYN flood will fill the listen queue");
	}
	ret = sysctl_read(SYSCTL_SOMAXCONN, &v);
	if (ret == 0 && v < SOMAXCONN_WANT)
		log_warn("net.core.somaxconn is %ld: the listen queue is capped there; %d or "
			 "more rides out connection bursts better",
			 v, SOMAXCONN_WANT);
}

/* ---- the host's own addresses -------------------------------------------- */

/* The edge prefix of <cfg> that holds address <a> (first in config order),
 * or NULL; <*app> is set to its app.
 */
static const struct addr_prefix *edge_holding(const struct cfg *cfg, const struct in6_addr *a,
					      const struct cfg_app **app)
{
	struct addr_prefix host = {.addr = *a, .len = 128};

	for (size_t i = 0; i < cfg->n_apps; i++)
		for (size_t j = 0; j < cfg->apps[i].n_edges; j++)
			if (addr_prefix_contains(&cfg->apps[i].edges[j], &host)) {
				*app = &cfg->apps[i];
				return &cfg->apps[i].edges[j];
			}
	return NULL;
}

/* An address of this host inside an edge prefix is no longer the host's
 * on every port: the ports an app serves go to prism, and the others are
 * unserved and dropped, so a service listening on a wildcard address (sshd
 * on 0.0.0.0:22) cannot be reached on it any more. That is how an operator
 * locks themselves out of a box, so each such address gets a warning.
 */
static void check_host_addrs(const struct cfg *cfg)
{
	struct ifaddrs *ifa;

	if (getifaddrs(&ifa) == -1) {
		log_warn(
		    "cannot list this host's addresses to check them against the edge prefixes: "
		    "%s",
		    strerror(errno));
		return;
	}
	for (const struct ifaddrs *i = ifa; i; i = i->ifa_next) {
		const struct addr_prefix *edge;
		const struct cfg_app *app;
		char as[ADDR_STRLEN], es[ADDR_STRLEN];
		struct in6_addr a;
		uint16_t port;

		if (!i->ifa_addr ||
		    (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6))
			continue;
		addr_from_sa(i->ifa_addr, &a, &port);
		edge = edge_holding(cfg, &a, &app);
		if (!edge)
			continue;
		log_warn(
		    "%s (on %s) is an address of this host inside edge %s of app %s: ports no "
		    "app serves there are dropped, so a service listening on a wildcard address "
		    "(sshd on 0.0.0.0:22) cannot be reached on it; keep management addresses out "
		    "of edge prefixes",
		    addr_fmt(&a, as), i->ifa_name, addr_fmt_prefix(edge, es), app->name);
	}
	freeifaddrs(ifa);
}

/* ---- bans across a reload ------------------------------------------------ */

/* Replacing the table empties its ban sets. The bans in force are read
 * (ban_read) right before the load (load_table) and put back, each
 * with what is left of its time rounded up to a second, in the same
 * transaction that replaces the table. A ban added between the read and
 * the load is lost: the window is the script's build and one nft round
 * trip, and prism re-bans an offender that keeps at it.
 *
 * IPv6 elements are put back as their /64 (addr_source): a table from
 * before IPv6 bans were /64s holds single addresses, which the rule now
 * matching the source's /64 would no longer find. Several of one /64 keep
 * the longest.
 */
static void saved_bans(const char *table, char *out[2])
{
	FILE *b[2] = {NULL, NULL};
	char *bbuf[2] = {NULL, NULL}, *e = NULL;
	size_t blen[2] = {0, 0}, n[2] = {0, 0}, nv = 0;
	struct ban_entry *v = NULL;
	/* No table yet, or one without ban sets: nothing to keep. */
	int got = ban_read(table, &v, &nv, &e);

	out[0] = out[1] = NULL;
	if (got < 0 && got != -ESRCH)
		log_warn("cannot read the bans in force, so the new table starts without them: %s",
			 e ? e : strerror(-got));
	free(e);
	if (got < 0 || nv == 0) {
		free(v);
		return;
	}
	for (size_t i = 0; i < nv; i++)
		v[i].src = addr_source(&v[i].src);
	qsort(v, nv, sizeof(*v), ban_entry_cmp);
	for (int i = 0; i < 2; i++) {
		b[i] = open_memstream(&bbuf[i], &blen[i]);
		if (!b[i])
			goto out;
	}
	for (size_t i = 0; i < nv; i++) {
		char a[ADDR_STRLEN];
		int v6 = !addr_is_v4(&v[i].src);

		if (i && !memcmp(&v[i].src, &v[i - 1].src, sizeof(v[i].src)))
			continue; /* a shorter ban of the same /64 */
		addr_fmt(&v[i].src, a);
		if (v[i].left_ms == UINT64_MAX)
			fprintf(b[v6], "%s%s", n[v6]++ ? ",\n\t\t\t" : "", a);
		else
			fprintf(b[v6], "%s%s timeout %" PRIu64 "s", n[v6]++ ? ",\n\t\t\t" : "", a,
				(v[i].left_ms + 999) / 1000);
	}
	for (int i = 0; i < 2; i++) {
		if (fclose(b[i]) == 0 && n[i])
			out[i] = bbuf[i];
		else
			free(bbuf[i]);
		b[i] = NULL;
	}
out:
	for (int i = 0; i < 2; i++)
		if (b[i]) {
			fclose(b[i]);
			free(bbuf[i]);
		}
	free(v);
}

/* prism replaces and deletes its table whole: a table of the same name it
 * did not make (`network.table: filter`, or `net down -t filter` on a host
 * whose firewall is table inet filter) is refused, neither replaced nor
 * deleted (`net down` still removes prism's routes of that name).
 */
static int foreign_err(const char *t, char **err)
{
	return net_set_err(err, -EEXIST,
			   "nftables table inet %s was not made by prism (it lacks the comment "
			   "\"" NET_TABLE_MARK "\"), and prism replaces or deletes its table "
			   "whole: choose another network.table, or delete that table yourself if "
			   "it is a leftover",
			   t);
}

int net_up(const struct cfg *cfg, char **err)
{
	char *what = NULL;
	int ret = net_check_table(cfg->nft_table, err);

	if (ret)
		return ret;
	ret = net_table_state(cfg->nft_table, err);
	if (ret < 0)
		return ret;
	if (ret == NET_TABLE_FOREIGN)
		return foreign_err(cfg->nft_table, err);
	check_sysctls(cfg);
	check_host_addrs(cfg);
	if (asprintf(&what, "cannot load nftables table inet %s", cfg->nft_table) == -1)
		return net_set_err(err, -ENOMEM, "out of memory");
	/* Routes first, then the table: traffic is TPROXYed only once it
	 * would also be delivered locally.
	 */
	ret = routes_add_and_load(cfg, what, err);
	free(what);
	return ret;
}

/* Deletes table <t>, and is no error when it is not there: add-if-missing
 * then delete, in one transaction.
 */
static int table_delete(const char *t, char **err)
{
	char *script = NULL, *what = NULL;
	int ret;

	if (asprintf(&script, "table inet %s\ndelete table inet %s\n", t, t) == -1)
		return net_set_err(err, -ENOMEM, "out of memory");
	if (asprintf(&what, "cannot delete nftables table inet %s", t) == -1) {
		free(script);
		return net_set_err(err, -ENOMEM, "out of memory");
	}
	ret = net_nft_run(script, what, err);
	free(what);
	free(script);
	return ret;
}

int net_down(const char *t, char **err)
{
	char *why = NULL, *e;
	int st, ret = net_check_table(t, err);

	if (ret)
		return ret;
	/* Whose table it is decides whether it goes. The routes are prism's
	 * whatever it is (proto 249 with this table's metric): they go in
	 * any case.
	 */
	st = net_table_state(t, &why);
	if (st == NET_TABLE_FOREIGN)
		foreign_err(t, &why);
	/* The routes go first: while they are there without the table, the
	 * edge prefixes are addresses of this host with no guard chain, and
	 * a service bound to a wildcard address (sshd on 0.0.0.0:22) would
	 * answer on every one of them. A table without routes is harmless,
	 * and one whose listener is gone drops what it would have served:
	 * so when a route stays, so does the table, until a `net down`
	 * succeeds.
	 */
	ret = routes_prune(t, NULL, 0, err);
	if (ret < 0) {
		e = err ? *err : NULL;
		if (err)
			*err = NULL;
		if (st == NET_TABLE_PRISM)
			net_set_err(err, ret,
				    "%s; nftables table inet %s kept, so the prefixes still local "
				    "are dropped, not answered (run `prism net down` again)",
				    e ? e : strerror(-ret), t);
		else
			net_set_err(err, ret,
				    "%s; with no table of prism's in front of them, this host "
				    "answers on the prefixes still local (run `prism net down` "
				    "again)",
				    e ? e : strerror(-ret));
		free(e);
		free(why);
		return ret;
	}
	if (st == NET_TABLE_NONE) {
		free(why);
		return ret == 0;
	}
	if (st != NET_TABLE_PRISM) {
		/* The routes went; the table stays, for its owner (or until
		 * nft can say whose it is).
		 */
		net_set_err(err, st < 0 ? st : -EEXIST, "%s (the table was left alone%s)",
			    why ? why : "cannot tell whose the table is",
			    ret > 0 ? "; prism's routes of it were removed" : "");
		free(why);
		return st < 0 ? st : -EEXIST;
	}
	free(why);
	ret = table_delete(t, err);
	return ret < 0 ? ret : 0;
}

int net_show(const struct cfg *cfg, FILE *out)
{
	struct addr_prefix *pfx = NULL;
	char ps[ADDR_STRLEN];
	char *script;
	long n = net_route_prefixes(cfg, &pfx);

	/* All or nothing: a script cut short by a failed allocation would
	 * read as a complete one.
	 */
	if (n < 0)
		return (int)n;
	script = net_nft_script(cfg);
	if (!script) {
		free(pfx);
		return -ENOMEM;
	}
	errno = 0; /* what a failed write sets, not what came before */
	for (long i = 0; i < n; i++) {
		addr_fmt_prefix(&pfx[i], ps);
		fprintf(out, "ip route add local %s dev lo table local proto %d metric %u\n", ps,
			RTPROT_PRISM, net_route_metric(cfg->nft_table));
	}
	free(pfx);
	fputs(script, out);
	free(script);
	if (fflush(out) != 0 || ferror(out))
		return errno ? -errno : -EIO;
	return 0;
}

/* netsetup.c - installs and removes the network state prism owns: AnyIP
 * "local" routes in table local (libmnl) and one nftables table that TPROXYs
 * claimed (address . port) pairs to the listener (libnftables).
 *
 * The table, per family (4 / 6):
 *   prerouting  daddr in served (every edge prefix) -> jump guard
 *   guard       ban -> ICMP errors and ND accepted -> non-TCP unserved ->
 *               per-app deny / allow -> global deny / allow (skipping the
 *               points of apps with lists of their own) -> SYN meter ->
 *               claims: tproxy, accept -> the host's own sockets accept ->
 *               unserved (drop, or RST with protection.unserved: reject)
 * Every drop counts in a named counter (banned, app_denied,
 * app_not_allowed, denied, not_allowed, syn_flood, unserved). A rule runs
 * only when the config uses it, so the default costs a few lookups per
 * packet to a served prefix and nothing for the host's other traffic. No
 * conntrack anywhere: every rule decides on the packet alone.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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
#include "ban.h"
#include "cfg.h"
#include "log.h"
#include "netsetup.h"
#include "rt.h"

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
int net_check_table(const char *t, char **err)
{
	size_t n = t ? strlen(t) : 0;

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
	return net_set_err(err, -EINVAL,
			   "invalid nftables table name \"%s\" (a letter, then letters, digits, "
			   "_ - or .; at most 64)",
			   t ? t : "");
}

static int prefix_cmp(const void *a, const void *b);
static long edge_prefixes(const struct cfg *cfg, struct addr_prefix **out);

/* ---- the nft script ---------------------------------------------------- */

/* The per-family words of the script. */
struct fam {
	bool v4;
	char d;		  /* set name suffix: '4' or '6' */
	const char *ip;	  /* payload keyword: ip / ip6 */
	const char *type; /* set key type */
};

static const struct fam fams[2] = {
    {.v4 = true, .d = '4', .ip = "ip", .type = "ipv4_addr"},
    {.v4 = false, .d = '6', .ip = "ip6", .type = "ipv6_addr"},
};

/* Elements of one set as they are printed: the separator before each one
 * and the closing brace depend on how many came before.
 */
struct set_out {
	FILE *f;
	size_t n;
};

/* One element per line: a big config stays readable in `net show`, and
 * nft parses newlines inside the braces as it does in its own `list
 * ruleset` output.
 */
static void elem_begin(struct set_out *o)
{
	fputs(o->n++ ? ",\n\t\t\t" : "\t\telements = {\n\t\t\t", o->f);
}

static void set_begin(struct set_out *o, FILE *f, const char *name, const struct fam *fm,
		      const char *type, const char *flags)
{
	o->f = f;
	o->n = 0;
	fprintf(f, "\tset %s%c {\n\t\ttype %s;%s%s%s\n", name, fm->d, type, flags ? " " : "",
		flags ? flags : "", flags ? ";" : "");
}

static void set_end(struct set_out *o)
{
	/* nft rejects "elements = { }": an empty set simply has none. */
	if (o->n)
		fputs("\n\t\t}\n", o->f);
	fputs("\t}\n", o->f);
}

/* Prints the address range [lo, hi] as one address, a prefix, or a range. */
static void print_range(FILE *f, const struct in6_addr *lo, const struct in6_addr *hi, bool v4)
{
	char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	int bytes = v4 ? 4 : 16, off = v4 ? 12 : 0;
	int plen = range_prefix_len(&lo->s6_addr[off], &hi->s6_addr[off], bytes);

	fmt_addr(lo, v4, a, sizeof(a));
	if (plen == bytes * 8) {
		fputs(a, f);
	} else if (plen >= 0) {
		fprintf(f, "%s/%d", a, plen);
	} else {
		fmt_addr(hi, v4, b, sizeof(b));
		fprintf(f, "%s-%s", a, b);
	}
}

static void print_ports(FILE *f, uint16_t lo, uint16_t hi)
{
	if (lo == hi)
		fprintf(f, " . %u", lo);
	else
		fprintf(f, " . %u-%u", lo, hi);
}

static void print_prefix(FILE *f, const struct addr_prefix *p)
{
	char ps[ADDR_STRLEN];

	fmt_prefix(p, ps, sizeof(ps));
	fputs(ps, f);
}

/* A list of prefixes of one family, sorted, with every prefix that lies
 * inside another one dropped: nft refuses overlapping interval elements,
 * and the outer prefix already says it all.
 */
struct plist {
	struct addr_prefix *v;
	size_t n;
};

static bool prefix_contains(const struct addr_prefix *outer, const struct addr_prefix *in)
{
	if (outer->len > in->len)
		return false;
	for (unsigned int bit = 0; bit < outer->len; bit += 8) {
		unsigned int left = outer->len - bit;
		uint8_t mask = left >= 8 ? 0xff : (uint8_t)(0xff << (8 - left));

		if ((outer->addr.s6_addr[bit / 8] ^ in->addr.s6_addr[bit / 8]) & mask)
			return false;
	}
	return true;
}

static int plist_make(struct plist *out, const struct addr_prefix *in, size_t n, bool v4)
{
	size_t k = 0;

	out->v = NULL;
	out->n = 0;
	if (n == 0)
		return 0;
	out->v = calloc(n, sizeof(*out->v));
	if (!out->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (is_v4_prefix(&in[i]) == v4)
			out->v[k++] = in[i];
	qsort(out->v, k, sizeof(*out->v), prefix_cmp);
	/* Sorted by address, then length: a prefix inside any kept one is
	 * inside the last kept one (prefixes nest or are disjoint).
	 */
	for (size_t i = 0; i < k; i++)
		if (out->n == 0 || !prefix_contains(&out->v[out->n - 1], &out->v[i]))
			out->v[out->n++] = out->v[i];
	return 0;
}

static void print_plist_set(FILE *f, const char *name, const struct fam *fm, const struct plist *l)
{
	struct set_out o;

	set_begin(&o, f, name, fm, fm->type, "flags interval");
	for (size_t i = 0; i < l->n; i++) {
		elem_begin(&o);
		print_prefix(f, &l->v[i]);
	}
	set_end(&o);
}

/* Which apps' points a set is about. */
enum own_kind {
	OWN_ANY,	   /* every claim */
	OWN_APP,	   /* the points app <app> owns */
	OWN_SET_DENY,	   /* owned by an app with its own deny list */
	OWN_SET_ALLOW,	   /* owned by an app with its own allow list (maybe empty) */
	OWN_ENFORCE_ALLOW, /* owned by an app with its own non-empty allow list */
};

/* Walks the cover of all claims and emits the (address range . port
 * range) pieces whose owner, as rt_lookup routes it, is picked by <kind>.
 * rt_cover's elements lie each within one trie node's own addresses, so
 * the owner of a port is the same across an element's address range; it
 * changes only at a port where some claim starts or ends (<bounds>).
 */
struct own_walk {
	const struct cfg *cfg;
	bool v4;
	enum own_kind kind;
	size_t app;
	const uint32_t *bounds; /* sorted, distinct: every claim's lo and hi + 1 */
	size_t nb;
	struct set_out *o;
	const struct plist *src; /* non-NULL: one element per source prefix */
};

static bool own_pick(const struct own_walk *w, uint32_t app)
{
	const struct cfg_protection *p;

	if (app == RT_NONE || app >= w->cfg->n_apps)
		return false;
	p = &w->cfg->apps[app].protection;
	switch (w->kind) {
	case OWN_ANY:
		return true;
	case OWN_APP:
		return app == w->app;
	case OWN_SET_DENY:
		return p->set_deny;
	case OWN_SET_ALLOW:
		return p->set_allow;
	case OWN_ENFORCE_ALLOW:
		return p->set_allow && p->n_allow > 0;
	}
	return false;
}

/* The smallest bound above <p>, or 65536. */
static uint32_t next_bound(const struct own_walk *w, uint32_t p)
{
	size_t lo = 0, hi = w->nb;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (w->bounds[mid] <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < w->nb ? w->bounds[lo] : 65536;
}

static void own_emit(struct own_walk *w, const struct rt_elem *e, uint32_t plo, uint32_t phi)
{
	size_t n = w->src ? w->src->n : 1;

	for (size_t i = 0; i < n; i++) {
		elem_begin(w->o);
		if (w->src) {
			print_prefix(w->o->f, &w->src->v[i]);
			fputs(" . ", w->o->f);
		}
		print_range(w->o->f, &e->lo, &e->hi, w->v4);
		print_ports(w->o->f, (uint16_t)plo, (uint16_t)phi);
	}
}

static int own_elem(const struct rt_elem *e, void *arg)
{
	struct own_walk *w = arg;
	uint32_t p = e->plo, run_lo = 0;
	bool in_run = false;

	while (p <= e->phi) {
		uint32_t next = next_bound(w, p);
		bool in = own_pick(w, rt_lookup(w->cfg->rt, &e->lo, (uint16_t)p));

		if (in && !in_run)
			run_lo = p;
		else if (!in && in_run)
			own_emit(w, e, run_lo, p - 1);
		in_run = in;
		p = next - 1 < e->phi ? next : (uint32_t)e->phi + 1;
	}
	if (in_run)
		own_emit(w, e, run_lo, e->phi);
	return 0;
}

static int bound_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Collects every claim's port bounds, sorted and distinct. Returns the
 * count or -ENOMEM.
 */
static long port_bounds(const struct cfg *cfg, uint32_t **out)
{
	size_t n = 0, k = 0;
	uint32_t *v;

	*out = NULL;
	for (size_t i = 0; i < cfg->n_apps; i++)
		n += 2 * cfg->apps[i].n_ports;
	if (n == 0)
		return 0;
	v = calloc(n, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->n_apps; i++)
		for (size_t j = 0; j < cfg->apps[i].n_ports; j++) {
			v[k++] = cfg->apps[i].ports[j].lo;
			v[k++] = (uint32_t)cfg->apps[i].ports[j].hi + 1;
		}
	qsort(v, k, sizeof(*v), bound_cmp);
	n = 0;
	for (size_t i = 0; i < k; i++)
		if (n == 0 || v[n - 1] != v[i])
			v[n++] = v[i];
	*out = v;
	return (long)n;
}

/* A set of (daddr . dport) or, with <src>, (saddr . daddr . dport). */
static void print_own_set(FILE *f, const struct cfg *cfg, const struct fam *fm, const char *name,
			  enum own_kind kind, const uint32_t *bounds, size_t nb)
{
	struct set_out o;
	struct own_walk w = {
	    .cfg = cfg, .v4 = fm->v4, .kind = kind, .bounds = bounds, .nb = nb, .o = &o};
	char type[64];

	snprintf(type, sizeof(type), "%s . inet_service", fm->type);
	set_begin(&o, f, name, fm, type, "flags interval");
	if (cfg->rt)
		rt_cover(cfg->rt, fm->v4, own_elem, &w);
	set_end(&o);
}

/* appdeny / appallow: for each app with its own list, (each source prefix
 * of that list . each point the app owns). Points of different apps are
 * disjoint and a list is free of nested prefixes, so no two elements
 * overlap.
 */
static int print_src_set(FILE *f, const struct cfg *cfg, const struct fam *fm, const char *name,
			 bool deny, const uint32_t *bounds, size_t nb)
{
	struct set_out o;
	struct own_walk w = {
	    .cfg = cfg, .v4 = fm->v4, .kind = OWN_APP, .bounds = bounds, .nb = nb, .o = &o};
	char type[80];
	int ret = 0;

	snprintf(type, sizeof(type), "%s . %s . inet_service", fm->type, fm->type);
	set_begin(&o, f, name, fm, type, "flags interval");
	for (size_t i = 0; i < cfg->n_apps && cfg->rt; i++) {
		const struct cfg_protection *p = &cfg->apps[i].protection;
		struct plist l;

		if (deny ? !(p->set_deny && p->n_deny) : !(p->set_allow && p->n_allow))
			continue;
		ret = plist_make(&l, deny ? p->deny : p->allow, deny ? p->n_deny : p->n_allow,
				 fm->v4);
		if (ret)
			break;
		w.app = i;
		w.src = &l;
		if (l.n)
			rt_cover(cfg->rt, fm->v4, own_elem, &w);
		free(l.v);
	}
	set_end(&o);
	return ret;
}

static const char *rate_unit(uint32_t per_ms)
{
	switch (per_ms) {
	case 60000:
		return "minute";
	case 3600000:
		return "hour";
	case 86400000:
		return "day";
	default:
		return "second";
	}
}

/* What the guard chain needs, worked out once for both families. */
struct guard_plan {
	bool app_deny;	  /* some app has its own non-empty deny list */
	bool own_deny;	  /* some app has its own deny list: global deny skips it */
	bool app_allow;	  /* some app has its own non-empty allow list */
	bool own_allow;	  /* some app has its own allow list: global allow skips it */
	bool deny, allow; /* the global lists are non-empty */
	bool syn;	  /* global syn_rate_per_source */
};

static void plan_guard(const struct cfg *cfg, struct guard_plan *g)
{
	memset(g, 0, sizeof(*g));
	for (size_t i = 0; i < cfg->n_apps; i++) {
		const struct cfg_protection *p = &cfg->apps[i].protection;

		g->own_deny |= p->set_deny;
		g->app_deny |= p->set_deny && p->n_deny > 0;
		g->own_allow |= p->set_allow;
		g->app_allow |= p->set_allow && p->n_allow > 0;
	}
	g->deny = cfg->protection.n_deny > 0;
	g->allow = cfg->protection.n_allow > 0;
	g->syn = cfg->protection.syn_rate_per_source.n > 0;
}

static bool fam_on(const struct cfg *cfg, const struct fam *fm)
{
	return fm->v4 || cfg->listen6_on;
}

/* The sets of one family. <bans>: elements to put back into the ban set
 * (see net_up), or NULL.
 */
static int print_sets(FILE *f, const struct cfg *cfg, const struct fam *fm,
		      const struct guard_plan *g, const uint32_t *bounds, size_t nb,
		      const char *bans)
{
	struct addr_prefix *edges = NULL;
	struct plist l;
	struct set_out o;
	long n;
	int ret;

	/* Bans carry their own timeout; the size bounds what prism and
	 * `prism ban` can make the kernel hold.
	 */
	set_begin(&o, f, "ban", fm, fm->type, "size 65536; flags timeout");
	if (bans && *bans) {
		elem_begin(&o);
		fputs(bans, f);
	}
	set_end(&o);
	if (!fam_on(cfg, fm))
		return 0;

	print_own_set(f, cfg, fm, "claims", OWN_ANY, bounds, nb);

	n = edge_prefixes(cfg, &edges);
	if (n < 0)
		return (int)n;
	ret = plist_make(&l, edges, (size_t)n, fm->v4);
	free(edges);
	if (ret)
		return ret;
	print_plist_set(f, "served", fm, &l);
	free(l.v);

	if ((ret = plist_make(&l, cfg->protection.deny, cfg->protection.n_deny, fm->v4)))
		return ret;
	print_plist_set(f, "deny", fm, &l);
	free(l.v);
	if ((ret = plist_make(&l, cfg->protection.allow, cfg->protection.n_allow, fm->v4)))
		return ret;
	print_plist_set(f, "allow", fm, &l);
	free(l.v);

	if ((ret = print_src_set(f, cfg, fm, "appdeny", true, bounds, nb)))
		return ret;
	print_own_set(f, cfg, fm, "appdenyown", OWN_SET_DENY, bounds, nb);
	if ((ret = print_src_set(f, cfg, fm, "appallow", false, bounds, nb)))
		return ret;
	print_own_set(f, cfg, fm, "appallowdst", OWN_ENFORCE_ALLOW, bounds, nb);
	print_own_set(f, cfg, fm, "appallowown", OWN_SET_ALLOW, bounds, nb);

	/* The SYN meter: one token bucket per source (an IPv6 source per
	 * /64, what one host usually gets), forgotten a minute after its
	 * last SYN. When it is full, new sources go unmetered: a flood from
	 * spoofed addresses is SYN cookies' job, not a per-source limit's.
	 */
	if (g->syn) {
		set_begin(&o, f, "synrate", fm, fm->type,
			  "size 65536; flags dynamic,timeout; timeout 60s");
		set_end(&o);
	}
	return 0;
}

static void print_guard(FILE *f, const struct cfg *cfg, const struct guard_plan *g)
{
	const struct cfg_rate *r = &cfg->protection.syn_rate_per_source;

	/* Only traffic to the served prefixes comes here (see prerouting). */
	fputs("\tchain guard {\n", f);
	for (int i = 0; i < 2; i++)
		if (fam_on(cfg, &fams[i]))
			fprintf(f, "\t\t%s saddr @ban%c counter name banned drop\n", fams[i].ip,
				fams[i].d);
	/* ICMP errors belong to connections prism relays (path MTU
	 * discovery needs "packet too big") and ND to the addresses
	 * themselves: without conntrack they cannot be matched to a flow, so
	 * they pass by type. Everything else that is not TCP, prism does not
	 * serve.
	 */
	fputs("\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } "
	      "accept\n",
	      f);
	if (cfg->listen6_on)
		fputs("\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, "
		      "parameter-problem, nd-neighbor-solicit, nd-neighbor-advert } accept\n",
		      f);
	fputs("\t\tmeta l4proto != tcp counter name unserved drop\n", f);
	for (int i = 0; i < 2; i++) {
		const struct fam *fm = &fams[i];

		if (!fam_on(cfg, fm))
			continue;
		/* An app's own lists replace the global ones for the points it
		 * owns: its rules come first, and the global rules skip the
		 * points of apps that set their own (appdenyown/appallowown).
		 */
		if (g->app_deny)
			fprintf(f,
				"\t\t%s saddr . %s daddr . tcp dport @appdeny%c counter name "
				"app_denied drop\n",
				fm->ip, fm->ip, fm->d);
		if (g->app_allow)
			fprintf(f,
				"\t\t%s daddr . tcp dport @appallowdst%c %s saddr . %s daddr . tcp "
				"dport != @appallow%c counter name app_not_allowed drop\n",
				fm->ip, fm->d, fm->ip, fm->ip, fm->d);
		if (g->deny) {
			fprintf(f, "\t\t%s saddr @deny%c ", fm->ip, fm->d);
			if (g->own_deny)
				fprintf(f, "%s daddr . tcp dport != @appdenyown%c ", fm->ip, fm->d);
			fputs("counter name denied drop\n", f);
		}
		/* An allow list is about who may connect to the apps: it
		 * leaves alone the rest of what reaches a served address
		 * (replies to the host's own connections, see below), while
		 * a denied source gets nothing.
		 */
		if (g->allow) {
			fprintf(f, "\t\t%s saddr != @allow%c %s daddr . tcp dport @claims%c ",
				fm->ip, fm->d, fm->ip, fm->d);
			if (g->own_allow)
				fprintf(f, "%s daddr . tcp dport != @appallowown%c ", fm->ip,
					fm->d);
			fputs("counter name not_allowed drop\n", f);
		}
	}
	/* A SYN alone (no ACK, FIN, RST) opens a connection; no conntrack
	 * needed to tell. Burst: one period's worth at once.
	 */
	if (g->syn) {
		for (int i = 0; i < 2; i++) {
			const struct fam *fm = &fams[i];

			if (!fam_on(cfg, fm))
				continue;
			fprintf(f,
				"\t\ttcp flags & (fin | syn | rst | ack) == syn update @synrate%c "
				"{ %s saddr%s limit rate over %u/%s burst %u packets } counter "
				"name syn_flood drop\n",
				fm->d, fm->ip, fm->v4 ? "" : " & ffff:ffff:ffff:ffff::", r->n,
				rate_unit(r->per_ms), r->n);
		}
	}
}

/* The rest of the guard chain: the claims go to the listener, the host's
 * own connections pass, everything else is unserved.
 */
static void print_guard_tail(FILE *f, const struct cfg *cfg)
{
	char a4[INET_ADDRSTRLEN], a6[INET6_ADDRSTRLEN];
	/* Only TCP is left here (see print_guard). */
	const char *unserved = cfg->protection.unserved == CFG_UNSERVED_REJECT
				   ? "counter name unserved reject with tcp reset"
				   : "counter name unserved drop";

	inet_ntop(AF_INET, &cfg->listen4.sin_addr, a4, sizeof(a4));
	inet_ntop(AF_INET6, &cfg->listen6.sin6_addr, a6, sizeof(a6));
	/* tproxy needs an explicit "meta l4proto tcp" in family inet, and
	 * is not a verdict by itself: accept ends the walk.
	 */
	fprintf(f, "\t\tmeta l4proto tcp ip daddr . tcp dport @claims4 tproxy ip to %s:%u accept\n",
		a4, ntohs(cfg->listen4.sin_port));
	if (cfg->listen6_on)
		fprintf(f,
			"\t\tmeta l4proto tcp ip6 daddr . tcp dport @claims6 tproxy ip6 to [%s]:%u "
			"accept\n",
			a6, ntohs(cfg->listen6.sin6_port));
	/* A served address may also be one the host uses itself (its own
	 * main address as an edge): replies to its outgoing connections, and
	 * services bound to that address by name, have a socket. Those pass.
	 * A port only a wildcard listener (0.0.0.0:22) would take stays
	 * unserved: that listener is not meant to answer on every address of
	 * the prefixes. The wildcard key reads full sockets only (it breaks
	 * on SYN_RECV and TIME_WAIT ones), hence the second lookup, whose
	 * key any socket has. Only unserved packets pay for the lookups.
	 */
	fprintf(f, "\t\tsocket wildcard 1 %s\n", unserved);
	fputs("\t\tsocket transparent 0 accept\n", f);
	fprintf(f, "\t\t%s\n", unserved);
	fputs("\t}\n", f);
}

static const char *const counters[] = {"banned",      "app_denied", "app_not_allowed", "denied",
				       "not_allowed", "syn_flood",  "unserved"};

/* The script for <cfg>, with <bans>[0] / [1] (v4 / v6 elements, or NULL)
 * put back into the ban sets.
 */
static char *build_script(const struct cfg *cfg, const char *const bans[2])
{
	const char *t = cfg->nft_table;
	struct guard_plan g;
	uint32_t *bounds = NULL;
	char *buf = NULL;
	size_t len = 0;
	long nb;
	int ret = 0;
	FILE *f;

	nb = port_bounds(cfg, &bounds);
	if (nb < 0)
		return NULL;
	f = open_memstream(&buf, &len);
	if (!f) {
		free(bounds);
		return NULL;
	}
	plan_guard(cfg, &g);

	/* One transaction: create the table if missing, delete it, build it
	 * anew. nft applies the whole buffer atomically, so the old rules stay
	 * in force until the new ones replace them, and a failure leaves the
	 * old table untouched.
	 */
	fprintf(f, "table inet %s\ndelete table inet %s\ntable inet %s {\n", t, t, t);
	/* Named counters, one per reason to drop: `nft list counters table
	 * inet TABLE` tells what was dropped and why.
	 */
	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
		fprintf(f, "\tcounter %s {\n\t}\n", counters[i]);
	for (int i = 0; i < 2 && !ret; i++)
		ret = print_sets(f, cfg, &fams[i], &g, bounds, (size_t)nb, bans ? bans[i] : NULL);
	/* Hook prerouting: TPROXY must act before the routing decision it
	 * steers to the local socket. Priority mangle (-150) is where the
	 * iptables TPROXY target lived and where nft documents it. Only
	 * traffic to the served prefixes is guarded; the rest of the host's
	 * traffic passes with one set lookup.
	 */
	fputs("\tchain prerouting {\n"
	      "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
	      "\t\tip daddr @served4 jump guard\n",
	      f);
	if (cfg->listen6_on)
		fputs("\t\tip6 daddr @served6 jump guard\n", f);
	fputs("\t}\n", f);
	print_guard(f, cfg, &g);
	print_guard_tail(f, cfg);
	fputs("}\n", f);
	free(bounds);

	if (ferror(f) || ret) {
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

char *net_nft_script(const struct cfg *cfg)
{
	return build_script(cfg, NULL);
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
		return net_set_err(err, -ENOMEM, "%s: cannot create an nftables context",
				   what ? what : "nft");
	/* Capture both streams: nft's messages go into ours, not on stdout. */
	if (nft_ctx_buffer_error(ctx) != 0 || nft_ctx_buffer_output(ctx) != 0) {
		ret = net_set_err(err, -ENOMEM, "%s: cannot buffer nftables output",
				  what ? what : "nft");
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
		ret = net_set_err(err, -EINVAL, "%s%s%.*s", what ? what : "", what ? ": " : "",
				  (int)n, n ? e : "nftables failed without a message");
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
		return net_set_err(err, -errno, "cannot open a netlink socket: %s",
				   strerror(errno));
	if (mnl_socket_bind(nl->sock, 0, MNL_SOCKET_AUTOPID) == -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return net_set_err(err, -e, "cannot bind a netlink socket: %s", strerror(e));
	}
	/* Bounds every wait for the kernel: an ack or a dump batch that
	 * never comes turns into EAGAIN instead of a hang.
	 */
	if (setsockopt(mnl_socket_get_fd(nl->sock), SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo)) ==
	    -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return net_set_err(err, -e, "cannot set a netlink socket timeout: %s", strerror(e));
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
		if (ret) {
			const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);

			net_set_err(
			    err, ret, "cannot delete a proto %d route (family %s, /%u): %s%s%s%s",
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
		return net_set_err(err, (int)n, "cannot add routes: %s", strerror((int)-n));
	if (n == 0) {
		ret = nft_run(script, what, err);
		return ret ? ret : routes_prune(NULL, 0, err);
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
		net_set_err(err, ret, "cannot add route local %s dev lo table local: %s%s%s%s", ps,
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
	ret = nft_run(script, NULL, &e);
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

/* ---- bans across a reload ------------------------------------------------ */

/* Replacing the table empties its ban sets. The bans in force are read
 * first (ban_list's lines) and put back, each with what is left of its
 * time, in the same transaction that replaces the table. A ban added
 * between the read and the load is lost: the window is one nft round
 * trip, and prism re-bans an offender that keeps at it.
 */
static void saved_bans(const char *table, char *out[2])
{
	char *text = NULL, *line, *save = NULL, *e = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	FILE *b[2] = {NULL, NULL};
	char *bbuf[2] = {NULL, NULL};
	size_t blen[2] = {0, 0}, n[2] = {0, 0};

	out[0] = out[1] = NULL;
	if (!f)
		return;
	/* No table yet, or one without ban sets: nothing to keep. */
	if (ban_list(table, f, &e) <= 0) {
		free(e);
		fclose(f);
		free(text);
		return;
	}
	if (fclose(f) != 0 || !text)
		goto out;
	for (int i = 0; i < 2; i++) {
		b[i] = open_memstream(&bbuf[i], &blen[i]);
		if (!b[i])
			goto out;
	}
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char addr[INET6_ADDRSTRLEN];
		unsigned long secs;
		int v6;

		if (sscanf(line, "%45s expires in %lus", addr, &secs) == 2) {
			v6 = strchr(addr, ':') != NULL;
			fprintf(b[v6], "%s%s timeout %lus", n[v6]++ ? ",\n\t\t\t" : "", addr,
				secs ? secs : 1);
		} else if (sscanf(line, "%45s never expires", addr) == 1) {
			v6 = strchr(addr, ':') != NULL;
			fprintf(b[v6], "%s%s", n[v6]++ ? ",\n\t\t\t" : "", addr);
		}
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
	free(text);
}

int net_up(const struct cfg *cfg, char **err)
{
	char *script, *what = NULL, *bans[2];
	int ret = net_check_table(cfg->nft_table, err);

	if (ret)
		return ret;
	check_sysctls(cfg);
	saved_bans(cfg->nft_table, bans);
	script = build_script(cfg, (const char *const *)bans);
	free(bans[0]);
	free(bans[1]);
	if (!script)
		return net_set_err(err, -ENOMEM, "cannot build the nft script: out of memory");
	if (asprintf(&what, "cannot load nftables table inet %s", cfg->nft_table) == -1) {
		free(script);
		return net_set_err(err, -ENOMEM, "out of memory");
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
	int ret = net_check_table(t, err);

	if (ret)
		return ret;
	/* Add-if-missing then delete, in one transaction: removes the table
	 * when it is there, and is no error when it is not.
	 */
	if (asprintf(&script, "table inet %s\ndelete table inet %s\n", t, t) == -1)
		return net_set_err(err, -ENOMEM, "out of memory");
	if (asprintf(&what, "cannot delete nftables table inet %s", t) == -1) {
		free(script);
		return net_set_err(err, -ENOMEM, "out of memory");
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

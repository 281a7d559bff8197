/* cfg_origins.c - config loader: an app's origins, name resolution, balancing and health. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cfg-int.h"

#define CFG_ORIGINS_MAX	 1000 /* per app; duplicates are found pairwise */
#define CFG_HOST_MAX	 253  /* RFC 1035 name length, without a trailing dot */
#define CFG_LABEL_MAX	 63
#define CFG_WEIGHT_MAX	 1000
#define CFG_RISE_MAX	 100 /* also fall */
#define CFG_FAILURES_MAX 1000
#define DEF_WEIGHT	 1

/* ---- origins ---- */

/* Load-time facts about one origin that the snapshot does not keep. */
struct origin_src {
	yaml_mark_t mark;      /* of its address */
	yaml_mark_t port_mark; /* of its port key's value, for a range */
	uint16_t hi;	       /* CFG_PORT_MAP: the last port of its range */
};

/* True when the first <len> bytes of <s> are a host name per RFC 1123:
 * dot-separated labels of 1-63 letters, digits and '-', neither starting
 * nor ending with '-', at most 253 bytes (a trailing dot allowed). The last
 * label must start with a letter, as every top-level domain does: so a
 * mistyped IPv4 address ("192.0.2.300") is reported as one, and no numeric
 * form that getaddrinfo would still parse ("1.2.3.0x4") passes for a name.
 */
static bool host_name_ok(const char *s, size_t len)
{
	size_t i, start = 0;

	if (len > 0 && s[len - 1] == '.')
		len--;
	if (len == 0 || len > CFG_HOST_MAX)
		return false;
	for (i = 0; i <= len; i++) {
		if (i == len || s[i] == '.') {
			size_t l = i - start;

			if (l == 0 || l > CFG_LABEL_MAX || s[start] == '-' || s[i - 1] == '-')
				return false;
			if (i == len && !isalpha((unsigned char)s[start]))
				return false;
			start = i + 1;
		} else if (!isalnum((unsigned char)s[i]) && s[i] != '-') {
			return false;
		}
	}
	return true;
}

/* Keeps the IPv4 and IPv6 addresses of <v>, each once, in their order, with
 * port 0. Returns how many remain.
 */
static size_t addrs_dedupe(struct sockaddr_storage *v, size_t n)
{
	size_t i, j, k = 0;

	for (i = 0; i < n; i++) {
		if (v[i].ss_family != AF_INET && v[i].ss_family != AF_INET6)
			continue;
		addr_sa_set_port((struct sockaddr *)&v[i], 0);
		for (j = 0; j < k; j++)
			if (addr_sa_same_host(&v[j], &v[i]))
				break;
		if (j == k)
			v[k++] = v[i];
	}
	return k;
}

static int addr_order(const void *pa, const void *pb)
{
	const struct sockaddr_storage *a = pa, *b = pb;

	if (a->ss_family != b->ss_family)
		return a->ss_family == AF_INET ? -1 : 1;
	if (a->ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			      &((const struct sockaddr_in *)b)->sin_addr, 4);
	return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
		      &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
}

size_t cfg_addrs_cut(struct sockaddr_storage *v, size_t n)
{
	if (n <= CFG_NAME_ADDRS_MAX)
		return n;
	qsort(v, n, sizeof(*v), addr_order);
	return CFG_NAME_ADDRS_MAX;
}

static int resolve_system(const char *host, struct sockaddr_storage **addrs, size_t *n,
			  const char **why)
{
	/* AI_ADDRCONFIG: only the families the host has an address of (other
	 * than loopback). A name's AAAA records are of no use on a host with
	 * IPv6 off, where every attempt at them would fail. glibc counts a
	 * link-local address as having IPv6: on a host with IPv6 on but only
	 * link-local addresses, they still come back, and fail over (conn.c).
	 */
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res = NULL, *ai;
	size_t cap = 0, k = 0;
	int rc;

	*addrs = NULL;
	*n = 0;
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0) {
		*why = gai_strerror(rc);
		return rc == EAI_MEMORY ? -ENOMEM : rc == EAI_AGAIN ? -EAGAIN : -ENOENT;
	}
	for (ai = res; ai; ai = ai->ai_next)
		cap++;
	*addrs = calloc(cap ? cap : 1, sizeof(**addrs));
	if (!*addrs) {
		freeaddrinfo(res);
		*why = "out of memory";
		return -ENOMEM;
	}
	for (ai = res; ai; ai = ai->ai_next)
		if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
		    ai->ai_addrlen <= sizeof(**addrs))
			memcpy(&(*addrs)[k++], ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(res);
	*n = addrs_dedupe(*addrs, k);
	if (*n == 0) {
		free(*addrs);
		*addrs = NULL;
		*why = "no IPv4 or IPv6 address";
		return -ENOENT;
	}
	return 0;
}

int (*cfg_resolver)(const char *host, struct sockaddr_storage **addrs, size_t *n,
		    const char **why) = resolve_system;

struct memo_ent {
	char *host;
	int rc;
	const char *why; /* resolvers return static strings */
	struct sockaddr_storage *addrs;
	size_t n;
};

static int memo_cmp(const void *a, const void *b)
{
	return strcmp(((const struct memo_ent *)a)->host, ((const struct memo_ent *)b)->host);
}

static void memo_ent_free(void *p)
{
	struct memo_ent *e = p;

	free(e->host);
	free(e->addrs);
	free(e);
}

/* A copy of <n> addresses (NULL for none), or NULL with errno ENOMEM. */
static struct sockaddr_storage *addrs_copy(const struct sockaddr_storage *v, size_t n)
{
	struct sockaddr_storage *c;

	if (!n)
		return NULL;
	c = malloc(n * sizeof(*c));
	if (c)
		memcpy(c, v, n * sizeof(*c));
	return c;
}

int cfg_resolve_memo(void **memo, const char *host, struct sockaddr_storage **addrs, size_t *n,
		     const char **why)
{
	struct memo_ent key = {.host = (char *)host}, *e, **found;
	int rc;

	found = tfind(&key, memo, memo_cmp);
	if (found) {
		e = *found;
		*addrs = NULL;
		*n = 0;
		if (e->rc != 0) {
			*why = e->why;
			return e->rc;
		}
		*addrs = addrs_copy(e->addrs, e->n);
		if (e->n && !*addrs) {
			*why = "out of memory";
			return -ENOMEM;
		}
		*n = e->n;
		return 0;
	}
	rc = cfg_resolver(host, addrs, n, why);
	/* Remembered when there is memory for it; the answer stands either way. */
	e = calloc(1, sizeof(*e));
	if (!e)
		return rc;
	e->host = strdup(host);
	e->rc = rc;
	e->why = rc != 0 ? *why : NULL;
	e->n = rc == 0 ? *n : 0;
	e->addrs = rc == 0 ? addrs_copy(*addrs, *n) : NULL;
	if (!e->host || (e->n && !e->addrs) || !tsearch(e, memo, memo_cmp))
		memo_ent_free(e);
	return rc;
}

void cfg_memo_free(void **memo)
{
	tdestroy(*memo, memo_ent_free);
	*memo = NULL;
}

void cfg_origin_clear(struct cfg_origin *o)
{
	free(o->host);
	free(o->addrs);
	memset(o, 0, sizeof(*o));
}

/* Formats <o> for messages: "198.51.100.1:80", "[2001:db8::1]:9000-9999",
 * "origin.internal".
 */
static const char *fmt_origin(const struct cfg_origin *o, uint16_t hi, char *buf, size_t size)
{
	bool v6 = !o->is_name && o->addrs[0].ss_family == AF_INET6;
	const char *l = v6 ? "[" : "", *r = v6 ? "]" : "", *host = o->host;
	char ip[ADDR_STRLEN];

	if (!o->is_name) {
		/* The address as prism reads it, however it was written. */
		struct in6_addr a;
		uint16_t p;

		addr_from_sa((const struct sockaddr *)&o->addrs[0], &a, &p);
		host = addr_fmt(&a, ip);
	}

	if (o->port_mode == CFG_PORT_FIXED)
		snprintf(buf, size, "%s%s%s:%u", l, host, r, o->port);
	else if (o->port_mode == CFG_PORT_MAP)
		snprintf(buf, size, "%s%s%s:%u-%u", l, host, r, o->port, hi);
	else
		snprintf(buf, size, "%s", host);
	return buf;
}

/* Parses origin address <s> (the value of node <n>, under <key>) into <o>:
 * "addr", "addr:port", "[v6]:port", "v6", "name" or "name:port". An IP
 * address gets its one address now; a name is resolved once the whole file
 * is accepted (cfg_resolve_names). Returns 0 or -EINVAL after reporting.
 */
static int parse_origin_addr(struct loader *ld, yaml_node_t *n, const char *key, const char *s,
			     struct cfg_origin *o)
{
	const char *why = "", *colon = strchr(s, ':');
	size_t host_len = strlen(s);
	struct sockaddr_storage ss;
	unsigned long port;
	struct in6_addr a;
	uint16_t p;
	bool has_port;
	char q[QBUF];

	if (addr_parse_hostport(s, &ss, &has_port, &why) == 0) {
		const char *h = s[0] == '[' ? s + 1 : s;
		const char *end = s[0] == '[' ? strchr(s, ']') : has_port ? colon : s + host_len;

		addr_from_sa((struct sockaddr *)&ss, &a, &p);
		if (has_port) {
			o->port_mode = CFG_PORT_FIXED;
			o->port = p;
		}
		addr_sa_set_port((struct sockaddr *)&ss, 0);
		o->host = strndup(h, (size_t)(end - h));
		o->addrs = malloc(sizeof(*o->addrs));
		if (!o->host || !o->addrs) {
			ld->oom = true;
			return -ENOMEM;
		}
		o->addrs[0] = ss;
		o->n_addrs = 1;
		return 0;
	}
	if (colon)
		/* One colon: "name:port"; several, and not IPv6: no name either. */
		host_len = strchr(colon + 1, ':') ? 0 : (size_t)(colon - s);
	if (host_len && host_name_ok(s, host_len)) {
		if (colon && (cfg_parse_uint(colon + 1, 65535, &port) != 0 || port == 0)) {
			cfg_err_at(ld, &n->start_mark,
				   "%s: %s is not a valid origin: bad port (expected 1 to 65535)",
				   key, cfg_quote(s, q, sizeof(q)));
			return -EINVAL;
		}
		if (colon) {
			o->port_mode = CFG_PORT_FIXED;
			o->port = (uint16_t)port;
		}
		o->host = strndup(s, host_len);
		if (!o->host) {
			ld->oom = true;
			return -ENOMEM;
		}
		o->is_name = true;
		return 0;
	}
	/* Neither. Explain it as an address when it looks like one. */
	if (host_len && !strpbrk(s, "[]") && strspn(s, "0123456789.") < host_len)
		why = "not an IP address or host name (expected e.g. 198.51.100.10:22, "
		      "[2001:db8::10]:22 or origin.internal:8080; a host name is letters, digits, "
		      "'-' and '.')";
	cfg_err_at(ld, &n->start_mark, "%s: %s is not a valid origin: %s", key,
		   cfg_quote(s, q, sizeof(q)), why);
	return -EINVAL;
}

/* origins.port: 8080 or "9000-9999". Returns 0 or -EINVAL after reporting. */
static int parse_origin_port(struct loader *ld, yaml_node_t *n, enum cfg_port_mode *mode,
			     uint16_t *lo_out, uint16_t *hi_out)
{
	const char *s =
	    cfg_node_str(ld, n, "origins.port", "a port (1-65535) or a range \"LO-HI\"");
	bool range;

	if (!s || cfg_parse_port_range(ld, n, s, "origins.port",
				       "a port or a range \"LO-HI\" (e.g. 8080 or \"9000-9999\")",
				       lo_out, hi_out, &range) < 0)
		return -EINVAL;
	*mode = range ? CFG_PORT_MAP : CFG_PORT_FIXED;
	return 0;
}

/* One origin written as a mapping {address, port, weight, backup}. */
static int load_origin_map(struct loader *ld, yaml_node_t *map, const char *where,
			   struct cfg_origin *o, struct origin_src *os)
{
	struct field f[] = {
	    {.key = "address"}, {.key = "port"}, {.key = "weight"}, {.key = "backup"}};
	enum { F_ADDR, F_PORT, F_WEIGHT, F_BACKUP, F_N };
	size_t errs_before = ld->n_errs + ld->n_dropped;
	enum cfg_port_mode mode = CFG_PORT_DIALED;
	uint16_t lo = 0, hi = 0;
	bool addr_ok = false, port_ok = false;
	const char *s = NULL;
	char q[QBUF];

	cfg_map_fields(ld, map, "origins", where, f, F_N);
	if (f[F_ADDR].val) {
		os->mark = f[F_ADDR].val->start_mark;
		s = cfg_node_str(ld, f[F_ADDR].val, "origins.address",
				 "an IP address or host name, with an optional :port");
		addr_ok = s && parse_origin_addr(ld, f[F_ADDR].val, "origins.address", s, o) == 0;
	} else {
		cfg_err_at(
		    ld, &map->start_mark,
		    "origins: missing required key \"address\" (e.g. address: 198.51.100.10)");
	}
	if (f[F_PORT].val) {
		os->port_mark = f[F_PORT].val->start_mark;
		port_ok = parse_origin_port(ld, f[F_PORT].val, &mode, &lo, &hi) == 0;
	}
	if (addr_ok && port_ok) {
		if (o->port_mode != CFG_PORT_DIALED) {
			cfg_err_at(
			    ld, &f[F_PORT].mark,
			    "origins: %s has a port already, and so does key \"port\"; give it "
			    "once",
			    cfg_quote(s, q, sizeof(q)));
		} else {
			o->port_mode = mode;
			o->port = lo;
			os->hi = hi;
		}
	}
	if (f[F_WEIGHT].val)
		cfg_get_uint(ld, f[F_WEIGHT].val, "origins.weight", 0, CFG_WEIGHT_MAX, &o->weight);
	if (f[F_BACKUP].val)
		cfg_get_bool(ld, f[F_BACKUP].val, "origins.backup", &o->backup);
	return ld->n_errs + ld->n_dropped == errs_before && !ld->oom ? 0 : -EINVAL;
}

/* Whether two origins are the same: host, port kind and port, and for a
 * mapped range its last port too (<a_hi>, <b_hi>).
 */
static bool origin_same(const struct cfg_origin *a, uint16_t a_hi, const struct cfg_origin *b,
			uint16_t b_hi)
{
	if (a->is_name != b->is_name || a->port_mode != b->port_mode || a->port != b->port ||
	    (a->port_mode == CFG_PORT_MAP && a_hi != b_hi))
		return false;
	if (a->is_name)
		return strcasecmp(a->host, b->host) == 0;
	return addr_sa_same_host(&a->addrs[0], &b->addrs[0]);
}

/* The checks across an app's origins, once each loaded cleanly: port
 * ranges against the app's range, duplicates, and that some origin can be
 * chosen at all.
 */
static int check_origins(struct loader *ld, const struct cfg_app *app, const char *label,
			 yaml_node_t *list, const struct origin_src *srcs, bool ports_ok)
{
	size_t i, j, n_primary = 0, n_primary_w = 0, n_w = 0;
	char buf[CFG_HOST_MAX + 32];
	int rc = 0;

	for (i = 0; i < app->n_origins; i++) {
		const struct cfg_origin *o = &app->origins[i];

		if (o->port_mode == CFG_PORT_MAP && ports_ok) {
			const struct cfg_range *r = &app->ports[0];
			unsigned size = (unsigned)srcs[i].hi - o->port + 1;
			unsigned app_size = (unsigned)r->hi - r->lo + 1;

			if (app->n_ports != 1) {
				cfg_err_at(
				    ld, &srcs[i].port_mark,
				    "origins: port range %u-%u maps ports by offset from the app's "
				    "port range, but %s has %zu port entries (give it exactly one "
				    "range, e.g. ports: \"8000-8999\")",
				    o->port, srcs[i].hi, label, app->n_ports);
				rc = -EINVAL;
			} else if (size != app_size) {
				cfg_err_at(
				    ld, &srcs[i].port_mark,
				    "origins: port range %u-%u has %u ports but the app's range "
				    "%u-%u has %u",
				    o->port, srcs[i].hi, size, r->lo, r->hi, app_size);
				rc = -EINVAL;
			}
		}
		for (j = 0; j < i; j++)
			if (origin_same(o, srcs[i].hi, &app->origins[j], srcs[j].hi)) {
				cfg_err_at(ld, &srcs[i].mark,
					   "origins: %s is listed twice (first at line %d)",
					   fmt_origin(o, srcs[i].hi, buf, sizeof(buf)),
					   app->origins[j].pos.line);
				rc = -EINVAL;
				break;
			}
		n_primary += !o->backup;
		n_primary_w += !o->backup && o->weight > 0;
		n_w += o->weight > 0;
	}
	if (n_primary ? n_primary_w == 0 : n_w == 0) {
		cfg_err_at(
		    ld, &list->start_mark,
		    "origins: every %sorigin has weight 0, so no origin can be chosen (give one "
		    "a weight of 1 or more)",
		    n_primary ? "primary (non-backup) " : "");
		rc = -EINVAL;
	}
	return rc;
}

/* origins: one origin, or a list of them; each a string or a mapping. */
int cfg_load_origins(struct loader *ld, struct cfg_app *app, int id, const char *label,
		     bool ports_ok)
{
	const char *expect = "an origin (address[:port], or a mapping with address)";
	yaml_node_t *list = cfg_node_get(ld, id);
	yaml_node_item_t one, *items;
	struct origin_src *srcs;
	char where[CFG_NAME_MAX + 64];
	size_t i, n;
	int rc = 0, over;

	if (list->type == YAML_MAPPING_NODE) {
		one = id;
		items = &one;
		n = 1;
	} else if (cfg_node_items(ld, id, "origins", expect, "origin", &one, &items, &n) != 0) {
		return -EINVAL;
	}
	if (n > CFG_ORIGINS_MAX) {
		cfg_err_at(ld, &list->start_mark, "origins: %zu origins in one app (at most %d)", n,
			   CFG_ORIGINS_MAX);
		return -EINVAL;
	}
	over = cfg_count_add(&ld->n_origins, n, CFG_MAX_ORIGINS, &ld->over_origins);
	if (over == 1)
		cfg_err_at(ld, &list->start_mark,
			   "origins: more than %d origins over all apps (a list used through an "
			   "alias counts each time)",
			   CFG_MAX_ORIGINS);
	if (over)
		return -EINVAL;
	app->origins = calloc(n, sizeof(*app->origins));
	srcs = calloc(n, sizeof(*srcs));
	if (!app->origins || !srcs) {
		free(srcs);
		ld->oom = true;
		return -ENOMEM;
	}
	snprintf(where, sizeof(where), "in an origin of %s", label);
	for (i = 0; i < n; i++) {
		yaml_node_t *o = cfg_node_get(ld, items[i]);
		struct cfg_origin *org = &app->origins[app->n_origins];
		struct origin_src *os = &srcs[app->n_origins];
		int r;

		org->weight = DEF_WEIGHT;
		os->mark = o->start_mark;
		if (o->type == YAML_MAPPING_NODE) {
			r = load_origin_map(ld, o, where, org, os);
		} else {
			const char *s = cfg_node_str(ld, o, "origins", expect);

			r = s ? parse_origin_addr(ld, o, "origins", s, org) : -EINVAL;
		}
		if (r != 0) {
			cfg_origin_clear(org);
			rc = -EINVAL;
			continue;
		}
		/* At the address: where a warning about the name points. */
		org->pos.line = (int)os->mark.line + 1;
		org->pos.col = (int)os->mark.column + 1;
		app->n_origins++;
	}
	if (rc == 0)
		rc = check_origins(ld, app, label, list, srcs, ports_ok);
	free(srcs);
	return rc;
}

/* Resolves every origin name of an accepted config. One that does not
 * resolve is no error: DNS may be down at boot, and prism keeps trying.
 */
void cfg_resolve_names(struct loader *ld)
{
	struct cfg *c = ld->cfg;
	void *memo = NULL;
	size_t a, i;

	for (a = 0; a < c->n_apps; a++) {
		const struct cfg_app *app = &c->apps[a];

		for (i = 0; i < app->n_origins; i++) {
			struct cfg_origin *o = &app->origins[i];
			struct sockaddr_storage *addrs = NULL;
			const char *why = "unknown error";
			char dur[32];
			size_t n = 0;

			if (!o->is_name)
				continue;
			if (cfg_resolve_memo(&memo, o->host, &addrs, &n, &why) == 0 && addrs &&
			    (n = addrs_dedupe(addrs, n)) > 0) {
				n = cfg_addrs_cut(addrs, n); /* as the refreshes do */
				o->addrs = addrs;
				o->n_addrs = n;
				continue;
			}
			free(addrs);
			cfg_warn_at(
			    ld, &o->pos,
			    "origin %s does not resolve (%s); prism will retry every dns.refresh "
			    "(%s)",
			    o->host, why, cfg_fmt_duration(app->dns_refresh_ms, dur, sizeof(dur)));
		}
	}
	cfg_memo_free(&memo);
}

/* ---- balancing, health ---- */

/* health_check {interval, timeout, rise, fall, port, send, expect}. Stores
 * in <*port_given> whether the port key is there (valid or not).
 */
void cfg_load_health(struct loader *ld, yaml_node_t *map, const char *where, struct cfg_health *h,
		     bool *port_given)
{
	struct field f[] = {{.key = "interval"}, {.key = "timeout"}, {.key = "rise"},
			    {.key = "fall"},	 {.key = "port"},    {.key = "send"},
			    {.key = "expect"}};
	enum { F_INTERVAL, F_TIMEOUT, F_RISE, F_FALL, F_PORT, F_SEND, F_EXPECT, F_N };
	bool interval_ok = true;
	char d1[32], d2[32];

	h->on = true;
	*port_given = false;
	if (cfg_map_fields(ld, map, "health_check", where, f, F_N) != 0) {
		/* Not a mapping: that one error, not also a port it lacks. */
		*port_given = true;
		return;
	}
	*port_given = f[F_PORT].val != NULL;
	if (f[F_INTERVAL].val)
		interval_ok = cfg_get_duration(ld, f[F_INTERVAL].val, "health_check.interval", true,
					       &h->interval_ms) == 0;
	if (f[F_TIMEOUT].val) {
		if (cfg_get_duration(ld, f[F_TIMEOUT].val, "health_check.timeout", true,
				     &h->timeout_ms) == 0 &&
		    interval_ok && h->timeout_ms > h->interval_ms)
			cfg_err_at(
			    ld, &f[F_TIMEOUT].val->start_mark,
			    "health_check.timeout: %s is longer than the interval %s (a check "
			    "must end before the next one starts)",
			    cfg_fmt_duration(h->timeout_ms, d1, sizeof(d1)),
			    cfg_fmt_duration(h->interval_ms, d2, sizeof(d2)));
	} else if (h->timeout_ms > h->interval_ms) {
		/* A short interval shortens the default timeout with it. */
		h->timeout_ms = h->interval_ms;
	}
	if (f[F_RISE].val)
		cfg_get_uint(ld, f[F_RISE].val, "health_check.rise", 1, CFG_RISE_MAX, &h->rise);
	if (f[F_FALL].val)
		cfg_get_uint(ld, f[F_FALL].val, "health_check.fall", 1, CFG_RISE_MAX, &h->fall);
	if (f[F_PORT].val)
		cfg_get_port(ld, f[F_PORT].val, "health_check.port", &h->port);
	if (f[F_SEND].val)
		cfg_get_bytes(ld, f[F_SEND].val, "health_check.send", &h->send, &h->send_len);
	if (f[F_EXPECT].val) {
		cfg_get_bytes(ld, f[F_EXPECT].val, "health_check.expect", &h->expect,
			      &h->expect_len);
		if (!f[F_SEND].val)
			cfg_err_at(
			    ld, &f[F_EXPECT].mark,
			    "health_check: expect needs send (prism sends send, then compares "
			    "the start of the reply with expect)");
	}
}

/* passive {failures, cooldown}. */
void cfg_load_passive(struct loader *ld, yaml_node_t *map, const char *where, struct cfg_passive *p)
{
	struct field f[] = {{.key = "failures"}, {.key = "cooldown"}};

	if (cfg_map_fields(ld, map, "passive", where, f, 2) != 0)
		return;
	if (f[0].val)
		cfg_get_uint(ld, f[0].val, "passive.failures", 0, CFG_FAILURES_MAX, &p->failures);
	if (f[1].val)
		cfg_get_duration(ld, f[1].val, "passive.cooldown", true, &p->cooldown_ms);
}

/* dns {refresh}. */
void cfg_load_dns(struct loader *ld, yaml_node_t *map, const char *where, uint32_t *refresh_ms)
{
	struct field f[] = {{.key = "refresh"}};

	if (cfg_map_fields(ld, map, "dns", where, f, 1) != 0)
		return;
	if (f[0].val)
		cfg_get_duration(ld, f[0].val, "dns.refresh", true, refresh_ms);
}

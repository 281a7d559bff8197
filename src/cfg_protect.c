/* cfg_protect.c - config loader: the protection block, global and per app. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg-int.h"

#define CFG_RATE_MAX	  10000000
#define CFG_BAN_AFTER_MAX 1000
#define CFG_BAN_MAX_MS	  (7u * 86400000u)
#define CFG_PREFIXES_MAX  65536 /* per deny / allow list */

/* ---- protection ---- */

/* Reads a rate: "200/s", "30/m", or "0" for off (stored as 0 per second,
 * so that a reader never divides by zero). Returns 0 or -EINVAL after
 * reporting.
 */
static int get_rate(struct loader *ld, yaml_node_t *n, const char *key, struct cfg_rate *r)
{
	const char *s = cfg_node_str(ld, n, key, "a rate such as 200/s or 30/m, or 0 for off");
	char q[QBUF], *num;
	const char *slash;
	unsigned long v;
	uint32_t per_ms;
	int rc;

	if (!s)
		return -EINVAL;
	if (strcmp(s, "0") == 0) {
		*r = (struct cfg_rate){0, 1000};
		return 0;
	}
	slash = strchr(s, '/');
	if (!slash || (strcmp(slash + 1, "s") != 0 && strcmp(slash + 1, "m") != 0))
		goto bad;
	per_ms = slash[1] == 's' ? 1000 : 60000;
	/* The whole count, however long: "out of range" as for any number. */
	num = strndup(s, (size_t)(slash - s));
	if (!num) {
		ld->oom = true;
		return -ENOMEM;
	}
	rc = cfg_parse_uint(num, CFG_RATE_MAX, &v);
	free(num);
	if (rc == -EINVAL)
		goto bad;
	if (rc == -ERANGE || v == 0) {
		cfg_err_at(ld, &n->start_mark,
			   "%s: %s out of range (1-%d per second or per minute, or 0 for off)", key,
			   cfg_quote(s, q, sizeof(q)), CFG_RATE_MAX);
		return -EINVAL;
	}
	*r = (struct cfg_rate){(uint32_t)v, per_ms};
	return 0;
bad:
	cfg_err_at(ld, &n->start_mark,
		   "%s: %s is not a rate (expected a number per second or minute, e.g. 200/s or "
		   "30/m; or 0 for off)",
		   key, cfg_quote(s, q, sizeof(q)));
	return -EINVAL;
}

/* A prefix of a deny/allow list, where it was written, for the overlap check. */
struct listed_prefix {
	struct addr_prefix p;
	yaml_mark_t mark;
	size_t idx;
};

static int listed_cmp(const void *a, const void *b)
{
	const struct listed_prefix *x = a, *y = b;
	int c = memcmp(&x->p.addr, &y->p.addr, sizeof(x->p.addr));

	if (c != 0)
		return c;
	if (x->p.len != y->p.len)
		return x->p.len < y->p.len ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Refuses a prefix listed twice or inside another of the same list: nft
 * refuses overlapping elements of an interval set, and a redundant entry
 * is most likely a typo. Prefixes either nest or are disjoint, so after
 * sorting by address (the wider first) one pass against the last
 * outermost prefix finds every case.
 */
static int check_prefix_list(struct loader *ld, const char *key, struct listed_prefix *v, size_t n)
{
	char a[ADDR_STRLEN], b[ADDR_STRLEN];
	size_t i, outer = 0;
	int rc = 0;

	qsort(v, n, sizeof(*v), listed_cmp);
	for (i = 1; i < n; i++) {
		const struct listed_prefix *o = &v[outer], *x = &v[i];

		if (!addr_prefix_contains(&o->p, &x->p)) {
			outer = i;
			continue;
		}
		/* Report at the later one of a duplicate, at the inner one of a nest. */
		if (o->p.len == x->p.len)
			cfg_err_at(ld, &x->mark, "%s: %s is listed twice (first at line %zu)", key,
				   addr_fmt_prefix(&x->p, a), o->mark.line + 1);
		else
			cfg_err_at(ld, &x->mark,
				   "%s: %s is inside %s (line %zu); list each range once", key,
				   addr_fmt_prefix(&x->p, a), addr_fmt_prefix(&o->p, b),
				   o->mark.line + 1);
		rc = -EINVAL;
	}
	return rc;
}

/* protection.deny / allow: a prefix, a list of them, or nothing ([] or
 * no value). On success stores a malloc'd array in <*out> (NULL when
 * empty) and its length in <*n_out>; the caller owns it. Returns 0 or
 * -EINVAL after reporting (then <*out> is NULL).
 */
static int load_prefix_list(struct loader *ld, yaml_node_t *v, int id, const char *key,
			    struct addr_prefix **out, size_t *n_out)
{
	const char *expect = "an address or prefix";
	yaml_node_item_t one, *items;
	struct listed_prefix *lp = NULL;
	struct addr_prefix *ps = NULL;
	size_t i, n, k = 0;
	int rc = 0;

	*out = NULL;
	*n_out = 0;
	if (cfg_node_is_null(v))
		return 0;
	if (v->type == YAML_SCALAR_NODE) {
		one = id;
		items = &one;
		n = 1;
	} else if (v->type == YAML_SEQUENCE_NODE) {
		items = v->data.sequence.items.start;
		n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	} else {
		cfg_err_at(ld, &v->start_mark, "%s: expected %s or a list of them, got %s", key,
			   expect, cfg_node_kind(v));
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (n > CFG_PREFIXES_MAX) {
		cfg_err_at(ld, &v->start_mark,
			   "%s: %zu prefixes (at most %d; merge neighbours into wider prefixes)",
			   key, n, CFG_PREFIXES_MAX);
		return -EINVAL;
	}
	rc = cfg_count_add(&ld->n_listed, n, CFG_MAX_LISTED, &ld->over_listed);
	if (rc == 1)
		cfg_err_at(ld, &v->start_mark,
			   "%s: more than %d prefixes in deny and allow lists in all (a list used "
			   "through an alias counts each time); share a global list instead of "
			   "repeating one per app",
			   key, CFG_MAX_LISTED);
	if (rc)
		return -EINVAL;
	ps = calloc(n, sizeof(*ps));
	lp = calloc(n, sizeof(*lp));
	if (!ps || !lp) {
		ld->oom = true;
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		yaml_node_t *e = cfg_node_get(ld, items[i]);
		const char *s = cfg_node_str(ld, e, key, expect), *why = "";
		char buf[ADDR_STRLEN];
		struct addr_prefix p;

		if (!s) {
			rc = -EINVAL;
			continue;
		}
		if (addr_parse_prefix(s, &p, &why) != 0) {
			cfg_prefix_error(ld, e, key, s, why);
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && cfg_v6_covers_mapped(&p)) {
			/* As for edges: v4 is kept v4-mapped, so this would
			 * match every IPv4 source too.
			 */
			cfg_err_at(
			    ld, &e->start_mark,
			    "%s: %s includes the IPv4-mapped range ::ffff:0:0/96; use a "
			    "narrower IPv6 prefix, and IPv4 prefixes for IPv4 (0.0.0.0/0 for "
			    "all of IPv4)",
			    key, addr_fmt_prefix(&p, buf));
			rc = -EINVAL;
			continue;
		}
		lp[k].p = p;
		lp[k].mark = e->start_mark;
		lp[k].idx = k;
		ps[k++] = p;
	}
	if (rc == 0)
		rc = check_prefix_list(ld, key, lp, k);
out:
	free(lp);
	if (rc != 0) {
		free(ps);
		return rc;
	}
	*out = ps;
	*n_out = k;
	return 0;
}

/* protection.ban {after, window, duration}; a key left out keeps the value
 * <b> came with (the default, or in an app the global one).
 */
static void load_ban(struct loader *ld, yaml_node_t *map, const char *where,
		     struct cfg_protection *b)
{
	struct field f[] = {{.key = "after"}, {.key = "window"}, {.key = "duration"}};
	char d[32];

	if (cfg_map_fields(ld, map, "protection.ban", where, f, 3) != 0)
		return;
	if (f[0].val)
		cfg_get_uint(ld, f[0].val, "protection.ban.after", 0, CFG_BAN_AFTER_MAX,
			     &b->ban_after);
	if (f[1].val)
		cfg_get_duration(ld, f[1].val, "protection.ban.window", true, &b->ban_window_ms);
	if (f[2].val) {
		uint32_t ms;

		if (cfg_get_duration(ld, f[2].val, "protection.ban.duration", true, &ms) != 0)
			return;
		if (ms > CFG_BAN_MAX_MS)
			cfg_err_at(ld, &f[2].val->start_mark,
				   "protection.ban.duration: %s is too long (at most 7d)",
				   cfg_fmt_duration(ms, d, sizeof(d)));
		else
			b->ban_duration_ms = ms;
	}
}

/* The protection block, global (<label> NULL; <max_conns> receives
 * protection.max_conns) or of the app <label> (<max_conns> NULL). <p> holds
 * the values to start from: the defaults, or for an app a copy of the
 * global block whose deny/allow arrays are borrowed; a list the block sets
 * replaces the borrowed pointer with one <p> owns.
 */
void cfg_load_protection(struct loader *ld, yaml_node_t *map, const char *label,
			 struct cfg_protection *p, uint32_t *max_conns)
{
	static const char *const unserved[] = {"drop", "reject", NULL};
	bool app = label != NULL;
	struct field f[] = {
	    {.key = "unserved", .unlisted = app},
	    {.key = "deny"},
	    {.key = "allow"},
	    {.key = "syn_rate_per_source", .unlisted = app},
	    {.key = "max_conns_per_source"},
	    {.key = "conn_rate_per_source"},
	    {.key = "ban"},
	    {.key = "max_conns", .unlisted = app},
	    {.key = "first_byte_timeout"},
	};
	enum {
		F_UNSERVED,
		F_DENY,
		F_ALLOW,
		F_SYN_RATE,
		F_CONNS_PER_SRC,
		F_CONN_RATE,
		F_BAN,
		F_MAX_CONNS,
		F_FIRST_BYTE,
		F_N
	};
	char where[CFG_NAME_MAX + 64];
	int v;

	if (app)
		snprintf(where, sizeof(where), "in protection of %s", label);
	else
		snprintf(where, sizeof(where), "in protection");
	if (cfg_map_fields(ld, map, "protection", where, f, F_N) != 0)
		return;
	if (app) {
		/* The nftables SYN limit and the unserved verdict are one rule
		 * for the whole table, and the process cap is the process's:
		 * none of them can differ by app.
		 */
		if (f[F_UNSERVED].val)
			cfg_err_at(ld, &f[F_UNSERVED].mark,
				   "protection.unserved is global only (it applies to ports no app "
				   "claims); set it in the top-level protection block");
		if (f[F_SYN_RATE].val)
			cfg_err_at(
			    ld, &f[F_SYN_RATE].mark,
			    "protection.syn_rate_per_source is global only (one nftables limit "
			    "per source address); set it in the top-level protection block");
		if (f[F_MAX_CONNS].val)
			cfg_err_at(
			    ld, &f[F_MAX_CONNS].mark,
			    "protection.max_conns is global only (the whole process); an app's "
			    "own cap is its max_conns key, beside protection");
	} else {
		if (f[F_UNSERVED].val &&
		    (v = cfg_get_word(ld, f[F_UNSERVED].val, "protection.unserved", unserved)) >= 0)
			p->unserved = (enum cfg_unserved)v;
		if (f[F_SYN_RATE].val)
			get_rate(ld, f[F_SYN_RATE].val, "protection.syn_rate_per_source",
				 &p->syn_rate_per_source);
		if (f[F_MAX_CONNS].val && max_conns)
			cfg_get_uint(ld, f[F_MAX_CONNS].val, "protection.max_conns", 0,
				     CFG_CONNS_MAX, max_conns);
	}
	if (f[F_DENY].val) {
		load_prefix_list(ld, f[F_DENY].val, f[F_DENY].id, "protection.deny", &p->deny,
				 &p->n_deny);
		p->set_deny = app;
	}
	if (f[F_ALLOW].val) {
		load_prefix_list(ld, f[F_ALLOW].val, f[F_ALLOW].id, "protection.allow", &p->allow,
				 &p->n_allow);
		p->set_allow = app;
	}
	if (f[F_CONNS_PER_SRC].val)
		cfg_get_uint(ld, f[F_CONNS_PER_SRC].val, "protection.max_conns_per_source", 0,
			     CFG_CONNS_MAX, &p->max_conns_per_source);
	if (f[F_CONN_RATE].val)
		get_rate(ld, f[F_CONN_RATE].val, "protection.conn_rate_per_source",
			 &p->conn_rate_per_source);
	if (f[F_BAN].val) {
		if (app)
			snprintf(where, sizeof(where), "in protection.ban of %s", label);
		else
			snprintf(where, sizeof(where), "in protection.ban");
		load_ban(ld, f[F_BAN].val, where, p);
	}
	if (f[F_FIRST_BYTE].val)
		cfg_get_duration(ld, f[F_FIRST_BYTE].val, "protection.first_byte_timeout", false,
				 &p->first_byte_timeout_ms);
}

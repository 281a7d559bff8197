/* cfg-int.h - private interface shared by the config loader's files (cfg*.c). */
#ifndef PRISM_CFG_INT_H
#define PRISM_CFG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <yaml.h>

#include "cfg.h"

#define CFG_QUOTE_MAX	64 /* user text quoted in a message is cut here */
#define CFG_NAME_MAX	64
#define CFG_CONNS_MAX	10000000 /* max_conns, max_conns_per_source */
#define CFG_PAYLOAD_MAX 1024	 /* health_check.send / expect, bytes */

/* Big enough for CFG_QUOTE_MAX bytes each escaped to 4, quotes and "...". */
#define QBUF 300

/* Private to cfg.c; the other files only carry pointers to them. */
struct cfg_err;
struct app_src;

/* The state of one cfg_load_buf run, handed to every section loader. */
struct loader {
	const char *name;
	yaml_document_t *doc;
	struct cfg *cfg;

	struct cfg_err *errs;
	size_t n_errs, cap_errs, n_dropped;
	size_t err_last; /* errs[] full: the latest kept by position (err_add) */
	bool oom;

	struct app_src *src; /* parallel to cfg->apps */
	size_t n_src;

	char *warns;				  /* cfg->warnings, as it grows */
	size_t warns_len, n_warns, warns_dropped; /* see CFG_SHOW_WARNINGS */

	/* Over the whole file, an alias counted each time it is used (each
	 * use is a copy in the snapshot): see CFG_MAX_LISTED, CFG_MAX_ORIGINS.
	 */
	size_t n_listed, n_origins, n_edge_entries, n_port_entries;
	bool over_listed, over_origins, over_edges, over_ports; /* see cfg_count_add */
};

/* What a file may hold in all: prefixes in deny/allow lists, and origins.
 * An alias (`deny: *big` in every app) parses into a copy per use: without
 * these, a 1.4 MB file of one 65,536-prefix list used by 300 apps took
 * 790 MB and 8 s, and 1,000 origins used by 2,000 apps 585 MB.
 */
#define CFG_MAX_LISTED	1000000
#define CFG_MAX_ORIGINS 500000

/* One key of a mapping as the schema knows it. */
struct field {
	const char *key;
	yaml_node_t *val; /* NULL when absent */
	int id;		  /* of val */
	yaml_mark_t mark; /* of the key */
	bool unlisted;	  /* accepted only to be refused with a better message than
			   * "unknown key", so not offered in "expected one of" */
};

/* ---- error collection (cfg.c) ---- */

/* Reports a problem at <m> (libyaml's 0-based mark, printed 1-based). */
__attribute__((format(printf, 3, 4))) void cfg_err_at(struct loader *ld, const yaml_mark_t *m,
						      const char *fmt, ...);
/* Adds a "FILE:LINE:COL: warning: ..." line for a config that still loads. */
__attribute__((format(printf, 3, 4))) void cfg_warn_at(struct loader *ld, const struct cfg_pos *pos,
						       const char *fmt, ...);
/* A number the user wrote that parsed but is out of range, for a message:
 * its first 32 characters, then "..." (a line thousands of digits long says no
 * more). printf("port " CFG_NUM_FMT " out of range", CFG_NUM_ARG(s)).
 */
#define CFG_NUM_FMT    "%.32s%s"
#define CFG_NUM_ARG(s) (s), strlen(s) > 32 ? "..." : ""

/* Adds <n> to the file-wide count <*count>, bounded by <max>: 0 while
 * within it; past it 1 the first time (<*over> was false: the caller
 * reports it) and 2 after, so each bound is reported once.
 */
static inline int cfg_count_add(size_t *count, size_t n, size_t max, bool *over)
{
	*count += n;
	if (*count <= max)
		return 0;
	if (*over)
		return 2;
	*over = true;
	return 1;
}

/* Quotes user text <s> into <buf> (QBUF bytes) for a message; returns <buf>. */
const char *cfg_quote(const char *s, char *buf, size_t size);

/* ---- node helpers (cfg_node.c) ---- */

yaml_node_t *cfg_node_get(struct loader *ld, int id);
const char *cfg_node_kind(const yaml_node_t *n);
bool cfg_node_is_null(const yaml_node_t *n);
const char *cfg_node_str(struct loader *ld, yaml_node_t *n, const char *key, const char *expect);
int cfg_node_items(struct loader *ld, int id, const char *key, const char *expect, const char *noun,
		   yaml_node_item_t *one, yaml_node_item_t **items, size_t *n);
int cfg_map_fields(struct loader *ld, yaml_node_t *map, const char *key, const char *where,
		   struct field *f, size_t nf);

/* ---- scalar parsers (cfg_node.c; cfg_parse_port_range: cfg.c); each returns 0
 * or -EINVAL after reporting ---- */

/* Parses <s> of node <n>, "N" or "LO-HI" (ports 1-65535), for <key>;
 * problems are reported as "<key>: ..." with <what> naming the accepted
 * forms. Returns 0 with *lo, *hi and *range (a range was written), or
 * -EINVAL.
 */
int cfg_parse_port_range(struct loader *ld, yaml_node_t *n, const char *s, const char *key,
			 const char *what, uint16_t *lo, uint16_t *hi, bool *range);
int cfg_parse_uint(const char *s, unsigned long max, unsigned long *v);
int cfg_get_duration(struct loader *ld, yaml_node_t *n, const char *key, bool positive,
		     uint32_t *ms);
int cfg_get_bool(struct loader *ld, yaml_node_t *n, const char *key, bool *b);
int cfg_get_word(struct loader *ld, yaml_node_t *n, const char *key, const char *const *words);
int cfg_get_port(struct loader *ld, yaml_node_t *n, const char *key, uint16_t *port);
int cfg_get_uint(struct loader *ld, yaml_node_t *n, const char *key, unsigned long lo,
		 unsigned long hi, uint32_t *out);
int cfg_get_bytes(struct loader *ld, yaml_node_t *n, const char *key, char **out, size_t *len);
const char *cfg_fmt_duration(uint32_t ms, char *buf, size_t size);

/* ---- addresses (cfg.c) ---- */

bool cfg_v6_covers_mapped(const struct addr_prefix *p);
void cfg_prefix_error(struct loader *ld, yaml_node_t *n, const char *key, const char *s,
		      const char *why);

/* ---- origins, balancing, health (cfg_origins.c) ---- */

int cfg_load_origins(struct loader *ld, struct cfg_app *app, int id, const char *label,
		     bool ports_ok);
void cfg_origin_clear(struct cfg_origin *o);
void cfg_resolve_names(struct loader *ld);
void cfg_load_health(struct loader *ld, yaml_node_t *map, const char *where, struct cfg_health *h,
		     bool *port_given);
void cfg_load_passive(struct loader *ld, yaml_node_t *map, const char *where,
		      struct cfg_passive *p);
void cfg_load_dns(struct loader *ld, yaml_node_t *map, const char *where, uint32_t *refresh_ms);

/* ---- protection (cfg_protect.c) ---- */

void cfg_load_protection(struct loader *ld, yaml_node_t *map, const char *label,
			 struct cfg_protection *p, uint32_t *max_conns);

#endif

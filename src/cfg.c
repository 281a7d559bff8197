/* cfg.c - loads prism's YAML configuration into an immutable snapshot.
 *
 * libyaml's document API gives us a node tree with positions (aliases are
 * already resolved into shared nodes). Every value is then interpreted here,
 * by the key it belongs to, and never through YAML's implicit typing: YAML
 * 1.1 would turn an unquoted `off` into false and `010` into 8, which is not
 * what a person writing `address6: off` or `ports: 010` means.
 *
 * Every problem is collected, sorted by position and reported at once, so a
 * user fixes a file in one round trip rather than one error per run. The
 * walk never recurses into arbitrary YAML: the schema has a fixed depth, so
 * recursive aliases (`&a [*a]`) and alias bombs cannot make it loop or blow
 * up.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>

#include "cfg.h"
#include "log.h"
#include "rt.h"

#define CFG_MAX_FILE	  (4 << 20) /* a config is a few KiB; refuse to slurp a disk image */
#define CFG_KEEP_ERRORS	  1000	    /* collected, then sorted ... */
#define CFG_SHOW_ERRORS	  100	    /* ... and the first this many printed */
#define CFG_MAX_CLAIMS	  100000    /* edges x port ranges, over all apps */
#define CFG_MAX_REBUILDS  64	    /* rt_build retries to find more overlaps */
#define CFG_NAME_MAX	  64
#define CFG_TABLE_MAX	  31
#define CFG_WORKERS_MAX	  1024
#define CFG_QUOTE_MAX	  64   /* user text quoted in a message is cut here */
#define CFG_ORIGINS_MAX	  1000 /* per app; duplicates are found pairwise */
#define CFG_HOST_MAX	  253  /* RFC 1035 name length, without a trailing dot */
#define CFG_LABEL_MAX	  63
#define CFG_WEIGHT_MAX	  1000
#define CFG_RETRIES_MAX	  16
#define CFG_RISE_MAX	  100 /* also fall */
#define CFG_FAILURES_MAX  1000
#define CFG_PAYLOAD_MAX	  1024 /* health_check.send / expect, bytes */
#define CFG_RATE_MAX	  10000000
#define CFG_CONNS_MAX	  10000000 /* max_conns, max_conns_per_source */
#define CFG_BAN_AFTER_MAX 1000
#define CFG_BAN_MAX_MS	  (7u * 86400000u)
#define CFG_PREFIXES_MAX  65536 /* per deny / allow list */

#define DEF_LISTEN4	   "127.0.0.1"
#define DEF_LISTEN6	   "::1"
#define DEF_PORT	   15001
#define DEF_TABLE	   "prism"
#define DEF_CONNECT_MS	   5000
#define DEF_IDLE_MS	   300000
#define DEF_GRACE_MS	   10000
#define DEF_WEIGHT	   1
#define DEF_RETRIES	   2
#define DEF_HC_INTERVAL_MS 2000
#define DEF_HC_TIMEOUT_MS  1000
#define DEF_HC_RISE	   2
#define DEF_HC_FALL	   3
#define DEF_FAILURES	   3
#define DEF_COOLDOWN_MS	   10000
#define DEF_DNS_REFRESH_MS 30000
#define DEF_BAN_WINDOW_MS  10000
#define DEF_BAN_MS	   300000

struct cfg_err {
	int line, col; /* 1-based; line 0: no position */
	size_t seq;    /* keeps the sort stable */
	char *msg;
};

/* Where one routing claim came from, to place an overlap message. */
struct claim_src {
	size_t app;
	yaml_mark_t mark; /* of the edge scalar */
};

/* Per-app facts that the snapshot does not keep. */
struct app_src {
	yaml_mark_t *edge_marks; /* one per cfg_app.edges[] */
	bool ok;		 /* no problem found in this app */
};

struct loader {
	const char *name;
	yaml_document_t *doc;
	struct cfg *cfg;

	struct cfg_err *errs;
	size_t n_errs, cap_errs, n_dropped;
	bool oom;

	struct app_src *src; /* parallel to cfg->apps */
	size_t n_src;

	char *warns; /* cfg->warnings, as it grows */
	size_t warns_len;
};

/* One key of a mapping as the schema knows it. */
struct field {
	const char *key;
	yaml_node_t *val; /* NULL when absent */
	int id;		  /* of val */
	yaml_mark_t mark; /* of the key */
	bool unlisted;	  /* accepted only to be refused with a better message than
			   * "unknown key", so not offered in "expected one of" */
};

/* ---- error collection ---- */

__attribute__((format(printf, 4, 0))) static void err_add(struct loader *ld, int line, int col,
							  const char *fmt, va_list ap)
{
	struct cfg_err *e;
	char *msg;

	if (ld->n_errs >= CFG_KEEP_ERRORS) {
		ld->n_dropped++;
		return;
	}
	if (ld->n_errs == ld->cap_errs) {
		size_t cap = ld->cap_errs ? ld->cap_errs * 2 : 16;

		e = realloc(ld->errs, cap * sizeof(*e));
		if (!e) {
			ld->oom = true;
			return;
		}
		ld->errs = e;
		ld->cap_errs = cap;
	}
	if (vasprintf(&msg, fmt, ap) == -1) {
		ld->oom = true;
		return;
	}
	e = &ld->errs[ld->n_errs];
	e->line = line;
	e->col = col;
	e->seq = ld->n_errs;
	e->msg = msg;
	ld->n_errs++;
}

/* Reports a problem at <m> (libyaml's 0-based mark, printed 1-based). */
__attribute__((format(printf, 3, 4))) static void err_at(struct loader *ld, const yaml_mark_t *m,
							 const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_add(ld, (int)m->line + 1, (int)m->column + 1, fmt, ap);
	va_end(ap);
}

/* Adds a "FILE:LINE:COL: warning: ..." line for a config that still loads. */
__attribute__((format(printf, 3, 4))) static void
warn_at(struct loader *ld, const struct cfg_pos *pos, const char *fmt, ...)
{
	char *msg, *line, *w;
	va_list ap;
	int n, r;

	va_start(ap, fmt);
	r = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (r == -1) {
		ld->oom = true;
		return;
	}
	n = asprintf(&line, "%s:%d:%d: warning: %s\n", ld->name, pos->line, pos->col, msg);
	free(msg);
	if (n == -1) {
		ld->oom = true;
		return;
	}
	w = realloc(ld->warns, ld->warns_len + (size_t)n + 1);
	if (!w) {
		free(line);
		ld->oom = true;
		return;
	}
	memcpy(w + ld->warns_len, line, (size_t)n + 1);
	ld->warns = w;
	ld->warns_len += (size_t)n;
	free(line);
}

static int err_cmp(const void *a, const void *b)
{
	const struct cfg_err *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Turns the collected problems into the text cfg_load hands back. */
static char *err_text(struct loader *ld)
{
	size_t i, n = ld->n_errs < CFG_SHOW_ERRORS ? ld->n_errs : CFG_SHOW_ERRORS;
	size_t more = ld->n_errs - n + ld->n_dropped;
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	qsort(ld->errs, ld->n_errs, sizeof(*ld->errs), err_cmp);
	f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	for (i = 0; i < n; i++) {
		const struct cfg_err *e = &ld->errs[i];

		if (e->line > 0)
			fprintf(f, "%s:%d:%d: %s\n", ld->name, e->line, e->col, e->msg);
		else
			fprintf(f, "%s: %s\n", ld->name, e->msg);
	}
	if (more)
		fprintf(f, "%s: %zu more problems not shown\n", ld->name, more);
	if (ld->oom)
		fprintf(f, "%s: out of memory while checking the configuration\n", ld->name);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* Writes <s> into <buf> in double quotes, control bytes escaped and cut
 * after CFG_QUOTE_MAX bytes, so that text from the file can neither break
 * the one-line-per-problem format nor flood the terminal.
 */
static const char *quote(const char *s, char *buf, size_t size)
{
	size_t o = 0, i;

	buf[o++] = '"';
	for (i = 0; s[i] && o + 8 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i == CFG_QUOTE_MAX) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* Big enough for CFG_QUOTE_MAX bytes each escaped to 4, quotes and "...". */
#define QBUF 300

/* ---- node helpers ---- */

static yaml_node_t *node_get(struct loader *ld, int id)
{
	return yaml_document_get_node(ld->doc, id);
}

static const char *node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_SCALAR_NODE:
		return "a single value";
	case YAML_SEQUENCE_NODE:
		return "a list";
	case YAML_MAPPING_NODE:
		return "a mapping";
	default:
		return "nothing";
	}
}

/* `key:` with nothing after it: YAML's null, an empty plain scalar. */
static bool node_is_null(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && n->data.scalar.length == 0 &&
	       n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* Returns the text of scalar <n> for key <key>, or NULL after reporting why
 * it is unusable. <expect> says what the key takes, for the message.
 */
static const char *node_str(struct loader *ld, yaml_node_t *n, const char *key, const char *expect)
{
	if (n->type != YAML_SCALAR_NODE) {
		err_at(ld, &n->start_mark, "%s: expected %s, got %s", key, expect, node_kind(n));
		return NULL;
	}
	if (n->data.scalar.length == 0) {
		err_at(ld, &n->start_mark, "%s: no value given (expected %s)", key, expect);
		return NULL;
	}
	if (memchr(n->data.scalar.value, '\0', n->data.scalar.length)) {
		err_at(ld, &n->start_mark, "%s: value contains a NUL character", key);
		return NULL;
	}
	return (const char *)n->data.scalar.value;
}

/* Resolves the items of a value that may be one scalar or a list of them
 * into <*items>/<*n> (node ids; for a scalar, its own id in <*one>).
 * Returns 0, or -EINVAL after reporting.
 */
static int node_items(struct loader *ld, int id, const char *key, const char *expect,
		      const char *noun, yaml_node_item_t *one, yaml_node_item_t **items, size_t *n)
{
	yaml_node_t *v = node_get(ld, id);

	if (v->type == YAML_SCALAR_NODE) {
		*one = id;
		*items = one;
		*n = 1;
		return 0;
	}
	if (v->type != YAML_SEQUENCE_NODE) {
		err_at(ld, &v->start_mark, "%s: expected %s or a list of them, got %s", key, expect,
		       node_kind(v));
		return -EINVAL;
	}
	*items = v->data.sequence.items.start;
	*n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	if (*n == 0) {
		err_at(ld, &v->start_mark, "%s: empty list (expected at least one %s)", key, noun);
		return -EINVAL;
	}
	return 0;
}

/* Matches the keys of mapping <map> against <f> (<nf> entries): fills each
 * field's value, and reports keys that are unknown, duplicated or not plain
 * strings. <where> names the mapping ("at top level", "in listen").
 * Returns 0, or -EINVAL when <map> is not a mapping (reported; a null value
 * counts as an empty mapping).
 */
static int map_fields(struct loader *ld, yaml_node_t *map, const char *key, const char *where,
		      struct field *f, size_t nf)
{
	yaml_node_pair_t *p;
	size_t i;

	for (i = 0; i < nf; i++)
		f[i].val = NULL;
	if (node_is_null(map))
		return 0;
	if (map->type != YAML_MAPPING_NODE) {
		err_at(ld, &map->start_mark, "%s: expected a mapping of keys, got %s", key,
		       node_kind(map));
		return -EINVAL;
	}
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_get(ld, p->key);
		const char *ks;
		char q[QBUF];

		if (k->type != YAML_SCALAR_NODE) {
			err_at(ld, &k->start_mark, "keys %s must be plain names, got %s", where,
			       node_kind(k));
			continue;
		}
		ks = (const char *)k->data.scalar.value;
		for (i = 0; i < nf; i++)
			if (strlen(f[i].key) == k->data.scalar.length && strcmp(f[i].key, ks) == 0)
				break;
		if (i == nf) {
			char list[256];
			size_t o = 0, j;

			list[0] = '\0';
			for (j = 0; j < nf; j++)
				if (!f[j].unlisted)
					o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
							      o ? ", " : "", f[j].key);
			err_at(ld, &k->start_mark, "unknown key %s %s (expected one of: %s)",
			       quote(ks, q, sizeof(q)), where, list);
			continue;
		}
		if (f[i].val) {
			err_at(ld, &k->start_mark, "duplicate key \"%s\" %s (first at line %zu)",
			       f[i].key, where, f[i].mark.line + 1);
			continue;
		}
		f[i].val = node_get(ld, p->value);
		f[i].id = p->value;
		f[i].mark = k->start_mark;
	}
	return 0;
}

/* ---- scalar parsers ---- */

/* Parses a decimal number of digits only (no sign, no spaces) into <*v>.
 * Returns 0, -EINVAL (not a number) or -ERANGE (above <max>).
 */
static int parse_uint(const char *s, unsigned long max, unsigned long *v)
{
	unsigned long x = 0;
	bool big = false;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return -EINVAL;
		if (x > (max - (unsigned long)(*s - '0')) / 10)
			big = true;
		else
			x = x * 10 + (unsigned long)(*s - '0');
	}
	if (big)
		return -ERANGE;
	*v = x;
	return 0;
}

/* cfg_parse_duration, telling overflow (-ERANGE) apart for the message. */
static int parse_duration(const char *s, uint32_t *ms)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {
	    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
	};
	uint64_t v = 0;
	bool big = false;
	size_t i;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > UINT32_MAX) {
			big = true;
			v = UINT32_MAX; /* keep scanning: "99999999999x" is still garbage */
		}
	}
	if (*s == '\0') {
		/* A bare number has no unit; only zero means the same in all. */
		if (v != 0)
			return -EINVAL;
		*ms = 0;
		return 0;
	}
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(s, units[i].suffix) == 0)
			break;
	if (i == sizeof(units) / sizeof(units[0]))
		return -EINVAL;
	if (big || v * units[i].mult > UINT32_MAX)
		return -ERANGE;
	*ms = (uint32_t)(v * units[i].mult);
	return 0;
}

int cfg_parse_duration(const char *s, uint32_t *ms)
{
	return parse_duration(s, ms) == 0 ? 0 : -EINVAL;
}

/* Reads a duration value; <positive> refuses zero. Returns 0 or -EINVAL. */
static int get_duration(struct loader *ld, yaml_node_t *n, const char *key, bool positive,
			uint32_t *ms)
{
	const char *s = node_str(ld, n, key, "a duration such as 500ms, 5s, 2m, 1h or 1d");
	char q[QBUF];
	int rc;

	if (!s)
		return -EINVAL;
	rc = parse_duration(s, ms);
	if (rc == -ERANGE) {
		err_at(ld, &n->start_mark, "%s: %s is too long (at most 49d)", key,
		       quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc != 0 && s[0] == '-') {
		err_at(ld, &n->start_mark, "%s: %s is negative (durations are 0 or more)", key,
		       quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc != 0) {
		err_at(ld, &n->start_mark,
		       "%s: %s is not a duration (expected a number with a unit: ms, s, m, h or d, "
		       "e.g. 500ms or 5s; or 0)",
		       key, quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (positive && *ms == 0) {
		err_at(ld, &n->start_mark, "%s: must be more than 0", key);
		return -EINVAL;
	}
	return 0;
}

static int get_bool(struct loader *ld, yaml_node_t *n, const char *key, bool *b)
{
	const char *s = node_str(ld, n, key, "true or false");
	char q[QBUF];

	if (!s)
		return -EINVAL;
	if (strcmp(s, "true") == 0)
		*b = true;
	else if (strcmp(s, "false") == 0)
		*b = false;
	else {
		err_at(ld, &n->start_mark, "%s: %s is not a boolean (expected true or false)", key,
		       quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	return 0;
}

/* Looks <s> up in <words> (NULL-terminated). Returns its index or -EINVAL
 * after reporting.
 */
static int get_word(struct loader *ld, yaml_node_t *n, const char *key, const char *const *words)
{
	char list[128], q[QBUF];
	size_t o = 0;
	const char *s;
	int i;

	for (i = 0; words[i]; i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", words[i]);
	s = node_str(ld, n, key, list);
	if (!s)
		return -EINVAL;
	for (i = 0; words[i]; i++)
		if (strcmp(s, words[i]) == 0)
			return i;
	err_at(ld, &n->start_mark, "%s: %s is not one of: %s", key, quote(s, q, sizeof(q)), list);
	return -EINVAL;
}

static int get_port(struct loader *ld, yaml_node_t *n, const char *key, uint16_t *port)
{
	const char *s = node_str(ld, n, key, "a port number (1-65535)");
	unsigned long v;
	char q[QBUF];
	int rc;

	if (!s)
		return -EINVAL;
	rc = parse_uint(s, 65535, &v);
	if (rc == -EINVAL) {
		err_at(ld, &n->start_mark, "%s: %s is not a port number (1-65535)", key,
		       quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc == -ERANGE || v == 0) {
		err_at(ld, &n->start_mark, "%s: port %s out of range (1-65535)", key, s);
		return -EINVAL;
	}
	*port = (uint16_t)v;
	return 0;
}

/* Reads a whole number in <lo>..<hi>. Returns 0 or -EINVAL after reporting. */
static int get_uint(struct loader *ld, yaml_node_t *n, const char *key, unsigned long lo,
		    unsigned long hi, uint32_t *out)
{
	char expect[64], q[QBUF];
	unsigned long v;
	const char *s;
	int rc;

	snprintf(expect, sizeof(expect), "a number (%lu-%lu)", lo, hi);
	s = node_str(ld, n, key, expect);
	if (!s)
		return -EINVAL;
	rc = parse_uint(s, hi, &v);
	if (rc == -EINVAL) {
		err_at(ld, &n->start_mark, "%s: %s is not %s", key, quote(s, q, sizeof(q)), expect);
		return -EINVAL;
	}
	if (rc == -ERANGE || v < lo) {
		err_at(ld, &n->start_mark, "%s: %s out of range (%lu-%lu)", key, s, lo, hi);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

/* Reads a payload (any bytes, NUL included; YAML escapes such as \r\n
 * come from double-quoted scalars) into a malloc'd, NUL-terminated copy.
 * Returns 0 or -EINVAL after reporting.
 */
static int get_bytes(struct loader *ld, yaml_node_t *n, const char *key, char **out, size_t *len)
{
	size_t l;

	if (n->type != YAML_SCALAR_NODE) {
		err_at(ld, &n->start_mark, "%s: expected a string, got %s", key, node_kind(n));
		return -EINVAL;
	}
	l = n->data.scalar.length;
	if (l == 0) {
		err_at(ld, &n->start_mark, "%s: empty (leave the key out instead)", key);
		return -EINVAL;
	}
	if (l > CFG_PAYLOAD_MAX) {
		err_at(ld, &n->start_mark, "%s: %zu bytes is too long (at most %d)", key, l,
		       CFG_PAYLOAD_MAX);
		return -EINVAL;
	}
	free(*out);
	*out = malloc(l + 1);
	if (!*out) {
		ld->oom = true;
		return -ENOMEM;
	}
	memcpy(*out, n->data.scalar.value, l);
	(*out)[l] = '\0';
	*len = l;
	return 0;
}

/* Formats <ms> in the largest unit that divides it, as a user would write it. */
static const char *fmt_duration(uint32_t ms, char *buf, size_t size)
{
	if (ms != 0 && ms % 86400000 == 0)
		snprintf(buf, size, "%ud", ms / 86400000);
	else if (ms != 0 && ms % 3600000 == 0)
		snprintf(buf, size, "%uh", ms / 3600000);
	else if (ms != 0 && ms % 60000 == 0)
		snprintf(buf, size, "%um", ms / 60000);
	else if (ms != 0 && ms % 1000 == 0)
		snprintf(buf, size, "%us", ms / 1000);
	else
		snprintf(buf, size, "%ums", ms);
	return buf;
}

/* ---- sections ---- */

static void load_log_level(struct loader *ld, yaml_node_t *n)
{
	static const char *const names[] = {"error", "warn", "info", "debug", NULL};
	static const int levels[] = {LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG};
	int i = get_word(ld, n, "log_level", names);

	if (i >= 0)
		ld->cfg->log_level = levels[i];
}

static void load_listen(struct loader *ld, yaml_node_t *map)
{
	struct field f[] = {
	    {.key = "address"}, {.key = "address6"}, {.key = "port"}, {.key = "workers"}};
	struct cfg *c = ld->cfg;
	char q[QBUF];
	const char *s;
	uint16_t port;

	if (map_fields(ld, map, "listen", "in listen", f, 4) != 0)
		return;
	if (f[0].val && (s = node_str(ld, f[0].val, "listen.address", "an IPv4 address"))) {
		struct in6_addr a6;

		if (inet_pton(AF_INET, s, &c->listen4.sin_addr) != 1)
			err_at(ld, &f[0].val->start_mark,
			       inet_pton(AF_INET6, s, &a6) == 1
				   ? "listen.address: %s is IPv6; put it in listen.address6"
				   : "listen.address: %s is not an IPv4 address",
			       quote(s, q, sizeof(q)));
	}
	if (f[1].val && (s = node_str(ld, f[1].val, "listen.address6", "an IPv6 address or off"))) {
		struct in_addr a4;

		if (strcmp(s, "off") == 0)
			c->listen6_on = false;
		else if (inet_pton(AF_INET6, s, &c->listen6.sin6_addr) != 1)
			err_at(ld, &f[1].val->start_mark,
			       inet_pton(AF_INET, s, &a4) == 1
				   ? "listen.address6: %s is IPv4; put it in listen.address "
				     "(address6 takes an IPv6 address or off)"
				   : "listen.address6: %s is not an IPv6 address or off",
			       quote(s, q, sizeof(q)));
	}
	if (f[2].val && get_port(ld, f[2].val, "listen.port", &port) == 0) {
		c->listen4.sin_port = htons(port);
		c->listen6.sin6_port = htons(port);
	}
	if (f[3].val && (s = node_str(ld, f[3].val, "listen.workers", "auto or 1-1024"))) {
		unsigned long v;

		if (strcmp(s, "auto") != 0) {
			int rc = parse_uint(s, CFG_WORKERS_MAX, &v);

			if (rc == 0 && v > 0)
				c->workers = (int)v;
			else if (rc == -EINVAL)
				err_at(ld, &f[3].val->start_mark,
				       "listen.workers: %s is not auto or a number of threads "
				       "(1-1024)",
				       quote(s, q, sizeof(q)));
			else
				err_at(ld, &f[3].val->start_mark,
				       "listen.workers: %s out of range (1-1024, or auto)", s);
		}
	}
}

static void load_network(struct loader *ld, yaml_node_t *map)
{
	struct field f[] = {{.key = "manage"}, {.key = "table"}, {.key = "sysctls"}};
	const char *s;
	char q[QBUF];
	size_t i, n;

	if (map_fields(ld, map, "network", "in network", f, 3) != 0)
		return;
	if (f[0].val)
		get_bool(ld, f[0].val, "network.manage", &ld->cfg->net_manage);
	if (f[2].val)
		get_bool(ld, f[2].val, "network.sysctls", &ld->cfg->manage_sysctls);
	if (!f[1].val || !(s = node_str(ld, f[1].val, "network.table", "an nftables table name")))
		return;
	/* nft accepts more, but this set needs no quoting in an nft script. */
	n = strlen(s);
	bool ok = n <= CFG_TABLE_MAX && (isalpha((unsigned char)s[0]) || s[0] == '_');
	for (i = 1; ok && i < n; i++)
		ok = isalnum((unsigned char)s[i]) || s[i] == '_';
	if (!ok) {
		err_at(ld, &f[1].val->start_mark,
		       "network.table: %s is not a valid table name (a letter or _, then up to "
		       "30 letters, digits or _)",
		       quote(s, q, sizeof(q)));
		return;
	}
	free(ld->cfg->nft_table);
	ld->cfg->nft_table = strdup(s);
	if (!ld->cfg->nft_table)
		ld->oom = true;
}

/* timeouts{connect, idle}, globally (<prefix> "timeouts") or in an app. */
static int load_timeouts(struct loader *ld, yaml_node_t *map, const char *where,
			 uint32_t *connect_ms, uint32_t *idle_ms)
{
	struct field f[] = {{.key = "connect"}, {.key = "idle"}};
	int rc = 0;

	if (map_fields(ld, map, "timeouts", where, f, 2) != 0)
		return -EINVAL;
	if (f[0].val && get_duration(ld, f[0].val, "timeouts.connect", true, connect_ms) != 0)
		rc = -EINVAL;
	if (f[1].val && get_duration(ld, f[1].val, "timeouts.idle", false, idle_ms) != 0)
		rc = -EINVAL;
	return rc;
}

/* ---- apps ---- */

static bool name_ok(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > CFG_NAME_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return false;
	return true;
}

/* True when IPv6 prefix <p> contains ::ffff:0:0/96 (only possible below /96). */
static bool v6_covers_mapped(const struct addr_prefix *p)
{
	static const uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff};

	for (int bit = 0; bit < p->len; bit++) {
		int byte = bit / 8, mask = 0x80 >> (bit % 8);

		if ((p->addr.s6_addr[byte] & mask) != (mapped[byte] & mask))
			return false;
	}
	return p->len <= 96;
}

/* Reports a prefix (for <key>: edge, protection.deny, ...) that
 * addr_parse_prefix refused; for host bits set, with the network the user
 * most likely meant.
 */
static void prefix_error(struct loader *ld, yaml_node_t *n, const char *key, const char *s,
			 const char *why)
{
	const char *slash = strchr(s, '/');
	struct addr_prefix p;
	char q[QBUF], fix[ADDR_STRLEN];
	const char *w;
	unsigned long len;

	if (slash && slash - s < 64) {
		char host[64];

		memcpy(host, s, (size_t)(slash - s));
		host[slash - s] = '\0';
		bool v4 = !strchr(host, ':');
		if (addr_parse_prefix(host, &p, &w) == 0 && parse_uint(slash + 1, 128, &len) == 0 &&
		    (!v4 || len <= 32)) {
			unsigned bits = (unsigned)len + (v4 ? 96 : 0), i;

			for (i = bits; i < 128; i++)
				p.addr.s6_addr[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
			p.len = (uint8_t)bits;
			err_at(ld, &n->start_mark, "%s: %s has host bits set; did you mean %s?",
			       key, s, addr_fmt_prefix(&p, fix));
			return;
		}
	}
	err_at(ld, &n->start_mark, "%s: %s is not a valid address or prefix: %s", key,
	       quote(s, q, sizeof(q)), why);
}

static int load_edges(struct loader *ld, struct cfg_app *app, struct app_src *src, int id)
{
	const char *expect = "an address or prefix";
	yaml_node_item_t one, *items;
	size_t i, n;
	int rc = 0;

	if (node_items(ld, id, "edge", expect, "address or prefix", &one, &items, &n) != 0)
		return -EINVAL;
	app->edges = calloc(n, sizeof(*app->edges));
	src->edge_marks = calloc(n, sizeof(*src->edge_marks));
	if (!app->edges || !src->edge_marks) {
		ld->oom = true;
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		yaml_node_t *e = node_get(ld, items[i]);
		struct addr_prefix p;
		const char *s = node_str(ld, e, "edge", expect), *why = "";
		char buf[ADDR_STRLEN];

		if (!s) {
			rc = -EINVAL;
			continue;
		}
		if (addr_parse_prefix(s, &p, &why) != 0) {
			prefix_error(ld, e, "edge", s, why);
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && !ld->cfg->listen6_on) {
			err_at(ld, &e->start_mark,
			       "edge: %s is IPv6 but listen.address6 is off (IPv6 is disabled)",
			       addr_fmt_prefix(&p, buf));
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && v6_covers_mapped(&p)) {
			/* Routing keeps IPv4 as ::ffff:a.b.c.d, so such a prefix
			 * would also claim every IPv4 destination.
			 */
			err_at(ld, &e->start_mark,
			       "edge: %s includes the IPv4-mapped range ::ffff:0:0/96; "
			       "use a narrower IPv6 prefix, and IPv4 prefixes for IPv4",
			       addr_fmt_prefix(&p, buf));
			rc = -EINVAL;
			continue;
		}
		app->edges[app->n_edges] = p;
		src->edge_marks[app->n_edges] = e->start_mark;
		app->n_edges++;
	}
	return rc;
}

/* One element of `ports`: 22, "8000-8999" or "*". */
static int parse_range(struct loader *ld, yaml_node_t *n, struct cfg_range *r)
{
	const char *s = node_str(ld, n, "ports", "a port, a range \"LO-HI\" or \"*\"");
	char q[QBUF], lo_s[16];
	const char *dash;
	unsigned long lo = 0, hi = 0;
	int rc1, rc2;

	if (!s)
		return -EINVAL;
	if (strcmp(s, "*") == 0) {
		r->lo = 1;
		r->hi = 65535;
		return 0;
	}
	dash = strchr(s, '-');
	if (!dash) {
		rc1 = parse_uint(s, 65535, &lo);
		hi = lo;
		rc2 = rc1;
	} else if (dash - s < (ptrdiff_t)sizeof(lo_s)) {
		memcpy(lo_s, s, (size_t)(dash - s));
		lo_s[dash - s] = '\0';
		rc1 = parse_uint(lo_s, 65535, &lo);
		rc2 = parse_uint(dash + 1, 65535, &hi);
	} else {
		rc1 = rc2 = -EINVAL;
	}
	if (rc1 == -EINVAL || rc2 == -EINVAL) {
		err_at(
		    ld, &n->start_mark,
		    "ports: %s is not a port, a range \"LO-HI\" or \"*\" (e.g. 22, \"8000-8999\")",
		    quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc1 == -ERANGE || lo == 0) {
		err_at(ld, &n->start_mark, "ports: port %s out of range (1-65535)",
		       dash ? lo_s : s);
		return -EINVAL;
	}
	if (rc2 == -ERANGE || hi == 0) {
		err_at(ld, &n->start_mark, "ports: port %s out of range (1-65535)", dash + 1);
		return -EINVAL;
	}
	if (lo > hi) {
		err_at(ld, &n->start_mark,
		       "ports: range %lu-%lu is reversed (did you mean %lu-%lu?)", lo, hi, hi, lo);
		return -EINVAL;
	}
	r->lo = (uint16_t)lo;
	r->hi = (uint16_t)hi;
	return 0;
}

static int load_ports(struct loader *ld, struct cfg_app *app, int id)
{
	yaml_node_item_t one, *items;
	size_t i, n;
	int rc = 0;

	if (node_items(ld, id, "ports", "a port or range", "port or range", &one, &items, &n) != 0)
		return -EINVAL;
	app->ports = calloc(n, sizeof(*app->ports));
	if (!app->ports) {
		ld->oom = true;
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		if (parse_range(ld, node_get(ld, items[i]), &app->ports[app->n_ports]) == 0)
			app->n_ports++;
		else
			rc = -EINVAL;
	}
	return rc;
}

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

static bool sa_same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			      &((const struct sockaddr_in *)b)->sin_addr,
			      sizeof(struct in_addr)) == 0;
	return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
		      &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0 &&
	       ((const struct sockaddr_in6 *)a)->sin6_scope_id ==
		   ((const struct sockaddr_in6 *)b)->sin6_scope_id;
}

static void sa_set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
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
		sa_set_port(&v[i], 0);
		for (j = 0; j < k; j++)
			if (sa_same_addr(&v[j], &v[i]))
				break;
		if (j == k)
			v[k++] = v[i];
	}
	return k;
}

static int resolve_system(const char *host, struct sockaddr_storage **addrs, size_t *n,
			  const char **why)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
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

static void origin_clear(struct cfg_origin *o)
{
	free(o->host);
	free(o->addrs);
	memset(o, 0, sizeof(*o));
}

/* Fills the fields the single-address core reads: the first address, with
 * the origin's port when it has one (the first of a range).
 */
static void origin_compat(struct cfg_origin *o)
{
	if (o->n_addrs == 0)
		return;
	o->addr = o->addrs[0];
	o->has_port = o->port_mode != CFG_PORT_DIALED;
	sa_set_port(&o->addr, o->has_port ? o->port : 0);
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
 * is accepted (resolve_names). Returns 0 or -EINVAL after reporting.
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
		sa_set_port(&ss, 0);
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
		if (colon && (parse_uint(colon + 1, 65535, &port) != 0 || port == 0)) {
			err_at(ld, &n->start_mark,
			       "%s: %s is not a valid origin: bad port (expected 1 to 65535)", key,
			       quote(s, q, sizeof(q)));
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
	err_at(ld, &n->start_mark, "%s: %s is not a valid origin: %s", key, quote(s, q, sizeof(q)),
	       why);
	return -EINVAL;
}

/* origins.port: 8080 or "9000-9999". Returns 0 or -EINVAL after reporting. */
static int parse_origin_port(struct loader *ld, yaml_node_t *n, enum cfg_port_mode *mode,
			     uint16_t *lo_out, uint16_t *hi_out)
{
	const char *s = node_str(ld, n, "origins.port", "a port (1-65535) or a range \"LO-HI\"");
	unsigned long lo = 0, hi = 0;
	const char *dash, *bad;
	char q[QBUF], lo_s[16];
	int rc1, rc2;

	if (!s)
		return -EINVAL;
	dash = strchr(s, '-');
	if (!dash) {
		rc1 = rc2 = parse_uint(s, 65535, &lo);
		hi = lo;
	} else if (dash - s < (ptrdiff_t)sizeof(lo_s)) {
		memcpy(lo_s, s, (size_t)(dash - s));
		lo_s[dash - s] = '\0';
		rc1 = parse_uint(lo_s, 65535, &lo);
		rc2 = parse_uint(dash + 1, 65535, &hi);
	} else {
		rc1 = rc2 = -EINVAL;
	}
	if (rc1 == -EINVAL || rc2 == -EINVAL) {
		err_at(ld, &n->start_mark,
		       "origins.port: %s is not a port or a range \"LO-HI\" (e.g. 8080 or "
		       "\"9000-9999\")",
		       quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc1 == -ERANGE || lo == 0 || rc2 == -ERANGE || hi == 0) {
		bad = rc1 == -ERANGE || lo == 0 ? (dash ? lo_s : s) : dash + 1;
		err_at(ld, &n->start_mark, "origins.port: port %s out of range (1-65535)", bad);
		return -EINVAL;
	}
	if (lo > hi) {
		err_at(ld, &n->start_mark,
		       "origins.port: range %lu-%lu is reversed (did you mean %lu-%lu?)", lo, hi,
		       hi, lo);
		return -EINVAL;
	}
	*mode = dash ? CFG_PORT_MAP : CFG_PORT_FIXED;
	*lo_out = (uint16_t)lo;
	*hi_out = (uint16_t)hi;
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

	map_fields(ld, map, "origins", where, f, F_N);
	if (f[F_ADDR].val) {
		os->mark = f[F_ADDR].val->start_mark;
		s = node_str(ld, f[F_ADDR].val, "origins.address",
			     "an IP address or host name, with an optional :port");
		addr_ok = s && parse_origin_addr(ld, f[F_ADDR].val, "origins.address", s, o) == 0;
	} else {
		err_at(ld, &map->start_mark,
		       "origins: missing required key \"address\" (e.g. address: 198.51.100.10)");
	}
	if (f[F_PORT].val) {
		os->port_mark = f[F_PORT].val->start_mark;
		port_ok = parse_origin_port(ld, f[F_PORT].val, &mode, &lo, &hi) == 0;
	}
	if (addr_ok && port_ok) {
		if (o->port_mode != CFG_PORT_DIALED) {
			err_at(ld, &f[F_PORT].mark,
			       "origins: %s has a port already, and so does key \"port\"; give it "
			       "once",
			       quote(s, q, sizeof(q)));
		} else {
			o->port_mode = mode;
			o->port = lo;
			os->hi = hi;
		}
	}
	if (f[F_WEIGHT].val)
		get_uint(ld, f[F_WEIGHT].val, "origins.weight", 0, CFG_WEIGHT_MAX, &o->weight);
	if (f[F_BACKUP].val)
		get_bool(ld, f[F_BACKUP].val, "origins.backup", &o->backup);
	return ld->n_errs + ld->n_dropped == errs_before && !ld->oom ? 0 : -EINVAL;
}

static bool origin_same(const struct cfg_origin *a, const struct cfg_origin *b)
{
	if (a->is_name != b->is_name || a->port_mode != b->port_mode || a->port != b->port)
		return false;
	if (a->is_name)
		return strcasecmp(a->host, b->host) == 0;
	return sa_same_addr(&a->addrs[0], &b->addrs[0]);
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
				err_at(
				    ld, &srcs[i].port_mark,
				    "origins: port range %u-%u maps ports by offset from the app's "
				    "port range, but %s has %zu port entries (give it exactly one "
				    "range, e.g. ports: \"8000-8999\")",
				    o->port, srcs[i].hi, label, app->n_ports);
				rc = -EINVAL;
			} else if (size != app_size) {
				err_at(ld, &srcs[i].port_mark,
				       "origins: port range %u-%u has %u ports but the app's range "
				       "%u-%u has %u",
				       o->port, srcs[i].hi, size, r->lo, r->hi, app_size);
				rc = -EINVAL;
			}
		}
		for (j = 0; j < i; j++)
			if (origin_same(o, &app->origins[j])) {
				err_at(ld, &srcs[i].mark,
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
		err_at(ld, &list->start_mark,
		       "origins: every %sorigin has weight 0, so no origin can be chosen (give one "
		       "a weight of 1 or more)",
		       n_primary ? "primary (non-backup) " : "");
		rc = -EINVAL;
	}
	return rc;
}

/* origins: one origin, or a list of them; each a string or a mapping. */
static int load_origins(struct loader *ld, struct cfg_app *app, int id, const char *label,
			bool ports_ok)
{
	const char *expect = "an origin (address[:port], or a mapping with address)";
	yaml_node_t *list = node_get(ld, id);
	yaml_node_item_t one, *items;
	struct origin_src *srcs;
	char where[CFG_NAME_MAX + 64];
	size_t i, n;
	int rc = 0;

	if (list->type == YAML_MAPPING_NODE) {
		one = id;
		items = &one;
		n = 1;
	} else if (node_items(ld, id, "origins", expect, "origin", &one, &items, &n) != 0) {
		return -EINVAL;
	}
	if (n > CFG_ORIGINS_MAX) {
		err_at(ld, &list->start_mark, "origins: %zu origins in one app (at most %d)", n,
		       CFG_ORIGINS_MAX);
		return -EINVAL;
	}
	app->origins = calloc(n, sizeof(*app->origins));
	srcs = calloc(n, sizeof(*srcs));
	if (!app->origins || !srcs) {
		free(srcs);
		ld->oom = true;
		return -ENOMEM;
	}
	snprintf(where, sizeof(where), "in an origin of %s", label);
	for (i = 0; i < n; i++) {
		yaml_node_t *o = node_get(ld, items[i]);
		struct cfg_origin *org = &app->origins[app->n_origins];
		struct origin_src *os = &srcs[app->n_origins];
		int r;

		org->weight = DEF_WEIGHT;
		os->mark = o->start_mark;
		if (o->type == YAML_MAPPING_NODE) {
			r = load_origin_map(ld, o, where, org, os);
		} else {
			const char *s = node_str(ld, o, "origins", expect);

			r = s ? parse_origin_addr(ld, o, "origins", s, org) : -EINVAL;
		}
		if (r != 0) {
			origin_clear(org);
			rc = -EINVAL;
			continue;
		}
		/* At the address: where a warning about the name points. */
		org->pos.line = (int)os->mark.line + 1;
		org->pos.col = (int)os->mark.column + 1;
		origin_compat(org);
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
static void resolve_names(struct loader *ld)
{
	struct cfg *c = ld->cfg;
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
			if (cfg_resolver(o->host, &addrs, &n, &why) == 0 && addrs &&
			    (n = addrs_dedupe(addrs, n)) > 0) {
				o->addrs = addrs;
				o->n_addrs = n;
				origin_compat(o);
				continue;
			}
			free(addrs);
			warn_at(
			    ld, &o->pos,
			    "origin %s does not resolve (%s); prism will retry every dns.refresh "
			    "(%s)",
			    o->host, why, fmt_duration(app->dns_refresh_ms, dur, sizeof(dur)));
		}
	}
}

/* ---- balancing, health ---- */

/* health_check {interval, timeout, rise, fall, port, send, expect}. Stores
 * in <*port_given> whether the port key is there (valid or not).
 */
static void load_health(struct loader *ld, yaml_node_t *map, const char *where,
			struct cfg_health *h, bool *port_given)
{
	struct field f[] = {{.key = "interval"}, {.key = "timeout"}, {.key = "rise"},
			    {.key = "fall"},	 {.key = "port"},    {.key = "send"},
			    {.key = "expect"}};
	enum { F_INTERVAL, F_TIMEOUT, F_RISE, F_FALL, F_PORT, F_SEND, F_EXPECT, F_N };
	bool interval_ok = true;
	char d1[32], d2[32];

	h->on = true;
	*port_given = false;
	if (map_fields(ld, map, "health_check", where, f, F_N) != 0)
		return;
	*port_given = f[F_PORT].val != NULL;
	if (f[F_INTERVAL].val)
		interval_ok = get_duration(ld, f[F_INTERVAL].val, "health_check.interval", true,
					   &h->interval_ms) == 0;
	if (f[F_TIMEOUT].val) {
		if (get_duration(ld, f[F_TIMEOUT].val, "health_check.timeout", true,
				 &h->timeout_ms) == 0 &&
		    interval_ok && h->timeout_ms > h->interval_ms)
			err_at(ld, &f[F_TIMEOUT].val->start_mark,
			       "health_check.timeout: %s is longer than the interval %s (a check "
			       "must end before the next one starts)",
			       fmt_duration(h->timeout_ms, d1, sizeof(d1)),
			       fmt_duration(h->interval_ms, d2, sizeof(d2)));
	} else if (h->timeout_ms > h->interval_ms) {
		/* A short interval shortens the default timeout with it. */
		h->timeout_ms = h->interval_ms;
	}
	if (f[F_RISE].val)
		get_uint(ld, f[F_RISE].val, "health_check.rise", 1, CFG_RISE_MAX, &h->rise);
	if (f[F_FALL].val)
		get_uint(ld, f[F_FALL].val, "health_check.fall", 1, CFG_RISE_MAX, &h->fall);
	if (f[F_PORT].val)
		get_port(ld, f[F_PORT].val, "health_check.port", &h->port);
	if (f[F_SEND].val)
		get_bytes(ld, f[F_SEND].val, "health_check.send", &h->send, &h->send_len);
	if (f[F_EXPECT].val) {
		get_bytes(ld, f[F_EXPECT].val, "health_check.expect", &h->expect, &h->expect_len);
		if (!f[F_SEND].val)
			err_at(ld, &f[F_EXPECT].mark,
			       "health_check: expect needs send (prism sends send, then compares "
			       "the start of the reply with expect)");
	}
}

/* passive {failures, cooldown}. */
static void load_passive(struct loader *ld, yaml_node_t *map, const char *where,
			 struct cfg_passive *p)
{
	struct field f[] = {{.key = "failures"}, {.key = "cooldown"}};

	if (map_fields(ld, map, "passive", where, f, 2) != 0)
		return;
	if (f[0].val)
		get_uint(ld, f[0].val, "passive.failures", 0, CFG_FAILURES_MAX, &p->failures);
	if (f[1].val)
		get_duration(ld, f[1].val, "passive.cooldown", true, &p->cooldown_ms);
}

/* dns {refresh}. */
static void load_dns(struct loader *ld, yaml_node_t *map, const char *where, uint32_t *refresh_ms)
{
	struct field f[] = {{.key = "refresh"}};

	if (map_fields(ld, map, "dns", where, f, 1) != 0)
		return;
	if (f[0].val)
		get_duration(ld, f[0].val, "dns.refresh", true, refresh_ms);
}

/* ---- protection ---- */

/* Reads a rate: "200/s", "30/m", or "0" for off (stored as 0 per second,
 * so that a reader never divides by zero). Returns 0 or -EINVAL after
 * reporting.
 */
static int get_rate(struct loader *ld, yaml_node_t *n, const char *key, struct cfg_rate *r)
{
	const char *s = node_str(ld, n, key, "a rate such as 200/s or 30/m, or 0 for off");
	char q[QBUF], num[16];
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
	if (!slash || slash - s >= (ptrdiff_t)sizeof(num) ||
	    (strcmp(slash + 1, "s") != 0 && strcmp(slash + 1, "m") != 0))
		goto bad;
	per_ms = slash[1] == 's' ? 1000 : 60000;
	memcpy(num, s, (size_t)(slash - s));
	num[slash - s] = '\0';
	rc = parse_uint(num, CFG_RATE_MAX, &v);
	if (rc == -EINVAL)
		goto bad;
	if (rc == -ERANGE || v == 0) {
		err_at(ld, &n->start_mark,
		       "%s: %s out of range (1-%d per second or per minute, or 0 for off)", key,
		       quote(s, q, sizeof(q)), CFG_RATE_MAX);
		return -EINVAL;
	}
	*r = (struct cfg_rate){(uint32_t)v, per_ms};
	return 0;
bad:
	err_at(ld, &n->start_mark,
	       "%s: %s is not a rate (expected a number per second or minute, e.g. 200/s or "
	       "30/m; or 0 for off)",
	       key, quote(s, q, sizeof(q)));
	return -EINVAL;
}

/* True when prefix <p> contains prefix <q> (or equals it). */
static bool prefix_contains(const struct addr_prefix *p, const struct addr_prefix *q)
{
	int bytes = p->len / 8, rest = p->len % 8;

	if (p->len > q->len || memcmp(&p->addr, &q->addr, (size_t)bytes) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff00u >> rest);
	return (p->addr.s6_addr[bytes] & mask) == (q->addr.s6_addr[bytes] & mask);
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

		if (!prefix_contains(&o->p, &x->p)) {
			outer = i;
			continue;
		}
		/* Report at the later one of a duplicate, at the inner one of a nest. */
		if (o->p.len == x->p.len)
			err_at(ld, &x->mark, "%s: %s is listed twice (first at line %zu)", key,
			       addr_fmt_prefix(&x->p, a), o->mark.line + 1);
		else
			err_at(ld, &x->mark, "%s: %s is inside %s (line %zu); list each range once",
			       key, addr_fmt_prefix(&x->p, a), addr_fmt_prefix(&o->p, b),
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
	if (node_is_null(v))
		return 0;
	if (v->type == YAML_SCALAR_NODE) {
		one = id;
		items = &one;
		n = 1;
	} else if (v->type == YAML_SEQUENCE_NODE) {
		items = v->data.sequence.items.start;
		n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	} else {
		err_at(ld, &v->start_mark, "%s: expected %s or a list of them, got %s", key, expect,
		       node_kind(v));
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (n > CFG_PREFIXES_MAX) {
		err_at(ld, &v->start_mark,
		       "%s: %zu prefixes (at most %d; merge neighbours into wider prefixes)", key,
		       n, CFG_PREFIXES_MAX);
		return -EINVAL;
	}
	ps = calloc(n, sizeof(*ps));
	lp = calloc(n, sizeof(*lp));
	if (!ps || !lp) {
		ld->oom = true;
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		yaml_node_t *e = node_get(ld, items[i]);
		const char *s = node_str(ld, e, key, expect), *why = "";
		char buf[ADDR_STRLEN];
		struct addr_prefix p;

		if (!s) {
			rc = -EINVAL;
			continue;
		}
		if (addr_parse_prefix(s, &p, &why) != 0) {
			prefix_error(ld, e, key, s, why);
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && v6_covers_mapped(&p)) {
			/* As for edges: v4 is kept v4-mapped, so this would
			 * match every IPv4 source too.
			 */
			err_at(ld, &e->start_mark,
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

	if (map_fields(ld, map, "protection.ban", where, f, 3) != 0)
		return;
	if (f[0].val)
		get_uint(ld, f[0].val, "protection.ban.after", 0, CFG_BAN_AFTER_MAX, &b->ban_after);
	if (f[1].val)
		get_duration(ld, f[1].val, "protection.ban.window", true, &b->ban_window_ms);
	if (f[2].val) {
		uint32_t ms;

		if (get_duration(ld, f[2].val, "protection.ban.duration", true, &ms) != 0)
			return;
		if (ms > CFG_BAN_MAX_MS)
			err_at(ld, &f[2].val->start_mark,
			       "protection.ban.duration: %s is too long (at most 7d)",
			       fmt_duration(ms, d, sizeof(d)));
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
static void load_protection(struct loader *ld, yaml_node_t *map, const char *label,
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
	if (map_fields(ld, map, "protection", where, f, F_N) != 0)
		return;
	if (app) {
		/* The nftables SYN limit and the unserved verdict are one rule
		 * for the whole table, and the process cap is the process's:
		 * none of them can differ by app.
		 */
		if (f[F_UNSERVED].val)
			err_at(ld, &f[F_UNSERVED].mark,
			       "protection.unserved is global only (it applies to ports no app "
			       "claims); set it in the top-level protection block");
		if (f[F_SYN_RATE].val)
			err_at(ld, &f[F_SYN_RATE].mark,
			       "protection.syn_rate_per_source is global only (one nftables limit "
			       "per source address); set it in the top-level protection block");
		if (f[F_MAX_CONNS].val)
			err_at(ld, &f[F_MAX_CONNS].mark,
			       "protection.max_conns is global only (the whole process); an app's "
			       "own cap is its max_conns key, beside protection");
	} else {
		if (f[F_UNSERVED].val &&
		    (v = get_word(ld, f[F_UNSERVED].val, "protection.unserved", unserved)) >= 0)
			p->unserved = (enum cfg_unserved)v;
		if (f[F_SYN_RATE].val)
			get_rate(ld, f[F_SYN_RATE].val, "protection.syn_rate_per_source",
				 &p->syn_rate_per_source);
		if (f[F_MAX_CONNS].val && max_conns)
			get_uint(ld, f[F_MAX_CONNS].val, "protection.max_conns", 0, CFG_CONNS_MAX,
				 max_conns);
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
		get_uint(ld, f[F_CONNS_PER_SRC].val, "protection.max_conns_per_source", 0,
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
		get_duration(ld, f[F_FIRST_BYTE].val, "protection.first_byte_timeout", false,
			     &p->first_byte_timeout_ms);
}

/* Loads apps[<idx>] from <map> into cfg->apps[<idx>]. */
static void load_app(struct loader *ld, size_t idx, yaml_node_t *map)
{
	static const char *const protos[] = {"tcp", NULL};
	static const char *const pps[] = {"off", "v1", "v2", NULL};
	/* In enum cfg_balance's order. */
	static const char *const lbs[] = {"round_robin", "least_conn",	"maglev",
					  "random_two",	 "source_hash", NULL};
	struct field f[] = {
	    {.key = "name"},	     {.key = "protocol"},  {.key = "edge"},
	    {.key = "ports"},	     {.key = "origins"},   {.key = "proxy_protocol"},
	    {.key = "timeouts"},     {.key = "balance"},   {.key = "retries"},
	    {.key = "health_check"}, {.key = "passive"},   {.key = "dns"},
	    {.key = "max_conns"},    {.key = "protection"}};
	enum {
		F_NAME,
		F_PROTO,
		F_EDGE,
		F_PORTS,
		F_ORIGINS,
		F_PP,
		F_TIMEOUTS,
		F_BALANCE,
		F_RETRIES,
		F_HEALTH,
		F_PASSIVE,
		F_DNS,
		F_MAX_CONNS,
		F_PROTECTION,
		F_N
	};
	bool ports_ok = false, hc_port_given = false;
	struct cfg_app *app = &ld->cfg->apps[idx];
	struct app_src *src = &ld->src[idx];
	size_t errs_before = ld->n_errs + ld->n_dropped;
	char where[CFG_NAME_MAX + 64], label[CFG_NAME_MAX + 32];
	yaml_node_pair_t *p;
	size_t i;
	int v;

	app->pos.line = (int)map->start_mark.line + 1;
	app->pos.col = (int)map->start_mark.column + 1;
	app->connect_timeout_ms = ld->cfg->connect_timeout_ms;
	app->idle_timeout_ms = ld->cfg->idle_timeout_ms;
	app->balance = CFG_LB_ROUND_ROBIN;
	app->retries = DEF_RETRIES;
	app->health.interval_ms = DEF_HC_INTERVAL_MS;
	app->health.timeout_ms = DEF_HC_TIMEOUT_MS;
	app->health.rise = DEF_HC_RISE;
	app->health.fall = DEF_HC_FALL;
	app->passive.failures = DEF_FAILURES;
	app->passive.cooldown_ms = DEF_COOLDOWN_MS;
	app->dns_refresh_ms = DEF_DNS_REFRESH_MS;
	/* Shares the global deny/allow arrays until the app's own block
	 * replaces them (see cfg_free).
	 */
	app->protection = ld->cfg->protection;
	app->protection.set_deny = false;
	app->protection.set_allow = false;
	src->ok = false;
	if (map->type != YAML_MAPPING_NODE) {
		err_at(ld, &map->start_mark,
		       "apps: each app is a mapping (name, edge, ports, origins, ...), got %s",
		       node_kind(map));
		return;
	}
	/* Name the app in messages by its name when it has a usable one. */
	snprintf(label, sizeof(label), "app #%zu", idx + 1);
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node_get(ld, p->key), *val = node_get(ld, p->value);

		if (k->type == YAML_SCALAR_NODE &&
		    strcmp((char *)k->data.scalar.value, "name") == 0 &&
		    val->type == YAML_SCALAR_NODE &&
		    strlen((char *)val->data.scalar.value) == val->data.scalar.length &&
		    name_ok((char *)val->data.scalar.value)) {
			snprintf(label, sizeof(label), "app \"%s\"",
				 (char *)val->data.scalar.value);
			break;
		}
	}
	snprintf(where, sizeof(where), "in %s", label);
	map_fields(ld, map, "app", where, f, F_N);

	if (f[F_NAME].val) {
		const char *s = node_str(ld, f[F_NAME].val, "name", "an app name");
		char q[QBUF];

		if (s && !name_ok(s)) {
			err_at(ld, &f[F_NAME].val->start_mark,
			       "name: %s is not a valid app name (1-64 letters, digits, '_', '.' "
			       "or '-')",
			       quote(s, q, sizeof(q)));
		} else if (s) {
			for (i = 0; i < idx; i++)
				if (ld->cfg->apps[i].name && strcmp(ld->cfg->apps[i].name, s) == 0)
					break;
			if (i < idx)
				err_at(ld, &f[F_NAME].val->start_mark,
				       "duplicate app name \"%s\" (first at line %d)", s,
				       ld->cfg->apps[i].pos.line);
			app->name = strdup(s);
			if (!app->name)
				ld->oom = true;
		}
	}
	if (f[F_PROTO].val && (v = get_word(ld, f[F_PROTO].val, "protocol", protos)) >= 0)
		app->protocol = (enum cfg_proto)v;
	if (f[F_PP].val && (v = get_word(ld, f[F_PP].val, "proxy_protocol", pps)) >= 0)
		app->proxy_protocol = v == 0 ? PP_OFF : v == 1 ? PP_V1 : PP_V2;
	if (f[F_EDGE].val)
		load_edges(ld, app, src, f[F_EDGE].id);
	else
		err_at(ld, &map->start_mark,
		       "%s: missing required key \"edge\" (the addresses "
		       "it serves, e.g. 192.0.2.10 or 192.0.2.0/24)",
		       label);
	if (f[F_PORTS].val)
		ports_ok = load_ports(ld, app, f[F_PORTS].id) == 0;
	else
		err_at(ld, &map->start_mark,
		       "%s: missing required key \"ports\" (e.g. 22, "
		       "\"8000-8999\", \"*\" or a list)",
		       label);
	if (f[F_ORIGINS].val)
		load_origins(ld, app, f[F_ORIGINS].id, label, ports_ok);
	else
		err_at(ld, &map->start_mark,
		       "%s: missing required key \"origins\" (where to "
		       "relay, e.g. 198.51.100.10:22)",
		       label);
	if (!f[F_NAME].val)
		err_at(ld, &map->start_mark, "%s: missing required key \"name\"", label);
	snprintf(where, sizeof(where), "in timeouts of %s", label);
	if (f[F_TIMEOUTS].val)
		load_timeouts(ld, f[F_TIMEOUTS].val, where, &app->connect_timeout_ms,
			      &app->idle_timeout_ms);
	if (f[F_BALANCE].val && (v = get_word(ld, f[F_BALANCE].val, "balance", lbs)) >= 0)
		app->balance = (enum cfg_balance)v;
	if (f[F_RETRIES].val)
		get_uint(ld, f[F_RETRIES].val, "retries", 0, CFG_RETRIES_MAX, &app->retries);
	if (f[F_HEALTH].val) {
		snprintf(where, sizeof(where), "in health_check of %s", label);
		load_health(ld, f[F_HEALTH].val, where, &app->health, &hc_port_given);
		/* Only a fixed port says where to check; the other modes
		 * depend on the port each client dials.
		 */
		for (i = 0; !hc_port_given && i < app->n_origins; i++) {
			const struct cfg_origin *o = &app->origins[i];

			if (o->port_mode == CFG_PORT_DIALED) {
				err_at(
				    ld, &f[F_HEALTH].mark,
				    "health_check: origins without a port need health_check.port "
				    "(%s is dialed on the port the client dialed, so there is no "
				    "one port to check)",
				    o->host);
				break;
			}
			if (o->port_mode == CFG_PORT_MAP) {
				err_at(ld, &f[F_HEALTH].mark,
				       "health_check: origins with a port range need "
				       "health_check.port (%s is dialed on a port that follows the "
				       "client's, so there is no one port to check)",
				       o->host);
				break;
			}
		}
	}
	if (f[F_PASSIVE].val) {
		snprintf(where, sizeof(where), "in passive of %s", label);
		load_passive(ld, f[F_PASSIVE].val, where, &app->passive);
	}
	if (f[F_DNS].val) {
		snprintf(where, sizeof(where), "in dns of %s", label);
		load_dns(ld, f[F_DNS].val, where, &app->dns_refresh_ms);
	}
	if (f[F_MAX_CONNS].val)
		get_uint(ld, f[F_MAX_CONNS].val, "max_conns", 0, CFG_CONNS_MAX, &app->max_conns);
	if (f[F_PROTECTION].val)
		load_protection(ld, f[F_PROTECTION].val, label, &app->protection, NULL);
	src->ok = ld->n_errs + ld->n_dropped == errs_before && !ld->oom;
}

/* ---- routing ---- */

/* Describes the ports two claims share, e.g. "ports 8000-8100". */
static void fmt_shared_ports(const struct rt_claim *a, const struct rt_claim *b, char *buf,
			     size_t size)
{
	uint16_t lo = a->lo > b->lo ? a->lo : b->lo, hi = a->hi < b->hi ? a->hi : b->hi;

	if (lo > hi) { /* not expected from a tie; show b's own range */
		lo = b->lo;
		hi = b->hi;
	}
	if (lo == hi)
		snprintf(buf, size, "port %u", lo);
	else
		snprintf(buf, size, "ports %u-%u", lo, hi);
}

/* Makes one claim per (edge, port range) of every app that loaded cleanly
 * and builds the routing table. rt_build names one conflict at a time; to
 * report them all, the later claim of each conflict is dropped and the
 * table rebuilt, a bounded number of times. Each pair of apps is reported
 * once, at the first edge where they collide.
 */
static void build_routes(struct loader *ld, const yaml_mark_t *apps_mark)
{
	struct cfg *c = ld->cfg;
	struct rt_claim *claims = NULL, dummy = {.lo = 1, .hi = 1};
	struct claim_src *srcs = NULL;
	size_t pairs[CFG_MAX_REBUILDS][2], n_pairs = 0;
	size_t total = 0, n = 0, a, e, r, k, i;

	for (a = 0; a < c->n_apps; a++)
		if (ld->src[a].ok) {
			total += c->apps[a].n_edges * c->apps[a].n_ports;
			if (total > CFG_MAX_CLAIMS)
				break;
		}
	if (total > CFG_MAX_CLAIMS) {
		err_at(ld, apps_mark,
		       "apps: more than %d (edge, port range) combinations in all; merge edges "
		       "into prefixes or ports into ranges",
		       CFG_MAX_CLAIMS);
		return;
	}
	claims = calloc(total ? total : 1, sizeof(*claims));
	srcs = calloc(total ? total : 1, sizeof(*srcs));
	if (!claims || !srcs) {
		ld->oom = true;
		goto out;
	}
	for (a = 0; a < c->n_apps; a++) {
		const struct cfg_app *app = &c->apps[a];

		if (!ld->src[a].ok)
			continue;
		for (e = 0; e < app->n_edges; e++)
			for (r = 0; r < app->n_ports; r++) {
				claims[n].prefix = app->edges[e];
				claims[n].lo = app->ports[r].lo;
				claims[n].hi = app->ports[r].hi;
				claims[n].app = (uint32_t)a;
				srcs[n].app = a;
				srcs[n].mark = ld->src[a].edge_marks[e];
				n++;
			}
	}
	for (k = 0;; k++) {
		struct rt_conflict cf = {0, 0};
		struct rt *rt = NULL;
		int rc = rt_build(n ? claims : &dummy, n, &rt, &cf);

		if (rc == 0) {
			c->rt = rt;
			break;
		}
		if (rc == -ENOMEM) {
			ld->oom = true;
			break;
		}
		if (rc != -EEXIST || cf.a >= n || cf.b >= n || cf.a == cf.b) {
			err_at(ld, apps_mark, "apps: cannot build the routing table: %s",
			       strerror(rc < 0 ? -rc : EINVAL));
			break;
		}
		if (cf.a > cf.b) {
			size_t t = cf.a;

			cf.a = cf.b;
			cf.b = t;
		}
		size_t app_a = srcs[cf.a].app, app_b = srcs[cf.b].app;

		for (i = 0; i < n_pairs; i++)
			if (pairs[i][0] == app_a && pairs[i][1] == app_b)
				break;
		if (i == n_pairs) {
			char pfx[ADDR_STRLEN], ports[32];

			pairs[n_pairs][0] = app_a;
			pairs[n_pairs][1] = app_b;
			n_pairs++;
			fmt_shared_ports(&claims[cf.a], &claims[cf.b], ports, sizeof(ports));
			err_at(
			    ld, &srcs[cf.b].mark,
			    "app \"%s\" overlaps app \"%s\" (line %zu): both claim %s %s with no "
			    "more specific winner",
			    c->apps[app_b].name, c->apps[app_a].name, srcs[cf.a].mark.line + 1,
			    addr_fmt_prefix(&claims[cf.b].prefix, pfx), ports);
		}
		if (k + 1 == CFG_MAX_REBUILDS)
			break;
		memmove(&claims[cf.b], &claims[cf.b + 1], (n - cf.b - 1) * sizeof(*claims));
		memmove(&srcs[cf.b], &srcs[cf.b + 1], (n - cf.b - 1) * sizeof(*srcs));
		n--;
	}
out:
	free(claims);
	free(srcs);
}

/* ---- document ---- */

static void load_apps(struct loader *ld, yaml_node_t *seq)
{
	struct cfg *c = ld->cfg;
	yaml_node_item_t *it;
	size_t n, i;

	if (node_is_null(seq))
		goto routes;
	if (seq->type != YAML_SEQUENCE_NODE) {
		err_at(ld, &seq->start_mark, "apps: expected a list of apps, got %s",
		       node_kind(seq));
		return;
	}
	n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	if (n == 0)
		goto routes;
	c->apps = calloc(n, sizeof(*c->apps));
	ld->src = calloc(n, sizeof(*ld->src));
	if (!c->apps || !ld->src) {
		ld->oom = true;
		return;
	}
	c->n_apps = n;
	ld->n_src = n;
	for (i = 0, it = seq->data.sequence.items.start; i < n; i++, it++)
		load_app(ld, i, node_get(ld, *it));
routes:
	build_routes(ld, &seq->start_mark);
}

static void load_root(struct loader *ld, yaml_node_t *root)
{
	struct field f[] = {{.key = "listen"},	       {.key = "network"}, {.key = "timeouts"},
			    {.key = "shutdown_grace"}, {.key = "apps"},	   {.key = "log_level"},
			    {.key = "protection"}};
	enum { F_LISTEN, F_NETWORK, F_TIMEOUTS, F_GRACE, F_APPS, F_LOG, F_PROTECTION, F_N };
	static const yaml_mark_t start = {0, 0, 0};

	if (!root || node_is_null(root)) {
		build_routes(ld, &start);
		return;
	}
	if (root->type != YAML_MAPPING_NODE) {
		err_at(ld, &root->start_mark,
		       "the top level must be a mapping of keys (listen, network, timeouts, "
		       "shutdown_grace, apps, log_level, protection), got %s",
		       node_kind(root));
		return;
	}
	map_fields(ld, root, "config", "at top level", f, F_N);
	if (f[F_LOG].val)
		load_log_level(ld, f[F_LOG].val);
	/* Before the apps: their defaults and the IPv6 check depend on these. */
	if (f[F_LISTEN].val)
		load_listen(ld, f[F_LISTEN].val);
	if (f[F_NETWORK].val)
		load_network(ld, f[F_NETWORK].val);
	if (f[F_TIMEOUTS].val)
		load_timeouts(ld, f[F_TIMEOUTS].val, "in timeouts", &ld->cfg->connect_timeout_ms,
			      &ld->cfg->idle_timeout_ms);
	if (f[F_GRACE].val)
		get_duration(ld, f[F_GRACE].val, "shutdown_grace", false,
			     &ld->cfg->shutdown_grace_ms);
	/* Before the apps: each app's protection starts as a copy of it. */
	if (f[F_PROTECTION].val)
		load_protection(ld, f[F_PROTECTION].val, NULL, &ld->cfg->protection,
				&ld->cfg->max_conns);
	if (f[F_APPS].val)
		load_apps(ld, f[F_APPS].val);
	else
		build_routes(ld, &root->start_mark);
}

/* Reports what libyaml refused. Its marks are 0-based like node marks. */
static void syntax_error(struct loader *ld, const yaml_parser_t *p, const char *buf, size_t len)
{
	const char *what = p->problem ? p->problem : "unknown error";

	if (p->error == YAML_MEMORY_ERROR) {
		ld->oom = true;
		return;
	}
	if (p->error == YAML_READER_ERROR) {
		/* The reader only knows a byte offset: find its line. */
		yaml_mark_t m = {0, 0, 0};
		size_t i;

		for (i = 0; i < p->problem_offset && i < len; i++) {
			if (buf[i] == '\n') {
				m.line++;
				m.column = 0;
			} else {
				m.column++;
			}
		}
		err_at(ld, &m, "not valid text: %s (the file must be UTF-8)", what);
		return;
	}
	if (p->context)
		err_at(ld, &p->problem_mark, "YAML syntax error: %s (%s at line %zu, column %zu)",
		       what, p->context, p->context_mark.line + 1, p->context_mark.column + 1);
	else
		err_at(ld, &p->problem_mark, "YAML syntax error: %s", what);
}

static struct cfg *cfg_new(const char *path)
{
	struct cfg *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->refs = 1;
	c->listen4.sin_family = AF_INET;
	c->listen4.sin_port = htons(DEF_PORT);
	inet_pton(AF_INET, DEF_LISTEN4, &c->listen4.sin_addr);
	c->listen6.sin6_family = AF_INET6;
	c->listen6.sin6_port = htons(DEF_PORT);
	inet_pton(AF_INET6, DEF_LISTEN6, &c->listen6.sin6_addr);
	c->listen6_on = true;
	c->workers = 0; /* auto, resolved once the file is accepted */
	c->net_manage = true;
	c->connect_timeout_ms = DEF_CONNECT_MS;
	c->idle_timeout_ms = DEF_IDLE_MS;
	c->shutdown_grace_ms = DEF_GRACE_MS;
	c->log_level = LOG_INFO;
	c->manage_sysctls = true;
	c->protection.unserved = CFG_UNSERVED_DROP;
	c->protection.syn_rate_per_source = (struct cfg_rate){0, 1000};
	c->protection.conn_rate_per_source = (struct cfg_rate){0, 1000};
	c->protection.ban_window_ms = DEF_BAN_WINDOW_MS;
	c->protection.ban_duration_ms = DEF_BAN_MS;
	c->path = strdup(path);
	c->nft_table = strdup(DEF_TABLE);
	if (!c->path || !c->nft_table) {
		free(c->path);
		free(c->nft_table);
		free(c);
		return NULL;
	}
	return c;
}

static void cfg_free(struct cfg *c)
{
	size_t i;

	for (i = 0; i < c->n_apps; i++) {
		struct cfg_app *a = &c->apps[i];

		free(a->name);
		free(a->edges);
		free(a->ports);
		for (size_t j = 0; j < a->n_origins; j++)
			origin_clear(&a->origins[j]);
		free(a->origins);
		free(a->health.send);
		free(a->health.expect);
		/* An app owns its deny/allow arrays only when its own block
		 * replaced them; otherwise they are the global ones, borrowed.
		 */
		if (a->protection.deny != c->protection.deny)
			free(a->protection.deny);
		if (a->protection.allow != c->protection.allow)
			free(a->protection.allow);
	}
	free(c->protection.deny);
	free(c->protection.allow);
	free(c->warnings);
	free(c->apps);
	if (c->rt)
		rt_free(c->rt);
	free(c->path);
	free(c->nft_table);
	free(c);
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > CFG_WORKERS_MAX ? CFG_WORKERS_MAX : (int)n;
}

int cfg_load_buf(const char *name, const char *buf, size_t len, struct cfg **out, char **errors)
{
	struct loader ld = {.name = name};
	yaml_parser_t parser;
	yaml_document_t doc, doc2;
	bool have_parser = false, have_doc = false;
	size_t i;
	int rc;

	*out = NULL;
	if (errors)
		*errors = NULL;
	ld.cfg = cfg_new(name);
	if (!ld.cfg || !yaml_parser_initialize(&parser)) {
		ld.oom = true;
		goto out;
	}
	have_parser = true;
	yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
	if (!yaml_parser_load(&parser, &doc)) {
		syntax_error(&ld, &parser, buf, len);
		goto out;
	}
	have_doc = true;
	ld.doc = &doc;
	yaml_node_t *root = yaml_document_get_root_node(&doc);

	/* Only one document: a second one would be silently ignored otherwise,
	 * and it is most likely a second config pasted into the same file.
	 */
	if (root) {
		if (!yaml_parser_load(&parser, &doc2)) {
			syntax_error(&ld, &parser, buf, len);
		} else {
			if (yaml_document_get_root_node(&doc2))
				err_at(
				    &ld, &doc2.start_mark,
				    "a second YAML document starts here; prism reads one (remove "
				    "the \"---\" and what follows, or merge the two)");
			yaml_document_delete(&doc2);
		}
	}
	load_root(&ld, root);
	/* Only for a config that will be used: resolving takes time. */
	if (!ld.n_errs && !ld.n_dropped && !ld.oom)
		resolve_names(&ld);
out:
	if (ld.n_errs || ld.n_dropped || ld.oom) {
		rc = ld.n_errs || ld.n_dropped ? -EINVAL : -ENOMEM;
		if (errors)
			*errors = err_text(&ld);
		if (ld.cfg)
			cfg_free(ld.cfg);
	} else {
		if (ld.cfg->workers == 0)
			ld.cfg->workers = online_cpus();
		ld.cfg->warnings = ld.warns;
		ld.warns = NULL;
		*out = ld.cfg;
		rc = 0;
	}
	for (i = 0; i < ld.n_errs; i++)
		free(ld.errs[i].msg);
	free(ld.errs);
	free(ld.warns);
	if (ld.src) {
		for (i = 0; i < ld.n_src; i++)
			free(ld.src[i].edge_marks);
		free(ld.src);
	}
	if (have_doc)
		yaml_document_delete(&doc);
	if (have_parser)
		yaml_parser_delete(&parser);
	return rc;
}

/* Reads all of <path> into a malloc'd buffer. Returns 0 or -errno. */
static int read_file(const char *path, char **out, size_t *out_len)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap), *nb;
	int fd, rc = 0;
	ssize_t r;

	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		rc = -errno;
		goto out;
	}
	for (;;) {
		if (len == cap) {
			if (cap > CFG_MAX_FILE) {
				rc = -EFBIG;
				goto out;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
			cap *= 2;
		}
		r = read(fd, buf + len, cap - len);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			rc = -errno; /* EISDIR for a directory */
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
out:
	if (fd != -1)
		close(fd);
	if (rc != 0) {
		free(buf);
		return rc;
	}
	*out = buf;
	*out_len = len;
	return 0;
}

int cfg_load(const char *path, struct cfg **out, char **errors)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	if (errors)
		*errors = NULL;
	rc = read_file(path, &buf, &len);
	if (rc != 0) {
		if (errors && asprintf(errors, "%s: cannot read: %s\n", path, strerror(-rc)) == -1)
			*errors = NULL;
		return rc;
	}
	rc = cfg_load_buf(path, buf, len, out, errors);
	free(buf);
	return rc;
}

struct cfg *cfg_ref(struct cfg *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
	return c;
}

void cfg_unref(struct cfg *c)
{
	if (!c)
		return;
	/* Release/acquire: the thread that frees must see every other
	 * thread's last use of the snapshot as done.
	 */
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
		cfg_free(c);
}

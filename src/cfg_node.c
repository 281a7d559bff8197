/* cfg_node.c - the config loader's access to YAML nodes and its scalar
 * parsers: each value is read as a string and interpreted by the key it
 * belongs to (numbers, durations, ports, words, booleans, payloads), with
 * problems reported as "KEY: ..." at the node's position.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "cfg-int.h"

/* ---- node helpers ---- */

yaml_node_t *cfg_node_get(struct loader *ld, int id)
{
	return yaml_document_get_node(ld->doc, id);
}

const char *cfg_node_kind(const yaml_node_t *n)
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
bool cfg_node_is_null(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && n->data.scalar.length == 0 &&
	       n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* Returns the text of scalar <n> for key <key>, or NULL after reporting why
 * it is unusable. <expect> says what the key takes, for the message.
 */
const char *cfg_node_str(struct loader *ld, yaml_node_t *n, const char *key, const char *expect)
{
	if (n->type != YAML_SCALAR_NODE) {
		cfg_err_at(ld, &n->start_mark, "%s: expected %s, got %s", key, expect,
			   cfg_node_kind(n));
		return NULL;
	}
	if (n->data.scalar.length == 0) {
		cfg_err_at(ld, &n->start_mark, "%s: no value given (expected %s)", key, expect);
		return NULL;
	}
	if (memchr(n->data.scalar.value, '\0', n->data.scalar.length)) {
		cfg_err_at(ld, &n->start_mark, "%s: value contains a NUL character", key);
		return NULL;
	}
	return (const char *)n->data.scalar.value;
}

/* Resolves the items of a value that may be one scalar or a list of them
 * into <*items>/<*n> (node ids; for a scalar, its own id in <*one>).
 * Returns 0, or -EINVAL after reporting.
 */
int cfg_node_items(struct loader *ld, int id, const char *key, const char *expect, const char *noun,
		   yaml_node_item_t *one, yaml_node_item_t **items, size_t *n)
{
	yaml_node_t *v = cfg_node_get(ld, id);

	if (v->type == YAML_SCALAR_NODE) {
		*one = id;
		*items = one;
		*n = 1;
		return 0;
	}
	if (v->type != YAML_SEQUENCE_NODE) {
		cfg_err_at(ld, &v->start_mark, "%s: expected %s or a list of them, got %s", key,
			   expect, cfg_node_kind(v));
		return -EINVAL;
	}
	*items = v->data.sequence.items.start;
	*n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	if (*n == 0) {
		cfg_err_at(ld, &v->start_mark, "%s: empty list (expected at least one %s)", key,
			   noun);
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
int cfg_map_fields(struct loader *ld, yaml_node_t *map, const char *key, const char *where,
		   struct field *f, size_t nf)
{
	yaml_node_pair_t *p;
	size_t i;

	for (i = 0; i < nf; i++)
		f[i].val = NULL;
	if (cfg_node_is_null(map))
		return 0;
	if (map->type != YAML_MAPPING_NODE) {
		cfg_err_at(ld, &map->start_mark, "%s: expected a mapping of keys, got %s", key,
			   cfg_node_kind(map));
		return -EINVAL;
	}
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = cfg_node_get(ld, p->key);
		const char *ks;
		char q[QBUF];

		if (k->type != YAML_SCALAR_NODE) {
			cfg_err_at(ld, &k->start_mark, "keys %s must be plain names, got %s", where,
				   cfg_node_kind(k));
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
			cfg_err_at(ld, &k->start_mark, "unknown key %s %s (expected one of: %s)",
				   cfg_quote(ks, q, sizeof(q)), where, list);
			continue;
		}
		if (f[i].val) {
			cfg_err_at(ld, &k->start_mark,
				   "duplicate key \"%s\" %s (first at line %zu)", f[i].key, where,
				   f[i].mark.line + 1);
			continue;
		}
		f[i].val = cfg_node_get(ld, p->value);
		f[i].id = p->value;
		f[i].mark = k->start_mark;
	}
	return 0;
}

/* ---- scalar parsers ---- */

/* Parses a decimal number of digits only (no sign, no spaces) into <*v>.
 * Returns 0, -EINVAL (not a number) or -ERANGE (above <max>).
 */
int cfg_parse_uint(const char *s, unsigned long max, unsigned long *v)
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
int cfg_get_duration(struct loader *ld, yaml_node_t *n, const char *key, bool positive,
		     uint32_t *ms)
{
	const char *s = cfg_node_str(ld, n, key, "a duration such as 500ms, 5s, 2m, 1h or 1d");
	char q[QBUF];
	int rc;

	if (!s)
		return -EINVAL;
	rc = parse_duration(s, ms);
	if (rc == -ERANGE) {
		cfg_err_at(ld, &n->start_mark, "%s: %s is too long (at most 49d)", key,
			   cfg_quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc != 0 && s[0] == '-') {
		cfg_err_at(ld, &n->start_mark, "%s: %s is negative (durations are 0 or more)", key,
			   cfg_quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc != 0) {
		cfg_err_at(
		    ld, &n->start_mark,
		    "%s: %s is not a duration (expected a number with a unit: ms, s, m, h or d, "
		    "e.g. 500ms or 5s; or 0)",
		    key, cfg_quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (positive && *ms == 0) {
		cfg_err_at(ld, &n->start_mark, "%s: must be more than 0", key);
		return -EINVAL;
	}
	return 0;
}

int cfg_get_bool(struct loader *ld, yaml_node_t *n, const char *key, bool *b)
{
	const char *s = cfg_node_str(ld, n, key, "true or false");
	char q[QBUF];

	if (!s)
		return -EINVAL;
	if (strcmp(s, "true") == 0)
		*b = true;
	else if (strcmp(s, "false") == 0)
		*b = false;
	else {
		cfg_err_at(ld, &n->start_mark, "%s: %s is not a boolean (expected true or false)",
			   key, cfg_quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	return 0;
}

/* Looks <s> up in <words> (NULL-terminated). Returns its index or -EINVAL
 * after reporting.
 */
int cfg_get_word(struct loader *ld, yaml_node_t *n, const char *key, const char *const *words)
{
	char list[128], q[QBUF];
	size_t o = 0;
	const char *s;
	int i;

	for (i = 0; words[i]; i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", words[i]);
	s = cfg_node_str(ld, n, key, list);
	if (!s)
		return -EINVAL;
	for (i = 0; words[i]; i++)
		if (strcmp(s, words[i]) == 0)
			return i;
	cfg_err_at(ld, &n->start_mark, "%s: %s is not one of: %s", key, cfg_quote(s, q, sizeof(q)),
		   list);
	return -EINVAL;
}

int cfg_get_port(struct loader *ld, yaml_node_t *n, const char *key, uint16_t *port)
{
	const char *s = cfg_node_str(ld, n, key, "a port number (1-65535)");
	unsigned long v;
	char q[QBUF];
	int rc;

	if (!s)
		return -EINVAL;
	rc = cfg_parse_uint(s, 65535, &v);
	if (rc == -EINVAL) {
		cfg_err_at(ld, &n->start_mark, "%s: %s is not a port number (1-65535)", key,
			   cfg_quote(s, q, sizeof(q)));
		return -EINVAL;
	}
	if (rc == -ERANGE || v == 0) {
		cfg_err_at(ld, &n->start_mark, "%s: port " CFG_NUM_FMT " out of range (1-65535)",
			   key, CFG_NUM_ARG(s));
		return -EINVAL;
	}
	*port = (uint16_t)v;
	return 0;
}

/* Reads a whole number in <lo>..<hi>. Returns 0 or -EINVAL after reporting. */
int cfg_get_uint(struct loader *ld, yaml_node_t *n, const char *key, unsigned long lo,
		 unsigned long hi, uint32_t *out)
{
	char expect[64], q[QBUF];
	unsigned long v;
	const char *s;
	int rc;

	snprintf(expect, sizeof(expect), "a number (%lu-%lu)", lo, hi);
	s = cfg_node_str(ld, n, key, expect);
	if (!s)
		return -EINVAL;
	rc = cfg_parse_uint(s, hi, &v);
	if (rc == -EINVAL) {
		cfg_err_at(ld, &n->start_mark, "%s: %s is not %s", key, cfg_quote(s, q, sizeof(q)),
			   expect);
		return -EINVAL;
	}
	if (rc == -ERANGE || v < lo) {
		cfg_err_at(ld, &n->start_mark, "%s: " CFG_NUM_FMT " out of range (%lu-%lu)", key,
			   CFG_NUM_ARG(s), lo, hi);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

/* Reads a payload into a malloc'd, NUL-terminated copy: one byte per
 * character, U+0000 to U+00FF, NUL included. YAML's "\xNN" is the
 * character U+00NN, which libyaml hands over as UTF-8 (two bytes from
 * \x80 up): decoded here, so that "\x16\x03\x01" and "\xff" are sent as
 * written. A character above U+00FF is no byte and is refused, as a
 * sequence of bytes cannot tell which encoding the user meant.
 * Returns 0 or -EINVAL after reporting.
 */
int cfg_get_bytes(struct loader *ld, yaml_node_t *n, const char *key, char **out, size_t *len)
{
	const unsigned char *v;
	size_t l = 0, i;
	char *buf;

	if (n->type != YAML_SCALAR_NODE) {
		cfg_err_at(ld, &n->start_mark, "%s: expected a string, got %s", key,
			   cfg_node_kind(n));
		return -EINVAL;
	}
	v = n->data.scalar.value;
	if (n->data.scalar.length == 0) {
		cfg_err_at(ld, &n->start_mark, "%s: empty (leave the key out instead)", key);
		return -EINVAL;
	}
	buf = malloc(n->data.scalar.length + 1);
	if (!buf) {
		ld->oom = true;
		return -ENOMEM;
	}
	/* libyaml's scalars are valid UTF-8: a lead byte below 0xc4 starts
	 * U+0000 to U+00FF.
	 */
	for (i = 0; i < n->data.scalar.length; l++) {
		if (v[i] < 0x80) {
			buf[l] = (char)v[i++];
		} else if (v[i] < 0xc4 && i + 1 < n->data.scalar.length) {
			buf[l] = (char)((v[i] & 0x1f) << 6 | (v[i + 1] & 0x3f));
			i += 2;
		} else {
			size_t cl = v[i] >= 0xf0 ? 4 : v[i] >= 0xe0 ? 3 : 2;
			char hex[4 * 4 + 1] = "";

			for (size_t k = 0; k < cl && i + k < n->data.scalar.length; k++)
				snprintf(hex + 4 * k, sizeof(hex) - 4 * k, "\\x%02x", v[i + k]);
			cfg_err_at(
			    ld, &n->start_mark,
			    "%s: \"%.*s\" is not a byte: each character is one byte, \\x00 to "
			    "\\xff; write text in another encoding as its bytes (\"%s\" for "
			    "UTF-8)",
			    key, (int)cl, (const char *)v + i, hex);
			free(buf);
			return -EINVAL;
		}
	}
	if (l > CFG_PAYLOAD_MAX) {
		cfg_err_at(ld, &n->start_mark, "%s: %zu bytes is too long (at most %d)", key, l,
			   CFG_PAYLOAD_MAX);
		free(buf);
		return -EINVAL;
	}
	buf[l] = '\0';
	free(*out);
	*out = buf;
	*len = l;
	return 0;
}

/* Formats <ms> in the largest unit that divides it, as a user would write it. */
const char *cfg_fmt_duration(uint32_t ms, char *buf, size_t size)
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

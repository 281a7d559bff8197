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
 *
 * The origins (with balancing and health) and protection sections live in
 * cfg_origins.c and cfg_protect.c, node access and scalar parsing in
 * cfg_node.c; cfg-int.h is what they share.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yaml.h>

#include "cfg-int.h"
#include "log.h"
#include "rt.h"

/* 100,000 apps take about 9 MiB of YAML. libyaml's document for a file
 * takes about 40 times the file's size while it loads, so the cap bounds
 * that too (and refuses to slurp a disk image).
 */
#define CFG_MAX_FILE	(32 << 20)
#define CFG_KEEP_ERRORS 1000 /* collected, then sorted ... */
#define CFG_SHOW_ERRORS 100  /* ... and the first this many printed */
/* Warnings kept, the rest counted: one origin list that does not resolve,
 * shared by 500 apps through an alias, made 500,000 lines (69 MB).
 */
#define CFG_SHOW_WARNINGS 100
/* Edges x port ranges, over all apps; rt_build takes about 0.7 s and 90 MB
 * at the cap.
 */
#define CFG_MAX_CLAIMS	 1000000
#define CFG_MAX_REBUILDS 64 /* rt_build retries to find more overlaps */
#define CFG_TABLE_MAX	 31
#define CFG_WORKERS_MAX	 1024

#define DEF_LISTEN4	   "127.0.0.1"
#define DEF_LISTEN6	   "::1"
#define DEF_PORT	   15001
#define DEF_TABLE	   "prism"
#define DEF_CONNECT_MS	   5000
#define DEF_IDLE_MS	   300000
#define DEF_GRACE_MS	   10000
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
	yaml_mark_t name_mark;	 /* of the name scalar, when the app has a name */
	bool ok;		 /* no problem found in this app */
};

/* ---- error collection ---- */

static int err_cmp(const void *a, const void *b)
{
	const struct cfg_err *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

__attribute__((format(printf, 4, 0))) static void err_add(struct loader *ld, int line, int col,
							  const char *fmt, va_list ap)
{
	struct cfg_err *e;
	char *msg;

	if (ld->n_errs >= CFG_KEEP_ERRORS) {
		/* Full: keep the earliest by position, as err_text shows
		 * them. A problem found late (the checks that run after the
		 * apps are read) may lie before those kept: it takes the
		 * place of the latest one.
		 */
		struct cfg_err *last = &ld->errs[ld->err_last];

		ld->n_dropped++;
		if (err_cmp(&(struct cfg_err){.line = line, .col = col, .seq = SIZE_MAX}, last) >=
		    0)
			return;
		if (vasprintf(&msg, fmt, ap) == -1) {
			ld->oom = true;
			return;
		}
		free(last->msg);
		*last = (struct cfg_err){
		    .line = line, .col = col, .seq = ld->n_errs + ld->n_dropped, .msg = msg};
		for (size_t i = 0; i < ld->n_errs; i++)
			if (err_cmp(&ld->errs[i], &ld->errs[ld->err_last]) > 0)
				ld->err_last = i;
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
	if (ld->n_errs && err_cmp(e, &ld->errs[ld->err_last]) > 0)
		ld->err_last = ld->n_errs;
	ld->n_errs++;
}

/* Reports a problem at <m> (libyaml's 0-based mark, printed 1-based). */
__attribute__((format(printf, 3, 4))) void cfg_err_at(struct loader *ld, const yaml_mark_t *m,
						      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_add(ld, (int)m->line + 1, (int)m->column + 1, fmt, ap);
	va_end(ap);
}

/* Adds a "FILE:LINE:COL: warning: ..." line for a config that still loads. */
__attribute__((format(printf, 3, 4))) void cfg_warn_at(struct loader *ld, const struct cfg_pos *pos,
						       const char *fmt, ...)
{
	char *msg, *line, *w;
	va_list ap;
	int n, r;

	if (ld->n_warns >= CFG_SHOW_WARNINGS) {
		ld->warns_dropped++;
		return;
	}
	ld->n_warns++;
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
const char *cfg_quote(const char *s, char *buf, size_t size)
{
	size_t o = 0, i;

	buf[o++] = '"';
	for (i = 0; s[i] && o + 8 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i == CFG_QUOTE_MAX) {
			/* Not in the middle of a UTF-8 character: back to its
			 * lead byte when the bytes after it are fewer than it
			 * announces.
			 */
			size_t p = o;

			while (p > 1 && o - p < 3 && ((unsigned char)buf[p - 1] & 0xc0) == 0x80)
				p--;
			if (p > 1 && (unsigned char)buf[p - 1] >= 0xc0) {
				unsigned char lead = (unsigned char)buf[p - 1];
				size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;

				if (o - (p - 1) < need)
					o = p - 1;
			}
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

/* ---- sections ---- */

static void load_log_level(struct loader *ld, yaml_node_t *n)
{
	static const char *const names[] = {"error", "warn", "info", "debug", NULL};
	static const int levels[] = {LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG};
	int i = cfg_get_word(ld, n, "log_level", names);

	if (i >= 0)
		ld->cfg->log_level = levels[i];
}

/* log_buffer: bytes, or a number with KiB or MiB. */
static void load_log_buffer(struct loader *ld, yaml_node_t *n)
{
	static const struct {
		const char *suffix;
		unsigned shift;
	} units[] = {{"KiB", 10}, {"MiB", 20}, {"", 0}};
	char num[32], q[QBUF];
	unsigned long v;
	const char *s = cfg_node_str(ld, n, "log_buffer", "a size such as 1MiB");
	size_t len, i;
	int rc;

	if (!s)
		return;
	len = strlen(s);
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		size_t sl = strlen(units[i].suffix);

		if (len >= sl && strcmp(s + len - sl, units[i].suffix) == 0)
			break;
	}
	len -= strlen(units[i].suffix);
	rc = -EINVAL;
	if (len > 0 && len < sizeof(num)) {
		memcpy(num, s, len);
		num[len] = '\0';
		rc = cfg_parse_uint(num, LOG_BUFFER_MAX >> units[i].shift, &v);
	} else if (len > 0 && strspn(s, "0123456789") == len) {
		rc = -ERANGE; /* digits, more than any size */
	}
	if (rc == -EINVAL) {
		cfg_err_at(ld, &n->start_mark,
			   "log_buffer: %s is not a size (bytes, or a number with KiB or MiB)",
			   cfg_quote(s, q, sizeof(q)));
		return;
	}
	if (rc == 0)
		v <<= units[i].shift;
	if (rc == -ERANGE || v < LOG_BUFFER_MIN) {
		cfg_err_at(ld, &n->start_mark,
			   "log_buffer: " CFG_NUM_FMT " out of range (64KiB-256MiB)",
			   CFG_NUM_ARG(s));
		return;
	}
	ld->cfg->log_buffer = v;
}

static void load_listen(struct loader *ld, yaml_node_t *map)
{
	struct field f[] = {
	    {.key = "address"}, {.key = "address6"}, {.key = "port"}, {.key = "workers"}};
	struct cfg *c = ld->cfg;
	char q[QBUF];
	const char *s;
	uint16_t port;

	if (cfg_map_fields(ld, map, "listen", "in listen", f, 4) != 0)
		return;
	if (f[0].val && (s = cfg_node_str(ld, f[0].val, "listen.address", "an IPv4 address"))) {
		struct in6_addr a6;

		if (inet_pton(AF_INET, s, &c->listen4.sin_addr) != 1)
			cfg_err_at(ld, &f[0].val->start_mark,
				   inet_pton(AF_INET6, s, &a6) == 1
				       ? "listen.address: %s is IPv6; put it in listen.address6"
				       : "listen.address: %s is not an IPv4 address",
				   cfg_quote(s, q, sizeof(q)));
	}
	if (f[1].val &&
	    (s = cfg_node_str(ld, f[1].val, "listen.address6", "an IPv6 address or off"))) {
		struct in_addr a4;

		if (strcmp(s, "off") == 0)
			c->listen6_on = false;
		else if (inet_pton(AF_INET6, s, &c->listen6.sin6_addr) != 1)
			cfg_err_at(ld, &f[1].val->start_mark,
				   inet_pton(AF_INET, s, &a4) == 1
				       ? "listen.address6: %s is IPv4; put it in listen.address "
					 "(address6 takes an IPv6 address or off)"
				       : "listen.address6: %s is not an IPv6 address or off",
				   cfg_quote(s, q, sizeof(q)));
		else if (IN6_IS_ADDR_V4MAPPED(&c->listen6.sin6_addr))
			/* An IPv6 socket cannot bind it (prism's listeners are
			 * IPv6-only): it is an IPv4 address in IPv6 syntax.
			 */
			cfg_err_at(ld, &f[1].val->start_mark,
				   "listen.address6: %s is an IPv4-mapped address; put the IPv4 "
				   "address in listen.address",
				   cfg_quote(s, q, sizeof(q)));
	}
	if (f[2].val && cfg_get_port(ld, f[2].val, "listen.port", &port) == 0) {
		c->listen4.sin_port = htons(port);
		c->listen6.sin6_port = htons(port);
	}
	if (f[3].val && (s = cfg_node_str(ld, f[3].val, "listen.workers", "auto or 1-1024"))) {
		unsigned long v;

		if (strcmp(s, "auto") != 0) {
			int rc = cfg_parse_uint(s, CFG_WORKERS_MAX, &v);

			if (rc == 0 && v > 0)
				c->workers = (int)v;
			else if (rc == -EINVAL)
				cfg_err_at(ld, &f[3].val->start_mark,
					   "listen.workers: %s is not auto or a number of threads "
					   "(1-1024)",
					   cfg_quote(s, q, sizeof(q)));
			else
				cfg_err_at(ld, &f[3].val->start_mark,
					   "listen.workers: " CFG_NUM_FMT
					   " out of range (1-1024, or auto)",
					   CFG_NUM_ARG(s));
		}
	}
}

/* Words nft's scanner reads as keywords where prism's scripts name the
 * table ("table inet NAME", "list set inet NAME ban4"): such a name makes
 * every script a syntax error. From nftables' src/scanner.l (1.0.6 and
 * later); sorted for bsearch.
 */
static const char *const nft_words[] = {
    "accept",  "add",	    "ah",	  "all",       "and",	     "arp",	 "bridge",
    "cgroup",  "chain",	    "chains",	  "comment",   "comp",	     "constant", "continue",
    "counter", "counters",  "cpu",	  "create",    "ct",	     "day",	 "dccp",
    "define",  "delete",    "describe",	  "destroy",   "device",     "devices",	 "dnat",
    "drop",    "dst",	    "dup",	  "dynamic",   "ecn",	     "element",	 "elements",
    "eq",      "esp",	    "ether",	  "exists",    "expires",    "export",	 "exthdr",
    "fib",     "flags",	    "flow",	  "flowtable", "flowtables", "flush",	 "frag",
    "fwd",     "ge",	    "geneve",	  "get",       "goto",	     "gre",	 "gretap",
    "gt",      "handle",    "hbh",	  "hook",      "hooks",	     "hour",	 "ibriport",
    "ibrname", "icmp",	    "icmpv6",	  "igmp",      "iif",	     "iifgroup", "iifname",
    "iiftype", "import",    "include",	  "index",     "inet",	     "insert",	 "interval",
    "ip",      "ip6",	    "ipsec",	  "jhash",     "jump",	     "last",	 "le",
    "limit",   "limits",    "list",	  "log",       "lshift",     "lt",	 "map",
    "maps",    "mark",	    "masquerade", "meta",      "meter",	     "meters",	 "mh",
    "missing", "monitor",   "ne",	  "netdev",    "nftrace",    "not",	 "notrack",
    "numgen",  "obriport",  "obrname",	  "offload",   "oif",	     "oifgroup", "oifname",
    "oiftype", "or",	    "osf",	  "pkttype",   "policy",     "position", "priority",
    "queue",   "quota",	    "quotas",	  "random",    "redefine",   "redirect", "reject",
    "rename",  "replace",   "reset",	  "return",    "rshift",     "rt",	 "rt0",
    "rt2",     "rtclassid", "rule",	  "ruleset",   "sctp",	     "secmark",	 "secmarks",
    "set",     "sets",	    "size",	  "skgid",     "skuid",	     "snat",	 "socket",
    "srh",     "symhash",   "synproxy",	  "synproxys", "table",	     "tables",	 "tcp",
    "th",      "time",	    "timeout",	  "tproxy",    "tunnel",     "type",	 "typeof",
    "udp",     "udplite",   "undefine",	  "update",    "vlan",	     "vmap",	 "vni",
    "vxlan",   "xor",	    "xt",
};

static int word_cmp(const void *key, const void *w)
{
	return strcmp(key, *(const char *const *)w);
}

int cfg_table_name_check(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	/* nft accepts more, but this set needs no quoting in an nft script. */
	bool ok = n > 0 && n <= CFG_TABLE_MAX && (isalpha((unsigned char)s[0]) || s[0] == '_');

	for (size_t i = 1; ok && i < n; i++)
		ok = isalnum((unsigned char)s[i]) || s[i] == '_';
	if (!ok)
		return CFG_TABLE_BAD;
	if (bsearch(s, nft_words, sizeof(nft_words) / sizeof(nft_words[0]), sizeof(nft_words[0]),
		    word_cmp))
		return CFG_TABLE_KEYWORD;
	return 0;
}

static void load_network(struct loader *ld, yaml_node_t *map)
{
	struct field f[] = {{.key = "manage"}, {.key = "table"}, {.key = "sysctls"}};
	const char *s;
	char q[QBUF];
	int bad;

	if (cfg_map_fields(ld, map, "network", "in network", f, 3) != 0)
		return;
	if (f[0].val)
		cfg_get_bool(ld, f[0].val, "network.manage", &ld->cfg->net_manage);
	if (f[2].val)
		cfg_get_bool(ld, f[2].val, "network.sysctls", &ld->cfg->manage_sysctls);
	if (!f[1].val ||
	    !(s = cfg_node_str(ld, f[1].val, "network.table", "an nftables table name")))
		return;
	bad = cfg_table_name_check(s);
	if (bad == CFG_TABLE_BAD) {
		cfg_err_at(ld, &f[1].val->start_mark,
			   "network.table: %s is not a valid table name (a letter or _, then up to "
			   "30 letters, digits or _)",
			   cfg_quote(s, q, sizeof(q)));
		return;
	}
	if (bad == CFG_TABLE_KEYWORD) {
		cfg_err_at(ld, &f[1].val->start_mark,
			   "network.table: %s is a keyword of nftables' language, which nft does "
			   "not read as a table name; choose another name",
			   cfg_quote(s, q, sizeof(q)));
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

	if (cfg_map_fields(ld, map, "timeouts", where, f, 2) != 0)
		return -EINVAL;
	if (f[0].val && cfg_get_duration(ld, f[0].val, "timeouts.connect", true, connect_ms) != 0)
		rc = -EINVAL;
	if (f[1].val && cfg_get_duration(ld, f[1].val, "timeouts.idle", false, idle_ms) != 0)
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
bool cfg_v6_covers_mapped(const struct addr_prefix *p)
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
void cfg_prefix_error(struct loader *ld, yaml_node_t *n, const char *key, const char *s,
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
		/* As addr_parse_prefix reads the length: no leading zero. */
		if (addr_parse_prefix(host, &p, &w) == 0 && (slash[1] != '0' || !slash[2]) &&
		    cfg_parse_uint(slash + 1, 128, &len) == 0 && (!v4 || len <= 32)) {
			unsigned bits = (unsigned)len + (v4 ? 96 : 0), i;
			bool mapped = addr_is_v4(&p.addr);

			for (i = bits; i < 128; i++)
				p.addr.s6_addr[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
			p.len = (uint8_t)bits;
			/* No hint that would be refused in turn: a prefix that
			 * covers the IPv4-mapped range is (see
			 * cfg_v6_covers_mapped).
			 */
			if (!v4 && cfg_v6_covers_mapped(&p)) {
				if (mapped && len <= 32)
					cfg_err_at(
					    ld, &n->start_mark,
					    "%s: %s has host bits set; the length of an "
					    "IPv4-mapped address counts IPv6 bits (an IPv4 /%lu "
					    "is /%lu): write IPv4 prefixes as IPv4",
					    key, s, len, len + 96);
				else
					cfg_err_at(ld, &n->start_mark, "%s: %s has host bits set",
						   key, s);
				return;
			}
			cfg_err_at(ld, &n->start_mark, "%s: %s has host bits set; did you mean %s?",
				   key, s, addr_fmt_prefix(&p, fix));
			return;
		}
	}
	cfg_err_at(ld, &n->start_mark, "%s: %s is not a valid address or prefix: %s", key,
		   cfg_quote(s, q, sizeof(q)), why);
}

/* Counts <n> more entries of <key> lists towards the file's bound, before
 * they are copied. Each app's claims are its edges times its ports, so
 * neither list can hold more than CFG_MAX_CLAIMS entries in all; an alias
 * is a copy per use, and without this a 1 MB file of one 65,536-address
 * edge list used by 3,000 apps took 8 GB before the claims were counted.
 * False (reported once per key) past it.
 */
static bool entries_take(struct loader *ld, size_t *count, bool *over, size_t n, int id,
			 const char *key)
{
	int rc = cfg_count_add(count, n, CFG_MAX_CLAIMS, over);

	if (rc == 1)
		cfg_err_at(ld, &cfg_node_get(ld, id)->start_mark,
			   "%s: more than %d entries of %s lists in all (a list used through an "
			   "alias counts each time); merge them into prefixes or ranges",
			   key, CFG_MAX_CLAIMS, key);
	return rc == 0;
}

static int load_edges(struct loader *ld, struct cfg_app *app, struct app_src *src, int id)
{
	const char *expect = "an address or prefix";
	yaml_node_item_t one, *items;
	size_t i, n;
	int rc = 0;

	if (cfg_node_items(ld, id, "edge", expect, "address or prefix", &one, &items, &n) != 0)
		return -EINVAL;
	if (!entries_take(ld, &ld->n_edge_entries, &ld->over_edges, n, id, "edge"))
		return -EINVAL;
	app->edges = calloc(n, sizeof(*app->edges));
	src->edge_marks = calloc(n, sizeof(*src->edge_marks));
	if (!app->edges || !src->edge_marks) {
		ld->oom = true;
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		yaml_node_t *e = cfg_node_get(ld, items[i]);
		struct addr_prefix p;
		const char *s = cfg_node_str(ld, e, "edge", expect), *why = "";
		char buf[ADDR_STRLEN];

		if (!s) {
			rc = -EINVAL;
			continue;
		}
		if (addr_parse_prefix(s, &p, &why) != 0) {
			cfg_prefix_error(ld, e, "edge", s, why);
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && !ld->cfg->listen6_on) {
			cfg_err_at(ld, &e->start_mark,
				   "edge: %s is IPv6 but listen.address6 is off (IPv6 is disabled)",
				   addr_fmt_prefix(&p, buf));
			rc = -EINVAL;
			continue;
		}
		if (!addr_is_v4(&p.addr) && cfg_v6_covers_mapped(&p)) {
			/* Routing keeps IPv4 as ::ffff:a.b.c.d, so such a prefix
			 * would also claim every IPv4 destination.
			 */
			cfg_err_at(ld, &e->start_mark,
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

int cfg_parse_port_range(struct loader *ld, yaml_node_t *n, const char *s, const char *key,
			 const char *what, uint16_t *lo_out, uint16_t *hi_out, bool *range)
{
	const char *dash = strchr(s, '-');
	unsigned long lo = 0, hi = 0;
	char q[QBUF], lo_s[16];
	int rc1, rc2;

	if (!dash) {
		rc1 = rc2 = cfg_parse_uint(s, 65535, &lo);
		hi = lo;
	} else if (dash - s < (ptrdiff_t)sizeof(lo_s)) {
		memcpy(lo_s, s, (size_t)(dash - s));
		lo_s[dash - s] = '\0';
		rc1 = cfg_parse_uint(lo_s, 65535, &lo);
		rc2 = cfg_parse_uint(dash + 1, 65535, &hi);
	} else {
		rc1 = rc2 = -EINVAL;
	}
	if (rc1 == -EINVAL || rc2 == -EINVAL) {
		cfg_err_at(ld, &n->start_mark, "%s: %s is not %s", key, cfg_quote(s, q, sizeof(q)),
			   what);
		return -EINVAL;
	}
	if (rc1 == -ERANGE || lo == 0 || rc2 == -ERANGE || hi == 0) {
		const char *bad = rc1 == -ERANGE || lo == 0 ? (dash ? lo_s : s) : dash + 1;

		cfg_err_at(ld, &n->start_mark, "%s: port " CFG_NUM_FMT " out of range (1-65535)",
			   key, CFG_NUM_ARG(bad));
		return -EINVAL;
	}
	if (lo > hi) {
		cfg_err_at(ld, &n->start_mark,
			   "%s: range %lu-%lu is reversed (did you mean %lu-%lu?)", key, lo, hi, hi,
			   lo);
		return -EINVAL;
	}
	*lo_out = (uint16_t)lo;
	*hi_out = (uint16_t)hi;
	*range = dash != NULL;
	return 0;
}

/* One element of `ports`: 22, "8000-8999" or "*". */
static int parse_range(struct loader *ld, yaml_node_t *n, struct cfg_range *r)
{
	const char *s = cfg_node_str(ld, n, "ports", "a port, a range \"LO-HI\" or \"*\"");
	bool range;

	if (!s)
		return -EINVAL;
	if (strcmp(s, "*") == 0) {
		r->lo = 1;
		r->hi = 65535;
		return 0;
	}
	return cfg_parse_port_range(ld, n, s, "ports",
				    "a port, a range \"LO-HI\" or \"*\" (e.g. 22, \"8000-8999\")",
				    &r->lo, &r->hi, &range);
}

static int load_ports(struct loader *ld, struct cfg_app *app, int id)
{
	yaml_node_item_t one, *items;
	size_t i, n;
	int rc = 0;

	if (cfg_node_items(ld, id, "ports", "a port or range", "port or range", &one, &items, &n) !=
	    0)
		return -EINVAL;
	if (!entries_take(ld, &ld->n_port_entries, &ld->over_ports, n, id, "ports"))
		return -EINVAL;
	app->ports = calloc(n, sizeof(*app->ports));
	if (!app->ports) {
		ld->oom = true;
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		if (parse_range(ld, cfg_node_get(ld, items[i]), &app->ports[app->n_ports]) == 0)
			app->n_ports++;
		else
			rc = -EINVAL;
	}
	return rc;
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
		cfg_err_at(ld, &map->start_mark,
			   "apps: each app is a mapping (name, edge, ports, origins, ...), got %s",
			   cfg_node_kind(map));
		return;
	}
	/* Name the app in messages by its name when it has a usable one. */
	snprintf(label, sizeof(label), "app #%zu", idx + 1);
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		yaml_node_t *k = cfg_node_get(ld, p->key), *val = cfg_node_get(ld, p->value);

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
	cfg_map_fields(ld, map, "app", where, f, F_N);

	if (f[F_NAME].val) {
		const char *s = cfg_node_str(ld, f[F_NAME].val, "name", "an app name");
		char q[QBUF];

		if (s && !name_ok(s)) {
			cfg_err_at(
			    ld, &f[F_NAME].val->start_mark,
			    "name: %s is not a valid app name (1-64 letters, digits, '_', '.' "
			    "or '-')",
			    cfg_quote(s, q, sizeof(q)));
		} else if (s) {
			/* Duplicates are found once all apps are in (check_names). */
			src->name_mark = f[F_NAME].val->start_mark;
			app->name = strdup(s);
			if (!app->name)
				ld->oom = true;
		}
	}
	if (f[F_PROTO].val && (v = cfg_get_word(ld, f[F_PROTO].val, "protocol", protos)) >= 0)
		app->protocol = (enum cfg_proto)v;
	if (f[F_PP].val && (v = cfg_get_word(ld, f[F_PP].val, "proxy_protocol", pps)) >= 0)
		app->proxy_protocol = v == 0 ? PP_OFF : v == 1 ? PP_V1 : PP_V2;
	if (f[F_EDGE].val)
		load_edges(ld, app, src, f[F_EDGE].id);
	else
		cfg_err_at(ld, &map->start_mark,
			   "%s: missing required key \"edge\" (the addresses "
			   "it serves, e.g. 192.0.2.10 or 192.0.2.0/24)",
			   label);
	if (f[F_PORTS].val)
		ports_ok = load_ports(ld, app, f[F_PORTS].id) == 0;
	else
		cfg_err_at(ld, &map->start_mark,
			   "%s: missing required key \"ports\" (e.g. 22, "
			   "\"8000-8999\", \"*\" or a list)",
			   label);
	if (f[F_ORIGINS].val)
		cfg_load_origins(ld, app, f[F_ORIGINS].id, label, ports_ok);
	else
		cfg_err_at(ld, &map->start_mark,
			   "%s: missing required key \"origins\" (where to "
			   "relay, e.g. 198.51.100.10:22)",
			   label);
	if (!f[F_NAME].val)
		cfg_err_at(ld, &map->start_mark, "%s: missing required key \"name\"", label);
	snprintf(where, sizeof(where), "in timeouts of %s", label);
	if (f[F_TIMEOUTS].val)
		load_timeouts(ld, f[F_TIMEOUTS].val, where, &app->connect_timeout_ms,
			      &app->idle_timeout_ms);
	if (f[F_BALANCE].val && (v = cfg_get_word(ld, f[F_BALANCE].val, "balance", lbs)) >= 0)
		app->balance = (enum cfg_balance)v;
	if (f[F_RETRIES].val)
		cfg_get_uint(ld, f[F_RETRIES].val, "retries", 0, CFG_RETRIES_MAX, &app->retries);
	if (f[F_HEALTH].val) {
		snprintf(where, sizeof(where), "in health_check of %s", label);
		cfg_load_health(ld, f[F_HEALTH].val, where, &app->health, &hc_port_given);
		/* Only a fixed port says where to check; the other modes
		 * depend on the port each client dials.
		 */
		for (i = 0; !hc_port_given && i < app->n_origins; i++) {
			const struct cfg_origin *o = &app->origins[i];

			if (o->port_mode == CFG_PORT_DIALED) {
				cfg_err_at(
				    ld, &f[F_HEALTH].mark,
				    "health_check: origins without a port need health_check.port "
				    "(%s is dialed on the port the client dialed, so there is no "
				    "one port to check)",
				    o->host);
				break;
			}
			if (o->port_mode == CFG_PORT_MAP) {
				cfg_err_at(
				    ld, &f[F_HEALTH].mark,
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
		cfg_load_passive(ld, f[F_PASSIVE].val, where, &app->passive);
	}
	if (f[F_DNS].val) {
		snprintf(where, sizeof(where), "in dns of %s", label);
		cfg_load_dns(ld, f[F_DNS].val, where, &app->dns_refresh_ms);
	}
	if (f[F_MAX_CONNS].val)
		cfg_get_uint(ld, f[F_MAX_CONNS].val, "max_conns", 0, CFG_CONNS_MAX,
			     &app->max_conns);
	if (f[F_PROTECTION].val)
		cfg_load_protection(ld, f[F_PROTECTION].val, label, &app->protection, NULL);
	src->ok = ld->n_errs + ld->n_dropped == errs_before && !ld->oom;
}

/* ---- names ---- */

static int name_idx_cmp(const void *a, const void *b, void *arg)
{
	const struct cfg_app *apps = arg;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	int r = strcmp(apps[i].name, apps[j].name);

	return r ? r : (i > j) - (i < j);
}

/* Reports every app whose name an earlier app has, at its name, and keeps
 * it out of the routing table. Sorting the indices by (name, position)
 * puts each name's first app at the head of its run: n log n, where a scan
 * of the earlier apps per app took 15 s for 65,536 apps.
 */
static void check_names(struct loader *ld)
{
	const struct cfg_app *apps = ld->cfg->apps;
	size_t *ix, n = 0, head = 0;

	ix = malloc((ld->cfg->n_apps ? ld->cfg->n_apps : 1) * sizeof(*ix));
	if (!ix) {
		ld->oom = true;
		return;
	}
	for (size_t i = 0; i < ld->cfg->n_apps; i++)
		if (apps[i].name)
			ix[n++] = i;
	qsort_r(ix, n, sizeof(*ix), name_idx_cmp, (void *)apps);
	for (size_t k = 1; k < n; k++) {
		if (strcmp(apps[ix[k]].name, apps[ix[head]].name) != 0) {
			head = k;
			continue;
		}
		cfg_err_at(ld, &ld->src[ix[k]].name_mark,
			   "duplicate app name \"%s\" (first at line %d)", apps[ix[k]].name,
			   apps[ix[head]].pos.line);
		ld->src[ix[k]].ok = false;
	}
	free(ix);
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

	/* Past a bound on edge or port entries, the apps that loaded are a
	 * fraction of the file: their overlaps would cost time (up to a
	 * million claims, rebuilt per conflict) and say little.
	 */
	if (ld->over_edges || ld->over_ports)
		return;
	for (a = 0; a < c->n_apps; a++)
		if (ld->src[a].ok) {
			total += c->apps[a].n_edges * c->apps[a].n_ports;
			if (total > CFG_MAX_CLAIMS)
				break;
		}
	if (total > CFG_MAX_CLAIMS) {
		cfg_err_at(ld, apps_mark,
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
		if (rc == -E2BIG) {
			cfg_err_at(
			    ld, apps_mark,
			    "apps: the routing table would hold more than %u port intervals: "
			    "an edge inside another app's prefix holds a copy of that app's "
			    "port ranges; merge the outer app's ports into fewer ranges, or "
			    "nest fewer apps inside it",
			    RT_MAX_ENTRIES);
			break;
		}
		if (rc != -EEXIST || cf.a >= n || cf.b >= n || cf.a == cf.b) {
			cfg_err_at(ld, apps_mark, "apps: cannot build the routing table: %s",
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
			cfg_err_at(
			    ld, &srcs[cf.b].mark,
			    "app \"%s\" overlaps app \"%s\" (line %zu): both claim %s %s with no "
			    "more specific winner",
			    c->apps[app_b].name, c->apps[app_a].name, srcs[cf.a].mark.line + 1,
			    addr_fmt_prefix(&claims[cf.b].prefix, pfx), ports);
		}
		if (k + 1 == CFG_MAX_REBUILDS) {
			/* Each search is a build (about 20 ms per 100,000
			 * claims), so it stops; say so rather than let these
			 * look like all there is.
			 */
			cfg_err_at(ld, apps_mark,
				   "apps: more overlaps may follow; prism stops looking after %d "
				   "conflicting claims (fix these and check again)",
				   CFG_MAX_REBUILDS);
			break;
		}
		memmove(&claims[cf.b], &claims[cf.b + 1], (n - cf.b - 1) * sizeof(*claims));
		memmove(&srcs[cf.b], &srcs[cf.b + 1], (n - cf.b - 1) * sizeof(*srcs));
		n--;
	}
out:
	free(claims);
	free(srcs);
}

/* ---- origins inside the edges ---- */

/* One origin address and the ports it is dialed on: sorted, disjoint
 * ranges (the app's own ports, merged, for an origin without a port, or
 * the origin's one range). An entry per address, not per address and
 * range: 1,000 addresses dialed on 10,000 port entries were 10 million
 * entries (1.2 GB) before.
 */
struct loop_org {
	addr_u128 key;
	const struct cfg_origin *o;
	size_t app; /* whose origin */
	bool told;
};

/* An app's ports, sorted and merged (for its origins without a port). */
struct loop_ports {
	struct cfg_range *r;
	size_t n;
};

struct loop_walk {
	struct loader *ld;
	struct loop_org *v;
	size_t n;
	struct loop_ports *merged; /* per app, built for those that need it */
	bool names;		   /* host names' resolved addresses: warnings, not errors */
};

static int loop_org_cmp(const void *a, const void *b)
{
	const struct loop_org *x = a, *y = b;

	return x->key < y->key ? -1 : x->key > y->key;
}

static int range_lo_cmp(const void *a, const void *b)
{
	const struct cfg_range *x = a, *y = b;

	return (x->lo > y->lo) - (x->lo < y->lo);
}

/* The lowest port of [<lo>, <hi>] that <x> is dialed on, or 0. */
static uint16_t loop_port(const struct loop_walk *w, const struct loop_org *x, uint16_t lo,
			  uint16_t hi)
{
	struct cfg_range one;
	const struct cfg_range *r = &one;
	size_t a = 0, b = 1, n = 1;

	if (x->o->port_mode == CFG_PORT_DIALED) {
		r = w->merged[x->app].r;
		b = n = w->merged[x->app].n;
	} else {
		cfg_dial_range(&w->ld->cfg->apps[x->app], x->o, 0, &one.lo, &one.hi);
	}
	while (a < b) {
		size_t mid = a + (b - a) / 2;

		if (r[mid].hi < lo)
			a = mid + 1;
		else
			b = mid;
	}
	if (a == n || r[a].lo > hi)
		return 0;
	return r[a].lo > lo ? r[a].lo : lo;
}

/* For each element of the claims' cover, the origins dialed on a claimed
 * (address, port) of it.
 */
static int loop_elem(const struct rt_elem *e, void *arg)
{
	struct loop_walk *w = arg;
	addr_u128 lo = addr_key(&e->lo), hi = addr_key(&e->hi);
	size_t a = 0, b = w->n;

	while (a < b) {
		size_t mid = a + (b - a) / 2;

		if (w->v[mid].key < lo)
			a = mid + 1;
		else
			b = mid;
	}
	for (; a < w->n && w->v[a].key <= hi; a++) {
		struct loop_org *x = &w->v[a];
		uint16_t plo = x->told ? 0 : loop_port(w, x, e->plo, e->phi);
		const struct cfg *c = w->ld->cfg;
		yaml_mark_t m = {0, 0, 0};
		struct in6_addr ad;
		char as[ADDR_STRLEN];
		uint32_t app;

		if (!plo)
			continue;
		addr_from_key(x->key, &ad);
		app = rt_lookup(c->rt, &ad, plo);
		/* Once per origin address, not per port range: the address's
		 * entries are a run of equal keys, which may begin before <a>.
		 */
		size_t k = a;

		while (k > 0 && w->v[k - 1].key == x->key)
			k--;
		for (; k < w->n && w->v[k].key == x->key; k++)
			if (w->v[k].o == x->o)
				w->v[k].told = true;
		if (w->names) {
			/* Names change: prism checks each address again when it
			 * picks an origin (conn.c, origin_loops).
			 */
			cfg_warn_at(w->ld, &x->o->pos,
				    "origin %s resolves to %s, which app \"%s\" claims on port %u: "
				    "prism would relay to itself, so it will not dial that address "
				    "there; use an origin outside the edges",
				    x->o->host, addr_fmt(&ad, as),
				    app < c->n_apps ? c->apps[app].name : "?", plo);
			continue;
		}
		m.line = (size_t)x->o->pos.line - 1;
		m.column = (size_t)x->o->pos.col - 1;
		cfg_err_at(
		    w->ld, &m,
		    "origins: %s is dialed on port %u, which app \"%s\" claims at that address: "
		    "prism would relay to itself (the edge's route makes the address local); "
		    "use an origin outside the edges",
		    addr_fmt(&ad, as), plo, app < c->n_apps ? c->apps[app].name : "?");
	}
	return 0;
}

bool cfg_dial_claimed(const struct cfg *c, const struct cfg_app *app, const struct cfg_origin *o,
		      const struct in6_addr *a)
{
	uint16_t lo, hi;

	for (size_t r = 0; r < cfg_dial_ranges(app, o); r++) {
		cfg_dial_range(app, o, r, &lo, &hi);
		if (rt_first_claimed(c->rt, a, lo, hi))
			return true;
	}
	return false;
}

/* Warns about an origin address inside an edge prefix on dial ports that
 * no claim holds (one that a claim holds is refused, or for a name warned
 * about, by check_origin_loops). The edge's local route makes every address
 * of the prefix one of this host's: prism would dial this host there, not
 * the machine the address may name elsewhere, and only a local service
 * bound to that exact address would answer (prism's table drops packets to
 * ports no app claims). Once per origin address; with <names>, for the
 * addresses host names resolved to at load, else for IP origins.
 */
static void check_origins_in_edges(struct loader *ld, bool names)
{
	const struct cfg *c = ld->cfg;

	if (!c->rt || !c->net_manage)
		return;
	for (size_t a = 0; a < c->n_apps; a++) {
		const struct cfg_app *app = &c->apps[a];

		for (size_t i = 0; ld->src[a].ok && i < app->n_origins; i++) {
			const struct cfg_origin *o = &app->origins[i];

			for (size_t j = 0; o->is_name == names && j < o->n_addrs; j++) {
				struct in6_addr ad;
				uint16_t unused, at;
				char as[ADDR_STRLEN];
				uint32_t owner;

				addr_from_sa((const struct sockaddr *)&o->addrs[j], &ad, &unused);
				at = rt_first_claimed(c->rt, &ad, 1, 65535);
				if (!at)
					continue;
				if (cfg_dial_claimed(c, app, o, &ad))
					continue;
				owner = rt_lookup(c->rt, &ad, at);
				cfg_warn_at(
				    ld, &o->pos,
				    "origin %s%s%s%s is inside the edges of app \"%s\": their "
				    "local route makes it an address of this host, so prism "
				    "would dial this host there, where only a service bound to "
				    "that exact address answers; use an origin outside the "
				    "edges",
				    o->is_name ? o->host : addr_fmt(&ad, as),
				    o->is_name ? " resolves to " : "",
				    o->is_name ? addr_fmt(&ad, as) : "",
				    o->is_name ? ", which" : "",
				    owner < c->n_apps ? c->apps[owner].name : "?");
			}
		}
	}
}

/* Refuses an IP origin that prism would dial on an (address, port) that
 * a claim holds: the edge's local route and the nft rules send such a
 * connection back to prism, which relays it again until it runs out of
 * file descriptors. With <names>, warns instead about the addresses host
 * names resolved to at load (they may change; see origin_loops in conn.c).
 */
static void check_origin_loops(struct loader *ld, bool names)
{
	const struct cfg *c = ld->cfg;
	struct loop_walk w = {.ld = ld, .names = names};
	size_t cap = 0, a, i, j, r;

	/* Unmanaged, the operator's own routes and rules decide. */
	if (!c->rt || !c->net_manage)
		return;
	for (a = 0; a < c->n_apps; a++)
		for (i = 0; ld->src[a].ok && i < c->apps[a].n_origins; i++)
			if (c->apps[a].origins[i].is_name == names)
				cap += c->apps[a].origins[i].n_addrs;
	if (!cap)
		return;
	w.v = calloc(cap, sizeof(*w.v));
	w.merged = calloc(c->n_apps, sizeof(*w.merged));
	if (!w.v || !w.merged)
		goto oom;
	for (a = 0; a < c->n_apps; a++) {
		const struct cfg_app *app = &c->apps[a];

		for (i = 0; ld->src[a].ok && i < app->n_origins; i++) {
			const struct cfg_origin *o = &app->origins[i];

			if (o->is_name != names)
				continue;
			if (o->port_mode == CFG_PORT_DIALED && !w.merged[a].r) {
				struct cfg_range *m = malloc(app->n_ports * sizeof(*m));
				size_t n = 0;

				if (!m)
					goto oom;
				memcpy(m, app->ports, app->n_ports * sizeof(*m));
				qsort(m, app->n_ports, sizeof(*m), range_lo_cmp);
				for (r = 0; r < app->n_ports; r++)
					if (n && m[r].lo <= m[n - 1].hi + 1u) {
						if (m[r].hi > m[n - 1].hi)
							m[n - 1].hi = m[r].hi;
					} else {
						m[n++] = m[r];
					}
				w.merged[a] = (struct loop_ports){m, n};
			}
			for (j = 0; j < o->n_addrs; j++) {
				struct in6_addr ad;
				uint16_t port;

				addr_from_sa((const struct sockaddr *)&o->addrs[j], &ad, &port);
				w.v[w.n++] =
				    (struct loop_org){.key = addr_key(&ad), .o = o, .app = a};
			}
		}
	}
	qsort(w.v, w.n, sizeof(*w.v), loop_org_cmp);
	rt_cover(c->rt, 1, loop_elem, &w);
	rt_cover(c->rt, 0, loop_elem, &w);
	goto out;
oom:
	/* The names' check only warns, and prism checks them again when it
	 * picks an origin: not worth refusing the config for.
	 */
	if (!names)
		ld->oom = true;
out:
	for (a = 0; w.merged && a < c->n_apps; a++)
		free(w.merged[a].r);
	free(w.merged);
	free(w.v);
}

/* ---- document ---- */

static void load_apps(struct loader *ld, yaml_node_t *seq)
{
	struct cfg *c = ld->cfg;
	yaml_node_item_t *it;
	unsigned char *seen;
	size_t n, i;

	if (cfg_node_is_null(seq))
		goto routes;
	if (seq->type != YAML_SEQUENCE_NODE) {
		cfg_err_at(ld, &seq->start_mark, "apps: expected a list of apps, got %s",
			   cfg_node_kind(seq));
		return;
	}
	n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	if (n == 0)
		goto routes;
	/* Every app claims at least one (edge, port range): more apps than
	 * claims can never load, and each would be allocated first.
	 */
	if (n > CFG_MAX_CLAIMS) {
		cfg_err_at(ld, &seq->start_mark,
			   "apps: %zu apps, more than the %d (edge, port range) combinations a "
			   "config may claim in all",
			   n, CFG_MAX_CLAIMS);
		return;
	}
	c->apps = calloc(n, sizeof(*c->apps));
	ld->src = calloc(n, sizeof(*ld->src));
	seen = calloc((size_t)(ld->doc->nodes.top - ld->doc->nodes.start) + 1, 1);
	if (!c->apps || !ld->src || !seen) {
		free(seen);
		ld->oom = true;
		return;
	}
	c->n_apps = n;
	ld->n_src = n;
	for (i = 0, it = seq->data.sequence.items.start; i < n; i++, it++) {
		/* An alias of an app above would load it again (a copy per
		 * use, payloads and all) to fail on its name.
		 */
		if (*it >= 1 && seen[*it]) {
			cfg_err_at(
			    ld, &seq->start_mark,
			    "apps: app %zu is an alias of an app above it; list each app once",
			    i + 1);
			continue;
		}
		if (*it >= 1)
			seen[*it] = 1;
		load_app(ld, i, cfg_node_get(ld, *it));
	}
	free(seen);
	check_names(ld);
routes:
	build_routes(ld, &seq->start_mark);
	check_origin_loops(ld, false);
	check_origins_in_edges(ld, false);
}

/* Explicit tags: prism reads every value itself (docs/config.md, "Value
 * syntax"), so a tag could only mislead: `send: !!binary UElORw0K` would
 * send the base64 text, not the bytes it encodes. The core schema's own
 * tags (what an untagged node gets, and !!str, !!int and the like, which
 * change nothing here) pass; any other is refused, once per tag.
 */
static void check_tags(struct loader *ld, yaml_document_t *doc)
{
	static const char *const core[] = {YAML_STR_TAG,  YAML_INT_TAG,	 YAML_FLOAT_TAG,
					   YAML_BOOL_TAG, YAML_NULL_TAG, YAML_SEQ_TAG,
					   YAML_MAP_TAG,  NULL};
	const char *said[8] = {NULL};
	size_t n_said = 0;

	for (yaml_node_t *n = doc->nodes.start; n < doc->nodes.top; n++) {
		const char *tag = (const char *)n->tag, *const *c = core;
		bool seen = false;

		while (*c && tag && strcmp(*c, tag) != 0)
			c++;
		if (!tag || *c)
			continue;
		for (size_t i = 0; i < n_said; i++)
			seen |= strcmp(said[i], tag) == 0;
		if (seen)
			continue;
		if (n_said < sizeof(said) / sizeof(said[0]))
			said[n_said++] = tag;
		/* As it was most likely written: !!binary, not its URI. */
		bool core_ns = strncmp(tag, "tag:yaml.org,2002:", 18) == 0;

		cfg_err_at(ld, &n->start_mark,
			   "YAML tag %s%s is not supported: prism reads every value as written "
			   "(remove the tag; for bytes, use a double-quoted string with \\x "
			   "escapes)",
			   core_ns ? "!!" : "", core_ns ? tag + 18 : tag);
	}
}

static void load_root(struct loader *ld, yaml_node_t *root)
{
	struct field f[] = {{.key = "listen"},	       {.key = "network"},   {.key = "timeouts"},
			    {.key = "shutdown_grace"}, {.key = "apps"},	     {.key = "log_level"},
			    {.key = "log_buffer"},     {.key = "protection"}};
	enum {
		F_LISTEN,
		F_NETWORK,
		F_TIMEOUTS,
		F_GRACE,
		F_APPS,
		F_LOG,
		F_LOG_BUFFER,
		F_PROTECTION,
		F_N
	};
	static const yaml_mark_t start = {0, 0, 0};

	if (!root || cfg_node_is_null(root)) {
		build_routes(ld, &start);
		return;
	}
	if (root->type != YAML_MAPPING_NODE) {
		cfg_err_at(ld, &root->start_mark,
			   "the top level must be a mapping of keys (listen, network, timeouts, "
			   "shutdown_grace, apps, log_level, log_buffer, protection), got %s",
			   cfg_node_kind(root));
		return;
	}
	cfg_map_fields(ld, root, "config", "at top level", f, F_N);
	if (f[F_LOG].val)
		load_log_level(ld, f[F_LOG].val);
	if (f[F_LOG_BUFFER].val)
		load_log_buffer(ld, f[F_LOG_BUFFER].val);
	/* Before the apps: their defaults and the IPv6 check depend on these. */
	if (f[F_LISTEN].val)
		load_listen(ld, f[F_LISTEN].val);
	if (f[F_NETWORK].val)
		load_network(ld, f[F_NETWORK].val);
	if (f[F_TIMEOUTS].val)
		load_timeouts(ld, f[F_TIMEOUTS].val, "in timeouts", &ld->cfg->connect_timeout_ms,
			      &ld->cfg->idle_timeout_ms);
	if (f[F_GRACE].val)
		cfg_get_duration(ld, f[F_GRACE].val, "shutdown_grace", false,
				 &ld->cfg->shutdown_grace_ms);
	/* Before the apps: each app's protection starts as a copy of it. */
	if (f[F_PROTECTION].val)
		cfg_load_protection(ld, f[F_PROTECTION].val, NULL, &ld->cfg->protection,
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

	/* libyaml's composer fails without setting an error only when an
	 * allocation of its own failed (yaml_strdup of a tag, say).
	 */
	if (p->error == YAML_MEMORY_ERROR || p->error == YAML_NO_ERROR) {
		ld->oom = true;
		return;
	}
	if (p->error == YAML_READER_ERROR) {
		/* The reader only knows a byte offset: find its line, and
		 * its column in characters as the other messages count them
		 * (a UTF-8 continuation byte is no character of its own),
		 * with libyaml's line breaks (CR, CR LF, LF, NEL, LS, PS)
		 * and no column for a byte order mark.
		 */
		const unsigned char *u = (const unsigned char *)buf;
		size_t i = len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
		size_t end = p->problem_offset < len ? p->problem_offset : len;
		yaml_mark_t m = {0, 0, 0};

		for (; i < end; i++) {
			size_t brk = u[i] == '\n'   ? 1
				     : u[i] == '\r' ? (i + 1 < end && u[i + 1] == '\n' ? 2 : 1)
				     : u[i] == 0xc2 && i + 1 < end && u[i + 1] == 0x85 ? 2
				     : u[i] == 0xe2 && i + 2 < end && u[i + 1] == 0x80 &&
					     (u[i + 2] == 0xa8 || u[i + 2] == 0xa9)
					 ? 3
					 : 0;

			if (brk) {
				m.line++;
				m.column = 0;
				i += brk - 1;
			} else if ((u[i] & 0xC0) != 0x80) {
				m.column++;
			}
		}
		cfg_err_at(ld, &m, "not valid text: %s (the file must be UTF-8)", what);
		return;
	}
	if (p->context)
		cfg_err_at(ld, &p->problem_mark,
			   "YAML syntax error: %s (%s at line %zu, column %zu)", what, p->context,
			   p->context_mark.line + 1, p->context_mark.column + 1);
	else
		cfg_err_at(ld, &p->problem_mark, "YAML syntax error: %s", what);
}

/* How deep flow collections ([...], {...}) may nest. The schema needs 5
 * levels; libyaml's scanner does work per token in proportion to the flow
 * depth, so a 2 MB file of nested brackets ran for over 11 minutes (the
 * file may be 32 MiB). Block collections are not limited: each level
 * takes an indentation step, and their cost stays linear.
 */
#define CFG_DEPTH_MAX 64

/* Refuses a file whose flow collections nest deeper than CFG_DEPTH_MAX
 * before libyaml composes it: a pass over its events that stops at the
 * first level too deep, so the scanner never works at a depth beyond it
 * (its look-ahead past that point is bounded by YAML's 1,024 characters of
 * a simple key). A file with no more opening brackets than that needs no
 * pass. A flow collection holds only flow collections, so its end events
 * are the ones met while the flow depth is above 0. Returns true when the
 * file may be loaded; a syntax error is left for the load to report.
 */
static bool depth_ok(struct loader *ld, const char *buf, size_t len)
{
	yaml_parser_t p;
	yaml_event_t ev;
	size_t opening = 0;
	int depth = 0;
	bool ok = true;

	for (size_t i = 0; i < len && opening <= CFG_DEPTH_MAX; i++)
		opening += buf[i] == '[' || buf[i] == '{';
	if (opening <= CFG_DEPTH_MAX)
		return true;
	if (!yaml_parser_initialize(&p)) {
		ld->oom = true;
		return false;
	}
	yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
	for (;;) {
		if (!yaml_parser_parse(&p, &ev)) {
			/* The load says what is wrong, unless it is memory. */
			if (p.error == YAML_MEMORY_ERROR) {
				ld->oom = true;
				ok = false;
			}
			break;
		}
		if ((ev.type == YAML_SEQUENCE_START_EVENT &&
		     ev.data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE) ||
		    (ev.type == YAML_MAPPING_START_EVENT &&
		     ev.data.mapping_start.style == YAML_FLOW_MAPPING_STYLE)) {
			if (++depth > CFG_DEPTH_MAX) {
				cfg_err_at(
				    ld, &ev.start_mark,
				    "[ ] and { } nested more than %d levels deep here (prism's "
				    "settings need 5)",
				    CFG_DEPTH_MAX);
				ok = false;
			}
		} else if (depth > 0 && (ev.type == YAML_SEQUENCE_END_EVENT ||
					 ev.type == YAML_MAPPING_END_EVENT)) {
			depth--;
		}
		bool end = ev.type == YAML_STREAM_END_EVENT;

		yaml_event_delete(&ev);
		if (end || !ok)
			break;
	}
	yaml_parser_delete(&p);
	return ok;
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
	c->log_buffer = LOG_BUFFER_DEFAULT;
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
			cfg_origin_clear(&a->origins[j]);
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
	return cfg_load_buf_flags(name, buf, len, 0, out, errors);
}

int cfg_load_buf_flags(const char *name, const char *buf, size_t len, unsigned flags,
		       struct cfg **out, char **errors)
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
	if (!depth_ok(&ld, buf, len))
		goto out;
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
				cfg_err_at(
				    &ld, &doc2.start_mark,
				    "a second YAML document starts here; prism reads one (remove "
				    "the \"---\" and what follows, or merge the two)");
			yaml_document_delete(&doc2);
		}
	}
	check_tags(&ld, &doc);
	load_root(&ld, root);
	/* Only for a config that will be used: resolving takes time. */
	if (!ld.n_errs && !ld.n_dropped && !ld.oom && !(flags & CFG_NO_RESOLVE)) {
		cfg_resolve_names(&ld);
		check_origin_loops(&ld, true);
		check_origins_in_edges(&ld, true);
	}
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
		if (ld.warns_dropped) {
			char *w = NULL;

			if (asprintf(&w, "%s%s: warning: %zu more warnings not shown\n",
				     ld.warns ? ld.warns : "", ld.name, ld.warns_dropped) != -1) {
				free(ld.warns);
				ld.warns = w;
			}
		}
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
			/* One byte past the cap tells a file of exactly the cap
			 * from a longer one.
			 */
			size_t ncap =
			    cap * 2 < (size_t)CFG_MAX_FILE + 1 ? cap * 2 : CFG_MAX_FILE + 1;

			if (cap > CFG_MAX_FILE) {
				rc = -EFBIG;
				goto out;
			}
			nb = realloc(buf, ncap);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
			cap = ncap;
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
	return cfg_load_flags(path, 0, out, errors);
}

int cfg_load_flags(const char *path, unsigned flags, struct cfg **out, char **errors)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	if (errors)
		*errors = NULL;
	rc = read_file(path, &buf, &len);
	if (rc != 0) {
		if (errors && (rc == -EFBIG ? asprintf(errors,
						       "%s: cannot read: larger than %d MiB, the "
						       "most a config may be\n",
						       path, CFG_MAX_FILE >> 20)
					    : asprintf(errors, "%s: cannot read: %s\n", path,
						       strerror(-rc))) == -1)
			*errors = NULL;
		return rc;
	}
	rc = cfg_load_buf_flags(path, buf, len, flags, out, errors);
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

/* cfg.h - the configuration: YAML file -> immutable, reference-counted snapshot.
 *
 * cfg_load parses with libyaml, checks every key and value, builds the
 * routing table, and reports every problem it finds (not just the first) as
 * "FILE:LINE:COL: message" lines. A loaded snapshot is never modified; a
 * reload (later) builds a new one and swaps it whole.
 */
#ifndef PRISM_CFG_H
#define PRISM_CFG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "pp.h"

struct rt;

struct cfg_pos {
	int line, col; /* 1-based, as printed in messages */
};

struct cfg_range {
	uint16_t lo, hi; /* inclusive */
};

enum cfg_port_mode {
	CFG_PORT_DIALED = 0, /* no port: the port the client dialed */
	CFG_PORT_FIXED,	     /* one port */
	CFG_PORT_MAP,	     /* a range, mapped by offset from the app's range */
};

struct cfg_origin {
	char *host;			/* as written: an address or a DNS name */
	bool is_name;			/* host is a DNS name (re-resolved at run time) */
	struct sockaddr_storage *addrs; /* resolved at load; port 0; may be empty for a
					 * name that did not resolve (warned) */
	size_t n_addrs;
	enum cfg_port_mode port_mode;
	uint16_t port;	 /* FIXED: the port; MAP: the first of the range */
	uint32_t weight; /* default 1 */
	bool backup;	 /* used only when no primary is usable */
	struct cfg_pos pos;
};

enum cfg_balance {
	CFG_LB_ROUND_ROBIN = 0, /* smooth weighted round robin */
	CFG_LB_LEAST_CONN,
	CFG_LB_MAGLEV,
	CFG_LB_RANDOM_TWO,
	CFG_LB_SOURCE_HASH,
};

struct cfg_health {
	bool on;	      /* health_check present */
	uint32_t interval_ms; /* default 2s */
	uint32_t timeout_ms;  /* default 1s */
	uint32_t rise, fall;  /* defaults 2, 3 */
	uint16_t port;	      /* 0: the origin's own port */
	char *send;	      /* NULL: connect-only check */
	size_t send_len;
	char *expect; /* reply prefix, NULL: none */
	size_t expect_len;
};

struct cfg_passive {
	uint32_t failures;    /* consecutive connect failures; 0 = off; default 3 */
	uint32_t cooldown_ms; /* default 10s */
};

enum cfg_proto {
	CFG_PROTO_TCP = 0,
};

/* A rate: <n> events per <per_ms> (from "200/s", "30/m"). n 0 = off. */
struct cfg_rate {
	uint32_t n;
	uint32_t per_ms; /* 1000 or 60000 */
};

enum cfg_unserved {
	CFG_UNSERVED_DROP = 0,
	CFG_UNSERVED_REJECT,
};

/* DDoS protection, global and per app (an app's block starts as a copy of
 * the global one and overrides the keys it sets).
 */
struct cfg_protection {
	enum cfg_unserved unserved; /* global only: packets to served prefixes on
				     * ports no app claims */
	struct addr_prefix *deny;   /* dropped in nftables */
	size_t n_deny;
	struct addr_prefix *allow; /* if non-empty, only these may connect */
	size_t n_allow;
	struct cfg_rate syn_rate_per_source;  /* nftables, per source address */
	uint32_t max_conns_per_source;	      /* concurrent, prism; 0 = off */
	struct cfg_rate conn_rate_per_source; /* token bucket, prism */
	uint32_t ban_after;		      /* violations within ban_window ... */
	uint32_t ban_window_ms;		      /* ... ban the source for ban_duration */
	uint32_t ban_duration_ms;	      /* ban_after 0 = no bans */
	uint32_t first_byte_timeout_ms;	      /* 0 = off */
	bool set_deny, set_allow;	      /* the app's block set these lists */
};

/* A named origin's addresses kept, at load and at each refresh (dns.c). */
#define CFG_NAME_ADDRS_MAX 64

/* Cuts <n> resolved addresses <v> to CFG_NAME_ADDRS_MAX, and returns how
 * many remain. Past that, the lowest (IPv4 first, then by bytes), not the
 * first: a server that rotates a longer answer would otherwise change the
 * set at every refresh, and with it the health and balancing state.
 */
size_t cfg_addrs_cut(struct sockaddr_storage *v, size_t n);

/* apps[].retries: at most this many origins after the first. */
#define CFG_RETRIES_MAX 16

struct cfg_app {
	char *name;
	enum cfg_proto protocol;
	struct addr_prefix *edges;
	size_t n_edges;
	struct cfg_range *ports;
	size_t n_ports;
	struct cfg_origin *origins;
	size_t n_origins;
	enum pp_version proxy_protocol;
	uint32_t connect_timeout_ms; /* app's own, or the global default */
	uint32_t idle_timeout_ms;
	struct cfg_pos pos; /* of the app's mapping in the file */

	enum cfg_balance balance; /* default round_robin */
	uint32_t retries;	  /* connect attempts on other origins; default 2 */
	struct cfg_health health;
	struct cfg_passive passive;
	uint32_t dns_refresh_ms; /* default 30s */

	struct cfg_protection protection; /* resolved: global + the app's overrides */
	uint32_t max_conns;		  /* apps[].max_conns; 0 = no app limit */
};

/* The ports origin <o> of <app> may be dialed on, as ranges: one for a
 * fixed port or a mapped range, the app's own for an origin without a port.
 */
static inline size_t cfg_dial_ranges(const struct cfg_app *app, const struct cfg_origin *o)
{
	return o->port_mode == CFG_PORT_DIALED ? app->n_ports : 1;
}

/* Range <r> (below cfg_dial_ranges) of those ports, inclusive. */
static inline void cfg_dial_range(const struct cfg_app *app, const struct cfg_origin *o, size_t r,
				  uint16_t *lo, uint16_t *hi)
{
	switch (o->port_mode) {
	case CFG_PORT_FIXED:
		*lo = *hi = o->port;
		break;
	case CFG_PORT_MAP: /* the app has one range, of the origin's range's size */
		*lo = o->port;
		*hi = (uint16_t)(o->port + (app->ports[0].hi - app->ports[0].lo));
		break;
	default:
		*lo = app->ports[r].lo;
		*hi = app->ports[r].hi;
	}
}

struct cfg;

/* Whether some claim of <c> holds address <a> (128-bit, v4-mapped) on a
 * port that <app> may dial its origin <o> on (cfg_dial_range): dialing <o>
 * at <a> there would come back to prism.
 */
bool cfg_dial_claimed(const struct cfg *c, const struct cfg_app *app, const struct cfg_origin *o,
		      const struct in6_addr *a);

struct cfg {
	int refs; /* atomic; see cfg_ref/cfg_unref */
	char *path;

	struct sockaddr_in listen4;  /* address + port */
	struct sockaddr_in6 listen6; /* address + port */
	bool listen6_on;	     /* false when address6: off */
	int workers;		     /* >= 1; "auto" resolved to online CPUs */

	bool net_manage;
	char *nft_table;

	uint32_t connect_timeout_ms; /* defaults 5000 */
	uint32_t idle_timeout_ms;    /* default 300000 */
	uint32_t shutdown_grace_ms;  /* default 10000 */

	struct cfg_app *apps;
	size_t n_apps;

	struct rt *rt; /* app index = position in apps[] */

	int log_level;	   /* enum log_level (log.h); default LOG_INFO */
	size_t log_buffer; /* bytes between the logging threads and stderr (log.c) */

	/* One "FILE:LINE:COL: warning: ..." line per thing that loaded but
	 * deserves attention (an origin name that does not resolve yet), or
	 * NULL. Printed by the caller; freed with the snapshot.
	 */
	char *warnings;

	struct cfg_protection protection; /* global block (defaults: see docs) */
	uint32_t max_conns;		  /* protection.max_conns: whole process, 0 = off */
	bool manage_sysctls;		  /* network.sysctls: true (default) lets
					   * net up turn on SYN cookies */
};

/* Loads and validates <path>. On success stores a snapshot with one
 * reference in <*out> and returns 0. On failure returns -EINVAL (bad config)
 * or -errno (file cannot be read) and stores in <*errors> a malloc'd,
 * newline-terminated text of one "FILE:LINE:COL: message" line per problem
 * ("FILE: message" when there is no position); the caller frees it.
 */
int cfg_load(const char *path, struct cfg **out, char **errors);

/* As cfg_load, from memory; <name> is used as FILE in messages. */
int cfg_load_buf(const char *name, const char *buf, size_t len, struct cfg **out, char **errors);

/* cfg_load's flags. CFG_NO_RESOLVE: origin host names are not looked up
 * (they keep no addresses, as when DNS is down, without the warning), for
 * commands that need only the table and the claims: `net down`, `ban`. A
 * lookup can take seconds while DNS is down, and cleaning up must not wait
 * for it.
 */
#define CFG_NO_RESOLVE 1u
int cfg_load_flags(const char *path, unsigned flags, struct cfg **out, char **errors);
int cfg_load_buf_flags(const char *name, const char *buf, size_t len, unsigned flags,
		       struct cfg **out, char **errors);

/* Parses "500ms", "5s", "2m", "1h", "1d", or "0" into milliseconds.
 * Returns 0 or -EINVAL (also on overflow past UINT32_MAX ms).
 */
int cfg_parse_duration(const char *s, uint32_t *ms);

/* Whether <s> may name prism's nftables table: 0, CFG_TABLE_BAD (not a
 * letter or _, then up to 30 letters, digits or _) or CFG_TABLE_KEYWORD (a
 * word nft's scanner reads as a keyword). prism pastes the name into nft
 * scripts, so this is what keeps a name from injecting a command.
 */
#define CFG_TABLE_BAD	  1
#define CFG_TABLE_KEYWORD 2
int cfg_table_name_check(const char *s);

/* Resolves DNS name <host> (TCP, IPv4 and IPv6). Returns 0 with a malloc'd
 * array of at least one address in <*addrs> (sockaddr_in or sockaddr_in6,
 * port 0, duplicates removed) and its length in <*n>; or returns a negative
 * value with <*why> set to a static sentence (e.g. gai_strerror's). The
 * default uses getaddrinfo(AF_UNSPEC, SOCK_STREAM); tests and the fuzzer
 * point it at a stub so that loading never touches the network.
 */
extern int (*cfg_resolver)(const char *host, struct sockaddr_storage **addrs, size_t *n,
			   const char **why);

/* cfg_resolver, with the answers remembered for one pass over the apps (a
 * config load, a round of DNS refreshes), so that a name many apps list is
 * resolved once per pass: 65,536 apps with one named origin made 65,536
 * lookups. <*memo> starts NULL; cfg_memo_free ends the pass. Same results
 * as cfg_resolver; *addrs is the caller's to free.
 */
int cfg_resolve_memo(void **memo, const char *host, struct sockaddr_storage **addrs, size_t *n,
		     const char **why);
void cfg_memo_free(void **memo);

struct cfg *cfg_ref(struct cfg *c);
void cfg_unref(struct cfg *c);

#endif

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

struct cfg_origin {
	struct sockaddr_storage addr; /* port 0 when !has_port */
	bool has_port;		      /* false: use the port the client dialed */
};

enum cfg_proto {
	CFG_PROTO_TCP = 0,
};

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
};

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

	int log_level; /* enum log_level (log.h); default LOG_INFO */
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

/* Parses "500ms", "5s", "2m", "1h", "1d", or "0" into milliseconds.
 * Returns 0 or -EINVAL (also on overflow past UINT32_MAX ms).
 */
int cfg_parse_duration(const char *s, uint32_t *ms);

struct cfg *cfg_ref(struct cfg *c);
void cfg_unref(struct cfg *c);

#endif

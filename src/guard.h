/* guard.h - prism's own layer of DDoS protection: per-source concurrent and
 * rate limits, process and per-app connection caps, and escalation of
 * repeat offenders into the kernel ban set.
 *
 * One guard per process, shared by all workers. Per-source state lives in
 * a fixed-size hash table with striped locks and eviction (bounded memory:
 * not one entry per address forever). Decisions are made at accept time,
 * before any origin is contacted.
 */
#ifndef PRISM_GUARD_H
#define PRISM_GUARD_H

#include <netinet/in.h>
#include <stdint.h>

struct cfg;
struct cfg_app;
struct guard;

enum guard_verdict {
	GUARD_OK = 0,
	GUARD_SOURCE_LIMIT, /* max_conns_per_source reached */
	GUARD_RATE_LIMIT,   /* conn_rate_per_source exceeded */
	GUARD_SHED,	    /* max_conns (process or app) reached */
};

/* Creates the guard for <cfg> (borrowed; must outlive it) and starts its
 * ban thread (nft updates never run on a worker). Returns NULL on failure,
 * with errno set.
 */
struct guard *guard_new(const struct cfg *cfg);
void guard_free(struct guard *g);

/* Decides on a new connection from <client> (128-bit, v4-mapped) to app
 * <app_idx> at <now_ms>. Limits and bans count sources as addr_source does:
 * an IPv4 address, an IPv6 /64. On GUARD_OK the connection is counted and the
 * caller must call guard_release when it ends, passing what <*tracked>
 * (unless NULL) says: whether the connection counts against its source
 * (false when the source table had no room for the source, see
 * table_full). GUARD_SOURCE_LIMIT and
 * GUARD_RATE_LIMIT count as violations of the source; enough of them within the
 * ban window queue a ban of the source (logged). GUARD_SHED does not: it is load, not
 * abuse. Thread-safe.
 */
enum guard_verdict guard_admit(struct guard *g, uint32_t app_idx, const struct in6_addr *client,
			       uint64_t now_ms, bool *tracked);
void guard_release(struct guard *g, uint32_t app_idx, const struct in6_addr *client, bool tracked);

/* Counters for logs/metrics. table_full: connections admitted without
 * per-source limits because their bucket of the source table was full of
 * sources with open connections; ban_dropped: bans not requested because the
 * ban queue was full; ban_failed: bans nftables refused (see ban_settle).
 * sources/capacity: entries in use and the fixed table
 * size (0 when no app limits per source).
 */
struct guard_stats {
	uint64_t source_limit, rate_limit, shed, bans;
	uint64_t table_full, ban_dropped, ban_failed;
	uint64_t sources, capacity;
};
void guard_stats(const struct guard *g, struct guard_stats *out);

struct nl;

/* What the ban thread calls to ban a source: ban_add (ban.h) unless a test
 * points it elsewhere before guard_new. <keep> is the thread's netlink
 * socket, opened by guard_new.
 */
extern int (*guard_ban_fn)(struct nl *keep, const char *table, const struct in6_addr *src,
			   uint32_t duration_ms, uint64_t *kept_ms, char **err);

/* What it calls to ask whether a ban it wrote is still in the kernel:
 * ban_get (ban.h), likewise.
 */
extern int (*guard_ban_get_fn)(struct nl *keep, const char *table, const struct in6_addr *src,
			       uint64_t *left_ms);

#endif

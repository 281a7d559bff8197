/* rt.h - the routing table: (destination address, destination port) -> app.
 *
 * Built once per configuration snapshot and immutable afterwards, so worker
 * threads read it without locks. A claim is one (prefix, port range) of one
 * app. Among all claims that contain (address, port), the one with the
 * longest prefix wins, then the one with the narrowest port range. Two
 * claims of different apps that contain the same point and tie on both
 * counts are a conflict: rt_build refuses them.
 *
 * Lookup cost depends neither on how many addresses or ports a claim covers
 * nor (beyond a logarithm) on how many apps there are: a path-compressed
 * binary trie over the distinct prefixes, each node holding a sorted,
 * disjoint port-interval map that already includes its ancestors' claims.
 */
#ifndef PRISM_RT_H
#define PRISM_RT_H

#include <stddef.h>
#include <stdint.h>

#include "addr.h"

#define RT_NONE UINT32_MAX

struct rt;

struct rt_claim {
	struct addr_prefix prefix;
	uint16_t lo, hi; /* inclusive port range, 1 <= lo <= hi */
	uint32_t app;	 /* caller's app index; RT_NONE is not allowed */
};

struct rt_conflict {
	size_t a, b; /* indices into the claims array, a < b */
};

/* The most port intervals the table's maps may hold (16 bytes each). A
 * prefix nested inside a claimed one holds its own copy of the outer one's
 * port intervals: 2,000 one-address apps inside a /8 app with 32,768 port
 * entries would need 65 million (1 GB).
 */
#define RT_MAX_ENTRIES (8u << 20)

/* Builds a table from <n> claims (copied; the array is borrowed). On
 * success stores it in <*out> and returns 0. Returns -EEXIST when two claims
 * of different apps tie (see above), with the pair in <*conflict> (may be
 * NULL), -E2BIG past RT_MAX_ENTRIES, or -ENOMEM. Claims of the same app may
 * overlap freely.
 */
int rt_build(const struct rt_claim *claims, size_t n, struct rt **out,
	     struct rt_conflict *conflict);

/* Returns the app index for (<addr>, <port>), or RT_NONE. <addr> is a
 * 128-bit key (IPv4 v4-mapped). Safe to call from any thread.
 */
uint32_t rt_lookup(const struct rt *rt, const struct in6_addr *addr, uint16_t port);

/* The first port of [<lo>, <hi>] that some claim holds at <addr>, or 0
 * (ports are 1-65535). Off the data path: it takes the full lookup's way.
 */
uint16_t rt_first_claimed(const struct rt *rt, const struct in6_addr *addr, uint16_t lo,
			  uint16_t hi);

void rt_free(struct rt *rt);

/* One element of the disjoint cover of all claims, for the nftables sets:
 * every address in [lo, hi] with every port in [plo, phi] is claimed by
 * some app, and no two elements intersect (nft's concatenated interval sets
 * reject overlapping elements, while claims nest: a /32 inside a /24).
 */
struct rt_span {
	uint16_t lo, hi; /* inclusive port range */
	uint32_t app;
};

struct rt_elem {
	struct in6_addr lo, hi; /* inclusive address range, same family */
	uint16_t plo, phi;	/* inclusive port range */
	/* Which app each of those ports routes to, the same at every
	 * address of [lo, hi] (rt_lookup's answer): ascending, adjacent
	 * intervals from plo to phi, in the table's memory.
	 */
	const struct rt_span *spans;
	uint32_t n_spans;
};

/* Calls <fn> for each element of the cover of the family <v4> (true: IPv4
 * elements, v4-mapped; false: IPv6), in ascending order. Adjacent port
 * intervals that map to any app are merged. Stops and returns the first
 * non-zero value <fn> returns; otherwise 0.
 */
int rt_cover(const struct rt *rt, int v4, int (*fn)(const struct rt_elem *e, void *arg), void *arg);

#endif

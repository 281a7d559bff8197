/* lb.h - load-balancing algorithms: choose one origin of a set.
 *
 * Pure functions over an origin_set: no locks, no allocation on the pick
 * path. What an algorithm precomputes (maglev's lookup table, the weighted
 * slot list of source_hash) is built once per set by lb_table_new, off the
 * data path, and read concurrently by all workers. What must be per worker
 * (smooth weighted round robin's current weights, the PRNG) is in struct
 * lb_worker. least_conn and random_two read the origins' global atomic
 * `active` counts, so they balance across workers.
 *
 * Usability (health up, not in passive cooldown, not already tried by this
 * connection) is decided by the caller's <usable> callback. Backups are
 * chosen only when no primary is usable; among backups the same algorithm
 * applies.
 */
#ifndef PRISM_LB_H
#define PRISM_LB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#include "cfg.h"
#include "origin.h"

#define LB_NONE SIZE_MAX

/* Built per origin_set; opaque. */
struct lb_table;

/* Per-worker balancer state for one app. */
struct lb_worker {
	int64_t *cur;	 /* smooth WRR current weights, one per origin of the set */
	size_t n;	 /* entries in cur (resized when the set changes) */
	const void *set; /* the set cur belongs to, */
	uint64_t set_id; /* and its id (its address may be a new set's) */
	uint64_t rng;	 /* xorshift state, seeded per worker */
	uint32_t rr;	 /* where ties start: the worker's number; least_conn advances it */
};

/* Builds the algorithm's table for <set> (maglev: a lookup table of a prime
 * size >= 100 x the number of origins, so each origin's share is within
 * ~1% of its weight). <prev>, the table of the set <set> replaces (or
 * NULL), lends maglev its size, so that a change of a few origins moves only
 * their clients (maglev_size_after). Returns NULL on ENOMEM.
 */
struct lb_table *lb_table_new(enum cfg_balance algo, const struct origin_set *set,
			      const struct lb_table *prev);
void lb_table_free(struct lb_table *t);

void lb_worker_init(struct lb_worker *w, uint64_t seed);
void lb_worker_deinit(struct lb_worker *w);

/* Picks an origin of <set> for a connection from <client> (128-bit,
 * v4-mapped) with algorithm <algo>. <usable>(origin index, arg) says whether
 * an origin may be chosen. Returns the index into set->v, or LB_NONE if no
 * origin (primary, then backup) is usable.
 *
 * maglev and source_hash are consistent: the same client lands on the same
 * origin while it is usable; when it is not, the lookup walks on to the
 * next usable entry, so only that origin's clients move.
 */
size_t lb_pick(enum cfg_balance algo, const struct origin_set *set, struct lb_worker *w,
	       const struct in6_addr *client, bool (*usable)(size_t i, void *arg), void *arg);

#endif

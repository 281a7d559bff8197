/* origin.h - an app's origins at run time: addresses, health, load.
 *
 * The configuration is immutable; what changes while prism runs lives here:
 * each origin address's health (active checks, passive failures), its open
 * connection count (least_conn) and, for DNS-named origins, the set of
 * addresses itself. An app's current origins are an origin_set snapshot:
 * immutable apart from the origins' atomic counters, reference-counted,
 * replaced whole (by the resolver) and read by workers under a short lock.
 */
#ifndef PRISM_ORIGIN_H
#define PRISM_ORIGIN_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"

struct cfg;
struct cfg_app;
struct cfg_origin;
struct lb_table;

/* One address of one configured origin. Shared by all workers. */
struct origin {
	int refs;		      /* atomic */
	const struct cfg_origin *co;  /* where it comes from (borrowed from the cfg) */
	struct sockaddr_storage addr; /* port 0 unless co->port_mode == CFG_PORT_FIXED */
	uint32_t weight;
	bool backup;
	char name[ADDR_STRLEN + 80]; /* "host (addr:port)" or "addr:port", for logs */

	/* Run-time state; all atomic. */
	int up;			 /* active health: 1 up, 0 down; starts 1 */
	uint32_t active;	 /* open connections through all workers */
	uint32_t fails;		 /* consecutive connect failures (passive) */
	uint64_t cooldown_until; /* ms monotonic: passively down until then */
	int loops;		 /* host name: 0 not known yet, 1 no dial port of it is
				  * claimed, 2 some is (conn.c, origin_loops) */

	/* Active-check bookkeeping, owned by the health-check thread. */
	uint32_t hc_ok, hc_fail; /* consecutive results */
	uint64_t hc_next;	 /* ms monotonic: next check due */
	uint64_t hc_result;	 /* id of the last shared result counted (hc.c) */
	uint64_t hc_again_due;	 /* a check due while one ran: its due time, or 0 */
	uint64_t hc_again_plan;	 /* ... and its planned time (hc.c, check_schedule) */
};

/* An app's origins at one moment. */
struct origin_set {
	int refs;    /* atomic */
	uint64_t id; /* unique per set made: a freed set's address comes back */
	struct origin **v;
	size_t n;
	struct lb_table *lb; /* the balancer's precomputed data for this set */
};

/* Per-app run-time state: the current set, swapped under <lock>. */
struct app_origins {
	pthread_mutex_t lock;
	struct origin_set *set;
	const struct cfg_app *app;
};

/* Builds the set for <app> from its configuration: one origin per resolved
 * address of each configured origin, each starting up. Returns NULL on
 * ENOMEM. (origin.c)
 */
struct origin_set *origin_set_from_cfg(const struct cfg_app *app);
/* Builds a set from <n> origins (references taken) and the app's balancer;
 * <prev> is the set it replaces (or NULL), see lb_table_new.
 */
struct origin_set *origin_set_new(const struct cfg_app *app, struct origin **v, size_t n,
				  const struct origin_set *prev);
struct origin *origin_new(const struct cfg_origin *co, const struct sockaddr_storage *addr);
void origin_ref(struct origin *o);
void origin_unref(struct origin *o);
void origin_set_unref(struct origin_set *s);

/* Returns the app's current set with a reference taken. Any thread. */
struct origin_set *app_origins_get(struct app_origins *ao);
/* Replaces the app's set with <s> (takes ownership of the caller's reference). */
void app_origins_swap(struct app_origins *ao, struct origin_set *s);

/* One app_origins per app of <cfg> (borrowed; must outlive them), each with
 * the set built from the configuration. NULL on ENOMEM.
 */
struct app_origins *app_origins_new(const struct cfg *cfg);
void app_origins_free(struct app_origins *v, size_t n);

/* True if <o> may receive a new connection at <now_ms>. */
static inline bool origin_usable(const struct origin *o, uint64_t now_ms)
{
	return __atomic_load_n(&o->up, __ATOMIC_RELAXED) &&
	       now_ms >= __atomic_load_n(&o->cooldown_until, __ATOMIC_RELAXED);
}

#endif

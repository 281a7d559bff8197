/* guard.c - connection limits per source, per app and per process, and bans.
 *
 * Per-source state is one entry per (app, source address) in a fixed table
 * allocated once: an attacker spraying addresses (an IPv6 /64 is 2^64 of
 * them) recycles entries, it never grows memory. The table is
 * set-associative: a keyed hash picks two buckets of BUCKET_WAYS entries,
 * the entry lives in one of them or nowhere, and when both are full the
 * least recently seen entry of either that holds no open connection is
 * evicted. Both buckets are guarded by one of N_STRIPES mutexes, so two
 * workers contend only when their sources hash to the same stripe, and the
 * critical section is a few compares.
 *
 * Process and app caps are single atomic counters, touched only when the
 * cap is set. Bans are decided on the worker but carried out on the guard's
 * own thread: ban_add talks netlink and may block, which a worker must
 * never do.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "ban.h"
#include "cfg.h"
#include "guard.h"
#include "log.h"
#include "nl.h"
#include "timer.h"

#define BUCKET_WAYS 8	    /* entries per bucket; two buckets are the eviction window */
#define N_STRIPES   256	    /* mutexes over the buckets */
#define TABLE_MIN   65536   /* entries */
#define TABLE_MAX   1048576 /* entries (~80 MiB): the cap on sizing from max_conns */
#define BAN_QUEUE   1024    /* pending ban requests */
#define EXPIRY_MAX  4096    /* bans remembered for the "unbanned" line */
#define FULL_LOG_MS 1000    /* at most one "table full" (or "queue full") line per second */

int (*guard_ban_fn)(struct nl *keep, const char *table, const struct in6_addr *src,
		    uint32_t duration_ms, uint64_t *kept_ms, char **err) = ban_add;
int (*guard_ban_get_fn)(struct nl *keep, const char *table, const struct in6_addr *src,
			uint64_t *left_ms) = ban_get;

/* The ban window slides in VIOL_SLOTS steps: a violation counts until the
 * step of the window after its own has begun, i.e. for between 7/8 of the
 * window and all of it. A fixed window would let 2 x (after - 1) violations
 * through without a ban, around each of its boundaries.
 */
#define VIOL_SLOTS 8

#define BAN_RETRY_MS  1000 /* see ban_settle */
#define BAN_SETTLE_MS 1000 /* see violation */

struct src_entry {
	struct in6_addr addr;
	uint32_t app;
	bool used;
	uint8_t ban_fails;	   /* bans of it that could not be written (ban_settle) */
	uint32_t concurrent;	   /* open connections admitted for (app, addr) */
	uint16_t viol[VIOL_SLOTS]; /* violations per slot of the ban window, a ring */
	uint32_t ban_checked;	   /* ms >> 10 of the last ban_check asked (violation) */
	uint64_t viol_slot;	   /* number (now / slot length) of the newest slot */
	uint64_t tokens;	   /* token bucket, in 1/per_ms token units */
	uint64_t refill_ms;	   /* time of the last refill */
	uint64_t last_seen;
	uint64_t banned_until; /* 0: not banned by us */
};

/* A mutex padded to a cache line so neighbouring stripes don't false-share. */
union stripe {
	pthread_mutex_t m;
	char pad[64];
};

struct ban_req {
	struct in6_addr addr;
	uint32_t app;
	uint32_t duration_ms, window_ms, violations;
	bool check;	/* not a ban: is our ban of addr still in the kernel? */
	uint64_t until; /* check: the entry's banned_until it asks about */
};

struct expiry {
	uint64_t at; /* CLOCK_MONOTONIC ms */
	struct in6_addr addr;
	uint32_t duration_ms;
	bool superseded; /* a longer ban of addr replaced it: no "unbanned" line */
};

struct guard {
	const struct cfg *cfg;
	uint64_t seed[2]; /* hash key: sources are attacker-chosen */

	struct src_entry *table; /* NULL when no app limits per source */
	size_t n_buckets;	 /* power of two */
	union stripe *stripes;

	uint64_t conns;	     /* atomic: admitted, when cfg->max_conns */
	uint64_t *app_conns; /* atomic, per app: when apps[i].max_conns */

	/* ban requests: workers push, the thread pops */
	pthread_mutex_t qlock;
	struct ban_req queue[BAN_QUEUE];
	size_t q_head, q_len;

	int efd; /* wakes the thread: a request or stop */
	/* The thread's netlink socket for the ban sets, opened here before
	 * any connection is accepted: a flood that causes bans can hold
	 * every fd, and a ban must not need one.
	 */
	struct nl nl;
	int stop;
	bool thread_on;
	pthread_t thread;

	/* owned by the thread */
	struct expiry *expiries; /* min-heap on .at */
	size_t n_expiries;
	bool fail_logged;
	uint64_t last_fail_log;	     /* ms; "cannot ban" lines: one a second */
	uint64_t last_untracked_log; /* ms; "too many bans to track": one a minute */
	uint64_t fails_unlogged;

	/* stats, atomic */
	uint64_t st_source_limit, st_rate_limit, st_shed, st_bans, st_table_full;
	uint64_t st_ban_dropped, st_ban_failed, st_sources;
	uint64_t last_full_log, last_qfull_log;
};

/* Formats a duration the way the config spells it: "500ms", "30s", "10m". */
static const char *fmt_duration(uint32_t ms, char *buf, size_t len)
{
	static const struct {
		uint32_t ms;
		const char *unit;
	} units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};

	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (ms && ms % units[i].ms == 0) {
			snprintf(buf, len, "%u%s", ms / units[i].ms, units[i].unit);
			return buf;
		}
	}
	snprintf(buf, len, "%ums", ms);
	return buf;
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* Keyed hash of (app, addr). Not SipHash, but with a secret random seed an
 * attacker choosing source addresses cannot aim them at one bucket without
 * observing the table, and a crowded bucket only costs them their own
 * per-source state (evicted) or degrades to table_full admission.
 */
static uint64_t src_hash(const struct guard *g, uint32_t app, const struct in6_addr *a)
{
	uint64_t w0, w1, h;

	memcpy(&w0, a->s6_addr, 8);
	memcpy(&w1, a->s6_addr + 8, 8);
	h = mix64(g->seed[0] ^ w0);
	h = mix64(h ^ w1 ^ g->seed[1]);
	return mix64(h ^ app);
}

static bool app_tracks_sources(const struct cfg_app *app)
{
	return app->protection.max_conns_per_source || app->protection.conn_rate_per_source.n;
}

static const struct cfg_app *app_of(const struct guard *g, uint32_t app_idx)
{
	return app_idx < g->cfg->n_apps ? &g->cfg->apps[app_idx] : NULL;
}

static void stat_inc(uint64_t *c)
{
	__atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

/* Takes one slot of a counter capped at <max>; false when it is full. The
 * increment-then-check lets the counter pass <max> for an instant, but never
 * the number of connections actually admitted.
 */
static bool cap_take(uint64_t *c, uint32_t max)
{
	if (__atomic_add_fetch(c, 1, __ATOMIC_RELAXED) <= max)
		return true;
	__atomic_fetch_sub(c, 1, __ATOMIC_RELAXED);
	return false;
}

/* The mutex of the buckets of the source whose src_hash is <h>. */
static pthread_mutex_t *stripe_of(struct guard *g, uint64_t h)
{
	return &g->stripes[((size_t)h & (g->n_buckets - 1)) % N_STRIPES].m;
}

/* Finds (app, addr), whose src_hash is <h>, in its two buckets, or claims a
 * slot for it: an empty one (in the bucket with more of them), or
 * the least recently seen entry of both without open connections,
 * preferring ones not under an active ban (forgetting those only costs a
 * redundant ban). Returns NULL when every entry of both holds open
 * connections. Called with their stripe held.
 *
 * Two buckets, not one: with one, a bucket filled with live sources long
 * before the table did (32,768 live sources in 65,536 entries left 0.9% of
 * them without per-source limits); a source is now refused a slot only
 * when 16 entries are live. The second bucket is in the first one's stripe
 * (a multiple of N_STRIPES away), so one mutex still covers both.
 */
static struct src_entry *entry_get(struct guard *g, uint64_t h, uint32_t app,
				   const struct in6_addr *src, uint64_t now, bool create)
{
	size_t b1 = (size_t)h & (g->n_buckets - 1), per = g->n_buckets / N_STRIPES;
	size_t b2 = (b1 + (1 + (size_t)(h >> 32) % (per - 1)) * N_STRIPES) & (g->n_buckets - 1);
	struct src_entry *bucket[2] = {&g->table[b1 * BUCKET_WAYS], &g->table[b2 * BUCKET_WAYS]};
	struct src_entry *empty = NULL, *first_empty[2] = {NULL, NULL}, *victim = NULL;
	bool victim_banned = true;
	int n_empty[2] = {0, 0};

	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < BUCKET_WAYS; i++) {
			struct src_entry *e = &bucket[k][i];

			if (!e->used) {
				if (!n_empty[k]++)
					first_empty[k] = e;
				continue;
			}
			if (e->app == app && !memcmp(&e->addr, src, sizeof(*src)))
				return e;
			if (e->concurrent == 0) {
				bool banned = e->banned_until > now;

				if (!victim || (victim_banned && !banned) ||
				    (victim_banned == banned && e->last_seen < victim->last_seen)) {
					victim = e;
					victim_banned = banned;
				}
			}
		}
	}
	if (!create)
		return NULL;
	/* The emptier bucket: the power of two choices. */
	empty = n_empty[1] > n_empty[0] ? first_empty[1] : first_empty[0];
	if (empty)
		stat_inc(&g->st_sources);
	else if (victim)
		empty = victim;
	else
		return NULL;
	memset(empty, 0, sizeof(*empty));
	empty->used = true;
	empty->app = app;
	empty->addr = *src;
	empty->refill_ms = now;
	empty->tokens = UINT64_MAX; /* full: clamped at the first refill */
	return empty;
}

/* Refills <e>'s bucket for <now> and takes one token if there is one. Token
 * units are 1/per_ms of a token so refill is exact integer arithmetic:
 * <n> tokens per <per_ms> is <n> units per ms, burst <n> tokens.
 */
static bool bucket_take(struct src_entry *e, const struct cfg_rate *r, uint64_t now)
{
	uint64_t cap = (uint64_t)r->n * r->per_ms;
	uint64_t elapsed = now > e->refill_ms ? now - e->refill_ms : 0;

	/* A full refill takes per_ms; capping elapsed there avoids overflow. */
	if (elapsed > r->per_ms)
		elapsed = r->per_ms;
	if (e->tokens > cap || cap - e->tokens <= elapsed * r->n)
		e->tokens = cap;
	else
		e->tokens += elapsed * r->n;
	if (now > e->refill_ms)
		e->refill_ms = now;
	if (e->tokens < r->per_ms)
		return false;
	e->tokens -= r->per_ms;
	return true;
}

static uint32_t viol_sum(const struct src_entry *e)
{
	uint32_t sum = 0;

	for (int i = 0; i < VIOL_SLOTS; i++)
		sum += e->viol[i];
	return sum;
}

enum viol {
	VIOL_COUNTED, /* counted; no ban yet */
	VIOL_BAN,     /* a ban is due: request it */
	VIOL_CHECK,   /* under our ban: ask whether the kernel still holds it */
};

/* Counts a violation at <now>, in the slot of the sliding ban window it
 * falls in; stores the violations within the window in <*count>. Returns
 * VIOL_BAN when they call for a ban, and marks the entry banned so that it
 * is requested once per ban (guard_admit clears the count once it is
 * queued).
 */
static enum viol violation(struct src_entry *e, const struct cfg_protection *p, uint64_t now,
			   uint32_t *count)
{
	uint64_t slot_ms = ((uint64_t)p->ban_window_ms + VIOL_SLOTS - 1) / VIOL_SLOTS;
	uint64_t cur;

	/* A source under our ban can't reach us (the kernel drops it), but
	 * connections queued before the ban still arrive: those don't count,
	 * so the next ban needs ban_after fresh violations. A source that
	 * still arrives later may have been unbanned by hand (`prism ban
	 * del`): then it would go unbanned, however it behaves, until our
	 * ban would have ended. So the ban thread is asked whether the
	 * kernel still holds the ban (ban_check): at most about once a
	 * second per source, only from BAN_SETTLE_MS into the ban (what
	 * the backlog held has arrived by then: no netlink call per source
	 * of a flood just banned) to BAN_SETTLE_MS before its end (the
	 * kernel's, which began when the ban was written, ends after ours),
	 * and not while a failed ban waits for its retry (ban_settle).
	 */
	if (e->banned_until > now) {
		*count = viol_sum(e);
		if (e->ban_fails || now < e->banned_until - p->ban_duration_ms + BAN_SETTLE_MS ||
		    now + BAN_SETTLE_MS >= e->banned_until ||
		    e->ban_checked == (uint32_t)(now >> 10))
			return VIOL_COUNTED;
		e->ban_checked = (uint32_t)(now >> 10);
		return VIOL_CHECK;
	}
	cur = now / (slot_ms ? slot_ms : 1);
	if (cur > e->viol_slot) {
		for (uint64_t k = e->viol_slot + 1; k <= cur && k <= e->viol_slot + VIOL_SLOTS; k++)
			e->viol[k % VIOL_SLOTS] = 0;
		e->viol_slot = cur;
	}
	if (e->viol[e->viol_slot % VIOL_SLOTS] < UINT16_MAX)
		e->viol[e->viol_slot % VIOL_SLOTS]++;
	*count = viol_sum(e);
	if (!p->ban_after || !p->ban_duration_ms || *count < p->ban_after)
		return VIOL_COUNTED;
	e->banned_until = now + p->ban_duration_ms;
	return VIOL_BAN;
}

/* Queues <req>; false when the queue is full (a ban counted as ban_dropped).
 * Called under the source's stripe lock, so that a dropped request can be
 * undone on its entry before anyone sees it (lock order: stripe, qlock).
 */
static bool ban_enqueue(struct guard *g, const struct ban_req *req)
{
	bool queued = false;

	pthread_mutex_lock(&g->qlock);
	/* Checks leave half the queue to bans. */
	if (g->q_len < (req->check ? BAN_QUEUE / 2 : BAN_QUEUE)) {
		g->queue[(g->q_head + g->q_len) % BAN_QUEUE] = *req;
		g->q_len++;
		queued = true;
	}
	pthread_mutex_unlock(&g->qlock);
	if (!queued && !req->check)
		stat_inc(&g->st_ban_dropped);
	return queued;
}

static void ban_wake(struct guard *g)
{
	uint64_t one = 1;

	if (write(g->efd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_err("guard: cannot wake the ban thread: %s", strerror(errno));
}

static void table_full_log(struct guard *g, const struct in6_addr *src, uint64_t now)
{
	char a[ADDR_STRLEN];

	stat_inc(&g->st_table_full);
	if (!log_ratelimit(&g->last_full_log, now, FULL_LOG_MS))
		return;
	log_warn("guard: source table full of sources with open connections (%zu entries): "
		 "admitting %s without per-source limits",
		 g->n_buckets * BUCKET_WAYS, addr_fmt_source(src, a));
}

enum guard_verdict guard_admit(struct guard *g, uint32_t app_idx, const struct in6_addr *client,
			       uint64_t now_ms, bool *tracked)
{
	const struct cfg_app *app = app_of(g, app_idx);
	enum guard_verdict v = GUARD_OK;
	struct ban_req req;
	bool wake = false, qfull = false;

	if (tracked)
		*tracked = false;

	/* Load first: a shed connection is not the source's fault and does
	 * not count against it.
	 */
	if (g->cfg->max_conns && !cap_take(&g->conns, g->cfg->max_conns)) {
		stat_inc(&g->st_shed);
		return GUARD_SHED;
	}
	if (!app)
		return GUARD_OK;
	if (app->max_conns && !cap_take(&g->app_conns[app_idx], app->max_conns)) {
		v = GUARD_SHED;
		stat_inc(&g->st_shed);
		goto undo_process;
	}
	if (!g->table || !app_tracks_sources(app))
		return GUARD_OK;

	const struct cfg_protection *p = &app->protection;
	const struct in6_addr key = addr_source(client), *src = &key;
	uint64_t h = src_hash(g, app_idx, src);
	pthread_mutex_t *m = stripe_of(g, h);
	struct src_entry *e;

	pthread_mutex_lock(m);
	e = entry_get(g, h, app_idx, src, now_ms, true);
	if (!e) {
		pthread_mutex_unlock(m);
		table_full_log(g, src, now_ms);
		return GUARD_OK;
	}
	e->last_seen = now_ms;
	if (p->max_conns_per_source && e->concurrent >= p->max_conns_per_source)
		v = GUARD_SOURCE_LIMIT;
	else if (p->conn_rate_per_source.n && !bucket_take(e, &p->conn_rate_per_source, now_ms))
		v = GUARD_RATE_LIMIT;
	if (v == GUARD_OK) {
		e->concurrent++;
		if (tracked)
			*tracked = true;
	} else {
		enum viol r = violation(e, p, now_ms, &req.violations);

		if (r != VIOL_COUNTED) {
			req.addr = *src;
			req.app = app_idx;
			req.duration_ms = p->ban_duration_ms;
			req.window_ms = p->ban_window_ms;
			req.check = r == VIOL_CHECK;
			req.until = e->banned_until;
			wake = ban_enqueue(g, &req);
			qfull = !wake && r == VIOL_BAN;
			if (qfull) {
				/* Not banned after all: the next violation
				 * asks again instead of the source going
				 * unbanned and unasked for the ban's duration.
				 */
				e->banned_until = 0;
			} else if (r == VIOL_BAN) {
				memset(e->viol, 0, sizeof(e->viol));
			}
		}
	}
	pthread_mutex_unlock(m);
	if (v == GUARD_OK)
		return GUARD_OK;

	/* The slots go back before the wake-up's syscall and the log line:
	 * held meanwhile, they could shed another source's connection at the
	 * cap.
	 */
	if (app->max_conns)
		__atomic_fetch_sub(&g->app_conns[app_idx], 1, __ATOMIC_RELAXED);
	if (g->cfg->max_conns)
		__atomic_fetch_sub(&g->conns, 1, __ATOMIC_RELAXED);
	stat_inc(v == GUARD_SOURCE_LIMIT ? &g->st_source_limit : &g->st_rate_limit);
	if (wake) {
		ban_wake(g);
	} else if (qfull && log_ratelimit(&g->last_qfull_log, now_ms, FULL_LOG_MS)) {
		char a[ADDR_STRLEN];

		log_warn("guard: ban queue full (%d pending): ban of %s not requested yet, its "
			 "next violation asks again",
			 BAN_QUEUE, addr_fmt_source(src, a));
	}
	return v;
undo_process:
	if (g->cfg->max_conns)
		__atomic_fetch_sub(&g->conns, 1, __ATOMIC_RELAXED);
	return v;
}

void guard_release(struct guard *g, uint32_t app_idx, const struct in6_addr *client, bool tracked)
{
	const struct cfg_app *app = app_of(g, app_idx);

	if (g->cfg->max_conns)
		__atomic_fetch_sub(&g->conns, 1, __ATOMIC_RELAXED);
	if (!app)
		return;
	if (app->max_conns)
		__atomic_fetch_sub(&g->app_conns[app_idx], 1, __ATOMIC_RELAXED);
	/* An untracked connection (admitted while its bucket was full) added
	 * to no entry: an entry the source got since is not its to decrement.
	 */
	if (!tracked || !g->table || !app_tracks_sources(app))
		return;

	const struct in6_addr key = addr_source(client), *src = &key;
	uint64_t h = src_hash(g, app_idx, src);
	pthread_mutex_t *m = stripe_of(g, h);
	struct src_entry *e;

	pthread_mutex_lock(m);
	e = entry_get(g, h, app_idx, src, 0, false);
	if (e && e->concurrent)
		e->concurrent--;
	pthread_mutex_unlock(m);
}

void guard_stats(const struct guard *g, struct guard_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->source_limit = __atomic_load_n(&g->st_source_limit, __ATOMIC_RELAXED);
	out->rate_limit = __atomic_load_n(&g->st_rate_limit, __ATOMIC_RELAXED);
	out->shed = __atomic_load_n(&g->st_shed, __ATOMIC_RELAXED);
	out->bans = __atomic_load_n(&g->st_bans, __ATOMIC_RELAXED);
	out->table_full = __atomic_load_n(&g->st_table_full, __ATOMIC_RELAXED);
	out->ban_dropped = __atomic_load_n(&g->st_ban_dropped, __ATOMIC_RELAXED);
	out->ban_failed = __atomic_load_n(&g->st_ban_failed, __ATOMIC_RELAXED);
	out->sources = __atomic_load_n(&g->st_sources, __ATOMIC_RELAXED);
	out->capacity = g->table ? g->n_buckets * BUCKET_WAYS : 0;
}

/* --- the ban thread --- */

static void expiry_push(struct guard *g, const struct expiry *x)
{
	size_t i = g->n_expiries;

	if (i == EXPIRY_MAX) {
		/* The ban itself is in the kernel and ends there; only its
		 * "unbanned" line is lost, and ban_do's look at the kernel
		 * still keeps a shorter ban from replacing it.
		 */
		if (log_ratelimit(&g->last_untracked_log, mono_ms(), 60000))
			log_warn("guard: %d bans in force: the ends of further ones are not logged "
				 "until some of them end",
				 EXPIRY_MAX);
		return;
	}
	g->n_expiries++;
	while (i > 0 && g->expiries[(i - 1) / 2].at > x->at) {
		g->expiries[i] = g->expiries[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	g->expiries[i] = *x;
}

static void expiry_pop(struct guard *g)
{
	struct expiry last = g->expiries[--g->n_expiries];
	size_t i = 0, n = g->n_expiries;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= n)
			break;
		if (c + 1 < n && g->expiries[c + 1].at < g->expiries[c].at)
			c++;
		if (last.at <= g->expiries[c].at)
			break;
		g->expiries[i] = g->expiries[c];
		i = c;
	}
	if (n)
		g->expiries[i] = last;
}

/* The end of the latest ban this thread wrote for <addr> that is still on,
 * or 0. Off the data path: bans are rare, and EXPIRY_MAX bounds the scan.
 */
static uint64_t expiry_latest(const struct guard *g, const struct in6_addr *addr)
{
	uint64_t at = 0;

	for (size_t i = 0; i < g->n_expiries; i++)
		if (!g->expiries[i].superseded && g->expiries[i].at > at &&
		    !memcmp(&g->expiries[i].addr, addr, sizeof(*addr)))
			at = g->expiries[i].at;
	return at;
}

/* A new, longer ban of <addr> was written: the earlier ones end with it. */
static void expiry_supersede(struct guard *g, const struct in6_addr *addr)
{
	for (size_t i = 0; i < g->n_expiries; i++)
		if (!memcmp(&g->expiries[i].addr, addr, sizeof(*addr)))
			g->expiries[i].superseded = true;
}

/* Records in its source's entry how writing <req>'s ban went.
 *
 * A ban that could not be written: the source is not banned after all, so
 * its violations count again BAN_RETRY_MS after the ban would have begun
 * (twice that after a second failure, and so on, up to the ban's duration),
 * and <after> more then ask for it again, rather than none for the ban's
 * whole duration (up to days). Not at once: a failure that persists (a
 * full set, a table without ban sets) would cost a netlink call and a log
 * line per <after> violations of every source.
 *
 * A ban that was written resets the failures counted before, so the next
 * failure, however much later, waits BAN_RETRY_MS again, not the doubled
 * time of an old streak.
 */
static void ban_settle(struct guard *g, const struct ban_req *req, bool ok)
{
	uint64_t h = src_hash(g, req->app, &req->addr);
	pthread_mutex_t *m = stripe_of(g, h);
	struct src_entry *e;

	pthread_mutex_lock(m);
	e = entry_get(g, h, req->app, &req->addr, 0, false);
	if (e && ok) {
		e->ban_fails = 0;
	} else if (e && e->banned_until) {
		/* On the workers' clock: the ban began at banned_until - duration. */
		uint64_t retry = (uint64_t)BAN_RETRY_MS << (e->ban_fails < 20 ? e->ban_fails : 20);

		if (retry < req->duration_ms)
			e->banned_until -= req->duration_ms - retry;
		if (e->ban_fails < UINT8_MAX)
			e->ban_fails++;
	}
	pthread_mutex_unlock(m);
}

/* A violation under our ban asked whether the kernel still holds it. When
 * it does not (`prism ban del`, or a table put in place without it), the
 * source is not banned after all: its violations count again from none,
 * and our ban's end is neither logged nor keeps a new ban from being
 * written (expiry_latest). Only the ban it asked about, while it is still
 * the entry's (a check that waited in the queue past that ban's end must
 * not lift the next one), and only when the kernel says there is none: a
 * lookup that fails otherwise tells nothing.
 */
static void ban_check(struct guard *g, const struct ban_req *req)
{
	const char *table = g->cfg->nft_table ? g->cfg->nft_table : "prism";
	const struct cfg_app *app = app_of(g, req->app);
	uint64_t h = src_hash(g, req->app, &req->addr), left;
	pthread_mutex_t *m = stripe_of(g, h);
	struct src_entry *e;
	bool lifted = false;
	char a[ADDR_STRLEN];

	if (guard_ban_get_fn(&g->nl, table, &req->addr, &left) != -ENOENT)
		return;
	pthread_mutex_lock(m);
	e = entry_get(g, h, req->app, &req->addr, 0, false);
	if (e && e->banned_until == req->until && !e->ban_fails) {
		e->banned_until = 0;
		memset(e->viol, 0, sizeof(e->viol));
		lifted = true;
	}
	pthread_mutex_unlock(m);
	if (!lifted)
		return;
	expiry_supersede(g, &req->addr);
	log_info("source %s: no longer banned in the kernel (`prism ban del`?): its limit "
		 "violations count again (app %s)",
		 addr_fmt_source(&req->addr, a), app ? app->name : "-");
}

/* "Not banned: already banned for longer" (ban_do), <left> ms more. */
static void log_kept(const char *a, const char *dur, const struct cfg_app *app, uint64_t left)
{
	char l[32];

	if (left == UINT64_MAX)
		log_info("source %s: not banned for %s (app %s): already banned without an end", a,
			 dur, app ? app->name : "-");
	else
		log_info(
		    "source %s: not banned for %s (app %s): already banned for %s more", a, dur,
		    app ? app->name : "-",
		    fmt_duration((uint32_t)(left < UINT32_MAX ? left : UINT32_MAX), l, sizeof(l)));
}

static void ban_do(struct guard *g, const struct ban_req *req)
{
	const char *table = g->cfg->nft_table ? g->cfg->nft_table : "prism";
	const struct cfg_app *app = app_of(g, req->app);
	char a[ADDR_STRLEN], dur[32], win[32];
	char *err = NULL;
	uint64_t now = mono_ms(), until = expiry_latest(g, &req->addr), kept = 0;
	int r;

	addr_fmt_source(&req->addr, a);
	fmt_duration(req->duration_ms, dur, sizeof(dur));
	/* The kernel keeps one timeout per source, and writing a ban replaces
	 * it: another app's shorter ban (from connections admitted before the
	 * first one took hold) would cut a longer one short. A ban this
	 * thread wrote is known here; one it does not know (`prism ban add`,
	 * one put back when the table was replaced, one past EXPIRY_MAX) is
	 * looked up in the kernel before writing (ban_add's <kept_ms>).
	 */
	if (until >= now + req->duration_ms) {
		log_kept(a, dur, app, until - now);
		return;
	}
	r = guard_ban_fn(&g->nl, table, &req->addr, req->duration_ms, &kept, &err);
	if (r == 1) {
		log_kept(a, dur, app, kept);
		return;
	}
	if (r < 0) {
		/* Without network.manage the operator's table may lack the
		 * ban sets on purpose: say so once, not per offender. With
		 * it, at most a line a second: a failure that lasts (a full
		 * set) would otherwise log every offender's retries.
		 */
		now = mono_ms();
		if (!g->cfg->net_manage ? !g->fail_logged
					: log_ratelimit(&g->last_fail_log, now, FULL_LOG_MS)) {
			char more[64] = "";

			if (g->fails_unlogged)
				snprintf(more, sizeof(more),
					 " (and %" PRIu64 " more since the last line)",
					 g->fails_unlogged);
			log_err("source %s: cannot ban for %s: %s%s%s", a, dur,
				err ? err : strerror(-r), more,
				g->cfg->net_manage ? ""
						   : " (network.manage is off: further ban "
						     "failures are not logged)");
			g->fails_unlogged = 0;
		} else if (g->cfg->net_manage) {
			g->fails_unlogged++;
		}
		g->fail_logged = true;
		free(err);
		stat_inc(&g->st_ban_failed);
		ban_settle(g, req, false);
		return;
	}
	free(err);
	ban_settle(g, req, true);
	stat_inc(&g->st_bans);
	log_warn("source %s banned for %s: %u limit violations within %s (app %s)", a, dur,
		 req->violations, fmt_duration(req->window_ms, win, sizeof(win)),
		 app ? app->name : "-");
	if (until)
		expiry_supersede(g, &req->addr);
	expiry_push(g, &(struct expiry){.at = mono_ms() + req->duration_ms,
					.addr = req->addr,
					.duration_ms = req->duration_ms});
}

static void *guard_main(void *arg)
{
	struct guard *g = arg;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (!__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd pfd = {.fd = g->efd, .events = POLLIN};
		uint64_t now = mono_ms(), v;
		int timeout = -1;

		while (g->n_expiries && g->expiries[0].at <= now) {
			char a[ADDR_STRLEN], dur[32];

			if (!g->expiries[0].superseded)
				log_info(
				    "source %s unbanned (ban of %s expired)",
				    addr_fmt_source(&g->expiries[0].addr, a),
				    fmt_duration(g->expiries[0].duration_ms, dur, sizeof(dur)));
			expiry_pop(g);
		}
		if (g->n_expiries) {
			uint64_t d = g->expiries[0].at - now;

			timeout = d > 60000 ? 60000 : (int)d;
		}
		if (poll(&pfd, 1, timeout) == -1 && errno != EINTR) {
			log_err("guard: poll: %s", strerror(errno));
			break;
		}
		while (read(g->efd, &v, sizeof(v)) > 0)
			;
		/* Pop one at a time so workers never wait on a netlink call. */
		for (;;) {
			struct ban_req req;

			if (__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE))
				break;
			pthread_mutex_lock(&g->qlock);
			if (!g->q_len) {
				pthread_mutex_unlock(&g->qlock);
				break;
			}
			req = g->queue[g->q_head];
			g->q_head = (g->q_head + 1) % BAN_QUEUE;
			g->q_len--;
			pthread_mutex_unlock(&g->qlock);
			if (req.check)
				ban_check(g, &req);
			else
				ban_do(g, &req);
		}
	}
	return NULL;
}

/* --- lifecycle --- */

static size_t table_size(const struct cfg *cfg)
{
	size_t n = TABLE_MIN;

	/* Room for every admitted connection to come from its own source,
	 * twice over, so that a table full of live entries means the process
	 * cap is off or huge.
	 */
	while (n < TABLE_MAX && n < 2 * (size_t)cfg->max_conns)
		n *= 2;
	return n;
}

struct guard *guard_new(const struct cfg *cfg)
{
	struct guard *g = calloc(1, sizeof(*g));
	bool sources = false, bans = false;
	int r;

	if (!g)
		return NULL; /* errno: ENOMEM */
	g->cfg = cfg;
	g->efd = -1;
	pthread_mutex_init(&g->qlock, NULL);
	for (size_t i = 0; i < cfg->n_apps; i++) {
		const struct cfg_protection *p = &cfg->apps[i].protection;

		sources |= app_tracks_sources(&cfg->apps[i]);
		bans |= app_tracks_sources(&cfg->apps[i]) && p->ban_after && p->ban_duration_ms;
	}
	g->app_conns = calloc(cfg->n_apps ? cfg->n_apps : 1, sizeof(*g->app_conns));
	if (!g->app_conns)
		goto fail;
	if (sources) {
		size_t n = table_size(cfg);

		if (getrandom(g->seed, sizeof(g->seed), GRND_NONBLOCK) != sizeof(g->seed)) {
			/* Early boot without entropy: a weaker key beats no
			 * limits at all.
			 */
			g->seed[0] = mix64((uint64_t)mono_ms() ^ (uint64_t)(uintptr_t)g);
			g->seed[1] = mix64(g->seed[0] ^ (uint64_t)getpid());
		}
		g->n_buckets = n / BUCKET_WAYS;
		g->table = calloc(n, sizeof(*g->table));
		g->stripes = calloc(N_STRIPES, sizeof(*g->stripes));
		if (!g->table || !g->stripes)
			goto fail;
		for (int i = 0; i < N_STRIPES; i++)
			pthread_mutex_init(&g->stripes[i].m, NULL);
	}
	if (bans) {
		g->expiries = calloc(EXPIRY_MAX, sizeof(*g->expiries));
		if (!g->expiries)
			goto fail;
		g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (g->efd == -1) {
			log_err("guard: eventfd: %s", strerror(errno));
			goto fail;
		}
		/* Should it fail, each ban tries to open it again. */
		r = nl_open(&g->nl, NETLINK_NETFILTER, NULL);
		if (r < 0)
			log_warn("guard: cannot open a netlink socket for the ban sets yet: %s",
				 strerror(-r));
		r = pthread_create(&g->thread, NULL, guard_main, g);
		if (r) {
			log_err("guard: cannot start the ban thread: %s", strerror(r));
			errno = r;
			goto fail;
		}
		g->thread_on = true;
		pthread_setname_np(g->thread, "bans");
	}
	return g;
fail:
	r = errno; /* ENOMEM from calloc, or what eventfd/pthread_create said */
	guard_free(g);
	errno = r;
	return NULL;
}

void guard_free(struct guard *g)
{
	if (!g)
		return;
	if (g->thread_on) {
		uint64_t one = 1;

		__atomic_store_n(&g->stop, 1, __ATOMIC_RELEASE);
		if (write(g->efd, &one, sizeof(one)) == -1)
			log_err("guard: cannot wake the ban thread: %s", strerror(errno));
		pthread_join(g->thread, NULL);
	}
	if (g->efd != -1)
		close(g->efd);
	nl_close(&g->nl);
	if (g->stripes)
		for (int i = 0; i < N_STRIPES; i++)
			pthread_mutex_destroy(&g->stripes[i].m);
	pthread_mutex_destroy(&g->qlock);
	free(g->stripes);
	free(g->table);
	free(g->app_conns);
	free(g->expiries);
	free(g);
}

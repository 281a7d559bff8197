/* timer.h - a 4-ary min-heap of deadlines, one per thread that keeps timers.
 *
 * Timers are intrusive (embedded in their owner, found with container_of)
 * and the heap stores (deadline, pointer) pairs, so arming, moving and
 * cancelling are O(log n) with no allocation on the data path beyond the
 * heap array's occasional growth, and sifting compares deadlines in the
 * array without touching the timers (see timer.c). Not thread-safe: each
 * thread owns its heap.
 */
#ifndef PRISM_TIMER_H
#define PRISM_TIMER_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The struct that embeds <ptr> as its <member>: how a timer callback (or
 * an epoll event) finds its owner.
 */
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* CLOCK_MONOTONIC in ms: the time base of deadlines, and of the threads
 * that keep their own (health checks, DNS refresh, bans, the log writer).
 * Workers read the coarse clock instead, once per loop turn (worker.c).
 */
static inline uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct timer {
	uint64_t deadline;	     /* ms, monotonic */
	size_t idx;		     /* position in the heap, TIMER_IDLE when not armed */
	void (*fn)(struct timer *t); /* called when it expires, already disarmed */
};

#define TIMER_IDLE SIZE_MAX

struct timer_slot {
	uint64_t deadline; /* a copy of t->deadline */
	struct timer *t;
};

struct timer_heap {
	struct timer_slot *v; /* heap order; the allocation starts a few slots before
				 (timer.c: TIMER_PAD) */
	size_t n, cap;
};

void timer_heap_init(struct timer_heap *h);
void timer_heap_deinit(struct timer_heap *h);

static inline void timer_init(struct timer *t, void (*fn)(struct timer *t))
{
	t->idx = TIMER_IDLE;
	t->fn = fn;
}

static inline int timer_armed(const struct timer *t)
{
	return t->idx != TIMER_IDLE;
}

/* Makes room for <n> armed timers: until more than <n> are armed, timer_set
 * cannot fail. Returns 0 or -ENOMEM.
 */
int timer_reserve(struct timer_heap *h, size_t n);

/* Arms <t> at <deadline>, or moves it if already armed. Returns 0, or
 * -ENOMEM when the heap is full (see timer_reserve) and cannot grow.
 */
int timer_set(struct timer_heap *h, struct timer *t, uint64_t deadline);

/* Disarms <t>; harmless when not armed. */
void timer_cancel(struct timer_heap *h, struct timer *t);

/* Disarms and runs every timer whose deadline is <= <now>; the callbacks may
 * arm or cancel timers, but a timer armed again at or before <now> runs
 * again in the same call: a callback that always does so never lets it
 * return. Returns ms until the next deadline, or -1 if none.
 */
int timer_run(struct timer_heap *h, uint64_t now);

/* Returns the earliest timer, or NULL. */
static inline struct timer *timer_peek(const struct timer_heap *h)
{
	return h->n ? h->v[0].t : NULL;
}

#endif

/* timer.c - 4-ary min-heap of deadlines (see timer.h).
 *
 * Each slot holds the deadline next to the timer's pointer, so a sift reads
 * only the array: with pointers alone every comparison dereferenced a timer,
 * one cache miss per child per level once the timers outgrow the cache (the
 * health thread's heap of 65,536 app ticks spent two thirds of its time in
 * sift_down; docs/benchmarks.md, "Many apps"). Four children per node
 * halve the depth, and the array is offset so that the four children of
 * a node fill one 64-byte line: slot i's children are 4i+1..4i+4, stored
 * at TIMER_PAD + 4i + 1 and on, a multiple of four.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"

#define ARITY	  4
#define TIMER_PAD 3
#define LINE	  64

void timer_heap_init(struct timer_heap *h)
{
	h->v = NULL;
	h->n = h->cap = 0;
}

void timer_heap_deinit(struct timer_heap *h)
{
	if (h->v)
		free(h->v - TIMER_PAD);
	timer_heap_init(h);
}

static inline void heap_place(struct timer_heap *h, size_t i, struct timer_slot s)
{
	h->v[i] = s;
	s.t->idx = i;
}

static void sift_up(struct timer_heap *h, size_t i)
{
	struct timer_slot s = h->v[i];

	while (i > 0) {
		size_t parent = (i - 1) / ARITY;

		if (h->v[parent].deadline <= s.deadline)
			break;
		heap_place(h, i, h->v[parent]);
		i = parent;
	}
	heap_place(h, i, s);
}

static void sift_down(struct timer_heap *h, size_t i)
{
	struct timer_slot s = h->v[i];

	for (;;) {
		size_t c = ARITY * i + 1, end = c + ARITY, m = i;
		uint64_t best = s.deadline;

		if (end > h->n)
			end = h->n;
		for (; c < end; c++) {
			if (h->v[c].deadline < best) {
				m = c;
				best = h->v[c].deadline;
			}
		}
		if (m == i)
			break;
		heap_place(h, i, h->v[m]);
		i = m;
	}
	heap_place(h, i, s);
}

static int grow(struct timer_heap *h)
{
	size_t cap = h->cap ? h->cap * 2 : 64;
	size_t bytes = (cap + TIMER_PAD) * sizeof(struct timer_slot);
	struct timer_slot *v = aligned_alloc(LINE, (bytes + LINE - 1) / LINE * LINE);

	if (!v)
		return -ENOMEM;
	if (h->n)
		memcpy(v + TIMER_PAD, h->v, h->n * sizeof(*v));
	if (h->v)
		free(h->v - TIMER_PAD);
	h->v = v + TIMER_PAD;
	h->cap = cap;
	return 0;
}

int timer_reserve(struct timer_heap *h, size_t n)
{
	while (h->cap < n) {
		if (grow(h) < 0)
			return -ENOMEM;
	}
	return 0;
}

int timer_set(struct timer_heap *h, struct timer *t, uint64_t deadline)
{
	if (timer_armed(t)) {
		uint64_t old = t->deadline;

		t->deadline = deadline;
		h->v[t->idx].deadline = deadline;
		if (deadline < old)
			sift_up(h, t->idx);
		else
			sift_down(h, t->idx);
		return 0;
	}
	if (h->n == h->cap && grow(h) < 0)
		return -ENOMEM;
	t->deadline = deadline;
	heap_place(h, h->n++, (struct timer_slot){deadline, t});
	sift_up(h, t->idx);
	return 0;
}

void timer_cancel(struct timer_heap *h, struct timer *t)
{
	size_t i = t->idx;

	if (i == TIMER_IDLE)
		return;
	t->idx = TIMER_IDLE;
	if (--h->n == i)
		return;
	heap_place(h, i, h->v[h->n]);
	if (i > 0 && h->v[(i - 1) / ARITY].deadline > h->v[i].deadline)
		sift_up(h, i);
	else
		sift_down(h, i);
}

int timer_run(struct timer_heap *h, uint64_t now)
{
	struct timer *t;

	while (h->n && h->v[0].deadline <= now) {
		t = h->v[0].t;
		timer_cancel(h, t);
		t->fn(t);
	}
	if (!h->n)
		return -1;
	return h->v[0].deadline - now > INT32_MAX ? INT32_MAX : (int)(h->v[0].deadline - now);
}

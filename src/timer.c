/* timer.c - binary min-heap of deadlines (see timer.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "timer.h"

void timer_heap_init(struct timer_heap *h)
{
	h->v = NULL;
	h->n = h->cap = 0;
}

void timer_heap_deinit(struct timer_heap *h)
{
	free(h->v);
	timer_heap_init(h);
}

static void heap_place(struct timer_heap *h, size_t i, struct timer *t)
{
	h->v[i] = t;
	t->idx = i;
}

static void sift_up(struct timer_heap *h, size_t i)
{
	struct timer *t = h->v[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (h->v[parent]->deadline <= t->deadline)
			break;
		heap_place(h, i, h->v[parent]);
		i = parent;
	}
	heap_place(h, i, t);
}

static void sift_down(struct timer_heap *h, size_t i)
{
	struct timer *t = h->v[i];

	for (;;) {
		size_t l = 2 * i + 1, m = i;
		uint64_t best = t->deadline;

		if (l < h->n && h->v[l]->deadline < best) {
			m = l;
			best = h->v[l]->deadline;
		}
		if (l + 1 < h->n && h->v[l + 1]->deadline < best)
			m = l + 1;
		if (m == i)
			break;
		heap_place(h, i, h->v[m]);
		i = m;
	}
	heap_place(h, i, t);
}

int timer_set(struct timer_heap *h, struct timer *t, uint64_t deadline)
{
	if (timer_armed(t)) {
		uint64_t old = t->deadline;

		t->deadline = deadline;
		if (deadline < old)
			sift_up(h, t->idx);
		else
			sift_down(h, t->idx);
		return 0;
	}
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct timer **v = realloc(h->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		h->v = v;
		h->cap = cap;
	}
	t->deadline = deadline;
	heap_place(h, h->n++, t);
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
	if (i > 0 && h->v[(i - 1) / 2]->deadline > h->v[i]->deadline)
		sift_up(h, i);
	else
		sift_down(h, i);
}

int timer_run(struct timer_heap *h, uint64_t now)
{
	struct timer *t;

	while ((t = timer_peek(h)) && t->deadline <= now) {
		timer_cancel(h, t);
		t->fn(t);
	}
	if (!t)
		return -1;
	return t->deadline - now > INT32_MAX ? INT32_MAX : (int)(t->deadline - now);
}

/* test_timer.c - the per-thread deadline heap against sorted and plain references. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "timer.h"

#define N 2000

static int fired[N];
static struct timer timers[N];
static uint64_t order[N];
static int n_order;

/* The heap's only allocator (timer.c grows its array with it): made to
 * fail while <fail_alloc> is set.
 */
static bool fail_alloc;

void *aligned_alloc(size_t align, size_t n)
{
	void *p;

	if (fail_alloc) {
		errno = ENOMEM;
		return NULL;
	}
	return posix_memalign(&p, align, n) ? NULL : p;
}

static void on_fire(struct timer *t)
{
	int i = (int)(t - timers);

	fired[i]++;
	order[n_order++] = t->deadline;
}

static void test_order_and_cancel(void **state)
{
	struct timer_heap h;
	uint64_t deadline[N];
	unsigned seed = 42;

	(void)state;
	timer_heap_init(&h);
	n_order = 0;
	for (int i = 0; i < N; i++) {
		fired[i] = 0;
		timer_init(&timers[i], on_fire);
		deadline[i] = (uint64_t)(rand_r(&seed) % 10000);
		assert_int_equal(timer_set(&h, &timers[i], deadline[i]), 0);
	}
	/* Move some (both directions), cancel some. */
	for (int i = 0; i < N; i += 3) {
		deadline[i] = (uint64_t)(rand_r(&seed) % 10000);
		assert_int_equal(timer_set(&h, &timers[i], deadline[i]), 0);
	}
	for (int i = 1; i < N; i += 7)
		timer_cancel(&h, &timers[i]);
	timer_cancel(&h, &timers[1]); /* twice: harmless */

	/* Nothing before the earliest deadline; then everything in order. */
	assert_int_equal(timer_run(&h, 5000) >= 0, 1);
	for (int i = 0; i < N; i++)
		if (i % 7 != 1)
			assert_int_equal(fired[i], deadline[i] <= 5000);
	assert_int_equal(timer_run(&h, 20000), -1);
	for (int i = 0; i < N; i++)
		assert_int_equal(fired[i], i % 7 == 1 ? 0 : 1);
	for (int i = 1; i < n_order; i++)
		assert_true(order[i - 1] <= order[i]);
	assert_null(timer_peek(&h));
	timer_heap_deinit(&h);
}

static struct timer_heap rearm_heap;
static int rearm_count;

static void rearm(struct timer *t)
{
	/* Callbacks may re-arm their own timer, as the idle timer does. */
	if (++rearm_count < 5)
		timer_set(&rearm_heap, t, t->deadline + 10);
}

static void test_rearm_from_callback(void **state)
{
	struct timer t;

	(void)state;
	timer_heap_init(&rearm_heap);
	timer_init(&t, rearm);
	timer_set(&rearm_heap, &t, 10);
	assert_int_equal(timer_run(&rearm_heap, 25), 5); /* fired at 10, 20; next 30 */
	assert_int_equal(rearm_count, 2);
	assert_int_equal(timer_run(&rearm_heap, 1000), -1);
	assert_int_equal(rearm_count, 5);
	assert_false(timer_armed(&t));
	timer_heap_deinit(&rearm_heap);
}

/* Random arms, moves, cancels and pops against a plain array: after each
 * step the heap's earliest timer has the earliest deadline of the armed
 * ones, and every timer knows whether it is armed.
 */
static void nop(struct timer *t)
{
	(void)t;
}

static void test_random_against_reference(void **state)
{
	enum { M = 500, STEPS = 50000 };
	static struct timer t[M];
	static int armed[M];
	struct timer_heap h;
	unsigned seed = 7;

	(void)state;
	timer_heap_init(&h);
	for (int i = 0; i < M; i++) {
		timer_init(&t[i], nop);
		armed[i] = 0;
	}
	for (int step = 0; step < STEPS; step++) {
		int i = rand_r(&seed) % M, op = rand_r(&seed) % 4;
		uint64_t min = UINT64_MAX;
		struct timer *p;

		if (op < 2) {
			/* Few distinct deadlines: ties are common. */
			assert_int_equal(timer_set(&h, &t[i], (uint64_t)(rand_r(&seed) % 64)), 0);
			armed[i] = 1;
		} else if (op == 2) {
			timer_cancel(&h, &t[i]);
			armed[i] = 0;
		} else if ((p = timer_peek(&h)) != NULL) {
			timer_cancel(&h, p);
			armed[p - t] = 0;
		}
		for (int j = 0; j < M; j++) {
			assert_int_equal(timer_armed(&t[j]), armed[j]);
			if (armed[j] && t[j].deadline < min)
				min = t[j].deadline;
		}
		p = timer_peek(&h);
		if (min == UINT64_MAX)
			assert_null(p);
		else
			assert_true(p && p->deadline == min);
	}
	timer_heap_deinit(&h);
}

/* After timer_reserve(n), arming n timers allocates nothing; the heap only
 * needs memory past them. Without the reservation, the 65th would fail.
 */
static void test_reserve(void **state)
{
	struct timer_heap h;
	const int n = 256; /* a capacity the heap reaches exactly (64, doubled) */

	(void)state;
	timer_heap_init(&h);
	fail_alloc = true;
	assert_int_equal(timer_reserve(&h, 1), -ENOMEM);
	fail_alloc = false;
	assert_int_equal(timer_reserve(&h, n), 0);
	assert_int_equal(timer_reserve(&h, 10), 0); /* never shrinks */
	fail_alloc = true;
	for (int i = 0; i < n; i++) {
		timer_init(&timers[i], on_fire);
		assert_int_equal(timer_set(&h, &timers[i], (uint64_t)(1000 - i)), 0);
	}
	timer_init(&timers[n], on_fire);
	assert_int_equal(timer_set(&h, &timers[n], 1), -ENOMEM);
	assert_int_equal(timer_armed(&timers[n]), 0);
	assert_int_equal(timer_reserve(&h, n + 1), -ENOMEM);
	fail_alloc = false;
	assert_int_equal(timer_set(&h, &timers[n], 1), 0);
	n_order = 0;
	assert_int_equal(timer_run(&h, 1000), -1);
	assert_int_equal(n_order, n + 1);
	for (int i = 1; i <= n; i++)
		assert_true(order[i - 1] <= order[i]);
	timer_heap_deinit(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order_and_cancel),
	    cmocka_unit_test(test_rearm_from_callback),
	    cmocka_unit_test(test_random_against_reference),
	    cmocka_unit_test(test_reserve),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

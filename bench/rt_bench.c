/* rt_bench.c - micro-benchmark of rt_lookup: ns per lookup for tables of
 * 10, 1,000 and 100,000 apps, to check that lookup cost stays flat as the
 * table grows, and the memory the table takes.
 *
 * Build: gcc -std=gnu11 -D_GNU_SOURCE -O2 -Isrc -o rt_bench bench/rt_bench.c src/rt.c
 * Output, one line per size:
 *   apps=N ns_per_lookup=MIN median=MED chained_ns=C hit_rate=H build_ms=T bytes=B
 * bytes is what the built table holds on the heap (mallinfo2 before and after
 * rt_build; the builder's scratch is freed by then). ns_per_lookup times
 * independent lookups, whose cache misses the CPU overlaps; chained_ns
 * (minimum of CHAINED_ROUNDS rounds of one pass) makes each lookup's key
 * depend on the result before it, so none overlaps: what one lookup costs
 * on its own, as prism makes one per accepted connection.
 *
 * Workload, meant to look like an edge's: each app claims one prefix with
 * one port range, half IPv4, half IPv6.
 * - IPv4: anywhere in the 32-bit space (the worst case for caches: nothing
 *   clusters). Lengths: /16-/19 2%, /20-/23 8%, /24 20%, /25-/31 20%,
 *   /32 50%.
 * - IPv6: under 16 random /24 "provider" blocks, as real allocations cluster
 *   (this defeats an index on the top bits of the key alone). Lengths:
 *   /32-/47 5%, /48 15%, /49-/63 10%, /64 30%, /65-/127 10%, /128 30%.
 * - Ports: a third single ports, a third ranges up to 100 wide, a third
 *   random ranges (often most of 1-65535).
 * Lookups are pre-generated, 90% inside a random claim (any of the N, so
 * the whole table is touched), 10% random addresses of either family, so
 * the timed loop is rt_lookup alone. Each size runs ROUNDS rounds of
 * PASSES * NQUERY lookups; the minimum and the median per-lookup time are
 * printed, since a shared machine adds noise. Run sizes of your own with
 * `rt_bench 500 20000`.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt.h"

typedef addr_u128 u128;

#define NQUERY	       (1u << 20)
#define PASSES	       4
#define ROUNDS	       7
#define CHAINED_ROUNDS 3

struct query {
	struct in6_addr addr;
	uint16_t port;
};

static uint64_t rng_state = 42;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static u128 mask_of(unsigned len)
{
	return len == 0 ? 0 : ~(u128)0 << (128 - len);
}

static struct in6_addr addr_of(u128 k)
{
	struct in6_addr a;

	addr_from_key(k, &a);
	return a;
}

static u128 v6_base[16];

/* A length from a table of (percent, first, last) rows summing to 100. */
static unsigned pick_len(const unsigned (*t)[3])
{
	unsigned r = (unsigned)(rnd() % 100);

	for (;; t++) {
		if (r < (*t)[0])
			return (*t)[1] + (unsigned)(rnd() % ((*t)[2] - (*t)[1] + 1));
		r -= (*t)[0];
	}
}

static void make_claim(struct rt_claim *c, uint32_t app)
{
	static const unsigned v4_len[][3] = {
	    {2, 16, 19}, {8, 20, 23}, {20, 24, 24}, {20, 25, 31}, {50, 32, 32}};
	static const unsigned v6_len[][3] = {{5, 32, 47},  {15, 48, 48},  {10, 49, 63},
					     {30, 64, 64}, {10, 65, 127}, {30, 128, 128}};
	u128 k;
	unsigned len, lo, width;

	if (rnd() & 1) {
		k = ((u128)0xffff << 32) | (uint32_t)rnd();
		len = 96 + pick_len(v4_len);
	} else {
		k = v6_base[rnd() % 16] | ((((u128)rnd() << 64) | rnd()) & ~mask_of(24));
		len = pick_len(v6_len);
	}
	c->prefix.addr = addr_of(k & mask_of(len));
	c->prefix.len = (uint8_t)len;
	lo = 1 + (unsigned)(rnd() % 65535);
	switch (rnd() % 3) {
	case 0:
		width = 0;
		break;
	case 1:
		width = (unsigned)(rnd() % 100);
		break;
	default:
		width = (unsigned)(rnd() % 65535);
		break;
	}
	if (lo + width > 65535)
		width = 65535 - lo;
	c->lo = (uint16_t)lo;
	c->hi = (uint16_t)(lo + width);
	c->app = app;
}

/* Lookups are timed in this thread's CPU time, so that time the scheduler
 * gives to other processes on a shared machine is not counted (their cache
 * pollution still is); the build in wall time.
 */
static double now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int dbl_cmp(const void *pa, const void *pb)
{
	double a = *(const double *)pa, b = *(const double *)pb;

	return a < b ? -1 : a > b;
}

static int bench(size_t napps, struct query *q)
{
	struct rt_claim *c = calloc(napps, sizeof(*c));
	struct rt_conflict cf;
	struct rt *rt = NULL;
	struct mallinfo2 m0, m1;
	unsigned long hits = 0;
	double tb, ns[ROUNDS], chained = 0;
	int ret;

	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < napps; i++)
		make_claim(&c[i], (uint32_t)i);
	m0 = mallinfo2();
	tb = now_ns(CLOCK_MONOTONIC);
	/* Random data may tie now and then: give the pair one app. */
	while ((ret = rt_build(c, napps, &rt, &cf)) == -EEXIST)
		c[cf.b].app = c[cf.a].app;
	tb = now_ns(CLOCK_MONOTONIC) - tb;
	m1 = mallinfo2();
	if (ret) {
		free(c);
		return ret;
	}
	for (size_t i = 0; i < NQUERY; i++) {
		if (rnd() % 10) {
			const struct rt_claim *k = &c[rnd() % napps];
			u128 base = addr_key(&k->prefix.addr);
			u128 host = (((u128)rnd() << 64) | rnd()) & ~mask_of(k->prefix.len);

			q[i].addr = addr_of(base | host);
			q[i].port = (uint16_t)(k->lo + rnd() % ((unsigned)(k->hi - k->lo) + 1));
		} else {
			u128 k = ((u128)rnd() << 64) | rnd();

			if (rnd() & 1)
				k = ((u128)0xffff << 32) | (uint32_t)k;
			q[i].addr = addr_of(k);
			q[i].port = (uint16_t)rnd();
		}
	}
	for (size_t i = 0; i < NQUERY; i++) /* warm up */
		hits += rt_lookup(rt, &q[i].addr, q[i].port) != RT_NONE;
	for (int r = 0; r < ROUNDS; r++) {
		double t0;

		hits = 0;
		t0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
		for (int p = 0; p < PASSES; p++)
			for (size_t i = 0; i < NQUERY; i++)
				hits += rt_lookup(rt, &q[i].addr, q[i].port) != RT_NONE;
		ns[r] = (now_ns(CLOCK_THREAD_CPUTIME_ID) - t0) / ((double)NQUERY * PASSES);
	}
	qsort(ns, ROUNDS, sizeof(ns[0]), dbl_cmp);
	for (int r = 0; r < CHAINED_ROUNDS; r++) {
		double t0 = now_ns(CLOCK_THREAD_CPUTIME_ID), t;
		size_t dep = 0;

		/* No app index equals ~0u - 1 (RT_NONE is ~0u), so dep stays 0
		 * and the keys are the same as above; but the next index cannot
		 * be computed before the lookup returns.
		 */
		for (size_t i = 0; i < NQUERY; i++) {
			size_t j = (i + dep) & (NQUERY - 1);

			dep = rt_lookup(rt, &q[j].addr, q[j].port) == UINT32_MAX - 1;
		}
		t = (now_ns(CLOCK_THREAD_CPUTIME_ID) - t0) / NQUERY;
		if (r == 0 || t < chained)
			chained = t;
	}
	printf(
	    "apps=%zu ns_per_lookup=%.1f median=%.1f chained_ns=%.1f hit_rate=%.2f build_ms=%.1f "
	    "bytes=%zu\n",
	    napps, ns[0], ns[ROUNDS / 2], chained, (double)hits / ((double)NQUERY * PASSES),
	    tb / 1e6, (m1.uordblks + m1.hblkhd) - (m0.uordblks + m0.hblkhd));
	rt_free(rt);
	free(c);
	return 0;
}

/* Sizes to run can be given as arguments (default: 10 1000 100000). */
int main(int argc, char **argv)
{
	static const size_t sizes[] = {10, 1000, 100000};
	size_t nsizes = argc > 1 ? (size_t)argc - 1 : sizeof(sizes) / sizeof(sizes[0]);
	struct query *q = malloc(NQUERY * sizeof(*q));

	if (!q)
		return 1;
	for (size_t i = 0; i < 16; i++)
		v6_base[i] = (((u128)rnd() << 64) | rnd()) & mask_of(24);
	for (size_t i = 0; i < nsizes; i++) {
		size_t napps = argc > 1 ? strtoul(argv[i + 1], NULL, 10) : sizes[i];

		if (napps == 0 || bench(napps, q)) {
			fprintf(stderr, "rt_bench: build failed for %zu apps\n", napps);
			free(q);
			return 1;
		}
	}
	free(q);
	return 0;
}

/* rt_bench.c - micro-benchmark of rt_lookup: ns per lookup for tables of
 * 10, 1,000 and 100,000 apps, to check that lookup cost stays flat (only a
 * logarithm) as the table grows.
 *
 * Build: gcc -std=gnu11 -D_GNU_SOURCE -O2 -Isrc -o rt_bench bench/rt_bench.c src/rt.c
 * Each app claims one random prefix (IPv4 /24../32 or IPv6 /48../128, half
 * each) with one random port range. Lookups are pre-generated, 90% inside a
 * random claim, 10% random, so the timed loop is rt_lookup alone. Each
 * size runs ROUNDS rounds of PASSES * NQUERY lookups; the minimum and the
 * median per-lookup time are printed, since a shared machine adds noise.
 */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt.h"

typedef unsigned __int128 u128;

#define NQUERY (1u << 20)
#define PASSES 4
#define ROUNDS 7

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

static u128 key_of(const struct in6_addr *a)
{
	uint64_t h, l;

	memcpy(&h, a->s6_addr, 8);
	memcpy(&l, a->s6_addr + 8, 8);
	return ((u128)be64toh(h) << 64) | be64toh(l);
}

static struct in6_addr addr_of(u128 k)
{
	struct in6_addr a;
	uint64_t h = htobe64((uint64_t)(k >> 64)), l = htobe64((uint64_t)k);

	memcpy(a.s6_addr, &h, 8);
	memcpy(a.s6_addr + 8, &l, 8);
	return a;
}

static void make_claim(struct rt_claim *c, uint32_t app)
{
	u128 k;
	unsigned len, lo, width;

	if (rnd() & 1) {
		k = ((u128)0xffff << 32) | (uint32_t)rnd();
		len = 96 + 24 + (unsigned)(rnd() % 9);
	} else {
		k = ((u128)rnd() << 64) | rnd();
		len = 48 + (unsigned)(rnd() % 81);
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

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
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
	unsigned long hits = 0;
	double tb, ns[ROUNDS];
	int ret;

	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < napps; i++)
		make_claim(&c[i], (uint32_t)i);
	tb = now_ns();
	/* Random data may tie now and then: give the pair one app. */
	while ((ret = rt_build(c, napps, &rt, &cf)) == -EEXIST)
		c[cf.b].app = c[cf.a].app;
	tb = now_ns() - tb;
	if (ret) {
		free(c);
		return ret;
	}
	for (size_t i = 0; i < NQUERY; i++) {
		if (rnd() % 10) {
			const struct rt_claim *k = &c[rnd() % napps];
			u128 base = key_of(&k->prefix.addr);
			u128 host = (((u128)rnd() << 64) | rnd()) & ~mask_of(k->prefix.len);

			q[i].addr = addr_of(base | host);
			q[i].port = (uint16_t)(k->lo + rnd() % ((unsigned)(k->hi - k->lo) + 1));
		} else {
			q[i].addr = addr_of(((u128)rnd() << 64) | rnd());
			q[i].port = (uint16_t)rnd();
		}
	}
	for (size_t i = 0; i < NQUERY; i++) /* warm up */
		hits += rt_lookup(rt, &q[i].addr, q[i].port) != RT_NONE;
	for (int r = 0; r < ROUNDS; r++) {
		double t0;

		hits = 0;
		t0 = now_ns();
		for (int p = 0; p < PASSES; p++)
			for (size_t i = 0; i < NQUERY; i++)
				hits += rt_lookup(rt, &q[i].addr, q[i].port) != RT_NONE;
		ns[r] = (now_ns() - t0) / ((double)NQUERY * PASSES);
	}
	qsort(ns, ROUNDS, sizeof(ns[0]), dbl_cmp);
	printf("apps=%zu ns_per_lookup=%.1f median=%.1f hit_rate=%.2f build_ms=%.1f\n", napps,
	       ns[0], ns[ROUNDS / 2], (double)hits / ((double)NQUERY * PASSES), tb / 1e6);
	rt_free(rt);
	free(c);
	return 0;
}

int main(void)
{
	static const size_t sizes[] = {10, 1000, 100000};
	struct query *q = malloc(NQUERY * sizeof(*q));

	if (!q)
		return 1;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		if (bench(sizes[i], q)) {
			fprintf(stderr, "rt_bench: build failed for %zu apps\n", sizes[i]);
			free(q);
			return 1;
		}
	}
	free(q);
	return 0;
}

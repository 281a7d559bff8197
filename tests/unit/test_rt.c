/* test_rt.c - unit tests of the routing table: hand cases for the routing
 * rule and its edges, and randomized runs against a brute-force reference
 * that applies the rule of rt.h literally (linear scan over all claims).
 */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rt.h"

typedef unsigned __int128 u128;

#define V4MAP_LO ((u128)0xffff << 32)
#define V4MAP_HI (V4MAP_LO | 0xffffffffu)

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

static u128 mask_of(unsigned len)
{
	return len == 0 ? 0 : ~(u128)0 << (128 - len);
}

/* "192.0.2.10" or "2001:db8::1" as a 128-bit key (IPv4 v4-mapped). */
static struct in6_addr A(const char *s) {
	struct in6_addr a;
	struct in_addr v4;

	if (inet_pton(AF_INET, s, &v4) == 1) {
		memset(&a, 0, sizeof(a));
		a.s6_addr[10] = a.s6_addr[11] = 0xff;
		memcpy(a.s6_addr + 12, &v4, 4);
		return a;
	}
	assert_int_equal(inet_pton(AF_INET6, s, &a), 1);
	return a;
}

/* A claim; <len> is in the family's own terms (IPv4 /24 -> 120). */
static struct rt_claim
C(const char *s, unsigned len, uint16_t lo, uint16_t hi, uint32_t app) {
	struct rt_claim c = {.lo = lo, .hi = hi, .app = app};

	c.prefix.addr = A(s);
	c.prefix.len = (uint8_t)(strchr(s, ':') ? len : 96 + len);
	return c;
}

static u128
K(const char *s)
{
	struct in6_addr a = A(s);

	return key_of(&a);
}

static uint32_t L(const struct rt *rt, const char *s, uint16_t port)
{
	struct in6_addr a = A(s);

	return rt_lookup(rt, &a, port);
}

/* ---- brute-force reference ---- */

static int contains(const struct rt_claim *c, u128 k)
{
	return ((k ^ key_of(&c->prefix.addr)) & mask_of(c->prefix.len)) == 0;
}

static uint32_t brute_lookup(const struct rt_claim *c, size_t n, u128 k, uint16_t port)
{
	size_t best = SIZE_MAX;

	for (size_t i = 0; i < n; i++) {
		if (!contains(&c[i], k) || port < c[i].lo || port > c[i].hi)
			continue;
		if (best == SIZE_MAX || c[i].prefix.len > c[best].prefix.len ||
		    (c[i].prefix.len == c[best].prefix.len &&
		     c[i].hi - c[i].lo < c[best].hi - c[best].lo))
			best = i;
	}
	return best == SIZE_MAX ? RT_NONE : c[best].app;
}

static int brute_pair_conflicts(const struct rt_claim *a, const struct rt_claim *b)
{
	return a->prefix.len == b->prefix.len &&
	       key_of(&a->prefix.addr) == key_of(&b->prefix.addr) &&
	       a->hi - a->lo == b->hi - b->lo && a->lo <= b->hi && b->lo <= a->hi &&
	       a->app != b->app;
}

static int brute_has_conflict(const struct rt_claim *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (brute_pair_conflicts(&c[i], &c[j]))
				return 1;
	return 0;
}

/* ---- cover collection ---- */

struct elem {
	u128 lo, hi;
	uint16_t plo, phi;
	int v4;
};

struct elems {
	struct elem *e;
	size_t n, cap;
	int v4;
	const struct rt *rt;
};

static int collect(const struct rt_elem *e, void *arg)
{
	struct elems *es = arg;

	/* The spans: adjacent from plo to phi, each the app rt_lookup gives
	 * at both ends of the element's addresses and of its own ports.
	 */
	assert_true(e->n_spans > 0);
	assert_int_equal(e->spans[0].lo, e->plo);
	assert_int_equal(e->spans[e->n_spans - 1].hi, e->phi);
	for (uint32_t k = 0; k < e->n_spans; k++) {
		const struct rt_span *sp = &e->spans[k];

		assert_true(sp->lo <= sp->hi);
		assert_true(sp->app != RT_NONE);
		if (k)
			assert_int_equal(sp->lo, e->spans[k - 1].hi + 1);
		assert_int_equal(rt_lookup(es->rt, &e->lo, sp->lo), sp->app);
		assert_int_equal(rt_lookup(es->rt, &e->lo, sp->hi), sp->app);
		assert_int_equal(rt_lookup(es->rt, &e->hi, sp->lo), sp->app);
		assert_int_equal(rt_lookup(es->rt, &e->hi, sp->hi), sp->app);
	}

	if (es->n == es->cap) {
		es->cap = es->cap ? 2 * es->cap : 64;
		es->e = realloc(es->e, es->cap * sizeof(*es->e));
		assert_non_null(es->e);
	}
	es->e[es->n++] = (struct elem){key_of(&e->lo), key_of(&e->hi), e->plo, e->phi, es->v4};
	return 0;
}

static void cover_all(const struct rt *rt, struct elems *es)
{
	es->n = 0;
	es->rt = rt;
	es->v4 = 1;
	assert_int_equal(rt_cover(rt, 1, collect, es), 0);
	es->v4 = 0;
	assert_int_equal(rt_cover(rt, 0, collect, es), 0);
}

static int in_cover(const struct elems *es, u128 k, uint16_t port)
{
	for (size_t i = 0; i < es->n; i++)
		if (es->e[i].lo <= k && k <= es->e[i].hi && es->e[i].plo <= port &&
		    port <= es->e[i].phi)
			return 1;
	return 0;
}

/* Disjoint, within the family, ascending, adjacent port runs merged. */
static void check_cover_shape(const struct elems *es)
{
	for (size_t i = 0; i < es->n; i++) {
		const struct elem *x = &es->e[i];

		assert_true(x->lo <= x->hi);
		assert_true(1 <= x->plo && x->plo <= x->phi);
		if (x->v4)
			assert_true(V4MAP_LO <= x->lo && x->hi <= V4MAP_HI);
		else
			assert_true(x->hi < V4MAP_LO || x->lo > V4MAP_HI);
		for (size_t j = i + 1; j < es->n; j++) {
			const struct elem *y = &es->e[j];

			assert_false(x->lo <= y->hi && y->lo <= x->hi && x->plo <= y->phi &&
				     y->plo <= x->phi);
		}
		if (i + 1 < es->n && es->e[i + 1].v4 == x->v4) {
			const struct elem *y = &es->e[i + 1];

			/* Address ranges are equal or disjoint, in order. */
			if (x->lo == y->lo) {
				assert_true(x->hi == y->hi);
				assert_true((unsigned)x->phi + 1 < y->plo);
			} else {
				assert_true(x->hi < y->lo);
			}
		}
	}
}

/* ---- hand cases ---- */

static void test_nesting_and_fallback(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 1, 65535, 0),
	    C("192.0.2.10", 32, 22, 22, 1),
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 2, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.10", 22), 1);
	assert_int_equal(L(rt, "192.0.2.10", 80), 0); /* fallback to the /24 */
	assert_int_equal(L(rt, "192.0.2.10", 21), 0);
	assert_int_equal(L(rt, "192.0.2.10", 23), 0);
	assert_int_equal(L(rt, "192.0.2.11", 22), 0);
	assert_int_equal(L(rt, "192.0.2.0", 1), 0);
	assert_int_equal(L(rt, "192.0.2.255", 65535), 0);
	assert_int_equal(L(rt, "192.0.3.0", 22), RT_NONE);
	assert_int_equal(L(rt, "192.0.1.255", 22), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.10", 0), RT_NONE);
	assert_int_equal(L(rt, "2001:db8::1", 22), RT_NONE);
	rt_free(rt);
}

static void test_fallback_partial(void **state)
{
	/* The /32 claims only 8000-8099; the /24 only 8050-8200: ports of the
	 * /32 outside its own range fall back to the /24, or to nothing.
	 */
	struct rt_claim c[] = {
	    C("192.0.2.10", 32, 8000, 8099, 1),
	    C("192.0.2.0", 24, 8050, 8200, 0),
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 2, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.10", 7999), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.10", 8000), 1);
	assert_int_equal(L(rt, "192.0.2.10", 8099), 1);
	assert_int_equal(L(rt, "192.0.2.10", 8100), 0);
	assert_int_equal(L(rt, "192.0.2.10", 8200), 0);
	assert_int_equal(L(rt, "192.0.2.10", 8201), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.9", 8000), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.9", 8050), 0);
	rt_free(rt);
}

static void test_narrowest_wins(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 1, 65535, 2),
	    C("192.0.2.0", 24, 8000, 8999, 0),
	    C("192.0.2.0", 24, 8080, 8080, 1),
	    C("192.0.2.0", 24, 8990, 9010, 3),
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 4, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.7", 8080), 1);
	assert_int_equal(L(rt, "192.0.2.7", 8079), 0);
	assert_int_equal(L(rt, "192.0.2.7", 8081), 0);
	assert_int_equal(L(rt, "192.0.2.7", 8000), 0);
	assert_int_equal(L(rt, "192.0.2.7", 8989), 0);
	assert_int_equal(L(rt, "192.0.2.7", 8990), 3); /* width 20 < 999 */
	assert_int_equal(L(rt, "192.0.2.7", 9010), 3);
	assert_int_equal(L(rt, "192.0.2.7", 9011), 2);
	assert_int_equal(L(rt, "192.0.2.7", 7999), 2);
	assert_int_equal(L(rt, "192.0.2.7", 1), 2);
	rt_free(rt);
}

static void test_conflict(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 80, 89, 0), C("192.0.2.5", 32, 80, 80, 1),
	    C("198.51.100.0", 24, 85, 94, 2),
	    C("192.0.2.0", 24, 85, 94, 2), /* same prefix, same width, overlaps 0 */
	};
	struct rt_conflict cf = {99, 99};
	struct rt *rt = NULL;

	(void)state;
	assert_int_equal(rt_build(c, 4, &rt, &cf), -EEXIST);
	assert_null(rt);
	assert_int_equal(cf.a, 0);
	assert_int_equal(cf.b, 3);
	assert_int_equal(rt_build(c, 4, &rt, NULL), -EEXIST);

	/* Reversed order: still a < b. */
	struct rt_claim d[] = {c[3], c[1], c[0]};
	assert_int_equal(rt_build(d, 3, &rt, &cf), -EEXIST);
	assert_int_equal(cf.a, 0);
	assert_int_equal(cf.b, 2);

	/* Touching but not overlapping ranges are fine; so are different
	 * widths (the narrower wins) and different prefixes.
	 */
	struct rt_claim e[] = {
	    C("192.0.2.0", 24, 80, 89, 0),
	    C("192.0.2.0", 24, 90, 99, 1),
	    C("192.0.2.0", 24, 85, 95, 2),
	    C("192.0.2.0", 25, 80, 89, 3),
	};
	assert_int_equal(rt_build(e, 4, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.200", 89), 0);
	assert_int_equal(L(rt, "192.0.2.200", 90), 1);
	assert_int_equal(L(rt, "192.0.2.200", 95), 1);
	assert_int_equal(L(rt, "192.0.2.200", 96), 1);
	assert_int_equal(L(rt, "192.0.2.200", 100), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 85), 3);
	assert_int_equal(L(rt, "192.0.2.1", 90), 1);
	rt_free(rt);

	/* A chain of same-width claims where only the ends differ in app,
	 * but the conflicting pair is in the middle.
	 */
	struct rt_claim f[] = {
	    C("2001:db8::", 64, 100, 109, 5),
	    C("2001:db8::", 64, 104, 113, 5),
	    C("2001:db8::", 64, 108, 117, 6),
	    C("2001:db8::", 64, 200, 209, 6),
	};
	assert_int_equal(rt_build(f, 4, &rt, &cf), -EEXIST);
	assert_true(brute_pair_conflicts(&f[cf.a], &f[cf.b]));
	assert_true(cf.a < cf.b);
}

static void test_same_app_overlap(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 80, 89, 4), C("192.0.2.0", 24, 85, 94, 4),
	    C("192.0.2.0", 24, 80, 89, 4), /* duplicate */
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 3, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.1", 79), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 80), 4);
	assert_int_equal(L(rt, "192.0.2.1", 94), 4);
	assert_int_equal(L(rt, "192.0.2.1", 95), RT_NONE);
	rt_free(rt);
}

static void test_mixed_families(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 1, 65535, 0),
	    C("2001:db8::", 32, 1, 65535, 1),
	    C("2001:db8::1", 128, 443, 443, 2),
	    C("198.51.100.7", 32, 443, 443, 3),
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 4, &rt, NULL), 0);
	assert_int_equal(L(rt, "2001:db8::1", 443), 2);
	assert_int_equal(L(rt, "2001:db8::1", 444), 1);
	assert_int_equal(L(rt, "2001:db8::2", 443), 1);
	assert_int_equal(L(rt, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 443), 1);
	assert_int_equal(L(rt, "2001:db9::", 443), RT_NONE);
	assert_int_equal(L(rt, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 443), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 443), 0);
	assert_int_equal(L(rt, "198.51.100.7", 443), 3);
	assert_int_equal(L(rt, "198.51.100.7", 442), RT_NONE);
	/* The v4 address 192.0.2.1 and the v6 ::c000:201 are different keys. */
	assert_int_equal(L(rt, "::c000:201", 443), RT_NONE);
	rt_free(rt);
}

static void test_edges(void **state)
{
	struct rt_claim c[] = {
	    C("::", 0, 1, 65535, 0),
	    C("::ffff:0.0.0.0", 96, 1, 1, 2),
	    C("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 128, 65535, 65535, 1),
	    C("::", 128, 1, 1, 3),
	    C("255.255.255.255", 32, 65535, 65535, 4),
	    C("0.0.0.0", 0, 2, 2, 5), /* all of IPv4 (96 + 0) */
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 6, &rt, NULL), 0);
	assert_int_equal(L(rt, "2001:db8::5", 80), 0);
	assert_int_equal(L(rt, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), 1);
	assert_int_equal(L(rt, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65534), 0);
	assert_int_equal(L(rt, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535), 0);
	assert_int_equal(L(rt, "::", 1), 3);
	assert_int_equal(L(rt, "::", 2), 0);
	assert_int_equal(L(rt, "::1", 1), 0);
	assert_int_equal(L(rt, "192.0.2.1", 1), 2);
	assert_int_equal(L(rt, "192.0.2.1", 2), 5);
	assert_int_equal(L(rt, "192.0.2.1", 3), 0); /* the literal ::/0 covers v4 too */
	assert_int_equal(L(rt, "0.0.0.0", 1), 2);
	assert_int_equal(L(rt, "255.255.255.255", 65535), 4);
	assert_int_equal(L(rt, "255.255.255.255", 1), 2);
	assert_int_equal(L(rt, "2001:db8::5", 0), RT_NONE);
	rt_free(rt);
}

static void test_port_edges(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.1", 32, 1, 1, 7),
	    C("192.0.2.1", 32, 65535, 65535, 8),
	};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 2, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.1", 0), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 1), 7);
	assert_int_equal(L(rt, "192.0.2.1", 2), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 65534), RT_NONE);
	assert_int_equal(L(rt, "192.0.2.1", 65535), 8);
	rt_free(rt);
}

static int count_elems(const struct rt_elem *e, void *arg)
{
	(void)e;
	++*(int *)arg;
	return 0;
}

static void test_empty(void **state)
{
	struct rt *rt;
	int n = 0;

	(void)state;
	assert_int_equal(rt_build(NULL, 0, &rt, NULL), 0);
	assert_int_equal(L(rt, "192.0.2.1", 80), RT_NONE);
	assert_int_equal(L(rt, "::", 0), RT_NONE);
	assert_int_equal(rt_cover(rt, 1, count_elems, &n), 0);
	assert_int_equal(rt_cover(rt, 0, count_elems, &n), 0);
	assert_int_equal(n, 0);
	rt_free(rt);
	rt_free(NULL);
}

static void test_invalid(void **state)
{
	struct rt_claim ok = C("192.0.2.0", 24, 80, 80, 0), c[2];
	struct rt *rt = NULL;

	(void)state;
	c[0] = ok;
	c[1] = ok;
	c[1].lo = 0;
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	c[1] = ok;
	c[1].lo = 81;
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	c[1] = ok;
	c[1].prefix.len = 129;
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	c[1] = C("192.0.2.1", 24, 80, 80, 0); /* host bits set */
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	c[1] = C("::1", 0, 80, 80, 0);
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	c[1] = ok;
	c[1].app = RT_NONE;
	assert_int_equal(rt_build(c, 2, &rt, NULL), -EINVAL);
	assert_null(rt);
}

static void test_cover_hand(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 1, 65535, 0),  C("192.0.2.10", 32, 22, 22, 1),
	    C("192.0.2.64", 26, 100, 199, 2), C("192.0.2.64", 26, 300, 399, 2),
	    C("2001:db8::", 64, 443, 443, 3),
	};
	struct elems es = {0};
	struct rt *rt;

	(void)state;
	assert_int_equal(rt_build(c, 5, &rt, NULL), 0);
	cover_all(rt, &es);
	check_cover_shape(&es);
	/* v4: the /24 split around the /32 and the /26; each piece carries
	 * all ports, app boundaries merged away.
	 */
	assert_int_equal(es.n, 6);
	assert_true(es.e[0].lo == K("192.0.2.0"));
	assert_true(es.e[0].hi == K("192.0.2.9"));
	assert_true(es.e[1].lo == es.e[1].hi);
	assert_int_equal(es.e[1].plo, 1);
	assert_int_equal(es.e[1].phi, 65535);
	assert_true(es.e[2].hi == K("192.0.2.63"));
	assert_true(es.e[3].lo == K("192.0.2.64"));
	assert_true(es.e[3].hi == K("192.0.2.127"));
	assert_int_equal(es.e[3].plo, 1);
	assert_int_equal(es.e[3].phi, 65535);
	assert_true(es.e[4].hi == K("192.0.2.255"));
	assert_false(es.e[5].v4);
	assert_int_equal(es.e[5].plo, 443);
	assert_int_equal(es.e[5].phi, 443);
	rt_free(rt);

	/* ::/0 with gaps in its ports: IPv6 around the v4-mapped /96, IPv4 all. */
	struct rt_claim d[] = {
	    C("::", 0, 10, 20, 0),
	    C("::", 0, 30, 40, 1),
	};
	assert_int_equal(rt_build(d, 2, &rt, NULL), 0);
	cover_all(rt, &es);
	check_cover_shape(&es);
	assert_int_equal(es.n, 6);
	assert_true(es.e[0].v4 && es.e[0].lo == V4MAP_LO && es.e[0].hi == V4MAP_HI);
	assert_int_equal(es.e[0].plo, 10);
	assert_int_equal(es.e[1].phi, 40);
	assert_true(es.e[2].lo == 0 && es.e[2].hi == V4MAP_LO - 1);
	assert_true(es.e[4].lo == V4MAP_HI + 1 && es.e[4].hi == ~(u128)0);
	rt_free(rt);
	free(es.e);
}

/* A callback's non-zero return stops the walk and is passed through. */
static int stop_at_two(const struct rt_elem *e, void *arg)
{
	(void)e;
	return ++*(int *)arg == 2 ? 42 : 0;
}

static void test_cover_stop(void **state)
{
	struct rt_claim c[] = {
	    C("192.0.2.0", 24, 1, 10, 0),
	    C("192.0.2.0", 24, 20, 30, 0),
	    C("192.0.2.0", 24, 40, 50, 0),
	};
	struct rt *rt;
	int n = 0;

	(void)state;
	assert_int_equal(rt_build(c, 3, &rt, NULL), 0);
	assert_int_equal(rt_cover(rt, 1, stop_at_two, &n), 42);
	assert_int_equal(n, 2);
	rt_free(rt);
}

/* ---- randomized ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* splitmix64: deterministic per seed, good enough spread. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rnd_below(uint32_t n)
{
	return (uint32_t)(rnd() % n);
}

static u128 rnd128(void)
{
	return ((u128)rnd() << 64) | rnd();
}

/* When set, few distinct prefixes and widths, so conflicts are common. */
static int tight;

/* Ports cluster near a few values so ranges overlap and touch often. */
static void rnd_range(uint16_t *lo, uint16_t *hi)
{
	static const uint16_t w[] = {0, 0, 1, 2, 9, 10, 99, 65534};
	uint32_t l, width;

	switch (rnd_below(5)) {
	case 0:
		l = 1 + rnd_below(3);
		break;
	case 1:
		l = 65535 - rnd_below(12);
		break;
	case 2:
		l = 1 + rnd_below(65535);
		break;
	default:
		l = 1 + rnd_below(40);
		break;
	}
	width = rnd_below(4) ? w[rnd_below(8)] : rnd_below(30);
	if (tight)
		width = w[rnd_below(3) + 2];
	if (l + width > 65535)
		width = 65535 - l;
	*lo = (uint16_t)l;
	*hi = (uint16_t)(l + width);
}

/* Prefixes derived from a few base addresses at random lengths, so they
 * nest often; now and then the edges /0, /96 (all of IPv4) and /128.
 */
static void rnd_claims(struct rt_claim *c, size_t n, uint32_t napps)
{
	u128 base[6];
	unsigned nbase = 1 + rnd_below(6);

	for (unsigned i = 0; i < nbase; i++) {
		if (rnd_below(2))
			base[i] = V4MAP_LO | (u128)(0xc0000200u | rnd_below(256));
		else
			base[i] = ((u128)0x20010db8u << 96) | (rnd128() & rnd128() & rnd128());
	}
	for (size_t i = 0; i < n; i++) {
		u128 k = base[rnd_below(nbase)];
		int v4 = k >= V4MAP_LO && k <= V4MAP_HI;
		unsigned len;

		/* Flip a low bit sometimes: siblings and near misses. */
		if (rnd_below(3) == 0)
			k ^= (u128)1 << rnd_below(v4 ? 8 : 24);
		switch (rnd_below(tight ? 4 : 20)) {
		case 0:
			len = 0;
			break;
		case 1:
			len = 96;
			k = V4MAP_LO;
			break;
		case 2:
			len = 128;
			break;
		default:
			len = v4 ? 120 + rnd_below(9) : 32 + rnd_below(97);
			break;
		}
		c[i].prefix.addr = addr_of(k & mask_of(len));
		c[i].prefix.len = (uint8_t)len;
		rnd_range(&c[i].lo, &c[i].hi);
		c[i].app = rnd_below(napps);
	}
}

/* Points to probe around claim <c>: its first and last address and the
 * ones beyond them, one inside, with ports at and beyond its range ends.
 */
static void probe_points(const struct rt_claim *c, u128 *k, uint16_t *p)
{
	u128 first = key_of(&c->prefix.addr), last = first | ~mask_of(c->prefix.len);
	u128 ks[5] = {first, last, first - 1, last + 1,
		      first | (rnd128() & ~mask_of(c->prefix.len))};
	uint16_t ps[6] = {c->lo,
			  c->hi,
			  (uint16_t)(c->lo - 1),
			  (uint16_t)(c->hi + 1),
			  (uint16_t)(c->lo + rnd_below((uint32_t)(c->hi - c->lo) + 1)),
			  (uint16_t)rnd_below(65536)};

	*k = ks[rnd_below(5)];
	*p = ps[rnd_below(6)];
}

static void test_random_conflicts(void **state)
{
	struct rt_claim c[40];
	struct rt_conflict cf;
	int seen[2] = {0, 0};

	(void)state;
	for (uint64_t seed = 1; seed <= 3000; seed++) {
		tight = seed % 2;
		size_t n = 1 + seed % 40;
		struct rt *rt = NULL;
		int ret, expect;

		rng_state = seed * 7919;
		rnd_claims(c, n, 1 + rnd_below(4));
		tight = 0;
		expect = brute_has_conflict(c, n);
		ret = rt_build(c, n, &rt, &cf);
		seen[expect]++;
		if (expect) {
			assert_int_equal(ret, -EEXIST);
			assert_true(cf.a < cf.b && cf.b < n);
			assert_true(brute_pair_conflicts(&c[cf.a], &c[cf.b]));
		} else {
			assert_int_equal(ret, 0);
			rt_free(rt);
		}
	}
	print_message("conflict-free %d, conflicting %d\n", seen[0], seen[1]);
	/* Both outcomes must actually be exercised. */
	assert_true(seen[0] > 300 && seen[1] > 300);
}

/* Random conflict-free tables: rt_lookup and rt_first_claimed against the
 * brute force, and the cover against rt_lookup.
 */
static void test_random_lookup_and_cover(void **state)
{
	struct rt_claim c[64];
	struct elems es = {0};
	struct rt_conflict cf;
	long hits = 0, probes = 0, firsts = 0, ranges = 0;

	(void)state;
	for (uint64_t seed = 1; seed <= 1500; seed++) {
		size_t n = 1 + seed % 64;
		struct rt *rt = NULL;
		int ret;

		rng_state = seed * 104729;
		rnd_claims(c, n, 1 + rnd_below(5));
		/* Drop one claim of each conflicting pair until it builds. */
		while ((ret = rt_build(c, n, &rt, &cf)) == -EEXIST)
			c[cf.b] = c[--n];
		assert_int_equal(ret, 0);
		assert_false(brute_has_conflict(c, n));

		cover_all(rt, &es);
		check_cover_shape(&es);

		for (int t = 0; t < 400; t++) {
			u128 k;
			uint16_t p;
			struct in6_addr a;
			uint32_t got, want;

			if (t % 8 == 7) {
				/* Corners of cover elements and just beyond. */
				const struct elem *e = &es.e[rnd_below((uint32_t)es.n)];
				u128 ks[4] = {e->lo, e->hi, e->lo - 1, e->hi + 1};
				uint16_t ps[4] = {e->plo, e->phi, (uint16_t)(e->plo - 1),
						  (uint16_t)(e->phi + 1)};

				k = ks[rnd_below(4)];
				p = ps[rnd_below(4)];
			} else if (t % 8 == 6) {
				k = rnd_below(2) ? rnd128() : V4MAP_LO | (uint32_t)rnd();
				p = (uint16_t)rnd();
			} else {
				probe_points(&c[rnd_below((uint32_t)n)], &k, &p);
			}
			a = addr_of(k);
			got = rt_lookup(rt, &a, p);
			want = brute_lookup(c, n, k, p);
			if (got != want)
				fail_msg("seed %llu probe %d: got %u want %u",
					 (unsigned long long)seed, t, got, want);
			assert_int_equal(in_cover(&es, k, p), got != RT_NONE);
			hits += got != RT_NONE;
			probes++;
			if (t % 4 == 0) {
				/* rt_first_claimed of a range around the probe,
				 * against the brute force port by port.
				 */
				uint16_t lo = p > 150 ? (uint16_t)(p - rnd_below(150)) : 1;
				uint16_t hi = (uint16_t)(lo + rnd_below(300));
				uint16_t first = 0;

				if (hi < lo)
					hi = 65535;
				for (uint32_t q = lo; q <= hi && !first; q++)
					if (brute_lookup(c, n, k, (uint16_t)q) != RT_NONE)
						first = (uint16_t)q;
				if (rt_first_claimed(rt, &a, lo, hi) != first)
					fail_msg(
					    "seed %llu probe %d: first claimed of %u-%u: got %u "
					    "want %u",
					    (unsigned long long)seed, t, lo, hi,
					    rt_first_claimed(rt, &a, lo, hi), first);
				firsts += first != 0;
				ranges++;
			}
		}
		rt_free(rt);
	}
	free(es.e);
	print_message("hits %ld of %ld probes; %ld of %ld ranges claimed\n", hits, probes, firsts,
		      ranges);
	assert_true(firsts > ranges / 4 && firsts < ranges * 9 / 10);
	/* The probes must hit claims often, and miss them often too. */
	assert_true(hits > probes / 4 && hits < probes * 9 / 10);
}

/* Large tables, so rt_build makes its jump tables with many bits: prefixes
 * all over both families, half of them nested under earlier ones.
 */
static void test_random_large(void **state)
{
	enum { N = 3000 };
	struct rt_claim *c = calloc(N, sizeof(*c));
	struct rt_conflict cf;

	(void)state;
	assert_non_null(c);
	for (uint64_t seed = 1; seed <= 3; seed++) {
		size_t n = N;
		struct rt *rt = NULL;
		int ret;

		rng_state = seed * 15485863;
		for (size_t i = 0; i < n; i++) {
			u128 k = rnd_below(2) ? V4MAP_LO | (uint32_t)rnd() : rnd128();
			int v4 = k >= V4MAP_LO && k <= V4MAP_HI;
			unsigned len = v4 ? 96 + 8 + rnd_below(25) : 16 + rnd_below(113);

			if (i && rnd_below(2)) {
				/* Under (or next to) an earlier claim. */
				const struct rt_claim *o = &c[rnd_below((uint32_t)i)];

				k = key_of(&o->prefix.addr) | (rnd128() & ~mask_of(o->prefix.len));
				len = o->prefix.len + rnd_below(129u - o->prefix.len);
			}
			c[i].prefix.addr = addr_of(k & mask_of(len));
			c[i].prefix.len = (uint8_t)len;
			rnd_range(&c[i].lo, &c[i].hi);
			c[i].app = rnd_below(50);
		}
		while ((ret = rt_build(c, n, &rt, &cf)) == -EEXIST)
			c[cf.b] = c[--n];
		assert_int_equal(ret, 0);
		for (int t = 0; t < 3000; t++) {
			u128 k;
			uint16_t p;
			struct in6_addr a;

			probe_points(&c[rnd_below((uint32_t)n)], &k, &p);
			a = addr_of(k);
			assert_int_equal(rt_lookup(rt, &a, p), brute_lookup(c, n, k, p));
		}
		rt_free(rt);
	}
	free(c);
}

/* Tables shaped to reach every part of the lookup layout: clusters of
 * prefixes under a few bases at any depth (jump tables below jump tables,
 * strides cut short near /128), short claims covering whole jump blocks
 * (a slot's fallback, the IPv4 start's fallback), single-interval leaves
 * (inline maps) and prefixes with several claims or nested under claimed
 * ones (maps in the entry array, /128s among them). Checked against the
 * brute force, and the cover against rt_lookup.
 */
static void test_random_clustered(void **state)
{
	static const size_t sizes[] = {40, 300, 3000, 12000};
	struct rt_claim *c = calloc(12000, sizeof(*c));
	struct elems es = {0};
	struct rt_conflict cf;
	long hits = 0, probes = 0;

	(void)state;
	assert_non_null(c);
	for (uint64_t seed = 1; seed <= 12; seed++) {
		size_t n = sizes[seed % 4];
		u128 base[8];
		unsigned blen[8], nbase = 1 + rnd_below(8);
		struct rt *rt = NULL;
		int ret;

		rng_state = seed * 2654435761u;
		for (unsigned i = 0; i < nbase; i++) {
			/* IPv6 bases at any depth, IPv4 ones at /96../120. */
			if (rnd_below(3)) {
				blen[i] = 8 + rnd_below(113);
				base[i] = rnd128() & mask_of(blen[i]);
			} else {
				blen[i] = 96 + rnd_below(25);
				base[i] = (V4MAP_LO | (uint32_t)rnd()) & mask_of(blen[i]);
			}
		}
		for (size_t i = 0; i < n; i++) {
			unsigned b = rnd_below(nbase), len;
			u128 k;

			switch (rnd_below(40)) {
			case 0: /* covers everything, or all of IPv4 */
				len = rnd_below(2) ? 0 : 96;
				k = len ? V4MAP_LO : 0;
				break;
			case 1: /* a short prefix above a base: whole blocks */
				len = blen[b] ? rnd_below(blen[b]) : 0;
				k = base[b];
				break;
			case 2: /* anywhere */
				k = rnd_below(2) ? rnd128() : V4MAP_LO | (uint32_t)rnd();
				len = k >= V4MAP_LO && k <= V4MAP_HI ? 96 + rnd_below(33)
								     : rnd_below(129);
				break;
			default:
				k = base[b] | (rnd128() & ~mask_of(blen[b]));
				len = blen[b] + rnd_below(129 - blen[b]);
				/* Often a host or near-host prefix: leaves. */
				if (rnd_below(2))
					len = 128 - rnd_below(4) < len ? len : 128 - rnd_below(4);
				break;
			}
			if (i && rnd_below(4) == 0) {
				/* Another claim on an earlier prefix: a longer map. */
				c[i] = c[rnd_below((uint32_t)i)];
				rnd_range(&c[i].lo, &c[i].hi);
			} else {
				c[i].prefix.addr = addr_of(k & mask_of(len));
				c[i].prefix.len = (uint8_t)len;
				if (rnd_below(2)) {
					/* One whole range per app, as most configs. */
					c[i].lo = 1;
					c[i].hi = 65535;
				} else {
					rnd_range(&c[i].lo, &c[i].hi);
				}
			}
			c[i].app = rnd_below(1000);
		}
		while ((ret = rt_build(c, n, &rt, &cf)) == -EEXIST)
			c[cf.b] = c[--n];
		assert_int_equal(ret, 0);
		cover_all(rt, &es);
		check_cover_shape(&es);
		for (int t = 0; t < 4000; t++) {
			u128 k;
			uint16_t p;
			struct in6_addr a;
			uint32_t got, want;

			if (t % 4 == 3) {
				/* Near a base: in it, just outside, or a sibling. */
				unsigned b = rnd_below(nbase);

				k = base[b] | (rnd128() & ~mask_of(blen[b]));
				if (rnd_below(4) == 0)
					k ^= (u128)1
					     << (127 -
						 rnd_below(blen[b] + 1 > 128 ? 128 : blen[b] + 1));
				p = (uint16_t)rnd();
			} else if (t % 8 == 2) {
				const struct elem *e = &es.e[rnd_below((uint32_t)es.n)];
				u128 ks[4] = {e->lo, e->hi, e->lo - 1, e->hi + 1};

				k = ks[rnd_below(4)];
				p = rnd_below(2) ? e->plo : e->phi;
			} else {
				probe_points(&c[rnd_below((uint32_t)n)], &k, &p);
			}
			a = addr_of(k);
			got = rt_lookup(rt, &a, p);
			want = brute_lookup(c, n, k, p);
			if (got != want)
				fail_msg("seed %llu n %zu probe %d: got %u want %u",
					 (unsigned long long)seed, n, t, got, want);
			if (t % 16 == 0)
				assert_int_equal(in_cover(&es, k, p), got != RT_NONE);
			hits += got != RT_NONE;
			probes++;
		}
		rt_free(rt);
	}
	free(es.e);
	free(c);
	print_message("hits %ld of %ld probes\n", hits, probes);
	assert_true(hits > probes / 4 && hits < probes * 19 / 20);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_nesting_and_fallback),
	    cmocka_unit_test(test_fallback_partial),
	    cmocka_unit_test(test_narrowest_wins),
	    cmocka_unit_test(test_conflict),
	    cmocka_unit_test(test_same_app_overlap),
	    cmocka_unit_test(test_mixed_families),
	    cmocka_unit_test(test_edges),
	    cmocka_unit_test(test_port_edges),
	    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_invalid),
	    cmocka_unit_test(test_cover_hand),
	    cmocka_unit_test(test_cover_stop),
	    cmocka_unit_test(test_random_conflicts),
	    cmocka_unit_test(test_random_lookup_and_cover),
	    cmocka_unit_test(test_random_large),
	    cmocka_unit_test(test_random_clustered),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_lb.c - unit tests of the load balancer: each algorithm against a
 * reference (nginx's published smooth WRR sequence, a brute-force least
 * active/weight scan, weight shares, the consistency rules of lb.h).
 *
 * The sets are built by hand (origin_set and origin are plain structs).
 * lb.c is included rather than linked so that the Maglev table itself can
 * be inspected (its balance is a property of the table, not of the picks).
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lb.c"

#define MAXO 16

struct tset {
	struct origin o[MAXO];
	struct origin *v[MAXO];
	struct origin_set set;
};

/* Origin i is 198.51.100.<host[i]>:8080, so two sets can share identities. */
static void tset_build(struct tset *ts, enum cfg_balance algo, size_t n, const uint8_t *host,
		       const uint32_t *weight, const bool *backup)
{
	memset(ts, 0, sizeof(*ts));
	for (size_t i = 0; i < n; i++) {
		struct origin *o = &ts->o[i];
		struct sockaddr_in *sin = (struct sockaddr_in *)&o->addr;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(8080);
		sin->sin_addr.s_addr = htonl(0xc6336400u | (host ? host[i] : 10 + i));
		o->weight = weight ? weight[i] : 1;
		o->backup = backup ? backup[i] : false;
		o->up = 1;
		ts->v[i] = o;
	}
	ts->set.v = ts->v;
	ts->set.n = n;
	ts->set.lb = lb_table_new(algo, &ts->set, NULL);
	assert_non_null(ts->set.lb);
}

static void tset_free(struct tset *ts)
{
	lb_table_free(ts->set.lb);
	ts->set.lb = NULL;
}

static bool all_usable(size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return true;
}

/* arg: a uint32_t bit mask of origins that are down. */
static bool mask_usable(size_t i, void *arg)
{
	return !(*(uint32_t *)arg & (1u << i));
}

static uint64_t test_rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	test_rng ^= test_rng << 13;
	test_rng ^= test_rng >> 7;
	test_rng ^= test_rng << 17;
	return test_rng;
}

/* Client c: IPv4 (v4-mapped) for even c, IPv6 in 2001:db8::/32 for odd. */
static struct in6_addr client(uint64_t c)
{
	struct in6_addr a;
	uint64_t x = mix64(c + 1);

	memset(&a, 0, sizeof(a));
	if (c % 2 == 0) {
		a.s6_addr[10] = a.s6_addr[11] = 0xff;
		memcpy(a.s6_addr + 12, &x, 4);
	} else {
		a.s6_addr[0] = 0x20;
		a.s6_addr[1] = 0x01;
		a.s6_addr[2] = 0x0d;
		a.s6_addr[3] = 0xb8;
		memcpy(a.s6_addr + 8, &x, 8);
	}
	return a;
}

static const char *algo_name(enum cfg_balance a)
{
	static const char *names[] = {"round_robin", "least_conn", "maglev", "random_two",
				      "source_hash"};

	return names[a];
}

/* Asserts that count[i] / total is within <tol> (relative) of the weight
 * share of each origin i, and prints the measured shares.
 */
static void check_shares(const char *what, const size_t *count, const uint32_t *weight, size_t n,
			 double tol)
{
	uint64_t total = 0, wsum = 0;
	double worst = 0;

	for (size_t i = 0; i < n; i++) {
		total += count[i];
		wsum += weight[i];
	}
	print_message("%-34s", what);
	for (size_t i = 0; i < n; i++) {
		double want = (double)weight[i] / wsum, got = (double)count[i] / total;
		double dev = want > 0 ? (got - want) / want : got;

		print_message(" w%u:%.4f", weight[i], got);
		if (dev < 0)
			dev = -dev;
		if (dev > worst)
			worst = dev;
	}
	print_message("  (max dev %.2f%%)\n", worst * 100);
	assert_true(worst <= tol);
}

static void test_rr_nginx_sequence(void **state)
{
	/* nginx's documented sequence for weights {5,1,1}:
	 * a a b a c a a, repeating every 7 picks. */
	static const uint32_t w[] = {5, 1, 1};
	static const size_t want[] = {0, 0, 1, 0, 2, 0, 0};
	struct tset ts;
	struct lb_worker lw;

	(void)state;
	tset_build(&ts, CFG_LB_ROUND_ROBIN, 3, NULL, w, NULL);
	lb_worker_init(&lw, 1);
	lw.rr = 0; /* ties by index, as nginx */
	for (int k = 0; k < 70; k++) {
		struct in6_addr c = client(k);

		assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &ts.set, &lw, &c, all_usable, NULL),
				 want[k % 7]);
	}
	lb_worker_deinit(&lw);
	tset_free(&ts);
}

static void test_rr_distribution(void **state)
{
	static const uint32_t w[] = {1, 2, 3, 4, 0, 10};
	struct tset ts;
	struct lb_worker lw;
	size_t count[6] = {0}, period[6] = {0};

	(void)state;
	tset_build(&ts, CFG_LB_ROUND_ROBIN, 6, NULL, w, NULL);
	lb_worker_init(&lw, 2);
	for (int k = 0; k < 10000; k++) {
		struct in6_addr c = client(k);
		size_t i = lb_pick(CFG_LB_ROUND_ROBIN, &ts.set, &lw, &c, all_usable, NULL);

		assert_true(i < 6);
		count[i]++;
		period[i]++;
		/* Smooth WRR is exact over each period of sum(w) = 20 picks. */
		if (k % 20 == 19) {
			for (size_t j = 0; j < 6; j++)
				assert_int_equal(period[j], w[j]);
			memset(period, 0, sizeof(period));
		}
	}
	assert_int_equal(count[4], 0);
	check_shares("round_robin 10k {1,2,3,4,0,10}", count, w, 6, 0.05);

	/* An origin down: its share goes to the others, still by weight. */
	{
		uint32_t down = 1u << 5;
		static const uint32_t w2[] = {1, 2, 3, 4, 0, 0};

		memset(count, 0, sizeof(count));
		for (int k = 0; k < 10000; k++)
			count[lb_pick(CFG_LB_ROUND_ROBIN, &ts.set, &lw, NULL, mask_usable,
				      &down)]++;
		check_shares("round_robin 10k, w10 down", count, w2, 6, 0.05);
	}
	lb_worker_deinit(&lw);
	tset_free(&ts);
}

/* Every worker's current weights start at zero, so its first pick is a
 * tie of all origins: workers numbered 0..n-1 (worker.c sets rr) must not
 * all send their first connection to origin 0, and each must still pick
 * every origin exactly w times per sum(w) picks.
 */
static void test_rr_workers_start_apart(void **state)
{
	static const uint32_t eq[] = {1, 1, 1, 1}, uneq[] = {3, 1, 2, 2};
	struct tset a, b;

	(void)state;
	tset_build(&a, CFG_LB_ROUND_ROBIN, 4, NULL, eq, NULL);
	tset_build(&b, CFG_LB_ROUND_ROBIN, 4, NULL, uneq, NULL);
	for (uint32_t id = 0; id < 8; id++) {
		struct lb_worker lw;
		size_t period[4] = {0};

		lb_worker_init(&lw, id + 1);
		lw.rr = id;
		assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL),
				 id % 4);
		for (int k = 0; k < 8 * 10; k++) {
			period[lb_pick(CFG_LB_ROUND_ROBIN, &b.set, &lw, NULL, all_usable, NULL)]++;
			if (k % 8 == 7) {
				for (size_t j = 0; j < 4; j++)
					assert_int_equal(period[j], uneq[j]);
				memset(period, 0, sizeof(period));
			}
		}
		lb_worker_deinit(&lw);
	}
	tset_free(&a);
	tset_free(&b);
}

static void test_rr_set_change(void **state)
{
	static const uint32_t w3[] = {5, 1, 1}, w2[] = {1, 1}, w1[] = {1, 1, 1};
	struct tset a, b;
	struct lb_worker lw;

	(void)state;
	tset_build(&a, CFG_LB_ROUND_ROBIN, 3, NULL, w3, NULL);
	tset_build(&b, CFG_LB_ROUND_ROBIN, 2, NULL, w2, NULL);
	lb_worker_init(&lw, 3);
	lw.rr = 0;
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	/* A new set restarts the sequence from zeroed current weights. */
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &b.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lw.n, 2);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &b.set, &lw, NULL, all_usable, NULL), 1);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 1);
	tset_free(&b);
	/* Also for a set of the same size: current weights {-4,2,2} after
	 * two picks of {5,1,1} must not carry over to {1,1,1} (would pick 1). */
	tset_build(&b, CFG_LB_ROUND_ROBIN, 3, NULL, w1, NULL);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &b.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &b.set, &lw, NULL, all_usable, NULL), 0);
	/* A new set where a freed one was (the same address and size) is
	 * told apart by its id: {-4,2,2} would pick 1.
	 */
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	a.set.id++;
	assert_int_equal(lb_pick(CFG_LB_ROUND_ROBIN, &a.set, &lw, NULL, all_usable, NULL), 0);
	lb_worker_deinit(&lw);
	tset_free(&a);
	tset_free(&b);
}

/* Steady-state simulation for the load-aware algorithms: <conns> open
 * connections; each step closes a random one and opens a new one through
 * lb_pick. Counts the picks; calls <check> after every pick.
 */
struct sim {
	struct tset *ts;
	struct lb_worker lw;
	size_t conn[256]; /* origin of each open connection */
	size_t nconn;
	size_t count[MAXO];
};

static size_t sim_open(struct sim *s, enum cfg_balance algo)
{
	struct in6_addr c = client(rnd());
	size_t i = lb_pick(algo, &s->ts->set, &s->lw, &c, all_usable, NULL);

	assert_true(i < s->ts->set.n);
	s->ts->o[i].active++;
	s->conn[s->nconn++] = i;
	s->count[i]++;
	return i;
}

static void sim_close_random(struct sim *s)
{
	size_t k = rnd() % s->nconn;

	s->ts->o[s->conn[k]].active--;
	s->conn[k] = s->conn[--s->nconn];
}

/* Reference for least_conn: is <i> among the origins of least
 * active/weight (computed before the pick)?
 */
static bool least_ref(const struct tset *ts, size_t i)
{
	for (size_t j = 0; j < ts->set.n; j++)
		if (ts->o[j].weight && (uint64_t)ts->o[j].active * ts->o[i].weight <
					   (uint64_t)ts->o[i].active * ts->o[j].weight)
			return false;
	return true;
}

static void test_least_conn(void **state)
{
	static const uint32_t eq[] = {1, 1, 1, 1, 1}, uneq[] = {1, 2, 3, 4};
	struct tset ts;
	struct sim s;

	(void)state;
	/* Equal weights: active counts never differ by more than one. */
	tset_build(&ts, CFG_LB_LEAST_CONN, 5, NULL, eq, NULL);
	memset(&s, 0, sizeof(s));
	s.ts = &ts;
	lb_worker_init(&s.lw, 4);
	for (int k = 0; k < 50; k++)
		sim_open(&s, CFG_LB_LEAST_CONN);
	memset(s.count, 0, sizeof(s.count));
	for (int k = 0; k < 10000; k++) {
		uint32_t lo = UINT32_MAX, hi = 0;

		sim_close_random(&s);
		sim_open(&s, CFG_LB_LEAST_CONN);
		for (size_t j = 0; j < 5; j++) {
			lo = ts.o[j].active < lo ? ts.o[j].active : lo;
			hi = ts.o[j].active > hi ? ts.o[j].active : hi;
		}
		assert_true(hi - lo <= 1);
	}
	check_shares("least_conn 10k sim {1,1,1,1,1}", s.count, eq, 5, 0.05);
	lb_worker_deinit(&s.lw);
	tset_free(&ts);

	/* Unequal weights: every pick is a least active/weight origin. */
	tset_build(&ts, CFG_LB_LEAST_CONN, 4, NULL, uneq, NULL);
	memset(&s, 0, sizeof(s));
	s.ts = &ts;
	lb_worker_init(&s.lw, 5);
	for (int k = 0; k < 100; k++)
		sim_open(&s, CFG_LB_LEAST_CONN);
	memset(s.count, 0, sizeof(s.count));
	for (int k = 0; k < 10000; k++) {
		struct in6_addr c = client(k);
		size_t i;

		sim_close_random(&s);
		i = lb_pick(CFG_LB_LEAST_CONN, &ts.set, &s.lw, &c, all_usable, NULL);
		assert_true(least_ref(&ts, i));
		ts.o[i].active++;
		s.conn[s.nconn++] = i;
		s.count[i]++;
	}
	check_shares("least_conn 10k sim {1,2,3,4}", s.count, uneq, 4, 0.05);
	lb_worker_deinit(&s.lw);
	tset_free(&ts);
}

static void test_least_conn_ties_rotate(void **state)
{
	struct tset ts;
	struct lb_worker lw;
	size_t count[5] = {0};

	(void)state;
	/* No connection ever opens: all tie at 0 and must share the picks. */
	tset_build(&ts, CFG_LB_LEAST_CONN, 5, NULL, NULL, NULL);
	lb_worker_init(&lw, 6);
	for (int k = 0; k < 1000; k++)
		count[lb_pick(CFG_LB_LEAST_CONN, &ts.set, &lw, NULL, all_usable, NULL)]++;
	for (size_t i = 0; i < 5; i++)
		assert_int_equal(count[i], 200);
	lb_worker_deinit(&lw);
	tset_free(&ts);
}

static void test_random_two(void **state)
{
	static const uint32_t uneq[] = {1, 2, 3, 4};
	struct tset ts;
	struct sim s;
	struct lb_worker lw;
	size_t count[3] = {0};

	(void)state;
	/* Idle origins: both draws tie, the first (drawn by weight) wins. */
	tset_build(&ts, CFG_LB_RANDOM_TWO, 4, NULL, uneq, NULL);
	memset(&s, 0, sizeof(s));
	s.ts = &ts;
	lb_worker_init(&s.lw, 7);
	for (int k = 0; k < 100000; k++) {
		size_t i = lb_pick(CFG_LB_RANDOM_TWO, &ts.set, &s.lw, NULL, all_usable, NULL);

		assert_true(i < 4);
		s.count[i]++;
	}
	check_shares("random_two 100k idle {1,2,3,4}", s.count, uneq, 4, 0.05);

	/* Under load (steady state, 200 connections). */
	for (int k = 0; k < 200; k++)
		sim_open(&s, CFG_LB_RANDOM_TWO);
	memset(s.count, 0, sizeof(s.count));
	for (int k = 0; k < 10000; k++) {
		sim_close_random(&s);
		sim_open(&s, CFG_LB_RANDOM_TWO);
	}
	check_shares("random_two 10k sim {1,2,3,4}", s.count, uneq, 4, 0.05);
	lb_worker_deinit(&s.lw);
	tset_free(&ts);

	/* Unequal load, equal weights: of a random pair of distinct origins
	 * the less loaded wins, so the idle one gets 2/3, the middle 1/3 and
	 * the busiest none. */
	tset_build(&ts, CFG_LB_RANDOM_TWO, 3, NULL, NULL, NULL);
	ts.o[1].active = 50;
	ts.o[2].active = 100;
	lb_worker_init(&lw, 8);
	for (int k = 0; k < 30000; k++)
		count[lb_pick(CFG_LB_RANDOM_TWO, &ts.set, &lw, NULL, all_usable, NULL)]++;
	print_message("random_two active {0,50,100}: %.4f %.4f %.4f\n", count[0] / 30000.0,
		      count[1] / 30000.0, count[2] / 30000.0);
	assert_int_equal(count[2], 0);
	assert_true(count[0] > 19000 && count[0] < 21000);
	assert_true(count[1] > 9000 && count[1] < 11000);
	lb_worker_deinit(&lw);
	tset_free(&ts);
}

static void test_maglev_table_balance(void **state)
{
	static const uint32_t eq[] = {1, 1, 1, 1, 1}, uneq[] = {1, 2, 3, 4, 10};
	const uint32_t *ws[] = {eq, uneq};
	struct tset ts;

	(void)state;
	for (int k = 0; k < 2; k++) {
		const struct lb_table *t;
		size_t count[5] = {0};

		tset_build(&ts, CFG_LB_MAGLEV, 5, NULL, ws[k], NULL);
		t = ts.set.lb;
		assert_int_equal(t->m, 65537);
		for (uint32_t e = 0; e < t->m; e++) {
			assert_true(t->tier[0].tab[e] < 5);
			count[t->tier[0].tab[e]]++;
		}
		check_shares(k ? "maglev entries {1,2,3,4,10}" : "maglev entries {1,1,1,1,1}",
			     count, ws[k], 5, 0.01);
		tset_free(&ts);
	}
	/* Table size: the first prime at or above 65537 * 2^k that gives
	 * each origin 100 entries. */
	assert_int_equal(maglev_size(1), 65537);
	assert_int_equal(maglev_size(655), 65537);
	assert_int_equal(maglev_size(656), 131101);
	assert_int_equal(maglev_size(1000), 131101);
	assert_int_equal(maglev_size(1311), 262151);
	assert_true(is_prime(131101) && !is_prime(131099) && is_prime(262151));
}

/* Runs <n> clients through <set> and stores each client's origin host
 * octet (the identity, not the index) in <out>.
 */
static void map_clients(enum cfg_balance algo, struct tset *ts, uint32_t down, uint8_t *out,
			size_t n)
{
	struct lb_worker lw;

	lb_worker_init(&lw, 9);
	for (size_t c = 0; c < n; c++) {
		struct in6_addr a = client(c);
		size_t i = lb_pick(algo, &ts->set, &lw, &a, mask_usable, &down);

		assert_true(i < ts->set.n);
		assert_false(down & (1u << i));
		out[c] = ntohl(((struct sockaddr_in *)&ts->o[i].addr)->sin_addr.s_addr) & 0xff;
	}
	lb_worker_deinit(&lw);
}

/* The consistency rules of lb.h for maglev and source_hash. */
static void check_consistency(enum cfg_balance algo, double removal_slack)
{
	enum { N = 100000 };
	static const uint8_t host5[] = {10, 11, 12, 13, 14}, host4[] = {10, 11, 12, 14};
	static const uint32_t w5[] = {1, 2, 3, 4, 5}, w4[] = {1, 2, 3, 5};
	static uint8_t m1[N], m2[N], m3[N];
	struct tset a, b, c;
	size_t count[5] = {0}, moved = 0, others = 0;
	char what[64];

	tset_build(&a, algo, 5, host5, w5, NULL);
	tset_build(&b, algo, 5, host5, w5, NULL);
	map_clients(algo, &a, 0, m1, N);

	/* Deterministic: a second table of the same set maps the same. */
	map_clients(algo, &b, 0, m2, N);
	assert_memory_equal(m1, m2, N);
	for (size_t k = 0; k < N; k++)
		count[m1[k] - 10]++;
	snprintf(what, sizeof(what), "%s 100k clients {1,2,3,4,5}", algo_name(algo));
	check_shares(what, count, w5, 5, 0.05);

	/* Origin 13 down (usable callback): exactly its clients move. */
	map_clients(algo, &a, 1u << 3, m3, N);
	for (size_t k = 0; k < N; k++) {
		if (m1[k] == 13)
			moved++;
		else
			assert_int_equal(m3[k], m1[k]);
	}
	assert_true(moved > N / 20);
	/* ...and spread over the others, not all onto one neighbour. */
	memset(count, 0, sizeof(count));
	for (size_t k = 0; k < N; k++)
		if (m1[k] == 13)
			count[m3[k] - 10]++;
	for (size_t i = 0; i < 5; i++)
		assert_true(i == 3 ? count[i] == 0 : count[i] > 0);

	/* A set rebuilt without origin 13: its clients move, and of the
	 * others at most <removal_slack>. */
	tset_build(&c, algo, 4, host4, w4, NULL);
	map_clients(algo, &c, 0, m2, N);
	for (size_t k = 0; k < N; k++) {
		assert_int_not_equal(m2[k], 13);
		if (m1[k] != 13 && m2[k] != m1[k])
			others++;
	}
	print_message("%s: origin down moved %zu of %d (exactly its own); removed from the "
		      "set moved %zu others (%.3f%%)\n",
		      algo_name(algo), moved, N, others, 100.0 * others / N);
	assert_true(others <= removal_slack * N);
	tset_free(&a);
	tset_free(&b);
	tset_free(&c);
}

static void test_maglev_consistency(void **state)
{
	(void)state;
	check_consistency(CFG_LB_MAGLEV, 0.02);
}

static void test_source_hash_consistency(void **state)
{
	(void)state;
	/* Rendezvous hashing is exact: nobody else moves. */
	check_consistency(CFG_LB_SOURCE_HASH, 0);
}

/* A heap set of <n> origins 10.x.y.z:8080 (distinct identities from <base>). */
static struct origin_set *big_set(size_t n, uint32_t base, const struct lb_table *prev)
{
	struct origin_set *s = calloc(1, sizeof(*s));

	assert_non_null(s);
	s->v = calloc(n, sizeof(*s->v));
	assert_non_null(s->v);
	for (size_t i = 0; i < n; i++) {
		struct origin *o = calloc(1, sizeof(*o));
		struct sockaddr_in *sin = (struct sockaddr_in *)&o->addr;

		assert_non_null(o);
		sin->sin_family = AF_INET;
		sin->sin_port = htons(8080);
		sin->sin_addr.s_addr = htonl(0x0a000000u + base + (uint32_t)i);
		o->weight = 1;
		o->up = 1;
		s->v[i] = o;
	}
	s->n = n;
	s->lb = lb_table_new(CFG_LB_MAGLEV, s, prev);
	assert_non_null(s->lb);
	return s;
}

static void big_set_free(struct origin_set *s)
{
	lb_table_free(s->lb);
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	free(s);
}

/* The share of <n> clients that <a> and <b> (which lacks <a>'s first
 * origin) send to different origins, among those <a> does not send to
 * that first origin.
 */
static double moved_share(struct origin_set *a, struct origin_set *b, size_t n)
{
	struct lb_worker lw;
	size_t moved = 0, others = 0;

	lb_worker_init(&lw, 3);
	for (size_t c = 0; c < n; c++) {
		struct in6_addr cl = client(c);
		size_t i = lb_pick(CFG_LB_MAGLEV, a, &lw, &cl, all_usable, NULL);
		size_t j = lb_pick(CFG_LB_MAGLEV, b, &lw, &cl, all_usable, NULL);

		if (i == 0)
			continue;
		others++;
		moved += memcmp(&a->v[i]->addr, &b->v[j]->addr, sizeof(a->v[i]->addr)) != 0;
	}
	lb_worker_deinit(&lw);
	return (double)moved / (double)others;
}

/* A large maglev set that loses one address (a name's answer shrinks)
 * moves only that address's clients, also where the smaller set alone
 * would get a smaller table: the new table keeps the old one's size. A
 * table's size used to follow the set's (a prime >= 100 per origin), so
 * any change of a set of 656 or more moved nearly every client.
 */
static void test_maglev_size_kept_across_rebuilds(void **state)
{
	static const size_t sizes[] = {700, 1311};

	(void)state;
	for (size_t k = 0; k < 2; k++) {
		size_t n = sizes[k];
		struct origin_set *a = big_set(n, 0, NULL);
		struct origin_set *b = big_set(n - 1, 1, a->lb); /* without a's first */
		double share = moved_share(a, b, 20000);

		print_message("maglev %zu -> %zu origins: table %u -> %u, %.2f%% of the others' "
			      "clients moved\n",
			      n, n - 1, a->lb->m, b->lb->m, 100 * share);
		assert_int_equal(b->lb->m, a->lb->m);
		assert_true(share < 0.02);
		big_set_free(b);
		/* Without the table it replaces, 1310 origins take a smaller one. */
		if (n == 1311) {
			b = big_set(n - 1, 1, NULL);
			assert_true(b->lb->m < a->lb->m);
			big_set_free(b);
		}
		big_set_free(a);
	}
}

/* Two origins on one address whose ports come from the client's (ranges
 * mapped by offset) are two identities to source_hash: weights 3 and 1
 * share the clients 3:1. They used to hash alike, and one took them all.
 */
static void test_source_hash_origins_on_one_address(void **state)
{
	struct cfg_origin co[2] = {{.port_mode = CFG_PORT_MAP, .port = 9000},
				   {.port_mode = CFG_PORT_MAP, .port = 10000}};
	static const uint32_t w[] = {3, 1};
	struct tset ts;
	struct lb_worker lw;
	size_t count[2] = {0};

	(void)state;
	tset_build(&ts, CFG_LB_SOURCE_HASH, 2, (const uint8_t[]){10, 10}, w, NULL);
	for (int i = 0; i < 2; i++) {
		ts.o[i].co = &co[i];
		((struct sockaddr_in *)&ts.o[i].addr)->sin_port = 0;
	}
	lb_table_free(ts.set.lb);
	ts.set.lb = lb_table_new(CFG_LB_SOURCE_HASH, &ts.set, NULL);
	assert_non_null(ts.set.lb);
	lb_worker_init(&lw, 5);
	for (uint64_t c = 0; c < 100000; c++) {
		struct in6_addr a = client(c);

		count[lb_pick(CFG_LB_SOURCE_HASH, &ts.set, &lw, &a, all_usable, NULL)]++;
	}
	lb_worker_deinit(&lw);
	check_shares("source_hash, one address, ports 9000+ w3 and 10000+ w1", count, w, 2, 0.02);
	tset_free(&ts);
}

static void test_hash_same_client(void **state)
{
	static const enum cfg_balance algos[] = {CFG_LB_MAGLEV, CFG_LB_SOURCE_HASH};
	struct tset ts;
	struct lb_worker lw;

	(void)state;
	for (size_t k = 0; k < 2; k++) {
		tset_build(&ts, algos[k], 7, NULL, NULL, NULL);
		lb_worker_init(&lw, 10);
		for (uint64_t c = 0; c < 100; c++) {
			struct in6_addr a = client(c);
			size_t first = lb_pick(algos[k], &ts.set, &lw, &a, all_usable, NULL);

			for (int r = 0; r < 20; r++)
				assert_int_equal(
				    lb_pick(algos[k], &ts.set, &lw, &a, all_usable, NULL), first);
		}
		lb_worker_deinit(&lw);
		tset_free(&ts);
	}
}

static void test_backups(void **state)
{
	/* 0,1 primaries; 2 primary of weight 0; 3,4 backups; 5 backup of
	 * weight 0. */
	static const uint32_t w[] = {1, 3, 0, 1, 1, 0};
	static const bool bk[] = {false, false, false, true, true, true};
	static const uint32_t wprim[] = {1, 3, 0, 0, 0, 0}, wback[] = {0, 0, 0, 1, 1, 0};

	(void)state;
	for (enum cfg_balance algo = CFG_LB_ROUND_ROBIN; algo <= CFG_LB_SOURCE_HASH; algo++) {
		struct tset ts;
		struct lb_worker lw;
		uint32_t down;
		size_t count[6] = {0};
		char what[64];

		tset_build(&ts, algo, 6, NULL, w, bk);
		lb_worker_init(&lw, 11);
		down = 0;
		for (uint64_t c = 0; c < 100000; c++) {
			struct in6_addr a = client(c);

			count[lb_pick(algo, &ts.set, &lw, &a, mask_usable, &down)]++;
		}
		snprintf(what, sizeof(what), "%s primaries", algo_name(algo));
		check_shares(what, count, wprim, 6, 0.05);

		/* One primary down: the other primary takes all, no backup. */
		down = 1u << 1;
		for (uint64_t c = 0; c < 1000; c++) {
			struct in6_addr a = client(c);

			assert_int_equal(lb_pick(algo, &ts.set, &lw, &a, mask_usable, &down), 0);
		}

		/* All primaries down: backups, by the same algorithm. */
		down = 1u << 0 | 1u << 1;
		memset(count, 0, sizeof(count));
		for (uint64_t c = 0; c < 100000; c++) {
			struct in6_addr a = client(c);

			count[lb_pick(algo, &ts.set, &lw, &a, mask_usable, &down)]++;
		}
		snprintf(what, sizeof(what), "%s backups", algo_name(algo));
		check_shares(what, count, wback, 6, 0.05);

		/* Nothing usable (weight 0 origins do not count). */
		down = 1u << 0 | 1u << 1 | 1u << 3 | 1u << 4;
		for (uint64_t c = 0; c < 100; c++) {
			struct in6_addr a = client(c);

			assert_true(lb_pick(algo, &ts.set, &lw, &a, mask_usable, &down) == LB_NONE);
		}
		lb_worker_deinit(&lw);
		tset_free(&ts);
	}
}

static void test_empty_and_no_table(void **state)
{
	struct tset ts;
	struct lb_worker lw;

	(void)state;
	lb_worker_init(&lw, 12);
	for (enum cfg_balance algo = CFG_LB_ROUND_ROBIN; algo <= CFG_LB_SOURCE_HASH; algo++) {
		struct in6_addr a = client(1);

		tset_build(&ts, algo, 0, NULL, NULL, NULL);
		assert_true(lb_pick(algo, &ts.set, &lw, &a, all_usable, NULL) == LB_NONE);
		tset_free(&ts);

		/* A set without (or with a foreign) table still balances:
		 * maglev falls back to rendezvous hashing. */
		tset_build(&ts, algo, 3, NULL, NULL, NULL);
		lb_table_free(ts.set.lb);
		ts.set.lb = NULL;
		for (uint64_t c = 0; c < 100; c++) {
			a = client(c);
			assert_true(lb_pick(algo, &ts.set, &lw, &a, all_usable, NULL) < 3);
		}
		ts.set.lb = lb_table_new(algo == CFG_LB_MAGLEV ? CFG_LB_ROUND_ROBIN : CFG_LB_MAGLEV,
					 &ts.set, NULL);
		assert_non_null(ts.set.lb);
		for (uint64_t c = 0; c < 100; c++) {
			a = client(c);
			assert_true(lb_pick(algo, &ts.set, &lw, &a, all_usable, NULL) < 3);
		}
		tset_free(&ts);
	}
	lb_worker_deinit(&lw);
}

static void test_ln_unit(void **state)
{
	/* Reference values of ln (to 16 digits). */
	static const struct {
		double u, ln;
	} ref[] = {
	    {0.5, -0.6931471805599453},		{0.25, -1.3862943611198906},
	    {0.1, -2.3025850929940455},		{0.9, -0.10536051565782628},
	    {0.999999, -1.000000500029089e-06}, {1e-10, -23.025850929940457},
	    {0.7071, -0.346583180371942},
	};

	(void)state;
	for (size_t k = 0; k < sizeof(ref) / sizeof(ref[0]); k++) {
		double d = ln_unit(ref[k].u) - ref[k].ln;

		assert_true(d < 1e-13 * -ref[k].ln && d > -1e-13 * -ref[k].ln);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rr_nginx_sequence),
	    cmocka_unit_test(test_rr_distribution),
	    cmocka_unit_test(test_rr_workers_start_apart),
	    cmocka_unit_test(test_rr_set_change),
	    cmocka_unit_test(test_least_conn),
	    cmocka_unit_test(test_least_conn_ties_rotate),
	    cmocka_unit_test(test_random_two),
	    cmocka_unit_test(test_maglev_table_balance),
	    cmocka_unit_test(test_maglev_consistency),
	    cmocka_unit_test(test_source_hash_consistency),
	    cmocka_unit_test(test_maglev_size_kept_across_rebuilds),
	    cmocka_unit_test(test_source_hash_origins_on_one_address),
	    cmocka_unit_test(test_hash_same_client),
	    cmocka_unit_test(test_backups),
	    cmocka_unit_test(test_empty_and_no_table),
	    cmocka_unit_test(test_ln_unit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

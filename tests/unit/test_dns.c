/* test_dns.c - the resolver thread, with stub resolvers: a name that many
 * apps list is resolved once per round, not once per app; a slow lookup
 * does not stop the refreshes; an unchanged answer keeps the set; a
 * resolver that is down neither floods the log nor holds up dns_stop.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "addr.h"
#include "cfg.h"
#include "dns.h"
#include "origin.h"
#include "timer.h"

enum { APPS = 50, REFRESH_MS = 50 };

static int calls; /* atomic: the resolver runs in the dns thread */

static int stub_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	bool has_port;
	const char *w;

	__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
	if (strcmp(host, "one.test") != 0) {
		*why = "Name or service not known";
		return -ENOENT;
	}
	*addrs = calloc(1, sizeof(**addrs));
	assert_non_null(*addrs);
	assert_int_equal(addr_parse_hostport("198.51.100.9", *addrs, &has_port, &w), 0);
	*n = 1;
	return 0;
}

/* Loads <n> apps, each naming "one.test:80" (<own> false) or a name of
 * its own ("d<i>.test:80"), refreshed every REFRESH_MS, through the
 * resolver set in cfg_resolver.
 */
static struct cfg *load_apps(int n, bool own)
{
	char *yaml = malloc((size_t)n * 160 + 16), *errors = NULL;
	struct cfg *cfg = NULL;
	size_t o = 0;

	assert_non_null(yaml);
	o += (size_t)sprintf(yaml, "apps:\n");
	for (int i = 0; i < n; i++) {
		char name[32] = "one.test";

		if (own)
			snprintf(name, sizeof(name), "d%d.test", i);
		o += (size_t)sprintf(yaml + o,
				     "  - {name: a%d, edge: 192.0.2.%d, ports: 80, origins: "
				     "\"%s:80\", dns: {refresh: %dms}}\n",
				     i, i + 1, name, REFRESH_MS);
	}
	assert_int_equal(cfg_load_buf("t.yaml", yaml, o, &cfg, &errors), 0);
	assert_null(errors);
	free(yaml);
	return cfg;
}

static void test_one_lookup_per_round(void **state)
{
	struct app_origins *ao;
	struct cfg *cfg;
	struct dns *d = NULL;
	uint64_t t0, ms;
	int during;

	(void)state;
	cfg_resolver = stub_resolver;
	cfg = load_apps(APPS, false);
	/* Loading: one lookup for the 50 apps. */
	assert_int_equal(calls, 1);

	ao = app_origins_new(cfg);
	assert_non_null(ao);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	assert_non_null(d);
	t0 = mono_ms();
	usleep(10 * REFRESH_MS * 1000);
	dns_stop(d);
	ms = mono_ms() - t0;
	during = __atomic_load_n(&calls, __ATOMIC_RELAXED) - 1;
	/* About one a round (apps fall due within a ms or so of each other,
	 * so a round may split in two): not 50 a round.
	 */
	assert_true(during >= 3);
	assert_true(during <= 2 * (int)(ms / REFRESH_MS + 1));
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
}

static int fast_calls, slow_calls; /* atomic */

/* fast.test answers at once, slow.test after 150 ms. */
static int slow_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	bool has_port;
	const char *w;

	(void)why;
	if (!strcmp(host, "slow.test")) {
		__atomic_add_fetch(&slow_calls, 1, __ATOMIC_RELAXED);
		usleep(150 * 1000);
	} else {
		__atomic_add_fetch(&fast_calls, 1, __ATOMIC_RELAXED);
	}
	*addrs = calloc(1, sizeof(**addrs));
	assert_non_null(*addrs);
	assert_int_equal(addr_parse_hostport("198.51.100.9", *addrs, &has_port, &w), 0);
	*n = 1;
	return 0;
}

/* The fast app is refreshed first and falls due again 50 ms later, while
 * the slow app's lookup is still running: the thread's next wait starts
 * past that due time, and must not be an endless one.
 */
static void test_slow_lookup_does_not_stop_refreshes(void **state)
{
	static const char yaml[] =
	    "apps:\n"
	    "  - {name: fast, edge: 192.0.2.1, ports: 80, origins: \"fast.test:80\","
	    " dns: {refresh: 50ms}}\n"
	    "  - {name: slow, edge: 192.0.2.2, ports: 80, origins: \"slow.test:80\","
	    " dns: {refresh: 50ms}}\n";
	struct app_origins *ao;
	struct cfg *cfg = NULL;
	struct dns *d = NULL;
	char *errors = NULL;
	int fast, slow;

	(void)state;
	cfg_resolver = slow_resolver;
	assert_int_equal(cfg_load_buf("t.yaml", yaml, sizeof(yaml) - 1, &cfg, &errors), 0);
	assert_null(errors);
	__atomic_store_n(&fast_calls, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&slow_calls, 0, __ATOMIC_RELAXED);
	ao = app_origins_new(cfg);
	assert_non_null(ao);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	/* A round takes ~150 ms, each resolving both names (before the fix:
	 * one round, then nothing): three of each, within 10 s at most.
	 */
	for (int i = 0; i < 1000; i++) {
		fast = __atomic_load_n(&fast_calls, __ATOMIC_RELAXED);
		slow = __atomic_load_n(&slow_calls, __ATOMIC_RELAXED);
		if (fast >= 3 && slow >= 3)
			break;
		usleep(10 * 1000);
	}
	dns_stop(d);
	assert_true(fast >= 3);
	assert_true(slow >= 3);
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
}

static int many_calls; /* atomic */

/* A name with the same 100 addresses at every lookup, in another order
 * each time, as a round-robin DNS server rotates them.
 */
static int many_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	int k = __atomic_add_fetch(&many_calls, 1, __ATOMIC_RELAXED);
	bool has_port;
	const char *w;
	char a[32];

	(void)host;
	(void)why;
	*addrs = calloc(100, sizeof(**addrs));
	assert_non_null(*addrs);
	for (int i = 0; i < 100; i++) {
		snprintf(a, sizeof(a), "198.51.100.%d", 1 + (i + 7 * k) % 100);
		assert_int_equal(addr_parse_hostport(a, &(*addrs)[i], &has_port, &w), 0);
	}
	*n = 100;
	return 0;
}

/* The set a name makes at load is the one its refreshes keep while the
 * answer stays the same, in whatever order: both keep the same
 * CFG_NAME_ADDRS_MAX addresses (the lowest, not the first of each answer).
 */
static void test_unchanged_answer_keeps_the_set(void **state)
{
	static const char yaml[] = "apps:\n"
				   "  - {name: pool, edge: 192.0.2.1, ports: 80, origins: "
				   "\"many.test:80\", dns: {refresh: 50ms}}\n";
	struct app_origins *ao;
	struct origin_set *s, *at_load;
	struct cfg *cfg = NULL;
	struct dns *d = NULL;
	char *errors = NULL;
	int before;

	(void)state;
	cfg_resolver = many_resolver;
	assert_int_equal(cfg_load_buf("t.yaml", yaml, sizeof(yaml) - 1, &cfg, &errors), 0);
	assert_null(errors);
	ao = app_origins_new(cfg);
	assert_non_null(ao);
	at_load = app_origins_get(&ao[0]);
	assert_int_equal(at_load->n, CFG_NAME_ADDRS_MAX);
	before = __atomic_load_n(&many_calls, __ATOMIC_RELAXED);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	/* Three refreshes, each with the answer rotated (10 s at most). */
	for (int i = 0; i < 1000 && __atomic_load_n(&many_calls, __ATOMIC_RELAXED) < before + 3;
	     i++)
		usleep(10 * 1000);
	assert_true(__atomic_load_n(&many_calls, __ATOMIC_RELAXED) >= before + 3);
	dns_stop(d);
	s = app_origins_get(&ao[0]);
	/* No refresh swapped in a set of its own. */
	assert_ptr_equal(s, at_load);
	origin_set_unref(s);
	origin_set_unref(at_load);
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
}

static int scoped_calls; /* atomic */

/* ll.test: fe80::1 on interfaces 2 and 3, two hosts; moving.test: a new
 * address at every lookup, so that every refresh builds a new set.
 */
static int scoped_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			   const char **why)
{
	int k = __atomic_add_fetch(&scoped_calls, 1, __ATOMIC_RELAXED);
	bool has_port;
	const char *w;
	char a[32];

	(void)why;
	*addrs = calloc(2, sizeof(**addrs));
	assert_non_null(*addrs);
	if (!strcmp(host, "ll.test")) {
		for (int i = 0; i < 2; i++) {
			assert_int_equal(
			    addr_parse_hostport("fe80::1", &(*addrs)[i], &has_port, &w), 0);
			((struct sockaddr_in6 *)&(*addrs)[i])->sin6_scope_id = (uint32_t)(2 + i);
		}
		*n = 2;
	} else {
		snprintf(a, sizeof(a), "198.51.100.%d", 1 + k % 200);
		assert_int_equal(addr_parse_hostport(a, &(*addrs)[0], &has_port, &w), 0);
		*n = 1;
	}
	return 0;
}

/* fe80::1%2 and fe80::1%3 are two origins at load, and stay two when a
 * refresh rebuilds the set: matching the new answer to the origins it
 * keeps compared addresses without their scope, so both answers matched
 * the first, which the new set held twice (double weight), and the
 * second interface was never dialed again.
 */
static void test_scoped_addresses_stay_apart(void **state)
{
	static const char yaml[] = "apps:\n"
				   "  - {name: ll, edge: 192.0.2.1, ports: 80, origins: "
				   "[\"ll.test:80\", \"moving.test:80\"], dns: {refresh: 20ms}}\n";
	struct app_origins *ao;
	struct origin_set *s, *at_load;
	struct cfg *cfg = NULL;
	struct dns *d = NULL;
	char *errors = NULL;
	uint64_t t0;

	(void)state;
	cfg_resolver = scoped_resolver;
	assert_int_equal(cfg_load_buf("t.yaml", yaml, sizeof(yaml) - 1, &cfg, &errors), 0);
	assert_null(errors);
	ao = app_origins_new(cfg);
	assert_non_null(ao);
	at_load = app_origins_get(&ao[0]);
	assert_int_equal(at_load->n, 3);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	t0 = mono_ms();
	while ((s = app_origins_get(&ao[0])) == at_load) {
		origin_set_unref(s);
		assert_true(mono_ms() - t0 < 5000);
		usleep(5000);
	}
	dns_stop(d);
	assert_int_equal(s->n, 3);
	assert_ptr_not_equal(s->v[0], s->v[1]);
	for (size_t i = 0; i < 2; i++) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&s->v[i]->addr;

		assert_int_equal(a->sin6_family, AF_INET6);
		assert_int_equal(a->sin6_scope_id, 2 + i);
		/* The origins it kept, health and counts with them. */
		assert_ptr_equal(s->v[i], at_load->v[i]);
	}
	origin_set_unref(s);
	origin_set_unref(at_load);
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
}

static int down, down_calls; /* atomic */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool held, released;

/* Answers while <down> is 0; then fails every name, and the 35th lookup
 * (the fifth of the second round) waits until the test releases it, the
 * way a resolver that stopped answering makes a lookup wait.
 */
static int down_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	bool has_port;
	const char *w;

	(void)host;
	if (__atomic_load_n(&down, __ATOMIC_RELAXED)) {
		if (__atomic_add_fetch(&down_calls, 1, __ATOMIC_RELAXED) == 35) {
			pthread_mutex_lock(&gate_lock);
			held = true;
			pthread_cond_broadcast(&gate_cond);
			while (!released)
				pthread_cond_wait(&gate_cond, &gate_lock);
			pthread_mutex_unlock(&gate_lock);
		}
		*why = "Temporary failure in name resolution";
		return -EAGAIN;
	}
	*addrs = calloc(1, sizeof(**addrs));
	assert_non_null(*addrs);
	assert_int_equal(addr_parse_hostport("198.51.100.9", *addrs, &has_port, &w), 0);
	*n = 1;
	return 0;
}

static size_t count_lines(const char *text, const char *needle)
{
	size_t k = 0;

	for (const char *p = text; (p = strstr(p, needle)); p++)
		k++;
	return k;
}

/* 30 apps, each naming a name of its own, and the resolver stops answering.
 * A round logs 10 failures one by one and then their count, not a line per
 * app; and dns_stop ends the round it interrupts instead of waiting for
 * its remaining lookups (each can take seconds with a real resolver).
 */
static void test_resolver_down(void **state)
{
	char out[65536];
	struct app_origins *ao;
	struct cfg *cfg;
	struct dns *d = NULL;
	ssize_t got;
	int saved = dup(2);
	FILE *f = tmpfile();

	(void)state;
	assert_non_null(f);
	cfg_resolver = down_resolver;
	cfg = load_apps(30, true);
	ao = app_origins_new(cfg);
	assert_non_null(ao);
	__atomic_store_n(&down, 1, __ATOMIC_RELAXED);
	assert_int_equal(dup2(fileno(f), 2), 2);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	/* The first round (30 lookups) done, the second's fifth under way. */
	pthread_mutex_lock(&gate_lock);
	while (!held)
		pthread_cond_wait(&gate_cond, &gate_lock);
	dns_request_stop(d);
	released = true;
	pthread_cond_broadcast(&gate_cond);
	pthread_mutex_unlock(&gate_lock);
	dns_stop(d);
	/* The lookup in progress ended; no other began. */
	assert_int_equal(__atomic_load_n(&down_calls, __ATOMIC_RELAXED), 35);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	rewind(f);
	got = (ssize_t)fread(out, 1, sizeof(out) - 1, f);
	assert_true(got > 0);
	out[got] = '\0';
	fclose(f);
	/* Round one: 10 lines and the count of the other 20; round two,
	 * stopped after 5 lookups: 5 lines. */
	assert_int_equal(count_lines(out, "dns: 20 more lookups of origin names failed"), 1);
	assert_int_equal(count_lines(out, "more lookups of origin names failed"), 1);
	assert_int_equal(count_lines(out, "cannot resolve origin"), 15);
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_one_lookup_per_round),
	    cmocka_unit_test(test_slow_lookup_does_not_stop_refreshes),
	    cmocka_unit_test(test_unchanged_answer_keeps_the_set),
	    cmocka_unit_test(test_scoped_addresses_stay_apart),
	    cmocka_unit_test(test_resolver_down),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

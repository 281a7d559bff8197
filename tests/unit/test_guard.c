/* test_guard.c - connection limits, violations, bans and the bounded source table.
 *
 * The ban thread's calls to ban_add go to a stub (guard_ban_fn) that records
 * them; tests wait for those calls, and for log lines in a captured stderr,
 * with bounded deadlines instead of sleeps.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cfg.h"
#include "guard.h"

#define WAIT_MS	  5000
#define MAX_CALLS 64

/* --- the ban stub --- */

static pthread_mutex_t stub_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stub_cond = PTHREAD_COND_INITIALIZER;
static struct {
	struct in6_addr addr;
	uint32_t duration_ms;
	char table[32];
} calls[MAX_CALLS];
static int n_calls;
static struct in6_addr fail_addr[4]; /* bans of these fail */
static int n_fail;
static bool gate_closed; /* the stub blocks while set */

/* A ban the kernel holds that the guard did not write (`prism ban add`,
 * one put back at start): what ban_add's <kept_ms> looks up.
 */
static struct in6_addr kernel_addr;
static uint64_t kernel_left; /* 0: none */

static int stub_ban(struct nl *keep, const char *table, const struct in6_addr *src,
		    uint32_t duration_ms, uint64_t *kept_ms, char **err)
{
	int r = 0;

	(void)keep;
	pthread_mutex_lock(&stub_lock);
	while (gate_closed)
		pthread_cond_wait(&stub_cond, &stub_lock);
	if (n_calls < MAX_CALLS) {
		calls[n_calls].addr = *src;
		calls[n_calls].duration_ms = duration_ms;
		snprintf(calls[n_calls].table, sizeof(calls[n_calls].table), "%s", table);
	}
	n_calls++;
	if (kept_ms && kernel_left >= duration_ms && !memcmp(&kernel_addr, src, sizeof(*src))) {
		*kept_ms = kernel_left;
		r = 1;
	}
	for (int i = 0; i < n_fail; i++) {
		if (!memcmp(&fail_addr[i], src, sizeof(*src))) {
			*err = strdup("no such set ban6");
			r = -ENOENT;
		}
	}
	pthread_cond_broadcast(&stub_cond);
	pthread_mutex_unlock(&stub_lock);
	return r;
}

/* Whether the kernel still holds a ban this stub wrote: yes, unless a
 * test lifted it (`prism ban del`). Calls counted in n_gets.
 */
static bool bans_lifted;
static int n_gets;

static int stub_ban_get(struct nl *keep, const char *table, const struct in6_addr *src,
			uint64_t *left_ms)
{
	int r = -ENOENT;

	(void)keep;
	(void)table;
	pthread_mutex_lock(&stub_lock);
	for (int i = 0; i < n_calls && i < MAX_CALLS && !bans_lifted; i++) {
		if (!memcmp(&calls[i].addr, src, sizeof(*src))) {
			*left_ms = calls[i].duration_ms;
			r = 0;
		}
	}
	n_gets++;
	pthread_cond_broadcast(&stub_cond);
	pthread_mutex_unlock(&stub_lock);
	return r;
}

static void deadline_in(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* Waits until the stub's counter <*count> reaches <n>; returns it. */
static int wait_count(const int *count, int n)
{
	struct timespec ts;
	int got;

	deadline_in(&ts, WAIT_MS);
	pthread_mutex_lock(&stub_lock);
	while (*count < n && pthread_cond_timedwait(&stub_cond, &stub_lock, &ts) == 0)
		;
	got = *count;
	pthread_mutex_unlock(&stub_lock);
	return got;
}

/* Waits until the stub has been called <n> times; returns the count. */
static int wait_calls(int n)
{
	return wait_count(&n_calls, n);
}

/* Waits until the ban thread has asked <n> times whether a ban holds. */
static int wait_gets(int n)
{
	return wait_count(&n_gets, n);
}

static void gate_set(bool closed)
{
	pthread_mutex_lock(&stub_lock);
	gate_closed = closed;
	pthread_cond_broadcast(&stub_cond);
	pthread_mutex_unlock(&stub_lock);
}

/* --- captured stderr --- */

static int saved_stderr = -1;
static char cap_path[64];

static void capture_start(void)
{
	int fd;

	snprintf(cap_path, sizeof(cap_path), "/tmp/test_guard.XXXXXX");
	fd = mkstemp(cap_path);
	assert_true(fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
}

static void capture_stop(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	saved_stderr = -1;
	unlink(cap_path);
}

/* Occurrences of <needle> in what was logged so far. */
static int captured_count(const char *needle)
{
	static char buf[1 << 20];
	FILE *f = fopen(cap_path, "r");
	size_t n;
	int count = 0;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (const char *p = buf; (p = strstr(p, needle)); p++)
		count++;
	return count;
}

/* Waits (bounded) for <needle> to be logged; true when it was. */
static bool captured_wait(const char *needle)
{
	struct timespec pause = {0, 5000000};

	for (int i = 0; i < WAIT_MS / 5; i++) {
		if (captured_count(needle))
			return true;
		nanosleep(&pause, NULL);
	}
	return false;
}

static bool captured_wait_n(const char *needle, int n)
{
	struct timespec pause = {0, 5000000};

	for (int i = 0; i < WAIT_MS / 5; i++) {
		if (captured_count(needle) >= n)
			return true;
		nanosleep(&pause, NULL);
	}
	return false;
}

/* Restores stderr after a test that failed while capturing it. */
static int teardown(void **state)
{
	(void)state;
	if (saved_stderr != -1)
		capture_stop();
	gate_set(false);
	return 0;
}

/* --- fixtures --- */

static struct cfg cfg;
static struct cfg_app apps[4]; /* most tests use the first two */

static void cfg_setup(void)
{
	memset(&cfg, 0, sizeof(cfg));
	memset(apps, 0, sizeof(apps));
	apps[0].name = "web";
	apps[1].name = "ssh";
	cfg.apps = apps;
	cfg.n_apps = 2;
	cfg.net_manage = true;
	cfg.nft_table = "prism";
	pthread_mutex_lock(&stub_lock);
	n_calls = 0;
	n_fail = 0;
	gate_closed = false;
	kernel_left = 0;
	bans_lifted = false;
	n_gets = 0;
	pthread_mutex_unlock(&stub_lock);
	guard_ban_fn = stub_ban;
	guard_ban_get_fn = stub_ban_get;
}

/* cfg_setup, and app 0 with one connection per source and bans after
 * <after> violations within <window_ms> for <duration_ms>.
 */
static void ban_setup(uint32_t after, uint32_t window_ms, uint32_t duration_ms)
{
	cfg_setup();
	apps[0].protection.max_conns_per_source = 1;
	apps[0].protection.ban_after = after;
	apps[0].protection.ban_window_ms = window_ms;
	apps[0].protection.ban_duration_ms = duration_ms;
}

static struct in6_addr v4(const char *s)
{
	struct in6_addr a;
	char buf[64];

	snprintf(buf, sizeof(buf), "::ffff:%s", s);
	assert_int_equal(inet_pton(AF_INET6, buf, &a), 1);
	return a;
}

/* The i-th of many distinct sources in 2001:db8::/32: each in a /64 of its
 * own (IPv6 sources are /64s), at host ::1.
 */
static struct in6_addr v6n(uint32_t i)
{
	struct in6_addr a;

	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &a), 1);
	a.s6_addr[4] = (uint8_t)(i >> 24);
	a.s6_addr[5] = (uint8_t)(i >> 16);
	a.s6_addr[6] = (uint8_t)(i >> 8);
	a.s6_addr[7] = (uint8_t)i;
	return a;
}

/* --- tests --- */

/* <n> admissions of <src> to app <app> at <now> pass; the next one gets
 * <then>.
 */
static void admits(struct guard *g, uint32_t app, const struct in6_addr *src, uint64_t now, int n,
		   enum guard_verdict then)
{
	for (int i = 0; i < n; i++)
		assert_int_equal(guard_admit(g, app, src, now, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, app, src, now, NULL), then);
}

static void test_concurrent(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), b = v4("203.0.113.2");
	struct guard_stats st;
	struct guard *g;

	(void)state;
	cfg_setup();
	apps[0].protection.max_conns_per_source = 2;
	g = guard_new(&cfg);
	assert_non_null(g);

	admits(g, 0, &a, 1000, 2, GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &b, 1000, NULL), GUARD_OK);
	/* Per app: app 1 has no per-source limit. */
	for (int i = 0; i < 10; i++)
		assert_int_equal(guard_admit(g, 1, &a, 1000, NULL), GUARD_OK);
	guard_release(g, 0, &a, true);
	admits(g, 0, &a, 1001, 1, GUARD_SOURCE_LIMIT);
	guard_release(g, 0, &a, true);
	guard_release(g, 0, &a, true);
	admits(g, 0, &a, 1002, 2, GUARD_SOURCE_LIMIT);

	guard_stats(g, &st);
	assert_int_equal(st.source_limit, 3);
	assert_int_equal(st.rate_limit, 0);
	assert_int_equal(st.shed, 0);
	assert_int_equal(st.sources, 2);
	assert_true(st.capacity >= 65536);
	guard_free(g);
}

static void test_rate(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), b = v4("203.0.113.2");
	struct guard_stats st;
	struct guard *g;

	(void)state;
	cfg_setup();
	apps[0].protection.conn_rate_per_source = (struct cfg_rate){.n = 2, .per_ms = 1000};
	g = guard_new(&cfg);
	assert_non_null(g);

	/* Burst of n, then empty. */
	admits(g, 0, &a, 10000, 2, GUARD_RATE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &b, 10000, NULL), GUARD_OK);
	/* 2/s refills one token in 500 ms, not earlier. */
	assert_int_equal(guard_admit(g, 0, &a, 10499, NULL), GUARD_RATE_LIMIT);
	admits(g, 0, &a, 10500, 1, GUARD_RATE_LIMIT);
	/* A long pause refills to the burst, no more. */
	admits(g, 0, &a, 60000, 2, GUARD_RATE_LIMIT);
	/* Time going backwards (a caller's coarse clock) refills nothing. */
	assert_int_equal(guard_admit(g, 0, &a, 59000, NULL), GUARD_RATE_LIMIT);
	/* Releasing does not give tokens back. */
	for (int i = 0; i < 6; i++)
		guard_release(g, 0, &a, true);
	assert_int_equal(guard_admit(g, 0, &a, 60000, NULL), GUARD_RATE_LIMIT);

	guard_stats(g, &st);
	assert_int_equal(st.rate_limit, 6);
	assert_int_equal(st.source_limit, 0);
	guard_free(g);

	/* Per minute: 30/m is one token per 2 s. */
	cfg_setup();
	apps[0].protection.conn_rate_per_source = (struct cfg_rate){.n = 30, .per_ms = 60000};
	g = guard_new(&cfg);
	assert_non_null(g);
	admits(g, 0, &a, 0, 30, GUARD_RATE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 1999, NULL), GUARD_RATE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 2000, NULL), GUARD_OK);
	guard_free(g);
}

static void test_shed(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), b = v4("203.0.113.2");
	struct guard_stats st;
	struct guard *g;

	(void)state;
	cfg_setup();
	cfg.max_conns = 3;
	apps[0].max_conns = 2;
	g = guard_new(&cfg);
	assert_non_null(g);

	assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &b, 1, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_SHED); /* app cap */
	assert_int_equal(guard_admit(g, 1, &a, 1, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 1, &b, 1, NULL), GUARD_SHED); /* process cap */
	/* An app index out of range only meets the process cap. */
	assert_int_equal(guard_admit(g, 7, &b, 1, NULL), GUARD_SHED);
	guard_release(g, 0, &b, true);
	assert_int_equal(guard_admit(g, 1, &b, 2, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &b, 2, NULL), GUARD_SHED);
	guard_release(g, 1, &b, true);
	assert_int_equal(guard_admit(g, 0, &b, 3, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &b, 3, NULL), GUARD_SHED);

	guard_stats(g, &st);
	assert_int_equal(st.shed, 5);
	assert_int_equal(st.source_limit + st.rate_limit, 0);
	assert_int_equal(st.capacity, 0); /* no per-source limits: no table */
	guard_free(g);
}

/* Shedding never counts toward a ban: with ban_after 2, many sheds of one
 * source and then a ban of a sentinel source; the FIFO ban queue would have
 * carried the shed source's ban first.
 */
static void test_shed_is_no_violation(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), s = v4("203.0.113.99");
	struct guard *g;

	(void)state;
	ban_setup(2, 60000, 600000);
	apps[0].max_conns = 1;
	g = guard_new(&cfg);
	assert_non_null(g);

	assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_OK);
	for (int i = 0; i < 10; i++)
		assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_SHED);
	guard_release(g, 0, &a, true);
	/* The sentinel: one connection, then two violations. */
	assert_int_equal(guard_admit(g, 0, &s, 2, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &s, 2, NULL), GUARD_SHED);
	apps[0].max_conns = 0; /* snapshot edits are fine here: no other thread */
	assert_int_equal(guard_admit(g, 0, &s, 2, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &s, 2, NULL), GUARD_SOURCE_LIMIT);
	guard_release(g, 0, &s, true);
	assert_int_equal(wait_calls(1), 1);
	guard_free(g);
	assert_int_equal(n_calls, 1);
	assert_memory_equal(&calls[0].addr, &s, sizeof(s));
}

static void test_ban(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), c = v6n(7), s = v4("203.0.113.99"), c64 = c;
	struct guard_stats st;

	c64.s6_addr[15] = 0; /* c's /64: what its ban is asked for */
	struct guard *g;

	(void)state;
	cfg_setup();
	apps[1].protection.max_conns_per_source = 1;
	apps[1].protection.ban_after = 3;
	apps[1].protection.ban_window_ms = 10000;
	apps[1].protection.ban_duration_ms = 200;
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);

	assert_int_equal(guard_admit(g, 1, &a, 1000, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 1, &a, 1000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 1, &a, 1001, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 1, &a, 1002, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(1), 1);
	assert_memory_equal(&calls[0].addr, &a, sizeof(a));
	assert_int_equal(calls[0].duration_ms, 200);
	assert_string_equal(calls[0].table, "prism");
	/* "3": the ban came with the third violation, not before or after. */
	assert_true(captured_wait(
	    "warn source 203.0.113.1 banned for 200ms: 3 limit violations within 10s (app ssh)"));
	/* The unban line once the duration passed (on the thread's clock). */
	assert_true(captured_wait("info source 203.0.113.1 unbanned (ban of 200ms expired)"));

	/* While the ban lasts (on the caller's clock) violations neither
	 * request another ban nor count toward the next one.
	 */
	for (int i = 0; i < 5; i++)
		assert_int_equal(guard_admit(g, 1, &a, 1100, NULL), GUARD_SOURCE_LIMIT);
	/* A source whose violations are spread beyond the window: not banned. */
	assert_int_equal(guard_admit(g, 1, &c, 1000, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 1, &c, 1000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 1, &c, 1000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 1, &c, 11000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 1, &c, 11001, NULL), GUARD_SOURCE_LIMIT);
	/* Sentinel: had any of the above queued a ban, it would come first. */
	assert_int_equal(guard_admit(g, 1, &s, 12000, NULL), GUARD_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(guard_admit(g, 1, &s, 12000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	assert_memory_equal(&calls[1].addr, &s, sizeof(s));
	/* Now c's third violation within its window: banned. */
	assert_int_equal(guard_admit(g, 1, &c, 11002, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(3), 3);
	assert_memory_equal(&calls[2].addr, &c64, sizeof(c64));
	assert_true(captured_wait("warn source 2001:db8:0:7::/64 banned for 200ms"));
	/* After a's ban ran out it can be banned again, after 3 new ones. */
	for (int i = 0; i < 3; i++)
		assert_int_equal(guard_admit(g, 1, &a, 1300, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(4), 4);
	assert_memory_equal(&calls[3].addr, &a, sizeof(a));
	assert_true(captured_wait_n("source 203.0.113.1 banned for 200ms: 3 limit violations", 2));
	assert_true(captured_wait_n("banned for", 4));

	guard_stats(g, &st);
	assert_int_equal(st.bans, 4);
	assert_int_equal(st.source_limit, 19);
	guard_free(g);
	capture_stop();
	assert_int_equal(n_calls, 4);
}

/* Where <needle> was first logged, or -1. */
static long captured_at(const char *needle)
{
	static char buf[1 << 20];
	FILE *f = fopen(cap_path, "r");
	const char *p;
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strstr(buf, needle);
	return p ? p - buf : -1;
}

/* Bans of different lengths end in the order of their expiry, not of
 * their start: banned in the order a (600ms), b (200ms), c (300ms),
 * d (400ms), so the expiry heap has to move entries both up (b past a,
 * d past a) and down (a below c, then below d) as bans start and end.
 */
static void test_ban_expiry_order(void **state)
{
	static const char *const src[] = {"203.0.113.4", "203.0.113.2", "203.0.113.3",
					  "203.0.113.5"};
	static const uint32_t ms[] = {600, 200, 300, 400};
	/* The unban lines, in the order expected. */
	static const char *const unban[] = {
	    "info source 203.0.113.2 unbanned (ban of 200ms expired)",
	    "info source 203.0.113.3 unbanned (ban of 300ms expired)",
	    "info source 203.0.113.5 unbanned (ban of 400ms expired)",
	    "info source 203.0.113.4 unbanned (ban of 600ms expired)",
	};
	struct guard *g;
	long at[4];

	(void)state;
	cfg_setup();
	cfg.n_apps = 4; /* one ban length per app */
	for (size_t i = 0; i < 4; i++) {
		apps[i].name = i == 0 ? "web" : i == 1 ? "ssh" : i == 2 ? "db" : "mail";
		apps[i].protection.max_conns_per_source = 1;
		apps[i].protection.ban_after = 3;
		apps[i].protection.ban_window_ms = 10000;
		apps[i].protection.ban_duration_ms = ms[i];
	}
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	for (size_t k = 0; k < 4; k++) {
		struct in6_addr a = v4(src[k]);

		assert_int_equal(guard_admit(g, (uint32_t)k, &a, 1000, NULL), GUARD_OK);
		for (int i = 0; i < 3; i++)
			assert_int_equal(guard_admit(g, (uint32_t)k, &a, 1000, NULL),
					 GUARD_SOURCE_LIMIT);
		/* One at a time, so that the heap gets them in this order. */
		assert_int_equal(wait_calls((int)k + 1), (int)k + 1);
	}
	assert_true(captured_wait_n("unbanned (ban of", 4));
	for (int k = 0; k < 4; k++)
		at[k] = captured_at(unban[k]);
	guard_free(g);
	capture_stop();
	assert_true(at[0] >= 0);
	for (int k = 1; k < 4; k++)
		assert_true(at[k] > at[k - 1]);
}

/* One source, two apps with different ban lengths. The kernel keeps one
 * timeout per source, and writing a ban replaces it: a shorter ban after a
 * longer one is not written (it would cut the longer one short), and a
 * longer one after a shorter one is, and the shorter one's end says
 * nothing (the source is still banned).
 */
static void test_ban_never_shortened(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), b = v4("203.0.113.2"), s = v4("203.0.113.99");
	struct guard *g;

	(void)state;
	cfg_setup();
	for (size_t i = 0; i < 2; i++) {
		apps[i].protection.max_conns_per_source = 1;
		apps[i].protection.ban_after = 1;
		apps[i].protection.ban_window_ms = 10000;
		apps[i].protection.ban_duration_ms = i == 0 ? 3600000 : 300;
	}
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);

	/* a: the hour's ban first, then the 300ms one. */
	admits(g, 0, &a, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(1), 1);
	admits(g, 1, &a, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_true(captured_wait("info source 203.0.113.1: not banned for 300ms (app ssh): "
				  "already banned for "));
	/* b: 300ms first, then the hour's ban, which is written. */
	admits(g, 1, &b, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	admits(g, 0, &b, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(3), 3);
	assert_memory_equal(&calls[2].addr, &b, sizeof(b));
	assert_int_equal(calls[2].duration_ms, 3600000);
	/* A sentinel's 300ms ban, after b's: once it has ended, b's 300ms
	 * ban has too, without a line.
	 */
	admits(g, 1, &s, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(4), 4);
	assert_true(captured_wait("info source 203.0.113.99 unbanned (ban of 300ms expired)"));
	guard_free(g);
	assert_int_equal(captured_at("source 203.0.113.2 unbanned"), -1);
	assert_int_equal(captured_at("source 203.0.113.1 unbanned"), -1);
	capture_stop();
	assert_int_equal(n_calls, 4);
}

/* Failed bans are logged: with network.manage off once, with it at most
 * once a second. */
static void test_ban_failure(void **state)
{
	struct in6_addr f1 = v4("203.0.113.10"), f2 = v4("203.0.113.11"), s = v4("203.0.113.99");
	struct guard_stats st;

	(void)state;
	for (int manage = 0; manage < 2; manage++) {
		struct guard *g;

		ban_setup(1, 1000, 3600000);
		cfg.net_manage = manage;
		cfg.nft_table = "edge";
		fail_addr[0] = f1;
		fail_addr[1] = f2;
		n_fail = 2;
		capture_start();
		g = guard_new(&cfg);
		assert_non_null(g);
		for (int i = 0; i < 3; i++) {
			const struct in6_addr *a = i == 0 ? &f1 : i == 1 ? &f2 : &s;

			assert_int_equal(guard_admit(g, 0, a, 5, NULL), GUARD_OK);
			assert_int_equal(guard_admit(g, 0, a, 5, NULL), GUARD_SOURCE_LIMIT);
		}
		assert_int_equal(wait_calls(3), 3);
		assert_string_equal(calls[0].table, "edge");
		/* The sentinel's line comes after both failures'. */
		assert_true(captured_wait("warn source 203.0.113.99 banned for 1h: 1 limit "
					  "violations within 1s (app web)"));
		assert_int_equal(captured_count("error source 203.0.113.10: cannot ban for 1h: "
						"no such set ban6"),
				 1);
		/* With network.manage, at most a line a second (the next one
		 * counts the others); without, once. */
		assert_int_equal(captured_count("cannot ban"), 1);
		guard_stats(g, &st);
		assert_int_equal(st.bans, 1);
		assert_int_equal(st.ban_failed, 2);
		guard_free(g);
		capture_stop();
	}
}

/* A ban that failed to be written does not leave its source unbanned and
 * uncounted for the ban's duration: a second later, its next violation
 * (ban_after 1) asks again; after a second failure, two seconds later.
 */
static void test_failed_ban_is_asked_again(void **state)
{
	struct in6_addr f = v4("203.0.113.10"), s = v4("203.0.113.99"), s2 = v4("203.0.113.98");
	struct guard *g;

	(void)state;
	ban_setup(1, 1000, 3600000);
	fail_addr[0] = f;
	n_fail = 1;
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	assert_int_equal(guard_admit(g, 0, &f, 5, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &f, 5, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(1), 1);
	/* Within the second: not asked again (the sentinel's ban is next). */
	assert_int_equal(guard_admit(g, 0, &f, 900, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &s, 900, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &s, 900, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	assert_memory_equal(&calls[1].addr, &s, sizeof(s));
	/* A second after the failed ban began: asked again. */
	assert_int_equal(guard_admit(g, 0, &f, 1006, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(3), 3);
	assert_memory_equal(&calls[2].addr, &f, sizeof(f));
	/* It fails again: the next try waits twice as long, 2 s. */
	assert_int_equal(guard_admit(g, 0, &f, 2900, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &s2, 2900, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &s2, 2900, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(4), 4);
	assert_memory_equal(&calls[3].addr, &s2, sizeof(s2));
	assert_int_equal(guard_admit(g, 0, &f, 3007, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(5), 5);
	assert_memory_equal(&calls[4].addr, &f, sizeof(f));
	guard_free(g);
	capture_stop();
}

/* IPv6 sources are /64s: addresses of one /64 share its limit, and its
 * ban is asked for the /64 (the request holds the /64's first address and
 * the log names the /64). IPv4 addresses stay sources of their own.
 */
static void test_ipv6_source_is_its_64(void **state)
{
	struct in6_addr a, b, c, net;
	struct guard *g;

	(void)state;
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:5:6::1", &a), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:5:6:ffff::99", &b), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:5:7::1", &c), 1);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8:5:6::", &net), 1);
	ban_setup(1, 1000, 60000);
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	assert_int_equal(guard_admit(g, 0, &a, 5, NULL), GUARD_OK);
	/* Another address of the /64: the same source, at its limit. */
	assert_int_equal(guard_admit(g, 0, &b, 5, NULL), GUARD_SOURCE_LIMIT);
	/* The next /64 is another source. */
	assert_int_equal(guard_admit(g, 0, &c, 5, NULL), GUARD_OK);
	assert_int_equal(wait_calls(1), 1);
	assert_memory_equal(&calls[0].addr, &net, sizeof(net));
	assert_true(captured_wait("warn source 2001:db8:5:6::/64 banned for 1m: 1 limit "
				  "violations within 1s (app web)"));
	/* Released through another address of it, the /64's count drops. */
	guard_release(g, 0, &b, true);
	assert_int_equal(guard_admit(g, 0, &b, 70000, NULL), GUARD_OK);
	/* IPv4: one address, one source. */
	{
		struct in6_addr x = v4("203.0.113.7"), y = v4("203.0.113.8");

		assert_int_equal(guard_admit(g, 0, &x, 5, NULL), GUARD_OK);
		assert_int_equal(guard_admit(g, 0, &y, 5, NULL), GUARD_OK);
	}
	guard_free(g);
	capture_stop();
}

/* A longer ban in the kernel that the guard did not write (`prism ban add`,
 * one put back when the table was replaced) is kept: ban_add finds it and
 * writes nothing, and the log says so. One shorter than the app's is
 * replaced as usual.
 */
static void test_unknown_longer_ban_kept(void **state)
{
	struct in6_addr x = v4("203.0.113.30"), y = v4("203.0.113.31");
	struct guard_stats st;
	struct guard *g;

	(void)state;
	ban_setup(1, 1000, 10000);
	kernel_addr = x;
	kernel_left = 3600000;
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	admits(g, 0, &x, 5, 1, GUARD_SOURCE_LIMIT);
	assert_true(captured_wait("info source 203.0.113.30: not banned for 10s (app web): already "
				  "banned for 1h more"));
	guard_stats(g, &st);
	assert_int_equal(st.bans, 0);
	assert_int_equal(st.ban_failed, 0);
	/* Shorter than the app's: written. */
	pthread_mutex_lock(&stub_lock);
	kernel_addr = y;
	kernel_left = 5000;
	pthread_mutex_unlock(&stub_lock);
	admits(g, 0, &y, 5, 1, GUARD_SOURCE_LIMIT);
	assert_true(captured_wait("warn source 203.0.113.31 banned for 10s"));
	guard_stats(g, &st);
	assert_int_equal(st.bans, 1);
	guard_free(g);
	capture_stop();
}

/* Past 4096 bans in force the thread cannot remember their ends: it says
 * so, once (a minute), instead of only at debug level; the ban is
 * written all the same.
 */
static void test_too_many_bans_to_track(void **state)
{
	struct guard *g;

	(void)state;
	ban_setup(1, 1000, 3600000);
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	for (uint32_t i = 0; i < 4098; i++) {
		struct in6_addr a = v6n(i);

		admits(g, 0, &a, 5, 1, GUARD_SOURCE_LIMIT);
		if (i % 512 == 511) /* stay within the ban queue */
			assert_int_equal(wait_calls((int)i + 1), (int)i + 1);
	}
	assert_int_equal(wait_calls(4098), 4098);
	assert_true(captured_wait("warn guard: 4096 bans in force: the ends of further ones are "
				  "not logged until some of them end"));
	guard_free(g);
	assert_int_equal(captured_count("bans in force"), 1);
	capture_stop();
}

/* A ban that was written ends the streak of failures before it: the next
 * failure, a ban's length later, is asked again after BAN_RETRY_MS (1 s),
 * not after the 2 s that a second failure in a row waits. Each sentinel's
 * ban is queued after the request before it, so once the stub has seen
 * it, the ban thread has settled that request.
 */
static void test_ban_failures_reset_after_success(void **state)
{
	struct in6_addr f = v4("203.0.113.10"), s[3];
	struct guard *g;

	(void)state;
	for (int i = 0; i < 3; i++)
		s[i] = v4(i == 0 ? "203.0.113.97" : i == 1 ? "203.0.113.98" : "203.0.113.99");
	ban_setup(1, 1000, 3000);
	fail_addr[0] = f;
	n_fail = 1;
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	/* Fails: asked again a second after it began. */
	admits(g, 0, &f, 5, 1, GUARD_SOURCE_LIMIT);
	admits(g, 0, &s[0], 5, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	pthread_mutex_lock(&stub_lock);
	n_fail = 0;
	pthread_mutex_unlock(&stub_lock);
	/* Written this time: banned until 4006. */
	assert_int_equal(guard_admit(g, 0, &f, 1006, NULL), GUARD_SOURCE_LIMIT);
	admits(g, 0, &s[1], 1006, 0, GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &s[1], 1006, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(4), 4);
	assert_memory_equal(&calls[2].addr, &f, sizeof(f));
	pthread_mutex_lock(&stub_lock);
	n_fail = 1;
	pthread_mutex_unlock(&stub_lock);
	/* After it, a failure again: the first of a new streak. The ban
	 * thread skips a ban that one in force (on its own clock) covers:
	 * let that clock pass the millisecond of the last one.
	 */
	nanosleep(&(struct timespec){0, 2000000}, NULL);
	assert_int_equal(guard_admit(g, 0, &f, 4007, NULL), GUARD_SOURCE_LIMIT);
	admits(g, 0, &s[2], 4007, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(6), 6);
	assert_memory_equal(&calls[4].addr, &f, sizeof(f));
	/* So a second later it is asked again (2 s with the old streak). */
	assert_int_equal(guard_admit(g, 0, &f, 5008, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(7), 7);
	assert_memory_equal(&calls[6].addr, &f, sizeof(f));
	guard_free(g);
	capture_stop();
}

/* The ban window slides: violations that fall within one window are
 * counted together even when a fixed window starting at the source's first
 * connection would split them (4 + 4 around its boundary, ban_after 5).
 */
/* A ban the operator lifts (`prism ban del`) while ours would still run:
 * a violation under our ban asks whether the kernel still holds it (at
 * most once a second), and once it does not, the source's violations count
 * again and ban it anew. Before, it went unbanned until our ban's end.
 */
static void test_ban_lifted_by_hand(void **state)
{
	struct in6_addr a = v4("203.0.113.9");
	struct guard_stats st;
	struct guard *g;

	(void)state;
	ban_setup(2, 10000, 60000);
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);

	admits(g, 0, &a, 1000, 1, GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 1000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(1), 1);

	/* Under the ban, while the kernel holds it: one look a second, and
	 * nothing changes.
	 */
	assert_int_equal(guard_admit(g, 0, &a, 2048, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 2049, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_gets(1), 1);
	assert_int_equal(guard_admit(g, 0, &a, 3100, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 3101, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_gets(2), 2);
	assert_int_equal(wait_calls(1), 1);

	/* Lifted by hand: the next look finds no ban, and two fresh
	 * violations ban the source again.
	 */
	pthread_mutex_lock(&stub_lock);
	bans_lifted = true;
	pthread_mutex_unlock(&stub_lock);
	assert_int_equal(guard_admit(g, 0, &a, 5000, NULL), GUARD_SOURCE_LIMIT);
	assert_true(
	    captured_wait("info source 203.0.113.9: no longer banned in the kernel "
			  "(`prism ban del`?): its limit violations count again (app web)"));
	assert_int_equal(guard_admit(g, 0, &a, 5001, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 5002, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	assert_true(captured_wait_n("warn source 203.0.113.9 banned for 1m", 2));

	guard_stats(g, &st);
	assert_int_equal(st.bans, 2);
	assert_int_equal(st.ban_dropped, 0);
	guard_free(g);
	capture_stop();
}

/* A check that waited in the queue past its ban's end must not lift the
 * source's next ban: it asked about one ban, and only that one can have
 * been lifted by hand.
 */
static void test_late_check_leaves_the_next_ban(void **state)
{
	struct in6_addr a = v4("203.0.113.9"), b = v4("203.0.113.10");
	struct guard *g;

	(void)state;
	ban_setup(1, 10000, 3000);
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);

	admits(g, 0, &a, 1000, 1, GUARD_SOURCE_LIMIT); /* ban 1 of a: to 4000 */
	assert_int_equal(wait_calls(1), 1);
	gate_set(true);
	/* b's ban blocks the thread (first in the queue, whether the thread
	 * took it yet or not), so what follows is queued behind it.
	 */
	admits(g, 0, &b, 1000, 1, GUARD_SOURCE_LIMIT);
	/* Under ban 1: a check, queued behind b's ban. */
	assert_int_equal(guard_admit(g, 0, &a, 2100, NULL), GUARD_SOURCE_LIMIT);
	/* Ban 1 over: a's next violation asks for ban 2 (to 7500). */
	assert_int_equal(guard_admit(g, 0, &a, 4500, NULL), GUARD_SOURCE_LIMIT);
	pthread_mutex_lock(&stub_lock);
	bans_lifted = true; /* the kernel has no ban of a when the check runs */
	pthread_mutex_unlock(&stub_lock);
	gate_set(false);
	assert_int_equal(wait_gets(1), 1);
	/* Ban 2 is written, or kept as ban 1's record (the thread's clock has
	 * not moved on): either way it is done once this line is there.
	 */
	assert_true(captured_wait("203.0.113.9 banned for 3s: 1 limit violations within 10s") &&
		    (captured_wait_n("warn source 203.0.113.9 banned for 3s", 2) ||
		     captured_wait("info source 203.0.113.9: not banned for 3s")));
	assert_int_equal(captured_count("no longer banned"), 0);
	guard_free(g);
	capture_stop();
}

static void test_ban_window_slides(void **state)
{
	struct in6_addr a = v4("203.0.113.1"), b = v4("203.0.113.2"), c = v4("203.0.113.3");
	struct guard *g;

	(void)state;
	ban_setup(5, 10000, 60000);
	capture_start();
	g = guard_new(&cfg);
	assert_non_null(g);
	assert_int_equal(guard_admit(g, 0, &a, 1000, NULL), GUARD_OK);
	for (int i = 0; i < 4; i++)
		assert_int_equal(guard_admit(g, 0, &a, 10000 + (uint64_t)i, NULL),
				 GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &a, 11000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(1), 1);
	assert_memory_equal(&calls[0].addr, &a, sizeof(a));
	assert_true(captured_wait("source 203.0.113.1 banned for 1m: 5 limit violations within "
				  "10s"));
	/* Violations 7/8 of a window apart still count together; ones a
	 * whole window apart do not. */
	assert_int_equal(guard_admit(g, 0, &b, 20000, NULL), GUARD_OK);
	for (int i = 0; i < 4; i++)
		assert_int_equal(guard_admit(g, 0, &b, 20000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &b, 30000, NULL), GUARD_SOURCE_LIMIT);
	/* Sentinel: had the 4 at 20000 still counted, b's ban would be next. */
	assert_int_equal(guard_admit(g, 0, &c, 30000, NULL), GUARD_OK);
	for (int i = 0; i < 5; i++)
		assert_int_equal(guard_admit(g, 0, &c, 30000, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(2), 2);
	assert_memory_equal(&calls[1].addr, &c, sizeof(c));
	assert_int_equal(guard_admit(g, 0, &b, 38740, NULL), GUARD_SOURCE_LIMIT);
	for (int i = 0; i < 3; i++)
		assert_int_equal(guard_admit(g, 0, &b, 38749, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(3), 3);
	assert_memory_equal(&calls[2].addr, &b, sizeof(b));
	guard_free(g);
	capture_stop();
	assert_int_equal(n_calls, 3);
}

/* A stuck ban thread: the queue is bounded and overflow is counted. A
 * source whose ban was dropped is asked for again at its next violation; one
 * whose ban was queued is not.
 */
static void test_ban_queue_full(void **state)
{
	struct in6_addr first = v6n(0), last = v6n(1099);
	struct guard_stats st;
	struct guard *g;
	const int n = 1100;
	int queued;

	(void)state;
	ban_setup(1, 1000, 1000);
	gate_set(true);
	capture_start(); /* the bans that do get through are many lines */
	g = guard_new(&cfg);
	assert_non_null(g);
	for (int i = 0; i < n; i++) {
		struct in6_addr a = v6n((uint32_t)i);

		assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_OK);
		assert_int_equal(guard_admit(g, 0, &a, 1, NULL), GUARD_SOURCE_LIMIT);
	}
	guard_stats(g, &st);
	/* 1024 queued, and maybe one more taken by the blocked thread. */
	assert_true(st.ban_dropped == (uint64_t)n - 1024 || st.ban_dropped == (uint64_t)n - 1025);
	assert_int_equal(st.source_limit, n);
	queued = n - (int)st.ban_dropped;
	gate_set(false);
	assert_int_equal(wait_calls(queued), queued);
	assert_int_equal(guard_admit(g, 0, &first, 2, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(guard_admit(g, 0, &last, 2, NULL), GUARD_SOURCE_LIMIT);
	assert_int_equal(wait_calls(queued + 1), queued + 1);
	guard_stats(g, &st);
	assert_int_equal(st.ban_dropped, (uint64_t)(n - queued));
	/* One line for all the drops within a second. */
	assert_int_equal(captured_count("guard: ban queue full (1024 pending): ban of "), 1);
	guard_free(g);
	capture_stop();
	assert_int_equal(n_calls, queued + 1);
}

/* A guard whose app 0 allows one connection per source; <*cap>: the
 * entries of its source table.
 */
static struct guard *one_per_source(uint32_t *cap)
{
	struct guard_stats st;
	struct guard *g;

	cfg_setup();
	apps[0].protection.max_conns_per_source = 1;
	g = guard_new(&cfg);
	assert_non_null(g);
	guard_stats(g, &st);
	*cap = (uint32_t)st.capacity;
	return g;
}

/* 10x capacity distinct sources, one connection each: the table stays at
 * its capacity and new sources still get per-source limits.
 */
static void test_eviction(void **state)
{
	struct in6_addr x = v4("203.0.113.50");
	struct guard_stats st;
	struct guard *g;
	uint32_t cap;

	(void)state;
	g = one_per_source(&cap);
	assert_true(cap >= 65536);
	for (uint32_t i = 0; i < 10 * cap; i++) {
		struct in6_addr a = v6n(i);

		assert_int_equal(guard_admit(g, 0, &a, i, NULL), GUARD_OK);
		guard_release(g, 0, &a, true);
	}
	guard_stats(g, &st);
	assert_int_equal(st.capacity, cap);
	assert_true(st.sources <= cap);
	assert_true(st.sources > cap / 2);
	assert_int_equal(st.table_full, 0);
	/* A new source is tracked: its second connection is refused. */
	assert_int_equal(guard_admit(g, 0, &x, 10 * cap, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &x, 10 * cap, NULL), GUARD_SOURCE_LIMIT);
	/* The most recent ones survived eviction. */
	{
		struct in6_addr a = v6n((uint32_t)(10 * cap - 1));

		assert_int_equal(guard_admit(g, 0, &a, 10 * cap, NULL), GUARD_OK);
		guard_release(g, 0, &a, true);
	}
	guard_free(g);
}

/* Live sources up to half the table's entries (what it is sized for: twice
 * max_conns), one open connection each: every one gets an entry and its
 * limits (a source goes untracked only when both its buckets, 16 entries,
 * hold live ones). With one bucket per source, about 0.9% of them went
 * untracked.
 */
static void test_table_holds_live_sources(void **state)
{
	struct guard_stats st;
	struct guard *g;
	uint32_t cap;

	(void)state;
	g = one_per_source(&cap);
	for (uint32_t i = 0; i < cap / 2; i++) {
		struct in6_addr a = v6n(i);

		assert_int_equal(guard_admit(g, 0, &a, 5000, NULL), GUARD_OK);
	}
	guard_stats(g, &st);
	print_message("%u live sources in %u entries: %" PRIu64 " untracked\n", cap / 2, cap,
		      st.table_full);
	assert_int_equal(st.table_full, 0);
	assert_int_equal(st.sources, cap / 2);
	guard_free(g);
}

/* A table full of live connections: new sources are admitted without
 * per-source accounting, counted and logged (once per second).
 */
static void test_table_full(void **state)
{
	struct in6_addr x = v4("203.0.113.50");
	struct guard_stats st;
	struct guard *g;
	uint32_t cap, held = 0;
	uint64_t full;
	bool x_tracked;

	(void)state;
	capture_start();
	g = one_per_source(&cap);
	/* Three times as many live sources as entries: every one admitted,
	 * each either tracked or counted as table_full (nothing is evicted
	 * while it has a connection).
	 */
	for (; held < 3 * cap; held++) {
		struct in6_addr a = v6n(held);

		assert_int_equal(guard_admit(g, 0, &a, 5000, NULL), GUARD_OK);
	}
	guard_stats(g, &st);
	assert_true(st.sources <= cap);
	assert_true(st.sources > cap / 2);
	assert_int_equal(st.table_full, held - st.sources);
	assert_int_equal(captured_count("source table full"), 1);
	/* A second later, logged again: x's buckets are full too (24 live
	 * sources per 8-entry bucket on average), so x goes untracked.
	 */
	full = st.table_full;
	for (uint32_t k = 0;; k++) {
		/* In the rare case x's buckets still had room, try a neighbour. */
		assert_true(k < 100);
		x = v4("203.0.113.50");
		x.s6_addr[15] = (uint8_t)(50 + k);
		assert_int_equal(guard_admit(g, 0, &x, 6000, &x_tracked), GUARD_OK);
		if (!x_tracked)
			break;
		guard_release(g, 0, &x, true);
	}
	guard_stats(g, &st);
	assert_int_equal(st.table_full, full + 1);
	assert_int_equal(captured_count("source table full"), 2);
	for (uint32_t i = 0; i < held; i++) {
		struct in6_addr a = v6n(i);

		guard_release(g, 0, &a, true);
	}
	/* All released: tracked again. x's untracked connection is still
	 * open; when it ends it must not take back the tracked one's count,
	 * or x could open a second connection past its limit of one.
	 */
	assert_int_equal(guard_admit(g, 0, &x, 7000, &x_tracked), GUARD_OK);
	assert_true(x_tracked);
	assert_int_equal(guard_admit(g, 0, &x, 7000, NULL), GUARD_SOURCE_LIMIT);
	guard_release(g, 0, &x, false);
	assert_int_equal(guard_admit(g, 0, &x, 7000, NULL), GUARD_SOURCE_LIMIT);
	guard_release(g, 0, &x, true);
	assert_int_equal(guard_admit(g, 0, &x, 7000, NULL), GUARD_OK);
	assert_int_equal(guard_admit(g, 0, &x, 7000, NULL), GUARD_SOURCE_LIMIT);
	for (uint32_t i = 0; i < 1000; i++) {
		struct in6_addr a = v6n(i);

		assert_int_equal(guard_admit(g, 0, &a, 6000, NULL), GUARD_OK);
		assert_int_equal(guard_admit(g, 0, &a, 6000, NULL), GUARD_SOURCE_LIMIT);
	}
	guard_free(g);
	capture_stop();
}

#define HAMMER_ITERS 100000
#define SHARED_MAX   4

static struct guard *hg;
static int shared_held, hammer_errors, shared_ok;

static void *hammer(void *arg)
{
	uint32_t t = (uint32_t)(uintptr_t)arg;
	struct in6_addr shared = v4("203.0.113.1");

	for (uint32_t i = 0; i < HAMMER_ITERS; i++) {
		struct in6_addr own = v6n(t << 20 | (i % 5000)), mine = v6n(t << 28);
		enum guard_verdict v = guard_admit(hg, 0, &shared, i, NULL);

		if (v == GUARD_OK) {
			__atomic_fetch_add(&shared_ok, 1, __ATOMIC_RELAXED);
			if (__atomic_add_fetch(&shared_held, 1, __ATOMIC_RELAXED) > SHARED_MAX)
				__atomic_fetch_add(&hammer_errors, 1, __ATOMIC_RELAXED);
		} else if (v != GUARD_SOURCE_LIMIT) {
			__atomic_fetch_add(&hammer_errors, 1, __ATOMIC_RELAXED);
		}
		if (guard_admit(hg, 0, &own, i, NULL) != GUARD_OK)
			__atomic_fetch_add(&hammer_errors, 1, __ATOMIC_RELAXED);
		/* Up to three of its own at once, under the limit of four. */
		for (uint32_t k = 0; k <= i % 3; k++)
			if (guard_admit(hg, 0, &mine, i, NULL) != GUARD_OK)
				__atomic_fetch_add(&hammer_errors, 1, __ATOMIC_RELAXED);
		for (uint32_t k = 0; k <= i % 3; k++)
			guard_release(hg, 0, &mine, true);
		guard_release(hg, 0, &own, true);
		if (v == GUARD_OK) {
			__atomic_fetch_sub(&shared_held, 1, __ATOMIC_RELAXED);
			guard_release(hg, 0, &shared, true);
		}
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct in6_addr shared = v4("203.0.113.1"), other = v4("203.0.113.2");
	pthread_t th[2];
	int n;

	(void)state;
	cfg_setup();
	cfg.max_conns = 1000;
	apps[0].protection.max_conns_per_source = SHARED_MAX;
	hg = guard_new(&cfg);
	assert_non_null(hg);
	for (uintptr_t t = 0; t < 2; t++)
		assert_int_equal(pthread_create(&th[t], NULL, hammer, (void *)(t + 1)), 0);
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	assert_int_equal(hammer_errors, 0);
	assert_true(shared_ok > 0);
	assert_int_equal(shared_held, 0);

	/* Every count is back to zero: the shared source gets exactly its
	 * limit, and the process cap exactly what the shared source left.
	 */
	for (int i = 0; i < SHARED_MAX; i++)
		assert_int_equal(guard_admit(hg, 0, &shared, 1, NULL), GUARD_OK);
	assert_int_equal(guard_admit(hg, 0, &shared, 1, NULL), GUARD_SOURCE_LIMIT);
	for (n = 0; n < 2000; n++)
		if (guard_admit(hg, 1, &other, 1, NULL) != GUARD_OK)
			break;
	assert_int_equal(n, 1000 - SHARED_MAX);
	guard_free(hg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_concurrent, teardown),
	    cmocka_unit_test_teardown(test_rate, teardown),
	    cmocka_unit_test_teardown(test_shed, teardown),
	    cmocka_unit_test_teardown(test_shed_is_no_violation, teardown),
	    cmocka_unit_test_teardown(test_ban, teardown),
	    cmocka_unit_test_teardown(test_ban_expiry_order, teardown),
	    cmocka_unit_test_teardown(test_ban_never_shortened, teardown),
	    cmocka_unit_test_teardown(test_ban_failure, teardown),
	    cmocka_unit_test_teardown(test_failed_ban_is_asked_again, teardown),
	    cmocka_unit_test_teardown(test_ban_failures_reset_after_success, teardown),
	    cmocka_unit_test_teardown(test_unknown_longer_ban_kept, teardown),
	    cmocka_unit_test_teardown(test_too_many_bans_to_track, teardown),
	    cmocka_unit_test_teardown(test_ipv6_source_is_its_64, teardown),
	    cmocka_unit_test_teardown(test_ban_lifted_by_hand, teardown),
	    cmocka_unit_test_teardown(test_late_check_leaves_the_next_ban, teardown),
	    cmocka_unit_test_teardown(test_ban_window_slides, teardown),
	    cmocka_unit_test_teardown(test_ban_queue_full, teardown),
	    cmocka_unit_test_teardown(test_eviction, teardown),
	    cmocka_unit_test_teardown(test_table_holds_live_sources, teardown),
	    cmocka_unit_test_teardown(test_table_full, teardown),
	    cmocka_unit_test_teardown(test_threads, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

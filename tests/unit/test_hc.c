/* test_hc.c - origin health: the rise/fall state machine and passive
 * accounting as pure functions, then the real check thread against
 * listeners and a tiny responder on 127.0.0.1.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cfg.h"
#include "hc.h"
#include "log.h"
#include "origin.h"
#include "timer.h"

/* ---- log capture: stderr into a memfd, read back for assertions ---- */

static int cap_fd = -1, saved_fd = -1;

/* In a sanitizer build, a report must reach the real stderr, not the
 * capture that dies with the process. Weak: absent in a plain build.
 */
extern void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

static void report_fd(int fd)
{
	if (__sanitizer_set_report_fd)
		__sanitizer_set_report_fd((void *)(intptr_t)fd);
}

static void cap_begin(void)
{
	cap_fd = memfd_create("hc-log", MFD_CLOEXEC);
	assert_true(cap_fd >= 0);
	saved_fd = dup(STDERR_FILENO);
	assert_true(saved_fd >= 0);
	report_fd(saved_fd);
	assert_int_equal(dup2(cap_fd, STDERR_FILENO), STDERR_FILENO);
}

/* The log so far (malloc'd, NUL-terminated). */
static char *cap_text(void)
{
	off_t len = lseek(cap_fd, 0, SEEK_END);
	char *buf;

	assert_true(len >= 0);
	buf = calloc(1, (size_t)len + 1);
	assert_non_null(buf);
	assert_int_equal(pread(cap_fd, buf, (size_t)len, 0), len);
	return buf;
}

/* Restores stderr, echoes what was captured (for a failing run's output)
 * and returns it.
 */
static char *cap_end(void)
{
	char *buf = cap_text();

	dup2(saved_fd, STDERR_FILENO);
	report_fd(STDERR_FILENO);
	close(saved_fd);
	close(cap_fd);
	cap_fd = saved_fd = -1;
	fputs(buf, stderr);
	return buf;
}

static int count(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* The sum of N over the lines "... <what>N more apps ..." of <log>. */
static int more_apps(const char *log, const char *what)
{
	int n = 0;

	for (const char *p = strstr(log, what); p; p = strstr(p + 1, what)) {
		unsigned v;

		if (sscanf(p + strlen(what), "%u more apps", &v) == 1)
			n += (int)v;
	}
	return n;
}

/* Open descriptors of this process, to catch leaks across a test. */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* ---- the rise/fall state machine ---- */

static void test_rise_fall(void **state)
{
	struct cfg_app app = {.name = "web", .health = {.on = true, .rise = 2, .fall = 3}};
	struct origin o = {.up = 1, .name = "192.0.2.10:80"};
	char *log;

	(void)state;
	cap_begin();
	hc_record_result(&o, &app, false, "boom");
	hc_record_result(&o, &app, false, "boom");
	assert_int_equal(o.up, 1);
	assert_int_equal(o.hc_fail, 2);
	/* A success in between restarts the count. */
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.hc_fail, 0);
	assert_int_equal(o.hc_ok, 1);
	hc_record_result(&o, &app, false, "first");
	hc_record_result(&o, &app, false, "second");
	assert_int_equal(o.up, 1);
	hc_record_result(&o, &app, false, "connect: Connection refused");
	assert_int_equal(o.up, 0);
	/* Further failures: still down, no more lines. */
	for (int i = 0; i < 5; i++)
		hc_record_result(&o, &app, false, "again");
	assert_int_equal(o.up, 0);
	assert_int_equal(o.hc_fail, 8);
	/* One success is not enough for rise 2, and a failure resets it. */
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.up, 0);
	hc_record_result(&o, &app, false, "flap");
	assert_int_equal(o.hc_ok, 0);
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.up, 0);
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.up, 1);
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.up, 1);
	assert_int_equal(o.hc_ok, 3);
	log = cap_end();
	assert_int_equal(count(log, "is down"), 1);
	assert_int_equal(count(log, "is up"), 1);
	assert_non_null(strstr(log, " warn app web: origin 192.0.2.10:80 is down: 3 failed checks "
				    "(last: connect: Connection refused)\n"));
	assert_non_null(
	    strstr(log, " info app web: origin 192.0.2.10:80 is up: 2 successful checks\n"));
	free(log);
}

static void test_rise_fall_one(void **state)
{
	struct cfg_app app = {.name = "a", .health = {.on = true, .rise = 1, .fall = 1}};
	struct origin o = {.up = 1, .name = "o"};
	char *log;

	(void)state;
	cap_begin();
	hc_record_result(&o, &app, false, "x");
	assert_int_equal(o.up, 0);
	hc_record_result(&o, &app, true, NULL);
	assert_int_equal(o.up, 1);
	hc_record_result(&o, &app, false, "y");
	assert_int_equal(o.up, 0);
	log = cap_end();
	assert_int_equal(count(log, "is down: 1 failed checks"), 2);
	assert_int_equal(count(log, "is up: 1 successful checks"), 1);
	free(log);
}

/* ---- passive accounting ---- */

static void test_passive_off(void **state)
{
	struct cfg_app app = {.name = "a", .passive = {.failures = 0, .cooldown_ms = 10000}};
	struct origin o = {.up = 1, .name = "o"};

	(void)state;
	for (int i = 0; i < 100; i++)
		hc_connect_failed(&app, &o, 1000, ECONNREFUSED);
	assert_int_equal(o.fails, 0);
	assert_int_equal(o.cooldown_until, 0);
	assert_true(origin_usable(&o, 1000));
}

static void test_passive_cooldown_rearm(void **state)
{
	struct cfg_app app = {.name = "db", .passive = {.failures = 3, .cooldown_ms = 10000}};
	struct origin o = {.up = 1, .name = "198.51.100.10:5432"};
	char *log;

	(void)state;
	cap_begin();
	hc_connect_failed(&app, &o, 1000, ECONNREFUSED);
	hc_connect_failed(&app, &o, 1000, ECONNREFUSED);
	assert_int_equal(o.fails, 2);
	assert_true(origin_usable(&o, 1000));
	hc_connect_failed(&app, &o, 1000, ECONNREFUSED);
	assert_int_equal(o.cooldown_until, 11000);
	assert_int_equal(o.fails, 2); /* one short of the limit */
	assert_false(origin_usable(&o, 1000));
	assert_false(origin_usable(&o, 10999));
	assert_true(origin_usable(&o, 11000));
	/* A failure during the cooldown (a connect started before it) extends
	 * it without a second line.
	 */
	hc_connect_failed(&app, &o, 2000, ETIMEDOUT);
	assert_int_equal(o.cooldown_until, 12000);
	/* After it, one more failure re-arms it, and that is logged. */
	hc_connect_failed(&app, &o, 20000, EHOSTUNREACH);
	assert_int_equal(o.cooldown_until, 30000);
	assert_false(origin_usable(&o, 20000));
	/* A success clears everything, once. */
	hc_connect_ok(&app, &o);
	assert_int_equal(o.fails, 0);
	assert_int_equal(o.cooldown_until, 0);
	assert_true(origin_usable(&o, 20000));
	hc_connect_ok(&app, &o);
	/* From zero again it takes the full count. */
	hc_connect_failed(&app, &o, 21000, ECONNREFUSED);
	hc_connect_failed(&app, &o, 21000, ECONNREFUSED);
	assert_int_equal(o.cooldown_until, 0);
	hc_connect_ok(&app, &o); /* failures but no cooldown: reset, no line */
	assert_int_equal(o.fails, 0);
	log = cap_end();
	assert_int_equal(count(log, "is out for"), 2);
	assert_non_null(strstr(log, " warn app db: origin 198.51.100.10:5432 is out for 10s: 3 "
				    "consecutive connect failures (last: Connection refused)\n"));
	assert_non_null(strstr(log, "is out for 10s: 3 consecutive connect failures (last: No "
				    "route to host)\n"));
	assert_int_equal(count(log, "answers again"), 1);
	assert_non_null(strstr(log, " info app db: origin 198.51.100.10:5432 answers again\n"));
	free(log);
}

static void test_passive_no_shortening(void **state)
{
	struct cfg_app app = {.name = "a", .passive = {.failures = 2, .cooldown_ms = 1500}};
	struct origin o = {.up = 1, .name = "o", .cooldown_until = 50000};
	char *log;

	(void)state;
	cap_begin();
	for (int i = 0; i < 5; i++)
		hc_connect_failed(&app, &o, 1000, ECONNREFUSED);
	assert_int_equal(o.cooldown_until, 50000);
	assert_int_equal(o.fails, 1);
	/* Past the long one, the configured cooldown applies again. */
	hc_connect_failed(&app, &o, 60000, ECONNREFUSED);
	assert_int_equal(o.cooldown_until, 61500);
	log = cap_end();
	assert_int_equal(count(log, "is out for 1500ms: 2 consecutive"), 1);
	free(log);
}

/* failures: 1 keeps fails at 0 during a cooldown; a success must still end it. */
static void test_passive_limit_one(void **state)
{
	struct cfg_app app = {.name = "a", .passive = {.failures = 1, .cooldown_ms = 60000}};
	struct origin o = {.up = 1, .name = "o"};
	char *log;

	(void)state;
	cap_begin();
	hc_connect_failed(&app, &o, 5, ECONNREFUSED);
	assert_int_equal(o.fails, 0);
	assert_int_equal(o.cooldown_until, 60005);
	hc_connect_ok(&app, &o);
	assert_int_equal(o.cooldown_until, 0);
	log = cap_end();
	assert_int_equal(count(log, "is out for 1m: 1 consecutive"), 1);
	assert_int_equal(count(log, "answers again"), 1);
	free(log);
}

#define RACE_N 20000

struct race {
	const struct cfg_app *app;
	struct origin *o;
	pthread_barrier_t *bar;
};

static void *race_fail(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(r->bar);
	for (int i = 0; i < RACE_N; i++)
		hc_connect_failed(r->app, r->o, 7000, ECONNREFUSED);
	return NULL;
}

static void test_passive_concurrent(void **state)
{
	struct cfg_app app = {.name = "a", .passive = {.failures = 3, .cooldown_ms = 10000}};
	struct origin o = {.up = 1, .name = "o"};
	pthread_barrier_t bar;
	pthread_t t[2];
	struct race r = {&app, &o, &bar};
	char *log;

	(void)state;
	cap_begin();
	pthread_barrier_init(&bar, NULL, 2);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, race_fail, &r), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&bar);
	log = cap_end();
	assert_int_equal(count(log, "is out for"), 1);
	assert_int_equal(o.cooldown_until, 17000);
	assert_int_equal(o.fails, 2);
	free(log);
}

/* ---- the check thread, against 127.0.0.1 ---- */

static int listener_on(uint32_t addr, uint16_t port, uint16_t *bound)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	socklen_t len = sizeof(sa);
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(addr);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 64), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	if (bound)
		*bound = ntohs(sa.sin_port);
	return fd;
}

static int listener(uint16_t port, uint16_t *bound)
{
	return listener_on(INADDR_LOOPBACK, port, bound);
}

/* One app with one origin at 127.0.0.1:<port>, and its run-time state. */
struct fixture {
	struct sockaddr_storage addr;
	struct cfg_origin co;
	struct cfg_app app;
	struct app_origins ao;
	struct hc *hc;
};

/* What a test left running when an assertion cut it short; teardown stops it. */
static struct fixture *live_fx;

/* <co> is 127.0.0.1:<port>, its one address kept in <addr>. */
static void loopback_origin(struct cfg_origin *co, struct sockaddr_storage *addr, uint16_t port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)addr;

	memset(addr, 0, sizeof(*addr));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*co = (struct cfg_origin){.host = "127.0.0.1",
				  .addrs = addr,
				  .n_addrs = 1,
				  .port_mode = CFG_PORT_FIXED,
				  .port = port,
				  .weight = 1};
}

/* <ao> serves <app>, with the origin set its config makes. */
static void ao_init(struct app_origins *ao, struct cfg_app *app)
{
	pthread_mutex_init(&ao->lock, NULL);
	ao->app = app;
	ao->set = origin_set_from_cfg(app);
	assert_non_null(ao->set);
}

static void ao_deinit(struct app_origins *ao)
{
	origin_set_unref(ao->set);
	pthread_mutex_destroy(&ao->lock);
}

/* When set, the origin's address family instead of AF_INET. */
static sa_family_t fixture_family;

static void fixture_init(struct fixture *f, uint16_t port, struct cfg_health h)
{
	memset(f, 0, sizeof(*f));
	loopback_origin(&f->co, &f->addr, port);
	if (fixture_family)
		f->addr.ss_family = fixture_family;
	f->app.name = "web";
	f->app.origins = &f->co;
	f->app.n_origins = 1;
	f->app.health = h;
	f->app.health.on = true;
	f->app.passive.failures = 3;
	f->app.passive.cooldown_ms = 10000;
	ao_init(&f->ao, &f->app);
	assert_int_equal(f->ao.set->n, 1);
	assert_int_equal(hc_start(&f->hc, &f->ao, 1), 0);
	assert_non_null(f->hc);
	live_fx = f;
}

static void fixture_deinit(struct fixture *f)
{
	live_fx = NULL;
	hc_stop(f->hc);
	ao_deinit(&f->ao);
}

static struct origin *first_origin(struct fixture *f)
{
	return f->ao.set->v[0];
}

/* Waits (bounded) until <o>'s up flag is <up> and its current streak of
 * results of that kind reaches <streak>; meanwhile accepts and closes what
 * <lfd> queued, so a never-accepting listener's backlog cannot fill.
 * Returns the ms it took, or -1 on timeout.
 */
static long wait_state(struct origin *o, int up, uint32_t streak, int lfd, int limit_ms)
{
	uint64_t t0 = mono_ms();

	while (mono_ms() - t0 < (uint64_t)limit_ms) {
		uint32_t n = __atomic_load_n(up ? &o->hc_ok : &o->hc_fail, __ATOMIC_RELAXED);

		if (__atomic_load_n(&o->up, __ATOMIC_RELAXED) == up && n >= streak)
			return (long)(mono_ms() - t0);
		if (lfd >= 0) {
			int c;

			while ((c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
				close(c);
		}
		usleep(2000);
	}
	return -1;
}

static void test_thread_none(void **state)
{
	struct cfg_app app = {.name = "nohc"};
	struct app_origins ao = {.app = &app};
	struct hc *hc = (struct hc *)&ao; /* must be overwritten */

	(void)state;
	assert_int_equal(hc_start(&hc, &ao, 1), 0);
	assert_null(hc);
	hc_stop(NULL);
}

/* Checks against a listener that goes away and comes back: up, down after
 * fall refused connects an interval apart, up again after rise successes.
 * With <send> (and no expect), a check passes once it has sent it.
 */
static void connect_cycle(const char *send)
{
	struct cfg_health h = {.interval_ms = 50, .timeout_ms = 500, .rise = 2, .fall = 3};
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	struct origin *o;
	uint16_t port;
	long ms;
	int fds = open_fds(), lfd = listener(0, &port);
	char *log;

	if (send) {
		h.send = (char *)send;
		h.send_len = strlen(send);
	}
	cap_begin();
	fixture_init(&f, port, h);
	o = first_origin(&f);
	/* Checks succeed: still up, with a streak of successes. */
	assert_true(wait_state(o, 1, 2, lfd, 5000) >= 0);

	/* Nothing listening: refused, down after fall checks an interval
	 * apart, so no sooner than (fall - 1) intervals.
	 */
	close(lfd);
	ms = wait_state(o, 0, 3, -1, 5000);
	assert_true(ms >= 0);
	assert_true(ms >= 2 * 50 - 10);
	assert_int_equal(__atomic_load_n(&o->up, __ATOMIC_RELAXED), 0);

	/* Back: up after rise checks. */
	lfd = listener(port, NULL);
	ms = wait_state(o, 1, 2, lfd, 5000);
	assert_true(ms >= 0);
	assert_true(ms >= 1 * 50 - 10);
	fixture_deinit(&f);
	close(lfd);
	log = cap_end();
	assert_int_equal(open_fds(), fds);
	assert_int_equal(count(log, "is down"), 1);
	assert_int_equal(count(log, "is up"), 1);
	assert_non_null(strstr(log, "warn app web: origin 127.0.0.1:"));
	assert_non_null(
	    strstr(log, "is down: 3 failed checks (last: connect: Connection refused)"));
	assert_non_null(strstr(log, "is up: 2 successful checks"));
	free(log);
}

static void test_thread_connect(void **state)
{
	(void)state;
	connect_cycle(NULL);
}

/* A check whose socket() fails for a reason that is no shortage (here
 * EAFNOSUPPORT, as for an IPv6 origin on a host with IPv6 off) is the
 * origin's failure: it goes down after fall checks. Before, every such
 * check was skipped as a local resource problem, and the origin stayed up
 * for good.
 */
static void test_thread_socket_refused(void **state)
{
	struct cfg_health h = {.interval_ms = 50, .timeout_ms = 500, .rise = 2, .fall = 3};
	static struct fixture f;
	char *log;

	(void)state;
	cap_begin();
	fixture_family = 255; /* past AF_MAX: EAFNOSUPPORT, no module to load */
	fixture_init(&f, 9, h);
	fixture_family = 0;
	assert_true(wait_state(first_origin(&f), 0, 3, -1, 5000) >= 0);
	fixture_deinit(&f);
	log = cap_end();
	assert_non_null(strstr(
	    log,
	    "is down: 3 failed checks (last: socket: Address family not supported by protocol)"));
	assert_null(strstr(log, "checks skipped"));
	free(log);
}

static void test_thread_send_only(void **state)
{
	(void)state;
	connect_cycle("QUIT\r\n");
}

/* A responder: reads the check's request, answers according to <mode>. */
enum resp_mode {
	RESP_PONG,   /* "+PONG\r\n", in two writes */
	RESP_ERR,    /* "-ERR nope\r\n" */
	RESP_SILENT, /* reads, never answers, keeps the connection */
	RESP_SHORT,  /* "+PO", then closes */
	RESP_RESET,  /* reads, then resets the connection */
};

struct responder {
	int lfd;
	int mode;	 /* atomic */
	int stop;	 /* atomic */
	int requests_ok; /* atomic: requests read that were exactly "PING\r\n" */
	pthread_t thread;
};

static void *responder_main(void *arg)
{
	struct responder *r = arg;
	int held[64], n_held = 0;

	/* Bounded by the stop flag, checked every 10 ms. */
	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = {.fd = r->lfd, .events = POLLIN};
		char req[64];
		ssize_t got = 0;
		int mode, c;

		if (poll(&p, 1, 10) <= 0)
			continue;
		c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		/* The request: wait for it briefly (the check sends at once). */
		p.fd = c;
		while (got < 6 && poll(&p, 1, 200) > 0) {
			ssize_t k = read(c, req + got, sizeof(req) - (size_t)got);

			if (k <= 0)
				break;
			got += k;
		}
		if (got == 6 && memcmp(req, "PING\r\n", 6) == 0)
			__atomic_add_fetch(&r->requests_ok, 1, __ATOMIC_RELAXED);
		mode = __atomic_load_n(&r->mode, __ATOMIC_RELAXED);
		if (mode == RESP_PONG) {
			/* Split, so the check must resume a partial reply. */
			if (write(c, "+PO", 3) == 3) {
				usleep(3000);
				if (write(c, "NG\r\n", 4) != 4)
					break;
			}
		} else if (mode == RESP_ERR) {
			if (write(c, "-ERR nope\r\n", 11) != 11)
				break;
		} else if (mode == RESP_SHORT) {
			if (write(c, "+PO", 3) != 3)
				break;
		} else if (mode == RESP_RESET) {
			struct linger lg = {.l_onoff = 1, .l_linger = 0};

			setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		} else if (n_held < 64) {
			held[n_held++] = c;
			continue;
		}
		close(c);
		if (mode != RESP_SILENT)
			while (n_held > 0)
				close(held[--n_held]);
	}
	while (n_held > 0)
		close(held[--n_held]);
	return NULL;
}

static struct responder *live_resp;

static void responder_start(struct responder *r, uint16_t *port)
{
	memset(r, 0, sizeof(*r));
	r->lfd = listener(0, port);
	assert_int_equal(pthread_create(&r->thread, NULL, responder_main, r), 0);
	live_resp = r;
}

static void responder_stop(struct responder *r)
{
	live_resp = NULL;
	__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
	pthread_join(r->thread, NULL);
	close(r->lfd);
}

static void test_thread_send_expect(void **state)
{
	struct cfg_health h = {.interval_ms = 50,
			       .timeout_ms = 300,
			       .rise = 2,
			       .fall = 2,
			       .send = "PING\r\n",
			       .send_len = 6,
			       .expect = "+PONG",
			       .expect_len = 5};
	static const int fails[] = {RESP_ERR, RESP_SHORT, RESP_RESET, RESP_SILENT};
	static struct responder r;
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	struct origin *o;
	uint16_t port;
	int fds = open_fds();
	char *log;

	(void)state;
	responder_start(&r, &port);
	cap_begin();
	fixture_init(&f, port, h);
	o = first_origin(&f);

	/* A matching, split reply: successes, the request arrived intact. */
	assert_true(wait_state(o, 1, 3, -1, 5000) >= 0);
	assert_true(__atomic_load_n(&r.requests_ok, __ATOMIC_RELAXED) >= 3);

	/* Each way a check fails puts the origin down (fall 2; the log says
	 * why), and good replies bring it back (rise 2). The last, no reply
	 * at all, is failed by the timeout.
	 */
	for (size_t i = 0; i < sizeof(fails) / sizeof(fails[0]); i++) {
		if (i) {
			__atomic_store_n(&r.mode, RESP_PONG, __ATOMIC_RELAXED);
			assert_true(wait_state(o, 1, 2, -1, 5000) >= 0);
		}
		__atomic_store_n(&r.mode, fails[i], __ATOMIC_RELAXED);
		assert_true(wait_state(o, 0, 2, -1, 5000) >= 0);
	}

	/* Stop with a check most likely in flight: no leak, no hang. */
	fixture_deinit(&f);
	responder_stop(&r);
	log = cap_end();
	assert_int_equal(open_fds(), fds);
	assert_int_equal(count(log, "is down"), 4);
	assert_int_equal(count(log, "is up"), 3);
	assert_non_null(
	    strstr(log, "is down: 2 failed checks (last: reply mismatch: got '-ERR ')"));
	assert_non_null(strstr(log, "is down: 2 failed checks (last: closed by origin after 3 "
				    "bytes of reply (got '+PO'))"));
	assert_non_null(strstr(log, "is down: 2 failed checks (last: connection reset by origin)"));
	assert_non_null(strstr(log, "is down: 2 failed checks (last: timeout after 300 ms waiting "
				    "for the reply (0 of 5 bytes))"));
	free(log);
}

/* More origins than HC_MAX_INFLIGHT, each a silent listener's backlog
 * (connect succeeds, no reply ever comes), and a timeout far longer than the
 * interval that spreads the first checks: HC_MAX_INFLIGHT checks are in
 * flight at once and never more; the rest wait, and each runs once a slot
 * frees, so every origin is found down.
 */
static void test_thread_inflight_bound(void **state)
{
	enum { N = HC_MAX_INFLIGHT + 44 };
	struct cfg_health h = {.interval_ms = 100,
			       .timeout_ms = 1500,
			       .rise = 1,
			       .fall = 1,
			       .send = "PING\r\n",
			       .send_len = 6,
			       .expect = "+PONG",
			       .expect_len = 5};
	static struct sockaddr_storage addrs[N];
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	uint16_t port;
	/* Every address of 127/8 is local: the N origins are 127.0.x.y,
	 * distinct, so no two share a check.
	 */
	int lfd = listener_on(INADDR_ANY, 0, &port), base, most = 0;
	uint64_t t0;
	size_t down = 0;
	char *log;

	(void)state;
	assert_int_equal(listen(lfd, 4 * N), 0); /* never accepted: all wait here */
	cap_begin();
	base = open_fds();
	fixture_init(&f, port, h);
	/* One configured origin with N addresses: N origins. */
	for (size_t i = 0; i < N; i++) {
		struct sockaddr_in *a = (struct sockaddr_in *)&addrs[i];

		addrs[i] = f.addr;
		a->sin_addr.s_addr =
		    htonl(0x7f000001u + (uint32_t)(i / 250) * 256 + (uint32_t)(i % 250));
	}
	f.co.addrs = addrs;
	f.co.n_addrs = N;
	app_origins_swap(&f.ao, origin_set_from_cfg(&f.app));
	assert_int_equal(f.ao.set->n, N);

	t0 = mono_ms();
	while (down < N && mono_ms() - t0 < 20000) {
		int n = open_fds() - base;

		most = n > most ? n : most;
		down = 0;
		for (size_t i = 0; i < N; i++)
			down += __atomic_load_n(&f.ao.set->v[i]->hc_fail, __ATOMIC_RELAXED) > 0;
		usleep(1000);
	}
	fixture_deinit(&f);
	close(lfd);
	log = cap_end();
	assert_int_equal(down, N);
	/* The thread's own epoll and wake-up fds, then one per check. */
	assert_true(most >= HC_MAX_INFLIGHT);
	assert_true(most <= HC_MAX_INFLIGHT + 2);
	assert_true(count(log, "is down") >= N);
	free(log);
}

/* Checks that time out, of origins late in the interval: origin 1's check
 * starts half an interval in and times out after the next tick. It must
 * still be checked every interval (deferred until its previous check
 * ends), not every other one, or a black-holed origin would take twice
 * as long to go down.
 */
static void test_thread_timeouts_every_interval(void **state)
{
	struct cfg_health h = {.interval_ms = 100,
			       .timeout_ms = 80,
			       .rise = 1,
			       .fall = 1000,
			       .send = "PING\r\n",
			       .send_len = 6,
			       .expect = "+PONG",
			       .expect_len = 5};
	static struct sockaddr_storage addrs[2];
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	uint16_t port;
	int lfd = listener_on(INADDR_ANY, 0, &port);
	uint32_t first, second;
	uint64_t t0;
	char *log;

	(void)state;
	assert_int_equal(listen(lfd, 1024), 0); /* never accepted, never answers */
	cap_begin();
	fixture_init(&f, port, h);
	for (size_t i = 0; i < 2; i++) {
		addrs[i] = f.addr;
		((struct sockaddr_in *)&addrs[i])->sin_addr.s_addr =
		    htonl(0x7f000001u + (uint32_t)i);
	}
	f.co.addrs = addrs;
	f.co.n_addrs = 2;
	app_origins_swap(&f.ao, origin_set_from_cfg(&f.app));
	assert_int_equal(f.ao.set->n, 2);
	t0 = mono_ms();
	do {
		usleep(2000);
		first = __atomic_load_n(&f.ao.set->v[0]->hc_fail, __ATOMIC_RELAXED);
		second = __atomic_load_n(&f.ao.set->v[1]->hc_fail, __ATOMIC_RELAXED);
	} while (first < 12 && mono_ms() - t0 < 20000);
	fixture_deinit(&f);
	close(lfd);
	log = cap_end();
	assert_true(first >= 12);
	/* As many checks, give or take the one in flight (every other
	 * interval would be about 6).
	 */
	assert_true(second + 2 >= first);
	free(log);
}

/* The thread re-reads the set every interval: a swapped-in origin gets
 * checked, the one swapped out is no longer touched.
 */
static void test_thread_set_swap(void **state)
{
	struct cfg_health h = {.interval_ms = 50, .timeout_ms = 500, .rise = 1, .fall = 2};
	struct sockaddr_storage dead = {0};
	struct origin *old, *o2;
	struct origin_set *s2;
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	uint16_t port, dead_port;
	uint32_t old_ok;
	int lfd = listener(0, &port), tmp = listener(0, &dead_port);
	char *log;

	(void)state;
	close(tmp); /* a port with nothing on it: connections are refused */
	cap_begin();
	fixture_init(&f, port, h);
	old = first_origin(&f);
	origin_ref(old);
	assert_true(wait_state(old, 1, 2, lfd, 5000) >= 0);

	/* The resolver's job, done by hand: a new set, one new address. */
	struct cfg_origin co2 = f.co;
	struct sockaddr_in *sin = (struct sockaddr_in *)&dead;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	co2.port = dead_port;
	o2 = origin_new(&co2, &dead);
	assert_non_null(o2);
	s2 = origin_set_new(&f.app, &o2, 1, NULL);
	assert_non_null(s2);
	origin_unref(o2);
	app_origins_swap(&f.ao, s2);

	assert_true(wait_state(o2, 0, 2, lfd, 5000) >= 0);
	/* The old origin is no longer checked: its streak stands still over
	 * several intervals (at most one check was already scheduled).
	 */
	old_ok = __atomic_load_n(&old->hc_ok, __ATOMIC_RELAXED);
	assert_true(wait_state(o2, 0, 6, lfd, 5000) >= 0);
	assert_true(__atomic_load_n(&old->hc_ok, __ATOMIC_RELAXED) <= old_ok + 1);
	fixture_deinit(&f);
	origin_unref(old);
	close(lfd);
	log = cap_end();
	assert_int_equal(count(log, "is down"), 1);
	assert_true(count(log, "is down: 2 failed checks (last: connect: Connection refused)") ==
		    1);
	free(log);
}

/* A test's own hc thread, for teardown to stop after a failed assertion. */
static struct hc *live_hc;

/* Accepts and keeps (never answering) what <lfd> queued, into <keep>;
 * returns how many.
 */
static int accept_keep(int lfd, int *keep, int *n_keep, int cap)
{
	int c, got = 0;

	while (*n_keep < cap && (c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
		keep[(*n_keep)++] = c;
		got++;
	}
	return got;
}

/* An origin's checks are spread over the interval by its place in the set:
 * a new set (one more address from DNS) can move a kept origin's next
 * check less than an interval after its last. That check must still be
 * made, not take the origin's own last result from the shared entry and
 * count it a second time: B (fall 2) goes down only after two checks
 * that reached it.
 */
static void test_thread_set_shift(void **state)
{
	static struct sockaddr_storage addr[3];
	static struct cfg_origin co[3];
	static struct cfg_app app;
	static struct app_origins ao;
	static int keep[256];
	struct cfg_health h = {.on = true,
			       .interval_ms = 400,
			       .timeout_ms = 100,
			       .rise = 1,
			       .fall = 2,
			       .send = "PING",
			       .send_len = 4,
			       .expect = "PONG",
			       .expect_len = 4};
	struct origin *b, *v[3];
	struct origin_set *s;
	uint16_t port[3];
	int lfd[3], n_keep = 0, checks_b = 0;
	uint64_t t0;

	(void)state;
	/* The listeners never answer: each check fails by timeout, and each
	 * one that reached B is a connection queued on lfd[1].
	 */
	for (int i = 0; i < 3; i++) {
		lfd[i] = listener(0, &port[i]);
		loopback_origin(&co[i], &addr[i], port[i]);
	}
	app = (struct cfg_app){.name = "web", .origins = co, .n_origins = 2, .health = h};
	ao_init(&ao, &app); /* X and B; Y comes with the new set */
	assert_int_equal(ao.set->n, 2);
	b = ao.set->v[1];
	origin_ref(b);
	assert_int_equal(hc_start(&live_hc, &ao, 1), 0);

	t0 = mono_ms();
	while (__atomic_load_n(&b->hc_fail, __ATOMIC_RELAXED) < 1 && mono_ms() - t0 < 3000) {
		checks_b += accept_keep(lfd[1], keep, &n_keep, 256);
		accept_keep(lfd[0], keep, &n_keep, 256);
		usleep(2000);
	}
	checks_b += accept_keep(lfd[1], keep, &n_keep, 256);
	assert_int_equal(__atomic_load_n(&b->hc_fail, __ATOMIC_RELAXED), 1);
	assert_int_equal(checks_b, 1);

	/* The resolver's swap, by hand: one more address, at the end, which
	 * moves B from half to a third of the interval.
	 */
	v[0] = ao.set->v[0];
	v[1] = b;
	v[2] = origin_new(&co[2], &addr[2]);
	assert_non_null(v[2]);
	s = origin_set_new(&app, v, 3, NULL);
	assert_non_null(s);
	origin_unref(v[2]);
	app_origins_swap(&ao, s);

	t0 = mono_ms();
	while (__atomic_load_n(&b->up, __ATOMIC_RELAXED) && mono_ms() - t0 < 3000) {
		for (int i = 0; i < 3; i++) {
			int got = accept_keep(lfd[i], keep, &n_keep, 256);

			checks_b += i == 1 ? got : 0;
		}
		usleep(2000);
	}
	checks_b += accept_keep(lfd[1], keep, &n_keep, 256);
	hc_stop(live_hc);
	live_hc = NULL;
	assert_int_equal(__atomic_load_n(&b->up, __ATOMIC_RELAXED), 0);
	assert_true(checks_b >= 2);
	origin_unref(b);
	ao_deinit(&ao);
	for (int i = 0; i < n_keep; i++)
		close(keep[i]);
	for (int i = 0; i < 3; i++)
		close(lfd[i]);
}

/* Many apps checking one origin with the same settings share its checks:
 * one connection per interval for them all, where each app used to make
 * its own, and every app still sees the result. An app with another
 * timeout checks on its own.
 */
enum { SHARED_APPS = 40 };

static void test_thread_shared_checks(void **state)
{
	static struct sockaddr_storage addr;
	static struct cfg_origin co;
	static struct cfg_app apps[SHARED_APPS + 1];
	static struct app_origins aos[SHARED_APPS + 1];
	struct cfg_health h = {
	    .on = true, .interval_ms = 50, .timeout_ms = 500, .rise = 1, .fall = 2};
	uint16_t port;
	int fds = open_fds(), lfd = listener(0, &port), accepted = 0;
	uint64_t t0, ms;
	char *log;

	(void)state;
	loopback_origin(&co, &addr, port);
	cap_begin();
	for (int i = 0; i <= SHARED_APPS; i++) {
		apps[i] = (struct cfg_app){.name = i < SHARED_APPS ? "shared" : "own",
					   .origins = &co,
					   .n_origins = 1,
					   .health = h};
		if (i == SHARED_APPS)
			apps[i].health.timeout_ms = 400;
		ao_init(&aos[i], &apps[i]);
	}
	assert_int_equal(hc_start(&live_hc, aos, SHARED_APPS + 1), 0);

	/* 20 intervals: two keys, so about 40 checks, not 820. */
	t0 = mono_ms();
	while ((ms = mono_ms() - t0) < 20 * 50) {
		int c;

		while ((c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
			accepted++;
			close(c);
		}
		usleep(1000);
	}
	assert_true(accepted >= 2 * 10);
	assert_true(accepted <= 2 * (int)(ms / 50 + 2));
	for (int i = 0; i <= SHARED_APPS; i++)
		assert_true(__atomic_load_n(&aos[i].set->v[0]->hc_ok, __ATOMIC_RELAXED) >= 5);

	/* Gone: every app finds it down, and the log says so for each: a
	 * line for the first few, then one for the rest once the window
	 * (2 x (interval + timeout)) is over, not at stop.
	 */
	close(lfd);
	for (int i = 0; i <= SHARED_APPS; i++)
		assert_true(wait_state(aos[i].set->v[0], 0, 2, -1, 5000) >= 0);
	t0 = mono_ms();
	for (;;) {
		bool seen;

		log = cap_text();
		seen = strstr(log, "is down for ") != NULL;
		free(log);
		if (seen)
			break;
		assert_true(mono_ms() - t0 < 5000);
		usleep(5000);
	}

	/* Back: every app finds it up. */
	lfd = listener(port, NULL);
	for (int i = 0; i <= SHARED_APPS; i++)
		assert_true(wait_state(aos[i].set->v[0], 1, 1, lfd, 5000) >= 0);
	hc_stop(live_hc); /* logs what its open window still holds */
	live_hc = NULL;
	close(lfd);
	for (int i = 0; i <= SHARED_APPS; i++)
		ao_deinit(&aos[i]);
	log = cap_end();
	assert_int_equal(open_fds(), fds);
	for (int up = 0; up <= 1; up++) {
		char one[64], rest[64];

		snprintf(one, sizeof(one), "app shared: origin 127.0.0.1:%u is %s:", port,
			 up ? "up" : "down");
		snprintf(rest, sizeof(rest), "is %s for ", up ? "up" : "down");
		/* A line each for at most SHARED_LOG_APPS (3) per window, a
		 * window being all of them but for a straggler on a slow run.
		 */
		assert_true(count(log, one) >= 3 && count(log, one) <= 6);
		assert_int_equal(count(log, one) + more_apps(log, rest), SHARED_APPS);
	}
	assert_int_equal(count(log, "warn app own: origin 127.0.0.1:"), 1);
	assert_int_equal(count(log, "info app own: origin 127.0.0.1:"), 1);
	free(log);
}

/* Apps with different intervals tick at their own cadence: those with the
 * same interval queue in one lane (three apps, two lanes here, each app on
 * a listener of its own so no check is shared), and every app of a lane
 * keeps ticking.
 */
static void test_thread_lanes(void **state)
{
	enum { APPS = 3, SPAN_MS = 1000 };
	static const uint32_t iv[APPS] = {20, 50, 50};
	static struct sockaddr_storage addr[APPS];
	static struct cfg_origin co[APPS];
	static struct cfg_app apps[APPS];
	static struct app_origins aos[APPS];
	int fds = open_fds(), lfd[APPS], accepted[APPS] = {0};
	uint64_t t0, ms;

	(void)state;
	cap_begin();
	for (int i = 0; i < APPS; i++) {
		uint16_t port;

		lfd[i] = listener(0, &port);
		loopback_origin(&co[i], &addr[i], port);
		apps[i] = (struct cfg_app){
		    .name = "lane",
		    .origins = &co[i],
		    .n_origins = 1,
		    .health = {
			.on = true, .interval_ms = iv[i], .timeout_ms = 15, .rise = 1, .fall = 2}};
		ao_init(&aos[i], &apps[i]);
	}
	assert_int_equal(hc_start(&live_hc, aos, APPS), 0);
	t0 = mono_ms();
	while ((ms = mono_ms() - t0) < SPAN_MS) {
		for (int i = 0; i < APPS; i++) {
			int c;

			while ((c = accept4(lfd[i], NULL, NULL, SOCK_CLOEXEC)) >= 0) {
				accepted[i]++;
				close(c);
			}
		}
		usleep(1000);
	}
	hc_stop(live_hc);
	live_hc = NULL;
	for (int i = 0; i < APPS; i++) {
		/* Not fewer than half the ticks (a loaded machine delays some), and
		 * not more than there were intervals.
		 */
		print_message("app %d, every %u ms: %d checks in %" PRIu64 " ms\n", i, iv[i],
			      accepted[i], ms);
		assert_true(accepted[i] >= (int)(ms / iv[i] / 2));
		assert_true(accepted[i] <= (int)(ms / iv[i] + 2));
		close(lfd[i]);
		ao_deinit(&aos[i]);
	}
	free(cap_end());
	assert_int_equal(open_fds(), fds);
}

/* Thousands of apps in one lane (one interval, one shared origin): ticks
 * due within 1/128 of the interval of the lane's head run with it, so the
 * thread wakes about 128 times an interval rather than every millisecond,
 * and every app still ticks once an interval, never twice in one.
 */
static void test_thread_lanes_batch(void **state)
{
	enum { APPS = 2000, IV = 1280, SPAN_MS = 2 * IV + IV / 2 };
	static struct sockaddr_storage addr;
	static struct cfg_origin co;
	static struct cfg_app apps[APPS];
	static struct app_origins aos[APPS];
	uint16_t port;
	int fds = open_fds(), lfd = listener(0, &port);
	uint64_t t0, wakeups, ms;
	uint32_t lo = UINT32_MAX, hi = 0;

	(void)state;
	loopback_origin(&co, &addr, port);
	cap_begin();
	for (int i = 0; i < APPS; i++) {
		apps[i] = (struct cfg_app){
		    .name = "many",
		    .origins = &co,
		    .n_origins = 1,
		    .health = {
			.on = true, .interval_ms = IV, .timeout_ms = 500, .rise = 1, .fall = 2}};
		ao_init(&aos[i], &apps[i]);
	}
	assert_int_equal(hc_start(&live_hc, aos, APPS), 0);
	t0 = mono_ms();
	while ((ms = mono_ms() - t0) < SPAN_MS) {
		int c;

		while ((c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
			close(c);
		usleep(2000);
	}
	wakeups = hc_wakeups(live_hc);
	hc_stop(live_hc);
	live_hc = NULL;
	for (int i = 0; i < APPS; i++) {
		uint32_t n = __atomic_load_n(&aos[i].set->v[0]->hc_ok, __ATOMIC_RELAXED);

		lo = n < lo ? n : lo;
		hi = n > hi ? n : hi;
		ao_deinit(&aos[i]);
	}
	/* One tick a millisecond would be about SPAN_MS wake-ups; batched,
	 * 128 an interval and a few for the shared check's own events.
	 */
	print_message("%d apps every %d ms: %" PRIu64 " wake-ups in %" PRIu64
		      " ms, %u-%u ticks per app\n",
		      APPS, IV, wakeups, ms, lo, hi);
	assert_true(wakeups < SPAN_MS / 3);
	assert_true(lo >= 1);
	assert_true(hi <= ms / IV + 1);
	close(lfd);
	free(cap_end());
	assert_int_equal(open_fds(), fds);
}

/* An origin name that resolves to new addresses every interval (the
 * resolver's job, done by hand): each address is a key of its own, and the
 * entries of those no longer checked are swept, so the table stays a small
 * multiple of what is checked now instead of growing by N a round.
 */
static void test_thread_shared_sweep(void **state)
{
	enum { N = 50, ROUNDS = 40 };
	struct cfg_health h = {.interval_ms = 20, .timeout_ms = 500, .rise = 1, .fall = 2};
	static struct sockaddr_storage addrs[N];
	static struct fixture f; /* static: outlives a failed assertion's longjmp */
	uint16_t port;
	int fds = open_fds(), lfd = listener_on(INADDR_ANY, 0, &port);
	size_t entries;
	char *log;

	(void)state;
	cap_begin();
	fixture_init(&f, port, h);
	for (uint32_t r = 0; r < ROUNDS; r++) {
		struct origin_set *s;
		uint64_t t0 = mono_ms();
		size_t checked = 0;

		for (uint32_t i = 0; i < N; i++) {
			struct sockaddr_in *a = (struct sockaddr_in *)&addrs[i];

			addrs[i] = f.addr;
			a->sin_addr.s_addr = htonl(0x7f000001u + r * 256 + i);
		}
		f.co.addrs = addrs;
		f.co.n_addrs = N;
		s = origin_set_from_cfg(&f.app);
		assert_non_null(s);
		app_origins_swap(&f.ao, s);
		s = app_origins_get(&f.ao); /* a reference of our own */
		/* Every new address checked once: its entry exists. */
		while (checked < N && mono_ms() - t0 < 5000) {
			int c;

			while ((c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
				close(c);
			checked = 0;
			for (size_t i = 0; i < N; i++)
				checked += __atomic_load_n(&s->v[i]->hc_ok, __ATOMIC_RELAXED) > 0;
			usleep(1000);
		}
		origin_set_unref(s);
		assert_int_equal(checked, N);
	}
	entries = hc_shared_entries(f.hc);
	fixture_deinit(&f);
	close(lfd);
	log = cap_end();
	assert_int_equal(open_fds(), fds);
	/* Without the sweep: N * ROUNDS. */
	assert_true(entries >= N);
	assert_true(entries <= 8 * N);
	free(log);
}

/* After a failed assertion: stop the threads, give stderr back (with the
 * captured log, which explains the failure) before the next test.
 */
static int teardown(void **state)
{
	(void)state;
	if (live_hc) {
		hc_stop(live_hc);
		live_hc = NULL;
	}
	if (live_fx)
		fixture_deinit(live_fx);
	if (live_resp)
		responder_stop(live_resp);
	if (cap_fd != -1)
		free(cap_end());
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_rise_fall, teardown),
	    cmocka_unit_test_teardown(test_rise_fall_one, teardown),
	    cmocka_unit_test_teardown(test_passive_off, teardown),
	    cmocka_unit_test_teardown(test_passive_cooldown_rearm, teardown),
	    cmocka_unit_test_teardown(test_passive_no_shortening, teardown),
	    cmocka_unit_test_teardown(test_passive_limit_one, teardown),
	    cmocka_unit_test_teardown(test_passive_concurrent, teardown),
	    cmocka_unit_test_teardown(test_thread_none, teardown),
	    cmocka_unit_test_teardown(test_thread_connect, teardown),
	    cmocka_unit_test_teardown(test_thread_socket_refused, teardown),
	    cmocka_unit_test_teardown(test_thread_send_only, teardown),
	    cmocka_unit_test_teardown(test_thread_send_expect, teardown),
	    cmocka_unit_test_teardown(test_thread_set_swap, teardown),
	    cmocka_unit_test_teardown(test_thread_set_shift, teardown),
	    cmocka_unit_test_teardown(test_thread_inflight_bound, teardown),
	    cmocka_unit_test_teardown(test_thread_timeouts_every_interval, teardown),
	    cmocka_unit_test_teardown(test_thread_shared_checks, teardown),
	    cmocka_unit_test_teardown(test_thread_shared_sweep, teardown),
	    cmocka_unit_test_teardown(test_thread_lanes, teardown),
	    cmocka_unit_test_teardown(test_thread_lanes_batch, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

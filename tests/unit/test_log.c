/* test_log.c - log.c: line format, the writer thread, and a stderr that is
 * not read: logging never blocks, every line is written or counted, and
 * log_stop() gives up on a reader that never comes back.
 *
 * stderr is redirected to a pipe for each test. A call that blocked would
 * hang the test: alarm() turns that into a failure.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

#define LINES 3000

static int saved_stderr = -1;
static int rd = -1;

/* stderr becomes the write end of a new pipe of <size> bytes. */
static void stderr_to_pipe(int size)
{
	int p[2];

	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_true(fcntl(p[1], F_SETPIPE_SZ, size) >= size);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
	close(p[1]);
	rd = p[0];
}

static void stderr_back(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	saved_stderr = -1;
}

struct reader {
	pthread_t thread;
	char *buf;
	size_t len, cap;
	size_t chunk; /* 0: read all it can; else this much, then a pause */
};

static void *read_all(void *arg)
{
	struct reader *r = arg;

	for (;;) {
		ssize_t n;

		if (r->cap - r->len < 65536) {
			r->cap = r->cap * 2 + 65536;
			r->buf = realloc(r->buf, r->cap + 1);
			if (!r->buf)
				abort();
		}
		n = read(rd, r->buf + r->len,
			 r->chunk && r->chunk < r->cap - r->len ? r->chunk : r->cap - r->len);
		if (n <= 0)
			break;
		r->len += (size_t)n;
		if (r->chunk)
			usleep(200); /* a reader slower than the loggers */
	}
	r->buf[r->len] = '\0';
	return NULL;
}

static size_t count(const char *text, const char *needle)
{
	size_t n = 0;

	for (const char *p = text; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* The sum of N in "log: N lines dropped" warnings. */
static unsigned long dropped_in(const char *text)
{
	const char *key = " error log: ";
	unsigned long sum = 0;

	for (const char *p = text; (p = strstr(p, key)); p++)
		if (strstr(p, " lines dropped: ") < strchr(p, '\n'))
			sum += strtoul(p + strlen(key), NULL, 10);
	return sum;
}

static void test_direct_line_format(void **state)
{
	char buf[256];
	ssize_t n;

	(void)state;
	stderr_to_pipe(65536);
	log_info("hello %d", 42);
	log_debug("not shown at level info");
	stderr_back();
	n = read(rd, buf, sizeof(buf) - 1);
	close(rd);
	assert_true(n > 0);
	buf[n] = '\0';
	/* 2026-11-26T07:40:42.123Z info hello 42 */
	assert_int_equal(strlen(buf), 24 + strlen(" info hello 42\n"));
	assert_int_equal(buf[4], '-');
	assert_int_equal(buf[10], 'T');
	assert_int_equal(buf[19], '.');
	assert_int_equal(buf[23], 'Z');
	assert_string_equal(buf + 24, " info hello 42\n");
}

static int pace_lines = LINES / 2, pace_us; /* per logger thread */

static void *batch_logger(void *arg)
{
	int from = *(int *)arg;

	log_batch_begin();
	for (int i = 0; i < pace_lines; i++) {
		log_access("conn=%d pad=%0120d", from + i, 0);
		if (i % 10 == 9) {
			log_flush(); /* a worker's loop turn */
			if (pace_us)
				usleep((useconds_t)pace_us);
		}
	}
	log_flush();
	return NULL;
}

/* Two threads log as workers do (batch_logger), and are done. */
static void log_from_two_threads(void)
{
	static int a = 0, b = 100000;
	pthread_t t1, t2;

	assert_int_equal(pthread_create(&t1, NULL, batch_logger, &a), 0);
	assert_int_equal(pthread_create(&t2, NULL, batch_logger, &b), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
}

/* Stops the writer (nothing lost) and waits for reader <r> to read the rest. */
static void stop_and_collect(struct reader *r)
{
	assert_int_equal(log_stop(), 0);
	stderr_back();
	pthread_join(r->thread, NULL);
	alarm(0);
	close(rd);
}

static void test_unread_stderr_never_blocks(void **state)
{
	struct reader r = {0};

	(void)state;
	stderr_to_pipe(65536);
	assert_int_equal(log_start(65536), 0);
	alarm(20);
	/* Nobody reads: ~500 KB of lines against 64 KiB of pipe and 64 KiB of
	 * buffer. Two threads log as workers do.
	 */
	log_from_two_threads();
	/* Now read: what was buffered comes out, then the count of the rest. */
	assert_int_equal(pthread_create(&r.thread, NULL, read_all, &r), 0);
	stop_and_collect(&r);

	size_t written = count(r.buf, " access conn=");
	unsigned long dropped = dropped_in(r.buf);

	assert_true(written > 0);
	assert_true(dropped > 0);
	assert_int_equal(written + dropped, LINES);
	/* Whole lines only: each written one ends with its padding and '\n'. */
	assert_int_equal(count(r.buf, "\n"), written + count(r.buf, " error log: "));
	free(r.buf);
}

/* A reader that keeps reading, but slower than two threads log: lines are
 * dropped while the writer writes, and the report of each drop competes
 * with them for the space a write frees. Every dropped line must still be
 * counted in some report.
 */
static void test_slow_reader_every_drop_reported(void **state)
{
	struct reader r = {.chunk = 4096};

	(void)state;
	/* 2 x 15,000 lines of ~170 bytes at about twice the reader's pace:
	 * drops all along, for many of the writer's rounds. */
	pace_lines = 15000;
	pace_us = 50;
	stderr_to_pipe(65536);
	assert_int_equal(log_start(65536), 0);
	alarm(20);
	assert_int_equal(pthread_create(&r.thread, NULL, read_all, &r), 0);
	log_from_two_threads();
	stop_and_collect(&r);

	size_t written = count(r.buf, " access conn=");
	unsigned long dropped = dropped_in(r.buf);

	pace_lines = LINES / 2;
	pace_us = 0;
	assert_true(dropped > 0);
	assert_int_equal(written + dropped, 30000);
	free(r.buf);
}

static void test_stop_gives_up_on_stalled_reader(void **state)
{
	uint64_t lost;

	(void)state;
	stderr_to_pipe(8192); /* two pages */
	assert_int_equal(log_start(1 << 20), 0);
	alarm(20);
	for (int i = 0; i < LINES; i++)
		log_access("conn=%d pad=%0120d", i, 0);
	/* The pipe holds some of it; the rest cannot be written. */
	lost = log_stop();
	/* The lines after the stop are written directly, and the reader
	 * given up on is not waited for again: each used to wait the 2 s
	 * the writer had waited (this alarm would end the test).
	 */
	alarm(1);
	log_err("log: %" PRIu64 " lines not written at exit", lost);
	log_info("stopped");
	alarm(0);
	stderr_back();
	assert_true(lost > 0);
	assert_true(lost < LINES);

	/* What the pipe holds is whole lines: the writer cut its pieces at
	 * a newline, so giving up left no line half written (a reader that
	 * came back would have found the next line glued to it).
	 */
	static char got[8192 + 1];
	size_t len = 0;
	ssize_t r;

	assert_int_equal(fcntl(rd, F_SETFL, O_NONBLOCK), 0);
	while (len < sizeof(got) - 1 && (r = read(rd, got + len, sizeof(got) - 1 - len)) > 0)
		len += (size_t)r;
	close(rd);
	got[len] = '\0';
	assert_true(len > 0);
	assert_int_equal(got[len - 1], '\n');
	assert_int_equal(count(got, "\n") + lost, LINES);
}

/* A terminal whose reader stopped (an ssh session that hangs): poll(2)
 * says there is room as soon as there is a byte of it, and a blocking
 * write then sleeps in the kernel for good. log_stop() must still give
 * up and return.
 */
static void test_stop_gives_up_on_stalled_terminal(void **state)
{
	int master = posix_openpt(O_RDWR | O_NOCTTY), slave;
	uint64_t lost;

	(void)state;
	if (master < 0) /* no /dev/ptmx here (a container without one) */
		skip();
	assert_int_equal(grantpt(master), 0);
	assert_int_equal(unlockpt(master), 0);
	slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	assert_true(slave >= 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_int_equal(dup2(slave, STDERR_FILENO), STDERR_FILENO);
	close(slave);
	assert_int_equal(log_start(1 << 20), 0);
	alarm(20);
	for (int i = 0; i < LINES; i++)
		log_access("conn=%d pad=%0120d", i, 0);
	lost = log_stop(); /* nobody reads the master */
	alarm(0);
	stderr_back();
	close(master);
	assert_true(lost > 0);
	assert_true(lost < LINES);
}

/* The reader of a terminal given up on at exit comes back, slowly: it
 * takes a few bytes at a time. A line written directly after the give-up
 * that the terminal takes part of is written whole, not cut where the
 * terminal was full and glued to the next line.
 */
static int slow_master = -1;
static int slow_go, slow_stop; /* atomic */
static char slow_got[1 << 20];
static size_t slow_len;

static void *slow_reader(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&slow_go, __ATOMIC_ACQUIRE))
		usleep(100);
	for (int idle = 0; idle < 200;) {
		int stop = __atomic_load_n(&slow_stop, __ATOMIC_ACQUIRE);
		size_t room = sizeof(slow_got) - 1 - slow_len;
		ssize_t n = read(slow_master, slow_got + slow_len, stop || room < 32 ? room : 32);

		if (n > 0) {
			slow_len += (size_t)n;
			idle = 0;
		} else if (stop) {
			idle++;
		}
		usleep(500);
	}
	return NULL;
}

static void test_terminal_back_gets_whole_lines(void **state)
{
	char big[900], start[24], whole[1024];
	int slave, seen = 0;
	pthread_t t;

	(void)state;
	slow_master = posix_openpt(O_RDWR | O_NOCTTY);
	if (slow_master < 0)
		skip();
	assert_int_equal(grantpt(slow_master), 0);
	assert_int_equal(unlockpt(slow_master), 0);
	slave = open(ptsname(slow_master), O_RDWR | O_NOCTTY);
	assert_true(slave >= 0);
	assert_int_equal(fcntl(slow_master, F_SETFL, O_NONBLOCK), 0);
	saved_stderr = dup(STDERR_FILENO);
	assert_int_equal(dup2(slave, STDERR_FILENO), STDERR_FILENO);
	close(slave);
	assert_int_equal(pthread_create(&t, NULL, slow_reader, NULL), 0);
	assert_int_equal(log_start(1 << 20), 0);
	alarm(20);
	for (int i = 0; i < LINES; i++)
		log_access("conn=%d pad=%0120d", i, 0);
	assert_true(log_stop() > 0);
	__atomic_store_n(&slow_go, 1, __ATOMIC_RELEASE);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < 40; i++) {
		log_err("LINE%d %s END%d", i, big, i);
		usleep(7000);
	}
	__atomic_store_n(&slow_stop, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
	alarm(0);
	stderr_back();
	close(slow_master);
	slow_got[slow_len] = '\0';
	/* Lines the terminal had no room for at all are not written; every
	 * one that was begun is whole (the terminal writes \r\n).
	 */
	for (int i = 0; i < 40; i++) {
		snprintf(start, sizeof(start), "LINE%d ", i);
		if (!strstr(slow_got, start))
			continue;
		snprintf(whole, sizeof(whole), "LINE%d %s END%d\r\n", i, big, i);
		assert_non_null(strstr(slow_got, whole));
		seen++;
	}
	assert_true(seen > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_direct_line_format),
	    cmocka_unit_test(test_unread_stderr_never_blocks),
	    cmocka_unit_test(test_slow_reader_every_drop_reported),
	    cmocka_unit_test(test_stop_gives_up_on_stalled_reader),
	    cmocka_unit_test(test_stop_gives_up_on_stalled_terminal),
	    cmocka_unit_test(test_terminal_back_gets_whole_lines),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

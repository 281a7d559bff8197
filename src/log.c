/* log.c - timestamped diagnostic and access-log lines on stderr.
 *
 * Each line is formatted into a stack buffer and written with one write(2):
 * POSIX makes writes of up to PIPE_BUF bytes to a pipe atomic, and stderr is
 * usually a pipe or a journal socket, so lines from worker threads do not
 * interleave. Logging never blocks the caller on a lock.
 *
 * Worker threads batch: between log_batch_begin() and log_flush() lines are
 * collected in a thread-local buffer of at most PIPE_BUF bytes and written
 * together, so a loop turn that ends many connections costs one write(2),
 * still atomic, instead of one per line.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

enum log_level log_max_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static __thread bool batching;
static __thread size_t batch_len;
static __thread char batch[PIPE_BUF];

static void write_all(const char *buf, size_t n)
{
	int saved = errno; /* callers log then inspect errno */

	while (write(STDERR_FILENO, buf, n) == -1 && errno == EINTR)
		;
	errno = saved;
}

void log_batch_begin(void)
{
	batching = true;
}

void log_flush(void)
{
	if (batch_len)
		write_all(batch, batch_len);
	batch_len = 0;
}

/* The "2026-11-26T07:40:42" part changes once a second: each thread keeps
 * the last one, so a busy worker formats it once per second rather than per
 * line (gmtime_r and strftime were the largest user-space cost of an access
 * line).
 */
static __thread time_t stamp_sec = -1;
static __thread char stamp[32];
static __thread size_t stamp_len;

static size_t log_stamp(char *buf, const char *level)
{
	struct timespec ts;
	unsigned ms;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != stamp_sec) {
		struct tm tm;

		gmtime_r(&ts.tv_sec, &tm);
		stamp_len = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S.", &tm);
		stamp_sec = ts.tv_sec;
	}
	memcpy(buf, stamp, stamp_len);
	n = stamp_len;
	ms = (unsigned)(ts.tv_nsec / 1000000);
	buf[n++] = (char)('0' + ms / 100);
	buf[n++] = (char)('0' + ms / 10 % 10);
	buf[n++] = (char)('0' + ms % 10);
	buf[n++] = 'Z';
	buf[n++] = ' ';
	while (*level)
		buf[n++] = *level++;
	buf[n++] = ' ';
	return n;
}

static void log_write(const char *level, const char *fmt, va_list ap)
{
	char buf[1024];
	size_t n;
	int r;

	n = log_stamp(buf, level); /* < 48 bytes: "...Z " and a level name */
	r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r;
	if (n > sizeof(buf) - 2)
		n = sizeof(buf) - 2; /* truncated: keep the newline */
	buf[n++] = '\n';

	if (!batching || n > sizeof(batch)) {
		write_all(buf, n);
		return;
	}
	if (batch_len + n > sizeof(batch))
		log_flush();
	memcpy(batch + batch_len, buf, n);
	batch_len += n;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;

	if (lvl > log_max_level)
		return;
	va_start(ap, fmt);
	log_write(level_names[lvl], fmt, ap);
	va_end(ap);
}

void log_access(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write("access", fmt, ap);
	va_end(ap);
}

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

static void log_write(const char *level, const char *fmt, va_list ap)
{
	char buf[1024];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	r = snprintf(buf + n, sizeof(buf) - n, ".%03ldZ %s ", ts.tv_nsec / 1000000, level);
	if (r > 0)
		n += (size_t)r;
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

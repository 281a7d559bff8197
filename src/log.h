/* log.h - diagnostics and the access log, both line-oriented on stderr.
 *
 * One line per event, "TIME LEVEL message", whole lines only. Access-log
 * lines use level "access" and key=value fields. Between log_start() and
 * log_stop() a writer thread does the writing, so a slow or stalled reader
 * of stderr never blocks the thread that logs (see log.c).
 */
#ifndef PRISM_LOG_H
#define PRISM_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level {
	LOG_ERR = 0,
	LOG_WARN,
	LOG_INFO,
	LOG_DEBUG,
};

extern enum log_level log_max_level;

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes a line at level info whatever log_max_level says: the lines that
 * say prism is ready and that it stopped, which supervisors and scripts
 * wait for.
 */
void log_life(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Writes an access-log line (level "access"). */
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define LOG_BUFFER_DEFAULT (1u << 20)
#define LOG_BUFFER_MIN	   (64u << 10)
#define LOG_BUFFER_MAX	   (256u << 20)

/* Starts the writer thread with a buffer of <buffer> bytes; lines that do
 * not fit are dropped and counted. Returns 0 or -errno.
 */
int log_start(size_t buffer);
/* Writes what is buffered (giving up after 2 s without progress) and stops
 * the writer. Returns the number of lines it had to give up.
 */
uint64_t log_stop(void);

/* Starts batching this thread's lines until log_flush() (worker threads
 * call log_flush() at the end of every loop turn).
 */
void log_batch_begin(void);
void log_flush(void);

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) (log_max_level >= LOG_DEBUG ? log_msg(LOG_DEBUG, __VA_ARGS__) : (void)0)

/* For a warning that the same cause can raise thousands of times a second:
 * whether one may be logged at <now> (ms), at most one per <every_ms>;
 * when it may, <*last> becomes <now>. <*last> starts at 0 (never logged).
 * Threads may share <*last>: one of them wins each slot.
 */
static inline bool log_ratelimit(uint64_t *last, uint64_t now, uint64_t every_ms)
{
	uint64_t l = __atomic_load_n(last, __ATOMIC_RELAXED);

	if (l && now < l + every_ms)
		return false;
	return __atomic_compare_exchange_n(last, &l, now ? now : 1, false, __ATOMIC_RELAXED,
					   __ATOMIC_RELAXED);
}

#endif

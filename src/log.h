/* log.h - diagnostics and the access log, both line-oriented on stderr.
 *
 * One line per event, each written with a single write(2) so lines from
 * worker threads never interleave: "TIME LEVEL message". Access-log lines
 * use level "access" and key=value fields.
 */
#ifndef PRISM_LOG_H
#define PRISM_LOG_H

#include <stdarg.h>

enum log_level {
	LOG_ERR = 0,
	LOG_WARN,
	LOG_INFO,
	LOG_DEBUG,
};

extern enum log_level log_max_level;

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes an access-log line (level "access"). */
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Starts batching this thread's lines until log_flush() (worker threads
 * call log_flush() at the end of every loop turn).
 */
void log_batch_begin(void);
void log_flush(void);

#define log_err(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) (log_max_level >= LOG_DEBUG ? log_msg(LOG_DEBUG, __VA_ARGS__) : (void)0)

#endif

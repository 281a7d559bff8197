/* log.c - timestamped diagnostic and access-log lines on stderr.
 *
 * Whoever reads prism's stderr (journald, a pipe into a log shipper, a
 * terminal) may stop reading or fall behind. A blocking write(2) on a full
 * pipe would then stop every worker that logs, and with it all traffic. So
 * while prism runs (log_start() to log_stop()), lines go through one
 * buffer to a writer thread, the only thread that writes to stderr:
 *
 *   worker: format the line, append it to a thread-local batch; at the end
 *           of the loop turn, copy the batch into the buffer (one lock)
 *   writer: take everything buffered, write it, in pieces of whole lines
 *           of at most PIPE_BUF bytes after poll(2) says there is room,
 *           through a non-blocking file description (see out_open), so
 *           it does not block either and can give up at exit (on a
 *           pipe, which takes a piece whole or not at all, without
 *           leaving half a line)
 *
 * When the buffer (log_buffer bytes) is full, new lines are dropped and
 * counted, and the writer reports the count as soon as it can write again.
 * Access lines are written within LOG_DELAY_MS, or once LOG_HIGH bytes are
 * waiting; diagnostics wake the writer at once.
 *
 * Before log_start() and after log_stop() (start-up errors, the last lines
 * at exit, the commands other than run) lines are written directly, with
 * the same bounded wait for room.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "timer.h"

#define LOG_DELAY_MS 100	 /* access lines wait at most this long */
#define LOG_HIGH     (32u << 10) /* ... or until this much is waiting */
#define LOG_STALL_MS 2000	 /* at exit, or before start: give up on a stalled reader */
#define LOG_LINE_MAX 1024

enum log_level log_max_level = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* The thread-local batch of a worker, handed over once per loop turn. */
static __thread bool batching;
static __thread size_t batch_len, batch_lines;
static __thread bool batch_urgent;
static __thread char batch[PIPE_BUF];

/* stderr as the writer writes to it. A blocking write(2) can sleep in the
 * kernel however little it writes (a terminal whose reader stopped: poll
 * says there is room as soon as there is a byte of it), and then no
 * deadline of ours runs. So writes never block: a socket (journald) gets
 * send(MSG_DONTWAIT); a pipe, FIFO or terminal is opened anew through
 * /proc/self/fd/2 with O_NONBLOCK, a file description of our own (setting
 * O_NONBLOCK on fd 2 would change it for the processes that share it, such
 * as the shell). A regular file never makes a writer wait for a reader.
 * Only when that open fails (no /proc) is fd 2 written blocking, after
 * poll, as before.
 */
enum { OUT_REGULAR, OUT_SOCKET, OUT_NONBLOCK, OUT_BLOCKING };

struct out {
	int fd;
	int kind;
};

enum { W_BUSY, W_TIMED, W_IDLE }; /* what the writer is doing */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond; /* CLOCK_MONOTONIC */
	pthread_t thread;
	bool on;     /* the writer runs: lines go to the buffer */
	bool stop;   /* log_stop(): write what is left, then exit */
	bool urgent; /* a diagnostic waits */
	int state;
	char *buf; /* ring: used bytes from head, wrapping at cap */
	size_t cap, head, used;
	uint64_t dropped; /* lines dropped since the last report */
	uint64_t lost;	  /* lines given up at exit (reader stalled) */
	struct out out;	  /* where the writer writes */
	/* atomic: the last write to stderr gave up on a stalled reader, so
	 * the next direct one does not wait for it again (see write_direct)
	 */
	bool stalled;
} lg = {.lock = PTHREAD_MUTEX_INITIALIZER};

static struct out out_open(void)
{
	struct stat st;
	int fd;

	if (fstat(STDERR_FILENO, &st) == -1 || S_ISREG(st.st_mode))
		return (struct out){STDERR_FILENO, OUT_REGULAR};
	if (S_ISSOCK(st.st_mode))
		return (struct out){STDERR_FILENO, OUT_SOCKET};
	fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd == -1)
		return (struct out){STDERR_FILENO, OUT_BLOCKING};
	return (struct out){fd, OUT_NONBLOCK};
}

static void out_close(struct out *o)
{
	if (o->fd != STDERR_FILENO)
		close(o->fd);
}

/* The next piece to write of the <n> bytes from <p1> then <p2> (the ring's
 * two parts), from <off>: all of it to a regular file; else at most
 * PIPE_BUF bytes, up to the last newline in them, so that a pipe takes it
 * in one write or not at all and a give-up never leaves a line cut. Fills
 * <iov>; returns its count.
 */
static int out_piece(const struct out *o, const char *p1, size_t n1, const char *p2, size_t n,
		     size_t off, struct iovec iov[2])
{
	size_t len = n - off, a;
	int k = 0;

	if (o->kind != OUT_REGULAR && len > PIPE_BUF) {
		size_t end = off + PIPE_BUF, cut = 0;

		/* Lines are at most LOG_LINE_MAX < PIPE_BUF: there is one. */
		for (size_t i = end; i > off && !cut; i--)
			if ((i - 1 < n1 ? p1[i - 1] : p2[i - 1 - n1]) == '\n')
				cut = i;
		len = (cut ? cut : end) - off;
	}
	if (off < n1) {
		a = n1 - off < len ? n1 - off : len;
		iov[k++] = (struct iovec){(void *)(p1 + off), a};
		len -= a;
		off = n1;
	}
	if (len)
		iov[k++] = (struct iovec){(void *)(p2 + (off - n1)), len};
	return k;
}

/* Writes the <n> bytes of <p1> (its first <n1>) then <p2> to <o>;
 * returns how many it wrote. Unless <o> is a regular file, waits for room
 * with poll(2) and writes whole lines, at most PIPE_BUF bytes at a time
 * (out_piece). Gives up once no byte could be written for <stall_ms>
 * and <patient> is false (or NULL), or on an error such as EPIPE.
 */
static size_t write_out(const struct out *o, const char *p1, size_t n1, const char *p2, size_t n,
			const bool *patient, uint64_t stall_ms)
{
	uint64_t since = mono_ms();
	int saved = errno; /* callers log then inspect errno */
	size_t done = 0;

	while (done < n) {
		struct iovec iov[2];
		ssize_t w;
		int r = 1;

		if (o->kind != OUT_REGULAR) {
			struct pollfd pfd = {.fd = o->fd, .events = POLLOUT};
			uint64_t waited = mono_ms() - since;
			uint64_t left = waited < stall_ms ? stall_ms - waited : 0;
			int wait = 100;

			/* No longer than the wait left: 0 tries once. */
			if (!(patient && __atomic_load_n(patient, __ATOMIC_RELAXED)) && left < 100)
				wait = (int)left;
			r = poll(&pfd, 1, wait);
			if (r == -1 && errno != EINTR)
				break;
		}
		if (r > 0) {
			int k = out_piece(o, p1, n1, p2, n, done, iov);

			if (o->kind == OUT_SOCKET)
				w = sendmsg(
				    o->fd,
				    &(struct msghdr){.msg_iov = iov, .msg_iovlen = (size_t)k},
				    MSG_DONTWAIT | MSG_NOSIGNAL);
			else
				w = writev(o->fd, iov, k);
			if (w > 0) {
				done += (size_t)w;
				since = mono_ms();
				continue;
			}
			if (w == -1 && errno != EINTR && errno != EAGAIN)
				break; /* EPIPE: nobody reads any more */
		}
		if (!(patient && __atomic_load_n(patient, __ATOMIC_RELAXED)) &&
		    mono_ms() - since >= stall_ms)
			break;
	}
	errno = saved;
	return done;
}

/* Newlines in the <n> bytes of the ring from offset <off> (wrapping). */
static uint64_t ring_lines(size_t off, size_t n)
{
	uint64_t k = 0;

	while (n) {
		size_t len = lg.cap - off < n ? lg.cap - off : n;
		const char *p = lg.buf + off, *end = p + len;

		while ((p = memchr(p, '\n', (size_t)(end - p)))) {
			k++;
			p++;
		}
		n -= len;
		off = 0;
	}
	return k;
}

/* A line written directly (the writer not running): through a description
 * of its own each time, as stderr may have been redirected meanwhile. After
 * a write that gave up on a stalled reader, a line is written only if the
 * reader takes some of it at once: the last lines at exit (the count of
 * lines lost, "stopped") would otherwise wait LOG_STALL_MS each for a
 * reader already given up on. A line written whole ends that.
 */
static void write_direct(const char *p, size_t n)
{
	struct out o = out_open();
	bool stalled = __atomic_load_n(&lg.stalled, __ATOMIC_RELAXED);
	size_t done = write_out(&o, p, n, NULL, n, NULL, stalled ? 0 : LOG_STALL_MS);

	/* A terminal or a socket may take part of a line: a reader that took
	 * it is back, and gets the rest of the line, not half of it glued to
	 * the next one.
	 */
	if (stalled && done > 0 && done < n)
		done += write_out(&o, p + done, n - done, NULL, n - done, NULL, LOG_STALL_MS);

	__atomic_store_n(&lg.stalled, done < n, __ATOMIC_RELAXED);
	out_close(&o);
}

/* Appends <n> bytes that fit to the ring. Called with the lock held. */
static void ring_put(const char *p, size_t n)
{
	size_t tail = (lg.head + lg.used) % lg.cap;
	size_t first = lg.cap - tail < n ? lg.cap - tail : n;

	memcpy(lg.buf + tail, p, first);
	memcpy(lg.buf, p + first, n - first);
	lg.used += n;
}

/* Appends <n> bytes holding <lines> lines to the buffer, or writes them
 * directly when the writer is not running.
 */
static void push(const char *p, size_t n, size_t lines, bool urgent)
{
	bool wake;

	pthread_mutex_lock(&lg.lock);
	if (!lg.on) {
		pthread_mutex_unlock(&lg.lock);
		write_direct(p, n);
		return;
	}
	if (lg.cap - lg.used < n) {
		lg.dropped += lines;
		pthread_mutex_unlock(&lg.lock);
		return;
	}
	ring_put(p, n);
	lg.urgent |= urgent;
	wake = lg.state == W_IDLE || (lg.state == W_TIMED && (lg.urgent || lg.used >= LOG_HIGH));
	if (wake) {
		lg.state = W_BUSY;
		pthread_cond_signal(&lg.cond);
	}
	pthread_mutex_unlock(&lg.lock);
}

static size_t log_stamp(char *buf, const char *level);

/* Buffers the report of <dropped> lines like any line, after those just
 * written. Producers may have filled the space those freed meanwhile:
 * then the count goes back for the next report rather than being lost.
 * Called with the lock held.
 */
static void report_dropped(uint64_t dropped)
{
	char buf[LOG_LINE_MAX];
	size_t n = log_stamp(buf, level_names[LOG_ERR]);
	int r = snprintf(buf + n, sizeof(buf) - n - 1,
			 "log: %" PRIu64 " lines dropped: stderr is not read fast enough "
			 "(log_buffer is %zu bytes)",
			 dropped, lg.cap);

	n += r > 0 ? (size_t)r : 0;
	if (n > sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	buf[n++] = '\n';
	if (lg.cap - lg.used < n) {
		lg.dropped += dropped;
		return;
	}
	ring_put(buf, n);
	lg.urgent = true;
}

static void *writer_main(void *arg)
{
	struct timespec due = {0};
	bool timed = false;

	(void)arg;
	pthread_mutex_lock(&lg.lock);
	for (;;) {
		size_t head, n, first, done;
		uint64_t dropped, lost = 0;
		bool ok;

		if (lg.used == 0 && lg.dropped == 0) {
			if (lg.stop)
				break;
			lg.state = W_IDLE;
			pthread_cond_wait(&lg.cond, &lg.lock);
			continue;
		}
		/* Access lines only, and not many: give others a moment to
		 * join them, so that one write carries many lines.
		 */
		if (!lg.stop && !lg.urgent && lg.used < LOG_HIGH) {
			if (!timed) {
				clock_gettime(CLOCK_MONOTONIC, &due);
				due.tv_nsec += LOG_DELAY_MS * 1000000L;
				due.tv_sec += due.tv_nsec / 1000000000L;
				due.tv_nsec %= 1000000000L;
				timed = true;
			}
			lg.state = W_TIMED;
			if (pthread_cond_timedwait(&lg.cond, &lg.lock, &due) != ETIMEDOUT)
				continue;
		}
		timed = false;
		lg.state = W_BUSY;
		lg.urgent = false;
		head = lg.head;
		n = lg.used;
		dropped = lg.dropped;
		lg.dropped = 0;
		pthread_mutex_unlock(&lg.lock);

		/* Producers append after head + n only, so this part is ours
		 * until head moves.
		 */
		first = lg.cap - head < n ? lg.cap - head : n;
		done = write_out(&lg.out, lg.buf + head, first, lg.buf, n, &lg.on, LOG_STALL_MS);
		ok = done == n;
		__atomic_store_n(&lg.stalled, !ok, __ATOMIC_RELAXED);
		if (!ok) /* ours to count without the lock */
			lost = ring_lines((head + done) % lg.cap, n - done);

		pthread_mutex_lock(&lg.lock);
		lg.head = (head + n) % lg.cap;
		lg.used -= n;
		if (ok && dropped)
			report_dropped(dropped);
		if (!ok) {
			/* At exit, stderr stalled for LOG_STALL_MS; or it is
			 * gone (EPIPE). Give up on everything buffered: what
			 * was not written, and what was appended meanwhile
			 * right after it.
			 */
			lg.lost += lost + ring_lines(lg.head, lg.used);
			lg.lost += dropped + lg.dropped;
			lg.dropped = 0;
			lg.head = lg.used = 0;
		}
	}
	pthread_mutex_unlock(&lg.lock);
	return NULL;
}

int log_start(size_t buffer)
{
	pthread_condattr_t ca;
	int r;

	if (lg.on)
		return 0;
	lg.buf = malloc(buffer);
	if (!lg.buf)
		return -ENOMEM;
	lg.cap = buffer;
	lg.head = lg.used = 0;
	lg.dropped = lg.lost = 0;
	lg.stop = lg.urgent = false;
	__atomic_store_n(&lg.stalled, false, __ATOMIC_RELAXED);
	lg.state = W_BUSY;
	lg.out = out_open();
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&lg.cond, &ca);
	pthread_condattr_destroy(&ca);
	/* Before the thread exists: lines pushed from here on are buffered. */
	pthread_mutex_lock(&lg.lock);
	lg.on = true;
	pthread_mutex_unlock(&lg.lock);
	r = pthread_create(&lg.thread, NULL, writer_main, NULL);
	if (r) {
		pthread_mutex_lock(&lg.lock);
		lg.on = false;
		pthread_mutex_unlock(&lg.lock);
		pthread_cond_destroy(&lg.cond);
		free(lg.buf);
		lg.buf = NULL;
		out_close(&lg.out);
		return -r;
	}
	pthread_setname_np(lg.thread, "log");
	return 0;
}

uint64_t log_stop(void)
{
	pthread_mutex_lock(&lg.lock);
	if (!lg.on) {
		pthread_mutex_unlock(&lg.lock);
		return 0;
	}
	lg.stop = true;
	/* From here the writer gives up on a reader stalled LOG_STALL_MS,
	 * and new lines are written directly.
	 */
	__atomic_store_n(&lg.on, false, __ATOMIC_RELAXED);
	pthread_cond_signal(&lg.cond);
	pthread_mutex_unlock(&lg.lock);
	pthread_join(lg.thread, NULL);
	pthread_cond_destroy(&lg.cond);
	free(lg.buf);
	lg.buf = NULL;
	out_close(&lg.out);
	return lg.lost;
}

void log_batch_begin(void)
{
	batching = true;
}

void log_flush(void)
{
	if (batch_len)
		push(batch, batch_len, batch_lines, batch_urgent);
	batch_len = batch_lines = 0;
	batch_urgent = false;
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

static void log_write(const char *level, bool urgent, const char *fmt, va_list ap)
{
	char buf[LOG_LINE_MAX];
	size_t n;
	int r;

	n = log_stamp(buf, level); /* < 48 bytes: "...Z " and a level name */
	r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r;
	if (n > sizeof(buf) - 2)
		n = sizeof(buf) - 2; /* truncated: keep the newline */
	buf[n++] = '\n';

	if (!batching) {
		push(buf, n, 1, urgent);
		return;
	}
	if (batch_len + n > sizeof(batch))
		log_flush();
	memcpy(batch + batch_len, buf, n);
	batch_len += n;
	batch_lines++;
	batch_urgent |= urgent;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;

	if (lvl > log_max_level)
		return;
	va_start(ap, fmt);
	log_write(level_names[lvl], true, fmt, ap);
	va_end(ap);
}

void log_life(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(level_names[LOG_INFO], true, fmt, ap);
	va_end(ap);
}

void log_access(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write("access", false, fmt, ap);
	va_end(ap);
}

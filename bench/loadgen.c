/* loadgen.c - TCP load generator and echo origin for prism's benchmarks.
 *
 * Build: make build/loadgen, or
 *   gcc -std=gnu11 -O2 -D_GNU_SOURCE -Wall -Wextra -o build/loadgen \
 *       bench/loadgen.c bench/lg_util.c bench/lg_serve.c
 * Files: loadgen.c (client side, threads, report, main), lg_util.c (PRNG,
 * histograms, sockaddr helpers, arguments), lg_serve.c (serve), loadgen.h.
 *
 * Usage (one JSON object on stdout at the end; progress/errors on stderr;
 * exit 0 ok, 1 failure, 2 usage):
 *   loadgen serve --listen ADDR:PORT [--listen ADDR:PORT ...] [--threads N]
 *       echo origin; one SO_REUSEPORT listener per address per thread;
 *       prints "ready" on stderr; on SIGTERM/SIGINT: {"accepted": N}
 *   loadgen serve --addr ADDR --ports LO-HI [--threads N]
 *       the naive any-port design: one listening socket per port, shared by
 *       the threads (EPOLLEXCLUSIVE); prints "ready listeners=N setup_ms=X"
 *   loadgen rate --target PREFIX --ports P --concurrency 64 --duration S
 *       [--size 64] [--seed N] [--timeout 5] [--threads 1] [--rst]
 *       connect, send SIZE bytes, read them back, close; random (addr, port)
 *       per connection. {"conns","errors","conn_per_s","connect_us","lat_us"}
 *   loadgen latency --target ADDR --ports PORT --conns N --duration S
 *       [--size 64] [--timeout 5] [--threads 1]
 *       persistent ping-pong. {"transactions","tps","errors","rtt_us"}
 *   loadgen hold --target PREFIX --ports P --conns N [--timeout 30]
 *       [--concurrency 256] [--threads 1]
 *       opens N connections with a 1-byte echo each, prints "held N" on
 *       stderr, waits for SIGTERM/SIGINT or stdin EOF. {"held","errors","open_ms"}
 * PREFIX is "198.18.0.0/16" or a bare address (v4 or v6); P is "LO-HI" or
 * one port; both are drawn uniformly per connection by xorshift64* seeded
 * from --seed (default 1, so runs repeat). serve and hold also stop after
 * --duration (default 3600 s) so that a forgotten process cannot run forever.
 *
 * Measures: connect_us = the connect() call itself, of the connections
 * that then connected (one whose SYN was dropped returns at once): on this machine's
 * all-local paths the kernel runs the whole handshake (SYN through the
 * edge's rules and listener lookup, SYN-ACK, ACK) inside the call, so this
 * is the handshake, not the proxy's accept (which the kernel does not wait
 * for); lat_us = connect() to the full echo (handshake, the server's
 * accept, read and write, and this client's loop), rtt_us = send to full
 * echo. Each is stamped at its own call or event, not once per loop turn;
 * all in us, log-linear buckets (< 1% error). --timeout bounds each
 * connection step (rate/latency, default 5 s) or the whole opening phase
 * (hold, default 30 s); a late connection counts as an error. At the end of
 * --duration in-flight connections are dropped, not counted.
 * rate: the client closes first (FIN), so TIME_WAIT stays on the client and
 * never on the server; toward a single (addr, port) set
 * net.ipv4.tcp_tw_reuse=1 in the client namespace or the ~28k ephemeral
 * ports run out. --rst closes with SO_LINGER 0 instead (no TIME_WAIT).
 * Nothing is bound on the client side: the kernel picks source ports.
 * Exit 1: rate/latency with no completed connection, hold with fewer than N
 * held or any error.
 *
 * Design: one epoll loop per thread, non-blocking sockets, a fixed array of
 * connection slots per thread and log-linear histograms (no allocation per
 * connection or sample on the client side). The main thread only waits for
 * signals, stdin and worker notifications, then prints the JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>

#include "loadgen.h"

static const char *const err_names[E_NKINDS] = {
    "refused", "timeout", "reset", "eof", "addr_unavailable", "aborted", "other",
};

atomic_int g_stop;
static atomic_int g_workers_done;
static atomic_int g_workers_opened;
static int g_notify_fd = -1;
struct worker *g_workers;

/* ---- client side ---- */

static uint64_t ns_of(double secs)
{
	return (uint64_t)(secs * 1e9);
}

/* Random destination inside the target prefix and port range. */
static void pick_dest(struct worker *w, struct sockaddr_storage *ss)
{
	const struct prefix *p = &g_opt.target;
	int alen = p->family == AF_INET ? 4 : 16;
	uint8_t a[16];
	uint64_t r = 0;
	unsigned port = g_opt.port_lo;

	memcpy(a, p->addr, 16);
	if (p->plen < alen * 8) {
		for (int i = 0; i < alen; i++) {
			int keep = p->plen - i * 8;
			uint8_t host = keep >= 8 ? 0 : keep <= 0 ? 0xff : (uint8_t)(0xff >> keep);

			if (i % 8 == 0)
				r = rng_next(&w->rng);
			a[i] |= (uint8_t)(r >> (8 * (i % 8))) & host;
		}
	}
	if (g_opt.port_hi > g_opt.port_lo)
		port += rng_below(&w->rng, g_opt.port_hi - g_opt.port_lo + 1);
	ss_fill(ss, p->family, a, port);
}

static enum err_kind classify(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return E_REFUSED;
	case ETIMEDOUT:
		return E_TIMEOUT;
	case ECONNRESET:
	case EPIPE:
		return E_RESET;
	case 0:
		return E_EOF;
	case EADDRNOTAVAIL:
	case EADDRINUSE:
		return E_NOADDR;
	default:
		return E_OTHER;
	}
}

static void note_error(struct worker *w, const struct sockaddr_storage *dst, int err,
		       const char *what)
{
	enum err_kind k = classify(err);
	char buf[64];

	w->errors++;
	w->err_kind[k]++;
	if (w->logged < MAX_ERR_LOG) {
		w->logged++;
		fprintf(stderr, "loadgen: thread %d: %s %s: %s\n", w->idx, what,
			ss_str(dst, buf, sizeof(buf)), err ? strerror(err) : "unexpected EOF");
	}
}

static void conn_close(struct cconn *c)
{
	if (c->fd != -1) {
		if (g_opt.rst) {
			/* RST instead of FIN: no TIME_WAIT left on the client */
			struct linger l = {.l_onoff = 1, .l_linger = 0};

			setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		}
		close(c->fd);
		c->fd = -1;
	}
	c->state = C_IDLE;
}

/* A connection failed (err 0 = unexpected EOF): count it, free the slot.
 * The slot is restarted by refill(), never from here, so a destination that
 * keeps failing cannot recurse. */
static void conn_fail(struct worker *w, struct cconn *c, int err)
{
	bool opening = g_opt.mode == MODE_HOLD && c->state != C_HELD;

	note_error(w, &c->dst, err, c->state == C_CONNECTING ? "connect to" : "connection to");
	if (opening)
		w->open_failed++;
	conn_close(c);
}

static int conn_start(struct worker *w, struct cconn *c, uint64_t now)
{
	struct epoll_event ev;
	int fd, err;

	pick_dest(w, &c->dst);
	fd = socket(c->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	if (g_opt.mode == MODE_LATENCY) {
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	c->fd = fd;
	c->deadline = g_opt.mode == MODE_HOLD ? w->hold_deadline : now + ns_of(g_opt.timeout);
	c->sent = c->rcvd = 0;
	c->t_start = now_ns(); /* this connection's own, not the loop turn's */
	if (connect(fd, (struct sockaddr *)&c->dst, ss_len(&c->dst)) == -1 &&
	    errno != EINPROGRESS) {
		err = -errno;
		goto fail;
	}
	c->t_call = now_ns() - c->t_start; /* counted once it connects */
	/* Edge-triggered with both directions: one epoll_ctl per connection;
	 * the state decides which readiness matters. */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.u64 = (uint64_t)(c - w->c) + 1;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
		err = -errno;
		goto fail;
	}
	c->state = C_CONNECTING;
	return 0;
fail:
	close(fd);
	c->fd = -1;
	c->state = C_IDLE;
	return err;
}

static void conn_send(struct worker *w, struct cconn *c)
{
	uint32_t size = (uint32_t)g_opt.size;

	while (c->sent < size) {
		ssize_t n = send(c->fd, w->payload + c->sent, size - c->sent, MSG_NOSIGNAL);

		if (n == -1) {
			if (errno == EAGAIN)
				return;
			if (errno == EINTR)
				continue;
			conn_fail(w, c, errno);
			return;
		}
		c->sent += (uint32_t)n;
	}
	c->state = C_RECEIVING;
}

static void txn_start(struct worker *w, struct cconn *c, uint64_t now)
{
	c->t_txn = now;
	c->deadline = now + ns_of(g_opt.timeout);
	c->sent = c->rcvd = 0;
	c->state = C_SENDING;
	conn_send(w, c);
}

static void begin_measure(struct worker *w, uint64_t now)
{
	w->measuring = true;
	w->t_begin = now;
	w->t_end = now + ns_of(g_opt.duration);
	for (int i = 0; i < w->nc; i++)
		if (w->c[i].state == C_READY)
			txn_start(w, &w->c[i], now);
}

static void on_connected(struct worker *w, struct cconn *c, uint64_t now)
{
	switch (g_opt.mode) {
	case MODE_RATE:
		hist_add(&w->h_connect, c->t_call / 1000);
		c->t_txn = c->t_start;
		c->state = C_SENDING;
		conn_send(w, c);
		break;
	case MODE_LATENCY:
		if (w->measuring) {
			txn_start(w, c, now);
			break;
		}
		c->state = C_READY;
		for (int i = 0; i < w->nc; i++)
			if (w->c[i].state != C_READY)
				return;
		begin_measure(w, now);
		break;
	case MODE_HOLD:
		c->state = C_SENDING;
		conn_send(w, c);
		break;
	case MODE_SERVE:
		break;
	}
}

static void on_response(struct worker *w, struct cconn *c, uint64_t now)
{
	switch (g_opt.mode) {
	case MODE_RATE:
		if (now <= w->t_end) {
			hist_add(&w->h_lat, (now - c->t_start) / 1000);
			w->done++;
		}
		conn_close(c); /* client closes first: TIME_WAIT stays here */
		break;
	case MODE_LATENCY:
		if (now <= w->t_end) {
			hist_add(&w->h_lat, (now - c->t_txn) / 1000);
			w->done++;
			txn_start(w, c, now);
		}
		break;
	case MODE_HOLD:
		c->state = C_HELD;
		w->held++;
		break;
	case MODE_SERVE:
		break;
	}
}

static void conn_recv(struct worker *w, struct cconn *c, uint64_t now)
{
	/* bounded: at most MAX_SIZE / SCRATCH_SIZE reads carry a response */
	for (int guard = 0; guard < 64; guard++) {
		ssize_t n = recv(c->fd, w->scratch, SCRATCH_SIZE, 0);

		if (n > 0) {
			if (c->state != C_RECEIVING && c->state != C_SENDING)
				continue; /* stray bytes on an idle connection: drain */
			c->rcvd += (uint32_t)n;
			if (c->rcvd > c->sent) {
				conn_fail(w, c, EPROTO);
				return;
			}
			if (c->state == C_RECEIVING && c->rcvd == (uint32_t)g_opt.size) {
				on_response(w, c, now);
				return;
			}
			continue;
		}
		if (n == 0) {
			conn_fail(w, c, 0);
			return;
		}
		if (errno == EAGAIN)
			return;
		if (errno != EINTR) {
			conn_fail(w, c, errno);
			return;
		}
	}
}

static void conn_event(struct worker *w, struct cconn *c, uint32_t ev, uint64_t now)
{
	bool in = ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
	bool out = ev & (EPOLLOUT | EPOLLHUP | EPOLLERR);

	if (c->state == C_IDLE)
		return; /* stale event of a slot closed earlier in this batch */
	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (!out)
			return;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (err) {
			conn_fail(w, c, err);
			return;
		}
		on_connected(w, c, now);
	} else if (c->state == C_SENDING && out) {
		conn_send(w, c);
	}
	/* With EPOLLET the readable edge may have come with this very event,
	 * so check it even if we only just moved to C_RECEIVING. Reading while
	 * still sending keeps a large request from deadlocking against an
	 * echo server whose send buffer is full. */
	if (in && c->fd != -1 && c->state != C_CONNECTING && c->state != C_IDLE)
		conn_recv(w, c, now);
}

/* Start connections on free slots. Returns true if a start failed (the
 * caller then waits a millisecond instead of spinning on the error). */
static bool refill(struct worker *w, uint64_t now)
{
	bool failed = false;
	int r;

	if (g_opt.mode == MODE_HOLD) {
		uint64_t limit = (uint64_t)g_opt.concurrency / (uint64_t)g_opt.threads + 1;

		while (w->started < w->nc && now < w->hold_deadline &&
		       (uint64_t)w->started - w->held - w->open_failed < limit) {
			struct cconn *c = &w->c[w->started++];

			r = conn_start(w, c, now);
			if (r) {
				note_error(w, &c->dst, -r, "connect to");
				w->open_failed++;
			}
		}
		if (now >= w->hold_deadline && w->started < w->nc) {
			/* never even tried within --timeout: failed all the same */
			uint64_t left = (uint64_t)(w->nc - w->started);

			w->errors += left;
			w->err_kind[E_TIMEOUT] += left;
			w->open_failed += left;
			w->started = w->nc;
		}
		return false;
	}
	if (now >= w->t_end)
		return false;
	for (int i = 0; i < w->nc; i++) {
		struct cconn *c = &w->c[i];

		if (c->state != C_IDLE)
			continue;
		r = conn_start(w, c, now);
		if (r) {
			note_error(w, &c->dst, -r, "connect to");
			failed = true;
		}
	}
	return failed;
}

static void scan_timeouts(struct worker *w, uint64_t now)
{
	for (int i = 0; i < w->nc; i++) {
		struct cconn *c = &w->c[i];

		if ((c->state == C_CONNECTING || c->state == C_SENDING ||
		     c->state == C_RECEIVING) &&
		    now >= c->deadline)
			conn_fail(w, c, ETIMEDOUT);
	}
}

static void notify_main(void)
{
	uint64_t one = 1;

	if (write(g_notify_fd, &one, sizeof(one)) == -1)
		perror("loadgen: notify");
}

static int ms_until(uint64_t now, uint64_t t)
{
	uint64_t d;

	if (t <= now)
		return 0;
	d = (t - now + 999999) / 1000000;
	return d > 1000 ? 1000 : (int)d;
}

static void client_loop(struct worker *w)
{
	struct epoll_event evs[EV_BATCH];
	uint64_t now = now_ns(), next_scan = now + SCAN_NS;
	bool start_failed = false;

	w->t_begin = now;
	w->t_end = UINT64_MAX;
	if (g_opt.mode == MODE_RATE) {
		w->measuring = true;
		w->t_end = now + ns_of(g_opt.duration);
	} else if (g_opt.mode == MODE_LATENCY) {
		w->setup_deadline = now + ns_of(g_opt.timeout);
	} else {
		w->hold_deadline = now + ns_of(g_opt.timeout);
	}

	while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
		int n, wait_ms;

		now = now_ns();
		if (now >= w->t_end)
			break;
		if (g_opt.mode == MODE_LATENCY && !w->measuring && now >= w->setup_deadline) {
			fprintf(stderr, "loadgen: thread %d: not all connections up after %g s\n",
				w->idx, g_opt.timeout);
			begin_measure(w, now);
		}
		start_failed = refill(w, now);
		if (g_opt.mode == MODE_HOLD && !w->opened &&
		    w->held + w->open_failed >= (uint64_t)w->nc) {
			w->opened = true;
			atomic_fetch_add(&g_workers_opened, 1);
			notify_main();
		}
		wait_ms = ms_until(now, next_scan);
		if (w->t_end != UINT64_MAX && ms_until(now, w->t_end) < wait_ms)
			wait_ms = ms_until(now, w->t_end);
		if (start_failed && wait_ms > 1)
			wait_ms = 1;
		if (g_opt.mode == MODE_HOLD && w->opened)
			wait_ms = 1000; /* only the stop wakeup matters now */
		n = epoll_wait(w->epfd, evs, EV_BATCH, wait_ms);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			perror("loadgen: epoll_wait");
			break;
		}
		now = now_ns();
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag == 0)
				continue; /* wakeup: the loop condition sees g_stop */
			/* Each event its own time: the ones before it in the batch
			 * took some. */
			if (i)
				now = now_ns();
			conn_event(w, &w->c[tag - 1], evs[i].events, now);
		}
		if (now >= next_scan && !(g_opt.mode == MODE_HOLD && w->opened)) {
			scan_timeouts(w, now);
			next_scan = now + SCAN_NS;
		}
	}
	w->t_stop = now < w->t_end ? now : w->t_end;
	if (g_opt.mode == MODE_HOLD && !w->opened) {
		/* stopped while opening: what is not held yet counts as failed */
		uint64_t left = (uint64_t)w->nc - w->held - w->open_failed;

		w->errors += left;
		w->err_kind[E_ABORTED] += left;
	}
	if (!w->measuring)
		w->t_begin = w->t_stop;
	for (int i = 0; i < w->nc; i++)
		if (w->c[i].fd != -1)
			conn_close(&w->c[i]);
}

/* ---- main ---- */

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	if (g_opt.mode == MODE_SERVE)
		serve_loop(w);
	else
		client_loop(w);
	atomic_fetch_add(&g_workers_done, 1);
	notify_main();
	return NULL;
}

static int workers_init(void)
{
	int per = 0, extra = 0;

	g_workers = calloc((size_t)g_opt.threads, sizeof(*g_workers));
	if (!g_workers)
		return -ENOMEM;
	if (g_opt.mode != MODE_SERVE) {
		int total = g_opt.mode == MODE_HOLD ? g_opt.conns : g_opt.concurrency;

		per = total / g_opt.threads;
		extra = total % g_opt.threads;
	}
	for (int t = 0; t < g_opt.threads; t++) {
		struct worker *w = &g_workers[t];
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};

		w->idx = t;
		w->rng = splitmix64(g_opt.seed * 0x100000001b3ull + (uint64_t)t) | 1;
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		w->payload = malloc((size_t)g_opt.size);
		w->scratch = malloc(SCRATCH_SIZE);
		if (w->epfd == -1 || w->wake_fd == -1 || !w->payload || !w->scratch)
			return -ENOMEM;
		memset(w->payload, 'x', (size_t)g_opt.size);
		/* level-triggered and never read: once written, every wait returns */
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev) == -1)
			return -errno;
		w->nc = per + (t < extra);
		if (w->nc) {
			w->c = calloc((size_t)w->nc, sizeof(*w->c));
			if (!w->c)
				return -ENOMEM;
			for (int i = 0; i < w->nc; i++)
				w->c[i].fd = -1;
		}
	}
	return 0;
}

static void stop_workers(void)
{
	uint64_t one = 1;

	atomic_store(&g_stop, 1);
	for (int t = 0; t < g_opt.threads; t++)
		if (write(g_workers[t].wake_fd, &one, sizeof(one)) == -1)
			perror("loadgen: wake");
}

static void print_error_summary(const uint64_t *kinds)
{
	bool any = false;

	for (int k = 0; k < E_NKINDS; k++)
		any |= kinds[k] != 0;
	if (!any)
		return;
	fprintf(stderr, "loadgen: errors:");
	for (int k = 0; k < E_NKINDS; k++)
		if (kinds[k])
			fprintf(stderr, " %s=%" PRIu64, err_names[k], kinds[k]);
	fprintf(stderr, "\n");
}

/* Aggregates the workers' counters and prints the JSON. Returns the exit code. */
static int report(double open_ms)
{
	static struct hist h_connect, h_lat;
	uint64_t done = 0, errors = 0, accepted = 0, held = 0, kinds[E_NKINDS] = {0};
	uint64_t span = 0;

	for (int t = 0; t < g_opt.threads; t++) {
		struct worker *w = &g_workers[t];

		done += w->done;
		errors += w->errors;
		accepted += w->accepted;
		held += w->held;
		for (int k = 0; k < E_NKINDS; k++)
			kinds[k] += w->err_kind[k];
		hist_merge(&h_connect, &w->h_connect);
		hist_merge(&h_lat, &w->h_lat);
		if (w->t_stop - w->t_begin > span)
			span = w->t_stop - w->t_begin;
	}
	print_error_summary(kinds);
	double secs = span ? (double)span / 1e9 : 1e-9;

	switch (g_opt.mode) {
	case MODE_SERVE:
		printf("{\"accepted\": %" PRIu64, accepted);
		if (g_opt.have_addr)
			printf(", \"listeners\": %d, \"setup_ms\": %.1f", g_nshared, g_setup_ms);
		printf("}\n");
		return 0;
	case MODE_RATE:
		printf("{\"conns\": %" PRIu64 ", \"errors\": %" PRIu64
		       ", \"conn_per_s\": %.1f, \"duration_s\": %.3f, ",
		       done, errors, (double)done / secs, (double)span / 1e9);
		json_pct("connect_us", &h_connect);
		printf(", ");
		json_pct("lat_us", &h_lat);
		printf("}\n");
		return done > 0 ? 0 : 1;
	case MODE_LATENCY:
		printf("{\"transactions\": %" PRIu64 ", \"tps\": %.1f, \"errors\": %" PRIu64
		       ", \"duration_s\": %.3f, ",
		       done, (double)done / secs, errors, (double)span / 1e9);
		json_pct("rtt_us", &h_lat);
		printf("}\n");
		return done > 0 ? 0 : 1;
	case MODE_HOLD:
		printf("{\"held\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"open_ms\": %.1f}\n",
		       held, errors, open_ms);
		return held == (uint64_t)g_opt.conns && errors == 0 ? 0 : 1;
	}
	return 1;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		g_sconn_max = rl.rlim_cur > 1048576 ? 1048576 : (int)rl.rlim_cur;
	else
		g_sconn_max = 1024;
}

static void print_start(void)
{
	char a[INET6_ADDRSTRLEN];

	if (g_opt.mode == MODE_SERVE)
		return;
	inet_ntop(g_opt.target.family, g_opt.target.addr, a, sizeof(a));
	fprintf(stderr,
		"loadgen: %s target=%s/%d ports=%u-%u conns=%d threads=%d size=%d seed=%" PRIu64
		"\n",
		g_opt.mode == MODE_RATE	     ? "rate"
		: g_opt.mode == MODE_LATENCY ? "latency"
					     : "hold",
		a, g_opt.target.plen, g_opt.port_lo, g_opt.port_hi,
		g_opt.mode == MODE_HOLD ? g_opt.conns : g_opt.concurrency, g_opt.threads,
		g_opt.size, g_opt.seed);
}

int main(int argc, char **argv)
{
	struct epoll_event ev, evs[8];
	sigset_t sigs;
	uint64_t t0, deadline, opened_at = 0;
	int r, sfd, mep, started = 0;
	bool held_printed = false;

	r = parse_args(argc, argv);
	if (r)
		return r;
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	/* blocked before any thread exists, so only the signalfd sees them */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	g_notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	mep = epoll_create1(EPOLL_CLOEXEC);
	if (sfd == -1 || g_notify_fd == -1 || mep == -1) {
		perror("loadgen: setup");
		return 1;
	}
	ev.events = EPOLLIN;
	ev.data.u64 = 1;
	epoll_ctl(mep, EPOLL_CTL_ADD, sfd, &ev);
	ev.data.u64 = 2;
	epoll_ctl(mep, EPOLL_CTL_ADD, g_notify_fd, &ev);
	if (g_opt.mode == MODE_HOLD) {
		/* stdin EOF ends the hold; a regular file or /dev/null cannot be
		 * polled (EPERM), then only a signal does */
		ev.data.u64 = 3;
		if (epoll_ctl(mep, EPOLL_CTL_ADD, 0, &ev) == -1)
			fprintf(stderr, "loadgen: stdin not pollable, waiting for a signal\n");
	}

	r = workers_init();
	if (r) {
		fprintf(stderr, "loadgen: init: %s\n", strerror(-r));
		return 1;
	}
	if (g_opt.mode == MODE_SERVE) {
		g_sconn = calloc((size_t)g_sconn_max, sizeof(*g_sconn));
		g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (!g_sconn || serve_setup())
			return 1;
	}
	print_start();

	t0 = now_ns();
	for (int t = 0; t < g_opt.threads; t++) {
		r = pthread_create(&g_workers[t].tid, NULL, worker_main, &g_workers[t]);
		if (r) {
			fprintf(stderr, "loadgen: pthread_create: %s\n", strerror(r));
			stop_workers();
			break;
		}
		started++;
	}
	/* rate/latency end by themselves; this bound is only a safety net */
	if (g_opt.mode == MODE_RATE || g_opt.mode == MODE_LATENCY)
		deadline = t0 + ns_of(g_opt.duration + 2 * g_opt.timeout + 10);
	else
		deadline = t0 + ns_of(g_opt.duration);

	while (!atomic_load(&g_stop)) {
		uint64_t now = now_ns();
		int n;

		if (atomic_load(&g_workers_done) >= started)
			break;
		if (now >= deadline) {
			fprintf(stderr, "loadgen: time limit reached, stopping\n");
			break;
		}
		n = epoll_wait(mep, evs, 8, ms_until(now, deadline));
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == 1) {
				struct signalfd_siginfo si;

				if (read(sfd, &si, sizeof(si)) > 0)
					fprintf(stderr, "loadgen: signal %u, stopping\n",
						si.ssi_signo);
				atomic_store(&g_stop, 1);
			} else if (evs[i].data.u64 == 2) {
				uint64_t cnt;

				if (read(g_notify_fd, &cnt, sizeof(cnt)) == -1 && errno != EAGAIN)
					perror("loadgen: notify read");
			} else if (evs[i].data.u64 == 3) {
				char buf[256];
				ssize_t k = read(0, buf, sizeof(buf));

				if (k == 0 || (k == -1 && errno != EAGAIN && errno != EINTR)) {
					fprintf(stderr, "loadgen: stdin closed, stopping\n");
					atomic_store(&g_stop, 1);
				}
			}
		}
		if (g_opt.mode == MODE_HOLD && !held_printed &&
		    atomic_load(&g_workers_opened) >= started) {
			uint64_t held = 0;

			opened_at = now_ns();
			for (int t = 0; t < started; t++)
				held += g_workers[t].held;
			fprintf(stderr, "held %" PRIu64 "\n", held);
			held_printed = true;
		}
	}
	stop_workers();
	for (int t = 0; t < started; t++)
		pthread_join(g_workers[t].tid, NULL);
	if (g_opt.mode == MODE_HOLD && !held_printed)
		opened_at = now_ns();
	r = report((double)(opened_at - t0) / 1e6);
	fflush(stdout);
	return started == g_opt.threads ? r : 1;
}

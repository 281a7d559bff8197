/* worker.c - the per-thread event loop: accept, dispatch, timers, pipe pool.
 *
 * Sockets are registered edge-triggered once, for both directions, and the
 * readiness is cached in struct io (rd/wr) until a syscall returns EAGAIN.
 * That keeps epoll_ctl off the data path: a connection costs two
 * EPOLL_CTL_ADDs in its life (closing an fd removes it from the set), and
 * two EPOLL_CTL_MODs each time a destination stays full long enough for
 * its source to wake the worker for nothing (io_mute in conn.c). Listeners
 * are level-triggered and drained in bounded batches so one busy listener
 * cannot starve established connections.
 *
 * Balancing: which worker accepts a connection depends on hashing and on
 * who is awake (worker_share_listeners), so a burst of long-lived
 * connections can land mostly on one worker and stay there. A worker that
 * accepts a connection while it already holds more than a peer hands it to
 * that peer (balance_target, worker_handoff).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "cfg.h"
#include "conn.h"
#include "lb.h"
#include "log.h"
#include "worker.h"

#define EVENTS_PER_TURN	 256
#define ACCEPTS_PER_TURN 8     /* per listener event; see docs/benchmarks.md */
#define POOL_MAX	 32    /* spare pipes kept per worker */
#define ACCEPT_PAUSE_MS	 100   /* after EMFILE/ENOMEM: let connections drain */
#define LISTEN_BACKLOG	 65535 /* capped by net.core.somaxconn */

/* A worker keeps a new connection while it holds at most this many more
 * than the peer it is compared with (whose load is <n>): none while the
 * counts are small, where one connection more is a large share, and an
 * eighth at large counts, which the hash's own spread of short
 * connections seldom crosses.
 */
#define HANDOFF_SLACK(n) ((n) / 8)

static uint64_t now_ms(void)
{
	struct timespec ts;

	/* Coarse is a vDSO read with no TSC access; its ~4 ms resolution is
	 * plenty for timeouts in the hundreds of ms and up.
	 */
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Opens one transparent listener. IP_TRANSPARENT is what lets the TPROXY
 * rule hand this socket connections addressed to any (address, port) of
 * the served prefixes; without it nft's tproxy expression skips the socket.
 * SO_REUSEPORT gives every worker its own accept queue; see
 * worker_share_listeners for how idle workers help busy ones.
 */
static int listen_open(const struct sockaddr *sa, int id)
{
	char name[ADDR_STRLEN];
	int one = 1, fd, v6 = sa->sa_family == AF_INET6;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		goto fail;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1)
		goto fail;
	if (v6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one)) == -1
	       : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) == -1) {
		int err = errno;
		log_err("listener %s: cannot set IP_TRANSPARENT: %s%s", addr_fmt_sa(sa, name),
			strerror(err), err == EPERM ? " (needs CAP_NET_ADMIN)" : "");
		close(fd);
		return -err;
	}
	if (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1)
		goto fail;
	/* Accepted sockets inherit TCP_NODELAY: a relay must not hold back a
	 * partial segment waiting for an ACK that depends on the other side.
	 */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		goto fail;
	/* And SO_OOBINLINE: a byte a client sends as urgent data (telnet's
	 * Synch, FTP's ABOR) stays in the stream and is relayed in its place,
	 * where without it reads would skip it and the origin would get the
	 * stream without that byte (the urgency itself is not passed on).
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one)) == -1)
		goto fail;
	if (bind(fd, sa, addr_sa_len(sa)) == -1 || listen(fd, LISTEN_BACKLOG) == -1)
		goto fail;
	return fd;
fail:;
	int err = errno;
	log_err("worker %d: listener %s: %s", id, addr_fmt_sa(sa, name), strerror(err));
	if (fd != -1)
		close(fd);
	return -err;
}

static int ep_add(struct worker *w, struct io *io, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = io};

	return epoll_ctl(w->epfd, EPOLL_CTL_ADD, io->fd, &ev) == -1 ? -errno : 0;
}

static void accept_resume(struct timer *t);
static void grace_expired(struct timer *t);
static int listeners_add(struct worker *w, bool peers_only);

/* worker_init's failures that nothing has logged yet: say which step. */
static int init_failed(int id, const char *what, int r)
{
	log_err("worker %d: cannot start: %s: %s", id, what, strerror(-r));
	return r;
}

int worker_init(struct worker *w, int id, struct cfg *cfg, struct app_origins *origins)
{
	int r;

	memset(w, 0, sizeof(*w));
	w->id = id;
	pthread_mutex_init(&w->hq.lock, NULL);
	pthread_mutex_init(&w->lis_lock, NULL);
	w->epfd = w->reserve_fd = -1;
	w->wake.fd = w->lis[0].fd = w->lis[1].fd = -1;
	w->cfg = cfg_ref(cfg);
	w->now = now_ms();
	timer_heap_init(&w->timers);
	timer_init(&w->accept_timer, accept_resume);
	timer_init(&w->grace_timer, grace_expired);
	w->origins = origins;
	w->lbw = calloc(cfg->n_apps ? cfg->n_apps : 1, sizeof(*w->lbw));
	w->pool = calloc(POOL_MAX, sizeof(*w->pool));
	w->scratch = malloc(WORKER_SCRATCH);
	if (!w->lbw || !w->pool || !w->scratch || timer_reserve(&w->timers, WORKER_TIMERS) < 0)
		return init_failed(id, "memory", -ENOMEM);
	/* Seed each worker differently, and start its rotations elsewhere, so
	 * N workers with few connections each don't all pick the same origin.
	 */
	for (size_t i = 0; i < cfg->n_apps; i++) {
		lb_worker_init(&w->lbw[i], 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1) + i);
		w->lbw[i].rr = (uint32_t)id;
	}

	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd == -1)
		return init_failed(id, "epoll_create1", -errno);
	w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (w->reserve_fd == -1)
		return init_failed(id, "open /dev/null", -errno);
	w->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->wake.fd == -1)
		return init_failed(id, "eventfd", -errno);
	w->wake.kind = IO_WAKE;
	if ((r = ep_add(w, &w->wake, EPOLLIN)) < 0)
		return init_failed(id, "epoll_ctl", r);

	r = listen_open((const struct sockaddr *)&cfg->listen4, id);
	if (r < 0)
		return r;
	w->lis[0].fd = r;
	if (cfg->listen6_on) {
		r = listen_open((const struct sockaddr *)&cfg->listen6, id);
		if (r < 0)
			return r;
		w->lis[1].fd = r;
	}
	w->lis[0].kind = w->lis[1].kind = IO_LISTEN;
	r = listeners_add(w, false); /* no peers yet: its own */
	return r < 0 ? init_failed(id, "epoll_ctl", r) : 0;
}

/* Registers in <w>'s epoll set its own listeners (unless <peers_only>),
 * then those of every other worker: the order matters, see
 * worker_share_listeners.
 */
static int listeners_add(struct worker *w, bool peers_only)
{
	for (int p = peers_only ? 0 : -1; p < w->n_peers; p++) {
		struct worker *v = p < 0 ? w : &w->peers[p];
		int r = 0;

		if (p >= 0 && v == w)
			continue;
		/* A stopping peer closes its listeners under this lock, after
		 * setting them to -1: what we read here is still open.
		 */
		pthread_mutex_lock(&v->lis_lock);
		for (int i = 0; i < 2 && !r; i++) {
			struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE,
						 .data.ptr = &v->lis[i]};
			int fd = v->lis[i].fd;

			if (fd != -1 && epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1 &&
			    errno != EEXIST)
				r = -errno;
		}
		pthread_mutex_unlock(&v->lis_lock);
		if (r < 0)
			return r;
	}
	return 0;
}

/* SO_REUSEPORT alone spreads connections by hash, whatever each worker is
 * doing: a worker that is busy (or preempted, on a machine whose CPUs also
 * run other work) leaves its share waiting while another idles. So every
 * worker also polls the other workers' listeners, all registrations with
 * EPOLLEXCLUSIVE, the owner's first (worker_init ran for all workers
 * before this). A new connection makes the kernel walk the listener's wait
 * queue in that order: it is queued on the ready list of each worker it
 * passes, and wakes the first one that is waiting in epoll_wait, and only
 * that one. An idle owner is that one: long-lived connections stay spread
 * by hash. A busy owner sees it on its next turn, while the first idle peer
 * is woken and accepts it now; whoever comes second gets EAGAIN. In the
 * benchmark's rate scenario this took p99 connection latency from 11.6 ms
 * to 9.3 ms and conn/s up 7% (docs/benchmarks.md).
 */
int worker_share_listeners(struct worker *ws, int n)
{
	for (int i = 0; i < n; i++) {
		int r;

		ws[i].peers = ws;
		ws[i].n_peers = n;
		if ((r = listeners_add(&ws[i], true)) < 0) {
			log_err("worker %d: cannot poll the other workers' listeners: %s", i,
				strerror(-r));
			return r;
		}
	}
	return 0;
}

int worker_pipe_get(struct worker *w, struct pipe_pair *p)
{
	int fds[2];

	if (w->pool_n > 0) {
		*p = w->pool[--w->pool_n];
		return 0;
	}
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) == -1)
		return -errno;
	/* A bigger pipe lets one splice move more of a bulk stream. It costs
	 * nothing while empty: a pipe holds page references only for bytes
	 * in flight. Failure (e.g. pipe-user-pages-soft reached) just leaves
	 * the default 64 KiB.
	 */
	if (PIPE_SIZE != 65536)
		fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE);
	p->rd = fds[0];
	p->wr = fds[1];
	return 0;
}

void worker_pipe_put(struct worker *w, struct pipe_pair *p)
{
	if (w->pool_n < POOL_MAX && !w->stopping) {
		w->pool[w->pool_n++] = *p;
	} else {
		close(p->rd);
		close(p->wr);
	}
	p->rd = p->wr = -1;
}

bool worker_pool_release(struct worker *w)
{
	bool any = w->pool_n > 0;

	while (w->pool_n > 0) {
		struct pipe_pair *p = &w->pool[--w->pool_n];

		close(p->rd);
		close(p->wr);
	}
	return any;
}

/* Stops or resumes polling every listener, its own and its peers'. An
 * EPOLLEXCLUSIVE registration cannot be modified, only deleted and added
 * again (which puts this worker last in its own listener's wait queue:
 * after a pause, peers may take some of its share while it is idle too).
 */
static int listeners_enable(struct worker *w, bool on)
{
	if (on)
		return listeners_add(w, false);
	for (int p = 0; p < (w->peers ? w->n_peers : 1); p++) {
		struct worker *v = w->peers ? &w->peers[p] : w;

		pthread_mutex_lock(&v->lis_lock);
		for (int i = 0; i < 2; i++) {
			if (v->lis[i].fd != -1)
				epoll_ctl(w->epfd, EPOLL_CTL_DEL, v->lis[i].fd, NULL);
		}
		pthread_mutex_unlock(&v->lis_lock);
	}
	return 0;
}

void worker_pause_accept(struct worker *w, int err)
{
	if (__atomic_load_n(&w->accept_paused, __ATOMIC_RELAXED) || w->stopping)
		return;
	__atomic_store_n(&w->accept_paused, true, __ATOMIC_RELAXED);
	listeners_enable(w, false);
	timer_set(&w->timers, &w->accept_timer, w->now + ACCEPT_PAUSE_MS);
	if (log_ratelimit(&w->last_exhaust_log, w->now, 1000))
		log_warn("worker %d: %s with %llu connections open: not accepting for %d ms, "
			 "open connections keep being served",
			 w->id, strerror(err), (unsigned long long)w->n_conns, ACCEPT_PAUSE_MS);
}

static void accept_resume(struct timer *t)
{
	struct worker *w = container_of(t, struct worker, accept_timer);
	int r;

	if (!__atomic_load_n(&w->accept_paused, __ATOMIC_RELAXED) || w->stopping ||
	    __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
		return;
	/* The reserve first: without it, the next connection to take the
	 * last fd would be reset for want of its origin's socket, where it
	 * could have waited in the backlog.
	 */
	if (w->reserve_fd == -1) {
		w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (w->reserve_fd == -1) {
			timer_set(&w->timers, &w->accept_timer, w->now + ACCEPT_PAUSE_MS);
			return;
		}
	}
	r = listeners_enable(w, true);
	if (r < 0) {
		/* The shortage that paused us (epoll's memory, its watch
		 * limit) may not be over: half a set of listeners polled, and
		 * no pause left to end, would stop this worker accepting for
		 * good. Take back what was added and try again later.
		 */
		listeners_enable(w, false);
		timer_set(&w->timers, &w->accept_timer, w->now + ACCEPT_PAUSE_MS);
		if (log_ratelimit(&w->last_resume_log, w->now, 1000))
			log_warn("worker %d: cannot poll its listeners again: %s; not accepting "
				 "for another %d ms",
				 w->id, strerror(-r), ACCEPT_PAUSE_MS);
		return;
	}
	__atomic_store_n(&w->accept_paused, false, __ATOMIC_RELAXED);
}

/* ---- balancing ------------------------------------------------------ */

/* The worker that took the last connection balance_target placed while
 * counts were small (atomic; shared by all workers).
 */
static int last_taker = -1;

/* What a peer reads as <v>'s load: its connections, and those queued for
 * it.
 */
static uint64_t load_of(struct worker *v)
{
	return __atomic_load_n(&v->n_conns, __ATOMIC_RELAXED) +
	       __atomic_load_n(&v->hq.len, __ATOMIC_RELAXED);
}

/* The worker that should serve a connection <w> has just accepted from
 * listener <lis>: <w> itself, unless <w> already holds more than
 * HANDOFF_SLACK connections above the peer it compares itself with. Then
 * that peer gets it. The peer is the listener's owner when <lis> is a
 * peer's (the owner was busy and <w> helped, see worker_share_listeners):
 * left alone, the helping is what skews a burst of connections, as the
 * worker that happens to run takes the queues of those that wait for a
 * CPU. For <w>'s own listener it is the next peer in turn, one load read
 * per accept whatever the number of workers: the kernel's hash spreads
 * many connections well, but puts two long-lived ones on the same worker
 * half the time, so a few heavy flows (iperf3's streams, SSH sessions)
 * were often served by one worker while another idled. While counts are
 * small, equal counts send the connection to whichever worker did not take
 * the previous one, so connections opened one by one alternate. Counting
 * connections, not their traffic, is what Envoy's exact balance and
 * HAProxy's thread choice do too: cheap to read, and right for the
 * long-lived connections that balancing is for.
 */
static struct worker *balance_target(struct worker *w, const struct io *lis)
{
	struct worker *t;
	uint64_t other, mine;

	if (!w->peers || w->n_peers < 2)
		return w;
	if (lis == &w->lis[0] || lis == &w->lis[1]) {
		w->next_peer = (w->next_peer + 1) % w->n_peers;
		if (w->next_peer == w->id)
			w->next_peer = (w->next_peer + 1) % w->n_peers;
		t = &w->peers[w->next_peer];
	} else
		t = &w->peers[((const char *)lis - (const char *)w->peers) / sizeof(*w)];
	/* A paused peer is short of fds or memory (it may have given up its
	 * reserve fd): a connection handed to it would be reset for want of
	 * an origin socket that this worker can still make.
	 */
	if (__atomic_load_n(&t->accept_paused, __ATOMIC_RELAXED))
		return w;
	other = load_of(t);
	mine = load_of(w);
	if (HANDOFF_SLACK(other) > 0)
		return mine > other + HANDOFF_SLACK(other) ? t : w;
	/* Small counts: exact, and at equal counts alternate. Without that, a
	 * connection that stays idle (iperf3's control connection, FTP's) and
	 * the busy ones after it split 1+1/3 as often as 1+2/2.
	 */
	if (mine > other ||
	    (mine == other && __atomic_load_n(&last_taker, __ATOMIC_RELAXED) == w->id))
		w = t;
	__atomic_store_n(&last_taker, w->id, __ATOMIC_RELAXED);
	return w;
}

/* Queues accepted socket <fd> for worker <t> and wakes it if its queue was
 * empty. Returns false when <t> takes no more (stopping, or its queue is
 * full): the caller serves the connection itself.
 */
static bool worker_handoff(struct worker *t, int fd, const struct sockaddr *client,
			   const struct sockaddr *edge)
{
	struct handoff_queue *q = &t->hq;
	struct handoff *h;
	uint64_t one = 1;
	bool was_empty;

	pthread_mutex_lock(&q->lock);
	if (q->closed || q->len == HANDOFF_MAX) {
		pthread_mutex_unlock(&q->lock);
		return false;
	}
	h = &q->v[(q->head + q->len) % HANDOFF_MAX];
	h->fd = fd;
	memcpy(&h->client, client, addr_sa_len(client));
	memcpy(&h->edge, edge, addr_sa_len(edge));
	was_empty = q->len == 0;
	__atomic_store_n(&q->len, q->len + 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&q->lock);
	/* A non-empty queue has its wake-up pending already. */
	if (was_empty && write(t->wake.fd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_err("cannot wake worker %d: %s", t->id, strerror(errno));
	return true;
}

/* Takes the next queued handoff of <w> into <h>; with <close_q>, first
 * refuses any more. Returns false when the queue is empty.
 */
static bool handoff_pop(struct worker *w, struct handoff *h, bool close_q)
{
	struct handoff_queue *q = &w->hq;
	bool got = false;

	pthread_mutex_lock(&q->lock);
	if (close_q)
		q->closed = true;
	if (q->len) {
		*h = q->v[q->head];
		q->head = (q->head + 1) % HANDOFF_MAX;
		__atomic_store_n(&q->len, q->len - 1, __ATOMIC_RELAXED);
		got = true;
	}
	pthread_mutex_unlock(&q->lock);
	return got;
}

/* Serves what the peers handed over. A stopping worker (<close_q>) still
 * serves what was queued before, like any connection it had accepted.
 */
static void handoff_drain(struct worker *w, bool close_q)
{
	struct handoff h;

	while (handoff_pop(w, &h, close_q)) {
		int r = conn_accept(w, h.fd, &h.client.sa, &h.edge.sa);

		if (r < 0)
			worker_pause_accept(w, -r);
	}
}

/* Closes whatever is still queued for <w> and refuses more: for a worker
 * whose loop has ended (or never ran).
 */
static void handoff_close(struct worker *w)
{
	struct handoff h;

	while (handoff_pop(w, &h, true))
		close(h.fd);
}

static void do_accept(struct worker *w, struct io *lis)
{
	/* <lis> may be another worker's, which closes it when stopping. */
	int lfd = __atomic_load_n(&lis->fd, __ATOMIC_RELAXED);

	if (lfd == -1 || w->stopping)
		return;
	for (int i = 0;
	     i < ACCEPTS_PER_TURN && !__atomic_load_n(&w->accept_paused, __ATOMIC_RELAXED); i++) {
		struct sockaddr_storage client, edge;
		socklen_t clen = sizeof(client), elen = sizeof(edge);
		int fd, r;

		fd = accept4(lfd, (struct sockaddr *)&client, &clen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			switch (errno) {
			case EAGAIN:
			case EINTR:
				return;
			case EMFILE:
			case ENFILE:
				if (worker_pool_release(w))
					continue;
				/* fall through */
			case ENOBUFS:
			case ENOMEM:
				worker_pause_accept(w, errno);
				return;
			case EBADF:
			case EINVAL:
			case ENOTSOCK:
				return; /* a peer's listener, closed as it stops */
			default:
				/* ECONNABORTED, EPERM (netfilter), EPROTO...:
				 * that one connection is gone, the listener is fine.
				 */
				continue;
			}
		}
		/* The original destination: TPROXY never rewrote the packet,
		 * so the accepted socket's local address is what the client
		 * dialed (the listener's own address is not involved).
		 */
		if (getsockname(fd, (struct sockaddr *)&edge, &elen) == -1) {
			/* Out of kernel memory: no app to pick, so no access
			 * line; a warning, once a second at most.
			 */
			if (log_ratelimit(&w->last_edge_log, w->now, 1000)) {
				int err = errno;
				char a[ADDR_STRLEN];

				log_warn("connection from %s closed: cannot learn the address it "
					 "dialed: getsockname: %s",
					 addr_fmt_sa((struct sockaddr *)&client, a), strerror(err));
			}
			close(fd);
			continue;
		}
		struct worker *t = balance_target(w, lis);

		if (t != w) {
			int was = t->id;

			if (worker_handoff(t, fd, (struct sockaddr *)&client,
					   (struct sockaddr *)&edge))
				continue;
			/* Refused: <w> takes it, so the tie-break must not
			 * count it as <t>'s.
			 */
			__atomic_compare_exchange_n(&last_taker, &was, w->id, false,
						    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
		}
		r = conn_accept(w, fd, (struct sockaddr *)&client, (struct sockaddr *)&edge);
		if (r < 0)
			worker_pause_accept(w, -r);
	}
}

/* Closes the worker's own listeners; with <unpoll>, first stops polling
 * every listener (it accepts nothing for its peers either from now on).
 */
static void close_listeners(struct worker *w, bool unpoll)
{
	if (unpoll)
		listeners_enable(w, false);
	pthread_mutex_lock(&w->lis_lock);
	for (int i = 0; i < 2; i++) {
		int fd = w->lis[i].fd;

		if (fd != -1) {
			/* Atomic: do_accept reads it without the lock. */
			__atomic_store_n(&w->lis[i].fd, -1, __ATOMIC_RELEASE);
			close(fd);
		}
	}
	pthread_mutex_unlock(&w->lis_lock);
}

static void finalize_all(struct worker *w, enum conn_reason reason)
{
	while (w->conns)
		conn_finalize(w->conns, reason);
}

static void grace_expired(struct timer *t)
{
	struct worker *w = container_of(t, struct worker, grace_timer);

	if (w->n_conns)
		log_info("worker %d: shutdown grace over, closing %llu connections", w->id,
			 (unsigned long long)w->n_conns);
	finalize_all(w, CR_SHUTDOWN);
}

static void on_wake(struct worker *w)
{
	uint64_t v;
	int stop;

	/* The wake-up first, then the flag: worker_stop sets the flag before
	 * it writes, so a wake-up read here has its flag seen. The other
	 * order could read the flag, then swallow a stop's wake-up that came
	 * in between (with a peer's handoff), and never stop.
	 */
	while (read(w->wake.fd, &v, sizeof(v)) > 0)
		;
	stop = __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE);
	handoff_drain(w, stop != 0);
	if (!stop)
		return;
	if (!w->stopping) {
		w->stopping = true;
		/* Closing the listeners ends accepting at once: new SYNs find
		 * no transparent socket and are reset by the stack.
		 */
		close_listeners(w, true);
		timer_cancel(&w->timers, &w->accept_timer);
		timer_set(&w->timers, &w->grace_timer, w->now + w->cfg->shutdown_grace_ms);
	}
	if (stop >= 2)
		finalize_all(w, CR_SHUTDOWN);
}

static void free_dead(struct worker *w)
{
	while (w->dead) {
		struct conn *c = w->dead;

		w->dead = c->next_dead;
		conn_free(c);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[EVENTS_PER_TURN];
	int timeout = -1;

	log_batch_begin();
	while (!(w->stopping && w->n_conns == 0)) {
		int n = epoll_wait(w->epfd, evs, EVENTS_PER_TURN, timeout);

		if (n == -1 && errno != EINTR) {
			/* Cannot happen but by a bug (EBADF, EFAULT, EINVAL).
			 * The process goes on with the other workers: hand
			 * them this one's share of new connections, and end
			 * its own (log lines, fds, counts) rather than leave
			 * them hanging.
			 */
			log_err("worker %d: epoll_wait: %s; its connections end", w->id,
				strerror(errno));
			close_listeners(w, true);
			finalize_all(w, CR_SHUTDOWN);
			break;
		}
		w->now = now_ms();
		for (int i = 0; i < n; i++) {
			struct io *io = evs[i].data.ptr;

			switch (io->kind) {
			case IO_LISTEN:
				do_accept(w, io);
				break;
			case IO_WAKE:
				on_wake(w);
				break;
			case IO_CLIENT:
				conn_io(container_of(io, struct conn, cli), io, evs[i].events);
				break;
			case IO_ORIGIN:
				conn_io(container_of(io, struct conn, org), io, evs[i].events);
				break;
			}
		}
		timeout = timer_run(&w->timers, w->now);
		free_dead(w);
		log_flush();
	}
	handoff_close(w); /* empty unless the loop failed */
	free_dead(w);
	log_flush();
	return NULL;
}

int worker_start(struct worker *w)
{
	char name[16];
	pthread_t t;
	int r = pthread_create(&t, NULL, worker_main, w);

	/* Set only on success: glibc writes <t> even when creation fails, and
	 * worker_wait would join that thread that never was.
	 */
	if (r)
		return -r;
	w->thread = t;
	/* Named for top -H, perf and /proc/PID/task/TID/comm. */
	snprintf(name, sizeof(name), "worker%d", w->id);
	pthread_setname_np(w->thread, name);
	return 0;
}

void worker_stop(struct worker *w, bool now)
{
	uint64_t one = 1;
	int v = now ? 2 : 1;

	__atomic_store_n(&w->stop, v, __ATOMIC_RELEASE);
	if (write(w->wake.fd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_err("worker %d: cannot wake: %s", w->id, strerror(errno));
}

void worker_wait(struct worker *w)
{
	if (w->thread)
		pthread_join(w->thread, NULL);
	w->thread = 0;
}

void worker_join(struct worker *w)
{
	worker_wait(w);
	handoff_close(w); /* a peer may have queued some before it ran */
	pthread_mutex_destroy(&w->hq.lock);
	close_listeners(w, false);
	pthread_mutex_destroy(&w->lis_lock);
	worker_pool_release(w);
	if (w->wake.fd != -1)
		close(w->wake.fd);
	if (w->epfd != -1)
		close(w->epfd);
	if (w->reserve_fd != -1)
		close(w->reserve_fd);
	timer_heap_deinit(&w->timers);
	free(w->pool);
	if (w->lbw && w->cfg)
		for (size_t i = 0; i < w->cfg->n_apps; i++)
			lb_worker_deinit(&w->lbw[i]);
	free(w->lbw);
	free(w->scratch);
	if (w->cfg)
		cfg_unref(w->cfg);
	memset(w, 0, sizeof(*w));
}

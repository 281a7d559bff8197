/* lg_serve.c - loadgen serve: the echo origin (--listen, SO_REUSEPORT per
 * thread) and the naive any-port server (--addr --ports: one listening socket
 * per port, shared by the threads). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

#include "loadgen.h"

/* epoll tags on the server side: type in the high half, fd in the low half */
#define TAG_WAKE   0ull
#define TAG_LISTEN 1ull
#define TAG_CONN   2ull

struct sconn *g_sconn;
int g_sconn_max;
static int g_shared_lfd[65536];
int g_nshared;
int g_spare_fd = -1; /* serve: reserve for shed_one() */
double g_setup_ms;   /* naive serve: socket() of the first port to ready */

static void serve_close(int fd)
{
	struct sconn *s = &g_sconn[fd];

	free(s->pend);
	s->pend = NULL;
	s->off = s->len = 0;
	close(fd);
}

/* Out of fds, the pending connection would keep the level-triggered
 * listener ready and the loop would spin; a spare fd lets us accept it and
 * close it at once, so the client sees a reset instead of a hang. */
static void shed_one(int lfd)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	int fd;

	pthread_mutex_lock(&lock);
	if (g_spare_fd != -1) {
		close(g_spare_fd);
		fd = accept(lfd, NULL, NULL);
		if (fd != -1) {
			struct linger l = {.l_onoff = 1, .l_linger = 0};

			setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
			close(fd);
		}
		g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	pthread_mutex_unlock(&lock);
}

static void serve_accept(struct worker *w, int lfd)
{
	static atomic_int warned;

	/* bounded: the listener is level-triggered, the rest comes next round */
	for (int i = 0; i < 64; i++) {
		struct epoll_event ev;
		int one = 1;
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd == -1) {
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
				return;
			if (atomic_fetch_add(&warned, 1) < MAX_ERR_LOG)
				perror("loadgen: accept");
			if (errno == EMFILE || errno == ENFILE)
				shed_one(lfd);
			return;
		}
		if (fd >= g_sconn_max) {
			close(fd);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		ev.events = EPOLLIN;
		ev.data.u64 = TAG_CONN << 32 | (uint32_t)fd;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
			close(fd);
			continue;
		}
		w->accepted++;
	}
}

static void serve_set_events(struct worker *w, int fd, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.u64 = TAG_CONN << 32 | (uint32_t)fd};

	epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* Echo: read what is there and send it straight back. If the peer does
 * not read (send buffer full), keep the rest and stop reading until it
 * drains: that is the only allocation, and only under backpressure. */
static void serve_io(struct worker *w, int fd, uint32_t events)
{
	struct sconn *s = &g_sconn[fd];
	ssize_t n, m;

	if (s->len) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		m = send(fd, s->pend + s->off, s->len, MSG_NOSIGNAL);
		if (m == -1) {
			if (errno != EAGAIN && errno != EINTR)
				serve_close(fd);
			return;
		}
		s->off += (uint32_t)m;
		s->len -= (uint32_t)m;
		if (s->len == 0) {
			free(s->pend);
			s->pend = NULL;
			s->off = 0;
			serve_set_events(w, fd, EPOLLIN);
		}
		return;
	}
	n = recv(fd, w->scratch, SCRATCH_SIZE, 0);
	if (n == 0) {
		serve_close(fd);
		return;
	}
	if (n == -1) {
		if (errno != EAGAIN && errno != EINTR)
			serve_close(fd);
		return;
	}
	m = send(fd, w->scratch, (size_t)n, MSG_NOSIGNAL);
	if (m == -1) {
		if (errno != EAGAIN) {
			serve_close(fd);
			return;
		}
		m = 0;
	}
	if (m < n) {
		s->pend = malloc((size_t)(n - m));
		if (!s->pend) {
			serve_close(fd);
			return;
		}
		memcpy(s->pend, w->scratch + m, (size_t)(n - m));
		s->off = 0;
		s->len = (uint32_t)(n - m);
		serve_set_events(w, fd, EPOLLOUT);
	}
}

void serve_loop(struct worker *w)
{
	struct epoll_event evs[EV_BATCH];

	while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
		int n = epoll_wait(w->epfd, evs, EV_BATCH, 1000);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			perror("loadgen: epoll_wait");
			break;
		}
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			int fd = (int)(uint32_t)tag;

			if (tag >> 32 == TAG_LISTEN)
				serve_accept(w, fd);
			else if (tag >> 32 == TAG_CONN)
				serve_io(w, fd, evs[i].events);
		}
	}
}

static int make_listener(const struct sockaddr_storage *ss, bool reuseport)
{
	int one = 1;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd == -1)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1)
		goto fail;
	/* so that [::]:P and 0.0.0.0:P can both be listened on */
	if (ss->ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)ss, ss_len(ss)) == -1)
		goto fail;
	/* the kernel clamps the backlog to net.core.somaxconn */
	if (listen(fd, 65535) == -1)
		goto fail;
	return fd;
fail:
	one = -errno;
	close(fd);
	return one;
}

static int add_listener(struct worker *w, int fd, bool exclusive)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN << 32 | (uint32_t)fd};

	/* a listener shared by several threads wakes only one of them */
	if (exclusive)
		ev.events |= EPOLLEXCLUSIVE;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1)
		return -errno;
	return 0;
}

/* Creates all listeners and registers them; prints the ready line. */
int serve_setup(void)
{
	uint64_t t0 = now_ns();
	char buf[64];
	int r;

	for (int t = 0; t < g_opt.threads; t++) {
		struct worker *w = &g_workers[t];

		for (int i = 0; i < g_opt.nlisten; i++) {
			int fd = make_listener(&g_opt.listen[i], true);

			if (fd < 0) {
				fprintf(stderr, "loadgen: listen %s: %s\n",
					ss_str(&g_opt.listen[i], buf, sizeof(buf)), strerror(-fd));
				return fd;
			}
			w->lfd[w->nlfd++] = fd;
			r = add_listener(w, fd, false);
			if (r)
				return r;
		}
	}
	if (g_opt.have_addr) {
		for (unsigned p = g_opt.port_lo; p <= g_opt.port_hi; p++) {
			struct sockaddr_storage ss;
			int fd;

			ss_fill(&ss, g_opt.addr.family, g_opt.addr.addr, p);
			fd = make_listener(&ss, false);
			if (fd < 0) {
				fprintf(stderr, "loadgen: listen %s: %s\n",
					ss_str(&ss, buf, sizeof(buf)), strerror(-fd));
				return fd;
			}
			g_shared_lfd[g_nshared++] = fd;
			for (int t = 0; t < g_opt.threads; t++) {
				r = add_listener(&g_workers[t], fd, g_opt.threads > 1);
				if (r) {
					fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(-r));
					return r;
				}
			}
		}
		g_setup_ms = (double)(now_ns() - t0) / 1e6;
		fprintf(stderr, "ready listeners=%d setup_ms=%.1f\n", g_nshared, g_setup_ms);
	} else {
		fprintf(stderr, "ready\n");
	}
	return 0;
}

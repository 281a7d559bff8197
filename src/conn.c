/* conn.c - one proxied connection: origin connect, relay, finalize, log.
 *
 * The relay moves bytes with splice(2): socket -> pipe -> socket, so payload
 * never enters user space. A pipe is borrowed from the worker's pool when a
 * direction has bytes to move and given back as soon as it is empty again,
 * so an idle connection holds two sockets and this struct, nothing else.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "addr.h"
#include "cfg.h"
#include "conn.h"
#include "log.h"
#include "guard.h"
#include "hc.h"
#include "lb.h"
#include "origin.h"
#include "rt.h"

#define SPLICE_LEN  PIPE_SIZE	   /* as much as the pipe takes */
#define FALLBACK_SZ WORKER_SCRATCH /* read/write buffer when no pipe can be had */
/* What a socket is registered for, edge-triggered; IO_READ not while muted. */
#define IO_READ	  (EPOLLIN | EPOLLRDHUP | EPOLLPRI)
#define IO_EVENTS (IO_READ | EPOLLOUT | EPOLLET)

static const char *const reason_names[CR__COUNT] = {
    [CR_NONE] = "none",
    [CR_CLIENT_CLOSED] = "client_closed",
    [CR_ORIGIN_CLOSED] = "origin_closed",
    [CR_CLIENT_RESET] = "client_reset",
    [CR_ORIGIN_RESET] = "origin_reset",
    [CR_ORIGIN_REFUSED] = "origin_refused",
    [CR_ORIGIN_UNREACHABLE] = "origin_unreachable",
    [CR_CONNECT_TIMEOUT] = "connect_timeout",
    [CR_IDLE_TIMEOUT] = "idle_timeout",
    [CR_SHUTDOWN] = "shutdown",
    [CR_NO_APP] = "no_app",
    [CR_RESOURCE] = "resource",
    [CR_NO_ORIGIN] = "no_origin",
    [CR_SOURCE_LIMIT] = "source_limit",
    [CR_RATE_LIMIT] = "rate_limit",
    [CR_SHED] = "shed",
    [CR_FIRST_BYTE_TIMEOUT] = "first_byte_timeout",
};

const char *conn_reason_str(enum conn_reason r)
{
	return r < CR__COUNT ? reason_names[r] : "unknown";
}

/* Closes <fd> with an RST instead of a FIN: SO_LINGER with a zero timeout
 * makes close() abort the connection, which is how a reset, a refused or a
 * timed-out origin is passed on to the other side.
 */
static void close_reset(int fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static void origin_release(struct conn *c);
static void linger_check(struct conn *c);
static bool reset_after_eof(const struct io *src);

/* "No local port left towards an origin": once a second for the process,
 * not once per worker (log_ratelimit is thread-safe).
 */
static uint64_t last_port_log;
static uint64_t last_socket_log; /* "cannot make a socket", the same way */

static void log_conn(const struct conn *c, const char *app, enum conn_reason reason)
{
	char cl[ADDR_STRLEN], ed[ADDR_STRLEN], og[ADDR_STRLEN];
	uint64_t dur = c->w->now - c->start;

	log_access("app=%s client=%s edge=%s origin=%s c2o=%llu o2c=%llu duration_ms=%llu "
		   "reason=%s",
		   app, addr_fmt_sa(&c->client.sa, cl), addr_fmt_sa(&c->edge.sa, ed),
		   c->origin.sa.sa_family ? addr_fmt_sa(&c->origin.sa, og) : "-",
		   (unsigned long long)c->c2o.bytes, (unsigned long long)c->o2c.bytes,
		   (unsigned long long)dur, conn_reason_str(reason));
}

static void half_release(struct worker *w, struct half *h, bool reuse)
{
	if (h->pipe.rd != -1) {
		if (reuse && h->pending == 0) {
			worker_pipe_put(w, &h->pipe);
		} else {
			close(h->pipe.rd);
			close(h->pipe.wr);
			h->pipe.rd = h->pipe.wr = -1;
		}
	}
	free(h->buf);
	h->buf = NULL;
}

/* Whether ending the connection now (idle timeout, shutdown) cuts <h>'s
 * stream short: bytes prism holds for its destination, bytes its source
 * sent that prism has not read, or its source's reset not yet passed on.
 * Its destination then gets an RST: a FIN would pass the truncated stream
 * off as complete. A stream whose FIN was passed on is whole; one whose
 * destination is gone has no one to tell.
 */
static bool half_cut(const struct half *h, const struct io *src)
{
	int inq = 0;

	if (h->shut || h->gone)
		return false;
	if (h->pending || h->reset)
		return true;
	return src->fd != -1 && ioctl(src->fd, SIOCINQ, &inq) == 0 && inq > 0;
}

void conn_finalize(struct conn *c, enum conn_reason reason)
{
	struct worker *w = c->w;
	bool reset, cut_c2o = false, cut_o2c = false;

	if (c->state == CS_DEAD)
		return;
	if (c->state == CS_LINGER) /* whatever ends it: the reset it waited to pass on */
		reason = (enum conn_reason)c->end_reason;
	c->state = CS_DEAD;
	timer_cancel(&w->timers, &c->timer);

	/* Errors are passed on as errors: a peer that reset, an origin that
	 * refused or never answered. Orderly ends close with a FIN (the kernel
	 * still sends an RST if unread data remains), and so do our own
	 * timeouts and the shutdown, except towards a peer whose stream they
	 * cut short (half_cut).
	 */
	switch (reason) {
	case CR_CLIENT_RESET:
	case CR_ORIGIN_RESET:
	case CR_ORIGIN_REFUSED:
	case CR_ORIGIN_UNREACHABLE:
	case CR_CONNECT_TIMEOUT:
	case CR_NO_APP:
	case CR_NO_ORIGIN:
	case CR_RESOURCE:
	case CR_SOURCE_LIMIT:
	case CR_RATE_LIMIT:
	case CR_SHED:
	case CR_FIRST_BYTE_TIMEOUT:
		reset = true;
		break;
	case CR_IDLE_TIMEOUT:
	case CR_SHUTDOWN:
		reset = false;
		cut_c2o = half_cut(&c->c2o, &c->cli);
		cut_o2c = half_cut(&c->o2c, &c->org);
		break;
	default:
		reset = false;
	}
	if (c->cli.fd != -1)
		reset || cut_o2c ? close_reset(c->cli.fd) : (void)close(c->cli.fd);
	if (c->org.fd != -1)
		reset || cut_c2o ? close_reset(c->org.fd) : (void)close(c->org.fd);
	c->cli.fd = c->org.fd = -1;
	half_release(w, &c->c2o, true);
	half_release(w, &c->o2c, true);

	log_conn(c, c->app ? c->app->name : "-", reason);
	if (c->guarded) {
		struct in6_addr src;
		uint16_t port;

		addr_from_sa(&c->client.sa, &src, &port);
		guard_release(w->guard, c->app_idx, &src, c->guard_tracked);
	}
	origin_release(c);
	origin_set_unref(c->set);
	c->set = NULL;

	if (c->prev)
		c->prev->next = c->next;
	else if (w->conns == c)
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	__atomic_store_n(&w->n_conns, w->n_conns - 1, __ATOMIC_RELAXED);
	c->next_dead = w->dead;
	w->dead = c;
}

void conn_free(struct conn *c)
{
	free(c);
}

static void conn_timeout(struct timer *t);

static enum conn_reason connect_error_reason(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return CR_ORIGIN_REFUSED;
	case ETIMEDOUT:
		return CR_CONNECT_TIMEOUT;
	case EMFILE:
	case ENFILE:
	case ENOBUFS:
	case ENOMEM:
	case EADDRNOTAVAIL: /* no local port left towards that origin (TIME_WAIT) */
		return CR_RESOURCE;
	default:
		/* EHOSTUNREACH, ENETUNREACH... */
		return CR_ORIGIN_UNREACHABLE;
	}
}

/* The port <c> dials <o> on; <dport> is the port the client dialed. */
static uint16_t origin_port(const struct conn *c, const struct origin *o, uint16_t dport)
{
	struct in6_addr unused;
	uint16_t port;

	switch (o->co->port_mode) {
	case CFG_PORT_FIXED:
		addr_from_sa((const struct sockaddr *)&o->addr, &unused, &port);
		return port;
	case CFG_PORT_MAP:
		/* The app has one range, of the origin's range's size. */
		return (uint16_t)(o->co->port + (dport - c->app->ports[0].lo));
	default:
		return dport; /* a port-less origin gets the port the client dialed */
	}
}

/* "Origin would relay to itself": once a second for the process. */
static uint64_t last_loop_log;

/* Whether any port that <c>'s app may dial <o> on is claimed at its
 * address (whatever the client dialed).
 */
static bool origin_may_loop(const struct conn *c, const struct origin *o)
{
	struct in6_addr a;
	uint16_t unused;

	addr_from_sa((const struct sockaddr *)&o->addr, &a, &unused);
	return cfg_dial_claimed(c->w->cfg, c->app, o->co, &a);
}

/* Whether <o> is a host name whose address, on the port <c> would dial it
 * on (<dport>: the client's), is one that a claim holds. Dialing it would
 * come back to prism (the edge's local route and the nft rules), which
 * would relay it again, and so on until fds run out. IP origins are
 * refused at load (cfg.c, check_origin_loops); a name's addresses can
 * change, so they are checked when picked. Such an origin is
 * not usable for the connection, like one that is down: the balancer moves
 * on to the next without spending an attempt, so `retries` is not used up
 * by it. Whether an address may loop on any of its dial ports is worked out
 * once per origin (a new address is a new origin); only one that may costs
 * a route lookup per pick.
 */
static bool origin_loops(const struct conn *c, struct origin *o, uint16_t dport)
{
	const struct cfg *cfg = c->w->cfg;
	struct in6_addr a;
	uint16_t unused, port;
	uint32_t app;
	char as[ADDR_STRLEN];
	int st;

	if (!o->co->is_name || !cfg->net_manage)
		return false;
	/* Workers that race here work out the same answer. */
	st = __atomic_load_n(&o->loops, __ATOMIC_RELAXED);
	if (!st) {
		st = origin_may_loop(c, o) ? 2 : 1;
		__atomic_store_n(&o->loops, st, __ATOMIC_RELAXED);
	}
	if (st == 1)
		return false;
	addr_from_sa((const struct sockaddr *)&o->addr, &a, &unused);
	port = origin_port(c, o, dport);
	app = rt_lookup(cfg->rt, &a, port);
	if (app == RT_NONE)
		return false;
	if (log_ratelimit(&last_loop_log, c->w->now, 1000)) {
		struct sockaddr_storage sa = o->addr;

		addr_sa_set_port((struct sockaddr *)&sa, port);
		log_warn("app %s: origin %s resolves to %s, which app \"%s\" claims: prism "
			 "would relay to itself, so it is not dialed (use an origin outside "
			 "the edges)",
			 c->app->name, o->co->host, addr_fmt_sa((const struct sockaddr *)&sa, as),
			 cfg->apps[app].name);
	}
	return true;
}

struct pick_ctx {
	const struct conn *c;
	const struct origin_set *set;
	uint64_t now;
	const uint16_t *tried;
	unsigned n_tried;
	uint16_t dport;
};

static bool pick_usable(size_t i, void *arg)
{
	const struct pick_ctx *p = arg;
	struct origin *o = p->set->v[i];

	/* At most retries + 1 entries: a scan is cheaper than any set. */
	for (unsigned k = 0; k < p->n_tried; k++)
		if (p->tried[k] == i)
			return false;
	return origin_usable(o, p->now) && !origin_loops(p->c, o, p->dport);
}

/* Chooses an origin for <c> with the app's balancer, skipping origins this
 * connection already tried and those that would loop, and fills c->origin.
 * Returns 0, or -ENOENT when no usable origin is left.
 */
static int origin_pick(struct conn *c)
{
	const struct cfg_app *app = c->app;
	struct worker *w = c->w;
	struct pick_ctx ctx;
	struct in6_addr caddr, unused;
	uint16_t cport;
	struct origin *o;
	size_t i;

	if (!c->set)
		c->set = app_origins_get(&w->origins[c->app_idx]);
	ctx.c = c;
	ctx.set = c->set;
	ctx.now = w->now;
	ctx.tried = c->tried;
	ctx.n_tried = c->attempts;
	addr_from_sa(&c->edge.sa, &unused, &ctx.dport);
	addr_from_sa(&c->client.sa, &caddr, &cport);
	i = lb_pick(app->balance, c->set, &w->lbw[c->app_idx], &caddr, pick_usable, &ctx);
	if (i == LB_NONE)
		return -ENOENT;
	/* origin_connect gives up after retries + 1 attempts, and a set
	 * holds at most 1,000 origins of 64 addresses each (cfg_origins.c,
	 * dns.c): both fit.
	 */
	c->tried[c->attempts] = (uint16_t)i;
	o = c->set->v[i];
	origin_ref(o);
	__atomic_add_fetch(&o->active, 1, __ATOMIC_RELAXED);
	c->o = o;

	memcpy(&c->origin, &o->addr, sizeof(c->origin));
	if (o->co->port_mode != CFG_PORT_FIXED) /* else already in o->addr */
		addr_sa_set_port(&c->origin.sa, origin_port(c, o, ctx.dport));
	return 0;
}

/* Lets go of the origin of the current attempt. */
static void origin_release(struct conn *c)
{
	if (!c->o)
		return;
	__atomic_sub_fetch(&c->o->active, 1, __ATOMIC_RELAXED);
	origin_unref(c->o);
	c->o = NULL;
}

/* Ends the current attempt as <reason>. Returns true when it was the last
 * one the app's retries allow (the connection is finalized), false when
 * another origin may be tried.
 */
static bool attempt_failed(struct conn *c, enum conn_reason reason)
{
	origin_release(c);
	c->last_fail = reason;
	if (c->attempts <= c->app->retries)
		return false;
	conn_finalize(c, reason);
	return true;
}

/* Picks an origin and starts a non-blocking connect to it, moving on to
 * the next origin while connect() fails at once. Returns 0, or -errno when
 * the worker should pause accepting (fds or memory ran out); on every
 * failure the connection is already finalized.
 */
static int origin_try(struct conn *c)
{
	struct worker *w = c->w;
	int one = 1, zero = 0, ofd, err;

	for (;;) {
		if (origin_pick(c) < 0) {
			conn_finalize(c, c->attempts ? c->last_fail : CR_NO_ORIGIN);
			return 0;
		}
		c->attempts++;
		ofd = socket(c->origin.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		/* Spare pipes first: they are only kept for speed. */
		if (ofd == -1 && (errno == EMFILE || errno == ENFILE) && worker_pool_release(w))
			ofd = socket(c->origin.sa.sa_family,
				     SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (ofd == -1 && errno == EMFILE && w->reserve_fd != -1) {
			/* This connection's accept took the last fd: the
			 * worker's reserve makes room for its origin's socket,
			 * and accepting pauses until the reserve is back
			 * (worker.c, accept_resume), so the connections after
			 * it wait in the backlog instead. The socket comes
			 * right after the close: any thread may take the
			 * freed number.
			 */
			close(w->reserve_fd);
			w->reserve_fd = -1;
			ofd = socket(c->origin.sa.sa_family,
				     SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			err = errno;
			worker_pause_accept(w, EMFILE);
			errno = err;
		}
		if (ofd == -1) {
			err = errno;
			if (connect_error_reason(err) == CR_RESOURCE) {
				conn_finalize(c, CR_RESOURCE);
				return -err;
			}
			/* No shortage, so no pause: this origin cannot be
			 * dialed from here (EAFNOSUPPORT: an IPv6 address of a
			 * name, on a host without IPv6; EACCES: a security
			 * policy). Like a connect that fails at once: the
			 * origin's failure, and the next origin may take it.
			 */
			if (log_ratelimit(&last_socket_log, w->now, 1000))
				log_warn("app %s: origin %s: cannot make a socket for it: %s",
					 c->app->name, c->o->name, strerror(err));
			hc_connect_failed(c->app, c->o, w->now, err);
			if (attempt_failed(c, CR_ORIGIN_UNREACHABLE))
				return 0;
			continue;
		}
		setsockopt(ofd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		/* Keeps the urgent byte of TCP urgent data (telnet's Synch,
		 * FTP's ABOR) in the stream, to be relayed in its place (client
		 * sockets have it from the listener, worker.c). It must be set
		 * before any byte arrives: without it the kernel takes an
		 * urgent byte out of the stream, and drops it when a second
		 * urgent pointer comes before it is read, which a worker busy
		 * elsewhere cannot prevent (test_origin_urgent_byte_then_another).
		 */
		setsockopt(ofd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
		/* Delayed-ACK ("pingpong") mode before connect() makes the
		 * kernel hold the handshake's last ACK so that the first bytes
		 * to the origin carry it: one packet fewer per connection.
		 * connected() pushes the ACK out at once when no bytes are
		 * ready to carry it (the origin speaks first), and relay()
		 * leaves the mode once the first bytes are out (see there).
		 */
		setsockopt(ofd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero));
		c->ack_held = true;
		if (connect(ofd, &c->origin.sa, addr_sa_len(&c->origin.sa)) == 0 ||
		    errno == EINPROGRESS)
			break;
		err = errno;
		close(ofd);
		if (err == EADDRNOTAVAIL) {
			/* No local port left towards this origin (all in use
			 * or in TIME_WAIT). The edge's to fix, not the origin's
			 * fault: no passive mark and no pause of accepting
			 * (other origins have ports of their own); another
			 * origin may take the connection, as below.
			 */
			if (log_ratelimit(&last_port_log, w->now, 1000))
				log_warn("app %s: origin %s: no local port left towards it (see "
					 "net.ipv4.ip_local_port_range and tcp_tw_reuse)",
					 c->app->name, c->o->name);
		} else if (connect_error_reason(err) == CR_RESOURCE) {
			conn_finalize(c, CR_RESOURCE);
			return -err;
		} else {
			hc_connect_failed(c->app, c->o, w->now, err);
		}
		if (attempt_failed(c, connect_error_reason(err)))
			return 0;
	}
	c->org.fd = ofd;
	c->org.rd = c->org.wr = c->org.rdhup = c->org.urg = c->org.mute = c->org.err = false;

	struct epoll_event ev = {.events = IO_EVENTS};
	ev.data.ptr = &c->org;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, ofd, &ev) == -1) {
		err = errno;
		conn_finalize(c, CR_RESOURCE);
		return -err;
	}
	/* Cannot fail: conn_accept reserved the room. */
	timer_set(&w->timers, &c->timer, w->now + c->app->connect_timeout_ms);
	return 0;
}

/* origin_try, and when fds or memory ran out, a pause of accepting: the
 * same for a connection's first attempt, a retry, or the connect after a
 * client's first byte.
 */
static void origin_connect(struct conn *c)
{
	int r = origin_try(c);

	if (r < 0)
		worker_pause_accept(c->w, -r);
}

/* The current attempt failed (refused, unreachable, timed out): tell the
 * health accounting, and try another origin while retries remain, so the
 * client sees no failure while a healthy origin exists.
 */
static void connect_failed(struct conn *c, int err, enum conn_reason reason)
{
	/* A shortage reported by the connect's completion (SO_ERROR) is the
	 * edge's, as when connect() itself returns it: no passive mark.
	 */
	if (reason != CR_RESOURCE)
		hc_connect_failed(c->app, c->o, c->w->now, err);
	close(c->org.fd);
	c->org.fd = -1;
	if (!attempt_failed(c, reason))
		origin_connect(c);
}

int conn_accept(struct worker *w, int fd, const struct sockaddr *client,
		const struct sockaddr *edge)
{
	struct conn *c;
	struct in6_addr daddr;
	uint16_t dport;
	uint32_t app;

	c = calloc(1, sizeof(*c));
	if (!c || timer_reserve(&w->timers, w->n_conns + 1 + WORKER_TIMERS) < 0) {
		free(c);
		close_reset(fd);
		return -ENOMEM;
	}
	c->w = w;
	c->cli.fd = fd;
	c->cli.kind = IO_CLIENT;
	c->org.fd = -1;
	c->org.kind = IO_ORIGIN;
	c->c2o.pipe.rd = c->c2o.pipe.wr = -1;
	c->o2c.pipe.rd = c->o2c.pipe.wr = -1;
	c->start = c->last_active = w->now;
	memcpy(&c->client, client, addr_sa_len(client));
	memcpy(&c->edge, edge, addr_sa_len(edge));
	timer_init(&c->timer, conn_timeout);
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	__atomic_store_n(&w->n_conns, w->n_conns + 1, __ATOMIC_RELAXED);

	addr_from_sa(edge, &daddr, &dport);
	app = rt_lookup(w->cfg->rt, &daddr, dport);
	if (app == RT_NONE) {
		/* The nft set and the routing table come from the same claims,
		 * so this only happens when someone else's rule sends us
		 * traffic (network.manage: false with a broader rule).
		 */
		conn_finalize(c, CR_NO_APP);
		return 0;
	}
	c->app_idx = app;
	c->app = &w->cfg->apps[app];

	if (w->guard) {
		static const enum conn_reason verdict_reason[] = {
		    [GUARD_SOURCE_LIMIT] = CR_SOURCE_LIMIT,
		    [GUARD_RATE_LIMIT] = CR_RATE_LIMIT,
		    [GUARD_SHED] = CR_SHED,
		};
		struct in6_addr src;
		uint16_t sport;
		enum guard_verdict v;

		addr_from_sa(client, &src, &sport);
		v = guard_admit(w->guard, app, &src, w->now, &c->guard_tracked);
		if (v != GUARD_OK) {
			/* Reset at once: no origin is contacted for it. */
			conn_finalize(c, verdict_reason[v]);
			return 0;
		}
		c->guarded = true;
	}

	/* Both sockets are registered once, edge-triggered, for both
	 * directions; readiness is cached in c->cli/c->org from then on.
	 * While connecting, client readiness is only recorded.
	 */
	struct epoll_event ev = {.events = IO_EVENTS};
	ev.data.ptr = &c->cli;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
		int err = errno;

		conn_finalize(c, CR_RESOURCE);
		return -err;
	}
	if (c->app->proxy_protocol != PP_OFF) {
		/* Only the length is kept: relay() encodes the header again
		 * when it sends it, so a connection holds no copy.
		 */
		ssize_t n = pp_encode(c->app->proxy_protocol, &c->client.sa, &c->edge.sa,
				      w->scratch, PP_MAX_LEN);
		if (n > 0)
			c->pp_len = (uint8_t)n;
	}
	if (c->app->protection.first_byte_timeout_ms) {
		/* A client that must talk first gets no origin connection
		 * until it does: a silent (slowloris) client costs one socket
		 * and this struct, and only until the timer fires.
		 */
		c->state = CS_FIRST_BYTE;
		timer_set(&w->timers, &c->timer, w->now + c->app->protection.first_byte_timeout_ms);
		return 0;
	}
	origin_connect(c);
	return 0;
}

/* CS_FIRST_BYTE: the client socket became readable. Data: connect to an
 * origin now (the bytes wait in the socket until then). EOF: the client
 * left without a word.
 */
static void first_byte(struct conn *c)
{
	char b;
	ssize_t n = recv(c->cli.fd, &b, 1, MSG_PEEK);

	if (n == 1) {
		c->state = CS_CONNECTING;
		timer_cancel(&c->w->timers, &c->timer);
		origin_connect(c);
	} else if (n == 0) {
		conn_finalize(c, reset_after_eof(&c->cli) ? CR_CLIENT_RESET : CR_CLIENT_CLOSED);
	} else if (errno != EAGAIN && errno != EINTR) {
		conn_finalize(c, CR_CLIENT_RESET);
	} else {
		c->cli.rd = false;
	}
}

static void arm_idle(struct conn *c)
{
	uint32_t idle = c->app->idle_timeout_ms;

	if (idle)
		timer_set(&c->w->timers, &c->timer, c->last_active + idle);
	else
		timer_cancel(&c->w->timers, &c->timer);
}

static void conn_timeout(struct timer *t)
{
	struct conn *c = container_of(t, struct conn, timer);
	uint64_t idle;

	if (c->state == CS_FIRST_BYTE) {
		conn_finalize(c, CR_FIRST_BYTE_TIMEOUT);
		return;
	}
	if (c->state == CS_CONNECTING) {
		connect_failed(c, ETIMEDOUT, CR_CONNECT_TIMEOUT);
		return;
	}
	if (c->state == CS_LINGER) {
		linger_check(c);
		return;
	}
	/* Activity does not move the timer (that would be a heap operation
	 * per read); the timer checks when it fires and re-arms if needed.
	 */
	idle = c->app->idle_timeout_ms;
	if (c->w->now >= c->last_active + idle)
		conn_finalize(c, CR_IDLE_TIMEOUT);
	else
		arm_idle(c);
}

/* Result of moving one direction as far as it can go now. */
enum pump_res {
	PUMP_OK = 0,	/* blocked on EAGAIN somewhere, or done */
	PUMP_SRC_RESET, /* reading the source failed: it reset */
	PUMP_DST_RESET, /* writing to the destination failed */
	PUMP_DST_GONE,	/* ... because it reset: its last bytes may wait (half_dst_gone) */
	PUMP_NOMEM,	/* neither a pipe nor a buffer could be had */
};

/* Borrows a pipe for <h>, or, when none can be had (the process is out of
 * fds), a heap buffer for the recv/send fallback. Returns 0 or -ENOMEM.
 */
static int half_acquire(struct worker *w, struct half *h)
{
	if (worker_pipe_get(w, &h->pipe) == 0)
		return 0;
	h->buf = malloc(FALLBACK_SZ);
	return h->buf ? 0 : -ENOMEM;
}

/* Gives back an empty half's pipe or buffer: an idle direction holds none. */
static void half_drop(struct worker *w, struct half *h)
{
	if (h->pipe.rd != -1)
		worker_pipe_put(w, &h->pipe);
	free(h->buf);
	h->buf = NULL;
}

/* Reads from socket <fd> into <h>'s empty pipe or buffer. Returns the
 * byte count, 0 at EOF, or -errno. The pipe is empty, so EAGAIN from
 * splice here means the socket has nothing to read, not that the pipe is
 * full.
 */
static ssize_t half_read(struct half *h, int fd)
{
	ssize_t n;

	if (h->pipe.rd != -1)
		n = splice(fd, NULL, h->pipe.wr, NULL, SPLICE_LEN,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	else
		n = recv(fd, h->buf, FALLBACK_SZ, 0);
	h->buf_off = 0;
	return n == -1 ? -errno : n;
}

/* Writes <h>'s pending bytes to socket <fd>. Returns the byte count or
 * -errno. The pipe holds h->pending bytes, so EAGAIN from splice here can
 * only mean the socket's send buffer is full.
 */
static ssize_t half_write(struct half *h, int fd)
{
	ssize_t n;

	if (h->pipe.rd != -1)
		n = splice(h->pipe.rd, NULL, fd, NULL, h->pending,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	else
		n = send(fd, h->buf + h->buf_off, h->pending, MSG_NOSIGNAL);
	return n == -1 ? -errno : n;
}

/* Whether a write that failed with <err> means the destination's peer reset
 * (or its connection timed out): its socket is closed then, but still holds
 * what the peer sent before, ahead of the error.
 */
static bool dst_gone_err(int err)
{
	return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT;
}

/* Whether passing a FIN on to <dst> failed because its peer reset: the
 * reset's error is still pending then (shutdown does not take it), and
 * reading it clears it, as a failed write does (half_dst_gone).
 */
static bool dst_reset_pending(const struct io *dst)
{
	int err = 0;
	socklen_t len = sizeof(err);

	return getsockopt(dst->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && dst_gone_err(err);
}

/* Whether a reset came after <src>'s FIN: a peer whose bytes, FIN and RST
 * were all in its socket before prism read them. Reads then return the
 * bytes and 0 (the kernel reports the FIN before the error), the reset
 * stays in SO_ERROR, and no new edge comes: passing the FIN on would make
 * an aborted stream look complete. Asked at EOF only when epoll reported
 * an error on the socket.
 */
static bool reset_after_eof(const struct io *src)
{
	return src->err && dst_reset_pending(src); /* the same SO_ERROR look */
}

/* What a failed read or write of a socket ends the connection as: the
 * peer's reset (ECONNRESET, EPIPE, ETIMEDOUT...), unless the kernel ran out
 * of memory for it, which is this host's problem, not the peer's.
 */
static enum pump_res io_failed(int err, enum pump_res reset)
{
	if (err == ENOMEM || err == ENOBUFS)
		return PUMP_NOMEM;
	if (reset == PUMP_DST_RESET && dst_gone_err(err))
		return PUMP_DST_GONE;
	return reset;
}

/* Stops (or restarts) reporting <io>'s incoming data. A direction whose
 * destination is full does not read its source until the pending bytes
 * are taken (see pump), but every segment the source's peer sends
 * meanwhile would still wake the worker, for nothing: in a 1-stream bulk
 * transfer that outran the origin, most of the worker's wake-ups
 * (docs/benchmarks.md, "Wake-ups while a destination is full"). So the
 * first such wake-up (conn_io) mutes the source until the bytes are taken;
 * EPOLLOUT stays, for the other direction. EPOLL_CTL_MOD polls the socket,
 * so restarting reports the data, FIN or urgent data that came meanwhile
 * (and muting reports EPOLLOUT once: a loop turn with nothing to do, but
 * not a sleep). EPOLLERR and EPOLLHUP reach a muted socket too.
 */
static int io_mute(struct conn *c, struct io *io, bool mute)
{
	struct epoll_event ev = {.events = mute ? IO_EVENTS & ~IO_READ : IO_EVENTS};

	ev.data.ptr = io;
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, io->fd, &ev) == -1)
		return -errno;
	io->mute = mute;
	return 0;
}

/* The first reads of a direction go through the worker's scratch buffer
 * with recv/send rather than through a pipe: for the small messages most
 * protocols exchange that is two syscalls instead of three (splice needs an
 * extra read to learn the socket is empty: a short splice may also mean a
 * full pipe), and it needs no pipe at all. A read that fills the scratch
 * buffer marks the direction as a stream, which splices from then on.
 *
 * A short recv() means the receive queue is empty, so the socket is marked
 * not readable without the EAGAIN round trip; edge-triggered epoll reports
 * any later data. The exception is a FIN already seen (rdhup): it raised
 * its edge before this read, so the next read must happen now to see EOF.
 */
static enum pump_res copy_small(struct conn *c, struct half *h, struct io *src, struct io *dst)
{
	char *scratch = c->w->scratch;
	ssize_t n, m = 0;

	n = recv(src->fd, scratch, WORKER_SCRATCH, 0);
	if (n == -1) {
		if (errno == EAGAIN)
			src->rd = src->urg = false; /* past any urgent mark too */
		else if (errno != EINTR)
			return io_failed(errno, PUMP_SRC_RESET);
		return PUMP_OK;
	}
	if (n == 0) {
		h->eof = true;
		h->reset |= reset_after_eof(src);
		return PUMP_OK;
	}
	if (n == WORKER_SCRATCH)
		h->bulk = true;
	else if (!src->rdhup && !src->urg) /* a read also stops at an urgent mark */
		src->rd = false;
	if (dst->wr) {
		m = send(dst->fd, scratch, (size_t)n, MSG_NOSIGNAL);
		if (m == -1) {
			if (errno != EAGAIN && errno != EINTR)
				return io_failed(errno, PUMP_DST_RESET);
			dst->wr = errno != EAGAIN;
			m = 0;
		}
		h->bytes += (uint64_t)m;
		c->last_active = c->w->now;
	}
	if (m < n) {
		/* The destination is slow: keep the rest, and stream from now. */
		h->buf = malloc(FALLBACK_SZ);
		if (!h->buf)
			return PUMP_NOMEM;
		memcpy(h->buf, scratch + m, (size_t)(n - m));
		h->buf_off = 0;
		h->pending = (uint32_t)(n - m);
		h->bulk = true;
	}
	return PUMP_OK;
}

/* Moves bytes from <src> to <dst> until a socket would block, the source
 * is at EOF, or an error ends the connection.
 *
 * Invariant: the source is read only when nothing is pending. A full
 * destination therefore stops the reading, which leaves the bytes in the
 * source's receive buffer, shrinks its TCP window, and slows the sender:
 * backpressure costs prism at most one pipe per direction.
 */
static enum pump_res pump(struct conn *c, struct half *h, struct io *src, struct io *dst)
{
	enum pump_res r;
	ssize_t n;

	for (;;) {
		if (h->pending) {
			if (!dst->wr)
				return PUMP_OK;
			n = half_write(h, dst->fd);
			if (n == -EAGAIN) {
				dst->wr = false;
				return PUMP_OK;
			}
			if (n == -EINTR)
				continue;
			if (n < 0)
				return io_failed((int)-n, PUMP_DST_RESET);
			h->pending -= (uint32_t)n;
			h->buf_off += (uint32_t)n;
			h->bytes += (uint64_t)n;
			c->last_active = c->w->now;
			continue;
		}
		if (h->eof || !src->rd) {
			half_drop(c->w, h);
			return PUMP_OK;
		}
		if (src->mute && io_mute(c, src, false) < 0)
			return PUMP_NOMEM;
		if (!h->bulk) {
			if ((r = copy_small(c, h, src, dst)) != PUMP_OK)
				return r;
			continue;
		}
		if (h->pipe.rd == -1) {
			/* A stream wants a pipe; the buffer (empty now) is only
			 * the fallback when no pipe can be had.
			 */
			free(h->buf);
			h->buf = NULL;
			if (half_acquire(c->w, h) < 0)
				return PUMP_NOMEM;
		}
		n = half_read(h, src->fd);
		if (h->pipe.rd != -1 && (n == 0 || (n == -EAGAIN && src->urg))) {
			/* splice(2) stops at an urgent mark and never passes
			 * it: EAGAIN there, or 0 once a FIN follows (EPOLLPRI
			 * may not have been seen yet). recv() reads on through
			 * the urgent byte (inline: SO_OOBINLINE) and confirms
			 * an EOF: copy_small takes over, the (empty) pipe
			 * given back, and streams again after a full read.
			 */
			half_drop(c->w, h);
			h->bulk = false;
			continue;
		}
		if (n == -EAGAIN) {
			src->rd = false;
			continue;
		}
		if (n == -EINTR)
			continue;
		if (h->pipe.rd != -1 && (n == -ECONNRESET || n == -ETIMEDOUT)) {
			/* splice reports the source's error before the bytes
			 * it cannot pass, those past an urgent mark: recv
			 * reads them (the error is taken, so it then finds an
			 * EOF), and h->reset passes the reset on after them.
			 */
			h->reset = true;
			half_drop(c->w, h);
			h->bulk = false;
			continue;
		}
		if (n < 0)
			return io_failed((int)-n, PUMP_SRC_RESET);
		if (n == 0) {
			h->eof = true;
			h->reset |= reset_after_eof(src);
		}
		h->pending = (uint32_t)n;
	}
}

/* Forwards a FIN once a direction's source ended and its pipe drained.
 * Returns false when it could not (the destination is gone: ENOTCONN after
 * its reset), and the connection must end (relay_half): the FIN would
 * never arrive, and a peer that waits for it would keep the connection
 * open until the idle timeout.
 */
static bool half_shut(struct conn *c, struct half *h, struct io *dst, enum conn_reason who)
{
	if (!h->eof || h->pending || h->shut)
		return true;
	h->shut = true;
	if (c->first_close == CR_NONE)
		c->first_close = who;
	/* shutdown(SHUT_WR) sends our FIN while keeping the socket open for
	 * the other direction: that is the half-close being passed on. When
	 * the other direction is already done, the connection is about to be
	 * finalized and close() sends the FIN: save the syscall.
	 */
	return (c->c2o.shut && c->o2c.shut) || shutdown(dst->fd, SHUT_WR) == 0;
}

/* The destination of <h> is gone: a write to it (or the shutdown passing
 * on a FIN, see dst_reset_pending) found its reset before its last bytes
 * were read. Those bytes are still in its socket, ahead of
 * the reset, as a direct peer would read them: the other direction,
 * <back>, reads that socket to its end and then passes the reset on
 * (relay_half). The failed write (or getsockopt) consumed the error, so
 * those reads end in an EOF, which back->reset turns into the reset.
 *
 * <h> is dropped: what it holds is discarded, and what its source still
 * sends is read and discarded too (half_discard), since nothing could take
 * it. Not reading would let that peer block in a write and never read
 * what <back> brings it: the connection would hang until the idle timeout.
 */
static void half_dst_gone(struct conn *c, struct half *h, struct half *back, struct io *src,
			  struct io *dst)
{
	half_release(c->w, h, true);
	h->pending = 0;
	h->eof = h->shut = h->gone = true;
	src->rd = true;
	back->reset = true;
	dst->rd = true;
}

/* Reads and discards what the source of a dropped direction sends (see
 * half_dst_gone). Discarding is not activity: a peer that only sends into
 * a dropped direction still meets the idle timeout.
 */
static enum pump_res half_discard(struct conn *c, struct io *src)
{
	ssize_t n;

	if (src->mute && io_mute(c, src, false) < 0)
		return PUMP_NOMEM;
	while (src->rd) {
		n = recv(src->fd, c->w->scratch, WORKER_SCRATCH, 0);
		if (n > 0)
			continue;
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno != EAGAIN)
			return io_failed(errno, PUMP_SRC_RESET);
		src->rd = false; /* EAGAIN, or its EOF: nothing more to discard */
	}
	return PUMP_OK;
}

/* How often a lingering connection (CS_LINGER) asks the kernel how much its
 * peer has yet to acknowledge: an ACK wakes nobody unless it frees a full
 * send buffer, so the count is polled. While it falls, at about the time
 * the rest should be acknowledged at the rate so far; while it stands
 * still, less often the longer that lasts. LINGER_QUIET_MS bounds the
 * wait with nothing acknowledged when the app's idle timeout is off (0):
 * the reset peer is gone, and nothing else would end it.
 */
#define LINGER_POLL_MIN_MS 2
#define LINGER_POLL_MAX_MS 1000
#define LINGER_QUIET_MS	   (5 * 60 * 1000)

/* How many bytes (and a FIN) sent to <fd> its peer has yet to acknowledge,
 * or 0 when it never will: the connection is closed (a reset), or the
 * kernel cannot say. SIOCOUTQ alone does not tell: a reset socket keeps
 * its count.
 */
static uint32_t sock_unacked(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int outq;

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1 || len < 1 ||
	    ti.tcpi_state == TCP_CLOSE || ti.tcpi_state == TCP_TIME_WAIT ||
	    ioctl(fd, SIOCOUTQ, &outq) == -1 || outq < 0)
		return 0;
	return (uint32_t)outq;
}

/* Ends the connection with a peer's reset (<reason>), which is passed on
 * to the other peer through <to> (NULL: that peer is gone too) as an RST
 * (conn_finalize). An RST makes the sending kernel drop what it still
 * holds for that peer: bytes prism read and acknowledged before the reset
 * came, and that a direct connection's receiver would read before its
 * ECONNRESET. So while <to>'s peer has bytes to acknowledge, the
 * connection lingers (CS_LINGER): the reset peer's socket is closed,
 * what <to>'s peer still sends is read and discarded (as in a dropped
 * direction, so that it does not block in a write and never read), and
 * the RST goes once every byte is acknowledged, <to>'s peer resets, or
 * nothing was acknowledged for the idle timeout (LINGER_QUIET_MS without
 * one). Whatever ends it then, it ends as this reset (conn_finalize).
 */
static void conn_pass_reset(struct conn *c, enum conn_reason reason, struct io *to)
{
	struct io *from;
	uint32_t unacked = to ? sock_unacked(to->fd) : 0;

	if (!unacked) {
		conn_finalize(c, reason);
		return;
	}
	from = to == &c->cli ? &c->org : &c->cli;
	close(from->fd);
	from->fd = -1;
	if (from == &c->org)
		origin_release(c); /* balancing counts it no more */
	half_release(c->w, &c->c2o, true);
	half_release(c->w, &c->o2c, true);
	c->state = CS_LINGER;
	c->end_reason = (uint8_t)reason;
	c->unacked = unacked;
	c->last_active = c->w->now;
	if (half_discard(c, to) != PUMP_OK)
		conn_finalize(c, reason);
	else
		timer_set(&c->w->timers, &c->timer, c->w->now + LINGER_POLL_MIN_MS);
}

/* CS_LINGER: passes the reset on once nothing is left to acknowledge, or
 * when nothing was acknowledged for the idle timeout; else polls again.
 */
static void linger_check(struct conn *c)
{
	struct io *to = c->cli.fd != -1 ? &c->cli : &c->org;
	uint32_t unacked = sock_unacked(to->fd);
	uint64_t now = c->w->now, quiet = now - c->last_active, limit, next;

	limit = c->app->idle_timeout_ms ? c->app->idle_timeout_ms : LINGER_QUIET_MS;
	if (unacked && unacked < c->unacked) {
		/* The rest at the rate since the last progress. */
		next = quiet * unacked / (c->unacked - unacked);
		c->unacked = unacked;
		c->last_active = now;
		quiet = 0;
	} else {
		next = quiet;
	}
	if (!unacked || quiet >= limit) {
		conn_finalize(c, CR_NONE); /* the reason is end_reason */
		return;
	}
	next = next < LINGER_POLL_MIN_MS   ? LINGER_POLL_MIN_MS
	       : next > LINGER_POLL_MAX_MS ? LINGER_POLL_MAX_MS
					   : next;
	if (next > limit - quiet)
		next = limit - quiet;
	timer_set(&c->w->timers, &c->timer, now + next);
}

/* CS_LINGER: an event on the socket the reset waits to go through. */
static void linger_io(struct conn *c, struct io *io, uint32_t events)
{
	if (io->fd == -1)
		return; /* the reset peer's, closed: stale, from this epoll batch */
	if (events & EPOLLERR) {
		conn_finalize(c, CR_NONE); /* it reset too: nothing more arrives */
		return;
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLPRI))
		io->rd = true;
	if (half_discard(c, io) != PUMP_OK)
		conn_finalize(c, CR_NONE);
	else
		linger_check(c);
}

/* Moves <h> (<src> to <dst>) and passes its FIN on. Returns false when
 * that ended the connection.
 */
static bool relay_half(struct conn *c, struct half *h, struct io *src, struct io *dst,
		       struct half *back)
{
	bool c2o = h == &c->c2o;
	enum pump_res r = h->gone ? half_discard(c, src) : pump(c, h, src, dst);

	/* A FIN that cannot be passed on: the destination's peer reset. Its
	 * error may have been taken already (by connected(), which then set
	 * back->reset); then the socket is closed, and shutdown says ENOTCONN.
	 */
	if (r == PUMP_OK && !h->reset &&
	    !half_shut(c, h, dst, c2o ? CR_CLIENT_CLOSED : CR_ORIGIN_CLOSED))
		r = back->reset || dst_reset_pending(dst) ? PUMP_DST_GONE : PUMP_DST_RESET;
	if (r == PUMP_DST_GONE) {
		half_dst_gone(c, h, back, src, dst);
		/* At once: a muted source (io_mute) reports nothing until then. */
		r = half_discard(c, src);
	}
	if (r == PUMP_NOMEM) {
		conn_finalize(c, CR_RESOURCE);
		return false;
	}
	if (r == PUMP_SRC_RESET || (h->reset && h->eof && !h->pending)) {
		conn_pass_reset(c, c2o ? CR_CLIENT_RESET : CR_ORIGIN_RESET, h->gone ? NULL : dst);
		return false;
	}
	if (r == PUMP_DST_RESET) {
		/* An error that does not say the destination reset: end at
		 * once, rather than wait for a last word that may never end.
		 */
		conn_finalize(c, c2o ? CR_ORIGIN_RESET : CR_CLIENT_RESET);
		return false;
	}
	return true;
}

static void relay(struct conn *c)
{
	bool cli_reset = c->c2o.reset;

	if (c->pp_off < c->pp_len) {
		/* The PROXY header goes first, before any payload byte. */
		if (!c->org.wr)
			return;
		/* The same addresses give the same c->pp_len bytes as in
		 * conn_accept.
		 */
		char *pp = c->w->scratch;
		ssize_t n;

		pp_encode(c->app->proxy_protocol, &c->client.sa, &c->edge.sa, pp, PP_MAX_LEN);
		do
			n = send(c->org.fd, pp + c->pp_off, c->pp_len - c->pp_off, MSG_NOSIGNAL);
		while (n == -1 && errno == EINTR);
		if (n == -1) {
			enum pump_res r;

			if (errno == EAGAIN) {
				c->org.wr = false;
				return;
			}
			/* As for the payload (pump): the kernel out of memory is
			 * this host's problem, not the origin's reset.
			 */
			r = io_failed(errno, PUMP_DST_RESET);
			if (r != PUMP_DST_GONE) {
				conn_finalize(c, r == PUMP_NOMEM ? CR_RESOURCE : CR_ORIGIN_RESET);
				return;
			}
			/* The origin's last bytes first, as for the payload. */
			c->pp_off = c->pp_len;
			half_dst_gone(c, &c->c2o, &c->o2c, &c->cli, &c->org);
		} else if ((c->pp_off += (uint8_t)n) < c->pp_len) {
			return;
		}
	}

again:
	if (!relay_half(c, &c->c2o, &c->cli, &c->org, &c->o2c))
		return;
	if (c->ack_held && (c->c2o.bytes || c->pp_off || c->c2o.shut)) {
		/* The handshake's ACK went out with these bytes. Staying in
		 * delayed-ACK mode would also save our ACK of the origin's
		 * reply, but an origin with Nagle on that writes its reply in
		 * pieces would then wait 40 ms for it after the first piece
		 * (test_origin_reply_in_pieces_without_delay); the kernel's
		 * quick-ACK start of a connection avoids that.
		 */
		int one = 1;

		setsockopt(c->org.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
		c->ack_held = false;
	}
	if (!relay_half(c, &c->o2c, &c->org, &c->cli, &c->c2o))
		return;
	if (c->c2o.reset && !cli_reset) {
		/* Writing to the client found its reset: its last bytes are
		 * for the origin first (half_dst_gone), once more round.
		 */
		cli_reset = true;
		goto again;
	}
	if (c->c2o.shut && c->o2c.shut)
		conn_finalize(c, c->first_close);
}

static void connected(struct conn *c, uint32_t events)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (events & (EPOLLERR | EPOLLHUP)) {
		/* The only way to learn why a non-blocking connect failed. */
		if (getsockopt(c->org.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (!err)
			err = ECONNREFUSED;
		if (err != ECONNRESET && err != EPIPE) {
			connect_failed(c, err, connect_error_reason(err));
			return;
		}
		/* It did connect: a reset in SYN_SENT is ECONNREFUSED. The
		 * origin accepted and reset before this worker got to the
		 * connect's completion, so it is an answering origin, and the
		 * connection ends as origin_reset, as it does when the worker
		 * is quicker. The bytes it sent before its reset are still in
		 * the socket and are relayed first; reading SO_ERROR cleared
		 * the error, so the reads end in an EOF, which relay_half()
		 * takes for the reset (o2c.reset).
		 */
		c->o2c.reset = true;
	} else if (!(events & EPOLLOUT)) {
		return;
	}
	hc_connect_ok(c->app, c->o);
	if (!c->cli.rd && !c->pp_len) {
		/* Nothing to send yet (a protocol where the server speaks
		 * first, or a slow client): the origin only sees the
		 * connection once it gets the handshake's ACK, so send it now
		 * rather than when the delayed-ACK timer fires, and leave
		 * delayed-ACK mode (1; 2 would stay in it): a greeting written
		 * in pieces by an origin with Nagle on would otherwise wait
		 * 40 ms for our ACK of each piece.
		 */
		int one = 1;

		setsockopt(c->org.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
		c->ack_held = false;
	}
	origin_set_unref(c->set); /* tried indices are meaningless from here on */
	c->set = NULL;
	c->state = CS_RELAYING;
	c->last_active = c->w->now;
	arm_idle(c);
}

void conn_io(struct conn *c, struct io *io, uint32_t events)
{
	if (c->state == CS_DEAD)
		return; /* stale event from earlier in this epoll batch */
	if (c->state == CS_LINGER) {
		linger_io(c, io, events);
		return;
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI))
		io->rd = true;
	if (events & EPOLLPRI)
		io->urg = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		io->rdhup = true;
	if (events & EPOLLERR)
		io->err = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		io->wr = true;
	if ((events & EPOLLIN) && c->state == CS_RELAYING) {
		struct half *h = io == &c->cli ? &c->c2o : &c->o2c;
		const struct io *dst = io == &c->cli ? &c->org : &c->cli;

		/* Woken for data that cannot be taken yet: see io_mute. */
		if (h->pending && !dst->wr && !io->mute)
			io_mute(c, io, true);
	}
	if (c->state == CS_FIRST_BYTE) {
		if (io == &c->cli && c->cli.rd)
			first_byte(c);
		return;
	}
	if (c->state == CS_CONNECTING) {
		if (io != &c->org) {
			/* The client reset while its origin is being dialed.
			 * With nothing of it to pass on, stop dialing: the
			 * origin would get a connection only to see it reset,
			 * and a slow one's connect timeout would count against
			 * it (passive health) for a client that left. Bytes it
			 * sent before the reset are still delivered, then the
			 * reset, as a direct connection would (relay()).
			 */
			int inq = 0;

			if ((events & EPOLLERR) && ioctl(c->cli.fd, SIOCINQ, &inq) == 0 && inq == 0)
				conn_finalize(c, CR_CLIENT_RESET);
			return;
		}
		connected(c, events);
		if (c->state != CS_RELAYING)
			return;
	}
	if ((events & EPOLLERR) && (io == &c->cli ? c->c2o.eof : c->o2c.eof)) {
		/* The peer reset after its FIN: nothing reads this socket
		 * any more, so this report is the only sign of it. Pass it
		 * on now, not when the other peer next writes (or as a FIN
		 * at the idle timeout).
		 *
		 * A reset while the peer's bytes wait for the other peer to
		 * take them is met by relay() once they are taken: the
		 * socket still holds the bytes before the reset, which prism
		 * has acknowledged, and passing the reset on at once would
		 * drop them.
		 */
		conn_pass_reset(c, io == &c->cli ? CR_CLIENT_RESET : CR_ORIGIN_RESET,
				io == &c->cli ? &c->org : &c->cli);
		return;
	}
	relay(c);
}

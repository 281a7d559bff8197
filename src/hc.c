/* hc.c - origin health: the active-check thread and passive accounting.
 *
 * Active checks run in one thread with its own epoll loop and timer heap,
 * apart from the workers so a slow or silent origin never costs a worker a
 * loop turn. Each app with a health_check has a tick every interval (the
 * apps with the same interval queue in one lane, so a tick costs no heap
 * sifting); a tick re-reads the app's current origin set (a DNS resolver may
 * have swapped it since) and schedules one check per origin, spread evenly
 * over the interval so a thousand origins do not all connect at once. At most
 * HC_MAX_INFLIGHT checks run at a time; the rest wait in a FIFO.
 *
 * A check is one non-blocking TCP connect, then optionally a payload sent
 * and a reply prefix compared, all within timeout_ms. Its result feeds the
 * rise/fall state machine (hc_record_result), the only writer of
 * origin->up.
 *
 * Checks of the same address with the same settings (port, timeout,
 * interval, send, expect) are shared, whichever apps they belong to: while
 * one runs, the others due meanwhile wait for its result (followers), and
 * the result of a check due less than an interval earlier is taken as it
 * is (by a tick, without making a check of its own). Many apps in front of
 * one origin pool cost one check per origin and interval, not one per app:
 * 65,536 apps checking one origin every 2 s made 32,768 checks a second
 * and cut connections/s to 0.63x (docs/benchmarks.md, "Many apps").
 * A shared entry outlives its checks: it is swept once its last result is
 * two of its intervals old and nothing runs or waits on it, whenever the
 * entries have doubled since the last sweep. So an origin name that keeps
 * resolving to new addresses does not grow the table without bound, and
 * the sweeps cost O(1) per entry made. The apps' transitions through one
 * shared check are logged a line each for the first few, then one line for
 * the rest (shared_log), not a line per app.
 *
 * Passive accounting (hc_connect_failed/hc_connect_ok) is called by the
 * workers on their data path: a few atomics, no lock, and a log line only
 * on a transition.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "hc.h"
#include "log.h"
#include "timer.h"

#define HC_EVENTS   64
#define HC_SHOW_MAX 48 /* reply bytes quoted in a failure reason */

enum check_state {
	CK_PENDING,    /* timer armed at its due time */
	CK_QUEUED,     /* due, waiting for a free slot */
	CK_FOLLOWING,  /* due, waiting for a shared check's result */
	CK_CONNECTING, /* the rest own a socket and a slot */
	CK_SENDING,
	CK_READING,
	CK_DONE, /* finished, freed at the end of the loop turn */
};

struct hc_app {
	struct hc *hc;
	struct app_origins *ao;
	const struct cfg_app *app;
	uint64_t due;	      /* ms monotonic: its next tick */
	struct hc_app *lnext; /* the next in its lane */
	bool warned_port;     /* logged once that an origin has no port to check */
};

/* The ticks of the apps with one interval, in the order they are due.
 * A tick's next is an interval after it, so it joins the back: one heap
 * timer per lane, for its head, instead of one per app (65,536 apps'
 * ticks in the heap made sifting a third of the thread's time).
 */
struct lane {
	struct hc *hc;
	uint64_t interval; /* ms, at least 1 */
	uint64_t early;	   /* ms: ticks due this soon run with the head's */
	struct hc_app *head, *tail;
	struct timer timer; /* at the head's due time */
};

/* A lane's ticks that are due within 1/LANE_BATCH of its interval (at most
 * LANE_EARLY_MAX ms) of the head's run with it, a little early, so that
 * a lane of thousands of apps wakes the thread LANE_BATCH times an
 * interval, not once a millisecond: the wake-ups were a third of the
 * thread's time with 65,536 apps. Each app keeps its cadence (its next
 * tick is an interval after its due time, not after when it ran).
 */
#define LANE_BATCH     128
#define LANE_EARLY_MAX 50

/* Checks with equal keys (the dialed address, the settings) share one. */
struct shared {
	struct in6_addr addr; /* as dialed (IPv4 v4-mapped) */
	uint16_t port;
	const struct cfg_health *h; /* the settings, compared by value */
	struct check *leader;	    /* running (or queued) for all, or NULL */
	struct check *followers;    /* waiting for the leader's result */
	uint64_t due_at;	    /* when the check of the last counted result was due */
	uint64_t result;	    /* that result's id (hc->results), 0 before any */
	bool ok;
	char why[256];
	/* The log window (see shared_log): the apps' transitions one way,
	 * the first SHARED_LOG_APPS logged, the rest counted until <flush>.
	 */
	struct timer flush;
	int dir;	    /* 1 up, -1 down, 0 no window open */
	uint32_t logged;    /* transitions logged one by one in the window */
	uint32_t held;	    /* ...and only counted */
	char held_why[256]; /* the last counted down transition's reason */
};

struct check {
	struct hc_app *ha;
	struct origin *o;    /* reference held */
	struct shared *sh;   /* the shared check it leads or follows, or NULL */
	struct check *fnext; /* next follower */
	uint64_t due;	     /* ms monotonic: when it was planned (see app_tick) */
	enum check_state state;
	int fd;
	struct timer timer; /* due time, then the check's timeout */
	size_t sent, got;
	struct check *prev, *next; /* all live checks */
	struct check *qnext;	   /* wait queue, or the dead list */
	char reply[];		   /* expect_len bytes */
};

struct hc {
	pthread_t thread;
	int epfd, wakefd;
	int stop; /* atomic */
	uint64_t now;
	uint64_t rng;
	struct timer_heap timers;
	struct hc_app *apps;
	size_t n_apps;
	struct lane *lanes;
	size_t n_lanes;
	struct check *all;
	struct check *q_head, *q_tail;
	struct check *dead;
	size_t inflight;
	bool draining; /* check_end is starting queued checks */
	uint64_t last_resource_log;
	void *shared;	  /* tsearch tree of struct shared */
	size_t n_shared;  /* its entries (atomic: hc_shared_entries reads it) */
	uint64_t wakeups; /* loop turns (atomic: hc_wakeups reads it) */
	uint64_t results; /* ids given to shared results so far */
	size_t sweep_at;  /* sweep before making the entry that reaches this */
};

/* Entries are swept only when there are at least this many, so a handful
 * of origins never triggers a walk.
 */
#define SHARED_SLACK 64

/* Apps whose origin changes state through one shared check get a line
 * each for the first SHARED_LOG_APPS of them, then one line for all the
 * others: 65,536 apps behind one origin made 131,072 lines of a flap.
 */
#define SHARED_LOG_APPS 3

static uint64_t hc_rand(struct hc *hc)
{
	/* xorshift64: jitter only, nothing depends on its quality */
	hc->rng ^= hc->rng << 13;
	hc->rng ^= hc->rng >> 7;
	hc->rng ^= hc->rng << 17;
	return hc->rng;
}

/* ---- the rise/fall state machine ---- */

/* Feeds one result to <o>'s state machine. Returns 1 when it made the
 * origin up, -1 when it made it down, else 0; logs only failed checks
 * (debug), the caller logs a transition.
 */
static int record(struct origin *o, const struct cfg_app *app, bool ok, const char *why)
{
	const struct cfg_health *h = &app->health;
	int up = __atomic_load_n(&o->up, __ATOMIC_RELAXED);

	/* hc_ok/hc_fail belong to the health thread; the atomic stores only
	 * let others (tests, a future status endpoint) read them race-free.
	 */
	if (ok) {
		uint32_t n = o->hc_ok + (o->hc_ok < UINT32_MAX);

		__atomic_store_n(&o->hc_ok, n, __ATOMIC_RELAXED);
		__atomic_store_n(&o->hc_fail, 0, __ATOMIC_RELAXED);
		if (!up && n >= h->rise) {
			__atomic_store_n(&o->up, 1, __ATOMIC_RELAXED);
			return 1;
		}
	} else {
		uint32_t n = o->hc_fail + (o->hc_fail < UINT32_MAX);

		__atomic_store_n(&o->hc_fail, n, __ATOMIC_RELAXED);
		__atomic_store_n(&o->hc_ok, 0, __ATOMIC_RELAXED);
		log_debug("app %s: origin %s: check failed: %s", app->name, o->name, why);
		if (up && n >= h->fall) {
			__atomic_store_n(&o->up, 0, __ATOMIC_RELAXED);
			return -1;
		}
	}
	return 0;
}

static void log_transition(const struct origin *o, const struct cfg_app *app, int dir,
			   const char *why)
{
	if (dir > 0)
		log_info("app %s: origin %s is up: %u successful checks", app->name, o->name,
			 o->hc_ok);
	else
		log_warn("app %s: origin %s is down: %u failed checks (last: %s)", app->name,
			 o->name, o->hc_fail, why);
}

void hc_record_result(struct origin *o, const struct cfg_app *app, bool ok, const char *why)
{
	int dir = record(o, app, ok, why);

	if (dir)
		log_transition(o, app, dir, why);
}

/* ---- passive accounting ---- */

/* "10s", "2m", "1500ms": the way the config spells durations. */
static const char *fmt_duration(char *buf, uint32_t ms)
{
	if (ms && ms % 3600000 == 0)
		snprintf(buf, 24, "%uh", ms / 3600000);
	else if (ms && ms % 60000 == 0)
		snprintf(buf, 24, "%um", ms / 60000);
	else if (ms && ms % 1000 == 0)
		snprintf(buf, 24, "%us", ms / 1000);
	else
		snprintf(buf, 24, "%ums", ms);
	return buf;
}

void hc_connect_failed(const struct cfg_app *app, struct origin *o, uint64_t now, int err)
{
	uint32_t limit = app->passive.failures;
	uint64_t until, cur;
	uint32_t n, f;

	if (limit == 0)
		return;
	n = __atomic_add_fetch(&o->fails, 1, __ATOMIC_RELAXED);
	if (n < limit)
		return;

	/* Several workers can get here at once for the same origin. The CAS
	 * makes the cooldown only ever grow, and only the worker that moves
	 * it from "expired" to "running" logs: one line per transition.
	 */
	until = now + app->passive.cooldown_ms;
	cur = __atomic_load_n(&o->cooldown_until, __ATOMIC_RELAXED);
	while (cur < until) {
		if (__atomic_compare_exchange_n(&o->cooldown_until, &cur, until, false,
						__ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
			char d[24];

			if (cur <= now)
				log_warn("app %s: origin %s is out for %s: %u consecutive "
					 "connect failures (last: %s)",
					 app->name, o->name,
					 fmt_duration(d, app->passive.cooldown_ms), n,
					 strerror(err));
			break;
		}
	}

	/* Back to one short of the limit, so that once the cooldown is over a
	 * single further failure puts it back. A CAS rather than a store: a
	 * concurrent hc_connect_ok's reset to 0 must not be overwritten.
	 */
	f = __atomic_load_n(&o->fails, __ATOMIC_RELAXED);
	while (f >= limit && !__atomic_compare_exchange_n(&o->fails, &f, limit - 1, false,
							  __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

void hc_connect_ok(const struct cfg_app *app, struct origin *o)
{
	/* The common case, a healthy origin, costs two relaxed loads. Both
	 * are needed: with passive.failures 1 fails stays 0 in a cooldown.
	 */
	if (__atomic_load_n(&o->fails, __ATOMIC_RELAXED) == 0 &&
	    __atomic_load_n(&o->cooldown_until, __ATOMIC_RELAXED) == 0)
		return;
	__atomic_store_n(&o->fails, 0, __ATOMIC_RELAXED);
	/* A success ends a cooldown at once: the origin evidently answers. The
	 * exchange picks the one caller that logs it.
	 */
	if (__atomic_exchange_n(&o->cooldown_until, 0, __ATOMIC_RELAXED) != 0)
		log_info("app %s: origin %s answers again", app->name, o->name);
}

/* ---- active checks ---- */

static void check_start(struct check *c);
static void check_due(struct timer *t);
static void check_timeout(struct timer *t);
static void check_schedule(struct hc_app *ha, struct origin *o, uint64_t due, uint64_t planned);

/* Quotes <n> bytes of <s> into <out> (size <cap>) with C escapes. */
static void quote(char *out, size_t cap, const char *s, size_t n)
{
	size_t o = 0, shown = n > HC_SHOW_MAX ? HC_SHOW_MAX : n;

	for (size_t i = 0; i < shown && o + 8 < cap; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '\r')
			o += (size_t)snprintf(out + o, cap - o, "\\r");
		else if (ch == '\n')
			o += (size_t)snprintf(out + o, cap - o, "\\n");
		else if (ch == '\t')
			o += (size_t)snprintf(out + o, cap - o, "\\t");
		else if (ch == '\'' || ch == '\\')
			o += (size_t)snprintf(out + o, cap - o, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", ch);
		else
			out[o++] = (char)ch;
	}
	if (shown < n && o + 4 < cap)
		o += (size_t)snprintf(out + o, cap - o, "...");
	out[o] = '\0';
}

/* The port a check of <o> dials: health_check.port, else the origin's
 * own port, or 0 when it has none (it takes the port the client dialed).
 * That is the port of o->addr (see origin_new), which the tick reads
 * anyway, where o->co would be one more cache miss per app and tick: with
 * 65,536 apps it was a third of the health thread's time.
 */
static uint16_t check_port(const struct hc_app *ha, const struct origin *o)
{
	if (ha->app->health.port)
		return ha->app->health.port;
	return addr_sa_port((const struct sockaddr *)&o->addr);
}

static void queue_push(struct hc *hc, struct check *c)
{
	c->state = CK_QUEUED;
	c->qnext = NULL;
	if (hc->q_tail)
		hc->q_tail->qnext = c;
	else
		hc->q_head = c;
	hc->q_tail = c;
}

/* Ends <s>'s log window: one line for the transitions it only counted. */
static void shared_close(struct shared *s)
{
	char name[ADDR_STRLEN];

	if (s->held && s->dir > 0)
		log_info("origin %s is up for %u more apps sharing its health check",
			 addr_fmt_hostport(&s->addr, s->port, name), s->held);
	else if (s->held)
		log_warn("origin %s is down for %u more apps sharing its health check (last: %s)",
			 addr_fmt_hostport(&s->addr, s->port, name), s->held, s->held_why);
	s->dir = 0;
	s->logged = s->held = 0;
}

static void shared_flush(struct timer *t)
{
	shared_close(container_of(t, struct shared, flush));
}

/* Logs <c>'s app's transition <dir> that came through the shared check
 * <s>. The first one opens a window for that direction, long enough for
 * every app sharing the check to take the same result at its own tick (an
 * interval apart at most, plus a check's timeout, twice over); the first
 * SHARED_LOG_APPS transitions in it get their line, the rest one line
 * when it closes. A transition the other way closes it at once.
 */
static void shared_log(struct hc *hc, struct shared *s, const struct origin *o,
		       const struct cfg_app *app, int dir, const char *why)
{
	if (s->dir != dir) {
		uint64_t span = 2 * ((uint64_t)s->h->interval_ms + s->h->timeout_ms);

		timer_cancel(&hc->timers, &s->flush);
		shared_close(s);
		if (timer_set(&hc->timers, &s->flush, hc->now + span) == 0)
			s->dir = dir;
	}
	if (s->dir == 0 || s->logged < SHARED_LOG_APPS) {
		s->logged++;
		log_transition(o, app, dir, why);
		return;
	}
	s->held++;
	if (dir < 0)
		snprintf(s->held_why, sizeof(s->held_why), "%s", why ? why : "");
}

/* Feeds a result for <o> of <app> to its state machine and logs the
 * transition it makes, if any: through the window of <s> when the result
 * came through that shared check, else on its own line.
 */
static void count(struct hc *hc, struct shared *s, struct origin *o, const struct cfg_app *app,
		  bool ok, const char *why)
{
	int dir = record(o, app, ok, why);

	if (dir && s)
		shared_log(hc, s, o, app, dir, why);
	else if (dir)
		log_transition(o, app, dir, why);
}

/* Ends <c>: feeds the state machine unless <counted> is false (a local
 * resource problem says nothing about the origin, or the result was
 * counted already: see take_fresh), releases its slot and
 * starts the next queued check. The memory is freed at the end of the loop
 * turn, so a later event in the same epoll batch finds CK_DONE, not garbage.
 */
static void check_end(struct check *c, bool counted, bool ok, const char *why)
{
	struct hc *hc = c->ha->hc;
	struct shared *sh = c->sh;
	struct check *followers = NULL;

	if (c->sh && c->sh->leader == c) {
		c->sh->leader = NULL;
		followers = c->sh->followers;
		c->sh->followers = NULL;
		if (counted) {
			c->sh->due_at = c->due ? c->due : 1;
			c->sh->result = ++hc->results;
			c->sh->ok = ok;
			snprintf(c->sh->why, sizeof(c->sh->why), "%s", why ? why : "");
		}
	}
	c->sh = NULL;
	if (counted && sh)
		c->o->hc_result = sh->result;
	if (counted)
		count(hc, sh, c->o, c->ha->app, ok, why);
	if (c->fd != -1) {
		/* Reset rather than close gracefully: a check per origin per
		 * interval would otherwise pile up TIME_WAIT sockets here and
		 * eat the local ports the relay needs (HAProxy does the same).
		 */
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c->fd);
		c->fd = -1;
	}
	if (c->state >= CK_CONNECTING)
		hc->inflight--;
	timer_cancel(&hc->timers, &c->timer);
	c->o->hc_next = 0;
	if (c->o->hc_again_due) {
		/* Through the timer heap, not at once: starting a check here
		 * could end it here again.
		 */
		uint64_t due = c->o->hc_again_due > hc->now ? c->o->hc_again_due : hc->now + 1;

		c->o->hc_again_due = 0;
		check_schedule(c->ha, c->o, due, c->o->hc_again_plan);
	}
	c->state = CK_DONE;
	if (c->prev)
		c->prev->next = c->next;
	else
		hc->all = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->qnext = hc->dead;
	hc->dead = c;
	/* The leader's result is theirs; a resource problem skips them too. */
	while (followers) {
		struct check *f = followers;

		followers = f->fnext;
		check_end(f, counted, ok, why);
	}

	/* A queued check that fails at once ends here again: the outer call
	 * keeps draining, so the recursion stays one level deep.
	 */
	if (hc->draining)
		return;
	hc->draining = true;
	while (hc->q_head && hc->inflight < HC_MAX_INFLIGHT) {
		struct check *n = hc->q_head;

		hc->q_head = n->qnext;
		if (!hc->q_head)
			hc->q_tail = NULL;
		check_start(n);
	}
	hc->draining = false;
}

static void check_fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void resource_problem(struct check *c, const char *what, int err);

/* An error that says this host ran short (fds, buffers, memory), not that
 * the origin failed: the check is skipped, not counted, as conn.c does for
 * connections.
 */
static bool shortage(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void check_fail(struct check *c, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	check_end(c, true, false, why);
}

static int ep_set(struct check *c, int op, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = c};

	return epoll_ctl(c->ha->hc->epfd, op, c->fd, &ev) == -1 ? -errno : 0;
}

static void check_mismatch(struct check *c)
{
	char shown[HC_SHOW_MAX * 4 + 8];

	quote(shown, sizeof(shown), c->reply, c->got);
	check_fail(c, "reply mismatch: got '%s'", shown);
}

/* Reads until the reply holds expect_len bytes, then compares. */
static void check_read(struct check *c)
{
	const struct cfg_health *h = &c->ha->app->health;

	while (c->got < h->expect_len) {
		ssize_t r = recv(c->fd, c->reply + c->got, h->expect_len - c->got, 0);

		if (r > 0) {
			c->got += (size_t)r;
			continue;
		}
		if (r == 0) {
			char shown[HC_SHOW_MAX * 4 + 8];

			if (memcmp(c->reply, h->expect, c->got) != 0) {
				check_mismatch(c);
				return;
			}
			quote(shown, sizeof(shown), c->reply, c->got);
			check_fail(c, "closed by origin after %zu bytes of reply (got '%s')",
				   c->got, shown);
			return;
		}
		if (errno == EAGAIN || errno == EINTR)
			return;
		if (errno == ECONNRESET)
			check_fail(c, "connection reset by origin");
		else if (shortage(errno))
			resource_problem(c, "recv", errno);
		else
			check_fail(c, "recv: %s", strerror(errno));
		return;
	}
	if (memcmp(c->reply, h->expect, h->expect_len) != 0)
		check_mismatch(c);
	else
		check_end(c, true, true, NULL);
}

static void check_send(struct check *c)
{
	const struct cfg_health *h = &c->ha->app->health;

	while (c->sent < h->send_len) {
		ssize_t r = send(c->fd, h->send + c->sent, h->send_len - c->sent, MSG_NOSIGNAL);

		if (r >= 0) {
			c->sent += (size_t)r;
			continue;
		}
		if (errno == EAGAIN || errno == EINTR)
			return; /* EPOLLOUT is still registered */
		if (errno == ECONNRESET || errno == EPIPE)
			check_fail(c, "connection reset by origin while sending");
		else if (shortage(errno))
			resource_problem(c, "send", errno);
		else
			check_fail(c, "send: %s", strerror(errno));
		return;
	}
	if (!h->expect) {
		check_end(c, true, true, NULL);
		return;
	}
	c->state = CK_READING;
	if (ep_set(c, EPOLL_CTL_MOD, EPOLLIN) < 0) {
		check_end(c, false, false, NULL);
		return;
	}
	check_read(c); /* the reply may be there already */
}

static void check_connected(struct check *c)
{
	if (!c->ha->app->health.send) {
		check_end(c, true, true, NULL);
		return;
	}
	c->state = CK_SENDING;
	check_send(c);
}

static void check_io(struct check *c, uint32_t events)
{
	switch (c->state) {
	case CK_CONNECTING: {
		int err = 0;
		socklen_t len = sizeof(err);

		/* The only way to learn how a non-blocking connect ended. */
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
			err = errno;
		if (err && shortage(err)) {
			resource_problem(c, "connect", err);
			return;
		}
		if (err) {
			check_fail(c, "connect: %s", strerror(err));
			return;
		}
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			check_connected(c);
		return;
	}
	case CK_SENDING:
		check_send(c);
		return;
	case CK_READING:
		check_read(c);
		return;
	case CK_PENDING:
	case CK_QUEUED:
	case CK_FOLLOWING:
	case CK_DONE:
		return; /* stale event */
	}
}

static void resource_problem(struct check *c, const char *what, int err)
{
	struct hc *hc = c->ha->hc;
	char a[ADDR_STRLEN];

	if (log_ratelimit(&hc->last_resource_log, hc->now, 10000))
		log_warn(
		    "health checks: %s: %s (checks skipped, not counted; this one of origin %s "
		    "of app %s)",
		    what, strerror(err), addr_fmt_sa((const struct sockaddr *)&c->o->addr, a),
		    c->ha->app->name);
	check_end(c, false, false, NULL);
}

static void check_start(struct check *c)
{
	struct hc *hc = c->ha->hc;
	struct sockaddr_storage sa = c->o->addr;
	uint16_t port = check_port(c->ha, c->o);

	addr_sa_set_port((struct sockaddr *)&sa, port);

	c->state = CK_CONNECTING;
	hc->inflight++;
	if (timer_set(&hc->timers, &c->timer, hc->now + c->ha->app->health.timeout_ms) < 0) {
		resource_problem(c, "timer", ENOMEM);
		return;
	}
	c->timer.fn = check_timeout;
	c->fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd == -1) {
		/* EAFNOSUPPORT (IPv6 off on this host), EACCES (a policy):
		 * the origin cannot be reached, which its checks must say.
		 */
		if (shortage(errno))
			resource_problem(c, "socket", errno);
		else
			check_fail(c, "socket: %s", strerror(errno));
		return;
	}
	if (connect(c->fd, (struct sockaddr *)&sa, addr_sa_len((struct sockaddr *)&sa)) == 0) {
		/* Loopback can complete at once; still register, the send
		 * path may need EPOLLOUT.
		 */
		if (ep_set(c, EPOLL_CTL_ADD, EPOLLOUT) < 0) {
			resource_problem(c, "epoll", errno);
			return;
		}
		check_connected(c);
		return;
	}
	if (errno != EINPROGRESS) {
		int err = errno;

		if (shortage(err) || err == EADDRNOTAVAIL) /* no local port left */
			resource_problem(c, "connect", err);
		else
			check_fail(c, "connect: %s", strerror(err));
		return;
	}
	if (ep_set(c, EPOLL_CTL_ADD, EPOLLOUT) < 0)
		resource_problem(c, "epoll", errno);
}

static void check_timeout(struct timer *t)
{
	struct check *c = container_of(t, struct check, timer);
	const struct cfg_health *h = &c->ha->app->health;

	switch (c->state) {
	case CK_CONNECTING:
		check_fail(c, "connect timeout after %u ms", h->timeout_ms);
		return;
	case CK_SENDING:
		check_fail(c, "timeout after %u ms sending the check (%zu of %zu bytes sent)",
			   h->timeout_ms, c->sent, h->send_len);
		return;
	case CK_READING:
		if (memcmp(c->reply, h->expect, c->got) != 0) {
			check_mismatch(c);
			return;
		}
		check_fail(c, "timeout after %u ms waiting for the reply (%zu of %zu bytes)",
			   h->timeout_ms, c->got, h->expect_len);
		return;
	case CK_PENDING:
	case CK_QUEUED:
	case CK_FOLLOWING:
	case CK_DONE:
		return;
	}
}

static int shared_cmp(const void *a, const void *b)
{
	const struct shared *x = a, *y = b;
	const struct cfg_health *p = x->h, *q = y->h;
	int r = memcmp(&x->addr, &y->addr, sizeof(x->addr));

	if (r)
		return r;
	if (x->port != y->port)
		return x->port < y->port ? -1 : 1;
	if (p == q)
		return 0;
	if (p->timeout_ms != q->timeout_ms)
		return p->timeout_ms < q->timeout_ms ? -1 : 1;
	if (p->interval_ms != q->interval_ms)
		return p->interval_ms < q->interval_ms ? -1 : 1;
	if (p->send_len != q->send_len)
		return p->send_len < q->send_len ? -1 : 1;
	if (p->expect_len != q->expect_len)
		return p->expect_len < q->expect_len ? -1 : 1;
	if (p->send_len && (r = memcmp(p->send, q->send, p->send_len)) != 0)
		return r;
	if (p->expect_len && (r = memcmp(p->expect, q->expect, p->expect_len)) != 0)
		return r;
	return (p->send == NULL) - (q->send == NULL);
}

/* An entry no check leads or follows, whose result (if any) is two
 * intervals old: no app's next check would take it (see check_due), so
 * dropping it changes nothing but memory.
 */
static bool shared_stale(const struct hc *hc, const struct shared *s)
{
	if (s->leader || s->followers || timer_armed(&s->flush))
		return false;
	return s->due_at == 0 ||
	       (hc->now >= s->due_at && hc->now - s->due_at >= 2 * (uint64_t)s->h->interval_ms);
}

struct sweep {
	const struct hc *hc;
	struct shared **v;
	size_t n;
};

static void sweep_visit(const void *node, VISIT which, void *arg)
{
	struct sweep *sw = arg;
	struct shared *s = *(struct shared *const *)node;

	if ((which == postorder || which == leaf) && shared_stale(sw->hc, s))
		sw->v[sw->n++] = s;
}

/* Drops the stale entries, then sets the next sweep at twice what is left
 * (SHARED_SLACK at least). Out of memory for the list, it only moves the
 * next sweep on.
 */
static void shared_sweep(struct hc *hc)
{
	struct sweep sw = {.hc = hc, .v = malloc(hc->n_shared * sizeof(*sw.v))};

	if (sw.v) {
		twalk_r(hc->shared, sweep_visit, &sw);
		for (size_t i = 0; i < sw.n; i++) {
			tdelete(sw.v[i], &hc->shared, shared_cmp);
			free(sw.v[i]);
		}
		__atomic_store_n(&hc->n_shared, hc->n_shared - sw.n, __ATOMIC_RELAXED);
		free(sw.v);
	}
	hc->sweep_at = 2 * hc->n_shared > SHARED_SLACK ? 2 * hc->n_shared : SHARED_SLACK;
}

size_t hc_shared_entries(const struct hc *hc)
{
	return __atomic_load_n(&hc->n_shared, __ATOMIC_RELAXED);
}

uint64_t hc_wakeups(const struct hc *hc)
{
	return __atomic_load_n(&hc->wakeups, __ATOMIC_RELAXED);
}

/* The shared check of <o> on <port> with <ha>'s settings, made on first
 * use; NULL when out of memory (the check then runs on its own).
 */
static struct shared *shared_of(struct hc *hc, const struct hc_app *ha, const struct origin *o,
				uint16_t port)
{
	struct shared key = {.h = &ha->app->health, .port = port}, *s, **found;
	uint16_t own;

	addr_from_sa((const struct sockaddr *)&o->addr, &key.addr, &own);
	found = tfind(&key, &hc->shared, shared_cmp);
	if (found)
		return *found;
	if (hc->n_shared >= hc->sweep_at)
		shared_sweep(hc);
	s = malloc(sizeof(*s));
	if (!s)
		return NULL;
	*s = key;
	timer_init(&s->flush, shared_flush);
	found = tsearch(s, &hc->shared, shared_cmp);
	if (!found) {
		free(s);
		return NULL;
	}
	__atomic_store_n(&hc->n_shared, hc->n_shared + 1, __ATOMIC_RELAXED);
	return s;
}

/* A check of <o> for <ha> planned at <planned> takes <s>'s last result
 * as it is when that result's check was due less than an interval before:
 * counts it and returns true. An app's own checks are an interval apart,
 * so they never take each other's, while other apps' take it.
 */
static bool take_fresh(struct hc *hc, struct shared *s, const struct hc_app *ha, struct origin *o,
		       uint64_t planned)
{
	/* Never the result <o> counted already: its own check's, when a
	 * new set moved its offset in the interval earlier.
	 */
	if (!s->due_at || o->hc_result == s->result ||
	    planned >= s->due_at + ha->app->health.interval_ms)
		return false;
	o->hc_result = s->result;
	count(hc, s, o, ha->app, s->ok, s->ok ? NULL : s->why);
	return true;
}

/* A check that is due, with its shared entry <s> (NULL: out of memory,
 * it runs on its own): follows a running one, takes a fresh result, or
 * runs (or queues) for all.
 */
static void check_run(struct check *c, struct shared *s)
{
	struct hc *hc = c->ha->hc;

	if (s && s->leader) {
		c->state = CK_FOLLOWING;
		c->sh = s;
		c->fnext = s->followers;
		s->followers = c;
		return;
	}
	if (s && take_fresh(hc, s, c->ha, c->o, c->due)) {
		check_end(c, false, false, NULL);
		return;
	}
	if (s) {
		s->leader = c;
		c->sh = s;
	}
	if (hc->inflight >= HC_MAX_INFLIGHT)
		queue_push(hc, c);
	else
		check_start(c);
}

static void check_due(struct timer *t)
{
	struct check *c = container_of(t, struct check, timer);

	check_run(c, shared_of(c->ha->hc, c->ha, c->o, check_port(c->ha, c->o)));
}

/* Schedules one check of <o> at <due>, planned for <planned> (see
 * app_tick). An origin has one check at a time: while its previous one is
 * still pending or running (hc_next != 0), the new one is deferred, and
 * check_end schedules it at <due>, or at once if that has passed. A check
 * of the last origins of an interval, which may time out after the next
 * tick, would otherwise be skipped every other interval, and an origin
 * that stopped answering would take twice as long to go down.
 */
static void check_schedule(struct hc_app *ha, struct origin *o, uint64_t due, uint64_t planned)
{
	struct hc *hc = ha->hc;
	struct shared *sh = NULL;
	uint16_t port;
	struct check *c;

	if (o->hc_next != 0) {
		o->hc_again_due = due ? due : 1;
		o->hc_again_plan = planned;
		return;
	}
	port = check_port(ha, o);
	if (port == 0) {
		if (!ha->warned_port)
			log_err(
			    "app %s: origin %s: no port to health-check (set health_check.port)",
			    ha->app->name, o->name);
		ha->warned_port = true;
		return;
	}
	if (due <= hc->now) {
		/* Due now with a fresh shared result (another app's check of
		 * the same origin): take it here, without a check to make and
		 * free. Most ticks of many apps behind one origin end here.
		 */
		sh = shared_of(hc, ha, o, port);
		if (sh && !sh->leader && take_fresh(hc, sh, ha, o, planned))
			return;
	}
	c = calloc(1, sizeof(*c) + ha->app->health.expect_len);
	if (!c)
		return; /* try again next interval */
	c->ha = ha;
	c->o = o;
	c->due = planned;
	c->fd = -1;
	c->state = CK_PENDING;
	timer_init(&c->timer, check_due);
	if (due > hc->now && timer_set(&hc->timers, &c->timer, due) < 0) {
		free(c);
		return;
	}
	origin_ref(o);
	o->hc_next = due ? due : 1;
	c->next = hc->all;
	if (hc->all)
		hc->all->prev = c;
	hc->all = c;
	/* Due now (a tick's first origin): no round trip through the heap. */
	if (due <= hc->now)
		check_run(c, sh);
}

static uint64_t interval_of(const struct hc_app *ha)
{
	return ha->app->health.interval_ms ? ha->app->health.interval_ms : 1;
}

/* Every interval: the app's origins as they are now, one check each, at
 * evenly spaced offsets across the interval. Sets the app's next due time.
 */
static void app_tick(struct hc_app *ha)
{
	struct hc *hc = ha->hc;
	uint64_t interval = interval_of(ha);
	struct origin_set *s = app_origins_get(ha->ao);
	uint64_t next = ha->due + interval;

	/* The timers run from now; the plan, which sharing compares, from
	 * the tick's due time, so that a late tick does not bring an app's
	 * next check within an interval of its last.
	 */
	for (size_t i = 0; i < s->n; i++)
		check_schedule(ha, s->v[i], hc->now + i * interval / s->n,
			       ha->due + i * interval / s->n);
	origin_set_unref(s);
	/* Keep the cadence, unless the thread fell behind by a whole interval. */
	if (next <= hc->now)
		next = hc->now + interval;
	ha->due = next;
}

/* Appends <ha> to <l>, no earlier than the app before it: only a thread
 * that fell an interval behind (see app_tick) would otherwise break the
 * order, and then a tick comes late by less than an interval.
 */
static void lane_push(struct lane *l, struct hc_app *ha)
{
	ha->lnext = NULL;
	if (l->tail) {
		if (ha->due < l->tail->due)
			ha->due = l->tail->due;
		l->tail->lnext = ha;
	} else {
		l->head = ha;
	}
	l->tail = ha;
}

static void lane_arm(struct lane *l)
{
	if (l->head && timer_set(&l->hc->timers, &l->timer, l->head->due) < 0)
		log_err("health checks every %" PRIu64 " ms stopped: out of memory", l->interval);
}

/* Ticks every app at the head of the lane that is due (or due within
 * <early>), each once: it goes to the back with a due time an interval
 * later (or, when the thread fell behind, an interval from now).
 */
static void lane_run(struct timer *t)
{
	struct lane *l = container_of(t, struct lane, timer);
	uint64_t until = l->hc->now + l->early;
	const struct hc_app *last = l->tail; /* a pass ticks an app once */

	while (l->head && l->head->due <= until) {
		struct hc_app *ha = l->head;

		l->head = ha->lnext;
		if (!l->head)
			l->tail = NULL;
		else if (l->head->due <= until) {
			/* The next app's settings and origin set, read cold */
			__builtin_prefetch(&l->head->app->health);
			__builtin_prefetch(l->head->ao, 1);
		}
		app_tick(ha);
		lane_push(l, ha);
		if (ha == last)
			break;
	}
	lane_arm(l);
}

static int app_cmp(const void *pa, const void *pb)
{
	const struct hc_app *a = pa, *b = pb;
	uint64_t x = interval_of(a), y = interval_of(b);

	if (x != y)
		return x < y ? -1 : 1;
	return a->due < b->due ? -1 : a->due > b->due;
}

/* Puts the apps into lanes, one per interval, each in due order, and arms
 * the lanes.
 */
static int lanes_build(struct hc *hc)
{
	size_t n = 0;
	struct lane *l = NULL;

	qsort(hc->apps, hc->n_apps, sizeof(*hc->apps), app_cmp);
	for (size_t i = 0; i < hc->n_apps; i++)
		n += i == 0 || interval_of(&hc->apps[i]) != interval_of(&hc->apps[i - 1]);
	hc->lanes = calloc(n, sizeof(*hc->lanes));
	if (!hc->lanes)
		return -ENOMEM;
	for (size_t i = 0; i < hc->n_apps; i++) {
		struct hc_app *ha = &hc->apps[i];

		if (!l || l->interval != interval_of(ha)) {
			l = &hc->lanes[hc->n_lanes++];
			l->hc = hc;
			l->interval = interval_of(ha);
			l->early = l->interval / LANE_BATCH;
			if (l->early > LANE_EARLY_MAX)
				l->early = LANE_EARLY_MAX;
			timer_init(&l->timer, lane_run);
		}
		lane_push(l, ha);
	}
	for (size_t i = 0; i < hc->n_lanes; i++)
		if (timer_set(&hc->timers, &hc->lanes[i].timer, hc->lanes[i].head->due) < 0)
			return -ENOMEM;
	return 0;
}

static void check_free(struct check *c)
{
	if (c->fd != -1)
		close(c->fd);
	origin_unref(c->o);
	free(c);
}

static void free_dead(struct hc *hc)
{
	while (hc->dead) {
		struct check *c = hc->dead;

		hc->dead = c->qnext;
		check_free(c);
	}
}

static void *hc_main(void *arg)
{
	struct hc *hc = arg;
	struct epoll_event evs[HC_EVENTS];
	int timeout;

	hc->now = mono_ms();
	timeout = timer_run(&hc->timers, hc->now);
	while (!__atomic_load_n(&hc->stop, __ATOMIC_ACQUIRE)) {
		int n = epoll_wait(hc->epfd, evs, HC_EVENTS, timeout);

		if (n == -1 && errno != EINTR) {
			log_err("health checks: epoll_wait: %s", strerror(errno));
			break;
		}
		hc->now = mono_ms();
		__atomic_store_n(&hc->wakeups, hc->wakeups + 1, __ATOMIC_RELAXED);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == hc) {
				uint64_t v;

				while (read(hc->wakefd, &v, sizeof(v)) > 0)
					;
				continue;
			}
			check_io(evs[i].data.ptr, evs[i].events);
		}
		timeout = timer_run(&hc->timers, hc->now);
		free_dead(hc);
	}
	return NULL;
}

static void close_visit(const void *node, VISIT which, void *arg)
{
	(void)arg;
	if (which == postorder || which == leaf)
		shared_close(*(struct shared *const *)node);
}

static void hc_free(struct hc *hc)
{
	twalk_r(hc->shared, close_visit, NULL); /* the lines still held */
	free_dead(hc);
	while (hc->all) {
		struct check *c = hc->all;

		hc->all = c->next;
		c->o->hc_next = c->o->hc_again_due = 0; /* a later hc (reload) starts afresh */
		check_free(c);
	}
	tdestroy(hc->shared, free);
	timer_heap_deinit(&hc->timers);
	if (hc->wakefd != -1)
		close(hc->wakefd);
	if (hc->epfd != -1)
		close(hc->epfd);
	free(hc->lanes);
	free(hc->apps);
	free(hc);
}

int hc_start(struct hc **out, struct app_origins *apps, size_t n)
{
	struct hc *hc;
	size_t n_on = 0;
	uint64_t phase;
	int r;

	*out = NULL;
	for (size_t i = 0; i < n; i++)
		n_on += apps[i].app->health.on;
	if (n_on == 0)
		return 0;

	hc = calloc(1, sizeof(*hc));
	if (!hc)
		return -ENOMEM;
	hc->epfd = hc->wakefd = -1;
	timer_heap_init(&hc->timers);
	hc->apps = calloc(n_on, sizeof(*hc->apps));
	if (!hc->apps) {
		r = -ENOMEM;
		goto fail;
	}
	hc->now = mono_ms();
	hc->rng = hc->now * 0x9e3779b97f4a7c15ULL + (uint64_t)getpid();
	if (!hc->rng)
		hc->rng = 1;
	hc->sweep_at = SHARED_SLACK;
	phase = hc_rand(hc);
	for (size_t i = 0; i < n; i++) {
		struct hc_app *ha = &hc->apps[hc->n_apps];
		uint64_t interval = apps[i].app->health.interval_ms;

		if (!apps[i].app->health.on)
			continue;
		ha->hc = hc;
		ha->ao = &apps[i];
		ha->app = apps[i].app;
		/* Apps start spread evenly over their interval, in config
		 * order from a random point, so their origins' checks
		 * interleave instead of coinciding. In that order a lane
		 * visits the apps' settings and origin sets as they lie in
		 * memory: with 65,536 apps, random starting points made each
		 * tick wait for memory (docs/benchmarks.md, "Many apps").
		 */
		if (interval)
			ha->due =
			    hc->now + (phase % interval + hc->n_apps * interval / n_on) % interval;
		else
			ha->due = hc->now;
		hc->n_apps++;
	}
	r = lanes_build(hc);
	if (r < 0)
		goto fail;

	hc->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (hc->epfd == -1) {
		r = -errno;
		goto fail;
	}
	hc->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (hc->wakefd == -1) {
		r = -errno;
		goto fail;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = hc};
	if (epoll_ctl(hc->epfd, EPOLL_CTL_ADD, hc->wakefd, &ev) == -1) {
		r = -errno;
		goto fail;
	}
	r = pthread_create(&hc->thread, NULL, hc_main, hc);
	if (r) {
		r = -r;
		goto fail;
	}
	pthread_setname_np(hc->thread, "health");
	*out = hc;
	return 0;
fail:
	hc_free(hc);
	return r;
}

void hc_stop(struct hc *hc)
{
	uint64_t one = 1;

	if (!hc)
		return;
	__atomic_store_n(&hc->stop, 1, __ATOMIC_RELEASE);
	if (write(hc->wakefd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_err("health checks: cannot wake: %s", strerror(errno));
	pthread_join(hc->thread, NULL);
	hc_free(hc);
}

/* worker.h - one epoll loop per thread: listeners, timers, pipe pool.
 *
 * Each worker owns its own IP_TRANSPARENT listening sockets (SO_REUSEPORT:
 * the kernel spreads new connections across workers by a hash of their
 * addresses, no accept lock), its connections, its timer heap and its pool
 * of spare pipes. An idle worker also takes connections from the queue of a
 * busy one (worker_share_listeners). Nothing on the data path is shared
 * between workers except the immutable configuration snapshot, so the hot
 * path takes no locks. The exception is balancing: a worker that takes a
 * connection from a busy peer's listener while it already holds clearly
 * more connections than that peer hands it back, through the peer's locked
 * handoff queue (balance_target, worker_handoff in worker.c).
 */
#ifndef PRISM_WORKER_H
#define PRISM_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "addr.h"
#include "timer.h"

struct app_origins;
struct cfg;
struct conn;
struct guard;
struct lb_worker;

/* What an epoll registration points at. Connections embed two (client and
 * origin side) and are found from them with container_of.
 */
enum io_kind {
	IO_LISTEN = 1,
	IO_WAKE,
	IO_CLIENT,
	IO_ORIGIN,
};

/* 8 bytes: the flags are bits, so a connection (two of these) stays in
 * its malloc size class (docs/architecture.md, "The relay").
 */
struct io {
	int fd;
	uint8_t kind;	/* enum io_kind */
	bool rd : 1;	/* readable: edge seen, EAGAIN not yet hit */
	bool wr : 1;	/* writable, likewise */
	bool rdhup : 1; /* the peer's FIN (or an error) was reported */
	bool urg : 1;	/* urgent data reported (EPOLLPRI): reads stop at its mark */
	bool mute : 1;	/* not registered for reading: see io_mute */
	bool err : 1;	/* an error was reported (EPOLLERR): see reset_after_eof */
};

/* Capacity requested for relay pipes (F_SETPIPE_SZ); see docs/benchmarks.md. */
#define PIPE_SIZE (256 * 1024)

/* Per-worker buffer for the first, usually small, reads of a direction. */
#define WORKER_SCRATCH (16 * 1024)

/* The worker's own timers (accept pause, shutdown grace). Each connection
 * reserves heap room for its timer and these (conn_accept), so arming one
 * never fails: an accept pause that could not arm its timer when memory ran
 * out would never end.
 */
#define WORKER_TIMERS 2

struct pipe_pair {
	int rd, wr;
};

/* An accepted connection on its way to another worker: the socket and its
 * two addresses.
 */
struct handoff {
	int fd;
	union addr_sa client, edge;
};

#define HANDOFF_MAX 256 /* queued per worker; past that the acceptor keeps it */

/* Connections handed over to a worker by its peers. <len> is also read
 * without the lock, as part of the worker's load.
 */
struct handoff_queue {
	pthread_mutex_t lock;
	struct handoff v[HANDOFF_MAX];
	uint32_t head, len;
	bool closed; /* the worker takes no more: it is stopping or gone */
};

struct worker {
	int id;
	pthread_t thread;
	int epfd;
	struct io wake;	  /* eventfd: main thread asks the worker to stop */
	struct io lis[2]; /* IPv4 and IPv6 listeners; fd -1 when absent */
	/* Held by any worker reading lis[].fd to add or delete it in its epoll,
	 * and by this one to close them: a peer never passes epoll_ctl a
	 * number that has since been closed and handed to another file.
	 */
	pthread_mutex_t lis_lock;
	struct worker *peers; /* all workers (this one included), or NULL */
	int n_peers;
	int next_peer;		     /* the peer balance_target compares with next */
	struct cfg *cfg;	     /* one reference held */
	struct app_origins *origins; /* per app, borrowed from main */
	struct guard *guard;	     /* process-wide limits; NULL when none are set */
	struct lb_worker *lbw;	     /* per app: this worker's balancer state */
	uint64_t now;		     /* ms, CLOCK_MONOTONIC, refreshed once per loop turn */
	char *scratch;		     /* WORKER_SCRATCH bytes, see copy_small() in conn.c */
	struct timer_heap timers;    /* room for every conn's timer and WORKER_TIMERS more */

	struct pipe_pair *pool; /* spare empty pipes */
	int pool_n;

	struct conn *conns; /* live connections, doubly linked */
	uint64_t n_conns;   /* written by this worker only, read by its peers */
	struct conn *dead;  /* finalized in this loop turn; freed after it */
	struct handoff_queue hq;

	struct timer accept_timer; /* resumes accepting after fd/memory exhaustion */
	bool accept_paused;	   /* atomic: peers read it (balance_target) */
	/* /dev/null, held so that the connection whose accept took the last
	 * fd still gets its origin's socket (origin_try gives it up, and
	 * accepting pauses until it is back); -1 while given up.
	 */
	int reserve_fd;
	uint64_t last_exhaust_log;
	uint64_t last_resume_log; /* "cannot poll its listeners again" */
	uint64_t last_edge_log;	  /* "cannot learn the address dialed": the same */

	int stop; /* atomic: 1 = graceful, 2 = now */
	bool stopping;
	struct timer grace_timer;
	bool exit;
};

/* Creates the worker's epoll set and listening sockets and takes a reference
 * to <cfg>. Returns 0 or -errno with a message logged.
 */
int worker_init(struct worker *w, int id, struct cfg *cfg, struct app_origins *origins);

/* Makes each of the <n> workers <ws> poll its own listeners and, to accept
 * from them when it is idle, the others'; call after every worker_init,
 * before worker_start. Returns 0 or -errno with a message logged.
 */
int worker_share_listeners(struct worker *ws, int n);

/* Starts the thread. Returns 0 or -errno. */
int worker_start(struct worker *w);

/* Asks the worker to stop: <now> false lets open connections finish within
 * shutdown_grace, true closes them at once. Safe from any thread.
 */
void worker_stop(struct worker *w, bool now);

/* Joins the thread. */
void worker_wait(struct worker *w);

/* Joins the thread and frees everything the worker holds. Join every
 * worker's thread before freeing any worker: a running peer may still
 * hand connections over to it.
 */
void worker_join(struct worker *w);

/* Pipe pool: returns 0 and a pipe, or -errno. */
int worker_pipe_get(struct worker *w, struct pipe_pair *p);
/* Returns an empty pipe to the pool (or closes it if the pool is full). */
void worker_pipe_put(struct worker *w, struct pipe_pair *p);
/* Out of fds: closes the pool's spare pipes, two fds each, which a
 * connection needs more. Returns whether it closed any (then the call that
 * failed is worth another try).
 */
bool worker_pool_release(struct worker *w);

/* Stops accepting for a moment after fd or memory exhaustion; open
 * connections keep being served. Logs at most once a second.
 */
void worker_pause_accept(struct worker *w, int err);

#endif

/* loadgen.h - what the files of bench/loadgen share: the options, the
 * per-thread worker with its connection slots and histograms, the server's
 * per-fd echo state, the globals between main and the threads, and the
 * functions used across files.
 *
 * loadgen.c    the tool's documentation (modes, flags, output: its header
 *              comment), the client side (rate, latency, hold), the worker
 *              threads, the report, main
 * lg_util.c    clock, PRNG, histograms, sockaddr helpers, argument parsing
 * lg_serve.c   the serve side: echo origin and the naive any-port server
 */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* limits and sizes */
#define MAX_LISTEN	 16
#define MAX_THREADS	 64
#define MAX_SIZE	 (1 << 20)
#define SCRATCH_SIZE	 65536
#define EV_BATCH	 256
#define SCAN_NS		 (50 * 1000000ull)
#define MAX_ERR_LOG	 5
#define DEFAULT_LIFETIME 3600.0

enum mode { MODE_SERVE, MODE_RATE, MODE_LATENCY, MODE_HOLD };

struct prefix {
	int family;
	int plen;
	uint8_t addr[16];
};

struct opts {
	enum mode mode;
	struct sockaddr_storage listen[MAX_LISTEN];
	int nlisten;
	struct prefix target;
	bool have_target;
	struct prefix addr; /* naive serve: bind address */
	bool have_addr;
	unsigned port_lo, port_hi;
	bool have_ports;
	int threads;
	int concurrency;
	int conns;
	int size;
	double duration;
	bool have_duration;
	double timeout;
	uint64_t seed;
	bool rst;
};

/* Log-linear histogram of microseconds: exact below 128 us, then 64
 * sub-buckets per power of two (< 1.6% error) up to 2^30 us. */
#define HIST_SUB     64
#define HIST_EXACT   (2 * HIST_SUB)
#define HIST_MAX_US  (1ull << 30)
#define HIST_BUCKETS (HIST_EXACT + 23 * HIST_SUB)

struct hist {
	uint64_t n;
	uint64_t b[HIST_BUCKETS];
};

enum cstate { C_IDLE, C_CONNECTING, C_SENDING, C_RECEIVING, C_READY, C_HELD };

/* A client connection slot; slots are reused, never allocated per connection. */
struct cconn {
	int fd;
	uint8_t state;
	uint32_t sent, rcvd;
	uint64_t t_start; /* connect() called */
	uint64_t t_call;  /* how long that call took (ns) */
	uint64_t t_txn;	  /* current request started */
	uint64_t deadline;
	struct sockaddr_storage dst;
};

enum err_kind { E_REFUSED, E_TIMEOUT, E_RESET, E_EOF, E_NOADDR, E_ABORTED, E_OTHER, E_NKINDS };

struct worker {
	int idx;
	pthread_t tid;
	int epfd;
	int wake_fd;
	uint64_t rng;
	char *payload;
	char *scratch;
	/* client */
	struct cconn *c;
	int nc;
	int started; /* hold: slots started so far */
	bool measuring;
	bool opened; /* hold: every slot held or failed */
	uint64_t t_begin, t_end, t_stop;
	uint64_t setup_deadline, hold_deadline;
	uint64_t done, errors, held, open_failed;
	uint64_t err_kind[E_NKINDS];
	int logged;
	struct hist h_connect, h_lat;
	/* serve */
	uint64_t accepted;
	int lfd[MAX_LISTEN];
	int nlfd;
};

/* Pending echo bytes of a server connection whose send buffer was full.
 * Indexed by fd, so a thread needs no lookup; fds are process-unique. */
struct sconn {
	char *pend;
	uint32_t off, len;
};

/* lg_util.c */
extern struct opts g_opt; /* filled by parse_args(), read-only afterwards */

uint64_t now_ns(void);
uint64_t splitmix64(uint64_t x);
uint64_t rng_next(uint64_t *s);
uint32_t rng_below(uint64_t *s, uint32_t n);
void hist_add(struct hist *h, uint64_t us);
void hist_merge(struct hist *dst, const struct hist *src);
/* Prints "name": {"p50": .., "p99": .., "p999": ..} on stdout. */
void json_pct(const char *name, const struct hist *h);
socklen_t ss_len(const struct sockaddr_storage *ss);
void ss_fill(struct sockaddr_storage *ss, int family, const uint8_t *a, unsigned port);
const char *ss_str(const struct sockaddr_storage *ss, char *buf, size_t len);
/* Fills g_opt. Returns 0, or the exit code (2) after printing the problem. */
int parse_args(int argc, char **argv);

/* lg_serve.c */
extern struct sconn *g_sconn; /* serve: indexed by fd, g_sconn_max entries */
extern int g_sconn_max;	      /* RLIMIT_NOFILE (capped), set by main */
extern int g_nshared;	      /* naive serve: listening sockets */
extern int g_spare_fd;	      /* serve: reserve for shed_one() */
extern double g_setup_ms;     /* naive serve: socket() of the first port to ready */

/* Creates all listeners and registers them; prints the ready line. */
int serve_setup(void);
void serve_loop(struct worker *w);

/* loadgen.c */
extern atomic_int g_stop;	 /* 1: the threads leave their loops */
extern struct worker *g_workers; /* g_opt.threads of them */

#endif

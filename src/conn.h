/* conn.h - one proxied TCP connection: connect, relay, finalize.
 *
 * Life of a connection (see docs/architecture.md):
 *   accepted (worker) -> route lookup -> CONNECTING (non-blocking connect to
 *   the origin, connect timer) -> [PROXY header sent] -> RELAYING (two
 *   halves, client->origin and origin->client, each splicing through a pipe
 *   borrowed from the worker's pool only while bytes are in flight; idle
 *   timer) -> [LINGER: a peer's reset waits until the other peer has
 *   acknowledged every byte prism sent it] -> conn_finalize(reason): the
 *   single place a connection ends, which closes both sockets (RST where the
 *   reason calls for one), writes the access-log line and defers the free to
 *   the end of the loop turn.
 */
#ifndef PRISM_CONN_H
#define PRISM_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "cfg.h"
#include "pp.h"
#include "timer.h"
#include "worker.h"

struct cfg_app;
struct origin;
struct origin_set;

/* Termination reasons: one enum for the access log and (later) metrics. */
enum conn_reason {
	CR_NONE = 0,
	CR_CLIENT_CLOSED,
	CR_ORIGIN_CLOSED,
	CR_CLIENT_RESET,
	CR_ORIGIN_RESET,
	CR_ORIGIN_REFUSED,
	CR_ORIGIN_UNREACHABLE,
	CR_CONNECT_TIMEOUT,
	CR_IDLE_TIMEOUT,
	CR_SHUTDOWN,
	CR_NO_APP,
	CR_RESOURCE,
	CR_NO_ORIGIN,
	CR_SOURCE_LIMIT,
	CR_RATE_LIMIT,
	CR_SHED,
	CR_FIRST_BYTE_TIMEOUT,
	CR__COUNT,
};

const char *conn_reason_str(enum conn_reason r);

enum conn_state {
	CS_CONNECTING = 0,
	CS_FIRST_BYTE, /* first_byte_timeout: waiting for the client to talk */
	CS_RELAYING,
	CS_LINGER, /* a reset to pass on waits until its bytes are acknowledged */
	CS_DEAD,
};

/* One direction of the relay. Bytes read from the source wait in a pipe
 * (or, when no pipe can be had, a heap buffer) until the destination takes
 * them; while anything waits there, the source is not read: that is the
 * backpressure, bounded by one pipe (PIPE_SIZE) per direction.
 */
struct half {
	struct pipe_pair pipe; /* rd -1 when none held */
	char *buf;	       /* read/write fallback, NULL when none */
	uint32_t buf_off;
	uint32_t pending; /* bytes read from src, not yet written to dst */
	uint64_t bytes;	  /* bytes written to dst */
	bool bulk;	  /* a stream: splice, not the scratch-buffer copy */
	bool eof;	  /* src sent FIN */
	bool shut;	  /* FIN forwarded to dst */
	bool reset;	  /* src reset: its EOF is passed on as a reset (relay_half) */
	bool gone;	  /* dst reset: dropped, src read and discarded (half_dst_gone) */
};

struct conn {
	struct io cli, org;
	struct worker *w;
	const struct cfg_app *app;
	uint32_t app_idx;
	enum conn_state state;
	enum conn_reason first_close; /* whose FIN was passed on first */
	struct half c2o, o2c;
	struct timer timer; /* connect timeout, then idle timeout */
	uint64_t start, last_active;
	uint8_t pp_len, pp_off; /* PROXY header: its length, bytes sent (see relay) */
	union addr_sa client, edge, origin;
	struct conn *prev, *next; /* worker's live list */
	struct conn *next_dead;

	struct origin *o;		     /* the current attempt's origin (reference held) */
	struct origin_set *set;		     /* while connecting: the set <tried> indexes */
	uint16_t tried[CFG_RETRIES_MAX + 1]; /* set indices of the attempts so far */
	uint8_t attempts;		     /* connect attempts so far */
	enum conn_reason last_fail;	     /* reason of the last failed attempt */
	bool guarded;			     /* counted by the guard: release at the end */
	bool guard_tracked;		     /* ... and against its source (guard_admit) */
	bool ack_held;	    /* origin socket in delayed-ACK mode, see origin_connect */
	uint8_t end_reason; /* CS_LINGER: the reset it passes on (conn_pass_reset) */
	uint32_t unacked;   /* CS_LINGER: bytes the peer had yet to acknowledge */
};

/* Takes ownership of the accepted socket <fd> with peer <client> and
 * original destination <edge>, looks up the app and starts connecting to an
 * origin. Never fails visibly: on error the client is reset and the reason
 * logged. Returns -EMFILE/-ENFILE/-ENOMEM/-ENOBUFS when the worker should
 * pause accepting, else 0.
 */
int conn_accept(struct worker *w, int fd, const struct sockaddr *client,
		const struct sockaddr *edge);

/* Handles epoll <events> on <io>, one of <c>'s two sockets. */
void conn_io(struct conn *c, struct io *io, uint32_t events);

/* Ends <c> with <reason>: the one exit of every connection. Idempotent. */
void conn_finalize(struct conn *c, enum conn_reason reason);

/* Frees a finalized connection (called by the worker after the loop turn,
 * so events later in the same epoll batch never touch freed memory).
 */
void conn_free(struct conn *c);

#endif

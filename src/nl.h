/* nl.h - one netlink socket to the kernel (libmnl), as the network setup
 * (routes: NETLINK_ROUTE) and the nftables queries (NETLINK_NETFILTER) use
 * it: bound, with a bounded wait for every reply, and requests that wait
 * for their ack.
 */
#ifndef PRISM_NL_H
#define PRISM_NL_H

#include <stddef.h>
#include <sys/types.h>

#include <libmnl/libmnl.h>

/* MNL_SOCKET_BUFFER_SIZE depends on the page size (a VLA); the kernel sends
 * dump batches of up to 32 KiB when the reader offers that much, as iproute2
 * does.
 */
#define NL_BUFSZ 32768

struct nl {
	struct mnl_socket *sock;
	unsigned int portid;
	unsigned int seq;
};

/* Opens and binds a socket of netlink family <bus>. Returns 0, or -errno
 * with a message in <*err>.
 */
int nl_open(struct nl *nl, int bus, char **err);
void nl_close(struct nl *nl);
/* One read from the kernel, EINTR retried: mnl_socket_recvfrom's result. */
ssize_t nl_recv(struct nl *nl, char *buf, size_t len);
/* The same without waiting: -1 with EAGAIN when nothing is queued. */
ssize_t nl_recv_nowait(struct nl *nl, char *buf, size_t len);
/* Sends <nlh> with NLM_F_ACK and waits for its ack. Returns 0 or -errno;
 * the kernel's extended-ack sentence, if any, is copied to <why>.
 */
int nl_request(struct nl *nl, struct nlmsghdr *nlh, char *why, size_t why_len);
/* Sends <nlh> (its sequence number set here) and hands each message of
 * the answer to <cb> until its end: the ack of a request with NLM_F_ACK (a
 * get of one object), or the NLMSG_DONE of a dump. <cb> may be NULL when
 * whether the object exists is all that counts. Returns 0, the kernel's
 * -errno (-ENOENT: no such object), or -errno as <cb> set it when it
 * returned MNL_CB_ERROR. After a failure the rest of the answer may still
 * be queued: nl_drain the socket (or close it) before another request.
 */
int nl_talk(struct nl *nl, struct nlmsghdr *nlh, mnl_cb_t cb, void *data);
/* Reads and drops whatever the kernel has queued on <nl>: the rest of an
 * answer that an exchange which failed left behind, before a socket that
 * is kept open is used again. The kernel answers a request (a get, a
 * transaction) while sending it, so nothing more comes after. Returns 0,
 * or -errno when the socket is broken (close it). ENOBUFS (an answer the
 * kernel could not queue) is not: the socket goes on.
 */
int nl_drain(struct nl *nl);

#endif

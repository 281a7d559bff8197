/* nl.c - one netlink socket to the kernel (libmnl): see nl.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include "netsetup.h"
#include "nl.h"

int nl_open(struct nl *nl, int bus, char **err)
{
	struct timeval tmo = {.tv_sec = 10};
	int one = 1;

	nl->sock = mnl_socket_open2(bus, SOCK_CLOEXEC);
	if (!nl->sock)
		return net_set_err(err, -errno, "cannot open a netlink socket: %s",
				   strerror(errno));
	if (mnl_socket_bind(nl->sock, 0, MNL_SOCKET_AUTOPID) == -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return net_set_err(err, -e, "cannot bind a netlink socket: %s", strerror(e));
	}
	/* Bounds every wait for the kernel: an ack or a dump batch that
	 * never comes turns into EAGAIN instead of a hang.
	 */
	if (setsockopt(mnl_socket_get_fd(nl->sock), SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo)) ==
	    -1) {
		int e = errno;

		mnl_socket_close(nl->sock);
		nl->sock = NULL;
		return net_set_err(err, -e, "cannot set a netlink socket timeout: %s", strerror(e));
	}
	/* Extended acks carry the kernel's sentence for an error ("Nexthop
	 * device is not up"); best effort, older kernels just give errno.
	 */
	mnl_socket_setsockopt(nl->sock, NETLINK_EXT_ACK, &one, sizeof(one));
	nl->portid = mnl_socket_get_portid(nl->sock);
	nl->seq = (unsigned int)time(NULL);
	return 0;
}

void nl_close(struct nl *nl)
{
	if (nl->sock)
		mnl_socket_close(nl->sock);
	nl->sock = NULL;
}

/* One read from the kernel. EINTR is retried: a socket with SO_RCVTIMEO
 * returns it after the process was stopped and continued (Ctrl-Z, fg) even
 * with every signal blocked, and that must not fail a `net down`.
 */
ssize_t nl_recv(struct nl *nl, char *buf, size_t len)
{
	ssize_t r;

	do
		r = mnl_socket_recvfrom(nl->sock, buf, len);
	while (r == -1 && errno == EINTR);
	return r;
}

static int extack_attr(const struct nlattr *attr, void *data)
{
	const char **msg = data;

	if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
	    mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0)
		*msg = mnl_attr_get_str(attr);
	return MNL_CB_OK;
}

int nl_request(struct nl *nl, struct nlmsghdr *nlh, char *why, size_t why_len)
{
	char buf[NL_BUFSZ];
	ssize_t r;
	int n;

	why[0] = '\0';
	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) == -1)
		return -errno;
	for (int tries = 0; tries < 16; tries++) {
		r = nl_recv(nl, buf, sizeof(buf));
		if (r == -1)
			return -errno;
		n = (int)r;
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; mnl_nlmsg_ok(m, n);
		     m = mnl_nlmsg_next(m, &n)) {
			struct nlmsgerr *e;
			const char *msg = NULL;
			size_t off;

			if (m->nlmsg_seq != nl->seq || m->nlmsg_type != NLMSG_ERROR)
				continue;
			if (m->nlmsg_len < mnl_nlmsg_size(sizeof(*e)))
				return -EBADMSG;
			e = mnl_nlmsg_get_payload(m);
			if (e->error == 0)
				return 0;
			if (m->nlmsg_flags & NLM_F_ACK_TLVS) {
				/* The TLVs follow the echoed request: just
				 * its header when capped, all of it if not.
				 */
				off = sizeof(*e);
				if (!(m->nlmsg_flags & NLM_F_CAPPED))
					off += e->msg.nlmsg_len - NLMSG_HDRLEN;
				if (mnl_nlmsg_size(off) <= m->nlmsg_len)
					mnl_attr_parse(m, (unsigned int)off, extack_attr, &msg);
				if (msg)
					snprintf(why, why_len, "%s", msg);
			}
			return e->error;
		}
	}
	return -EPROTO;
}

/* The end of a dump: libmnl's own handler stops there whatever it says,
 * but a dump the kernel could not finish (the set or table went away
 * between two of its parts) ends with an NLMSG_DONE that carries the error.
 */
static int dump_done(const struct nlmsghdr *nlh, void *data)
{
	int err;

	(void)data;
	if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(err)) {
		memcpy(&err, mnl_nlmsg_get_payload(nlh), sizeof(err));
		if (err < 0) {
			errno = -err;
			return MNL_CB_ERROR;
		}
	}
	return MNL_CB_STOP;
}

/* An ack ends the answer, an error fails it: libmnl's own handler, which
 * a table of control handlers (nl_talk's) replaces.
 */
static int ack_or_error(const struct nlmsghdr *nlh, void *data)
{
	const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);

	(void)data;
	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*e))) {
		errno = EBADMSG;
		return MNL_CB_ERROR;
	}
	if (e->error == 0)
		return MNL_CB_STOP;
	errno = e->error < 0 ? -e->error : e->error;
	return MNL_CB_ERROR;
}

int nl_talk(struct nl *nl, struct nlmsghdr *nlh, mnl_cb_t cb, void *data)
{
	/* The others (NOOP, OVERRUN) are skipped, as libmnl does. */
	mnl_cb_t ctl[NLMSG_MIN_TYPE] = {[NLMSG_ERROR] = ack_or_error, [NLMSG_DONE] = dump_done};
	char buf[NL_BUFSZ];
	ssize_t r;
	int ret;

	nlh->nlmsg_seq = ++nl->seq;
	if (mnl_socket_sendto(nl->sock, nlh, nlh->nlmsg_len) == -1)
		return -errno;
	/* The answer ends with the ack or NLMSG_DONE (MNL_CB_STOP); the
	 * batch count and the socket's receive timeout only guard against a
	 * kernel that never says so.
	 */
	for (int batches = 0; batches < 1000000; batches++) {
		r = nl_recv(nl, buf, sizeof(buf));
		if (r == -1)
			return -errno;
		errno = 0;
		ret =
		    mnl_cb_run2(buf, (size_t)r, nl->seq, nl->portid, cb, data, ctl, NLMSG_MIN_TYPE);
		if (ret == MNL_CB_STOP)
			return 0;
		if (ret == MNL_CB_ERROR)
			return errno ? -errno : -EPROTO;
	}
	return -EPROTO;
}

/* With recvmsg(2), as libmnl reads: the fault-injection tests count and
 * fail netlink reads there (tests/fault/failsys.c).
 */
ssize_t nl_recv_nowait(struct nl *nl, char *buf, size_t len)
{
	struct sockaddr_nl addr;
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg = {
	    .msg_name = &addr, .msg_namelen = sizeof(addr), .msg_iov = &iov, .msg_iovlen = 1};
	ssize_t r;

	do
		r = recvmsg(mnl_socket_get_fd(nl->sock), &msg, MSG_DONTWAIT);
	while (r == -1 && errno == EINTR);
	return r;
}

int nl_drain(struct nl *nl)
{
	char buf[NL_BUFSZ];

	/* Bounded like nl_talk, against a kernel that never stops. */
	for (int reads = 0; reads < 1000000; reads++) {
		if (nl_recv_nowait(nl, buf, sizeof(buf)) >= 0 || errno == ENOBUFS)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
	}
	return -EPROTO;
}

/* failsys.c - LD_PRELOAD library for the fault-injection tests
 * (tests/integration/test_faults.py): prism's socket calls made to fail.
 * With FAILSYS_AT=N in the environment, the Nth call of one of the
 * functions below (counted from the first accept4() that returns a
 * connection, every thread together) fails with the errno the kernel gives
 * when that call runs out of something, without being made, and says so on
 * stderr; every other call goes to glibc. With FAILSYS_START set, counting
 * starts at once instead, for the calls of starting and stopping. With
 * FAILSYS_COUNT set, the count is printed to stderr at exit, so a test
 * knows how many points there are to fail. With FAILSYS_SPAN_MS=T, every
 * call of the same function in the T ms after the Nth fails too, as in a
 * shortage that lasts. With FAILSYS_ERRNO=E, the failed call gives errno E
 * instead (a failure that is no shortage: EAFNOSUPPORT from socket() on a
 * host without IPv6). With FAILSYS_FN=name, only that function's calls
 * count; recvmsg() (netlink: routes, nftables) counts only when named so.
 * pthread_create() fails too
 * (EAGAIN), for the threads prism starts. close() and epoll_wait() are
 * left alone: a failed close leaks nothing a caller could free, and
 * epoll_wait fails only on a bad argument.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static long fail_at = -1, count, span_ms;
static int errno_override;  /* FAILSYS_ERRNO, or 0 */
static const char *only_fn; /* FAILSYS_FN, or NULL */
static int active;	    /* atomic: 0 until the first accepted connection */
static const char *span_fn; /* the failed call's function, while its span lasts */
static struct timespec span_end;

__attribute__((constructor)) static void failsys_init(void)
{
	const char *s = getenv("FAILSYS_AT");

	fail_at = s ? atol(s) : -1;
	if ((s = getenv("FAILSYS_SPAN_MS")))
		span_ms = atol(s);
	if ((s = getenv("FAILSYS_ERRNO")))
		errno_override = atoi(s);
	only_fn = getenv("FAILSYS_FN");
	if (getenv("FAILSYS_START"))
		__atomic_store_n(&active, 1, __ATOMIC_RELEASE);
}

__attribute__((destructor)) static void failsys_fini(void)
{
	if (getenv("FAILSYS_COUNT"))
		fprintf(stderr, "failsys: %ld calls\n", __atomic_load_n(&count, __ATOMIC_RELAXED));
}

/* Whether this call of <fn> fails (then with errno <err>, and a line on
 * stderr that says which call it was).
 */
static int fail_call(const char *fn, int err)
{
	const char *sfn = __atomic_load_n(&span_fn, __ATOMIC_ACQUIRE);
	long n;

	if (!__atomic_load_n(&active, __ATOMIC_ACQUIRE) || (only_fn && strcmp(fn, only_fn)))
		return 0;
	if (errno_override)
		err = errno_override;
	n = __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	if (sfn == fn) {
		struct timespec now;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec < span_end.tv_sec ||
		    (now.tv_sec == span_end.tv_sec && now.tv_nsec < span_end.tv_nsec)) {
			fprintf(stderr, "failsys: call %ld, %s, fails with errno %d (span)\n", n,
				fn, err);
			errno = err;
			return 1;
		}
	}
	if (n != fail_at)
		return 0;
	fprintf(stderr, "failsys: call %ld, %s, fails with errno %d\n", fail_at, fn, err);
	if (span_ms > 0) {
		clock_gettime(CLOCK_MONOTONIC, &span_end);
		span_end.tv_sec += span_ms / 1000;
		span_end.tv_nsec += (span_ms % 1000) * 1000000;
		if (span_end.tv_nsec >= 1000000000) {
			span_end.tv_sec++;
			span_end.tv_nsec -= 1000000000;
		}
		__atomic_store_n(&span_fn, fn, __ATOMIC_RELEASE);
	}
	errno = err;
	return 1;
}

#define fail_now(err) fail_call(__func__, err)

/* real_<name>: glibc's <name>, the function this library stands in for. */
#define REAL(name)                                                                                 \
	static __typeof__(name) *real_##name;                                                      \
	if (!real_##name)                                                                          \
		real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	REAL(accept4);
	int r;

	if (fail_now(EMFILE))
		return -1;
	r = real_accept4(fd, addr, len, flags);
	if (r >= 0)
		__atomic_store_n(&active, 1, __ATOMIC_RELEASE);
	return r;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	REAL(getsockname);
	return fail_now(ENOBUFS) ? -1 : real_getsockname(fd, addr, len);
}

int socket(int domain, int type, int protocol)
{
	REAL(socket);
	return fail_now(EMFILE) ? -1 : real_socket(domain, type, protocol);
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	REAL(setsockopt);
	return fail_now(ENOMEM) ? -1 : real_setsockopt(fd, level, name, val, len);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	REAL(getsockopt);
	return fail_now(ENOBUFS) ? -1 : real_getsockopt(fd, level, name, val, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	REAL(connect);
	return fail_now(ENOBUFS) ? -1 : real_connect(fd, addr, len);
}

/* EPOLL_CTL_DEL frees: it cannot run out of anything. */
int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	REAL(epoll_ctl);
	return op != EPOLL_CTL_DEL && fail_now(ENOMEM) ? -1 : real_epoll_ctl(epfd, op, fd, ev);
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	REAL(recv);
	return fail_now(ENOMEM) ? -1 : real_recv(fd, buf, n, flags);
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	REAL(send);
	return fail_now(ENOBUFS) ? -1 : real_send(fd, buf, n, flags);
}

ssize_t splice(int in, loff_t *off_in, int out, loff_t *off_out, size_t n, unsigned flags)
{
	REAL(splice);
	return fail_now(ENOMEM) ? -1 : real_splice(in, off_in, out, off_out, n, flags);
}

int pipe2(int fds[2], int flags)
{
	REAL(pipe2);
	return fail_now(EMFILE) ? -1 : real_pipe2(fds, flags);
}

/* Not a socket call, but one that runs out of something (threads, memory
 * for a stack) at start: glibc returns EAGAIN then, and sets no errno.
 * What it leaves in *t is undefined (glibc's failed clone leaves the handle
 * of a thread that never ran): a value no caller may use.
 */
int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	REAL(pthread_create);
	if (fail_now(EAGAIN)) {
		*t = (pthread_t)0xdead0000;
		return EAGAIN;
	}
	return real_pthread_create(t, attr, fn, arg);
}

int shutdown(int fd, int how)
{
	REAL(shutdown);
	return fail_now(ENOTCONN) ? -1 : real_shutdown(fd, how);
}

/* Netlink's reads (libmnl's mnl_socket_recvfrom): a dump or an ack lost to
 * an overrun (ENOBUFS), or EINTR after a stop. Only with FAILSYS_FN=recvmsg,
 * so the other tests' counts stay what they were.
 */
ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	REAL(recvmsg);
	return only_fn && fail_now(ENOBUFS) ? -1 : real_recvmsg(fd, msg, flags);
}

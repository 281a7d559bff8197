/* failmalloc.c - LD_PRELOAD library for the fault-injection tests
 * (tests/integration/test_faults.py): with FAILMALLOC_AT=N in the
 * environment, the Nth call of malloc, calloc, realloc, aligned_alloc or
 * posix_memalign in the process (counted from the library's constructor,
 * every thread together) fails with ENOMEM; every other call goes to glibc's
 * allocator. FAILMALLOC_SPAN=K makes calls N to N+K-1 fail instead, a run
 * of failures such as a short shortage of memory gives. With
 * FAILMALLOC_COUNT set, the count is printed to stderr at exit, so a test
 * knows how many points there are to fail. With FAILMALLOC_ARM=accept,
 * counting starts when the first accept4() returns a connection, so N
 * picks an allocation of the data path whatever startup allocated.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t a, size_t b);
void *__libc_realloc(void *p, size_t n);
void *__libc_memalign(size_t align, size_t n);

static long fail_at = -1, span = 1, count;
static int active; /* atomic: 0 before the constructor or the arming accept */

__attribute__((constructor)) static void failmalloc_init(void)
{
	const char *s = getenv("FAILMALLOC_AT"), *arm = getenv("FAILMALLOC_ARM");

	fail_at = s ? atol(s) : -1;
	if ((s = getenv("FAILMALLOC_SPAN")))
		span = atol(s);
	if (!arm || strcmp(arm, "accept") != 0)
		__atomic_store_n(&active, 1, __ATOMIC_RELEASE);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	static int (*real)(int, struct sockaddr *, socklen_t *, int);
	int r;

	if (!real)
		real =
		    (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
	r = real(fd, addr, len, flags);
	if (r >= 0)
		__atomic_store_n(&active, 1, __ATOMIC_RELEASE);
	return r;
}

__attribute__((destructor)) static void failmalloc_fini(void)
{
	if (getenv("FAILMALLOC_COUNT"))
		fprintf(stderr, "failmalloc: %ld allocations\n",
			__atomic_load_n(&count, __ATOMIC_RELAXED));
}

static int fail_now(void)
{
	long n;

	if (!__atomic_load_n(&active, __ATOMIC_ACQUIRE))
		return 0;
	n = __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
	if (fail_at < 0 || n < fail_at || n >= fail_at + span)
		return 0;
	errno = ENOMEM;
	return 1;
}

void *malloc(size_t n)
{
	return fail_now() ? NULL : __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	return fail_now() ? NULL : __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	return fail_now() ? NULL : __libc_realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
	return fail_now() ? NULL : __libc_memalign(align, n);
}

int posix_memalign(void **p, size_t align, size_t n)
{
	if (fail_now())
		return ENOMEM;
	*p = __libc_memalign(align, n);
	return *p ? 0 : ENOMEM;
}

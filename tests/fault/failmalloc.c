/* failmalloc.c - LD_PRELOAD library for the fault-injection tests
 * (tests/integration/test_faults.py): with FAILMALLOC_AT=N in the
 * environment, the Nth call of malloc, calloc or realloc in the process
 * (counted from the library's constructor, every thread together) returns
 * NULL with errno ENOMEM; every other call goes to glibc's allocator. With
 * FAILMALLOC_COUNT set, the count is printed to stderr at exit, so a test
 * knows how many points there are to fail.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t a, size_t b);
void *__libc_realloc(void *p, size_t n);

static long fail_at = -1, count;
static int active;

__attribute__((constructor)) static void failmalloc_init(void)
{
	const char *s = getenv("FAILMALLOC_AT");

	fail_at = s ? atol(s) : -1;
	active = 1;
}

__attribute__((destructor)) static void failmalloc_fini(void)
{
	if (getenv("FAILMALLOC_COUNT"))
		fprintf(stderr, "failmalloc: %ld allocations\n",
			__atomic_load_n(&count, __ATOMIC_RELAXED));
}

static int fail_now(void)
{
	if (!active)
		return 0;
	if (__atomic_add_fetch(&count, 1, __ATOMIC_RELAXED) != fail_at)
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

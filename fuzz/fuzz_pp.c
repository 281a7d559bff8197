/* fuzz_pp.c - libFuzzer target for the PROXY protocol decoder.
 *
 * Feeds the input to pp_decode() from an exact-size heap copy (so ASan sees
 * any overread), checks the return value contract, that every shorter
 * prefix of an accepted header asks for more bytes, and that a decoded TCP
 * header re-encodes (v1 and v2) and decodes back to the same endpoints.
 * Build: clang -fsanitize=fuzzer,address,undefined (see the Makefile).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "pp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ssize_t decode_copy(const uint8_t *data, size_t size, struct sockaddr_storage *s,
			   struct sockaddr_storage *d)
{
	char *copy = malloc(size ? size : 1);
	ssize_t r;

	if (!copy)
		abort();
	memcpy(copy, data, size);
	r = pp_decode(copy, size, s, d);
	free(copy);
	return r;
}

static void same_endpoint(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	struct in6_addr x, y;
	uint16_t px, py;

	addr_from_sa((const struct sockaddr *)a, &x, &px);
	addr_from_sa((const struct sockaddr *)b, &y, &py);
	if (memcmp(&x, &y, sizeof(x)) != 0 || px != py)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_storage s, d, s2, d2;
	enum pp_version vs[] = {PP_V1, PP_V2};
	ssize_t r = decode_copy(data, size, &s, &d);
	size_t k, i;

	if (r != 0 && r != -EINVAL && (r < 0 || (size_t)r > size))
		abort();
	if (r <= 0)
		return 0;
	/* Bounded: a header is at most 16 + 65535 bytes, and libFuzzer's
	 * -max_len keeps this cheap in practice.
	 */
	for (k = 0; k < (size_t)r; k++)
		if (decode_copy(data, k, NULL, NULL) != 0)
			abort();
	if (s.ss_family != d.ss_family)
		abort();
	if (s.ss_family == AF_UNSPEC)
		return 0;
	for (i = 0; i < 2; i++) {
		char buf[PP_MAX_LEN];
		ssize_t n = pp_encode(vs[i], (struct sockaddr *)&s, (struct sockaddr *)&d, buf,
				      sizeof(buf));

		if (n <= 0)
			abort();
		if (decode_copy((const uint8_t *)buf, (size_t)n, &s2, &d2) != n)
			abort();
		same_endpoint(&s, &s2);
		same_endpoint(&d, &d2);
	}
	return 0;
}

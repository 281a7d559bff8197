/* test_pp.c - unit tests for pp.c: golden v1/v2 bytes for IPv4 and IPv6,
 * mixed families, round trips, -ENOSPC/-EAFNOSUPPORT, and the decoder on
 * every truncation of valid and invalid input. Each truncation is copied
 * into a malloc of exactly that length so ASan catches any overread.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "addr.h"
#include "pp.h"

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"
/* The longest v1 line the spec allows, CRLF included. */
#define PP_V1_LONGEST 107

static struct sockaddr_storage mk(const char *hostport)
{
	struct sockaddr_storage ss;
	const char *why = NULL;
	bool has_port;

	if (addr_parse_hostport(hostport, &ss, &has_port, &why) != 0)
		fail_msg("bad test address %s: %s", hostport, why);
	return ss;
}

/* A v4-mapped AF_INET6 socket address, as a dual-stack socket reports. */
static struct sockaddr_storage mk_mapped(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	char tmp[64];

	memset(&ss, 0, sizeof(ss));
	snprintf(tmp, sizeof(tmp), "::ffff:%s", ip);
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, tmp, &sin6->sin6_addr), 1);
	return ss;
}

/* pp_decode on an exact-size heap copy of <buf>[0..<len>). */
static ssize_t decode_exact(const void *buf, size_t len, struct sockaddr_storage *src,
			    struct sockaddr_storage *dst)
{
	char *copy = malloc(len ? len : 1);
	ssize_t r;

	assert_non_null(copy);
	memcpy(copy, buf, len);
	r = pp_decode(copy, len, src, dst);
	free(copy);
	return r;
}

/* Checks that <sa> is the same endpoint as <want> in the 128-bit space. */
static void assert_same_endpoint(const struct sockaddr_storage *sa,
				 const struct sockaddr_storage *want)
{
	char b1[ADDR_STRLEN], b2[ADDR_STRLEN];

	addr_fmt_sa((const struct sockaddr *)sa, b1);
	addr_fmt_sa((const struct sockaddr *)want, b2);
	assert_string_equal(b1, b2);
}

/* Every proper prefix of a valid header needs more bytes; the whole of it
 * (and with payload after it) decodes to <hlen> and the expected addresses.
 */
static void check_all_truncations(const void *hdr, size_t hlen, const char *want_src,
				  const char *want_dst)
{
	struct sockaddr_storage s, d;
	char withdata[PP_MAX_LEN + 300];
	char b[ADDR_STRLEN];
	size_t k;

	for (k = 0; k < hlen; k++) {
		ssize_t r = decode_exact(hdr, k, &s, &d);

		if (r != 0)
			fail_msg("truncation at %zu of %zu: got %zd, want 0", k, hlen, r);
	}
	assert_int_equal(decode_exact(hdr, hlen, &s, &d), hlen);
	if (want_src) {
		assert_string_equal(addr_fmt_sa((struct sockaddr *)&s, b), want_src);
		assert_string_equal(addr_fmt_sa((struct sockaddr *)&d, b), want_dst);
	} else {
		assert_int_equal(s.ss_family, AF_UNSPEC);
		assert_int_equal(d.ss_family, AF_UNSPEC);
	}
	assert_true(hlen + 5 <= sizeof(withdata));
	memcpy(withdata, hdr, hlen);
	memcpy(withdata + hlen, "hello", 5);
	assert_int_equal(decode_exact(withdata, hlen + 5, NULL, NULL), hlen);
}

/* Encodes with <v>, compares to the golden bytes, checks -ENOSPC one byte
 * short (buffer untouched), then decodes every truncation.
 */
static void check_golden(enum pp_version v, const struct sockaddr_storage *src,
			 const struct sockaddr_storage *dst, const void *want, size_t want_len,
			 const char *want_src, const char *want_dst)
{
	char buf[PP_MAX_LEN], guard[PP_MAX_LEN];
	ssize_t n;

	n = pp_encode(v, (const struct sockaddr *)src, (const struct sockaddr *)dst, buf,
		      sizeof(buf));
	assert_int_equal(n, want_len);
	assert_memory_equal(buf, want, want_len);

	n = pp_encode(v, (const struct sockaddr *)src, (const struct sockaddr *)dst, buf, want_len);
	assert_int_equal(n, want_len);
	memset(buf, 'x', sizeof(buf));
	memset(guard, 'x', sizeof(guard));
	n = pp_encode(v, (const struct sockaddr *)src, (const struct sockaddr *)dst, buf,
		      want_len - 1);
	assert_int_equal(n, -ENOSPC);
	assert_memory_equal(buf, guard, sizeof(buf));
	assert_int_equal(
	    pp_encode(v, (const struct sockaddr *)src, (const struct sockaddr *)dst, buf, 0),
	    -ENOSPC);

	check_all_truncations(want, want_len, want_src, want_dst);
}

static void test_v1_golden_v4(void **state)
{
	struct sockaddr_storage s = mk("203.0.113.2:40000"), d = mk("192.0.2.5:8123");
	static const char want[] = "PROXY TCP4 203.0.113.2 192.0.2.5 40000 8123\r\n";

	(void)state;
	check_golden(PP_V1, &s, &d, want, sizeof(want) - 1, "203.0.113.2:40000", "192.0.2.5:8123");
}

static void test_v1_golden_v6(void **state)
{
	struct sockaddr_storage s = mk("[2001:db8:c::2]:40000"), d = mk("[2001:db8::5]:8123");
	static const char want[] = "PROXY TCP6 2001:db8:c::2 2001:db8::5 40000 8123\r\n";

	(void)state;
	check_golden(PP_V1, &s, &d, want, sizeof(want) - 1, "[2001:db8:c::2]:40000",
		     "[2001:db8::5]:8123");
}

static void test_v2_golden_v4(void **state)
{
	struct sockaddr_storage s = mk("203.0.113.2:40000"), d = mk("192.0.2.5:8123");
	static const unsigned char want[] = V2SIG "\x21\x11\x00\x0c"
						  "\xcb\x00\x71\x02"
						  "\xc0\x00\x02\x05"
						  "\x9c\x40\x1f\xbb";

	(void)state;
	assert_int_equal(sizeof(want) - 1, 28);
	check_golden(PP_V2, &s, &d, want, sizeof(want) - 1, "203.0.113.2:40000", "192.0.2.5:8123");
}

static void test_v2_golden_v6(void **state)
{
	struct sockaddr_storage s = mk("[2001:db8:c::2]:40000"), d = mk("[2001:db8::5]:8123");
	static const unsigned char want[] =
	    V2SIG "\x21\x21\x00\x24"
		  "\x20\x01\x0d\xb8\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
		  "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05"
		  "\x9c\x40\x1f\xbb";

	(void)state;
	assert_int_equal(sizeof(want) - 1, 52);
	check_golden(PP_V2, &s, &d, want, sizeof(want) - 1, "[2001:db8:c::2]:40000",
		     "[2001:db8::5]:8123");
}

/* Both ends v4-mapped AF_INET6: written as plain IPv4. */
static void test_mapped_is_v4(void **state)
{
	struct sockaddr_storage s = mk_mapped("203.0.113.2", 40000);
	struct sockaddr_storage d = mk_mapped("192.0.2.5", 8123);
	static const char want1[] = "PROXY TCP4 203.0.113.2 192.0.2.5 40000 8123\r\n";
	static const unsigned char want2[] = V2SIG "\x21\x11\x00\x0c"
						   "\xcb\x00\x71\x02"
						   "\xc0\x00\x02\x05"
						   "\x9c\x40\x1f\xbb";

	(void)state;
	check_golden(PP_V1, &s, &d, want1, sizeof(want1) - 1, "203.0.113.2:40000",
		     "192.0.2.5:8123");
	check_golden(PP_V2, &s, &d, want2, sizeof(want2) - 1, "203.0.113.2:40000",
		     "192.0.2.5:8123");
	/* One mapped, one AF_INET: still IPv4. */
	s = mk("203.0.113.2:40000");
	check_golden(PP_V1, &s, &d, want1, sizeof(want1) - 1, "203.0.113.2:40000",
		     "192.0.2.5:8123");
}

/* Mixed families: both written as IPv6, the IPv4 end v4-mapped. */
static void test_mixed_families(void **state)
{
	struct sockaddr_storage s = mk("203.0.113.2:40000"), d = mk("[2001:db8::5]:8123");
	static const char want1[] = "PROXY TCP6 ::ffff:203.0.113.2 2001:db8::5 40000 8123\r\n";
	static const unsigned char want2[] =
	    V2SIG "\x21\x21\x00\x24"
		  "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xcb\x00\x71\x02"
		  "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05"
		  "\x9c\x40\x1f\xbb";

	(void)state;
	check_golden(PP_V1, &s, &d, want1, sizeof(want1) - 1, "203.0.113.2:40000",
		     "[2001:db8::5]:8123");
	check_golden(PP_V2, &s, &d, want2, sizeof(want2) - 1, "203.0.113.2:40000",
		     "[2001:db8::5]:8123");
}

static void test_encode_errors(void **state)
{
	struct sockaddr_storage s = mk("203.0.113.2:40000"), d = mk("192.0.2.5:8123");
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	struct sockaddr_storage unspec = {.ss_family = AF_UNSPEC};
	char buf[PP_MAX_LEN];

	(void)state;
	assert_int_equal(
	    pp_encode(PP_V1, (struct sockaddr *)&un, (struct sockaddr *)&d, buf, sizeof(buf)),
	    -EAFNOSUPPORT);
	assert_int_equal(
	    pp_encode(PP_V2, (struct sockaddr *)&s, (struct sockaddr *)&unspec, buf, sizeof(buf)),
	    -EAFNOSUPPORT);
	assert_int_equal(
	    pp_encode(PP_OFF, (struct sockaddr *)&s, (struct sockaddr *)&d, buf, sizeof(buf)), 0);
	assert_int_equal(pp_encode((enum pp_version)7, (struct sockaddr *)&s, (struct sockaddr *)&d,
				   buf, sizeof(buf)),
			 -EINVAL);
}

/* The longest headers fit PP_MAX_LEN exactly as documented. */
static void test_encode_longest(void **state)
{
	struct sockaddr_storage s = mk("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
	struct sockaddr_storage d = mk("[eeee:eeee:eeee:eeee:eeee:eeee:eeee:eeee]:65534");
	char buf[PP_MAX_LEN];

	(void)state;
	assert_int_equal(
	    pp_encode(PP_V1, (struct sockaddr *)&s, (struct sockaddr *)&d, buf, sizeof(buf)), 104);
	assert_int_equal(
	    pp_encode(PP_V2, (struct sockaddr *)&s, (struct sockaddr *)&d, buf, sizeof(buf)), 52);
	check_all_truncations(buf, 52, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
			      "[eeee:eeee:eeee:eeee:eeee:eeee:eeee:eeee]:65534");
}

static void test_decode_unknown_local(void **state)
{
	static const char unk[] = "PROXY UNKNOWN\r\n";
	/* UNKNOWN with the (ignored) rest of the line. */
	static const char unk_long[] =
	    "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
	char longest[PP_V1_LONGEST + 1];
	static const unsigned char local[] = V2SIG "\x20\x00\x00\x00";
	/* LOCAL carrying an address block: the block is skipped. */
	static const unsigned char local_addr[] = V2SIG "\x20\x11\x00\x0c"
							"\xcb\x00\x71\x02\xc0\x00\x02\x05"
							"\x9c\x40\x1f\xbb";
	static const unsigned char unspec[] = V2SIG "\x21\x00\x00\x03"
						    "abc";

	(void)state;
	check_all_truncations(unk, sizeof(unk) - 1, NULL, NULL);
	check_all_truncations(unk_long, sizeof(unk_long) - 1, NULL, NULL);
	memset(longest, 'x', sizeof(longest));
	memcpy(longest, "PROXY UNKNOWN ", 14);
	memcpy(longest + PP_V1_LONGEST - 2, "\r\n", 2);
	check_all_truncations(longest, PP_V1_LONGEST, NULL, NULL);
	check_all_truncations(local, sizeof(local) - 1, NULL, NULL);
	check_all_truncations(local_addr, sizeof(local_addr) - 1, NULL, NULL);
	check_all_truncations(unspec, sizeof(unspec) - 1, NULL, NULL);
}

static void test_decode_v2_tlv(void **state)
{
	/* TCP4 with a 3-byte TLV (PP2_TYPE_NOOP) after the addresses. */
	static const unsigned char hdr[] = V2SIG "\x21\x11\x00\x0f"
						 "\xcb\x00\x71\x02\xc0\x00\x02\x05"
						 "\x9c\x40\x1f\xbb"
						 "\x04\x00\x00";

	(void)state;
	check_all_truncations(hdr, sizeof(hdr) - 1, "203.0.113.2:40000", "192.0.2.5:8123");
}

static void test_decode_v1_forms(void **state)
{
	static const char zero_ports[] = "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n";
	static const char v6_mapped[] = "PROXY TCP6 ::ffff:203.0.113.2 ::1 1 2\r\n";

	(void)state;
	check_all_truncations(zero_ports, sizeof(zero_ports) - 1, "0.0.0.0:0",
			      "255.255.255.255:65535");
	check_all_truncations(v6_mapped, sizeof(v6_mapped) - 1, "203.0.113.2:1", "[::1]:2");
}

/* Invalid input: -EINVAL at full length, and every truncation is either 0
 * (still possibly valid) or -EINVAL, never anything else; once -EINVAL, it
 * stays -EINVAL for longer prefixes.
 */
static void check_invalid(const void *buf, size_t len)
{
	bool bad = false;
	size_t k;

	for (k = 0; k <= len; k++) {
		ssize_t r = decode_exact(buf, k, NULL, NULL);

		if (r != 0 && r != -EINVAL)
			fail_msg("invalid input, prefix %zu of %zu: got %zd", k, len, r);
		if (bad && r != -EINVAL)
			fail_msg("prefix %zu: %zd after -EINVAL at a shorter prefix", k, r);
		bad = r == -EINVAL;
	}
	if (!bad)
		fail_msg("invalid input of %zu bytes not refused: \"%.*s\"", len, (int)len,
			 (const char *)buf);
}

#define INVALID(lit) check_invalid(lit, sizeof(lit) - 1)

static void test_decode_garbage(void **state)
{
	char big[300];

	(void)state;
	INVALID("GET / HTTP/1.1\r\n\r\n");
	INVALID("\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
	INVALID("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
	INVALID("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP4\r\n");
	INVALID("PROXY TCP4 \r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n");
	INVALID("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX");
	INVALID("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP4 300.2.3.4 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 01\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n");
	INVALID("PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n");
	INVALID("PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n");
	INVALID("PROXY TCP6 2001:db8::1 2001:db8:::2 1 2\r\n");
	INVALID("PROXY TCP6 2001:db8::1%eth0 2001:db8::2 1 2\r\n");
	/* Found by fuzz_pp: inet_pton() stops at the NUL. */
	INVALID("PROXY TCP4 203.0.113.2\0\0 192.0.2.5 40000 8061\r\n");
	INVALID("PROXY TCP6 2001:db8::1\0 2001:db8::2 1 2\r\n");
	INVALID("PROXY UNKNOWNX\r\n");
	INVALID("PROXY UNKNOWN\rX");
	INVALID("PROXY UNKNOWN \n\r\n");
	INVALID("PROXY \r\n");
	INVALID("PROXY\r\n");
	INVALID("P\r\n");
	/* v2: version, command, family, short address block, signature. */
	INVALID(V2SIG "\x11\x11\x00\x0c"
		      "123456789012");
	INVALID(V2SIG "\x22\x11\x00\x0c"
		      "123456789012");
	INVALID(V2SIG "\x21\x31\x00\xd8");
	INVALID(V2SIG "\x21\x12\x00\x0c"
		      "123456789012");
	INVALID(V2SIG "\x21\x11\x00\x0b"
		      "12345678901");
	INVALID(V2SIG "\x21\x21\x00\x23");
	INVALID("\r\n\r\n\0\r\nQUIT\r\x21\x11\x00\x0c");
	INVALID("\r\n\r\n\0\0");

	/* No CRLF within 107 bytes. */
	memset(big, 'x', sizeof(big));
	memcpy(big, "PROXY UNKNOWN ", 14);
	check_invalid(big, sizeof(big));
	/* A CRLF ending at byte 108: one too many. */
	memcpy(big + PP_V1_LONGEST - 1, "\r\n", 2);
	check_invalid(big, PP_V1_LONGEST + 1);
}

/* Deterministic pseudo-random endpoints: v4, v6 and v4-mapped mixes. */
static uint32_t rnd_state = 12345;

static uint32_t rnd(void)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return rnd_state >> 8;
}

static struct sockaddr_storage rnd_sa(void)
{
	struct sockaddr_storage ss;
	int kind = (int)(rnd() % 3);
	size_t i;

	memset(&ss, 0, sizeof(ss));
	if (kind == 0) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = rnd() ^ (rnd() << 16);
		sin->sin_port = (uint16_t)rnd();
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		for (i = 0; i < 16; i++)
			sin6->sin6_addr.s6_addr[i] = (rnd() % 4) ? 0 : (uint8_t)rnd();
		if (kind == 2) {
			sin6->sin6_addr.s6_addr[10] = 0xff;
			sin6->sin6_addr.s6_addr[11] = 0xff;
			memset(sin6->sin6_addr.s6_addr, 0, 10);
		}
		sin6->sin6_port = (uint16_t)rnd();
	}
	return ss;
}

static void test_round_trip(void **state)
{
	enum pp_version vs[] = {PP_V1, PP_V2};
	int i;
	size_t j;

	(void)state;
	for (i = 0; i < 2000; i++) {
		struct sockaddr_storage s = rnd_sa(), d = rnd_sa(), s2, d2;
		char sb[ADDR_STRLEN], db[ADDR_STRLEN];

		addr_fmt_sa((struct sockaddr *)&s, sb);
		addr_fmt_sa((struct sockaddr *)&d, db);

		for (j = 0; j < 2; j++) {
			char buf[PP_MAX_LEN];
			ssize_t n = pp_encode(vs[j], (struct sockaddr *)&s, (struct sockaddr *)&d,
					      buf, sizeof(buf));

			assert_true(n > 0);
			assert_int_equal(decode_exact(buf, (size_t)n, &s2, &d2), n);
			assert_same_endpoint(&s2, &s);
			assert_same_endpoint(&d2, &d);
			if (i % 50 == 0)
				check_all_truncations(buf, (size_t)n, sb, db);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_v1_golden_v4),	 cmocka_unit_test(test_v1_golden_v6),
	    cmocka_unit_test(test_v2_golden_v4),	 cmocka_unit_test(test_v2_golden_v6),
	    cmocka_unit_test(test_mapped_is_v4),	 cmocka_unit_test(test_mixed_families),
	    cmocka_unit_test(test_encode_errors),	 cmocka_unit_test(test_encode_longest),
	    cmocka_unit_test(test_decode_unknown_local), cmocka_unit_test(test_decode_v2_tlv),
	    cmocka_unit_test(test_decode_v1_forms),	 cmocka_unit_test(test_decode_garbage),
	    cmocka_unit_test(test_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_addr.c - unit tests for addr.c: prefix and host:port parsing (good
 * and bad input), formatting, and the v4-mapped normalization.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "addr.h"

/* Parses <s> as a prefix, expecting success, and checks its canonical form
 * and 128-bit length.
 */
static void check_prefix(const char *s, const char *want, unsigned int want_len)
{
	struct addr_prefix p;
	const char *why = NULL;
	char buf[ADDR_STRLEN];
	int r = addr_parse_prefix(s, &p, &why);

	if (r != 0)
		fail_msg("addr_parse_prefix(\"%s\") = %d (%s)", s, r, why ? why : "?");
	assert_string_equal(addr_fmt_prefix(&p, buf), want);
	assert_int_equal(p.len, want_len);
}

static void check_prefix_bad(const char *s, const char *why_part)
{
	struct addr_prefix p;
	const char *why = NULL;

	if (addr_parse_prefix(s, &p, &why) != -EINVAL)
		fail_msg("addr_parse_prefix(\"%s\") accepted", s);
	assert_non_null(why);
	if (why_part && !strstr(why, why_part))
		fail_msg("\"%s\": reason \"%s\" lacks \"%s\"", s, why, why_part);
}

static void test_prefix_good(void **state)
{
	(void)state;
	check_prefix("192.0.2.10", "192.0.2.10/32", 128);
	check_prefix("192.0.2.0/24", "192.0.2.0/24", 120);
	check_prefix("198.18.0.0/15", "198.18.0.0/15", 111);
	check_prefix("0.0.0.0/0", "0.0.0.0/0", 96);
	check_prefix("192.0.2.7/32", "192.0.2.7/32", 128);
	check_prefix("2001:db8::/64", "2001:db8::/64", 64);
	check_prefix("2001:DB8::1", "2001:db8::1/128", 128);
	check_prefix("::/0", "::/0", 0);
	check_prefix("2001:db8:0:0:0:0:0:0/32", "2001:db8::/32", 32);
	/* v4-mapped in IPv6 syntax: the length is in the 128-bit space. */
	check_prefix("::ffff:192.0.2.0/120", "192.0.2.0/24", 120);
}

static void test_prefix_stored_mapped(void **state)
{
	struct addr_prefix p;
	const char *why;
	struct in6_addr want;

	(void)state;
	assert_int_equal(addr_parse_prefix("192.0.2.0/24", &p, &why), 0);
	assert_int_equal(inet_pton(AF_INET6, "::ffff:192.0.2.0", &want), 1);
	assert_memory_equal(&p.addr, &want, sizeof(want));
	assert_true(addr_is_v4(&p.addr));
	assert_int_equal(addr_parse_prefix("2001:db8::/64", &p, &why), 0);
	assert_false(addr_is_v4(&p.addr));
}

static bool contains(const char *outer, const char *in)
{
	struct addr_prefix o, i;
	const char *why;

	assert_int_equal(addr_parse_prefix(outer, &o, &why), 0);
	assert_int_equal(addr_parse_prefix(in, &i, &why), 0);
	return addr_prefix_contains(&o, &i);
}

static void test_prefix_contains(void **state)
{
	(void)state;
	assert_true(contains("192.0.2.0/24", "192.0.2.255"));
	assert_true(contains("192.0.2.0/24", "192.0.2.128/25"));
	assert_true(contains("192.0.2.0/24", "192.0.2.0/24"));
	assert_false(contains("192.0.2.0/24", "192.0.3.0"));
	assert_false(contains("192.0.2.128/25", "192.0.2.0/24")); /* wider */
	assert_false(contains("192.0.2.128/25", "192.0.2.127"));
	assert_true(contains("192.0.2.128/25", "192.0.2.128"));
	assert_true(contains("198.18.0.0/15", "198.19.255.255")); /* mask mid-byte */
	assert_false(contains("198.18.0.0/15", "198.20.0.0"));
	assert_true(contains("0.0.0.0/0", "203.0.113.7"));
	assert_false(contains("0.0.0.0/0", "2001:db8::1")); /* families apart */
	assert_true(contains("2001:db8::/33", "2001:db8:7fff::1"));
	assert_false(contains("2001:db8::/33", "2001:db8:8000::1"));
	assert_true(contains("2001:db8::1", "2001:db8::1"));
	assert_false(contains("2001:db8::1", "2001:db8::2"));
}

static void test_prefix_bad(void **state)
{
	(void)state;
	check_prefix_bad("192.0.2.1/24", "host bits");
	check_prefix_bad("198.19.0.0/15", "host bits");
	check_prefix_bad("2001:db8::1/64", "host bits");
	check_prefix_bad("", NULL);
	check_prefix_bad("1.2.3", NULL);
	check_prefix_bad("300.1.1.1", NULL);
	check_prefix_bad("192.0.2.0/33", "length");
	check_prefix_bad("2001:db8::/129", "length");
	check_prefix_bad("192.0.2.0/", "length");
	check_prefix_bad("192.0.2.0/-1", "length");
	check_prefix_bad("192.0.2.0/+24", "length");
	check_prefix_bad("192.0.2.0/024", "length");
	check_prefix_bad("192.0.2.0/24 ", "length");
	check_prefix_bad("192.0.2.0/24/24", "length");
	check_prefix_bad("/24", NULL);
	check_prefix_bad(" 192.0.2.0/24", NULL);
	check_prefix_bad("example.com", NULL);
	check_prefix_bad("[2001:db8::]/64", NULL);
	check_prefix_bad("2001:db8::/64x", "length");
	check_prefix_bad("fe80::1%eth0", NULL);
}

static void check_hostport(const char *s, int family, const char *want, bool want_port)
{
	struct sockaddr_storage ss;
	const char *why = NULL;
	char buf[ADDR_STRLEN];
	bool has_port = !want_port;
	int r = addr_parse_hostport(s, &ss, &has_port, &why);

	if (r != 0)
		fail_msg("addr_parse_hostport(\"%s\") = %d (%s)", s, r, why ? why : "?");
	assert_int_equal(ss.ss_family, family);
	assert_int_equal(has_port, want_port);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&ss, buf), want);
}

static void check_hostport_bad(const char *s)
{
	struct sockaddr_storage ss;
	const char *why = NULL;
	bool has_port;

	if (addr_parse_hostport(s, &ss, &has_port, &why) != -EINVAL)
		fail_msg("addr_parse_hostport(\"%s\") accepted", s);
	assert_non_null(why);
}

static void test_hostport_good(void **state)
{
	(void)state;
	check_hostport("198.51.100.10:22", AF_INET, "198.51.100.10:22", true);
	check_hostport("198.51.100.10", AF_INET, "198.51.100.10:0", false);
	check_hostport("198.51.100.10:65535", AF_INET, "198.51.100.10:65535", true);
	check_hostport("198.51.100.10:1", AF_INET, "198.51.100.10:1", true);
	check_hostport("[2001:db8::10]:22", AF_INET6, "[2001:db8::10]:22", true);
	check_hostport("2001:db8::10", AF_INET6, "[2001:db8::10]:0", false);
	check_hostport("[2001:db8::10]", AF_INET6, "[2001:db8::10]:0", false);
	check_hostport("::1", AF_INET6, "[::1]:0", false);
	/* v4-mapped is dialed as IPv4 */
	check_hostport("[::ffff:198.51.100.10]:80", AF_INET, "198.51.100.10:80", true);
}

static void test_hostport_port_value(void **state)
{
	struct sockaddr_storage ss;
	const char *why;
	bool has_port;

	(void)state;
	assert_int_equal(addr_parse_hostport("198.51.100.10:8080", &ss, &has_port, &why), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
	assert_int_equal(addr_sa_len((struct sockaddr *)&ss), sizeof(struct sockaddr_in));
	assert_int_equal(addr_parse_hostport("[2001:db8::10]:443", &ss, &has_port, &why), 0);
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 443);
	assert_int_equal(addr_sa_len((struct sockaddr *)&ss), sizeof(struct sockaddr_in6));
}

static void test_hostport_bad(void **state)
{
	(void)state;
	check_hostport_bad("");
	check_hostport_bad("1.2.3");
	check_hostport_bad("1.2.3:80");
	check_hostport_bad("300.1.1.1");
	check_hostport_bad("300.1.1.1:80");
	check_hostport_bad("[::1");
	check_hostport_bad("[::1:80");
	check_hostport_bad("::1]:80");
	check_hostport_bad("[::1]80");
	check_hostport_bad("[::1]:");
	check_hostport_bad("[192.0.2.1]:80");
	check_hostport_bad("198.51.100.10:0");
	check_hostport_bad("198.51.100.10:65536");
	check_hostport_bad("198.51.100.10:99999999");
	check_hostport_bad("198.51.100.10:abc");
	check_hostport_bad("198.51.100.10:");
	check_hostport_bad("198.51.100.10:-1");
	check_hostport_bad("198.51.100.10:+80");
	check_hostport_bad("198.51.100.10:080");
	{
		struct sockaddr_storage ss;
		const char *why = NULL;
		bool has_port;

		/* Said as such, not as a port out of range. */
		assert_int_equal(addr_parse_hostport("198.51.100.10:080", &ss, &has_port, &why),
				 -EINVAL);
		assert_string_equal(why, "bad port: no leading zeros (write 80, not 080)");
	}
	check_hostport_bad("198.51.100.10:80 ");
	check_hostport_bad("[2001:db8::10]:0");
	check_hostport_bad("[2001:db8::10]:65536");
	check_hostport_bad("[2001:db8::10]:abc");
	check_hostport_bad(":80");
	check_hostport_bad("[]:80");
	check_hostport_bad("example.com:80");
	check_hostport_bad("198.51.100.0/24");
}

static void test_fmt(void **state)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(80)};
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(8123)};
	struct sockaddr_storage unspec = {.ss_family = AF_UNSPEC};
	struct in6_addr a;
	char buf[ADDR_STRLEN];
	uint16_t port;

	(void)state;
	inet_pton(AF_INET, "192.0.2.1", &sin.sin_addr);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&sin, buf), "192.0.2.1:80");

	inet_pton(AF_INET6, "::ffff:192.0.2.5", &sin6.sin6_addr);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&sin6, buf), "192.0.2.5:8123");

	inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&sin6, buf), "[2001:db8::1]:8123");

	/* The longest form fits ADDR_STRLEN. */
	inet_pton(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &sin6.sin6_addr);
	sin6.sin6_port = htons(65535);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&sin6, buf),
			    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");

	addr_fmt_sa((struct sockaddr *)&unspec, buf);
	assert_string_equal(buf, "-");

	addr_from_sa((struct sockaddr *)&sin, &a, &port);
	assert_true(addr_is_v4(&a));
	assert_int_equal(port, 80);
	assert_string_equal(addr_fmt(&a, buf), "192.0.2.1");
	addr_from_sa((struct sockaddr *)&sin6, &a, &port);
	assert_false(addr_is_v4(&a));
	assert_int_equal(port, 65535);
	assert_string_equal(addr_fmt(&a, buf), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	assert_int_equal(addr_sa_port((struct sockaddr *)&sin), 80);
	addr_sa_set_port((struct sockaddr *)&sin6, 7000);
	assert_int_equal(addr_sa_port((struct sockaddr *)&sin6), 7000);
	assert_int_equal(addr_sa_len((struct sockaddr *)&unspec), 0);
}

static void test_fmt_prefix_longest(void **state)
{
	struct addr_prefix p = {.len = 128};
	char buf[ADDR_STRLEN];

	(void)state;
	memset(&p.addr, 0xff, sizeof(p.addr));
	assert_string_equal(addr_fmt_prefix(&p, buf),
			    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
	/* A mapped address with a length below 96 is not an IPv4 prefix. */
	inet_pton(AF_INET6, "::ffff:0.0.0.0", &p.addr);
	p.len = 80;
	assert_string_equal(addr_fmt_prefix(&p, buf), "::ffff:0.0.0.0/80");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_prefix_good),	       cmocka_unit_test(test_prefix_stored_mapped),
	    cmocka_unit_test(test_prefix_bad),	       cmocka_unit_test(test_prefix_contains),
	    cmocka_unit_test(test_hostport_good),      cmocka_unit_test(test_hostport_port_value),
	    cmocka_unit_test(test_hostport_bad),       cmocka_unit_test(test_fmt),
	    cmocka_unit_test(test_fmt_prefix_longest),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

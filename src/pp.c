/* pp.c - PROXY protocol v1 (text) and v2 (binary) headers, per HAProxy's
 * doc/proxy-protocol.txt.
 *
 * The encoder writes what prism sends to origins. The decoder is strict, in
 * the picohttpparser way: it works on the caller's buffer, never allocates,
 * never reads past <len>, and on a partial buffer tells "need more bytes"
 * (0) apart from "this can never become a header" (-EINVAL), so a caller may
 * feed it a stream as it arrives.
 *
 * Mixed families: the protocol carries one family for both ends. A v4-mapped
 * IPv6 socket address (what a dual-stack socket reports for an IPv4 peer) is
 * written as IPv4; if after that one end is IPv4 and the other IPv6, both are
 * written as IPv6, the IPv4 one as ::ffff:a.b.c.d, rather than failing the
 * connection. Only a family other than AF_INET/AF_INET6 is refused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"
#include "pp.h"

static const char pp_v2_sig[12] = "\r\n\r\n\0\r\nQUIT\n";

#define PP_V1_PREFIX  "PROXY "
#define PP_V1_MAX     107 /* the longest v1 line the spec allows, CRLF included */
#define PP_V2_HDR     16  /* signature, ver/cmd, family, length */
#define PP_V2_VERSION 0x20
#define PP_V2_LOCAL   0x00
#define PP_V2_PROXY   0x01
#define PP_V2_UNSPEC  0x00
#define PP_V2_TCP4    0x11
#define PP_V2_TCP6    0x21
#define PP_V2_LEN4    12 /* 2 x 4 address bytes + 2 x 2 port bytes */
#define PP_V2_LEN6    36 /* 2 x 16 + 2 x 2 */

/* ---- encoding ---- */

static ssize_t pp_encode_v1(bool v4, const struct in6_addr *sa, uint16_t sp,
			    const struct in6_addr *da, uint16_t dp, char *out)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	int n;

	if (v4) {
		inet_ntop(AF_INET, sa->s6_addr + 12, s, sizeof(s));
		inet_ntop(AF_INET, da->s6_addr + 12, d, sizeof(d));
	} else {
		inet_ntop(AF_INET6, sa, s, sizeof(s));
		inet_ntop(AF_INET6, da, d, sizeof(d));
	}
	n = snprintf(out, PP_MAX_LEN + 1, "PROXY %s %s %s %u %u\r\n", v4 ? "TCP4" : "TCP6", s, d,
		     sp, dp);
	/* Cannot happen with inet_ntop's output (104 bytes at most), but a
	 * truncated header must never go out.
	 */
	if (n < 0 || n > PP_MAX_LEN)
		return -ENOSPC;
	return n;
}

static ssize_t pp_encode_v2(bool v4, const struct in6_addr *sa, uint16_t sp,
			    const struct in6_addr *da, uint16_t dp, uint8_t *out)
{
	size_t alen = v4 ? 4 : 16, off = 0;
	const uint8_t *s = v4 ? sa->s6_addr + 12 : sa->s6_addr;
	const uint8_t *d = v4 ? da->s6_addr + 12 : da->s6_addr;
	uint16_t body = v4 ? PP_V2_LEN4 : PP_V2_LEN6;

	memcpy(out, pp_v2_sig, sizeof(pp_v2_sig));
	off = sizeof(pp_v2_sig);
	out[off++] = PP_V2_VERSION | PP_V2_PROXY;
	out[off++] = v4 ? PP_V2_TCP4 : PP_V2_TCP6;
	out[off++] = (uint8_t)(body >> 8);
	out[off++] = (uint8_t)body;
	memcpy(out + off, s, alen);
	off += alen;
	memcpy(out + off, d, alen);
	off += alen;
	out[off++] = (uint8_t)(sp >> 8);
	out[off++] = (uint8_t)sp;
	out[off++] = (uint8_t)(dp >> 8);
	out[off++] = (uint8_t)dp;
	return (ssize_t)off;
}

/* PP_OFF writes nothing and returns 0: "no header" is a valid header of
 * length zero, so callers need no special case.
 */
ssize_t pp_encode(enum pp_version v, const struct sockaddr *src, const struct sockaddr *dst,
		  char *buf, size_t len)
{
	char tmp[PP_MAX_LEN + 1]; /* +1: snprintf's NUL */
	struct in6_addr sa, da;
	uint16_t sp, dp;
	ssize_t n;
	bool v4;

	if (v == PP_OFF)
		return 0;
	if (v != PP_V1 && v != PP_V2)
		return -EINVAL;
	if ((src->sa_family != AF_INET && src->sa_family != AF_INET6) ||
	    (dst->sa_family != AF_INET && dst->sa_family != AF_INET6))
		return -EAFNOSUPPORT;
	/* In the 128-bit space a v4-mapped address and AF_INET look alike,
	 * which is exactly the normalization wanted; see the top comment.
	 */
	addr_from_sa(src, &sa, &sp);
	addr_from_sa(dst, &da, &dp);
	v4 = addr_is_v4(&sa) && addr_is_v4(&da);

	/* Built aside and copied whole so that -ENOSPC leaves <buf> untouched. */
	if (v == PP_V1)
		n = pp_encode_v1(v4, &sa, sp, &da, dp, tmp);
	else
		n = pp_encode_v2(v4, &sa, sp, &da, dp, (uint8_t *)tmp);
	if (n < 0)
		return n;
	if ((size_t)n > len)
		return -ENOSPC;
	memcpy(buf, tmp, (size_t)n);
	return n;
}

/* ---- decoding ---- */

enum pp_field {
	PP_F_SRC = 0,
	PP_F_DST,
	PP_F_SPORT,
	PP_F_DPORT,
};

/* Parses a complete v1 port: decimal 0..65535, no leading zero. Returns the
 * port or -1.
 */
static long pp_v1_port(const char *s, size_t n)
{
	long v = 0;
	size_t i;

	if (n == 0 || n > 5 || (s[0] == '0' && n > 1))
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v > 65535 ? -1 : v;
}

/* Whether <s> (<n> bytes, cut short by the end of the buffer) could still
 * grow into a valid field. Approximate for addresses (character set and
 * length only): the 107-byte line limit still bounds how long a hopeless
 * header is waited for.
 */
static bool pp_v1_partial_ok(enum pp_field f, bool v4, const char *s, size_t n)
{
	size_t i;

	if (f == PP_F_SPORT || f == PP_F_DPORT)
		return n == 0 || pp_v1_port(s, n) >= 0;
	if (n > (v4 ? INET_ADDRSTRLEN : INET6_ADDRSTRLEN) - 1)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];
		bool ok = (c >= '0' && c <= '9') || c == '.' ||
			  (!v4 && (c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')));

		if (!ok)
			return false;
	}
	return true;
}

/* Parses one complete field into <ss> (address or port). Returns 0 or -EINVAL. */
static int pp_v1_field(enum pp_field f, bool v4, const char *s, size_t n,
		       struct sockaddr_storage *ss)
{
	struct sockaddr_storage *sa = (f == PP_F_SRC || f == PP_F_SPORT) ? &ss[0] : &ss[1];
	char tmp[INET6_ADDRSTRLEN];
	long port;

	if (f == PP_F_SPORT || f == PP_F_DPORT) {
		port = pp_v1_port(s, n);
		if (port < 0)
			return -EINVAL;
		if (v4)
			((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
		else
			((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
		return 0;
	}
	/* inet_pton() would stop at an embedded NUL and accept the rest. */
	if (n == 0 || n >= sizeof(tmp) || memchr(s, '\0', n))
		return -EINVAL;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (v4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)sa;

		sin->sin_family = AF_INET;
		return inet_pton(AF_INET, tmp, &sin->sin_addr) == 1 ? 0 : -EINVAL;
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;

	sin6->sin6_family = AF_INET6;
	return inet_pton(AF_INET6, tmp, &sin6->sin6_addr) == 1 ? 0 : -EINVAL;
}

/* Checks the v1 line body <s> (<n> bytes after "PROXY ", CRLF excluded).
 * <complete> says whether the CR was seen. Returns 0 when valid (addresses
 * in <ss>[0..1]), 1 when incomplete but still possibly valid, or -EINVAL.
 */
static int pp_v1_body(const char *s, size_t n, bool complete, struct sockaddr_storage *ss)
{
	static const char unknown[] = "UNKNOWN";
	const size_t ulen = sizeof(unknown) - 1;
	const char *end = s + n, *p, *sp;
	enum pp_field f;
	bool v4;

	memset(ss, 0, 2 * sizeof(*ss));
	/* "UNKNOWN", then optionally a space and anything up to the CRLF,
	 * which the receiver must ignore.
	 */
	if (n < ulen && !complete && memcmp(s, unknown, n) == 0)
		return 1;
	if (n >= ulen && memcmp(s, unknown, ulen) == 0) {
		if (n > ulen && s[ulen] != ' ')
			return -EINVAL;
		if (memchr(s, '\n', n))
			return -EINVAL;
		return complete ? 0 : 1;
	}
	if (n < 5) {
		if (complete || (memcmp(s, "TCP4 ", n) != 0 && memcmp(s, "TCP6 ", n) != 0))
			return -EINVAL;
		return 1;
	}
	if (memcmp(s, "TCP4 ", 5) == 0)
		v4 = true;
	else if (memcmp(s, "TCP6 ", 5) == 0)
		v4 = false;
	else
		return -EINVAL;

	/* "SRC DST SPORT DPORT", single spaces. */
	p = s + 5;
	for (f = PP_F_SRC; f <= PP_F_DPORT; f++) {
		sp = memchr(p, ' ', (size_t)(end - p));
		if (!sp) {
			if (!complete)
				return pp_v1_partial_ok(f, v4, p, (size_t)(end - p)) ? 1 : -EINVAL;
			if (f != PP_F_DPORT)
				return -EINVAL;
			sp = end;
		} else if (f == PP_F_DPORT) {
			return -EINVAL; /* a fifth field */
		}
		if (pp_v1_field(f, v4, p, (size_t)(sp - p), ss) != 0)
			return -EINVAL;
		p = sp + 1;
	}
	return 0;
}

static ssize_t pp_decode_v1(const char *buf, size_t len, struct sockaddr_storage *ss)
{
	const size_t plen = sizeof(PP_V1_PREFIX) - 1;
	size_t lim = len < PP_V1_MAX ? len : PP_V1_MAX;
	const char *cr;
	int r;

	if (memcmp(buf, PP_V1_PREFIX, len < plen ? len : plen) != 0)
		return -EINVAL;
	if (len <= plen)
		return 0;
	cr = memchr(buf + plen, '\r', lim - plen);
	if (!cr)
		/* No CR within the first 107 bytes: too long to ever be one. */
		return len >= PP_V1_MAX
			   ? -EINVAL
			   : (pp_v1_body(buf + plen, len - plen, false, ss) < 0 ? -EINVAL : 0);
	/* The LF must follow, and within the 107 bytes. */
	if ((size_t)(cr - buf) + 2 > PP_V1_MAX)
		return -EINVAL;
	r = pp_v1_body(buf + plen, (size_t)(cr - buf) - plen, true, ss);
	if (r < 0)
		return -EINVAL;
	if ((size_t)(cr - buf) + 1 == len)
		return 0; /* the body is valid, only the LF is missing */
	if (cr[1] != '\n')
		return -EINVAL;
	return cr - buf + 2;
}

static void pp_v2_addr(struct sockaddr_storage *ss, bool v4, const uint8_t *a, const uint8_t *port)
{
	memset(ss, 0, sizeof(*ss));
	if (v4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, a, 4);
		memcpy(&sin->sin_port, port, 2); /* both big-endian */
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, a, 16);
		memcpy(&sin6->sin6_port, port, 2);
	}
}

/* Only TCP over IPv4/IPv6 and UNSPEC are accepted with PROXY: prism relays
 * TCP, and a UDP or AF_UNIX header reaching it would be a misconfiguration.
 * TLVs after the addresses are skipped (they count in the length).
 */
static ssize_t pp_decode_v2(const uint8_t *b, size_t len, struct sockaddr_storage *ss)
{
	size_t n = len < sizeof(pp_v2_sig) ? len : sizeof(pp_v2_sig);
	uint8_t cmd, fam;
	size_t body;

	if (memcmp(b, pp_v2_sig, n) != 0)
		return -EINVAL;
	if (len <= 12)
		return 0;
	if ((b[12] & 0xf0) != PP_V2_VERSION)
		return -EINVAL;
	cmd = b[12] & 0x0f;
	if (cmd != PP_V2_LOCAL && cmd != PP_V2_PROXY)
		return -EINVAL;
	if (len <= 13)
		return 0;
	/* LOCAL: the receiver must ignore the address block, family included. */
	fam = b[13];
	if (cmd == PP_V2_PROXY && fam != PP_V2_UNSPEC && fam != PP_V2_TCP4 && fam != PP_V2_TCP6)
		return -EINVAL;
	if (len < PP_V2_HDR)
		return 0;
	body = (size_t)b[14] << 8 | b[15];
	if (cmd == PP_V2_PROXY &&
	    ((fam == PP_V2_TCP4 && body < PP_V2_LEN4) || (fam == PP_V2_TCP6 && body < PP_V2_LEN6)))
		return -EINVAL;
	if (len - PP_V2_HDR < body)
		return 0;
	memset(ss, 0, 2 * sizeof(*ss));
	if (cmd == PP_V2_PROXY && fam == PP_V2_TCP4) {
		pp_v2_addr(&ss[0], true, b + 16, b + 24);
		pp_v2_addr(&ss[1], true, b + 20, b + 26);
	} else if (cmd == PP_V2_PROXY && fam == PP_V2_TCP6) {
		pp_v2_addr(&ss[0], false, b + 16, b + 48);
		pp_v2_addr(&ss[1], false, b + 32, b + 50);
	}
	return (ssize_t)(PP_V2_HDR + body);
}

/* <src>/<dst> are written only on success. For v1 "UNKNOWN", v2 LOCAL and v2
 * UNSPEC their family is AF_UNSPEC: the receiver is to use the real
 * connection's addresses.
 */
ssize_t pp_decode(const char *buf, size_t len, struct sockaddr_storage *src,
		  struct sockaddr_storage *dst)
{
	struct sockaddr_storage ss[2];
	ssize_t r;

	if (len == 0)
		return 0;
	if (buf[0] == 'P')
		r = pp_decode_v1(buf, len, ss);
	else if (buf[0] == '\r')
		r = pp_decode_v2((const uint8_t *)buf, len, ss);
	else
		return -EINVAL;
	if (r > 0) {
		if (src)
			*src = ss[0];
		if (dst)
			*dst = ss[1];
	}
	return r;
}

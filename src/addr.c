/* addr.c - parsing and formatting of addresses, prefixes and socket addresses.
 *
 * Everything is normalized to the 128-bit v4-mapped space described in
 * addr.h. Parsing is strict: inet_pton() does the address itself (it rejects
 * "1.2.3", "300.1.1.1" and leading zeros), and everything around it (prefix
 * length, port, brackets) is checked here by hand, because strtol() would
 * accept signs, spaces and trailing junk.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"

/* The 12-byte prefix of a v4-mapped address: ::ffff:0:0/96. */
static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool addr_is_v4(const struct in6_addr *a)
{
	return memcmp(a->s6_addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0;
}

bool addr_prefix_contains(const struct addr_prefix *outer, const struct addr_prefix *in)
{
	int bytes = outer->len / 8, rest = outer->len % 8;

	if (outer->len > in->len || memcmp(&outer->addr, &in->addr, (size_t)bytes) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff00u >> rest);
	return (outer->addr.s6_addr[bytes] & mask) == (in->addr.s6_addr[bytes] & mask);
}

static void addr_map_v4(const struct in_addr *v4, struct in6_addr *out)
{
	memcpy(out->s6_addr, v4_mapped_prefix, sizeof(v4_mapped_prefix));
	memcpy(out->s6_addr + 12, &v4->s_addr, 4);
}

/* Parses the decimal number <s>..<end> (no sign, no leading zero unless it
 * is "0", at most <max>). Returns the value, or -1.
 */
static long addr_parse_uint(const char *s, const char *end, long max)
{
	long v = 0;

	if (s == end || end - s > 5)
		return -1;
	if (*s == '0' && end - s > 1)
		return -1;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v > max ? -1 : v;
}

/* Parses a bare IPv4 or IPv6 address (no brackets) of <n> bytes into the
 * 128-bit space. Returns 0, or -EINVAL.
 */
static int addr_parse_bare(const char *s, size_t n, struct in6_addr *out)
{
	char tmp[INET6_ADDRSTRLEN];
	struct in_addr v4;

	if (n == 0 || n >= sizeof(tmp))
		return -EINVAL;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (inet_pton(AF_INET, tmp, &v4) == 1) {
		addr_map_v4(&v4, out);
		return 0;
	}
	if (inet_pton(AF_INET6, tmp, out) == 1)
		return 0;
	return -EINVAL;
}

int addr_parse_prefix(const char *s, struct addr_prefix *out, const char **why)
{
	const char *slash = strchr(s, '/');
	size_t n = slash ? (size_t)(slash - s) : strlen(s);
	struct in6_addr a;
	long len;
	int i;

	if (addr_parse_bare(s, n, &a) != 0) {
		*why = "not an IP address or prefix (expected e.g. 192.0.2.0/24 or 2001:db8::/64)";
		return -EINVAL;
	}
	/* An IPv4 prefix length counts from bit 96 of the mapped address.
	 * Whether the length is in IPv4 terms depends on how the address was
	 * written: "::ffff:192.0.2.0/120" is the same prefix as "192.0.2.0/24".
	 */
	bool v4 = addr_is_v4(&a) && memchr(s, ':', n) == NULL;
	if (!slash) {
		len = 128;
	} else {
		len = addr_parse_uint(slash + 1, s + strlen(s), v4 ? 32 : 128);
		if (len < 0) {
			*why = v4 ? "bad prefix length (expected 0 to 32)"
				  : "bad prefix length (expected 0 to 128)";
			return -EINVAL;
		}
		if (v4)
			len += 96;
	}
	/* Refuse host bits, as iproute2 does: "192.0.2.1/24" is most likely a
	 * typo for an address or for the network, and guessing is worse.
	 */
	for (i = 0; i < 16; i++) {
		int bits = (int)len - i * 8;
		uint8_t mask = bits >= 8 ? 0xff : bits <= 0 ? 0 : (uint8_t)(0xff << (8 - bits));

		if (a.s6_addr[i] & ~mask) {
			*why = "host bits set in prefix (use the network address, e.g. "
			       "192.0.2.0/24)";
			return -EINVAL;
		}
	}
	out->addr = a;
	out->len = (uint8_t)len;
	return 0;
}

int addr_parse_hostport(const char *s, struct sockaddr_storage *out, bool *has_port,
			const char **why)
{
	const char *host = s, *host_end, *port = NULL;
	const char *end = s + strlen(s);
	const char *colon;
	struct in6_addr a;
	long p = 0;

	if (*s == '[') {
		/* Brackets are only for IPv6, and required with a port. */
		host = s + 1;
		host_end = strchr(host, ']');
		if (!host_end) {
			*why = "missing ']' after IPv6 address";
			return -EINVAL;
		}
		if (host_end[1] == ':')
			port = host_end + 2;
		else if (host_end[1] != '\0') {
			*why = "expected ':port' after ']'";
			return -EINVAL;
		}
		if (memchr(host, ':', (size_t)(host_end - host)) == NULL) {
			*why = "brackets are only for IPv6 addresses";
			return -EINVAL;
		}
	} else {
		colon = strchr(s, ':');
		if (colon && strchr(colon + 1, ':') == NULL) {
			/* Exactly one colon: IPv4 with a port. */
			host_end = colon;
			port = colon + 1;
		} else {
			/* No colon (IPv4) or several (bare IPv6, no port). */
			host_end = end;
			if (strchr(s, ']')) {
				*why =
				    "unbalanced ']' (write IPv6 with a port as [2001:db8::10]:22)";
				return -EINVAL;
			}
		}
	}
	if (addr_parse_bare(host, (size_t)(host_end - host), &a) != 0) {
		*why = "not an IP address (expected e.g. 198.51.100.10:22 or [2001:db8::10]:22)";
		return -EINVAL;
	}
	if (port) {
		p = addr_parse_uint(port, end, 65535);
		if (p <= 0) {
			/* Refused, as in prefix lengths: some tools read a
			 * leading zero as octal.
			 */
			*why = port[0] == '0' && end - port > 1
				   ? "bad port: no leading zeros (write 80, not 080)"
				   : "bad port (expected 1 to 65535)";
			return -EINVAL;
		}
	}
	memset(out, 0, sizeof(*out));
	/* A v4-mapped address, however written, is dialed as plain IPv4. */
	if (addr_is_v4(&a)) {
		struct sockaddr_in *sin = (struct sockaddr_in *)out;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr.s_addr, a.s6_addr + 12, 4);
		sin->sin_port = htons((uint16_t)p);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = a;
		sin6->sin6_port = htons((uint16_t)p);
	}
	*has_port = port != NULL;
	return 0;
}

const char *addr_fmt(const struct in6_addr *a, char *buf)
{
	if (addr_is_v4(a)) {
		if (!inet_ntop(AF_INET, a->s6_addr + 12, buf, INET6_ADDRSTRLEN))
			strcpy(buf, "?");
	} else {
		if (!inet_ntop(AF_INET6, a, buf, INET6_ADDRSTRLEN))
			strcpy(buf, "?");
	}
	return buf;
}

const char *addr_fmt_hostport(const struct in6_addr *a, uint16_t port, char *buf)
{
	char host[INET6_ADDRSTRLEN];

	addr_fmt(a, host);
	snprintf(buf, ADDR_STRLEN, addr_is_v4(a) ? "%s:%u" : "[%s]:%u", host, port);
	return buf;
}

const char *addr_fmt_sa(const struct sockaddr *sa, char *buf)
{
	struct in6_addr a;
	uint16_t port;

	if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
		strcpy(buf, "-");
		return buf;
	}
	addr_from_sa(sa, &a, &port);
	return addr_fmt_hostport(&a, port, buf);
}

struct in6_addr addr_source(const struct in6_addr *a)
{
	struct in6_addr k = *a;

	if (!addr_is_v4(&k))
		memset(k.s6_addr + ADDR_SOURCE_BITS6 / 8, 0, 16 - ADDR_SOURCE_BITS6 / 8);
	return k;
}

const char *addr_fmt_source(const struct in6_addr *src, char *buf)
{
	struct addr_prefix p;

	if (addr_is_v4(src))
		return addr_fmt(src, buf);
	p.addr = addr_source(src);
	p.len = ADDR_SOURCE_BITS6;
	return addr_fmt_prefix(&p, buf);
}

const char *addr_fmt_prefix(const struct addr_prefix *p, char *buf)
{
	char host[INET6_ADDRSTRLEN];
	/* A mapped network shorter than /96 (only reachable by building the
	 * struct by hand) is not an IPv4 prefix: print it in IPv6 syntax.
	 */
	bool v4 = addr_is_v4(&p->addr) && p->len >= 96;

	if (v4)
		addr_fmt(&p->addr, host);
	else if (!inet_ntop(AF_INET6, &p->addr, host, sizeof(host)))
		strcpy(host, "?");
	uint8_t len = v4 ? (uint8_t)(p->len - 96) : p->len;

	snprintf(buf, ADDR_STRLEN, "%s/%u", host, len);
	return buf;
}

void addr_from_sa(const struct sockaddr *sa, struct in6_addr *addr, uint16_t *port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		addr_map_v4(&sin->sin_addr, addr);
		*port = ntohs(sin->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		*addr = sin6->sin6_addr;
		*port = ntohs(sin6->sin6_port);
	} else {
		memset(addr, 0, sizeof(*addr));
		*port = 0;
	}
}

bool addr_sa_same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			      &((const struct sockaddr_in *)b)->sin_addr,
			      sizeof(struct in_addr)) == 0;
	return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
		      &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0 &&
	       ((const struct sockaddr_in6 *)a)->sin6_scope_id ==
		   ((const struct sockaddr_in6 *)b)->sin6_scope_id;
}

socklen_t addr_sa_len(const struct sockaddr *sa)
{
	switch (sa->sa_family) {
	case AF_INET:
		return sizeof(struct sockaddr_in);
	case AF_INET6:
		return sizeof(struct sockaddr_in6);
	default:
		return 0;
	}
}

uint16_t addr_sa_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

void addr_sa_set_port(struct sockaddr *sa, uint16_t port)
{
	if (sa->sa_family == AF_INET)
		((struct sockaddr_in *)sa)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
}

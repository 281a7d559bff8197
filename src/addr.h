/* addr.h - IP addresses, prefixes and socket addresses as prism uses them.
 *
 * Every address inside prism is kept as a 128-bit IPv6 address; IPv4 is
 * stored v4-mapped (::ffff:a.b.c.d), so one routing trie and one set of
 * helpers serve both families. A prefix length is always in that 128-bit
 * space: an IPv4 /24 is stored as len 120 (96 + 24).
 */
#ifndef PRISM_ADDR_H
#define PRISM_ADDR_H

#include <endian.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* Big enough for "[ffff:...:ffff]:65535" and for a prefix with "/128". */
#define ADDR_STRLEN 64

/* An IPv4 or IPv6 socket address in 28 bytes, where a sockaddr_storage
 * takes 128: what a connection keeps of its client, edge and origin.
 */
union addr_sa {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

struct addr_prefix {
	struct in6_addr addr; /* network address, host bits zero, v4-mapped for IPv4 */
	uint8_t len;	      /* 0..128 in the 128-bit space (IPv4: 96..128) */
};

/* An address as a 128-bit number, most significant bit first: what the
 * routing trie and the route merging compute with.
 */
typedef unsigned __int128 addr_u128;

static inline addr_u128 addr_key(const struct in6_addr *a)
{
	uint64_t h, l;

	memcpy(&h, a->s6_addr, 8);
	memcpy(&l, a->s6_addr + 8, 8);
	return ((addr_u128)be64toh(h) << 64) | be64toh(l);
}

static inline void addr_from_key(addr_u128 k, struct in6_addr *a)
{
	uint64_t h = htobe64((uint64_t)(k >> 64)), l = htobe64((uint64_t)k);

	memcpy(a->s6_addr, &h, 8);
	memcpy(a->s6_addr + 8, &l, 8);
}

/* Returns true when <a> is a v4-mapped address. */
bool addr_is_v4(const struct in6_addr *a);

/* What prism counts and bans as one source (guard.c, ban.c), as the nft
 * SYN limit counts it: an IPv4 address, or an IPv6 address's /64, the block
 * a host normally gets to pick addresses from (counted per address, an
 * IPv6 host could open a connection from each of 2^64 of them). Returns
 * <a> (128-bit, v4-mapped) with the bits below ADDR_SOURCE_BITS6 cleared
 * for IPv6.
 */
#define ADDR_SOURCE_BITS6 64
struct in6_addr addr_source(const struct in6_addr *a);

/* Formats a source (addr_source) into <buf>: "192.0.2.1", "2001:db8::/64". */
const char *addr_fmt_source(const struct in6_addr *src, char *buf);

/* True when prefix <outer> contains prefix <in> (or equals it); a bare
 * address is a prefix of length 128.
 */
bool addr_prefix_contains(const struct addr_prefix *outer, const struct addr_prefix *in);

/* Parses "192.0.2.10", "192.0.2.0/24", "2001:db8::/64" into <out>. A bare
 * address is a /32 (IPv4) or /128 (IPv6). Returns 0, or -EINVAL with <*why>
 * set to a static sentence: not an address, bad length, or host bits set
 * (as iproute2 refuses "192.0.2.1/24").
 */
int addr_parse_prefix(const char *s, struct addr_prefix *out, const char **why);

/* Parses an origin "198.51.100.10:22", "198.51.100.10", "[2001:db8::10]:22"
 * or "2001:db8::10" into <out> (sockaddr_in or sockaddr_in6). <*has_port> is
 * set to whether a port was given; without one the port in <out> is 0.
 * Returns 0, or -EINVAL with <*why> set to a static sentence.
 */
int addr_parse_hostport(const char *s, struct sockaddr_storage *out, bool *has_port,
			const char **why);

/* Formats <sa> as "192.0.2.1:80" or "[2001:db8::1]:80" into <buf>
 * (ADDR_STRLEN bytes). A v4-mapped IPv6 socket address prints as IPv4.
 * Returns <buf>.
 */
const char *addr_fmt_sa(const struct sockaddr *sa, char *buf);

/* The same for an address (v4-mapped for IPv4) and a port. */
const char *addr_fmt_hostport(const struct in6_addr *a, uint16_t port, char *buf);

/* Formats <p> as "192.0.2.0/24" or "2001:db8::/64" into <buf>. Returns <buf>. */
const char *addr_fmt_prefix(const struct addr_prefix *p, char *buf);

/* Formats a bare address (v4-mapped prints as IPv4) into <buf>. Returns <buf>. */
const char *addr_fmt(const struct in6_addr *a, char *buf);

/* Extracts the 128-bit key (v4-mapped for AF_INET) and port of <sa>. */
void addr_from_sa(const struct sockaddr *sa, struct in6_addr *addr, uint16_t *port);

/* The port of the sockaddr_in/sockaddr_in6 <sa> (host order). */
uint16_t addr_sa_port(const struct sockaddr *sa);

/* Sets the port of the sockaddr_in/sockaddr_in6 <sa> (host order in). */
void addr_sa_set_port(struct sockaddr *sa, uint16_t port);

/* Whether <a> and <b> are the same host: family, address and, for IPv6,
 * scope (fe80::1%2 and fe80::1%3 are two hosts); ports are not compared.
 */
bool addr_sa_same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* socklen of <sa> by its family. */
socklen_t addr_sa_len(const struct sockaddr *sa);

#endif

/* pp.h - PROXY protocol v1 and v2 headers (HAProxy's proxy-protocol.txt).
 *
 * prism sends one header on each origin connection before any payload,
 * carrying the client's address as the source and the edge address the
 * client dialed as the destination.
 */
#ifndef PRISM_PP_H
#define PRISM_PP_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

enum pp_version {
	PP_OFF = 0,
	PP_V1,
	PP_V2,
};

/* Longest header pp_encode writes: v1 with two full IPv6 addresses is 104
 * bytes + CRLF; v2 with IPv6 is 16 + 36.
 */
#define PP_MAX_LEN 108

/* Writes the header of version <v> for a connection from <src> to <dst>
 * into <buf> (<len> bytes). A v4-mapped IPv6 address is written as IPv4;
 * if the two ends then differ in family, both are written as TCP6 (the IPv4
 * one v4-mapped). PP_OFF writes nothing and returns 0. Returns the number
 * of bytes written, or -ENOSPC if <len> is too small, or -EAFNOSUPPORT.
 */
ssize_t pp_encode(enum pp_version v, const struct sockaddr *src, const struct sockaddr *dst,
		  char *buf, size_t len);

/* Parses a header at the start of <buf> (<len> bytes), the inverse of
 * pp_encode, used by tests, the fuzz target and the demo. Returns the header
 * length and fills <src>/<dst> (may be NULL); 0 if more bytes are needed;
 * -EINVAL if <buf> does not start with a valid header.
 */
ssize_t pp_decode(const char *buf, size_t len, struct sockaddr_storage *src,
		  struct sockaddr_storage *dst);

#endif

/* dns.h - background re-resolution of origins given as host names.
 *
 * A thread of its own (getaddrinfo blocks) re-resolves every named origin
 * of each app every dns.refresh. When an app's addresses change it builds a
 * new origin_set — reusing the origin objects of addresses that stay, so
 * their health and connection counts carry over — and swaps it in; workers
 * pick from the new set from their next connection on. A failed resolution
 * keeps the last good addresses. Every change and failure is logged.
 */
#ifndef PRISM_DNS_H
#define PRISM_DNS_H

#include <stddef.h>

#include "origin.h"

struct dns;

/* Starts the resolver over <n> apps' origins (borrowed; they must outlive
 * dns_stop). Returns 0 or -errno; *out is NULL when no app has a named
 * origin.
 */
int dns_start(struct dns **out, struct app_origins *apps, size_t n);

/* Asks the thread to stop: it does no further lookup (a resolution in
 * progress still ends). dns_stop then joins it.
 */
void dns_request_stop(struct dns *d);
/* Stops and joins the thread (waits for a resolution in progress). */
void dns_stop(struct dns *d);

#endif

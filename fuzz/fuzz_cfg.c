/* fuzz_cfg.c - libFuzzer target for the configuration loader.
 *
 * Feeds arbitrary bytes to cfg_load_buf and frees whatever comes back, so
 * ASan/LSan/UBSan see every path: syntax errors, every validation error,
 * the routing-table build and the success path. A loaded config is also
 * read back (a lookup per app) to touch what the loader built.
 *
 * Origin names go to a stub resolver instead of getaddrinfo: the fuzzer
 * stays hermetic and fast, and the stub still exercises both outcomes (a
 * name starting with 'x' fails, with the warning path; others resolve to
 * two addresses and a duplicate).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int stub_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	struct sockaddr_in *sin;
	struct sockaddr_in6 *sin6;

	if (host[0] == 'x' || host[0] == 'X') {
		*why = "stub: no such name";
		return -ENOENT;
	}
	*addrs = calloc(3, sizeof(**addrs));
	if (!*addrs) {
		*why = "out of memory";
		return -ENOMEM;
	}
	sin = (struct sockaddr_in *)&(*addrs)[0];
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(0xc6336401); /* 198.51.100.1 */
	sin6 = (struct sockaddr_in6 *)&(*addrs)[1];
	sin6->sin6_family = AF_INET6;
	sin6->sin6_addr.s6_addr[0] = 0x20; /* 2001:db8::1 */
	sin6->sin6_addr.s6_addr[1] = 0x01;
	sin6->sin6_addr.s6_addr[2] = 0x0d;
	sin6->sin6_addr.s6_addr[3] = 0xb8;
	sin6->sin6_addr.s6_addr[15] = 1;
	(*addrs)[2] = (*addrs)[0];
	*n = 3;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg *c = NULL;
	char *errors = NULL;
	size_t i, j;
	int rc;

	cfg_resolver = stub_resolver;
	rc = cfg_load_buf("fuzz.yaml", (const char *)data, size, &c, &errors);
	if (rc == 0) {
		/* Success: a snapshot, no text; every app's first edge routes. */
		if (!c || errors || !c->rt)
			abort();
		for (i = 0; i < c->n_apps; i++) {
			const struct cfg_app *a = &c->apps[i];

			if (!a->name || !a->n_edges || !a->n_ports || !a->n_origins)
				abort();
			if (rt_lookup(c->rt, &a->edges[0].addr, a->ports[0].lo) == RT_NONE)
				abort();
			for (j = 0; j < a->n_origins; j++) {
				const struct cfg_origin *o = &a->origins[j];

				/* IPs have their one address; names what the stub gave,
				 * deduplicated, or nothing and a warning.
				 */
				if (!o->host || (!o->is_name && o->n_addrs != 1) ||
				    (o->is_name && o->n_addrs != 0 && o->n_addrs != 2) ||
				    (o->n_addrs == 0 && !c->warnings) || o->weight > 1000 ||
				    (o->port_mode == CFG_PORT_MAP && a->n_ports != 1))
					abort();
			}
			if (a->health.on && (a->health.timeout_ms > a->health.interval_ms ||
					     (a->health.expect && !a->health.send)))
				abort();
		}
		cfg_ref(c);
		cfg_unref(c);
		cfg_unref(c);
	} else {
		/* Failure: no snapshot, and text unless memory ran out. */
		if (c || (rc == -EINVAL && (!errors || !strchr(errors, '\n'))))
			abort();
		free(errors);
	}
	return 0;
}

/* fuzz_cfg.c - libFuzzer target for the configuration loader.
 *
 * Feeds arbitrary bytes to cfg_load_buf and frees whatever comes back, so
 * ASan/LSan/UBSan see every path: syntax errors, every validation error,
 * the routing-table build and the success path. A loaded config is also
 * read back (a lookup per app) to touch what the loader built.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg *c = NULL;
	char *errors = NULL;
	size_t i;
	int rc;

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

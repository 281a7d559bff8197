/* test_dns.c - the resolver thread, with a stub resolver: a name that many
 * apps list is resolved once per round, not once per app.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "addr.h"
#include "cfg.h"
#include "dns.h"
#include "origin.h"
#include "timer.h"

enum { APPS = 50, REFRESH_MS = 50 };

static int calls; /* atomic: the resolver runs in the dns thread */

static int stub_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	bool has_port;
	const char *w;

	__atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
	if (strcmp(host, "one.test") != 0) {
		*why = "Name or service not known";
		return -ENOENT;
	}
	*addrs = calloc(1, sizeof(**addrs));
	assert_non_null(*addrs);
	assert_int_equal(addr_parse_hostport("198.51.100.9", *addrs, &has_port, &w), 0);
	*n = 1;
	return 0;
}

static void test_one_lookup_per_round(void **state)
{
	char *yaml = malloc(APPS * 160 + 16), *errors = NULL;
	struct app_origins *ao;
	struct cfg *cfg = NULL;
	struct dns *d = NULL;
	size_t o = 0;
	uint64_t t0, ms;
	int during;

	(void)state;
	assert_non_null(yaml);
	o += (size_t)sprintf(yaml, "apps:\n");
	for (int i = 0; i < APPS; i++)
		o += (size_t)sprintf(yaml + o,
				     "  - {name: a%d, edge: 192.0.2.%d, ports: 80, origins: "
				     "\"one.test:80\", dns: {refresh: %dms}}\n",
				     i, i + 1, REFRESH_MS);
	cfg_resolver = stub_resolver;
	assert_int_equal(cfg_load_buf("t.yaml", yaml, o, &cfg, &errors), 0);
	assert_null(errors);
	/* Loading: one lookup for the 50 apps. */
	assert_int_equal(calls, 1);

	ao = app_origins_new(cfg);
	assert_non_null(ao);
	assert_int_equal(dns_start(&d, ao, cfg->n_apps), 0);
	assert_non_null(d);
	t0 = mono_ms();
	usleep(10 * REFRESH_MS * 1000);
	dns_stop(d);
	ms = mono_ms() - t0;
	during = __atomic_load_n(&calls, __ATOMIC_RELAXED) - 1;
	/* About one a round (apps fall due within a ms or so of each other,
	 * so a round may split in two): not 50 a round.
	 */
	assert_true(during >= 3);
	assert_true(during <= 2 * (int)(ms / REFRESH_MS + 1));
	app_origins_free(ao, cfg->n_apps);
	cfg_unref(cfg);
	free(yaml);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_one_lookup_per_round),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_cfg.c - unit tests of the configuration loader (cfg.c).
 *
 * Configs are loaded from memory with cfg_load_buf under the name "t.yaml",
 * so every expected message can be written out in full, position included.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cfg.h"
#include "log.h"
#include "rt.h"

/* Loads <yaml>; the config must be accepted. */
static struct cfg *load_ok(const char *yaml)
{
	struct cfg *c = NULL;
	char *errors = NULL;
	int rc = cfg_load_buf("t.yaml", yaml, strlen(yaml), &c, &errors);

	if (rc != 0)
		fail_msg("config refused (%d):\n%s", rc, errors ? errors : "(no text)");
	assert_null(errors);
	assert_non_null(c);
	return c;
}

/* Loads <yaml>; the config must be refused. Returns the error text. */
static char *load_bad(const char *yaml)
{
	struct cfg *c = (struct cfg *)1;
	char *errors = NULL;
	int rc = cfg_load_buf("t.yaml", yaml, strlen(yaml), &c, &errors);

	assert_int_equal(rc, -EINVAL);
	assert_null(c);
	assert_non_null(errors);
	/* Every line is "t.yaml:..." and the text ends with a newline. */
	assert_int_equal(strncmp(errors, "t.yaml:", 7), 0);
	assert_int_equal(errors[strlen(errors) - 1], '\n');
	return errors;
}

/* Checks that the config is refused with a line "t.yaml:<want>" (a prefix
 * of it). Returns 0, or 1 after printing what came instead, so a table of
 * cases shows every mismatch at once.
 */
static int check_error(const char *yaml, const char *want)
{
	char *errors = load_bad(yaml);
	char line[512];
	int bad;

	snprintf(line, sizeof(line), "t.yaml:%s", want);
	bad = strstr(errors, line) == NULL;
	if (bad)
		print_error("expected \"%s\" in:\n%s", line, errors);
	free(errors);
	return bad;
}

static void expect_error(const char *yaml, const char *want)
{
	if (check_error(yaml, want))
		fail();
}

static size_t count_lines(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static uint32_t lookup(const struct cfg *c, const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;
	struct in6_addr a;
	uint16_t p;
	bool has_port;
	const char *why;

	assert_int_equal(addr_parse_hostport(ip, &ss, &has_port, &why), 0);
	addr_from_sa((struct sockaddr *)&ss, &a, &p);
	return rt_lookup(c->rt, &a, port);
}

static const char *app_line = "apps:\n"
			      "  - name: web\n"
			      "    edge: 192.0.2.1\n"
			      "    ports: 80\n"
			      "    origins: 198.51.100.1\n";

/* An origin's port (the first of a range; 0 for a port-less origin). */
static uint16_t origin_port(const struct cfg_origin *o)
{
	return o->port_mode == CFG_PORT_DIALED ? 0 : o->port;
}

static bool origin_has_port(const struct cfg_origin *o)
{
	return o->port_mode != CFG_PORT_DIALED;
}

/* "addr:port" of an origin's first address with its port. */
static const char *origin_sa(const struct cfg_origin *o, char *buf)
{
	struct sockaddr_storage ss = o->addrs[0];

	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = htons(origin_port(o));
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(origin_port(o));
	return addr_fmt_sa((const struct sockaddr *)&ss, buf);
}

static void test_defaults(void **state)
{
	(void)state;
	struct cfg *c = load_ok("");
	char buf[INET6_ADDRSTRLEN];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	assert_int_equal(c->refs, 1);
	assert_string_equal(c->path, "t.yaml");
	assert_int_equal(c->listen4.sin_family, AF_INET);
	assert_string_equal(inet_ntop(AF_INET, &c->listen4.sin_addr, buf, sizeof(buf)),
			    "127.0.0.1");
	assert_int_equal(ntohs(c->listen4.sin_port), 15001);
	assert_int_equal(c->listen6.sin6_family, AF_INET6);
	assert_string_equal(inet_ntop(AF_INET6, &c->listen6.sin6_addr, buf, sizeof(buf)), "::1");
	assert_int_equal(ntohs(c->listen6.sin6_port), 15001);
	assert_true(c->listen6_on);
	assert_int_equal(c->workers, cpus < 1 ? 1 : cpus > 1024 ? 1024 : cpus);
	assert_true(c->net_manage);
	assert_string_equal(c->nft_table, "prism");
	assert_int_equal(c->connect_timeout_ms, 5000);
	assert_int_equal(c->idle_timeout_ms, 300000);
	assert_int_equal(c->shutdown_grace_ms, 10000);
	assert_int_equal(c->log_level, LOG_INFO);
	assert_int_equal(c->log_buffer, 1 << 20);
	assert_int_equal(c->n_apps, 0);
	assert_null(c->apps);
	assert_non_null(c->rt);
	cfg_unref(c);

	/* A comment-only file, an explicit empty document and "apps:" with
	 * nothing are all the defaults with no apps.
	 */
	c = load_ok("# nothing here\n");
	assert_int_equal(c->n_apps, 0);
	cfg_unref(c);
	c = load_ok("---\n");
	cfg_unref(c);
	c = load_ok("apps:\n");
	assert_int_equal(c->n_apps, 0);
	cfg_unref(c);
	c = load_ok("apps: []\n");
	assert_int_equal(c->n_apps, 0);
	assert_non_null(c->rt);
	cfg_unref(c);
}

static void test_log_buffer_sizes(void **state)
{
	static const struct {
		const char *yaml;
		size_t bytes;
	} cases[] = {
	    {"log_buffer: 65536\n", 65536},
	    {"log_buffer: 64KiB\n", 64 << 10},
	    {"log_buffer: 256MiB\n", 256u << 20},
	    {"log_buffer: 1500KiB\n", 1500 << 10},
	};
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cfg *c = load_ok(cases[i].yaml);

		assert_int_equal(c->log_buffer, cases[i].bytes);
		cfg_unref(c);
	}
}

static void test_every_key(void **state)
{
	(void)state;
	const char *yaml = "log_level: debug\n"
			   "log_buffer: 4MiB\n"
			   "listen:\n"
			   "  address: 192.0.2.200\n"
			   "  address6: 2001:db8::200\n"
			   "  port: 16000\n"
			   "  workers: 3\n"
			   "network:\n"
			   "  manage: false\n"
			   "  table: prism_t1\n"
			   "timeouts:\n"
			   "  connect: 750ms\n"
			   "  idle: 2m\n"
			   "shutdown_grace: 0\n"
			   "apps:\n"
			   "  - name: ssh\n"
			   "    protocol: tcp\n"
			   "    edge: 192.0.2.10\n"
			   "    ports: 22\n"
			   "    origins: 198.51.100.10:2222\n"
			   "    proxy_protocol: v2\n"
			   "    timeouts: {connect: 2s, idle: 1h}\n"
			   "  - name: web.v6-1_x\n"
			   "    edge: [192.0.2.0/24, \"2001:db8:1::/48\"]\n"
			   "    ports: [80, \"8000-8999\"]\n"
			   "    origins: [198.51.100.20, \"[2001:db8::20]:8080\", 2001:db8::21]\n"
			   "    proxy_protocol: v1\n"
			   "    timeouts: {idle: 0}\n";
	struct cfg *c = load_ok(yaml);
	char buf[ADDR_STRLEN];
	const struct cfg_app *a;

	assert_int_equal(c->log_level, LOG_DEBUG);
	assert_int_equal(c->log_buffer, 4 << 20);
	assert_string_equal(inet_ntop(AF_INET, &c->listen4.sin_addr, buf, sizeof(buf)),
			    "192.0.2.200");
	assert_string_equal(inet_ntop(AF_INET6, &c->listen6.sin6_addr, buf, sizeof(buf)),
			    "2001:db8::200");
	assert_int_equal(ntohs(c->listen4.sin_port), 16000);
	assert_int_equal(ntohs(c->listen6.sin6_port), 16000);
	assert_true(c->listen6_on);
	assert_int_equal(c->workers, 3);
	assert_false(c->net_manage);
	assert_string_equal(c->nft_table, "prism_t1");
	assert_int_equal(c->connect_timeout_ms, 750);
	assert_int_equal(c->idle_timeout_ms, 120000);
	assert_int_equal(c->shutdown_grace_ms, 0);
	assert_int_equal(c->n_apps, 2);

	a = &c->apps[0];
	assert_string_equal(a->name, "ssh");
	assert_int_equal(a->protocol, CFG_PROTO_TCP);
	assert_int_equal(a->n_edges, 1);
	assert_string_equal(addr_fmt_prefix(&a->edges[0], buf), "192.0.2.10/32");
	assert_int_equal(a->n_ports, 1);
	assert_int_equal(a->ports[0].lo, 22);
	assert_int_equal(a->ports[0].hi, 22);
	assert_int_equal(a->n_origins, 1);
	assert_true(origin_has_port(&a->origins[0]));
	assert_string_equal(origin_sa(&a->origins[0], buf), "198.51.100.10:2222");
	assert_int_equal(a->proxy_protocol, PP_V2);
	assert_int_equal(a->connect_timeout_ms, 2000);
	assert_int_equal(a->idle_timeout_ms, 3600000);
	assert_int_equal(a->pos.line, 16);
	assert_int_equal(a->pos.col, 5);

	a = &c->apps[1];
	assert_string_equal(a->name, "web.v6-1_x");
	assert_int_equal(a->n_edges, 2);
	assert_string_equal(addr_fmt_prefix(&a->edges[1], buf), "2001:db8:1::/48");
	assert_int_equal(a->n_ports, 2);
	assert_int_equal(a->ports[1].lo, 8000);
	assert_int_equal(a->ports[1].hi, 8999);
	assert_int_equal(a->n_origins, 3);
	assert_false(origin_has_port(&a->origins[0]));
	assert_string_equal(origin_sa(&a->origins[1], buf), "[2001:db8::20]:8080");
	assert_false(origin_has_port(&a->origins[2]));
	assert_int_equal(a->origins[2].addrs[0].ss_family, AF_INET6);
	assert_int_equal(a->proxy_protocol, PP_V1);
	/* connect inherited from the globals, idle overridden to none */
	assert_int_equal(a->connect_timeout_ms, 750);
	assert_int_equal(a->idle_timeout_ms, 0);

	/* The routing table is built: the /32 wins over the /24. */
	assert_int_equal(lookup(c, "192.0.2.10", 22), 0);
	assert_int_equal(lookup(c, "192.0.2.10", 80), 1);
	assert_int_equal(lookup(c, "192.0.2.11", 8500), 1);
	assert_int_equal(lookup(c, "192.0.2.11", 22), RT_NONE);
	assert_int_equal(lookup(c, "2001:db8:1::5", 80), 1);
	assert_int_equal(lookup(c, "198.51.100.1", 80), RT_NONE);
	cfg_unref(c);
}

static void test_durations(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		int rc;
		uint32_t ms;
	} t[] = {
	    {"0", 0, 0},
	    {"0ms", 0, 0},
	    {"00", 0, 0},
	    {"1ms", 0, 1},
	    {"500ms", 0, 500},
	    {"5s", 0, 5000},
	    {"2m", 0, 120000},
	    {"1h", 0, 3600000},
	    {"1d", 0, 86400000},
	    {"49d", 0, 49u * 86400000u},
	    {"4294967295ms", 0, 4294967295u},
	    {"4294967296ms", -EINVAL, 0},
	    {"50d", -EINVAL, 0},
	    {"99999999999999999999999s", -EINVAL, 0},
	    {"5", -EINVAL, 0},
	    {"", -EINVAL, 0},
	    {"s", -EINVAL, 0},
	    {"-5s", -EINVAL, 0},
	    {"+5s", -EINVAL, 0},
	    {" 5s", -EINVAL, 0},
	    {"5s ", -EINVAL, 0},
	    {"5 s", -EINVAL, 0},
	    {"1.5s", -EINVAL, 0},
	    {"5S", -EINVAL, 0},
	    {"5sec", -EINVAL, 0},
	    {"1h30m", -EINVAL, 0},
	    {"0x10s", -EINVAL, 0},
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		uint32_t ms = 12345;
		int rc = cfg_parse_duration(t[i].s, &ms);

		if (rc != t[i].rc)
			fail_msg("cfg_parse_duration(\"%s\") = %d, want %d", t[i].s, rc, t[i].rc);
		if (rc == 0 && ms != t[i].ms)
			fail_msg("cfg_parse_duration(\"%s\") = %u ms, want %u", t[i].s, ms,
				 t[i].ms);
	}
}

/* YAML 1.1 would read these as booleans; prism reads the words. */
static void test_off_is_a_string(void **state)
{
	(void)state;
	struct cfg *c = load_ok("listen:\n"
				"  address6: off\n"
				"apps:\n"
				"  - name: a\n"
				"    edge: 192.0.2.1\n"
				"    ports: 80\n"
				"    origins: 198.51.100.1\n"
				"    proxy_protocol: off\n");

	assert_false(c->listen6_on);
	assert_int_equal(c->apps[0].proxy_protocol, PP_OFF);
	cfg_unref(c);

	c = load_ok("listen: {address6: \"off\"}\n");
	assert_false(c->listen6_on);
	cfg_unref(c);

	/* Other YAML 1.1 booleans are not booleans here. */
	expect_error("network:\n  manage: on\n",
		     "2:11: network.manage: \"on\" is not a boolean (expected true or false)");
	expect_error("network:\n  manage: True\n", "2:11: network.manage: \"True\" is not");
	expect_error("listen:\n  address6: false\n",
		     "2:13: listen.address6: \"false\" is not an IPv6 address or off");
}

static void test_lists_and_scalars(void **state)
{
	(void)state;
	struct cfg *c = load_ok("apps:\n"
				"  - name: one\n"
				"    edge: 192.0.2.1\n"
				"    ports: \"*\"\n"
				"    origins: 198.51.100.1\n"
				"  - name: many\n"
				"    edge:\n"
				"      - 192.0.2.2\n"
				"      - 192.0.2.3\n"
				"    ports:\n"
				"      - 1\n"
				"      - 100-200\n"
				"      - \"65535\"\n"
				"    origins:\n"
				"      - 198.51.100.1:1\n"
				"      - 198.51.100.2\n");

	assert_int_equal(c->apps[0].n_edges, 1);
	assert_int_equal(c->apps[0].n_ports, 1);
	assert_int_equal(c->apps[0].ports[0].lo, 1);
	assert_int_equal(c->apps[0].ports[0].hi, 65535);
	assert_int_equal(c->apps[0].n_origins, 1);
	assert_int_equal(c->apps[1].n_edges, 2);
	assert_int_equal(c->apps[1].n_ports, 3);
	assert_int_equal(c->apps[1].ports[1].lo, 100);
	assert_int_equal(c->apps[1].ports[1].hi, 200);
	assert_int_equal(c->apps[1].ports[2].lo, 65535);
	assert_int_equal(c->apps[1].n_origins, 2);
	assert_int_equal(lookup(c, "192.0.2.3", 150), 1);
	assert_int_equal(lookup(c, "192.0.2.3", 201), RT_NONE);
	assert_int_equal(lookup(c, "192.0.2.1", 65535), 0);
	cfg_unref(c);
}

static void test_aliases(void **state)
{
	(void)state;
	struct cfg *c = load_ok("apps:\n"
				"  - name: a\n"
				"    edge: 192.0.2.1\n"
				"    ports: &p [80, 443]\n"
				"    origins: &o [198.51.100.1, 198.51.100.2]\n"
				"  - name: b\n"
				"    edge: 192.0.2.2\n"
				"    ports: *p\n"
				"    origins: *o\n");

	assert_int_equal(c->apps[1].n_ports, 2);
	assert_int_equal(c->apps[1].ports[1].lo, 443);
	assert_int_equal(c->apps[1].n_origins, 2);
	cfg_unref(c);

	/* A list that contains itself is refused, not walked forever. */
	char *e = load_bad("apps: &a [*a]\n");
	free(e);
}

static void test_workers(void **state)
{
	(void)state;
	struct cfg *c = load_ok("listen: {workers: 1024}\n");

	assert_int_equal(c->workers, 1024);
	cfg_unref(c);
	c = load_ok("listen: {workers: auto}\n");
	assert_true(c->workers >= 1);
	cfg_unref(c);
	expect_error("listen: {workers: 1025}\n",
		     "1:19: listen.workers: 1025 out of range (1-1024, or auto)");
	expect_error("listen: {workers: 0}\n", "1:19: listen.workers: 0 out of range");
	expect_error("listen: {workers: -1}\n",
		     "1:19: listen.workers: \"-1\" is not auto or a number of threads");
	expect_error("listen: {workers: many}\n", "1:19: listen.workers: \"many\" is not auto");
}

/* One class of error each, with its exact position. */
static void test_error_positions(void **state)
{
	(void)state;
	static const struct {
		const char *yaml, *want;
	} t[] = {
	    {"listne: {}\n",
	     "1:1: unknown key \"listne\" at top level (expected one of: listen, "
	     "network, timeouts, shutdown_grace, apps, log_level, log_buffer, protection)"},
	    {"apps:\n  - name: web\n    edgee: 192.0.2.1\n",
	     "3:5: unknown key \"edgee\" in app \"web\" (expected one of: name, protocol, edge, "
	     "ports, origins, proxy_protocol, timeouts, balance, retries, health_check, passive, "
	     "dns, max_conns, protection)"},
	    {"network: {tabel: x}\n", "1:11: unknown key \"tabel\" in network"},
	    {"timeouts: {conect: 1s}\n", "1:12: unknown key \"conect\" in timeouts"},
	    {"listen: 5\n", "1:9: listen: expected a mapping of keys, got a single value"},
	    {"apps: web\n", "1:7: apps: expected a list of apps, got a single value"},
	    {"apps: [web]\n", "1:8: apps: each app is a mapping"},
	    {"[1, 2]\n", "1:1: the top level must be a mapping"},
	    {"listen: {port: [1]}\n",
	     "1:16: listen.port: expected a port number (1-65535), got a list"},
	    {"listen: {port: 0}\n", "1:16: listen.port: port 0 out of range (1-65535)"},
	    {"listen: {port: 65536}\n", "1:16: listen.port: port 65536 out of range (1-65535)"},
	    {"listen: {port: 99999999999999999999}\n",
	     "1:16: listen.port: port 99999999999999999999 out of range"},
	    {"listen: {port: http}\n", "1:16: listen.port: \"http\" is not a port number"},
	    {"listen: {port: }\n", "1:16: listen.port: no value given"},
	    {"listen: {address: 192.0.2.300}\n",
	     "1:19: listen.address: \"192.0.2.300\" is not an IPv4 address"},
	    {"listen: {address6: \"2001:db8::x\"}\n",
	     "1:20: listen.address6: \"2001:db8::x\" is not an IPv6 address or off"},
	    {"network: {table: 1abc}\n", "1:18: network.table: \"1abc\" is not a valid table"},
	    {"network: {table: abcdefghijabcdefghijabcdefghijab}\n",
	     "1:18: network.table: \"abcdefghijabcdefghijabcdefghijab\" is not a valid"},
	    {"log_level: warning\n", "1:12: log_level: \"warning\" is not one of: error, warn, "
				     "info, debug"},
	    /* Quoted text is cut at 64 bytes, but not inside a character:
	     * 21 euro signs are 63 bytes, the 22nd would end at 66.
	     */
	    {"log_level: "
	     "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
	     "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
	     "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
	     "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
	     "\xe2\x82\xac\xe2\x82\xac\n",
	     "1:12: log_level: "
	     "\"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82"
	     "\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82"
	     "\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82"
	     "\xac...\" is not one of"},
	    {"log_buffer: 1GiB\n", "1:13: log_buffer: \"1GiB\" is not a size (bytes, or a number "
				   "with KiB or MiB)"},
	    {"log_buffer: 64k\n", "1:13: log_buffer: \"64k\" is not a size"},
	    {"log_buffer: 1073741824000000000000000000000000MiB\n",
	     "1:13: log_buffer: 10737418240000000000000000000000... out of range (64KiB-256MiB)"},
	    {"log_buffer: KiB\n", "1:13: log_buffer: \"KiB\" is not a size"},
	    {"log_buffer: 1000\n", "1:13: log_buffer: 1000 out of range (64KiB-256MiB)"},
	    {"log_buffer: 257MiB\n", "1:13: log_buffer: 257MiB out of range (64KiB-256MiB)"},
	    {"log_buffer: 99999999999999999999999KiB\n", "1:13: log_buffer: "
							 "99999999999999999999999KiB out of range"},
	    {"timeouts:\n  connect: 0\n", "2:12: timeouts.connect: must be more than 0"},
	    {"timeouts:\n  idle: 5\n", "2:9: timeouts.idle: \"5\" is not a duration"},
	    {"timeouts:\n  idle: -5s\n", "2:9: timeouts.idle: \"-5s\" is negative"},
	    {"shutdown_grace: 50d\n", "1:17: shutdown_grace: \"50d\" is too long (at most 49d)"},
	    {"listen: {port: 1}\nlisten: {port: 2}\n",
	     "2:1: duplicate key \"listen\" at top level (first at line 1)"},
	    {"apps:\n  - name: a\n    name: b\n", "3:5: duplicate key \"name\" in app \"a\""},
	    {"listen:\n  port: 1\n ---\n", "3:2: YAML syntax error"},
	    {"listen: {port: 1\n", "2:1: YAML syntax error: did not find expected ',' or '}'"},
	    {"listen: {port: 1}\n---\nlisten: {port: 2}\n",
	     "2:1: a second YAML document starts here"},
	    {"listen: {port: 1}\n--- [\n",
	     "3:1: YAML syntax error: did not find expected node content"},
	    {"a: *nope\n", "1:4: YAML syntax error: found undefined alias"},
	    {"? [a]\n: 1\n", "1:3: keys at top level must be plain names, got a list"},
	    {"listen: {port: \"1\\0\"}\n", "1:16: listen.port: value contains a NUL character"},
	    {"log_level: info\n\x01\n", "2:1: not valid text"},
	    /* Tags: the core schema's change nothing; others are refused. */
	    {"log_level: !!str info\nlisten: {port: !!binary UElORw0K}\n",
	     "2:16: YAML tag !!binary is not supported: prism reads every value as written"},
	    {"listen: !local {port: 80}\n", "1:9: YAML tag !local is not supported"},
	    /* Columns in characters: two 2-byte ones before the bad byte. */
	    {"x: \"\xc3\xa9\xc3\xa9\xff\"\n", "1:7: not valid text"},
	    /* Lines as libyaml breaks them (CR, CR LF, NEL), and no column
	     * for a byte order mark.
	     */
	    {"log_level: info\rlisten: {port: 1}\rx: \xff\r", "3:4: not valid text"},
	    {"log_level: info\r\nx: \xff\r\n", "2:4: not valid text"},
	    {"log_level: info\xc2\x85x: \xff\n", "2:4: not valid text"},
	    {"\xef\xbb\xbfx: \xff\n", "1:4: not valid text"},
	};
	size_t i;
	int bad = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		bad += check_error(t[i].yaml, t[i].want);
	assert_int_equal(bad, 0);
}

static void test_app_errors(void **state)
{
	(void)state;
	static const struct {
		const char *yaml, *want;
	} t[] = {
	    {"apps:\n  - edge: 192.0.2.1\n    ports: 1\n    origins: 198.51.100.1\n",
	     "2:5: app #1: missing required key \"name\""},
	    {"apps:\n  - name: w\n    ports: 1\n    origins: 198.51.100.1\n",
	     "2:5: app \"w\": missing required key \"edge\""},
	    {"apps:\n  - name: w\n    edge: 192.0.2.1\n    origins: 198.51.100.1\n",
	     "2:5: app \"w\": missing required key \"ports\""},
	    {"apps:\n  - name: w\n    edge: 192.0.2.1\n    ports: 1\n",
	     "2:5: app \"w\": missing required key \"origins\""},
	    {"apps:\n  - {name: w, edge: 192.0.2.1/24, ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?"},
	    {"apps:\n  - {name: w, edge: \"2001:db8::1/32\", ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: 2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"},
	    {"apps:\n  - {name: w, edge: 192.0.2.0/33, ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: \"192.0.2.0/33\" is not a valid address or prefix: bad prefix length"},
	    {"apps:\n  - {name: w, edge: example.com, ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: \"example.com\" is not a valid address or prefix"},
	    {"apps:\n  - {name: w, edge: [], ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: empty list (expected at least one address or prefix)"},
	    {"apps:\n  - {name: w, edge: {a: 1}, ports: 1, origins: 198.51.100.1}\n",
	     "2:21: edge: expected an address or prefix or a list of them, got a mapping"},
	    {"apps:\n  - {name: w, edge: [[192.0.2.1]], ports: 1, origins: 198.51.100.1}\n",
	     "2:22: edge: expected an address or prefix, got a list"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 0, origins: 198.51.100.1}\n",
	     "2:39: ports: port 0 out of range (1-65535)"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 70000, origins: 198.51.100.1}\n",
	     "2:39: ports: port 70000 out of range (1-65535)"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 0-5, origins: 198.51.100.1}\n",
	     "2:39: ports: port 0 out of range (1-65535)"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 5-70000, origins: 198.51.100.1}\n",
	     "2:39: ports: port 70000 out of range (1-65535)"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 9-1, origins: 198.51.100.1}\n",
	     "2:39: ports: range 9-1 is reversed (did you mean 1-9?)"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 1-, origins: 198.51.100.1}\n",
	     "2:39: ports: \"1-\" is not a port, a range"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: -1, origins: 198.51.100.1}\n",
	     "2:39: ports: \"-1\" is not a port, a range"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 1, origins: []}\n",
	     "2:51: origins: empty list"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 1, origins: \"[::1\"}\n",
	     "2:51: origins: \"[::1\" is not a valid origin: missing ']'"},
	    {"apps:\n  - {name: w, edge: 192.0.2.1, ports: 1, origins: 1.2.3.4:0}\n",
	     "2:51: origins: \"1.2.3.4:0\" is not a valid origin: bad port"},
	    {"apps:\n  - {name: \"a b\", edge: 192.0.2.1, ports: 1, origins: 198.51.100.1}\n",
	     "2:12: name: \"a b\" is not a valid app name"},
	    {"apps:\n  - {name: \"\", edge: 192.0.2.1, ports: 1, origins: 198.51.100.1}\n",
	     "2:12: name: no value given"},
	    {"apps:\n  - {name: w, protocol: udp, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:25: protocol: \"udp\" is not one of: tcp"},
	    {"apps:\n  - {name: w, proxy_protocol: v3, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:31: proxy_protocol: \"v3\" is not one of: off, v1, v2"},
	    {"apps:\n  - {name: w, proxy_protocol: true, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:31: proxy_protocol: \"true\" is not one of: off, v1, v2"},
	    {"apps:\n  - {name: w, timeouts: {connect: 0}, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:35: timeouts.connect: must be more than 0"},
	    {"apps:\n  - {name: w, timeouts: {idle: 1}, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:32: timeouts.idle: \"1\" is not a duration"},
	    {"apps:\n  - {name: w, timeouts: {x: 1}, edge: 192.0.2.1, ports: 1, origins: "
	     "198.51.100.1}\n",
	     "2:26: unknown key \"x\" in timeouts of app \"w\" (expected one of: connect, idle)"},
	    {"listen: {address6: off}\n"
	     "apps:\n  - {name: w, edge: \"2001:db8::/64\", ports: 1, origins: 198.51.100.1}\n",
	     "3:21: edge: 2001:db8::/64 is IPv6 but listen.address6 is off"},
	    {"apps:\n"
	     "  - {name: a, edge: 192.0.2.1, ports: 1, origins: 198.51.100.1}\n"
	     "  - {name: a, edge: 192.0.2.2, ports: 1, origins: 198.51.100.1}\n",
	     "3:12: duplicate app name \"a\" (first at line 2)"},
	};
	size_t i;
	int bad = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		bad += check_error(t[i].yaml, t[i].want);
	assert_int_equal(bad, 0);
}

static void test_overlaps(void **state)
{
	(void)state;
	const char *yaml = "apps:\n"
			   "  - name: a\n"
			   "    edge: 192.0.2.0/24\n"
			   "    ports: 8000-8100\n"
			   "    origins: 198.51.100.1\n"
			   "  - name: b\n"
			   "    edge: [192.0.2.0/25, 192.0.2.0/24]\n"
			   "    ports: 8050-8150\n"
			   "    origins: 198.51.100.2\n"
			   "  - name: c\n"
			   "    edge: \"2001:db8::/64\"\n"
			   "    ports: 443\n"
			   "    origins: 198.51.100.3\n"
			   "  - name: d\n"
			   "    edge: \"2001:db8::/64\"\n"
			   "    ports: [\"*\", 443]\n"
			   "    origins: 198.51.100.4\n";
	char *e = load_bad(yaml);

	if (!strstr(e, "t.yaml:7:26: app \"b\" overlaps app \"a\" (line 3): both claim "
		       "192.0.2.0/24 ports 8050-8100 with no more specific winner\n") ||
	    !strstr(e, "t.yaml:15:11: app \"d\" overlaps app \"c\" (line 11): both claim "
		       "2001:db8::/64 port 443 with no more specific winner\n"))
		fail_msg("unexpected:\n%s", e);
	assert_int_equal(count_lines(e), 2);
	free(e);

	/* The search for overlaps stops after CFG_MAX_REBUILDS (64) and says
	 * so: 70 apps each overlapping a first one.
	 */
	char big[8192] =
	    "apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1}\n";

	for (int k = 0; k < 70; k++)
		snprintf(big + strlen(big), sizeof(big) - strlen(big),
			 "  - {name: o%d, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1}\n", k);
	e = load_bad(big);
	if (!strstr(e, "t.yaml:2:3: apps: more overlaps may follow; prism stops looking after 64 "
		       "conflicting claims (fix these and check again)\n") ||
	    !strstr(e, "t.yaml:66:23: app \"o63\" overlaps app \"a\" (line 2)") ||
	    strstr(e, "\"o64\""))
		fail_msg("unexpected:\n%s", e);
	assert_int_equal(count_lines(e), 65);
	free(e);

	/* Nesting is no conflict: the more specific claim wins. */
	/* Unmanaged: with 0.0.0.0/0 claimed, an origin would otherwise be
	 * refused as one prism relays to itself.
	 */
	struct cfg *c =
	    load_ok("network: {manage: false}\n"
		    "apps:\n"
		    "  - {name: a, edge: 192.0.2.0/24, ports: \"*\", origins: 198.51.100.1}\n"
		    "  - {name: b, edge: 192.0.2.0/24, ports: 80, origins: 198.51.100.1}\n"
		    "  - {name: c, edge: 192.0.2.7, ports: \"*\", origins: 198.51.100.1}\n"
		    "  - {name: d, edge: 192.0.2.7, ports: [80, 81], origins: 198.51.100.1}\n"
		    "  - {name: e, edge: 0.0.0.0/0, ports: \"1-2\", origins: 198.51.100.1}\n");

	assert_int_equal(lookup(c, "192.0.2.1", 443), 0);
	assert_int_equal(lookup(c, "192.0.2.1", 80), 1);
	assert_int_equal(lookup(c, "192.0.2.7", 443), 2);
	assert_int_equal(lookup(c, "192.0.2.7", 80), 3);
	assert_int_equal(lookup(c, "203.0.113.1", 2), 4);
	assert_int_equal(lookup(c, "192.0.2.1", 2), 0);
	cfg_unref(c);

	/* An app may overlap itself freely. */
	c = load_ok("apps:\n  - {name: a, edge: [192.0.2.0/24, 192.0.2.0/24], ports: [80, 80], "
		    "origins: 198.51.100.1}\n");
	cfg_unref(c);
}

static void test_several_errors(void **state)
{
	(void)state;
	/* Reported all at once, in file order. */
	const char *yaml = "listen:\n"
			   "  port: 70000\n"
			   "  bogus: 1\n"
			   "timeouts: {connect: 5x}\n"
			   "apps:\n"
			   "  - name: web\n"
			   "    edge: 192.0.2.1/24\n"
			   "    ports: [80, 0]\n"
			   "  - name: web\n"
			   "    edge: 192.0.2.1\n"
			   "    ports: 80\n"
			   "    origins: no_where\n";
	const char *want = "t.yaml:2:9: listen.port: port 70000 out of range (1-65535)\n"
			   "t.yaml:3:3: unknown key \"bogus\" in listen (expected one of: address, "
			   "address6, port, workers)\n"
			   "t.yaml:4:21: timeouts.connect: \"5x\" is not a duration (expected a "
			   "number with a unit: ms, s, m, h or d, e.g. 500ms or 5s; or 0)\n"
			   "t.yaml:6:5: app \"web\": missing required key \"origins\" (where to "
			   "relay, e.g. 198.51.100.10:22)\n"
			   "t.yaml:7:11: edge: 192.0.2.1/24 has host bits set; did you mean "
			   "192.0.2.0/24?\n"
			   "t.yaml:8:17: ports: port 0 out of range (1-65535)\n"
			   "t.yaml:9:11: duplicate app name \"web\" (first at line 6)\n"
			   "t.yaml:12:14: origins: \"no_where\" is not a valid origin: not an IP "
			   "address or host name (expected e.g. 198.51.100.10:22, "
			   "[2001:db8::10]:22 or origin.internal:8080; a host name is letters, "
			   "digits, '-' and '.')\n";
	char *e = load_bad(yaml);

	assert_string_equal(e, want);
	free(e);
}

/* Every repeat of a name is reported, against the first app of that name,
 * and stays out of the routing table: the repeats here claim what the first
 * ones claim, which would otherwise be reported as overlaps too.
 */
static void test_duplicate_names(void **state)
{
	(void)state;
	const char *yaml = "apps:\n"
			   "  - {name: b, edge: 192.0.2.2, ports: 1, origins: 198.51.100.1}\n"
			   "  - {name: a, edge: 192.0.2.1, ports: 1, origins: 198.51.100.1}\n"
			   "  - {name: b, edge: 192.0.2.2, ports: 1, origins: 198.51.100.1}\n"
			   "  - {name: c, edge: 192.0.2.3, ports: 1, origins: 198.51.100.1}\n"
			   "  - {name: a, edge: 192.0.2.1, ports: 1, origins: 198.51.100.1}\n"
			   "  - {name: b, edge: 192.0.2.2, ports: 1, origins: 198.51.100.1}\n";
	const char *want = "t.yaml:4:12: duplicate app name \"b\" (first at line 2)\n"
			   "t.yaml:6:12: duplicate app name \"a\" (first at line 3)\n"
			   "t.yaml:7:12: duplicate app name \"b\" (first at line 2)\n";
	char *e = load_bad(yaml);

	assert_string_equal(e, want);
	free(e);
}

static void test_many_errors_capped(void **state)
{
	(void)state;
	char *yaml = malloc(300 * 16), *e;
	size_t o = 0;
	int i;

	assert_non_null(yaml);
	for (i = 0; i < 300; i++)
		o += (size_t)sprintf(yaml + o, "k%d: 1\n", i);
	e = load_bad(yaml);
	assert_int_equal(count_lines(e), 101);
	assert_non_null(strstr(e, "t.yaml: 200 more problems not shown\n"));
	free(e);
	free(yaml);
}

/* User text in messages is quoted, escaped and cut: one problem, one line. */
static void test_message_quoting(void **state)
{
	(void)state;
	char *e = load_bad("\"a\\nb\": 1\n");

	assert_string_equal(e, "t.yaml:1:1: unknown key \"a\\x0ab\" at top level (expected one "
			       "of: listen, network, timeouts, shutdown_grace, apps, log_level, "
			       "log_buffer, protection)\n");
	free(e);

	char yaml[400];

	memset(yaml, 'x', 300);
	strcpy(yaml + 300, ": 1\n");
	e = load_bad(yaml);
	assert_int_equal(count_lines(e), 1);
	assert_non_null(strstr(e, "xxx...\" at top level"));
	assert_true(strlen(e) < 250);
	free(e);
}

static void test_load_file(void **state)
{
	(void)state;
	char path[] = "/tmp/test_cfg_XXXXXX";
	int fd = mkstemp(path);
	struct cfg *c = (struct cfg *)1;
	char *errors = NULL, want[128];
	const char *yaml = app_line;

	assert_true(fd >= 0);
	assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
	close(fd);
	assert_int_equal(cfg_load(path, &c, &errors), 0);
	assert_null(errors);
	assert_string_equal(c->path, path);
	assert_string_equal(c->apps[0].name, "web");
	cfg_unref(c);

	/* A bad file: the messages carry the path. */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "listen: 1\n", 10), 10);
	close(fd);
	assert_int_equal(cfg_load(path, &c, &errors), -EINVAL);
	assert_null(c);
	snprintf(want, sizeof(want), "%s:1:9: listen: expected a mapping", path);
	assert_non_null(strstr(errors, want));
	free(errors);
	unlink(path);

	/* Missing: -ENOENT and "FILE: cannot read: <strerror>". */
	assert_int_equal(cfg_load(path, &c, &errors), -ENOENT);
	assert_null(c);
	snprintf(want, sizeof(want), "%s: cannot read: %s\n", path, strerror(ENOENT));
	assert_string_equal(errors, want);
	free(errors);

	assert_int_equal(cfg_load("/", &c, &errors), -EISDIR);
	assert_string_equal(errors, "/: cannot read: Is a directory\n");
	free(errors);

	/* Up to 32 MiB is read (these zeros are then no YAML); a byte more is
	 * refused, saying why.
	 */
	strcpy(path, "/tmp/test_cfg_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 32 << 20), 0);
	assert_int_equal(cfg_load(path, &c, &errors), -EINVAL);
	free(errors);
	assert_int_equal(ftruncate(fd, (32 << 20) + 1), 0);
	close(fd);
	assert_int_equal(cfg_load(path, &c, &errors), -EFBIG);
	snprintf(want, sizeof(want),
		 "%s: cannot read: larger than 32 MiB, the most a config may be\n", path);
	assert_string_equal(errors, want);
	free(errors);
	unlink(path);
}

/* At most 1,000,000 (edge, port range) claims in all: 1,001 edges times
 * 1,000 ports are refused before any table is built.
 */
static void test_claims_cap(void **state)
{
	(void)state;
	char *yaml = malloc(64 << 10), *e;
	size_t o = 0;

	assert_non_null(yaml);
	o += (size_t)sprintf(yaml + o,
			     "apps:\n  - name: big\n    origins: 198.51.100.1\n    edge: [");
	for (int i = 0; i < 1001; i++)
		o += (size_t)sprintf(yaml + o, "%s198.18.%d.%d", i ? ", " : "", i / 256, i % 256);
	o += (size_t)sprintf(yaml + o, "]\n    ports: [");
	for (int i = 0; i < 1000; i++)
		o += (size_t)sprintf(yaml + o, "%s%d", i ? ", " : "", 2 * i + 1);
	sprintf(yaml + o, "]\n");
	e = load_bad(yaml);
	assert_string_equal(
	    e, "t.yaml:2:3: apps: more than 1000000 (edge, port range) combinations in "
	       "all; merge edges into prefixes or ports into ranges\n");
	free(e);
	free(yaml);
}

static void test_refs(void **state)
{
	(void)state;
	struct cfg *c = load_ok(app_line);

	assert_int_equal(c->refs, 1);
	assert_ptr_equal(cfg_ref(c), c);
	assert_ptr_equal(cfg_ref(c), c);
	assert_int_equal(c->refs, 3);
	cfg_unref(c);
	cfg_unref(c);
	assert_int_equal(c->refs, 1);
	assert_string_equal(c->apps[0].name, "web"); /* still alive */
	cfg_unref(c);				     /* freed: LSan checks nothing leaks */
	cfg_unref(NULL);
}

/* ---- origins, balancing, health (the "origins" keys) ---- */

/* The resolver the loader calls for names: no network in unit tests. */
static int stub_calls;

static int stub_resolver(const char *host, struct sockaddr_storage **addrs, size_t *n,
			 const char **why)
{
	static const char *const two[] = {"198.51.100.1", "2001:db8::1", "198.51.100.1"};
	const char *const *v = NULL;
	size_t k = 0, i;

	stub_calls++;
	if (strcmp(host, "two.test") == 0) {
		v = two;
		k = 3; /* with a duplicate the loader must drop */
	} else if (strcmp(host, "edge.test") == 0) {
		/* One address inside 192.0.2.0/24, one outside. */
		static const char *const edge[] = {"192.0.2.9", "198.51.100.9"};

		v = edge;
		k = 2;
	} else if (strcmp(host, "origin-c.internal") == 0 || strcmp(host, "one.test") == 0) {
		static const char *const one[] = {"198.51.100.9"};

		v = one;
		k = 1;
	}
	if (!v) {
		*why = "Name or service not known";
		return -ENOENT;
	}
	*addrs = calloc(k, sizeof(**addrs));
	assert_non_null(*addrs);
	for (i = 0; i < k; i++) {
		bool has_port;
		const char *w;

		assert_int_equal(addr_parse_hostport(v[i], &(*addrs)[i], &has_port, &w), 0);
	}
	*n = k;
	return 0;
}

static int use_stub(void **state)
{
	(void)state;
	cfg_resolver = stub_resolver;
	stub_calls = 0;
	return 0;
}

static int (*saved_resolver)(const char *, struct sockaddr_storage **, size_t *, const char **);

static int restore_resolver(void **state)
{
	(void)state;
	cfg_resolver = saved_resolver;
	return 0;
}

static const char *sa(const struct sockaddr_storage *ss, char *buf)
{
	return addr_fmt_sa((const struct sockaddr *)ss, buf);
}

/* The example, whole. */
static const char *pool_yaml = "apps:\n"
			       "  - name: pool\n"
			       "    edge: [192.0.2.0/24, \"2001:db8::/64\"]\n"
			       "    ports: \"8000-8999\"\n"
			       "    origins:\n"
			       "      - address: 198.51.100.21\n"
			       "        weight: 3\n"
			       "      - address: 198.51.100.22\n"
			       "        port: \"9000-9999\"\n"
			       "      - address: origin-c.internal:8080\n"
			       "        backup: true\n"
			       "      - \"198.51.100.23:7000\"\n"
			       "    balance: least_conn\n"
			       "    retries: 4\n"
			       "    health_check:\n"
			       "      interval: 3s\n"
			       "      timeout: 500ms\n"
			       "      rise: 5\n"
			       "      fall: 7\n"
			       "      port: 8000\n"
			       "      send: \"PING\\r\\n\"\n"
			       "      expect: \"+PONG\"\n"
			       "    passive:\n"
			       "      failures: 0\n"
			       "      cooldown: 1m\n"
			       "    dns:\n"
			       "      refresh: 45s\n";

/* CFG_NO_RESOLVE (net down, ban): the name is not looked up, and keeps no
 * addresses; the rest of the config is the same.
 */
static void test_no_resolve(void **state)
{
	(void)state;
	struct cfg *c = NULL;
	char *errors = NULL;

	assert_int_equal(
	    cfg_load_buf_flags("t.yaml", pool_yaml, strlen(pool_yaml), CFG_NO_RESOLVE, &c, &errors),
	    0);
	assert_null(errors);
	assert_int_equal(stub_calls, 0);
	assert_int_equal(c->apps[0].n_origins, 4);
	assert_true(c->apps[0].origins[2].is_name);
	assert_int_equal(c->apps[0].origins[2].n_addrs, 0);
	assert_int_equal(c->apps[0].origins[0].n_addrs, 1);
	cfg_unref(c);
}

static void test_origins_example(void **state)
{
	(void)state;
	struct cfg *c = load_ok(pool_yaml);
	const struct cfg_app *a = &c->apps[0];
	const struct cfg_origin *o = a->origins;
	char buf[ADDR_STRLEN];

	assert_null(c->warnings);
	assert_int_equal(stub_calls, 1); /* only the name */
	assert_int_equal(a->n_origins, 4);

	assert_string_equal(o[0].host, "198.51.100.21");
	assert_false(o[0].is_name);
	assert_int_equal(o[0].n_addrs, 1);
	assert_string_equal(sa(&o[0].addrs[0], buf), "198.51.100.21:0");
	assert_int_equal(o[0].port_mode, CFG_PORT_DIALED);
	assert_int_equal(o[0].weight, 3);
	assert_false(o[0].backup);
	assert_int_equal(o[0].pos.line, 6);
	assert_int_equal(o[0].pos.col, 18);
	assert_false(origin_has_port(&o[0]));
	assert_string_equal(origin_sa(&o[0], buf), "198.51.100.21:0");

	assert_int_equal(o[1].port_mode, CFG_PORT_MAP);
	assert_int_equal(o[1].port, 9000);
	assert_int_equal(o[1].weight, 1);
	assert_true(origin_has_port(&o[1]));

	assert_string_equal(o[2].host, "origin-c.internal");
	assert_true(o[2].is_name);
	assert_int_equal(o[2].n_addrs, 1);
	assert_string_equal(sa(&o[2].addrs[0], buf), "198.51.100.9:0");
	assert_int_equal(o[2].port_mode, CFG_PORT_FIXED);
	assert_int_equal(o[2].port, 8080);
	assert_true(o[2].backup);
	assert_true(origin_has_port(&o[2]));
	assert_string_equal(origin_sa(&o[2], buf), "198.51.100.9:8080");

	assert_string_equal(o[3].host, "198.51.100.23");
	assert_int_equal(o[3].port_mode, CFG_PORT_FIXED);
	assert_int_equal(o[3].port, 7000);
	assert_string_equal(sa(&o[3].addrs[0], buf), "198.51.100.23:0");
	assert_string_equal(origin_sa(&o[3], buf), "198.51.100.23:7000");
	assert_int_equal(o[3].pos.line, 12);
	assert_int_equal(o[3].pos.col, 9);

	assert_int_equal(a->balance, CFG_LB_LEAST_CONN);
	assert_int_equal(a->retries, 4);
	assert_true(a->health.on);
	assert_int_equal(a->health.interval_ms, 3000);
	assert_int_equal(a->health.timeout_ms, 500);
	assert_int_equal(a->health.rise, 5);
	assert_int_equal(a->health.fall, 7);
	assert_int_equal(a->health.port, 8000);
	assert_int_equal(a->health.send_len, 6);
	assert_memory_equal(a->health.send, "PING\r\n", 7);
	assert_int_equal(a->health.expect_len, 5);
	assert_string_equal(a->health.expect, "+PONG");
	assert_int_equal(a->passive.failures, 0);
	assert_int_equal(a->passive.cooldown_ms, 60000);
	assert_int_equal(a->dns_refresh_ms, 45000);
	cfg_unref(c);
}

static void test_origin_defaults(void **state)
{
	(void)state;
	struct cfg *c = load_ok(app_line);
	const struct cfg_app *a = &c->apps[0];

	assert_int_equal(a->balance, CFG_LB_ROUND_ROBIN);
	assert_int_equal(a->retries, 2);
	assert_false(a->health.on);
	assert_int_equal(a->health.interval_ms, 2000);
	assert_int_equal(a->health.timeout_ms, 1000);
	assert_int_equal(a->health.rise, 2);
	assert_int_equal(a->health.fall, 3);
	assert_int_equal(a->health.port, 0);
	assert_null(a->health.send);
	assert_null(a->health.expect);
	assert_int_equal(a->passive.failures, 3);
	assert_int_equal(a->passive.cooldown_ms, 10000);
	assert_int_equal(a->dns_refresh_ms, 30000);
	assert_int_equal(a->origins[0].weight, 1);
	assert_false(a->origins[0].backup);
	assert_false(a->origins[0].is_name);
	assert_int_equal(a->origins[0].port_mode, CFG_PORT_DIALED);
	assert_null(c->warnings);
	cfg_unref(c);

	/* An empty health_check turns checks on with every default; empty
	 * passive and dns keep theirs.
	 */
	c = load_ok("apps:\n"
		    "  - {name: a, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1:80,\n"
		    "     health_check: {}, passive: {}, dns: {}}\n"
		    "  - {name: b, edge: 192.0.2.2, ports: 80, origins: 198.51.100.1,\n"
		    "     health_check: {interval: 500ms, port: 81}, passive: {failures: 1000}}\n");
	a = &c->apps[0];
	assert_true(a->health.on);
	assert_int_equal(a->health.interval_ms, 2000);
	assert_int_equal(a->health.timeout_ms, 1000);
	assert_int_equal(a->health.rise, 2);
	assert_int_equal(a->health.fall, 3);
	assert_int_equal(a->passive.failures, 3);
	assert_int_equal(a->dns_refresh_ms, 30000);
	/* A short interval shortens the default timeout with it. */
	a = &c->apps[1];
	assert_int_equal(a->health.interval_ms, 500);
	assert_int_equal(a->health.timeout_ms, 500);
	assert_int_equal(a->health.port, 81);
	assert_int_equal(a->passive.failures, 1000);
	assert_int_equal(a->passive.cooldown_ms, 10000);
	cfg_unref(c);
}

static void test_origin_forms(void **state)
{
	(void)state;
	static const char *const lbs[] = {"round_robin", "least_conn", "maglev", "random_two",
					  "source_hash"};
	static const enum cfg_balance want_lb[] = {CFG_LB_ROUND_ROBIN, CFG_LB_LEAST_CONN,
						   CFG_LB_MAGLEV, CFG_LB_RANDOM_TWO,
						   CFG_LB_SOURCE_HASH};
	struct cfg *c =
	    load_ok("apps:\n"
		    "  - name: a\n"
		    "    edge: 192.0.2.1\n"
		    "    ports: 80\n"
		    "    origins:\n"
		    "      - \"[2001:db8::10]:22\"\n"
		    "      - 2001:db8::11\n"
		    "      - localhost\n"
		    "      - one.test:8080\n"
		    "      - {address: \"2001:db8::12\", port: 9, weight: 0}\n"
		    "      - {address: \"[2001:db8::13]\", weight: 1000, backup: false}\n"
		    "      - {address: two.test, port: \"7-7\"}\n"
		    "      - {address: 198.51.100.1, port: 8080}\n"
		    "      - {address: 198.51.100.1, port: \"8081\"}\n"
		    "      - {address: \"::ffff:198.51.100.1\"}\n"
		    "      - {address: One.Test.}\n");
	const struct cfg_origin *o = c->apps[0].origins;
	char buf[ADDR_STRLEN];
	size_t i;

	assert_int_equal(c->apps[0].n_origins, 11);
	assert_string_equal(o[0].host, "2001:db8::10");
	assert_int_equal(o[0].port, 22);
	assert_string_equal(origin_sa(&o[0], buf), "[2001:db8::10]:22");
	assert_string_equal(o[1].host, "2001:db8::11");
	assert_int_equal(o[1].port_mode, CFG_PORT_DIALED);
	assert_string_equal(o[2].host, "localhost");
	assert_true(o[2].is_name);
	assert_int_equal(o[2].n_addrs, 0); /* the stub knows no localhost */
	assert_true(o[3].is_name);
	assert_int_equal(o[3].port, 8080);
	assert_int_equal(o[4].weight, 0);
	assert_int_equal(o[4].port_mode, CFG_PORT_FIXED);
	assert_int_equal(o[4].port, 9);
	assert_int_equal(o[5].weight, 1000);
	assert_string_equal(o[5].host, "2001:db8::13");
	/* A name resolving to 2 addresses (and a duplicate): 2. */
	assert_true(o[6].is_name);
	assert_int_equal(o[6].n_addrs, 2);
	assert_string_equal(sa(&o[6].addrs[0], buf), "198.51.100.1:0");
	assert_string_equal(sa(&o[6].addrs[1], buf), "[2001:db8::1]:0");
	assert_int_equal(o[6].port_mode, CFG_PORT_MAP); /* app port 80 -> 7 */
	assert_int_equal(o[6].port, 7);
	assert_int_equal(o[8].port_mode, CFG_PORT_FIXED);
	assert_int_equal(o[8].port, 8081);
	/* v4-mapped is dialed as IPv4 */
	assert_int_equal(o[9].addrs[0].ss_family, AF_INET);
	assert_true(o[10].is_name);
	assert_int_equal(o[10].n_addrs, 0); /* the stub is case-sensitive */
	assert_int_equal(stub_calls, 4);
	assert_non_null(c->warnings);
	cfg_unref(c);

	/* A name several apps list is looked up once per load, an answer and
	 * a failure alike; each app still gets its addresses or its warning.
	 */
	stub_calls = 0;
	c = load_ok("apps:\n"
		    "  - {name: a, edge: 192.0.2.1, ports: 80, origins: [one.test, nowhere.test]}\n"
		    "  - {name: b, edge: 192.0.2.2, ports: 80, origins: [one.test, nowhere.test]}\n"
		    "  - {name: c, edge: 192.0.2.3, ports: 80, origins: one.test}\n");
	assert_int_equal(stub_calls, 2);
	for (i = 0; i < 3; i++) {
		assert_int_equal(c->apps[i].origins[0].n_addrs, 1);
		assert_string_equal(sa(&c->apps[i].origins[0].addrs[0], buf), "198.51.100.9:0");
	}
	assert_int_equal(count_lines(c->warnings), 2);
	assert_non_null(strstr(c->warnings, "t.yaml:2:"));
	assert_non_null(strstr(c->warnings, "t.yaml:3:"));
	cfg_unref(c);

	/* One origin as a mapping, without a list. */
	c = load_ok("apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: {address: "
		    "198.51.100.1, port: 81}}\n");
	assert_int_equal(c->apps[0].n_origins, 1);
	assert_int_equal(c->apps[0].origins[0].port, 81);
	cfg_unref(c);

	for (i = 0; i < sizeof(lbs) / sizeof(lbs[0]); i++) {
		char yaml[256];

		snprintf(yaml, sizeof(yaml),
			 "apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1, "
			 "balance: %s, retries: %zu}\n",
			 lbs[i], i * 4);
		c = load_ok(yaml);
		assert_int_equal(c->apps[0].balance, want_lb[i]);
		assert_int_equal(c->apps[0].retries, i * 4);
		cfg_unref(c);
	}

	/* Payloads keep their length, NUL bytes included. */
	c = load_ok("apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1:80,\n"
		    "     health_check: {send: \"a\\0b\\x01\", expect: \"\\r\\n\"}}\n");
	assert_int_equal(c->apps[0].health.send_len, 4);
	assert_memory_equal(c->apps[0].health.send, "a\0b\x01", 5);
	assert_int_equal(c->apps[0].health.expect_len, 2);
	cfg_unref(c);

	/* "\xNN" is one byte, from \x80 up too (libyaml gives U+0080 to
	 * U+00FF as two bytes of UTF-8): a binary probe goes out as written,
	 * and a plain character up to U+00FF is its one byte as well.
	 */
	c = load_ok("apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: 198.51.100.1:80,\n"
		    "     health_check: {send: \"\\x16\\x03\\x01\\x00\\xa5\\xff\", expect: "
		    "\"\\x80\xc3\xa9\"}}\n");
	assert_int_equal(c->apps[0].health.send_len, 6);
	assert_memory_equal(c->apps[0].health.send, "\x16\x03\x01\x00\xa5\xff", 7);
	assert_int_equal(c->apps[0].health.expect_len, 2);
	assert_memory_equal(c->apps[0].health.expect, "\x80\xe9", 3);
	cfg_unref(c);
}

static void test_origin_names(void **state)
{
	(void)state;
	struct cfg *c = load_ok("apps:\n"
				"  - name: a\n"
				"    edge: 192.0.2.1\n"
				"    ports: 80\n"
				"    origins: [two.test, gone.test:81]\n"
				"    dns: {refresh: 2m}\n"
				"  - name: b\n"
				"    edge: 192.0.2.2\n"
				"    ports: 80\n"
				"    origins: {address: also-gone.test}\n");
	const struct cfg_origin *o = c->apps[0].origins;

	assert_int_equal(o[0].n_addrs, 2);
	assert_true(o[0].is_name);
	assert_int_equal(o[1].n_addrs, 0);
	assert_null(o[1].addrs);
	assert_true(o[1].is_name);
	assert_string_equal(o[1].host, "gone.test");
	assert_int_equal(o[1].port, 81);
	assert_int_equal(c->apps[1].origins[0].n_addrs, 0);
	assert_string_equal(c->warnings,
			    "t.yaml:5:25: warning: origin gone.test does not resolve (Name or "
			    "service not known); prism will retry every dns.refresh (2m)\n"
			    "t.yaml:10:24: warning: origin also-gone.test does not resolve (Name "
			    "or service not known); prism will retry every dns.refresh (30s)\n");
	cfg_unref(c);

	/* A name resolving into a claim is warned about (an IP origin there
	 * is an error, tests/configs/bad/origin_in_edge.yaml): prism will not
	 * dial that address on those ports (conn.c, origin_loops). Each
	 * origin address is reported once, at its first claimed port found.
	 */
	c = load_ok("apps:\n"
		    "  - name: a\n"
		    "    edge: 192.0.2.0/24\n"
		    "    ports: [80, 443]\n"
		    "    origins: [edge.test, \"edge.test:7000\"]\n"
		    "  - name: b\n"
		    "    edge: 192.0.2.9\n"
		    "    ports: 7000\n"
		    "    origins: 198.51.100.1\n");
	assert_string_equal(
	    c->warnings, "t.yaml:5:15: warning: origin edge.test resolves to 192.0.2.9, which "
			 "app \"a\" claims on port 80: prism would relay to itself, so it will "
			 "not dial that address there; use an origin outside the edges\n"
			 "t.yaml:5:26: warning: origin edge.test resolves to 192.0.2.9, which "
			 "app \"b\" claims on port 7000: prism would relay to itself, so it will "
			 "not dial that address there; use an origin outside the edges\n");
	cfg_unref(c);
	/* Once per address whatever the order of the app's port ranges: the
	 * entry for 443 sorts before 80's, and 80 is found first.
	 */
	c = load_ok("apps:\n  - {name: a, edge: 192.0.2.0/24, ports: [443, 80], origins: "
		    "edge.test}\n");
	assert_string_equal(c->warnings,
			    "t.yaml:2:62: warning: origin edge.test resolves to 192.0.2.9, which "
			    "app \"a\" claims on port 80: prism would relay to itself, so it will "
			    "not dial that address there; use an origin outside the edges\n");
	cfg_unref(c);
	/* Unmanaged, the operator's routes decide: no warning. */
	c = load_ok("network: {manage: false}\n"
		    "apps:\n  - {name: a, edge: 192.0.2.0/24, ports: 80, origins: edge.test}\n");
	assert_null(c->warnings);
	cfg_unref(c);
	/* An origin inside an edge prefix on a port no claim holds: the
	 * edge's local route makes it this host's address. Warned about,
	 * for IP origins and names alike; not outside the edges.
	 */
	c = load_ok(
	    "apps:\n"
	    "  - name: a\n"
	    "    edge: 192.0.2.0/24\n"
	    "    ports: 80\n"
	    "    origins: [\"192.0.2.50:9000\", \"edge.test:9000\", \"198.51.100.1:80\"]\n");
	assert_string_equal(
	    c->warnings,
	    "t.yaml:5:15: warning: origin 192.0.2.50 is inside the edges of app \"a\": their local "
	    "route makes it an address of this host, so prism would dial this host there, where "
	    "only a service bound to that exact address answers; use an origin outside the "
	    "edges\n"
	    "t.yaml:5:34: warning: origin edge.test resolves to 192.0.2.9, which is inside the "
	    "edges of app \"a\": their local route makes it an address of this host, so prism "
	    "would dial this host there, where only a service bound to that exact address "
	    "answers; use an origin outside the edges\n");
	cfg_unref(c);
	c = load_ok("network: {manage: false}\n"
		    "apps:\n  - {name: a, edge: 192.0.2.0/24, ports: 80, origins: "
		    "\"192.0.2.50:9000\"}\n");
	assert_null(c->warnings);
	cfg_unref(c);

	/* A refused config resolves nothing: errors come fast. */
	stub_calls = 0;
	expect_error("apps:\n  - {name: a, edge: 192.0.2.1, ports: 0, origins: two.test}\n",
		     "2:39: ports: port 0 out of range");
	assert_int_equal(stub_calls, 0);

	/* The real resolver: localhost is in /etc/hosts. */
	cfg_resolver = saved_resolver;
	c = load_ok("apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: localhost:7}\n");
	o = c->apps[0].origins;
	assert_true(o[0].n_addrs >= 1);
	for (size_t i = 0; i < o[0].n_addrs; i++) {
		char buf[ADDR_STRLEN];
		const char *s = sa(&o[0].addrs[i], buf);

		if (strcmp(s, "127.0.0.1:0") != 0 && strcmp(s, "[::1]:0") != 0)
			fail_msg("localhost resolved to %s", s);
	}
	assert_int_equal(origin_port(&o[0]), 7);
	assert_null(c->warnings);
	cfg_unref(c);
	cfg_resolver = stub_resolver;
}

static void test_origin_errors(void **state)
{
	(void)state;
#define APP "apps:\n  - name: p\n    edge: 192.0.2.1\n    ports: \"8000-8999\"\n"
	static const struct {
		const char *yaml, *want;
	} t[] = {
	    /* forms */
	    {APP "    origins: [{address: 198.51.100.1, wieght: 2}]\n",
	     "5:39: unknown key \"wieght\" in an origin of app \"p\" (expected one of: address, "
	     "port, weight, backup)"},
	    {APP "    origins: [{port: 80}]\n", "5:15: origins: missing required key \"address\""},
	    {APP "    origins: [{address: 198.51.100.1:80, port: 81}]\n",
	     "5:42: origins: \"198.51.100.1:80\" has a port already, and so does key \"port\""},
	    {APP "    origins: [{address: one.test:80, port: 81}]\n",
	     "5:38: origins: \"one.test:80\" has a port already"},
	    {APP "    origins: [{address: 198.51.100.1, port: 0}]\n",
	     "5:45: origins.port: port 0 out of range (1-65535)"},
	    {APP "    origins: [{address: 198.51.100.1, port: \"9000-70000\"}]\n",
	     "5:45: origins.port: port 70000 out of range (1-65535)"},
	    {APP "    origins: [{address: 198.51.100.1, port: \"9999-9000\"}]\n",
	     "5:45: origins.port: range 9999-9000 is reversed (did you mean 9000-9999?)"},
	    {APP "    origins: [{address: 198.51.100.1, port: http}]\n",
	     "5:45: origins.port: \"http\" is not a port or a range"},
	    {APP "    origins: [{address: 198.51.100.1, weight: 1001}]\n",
	     "5:47: origins.weight: 1001 out of range (0-1000)"},
	    {APP "    origins: [{address: 198.51.100.1, weight: -1}]\n",
	     "5:47: origins.weight: \"-1\" is not a number (0-1000)"},
	    {APP "    origins: [{address: 198.51.100.1, backup: yes}]\n",
	     "5:47: origins.backup: \"yes\" is not a boolean"},
	    {APP "    origins: [{address: [198.51.100.1]}]\n",
	     "5:25: origins.address: expected an IP address or host name, with an optional "
	     ":port, got a list"},
	    {APP "    origins: [[198.51.100.1]]\n", "5:15: origins: expected an origin"},
	    {APP "    origins: bad_name.test\n", "5:14: origins: \"bad_name.test\" is not a valid "
						 "origin: not an IP address or host name"},
	    {APP "    origins: -bad.test\n", "5:14: origins: \"-bad.test\" is not a valid origin"},
	    {APP "    origins: a..b\n", "5:14: origins: \"a..b\" is not a valid origin"},
	    {APP "    origins: 192.0.2.300\n",
	     "5:14: origins: \"192.0.2.300\" is not a valid origin: not an IP address (expected"},
	    {APP "    origins: 1.2.3.0x4\n", "5:14: origins: \"1.2.3.0x4\" is not a valid origin"},
	    {APP "    origins: one.test:0\n",
	     "5:14: origins: \"one.test:0\" is not a valid origin: bad port (expected 1 to "
	     "65535)"},
	    {APP "    origins: one.test:1:2\n", "5:14: origins: \"one.test:1:2\" is not a valid"},
	    {APP "    origins: "
		 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test\n",
	     "5:14: origins: "
	     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" is "
	     "not a valid origin"},
	    /* combinations */
	    {APP "    origins: [{address: 198.51.100.1, port: \"9000-9998\"}]\n",
	     "5:45: origins: port range 9000-9998 has 999 ports but the app's range 8000-8999 "
	     "has 1000"},
	    {"apps:\n  - {name: p, edge: 192.0.2.1, ports: [80, 81], origins: [{address: "
	     "198.51.100.1, port: \"9000-9001\"}]}\n",
	     "2:89: origins: port range 9000-9001 maps ports by offset from the app's port "
	     "range, but app \"p\" has 2 port entries (give it exactly one range"},
	    {APP "    origins: [{address: 198.51.100.1, weight: 0}, {address: 198.51.100.2, "
		 "weight: 0}, {address: 198.51.100.3, backup: true}]\n",
	     "5:14: origins: every primary (non-backup) origin has weight 0, so no origin can be "
	     "chosen"},
	    {APP "    origins: {address: 198.51.100.1, weight: 0, backup: true}\n",
	     "5:14: origins: every origin has weight 0, so no origin can be chosen"},
	    {APP "    origins: [198.51.100.1:80, {address: \"::ffff:198.51.100.1\", port: 80}]\n",
	     "5:42: origins: 198.51.100.1:80 is listed twice (first at line 5)"},
	    {APP "    origins:\n      - 198.51.100.1:80\n      - {address: 198.51.100.1, port: "
		 "80}\n",
	     "7:19: origins: 198.51.100.1:80 is listed twice (first at line 6)"},
	    {APP "    origins: [\"[2001:db8::1]:80\", \"[2001:db8:0::1]:80\"]\n",
	     "5:35: origins: [2001:db8::1]:80 is listed twice (first at line 5)"},
	    {APP "    origins: [one.test, ONE.test]\n",
	     "5:25: origins: ONE.test is listed twice (first at line 5)"},
	    {APP "    origins: [{address: 198.51.100.1, port: \"1-1000\"}, {address: 198.51.100.1, "
		 "port: \"1-1000\"}]\n",
	     "5:66: origins: 198.51.100.1:1-1000 is listed twice"},
	    /* balance, retries */
	    {APP "    origins: 198.51.100.1\n    balance: fastest\n",
	     "6:14: balance: \"fastest\" is not one of: round_robin, least_conn, maglev, "
	     "random_two, source_hash"},
	    {APP "    origins: 198.51.100.1\n    retries: 17\n",
	     "6:14: retries: 17 out of range (0-16)"},
	    {APP "    origins: 198.51.100.1\n    retries: two\n",
	     "6:14: retries: \"two\" is not a number (0-16)"},
	    /* health_check */
	    {APP "    origins: 198.51.100.1\n    health_check: {}\n",
	     "6:5: health_check: origins without a port need health_check.port (198.51.100.1 "
	     "is dialed on the port the client dialed"},
	    {APP "    origins: [198.51.100.1:80, {address: one.test, port: \"1-1000\"}]\n"
		 "    health_check: {}\n",
	     "6:5: health_check: origins with a port range need health_check.port (one.test is "
	     "dialed on a port that follows the client's"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {intervall: 1s}\n",
	     "6:20: unknown key \"intervall\" in health_check of app \"p\" (expected one of: "
	     "interval, timeout, rise, fall, port, send, expect)"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {interval: 0}\n",
	     "6:30: health_check.interval: must be more than 0"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {timeout: 0}\n",
	     "6:29: health_check.timeout: must be more than 0"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {timeout: 3s}\n",
	     "6:29: health_check.timeout: 3s is longer than the interval 2s"},
	    {APP
	     "    origins: 198.51.100.1:80\n    health_check: {interval: 1s, timeout: 1001ms}\n",
	     "6:43: health_check.timeout: 1001ms is longer than the interval 1s"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {rise: 0}\n",
	     "6:26: health_check.rise: 0 out of range (1-100)"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {fall: 101}\n",
	     "6:26: health_check.fall: 101 out of range (1-100)"},
	    {APP "    origins: 198.51.100.1\n    health_check: {port: 65536}\n",
	     "6:26: health_check.port: port 65536 out of range (1-65535)"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {expect: ok}\n",
	     "6:20: health_check: expect needs send"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {send: \"\"}\n",
	     "6:26: health_check.send: empty"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {send: [a]}\n",
	     "6:26: health_check.send: expected a string, got a list"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: {send: \"ok \\u20ac\"}\n",
	     "6:26: health_check.send: \"\xe2\x82\xac\" is not a byte: each character is one "
	     "byte, \\x00 to \\xff; write text in another encoding as its bytes "
	     "(\"\\xe2\\x82\\xac\" for UTF-8)"},
	    {APP "    origins: 198.51.100.1:80\n    health_check: 5\n",
	     "6:19: health_check: expected a mapping of keys, got a single value"},
	    /* passive, dns */
	    {APP "    origins: 198.51.100.1\n    passive: {failures: 1001}\n",
	     "6:25: passive.failures: 1001 out of range (0-1000)"},
	    {APP "    origins: 198.51.100.1\n    passive: {cooldown: 0}\n",
	     "6:25: passive.cooldown: must be more than 0"},
	    {APP "    origins: 198.51.100.1\n    passive: {x: 1}\n",
	     "6:15: unknown key \"x\" in passive of app \"p\" (expected one of: failures, "
	     "cooldown)"},
	    {APP "    origins: 198.51.100.1\n    dns: {refresh: 0}\n",
	     "6:20: dns.refresh: must be more than 0"},
	    {APP "    origins: 198.51.100.1\n    dns: {ttl: 1s}\n",
	     "6:11: unknown key \"ttl\" in dns of app \"p\" (expected one of: refresh)"},
	};
#undef APP
	size_t i;
	int bad = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int before = stub_calls;

		bad += check_error(t[i].yaml, t[i].want);
		if (stub_calls != before)
			print_error("case %zu resolved a name\n", i);
	}
	assert_int_equal(bad, 0);
	assert_int_equal(stub_calls, 0);
}

/* Warnings stop at 100 lines and say how many more there were: one origin
 * list shared by hundreds of apps would print each warning hundreds of
 * times.
 */
static void test_warnings_capped(void **state)
{
	(void)state;
	size_t cap = 64 * 1024, o;
	char *yaml = malloc(cap);
	struct cfg *c;

	assert_non_null(yaml);
	o = (size_t)snprintf(yaml, cap,
			     "apps:\n  - {name: e, edge: 198.51.100.0/24, ports: 7000, origins: "
			     "192.0.2.250:7000}\n");
	for (int i = 0; i < 150; i++)
		o += (size_t)snprintf(yaml + o, cap - o,
				      "  - {name: a%d, edge: 192.0.2.%d, ports: 80, origins: "
				      "198.51.100.10:8000}\n",
				      i, i);
	c = load_ok(yaml);
	assert_non_null(c->warnings);
	assert_int_equal(count_lines(c->warnings), 101);
	assert_non_null(strstr(c->warnings, "is inside the edges of app \"e\""));
	assert_non_null(strstr(c->warnings, "\nt.yaml: warning: 50 more warnings not shown\n"));
	cfg_unref(c);
	free(yaml);
}

/* An app listed again through an alias is refused before it loads again
 * (payloads and all), and so is a list of more apps than claims.
 */
static void test_app_limits(void **state)
{
	(void)state;
	size_t n = 1000001, cap = 2 * n + 64, o;
	char *yaml;

	expect_error("apps:\n  - &a {name: a, edge: 192.0.2.1, ports: 80, origins: "
		     "198.51.100.1:80}\n  - *a\n  - *a\n",
		     "2:3: apps: app 2 is an alias of an app above it; list each app once");
	yaml = malloc(cap);
	assert_non_null(yaml);
	o = (size_t)snprintf(yaml, cap, "apps: [");
	for (size_t i = 0; i < n; i++) {
		yaml[o++] = '0';
		yaml[o++] = ',';
	}
	snprintf(yaml + o - 1, cap - o + 1, "]\n");
	expect_error(yaml, "1:7: apps: 1000001 apps, more than the 1000000 (edge, port range) "
			   "combinations a config may claim in all");
	free(yaml);
}

/* A long payload is refused; so are too many origins. */
static void test_origin_limits(void **state)
{
	(void)state;
	size_t cap = 64 * 1024, o = 0, i;
	char *yaml = malloc(cap);

	assert_non_null(yaml);
	o += (size_t)snprintf(yaml + o, cap - o,
			      "apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: "
			      "198.51.100.1:80, health_check: {send: \"");
	memset(yaml + o, 'x', 1025);
	o += 1025;
	o += (size_t)snprintf(yaml + o, cap - o, "\"}}\n");
	expect_error(yaml, "2:90: health_check.send: 1025 bytes is too long (at most 1024)");
	/* The limit counts bytes sent, not the UTF-8 that holds them. */
	o -= 1025 + 4;
	for (i = 0; i < 1024; i++)
		o += (size_t)snprintf(yaml + o, cap - o, "\\xff");
	snprintf(yaml + o, cap - o, "\"}}\n");
	{
		struct cfg *c = load_ok(yaml);

		assert_int_equal(c->apps[0].health.send_len, 1024);
		cfg_unref(c);
	}

	o = (size_t)snprintf(yaml, cap,
			     "apps:\n  - {name: a, edge: 192.0.2.1, ports: 80, origins: [");
	for (i = 0; i < 1001; i++)
		o += (size_t)snprintf(yaml + o, cap - o, "%s198.51.%zu.%zu", i ? "," : "", i / 250,
				      i % 250);
	snprintf(yaml + o, cap - o, "]}\n");
	expect_error(yaml, "2:52: origins: 1001 origins in one app (at most 1000)");
	free(yaml);
}

/* ---- protection ---- */

static void test_protection_defaults(void **state)
{
	(void)state;
	struct cfg *c = load_ok(app_line);
	const struct cfg_protection *g = &c->protection, *a = &c->apps[0].protection;

	assert_true(c->manage_sysctls);
	assert_int_equal(c->max_conns, 0);
	assert_int_equal(g->unserved, CFG_UNSERVED_DROP);
	assert_null(g->deny);
	assert_int_equal(g->n_deny, 0);
	assert_null(g->allow);
	assert_int_equal(g->n_allow, 0);
	assert_int_equal(g->syn_rate_per_source.n, 0);
	assert_int_equal(g->max_conns_per_source, 0);
	assert_int_equal(g->conn_rate_per_source.n, 0);
	assert_int_equal(g->ban_after, 0);
	assert_int_equal(g->ban_window_ms, 10000);
	assert_int_equal(g->ban_duration_ms, 300000);
	assert_int_equal(g->first_byte_timeout_ms, 0);
	assert_false(g->set_deny);
	assert_false(g->set_allow);
	/* An app without a block has the global values. */
	assert_int_equal(a->unserved, CFG_UNSERVED_DROP);
	assert_null(a->deny);
	assert_null(a->allow);
	assert_int_equal(a->syn_rate_per_source.n, 0);
	assert_int_equal(a->max_conns_per_source, 0);
	assert_int_equal(a->conn_rate_per_source.n, 0);
	assert_int_equal(a->conn_rate_per_source.per_ms, 1000);
	assert_int_equal(a->ban_after, 0);
	assert_int_equal(a->ban_window_ms, 10000);
	assert_int_equal(a->ban_duration_ms, 300000);
	assert_int_equal(a->first_byte_timeout_ms, 0);
	assert_false(a->set_deny);
	assert_false(a->set_allow);
	assert_int_equal(c->apps[0].max_conns, 0);
	cfg_unref(c);

	/* An empty block, or one with no value, is the defaults too. */
	c = load_ok("protection: {}\n");
	assert_int_equal(c->protection.ban_window_ms, 10000);
	cfg_unref(c);
	c = load_ok("protection:\n");
	assert_int_equal(c->protection.ban_duration_ms, 300000);
	cfg_unref(c);
}

/* The example from the issue, with every key. */
static void test_protection_example(void **state)
{
	(void)state;
	struct cfg *c =
	    load_ok("network:\n"
		    "  manage: true\n"
		    "  table: prism\n"
		    "  sysctls: false\n"
		    "protection:\n"
		    "  unserved: reject\n"
		    "  deny: [203.0.113.0/24, \"2001:db8:bad::/48\"]\n"
		    "  allow: []\n"
		    "  syn_rate_per_source: 200/s\n"
		    "  max_conns_per_source: 100\n"
		    "  conn_rate_per_source: 50/s\n"
		    "  ban:\n"
		    "    after: 5\n"
		    "    window: 10s\n"
		    "    duration: 5m\n"
		    "  max_conns: 100000\n"
		    "  first_byte_timeout: 3s\n"
		    "apps:\n"
		    "  - name: game\n"
		    "    edge: 192.0.2.1\n"
		    "    ports: 80\n"
		    "    origins: 198.51.100.1\n"
		    "    max_conns: 5000\n"
		    "    protection: {deny: [198.51.100.0/24], max_conns_per_source: 10}\n"
		    "  - name: web\n"
		    "    edge: 192.0.2.2\n"
		    "    ports: 80\n"
		    "    origins: 198.51.100.1\n");
	const struct cfg_protection *g = &c->protection, *a;
	char buf[ADDR_STRLEN];

	assert_false(c->manage_sysctls);
	assert_int_equal(c->max_conns, 100000);
	assert_int_equal(g->unserved, CFG_UNSERVED_REJECT);
	assert_int_equal(g->n_deny, 2);
	assert_string_equal(addr_fmt_prefix(&g->deny[0], buf), "203.0.113.0/24");
	assert_string_equal(addr_fmt_prefix(&g->deny[1], buf), "2001:db8:bad::/48");
	assert_int_equal(g->n_allow, 0);
	assert_null(g->allow);
	assert_int_equal(g->syn_rate_per_source.n, 200);
	assert_int_equal(g->syn_rate_per_source.per_ms, 1000);
	assert_int_equal(g->max_conns_per_source, 100);
	assert_int_equal(g->conn_rate_per_source.n, 50);
	assert_int_equal(g->conn_rate_per_source.per_ms, 1000);
	assert_int_equal(g->ban_after, 5);
	assert_int_equal(g->ban_window_ms, 10000);
	assert_int_equal(g->ban_duration_ms, 300000);
	assert_int_equal(g->first_byte_timeout_ms, 3000);
	assert_false(g->set_deny);

	/* game: its own deny and per-source cap, the rest inherited. */
	a = &c->apps[0].protection;
	assert_int_equal(c->apps[0].max_conns, 5000);
	assert_true(a->set_deny);
	assert_false(a->set_allow);
	assert_int_equal(a->n_deny, 1);
	assert_string_equal(addr_fmt_prefix(&a->deny[0], buf), "198.51.100.0/24");
	assert_int_equal(a->max_conns_per_source, 10);
	assert_int_equal(a->unserved, CFG_UNSERVED_REJECT);
	assert_int_equal(a->syn_rate_per_source.n, 200);
	assert_int_equal(a->conn_rate_per_source.n, 50);
	assert_int_equal(a->ban_after, 5);
	assert_int_equal(a->first_byte_timeout_ms, 3000);

	/* web: all global, the global deny list included. */
	a = &c->apps[1].protection;
	assert_int_equal(c->apps[1].max_conns, 0);
	assert_false(a->set_deny);
	assert_int_equal(a->n_deny, 2);
	assert_string_equal(addr_fmt_prefix(&a->deny[1], buf), "2001:db8:bad::/48");
	assert_int_equal(a->max_conns_per_source, 100);
	cfg_unref(c);
}

/* An app's block overrides key by key; ban's keys one by one too. */
static void test_protection_override(void **state)
{
	(void)state;
	struct cfg *c =
	    load_ok("protection:\n"
		    "  deny: 203.0.113.7\n"
		    "  allow: [192.0.2.0/24, \"2001:db8::/32\"]\n"
		    "  conn_rate_per_source: 600/m\n"
		    "  ban: {after: 3, window: 1m, duration: 1h}\n"
		    "  first_byte_timeout: 2s\n"
		    "apps:\n"
		    "  - name: a\n"
		    "    edge: 192.0.2.1\n"
		    "    ports: 80\n"
		    "    origins: 198.51.100.1\n"
		    "    protection:\n"
		    "      deny: []\n"
		    "      allow: &l [198.18.0.0/15]\n"
		    "      conn_rate_per_source: 0\n"
		    "      ban: {duration: 7d}\n"
		    "      first_byte_timeout: 0\n"
		    "  - name: b\n"
		    "    edge: 192.0.2.2\n"
		    "    ports: 80\n"
		    "    origins: 198.51.100.1\n"
		    "    protection: {allow: *l, deny: 203.0.113.8, ban: {after: 0}}\n");
	const struct cfg_protection *g = &c->protection, *a = &c->apps[0].protection,
				    *b = &c->apps[1].protection;
	char buf[ADDR_STRLEN];

	assert_int_equal(g->n_deny, 1);
	assert_string_equal(addr_fmt_prefix(&g->deny[0], buf), "203.0.113.7/32");
	assert_int_equal(g->n_allow, 2);
	assert_int_equal(g->conn_rate_per_source.n, 600);
	assert_int_equal(g->conn_rate_per_source.per_ms, 60000);

	/* deny: [] replaces the global list with none. */
	assert_true(a->set_deny);
	assert_int_equal(a->n_deny, 0);
	assert_true(a->set_allow);
	assert_int_equal(a->n_allow, 1);
	assert_string_equal(addr_fmt_prefix(&a->allow[0], buf), "198.18.0.0/15");
	assert_int_equal(a->conn_rate_per_source.n, 0);
	assert_int_equal(a->ban_after, 3);
	assert_int_equal(a->ban_window_ms, 60000);
	assert_int_equal(a->ban_duration_ms, 7u * 86400000u);
	assert_int_equal(a->first_byte_timeout_ms, 0);

	/* The same aliased list in two apps: each owns its copy (ASan checks
	 * the free).
	 */
	assert_true(b->set_allow);
	assert_int_equal(b->n_allow, 1);
	assert_ptr_not_equal(a->allow, b->allow);
	assert_int_equal(b->n_deny, 1);
	assert_string_equal(addr_fmt_prefix(&b->deny[0], buf), "203.0.113.8/32");
	assert_int_equal(b->ban_after, 0);
	assert_int_equal(b->ban_window_ms, 60000);
	assert_int_equal(b->ban_duration_ms, 3600000);
	assert_int_equal(b->conn_rate_per_source.n, 600);
	assert_int_equal(b->first_byte_timeout_ms, 2000);
	cfg_unref(c);
}

static void test_rates(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		uint32_t n, per_ms; /* n 0 and per_ms 0: refused */
	} t[] = {
	    {"0", 0, 1000},
	    {"1/s", 1, 1000},
	    {"200/s", 200, 1000},
	    {"30/m", 30, 60000},
	    {"10000000/s", 10000000, 1000},
	    {"10000000/m", 10000000, 60000},
	    {"0/s", 0, 0},
	    {"10000001/s", 0, 0},
	    {"99999999999999999999999/s", 0, 0},
	    {"200", 0, 0},
	    {"200/h", 0, 0},
	    {"200/S", 0, 0},
	    {"200/sec", 0, 0},
	    {"200 /s", 0, 0},
	    {"/s", 0, 0},
	    {"-1/s", 0, 0},
	    {"1.5/s", 0, 0},
	    {"200/s/s", 0, 0},
	    {"off", 0, 0},
	};
	size_t i;
	int bad = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char yaml[128];
		struct cfg *c = NULL;
		char *errors = NULL;
		int rc;

		snprintf(yaml, sizeof(yaml), "protection: {conn_rate_per_source: \"%s\"}\n",
			 t[i].s);
		rc = cfg_load_buf("t.yaml", yaml, strlen(yaml), &c, &errors);
		if (t[i].per_ms == 0) {
			if (rc != -EINVAL || !errors ||
			    !strstr(errors, "t.yaml:1:36: protection.conn_rate_per_source: ")) {
				print_error("\"%s\": want an error, got %d %s\n", t[i].s, rc,
					    errors ? errors : "");
				bad = 1;
			}
		} else if (rc != 0 || c->protection.conn_rate_per_source.n != t[i].n ||
			   c->protection.conn_rate_per_source.per_ms != t[i].per_ms) {
			print_error("\"%s\": want %u per %u ms, got %d %s\n", t[i].s, t[i].n,
				    t[i].per_ms, rc, errors ? errors : "");
			bad = 1;
		}
		free(errors);
		cfg_unref(c);
	}
	if (bad)
		fail();
}

static void test_protection_errors(void **state)
{
	(void)state;
	static const struct {
		const char *yaml, *want;
	} t[] = {
	    {"network: {sysctls: yes}\n",
	     "1:20: network.sysctls: \"yes\" is not a boolean (expected true or false)"},
	    {"protection: {unserved: accept}\n",
	     "1:24: protection.unserved: \"accept\" is not one of: drop, reject"},
	    {"protection: {denny: []}\n",
	     "1:14: unknown key \"denny\" in protection (expected one of: unserved, deny, allow, "
	     "syn_rate_per_source, max_conns_per_source, conn_rate_per_source, ban, max_conns, "
	     "first_byte_timeout)"},
	    {"protection: [deny]\n", "1:13: protection: expected a mapping of keys, got a list"},
	    {"protection: {deny: 203.0.113.1/24}\n",
	     "1:20: protection.deny: 203.0.113.1/24 has host bits set; did you mean "
	     "203.0.113.0/24?"},
	    {"protection: {allow: [192.0.2.0/24, \"2001:db8::1/32\"]}\n",
	     "1:36: protection.allow: 2001:db8::1/32 has host bits set; did you mean "
	     "2001:db8::/32?"},
	    /* No hint that would be refused in turn. */
	    {"protection: {deny: [\"::ffff:192.0.2.1/24\"]}\n",
	     "1:21: protection.deny: ::ffff:192.0.2.1/24 has host bits set; the length of an "
	     "IPv4-mapped address counts IPv6 bits (an IPv4 /24 is /120): write IPv4 prefixes "
	     "as IPv4"},
	    {"protection: {deny: [\"::ffff:0:0/95\"]}\n",
	     "1:21: protection.deny: ::ffff:0:0/95 has host bits set\n"},
	    {"protection: {deny: [\"::/0\"]}\n",
	     "1:21: protection.deny: ::/0 includes the IPv4-mapped range ::ffff:0:0/96"},
	    {"protection: {deny: [\"::/80\"]}\n",
	     "1:21: protection.deny: ::/80 includes the IPv4-mapped range"},
	    {"protection: {deny: [evil.example]}\n",
	     "1:21: protection.deny: \"evil.example\" is not a valid address or prefix: "},
	    {"protection: {deny: {a: 1}}\n",
	     "1:20: protection.deny: expected an address or prefix or a list of them, got a "
	     "mapping"},
	    {"protection: {deny: [[1]]}\n",
	     "1:21: protection.deny: expected an address or prefix, got a list"},
	    {"protection: {deny: [203.0.113.0/24, 192.0.2.1, 203.0.113.0/24]}\n",
	     "1:48: protection.deny: 203.0.113.0/24 is listed twice (first at line 1)"},
	    {"protection:\n  allow:\n    - 198.18.0.0/15\n    - 198.18.4.0/24\n",
	     "4:7: protection.allow: 198.18.4.0/24 is inside 198.18.0.0/15 (line 3); list each "
	     "range once"},
	    {"protection:\n  allow:\n    - 198.18.4.0/24\n    - 198.18.0.0/15\n",
	     "3:7: protection.allow: 198.18.4.0/24 is inside 198.18.0.0/15 (line 4)"},
	    {"protection: {syn_rate_per_source: 5}\n",
	     "1:35: protection.syn_rate_per_source: \"5\" is not a rate (expected a number per "
	     "second or minute, e.g. 200/s or 30/m; or 0 for off)"},
	    {"protection: {syn_rate_per_source: 20000000/s}\n",
	     "1:35: protection.syn_rate_per_source: \"20000000/s\" out of range (1-10000000 per "
	     "second or per minute, or 0 for off)"},
	    {"protection: {max_conns_per_source: -1}\n",
	     "1:36: protection.max_conns_per_source: \"-1\" is not a number (0-10000000)"},
	    {"protection: {max_conns: 10000001}\n",
	     "1:25: protection.max_conns: 10000001 out of range (0-10000000)"},
	    {"protection: {ban: {after: 1001}}\n",
	     "1:27: protection.ban.after: 1001 out of range (0-1000)"},
	    {"protection: {ban: {window: 0}}\n",
	     "1:28: protection.ban.window: must be more than 0"},
	    {"protection: {ban: {duration: 0}}\n",
	     "1:30: protection.ban.duration: must be more than 0"},
	    {"protection: {ban: {duration: 8d}}\n",
	     "1:30: protection.ban.duration: 8d is too long (at most 7d)"},
	    {"protection: {ban: {duration: 5 min}}\n",
	     "1:30: protection.ban.duration: \"5 min\" is not a duration"},
	    {"protection: {ban: {for: 1s}}\n",
	     "1:20: unknown key \"for\" in protection.ban (expected one of: after, window, "
	     "duration)"},
	    {"protection: {ban: 5}\n",
	     "1:19: protection.ban: expected a mapping of keys, got a single value"},
	    {"protection: {first_byte_timeout: soon}\n",
	     "1:34: protection.first_byte_timeout: \"soon\" is not a duration"},
	    /* In an app. */
	    {"apps:\n  - {name: a, protection: {unserved: reject}}\n",
	     "2:28: protection.unserved is global only (it applies to ports no app claims); set "
	     "it in the top-level protection block"},
	    {"apps:\n  - {name: a, protection: {syn_rate_per_source: 1/s}}\n",
	     "2:28: protection.syn_rate_per_source is global only (one nftables limit per source "
	     "address); set it in the top-level protection block"},
	    {"apps:\n  - {name: a, protection: {max_conns: 5}}\n",
	     "2:28: protection.max_conns is global only (the whole process); an app's own cap "
	     "is its max_conns key, beside protection"},
	    {"apps:\n  - {name: a, protection: {x: 1}}\n",
	     "2:28: unknown key \"x\" in protection of app \"a\" (expected one of: deny, allow, "
	     "max_conns_per_source, conn_rate_per_source, ban, first_byte_timeout)"},
	    {"apps:\n  - {name: a, protection: {ban: {x: 1}}}\n",
	     "2:34: unknown key \"x\" in protection.ban of app \"a\" (expected one of: after, "
	     "window, duration)"},
	    {"apps:\n  - {name: a, protection: {deny: [192.0.2.1/31]}}\n",
	     "2:35: protection.deny: 192.0.2.1/31 has host bits set; did you mean 192.0.2.0/31?"},
	    {"apps:\n  - {name: a, protection: {conn_rate_per_source: 5/d}}\n",
	     "2:50: protection.conn_rate_per_source: \"5/d\" is not a rate"},
	    {"apps:\n  - {name: a, max_conns: lots}\n",
	     "2:26: max_conns: \"lots\" is not a number (0-10000000)"},
	    {"apps:\n  - {name: a, protection: on}\n",
	     "2:27: protection: expected a mapping of keys, got a single value"},
	};
	size_t i;
	int bad = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		bad |= check_error(t[i].yaml, t[i].want);
	if (bad)
		fail();
}

/* Every problem of the block at once, in the global block and an app's. */
static void test_protection_several_errors(void **state)
{
	(void)state;
	char *e = load_bad("protection:\n"
			   "  unserved: maybe\n"
			   "  deny: [1.2.3.4/8]\n"
			   "  ban: {after: x, window: 0}\n"
			   "apps:\n"
			   "  - name: a\n"
			   "    edge: 192.0.2.1\n"
			   "    ports: 80\n"
			   "    origins: 198.51.100.1\n"
			   "    protection: {unserved: drop, max_conns: 1, allow: [\"::/0\"]}\n");

	assert_int_equal(count_lines(e), 7);
	assert_non_null(strstr(e, "t.yaml:2:13: protection.unserved:"));
	assert_non_null(strstr(e, "t.yaml:3:10: protection.deny:"));
	assert_non_null(strstr(e, "t.yaml:4:16: protection.ban.after:"));
	assert_non_null(strstr(e, "t.yaml:4:27: protection.ban.window:"));
	assert_non_null(strstr(e, "t.yaml:10:18: protection.unserved is global only"));
	assert_non_null(strstr(e, "t.yaml:10:34: protection.max_conns is global only"));
	assert_non_null(strstr(e, "t.yaml:10:56: protection.allow: ::/0 includes"));
	free(e);
}

/* At most 65536 prefixes per list. */
/* A file whose aliases multiply what it holds is refused at a bound, not
 * parsed into a copy per use: a 65,536-prefix list used by 16 apps is over
 * 1,000,000 listed prefixes, a 1,000-origin list used by 501 apps over
 * 500,000 origins. And a wide app whose port entries each nested edge
 * would copy is refused before its table takes gigabytes.
 */
static void test_alias_and_nesting_bounds(void **state)
{
	char *yaml = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	f = open_memstream(&yaml, &len);
	assert_non_null(f);
	fputs("protection:\n  deny: &big [", f);
	for (unsigned i = 0; i < 65536; i++)
		fprintf(f, "%s10.%u.%u.0/24", i ? ", " : "", i >> 8, i & 255);
	fputs("]\napps:\n", f);
	for (unsigned a = 0; a < 16; a++)
		fprintf(f,
			"  - {name: a%u, edge: 192.0.2.%u, ports: 80, origins: 198.51.100.1, "
			"protection: {deny: *big}}\n",
			a, a + 1);
	assert_int_equal(fclose(f), 0);
	expect_error(yaml, "2:9: protection.deny: more than 1000000 prefixes in deny and allow "
			   "lists in all (a list used through an alias counts each time)");
	free(yaml);

	f = open_memstream(&yaml, &len);
	assert_non_null(f);
	fputs("apps:\n  - {name: a0, edge: 192.0.2.1, ports: 80, origins: &pool [", f);
	for (unsigned i = 0; i < 1000; i++)
		fprintf(f, "%s\"198.51.%u.%u:80\"", i ? ", " : "", 100 + i / 250, 1 + i % 250);
	fputs("]}\n", f);
	for (unsigned a = 1; a < 501; a++)
		fprintf(f, "  - {name: a%u, edge: 192.0.%u.%u, ports: 80, origins: *pool}\n", a,
			2 + a / 250, 1 + a % 250);
	assert_int_equal(fclose(f), 0);
	expect_error(yaml, "2:53: origins: more than 500000 origins over all apps");
	free(yaml);

	f = open_memstream(&yaml, &len);
	assert_non_null(f);
	fputs("apps:\n  - {name: wide, edge: 10.0.0.0/8, origins: 198.51.100.1, ports: [", f);
	for (unsigned p = 1; p < 65536; p += 2)
		fprintf(f, "%s%u", p > 1 ? ", " : "", p);
	fputs("]}\n", f);
	for (unsigned a = 0; a < 300; a++)
		fprintf(f, "  - {name: n%u, edge: 10.0.%u.%u, ports: 2, origins: 198.51.100.1}\n",
			a, a / 250, 1 + a % 250);
	assert_int_equal(fclose(f), 0);
	expect_error(yaml, "2:3: apps: the routing table would hold more than 8388608 port "
			   "intervals");
	free(yaml);

	/* Edge and port lists: a 65,536-entry list used by 16 apps is over
	 * 1,000,000 entries, refused before the copies are made (before, the
	 * bound came after them: 8 GB for 3,000 uses).
	 */
	for (int k = 0; k < 2; k++) {
		f = open_memstream(&yaml, &len);
		assert_non_null(f);
		fprintf(f, "apps:\n  - {name: a0, origins: 198.51.100.1, %s: &l [",
			k ? "edge: 10.0.0.0/8, ports" : "ports: 80, edge");
		for (unsigned i = 0; i < 65535; i++) {
			if (k)
				fprintf(f, "%s%u", i ? ", " : "", i + 1);
			else
				fprintf(f, "%s10.0.%u.%u", i ? ", " : "", i >> 8, i & 255);
		}
		fputs("]}\n", f);
		for (unsigned a = 1; a < 16; a++)
			fprintf(f, "  - {name: a%u, origins: 198.51.100.1, %s: *l}\n", a,
				k ? "edge: 192.0.2.1, ports" : "ports: 81, edge");
		assert_int_equal(fclose(f), 0);
		expect_error(yaml,
			     k ? "2:64: ports: more than 1000000 entries of ports lists in all"
			       : "2:56: edge: more than 1000000 entries of edge lists in all");
		free(yaml);
	}
}

/* Messages a review found wrong: each says what is wrong, and only that. */
static void test_exact_messages(void **state)
{
#define APP1 "apps:\n  - name: p\n    edge: 192.0.2.1\n    ports: \"8000-8009\"\n"
	struct cfg *c;
	char *e;

	(void)state;
	/* Not "expected 1 to 65535". */
	e = load_bad(APP1 "    origins: 198.51.100.10:080\n");
	assert_non_null(strstr(e, "t.yaml:5:14: origins: \"198.51.100.10:080\" is not a valid "
				  "origin: bad port: no leading zeros (write 80, not 080)\n"));
	free(e);
	/* Two ranges that start alike are two origins. */
	e = load_bad(APP1 "    origins: [{address: 198.51.100.1, port: \"9000-9009\"}, {address: "
			  "198.51.100.1, port: \"9000-9005\"}]\n");
	assert_null(strstr(e, "listed twice"));
	assert_int_equal(count_lines(e), 1);
	free(e);
	/* A count of 16 digits or more is a number out of range (or in it). */
	e = load_bad("protection: {conn_rate_per_source: 99999999999999999/s}\n");
	assert_non_null(strstr(e, "t.yaml:1:36: protection.conn_rate_per_source: "
				  "\"99999999999999999/s\" out of range"));
	free(e);
	c = load_ok("protection: {conn_rate_per_source: 0000000000000002/s}\n");
	assert_int_equal(c->protection.conn_rate_per_source.n, 2);
	cfg_unref(c);
	/* A health_check that is no mapping: that error alone. */
	e = load_bad(APP1 "    origins: 198.51.100.1\n    health_check: 5\n");
	assert_non_null(strstr(e, "t.yaml:6:19: health_check: expected a mapping of keys"));
	assert_int_equal(count_lines(e), 1);
	free(e);
#undef APP1
}

/* Collections nested deeper than 64 levels are refused before libyaml
 * composes them: its scanner works per token in proportion to the flow
 * depth, so a 2 MB file of brackets ran for over 11 minutes.
 */
static void test_nesting_depth(void **state)
{
	char yaml[400];
	int n;

	(void)state;
	for (int depth = 64; depth <= 65; depth++) {
		/* Brackets elsewhere too, so that the pass runs at 64 as well. */
		n = snprintf(yaml, sizeof(yaml), "x: [1]\napps: ");
		for (int i = 0; i < depth; i++)
			yaml[n++] = '[';
		for (int i = 0; i < depth; i++)
			yaml[n++] = ']';
		yaml[n++] = '\n';
		yaml[n] = '\0';
		if (depth == 65) {
			expect_error(yaml,
				     "2:71: [ ] and { } nested more than 64 levels deep here");
		} else {
			char *errors = load_bad(yaml); /* refused, but not for its depth */

			assert_null(strstr(errors, "nested more than"));
			assert_non_null(strstr(errors, "unknown key \"x\""));
			free(errors);
		}
	}
}

/* More problems than are kept (1,000): the earliest by position are the
 * ones kept, also one found late. The loop check runs after every app is
 * read, so the origin of app 1 that dials its own edge (line 2) was found
 * after the 1,000 unknown keys below it, and dropped.
 */
static void test_many_errors_keep_the_first(void **state)
{
	char *yaml = NULL, *errors;
	size_t len = 0;
	FILE *f = open_memstream(&yaml, &len);

	(void)state;
	assert_non_null(f);
	fputs("apps:\n  - {name: a, edge: 192.0.2.0/24, ports: 80, origins: 192.0.2.7}\n", f);
	for (unsigned a = 0; a < 1000; a++)
		fprintf(f,
			"  - {name: b%u, edge: 10.0.%u.%u, ports: 80, origins: 198.51.100.1, "
			"bogus: 1}\n",
			a, a / 250, 1 + a % 250);
	assert_int_equal(fclose(f), 0);
	errors = load_bad(yaml);
	assert_true(strncmp(errors, "t.yaml:2:", 9) == 0);
	assert_non_null(strstr(errors, "prism would relay to itself"));
	assert_non_null(strstr(errors, "t.yaml: 901 more problems not shown\n"));
	free(errors);
	free(yaml);
}

static void test_protection_limits(void **state)
{
	(void)state;
	size_t cap = 2 * 1024 * 1024, o = 0, i;
	char *yaml = malloc(cap);
	struct cfg *c;

	assert_non_null(yaml);
	o += (size_t)snprintf(yaml + o, cap - o, "protection:\n  deny: [");
	for (i = 0; i < 65536; i++)
		o += (size_t)snprintf(yaml + o, cap - o, "%s10.%zu.%zu.0/24", i ? "," : "", i / 256,
				      i % 256);
	snprintf(yaml + o, cap - o, "]\n%s", app_line);
	c = load_ok(yaml);
	assert_int_equal(c->protection.n_deny, 65536);
	assert_ptr_equal(c->apps[0].protection.deny, c->protection.deny);
	cfg_unref(c);
	snprintf(yaml + o, cap - o, ",10.0.0.0/8]\n");
	expect_error(yaml, "2:9: protection.deny: 65537 prefixes (at most 65536");
	free(yaml);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_log_buffer_sizes),
	    cmocka_unit_test(test_every_key),
	    cmocka_unit_test(test_durations),
	    cmocka_unit_test(test_off_is_a_string),
	    cmocka_unit_test(test_lists_and_scalars),
	    cmocka_unit_test(test_aliases),
	    cmocka_unit_test(test_workers),
	    cmocka_unit_test(test_error_positions),
	    cmocka_unit_test(test_app_errors),
	    cmocka_unit_test(test_overlaps),
	    cmocka_unit_test(test_several_errors),
	    cmocka_unit_test(test_duplicate_names),
	    cmocka_unit_test(test_many_errors_capped),
	    cmocka_unit_test(test_message_quoting),
	    cmocka_unit_test(test_load_file),
	    cmocka_unit_test(test_claims_cap),
	    cmocka_unit_test(test_refs),
	    cmocka_unit_test_setup_teardown(test_origins_example, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_no_resolve, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_origin_defaults, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_origin_forms, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_origin_names, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_origin_errors, use_stub, restore_resolver),
	    cmocka_unit_test_setup_teardown(test_origin_limits, use_stub, restore_resolver),
	    cmocka_unit_test(test_app_limits),
	    cmocka_unit_test(test_warnings_capped),
	    cmocka_unit_test(test_protection_defaults),
	    cmocka_unit_test(test_protection_example),
	    cmocka_unit_test(test_protection_override),
	    cmocka_unit_test(test_rates),
	    cmocka_unit_test(test_protection_errors),
	    cmocka_unit_test(test_protection_several_errors),
	    cmocka_unit_test(test_protection_limits),
	    cmocka_unit_test(test_many_errors_keep_the_first),
	    cmocka_unit_test(test_alias_and_nesting_bounds),
	    cmocka_unit_test(test_nesting_depth),
	    cmocka_unit_test(test_exact_messages),
	};

	saved_resolver = cfg_resolver;
	return cmocka_run_group_tests(tests, NULL, NULL);
}

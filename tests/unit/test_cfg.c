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

static void test_every_key(void **state)
{
	(void)state;
	const char *yaml = "log_level: debug\n"
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
	assert_true(a->origins[0].has_port);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&a->origins[0].addr, buf),
			    "198.51.100.10:2222");
	assert_int_equal(a->proxy_protocol, PP_V2);
	assert_int_equal(a->connect_timeout_ms, 2000);
	assert_int_equal(a->idle_timeout_ms, 3600000);
	assert_int_equal(a->pos.line, 15);
	assert_int_equal(a->pos.col, 5);

	a = &c->apps[1];
	assert_string_equal(a->name, "web.v6-1_x");
	assert_int_equal(a->n_edges, 2);
	assert_string_equal(addr_fmt_prefix(&a->edges[1], buf), "2001:db8:1::/48");
	assert_int_equal(a->n_ports, 2);
	assert_int_equal(a->ports[1].lo, 8000);
	assert_int_equal(a->ports[1].hi, 8999);
	assert_int_equal(a->n_origins, 3);
	assert_false(a->origins[0].has_port);
	assert_string_equal(addr_fmt_sa((struct sockaddr *)&a->origins[1].addr, buf),
			    "[2001:db8::20]:8080");
	assert_false(a->origins[2].has_port);
	assert_int_equal(a->origins[2].addr.ss_family, AF_INET6);
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
	    {"listne: {}\n", "1:1: unknown key \"listne\" at top level (expected one of: listen, "
			     "network, timeouts, shutdown_grace, apps, log_level)"},
	    {"apps:\n  - name: web\n    edgee: 192.0.2.1\n",
	     "3:5: unknown key \"edgee\" in app \"web\" (expected one of: name, protocol, edge, "
	     "ports, origins, proxy_protocol, timeouts)"},
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

	/* Nesting is no conflict: the more specific claim wins. */
	struct cfg *c =
	    load_ok("apps:\n"
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
			   "    origins: nowhere\n";
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
			   "t.yaml:12:14: origins: \"nowhere\" is not a valid origin: not an IP "
			   "address (expected e.g. 198.51.100.10:22 or [2001:db8::10]:22)\n";
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
			       "of: listen, network, timeouts, shutdown_grace, apps, log_level)\n");
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
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
	    cmocka_unit_test(test_many_errors_capped),
	    cmocka_unit_test(test_message_quoting),
	    cmocka_unit_test(test_load_file),
	    cmocka_unit_test(test_refs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

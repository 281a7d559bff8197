/* main.c - command line: parse arguments, load the config, hand off.
 *
 *   prism run -c FILE        serve in the foreground
 *   prism check -c FILE      validate a config
 *   prism net up|down|show -c FILE
 *   prism version | help [CMD] | --help
 *
 * Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "cfg.h"
#include "log.h"
#include "ban.h"
#include "dns.h"
#include "guard.h"
#include "hc.h"
#include "netsetup.h"
#include "origin.h"
#include "worker.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *help;
};

static int cmd_run(int argc, char **argv);
static int cmd_check(int argc, char **argv);
static int cmd_net(int argc, char **argv);
static int cmd_version(int argc, char **argv);
static int cmd_ban(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
    {"run", cmd_run, "prism run -c FILE",
     "Serve in the foreground, logging to stderr. Installs the AnyIP routes and\n"
     "the nftables table the config implies (unless network.manage: false),\n"
     "prints a line containing \"ready\" once it accepts traffic, and removes\n"
     "them again on exit. SIGTERM/SIGINT/SIGQUIT: stop accepting, let open\n"
     "connections finish for up to shutdown_grace, then exit 0; a second signal\n"
     "closes them at once. SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored.\n"},
    {"check", cmd_check, "prism check -c FILE",
     "Validate FILE. Prints \"ok\" and exits 0, or prints one\n"
     "FILE:LINE:COL: message line per problem and exits 2.\n"},
    {"net", cmd_net, "prism net up|down|show -c FILE | prism net down -t NAME",
     "up    install the AnyIP routes and the nftables table (idempotent)\n"
     "down  remove prism's nftables table and every route tagged as this\n"
     "      instance's (protocol 249, the table's metric); nothing else is\n"
     "      touched. -t NAME names the table (network.table, default\n"
     "      \"prism\") instead of a config: for when FILE is gone or broken\n"
     "show  print what \"up\" would install, changing nothing\n"
     "up and down are refused while a `prism run` holds the table in this\n"
     "network namespace.\n"},
    {"ban", cmd_ban, "prism ban list|add|del [ADDR [DURATION]] -c FILE",
     "list          the sources in the kernel ban set, with the time left\n"
     "add ADDR [D]  ban ADDR (IPv4; IPv6: its /64) for duration D (default:\n"
     "              the configured protection.ban.duration, else 5m)\n"
     "del ADDR      lift the ban on ADDR (IPv6: on its /64)\n"
     "Bans live in prism's nftables table and expire in the kernel, even if\n"
     "prism is not running.\n"},
    {"version", cmd_version, "prism version", "Print the version.\n"},
    {"help", cmd_help, "prism help [COMMAND]", "Show help for COMMAND.\n"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
	fprintf(out, "prism - Layer-4 edge proxy: any address, any port, whole prefixes\n\n"
		     "usage:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(out, "  %s\n", commands[i].usage);
	fprintf(out, "\nSee \"prism help COMMAND\" and docs/config.md.\n");
}

static const struct command *command_find(const char *name)
{
	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/* Describes the option getopt_long just refused: the
 * letter of a short one, which may sit inside a cluster ("-xc"), so that
 * argv[optind - 1] is not it; a -c without its FILE says so.
 */
static const char *bad_option(char **argv)
{
	static char buf[80];

	if (optopt == 'c')
		return "option -c needs a FILE";
	if (optopt == 't')
		return "option -t needs a NAME";
	if (optopt)
		snprintf(buf, sizeof(buf), "bad option -%c", optopt);
	else
		snprintf(buf, sizeof(buf), "bad option %.60s", argv[optind - 1]);
	return buf;
}

/* Parses "-c FILE" / "--config FILE" after the command word. Returns the
 * path, or NULL after printing a usage error.
 */
static const char *parse_config_opt(int argc, char **argv, const struct command *cmd)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	int o;

	optind = 1;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+c:", opts, NULL)) != -1) {
		if (o == 'c') {
			path = optarg;
		} else {
			fprintf(stderr, "prism %s: %s\nusage: %s\n", cmd->name, bad_option(argv),
				cmd->usage);
			return NULL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "prism %s: unexpected argument \"%s\"\nusage: %s\n", cmd->name,
			argv[optind], cmd->usage);
		return NULL;
	}
	if (!path)
		fprintf(stderr, "prism %s: missing -c FILE\nusage: %s\n", cmd->name, cmd->usage);
	return path;
}

/* Loads <path> with cfg_load_flags' <flags>; on failure prints the problems
 * and returns NULL.
 */
static struct cfg *load(const char *path, unsigned flags)
{
	struct cfg *cfg = NULL;
	char *errors = NULL;

	if (cfg_load_flags(path, flags, &cfg, &errors) < 0) {
		fputs(errors ? errors : "prism: cannot load config\n", stderr);
		free(errors);
		return NULL;
	}
	free(errors);
	if (cfg->warnings)
		fputs(cfg->warnings, stderr);
	log_max_level = (enum log_level)cfg->log_level;
	if (cfg->n_apps == 0)
		log_warn("%s: no apps configured: prism will accept nothing", path);
	return cfg;
}

static int cmd_check(int argc, char **argv)
{
	const char *path = parse_config_opt(argc, argv, command_find("check"));
	struct cfg *cfg;

	if (!path)
		return EXIT_USAGE;
	cfg = load(path, 0);
	if (!cfg)
		return EXIT_USAGE;
	printf("ok\n");
	cfg_unref(cfg);
	if (fflush(stdout) != 0) {
		fprintf(stderr, "prism check: cannot write the result: %s\n", strerror(errno));
		return EXIT_RUNTIME;
	}
	return 0;
}

/* The signals that stop prism (SIGHUP too: it would by default). */
static void stop_sigset(sigset_t *s)
{
	sigemptyset(s);
	sigaddset(s, SIGINT);
	sigaddset(s, SIGTERM);
	sigaddset(s, SIGHUP);
	sigaddset(s, SIGQUIT);
}

static int cmd_net(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"table", required_argument, NULL, 't'},
	    {NULL, 0, NULL, 0},
	};
	const struct command *cmd = command_find("net");
	const char *path = NULL, *table = NULL, *verb;
	struct cfg *cfg = NULL;
	char *err = NULL;
	int o, r = 0;

	if (argc < 2 ||
	    (strcmp(argv[1], "up") && strcmp(argv[1], "down") && strcmp(argv[1], "show"))) {
		fprintf(stderr, "usage: %s\n", cmd->usage);
		return EXIT_USAGE;
	}
	verb = argv[1];
	optind = 1;
	opterr = 0;
	while ((o = getopt_long(argc - 1, argv + 1, "+c:t:", opts, NULL)) != -1) {
		if (o == 'c') {
			path = optarg;
		} else if (o == 't' && !strcmp(verb, "down")) {
			table = optarg;
		} else {
			fprintf(stderr, "prism net %s: %s\nusage: %s\n", verb,
				o == 't' ? "-t NAME is for net down only" : bad_option(argv + 1),
				cmd->usage);
			return EXIT_USAGE;
		}
	}
	if (optind < argc - 1) {
		fprintf(stderr, "prism net %s: unexpected argument \"%s\"\nusage: %s\n", verb,
			argv[optind + 1], cmd->usage);
		return EXIT_USAGE;
	}
	if (!path == !table) {
		fprintf(stderr, "prism net %s: %s\nusage: %s\n", verb,
			path			? "give -c FILE or -t NAME, not both"
			: !strcmp(verb, "down") ? "missing -c FILE or -t NAME"
						: "missing -c FILE",
			cmd->usage);
		return EXIT_USAGE;
	}
	if (path) {
		/* Taking things down must not wait for DNS: it may be what is
		 * down.
		 */
		cfg = load(path, !strcmp(verb, "down") ? CFG_NO_RESOLVE : 0);
		if (!cfg)
			return EXIT_USAGE;
		table = cfg->nft_table;
	} else if (net_check_table(table, &err) < 0) {
		fprintf(stderr, "prism net down: %s\n", err);
		free(err);
		return EXIT_USAGE;
	}
	if (!strcmp(verb, "show")) {
		r = net_show(cfg, stdout);
		if (r < 0)
			fprintf(stderr, "prism net show: %s\n", strerror(-r));
	} else {
		sigset_t sigs, old_sigs;
		int lock_fd = -1;

		/* A signal between the routes and the table would leave one
		 * without the other: it waits until both are done.
		 */
		stop_sigset(&sigs);
		sigprocmask(SIG_BLOCK, &sigs, &old_sigs);
		r = !strcmp(verb, "up") ? net_check(&err) : 0;
		if (r == 0)
			r = lock_fd = net_table_lock(table, &err);
		if (r >= 0)
			r = !strcmp(verb, "up") ? net_up(cfg, &err) : net_down(table, &err);
		if (lock_fd >= 0)
			close(lock_fd);
		if (r < 0)
			fprintf(stderr, "prism net %s: %s\n", verb, err ? err : strerror(-r));
		else if (r == 1)
			fprintf(
			    stderr,
			    "prism net down: nothing to remove: no nftables table inet %s and no "
			    "routes of it in this network namespace\n",
			    table);
		sigprocmask(SIG_SETMASK, &old_sigs, NULL);
	}
	free(err);
	if (cfg)
		cfg_unref(cfg);
	return r < 0 ? EXIT_RUNTIME : 0;
}

static int cmd_ban(int argc, char **argv)
{
	const struct command *cmd = command_find("ban");
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = NULL, *verb, *pos[2] = {NULL, NULL};
	struct addr_prefix p;
	const char *why;
	struct cfg *cfg;
	char *err = NULL;
	int o, npos = 0, r = 0;
	uint32_t dur;

	optind = 1;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
		if (o != 'c') {
			fprintf(stderr, "prism ban: %s\nusage: %s\n", bad_option(argv), cmd->usage);
			return EXIT_USAGE;
		}
		path = optarg;
	}
	verb = optind < argc ? argv[optind++] : NULL;
	while (optind < argc && npos < 2)
		pos[npos++] = argv[optind++];
	if (!verb || optind < argc || !path ||
	    !((!strcmp(verb, "list") && npos == 0) || (!strcmp(verb, "add") && npos >= 1) ||
	      (!strcmp(verb, "del") && npos == 1))) {
		fprintf(stderr, "usage: %s\n", cmd->usage);
		return EXIT_USAGE;
	}
	if (pos[0] && addr_parse_prefix(pos[0], &p, &why) < 0) {
		fprintf(stderr, "prism ban: %s is not an address\n", pos[0]);
		return EXIT_USAGE;
	}
	/* A source is an IPv4 address or an IPv6 /64, which `ban list`
	 * prints as 2001:db8:5::/64: any prefix within one source names it.
	 */
	if (pos[0] && p.len != 128 && (addr_is_v4(&p.addr) || p.len < 64)) {
		fprintf(stderr,
			"prism ban: %s is more than one source (an IPv4 address, or an IPv6 "
			"address or /64)\n",
			pos[0]);
		return EXIT_USAGE;
	}
	cfg = load(path, CFG_NO_RESOLVE);
	if (!cfg)
		return EXIT_USAGE;
	dur = cfg->protection.ban_duration_ms ? cfg->protection.ban_duration_ms : 300000;
	if (pos[1] && (cfg_parse_duration(pos[1], &dur) < 0 || dur == 0)) {
		fprintf(stderr, "prism ban: %s is not a duration (e.g. 90s, 5m, 1h)\n", pos[1]);
		cfg_unref(cfg);
		return EXIT_USAGE;
	}
	if (!strcmp(verb, "list"))
		r = ban_list(cfg->nft_table, stdout, &err);
	else if (!strcmp(verb, "add"))
		r = ban_add(NULL, cfg->nft_table, &p.addr, dur, NULL, &err);
	else
		r = ban_del(cfg->nft_table, &p.addr, &err);
	if (r < 0)
		fprintf(stderr, "prism ban %s: %s\n", verb, err ? err : strerror(-r));
	free(err);
	cfg_unref(cfg);
	return r < 0 ? EXIT_RUNTIME : 0;
}

static int cmd_version(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	printf("prism %s\n", PRISM_VERSION);
	return 0;
}

static int cmd_help(int argc, char **argv)
{
	const struct command *cmd;

	if (argc < 2) {
		usage(stdout);
		return 0;
	}
	cmd = command_find(argv[1]);
	if (!cmd) {
		fprintf(stderr, "prism help: unknown command \"%s\"\n", argv[1]);
		usage(stderr);
		return EXIT_USAGE;
	}
	printf("usage: %s\n\n%s", cmd->usage, cmd->help);
	return 0;
}

/* Two fds per proxied connection plus pipes in flight: take all the fds
 * the hard limit allows.
 */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int read_sysctl(const char *path, int *a, int *b)
{
	FILE *f = fopen(path, "r");
	int n;

	if (!f)
		return 0;
	n = fscanf(f, "%d %d", a, b);
	fclose(f);
	return n;
}

/* prism sends the origin its FIN first whenever the client closes first,
 * so the edge keeps those origin-side sockets in TIME_WAIT for 60 s, each
 * holding a local port towards that origin address:port. Without
 * tcp_tw_reuse the ports cannot be reused for new connections, which caps
 * the rate per origin at (port range / 60 s) and then fails connects with
 * EADDRNOTAVAIL. Warn with the number rather than change the host's
 * sysctls behind the operator's back.
 */
static void check_sysctls(void)
{
	int reuse = 0, lo = 32768, hi = 60999, unused;

	if (read_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse", &reuse, &unused) < 1 || reuse == 1)
		return;
	read_sysctl("/proc/sys/net/ipv4/ip_local_port_range", &lo, &hi);
	log_warn("net.ipv4.tcp_tw_reuse is %d: without 1, each origin address:port can take "
		 "about %d new connections/s from this host (%d local ports, 60 s TIME_WAIT); "
		 "set net.ipv4.tcp_tw_reuse=1 for high connection rates",
		 reuse, (hi - lo + 1) / 60, hi - lo + 1);
}

/* True when some limit is enforced in prism (not only in nftables), i.e.
 * the workers need the guard.
 */
static bool protection_in_prism(const struct cfg *cfg)
{
	if (cfg->max_conns)
		return true;
	for (size_t i = 0; i < cfg->n_apps; i++) {
		const struct cfg_protection *p = &cfg->apps[i].protection;

		if (cfg->apps[i].max_conns || p->max_conns_per_source || p->conn_rate_per_source.n)
			return true;
	}
	return false;
}

static int all_joined(struct worker *ws, int n, bool *joined)
{
	int left = 0;

	for (int i = 0; i < n; i++) {
		if (joined[i])
			continue;
		if (pthread_tryjoin_np(ws[i].thread, NULL) == 0) {
			joined[i] = true;
			ws[i].thread = 0;
		} else {
			left++;
		}
	}
	return left == 0;
}

static int cmd_run(int argc, char **argv)
{
	const char *path = parse_config_opt(argc, argv, command_find("run"));
	struct worker *ws = NULL;
	struct app_origins *origins = NULL;
	struct hc *hc = NULL;
	struct dns *dns = NULL;
	struct guard *guard = NULL;
	bool *joined = NULL;
	struct cfg *cfg;
	sigset_t sigs;
	char *err = NULL;
	int n = 0, started = 0, rc = EXIT_RUNTIME, stops = 0, r;
	uint64_t lost;
	bool net_installed = false;
	int lock_fd = -1;

	if (!path)
		return EXIT_USAGE;
	cfg = load(path, 0);
	if (!cfg)
		return EXIT_USAGE;

	/* splice() has no MSG_NOSIGNAL: a peer gone mid-write must give
	 * EPIPE, not kill the process.
	 */
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	check_sysctls();

	/* Workers inherit this mask, so only sigtimedwait below sees them. */
	stop_sigset(&sigs);
	sigaddset(&sigs, SIGUSR1);
	sigaddset(&sigs, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	/* Every later thread logs through the writer; it too inherits the mask. */
	r = log_start(cfg->log_buffer);
	if (r < 0) {
		log_err("cannot start the log writer: %s", strerror(-r));
		goto out;
	}

	if (cfg->net_manage && (r = net_check(&err)) < 0) {
		log_err("%s", err ? err : strerror(-r));
		goto out;
	}
	if (cfg->net_manage) {
		lock_fd = net_table_lock(cfg->nft_table, &err);
		if (lock_fd < 0) {
			log_err("%s", err ? err : strerror(-lock_fd));
			goto out;
		}
	}

	if (protection_in_prism(cfg)) {
		guard = guard_new(cfg);
		if (!guard) {
			log_err("cannot set up connection limits: %s", strerror(errno));
			goto out;
		}
	}
	origins = app_origins_new(cfg);
	if (!origins) {
		log_err("out of memory");
		goto out;
	}
	ws = calloc((size_t)cfg->workers, sizeof(*ws));
	joined = calloc((size_t)cfg->workers, sizeof(*joined));
	if (!ws || !joined) {
		log_err("out of memory");
		goto out;
	}
	for (n = 0; n < cfg->workers; n++) {
		if (worker_init(&ws[n], n, cfg, origins) < 0) {
			n++;
			goto out;
		}
		ws[n].guard = guard;
	}
	if (worker_share_listeners(ws, n) < 0)
		goto out;
	if (cfg->net_manage) {
		if ((r = net_up(cfg, &err)) < 0) {
			log_err("network setup failed: %s", err ? err : strerror(-r));
			goto out;
		}
		net_installed = true;
	}
	r = hc_start(&hc, origins, cfg->n_apps);
	if (r < 0) {
		log_err("cannot start health checks: %s", strerror(-r));
		goto out;
	}
	r = dns_start(&dns, origins, cfg->n_apps);
	if (r < 0) {
		log_err("cannot start the origin resolver: %s", strerror(-r));
		goto out;
	}
	for (started = 0; started < n; started++) {
		r = worker_start(&ws[started]);
		if (r < 0) {
			log_err("cannot start worker %d: %s", started, strerror(-r));
			goto out;
		}
	}

	/* Loading the config (libyaml's document of it) and the nft table
	 * (libnftables' parse of the script) peak at many times what prism
	 * keeps; glibc keeps what they freed unless asked. With 100,000 apps
	 * with lists of their own that was half of prism's RSS (323 against
	 * 160 MB, docs/benchmarks.md, "Many apps").
	 */
	malloc_trim(0);
	char a4[ADDR_STRLEN], a6[ADDR_STRLEN];
	log_life("ready: listening on %s%s%s, %d workers, %zu apps",
		 addr_fmt_sa((struct sockaddr *)&cfg->listen4, a4), cfg->listen6_on ? " " : "",
		 cfg->listen6_on ? addr_fmt_sa((struct sockaddr *)&cfg->listen6, a6) : "",
		 cfg->workers, cfg->n_apps);

	struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
	while (!all_joined(ws, started, joined)) {
		int sig = sigtimedwait(&sigs, NULL, &tick);

		if (sig == SIGHUP) {
			log_warn("SIGHUP: configuration reload is not supported yet; ignored");
		} else if (sig == SIGUSR1 || sig == SIGUSR2) {
			/* Their default action would kill prism without
			 * removing its table and routes. */
			log_warn("%s: ignored", strsignal(sig));
		} else if (sig == SIGINT || sig == SIGTERM || sig == SIGQUIT) {
			stops++;
			if (stops == 1)
				log_info("%s: stopping: no new connections, open ones may finish "
					 "within %u ms",
					 strsignal(sig), cfg->shutdown_grace_ms);
			else
				log_info("%s again: closing all connections now", strsignal(sig));
			for (int i = 0; i < started; i++)
				if (!joined[i])
					worker_stop(&ws[i], stops > 1);
		}
	}
	rc = stops ? 0 : EXIT_RUNTIME;
	if (!stops)
		log_err("all workers exited unexpectedly");
out:
	for (int i = 0; i < started; i++)
		if (!joined || !joined[i])
			worker_stop(&ws[i], true);
	for (int i = 0; i < n; i++)
		worker_wait(&ws[i]); /* all threads first: see worker_join */
	for (int i = 0; i < n; i++)
		worker_join(&ws[i]);
	/* The ban thread before the table it writes to goes; the table and
	 * routes before the health and DNS threads, which may each wait for
	 * a slow connect or getaddrinfo: the edge must not stay claimed by
	 * a prism that no longer serves it.
	 */
	if (guard)
		guard_free(guard);
	if (net_installed) {
		free(err);
		err = NULL;
		if ((r = net_down(cfg->nft_table, &err)) < 0) {
			log_err("network cleanup failed: %s", err ? err : strerror(-r));
			rc = EXIT_RUNTIME;
		}
	}
	if (lock_fd >= 0)
		close(lock_fd); /* the table is another instance's to take now */
	if (hc)
		hc_stop(hc);
	dns_stop(dns);
	app_origins_free(origins, cfg->n_apps);
	lost = log_stop();
	if (lost)
		log_err("log: %" PRIu64 " lines not written at exit: stderr was not being read",
			lost);
	if (rc == 0)
		log_life("stopped");
	free(err);
	free(ws);
	free(joined);
	cfg_unref(cfg);
	return rc;
}

/* Started with stdin, stdout or stderr closed, the first socket prism
 * opens would get that number, and log lines would go into a client's
 * connection: hold those numbers with /dev/null.
 */
static void std_fds_hold(void)
{
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) == -1 && errno == EBADF &&
		    open("/dev/null", O_RDWR | O_CLOEXEC) == -1)
			exit(EXIT_RUNTIME);
}

int main(int argc, char **argv)
{
	const struct command *cmd;

	std_fds_hold();

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version"))
		return cmd_version(0, NULL);
	cmd = command_find(argv[1]);
	if (!cmd) {
		fprintf(stderr, "prism: unknown command \"%s\"\n", argv[1]);
		usage(stderr);
		return EXIT_USAGE;
	}
	return cmd->fn(argc - 1, argv + 1);
}

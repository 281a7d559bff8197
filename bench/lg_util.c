/* lg_util.c - loadgen: clock, PRNG, log-linear histograms, sockaddr helpers and
 * argument parsing. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "loadgen.h"

struct opts g_opt = {
    .threads = 1,
    .size = 64,
    .seed = 1,
};

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- PRNG: xorshift64*, seeded through splitmix64 ---- */

uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in [0, n) by multiply-shift; the bias is < n / 2^32, irrelevant here. */
uint32_t rng_below(uint64_t *s, uint32_t n)
{
	return (uint32_t)(((rng_next(s) >> 32) * n) >> 32);
}

/* ---- histogram ---- */

static unsigned hist_index(uint64_t v)
{
	unsigned msb, shift;

	if (v >= HIST_MAX_US)
		v = HIST_MAX_US - 1;
	if (v < HIST_EXACT)
		return (unsigned)v;
	msb = 63 - (unsigned)__builtin_clzll(v);
	shift = msb - 6; /* (v >> shift) is in [64, 127] */
	return HIST_EXACT + (shift - 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* Middle of bucket i. */
static uint64_t hist_value(unsigned i)
{
	unsigned shift;
	uint64_t sub;

	if (i < HIST_EXACT)
		return i;
	shift = (i - HIST_EXACT) / HIST_SUB + 1;
	sub = (i - HIST_EXACT) % HIST_SUB + HIST_SUB;
	return (sub << shift) + (((1ull << shift) - 1) >> 1);
}

void hist_add(struct hist *h, uint64_t us)
{
	h->b[hist_index(us)]++;
	h->n++;
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->n += src->n;
}

static uint64_t hist_pct(const struct hist *h, double q)
{
	uint64_t rank, acc = 0;

	if (h->n == 0)
		return 0;
	rank = (uint64_t)(q * (double)h->n + 0.999999);
	if (rank < 1)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		acc += h->b[i];
		if (acc >= rank)
			return hist_value(i);
	}
	return hist_value(HIST_BUCKETS - 1);
}

void json_pct(const char *name, const struct hist *h)
{
	printf("\"%s\": {\"p50\": %" PRIu64 ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64 "}", name,
	       hist_pct(h, 0.5), hist_pct(h, 0.99), hist_pct(h, 0.999));
}

/* ---- sockaddr helpers ---- */

socklen_t ss_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

void ss_fill(struct sockaddr_storage *ss, int family, const uint8_t *a, unsigned port)
{
	memset(ss, 0, sizeof(struct sockaddr_in6));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		memcpy(&sin->sin_addr, a, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		memcpy(&sin6->sin6_addr, a, 16);
	}
}

const char *ss_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
		snprintf(buf, len, "%s:%u", a, ntohs(sin->sin_port));
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
		snprintf(buf, len, "[%s]:%u", a, ntohs(sin6->sin6_port));
	}
	return buf;
}

/* ---- argument parsing ---- */

static void usage(FILE *f)
{
	fputs("usage:\n"
	      "  loadgen serve --listen ADDR:PORT [--listen ...] [--threads N] [--duration S]\n"
	      "  loadgen serve --addr ADDR --ports LO-HI [--threads N] [--duration S]\n"
	      "  loadgen rate --target PREFIX --ports P --concurrency N --duration S\n"
	      "               [--size B] [--seed N] [--timeout S] [--threads N] [--rst]\n"
	      "  loadgen latency --target ADDR --ports P --conns N --duration S\n"
	      "               [--size B] [--seed N] [--timeout S] [--threads N]\n"
	      "  loadgen hold --target PREFIX --ports P --conns N [--timeout S]\n"
	      "               [--concurrency N] [--seed N] [--threads N] [--duration S]\n",
	      f);
}

static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_secs(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v > 0) || v > 86400)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_prefix(const char *s, struct prefix *p)
{
	char buf[INET6_ADDRSTRLEN + 8];
	char *slash;
	int alen;
	unsigned long plen;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	memset(p, 0, sizeof(*p));
	if (inet_pton(AF_INET, buf, p->addr) == 1) {
		p->family = AF_INET;
		alen = 4;
	} else if (inet_pton(AF_INET6, buf, p->addr) == 1) {
		p->family = AF_INET6;
		alen = 16;
	} else {
		return -EINVAL;
	}
	p->plen = alen * 8;
	if (slash) {
		if (parse_ulong(slash + 1, 0, (unsigned long)alen * 8, &plen))
			return -EINVAL;
		p->plen = (int)plen;
	}
	/* host bits set is almost certainly a typo: refuse it, as prism does */
	for (int i = 0; i < alen; i++) {
		int keep = p->plen - i * 8;
		uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));

		if (p->addr[i] & ~mask)
			return -EINVAL;
	}
	return 0;
}

static int parse_ports(const char *s, unsigned *lo, unsigned *hi)
{
	char buf[32];
	char *dash;
	unsigned long a, b;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	dash = strchr(buf, '-');
	if (dash)
		*dash = '\0';
	if (parse_ulong(buf, 1, 65535, &a))
		return -EINVAL;
	b = a;
	if (dash && parse_ulong(dash + 1, 1, 65535, &b))
		return -EINVAL;
	if (b < a)
		return -EINVAL;
	*lo = (unsigned)a;
	*hi = (unsigned)b;
	return 0;
}

/* "1.2.3.4:80" or "[2001:db8::1]:80" */
static int parse_hostport(const char *s, struct sockaddr_storage *ss)
{
	char buf[INET6_ADDRSTRLEN + 8];
	char *host = buf, *colon;
	unsigned long port;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	memset(ss, 0, sizeof(*ss));
	if (buf[0] == '[') {
		char *rb = strchr(buf, ']');

		if (!rb || rb[1] != ':')
			return -EINVAL;
		*rb = '\0';
		host = buf + 1;
		colon = rb + 1;
	} else {
		colon = strrchr(buf, ':');
		if (!colon)
			return -EINVAL;
		*colon = '\0';
	}
	if (parse_ulong(colon + 1, 1, 65535, &port))
		return -EINVAL;
	if (buf[0] != '[') {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return -EINVAL;
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return -EINVAL;
	}
	return 0;
}

static int bad_usage(const char *msg)
{
	fprintf(stderr, "loadgen: %s\n", msg);
	usage(stderr);
	return 2;
}

enum {
	OPT_LISTEN = 256,
	OPT_ADDR,
	OPT_PORTS,
	OPT_TARGET,
	OPT_THREADS,
	OPT_CONC,
	OPT_CONNS,
	OPT_SIZE,
	OPT_DURATION,
	OPT_TIMEOUT,
	OPT_SEED,
	OPT_RST,
	OPT_HELP,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"addr", required_argument, NULL, OPT_ADDR},
    {"ports", required_argument, NULL, OPT_PORTS},
    {"target", required_argument, NULL, OPT_TARGET},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"concurrency", required_argument, NULL, OPT_CONC},
    {"conns", required_argument, NULL, OPT_CONNS},
    {"size", required_argument, NULL, OPT_SIZE},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"seed", required_argument, NULL, OPT_SEED},
    {"rst", no_argument, NULL, OPT_RST},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* Returns 0, or the exit code (2) after printing the problem. */
int parse_args(int argc, char **argv)
{
	struct opts *o = &g_opt;
	unsigned long v;
	int c;

	if (argc < 2)
		return bad_usage("missing mode");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		exit(0);
	}
	if (!strcmp(argv[1], "serve"))
		o->mode = MODE_SERVE;
	else if (!strcmp(argv[1], "rate"))
		o->mode = MODE_RATE;
	else if (!strcmp(argv[1], "latency"))
		o->mode = MODE_LATENCY;
	else if (!strcmp(argv[1], "hold"))
		o->mode = MODE_HOLD;
	else
		return bad_usage("unknown mode (serve, rate, latency, hold)");

	optind = 2;
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_LISTEN:
			if (o->nlisten == MAX_LISTEN)
				return bad_usage("too many --listen");
			if (parse_hostport(optarg, &o->listen[o->nlisten]))
				return bad_usage("bad --listen (ADDR:PORT or [ADDR]:PORT)");
			o->nlisten++;
			break;
		case OPT_ADDR:
			if (parse_prefix(optarg, &o->addr) ||
			    o->addr.plen != (o->addr.family == AF_INET ? 32 : 128))
				return bad_usage("bad --addr (one address)");
			o->have_addr = true;
			break;
		case OPT_PORTS:
			if (parse_ports(optarg, &o->port_lo, &o->port_hi))
				return bad_usage("bad --ports (LO-HI or PORT)");
			o->have_ports = true;
			break;
		case OPT_TARGET:
			if (parse_prefix(optarg, &o->target))
				return bad_usage("bad --target (ADDR or PREFIX/LEN)");
			o->have_target = true;
			break;
		case OPT_THREADS:
			if (parse_ulong(optarg, 1, MAX_THREADS, &v))
				return bad_usage("bad --threads");
			o->threads = (int)v;
			break;
		case OPT_CONC:
			if (parse_ulong(optarg, 1, 20000, &v))
				return bad_usage("bad --concurrency");
			o->concurrency = (int)v;
			break;
		case OPT_CONNS:
			if (parse_ulong(optarg, 1, 20000, &v))
				return bad_usage("bad --conns");
			o->conns = (int)v;
			break;
		case OPT_SIZE:
			if (parse_ulong(optarg, 1, MAX_SIZE, &v))
				return bad_usage("bad --size");
			o->size = (int)v;
			break;
		case OPT_DURATION:
			if (parse_secs(optarg, &o->duration))
				return bad_usage("bad --duration (seconds)");
			o->have_duration = true;
			break;
		case OPT_TIMEOUT:
			if (parse_secs(optarg, &o->timeout))
				return bad_usage("bad --timeout (seconds)");
			break;
		case OPT_SEED:
			errno = 0;
			o->seed = strtoull(optarg, NULL, 10);
			if (errno)
				return bad_usage("bad --seed");
			break;
		case OPT_RST:
			o->rst = true;
			break;
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			return bad_usage("bad option");
		}
	}
	if (optind != argc)
		return bad_usage("unexpected argument");

	switch (o->mode) {
	case MODE_SERVE:
		if (!o->nlisten && !o->have_addr)
			return bad_usage("serve needs --listen or --addr with --ports");
		if (o->have_addr != o->have_ports)
			return bad_usage("--addr and --ports go together in serve mode");
		if (!o->have_duration)
			o->duration = DEFAULT_LIFETIME;
		break;
	case MODE_RATE:
	case MODE_LATENCY:
		if (!o->have_target || !o->have_ports || !o->have_duration)
			return bad_usage("needs --target, --ports and --duration");
		if (o->mode == MODE_RATE && !o->concurrency)
			o->concurrency = 64;
		if (o->mode == MODE_LATENCY) {
			if (!o->conns)
				return bad_usage("latency needs --conns");
			o->concurrency = o->conns;
		}
		if (o->timeout == 0)
			o->timeout = 5;
		if (o->threads > o->concurrency)
			o->threads = o->concurrency;
		break;
	case MODE_HOLD:
		if (!o->have_target || !o->have_ports || !o->conns)
			return bad_usage("hold needs --target, --ports and --conns");
		if (o->timeout == 0)
			o->timeout = 30;
		if (!o->concurrency)
			o->concurrency = 256;
		if (!o->have_duration)
			o->duration = DEFAULT_LIFETIME;
		o->size = 1;
		if (o->threads > o->conns)
			o->threads = o->conns;
		break;
	}
	return 0;
}

/* ban_bench.c - how fast prism's ban thread can ban: ban_add() as guard.c
 * calls it (on one netlink socket kept open, asking the kernel first
 * whether a longer ban is in force), for
 * sources the kernel holds no ban for, with the ban set first filled with
 * other sources; then refreshes (longer bans of sources already banned,
 * the add-delete-add transaction).
 *
 * Run as root in a network namespace where `prism net up` loaded table
 * <table>: ban_bench TABLE FILL NEW REFRESH. It fills ban4 with FILL bans
 * of an hour (198.18.0.0/16, FILL <= 65,000: the set holds 65,536), bans NEW
 * sources of 198.19.0.0/16 for 10 minutes, then bans REFRESH of them again
 * for 20 minutes, and prints one line:
 *   fill=F new=N ms_per_new=T new_per_s=R refresh=M ms_per_refresh=U
 * (wall time: netlink waits are the kernel's, not this process's CPU).
 * The bans stay; `prism net down` removes them with the table.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nftables/libnftables.h>

#include "ban.h"
#include "nl.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 198.18.0.0/15 + <i>, v4-mapped. */
static struct in6_addr src_of(unsigned i)
{
	struct in6_addr a = {0};

	a.s6_addr[10] = a.s6_addr[11] = 0xff;
	a.s6_addr[12] = 198;
	a.s6_addr[13] = (uint8_t)(18 + (i >> 16));
	a.s6_addr[14] = (uint8_t)(i >> 8);
	a.s6_addr[15] = (uint8_t)i;
	return a;
}

static int fill(const char *table, unsigned n)
{
	struct nft_ctx *ctx;
	char *buf;
	size_t len = 0, cap = 64 + (size_t)n * 40;
	int ret = 0;

	if (n == 0)
		return 0;
	buf = malloc(cap);
	ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	if (!buf || !ctx) {
		free(buf);
		if (ctx)
			nft_ctx_free(ctx);
		return -ENOMEM;
	}
	len += (size_t)snprintf(buf, cap, "add element inet %s ban4 { ", table);
	for (unsigned i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s198.18.%u.%u timeout 1h",
					i ? ", " : "", i >> 8 & 255, i & 255);
	snprintf(buf + len, cap - len, " }\n");
	if (nft_run_cmd_from_buffer(ctx, buf) != 0)
		ret = -EINVAL;
	nft_ctx_free(ctx);
	free(buf);
	return ret;
}

/* The socket ban_add keeps, as the ban thread's (guard.c). */
static struct nl keep;

static int bans(const char *table, unsigned first, unsigned n, uint32_t ms, double *secs)
{
	double t0 = now_s();

	for (unsigned i = 0; i < n; i++) {
		struct in6_addr a = src_of(first + i);
		uint64_t kept = 0;
		char *err = NULL;
		int r = ban_add(&keep, table, &a, ms, &kept, &err);

		if (r != 0) {
			fprintf(stderr, "ban_bench: ban %u: %s\n", i,
				r == 1 ? "kept an existing ban"
				: err  ? err
				       : strerror(-r));
			free(err);
			return -1;
		}
	}
	*secs = now_s() - t0;
	return 0;
}

int main(int argc, char **argv)
{
	unsigned nfill, nnew, nref;
	double tnew = 0, tref = 0;

	if (argc != 5) {
		fprintf(stderr, "usage: ban_bench TABLE FILL NEW REFRESH\n");
		return 2;
	}
	nfill = (unsigned)strtoul(argv[2], NULL, 10);
	nnew = (unsigned)strtoul(argv[3], NULL, 10);
	nref = (unsigned)strtoul(argv[4], NULL, 10);
	if (nfill > 65000 || nnew == 0 || nfill + nnew > 65536 || nref > nnew) {
		fprintf(stderr, "ban_bench: FILL <= 65000, 0 < NEW, FILL + NEW <= 65536 (the "
				"set's size), REFRESH <= NEW\n");
		return 2;
	}
	if (fill(argv[1], nfill)) {
		fprintf(stderr, "ban_bench: cannot fill ban4 of table %s\n", argv[1]);
		return 1;
	}
	if (bans(argv[1], 65536, nnew, 600000, &tnew) || bans(argv[1], 65536, nref, 1200000, &tref))
		return 1;
	printf("fill=%u new=%u ms_per_new=%.3f new_per_s=%.0f refresh=%u ms_per_refresh=%.3f\n",
	       nfill, nnew, tnew * 1e3 / nnew, nnew / tnew, nref, nref ? tref * 1e3 / nref : 0.0);
	nl_close(&keep);
	return 0;
}

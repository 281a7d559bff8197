/* netsetup-int.h - private interface shared by the network setup's files
 * (netsetup*.c): netsetup.c installs the routes and loads the table,
 * netsetup_nft.c writes the table's nft script and runs nft.
 */
#ifndef PRISM_NETSETUP_INT_H
#define PRISM_NETSETUP_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>

#include "addr.h"
#include "cfg.h"
#include "netsetup.h"

/* ---- addresses and prefixes (netsetup.c) ---- */

/* True when <p> is an IPv4 prefix: v4-mapped and at least /96. */
bool net_is_v4_prefix(const struct addr_prefix *p);
/* Formats a bare address in the family <v4> says (IPv4 from its v4-mapped
 * form) into <buf> of <len> bytes.
 */
void net_fmt_addr(const struct in6_addr *a, bool v4, char *buf, size_t len);
/* qsort/bsearch order of struct addr_prefix: by address, then length. */
int net_prefix_cmp(const void *a, const void *b);
/* Collects the distinct edge prefixes of all apps (IPv6 ones only with an
 * IPv6 listener), sorted, into a malloc'd <*out>. Returns the count, or
 * -ENOMEM.
 */
long net_edge_prefixes(const struct cfg *cfg, struct addr_prefix **out);
/* The AnyIP routes for <cfg>: the fewest prefixes, per family, whose union
 * is the union of net_edge_prefixes (nested ones dropped, touching ones
 * merged into aligned blocks), sorted, in a malloc'd <*out>. Returns the
 * count, or -ENOMEM.
 */
long net_route_prefixes(const struct cfg *cfg, struct addr_prefix **out);

/* ---- the nft script (netsetup_nft.c) ---- */

/* Returns the malloc'd script that replaces the table for <cfg>, with
 * <bans>[0] / [1] (v4 / v6 elements, or NULL; <bans> itself may be NULL) put
 * back into the ban sets. NULL on ENOMEM.
 */
char *net_build_script(const struct cfg *cfg, const char *const bans[2]);
/* Runs <script> in one libnftables context. Returns 0, or -ENOMEM / -EINVAL
 * with "<what>: <nft's error text>" in <*err> (just the text when <what> is
 * NULL).
 */
int net_nft_run(const char *script, const char *what, char **err);

/* The comment every table prism loads carries: what tells prism's table
 * from one of the same name it must not replace or delete.
 */
#define NET_TABLE_MARK "managed by prism"

/* What this namespace has under nft table inet <table>: */
enum {
	NET_TABLE_NONE,	   /* no such table */
	NET_TABLE_PRISM,   /* prism's (NET_TABLE_MARK, or an older prism's layout) */
	NET_TABLE_FOREIGN, /* someone else's */
};
/* Returns one of those, or -errno when nft cannot say (why in <*err>). */
int net_table_state(const char *table, char **err);

#endif

/* ban.h - the kernel ban sets: sources dropped by nftables until they time out.
 *
 * prism's nft table holds two sets, ban4 (ipv4_addr) and ban6 (ipv6_addr,
 * the first address of each banned /64), with per-element timeouts: a ban ends by itself in the
 * kernel even if prism dies. prism adds to them when a source keeps violating its limits; `prism
 * ban list|add|del` edits them by hand. Adds, deletes, lookups and lists are nf_tables messages
 * (libnftnl) on a netlink socket the caller may keep.
 */
#ifndef PRISM_BAN_H
#define PRISM_BAN_H

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>

struct nl;

/* <keep>, where the functions below take it: a netlink socket (nl.h)
 * the caller keeps for its bans, zeroed before the first one, or NULL for a
 * socket of the call's own. Kept, a ban needs no new fd: the ban thread
 * opens it at start, because the floods that cause bans can take every
 * fd. It is opened again when a call finds it closed.
 */

/* Adds (or refreshes) the source of <src> (128-bit, v4-mapped for IPv4; an
 * IPv6 address bans its /64, see addr_source) to the ban set of table
 * <table> for <duration_ms>. Returns 0 or -errno with a malloc'd message in
 * <*err>.
 *
 * The kernel keeps one timeout per source, and writing a ban replaces it.
 * With <kept_ms> non-NULL, a ban in force for at least <duration_ms> more
 * is kept instead: returns 1 and stores its time left in <*kept_ms>
 * (UINT64_MAX: it never ends). prism's own bans do that (guard.c), so that
 * an app's short ban never cuts a longer one short, whoever wrote it;
 * `prism ban add` sets what it is told.
 */
int ban_add(struct nl *keep, const char *table, const struct in6_addr *src, uint32_t duration_ms,
	    uint64_t *kept_ms, char **err);

/* The time left of the ban of <src>'s source in table <table>: 0 and
 * <*left_ms> (UINT64_MAX: it never ends), -ENOENT when the kernel holds
 * none, or another -errno when it cannot be read.
 */
int ban_get(struct nl *keep, const char *table, const struct in6_addr *src, uint64_t *left_ms);

/* Removes the source of <src> (an IPv6 address: its /64); -ENOENT (with
 * *err) if it is not banned.
 */
int ban_del(const char *table, const struct in6_addr *src, char **err);

/* A ban in force: its element's address (v4-mapped for ban4; for ban6
 * the /64's first address, or a single address a table from before
 * IPv6 bans were /64s holds) and its time left (UINT64_MAX: never ends).
 */
struct ban_entry {
	struct in6_addr src;
	uint64_t left_ms;
};

/* Reads every ban of table <table> into a malloc'd array <*out> of <*n>,
 * in ban_entry_cmp's order. A dump that runs while the kernel resizes a
 * set's hash table can hold an element twice: then next to each other.
 * Returns 0, or -errno with *err (-ESRCH: the table or its ban sets are
 * not loaded).
 */
int ban_read(const char *table, struct ban_entry **out, size_t *n, char **err);

/* qsort order of struct ban_entry: by address (IPv4 first), the longest
 * ban first.
 */
int ban_entry_cmp(const void *a, const void *b);

/* Prints one line per banned source: "ADDR expires in Ns" (IPv6:
 * "ADDR/64 ..."). Returns the count or -errno with *err.
 */
int ban_list(const char *table, FILE *out, char **err);

#endif

/* netsetup.h - the network state prism owns: AnyIP routes and one nft table.
 *
 * AnyIP: "local PREFIX dev lo" routes in table local, v4 and v6, added over
 * netlink (libmnl) and tagged with protocol RTPROT_PRISM and the metric of
 * the nft table's name (net_route_metric), so that "net down" removes
 * exactly those, and two instances with different tables keep each other's. nftables (libnftables):
 * one table of family inet, replaced atomically in a single transaction. Its prerouting chain
 * (priority mangle) sends packets to served prefixes through a `guard` chain: the ban sets, per-app
 * and global deny/allow lists, the per-source SYN meter (each drop with a named counter), then
 * TPROXY of TCP whose (daddr . dport) is a configured claim to the listener, and finally the
 * unserved rule (drop or reset). Ban-set elements are carried over a replacement with their
 * remaining time. No conntrack is involved.
 */
#ifndef PRISM_NETSETUP_H
#define PRISM_NETSETUP_H

#include <stdint.h>
#include <stdio.h>

struct cfg;

/* The route protocol number that marks a route as prism's (see
 * /etc/iproute2/rt_protos; "ip route show proto 249").
 */
#define RTPROT_PRISM 249

/* The metric of the routes of the instance whose nft table is <table>: a
 * hash of the name, at least 65536 (above what people type by hand, and
 * never IPv4's default 0 nor IPv6's 1024). Routes of RTPROT_PRISM with
 * another metric belong to another instance and are left alone; those with
 * the defaults were made by prism before routes had a metric, and are
 * pruned as stale.
 */
uint32_t net_route_metric(const char *table);

/* Returns a malloc'd nft script that replaces the table atomically: the
 * exact text net_up hands to libnftables and net_show prints. NULL on ENOMEM.
 */
char *net_nft_script(const struct cfg *cfg);

/* Checks that this process may set up TPROXY: CAP_NET_ADMIN in its
 * effective set and a kernel with nft tproxy support. Returns 0, or -EPERM /
 * -EOPNOTSUPP with a malloc'd explanation in <*err>.
 */
int net_check(char **err);

/* Installs routes and the table. Idempotent: existing identical routes are
 * kept, the table is replaced. Returns 0, or -errno with a malloc'd message
 * in <*err>.
 */
int net_up(const struct cfg *cfg, char **err);

/* Removes nft table <table> (if present) and every route tagged
 * RTPROT_PRISM with its metric (and the legacy ones, see net_route_metric):
 * the name is all it needs, so it works without a config (`net down -t`).
 * Returns 0, 1 when there was neither (a mistyped name?), or -errno with
 * <*err>.
 */
int net_down(const char *table, char **err);

/* Shared with ban.c. net_set_err stores a malloc'd message in <*err> (NULL
 * when even that fails) and returns <ret>. net_check_table accepts only a
 * table name nft's scanner reads as one identifier (it is pasted into nft's
 * language): 0, or -EINVAL with *err.
 */
__attribute__((format(printf, 3, 4))) int net_set_err(char **err, int ret, const char *fmt, ...);
int net_check_table(const char *t, char **err);

/* Claims table <table> for this process in this network namespace: an
 * abstract unix socket named after it (such names are per namespace, as
 * the table is), held until the returned fd is closed or the process ends.
 * `prism run` holds it while it runs, and `net up` / `net down` while they
 * work, so that neither replaces or removes a running instance's table and
 * routes (listeners share ports through SO_REUSEPORT, so a second `prism
 * run` would start without complaint). Returns the fd, -EBUSY with a
 * message in <*err> when another process holds it, or -errno.
 */
int net_table_lock(const char *table, char **err);

/* Prints what net_up would install ("ip route" lines and the nft script)
 * without touching the system. Returns 0, or -errno (nothing printed when
 * memory ran out; a write error of <out>).
 */
int net_show(const struct cfg *cfg, FILE *out);

#endif

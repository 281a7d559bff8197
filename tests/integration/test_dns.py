"""test_dns.py - an origin given by host name: resolved at load through the
edge namespace's /etc/hosts (ip netns exec bind-mounts /etc/netns/NS/hosts
over it), and re-resolved in the background every dns.refresh, so new
connections follow the name to its new address. A name that stops
resolving keeps its addresses; one that gains an address adds it."""

import os
import re
import shutil

import nstopo
from test_balance import fetch_many, host_of, start_tags

OLD, NEW = nstopo.ORIGIN4_EXTRA  # 198.51.100.11, 198.51.100.12

DNS_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: named
    edge: 192.0.2.0/24
    ports: 8000
    dns: {refresh: 500ms}
    origins:
      - address: "origin-c.test:8000"
"""


def _hosts_line(addr):
    return f"{addr} origin-c.test\n"


def _round(t, n, salt):
    res = fetch_many(t.c, [(f"192.0.2.{1 + (i + salt) % 250}", 8000, None) for i in range(n)])
    errs = [e for _, e, _ in res if e]
    assert not errs, errs[:5]
    return [host_of(tag) for tag, _, _ in res]


def _edge_hosts(t, text):
    """Writes <text> as the edge namespace's /etc/hosts (removed at
    teardown, after the prisms in the returned list are stopped: prism
    holds the bind mount). Returns (the file's path, that list)."""
    etc = f"/etc/netns/{t.e}"
    made_parent = not os.path.isdir("/etc/netns")
    os.makedirs(etc)
    prism_box = []

    def cleanup():
        for p in prism_box:
            p.stop(timeout=3)
        shutil.rmtree(etc, ignore_errors=True)
        assert not os.path.exists(etc)
        if made_parent:
            try:
                os.rmdir("/etc/netns")  # only if nobody else put anything there
            except OSError:
                pass

    t.on_teardown(cleanup)
    hosts = os.path.join(etc, "hosts")
    with open(hosts, "w") as f:
        f.write(text)
    return hosts, prism_box


def test_dns_origin_follows_the_name(topo):
    t = topo
    start_tags(t, [f"{OLD}:8000", f"{NEW}:8000"])
    hosts, prism_box = _edge_hosts(t, "127.0.0.1 localhost\n" + _hosts_line(OLD))
    prism = t.start_prism(DNS_CFG)
    prism_box.append(prism)

    got = _round(t, 10, 0)
    assert set(got) == {OLD}, got
    d = prism.wait_access(lambda d: d.get("app") == "named", count=10)[0]
    assert d["origin"] == f"{OLD}:8000", d

    # Same length: rewritten in place, the bind-mounted inode sees it, and
    # a concurrent reader never sees an empty file.
    new_text = "127.0.0.1 localhost\n" + _hosts_line(NEW)
    mark = len(prism.err)
    with open(hosts, "r+") as f:
        assert len(f.read()) == len(new_text)
        f.seek(0)
        f.write(new_text)
    # The next refresh (every 500ms) says so, and from then on new
    # connections go to the new address.
    prism.wait_log(r"info app named: origin origin-c\.test now resolves to " + re.escape(NEW),
                   start=mark, timeout=10)
    got = _round(t, 10, 100)
    assert set(got) == {NEW}, got

    # The name stops resolving (same length again): its address is kept.
    mark = len(prism.err)
    gone_text = new_text.replace("origin-c.test", "origin-x.test")
    with open(hosts, "r+") as f:
        f.write(gone_text)
    prism.wait_log(r"warn app named: cannot resolve origin origin-c\.test \(.*\); "
                   r"keeping its 1 address\(es\)", start=mark)
    got = _round(t, 10, 200)
    assert set(got) == {NEW}, got

    # It resolves to two addresses (a longer file, written in one piece
    # over the shorter one): the one it had stays, the other joins.
    mark = len(prism.err)
    with open(hosts, "r+") as f:
        f.write(new_text + _hosts_line(OLD))
    prism.wait_log(r"info app named: origin origin-c\.test now resolves to "
                   rf"({NEW}, {OLD}|{OLD}, {NEW}) \(had 1 address\(es\)\)", start=mark)
    got = _round(t, 20, 300)
    assert set(got) == {NEW, OLD}, got


LOOP_CFG = """\
listen: {workers: 1}
timeouts: {connect: 1s, idle: 30s}
apps:
  - name: named
    edge: 192.0.2.0/24
    ports: 8000
    retries: 0
    balance: round_robin
    origins:
      - address: "origin-c.test:8000"
      - address: "%s:8000"
""" % OLD


def test_name_resolving_inside_the_edge_is_not_dialed(topo):
    """A host-name origin that resolves to an address of the edge, on a
    port the edge claims: dialing it would bring the connection back to
    prism, again and again until fds run out (an IP origin like that is
    refused at load). It is skipped with a warning, like an origin that is
    down: round robin passes it by without spending an attempt, so even
    with `retries: 0` every connection reaches the other origin."""
    t = topo
    start_tags(t, [f"{OLD}:8000"])
    _hosts, prism_box = _edge_hosts(t, "127.0.0.1 localhost\n192.0.2.77 origin-c.test\n")
    prism = t.start_prism(LOOP_CFG)
    prism_box.append(prism)
    # Told at load (file:line:col of the origin), and again when picked.
    prism.wait_log(r':10:18: warning: origin origin-c\.test resolves to 192\.0\.2\.77, which '
                   r'app "named" claims on port 8000: prism would relay to itself')
    got = _round(t, 10, 0)
    assert got == [OLD] * 10, got
    prism.wait_log(r'warn app named: origin origin-c\.test resolves to 192\.0\.2\.77:8000, '
                   r'which app "named" claims: prism would relay to itself')
    served = prism.wait_access(lambda d: d.get("app") == "named", count=10)
    assert all(d["origin"] == f"{OLD}:8000" and d["reason"] != "no_origin"
               for d in served), served


# DNS_CFG without its refresh, with no retries: a connection balanced to
# an address that cannot be dialed fails.
V4_ONLY_CFG = DNS_CFG.replace("    dns: {refresh: 500ms}\n", "    retries: 0\n")
assert V4_ONLY_CFG != DNS_CFG


def test_name_gives_only_the_families_the_host_has(topo):
    """A name with an IPv4 and an IPv6 address, on an edge with IPv6 off:
    only the IPv4 address becomes an origin (AI_ADDRCONFIG). Dialing the
    IPv6 one could only fail, and with `retries: 0` the connections
    balanced to it would fail with it."""
    t = topo
    nstopo.run(nstopo.ns_exec(t.e, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]))
    start_tags(t, [f"{OLD}:8000"])
    _hosts, prism_box = _edge_hosts(
        t, f"127.0.0.1 localhost\n{OLD} origin-c.test\n{nstopo.ORIGIN6} origin-c.test\n")
    prism = t.start_prism(V4_ONLY_CFG)
    prism_box.append(prism)
    got = _round(t, 10, 0)
    assert got == [OLD] * 10, got

"""test_failover.py - an origin dies under a steady stream of new
connections: retries hide it from every client, health checks take it out
within fall x interval + timeout (no new connection is even attempted
after that: SYNs counted by nftables in the origin namespace), and it is
used again rise x interval after it comes back. Passive failure accounting
is checked the same way without active checks. Retries never dial an
origin the connection already tried, in sets of any size."""

import re
import threading
import time

import nstopo
import peers
from test_balance import (add_addrs, add_origin_addrs, down_rx, fetch_here, fetch_many,
                          host_of, ns_thread, start_tags, up_rx)

POOL = ["198.51.100.21", "198.51.100.22", "198.51.100.23"]
VICTIM = POOL[2]

FAILOVER_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: fo
    edge: 192.0.2.0/24
    ports: 8000
    balance: round_robin
    retries: 2
    passive: {failures: 0}
    health_check: {interval: 200ms, timeout: 200ms, rise: 2, fall: 2, port: 8001}
    origins: ["198.51.100.21:8000", "198.51.100.22:8000", "198.51.100.23:8000"]
"""
INTERVAL, TIMEOUT, RISE, FALL = 0.2, 0.2, 2, 2

PASSIVE_CFG = """\
listen: {workers: 1}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: pv
    edge: 192.0.2.0/24
    ports: 8000
    balance: round_robin
    retries: 2
    passive: {failures: 2, cooldown: 1500ms}
    origins: ["198.51.100.21:8000", "198.51.100.22:8000", "198.51.100.23:8000"]
"""

# 70 origins on one address: ports 10000-10063 answer, 10064-10069 refuse.
MANY = "198.51.100.21"
MANY_CFG = """\
listen: {workers: 1}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: many
    edge: 192.0.2.0/24
    ports: 8000
    balance: source_hash
    retries: 16
    passive: {failures: 0}
    origins: [%s]
""" % ", ".join(f'"{MANY}:{10000 + i}"' for i in range(70))


class Stream:
    """New connections at <rate>/s from a thread in the client namespace,
    each reading its origin's tag; records (monotonic time, tag or None,
    error or None)."""

    def __init__(self, ns, rate=50, limit_s=30):
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.rate, self.limit_s = rate, limit_s
        self.thread = ns_thread(ns, self._run)

    def _run(self):
        t_end = time.monotonic() + self.limit_s
        i = 0
        nxt = time.monotonic()
        while not self.stop_ev.is_set() and time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                tag, _ = fetch_here(f"192.0.2.{1 + i % 250}", 8000, timeout=2)
                rec = (t0, host_of(tag), None)
            except Exception as e:  # a failed client connection: the test fails
                rec = (t0, None, repr(e))
            with self.lock:
                self.results.append(rec)
            i += 1
            nxt += 1.0 / self.rate
            self.stop_ev.wait(max(0.0, nxt - time.monotonic()))

    def since(self, t):
        with self.lock:
            return [r for r in self.results if r[0] >= t]

    def wait_count(self, t, n, timeout):
        """Waits (bounded) until <n> connections started at or after <t>."""
        deadline = time.monotonic() + timeout
        while len(self.since(t)) < n:
            assert time.monotonic() < deadline, f"stream stalled: {len(self.since(t))}/{n}"
            self.stop_ev.wait(0.05)  # the stream has no event to wait on

    def stop(self):
        self.stop_ev.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def _syn_counter(t, addr, port):
    """Counts SYNs to addr:port arriving in the origin namespace; returns a
    function reading the count."""
    nstopo.run(nstopo.ns_exec(t.o, ["nft", "-f", "-"]), input=(
        "table inet ptsyn {\n"
        " chain input { type filter hook input priority -10; policy accept;\n"
        f"  ip daddr {addr} tcp dport {port} tcp flags & (syn | ack) == syn counter\n"
        " }\n}\n"))

    def read():
        out = nstopo.run(nstopo.ns_exec(t.o, ["nft", "list", "table", "inet", "ptsyn"])).stdout
        m = re.search(r"counter packets (\d+)", out)
        assert m, out
        return int(m.group(1))

    return read


def test_origin_killed_under_stream(topo):
    t = topo
    add_origin_addrs(t, POOL)
    for a in POOL:
        start_tags(t, [f"{a}:8000", f"{a}:8001"], name=f"tags-{a}")
    syns = _syn_counter(t, VICTIM, 8000)
    prism = t.start_prism(FAILOVER_CFG)
    stream = Stream(t.c)
    t.on_teardown(stream.stop)

    t_start = time.monotonic()
    stream.wait_count(t_start, 30, timeout=5)
    before = stream.since(t_start)
    assert VICTIM in {r[1] for r in before}, before

    mark = len(prism.err)
    n_kill = syns()
    t_kill = time.monotonic()
    # Both its data and its check port refuse from now on (a reset for
    # each SYN, after the counter), as a dead origin's would. Not a kill
    # of its server: a connection the kernel had completed but the server
    # not yet accepted would be reset with it, after prism's connect
    # succeeded, and that client would see it.
    down = "ptdown"
    nstopo.run(nstopo.ns_exec(t.o, ["nft", "-f", "-"]), input=(
        f"table inet {down} {{\n"
        " chain input { type filter hook input priority -5; policy accept;\n"
        f"  ip daddr {VICTIM} tcp dport {{ 8000, 8001 }} tcp flags & (syn | ack) == syn "
        "reject with tcp reset\n"
        " }\n}\n"))
    t.on_teardown(lambda: nstopo.run(nstopo.ns_exec(t.o, ["nft", "delete", "table", "inet",
                                                          down]), check=False))
    prism.wait_log(down_rx("fo", VICTIM), timeout=5, start=mark)
    t_down = time.monotonic()
    # fall x interval + timeout, + scheduling slack.
    assert t_down - t_kill < FALL * INTERVAL + TIMEOUT + 0.3, t_down - t_kill
    # From then on, nothing dials it. (Connections are sequential: once one
    # started after the log line is done, none picked before it is left.)
    stream.wait_count(t_down, 1, timeout=2)
    n0 = syns()
    # Until it was marked down, connections did dial it, were refused, and
    # went elsewhere (checked below: no client saw a failure).
    assert n0 > n_kill, "the stream never hit the dead origin: nothing tested retries"
    stream.wait_count(time.monotonic(), 40, timeout=5)
    n1 = syns()
    assert n1 == n0, f"{n1 - n0} SYNs to the down origin {VICTIM}:8000"
    assert VICTIM not in {r[1] for r in stream.since(t_down)}

    # It comes back: used again after rise x interval (the first check is
    # at most an interval away), + scheduling slack.
    mark = len(prism.err)
    nstopo.run(nstopo.ns_exec(t.o, ["nft", "delete", "table", "inet", down]))
    t_back = time.monotonic()
    prism.wait_log(up_rx("fo", VICTIM), timeout=3, start=mark)
    t_up = time.monotonic()
    assert t_up - t_back < RISE * INTERVAL + 0.3, t_up - t_back
    stream.wait_count(t_up, 30, timeout=5)
    stream.stop()
    after = [r[1] for r in stream.since(t_up + 0.1)]
    assert after.count(VICTIM) >= len(after) // 3 - 2, after

    failed = [r for r in stream.results if r[2]]
    assert not failed, f"{len(failed)} of {len(stream.results)} client connections failed: " \
        f"{failed[:5]}"
    assert len(stream.results) >= 100


def test_passive_cooldown(topo):
    t = topo
    add_origin_addrs(t, POOL)
    for a in POOL:
        start_tags(t, [f"{a}:8000"], name=f"tags-{a}")
    syns = _syn_counter(t, VICTIM, 8000)
    prism = t.start_prism(PASSIVE_CFG)
    stream = Stream(t.c)
    t.on_teardown(stream.stop)
    stream.wait_count(time.monotonic(), 15, timeout=5)

    mark = len(prism.err)
    n_kill = syns()
    # The victim's port refuses from now on (a reset for each SYN, after
    # the counter). Not a kill of its server: a connection the kernel had
    # completed but the server not yet accepted would be reset with it,
    # after prism's connect succeeded, and that client would see it.
    nstopo.run(nstopo.ns_exec(t.o, ["nft", "add", "rule", "inet", "ptsyn", "input", "ip",
                                    "daddr", VICTIM, "tcp", "dport", "8000", "tcp", "flags",
                                    "&", "(syn", "|", "ack)", "==", "syn", "counter",
                                    "reject", "with", "tcp", "reset"]))
    m = prism.wait_log(r"app pv: origin .*198\.51\.100\.23.* is out for", timeout=3, start=mark)
    t_out = time.monotonic()
    n_out = syns()
    # Two refused connects (the configured failures) put it out, counted
    # at the reject rule itself (SYNs served while the rule was being
    # added do not count); none more during the cooldown, and no client
    # noticed (retries).
    assert "2 consecutive connect failures" in m.string, m.string
    out = nstopo.run(nstopo.ns_exec(t.o, ["nft", "list", "chain", "inet", "ptsyn",
                                          "input"])).stdout
    rejected = int(re.search(r"counter packets (\d+) bytes \d+ reject", out).group(1))
    assert rejected == 2, (rejected, out, m.string)
    assert n_out - n_kill >= 2, (n_out - n_kill, m.string)
    stream.wait_count(t_out, 40, timeout=5)
    assert time.monotonic() - t_out < 1.3, "the stream is too slow for the cooldown"
    assert syns() == n_out
    stream.stop()
    failed = [r for r in stream.results if r[2]]
    assert not failed, failed[:5]


def test_retries_skip_tried_origins_in_large_sets(topo):
    """source_hash ranks an app's origins the same way on every attempt
    of a connection, so each retry must skip what the connection already
    tried. Of 70 origins the last 6 refuse: a client whose first choice is
    one of them gets one of the 64 others within its 17 attempts. (Tried
    origins used to be bits of a 64-bit mask, so an origin past index 63
    was dialed again on every retry and the client was refused.)"""
    t = topo
    add_origin_addrs(t, [MANY])
    start_tags(t, [f"{MANY}:{10000 + i}" for i in range(64)])
    syns = _syn_counter(t, MANY, "10064-10069")
    # Clients from 100 addresses: source_hash hashes the address.
    clients = [f"203.0.113.{i}" for i in range(100, 200)]
    add_addrs(t.c, "c0", clients)
    t.start_prism(MANY_CFG)
    res = fetch_many(t.c, [("192.0.2.1", 8000, src) for src in clients])
    failed = [(src, r[1]) for src, r in zip(clients, res) if r[1]]
    assert not failed, f"{len(failed)} of {len(clients)} clients failed: {failed[:5]}"
    # Some clients' first choice was a refusing origin past index 63:
    # without that, nothing here tested the retries.
    n = syns()
    assert n > 0, "no client's first choice was a refusing origin"
    # Each refusing origin is dialed at most once per connection.
    assert n <= 6 * len(clients)


# An origin the edge has no route to (a typo, a withdrawn prefix): connect()
# fails at once (ENETUNREACH) instead of timing out.
UNROUTABLE = "198.18.255.1"
UNROUTABLE_CFG = f"""\
listen: {{workers: 1}}
timeouts: {{connect: 10s, idle: 30s}}
shutdown_grace: 500ms
apps:
  - name: typo
    edge: 192.0.2.0/24
    ports: 8000
    balance: round_robin
    retries: 1
    passive: {{failures: 0}}
    origins: ["{UNROUTABLE}:8000", "198.51.100.21:8000"]
  - name: nowhere
    edge: 192.0.2.0/24
    ports: 8001
    retries: 1
    passive: {{failures: 0}}
    origins: {UNROUTABLE}:8000
"""


def test_unroutable_origin(topo):
    """Every connection to app typo succeeds through its routable origin,
    whichever origin round robin tries first; a connection to app nowhere
    is reset at once (as docs/config.md says), logged as origin_unreachable,
    and prism serves on."""
    t = topo
    add_origin_addrs(t, [POOL[0]])
    start_tags(t, [f"{POOL[0]}:8000"])
    prism = t.start_prism(UNROUTABLE_CFG)
    res = fetch_many(t.c, [("192.0.2.10", 8000, None)] * 6)
    assert [host_of(tag) for tag, _, _ in res] == [POOL[0]] * 6, res

    # 5 s is half the connect timeout: waiting for that fails here.
    cport, what = peers.first_outcome(t.c, "192.0.2.10", 8001, timeout=5)
    assert what == "reset", what
    d = prism.access_for(cport, ("192.0.2.10", 8001))
    assert d["app"] == "nowhere" and d["reason"] == "origin_unreachable", d
    assert prism.alive()

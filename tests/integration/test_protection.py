"""test_protection.py - prism's layered DDoS protection under attack.

Each test builds its own topology (ProtTopo): an attacker namespace and a
separate legitimate-client namespace, each on its own link to the edge, and
the usual origin namespace behind it:

    attacker  203.0.113.2/25 (+ .10 .20 .40)  --  edge 203.0.113.1
    legit     203.0.113.130-153/25            --  edge 203.0.113.129
    origin    198.51.100.10/24                --  edge 198.51.100.1

Spoofed floods use sources from 198.18.0.0/16; the edge routes that range
back to the attacker namespace, which drops the SYN-ACKs (it does not
forward), as backscatter to spoofed sources vanishes on the Internet.

Scenarios, every one bounded in packets and in time, with the legitimate
client served throughout: a spoofed SYN flood, a connection flood that ends
in a kernel ban (and the ban's expiry), a slowloris, deny/allow lists and a
scan of unserved ports, and connection caps under a low fd limit.

Figures for docs/protection.md are printed as "FIGURES {json}" lines (run
with -s to see them).

Also a script (run in the attacker namespace by the flood test):
    test_protection.py synflood NET DST PORT MAX_PACKETS RATE
sends SYNs from random sources in NET, RATE a second (0: at full speed),
until MAX_PACKETS or SIGTERM.
"""

import asyncio
import ipaddress
import json
import os
import random
import re
import signal
import socket
import stat
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nstopo  # noqa: E402
import peers  # noqa: E402
from nstopo import ORIGIN4, ns_exec, run  # noqa: E402

if __name__ != "__main__":  # the SYN generator below needs only the stdlib
    import pytest

ATTACKER4 = "203.0.113.2"
ATTACKER_EXTRA = ("203.0.113.10", "203.0.113.20", "203.0.113.40")
EDGE_A4 = "203.0.113.1"
EDGE_L4 = "203.0.113.129"
LEGIT4 = tuple(f"203.0.113.{i}" for i in range(130, 154))
SPOOF_ROUTE = "198.18.0.0/16"  # edge -> attacker: the backscatter sink
SPOOF_NET = "198.18.128.0/17"  # random spoofed sources of the flood
HEAVY = tuple(f"198.18.100.{i}" for i in range(1, 5))  # spoofed heavy hitters
WEB = "192.0.2.10"  # a served edge address
ECHO_PORT = 7000



class ProtTopo(nstopo.Topology):
    """attacker (c) and legit (l) namespaces on separate links to the edge (e),
    origin (o) behind it."""

    def __init__(self, netns_factory, tmpdir):
        self._factory = netns_factory
        super().__init__(netns_factory, tmpdir)

    def _build(self):
        c, e, o = self.c, self.e, self.o
        self.l = self._factory("l")
        lg = self.l
        nstopo.veth(c, "c0", e, "e0")
        nstopo.veth(lg, "l0", e, "e2")
        nstopo.veth(e, "e1", o, "o0")
        self._batch(c, [
            f"addr add {ATTACKER4}/25 dev c0",
            *[f"addr add {a}/25 dev c0" for a in ATTACKER_EXTRA],
            "link set c0 up",
            f"route add 192.0.2.0/24 via {EDGE_A4}",
        ])
        self._batch(lg, [
            *[f"addr add {a}/25 dev l0" for a in LEGIT4],
            "link set l0 up",
            f"route add 192.0.2.0/24 via {EDGE_L4}",
        ])
        self._batch(e, [
            f"addr add {EDGE_A4}/25 dev e0",
            f"addr add {EDGE_L4}/25 dev e2",
            f"addr add {nstopo.EDGE_O4}/24 dev e1",
            "link set e0 up",
            "link set e1 up",
            "link set e2 up",
            f"route add {SPOOF_ROUTE} via {ATTACKER4}",
        ])
        self._batch(o, [
            f"addr add {ORIGIN4}/24 dev o0",
            "link set o0 up",
            f"route add default via {nstopo.EDGE_O4}",
        ])
        self._wait_links_ready([(c, "c0"), (lg, "l0"), (e, "e0"), (e, "e1"), (e, "e2"),
                                (o, "o0")])


def ptopo(netns, tmp_path, prism_bin):
    t = ProtTopo(netns, tmp_path)
    yield t
    errors = t.teardown()
    assert not errors, errors


if __name__ != "__main__":
    ptopo = pytest.fixture(ptopo)


# --- helpers -------------------------------------------------------------------


def start_echo(t):
    """An asyncio echo origin on ORIGIN4:ECHO_PORT; returns it (.done lists
    the finished connections)."""
    oloop = peers.NsLoop(t.o)
    t.on_teardown(oloop.stop)
    echo = peers.AsyncEcho(oloop, ORIGIN4, ECHO_PORT)
    t.on_teardown(echo.close)
    return echo


def start_prism(t, cfg, binary=None):
    path = t.write("prism.yaml", cfg)
    p = nstopo.Prism(path, ns=t.e, binary=binary)
    t.procs.append(p)
    p.wait_ready()
    p.cfg_path = path
    return p


def counters(t):
    """The packet counts of prism's named nft counters in the edge namespace."""
    out = run(ns_exec(t.e, ["nft", "-j", "list", "counters", "table", "inet", "prism"])).stdout
    res = {}
    for obj in json.loads(out)["nftables"]:
        c = obj.get("counter")
        if c:
            res[c["name"]] = c["packets"]
    return res


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def prism_cli(t, prism_bin, p, *args):
    return run(ns_exec(t.e, [prism_bin, *args, "-c", p.cfg_path]), check=False, timeout=10)


def cpu_seconds(pid):
    """utime + stime of process <pid> (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_ext(ns):
    """TcpExt counters of namespace <ns> (from its /proc/net/netstat)."""
    lines = run(ns_exec(ns, ["cat", "/proc/net/netstat"])).stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            return dict(zip(head.split()[1:], map(int, vals.split()[1:])))
    return {}


def client_ip(d):
    return nstopo.split_hostport(d["client"])[0]


def figures(name, **kw):
    print(f"\nFIGURES {json.dumps({'test': name, **kw})}", flush=True)


def ping(s, payload=b"ping\n", timeout=3.0):
    s.settimeout(timeout)
    s.sendall(payload)
    return peers.recv_exact(s, len(payload)) == payload


def probe(ns, src, dst, port, timeout=1.0):
    """One connection from <src>: 'served' (echo came back through prism),
    or what happened instead: 'timeout', 'reset', 'refused', 'eof', ..."""
    s = nstopo.ns_socket(ns)
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except (socket.timeout, TimeoutError):
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "reset"
        try:
            return "served" if ping(s, timeout=timeout) else "garbled"
        except ConnectionResetError:
            return "reset"
        except EOFError:
            return "eof"
        except (socket.timeout, TimeoutError):
            return "stalled"
    finally:
        s.close()


class Legit:
    """The legitimate clients: an asyncio loop in the legit namespace making
    echo round trips from the LEGIT4 sources in turn."""

    def __init__(self, t):
        self.loop = peers.NsLoop(t.l)
        t.on_teardown(self.loop.stop)

    @staticmethod
    async def _one(src, dst, port, timeout):
        t0 = time.monotonic()
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(dst, port, local_addr=(src, 0)), timeout)
        except (OSError, asyncio.TimeoutError):
            return "connect", time.monotonic() - t0
        try:
            payload = b"legit %s\n" % src.encode()
            w.write(payload)
            got = await asyncio.wait_for(r.readexactly(len(payload)), timeout)
            return ("ok" if got == payload else "garbled"), time.monotonic() - t0
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return "io", time.monotonic() - t0
        finally:
            w.close()

    def run(self, n, dst=WEB, port=8000, concurrency=20, timeout=5.0, limit=120, rate=0):
        """<n> round trips, <concurrency> at a time, started at most <rate> a
        second (0: no pacing); returns (outcomes, sorted latencies)."""

        async def all_():
            sem = asyncio.Semaphore(concurrency)
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def one(i):
                if rate:
                    await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
                async with sem:
                    return await self._one(LEGIT4[i % len(LEGIT4)], dst, port, timeout)

            return await asyncio.gather(*(one(i) for i in range(n)))

        res = self.loop.run(all_(), timeout=limit)
        outcomes = {}
        for what, _ in res:
            outcomes[what] = outcomes.get(what, 0) + 1
        lat = sorted(dt for what, dt in res if what == "ok")
        return outcomes, lat


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return round(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))] * 1000, 1)


# --- 1. SYN flood ------------------------------------------------------------------

FLOOD_RATE = 60_000  # SYNs a second from random spoofed sources (if it can)
FLOOD_MAX = 600_000  # packets of the random-source flood, at most
FLOOD_SECS = 15  # and seconds
LEGIT_RATE = 170  # legitimate connections a second: 1000 take 6s
HEAVY_COUNT = 20000  # packets per heavy hitter (hping3, 5000/s each)

CFG_FLOOD = """\
listen: {workers: 2, address6: "off"}
network: {manage: true, table: prism, sysctls: true}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 1s
protection:
  unserved: drop
  syn_rate_per_source: 200/s
  max_conns_per_source: 100
  conn_rate_per_source: 50/s
  ban: {after: 5, window: 10s, duration: 1m}
apps:
  - name: web
    edge: 192.0.2.0/25
    ports: 8000
    origins: 198.51.100.10:7000
"""


def test_syn_flood_legit_clients_served(ptopo):
    t = ptopo
    echo = start_echo(t)
    p = start_prism(t, CFG_FLOOD)
    legit = Legit(t)
    # Warm up (ARP, the origin path) before measuring anything.
    out, _ = legit.run(24)
    assert out == {"ok": 24}, out

    c0, k0 = counters(t), tcp_ext(t.e)
    cpu0, wall0 = cpu_seconds(p.pid), time.monotonic()
    flood = t.start(["timeout", str(FLOOD_SECS), sys.executable, os.path.abspath(__file__),
                     "synflood", SPOOF_NET, WEB, "8000", str(FLOOD_MAX), str(FLOOD_RATE)],
                    ns=t.c, name="synflood")
    flood.wait_for(lambda: any("started" in x for x in flood.out), 10, "flood start")
    heavy = [t.start(["timeout", "15", "hping3", "-q", "-S", "-p", "8000", "-a", src, "-i",
                      "u200", "-c", str(HEAVY_COUNT), WEB], ns=t.c, name=f"hping3-{src}")
             for src in HEAVY]

    t_legit = time.monotonic()
    out, lat = legit.run(1000, concurrency=20, timeout=5.0, rate=LEGIT_RATE)
    legit_secs = time.monotonic() - t_legit
    # The flood must still be on: every legitimate connection ran under it.
    assert flood.alive(), "the flood ended before the legit client: raise FLOOD_MAX"
    cpu1, wall1 = cpu_seconds(p.pid), time.monotonic()

    flood.send_signal(signal.SIGTERM)
    assert flood.wait(10) == 0, flood.dump()
    m = flood.wait_log(r"sent (\d+) in ([\d.]+)s", stream="out")
    flood_sent, flood_secs = int(m.group(1)), float(m.group(2))
    heavy_sent = 0
    for h in heavy:
        h.wait(20)
        txt = "\n".join(h.out + h.err)
        mh = re.search(r"(\d+) packets transmitted", txt)
        assert mh, txt
        heavy_sent += int(mh.group(1))
    c1, k1 = counters(t), tcp_ext(t.e)
    d, dk = delta(c0, c1), delta(k0, k1)

    ok = out.get("ok", 0)
    figures("syn_flood", legit_ok=ok, legit_total=1000, legit_outcomes=out,
            legit_secs=round(legit_secs, 2), legit_p50_ms=pct(lat, 0.5),
            legit_p99_ms=pct(lat, 0.99), flood_sent=flood_sent, flood_secs=flood_secs,
            flood_pps=round(flood_sent / flood_secs), heavy_sent=heavy_sent,
            prism_cpu_pct=round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
            window_secs=round(wall1 - wall0, 2), counters=d,
            syncookies_sent=dk.get("SyncookiesSent"), listen_drops=dk.get("ListenDrops"),
            listen_overflows=dk.get("ListenOverflows"))

    assert ok >= 990, out
    # Spoofed sources never complete a handshake: prism never saw them. (The
    # log is written by a thread of its own: wait until it has caught up.)
    p.wait_access(count=ok, timeout=10)
    spoofed = ipaddress.ip_network(SPOOF_ROUTE)
    assert not [x for x in p.access if "client" in x
                and ipaddress.ip_address(client_ip(x)) in spoofed]
    # The heavy hitters' SYNs beyond 200/s each were dropped by the meter.
    assert heavy_sent >= len(HEAVY) * HEAVY_COUNT * 0.9, heavy_sent
    assert d["syn_flood"] >= heavy_sent // 2, d
    # The random-source flood overflowed the SYN queue: the kernel answered
    # with cookies instead of queueing, and prism kept serving.
    assert dk.get("SyncookiesSent", 0) > 0, dk
    assert p.alive()
    assert len(echo.done) >= 1000 + 24 - 10


# --- 2. connection flood -> ban -----------------------------------------------------

CFG_BAN = """\
listen: {workers: 2, address6: "off"}
network: {manage: true, table: prism, sysctls: true}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 1s
protection:
  syn_rate_per_source: 0
  max_conns_per_source: 1000
  conn_rate_per_source: 20/s
  ban: {after: 5, window: 10s, duration: 5s}
apps:
  - name: web
    edge: 192.0.2.0/25
    ports: 8000
    origins: 198.51.100.10:7000
"""

BANNED_RX = (r"warn source 203\.0\.113\.2 banned for (\S+): (\d+) limit violations within "
             r"(\S+) \(app web\)")


def test_connection_flood_bans_then_expires(ptopo, prism_bin):
    t = ptopo
    start_echo(t)
    p = start_prism(t, CFG_BAN)
    legit = Legit(t)
    assert probe(t.c, ATTACKER4, WEB, 8000) == "served"

    # The attacker connects as fast as it can (each one closed at once) until
    # its SYNs go unanswered: it has been banned.
    ban_re = re.compile(BANNED_RX)
    outcomes = {}
    deadline = time.monotonic() + 15
    timeouts_in_row = 0
    attempts = 0
    for attempts in range(1, 401):
        _, what, s = peers.open_outcome(t.c, WEB, 8000, timeout=0.5)
        if s:
            s.close()
        outcomes[what] = outcomes.get(what, 0) + 1
        timeouts_in_row = timeouts_in_row + 1 if what == "timeout" else 0
        if timeouts_in_row >= 2 or time.monotonic() > deadline:
            break
    assert timeouts_in_row >= 2, (outcomes, p.dump())
    m = p.wait_log(BANNED_RX, timeout=5)
    banned_line = next(x for x in p.err if ban_re.search(x))
    assert int(m.group(2)) >= 5, banned_line
    limited = p.wait_access(lambda x: x.get("reason") == "rate_limit"
                            and client_ip(x) == ATTACKER4, count=5, timeout=5)

    # The ban is in the kernel set, and the attacker's packets die there.
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    assert cp.returncode == 0, cp.stderr
    ml = re.search(r"^203\.0\.113\.2 expires in (\d+)s$", cp.stdout, re.M)
    assert ml and int(ml.group(1)) <= 5, cp.stdout
    before = counters(t)
    assert probe(t.c, ATTACKER4, WEB, 8000, timeout=0.5) == "timeout"
    banned_pkts = delta(before, counters(t))["banned"]
    assert banned_pkts >= 1

    # Meanwhile the legitimate clients are served.
    out, _ = legit.run(100, concurrency=10)
    assert out == {"ok": 100}, out

    # The ban ends by itself after 5s (long enough to outlast the probes
    # above on a loaded machine): logged, and the attacker gets through.
    mu = p.wait_log(r"info source 203\.0\.113\.2 unbanned", timeout=10)
    unbanned_line = mu.string
    held = nstopo.log_time(unbanned_line) - nstopo.log_time(banned_line)
    assert 4.5 <= held <= 8.0, (banned_line, unbanned_line)
    assert probe(t.c, ATTACKER4, WEB, 8000, timeout=1.5) == "served"
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    assert "203.0.113.2" not in cp.stdout, cp.stdout
    total = counters(t)
    figures("conn_flood_ban", attempts=attempts, attacker_outcomes=outcomes,
            rate_limited=len(limited), ban_held_secs=round(held, 2),
            banned_counter_during_probe=banned_pkts, banned_counter_total=total["banned"],
            banned_line=banned_line.split(" ", 1)[1], unbanned_line=unbanned_line.split(" ", 1)[1])


def test_ban_cli_add_list_del(ptopo, prism_bin):
    t = ptopo
    start_echo(t)
    p = start_prism(t, CFG_BAN)
    src = ATTACKER_EXTRA[0]
    assert probe(t.c, src, WEB, 8000) == "served"

    cp = prism_cli(t, prism_bin, p, "ban", "add", src, "1m")
    assert cp.returncode == 0, cp.stderr
    cp = prism_cli(t, prism_bin, p, "ban", "add", "2001:db8:bad::1", "10s")
    assert cp.returncode == 0, cp.stderr
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    assert cp.returncode == 0, cp.stderr
    m = re.search(rf"^{re.escape(src)} expires in (\d+)s$", cp.stdout, re.M)
    assert m and 50 <= int(m.group(1)) <= 60, cp.stdout
    # An IPv6 address bans its /64.
    m6 = re.search(r"^2001:db8:bad::/64 expires in (\d+)s$", cp.stdout, re.M)
    assert m6 and int(m6.group(1)) <= 10, cp.stdout

    before = counters(t)
    assert probe(t.c, src, WEB, 8000, timeout=0.5) == "timeout"
    assert delta(before, counters(t))["banned"] >= 1
    assert probe(t.c, ATTACKER4, WEB, 8000) == "served"  # only that address

    cp = prism_cli(t, prism_bin, p, "ban", "del", src)
    assert cp.returncode == 0, cp.stderr
    assert probe(t.c, src, WEB, 8000, timeout=2.0) == "served"
    cp = prism_cli(t, prism_bin, p, "ban", "del", src)
    assert cp.returncode != 0, "deleting an address that is not banned must fail"
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    assert src not in cp.stdout, cp.stdout


CFG_BAN_ONE = CFG_BAN.replace("max_conns_per_source: 1000", "max_conns_per_source: 1").replace(
    "conn_rate_per_source: 20/s", "conn_rate_per_source: 0").replace(
    "ban: {after: 5, window: 10s, duration: 5s}", "ban: {after: 1, window: 10s, duration: 10s}")


def test_guard_keeps_a_longer_ban_it_did_not_write(ptopo, prism_bin):
    """A ban in the kernel that prism's ban thread did not write (here by
    `prism ban add`; also one put back when the table is replaced) and
    that outlasts the app's: a violation of that source must not replace
    it with the app's shorter ban (the kernel keeps one timeout per
    source). The violation comes from connections the kernel completed
    before the ban: prism is stopped while the source opens two and the
    operator bans it for an hour; running again, prism accepts both,
    refuses the second (one per source) and asks for its 10 s ban."""
    t = ptopo
    start_echo(t)
    p = start_prism(t, CFG_BAN_ONE)
    src = ATTACKER_EXTRA[1]
    socks = []
    t.on_teardown(lambda: [s.close() for s in socks])
    with nstopo.stopped(p.pid):
        for k in range(2):
            s = nstopo.ns_socket(t.c)
            socks.append(s)
            s.bind((src, 0))
            s.settimeout(5)
            s.connect((WEB, 8000))  # the kernel completes it: prism is stopped
        cp = prism_cli(t, prism_bin, p, "ban", "add", src, "1h")
        assert cp.returncode == 0, cp.stderr
    p.wait_log(rf"info source {re.escape(src)}: not banned for 10s \(app web\): already "
               r"banned for \S+ more")
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    m = re.search(rf"^{re.escape(src)} expires in (\d+)s$", cp.stdout, re.M)
    assert m and int(m.group(1)) > 3500, cp.stdout
    assert not [x for x in p.err if re.search(rf"warn source {re.escape(src)} banned", x)]


def test_ban_lifted_by_hand_bans_again(ptopo, prism_bin):
    """`prism ban del` lifts prism's own ban before its end: the source's
    next violations count again and ban it anew. (They were ignored until
    the lifted ban would have ended, so the source went unbanned however
    it behaved.) One connection per source: the source holds one, and each
    further one is refused, a violation."""
    t = ptopo
    start_echo(t)
    p = start_prism(t, CFG_BAN_ONE)
    src = ATTACKER_EXTRA[2]
    held = nstopo.ns_socket(t.c)
    t.on_teardown(held.close)
    held.bind((src, 0))
    held.settimeout(5)
    held.connect((WEB, 8000))
    held.sendall(b"x")
    assert held.recv(1) == b"x"  # admitted: the source's one connection
    banned = rf"warn source {re.escape(src)} banned for 10s"
    assert probe(t.c, src, WEB, 8000) != "served"
    p.wait_log(banned)
    assert probe(t.c, src, WEB, 8000, timeout=0.5) == "timeout"

    cp = prism_cli(t, prism_bin, p, "ban", "del", src)
    assert cp.returncode == 0, cp.stderr
    # A violation under the lifted ban, from a second into it, has prism
    # look in the kernel (the rule is one of time: the violations are
    # paced); the next one bans the source again.
    outcomes = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        outcomes.append(probe(t.c, src, WEB, 8000, timeout=0.5))
        if outcomes[-1] == "timeout":
            break
        time.sleep(0.05)
    p.wait_log(rf"info source {re.escape(src)}: no longer banned in the kernel "
               r"\(`prism ban del`\?\): its limit violations count again \(app web\)",
               timeout=5)
    assert outcomes[-1] == "timeout", (len(outcomes), outcomes[-5:], p.dump())
    assert len([x for x in p.err if re.search(banned, x)]) == 2, p.dump()
    cp = prism_cli(t, prism_bin, p, "ban", "list")
    m = re.search(rf"^{re.escape(src)} expires in (\d+)s$", cp.stdout, re.M)
    assert m and int(m.group(1)) <= 10, cp.stdout


# --- 3. slowloris ---------------------------------------------------------------------

SLOW_CONNS = 2000
PER_SOURCE = 100

CFG_SLOW = f"""\
listen: {{workers: 2, address6: "off"}}
network: {{manage: true, table: prism, sysctls: true}}
timeouts: {{connect: 2s, idle: 30s}}
shutdown_grace: 1s
protection:
  syn_rate_per_source: 0
  max_conns_per_source: {PER_SOURCE}
  conn_rate_per_source: 0
  ban: {{after: 0}}
  first_byte_timeout: 1s
apps:
  - name: web
    edge: 192.0.2.0/25
    ports: 8000
    origins: 198.51.100.10:7000
"""


def _open_many(n, src, dst, port):
    """<n> non-blocking connects from <src>; the sockets (handshakes run in
    the kernel)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.setblocking(False)
            s.bind((src, 0))
            try:
                s.connect((dst, port))
            except BlockingIOError:
                pass
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _max_overlap(intervals, slack=0.005):
    """Most intervals (start, end) open at one instant, each shrunk by
    <slack> seconds at both ends (log timestamps have ms resolution)."""
    ev = []
    for a, b in intervals:
        if b - a > 2 * slack:
            ev += [(a + slack, 1), (b - slack, -1)]
    ev.sort(key=lambda x: (x[0], x[1]))
    cur = best = 0
    for _, k in ev:
        cur += k
        best = max(best, cur)
    return best


def test_slowloris_capped_and_reclaimed(ptopo):
    t = ptopo
    echo = start_echo(t)
    p = start_prism(t, CFG_SLOW)
    legit = Legit(t)
    out, _ = legit.run(10)
    assert out == {"ok": 10}, out
    p.wait_access(count=10)  # logged as each ends: its fds are closed
    base_fds = p.fd_count()
    n_access0 = len(p.access)

    socks = nstopo.ns_call(t.c, _open_many, SLOW_CONNS, ATTACKER4, WEB, 8000)
    t.on_teardown(lambda: [s.close() for s in socks])
    # The legitimate clients, while the attacker holds its share.
    out, lat = legit.run(200, concurrency=20)
    fds_during = p.fd_count()
    assert out == {"ok": 200}, out

    mine = p.wait_access(lambda d: client_ip(d) == ATTACKER4, count=SLOW_CONNS, timeout=20)
    reasons = {}
    for d in mine:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    resets = 0
    for s in socks:
        try:
            s.recv(1)
        except ConnectionResetError:
            resets += 1
        except (BlockingIOError, OSError):
            pass
        s.close()
    # Every attacker connection has ended; prism holds no more fds than before.
    deadline = time.monotonic() + 5
    while p.fd_count() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)  # the access line is logged just before the close
    fds_after = p.fd_count()

    fbt = [d for d in mine if d["reason"] == "first_byte_timeout"]
    intervals = []
    for d in fbt:
        end = nstopo.log_time(d["time"])
        intervals.append((end - int(d["duration_ms"]) / 1000, end))
    figures("slowloris", attacker_conns=SLOW_CONNS, reasons=reasons, resets_seen=resets,
            max_concurrent_attacker=_max_overlap(intervals), base_fds=base_fds,
            fds_during=fds_during, fds_after=fds_after, legit_ok=out.get("ok", 0),
            legit_p99_ms=pct(lat, 0.99))

    assert set(reasons) <= {"source_limit", "first_byte_timeout"}, reasons
    assert len(fbt) >= PER_SOURCE, reasons
    assert reasons.get("source_limit", 0) >= SLOW_CONNS // 2, reasons
    assert resets >= reasons["source_limit"], (resets, reasons)
    for d in fbt:
        assert 900 <= int(d["duration_ms"]) <= 3000, d
        assert d.get("c2o") == "0" and d.get("origin") == "-", d
    assert _max_overlap(intervals) <= PER_SOURCE, reasons
    assert fds_during <= base_fds + 2 * PER_SOURCE + 50, (base_fds, fds_during)
    assert fds_after == base_fds, (base_fds, fds_after)
    p.wait_for(lambda: len(p.access) - n_access0 >= SLOW_CONNS + 200, 10,
               "the access lines of the attacker's and the legitimate connections")
    # Only the legitimate connections reached the origin.
    assert len(echo.done) == 10 + 200, len(echo.done)
    assert p.alive()


# --- 4. deny / allow, global and per app; unserved ports --------------------------------

CFG_LISTS = """\
listen: {workers: 2, address6: "off"}
network: {manage: true, table: prism, sysctls: true}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 1s
protection:
  unserved: drop
  deny: [203.0.113.16/28]
  allow: [203.0.113.0/27, 203.0.113.128/25]
  syn_rate_per_source: 0
  conn_rate_per_source: 0
  ban: {after: 0}
apps:
  - name: web
    edge: 192.0.2.0/25
    ports: 8000
    origins: 198.51.100.10:7000
  - name: game
    edge: 192.0.2.0/25
    ports: 8001
    origins: 198.51.100.10:7000
    protection: {deny: [203.0.113.8/29]}
  - name: admin
    edge: 192.0.2.0/25
    ports: 8002
    origins: 198.51.100.10:7000
    protection: {allow: [203.0.113.128/25]}
"""

LIST_COUNTERS = ("denied", "not_allowed", "app_denied", "app_not_allowed")
SCAN_PORTS = 1000


def check_list_cases(t, p, echo, cases):
    """Probes each (namespace, source, edge address, port, expected outcome,
    counter that must rise) of <cases>: only that counter of the list
    counters rises, and blocked connections reach neither prism nor the
    origin. Returns (connections served, {probe: counters that rose})."""
    served, seen = 0, {}
    for ns, src, dst, port, want, counter in cases:
        before = counters(t)
        got = probe(ns, src, dst, port, timeout=0.5)
        d = delta(before, counters(t))
        assert got == want, (src, dst, port, got, d)
        for k in LIST_COUNTERS:
            if k == counter:
                assert d[k] >= 1, (src, dst, port, d)
            else:
                assert d[k] == 0, (src, dst, port, k, d)
        seen[f"{src}->{port}"] = {k: d[k] for k in LIST_COUNTERS if d[k]}
        served += want == "served"
    p.wait_access(count=served, timeout=5)
    blocked = {(src, f"{dst}:{port}") for _, src, dst, port, want, _ in cases if want != "served"}
    assert not [d for d in p.access if (client_ip(d), d["edge"]) in blocked], p.access
    deadline = time.monotonic() + 5
    while len(echo.done) < served and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(echo.done) == served, echo.done
    return served, seen


def test_deny_allow_lists_and_unserved_scan(ptopo):
    t = ptopo
    echo = start_echo(t)
    p = start_prism(t, CFG_LISTS)
    a2, a10, a20, a40 = ATTACKER4, *ATTACKER_EXTRA
    legit = LEGIT4[0]
    # (namespace, source, edge, port, expected outcome, nft counter that must rise).
    # web (8000) follows the global lists; game (8001) has its own deny list,
    # which replaces the global one for it; admin (8002) its own allow list.
    cases = [
        (t.c, a2, WEB, 8000, "served", None),
        (t.c, a2, WEB, 8001, "served", None),
        (t.c, a2, WEB, 8002, "timeout", "app_not_allowed"),  # not on admin's allow list
        (t.c, a10, WEB, 8000, "served", None),
        (t.c, a10, WEB, 8001, "timeout", "app_denied"),  # on game's deny list
        (t.c, a20, WEB, 8000, "timeout", "denied"),  # on the global deny list ...
        (t.c, a20, WEB, 8001, "served", None),  # ... which game's own list replaces
        (t.c, a20, WEB, 8002, "timeout", "app_not_allowed"),
        (t.c, a40, WEB, 8000, "timeout", "not_allowed"),  # not on the global allow list
        (t.c, a40, WEB, 8001, "timeout", "not_allowed"),  # game has no allow list of its own
        (t.c, a40, WEB, 8002, "timeout", "app_not_allowed"),
        (t.l, legit, WEB, 8000, "served", None),
        (t.l, legit, WEB, 8001, "served", None),
        (t.l, legit, WEB, 8002, "served", None),
    ]
    served, seen = check_list_cases(t, p, echo, cases)

    # A SYN scan of 1000 ports no app claims, on a served address: dropped
    # (no RST, no SYN-ACK) and counted, nothing reaches prism or the origin.
    n_access = len(p.access)
    before = counters(t)
    cp = run(ns_exec(t.c, ["timeout", "20", "hping3", "-S", "-p", "++20000", "-i", "u500",
                           "-c", str(SCAN_PORTS), WEB]), check=False, timeout=30)
    scan = delta(before, counters(t))
    txt = cp.stdout + cp.stderr
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", txt)
    assert m, txt
    figures("lists_and_scan", probes=seen, scan_sent=int(m.group(1)),
            scan_replies=int(m.group(2)), scan_counters=scan)
    assert int(m.group(1)) == SCAN_PORTS, txt
    assert int(m.group(2)) == 0, txt  # drop: not even a RST
    assert SCAN_PORTS <= scan["unserved"] <= SCAN_PORTS + 20, scan
    assert len(p.access) == n_access
    assert len(echo.done) == served


CFG_LISTS_WHOLE = """\
listen: {workers: 2, address6: "off"}
network: {manage: true, table: prism, sysctls: true}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 1s
protection: {unserved: drop, syn_rate_per_source: 0, conn_rate_per_source: 0, ban: {after: 0}}
apps:
  - {name: private, edge: 192.0.2.40, ports: "*", origins: "198.51.100.10:7000",
     protection: {allow: [203.0.113.128/25]}}
  - {name: public, edge: 192.0.2.41, ports: "*", origins: "198.51.100.10:7000",
     protection: {deny: [203.0.113.10]}}
  - {name: games, edge: 192.0.2.42, ports: "27000-27999", origins: "198.51.100.10:7000",
     protection: {allow: [203.0.113.128/25]}}
"""


def test_app_lists_on_whole_addresses(ptopo):
    """Apps' own lists on every port of an address go into the address
    tiers of the list sets (netsetup_nft.c, claim_tier), a port range into
    the concatenated ones: each is enforced on its own points."""
    t = ptopo
    echo = start_echo(t)
    p = start_prism(t, CFG_LISTS_WHOLE)
    a2, a10 = ATTACKER4, ATTACKER_EXTRA[0]
    legit = LEGIT4[0]
    g = run(ns_exec(t.e, ["nft", "list", "chain", "inet", "prism", "guard"])).stdout
    assert "@appallowdstall4" in g and "@appdenyall4" in g and "@appallowdst4" in g, g
    check_list_cases(t, p, echo, [
        (t.c, a2, "192.0.2.40", 1234, "timeout", "app_not_allowed"),
        (t.l, legit, "192.0.2.40", 1234, "served", None),
        (t.l, legit, "192.0.2.40", 65535, "served", None),
        (t.c, a10, "192.0.2.41", 5555, "timeout", "app_denied"),
        (t.c, a2, "192.0.2.41", 5555, "served", None),
        (t.c, a2, "192.0.2.42", 27500, "timeout", "app_not_allowed"),
        (t.l, legit, "192.0.2.42", 27500, "served", None),
    ])


# --- 5. caps under a low fd limit -------------------------------------------------------

NOFILE = 64
PROC_CAP = 20
GAME_CAP = 8

CFG_CAPS = f"""\
listen: {{workers: 1, address6: "off"}}
network: {{manage: true, table: prism, sysctls: true}}
timeouts: {{connect: 2s, idle: 30s}}
shutdown_grace: 1s
protection:
  max_conns: {PROC_CAP}
  syn_rate_per_source: 0
  conn_rate_per_source: 0
  max_conns_per_source: 0
  ban: {{after: 0}}
apps:
  - name: web
    edge: 192.0.2.0/25
    ports: 8000
    origins: 198.51.100.10:7000
  - name: game
    edge: 192.0.2.0/25
    ports: 8001
    origins: 198.51.100.10:7000
    max_conns: {GAME_CAP}
"""


def _hold(t, port, n):
    """Opens <n> connections from the attacker and pings each: returns
    (served sockets, count of the others), the others closed."""
    served, shed = [], 0
    for _ in range(n):
        try:
            s = peers.connect(t.c, WEB, port, timeout=3)
        except ConnectionResetError:  # shed before connect() returned
            shed += 1
            continue
        try:
            ok = ping(s, timeout=2)
        except (ConnectionResetError, EOFError, socket.timeout, TimeoutError):
            ok = False
        if ok:
            served.append(s)
        else:
            s.close()
            shed += 1
    return served, shed


def test_caps_shed_under_low_fd_limit(ptopo, prism_bin):
    t = ptopo
    wrapper = os.path.join(t.tmp, "prism-lowfd")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec prlimit --nofile={NOFILE}:{NOFILE} {prism_bin} "$@"\n')
    os.chmod(wrapper, stat.S_IRWXU)
    start_echo(t)
    p = start_prism(t, CFG_CAPS, binary=wrapper)
    held = []
    t.on_teardown(lambda: [s.close() for s in held])
    base_fds = p.fd_count()

    # The game app fills to its own cap; the rest of its connections are shed.
    game, shed_game = _hold(t, 8001, 30)
    held += game
    assert len(game) == GAME_CAP and shed_game == 30 - GAME_CAP, (len(game), shed_game)
    # web fills the process cap.
    web, shed_web = _hold(t, 8000, 30)
    held += web
    assert len(web) == PROC_CAP - GAME_CAP, (len(web), shed_web)
    # Full: a legitimate client is shed too (that is what the cap is for),
    # and everything held keeps working.
    assert probe(t.l, LEGIT4[0], WEB, 8000, timeout=2.0) in ("reset", "eof")
    for s in held:
        assert ping(s, b"still here\n")
    sheds = p.wait_access(lambda d: d.get("reason") == "shed", count=shed_game + shed_web + 1)
    assert len(sheds) == shed_game + shed_web + 1, len(sheds)
    assert all(d.get("origin") == "-" for d in sheds), sheds[:3]
    fds_full = p.fd_count()
    # The caps keep prism inside its fd limit: it never ran out.
    assert not [x for x in p.err if "not accepting" in x], p.dump()

    # The load goes away: prism serves again, back to its baseline fds.
    n = len(p.access)
    for s in held:
        s.close()
    held.clear()
    p.wait_for(lambda: len(p.access) >= n + PROC_CAP, 10, "the held connections' access lines")
    assert probe(t.l, LEGIT4[0], WEB, 8000) == "served"
    assert probe(t.l, LEGIT4[1], WEB, 8001) == "served"
    deadline = time.monotonic() + 5
    while p.fd_count() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    figures("caps", nofile=NOFILE, base_fds=base_fds, fds_full=fds_full,
            fds_after=p.fd_count(), shed=len(sheds))
    assert p.fd_count() == base_fds
    assert p.alive()
    assert p.stop(timeout=10) == 0


# --- the SYN generator -------------------------------------------------------------------


def _csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _syn(src, dst, sport, dport, seq, ip_id):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = _csum(struct.pack("!4s4sBBH", src, dst, 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, ip_id, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


def synflood_main(net, dst, port, max_packets, rate):
    """Sends SYNs from every address of <net> in turn (random order, random
    source ports) to dst:port, <rate> per second (0: as fast as it can), until
    <max_packets> or SIGTERM; prints 'started', then 'sent N in Ts'."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rng = random.Random(1)
    hosts = list(ipaddress.ip_network(net).hosts())
    rng.shuffle(hosts)
    d = socket.inet_aton(dst)
    pkts = [_syn(h.packed, d, rng.randrange(1024, 65536), port, rng.getrandbits(32),
                 rng.getrandbits(16)) for h in hosts]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    addr = (dst, 0)
    batch = 1000
    print("started", flush=True)
    t0 = time.monotonic()
    n = 0
    while n < max_packets and not stop:
        for i in range(min(batch, max_packets - n)):
            try:
                s.sendto(pkts[(n + i) % len(pkts)], addr)
            except OSError:
                pass  # a full queue drops, as a wire would
        n += min(batch, max_packets - n)
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)  # pacing the sender, not waiting for a state
    print(f"sent {n} in {time.monotonic() - t0:.2f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "synflood":
        synflood_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                      int(sys.argv[6]))
    else:
        sys.exit(f"usage: {sys.argv[0]} synflood NET DST PORT MAX_PACKETS RATE")

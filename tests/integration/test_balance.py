"""test_balance.py - load balancing across an app's origins: weighted
round_robin and random_two distributions over 10,000 connections,
least_conn with held connections, maglev's consistency (same client, same
origin; removing an origin moves only its clients), and origin port
mapping (a port range mapped by offset, a port-less origin keeping the
dialed port).

Also holds the helpers the other load-balancing tests (test_health.py,
test_failover.py, test_dns.py) import: tag servers (origins answering with
their own address), origin/client address setup, one-shot clients.
"""

import asyncio
import collections
import math
import re
import socket
import sys
import threading
import time

import nstopo
import peers

PY = "/usr/bin/python3"

# Origins answering each connection with one line, "ADDR:PORT" of the
# socket that accepted it, then closing; one listener per argument
# ("ADDR:PORT"). A process of its own, so the clients' and prism's log
# readers do not share its GIL, and so a test can kill it like a real
# origin (SIGKILL, by pid). "hold" as first argument: keep each connection
# open (after the tag line) until the peer closes it.
TAG_SERVER = r"""
import asyncio, sys

async def main():
    hold = sys.argv[1] == "hold"
    specs = sys.argv[2:]
    async def handle(r, w):
        try:
            a = w.get_extra_info("sockname")
            w.write(f"{a[0]}:{a[1]}\n".encode())
            await w.drain()
            if hold:
                while await r.read(65536):
                    pass
        except Exception:
            pass
        finally:
            w.close()
    servers = []
    for spec in specs:
        addr, port = spec.rsplit(":", 1)
        servers.append(await asyncio.start_server(handle, addr, int(port), backlog=4096,
                                                  reuse_address=True))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def add_addrs(ns, dev, addrs, plen=24):
    """Adds IPv4 addresses <addrs> to <dev> in <ns> (one ip -batch)."""
    nstopo.run(["ip", "-n", ns, "-batch", "-"],
               input="".join(f"addr add {a}/{plen} dev {dev}\n" for a in addrs))


def add_origin_addrs(t, addrs):
    add_addrs(t.o, "o0", addrs)


def start_tags(t, specs, name="tags", hold=False):
    """A tag server process in the origin namespace listening on every
    'ADDR:PORT' of <specs>; returns it once it listens."""
    p = t.start([PY, "-c", TAG_SERVER, "hold" if hold else "once", *specs], ns=t.o,
                name=name)
    p.wait_log(r"^ready$", timeout=10, stream="out")
    return p


def ns_thread(ns, fn, *args):
    """Starts fn(*args) in a daemon thread inside netns <ns>; returns the
    thread (exceptions end up in fn's own reporting)."""

    def body():
        nstopo.setns(ns)
        fn(*args)

    th = threading.Thread(target=body, daemon=True, name=f"nst-{ns}")
    th.start()
    return th


def fetch_here(dst, port, src=None, timeout=3.0):
    """In the calling thread's namespace: connects to dst:port (from <src>
    when given), reads the origin's tag line up to EOF. Returns (tag,
    client port); raises on any failure (refused, reset, timeout, no tag)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.bind((src or "0.0.0.0", 0))
        cport = s.getsockname()[1]
        s.connect((dst, port))
        data = peers.recv_all(s, 4096)
    finally:
        s.close()
    tag = data.decode("ascii", "replace").strip()
    if not re.fullmatch(r"[0-9.]+:\d+", tag):
        raise ConnectionError(f"no tag from {dst}:{port} (got {data!r})")
    return tag, cport


def fetch(ns, dst, port, src=None, timeout=3.0):
    """fetch_here() from namespace <ns>."""
    return nstopo.ns_call(ns, fetch_here, dst, port, src, timeout, timeout=timeout + 5)


def fetch_many(ns, jobs, timeout=3.0):
    """Runs fetch_here() for every (dst, port, src) of <jobs> one after the
    other in one thread in <ns>; returns a list of (tag or None, error or
    None, client port or None)."""

    def body():
        out = []
        for dst, port, src in jobs:
            try:
                tag, cport = fetch_here(dst, port, src, timeout)
                out.append((tag, None, cport))
            except Exception as e:  # recorded for the test's assertion
                out.append((None, repr(e), None))
        return out

    return nstopo.ns_call(ns, body, timeout=len(jobs) * (timeout + 1) + 10)


def down_rx(app, addr):
    return rf"app {re.escape(app)}: origin .*{re.escape(addr)}.* is down"


def up_rx(app, addr):
    return rf"app {re.escape(app)}: origin .*{re.escape(addr)}.* is up"


def host_of(tag):
    return tag.rsplit(":", 1)[0] if tag else tag


# --- distribution over 10,000 connections ------------------------------------------

POOL = ["198.51.100.21", "198.51.100.22", "198.51.100.23"]

DIST_CFG = """\
listen: {{workers: 2}}
timeouts: {{connect: 2s, idle: 30s}}
shutdown_grace: 1s
apps:
  - name: pool
    edge: 192.0.2.0/24
    ports: "8000-8999"
    balance: {balance}
    retries: 0
    origins:
      - {{address: "198.51.100.21:8000", weight: 3}}
      - {{address: "198.51.100.22:8000", weight: 1}}
      - {{address: "198.51.100.23:8000", weight: 1}}
"""


def _run_many(t, n, concurrency):
    """n short connections through prism from the client namespace, at most
    <concurrency> at a time; returns (tags counter, errors, seconds)."""
    cloop = peers.NsLoop(t.c)
    t.on_teardown(cloop.stop)
    sem_box = {}

    async def one(i):
        async with sem_box["sem"]:
            dst = f"192.0.2.{1 + i % 250}"
            r, w = await asyncio.wait_for(asyncio.open_connection(dst, 8000 + i % 1000), 10)
            try:
                data = await asyncio.wait_for(r.read(4096), 10)
                while True:  # up to EOF: the origin closes after its tag
                    more = await asyncio.wait_for(r.read(4096), 10)
                    if not more:
                        break
                    data += more
            finally:
                w.close()
            return data.decode().strip()

    async def main():
        sem_box["sem"] = asyncio.Semaphore(concurrency)
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    t0 = time.monotonic()
    res = cloop.run(main(), timeout=120)
    took = time.monotonic() - t0
    errors = [repr(r) for r in res if isinstance(r, BaseException)]
    tags = collections.Counter(host_of(r) for r in res if isinstance(r, str))
    return tags, errors, took


def _check_shares(tags, weights, rel_tol):
    total = sum(tags.values())
    wsum = sum(weights.values())
    bad = []
    for addr, w in weights.items():
        want = total * w / wsum
        if abs(tags.get(addr, 0) - want) > rel_tol * want:
            bad.append(f"{addr}: {tags.get(addr, 0)} (want {want:.0f} +-{rel_tol:.0%})")
    assert not bad, f"{dict(tags)}: " + "; ".join(bad)
    assert set(tags) <= set(weights), tags


def _distribution(t, balance):
    add_origin_addrs(t, POOL)
    start_tags(t, [f"{a}:8000" for a in POOL])
    prism = t.start_prism(DIST_CFG.format(balance=balance))
    n = 10000
    tags, errors, took = _run_many(t, n, concurrency=64)
    sys.stderr.write(f"\n{balance}: {n} connections in {took:.1f}s: {dict(tags)}\n")
    assert not errors, f"{len(errors)} failed: {errors[:5]}"
    assert took < 60, took
    _check_shares(tags, {POOL[0]: 3, POOL[1]: 1, POOL[2]: 1}, 0.05)
    # The access log agrees with what the clients saw.
    entries = prism.wait_access(lambda d: d.get("app") == "pool", count=n, timeout=20)
    logged = collections.Counter(host_of(d["origin"]) for d in entries)
    assert logged == tags, (logged, tags)
    return tags


def test_round_robin_weighted_distribution(topo):
    tags = _distribution(topo, "round_robin")
    # Smooth weighted round robin is deterministic per worker: far tighter
    # than the 5% the random algorithms need.
    _check_shares(tags, {POOL[0]: 3, POOL[1]: 1, POOL[2]: 1}, 0.01)


def test_random_two_weighted_distribution(topo):
    _distribution(topo, "random_two")


# --- least_conn ----------------------------------------------------------------------

LC_CFG = """\
listen: {workers: 2}
timeouts: {connect: 2s, idle: 60s}
shutdown_grace: 1s
apps:
  - name: lc
    edge: 192.0.2.0/24
    ports: 8000
    balance: least_conn
    origins: ["198.51.100.21:8000", "198.51.100.22:8000", "198.51.100.23:8000"]
"""


def test_least_conn_held_connections(topo):
    t = topo
    add_origin_addrs(t, POOL)
    start_tags(t, [f"{a}:8000" for a in POOL], hold=True)
    prism = t.start_prism(LC_CFG)
    held = {a: [] for a in POOL}  # origin -> open client sockets
    t.on_teardown(lambda: [s.close() for v in held.values() for s in v])

    def open_one(i):
        s = peers.connect(t.c, f"192.0.2.{1 + i % 200}", 8000, timeout=5)
        line = b""
        while not line.endswith(b"\n"):  # the tag: the origin has accepted it
            b = s.recv(100)
            assert b, f"EOF before the tag (connection {i})"
            line += b
        host = host_of(line.decode().strip())
        held[host].append(s)
        return host

    def spread():
        return {a: len(v) for a, v in held.items()}

    for i in range(30):
        open_one(i)
        c = spread()
        assert max(c.values()) - min(c.values()) <= 1, (i, c)
    # Free six connections of one origin: least_conn must refill exactly
    # that one (round robin would spread the next six over all three).
    victim = POOL[1]
    freed = held[victim][:6]
    del held[victim][:6]
    ports = {str(s.getsockname()[1]) for s in freed}
    for s in freed:
        s.close()
    # Ended (logged) in prism: its count of open connections dropped.
    prism.wait_access(lambda d: d.get("client", "").rsplit(":", 1)[-1] in ports, count=6,
                      timeout=10)
    got = [open_one(100 + i) for i in range(6)]
    assert got == [victim] * 6, (got, spread())
    for i in range(30):
        open_one(200 + i)
        c = spread()
        assert max(c.values()) - min(c.values()) <= 1, (i, c)
    assert sum(spread().values()) == 60


# --- maglev --------------------------------------------------------------------------

MAGLEV5 = [f"198.51.100.{21 + i}" for i in range(5)]
CLIENTS = [f"203.0.113.{i}" for i in range(10, 201)]

MAGLEV_CFG = """\
listen: {{workers: 2}}
timeouts: {{connect: 1s, idle: 30s}}
shutdown_grace: 500ms
apps:
  - name: mg
    edge: 192.0.2.0/24
    ports: "8000-8999"
    balance: maglev
    passive: {{failures: 0}}
    health_check: {{interval: 200ms, timeout: 200ms, rise: 2, fall: 2}}
    origins: [{origins}]
"""


def _maglev_round(t, salt):
    """Every client address connects once (destination address and port
    varying with <salt>); returns {client: origin}, asserting no failure."""
    jobs = [(f"192.0.2.{1 + (i * 7 + salt * 13) % 250}", 8000 + (i * 31 + salt * 101) % 1000,
             src) for i, src in enumerate(CLIENTS)]
    res = fetch_many(t.c, jobs)
    errs = [(jobs[i][2], e) for i, (_, e, _) in enumerate(res) if e]
    assert not errs, errs[:5]
    return {src: host_of(tag) for (_, _, src), (tag, _, _) in zip(jobs, res)}


def test_maglev_consistent_and_minimal_disruption(topo):
    t = topo
    add_origin_addrs(t, MAGLEV5)
    add_addrs(t.c, "c0", CLIENTS)
    servers = {a: start_tags(t, [f"{a}:8000"], name=f"tags-{a}") for a in MAGLEV5}
    cfg = MAGLEV_CFG.format(origins=", ".join(f'"{a}:8000"' for a in MAGLEV5))
    prism = t.start_prism(cfg)

    first = _maglev_round(t, 0)
    per_origin = collections.Counter(first.values())
    # Spread over all five (191 clients: ~38 each).
    assert set(per_origin) == set(MAGLEV5) and min(per_origin.values()) >= 15, per_origin
    for salt in (1, 2):
        again = _maglev_round(t, salt)
        moved = {c: (first[c], again[c]) for c in CLIENTS if again[c] != first[c]}
        assert not moved, f"{len(moved)} clients changed origin: {list(moved.items())[:5]}"

    # Origin 5 dies; health checks take it out: only its clients move.
    gone = MAGLEV5[4]
    mark = len(prism.err)
    servers[gone].kill()
    prism.wait_log(down_rx("mg", gone), timeout=5, start=mark)
    after = _maglev_round(t, 3)
    assert gone not in after.values()
    others_moved = [c for c in CLIENTS if first[c] != gone and after[c] != first[c]]
    assert not others_moved, [(c, first[c], after[c]) for c in others_moved][:10]

    # A configuration without origin 5 (a rebuilt table): its clients move,
    # at most 2% of the others do.
    prism.stop(timeout=5)
    cfg4 = MAGLEV_CFG.format(origins=", ".join(f'"{a}:8000"' for a in MAGLEV5[:4]))
    t.start_prism(cfg4, name="prism4.yaml")
    rebuilt = _maglev_round(t, 4)
    assert gone not in rebuilt.values()
    stayers = [c for c in CLIENTS if first[c] != gone]
    moved = [c for c in stayers if rebuilt[c] != first[c]]
    limit = math.floor(0.02 * len(stayers))
    assert len(moved) <= limit, (f"{len(moved)} of {len(stayers)} clients of the remaining "
                                 f"origins moved (limit {limit}): "
                                 f"{[(c, first[c], rebuilt[c]) for c in moved][:10]}")
    # And the new table is itself consistent.
    again = _maglev_round(t, 5)
    assert again == rebuilt


# --- port mapping --------------------------------------------------------------------

PORTMAP_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: mapped
    edge: 192.0.2.0/24
    ports: "8000-8999"
    origins:
      - {address: 198.51.100.22, port: "9000-9999"}
  - name: dialed
    edge: 198.18.0.0/24
    ports: "7000-7100"
    origins:
      - address: 198.51.100.21
"""


def test_port_range_mapping_and_dialed_port(topo):
    t = topo
    add_origin_addrs(t, POOL[:2])
    mapped_ports = [9000, 9005, 9123, 9500, 9999]
    dialed_ports = [7000, 7003, 7100]
    start_tags(t, [f"198.51.100.22:{p}" for p in mapped_ports]
               + [f"198.51.100.21:{p}" for p in dialed_ports])
    prism = t.start_prism(PORTMAP_CFG)
    for p in mapped_ports:
        edge_port = p - 1000
        tag, cport = fetch(t.c, "192.0.2.77", edge_port)
        assert tag == f"198.51.100.22:{p}", (edge_port, tag)
        d = prism.access_for(cport, edge=f"192.0.2.77:{edge_port}")
        assert d["app"] == "mapped" and d["origin"] == f"198.51.100.22:{p}", d
    for p in dialed_ports:
        tag, cport = fetch(t.c, "198.18.0.9", p)
        assert tag == f"198.51.100.21:{p}", (p, tag)
        d = prism.access_for(cport, edge=f"198.18.0.9:{p}")
        assert d["app"] == "dialed" and d["origin"] == f"198.51.100.21:{p}", d
    # A mapped port nobody listens on is refused at the origin (prism
    # dialed 9001 for 8001, not some port that happens to listen).
    port, what, c = peers.open_outcome(t.c, "192.0.2.77", 8001, timeout=2)
    if c is not None:
        what = peers.outcome(c, 2)
        c.close()
    assert what in ("reset", "refused", "eof"), what
    d = prism.access_for(port, ("192.0.2.77", 8001))
    assert d["origin"] == "198.51.100.22:9001" and d["reason"] == "origin_refused", d

"""test_chaos_origins.py - randomized origin misbehaviour under waves of
client connections, checked connection by connection: origin selection,
retries, failover, passive health and the connection's life cycle
(src/conn.c: origin_pick, origin_try, attempt_failed, connect_failed,
connected, conn_finalize, conn_timeout; src/hc.c: hc_connect_failed).

Several origins (addresses in 198.51.100.0/24 of the origin namespace,
some of them backups) change their behaviour at random during the run:
healthy (a tag naming the origin, then an echo of what the client sent),
refusing (an nftables rule answers the SYN with a reset), black hole (the
SYN dropped: prism's connect times out), accepting and resetting at once
(SO_LINGER 0, sometimes after a few bytes), accepting and closing at once
(FIN), slow to accept (then healthy). Every client connection either gets
a full, correct exchange with an origin that was healthy when it took it,
or is closed; each has exactly one access line whose reason, origin and
byte counts agree with what the client and the origins saw; none lasts
longer than the connect timeout times the attempts allowed, plus slack;
prism logs nothing unexpected, is alive, and holds no more fds than
before once every connection is gone.

The plan comes from one seed, printed, and taken from $CHAOS_SEED when
set (decimal or 0x...); a failure is reproduced with the seed it printed.
"""

import asyncio
import os
import random
import re
import socket
import struct
import sys
import time

import pytest

import nstopo
import peers
from nstopo import CLIENT4
from test_balance import add_addrs, add_origin_addrs

PORT = 7400
DEFAULT_SEED = 20261127
ADDRS = [f"198.51.100.{31 + i}" for i in range(6)]
# Clients come from several addresses: the hashing balancers spread them.
CLIENTS = [CLIENT4] + [f"203.0.113.{100 + i}" for i in range(15)]
CONNECT_MS = 300
COOLDOWN_MS = 400
FAILURES = 2
CLIENT_TIMEOUT = 6.0
NFT_TABLE = "ptchaoso"

EXPECTED_DIAG = (r" warn net\.ipv4\.tcp_tw_reuse is ",
                 r" warn app co: origin \S+ is out for ")

# Behaviours: nft ones act on the SYN (the listener's behaviour is then
# "healthy" for a SYN that got through before the rule); the rest on what
# the origin does with a connection it accepted.
MODES = (("healthy", 34), ("refuse", 14), ("hole", 10), ("reset", 12), ("reset_bytes", 8),
         ("fin", 10), ("slow", 12))
NFT_MODES = ("refuse", "hole")
FAIL_REASONS = ("origin_refused", "connect_timeout", "origin_unreachable", "no_origin")


def _tag(k):
    return f"T{k}\n".encode()


class Nft:
    """A table of ours in the origin namespace: per-address SYN counters,
    and two sets of addresses whose SYNs are refused (reset) or dropped."""

    def __init__(self, t, addrs):
        self.t = t
        self.addrs = addrs
        rules = "".join(
            f"  ip daddr {a} tcp dport {PORT} tcp flags & (syn | ack) == syn counter\n"
            for a in addrs)
        nstopo.run(nstopo.ns_exec(t.o, ["nft", "-f", "-"]), input=(
            f"table inet {NFT_TABLE} {{\n"
            " set refuse { type ipv4_addr; }\n"
            " set hole { type ipv4_addr; }\n"
            " chain input { type filter hook input priority -20; policy accept;\n"
            f"{rules}"
            f"  tcp dport {PORT} tcp flags & (syn | ack) == syn ip daddr @hole drop\n"
            f"  tcp dport {PORT} tcp flags & (syn | ack) == syn ip daddr @refuse "
            "reject with tcp reset\n"
            " }\n}\n"))
        t.on_teardown(self.remove)

    def remove(self):
        nstopo.run(nstopo.ns_exec(self.t.o, ["nft", "delete", "table", "inet", NFT_TABLE]),
                   check=False)

    def script(self, changes):
        """nft commands moving addresses between sets: {addr: (old, new)}."""
        out = []
        for a, (old, new) in changes.items():
            if old in NFT_MODES:
                out.append(f"delete element inet {NFT_TABLE} {old} {{ {a} }}")
            if new in NFT_MODES:
                out.append(f"add element inet {NFT_TABLE} {new} {{ {a} }}")
        return "\n".join(out) + "\n" if out else ""

    def apply(self, text):
        if text:
            nstopo.run(nstopo.ns_exec(self.t.o, ["nft", "-f", "-"]), input=text)

    def syns(self):
        out = nstopo.run(nstopo.ns_exec(self.t.o, ["nft", "list", "chain", "inet", NFT_TABLE,
                                                   "input"])).stdout
        got = {}
        for m in re.finditer(r"ip daddr (\S+) tcp dport \d+ .*counter packets (\d+)", out):
            got[m.group(1)] = int(m.group(2))
        assert set(got) == set(self.addrs), out
        return got


def _cfg(balance, retries, n_backup, addrs):
    lines = []
    for i, a in enumerate(addrs):
        backup = i >= len(addrs) - n_backup
        lines.append(f"      - {{address: \"{a}:{PORT}\"{', backup: true' if backup else ''}}}")
    return (f"""\
listen: {{workers: 2}}
timeouts: {{connect: {CONNECT_MS}ms, idle: 20s}}
shutdown_grace: 500ms
apps:
  - name: co
    edge: 192.0.2.0/24
    ports: {PORT}
    balance: {balance}
    retries: {retries}
    passive: {{failures: {FAILURES}, cooldown: {COOLDOWN_MS}ms}}
    origins:
""" + "\n".join(lines) + "\n")


class Conn:
    def __init__(self, i, rng):
        self.i = i
        self.cport = 30000 + i
        self.src = CLIENTS[rng.randrange(len(CLIENTS))]
        self.edge = f"192.0.2.{1 + i % 250}"
        self.payload = struct.pack("!I", i) + rng.randbytes(rng.randint(0, 3000))
        self.got = b""
        self.end = None     # "ok", "eof", "reset", "timeout", or an error
        self.t0 = self.t1 = None

    def key(self):
        return (f"{self.src}:{self.cport}", f"{self.edge}:{PORT}")

    def __repr__(self):
        return (f"<conn {self.i} {self.src}:{self.cport}->{self.edge}:{PORT} sent "
                f"{len(self.payload)} got {len(self.got)} {self.got[:6]!r} end {self.end} "
                f"in {(self.t1 or 0) - (self.t0 or 0):.3f}s>")


async def _client(loop, sock, c):
    c.t0 = time.monotonic()
    try:
        sock.setblocking(False)
        sock.bind((c.src, c.cport))
        await loop.sock_connect(sock, (c.edge, PORT))
        send_reset = False
        try:
            await loop.sock_sendall(sock, c.payload)
        except (BrokenPipeError, ConnectionResetError):
            # A reset reaches the first call on the socket: this one. A
            # read then finds the socket shut both ways (EOF) after what
            # was received before.
            send_reset = True
        want = 3 + len(c.payload)
        while len(c.got) < want:
            b = await loop.sock_recv(sock, 65536)
            if not b:
                c.end = "reset" if send_reset else "eof"
                return
            c.got += b
        sock.shutdown(socket.SHUT_WR)
        b = await loop.sock_recv(sock, 65536)
        c.got += b
        c.end = "ok" if not b else "extra"
    except ConnectionResetError:
        c.end = "reset"
    except OSError as e:
        c.end = repr(e)
    finally:
        c.t1 = time.monotonic()
        sock.close()


class Origins:
    """The origins' listeners and their behaviours, on one asyncio loop."""

    def __init__(self, t, addrs, rng):
        self.addrs = addrs
        self.rng = rng
        self.mode = {a: "healthy" for a in addrs}
        # Per address: (start, settled, mode). A change is in effect
        # somewhere between the start and the end of its nft command (and
        # the accept loop's next turn), so a mode may hold from the start
        # of its change to the settling of the next one.
        self.history = {a: [(0.0, 0.0, "healthy")] for a in addrs}
        self.lis = {}
        for a in addrs:
            lis = peers.Listener(t.o, a, PORT, backlog=512)
            lis.sock.setblocking(False)
            t.on_teardown(lis.close)
            self.lis[a] = lis
        self.accepted = {a: {} for a in addrs}  # behaviour -> count
        self.served = []  # (addr, conn id, bytes echoed, error)
        self.tasks = set()

    def app_mode(self, a):
        m = self.mode[a]
        return "healthy" if m in NFT_MODES else m

    async def accept_loop(self, a):
        loop = asyncio.get_running_loop()
        k = self.addrs.index(a)
        while True:
            if self.mode[a] == "slow":
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))  # the slowness itself
            s, _ = await loop.sock_accept(self.lis[a].sock)
            s.setblocking(False)
            m = self.app_mode(a)
            self.accepted[a][m] = self.accepted[a].get(m, 0) + 1
            tk = asyncio.ensure_future(self.serve(loop, k, a, s, m))
            self.tasks.add(tk)
            tk.add_done_callback(self.tasks.discard)

    async def serve(self, loop, k, a, s, m):
        try:
            if m in ("reset", "reset_bytes"):
                if m == "reset_bytes":
                    s.send(b"!" * self.rng.randint(1, 3))
                peers.set_linger0(s)
                return
            if m == "fin":
                return
            # healthy, slow: the tag, then echo until EOF.
            await loop.sock_sendall(s, _tag(k))
            head, n, err = b"", 0, None
            try:
                while True:
                    b = await loop.sock_recv(s, 65536)
                    if not b:
                        break
                    if len(head) < 4:
                        head += b[:4 - len(head)]
                    await loop.sock_sendall(s, b)
                    n += len(b)
            except OSError as e:
                err = repr(e)
            cid = struct.unpack("!I", head)[0] if len(head) == 4 else None
            self.served.append((a, cid, n, err))
        except OSError:
            pass
        finally:
            s.close()

    def was(self, a, modes, t0, t1, slack=0.15):
        """Whether origin <a> was in one of <modes> at some time in
        [t0 - slack, t1] (monotonic)."""
        h = self.history[a]
        for j, (ts, _settled, m) in enumerate(h):
            end = h[j + 1][1] if j + 1 < len(h) else float("inf")
            if m in modes and ts <= t1 and end >= t0 - slack:
                return True
        return False


PARAMS = [("round_robin", 2, 1, 5), ("least_conn", 1, 2, 6), ("source_hash", 3, 0, 4),
          ("random_two", 2, 1, 5)]


@pytest.mark.parametrize("balance,retries,n_backup,n_origins", PARAMS,
                         ids=[p[0] for p in PARAMS])
def test_chaos_origins(topo, balance, retries, n_backup, n_origins):
    t = topo
    name = f"test_chaos_origins[{balance}]"
    seed = nstopo.chaos_seed(name, DEFAULT_SEED)
    rng = random.Random(f"{seed}-{balance}")
    n_conns = int(os.environ.get("CHAOS_CONNS", "240"))
    wave = 12
    addrs = ADDRS[:n_origins]
    add_origin_addrs(t, addrs)
    add_addrs(t.c, "c0", CLIENTS[1:])
    nft = Nft(t, addrs)
    orgs = Origins(t, addrs, random.Random(rng.getrandbits(64)))
    conns = [Conn(i, rng) for i in range(n_conns)]
    csocks = nstopo.ns_call(t.c, lambda: [socket.socket() for _ in range(n_conns)])
    t.on_teardown(lambda: [s.close() for s in csocks])
    prism = t.start_prism(_cfg(balance, retries, n_backup, addrs))
    aloop = peers.NsLoop(t.o)
    t.on_teardown(aloop.stop)
    fd0 = prism.fd_count()
    mode_rng = random.Random(rng.getrandbits(64))
    stats = {}
    base = time.monotonic()

    async def chaos(stop):
        loop = asyncio.get_running_loop()
        for _step in range(200):
            if stop.is_set():
                return
            await asyncio.sleep(mode_rng.uniform(0.08, 0.3))  # when behaviours change
            changes = {}
            for a in addrs:
                if mode_rng.random() < 0.5:
                    new = mode_rng.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
                    if new != orgs.mode[a]:
                        changes[a] = (orgs.mode[a], new)
            text = nft.script(changes)
            start = time.monotonic() - base
            await loop.run_in_executor(None, nft.apply, text)
            now = time.monotonic() - base
            for a, (_old, new) in changes.items():
                orgs.mode[a] = new
                orgs.history[a].append((start, now, new))
                stats[f"mode_{new}"] = stats.get(f"mode_{new}", 0) + 1

    async def main():
        loop = asyncio.get_running_loop()
        acceptors = [asyncio.ensure_future(orgs.accept_loop(a)) for a in addrs]
        stop = asyncio.Event()
        changer = asyncio.ensure_future(chaos(stop))
        try:
            for w0 in range(0, n_conns, wave):
                batch = [asyncio.wait_for(_client(loop, csocks[c.i], c), CLIENT_TIMEOUT)
                         for c in conns[w0:w0 + wave]]
                res = await asyncio.gather(*batch, return_exceptions=True)
                for c, r in zip(conns[w0:w0 + wave], res):
                    if isinstance(r, asyncio.TimeoutError):
                        c.end = "timeout"
                await asyncio.sleep(0.12)  # pacing: the waves span many changes
        finally:
            stop.set()
            await asyncio.gather(changer, return_exceptions=True)
            for tk in acceptors:
                tk.cancel()
            await asyncio.gather(*acceptors, return_exceptions=True)
            # The served handlers end with their connections.
            if orgs.tasks:
                await asyncio.wait(list(orgs.tasks), timeout=5)

    t_start = time.monotonic()
    aloop.run(main(), timeout=90)
    took = time.monotonic() - t_start
    for c in conns:
        c.t0 -= base
        c.t1 -= base

    # Every connection has exactly one access line.
    keys = {c.key(): c for c in conns}
    entries = prism.wait_access(lambda d: (d.get("client"), d.get("edge")) in keys,
                                count=n_conns, timeout=10)
    by_key = {}
    for d in entries:
        by_key.setdefault((d["client"], d["edge"]), []).append(d)
    dup = [v for v in by_key.values() if len(v) != 1]
    assert not dup, f"seed {seed}: connections with several access lines: {dup[:5]}"

    served = {}
    for a, cid, n, err in orgs.served:
        served.setdefault(cid, []).append((a, n, err))
    limit_ms = CONNECT_MS * (retries + 1) + 250 + 1000  # slow accepts, scheduling slack
    wrong = []
    for c in conns:
        d = by_key[c.key()][0]
        c2o, o2c, reason, origin = int(d["c2o"]), int(d["o2c"]), d["reason"], d["origin"]
        stats[f"end_{c.end}"] = stats.get(f"end_{c.end}", 0) + 1
        stats[reason] = stats.get(reason, 0) + 1
        why = []
        if c.end == "ok":
            tag = c.got[:3]
            k = next((k for k in range(len(addrs)) if _tag(k) == tag), None)
            if k is None or c.got[3:] != c.payload:
                why.append("wrong bytes")
            else:
                if origin != f"{addrs[k]}:{PORT}":
                    why.append(f"tag names {addrs[k]}")
                if reason != "client_closed":
                    why.append("reason")
                if c2o != len(c.payload) or o2c != len(c.got):
                    why.append("counts")
                srv = served.get(c.i, [])
                if [(a, n) for a, n, _ in srv] != [(addrs[k], len(c.payload))]:
                    why.append(f"origin side {srv}")
        elif c.end in ("eof", "reset"):
            if c.got.startswith(b"T") and len(c.got) >= 3:
                why.append("a tag, yet no exchange")
            if o2c != len(c.got) and not (c.end == "reset" and len(c.got) <= o2c):
                why.append("o2c")
            if reason in FAIL_REASONS:
                if c2o or o2c or c.end != "reset":
                    why.append("a connect failure with bytes or without a reset")
                if reason == "origin_refused" and not orgs.was(
                        origin.rsplit(":", 1)[0], ("refuse",), c.t0, c.t1):
                    why.append("refused by an origin that did not refuse")
                if reason == "connect_timeout" and not orgs.was(
                        origin.rsplit(":", 1)[0], ("hole",), c.t0, c.t1):
                    why.append("timed out on an origin that did not drop SYNs")
            elif reason in ("origin_reset", "origin_closed"):
                a = origin.rsplit(":", 1)[0]
                if not orgs.was(a, ("reset", "reset_bytes", "fin"), c.t0, c.t1):
                    why.append("origin end from an origin that never reset or closed")
                # (origin_closed with a reset: the client's bytes came to
                # prism's closed socket.)
            else:
                why.append("unexpected reason")
            if c.i in served:
                why.append(f"reached a healthy origin {served[c.i]}")
        else:
            why.append("client did not finish")
        if int(d["duration_ms"]) > limit_ms or c.t1 - c.t0 > limit_ms / 1000:
            why.append(f"too long (limit {limit_ms} ms)")
        if why:
            wrong.append(f"{c!r} {d} {why}")
    assert not wrong, (f"seed {seed}: {len(wrong)} of {n_conns} wrong:\n"
                       + "\n".join(wrong[:12]))

    # Attempts: at most retries + 1 SYNs per connection, all told.
    syns = nft.syns()
    assert sum(syns.values()) <= n_conns * (retries + 1), (syns, n_conns)

    # No fd left behind once every connection is gone.
    prism.wait_fds(fd0)
    assert prism.alive()
    diag = prism.diagnostics(EXPECTED_DIAG)
    assert not diag, diag[:10]
    accepted = {a: orgs.accepted[a] for a in addrs}
    sys.stderr.write(f"\n{name}: seed {seed}: {n_conns} connections, {took:.1f} s; "
                     f"{dict(sorted(stats.items()))}; SYNs {syns}; accepted {accepted}\n")


# --- an origin that resets before prism sees its connect complete ---------------

RESET_CFG = f"""\
listen: {{workers: 1}}
timeouts: {{connect: 3s, idle: 20s}}
shutdown_grace: 500ms
apps:
  - name: co
    edge: 192.0.2.0/24
    ports: {PORT}
    retries: 0
    passive: {{failures: 1, cooldown: 10s}}
    origins: "{ADDRS[0]}:{PORT}"
"""


def _prism_conns_to(prism, addr, port):
    """prism's TCP sockets (in its namespace) whose peer is addr:port."""
    want = "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(addr))[0], port)
    with open(f"/proc/{prism.pid}/net/tcp") as f:
        return [ln.split()[3] for ln in f.readlines()[1:] if ln.split()[2] == want]


@pytest.mark.parametrize("banner", [b"", b"hello"])
def test_origin_reset_before_connect_seen(topo, banner):
    """The origin completes the handshake, maybe sends a few bytes, and
    resets the connection while prism's worker has not yet handled the
    connect's completion (prism is stopped meanwhile; in production, a busy
    worker). The origin did answer, and then reset: the client gets its
    bytes and then the reset, the access line says origin_reset (as it
    does when the worker is quick), not origin_unreachable ("no route /
    host unreachable", what prism logged before it told the two apart), and
    the origin is not put out by passive health for answering."""
    t = topo
    a = ADDRS[0]
    add_origin_addrs(t, [a])
    nft = Nft(t, [a])
    lis = peers.Listener(t.o, a, PORT)
    t.on_teardown(lis.close)
    prism = t.start_prism(RESET_CFG)
    nft.apply(nft.script({a: ("healthy", "hole")}))  # prism's first SYN is dropped
    cport, what, c = peers.open_outcome(t.c, "192.0.2.10", PORT, timeout=5)
    assert what == "connected", what
    t.on_teardown(c.close)
    deadline = time.monotonic() + 5
    while nft.syns()[a] == 0:  # prism called connect(): no event tells
        assert time.monotonic() < deadline, "prism never dialed the origin"
        time.sleep(0.01)
    mark = len(prism.err)
    with prism.paused():
        nft.apply(nft.script({a: ("hole", "healthy")}))
        o = lis.accept(timeout=5)  # the kernel's SYN retransmit, ~1 s later
        if banner:
            o.sendall(banner)
            peers.wait_acked(o)  # in prism's socket
        peers.set_linger0(o)
        o.close()  # RST
        deadline = time.monotonic() + 5
        while _prism_conns_to(prism, a, PORT):  # the RST closed prism's socket
            assert time.monotonic() < deadline, _prism_conns_to(prism, a, PORT)
            time.sleep(0.01)
    got = b""
    c.settimeout(5)
    try:
        while len(got) < len(banner):
            b = c.recv(64)
            assert b, got
            got += b
    except ConnectionResetError:
        pass
    assert got == banner
    assert peers.outcome(c, 5) == "reset"
    d = prism.access_for(cport, ("192.0.2.10", PORT))
    assert int(d["o2c"]) == len(banner), d
    out = [ln for ln in prism.err[mark:] if " is out for " in ln]
    assert (d["reason"], out) == ("origin_reset", []), (d, out)

"""Running out of fds never crashes prism: it stops accepting for a moment,
keeps serving the connections it has, logs it, and recovers when fds free up.

prism runs under `prlimit --nofile=N:N` (hard limit too, so prism cannot
raise it) with one worker, and the test holds more connections open than
that many fds allow."""

import os
import socket
import stat
import threading

import pytest

import nstopo
import peers

ECHO_PORT = 7000
# About 13 fds of prism's own (stdio, listener, epoll, eventfds, log pipe,
# the log writer's own description of stderr, the table's claim, the
# worker's reserve...), 2 per proxied connection. Both parities of what is
# left: when it is even, accept4 itself fails as the fds run out and the
# connection waits in the backlog; when it is odd, accept takes the last
# fd, and the worker's reserve makes room for that connection's origin
# socket. Before the reserve, that one connection was reset (resource).
NOFILES = (42, 43)
HELD = 30  # more connections than the fds left can proxy

CFG = f"""
listen: {{workers: 1, address6: "off"}}
apps:
  - name: echo
    edge: 192.0.2.0/24
    ports: "8000-8999"
    origins: {nstopo.ORIGIN4}:{ECHO_PORT}
"""


def ping(s, payload):
    s.sendall(payload)
    return peers.recv_exact(s, len(payload)) == payload


def echo_stream(s, n):
    """Sends <n> random bytes (far more than one read of prism's: a stream,
    not a small message) while reading the echo; True if it came back
    whole."""
    data = os.urandom(n)
    s.settimeout(10)
    th = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    th.start()
    got = peers.recv_exact(s, n)
    th.join(10)
    return got == data


def lowfd_prism(topo, prism_bin, nofile):
    """An echo origin, and prism (CFG) under `prlimit --nofile=N:N`, ready."""
    wrapper = os.path.join(topo.tmp, "prism-lowfd")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec prlimit --nofile={nofile}:{nofile} {prism_bin} "$@"\n')
    os.chmod(wrapper, stat.S_IRWXU)
    srv = peers.ThreadServer(topo.o, nstopo.ORIGIN4, ECHO_PORT, peers.echo_handler)
    topo.on_teardown(srv.close)
    p = nstopo.Prism(topo.write("prism.yaml", CFG), ns=topo.e, binary=wrapper)
    topo.procs.append(p)
    p.wait_ready()
    return p


@pytest.mark.parametrize("nofile", NOFILES)
def test_fd_exhaustion_pauses_and_recovers(topo, prism_bin, nofile):
    p = lowfd_prism(topo, prism_bin, nofile)

    # Open HELD connections; the kernel completes every handshake (the
    # backlog is large) but prism can only proxy as many as its fds allow.
    socks = []
    topo.on_teardown(lambda: [s.close() for s in socks])
    for i in range(HELD):
        socks.append(peers.connect(topo.c, "192.0.2.10", 8000 + i, timeout=5))
    p.wait_log(r"warn .*not accepting", timeout=10)
    assert p.alive()

    served, waiting = [], []
    for i, s in enumerate(socks):
        s.settimeout(0.3 if waiting else 2)
        try:
            ok = ping(s, b"x%d\n" % i)
        except (socket.timeout, TimeoutError):
            ok = False
        (served if ok else waiting).append(s)
    assert served, "no connection was served at all"
    assert waiting, "the fd limit was never reached: raise HELD"

    # The served connections keep working while prism is out of fds.
    for s in served:
        assert ping(s, b"still here\n")
    # Even for a stream, which wants a pipe (two fds prism does not have):
    # prism relays it through a heap buffer instead, every byte in order.
    assert echo_stream(served[0], 4 << 20)

    # Free the fds: the connections that waited in the backlog are accepted
    # and relayed now (recovery), without restarting anything.
    for s in served:
        s.close()
    for s in waiting:
        s.settimeout(10)
        # A waiting connection may already hold bytes from the probe above.
        s.sendall(b"after\n")
        got = b""
        while not got.endswith(b"after\n"):
            b = s.recv(4096)
            assert b, "connection closed instead of being served"
            got += b
    assert p.alive()
    for s in waiting:
        s.close()
    assert p.stop(timeout=10) == 0
    # No connection was given up for want of an fd.
    assert not [d for d in p.access if d.get("reason") == "resource"], p.dump()


def test_spare_pipes_give_way_to_connections(topo, prism_bin):
    """A worker keeps up to 32 empty pipes (two fds each) for the next
    streams. Out of fds, they go before any connection waits: every fd
    past prism's own serves a connection."""
    nofile = 100
    p = lowfd_prism(topo, prism_bin, nofile)
    base = p.fd_count()

    # Streams at once, so that their pipes are many; once they end, the
    # pipes stay in the pool.
    streams = [peers.connect(topo.c, "192.0.2.10", 8100 + i, timeout=5) for i in range(6)]
    done = []
    ths = [threading.Thread(target=lambda s=s: done.append(echo_stream(s, 2 << 20)))
           for s in streams]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30)
    assert done == [True] * len(streams)
    for s in streams:
        s.close()
    p.wait_fds(base + 64)
    pooled = p.fd_count() - base
    assert pooled >= 4, "no spare pipes kept: nothing to test"

    socks = []
    topo.on_teardown(lambda: [s.close() for s in socks])
    for i in range(nofile // 2 + 5):
        socks.append(peers.connect(topo.c, "192.0.2.10", 8000 + i, timeout=5))
    p.wait_log(r"warn .*not accepting", timeout=10)
    served = 0
    for i, s in enumerate(socks):
        s.settimeout(2 if served == i else 0.3)
        try:
            served += ping(s, b"x%d\n" % i)
        except (socket.timeout, TimeoutError):
            pass
    # Two fds a connection, and the reserve's for the last one.
    assert served >= (nofile - base) // 2, (served, base, pooled, p.dump())
    for s in socks:
        s.close()
    assert p.stop(timeout=10) == 0
    assert not [d for d in p.access if d.get("reason") == "resource"], p.dump()


PORTS_CFG = f"""
listen: {{workers: 1, address6: "off"}}
apps:
  - name: one
    edge: 192.0.2.10
    ports: "8000-8099"
    retries: 0
    origins: {nstopo.ORIGIN4}:{ECHO_PORT}
  - name: two
    edge: 192.0.2.20
    ports: "8000-8099"
    retries: 1
    origins: [{nstopo.ORIGIN4}:{ECHO_PORT}, {nstopo.ORIGIN4}:{ECHO_PORT + 1}]
"""


def edge_port_range(topo, lo, hi):
    nstopo.run(nstopo.ns_exec(topo.e, ["sysctl", "-qw",
                                       f"net.ipv4.ip_local_port_range={lo} {hi}"]))


def test_no_local_port_towards_the_origin(topo):
    """With no local port left for a connection to an origin (connect()
    fails with EADDRNOTAVAIL, as when TIME_WAIT holds every port), the
    client connection is reset and logged with reason resource, with a
    warning that names the origin. It is the edge's shortage, not the
    origin's fault nor a lack of fds: prism keeps accepting, and an app
    with another origin and retries left serves the connection there
    (ports are per destination)."""
    t = topo
    for port in (ECHO_PORT, ECHO_PORT + 1):
        srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, port, peers.echo_handler)
        t.on_teardown(srv.close)
    edge_port_range(t, 40000, 40001)  # two ports towards each origin
    prism = t.start_prism(PORTS_CFG)

    held = []
    t.on_teardown(lambda: [s.close() for s in held])
    for i in range(2):
        held.append(peers.connect(t.c, "192.0.2.10", 8000 + i))
        assert ping(held[-1], b"held %d\n" % i)

    cport, what = peers.first_outcome(t.c, "192.0.2.10", 8002, timeout=5)
    assert what == "reset", what
    d = prism.access_for(cport, ("192.0.2.10", 8002))
    assert d["app"] == "one" and d["reason"] == "resource", d
    prism.wait_log(r"warn app one: origin %s:%d: no local port left towards it"
                   % (nstopo.ORIGIN4, ECHO_PORT))

    # Round robin starts one of two connections at the full origin: both
    # are served, that one by the other origin.
    for i in range(2):
        s = peers.connect(t.c, "192.0.2.20", 8000 + i, timeout=5)
        held.append(s)
        assert ping(s, b"two %d\n" % i)
    for s in held[:2]:
        assert ping(s, b"still here\n")
    assert not [ln for ln in prism.err if "not accepting" in ln], "paused for a port shortage"

    edge_port_range(t, 40000, 40100)
    s = peers.connect(t.c, "192.0.2.10", 8003, timeout=5)
    held.append(s)
    assert ping(s, b"after\n")
    assert prism.alive()


def test_no_local_port_warned_once_a_second_by_all_workers(topo):
    """The port-shortage warning is limited to one line a second for the
    process: two workers that both meet the shortage (connections one
    after another alternate between them) used to print one each."""
    t = topo
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, ECHO_PORT, peers.echo_handler)
    t.on_teardown(srv.close)
    edge_port_range(t, 40000, 40001)
    prism = t.start_prism(PORTS_CFG.replace("workers: 1", "workers: 2"))
    held = []
    t.on_teardown(lambda: [s.close() for s in held])
    for i in range(2):
        held.append(peers.connect(t.c, "192.0.2.10", 8000 + i))
        assert ping(held[-1], b"held %d\n" % i)
    for i in range(6):
        cport, what = peers.first_outcome(t.c, "192.0.2.10", 8002 + i, timeout=5)
        assert what == "reset", (i, what)
        d = prism.access_for(cport, ("192.0.2.10", 8002 + i))
        assert d["reason"] == "resource", d
    lines = [ln for ln in prism.err if "no local port left" in ln]
    assert lines
    # A second apart (less the coarse clock's few ms), whichever worker
    # logged them: the per-worker limiter printed two within a few ms.
    times = [nstopo.log_time(ln) for ln in lines]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 0.99 for g in gaps), (gaps, lines)

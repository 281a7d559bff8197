"""test_ipv6.py - IPv6 through prism: a v6 client to the v6 edge prefix
relayed byte-exact to a v6 origin, and a v6 edge relayed to a v4 origin,
with [addr]:port forms in the access log."""

import hashlib
import ipaddress
import os
import random
import socket
import threading

import nstopo
import peers
from nstopo import CLIENT6, ORIGIN4, ORIGIN6

CFG = """\
listen: {workers: 2}
timeouts: {connect: 2s, idle: 30s}
apps:
  - name: six
    edge: 2001:db8::/64
    ports: "7000-7099"
    origins: "[2001:db8:1::10]:7000"
  - name: sixtofour
    edge: 2001:db8::4:0/112
    ports: 7100
    origins: 198.51.100.10:7000
"""


def _echo_roundtrip(c, data):
    """Sends <data> from a thread, half-closes, returns what came back."""
    err = []

    def send():
        try:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except Exception as e:
            err.append(e)

    th = threading.Thread(target=send, daemon=True)
    th.start()
    got = peers.recv_all(c)
    th.join(10)
    assert not err, err
    return got


def _run(t, prism, srv, edge, port, size, app, origin):
    data = os.urandom(size)
    c = peers.connect(t.c, edge, port, timeout=10)
    local = c.getsockname()
    assert local[0] == CLIENT6
    got = _echo_roundtrip(c, data)
    c.close()
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    d = prism.access_for(local[1], (edge, port))
    assert d["app"] == app
    assert d["client"] == f"[{CLIENT6}]:{local[1]}"
    assert d["edge"] == f"[{edge}]:{port}"
    assert d["origin"] == origin
    assert int(d["c2o"]) == size and int(d["o2c"]) == size


def test_ipv6_client_to_v6_origin(topo):
    t = topo
    srv = peers.ThreadServer(t.o, ORIGIN6, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    prism = t.start_prism(CFG)
    rng = random.Random(6)
    net = ipaddress.ip_network("2001:db8::/64")
    for i in range(8):
        edge = str(net[rng.randrange(1, 1 << 64)])
        size = rng.choice([0, 1, 4096, 3 << 20, rng.randrange(1, 1 << 20)])
        _run(t, prism, srv, edge, rng.randrange(7000, 7100), size, "six",
             f"[{ORIGIN6}]:7000")
    conns = srv.wait_conns(8)
    assert all("error" not in r for r in conns), conns
    # The origin saw prism's v6 address, not the client's.
    assert {r["peer"][0] for r in conns} == {nstopo.EDGE_O6}


def test_ipv6_edge_to_v4_origin(topo):
    t = topo
    srv = peers.ThreadServer(t.o, ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    prism = t.start_prism(CFG)
    _run(t, prism, srv, "2001:db8::4:7", 7100, 1 << 20, "sixtofour", f"{ORIGIN4}:7000")
    conns = srv.wait_conns(1)
    assert conns[0]["peer"][0] == nstopo.EDGE_O4
    assert conns[0]["bytes"] == 1 << 20

"""test_routing.py - connections land on the app that owns their original
destination (prefix + port), carry that destination, and nothing else is
accepted. Also checks the topology itself (the edge must not forward)."""

import ipaddress
import json
import random

import nstopo
import peers
from nstopo import CLIENT4, ORIGIN4

ORIGIN_B = nstopo.ORIGIN4_EXTRA[0]
ORIGIN_C = nstopo.ORIGIN4_EXTRA[1]

CFG = """\
listen: {workers: 2}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 2s
apps:
  - name: a
    edge: 192.0.2.0/24
    ports: "8000-8999"
    origins: 198.51.100.10:9000
    proxy_protocol: v2
  - name: b
    edge: 198.18.0.0/16
    ports: ["9000-9499", 22]
    origins: 198.51.100.11:9001
    proxy_protocol: v2
"""


def test_topology_edge_does_not_forward(topo_noprism):
    t = topo_noprism
    # The edge answers on both sides...
    srv = peers.Listener(t.e, nstopo.EDGE_C4, 7100)
    try:
        c = peers.connect(t.c, nstopo.EDGE_C4, 7100, timeout=2)
        c.close()
    finally:
        srv.close()
    srv = peers.Listener(t.o, ORIGIN4, 7100)
    try:
        c = peers.connect(t.e, ORIGIN4, 7100, timeout=2)
        c.close()
        # ...but without prism the client cannot reach the origin, nor any
        # edge-prefix address.
        assert peers.try_connect(t.c, ORIGIN4, 7100, timeout=1) is None
        assert peers.try_connect(t.c, "192.0.2.5", 8000, timeout=1) is None
    finally:
        srv.close()
    srv6 = peers.Listener(t.o, nstopo.ORIGIN6, 7101)
    try:
        peers.connect(t.e, nstopo.ORIGIN6, 7101, timeout=2).close()
        assert peers.try_connect(t.c, nstopo.ORIGIN6, 7101, timeout=1) is None
    finally:
        srv6.close()
    # The hole address swallows TCP.
    srv = peers.Listener(t.o, nstopo.ORIGIN4_HOLE, 7000)
    try:
        assert peers.try_connect(t.e, nstopo.ORIGIN4_HOLE, 7000, timeout=0.5) is None
    finally:
        srv.close()


def _random_targets(rng, n):
    """(app, addr, port) pairs spread over both apps' claims."""
    out = []
    net_a = ipaddress.ip_network("192.0.2.0/24")
    net_b = ipaddress.ip_network("198.18.0.0/16")
    for _ in range(n):
        if rng.random() < 0.5:
            addr = net_a[rng.randrange(1, 255)]
            out.append(("a", str(addr), rng.randrange(8000, 9000)))
        else:
            addr = net_b[rng.randrange(1, 65535)]
            if addr.packed[3] in (0, 255):
                addr += 1
            port = 22 if rng.random() < 0.1 else rng.randrange(9000, 9500)
            out.append(("b", str(addr), port))
    return out


def _ask(t, addr, port):
    c = peers.connect(t.c, addr, port, timeout=5)
    try:
        local = c.getsockname()
        line = peers.recv_all(c)
    finally:
        c.close()
    return local, json.loads(line)


def test_routing_random_destinations(topo):
    t = topo
    srv_a = peers.ThreadServer(t.o, ORIGIN4, 9000, peers.report_handler("A", proxy=True))
    srv_b = peers.ThreadServer(t.o, ORIGIN_B, 9001, peers.report_handler("B", proxy=True))
    t.on_teardown(srv_a.close)
    t.on_teardown(srv_b.close)
    prism = t.start_prism(CFG)

    rng = random.Random(20261126)
    targets = _random_targets(rng, 200)
    assert {a for a, _, _ in targets} == {"a", "b"}
    expected = []
    for app, addr, port in targets:
        local, info = _ask(t, addr, port)
        want = {"a": "A", "b": "B"}[app]
        assert info["origin"] == want, (app, addr, port, info)
        assert info["pp"]["version"] == 2
        assert info["pp"]["src"] == [CLIENT4, local[1]], (addr, port, info)
        assert info["pp"]["dst"] == [addr, port], (addr, port, info)
        # prism dials from its origin-side address.
        assert info["peer"][0] == nstopo.EDGE_O4
        origin = f"{ORIGIN4}:9000" if app == "a" else f"{ORIGIN_B}:9001"
        expected.append((app, f"{CLIENT4}:{local[1]}", f"{addr}:{port}", origin))

    entries = prism.wait_access(lambda d: d.get("app") in ("a", "b"), count=200, timeout=10)
    assert len(entries) == 200
    got = [(d["app"], d["client"], d["edge"], d["origin"]) for d in entries]
    assert sorted(got) == sorted(expected)
    for d in entries:
        # Only the origin spoke: its JSON line (the PROXY header is not
        # client payload and must not be counted as such).
        assert int(d["c2o"]) == 0
        assert int(d["o2c"]) > 0


def test_routing_unclaimed_not_accepted(topo):
    t = topo
    srv_a = peers.ThreadServer(t.o, ORIGIN4, 9000, peers.report_handler("A", proxy=True))
    t.on_teardown(srv_a.close)
    prism = t.start_prism(CFG)
    # Sanity: a claimed point works, so the failures below mean something.
    local, info = _ask(t, "192.0.2.9", 8000)
    assert info["origin"] == "A"
    for addr, port in [
        ("192.0.2.9", 7999),     # in a's prefix, port nobody claims
        ("192.0.2.9", 9000),     # b's port, a's prefix
        ("198.18.3.4", 8000),    # a's port, b's prefix
        ("198.19.0.7", 9000),    # routed to the edge, outside every prefix
        ("198.19.0.7", 8000),
    ]:
        s = peers.try_connect(t.c, addr, port, timeout=2)
        if s is not None:
            # Accepted by someone; if it was prism, it must not have reached
            # an origin, but "not accepted" is the requirement.
            s.close()
            raise AssertionError(f"{addr}:{port} was accepted")
    assert len(srv_a.conns) == 1
    assert all(d.get("app") == "a" for d in prism.access)


CFG_PRECEDENCE = """\
listen: {workers: 2}
apps:
  - name: wide
    edge: 192.0.2.0/24
    ports: "8000-8999"
    origins: 198.51.100.10:9000
  - name: longer
    edge: 192.0.2.128/25
    ports: "8500-8599"
    origins: 198.51.100.11:9001
  - name: narrow
    edge: 192.0.2.0/24
    ports: 8888
    origins: 198.51.100.12:9002
"""


def _three_apps(t, cfg, names):
    """Starts report servers named <names> on 198.51.100.10:9000, .11:9001
    and .12:9002 (the origins of the three apps of <cfg>), then prism."""
    for addr, port, name in zip((ORIGIN4, ORIGIN_B, ORIGIN_C), (9000, 9001, 9002), names):
        srv = peers.ThreadServer(t.o, addr, port, peers.report_handler(name))
        t.on_teardown(srv.close)
    return t.start_prism(cfg)


def test_routing_longest_prefix_then_narrowest_range(topo):
    t = topo
    _three_apps(t, CFG_PRECEDENCE, ("wide", "longer", "narrow"))
    cases = [
        ("192.0.2.5", 8550, "wide"),      # /25 does not contain .5
        ("192.0.2.200", 8550, "longer"),  # longer prefix beats wider
        ("192.0.2.200", 8888, "narrow"),  # /25 range lacks 8888; narrow range wins
        ("192.0.2.5", 8888, "narrow"),
        ("192.0.2.5", 8887, "wide"),
        ("192.0.2.129", 8599, "longer"),
        ("192.0.2.129", 8600, "wide"),
    ]
    for addr, port, want in cases:
        _, info = _ask(t, addr, port)
        assert info["origin"] == want, (addr, port, info)


CFG_SHAPES = """\
listen: {workers: 2}
apps:
  - {name: whole, edge: 192.0.2.20, ports: "*", origins: "198.51.100.10:9000"}
  - {name: point, edge: 192.0.2.21, ports: 22, origins: "198.51.100.11:9001"}
  - {name: range, edge: 192.0.2.0/24, ports: "8000-8999", origins: "198.51.100.12:9002"}
"""


def test_routing_each_claim_shape(topo):
    """The guard chain splits the claims by shape into three sets (every
    port of an address, one address and port, the rest: test_net.py's
    test_claims_split_by_shape). A connection to each shape is relayed to
    its app, and a port next to a claimed point is not accepted."""
    t = topo
    _three_apps(t, CFG_SHAPES, ("whole", "point", "range"))
    for addr, port, want in (("192.0.2.20", 1, "whole"), ("192.0.2.20", 65535, "whole"),
                             ("192.0.2.20", 8500, "whole"), ("192.0.2.21", 22, "point"),
                             ("192.0.2.21", 8000, "range"), ("192.0.2.99", 8999, "range")):
        _, info = _ask(t, addr, port)
        assert info["origin"] == want, (addr, port, info)
    for addr, port in (("192.0.2.21", 23), ("192.0.2.22", 22), ("192.0.2.19", 7999)):
        s = peers.try_connect(t.c, addr, port, timeout=1)
        if s is not None:
            s.close()
            raise AssertionError(f"{addr}:{port} was accepted")


UNMANAGED_CFG = """\
listen: {workers: 1, address6: "off"}
network: {manage: false}
timeouts: {connect: 2s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: web
    edge: 192.0.2.0/24
    ports: 8000
    origins: 198.51.100.10:7000
"""


def test_unmanaged_network_and_no_app(topo):
    """network.manage: false: prism installs nothing and removes nothing;
    the operator's own route and TPROXY rule deliver the traffic. Their rule
    here is broader than the config's claims, so a connection that no app
    claims reaches prism too: it is reset and logged as no_app."""
    t = topo
    rule = ("table inet pttest {\n"
            " chain prerouting {\n"
            "  type filter hook prerouting priority mangle; policy accept;\n"
            "  ip daddr 192.0.2.0/24 meta l4proto tcp tproxy ip to 127.0.0.1:15001 accept\n"
            " }\n}\n")
    nstopo.run(nstopo.ns_exec(t.e, ["nft", "-f", "-"]), input=rule)
    t.on_teardown(lambda: nstopo.run(nstopo.ns_exec(t.e, ["nft", "delete", "table", "inet",
                                                          "pttest"]), check=False))
    route = ["ip", "-n", t.e, "route", "add", "local", "192.0.2.0/24", "dev", "lo",
             "table", "local"]
    nstopo.run(route)
    t.on_teardown(lambda: nstopo.run(route[:4] + ["del"] + route[5:], check=False))
    srv = peers.Listener(t.o, ORIGIN4, 7000)
    t.on_teardown(srv.close)
    prism = t.start_prism(UNMANAGED_CFG)
    assert "prism" not in t.edge_nft_tables()
    assert t.edge_prism_routes() == ""

    c = peers.connect(t.c, "192.0.2.77", 8000)
    t.on_teardown(c.close)
    o = srv.accept()
    t.on_teardown(o.close)
    c.sendall(b"claimed")
    assert peers.recv_exact(o, 7) == b"claimed"

    cport, what = peers.first_outcome(t.c, "192.0.2.77", 9000)
    assert what == "reset", what
    d = prism.access_for(cport, ("192.0.2.77", 9000))
    assert d["reason"] == "no_app" and d["edge"] == "192.0.2.77:9000", d

    assert prism.stop(timeout=10) == 0
    assert "pttest" in t.edge_nft_tables()
    out = nstopo.run(["ip", "-n", t.e, "route", "show", "table", "local", "192.0.2.0/24"])
    assert "192.0.2.0/24" in out.stdout, out.stdout

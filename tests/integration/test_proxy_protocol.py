"""test_proxy_protocol.py - HAProxy (accept-proxy) as the origin reports the
addresses it learned from prism's PROXY v1/v2 header: the client's own
address:port and the edge address:port the client dialed."""

import os

import pytest

import nstopo
import peers
from nstopo import CLIENT4, CLIENT6, ORIGIN4, ORIGIN6

HAPROXY = "/usr/sbin/haproxy"

CFG = """\
listen: {workers: 2}
timeouts: {connect: 2s, idle: 10s}
apps:
  - name: pp1
    edge: 192.0.2.20
    ports: 80
    origins: 198.51.100.10:8080
    proxy_protocol: v1
  - name: pp2
    edge: 192.0.2.21
    ports: 80
    origins: 198.51.100.10:8080
    proxy_protocol: v2
  - name: ppoff
    edge: 192.0.2.22
    ports: 80
    origins: 198.51.100.10:8080
    proxy_protocol: off
  - name: pp6v1
    edge: 2001:db8::20
    ports: 80
    origins: "[2001:db8:1::10]:8080"
    proxy_protocol: v1
  - name: pp6v2
    edge: 2001:db8::21
    ports: 80
    origins: "[2001:db8:1::10]:8080"
    proxy_protocol: v2
  - name: pp6to4
    edge: 2001:db8::22
    ports: 80
    origins: 198.51.100.10:8080
    proxy_protocol: v2
"""

HAPROXY_CFG = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend pp
    bind fd@{fd4} accept-proxy
    bind fd@{fd6} accept-proxy
    http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]\\n"
"""


@pytest.fixture
def haproxy(topo):
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip(f"{HAPROXY} not installed")
    t = topo
    # The listening sockets are made here and inherited (bind fd@N): they
    # accept from the moment haproxy is started, no readiness probe needed.
    l4 = peers.Listener(t.o, ORIGIN4, 8080)
    l6 = peers.Listener(t.o, ORIGIN6, 8080)
    t.on_teardown(l4.close)
    t.on_teardown(l6.close)
    fd4, fd6 = l4.sock.fileno(), l6.sock.fileno()
    for s in (l4.sock, l6.sock):
        s.setblocking(True)
    cfg = t.write("haproxy.cfg", HAPROXY_CFG.format(fd4=fd4, fd6=fd6))
    nstopo.run([HAPROXY, "-c", "-f", cfg], pass_fds=(fd4, fd6))
    hp = t.start([HAPROXY, "-db", "-f", cfg], ns=t.o, name="haproxy", pass_fds=(fd4, fd6))
    prism = t.start_prism(CFG)
    return t, prism, hp


def _get(t, edge):
    c = peers.connect(t.c, edge, 80, timeout=5)
    local = c.getsockname()[:2]
    c.sendall(b"GET / HTTP/1.0\r\nHost: prism.test\r\n\r\n")
    resp = peers.recv_all(c)
    c.close()
    return local, resp


@pytest.mark.parametrize("edge,app", [
    ("192.0.2.20", "pp1"),
    ("192.0.2.21", "pp2"),
    ("2001:db8::20", "pp6v1"),
    ("2001:db8::21", "pp6v2"),
    ("2001:db8::22", "pp6to4"),
])
def test_proxy_protocol_haproxy_sees_client(haproxy, edge, app):
    t, prism, hp = haproxy
    local, resp = _get(t, edge)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), (resp, hp.dump())
    want = f"src={local[0]}:{local[1]} dst={edge}:80\n"
    assert local[0] == (CLIENT6 if ":" in edge else CLIENT4)
    assert body.decode() == want
    d = prism.access_for(local[1], (edge, 80))
    assert d["app"] == app
    assert d["edge"] == nstopo.fmt_hostport(edge, 80)


def test_proxy_protocol_off_is_rejected_by_accept_proxy(haproxy):
    # Control: without a header haproxy must not answer 200, which shows the
    # tests above depend on the header prism sends.
    t, prism, hp = haproxy
    try:
        _, resp = _get(t, "192.0.2.22")
    except ConnectionResetError:
        resp = b""
    assert not resp.startswith(b"HTTP/1.1 200"), resp


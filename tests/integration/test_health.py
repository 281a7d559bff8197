"""test_health.py - active health checks: send/expect against a real
redis-server (PING -> +PONG; a wrong expectation marks it down), all
origins down (immediate close, reason no_origin, no connect attempt), and
backup origins (used only while every primary is down), and one origin's
flap behind many apps logged in a few lines, not one per app."""

import os
import re
import time

import pytest

import nstopo
import peers
from test_balance import (add_origin_addrs, down_rx, fetch_many, host_of, start_tags,
                          up_rx)

REDIS = "/usr/bin/redis-server"

REDIS_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: good
    edge: 192.0.2.10
    ports: 6379
    origins: "198.51.100.10:6379"
    passive: {failures: 0}
    health_check: {interval: 300ms, timeout: 300ms, rise: 2, fall: 2,
                   send: "PING\\r\\n", expect: "+PONG"}
  - name: bad
    edge: 192.0.2.11
    ports: 6379
    origins: "198.51.100.10:6379"
    passive: {failures: 0}
    health_check: {interval: 300ms, timeout: 300ms, rise: 2, fall: 2,
                   send: "PING\\r\\n", expect: "+WRONG"}
"""


def _redis_ping(t, edge):
    """PING through prism; returns the reply line, or what happened instead."""
    port, what, c = peers.open_outcome(t.c, edge, 6379, timeout=2)
    if c is None:
        return port, what
    try:
        c.settimeout(2)
        c.sendall(b"PING\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            b = c.recv(100)
            if not b:
                return port, f"eof after {buf!r}"
            buf += b
        return port, buf.decode().strip()
    except ConnectionResetError:
        return port, "reset"
    except (TimeoutError, OSError) as e:
        return port, repr(e)
    finally:
        c.close()


def test_health_check_send_expect_redis(topo):
    if not os.access(REDIS, os.X_OK):
        pytest.fail(f"{REDIS} missing (Debian package redis-server)")
    t = topo
    redis = t.start([REDIS, "--port", "6379", "--bind", nstopo.ORIGIN4, "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                     "--dir", t.tmp], ns=t.o, name="redis")
    redis.wait_log(r"Ready to accept connections", timeout=10, stream="out")
    prism = t.start_prism(REDIS_CFG)
    # The wrong expectation takes its origin down within fall x interval +
    # timeout (plus scheduling slack).
    t0 = time.monotonic()
    prism.wait_log(down_rx("bad", nstopo.ORIGIN4), timeout=3)
    took = time.monotonic() - t0
    assert took < 2.0, took
    # ...while the right one keeps the same server up, through several
    # more check rounds (a check that only connects would pass both).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        port, reply = _redis_ping(t, "192.0.2.10")
        assert reply == "+PONG", reply
    assert not [l for l in prism.err if re.search(down_rx("good", nstopo.ORIGIN4), l)], \
        prism.dump()
    # The down origin gets no connections: closed at once, no_origin.
    port, reply = _redis_ping(t, "192.0.2.11")
    assert reply in ("reset", "refused") or reply.startswith("eof"), reply
    d = prism.access_for(port, ("192.0.2.11", 6379))
    assert d["app"] == "bad" and d["reason"] == "no_origin" and d["origin"] == "-", d
    d = prism.wait_access(lambda d: d.get("app") == "good", count=1)[0]
    assert d["origin"] == f"{nstopo.ORIGIN4}:6379" and int(d["o2c"]) >= 7, d


ALLDOWN_CFG = """\
listen: {workers: 2}
timeouts: {connect: 3s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: dead
    edge: 192.0.2.0/24
    ports: 8000
    retries: 2
    passive: {failures: 0}
    health_check: {interval: 200ms, timeout: 200ms, rise: 2, fall: 2}
    origins: ["198.51.100.99:8000", "198.51.100.99:8001"]
"""


def test_all_origins_down_closes_at_once(topo):
    t = topo
    prism = t.start_prism(ALLDOWN_CFG)
    # Both black-holed origins fail their checks (connect timeouts).
    for port in (8000, 8001):
        prism.wait_log(down_rx("dead", f"{nstopo.ORIGIN4_HOLE}:{port}"), timeout=4)
    for i in range(3):
        t0 = time.monotonic()
        cport, what, c = peers.open_outcome(t.c, f"192.0.2.{20 + i}", 8000, timeout=2)
        if c is not None:
            try:
                what = peers.outcome(c, 2)
            finally:
                c.close()
        took = time.monotonic() - t0
        # Not a 3s connect timeout: prism knew no origin was usable.
        assert what in ("reset", "refused", "eof"), what
        assert took < 1.0, took
        d = prism.access_for(cport, (f"192.0.2.{20 + i}", 8000))
        assert d["reason"] == "no_origin" and d["origin"] == "-", d
        assert int(d["duration_ms"]) < 500, d


BACKUP_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
  - name: bk
    edge: 192.0.2.0/24
    ports: 8000
    retries: 2
    passive: {failures: 0}
    health_check: {interval: 200ms, timeout: 200ms, rise: 2, fall: 2}
    origins:
      - "198.51.100.21:8000"
      - address: "198.51.100.22:8000"
      - {address: "198.51.100.23:8000", backup: true}
"""


def _round(t, n, salt):
    jobs = [(f"192.0.2.{1 + (i + salt) % 250}", 8000, None) for i in range(n)]
    res = fetch_many(t.c, jobs)
    errs = [e for _, e, _ in res if e]
    assert not errs, errs[:5]
    return [host_of(tag) for tag, _, _ in res]


def test_backup_only_when_primaries_down(topo):
    t = topo
    a, b, bk = "198.51.100.21", "198.51.100.22", "198.51.100.23"
    add_origin_addrs(t, [a, b, bk])
    srv = {x: start_tags(t, [f"{x}:8000"], name=f"tags-{x}") for x in (a, b, bk)}
    prism = t.start_prism(BACKUP_CFG)
    got = _round(t, 30, 0)
    assert bk not in got and set(got) == {a, b}, got
    # Both primaries die: the backup takes over.
    mark = len(prism.err)
    srv[a].kill()
    srv[b].kill()
    for x in (a, b):
        prism.wait_log(down_rx("bk", x), timeout=4, start=mark)
    got = _round(t, 20, 1)
    assert set(got) == {bk}, got
    # One primary returns: the backup is left again.
    mark = len(prism.err)
    srv[a] = start_tags(t, [f"{a}:8000"], name=f"tags-{a}-2")
    prism.wait_log(up_rx("bk", a), timeout=4, start=mark)
    got = _round(t, 20, 2)
    assert set(got) == {a}, got


SHARED_APPS = 12
SHARED_CFG = """\
listen: {workers: 2}
timeouts: {connect: 1s, idle: 30s}
shutdown_grace: 500ms
apps:
""" + "".join(f"""\
  - name: s{i}
    edge: 192.0.2.{30 + i}
    ports: 8000
    passive: {{failures: 0}}
    health_check: {{interval: 200ms, timeout: 200ms, rise: 1, fall: 2}}
    origins: "198.51.100.10:8000"
""" for i in range(SHARED_APPS))


def _flap_lines(prism, what):
    """(apps logged one by one, apps counted in summary lines) for the
    origin going <what> ("down" or "up")."""
    one = [l for l in prism.err if re.search(rf"app s\d+: origin .* is {what}:", l)]
    more = [int(m.group(1)) for l in prism.err
            for m in [re.search(rf"(?:warn|info) origin {re.escape(nstopo.ORIGIN4)}:8000 is "
                                rf"{what} for (\d+) more apps sharing its health check", l)]
            if m]
    return len(one), sum(more)


def test_shared_check_logs_a_flap_once_for_all_apps(topo):
    """Apps behind one origin share its check; when it goes down and comes
    back, the log names the first three apps and then counts the others in
    one line, instead of a line per app (65,536 apps made 131,072)."""
    t = topo
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 8000, peers.echo_handler)
    prism = t.start_prism(SHARED_CFG)
    srv.close()
    prism.wait_log(rf"warn origin {re.escape(nstopo.ORIGIN4)}:8000 is down for \d+ more "
                   r"apps sharing its health check \(last: connect: Connection refused\)",
                   timeout=5)
    prism.wait_for(lambda: sum(_flap_lines(prism, "down")) == SHARED_APPS, 5,
                   "a down line for every app")
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 8000, peers.echo_handler)
    t.on_teardown(srv.close)
    prism.wait_for(lambda: sum(_flap_lines(prism, "up")) == SHARED_APPS, 5,
                   "an up line for every app")
    for what in ("down", "up"):
        # Three apps named in a window of 2 x (interval + timeout), which
        # takes every app but a straggler on a slow run.
        one, more = _flap_lines(prism, what)
        assert 3 <= one <= 6 and more >= SHARED_APPS - 6, prism.dump()
    # Every app followed: each relays again.
    for i in range(SHARED_APPS):
        c = peers.connect(t.c, f"192.0.2.{30 + i}", 8000, timeout=5)
        c.sendall(b"again")
        assert peers.recv_exact(c, 5) == b"again"
        c.close()

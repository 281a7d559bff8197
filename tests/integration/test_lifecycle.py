"""test_lifecycle.py - how prism starts and stops: SIGTERM drains open
connections (within shutdown_grace) and stops accepting, grace expiry or a
second SIGTERM closes the rest, SIGHUP/SIGUSR1/SIGUSR2 are ignored and
SIGQUIT stops it, the network setup is removed on exit; the ready and
stopped lines at any log_level; closed standard fds; command-line help, usage errors and exit codes; no file
descriptor leaks after many connections; and a log reader that stops
reading does not stop traffic."""

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time

import nstopo
import peers
from nstopo import ORIGIN4

LISTEN_PORT = 15001


def _cfg(grace):
    return f"""\
listen: {{workers: 2, port: {LISTEN_PORT}}}
timeouts: {{connect: 2s, idle: 30s}}
shutdown_grace: {grace}
apps:
  - name: echo
    edge: 192.0.2.0/25
    ports: "7000-7009"
    origins: 198.51.100.10:7000
  - name: refused
    edge: 192.0.2.200
    ports: 7000
    origins: 198.51.100.10:7999
"""


def _pair(t, ls, port=7000):
    c = peers.connect(t.c, "192.0.2.10", port, timeout=5)
    o = ls.accept(timeout=5)
    return c, o


def _net_installed(t):
    return "prism" in t.edge_nft_tables() and t.edge_prism_routes() != ""


def test_sigterm_drains_then_exits_clean(topo):
    t = topo
    ls = peers.Listener(t.o, ORIGIN4, 7000)
    t.on_teardown(ls.close)
    prism = t.start_prism(_cfg("5s"))
    assert _net_installed(t), (t.edge_nft_tables(), t.edge_prism_routes())
    assert LISTEN_PORT in prism.listening_ports()

    c, o = _pair(t, ls)
    c.sendall(b"before")
    assert peers.recv_exact(o, 6) == b"before"
    # A transfer far larger than the socket buffers is under way at SIGTERM.
    size = 16 << 20
    blob = os.urandom(size)
    sender = threading.Thread(target=o.sendall, args=(blob,), daemon=True)
    sender.start()
    head = peers.recv_exact(c, 1 << 20)

    prism.send_signal(signal.SIGTERM)
    t_term = time.monotonic()
    # prism stops accepting: its listeners go away while the connection lives.
    prism.wait_for(lambda: LISTEN_PORT not in prism.listening_ports(), 3,
                   what="listeners closed after SIGTERM")
    assert prism.alive()
    late = peers.try_connect(t.c, "192.0.2.11", 7000, timeout=2)
    if late is not None:
        # The handshake may have been completed by the kernel; it must not
        # lead anywhere.
        assert peers.outcome(late, 2) in ("eof", "reset")
        late.close()
    assert not ls.pending(), "a connection made after SIGTERM reached the origin"

    # The transfer completes, and the connection still works both ways,
    # then ends normally.
    rest = peers.recv_exact(c, size - len(head))
    sender.join(10)
    assert hashlib.sha256(head + rest).digest() == hashlib.sha256(blob).digest()
    c.sendall(b"after SIGTERM")
    assert peers.recv_exact(o, 13) == b"after SIGTERM"
    o.sendall(b"still here")
    assert peers.recv_exact(c, 10) == b"still here"
    port = c.getsockname()[1]
    c.shutdown(socket.SHUT_WR)
    assert peers.recv_all(o) == b""
    o.close()
    assert peers.recv_all(c) == b""
    c.close()

    assert prism.wait(5) == 0, prism.dump()
    assert time.monotonic() - t_term < 5, "prism waited for the whole grace period"
    d = prism.access_for(port, ("192.0.2.10", 7000))
    assert d["reason"] in ("client_closed", "origin_closed"), d
    assert (int(d["c2o"]), int(d["o2c"])) == (19, size + 10)
    assert "prism" not in t.edge_nft_tables()
    assert t.edge_prism_routes() == ""


def test_shutdown_grace_expiry(topo):
    t = topo
    ls = peers.Listener(t.o, ORIGIN4, 7000)
    t.on_teardown(ls.close)
    prism = t.start_prism(_cfg("1s"))
    c, o = _pair(t, ls)
    c.sendall(b"hi")
    assert peers.recv_exact(o, 2) == b"hi"
    port = c.getsockname()[1]
    prism.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert peers.outcome(c, 5) in ("eof", "reset")
    took = time.monotonic() - t0
    assert peers.outcome(o, 2) in ("eof", "reset")
    assert 0.8 <= took <= 3.0, took
    assert prism.wait(5) == 0, prism.dump()
    d = prism.access_for(port, ("192.0.2.10", 7000))
    assert d["reason"] == "shutdown", d
    assert not _net_installed(t)
    c.close()
    o.close()


def test_cli_exit_codes(prism_bin, netns, tmp_path):
    cp = nstopo.run([prism_bin, "version"], check=False)
    assert cp.returncode == 0 and "prism" in cp.stdout + cp.stderr
    cp = nstopo.run([prism_bin, "--help"], check=False)
    assert cp.returncode == 0 and "usage" in (cp.stdout + cp.stderr).lower()
    cp = nstopo.run([prism_bin, "no-such-command"], check=False)
    assert cp.returncode == 2, cp
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(_cfg("1s"))
    # (argv, exit code, what stdout or stderr must say)
    for argv, rc, says in [
        (["--version"], 0, "prism "),
        (["help"], 0, "prism ban list|add|del"),
        (["help", "run"], 0, "usage: prism run"),
        (["help", "nope"], 2, 'unknown command "nope"'),
        (["run", "-x"], 2, "prism run: bad option -x"),
        (["check", "-xc", str(cfg)], 2, "prism check: bad option -x"),  # in a cluster
        (["check", "-c"], 2, "prism check: option -c needs a FILE"),
        (["check", "-c", str(cfg), "extra"], 2, 'unexpected argument "extra"'),
        (["net"], 2, "usage: prism net up|down|show"),
        (["net", "sideways", "-c", str(cfg)], 2, "usage: prism net up|down|show"),
        (["net", "show"], 2, "usage: prism net"),  # no -c
        (["ban", "-x"], 2, "prism ban: bad option -x"),
        (["ban", "del", "-c", str(cfg)], 2, "usage: prism ban"),
        (["ban", "add", "192.0.2.300", "-c", str(cfg)], 2, "192.0.2.300 is not an address"),
        (["ban", "add", "192.0.2.3", "soon", "-c", str(cfg)], 2, "soon is not a duration"),
    ]:
        cp = nstopo.run([prism_bin, *argv], check=False)
        assert cp.returncode == rc and says in cp.stdout + cp.stderr, (argv, cp)
    # In a namespace of its own, in case it got as far as network setup.
    ns = netns("x")
    cp = nstopo.run(nstopo.ns_exec(ns, [prism_bin, "run", "-c",
                                        str(tmp_path / "missing.yaml")]),
                    check=False, timeout=10)
    assert cp.returncode == 2, cp
    assert "missing.yaml" in cp.stderr
    cp = nstopo.run(nstopo.ns_exec(ns, ["nft", "list", "tables"]))
    assert cp.stdout.strip() == ""


def test_output_that_cannot_be_written_is_an_error(prism_bin, tmp_path):
    # A result a script cannot read must not exit 0 (a full disk, here
    # /dev/full).
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(_cfg("1s"))
    for argv, says in ((["check"], "prism check: cannot write the result: No space left"),
                       (["net", "show"], "prism net show: No space left")):
        with open("/dev/full", "w") as full:
            cp = subprocess.run([prism_bin, *argv, "-c", str(cfg)], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=20)
        assert cp.returncode == 1 and says in cp.stderr, (argv, cp)


def test_fd_hygiene(topo):
    t = topo
    srv = peers.ThreadServer(t.o, ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    prism = t.start_prism(_cfg("1s"))
    base = prism.fd_count()
    base_sockets = sockets(prism.pid)
    n_echo, n_refused, n_reset = 200, 60, 40
    for i in range(n_echo):
        c = peers.connect(t.c, f"192.0.2.{1 + i % 100}", 7000 + i % 10, timeout=5)
        c.sendall(b"x" * (i * 37 % 5000))
        c.shutdown(socket.SHUT_WR)
        assert len(peers.recv_all(c)) == i * 37 % 5000
        c.close()
    for _ in range(n_refused):
        _, what, c = peers.open_outcome(t.c, "192.0.2.200", 7000, timeout=5)
        if c is not None:
            what = peers.outcome(c, 2)
            c.close()
        assert what in ("reset", "refused"), what
    for i in range(n_reset):
        c = peers.connect(t.c, "192.0.2.50", 7001, timeout=5)
        c.sendall(b"abc")
        assert peers.recv_exact(c, 3) == b"abc"
        peers.set_linger0(c)
        c.close()
    total = n_echo + n_refused + n_reset
    prism.wait_access(count=total, timeout=15)
    # Every connection's sockets closed, to the last one (one leaked per
    # connection of any of the three kinds would show); the spare pipes
    # the worker keeps are what else may remain, at most 32 (2 fds each).
    nstopo.poll_until(lambda: sockets(prism.pid) == base_sockets,
                      "prism's sockets back to those it started with")
    after = prism.fd_count()
    assert after <= base + 64, (base, after, sorted(os_fds(prism.pid)))
    reasons = {}
    for d in prism.access:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    # After passive.failures (default 3) refusals the origin is out of the
    # rotation: the rest end at once with no_origin instead.
    assert reasons.get("origin_refused", 0) == 3, reasons
    assert reasons.get("origin_refused", 0) + reasons.get("no_origin", 0) == n_refused, reasons


def sockets(pid):
    """The sockets process <pid> holds, sorted ("socket:[inode]")."""
    return sorted(f for f in os_fds(pid) if f.startswith("socket:"))


def os_fds(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_listener_per_worker_all_serve(topo):
    """Each worker has its own SO_REUSEPORT listener per family (and polls
    the others' as well, to take over a busy worker's queue); a burst of
    concurrent connections is relayed whole, and shutdown closes every
    listener."""
    t = topo
    ls = peers.ThreadServer(t.o, ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(ls.close)
    prism = t.start_prism(_cfg("1s").replace("workers: 2", "workers: 3"))
    assert prism.listen_sockets(LISTEN_PORT) == {"tcp": 3, "tcp6": 3}
    socks = [peers.connect(t.c, "192.0.2.10", 7000 + i % 10, timeout=5) for i in range(60)]
    for i, s in enumerate(socks):
        s.sendall(b"%03d" % i)
    for i, s in enumerate(socks):
        assert peers.recv_exact(s, 3) == b"%03d" % i
        s.close()
    prism.send_signal(signal.SIGTERM)
    prism.wait_for(lambda: prism.listen_sockets(LISTEN_PORT) == {"tcp": 0, "tcp6": 0}, 5,
                   what="every listener closed after SIGTERM")
    assert prism.wait(10) == 0, prism.dump()


DROPPED_RX = re.compile(r" error log: (\d+) lines dropped: stderr is not read fast enough")


def test_stalled_log_reader_does_not_stop_traffic(topo):
    """Whoever reads prism's stderr stops reading: the pipe fills, then
    log_buffer, and from there on access lines are dropped and counted;
    connections are served all along. Once the reader reads again, every
    line is either written or counted in a "lines dropped" warning."""
    t = topo
    srv = peers.ThreadServer(t.o, ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    prism = t.start_prism(_cfg("1s") + "log_buffer: 64KiB\n")
    prism.pause_reading()
    # One access line (~170 bytes) per connection: 1,500 of them are about
    # 250 KB, twice what the pipe (64 KiB) and the buffer (64 KiB) hold.
    # A worker blocked on stderr would stop serving after ~400: a connect
    # or a read below would time out.
    n = 1500
    for i in range(n):
        c = peers.connect(t.c, f"192.0.2.{1 + i % 100}", 7000 + i % 10, timeout=5)
        c.settimeout(5)
        c.sendall(b"ping %d" % i)
        c.shutdown(socket.SHUT_WR)
        assert peers.recv_all(c) == b"ping %d" % i
        c.close()
    prism.resume_reading()

    def accounted():
        dropped = sum(int(m.group(1)) for m in map(DROPPED_RX.search, prism.err) if m)
        return (dropped, len(prism.access)) if dropped + len(prism.access) >= n else None

    dropped, written = prism.wait_for(accounted, 10, "every access line written or counted")
    assert dropped > 0 and written > 0, (dropped, written)
    assert dropped + written == n, (dropped, written)
    # The lines that were written are whole: every field of the line is there.
    for d in prism.access:
        assert d.get("reason") == "client_closed" and d["c2o"] == d["o2c"] != "0", d
    assert prism.stop(timeout=10) == 0


def test_sighup_ignored_second_sigterm_closes_now(topo):
    """SIGHUP, SIGUSR1 and SIGUSR2 are logged and change nothing (the
    default action of the last two would end prism without removing its
    table and routes); SIGQUIT stops it like SIGTERM; a second signal
    during the shutdown grace closes the open connections at once (the
    grace here is far longer than the test waits)."""
    t = topo
    ls = peers.Listener(t.o, ORIGIN4, 7000)
    t.on_teardown(ls.close)
    prism = t.start_prism(_cfg("5m"))
    c, o = _pair(t, ls)
    t.on_teardown(c.close)
    t.on_teardown(o.close)
    prism.send_signal(signal.SIGHUP)
    prism.wait_log(r"warn SIGHUP: configuration reload is not supported yet; ignored")
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        prism.send_signal(sig)
        prism.wait_log(rf"warn {signal.strsignal(sig)}: ignored")
    c.sendall(b"one")
    assert peers.recv_exact(o, 3) == b"one"

    prism.send_signal(signal.SIGQUIT)
    prism.wait_log(r"Quit: stopping: no new connections")
    c.sendall(b"two")  # still relayed: the grace has minutes to run
    assert peers.recv_exact(o, 3) == b"two"
    port = c.getsockname()[1]

    prism.send_signal(signal.SIGTERM)
    prism.wait_log(r"again: closing all connections now")
    assert peers.outcome(c, 5) in ("eof", "reset")
    assert peers.outcome(o, 5) in ("eof", "reset")
    assert prism.wait(5) == 0, prism.dump()
    d = prism.access_for(port, ("192.0.2.10", 7000))
    assert d["reason"] == "shutdown" and int(d["c2o"]) == 6, d
    assert not _net_installed(t)


def test_quiet_log_level_still_says_ready_and_stopped(topo):
    """Supervisors and scripts wait for the ready line: log_level error
    leaves out info and warn lines, but not that one or the stopped one."""
    t = topo
    prism = t.start_prism("log_level: error\n" + _cfg("1s"))
    assert prism.stop(timeout=10) == 0, prism.dump()
    lines = prism.err
    assert len(lines) == 2, prism.dump()
    assert " info ready: listening on " in lines[0], prism.dump()
    assert lines[1].endswith(" info stopped"), prism.dump()


def test_closed_std_fds_are_held_with_dev_null(topo):
    """Started with stdin and stderr closed, prism holds fds 0 and 2 with
    /dev/null: otherwise its first sockets take those numbers, and its log
    lines would be written into one of them (a client's connection)."""
    t = topo
    ls = peers.Listener(t.o, ORIGIN4, 7000)
    t.on_teardown(ls.close)
    path = t.write("prism.yaml", _cfg("1s"))
    p = t.start(["sh", "-c", f'exec 0<&- 2>&- "$0" run -c "$1"', nstopo.prism_path(), path],
                ns=t.e, name="prism")

    def listening():
        try:
            with open(f"/proc/{p.pid}/net/tcp") as f:
                return any(ln.split()[3] == "0A"
                           and int(ln.split()[1].rsplit(":", 1)[1], 16) == LISTEN_PORT
                           for ln in f.readlines()[1:])
        except (FileNotFoundError, ProcessLookupError):
            return False

    # No log line to wait for: listening, with the routes and table in
    # place (installed after the listeners), means connections queue.
    nstopo.poll_until(lambda: (listening() and _net_installed(t)) or not p.alive(),
                      "prism listening", 10)
    assert p.alive(), p.dump()
    assert os.readlink(f"/proc/{p.pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{p.pid}/fd/2") == "/dev/null"
    c, o = _pair(t, ls)
    t.on_teardown(c.close)
    t.on_teardown(o.close)
    c.sendall(b"ping")
    assert peers.recv_exact(o, 4) == b"ping"
    o.sendall(b"pong")
    assert peers.recv_exact(c, 4) == b"pong"
    c.close()
    assert peers.outcome(o, 5) == "eof"
    assert p.stop(timeout=10) == 0
    assert not _net_installed(t)


def test_second_instance_on_the_same_table_is_refused(topo, prism_bin):
    """Listeners share their port through SO_REUSEPORT, so nothing stopped a
    second `prism run` on the same table: it replaced the first one's
    table, and when stopped removed it and the routes, leaving the first
    serving nothing. The table is now claimed in its network namespace for
    as long as prism runs: a second run, `net up` and `net down` are
    refused, and the first serves on."""
    t = topo
    ls = peers.ThreadServer(t.o, ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(ls.close)
    prism = t.start_prism(_cfg("1s"))
    # The holder is named: an abstract socket's name has no permissions,
    # so any process of the namespace could hold it.
    busy = (f"table prism is in use by pid {prism.pid} (prism) in this network namespace "
            "(a prism: stop it first")
    for args in (["run", "-c", prism.cfg_path], ["net", "up", "-c", prism.cfg_path],
                 ["net", "down", "-c", prism.cfg_path], ["net", "down", "-t", "prism"]):
        cp = nstopo.run(nstopo.ns_exec(t.e, [prism_bin, *args]), check=False, timeout=10)
        assert cp.returncode == 1 and busy in cp.stderr, (args, cp.returncode, cp.stderr)
    assert _net_installed(t)
    c = peers.connect(t.c, "192.0.2.10", 7000, timeout=5)
    c.sendall(b"still here")
    assert peers.recv_exact(c, 10) == b"still here"
    c.close()
    prism.send_signal(signal.SIGTERM)
    assert prism.wait(10) == 0, prism.dump()
    assert not _net_installed(t)
    # Stopped, it holds the table no more.
    cp = nstopo.run(nstopo.ns_exec(t.e, [prism_bin, "net", "down", "-t", "prism"]), check=False)
    assert cp.returncode == 0, cp.stderr

"""Fault injection: every allocation of `prism check`, `prism net show` and
`prism run` made to fail in turn (tests/fault/failmalloc.c, LD_PRELOAD).
prism must never die by a signal or hang; a failure must be reported as
running out of memory (never as a config error, nor an exit 0 with wrong
output), and `net show` prints all of its script or nothing. Then every
socket call of the data path made to fail in turn (tests/fault/failsys.c):
at most that connection is lost, with a reason, and no descriptor leaks.

The configs name no hosts: glibc's getaddrinfo itself crashes when some of
its own allocations fail (nss_database.c), which no caller can prevent.
Skipped on a sanitizer build, whose allocator is ASan's."""

import os
import re
import signal
import subprocess
import time

import pytest

import nstopo
import peers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = [os.path.join(REPO, "tests", "configs", "good", f"{n}.yaml")
           for n in ("full", "protection", "balancing", "nested")]
OOM = re.compile(r"out of memory|Cannot allocate memory")


def preload_lib(prism_bin, name, asan_why):
    """The path of the LD_PRELOAD library <name>; the test is skipped on a
    sanitizer build (<asan_why>)."""
    ldd = subprocess.run(["ldd", prism_bin], capture_output=True, text=True).stdout
    if "libasan" in ldd or "libtsan" in ldd:
        pytest.skip(f"sanitizer build: {asan_why}")
    lib = os.path.join(nstopo.build_dir(), name)
    if not os.path.exists(lib):
        pytest.fail(f"{lib} not built (make test builds it)")
    return lib


@pytest.fixture(scope="module")
def failmalloc(prism_bin):
    return preload_lib(prism_bin, "failmalloc.so", "the sanitizer's allocator, not glibc's")


def run_failing(lib, n, argv, count=False, timeout=20):
    env = dict(os.environ, LD_PRELOAD=lib, FAILMALLOC_AT=str(n))
    if count:
        env["FAILMALLOC_COUNT"] = "1"
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def allocations(lib, argv):
    p = run_failing(lib, 0, argv, count=True)
    assert p.returncode == 0, p.stderr
    m = re.search(r"failmalloc: (\d+) allocations", p.stderr)
    assert m and int(m.group(1)) > 10, p.stderr
    return p.stdout, int(m.group(1))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: os.path.basename(c))
def test_check_survives_each_failed_allocation(failmalloc, prism_bin, cfg):
    argv = [prism_bin, "check", "-c", cfg]
    ref, total = allocations(failmalloc, argv)
    for n in range(1, total + 1):
        p = run_failing(failmalloc, n, argv)
        if p.returncode == 0:
            assert p.stdout == ref, (n, p.stdout)
            continue
        assert p.returncode == 2 and OOM.search(p.stderr), (n, p.returncode, p.stderr)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=lambda c: os.path.basename(c))
def test_net_show_prints_all_or_nothing(failmalloc, prism_bin, cfg):
    argv = [prism_bin, "net", "show", "-c", cfg]
    ref, total = allocations(failmalloc, argv)
    assert re.search(r"^table inet \w+ \{", ref, re.M), ref
    for n in range(1, total + 1):
        p = run_failing(failmalloc, n, argv)
        if p.returncode == 0:
            assert p.stdout == ref, (n, p.stdout[-300:])
            continue
        assert p.returncode in (1, 2) and OOM.search(p.stderr), (n, p.returncode, p.stderr)
        assert p.stdout == "", (n, p.stdout[-300:])


RUN_CFG = """\
listen: {address: 127.0.0.1, address6: "off", port: 15999, workers: 2}
network: {manage: false}
shutdown_grace: 0
protection: {max_conns_per_source: 100, conn_rate_per_source: 50/s,
             ban: {after: 5, window: 10s, duration: 5m}}
apps:
  - name: web
    edge: 192.0.2.0/24
    ports: [80, 443]
    balance: maglev
    origins: [198.51.100.10:80, 198.51.100.11:8080]
    health_check: {interval: 1s}
  - name: ssh
    edge: 192.0.2.10
    ports: 22
    origins: 198.51.100.12
"""


def start_stop(lib, env, ns, argv):
    """Starts prism run with <lib> preloaded and the variables <env> set,
    waits for ready or its exit, sends SIGTERM, and returns (exit code,
    stderr). The library is preloaded into prism alone, not into the
    `ip netns exec` that starts it."""
    argv = ["env", f"LD_PRELOAD={lib}", *[f"{k}={v}" for k, v in env.items()], *argv]
    p = nstopo.Proc(argv, ns=ns, name="prism")
    try:
        # Neither ready nor gone in 10 s is a hang: the test fails.
        p.wait_for(lambda: not p.alive() or any(" ready: " in l for l in p.err), 10,
                   what="ready or exit")
        if p.alive():
            p.send_signal(signal.SIGTERM)
        rc = p.wait(10)
    finally:
        if p.alive():
            p.kill()
    err = "\n".join(p.err)
    # Exit 0 means it started and stopped, and said both: never a silent
    # exit.
    if rc == 0:
        assert (any(" ready: " in l for l in p.err) and
                any(l.endswith(" stopped") for l in p.err)), (env, err[-600:])
    return rc, err


def test_run_survives_failed_allocations_at_start(failmalloc, prism_bin, netns, tmp_path):
    """Each allocation of a start and stop: prism either starts and stops
    cleanly or exits with an error that says why; never a signal, never a
    hang, never a silent exit."""
    ns = netns("fault")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_CFG)
    argv = [prism_bin, "run", "-c", str(cfg)]
    rc, err = start_stop(failmalloc, {"FAILMALLOC_AT": 0, "FAILMALLOC_COUNT": 1}, ns, argv)
    assert rc == 0, err
    total = int(re.search(r"failmalloc: (\d+) allocations", err).group(1))
    for n in range(1, total + 1):
        rc, err = start_stop(failmalloc, {"FAILMALLOC_AT": n}, ns, argv)
        assert rc is not None and rc in (0, 1, 2), (n, rc, err[-600:])
        if rc:
            # And why (pthread_create says EAGAIN when its own allocation
            # fails).
            assert re.search(r"out of memory|Cannot allocate memory|"
                             r"Resource temporarily unavailable", err), (n, rc, err[-600:])


# `prism net up` installs the table and routes before, and `net down`
# removes them after, outside the fault injection: libnftables exits the
# process (2, 3) or crashes inside nft_run_cmd_from_buffer when its own
# allocations fail, which no caller can handle. prism itself runs with
# network.manage off, so everything it allocates is its own.
DATA_NET = f"""
listen: {{workers: 1, address6: "off"}}
network: {{manage: true}}
apps:
  - name: echo
    edge: 192.0.2.0/24
    ports: "8000-8099"
    origins: {nstopo.ORIGIN4}:7000
"""
DATA_CFG = DATA_NET.replace("manage: true", "manage: false")
CONNS = 5


def preloaded_prism(t, cfg, lib, env, name):
    """prism run of <cfg> in the edge namespace, with <lib> preloaded and
    <env> set in its environment alone (a wrapper script)."""
    wrapper = os.path.join(t.tmp, f"prism-{name}")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec env LD_PRELOAD={lib} "
                + "".join(f"{k}={v} " for k, v in env.items())
                + f"{nstopo.prism_path()} \"$@\"\n")
    os.chmod(wrapper, 0o700)
    return t.start_prism(cfg, binary=wrapper, name=f"{name}.yaml")


def echo_works(t, i, data):
    """Whether <data> sent through prism to 192.0.2.10:(8000 + i) comes
    back whole from the echo origin."""
    try:
        s = peers.connect(t.c, "192.0.2.10", 8000 + i, timeout=5)
    except OSError:
        return False
    try:
        s.settimeout(5)
        s.sendall(data)
        return peers.recv_exact(s, len(data)) == data
    except (OSError, EOFError):
        return False
    finally:
        s.close()


def echo_edge(t):
    """<t> with an echo origin and DATA_NET's table and routes installed
    (both removed at teardown); returns <t>."""
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    net = t.write("net.yaml", DATA_NET)
    nstopo.run(nstopo.ns_exec(t.e, [nstopo.prism_path(), "net", "up", "-c", net]))
    t.on_teardown(lambda: nstopo.run(nstopo.ns_exec(t.e, [nstopo.prism_path(), "net", "down",
                                                          "-c", net]), check=False))
    return t


def data_round(t, lib, n, count=False):
    """prism with allocation <n> after its first accept failing; CONNS
    connections one after another, then one more. Returns (which of the
    CONNS worked, whether the last one worked, exit code, stderr)."""
    env = {"FAILMALLOC_ARM": "accept", "FAILMALLOC_AT": n}
    if count:
        env["FAILMALLOC_COUNT"] = 1
    p = preloaded_prism(t, DATA_CFG, lib, env, f"fail{n}")
    ok = [echo_works(t, i, b"ping %d\n" % i) for i in range(CONNS)]
    last = echo_works(t, CONNS, b"last\n")
    rc = p.stop(timeout=10)
    return ok, last, rc, "\n".join(p.err)


def test_data_path_survives_each_failed_allocation(failmalloc, topo):
    """Each allocation after the first accept (the connections', then the
    stop's), made to fail in turn: at most that one connection is lost,
    with a log line that says why, prism serves the next ones, and it
    stops cleanly."""
    t = echo_edge(topo)
    ok, last, rc, err = data_round(t, failmalloc, 0, count=True)
    assert all(ok) and last and rc == 0, (ok, last, rc, err[-600:])
    total = int(re.search(r"failmalloc: (\d+) allocations", err).group(1))
    assert total >= CONNS, err[-600:]  # a connection allocates at least its state
    for n in range(1, total + 1):
        ok, last, rc, err = data_round(t, failmalloc, n)
        assert rc == 0, (n, rc, err[-600:])
        # One connection at most, and the one after it is served.
        assert (ok + [last]).count(False) <= 1, (n, ok, last, err[-600:])
        if False in ok:
            assert last, (n, ok, last, err[-600:])
        if False in ok + [last]:
            assert OOM.search(err), (n, ok, last, err[-600:])


def test_pause_ends_after_a_run_of_failed_allocations(failmalloc, topo):
    """The first connection's allocation and the next one fail in a row,
    as in a short shortage of memory: the worker pauses accepting, and the
    pause must end although it began while memory was short (arming its
    timer allocates nothing then, the room is reserved)."""
    t = echo_edge(topo)
    env = {"FAILMALLOC_ARM": "accept", "FAILMALLOC_AT": 1, "FAILMALLOC_SPAN": 2}
    p = preloaded_prism(t, DATA_CFG, failmalloc, env, "span")
    assert not echo_works(t, 0, b"first\n")
    p.wait_log(r"warn worker 0: Cannot allocate memory .*not accepting for 100 ms")
    # The run of failures may take the next connection too, not all four.
    served = [echo_works(t, i, b"after %d\n" % i) for i in range(1, 5)]
    assert True in served, (served, p.dump())
    assert p.stop(timeout=10) == 0, p.dump()


@pytest.fixture(scope="module")
def failsys(prism_bin):
    return preload_lib(prism_bin, "failsys.so",
                       "ASan's runtime must come first in the library list")


SYS_PAYLOAD = 40000  # past the relay's 16 KiB buffer: the splice path too
# Two workers (a connection may be handed to the other) and the health
# thread's calls among the ones that fail.
SYS_CFG = DATA_CFG.replace("workers: 1", "workers: 2") + \
    "    health_check: {interval: 50ms, timeout: 40ms, rise: 1, fall: 2}\n"
NORMAL_END = ("client_closed", "origin_closed")


def sys_round(t, lib, n, count=False):
    """prism with socket call <n> after its first accept failing; CONNS
    connections one after another, then one more, each echoing
    SYS_PAYLOAD bytes. Returns (which worked, prism's descriptors once
    every connection has ended, exit code, the Prism)."""
    env = {"FAILSYS_AT": n}
    if count:
        env["FAILSYS_COUNT"] = 1
    p = preloaded_prism(t, SYS_CFG, lib, env, f"sys{n}")
    blob = os.urandom(SYS_PAYLOAD)
    ok = [echo_works(t, i, blob) for i in range(CONNS + 1)]
    # Every connection that reached prism has ended there, or will soon.
    try:
        p.wait_for(lambda: len([d for d in p.access if "client" in d]) >= ok.count(True), 5,
                   "an access line per connection that worked")
    except TimeoutError:
        pass
    return ok, p


def fds_settled(p, limit):
    """prism's descriptors, once they are <limit> or fewer (5 s at most)."""
    try:
        return p.wait_for(lambda: (lambda n: n if n <= limit else None)(p.fd_count()), 5,
                          f"{limit} descriptors or fewer")
    except TimeoutError:
        return p.fd_count()


def test_data_path_survives_each_failed_socket_call(failsys, topo):
    """Each socket call after the first accept made to fail in turn, with
    the errno of running out of something: at most that one connection is
    lost, with a reason in the log, prism serves the rest, holds no more
    descriptors afterwards than a run without the failure, and stops
    cleanly."""
    t = echo_edge(topo)
    ok, p = sys_round(t, failsys, 0, count=True)
    clean_fds = p.fd_count()
    rc = p.stop(timeout=10)
    err = "\n".join(p.err)
    assert all(ok) and rc == 0, (ok, rc, err[-600:])
    total = int(re.search(r"failsys: (\d+) calls", err).group(1))
    print(f"{total} socket calls to fail in turn")
    assert total >= 10 * CONNS, err[-600:]  # accept, socket, connect, recv, send...
    for n in range(1, total + 1):
        ok, p = sys_round(t, failsys, n)
        fds = fds_settled(p, clean_fds)
        rc = p.stop(timeout=10)
        err = "\n".join([l for l in p.err if re.search(r"failsys:| (warn|error) ", l)]
                        + p.err[-6:])
        print(f"call {n}:", err, sep="\n")  # shown when an assertion fails
        assert rc == 0, (n, rc, err)
        assert ok.count(False) <= 1, (n, ok, err)  # and the ones after it work
        assert fds <= clean_fds, (n, fds, clean_fds, err)
        if False in ok:
            said = [d for d in p.access if d.get("reason", NORMAL_END[0]) not in NORMAL_END]
            said += [l for l in p.err if re.search(r" (warn|error) ", l)]
            assert said, (n, ok, err)
        # The kernel out of memory for a read or a write is this host's
        # problem: reason resource, not the peer's reset.
        if re.search(r"failsys: call \d+, (recv|send|splice),", err):
            assert [d for d in p.access if d.get("reason") == "resource"], (n, err)


def test_pause_ends_when_listeners_cannot_be_polled_again(failsys, topo):
    """epoll_ctl fails for 400 ms from the first connection's on (a
    shortage that lasts): the worker pauses accepting, and its first tries
    to poll its listeners again, 100 ms later, fail too. It must stay
    paused and try again, not go on with its listeners unpolled: with one
    worker, nothing would accept again. The epoll_ctl calls after the
    first accept are made to fail in turn until one pauses accepting."""
    t = echo_edge(topo)
    for n in range(1, 20):
        p = preloaded_prism(t, DATA_CFG, failsys, {"FAILSYS_AT": n, "FAILSYS_SPAN_MS": 400},
                            f"span{n}")
        echo_works(t, 0, b"x")
        paused = p.wait_for(lambda: any("not accepting for" in ln for ln in p.err), 2,
                            "a pause") if any(re.search(rf"failsys: call {n}, epoll_ctl,", ln)
                                              for ln in p.err) else False
        if paused:
            break
        assert p.stop(timeout=10) == 0, n
    else:
        pytest.fail("no epoll_ctl after the first accept paused accepting")
    assert echo_works(t, 1, b"after the shortage\n"), p.dump()
    assert any("cannot poll its listeners again: Cannot allocate memory" in ln
               for ln in p.err), p.dump()
    assert p.stop(timeout=10) == 0, p.dump()


# The first origin refuses: every connection's first retry dials the second.
RETRY_CFG = DATA_CFG.replace(f"origins: {nstopo.ORIGIN4}:7000",
                             f"origins: [\"{nstopo.ORIGIN4}:7999\", \"{nstopo.ORIGIN4}:7000\"]\n"
                             "    retries: 1")


def test_failed_retry_pauses_accepting(failsys, topo):
    """A retry that cannot get a socket (no descriptor left) pauses
    accepting, as a first attempt that cannot does: the next connections
    would fail the same way. The socket calls after the first accept are
    made to fail in turn until the retry's socket() is the one."""
    t = echo_edge(topo)
    sockets = []
    for n in range(1, 40):
        p = preloaded_prism(t, RETRY_CFG, failsys, {"FAILSYS_AT": n}, f"retry{n}")
        echo_works(t, 0, b"x")
        assert p.stop(timeout=10) == 0, n
        err = "\n".join(p.err)
        if re.search(rf"failsys: call {n}, socket,", err):
            sockets.append((n, err))
        if len(sockets) == 2:
            break
    assert len(sockets) == 2, "no retry's socket() among the calls"
    n, err = sockets[1]  # the first attempt's socket() came first
    assert "not accepting for" in err, (n, err[-800:])



def fail_until(t, lib, cfg, env, call, name, work):
    """prism of <cfg> with the socket calls after its first accept made to
    fail in turn (with <env> too), <work>() run against each, until the
    failed call is <call> ("send," or "socket, fails with errno 97").
    Returns (what <work> returned for that run, the stopped Prism, its
    stderr)."""
    for n in range(1, 40):
        p = preloaded_prism(t, cfg, lib, {"FAILSYS_AT": n, **env}, f"{name}{n}")
        res = work()
        assert p.stop(timeout=10) == 0, n
        err = "\n".join(p.err)
        if re.search(rf"failsys: call {n}, {call}", err):
            return res, p, err
    pytest.fail(f"no {call} among the calls")

# Two echo origins, and a retry.
TWO_CFG = DATA_CFG.replace(f"origins: {nstopo.ORIGIN4}:7000",
                           f"origins: [\"{nstopo.ORIGIN4}:7000\", \"{nstopo.ORIGIN4}:7001\"]\n"
                           "    retries: 1")


def test_socket_error_that_is_no_shortage_tries_the_next_origin(failsys, topo):
    """socket() for an origin failing with EAFNOSUPPORT (an IPv6 address of
    a name, on a host without IPv6) is that origin's failure, not a
    shortage: the retry dials the other origin, and the worker does not
    pause accepting. It used to reset the client as `resource` and pause.
    The socket calls after the first accept are made to fail in turn
    until the first attempt's socket() is the one."""
    t = echo_edge(topo)
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 7001, peers.echo_handler)
    t.on_teardown(srv.close)
    worked, _, err = fail_until(
        t, failsys, TWO_CFG, {"FAILSYS_ERRNO": 97}, "socket, fails with errno 97", "afn",
        lambda: [echo_works(t, 0, b"x"), echo_works(t, 1, b"after\n")])
    assert worked == [True, True], err[-800:]
    assert "cannot make a socket for it: Address family not supported" in err, err[-800:]
    assert "not accepting for" not in err, err[-800:]


def test_proxy_header_send_out_of_memory_is_resource(failsys, topo):
    """The kernel out of memory for the PROXY header's send is this host's
    problem, as for the payload: reason resource, not origin_reset. The
    socket calls after the first accept are made to fail in turn until the
    first send() (the header's) is the one."""
    t = echo_edge(topo)
    cfg = DATA_CFG + "    proxy_protocol: v1\n"
    _, p, err = fail_until(t, failsys, cfg, {}, "send,", "pp", lambda: echo_works(t, 0, b"x"))
    assert [d.get("reason") for d in p.access] == ["resource"], err[-800:]

def test_run_survives_failed_socket_calls_at_start(failsys, prism_bin, netns, tmp_path):
    """Each socket call of a start and stop made to fail in turn: prism
    starts and stops cleanly, or exits 1 with an error line that says
    which step failed and why."""
    ns = netns("fault")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN_CFG)
    argv = [prism_bin, "run", "-c", str(cfg)]
    rc, err = start_stop(failsys, {"FAILSYS_START": 1, "FAILSYS_AT": 0, "FAILSYS_COUNT": 1},
                         ns, argv)
    assert rc == 0, err
    total = int(re.search(r"failsys: (\d+) calls", err).group(1))
    assert total >= 10, err  # two workers' listeners, epoll sets, the health thread's
    for n in range(1, total + 1):
        rc, err = start_stop(failsys, {"FAILSYS_START": 1, "FAILSYS_AT": n}, ns, argv)
        assert rc in (0, 1), (n, rc, err[-600:])
        if rc:
            assert re.search(r" error .*: (Cannot allocate memory|Too many open files|"
                             r"No buffer space available|Resource temporarily unavailable)",
                             err), (n, err[-600:])


NET_CFG = """\
apps:
  - name: web
    edge: [198.18.0.0/24, "2001:db8:1::/64"]
    ports: [80, 443]
    origins: 192.0.2.10:80
"""


def net_state(ns):
    """(whether nft table inet prism is there, whether a route of prism's is)"""
    tables = nstopo.run(["ip", "netns", "exec", ns, "nft", "list", "tables"]).stdout
    routes = "".join(nstopo.run(["ip", "-n", ns] + fam + ["route", "show", "table", "local"])
                     .stdout for fam in ([], ["-6"]))
    return "table inet prism" in tables, "proto 249" in routes


def net_down_failing(lib, prism_bin, ns, cfg, n, errno_=None):
    env = dict(os.environ, LD_PRELOAD=lib, FAILSYS_START="1", FAILSYS_FN="recvmsg",
               FAILSYS_AT=str(n))
    if n == 0:
        env["FAILSYS_COUNT"] = "1"
    if errno_:
        env["FAILSYS_ERRNO"] = str(errno_)
    return subprocess.run(["ip", "netns", "exec", ns, prism_bin, "net", "down", "-c", cfg],
                          env=env, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("errno_", [None, 4], ids=["ENOBUFS", "EINTR"])
def test_net_down_never_leaves_routes_without_table(failsys, prism_bin, netns, tmp_path,
                                                    errno_):
    """Each netlink read of `net down` (its route dump and deletes, and
    libnftables') made to fail in turn: whatever fails, no prism route is
    left without the table, whose guard chain drops what the gone listener
    would have served (a route alone makes the host answer on the prefix).
    An EINTR, which a netlink socket with a receive timeout returns after
    a stop and continue (Ctrl-Z, fg), is retried by prism's own reads; the
    ones libnftables makes are libnftables' (it exits on them)."""
    ns = netns("nd")
    cfg = tmp_path / "net.yaml"
    cfg.write_text(NET_CFG)
    up = [prism_bin, "net", "up", "-c", str(cfg)]
    nstopo.run(["ip", "netns", "exec", ns] + up)
    p = net_down_failing(failsys, prism_bin, ns, str(cfg), 0)
    assert p.returncode == 0 and net_state(ns) == (False, False), p.stderr
    total = int(re.search(r"failsys: (\d+) calls", p.stderr).group(1))
    assert total >= 10, p.stderr
    outcomes = set()
    for n in range(1, total + 1):
        nstopo.run(["ip", "netns", "exec", ns] + up)
        p = net_down_failing(failsys, prism_bin, ns, str(cfg), n, errno_)
        table, routes = net_state(ns)
        assert table or not routes, (n, p.stderr)
        assert p.returncode in (0, 1), (n, p.stderr)
        if p.returncode == 0:
            assert (table, routes) == (False, False), (n, p.stderr)
        # prism's own netlink reads: a route it could not list or delete
        # keeps the table, and says so.
        if "routes of table local" in p.stderr or "cannot delete a proto" in p.stderr:
            assert errno_ is None and "nftables table inet prism kept" in p.stderr, p.stderr
            outcomes.add("routes kept")
        outcomes.add((p.returncode, table, routes))
    if errno_ is None:
        assert "routes kept" in outcomes, outcomes
    p = net_down_failing(failsys, prism_bin, ns, str(cfg), -1)
    assert p.returncode == 0 and net_state(ns) == (False, False), p.stderr


# One violation (a second connection while the first is open) bans the
# client for 10 s. The first connection's end cannot pass the ban: the
# grace period ends it.
BAN_CFG = DATA_NET.replace("""apps:""", """shutdown_grace: 1s
protection:
  syn_rate_per_source: 0
  conn_rate_per_source: 0
  max_conns_per_source: 1
  ban: {after: 1, window: 10s, duration: 10s}
apps:""")
BANS_FILLED = 60000  # a ban set holds 65,536


def ban_round(t, lib, filled):
    """prism run with its netlink reads counted: the client violates its
    limit once and is banned, then prism stops (and removes its table).
    With <filled>, the ban set first gets BANS_FILLED other sources.
    Returns the number of reads."""
    env = {"FAILSYS_START": 1, "FAILSYS_FN": "recvmsg", "FAILSYS_COUNT": 1}
    p = preloaded_prism(t, BAN_CFG, lib, env, f"ban{filled}")
    if filled:
        script = t.write("bans.nft", "add element inet prism ban4 { " + ", ".join(
            f"198.18.{i >> 8}.{i & 255} timeout 1h" for i in range(BANS_FILLED)) + " }\n")
        nstopo.run(nstopo.ns_exec(t.e, ["nft", "-f", script]))
    first = peers.connect(t.c, "192.0.2.10", 8000)
    t.on_teardown(first.close)
    try:
        peers.connect(t.c, "192.0.2.10", 8000).close()
    except OSError:
        pass
    p.wait_log(rf"warn source {re.escape(nstopo.CLIENT4)} banned for 10s")
    first.close()
    assert p.stop(timeout=10) == 0, p.dump()
    return int(re.search(r"failsys: (\d+) calls", "\n".join(p.err)).group(1))


def test_ban_set_size_costs_no_netlink_reads(failsys, topo):
    """Before each ban it did not write itself, the ban thread asks the
    kernel for that source's ban, and `net down` (here at stop) asks
    whose the table is. Each must read its one answer, not the ban sets:
    `get element` and `list table` through libnftables fetch every element
    first (0.4 s with 60,000 bans), and a ban thread that does so for
    every ban falls behind a flood of sources. So prism's netlink reads
    are the same with a nearly full ban set as with an empty one."""
    t = topo
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    empty = ban_round(t, failsys, 0)
    assert empty >= 5, empty
    assert ban_round(t, failsys, BANS_FILLED) == empty


def cli_reads(prism_bin, lib, ns, argv):
    """(exit code, stderr, netlink reads) of prism <argv> in <ns>."""
    env = dict(os.environ, LD_PRELOAD=lib, FAILSYS_START="1", FAILSYS_FN="recvmsg",
               FAILSYS_COUNT="1")
    p = subprocess.run(["ip", "netns", "exec", ns, prism_bin, *argv], env=env,
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr, int(re.search(r"failsys: (\d+) calls", p.stderr).group(1))


def test_ban_commands_read_no_ban_set(failsys, prism_bin, netns, tmp_path):
    """`prism ban del` of a source that is not banned, and `net down`,
    read the same netlink answers whether the ban set is empty or nearly
    full: the delete's failure is explained by asking for the set itself,
    not by listing it (0.4 s with 60,000 bans, fetched through
    libnftables), and whose the table is by getting the table."""
    ns = netns("bd")
    cfg = tmp_path / "net.yaml"
    cfg.write_text(NET_CFG)
    script = tmp_path / "bans.nft"
    script.write_text("add element inet prism ban4 { " + ", ".join(
        f"198.18.{i >> 8}.{i & 255} timeout 1h" for i in range(BANS_FILLED)) + " }\n")
    reads = []
    for filled in (False, True):
        nstopo.run(["ip", "netns", "exec", ns, prism_bin, "net", "up", "-c", str(cfg)])
        if filled:
            nstopo.run(["ip", "netns", "exec", ns, "nft", "-f", str(script)])
        rc, err, n_del = cli_reads(prism_bin, failsys, ns,
                                   ["ban", "del", "203.0.113.99", "-c", str(cfg)])
        assert rc == 1 and "203.0.113.99 is not banned" in err, err
        rc, err, n_down = cli_reads(prism_bin, failsys, ns, ["net", "down", "-c", str(cfg)])
        assert rc == 0, err
        reads.append((n_del, n_down))
    assert reads[1] == reads[0], reads


# The second connection within a minute is one too many, and one violation
# bans the client.
RATE_BAN_CFG = DATA_NET.replace("""apps:""", """protection:
  syn_rate_per_source: 0
  conn_rate_per_source: 1/m
  ban: {after: 1, window: 10s, duration: 10s}
apps:""")
SHORTAGE_MS = 1500


def test_ban_is_written_while_out_of_fds(failsys, topo):
    """From the first connection's origin socket on, every socket() fails
    with EMFILE for SHORTAGE_MS, as when connections hold every fd. That
    first connection is lost (resource), the second one breaks the
    source's rate limit, and the ban thread bans the source meanwhile: on
    the netlink socket it opened at start, needing no fd. It used to open
    one per ban, then hand the failure to libnftables, whose context
    calls exit(3) when it cannot open its socket: prism was gone."""
    t = topo
    srv = peers.ThreadServer(t.o, nstopo.ORIGIN4, 7000, peers.echo_handler)
    t.on_teardown(srv.close)
    env = {"FAILSYS_AT": 1, "FAILSYS_FN": "socket", "FAILSYS_SPAN_MS": SHORTAGE_MS}
    p = preloaded_prism(t, RATE_BAN_CFG, failsys, env, "banfd")
    # The shortage starts after this, so it lasts until after <short_min>.
    short_min = time.monotonic() + SHORTAGE_MS / 1000
    for _ in range(2):
        try:
            peers.connect(t.c, "192.0.2.10", 8000).close()
        except OSError:
            pass
    p.wait_log(r"failsys: call 1, socket, fails")
    short_max = time.monotonic() + SHORTAGE_MS / 1000
    p.wait_log(rf"warn source {re.escape(nstopo.CLIENT4)} banned for 10s")
    assert time.monotonic() < short_min, "banned only after the shortage: raise SHORTAGE_MS"
    assert p.alive(), p.dump()
    assert [d for d in p.access if d.get("reason") == "resource"], p.dump()
    b4 = nstopo.run(nstopo.ns_exec(t.e, ["nft", "list", "set", "inet", "prism", "ban4"])).stdout
    assert nstopo.CLIENT4 in b4, b4
    # Stopping removes the table, which needs sockets again: after the
    # shortage (a fault that lasts SHORTAGE_MS, hence the wait).
    time.sleep(max(0.0, short_max - time.monotonic()) + 0.1)
    assert p.stop(timeout=10) == 0, p.dump()

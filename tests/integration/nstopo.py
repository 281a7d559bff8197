"""nstopo.py - network namespaces, the client/edge/origin topology, and the
processes the integration tests run in them (prism, haproxy, sshd, ...).

Everything here is bounded: every wait has a timeout, every process started
is remembered and killed by pid on teardown, every namespace is deleted.
Stdlib only (Debian's /usr/bin/python3).
"""

import calendar
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# Addresses of the standard topology (see Topology).
CLIENT4, CLIENT6 = "203.0.113.2", "2001:db8:c::2"
EDGE_C4, EDGE_C6 = "203.0.113.1", "2001:db8:c::1"
EDGE_O4, EDGE_O6 = "198.51.100.1", "2001:db8:1::1"
ORIGIN4, ORIGIN6 = "198.51.100.10", "2001:db8:1::10"
ORIGIN4_EXTRA = ("198.51.100.11", "198.51.100.12")
ORIGIN4_HOLE = "198.51.100.99"  # present on the origin, tcp to it dropped

_counter = 0
_counter_lock = threading.Lock()


def build_dir():
    return os.environ.get("PRISM_BUILD") or os.path.join(REPO, "build")


def prism_path():
    return os.path.join(build_dir(), "prism")


def unique_name(role=""):
    """A namespace name unique in this run: 'pt<pid><n><role>' (<= 15 chars)."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    name = f"pt{os.getpid()}{n}{role}"
    assert len(name) <= 15, name
    return name


def run(argv, check=True, timeout=20, **kw):
    """Runs a short command; returns CompletedProcess with text output."""
    cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        timeout=timeout, **kw)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip()}")
    return cp


def poll_until(pred, what, timeout=5):
    """Waits until pred() is truthy, asking every millisecond (for kernel
    state no event reports, such as a socket's queues); fails naming
    <what> after <timeout> s."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def ns_exec(ns, argv):
    """argv prefixed so that it runs in namespace <ns> (None: the current one)."""
    return (["ip", "netns", "exec", ns] if ns else []) + list(argv)


# --- namespaces ------------------------------------------------------------


def setns(name):
    """Moves the calling thread (only it: setns is per thread) into netns <name>."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) == -1:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({name}): {os.strerror(e)}")
    finally:
        os.close(fd)


def ns_call(ns, fn, *args, timeout=30, **kw):
    """Runs fn(*args, **kw) in a fresh thread inside netns <ns>; returns its
    result or raises its exception. Sockets created there stay in <ns> for
    their whole life and may be used from any thread afterwards."""
    box = {}

    def body():
        try:
            setns(ns)
            box["r"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller
            box["e"] = e

    t = threading.Thread(target=body, name=f"ns-{ns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"ns_call in {ns} did not finish in {timeout}s")
    if "e" in box:
        raise box["e"]
    return box["r"]


def ns_socket(ns, family=socket.AF_INET, type_=socket.SOCK_STREAM):
    """A new socket living in netns <ns>."""
    return ns_call(ns, socket.socket, family, type_)


class NetnsFactory:
    """Creates uniquely named namespaces and deletes all of them on cleanup()."""

    def __init__(self):
        self.names = []

    def __call__(self, role=""):
        name = unique_name(role)
        run(["ip", "netns", "add", name])
        self.names.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # No duplicate address detection on links created later: tentative
        # link-local addresses delay neighbour discovery by seconds.
        ns_call(name, _no_dad)
        return name

    def cleanup(self):
        errors = []
        created, self.names = self.names, []
        for name in reversed(created):
            cp = run(["ip", "netns", "del", name], check=False)
            if cp.returncode != 0:
                errors.append(f"{name}: {cp.stderr.strip()}")
        left = [n for n in list_netns() if n in created]
        if left:
            errors.append(f"namespaces left: {left}")
        return errors


def _no_dad():
    # /proc/sys/net is resolved in the opening thread's namespace.
    for conf in ("default", "all"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/accept_dad", "w") as f:
            f.write("0")


def list_netns():
    cp = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


# --- processes -------------------------------------------------------------



def veth(ns_a, name_a, ns_b, name_b):
    """A veth pair created directly inside the two namespaces: no name ever
    exists in the root namespace, so fixed names cannot collide between runs."""
    run(["ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b,
         "netns", ns_b])


class Proc:
    """A process whose stdout and stderr are read by threads into line lists.

    wait_log() blocks (bounded) until a stderr line matches; nothing polls
    with sleeps."""

    def __init__(self, argv, ns=None, name=None, env=None, stdin=subprocess.DEVNULL,
                 pass_fds=()):
        self.argv = ns_exec(ns, argv)
        self.name = name or os.path.basename(argv[0])
        self.ns = ns
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(self.argv, stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, start_new_session=True,
                                  pass_fds=pass_fds)
        self.pid = self.p.pid
        self._eof = 0
        self._go = threading.Event()  # cleared: the readers stop reading
        self._go.set()
        self._threads = [
            threading.Thread(target=self._reader, args=(self.p.stdout, self.out), daemon=True),
            threading.Thread(target=self._reader, args=(self.p.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _reader(self, f, lines):
        for raw in iter(f.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                lines.append(line)
                self._on_line(line)
                self.cond.notify_all()
            self._go.wait()
        with self.cond:
            self._eof += 1
            self.cond.notify_all()

    def _on_line(self, line):
        pass

    def wait_for(self, pred, timeout, what="condition"):
        """Waits until pred() (called under the lock) is truthy; returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = pred()
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no {what} within {timeout}s\n"
                                       + self.dump())
                if self._eof == 2 and self.p.poll() is not None:
                    r = pred()
                    if r:
                        return r
                    raise RuntimeError(f"{self.name} exited ({self.p.returncode}) "
                                       f"before {what}\n" + self.dump())
                self.cond.wait(min(left, 0.2))

    def wait_log(self, regex, timeout=10, start=0, stream="err"):
        """Waits for a line matching <regex> at index >= start; returns the match."""
        rx = re.compile(regex)
        lines = self.err if stream == "err" else self.out

        def pred():
            for line in lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            return None

        return self.wait_for(pred, timeout, what=f"line /{regex}/")

    def dump(self, n=40):
        with_out = "\n".join(self.out[-n:])
        return (f"--- {self.name} stderr (last {n}) ---\n" + "\n".join(self.err[-n:])
                + (f"\n--- stdout ---\n{with_out}" if with_out else ""))

    def alive(self):
        return self.p.poll() is None

    def pause_reading(self):
        """Stops reading the process's output (after the line being read):
        its pipes fill up, as with a log reader that stalls."""
        self._go.clear()

    def resume_reading(self):
        self._go.set()

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Waits for exit; returns the exit code (negative: killed by signal)."""
        self._go.set()
        rc = self.p.wait(timeout)
        for t in self._threads:
            t.join(2)
        return rc

    def stop(self, timeout=5, sig=signal.SIGTERM):
        """sig, then SIGKILL after <timeout>; returns the exit code."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        return self.kill()

    def kill(self):
        if self.p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.wait(5)
        except subprocess.TimeoutExpired:
            return None


SANITIZER_RX = re.compile(r"ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|"
                          r"runtime error: ")

TS_RX = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d+)Z")


def log_time(line):
    """Seconds (epoch) of a log line's (or access entry's) UTC timestamp."""
    m = TS_RX.match(line)
    assert m, line
    return (calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            + float("0." + m.group(2)))


ACCESS_RX = re.compile(r"^(\S+) access (.*)$")


def parse_access(line):
    """'TIME access k=v k=v ...' -> dict (with 'time'), or None."""
    m = ACCESS_RX.match(line)
    if not m:
        return None
    d = {"time": m.group(1)}
    for field in m.group(2).split():
        k, sep, v = field.partition("=")
        if sep:
            d[k] = v
    return d


def split_hostport(s):
    """'1.2.3.4:80' / '[2001:db8::1]:80' -> ('1.2.3.4', 80)."""
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    return host, int(port)


def fmt_hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DIAG_RX = re.compile(r"^\S+ (error|warn) ")


def chaos_seed(test, default):
    """The seed of a randomized test: $CHAOS_SEED (decimal or 0x...), else
    <default>. Printed: pytest shows it with a failure, so the run can be
    replayed."""
    s = os.environ.get("CHAOS_SEED", "").strip()
    seed = int(s, 0) if s else default
    print(f"{test}: CHAOS_SEED={seed}")
    return seed


class Prism(Proc):
    """prism run -c CFG in a namespace; collects access-log lines."""

    def __init__(self, cfg_path, ns=None, binary=None, extra=()):
        self.access = []
        self.cfg_path = str(cfg_path)
        super().__init__([binary or prism_path(), "run", "-c", cfg_path, *extra], ns=ns,
                         name="prism")

    def _on_line(self, line):
        d = parse_access(line)
        if d is not None:
            self.access.append(d)

    def wait_ready(self, timeout=10):
        return self.wait_log(r"\bready\b", timeout)

    def wait_access(self, pred=None, count=1, timeout=10):
        """Waits until <count> access entries satisfy pred; returns them."""
        pred = pred or (lambda d: True)

        def check():
            hits = [d for d in self.access if pred(d)]
            return hits if len(hits) >= count else None

        return self.wait_for(check, timeout, what=f"{count} matching access lines")

    def access_for(self, client_port, edge, timeout=10):
        """The one access entry of the connection from client port <client_port>
        to <edge> ('addr:port' or (addr, port)). Both are needed: the kernel
        gives the same client port to connections towards different
        destinations, so a port alone can find an earlier connection's entry."""
        if not isinstance(edge, str):
            edge = fmt_hostport(*edge)
        hits = self.wait_access(
            lambda d: ("client" in d and split_hostport(d["client"])[1] == client_port
                       and d.get("edge") == edge),
            timeout=timeout)
        assert len(hits) == 1, hits
        return hits[0]

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_fds(self, most, timeout=5):
        """Waits until prism holds at most <most> fds (polling /proc: no
        event tells); asserts it, with the fds it holds."""
        deadline = time.monotonic() + timeout
        while self.fd_count() > most and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.fd_count() <= most, (most, sorted(os.listdir(f"/proc/{self.pid}/fd")))

    def diagnostics(self, expected=()):
        """prism's warning and error lines on stderr ("TIME LEVEL message"),
        but those that match a regex of <expected>."""
        return [ln for ln in self.err if DIAG_RX.match(ln)
                and not any(re.search(a, ln) for a in expected)]

    def _workers(self, what):
        """<what> ("status" or "stat") of each of prism's worker threads."""
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    if not f.read().startswith("worker"):
                        continue
                with open(f"/proc/{self.pid}/task/{tid}/{what}") as f:
                    yield f.read()
            except FileNotFoundError:
                continue  # a thread that just ended

    def worker_sleeps(self):
        """How many times prism's workers have gone to sleep (blocked in
        epoll_wait: their voluntary context switches), all together."""
        return sum(int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", st, re.M)[1])
                   for st in self._workers("status"))

    def wait_workers_asleep(self, timeout=5):
        """Waits until every worker sleeps (state S): one that was woken is
        runnable until it has handled its events and waits again."""
        poll_until(lambda: all(st.rsplit(")", 1)[1].split()[0] == "S"
                               for st in self._workers("stat")), "a worker stays busy", timeout)

    @contextlib.contextmanager
    def paused(self):
        """prism stopped (SIGSTOP) for the block, every thread of it: the
        kernel tells the parent, this process, once they all are."""
        self.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        try:
            yield
        finally:
            self.send_signal(signal.SIGCONT)

    def _listeners(self):
        """(family, port, accept queue) of each TCP socket in LISTEN state in
        prism's namespace (via /proc/PID/net), family "tcp" or "tcp6"; none
        once the process is gone, since its sockets went with it."""
        for f in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{self.pid}/net/{f}") as fh:
                    lines = fh.readlines()[1:]
            except (FileNotFoundError, ProcessLookupError):
                continue
            for line in lines:
                parts = line.split()
                if parts[3] == "0A":  # rx_queue of a listener: its accept queue
                    yield (f, int(parts[1].rsplit(":", 1)[1], 16),
                           int(parts[4].split(":")[1], 16))

    def _queues(self, peer_port):
        """(send queue, receive queue) of the established TCP connection
        (IPv4) in prism's namespace whose peer has port <peer_port>, or
        None: bytes sent and not yet acknowledged, bytes not yet read."""
        with open(f"/proc/{self.pid}/net/tcp") as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == peer_port:
                    tx, rx = parts[4].split(":")
                    return int(tx, 16), int(rx, 16)
        return None

    def recv_queue(self, peer_port):
        """Bytes waiting to be read in the established TCP connection (IPv4)
        in prism's namespace whose peer has port <peer_port>, or None."""
        q = self._queues(peer_port)
        return q and q[1]

    def send_queue(self, peer_port):
        """Bytes that connection's peer has yet to acknowledge, or None."""
        q = self._queues(peer_port)
        return q and q[0]

    def listen_sockets(self, port):
        """{"tcp": n, "tcp6": m}: how many sockets listen on <port>."""
        out = {"tcp": 0, "tcp6": 0}
        for f, p, _q in self._listeners():
            out[f] += p == port
        return out

    def accept_queue(self, port):
        """Connections waiting to be accepted on the listeners of <port>."""
        return sum(q for _f, p, q in self._listeners() if p == port)

    def listening_ports(self):
        """TCP ports in LISTEN state in prism's namespace."""
        return {p for _f, p, _q in self._listeners()}


# --- the topology ----------------------------------------------------------


class Topology:
    """client --veth-- edge --veth-- origin, as in the integration brief.

    The edge does not forward: only prism (run in the edge namespace) joins
    the two sides. procs started through start()/start_prism() are killed
    on teardown()."""

    def __init__(self, netns_factory, tmpdir):
        self.tmp = str(tmpdir)
        self.c = netns_factory("c")
        self.e = netns_factory("e")
        self.o = netns_factory("o")
        self.procs = []
        self.closers = []
        self._build()

    def _batch(self, ns, cmds):
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def _build(self):
        c, e, o = self.c, self.e, self.o
        veth(c, "c0", e, "e0")
        veth(e, "e1", o, "o0")
        self._batch(c, [
            f"addr add {CLIENT4}/24 dev c0",
            f"addr add {CLIENT6}/64 dev c0 nodad",
            "link set c0 up",
            f"route add 192.0.2.0/24 via {EDGE_C4}",
            f"route add 198.18.0.0/15 via {EDGE_C4}",
            f"route add 2001:db8::/64 via {EDGE_C6}",
        ])
        self._batch(e, [
            f"addr add {EDGE_C4}/24 dev e0",
            f"addr add {EDGE_C6}/64 dev e0 nodad",
            f"addr add {EDGE_O4}/24 dev e1",
            f"addr add {EDGE_O6}/64 dev e1 nodad",
            "link set e0 up",
            "link set e1 up",
        ])
        self._batch(o, [
            f"addr add {ORIGIN4}/24 dev o0",
            *[f"addr add {a}/24 dev o0" for a in ORIGIN4_EXTRA],
            f"addr add {ORIGIN4_HOLE}/24 dev o0",
            f"addr add {ORIGIN6}/64 dev o0 nodad",
            "link set o0 up",
            f"route add default via {EDGE_O4}",
            f"route add default via {EDGE_O6}",
        ])
        self._wait_links_ready([(c, "c0"), (e, "e0"), (e, "e1"), (o, "o0")])
        # Connections to the hole address vanish: a connect timeout for prism.
        run(ns_exec(o, ["nft", "-f", "-"]), input=(
            "table inet pthole {\n"
            " chain input { type filter hook input priority 0; policy accept;\n"
            f"  ip daddr {ORIGIN4_HOLE} meta l4proto tcp drop\n"
            " }\n}\n"))

    @staticmethod
    def _wait_links_ready(links, timeout=5):
        """Waits until IPv6 is up on every link (it has its link-local
        address). Until the kernel's link watcher (rate-limited to one run
        a second) has seen the carrier, neighbour discovery stalls and the
        first connection costs a 1 s SYN retransmit."""
        deadline = time.monotonic() + timeout
        pending = list(links)
        while pending:
            ns, dev = pending[0]
            out = run(["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope",
                       "link"]).stdout
            if "fe80:" in out and "tentative" not in out:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"link {dev} in {ns} not ready after {timeout}s")
            time.sleep(0.02)  # polling a kernel state; no event to wait on

    def start(self, argv, ns, name=None, **kw):
        p = Proc(argv, ns=ns, name=name, **kw)
        self.procs.append(p)
        return p

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_prism(self, cfg_text, binary=None, ready_timeout=10, name="prism.yaml"):
        path = self.write(name, cfg_text)
        p = Prism(path, ns=self.e, binary=binary)
        self.procs.append(p)
        p.wait_ready(ready_timeout)
        return p

    def on_teardown(self, fn):
        self.closers.append(fn)

    def teardown(self):
        errors = []
        for fn in reversed(self.closers):
            try:
                fn()
            except Exception as e:  # keep tearing down
                errors.append(repr(e))
        for p in reversed(self.procs):
            rc = p.stop(timeout=3)
            # A sanitizer build's report fails the test even when the test
            # did not look at how the process ended (TSan reports races as
            # they happen and only exits 66 at the end).
            bad = [ln for ln in p.err if SANITIZER_RX.search(ln)]
            if bad or rc == 66:
                errors.append(f"{p.name}: sanitizer report (exit {rc}): {bad[:1]}\n"
                              + p.dump(80))
        return errors

    # State of the edge namespace, for lifecycle checks.
    def edge_nft_tables(self):
        return run(ns_exec(self.e, ["nft", "list", "tables"])).stdout

    def edge_prism_routes(self):
        out = ""
        for fam in ("-4", "-6"):
            out += run(["ip", fam, "-n", self.e, "route", "show", "table", "all",
                        "proto", "249"]).stdout
        return out.strip()


def _all_stopped(pid):
    """Whether every thread of process <pid> is stopped (state T)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "T":
                    return False
        except FileNotFoundError:
            pass
    return True


@contextlib.contextmanager
def stopped(pid):
    """Process <pid> (one the test started) stopped for the block (SIGSTOP,
    then SIGCONT): the kernel goes on completing handshakes and
    acknowledging what peers send, and the process reads none of it until
    it runs again. The stop is asynchronous: the block starts once every
    thread is in it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while not _all_stopped(pid):
            assert time.monotonic() < deadline, f"{pid} did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)

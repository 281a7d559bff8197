#!/usr/bin/python3
"""run.py - prism's benchmark harness (`make bench`), writes docs/benchmarks.md.

Builds its own namespaces, client -> edge -> origin, and measures three
targets in the same topology, in alternating rounds (direct, haproxy, prism,
direct, ...), so that the noise of a shared 2-vCPU machine lands on all of
them alike:

  client  203.0.113.2/24      loadgen clients, iperf3 -c
    | veth
  edge    203.0.113.1, 198.51.100.1   prism or HAProxy (TPROXY), or plain
    | veth                            forwarding for the `direct` target
  origin  198.51.100.10/24    loadgen serve (echo) :7000, iperf3 -s :5201

The scenarios and the targets prism must reach are those of the benchmark
contract (bench/README.md). Stdlib only (Debian's /usr/bin/python3); run as
root. Every wait is bounded, every process started is killed by pid, and the
namespaces are deleted on every exit path (Ctrl-C and SIGTERM included).

  bench/run.py [--quick] [--build DIR] [--out FILE] [--only SCEN,...]
"""

import argparse
import datetime
import glob
import ipaddress
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTES_MARKER = "<!-- notes -->"
DEFAULT_NOTES = """## What was tried

(Hand-written notes; everything from the marker line above down is kept
when `make bench` regenerates this file.)
"""

CLIENT4, EDGE_C4, EDGE_O4, ORIGIN4 = "203.0.113.2", "203.0.113.1", "198.51.100.1", "198.51.100.10"
EDGE_N4, NAIVE4 = "192.0.2.1", "192.0.2.2"  # edge <-> the naive server's namespace
PREFIX = "198.18.0.0/16"  # the served prefix (app "bench")
# IPv6 on the client leg only (the any-port scenario's "prefix6" target): the
# client dials a /64 of the edge, prism relays to the same IPv4 origin, so
# the ratio to PREFIX isolates the IPv6 side.
CLIENT6, EDGE_C6, PREFIX6 = "2001:db8:c::2", "2001:db8:c::1", "2001:db8:100::/64"
IPERF_EDGE = "198.19.0.1"  # app "iperf": one address, any port -> :5201
ECHO_PORT, IPERF_PORT, LISTEN_PORT = 7000, 5201, 15001
TARGETS = ("direct", "haproxy", "prism")
# The rate scenario also runs HAProxy with its two packet-saving options
# (off by default in TCP mode), the counterpart of what prism does by default.
RATE_TARGETS = ("direct", "haproxy", "haproxy-smart", "prism")
SCENARIOS = ("bulk", "rate", "latency", "memory", "anyport", "rt", "bans", "apps")
# The bans scenario: the ban set filled with this many other sources or none
# (it holds 65,536), then new bans and refreshes (build/ban_bench).
BANS_FILL = 60000
# The "apps" scenario: the same /16 as one app, and as this many apps (one per
# address, the first ones split into two port halves), like an edge that
# gives every customer an address of its own.
MANY_APPS = 100_000
APPS_TARGETS = ("one", "many", "lists")
# Debian's (and Linux's) default. Some hosts default to BBR; without the fq
# qdisc BBR paces with a timer per socket, and bulk runs then measure that.
DEFAULT_CC = "cubic"
# make bench must end within 10 minutes. Section 7 comes last and sets no
# target, so it gives way when the sections before it ran long: it runs as
# many of its rounds as fit in what is left of BUDGET_S (at least 2).
BUDGET_S = 570
APPS_ROUND_S = 20  # one round of section 7 (measured 18-19 s)
# The host's tcp_allowed_congestion_control from before a run (pid) widened it.
CC_STATE = "/run/prism-bench-cc.{pid}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Stop(Exception):
    """SIGTERM/SIGHUP turned into an exception, so `finally` cleans up."""


def _on_signal(signum, _frame):
    raise Stop(f"signal {signum}")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def catch_stop_signals():
    """SIGINT, SIGTERM and SIGHUP raise Stop, so `finally` cleans up.
    Explicitly, also SIGINT: a shell starting us in the background (`&`)
    leaves SIGINT ignored, and Python then installs no handler of its own."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def ignore_stop_signals():
    """For the cleanup: a signal during it must not leave namespaces, the
    proxies or the host's congestion-control list behind."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# --- processes --------------------------------------------------------------


class Proc:
    """A process (own session) whose stdout/stderr lines are collected by
    threads; wait_log() blocks, bounded, until a line matches.

    With err_file, stderr goes to that file instead of a pipe and is read
    only when wait_log() or dump() asks: prism writes an access line per
    connection, and a reader thread here would spend the machine's CPU on
    them during the measured rounds (HAProxy logs nothing in this
    harness)."""

    def __init__(self, argv, name, stdin=subprocess.DEVNULL, err_file=None):
        self.argv, self.name = argv, name
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.eof = 0
        self.err_file, self.err_pos, self.err_part = err_file, 0, b""
        err = open(err_file, "wb") if err_file else subprocess.PIPE
        try:
            self.p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                      stderr=err, start_new_session=True)
        finally:
            if err_file:
                err.close()
        self.pid = self.p.pid
        streams = [(self.p.stdout, self.out)]
        if not err_file:
            streams.append((self.p.stderr, self.err))
        self.streams = len(streams)
        self.threads = [threading.Thread(target=self._reader, args=(f, lines), daemon=True)
                        for f, lines in streams]
        for t in self.threads:
            t.start()

    def _reader(self, f, lines):
        for raw in iter(f.readline, b""):
            with self.cond:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof += 1
            self.cond.notify_all()

    def _read_err_file(self, keep=200):
        """New complete lines of err_file into self.err (the last <keep>)."""
        if not self.err_file:
            return
        with open(self.err_file, "rb") as f:
            f.seek(self.err_pos)
            data = f.read()
        self.err_pos += len(data)
        data, nl, self.err_part = (self.err_part + data).rpartition(b"\n")
        if nl:
            self.err.extend(ln.decode("utf-8", "replace") for ln in data.split(b"\n"))
            del self.err[:-keep]

    def wait_log(self, regex, timeout, stream="err"):
        rx = re.compile(regex)
        lines = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if stream == "err":
                    self._read_err_file()
                for line in lines:
                    m = rx.search(line)
                    if m:
                        return m
                if self.eof == self.streams and self.p.poll() is not None:
                    self._read_err_file()
                    raise RuntimeError(f"{self.name} exited ({self.p.returncode}) "
                                       f"before /{regex}/\n{self.dump()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no /{regex}/ in {timeout}s\n{self.dump()}")
                # A file cannot be waited on here: poll it, often enough
                # that a start time taken from it (prism's setup ms) is
                # not rounded up by much.
                self.cond.wait(min(left, 0.001 if self.err_file else 0.2))

    def dump(self, n=15):
        self._read_err_file()
        return (f"--- {self.name} stderr ---\n" + "\n".join(self.err[-n:])
                + "\n--- stdout ---\n" + "\n".join(self.out[-n:]))

    def alive(self):
        return self.p.poll() is None

    def wait(self, timeout):
        rc = self.p.wait(timeout)
        for t in self.threads:
            t.join(2)
        return rc

    def stop(self, timeout=5, sig=signal.SIGTERM):
        """<sig>, then SIGKILL after <timeout> s; returns the exit code."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                return self.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.wait(5)
        except subprocess.TimeoutExpired:
            return None


def cpu_s(pid):
    """utime + stime of <pid> (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def slab_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def listeners(pid):
    """Number of listening TCP sockets in <pid>'s namespace."""
    n = 0
    for fam in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{fam}") as f:
                n += sum(1 for line in f if line.split()[3] == "0A")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return n


def machine_cpu():
    """(busy, idle) CPU seconds of the whole machine from /proc/stat (steal
    excluded: time the hypervisor gave to someone else is not ours)."""
    with open("/proc/stat") as f:
        v = [int(x) / CLK_TCK for x in f.readline().split()[1:8]]
    idle = v[3] + v[4]
    return sum(v) - idle, idle


def listening(pid, port):
    """True once a TCP socket of <pid>'s namespace listens on <port>."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split()
                if p[3] == "0A" and int(p[1].rsplit(":", 1)[1], 16) == port:
                    return True
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        pass
    return False


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def summ(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


# --- the harness ------------------------------------------------------------


def round_order(targets, r):
    """The order of <targets> in round <r>: rotated by r // 2, and reversed
    in odd rounds. Rotation alone kept the cyclic order, so each target ran
    right after the same one in all rounds but the one it opened (prefix
    after naive in 5 of 7); with the reversal each target follows each of
    its two neighbours equally often, and each opens equally often."""
    targets = tuple(targets)
    k = (r // 2) % len(targets)
    order = targets[k:] + targets[:k]
    return order[::-1] if r % 2 else order


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.build = os.path.abspath(args.build)
        self.prism = os.path.join(self.build, "prism")
        self.loadgen = os.path.join(self.build, "loadgen")
        self.rt_bench = os.path.join(self.build, "rt_bench")
        self.ban_bench = os.path.join(self.build, "ban_bench")
        self.work = os.path.join(self.build, "bench")
        os.makedirs(self.work, exist_ok=True)
        pid = os.getpid()
        self.ns = {r: f"pbn{pid}{r}" for r in "ceon"}
        self.made_ns = []
        self.procs = []
        self.tw_warned = False
        self.net_up = False
        self.commands = {}  # scenario -> [command strings], in order
        self.scen = "setup"
        self.res = {}
        self.skipped = {}
        self.prism_start_ms = []
        self.load, self.elapsed = [], 0.0
        # Durations (s) and rounds; --quick keeps the whole run < 90 s.
        q = self.quick
        self.rounds = 1 if q else args.rounds
        self.t_bulk = 1 if q else 3
        self.t_rate = 1 if q else 3
        self.t_lat = 1 if q else 2
        self.mem_conns = (1000, 9000)
        self.mem_rounds = 1 if q else 3
        # Section 7's rounds take ~20 s each: fewer keep make bench < 10 min.
        self.apps_rounds = min(self.rounds, 5)
        self.cc = getattr(args, "cc", DEFAULT_CC)
        self.pin = getattr(args, "pin", False)
        self.batch = getattr(args, "batch", False)
        self.cc_system = read_sysctl("net.ipv4.tcp_congestion_control")
        self.cc_allowed_was = None  # the host's list, when set_cc widened it
        self.cc_state = CC_STATE.format(pid=os.getpid())  # that list, for reap_stale

    # -- commands --------------------------------------------------------

    def _pretty(self, argv):
        s = " ".join(shlex.quote(a) for a in argv)
        for role, var in (("c", "$CLIENT"), ("e", "$EDGE"), ("o", "$ORIGIN"), ("n", "$NAIVE")):
            s = s.replace(self.ns[role], var)
        s = s.replace(self.work + "/", "").replace(self.build + "/", "build/")
        return s

    def note_cmd(self, argv):
        lst = self.commands.setdefault(self.scen, [])
        s = self._pretty(argv)
        if s not in lst:
            lst.append(s)

    def nsx(self, role, argv):
        return ["ip", "netns", "exec", self.ns[role]] + list(argv)

    def sh(self, argv, timeout=30, check=True, note=False, **kw):
        if note:
            self.note_cmd(argv)
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=timeout, **kw)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {cp.returncode}: "
                               f"{cp.stderr.strip()[-2000:]}")
        return cp

    def spawn(self, role, argv, name, stdin=subprocess.DEVNULL, note=True, err_file=None):
        full = self.nsx(role, argv)
        if note:
            self.note_cmd(full)
        p = Proc(full, name, stdin=stdin, err_file=err_file)
        self.procs.append(p)
        return p

    def kill(self, p, timeout=5, sig=signal.SIGTERM):
        rc = p.stop(timeout, sig)
        if p in self.procs:
            self.procs.remove(p)
        return rc

    # -- topology ---------------------------------------------------------

    def reap_stale(self):
        """Deletes namespaces left by an earlier run of this harness that was
        SIGKILLed (its pid is gone), after stopping what that run started in
        them (its origin, servers, proxies outlive it); nobody else uses the
        pbn<pid> names. Puts back the host's tcp_allowed_congestion_control
        such a run widened (set_cc keeps the list it found in CC_STATE)."""
        cp = self.sh(["ip", "netns", "list"], check=False)
        for line in cp.stdout.splitlines():
            m = re.match(r"(pbn(\d+)[ceon])\b", line)
            if m and not os.path.exists(f"/proc/{m.group(2)}"):
                pids = self.sh(["ip", "netns", "pids", m.group(1)], check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                self.sh(["ip", "netns", "del", m.group(1)], check=False)
        for path in glob.glob(CC_STATE.format(pid="*")):
            pid = path.rsplit(".", 1)[1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with open(path) as f:
                    was = f.read().strip()
                if was:
                    self.sh(["sysctl", "-qw", f"net.ipv4.tcp_allowed_congestion_control={was}"],
                            check=False)
                os.unlink(path)

    def setup(self):
        c, e, o, nv = self.ns["c"], self.ns["e"], self.ns["o"], self.ns["n"]
        for n in (c, e, o, nv):
            self.sh(["ip", "netns", "add", n], note=True)
            self.made_ns.append(n)
            self.sh(["ip", "-n", n, "link", "set", "lo", "up"], note=True)
        self.sh(["ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "e0",
                 "netns", e], note=True)
        self.sh(["ip", "link", "add", "e1", "netns", e, "type", "veth", "peer", "name", "o0",
                 "netns", o], note=True)
        self.sh(["ip", "link", "add", "e2", "netns", e, "type", "veth", "peer", "name", "n0",
                 "netns", nv], note=True)
        batches = {
            c: [f"addr add {CLIENT4}/24 dev c0", f"-6 addr add {CLIENT6}/64 dev c0 nodad",
                "link set c0 up", f"route add 198.18.0.0/15 via {EDGE_C4}",
                f"route add 198.51.100.0/24 via {EDGE_C4}",
                f"-6 route add {PREFIX6} via {EDGE_C6}"],
            e: [f"addr add {EDGE_C4}/24 dev e0", f"-6 addr add {EDGE_C6}/64 dev e0 nodad",
                f"addr add {EDGE_O4}/24 dev e1",
                f"addr add {EDGE_N4}/24 dev e2", "link set e0 up", "link set e1 up",
                "link set e2 up"],
            o: [f"addr add {ORIGIN4}/24 dev o0", "link set o0 up",
                f"route add default via {EDGE_O4}"],
            # The naive any-port server's namespace: the whole /16 is local.
            nv: [f"addr add {NAIVE4}/24 dev n0", "link set n0 up",
                 f"route add default via {EDGE_N4}",
                 f"route add local {PREFIX} dev lo table local"],
        }
        for n, cmds in batches.items():
            for cmd in cmds:
                self.sh(["ip", "-n", n] + cmd.split(), note=True)
        # Many short connections: wide ephemeral range and TIME_WAIT reuse on
        # both connecting sides (client, and the edge's proxy -> origin leg).
        for role, extra in (("c", []), ("e", ["net.ipv4.ip_forward=1"]), ("o", []), ("n", [])):
            self.sh(self.nsx(role, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
                                     "net.ipv4.ip_local_port_range=1024 65535",
                                     "net.core.somaxconn=4096"] + extra), note=True)
        self.set_cc()

    def set_cc(self):
        """Every namespace gets the same TCP congestion control (--cc), so a
        run measures the same way on any host. A namespace other than the
        first may only pick an algorithm of the host's
        tcp_allowed_congestion_control: one missing there is added for the
        run and the list restored at teardown."""
        if self.cc == "system":
            return
        cc_check(self.cc)
        allowed = read_sysctl("net.ipv4.tcp_allowed_congestion_control")
        if self.cc not in allowed.split():
            argv = ["sysctl", "-qw", f"net.ipv4.tcp_allowed_congestion_control={allowed} {self.cc}"]
            self.note_cmd(argv)
            # Kept until teardown, for reap_stale should this run be killed.
            with open(self.cc_state, "w") as f:
                f.write(allowed + "\n")
            cp = self.sh(argv, check=False)
            if cp.returncode != 0:
                os.unlink(self.cc_state)
                raise RuntimeError(f"--cc {self.cc}: namespaces may not pick it and the host's "
                                   f"list could not be widened ({cp.stderr.strip()}); "
                                   "--cc system keeps the host's algorithm")
            self.cc_allowed_was = allowed
        for role in "ceon":
            self.sh(self.nsx(role, ["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={self.cc}"]),
                    note=True)

    def teardown(self):
        """Every step is tried whatever the ones before did (a timeout of
        one `ip netns del` must not leave the others); returns the errors."""
        errors = []

        def step(what, fn):
            try:
                return fn()
            except (subprocess.SubprocessError, OSError) as e:
                errors.append(f"{what}: {e}")
                return None

        for p in list(reversed(self.procs)):
            step(p.name, lambda p=p: self.kill(p, timeout=3))
        # Deleting the edge namespace removes its routes and nft table too.
        self.net_up = False
        for n in reversed(self.made_ns):
            cp = step(n, lambda n=n: self.sh(["ip", "netns", "del", n], check=False))
            if cp is not None and cp.returncode != 0:
                errors.append(f"{n}: {cp.stderr.strip()}")
        self.made_ns = []
        if self.cc_allowed_was is not None:  # writing it twice is harmless
            cp = step("sysctl", lambda: self.sh(
                ["sysctl", "-qw",
                 f"net.ipv4.tcp_allowed_congestion_control={self.cc_allowed_was}"],
                check=False))
            if cp is None:
                pass
            elif cp.returncode != 0:
                errors.append(f"tcp_allowed_congestion_control: {cp.stderr.strip()}")
            else:
                try:
                    os.unlink(self.cc_state)
                except FileNotFoundError:
                    pass
        return errors

    # -- configs ----------------------------------------------------------

    def write_configs(self):
        self.prism_cfg = os.path.join(self.work, "prism.yaml")
        with open(self.prism_cfg, "w") as f:
            f.write(f"""# prism benchmark config (written by bench/run.py)
listen:
  address: 127.0.0.1
  address6: "off"
  port: {LISTEN_PORT}
  workers: 2
network:
  manage: true
shutdown_grace: 1s
timeouts:
  connect: 5s
  idle: 5m
apps:
  - name: bench
    edge: {PREFIX}
    ports: "*"
    origins: {ORIGIN4}:{ECHO_PORT}
  - name: iperf
    edge: {IPERF_EDGE}
    ports: "*"
    origins: {ORIGIN4}:{IPERF_PORT}
""")
        self.haproxy_cfg = os.path.join(self.work, "haproxy.cfg")
        # Forced splice both ways: with splice-auto HAProxy 2.6 mostly copied
        # through its buffers here and moved less than half the bulk rate.
        splice = ("    option splice-auto" if self.args.haproxy_splice == "auto" else
                  "    option splice-request\n    option splice-response")
        # maxsock = 2 * maxconn + 2 * maxpipes + a few must stay under the
        # 20,000-fd hard limit, hence the explicit (small) maxpipes. The
        # pipes are as large as prism's: with the kernel's 64 KiB HAProxy
        # moved a third less on one stream.
        with open(self.haproxy_cfg, "w") as f:
            f.write(f"""# HAProxy benchmark config (written by bench/run.py)
global
    nbthread 2
    maxconn 9500
    maxpipes 400
    tune.pipesize {prism_pipe_size()}

defaults
    mode tcp
{splice}
    maxconn 9500
    timeout connect 5s
    timeout client 5m
    timeout server 5m

frontend fe
    bind 127.0.0.1:{LISTEN_PORT} transparent
    use_backend be_iperf if {{ dst {IPERF_EDGE} }}
    default_backend be_echo

backend be_echo
    server s {ORIGIN4}:{ECHO_PORT}

backend be_iperf
    server s {ORIGIN4}:{IPERF_PORT}
""")
        with open(self.prism_cfg) as f:
            text = f.read()
        self.prism_v6_cfg = os.path.join(self.work, "prism-v6.yaml")
        with open(self.prism_v6_cfg, "w") as f:
            f.write(text.replace('address6: "off"', 'address6: "::1"').replace(
                "  - name: iperf\n", f"  - name: bench6\n    edge: {PREFIX6}\n    ports: \"*\"\n"
                f"    origins: {ORIGIN4}:{ECHO_PORT}\n  - name: iperf\n"))
        head, tail = text.split("  - name: bench\n", 1)
        tail = tail.split("  - name: iperf\n", 1)[1]
        self.prism_apps_cfg = {}
        for kind, name, lists in (("many", "prism-apps.yaml", False),
                                  ("lists", "prism-apps-lists.yaml", True)):
            self.prism_apps_cfg[kind] = os.path.join(self.work, name)
            with open(self.prism_apps_cfg[kind], "w") as f:
                f.write(head + "".join(many_apps(lists)) + "  - name: iperf\n" + tail)
        with open(self.haproxy_cfg) as f:
            text = f.read()
        self.haproxy_smart_cfg = os.path.join(self.work, "haproxy-smart.cfg")
        with open(self.haproxy_smart_cfg, "w") as f:
            f.write(text.replace("    maxconn 9500\n    timeout connect",
                                 "    maxconn 9500\n    option tcp-smart-accept\n"
                                 "    option tcp-smart-connect\n    timeout connect"))

    # -- targets -----------------------------------------------------------

    def dest(self, target, kind):
        """(address-or-prefix, ports) the client dials for <target>."""
        if kind == "iperf":
            return (ORIGIN4 if target == "direct" else IPERF_EDGE), str(IPERF_PORT)
        if target == "direct":
            return ORIGIN4, str(ECHO_PORT)
        if kind == "single":
            return "198.18.0.1", str(ECHO_PORT)
        if kind == "prefix6":
            return PREFIX6, "1-65535"
        return PREFIX, "1-65535"

    def start_target(self, target, cfg=None):
        """Starts the proxy of <target>; returns its Proc (None for direct).
        <cfg>: prism's config, if not the usual one."""
        if target == "direct":
            return None
        # --batch: chrt execs the proxy, so p.pid is the proxy's own.
        sched = ["chrt", "-b", "0"] if self.batch else []
        p = None
        try:
            if target == "prism":
                t0 = time.monotonic()
                p = self.spawn("e", sched + [self.prism, "run", "-c", cfg or self.prism_cfg],
                               "prism", err_file=os.path.join(self.work, "prism.log"))
                p.wait_log(r"\bready\b", 60)
                self.prism_start_ms.append((time.monotonic() - t0) * 1000)
                return p
            self.sh(self.nsx("e", [self.prism, "net", "up", "-c", self.prism_cfg]), note=True)
            self.net_up = True
            cfg = self.haproxy_smart_cfg if target == "haproxy-smart" else self.haproxy_cfg
            p = self.spawn("e", sched + ["haproxy", "-db", "-f", cfg], target)
            # HAProxy -db prints nothing when it is up: watch for its socket.
            deadline = time.monotonic() + 10
            while not listening(p.pid, LISTEN_PORT):
                if not p.alive() or time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start listening\n" + p.dump())
                time.sleep(0.02)
            return p
        except BaseException:
            self.stop_target(target, p)
            raise

    def stop_target(self, target, p):
        if p is not None:
            rc = self.kill(p, timeout=5)
            if rc not in (0, -signal.SIGTERM, 143):
                sys.stderr.write(f"bench: {target} exited {rc}\n{p.dump()}\n")
        if target.startswith("haproxy") and self.net_up:
            self.sh(self.nsx("e", [self.prism, "net", "down", "-c", self.prism_cfg]), note=True)
            self.net_up = False

    def rounds_of(self, fn, n=None, targets=TARGETS):
        """fn(target, round) for n alternating rounds; returns {target: [results]}.

        The order is round_order's, so no target always runs first after
        the topology is set up, or right after the same other target (the
        naive server's 65,535 sockets, say)."""
        out = {t: [] for t in targets}
        for r in range(n or self.rounds):
            for t in round_order(targets, r):
                self.flush_time_wait()
                out[t].append(fn(t, r))
        return out

    def flush_time_wait(self):
        """Ends the TIME_WAIT sockets earlier targets left (60 s each) in
        every namespace, so that each target starts from none. A rate round
        leaves tens of thousands; the next target's connect() calls then
        search a crowded port space: two identical prism builds measured
        12,034 and 10,943 conn/s in the first and second slot of each round
        (bench/ab.py before this flush). `ss -K` destroys them."""
        for role in ("c", "e", "o", "n"):
            argv = self.nsx(role, ["ss", "-K", "-tan", "state", "time-wait"])
            self.note_cmd(argv)
            # ss lists what it destroyed: thousands of lines, not wanted.
            cp = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, timeout=60)
            if cp.returncode != 0 and not self.tw_warned:
                # A kernel without CONFIG_INET_DIAG_DESTROY: the run goes
                # on, with the slot bias described above.
                self.tw_warned = True
                sys.stderr.write(f"bench: warning: {' '.join(argv)}: exit {cp.returncode}: "
                                 f"{cp.stderr.strip()[-300:]}\n")

    # -- loadgen / iperf3 ----------------------------------------------------

    def loadgen_run(self, mode, args, timeout):
        argv = self.nsx("c", [self.loadgen, mode] + args)
        cp = self.sh(argv, timeout=timeout, check=False, note=True)
        lines = [ln for ln in cp.stdout.splitlines() if ln.strip().startswith("{")]
        if cp.returncode != 0 or not lines:
            raise RuntimeError(f"loadgen {mode}: exit {cp.returncode}: {cp.stderr.strip()[-800:]}")
        return json.loads(lines[-1])

    def start_origin(self):
        p = self.spawn("o", [self.loadgen, "serve", "--listen", f"{ORIGIN4}:{ECHO_PORT}",
                             "--threads", "2"], "origin")
        p.wait_log(r"\bready\b", 10)
        return p

    # -- scenario 1: bulk ------------------------------------------------------

    def pin_to(self, p, cpu):
        """With --pin, moves every thread of <p> (a Proc; None: nothing) to
        CPU <cpu>."""
        if self.pin and p is not None:
            self.note_cmd(["taskset", "-a", "-p", "-c", str(cpu), f"<pid of {p.name}>"])
            self.sh(["taskset", "-a", "-p", "-c", str(cpu), str(p.pid)])

    def start_iperf_server(self):
        srv = self.spawn("o", ["iperf3", "-s", "-B", ORIGIN4, "-p", str(IPERF_PORT),
                               "--forceflush"], "iperf3-s")
        srv.wait_log(r"Server listening", 10, stream="out")
        self.pin_to(srv, 1)
        return srv

    def bulk_once(self, target, streams, p):
        """One iperf3 run of <streams> streams to <target>, whose proxy is
        the running Proc <p> (None for direct)."""
        self.pin_to(p, 1)
        addr, port = self.dest(target, "iperf")
        argv = self.nsx("c", ["iperf3", "-c", addr, "-p", port, "-t", str(self.t_bulk),
                              "-P", str(streams), "-J"])
        if self.pin:
            argv = ["taskset", "-c", "0"] + argv
        j = None
        for _attempt in range(3):  # "server busy" right after a test
            # CPU counted from here: a failed attempt's (and the pause's)
            # would count against bytes it did not move.
            c0 = cpu_s(p.pid) if p else None
            m0 = machine_cpu()
            cp = self.sh(argv, timeout=self.t_bulk + 30, check=False, note=True)
            j = json.loads(cp.stdout) if cp.stdout.strip() else {}
            if "error" not in j and cp.returncode == 0:
                break
            time.sleep(0.5)
        if "error" in j or "end" not in j:
            raise RuntimeError(f"iperf3: {j.get('error', cp.stderr)}")
        c1 = cpu_s(p.pid) if p else None
        m1 = machine_cpu()
        rx = j["end"]["sum_received"]
        gb = rx["bytes"] / 1e9
        return {"gbps": rx["bits_per_second"] / 1e9, "bytes": rx["bytes"],
                # the policy the proxy ran under (--batch)
                "sched": None if p is None else os.sched_getscheduler(p.pid),
                "cpu_s": None if p is None else c1 - c0,
                "cpu_s_per_gb": None if p is None else (c1 - c0) / gb,
                "machine_s_per_gb": (m1[0] - m0[0]) / gb}

    def sc_bulk(self):
        srv = self.start_iperf_server()
        try:
            for streams in (1, 4):
                def one(target, _r, streams=streams):
                    p = self.start_target(target)
                    try:
                        return self.bulk_once(target, streams, p)
                    finally:
                        self.stop_target(target, p)
                self.res[f"bulk{streams}"] = self.rounds_of(one)
        finally:
            self.kill(srv)

    # -- scenario 2: new connections/s -----------------------------------------

    def edge_packets(self):
        """Packets through the edge's client- and origin-side veths (each
        packet once: rx on one side of a veth pair is tx on the other)."""
        cp = self.sh(["ip", "-n", self.ns["e"], "-s", "-j", "link", "show"])
        n = 0
        for link in json.loads(cp.stdout):
            if link["ifname"] in ("e0", "e1"):
                st = link["stats64"]
                n += st["rx"]["packets"] + st["tx"]["packets"]
        return n

    def rate_once(self, target, kind, proc=None):
        addr, ports = self.dest(target, kind)
        c0 = cpu_s(proc.pid) if proc else None
        k0, m0 = self.edge_packets(), machine_cpu()
        j = self.loadgen_run("rate", ["--target", addr, "--ports", ports, "--concurrency", "64",
                                      "--duration", str(self.t_rate), "--size", "64"],
                             timeout=self.t_rate + 30)
        k1, m1 = self.edge_packets(), machine_cpu()
        n = j.get("conns")
        if proc:
            c = cpu_s(proc.pid) - c0
            j["cpu_us_per_conn"] = c * 1e6 / n if n else None
        if n:
            j["packets_per_conn"] = (k1 - k0) / n
            j["machine_us_per_conn"] = (m1[0] - m0[0]) * 1e6 / n
            j["machine_idle"] = (m1[1] - m0[1]) / max(1e-9, m1[1] - m0[1] + m1[0] - m0[0])
        return j

    def sc_rate(self):
        def one(target, _r):
            p = self.start_target(target)
            try:
                return self.rate_once(target, "prefix", p)
            finally:
                self.stop_target(target, p)
        self.res["rate"] = self.rounds_of(one, targets=RATE_TARGETS)

    # -- scenario 3: request/response latency ----------------------------------

    def sc_latency(self):
        for conns in (1, 64):
            def one(target, _r, conns=conns):
                p = self.start_target(target)
                try:
                    addr, port = self.dest(target, "single")
                    return self.loadgen_run("latency", [
                        "--target", addr, "--ports", port, "--conns", str(conns),
                        "--duration", str(self.t_lat), "--size", "64"], timeout=self.t_lat + 30)
                finally:
                    self.stop_target(target, p)
            self.res[f"latency{conns}"] = self.rounds_of(one)

    # -- scenario 4: memory ------------------------------------------------------

    def sockstat(self):
        cp = self.sh(self.nsx("e", ["cat", "/proc/net/sockstat"]))
        for line in cp.stdout.splitlines():
            if line.startswith("TCP:"):
                f = line.split()[1:]
                return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
        return {}

    def sc_memory(self):
        for n in self.mem_conns:
            def one(target, _r, n=n):
                p = self.start_target(target)
                hold = None
                try:
                    addr, ports = self.dest(target, "prefix")
                    rss0 = rss_kib(p.pid) if p else None
                    ss0, slab0 = self.sockstat(), slab_kib()
                    hold = self.spawn("c", [self.loadgen, "hold", "--target", addr, "--ports",
                                            ports, "--conns", str(n), "--timeout", "60"],
                                      "hold", stdin=subprocess.PIPE)
                    hold.wait_log(r"\bheld\b", 90)
                    rss1 = rss_kib(p.pid) if p else None
                    ss1, slab1 = self.sockstat(), slab_kib()
                    hold.p.stdin.close()
                    hold.wait(30)
                    j = json.loads([ln for ln in hold.out if ln.startswith("{")][-1])
                    self.procs.remove(hold)
                    hold = None
                    held = j.get("held", n)
                    # A connection that failed after it was held would still
                    # be counted by held, and RSS divided by too many.
                    if held < n or j.get("errors"):
                        raise RuntimeError(f"hold: only {held} of {n} connections held "
                                           f"without errors: {j}")
                    return {
                        "held": held, "open_ms": j.get("open_ms"),
                        "rss_kib": None if p is None else rss1 - rss0,
                        "rss_kib_per_conn": None if p is None else (rss1 - rss0) / n,
                        "rss_before_kib": rss0, "rss_after_kib": rss1,
                        "edge_inuse": ss1.get("inuse", 0) - ss0.get("inuse", 0),
                        "sock_mem_kib_per_conn":
                            (ss1.get("mem", 0) - ss0.get("mem", 0)) * PAGE / 1024 / n,
                        "slab_kib_per_conn": (slab1 - slab0) / n,
                    }
                finally:
                    if hold is not None:
                        self.kill(hold)
                    self.stop_target(target, p)
            self.res[f"memory{n}"] = self.rounds_of(one, n=self.mem_rounds)

    # -- scenario 5: any-port scale ------------------------------------------------

    def naive_round(self):
        """4 plain servers binding every port 1-65535 on 0.0.0.0, in their own
        namespace behind the edge with the /16 local there (the edge's own
        ports are taken by TIME_WAIT leftovers of the proxies' origin legs):
        setup time, memory, then the same rate test."""
        self.sh(["ip", "-n", self.ns["e"], "route", "add", PREFIX, "via", NAIVE4], note=True)
        procs = []
        try:
            slab0 = slab_kib()
            t0 = time.monotonic()
            for lo in range(1, 65536, 16384):
                hi = min(lo + 16383, 65535)
                procs.append(self.spawn("n", [self.loadgen, "serve", "--addr", "0.0.0.0",
                                              "--ports", f"{lo}-{hi}", "--threads", "1"],
                                        f"naive{lo}"))
            setup = []
            for p in procs:
                m = p.wait_log(r"ready listeners=(\d+) setup_ms=([\d.]+)", 60)
                setup.append((int(m.group(1)), float(m.group(2))))
            wall_ms = (time.monotonic() - t0) * 1000
            rss = sum(rss_kib(p.pid) for p in procs)
            slab = slab_kib() - slab0
            j = self.loadgen_run(
                "rate", ["--target", PREFIX, "--ports", "1-65535", "--concurrency", "64",
                         "--duration", str(self.t_rate), "--size", "64"],
                timeout=self.t_rate + 30)
            j.update({"setup_wall_ms": wall_ms, "setup_ms_max": max(s for _, s in setup),
                      "listeners": sum(n for n, _ in setup), "rss_kib": rss,
                      "slab_kib": slab})
            return j
        finally:
            for p in procs:
                self.kill(p)
            self.sh(["ip", "-n", self.ns["e"], "route", "del", PREFIX, "via", NAIVE4],
                    check=False, note=True)

    def prism_round(self, kind, cfg=None, probe=lambda p: {}):
        """Starts prism (with <cfg>, if not the usual config), notes its
        start time, RSS and probe(proc), runs the rate scenario's <kind>
        load through it and stops it."""
        n0 = len(self.prism_start_ms)
        p = self.start_target("prism", cfg)
        try:
            j = {"setup_wall_ms": self.prism_start_ms[n0], "rss_kib": rss_kib(p.pid)}
            j.update(probe(p))
            j.update(self.rate_once("prism", kind, p))
            return j
        finally:
            self.stop_target("prism", p)

    def sc_anyport(self):
        def one(kind, _r):
            if kind == "naive":
                return self.naive_round()
            # No Slab figure for prism: its 2 listening sockets vanish in
            # the machine-wide churn of TIME_WAIT sockets from earlier rounds.
            return self.prism_round(kind, self.prism_v6_cfg if kind == "prefix6" else None,
                                    probe=lambda p: {"listeners": listeners(p.pid)})
        self.res["anyport"] = self.rounds_of(one, targets=("prefix", "single", "prefix6",
                                                           "naive"))

    # -- routing lookup ---------------------------------------------------------------

    def sc_rt(self):
        argv = [self.rt_bench]
        self.note_cmd(argv)
        cp = self.sh(argv, timeout=120)
        rows = {}
        for line in cp.stdout.splitlines():
            d = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "apps" in d:
                rows[int(d["apps"])] = {k: float(v) for k, v in d.items()}
        self.res["rt"] = {"lines": cp.stdout.strip().splitlines(), "rows": rows}

    # -- bans ----------------------------------------------------------------------------

    def sc_bans(self):
        """ban_bench in the edge namespace, with prism's table loaded by
        `net up` (and removed by `net down`, bans and all) for each run."""
        new, refresh = (200, 200) if self.quick else (2000, 2000)
        rows = {0: [], BANS_FILL: []}
        up = self.nsx("e", [self.prism, "net", "up", "-c", self.prism_cfg])
        down = self.nsx("e", [self.prism, "net", "down", "-c", self.prism_cfg])
        for r in range(1 if self.quick else 3):
            for fill in rows:
                self.sh(up, note=r == 0)
                try:
                    argv = self.nsx("e", [self.ban_bench, "prism", str(fill), str(new),
                                          str(refresh)])
                    cp = self.sh(argv, timeout=120, note=r == 0)
                finally:
                    self.sh(down, note=r == 0)
                d = dict(kv.split("=", 1) for kv in cp.stdout.split() if "=" in kv)
                rows[fill].append({k: float(v) for k, v in d.items()})
        self.res["bans"] = rows

    # -- many apps ---------------------------------------------------------------------

    def claims_elems(self):
        """{set name: elements} of prism's claims and appallow sets (every
        tier) in the edge namespace."""
        cp = self.sh(self.nsx("e", ["nft", "-j", "list", "table", "inet", "prism"]),
                     timeout=60)
        out = {}
        for o in json.loads(cp.stdout)["nftables"]:
            st = o.get("set")
            if st and st["name"].startswith(("claims", "appallow")):
                out[st["name"]] = len(st.get("elem", []))
        return out

    def sc_apps(self):
        def one(kind, _r):
            cfg = self.prism_cfg if kind == "one" else self.prism_apps_cfg[kind]
            t0 = time.monotonic()
            self.sh([self.prism, "check", "-c", cfg], timeout=120, note=_r == 0)
            check_ms = (time.monotonic() - t0) * 1000
            return self.prism_round("prefix", cfg, lambda p: {"check_ms": check_ms,
                                                              "claims": self.claims_elems()})
        n = rounds_that_fit(self.apps_rounds, BUDGET_S - (time.monotonic() - self.t_start),
                            APPS_ROUND_S)
        if n < self.apps_rounds:
            sys.stderr.write(f"bench: apps: {n} rounds instead of {self.apps_rounds}, to end "
                             f"within {BUDGET_S} s\n")
            self.apps_rounds = n
        self.res["apps"] = self.rounds_of(one, n=self.apps_rounds, targets=APPS_TARGETS)

    # -- main --------------------------------------------------------------------------

    def run(self):
        only = set(self.args.only.split(",")) if self.args.only else set(SCENARIOS)
        have_lg = os.access(self.loadgen, os.X_OK)
        self.t_start = time.monotonic()
        self.load = [loadavg()]
        self.reap_stale()
        self.write_configs()
        self.sh([self.prism, "check", "-c", self.prism_cfg])
        self.sh(["haproxy", "-c", "-q", "-f", self.haproxy_cfg])
        self.setup()
        origin = self.start_origin() if have_lg else None
        for scen in SCENARIOS:
            if scen not in only:
                continue
            if scen in ("rt", "bans"):
                tool = self.rt_bench if scen == "rt" else self.ban_bench
                if not os.access(tool, os.X_OK):
                    self.skipped[scen] = f"{tool} missing"
                    continue
            elif scen != "bulk" and not have_lg:
                self.skipped[scen] = "build/loadgen missing"
                continue
            self.scen = scen
            t0 = time.monotonic()
            sys.stderr.write(f"bench: {scen} ...\n")
            try:
                getattr(self, f"sc_{scen}")()
            except (Stop, KeyboardInterrupt):
                raise
            except Exception as e:  # one broken scenario must not hide the others
                self.skipped[scen] = f"failed: {str(e).splitlines()[0][:300]}"
                sys.stderr.write(f"bench: {scen} failed: {e}\n")
            sys.stderr.write(f"bench: {scen} took {time.monotonic() - t0:.1f}s\n")
        if origin:
            self.kill(origin)
        self.elapsed = time.monotonic() - self.t_start
        self.load.append(loadavg())


# --- report -------------------------------------------------------------------


def fmt(v, nd=None):
    if v is None:
        return "n/a"
    if nd is None:
        a = abs(v)
        nd = 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 1 else 3
    return f"{v:,.{nd}f}"


def cell(s, nd=None):
    """'median (min-max)' for a summ() triple."""
    if s is None:
        return "n/a"
    med, lo, hi = s
    if lo == hi:
        return fmt(med, nd)
    return f"{fmt(med, nd)} ({fmt(lo, nd)}–{fmt(hi, nd)})"


def ratio(a, b):
    """Ratio of the medians of two summ() triples; None unless both > 0."""
    if a is None or b is None or a[0] <= 0 or b[0] <= 0:
        return None
    return a[0] / b[0]


def rfmt(r):
    return "n/a" if r is None else f"{r:.2f}x"


def vals(rs, *path):
    """Values at <path> (keys into each round's dict), one per round."""
    out = []
    for r in rs or []:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        out.append(v)
    return out


def get(rs, *path):
    """summ() of the values at <path> across rounds."""
    return summ(vals(rs, *path))


def rounds_that_fit(want, left_s, round_s, least=2):
    """How many of <want> rounds of <round_s> seconds fit in <left_s>
    seconds; never fewer than <least> (nor more than <want>)."""
    return max(min(want, least), min(want, int(left_s // round_s)))


def ahead(rs, path, higher_better, a="prism", b="haproxy"):
    """"k of n": the rounds in which <a> beat <b> at <path>. Each round runs
    every target within a minute or so, so a slow stretch of the machine
    hits both values of a pair, which a comparison of medians does not
    see."""
    pairs = [(x, y) for x, y in zip(vals(rs.get(a), *path), vals(rs.get(b), *path))
             if x is not None and y is not None]
    if not pairs:
        return ""
    k = sum(1 for x, y in pairs if (x > y if higher_better else x < y))
    return f"{k} of {len(pairs)}"


def many_apps(lists=False):
    """The app entries of prism-apps.yaml (see MANY_APPS). With <lists>, each
    address's apps have an allow list of their own: the client's /24 and an
    address no other list has, as every customer of an edge may list its
    own sources."""
    net = ipaddress.ip_network(PREFIX)
    split = MANY_APPS - net.num_addresses
    for i, addr in enumerate(net):
        extra = (f", protection: {{allow: [{CLIENT4.rsplit('.', 1)[0]}.0/24, "
                 f"100.64.{i >> 8}.{i & 255}]}}" if lists else "")
        for name, ports in (((f"a{i}l", "1-32767"), (f"a{i}h", "32768-65535")) if i < split
                            else ((f"a{i}", "*"),)):
            yield (f"  - {{name: {name}, edge: {addr}, ports: \"{ports}\", "
                   f"origins: \"{ORIGIN4}:{ECHO_PORT}\"{extra}}}\n")


def cmd_out(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def prism_pipe_size():
    """PIPE_SIZE of src/worker.h: the pipe size prism relays through, which
    HAProxy is given too."""
    with open(os.path.join(REPO, "src", "worker.h")) as f:
        m = re.search(r"^#define PIPE_SIZE \((\d+) \* 1024\)", f.read(), re.M)
    if not m:
        raise RuntimeError("src/worker.h: no `#define PIPE_SIZE (N * 1024)`")
    return int(m.group(1)) * 1024


def read_sysctl(name):
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return f.read().strip()


def cc_check(cc):
    """Loads congestion control <cc> if it is a module; RuntimeError if the
    kernel has no such algorithm."""
    avail = read_sysctl("net.ipv4.tcp_available_congestion_control").split()
    if cc in avail:
        return
    try:
        subprocess.run(["modprobe", f"tcp_{cc}"], capture_output=True, check=False)
    except OSError:  # no kmod: a kernel without modules
        pass
    avail = read_sysctl("net.ipv4.tcp_available_congestion_control").split()
    if cc not in avail:
        raise RuntimeError(f"--cc {cc}: not in this kernel (it has {' '.join(avail)})")


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    return {
        "nproc": os.cpu_count(), "model": model, "mem": f"{mem:.1f} GiB",
        "kernel": os.uname().release,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": cmd_out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "haproxy": cmd_out(["haproxy", "-v"]).splitlines()[0],
        "iperf3": cmd_out(["iperf3", "--version"]).splitlines()[0],
    }


class Report:
    def __init__(self, b):
        self.b, self.res, self.lines, self.verdicts = b, b.res, [], []

    def w(self, s=""):
        self.lines.append(s)

    def table(self, head, rows):
        self.w("| " + " | ".join(head) + " |")
        self.w("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            self.w("| " + " | ".join(r) + " |")
        self.w()

    def ratios(self, s):
        """prism/haproxy, prism/direct, haproxy/direct of {target: summ}."""
        return [rfmt(ratio(s.get("prism"), s.get("haproxy"))),
                rfmt(ratio(s.get("prism"), s.get("direct"))),
                rfmt(ratio(s.get("haproxy"), s.get("direct")))]

    def metric_table(self, key, metrics):
        """One row per (metric, target) plus a ratio column set per metric."""
        rs = self.res.get(key)
        if not rs:
            return
        head = ["metric"] + list(TARGETS) + ["prism/haproxy", "prism/direct", "haproxy/direct"]
        rows = []
        for label, path, nd in metrics:
            s = {t: get(rs[t], *path) for t in TARGETS}
            rows.append([label] + [cell(s[t], nd) for t in TARGETS] + self.ratios(s))
        self.table(head, rows)

    def verdict(self, target, value, ok, a=None, b=None, won=""):
        """One row of the Targets table; <a>, <b>: the two summ() triples
        compared, to flag a verdict that the run-to-run spread could flip;
        <won>: ahead()'s count of the rounds prism won."""
        note = ""
        if a and b and a[1] <= b[2] and b[1] <= a[2]:
            note = "min–max ranges overlap"
        self.verdicts.append((target, value, "n/a" if ok is None else "met" if ok else "not met",
                              won, note))

    def skipped(self, scen):
        """Notes a failed or skipped scenario; True when nothing of it was measured."""
        if scen in self.b.skipped:
            self.w(f"*Not measured{' (in part)' if self.partial(scen) else ''}: "
                   f"{self.b.skipped[scen]}.*")
            self.w()
            return not self.partial(scen)
        return False

    def partial(self, scen):
        return any(k.startswith(scen) for k in self.res)

    def build(self, notes):
        b, m = self.b, machine()
        self.w("# prism benchmarks")
        self.w()
        self.w("Generated by `make bench` (bench/run.py"
               + (" --quick: 1 round, short durations — not for quoting" if b.quick else "")
               + f"); the run took {b.elapsed:.0f} s. Do not edit above the notes marker: "
               "it is regenerated.")
        self.w()
        self.table(["", ""], [
            ["machine", f"{m['nproc']} vCPU, {m['model']}, {m['mem']} RAM"],
            ["kernel", m["kernel"]], ["date", m["date"]], ["prism", f"`{m['commit']}`"],
            ["haproxy", m["haproxy"]], ["iperf3", m["iperf3"]],
            ["load average", f"{b.load[0]} at the start, {b.load[-1]} at the end "
                             "(1/5/15 min; other work on the machine adds noise)"],
            ["rounds", f"{b.rounds} per scenario (memory: {b.mem_rounds}, many apps: "
             f"{b.apps_rounds}), alternating "
                       "direct, haproxy, prism (rate: direct, haproxy, haproxy-smart, prism), "
                       "the order rotated every second round and reversed every "
                       "other one"],
            ["durations", f"bulk {b.t_bulk} s, rate {b.t_rate} s, latency {b.t_lat} s per round"],
            ["bulk placement", "pinned (`--pin`): the iperf3 client on CPU 0, the iperf3 "
             "server and every thread of the proxy on CPU 1" if b.pin else
             "left to the scheduler (`--pin` puts the iperf3 client on CPU 0, and the "
             "iperf3 server and the proxy on CPU 1)"],
            ["proxy scheduling", "SCHED_BATCH (`--batch`): both proxies run under `chrt -b 0`, "
             "so their wake-ups do not preempt the client or origin on the same vCPU"
             if b.batch else "the default (SCHED_OTHER; `--batch` runs both proxies "
             "SCHED_BATCH)"],
            ["TCP congestion control", (f"{b.cc_system} (the host's default; `--cc system`)"
                                        if b.cc == "system" else
                                        f"{b.cc} in every namespace (`--cc`; the host's "
                                        f"default is {b.cc_system}, qdisc "
                                        f"{read_sysctl('net.core.default_qdisc')})")],
        ])
        self.w("Cells are *median (min–max)* over the rounds. Topology: client "
               f"{CLIENT4} → edge ({EDGE_C4} / {EDGE_O4}) → origin {ORIGIN4}, one veth "
               "pair each, all three namespaces on the same 2 vCPUs (client, proxy and "
               "origin compete for them). `direct`: the edge only forwards, the client "
               f"dials {ORIGIN4} itself. `haproxy` and `prism`: the client dials "
               f"{PREFIX} (random address and port unless said otherwise) or "
               f"{IPERF_EDGE} (iperf3); the TPROXY rule of `prism net up` delivers to "
               f"127.0.0.1:{LISTEN_PORT}. Every socket of every namespace uses the TCP "
               "congestion control in the table above (see \"Congestion control\" in the "
               "notes for why it is set). Both proxies run 2 threads; the proxy's CPU is "
               "utime+stime from /proc/PID/stat around each round. prism writes its "
               "access log (a line per connection) to a file, which the harness reads "
               "only to wait for startup; HAProxy is configured without a log.")
        self.w()
        self.bulk()
        self.rate()
        self.latency()
        self.memory()
        self.anyport()
        self.rt()
        self.apps()
        self.bans()
        self.targets()
        self.commands()
        self.w(NOTES_MARKER)
        return "\n".join(self.lines) + "\n" + notes

    def bulk(self):
        self.w("## 1. Bulk throughput (iperf3, client → origin)")
        self.w()
        if self.skipped("bulk"):
            return
        self.w("Machine CPU: busy time of both vCPUs (/proc/stat) per GB moved, i.e. "
               "iperf3 client and server, the proxy, and the kernel work of every hop; "
               "iperf3 runs from the start to the end of that window, so the figure "
               "includes its setup.")
        self.w()
        for n in (1, 4):
            self.w(f"**{n} stream{'s' if n > 1 else ''}**")
            self.w()
            self.metric_table(f"bulk{n}", [("Gbit/s", ("gbps",), 2),
                                           ("proxy CPU s per GB", ("cpu_s_per_gb",), 3),
                                           ("machine CPU s per GB", ("machine_s_per_gb",), 3)])

    def rate(self):
        self.w("## 2. New connections/s (64 concurrent, 64-byte request/response)")
        self.w()
        if self.skipped("rate") or not self.res.get("rate"):
            return
        self.w(f"Proxies: random address in {PREFIX} × random port 1–65535 per connection; "
               f"direct: {ORIGIN4}:{ECHO_PORT} (nothing else listens there).")
        self.w()
        self.w("`haproxy-smart`: the same HAProxy with `option tcp-smart-accept` and "
               "`option tcp-smart-connect` (both off by default in TCP mode; they save "
               "the ACK packets prism saves by default). Packets: through the edge's two "
               "veths, both legs. Machine CPU: busy time of both vCPUs (/proc/stat) per "
               "connection, i.e. client + proxy + origin; the machine is saturated "
               "(idle < 5%), so conn/s ≈ 2 s / machine CPU per connection.")
        self.w()
        rs = self.res["rate"]
        T = [t for t in RATE_TARGETS if t in rs]
        head = (["metric"] + T + ["prism/haproxy", "prism/haproxy-smart", "prism/direct",
                                  "haproxy/direct"])
        rows = []
        for label, path, nd in [
                ("conn/s", ("conn_per_s",), 0), ("errors", ("errors",), 0),
                ("connect() call p50 µs", ("connect_us", "p50"), 0),
                ("connect() call p99 µs", ("connect_us", "p99"), 0),
                ("latency p50 µs", ("lat_us", "p50"), 0),
                ("latency p99 µs", ("lat_us", "p99"), 0),
                ("latency p99.9 µs", ("lat_us", "p999"), 0),
                ("proxy CPU µs/conn", ("cpu_us_per_conn",), 1),
                ("machine CPU µs/conn", ("machine_us_per_conn",), 1),
                ("packets/conn", ("packets_per_conn",), 2)]:
            s = {t: get(rs[t], *path) for t in T}
            r = self.ratios(s)
            rows.append([label] + [cell(s[t], nd) for t in T]
                        + [r[0], rfmt(ratio(s.get("prism"), s.get("haproxy-smart")))] + r[1:])
        self.table(head, rows)

    def latency(self):
        self.w("## 3. Request/response latency (persistent connections, 64 bytes)")
        self.w()
        if self.skipped("latency"):
            return
        for n in (1, 64):
            self.w(f"**{n} connection{'s' if n > 1 else ''}**")
            self.w()
            self.metric_table(f"latency{n}", [
                ("transactions/s", ("tps",), 0), ("rtt p50 µs", ("rtt_us", "p50"), 0),
                ("rtt p99 µs", ("rtt_us", "p99"), 0), ("rtt p99.9 µs", ("rtt_us", "p999"), 0),
                ("errors", ("errors",), 0)])

    def memory(self):
        self.w("## 4. Memory per idle proxied connection")
        self.w()
        if self.skipped("memory"):
            return
        self.w("`loadgen hold` opens N connections (1-byte echo on each), then the proxy's "
               "VmRSS is read again: userspace KiB per connection = ΔRSS / N. Kernel side, "
               "separately: Δ`mem` of the TCP line of /proc/net/sockstat read in the edge "
               "namespace (pages of socket buffer memory; that counter is machine-wide, so "
               "it includes the client's and origin's sockets), and ΔSlab of /proc/meminfo "
               "(machine-wide, socket structures of all hops; the `direct` column is the "
               "baseline of the client and origin sockets). Edge TCP sockets: Δ`inuse`.")
        self.w()
        head = ["metric"] + list(TARGETS) + ["prism/haproxy"]
        for n in self.b.mem_conns:
            rs = self.res.get(f"memory{n}")
            if not rs:
                continue
            self.w(f"**{n:,} connections**")
            self.w()
            rows = []
            for label, path, nd in (("proxy RSS KiB/conn", ("rss_kib_per_conn",), 2),
                                    ("proxy RSS before KiB", ("rss_before_kib",), 0),
                                    ("proxy RSS after KiB", ("rss_after_kib",), 0),
                                    ("sockstat mem KiB/conn", ("sock_mem_kib_per_conn",), 2),
                                    ("Slab KiB/conn (all hops)", ("slab_kib_per_conn",), 2),
                                    ("edge sockets (Δinuse)", ("edge_inuse",), 0),
                                    ("open time ms", ("open_ms",), 0)):
                s = {t: get(rs[t], *path) for t in TARGETS}
                rows.append([label] + [cell(s[t], nd) for t in TARGETS]
                            + [rfmt(ratio(s["prism"], s["haproxy"]))])
            # The proxy's own kernel share: its two sockets per connection.
            s = {t: get(rs[t], "slab_kib_per_conn") for t in TARGETS}
            d = s["direct"]
            extra = {t: None if not (s[t] and d) else (s[t][0] - d[0],) * 3 for t in TARGETS}
            rows.insert(5, ["Slab KiB/conn − direct (the proxy's sockets)", "—",
                            cell(extra["haproxy"], 2), cell(extra["prism"], 2),
                            rfmt(ratio(extra["prism"], extra["haproxy"]))])
            self.table(head, rows)

    def anyport(self):
        self.w("## 5. Any-port scale")
        self.w()
        if self.skipped("anyport"):
            return
        rs = self.res.get("anyport")
        if not rs:
            return
        self.w("`prism /16×65535`: prism, random address in the /16 × random port 1–65535. "
               "`prism single`: prism, always 198.18.0.1:7000. `prism IPv6 /64×65535`: "
               f"prism, the client ({CLIENT6}) dials a random address in {PREFIX6} × random "
               "port, prism relays to the same IPv4 origin (`prism-v6.yaml`: the usual "
               "config with an IPv6 listener and that /64 as one more app), so only the "
               "client leg differs. `naive`: no proxy; 4 "
               "`loadgen serve --addr 0.0.0.0 --ports LO-HI` processes, 16,384 listening "
               "sockets each (the 20,000-fd limit), in a fourth namespace "
               f"({NAIVE4}) where `local {PREFIX}` is routed to lo; the edge just "
               "forwards the /16 to it. It serves the same random address × port load "
               "itself (no relaying to an origin, unlike prism). Setup: spawn to "
               "ready (all 4 for naive; prism includes its nft/route install). Slab: "
               "ΔSlab of /proc/meminfo from before start to ready (machine-wide; "
               "shown for naive only, prism's two listeners are lost in the noise).")
        self.w()
        cols = (("prefix", "prism /16×65535"), ("single", "prism single"),
                ("prefix6", "prism IPv6 /64×65535"), ("naive", "naive"))
        rows = []
        for label, path, nd in (("conn/s", ("conn_per_s",), 0), ("errors", ("errors",), 0),
                                ("handshake (connect() call) p50 µs", ("connect_us", "p50"), 0),
                                ("handshake (connect() call) p99 µs", ("connect_us", "p99"), 0),
                                ("accept latency (connect → echo) p50 µs", ("lat_us", "p50"), 0),
                                ("accept latency (connect → echo) p99 µs", ("lat_us", "p99"), 0),
                                ("setup ms (spawn → ready)", ("setup_wall_ms",), 0),
                                ("listening sockets", ("listeners",), 0),
                                ("RSS KiB (sum of processes)", ("rss_kib",), 0),
                                ("Slab Δ KiB", ("slab_kib",), 0)):
            rows.append([label] + [cell(get(rs[k], *path), nd) for k, _ in cols])
        self.table(["metric"] + [n for _, n in cols], rows)
        a, s, v6, n = (get(rs[k], "conn_per_s") for k in ("prefix", "single", "prefix6", "naive"))
        self.w(f"Ratios: /16×65535 ÷ single = {rfmt(ratio(a, s))}; "
               f"IPv6 /64×65535 ÷ IPv4 /16×65535 = {rfmt(ratio(v6, a))}; "
               f"prism /16×65535 ÷ naive = {rfmt(ratio(a, n))}.")
        self.w()

    def rt(self):
        self.w("## 6. Routing lookup (build/rt_bench)")
        self.w()
        if self.skipped("rt"):
            return
        r = self.res.get("rt")
        if not r:
            return
        self.w("```")
        for line in r["lines"]:
            self.w(line)
        self.w("```")
        self.w()
        self.w("`ns_per_lookup` is the minimum over rt_bench's rounds, `median` the median: "
               "lookups one after another, whose cache misses the CPU overlaps. "
               "`chained_ns` makes each lookup's key depend on the result before it, so "
               "none overlaps: what one lookup costs on its own, as prism makes one per "
               "accepted connection.")
        self.w()

    def bans(self):
        self.w("## 8. Bans (build/ban_bench)")
        self.w()
        if self.skipped("bans"):
            return
        rows = self.res.get("bans")
        if not rows:
            return
        self.w("How fast the ban thread bans: `ban_add` as it calls it (it first asks the "
               "kernel whether a longer ban of the source is in force), for sources the "
               "kernel holds no ban for, with the ban set empty and holding "
               f"{BANS_FILL:,} other sources; and refreshes, longer bans of sources already "
               "banned (one transaction that adds, deletes and adds the element again: on "
               "Debian 12's kernel an add alone keeps the old timeout). On one netlink "
               "socket, kept open as the ban thread keeps its own. Wall time, prism's own "
               "table loaded by `net up`.")
        self.w()
        self.table(["bans in the set before", "new bans/s", "ms per new ban",
                    "ms per refresh"],
                   [[f"{fill:,}", cell(summ([x["new_per_s"] for x in rs]), 0),
                     cell(summ([x["ms_per_new"] for x in rs]), 3),
                     cell(summ([x["ms_per_refresh"] for x in rs]), 3)]
                    for fill, rs in rows.items()])
        self.w()

    def apps(self):
        self.w("## 7. Many apps")
        self.w()
        if self.skipped("apps"):
            return
        rs = self.res.get("apps")
        if not rs:
            return
        addrs = ipaddress.ip_network(PREFIX).num_addresses
        self.w(f"The rate scenario's load (random address in {PREFIX} × random port) through "
               f"prism with the /16 as one app, and as {MANY_APPS:,} apps: one per address, "
               f"the first {MANY_APPS - addrs:,} addresses as two apps of half the ports "
               "each (`prism-apps.yaml`, written by bench/run.py). Setup: spawn to ready, "
               f"including the nft table and the {addrs:,} routes. `with allow lists`: the same "
               "apps, each address's with an allow list of its own (the client's /24 and an "
               "address of its own), `prism-apps-lists.yaml`. `prism check`: loading and "
               "checking the config alone (wall time of the command). Set elements: what "
               "`prism net up` put in the tiers of the claims sets and of `appallow4` "
               "(docs/architecture.md).")
        self.w()
        cols = (("one", "1 app"), ("many", f"{MANY_APPS:,} apps"),
                ("lists", f"{MANY_APPS:,} apps with allow lists"))
        rows = []
        for label, path, nd in (("conn/s", ("conn_per_s",), 0), ("errors", ("errors",), 0),
                                ("latency p99 µs", ("lat_us", "p99"), 0),
                                ("prism CPU µs/conn", ("cpu_us_per_conn",), 1),
                                ("machine CPU µs/conn", ("machine_us_per_conn",), 1),
                                ("setup ms (spawn → ready)", ("setup_wall_ms",), 0),
                                ("`prism check` ms", ("check_ms",), 0),
                                ("prism RSS KiB after ready", ("rss_kib",), 0)):
            rows.append([label] + [cell(get(rs[k], *path), nd) for k, _ in cols])
        for base in ("claims", "appallow"):
            sets = [f"{base}{t}4" for t in ("all", "point", "")]
            rows.append([f"`{base}4` elements (all / point / range)"]
                        + [" / ".join(fmt(rs[k][-1]["claims"].get(n), 0) if rs[k] else "–"
                                      for n in sets) for k, _ in cols])
        self.table(["metric"] + [n for _, n in cols], rows)
        one = get(rs["one"], "conn_per_s")
        for k, label in cols[1:]:
            won = ahead(rs, ("conn_per_s",), True, k, "one")
            self.w(f"- {label} ÷ 1 app = {rfmt(ratio(get(rs[k], 'conn_per_s'), one))} in conn/s "
                   f"(faster than 1 app in {won or '–'} rounds).")
        self.w()

    def targets(self):
        res, T = self.res, TARGETS
        for n in (1, 4):
            rs = res.get(f"bulk{n}")
            g = {t: get(rs[t], "gbps") for t in T} if rs else {}
            c = {t: get(rs[t], "cpu_s_per_gb") for t in T} if rs else {}
            rh, rd = ratio(g.get("prism"), g.get("haproxy")), ratio(g.get("prism"), g.get("direct"))
            st = "1 stream" if n == 1 else f"{n} streams"
            self.verdict(f"throughput {st} ≥ 1.0× haproxy", rfmt(rh),
                         None if rh is None else rh >= 1.0, g.get("prism"), g.get("haproxy"),
                         ahead(rs or {}, ("gbps",), True))
            self.verdict(f"throughput {st} ≥ 0.8× direct", rfmt(rd),
                         None if rd is None else rd >= 0.8)
            cp, ch = c.get("prism"), c.get("haproxy")
            self.verdict(f"CPU/GB {st} < haproxy",
                         f"{cell(cp, 3)} vs {cell(ch, 3)} s/GB" if cp and ch else "n/a",
                         None if not (cp and ch) else cp[0] < ch[0], cp, ch,
                         ahead(rs or {}, ("cpu_s_per_gb",), False))
        rs = res.get("rate")
        if rs:
            cp, ch = get(rs["prism"], "conn_per_s"), get(rs["haproxy"], "conn_per_s")
            cr = ratio(cp, ch)
            self.verdict("conn/s ≥ 1.2× haproxy", rfmt(cr), None if cr is None else cr >= 1.2,
                         cp, ch, ahead(rs, ("conn_per_s",), True))
            if "haproxy-smart" in rs:
                cs = get(rs["haproxy-smart"], "conn_per_s")
                crs = ratio(cp, cs)
                self.verdict("(for reference, no target) conn/s vs haproxy-smart", rfmt(crs),
                             None, cp, cs, ahead(rs, ("conn_per_s",), True, b="haproxy-smart"))
            pp, ph = get(rs["prism"], "lat_us", "p99"), get(rs["haproxy"], "lat_us", "p99")
            self.verdict("conn/s p99 latency ≤ haproxy",
                         f"{fmt(pp and pp[0], 0)} vs {fmt(ph and ph[0], 0)} µs",
                         None if not (pp and ph) else pp[0] <= ph[0], pp, ph,
                         ahead(rs, ("lat_us", "p99"), False))
        else:
            self.verdict("conn/s ≥ 1.2× haproxy, p99 no worse", "not measured", None)
        for n in (1, 64):
            rs = res.get(f"latency{n}")
            if not rs:
                self.verdict(f"req/resp p99 ≤ haproxy ({n} conn)", "not measured", None)
                continue
            pp, ph = get(rs["prism"], "rtt_us", "p99"), get(rs["haproxy"], "rtt_us", "p99")
            self.verdict(f"req/resp p99 ≤ haproxy ({n} conn{'s' if n > 1 else ''})",
                         f"{fmt(pp and pp[0], 0)} vs {fmt(ph and ph[0], 0)} µs",
                         None if not (pp and ph) else pp[0] <= ph[0], pp, ph,
                         ahead(rs, ("rtt_us", "p99"), False))
        for n in self.b.mem_conns:
            rs = res.get(f"memory{n}")
            v = get(rs["prism"], "rss_kib_per_conn") if rs else None
            self.verdict(f"idle memory ≤ 1 KiB prism RSS/conn ({n:,} conns)",
                         "not measured" if v is None else f"{fmt(v[0], 2)} KiB",
                         None if v is None else v[0] <= 1.0)
        rt = (res.get("rt") or {}).get("rows") or {}
        if 10 in rt and 100000 in rt:
            a, z = rt[10]["ns_per_lookup"], rt[100000]["ns_per_lookup"]
            self.verdict("route lookup growth 10 → 100k apps ≤ 2×",
                         f"{z / a:.1f}× ({a:.1f} → {z:.1f} ns)", z / a <= 2.0)
            worst = max(r["ns_per_lookup"] for r in rt.values())
            wmed = max(r.get("median", 0) for r in rt.values())
            self.verdict("route lookup < 200 ns",
                         f"{worst:.1f} ns at worst (median of rounds: {wmed:.1f} ns)",
                         worst < 200)
            if "chained_ns" in rt[10] and "chained_ns" in rt[100000]:
                a, z = rt[10]["chained_ns"], rt[100000]["chained_ns"]
                self.verdict("(for reference, no target) one lookup on its own (chained_ns), "
                             "10 → 100k apps", f"{a:.1f} → {z:.1f} ns ({z / a:.1f}×)", None)
        else:
            self.verdict("route lookup ≤ 2× growth, < 200 ns", "not measured", None)
        rs = res.get("apps")
        if rs:
            b = get(rs["one"], "conn_per_s")
            for k, what in (("many", ""), ("lists", " with allow lists")):
                a = get(rs[k], "conn_per_s")
                self.verdict(f"(for reference, no target) conn/s with {MANY_APPS:,} "
                             f"apps{what} ÷ 1 app (section 7)", rfmt(ratio(a, b)), None, a, b)
        rs = res.get("anyport")
        a, s = (get(rs[k], "conn_per_s") for k in ("prefix", "single")) if rs else (None, None)
        r = ratio(a, s)
        self.verdict("/16×65535 conn/s within ±5% of single address/port", rfmt(r),
                     None if r is None else abs(r - 1) <= 0.05, a, s)
        v6 = get(rs["prefix6"], "conn_per_s") if rs else None
        self.verdict("(for reference, no target) IPv6 /64×65535 ÷ IPv4 /16×65535 conn/s",
                     rfmt(ratio(v6, a)), None, v6, a)
        self.w("## Targets")
        self.w()
        self.w("Judged on the medians above" + (" (quick run: 1 round)" if self.b.quick else "")
               + ". *prism ahead*: in how many rounds prism's value beat HAProxy's (each "
               "round runs every target within a minute or so, so the pair shares the "
               "machine's speed at that time). *min–max ranges overlap*: prism's and "
               "HAProxy's spreads over the rounds overlap, so another run on this shared "
               "machine may well give the other verdict.")
        self.w()
        self.table(["target", "measured", "verdict", "prism ahead", "note"],
                   [list(v) for v in self.verdicts])

    def commands(self):
        b = self.b
        self.w("## Exact commands")
        self.w()
        self.w("Run as root: `make bench` = `sh scripts/deps.sh`, `make build/prism "
               "build/loadgen build/rt_bench`, then `/usr/bin/python3 bench/run.py"
               + (" --quick" if b.quick else "") + "`. $CLIENT, $EDGE, $ORIGIN, $NAIVE are the "
               "namespaces (`pbn<pid>c|e|o|n`); the configs are below. Commands are listed "
               "in order of first use; every round repeats them per target (direct: the "
               "client command alone; haproxy: `net up`, haproxy, client, `net down`; "
               "prism: `prism run`, client)."
               + (" The harness puts the host's `tcp_allowed_congestion_control` back as it "
                  "found it when it is done (a run that was killed leaves the list it found in "
                  "`/run/prism-bench-cc.PID`, and the next run puts that back)."
                  if b.cc_allowed_was is not None else ""))
        self.w()
        for scen, cmds in b.commands.items():
            self.w(f"**{scen}**")
            self.w()
            self.w("```")
            for c in cmds:
                self.w(c)
            self.w("```")
            self.w()
        for title, path, lang in (("prism.yaml", b.prism_cfg, "yaml"),
                                  ("haproxy.cfg", b.haproxy_cfg, "")):
            self.w(f"<details><summary>{title}</summary>")
            self.w()
            self.w(f"```{lang}")
            with open(path) as f:
                self.w(f.read().rstrip())
            self.w("```")
            self.w()
            self.w("</details>")
            self.w()


def old_notes(path):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return DEFAULT_NOTES
    i = text.find(NOTES_MARKER)
    if i == -1:
        return DEFAULT_NOTES
    return text[i + len(NOTES_MARKER):].lstrip("\n")


def main():
    ap = argparse.ArgumentParser(description="prism benchmark harness (writes docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="1 round, short durations (< 90 s)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per scenario (default 7)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build directory")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--json", help="raw results (default BUILD/bench/results.json)")
    ap.add_argument("--cc", default=DEFAULT_CC,
                    help=f"TCP congestion control in every namespace (default {DEFAULT_CC}, "
                    "Debian's default; 'system' keeps the host's)")
    ap.add_argument("--pin", action="store_true",
                    help="bulk: run the iperf3 client on CPU 0, and the iperf3 server and the "
                    "proxy on CPU 1, instead of leaving the four busy threads to the scheduler")
    ap.add_argument("--batch", action="store_true",
                    help="run both proxies SCHED_BATCH (chrt -b 0): their wake-ups then "
                    "do not preempt the client or origin sharing their vCPU")
    ap.add_argument("--haproxy-splice", choices=("force", "auto"), default="force",
                    help="HAProxy splice options (default force: splice-request/response)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, nftables)")
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("bench: --pin needs CPUs 0 and 1")
    catch_stop_signals()
    b = Bench(args)
    if not os.access(b.prism, os.X_OK):
        sys.exit(f"bench: {b.prism} missing (make build/prism)")
    rc = 0
    try:
        b.run()
    except (Stop, KeyboardInterrupt) as e:
        sys.stderr.write(f"bench: interrupted ({e or 'Ctrl-C'}), cleaning up\n")
        rc = 130
    except RuntimeError as e:  # a setup command failed: say which, then clean up
        sys.stderr.write(f"bench: {e}\n")
        rc = 1
    finally:
        ignore_stop_signals()
        errors = b.teardown()
        if errors:
            sys.stderr.write(f"bench: cleanup: {errors}\n")
    if rc:
        return rc
    if args.json is None:
        args.json = os.path.join(b.work, "results.json")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": b.res, "skipped": b.skipped, "commands": b.commands}, f,
                      indent=1, default=str)
    notes = old_notes(args.out)
    text = Report(b).build(notes)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.out)
    sys.stderr.write(f"bench: wrote {args.out} ({b.elapsed:.0f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

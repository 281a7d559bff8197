"""Smoke test of the benchmark harness (bench/run.py --quick): every
scenario runs against direct, HAProxy and prism, the report carries its
tables, and the harness leaves the host as it found it (namespaces, and the
congestion-control list it may widen). No timing is asserted: speed is the
harness's output, not something a test can judge on a shared machine."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import run as bench_run  # noqa: E402  (bench/run.py: its PIPE_SIZE reader)

BUILD = pathlib.Path(os.environ.get("PRISM_BUILD", REPO / "build"))
ALLOWED = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


def read(path):
    with open(path) as f:
        return f.read().strip()


def run_harness(tmp_path, *extra):
    """Runs bench/run.py --quick; on a timeout it is stopped with SIGTERM
    first, which makes it clean up, and whatever it left is removed."""
    out, js = tmp_path / "bench.md", tmp_path / "bench.json"
    argv = ["/usr/bin/python3", str(REPO / "bench" / "run.py"), "--quick", "--build", str(BUILD),
            "--out", str(out), "--json", str(js)] + list(extra)
    allowed = read(ALLOWED)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout.splitlines():
            if re.match(rf"pbn{p.pid}[ceon]\b", line):
                subprocess.run(["ip", "netns", "del", line.split()[0]])
        with open(ALLOWED, "w") as f:
            f.write(allowed)
        pytest.fail("bench/run.py --quick took over 300 s")
    return p, stdout, stderr, out, js, allowed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    for tool in ("prism", "loadgen", "rt_bench", "ban_bench"):
        assert (BUILD / tool).exists(), f"{BUILD / tool} not built (make test builds it)"
    return run_harness(tmp_path_factory.mktemp("bench"))


def test_quick_run_reports_every_scenario(quick_run):
    p, _, stderr, out, js, _ = quick_run
    assert p.returncode == 0, stderr[-3000:]
    data = json.loads(js.read_text())
    assert data["skipped"] == {}, data["skipped"]
    res = data["results"]
    for key in ("bulk1", "bulk4"):
        for target in ("direct", "haproxy", "prism"):
            assert res[key][target][0]["gbps"] > 0, (key, target)
        for target in ("haproxy", "prism"):  # without --batch
            assert res[key][target][0]["sched"] == os.SCHED_OTHER, (key, target)
    for target in ("direct", "haproxy", "haproxy-smart", "prism"):
        r = res["rate"][target][0]
        assert r["conn_per_s"] > 0 and r["errors"] == 0, (target, r)
    # 100,000 apps, one or two per address of the /16: all served, and the
    # claims merge into one address range (plus iperf's address). With an
    # allow list of its own per address, (address . source) pairs, two per
    # address: the two apps of an address share their list.
    for kind in ("one", "many", "lists"):
        r = res["apps"][kind][0]
        assert r["conn_per_s"] > 0 and r["errors"] == 0, (kind, r)
        c = r["claims"]
        assert (c["claimsall4"], c["claimspoint4"], c["claims4"]) == (2, 0, 0), (kind, r)
        assert (c["appallowall4"], c["appallow4"]) == ((131072, 0) if kind == "lists"
                                                       else (0, 0)), (kind, r)
    # Any port of the /16, one address, and any port of an IPv6 /64 (the
    # client leg over IPv6: two more listeners, one per worker).
    for kind, lis in (("prefix", 2), ("single", 2), ("prefix6", 4)):
        r = res["anyport"][kind][0]
        assert r["conn_per_s"] > 0 and r["errors"] == 0, (kind, r)
        assert r["listeners"] == lis, (kind, r)
    text = out.read_text()
    assert re.search(r"^\| proxy scheduling \| the default \(SCHED_OTHER", text, re.M)
    assert re.search(r"IPv6 /64×65535 ÷ IPv4 /16×65535 = [\d.]+x", text)
    for title in ("## 1. Bulk throughput", "## 2. New connections/s", "## 3. Request/response",
                  "## 4. Memory", "## 5. Any-port scale", "## 6. Routing lookup", "## 7. Many apps",
                  "## 8. Bans",
                  "## Targets",
                  "## Exact commands"):
        assert title in text, title
    assert re.search(r"^apps=100000 ns_per_lookup=\S+ median=\S+ chained_ns=\S+", text, re.M)
    # Bans per second with the set empty and nearly full.
    for fill in ("0", "60,000"):
        assert re.search(rf"^\| {fill} \| [\d,]+ \| [\d.]+ \| [\d.]+ \|$", text, re.M), fill
    # The chained (one lookup on its own) figure is reported, not judged.
    assert re.search(r"^\| \(for reference, no target\) one lookup on its own \(chained_ns\), "
                     r"10 → 100k apps \| [\d.]+ → [\d.]+ ns \([\d.]+×\) \| n/a \|", text, re.M)


def test_targets_count_the_rounds_prism_won(quick_run):
    """The Targets table says, per prism-vs-HAProxy target, in how many
    rounds prism's value was the better one (1 round in a quick run)."""
    p, _, stderr, out, _, _ = quick_run
    assert p.returncode == 0, stderr[-3000:]
    text = out.read_text()
    assert "| target | measured | verdict | prism ahead | note |" in text
    for row in ("throughput 1 stream ≥ 1.0× haproxy", "CPU/GB 4 streams < haproxy",
                "conn/s ≥ 1.2× haproxy", "req/resp p99 ≤ haproxy (64 conns)"):
        assert re.search(rf"^\| {re.escape(row)} \|[^|]*\|[^|]*\| [01] of 1 \|", text, re.M), row


def test_rounds_won_pairs_values_of_the_same_round():
    """ahead() compares prism and HAProxy round by round, whichever way
    is better, and leaves out rounds where either has no value."""
    rs = {"prism": [{"v": 10}, {"v": 5}, {"v": 7}, {"v": None}],
          "haproxy": [{"v": 9}, {"v": 6}, {"v": 1}, {"v": 3}]}
    assert bench_run.ahead(rs, ("v",), True) == "2 of 3"
    assert bench_run.ahead(rs, ("v",), False) == "1 of 3"
    assert bench_run.ahead({"prism": [], "haproxy": []}, ("v",), True) == ""


def test_last_section_gives_way_to_the_time_budget():
    """Section 7 runs as many of its rounds as fit in what is left of the
    10 minutes, never fewer than 2 (nor more than asked)."""
    assert bench_run.rounds_that_fit(5, 120, 20) == 5
    assert bench_run.rounds_that_fit(5, 75, 20) == 3
    assert bench_run.rounds_that_fit(5, 10, 20) == 2
    assert bench_run.rounds_that_fit(5, -30, 20) == 2
    assert bench_run.rounds_that_fit(1, 10, 20) == 1


def test_every_namespace_gets_the_congestion_control(quick_run):
    """The harness sets one algorithm (cubic by default) in all four
    namespaces, says so in the machine table, and lists the commands."""
    p, _, stderr, out, _, _ = quick_run
    assert p.returncode == 0, stderr[-3000:]
    text = out.read_text()
    assert re.search(r"^\| TCP congestion control \| cubic in every namespace", text, re.M)
    for ns in ("$CLIENT", "$EDGE", "$ORIGIN", "$NAIVE"):
        assert f"ip netns exec {ns} sysctl -qw net.ipv4.tcp_congestion_control=cubic" in text


def test_haproxy_gets_prisms_pipe_size(quick_run):
    """Both proxies splice through pipes of the same size: prism's
    PIPE_SIZE, and HAProxy's tune.pipesize in the config the report shows."""
    p, _, stderr, out, _, _ = quick_run
    assert p.returncode == 0, stderr[-3000:]
    size = bench_run.prism_pipe_size()  # raises if src/worker.h has no PIPE_SIZE
    assert re.search(rf"^    tune\.pipesize {size}$", out.read_text(), re.M)


def test_host_left_as_found(quick_run):
    """No namespace of the run survives it, and the host's list of
    algorithms namespaces may pick is back to what it was."""
    p, _, _, _, _, allowed = quick_run
    assert read(ALLOWED) == allowed
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(rf"\bpbn{p.pid}[ceon]\b", names), names


def test_pinned_bulk_run(tmp_path):
    """--pin puts the iperf3 client on CPU 0 and the iperf3 server and the
    proxy on CPU 1, lists the taskset commands and says so in the report."""
    p, _, stderr, out, js, allowed = run_harness(tmp_path, "--only", "bulk", "--pin")
    assert p.returncode == 0, stderr[-3000:]
    res = json.loads(js.read_text())["results"]
    for target in ("direct", "haproxy", "prism"):
        assert res["bulk4"][target][0]["gbps"] > 0, target
    text = out.read_text()
    assert re.search(r"^\| bulk placement \| pinned \(`--pin`\)", text, re.M)
    assert re.search(r"^taskset -c 0 ip netns exec \$CLIENT iperf3 -c ", text, re.M)
    for name in ("iperf3-s", "haproxy", "prism"):
        assert f"taskset -a -p -c 1 '<pid of {name}>'" in text, name
    assert read(ALLOWED) == allowed


def test_batch_bulk_run(tmp_path):
    """--batch runs both proxies SCHED_BATCH, lists the chrt commands and
    says so in the report; without it they run under the default policy
    (test_quick_run_reports_every_scenario's run)."""
    p, _, stderr, out, js, allowed = run_harness(tmp_path, "--only", "bulk", "--batch")
    assert p.returncode == 0, stderr[-3000:]
    res = json.loads(js.read_text())["results"]
    for streams in (1, 4):
        for target in ("haproxy", "prism"):
            assert res[f"bulk{streams}"][target][0]["sched"] == os.SCHED_BATCH, target
    text = out.read_text()
    assert re.search(r"^\| proxy scheduling \| SCHED_BATCH \(`--batch`\)", text, re.M)
    assert re.search(r"^ip netns exec \$EDGE chrt -b 0 haproxy -db -f ", text, re.M)
    assert re.search(r"^ip netns exec \$EDGE chrt -b 0 \S*prism run -c ", text, re.M)
    assert read(ALLOWED) == allowed


def test_ab_rounds(tmp_path):
    """bench/ab.py, the A/B tool of docs/benchmarks.md's notes: two builds
    in alternating rounds of the rate scenario, one line per round, the
    medians, and the rounds each build won against the first."""
    other = tmp_path / "other-build"  # the same build under a second name
    other.symlink_to(BUILD.resolve())
    argv = ["/usr/bin/python3", str(REPO / "bench" / "ab.py"), "--rounds", "2", "--duration",
            "1", "--no-haproxy", str(BUILD), str(other)]
    allowed = read(ALLOWED)
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:]
    lines = cp.stdout.splitlines()
    assert sum(1 for x in lines if re.search(r" round [01]: \d+ conn/s, proxy ", x)) == 4, lines
    assert sum(1 for x in lines if re.search(r": median \d+ conn/s, ", x)) == 2, lines
    assert any(re.search(rf"^{re.escape(str(other))}: more conn/s than \S+ in [0-2] of 2 rounds$",
                         x) for x in lines), lines
    assert read(ALLOWED) == allowed


def test_ab_bulk_rounds(tmp_path):
    """bench/ab.py --bulk: the same alternation with iperf3 instead of the
    rate scenario, Gbit/s and CPU per GB per round and in the medians."""
    other = tmp_path / "other-build"
    other.symlink_to(BUILD.resolve())
    argv = ["/usr/bin/python3", str(REPO / "bench" / "ab.py"), "--rounds", "2", "--duration",
            "1", "--no-haproxy", "--bulk", "2", str(BUILD), str(other)]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:]
    lines = cp.stdout.splitlines()
    rx = r" round [01]: [\d.]+ Gbit/s, proxy [\d.]+ s/GB, machine [\d.]+ s/GB$"
    assert sum(1 for x in lines if re.search(rx, x)) == 4, lines
    assert sum(1 for x in lines if re.search(r": median [\d.]+ Gbit/s, ", x)) == 2, lines
    assert any(re.search(rf"^{re.escape(str(other))}: more Gbit/s than \S+ in [0-2] of 2 "
                         r"rounds$", x) for x in lines), lines


def test_unknown_congestion_control_is_refused(tmp_path):
    p, _, stderr, out, _, allowed = run_harness(tmp_path, "--cc", "no-such-cc")
    assert p.returncode != 0
    assert "bench: --cc no-such-cc: not in this kernel (it has " in stderr
    assert not out.exists()
    assert read(ALLOWED) == allowed


def children(pid):
    """Pids of the processes whose parent is <pid>."""
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cmdline(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def gone(pid):
    """True once <pid> has exited (a zombie counts as exited)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_killed_run_is_undone_by_the_next(tmp_path):
    """A run killed with SIGKILL cannot put back the congestion-control
    list it widened, delete its namespaces or stop the origin server it
    started: the next run does all three (reap_stale, from the list the
    killed run kept in CC_STATE). The host's list is narrowed first so
    that the run has to widen it."""
    was = read(ALLOWED)
    narrow = " ".join(a for a in was.split() if a != "cubic") or "reno"
    with open(ALLOWED, "w") as f:
        f.write(narrow)
    argv = ["/usr/bin/python3", str(REPO / "bench" / "run.py"), "--quick", "--only", "rt",
            "--build", str(BUILD), "--out", str(tmp_path / "b.md"),
            "--json", str(tmp_path / "b.json")]
    err = tmp_path / "killed.err"
    with open(err, "w") as f:
        killed = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f)
    state = bench_run.CC_STATE.format(pid=killed.pid)
    orphans = []
    try:
        # The list is widened at setup, before the origin server starts.
        deadline = time.monotonic() + 60
        while not ("cubic" in read(ALLOWED).split() and orphans):
            assert killed.poll() is None, ("the run ended before it was set up: exit "
                                           f"{killed.returncode}: {err.read_text()[-2000:]}")
            assert time.monotonic() < deadline, "the run never widened the list or started"
            time.sleep(0.05)
            orphans = [c for c in children(killed.pid) if "loadgen" in cmdline(c)]
        killed.kill()
        killed.wait(10)
        assert read(ALLOWED).split() == narrow.split() + ["cubic"]
        assert read(state) == narrow
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert re.search(rf"\bpbn{killed.pid}[ceon]\b", names), names
        assert not any(gone(o) for o in orphans), orphans

        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert read(ALLOWED) == narrow
        assert not os.path.exists(state)
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not re.search(rf"\bpbn{killed.pid}[ceon]\b", names), names
        assert all(gone(o) for o in orphans), orphans
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(10)
        for o in orphans:
            if not gone(o):
                os.kill(o, signal.SIGKILL)
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout.splitlines():
            if re.match(rf"pbn{killed.pid}[ceon]\b", line):
                subprocess.run(["ip", "netns", "del", line.split()[0]])
        if os.path.exists(state):
            os.unlink(state)
        with open(ALLOWED, "w") as f:
            f.write(was)

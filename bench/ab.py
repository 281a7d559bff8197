#!/usr/bin/python3
"""ab.py - A/B rounds of the rate scenario (or, with --bulk, of the bulk
one): several prism builds (and HAProxy) in alternating rounds, in
bench/run.py's topology.

  bench/ab.py [--rounds N] [--duration S] [--no-haproxy] [--cc CC] [--bulk STREAMS]
              [--batch] BUILD [BUILD ...]

Each BUILD is a build directory holding `prism`; the first one's `loadgen`
drives the load. Prints one line per round and the medians per target:
conn/s, the proxy's CPU µs per connection, packets per connection (edge
veths), the machine's busy µs per connection (/proc/stat), the origin
process's CPU µs per connection and the p99 connection latency, and for
each build the rounds in which its conn/s beat HAProxy's (or, with
--no-haproxy, the first build's). With --bulk, iperf3 with STREAMS streams
instead: Gbit/s, the proxy's and the machine's CPU seconds per GB, and the
rounds won on Gbit/s. This is how the A/B figures in docs/benchmarks.md's
notes were taken; `make bench` reports the same readings for the committed
build.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--cc", default=R.DEFAULT_CC, help="TCP congestion control (as run.py)")
    ap.add_argument("--bulk", type=int, default=0, metavar="STREAMS",
                    help="iperf3 with this many streams instead of the rate scenario")
    ap.add_argument("--batch", action="store_true",
                    help="run prism and HAProxy SCHED_BATCH (as run.py --batch)")
    ap.add_argument("builds", nargs="+")
    a = ap.parse_args()
    builds = [os.path.abspath(b) for b in a.builds]
    args = argparse.Namespace(quick=False, rounds=a.rounds, build=builds[0],
                              haproxy_splice="force", cc=a.cc, batch=a.batch)
    R.catch_stop_signals()
    b = R.Bench(args)
    b.t_rate = b.t_bulk = a.duration
    targets = ([] if a.no_haproxy else ["haproxy"]) + builds
    res = {t: [] for t in targets}
    b.reap_stale()
    try:
        b.setup()
        b.write_configs()
        org = b.start_iperf_server() if a.bulk else b.start_origin()
        for r in range(a.rounds):
            # Rounds change the order (run.py's round_order), and each
            # target starts with no TIME_WAIT sockets left by the others
            # (as run.py's rounds_of): a fixed order made the same build 9%
            # slower in the second slot than in the first.
            for t in R.round_order(targets, r):
                kind = "haproxy" if t == "haproxy" else "prism"
                if kind == "prism":
                    b.prism = os.path.join(t, "prism")
                b.flush_time_wait()
                p = b.start_target(kind)
                o0 = R.cpu_s(org.pid)  # the origin: loadgen, or iperf3 with --bulk
                try:
                    j = b.bulk_once(kind, a.bulk, p) if a.bulk else b.rate_once(kind, "prefix", p)
                finally:
                    b.stop_target(kind, p)
                res[t].append(j)
                if a.bulk:
                    print(f"{t} round {r}: {j['gbps']:.2f} Gbit/s, proxy {j['cpu_s_per_gb']:.3f} "
                          f"s/GB, machine {j['machine_s_per_gb']:.3f} s/GB", flush=True)
                    continue
                j["origin_us_per_conn"] = (R.cpu_s(org.pid) - o0) * 1e6 / j["conns"]
                print(f"{t} round {r}: {j['conn_per_s']:.0f} conn/s, "
                      f"proxy {j['cpu_us_per_conn']:.1f} µs/conn, "
                      f"{j['packets_per_conn']:.2f} packets/conn, "
                      f"machine {j['machine_us_per_conn']:.0f} µs/conn, "
                      f"p99 {j['lat_us']['p99']} µs", flush=True)
    except (R.Stop, KeyboardInterrupt) as e:
        print(f"ab: interrupted ({e or 'Ctrl-C'}), cleaning up", file=sys.stderr)
        return 130
    finally:
        R.ignore_stop_signals()
        errors = b.teardown()
        if errors:
            print("teardown: " + "; ".join(errors), file=sys.stderr)
    if a.bulk:
        report_bulk(res, targets)
        return
    for t, js in res.items():
        def med(*path):
            vals = []
            for j in js:
                v = j
                for k in path:
                    v = v[k]
                vals.append(v)
            return statistics.median(vals) if vals else float("nan")
        print(f"{t}: median {med('conn_per_s'):.0f} conn/s, proxy "
              f"{med('cpu_us_per_conn'):.1f} µs/conn, {med('packets_per_conn'):.2f} packets/conn, "
              f"machine {med('machine_us_per_conn'):.0f} µs/conn, origin "
              f"{med('origin_us_per_conn'):.1f} µs/conn, idle {med('machine_idle'):.2f}, "
              f"p99 {med('lat_us', 'p99'):.0f} µs")
    print_won(res, targets, "conn_per_s", "conn/s")


def print_won(res, targets, key, unit):
    """For each target after the first, the rounds in which its <key> beat
    the first target's."""
    ref = targets[0]
    for t in targets[1:]:
        won = R.ahead(res, (key,), True, a=t, b=ref)
        print(f"{t}: more {unit} than {ref} in {won or '0 of 0'} rounds")


def report_bulk(res, targets):
    for t, js in res.items():
        def med(key):
            return statistics.median(j[key] for j in js) if js else float("nan")
        print(f"{t}: median {med('gbps'):.2f} Gbit/s, proxy {med('cpu_s_per_gb'):.3f} s/GB, "
              f"machine {med('machine_s_per_gb'):.3f} s/GB")
    print_won(res, targets, "gbps", "Gbit/s")


if __name__ == "__main__":
    sys.exit(main())

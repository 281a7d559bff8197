"""test_net.py - `prism net up|down|show`: the AnyIP routes and the nft table.

Each test runs in a fresh network namespace of its own (conftest deletes it
even when the test fails) and compares the namespace's ruleset and
table-local routes before and after, so a leak or a taken-over operator
route shows up as a diff.
"""
import re
import shutil
import subprocess
import time

import pytest

import nstopo

PRISM = nstopo.prism_path()  # conftest's prism_bin fixture checks it exists
TIMEOUT = 30  # seconds for any one command

# Nested claims: a /32 inside a /24 with other ports, plus IPv6.
CFG_NESTED = """\
listen:
  address: 127.0.0.1
  address6: "::1"
  port: 15001
network:
  table: prism
apps:
  - name: wide
    edge: 198.18.5.0/24
    ports: "8000-8999"
    origins: 198.51.100.10
  - name: one
    edge: 198.18.5.10
    ports: 22
    origins: 198.51.100.11:22
  - name: six
    edge: ["2001:db8:5::/64"]
    ports: [443, "8000-8100"]
    origins: "[2001:db8::10]:443"
"""


def run(*args, check=True, **kw):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p


@pytest.fixture
def ns(netns, prism_bin):
    """A fresh namespace (conftest's factory: lo up, deleted afterwards)."""
    name = netns("net")
    # A real host has lo up (and the kernel refuses IPv6 routes via a down
    # device); table local then holds the kernel's own entries, which must
    # survive untouched. The kernel installs ::1's local route from a work
    # queue after the link comes up: wait for it, or it could appear
    # between a test's "before" and "after" snapshots.
    deadline = time.monotonic() + 10
    while "local ::1 " not in routes(name)[1]:
        assert time.monotonic() < deadline, "::1 never appeared on lo"
        time.sleep(0.01)
    return name


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "prism.yaml"
    path.write_text(CFG_NESTED)
    return path


def prism(ns, *args, pre=(), **kw):
    return run("ip", "netns", "exec", ns, *pre, str(PRISM), *args, check=False, **kw)


def ruleset(ns):
    return run("ip", "netns", "exec", ns, "nft", "list", "ruleset").stdout


def routes(ns):
    v4 = run("ip", "-n", ns, "route", "show", "table", "local").stdout
    v6 = run("ip", "-n", ns, "-6", "route", "show", "table", "local").stdout
    return v4, v6


def state(ns):
    return ruleset(ns), routes(ns)


def net(ns, verb, cfg_path):
    p = prism(ns, "net", verb, "-c", str(cfg_path))
    assert p.returncode == 0, f"net {verb} exited {p.returncode}: {p.stdout}{p.stderr}"
    return p


def in_set(ns, set_name, elem):
    """True when the point <elem> ("ADDR . PORT") is in the set: nft's get
    element looks a point up in an interval set, whatever its elements."""
    p = run("ip", "netns", "exec", ns, "nft", "get", "element", "inet", "prism", set_name,
            "{ " + elem + " }", check=False)
    return p.returncode == 0


def test_up_then_down_restores_everything(ns, cfg):
    before = state(ns)
    net(ns, "up", cfg)
    rs = ruleset(ns)
    v4, v6 = routes(ns)
    assert "table inet prism" in rs
    assert re.search(r"^local 198\.18\.5\.0/24 dev lo proto 249 scope host", v4, re.M), v4
    assert re.search(r"^local 198\.18\.5\.10 dev lo proto 249 scope host", v4, re.M), v4
    assert re.search(r"^local 2001:db8:5::/64 dev lo proto 249", v6, re.M), v6
    net(ns, "down", cfg)
    assert state(ns) == before
    # Down again: nothing there is no error and changes nothing.
    net(ns, "down", cfg)
    assert state(ns) == before


def test_operator_routes_survive_down(ns, cfg):
    # The same prefixes prism claims, plus an unrelated one, with the
    # default protocol: prism must keep them and must not take them over.
    run("ip", "-n", ns, "route", "add", "local", "198.18.5.0/24", "dev", "lo")
    run("ip", "-n", ns, "-6", "route", "add", "local", "2001:db8:5::/64", "dev", "lo")
    run("ip", "-n", ns, "route", "add", "local", "198.18.9.0/24", "dev", "lo")
    before = state(ns)
    net(ns, "up", cfg)
    v4, v6 = routes(ns)
    assert re.search(r"^local 198\.18\.5\.0/24 dev lo scope host", v4, re.M), v4
    assert re.search(r"^local 198\.18\.5\.10 dev lo proto 249", v4, re.M), v4
    assert not re.search(r"^local 2001:db8:5::/64 .*proto 249", v6, re.M), v6
    net(ns, "down", cfg)
    assert state(ns) == before


def test_up_twice_is_harmless(ns, cfg):
    net(ns, "up", cfg)
    first = state(ns)
    net(ns, "up", cfg)
    assert state(ns) == first
    net(ns, "down", cfg)


def test_show_prints_and_changes_nothing(ns, cfg):
    before = state(ns)
    p = net(ns, "show", cfg)
    assert state(ns) == before
    out = p.stdout
    for pfx in (r"198\.18\.5\.0/24", r"198\.18\.5\.10(/32)?", r"2001:db8:5::/64"):
        assert re.search(rf"^ip route add local {pfx} dev lo table local proto 249$", out,
                         re.M), out
    assert "table inet prism {" in out
    assert "tproxy ip to 127.0.0.1:15001" in out
    assert "tproxy ip6 to [::1]:15001" in out

    # The script it shows is the one `net up` loads: apply it by hand, then
    # compare with what `net up` installs.
    script = "".join(l + "\n" for l in out.splitlines() if not l.startswith("ip route "))
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)
    by_hand = ruleset(ns)
    net(ns, "down", cfg)
    assert state(ns) == before
    net(ns, "up", cfg)
    assert ruleset(ns) == by_hand
    net(ns, "down", cfg)


def test_nested_claims_loaded(ns, cfg):
    net(ns, "up", cfg)
    rs = ruleset(ns)
    assert re.search(r"ip daddr \. tcp dport @claims4 tproxy ip to 127\.0\.0\.1:15001", rs), rs
    assert re.search(r"ip6 daddr \. tcp dport @claims6 tproxy ip6 to \[::1\]:15001", rs), rs
    # The /32's port is its own element: nothing next to it shares port 22.
    assert "198.18.5.10 . 22" in rs, rs
    inside4 = ["198.18.5.0 . 8000", "198.18.5.255 . 8999", "198.18.5.10 . 22",
               "198.18.5.10 . 8500", "198.18.5.9 . 8000", "198.18.5.11 . 8999"]
    outside4 = ["198.18.5.11 . 22", "198.18.5.10 . 23", "198.18.5.10 . 21",
                "198.18.5.1 . 7999", "198.18.5.1 . 9000", "198.18.6.0 . 8000",
                "198.18.4.255 . 8000"]
    inside6 = ["2001:db8:5:: . 443", "2001:db8:5::ffff . 8100", "2001:db8:5:0:ffff:ffff:ffff:ffff . 8000"]
    outside6 = ["2001:db8:5::1 . 444", "2001:db8:5::1 . 8101", "2001:db8:6:: . 443"]
    for e in inside4:
        assert in_set(ns, "claims4", e), e
    for e in outside4:
        assert not in_set(ns, "claims4", e), e
    for e in inside6:
        assert in_set(ns, "claims6", e), e
    for e in outside6:
        assert not in_set(ns, "claims6", e), e
    net(ns, "down", cfg)


def test_up_without_cap_net_admin_fails(ns, cfg):
    if shutil.which("setpriv"):
        pre = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    elif shutil.which("capsh"):
        # capsh runs bash with what follows "--"; exec the real command.
        pre = ["capsh", "--user=nobody", "--", "-c", 'exec "$@"', "capsh"]
    else:
        pytest.skip("neither setpriv nor capsh available")
    before = state(ns)
    # pytest's tmp_path is private to root: hand the config over as an open
    # file descriptor, which the unprivileged process can read.
    with open(cfg) as f:
        fd = f.fileno()
        p = prism(ns, "net", "up", "-c", f"/dev/fd/{fd}", pre=pre, pass_fds=(fd,))
    assert p.returncode == 1, f"exit {p.returncode}: {p.stdout}{p.stderr}"
    assert "prism needs CAP_NET_ADMIN" in p.stderr, p.stderr
    assert state(ns) == before


def test_up_drops_routes_of_removed_prefixes(ns, cfg, tmp_path):
    # A second `net up` with a smaller config makes the routes match it:
    # a prefix that left the config must stop being local.
    before = state(ns)
    net(ns, "up", cfg)
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(CFG_NESTED.split("  - name: one")[0])
    net(ns, "up", smaller)
    v4, v6 = routes(ns)
    assert re.search(r"^local 198\.18\.5\.0/24 dev lo proto 249", v4, re.M), v4
    assert not re.search(r"^local 198\.18\.5\.10 ", v4, re.M), v4
    assert "2001:db8:5::" not in v6, v6
    assert not in_set(ns, "claims4", "198.18.5.10 . 22")
    assert in_set(ns, "claims4", "198.18.5.10 . 8000")
    net(ns, "down", smaller)
    assert state(ns) == before

"""test_net.py - `prism net up|down|show`: the AnyIP routes and the nft table.

Each test runs in a fresh network namespace of its own (conftest deletes it
even when the test fails) and compares the namespace's ruleset and
table-local routes before and after, so a leak or a taken-over operator
route shows up as a diff.
"""
import os
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


def in_tiers(ns, base, elem):
    """True when <elem> ("ADDR . PORT[ . SRC]") is in the point set <base>
    ("claims4", "appallow4", ...), which prism splits by shape over up to
    three nft sets with disjoint elements (netsetup_nft.c, claim_tier):
    BASE-all (addresses whose every port is in, without the port), BASE-point
    (single points, not for sets with sources) and BASE itself."""
    name, fam = base[:-1], base[-1]
    addr, port, *src = elem.split(" . ")
    return (port != "0" and in_set(ns, f"{name}all{fam}", " . ".join([addr, *src]))
            or in_set(ns, f"{name}point{fam}", elem) or in_set(ns, base, elem))


def set_elems(ns, set_name):
    """The elements of a set as nft lists them, one string each."""
    out = run("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "prism",
              set_name).stdout
    m = re.search(r"elements = \{(.*?)\}", out, re.S)
    return sorted(e.strip() for e in m.group(1).split(",")) if m else []


def test_up_then_down_restores_everything(ns, cfg):
    before = state(ns)
    net(ns, "up", cfg)
    rs = ruleset(ns)
    v4, v6 = routes(ns)
    assert "table inet prism" in rs
    assert re.search(r"^local 198\.18\.5\.0/24 dev lo proto 249 scope host", v4, re.M), v4
    # The /32 is inside the /24: no route of its own (test_routes_are_...).
    assert not re.search(r"^local 198\.18\.5\.10 ", v4, re.M), v4
    assert re.search(r"^local 2001:db8:5::/64 dev lo proto 249", v6, re.M), v6
    net(ns, "down", cfg)
    assert state(ns) == before
    # Down again: nothing there is no error and changes nothing.
    net(ns, "down", cfg)
    assert state(ns) == before


def test_table_name_may_start_with_underscore(ns, tmp_path):
    """What `prism check` accepts as network.table, net up, ban and net
    down take too (a leading _ passed the check and failed net up)."""
    path = tmp_path / "under.yaml"
    path.write_text(CFG_NESTED.replace("  table: prism\n", "  table: _edge\n"))
    before = state(ns)
    net(ns, "up", path)
    assert "table inet _edge" in ruleset(ns)
    assert ban(ns, path, "add", "192.0.2.77", "5m").returncode == 0
    assert "192.0.2.77 expires in" in ban_list(ns, path)
    net(ns, "down", path)
    assert state(ns) == before


FOREIGN_TABLE = """\
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 accept
\t}
}
"""


def test_foreign_table_is_left_alone(ns, tmp_path):
    """prism replaces and deletes its table whole, so a table of the same
    name that prism did not make (Debian's /etc/nftables.conf has table
    inet filter) is refused by net up and net down alike, and neither
    touches anything; prism's own table carries the mark."""
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=FOREIGN_TABLE)
    before = state(ns)
    why = ("nftables table inet filter was not made by prism (it lacks the comment "
           '"managed by prism"), and prism replaces or deletes its table whole')
    p = prism(ns, "net", "down", "-t", "filter")
    assert p.returncode == 1 and why in p.stderr, p.stderr
    path = tmp_path / "filter.yaml"
    path.write_text(CFG_NESTED.replace("  table: prism\n", "  table: filter\n"))
    p = prism(ns, "net", "up", "-c", str(path))
    assert p.returncode == 1 and why in p.stderr, p.stderr
    assert state(ns) == before
    # prism's own table says whose it is.
    own = tmp_path / "own.yaml"
    own.write_text(CFG_NESTED)
    net(ns, "up", own)
    listed = run("ip", "netns", "exec", ns, "nft", "-t", "list", "table", "inet", "prism").stdout
    assert '\n\tcomment "managed by prism"\n' in listed, listed
    net(ns, "down", own)
    assert state(ns) == before
    # prism's routes are prism's whoever owns the table of the name (here
    # one put in its place by hand): net down removes them, not the table.
    net(ns, "up", own)
    run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "prism")
    run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "prism")
    p = prism(ns, "net", "down", "-c", str(own))
    assert p.returncode == 1, p.stderr
    assert ("was not made by prism" in p.stderr and
            "(the table was left alone; prism's routes of it were removed)" in p.stderr), p.stderr
    assert "proto 249" not in "".join(routes(ns))
    run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "prism")
    assert state(ns) == before


# Adds table inet ARGV[1] with userdata ARGV[2] (hex) as it is, through
# raw netlink: nft only writes well-formed userdata.
RAW_TABLE = r"""
import socket, struct, sys
def attr(t, data):
    n = 4 + len(data)
    return struct.pack("HH", n, t) + data + bytes((4 - n % 4) % 4)
def msg(typ, flags, seq, family, resid, payload):
    body = struct.pack("BBH", family, 0, socket.htons(resid)) + payload
    return struct.pack("IHHII", 16 + len(body), typ, flags, seq, 0) + body
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
s.send(msg(0x10, 1, 1, 0, 10, b"")  # batch begin, nf_tables
       + msg(10 << 8, 1 | 4 | 0x400, 2, 1, 0,  # NEWTABLE inet, ack, create
             attr(1, sys.argv[1].encode() + b"\0") + attr(6, bytes.fromhex(sys.argv[2])))
       + msg(0x11, 1, 3, 0, 10, b""))  # batch end
while True:
    r = s.recv(65536)
    ln, typ, _, seq = struct.unpack("IHHI", r[:12])
    if typ == 2 and seq == 2:  # the table's ack
        sys.exit(-struct.unpack("i", r[16:20])[0])
"""


def test_table_with_malformed_userdata_is_foreign(ns):
    """Whose a table is comes from its comment, in userdata that any
    program may write: one whose only attribute claims 255 bytes in a
    buffer of 2 is read within its bounds (an ASan build catches a read
    past them) and is someone else's table."""
    run("ip", "netns", "exec", ns, "/usr/bin/python3", "-c", RAW_TABLE, "weird", "00ff")
    assert "table inet weird" in run("ip", "netns", "exec", ns, "nft", "list", "tables").stdout
    p = prism(ns, "net", "down", "-t", "weird")
    assert p.returncode == 1, p.stderr
    assert "nftables table inet weird was not made by prism" in p.stderr, p.stderr


def test_claim_held_by_another_process_is_named(ns, cfg):
    """prism claims its table through an abstract unix socket, whose name
    has no permissions: when another process holds it, the refusal names
    that process instead of blaming a running prism."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
         "import socket, sys\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
         "s.bind('\\0prism-table/prism')\n"
         "print('bound', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "bound\n"
        p = prism(ns, "net", "up", "-c", str(cfg))
        assert p.returncode == 1, p.stderr
        assert (f"table prism is in use by pid {holder.pid} (python3) in this network "
                "namespace") in p.stderr, p.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=TIMEOUT)


def test_table_of_an_older_prism_is_taken_down(ns, cfg):
    """A table loaded before tables carried the mark has prism's counter
    and chain names: net down still removes it."""
    before = state(ns)
    net(ns, "up", cfg)
    script = run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "prism").stdout
    script = script.replace('\tcomment "managed by prism"\n', "")
    run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "prism")
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)
    assert "managed by prism" not in ruleset(ns)
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
    # The operator's routes stay as they were; prism's (its protocol and
    # metric) go next to them, so they keep working without the operator's.
    assert re.search(r"^local 198\.18\.5\.0/24 dev lo scope host $", v4, re.M), v4
    assert re.search(r"^local 198\.18\.9\.0/24 dev lo scope host $", v4, re.M), v4
    assert re.search(r"^local 2001:db8:5::/64 dev lo metric 1024 ", v6, re.M), v6
    assert prism_routes(ns) == ["198.18.5.0/24", "2001:db8:5::/64"]
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
    for pfx in (r"198\.18\.5\.0/24", r"2001:db8:5::/64"):
        assert re.search(rf"^ip route add local {pfx} dev lo table local proto 249 metric "
                         r"\d+$", out, re.M), out
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
        assert in_tiers(ns, "claims4", e), e
    for e in outside4:
        assert not in_tiers(ns, "claims4", e), e
    for e in inside6:
        assert in_tiers(ns, "claims6", e), e
    for e in outside6:
        assert not in_tiers(ns, "claims6", e), e
    net(ns, "down", cfg)


# One app per shape of claim, and a /30 claimed as four apps of one address.
CFG_SHAPES = """\
listen: {address: 127.0.0.1, address6: "::1", port: 15001}
network: {table: prism}
protection: {allow: &q [203.0.113.0/24, 100.64.0.0/10]}
apps:
  - {name: whole, edge: 198.18.7.0/24, ports: "*", origins: 198.51.100.10,
     protection: {allow: [192.0.2.0/24]}}
  - {name: ssh, edge: 198.18.8.1, ports: 22, origins: "198.51.100.10:22"}
  - {name: web, edge: 198.18.8.0/24, ports: "8000-8999", origins: 198.51.100.10}
  - {name: q0, edge: 198.18.9.0, ports: "*", origins: 198.51.100.10, protection: {allow: *q}}
  - {name: q1, edge: 198.18.9.1, ports: "1-999", origins: 198.51.100.10,
     protection: {allow: [203.0.113.0/24, 100.64.0.0/10]}}
  - {name: q1b, edge: 198.18.9.1, ports: "1000-65535", origins: 198.51.100.10,
     protection: {allow: [203.0.113.0/24, 100.64.0.0/10]}}
  - {name: q2, edge: 198.18.9.2, ports: "*", origins: 198.51.100.10, protection: {allow: *q}}
  - {name: q3, edge: 198.18.9.3, ports: "*", origins: 198.51.100.10, protection: {allow: *q}}
  - {name: g0, edge: 198.18.10.0, ports: "7000-7999", origins: 198.51.100.10}
  - {name: g1, edge: 198.18.10.1, ports: "7000-7999", origins: 198.51.100.10}
  - {name: g2, edge: 198.18.10.2, ports: "7000-7999", origins: 198.51.100.10}
  - {name: g3, edge: 198.18.10.3, ports: "7000-7999", origins: 198.51.100.10}
  - {name: g5, edge: 198.18.10.5, ports: "7000-7999", origins: 198.51.100.10}
  - {name: six, edge: "2001:db8:7::/48", ports: "*", origins: "[2001:db8::10]"}
  - {name: six1, edge: "2001:db8:8::1", ports: 443, origins: "[2001:db8::10]"}
"""


def test_claims_split_by_shape(ns, tmp_path):
    """Whole addresses (every port) go into an address set with touching
    ranges merged, single (address, port) points into a hash set, and only
    the rest into the concatenated interval set, which the kernel searches
    in time linear in its elements (docs/benchmarks.md, "Many apps"). The
    guard chain matches all three, for tproxy and for the allow list."""
    path = tmp_path / "shapes.yaml"
    path.write_text(CFG_SHAPES)
    net(ns, "up", path)
    # Four apps of one address each, every port claimed (q1 in two
    # ranges), make one element; so do the served addresses.
    assert set_elems(ns, "claimsall4") == ["198.18.7.0/24", "198.18.9.0/30"]
    assert set_elems(ns, "claimspoint4") == ["198.18.8.1 . 22"]
    # Addresses in a row with the same port range merge as well (g0-g3);
    # g5 does not follow on.
    ranges = set_elems(ns, "claims4")
    assert "198.18.10.0/30 . 7000-7999" in ranges and "198.18.10.5 . 7000-7999" in ranges, ranges
    web = [e for e in ranges if not e.endswith(". 7000-7999")]
    assert web and all(e.endswith(". 8000-8999") for e in web), ranges
    assert len(ranges) == len(web) + 2, ranges
    assert set_elems(ns, "served4") == ["198.18.10.0/30", "198.18.10.5",
                                        "198.18.7.0-198.18.9.3"]
    assert set_elems(ns, "claimsall6") == ["2001:db8:7::/48"]
    assert set_elems(ns, "claimspoint6") == ["2001:db8:8::1 . 443"]
    assert set_elems(ns, "claims6") == []
    # The apps' own lists split the same way; runs of addresses whose apps
    # have equal lists merge (q1 and q1b list theirs separately).
    assert set_elems(ns, "appallowdstall4") == ["198.18.7.0/24", "198.18.9.0/30"]
    assert set_elems(ns, "appallowall4") == [
        "198.18.7.0/24 . 192.0.2.0/24", "198.18.9.0/30 . 100.64.0.0/10",
        "198.18.9.0/30 . 203.0.113.0/24"]
    assert set_elems(ns, "appallowdst4") == set_elems(ns, "appallow4") == []
    for e in ("198.18.7.9 . 1", "198.18.7.9 . 65535", "198.18.8.1 . 22", "198.18.8.1 . 8000",
              "198.18.8.200 . 8999", "198.18.9.1 . 999", "198.18.9.3 . 40000"):
        assert in_tiers(ns, "claims4", e), e
    for e in ("198.18.7.9 . 0", "198.18.8.1 . 23", "198.18.8.2 . 22", "198.18.8.200 . 9000",
              "198.18.9.4 . 1", "198.18.6.255 . 80"):
        assert not in_tiers(ns, "claims4", e), e
    assert in_tiers(ns, "claims6", "2001:db8:7:ffff::1 . 7") and in_tiers(ns, "claims6", "2001:db8:8::1 . 443")
    assert not in_tiers(ns, "claims6", "2001:db8:8::1 . 444")
    g = run("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "prism", "guard").stdout
    for fam, ip, to in (("4", "ip", r"ip to 127\.0\.0\.1:15001"),
                        ("6", "ip6", r"ip6 to \[::1\]:15001")):
        for match in (rf"{ip} daddr @claimsall{fam} tcp dport != 0",
                      rf"{ip} daddr \. tcp dport @claimspoint{fam}",
                      rf"{ip} daddr \. tcp dport @claims{fam}"):
            assert re.search(rf"{match} tproxy {to} accept", g), (match, g)
            assert re.search(rf"{ip} saddr != @allow{fam} {match} (\S+ )*counter name "
                             r'"not_allowed" drop', g), (match, g)
    assert re.search(r"ip daddr @appallowdstall4 tcp dport != 0 ip daddr \. ip saddr != "
                     r'@appallowall4 counter name "app_not_allowed" drop', g), g
    assert re.search(r"ip saddr != @allow4 ip daddr \. tcp dport @claims4 ip daddr != "
                     r"@appallowownall4 counter", g), g
    net(ns, "down", path)


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


# 256 one-address apps side by side, two that touch but do not align, two
# halves of a /30 and of an IPv6 /64, and a /32 inside a /24.
CFG_ROUTES = ("listen: {address: 127.0.0.1, address6: \"::1\", port: 15001}\napps:\n"
              + "".join(f"  - {{name: a{i}, edge: 198.18.7.{i}, ports: 80, origins: 198.51.100.10}}\n"
                        for i in range(256))
              + "".join(f"  - {{name: {n}, edge: \"{e}\", ports: 80, origins: 198.51.100.10}}\n"
                        for n, e in (("b1", "198.18.8.1"), ("b2", "198.18.8.2"),
                                     ("c1", "198.18.8.4/31"), ("c2", "198.18.8.6/31"),
                                     ("wide", "198.18.5.0/24"), ("one", "198.18.5.10"),
                                     ("s1", "2001:db8:5::/65"), ("s2", "2001:db8:5:0:8000::/65"))))


def prism_routes(ns):
    v4, v6 = routes(ns)
    return sorted(re.findall(r"^local (\S+) dev lo proto 249 ", v4 + v6, re.M))


def is_local(ns, addr):
    p = run("ip", "-n", ns, "route", "get", addr, check=False)
    return p.returncode == 0 and p.stdout.startswith("local ")


def test_routes_are_the_fewest_prefixes(ns, tmp_path):
    # The routes make exactly the edges local, with as few prefixes as
    # that takes: nested ones need none, touching ones merge into the
    # largest aligned blocks (65,536 one-address apps of a /16: one route).
    before = state(ns)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(CFG_ROUTES)
    want = ["198.18.5.0/24", "198.18.7.0/24", "198.18.8.1", "198.18.8.2", "198.18.8.4/30",
            "2001:db8:5::/64"]
    shown = re.findall(r"^ip route add local (\S+) dev lo table local proto 249 metric \d+$",
                       net(ns, "show", cfg).stdout, re.M)
    assert sorted(x.removesuffix("/32") for x in shown) == want, shown
    net(ns, "up", cfg)
    assert prism_routes(ns) == want
    for addr in ("198.18.7.0", "198.18.7.200", "198.18.8.2", "198.18.8.7", "198.18.5.10"):
        assert is_local(ns, addr), addr
    for addr in ("198.18.8.0", "198.18.8.3", "198.18.8.8", "198.18.6.255"):
        assert not is_local(ns, addr), addr
    # Half of the 256 leave the config: their half of the /24 stops being
    # local, the rest keeps a route.
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(CFG_ROUTES.split("  - {name: a128,")[0])
    net(ns, "up", smaller)
    assert prism_routes(ns) == ["198.18.7.0/25"]
    assert is_local(ns, "198.18.7.127") and not is_local(ns, "198.18.7.128")
    net(ns, "down", smaller)
    assert state(ns) == before



def shown_set(script, name):
    """The elements of set <name> in a `net show` script."""
    m = re.search(rf"\tset {name} {{\n(.*?)\n\t}}", script, re.S)
    assert m, name
    e = re.search(r"elements = \{(.*?)\}", m.group(1), re.S)
    return sorted(x.strip() for x in e.group(1).split(",")) if e else []


def test_port_runs_merge_across_addresses(prism_bin, tmp_path):
    """Apps side by side with several port runs each merge into one element
    per port run (a pipapo set costs per element on every SYN): 3 elements
    for 10 /24s with ports 22, 80 and 443, not one per /24 for 80 and 443;
    1 for the 8000-8999 of 256 one-address apps with 80, 443 and
    8000-8999, not 256 (their single ports are points, in a hash set)."""
    cases = [
        ("".join(f"  - {{name: a{i}, edge: 10.0.{i}.0/24, ports: [22, 80, 443], "
                 f"origins: 198.51.100.10}}\n" for i in range(10)),
         ["10.0.0.0-10.0.9.255 . 22", "10.0.0.0-10.0.9.255 . 443",
          "10.0.0.0-10.0.9.255 . 80"]),
        ("".join(f"  - {{name: b{i}, edge: 10.1.0.{i}, ports: [80, 443, \"8000-8999\"], "
                 f"origins: 198.51.100.10}}\n" for i in range(256)),
         ["10.1.0.0/24 . 8000-8999"]),
    ]
    for apps, want in cases:
        path = tmp_path / "runs.yaml"
        path.write_text("listen: {address: 127.0.0.1, address6: \"off\", port: 15001}\n"
                        "apps:\n" + apps)
        out = run(str(PRISM), "net", "show", "-c", str(path)).stdout
        assert shown_set(out, "claims4") == want, out

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


# A second instance's own table and prefixes.
CFG_OTHER = """\
listen: {address: 127.0.0.1, address6: "::1", port: 15002}
network: {table: other}
apps:
  - {name: o4, edge: 198.18.6.0/24, ports: 80, origins: 198.51.100.10}
  - {name: o6, edge: "2001:db8:6::/64", ports: 80, origins: "[2001:db8::10]:80"}
"""


def test_instances_keep_each_others_routes(ns, cfg, tmp_path):
    """Routes carry the metric of their nft table's name, so a second
    instance's `net up` and `net down` leave the first one's routes alone
    (they used to prune every proto 249 route outside their own config)."""
    before = state(ns)
    other = tmp_path / "other.yaml"
    other.write_text(CFG_OTHER)
    net(ns, "up", cfg)
    mine = prism_routes(ns)
    assert mine == ["198.18.5.0/24", "2001:db8:5::/64"]
    net(ns, "up", other)
    assert prism_routes(ns) == sorted(mine + ["198.18.6.0/24", "2001:db8:6::/64"])
    metrics = set(re.findall(r"proto 249 .*metric (\d+)", "".join(routes(ns))))
    assert len(metrics) == 2, routes(ns)
    net(ns, "down", other)
    assert prism_routes(ns) == mine
    assert is_local(ns, "198.18.5.1") and not is_local(ns, "198.18.6.1")
    assert "table inet prism" in ruleset(ns) and "table inet other" not in ruleset(ns)
    net(ns, "down", cfg)
    assert state(ns) == before


def test_down_by_table_name_needs_no_config(ns, cfg, tmp_path):
    """`net down -t NAME` cleans up when the config is gone or no longer
    loads (after a crash, or a bad edit): the table's name is all it needs,
    and another instance's table and routes stay."""
    before = state(ns)
    other = tmp_path / "other.yaml"
    other.write_text(CFG_OTHER)
    net(ns, "up", cfg)
    net(ns, "up", other)
    cfg.write_text("apps: [\n")  # broken now: -c cannot take it down
    assert prism(ns, "net", "down", "-c", str(cfg)).returncode == 2
    p = prism(ns, "net", "down", "-t", "prism")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert prism_routes(ns) == ["198.18.6.0/24", "2001:db8:6::/64"]
    assert "table inet prism" not in ruleset(ns) and "table inet other" in ruleset(ns)
    p = prism(ns, "net", "down", "--table", "other")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert state(ns) == before
    # Again: nothing there is no error, but it is said (a mistyped name).
    p = prism(ns, "net", "down", "-t", "other")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ("prism net down: nothing to remove: no nftables table inet other and "
                        "no routes of it in this network namespace\n"), p.stderr
    for args, msg in ((("-t", "1bad"), 'invalid nftables table name "1bad"'),
                      # What a config may not name its table, net down does
                      # not take either.
                      (("-t", "counter"), 'invalid nftables table name "counter" (a keyword'),
                      (("-t", "a" * 32), "then up to 30 letters"),
                      (("-t", "a-b"), 'invalid nftables table name "a-b"'),
                      ((), "missing -c FILE or -t NAME"),
                      (("-t", "a", "-c", str(other)), "not both")):
        p = prism(ns, "net", "down", *args)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
    p = prism(ns, "net", "up", "-t", "prism")
    assert p.returncode == 2 and "for net down only" in p.stderr, p.stderr
    assert state(ns) == before


def test_routes_from_before_metrics_are_replaced(ns, cfg):
    """proto 249 routes with the default metric are what prism installed
    before routes had one: `net up` replaces them (kept prefixes get the
    metric, others go) and `net down` removes any left."""
    before = state(ns)
    run("ip", "-n", ns, "route", "add", "local", "198.18.5.0/24", "dev", "lo", "table",
        "local", "proto", "249")
    run("ip", "-n", ns, "-6", "route", "add", "local", "2001:db8:4::/64", "dev", "lo",
        "table", "local", "proto", "249")
    net(ns, "up", cfg)
    v4, v6 = routes(ns)
    assert prism_routes(ns) == ["198.18.5.0/24", "2001:db8:5::/64"]
    assert len(re.findall(r"proto 249", v4 + v6)) == 2, (v4, v6)
    assert "2001:db8:4::" not in v6, v6
    net(ns, "down", cfg)
    assert state(ns) == before
    # Down alone removes them too.
    run("ip", "-n", ns, "route", "add", "local", "198.18.5.0/24", "dev", "lo", "table",
        "local", "proto", "249")
    net(ns, "down", cfg)
    assert state(ns) == before

@pytest.fixture
def ns_dns_down(ns):
    """<ns> whose resolver is 127.0.0.1 there, where nothing answers (ip
    netns exec bind-mounts /etc/netns/NS/resolv.conf): every lookup of a
    name fails, and no query leaves the namespace."""
    etc = f"/etc/netns/{ns}"
    made_parent = not os.path.isdir("/etc/netns")
    os.makedirs(etc)
    try:
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        with open(f"{etc}/hosts", "w") as f:
            f.write("127.0.0.1 localhost\n")
        yield ns
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        if made_parent:
            try:
                os.rmdir("/etc/netns")  # only if nobody else put anything there
            except OSError:
                pass


def test_down_and_ban_do_not_resolve_names(ns_dns_down, tmp_path):
    """`net down` and `ban` need the table, not the origins: they must not
    wait for DNS, which may be what is down when cleaning up."""
    ns = ns_dns_down
    path = tmp_path / "named.yaml"
    path.write_text(CFG_NESTED.replace("origins: 198.51.100.10\n", "origins: origin.test:80\n"))
    before = state(ns)
    # The lookup fails here, and a command that resolves says so.
    assert "origin origin.test does not resolve" in net(ns, "up", path).stderr
    for args in (("ban", "add", "192.0.2.77", "5m"), ("ban", "list"),
                 ("ban", "del", "192.0.2.77"), ("net", "down")):
        p = prism(ns, *args, "-c", str(path))
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        assert "resolve" not in p.stderr, (args, p.stderr)
    assert state(ns) == before

# ---- DDoS protection: the guard chain, its sets and counters ---------------

# Every protection key that lands in nftables. "wide" sets its own deny
# list (the global one no longer applies to it), "one" its own allow list
# and owns port 8500 inside wide's range (longest prefix), "open" opts out
# of the global allow list with an empty one.
CFG_GUARD = """\
listen:
  address: 127.0.0.1
  address6: "::1"
  port: 15001
network:
  table: prism
protection:
  unserved: reject
  deny: [203.0.113.0/24, "2001:db8:bad::/48"]
  allow: [198.18.0.0/15, 192.0.2.0/24, "2001:db8::/32"]
  syn_rate_per_source: 50/s
apps:
  - name: wide
    edge: 198.18.5.0/24
    ports: "8000-8999"
    origins: 198.51.100.10
    protection:
      deny: [192.0.2.66]
  - name: one
    edge: 198.18.5.10
    ports: [22, 8500]
    origins: 198.51.100.11:22
    protection:
      allow: [192.0.2.0/28, 192.0.2.64/26]
  - name: open
    edge: 198.18.6.0/24
    ports: 80
    origins: 198.51.100.12
    protection:
      allow: []
  - name: six
    edge: ["2001:db8:5::/64"]
    ports: [443, "8000-8100"]
    origins: "[2001:db8::10]:443"
    protection:
      deny: ["2001:db8:bad:1::/64"]
"""

COUNTERS = ["banned", "app_denied", "app_not_allowed", "denied", "not_allowed",
            "syn_flood", "unserved"]


def guard_chain(ns):
    return run("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "prism",
               "guard").stdout


def rule_index(chain, pattern):
    """Line number of the first rule of <chain> matching <pattern>."""
    for i, line in enumerate(chain.splitlines()):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no rule matches {pattern!r} in:\n{chain}")


def test_guard_loads_every_protection(ns, tmp_path):
    path = tmp_path / "guard.yaml"
    path.write_text(CFG_GUARD)
    before = state(ns)
    net(ns, "up", path)

    # Only traffic to the served prefixes is guarded.
    pre = run("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "prism",
              "prerouting").stdout
    assert "ip daddr @served4 jump guard" in pre, pre
    assert "ip6 daddr @served6 jump guard" in pre, pre
    for e in ("198.18.5.77", "198.18.6.1"):
        assert in_set(ns, "served4", e), e
    assert not in_set(ns, "served4", "198.18.7.1")
    assert in_set(ns, "served6", "2001:db8:5::1")

    # Every reason to drop has its named counter.
    counters = run("ip", "netns", "exec", ns, "nft", "list", "counters", "table", "inet",
                   "prism").stdout
    for c in COUNTERS:
        assert re.search(rf"counter {c} {{", counters), (c, counters)

    # The rules, in the order the packet meets them.
    g = guard_chain(ns)
    order = [r'ip saddr @ban4 counter name "banned" drop',
             r'ip6 saddr & ffff:ffff:ffff:ffff:: == @ban6 counter name "banned" drop',
             r'tcp flags ! syn socket transparent 1 accept',
             r'icmpv6 type \{.*packet-too-big.*\} accept',
             r'meta l4proto != tcp counter name "unserved" drop',
             r'ip daddr \. tcp dport \. ip saddr @appdeny4 counter name "app_denied" drop',
             r'ip daddr \. tcp dport @appallowdstpoint4 ip daddr \. tcp dport \. ip saddr != '
             r'@appallow4 counter name "app_not_allowed" drop',
             r'ip saddr @deny4 ip daddr \. tcp dport != @appdenyown4 counter name "denied" '
             r'drop',
             r'ip saddr != @allow4 ip daddr \. tcp dport @claimspoint4 ip daddr \. tcp dport '
             r'!= @appallowownpoint4 ip daddr \. tcp dport != @appallowown4 counter name '
             r'"not_allowed" drop',
             r'ip saddr != @allow4 ip daddr \. tcp dport @claims4 ip daddr \. tcp dport != '
             r'@appallowownpoint4 ip daddr \. tcp dport != @appallowown4 counter name '
             r'"not_allowed" drop',
             r'update @synrate4 \{ ip saddr limit rate over 50/second burst 50 packets \} '
             r'counter name "syn_flood" drop',
             r'update @synrate6 \{ ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over '
             r'50/second',
             r'ip daddr \. tcp dport @claims4 tproxy ip to 127\.0\.0\.1:15001 accept',
             r'ip6 daddr \. tcp dport @claims6 tproxy ip6 to \[::1\]:15001 accept',
             r'socket transparent 0 accept',
             r'^\s*meta l4proto tcp counter name "unserved" reject with tcp reset$']
    idx = [rule_index(g, p) for p in order]
    assert idx == sorted(idx), g
    assert "syn / fin,syn,rst,ack" in g, g  # a bare SYN, no conntrack
    assert not re.search(r'^\s*counter name "unserved" drop', g, re.M), g

    # The meter forgets a source a minute after its last SYN.
    syn = run("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "prism",
              "synrate4").stdout
    assert "flags dynamic,timeout" in syn and "timeout 1m" in syn, syn

    # Global lists.
    assert in_set(ns, "deny4", "203.0.113.9")
    assert not in_set(ns, "deny4", "192.0.2.66")
    assert in_set(ns, "allow4", "192.0.2.200")
    assert in_set(ns, "deny6", "2001:db8:bad:ffff::1")

    # wide's own deny list covers exactly the points wide owns: not port
    # 22 or 8500 of 198.18.5.10, which belong to "one".
    assert in_tiers(ns, "appdeny4", "198.18.5.200 . 8000 . 192.0.2.66")
    assert in_tiers(ns, "appdeny4", "198.18.5.10 . 8501 . 192.0.2.66")
    assert not in_tiers(ns, "appdeny4", "198.18.5.10 . 8500 . 192.0.2.66")
    assert not in_tiers(ns, "appdeny4", "198.18.5.10 . 22 . 192.0.2.66")
    assert not in_tiers(ns, "appdeny4", "198.18.5.200 . 8000 . 192.0.2.67")
    assert in_tiers(ns, "appdenyown4", "198.18.5.200 . 8999")
    assert not in_tiers(ns, "appdenyown4", "198.18.5.10 . 8500")
    assert not in_tiers(ns, "appdenyown4", "198.18.6.1 . 80")
    assert in_tiers(ns, "appdeny6", "2001:db8:5::1 . 443 . 2001:db8:bad:1::9")
    assert not in_tiers(ns, "appdeny6", "2001:db8:5::1 . 443 . 2001:db8:bad:2::9")

    # one's allow list: enforced on its points only.
    assert in_tiers(ns, "appallowdst4", "198.18.5.10 . 22")
    assert in_tiers(ns, "appallowdst4", "198.18.5.10 . 8500")
    assert not in_tiers(ns, "appallowdst4", "198.18.5.10 . 8501")
    assert not in_tiers(ns, "appallowdst4", "198.18.6.1 . 80")
    assert in_tiers(ns, "appallow4", "198.18.5.10 . 22 . 192.0.2.5")
    assert in_tiers(ns, "appallow4", "198.18.5.10 . 8500 . 192.0.2.100")
    assert not in_tiers(ns, "appallow4", "198.18.5.10 . 22 . 192.0.2.20")
    # open's empty list: skips the global allow list, enforces nothing.
    assert in_tiers(ns, "appallowown4", "198.18.6.1 . 80")
    assert in_tiers(ns, "appallowown4", "198.18.5.10 . 22")
    assert not in_tiers(ns, "appallowown4", "198.18.5.1 . 8000")

    net(ns, "down", path)
    assert state(ns) == before


def test_default_protection_drops_unserved(ns, cfg):
    net(ns, "up", cfg)
    g = guard_chain(ns)
    # Off by default: no list, meter or per-app rule, nothing rejected.
    for word in ("@deny4", "@allow4", "@appdeny4", "@appallowdst4", "synrate", "reject"):
        assert word not in g, (word, g)
    assert re.search(r'^\s*ip saddr @ban4 counter name "banned" drop$', g, re.M), g
    assert re.search(r'socket wildcard 1 counter name "unserved" drop', g), g
    assert re.search(r'^\s*counter name "unserved" drop$', g, re.M), g
    # The lines after the last tproxy rule: the host's own sockets pass,
    # the rest is unserved.
    tail = g.split("tproxy ip6")[1].splitlines()[1:4]
    assert [t.strip() for t in tail] == [
        'socket wildcard 1 counter name "unserved" drop',
        "socket transparent 0 accept",
        'counter name "unserved" drop'], g
    net(ns, "down", cfg)


def test_bans_survive_net_up(ns, cfg):
    # Replacing the table keeps the bans in force, with what is left of
    # their time. IPv6 bans are /64s (the rule matches the source masked
    # to its /64): single addresses that a table from before holds are
    # put back as their /64, the longest ban of a /64 kept.
    net(ns, "up", cfg)
    run("ip", "netns", "exec", ns, "nft", "add", "element", "inet", "prism", "ban4",
        "{ 192.0.2.44 timeout 1h }")
    run("ip", "netns", "exec", ns, "nft", "add", "element", "inet", "prism", "ban6",
        "{ 2001:db8::44 timeout 10m, 2001:db8::45 timeout 20m, 2001:db8:1:: timeout 5m }")
    net(ns, "up", cfg)
    b4 = run("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "prism", "ban4").stdout
    b6 = run("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "prism", "ban6").stdout
    assert re.search(r"192\.0\.2\.44 timeout (59m5\d|1h)", b4), b4
    elems = re.findall(r"(2001:db8:[0-9a-f:]*) timeout (\S+) expires", b6)
    assert [a for a, _ in elems] == ["2001:db8::", "2001:db8:1::"], b6
    assert re.fullmatch(r"19m5\ds|20m", elems[0][1]) and re.fullmatch(r"4m5\ds|5m", elems[1][1]), b6
    listed = prism(ns, "ban", "list", "-c", str(cfg)).stdout
    assert re.search(r"^2001:db8::/64 expires in 1[12]\d\ds$", listed, re.M), listed
    net(ns, "down", cfg)


def sysctl(ns, name, value=None):
    path = "/proc/sys/" + name.replace(".", "/")
    if value is None:
        return run("ip", "netns", "exec", ns, "cat", path).stdout.strip()
    run("ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}")
    return None


def test_up_turns_on_syn_cookies(ns, cfg):
    sysctl(ns, "net.ipv4.tcp_syncookies", 0)
    sysctl(ns, "net.core.somaxconn", 128)
    p = net(ns, "up", cfg)
    assert sysctl(ns, "net.ipv4.tcp_syncookies") == "1"
    assert re.search(r" warn net\.core\.somaxconn is 128", p.stderr), p.stderr
    net(ns, "down", cfg)


def test_up_warns_of_host_addresses_in_edges(ns, cfg):
    """A host address inside an edge prefix stops serving wildcard
    listeners (sshd on 0.0.0.0:22) on its unserved ports: net up names each
    such address, its device, the edge and the app, and no other address."""
    run("ip", "-n", ns, "link", "add", "h0", "type", "veth", "peer", "name", "h1")
    run("ip", "-n", ns, "addr", "add", "198.18.5.20/24", "dev", "h0")
    run("ip", "-n", ns, "addr", "add", "2001:db8:5::20/64", "dev", "h0", "nodad")
    run("ip", "-n", ns, "addr", "add", "198.51.100.1/24", "dev", "h0")
    p = net(ns, "up", cfg)
    warned = re.findall(r" warn (\S+) \(on (\S+)\) is an address of this host inside edge "
                        r"(\S+) of app (\S+): ", p.stderr)
    assert sorted(warned) == [("198.18.5.20", "h0", "198.18.5.0/24", "wide"),
                              ("2001:db8:5::20", "h0", "2001:db8:5::/64", "six")], p.stderr
    net(ns, "down", cfg)


def test_up_leaves_sysctls_when_told(ns, tmp_path):
    path = tmp_path / "nosysctl.yaml"
    path.write_text(CFG_NESTED.replace("  table: prism\n", "  table: prism\n  sysctls: false\n"))
    sysctl(ns, "net.ipv4.tcp_syncookies", 0)
    p = net(ns, "up", path)
    assert sysctl(ns, "net.ipv4.tcp_syncookies") == "0"
    assert re.search(r" warn SYN cookies are off", p.stderr), p.stderr
    # 2 (cookies always) is the operator's choice: prism neither warns
    # nor touches it.
    sysctl(ns, "net.ipv4.tcp_syncookies", 2)
    default = tmp_path / "default.yaml"
    default.write_text(CFG_NESTED)
    p = net(ns, "up", default)
    assert sysctl(ns, "net.ipv4.tcp_syncookies") == "2"
    assert "SYN cookies" not in p.stderr, p.stderr
    net(ns, "down", default)


# ---- prism ban list|add|del ------------------------------------------------

def ban(ns, cfg_path, *args):
    return prism(ns, "ban", *args, "-c", str(cfg_path))


def ban_list(ns, cfg_path):
    p = ban(ns, cfg_path, "list")
    assert p.returncode == 0, f"ban list exited {p.returncode}: {p.stdout}{p.stderr}"
    return p.stdout


def test_ban_add_list_del(ns, cfg):
    net(ns, "up", cfg)
    # An IPv6 address bans its /64, listed as such.
    for addr, listed, dur, secs in (("192.0.2.77", "192.0.2.77", "5m", 300),
                                    ("2001:db8::77", "2001:db8::/64", "90s", 90)):
        p = ban(ns, cfg, "add", addr, dur)
        assert p.returncode == 0, p.stdout + p.stderr
        m = re.search(rf"^{re.escape(listed)} expires in (\d+)s$", ban_list(ns, cfg), re.M)
        assert m, ban_list(ns, cfg)
        assert secs - 10 <= int(m.group(1)) <= secs
    # In the kernel set, with its timeout.
    b4 = run("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "prism", "ban4").stdout
    assert re.search(r"192\.0\.2\.77 timeout 5m expires", b4), b4
    # Adding again refreshes the timeout.
    assert ban(ns, cfg, "add", "192.0.2.77", "1h").returncode == 0
    assert re.search(r"^192\.0\.2\.77 expires in 3[56]\d\ds$", ban_list(ns, cfg), re.M)

    # Any address of the /64 lifts its ban.
    for addr, listed in (("192.0.2.77", "192.0.2.77"), ("2001:db8::1", "2001:db8::/64")):
        p = ban(ns, cfg, "del", addr)
        assert p.returncode == 0, p.stdout + p.stderr
        assert listed not in ban_list(ns, cfg)
    p = ban(ns, cfg, "del", "192.0.2.77")
    assert p.returncode == 1 and "192.0.2.77 is not banned" in p.stderr, p.stdout + p.stderr
    # As `ban list` prints it: an IPv6 /64 (but nothing wider than one
    # source).
    assert ban(ns, cfg, "add", "2001:db8:9::5").returncode == 0
    for wide in ("2001:db8:9::/48", "192.0.2.0/24"):
        p = ban(ns, cfg, "del", wide)
        assert p.returncode == 2 and f"{wide} is more than one source" in p.stderr, p.stderr
    p = ban(ns, cfg, "del", "2001:db8:9::/64")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2001:db8:9::" not in ban_list(ns, cfg)
    # A list that cannot be written is an error.
    with open("/dev/full", "w") as full:
        assert ban(ns, cfg, "add", "192.0.2.80").returncode == 0
        p = subprocess.run(["ip", "netns", "exec", ns, str(PRISM), "ban", "list", "-c",
                            str(cfg)], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=TIMEOUT)
    assert p.returncode == 1 and "cannot write the list" in p.stderr, p.stderr
    net(ns, "down", cfg)


def test_ban_list_shows_each_element_once(ns, cfg):
    """`ban list` reads the elements themselves, whatever else an operator
    put on them: it used to parse nft's text, where an element's comment
    with a comma in it ("abuse, ticket 7") became a ban of its own ("ticket
    never expires")."""
    net(ns, "up", cfg)
    run("ip", "netns", "exec", ns, "nft", "add", "element", "inet", "prism", "ban4",
        '{ 192.0.2.9 timeout 1h comment "abuse, ticket 7", 192.0.2.10 }')
    run("ip", "netns", "exec", ns, "nft", "add", "element", "inet", "prism", "ban6",
        '{ 2001:db8:7:: timeout 2m comment "scan, 2001:db8:8::" }')
    # In address order, IPv4 first, as nft lists them.
    lines = ban_list(ns, cfg).splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"192\.0\.2\.9 expires in 3[56]\d\ds", lines[0]), lines
    assert lines[1] == "192.0.2.10 never expires", lines
    assert re.fullmatch(r"2001:db8:7::/64 expires in 1[12]\ds", lines[2]), lines
    net(ns, "down", cfg)


def test_full_ban_set_says_so(ns, cfg):
    """The kernel refuses an element past the set's size with ENFILE ("Too
    many open files in system"), which is no fd shortage: say the set is
    full."""
    net(ns, "up", cfg)
    elems = ", ".join(f"198.18.{i >> 8}.{i & 255}" for i in range(65536))
    run("ip", "netns", "exec", ns, "nft", "-f", "-",
        input=f"add element inet prism ban4 {{ {elems} }}\n")
    p = ban(ns, cfg, "add", "192.0.2.81", "5m")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "cannot ban 192.0.2.81: the set ban4 of table prism is full" in p.stderr, p.stderr
    net(ns, "down", cfg)


def test_ban_expires_by_itself(ns, cfg):
    net(ns, "up", cfg)
    p = ban(ns, cfg, "add", "192.0.2.78", "3s")
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"^192\.0\.2\.78 expires in [123]s$", ban_list(ns, cfg), re.M)
    # The kernel drops the element; poll its state, at most 8 s.
    deadline = time.monotonic() + 8
    while "192.0.2.78" in ban_list(ns, cfg):
        assert time.monotonic() < deadline, "the 3s ban is still there after 8s"
        time.sleep(0.1)
    net(ns, "down", cfg)


def test_ban_without_table_says_so(ns, cfg):
    for args in (("list",), ("add", "192.0.2.79"), ("del", "192.0.2.79")):
        p = ban(ns, cfg, *args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert "prism's table prism is not loaded" in p.stderr, (args, p.stderr)

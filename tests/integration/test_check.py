"""test_check.py - `prism check -c FILE` against the config corpus.

tests/configs/bad/*.yaml each start with one or more lines
`# expect: LINE:COL: substring`; prism must exit 2 and print, for each,
a line on stderr containing `FILE:LINE:COL: substring`.
tests/configs/good/*.yaml must pass with exit 0 and `ok` on stdout.
No root and no namespaces needed: check only reads the file.
"""

import glob
import os
import re
import resource
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "tests", "configs")
BAD = sorted(glob.glob(os.path.join(CONFIGS, "bad", "*.yaml")))
GOOD = sorted(glob.glob(os.path.join(CONFIGS, "good", "*.yaml")))
EXPECT = re.compile(r"^# expect: (\d+:\d+: .+)$", re.M)


def prism():
    build = os.environ.get("PRISM_BUILD", os.path.join(REPO, "build"))
    path = os.path.join(build, "prism")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: build it (make) or set PRISM_BUILD")
    return path


def check(path):
    return subprocess.run(
        [prism(), "check", "-c", path], capture_output=True, text=True, timeout=30
    )


def test_corpus_is_there():
    # A glob that matched nothing would make the parametrized tests vanish.
    assert len(BAD) >= 25, BAD
    assert len(GOOD) >= 3, GOOD


@pytest.mark.parametrize("path", BAD, ids=os.path.basename)
def test_bad_config(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        expects = EXPECT.findall(f.read())
    assert expects, f"{path} has no '# expect: LINE:COL: text' line"
    r = check(path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "ok" not in r.stdout.split()
    lines = r.stderr.splitlines()
    for e in expects:
        want = f"{path}:{e}"
        assert any(want in line for line in lines), f"missing {want!r} in:\n{r.stderr}"
    # Every problem line is FILE:LINE:COL: message, nothing else.
    for line in lines:
        assert re.match(re.escape(path) + r":\d+:\d+: \S", line), line


@pytest.mark.parametrize("path", GOOD, ids=os.path.basename)
def test_good_config(path):
    r = check(path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "ok", r.stdout


def test_several_problems_at_once(tmp_path):
    p = tmp_path / "multi.yaml"
    p.write_text(
        "listen: {port: 0}\n"
        "network: {table: 9x}\n"
        "apps:\n"
        "  - name: web\n"
        "    edge: 192.0.2.1/24\n"
        "    ports: 80\n"
    )
    r = check(str(p))
    assert r.returncode == 2, (r.returncode, r.stderr)
    want = [
        f"{p}:1:16: listen.port: port 0 out of range (1-65535)",
        f'{p}:2:18: network.table: "9x" is not a valid table name',
        f'{p}:4:5: app "web": missing required key "origins"',
        f"{p}:5:11: edge: 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?",
    ]
    lines = r.stderr.splitlines()
    assert len(lines) == len(want), r.stderr
    for line, w in zip(lines, want):
        assert line.startswith(w), (line, w)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    r = check(str(p))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{p}: cannot read: No such file or directory" in r.stderr
    assert "ok" not in r.stdout.split()


def test_directory(tmp_path):
    r = check(str(tmp_path))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{tmp_path}: cannot read: Is a directory" in r.stderr


def test_no_apps_warns(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing configured\nlisten: {port: 15009}\n")
    r = check(str(p))
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.strip() == "ok"
    warn = [line for line in r.stderr.splitlines() if re.search(r"\bwarn\b", line)]
    assert warn and "no apps" in warn[0], r.stderr


def test_unresolved_origin_warns(tmp_path):
    # A name that does not resolve is no error: prism warns and retries.
    # .invalid never resolves (RFC 6761); localhost always does (/etc/hosts).
    p = tmp_path / "dns.yaml"
    p.write_text(
        "apps:\n"
        "  - name: a\n"
        "    edge: 192.0.2.1\n"
        "    ports: 80\n"
        "    origins: [localhost, origin-c.invalid:8080]\n"
        "    dns: {refresh: 1m}\n"
    )
    r = check(str(p))
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.strip() == "ok"
    want = (
        f"{p}:5:26: warning: origin origin-c.invalid does not resolve ("
    )
    lines = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 1 and lines[0].startswith(want), r.stderr
    assert lines[0].endswith("; prism will retry every dns.refresh (1m)"), lines[0]


def test_missing_option():
    r = subprocess.run([prism(), "check"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)


def test_origins_without_port_on_many_ports_load_in_little_memory(tmp_path):
    """The check that no origin is dialed on a claimed (address, port)
    takes memory in the origin addresses, not in addresses times the port
    entries they are dialed on: origins without a port are dialed on each
    of their app's ports, and 1,000 of them in two apps of 10,000 single
    ports each took 1.2 GB, so that six such apps were refused on a host
    with 2 GB of address space. This valid config must load in 512 MB."""
    ldd = subprocess.run(["ldd", prism()], capture_output=True, text=True).stdout
    if "libasan" in ldd or "libtsan" in ldd:
        pytest.skip("a sanitizer's runtime reserves more address space than the limit")
    ports = ", ".join(str(p) for p in range(1, 20000, 2))
    origins = ", ".join(f"198.51.{i // 250}.{i % 250 + 1}" for i in range(1000))
    p = tmp_path / "loops.yaml"
    p.write_text(f"apps:\n  - {{name: a, edge: 192.0.2.10, ports: &p [{ports}], "
                 f"origins: &o [{origins}]}}\n"
                 "  - {name: b, edge: 192.0.2.11, ports: *p, origins: *o}\n")
    limit = 512 << 20
    r = subprocess.run([prism(), "check", "-c", str(p)], capture_output=True, text=True,
                       timeout=60, preexec_fn=lambda: resource.setrlimit(
                           resource.RLIMIT_AS, (limit, limit)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])

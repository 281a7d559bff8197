"""test_ssh.py - a real OpenSSH session through prism: ssh from the client
namespace to an edge address on port 22, relayed to sshd on the origin."""

import os
import re

import pytest

import nstopo

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"

CFG = """\
listen: {workers: 2}
timeouts: {connect: 2s, idle: 30s}
apps:
  - name: ssh
    edge: 192.0.2.77
    ports: 22
    origins: 198.51.100.10:2222
"""


def test_ssh_through_prism(topo):
    for b in (SSHD, SSH, SSH_KEYGEN):
        if not os.access(b, os.X_OK):
            pytest.skip(f"{b} not installed")
    t = topo
    tmp = t.tmp
    host_key = os.path.join(tmp, "host_ed25519")
    user_key = os.path.join(tmp, "user_ed25519")
    for k in (host_key, user_key):
        nstopo.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", k])
    auth = os.path.join(tmp, "authorized_keys")
    with open(user_key + ".pub") as f, open(auth, "w") as out:
        out.write(f.read())
    os.chmod(auth, 0o600)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    sshd_cfg = t.write("sshd_config", f"""\
ListenAddress 198.51.100.10:2222
HostKey {host_key}
AuthorizedKeysFile {auth}
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
LogLevel VERBOSE
""")
    nstopo.run([SSHD, "-t", "-f", sshd_cfg])
    sshd = t.start([SSHD, "-D", "-e", "-f", sshd_cfg], ns=t.o, name="sshd")
    sshd.wait_log(r"Server listening on 198\.51\.100\.10 port 2222", timeout=10)
    prism = t.start_prism(CFG)

    cp = nstopo.run(nstopo.ns_exec(t.c, [
        SSH, "-F", "/dev/null", "-i", user_key, "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", "22",
        "root@192.0.2.77", "echo hello-through-prism"]), check=False, timeout=30)
    assert cp.returncode == 0, (cp.stderr, sshd.dump(), prism.dump())
    assert cp.stdout == "hello-through-prism\n"
    d = prism.wait_access(lambda d: d.get("app") == "ssh")[0]
    assert d["edge"] == "192.0.2.77:22"
    assert d["origin"] == "198.51.100.10:2222"
    assert re.fullmatch(r"203\.0\.113\.2:\d+", d["client"])
    assert int(d["c2o"]) > 0 and int(d["o2c"]) > 0
    # sshd saw prism's address as the peer (no PROXY protocol here).
    sshd.wait_log(r"Accepted publickey for root from 198\.51\.100\.1 ", timeout=5)

"""Backpressure: a peer that stops reading must stall its sender through
prism, not make prism buffer. prism moves bytes through at most one pipe per
direction, so while a reader is stalled prism's RSS stays flat and the
amount the sender gets rid of is bounded by the sockets' buffers; once the
reader resumes, every byte arrives, in order."""

import hashlib
import os
import select
import socket
import time

import nstopo
import peers

MiB = 1 << 20
TOTAL = 256 * MiB  # far more than every socket buffer on the path together
STALL_S = 1.0  # no progress for this long = the sender is stalled

CFG = """\
listen: {workers: 1}
apps:
  - name: slow
    edge: 192.0.2.0/24
    ports: 7100
    origins: 198.51.100.10:7100
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def send_until_stalled(s, data_iter, h):
    """Sends until the socket stays unwritable for STALL_S; returns bytes sent."""
    s.setblocking(False)
    sent, pending = 0, b""
    while True:
        if not pending:
            pending = next(data_iter, b"")
            if not pending:
                return sent  # everything sent: nothing stalled
        try:
            n = s.send(pending)
        except BlockingIOError:
            _, w, _ = select.select([], [s], [], STALL_S)
            if not w:
                return sent
            continue
        h.update(pending[:n])
        pending = pending[n:]
        sent += n


def drain(s, n, h):
    s.setblocking(True)
    s.settimeout(10)
    got = 0
    while got < n:
        b = s.recv(min(MiB, n - got))
        assert b, f"EOF after {got} of {n} bytes"
        h.update(b)
        got += len(b)


def stall_and_resume(p, sender, reader):
    base = rss_kib(p.pid)
    chunks = (os.urandom(MiB) for _ in range(TOTAL // MiB))
    h_sent = hashlib.sha256()
    sent = send_until_stalled(sender, chunks, h_sent)
    assert 0 < sent < TOTAL, f"sender never stalled ({sent} bytes)"
    # In flight now: sender's send buffer + prism's receive buffer + one pipe
    # + prism's send buffer + reader's receive buffer; none of it in prism's
    # user space.
    grown = rss_kib(p.pid) - base
    assert grown < 2048, f"prism RSS grew {grown} KiB while the reader stalled"
    h_got = hashlib.sha256()
    drain(reader, sent, h_got)
    assert h_got.hexdigest() == h_sent.hexdigest()
    return sent


def both_ways(topo, edge, one_way):
    """One connection through prism to an origin of the test's: runs
    <one_way>(prism, sender, reader) client to origin, then origin to
    client; then both halves must still close cleanly, and the access line
    must count the bytes each call returned."""
    lis = peers.Listener(topo.o, nstopo.ORIGIN4, 7100)
    topo.on_teardown(lis.close)
    p = topo.start_prism(CFG)
    cli = peers.connect(topo.c, edge, 7100)
    org = lis.accept()
    topo.on_teardown(cli.close)
    topo.on_teardown(org.close)

    up = one_way(p, cli, org)
    down = one_way(p, org, cli)

    for s in (cli, org):
        s.settimeout(10)
    cli.shutdown(socket.SHUT_WR)
    assert peers.recv_all(org) == b""
    org.shutdown(socket.SHUT_WR)
    assert peers.recv_all(cli) == b""
    d = p.access_for(cli.getsockname()[1], (edge, 7100))
    assert int(d["c2o"]) == up and int(d["o2c"]) == down, d


def test_backpressure_both_directions(topo):
    both_ways(topo, "192.0.2.33", stall_and_resume)


CHUNK = 1000  # well under prism's 16 KiB scratch buffer: small-message mode
NCHUNKS = 64  # several times what the shrunken buffers below hold


def small_writes_to_stalled_reader(p, sender, reader):
    """Sends NCHUNKS messages of CHUNK bytes, one by one, while <reader> does
    not read; then reads them all and returns the byte count."""
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sender.settimeout(10)
    data = os.urandom(CHUNK * NCHUNKS)
    for i in range(NCHUNKS):
        sender.sendall(data[i * CHUNK:(i + 1) * CHUNK])
        # Pacing only, so that prism reads each message on its own (which
        # is what keeps it in small-message mode); not synchronization:
        # the assertions below hold however the reads fall.
        time.sleep(0.002)
    h_got = hashlib.sha256()
    drain(reader, len(data), h_got)
    assert h_got.hexdigest() == hashlib.sha256(data).hexdigest()
    return len(data)


def test_small_messages_to_a_stalled_reader(topo):
    """Small messages (each read whole through prism's scratch buffer) that
    the destination cannot take at once: prism keeps the unsent rest and
    sends it later, in order, in both directions."""
    # Buffers of a few KiB: prism's sends fail part-way after a few messages.
    for ns, key in ((topo.e, "net.ipv4.tcp_wmem"), (topo.o, "net.ipv4.tcp_rmem"),
                    (topo.c, "net.ipv4.tcp_rmem")):
        nstopo.run(nstopo.ns_exec(ns, ["sysctl", "-qw", f"{key}=4096 4096 4096"]))
    both_ways(topo, "192.0.2.34", small_writes_to_stalled_reader)

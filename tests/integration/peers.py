"""peers.py - the clients and origins the integration tests put around prism.

In-process helpers create their sockets inside a namespace (nstopo.ns_call:
a thread that setns()es, creates the socket, and is done; the socket stays
in that namespace), so a test can drive both ends of a connection from one
thread, with every blocking call bounded by a socket timeout.

Also runnable as a process (e.g. under `ip netns exec`):
    peers.py echo ADDR PORT      echo server, prints "ready" after listen()
    peers.py report ADDR PORT    answers one line describing the connection
"""

import asyncio
import fcntl
import hashlib
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nstopo  # noqa: E402

CHUNK = 256 * 1024


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def connect(ns, addr, port, timeout=5.0, src_port=None, rcvbuf=None):
    """A blocking TCP connection from namespace <ns>; socket timeout <timeout>."""
    s = nstopo.ns_socket(ns, family_of(addr)) if ns else socket.socket(family_of(addr))
    try:
        s.settimeout(timeout)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if src_port:
            s.bind(("", src_port))
        s.connect((addr, port))
    except BaseException:
        s.close()
        raise
    return s


def open_outcome(ns, addr, port, timeout=2.0):
    """Connects and reports (client port, what, socket or None), what being
    'connected', 'refused', 'reset' (RST right after the handshake, seen by
    connect), 'timeout' or 'unreachable'. The port is known in every case."""
    s = nstopo.ns_socket(ns, family_of(addr)) if ns else socket.socket(family_of(addr))
    s.bind(("::" if ":" in addr else "0.0.0.0", 0))
    cport = s.getsockname()[1]
    s.settimeout(timeout)
    what = "connected"
    try:
        s.connect((addr, port))
    except ConnectionRefusedError:
        what = "refused"
    except ConnectionResetError:
        what = "reset"
    except (socket.timeout, TimeoutError):
        what = "timeout"
    except OSError:
        what = "unreachable"
    if what != "connected":
        s.close()
        s = None
    return cport, what, s


def first_outcome(ns, addr, port, timeout=5.0):
    """Connects, and reports (client port, what happened first): at connect
    'refused', 'reset', 'timeout' or 'unreachable'; once connected, what the
    next read gets ('eof', 'reset', 'timeout' or 'data'). A reset right after
    the handshake may reach either call."""
    cport, what, s = open_outcome(ns, addr, port, timeout)
    if s:
        try:
            what = outcome(s, timeout)
        finally:
            s.close()
    return cport, what


def try_connect(ns, addr, port, timeout=2.0):
    """Returns None if the connection could not be made (refused, reset,
    timed out, unreachable), or the connected socket."""
    try:
        return connect(ns, addr, port, timeout)
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout, TimeoutError,
            OSError):
        return None


def recv_all(s, limit=1 << 31):
    """Reads until EOF; returns the bytes (raises on reset / timeout)."""
    parts, n = [], 0
    while n < limit:
        b = s.recv(CHUNK)
        if not b:
            break
        parts.append(b)
        n += len(b)
    return b"".join(parts)


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += b
    return bytes(buf)


def outcome(s, timeout):
    """What happens next on <s>: 'eof', 'reset', 'timeout', or 'data'."""
    s.settimeout(timeout)
    try:
        b = s.recv(65536)
    except ConnectionResetError:
        return "reset"
    except (socket.timeout, TimeoutError):
        return "timeout"
    return "data" if b else "eof"


def unacked(s):
    """Bytes in <s>'s send queue that its peer has not acknowledged."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def acked(s, timeout=5):
    """Whether the peer of <s> acknowledges all it was sent, i.e. the bytes
    are in its socket, within <timeout> s: no event tells, so the kernel's
    count is polled."""
    deadline = time.monotonic() + timeout
    while unacked(s):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def wait_acked(s, timeout=5):
    """Waits until the peer of <s> acknowledged all it was sent (acked)."""
    assert acked(s, timeout), f"{unacked(s)} bytes not acknowledged"


def set_linger0(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def seeded_stream(seed, n, chunk=CHUNK):
    """Yields <n> pseudo-random bytes from <seed>, in chunks."""
    rng = random.Random(seed)
    while n > 0:
        k = min(chunk, n)
        yield rng.randbytes(k)
        n -= k


# --- PROXY protocol ----------------------------------------------------------

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def read_proxy_header(s):
    """Reads exactly one PROXY v1 or v2 header from <s>.

    Returns {'version', 'src': (addr, port), 'dst': (addr, port)} (src/dst
    None for UNKNOWN/LOCAL). Raises ValueError on a malformed header."""
    head = recv_exact(s, 5)
    if head == b"PROXY":
        line = bytearray(head)
        while not line.endswith(b"\r\n"):
            if len(line) > 107:
                raise ValueError(f"v1 header too long: {bytes(line)!r}")
            line += recv_exact(s, 1)
        parts = line[:-2].decode("ascii").split(" ")
        if parts[1] == "UNKNOWN":
            return {"version": 1, "src": None, "dst": None}
        if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
            raise ValueError(f"bad v1 header {bytes(line)!r}")
        fam = 4 if parts[1] == "TCP4" else 6
        for a in parts[2:4]:
            if ipaddress.ip_address(a).version != fam:
                raise ValueError(f"v1 address {a} does not match {parts[1]}")
        return {"version": 1, "src": (parts[2], int(parts[4])),
                "dst": (parts[3], int(parts[5])), "raw": bytes(line)}
    rest = recv_exact(s, 11)
    if (head + rest)[:12] != PP2_SIG:
        raise ValueError(f"not a PROXY header: {head + rest!r}")
    ver_cmd, fam, length = struct.unpack("!BBH", (head + rest)[12:16])
    if ver_cmd >> 4 != 2:
        raise ValueError(f"v2 version nibble {ver_cmd >> 4}")
    body = recv_exact(s, length)
    cmd = ver_cmd & 0xF
    if cmd == 0:
        return {"version": 2, "src": None, "dst": None, "cmd": "LOCAL"}
    if cmd != 1:
        raise ValueError(f"v2 command {cmd}")
    if fam == 0x11:
        if length < 12:
            raise ValueError("v2 TCP4 too short")
        sa, da, sp, dp = struct.unpack("!4s4sHH", body[:12])
        return {"version": 2, "src": (str(ipaddress.IPv4Address(sa)), sp),
                "dst": (str(ipaddress.IPv4Address(da)), dp), "tlv": body[12:]}
    if fam == 0x21:
        if length < 36:
            raise ValueError("v2 TCP6 too short")
        sa, da, sp, dp = struct.unpack("!16s16sHH", body[:36])
        return {"version": 2, "src": (str(ipaddress.IPv6Address(sa)), sp),
                "dst": (str(ipaddress.IPv6Address(da)), dp), "tlv": body[36:]}
    raise ValueError(f"v2 family/proto byte {fam:#x}")


# --- origins -----------------------------------------------------------------


class Listener:
    """A listening socket in <ns>; the test accepts and drives connections."""

    def __init__(self, ns, addr, port, backlog=1024):
        self.addr, self.port = addr, port
        self.sock = nstopo.ns_socket(ns, family_of(addr)) if ns else socket.socket(
            family_of(addr))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(backlog)

    def accept(self, timeout=5.0):
        self.sock.settimeout(timeout)
        c, _ = self.sock.accept()
        c.settimeout(timeout)
        return c

    def pending(self):
        """True if a connection is waiting in the accept queue."""
        self.sock.setblocking(False)
        try:
            c, _ = self.sock.accept()
        except BlockingIOError:
            return False
        c.close()
        return True

    def close(self):
        self.sock.close()


class ThreadServer:
    """Accept loop in a thread; each connection handled by handler(sock) in
    its own thread. Records one dict per connection in .conns."""

    def __init__(self, ns, addr, port, handler, backlog=1024):
        self.listener = Listener(ns, addr, port, backlog)
        self.handler = handler
        self.conns = []
        self.errors = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        ls = self.listener.sock
        ls.settimeout(0.2)
        while not self._stop:
            try:
                c, peer = ls.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(c, peer), daemon=True).start()

    def _serve(self, c, peer):
        rec = {"peer": peer}
        try:
            c.settimeout(30)
            self.handler(c, rec)
        except Exception as e:  # reported to the test through .errors/.conns
            rec["error"] = repr(e)
        finally:
            c.close()
            with self.cond:
                self.conns.append(rec)
                self.cond.notify_all()

    def wait_conns(self, n, timeout=10):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.conns) >= n, timeout):
                raise TimeoutError(f"{len(self.conns)} of {n} origin connections")
            return list(self.conns)

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.listener.close()


def report_handler(name, proxy=False):
    """Origin that answers one JSON line: its name, its local address, the
    peer address, and the PROXY header it got (if <proxy>), then closes."""

    def handler(c, rec):
        info = {"origin": name, "local": list(c.getsockname()[:2]),
                "peer": list(c.getpeername()[:2])}
        if proxy:
            h = read_proxy_header(c)
            info["pp"] = {"version": h["version"], "src": list(h["src"] or []),
                          "dst": list(h["dst"] or [])}
        rec.update(info)
        c.sendall(json.dumps(info).encode() + b"\n")
        c.shutdown(socket.SHUT_WR)
        c.settimeout(5)
        recv_all(c)

    return handler


def echo_handler(c, rec):
    """Echoes everything until EOF, then closes; records byte counts."""
    n = 0
    h = hashlib.sha256()
    while True:
        b = c.recv(CHUNK)
        if not b:
            break
        h.update(b)
        c.sendall(b)
        n += len(b)
    rec["bytes"] = n
    rec["sha"] = h.hexdigest()


# --- asyncio, for many concurrent connections -----------------------------------


class NsLoop:
    """An asyncio event loop in a thread that lives in namespace <ns>."""

    def __init__(self, ns):
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.error = None

        def body():
            try:
                nstopo.setns(ns)
            except Exception as e:
                self.error = e
                started.set()
                return
            asyncio.set_event_loop(self.loop)
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=body, daemon=True, name=f"loop-{ns}")
        self.thread.start()
        started.wait(10)
        if self.error:
            raise self.error

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class AsyncEcho:
    """Echo server on an NsLoop: echoes until EOF, then closes. Records
    (peer, bytes) for every finished connection in .done."""

    def __init__(self, nsloop, addr, port):
        self.nsloop = nsloop
        self.done = []
        self.errors = []
        self.handlers = set()

        async def start():
            return await asyncio.start_server(self._handle, addr, port, backlog=2048,
                                              reuse_address=True)

        self.server = nsloop.run(start())

    async def _handle(self, reader, writer):
        peer = writer.get_extra_info("peername")
        n = 0
        self.handlers.add(asyncio.current_task())
        try:
            while True:
                b = await reader.read(CHUNK)
                if not b:
                    break
                writer.write(b)
                await writer.drain()
                n += len(b)
            self.done.append((peer, n))
        except Exception as e:
            self.errors.append(repr(e))
        finally:
            self.handlers.discard(asyncio.current_task())
            writer.close()

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
            # Python 3.11's wait_closed does not wait for the handlers:
            # end them here, or they are collected after the loop closed.
            for t in list(self.handlers):
                t.cancel()
            await asyncio.gather(*self.handlers, return_exceptions=True)

        try:
            self.nsloop.run(stop(), timeout=5)
        except Exception:
            pass


# --- command line --------------------------------------------------------------


def _main(argv):
    mode, addr, port = argv[1], argv[2], int(argv[3])
    handler = echo_handler if mode == "echo" else report_handler(argv[4] if len(argv) > 4
                                                                 else "origin")
    srv = ThreadServer(None, addr, port, handler)
    print("ready", flush=True)
    srv.thread.join()


if __name__ == "__main__":
    _main(sys.argv)

#!/usr/bin/python3
"""origin.py - the demo's origin services (stdlib only).

  origin.py echo   ADDR PORT   send back every byte received
  origin.py whoami ADDR PORT   read the PROXY protocol header (v1 or v2)
                               prism sent, reply "you are CLIENT and dialed
                               EDGE (PROXY vN)" followed by what the client
                               said, then close

Prints one "listening" line on stdout once bound, which demo.sh waits for.
Each connection is bounded in time (10 s) and size (64 KiB).
"""
import ipaddress
import socket
import socketserver
import struct
import sys

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_BYTES = 64 * 1024


def fmt(addr, port):
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def read_header(sock):
    """Reads exactly one PROXY header; returns (version, src, dst, leftover)."""
    buf = b""
    while True:
        if buf.startswith(V2_SIG[: len(buf)]) and len(buf) >= 16:
            ver_cmd, fam, length = struct.unpack("!BBH", buf[12:16])
            if ver_cmd >> 4 != 2:
                raise ValueError("bad v2 version")
            if len(buf) >= 16 + length:
                body, rest = buf[16 : 16 + length], buf[16 + length :]
                if ver_cmd & 0xF == 0 or fam == 0:
                    return "v2 LOCAL", "-", "-", rest
                if fam == 0x11:
                    s, d, sp, dp = struct.unpack("!4s4sHH", body[:12])
                elif fam == 0x21:
                    s, d, sp, dp = struct.unpack("!16s16sHH", body[:36])
                else:
                    raise ValueError(f"unsupported v2 family {fam:#x}")
                return (
                    "v2",
                    fmt(ipaddress.ip_address(s), sp),
                    fmt(ipaddress.ip_address(d), dp),
                    rest,
                )
        elif buf.startswith(b"PROXY ") and b"\r\n" in buf:
            line, rest = buf.split(b"\r\n", 1)
            parts = line.decode("ascii").split(" ")
            if parts[1] == "UNKNOWN":
                return "v1 UNKNOWN", "-", "-", rest
            _, _, s, d, sp, dp = parts
            return "v1", fmt(s, int(sp)), fmt(d, int(dp)), rest
        elif not (V2_SIG.startswith(buf[:12]) or b"PROXY "[: len(buf)] == buf[:6]):
            raise ValueError("no PROXY header")
        if len(buf) > 232:
            raise ValueError("PROXY header too long")
        chunk = sock.recv(512)
        if not chunk:
            raise ValueError("connection closed inside the PROXY header")
        buf += chunk


def read_rest(sock, buf):
    while len(buf) < MAX_BYTES:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(10)
        try:
            if self.server.mode == "echo":
                total = 0
                while total < MAX_BYTES:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    sock.sendall(chunk)
                    total += len(chunk)
            else:
                ver, src, dst, rest = read_header(sock)
                said = read_rest(sock, rest).decode("utf-8", "replace").strip()
                reply = f"you are {src} and dialed {dst} (PROXY {ver}), you said: {said}\n"
                sock.sendall(reply.encode())
        except (OSError, ValueError) as e:
            print(f"origin {self.server.mode}: {e}", file=sys.stderr, flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("echo", "whoami"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Server.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with Server((addr, port), Handler) as srv:
        srv.mode = mode
        print(f"origin {mode} listening on {fmt(addr, port)}", flush=True)
        srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

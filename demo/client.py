#!/usr/bin/python3
"""client.py ADDR PORT MESSAGE - the demo's client (stdlib only).

Connects, sends MESSAGE, half-closes, prints what came back until the peer
closes. Bounded: 5 s to connect, 5 s overall for the reply. Exit 1 on error.
"""
import socket
import sys
import time


def main():
    addr, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        with socket.create_connection((addr, port), timeout=5) as s:
            s.sendall(msg.encode())
            s.shutdown(socket.SHUT_WR)
            got, deadline = b"", time.monotonic() + 5
            while time.monotonic() < deadline and len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError as e:
        print(f"    failed: {e}")
        return 1
    print(f"    sent: {msg}")
    print(f"    got:  {got.decode('utf-8', 'replace').strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

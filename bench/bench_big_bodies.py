"""Memory of the web app's gunicorn workers while big bodies arrive: two concurrent 200 MB POSTs to /login.

Starts `omniwise.py serve` (2 workers) on a free port, then two clients each send a 200 MB form body
(Content-Length set, 1 MiB at a time) and stop as soon as the answer arrives. The resident memory of the
workers is sampled every 20 ms from /proc; the script prints it before, at its peak and after, the
statuses and how much each client had sent when answered.
Run: .venv/bin/python bench/bench_big_bodies.py [--megabytes 200]
Goal: the bodies are refused (413) before they are read, so the workers' memory stays flat.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = b"a" * (1 << 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def workers_rss(master: int) -> float:
    total = 0.0
    for pid in children(master):
        try:
            total += rss_mib(pid)
        except FileNotFoundError:
            pass
    return total


def post_big(port: int, megabytes: int, results: list) -> None:
    """Send the headers and up to `megabytes` MiB of body; stop when the server answers."""
    sock = socket.create_connection(("127.0.0.1", port))
    length = megabytes * len(CHUNK)
    sock.sendall(f"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    sent, answer = 0, b""
    sock.setblocking(False)
    try:
        while sent < length:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                answer = sock.recv(4096)
                break
            if writable:
                try:
                    sent += sock.send(CHUNK)
                except BlockingIOError:
                    pass
        if not answer:
            sock.setblocking(True)
            sock.settimeout(120)
            answer = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError) as exc:
        answer = answer or f"connection closed: {exc}".encode()
    finally:
        sock.close()
    results.append((answer.split(b"\r\n", 1)[0].decode(errors="replace"), sent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, OMNIWISE_DATA_DIR=folder, OMNIWISE_ADMIN_PASSWORD="bench-password",
                   OMNIWISE_LOG_LEVEL="WARNING")
        server = subprocess.Popen([sys.executable, str(ROOT / "omniwise.py"), "serve", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:  # ready when it answers
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not start")
                    time.sleep(0.05)
            while len(children(server.pid)) < 2:
                time.sleep(0.05)
            time.sleep(1)  # let the workers finish importing before the baseline
            before = workers_rss(server.pid)
            results: list = []
            clients = [threading.Thread(target=post_big, args=(port, args.megabytes, results)) for _ in range(2)]
            peak, started = before, time.monotonic()
            for client in clients:
                client.start()
            while any(client.is_alive() for client in clients):
                peak = max(peak, workers_rss(server.pid))
                time.sleep(0.02)
            seconds = time.monotonic() - started
            time.sleep(0.5)
            after = workers_rss(server.pid)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(f"two concurrent {args.megabytes} MiB POSTs to /login, 2 gunicorn workers:")
    for status, sent in results:
        print(f"  answer {status!r} after {sent / (1 << 20):.0f} MiB sent")
    print(f"  workers' RSS: before {before:.1f} MiB, peak {peak:.1f} MiB, after {after:.1f} MiB ({seconds:.1f} s)")


if __name__ == "__main__":
    main()

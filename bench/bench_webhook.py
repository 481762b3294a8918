"""Load on the signal webhook: requests/s and latency of valid signals, and rows stored = acknowledged.

Starts `omniwise.py serve` on a free port with a temporary data folder, posts distinct valid signals
from N client threads over keep-alive connections (http.client) for a few seconds, stops the server,
then counts the ledger rows. In the same run, with the same load, it measures the floor
(bench/webhook_floor.py: the same gunicorn settings and one SQLite insert of a ledger row, no parsing) and
prints our rate as a share of it, so a slower or busier machine does not read as a regression.
Run: .venv/bin/python bench/bench_webhook.py [--connections 16] [--seconds 10]
Goal on the 2-core machine: >= 60 % of the floor's rate and p99 <= 50 ms with 16 connections.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], data_dir: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, OMNIWISE_DATA_DIR=str(data_dir), OMNIWISE_WEBHOOK_TOKEN=TOKEN,
               OMNIWISE_WEBHOOK_RATE="0")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/v1/ready-probe")
            conn.getresponse().read()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()}")
            time.sleep(0.05)
    raise SystemExit("server did not answer within 30 s")


def client(port: int, name: str, deadline: float, base_ms: int, results: dict, lock: threading.Lock) -> None:
    latencies: list[float] = []
    ids: list[int] = []
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    i = 0
    while time.perf_counter() < deadline:
        body = json.dumps({"signal": "BUY" if i % 2 else "SELL", "timestamp": base_ms + i, "source": name})
        started = time.perf_counter()
        try:
            conn.request("POST", f"/api/v1/external-signal/{TOKEN}", body, {"Content-Type": "text/plain"})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        latencies.append(time.perf_counter() - started)
        if 200 <= response.status < 300:
            ids.append(json.loads(payload)["id"])
        else:
            errors += 1
        i += 1
    conn.close()
    with lock:
        results["latencies"].extend(latencies)
        results["ids"].extend(ids)
        results["errors"] += errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (serve's default: 2)")
    args = parser.parse_args()

    serve = [sys.executable, str(ROOT / "omniwise.py"), "serve", "--workers", str(args.workers)]
    floor = [sys.executable, str(ROOT / "bench" / "webhook_floor.py")]
    print(f"connections          {args.connections}, gunicorn workers {args.workers}")
    floor_rate = measure("floor (insert only)", lambda port, data: [*floor, str(port), str(data), str(args.workers)],
                         "floor", args)
    rate = measure("webhook", lambda port, data: [*serve, "--port", str(port)], "bench-%", args)
    print(f"webhook / floor      {rate / floor_rate * 100:.0f} %  (goal >= 60 %)")


def measure(title: str, command, source_pattern: str, args) -> float:
    """Serve with `command(port, data_dir)`, load it for the given seconds, print the figures; the rate."""
    with tempfile.TemporaryDirectory(prefix="omniwise-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        server = start_server(command(port, data_dir), data_dir, port)
        try:
            results = {"latencies": [], "ids": [], "errors": 0}
            lock = threading.Lock()
            warm_up = time.perf_counter() + 1.0
            run_clients(port, args.connections, warm_up, {"latencies": [], "ids": [], "errors": 0}, lock, "warm")
            started = time.perf_counter()
            run_clients(port, args.connections, started + args.seconds, results, lock, "bench")
            elapsed = time.perf_counter() - started
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        with sqlite3.connect(data_dir / "omniwise.db") as db:
            stored = {row[0] for row in db.execute(
                "SELECT id FROM external_signals WHERE source LIKE ? AND outcome = 'accepted'", [source_pattern])}
        return report(title, results, elapsed, stored)


def run_clients(port: int, connections: int, deadline: float, results: dict, lock: threading.Lock, prefix: str):
    base_ms = time.time_ns() // 1_000_000 - 86_400_000
    threads = [threading.Thread(target=client, args=(port, f"{prefix}-{n}", deadline, base_ms, results, lock))
               for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def report(title: str, results: dict, elapsed: float, stored: set[int]) -> float:
    latencies = sorted(results["latencies"])
    acknowledged = set(results["ids"])

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000
    rate = len(latencies) / elapsed
    print(f"== {title}")
    print(f"duration             {elapsed:.1f} s")
    print(f"requests answered    {len(latencies)}  ({results['errors']} errors or non-2xx)")
    print(f"throughput           {rate:.0f} req/s")
    print(f"latency p50/p90/p99  {pct(50):.1f} / {pct(90):.1f} / {pct(99):.1f} ms  (max {latencies[-1] * 1000:.1f}, "
          f"mean {statistics.fmean(latencies) * 1000:.1f})")
    print(f"acknowledged (2xx)   {len(acknowledged)}")
    print(f"rows stored          {len(stored & acknowledged)} of them  "
          f"({'all' if acknowledged <= stored else 'SOME MISSING'})")
    return rate


if __name__ == "__main__":
    main()

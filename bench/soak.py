"""Soak: both processes for a while, the worker replaying as fast as possible, a signal every second.

Starts `omniwise.py serve` and `worker.py` on a fresh data folder (the processes `make run` starts),
replays a large aggTrades file at speed 0, posts one signal a second to the webhook, and prints the
RSS of each process at the start and the end, the database size, and every error seen (non-2xx
answers, ERROR/CRITICAL log lines other than the heartbeat's own alerts). Goal (issue 9): flat memory,
zero errors.

    .venv/bin/python bench/soak.py [SECONDS] [TICKS]
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_replay import write_ticks  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn's workers), in MiB."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                   text=True).stdout.split()]
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 600
    ticks = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000_000
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        data.mkdir()
        (data / "strategy.txt").write_text((ROOT / "data" / "strategy.txt").read_text())
        replay = Path(folder) / "aggTrades.csv"
        print(f"writing a {ticks:,}-tick replay file ...", flush=True)
        write_ticks(replay, ticks)
        env = {**os.environ, "OMNIWISE_DATA_DIR": str(data), "OMNIWISE_WEBHOOK_TOKEN": TOKEN,
               "OMNIWISE_SYMBOL": "XRPETH", "OMNIWISE_REPLAY_FILE": str(replay), "OMNIWISE_REPLAY_SPEED": "0",
               "OMNIWISE_WEBHOOK_RATE": "0", "OMNIWISE_ADMIN_PASSWORD": "soak-password"}
        subprocess.run([sys.executable, "omniwise.py", "init"], cwd=ROOT, env=env, check=True, capture_output=True)
        port = 5600
        logs = {name: open(Path(folder) / f"{name}.log", "w+") for name in ("web", "worker")}
        web = subprocess.Popen([sys.executable, "omniwise.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=logs["web"], stderr=subprocess.STDOUT, start_new_session=True)
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=logs["worker"],
                                  stderr=subprocess.STDOUT)
        conn = None
        for _ in range(300):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(5)  # let both settle before the first memory reading
        start_rss = rss_mib(web.pid), rss_mib(worker.pid)
        sent = failed = 0
        started = time.monotonic()
        next_post = started
        try:
            while time.monotonic() - started < seconds:
                next_post += 1.0
                body = json.dumps({"signal": "BUY" if sent % 2 else "SELL", "timestamp": int(time.time() * 1000),
                                   "source": "soak"})
                try:  # a new connection each time, as TradingView makes
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("POST", f"/api/v1/external-signal/{TOKEN}", body, {"Content-Type": "text/plain"})
                    response = conn.getresponse()
                    response.read()
                    conn.close()
                    failed += response.status != 200
                except (OSError, http.client.HTTPException) as exc:
                    print(f"signal {sent}: {exc}", flush=True)
                    failed += 1
                sent += 1
                if worker.poll() is not None or web.poll() is not None:
                    print("a process died", flush=True)
                    break
                time.sleep(max(0.0, next_post - time.monotonic()))
            end_rss = rss_mib(web.pid), rss_mib(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=30)
        size_mib = sum(p.stat().st_size for p in data.glob("omniwise.db*")) / 2**20
        import sqlite3

        db = sqlite3.connect(data / "omniwise.db")
        candles, stored = (db.execute(q).fetchone()[0] for q in ("SELECT count(*) FROM candles",
                                                                   "SELECT count(*) FROM external_signals WHERE source = 'soak'"))
        errors = []
        for name, log in logs.items():
            log.seek(0)
            errors += [f"{name}: {line.strip()}" for line in log if (" ERROR " in line or " CRITICAL " in line)
                       and "HEARTBEAT" not in line]
        print(f"soak of {time.monotonic() - started:.0f} s: {candles:,} candles traded, {sent} signals posted, "
              f"{stored} stored, {failed} failed")
        print(f"RSS web (master + workers): {start_rss[0]:.1f} MiB at start, {end_rss[0]:.1f} MiB at the end")
        print(f"RSS worker: {start_rss[1]:.1f} MiB at start, {end_rss[1]:.1f} MiB at the end")
        print(f"database with WAL: {size_mib:.1f} MiB; error log lines: {len(errors)}")
        for line in errors[:10]:
            print("  " + line)


if __name__ == "__main__":
    main()

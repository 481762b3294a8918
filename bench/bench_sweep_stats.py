"""Sweep speed with the statistics of issue 25: the 100-combination sweep of the seed over 1,000,000
candles as a whole `omniwise.py backtest` process, printing the table and printing `--json` (no trades
unless `--trades`; the size of the JSON is printed too), then a 1,000-combination sweep.

Goals (issue 25, this 2-core machine): 100 combinations over 1,000,000 candles <= 4 s, table and
--json alike, the JSON <= 1 MB; 1,000 combinations <= 30 s. Other engineers share the machine:
the load average is printed with every figure.

`--cluster` also runs the 100-combination sweep on a Dask cluster of this machine (a scheduler and 2
single-threaded workers started here) beside the local pool of 2 processes: what the cluster costs
(sending the candles, the scheduler) where it cannot gain (the same 2 cores).

    .venv/bin/python bench/bench_sweep_stats.py [--skip-1000] [--cluster]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_backtest import SWEEP_100, process_seconds, write_million  # noqa: E402

SWEEP_1000 = "IF MA{fast: 2..21} > MA{slow: 22..120..2} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


@contextlib.contextmanager
def local_cluster(folder: Path):
    """A Dask scheduler and 2 single-threaded workers on 127.0.0.1 running this project's code."""
    dask = str(Path(sys.executable).parent / "dask")
    address_file = folder / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = ["--no-dashboard", "--scheduler-file", str(address_file)]
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": folder}
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", *common], **quiet)
    while not address_file.exists() or not address_file.read_text().strip():
        time.sleep(0.1)
    workers = subprocess.Popen([dask, "worker", "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
                                "--local-directory", str(folder), *common], **quiet)
    address = json.loads(address_file.read_text())["address"]
    from distributed import Client

    with Client(address) as client:
        client.wait_for_workers(2, timeout=120)
    try:
        yield address
    finally:
        for process in (workers, scheduler):
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    skip_1000 = "--skip-1000" in sys.argv
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        big = folder / "million.csv"
        write_million(big)
        command = [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(big), "--strategy"]
        sweep = folder / "sweep100.txt"
        sweep.write_text(SWEEP_100)
        subprocess.run(command + [str(sweep)], check=True, capture_output=True)  # writes the candle cache
        print(f"100 combinations over 1,000,000 candles, whole process, best of 3 ({os.cpu_count()} cores):")
        wall, cpu = process_seconds(command + [str(sweep)], 3)
        print(f"  table          {wall:6.2f} s wall, {cpu:6.2f} s CPU   ({load()})   goal <= 4 s")
        wall, cpu = process_seconds(command + [str(sweep), "--json"], 3)
        size = len(subprocess.run(command + [str(sweep), "--json"], check=True, capture_output=True).stdout)
        print(f"  --json         {wall:6.2f} s wall, {cpu:6.2f} s CPU   ({load()})   goal <= 4 s; "
              f"{size / 1e3:,.1f} kB of JSON (goal <= 1 MB)")
        if "--cluster" in sys.argv:
            with local_cluster(folder) as address:
                wall, cpu = process_seconds(command + [str(sweep), "--cluster", address], 3)
                print(f"  --cluster      {wall:6.2f} s wall, {cpu:6.2f} s CPU in the client  ({load()})   "
                      f"2 local Dask workers, 1 thread each")
                wall, cpu = process_seconds(command + [str(sweep)], 3)
                print(f"  local pool     {wall:6.2f} s wall, {cpu:6.2f} s CPU   ({load()})   the same run, "
                      f"measured again beside it")
        if not skip_1000:
            sweep = folder / "sweep1000.txt"
            sweep.write_text(SWEEP_1000)
            wall, cpu = process_seconds(command + [str(sweep)], 1)
            print(f"1,000 combinations over 1,000,000 candles: {wall:6.2f} s wall, {cpu:6.2f} s CPU   "
                  f"({load()})   goal <= 30 s")


if __name__ == "__main__":
    main()

"""A year of 1-minute klines through `download` and `backtest --symbol`.

The archive stand-in (tests/exchange/archive.py) on 127.0.0.1 serves 12 monthly zips of 2023: 525,600
minutes of a seeded random walk in Binance's 12 columns (synthetic prices: only their count and layout
matter to the timing). Measured:
1. `python omniwise.py download BENCHUSDT --from 2023-01-01 --to 2023-12-31` as a whole process
   (12 files fetched over loopback, verified, read and cached, the summary printed);
2. reading the 12 kept zips into the parsed-array cache (core.history.load_history with no cache yet),
   best of 3: goal <= 3 s;
3. `python omniwise.py backtest --symbol BENCHUSDT --from 2023-01-01 --to 2023-12-31 --json` afterwards,
   as a whole process, median of 5, wall and CPU time: goal <= 0.6 s; beside it the same backtest with
   `--candles` over one cached CSV of the same minutes.
Run: .venv/bin/python bench/bench_download.py
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import history  # noqa: E402
from tests.exchange.archive import ArchiveStandIn  # noqa: E402

SYMBOL = "BENCHUSDT"
START_MS = 1_672_531_200_000  # 2023-01-01 00:00 UTC
MINUTES = 525_600


def year_rows() -> list[list[str]]:
    """A seeded random walk, one row a minute for 2023, in the archive's 12 columns."""
    rng = np.random.default_rng(7)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, MINUTES)))
    open_ = np.concatenate([[20_000.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0005, MINUTES)) * close
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    volume = rng.gamma(2.0, 3.0, MINUTES)
    times = START_MS + np.arange(MINUTES, dtype=np.int64) * 60_000
    return [[str(t), f"{o:.2f}", f"{h:.2f}", f"{lo:.2f}", f"{c:.2f}", f"{v:.5f}", str(t + 59_999),
             f"{v * c:.8f}", "100", f"{v / 2:.5f}", f"{v * c / 2:.8f}", "0"]
            for t, o, h, lo, c, v in zip(times.tolist(), open_, high, low, close, volume)]


def omniwise(data: Path, archive_url: str, *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run omniwise.py; its wall time and CPU time (user + system: what a busy machine does not inflate)."""
    env = {**os.environ, "OMNIWISE_DATA_DIR": str(data), "OMNIWISE_BINANCE_ARCHIVE_URL": archive_url,
           "OMNIWISE_BINANCE_API_URL": "http://127.0.0.1:9/api"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), *args], capture_output=True, text=True,
                            env=env, cwd=data)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"omniwise.py {' '.join(args)} failed:\n{result.stderr}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, result


def main() -> None:
    archive = ArchiveStandIn().start()
    try:
        archive.publish("spot", SYMBOL, year_rows(), daily=False)
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder)
            (data / "strategy.txt").write_text((ROOT / "data" / "strategy.txt").read_text())
            period = ("--from", "2023-01-01", "--to", "2023-12-31")
            download_s, _, result = omniwise(data, archive.url, "download", SYMBOL, *period)
            print(result.stdout.strip())
            kept = history.folder_of(data, "spot", SYMBOL)
            zips = sorted(kept.glob("*.zip"))
            size_mb = sum(p.stat().st_size for p in zips) / 1e6
            print(f"download, whole process: {download_s:.2f} s ({len(zips)} zips, {size_mb:.1f} MB)")

            reads = []
            for _ in range(3):
                for cache in kept.glob("*.omniwise.npz"):
                    cache.unlink()
                start = time.perf_counter()
                candles = history.load_history(kept, SYMBOL, dt.date(2023, 1, 1), dt.date(2023, 12, 31))
                reads.append(time.perf_counter() - start)
            assert len(candles["close"]) == MINUTES
            print(f"read 12 monthly zips ({MINUTES:,} rows) into the cache: best {min(reads):.2f} s, "
                  f"worst {max(reads):.2f} s (goal <= 3 s)")

            strategy = ("--strategy", str(data / "strategy.txt"), "--json")
            runs = [omniwise(data, archive.url, "backtest", "--symbol", SYMBOL, *period, *strategy) for _ in range(5)]
            print(f"backtest --symbol over the year, whole process: median {statistics.median(r[0] for r in runs):.2f} s "
                  f"wall, {statistics.median(r[1] for r in runs):.2f} s CPU (goal <= 0.6 s)")
            # The same minutes as one cached CSV: what --symbol costs beyond a backtest of a file.
            csv = data / "year.csv"
            csv.write_text("".join(",".join(row) + "\n" for row in year_rows()))
            omniwise(data, archive.url, "backtest", "--candles", str(csv), *strategy)  # writes its cache
            runs = [omniwise(data, archive.url, "backtest", "--candles", str(csv), *strategy) for _ in range(5)]
            print(f"the same as --candles over one cached CSV of the year: median "
                  f"{statistics.median(r[0] for r in runs):.2f} s wall, {statistics.median(r[1] for r in runs):.2f} s CPU")
    finally:
        archive.close()
    print(f"machine load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)")


if __name__ == "__main__":
    main()

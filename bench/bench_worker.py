"""The worker's trading step under load: decision latency per closed candle and memory over 1M ticks.

Runs the real Worker in-process (real SQLite file, paper broker, seed strategy) over a 1,000,000-tick
aggTrades file (the real XRPETH day repeated), replayed as fast as possible. Prints decision latency
p50/p99 per closed candle (the whole step: SQLite transaction, fills, decision, order) and the
process RSS every 250,000 ticks. Goals (issue 3): p99 <= 5 ms; RSS <= 150 MB and flat.

    .venv/bin/python bench/bench_worker.py [TICKS]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_replay import rss_mib, write_ticks  # noqa: E402

from core.config import Settings  # noqa: E402
from core.feeds import ReplayFeed  # noqa: E402
from worker import Worker  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        data.mkdir()
        shutil.copy(ROOT / "data" / "strategy.txt", data / "strategy.txt")
        ticks = Path(folder) / "aggTrades.csv"
        write_ticks(ticks, count)
        worker = Worker(Settings(data_dir=data, symbol="XRPETH", replay_speed=0, replay_file=ticks))
        worker.trader.resume()
        # Latencies go into a histogram of whole microseconds: constant memory, so the RSS is the worker's.
        histogram = np.zeros(1_000_001, dtype=np.int64)

        def take_latencies():
            micros = np.minimum(np.array(worker.trader.latencies_s) * 1e6, 1_000_000).astype(np.int64)
            np.add.at(histogram, micros, 1)
            worker.trader.latencies_s.clear()

        marks = []
        samples = iter(range(250_000, count + 1, 250_000))
        next_mark = next(samples, None)

        def feed():
            nonlocal next_mark
            for n, tick in enumerate(ReplayFeed(ticks, speed=0), start=1):
                yield tick
                if n % 10_000 == 0:
                    take_latencies()
                if n == next_mark:
                    marks.append((n, rss_mib()[0]))
                    next_mark = next(samples, None)

        start = time.perf_counter()
        worker.trade(feed())
        elapsed = time.perf_counter() - start
        take_latencies()
        cumulative = np.cumsum(histogram) / histogram.sum()
        p50, p99 = (int(np.searchsorted(cumulative, q)) / 1e3 for q in (0.5, 0.99))
        worst = int(np.flatnonzero(histogram)[-1]) / 1e3
        candles = worker.db.execute("SELECT count(*) FROM candles").fetchone()[0]
        orders = worker.db.execute("SELECT count(*) FROM orders").fetchone()[0]
        size_mib = (data / "omniwise.db").stat().st_size / 2**20
        print(f"{count:,} ticks -> {candles:,} candles, {orders:,} orders in {elapsed:.1f} s "
              f"({count / elapsed:,.0f} ticks/s end to end, database {size_mib:.1f} MiB)")
        print(f"decision latency per closed candle (SQLite writes included): "
              f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {worst:.1f} ms (goal p99 <= 5 ms)")
        print("worker RSS: " + ", ".join(f"{n:,} ticks {rss:.1f} MiB" for n, rss in marks) + " (goal <= 150 MB, flat)")
        worker.db.close()


if __name__ == "__main__":
    main()

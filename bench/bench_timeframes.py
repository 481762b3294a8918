"""Timeframe strategies: a backtest of 1,000,000 minutes deciding on hourly candles with a 4-hour filter, and
the live step of the trader with a 30-day look-back.

Goals (issue 21): `TIMEFRAME 1h` with an `@4h` filter over 1,000,000 candles as a whole `omniwise.py
backtest --json` process <= 0.8 s with the parsed-array cache next to the CSV; the live step (one closed
minute through Trader.on_candle: SQLite transaction, the policy's decision when a window closes, paper
broker) p99 <= 5 ms with a 30-day window.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_backtest import process_seconds, write_million  # noqa: E402
from core import store, timeframes, warmup  # noqa: E402
from core.backtest import run_backtest  # noqa: E402
from core.brokers import PaperBroker  # noqa: E402
from core.candle_cache import load_candles_cached  # noqa: E402
from core.candles import Candle  # noqa: E402
from core.dsl import compile_strategy  # noqa: E402
from core.policy_loader import PolicyLoader  # noqa: E402
from core.trader import Trader  # noqa: E402
from timing import best_of, p50_p99_ms  # noqa: E402

BACKTEST = ("TIMEFRAME 1h\nIF EMA(9) > EMA(21) AND CLOSE > SMA(50)@4h THEN BUY\nIF EMA(9) < EMA(21) THEN SELL\n"
            "STOP LOSS 2%\n")
# SMA(175) of 4-hour candles: a look-back of 29.4 days, the live window the goal names
LIVE = ("TIMEFRAME 1h\nIF EMA(9) > EMA(21) AND CLOSE > SMA(175)@4h THEN BUY\nIF EMA(9) < EMA(21) THEN SELL\n"
        "STOP LOSS 2%\n")


def backtest(folder: Path) -> None:
    big, strategy = folder / "big.csv", folder / "tf.txt"
    write_million(big)
    strategy.write_text(BACKTEST)
    command = [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(big), "--strategy",
               str(strategy), "--json"]
    process_seconds(command, 1)  # writes the cache
    wall, cpu = process_seconds(command, 5)
    candles = load_candles_cached(big)
    policy = compile_strategy(BACKTEST)
    frames_s = best_of(lambda: (timeframes.build_frame(candles, 60), timeframes.build_frame(candles, 240)), 5)
    decide_s = best_of(lambda: policy.decide_minutes(candles), 5)
    run_s = best_of(lambda: run_backtest(candles, policy), 5)
    trades = len(run_backtest(candles, policy).trades)
    print(f"load average {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores")
    print(f"1,000,000 minutes, TIMEFRAME 1h with an @4h filter and a stop loss, {trades:,} trades:")
    print(f"  whole `omniwise.py backtest --json` process, cached CSV  {wall:5.2f} s ({cpu:.2f} s CPU)  "
          f"(goal <= 0.8 s)")
    print(f"  of which: hourly and 4-hour candles built {frames_s * 1e3:.0f} ms, decisions {decide_s * 1e3:.0f} ms, "
          f"whole backtest {run_s * 1e3:.0f} ms")


def live(folder: Path) -> None:
    (folder / "strategy.txt").write_text(LIVE)
    policy = compile_strategy(LIVE)
    days = warmup.history_needed(policy).days
    db = store.connect(folder / "omniwise.db")
    broker = PaperBroker(db, "BENCH", 1.0, 0.001)
    trader = Trader(db, "BENCH", PolicyLoader(folder / "strategy.txt"), broker, clock=time.time)
    rng = np.random.default_rng(2)
    count = policy.window + 2 * 1440  # the look-back, then two days timed
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, count)))
    start_ms = 1_700_000_000_000 // 14_400_000 * 14_400_000
    candles = [Candle(start_ms + i * 60_000, float(o), float(max(o, c) * 1.0005), float(min(o, c) * 0.9995),
                      float(c), 1.0, start_ms + i * 60_000 + 59_999, 0.0, 0, 0.0, 0.0)
               for i, (o, c) in enumerate(zip(np.concatenate(([close[0]], close[:-1])), close))]
    trader.prepend_history(candles[:policy.window], policy.window)
    steps, deciding, cpu = [], [], []  # wall s, wall s of deciding minutes, CPU s of this thread
    for candle in candles[policy.window:]:
        started, started_cpu = time.perf_counter(), time.thread_time()
        trader.on_candle(candle)
        took = time.perf_counter() - started
        steps.append(took)
        cpu.append(time.thread_time() - started_cpu)
        if policy.closes_window(candle.open_time_ms):
            deciding.append(took)
    p50, p99 = p50_p99_ms(sorted(steps))
    d50, d99 = p50_p99_ms(sorted(deciding))
    c50, c99 = p50_p99_ms(sorted(cpu))
    print(f"live step, TIMEFRAME 1h with SMA(175)@4h: a window of {len(trader.window):,} minutes "
          f"({days:.1f} days), {len(steps):,} minutes timed:")
    print(f"  every minute        p50 {p50:.2f} ms, p99 {p99:.2f} ms  (goal p99 <= 5 ms)")
    print(f"  minutes that decide p50 {d50:.2f} ms, p99 {d99:.2f} ms  ({len(deciding)} hourly decisions)")
    print(f"  CPU time a minute   p50 {c50:.2f} ms, p99 {c99:.2f} ms  (what a busy machine stretches into wall time)")
    print(f"load average {os.getloadavg()[0]:.1f} (1 min)")
    db.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        backtest(Path(folder))
    with tempfile.TemporaryDirectory() as folder:
        live(Path(folder))


if __name__ == "__main__":
    main()

"""Shorts' speed: a reversing strategy (long on MA4 > MA9, short on MA4 < MA9: always in the market, a
change of side at every cross) over 1,000,000 candles through the whole `omniwise.py backtest --json`
process, and the same with mirrored risk exits; beside it the long-only seed on the same file.

Goal (issue 22): the reversing strategy over 1,000,000 candles <= 0.8 s as a whole process (CSV from the
parsed-candle cache, startup, JSON out). Figures are the best of 5 runs (wall and CPU seconds); the load
average is printed with them, since other work on the machine stretches the wall time.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_backtest import process_seconds, write_million  # noqa: E402

from core.backtest import run_backtest  # noqa: E402
from core.candle_cache import load_candles_cached  # noqa: E402
from core.dsl import compile_strategy  # noqa: E402
from timing import best_of  # noqa: E402

SEED = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
REVERSING = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SHORT\n"
WITH_EXITS = REVERSING + "STOP LOSS 0.3%\nTAKE PROFIT 0.5%\nTRAILING STOP 0.25%\n"
GOAL_S = 0.8


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        big = Path(folder) / "big.csv"
        write_million(big)
        candles = load_candles_cached(big)  # writes the cache the processes below read
        print(f"1,000,000 candles; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name, text in (("long only (seed)", SEED), ("reversing", REVERSING), ("reversing + exits", WITH_EXITS)):
            strategy = Path(folder) / "s.txt"
            strategy.write_text(text)
            command = [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(big), "--strategy",
                       str(strategy), "--json"]
            wall_s, cpu_s = process_seconds(command, 5)
            policy = compile_strategy(text)
            engine_s = best_of(lambda: run_backtest(candles, policy), 5)
            result = run_backtest(candles, policy)
            shorts = int(result.table.is_short.sum())
            verdict = "" if text == SEED else (" (goal <= 0.8 s: met)" if wall_s <= GOAL_S else " (goal <= 0.8 s: MISSED)")
            print(f"{name:<18} process {wall_s:.3f} s wall, {cpu_s:.3f} s CPU{verdict}; engine {engine_s * 1000:.0f} ms; "
                  f"{len(result.table):,} trades ({shorts:,} short)")
        print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

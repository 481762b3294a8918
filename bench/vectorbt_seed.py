"""The seed strategy (and a 100-combination sweep of it) in vectorbt, for bench_backtest.py to compare.

Run with a Python that has vectorbt (a scratch venv, not a dependency of Omniwise):
    python bench/vectorbt_seed.py CANDLES.csv
Prints one JSON line: seconds for the CSV read, one backtest, and the sweep (fast 2..11 x slow 12..30..2).
Long while the fast average is above the slow one, flat while below, filled at the next open, 0.1 % fee.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd
import vectorbt as vbt


def signals(close: pd.Series, fast: list[int], slow: list[int]):
    fast_ma = vbt.MA.run(close, fast, short_name="fast")
    slow_ma = vbt.MA.run(close, slow, short_name="slow")
    return fast_ma.ma_crossed_above(slow_ma), fast_ma.ma_crossed_below(slow_ma)


def backtest(frame: pd.DataFrame, fast: list[int], slow: list[int]):
    entries, exits = signals(frame["close"], fast, slow)
    # A decision on candle t fills at t+1's open, as in Omniwise.
    next_open = frame["open"].shift(-1).ffill()
    return vbt.Portfolio.from_signals(frame["close"], entries, exits, price=next_open, fees=0.001, freq="1min")


def main(path: str) -> None:
    start = time.perf_counter()
    frame = pd.read_csv(path)
    read_s = time.perf_counter() - start
    backtest(frame, [4], [9]).total_return()  # compile numba first: a user pays this once per session
    start = time.perf_counter()
    one = backtest(frame, [4], [9]).total_return()
    one_s = time.perf_counter() - start
    pairs = [(f, s) for f in range(2, 12) for s in range(12, 31, 2)]
    start = time.perf_counter()
    returns = []
    for i in range(0, len(pairs), 10):  # ten columns at a time: 100 x 1M at once does not fit comfortably
        chunk = pairs[i:i + 10]
        returns += list(np.ravel(backtest(frame, [f for f, _ in chunk], [s for _, s in chunk]).total_return()))
    sweep_s = time.perf_counter() - start
    print(json.dumps({"read_s": read_s, "one_s": one_s, "sweep_s": sweep_s, "sweep_runs": len(returns),
                      "one_return": float(np.ravel(one)[0])}))


if __name__ == "__main__":
    main(sys.argv[1])

"""Backtest speed, measured side by side in one run: this engine and backtrader on the same strategy and
data (the seed SMA(4)/SMA(9) on the ETHBTC history), and the 1,000,000-candle backtest with its CSV load.

Goals (issue 7): >= 100 times backtrader's candles per second; 1,000,000 candles <= 2 s including the
CSV load.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.backtest import load_candles, run_backtest  # noqa: E402
from core.dsl import compile_strategy  # noqa: E402
from timing import best_of  # noqa: E402

ETHBTC = ROOT / "data" / "replay" / "ETHBTC-1m.csv"
SEED = (ROOT / "data" / "strategy.txt").read_text()


def backtrader_seconds(candles, csv_path: Path) -> float:
    import backtrader as bt

    columns = [candles["open_time_ms"] // 1000] + [candles[k] for k in ("open", "high", "low", "close", "volume")]
    with open(csv_path, "w") as out:
        out.writelines(",".join(map(repr, row)) + "\n" for row in zip(*(c.tolist() for c in columns)))

    class Seed(bt.Strategy):
        def __init__(self):
            self.fast, self.slow = bt.ind.SMA(period=4), bt.ind.SMA(period=9)

        def next(self):
            if self.fast[0] > self.slow[0] and not self.position:
                self.buy(size=self.broker.getcash() / self.data.close[0] * 0.98)
            elif self.fast[0] < self.slow[0] and self.position:
                self.close()

    start = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.GenericCSVData(dataname=str(csv_path), dtformat=1, datetime=0, open=1, high=2, low=3,
                                            close=4, volume=5, openinterest=-1, timeframe=bt.TimeFrame.Minutes))
    cerebro.addstrategy(Seed)
    cerebro.broker.setcash(1e12)
    cerebro.broker.setcommission(commission=0.001)
    cerebro.run()
    return time.perf_counter() - start


def main() -> None:
    policy = compile_strategy(SEED)
    with tempfile.TemporaryDirectory() as folder:
        candles = load_candles(ETHBTC)
        n = len(candles["close"])
        ours_s = best_of(lambda: run_backtest(load_candles(ETHBTC), policy), 5)
        theirs_s = backtrader_seconds(candles, Path(folder) / "ethbtc.csv")
        print(f"seed strategy on ETHBTC ({n:,} candles), CSV load included on both sides:")
        print(f"  omniwise    {ours_s * 1e3:8.1f} ms  {n / ours_s:12,.0f} candles/s")
        print(f"  backtrader  {theirs_s * 1e3:8.1f} ms  {n / theirs_s:12,.0f} candles/s")
        print(f"  ratio       {theirs_s / ours_s:8.0f} x (goal >= 100 x)")
        run_s = best_of(lambda: run_backtest(candles, policy), 20)
        print(f"  omniwise without the CSV load: {run_s * 1e3:.2f} ms, {n / run_s:,.0f} candles/s")

        big = Path(folder) / "big.csv"
        rng = np.random.default_rng(1)
        count = 1_000_000
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, count)))
        opens = np.concatenate(([close[0]], close[:-1]))
        times = 1_516_423_980_000 + np.arange(count, dtype=np.int64) * 60_000
        with open(big, "w") as out:
            out.write("open_time,open,high,low,close,volume\n")
            out.writelines(f"{t},{o:.8f},{max(o, c) * 1.0005:.8f},{min(o, c) * 0.9995:.8f},{c:.8f},{v:.8f}\n"
                           for t, o, c, v in zip(times.tolist(), opens.tolist(), close.tolist(),
                                                 rng.uniform(1, 100, count).tolist()))
        size_mib = big.stat().st_size / 2**20
        load_s = best_of(lambda: load_candles(big), 3)
        total_s = best_of(lambda: run_backtest(load_candles(big), policy), 3)
        trades = len(run_backtest(load_candles(big), policy).trades)
        print(f"1,000,000-candle seed backtest ({size_mib:.0f} MiB CSV): {total_s:.2f} s in all, "
              f"{load_s:.2f} s of it the CSV load, {trades:,} trades (goal <= 2 s)")


if __name__ == "__main__":
    main()

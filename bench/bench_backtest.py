"""Backtest speed, measured side by side in one run: this engine and backtrader on the same strategy and
data (the seed SMA(4)/SMA(9) on the ETHBTC history), then a 1,000,000-candle file through the whole
`omniwise.py backtest` process, a 100-combination sweep of the seed, and what a user would pick
instead on that same file: backtrader, vectorbt, and the pyarrow / polars CSV readers.

Goals (issue 7): >= 100 times backtrader's candles per second. Issue 15: one backtest over 1,000,000
candles as a whole process (CSV read, startup, JSON out) <= 0.8 s; a sweep of 100 combinations over
them <= 10 s on 2 cores. Aimed at with margin for a busy machine: 0.6 s and 7 s.

vectorbt, pyarrow and polars are not dependencies: give a scratch venv that has them,
    python -m venv /tmp/vbt && /tmp/vbt/bin/pip install vectorbt         (VECTORBT_PYTHON)
    python -m venv /tmp/rd && /tmp/rd/bin/pip install pyarrow polars     (READERS_PYTHON)
and they are measured too; without one, its line says so. `--quick` skips backtrader on 1M candles.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.backtest import load_candles, run_backtest  # noqa: E402
from core.candle_cache import cache_path, load_candles_cached  # noqa: E402
from core.dsl import compile_strategy  # noqa: E402
from core.sweep_runs import available_cores  # noqa: E402
from timing import best_of  # noqa: E402

ETHBTC = ROOT / "data" / "replay" / "ETHBTC-1m.csv"
SEED = (ROOT / "data" / "strategy.txt").read_text()
SWEEP_100 = "IF MA{fast: 2..11} > MA{slow: 12..30..2} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"
VECTORBT_PYTHON = os.environ.get("VECTORBT_PYTHON", "/tmp/vbt/bin/python")
READERS_PYTHON = os.environ.get("READERS_PYTHON", "/tmp/rd/bin/python")


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


def write_million(path: Path, count: int = 1_000_000) -> None:
    """A random-walk klines CSV (open_time,open,high,low,close,volume) of `count` minutes."""
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, count)))
    opens = np.concatenate(([close[0]], close[:-1]))
    times = 1_516_423_980_000 + np.arange(count, dtype=np.int64) * 60_000
    with open(path, "w") as out:
        out.write("open_time,open,high,low,close,volume\n")
        out.writelines(f"{t},{o:.8f},{max(o, c) * 1.0005:.8f},{min(o, c) * 0.9995:.8f},{c:.8f},{v:.8f}\n"
                       for t, o, c, v in zip(times.tolist(), opens.tolist(), close.tolist(),
                                             rng.uniform(1, 100, count).tolist()))


def process_seconds(args: list[str], repeat: int, before=None) -> tuple[float, float]:
    """The fastest of `repeat` runs of a whole process (startup included), output thrown away: wall and CPU s.

    CPU seconds (user + system of the process and its workers) show the cost when other work shares
    the machine and stretches the wall time.
    """
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        if before:
            before()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, (wall, after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime))
    return best


def imports_of_backtest(big: Path, seed: Path) -> tuple[float, bool]:
    """`backtest_cli`'s cumulative import time (s) and whether any of the web stack was imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "omniwise.py"), "backtest", "--candles",
                             str(big), "--strategy", str(seed), "--json"], capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in result.stderr.splitlines() if line.startswith("import time:")]
    cumulative = {row[2].strip(): int(row[1]) for row in rows if row[1].strip().isdigit()}
    web = any(name in cumulative for name in ("flask", "werkzeug", "jinja2", "sqlite_utils"))
    return cumulative.get("backtest_cli", 0) / 1e6, web


def scratch(python: str, script: str, big: Path) -> dict | None:
    if not Path(python).exists():
        return None
    result = subprocess.run([python, str(ROOT / "bench" / script), str(big)], capture_output=True, text=True)
    return json.loads(result.stdout.splitlines()[-1]) if result.returncode == 0 else None


def million(folder: Path, quick: bool) -> None:
    big, seed, sweep = folder / "big.csv", folder / "seed.txt", folder / "sweep.txt"
    write_million(big)
    seed.write_text(SEED)
    sweep.write_text(SWEEP_100)
    size_mib = big.stat().st_size / 2**20
    command = [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(big), "--strategy"]
    def drop_cache() -> None:
        cache_path(big).unlink(missing_ok=True)

    cold_s, cold_cpu = process_seconds(command + [str(seed), "--json"], 2, before=drop_cache)
    warm_s, warm_cpu = process_seconds(command + [str(seed), "--json"], 5)
    import_s, web = imports_of_backtest(big, seed)
    parse_s = best_of(lambda: load_candles(big), 2)
    cached_s = best_of(lambda: load_candles_cached(big), 5)
    policy = compile_strategy(SEED)
    candles = load_candles_cached(big)
    run_s = best_of(lambda: run_backtest(candles, policy), 5)
    trades = len(run_backtest(candles, policy).trades)
    print(f"\nload average before the 1M runs: {os.getloadavg()[0]:.1f} on {available_cores()} cores")
    print(f"1,000,000 candles ({size_mib:.0f} MiB CSV), seed strategy, {trades:,} trades; "
          f"whole `omniwise.py backtest --json` process:")
    print(f"  first run (parses the CSV, writes the cache)  {cold_s:6.2f} s ({cold_cpu:.2f} s CPU)")
    print(f"  later runs (cache next to the CSV)            {warm_s:6.2f} s ({warm_cpu:.2f} s CPU)   (goal <= 0.8 s, aim <= 0.6 s)")
    print(f"  of which: imports {import_s:.2f} s (web stack imported: {'yes' if web else 'no'}), "
          f"backtest {run_s:.2f} s")
    print("CSV readers, 1,000,000 candles:")
    print(f"  numpy.loadtxt (ours, first run)  {parse_s:6.3f} s")
    print(f"  parsed-array cache (ours)        {cached_s:6.3f} s")
    readers = scratch(READERS_PYTHON, "readers_compare.py", big)
    if readers:
        print(f"  pyarrow.csv                      {readers['pyarrow_read_s']:6.3f} s + {readers['pyarrow_import_s']:.3f} s "
              "import")
        print(f"  polars.read_csv                  {readers['polars_read_s']:6.3f} s + {readers['polars_import_s']:.3f} s "
              "import")
    else:
        print(f"  pyarrow, polars: not measured (no {READERS_PYTHON})")
    cores = available_cores()
    sweep_s, sweep_cpu = process_seconds(command + [str(sweep)], 2)
    print(f"sweep of 100 combinations (MA{{2..11}} x MA{{12..30..2}}) over the same 1,000,000 candles, "
          f"{cores} cores: {sweep_s:.1f} s in all, {sweep_cpu:.1f} s CPU (goal <= 10 s on 2 cores, aim <= 7 s)")
    vbt = scratch(VECTORBT_PYTHON, "vectorbt_seed.py", big)
    if vbt:
        print(f"  vectorbt: one backtest {vbt['one_s']:.2f} s (+ {vbt['read_s']:.2f} s pandas CSV read, after numba "
              f"compiled), {vbt['sweep_runs']} combinations {vbt['sweep_s']:.1f} s")
    else:
        print(f"  vectorbt: not measured (no {VECTORBT_PYTHON})")
    if quick:
        print("  backtrader: skipped (--quick)")
    else:
        bt_s = backtrader_seconds(candles, folder / "bt.csv")
        print(f"  backtrader: one backtest {bt_s:.1f} s (100 combinations would take about {bt_s * 100 / 60:.0f} min)")


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

        million(Path(folder), "--quick" in sys.argv)


if __name__ == "__main__":
    main()

"""Replay throughput: read_agg_trades + TickBuffer against a bare csv.reader loop over the same file.

Builds a 1,000,000-tick aggTrades CSV in a temporary folder by repeating the real XRPETH day with
times moved on a day and ids moved past the previous copy, then prints ticks/s of each path, their
ratio, the process's memory, and the cost of exact (integer) volume sums against float sums.

    .venv/bin/python bench/bench_replay.py [TICKS]
"""

from __future__ import annotations

import csv
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.candles import DAY_MS, TickBuffer, _round  # noqa: E402
from core.feeds import ReplayFeed, read_agg_trades  # noqa: E402

SOURCE = Path("/work/shared/data/binance/XRPETH-aggTrades-2019-10-11.csv")
if not SOURCE.exists():
    SOURCE = ROOT.parent / "shared" / "data" / "binance" / SOURCE.name
ROUNDS = 3


def write_ticks(path: Path, count: int) -> None:
    """Repeat the real day until `count` rows, each copy a day later with fresh ids."""
    with open(SOURCE, newline="") as file:
        rows = list(csv.reader(file))
    id_span = int(rows[-1][0]) - int(rows[0][0]) + 1
    trade_span = int(rows[-1][4]) - int(rows[0][3]) + 1
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        written, copy = 0, 0
        while written < count:
            for agg_id, price, qty, first_id, last_id, time_ms, is_maker, is_best in rows[:count - written]:
                writer.writerow([int(agg_id) + copy * id_span, price, qty, int(first_id) + copy * trade_span,
                                 int(last_id) + copy * trade_span, int(time_ms) + copy * DAY_MS, is_maker, is_best])
            written += min(len(rows), count - written)
            copy += 1


def bare_csv(path: Path) -> int:
    rows = 0
    with open(path, newline="") as file:
        for _ in csv.reader(file):
            rows += 1
    return rows


def read_and_buffer(path: Path) -> int:
    buffer = TickBuffer()
    add = buffer.add
    ticks = candles = 0
    for tick in read_agg_trades(path):
        ticks += 1
        candles += len(add(tick))
    return ticks


def replay_and_buffer(path: Path) -> int:
    buffer = TickBuffer()
    add = buffer.add
    ticks = 0
    for tick in ReplayFeed(path, speed=0):
        ticks += 1
        add(tick)
    return ticks


def best_seconds(function, path: Path) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(ROUNDS):
        gc.collect()
        start = time.perf_counter()
        result = function(path)
        best = min(best, time.perf_counter() - start)
    return best, result


def exact_sums(ticks) -> tuple[int, int]:
    """The per-tick arithmetic of TickBuffer: quantity in units of 1e-8, price times quantity in 1e-16."""
    volume_e8 = quote_e16 = 0
    for price, qty, *_ in ticks:
        qty_e8 = _round(qty * 1e8)
        volume_e8 += qty_e8
        quote_e16 += _round(price * 1e8) * qty_e8
    return volume_e8, quote_e16


def float_sums(ticks) -> tuple[float, float]:
    """The naive float sums, only to price the exact ones."""
    volume = quote = 0.0
    for price, qty, *_ in ticks:
        volume += qty
        quote += price * qty
    return volume, quote


def arithmetic_cost(path: Path) -> tuple[float, float, int]:
    """Seconds of exact and of float sums over the ticks of `path`, held in memory."""
    ticks = list(read_agg_trades(path))
    timings = []
    for sums in (exact_sums, float_sums):
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            sums(ticks)
            best = min(best, time.perf_counter() - start)
        timings.append(best)
    return timings[0], timings[1], len(ticks)


def rss_mib() -> tuple[float, float]:
    """(current VmRSS, peak ru_maxrss) in MiB."""
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "aggTrades.csv"
        write_ticks(path, count)
        size_mib = path.stat().st_size / 2**20
        print(f"file: {count:,} ticks, {size_mib:.1f} MiB (XRPETH 2019-10-11 repeated); best of {ROUNDS}")
        rss_before = rss_mib()
        bare_s, rows = best_seconds(bare_csv, path)
        ours_s, ticks = best_seconds(read_and_buffer, path)
        replay_s, replayed = best_seconds(replay_and_buffer, path)
        assert rows == ticks == replayed == count, (rows, ticks, replayed)
        rss_after = rss_mib()
        print(f"bare csv.reader loop:              {bare_s:6.3f} s  {count / bare_s:12,.0f} rows/s")
        print(f"read_agg_trades + TickBuffer.add:  {ours_s:6.3f} s  {count / ours_s:12,.0f} ticks/s"
              f"  ratio {bare_s / ours_s:.2f} of csv.reader")
        print(f"ReplayFeed(speed=0) + TickBuffer:  {replay_s:6.3f} s  {count / replay_s:12,.0f} ticks/s"
              f"  ratio {bare_s / replay_s:.2f} of csv.reader")
        print(f"RSS before: {rss_before[0]:.1f} MiB; after {count:,} ticks (x{2 * ROUNDS} passes): "
              f"{rss_after[0]:.1f} MiB now, {rss_after[1]:.1f} MiB peak")
        exact_s, float_s, summed = arithmetic_cost(path)
        print(f"volume sums over {summed:,} ticks: exact (integer units) {exact_s:.3f} s, float {float_s:.3f} s: "
              f"exactness costs {(exact_s - float_s) / summed * 1e9:.0f} ns a tick")


if __name__ == "__main__":
    main()

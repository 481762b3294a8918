"""Running many backtests: every combination of a sweep on all cores, ranked, and checked out of sample.

Workers are forked after the candles are loaded, so they share the arrays instead of copying them.
Out of sample: `--split` ranks on the first part of the candles and runs the best again on the rest;
`--walk-forward K` does so over K folds (train on everything before a block, or with `rolling` on the
block before it alone; test on the block) and joins the tested blocks into one account, as if the best
of each fold had been traded. A block's indicators are warmed up on the candles before it, and a test
block closes a trade still open at its end (DESIGN.md "Sweeps").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping

import numpy as np

from core.backtest import BacktestResult, run_backtest
from core.dsl import compile_strategy
from core.dsl.sweeps import Combination
from core.metrics import LOWER_IS_BETTER, NAMES, YEAR_DAYS, Metrics, compute_metrics, deflated_sharpe, join

TOP_SHOWN = 20
TOP_RECHECKED = 5
RANKABLE = tuple(name for name in NAMES if name != "days")
FALLBACK_METRIC = "return_pct"  # never null

Candles = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Run:
    """One combination's backtest: its values, its figures and, when asked for, its `--json` object."""

    params: dict[str, int | float]
    text: str
    metrics: Metrics
    report: dict | None  # for `--json`: BacktestResult.summary_json(), or as_json() with the trades


@dataclasses.dataclass(frozen=True)
class Fold:
    """One walk-forward fold: where its training and test candles are, and its runs (ranked)."""

    train: slice
    test: slice
    ranked: list[Run]
    rechecked: list[Run]  # the best TOP_RECHECKED of `ranked`, run on the test candles


# Set in the parent before the pool forks; the workers read them instead of receiving copies.
_JOB: dict = {}
INDICATOR_CACHE_BYTES = 256 * 2**20  # per process: 32 indicators over a million candles


class IndicatorCache(dict):
    """Indicator values over one set of candles, shared by a process's combinations, up to a memory limit.

    MA{fast: 2..11} x MA{slow: 12..30..2} needs 20 distinct averages, not 200: each is computed once
    per process. Past the limit new values are not kept (computed again when needed), so a sweep over
    hundreds of distinct indicators costs time, never all the memory.
    """

    def __init__(self, limit_bytes: int = INDICATOR_CACHE_BYTES):
        super().__init__()
        self.limit_bytes, self.kept_bytes = limit_bytes, 0

    def __setitem__(self, key, value) -> None:
        size = getattr(value, "nbytes", 0)
        if key not in self and self.kept_bytes + size <= self.limit_bytes:
            super().__setitem__(key, value)
            self.kept_bytes += size


def run_combinations(combinations: list[Combination], candles: Candles, fee_rate: float, fill: str,
                     keep_reports: bool = False, jobs: int | None = None,
                     progress: Callable[[int], None] | None = None, with_trades: bool = False,
                     warmup: int = 0, close_at_end: bool = False, slippage: float = 0.0) -> list[Run]:
    """Backtest every combination over `candles` (in the given order), on `jobs` processes (all cores;
    core.sweep_cluster runs them on a Dask cluster instead).

    `keep_reports` keeps each run's JSON object, its trades too with `with_trades`; `warmup`,
    `close_at_end` (an out-of-sample block) and `slippage` as in `run_backtest`."""
    settings = RunSettings(fee_rate, fill, keep_reports, with_trades, warmup, close_at_end, slippage)
    jobs = min(jobs or available_cores(), len(combinations))
    keep_freed_memory()
    # Each forked worker fills its own copy of the (empty) cache; it dies with the pool.
    _JOB.update(candles=candles, settings=settings, indicators=IndicatorCache())
    results: list[Run | None] = [None] * len(combinations)
    tasks = list(enumerate(combinations))
    try:
        if jobs <= 1:
            for done, task in enumerate(tasks, start=1):
                index, run = _run_one(task)
                results[index] = run
                if progress:
                    progress(done)
        else:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                for done, (index, run) in enumerate(pool.imap_unordered(_run_one, tasks), start=1):
                    results[index] = run
                    if progress:
                        progress(done)
    finally:
        _JOB.clear()
    return results  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How every combination of a sweep is run (the same on local cores and on a cluster)."""

    fee_rate: float
    fill: str
    keep_reports: bool = False
    with_trades: bool = False
    warmup: int = 0
    close_at_end: bool = False
    slippage: float = 0.0


def run_one(combination: Combination, candles: Candles, settings: RunSettings, indicators: dict | None) -> Run:
    """One combination's backtest as a sweep row."""
    result = run_backtest(candles, compile_strategy(combination.text), fee_rate=settings.fee_rate,
                          fill=settings.fill, indicator_cache=indicators, warmup=settings.warmup,
                          close_at_end=settings.close_at_end, slippage=settings.slippage)
    report = None
    if settings.keep_reports:
        report = result.as_json() if settings.with_trades else result.summary_json()
    return Run(combination.params, combination.text, result.metrics, report)


def _run_one(task: tuple[int, Combination]) -> tuple[int, Run]:
    index, combination = task
    return index, run_one(combination, _JOB["candles"], _JOB["settings"], _JOB["indicators"])


def keep_freed_memory() -> None:
    """Let glibc keep freed array memory for the next backtest instead of returning it to the system.

    Each backtest of a million candles allocates and frees dozens of 8 MB arrays; by default glibc maps
    and unmaps each one, and the page faults cost a quarter of a sweep's time (bench_backtest.py: 3.7 s
    of system time in 100 combinations, 0.3 s with this).
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name or not hasattr(ctypes.CDLL(libc_name), "mallopt"):
        return
    libc = ctypes.CDLL(libc_name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest: arrays up to 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 64 * 2**20)


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank(runs: list[Run], metric: str) -> list[Run]:
    """Best first by `metric` (lower first for drawdown and fees).

    A null that means "no loss" (profit factor without a losing trade, sortino without a losing day and
    a positive mean) ranks above every number, any other null below every number; nulls of one kind
    are ordered by return_pct. Ties keep the sweep's order.
    """
    if metric not in RANKABLE:
        raise ValueError(f"cannot rank by {metric!r}; choose one of {', '.join(RANKABLE)}")
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def key(run: Run):
        value = getattr(run.metrics, metric)
        if value is None:
            return (0 if run.metrics.is_no_loss(metric) else 2, -run.metrics.return_pct)
        return (1, sign * value)

    return sorted(runs, key=key)


def choose_metric(runs: list[Run], metric: str) -> tuple[str, str | None]:
    """The metric to rank by: `metric`, or return_pct when `metric` is null for every run, with a note
    saying so (else None)."""
    if metric == FALLBACK_METRIC or not runs or any(getattr(run.metrics, metric) is not None for run in runs):
        return metric, None
    reason = runs[0].metrics.why_null.get(metric, "undefined")
    return FALLBACK_METRIC, (f"{metric} is null for every combination ({reason}): "
                             f"ranked by {FALLBACK_METRIC} instead")


def deflated_sharpe_of_best(ranked: list[Run]) -> float | None:
    """The deflated Sharpe ratio of the best run, `ranked[0]`, given every run tried (core.metrics)."""
    if not ranked:
        return None
    daily = [run.metrics.sharpe / math.sqrt(YEAR_DAYS) for run in ranked if run.metrics.sharpe is not None]
    if len(ranked) > 1 and len(daily) < 2:
        return None  # no spread of Sharpe ratios to deflate by
    variance = float(np.var(daily, ddof=1)) if len(daily) > 1 else 0.0
    return deflated_sharpe(ranked[0].metrics, len(ranked), variance)


def split_point(n: int, fraction: float) -> int:
    """The first out-of-sample candle of a split at `fraction`; ValueError if either side would be empty."""
    if not 0 < fraction < 1:
        raise ValueError(f"--split takes a fraction between 0 and 1, such as 0.7, not {fraction:g}")
    point = round(n * fraction)
    if point < 2 or n - point < 2:
        raise ValueError(f"--split {fraction:g} of {n:,} candles leaves fewer than 2 candles on one side")
    return point


def walk_forward_folds(n: int, folds: int, rolling: bool = False) -> list[tuple[slice, slice]]:
    """K folds: the candles cut into K+1 blocks; fold i tests on block i and trains on blocks 0..i-1
    (anchored), or on block i-1 alone (`rolling`: a training window of fixed length)."""
    if folds < 1:
        raise ValueError("--walk-forward takes a number of folds of at least 1")
    edges = [round(n * i / (folds + 1)) for i in range(folds + 2)]
    if min(b - a for a, b in zip(edges, edges[1:])) < 2:
        raise ValueError(f"--walk-forward {folds} cuts {n:,} candles into blocks of fewer than 2 candles")
    return [(slice(edges[i - 1] if rolling else 0, edges[i]), slice(edges[i], edges[i + 1]))
            for i in range(1, folds + 1)]


def block(candles: Candles, where: slice) -> tuple[dict[str, np.ndarray], int]:
    """The candles up to the end of `where` and how many of them only warm the indicators up: a block
    run with `warmup` starts with indicators computed over every candle before it."""
    return part(candles, slice(0, where.stop)), where.start


def part(candles: Candles, where: slice) -> dict[str, np.ndarray]:
    """The candles in `where`."""
    return {name: series[where] for name, series in candles.items()}


def recheck(runs: list[Run], candles: Candles, where: slice, fee_rate: float, fill: str,
            keep_reports: bool = False, jobs: int | None = None, with_trades: bool = False,
            slippage: float = 0.0) -> list[Run]:
    """The same combinations run again over the out-of-sample block `where` of `candles`: warmed up on
    the candles before it, a trade still open at its end closed at its last close."""
    combinations = [Combination(run.params, run.text) for run in runs]
    history, warmup = block(candles, where)
    return run_combinations(combinations, history, fee_rate, fill, keep_reports, jobs, with_trades=with_trades,
                            warmup=warmup, close_at_end=True, slippage=slippage)


def joined_out_of_sample(folds: list[Fold], candles: Candles, fee_rate: float, fill: str,
                         slippage: float = 0.0) -> tuple[Metrics, list[BacktestResult]]:
    """The best of each fold traded on its test block (warmed up, closed at its end), the blocks joined
    into one account."""
    results = []
    for fold in folds:
        history, warmup = block(candles, fold.test)
        results.append(run_backtest(history, compile_strategy(fold.ranked[0].text), fee_rate=fee_rate, fill=fill,
                                    warmup=warmup, close_at_end=True, slippage=slippage))
    return compute_metrics(join([result.ledger for result in results])), results

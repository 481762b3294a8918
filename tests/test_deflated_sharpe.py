"""The deflated Sharpe ratio of a sweep's best row (Bailey & López de Prado, "The Deflated Sharpe Ratio",
2014): the paper's worked example, and a sweep recomputed independently (pandas for the daily returns,
moments by hand, the normal distribution from math.erf)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.backtest import load_candles, run_backtest
from core.dsl import compile_strategy
from core.metrics import Metrics, deflated_sharpe
from tests.test_backtest_cli import backtest, fixed, write


def figures(sharpe, days, skewness, kurtosis):
    return Metrics(0.0, 0.0, 1.0, 1, None, None, None, 0.0, sharpe, None, None, 0.0, days, {}, skewness, kurtosis)


def test_the_papers_worked_example_gives_0_9004():
    # Section "a numerical example": an annualised SR of 2.5 over 5 years of daily returns (T = 1,250,
    # 250 days a year), 100 trials whose annualised SRs vary by 0.5, skewness -3, kurtosis 10: DSR 0.9004.
    daily_sr = 2.5 / math.sqrt(250)
    m = figures(daily_sr * math.sqrt(365), 1250, -3.0, 10.0)  # our Sharpe is annualised with 365 days
    assert deflated_sharpe(m, 100, 0.5 / 250) == pytest.approx(0.9004, abs=5e-5)
    # One trial is the probabilistic Sharpe ratio against zero: higher; more trials deflate more.
    assert deflated_sharpe(m, 1, 0.5 / 250) > deflated_sharpe(m, 100, 0.5 / 250) > deflated_sharpe(m, 1000, 0.5 / 250)
    assert deflated_sharpe(figures(None, 20, None, None), 100, 0.002) is None


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def phi_inverse(p):
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if phi(middle) < p else (low, middle)
    return (low + high) / 2


def daily_returns_by_pandas(equity, open_time_ms):
    """Complete UTC days of a history that starts at a midnight and ends at 23:59: each day's last close."""
    series = pd.Series(equity, index=pd.to_datetime(open_time_ms, unit="ms", utc=True))
    closes = series.resample("1D").last()
    return closes.div(closes.shift(1).fillna(1.0)).sub(1.0).to_numpy()


def random_walk_csv(path, days=40, seed=3, drift=2e-5):
    count = days * 1440
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(drift, 0.002, count)))
    opens = np.concatenate(([100.0], close[:-1]))
    times = 1_700_006_400_000 + np.arange(count, dtype=np.int64) * 60_000  # from 2023-11-15 00:00 UTC
    with open(path, "w") as out:
        out.write("open_time,open,high,low,close,volume\n")
        out.writelines(f"{t},{o!r},{max(o, c)!r},{min(o, c)!r},{c!r},1.0\n"
                       for t, o, c in zip(times.tolist(), opens.tolist(), close.tolist()))


def test_a_sweeps_best_row_carries_its_deflated_sharpe_recomputed_independently(tmp_path):
    random_walk_csv(tmp_path / "walk.csv")
    strategy = write(tmp_path, "sweep.txt", "IF MA{fast: 3..5} > MA{slow: 60,240} THEN BUY\n"
                                            "IF MA{fast} < MA{slow} THEN SELL\n")
    rows = json.loads(backtest("--candles", tmp_path / "walk.csv", "--strategy", strategy, "--json").stdout)
    assert "deflated_sharpe" in rows[0] and all("deflated_sharpe" not in row for row in rows[1:])
    candles = load_candles(tmp_path / "walk.csv")
    sharpes = {}
    for fast in (3, 4, 5):
        for slow in (60, 240):
            result = run_backtest(candles, compile_strategy(fixed(fast, slow)))
            daily = daily_returns_by_pandas(result.equity, candles["open_time_ms"])
            assert len(daily) == 40
            sharpes[fast, slow] = (daily.mean() / daily.std(ddof=1), daily)
    best = (rows[0]["params"]["fast"], rows[0]["params"]["slow"])
    assert best == max(sharpes, key=lambda key: sharpes[key][0])  # ranked by Sharpe, the default
    sr, daily = sharpes[best]
    assert rows[0]["metrics"]["sharpe"] == pytest.approx(sr * math.sqrt(365), abs=1e-6)
    mean = sum(daily) / len(daily)
    sd = math.sqrt(sum((r - mean) ** 2 for r in daily) / len(daily))
    skew = sum((r - mean) ** 3 for r in daily) / len(daily) / sd ** 3
    kurt = sum((r - mean) ** 4 for r in daily) / len(daily) / sd ** 4
    trials = [value for value, _ in sharpes.values()]
    trial_mean = sum(trials) / 6
    variance = sum((t - trial_mean) ** 2 for t in trials) / 5
    gamma = 0.5772156649015329
    sr0 = math.sqrt(variance) * ((1 - gamma) * phi_inverse(1 - 1 / 6) + gamma * phi_inverse(1 - 1 / (6 * math.e)))
    expected = phi((sr - sr0) * math.sqrt(40 - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr ** 2))
    assert 0.01 < expected < 0.99  # a case where the deflation shows
    assert rows[0]["deflated_sharpe"] == pytest.approx(expected, abs=1e-6)
    table = backtest("--candles", tmp_path / "walk.csv", "--strategy", strategy).stdout
    assert f"deflated Sharpe of #1: {expected:.3f}, the probability that its Sharpe ratio is above zero" in table


def test_without_a_sharpe_the_deflated_sharpe_is_null_and_the_table_says_why(tmp_path):
    random_walk_csv(tmp_path / "short.csv", days=5)
    strategy = write(tmp_path, "sweep.txt", "IF MA{fast: 3..4} > MA20 THEN BUY\nIF MA{fast} < MA20 THEN SELL\n")
    rows = json.loads(backtest("--candles", tmp_path / "short.csv", "--strategy", strategy, "--json").stdout)
    assert rows[0]["deflated_sharpe"] is None
    table = backtest("--candles", tmp_path / "short.csv", "--strategy", strategy).stdout
    assert "deflated Sharpe of #1: - (5 complete UTC days, fewer than 30)" in table

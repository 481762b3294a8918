"""Live warm-up from the strategy: how much history a strategy needs, `check` and the editor saying it, and the
worker loading it from Binance's klines (the exchange stand-in) so that its first decision equals the
backtest's over the whole history."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import talib

from core import warmup
from core.backtest import load_candles
from core.dsl import Action, compile_strategy
from tests.conftest import ROOT, SHARED_DATA
from tests.exchange.standin import DAY_START_MS, start_standin
from tests.processes import STARTED, query, stop_worker, wait_until
from tests.test_binance_worker import worker_env

MINUTE = 60_000
HOUR = 3_600_000
ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
KLINES = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"


@pytest.mark.parametrize("text, minutes", [
    ("IF MA4 > MA9 THEN BUY", 300),  # at least 300
    ("IF CLOSE > SMA(500) THEN BUY", 499 + 2),
    ("IF CLOSE CROSSES ABOVE SMA(500) THEN BUY", 499 + 1 + 2),
    # EMA(800): 800 candles plus 28 / alpha to settle below 1e-12
    ("IF CLOSE > EMA(800) THEN BUY", 800 + int(28 / (2 / 801)) + 2),
    # 50 four-hour candles (49 of warm-up and the one in progress), whole windows of 4 h, the 1 h decision's two
    ("TIMEFRAME 1h\nIF CLOSE > SMA(50)@4h THEN BUY", 49 * 240 + 240 + 2 * 60 + 240),
    # nested: SMA(10) of hourly closes read on 15-minute candles inside an EMA of the day
    ("TIMEFRAME 15m\nIF SMA(EMA(3)@1d, 10) > 1 THEN BUY",
     (3 + int(28 / 0.5)) * 1440 + 1440 + 9 * 15 + 2 * 15 + 1440),
])
def test_history_needed_counts_nested_indicators_and_higher_timeframes(text, minutes):
    assert warmup.history_needed(compile_strategy(text)).minutes == minutes


def test_an_ema_over_the_needed_history_agrees_with_the_whole_history_to_10_digits():
    # Independent of the policy: TA-Lib's EMA over the needed minutes only vs over all of them.
    closes = load_candles(ETHBTC)["close"]
    for period in (50, 200, 400):
        need = warmup.history_needed(compile_strategy(f"IF CLOSE > EMA({period}) THEN BUY")).minutes
        whole = talib.EMA(closes, period)
        for end in range(need, len(closes), 997):
            windowed = talib.EMA(closes[end - need:end], period)
            assert windowed[-1] == pytest.approx(whole[end - 1], rel=1e-10, abs=0)
        # and too short a window does not: the extra candles are needed
        short = talib.EMA(closes[len(closes) - 2 * period:], period)[-1]
        assert short != pytest.approx(whole[-1], rel=1e-10, abs=0)


def test_check_says_the_history_needed_and_warns_above_30_days(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("TIMEFRAME 15m\nIF CLOSE > SMA(20)@1h THEN BUY\n")
    long = tmp_path / "long.txt"
    long.write_text("TIMEFRAME 1h\nIF CLOSE > SMA(200)@1d THEN BUY\n")
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "check", str(short), str(long)],
                            capture_output=True, text=True, cwd=ROOT)
    assert (result.returncode, result.stdout) == (0, "")
    lines = result.stderr.splitlines()
    assert lines[0] == f"{short}: note: needs 21.5 hours of history (1,290 one-minute candles)"
    assert lines[1] == f"{long}: note: needs 201.1 days of history (289,560 one-minute candles)"
    assert lines[2].startswith(f"{long}: warning: more than 30 days: the worker loads 201 days of klines")
    assert len(lines) == 3


def test_the_editor_says_the_history_needed(operator):
    answer = operator.post("/admin/algo/validate", data={"strategy": "TIMEFRAME 1h\nIF CLOSE > SMA(200)@1d THEN BUY\n",
                                                         "csrf_token": operator.csrf_token})
    fragment = answer.get_data(as_text=True)
    assert "Live, it needs 201.1 days of history (289,560 one-minute candles)." in fragment
    assert 'id="history-warning"' in fragment
    answer = operator.post("/admin/algo/validate", data={"strategy": "IF MA4 > MA9 THEN BUY\n",
                                                         "csrf_token": operator.csrf_token})
    assert "needs 5.0 hours of history" in answer.get_data(as_text=True)
    assert 'id="history-warning"' not in answer.get_data(as_text=True)


# -- the worker on Binance's stream (the stand-in) ---------------------------------------------------------

EMA_800 = "IF CLOSE > EMA(800) THEN BUY\nIF CLOSE < EMA(800) THEN SELL\n"


def start_paper_worker(data_dir, standin):
    # OMNIWISE_WARMUP_HOURS=1: one hour would leave EMA(800) undefined; the strategy asks for more.
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT,
                              env=worker_env(data_dir, standin, broker="paper", paper_balance=1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    STARTED.append(worker)
    return worker


def backtest_actions(text: str) -> dict[int, str]:
    """The backtest's action on every minute of the day's klines, over the whole day from 00:00."""
    day = load_candles(KLINES)
    actions = compile_strategy(text).decide_all(day)
    return {int(t): Action(a).name for t, a in zip(day["open_time_ms"], actions)}


def strategy_decisions(data_dir, after_ms: int = 0) -> list[tuple[int, str]]:
    return query(data_dir, "SELECT candle_open_time_ms, action FROM decisions WHERE reason = 'strategy' "
                           "AND candle_open_time_ms >= ? ORDER BY 1", after_ms)


@pytest.fixture
def standin_at_16h():
    exchange = start_standin(start_ms=DAY_START_MS + 16 * HOUR, speed=300)  # 960 minutes of the day have passed
    yield exchange
    exchange.close()


def test_a_worker_started_mid_day_with_ema_800_decides_as_the_backtest_from_its_first_candle(data_dir,
                                                                                            standin_at_16h):
    (data_dir / "strategy.txt").write_text(EMA_800)
    worker = start_paper_worker(data_dir, standin_at_16h)
    wait_until(lambda: len(strategy_decisions(data_dir)) >= 20, worker, timeout_s=60, what="20 decisions")
    stop_worker(worker)
    # The whole day up to the start was loaded from klines (EMA(800) asks for 12,016 minutes; the day has 960).
    (first,) = query(data_dir, "SELECT min(open_time_ms) FROM candles")[0]
    assert first == DAY_START_MS
    expected = backtest_actions(EMA_800)
    decisions = strategy_decisions(data_dir)
    assert decisions == [(t, expected[t]) for t, _ in decisions]
    # From its first candle on: every minute decided, EMA(800) defined (no HOLD) from the first decision.
    times = [t for t, _ in decisions]
    assert times == list(range(times[0], times[-1] + MINUTE, MINUTE))
    assert {a for _, a in decisions} <= {"BUY", "SELL"}


def test_a_strategy_change_to_a_longer_look_back_loads_the_older_history(data_dir, standin_at_16h):
    (data_dir / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n")
    worker = start_paper_worker(data_dir, standin_at_16h)
    wait_until(lambda: len(strategy_decisions(data_dir)) >= 5, worker, timeout_s=60, what="5 decisions")
    (first,) = query(data_dir, "SELECT min(open_time_ms) FROM candles")[0]
    assert first > DAY_START_MS + 10 * HOUR  # 300 minutes (5 hours) were enough for MA9
    (data_dir / "strategy.txt").write_text(EMA_800)
    wait_until(lambda: query(data_dir, "SELECT min(open_time_ms) FROM candles")[0][0] == DAY_START_MS, worker,
               timeout_s=30, what="the older history loaded")
    (changed_at,) = query(data_dir, "SELECT max(candle_open_time_ms) FROM decisions")[0]
    wait_until(lambda: len(strategy_decisions(data_dir, changed_at + MINUTE)) >= 10, worker, timeout_s=60,
               what="10 decisions with EMA(800)")
    stop_worker(worker)
    expected = backtest_actions(EMA_800)
    after = strategy_decisions(data_dir, changed_at + MINUTE)
    assert after == [(t, expected[t]) for t, _ in after]

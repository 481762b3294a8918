"""Backtest metrics against numbers worked out by hand on a ten-day history (one candle a day)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core.backtest import run_backtest
from core.dsl import compile_strategy
from core.metrics import Ledger, compute_metrics, daily_returns, max_drawdown_pct

DAY_MS = 86_400_000
STRATEGY = compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL")
# day:        0  1  2  3  4  5  6  7  8  9
OPENS = [2, 2, 4, 5, 5, 5, 6, 2, 2, 4]
CLOSES = [2, 4, 5, 2, 4, 6, 1, 2, 4, 5]
# Decisions fill at the next day's open: long 4 -> 5 (day 2 to 4), 5 -> 2 (day 5 to 7), 4 -> open (day 9).
EQUITY = [1, 1, 1.25, 0.5, 1.25, 1.5, 0.25, 0.5, 0.5, 0.625]  # without fees, marked at each close
DAILY = [0, 0, 0.25, -0.6, 1.5, 0.2, -5 / 6, 1.0, 0, 0.25]


def days(opens, closes):
    closes = np.asarray(closes, dtype=np.float64)
    return {"open_time_ms": np.arange(len(closes), dtype=np.int64) * DAY_MS, "open": np.asarray(opens, np.float64),
            "high": np.maximum(opens, closes).astype(np.float64), "low": np.minimum(opens, closes).astype(np.float64),
            "close": closes, "volume": np.ones_like(closes)}


def test_metrics_of_a_hand_worked_history_without_fees():
    result = run_backtest(days(OPENS, CLOSES), STRATEGY, fee_rate=0.0)
    m = result.metrics
    assert result.equity.tolist() == pytest.approx(EQUITY)
    assert m.return_pct == pytest.approx(-37.5)
    assert m.buy_and_hold_pct == pytest.approx(150.0)  # first open 2 to last close 5
    assert m.max_drawdown_pct == pytest.approx(100 * (1 - 0.25 / 1.5))  # peak 1.5 on day 5, 0.25 on day 6
    assert m.trades == 3  # two closed, one open
    assert m.win_rate_pct == pytest.approx(50.0)  # +25 % and -60 %
    assert m.profit_factor == pytest.approx(0.25 / 0.75)  # won 0.25 of 1.0, then lost 60 % of 1.25
    assert m.expectancy_pct == pytest.approx((25 - 60) / 2)
    assert m.exposure_pct == pytest.approx(50.0)  # long at the closes of days 2, 3, 5, 6 and 9
    # One candle a day from day 0's midnight: days 0..8 are whole, day 9 ends a minute after its midnight.
    assert m.days == 9
    assert (m.sharpe, m.sortino, m.calmar) == (None, None, None)
    assert m.why_null["sharpe"] == m.why_null["calmar"] == "9 complete UTC days, fewer than 30"
    assert m.fees_paid == 0.0


def test_fees_paid_counts_both_sides_of_closed_trades_and_the_open_entry():
    m = run_backtest(days(OPENS, CLOSES), STRATEGY, fee_rate=0.01).metrics
    entry1 = 1 * 0.01
    exit1 = 0.99 / 4 * 5 * 0.01  # the coins bought net of the fee, sold at 5
    balance = 0.99 / 4 * 5 * 0.99
    entry2 = balance * 0.01
    exit2 = balance * 0.99 / 5 * 2 * 0.01
    balance = balance * 0.99 / 5 * 2 * 0.99
    entry3 = balance * 0.01  # the open trade has paid its entry fee only
    assert m.fees_paid == pytest.approx(entry1 + exit1 + entry2 + exit2 + entry3)
    assert m.profit_factor == pytest.approx((0.99 / 4 * 5 * 0.99 - 1) / (0.99 / 4 * 5 * 0.99 * (1 - 0.99 / 5 * 2 * 0.99)))
    assert m.return_pct == pytest.approx((balance * 0.99 / 4 * 5 * 0.99 - 1) * 100)  # open trade valued net of its exit fee


def test_with_size_fees_and_profits_count_only_the_money_each_entry_spent():
    # SIZE 50 %: half of the balance goes into each trade, the other half waits as cash.
    sized = compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL\nSIZE 50%")
    m = run_backtest(days(OPENS, CLOSES), sized, fee_rate=0.01).metrics
    spent1 = 0.5
    coins1 = spent1 * 0.99 / 4
    pnl1 = coins1 * 5 * 0.99 - spent1  # sold at 5, less the exit fee
    balance = 1 + pnl1
    spent2 = balance * 0.5
    coins2 = spent2 * 0.99 / 5
    pnl2 = coins2 * 2 * 0.99 - spent2  # sold at 2
    balance += pnl2
    spent3 = balance * 0.5  # the open trade has paid its entry fee only
    fees = spent1 * 0.01 + coins1 * 5 * 0.01 + spent2 * 0.01 + coins2 * 2 * 0.01 + spent3 * 0.01
    assert m.fees_paid == pytest.approx(fees)
    assert m.profit_factor == pytest.approx(pnl1 / -pnl2)
    assert m.expectancy_pct == pytest.approx(((pnl1 / spent1) + (pnl2 / spent2)) / 2 * 100)
    open_value = spent3 * 0.99 / 4 * 5 * 0.99  # bought at day 9's open 4, marked at its close 5, exit fee off
    assert m.return_pct == pytest.approx((balance - spent3 + open_value - 1) * 100)


def test_daily_figures_of_a_hand_worked_thirty_day_history():
    # One candle a day, equity +2 % then -1 % in turn for 30 days, then a 31st candle (day 30 begins).
    equity = np.cumprod([1.02, 0.99] * 15)
    equity = np.append(equity, equity[-1])
    ledger = Ledger(equity, np.arange(31, dtype=np.int64) * DAY_MS, np.ones(31, bool), np.zeros(0), np.zeros(0), 1,
                    0.0, 0.0)
    m = compute_metrics(ledger)
    assert m.days == 30  # days 0..29; day 30 is covered for one minute only
    sample_sd = 0.015 * math.sqrt(30 / 29)  # each return is 0.015 from the mean 0.005
    assert m.sharpe == pytest.approx(0.005 / sample_sd * math.sqrt(365))
    assert m.sortino == pytest.approx(0.005 / math.sqrt(15 * 0.01 ** 2 / 30) * math.sqrt(365))
    assert m.max_drawdown_pct == pytest.approx(1.0)
    final = (1.02 * 0.99) ** 15
    assert m.calmar == pytest.approx((final ** (365 / (30 + 1 / 1440)) - 1) * 100 / 1.0)
    assert m.why_null == {"win_rate_pct": "no closed trade", "expectancy_pct": "no closed trade",
                          "profit_factor": "no closed trade"}
    # One day less and the daily figures say nothing.
    short = compute_metrics(Ledger(equity[:30], ledger.open_time_ms[:30], ledger.in_market[:30], np.zeros(0),
                                   np.zeros(0), 1, 0.0, 0.0))
    assert short.days == 29 and (short.sharpe, short.sortino, short.calmar) == (None, None, None)
    assert short.why_null["sortino"] == "29 complete UTC days, fewer than 30"


def test_minutes_or_hours_of_data_give_no_sharpe_sortino_or_calmar():
    # The cases: 7 minutes gave a Calmar of 7,337, 5 candles across midnight a Sharpe of 27.2.
    for start_ms, count in ((0, 7), (DAY_MS - 3 * 60_000, 5), (0, 12 * 60)):
        closes = 100 * 1.01 ** np.arange(count)
        closes[count // 2] *= 0.97
        candles = {"open_time_ms": start_ms + np.arange(count, dtype=np.int64) * 60_000, "open": closes,
                   "high": closes, "low": closes, "close": closes, "volume": np.ones(count)}
        m = run_backtest(candles, compile_strategy("IF CLOSE > 0 THEN BUY"), fee_rate=0.0).metrics
        assert m.days == 0 and m.return_pct > 0
        assert (m.sharpe, m.sortino, m.calmar) == (None, None, None)
        assert m.as_json()["why_null"]["sharpe"] == "0 complete UTC days, fewer than 30"


def test_undefined_figures_are_none_not_zero_or_infinity():
    # One winning trade on one day: no loss, so no profit factor; one day, so no Sharpe.
    candles = days([2, 2, 4, 5, 6], [2, 4, 5, 1, 1])  # in at 4, out at 6
    candles["open_time_ms"] = np.arange(5, dtype=np.int64) * 60_000
    m = run_backtest(candles, STRATEGY, fee_rate=0.0).metrics
    assert m.win_rate_pct == 100.0 and m.profit_factor is None
    assert m.sharpe is None and m.sortino is None
    flat = run_backtest(days([1, 1, 1], [1, 1, 1]), STRATEGY, fee_rate=0.0).metrics
    assert (flat.trades, flat.win_rate_pct, flat.expectancy_pct, flat.profit_factor) == (0, None, None, None)
    assert flat.max_drawdown_pct == 0.0 and flat.calmar is None and flat.sharpe is None  # no move at all


def test_a_history_that_only_rises_has_no_downside_and_no_sortino():
    closes = (4 + np.cumsum([0.1, 0.2] * 20)).tolist()  # rises every day, by steps of two sizes
    m = run_backtest(days([4] + closes[:-1], closes), STRATEGY, fee_rate=0.0).metrics
    assert m.days == 39 and m.max_drawdown_pct == 0.0
    assert m.sortino is None and m.why_null["sortino"] == "no losing day" and m.is_no_loss("sortino")
    assert m.calmar is None and m.why_null["calmar"] == "no drawdown" and not m.is_no_loss("calmar")
    assert m.sharpe is not None and m.sharpe > 0


def test_a_winner_without_a_losing_trade_has_a_no_loss_null_profit_factor():
    m = run_backtest(days([2, 2, 4, 5, 6], [2, 4, 5, 1, 1]), STRATEGY, fee_rate=0.0).metrics  # in at 4, out at 6
    assert m.profit_factor is None and m.why_null["profit_factor"] == "no losing trade"
    assert m.is_no_loss("profit_factor")
    flat = run_backtest(days([2, 2, 4, 4, 4], [2, 4, 4, 1, 1]), STRATEGY, fee_rate=0.0).metrics  # in at 4, out at 4
    assert flat.profit_factor is None and not flat.is_no_loss("profit_factor")
    assert flat.why_null["profit_factor"] == "no trade won or lost money"


def test_drawdown_counts_the_starting_balance_as_a_peak():
    assert max_drawdown_pct(np.array([0.9, 0.8, 1.2, 0.6])) == pytest.approx(50.0)
    assert max_drawdown_pct(np.array([0.5, 0.9])) == pytest.approx(50.0)


def test_daily_returns_take_each_complete_days_last_close_and_skip_days_without_candles():
    # From day 0's midnight (the start, 1.0, is the base) to day 6 00:01. Day 0: two candles, day 1:
    # none, day 2: one, day 5: two, day 6: one (covered for a minute only, so not complete).
    times = np.array([0, 3_600_000, 2 * DAY_MS + 5, 5 * DAY_MS, 5 * DAY_MS + 60_000, 6 * DAY_MS], dtype=np.int64)
    equity = np.array([1.1, 1.2, 0.9, 1.0, 1.35, 2.0])
    assert daily_returns(equity, times).tolist() == pytest.approx([0.2, 0.9 / 1.2 - 1, 1.35 / 0.9 - 1])


def test_a_day_the_history_starts_or_ends_within_is_not_a_day():
    hour, minute = 3_600_000, 60_000
    # Starts day 0 at 12:00, ends day 2 at 06:00: only day 1 is whole; its base is day 0's last close.
    times = np.array([12 * hour, DAY_MS - minute, DAY_MS + hour, 2 * DAY_MS - minute, 2 * DAY_MS + 6 * hour])
    equity = np.array([1.5, 1.2, 1.3, 0.9, 3.0])
    assert daily_returns(equity, times).tolist() == pytest.approx([0.9 / 1.2 - 1])
    # Ending with the minute 23:59 completes the day.
    assert daily_returns(equity[:4], times[:4]).tolist() == pytest.approx([0.9 / 1.2 - 1])
    assert daily_returns(equity[:3], times[:3]).tolist() == []


def test_joined_periods_continue_from_the_balance_the_last_one_ended_with():
    from core.metrics import join

    first = Ledger(np.array([1.1, 1.2]), np.array([0, DAY_MS]), np.array([True, False]), np.array([0.2]),
                   np.array([0.2]), 1, 0.01, 10.0)
    second = Ledger(np.array([0.9, 1.5]), np.array([2 * DAY_MS, 3 * DAY_MS]), np.array([False, True]),
                    np.array([-0.1]), np.array([-0.1]), 2, 0.02, -50.0)
    joined = join([first, second])
    assert joined.equity.tolist() == pytest.approx([1.1, 1.2, 1.08, 1.8])
    assert joined.closed_pnl.tolist() == pytest.approx([0.2, -0.12])  # the second period started with 1.2
    assert joined.fees_paid == pytest.approx(0.01 + 0.02 * 1.2)
    assert joined.buy_and_hold_pct == pytest.approx((1.1 * 0.5 - 1) * 100)
    m = compute_metrics(joined)
    assert (m.trades, m.return_pct, m.exposure_pct) == (3, pytest.approx(80.0), 50.0)
    assert m.max_drawdown_pct == pytest.approx(10.0)  # 1.2 down to 1.08
    assert m.profit_factor == pytest.approx(0.2 / 0.12)


@settings(max_examples=120, deadline=None)
@given(data=st.data(), count=st.integers(1, 400), scale=st.sampled_from([1e-8, 1.0, 1e12]),
       step_ms=st.sampled_from([60_000, 3_600_000, DAY_MS, 40 * DAY_MS]))
def test_any_history_gives_figures_in_their_ranges_or_none(data, count, scale, step_ms):
    moves = data.draw(st.lists(st.floats(-0.5, 0.5), min_size=count, max_size=count))
    closes = scale * np.exp(np.cumsum(moves))
    opens = np.concatenate(([closes[0]], closes[:-1]))
    gaps = data.draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))  # minutes missing from the file
    candles = {"open_time_ms": np.cumsum(np.array(gaps, dtype=np.int64) * step_ms), "open": opens,
               "high": np.maximum(opens, closes), "low": np.minimum(opens, closes), "close": closes,
               "volume": np.ones(count)}
    fee = data.draw(st.sampled_from([0.0, 0.001, 0.05]))
    result = run_backtest(candles, compile_strategy("IF CLOSE > SMA(3) THEN BUY\nIF CLOSE < SMA(5) THEN SELL"),
                          fee_rate=fee)
    m = result.metrics
    assert m.return_pct == pytest.approx((result.equity[-1] - 1) * 100)
    assert 0 <= m.max_drawdown_pct <= 100 and 0 <= m.exposure_pct <= 100 and m.fees_paid >= 0
    assert m.trades == len(result.trades)
    closed = [t.return_pct for t in result.trades if t.exit_time is not None]
    assert (m.win_rate_pct is None) == (not closed)
    assert (m.profit_factor is None) == (not any(r < 0 for r in closed))
    for value in (m.sharpe, m.sortino, m.calmar, m.profit_factor, m.expectancy_pct):
        assert value is None or np.isfinite(value)
    if fee == 0.0:
        assert m.fees_paid == 0.0

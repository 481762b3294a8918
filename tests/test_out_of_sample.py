"""Out-of-sample blocks: indicators warmed up on the candles before the block, and a trade still open at
the block's end closed at its last close and counted (DESIGN.md "Sweeps"). Numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.backtest import format_report, run_backtest
from core.dsl import compile_strategy
from core.sweep_runs import walk_forward_folds

MINUTE = 60_000


def minutes(opens, closes, highs=None, lows=None):
    opens, closes = np.asarray(opens, np.float64), np.asarray(closes, np.float64)
    return {"open_time_ms": np.arange(len(closes), dtype=np.int64) * MINUTE, "open": opens,
            "high": np.maximum(opens, closes) if highs is None else np.asarray(highs, np.float64),
            "low": np.minimum(opens, closes) if lows is None else np.asarray(lows, np.float64),
            "close": closes, "volume": np.ones(len(closes))}


def test_a_warmed_up_block_does_not_buy_on_an_undefined_average():
    # The case: a steadily falling market; the block is its last 100 candles.
    closes = 300.0 - np.arange(300)
    candles = minutes(closes + 0.5, closes)
    strategy = compile_strategy("IF NOT CLOSE < MA200 THEN BUY")
    cold = run_backtest({k: v[200:] for k, v in candles.items()}, strategy, fee_rate=0.0)
    # Alone, MA200 is undefined all block long, so NOT (CLOSE < MA200) is true: bought at candle 1's open.
    assert [(t.entry_time, t.entry_price) for t in cold.trades] == [(201 * MINUTE, 99.5)]
    warm = run_backtest(candles, strategy, fee_rate=0.0, warmup=200)
    # Warmed up, MA200 on the block's first candle is the mean of 299..100 = 199.5 > its close 100: no buy.
    assert warm.trades == [] and warm.candles == 100 and len(warm.equity) == 100
    assert warm.ledger.open_time_ms[0] == 200 * MINUTE


def test_a_warmed_up_block_sets_an_atr_stop_from_its_first_trade():
    # 30 candles of 100 with a range of 2 (ATR(14) = 2 once defined); the block is candles 20..29.
    highs, lows = np.full(30, 101.0), np.full(30, 99.0)
    lows[25] = 97.0
    candles = minutes(np.full(30, 100.0), np.full(30, 100.0), highs, lows)
    strategy = compile_strategy("IF CLOSE > 0 THEN BUY\nSTOP LOSS 1 * ATR(14)")
    warm = run_backtest(candles, strategy, fee_rate=0.0, warmup=20)
    # Decided on candle 20, filled at candle 21's open 100: stop 100 - 2 = 98, reached by candle 25's low 97.
    first = warm.trades[0]
    assert (first.entry_time, first.entry_price, first.exit_time, first.exit_price, first.exit_reason) == (
        21 * MINUTE, 100.0, 25 * MINUTE, 98.0, "stop_loss")
    cold = run_backtest({k: v[20:] for k, v in candles.items()}, strategy, fee_rate=0.0)
    assert [t.exit_reason for t in cold.trades] == [None]  # ATR undefined at the decision: no stop at all


OPENS = [2, 2, 4, 5, 5, 5, 6, 2, 2, 4]
CLOSES = [2, 4, 5, 2, 4, 6, 1, 2, 4, 5]


def test_a_trade_open_at_the_blocks_end_is_closed_at_its_last_close_and_counted():
    # Long 4 -> 5 (candles 2 to 4), 5 -> 2 (5 to 7), and one entered at candle 9's open 4, still open.
    strategy = compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL")
    candles = minutes(OPENS, CLOSES)
    fee = 0.01
    result = run_backtest(candles, strategy, fee_rate=fee, close_at_end=True)
    last = result.trades[-1]
    assert (last.entry_price, last.exit_time, last.exit_price, last.exit_reason) == (4, 9 * MINUTE + 59_999, 5,
                                                                                      "block_end")
    k = 1 - fee
    balance1 = k / 4 * 5 * k
    balance2 = balance1 * k / 5 * 2 * k
    balance3 = balance2 * k / 4 * 5 * k
    m = result.metrics
    assert m.trades == 3 and m.win_rate_pct == pytest.approx(200 / 3)  # +22.5 %, -60.8 %, +22.5 %
    assert m.expectancy_pct == pytest.approx(((k * k * 5 / 4 - 1) * 2 + (k * k * 2 / 5 - 1)) / 3 * 100)
    fees = (1 + k / 4 * 5 + balance1 + balance1 * k / 5 * 2 + balance2 + balance2 * k / 4 * 5) * fee
    assert m.fees_paid == pytest.approx(fees)
    assert m.profit_factor == pytest.approx(((balance1 - 1) + (balance3 - balance2)) / (balance1 - balance2))
    assert m.return_pct == pytest.approx((balance3 - 1) * 100)
    # Without closing, the same money, but the open trade is missing from fees, win rate and profit factor.
    kept_open = run_backtest(candles, strategy, fee_rate=fee).metrics
    assert kept_open.return_pct == pytest.approx(m.return_pct)
    assert kept_open.win_rate_pct == 50.0 and kept_open.fees_paid < m.fees_paid
    assert "exits by      block end 1, rule 2" in format_report(result, "t", candles)


def test_a_trade_that_would_only_enter_at_the_blocks_last_close_is_not_opened():
    strategy = compile_strategy("IF CLOSE > 10 THEN BUY")
    candles = minutes([5, 5, 5, 5], [5, 5, 5, 11])
    assert len(run_backtest(candles, strategy, fill="close").trades) == 1  # opened at the last close
    closed = run_backtest(candles, strategy, fill="close", close_at_end=True)
    assert closed.trades == [] and closed.metrics.fees_paid == 0.0


@pytest.mark.parametrize("rolling, expected", [
    (False, [(slice(0, 3), slice(3, 6)), (slice(0, 6), slice(6, 9)), (slice(0, 9), slice(9, 12))]),
    (True, [(slice(0, 3), slice(3, 6)), (slice(3, 6), slice(6, 9)), (slice(6, 9), slice(9, 12))]),
])
def test_walk_forward_folds_anchored_and_rolling(rolling, expected):
    assert walk_forward_folds(12, 3, rolling) == expected

"""The backtest's speed-ups give the answers of the plain way: sweep rows equal single backtests, the
equity spread over runs equals a candle-by-candle account, the trades' JSON text equals json.dumps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import exits, sweep_runs
from core.backtest import TradeTable, _equity, _trades_json, _trades_json_text, load_candles, run_backtest
from core.dsl import compile_strategy, sweeps
from tests.conftest import SHARED_DATA

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"


@pytest.fixture(scope="module")
def ethbtc():
    candles = load_candles(ETHBTC)
    return {name: series[:20_000] for name, series in candles.items()}


def same_result(a, b):
    """Every figure and every trade of two backtests, exactly."""
    assert a.metrics == b.metrics
    assert a.trades == b.trades
    assert np.array_equal(a.equity, b.equity) and np.array_equal(a.in_market, b.in_market)


@pytest.mark.parametrize("text, fill", [
    ("IF MA{fast: 2..5} > MA{slow: 8..14..3} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n", "next-open"),
    ("IF EMA({5,9}) CROSSES ABOVE SMA(CLOSE, {20..30..10}) THEN BUY\nIF RSI(14) > {60,70} THEN SELL\n"
     "STOP LOSS {1,2} %\nTRAILING STOP 2 * ATR(14)\nSIZE 50 %\n", "close"),
])
@pytest.mark.parametrize("jobs", [1, 2])
def test_every_sweep_row_equals_the_backtest_of_its_expanded_text(ethbtc, text, fill, jobs):
    combinations = sweeps.expand(text)
    runs = sweep_runs.run_combinations(combinations, ethbtc, 0.001, fill, keep_reports=True, jobs=jobs,
                                       with_trades=True)
    assert len(runs) == len(combinations) >= 8
    for combination, run in zip(combinations, runs):
        alone = run_backtest(ethbtc, compile_strategy(combination.text), fee_rate=0.001, fill=fill)
        assert run.params == combination.params
        assert run.metrics == alone.metrics
        assert run.report == alone.as_json()
    assert len({run.metrics.return_pct for run in runs}) > 1  # the combinations really differ


def test_a_shared_indicator_cache_changes_no_answer_and_respects_its_memory_limit(ethbtc):
    cache = sweep_runs.IndicatorCache(limit_bytes=3 * ethbtc["close"].nbytes)
    texts = [f"IF MA{fast} > MA{slow} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"
             for fast in (3, 4) for slow in (9, 12)]
    for text in texts:
        policy = compile_strategy(text)
        same_result(run_backtest(ethbtc, policy, indicator_cache=cache), run_backtest(ethbtc, policy))
    assert len(cache) == 3 and cache.kept_bytes == 3 * ethbtc["close"].nbytes  # MA3, MA9, MA12; MA4 declined


def plain_account(close, entries, exits_at, entry_prices, ratios, fee_rate, size):
    """Candle by candle: the balance after each closed trade; while trade k is held, the cash set aside
    plus the units bought with `size` of the balance, valued at the close after the exit fee."""
    equity, held = [], []
    balance, k = 1.0, 0
    for i, price in enumerate(close):
        while k < len(exits_at) and exits_at[k] <= i:  # trade k is closed by this candle's close
            balance *= 1 + size * (ratios[k] - 1)
            k += 1
        holding = k < len(entries) and entries[k] <= i
        if holding:
            units = balance * size * (1 - fee_rate) / entry_prices[k]
            equity.append(balance * (1 - size) + units * price * (1 - fee_rate))
        else:
            equity.append(balance)
        held.append(holding)
    return np.array(equity), np.array(held)


@st.composite
def trade_layouts(draw):
    """Trades on a history: lengths of flat and held runs (zero-length holds included), one maybe open."""
    count = draw(st.integers(0, 6))
    gaps = draw(st.lists(st.integers(0, 4), min_size=count + 1, max_size=count + 1))
    holds = draw(st.lists(st.integers(0, 4), min_size=count, max_size=count))
    entries, exits_at, i = [], [], gaps[0]
    for k in range(count):
        entries.append(i)
        i += holds[k]
        exits_at.append(i)
        i += gaps[k + 1]
    n = i + 1 + draw(st.integers(0, 3))
    if count > 0 and draw(st.booleans()):  # the last trade is still open
        exits_at.pop()
    prices = st.floats(0.5, 2e6, allow_nan=False)
    close = np.array(draw(st.lists(prices, min_size=n, max_size=n)))
    entry_prices = np.array(draw(st.lists(prices, min_size=len(entries), max_size=len(entries))))
    ratios = np.array(draw(st.lists(st.floats(0.01, 50), min_size=len(exits_at), max_size=len(exits_at))))
    return close, np.array(entries, dtype=np.int64), np.array(exits_at, dtype=np.int64), entry_prices, ratios


@settings(max_examples=300, deadline=None)
@given(trade_layouts(), st.sampled_from([0.0, 0.001, 0.01]), st.sampled_from([1.0, 0.5, 0.1]))
def test_equity_spread_over_runs_equals_a_candle_by_candle_account(layout, fee_rate, size):
    close, entries, exits_at, entry_prices, ratios = layout
    equity, in_market = _equity({"close": close}, entries, exits_at, entry_prices, ratios, fee_rate, size)
    plain_equity, plain_held = plain_account(close, entries, exits_at, entry_prices, ratios, fee_rate, size)
    assert in_market.tolist() == plain_held.tolist()
    np.testing.assert_allclose(equity, plain_equity, rtol=1e-12)


_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-320, 1.7e308, 1e16, 1e-7])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**62, 2**62), _FLOATS, st.integers(0, 2**62), _FLOATS, _FLOATS,
                          st.integers(-1, len(exits.REASONS) - 1), st.booleans()), max_size=8))
def test_the_trades_json_text_is_what_json_dumps_writes(rows):
    columns = list(zip(*rows)) or [()] * 7
    table = TradeTable(np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=np.float64),
                       np.array(columns[2], dtype=np.int64), np.array(columns[3], dtype=np.float64),
                       np.array(columns[4], dtype=np.float64), np.array(columns[5], dtype=np.int8),
                       np.array(columns[6], dtype=bool))
    with np.errstate(over="ignore"):  # rounding 1.7e308 to 6 decimals overflows to inf, as it should
        _check_trades_json(rows, table)


def _check_trades_json(rows, table):
    expected = json.dumps([{"side": "short" if is_short else "long", "entry_time": t, "entry_price": p,
                            "exit_time": None if r < 0 else x, "exit_price": None if r < 0 else q,
                            "exit_reason": None if r < 0 else exits.REASONS[r], "return_pct": float(np.round(ret, 6))}
                           for t, p, x, q, ret, r, is_short in rows])
    assert _trades_json_text(table) == expected
    assert json.dumps(_trades_json(table.json_columns())) == expected


def test_the_whole_json_text_is_what_json_dumps_writes(ethbtc):
    text = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 0.3 %\nTAKE PROFIT 0.4 %\n"
    result = run_backtest(ethbtc, compile_strategy(text))
    assert {t.exit_reason for t in result.trades} >= {"rule", "stop_loss", "take_profit"}
    extra = {"strategy_version": "abc"}
    assert result.json_text(extra) == json.dumps(result.as_json() | extra)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["BUY", "SELL", "SHORT", "HOLD"]), st.sampled_from([">", "<"])),
                min_size=1, max_size=6),
       st.lists(st.integers(0, 10), min_size=1, max_size=40))
def test_decisions_come_from_the_first_true_rule_on_every_candle(rules, closes):
    text = "".join(f"IF CLOSE {op} {k}.5 THEN {action}\n" for k, action, op in rules)
    actions = compile_strategy(text).decide_all({"close": np.array(closes, dtype=np.float64)})
    codes = {"HOLD": 0, "BUY": 1, "SELL": 2, "SHORT": 3}
    expected = []
    for close in closes:
        fired = [action for k, action, op in rules if (close > k + 0.5 if op == ">" else close < k + 0.5)]
        expected.append(codes[fired[0]] if fired else 0)
    assert actions.dtype == np.int8 and actions.tolist() == expected

"""Ticks to candles: Binance's own klines reproduced, empty minutes, lateness, late and repeated ticks."""

from __future__ import annotations

import csv
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.candles import (E8, MINUTE_MS, Candle, Tick, TickBuffer, candles_from_ticks, candles_to_arrays,
                          format_kline_row)
from core.dsl import compile_strategy
from core.feeds import read_agg_trades

from .conftest import SHARED_DATA

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
KLINES = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"
T0 = 1_570_752_000_000  # 2019-10-11 00:00 UTC


def tick(time_ms: int, agg_id: int, price: float = 1.0, qty: float = 1.0, *, is_buyer_maker: bool = False,
         trades: int = 1) -> Tick:
    first_id = agg_id * 10
    return Tick(price, qty, time_ms, agg_id, first_id, first_id + trades - 1, is_buyer_maker)


def binance_rows() -> list[list[str]]:
    with open(KLINES, newline="") as file:
        return list(csv.reader(file))


def assert_same_rows(ours: list[list[str]], binance: list[list[str]]) -> None:
    assert len(ours) == len(binance) == 1440
    for minute, (our_row, their_row) in enumerate(zip(ours, binance)):
        for column, (our_text, their_text) in enumerate(zip(our_row, their_row, strict=True)):
            assert our_text == their_text, f"minute {minute}, column {column}"


# -- Binance's own klines -------------------------------------------------------------------------


def test_candles_from_xrpeth_agg_trades_equal_binance_klines_in_every_column():
    candles = list(candles_from_ticks(read_agg_trades(AGG_TRADES)))

    assert_same_rows([format_kline_row(candle) for candle in candles], binance_rows())
    assert sum(candle.volume == 0 for candle in candles) == 418


def test_candles_command_writes_binance_klines_text_for_every_row(runner, tmp_path):
    out = tmp_path / "klines.csv"

    result = runner.invoke(args=["candles", "--agg-trades", str(AGG_TRADES), "--out", str(out)])

    assert result.exit_code == 0, result.output
    with open(out, newline="") as file:
        assert_same_rows(list(csv.reader(file)), binance_rows())
    assert out.read_bytes() == KLINES.read_bytes()


def test_candles_command_prints_file_and_line_of_a_bad_row_and_writes_nothing(runner, tmp_path):
    bad = tmp_path / "aggTrades.csv"
    lines = AGG_TRADES.read_text().splitlines()[:10]
    lines[6] = lines[6].replace("0.00141", "0.0O141")
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "klines.csv"

    result = runner.invoke(args=["candles", "--agg-trades", str(bad), "--out", str(out)])

    assert result.exit_code == 1
    assert result.stdout.startswith(f"{bad}:7: error: price '0.0O141")
    assert not out.exists()


# -- empty minutes, lateness, late and repeated ticks -------------------------------------------


def test_tick_buffer_emits_empty_minutes_as_flat_candles_at_the_previous_close():
    buffer = TickBuffer()
    assert buffer.add(tick(T0 + 5_000, 1, price=2.0)) == []
    assert buffer.add(tick(T0 + 9_000, 2, price=3.0, qty=2.0, is_buyer_maker=True, trades=3)) == []

    closed = buffer.add(tick(T0 + 3 * MINUTE_MS + 1, 3, price=4.0))

    assert closed == [
        Candle(T0, 2.0, 3.0, 2.0, 3.0, 3.0, T0 + 59_999, 8.0, 4, 1.0, 2.0),
        Candle(T0 + MINUTE_MS, 3.0, 3.0, 3.0, 3.0, 0.0, T0 + MINUTE_MS + 59_999, 0.0, 0, 0.0, 0.0),
        Candle(T0 + 2 * MINUTE_MS, 3.0, 3.0, 3.0, 3.0, 0.0, T0 + 2 * MINUTE_MS + 59_999, 0.0, 0, 0.0, 0.0),
    ]


@pytest.mark.parametrize(("now_ms", "closed_open_times"), [
    (T0 + MINUTE_MS + 2_000 - 1, []),  # the minute ended, the lateness allowance has not
    (T0 + MINUTE_MS + 2_000, [T0]),
    (T0 + 3 * MINUTE_MS + 1_999, [T0, T0 + MINUTE_MS]),
    (T0 + 3 * MINUTE_MS + 2_000, [T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]),
])
def test_tick_buffer_closes_minutes_once_the_clock_passes_their_end_plus_lateness(now_ms, closed_open_times):
    buffer = TickBuffer(lateness_ms=2_000)
    buffer.add(tick(T0 + 30_000, 1, price=5.0))

    closed = buffer.close_until(now_ms)

    assert [candle.open_time_ms for candle in closed] == closed_open_times
    assert all(candle.close == 5.0 for candle in closed)
    assert buffer.close_until(now_ms) == []  # each minute closes once


def test_tick_buffer_closes_nothing_by_the_clock_before_its_first_tick():
    assert TickBuffer().close_until(T0 + 10 * MINUTE_MS) == []


def test_tick_buffer_drops_and_counts_a_tick_for_a_minute_the_clock_closed():
    buffer = TickBuffer(lateness_ms=2_000)
    buffer.add(tick(T0 + 1_000, 1, qty=1.0))
    [closed] = buffer.close_until(T0 + MINUTE_MS + 2_000)

    assert buffer.add(tick(T0 + 59_000, 2, qty=7.0)) == []

    assert buffer.late_ticks == 1
    assert closed.volume == 1.0
    next_minute = buffer.add(tick(T0 + 2 * MINUTE_MS, 3, price=9.0))
    assert [(candle.open_time_ms, candle.volume, candle.close) for candle in next_minute] == [
        (T0 + MINUTE_MS, 0.0, 1.0)]


def test_tick_buffer_drops_and_counts_a_tick_older_than_the_open_minute():
    buffer = TickBuffer()
    buffer.add(tick(T0 + 1_000, 1))
    buffer.add(tick(T0 + MINUTE_MS, 2, price=2.0))

    assert buffer.add(tick(T0 + 30_000, 3, qty=5.0)) == []

    assert buffer.late_ticks == 1
    [candle] = buffer.close_until(T0 + 10 * MINUTE_MS)[:1]
    assert (candle.open_time_ms, candle.volume) == (T0 + MINUTE_MS, 1.0)


def test_tick_buffer_ignores_and_counts_repeated_and_older_aggregate_ids():
    buffer = TickBuffer()
    for agg_id in (10, 11, 11, 9, 12):
        buffer.add(tick(T0 + agg_id, agg_id, qty=2.0))

    [candle] = buffer.close_until(T0 + 10 * MINUTE_MS)[:1]

    assert buffer.duplicate_ticks == 2
    assert (candle.volume, candle.trades) == (6.0, 3)


def test_tick_buffer_resumed_after_a_stored_candle_continues_with_the_next_minute():
    buffer = TickBuffer()
    buffer.resume_after(Candle(T0, 1.0, 2.0, 0.5, 1.5, 10.0, T0 + 59_999, 15.0, 4, 5.0, 7.5))

    assert buffer.add(tick(T0 + 30_000, 1)) == []  # that minute is stored already
    closed = buffer.add(tick(T0 + 3 * MINUTE_MS, 2, price=4.0))

    assert buffer.late_ticks == 1
    assert [(c.open_time_ms, c.open, c.close, c.volume) for c in closed] == [
        (T0 + MINUTE_MS, 1.5, 1.5, 0.0), (T0 + 2 * MINUTE_MS, 1.5, 1.5, 0.0)]


def test_tick_buffer_resumed_closes_empty_minutes_by_the_clock():
    buffer = TickBuffer(lateness_ms=0)
    buffer.resume_after(Candle(T0, 1.0, 2.0, 0.5, 1.5, 10.0, T0 + 59_999, 15.0, 4, 5.0, 7.5))

    closed = buffer.close_until(T0 + 3 * MINUTE_MS)

    assert [(c.open_time_ms, c.close) for c in closed] == [(T0 + MINUTE_MS, 1.5), (T0 + 2 * MINUTE_MS, 1.5)]


def test_tick_buffer_refuses_to_resume_over_an_open_candle():
    buffer = TickBuffer()
    buffer.add(tick(T0, 1))

    with pytest.raises(ValueError, match="open candle"):
        buffer.resume_after(Candle(T0, 1.0, 1.0, 1.0, 1.0, 0.0, T0 + 59_999, 0.0, 0, 0.0, 0.0))


# -- exact sums -----------------------------------------------------------------------------------


def test_tick_buffer_sums_quote_volume_exactly_where_float_sums_drift():
    prices = [(6_123_456 + i % 100) / 100 for i in range(2000)]
    qtys = [((i * 7919) % 20_000 + 1) / 100_000 for i in range(2000)]
    ticks = [tick(T0 + i, i + 1, price=p, qty=q) for i, (p, q) in enumerate(zip(prices, qtys))]
    exact = sum(Decimal(str(p)) * Decimal(str(q)) for p, q in zip(prices, qtys))
    float_sum = 0.0
    for p, q in zip(prices, qtys):
        float_sum += p * q

    [candle] = candles_from_ticks(ticks, until_ms=0)

    assert f"{float_sum:.8f}" != f"{exact:.8f}"  # the naive way would print a wrong last digit here
    assert format_kline_row(candle)[7] == f"{exact:.8f}" == "12248848.07100000"
    assert format_kline_row(candle)[10] == f"{exact:.8f}"  # every taker bought


@pytest.mark.parametrize(("price", "qty", "quote"), [
    (0.00000015, 0.5, "0.00000008"),  # 0.000000075: half to even, up
    (0.00000017, 0.5, "0.00000008"),  # 0.000000085: half to even, down
    (0.00000013, 0.3, "0.00000004"),  # 0.000000039
    (0.00000011, 0.1, "0.00000001"),  # 0.000000011
])
def test_quote_volume_with_more_than_8_decimals_is_rounded_half_to_even(price, qty, quote):
    [candle] = candles_from_ticks([tick(T0, 1, price=price, qty=qty)], until_ms=0)

    assert format_kline_row(candle)[7] == quote


def test_candles_from_ticks_pad_empty_minutes_to_the_end_of_the_day_unless_told_otherwise():
    ticks = [tick(T0 + 1_000, 1), tick(T0 + 86_400_000 - 5 * MINUTE_MS, 2)]

    assert len(list(candles_from_ticks(ticks))) == 1440
    assert len(list(candles_from_ticks(ticks, until_ms=0))) == 1436
    assert len(list(candles_from_ticks(ticks, until_ms=T0 + 86_400_000 + 2 * MINUTE_MS))) == 1442
    assert list(candles_from_ticks([])) == []


# -- properties -----------------------------------------------------------------------------------


@st.composite
def tick_streams(draw) -> list[Tick]:
    """Ticks in time order with rising ids: prices and quantities with at most 8 decimals."""
    count = draw(st.integers(1, 60))
    gaps_ms = draw(st.lists(st.integers(0, 4 * MINUTE_MS), min_size=count, max_size=count))
    start_ms = T0 + draw(st.integers(0, MINUTE_MS))
    ticks, time_ms = [], start_ms
    for agg_id, gap_ms in enumerate(gaps_ms, start=1):
        time_ms += gap_ms
        # Small enough that a minute's quote volume stays below 2**26, where floats print 8 decimals exactly.
        price = draw(st.integers(1, 10**11)) / E8
        qty = draw(st.integers(1, 10**10)) / E8
        ticks.append(tick(time_ms, agg_id, price=price, qty=qty, is_buyer_maker=draw(st.booleans()),
                          trades=draw(st.integers(1, 5))))
    return ticks


def _e8(value: float) -> int:
    return round(value * E8)


@given(tick_streams())
def test_candles_are_contiguous_minutes_holding_every_tick_exactly(ticks):
    candles = list(candles_from_ticks(ticks, until_ms=0))

    first_minute_ms = ticks[0].time_ms - ticks[0].time_ms % MINUTE_MS
    last_minute_ms = ticks[-1].time_ms - ticks[-1].time_ms % MINUTE_MS
    assert [c.open_time_ms for c in candles] == list(range(first_minute_ms, last_minute_ms + 1, MINUTE_MS))
    assert sum(_e8(c.volume) for c in candles) == sum(_e8(t.qty) for t in ticks)
    assert sum(_e8(c.taker_buy_base) for c in candles) == sum(_e8(t.qty) for t in ticks if not t.is_buyer_maker)
    assert sum(c.trades for c in candles) == sum(t.last_trade_id - t.first_trade_id + 1 for t in ticks)
    assert all(c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in candles)


@given(tick_streams())
def test_candle_quote_volumes_equal_exact_decimal_sums_rounded_to_8_decimals(ticks):
    by_minute: dict[int, list[Tick]] = {}
    for t in ticks:
        by_minute.setdefault(t.time_ms - t.time_ms % MINUTE_MS, []).append(t)

    for candle in candles_from_ticks(ticks, until_ms=0):
        minute_ticks = by_minute.get(candle.open_time_ms, [])
        quote = sum((Decimal(_e8(t.price)) * Decimal(_e8(t.qty)) / 10**16 for t in minute_ticks), Decimal(0))
        buy = sum((Decimal(_e8(t.price)) * Decimal(_e8(t.qty)) / 10**16 for t in minute_ticks
                   if not t.is_buyer_maker), Decimal(0))
        row = format_kline_row(candle)
        assert row[7] == f"{quote.quantize(Decimal('1e-8'), ROUND_HALF_EVEN):.8f}"
        assert row[10] == f"{buy.quantize(Decimal('1e-8'), ROUND_HALF_EVEN):.8f}"


@given(tick_streams(), st.randoms(use_true_random=False))
def test_ticks_in_any_arrival_order_are_used_once_or_counted_as_late_or_repeated(ticks, random):
    arrivals = ticks + random.sample(ticks, k=len(ticks) // 3)  # a reconnecting stream resends some
    random.shuffle(arrivals)
    # The rules, told plainly: a new id is late when its minute is before the newest minute used.
    used, late, repeated, last_id, newest_minute_ms = [], 0, 0, -1, -1
    for t in arrivals:
        minute_ms = t.time_ms - t.time_ms % MINUTE_MS
        if t.agg_id <= last_id:
            repeated += 1
        elif minute_ms < newest_minute_ms:
            last_id, late = t.agg_id, late + 1
        else:
            last_id, newest_minute_ms = t.agg_id, minute_ms
            used.append(t)

    buffer = TickBuffer()
    candles = [candle for t in arrivals for candle in buffer.add(t)] + buffer.close_until(T0 + 10**9)

    assert (buffer.duplicate_ticks, buffer.late_ticks) == (repeated, late)
    assert sum(_e8(c.volume) for c in candles) == sum(_e8(t.qty) for t in used)
    assert sum(c.trades for c in candles) == sum(t.last_trade_id - t.first_trade_id + 1 for t in used)
    assert all(b.open_time_ms - a.open_time_ms == MINUTE_MS for a, b in zip(candles, candles[1:]))


@given(st.integers(0, 2**26 * E8 - 1))
def test_kline_numbers_print_exactly_below_two_to_the_26(units_e8):
    candle = Candle(T0, units_e8 / E8, 1.0, 1.0, 1.0, 0.0, T0 + 59_999, 0.0, 0, 0.0, 0.0)

    assert format_kline_row(candle)[1] == f"{Decimal(units_e8) / E8:.8f}"


@pytest.mark.parametrize(("candle", "row"), [
    (Candle(T0, 0.00141342, 0.00141557, 0.00141266, 0.00141418, 1482.0, T0 + 59_999, 2.09550564, 9, 1182.0,
            1.67111936),
     ["1570752000000", "0.00141342", "0.00141557", "0.00141266", "0.00141418", "1482.00000000", "1570752059999",
      "2.09550564", "9", "1182.00000000", "1.67111936", "0"]),
    (Candle(T0, 42_000.1, 42_000.1, 42_000.1, 42_000.1, 0.0, T0 + 59_999, 0.0, 0, 0.0, 0.0),
     ["1570752000000", "42000.10000000", "42000.10000000", "42000.10000000", "42000.10000000", "0.00000000",
      "1570752059999", "0.00000000", "0", "0.00000000", "0.00000000", "0"]),
])
def test_format_kline_row_writes_binance_columns(candle, row):
    assert format_kline_row(candle) == row


# -- for the policy -------------------------------------------------------------------------------


def test_candles_to_arrays_gives_the_policy_float64_prices_and_int64_times():
    candles = list(candles_from_ticks(read_agg_trades(AGG_TRADES)))

    arrays = candles_to_arrays(candles)

    assert set(arrays) == {"open", "high", "low", "close", "volume", "open_time_ms"}
    assert {name: array.dtype for name, array in arrays.items()} == {
        "open": np.float64, "high": np.float64, "low": np.float64, "close": np.float64, "volume": np.float64,
        "open_time_ms": np.int64}
    assert arrays["open_time_ms"][-1] == T0 + 1439 * MINUTE_MS
    assert arrays["close"][3] == candles[3].close
    assert arrays["volume"].sum() == pytest.approx(sum(c.volume for c in candles))
    decisions = compile_strategy("IF CLOSE > OPEN THEN BUY\nIF CLOSE < OPEN THEN SELL\n").decide_all(arrays)
    assert len(decisions) == 1440 and len(set(decisions.tolist())) == 3


def test_candles_to_arrays_of_no_candles_are_empty_arrays():
    arrays = candles_to_arrays([])

    assert all(len(array) == 0 for array in arrays.values())
    assert arrays["open_time_ms"].dtype == np.int64


def test_tick_has_no_instance_dict_on_the_hot_path():
    assert not hasattr(tick(T0, 1), "__dict__")

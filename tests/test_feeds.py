"""Binance public-data CSVs: layouts, headers, time units, booleans, bad files, and paced replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.candles import MINUTE_MS, Candle, Tick, candles_from_ticks
from core.feeds import FeedError, ReplayFeed, detect_layout, read_agg_trades, read_klines

from .conftest import SHARED_DATA

XRPETH_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
XRPETH_KLINES = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"
ETHBTC_CANDLES = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
T0 = 1_570_752_000_000  # 2019-10-11 00:00 UTC, in ms
AGG_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match"
KLINES_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                 "taker_buy_quote_volume,ignore")


def agg_rows(count: int, *, step_ms: int = 1_000, unit: str = "ms", spelling: str = "True") -> list[str]:
    """`count` valid aggTrades rows, one every `step_ms`, with times written in `unit`."""
    false = {"True": "False", "true": "false"}[spelling]
    rows = []
    for i in range(count):
        time_ms = T0 + i * step_ms
        time_text = str(time_ms * 1000 if unit == "µs" else time_ms // 1000 if unit == "s" else time_ms)
        rows.append(f"{100 + i},0.{141342 + i:08d},{i + 1}.50000000,{200 + 2 * i},{201 + 2 * i},{time_text},"
                    f"{spelling if i % 3 else false},{spelling}")
    return rows


def write(path: Path, lines: list[str], *, header: str | None = None, newline: str = "\n") -> Path:
    path.write_text(newline.join(([header] if header else []) + lines) + newline, encoding="utf-8")
    return path


# -- layouts, headers, units, booleans --------------------------------------------------------------


@pytest.mark.parametrize(("lines", "layout"), [
    (agg_rows(3), "aggTrades"),
    ([AGG_HEADER] + agg_rows(3), "aggTrades"),
    ([row.rsplit(",", 1)[0] for row in agg_rows(3)], "aggTrades"),  # futures files have 7 columns
    (["", "1570752000000,1.0,1.0,1.0,1.0,5.0"], "klines"),
    (["open_time,open,high,low,close,volume", "1570752000000,1.0,1.0,1.0,1.0,5.0"], "klines"),
    ([KLINES_HEADER], "klines"),
    ([AGG_HEADER], "aggTrades"),
])
def test_detect_layout_tells_agg_trades_from_klines(tmp_path, lines, layout):
    assert detect_layout(write(tmp_path / "data.csv", lines)) == layout


@pytest.mark.parametrize(("path", "layout"), [
    (XRPETH_TRADES, "aggTrades"), (XRPETH_KLINES, "klines"), (ETHBTC_CANDLES, "klines")])
def test_detect_layout_knows_the_shared_files(path, layout):
    assert detect_layout(path) == layout


@pytest.mark.parametrize("header", [None, AGG_HEADER])
@pytest.mark.parametrize("unit", ["s", "ms", "µs"])
@pytest.mark.parametrize("spelling", ["True", "true"])
def test_agg_trades_read_alike_with_or_without_header_in_any_time_unit_and_boolean_spelling(
        tmp_path, header, unit, spelling):
    path = write(tmp_path / "trades.csv", agg_rows(5, unit=unit, spelling=spelling), header=header)

    ticks = list(read_agg_trades(path))

    assert ticks == [Tick(float(f"0.{141342 + i:08d}"), i + 1.5, T0 + i * 1_000, 100 + i, 200 + 2 * i, 201 + 2 * i,
                          bool(i % 3)) for i in range(5)]
    assert [t.is_buyer_maker for t in ticks] == [False, True, True, False, True]


@pytest.mark.parametrize(("open_time", "close_time"), [
    ("1570752000", "1570752059"),  # s: the close names its last second
    ("1570752000000", "1570752059999"),  # ms
    ("1570752000000000", "1570752059999999"),  # µs
])
def test_klines_times_in_any_unit_are_read_as_ms(tmp_path, open_time, close_time):
    path = write(tmp_path / "klines.csv", [f"{open_time},1.5,2.5,1.0,2.0,10.0,{close_time},20.0,7,4.0,8.0,0"])

    [candle] = read_klines(path)

    assert candle == Candle(T0, 1.5, 2.5, 1.0, 2.0, 10.0, T0 + 59_999, 20.0, 7, 4.0, 8.0)


def test_klines_with_six_columns_and_a_header_fill_the_missing_columns_with_zero():
    candles = read_klines(ETHBTC_CANDLES)

    assert len(candles) == 14_397
    assert candles[0] == Candle(1516423980000, 0.08939998, 0.08939998, 0.08909372, 0.08909374, 81.45320695,
                                1516424039999, 0.0, 0, 0.0, 0.0)


def test_klines_missing_minutes_stay_missing():
    candles = read_klines(ETHBTC_CANDLES)

    steps_ms = {b.open_time_ms - a.open_time_ms for a, b in zip(candles, candles[1:])}

    assert MINUTE_MS in steps_ms and len(steps_ms) > 1  # the exchange skipped minutes; nothing filled them
    assert len(candles) < (candles[-1].open_time_ms - candles[0].open_time_ms) // MINUTE_MS + 1


def test_binance_klines_equal_the_candles_built_from_its_agg_trades():
    assert read_klines(XRPETH_KLINES) == list(candles_from_ticks(read_agg_trades(XRPETH_TRADES)))


def test_blank_lines_and_crlf_line_ends_are_read(tmp_path):
    path = write(tmp_path / "trades.csv", agg_rows(3) + ["", ""], newline="\r\n")

    assert len(list(read_agg_trades(path))) == 3


# -- bad files ------------------------------------------------------------------------------------


def _replace(rows: list[str], index: int, row: str) -> list[str]:
    return rows[:index] + [row] + rows[index + 1:]


def _swap_field(row: str, column: int, value: str) -> str:
    fields = row.split(",")
    fields[column] = value
    return ",".join(fields)


# (name, how to spoil row `i` of `rows`, words of the message)
AGG_TRADES_FAULTS = [
    ("cut short", lambda rows, i: _replace(rows, i, rows[i][:25]), "3 columns instead of 8"),
    ("price not a number", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 1, "0.0O14")),
     "price '0.0O14' is not a number"),
    ("price NaN", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 1, "nan")), "price 'nan' is not a finite"),
    ("quantity negative", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 2, "-1.0")),
     "quantity '-1.0' is not above 0"),
    ("id not whole", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 0, "12.5")),
     "agg_trade_id '12.5' is not a whole number"),
    ("boolean misspelt", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 6, "TRUE")),
     "is_buyer_maker 'TRUE' is not true or false"),
    ("last column cut", lambda rows, i: _replace(rows, i, rows[i][:-2]), "is_best_match"),
    ("time going back", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 5, str(T0 - 1))),
     "is before the previous row's"),
    ("time in another unit", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 5, str((T0 + 10**9) * 1000))),
     "is not in ms like the first row"),
    ("id going back", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 0, "5")),
     "agg_trade_id 5 is not after the previous row's"),
    ("repeated row", lambda rows, i: _replace(rows, i, rows[i - 1]), "not sorted or repeats a trade"),
    ("trade ids reversed", lambda rows, i: _replace(rows, i, _swap_field(rows[i], 3, "999999999")),
     "first_trade_id 999999999 is after last_trade_id"),
]


@pytest.mark.parametrize(("fault", "spoil", "message"), AGG_TRADES_FAULTS, ids=[f[0] for f in AGG_TRADES_FAULTS])
@pytest.mark.parametrize("row_index", [1, 9_000])  # in the first chunk of lines, and far beyond it
@pytest.mark.parametrize("header", [None, AGG_HEADER])
def test_a_bad_agg_trades_row_raises_feed_error_naming_its_line(tmp_path, fault, spoil, message, row_index, header):
    path = write(tmp_path / "trades.csv", spoil(agg_rows(10_000), row_index), header=header)

    with pytest.raises(FeedError) as raised:
        list(read_agg_trades(path))

    line = row_index + 1 + (header is not None)
    assert (raised.value.path, raised.value.line) == (str(path), line)
    assert message in raised.value.message
    assert raised.value.format() == f"{path}:{line}: error: {raised.value.message}"


def test_a_last_row_in_another_time_unit_raises_feed_error(tmp_path):
    rows = agg_rows(100)
    path = write(tmp_path / "trades.csv", _replace(rows, 99, _swap_field(rows[99], 5, str((T0 + 10**9) * 1000))))

    with pytest.raises(FeedError, match="is not in ms like the first row") as raised:
        list(read_agg_trades(path))

    assert raised.value.line == 100


def test_ticks_before_a_bad_row_are_given_before_the_error(tmp_path):
    path = write(tmp_path / "trades.csv", _replace(agg_rows(10_000), 9_000, "oops"))
    ticks = []

    with pytest.raises(FeedError):
        for t in read_agg_trades(path):
            ticks.append(t)

    assert len(ticks) < 9_000 and ticks == list(read_agg_trades(write(tmp_path / "ok.csv", agg_rows(len(ticks)))))


KLINE = "1570752000000,1.5,2.5,1.0,2.0,10.0,1570752059999,20.0,7,4.0,8.0,0"
NEXT_KLINE = "1570752060000,2.0,2.0,2.0,2.0,0.0,1570752119999,0.0,0,0.0,0.0,0"
KLINES_FAULTS = [
    ("cut short", [KLINE, NEXT_KLINE[:25]], 2, "4 columns instead of 12"),
    ("high not a number", [KLINE, NEXT_KLINE.replace(",2.0,2.0,2.0,2.0,", ",2.0,x,2.0,2.0,", 1)], 2,
     "high 'x' is not a number"),
    ("going back in time", [NEXT_KLINE, KLINE], 2, "is not after the previous row's"),
    ("repeated minute", [KLINE, KLINE], 2, "is not after the previous row's"),
    ("low above high", ["1570752000000,1.5,1.0,2.5,2.0,10.0,1570752059999,20.0,7,4.0,8.0,0"], 1,
     "are not between low"),
    ("count not whole", [KLINE.replace(",7,", ",7.5,")], 1, "count '7.5' is not a whole number"),
    ("not a known layout", ["1,2,3"], 1, "3 columns: neither"),
]


@pytest.mark.parametrize(("fault", "lines", "line", "message"), KLINES_FAULTS, ids=[f[0] for f in KLINES_FAULTS])
def test_a_bad_klines_row_raises_feed_error_naming_its_line(tmp_path, fault, lines, line, message):
    path = write(tmp_path / "klines.csv", lines)

    with pytest.raises(FeedError) as raised:
        read_klines(path)

    assert (raised.value.line, message in raised.value.message) == (line, True), raised.value.message


@pytest.mark.parametrize(("content", "message"), [
    ("", "the file is empty"),
    ("\n\n", "the file is empty"),
    ("price,qty\n", "unknown header"),
    ("1,1.0,1.0,1,1,123456789012345678,True,True\n", "is not in s, ms or µs"),
    ("1,1.0,1.0,1,1,1570752000000,yes,True\n", "8 columns: neither"),
])
def test_a_file_without_a_layout_raises_feed_error_on_line_1(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)

    with pytest.raises(FeedError, match=message) as raised:
        detect_layout(path)

    assert raised.value.line == 1


def test_reading_a_file_of_the_other_layout_raises_feed_error_at_once():
    with pytest.raises(FeedError, match="klines file, not aggTrades"):
        read_agg_trades(XRPETH_KLINES)
    with pytest.raises(FeedError, match="aggTrades file, not klines"):
        read_klines(XRPETH_TRADES)


def test_a_header_without_rows_gives_no_ticks(tmp_path):
    assert list(read_agg_trades(write(tmp_path / "trades.csv", [AGG_HEADER]))) == []


# -- properties -----------------------------------------------------------------------------------


decimals_8 = st.integers(1, 10**14).map(lambda units: f"{units // 10**8}.{units % 10**8:08d}")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(prices=st.lists(decimals_8, min_size=1, max_size=40), qtys=st.data(), unit=st.sampled_from(["s", "ms", "µs"]),
       has_header=st.booleans(), spelling=st.sampled_from(["True", "true"]))
def test_agg_trades_files_read_back_exactly_as_written(tmp_path, prices, qtys, unit, has_header, spelling):
    rows, expected = [], []
    for i, price in enumerate(prices):
        qty = qtys.draw(decimals_8)
        time_ms = T0 + i * 1_000 * 7  # whole seconds, so that a file in s holds them too
        written_time = {"s": time_ms // 1000, "ms": time_ms, "µs": time_ms * 1000}[unit]
        is_buyer_maker = i % 2 == 0
        maker_text = spelling if is_buyer_maker else {"True": "False", "true": "false"}[spelling]
        rows.append(f"{i + 1},{price},{qty},{i * 3},{i * 3 + 2},{written_time},{maker_text},{spelling}")
        expected.append(Tick(float(price), float(qty), time_ms, i + 1, i * 3, i * 3 + 2, is_buyer_maker))
    path = write(tmp_path / "trades.csv", rows, header=AGG_HEADER if has_header else None)

    assert list(read_agg_trades(path)) == expected


# -- replay ---------------------------------------------------------------------------------------


class FakeClock:
    """monotonic() and sleep() for a replay: sleeping moves the clock on at once."""

    def __init__(self):
        self.now_s = 100.0
        self.sleeps: list[float] = []
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def test_replay_at_speed_0_gives_every_tick_without_waiting_or_reading_the_clock():
    clock = FakeClock()

    ticks = list(ReplayFeed(XRPETH_TRADES, speed=0, sleep=clock.sleep, monotonic=clock.monotonic))

    assert len(ticks) == 5_929 and ticks == list(read_agg_trades(XRPETH_TRADES))
    assert (clock.sleeps, clock.reads) == ([], 0)


def test_replay_paces_ticks_at_speed_times_real_time(tmp_path):
    times_ms = [T0, T0 + 60_000, T0 + 60_000, T0 + 90_000]
    rows = [f"{i + 1},1.0,1.0,{i},{i},{t},True,True" for i, t in enumerate(times_ms)]
    clock = FakeClock()
    feed = ReplayFeed(write(tmp_path / "trades.csv", rows), speed=60, sleep=clock.sleep, monotonic=clock.monotonic)

    seen = [(t.time_ms, clock.now_s) for t in feed]

    assert clock.sleeps == [1.0, 0.5]
    assert seen == [(T0, 100.0), (T0 + 60_000, 101.0), (T0 + 60_000, 101.0), (T0 + 90_000, 101.5)]
    assert clock.reads == 4  # only for a tick due after the clock's last reading, never for the third
    assert feed.replay_now_ms() == T0 + 90_000


def test_replay_does_not_wait_when_the_consumer_is_already_late(tmp_path):
    rows = [f"{i + 1},1.0,1.0,{i},{i},{T0 + i * 60_000},True,True" for i in range(3)]
    clock = FakeClock()
    feed = ReplayFeed(write(tmp_path / "trades.csv", rows), speed=60, sleep=clock.sleep, monotonic=clock.monotonic)

    for _ in feed:
        clock.now_s += 5.0  # the worker spends 5 s on each tick, longer than the 1 s between them

    assert clock.sleeps == []


def test_replay_of_klines_gives_candles_as_they_close():
    clock = FakeClock()
    feed = ReplayFeed(ETHBTC_CANDLES, speed=600, sleep=clock.sleep, monotonic=clock.monotonic)
    candles = []

    for candle in feed:
        candles.append(candle)
        if len(candles) == 4:
            break

    assert candles == read_klines(ETHBTC_CANDLES)[:4]
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])  # a minute of data is 0.1 s at 600 times real time


def test_replay_starts_over_when_iterated_again():
    clock = FakeClock()
    feed = ReplayFeed(XRPETH_KLINES, speed=0, sleep=clock.sleep, monotonic=clock.monotonic)

    assert list(feed) == list(feed) == read_klines(XRPETH_KLINES)


@pytest.mark.parametrize("speed", [-1, float("nan")])
def test_replay_refuses_a_speed_below_zero(speed):
    with pytest.raises(ValueError, match="replay speed"):
        ReplayFeed(XRPETH_TRADES, speed=speed)

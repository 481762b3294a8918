"""core/binance/feed.py: the start and every hole in the trade ids are filled from the stand-in's klines."""

from __future__ import annotations

import queue
import threading

import pytest

from core.binance.rest import SPOT, BinanceRest
from core.binance.feed import (LATE_DECISION_MS, Backfill, BinanceFeed, Disconnected, StreamTime, Trade,
                               parse_agg_trade)
from core.brokers import PaperBroker
from core.candles import Candle, Tick
from core.config import Settings
from core.feeds import read_agg_trades
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.conftest import SHARED_DATA
from tests.exchange.standin import DAY_START_MS, start_standin

HOUR_MS = 3_600_000
TICKS = list(read_agg_trades(SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"))


class FakeReader:
    """Stands for the websocket reader: the test puts the events."""

    market = SPOT

    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def start(self):
        pass

    def close(self):
        pass


class FakeMonotonic:
    def __init__(self):
        self.now_s = 1000.0

    def __call__(self) -> float:
        self.now_s += 1.0  # every look at the clock is a second later: StreamTime comes every time
        return self.now_s


@pytest.fixture(scope="module")
def standin():
    exchange = start_standin(start_ms=DAY_START_MS + 24 * HOUR_MS - 60_000)  # every kline of the day is final
    yield exchange
    exchange.close()


def make_feed(standin, reader, after_ms=None, warmup_minutes=60, on_state=None, monotonic=None):
    settings = Settings(symbol="XRPETH", feed="binance", binance_api_url=standin.api_url)
    rest = BinanceRest(settings, SPOT, sleep=lambda s: None, random=lambda: 0.5)
    return BinanceFeed(rest, reader, "XRPETH", after_ms, warmup_minutes, threading.Event(), on_state=on_state,
                       monotonic=monotonic or FakeMonotonic())


def trade(tick: Tick) -> Trade:
    return Trade(tick, tick.time_ms + 3)


def trade_all(feed: BinanceFeed, trader: Trader) -> list:
    """Dispatch the feed's items as the worker does, until the reader's events are used up."""
    seen = []
    for item in feed:
        seen.append(item)
        if isinstance(item, Tick):
            trader.on_tick(item)
        elif isinstance(item, Backfill):
            trader.backfill(item.candles, item.decide_from_ms)
        elif isinstance(item, StreamTime) and item.now_ms is not None:
            trader.close_due(item.now_ms)
        if feed.reader.events.empty():
            feed.stop.set()
    return seen


@pytest.fixture
def trader(db, data_dir):
    (data_dir / "strategy.txt").write_text("IF CLOSE > OPEN THEN BUY\nIF CLOSE < OPEN THEN SELL\n")
    return Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), PaperBroker(db, "XRPETH", 10.0))


def stored(db) -> list[Candle]:
    rows = db.execute("SELECT open_time_ms, open, high, low, close, volume, close_time_ms, quote_volume, trades, "
                      "taker_buy_base, taker_buy_quote FROM candles ORDER BY open_time_ms").fetchall()
    return [Candle(*row) for row in rows]


def binance_kline(standin, open_ms: int) -> Candle:
    row = standin.kline_row(open_ms)
    return Candle(int(row[0]), *map(float, row[1:6]), int(row[6]), float(row[7]), int(row[8]), float(row[9]),
                  float(row[10]))


def test_candles_equal_binance_klines_across_the_start_and_a_hole_in_the_trade_ids(standin, db, trader):
    start_ms, hole_ms, back_ms, end_ms = (DAY_START_MS + h * HOUR_MS for h in (3.01, 3.5, 3.9, 5))
    reader = FakeReader()
    for tick in TICKS:
        if start_ms <= tick.time_ms < end_ms and not hole_ms <= tick.time_ms < back_ms:
            reader.events.put(trade(tick))
        if tick.time_ms == max(t.time_ms for t in TICKS if t.time_ms < hole_ms):
            reader.events.put(Disconnected("ConnectionClosedError: no close frame received or sent"))
    feed = make_feed(standin, reader, monotonic=lambda: 1000.0)  # stream time is the latest event time
    items = trade_all(feed, trader)
    backfills = [item for item in items if isinstance(item, Backfill)]
    assert feed.backfills == len(backfills) == 2
    candles = stored(db)
    first_minute = min(t.time_ms for t in TICKS if t.time_ms >= start_ms) // 60_000 * 60_000
    last_tick_minute = max(t.time_ms for t in TICKS if t.time_ms < end_ms) // 60_000 * 60_000
    # One candle for every minute from the warm-up start to the last finished minute, each Binance's own.
    assert [c.open_time_ms for c in candles] == list(range(first_minute - 60 * 60_000, last_tick_minute, 60_000))
    assert candles == [binance_kline(standin, c.open_time_ms) for c in candles]
    # The hole's minutes came from klines; only the recent ones were decided, none of the warm-up.
    hole = backfills[1]
    assert hole.candles[0].open_time_ms < hole_ms < back_ms <= hole.candles[-1].open_time_ms + 60_000
    decided = {t for (t,) in db.execute("SELECT candle_open_time_ms FROM decisions")}
    assert not decided & {c.open_time_ms for c in hole.candles if c.open_time_ms < hole.decide_from_ms}
    assert hole.candles[-1].open_time_ms in decided
    assert hole.decide_from_ms >= hole.candles[-1].open_time_ms - LATE_DECISION_MS
    assert not decided & {c.open_time_ms for c in backfills[0].candles[:-6]}


def test_no_minute_closes_by_the_clock_while_the_stream_is_down_or_a_gap_is_open(standin, db):
    ticks = [t for t in TICKS if t.time_ms >= DAY_START_MS + 4 * HOUR_MS][:40]
    reader = FakeReader()
    feed = make_feed(standin, reader, warmup_minutes=5)
    for tick in ticks[:20]:
        reader.events.put(trade(tick))
    reader.events.put(Disconnected("network"))
    times = []
    for item in feed:
        if isinstance(item, StreamTime):
            times.append(item.now_ms)
        if reader.events.empty():
            break
    assert times[-1] is None  # down: nothing closes by the clock
    reader.events.put(trade(ticks[25]))  # back, but five trades were missed: a gap is open
    for item in feed:
        if isinstance(item, StreamTime):
            assert item.now_ms is None
            break
    assert feed.gap is not None and feed.gap.to_ms == ticks[25].time_ms // 60_000 * 60_000


def drain(items, reader) -> None:
    """Take the feed's items until the reader's events are used up and a loop of the feed has ended."""
    item = None
    while not reader.events.empty() or not isinstance(item, StreamTime):
        item = next(items)


def test_a_stream_down_longer_than_the_grace_is_reported_once_and_then_its_recovery(standin):
    states = []
    clock = FakeMonotonic()
    reader = FakeReader()
    feed = make_feed(standin, reader, on_state=lambda is_up, reason: states.append((is_up, reason)),
                     monotonic=clock)
    ticks = [t for t in TICKS if t.time_ms >= DAY_START_MS + 4 * HOUR_MS]
    refused = "ConnectionRefusedError: [Errno 111] Connect call failed"
    reader.events.put(trade(ticks[0]))
    reader.events.put(Disconnected(refused))
    items = iter(feed)
    drain(items, reader)
    assert states == []  # a short break is not alerted
    clock.now_s += 60  # a minute of failed reconnects
    for _ in range(3):
        reader.events.put(Disconnected(refused))
    drain(items, reader)
    assert states == [(False, f"the trade stream is down ({refused})")]
    reader.events.put(trade(ticks[1]))
    drain(items, reader)
    assert states[1:] == [(True, "the XRPETH trade stream is up and its candles are complete")]


@pytest.mark.parametrize("message", [
    {"e": "aggTrade", "E": 1570762800003, "s": "XRPETH", "a": 5, "p": "0.00141342", "q": "23.00000000", "f": 7,
     "l": 8, "T": 1570762800000, "m": True, "M": True},
    {"stream": "xrpeth@aggTrade", "data": {"e": "aggTrade", "E": 1570762800003, "s": "XRPETH", "a": 5,
                                          "p": "0.00141342", "q": "23.00000000", "f": 7, "l": 8, "T": 1570762800000,
                                          "m": True}},
])
def test_agg_trade_messages_of_spot_and_futures_streams_become_ticks(message):
    assert parse_agg_trade(message) == Trade(Tick(0.00141342, 23.0, 1570762800000, 5, 7, 8, True), 1570762800003)
    assert parse_agg_trade({"e": "error", "type": "ConnectionClosedError", "m": "x"}) is None


@pytest.mark.parametrize("market", [SPOT, "futures"])
def test_the_reader_streams_trades_through_python_binance_and_reconnects_after_a_drop(market):
    from core.binance.feed import StreamReader

    exchange = start_standin(speed=600)
    reader = StreamReader(exchange.stream_url, "XRPETH", market)
    reader.start()
    try:
        events = [reader.events.get(timeout=10) for _ in range(3)]
        assert all(isinstance(event, Trade) for event in events)
        assert [e.tick.agg_id for e in events] == sorted(e.tick.agg_id for e in events)
        assert exchange.drop_streams() == 1
        event = reader.events.get(timeout=10)
        while isinstance(event, Trade):  # trades already on their way
            event = reader.events.get(timeout=10)
        assert isinstance(event, Disconnected)
        while not isinstance(event, Trade):  # python-binance connects again by itself
            event = reader.events.get(timeout=10)
        assert event.tick.agg_id > events[-1].tick.agg_id
    finally:
        reader.close()
        exchange.close()

"""core/binance/feed.py: candles are Binance's final klines; the start and every missed minute come from the
stand-in's REST klines; nothing closes while the stream is silent."""

from __future__ import annotations

import queue
import threading

import pytest

from core.binance.feed import (LATE_DECISION_MS, Backfill, BinanceFeed, Disconnected, KlineUpdate, StreamReader,
                               StreamTime, parse_kline)
from core.binance.rest import SPOT, BinanceRest
from core.brokers import PaperBroker
from core.candles import Candle
from core.config import Settings
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.exchange.standin import DAY_START_MS, start_standin

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


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


def final(standin, open_ms: int) -> KlineUpdate:
    """The stream's final kline of a minute: Binance's own, pushed just after the minute ends."""
    return KlineUpdate(binance_kline(standin, open_ms), True, open_ms + MINUTE_MS + 5)


def partial(standin, open_ms: int) -> KlineUpdate:
    """A kline update of a minute in progress (its values do not matter: it never becomes a candle)."""
    candle = binance_kline(standin, open_ms)._replace(close=1.0, volume=0.0)
    return KlineUpdate(candle, False, open_ms + 30_000)


def trade_all(feed: BinanceFeed, trader: Trader) -> list:
    """Dispatch the feed's items as the worker does, until the reader's events are used up."""
    seen = []
    for item in feed:
        seen.append(item)
        if isinstance(item, Candle):
            trader.on_candle(item)
        elif isinstance(item, Backfill):
            trader.backfill(item.candles, item.decide_from_ms)
        if feed.reader.events.empty() and feed.gap is None:
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


def test_candles_are_binance_klines_across_the_start_and_a_dropped_connection(standin, db, trader):
    start_ms, hole_ms, back_ms, end_ms = (DAY_START_MS + h * HOUR_MS for h in (3, 3.5, 3.9, 5))
    reader = FakeReader()
    reader.events.put(partial(standin, start_ms))  # joined halfway through a minute
    for open_ms in range(start_ms, end_ms, MINUTE_MS):
        if open_ms == hole_ms:
            reader.events.put(Disconnected("ConnectionClosedError: no close frame received or sent"))
        if not hole_ms <= open_ms < back_ms:
            reader.events.put(partial(standin, open_ms))
            reader.events.put(final(standin, open_ms))
            reader.events.put(final(standin, open_ms))  # sent again: taken once
    feed = make_feed(standin, reader)
    items = trade_all(feed, trader)
    backfills = [item for item in items if isinstance(item, Backfill)]
    assert feed.backfills == len(backfills) == 2
    candles = stored(db)
    # One candle for every minute from the warm-up start to the last final one, each Binance's own kline.
    assert [c.open_time_ms for c in candles] == list(range(start_ms - 60 * MINUTE_MS, end_ms, MINUTE_MS))
    assert candles == [binance_kline(standin, c.open_time_ms) for c in candles]
    assert all(c.close != 1.0 for c in candles)  # no update of a minute in progress became a candle
    # The missed minutes came from klines; only the recent ones were decided, none of the warm-up.
    hole = backfills[1]
    assert (hole.candles[0].open_time_ms, hole.candles[-1].open_time_ms) == (hole_ms, back_ms - MINUTE_MS)
    decided = {t for (t,) in db.execute("SELECT candle_open_time_ms FROM decisions")}
    assert not decided & {c.open_time_ms for c in hole.candles if c.open_time_ms < hole.decide_from_ms}
    assert hole.candles[-1].open_time_ms in decided and back_ms in decided
    assert hole.decide_from_ms == back_ms + 30_000 - LATE_DECISION_MS - MINUTE_MS
    assert not decided & {c.open_time_ms for c in backfills[0].candles[:-6]}


def test_no_minute_closes_while_the_stream_is_silent_or_sends_only_updates(standin, db, trader):
    reader = FakeReader()
    feed = make_feed(standin, reader, after_ms=DAY_START_MS + 4 * HOUR_MS - MINUTE_MS)
    items = iter(feed)
    silent = [next(items) for _ in range(5)]  # nothing from the stream: the clock alone closes nothing
    assert silent == [StreamTime(None)] * 5
    reader.events.put(partial(standin, DAY_START_MS + 4 * HOUR_MS))
    reader.events.put(partial(standin, DAY_START_MS + 4 * HOUR_MS))
    seen = [next(items) for _ in range(3)]
    assert all(isinstance(item, StreamTime) for item in seen)
    reader.events.put(final(standin, DAY_START_MS + 4 * HOUR_MS))
    item = next(items)
    while isinstance(item, StreamTime):
        item = next(items)
    assert item == binance_kline(standin, DAY_START_MS + 4 * HOUR_MS)


def test_a_gap_whose_klines_binance_does_not_have_yet_is_asked_again_later(standin):
    reader = FakeReader()
    late_ms = DAY_START_MS + 24 * HOUR_MS + 10 * MINUTE_MS  # minutes the stand-in's klines do not have
    feed = make_feed(standin, reader, after_ms=late_ms - 3 * MINUTE_MS)
    reader.events.put(KlineUpdate(Candle(late_ms, 1, 1, 1, 1, 0, late_ms + 59_999, 0, 0, 0, 0), False, late_ms + 1))
    items = iter(feed)
    for _ in range(3):
        assert isinstance(next(items), StreamTime)
    assert feed.gap is not None and feed.backfills == 0


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
    minute_ms = DAY_START_MS + 4 * HOUR_MS
    refused = "ConnectionRefusedError: [Errno 111] Connect call failed"
    feed.after_ms = minute_ms - MINUTE_MS
    reader.events.put(final(standin, minute_ms))
    reader.events.put(Disconnected(refused))
    items = iter(feed)
    drain(items, reader)
    assert states == []  # a short break is not alerted
    clock.now_s += 60  # a minute of failed reconnects
    for _ in range(3):
        reader.events.put(Disconnected(refused))
    drain(items, reader)
    assert states == [(False, f"the kline stream is down ({refused})")]
    reader.events.put(final(standin, minute_ms + MINUTE_MS))
    drain(items, reader)
    assert states[1:] == [(True, "the XRPETH kline stream is up and its candles are complete")]


KLINE = {"e": "kline", "E": 1570762860005, "s": "XRPETH",
         "k": {"t": 1570762800000, "T": 1570762859999, "s": "XRPETH", "i": "1m", "f": 100, "L": 200,
               "o": "0.00141342", "c": "0.00141400", "h": "0.00141500", "l": "0.00141300", "v": "2300.00000000",
               "n": 12, "x": True, "q": "3.25000000", "V": "1200.00000000", "Q": "1.70000000", "B": "0"}}


@pytest.mark.parametrize("message", [KLINE, {"stream": "xrpeth@kline_1m", "data": KLINE}])
def test_kline_messages_of_spot_and_futures_streams_become_candles(message):
    assert parse_kline(message) == KlineUpdate(
        Candle(1570762800000, 0.00141342, 0.00141500, 0.00141300, 0.00141400, 2300.0, 1570762859999, 3.25, 12,
               1200.0, 1.7), True, 1570762860005)
    assert parse_kline({"e": "error", "type": "ConnectionClosedError", "m": "x"}) is None
    assert parse_kline({"e": "aggTrade", "a": 1}) is None


def next_event(reader, kind, timeout_s=10.0):
    """The reader's next event of `kind`, skipping the others."""
    while True:
        event = reader.events.get(timeout=timeout_s)
        if isinstance(event, kind):
            return event


@pytest.mark.parametrize("market", [SPOT, "futures"])
def test_the_reader_streams_klines_through_python_binance_and_reconnects_after_a_drop(market):
    exchange = start_standin(speed=600)
    reader = StreamReader(exchange.stream_url, "XRPETH", market)
    reader.start()
    try:
        finals = []
        while len(finals) < 3:
            event = next_event(reader, KlineUpdate)
            if event.is_final:
                finals.append(event.candle)
        assert [c.open_time_ms for c in finals] == list(range(finals[0].open_time_ms, finals[0].open_time_ms
                                                              + 3 * MINUTE_MS, MINUTE_MS))
        assert finals == [binance_kline(exchange, c.open_time_ms) for c in finals]
        assert exchange.drop_streams() == 1
        next_event(reader, Disconnected)
        later = next_event(reader, KlineUpdate)  # python-binance connects again by itself
        assert later.candle.open_time_ms > finals[-1].open_time_ms
    finally:
        reader.close()
        exchange.close()


def test_a_silent_connection_is_dropped_and_opened_again():
    exchange = start_standin(speed=600)
    reader = StreamReader(exchange.stream_url, "XRPETH", SPOT, random=lambda: 0.0, stall_s=1.0)
    reader.start()
    try:
        next_event(reader, KlineUpdate)
        assert exchange.stall_streams() == 1  # open, but nothing comes any more (half-open TCP)
        assert "no message for 1 s" in next_event(reader, Disconnected).reason
        next_event(reader, KlineUpdate)  # a new connection delivers again
        assert reader.connections == 2
    finally:
        reader.close()
        exchange.close()


def test_a_server_shutdown_announcement_reconnects_at_once():
    exchange = start_standin(speed=600)
    reader = StreamReader(exchange.stream_url, "XRPETH", SPOT, random=lambda: 1.0)
    reader.start()
    try:
        next_event(reader, KlineUpdate)
        assert exchange.announce_shutdown() == 1
        assert "shutdown" in next_event(reader, Disconnected).reason
        next_event(reader, KlineUpdate)
        assert reader.connections == 2
    finally:
        reader.close()
        exchange.close()


def test_the_reader_streams_every_trade_on_the_klines_connection_and_marks_the_first_after_a_connect():
    from core.candles import LiveTrade

    exchange = start_standin(speed=600)
    reader = StreamReader(exchange.stream_url, "XRPETH", SPOT, random=lambda: 0.0)
    reader.start()
    try:
        trades, klines = [], 0
        while len(trades) < 20 or not klines:
            event = reader.events.get(timeout=10)
            if isinstance(event, LiveTrade):
                trades.append(event)
            elif isinstance(event, KlineUpdate):
                klines += 1
        assert reader.connections == 1  # both streams on one connection
        by_id = {int(row[0]): row for row in exchange.trades}
        assert [(t.price, t.time_ms) for t in trades] == [(float(by_id[t.agg_id][1]), int(by_id[t.agg_id][5]))
                                                          for t in trades]
        ids = [t.agg_id for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # every trade, in order
        assert [t.is_first_seen for t in trades] == [True] + [False] * (len(trades) - 1)
        assert exchange.drop_streams() == 1
        after = next_event(reader, LiveTrade)
        while not after.is_first_seen:  # trades read before the drop may still wait in the queue
            after = next_event(reader, LiveTrade)
        assert after.agg_id > ids[-1]  # python-binance reconnected by itself
    finally:
        reader.close()
        exchange.close()


def test_the_feed_hands_every_trade_over_as_it_comes(standin):
    from core.candles import LiveTrade

    reader = FakeReader()
    start_ms = DAY_START_MS + 3 * HOUR_MS
    trades = [LiveTrade(0.0016 + i * 1e-7, start_ms + 5_000 + i, 100 + i, i == 0) for i in range(3)]
    for trade in trades:
        reader.events.put(trade)
    feed = make_feed(standin, reader, after_ms=start_ms - MINUTE_MS)
    seen = []
    for item in feed:
        seen.append(item)
        if reader.events.empty():
            feed.stop.set()
    assert [item for item in seen if isinstance(item, LiveTrade)] == trades
    assert not any(isinstance(item, (Candle, Backfill)) for item in seen)  # trades make no candle

"""The live feed: Binance's aggTrade stream of one symbol, with every gap filled from REST klines.

A reader thread holds the websocket (python-binance's BinanceSocketManager, pointed at the configured
stream URL; it reconnects by itself, and the reader opens a new socket with jittered backoff when it
gives up) and hands trades over through a queue, so a slow order never stalls the stream.
Iterating the feed yields, in the trader's terms:

- `Tick`s, while the aggregate trade ids run on without a hole;
- `Backfill`: Binance's own klines for the minutes the stream did not fully deliver: on start (the
  warm-up hours and the first minute, joined halfway) and after every hole in the ids (a dropped
  connection: Binance closes every one after 24 h, networks fail). They are fetched once the last of
  those minutes is over, so the candles always equal the exchange's klines;
- `StreamTime` about twice a second: the exchange's time by the stream (the latest event time plus the
  time since it came), or None while the stream is down or a gap is open, when no minute may close by
  the clock because its trades may still be missing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random as _random
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from binance.async_client import AsyncClient
from binance.ws.streams import BinanceSocketManager

from core.binance.rest import SPOT, BinanceRest, backoff_s, endpoints
from core.brokers import BrokerError
from core.candles import MINUTE_MS, Candle, Tick

log = logging.getLogger(__name__)

KLINES_PER_REQUEST = 1000  # Binance's maximum
LATE_DECISION_MS = 5 * MINUTE_MS  # a candle from klines that closed longer ago only warms the indicators
DOWN_ALERT_S = 30.0  # a stream down (or a gap not filled) this long is alerted; a quick reconnect is not
STREAM_TIME_EVERY_S = 0.5


class Backfill(NamedTuple):
    """Closed candles from Binance's klines in place of ticks the stream did not deliver."""

    candles: list[Candle]
    decide_from_ms: int  # candles opened at or after this are traded; older ones only warm the indicators


class StreamTime(NamedTuple):
    """The exchange's time by the stream, or None while minutes must not close by the clock."""

    now_ms: int | None


class Trade(NamedTuple):
    """A trade from the stream, with the event time of its message."""

    tick: Tick
    event_ms: int


class Disconnected(NamedTuple):
    """The stream broke (or could not connect); the reader is connecting again."""

    reason: str


def parse_agg_trade(message: dict) -> Trade | None:
    """A Trade from an aggTrade message (raw or combined-stream form); None for other messages."""
    data = message.get("data", message)
    if data.get("e") != "aggTrade":
        return None
    tick = Tick(float(data["p"]), float(data["q"]), int(data["T"]), int(data["a"]), int(data["f"]),
                int(data["l"]), bool(data["m"]))
    return Trade(tick, int(data.get("E", data["T"])))


def kline_candle(row: list) -> Candle:
    """A Candle from one row of Binance's klines endpoint."""
    return Candle(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]),
                  int(row[6]), float(row[7]), int(row[8]), float(row[9]), float(row[10]))


class StreamReader(threading.Thread):
    """Reads the aggTrade stream in its own thread and event loop, putting Trade and Disconnected events
    on `events`; reconnects until `close()`."""

    def __init__(self, stream_url: str, symbol: str, market: str = SPOT,
                 random: Callable[[], float] = _random.random):
        super().__init__(name="binance-stream", daemon=True)
        self.stream_url = stream_url
        self.symbol = symbol
        self.market = market
        self.random = random
        self.events: queue.Queue = queue.Queue()
        self._closing = threading.Event()

    def run(self) -> None:
        asyncio.run(self._read())

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop reading (within about a second) and wait for the thread."""
        self._closing.set()
        if self.is_alive():
            self.join(timeout_s)

    async def _read(self) -> None:
        client = AsyncClient()  # only the socket manager's settings: makes no network call
        manager = BinanceSocketManager(client)
        manager.STREAM_URL = manager.FSTREAM_URL = self.stream_url
        failures = 0
        try:
            while not self._closing.is_set():
                socket = manager.aggtrade_socket(self.symbol) if self.market == SPOT else \
                    manager.aggtrade_futures_socket(self.symbol)
                socket.TIMEOUT = 1  # its read loop looks for a close this often
                try:
                    async with socket as stream:
                        failures = 0
                        await self._pump(stream)
                except Exception as exc:  # noqa: BLE001 - any failure: report it, then connect again
                    self.events.put(Disconnected(f"{type(exc).__name__}: {exc}"))
                if self._closing.is_set():
                    break
                failures += 1
                delay = backoff_s(failures, self.random)
                log.warning("trade stream: connecting again in %.1f s", delay)
                await self._pause(delay)
        finally:
            await client.close_connection()

    async def _pump(self, stream) -> None:
        while not self._closing.is_set():
            try:
                message = await asyncio.wait_for(stream.recv(), 1.0)
            except asyncio.TimeoutError:
                continue
            if message.get("e") == "error":  # python-binance reports a broken connection and reconnects
                self.events.put(Disconnected(f"{message.get('type')}: {message.get('m')}"))
                continue
            trade = parse_agg_trade(message)
            if trade is not None:
                self.events.put(trade)

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))


class _Gap:
    """Minutes from_ms..to_ms (open times) to take from klines, and the ticks held meanwhile."""

    def __init__(self, from_ms: int, to_ms: int):
        self.from_ms = from_ms
        self.to_ms = to_ms
        self.ticks: list[Tick] = []


class BinanceFeed:
    """Ticks of Binance's stream, with the start and every hole in the trade ids filled from klines."""

    def __init__(self, rest: BinanceRest, reader: StreamReader, symbol: str, after_ms: int | None,
                 warmup_minutes: int, stop: threading.Event, lateness_ms: int = 2000,
                 on_state: Callable[[bool, str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.rest = rest
        self.reader = reader
        self.symbol = symbol
        self.after_ms = after_ms  # the newest candle already stored
        self.warmup_minutes = warmup_minutes
        self.stop = stop
        self.lateness_ms = lateness_ms
        self.on_state = on_state
        self.monotonic = monotonic
        self.klines_method = "get_klines" if rest.market == SPOT else "futures_klines"
        self.last_agg_id: int | None = None  # the last trade id taken from the stream
        self.open_minute_ms: int | None = None  # earliest minute whose ticks may be incomplete after a hole
        self.gap: _Gap | None = None
        self.backfills = 0
        self._event_ms: int | None = None  # newest event time and when it came (monotonic s)
        self._event_at_s = 0.0
        self._problems: dict[str, tuple[float, str]] = {}  # kind -> (since, reason)
        self._is_reported_down = False
        self._next_backfill_s = 0.0
        self._backfill_failures = 0
        self._stream_time_at_s = 0.0

    def stream_now_ms(self) -> int | None:
        """The exchange's time by the stream: the newest event time plus the time since it came."""
        if self._event_ms is None:
            return None
        return self._event_ms + int((self.monotonic() - self._event_at_s) * 1000)

    def __iter__(self) -> Iterator[Tick | Backfill | StreamTime]:
        self.reader.start()
        try:
            while not self.stop.is_set():
                try:
                    event = self.reader.events.get(timeout=STREAM_TIME_EVERY_S)
                except queue.Empty:
                    event = None
                if isinstance(event, Trade):
                    yield from self._take(event)
                elif isinstance(event, Disconnected):
                    self._problem("stream", f"the trade stream is down ({event.reason})")
                if self.gap is not None:
                    yield from self._fill_gap()
                self._report()
                if self.monotonic() - self._stream_time_at_s >= STREAM_TIME_EVERY_S:
                    self._stream_time_at_s = self.monotonic()
                    is_closing_allowed = self.gap is None and "stream" not in self._problems
                    yield StreamTime(self.stream_now_ms() if is_closing_allowed else None)
        finally:
            self.reader.close()

    def _take(self, trade: Trade) -> Iterator[Tick]:
        tick = trade.tick
        if self._event_ms is None or trade.event_ms >= self._event_ms:
            self._event_ms, self._event_at_s = trade.event_ms, self.monotonic()
        self._resolved("stream")
        if self.last_agg_id is not None and tick.agg_id <= self.last_agg_id:
            return  # sent again after a reconnect
        minute_ms = tick.time_ms - tick.time_ms % MINUTE_MS
        if self.gap is None and self.last_agg_id is not None and tick.agg_id == self.last_agg_id + 1:
            self.last_agg_id = tick.agg_id
            self.open_minute_ms = minute_ms
            yield tick
            return
        if self.gap is None:
            if self.last_agg_id is None:  # the start: warm-up hours, or what was missed while stopped
                from_ms = minute_ms - self.warmup_minutes * MINUTE_MS
                if self.after_ms is not None:
                    from_ms = min(max(from_ms, self.after_ms + MINUTE_MS), minute_ms)
            else:
                from_ms = self.open_minute_ms
                log.warning("trade ids jump from %d to %d: minutes from %s come from klines", self.last_agg_id,
                            tick.agg_id, _iso(from_ms))
            self.gap = _Gap(from_ms, minute_ms)
        self.gap.ticks.append(tick)
        self.last_agg_id = tick.agg_id

    def _fill_gap(self) -> Iterator[Tick | Backfill]:
        """Fetch the gap's klines once its last minute is over, then hand over the ticks held after it."""
        gap = self.gap
        end_ms = gap.to_ms + MINUTE_MS
        now_ms = self.stream_now_ms()
        is_over = gap.ticks[-1].time_ms >= end_ms or (now_ms is not None and now_ms >= end_ms + self.lateness_ms)
        if not is_over or self.monotonic() < self._next_backfill_s:
            return
        try:
            candles = self._klines(gap.from_ms, gap.to_ms)
            if not candles or candles[-1].open_time_ms < gap.to_ms:
                raise BrokerError(f"Binance has no kline for {_iso(gap.to_ms)} yet")
        except BrokerError as exc:
            self._backfill_failures += 1
            self._next_backfill_s = self.monotonic() + backoff_s(self._backfill_failures, self.rest.random)
            self._problem("klines", f"candles from {_iso(gap.from_ms)} cannot be filled in from Binance's "
                                    f"klines: {exc}")
            return
        self._backfill_failures = 0
        self._resolved("klines")
        self.gap = None
        self.backfills += 1
        decide_from_ms = (now_ms if now_ms is not None else end_ms) - LATE_DECISION_MS - MINUTE_MS
        yield Backfill(candles, decide_from_ms)
        self.open_minute_ms = end_ms
        for tick in gap.ticks:
            if tick.time_ms >= end_ms:
                self.open_minute_ms = tick.time_ms - tick.time_ms % MINUTE_MS
                yield tick

    def _klines(self, from_ms: int, to_ms: int) -> list[Candle]:
        candles: list[Candle] = []
        start_ms = from_ms
        while start_ms <= to_ms:
            rows = self.rest.call(self.klines_method, symbol=self.symbol, interval="1m", startTime=start_ms,
                                  endTime=to_ms, limit=KLINES_PER_REQUEST)
            candles.extend(kline_candle(row) for row in rows)
            if len(rows) < KLINES_PER_REQUEST:
                break
            start_ms = candles[-1].open_time_ms + MINUTE_MS
        return candles

    def _problem(self, kind: str, reason: str) -> None:
        if kind not in self._problems:
            log.warning("%s", reason)
        since_s = self._problems.get(kind, (self.monotonic(), ""))[0]
        self._problems[kind] = (since_s, reason)

    def _resolved(self, kind: str) -> None:
        problem = self._problems.pop(kind, None)
        if problem is not None:
            log.warning("resolved after %.1f s: %s", self.monotonic() - problem[0], problem[1])

    def _report(self) -> None:
        """Tell on_state when a problem has lasted DOWN_ALERT_S, and when everything is fine again."""
        if self.on_state is None:
            return
        if self._problems and not self._is_reported_down:
            since_s, reason = min(self._problems.values())
            if self.monotonic() - since_s >= DOWN_ALERT_S:
                self._is_reported_down = True
                self.on_state(False, reason)
        elif not self._problems and self._is_reported_down:
            self._is_reported_down = False
            self.on_state(True, f"the {self.symbol} trade stream is up and its candles are complete")


def open_feed(settings, rest: BinanceRest, after_ms: int | None, stop: threading.Event,
              on_state: Callable[[bool, str], None] | None = None) -> BinanceFeed:
    """The live feed for the settings' symbol and market, continuing after the stored candle `after_ms`."""
    reader = StreamReader(endpoints(settings, rest.market).stream_url, settings.symbol, rest.market)
    return BinanceFeed(rest, reader, settings.symbol, after_ms, int(settings.warmup_hours * 60), stop,
                       on_state=on_state)


def _iso(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))

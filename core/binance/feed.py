"""The live feed: Binance's 1-minute kline stream of one symbol, with every gap filled from REST klines, and
its aggregate-trade stream on the same connection, for the exit levels.

Candles are Binance's own klines, never built here: a minute is traded when Binance closes it (the
stream's kline with `x` true) or, for minutes the stream did not deliver (the start, a dropped or
silent connection), from the klines endpoint once a later minute has begun (so every one is final).
The kline stream pushes about every 2 s (spot; futures faster), so it is also the liveness signal:
a connection silent for STALL_S (a half-open TCP connection closes nothing) is dropped and opened
again. While the stream is down or silent no minute closes and no decision is made.

A reader thread holds the websocket (python-binance's BinanceSocketManager, pointed at the configured
stream URL) and hands klines over through a queue, so a slow order never stalls the stream.
Iterating the feed yields, in the trader's terms:

- `Candle`: a minute Binance closed, in order, each once;
- `Backfill`: Binance's klines for minutes the stream did not deliver; recent ones are traded;
- `LiveTrade`: every trade of the aggregate-trade stream as it comes, so stop, take-profit and trailing
  levels are checked on each (Binance: "Aggregate Trade Streams", pushed in real time);
- `StreamTime(None)` about twice a second, so the worker runs its jobs while minutes go by.
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

from core.binance.rest import SPOT, BinanceRest, endpoints
from core.retry import backoff_s
from core.brokers import BrokerError
from core.candles import MINUTE_MS, Candle, LiveTrade

log = logging.getLogger(__name__)

KLINES_PER_REQUEST = 1000  # Binance's maximum
LATE_DECISION_MS = 5 * MINUTE_MS  # a candle from klines that closed longer ago only warms the indicators
DOWN_ALERT_S = 30.0  # a stream down (or a gap not filled) this long is alerted; a quick reconnect is not
STREAM_TIME_EVERY_S = 0.5
STALL_S = 10.0  # no message for this long (klines come every ~2 s): the connection is dead, open another
QUEUE_SIZE = 10_000  # python-binance's message queue (its default 100 overflows in a burst)


class Backfill(NamedTuple):
    """Closed candles from Binance's klines in place of minutes the stream did not deliver."""

    candles: list[Candle]
    decide_from_ms: int  # candles opened at or after this are traded; older ones only warm the indicators


class StreamTime(NamedTuple):
    """A pause in the feed for the worker's jobs; minutes never close by the clock (now_ms is None)."""

    now_ms: int | None


class KlineUpdate(NamedTuple):
    """A kline message of the stream: the minute so far, or its final form."""

    candle: Candle
    is_final: bool
    event_ms: int


class Disconnected(NamedTuple):
    """The stream broke, went silent, or could not connect; the reader is connecting again."""

    reason: str


def parse_kline(message: dict) -> KlineUpdate | None:
    """A KlineUpdate from a kline message (raw or combined-stream form); None for other messages."""
    data = message.get("data", message)
    if data.get("e") != "kline":
        return None
    k = data["k"]
    candle = Candle(int(k["t"]), float(k["o"]), float(k["h"]), float(k["l"]), float(k["c"]), float(k["v"]),
                    int(k["T"]), float(k["q"]), int(k["n"]), float(k["V"]), float(k["Q"]))
    return KlineUpdate(candle, bool(k["x"]), int(data["E"]))


def parse_agg_trade(message: dict, is_first_seen: bool = False) -> LiveTrade | None:
    """A LiveTrade from an aggregate-trade message (raw or combined-stream form); None for other messages."""
    data = message.get("data", message)
    if data.get("e") != "aggTrade":
        return None
    return LiveTrade(float(data["p"]), int(data["T"]), int(data["a"]), is_first_seen)


def kline_candle(row: list) -> Candle:
    """A Candle from one row of Binance's klines endpoint."""
    return Candle(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]),
                  int(row[6]), float(row[7]), int(row[8]), float(row[9]), float(row[10]))


class StreamSilent(Exception):
    """No message for STALL_S: the connection is treated as dead."""


class StreamThread(threading.Thread):
    """A stream read by an asyncio loop (`_read`) in its own thread, its events on `events`, until `close()`."""

    def __init__(self, name: str, random: Callable[[], float]):
        super().__init__(name=name, daemon=True)
        self.random = random
        self.events: queue.Queue = queue.Queue()
        self.connections = 0
        self._closing = threading.Event()

    def run(self) -> None:
        asyncio.run(self._read())

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop reading (within about a second) and wait for the thread."""
        self._closing.set()
        if self.is_alive():
            self.join(timeout_s)

    async def _read(self) -> None:
        raise NotImplementedError


class StreamReader(StreamThread):
    """Reads the kline and aggregate-trade streams (one connection) in its own thread and event loop, putting
    KlineUpdate, LiveTrade and Disconnected events on `events`; reconnects until `close()`."""

    def __init__(self, stream_url: str, symbol: str, market: str = SPOT,
                 random: Callable[[], float] = _random.random, stall_s: float = STALL_S):
        super().__init__("binance-stream", random)
        self.stream_url = stream_url
        self.symbol = symbol
        self.market = market
        self.stall_s = stall_s

    async def _read(self) -> None:
        client = AsyncClient()  # only the socket manager's settings: makes no network call
        manager = BinanceSocketManager(client, max_queue_size=QUEUE_SIZE)
        manager.STREAM_URL = manager.FSTREAM_URL = self.stream_url
        # One connection for both (Binance's combined stream): a trade is never seen without its klines.
        streams = [f"{self.symbol.lower()}@kline_1m", f"{self.symbol.lower()}@aggTrade"]
        failures = 0
        try:
            while not self._closing.is_set():
                socket = manager.multiplex_socket(streams) if self.market == SPOT else \
                    manager.futures_multiplex_socket(streams)
                socket.TIMEOUT = 1  # its read loop looks for a close this often
                is_shutdown = False
                try:
                    async with socket as stream:
                        self.connections += 1
                        failures = 0
                        is_shutdown = await self._pump(stream)
                except Exception as exc:  # noqa: BLE001 - any failure: report it, then connect again
                    self.events.put(Disconnected(f"{type(exc).__name__}: {exc}"))
                if self._closing.is_set():
                    break
                if is_shutdown:  # announced by Binance: connect again at once
                    continue
                failures += 1
                delay = backoff_s(failures, self.random)
                log.warning("kline stream: connecting again in %.1f s", delay)
                await self._pause(delay)
        finally:
            await client.close_connection()

    async def _pump(self, stream) -> bool:
        """Hand messages over until closing (False) or Binance announces a shutdown (True)."""
        last_s = time.monotonic()
        is_first_trade = True
        while not self._closing.is_set():
            try:
                message = await asyncio.wait_for(stream.recv(), 1.0)
            except asyncio.TimeoutError:
                if time.monotonic() - last_s >= self.stall_s:  # python-binance waits forever on a dead line
                    raise StreamSilent(f"no message for {self.stall_s:g} s") from None
                continue
            if message.get("e") == "error":  # python-binance reports a broken connection and reconnects
                self.events.put(Disconnected(f"{message.get('type')}: {message.get('m')}"))
                is_first_trade = True  # trades pushed meanwhile are lost
                continue
            last_s = time.monotonic()
            if message.get("data", message).get("e") == "serverShutdown":
                self.events.put(Disconnected("Binance announced a server shutdown"))
                return True
            update = parse_kline(message) or parse_agg_trade(message, is_first_trade)
            if isinstance(update, LiveTrade):
                is_first_trade = False
            if update is not None:
                self.events.put(update)
        return False

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))


class _Gap:
    """Minutes from_ms..to_ms (open times) to take from klines, and the final candles held meanwhile."""

    def __init__(self, from_ms: int, to_ms: int, now_ms: int):
        self.from_ms = from_ms
        self.to_ms = to_ms
        self.now_ms = now_ms  # the exchange's time when the gap was seen: every minute before it is final
        self.held: list[Candle] = []


class BinanceFeed:
    """Binance's final 1-minute klines, with the start and every missed minute filled from REST klines."""

    def __init__(self, rest: BinanceRest, reader: StreamReader, symbol: str, after_ms: int | None,
                 warmup_minutes: int, stop: threading.Event, on_state: Callable[[bool, str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.rest = rest
        self.reader = reader
        self.symbol = symbol
        self.after_ms = after_ms  # the newest candle already stored
        self.warmup_minutes = warmup_minutes
        self.stop = stop
        self.on_state = on_state
        self.monotonic = monotonic
        self.last_final_ms: int | None = None  # open time of the last minute handed over
        self.gap: _Gap | None = None
        self.backfills = 0
        self._problems: dict[str, tuple[float, str]] = {}  # kind -> (since, reason)
        self._is_reported_down = False
        self._next_backfill_s = 0.0
        self._backfill_failures = 0
        self._stream_time_at_s = 0.0

    def __iter__(self) -> Iterator[Candle | Backfill | LiveTrade | StreamTime]:
        self.reader.start()
        try:
            while not self.stop.is_set():
                try:
                    event = self.reader.events.get(timeout=STREAM_TIME_EVERY_S)
                except queue.Empty:
                    event = None
                if isinstance(event, LiveTrade):
                    yield event
                elif isinstance(event, KlineUpdate):
                    yield from self._take(event)
                elif isinstance(event, Disconnected):
                    self._problem("stream", f"the kline stream is down ({event.reason})")
                if self.gap is not None:
                    yield from self._fill_gap()
                self._report()
                if self.monotonic() - self._stream_time_at_s >= STREAM_TIME_EVERY_S:
                    self._stream_time_at_s = self.monotonic()
                    yield StreamTime(None)
        finally:
            self.reader.close()

    def _take(self, update: KlineUpdate) -> Iterator[Candle]:
        self._resolved("stream")
        minute_ms = update.candle.open_time_ms
        expected_ms = self._next_minute_ms(minute_ms)
        if minute_ms > expected_ms:  # minutes before this one were missed (or this is the start): all final
            if self.gap is None:
                if expected_ms < minute_ms - self.warmup_minutes * MINUTE_MS and self.last_final_ms is None:
                    expected_ms = minute_ms - self.warmup_minutes * MINUTE_MS
                log.warning("minutes from %s come from klines", _iso(expected_ms))
                self.gap = _Gap(expected_ms, minute_ms - MINUTE_MS, update.event_ms)
            else:
                self.gap.to_ms = max(self.gap.to_ms, minute_ms - MINUTE_MS)
                self.gap.now_ms = max(self.gap.now_ms, update.event_ms)
        if not update.is_final or (self.last_final_ms is not None and minute_ms <= self.last_final_ms):
            return
        if self.gap is not None:
            if not self.gap.held or minute_ms > self.gap.held[-1].open_time_ms:
                self.gap.held.append(update.candle)
            return
        self.last_final_ms = minute_ms
        yield update.candle

    def _next_minute_ms(self, minute_ms: int) -> int:
        """The open time of the first minute not yet handed over (or being filled)."""
        if self.gap is not None:
            return self.gap.to_ms + MINUTE_MS
        if self.last_final_ms is not None:
            return self.last_final_ms + MINUTE_MS
        if self.after_ms is not None:
            return min(self.after_ms + MINUTE_MS, minute_ms)
        return minute_ms - self.warmup_minutes * MINUTE_MS

    def _fill_gap(self) -> Iterator[Candle | Backfill]:
        """Fetch the gap's klines (all final: a later minute has begun), then the final candles held."""
        gap = self.gap
        if self.monotonic() < self._next_backfill_s:
            return
        try:
            candles = [c for c in self._klines(gap.from_ms, gap.to_ms) if c.close_time_ms < gap.now_ms]
            if gap.from_ms <= gap.to_ms and (not candles or candles[-1].open_time_ms < gap.to_ms):
                raise BrokerError(f"Binance has no final kline for {_iso(gap.to_ms)} yet")
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
        if candles:
            self.last_final_ms = candles[-1].open_time_ms
            yield Backfill(candles, gap.now_ms - LATE_DECISION_MS - MINUTE_MS)
        for candle in gap.held:
            if self.last_final_ms is None or candle.open_time_ms > self.last_final_ms:
                self.last_final_ms = candle.open_time_ms
                yield candle

    def _klines(self, from_ms: int, to_ms: int) -> list[Candle]:
        return klines(self.rest, self.symbol, from_ms, to_ms)

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
            self.on_state(True, f"the {self.symbol} kline stream is up and its candles are complete")


def klines(rest: BinanceRest, symbol: str, from_ms: int, to_ms: int) -> list[Candle]:
    """Binance's 1-minute klines opened from `from_ms` to `to_ms` (both included), 1,000 a request; each
    request goes through BinanceRest.call, which keeps within the minute's request weight (pausing to the
    next minute near the limit) and honours Retry-After. BrokerError when Binance cannot be asked."""
    method = "get_klines" if rest.market == SPOT else "futures_klines"
    candles: list[Candle] = []
    start_ms = from_ms
    while start_ms <= to_ms:
        rows = rest.call(method, symbol=symbol, interval="1m", startTime=start_ms, endTime=to_ms,
                         limit=KLINES_PER_REQUEST)
        candles.extend(kline_candle(row) for row in rows)
        if len(rows) < KLINES_PER_REQUEST:
            break
        start_ms = candles[-1].open_time_ms + MINUTE_MS
    return candles


def open_feed(settings, rest: BinanceRest, after_ms: int | None, stop: threading.Event,
              on_state: Callable[[bool, str], None] | None = None, warmup_minutes: int = 0) -> BinanceFeed:
    """The live feed for the settings' symbol and market, continuing after the stored candle `after_ms`; with
    nothing stored it starts with the last `warmup_minutes` (at least OMNIWISE_WARMUP_HOURS) from klines."""
    reader = StreamReader(endpoints(settings, rest.market).stream_url, settings.symbol, rest.market)
    return BinanceFeed(rest, reader, settings.symbol, after_ms, max(int(settings.warmup_hours * 60), warmup_minutes),
                       stop, on_state=on_state)


def _iso(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))

"""Ticks to 1-minute candles, built exactly as Binance builds its klines.

A candle is aligned to a UTC minute and carries Binance's kline columns; a minute without trades is a
flat candle at the previous close. Built from Binance's aggTrades, the candles print as Binance's own
klines, character for character (tests/test_candles.py proves it on a real day).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

MINUTE_MS = 60_000
DAY_MS = 86_400_000
E8 = 100_000_000  # one unit of Binance's 8th decimal, as a divisor
_HALF_E8 = E8 // 2


class Tick(NamedTuple):
    """One aggregate trade: `is_buyer_maker` false means the taker bought."""

    price: float
    qty: float
    time_ms: int
    agg_id: int
    first_trade_id: int
    last_trade_id: int
    is_buyer_maker: bool


class LiveTrade(NamedTuple):
    """A trade of the exchange's live aggregate-trade stream: what the exit levels are checked against
    (live candles are the exchange's klines, never built from these)."""

    price: float
    time_ms: int
    agg_id: int
    is_first_seen: bool = False  # the first trade on a new connection: the ones before it were missed


class Candle(NamedTuple):
    """One 1-minute candle in Binance's kline columns (without the trailing `ignore`)."""

    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time_ms: int
    quote_volume: float
    trades: int
    taker_buy_base: float
    taker_buy_quote: float


# The hot path skips the Python-level constructors: builtin round() looks its method up on every call,
# and a NamedTuple's __new__ is a Python function.
_round = float.__round__
_new_candle = functools.partial(tuple.__new__, Candle)


def _e16_to_float(units_e16: int) -> float:
    """A sum in units of 1e-16 rounded to Binance's 8 decimals (half to even), as a float."""
    units_e8, rest = divmod(units_e16, E8)
    if rest > _HALF_E8 or (rest == _HALF_E8 and units_e8 & 1):
        units_e8 += 1
    return units_e8 / E8  # int / int is correctly rounded in Python


class TickBuffer:
    """Turns a stream of ticks into closed 1-minute candles, including flat candles for empty minutes.

    A candle closes when a tick of a later minute arrives (`add`) or when the clock passes the
    minute's end plus `lateness_ms` (`close_until`). A tick for a minute already closed is dropped and
    counted in `late_ticks`; a tick whose aggregate id is not above every id seen is dropped and
    counted in `duplicate_ticks` (reconnecting streams resend trades).

    Quantities are summed in whole units of 1e-8 and price times quantity in units of 1e-16, so the
    sums are exact (ticks carry at most 8 decimals, as Binance's do); float sums drift on busy markets.
    """

    __slots__ = ("lateness_ms", "late_ticks", "duplicate_ticks", "_last_agg_id", "_is_started", "_open_ms",
                 "_ticks_until_ms", "_last_close", "_open", "_high", "_low", "_close", "_trades",
                 "_buy_volume_e8", "_buy_quote_e16", "_sell_volume_e8", "_sell_quote_e16")

    def __init__(self, lateness_ms: int = 2000):
        self.lateness_ms = lateness_ms
        self.late_ticks = 0
        self.duplicate_ticks = 0
        self._last_agg_id = -1
        self._is_started = False  # a first tick (or a resume) gave a minute and a previous close
        self._open_ms = 0  # the earliest minute not emitted yet
        # End of _open_ms's minute once it has a tick, else 0: a tick in [_open_ms, _ticks_until_ms)
        # joins the open candle without further checks.
        self._ticks_until_ms = 0
        self._last_close = 0.0
        self._open = self._high = self._low = self._close = 0.0
        self._trades = 0
        # Taker buys and taker sells apart, so that every tick adds to exactly two sums.
        self._buy_volume_e8 = self._buy_quote_e16 = self._sell_volume_e8 = self._sell_quote_e16 = 0

    def add(self, tick: Tick) -> list[Candle]:
        """Take one tick; return the candles it closed (none, one, or several after a quiet spell)."""
        price, qty, time_ms, agg_id, first_trade_id, last_trade_id, is_buyer_maker = tick
        if agg_id <= self._last_agg_id:
            self.duplicate_ticks += 1
            return []
        self._last_agg_id = agg_id
        qty_e8 = _round(qty * 1e8)
        quote_e16 = _round(price * 1e8) * qty_e8
        if self._open_ms <= time_ms < self._ticks_until_ms:
            if price > self._high:
                self._high = price
            elif price < self._low:
                self._low = price
            self._close = price
            self._trades += last_trade_id - first_trade_id + 1
            if is_buyer_maker:  # the taker sold
                self._sell_volume_e8 += qty_e8
                self._sell_quote_e16 += quote_e16
            else:
                self._buy_volume_e8 += qty_e8
                self._buy_quote_e16 += quote_e16
            return []
        # The first tick of a minute: close the minutes before it, unless it belongs to one of them.
        open_ms = time_ms - time_ms % MINUTE_MS
        if not self._is_started:
            self._is_started = True
            closed = []
        elif open_ms >= self._open_ms:
            closed = self._close_before(open_ms)
        else:
            self.late_ticks += 1
            return []
        self._open_ms, self._ticks_until_ms = open_ms, open_ms + MINUTE_MS
        self._open = self._high = self._low = self._close = price
        self._trades = last_trade_id - first_trade_id + 1
        if is_buyer_maker:
            self._buy_volume_e8 = self._buy_quote_e16 = 0
            self._sell_volume_e8, self._sell_quote_e16 = qty_e8, quote_e16
        else:
            self._buy_volume_e8, self._buy_quote_e16 = qty_e8, quote_e16
            self._sell_volume_e8 = self._sell_quote_e16 = 0
        return closed

    def close_until(self, now_ms: int) -> list[Candle]:
        """Close every minute that ended at least `lateness_ms` before `now_ms`, empty ones included."""
        if not self._is_started:  # no tick yet: no previous close to give an empty minute
            return []
        due_ms = now_ms - self.lateness_ms
        stop_ms = due_ms - due_ms % MINUTE_MS  # every minute before this one ended by due_ms
        if stop_ms <= self._open_ms:
            return []
        return self._close_before(stop_ms)

    def resume_after(self, candle: Candle) -> None:
        """Continue after a stored candle: the next candle is the following minute, flat if no tick comes.

        Minutes between that candle and the first new tick become flat candles, so after downtime
        fill the gap from the exchange's klines first and resume after the newest of them.
        """
        if self._ticks_until_ms:
            raise ValueError("resume_after would drop the ticks of the open candle")
        self._is_started = True
        self._last_close = candle.close
        self._open_ms = candle.open_time_ms + MINUTE_MS

    @property
    def open_time_ms(self) -> int | None:
        """Open time of the earliest minute not closed yet, or None before the first tick."""
        return self._open_ms if self._is_started else None

    @property
    def has_ticks(self) -> bool:
        """Whether the open minute holds a trade: closing it gives a real candle, not an invented flat one."""
        return self._ticks_until_ms != 0

    def _close_before(self, stop_ms: int) -> list[Candle]:
        """Emit the minutes from _open_ms up to (not including) stop_ms; stop_ms becomes the open minute."""
        closed = []
        minute_ms = self._open_ms
        if self._ticks_until_ms:
            buy_e8, buy_e16 = self._buy_volume_e8, self._buy_quote_e16
            quote_e16 = buy_e16 + self._sell_quote_e16
            # Most markets' price steps times quantity steps have at most 8 decimals: no rounding then.
            quote = quote_e16 // E8 / E8 if not quote_e16 % E8 else _e16_to_float(quote_e16)
            buy_quote = buy_e16 // E8 / E8 if not buy_e16 % E8 else _e16_to_float(buy_e16)
            closed.append(_new_candle((
                minute_ms, self._open, self._high, self._low, self._close, (buy_e8 + self._sell_volume_e8) / E8,
                minute_ms + MINUTE_MS - 1, quote, self._trades, buy_e8 / E8, buy_quote)))
            self._last_close = self._close
            minute_ms += MINUTE_MS
        close = self._last_close
        while minute_ms < stop_ms:
            closed.append(_new_candle((minute_ms, close, close, close, close, 0.0, minute_ms + MINUTE_MS - 1, 0.0, 0,
                                       0.0, 0.0)))
            minute_ms += MINUTE_MS
        self._open_ms, self._ticks_until_ms = stop_ms, 0
        return closed


def candles_from_ticks(ticks: Iterable[Tick], until_ms: int | None = None) -> Iterator[Candle]:
    """Every candle of a finished tick stream, with flat candles for empty minutes up to `until_ms`.

    `until_ms` defaults to the end of the last tick's UTC day, where Binance's daily and monthly
    files end; a time before the last tick's minute end just closes the last candle. Minutes before
    the first tick cannot be built (there is no previous close).
    """
    buffer = TickBuffer(lateness_ms=0)  # the stream is finished: nothing can arrive late
    add = buffer.add
    for tick in ticks:
        closed = add(tick)
        if closed:
            yield from closed
    if buffer.open_time_ms is None:
        return
    end_ms = buffer.open_time_ms + MINUTE_MS
    if until_ms is None:
        until_ms = -(-end_ms // DAY_MS) * DAY_MS
    yield from buffer.close_until(max(end_ms, until_ms))


def format_kline_row(candle: Candle) -> list[str]:
    """The candle as Binance writes a kline row: times and counts as integers, the rest with 8 decimals.

    Exact for every value below 2**26 (67,108,864) with 8 decimals, and for whole numbers up to 2**53;
    above that a float64 cannot tell neighbouring 8-decimal values apart.
    """
    (open_ms, open_, high, low, close, volume, close_ms, quote, trades, buy_base, buy_quote) = candle
    return [str(open_ms), f"{open_:.8f}", f"{high:.8f}", f"{low:.8f}", f"{close:.8f}", f"{volume:.8f}",
            str(close_ms), f"{quote:.8f}", str(trades), f"{buy_base:.8f}", f"{buy_quote:.8f}", "0"]


def candles_to_arrays(candles: Sequence[Candle]) -> dict[str, np.ndarray]:
    """Candles as the columns the strategy policy takes: float64 prices and volume, int64 open times."""
    columns = list(zip(*candles)) or [()] * len(Candle._fields)
    arrays = {name: np.array(columns[Candle._fields.index(name)], dtype=np.float64)
              for name in ("open", "high", "low", "close", "volume")}
    arrays["open_time_ms"] = np.array(columns[0], dtype=np.int64)
    return arrays

"""Candles of a longer timeframe built from 1-minute candles, as Binance builds its klines (DESIGN.md "Timeframes").

A window of `tf` minutes opens at a multiple of `tf` minutes since the epoch, i.e. aligned to UTC as Binance
aligns its klines (15m at :00 :15 :30 :45, 1h on the hour, 1d at 00:00). Its candle takes the open of the
first minute present, the highest high, the lowest low, the close of the last minute present and the
summed volume. A window is closed once its last minute is in the history, or a later minute is; a window
with neither is still open and is left out. Minutes missing from the history are not invented.

Everything is numpy over whole arrays: a million minutes become hourly candles in a few milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

MINUTE_MS = 60_000


@dataclasses.dataclass(frozen=True)
class Frame:
    """The closed candles of one timeframe over a history of minutes.

    `candles` holds open, high, low, close, volume and open_time_ms (the window's open time) of each closed
    window; `last_minute` is the index, in the minute arrays, of each window's last minute present: the
    minute at whose end the window's decision is made; `end_ms` is each window's end (open time + tf).
    """

    minutes: int
    candles: dict[str, np.ndarray]
    last_minute: np.ndarray
    end_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.last_minute)


def build_frame(minutes: Mapping[str, np.ndarray], tf_minutes: int, last_is_closed: bool = False) -> Frame:
    """The closed `tf_minutes` candles of a history of 1-minute candles (arrays with open_time_ms).

    `last_is_closed`: treat the newest window as closed even when its last minute is not in the history
    (live, when a later minute has arrived but is not part of `minutes`)."""
    times = np.asarray(minutes["open_time_ms"], dtype=np.int64)
    n = len(times)
    tf_ms = tf_minutes * MINUTE_MS
    if tf_minutes == 1:
        candles = {name: minutes[name] for name in ("open", "high", "low", "close", "volume") if name in minutes}
        candles["open_time_ms"] = times
        return Frame(1, candles, np.arange(n), times + MINUTE_MS)
    window = times // tf_ms
    if n == 0:
        starts = np.zeros(0, dtype=np.int64)
    else:
        starts = np.concatenate(([0], np.flatnonzero(window[1:] != window[:-1]) + 1))
    last = np.concatenate((starts[1:], [n])) - 1 if n else starts
    count = len(starts)
    # Every window but the newest has a later minute; the newest is closed once its last minute is here.
    if count and not last_is_closed and times[-1] + MINUTE_MS != (window[-1] + 1) * tf_ms:
        count -= 1
        starts, last = starts[:count], last[:count]
    candles: dict[str, np.ndarray] = {"open_time_ms": window[starts] * tf_ms}
    if count:
        through = int(last[-1]) + 1  # the minutes of the closed windows
        if "open" in minutes:
            candles["open"] = minutes["open"][starts]
        if "high" in minutes:
            candles["high"] = np.maximum.reduceat(minutes["high"][:through], starts)
        if "low" in minutes:
            candles["low"] = np.minimum.reduceat(minutes["low"][:through], starts)
        if "close" in minutes:
            candles["close"] = minutes["close"][last]
        if "volume" in minutes:
            candles["volume"] = np.add.reduceat(minutes["volume"][:through], starts)
    else:
        for name in ("open", "high", "low", "close", "volume"):
            if name in minutes:
                candles[name] = np.zeros(0)
    return Frame(tf_minutes, candles, last, candles["open_time_ms"] + tf_ms)


def latest_closed(source: Frame, target_end_ms: np.ndarray) -> np.ndarray:
    """For each end time, the index in `source` of the last window ended by then; −1 where none has."""
    return np.searchsorted(source.end_ms, target_end_ms, side="right") - 1


def read_at(values, source: Frame, target_end_ms: np.ndarray) -> np.ndarray:
    """Values of `source`'s windows read at each end time: the last window closed by then, NaN before any."""
    if np.ndim(values) == 0:
        return values
    index = latest_closed(source, target_end_ms)
    out = np.asarray(values, dtype=np.float64)[np.maximum(index, 0)] if len(values) else \
        np.full(len(index), np.nan)
    return np.where(index >= 0, out, np.nan)

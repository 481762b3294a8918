"""Timeframes of the strategy language: Binance's kline intervals from 1m to 1d, in minutes.

`TIMEFRAME 15m` sets the candles a strategy decides on; `value@4h` reads a value on another timeframe.
Both are written as Binance writes its kline intervals (DESIGN.md "Timeframes").
"""

from __future__ import annotations

import difflib
import re

from .errors import Diagnostic

# Binance's kline intervals up to a day, in minutes (1w and 1M are not whole multiples of a fixed day
# count aligned to the epoch, so they are left out).
INTERVALS: dict[str, int] = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
                             "6h": 360, "8h": 480, "12h": 720, "1d": 1440}
NAMES = {minutes: name for name, minutes in INTERVALS.items()}
_STATEMENT = re.compile(r"\s*TIMEFRAME\b", re.IGNORECASE)


def name_of(minutes: int) -> str:
    """The interval's name as Binance writes it, e.g. 15 -> '15m', 240 -> '4h'."""
    return NAMES[minutes]


def interval_minutes(text: str) -> int | None:
    """Minutes of an interval written like '15m', '4H' or '1d'; None for anything else."""
    return INTERVALS.get(text.strip().lower())


def unknown_interval(text: str) -> str:
    """The message for an interval that is not one of Binance's, with the nearest one suggested."""
    near = difflib.get_close_matches(text.lower(), list(INTERVALS), n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"unknown timeframe {text!r}{hint}: use one of {' '.join(INTERVALS)}"


def is_timeframe_statement(line: str) -> bool:
    """True when the line starts with the word TIMEFRAME."""
    return bool(_STATEMENT.match(line))


def parse_timeframe_line(line: str, number: int) -> int | Diagnostic:
    """`TIMEFRAME tf` -> its minutes, or the Diagnostic saying what is wrong and where."""
    match = _STATEMENT.match(line)
    rest = line[match.end():]
    words = rest.split()
    if not words:
        return Diagnostic(number, len(line) + 1, f"TIMEFRAME needs an interval, e.g. TIMEFRAME 15m; "
                                                 f"one of {' '.join(INTERVALS)}")
    column = match.end() + len(rest) - len(rest.lstrip()) + 1
    minutes = interval_minutes(words[0])
    if minutes is None:
        return Diagnostic(number, column, unknown_interval(words[0]))
    if len(words) > 1:
        extra = column + len(words[0]) + len(rest.lstrip()[len(words[0]):]) - len(rest.lstrip()[len(words[0]):].lstrip())
        return Diagnostic(number, extra, f"unexpected {words[1]!r}: a TIMEFRAME line holds one interval, "
                                         f"e.g. TIMEFRAME 15m")
    return minutes


def check_multiple(minutes: int, strategy_minutes: int) -> str | None:
    """Why `@tf` cannot be read on a strategy of `strategy_minutes`, or None when it can."""
    if minutes < strategy_minutes:
        return (f"@{name_of(minutes)} is below the strategy's TIMEFRAME {name_of(strategy_minutes)}: a value "
                f"can be read on the strategy's timeframe or a longer one")
    if minutes % strategy_minutes:
        return (f"@{name_of(minutes)} is not a whole multiple of the strategy's TIMEFRAME "
                f"{name_of(strategy_minutes)}")
    return None

"""How much 1-minute history a strategy needs before its first live decision equals the backtest's.

The compiled policy works out its look-back (core.dsl.policy.lookback_minutes): the longest warm-up of its
indicators in minutes, nested indicators added up, higher timeframes counted in their own candles plus the
window in progress, and recursive averages (EMA, RSI, ATR, ...) given 28 / alpha extra candles so that
where the history starts changes them by less than 1e-12 of their value, well inside the language's 10
significant digits. The live window (`Policy.window`) adds the previous candle CROSSES reads and whole
windows of the longest timeframe. The worker loads that much from Binance's klines at start and after a
strategy change; `check` and the editor say how much it is.
"""

from __future__ import annotations

import dataclasses

from core.dsl import Policy
from core.dsl.policy import MAX_LOOKBACK_MINUTES

MINUTE_MS = 60_000
LONG_HISTORY_DAYS = 30  # more than this gets a warning: a month of klines to load before trading


@dataclasses.dataclass(frozen=True)
class HistoryNeed:
    """The minutes of history a strategy's live decision reads."""

    minutes: int

    @property
    def days(self) -> float:
        return self.minutes / 1440

    @property
    def is_long(self) -> bool:
        """True above LONG_HISTORY_DAYS."""
        return self.days > LONG_HISTORY_DAYS

    def text(self) -> str:
        """'needs 4.3 days of history (6,135 one-minute candles)', in the operator's words."""
        if self.minutes < 120:
            span = f"{self.minutes} minutes"
        elif self.minutes < 2 * 1440:
            span = f"{self.minutes / 60:.1f} hours"
        else:
            span = f"{self.days:.1f} days"
        return f"needs {span} of history ({self.minutes:,} one-minute candles)"

    def warning(self) -> str | None:
        """What to know about a long history, or None."""
        if not self.is_long:
            return None
        capped = (f"; the worker keeps a year at most, so live decisions may differ from a backtest over more"
                  if self.minutes >= MAX_LOOKBACK_MINUTES else "")
        return (f"more than {LONG_HISTORY_DAYS} days: the worker loads {self.days:.0f} days of klines from Binance "
                f"before its first decision, and a market younger than that decides on less history than the "
                f"backtest of a longer file{capped}")


def history_needed(policy: Policy) -> HistoryNeed:
    """The history the live worker keeps and loads for `policy`."""
    return HistoryNeed(policy.window)


def missing_range(policy: Policy, oldest_ms: int | None, newest_ms: int | None) -> tuple[int, int] | None:
    """(from_ms, to_ms) open times of the minutes to load before `oldest_ms` so that the history reaches back
    the policy's window from `newest_ms`; None when it already does (or there is no history to extend)."""
    if oldest_ms is None or newest_ms is None:
        return None
    from_ms = newest_ms - (policy.window - 1) * MINUTE_MS
    if from_ms >= oldest_ms:
        return None
    return from_ms, oldest_ms - MINUTE_MS

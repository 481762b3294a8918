"""The standard figures of a backtest, from its trades and its equity marked to market at every candle close.

Every formula is written out in the README ("Backtest metrics"); names follow DESIGN.md. A figure that
has no meaning for the history (no losing trade for the profit factor, one day for the Sharpe ratio)
is None, printed as "-" and as JSON null, never a made-up 0 or infinity.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

DAY_MS = 86_400_000
YEAR_DAYS = 365  # crypto trades every day of the year
CANDLE_MS = 60_000

NAMES = ("return_pct", "buy_and_hold_pct", "max_drawdown_pct", "trades", "win_rate_pct", "profit_factor",
         "expectancy_pct", "exposure_pct", "sharpe", "sortino", "calmar", "fees_paid")
# Metrics where a smaller value is better, for ranking sweeps.
LOWER_IS_BETTER = frozenset({"max_drawdown_pct", "fees_paid"})


@dataclasses.dataclass(frozen=True)
class Metrics:
    """The figures of one backtest (DESIGN.md names); None where a figure is undefined."""

    return_pct: float
    buy_and_hold_pct: float
    max_drawdown_pct: float
    trades: int
    win_rate_pct: float | None
    profit_factor: float | None
    expectancy_pct: float | None
    exposure_pct: float
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    fees_paid: float

    def as_json(self) -> dict:
        """The `metrics` object of `backtest --json`, rounded to 6 decimals."""
        return {name: _round(getattr(self, name)) for name in NAMES}


@dataclasses.dataclass(frozen=True)
class Ledger:
    """What the metrics are computed from: a backtest's equity and its trades' results.

    `equity`: the account at each candle close, the start being 1.0; `in_market`: True where a position
    is held at the close; `closed_returns`: each closed trade's return as a fraction (0.02 = +2 %);
    `closed_pnl`: each closed trade's profit in units of the starting balance; `trades` counts the
    open trade too; `fees_paid` in units of the starting balance.
    """

    equity: np.ndarray
    open_time_ms: np.ndarray
    in_market: np.ndarray
    closed_returns: np.ndarray
    closed_pnl: np.ndarray
    trades: int
    fees_paid: float
    buy_and_hold_pct: float


def join(ledgers: list[Ledger]) -> Ledger:
    """Consecutive periods as one account: each period starts with the balance the one before ended with."""
    scales = np.cumprod([1.0] + [float(ledger.equity[-1]) if len(ledger.equity) else 1.0 for ledger in ledgers])
    hold = np.prod([1 + ledger.buy_and_hold_pct / 100 for ledger in ledgers])
    return Ledger(
        equity=np.concatenate([ledger.equity * scale for ledger, scale in zip(ledgers, scales)]),
        open_time_ms=np.concatenate([ledger.open_time_ms for ledger in ledgers]),
        in_market=np.concatenate([ledger.in_market for ledger in ledgers]),
        closed_returns=np.concatenate([ledger.closed_returns for ledger in ledgers]),
        closed_pnl=np.concatenate([ledger.closed_pnl * scale for ledger, scale in zip(ledgers, scales)]),
        trades=sum(ledger.trades for ledger in ledgers),
        fees_paid=float(sum(ledger.fees_paid * scale for ledger, scale in zip(ledgers, scales))),
        buy_and_hold_pct=float(hold - 1) * 100)


def compute_metrics(ledger: Ledger) -> Metrics:
    """All figures of one backtest (formulas in the README, "Backtest metrics")."""
    equity, open_time_ms = ledger.equity, ledger.open_time_ms
    n = len(equity)
    if n == 0:
        return Metrics(0.0, 0.0, 0.0, 0, None, None, None, 0.0, None, None, None, 0.0)
    return_pct = float(equity[-1] - 1) * 100
    drawdown_pct = max_drawdown_pct(equity)
    closed_returns, closed_pnl = ledger.closed_returns, ledger.closed_pnl
    has_closed = len(closed_returns) > 0
    gross_loss = -float(np.sum(closed_pnl[closed_pnl < 0]))
    daily = daily_returns(equity, open_time_ms)
    span_days = (int(open_time_ms[-1]) + CANDLE_MS - int(open_time_ms[0])) / DAY_MS
    annual_pct = annualised_return_pct(float(equity[-1]), span_days)
    return Metrics(
        return_pct=return_pct,
        buy_and_hold_pct=float(ledger.buy_and_hold_pct),
        max_drawdown_pct=drawdown_pct,
        trades=int(ledger.trades),
        win_rate_pct=float(np.mean(closed_returns > 0)) * 100 if has_closed else None,
        profit_factor=float(np.sum(closed_pnl[closed_pnl > 0])) / gross_loss if gross_loss > 0 else None,
        expectancy_pct=float(np.mean(closed_returns)) * 100 if has_closed else None,
        exposure_pct=float(np.mean(ledger.in_market)) * 100,
        sharpe=sharpe(daily),
        sortino=sortino(daily),
        calmar=annual_pct / drawdown_pct if annual_pct is not None and drawdown_pct > 0 else None,
        fees_paid=float(ledger.fees_paid),
    )


def max_drawdown_pct(equity: np.ndarray) -> float:
    """The largest fall from a peak (the starting balance 1.0 counts as one) to a later close, in %."""
    peaks = np.maximum(np.maximum.accumulate(equity), 1.0)
    return float(1 - np.min(equity / peaks)) * 100


def daily_returns(equity: np.ndarray, open_time_ms: np.ndarray) -> np.ndarray:
    """Each UTC day's return: its last close's equity over the day before's (the first day over 1.0)."""
    first_day, last_day = int(open_time_ms[0]) // DAY_MS, int(open_time_ms[-1]) // DAY_MS
    midnights = np.arange(first_day + 1, last_day + 1, dtype=np.int64) * DAY_MS
    # The candle before each midnight (a search per day, not a pass over every candle); a day without
    # candles repeats the day before's and is dropped.
    ends = np.append(np.searchsorted(open_time_ms, midnights) - 1, len(open_time_ms) - 1)  # sorted
    last_of_day = ends[np.concatenate(([True], ends[1:] != ends[:-1]))]  # np.unique, without importing numpy.ma
    closes = equity[last_of_day]
    return closes / np.concatenate(([1.0], closes[:-1])) - 1


def sharpe(daily: np.ndarray) -> float | None:
    """Mean daily return over its sample standard deviation, times √365 (risk-free rate 0)."""
    if len(daily) < 2:
        return None
    spread = float(np.std(daily, ddof=1))
    return float(np.mean(daily)) / spread * math.sqrt(YEAR_DAYS) if spread > 0 else None


def sortino(daily: np.ndarray) -> float | None:
    """Mean daily return over the downside deviation √(mean(min(r, 0)²)), times √365."""
    if len(daily) < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(daily, 0.0) ** 2)))
    return float(np.mean(daily)) / downside * math.sqrt(YEAR_DAYS) if downside > 0 else None


def annualised_return_pct(final_equity: float, span_days: float) -> float | None:
    """The yearly return that compounds to `final_equity` over `span_days`, in %; None if it overflows."""
    if final_equity <= 0 or span_days <= 0:
        return None
    exponent = math.log(final_equity) * YEAR_DAYS / span_days
    if exponent > 700:  # e^700 is near float's limit: a short lucky history says nothing about a year
        return None
    return (math.exp(exponent) - 1) * 100


def _round(value):
    if isinstance(value, float):
        return round(value, 6)
    return value

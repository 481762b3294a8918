"""The standard figures of a backtest, from its trades and its equity marked to market at every candle close.

Every formula is written out in the README ("Backtest metrics"); names follow DESIGN.md. A figure that
has no meaning for the history (no losing trade for the profit factor, fewer than 30 complete UTC days
for the Sharpe ratio) is None, printed as "-" and as JSON null, never a made-up 0 or infinity; `why_null`
says why in words.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

DAY_MS = 86_400_000
YEAR_DAYS = 365  # crypto trades every day of the year
CANDLE_MS = 60_000
MIN_DAYS = 30  # complete UTC days below which sharpe, sortino and calmar say nothing (one standard error
# of an annualised Sharpe is about sqrt(365 / days): ±3.5 at 30 days, ±6 at 10)

NAMES = ("return_pct", "buy_and_hold_pct", "max_drawdown_pct", "trades", "win_rate_pct", "profit_factor",
         "expectancy_pct", "exposure_pct", "sharpe", "sortino", "calmar", "fees_paid", "days")
# Metrics where a smaller value is better, for ranking sweeps.
LOWER_IS_BETTER = frozenset({"max_drawdown_pct", "fees_paid"})
# Why a figure is missing, when that means "nothing was lost": such a null ranks above every number.
NO_LOSING_TRADE = "no losing trade"
NO_LOSING_DAY = "no losing day"
NO_LOSS = frozenset({NO_LOSING_TRADE, NO_LOSING_DAY})


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
    days: int = 0  # complete UTC days, the daily returns' count
    why_null: dict[str, str] = dataclasses.field(default_factory=dict)  # metric -> why it is None
    # Of the daily returns, for the deflated Sharpe ratio (not in the JSON); None with sharpe None.
    daily_skewness: float | None = None
    daily_kurtosis: float | None = None  # not excess: 3 for a normal distribution

    def as_json(self) -> dict:
        """The `metrics` object of `backtest --json`, rounded to 6 decimals, with `why_null`."""
        return {name: _round(getattr(self, name)) for name in NAMES} | {"why_null": dict(self.why_null)}

    def null_reasons(self) -> list[tuple[str, list[str]]]:
        """Each reason of `why_null` with the figures it leaves out, in the order of NAMES."""
        grouped: dict[str, list[str]] = {}
        for name in NAMES:
            if name in self.why_null:
                grouped.setdefault(self.why_null[name], []).append(name)
        return list(grouped.items())

    def is_no_loss(self, name: str) -> bool:
        """True when `name` is None because nothing was lost (a winner's null, DESIGN.md "Sweeps")."""
        return self.why_null.get(name) in NO_LOSS


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
        why = dict.fromkeys(("win_rate_pct", "profit_factor", "expectancy_pct"), "no closed trade")
        return Metrics(0.0, 0.0, 0.0, 0, None, None, None, 0.0, None, None, None, 0.0, 0,
                       why | dict.fromkeys(("sharpe", "sortino", "calmar"), _too_few_days(0)))
    return_pct = float(equity[-1] - 1) * 100
    drawdown_pct = max_drawdown_pct(equity)
    closed_returns, closed_pnl = ledger.closed_returns, ledger.closed_pnl
    has_closed = len(closed_returns) > 0
    gross_loss = -float(np.sum(closed_pnl[closed_pnl < 0]))
    daily = daily_returns(equity, open_time_ms)
    span_days = (int(open_time_ms[-1]) + CANDLE_MS - int(open_time_ms[0])) / DAY_MS
    annual_pct = annualised_return_pct(float(equity[-1]), span_days)
    metrics = Metrics(
        return_pct=return_pct,
        buy_and_hold_pct=float(ledger.buy_and_hold_pct),
        max_drawdown_pct=drawdown_pct,
        trades=int(ledger.trades),
        win_rate_pct=float(np.mean(closed_returns > 0)) * 100 if has_closed else None,
        profit_factor=float(np.sum(closed_pnl[closed_pnl > 0])) / gross_loss if gross_loss > 0 else None,
        expectancy_pct=float(np.mean(closed_returns)) * 100 if has_closed else None,
        exposure_pct=float(np.mean(ledger.in_market)) * 100,
        sharpe=sharpe(daily) if len(daily) >= MIN_DAYS else None,
        sortino=sortino(daily) if len(daily) >= MIN_DAYS else None,
        calmar=(annual_pct / drawdown_pct if annual_pct is not None and drawdown_pct > 0 and len(daily) >= MIN_DAYS
                else None),
        fees_paid=float(ledger.fees_paid),
        days=len(daily),
    )
    skewness = kurtosis = None
    if metrics.sharpe is not None:
        deviations = daily - np.mean(daily)
        spread = math.sqrt(float(np.mean(deviations ** 2)))
        skewness = float(np.mean(deviations ** 3)) / spread ** 3
        kurtosis = float(np.mean(deviations ** 4)) / spread ** 4
    return dataclasses.replace(metrics, why_null=_why_null(metrics, closed_pnl, daily), daily_skewness=skewness,
                               daily_kurtosis=kurtosis)


def _why_null(m: Metrics, closed_pnl: np.ndarray, daily: np.ndarray) -> dict[str, str]:
    """Each None figure of `m` with the reason, in words a trader reads in the table and the editor."""
    why = {}
    if m.win_rate_pct is None:
        why["win_rate_pct"] = why["expectancy_pct"] = "no closed trade"
    if m.profit_factor is None:
        if not len(closed_pnl):
            why["profit_factor"] = "no closed trade"
        else:
            why["profit_factor"] = NO_LOSING_TRADE if np.any(closed_pnl > 0) else "no trade won or lost money"
    if len(daily) < MIN_DAYS:
        why["sharpe"] = why["sortino"] = why["calmar"] = _too_few_days(len(daily))
        return why
    mean = float(np.mean(daily))
    if m.sharpe is None:
        why["sharpe"] = "the daily returns do not vary"
    if m.sortino is None:
        why["sortino"] = NO_LOSING_DAY if mean > 0 else "no day gained or lost"
    if m.calmar is None:
        why["calmar"] = "no drawdown" if m.max_drawdown_pct == 0 else "the annualised return is out of range"
    return why


def _too_few_days(days: int) -> str:
    return f"{days} complete UTC day{'' if days == 1 else 's'}, fewer than {MIN_DAYS}"


def max_drawdown_pct(equity: np.ndarray) -> float:
    """The largest fall from a peak (the starting balance 1.0 counts as one) to a later close, in %."""
    peaks = np.maximum(np.maximum.accumulate(equity), 1.0)
    return float(1 - np.min(equity / peaks)) * 100


def daily_returns(equity: np.ndarray, open_time_ms: np.ndarray) -> np.ndarray:
    """Each complete UTC day's return: the equity at its last close over the equity at the midnight it
    began with (the last close before it, or the starting 1.0 when the history starts at that midnight).

    A day is complete when the history covers it from 00:00 to 24:00: the first and the last day of a
    history that starts or ends within a day are left out (a few minutes are not a day). A day inside
    the history without any candle has no close and gives no return.
    """
    if not len(open_time_ms):
        return np.zeros(0)
    first_midnight = -(-int(open_time_ms[0]) // DAY_MS)  # the first day that starts within the history
    last_midnight = (int(open_time_ms[-1]) + CANDLE_MS) // DAY_MS  # the end of the last day it covers whole
    if last_midnight <= first_midnight:
        return np.zeros(0)
    midnights = np.arange(first_midnight, last_midnight + 1, dtype=np.int64) * DAY_MS
    # The last candle before each midnight (a search per day, not a pass over every candle); -1: none yet.
    before = np.searchsorted(open_time_ms, midnights) - 1
    marks = np.where(before >= 0, equity[np.maximum(before, 0)], 1.0)
    has_candles = before[1:] != before[:-1]
    return (marks[1:] / marks[:-1] - 1)[has_candles]


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


EULER_GAMMA = 0.5772156649015329


def deflated_sharpe(m: Metrics, trials: int, sharpe_variance: float) -> float | None:
    """The probability that the true Sharpe ratio behind `m` is above zero, given that it is the best of
    `trials` combinations whose daily Sharpe ratios vary with `sharpe_variance` (Bailey & López de Prado,
    "The Deflated Sharpe Ratio", 2014, eq. 2 and the expected maximum of `trials` Sharpe ratios).

    Works on daily, not annualised, figures: SR = mean / sd of the daily returns; SR0 = √V·((1−γ)·Φ⁻¹(1 −
    1/N) + γ·Φ⁻¹(1 − 1/(N·e))); DSR = Φ((SR − SR0)·√(T − 1) / √(1 − skew·SR + (kurtosis − 1)/4·SR²)).
    None where the Sharpe ratio is None, or where the moments leave the square root without a value.
    """
    if m.sharpe is None or m.daily_skewness is None or m.daily_kurtosis is None or trials < 1:
        return None
    normal = NormalDist()
    sr = m.sharpe / math.sqrt(YEAR_DAYS)
    if trials == 1:
        sr0 = 0.0  # nothing was picked: the plain probabilistic Sharpe ratio against zero
    else:
        sr0 = math.sqrt(max(sharpe_variance, 0.0)) * (
            (1 - EULER_GAMMA) * normal.inv_cdf(1 - 1 / trials) + EULER_GAMMA * normal.inv_cdf(1 - 1 / (trials * math.e)))
    spread = 1 - m.daily_skewness * sr + (m.daily_kurtosis - 1) / 4 * sr * sr
    if spread <= 0 or m.days < 2:
        return None
    return normal.cdf((sr - sr0) * math.sqrt(m.days - 1) / math.sqrt(spread))


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

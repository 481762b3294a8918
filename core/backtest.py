"""Backtest: the compiled policy over a whole history at once, with the paper broker's fill rule.

Decisions come from `Policy.decide_all` (the worker's own policy); positions follow the same target
semantics as the worker (BUY while long does nothing) and fills use `core.fills` with the same rule:
a decision on candle t fills at candle t+1's open (`fill="next-open"`, the default) or at candle t's
close (`fill="close"`). Long-only, the whole balance in or out, the fee on both sides. Everything is
vectorised with numpy, so a million candles take a fraction of a second.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from core import exits, fills
from core.dsl import Policy
from core.feeds import KLINES, FeedError, read_klines, sniff, to_ms_factor
from core.metrics import Ledger, Metrics, compute_metrics

FILLS = ("next-open", "close")
_CHUNK_ROWS = 200_000


@dataclasses.dataclass(frozen=True)
class Trade:
    """One round trip; the last one may still be open (exit None)."""

    entry_time: int  # ms
    entry_price: float
    exit_time: int | None  # ms: the fill candle's open time (a risk exit: the candle it happened in)
    exit_price: float | None
    return_pct: float  # after both fees; an open trade is valued at the last close, exit fee included
    exit_reason: str | None = None  # rule, stop_loss, take_profit, trailing_stop; None while open


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """What the strategy would have done over the candles."""

    trades: list[Trade]
    candles: int
    return_pct: float
    buy_hold_return_pct: float
    win_rate_pct: float | None  # of closed trades; None without any
    max_drawdown_pct: float
    exposure_pct: float  # share of candles spent long
    fee_rate: float
    fill: str
    equity: np.ndarray  # account value at each candle's close, starting at 1.0 (cash set aside included)
    ledger: Ledger  # what the metrics are computed from (core.metrics)
    metrics: Metrics  # the standard figures
    size_share: float = 1.0  # share of equity each entry spent (SIZE)
    in_market: np.ndarray | None = None  # per candle: a position is held at its close

    def as_json(self) -> dict:
        """The `backtest --json` object (DESIGN.md): trades with times in ms, return_pct, candles, ..."""
        return {
            "candles": self.candles, "return_pct": _round(self.return_pct),
            "buy_hold_return_pct": _round(self.buy_hold_return_pct),
            "win_rate_pct": None if self.win_rate_pct is None else _round(self.win_rate_pct),
            "max_drawdown_pct": _round(self.max_drawdown_pct), "exposure_pct": _round(self.exposure_pct),
            "fee": self.fee_rate, "fill": self.fill, "size_pct": _round(self.size_share * 100),
            "metrics": self.metrics.as_json(), "trades": _trades_json(self.trades),
        }


def _trades_json(trades: list[Trade]) -> list[dict]:
    returns = np.round(np.array([t.return_pct for t in trades], dtype=np.float64), 6).tolist()
    return [{"entry_time": t.entry_time, "entry_price": t.entry_price, "exit_time": t.exit_time,
             "exit_price": t.exit_price, "exit_reason": t.exit_reason, "return_pct": r}
            for t, r in zip(trades, returns)]


def run_backtest(candles: Mapping[str, np.ndarray], policy: Policy, fee_rate: float = fills.DEFAULT_FEE_RATE,
                 fill: str = "next-open") -> BacktestResult:
    """Run `policy` over `candles` (open_time_ms, open, high, low, close, volume arrays)."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    n = len(candles["close"])
    size = policy.risk.size_share
    if n == 0:
        ledger = Ledger(np.ones(0), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0), 0, 0.0, 0.0)
        return BacktestResult([], 0, 0.0, 0.0, None, 0.0, 0.0, fee_rate, fill, np.ones(0), ledger,
                              compute_metrics(ledger), size, np.zeros(0, bool))
    found = exits.find_trades(candles, policy.decide_all(candles), policy.risk, fill)
    closed = found.exit_index >= 0
    entries, exits_at = found.entry_index, found.exit_index[closed]
    entry_prices = found.entry_price
    # Each closed round trip multiplies the money it used by exit / entry, less a fee on each side (core.fills).
    ratios = found.exit_price[closed] / entry_prices[closed] * (1 - fee_rate) ** 2
    equity = _equity(candles, entries, exits_at, entry_prices, ratios, fee_rate, size)
    open_return = candles["close"][-1] / entry_prices[~closed] * (1 - fee_rate) ** 2  # the open trade, if any
    returns = ((np.concatenate((ratios, open_return)) - 1) * 100).tolist()
    times = candles["open_time_ms"]
    fill_times = times if fill == "next-open" else _close_times(candles)
    exit_times = np.where(found.exit_at_open | (found.exit_reason > 0), times[found.exit_index],
                          fill_times[found.exit_index])
    reasons = np.array(exits.REASONS + (None,), dtype=object)[found.exit_reason]  # code -1 (open) -> None
    trades = list(map(Trade, fill_times[entries].tolist(), entry_prices.tolist(),
                      np.where(closed, exit_times, None).tolist(), np.where(closed, found.exit_price, None).tolist(),
                      returns, reasons.tolist()))
    in_market = _holding(n, entries, exits_at)
    buy_hold_pct = float(candles["close"][-1] / candles["open"][0] * (1 - fee_rate) ** 2 - 1) * 100
    ledger = _ledger(candles, equity, in_market, entry_prices, found.exit_price[closed], ratios, fee_rate,
                     buy_hold_pct, size)
    metrics = compute_metrics(ledger)
    return BacktestResult(
        trades=trades, candles=n, return_pct=float(equity[-1] - 1) * 100, buy_hold_return_pct=buy_hold_pct,
        win_rate_pct=None if not len(ratios) else float(np.mean(ratios > 1)) * 100,
        max_drawdown_pct=metrics.max_drawdown_pct,
        exposure_pct=float(np.mean(in_market)) * 100, fee_rate=fee_rate, fill=fill, equity=equity,
        ledger=ledger, metrics=metrics, size_share=size, in_market=in_market)


def _ledger(candles, equity, in_market, entry_prices, exit_prices, ratios, fee_rate, buy_hold_pct,
            size: float = 1.0) -> Ledger:
    """The engine's trades in core.metrics' terms: each entry spends `size` of the account's balance."""
    balance = np.concatenate(([1.0], np.cumprod(1 + size * (ratios - 1))))  # before each trade, the start 1.0
    spent = balance[:len(entry_prices)] * size  # the money each entry put in
    closed_spent = spent[:len(ratios)]
    exit_fees = closed_spent * (1 - fee_rate) * exit_prices / entry_prices[:len(ratios)] * fee_rate
    fees_paid = float(np.sum(spent) * fee_rate + np.sum(exit_fees))
    return Ledger(equity, candles["open_time_ms"], in_market, ratios - 1, closed_spent * (ratios - 1),
                  len(entry_prices), fees_paid, buy_hold_pct)


def _equity(candles, entries, exits, entry_prices, ratios, fee_rate, size: float = 1.0) -> np.ndarray:
    """Account value at each candle's close (1.0 at the start), an open position valued with the exit fee.

    Each entry spends `size` of the account; the rest waits as cash, so a trade moves the account by
    size · (ratio − 1)."""
    n = len(candles["close"])
    cash_after = np.concatenate(([1.0], np.cumprod(1 + size * (ratios - 1))))  # balance before trade k
    # Trade k is open at the closes of candles entries[k] .. exits[k] - 1; mark +k+1 in, -(k+1) out.
    marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(marks, entries, np.arange(1, len(entries) + 1))
    np.add.at(marks, exits, -np.arange(1, len(exits) + 1))
    trade_at = np.cumsum(marks[:n]) - 1  # which trade is open at each candle's close, -1 none
    # Closed trades before each candle: the number of exits at or before it.
    exit_marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(exit_marks, exits, 1)
    closed_before = np.cumsum(exit_marks[:n])
    equity = cash_after[closed_before].copy()
    holding = trade_at >= 0
    k = trade_at[holding]
    units = cash_after[k] * size * (1 - fee_rate) / entry_prices[k]
    equity[holding] = cash_after[k] * (1 - size) + units * candles["close"][holding] * (1 - fee_rate)
    return equity


def _holding(n: int, entries: np.ndarray, exits: np.ndarray) -> np.ndarray:
    """True at the close of every candle where a position is open."""
    marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(marks, entries, 1)
    np.add.at(marks, exits, -1)
    return np.cumsum(marks[:n]) > 0


def _close_times(candles) -> np.ndarray:
    return candles["open_time_ms"] + 59_999


def _round(value: float) -> float:
    return round(value, 6)


# -- candle files -----------------------------------------------------------------------------------

def load_candles(path: str | Path, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """A klines CSV (Binance's 12 columns, or open_time,open,high,low,close,volume) as arrays.

    Used as given: a minute missing from the file stays missing. Timestamps in s, ms or µs become ms.
    A file that does not parse raises FeedError naming the file and line. `progress` gets bytes read.
    """
    path = Path(path)
    layout = sniff(path)
    if layout.kind != KLINES:
        raise FeedError(path, layout.first_data_line, "this is an aggTrades file, not klines")
    chunks = []
    with open(path, "rb") as file:
        for _ in range(layout.first_data_line - 1):
            file.readline()
        try:
            while True:
                with warnings.catch_warnings():  # the chunk after the last one is empty, and that is fine
                    warnings.simplefilter("ignore", UserWarning)
                    chunk = np.loadtxt(file, delimiter=",", usecols=range(6), max_rows=_CHUNK_ROWS, ndmin=2,
                                       dtype=np.float64)
                if len(chunk) == 0:
                    break
                chunks.append(chunk)
                if progress is not None:
                    progress(file.tell())
                if len(chunk) < _CHUNK_ROWS:
                    break
        except ValueError:
            read_klines(path)  # the slow reader names the bad line
            raise
    table = np.concatenate(chunks) if chunks else np.zeros((0, 6))
    open_, high, low, close, volume = table[:, 1:].T
    if not (np.all(np.isfinite(table)) and np.all(low > 0) and np.all(volume >= 0)
            and np.all(low <= np.minimum(open_, close)) and np.all(high >= np.maximum(open_, close))):
        read_klines(path)  # the same checks as the replay, which names the line
    open_time_ms = np.round(table[:, 0] * to_ms_factor(layout.time_unit)).astype(np.int64)
    unsorted = np.flatnonzero(np.diff(open_time_ms) <= 0)
    if len(unsorted):
        line = int(unsorted[0]) + 1 + layout.first_data_line
        raise FeedError(path, line, "candles must be in time order, one per minute: this one is not later "
                                    "than the one before")
    arrays = {name: np.ascontiguousarray(table[:, i + 1]) for i, name in enumerate(("open", "high", "low", "close", "volume"))}
    arrays["open_time_ms"] = open_time_ms
    return arrays


# -- reports ----------------------------------------------------------------------------------------

def format_report(result: BacktestResult, title: str, candles: Mapping[str, np.ndarray], last_trades: int = 10) -> str:
    """The readable table `omniwise.py backtest` prints."""
    times = candles["open_time_ms"]
    closed = sum(1 for t in result.trades if t.exit_time is not None)
    span = f"{_utc(int(times[0]))} to {_utc(int(times[-1]))} UTC" if result.candles else "no candles"
    fill = "the next candle's open" if result.fill == "next-open" else "the decision candle's close"
    lines = [
        title,
        f"  candles       {result.candles:,} ({span})",
        f"  trades        {len(result.trades):,} ({closed:,} closed, {len(result.trades) - closed} open)",
        *metric_lines(result.metrics),
        f"  fills         at {fill}, fee {result.fee_rate * 100:g} % per side, long only"
        + (f", {result.size_share * 100:g} % of equity per entry" if result.size_share < 1 else ""),
    ]
    reasons = collections.Counter(t.exit_reason for t in result.trades if t.exit_reason)
    if reasons:
        lines.append("  exits by      " + ", ".join(f"{reason.replace('_', ' ')} {count:,}"
                                                   for reason, count in sorted(reasons.items())))
    if result.trades:
        lines += ["", f"  last {min(last_trades, len(result.trades))} trades:",
                  f"  {'entry (UTC)':<17} {'entry price':>14}  {'exit (UTC)':<17} {'exit price':>14} {'return':>9}"
                  f"  exit by"]
        for t in result.trades[-last_trades:]:
            exit_time = _utc(t.exit_time) if t.exit_time is not None else "open"
            exit_price = f"{t.exit_price:.8g}" if t.exit_price is not None else "-"
            lines.append(f"  {_utc(t.entry_time):<17} {t.entry_price:>14.8g}  {exit_time:<17} {exit_price:>14} "
                         f"{t.return_pct:>+8.2f}%  {(t.exit_reason or '').replace('_', ' ')}")
    return "\n".join(lines)


def metric_lines(m: Metrics) -> list[str]:
    """The metrics as table lines, '-' where a figure is undefined."""
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)
    return [
        f"  return        {m.return_pct:+.2f} %   (buy and hold {m.buy_and_hold_pct:+.2f} %)",
        f"  max drawdown  {m.max_drawdown_pct:.2f} %",
        f"  win rate      {num(m.win_rate_pct, '.1f')} %   expectancy {num(m.expectancy_pct, '+.3f')} % a trade",
        f"  profit factor {num(m.profit_factor, '.3f')}",
        f"  exposure      {m.exposure_pct:.1f} % of candles long",
        f"  sharpe        {num(m.sharpe, '.3f')}   sortino {num(m.sortino, '.3f')}   calmar {num(m.calmar, '.3f')}",
        f"  fees paid     {m.fees_paid * 100:.2f} % of the starting balance",
    ]


def _utc(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))


def stored_candles(db, symbol: str, limit: int = 10_000) -> dict[str, np.ndarray]:
    """The newest `limit` candles of `symbol` from the database, oldest first, as arrays."""
    rows = db.execute("SELECT open_time_ms, open, high, low, close, volume FROM (SELECT * FROM candles "
                      "WHERE symbol = ? ORDER BY open_time_ms DESC LIMIT ?) ORDER BY open_time_ms",
                      [symbol, limit]).fetchall()
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    arrays = {name: np.ascontiguousarray(table[:, i + 1])
              for i, name in enumerate(("open", "high", "low", "close", "volume"))}
    arrays["open_time_ms"] = table[:, 0].astype(np.int64)
    return arrays

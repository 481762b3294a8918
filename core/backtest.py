"""Backtest: the compiled policy over a whole history at once, with the paper broker's fill rule.

Decisions come from `Policy.decide_all` (the worker's own policy); positions follow the same target
semantics as the worker (BUY while long does nothing) and fills use `core.fills` with the same rule:
a decision on candle t fills at candle t+1's open (`fill="next-open"`, the default) or at candle t's
close (`fill="close"`). Each entry commits the SIZE share of the equity, long or short (DESIGN.md
"Shorts": a 1x short's notional), the fee on both sides. Everything is vectorised with numpy, so a
million candles take a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core import exits, fills
from core.dsl import Action, Policy
from core.feeds import (KLINES, MAX_LINE_BYTES, UNIT_RANGES, FeedError, Layout, LineTooLong, line_blocks, read_klines,
                        sniff, to_ms_factor)
from core.metrics import MIN_DAYS, Ledger, Metrics, compute_metrics

FILLS = ("next-open", "close")
_BLOCK_BYTES = 1 << 23  # bytes of a klines file parsed at once: about 60,000 rows of Binance's 12 columns


@dataclasses.dataclass(frozen=True)
class Trade:
    """One round trip; the last one may still be open (exit None)."""

    side: str  # "long" or "short"
    entry_time: int  # ms
    entry_price: float
    exit_time: int | None  # ms: the fill candle's open time (a risk exit: the candle it happened in)
    exit_price: float | None
    return_pct: float  # after both fees; an open trade is valued at the last close, exit fee included
    exit_reason: str | None = None  # rule, stop_loss, take_profit, trailing_stop, liquidation; None while open


@dataclasses.dataclass(frozen=True)
class TradeTable:
    """The round trips as columns, in entry order: what `Trade` objects are built from, only when asked for.

    A sweep's rows need only the metrics, and a million candles make tens of thousands of trades, so
    the per-trade objects are left to the rows that are printed.
    """

    entry_time: np.ndarray  # int64 ms
    entry_price: np.ndarray
    exit_time: np.ndarray  # int64 ms; -1 for the trade still open
    exit_price: np.ndarray  # NaN for the trade still open
    return_pct: np.ndarray
    exit_reason: np.ndarray  # int8 code into exits.REASONS; -1 for the trade still open
    is_short: np.ndarray | None = None  # bool per trade; None: all long

    def __post_init__(self):
        if self.is_short is None:
            object.__setattr__(self, "is_short", np.zeros(len(self.entry_time), dtype=bool))

    @property
    def sides(self) -> np.ndarray:
        """"long" or "short" per trade (object array)."""
        return np.where(self.is_short, "short", "long").astype(object)

    def __len__(self) -> int:
        return len(self.entry_time)

    @property
    def closed(self) -> np.ndarray:
        """True for every trade that has ended."""
        return self.exit_reason >= 0

    def json_columns(self) -> dict[str, list]:
        """The trades' JSON fields as columns of plain Python values (None while open, returns rounded)."""
        closed = self.closed
        reasons = np.array(exits.REASONS + (None,), dtype=object)[self.exit_reason]  # code -1 -> None
        return {"side": self.sides.tolist(), "entry_time": self.entry_time.tolist(), "entry_price": self.entry_price.tolist(),
                "exit_time": np.where(closed, self.exit_time, None).tolist(),
                "exit_price": np.where(closed, self.exit_price, None).tolist(), "exit_reason": reasons.tolist(),
                "return_pct": np.round(self.return_pct, 6).tolist()}

    def rows(self, start: int = 0) -> list[Trade]:
        """The trades from index `start` on (negative counts from the end) as `Trade` objects."""
        part = slice(start, None)
        closed = self.closed[part]
        reasons = np.array(exits.REASONS + (None,), dtype=object)[self.exit_reason[part]]  # code -1 -> None
        return list(map(Trade, self.sides[part].tolist(), self.entry_time[part].tolist(), self.entry_price[part].tolist(),
                        np.where(closed, self.exit_time[part], None).tolist(),
                        np.where(closed, self.exit_price[part], None).tolist(),
                        self.return_pct[part].tolist(), reasons.tolist()))


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """What the strategy would have done over the candles."""

    table: TradeTable  # the trades as columns; `trades` gives them as objects
    candles: int
    return_pct: float
    buy_hold_return_pct: float
    win_rate_pct: float | None  # of closed trades; None without any
    max_drawdown_pct: float
    exposure_pct: float  # share of candles spent in a position, long or short
    fee_rate: float
    fill: str
    equity: np.ndarray  # account value at each candle's close, starting at 1.0 (cash set aside included)
    ledger: Ledger  # what the metrics are computed from (core.metrics)
    metrics: Metrics  # the standard figures
    size_share: float = 1.0  # share of equity each entry spent (SIZE)
    in_market: np.ndarray | None = None  # per candle: a position is held at its close
    slippage: float = 0.0  # fraction every fill was moved against the trader (`--slippage`)
    timeframe: str = "1m"  # the candles the rules decided on (TIMEFRAME); `candles` counts minutes

    @functools.cached_property
    def trades(self) -> list[Trade]:
        """Every round trip, the last one possibly still open (built on first use)."""
        return self.table.rows()

    def as_json(self) -> dict:
        """The `backtest --json` object (DESIGN.md): trades with times in ms, return_pct, candles, ..."""
        return self.summary_json() | {"trades": _trades_json(self.table.json_columns())}

    def json_text(self, extra: dict | None = None) -> str:
        """`json.dumps(self.as_json() | extra)`, the same text, with the trades written column by column.

        json.dumps of tens of thousands of trade objects is a third of a one-backtest process.
        """
        head = json.dumps(self.summary_json())
        tail = "".join(f", {json.dumps(key)}: {json.dumps(value)}" for key, value in (extra or {}).items())
        return f'{head[:-1]}, "trades": {_trades_json_text(self.table)}{tail}}}'

    def summary_json(self) -> dict:
        """`as_json()` without the trades: what a sweep's row carries unless `--trades` asks for them."""
        return {
            "candles": self.candles, "return_pct": _round(self.return_pct),
            "buy_hold_return_pct": _round(self.buy_hold_return_pct),
            "win_rate_pct": None if self.win_rate_pct is None else _round(self.win_rate_pct),
            "max_drawdown_pct": _round(self.max_drawdown_pct), "exposure_pct": _round(self.exposure_pct),
            "fee": self.fee_rate, "fill": self.fill, "slippage": self.slippage,
            "size_pct": _round(self.size_share * 100), "timeframe": self.timeframe,
            "metrics": self.metrics.as_json(),
        }


_TRADE_FIELDS = ("side", "entry_time", "entry_price", "exit_time", "exit_price", "exit_reason", "return_pct")


def _trades_json(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(_TRADE_FIELDS, row)) for row in zip(*(columns[name] for name in _TRADE_FIELDS))]


def _trades_json_text(table: TradeTable) -> str:
    """What json.dumps writes for the trades' JSON objects, glued from whole columns of text: a finite
    float or an int is written as its repr, as json.dumps does (anything else goes through json.dumps)."""
    closed, count = table.closed, len(table)
    returns = np.round(table.return_pct, 6)
    if not (np.all(np.isfinite(table.entry_price)) and np.all(np.isfinite(table.exit_price[closed]))
            and np.all(np.isfinite(returns))):
        return json.dumps(_trades_json(table.json_columns()))
    exit_time, exit_price = list(map(str, table.exit_time.tolist())), list(map(repr, table.exit_price.tolist()))
    for i in np.flatnonzero(~closed).tolist():
        exit_time[i] = exit_price[i] = "null"
    reasons = np.array([json.dumps(r) for r in exits.REASONS] + ["null"], dtype=object)[table.exit_reason].tolist()
    sides = np.array(['"long"', '"short"'], dtype=object)[table.is_short.astype(np.int8)].tolist()
    columns = (sides, list(map(str, table.entry_time.tolist())), list(map(repr, table.entry_price.tolist())), exit_time,
               exit_price, reasons, list(map(repr, returns.tolist())))
    # Row i is pieces[w i .. w i + w − 1]: '{"side": ', its value, ', "entry_time": ', ..., '}, '.
    width = 2 * len(_TRADE_FIELDS) + 1
    pieces: list = [None] * (width * count)
    for k, (name, column) in enumerate(zip(_TRADE_FIELDS, columns)):
        pieces[2 * k::width] = [("{" if k == 0 else ", ") + f'"{name}": '] * count
        pieces[2 * k + 1::width] = column
    pieces[width - 1::width] = ["}, "] * count
    if count:
        pieces[-1] = "}"
    return "[" + "".join(pieces) + "]"


def run_backtest(candles: Mapping[str, np.ndarray], policy: Policy, fee_rate: float = fills.DEFAULT_FEE_RATE,
                 fill: str = "next-open", indicator_cache: dict | None = None, warmup: int = 0,
                 close_at_end: bool = False, slippage: float = 0.0) -> BacktestResult:
    """Run `policy` over `candles` (open_time_ms, open, high, low, close, volume arrays).

    `indicator_cache`: see `Policy.decide_all` (a sweep shares indicators between its combinations).
    `warmup`: the first `warmup` candles only warm the indicators up (no decision there, and no figure:
    the result covers the candles after them). `close_at_end`: a trade still open on the last candle is
    closed at its close (`exit_reason` block_end) and counted like any other, as an out-of-sample block
    ends; a trade that would enter at that very close is not opened. `slippage`: every fill (entries and
    exits, stops included) moved by that fraction against the trader; the levels stay set from the
    market's price, as the paper broker's."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, not {fill!r}")
    if not 0 <= warmup <= len(candles["close"]):
        raise ValueError(f"warmup must be between 0 and the {len(candles['close']):,} candles, not {warmup}")
    if warmup == len(candles["close"]):  # nothing after the warm-up
        candles, warmup = {name: series[:0] for name, series in candles.items()}, 0
    n = len(candles["close"]) - warmup
    size = policy.risk.size_share
    if n == 0:
        ledger = Ledger(np.ones(0), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), np.zeros(0), 0, 0.0, 0.0)
        none = np.zeros(0, dtype=np.int64)
        table = TradeTable(none, np.zeros(0), none, np.zeros(0), np.zeros(0), np.zeros(0, np.int8), np.zeros(0, bool))
        return BacktestResult(table, 0, 0.0, 0.0, None, 0.0, 0.0, fee_rate, fill, np.ones(0), ledger,
                              compute_metrics(ledger), size, np.zeros(0, bool), slippage, policy.timeframe_name)
    actions, decided = policy.decide_minutes(candles, indicator_cache)
    atr = policy.atr_by_minute(candles) if policy.risk.atr_periods else None
    if warmup:
        # The warm-up candles decide nothing (HOLD), so no trade starts there, but indicators and the ATR
        # of the risk levels are computed over them; then every index is moved to the block's candles.
        actions = np.array(actions)
        actions[:warmup] = Action.HOLD
        found = _shifted(exits.find_trades(candles, actions, policy.risk, fill, fee_rate, decided=decided, atr=atr),
                         warmup)
        candles = {name: series[warmup:] for name, series in candles.items()}
    else:
        found = exits.find_trades(candles, actions, policy.risk, fill, fee_rate, decided=decided, atr=atr)
    if close_at_end:
        found = _closed_at_end(found, candles, fill)
    if slippage:
        found = _slipped(found, slippage)
    closed = found.exit_index >= 0
    entries, exits_at = found.entry_index, found.exit_index[closed]
    entry_prices, is_short = found.entry_price, found.is_short
    # Each closed round trip multiplies the money it committed by its ratio (`_ratios`).
    ratios = _ratios(entry_prices[closed], found.exit_price[closed], is_short[closed], fee_rate)
    equity, in_market = _equity(candles, entries, exits_at, entry_prices, ratios, fee_rate, size, is_short)
    open_return = _ratios(entry_prices[~closed], candles["close"][-1], is_short[~closed], fee_rate)  # the open trade
    returns = (np.concatenate((ratios, open_return)) - 1) * 100
    times = candles["open_time_ms"]
    fill_times = times if fill == "next-open" else _close_times(candles)
    exit_times = np.where(found.exit_at_open | (found.exit_reason > 0), times[found.exit_index],
                          fill_times[found.exit_index])
    exit_times[found.exit_reason == _BLOCK_END] = times[-1] + 59_999  # at the last candle's close
    table = TradeTable(fill_times[entries], entry_prices, np.where(closed, exit_times, -1), found.exit_price,
                       returns, found.exit_reason, is_short)
    buy_hold_pct = float(candles["close"][-1] / candles["open"][0] * (1 - fee_rate) ** 2 - 1) * 100
    ledger = _ledger(candles, equity, in_market, entry_prices, found.exit_price[closed], ratios, fee_rate,
                     buy_hold_pct, size, is_short)
    metrics = compute_metrics(ledger)
    return BacktestResult(
        table=table, candles=n, return_pct=float(equity[-1] - 1) * 100, buy_hold_return_pct=buy_hold_pct,
        win_rate_pct=None if not len(ratios) else float(np.mean(ratios > 1)) * 100,
        max_drawdown_pct=metrics.max_drawdown_pct,
        exposure_pct=float(np.mean(in_market)) * 100, fee_rate=fee_rate, fill=fill, equity=equity,
        ledger=ledger, metrics=metrics, size_share=size, in_market=in_market, slippage=slippage,
        timeframe=policy.timeframe_name)


def _ratios(entry, exit_, is_short, fee_rate):
    """What each round trip makes of the money M it commits, after both fees. A long buys M/E·(1−f) and sells
    it at X: X/E·(1−f)². A short of notional M (q = M/E) makes q·(E·(1−f) − X·(1+f)): 1 + that / M."""
    ratio = exit_ / entry * (1 - fee_rate) ** 2
    if is_short.any():
        ratio = np.where(is_short, (2 - fee_rate) - exit_ / entry * (1 + fee_rate), ratio)
    return ratio


_BLOCK_END = exits.REASONS.index(exits.BLOCK_END)


def _slipped(found: exits.TradeArrays, slippage: float) -> exits.TradeArrays:
    """Every fill moved against the trader (fills.slipped): a long buys higher and sells lower, a short the
    reverse."""
    is_short = np.zeros(len(found.entry_price), bool) if found.is_short is None else found.is_short
    entry_side = np.where(is_short, -1.0, 1.0)  # +1: the entry is a buy
    return dataclasses.replace(found, entry_price=found.entry_price * (1 + entry_side * slippage),
                               exit_price=found.exit_price * (1 - entry_side * slippage))


def _shifted(found: exits.TradeArrays, by: int) -> exits.TradeArrays:
    """The same trades with candle indices counted from candle `by` (every trade starts there or later)."""
    return dataclasses.replace(found, entry_index=found.entry_index - by,
                               exit_index=np.where(found.exit_index >= 0, found.exit_index - by, -1))


def _closed_at_end(found: exits.TradeArrays, candles, fill: str) -> exits.TradeArrays:
    """The trade still open at the end closed at the last close (block_end); one that would only enter at
    that close (fill=close) is dropped (a round trip of two fees and no time in the market)."""
    last = len(candles["close"]) - 1
    still_open = found.exit_index < 0
    if not still_open.any():
        return found
    keep = ~(still_open & (found.entry_index == last) & (fill == "close"))
    exit_index, exit_price = found.exit_index.copy(), found.exit_price.copy()
    reason, at_open = found.exit_reason.copy(), found.exit_at_open.copy()
    exit_index[still_open], exit_price[still_open] = last, candles["close"][last]
    reason[still_open], at_open[still_open] = _BLOCK_END, False
    return exits.TradeArrays(found.entry_index[keep], found.entry_price[keep], exit_index[keep], exit_price[keep],
                             reason[keep], at_open[keep], found.is_short[keep])


def _ledger(candles, equity, in_market, entry_prices, exit_prices, ratios, fee_rate, buy_hold_pct,
            size: float = 1.0, is_short: np.ndarray | None = None) -> Ledger:
    """The engine's trades in core.metrics' terms: each entry commits `size` of the account's balance."""
    balance = np.concatenate(([1.0], np.cumprod(1 + size * (ratios - 1))))  # before each trade, the start 1.0
    spent = balance[:len(entry_prices)] * size  # the money each entry put in (a short's notional)
    closed_spent = spent[:len(ratios)]
    # The exit fee: a long sells M/E·(1−f) at X, a short buys back M/E at X.
    held = (1 - fee_rate) if is_short is None else np.where(is_short[:len(ratios)], 1.0, 1 - fee_rate)
    exit_fees = closed_spent * held * exit_prices / entry_prices[:len(ratios)] * fee_rate
    fees_paid = float(np.sum(spent) * fee_rate + np.sum(exit_fees))
    return Ledger(equity, candles["open_time_ms"], in_market, ratios - 1, closed_spent * (ratios - 1),
                  len(entry_prices), fees_paid, buy_hold_pct)


def _equity(candles, entries, exits, entry_prices, ratios, fee_rate,
            size: float = 1.0, is_short: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Account value at each candle's close (1.0 at the start), an open position valued with the exit fee,
    and whether a position is held at each close.

    Each entry spends `size` of the account; the rest waits as cash, so a trade moves the account by
    size · (ratio − 1). The candles fall into runs, flat before trade 0, holding trade 0, flat, ...:
    each run's figures are spread over its candles with np.repeat, one pass instead of a mask per trade.
    Every run is worth cash + units · close: a long holds units = M/E·(1−f) valued with the exit fee,
    (1−f) · close each; a short of notional M (q = M/E) is worth M + q·(E·(1−f) − close·(1+f)), which
    is cash M·(2−f) and units −q·(1+f)."""
    n, count = len(candles["close"]), len(entries)
    cash_after = np.concatenate(([1.0], np.cumprod(1 + size * (ratios - 1))))  # balance before trade k
    units = cash_after[:count] * size * (1 - fee_rate) / entry_prices
    # Trade k is held at the closes of candles entries[k] .. exits[k] - 1 (the open one to the end).
    edges = np.empty(2 * count + 2, dtype=np.int64)
    edges[0], edges[1:-1:2], edges[-1] = 0, entries, n
    edges[2:-1:2] = np.concatenate((exits, np.full(count - len(exits), n)))
    run_lengths = np.diff(edges)  # flat 0, holding 0, flat 1, ..., holding count-1, flat count
    cash = np.empty(2 * count + 1)
    cash[0:-1:2], cash[1::2] = cash_after[:count], cash_after[:count] * (1 - size)
    cash[-1] = cash_after[-1]  # after the last trade: its run is empty while that trade is still open
    held_units = np.zeros(2 * count + 1)
    held_units[1::2] = units
    if is_short is not None and is_short.any():
        notional = cash_after[:count] * size
        cash[1::2] += np.where(is_short, notional * (2 - fee_rate), 0.0)
        held_units[1::2] = np.where(is_short, -notional / entry_prices * (1 + fee_rate) / (1 - fee_rate), units)
    # Flat candles add 0 · close: the account is exactly its cash there.
    equity = np.repeat(cash, run_lengths) + np.repeat(held_units, run_lengths) * candles["close"] * (1 - fee_rate)
    in_market = np.repeat(np.arange(2 * count + 1) % 2 == 1, run_lengths)
    return equity, in_market


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
    with open(path, "rb") as file:
        return klines_arrays(file, layout, path, lambda: read_klines(path), progress)


def klines_arrays(file: BinaryIO, layout: Layout, name: str | Path, read_slowly: Callable[[], list],
                  progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """`load_candles` of a klines file open in binary at its start (a file on disk or inside a zip).

    Read in blocks of _BLOCK_BYTES, so memory stays bounded whatever the file holds. Every row must have
    the first row's column count, its time in the first row's unit, on a whole minute and after the
    row before (DESIGN.md "Candles"). The fast parse only speeds things up: on any doubt the file is
    read again row by row with `read_slowly` (`read_klines`), which raises the FeedError naming the
    first bad line, or gives the candles of a file that is odd but right.
    """
    if layout.kind != KLINES:
        raise FeedError(name, layout.first_data_line, "this is an aggTrades file, not klines")
    try:
        return _fast_klines(file, layout, progress)
    except _Doubt:
        candles = read_slowly()
    columns = [np.array([getattr(c, field) for c in candles], dtype=np.float64)
               for field in ("open", "high", "low", "close", "volume")]
    arrays = dict(zip(("open", "high", "low", "close", "volume"), columns))
    arrays["open_time_ms"] = np.array([c.open_time_ms for c in candles], dtype=np.int64)
    return arrays


class _Doubt(Exception):
    """The fast parse saw something it does not vouch for: read the file row by row instead."""


def _fast_klines(file: BinaryIO, layout: Layout, progress) -> dict[str, np.ndarray]:
    for _ in range(layout.first_data_line - 1):
        file.readline(MAX_LINE_BYTES + 1)  # sniff has read these already
    chunks = []
    try:
        for rows in line_blocks(file, _BLOCK_BYTES):
            chunks.append(_parse_rows(rows, layout))
            if progress is not None:
                progress(file.tell())
    except LineTooLong:
        raise _Doubt from None  # the slow reader names the line
    table = np.concatenate(chunks) if chunks else np.zeros((0, 6))
    open_, high, low, close, volume = table[:, 1:].T
    if not (np.all(np.isfinite(table)) and np.all(low > 0) and np.all(volume >= 0)
            and np.all(low <= np.minimum(open_, close)) and np.all(high >= np.maximum(open_, close))):
        raise _Doubt
    lower, upper = UNIT_RANGES[layout.time_unit]
    open_time_ms = np.round(table[:, 0] * to_ms_factor(layout.time_unit)).astype(np.int64)
    if len(table) and not (lower <= table[:, 0].min() and table[:, 0].max() < upper
                           and np.all(open_time_ms % 60_000 == 0) and np.all(np.diff(open_time_ms) > 0)):
        raise _Doubt  # another time unit, a time off the minute, or out of order
    arrays = {column: np.ascontiguousarray(table[:, i + 1])
              for i, column in enumerate(("open", "high", "low", "close", "volume"))}
    arrays["open_time_ms"] = open_time_ms
    return arrays


def _parse_rows(rows: bytes, layout: Layout) -> np.ndarray:
    """The first six columns of whole lines of a klines file, after checking each line's length and
    column count with whole-array operations (np.loadtxt's usecols would let a short row through)."""
    raw = np.frombuffer(rows, dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if not len(ends) or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))  # the file's last line, without a line end
    lengths = np.diff(ends, prepend=-1) - 1
    commas = np.diff(np.searchsorted(np.flatnonzero(raw == ord(",")), ends), prepend=0)
    blank = (lengths == 0) | ((lengths == 1) & (raw[np.maximum(ends - 1, 0)] == ord("\r")))
    if lengths.max() > MAX_LINE_BYTES or np.any(~blank & (commas != layout.columns - 1)):
        raise _Doubt
    try:
        with warnings.catch_warnings():  # a block of blank lines is an empty table, and that is fine
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(io.BytesIO(rows), delimiter=",", usecols=range(6), ndmin=2, dtype=np.float64)
    except (ValueError, UnicodeDecodeError):
        raise _Doubt from None


# -- reports ----------------------------------------------------------------------------------------

def format_report(result: BacktestResult, title: str, candles: Mapping[str, np.ndarray], last_trades: int = 10) -> str:
    """The readable table `omniwise.py backtest` prints."""
    times = candles["open_time_ms"]
    table = result.table
    closed = int(np.count_nonzero(table.closed))
    span = f"{_utc(int(times[0]))} to {_utc(int(times[-1]))} UTC" if result.candles else "no candles"
    fill = "the next candle's open" if result.fill == "next-open" else "the decision candle's close"
    if result.timeframe != "1m":
        fill = ("the open of the first minute after the window" if result.fill == "next-open"
                else "the window's close")
    lines = [
        title,
        f"  candles       {result.candles:,} ({span})"
        + (f", decided on {result.timeframe} candles" if result.timeframe != "1m" else ""),
        f"  trades        {len(table):,} ({closed:,} closed, {len(table) - closed} open)",
        *metric_lines(result.metrics),
        f"  fills         at {fill}, fee {result.fee_rate * 100:g} % per side, "
        + (f"slippage {result.slippage * 100:g} %, " if result.slippage else "")
        + ("long and short" if table.is_short.any() else "long only")
        + (f", {result.size_share * 100:g} % of equity per entry" if result.size_share < 1 else ""),
    ]
    counts = np.bincount(table.exit_reason[table.closed], minlength=len(exits.REASONS)).tolist()
    reasons = {reason: count for reason, count in zip(exits.REASONS, counts) if count}
    if reasons:
        lines.append("  exits by      " + ", ".join(f"{reason.replace('_', ' ')} {count:,}"
                                                   for reason, count in sorted(reasons.items())))
    if len(table):
        lines += ["", f"  last {min(last_trades, len(table))} trades:",
                  f"  {'side':<5} {'entry (UTC)':<17} {'entry price':>14}  {'exit (UTC)':<17} {'exit price':>14}"
                  f" {'return':>9}  exit by"]
        for t in table.rows(-last_trades):
            exit_time = _utc(t.exit_time) if t.exit_time is not None else "open"
            exit_price = f"{t.exit_price:.8g}" if t.exit_price is not None else "-"
            lines.append(f"  {t.side:<5} {_utc(t.entry_time):<17} {t.entry_price:>14.8g}  {exit_time:<17} {exit_price:>14} "
                         f"{t.return_pct:>+8.2f}%  {(t.exit_reason or '').replace('_', ' ')}")
    return "\n".join(lines)


def metric_lines(m: Metrics) -> list[str]:
    """The metrics as table lines, '-' where a figure is undefined, with the reason at the line's end."""
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    def why(*names):
        reasons = dict.fromkeys(m.why_null[name] for name in names if name in m.why_null)  # in order, once
        return f"   ({'; '.join(reasons)})" if reasons else ""

    return [
        f"  return        {m.return_pct:+.2f} %   (buy and hold {m.buy_and_hold_pct:+.2f} %)",
        f"  max drawdown  {m.max_drawdown_pct:.2f} %",
        f"  win rate      {num(m.win_rate_pct, '.1f')} %   expectancy {num(m.expectancy_pct, '+.3f')} % a trade"
        + why("win_rate_pct"),
        f"  profit factor {num(m.profit_factor, '.3f')}" + why("profit_factor"),
        f"  exposure      {m.exposure_pct:.1f} % of candles in a position",
        f"  sharpe        {num(m.sharpe, '.3f')}   sortino {num(m.sortino, '.3f')}   calmar {num(m.calmar, '.3f')}"
        + (why("sharpe", "sortino", "calmar") if m.days < MIN_DAYS else f"   over {m.days:,} complete UTC days"
           + why("sharpe", "sortino", "calmar")),
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

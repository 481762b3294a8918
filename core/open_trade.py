"""The open trade's risk state, kept in SQLite so that a restart neither forgets a stop nor re-enters.

The worker's side of DESIGN.md "Risk statements" and "Shorts": the entry fill price, the ATR of the
candle whose decision caused the entry, the trailing peak (the highs of a long's finished candles, the
lows of a short's), the side, and the block on entering that side again after a risk exit until the
rules have answered anything else once.
"""

from __future__ import annotations

import dataclasses
import json
import time

from core.dsl import Risk
from core.exits import REASON_WORDS, TradeLevels, exit_reason, liquidation_factor
from core.store import Database


@dataclasses.dataclass
class OpenTrade:
    """Risk state of one symbol: `entry_price` is None while flat."""

    entry_price: float | None = None
    atr: dict[int, float] = dataclasses.field(default_factory=dict)
    peak: float | None = None
    reentry_blocked: bool = False
    is_short: bool = False  # the open trade's side; while flat, the side a risk exit blocks

    @property
    def is_open(self) -> bool:
        """True while a trade is held."""
        return self.entry_price is not None

    @property
    def side(self) -> str:
        """"long" or "short": the open trade's side (or the last one's)."""
        return "short" if self.is_short else "long"

    def enter(self, price: float, atr: dict[int, float], is_short: bool = False) -> None:
        """An entry filled at `price`; `atr` is the ATR of the decision candle. An ATR of zero (a flat market)
        or undefined sets no level: stored as NaN, as the backtest does (exits.usable_atr)."""
        usable = {period: (value if value > 0 else float("nan")) for period, value in atr.items()}
        self.entry_price, self.atr, self.peak, self.is_short = price, usable, price, is_short

    def close(self) -> None:
        """The position is flat again."""
        self.entry_price, self.atr, self.peak = None, {}, None

    def candle_closed(self, high: float, low: float) -> None:
        """A finished candle of the trade moves the trailing peak (a long's highest high, a short's lowest low)."""
        if self.is_open:
            self.peak = min(self.peak, low) if self.is_short else max(self.peak, high)

    def levels(self, risk: Risk, liquidation_fee: float | None = None) -> TradeLevels | None:
        """The levels to check now, or None while flat or with nothing to check. `liquidation_fee`: a short
        is liquidated where a 1x short at this fee rate has lost its notional (paper); None keeps no such level."""
        has_liquidation = self.is_short and liquidation_fee is not None
        if not self.is_open or not (risk.has_exits or has_liquidation):
            return None
        liquidation = self.entry_price * liquidation_factor(liquidation_fee) if has_liquidation else float("nan")
        return TradeLevels(risk, self.entry_price, self.atr, self.peak, self.is_short, liquidation)


def load(db: Database, symbol: str) -> OpenTrade:
    """The stored state of `symbol` (flat and unblocked when none is stored)."""
    row = db.execute("SELECT entry_price, atr_json, peak, reentry_blocked, is_short FROM risk_state WHERE symbol = ?",
                     [symbol]).fetchone()
    if row is None:
        return OpenTrade()
    atr = {int(k): (float("nan") if v is None else v) for k, v in json.loads(row[1] or "{}").items()}
    return OpenTrade(row[0], atr, row[2], bool(row[3]), bool(row[4]))


def save(db: Database, symbol: str, trade: OpenTrade, now_ms: int) -> None:
    """Store the state, inside the caller's transaction."""
    atr = {str(k): (None if v != v else v) for k, v in trade.atr.items()}  # NaN (warming up) as null
    db.execute("INSERT INTO risk_state(symbol, entry_price, atr_json, peak, reentry_blocked, is_short, updated_at_ms) "
               "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(symbol) DO UPDATE SET entry_price = excluded.entry_price, "
               "atr_json = excluded.atr_json, peak = excluded.peak, reentry_blocked = excluded.reentry_blocked, "
               "is_short = excluded.is_short, updated_at_ms = excluded.updated_at_ms",
               [symbol, trade.entry_price, json.dumps(atr), trade.peak, int(trade.reentry_blocked), int(trade.is_short),
                now_ms])


def last_risk_exit(db: Database, symbol: str) -> str | None:
    """'exited by stop loss at PRICE (HH:MM UTC)' when the newest filled order was a risk exit, else None."""
    row = _last_risk_exit(db, symbol)
    if row is None:
        return None
    reason, price, filled_at_ms, _ = row
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(filled_at_ms / 1000))
    return f"exited by {REASON_WORDS[exit_reason(reason)]} at {price:.8g} ({when} UTC)"


def last_risk_exit_ms(db: Database, symbol: str) -> int | None:
    """When the newest filled order was a risk exit, when the worker decided it (its clock, the signals' clock:
    in a replay the fill carries the file's time), else None."""
    row = _last_risk_exit(db, symbol)
    return None if row is None else row[3]


def _last_risk_exit(db: Database, symbol: str) -> tuple[str, float, int, int] | None:
    row = db.execute("SELECT d.reason, o.price, o.filled_at_ms, d.created_at_ms FROM orders o "
                     "JOIN decisions d ON d.id = o.decision_id "
                     "WHERE o.symbol = ? AND o.status = 'filled' ORDER BY o.id DESC LIMIT 1",
                     [symbol]).fetchone()
    if row is None or exit_reason(row[0]) not in ("stop_loss", "take_profit", "trailing_stop", "liquidation"):
        return None
    return row

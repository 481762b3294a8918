"""Brokers: where target positions become orders. Paper trading here; Binance in core/binance/ (spot.py, futures.py)
(worker.py chooses the broker).

A broker is asked for the `position()` and given orders that were already recorded (with a client
order id derived from the decision) inside the trader's transaction. Everything the paper broker
knows lives in SQLite, so it survives restarts of the worker.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from core import fills, store
from core.store import Database

log = logging.getLogger(__name__)

DUST_QTY = 1e-12


class BrokerError(Exception):
    """The broker could not be reached or refused a request. Caller: alert and retry on the next check;
    never assume the position changed."""


@dataclasses.dataclass(frozen=True)
class Position:
    """What the account holds in the traded symbol."""

    side: str  # "long", "flat" or "short"
    qty: float = 0.0
    entry_price: float | None = None


def client_order_id(decision_id: int) -> str:
    """The client order id of a decision's order: the same decision always gives the same id."""
    return f"omniwise-{decision_id}"


class PaperBroker:
    """Simulated account: long, flat or short (1x), the balance (or its SIZE share) in, all out, fee per side.
    A short holds a negative base quantity and the quote its sale received.

    Orders wait as `pending` and fill at the next price the trader reports (`fill_pending`), which is
    the next candle's open: the fill rule of the backtest.
    """

    name = "paper"
    fills_at_level = True  # a risk exit fills at its level (or the open that gapped through it), not later
    can_short = True

    def __init__(self, db: Database, symbol: str, start_balance: float = 10_000.0,
                 fee_rate: float = fills.DEFAULT_FEE_RATE, slippage: float = 0.0):
        self.db = db
        self.symbol = symbol
        self.fee_rate = fee_rate
        self.slippage = slippage  # every fill moved by this fraction against the trader (OMNIWISE_PAPER_SLIPPAGE)
        self.db.execute(
            "INSERT OR IGNORE INTO paper_accounts(symbol, quote_balance, base_qty, entry_price, updated_at_ms) "
            "VALUES (?, ?, 0, NULL, 0)", [symbol, start_balance])
        self.db.conn.commit()

    def account(self) -> tuple[float, float, float | None]:
        """(quote balance, base quantity, entry price) as stored."""
        return self.db.execute(
            "SELECT quote_balance, base_qty, entry_price FROM paper_accounts WHERE symbol = ?", [self.symbol]
        ).fetchone()

    def position(self) -> Position:
        """The position from the stored account."""
        _, base_qty, entry_price = self.account()
        if base_qty > DUST_QTY:
            return Position("long", base_qty, entry_price)
        if base_qty < -DUST_QTY:
            return Position("short", -base_qty, entry_price)
        return Position("flat")

    def submit(self, decision_id: int, side: str, now_ms: int, size_share: float = 1.0,
               target: str | None = None) -> dict:
        """Record a market order for a decision; it fills at the next price. An entry commits `size_share` of the
        equity (SIZE); `target` is the position the order reaches (a SELL to "short" opens a short, one to
        "flat" closes a long; None: BUY opens, SELL closes). Call inside a transaction."""
        order = {"decision_id": decision_id, "client_order_id": client_order_id(decision_id), "broker": self.name,
                 "symbol": self.symbol, "side": side, "status": "pending", "created_at_ms": now_ms,
                 "size_share": size_share, "target": target}
        cursor = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, created_at_ms, size_share, "
            "target) VALUES (:decision_id, :client_order_id, :broker, :symbol, :side, :status, :created_at_ms, "
            ":size_share, :target)", order)
        order["id"] = cursor.lastrowid
        return order

    def execute(self, order: dict, even_if_unknown: bool = False) -> None:
        """Send a recorded order (after the trader's transaction committed). Paper: it waits for the next price
        (and no order's outcome is ever unknown)."""

    def recover(self) -> None:
        """On start, settle orders whose outcome a crash left unknown. Paper: nothing is ever in flight."""

    def has_pending(self) -> bool:
        """True when an order waits for the next price."""
        return self.db.execute("SELECT 1 FROM orders WHERE broker = ? AND symbol = ? AND status = 'pending' LIMIT 1",
                               [self.name, self.symbol]).fetchone() is not None

    def fill_pending(self, price: float, time_ms: int) -> list[dict]:
        """Fill every pending order at `price` (moved by the slippage against the trader). Call inside a
        transaction."""
        pending = self.db.execute(
            "SELECT id, side, client_order_id, size_share, target FROM orders WHERE broker = ? AND symbol = ? "
            "AND status = 'pending' ORDER BY id", [self.name, self.symbol]).fetchall()
        filled = []
        market_price = price
        for order_id, side, client_id, size_share, target in pending:
            price = fills.slipped(market_price, side, self.slippage)
            quote, base, entry = self.account()
            share = 1.0 if size_share is None else size_share
            if side == "BUY" and target == "flat" and base < -DUST_QTY:  # buy the short back
                fill = fills.close_short(-base, price, self.fee_rate)
                quote, base, entry = quote - fill.quote, 0.0, None
            elif side == "SELL" and target == "short" and abs(base) <= DUST_QTY and quote > 0:
                fill = fills.open_short(quote * min(share, 1.0), price, self.fee_rate)
                quote, base, entry = quote + fill.quote, -fill.qty, price
            elif side == "BUY" and target != "flat" and base >= -DUST_QTY and quote > 0:
                fill = fills.buy_share(quote, share, price, self.fee_rate)
                quote, base, entry = quote - fill.quote, base + fill.qty, price
            elif side == "SELL" and target != "short" and base > DUST_QTY:
                fill = fills.sell_all(base, price, self.fee_rate)
                quote, base, entry = quote + fill.quote, 0.0, None
            else:  # nothing to buy with or nothing to sell: the target is already met
                self.db.execute("UPDATE orders SET status = 'rejected', error = ? WHERE id = ?",
                                ["nothing to trade", order_id])
                continue
            self.db.execute("UPDATE paper_accounts SET quote_balance = ?, base_qty = ?, entry_price = ?, "
                            "updated_at_ms = ? WHERE symbol = ?", [quote, base, entry, time_ms, self.symbol])
            self.db.execute("UPDATE orders SET status = 'filled', qty = ?, price = ?, quote = ?, fee_quote = ?, "
                            "filled_at_ms = ? WHERE id = ?",
                            [fill.qty, fill.price, fill.quote, fill.fee_quote, time_ms, order_id])
            filled.append({"id": order_id, "client_order_id": client_id, "side": side, "target": target, "qty": fill.qty,
                           "price": fill.price, "quote": fill.quote, "fee_quote": fill.fee_quote,
                           "filled_at_ms": time_ms, "market_price": market_price})
        return filled


def save_position(db: Database, position: Position, now_ms: int) -> None:
    """Publish the position the worker last read, for the web app (which never asks the broker itself)."""
    value = json.dumps({"side": position.side, "qty": position.qty, "entry_price": position.entry_price,
                        "read_at_ms": now_ms})
    store.set_meta(db, "position", value, now_ms)


def load_position(db: Database) -> dict | None:
    """The position the worker last published: side, qty, entry_price, read_at_ms; None before the first."""
    value = store.get_meta(db, "position")
    return None if value is None else json.loads(value)

"""The account in money: round trips with their P&L and fees, equity over time, the balance now.

Everything is derived from the filled orders (the ledger both the paper and the Binance brokers keep),
in the quote asset. A round trip opens with a fill while flat and closes with the opposite fill; its
P&L is what the closing side received minus what the opening side spent, both after fees, so the sum
of the round trips is exactly the change of the paper balance.
"""

from __future__ import annotations

import dataclasses
import threading

from core.store import Database

DAY_MS = 86_400_000
MAX_EQUITY_POINTS = 2_000  # the curve's newest fills; older history thins out of the chart, not out of the totals
# The decision that caused a closing order says why it closed, until orders carry their own exit_reason.
EXIT_REASONS = {"strategy": "rule", "manual": "manual", "follow": "follow"}
CLOSED_SHARE_TOLERANCE = 1e-9  # parts adding up to the entry's quantity within rounding close the trip


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """One entry and its exit (exit fields None while the trade is open). Money in the quote asset."""

    side: str  # "long" or "short"
    entry_time_ms: int
    entry_price: float
    qty: float
    entry_quote: float  # spent on a long's entry (fee included), received on a short's (after its fee)
    fees: float
    exit_time_ms: int | None = None
    exit_price: float | None = None
    exit_quote: float | None = None
    exit_reason: str | None = None

    @property
    def pnl(self) -> float | None:
        """Realised P&L after both fees; None while open."""
        if self.exit_quote is None:
            return None
        return self.exit_quote - self.entry_quote if self.side == "long" else self.entry_quote - self.exit_quote

    entry_fee: float = 0.0  # the entry's own fee

    @property
    def committed(self) -> float:
        """The money the entry committed: a long's spend, a short's notional q·E (DESIGN.md "Shorts")."""
        return self.entry_quote if self.side == "long" else self.entry_quote + self.entry_fee

    @property
    def pnl_pct(self) -> float | None:
        """P&L in percent of the money the entry committed."""
        pnl = self.pnl
        return None if pnl is None or not self.committed else pnl / self.committed * 100


def filled_orders(db: Database, symbol: str) -> list[dict]:
    """Filled orders of `symbol`, oldest first, with the reason of the decision behind each."""
    reason = "coalesce(o.exit_reason, d.reason)" if _has_column(db, "orders", "exit_reason") else "d.reason"
    cursor = db.execute(
        f"SELECT o.id, o.side, o.qty, o.price, o.quote, coalesce(o.fee_quote, 0), o.filled_at_ms, {reason} "
        "FROM orders o LEFT JOIN decisions d ON d.id = o.decision_id "
        "WHERE o.symbol = ? AND o.status = 'filled' AND o.filled_at_ms IS NOT NULL ORDER BY o.filled_at_ms, o.id",
        [symbol])
    names = ("id", "side", "qty", "price", "quote", "fee_quote", "filled_at_ms", "reason")
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def ledger(db: Database, symbol: str) -> tuple[list[dict], list[RoundTrip]]:
    """The filled orders of `symbol` and their round trips (shared: do not change them).

    Pages refresh every few seconds while fills change once a trade, so both are read and paired again only
    when the fills' fingerprint (count, newest id, sums of times, quantities, quotes and fees) has changed.
    """
    fingerprint = tuple(db.execute(
        "SELECT count(*), max(id), sum(filled_at_ms), sum(qty), sum(quote), sum(fee_quote) FROM orders "
        "WHERE symbol = ? AND status = 'filled' AND filled_at_ms IS NOT NULL", [symbol]).fetchone())
    key = (db.conn.execute("PRAGMA database_list").fetchone()[2], symbol)
    with _ledger_lock:
        cached = _ledger_cache.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1], cached[2]
    orders = filled_orders(db, symbol)
    trips = round_trips(orders)
    with _ledger_lock:
        _ledger_cache[key] = (fingerprint, orders, trips)
    return orders, trips


_ledger_lock = threading.Lock()
_ledger_cache: dict[tuple[str, str], tuple[tuple, list[dict], list[RoundTrip]]] = {}


def round_trips(orders: list[dict]) -> list[RoundTrip]:
    """Pair the fills into round trips, oldest first; the last one may still be open. A close sent in parts
    (a position above the market order maximum) is one exit at the parts' average price."""
    trips: list[RoundTrip] = []
    open_trip: RoundTrip | None = None
    closing: list[dict] = []  # the parts of the exit so far
    for order in orders:
        if open_trip is None:
            open_trip = RoundTrip("long" if order["side"] == "BUY" else "short", order["filled_at_ms"],
                                  order["price"], order["qty"], order["quote"], order["fee_quote"],
                                  entry_fee=order["fee_quote"])
            continue
        opening_side = "BUY" if open_trip.side == "long" else "SELL"
        if order["side"] == opening_side:  # adding to the position (never done by Omniwise itself)
            open_trip = dataclasses.replace(open_trip, qty=open_trip.qty + order["qty"],
                                            entry_quote=open_trip.entry_quote + order["quote"],
                                            fees=open_trip.fees + order["fee_quote"],
                                            entry_fee=open_trip.entry_fee + order["fee_quote"])
            continue
        closing.append(order)
        closed_qty = sum(part["qty"] for part in closing)
        if closed_qty < open_trip.qty * (1 - CLOSED_SHARE_TOLERANCE):
            continue  # more parts of this exit are to come
        reason = (closing[0]["reason"] or "").split(":")[0] or None  # "stop_loss:part2" is a stop loss's part
        trips.append(dataclasses.replace(
            open_trip, exit_time_ms=order["filled_at_ms"],
            exit_price=sum(part["price"] * part["qty"] for part in closing) / closed_qty,
            exit_quote=sum(part["quote"] for part in closing),
            fees=open_trip.fees + sum(part["fee_quote"] for part in closing),
            exit_reason=EXIT_REASONS.get(reason, reason)))
        open_trip, closing = None, []
    if open_trip is not None:
        trips.append(open_trip)
    return trips


@dataclasses.dataclass(frozen=True)
class Account:
    """The account at a price: what the operator asks first. Quote asset throughout."""

    cash: float | None  # free quote balance (paper); None where the exchange holds it
    position_qty: float
    position_value: float | None  # qty at the last price
    equity: float | None
    realized_pnl: float
    realized_pnl_today: float
    fees: float
    fees_today: float
    start_balance: float | None
    trades: int  # closed round trips

    def as_json(self) -> dict:
        """The shape of /api/v1/status's `account`."""
        return dataclasses.asdict(self)


def marked_value(qty: float, price: float, fee_rate: float = 0.0) -> float:
    """What a position is worth at `price`: a long its quantity at the price, a short (qty < 0) minus what buying
    it back costs, fee included (DESIGN.md "Shorts": equity marks an open short with the buy-back fee)."""
    return qty * price * (1 + fee_rate) if qty < 0 else qty * price


def marking_fee(settings) -> float:
    """The fee per side an open short is marked with: the paper account's; an exchange's own is not known here."""
    return settings.fee_rate if settings.broker == "paper" else 0.0


def account(db: Database, symbol: str, price: float | None, now_ms: int,
            start_balance: float | None = None, fee_rate: float = 0.0) -> Account:
    """The account of `symbol` valued at `price` (the last close); `start_balance` is the paper account's and
    `fee_rate` its fee per side (an open short is marked with the fee of buying it back)."""
    orders, trips = ledger(db, symbol)
    day_start_ms = now_ms - now_ms % DAY_MS
    closed = [t for t in trips if t.exit_time_ms is not None]
    cash, qty = _paper_balance(db, symbol)
    if cash is None:  # an exchange account: the position is what the fills left
        qty = sum(o["qty"] if o["side"] == "BUY" else -o["qty"] for o in orders)
    value = marked_value(qty, price, fee_rate) if price is not None else (0.0 if qty == 0 else None)  # flat: no price
    equity = cash + value if cash is not None and value is not None else None
    return Account(
        cash=cash, position_qty=qty, position_value=value, equity=equity,
        realized_pnl=sum(t.pnl for t in closed),
        realized_pnl_today=sum(t.pnl for t in closed if t.exit_time_ms >= day_start_ms),
        fees=sum(o["fee_quote"] for o in orders),
        fees_today=sum(o["fee_quote"] for o in orders if o["filled_at_ms"] >= day_start_ms),
        start_balance=start_balance if cash is not None else None, trades=len(closed))


def of_settings(db: Database, settings, now_ms: int) -> Account:
    """The configured market's account at its last close, as the pages and the status API show it: the paper
    account with its start balance and fee, an exchange account without them; "today" as `today_ms` says."""
    is_paper = settings.broker == "paper"
    return account(db, settings.symbol, last_price(db, settings.symbol),
                   today_ms(db, settings.symbol, settings.feed, now_ms),
                   settings.paper_balance if is_paper else None, marking_fee(settings))


def equity_curve(orders: list[dict], start_balance: float, price: float | None, now_ms: int,
                 fee_rate: float = 0.0) -> list[dict]:
    """The start balance a minute before the first fill, equity after each fill (valued at the fill's price),
    and at `now_ms` (the last candle's close: a replay's clock, not the wall's) at `price`; times in UTC seconds.
    An open short is marked with the fee of buying it back (`fee_rate`), as `account` marks it."""
    cash, qty = start_balance, 0.0
    points = [{"time": orders[0]["filled_at_ms"] // 1000 - 60, "value": start_balance}] if orders else []
    for order in orders:
        if order["side"] == "BUY":
            cash, qty = cash - order["quote"], qty + order["qty"]
        else:
            cash, qty = cash + order["quote"], qty - order["qty"]
        points.append({"time": order["filled_at_ms"] // 1000,
                       "value": cash + marked_value(qty, order["price"], fee_rate)})
    if price is not None and (not points or now_ms // 1000 > points[-1]["time"]):
        points.append({"time": now_ms // 1000, "value": cash + marked_value(qty, price, fee_rate)})
    deduped: dict[int, float] = {}
    for point in points:  # the chart wants one value per second, ascending: the last fill of a second wins
        deduped[point["time"]] = point["value"]
    return [{"time": t, "value": v} for t, v in sorted(deduped.items())][-MAX_EQUITY_POINTS:]


QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY")


def quote_asset(symbol: str) -> str:
    """The asset a market is priced in (XRPETH -> ETH, BTCUSDT -> USDT); "quote" when it cannot be told."""
    for asset in QUOTE_ASSETS:
        if symbol.upper().endswith(asset) and len(symbol) > len(asset):
            return asset
    return "quote"


def today_ms(db: Database, symbol: str, feed: str, now_ms: int) -> int:
    """The moment whose UTC day is "today" for the money: a replay's newest candle (the file's day), else now."""
    if feed == "replay":
        last = last_close(db, symbol)
        if last is not None:
            return last[1]
    return now_ms


def last_price(db: Database, symbol: str) -> float | None:
    """The newest candle's close: what an open position is valued at."""
    last = last_close(db, symbol)
    return last[0] if last else None


def last_close(db: Database, symbol: str) -> tuple[float, int] | None:
    """The newest candle's close and its close time in ms, or None before the first candle."""
    row = db.execute("SELECT close, close_time_ms FROM candles WHERE symbol = ? ORDER BY open_time_ms DESC LIMIT 1",
                     [symbol]).fetchone()
    return (row[0], row[1] + 1) if row else None


def _paper_balance(db: Database, symbol: str) -> tuple[float | None, float]:
    row = db.execute("SELECT quote_balance, base_qty FROM paper_accounts WHERE symbol = ?", [symbol]).fetchone()
    return (row[0], row[1]) if row else (None, 0.0)


def _has_column(db: Database, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})").fetchall())

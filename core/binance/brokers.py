"""Binance brokers, spot and USDⓈ-M futures: market orders, never two for one decision.

The trader records each order (status `sending`) in its transaction; `execute` sends it once after the
commit, under a client id unique to this installation (`ow<8 random characters>-<decision id>`). When the
outcome is unknown (a timeout, a lost answer, a 5xx: Binance may have executed it, even seconds later),
the order is never sent again: it stays `unknown` (alerted) until Binance tells what became of it: the
user data stream's order update for its client id (executionReport on spot, ORDER_TRADE_UPDATE on
futures), or the order query. Order queries can lag a fill, so Binance's "order does not exist" (-2013)
settles nothing by itself; spot then reads the account's trades (see BinanceSpotBroker._from_trades).
Only after UNKNOWN_SETTLE_MS without any trace is the order given up as `not_found`. While an order is unknown no other order is
sent: the next decision decides again against the exchange's account. Only a request that provably
never left (connection refused) is sent again, by the REST client.

Order statuses: sending, unknown (being settled), filled, partially_filled, new, expired, canceled,
rejected (Binance refused it), skipped (nothing to do, or below Binance's minimum), not_sent (never
reached Binance), not_found (unknown, and no trace of it at Binance after UNKNOWN_SETTLE_MS).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import re
import secrets
import string
import time
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import NamedTuple

from sqlite_utils import Database

from core import brokers, store
from core.health import alerts
from core.binance.rest import FUTURES, ORDER_DOES_NOT_EXIST, SPOT, BinanceRest, ExchangeRejected, ExchangeUnreachable
from core.brokers import BrokerError, Position

log = logging.getLogger(__name__)

FUTURES_MARGIN_USE = Decimal("0.98")  # of the available margin: the rest absorbs fees and the price moving
OPEN_STATUSES = ("sending", "unknown", "new", "partially_filled")
UNKNOWN_SETTLE_MS = 15 * 60_000  # an unknown order with no trace at Binance this long after it was sent
RULES_MAX_AGE_MS = 24 * 3_600_000  # exchangeInfo is read again this often (and after a filter failure)
FILTER_FAILURE = -1013
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,36}$")  # within Binance's ^[\.A-Z\:/a-z0-9_-]{1,36}$
CLIENT_ID_PREFIX_KEY = "binance_client_id_prefix"
ZERO = Decimal(0)
FINAL_ORDER_STATUSES = ("FILLED", "EXPIRED", "EXPIRED_IN_MATCH", "CANCELED", "REJECTED")


def client_id_prefix(db: Database, now_ms: int) -> str:
    """This installation's client id prefix, `ow` and 8 random letters or digits, made once and kept in
    the database: another installation (or this one after a reset) never takes our orders for its own."""
    with store.transaction(db):
        prefix = store.get_meta(db, CLIENT_ID_PREFIX_KEY)
        if prefix is None:
            alphabet = string.ascii_letters + string.digits
            prefix = "ow" + "".join(secrets.choice(alphabet) for _ in range(8))
            store.set_meta(db, CLIENT_ID_PREFIX_KEY, prefix, now_ms)
    return prefix


def exchange_client_id(prefix: str, decision_id: int) -> str:
    """The client order id of a decision's order on Binance; the same decision always gives the same id."""
    client_id = f"{prefix}-{decision_id}"
    if not CLIENT_ID_PATTERN.match(client_id):
        raise BrokerError(f"client order id {client_id!r} does not fit Binance's pattern")
    return client_id


@dataclasses.dataclass(frozen=True)
class SymbolRules:
    """What exchangeInfo says about trading one symbol with market orders (Binance's "Filters")."""

    base_asset: str
    quote_asset: str  # the spot quote asset; the margin asset for futures
    step: Decimal  # quantities are whole multiples of this
    min_qty: Decimal
    max_qty: Decimal | None  # the largest market order (LOT_SIZE and MARKET_LOT_SIZE together)
    min_notional: Decimal  # quantity times price must reach this
    max_notional: Decimal | None  # and stay below this (spot NOTIONAL with applyMaxToMarket)
    quote_step: Decimal  # smallest unit of a quote amount (spot quoteOrderQty)
    avg_price_mins: int = 0  # spot: notional checked at the average price of this many minutes (0: last price)
    tick: Decimal = ZERO  # prices (a stop's trigger price) are whole multiples of this (PRICE_FILTER tickSize)

    @classmethod
    def from_symbol(cls, info: dict, market: str) -> "SymbolRules":
        """Read a symbol of exchangeInfo: LOT_SIZE with MARKET_LOT_SIZE, NOTIONAL or MIN_NOTIONAL."""
        filters = {f["filterType"]: f for f in info.get("filters", ())}
        lots = [filters.get("LOT_SIZE", {}), filters.get("MARKET_LOT_SIZE", {})]
        steps = [Decimal(lot.get("stepSize", "0")) for lot in lots]
        maxima = [Decimal(lot["maxQty"]) for lot in lots if Decimal(lot.get("maxQty", "0")) > 0]
        min_qty = max(Decimal(lot.get("minQty", "0")) for lot in lots)
        notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
        min_notional = Decimal(notional.get("minNotional", notional.get("notional", "0")))
        if notional.get("applyMinToMarket", notional.get("applyToMarket", True)) is False:
            min_notional = ZERO
        max_notional = None
        if "maxNotional" in notional and notional.get("applyMaxToMarket", False):
            max_notional = Decimal(notional["maxNotional"])
        precision = info.get("quoteAssetPrecision", info.get("quotePrecision", 8))
        quote = info["quoteAsset"] if market == SPOT else info.get("marginAsset", info["quoteAsset"])
        return cls(info["baseAsset"], quote, max(steps), min_qty, min(maxima) if maxima else None, min_notional,
                   max_notional, Decimal(1).scaleb(-int(precision)), int(notional.get("avgPriceMins", 0)),
                   Decimal(filters.get("PRICE_FILTER", {}).get("tickSize", "0")))

    def floor_qty(self, qty: Decimal) -> Decimal:
        """`qty` rounded down to the step size."""
        return floor_to(qty, self.step)

    def is_tradable(self, qty: Decimal, price: Decimal | None) -> bool:
        """Whether a market order of `qty` passes the minimum quantity and notional (given a price)."""
        return qty > 0 and qty >= self.min_qty and (price is None or qty * price >= self.min_notional)

    def problem(self, qty: Decimal, price: Decimal | None) -> str | None:
        """Why a market order of `qty` would fail Binance's filters, or None when it passes."""
        if qty <= 0 or qty < self.min_qty:
            return f"{decimal_text(qty)} {self.base_asset} is below Binance's minimum of {decimal_text(self.min_qty)}"
        if self.max_qty is not None and qty > self.max_qty:
            return (f"{decimal_text(qty)} {self.base_asset} is above Binance's largest market order of "
                    f"{decimal_text(self.max_qty)}")
        if price is not None and qty * price < self.min_notional:
            return (f"{decimal_text(qty * price)} {self.quote_asset} is below Binance's minimum order of "
                    f"{decimal_text(self.min_notional)}")
        if price is not None and self.max_notional is not None and qty * price > self.max_notional:
            return (f"{decimal_text(qty * price)} {self.quote_asset} is above Binance's largest order of "
                    f"{decimal_text(self.max_notional)}")
        return None


class Plan(NamedTuple):
    """What to send for an order: the quantity parameters, or None and why nothing is sent."""

    params: dict | None
    reason: str = ""
    is_failure: bool = False  # nothing is sent although the target is not met: alert


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    """`value` rounded down to a whole multiple of `step` (unchanged when step is 0)."""
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def decimal_text(value: Decimal) -> str:
    """A decimal as Binance takes it: plain digits, no exponent, no trailing zeros."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class BinanceBroker:
    """The broker protocol on Binance; subclasses say how to read the account and size an order."""

    name = "binance"
    market = SPOT
    create_method = query_method = exchange_info_method = ""

    def __init__(self, db: Database, symbol: str, rest: BinanceRest, order_quote: float | None = None,
                 clock: Callable[[], float] = time.time, settle_after_ms: int = UNKNOWN_SETTLE_MS,
                 user_events: queue.Queue | None = None):
        self.db = db
        self.user_events = user_events  # order answers from the user data stream (core.binance.user_stream)
        self.symbol = symbol
        self.rest = rest
        self.order_quote = None if order_quote is None else Decimal(str(order_quote))
        self.clock = clock
        self.settle_after_ms = settle_after_ms
        self.prefix = client_id_prefix(db, int(clock() * 1000))
        self._rules: SymbolRules | None = None
        self._rules_read_ms = 0
        self._position: Position | None = None
        self._alerted: set[tuple[int, str]] = set()  # (order id, status) alerted, so a settling loop alerts once
        self._account_alerts: set[str] = set()  # account problems alerted at start

    # -- the broker protocol (see core.brokers.PaperBroker) -------------------------------------------

    def position(self) -> Position:
        """The account's position, read from Binance; inside a transaction (where no write lock may wait
        on the network) the position read last."""
        if self.db.conn.in_transaction:
            if self._position is None:
                raise BrokerError("the position has not been read from Binance yet")
            return self._position
        return self._read_account().position

    def submit(self, decision_id: int, side: str, now_ms: int, size_share: float = 1.0) -> dict:
        """Record a market order for a decision, before it is sent; a BUY spends `size_share` of what the
        account can spend (SIZE). Call inside a transaction."""
        order = {"decision_id": decision_id, "client_order_id": exchange_client_id(self.prefix, decision_id),
                 "broker": self.name, "symbol": self.symbol, "side": side, "status": "sending",
                 "created_at_ms": now_ms, "size_share": size_share}
        order["id"] = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, created_at_ms, "
            "size_share) VALUES (:decision_id, :client_order_id, :broker, :symbol, :side, :status, :created_at_ms, "
            ":size_share)", order).lastrowid
        return order

    def execute(self, order: dict) -> None:
        """Size a recorded order from the exchange's account and send it once; an unknown outcome is
        never sent again but settled (see the module docstring)."""
        try:
            self._prepare_for(order["side"])
            waiting = self._settle_open(exclude_id=order["id"])
            if waiting:
                self._settle(order, "skipped", f"not sent: the outcome of order {waiting} is still unknown; the "
                             "next decision decides again against Binance's account")
                return
            share = Decimal(repr(order.get("size_share") or 1.0))
            plan = self._plan(order["side"], self._read_account(), self._last_price(), share)
        except BrokerError as exc:
            self._settle(order, "not_sent", f"not sent: {exc}", is_failure=True)
            return
        if plan.params is None:
            self._settle(order, "skipped", plan.reason, is_failure=plan.is_failure)
            return
        self._send(order, plan.params)

    def recover(self) -> None:
        """Settle orders whose outcome is open (a crash, a timeout) from what Binance knows of them, then
        read the position. Runs at start and periodically; never sends an order."""
        try:
            self.prepare()
        except ExchangeUnreachable as exc:
            log.warning("account settings not checked yet: %s", exc)
        except BrokerError as exc:  # Binance answered: the account is not as it must be
            if str(exc) not in self._account_alerts:
                self._account_alerts.add(str(exc))
                with store.transaction(self.db):
                    alerts.queue(self.db, "account", "refused", f"ACCOUNT NOT READY for {self.symbol}: {exc}",
                                 int(self.clock() * 1000), is_failure=True)
        try:
            self._settle_open()
        except BrokerError as exc:
            log.warning("open orders not settled: %s", exc)
        try:
            self._read_account()
        except BrokerError as exc:
            log.warning("position not read: %s", exc)

    def settle(self) -> None:
        """Ask Binance about open orders (cheap when there are none); the worker calls it every few seconds."""
        self._settle_open()

    def prepare(self) -> None:
        """Check (and set) the account's trading settings before an order. Spot: nothing to set."""

    def _prepare_for(self, side: str) -> None:
        """prepare() before an order; BrokerError when the order must not be sent."""
        self.prepare()

    def has_pending(self) -> bool:
        """Exchange orders never wait for the trader's next price."""
        return False

    def fill_pending(self, price: float, time_ms: int) -> list[dict]:
        """Nothing to fill: Binance fills market orders itself."""
        return []

    # -- sending and settling -------------------------------------------------------------------------

    def _send(self, order: dict, params: dict) -> dict | None:
        """Send a recorded order once; returns Binance's answer, or None when it was not (yet) executed."""
        params = {"symbol": self.symbol, "type": "MARKET", "newClientOrderId": order["client_order_id"], **params}
        try:
            answer = self.rest.call(self.create_method, is_order=True, **params)
        except ExchangeRejected as exc:
            if exc.code == FILTER_FAILURE:
                self._rules = None  # the filters changed: read exchangeInfo again for the next order
            self._settle(order, "rejected", str(exc), is_failure=True)
            return None
        except ExchangeUnreachable as exc:
            if not exc.may_have_arrived:
                self._settle(order, "not_sent", f"not sent, Binance could not be reached: {exc}", is_failure=True)
                return None
            reason = f"{exc}; not sent again: the worker asks Binance what became of it"
            self._settle(order, "unknown", reason)
            self._take_stream_updates()
            if self._status(order["id"]) != "unknown":
                return {"status": self._status(order["id"]).upper()}
            try:
                answer = self._settle_unknown(order)
            except BrokerError as query_exc:
                answer, reason = None, f"{reason} (asking failed too: {query_exc})"
            if answer is None and self._status(order["id"]) == "unknown":
                self._settle(order, "unknown", reason, is_failure=True)  # still unknown: alert
            return answer
        self._record(order, answer)
        return answer

    def _settle_open(self, exclude_id: int | None = None) -> str | None:
        """Settle every open order; returns the client id of one whose outcome is still unknown, if any.
        An order still unknown after asking is alerted (once)."""
        rows = self.db.execute(
            f"SELECT id, client_order_id, side, status, created_at_ms, error FROM orders WHERE broker = ? "
            f"AND symbol = ? AND status IN ({', '.join('?' * len(OPEN_STATUSES))}) AND id != ? ORDER BY id",
            [self.name, self.symbol, *OPEN_STATUSES, -1 if exclude_id is None else exclude_id]).fetchall()
        if rows:
            self._take_stream_updates()
        waiting = None
        for order_id, client_id, side, status, created_at_ms, error in rows:
            if self._status(order_id) not in OPEN_STATUSES:
                continue  # settled by the user data stream just now
            order = {"id": order_id, "client_order_id": client_id, "side": side, "created_at_ms": created_at_ms}
            reason = error or f"Binance has not reported it {status} yet"
            if status == "sending":  # a crash between recording and the answer: it may have been sent
                reason = "the worker stopped while sending it; not sent again: the worker asks Binance about it"
                self._settle(order, "unknown", reason)
            try:
                answer = self._settle_unknown(order)
            except BrokerError as exc:
                answer = None
                log.warning("order %s not settled yet, asking Binance failed: %s", client_id, exc)
            if answer is None and self._status(order_id) in OPEN_STATUSES:
                self._settle(order, "unknown", reason, is_failure=True)
                waiting = waiting or client_id
        return waiting

    def _take_stream_updates(self) -> None:
        """Settle open orders from the user data stream's order updates: they come even while order queries
        lag. An update that is not final yet gives the order's exchange id, which ties trades to it."""
        while self.user_events is not None:
            try:
                answer = self.user_events.get_nowait()
            except queue.Empty:
                return
            row = self.db.execute(
                f"SELECT id, client_order_id, side FROM orders WHERE broker = ? AND client_order_id = ? AND status "
                f"IN ({', '.join('?' * len(OPEN_STATUSES))})",
                [self.name, answer["clientOrderId"], *OPEN_STATUSES]).fetchone()
            if row is None:
                continue  # settled already (its REST answer came), or not ours
            if answer["status"] in FINAL_ORDER_STATUSES:
                if answer["status"] == "EXPIRED_IN_MATCH":  # expired by self-trade prevention: expired
                    answer = {**answer, "status": "EXPIRED"}
                log.warning("order %s settled by the user data stream: %s", row[1], answer["status"])
                self._record({"id": row[0], "client_order_id": row[1], "side": row[2]}, answer)
            elif answer.get("orderId") is not None:
                with store.transaction(self.db):
                    self.db.execute("UPDATE orders SET exchange_order_id = ? WHERE id = ?",
                                    [str(answer["orderId"]), row[0]])

    def _status(self, order_id: int) -> str:
        return self.db.execute("SELECT status FROM orders WHERE id = ?", [order_id]).fetchone()[0]

    def _settle_unknown(self, order: dict) -> dict | None:
        """Binance's answer for an order of unknown outcome, from the order query by its client id; None
        while Binance shows no trace of it (then, after `settle_after_ms`, it is given up as not_found)."""
        answer = self._query(origClientOrderId=order["client_order_id"])
        if answer is None:
            answer = self._from_trades(order)
        if answer is not None:
            log.warning("order %s settled: %s", order["client_order_id"], answer.get("status"))
            self._record(order, answer)
            return answer
        now_ms = int(self.clock() * 1000)
        if now_ms - order["created_at_ms"] >= self.settle_after_ms:
            self._settle(order, "not_found", f"Binance shows no trace of it {(now_ms - order['created_at_ms']) // 1000}"
                         " s after it was sent; the next decision decides again "
                         "against Binance's account", is_failure=True)
        return None

    def _from_trades(self, order: dict) -> dict | None:
        """What the account's trades prove about an order the order query denies; None (futures: the user
        data stream and the order query settle it)."""
        return None

    def _query(self, **by) -> dict | None:
        """The order query; None for Binance's -2013 (which may only mean its order database lags)."""
        try:
            return self.rest.call(self.query_method, symbol=self.symbol, **by)
        except ExchangeRejected as exc:
            if exc.code != ORDER_DOES_NOT_EXIST:
                raise
            return None

    def _record(self, order: dict, answer: dict) -> None:
        """Store Binance's answer for an order (fill or otherwise) with the position it left."""
        fill = self._fill_of(answer)
        try:
            position = self._read_account().position
        except BrokerError as exc:
            position = None
            log.warning("position not read after order %s: %s", order["client_order_id"], exc)
        status = answer["status"].lower()
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            self.db.execute(
                "UPDATE orders SET status = ?, qty = ?, price = ?, quote = ?, fee_quote = ?, exchange_order_id = ?, "
                "filled_at_ms = ?, error = NULL WHERE id = ?",
                [status, fill["qty"], fill["price"], fill["quote"], fill["fee_quote"], str(answer.get("orderId")),
                 fill["time_ms"] if fill["qty"] else None, order["id"]])
            if status in ("expired", "canceled", "rejected") and not fill["qty"]:
                self._alert(order, status, "Binance did not fill the market order", now_ms)
            elif (order["id"], "unknown") in self._alerted:
                alerts.queue(self.db, "orders", status, f"ORDER SETTLED: {order['side']} {self.symbol} order "
                             f"{order['client_order_id']} is {status} at Binance", now_ms, is_failure=False)
            if position is not None:
                brokers.save_position(self.db, position, now_ms)

    def _settle(self, order: dict, status: str, reason: str, is_failure: bool = False) -> None:
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            self.db.execute("UPDATE orders SET status = ?, error = ? WHERE id = ?", [status, reason, order["id"]])
            if is_failure:
                self._alert(order, status, reason, now_ms)
        if not is_failure:
            log.info("order %s %s: %s", order["client_order_id"], status, reason)

    def _alert(self, order: dict, status: str, reason: str, now_ms: int) -> None:
        if (order["id"], status) in self._alerted:
            return  # still being settled: one alert is enough
        self._alerted.add((order["id"], status))
        alerts.queue(self.db, "orders", status, f"ORDER FAILURE: {order['side']} {self.symbol} order "
                     f"{order['client_order_id']} is {status}: {reason}", now_ms, is_failure=True)

    # -- common ---------------------------------------------------------------------------------------

    @property
    def rules(self) -> SymbolRules:
        """The symbol's filters from exchangeInfo, read lazily (starting needs no network), again daily
        and after Binance refused an order for a filter."""
        now_ms = int(self.clock() * 1000)
        if self._rules is None or now_ms - self._rules_read_ms >= RULES_MAX_AGE_MS:
            info = self.rest.call(self.exchange_info_method)
            self.rest.set_weight_limit(info)
            for symbol in info.get("symbols", ()):
                if symbol["symbol"] == self.symbol:
                    self._rules, self._rules_read_ms = SymbolRules.from_symbol(symbol, self.market), now_ms
                    break
            else:
                raise BrokerError(f"Binance does not list {self.symbol} for {self.market} trading")
        return self._rules

    def _last_price(self) -> Decimal | None:
        """The newest candle's close: the price that sizes orders and tells dust from a position."""
        row = self.db.execute("SELECT close FROM candles WHERE symbol = ? ORDER BY open_time_ms DESC LIMIT 1",
                              [self.symbol]).fetchone()
        return Decimal(repr(row[0])) if row else None

    # -- per market -----------------------------------------------------------------------------------

    def _read_account(self):
        raise NotImplementedError

    def _plan(self, side: str, account, price: Decimal | None, share: Decimal = Decimal(1)) -> Plan:
        raise NotImplementedError

    def _fill_of(self, answer: dict) -> dict:
        raise NotImplementedError


class SpotAccount(NamedTuple):
    position: Position
    base_free: Decimal
    quote_free: Decimal
    base_total: Decimal = ZERO  # free and locked


BASE_BEFORE_KEY = "binance_spot_base_before"  # meta: the base balance just before the last order was sent
SEND_TIME_SLACK_MS = 5_000  # trades are looked for from this long before the order was recorded (clock offset)
BALANCE_TOLERANCE = Decimal("0.00000001")  # per trade: Binance keeps balances to 8 decimals


class BinanceSpotBroker(BinanceBroker):
    """Spot: long is a base-asset balance above dust; BUY spends the free quote balance (at most
    OMNIWISE_ORDER_QUOTE), SELL sells the free base balance, both within Binance's filters."""

    name = "binance-spot"
    market = SPOT
    create_method, query_method = "create_order", "get_order"
    exchange_info_method = "get_exchange_info"
    _account: SpotAccount | None = None  # the account read last

    def _read_account(self) -> SpotAccount:
        rules = self.rules
        balances = {b["asset"]: b for b in self.rest.call("get_account")["balances"]}
        base = balances.get(rules.base_asset, {"free": "0", "locked": "0"})
        base_free = Decimal(base["free"])
        quote_free = Decimal(balances.get(rules.quote_asset, {"free": "0"})["free"])
        if rules.is_tradable(rules.floor_qty(base_free), self._last_price()):
            position = Position("long", float(base_free + Decimal(base["locked"])), self._entry_price())
        else:
            position = Position("flat")
        self._position = position
        self._account = SpotAccount(position, base_free, quote_free, base_free + Decimal(base["locked"]))
        return self._account

    def _send(self, order: dict, params: dict) -> dict | None:
        """Send a recorded order, keeping the base balance it was planned from: if the order query later
        denies the order, the balance's change corroborates its trades (see _from_trades)."""
        account = self._account
        if account is not None:
            with store.transaction(self.db):
                store.set_meta(self.db, BASE_BEFORE_KEY, json.dumps(
                    {"client_order_id": order["client_order_id"], "base_total": str(account.base_total)}),
                    int(self.clock() * 1000))
        return super()._send(order, params)

    def _from_trades(self, order: dict) -> dict | None:
        """The order's fill from the account's trade list (GET /api/v3/myTrades), for an order the order
        query still denies (-2013). Trade rows carry Binance's order id, not the client id, so they are
        taken only when they are provably this order's:
        - by the order id the user data stream gave for its client id (a NEW executionReport); or
        - when exactly one order of this side, not one of ours already recorded, traded since the order was
          sent, AND the base balance changed by exactly its trades (less fees in the base asset) since
          just before it was sent.
        None otherwise: the order stays unknown. Never sends anything."""
        exchange_id = self.db.execute("SELECT exchange_order_id FROM orders WHERE id = ?", [order["id"]]).fetchone()
        if exchange_id and exchange_id[0]:
            trades = self.rest.call("get_my_trades", symbol=self.symbol, orderId=int(exchange_id[0]))
            return self._answer_of_trades(trades) if trades else None
        trades = self.rest.call("get_my_trades", symbol=self.symbol, limit=1000,
                                startTime=order["created_at_ms"] - SEND_TIME_SLACK_MS)
        accounted = {row[0] for row in self.db.execute(
            "SELECT exchange_order_id FROM orders WHERE broker = ? AND symbol = ? AND exchange_order_id IS NOT NULL",
            [self.name, self.symbol])}
        by_order: dict[str, list[dict]] = {}
        for trade in trades:
            if trade["isBuyer"] == (order["side"] == "BUY") and str(trade["orderId"]) not in accounted:
                by_order.setdefault(str(trade["orderId"]), []).append(trade)
        if len(by_order) != 1:
            if by_order:
                log.warning("order %s: %d orders traded since it was sent; the trades do not tell which is ours",
                            order["client_order_id"], len(by_order))
            return None
        (candidate,) = by_order.values()
        before = json.loads(store.get_meta(self.db, BASE_BEFORE_KEY) or "{}")
        if before.get("client_order_id") != order["client_order_id"]:
            return None  # no balance from just before it was sent (a crash while sending): no corroboration
        qty = sum((Decimal(t["qty"]) for t in candidate), ZERO)
        base_fee = sum((Decimal(t["commission"]) for t in candidate if t["commissionAsset"] == self.rules.base_asset),
                       ZERO)
        expected = (qty if order["side"] == "BUY" else -qty) - base_fee
        change = self._read_account().base_total - Decimal(before["base_total"])
        if abs(change - expected) > BALANCE_TOLERANCE * len(candidate):
            log.warning("order %s: the trades of order %s (%s %s) do not match the base balance's change (%s)",
                        order["client_order_id"], candidate[0]["orderId"], decimal_text(expected),
                        self.rules.base_asset, decimal_text(change))
            return None
        return self._answer_of_trades(candidate)

    def _answer_of_trades(self, trades: list[dict]) -> dict:
        """Trades of one order, shaped as the order query's answer (FILLED: what traded is what it did)."""
        return {"orderId": trades[0]["orderId"], "status": "FILLED",
                "executedQty": decimal_text(sum((Decimal(t["qty"]) for t in trades), ZERO)),
                "cummulativeQuoteQty": decimal_text(sum((Decimal(t["quoteQty"]) for t in trades), ZERO)),
                "transactTime": max(t["time"] for t in trades),
                "fills": [{"price": t["price"], "qty": t["qty"], "commission": t["commission"],
                           "commissionAsset": t["commissionAsset"]} for t in trades]}

    def _average_price(self) -> Decimal | None:
        """The price Binance checks a market order's notional at: the average of `avgPriceMins` minutes."""
        if not self.rules.avg_price_mins:
            return self._last_price()
        return Decimal(self.rest.call("get_avg_price", symbol=self.symbol)["price"])

    def _plan(self, side: str, account: SpotAccount, price: Decimal | None, share: Decimal = Decimal(1)) -> Plan:
        rules = self.rules
        if side == "BUY":
            if account.position.side == "long":
                return Plan(None, "already long")
            spend = account.quote_free * share  # SIZE: that share of the free quote balance
            if self.order_quote is not None:
                spend = min(spend, self.order_quote)
            average = self._average_price()
            if rules.max_notional is not None:
                spend = min(spend, rules.max_notional)
            if rules.max_qty is not None and average:  # stay inside the largest market order, with 1 % room
                spend = min(spend, rules.max_qty * average * Decimal("0.99"))
            spend = floor_to(spend, rules.quote_step)
            if spend <= 0 or spend < rules.min_notional:
                return Plan(None, f"{decimal_text(spend)} {rules.quote_asset} to spend is below Binance's minimum "
                                  f"order of {decimal_text(rules.min_notional)}", is_failure=True)
            return Plan({"side": "BUY", "quoteOrderQty": decimal_text(spend), "newOrderRespType": "FULL"})
        qty = rules.floor_qty(account.base_free)
        if not rules.is_tradable(qty, price):
            return Plan(None, "already flat: the base balance is dust")
        problem = rules.problem(qty, self._average_price())
        if problem is not None:
            return Plan(None, f"cannot sell in one market order: {problem}; sell it by hand", is_failure=True)
        return Plan({"side": "SELL", "quantity": decimal_text(qty), "newOrderRespType": "FULL"})

    def _fill_of(self, answer: dict) -> dict:
        qty = Decimal(answer.get("executedQty", "0"))
        quote = Decimal(answer.get("cummulativeQuoteQty", "0"))
        price = quote / qty if qty else None
        fee: Decimal | None = ZERO
        for fill in answer.get("fills", ()):
            commission, asset = Decimal(fill["commission"]), fill["commissionAsset"]
            if asset == self.rules.quote_asset:
                fee += commission
            elif asset == self.rules.base_asset:
                fee += commission * Decimal(fill["price"])
            elif commission:  # paid in another asset (BNB): at its price in the quote asset now
                asset_price = self._price_in_quote(asset)
                fee = None if fee is None or asset_price is None else fee + commission * asset_price
        time_ms = answer.get("transactTime") or answer.get("updateTime") or answer.get("time")
        return {"qty": float(qty), "quote": float(quote), "price": float(price) if price else None,
                "fee_quote": float(fee) if answer.get("fills") and fee is not None else None, "time_ms": time_ms}

    def _price_in_quote(self, asset: str) -> Decimal | None:
        """The price of `asset` in the quote asset (for fees paid in BNB); None when Binance has no such market."""
        try:
            return Decimal(self.rest.call("get_symbol_ticker", symbol=f"{asset}{self.rules.quote_asset}")["price"])
        except BrokerError as exc:
            log.warning("a fee in %s is not converted to %s: %s", asset, self.rules.quote_asset, exc)
            return None

    def _entry_price(self) -> float | None:
        row = self.db.execute("SELECT price FROM orders WHERE broker = ? AND symbol = ? AND side = 'BUY' "
                              "AND qty > 0 ORDER BY id DESC LIMIT 1", [self.name, self.symbol]).fetchone()
        return row[0] if row else None


class FuturesAccount(NamedTuple):
    position: Position
    amount: Decimal  # signed position amount: negative is short
    available: Decimal  # margin asset available for new positions


MARGIN_TYPES = {"cross": "CROSSED", "isolated": "ISOLATED"}
STOP_KEY = "binance_futures_stop"  # meta: the STOP_MARKET kept on Binance, as JSON (client id, level, reason)
STOP_MOVE_SHARE = Decimal("0.001")  # the stop on Binance is moved once the level differs by 0.1 % or more
UNKNOWN_ORDER_SENT = -2011  # a cancel of an order that is no longer open (here: the stop was triggered)
WOULD_IMMEDIATELY_TRIGGER = -2021
STOP_GONE = ("CANCELED", "EXPIRED", "REJECTED")  # algoStatus of a stop that closed nothing


class BinanceFuturesBroker(BinanceBroker):
    """USDⓈ-M futures in one-way mode, with the margin type and leverage of the settings set on the symbol
    and verified before the first order: BUY opens a long worth the available margin times the leverage
    (at most OMNIWISE_ORDER_QUOTE of margin), after closing any short with a reduce-only order of its own;
    SELL closes the position with a reduce-only order."""

    name = "binance-futures"
    market = FUTURES
    create_method, query_method = "futures_create_order", "futures_get_order"
    exchange_info_method = "futures_exchange_info"

    def __init__(self, db: Database, symbol: str, rest: BinanceRest, order_quote: float | None = None,
                 leverage: int = 1, margin: str = "cross", **kwargs):
        super().__init__(db, symbol, rest, order_quote, **kwargs)
        self.leverage = leverage
        self.margin_type = MARGIN_TYPES[margin]
        self.is_prepared = self.is_hedge_mode = False

    def _prepare_for(self, side: str) -> None:
        """Hedge mode refuses every order; wrong margin or leverage refuses opening a long, never a close."""
        try:
            self.prepare()
        except BrokerError:
            if side == "BUY" or self.is_hedge_mode:
                raise

    def prepare(self) -> None:
        """Refuse hedge mode; set the symbol's margin type and leverage and read them back (once)."""
        if self.is_prepared:
            return
        self.is_hedge_mode = bool(self.rest.call("futures_get_position_mode").get("dualSidePosition"))
        if self.is_hedge_mode:
            raise BrokerError("the futures account is in hedge mode (dual side positions); Omniwise trades one-way "
                              "mode only: switch Position Mode to One-way in Binance's futures preferences")
        try:
            self.rest.call("futures_change_margin_type", symbol=self.symbol, marginType=self.margin_type)
        except ExchangeRejected as exc:
            if exc.code != NO_NEED_TO_CHANGE_MARGIN_TYPE:
                raise BrokerError(f"margin type {self.margin_type} could not be set on {self.symbol}: {exc}") from None
        self.rest.call("futures_change_leverage", symbol=self.symbol, leverage=self.leverage)
        config = {row["symbol"]: row for row in self.rest.call("futures_symbol_config", symbol=self.symbol)}
        actual = config.get(self.symbol, {})
        if (actual.get("marginType"), int(actual.get("leverage", 0))) != (self.margin_type, self.leverage):
            raise BrokerError(f"{self.symbol} is at {actual.get('marginType')} margin, {actual.get('leverage')}x "
                              f"leverage after setting {self.margin_type}, {self.leverage}x")
        self.is_prepared = True
        log.info("futures account: one-way mode, %s %s margin, %dx leverage", self.symbol, self.margin_type,
                 self.leverage)

    def execute(self, order: dict) -> None:
        """As BinanceBroker.execute; a BUY while short first closes the short with an order of its own; a SELL
        first cancels the stop kept on Binance, and when that stop has already closed the position, its fill
        is this order's (no second order is sent)."""
        if order["side"] == "SELL" and self._stored_stop() is not None:
            try:
                fill = None if self._cancel_stop(self._stored_stop()) else self.stop_exit()
            except BrokerError as exc:
                fill = None
                log.warning("the stop on Binance was not cancelled before selling: %s", exc)
            if fill is not None:
                self._take_stop_fill(order, fill)
                return
        if order["side"] == "BUY":
            try:
                self._prepare_for("SELL")  # closing the short needs one-way mode only
                account = self._read_account()
            except BrokerError as exc:
                self._settle(order, "not_sent", f"not sent: {exc}", is_failure=True)
                return
            if account.amount < 0 and not self._close_short(order, account):
                return
        super().execute(order)

    def _close_short(self, order: dict, account: FuturesAccount) -> bool:
        """Buy the short back (reduce-only) as its own decision and order; True once it is filled."""
        now_ms = int(self.clock() * 1000)
        decision = self.db.execute("SELECT candle_open_time_ms, rule_text, strategy_version FROM decisions "
                                   "WHERE id = ?", [order["decision_id"]]).fetchone()
        with store.transaction(self.db):
            cursor = self.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_text, "
                "strategy_version, reason, created_at_ms) VALUES (?, ?, 'BUY', 'flat', 'short', ?, ?, ?, ?)",
                [self.symbol, decision[0], decision[1], decision[2], f"close-short-{order['decision_id']}", now_ms])
            close = self.submit(cursor.lastrowid, "BUY", now_ms)
        close["created_at_ms"] = now_ms
        max_qty = self.rules.max_qty
        problem = self.rules.problem(-account.amount if max_qty is None else min(-account.amount, max_qty), None)
        if problem is not None:
            self._settle(close, "skipped", f"the short cannot be closed in one market order: {problem}",
                         is_failure=True)
            self._settle(order, "not_sent", "not sent: the short could not be closed first", is_failure=True)
            return False
        answer = self._send(close, {"side": "BUY", "quantity": decimal_text(-account.amount), "reduceOnly": "true",
                                    "newOrderRespType": "RESULT"})
        if answer is None or answer.get("status") != "FILLED":
            self._settle(order, "not_sent", f"not sent: the short was not closed first (order "
                         f"{close['client_order_id']})", is_failure=True)
            return False
        return True

    def _send(self, order: dict, params: dict) -> dict | None:
        """Send a recorded order; a reduce-only close above Binance's largest market order (MARKET_LOT_SIZE
        maxQty) goes in parts, each an order of its own decision (so its own client id, sent once), the
        next only after the one before filled."""
        qty, max_qty = Decimal(params.get("quantity", "0")), self.rules.max_qty
        if params.get("reduceOnly") != "true" or max_qty is None or qty <= max_qty:
            return super()._send(order, params)
        part_max = self.rules.floor_qty(max_qty)
        parts = [part_max] * int(qty // part_max) + ([qty % part_max] if qty % part_max else [])
        answer = super()._send(order, {**params, "quantity": decimal_text(parts[0])})
        for number, part in enumerate(parts[1:], start=2):
            if answer is None or answer.get("status") != "FILLED":
                left = decimal_text(sum(parts[number - 1:], ZERO))
                message = (f"ORDER FAILURE: closing {self.symbol} stopped, part {number - 1} of {len(parts)} (from "
                           f"order {order['client_order_id']}) did not fill; {left} {self.rules.base_asset} in the "
                           "parts after it not sent: the next decision decides again")
                with store.transaction(self.db):
                    alerts.queue(self.db, "orders", "partial_close", message, int(self.clock() * 1000),
                                 is_failure=True)
                return answer
            answer = super()._send(self._part_order(order, number), {**params, "quantity": decimal_text(part)})
        return answer

    def _part_order(self, first: dict, number: int) -> dict:
        """Record part `number` of a close as a decision of its own (`<reason>:part<number>`) and its order."""
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            decision = self.db.execute("SELECT symbol, candle_open_time_ms, action, target, position_before, rule_text, "
                                       "strategy_version, reason FROM decisions WHERE id = ?",
                                       [first["decision_id"]]).fetchone()
            decision_id = self.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_text, "
                "strategy_version, reason, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [*decision[:7], f"{decision[7]}:part{number}", now_ms]).lastrowid
            return self.submit(decision_id, first["side"], now_ms)

    # -- the stop kept on Binance (DESIGN.md "Risk statements": the stop holds while the worker is down) --

    def keep_stop(self, level: float | None, reason: str | None) -> None:
        """Keep one Close-All STOP_MARKET (reduce-only by nature) on Binance at the effective stop `level`,
        placed, moved once the level differs by 0.1 % or more, cancelled with `level` None (flat, or no stop
        statement). Never inside a transaction; BrokerError when Binance could not be asked."""
        stop = self._stored_stop()
        if level is None or level != level or level <= 0:
            if stop is not None:
                self._cancel_stop(stop)
            return
        trigger = floor_to(Decimal(repr(level)), self.rules.tick)
        if stop is not None:
            kept = Decimal(stop["trigger_price"])
            if abs(Decimal(repr(level)) - kept) < kept * STOP_MOVE_SHARE:
                if stop["reason"] != reason:  # the other statement now sets the level: its name ends the trade
                    self._store_stop({**stop, "reason": reason})
                return
            if not self._cancel_stop(stop):
                return  # it was triggered: the trader records the exit from stop_exit()
        self._place_stop(trigger, reason)

    def stop_exit(self) -> dict | None:
        """The fill of the kept stop once Binance triggered it (client_order_id, exchange_order_id, reason, qty,
        price, quote, fee_quote, time_ms), given once; None while it waits, or when it closed nothing."""
        stop = self._stored_stop()
        if stop is None:
            return None
        try:
            algo = self.rest.call("futures_get_algo_order", symbol=self.symbol, clientAlgoId=stop["client_id"])
        except ExchangeRejected as exc:
            if exc.code == ORDER_DOES_NOT_EXIST and int(self.clock() * 1000) - stop["placed_at_ms"] >= \
                    self.settle_after_ms:
                self._store_stop(None)  # its placing never reached Binance
            return None
        if algo["algoStatus"] in STOP_GONE:
            self._store_stop(None)
            return None
        if not algo.get("actualOrderId"):
            return None  # NEW, or being triggered
        answer = self._query(orderId=algo["actualOrderId"])
        if answer is None or answer["status"] in ("NEW", "PARTIALLY_FILLED"):
            return None  # the order query lags, or the order is still executing: asked again later
        self._store_stop(None)
        fill = self._fill_of(answer)
        if not fill["qty"]:
            return None
        try:
            self._read_account()
        except BrokerError as exc:
            log.warning("position not read after the stop on Binance filled: %s", exc)
        log.warning("the stop kept on Binance (%s) closed the position at %s", stop["client_id"], fill["price"])
        return {**fill, "client_order_id": stop["client_id"], "exchange_order_id": str(answer.get("orderId")),
                "reason": stop["reason"]}

    def record_stop_fill(self, decision_id: int, fill: dict, now_ms: int) -> dict:
        """Record the stop's fill as the order of the exit decision `decision_id`. Call inside a transaction."""
        order = {"decision_id": decision_id, "client_order_id": fill["client_order_id"], "broker": self.name,
                 "symbol": self.symbol, "side": "SELL", "status": "filled", "created_at_ms": now_ms}
        order["id"] = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, qty, price, quote, "
            "fee_quote, exchange_order_id, created_at_ms, filled_at_ms) VALUES (?, ?, ?, ?, 'SELL', 'filled', ?, ?, "
            "?, ?, ?, ?, ?)", [decision_id, fill["client_order_id"], self.name, self.symbol, fill["qty"], fill["price"],
                               fill["quote"], fill["fee_quote"], fill["exchange_order_id"], now_ms,
                               fill["time_ms"]]).lastrowid
        if self._position is not None:
            brokers.save_position(self.db, self._position, now_ms)
        return order

    def _take_stop_fill(self, order: dict, fill: dict) -> None:
        """A SELL found the position already closed by the kept stop: the stop's fill is its fill."""
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            self.db.execute("UPDATE orders SET status = 'filled', qty = ?, price = ?, quote = ?, fee_quote = ?, "
                            "exchange_order_id = ?, filled_at_ms = ?, error = NULL WHERE id = ?",
                            [fill["qty"], fill["price"], fill["quote"], fill["fee_quote"], fill["exchange_order_id"],
                             fill["time_ms"], order["id"]])
            if self._position is not None:
                brokers.save_position(self.db, self._position, now_ms)
        log.warning("order %s not sent: the stop kept on Binance (%s) had already closed the position",
                    order["client_order_id"], fill["client_order_id"])

    def _place_stop(self, trigger: Decimal, reason: str | None) -> None:
        now_ms = int(self.clock() * 1000)
        stop = {"client_id": f"{self.prefix}-s{now_ms}", "trigger_price": decimal_text(trigger), "reason": reason,
                "placed_at_ms": now_ms}
        self._store_stop(stop)  # before it is sent: a lost answer still leaves the id to ask Binance about
        try:
            # fapi "New Algo Order (TRADE)": conditional orders live in the Algo Service since 2025-12-09.
            self.rest.call("futures_create_algo_order", is_order=True, algoType="CONDITIONAL", symbol=self.symbol,
                           side="SELL", type="STOP_MARKET", triggerPrice=stop["trigger_price"], closePosition="true",
                           workingType="CONTRACT_PRICE", clientAlgoId=stop["client_id"])
        except ExchangeRejected as exc:
            self._store_stop(None)
            if exc.code == WOULD_IMMEDIATELY_TRIGGER:
                log.info("no stop placed on Binance at %s: the price is already there (the worker exits on the "
                         "next trade)", stop["trigger_price"])
                return
            message = f"STOP NOT PLACED on Binance for {self.symbol} at {stop['trigger_price']}: {exc}"
            if message not in self._account_alerts:
                self._account_alerts.add(message)
                with store.transaction(self.db):
                    alerts.queue(self.db, "orders", "stop_refused", message, now_ms, is_failure=True)
            return
        except ExchangeUnreachable as exc:
            log.warning("the stop %s may or may not be on Binance (%s): asked about before it is moved",
                        stop["client_id"], exc)
            return
        log.info("stop kept on Binance: STOP_MARKET %s at %s (%s)", stop["client_id"], stop["trigger_price"], reason)

    def _cancel_stop(self, stop: dict) -> bool:
        """Cancel the kept stop; True once it is gone, False when Binance had triggered it (kept for stop_exit)."""
        try:
            self.rest.call("futures_cancel_algo_order", symbol=self.symbol, clientAlgoId=stop["client_id"])
        except ExchangeRejected as exc:
            if exc.code not in (UNKNOWN_ORDER_SENT, ORDER_DOES_NOT_EXIST):
                raise
            try:
                algo = self.rest.call("futures_get_algo_order", symbol=self.symbol, clientAlgoId=stop["client_id"])
            except ExchangeRejected:
                algo = {"algoStatus": "CANCELED"}  # never reached Binance
            if algo["algoStatus"] not in STOP_GONE:
                return False
        self._store_stop(None)
        return True

    def _stored_stop(self) -> dict | None:
        value = store.get_meta(self.db, STOP_KEY)
        return json.loads(value) if value else None

    def _store_stop(self, stop: dict | None) -> None:
        with store.transaction(self.db):
            store.set_meta(self.db, STOP_KEY, json.dumps(stop) if stop else "", int(self.clock() * 1000))

    def _read_account(self) -> FuturesAccount:
        rules = self.rules
        amount, entry = ZERO, None
        for row in self.rest.call("futures_position_information", symbol=self.symbol):
            if row["symbol"] != self.symbol:
                continue
            if row.get("positionSide", "BOTH") != "BOTH":
                raise BrokerError("the futures account reports hedge-mode positions (LONG/SHORT): Omniwise trades "
                                  "one-way mode only")
            amount, entry = Decimal(row["positionAmt"]), float(row["entryPrice"])
        available = ZERO
        for row in self.rest.call("futures_account_balance"):
            if row["asset"] == rules.quote_asset:
                available = Decimal(row["availableBalance"])
        if amount > 0:
            position = Position("long", float(amount), entry)
        elif amount < 0:
            position = Position("short", float(-amount), entry)
        else:
            position = Position("flat")
        self._position = position
        return FuturesAccount(position, amount, available)

    def _plan(self, side: str, account: FuturesAccount, price: Decimal | None, share: Decimal = Decimal(1)) -> Plan:
        rules = self.rules
        if side == "SELL":
            if account.amount == 0:
                return Plan(None, "already flat")
            first_part = abs(account.amount) if rules.max_qty is None else min(abs(account.amount), rules.max_qty)
            problem = rules.problem(first_part, None)  # a close above the market maximum is sent in parts
            if problem is not None:
                return Plan(None, f"cannot close in one market order: {problem}; close it by hand", is_failure=True)
            close_side = "SELL" if account.amount > 0 else "BUY"
            return Plan({"side": close_side, "quantity": decimal_text(abs(account.amount)), "reduceOnly": "true",
                         "newOrderRespType": "RESULT"})
        if account.amount > 0:
            return Plan(None, "already long")
        if account.amount < 0:
            return Plan(None, "still short after closing it", is_failure=True)
        if price is None:
            return Plan(None, "no price yet to size the order", is_failure=True)
        margin = account.available * min(share, FUTURES_MARGIN_USE)  # SIZE: that share of the available margin
        if self.order_quote is not None:
            margin = min(margin, self.order_quote)
        open_qty = rules.floor_qty(margin * self.leverage / price)
        if rules.max_qty is not None:
            open_qty = min(open_qty, rules.max_qty)
        if not rules.is_tradable(open_qty, price):
            return Plan(None, f"{decimal_text(margin)} {rules.quote_asset} of margin at {self.leverage}x buys "
                              f"{decimal_text(open_qty)} {rules.base_asset}, below Binance's minimum", is_failure=True)
        return Plan({"side": "BUY", "quantity": decimal_text(open_qty), "newOrderRespType": "RESULT"})

    def _fill_of(self, answer: dict) -> dict:
        qty = Decimal(answer.get("executedQty", "0"))
        quote = Decimal(answer.get("cumQuote", "0"))
        return {"qty": float(qty), "quote": float(quote), "price": float(quote / qty) if qty else None,
                "fee_quote": None, "time_ms": answer.get("updateTime") or answer.get("time")}

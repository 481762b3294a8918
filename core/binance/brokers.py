"""Binance brokers, spot and USDⓈ-M futures: market orders that can never be sent twice for a decision.

The trader records each order (status `sending`, client id from the decision) in its transaction;
`execute` sends it after the commit. When the outcome is unknown (timeout, lost answer, 5xx), the
broker asks Binance for the client id, and sends again only once Binance can no longer execute the
first request: a signed request is void `recvWindow` after its timestamp, and the timestamp is no
later than the moment the failure came back. `recover` settles what a crash left open the same way,
but never sends: after a restart the next decision decides again.

Order statuses: sending, unknown (being settled), filled, partially_filled, new, expired, canceled,
rejected (Binance refused it), skipped (nothing to do, or below Binance's minimum), not_sent (never
reached Binance, or Binance confirmed it has no such order).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import NamedTuple

from sqlite_utils import Database

from core import alerts, brokers, store
from core.binance.rest import FUTURES, ORDER_DOES_NOT_EXIST, SPOT, BinanceRest, ExchangeRejected, ExchangeUnreachable
from core.brokers import BrokerError, Position

log = logging.getLogger(__name__)

MAX_SENDS = 3  # sends of one order, each after Binance confirmed the previous one does not exist
VOID_MARGIN_MS = 1000  # added to recvWindow before an unanswered request counts as void
FUTURES_MARGIN_USE = Decimal("0.98")  # of the available margin: the rest absorbs fees and the price moving
OPEN_STATUSES = ("sending", "unknown", "new", "partially_filled")
ZERO = Decimal(0)


@dataclasses.dataclass(frozen=True)
class SymbolRules:
    """What exchangeInfo says about trading one symbol with market orders."""

    base_asset: str
    quote_asset: str  # the spot quote asset; the margin asset for futures
    step: Decimal  # quantities are whole multiples of this
    min_qty: Decimal
    min_notional: Decimal  # quantity times price must reach this
    quote_step: Decimal  # smallest unit of a quote amount (spot quoteOrderQty)

    @classmethod
    def from_symbol(cls, info: dict, market: str) -> "SymbolRules":
        """Read a symbol of exchangeInfo: LOT_SIZE (MARKET_LOT_SIZE where set), NOTIONAL or MIN_NOTIONAL."""
        filters = {f["filterType"]: f for f in info.get("filters", ())}
        lot = filters.get("LOT_SIZE", {})
        market_lot = filters.get("MARKET_LOT_SIZE", {})
        step = Decimal(market_lot.get("stepSize", "0")) or Decimal(lot.get("stepSize", "0"))
        min_qty = max(Decimal(market_lot.get("minQty", "0")), Decimal(lot.get("minQty", "0")))
        notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
        min_notional = Decimal(notional.get("minNotional", notional.get("notional", "0")))
        if notional.get("applyMinToMarket", notional.get("applyToMarket", True)) is False:
            min_notional = ZERO
        precision = info.get("quoteAssetPrecision", info.get("quotePrecision", 8))
        quote = info["quoteAsset"] if market == SPOT else info.get("marginAsset", info["quoteAsset"])
        return cls(info["baseAsset"], quote, step, min_qty, min_notional, Decimal(1).scaleb(-int(precision)))

    def floor_qty(self, qty: Decimal) -> Decimal:
        """`qty` rounded down to the step size."""
        return floor_to(qty, self.step)

    def is_tradable(self, qty: Decimal, price: Decimal | None) -> bool:
        """Whether a market order of `qty` passes the quantity filters (and the notional one, given a price)."""
        return qty > 0 and qty >= self.min_qty and (price is None or qty * price >= self.min_notional)


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
    create_method = query_method = ""

    def __init__(self, db: Database, symbol: str, rest: BinanceRest, order_quote: float | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 void_margin_ms: int = VOID_MARGIN_MS):
        self.db = db
        self.symbol = symbol
        self.rest = rest
        self.order_quote = None if order_quote is None else Decimal(str(order_quote))
        self.clock = clock
        self.sleep = sleep
        self.void_margin_ms = void_margin_ms  # for clock error and transit on top of the recvWindow
        self.started_ms = int(clock() * 1000)
        self._rules: SymbolRules | None = None
        self._position: Position | None = None
        self._void_after_ms: dict[int, int] = {}  # order id -> when its last unanswered send is void
        self._alerted: set[int] = set()  # order ids alerted about, so that a settling loop alerts once

    # -- the broker protocol (see core.brokers.PaperBroker) -------------------------------------------

    def position(self) -> Position:
        """The account's position, read from Binance; inside a transaction (where no write lock may wait
        on the network) the position read last."""
        if self.db.conn.in_transaction:
            if self._position is None:
                raise BrokerError("the position has not been read from Binance yet")
            return self._position
        return self._read_account().position

    def submit(self, decision_id: int, side: str, now_ms: int) -> dict:
        """Record a market order for a decision, before it is sent. Call inside a transaction."""
        order = {"decision_id": decision_id, "client_order_id": brokers.client_order_id(decision_id),
                 "broker": self.name, "symbol": self.symbol, "side": side, "status": "sending",
                 "created_at_ms": now_ms}
        order["id"] = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, created_at_ms) "
            "VALUES (:decision_id, :client_order_id, :broker, :symbol, :side, :status, :created_at_ms)",
            order).lastrowid
        return order

    def execute(self, order: dict) -> None:
        """Size a recorded order from the account and send it once; an unknown outcome is asked for by
        client id, and the order is sent again only when Binance confirms it never got it."""
        try:
            plan = self._plan(order["side"], self._read_account(), self._last_price())
        except BrokerError as exc:
            self._settle(order, "not_sent", f"not sent: {exc}", is_failure=True)
            return
        if plan.params is None:
            self._settle(order, "skipped", plan.reason, is_failure=plan.is_failure)
            return
        params = {"symbol": self.symbol, "type": "MARKET", "newClientOrderId": order["client_order_id"],
                  **plan.params}
        error = ""
        for send in range(1, MAX_SENDS + 1):
            try:
                answer = self.rest.call(self.create_method, is_order=True, **params)
            except ExchangeRejected as exc:
                self._settle(order, "rejected", str(exc), is_failure=True)
                return
            except ExchangeUnreachable as exc:
                error = str(exc)
                # The request carried a timestamp no later than now: after recvWindow it is void.
                void_after_ms = int(self.clock() * 1000) + self.rest.recv_window_ms + self.void_margin_ms
                self._void_after_ms[order["id"]] = void_after_ms
                self._settle(order, "unknown", error)
                try:
                    answer = self._find(order)
                except BrokerError as query_exc:
                    self._settle(order, "unknown", f"{error}; asking Binance for it failed too: {query_exc}; "
                                 "the worker keeps asking", is_failure=True)
                    return
                if answer is None:
                    log.warning("order %s never reached Binance (%s): sending it again (send %d of %d)",
                                order["client_order_id"], error, send + 1, MAX_SENDS)
                    continue
                log.warning("order %s was placed although the answer was lost (%s)", order["client_order_id"], error)
            self._record(order, answer)
            return
        self._settle(order, "not_sent", f"not placed after {MAX_SENDS} sends: {error}", is_failure=True)

    def recover(self) -> None:
        """Settle orders whose outcome is open (a crash, a timeout) by asking Binance for their client ids,
        then read the position. Runs at start and periodically; never sends an order."""
        rows = self.db.execute(
            f"SELECT id, client_order_id, side, status FROM orders WHERE broker = ? AND symbol = ? "
            f"AND status IN ({', '.join('?' * len(OPEN_STATUSES))}) ORDER BY id",
            [self.name, self.symbol, *OPEN_STATUSES]).fetchall()
        for order_id, client_id, side, status in rows:
            order = {"id": order_id, "client_order_id": client_id, "side": side}
            # Sent by an earlier process (or never): its last request is no later than our start.
            self._void_after_ms.setdefault(order_id, self.started_ms + self.rest.recv_window_ms + self.void_margin_ms)
            try:
                answer = self._find(order)
            except BrokerError as exc:
                self._settle(order, status, f"could not ask Binance for the order: {exc}", is_failure=True)
                continue
            if answer is None:
                self._settle(order, "not_sent", "Binance has no order with this client id: it was never placed; "
                             "the next decision decides again", is_failure=True)
            else:
                log.warning("order %s settled by its client id: %s", client_id, answer.get("status"))
                self._record(order, answer)
        try:
            self._read_account()
        except BrokerError as exc:
            log.warning("position not read: %s", exc)

    def has_pending(self) -> bool:
        """Exchange orders never wait for the trader's next price."""
        return False

    def fill_pending(self, price: float, time_ms: int) -> list[dict]:
        """Nothing to fill: Binance fills market orders itself."""
        return []

    # -- common ---------------------------------------------------------------------------------------

    @property
    def rules(self) -> SymbolRules:
        """The symbol's filters, read from exchangeInfo once (lazily: starting needs no network)."""
        if self._rules is None:
            info = self.rest.call(self.exchange_info_method)
            self.rest.set_weight_limit(info)
            for symbol in info.get("symbols", ()):
                if symbol["symbol"] == self.symbol:
                    self._rules = SymbolRules.from_symbol(symbol, self.market)
                    break
            else:
                raise BrokerError(f"Binance does not list {self.symbol} for {self.market} trading")
        return self._rules

    def _find(self, order: dict) -> dict | None:
        """Binance's answer for the order's client id, or None once it is certain there is no such order."""
        void_after_ms = self._void_after_ms.get(order["id"], 0)
        while True:
            try:
                return self.rest.call(self.query_method, symbol=self.symbol, origClientOrderId=order["client_order_id"])
            except ExchangeRejected as exc:
                if exc.code != ORDER_DOES_NOT_EXIST:
                    raise
            wait_ms = void_after_ms - int(self.clock() * 1000)
            if wait_ms <= 0:
                return None
            self.sleep(wait_ms / 1000)  # the request may still be on its way: ask again once it is void

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
            if position is not None:
                brokers.save_position(self.db, position, now_ms)
        self._void_after_ms.pop(order["id"], None)

    def _settle(self, order: dict, status: str, reason: str, is_failure: bool = False) -> None:
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            self.db.execute("UPDATE orders SET status = ?, error = ? WHERE id = ?", [status, reason, order["id"]])
            if is_failure:
                self._alert(order, status, reason, now_ms)
        if not is_failure:
            log.info("order %s %s: %s", order["client_order_id"], status, reason)

    def _alert(self, order: dict, status: str, reason: str, now_ms: int) -> None:
        if order["id"] in self._alerted and status in OPEN_STATUSES:
            return  # still being settled: one alert is enough
        self._alerted.add(order["id"])
        alerts.queue(self.db, "orders", status, f"ORDER FAILURE: {order['side']} {self.symbol} order "
                     f"{order['client_order_id']} is {status}: {reason}", now_ms, is_failure=True)

    def _last_price(self) -> Decimal | None:
        """The newest candle's close: the price that sizes orders and tells dust from a position."""
        row = self.db.execute("SELECT close FROM candles WHERE symbol = ? ORDER BY open_time_ms DESC LIMIT 1",
                              [self.symbol]).fetchone()
        return Decimal(repr(row[0])) if row else None

    # -- per market -----------------------------------------------------------------------------------

    exchange_info_method = ""

    def _read_account(self):
        raise NotImplementedError

    def _plan(self, side: str, account, price: Decimal | None) -> Plan:
        raise NotImplementedError

    def _fill_of(self, answer: dict) -> dict:
        raise NotImplementedError


class SpotAccount(NamedTuple):
    position: Position
    base_free: Decimal
    quote_free: Decimal


class BinanceSpotBroker(BinanceBroker):
    """Spot: long is a base-asset balance above dust; BUY spends the free quote balance (at most
    OMNIWISE_ORDER_QUOTE), SELL sells the free base balance, both rounded down to Binance's filters."""

    name = "binance-spot"
    market = SPOT
    create_method, query_method, exchange_info_method = "create_order", "get_order", "get_exchange_info"

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
        return SpotAccount(position, base_free, quote_free)

    def _plan(self, side: str, account: SpotAccount, price: Decimal | None) -> Plan:
        rules = self.rules
        if side == "BUY":
            if account.position.side == "long":
                return Plan(None, "already long")
            spend = account.quote_free if self.order_quote is None else min(account.quote_free, self.order_quote)
            spend = floor_to(spend, rules.quote_step)
            if spend <= 0 or spend < rules.min_notional:
                return Plan(None, f"{decimal_text(spend)} {rules.quote_asset} to spend is below Binance's minimum "
                                  f"order of {decimal_text(rules.min_notional)}", is_failure=True)
            return Plan({"side": "BUY", "quoteOrderQty": decimal_text(spend), "newOrderRespType": "FULL"})
        qty = rules.floor_qty(account.base_free)
        if not rules.is_tradable(qty, price):
            return Plan(None, "already flat: the base balance is dust")
        return Plan({"side": "SELL", "quantity": decimal_text(qty), "newOrderRespType": "FULL"})

    def _fill_of(self, answer: dict) -> dict:
        qty = Decimal(answer.get("executedQty", "0"))
        quote = Decimal(answer.get("cummulativeQuoteQty", "0"))
        price = quote / qty if qty else None
        fee = ZERO
        for fill in answer.get("fills", ()):
            commission = Decimal(fill["commission"])
            if fill["commissionAsset"] == self.rules.quote_asset:
                fee += commission
            elif fill["commissionAsset"] == self.rules.base_asset:
                fee += commission * Decimal(fill["price"])
        time_ms = answer.get("transactTime") or answer.get("updateTime") or answer.get("time")
        return {"qty": float(qty), "quote": float(quote), "price": float(price) if price else None,
                "fee_quote": float(fee) if answer.get("fills") else None, "time_ms": time_ms}

    def _entry_price(self) -> float | None:
        row = self.db.execute("SELECT price FROM orders WHERE broker = ? AND symbol = ? AND side = 'BUY' "
                              "AND qty > 0 ORDER BY id DESC LIMIT 1", [self.name, self.symbol]).fetchone()
        return row[0] if row else None


class FuturesAccount(NamedTuple):
    position: Position
    amount: Decimal  # signed position amount: negative is short
    available: Decimal  # margin asset available for new positions


class BinanceFuturesBroker(BinanceBroker):
    """USDⓈ-M futures, one-way mode, no leverage beyond the account's setting: BUY opens a long worth the
    available margin (at most OMNIWISE_ORDER_QUOTE), closing any short first; SELL closes the position
    with a reduce-only order."""

    name = "binance-futures"
    market = FUTURES
    create_method, query_method, exchange_info_method = ("futures_create_order", "futures_get_order",
                                                         "futures_exchange_info")

    def _read_account(self) -> FuturesAccount:
        rules = self.rules
        amount, entry = ZERO, None
        for row in self.rest.call("futures_position_information", symbol=self.symbol):
            if row["symbol"] == self.symbol and row.get("positionSide", "BOTH") == "BOTH":
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

    def _plan(self, side: str, account: FuturesAccount, price: Decimal | None) -> Plan:
        rules = self.rules
        if side == "SELL":
            if account.amount == 0:
                return Plan(None, "already flat")
            close_side = "SELL" if account.amount > 0 else "BUY"
            return Plan({"side": close_side, "quantity": decimal_text(abs(account.amount)), "reduceOnly": "true",
                         "newOrderRespType": "RESULT"})
        if account.amount > 0:
            return Plan(None, "already long")
        if price is None:
            return Plan(None, "no price yet to size the order", is_failure=True)
        spend = account.available * FUTURES_MARGIN_USE
        if self.order_quote is not None:
            spend = min(spend, self.order_quote)
        open_qty = rules.floor_qty(spend / price)
        if not rules.is_tradable(open_qty, price):
            return Plan(None, f"{decimal_text(spend)} {rules.quote_asset} of margin buys "
                              f"{decimal_text(open_qty)} {rules.base_asset}, below Binance's minimum", is_failure=True)
        return Plan({"side": "BUY", "quantity": decimal_text(open_qty - account.amount), "newOrderRespType": "RESULT"})

    def _fill_of(self, answer: dict) -> dict:
        qty = Decimal(answer.get("executedQty", "0"))
        quote = Decimal(answer.get("cumQuote", "0"))
        return {"qty": float(qty), "quote": float(quote), "price": float(quote / qty) if qty else None,
                "fee_quote": None, "time_ms": answer.get("updateTime") or answer.get("time")}


BROKERS = {BinanceSpotBroker.name: BinanceSpotBroker, BinanceFuturesBroker.name: BinanceFuturesBroker}

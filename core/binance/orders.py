"""The order path shared by Binance's markets (spot in core/binance/spot.py, USDⓈ-M futures in
core/binance/futures.py): market orders, never two for one decision.

The trader records each order (status `sending`) in its transaction; `execute` sends it once after the
commit, under a client id never used before (`ow<8 random characters>-<decision id>`, the prefix new at
every worker start). An order whose outcome is unknown is never sent again but settled
(core/binance/settle.py); while one is unknown no other order is sent: the next decision decides again
against the exchange's account. Only a request that provably never left (connection refused) is sent
again, by the REST client.

Order statuses: sending, unknown (being settled), filled, partially_filled, new, expired, canceled,
rejected (Binance refused it), skipped (nothing to do, or below Binance's minimum), not_sent (never
reached Binance), not_found (unknown, and no trace of it at Binance after UNKNOWN_SETTLE_MS).
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import string
import time
from collections.abc import Callable
from decimal import Decimal

from core import brokers, precision, store
from core.health import alerts
from core.binance.filters import Plan, SymbolRules
from core.binance.rest import SPOT, BinanceRest, ExchangeRejected, ExchangeUnreachable
from core.binance.settle import UNKNOWN_SETTLE_MS, Settling
from core.brokers import BrokerError, Position
from core.store import Database

log = logging.getLogger(__name__)

RULES_MAX_AGE_MS = 24 * 3_600_000  # exchangeInfo is read again this often (and after a filter failure)
FILTER_FAILURE = -1013
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,36}$")  # within Binance's ^[\.A-Z\:/a-z0-9_-]{1,36}$
CLIENT_ID_PREFIX_KEY = "binance_client_id_prefix"


def client_id_prefix(db: Database, now_ms: int) -> str:
    """A new client id prefix, `ow` and 8 random letters or digits, made at every worker start (and by
    `restore`) and kept in the database. Decision ids start again after a restored backup or a reset
    database, and another installation may trade the same account: a new prefix keeps every client id new."""
    prefix = new_client_id_prefix()
    with store.transaction(db):
        store.set_meta(db, CLIENT_ID_PREFIX_KEY, prefix, now_ms)
    return prefix


def new_client_id_prefix() -> str:
    """`ow` and 8 random letters or digits (62**8 values: two starts never draw the same one in practice)."""
    alphabet = string.ascii_letters + string.digits
    return "ow" + "".join(secrets.choice(alphabet) for _ in range(8))


def exchange_client_id(prefix: str, decision_id: int) -> str:
    """The client order id of a decision's order on Binance; the same decision always gives the same id."""
    client_id = f"{prefix}-{decision_id}"
    if not CLIENT_ID_PATTERN.match(client_id):
        raise BrokerError(f"client order id {client_id!r} does not fit Binance's pattern")
    return client_id


def plan_side(order: dict) -> str:
    """What a recorded order asks of the account: "BUY" (be long), "SELL" (be flat: whatever is held is
    closed) or "SHORT" (be short), from its target (orders before shorts have none: their side says it)."""
    return {"flat": "SELL", "short": "SHORT", "long": "BUY"}.get(order.get("target"), order["side"])


class BinanceBroker(Settling):
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
        self.unsent_ids: set[int] = set()  # orders recorded by this process and not yet handed to execute

    # -- the broker protocol (see core.brokers.PaperBroker) -------------------------------------------

    def position(self) -> Position:
        """The account's position, read from Binance; inside a transaction (where no write lock may wait
        on the network) the position read last."""
        if self.db.conn.in_transaction:
            if self._position is None:
                raise BrokerError("the position has not been read from Binance yet")
            return self._position
        return self._read_account().position

    def submit(self, decision_id: int, side: str, now_ms: int, size_share: float = 1.0,
               target: str | None = None) -> dict:
        """Record a market order for a decision, before it is sent; an entry spends `size_share` of what the
        account can spend (SIZE); `target` is the position it reaches (see PaperBroker.submit). Call inside a
        transaction."""
        order = {"decision_id": decision_id, "client_order_id": exchange_client_id(self.prefix, decision_id),
                 "broker": self.name, "symbol": self.symbol, "side": side, "status": "sending",
                 "created_at_ms": now_ms, "size_share": size_share, "target": target}
        order["id"] = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, created_at_ms, "
            "size_share, target) VALUES (:decision_id, :client_order_id, :broker, :symbol, :side, :status, "
            ":created_at_ms, :size_share, :target)", order).lastrowid
        self.unsent_ids.add(order["id"])
        return order

    def execute(self, order: dict, even_if_unknown: bool = False) -> None:
        """Size a recorded order from the exchange's account and send it once; an unknown outcome is
        never sent again but settled (see the module docstring). While another order's outcome is unknown
        nothing is sent, unless `even_if_unknown` (a flatten: it closes what the account holds now)."""
        self.unsent_ids.discard(order["id"])
        try:
            self._prepare_for(plan_side(order))
            waiting = self._settle_open(exclude_id=order["id"])
            if waiting and not even_if_unknown:
                self._settle(order, "skipped", f"not sent: the outcome of order {waiting} is still unknown; the "
                             "next decision decides again against Binance's account")
                return
            share = Decimal(repr(order.get("size_share") or 1.0))
            plan = self._plan(plan_side(order), self._read_account(), self._last_price(), share)
        except BrokerError as exc:
            self._settle(order, "not_sent", f"not sent: {exc}", is_failure=True)
            return
        if plan.params is None:
            self._settle(order, "skipped", plan.reason, is_failure=plan.is_failure)
            return
        self._send(order, plan.params)

    def recover(self) -> None:
        """Settle orders whose outcome is open (a crash, a timeout) from what Binance knows of them, then
        read the position. Runs at start and periodically (between candles: an order recorded and not sent by
        then is a leftover); never sends an order."""
        self.unsent_ids.clear()
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

    # -- sending --------------------------------------------------------------------------------------

    def _send(self, order: dict, params: dict) -> dict | None:
        """Send a recorded order once; returns Binance's answer, or None when it was not (yet) executed."""
        self.unsent_ids.discard(order["id"])
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
                    # the pages write quantities and prices with the exchange's own decimals
                    precision.publish(self.db, self.symbol, self._rules.step, self._rules.tick,
                                      self._rules.quote_asset, now_ms)
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

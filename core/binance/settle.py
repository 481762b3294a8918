"""Settling orders of unknown outcome. A timeout, a lost answer or a 5xx leaves an order that Binance may
have executed, even seconds later: it is never sent again, but stays `unknown` (alerted) until Binance tells
what became of it: the user data stream's order update for its client id (executionReport on spot,
ORDER_TRADE_UPDATE on futures), or the order query. Order queries can lag a fill, so Binance's "order does
not exist" (-2013) settles nothing by itself; spot then reads the account's trades (SpotTradeEvidence). Only
after UNKNOWN_SETTLE_MS without any trace is the order given up as `not_found`.

The classes here are mixins of core.binance.orders.BinanceBroker (and the spot broker): they use its
database, REST client, clock and its `_record`, `_settle` and `_read_account`."""

from __future__ import annotations

import json
import logging
import queue
from decimal import Decimal

from core import store
from core.binance.filters import ZERO, decimal_text
from core.binance.rest import ORDER_DOES_NOT_EXIST, ExchangeRejected
from core.brokers import BrokerError

log = logging.getLogger(__name__)

OPEN_STATUSES = ("sending", "unknown", "new", "partially_filled")
UNKNOWN_SETTLE_MS = 15 * 60_000  # an unknown order with no trace at Binance this long after it was sent
FINAL_ORDER_STATUSES = ("FILLED", "EXPIRED", "EXPIRED_IN_MATCH", "CANCELED", "REJECTED")
BASE_BEFORE_KEY = "binance_spot_base_before"  # meta: the base balance just before the last order was sent
SEND_TIME_SLACK_MS = 5_000  # trades are looked for from this long before the order was recorded (clock offset)
BALANCE_TOLERANCE = Decimal("0.00000001")  # per trade: Binance keeps balances to 8 decimals


class Settling:
    """Asking Binance about open orders: the stream's updates first, then the order query."""

    def _settle_open(self, exclude_id: int | None = None) -> str | None:
        """Settle every open order; returns the client id of one whose outcome is still unknown, if any.
        An order still unknown after asking is alerted (once)."""
        rows = self.db.execute(
            f"SELECT id, client_order_id, side, status, created_at_ms, error FROM orders WHERE broker = ? "
            f"AND symbol = ? AND status IN ({', '.join('?' * len(OPEN_STATUSES))}) AND id != ? ORDER BY id",
            [self.name, self.symbol, *OPEN_STATUSES, -1 if exclude_id is None else exclude_id]).fetchall()
        # Orders this process recorded and is about to send (the open after the close of a change of side) are
        # not a crash's leftovers.
        rows = [row for row in rows if row[0] not in self.unsent_ids]
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


class SpotTradeEvidence:
    """Spot: the account's trades settle an order the order query still denies, when they provably are its."""

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

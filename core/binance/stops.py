"""The strategy's stop kept on Binance (DESIGN.md "Risk statements": the stop holds while the worker is
down): one Close-All STOP_MARKET through the Algo Service, placed, moved and cancelled with the level. A
long's is a SELL below the price, a short's a BUY above it (fapi "New Algo Order (TRADE)": closePosition
with side BUY closes a short; a STOP_MARKET BUY triggers when the price rises to triggerPrice).

ExchangeStop is a mixin of core.binance.futures.BinanceFuturesBroker: it uses its REST client, rules, clock,
client-id prefix, `_query`, `_fill_of` and `_read_account`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from decimal import Decimal

from core import brokers, store
from core.health import alerts
from core.binance.filters import ceil_to, decimal_text, floor_to
from core.binance.rest import ORDER_DOES_NOT_EXIST, ExchangeRejected, ExchangeUnreachable
from core.brokers import BrokerError

log = logging.getLogger(__name__)

STOP_KEY = "binance_futures_stop"  # meta: the STOP_MARKET kept on Binance, as JSON (client id, level, reason)
STOP_MOVE_SHARE = Decimal("0.001")  # the stop on Binance is moved once the level differs by 0.1 % or more
UNKNOWN_ORDER_SENT = -2011  # a cancel of an order that is no longer open (here: the stop was triggered)
WOULD_IMMEDIATELY_TRIGGER = -2021
STOP_GONE = ("CANCELED", "EXPIRED", "REJECTED")  # algoStatus of a stop that closed nothing


class ExchangeStop:
    """The stop kept on Binance for the open position."""

    stop_key = STOP_KEY  # the meta row that keeps it

    def keep_stop(self, level: float | None, reason: str | None, is_short: bool = False) -> None:
        """Keep one Close-All STOP_MARKET (reduce-only by nature) on Binance at the effective stop `level`,
        placed, moved once the level differs by 0.1 % or more, cancelled with `level` None (flat, or no stop
        statement). A short's (`is_short`) is a BUY, its trigger rounded up to the tick as a long's is rounded
        down: never nearer the price than the worker's own level. Never inside a transaction; BrokerError
        when Binance could not be asked."""
        stop = self._stored_stop()
        if level is None or level != level or level <= 0:
            if stop is not None:
                self._cancel_stop(stop)
            return
        side = "BUY" if is_short else "SELL"
        trigger = (ceil_to if is_short else floor_to)(Decimal(repr(level)), self.rules.tick)
        if stop is not None and stop.get("side", "SELL") != side:  # the position changed side: a new stop
            if not self._cancel_stop(stop):
                return
            stop = None
        if stop is not None:
            kept = Decimal(stop["trigger_price"])
            if abs(Decimal(repr(level)) - kept) < kept * STOP_MOVE_SHARE:
                if stop["reason"] != reason:  # the other statement now sets the level: its name ends the trade
                    self._store_stop({**stop, "reason": reason})
                return
            if not self._cancel_stop(stop):
                return  # it was triggered: the trader records the exit from stop_exit()
        self._place_stop(trigger, reason, side)

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
                "reason": stop["reason"], "side": stop.get("side", "SELL")}

    def record_stop_fill(self, decision_id: int, fill: dict, now_ms: int) -> dict:
        """Record the stop's fill as the order of the exit decision `decision_id`. Call inside a transaction."""
        side = fill.get("side", "SELL")  # a short's stop buys
        order = {"decision_id": decision_id, "client_order_id": fill["client_order_id"], "broker": self.name,
                 "symbol": self.symbol, "side": side, "status": "filled", "created_at_ms": now_ms, "target": "flat"}
        order["id"] = self.db.execute(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, qty, price, quote, "
            "fee_quote, exchange_order_id, created_at_ms, filled_at_ms, target) VALUES (?, ?, ?, ?, ?, 'filled', ?, ?, "
            "?, ?, ?, ?, ?, 'flat')", [decision_id, fill["client_order_id"], self.name, self.symbol, side, fill["qty"],
                                       fill["price"], fill["quote"], fill["fee_quote"], fill["exchange_order_id"],
                                       now_ms, fill["time_ms"]]).lastrowid
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

    def _place_stop(self, trigger: Decimal, reason: str | None, side: str = "SELL") -> None:
        now_ms = int(self.clock() * 1000)
        stop = {"client_id": f"{self.prefix}-s{self._stop_tag()}{now_ms}", "trigger_price": decimal_text(trigger),
                "reason": reason, "placed_at_ms": now_ms, "side": side}
        self._store_stop(stop)  # before it is sent: a lost answer still leaves the id to ask Binance about
        try:
            # fapi "New Algo Order (TRADE)": conditional orders live in the Algo Service since 2025-12-09.
            self.rest.call("futures_create_algo_order", is_order=True, algoType="CONDITIONAL", symbol=self.symbol,
                           side=side, type="STOP_MARKET", triggerPrice=stop["trigger_price"], closePosition="true",
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
        log.info("stop kept on Binance: STOP_MARKET %s %s at %s (%s)", side, stop["client_id"], stop["trigger_price"],
                 reason)

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

    def reconcile_stops(self) -> None:
        """Compare the stops Binance holds for this key (its open orders) with the one kept in the database:
        one that is not it (placed after the backup now restored, or whose answer was lost) is cancelled; the
        kept one missing from Binance is settled by stop_exit (filled, cancelled by hand, never placed). Runs
        at start, at every order check and after an order of unknown outcome."""
        stored = self._stored_stop()
        ours = re.compile(rf"^ow[A-Za-z0-9]{{8}}-s{self._stop_tag()}\d+$")
        for client_id, described in self._open_stops():
            if not ours.match(client_id) or (stored is not None and client_id == stored["client_id"]):
                continue
            try:
                self._cancel_open_stop(client_id)
            except ExchangeRejected as exc:
                if exc.code not in (UNKNOWN_ORDER_SENT, ORDER_DOES_NOT_EXIST):
                    raise
            log.warning("a stale stop on Binance (%s, %s) was cancelled: the database keeps %s", client_id, described,
                        stored["client_id"] if stored else "none")

    def execute(self, order: dict, even_if_unknown: bool = False) -> None:
        """As the broker's execute; after an order of unknown outcome the stops Binance holds are read again."""
        super().execute(order, even_if_unknown)
        if self._status(order["id"]) == "unknown":
            self.reconcile_quietly()

    def recover(self) -> None:
        """As the broker's recover, then the stops Binance holds are reconciled with the one kept here."""
        super().recover()
        self.reconcile_quietly()

    def reconcile_quietly(self) -> None:
        """reconcile_stops, a failure logged (it runs again at the next order check)."""
        try:
            self.reconcile_stops()
        except BrokerError as exc:
            log.warning("the stops on Binance were not reconciled: %s", exc)

    def _open_stops(self) -> list[tuple[str, str]]:
        """(client id, what it is) of the symbol's open conditional orders (fapi "Query Current All Algo Open
        Orders (USER_DATA)", GET /fapi/v1/openAlgoOrders)."""
        return [(algo.get("clientAlgoId", ""), f"{algo.get('side')} {algo.get('orderType', algo.get('type'))} at "
                                               f"{algo.get('triggerPrice')}")
                for algo in self.rest.call("futures_get_open_algo_orders", symbol=self.symbol)]

    def _cancel_open_stop(self, client_id: str) -> None:
        self.rest.call("futures_cancel_algo_order", symbol=self.symbol, clientAlgoId=client_id)

    def _stop_tag(self) -> str:
        """Four hex digits marking this API key's stops: the start of the key's SHA-256 (the key is no secret,
        and 16 bits of its hash reveal nothing). Derived, not stored, so a backup restored from before the
        first stop still knows the stops placed after it; another installation with its own key has another."""
        return hashlib.sha256((self.rest.client.API_KEY or "").encode()).hexdigest()[:4]

    def _stored_stop(self) -> dict | None:
        value = store.get_meta(self.db, self.stop_key)
        return json.loads(value) if value else None

    def _store_stop(self, stop: dict | None) -> None:
        with store.transaction(self.db):
            store.set_meta(self.db, self.stop_key, json.dumps(stop) if stop else "", int(self.clock() * 1000))

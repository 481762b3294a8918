"""The strategy's stop kept on Binance spot (DESIGN.md "Orders and positions": a dead worker still has its
stop): a SELL of the position, STOP_LOSS where the symbol's orderTypes offer it, else STOP_LOSS_LIMIT with
its limit STOP_LIMIT_OFFSET below the trigger. Placed from the entry fill, moved with the trailing level,
cancelled before a rule's SELL or a flatten and when flat; reconciled with Binance's open orders at start
and every order check, so a restart or a restored backup never leaves a stale stop nor loses one.

Binance locks the base a stop sells ("Account information": balances[].locked), so while the stop waits
a market SELL of the free balance has nothing to sell: the stop is cancelled first, and when the cancel
answers -2011 because Binance has already triggered it, the stop's fill is the SELL's (no order is sent).

SpotStop is a mixin of core.binance.spot.BinanceSpotBroker over core.binance.stops.ExchangeStop (which
decides when to place, move and cancel); only the exchange's side differs here."""

from __future__ import annotations

import logging
from decimal import Decimal

from core import store
from core.binance.filters import decimal_text, floor_to
from core.binance.rest import ORDER_DOES_NOT_EXIST, ExchangeRejected, ExchangeUnreachable
from core.binance.stops import UNKNOWN_ORDER_SENT, ExchangeStop
from core.brokers import BrokerError
from core.health import alerts

log = logging.getLogger(__name__)

SPOT_STOP_KEY = "binance_spot_stop"  # meta: the stop kept on Binance spot, as JSON (client id, level, reason)
STOP_LIMIT_OFFSET = Decimal("0.005")  # STOP_LOSS_LIMIT: the limit 0.5 % under the trigger, room for a fast fall
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED", "PENDING_NEW")
STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_LIMIT")


class SpotStop(ExchangeStop):
    """The stop kept on Binance spot for the open position."""

    stop_key = SPOT_STOP_KEY

    def stop_exit(self) -> dict | None:
        """The kept stop's fill once Binance executed it (client_order_id, exchange_order_id, reason, qty,
        price, quote, fee_quote, time_ms), given once; None while it waits, or when it sold nothing."""
        stop = self._stored_stop()
        if stop is None:
            return None
        try:
            answer = self.rest.call(self.query_method, symbol=self.symbol, origClientOrderId=stop["client_id"])
        except ExchangeRejected as exc:
            if exc.code == ORDER_DOES_NOT_EXIST and int(self.clock() * 1000) - stop["placed_at_ms"] >= \
                    self.settle_after_ms:
                self._store_stop(None)  # its placing never reached Binance
            return None
        if answer["status"] in OPEN_STATUSES:
            return None  # waiting, or a STOP_LOSS_LIMIT still selling
        self._store_stop(None)
        fill = self._fill_of(answer)
        if not fill["qty"]:
            log.warning("the stop %s on Binance is %s and sold nothing", stop["client_id"], answer["status"])
            return None
        try:
            self._read_account()
        except BrokerError as exc:
            log.warning("position not read after the stop on Binance filled: %s", exc)
        log.warning("the stop kept on Binance (%s) sold the position at %s", stop["client_id"], fill["price"])
        return {**fill, "client_order_id": stop["client_id"], "exchange_order_id": str(answer.get("orderId")),
                "reason": stop["reason"]}

    def _open_stops(self) -> list[tuple[str, str]]:
        """(client id, what it is) of the symbol's open orders (spot "Current open orders (USER_DATA)")."""
        return [(order.get("clientOrderId", ""), f"{order.get('type')} at {order.get('stopPrice')}")
                for order in self.rest.call("get_open_orders", symbol=self.symbol)]

    def _cancel_open_stop(self, client_id: str) -> None:
        self.rest.call("cancel_order", symbol=self.symbol, origClientOrderId=client_id)

    def _place_stop(self, trigger: Decimal, reason: str | None, side: str = "SELL") -> None:  # spot: a long's only
        rules, now_ms = self.rules, int(self.clock() * 1000)
        qty = rules.floor_qty(self._read_account().base_free)
        if not rules.is_tradable(qty, trigger):
            return  # nothing to protect (dust), or the base is held by another order
        if "STOP_LOSS" in rules.order_types:  # spot "New order (TRADE)": quantity and stopPrice
            params = {"type": "STOP_LOSS"}
        elif "STOP_LOSS_LIMIT" in rules.order_types:  # and price, timeInForce
            limit = floor_to(trigger * (1 - STOP_LIMIT_OFFSET), rules.tick)
            params = {"type": "STOP_LOSS_LIMIT", "price": decimal_text(limit), "timeInForce": "GTC"}
        else:
            self._alert_stop_refused(f"NO STOP ON BINANCE for {self.symbol}: the symbol offers neither STOP_LOSS "
                                     "nor STOP_LOSS_LIMIT; the stop acts only while the worker runs", now_ms)
            return
        stop = {"client_id": f"{self.prefix}-s{self._stop_tag()}{now_ms}", "trigger_price": decimal_text(trigger),
                "reason": reason, "placed_at_ms": now_ms, "type": params["type"]}
        self._store_stop(stop)  # before it is sent: a lost answer still leaves the id to ask Binance about
        try:
            self.rest.call("create_order", is_order=True, symbol=self.symbol, side="SELL", quantity=decimal_text(qty),
                           stopPrice=stop["trigger_price"], newClientOrderId=stop["client_id"], **params)
        except ExchangeRejected as exc:
            self._store_stop(None)
            if "immediately" in str(exc):  # -2010 "Stop price would trigger immediately."
                log.info("no stop placed on Binance at %s: the price is already there (the worker exits on the "
                         "next trade)", stop["trigger_price"])
                return
            self._alert_stop_refused(f"STOP NOT PLACED on Binance for {self.symbol} at {stop['trigger_price']}: "
                                     f"{exc}", now_ms)
            return
        except ExchangeUnreachable as exc:
            log.warning("the stop %s may or may not be on Binance (%s): it is asked about before it is moved, and "
                        "Binance's open orders are read again at the next order check", stop["client_id"], exc)
            return
        log.info("stop kept on Binance: %s %s %s at %s (%s)", params["type"], decimal_text(qty), stop["client_id"],
                 stop["trigger_price"], reason)

    def _cancel_stop(self, stop: dict) -> bool:
        """Cancel the kept stop; True once it is gone, False when Binance had executed it (kept for stop_exit)."""
        try:
            self.rest.call("cancel_order", symbol=self.symbol, origClientOrderId=stop["client_id"])
        except ExchangeRejected as exc:
            if exc.code not in (UNKNOWN_ORDER_SENT, ORDER_DOES_NOT_EXIST):
                raise
            answer = self._query(origClientOrderId=stop["client_id"])  # None: it never reached Binance
            if answer is not None and Decimal(answer.get("executedQty", "0")) > 0:
                return False
        self._store_stop(None)
        return True

    def _cancel_stop_before_selling(self, order: dict) -> bool:
        """Before a SELL: cancel the kept stop (it locks the base); when Binance has already executed it, its
        fill is this order's and True is returned (nothing is to be sent)."""
        stop = self._stored_stop()
        if stop is None:
            return False
        try:
            fill = None if self._cancel_stop(stop) else self.stop_exit()
        except BrokerError as exc:
            log.warning("the stop on Binance was not cancelled before selling: %s", exc)
            return False
        if fill is None:
            return False
        self._take_stop_fill(order, fill)
        return True

    def _alert_stop_refused(self, message: str, now_ms: int) -> None:
        if message not in self._account_alerts:
            self._account_alerts.add(message)
            with store.transaction(self.db):
                alerts.queue(self.db, "orders", "stop_refused", message, now_ms, is_failure=True)

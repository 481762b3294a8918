"""Binance USDⓈ-M futures in one-way mode: margin type and leverage set on the symbol, reduce-only closes
(in parts above the largest market order), the stop kept on Binance (core/binance/stops.py)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import NamedTuple

from core import store
from core.health import alerts
from core.binance.filters import ZERO, Plan, decimal_text
from core.binance.orders import BinanceBroker, plan_side
from core.binance.rest import FUTURES, BinanceRest, ExchangeRejected
from core.binance.stops import ExchangeStop
from core.brokers import BrokerError, Position
from core.store import Database

log = logging.getLogger(__name__)

FUTURES_MARGIN_USE = Decimal("0.98")  # of the available margin: the rest absorbs fees and the price moving
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
MARGIN_TYPES = {"cross": "CROSSED", "isolated": "ISOLATED"}


class FuturesAccount(NamedTuple):
    position: Position
    amount: Decimal  # signed position amount: negative is short
    available: Decimal  # margin asset available for new positions




class BinanceFuturesBroker(ExchangeStop, BinanceBroker):
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
        """Hedge mode refuses every order; wrong margin or leverage refuses opening a position, never a close."""
        try:
            self.prepare()
        except BrokerError:
            if side in ("BUY", "SHORT") or self.is_hedge_mode:
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

    def execute(self, order: dict, even_if_unknown: bool = False) -> None:
        """As BinanceBroker.execute; a BUY while short first closes the short with an order of its own; a SELL
        first cancels the stop kept on Binance, and when that stop has already closed the position, its fill
        is this order's (no second order is sent). After an order of unknown outcome the stops on Binance
        are reconciled at once."""
        self.unsent_ids.discard(order["id"])
        if plan_side(order) == "SELL" and self._stored_stop() is not None:
            try:
                fill = None if self._cancel_stop(self._stored_stop()) else self.stop_exit()
            except BrokerError as exc:
                fill = None
                log.warning("the stop on Binance was not cancelled before selling: %s", exc)
            if fill is not None:
                self._take_stop_fill(order, fill)
                return
        if plan_side(order) == "BUY":
            try:
                self._prepare_for("SELL")  # closing the short needs one-way mode only
                account = self._read_account()
            except BrokerError as exc:
                self._settle(order, "not_sent", f"not sent: {exc}", is_failure=True)
                return
            if account.amount < 0 and not self._close_short(order, account):
                return
        super().execute(order, even_if_unknown)

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
            close = self.submit(cursor.lastrowid, "BUY", now_ms, target="flat")
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
            return self.submit(decision_id, first["side"], now_ms, target=first.get("target"))

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
        is_short = side == "SHORT"
        if account.amount != 0 and (account.amount < 0) == is_short:
            return Plan(None, "already short" if is_short else "already long")
        if account.amount != 0:
            return Plan(None, f"still {'long' if is_short else 'short'} after closing it", is_failure=True)
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
        # One-way mode: a SELL while flat opens a short (Binance "New Order (TRADE)", positionSide BOTH).
        return Plan({"side": "SELL" if is_short else "BUY", "quantity": decimal_text(open_qty),
                     "newOrderRespType": "RESULT"})

    def _fill_of(self, answer: dict) -> dict:
        qty = Decimal(answer.get("executedQty", "0"))
        quote = Decimal(answer.get("cumQuote", "0"))
        return {"qty": float(qty), "quote": float(quote), "price": float(quote / qty) if qty else None,
                "fee_quote": None, "time_ms": answer.get("updateTime") or answer.get("time")}

"""Binance spot: long is a base-asset balance above dust; market orders within the symbol's filters; the stop
kept on Binance (core/binance/spot_stop.py)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import NamedTuple

from core.binance.filters import ZERO, Plan, decimal_text, floor_to
from core.binance.orders import BinanceBroker
from core.binance.rest import SPOT
from core.binance.settle import SpotTradeEvidence
from core.binance.spot_stop import SpotStop
from core.brokers import BrokerError, Position

log = logging.getLogger(__name__)


class SpotAccount(NamedTuple):
    position: Position
    base_free: Decimal
    quote_free: Decimal
    base_total: Decimal = ZERO  # free and locked



class BinanceSpotBroker(SpotStop, SpotTradeEvidence, BinanceBroker):
    """Spot: long is a base-asset balance (free and locked) above dust; BUY spends the free quote balance (at
    most OMNIWISE_ORDER_QUOTE), SELL sells the free base balance after cancelling the stop kept on Binance
    (which locks it), both within Binance's filters."""

    name = "binance-spot"
    market = SPOT
    create_method, query_method = "create_order", "get_order"
    exchange_info_method = "get_exchange_info"
    _account: SpotAccount | None = None  # the account read last

    def _read_account(self) -> SpotAccount:
        rules = self.rules
        balances = {b["asset"]: b for b in self.rest.call("get_account")["balances"]}
        base = balances.get(rules.base_asset, {"free": "0", "locked": "0"})
        base_free, base_total = Decimal(base["free"]), Decimal(base["free"]) + Decimal(base["locked"])
        quote_free = Decimal(balances.get(rules.quote_asset, {"free": "0"})["free"])
        if rules.is_tradable(rules.floor_qty(base_total), self._last_price()):  # the stop's lock is still ours
            position = Position("long", float(base_total), self._entry_price())
        else:
            position = Position("flat")
        self._position = position
        self._account = SpotAccount(position, base_free, quote_free, base_total)
        return self._account

    def execute(self, order: dict, even_if_unknown: bool = False) -> None:
        """As BinanceBroker.execute; a SELL first cancels the stop kept on Binance, and when that stop has
        already sold the position, its fill is this order's (no second order is sent). After an order of
        unknown outcome the stops on Binance are reconciled at once."""
        self.unsent_ids.discard(order["id"])
        if order["side"] == "SELL" and self._cancel_stop_before_selling(order):
            return
        super().execute(order, even_if_unknown)

    def _average_price(self) -> Decimal | None:
        """The price Binance checks a market order's notional at: the average of `avgPriceMins` minutes."""
        if not self.rules.avg_price_mins:
            return self._last_price()
        return Decimal(self.rest.call("get_avg_price", symbol=self.symbol)["price"])

    def _plan(self, side: str, account: SpotAccount, price: Decimal | None, share: Decimal = Decimal(1)) -> Plan:
        rules = self.rules
        if side == "SHORT":
            return Plan(None, "spot cannot short: use binance-futures for a strategy with SHORT", is_failure=True)
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
            if account.position.side == "long":  # held by an open order: sold only once that is cancelled
                return Plan(None, f"the {rules.base_asset} is locked by an open order (a stop on Binance not "
                                  "cancelled?): nothing to sell yet", is_failure=True)
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

"""Binance's exchange filters for market orders ("Filters" in Binance's API docs): what exchangeInfo allows
for one symbol, and quantities written as Binance takes them."""

from __future__ import annotations

import dataclasses
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from typing import NamedTuple

from core.binance.rest import SPOT

ZERO = Decimal(0)


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
    order_types: tuple[str, ...] = ()  # the symbol's orderTypes (spot: is STOP_LOSS offered?)

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
                   Decimal(filters.get("PRICE_FILTER", {}).get("tickSize", "0")), tuple(info.get("orderTypes", ())))

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


def ceil_to(value: Decimal, step: Decimal) -> Decimal:
    """`value` rounded up to a whole multiple of `step` (unchanged when step is 0)."""
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=ROUND_CEILING) * step


def decimal_text(value: Decimal) -> str:
    """A decimal as Binance takes it: plain digits, no exponent, no trailing zeros."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text

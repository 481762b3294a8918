"""How many decimals a figure of one market gets: quantities, prices and money, the same on every page.

On Binance the decimals are the exchange's own step sizes (LOT_SIZE stepSize, PRICE_FILTER tickSize), which
the broker publishes here when it reads exchangeInfo; paper trading has no exchange, so they follow from the
price (see `paper_defaults`). Numbers are written with fixed decimals and thousands separators, never in
scientific notation: 2,000,620 ETH, not 2.00062e+06.
"""

from __future__ import annotations

import dataclasses
import json
import math
from decimal import ROUND_HALF_UP, Decimal, localcontext

from core import store
from core.store import Database

META_KEY = "precision:{symbol}"
# Money in a fiat currency or a coin pegged to one is written in cents; other quote assets with 6 decimals
# (0.000001 ETH or BNB is far below a cent), BTC in satoshis.
FIAT_LIKE = {"USDT", "USDC", "BUSD", "FDUSD", "TUSD", "DAI", "USDP", "USD", "EUR", "GBP", "TRY", "BRL", "JPY",
             "AUD", "RUB", "UAH", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "IDR", "NGN", "CZK"}
MONEY_DECIMALS = {"BTC": 8}
DEFAULT_MONEY_DECIMALS = 6
MAX_DECIMALS = 8  # Binance's smallest step is 1e-8


@dataclasses.dataclass(frozen=True)
class Precision:
    """Decimals of one market's figures: base quantities, prices, and money in the quote asset."""

    qty: int
    price: int
    money: int
    source: str = "paper"  # "binance" when read from the exchange's filters

    def as_json(self) -> dict:
        """The decimals as the status JSON gives them."""
        return {"qty": self.qty, "price": self.price, "money": self.money, "source": self.source}


def decimals_of_step(step: Decimal | str) -> int:
    """The decimals a step size allows: 0.00100000 -> 3, 1.00000000 -> 0, 10 -> 0."""
    step = Decimal(step).normalize()
    if step <= 0:
        return MAX_DECIMALS
    return min(MAX_DECIMALS, max(0, -step.as_tuple().exponent))


def money_decimals(quote_asset: str) -> int:
    """Decimals of an amount of the quote asset: 2 for dollars and other fiat, 8 for BTC, else 6."""
    asset = quote_asset.upper()
    if asset in FIAT_LIKE:
        return 2
    return MONEY_DECIMALS.get(asset, DEFAULT_MONEY_DECIMALS)


def paper_defaults(price: float | None, quote_asset: str) -> Precision:
    """Decimals without an exchange: prices to five significant digits or more (at least 2 decimals), and
    quantities to a step worth at most a thousandth of the quote asset at `price` (e.g. BTC at 90,000 USDT:
    8 decimals; XRP at 0.0014 ETH: 1)."""
    money = money_decimals(quote_asset)
    if price is None or not math.isfinite(price) or price <= 0:
        return Precision(MAX_DECIMALS, MAX_DECIMALS, money)
    digits = math.floor(math.log10(price)) + 1  # digits before the point: 90,000 -> 5, 0.0014 -> -2
    price_decimals = min(MAX_DECIMALS, max(2, 5 - digits))
    qty_decimals = min(MAX_DECIMALS, max(0, digits + 3))
    return Precision(qty_decimals, price_decimals, money)


def publish(db: Database, symbol: str, step: Decimal, tick: Decimal, quote_asset: str, now_ms: int) -> None:
    """Store the exchange's step sizes of `symbol` for the pages (called by the Binance broker)."""
    value = json.dumps({"step": str(step), "tick": str(tick), "quote_asset": quote_asset})
    if store.get_meta(db, META_KEY.format(symbol=symbol)) != value:
        store.set_meta(db, META_KEY.format(symbol=symbol), value, now_ms)


def for_market(db: Database, symbol: str, quote_asset: str, price: float | None) -> Precision:
    """The decimals of `symbol`: the exchange's published steps, else the paper defaults at `price`."""
    value = store.get_meta(db, META_KEY.format(symbol=symbol))
    if not value:
        return paper_defaults(price, quote_asset)
    steps = json.loads(value)
    paper = paper_defaults(price, quote_asset)
    tick = Decimal(steps["tick"])
    return Precision(decimals_of_step(steps["step"]), decimals_of_step(tick) if tick > 0 else paper.price,
                     money_decimals(steps.get("quote_asset") or quote_asset), "binance")


def fixed(value: float | Decimal | None, decimals: int, signed: bool = False) -> str:
    """`value` with exactly `decimals` decimals and thousands separators, never in scientific notation;
    a value that rounds to zero is written without a sign ('0.00', not '-0.00')."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    with localcontext() as context:
        context.prec = 400  # every digit of the largest float (1.8e308) with 8 decimals
        text = format(exact.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP), f",.{decimals}f")
    if set(text) <= set("-0.,"):  # rounds to zero
        return text.lstrip("-")
    return "+" + text if signed and not text.startswith("-") else text

"""The fill rule shared by the paper broker and the backtest, so both give the same trades.

A decision on candle t fills at candle t+1's open (or at candle t's close with `fill=close`). A buy
spends the whole quote balance (or the strategy's SIZE share of it), a sell sells the whole position; the fee is taken from what is
received: base on a buy, quote on a sell (as Binance does with fees paid in the traded asset).

A short (DESIGN.md "Shorts", 1x) sells q = M / E for a notional M (the SIZE share of the equity) and
receives q·E·(1−f); buying it back at X pays q·X·(1+f).
"""

from __future__ import annotations

import dataclasses

DEFAULT_FEE_RATE = 0.001


@dataclasses.dataclass(frozen=True)
class Fill:
    """What one market order did to the account."""

    side: str  # "BUY" or "SELL"
    price: float
    qty: float  # base asset bought or sold, after fees on a buy
    quote: float  # quote asset spent (buy) or received after fees (sell)
    fee_quote: float  # the fee, valued in the quote asset


def slipped(price: float, side: str, slippage: float) -> float:
    """The price a market order of `side` fills at when the market is at `price`, `slippage` (a fraction)
    against the trader: a buy pays more, a sell gets less (DESIGN.md: `--slippage`, OMNIWISE_PAPER_SLIPPAGE)."""
    return price * (1 + slippage) if side == "BUY" else price * (1 - slippage)


def buy_all(quote_balance: float, price: float, fee_rate: float) -> Fill:
    """Spend the whole quote balance at `price`."""
    gross_qty = quote_balance / price
    return Fill("BUY", price, gross_qty * (1 - fee_rate), quote_balance, quote_balance * fee_rate)


def buy_share(quote_balance: float, share: float, price: float, fee_rate: float) -> Fill:
    """Spend `share` of the quote balance at `price` (SIZE); the rest stays as cash."""
    return buy_all(quote_balance if share >= 1 else quote_balance * share, price, fee_rate)


def sell_all(base_qty: float, price: float, fee_rate: float) -> Fill:
    """Sell the whole base position at `price`."""
    gross = base_qty * price
    return Fill("SELL", price, base_qty, gross * (1 - fee_rate), gross * fee_rate)


def open_short(notional: float, price: float, fee_rate: float) -> Fill:
    """Sell short `notional` worth at `price`: the quote received is after the fee."""
    qty = notional / price
    return Fill("SELL", price, qty, qty * price * (1 - fee_rate), qty * price * fee_rate)


def close_short(qty: float, price: float, fee_rate: float) -> Fill:
    """Buy a short of `qty` back at `price`: the quote paid includes the fee."""
    return Fill("BUY", price, qty, qty * price * (1 + fee_rate), qty * price * fee_rate)

"""Ready-to-paste TradingView alert set-ups for the signal webhook, and how long a signal stays fresh.

TradingView fills the {{...}} placeholders when the alert fires and posts the message as written
(text/plain unless it is valid JSON). A strategy alert fires only when an order fills, so on its own
the signal grows older than the TTL while the position is held, and the heartbeat calls it stale. The
recipe adds one line to the strategy that also alerts once per bar close with the position, so the
signal is never older than one bar.
"""

from __future__ import annotations

import dataclasses
import json

DELIVERY_ALLOWANCE_S = 60  # TradingView's delay before an alert arrives, generously


@dataclasses.dataclass(frozen=True)
class AlertMessage:
    """One alert message: where it fits, and the text to paste into TradingView's message box."""

    title: str
    when: str
    text: str


# Added to the strategy's Pine script: the position as a bare word on every closed bar.
PINE_EVERY_BAR = ('if barstate.isconfirmed\n'
                  '    alert(strategy.position_size > 0 ? "long" : strategy.position_size < 0 ? "short" : "flat", '
                  'alert.freq_once_per_bar_close)')
RECIPE_MESSAGE = "{{strategy.market_position}}"  # fills send long/flat/short as the whole message


def _message(signal: str) -> str:
    return json.dumps({"signal": signal, "timestamp": "{{timenow}}", "source": "TradingView", "symbol": "{{ticker}}"})


def alert_messages() -> list[AlertMessage]:
    """The messages for a strategy alert (position or order action) and for indicator alerts."""
    return [
        AlertMessage("Strategy: position", "an alert on a strategy; sends the position after every order "
                     "(long → BUY, flat → FLAT, short → SHORT)", _message("{{strategy.market_position}}")),
        AlertMessage("Strategy: order action", "an alert on a strategy; sends each order's side (buy or sell)",
                     _message("{{strategy.order.action}}")),
        AlertMessage("Indicator: buy", "an alert on an indicator or a price condition that means be long",
                     _message("BUY")),
        AlertMessage("Indicator: sell", "an alert on an indicator or a price condition that means be flat",
                     _message("SELL")),
        AlertMessage("Indicator: short", "an alert on an indicator or a price condition that means be short",
                     _message("SHORT")),
    ]


def ttl_for_bar_s(bar_s: float) -> float:
    """The OMNIWISE_SIGNAL_TTL a once-per-bar alert needs: two bars (one alert may get lost) and the delivery."""
    return 2 * bar_s + DELIVERY_ALLOWANCE_S


def longest_bar_s(ttl_s: float) -> float:
    """The longest chart bar whose once-per-bar alert keeps a signal fresh under `ttl_s`."""
    return max(0.0, (ttl_s - DELIVERY_ALLOWANCE_S) / 2)


BAR_LENGTHS_S = (("1 min", 60), ("5 min", 300), ("15 min", 900), ("1 h", 3600), ("4 h", 14_400), ("1 day", 86_400))


def ttl_table() -> list[tuple[str, int]]:
    """(bar length, TTL in seconds) for the common chart intervals."""
    return [(name, int(ttl_for_bar_s(bar_s))) for name, bar_s in BAR_LENGTHS_S]

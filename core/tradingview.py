"""Ready-to-paste TradingView alert set-ups for the signal webhook.

TradingView fills the {{...}} placeholders when the alert fires and posts the message as written
(text/plain unless it is valid JSON), so each message is JSON the webhook parses as it stands.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class AlertMessage:
    """One alert message: where it fits, and the text to paste into TradingView's message box."""

    title: str
    when: str
    text: str


def _message(signal: str) -> str:
    return json.dumps({"signal": signal, "timestamp": "{{timenow}}", "source": "TradingView", "symbol": "{{ticker}}"})


def alert_messages() -> list[AlertMessage]:
    """The messages for a strategy alert (position or order action) and for indicator alerts."""
    return [
        AlertMessage("Strategy: position", "an alert on a strategy; sends the position after every order "
                     "(long → BUY, flat or short → SELL)", _message("{{strategy.market_position}}")),
        AlertMessage("Strategy: order action", "an alert on a strategy; sends each order's side (buy or sell)",
                     _message("{{strategy.order.action}}")),
        AlertMessage("Indicator: buy", "an alert on an indicator or a price condition that means be long",
                     _message("BUY")),
        AlertMessage("Indicator: sell", "an alert on an indicator or a price condition that means be flat",
                     _message("SELL")),
    ]


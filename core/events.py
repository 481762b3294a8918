"""In-process events of the worker (blinker). Anything the web app must see goes to SQLite instead.

Receivers connect the steps that are not on the trading path: logging, metrics, alerts. A receiver
that raises is logged by `emit` and never stops trading.
"""

from __future__ import annotations

import logging

from blinker import Namespace

log = logging.getLogger(__name__)
_signals = Namespace()

candle_closed = _signals.signal("candle-closed")  # sender: Trader; candle=Candle
decision_made = _signals.signal("decision-made")  # sender: Trader; decision=dict (the stored row)
order_placed = _signals.signal("order-placed")  # sender: broker; order=dict
order_filled = _signals.signal("order-filled")  # sender: broker; order=dict
strategy_reloaded = _signals.signal("strategy-reloaded")  # sender: Trader; policy=Policy
strategy_invalid = _signals.signal("strategy-invalid")  # sender: Trader; error=StrategyError


def emit(signal, sender, **kwargs) -> None:
    """Send a signal; a failing receiver is logged, not raised."""
    if not signal.receivers:
        return
    for receiver in list(signal.receivers_for(sender)):
        try:
            receiver(sender, **kwargs)
        except Exception:  # noqa: BLE001 - a side step must never stop the trading loop
            log.exception("receiver %r of %s failed", receiver, signal.name)

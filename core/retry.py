"""How long to wait before retrying a call that failed for a passing reason (the Binance API, its streams,
the public data archive): one rule, without importing any client."""

from __future__ import annotations

from collections.abc import Callable

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


def backoff_s(attempt: int, random: Callable[[], float]) -> float:
    """Delay before retry number `attempt` (1, 2, ...): doubling from 0.5 s up to 30 s, jittered to
    between half and all of it so that many clients do not retry in step."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return ceiling * (0.5 + random() / 2)

"""The one wall clock of the web app and the commands (the worker injects its own clock for tests)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Now, in UTC milliseconds since 1970."""
    return time.time_ns() // 1_000_000

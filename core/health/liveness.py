"""The worker's beacon: written every few seconds by the worker, read by the web app."""

from __future__ import annotations

import dataclasses

from core import store
from core.store import Database

BEACON_KEY = "worker_beacon_ms"
BEACON_INTERVAL_S = 5
STALE_AFTER_S = 3 * BEACON_INTERVAL_S  # a few missed beacons mean the worker is down


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """Whether the worker is alive, judged from its last beacon."""

    alive: bool
    last_seen_ms: int | None


def beat(db: Database, now_ms: int) -> None:
    """Record that the worker is alive now."""
    store.set_meta(db, BEACON_KEY, str(now_ms), now_ms)


def worker_status(db: Database, now_ms: int, stale_after_s: float = STALE_AFTER_S) -> WorkerStatus:
    """Alive when the last beacon is younger than `stale_after_s`."""
    value = store.get_meta(db, BEACON_KEY)
    if value is None:
        return WorkerStatus(False, None)
    last_seen_ms = int(value)
    return WorkerStatus(now_ms - last_seen_ms <= stale_after_s * 1000, last_seen_ms)

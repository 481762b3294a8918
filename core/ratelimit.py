"""Per-key token buckets: a small in-process rate limit for the webhook."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimited(Exception):
    """A key spent its burst. Caller: refuse the request (HTTP 429) and let the sender retry later."""

    def __init__(self, key: str, retry_after_s: float):
        super().__init__(f"too many requests from {key}: slow down and retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


class RateLimiter:
    """`rate_per_s` requests a second per key with bursts of `burst`; a rate of 0 allows everything.

    The state lives in this process only: under gunicorn each worker process keeps its own buckets,
    so the effective limit is the per-process one times the number of workers.
    """

    MAX_KEYS = 10_000  # past this many keys, full buckets are forgotten (a full bucket is the default)

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket, or raise RateLimited when it is empty."""
        if self.rate_per_s <= 0:
            return
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate_per_s)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                raise RateLimited(key, (1 - tokens) / self.rate_per_s)
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after_s}

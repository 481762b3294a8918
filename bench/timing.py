"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` runs of `fn`, in seconds."""
    return min(sample_seconds(fn, repeat))


def sample_seconds(fn: Callable[[], object], count: int) -> list[float]:
    """`count` runs of `fn`, each timed in seconds, sorted."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def p50_p99_ms(samples: list[float]) -> tuple[float, float]:
    """Median and 99th percentile of sorted samples in seconds, as ms."""
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3

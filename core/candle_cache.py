"""Parsed candle arrays kept next to their file (a CSV, or a zip of the archive), so a second read skips the parse.

The cache is `<file>.omniwise.npz`, holding the arrays and the file's size and modification time: a
file changed in any way (new size or new mtime) is parsed again. A cache that cannot be written (a
read-only folder) or read (damaged) is ignored: it only ever saves time, never changes an answer.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.backtest import load_candles

SUFFIX = ".omniwise.npz"
_FORMAT = 1
_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")


def cache_path(csv_path: Path) -> Path:
    """Where the parsed arrays of `csv_path` are kept."""
    return csv_path.with_name(csv_path.name + SUFFIX)


def load_candles_cached(path: str | Path, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """`core.backtest.load_candles`, through the cache next to the file."""
    return cached(Path(path), lambda: load_candles(path, progress))


def cached(path: Path, parse: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `parse()` makes of the file at `path`, kept next to it until the file changes."""
    stat = path.stat()
    key = np.array([_FORMAT, stat.st_size, stat.st_mtime_ns], dtype=np.int64)
    candles = _read(cache_path(path), key)
    if candles is None:
        candles = parse()
        _write(cache_path(path), key, candles)
    return candles


def _read(cache: Path, key: np.ndarray) -> dict[str, np.ndarray] | None:
    try:
        with np.load(cache, allow_pickle=False) as stored:
            if not np.array_equal(stored["key"], key):
                return None
            return {name: stored[name] for name in _COLUMNS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _write(cache: Path, key: np.ndarray, candles: dict[str, np.ndarray]) -> None:
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as out:
            np.savez(out, key=key, **{name: candles[name] for name in _COLUMNS})
        os.replace(partial, cache)  # readers see the old cache or the whole new one, never half of it
    except OSError:
        partial.unlink(missing_ok=True)

"""What the pages say about a replay: which file, at what speed, how far, and when it finished.

The worker writes it (worker.py) when a replay starts and ends; the web app reads it for the banner. The
progress is the newest candle's time within the file's period, read from Binance's archive name
(`…-2019-10-11.csv` is a day, `…-2019-10.csv` a month); a file named otherwise shows no percentage.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
from pathlib import Path

from core import store
from core.store import Database

META_KEY = "replay"
DAY_MS = 86_400_000
_DAY = re.compile(r"(\d{4})-(\d\d)-(\d\d)\.csv$")
_MONTH = re.compile(r"(\d{4})-(\d\d)\.csv$")


@dataclasses.dataclass(frozen=True)
class Replay:
    """A replay as the banner tells it."""

    file: str
    speed: float
    period: str | None  # "2019-10-11" or "2019-10" from the file's name
    progress_pct: float | None  # how far the newest candle is into that period
    at_ms: int | None  # the newest candle's open time
    is_finished: bool


def started(db: Database, path: str | Path, speed: float, now_ms: int) -> None:
    """The worker begins replaying `path` at `speed` times real time (0: as fast as possible)."""
    store.set_meta(db, META_KEY, json.dumps({"file": Path(path).name, "speed": speed, "finished_at_ms": None}), now_ms)


def live(db: Database, now_ms: int) -> None:
    """The worker trades a live feed: no replay to tell of."""
    if store.get_meta(db, META_KEY):
        store.set_meta(db, META_KEY, "", now_ms)


def finished(db: Database, now_ms: int) -> None:
    """The replay reached the end of its file."""
    value = store.get_meta(db, META_KEY)
    if value:
        store.set_meta(db, META_KEY, json.dumps(json.loads(value) | {"finished_at_ms": now_ms}), now_ms)


def is_replaying(db: Database) -> bool:
    """The worker replays (or replayed to its end) a file: the market's times are the file's, not the clock's."""
    return bool(store.get_meta(db, META_KEY))


def current(db: Database, symbol: str) -> Replay | None:
    """The replay the worker runs or ran, with its progress; None when the worker trades a live feed."""
    value = store.get_meta(db, META_KEY)
    if not value:
        return None
    replay = json.loads(value)
    row = db.execute("SELECT max(open_time_ms) FROM candles WHERE symbol = ?", [symbol]).fetchone()
    at_ms = row[0] if row else None
    period, span = period_of(replay["file"])
    progress = None
    if span is not None and at_ms is not None:
        progress = min(100.0, max(0.0, (at_ms + 60_000 - span[0]) / (span[1] - span[0]) * 100))
    return Replay(replay["file"], replay["speed"], period, progress, at_ms, replay["finished_at_ms"] is not None)


def period_of(name: str) -> tuple[str | None, tuple[int, int] | None]:
    """The period a Binance archive file covers, from its name, and its start and end in ms."""
    if match := _DAY.search(name):
        year, month, day = map(int, match.groups())
        start = calendar.timegm((year, month, day, 0, 0, 0)) * 1000
        return f"{year:04d}-{month:02d}-{day:02d}", (start, start + DAY_MS)
    if match := _MONTH.search(name):
        year, month = map(int, match.groups())
        start = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
        return f"{year:04d}-{month:02d}", (start, start + calendar.monthrange(year, month)[1] * DAY_MS)
    return None, None

"""Keeping the database healthy for months: online backups and the daily retention job."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from core import store
from core.dsl.policy import MAX_WINDOW

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


class BackupError(Exception):
    """The backup could not be made or did not check out. Caller: report it; the database is untouched."""


def backup(db_path: str | Path, dest: str | Path) -> int:
    """Copy the live database to `dest` with SQLite's online backup; returns the pages copied.

    The copy is one consistent snapshot taken while both processes keep writing (a read transaction on
    the WAL), and it is checked with `PRAGMA integrity_check` before this returns.
    """
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest} exists already: give a new file name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not Path(db_path).is_file():
        raise BackupError(f"there is no database at {db_path}")
    source = sqlite3.connect(str(db_path), timeout=30)
    store.create_private(dest)  # a backup holds the same secrets as the database
    target = sqlite3.connect(dest)
    try:
        source.backup(target, pages=-1)  # all pages in one step: one snapshot, never restarted by writers
        pages = target.execute("PRAGMA page_count").fetchone()[0]
        verdict = target.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        target.close()
        dest.unlink(missing_ok=True)
        raise BackupError(f"backup of {db_path} failed: {exc}") from None
    finally:
        source.close()
    target.close()
    if verdict != "ok":
        raise BackupError(f"the copy in {dest} failed its integrity check: {verdict}")
    return pages


@dataclasses.dataclass(frozen=True)
class Retention:
    """How long rows are kept, in days (0 keeps them forever)."""

    candles_days: float = 90
    decisions_days: float = 90
    signals_days: float = 90
    alerts_days: float = 365


def prune(db: Database, symbol: str, now_ms: int, keep: Retention) -> dict[str, int]:
    """Delete rows older than the retention limits; returns how many went from each table.

    Never touches what trading still needs: the newest MAX_WINDOW candles (the live window), decisions
    that produced an order, the newest accepted signal, or the current heartbeat states.
    """
    removed: dict[str, int] = {}
    with store.transaction(db):
        if keep.candles_days:
            removed["candles"] = db.execute(
                "DELETE FROM candles WHERE symbol = ? AND open_time_ms < ? AND open_time_ms < coalesce(("
                "SELECT open_time_ms FROM candles WHERE symbol = ? ORDER BY open_time_ms DESC LIMIT 1 OFFSET ?), 0)",
                [symbol, now_ms - keep.candles_days * DAY_MS, symbol, MAX_WINDOW - 1]).rowcount
        if keep.decisions_days:
            removed["decisions"] = db.execute(
                "DELETE FROM decisions WHERE created_at_ms < ? AND id NOT IN (SELECT decision_id FROM orders)",
                [now_ms - keep.decisions_days * DAY_MS]).rowcount
        if keep.signals_days:
            removed["external_signals"] = db.execute(
                "DELETE FROM external_signals WHERE received_at_ms < ? AND id NOT IN ("
                "SELECT id FROM external_signals WHERE outcome = 'accepted' ORDER BY signal_time_ms DESC, id DESC "
                "LIMIT 1)", [now_ms - keep.signals_days * DAY_MS]).rowcount
        if keep.alerts_days:
            cutoff = now_ms - keep.alerts_days * DAY_MS
            removed["alerts"] = db.execute("DELETE FROM alerts WHERE created_at_ms < ? AND delivered_at_ms IS NOT NULL",
                                           [cutoff]).rowcount
            removed["heartbeat_changes"] = db.execute("DELETE FROM heartbeat_changes WHERE at_ms < ?",
                                                      [cutoff]).rowcount
    if any(removed.values()):
        log.info("retention: removed %s", ", ".join(f"{n} {table}" for table, n in removed.items() if n))
    return removed

"""Keeping the database healthy for months: online backups, restoring one, the worker's lock and the
daily retention job."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import IO

from core import auth, clock, store
from core.binance.orders import CLIENT_ID_PREFIX_KEY, new_client_id_prefix
from core.dsl.policy import MAX_WINDOW
from core.store import Database

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
BACKUP_TIME_KEY = "backup_taken_at_ms"  # meta of a backup's copy: when it was taken
WORKER_LOCK = "worker.lock"  # in the data folder: held (flock) by the running worker for its whole life


class BackupError(Exception):
    """The backup could not be made or did not check out. Caller: report it; the database is untouched."""


def backup(db_path: str | Path, dest: str | Path, now_ms: int | None = None) -> int:
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
    if verdict == "ok":
        now_ms = clock.now_ms() if now_ms is None else now_ms
        with target:
            target.execute("INSERT OR REPLACE INTO meta(key, value, updated_at_ms) VALUES (?, ?, ?)",
                           [BACKUP_TIME_KEY, str(now_ms), now_ms])
    target.close()
    if verdict != "ok":
        raise BackupError(f"the copy in {dest} failed its integrity check: {verdict}")
    return pages


class WorkerRunning(Exception):
    """The worker holds the data folder's lock. Caller: refuse (stop the worker first)."""


def hold_worker_lock(data_dir: str | Path) -> IO:
    """Take the data folder's worker lock and keep it while the returned file stays open (the kernel drops
    it when the process ends, however it ends); WorkerRunning when a worker holds it."""
    path = Path(data_dir) / WORKER_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WorkerRunning(f"a worker is running on {data_dir} (it holds {path})") from None
    return handle


@dataclasses.dataclass(frozen=True)
class BackupSummary:
    """What a backup holds: when it was taken (or the worker's last beacon in it), its newest candle and
    its newest decision."""

    taken_at_ms: int | None
    last_beacon_ms: int | None
    last_candle_ms: int | None
    last_decision: tuple[int, int, str] | None  # (id, created_at_ms, action)


def restore(backup_path: str | Path, data_dir: str | Path, now_ms: int) -> BackupSummary:
    """Put a backup in place of the data folder's database, with a new session key (every cookie made
    since the backup is void) and a new client-id prefix (decision ids start again from the backup's:
    no order id is used twice). Refused while the worker runs (WorkerRunning); a backup that is not
    a sound Omniwise database is refused (BackupError) and nothing is changed."""
    backup_path, data_dir = Path(backup_path), Path(data_dir)
    lock = hold_worker_lock(data_dir)  # held throughout: no worker starts on a half-restored folder
    try:
        if not backup_path.is_file():
            raise BackupError(f"there is no backup at {backup_path}")
        db_path = data_dir / "omniwise.db"
        staged = data_dir / ".omniwise.db.restoring"
        staged.unlink(missing_ok=True)
        store.create_private(staged)
        try:
            _copy_checked(backup_path, staged)
            with store.connect(staged) as db:  # migrates an older backup's schema too
                summary = _summary(db)
                with store.transaction(db):
                    auth.rotate_session_key(db, now_ms)
                    store.set_meta(db, CLIENT_ID_PREFIX_KEY, new_client_id_prefix(), now_ms)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for suffix in ("-wal", "-shm"):  # the replaced database's journal must never be applied to the backup
                Path(f"{staged}{suffix}").unlink(missing_ok=True)
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            os.replace(staged, db_path)
        finally:
            staged.unlink(missing_ok=True)
        return summary
    finally:
        lock.close()


def _copy_checked(source_path: Path, dest: Path) -> None:
    """Copy an SQLite file with the backup API and check it is a sound Omniwise database."""
    try:
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            verdict = target.execute("PRAGMA integrity_check").fetchone()[0]
            has_meta = target.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None
        finally:
            source.close()
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source_path} is not a readable database: {exc}") from None
    if verdict != "ok":
        raise BackupError(f"{source_path} failed its integrity check: {verdict}")
    if not has_meta:
        raise BackupError(f"{source_path} is not an Omniwise database (no meta table)")


def _summary(db: Database) -> BackupSummary:
    def meta_ms(key: str) -> int | None:
        value = store.get_meta(db, key)
        return int(value) if value else None

    (last_candle_ms,) = db.execute("SELECT max(open_time_ms) FROM candles").fetchone()
    decision = db.execute("SELECT id, created_at_ms, action FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
    return BackupSummary(meta_ms(BACKUP_TIME_KEY), meta_ms("worker_beacon_ms"), last_candle_ms,
                         tuple(decision) if decision else None)


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

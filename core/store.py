"""The SQLite database both processes share: connection settings and the schema as migrations."""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_MS = 10_000

migrations = Migrations("omniwise")


@migrations()
def m001_meta(db: Database) -> None:
    # Small key/value facts both processes need: generated secrets, the worker's beacon.
    db["meta"].create({"key": str, "value": str, "updated_at_ms": int}, pk="key")


def open_db(path: str | Path) -> Database:
    """Open the database at `path` in WAL mode with a busy timeout; creates the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a crash of either process; only a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return Database(conn)


def migrate(db: Database) -> list[str]:
    """Apply pending migrations under a write lock, so two processes starting together cannot race."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
    return pending


def connect(path: str | Path) -> Database:
    """Open the database and bring its schema up to date."""
    db = open_db(path)
    migrate(db)
    return db


def get_meta(db: Database, key: str) -> str | None:
    """One value of the meta table, or None."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def set_meta(db: Database, key: str, value: str, now_ms: int) -> None:
    """Write one value of the meta table."""
    with db.conn:
        db.execute(
            "INSERT INTO meta(key, value, updated_at_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            [key, value, now_ms],
        )


def ensure_secret(db: Database, key: str, now_ms: int | None = None) -> str:
    """A random secret kept in the meta table, generated the first time it is asked for."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        value = get_meta(db, key)
        if value is None:
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO meta(key, value, updated_at_ms) VALUES (?, ?, ?)",
                       [key, value, now_ms if now_ms is not None else int(time.time() * 1000)])
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
    return value

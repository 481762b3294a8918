"""The SQLite database both processes share: connection settings and the schema as migrations."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from core import clock
from core.lean_imports import without_dataframes

# Every module reaches sqlite-utils through here (tests/test_layout.py): it imports pandas when installed (the
# tests' reference needs it), for DataFrames we never pass, 0.3-1 s of every start of the web app, the worker
# and each command.
Database = without_dataframes("sqlite_utils").Database
Migrations = without_dataframes("sqlite_utils.migrations").Migrations

BUSY_TIMEOUT_MS = 10_000

migrations = Migrations("omniwise")


@migrations()
def m001_meta(db: Database) -> None:
    # Small key/value facts both processes need: generated secrets, the worker's beacon.
    db["meta"].create({"key": str, "value": str, "updated_at_ms": int}, pk="key")


@migrations()
def m002_external_signals(db: Database) -> None:
    # The signal ledger: every authenticated webhook request, accepted or not (core/webhook/ledger.py).
    db.execute("""
        CREATE TABLE external_signals (
            id INTEGER PRIMARY KEY,
            received_at_ms INTEGER NOT NULL,
            source TEXT,
            signal TEXT CHECK (signal IN ('BUY', 'SELL')),
            signal_time_ms INTEGER,
            symbol TEXT,
            remote_addr TEXT,
            raw_body TEXT,
            outcome TEXT NOT NULL
        )""")
    # One row per delivered signal; refused rows have a NULL signal, and NULLs never collide.
    db.execute("CREATE UNIQUE INDEX external_signals_once ON external_signals(source, signal, signal_time_ms, symbol)")
    db.execute("CREATE INDEX external_signals_latest ON external_signals(signal_time_ms) WHERE outcome = 'accepted'")
    db.execute("CREATE INDEX external_signals_latest_by_source ON external_signals(source, signal_time_ms) "
               "WHERE outcome = 'accepted'")


@migrations()
def m003_trading(db: Database) -> None:
    # Closed 1-minute candles, Binance's kline columns.
    db.execute("""CREATE TABLE candles (
        symbol TEXT NOT NULL, open_time_ms INTEGER NOT NULL,
        open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
        volume REAL NOT NULL, close_time_ms INTEGER NOT NULL, quote_volume REAL NOT NULL,
        trades INTEGER NOT NULL, taker_buy_base REAL NOT NULL, taker_buy_quote REAL NOT NULL,
        PRIMARY KEY (symbol, open_time_ms)) WITHOUT ROWID""")
    # One row per closed candle (and per correction of the heartbeat's follow mode), written before
    # any order, so a restart can tell what was already decided.
    db.execute("""CREATE TABLE decisions (
        id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, candle_open_time_ms INTEGER NOT NULL,
        action TEXT NOT NULL, target TEXT, position_before TEXT NOT NULL,
        rule_index INTEGER, rule_text TEXT, strategy_version TEXT, reason TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (symbol, candle_open_time_ms, reason))""")
    # An order's client id is derived from its decision, so a decision can never send two orders.
    db.execute("""CREATE TABLE orders (
        id INTEGER PRIMARY KEY, decision_id INTEGER NOT NULL UNIQUE REFERENCES decisions(id),
        client_order_id TEXT NOT NULL UNIQUE, broker TEXT NOT NULL, symbol TEXT NOT NULL,
        side TEXT NOT NULL, status TEXT NOT NULL, qty REAL, price REAL, quote REAL, fee_quote REAL,
        exchange_order_id TEXT, error TEXT, created_at_ms INTEGER NOT NULL, filled_at_ms INTEGER)""")
    db.execute("CREATE INDEX orders_status ON orders(status)")
    db.execute("""CREATE TABLE paper_accounts (
        symbol TEXT PRIMARY KEY, quote_balance REAL NOT NULL, base_qty REAL NOT NULL,
        entry_price REAL, updated_at_ms INTEGER NOT NULL)""")


@migrations()
def m004_heartbeat(db: Database) -> None:
    # The heartbeat's current verdict (one row per watched thing: "position" and "worker").
    db.execute("""CREATE TABLE heartbeat (
        subject TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL, since_ms INTEGER NOT NULL,
        checked_at_ms INTEGER NOT NULL, last_alert_ms INTEGER)""")
    # Every change of state, as a row: the history the operator reads back.
    db.execute("""CREATE TABLE heartbeat_changes (
        id INTEGER PRIMARY KEY, subject TEXT NOT NULL, old_state TEXT, new_state TEXT NOT NULL,
        reason TEXT NOT NULL, at_ms INTEGER NOT NULL)""")
    # The alert outbox: written with the state change, delivered (and retried) apart from trading.
    db.execute("""CREATE TABLE alerts (
        id INTEGER PRIMARY KEY, created_at_ms INTEGER NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL,
        message TEXT NOT NULL, delivered_at_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL, last_error TEXT, claimed_until_ms INTEGER)""")
    db.execute("CREATE INDEX alerts_due ON alerts(next_attempt_ms) WHERE delivered_at_ms IS NULL")


@migrations()
def m005_operator_ui(db: Database) -> None:
    # Every strategy text the editor saved (or found in the file and was about to overwrite).
    db.execute("""CREATE TABLE strategy_versions (
        id INTEGER PRIMARY KEY, version TEXT NOT NULL, text TEXT NOT NULL, saved_at_ms INTEGER NOT NULL)""")
    db.execute("CREATE INDEX strategy_versions_by_version ON strategy_versions(version)")
    # Failed logins by address, shared by every web process, for the login rate limit.
    db.execute("CREATE TABLE login_failures (address TEXT NOT NULL, at_ms INTEGER NOT NULL)")
    db.execute("CREATE INDEX login_failures_by_address ON login_failures(address, at_ms)")
    # The chart's trade markers: filled orders of a time range.
    db.execute("CREATE INDEX orders_filled ON orders(symbol, filled_at_ms) WHERE filled_at_ms IS NOT NULL")


@migrations()
def m006_risk_exits(db: Database) -> None:
    # The open trade's risk state (core/open_trade.py): its entry, the ATR of its decision candle, the
    # trailing peak, and the re-entry block after a risk exit. One row per symbol, survives restarts.
    db.execute("""CREATE TABLE risk_state (
        symbol TEXT PRIMARY KEY, entry_price REAL, atr_json TEXT, peak REAL,
        reentry_blocked INTEGER NOT NULL DEFAULT 0, updated_at_ms INTEGER NOT NULL)""")
    # The share of the quote balance a paper BUY spends (SIZE), fixed when the order is decided.
    db.execute("ALTER TABLE orders ADD COLUMN size_share REAL")


@migrations()
def m007_cockpit(db: Database) -> None:
    # The operator's pause, resume and flatten requests: the worker obeys them, both processes show them.
    db.execute("""CREATE TABLE trading_controls (
        id INTEGER PRIMARY KEY, action TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'flatten')),
        requested_at_ms INTEGER NOT NULL, done_at_ms INTEGER, result TEXT)""")
    # An acknowledged alert silences the repeats of its episode; a mismatch in its grace has a deadline.
    db.execute("ALTER TABLE alerts ADD COLUMN acknowledged_at_ms INTEGER")
    db.execute("ALTER TABLE heartbeat ADD COLUMN pending_until_ms INTEGER")


@migrations()
def m008_heartbeat_states(db: Database) -> None:
    # SQLite adds a CHECK only by rebuilding the table. Every row the code ever wrote passes it; a row
    # that would not is dropped rather than block the start: it is the current verdict, written anew
    # at the next check. One vocabulary a subject, as core/health/heartbeat.py's STATES.
    states = """(subject = 'position' AND state IN ('ok', 'mismatch', 'stale', 'unknown'))
        OR (subject IN ('worker', 'stream') AND state IN ('alive', 'down'))
        OR (subject = 'strategy' AND state IN ('valid', 'invalid'))"""
    db.execute(f"""CREATE TABLE heartbeat_checked (
        subject TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL, since_ms INTEGER NOT NULL,
        checked_at_ms INTEGER NOT NULL, last_alert_ms INTEGER, pending_until_ms INTEGER,
        CHECK ({states}))""")
    db.execute(f"""INSERT INTO heartbeat_checked SELECT subject, state, reason, since_ms, checked_at_ms, last_alert_ms,
        pending_until_ms FROM heartbeat WHERE {states}""")
    db.execute("DROP TABLE heartbeat")
    db.execute("ALTER TABLE heartbeat_checked RENAME TO heartbeat")


@migrations()
def m009_timeframes(db: Database) -> None:
    # The strategy's timeframe when the decision was made (NULL before timeframes: 1 minute); its window
    # is the one holding the decision's minute, candle_open_time_ms.
    db.execute("ALTER TABLE decisions ADD COLUMN timeframe_minutes INTEGER")


@migrations()
def m010_shorts(db: Database) -> None:
    # The position an order is to reach (long, flat, short): a SELL that opens a short and one that closes a
    # long are told apart by it. NULL on older rows: BUY opened, SELL closed.
    db.execute("ALTER TABLE orders ADD COLUMN target TEXT")
    # The open trade's side (or, after a risk exit, the side that may not be entered again yet).
    db.execute("ALTER TABLE risk_state ADD COLUMN is_short INTEGER NOT NULL DEFAULT 0")
    # Signal words grow SHORT and FLAT (DESIGN.md "External signals"): SQLite changes a CHECK only by
    # rebuilding the table, from its own CREATE text (so columns added since come along), indexes included.
    table_sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'external_signals'").fetchone()[0]
    index_sqls = [row[0] for row in db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND "
                                               "tbl_name = 'external_signals' AND sql IS NOT NULL").fetchall()]
    old_check, new_check = "CHECK (signal IN ('BUY', 'SELL'))", "CHECK (signal IN ('BUY', 'SELL', 'SHORT', 'FLAT'))"
    assert old_check in table_sql, "external_signals' CHECK is not the one m002 made"
    db.execute(table_sql.replace(old_check, new_check).replace("external_signals", "external_signals_words", 1))
    db.execute("INSERT INTO external_signals_words SELECT * FROM external_signals")
    db.execute("DROP TABLE external_signals")
    db.execute("ALTER TABLE external_signals_words RENAME TO external_signals")
    for sql in index_sqls:
        db.execute(sql)


def open_db(path: str | Path) -> Database:
    """Open the database at `path` in WAL mode with a busy timeout; creates the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private(path)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a crash of either process; only a power cut can lose the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return Database(conn)


def create_private(path: str | Path) -> None:
    """Create `path` empty with mode 0600 (the database holds the webhook token and the session key).

    SQLite gives its -wal and -shm files the database's mode, so they are private too. An existing file
    is left as it is.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return
    os.chmod(path, 0o600)  # whatever the umask


def is_writable(db: Database, timeout_ms: int = 1000) -> bool:
    """Whether a write could start now: the write lock is free within `timeout_ms` and the file is writable."""
    busy_timeout_ms = db.execute("PRAGMA busy_timeout").fetchone()[0]
    db.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
    try:
        db.conn.execute("BEGIN IMMEDIATE")  # a read-only file takes the lock too: only a write tells
        try:
            version = db.conn.execute("PRAGMA user_version").fetchone()[0]
            db.conn.execute(f"PRAGMA user_version={int(version)}")
        finally:
            db.conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # read-only file or folder, or locked longer than the timeout
        return False
    finally:
        db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")


def migrate(db: Database) -> list[str]:
    """Apply pending migrations under a write lock, so two processes starting together cannot race."""
    with transaction(db):
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
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
    """Write one value of the meta table: part of the caller's transaction if one is open, else committed at once."""
    db.execute(
        "INSERT INTO meta(key, value, updated_at_ms) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        [key, value, now_ms],
    )


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """Group statements into one transaction: all of them commit, or none. `with db.conn:` alone does not:
    sqlite-utils 4 commits every write of `db.execute` at once unless a transaction is already open.
    So a single write statement needs no transaction (SQLite applies one statement whole); two or more do.
    IMMEDIATE takes the write lock first (waiting up to the busy timeout): a deferred transaction that read
    before writing would fail at once with "database is locked" if the other process wrote meanwhile."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def ensure_secret(db: Database, key: str, now_ms: int | None = None) -> str:
    """A random secret kept in the meta table, generated the first time it is asked for."""
    with transaction(db):
        value = get_meta(db, key)
        if value is None:
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO meta(key, value, updated_at_ms) VALUES (?, ?, ?)",
                       [key, value, now_ms if now_ms is not None else clock.now_ms()])
    return value

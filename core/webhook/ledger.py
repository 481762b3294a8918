"""The signal ledger, the table `external_signals`: writers take turns, each delivery is one row, the latest.

Every authenticated delivery becomes one row before it is answered: `outcome` is 'accepted', 'stale'
(older than the newest accepted signal of its source: kept, never the latest) or 'rejected: REASON'
(then `signal` is NULL). The latest signal is the accepted row with the greatest signal time, so no row
ever has to be rewritten to move a flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from core import store
from core.store import Database

log = logging.getLogger(__name__)

# Waits for the ledger, kept short: TradingView gives up after 3 s, and a quick 503 lets other senders retry.
# One deadline covers the whole wait (this process's threads, the other processes, SQLite's lock).
TURN_TIMEOUT_S = 1.0
LEDGER_BUSY_TIMEOUT_MS = 1000
# Once a write timed out on a locked database, requests wait only this long until a write succeeds
# again: otherwise each request queued behind the first would wait its full second in turn.
WHILE_BUSY_TIMEOUT_S = 0.1
BUSY_MEMORY_S = 10.0  # after this long without any attempt, a timeout is forgotten
ACCEPTED, STALE, REJECTED = "accepted", "stale", "rejected"


class LedgerBusy(Exception):
    """The ledger could not be written in time. Caller: answer 503; the sender may retry."""


@dataclasses.dataclass(frozen=True)
class Signal:
    """The position a sender believes in: BUY (be long) or SELL (be flat), as of `signal_time_ms`."""

    signal: str
    signal_time_ms: int
    source: str
    symbol: str


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What became of a recorded signal: its ledger row, its outcome, whether it was seen before."""

    id: int
    outcome: str
    is_duplicate: bool
    signal: Signal

    def as_json(self) -> dict[str, object]:
        """The webhook's answer."""
        return {"id": self.id, "accepted": self.outcome == ACCEPTED, "duplicate": self.is_duplicate,
                "outcome": self.outcome, "signal": self.signal.signal, "signal_time_ms": self.signal.signal_time_ms}


@dataclasses.dataclass(frozen=True)
class LedgerSignal:
    """An accepted row of the ledger, as the heartbeat and the status page read it."""

    id: int
    signal: str
    signal_time_ms: int
    received_at_ms: int
    source: str
    symbol: str


def normalize_symbol(text: str) -> str:
    """A market name without exchange prefix and perpetual suffix: 'BINANCE:BTCUSDT.P' -> 'BTCUSDT'."""
    name = text.strip().upper().rpartition(":")[2]
    for suffix in (".P", "PERP"):
        name = name.removesuffix(suffix)
    return name.replace("/", "").replace("-", "")


def record(db: Database, signal: Signal, *, received_at_ms: int, remote_addr: str, raw_body: str) -> Receipt:
    """Write a parsed signal to the ledger once: accepted, stale, or the receipt of its first delivery."""
    key = (signal.source, signal.signal, signal.signal_time_ms, signal.symbol)
    # One transaction: the duplicate and stale checks and the insert see the same ledger in every process.
    with _write_turn(db), store.transaction(db):
        first = next(db.query("SELECT id, outcome FROM external_signals "
                              "WHERE source = ? AND signal = ? AND signal_time_ms = ? AND symbol = ?", key), None)
        if first is not None:
            return Receipt(first["id"], first["outcome"], True, signal)
        newest = db.execute("SELECT MAX(signal_time_ms) FROM external_signals "
                            "WHERE source = ? AND outcome = 'accepted'", [signal.source]).fetchone()[0]
        outcome = STALE if newest is not None and signal.signal_time_ms < newest else ACCEPTED
        cursor = db.execute(
            "INSERT INTO external_signals (received_at_ms, source, signal, signal_time_ms, symbol, remote_addr, "
            "raw_body, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [received_at_ms, *key, remote_addr, raw_body, outcome])
    log.info("external signal %s from %s at %d: %s (ledger id %d)", signal.signal, signal.source,
             signal.signal_time_ms, outcome, cursor.lastrowid)
    return Receipt(cursor.lastrowid, outcome, False, signal)


def open_ledger(path: str | Path) -> Database:
    """A connection for ledger writes: synchronous=FULL, so an acknowledged signal survives a power cut.

    The store's NORMAL survives a crash of any process but may lose the last commits to a power cut,
    and a lost signal is not sent again (TradingView never retries). FULL costs one fsync a write.
    """
    db = store.open_db(path)
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={LEDGER_BUSY_TIMEOUT_MS}")
    return db


def latest_signal(db: Database, symbol: str | None = None) -> LedgerSignal | None:
    """The accepted signal with the greatest signal time (the later arrival on a tie), or None."""
    sql = ("SELECT id, signal, signal_time_ms, received_at_ms, source, symbol FROM external_signals "
           "WHERE outcome = 'accepted'")
    params: list[object] = []
    if symbol is not None:
        sql += " AND symbol = ?"
        params.append(normalize_symbol(symbol))
    row = next(db.query(sql + " ORDER BY signal_time_ms DESC, id DESC LIMIT 1", params), None)
    return None if row is None else LedgerSignal(**row)


# -- helpers ------------------------------------------------------------------------------------

_turns: dict[str, tuple[threading.Lock, int | None]] = {}
_turns_lock = threading.Lock()


@contextlib.contextmanager
def _write_turn(db: Database):
    """Ledger writers take turns: threads on a lock, processes on flock() of a file beside the database.

    Without it they queue in SQLite's busy handler, which polls with sleeps of 1, 2, 5, 10... ms; under
    load that made the p99 latency several times longer. A blocked flock() wakes as soon as it is free.
    """
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    with _turns_lock:
        if path not in _turns:
            fd = os.open(path + "-ledger.lock", os.O_RDWR | os.O_CREAT, 0o600) if path else None
            _turns[path] = (threading.Lock(), fd)
        lock, fd = _turns[path]
    now = time.monotonic()
    is_busy = _busy_since is not None and now - _busy_since < BUSY_MEMORY_S
    deadline = now + (WHILE_BUSY_TIMEOUT_S if is_busy else TURN_TIMEOUT_S)
    if not lock.acquire(timeout=deadline - now):
        _note_busy()
        raise LedgerBusy(f"no turn to write the ledger within {deadline - now:g} s")
    try:
        if fd is not None and not _flock_until(fd, deadline, is_busy):
            _note_busy()
            raise LedgerBusy("another process holds the ledger")
        try:
            wait_ms = max(1, round((deadline - time.monotonic()) * 1000))
            db.conn.execute(f"PRAGMA busy_timeout={min(wait_ms, LEDGER_BUSY_TIMEOUT_MS)}")
            yield
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            _note_busy()
            raise LedgerBusy(f"the database is locked: {exc}") from exc
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        lock.release()
    _note_busy(False)


_busy_since: float | None = None  # when a ledger write of this process last timed out, until one succeeds


def _note_busy(is_busy: bool = True) -> None:
    global _busy_since
    _busy_since = time.monotonic() if is_busy else None


def _flock_until(fd: int, deadline: float, is_busy: bool) -> bool:
    """Take the process lock by `deadline`.

    Normally a blocked flock() waits: it wakes the moment the holder is done, and the holder keeps it for one
    write bounded by its own deadline, so the wait is bounded too (polling here cost a quarter of the webhook's
    throughput). While the ledger is known busy, a blocked flock() cannot time out, so it is polled instead.
    """
    if not is_busy:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


def _forget_turns() -> None:
    # A forked child shares its parent's open files, so its flock would not exclude the parent's.
    global _turns_lock
    for _, fd in _turns.values():
        if fd is not None:
            os.close(fd)
    _turns.clear()
    _turns_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_turns)


def record_refusal(db: Database, *, received_at_ms: int, remote_addr: str, raw_body: str, reason: str,
                   source: str | None, symbol: str | None) -> int:
    """Write a refused delivery to the ledger (`reason` already made safe to show); return its row id."""
    with _write_turn(db):  # one INSERT: db.execute commits it on its own
        cursor = db.execute(
            "INSERT INTO external_signals (received_at_ms, source, signal, signal_time_ms, symbol, remote_addr, "
            "raw_body, outcome) VALUES (?, ?, NULL, NULL, ?, ?, ?, ?)",
            [received_at_ms, source, symbol, remote_addr, raw_body, f"{REJECTED}: {reason}"])
    log.info("external signal refused (ledger id %d): %s", cursor.lastrowid, reason)
    return cursor.lastrowid

"""The operator's hands on trading: pause (no new entries), resume, and flatten (close the position now).

Requests are rows of `trading_controls`, written by the web app and obeyed by the worker, so they
survive a restart of either process. Pausing stops entries only: SELL rules, risk exits and a
flatten still act, because a pause must never trap the operator in a position.
"""

from __future__ import annotations

import dataclasses

from core import store
from core.health import alerts
from core.store import Database

PAUSE, RESUME, FLATTEN = "pause", "resume", "flatten"


@dataclasses.dataclass(frozen=True)
class TradingState:
    """Whether new entries are allowed, since when, and a flatten still waiting for the worker."""

    is_paused: bool
    since_ms: int | None
    flatten_requested_ms: int | None = None

    def as_json(self, iso) -> dict:
        """The shape of /api/v1/status's `trading`; `iso` formats a time."""
        return {"paused": self.is_paused, "since": iso(self.since_ms),
                "flatten_requested_at": iso(self.flatten_requested_ms)}


def trading_state(db: Database) -> TradingState:
    """The newest pause or resume decides; no request ever means trading (since the beginning)."""
    row = db.execute("SELECT action, requested_at_ms FROM trading_controls WHERE action IN ('pause', 'resume') "
                     "ORDER BY id DESC LIMIT 1").fetchone()
    waiting = db.execute("SELECT min(requested_at_ms) FROM trading_controls WHERE action = 'flatten' "
                         "AND done_at_ms IS NULL").fetchone()[0]
    if row is None:
        return TradingState(False, None, waiting)
    return TradingState(row[0] == PAUSE, row[1], waiting)


def is_paused(db: Database) -> bool:
    """True while the operator has paused new entries."""
    return trading_state(db).is_paused


def pause(db: Database, now_ms: int) -> bool:
    """Stop new entries (exits still act); recorded and alerted. False when already paused."""
    return _switch(db, PAUSE, now_ms, "TRADING PAUSED by the operator: no new entries; exits, SELL rules and "
                                      "risk exits still act")


def resume(db: Database, now_ms: int) -> bool:
    """Allow new entries again; recorded and alerted. False when not paused."""
    return _switch(db, RESUME, now_ms, "TRADING RESUMED by the operator: the strategy may enter again")


def _switch(db: Database, action: str, now_ms: int, message: str) -> bool:
    with store.transaction(db):
        if trading_state(db).is_paused == (action == PAUSE):
            return False
        db.execute("INSERT INTO trading_controls(action, requested_at_ms, done_at_ms) VALUES (?, ?, ?)",
                   [action, now_ms, now_ms])
        alerts.queue(db, "trading", "paused" if action == PAUSE else "resumed", message, now_ms, is_failure=False)
    return True


def request_flatten(db: Database, now_ms: int) -> int:
    """Ask the worker to close the position now; returns the request's id (a waiting one is reused)."""
    with store.transaction(db):
        row = db.execute("SELECT id FROM trading_controls WHERE action = 'flatten' AND done_at_ms IS NULL "
                         "ORDER BY id LIMIT 1").fetchone()
        if row:
            return row[0]
        return db.execute("INSERT INTO trading_controls(action, requested_at_ms) VALUES ('flatten', ?)",
                          [now_ms]).lastrowid


def waiting_flatten(db: Database) -> int | None:
    """The id of a flatten request the worker has not carried out yet, or None."""
    row = db.execute("SELECT id FROM trading_controls WHERE action = 'flatten' AND done_at_ms IS NULL "
                     "ORDER BY id LIMIT 1").fetchone()
    return row[0] if row else None


def carry_out_flatten(db: Database, trader, now_ms: int) -> str | None:
    """Carry out the waiting flatten request with `trader` (core.trader.Trader), record and alert what it did;
    returns that, or None when no flatten waits. A request a crash interrupted is carried out again: the
    trader reports its earlier order's real fill and closes what the exchange still holds."""
    request_id = waiting_flatten(db)
    if request_id is None:
        return None
    result = trader.flatten(request_id)
    finish_flatten(db, request_id, result, now_ms)
    return result


def finish_flatten(db: Database, request_id: int, result: str, now_ms: int) -> None:
    """Record what a flatten did and alert it (call inside the worker's transaction or alone)."""
    with store.transaction(db):
        db.execute("UPDATE trading_controls SET done_at_ms = ?, result = ? WHERE id = ? AND done_at_ms IS NULL",
                   [now_ms, result, request_id])
        alerts.queue(db, "trading", "flattened", f"FLATTEN by the operator: {result}", now_ms, is_failure=False)


def last_flatten(db: Database) -> dict | None:
    """The newest flatten the worker carried out: requested_at_ms, done_at_ms, result; None before the first."""
    row = db.execute("SELECT requested_at_ms, done_at_ms, result FROM trading_controls WHERE action = 'flatten' "
                     "AND done_at_ms IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else dict(zip(("requested_at_ms", "done_at_ms", "result"), row))


def history(db: Database, limit: int = 10) -> list[dict]:
    """The newest requests first: action, requested_at_ms, done_at_ms, result."""
    cursor = db.execute("SELECT id, action, requested_at_ms, done_at_ms, result FROM trading_controls "
                        "ORDER BY id DESC LIMIT ?", [limit])
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]

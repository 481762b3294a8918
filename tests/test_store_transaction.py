"""core.store.transaction: the trading step's statements commit together, and never lose to the web app."""

from __future__ import annotations

import sqlite3

import pytest

from core import store


def meta_keys(db) -> list[str]:
    return [key for (key,) in db.execute("SELECT key FROM meta ORDER BY key")]


def test_statements_in_a_transaction_roll_back_together(db):
    with pytest.raises(RuntimeError):
        with store.transaction(db):
            store.set_meta(db, "a", "1", 0)
            store.set_meta(db, "b", "2", 0)
            raise RuntimeError("crash between two writes")
    assert meta_keys(db) == []


def test_with_conn_alone_would_have_kept_the_first_write(db):
    # Why store.transaction exists: sqlite-utils 4 commits each db.execute write on its own.
    with pytest.raises(RuntimeError):
        with db.conn:
            store.set_meta(db, "a", "1", 0)
            raise RuntimeError("crash")
    assert meta_keys(db) == ["a"]


def test_a_transaction_that_reads_first_keeps_the_write_lock_against_the_other_process(db, settings):
    other = sqlite3.connect(settings.db_path, timeout=0.1)  # the web app, impatient
    try:
        with store.transaction(db):
            db.execute("SELECT count(*) FROM meta").fetchone()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO meta(key, value, updated_at_ms) VALUES ('web', 'x', 0)")
            store.set_meta(db, "worker", "y", 0)  # a deferred BEGIN would fail here instead
    finally:
        other.close()
    assert meta_keys(db) == ["worker"]

"""Operations: an online backup while the worker writes, retention that keeps what trading needs, logs."""

from __future__ import annotations

import re
import sqlite3

import pytest

from core import maintenance
from core.maintenance import DAY_MS, BackupError, Retention
from tests.conftest import SHARED_DATA
from tests.processes import count, query, start_worker, stop_worker, wait_until

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"


def test_backup_while_the_worker_writes_is_consistent_and_complete(data_dir, tmp_path, runner):
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=3000, symbol="XRPETH", log_level="INFO")
    try:
        wait_until(lambda: count(data_dir, "candles") >= 100, worker, what="100 candles")
        committed = {row[0] for row in query(data_dir, "SELECT open_time_ms FROM candles")}
        decided = {row[0] for row in query(data_dir, "SELECT id FROM decisions")}
        dest = tmp_path / "backups" / "omniwise-copy.db"
        result = runner.invoke(args=["backup", str(dest)])
        assert result.exit_code == 0, result.output
        # In-process the backup takes milliseconds: wait for the worker's next candle rather than race it.
        still_writing = wait_until(lambda: count(data_dir, "candles") > len(committed) and count(data_dir, "candles"),
                                   worker, timeout_s=30, what="a candle written after the backup began")
    finally:
        output = stop_worker(worker)
    copy = sqlite3.connect(dest)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    copied = {row[0] for row in copy.execute("SELECT open_time_ms FROM candles")}
    assert committed <= copied and decided <= {row[0] for row in copy.execute("SELECT id FROM decisions")}
    assert still_writing > len(committed)  # the worker really was writing around the backup
    copy.close()
    # Both processes log in one format: time, level, logger, message.
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} [A-Z]+ [\w.]+: ", line) for line in lines)


def test_backup_refuses_to_overwrite_and_needs_a_database(tmp_path, db, settings):
    existing = tmp_path / "there.db"
    existing.write_text("x")
    with pytest.raises(BackupError, match="exists already"):
        maintenance.backup(settings.db_path, existing)
    with pytest.raises(BackupError, match="no database"):
        maintenance.backup(tmp_path / "missing.db", tmp_path / "new.db")


NOW = 2_000_000_000_000


def test_retention_drops_old_rows_but_keeps_what_trading_needs(db, monkeypatch):
    monkeypatch.setattr(maintenance, "MAX_WINDOW", 5)  # the live window: the newest 5 candles stay
    old, recent = NOW - 200 * DAY_MS, NOW - DAY_MS
    for i in range(8):  # 8 old candles: 3 may go, the newest 5 feed the live window
        db.execute("INSERT INTO candles VALUES ('XRPETH', ?, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1)", [old + i * 60_000])
    for i, created in enumerate((old, old, recent)):
        db.execute("INSERT INTO decisions(symbol, candle_open_time_ms, action, position_before, reason, created_at_ms) "
                   "VALUES ('XRPETH', ?, 'BUY', 'flat', 'strategy', ?)", [i, created])
    db.execute("INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, created_at_ms) "
               "VALUES (1, 'omniwise-1', 'paper', 'XRPETH', 'BUY', 'filled', ?)", [old])
    for i, outcome in enumerate(("accepted", "accepted", "rejected: token")):
        db.execute("INSERT INTO external_signals(received_at_ms, source, signal, signal_time_ms, symbol, outcome) "
                   "VALUES (?, 'tv', ?, ?, 'XRPETH', ?)", [old + i, "BUY" if outcome == "accepted" else None,
                                                          old + i, outcome])
    db.conn.commit()
    removed = maintenance.prune(db, "XRPETH", NOW, Retention(candles_days=90, decisions_days=90, signals_days=90))
    assert removed["candles"] == 3 and db.execute("SELECT count(*) FROM candles").fetchone() == (5,)
    assert [r[0] for r in db.execute("SELECT id FROM decisions ORDER BY id")] == [1, 3]  # 1 has an order
    assert db.execute("SELECT id FROM external_signals").fetchall() == [(2,)]  # the newest accepted stays
    assert maintenance.prune(db, "XRPETH", NOW, Retention())["candles"] == 0  # nothing more to do


def test_the_database_and_its_backups_are_private_to_their_owner(tmp_path):
    import os
    import stat

    from core import store
    from core.maintenance import backup

    previous = os.umask(0o022)
    try:
        with store.connect(tmp_path / "data" / "omniwise.db") as db:
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            backup(tmp_path / "data" / "omniwise.db", tmp_path / "backups" / "copy.db")
            files = [tmp_path / "data" / name for name in ("omniwise.db", "omniwise.db-wal", "omniwise.db-shm")]
            files.append(tmp_path / "backups" / "copy.db")
            modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    finally:
        os.umask(previous)
    assert modes == dict.fromkeys(modes, 0o600)

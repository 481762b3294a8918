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


def meta_of(path, key: str) -> str | None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    finally:
        connection.close()
    return row[0] if row else None


def test_restore_is_refused_while_the_worker_runs_then_puts_the_backup_in_place_with_new_keys(
        data_dir, tmp_path, runner):
    from core import auth
    from core.binance.orders import CLIENT_ID_PREFIX_KEY

    db_path = data_dir / "omniwise.db"
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=3000, symbol="XRPETH")
    try:
        wait_until(lambda: count(data_dir, "decisions") >= 20, worker, what="20 decisions")
        backup_file = tmp_path / "backups" / "one.db"
        assert runner.invoke(args=["backup", str(backup_file)]).exit_code == 0
        second = start_worker(data_dir, replay_file=AGG_TRADES, symbol="XRPETH")
        assert second.wait(timeout=30) == 2 and "a worker is running" in second.stdout.read()
        refused = runner.invoke(args=["restore", str(backup_file)])
        assert refused.exit_code == 1 and "a worker is running" in refused.output, refused.output
        wait_until(lambda: count(data_dir, "decisions") > 40, worker, what="decisions after the backup")
    finally:
        stop_worker(worker)
    with sqlite3.connect(db_path) as live:
        live.execute("INSERT OR REPLACE INTO meta VALUES (?, 'owAAAAAAAA', 0)", [CLIENT_ID_PREFIX_KEY])
    before = {key: meta_of(db_path, key) for key in (auth.SIGNING_KEY, auth.GENERATION_KEY)}
    backup_candles = sqlite3.connect(backup_file).execute("SELECT count(*), max(open_time_ms) FROM candles").fetchone()
    last = sqlite3.connect(backup_file).execute("SELECT id, action FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
    assert count(data_dir, "candles") > backup_candles[0]  # the live database went on after the backup

    result = runner.invoke(args=["restore", str(backup_file)])
    assert result.exit_code == 0, result.output
    assert count(data_dir, "candles") == backup_candles[0]
    assert not (data_dir / "omniwise.db-wal").exists() or (data_dir / "omniwise.db-wal").stat().st_size == 0
    from datetime import UTC, datetime
    last_candle = datetime.fromtimestamp(backup_candles[1] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"last candle:    {last_candle}" in result.output
    assert f"last decision:  #{last[0]} {last[1]} at" in result.output
    assert re.search(r"taken at: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", result.output)
    prefix = meta_of(db_path, CLIENT_ID_PREFIX_KEY)
    assert re.fullmatch(r"ow[A-Za-z0-9]{8}", prefix)
    assert prefix not in ("owAAAAAAAA", meta_of(backup_file, CLIENT_ID_PREFIX_KEY))
    assert meta_of(db_path, auth.SIGNING_KEY) not in (before[auth.SIGNING_KEY], meta_of(backup_file, auth.SIGNING_KEY))
    assert int(meta_of(db_path, auth.GENERATION_KEY)) > int(meta_of(backup_file, auth.GENERATION_KEY) or 0)
    assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_restore_refuses_what_is_not_an_omniwise_backup_and_changes_nothing(data_dir, tmp_path, runner, db,
                                                                            content):
    db.execute("CREATE TABLE kept (x)")
    db.conn.commit()
    bad = tmp_path / "bad.db"
    bad.write_bytes(content)
    result = runner.invoke(args=["restore", str(bad)])
    assert result.exit_code == 1 and "nothing was changed" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'kept'").fetchone() == ("kept",)
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".omniwise")) == []

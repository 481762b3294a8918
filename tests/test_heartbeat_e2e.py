"""Both processes on a replay with the paper broker: signals posted to the webhook, strategy edited live,
and the heartbeat's alerts arriving at a real Apprise json:// receiver."""

from __future__ import annotations

import json
import os
import time

import pytest

from core.health import alerts
from tests.conftest import SHARED_DATA
from tests.processes import TOKEN, AlertSink, Server, query, start_worker, stop_worker, wait_until

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
NEVER = "IF CLOSE < 0 THEN BUY\n"  # holds: the paper account stays flat


def write_strategy(data_dir, text):
    tmp = data_dir / "strategy.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, data_dir / "strategy.txt")  # as the editor saves


@pytest.fixture
def sink():
    receiver = AlertSink()
    yield receiver
    receiver.close()


def test_mismatch_alerts_once_then_recovers_when_the_strategy_follows(data_dir, sink):
    write_strategy(data_dir, NEVER)
    server = Server(data_dir, OMNIWISE_SYMBOL="XRPETH").start()
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, symbol="XRPETH",
                          heartbeat_interval=1, heartbeat_grace=0, alert_urls=sink.url, webhook_token=TOKEN)
    try:
        def arrived(text):
            return wait_until(lambda: any(text in m for m in sink.messages()), worker, timeout_s=30, what=text)

        wait_until(lambda: query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'position'") == [("unknown",)],
                   worker, what="the first check, before any signal")  # unknown, and nobody alerted
        server.post_signal("BUY", int(time.time() * 1000))
        arrived("HEARTBEAT FAILURE: signal is BUY but no long position")

        write_strategy(data_dir, "IF CLOSE > 0 THEN BUY\n")
        arrived("HEARTBEAT RECOVERED: signal is BUY and position is long")
        assert query(data_dir, "SELECT count(*) FROM orders WHERE side = 'BUY' AND status = 'filled'") == [(1,)]

        server.post_signal("SELL", int(time.time() * 1000))
        arrived("HEARTBEAT FAILURE: signal is SELL but position is long")
        write_strategy(data_dir, "IF CLOSE > 0 THEN SELL\n")
        arrived("HEARTBEAT RECOVERED: signal is SELL and position is flat")

        status, _, body = server.request("GET", f"/api/v1/status?token={TOKEN}")
        report = json.loads(body)
        assert status == 200 and report["heartbeat"]["state"] == "ok" and report["position"]["side"] == "flat"
        assert report["worker"]["alive"] and report["signal"]["signal"] == "SELL"
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        server.kill()  # first: stop_worker raises when the worker had died, and the server must not leak
        stop_worker(worker)
    assert [m.split(" (")[0] for m in sink.messages()] == [  # one alert per episode, one recovery each
        "HEARTBEAT FAILURE: signal is BUY but no long position",
        "HEARTBEAT RECOVERED: signal is BUY and position is long",
        "HEARTBEAT FAILURE: signal is SELL but position is long",
        "HEARTBEAT RECOVERED: signal is SELL and position is flat",
    ]
    changes = query(data_dir, "SELECT old_state, new_state FROM heartbeat_changes WHERE subject = 'position' ORDER BY id")
    assert changes == [(None, "unknown"), ("unknown", "mismatch"), ("mismatch", "ok"), ("ok", "mismatch"), ("mismatch", "ok")]


def test_follow_mode_moves_the_position_to_the_signal(data_dir, sink):
    write_strategy(data_dir, NEVER)
    server = Server(data_dir, OMNIWISE_SYMBOL="XRPETH").start()
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, symbol="XRPETH", on_mismatch="follow",
                          heartbeat_interval=1, heartbeat_grace=0, alert_urls=sink.url, webhook_token=TOKEN,
                          ping_url=sink.ping_url)
    try:
        wait_until(lambda: query(data_dir, "SELECT count(*) FROM candles")[0][0] > 5, worker, what="candles")
        server.post_signal("BUY", int(time.time() * 1000))
        wait_until(lambda: any("RECOVERED: signal is BUY and position is long" in m for m in sink.messages()),
                   worker, timeout_s=30, what="the position to follow the signal")
        wait_until(lambda: sink.pings >= 1, worker, timeout_s=10, what="the dead-man's switch ping after a good check")
    finally:
        server.kill()  # first: stop_worker raises when the worker had died, and the server must not leak
        stop_worker(worker)
    follows = query(data_dir, "SELECT d.action, d.reason, o.status FROM decisions d JOIN orders o ON o.decision_id = d.id")
    assert follows == [("BUY", "follow", "filled")]


def test_apprise_delivery_to_a_failing_receiver_is_retried_and_recorded(db):
    sink = AlertSink(failures=2)
    try:
        notify = alerts.apprise_notifier((sink.url,))
        alerts.queue(db, "position", "mismatch", "HEARTBEAT FAILURE: signal is BUY but no long position",
                     1_000_000, is_failure=True)
        db.conn.commit()
        assert alerts.deliver_due(db, notify, 1_000_000) == 0
        (row,) = alerts.recent(db)
        assert row["attempts"] == 1 and row["delivered_at_ms"] is None and row["last_error"]
        assert alerts.deliver_due(db, notify, 1_000_000 + 30_000) == 0
        assert alerts.deliver_due(db, notify, 1_000_000 + 90_000) == 1
        (row,) = alerts.recent(db)
        assert (row["attempts"], row["delivered_at_ms"]) == (3, 1_090_000)
        assert sink.refused == 2 and sink.messages() == ["HEARTBEAT FAILURE: signal is BUY but no long position"]
    finally:
        sink.close()


def test_a_new_signal_and_a_fill_are_checked_at_once_not_at_the_next_interval(data_dir):
    # The interval is an hour: only the re-checks on a new signal and on a fill can move the state.
    write_strategy(data_dir, NEVER)
    server = Server(data_dir, OMNIWISE_SYMBOL="XRPETH").start()
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, heartbeat_interval=3600,
                          heartbeat_grace=0, webhook_token=TOKEN)  # the symbol comes from the file's name

    def position_state():
        rows = query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'position'")
        return rows[0][0] if rows else None

    try:
        wait_until(lambda: position_state() == "unknown", worker, what="the start's check")
        assert query(data_dir, "SELECT count(*) FROM alerts WHERE subject = 'position'") == [(0,)]
        server.post_signal("BUY", int(time.time() * 1000))
        wait_until(lambda: position_state() == "mismatch", worker, timeout_s=10, what="a re-check on the new signal")
        write_strategy(data_dir, "IF CLOSE > 0 THEN BUY\n")
        wait_until(lambda: position_state() == "ok", worker, timeout_s=20, what="a re-check on the fill")
    finally:
        server.kill()
        stop_worker(worker)

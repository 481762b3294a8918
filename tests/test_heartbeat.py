"""The heartbeat: verdicts of reconcile, and the state machine's changes and alerts over an injected clock."""

from __future__ import annotations

import sqlite3

import pytest

from core import store
from core.health import alerts, heartbeat
from core.brokers import Position
from core.health.heartbeat import MISMATCH, OK, STALE, UNKNOWN, HeartbeatSettings, SignalView, Verdict, reconcile

S = 1000  # ms in a second
NOW = 1_800_000_000_000
SETTINGS = HeartbeatSettings(ttl_s=600, grace_s=90, repeat_s=1800)
LONG, FLAT, SHORT = Position("long", 1.0, 100.0), Position("flat"), Position("short", 1.0, 100.0)


def signal(word: str, age_s: float, run_s: float | None = None) -> SignalView:
    """A signal received `age_s` ago, saying the same thing for `run_s` (default: since then)."""
    return SignalView(word, NOW - int(age_s * S), NOW - int((run_s if run_s is not None else age_s) * S), "TradingView")


@pytest.mark.parametrize("sig, position, state, in_grace, words", [
    (signal("BUY", 120), LONG, OK, False, "signal is BUY and position is long"),
    (signal("SELL", 120), FLAT, OK, False, "signal is SELL and position is flat"),
    (signal("SELL", 120), SHORT, OK, False, "position is short"),  # SELL means "not long"
    (signal("BUY", 120), FLAT, MISMATCH, False, "signal is BUY but no long position"),
    (signal("BUY", 120), SHORT, MISMATCH, False, "signal is BUY but no long position"),
    (signal("SELL", 120), LONG, MISMATCH, False, "signal is SELL but position is long"),
    (signal("BUY", 30), FLAT, MISMATCH, True, "no long position"),  # fresh: still in its grace
    (signal("BUY", 10, run_s=300), FLAT, MISMATCH, False, "no long position"),  # repeated BUY: no new grace
    (signal("BUY", 601), LONG, STALE, False, "more than the 10 min allowed"),
    (None, FLAT, UNKNOWN, False, "no external signal has been received yet"),
    (signal("BUY", 120), None, UNKNOWN, False, "could not be read"),
    (None, None, UNKNOWN, False, "could not be read"),
])
def test_reconcile(sig, position, state, in_grace, words):
    verdict = reconcile(sig, position, NOW, SETTINGS)
    assert (verdict.state, verdict.in_grace) == (state, in_grace)
    assert words in verdict.reason


def changes(db):
    return db.execute("SELECT old_state, new_state FROM heartbeat_changes ORDER BY id").fetchall()


def alert_messages(db):
    return [m for (m,) in db.execute("SELECT message FROM alerts ORDER BY id").fetchall()]


def test_one_alert_per_episode_then_a_recovery(db):
    bad = Verdict(MISMATCH, "signal is BUY but no long position")
    good = Verdict(OK, "signal is BUY and position is long")
    for minute in range(10):
        heartbeat.record(db, "position", bad, NOW + minute * 60 * S, repeat_s=1800)
    heartbeat.record(db, "position", good, NOW + 10 * 60 * S)
    heartbeat.record(db, "position", good, NOW + 11 * 60 * S)
    assert changes(db) == [(None, MISMATCH), (MISMATCH, OK)]
    assert alert_messages(db) == ["HEARTBEAT FAILURE: signal is BUY but no long position",
                                  "HEARTBEAT RECOVERED: signal is BUY and position is long"]


def test_a_persisting_mismatch_is_repeated_on_schedule_not_every_check(db):
    bad = Verdict(MISMATCH, "signal is SELL but position is long")
    for minute in range(0, 95):  # checks every minute for 95 minutes
        heartbeat.record(db, "position", bad, NOW + minute * 60 * S, repeat_s=1800)
    messages = alert_messages(db)
    assert len(messages) == 4  # at 0, 30, 60 and 90 minutes
    assert messages[1].endswith("(still, for 30 min)") and messages[3].endswith("(still, for 90 min)")
    assert changes(db) == [(None, MISMATCH)]


def test_grace_holds_the_previous_state(db):
    heartbeat.record(db, "position", Verdict(OK, "signal is SELL and position is flat"), NOW)
    heartbeat.record(db, "position", Verdict(MISMATCH, "signal is BUY but no long position", in_grace=True), NOW + 30 * S)
    assert heartbeat.state_of(db, "position")["state"] == OK and alert_messages(db) == []
    heartbeat.record(db, "position", Verdict(MISMATCH, "signal is BUY but no long position"), NOW + 91 * S)
    assert heartbeat.state_of(db, "position")["state"] == MISMATCH
    assert alert_messages(db) == ["HEARTBEAT FAILURE: signal is BUY but no long position"]


def test_first_check_that_is_ok_sends_nothing_and_states_are_kept_apart_by_subject(db):
    assert heartbeat.record(db, "position", Verdict(OK, "fine"), NOW).alert_id is None
    heartbeat.record(db, "worker", Verdict(heartbeat.DOWN, "last beacon 45 s ago"), NOW)
    assert alert_messages(db) == ["WORKER FAILURE: last beacon 45 s ago"]
    assert heartbeat.state_of(db, "position")["state"] == OK


def test_changing_from_one_failure_to_another_alerts_again(db):
    heartbeat.record(db, "position", Verdict(STALE, "no external signal has been received yet"), NOW)
    heartbeat.record(db, "position", Verdict(MISMATCH, "signal is BUY but no long position"), NOW + 60 * S)
    assert alert_messages(db) == ["HEARTBEAT FAILURE: no external signal has been received yet",
                                  "HEARTBEAT FAILURE: signal is BUY but no long position"]


def test_current_signal_knows_since_when_it_says_the_same(db):
    rows = [(1, "SELL", 100), (2, "BUY", 200), (3, "BUY", 300), (4, "BUY", 400)]
    for i, word, t in rows:
        db.execute("INSERT INTO external_signals(received_at_ms, source, signal, signal_time_ms, symbol, outcome) "
                   "VALUES (?, 'tv', ?, ?, 'BTCUSDT', 'accepted')", [t * S, word, t * S])
    db.conn.commit()
    view = heartbeat.current_signal(db, "BTCUSDT")
    assert (view.signal, view.received_at_ms, view.since_ms) == ("BUY", 400 * S, 200 * S)


def test_outbox_retries_a_failing_notifier_with_growing_delays_then_delivers(db):
    alerts.queue(db, "position", MISMATCH, "HEARTBEAT FAILURE: x", NOW, is_failure=True)
    db.conn.commit()
    attempts = []

    def notifier(title, body):
        attempts.append(body)
        if len(attempts) < 3:
            raise alerts.AlertDeliveryError("connection refused")

    assert alerts.deliver_due(db, notifier, NOW) == 0
    assert alerts.deliver_due(db, notifier, NOW + 10 * S) == 0  # not due yet: next try after 30 s
    assert alerts.deliver_due(db, notifier, NOW + 30 * S) == 0
    assert alerts.deliver_due(db, notifier, NOW + 60 * S) == 0  # second delay is 60 s after the second try
    assert alerts.deliver_due(db, notifier, NOW + 90 * S) == 1
    (row,) = alerts.recent(db)
    assert (row["attempts"], row["delivered_at_ms"], row["last_error"]) == (3, NOW + 90 * S, "connection refused")
    assert len(attempts) == 3


def test_a_claimed_alert_is_not_sent_twice(db):
    alerts.queue(db, "worker", heartbeat.DOWN, "WORKER FAILURE: x", NOW, is_failure=True)
    db.execute("UPDATE alerts SET claimed_until_ms = ?", [NOW + 30 * S])  # another process is sending it
    db.conn.commit()
    sent = []
    assert alerts.deliver_due(db, lambda t, b: sent.append(b), NOW) == 0 and sent == []


# -- an honest heartbeat: no alarm before the first signal, a visible grace, acknowledged repeats --------------


def test_before_any_signal_the_state_is_unknown_and_nobody_is_alerted(db):
    verdict = reconcile(None, FLAT, NOW, SETTINGS)
    heartbeat.record(db, "position", verdict, NOW)
    heartbeat.record(db, "position", reconcile(None, FLAT, NOW + 60 * S, SETTINGS), NOW + 60 * S)
    assert heartbeat.state_of(db, "position")["state"] == UNKNOWN
    assert alert_messages(db) == []
    # the first signal agrees with the position: ok, and no "recovered" for an alarm nobody heard
    heartbeat.record(db, "position", reconcile(signal("SELL", 5), FLAT, NOW + 120 * S, SETTINGS), NOW + 120 * S)
    assert changes(db) == [(None, UNKNOWN), (UNKNOWN, OK)] and alert_messages(db) == []


def test_a_first_signal_that_disagrees_is_alerted_once_its_grace_is_over(db):
    heartbeat.record(db, "position", reconcile(None, FLAT, NOW, SETTINGS), NOW)
    fresh = reconcile(signal("BUY", 30), FLAT, NOW, SETTINGS)  # arrived 30 s ago, grace 90 s
    assert fresh.in_grace and fresh.pending_until_ms == NOW + 60 * S
    heartbeat.record(db, "position", fresh, NOW)
    state = heartbeat.state_of(db, "position")
    assert (state["state"], state["pending_until_ms"]) == (UNKNOWN, NOW + 60 * S) and alert_messages(db) == []
    heartbeat.record(db, "position", reconcile(signal("BUY", 91), FLAT, NOW + 61 * S, SETTINGS), NOW + 61 * S)
    state = heartbeat.state_of(db, "position")
    assert (state["state"], state["pending_until_ms"]) == (MISMATCH, None)
    assert alert_messages(db) == ["HEARTBEAT FAILURE: signal is BUY but no long position (position is flat)"]


def test_grace_of_a_new_signal_is_pending_until_its_deadline_not_ok(db):
    heartbeat.record(db, "position", Verdict(OK, "signal is SELL and position is flat"), NOW)
    heartbeat.record(db, "position", reconcile(signal("BUY", 10), FLAT, NOW, SETTINGS), NOW)
    assert heartbeat.state_of(db, "position")["pending_until_ms"] == NOW + 80 * S


def test_an_acknowledged_mismatch_is_not_repeated_until_the_next_episode(db):
    bad = Verdict(MISMATCH, "signal is SELL but position is long")
    heartbeat.record(db, "position", bad, NOW, repeat_s=1800)
    (first,) = alerts.recent(db)
    assert alerts.acknowledge(db, first["id"], NOW + 60 * S)
    for minute in range(1, 95):
        heartbeat.record(db, "position", bad, NOW + minute * 60 * S, repeat_s=1800)
    assert len(alert_messages(db)) == 1  # without the acknowledgement: at 0, 30, 60 and 90 minutes
    heartbeat.record(db, "position", Verdict(OK, "signal is SELL and position is flat"), NOW + 100 * 60 * S)
    heartbeat.record(db, "position", bad, NOW + 101 * 60 * S, repeat_s=1800)
    heartbeat.record(db, "position", bad, NOW + 131 * 60 * S, repeat_s=1800)  # a new episode repeats again
    assert alert_messages(db)[-2:] == ["HEARTBEAT FAILURE: signal is SELL but position is long",
                                       "HEARTBEAT FAILURE: signal is SELL but position is long (still, for 30 min)"]


def test_acknowledging_an_unknown_alert_says_so(db):
    assert alerts.acknowledge(db, 999, NOW) is False


# -- one vocabulary a subject ------------------------------------------------------------------------

ALL_STATES = sorted({state for states in heartbeat.STATES.values() for state in states})


@pytest.mark.parametrize("subject, state", [(subject, state) for subject in heartbeat.STATES for state in ALL_STATES])
def test_the_heartbeat_table_takes_a_state_only_from_its_subjects_vocabulary(db, subject, state):
    verdict = Verdict(state, "a reason", is_quiet=True)
    if state in heartbeat.STATES[subject]:
        heartbeat.record(db, subject, verdict, NOW)
        assert heartbeat.state_of(db, subject)["state"] == state
    else:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            heartbeat.record(db, subject, verdict, NOW)
        assert heartbeat.state_of(db, subject) is None  # the whole transaction was rolled back


def test_the_vocabulary_migration_keeps_the_rows_written_before_it(tmp_path):
    db = store.open_db(tmp_path / "old.db")
    store.migrations.apply(db, stop_before="m008_heartbeat_states")
    rows = [("position", "mismatch", "signal is BUY but no long position", 1, 2, 3, 4),
            ("worker", "down", "the worker's last beacon was 10 min ago", 5, 6, None, None),
            ("strategy", "invalid", "line 1: no THEN", 9, 10, 9, None),
            ("stream", "ok", "a state of another subject's vocabulary", 11, 12, None, None)]
    db.conn.executemany("INSERT OR REPLACE INTO heartbeat(subject, state, reason, since_ms, checked_at_ms, "
                        "last_alert_ms, pending_until_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.conn.commit()
    store.migrate(db)
    kept = db.execute("SELECT subject, state, reason, since_ms, checked_at_ms, last_alert_ms, pending_until_ms "
                      "FROM heartbeat ORDER BY since_ms").fetchall()
    assert kept == rows[:3]  # the one a CHECK would refuse is dropped: the next check writes it anew
    db.close()


def test_a_failing_step_of_the_delivery_loop_does_not_hold_up_delivery(db, settings):
    alerts.queue(db, "worker", "down", "WORKER FAILURE: the worker has never started", NOW, is_failure=True)
    sent, steps_run = [], []

    def unreachable_ping(db, now_ms):
        steps_run.append(now_ms)
        raise OSError("the ping URL cannot be reached")

    loop = alerts.DeliveryLoop("test", settings.db_path, (), every_s=1.0, clock_ms=lambda: NOW,
                               steps=(unreachable_ping,))
    loop.run_once(db, lambda title, body: sent.append((title, body)))
    assert steps_run == [NOW]
    assert sent == [("Omniwise: down", "WORKER FAILURE: the worker has never started")]

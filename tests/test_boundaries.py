"""The exact edges of the time rules: a value at the limit, and one millisecond past it.

"Within the TTL" includes the TTL itself; a grace of 90 s is over at 90 s; a worker whose beacon is
exactly 15 s old is still alive; a signal as old as its source's newest is not older than it.
"""

from __future__ import annotations

import json

import pytest

from core import store
from core.health import heartbeat, liveness, status
from core.webhook import ledger
from core.brokers import Position
from core.config import Settings
from core.health.heartbeat import MISMATCH, OK, STALE, HeartbeatSettings, SignalView, reconcile

NOW_MS = 1_800_000_000_000
TTL_S, GRACE_S = 600, 90
SETTINGS = HeartbeatSettings(ttl_s=TTL_S, grace_s=GRACE_S, repeat_s=1800)
TOKEN = "boundary-token-0123456789abcdef"


def view(word: str, received_ms_ago: int, since_ms_ago: int | None = None) -> SignalView:
    since = received_ms_ago if since_ms_ago is None else since_ms_ago
    return SignalView(word, NOW_MS - received_ms_ago, NOW_MS - since, "TradingView")


@pytest.mark.parametrize("age_ms, state", [
    (TTL_S * 1000 - 1, OK),
    (TTL_S * 1000, OK),  # exactly the TTL: still within it
    (TTL_S * 1000 + 1, STALE),
])
def test_a_signal_exactly_as_old_as_the_ttl_is_not_stale(age_ms, state):
    assert reconcile(view("BUY", age_ms), Position("long", 1.0, 100.0), NOW_MS, SETTINGS).state == state


@pytest.mark.parametrize("run_ms, in_grace", [
    (GRACE_S * 1000 - 1, True),
    (GRACE_S * 1000, False),  # exactly the grace: the mismatch counts
    (GRACE_S * 1000 + 1, False),
])
def test_the_grace_ends_exactly_at_its_length(run_ms, in_grace):
    verdict = reconcile(view("BUY", run_ms), Position("flat"), NOW_MS, SETTINGS)
    assert (verdict.state, verdict.in_grace) == (MISMATCH, in_grace)


def test_a_mismatch_at_exactly_the_grace_is_recorded_and_alerted(db):
    heartbeat.record(db, "position", heartbeat.Verdict(OK, "fine"), NOW_MS - 100_000)
    inside = reconcile(view("BUY", GRACE_S * 1000 - 1), Position("flat"), NOW_MS - 1, SETTINGS)
    heartbeat.record(db, "position", inside, NOW_MS - 1)
    assert heartbeat.state_of(db, "position")["state"] == OK
    at_edge = reconcile(view("BUY", GRACE_S * 1000), Position("flat"), NOW_MS, SETTINGS)
    heartbeat.record(db, "position", at_edge, NOW_MS)
    assert heartbeat.state_of(db, "position")["state"] == MISMATCH
    assert db.execute("SELECT count(*) FROM alerts WHERE state = 'mismatch'").fetchone()[0] == 1


@pytest.mark.parametrize("age_ms, is_stale", [(TTL_S * 1000, False), (TTL_S * 1000 + 1, True)])
def test_the_status_report_calls_a_signal_stale_only_past_the_ttl(db, data_dir, age_ms, is_stale):
    ledger.record(db, ledger.Signal("BUY", NOW_MS - age_ms, "TradingView", "BTCUSDT"),
                   received_at_ms=NOW_MS - age_ms, remote_addr="127.0.0.1", raw_body="")
    report = status.status_report(db, Settings(data_dir=data_dir, signal_ttl_s=TTL_S), NOW_MS)
    assert report["signal"]["stale"] is is_stale


@pytest.mark.parametrize("age_ms, alive, state", [
    (liveness.STALE_AFTER_S * 1000, True, heartbeat.ALIVE),  # exactly 15 s: still alive
    (liveness.STALE_AFTER_S * 1000 + 1, False, heartbeat.DOWN),
])
def test_the_worker_is_down_one_millisecond_after_its_beacon_goes_stale(db, age_ms, alive, state):
    assert liveness.STALE_AFTER_S == 15
    liveness.beat(db, NOW_MS - age_ms)
    assert liveness.worker_status(db, NOW_MS).alive is alive
    assert heartbeat.check_worker(db, NOW_MS).state == state


# -- the ledger -------------------------------------------------------------------------------------

def put(db, word: str, time_ms: int, received_at_ms: int, source: str = "TradingView") -> ledger.Receipt:
    return ledger.record(db, ledger.Signal(word, time_ms, source, "BTCUSDT"), received_at_ms=received_at_ms,
                          remote_addr="127.0.0.1", raw_body="")


def test_a_signal_as_old_as_its_sources_newest_is_accepted_and_becomes_the_latest(db):
    put(db, "BUY", 5_000, NOW_MS)
    tie = put(db, "SELL", 5_000, NOW_MS + 1)  # same signal time: not older than the newest
    assert (tie.outcome, tie.is_duplicate) == (ledger.ACCEPTED, False)
    assert ledger.latest_signal(db, "BTCUSDT").id == tie.id
    older = put(db, "BUY", 4_999, NOW_MS + 2)
    assert older.outcome == ledger.STALE
    assert ledger.latest_signal(db, "BTCUSDT").id == tie.id


def test_the_ledger_connection_writes_with_synchronous_full(data_dir):
    path = data_dir / "omniwise.db"
    store.connect(path).close()
    connection = ledger.open_ledger(path)
    try:
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        connection.close()


def test_the_webhook_records_through_a_synchronous_full_connection(data_dir):
    from omniwise import create_app

    app = create_app(Settings(data_dir=data_dir, webhook_token=TOKEN, webhook_rate_per_s=0))
    app.config["TESTING"] = True
    app.extensions["omniwise.webhook"].clock_ms = lambda: NOW_MS
    client = app.test_client()
    answer = client.post(f"/api/v1/external-signal/{TOKEN}", content_type="application/json",
                         data=json.dumps({"signal": "BUY", "timestamp": NOW_MS // 1000, "source": "TradingView"}))
    assert answer.status_code == 200, answer.data
    webhook = app.extensions["omniwise.webhook"]
    connection = webhook.db()  # the connection this thread's request wrote through
    assert connection.execute("SELECT count(*) FROM external_signals").fetchone()[0] == 1
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2

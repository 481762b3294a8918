"""What makes the cockpit trustworthy at a glance: the heartbeat's verdict the moment a grace ends, banners
and freshness on every page, money written like money, honest alerts, error pages, the CSV export."""

from __future__ import annotations

import dataclasses
import re

import pytest

from core.health import heartbeat
from core.webhook import ledger

SYMBOL = "BTCUSDT"  # the tests' Settings() market
S = 1000


class Clock:
    """A clock the test moves by hand (seconds, as time.time)."""

    def __init__(self, now_s: float):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def receive(db, word: str, at_ms: int) -> None:
    ledger.record(db, ledger.Signal(word, at_ms, "TradingView", SYMBOL), received_at_ms=at_ms,
                  remote_addr="127.0.0.1", raw_body=word)


def test_the_worker_rechecks_the_heartbeat_the_second_a_grace_ends_not_a_minute_later(settings):
    from worker import Worker

    settings = dataclasses.replace(settings, heartbeat_grace_s=30, heartbeat_interval_s=60)
    clock = Clock(1_800_000_000.0)
    worker = Worker(settings, clock=clock)
    try:
        receive(worker.db, "BUY", int(clock() * S))  # the paper account is flat: a mismatch, in its grace
        worker.obey_operator()  # the new signal is checked at once
        state = heartbeat.state_of(worker.db, "position")
        assert state["pending_until_ms"] == int(clock() * S) + 30 * S and state["state"] != heartbeat.MISMATCH
        clock.now_s += 29
        worker.obey_operator()
        assert heartbeat.state_of(worker.db, "position")["pending_until_ms"] is not None  # still in its grace
        clock.now_s += 1  # the grace ends: the next 1-second job decides, not the 60-second check
        worker.obey_operator()
        state = heartbeat.state_of(worker.db, "position")
        assert (state["state"], state["pending_until_ms"]) == (heartbeat.MISMATCH, None)
        assert state["checked_at_ms"] == int(clock() * S)
    finally:
        worker.db.close()


def test_a_recheck_is_due_only_once_a_pending_grace_has_ended(db):
    now = 1_800_000_000_000
    assert not heartbeat.is_recheck_due(db, now)  # never checked
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"), now)
    assert not heartbeat.is_recheck_due(db, now + 3600 * S)  # ok: the periodic check is enough
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now + 90 * S), now)
    assert not heartbeat.is_recheck_due(db, now + 90 * S - 1)
    assert heartbeat.is_recheck_due(db, now + 90 * S)


PAGES = ["/", "/trades", "/admin/algo", "/admin/algo/history", "/admin/webhook", "/alerts"]


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("path", PAGES)
def test_a_dead_worker_is_a_banner_and_in_the_title_of_every_page(operator, db, path):
    from core.health import liveness

    liveness.beat(db, now_ms() - 125_000)  # the last beacon, 2 min ago (down after 15 s)
    page = operator.get(path).get_data(as_text=True)
    assert "<title>⚠ worker down · " in page
    assert "The worker is down (last seen 2 min ago)" in page
    liveness.beat(db, now_ms())
    page = operator.get(path).get_data(as_text=True)
    assert "⚠" not in page.split("</title>")[0] and "The worker is down" not in page


@pytest.mark.parametrize("state, reason", [
    (heartbeat.MISMATCH, "signal is BUY but no long position (position is flat)"),
    (heartbeat.STALE, "the last signal (BUY from TradingView) is 12 min old, more than the 10 min allowed"),
])
def test_a_mismatch_or_a_stale_signal_is_a_banner_on_every_page(operator, db, state, reason):
    from core.health import liveness

    liveness.beat(db, now_ms())
    heartbeat.record(db, "position", heartbeat.Verdict(state, reason), now_ms())
    for path in PAGES:
        page = operator.get(path).get_data(as_text=True)
        assert f"<title>⚠ {state} · " in page, path
        assert re.search(rf"Heartbeat {state} since \d s ago: {re.escape(reason)}", page), path
    fragment = operator.get("/banner").get_data(as_text=True)
    assert f'data-title="{state}"' in fragment


def test_the_banner_is_empty_and_its_title_plain_when_all_is_well(operator, db):
    from core.health import liveness

    liveness.beat(db, now_ms())
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"), now_ms())
    fragment = operator.get("/banner").get_data(as_text=True)
    assert 'data-title=""' in fragment and "<p" not in fragment


def test_a_worker_that_is_down_greys_the_tiles_that_depend_on_it(operator, db):
    from core.health import liveness

    liveness.beat(db, now_ms() - 60_000)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    for tile in ("trading-tile", "market-tile", "position-tile", "heartbeat-tile"):
        assert f'class="tile greyed" id="{tile}"' in summary
    liveness.beat(db, now_ms())
    assert "greyed" not in operator.get("/dashboard/summary").get_data(as_text=True)


def test_the_heartbeat_tile_says_pending_until_then_that_the_grace_ended(operator, db):
    import time

    from core.health import liveness

    liveness.beat(db, now_ms())
    now = now_ms()
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now + 45_000), now)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    until = time.strftime("%H:%M:%S", time.gmtime((now + 45_000) / 1000))
    assert f'data-state="pending">pending until {until} UTC<' in summary
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now - 1_000), now - 50_000)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    assert "grace ended" in summary and "checking now" in summary


def test_every_page_says_when_its_data_was_read(operator):
    for path in PAGES:
        page = operator.get(path).get_data(as_text=True)
        assert 'id="freshness"' in page and "data read " in page, path

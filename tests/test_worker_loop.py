"""The worker loop's error policy: which failure retries, alerts or stops, and how long it pauses."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import worker as worker_module
from core import fault_policy
from core.health import alerts
from core.binance.rest import ExchangeRejected, ExchangeUnreachable
from core.brokers import BrokerError
from core.config import ConfigError
from core.feeds import FeedError
from core.fault_policy import ALERT, RETRY, STOP, FaultCounter, keep_running


class FakeClock:
    """Seconds that move only when the test moves them."""

    def __init__(self, now_s: float = 1_700_000_000.0):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class Runs:
    """A scripted `run`: each entry lasts `seconds` on the clock, then raises its exception (None: ends well)."""

    def __init__(self, clock: FakeClock, stop: threading.Event, script: list[tuple[float, BaseException | None]]):
        self.clock, self.stop, self.script, self.calls = clock, stop, list(script), 0

    def __call__(self) -> None:
        self.calls += 1
        if not self.script:
            self.stop.set()
            return
        seconds, exc = self.script.pop(0)
        self.clock.now_s += seconds
        if exc is not None:
            raise exc


def loop(script, clock=None):
    """Run keep_running over `script`; returns the pauses slept, the alerts queued and the runs made."""
    clock = clock or FakeClock()
    stop = threading.Event()
    pauses: list[float] = []
    messages: list[str] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.now_s += seconds

    runs = Runs(clock, stop, script)
    keep_running(runs, stop, FaultCounter(clock), sleep, messages.append)
    return pauses, messages, runs


@pytest.mark.parametrize("exc, action", [
    (ConfigError("bad leverage"), STOP),
    (FeedError("x.csv", 3, "not a number"), STOP),
    (ExchangeUnreachable("timed out after 3 tries"), RETRY),
    (ExchangeRejected(400, -2010, "insufficient balance"), ALERT),
    (BrokerError("position unreadable"), ALERT),
    (sqlite3.OperationalError("database is locked"), RETRY),
    (ConnectionResetError("reset by peer"), RETRY),
    (TimeoutError("read timed out"), RETRY),
    (ZeroDivisionError("float division by zero"), ALERT),
    (KeyError("price"), ALERT),
])
def test_each_failure_class_maps_to_its_action(exc, action):
    assert fault_policy.action_for(exc) == action


def test_the_table_lists_subclasses_before_their_bases():
    rows = [cls for cls, _ in fault_policy.POLICY]
    for i, later in enumerate(rows):
        for earlier in rows[:i]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"


def test_pauses_double_per_failure_in_a_row_up_to_a_minute():
    pauses, messages, _ = loop([(1.0, ValueError("boom"))] * 8)
    assert pauses == [2, 4, 8, 16, 32, 60, 60, 60]
    assert len(messages) == 8
    assert messages[0] == "WORKER FAILURE: live trading failed and starts again: ValueError: boom"


def test_a_healthy_stretch_resets_the_failure_count():
    script = [(1.0, ValueError("early"))] * 6 + [(fault_policy.HEALTHY_S, ValueError("a day later"))]
    pauses, _, _ = loop(script)
    assert pauses == [2, 4, 8, 16, 32, 60, 2]


def test_a_run_just_short_of_the_healthy_stretch_keeps_counting():
    script = [(1.0, ValueError("early"))] * 6 + [(fault_policy.HEALTHY_S - 0.001, ValueError("soon after"))]
    pauses, _, _ = loop(script)
    assert pauses[-1] == 60


def test_the_pause_itself_does_not_count_as_healthy_running():
    # 60 s pauses add up to far more than the healthy stretch; only the time spent trading counts.
    pauses, _, _ = loop([(0.5, ValueError("again"))] * 12)
    assert pauses[-1] == 60


def test_a_passing_fault_is_alerted_only_once_it_keeps_coming_back():
    script = [(1.0, ExchangeUnreachable("no route to host"))] * (fault_policy.ALERT_AFTER_RETRIES + 2)
    pauses, messages, _ = loop(script)
    assert len(pauses) == fault_policy.ALERT_AFTER_RETRIES + 2
    assert messages == ["WORKER FAILURE: live trading failed and starts again: "
                        "ExchangeUnreachable: no route to host"]


def test_a_fault_that_a_restart_cannot_fix_stops_live_trading_with_an_alert():
    pauses, messages, runs = loop([(1.0, ValueError("first")), (1.0, FeedError("k.csv", 7, "bad row")),
                                   (1.0, None)])
    assert runs.calls == 2  # not started again after the STOP
    assert pauses == [2]  # and no pause either
    assert messages[-1].startswith("WORKER FAILURE: live trading stopped and will not start again")
    assert "k.csv:7" in messages[-1]


def test_the_loop_ends_when_stopped_without_running_again():
    stop = threading.Event()
    stop.set()
    calls = []
    keep_running(lambda: calls.append(1), stop, FaultCounter(FakeClock()), lambda s: None, lambda m: None)
    assert calls == []


def test_a_run_that_ends_without_failure_is_started_again_without_pause():
    pauses, messages, runs = loop([(5.0, None), (5.0, None)])
    assert runs.calls == 3 and pauses == [] and messages == []


def test_the_worker_applies_the_policy_to_its_live_feed(settings, monkeypatch):
    """Worker.trade_live: the feed's failures go through the table; alerts land in the outbox."""
    clock = FakeClock()
    live = worker_module.Worker(settings, clock=clock)
    failures = [ValueError("stream parser"), ExchangeUnreachable("timeout"), ConfigError("no such symbol")]
    opened = []

    def open_feed(*args, **kwargs):
        opened.append(args)
        exc = failures.pop(0)

        def feed():
            clock.now_s += 10
            raise exc
            yield  # a generator, like the real feed

        return feed()

    pauses = []
    monkeypatch.setattr(worker_module, "open_feed", open_feed)
    monkeypatch.setattr(live, "wait", pauses.append)
    try:
        live.trade_live()
        messages = [a["message"] for a in alerts.recent(live.db)]
    finally:
        live.db.close()
    assert len(opened) == 3
    assert pauses == [2, 4]
    assert messages == [  # newest first; the passing ExchangeUnreachable is not alerted
        "WORKER FAILURE: live trading stopped and will not start again until the worker is restarted: "
        "ConfigError: no such symbol",
        "WORKER FAILURE: live trading failed and starts again: ValueError: stream parser",
    ]

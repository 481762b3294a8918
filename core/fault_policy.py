"""What the worker's live loop does when trading fails: retry quietly, alert and retry, or stop.

The policy is a small table from exception class to action, read top to bottom (subclasses first).
Consecutive failures wait longer and longer before the feed starts again; a run that traded for a
healthy stretch before failing starts the count afresh, so a fault a week ago does not slow today's
restart.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Callable

from core.binance.rest import ExchangeRejected, ExchangeUnreachable
from core.brokers import BrokerError
from core.config import ConfigError
from core.feeds import FeedError

log = logging.getLogger("omniwise.worker")

RETRY = "retry"  # a passing fault (network, a locked database): log it and start again after a pause
ALERT = "alert"  # a fault the operator should hear about: queue an alert, then start again after a pause
STOP = "stop"  # starting again cannot help (a setting, an unreadable file): alert and stop live trading

POLICY: tuple[tuple[type[BaseException], str], ...] = (
    (ConfigError, STOP),
    (FeedError, STOP),  # never trade on candles that would be wrong
    (ExchangeUnreachable, RETRY),
    (ExchangeRejected, ALERT),  # the same request would be refused again: someone must look
    (BrokerError, ALERT),
    (sqlite3.OperationalError, RETRY),  # "database is locked" while a backup or the web app writes
    (OSError, RETRY),  # connections refused, reset or timed out
    (Exception, ALERT),  # anything unforeseen
)

HEALTHY_S = 300.0  # a run this long before its failure counts as a fresh start
MAX_PAUSE_S = 60.0
ALERT_AFTER_RETRIES = 5  # a passing fault that keeps coming back is alerted once, at this count


def action_for(exc: BaseException, policy=POLICY) -> str:
    """The action the table gives for `exc`: the first row whose class it is an instance of."""
    for cls, action in policy:
        if isinstance(exc, cls):
            return action
    return ALERT


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do about one failure: the action, the failures in a row so far, the pause, and whether to alert."""

    action: str
    failures: int
    pause_s: float
    should_alert: bool


class FaultCounter:
    """Counts failures in a row; a run that lasted `healthy_s` before failing resets the count."""

    def __init__(self, clock: Callable[[], float], healthy_s: float = HEALTHY_S, max_pause_s: float = MAX_PAUSE_S):
        self.clock = clock
        self.healthy_s = healthy_s
        self.max_pause_s = max_pause_s
        self.failures = 0
        self.started_at_s: float | None = None

    def started(self) -> None:
        """Note that a run has begun now."""
        self.started_at_s = self.clock()

    def failed(self, exc: BaseException) -> Decision:
        """Count the failure of the current run and decide what follows."""
        ran_s = 0.0 if self.started_at_s is None else self.clock() - self.started_at_s
        if ran_s >= self.healthy_s:
            self.failures = 0
        self.failures += 1
        action = action_for(exc)
        should_alert = action != RETRY or self.failures == ALERT_AFTER_RETRIES
        pause_s = min(self.max_pause_s, 2.0 ** self.failures)
        return Decision(action, self.failures, pause_s, should_alert)


def keep_running(run: Callable[[], None], stop: threading.Event, counter: FaultCounter,
                 sleep: Callable[[float], None], alert: Callable[[str], None]) -> None:
    """Call `run` until `stop` is set, applying the policy to each failure; returns on stop or a STOP fault."""
    while not stop.is_set():
        counter.started()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - every failure goes through the table
            decision = counter.failed(exc)
            what = f"{type(exc).__name__}: {exc}"
            if decision.action == STOP:
                log.critical("live trading stopped: %s", what, exc_info=exc)
                alert(f"WORKER FAILURE: live trading stopped and will not start again until the worker is "
                      f"restarted: {what}")
                return
            log.error("live trading failed (%d in a row, %s); the feed starts again in %g s",
                      decision.failures, decision.action, decision.pause_s, exc_info=exc)
            if decision.should_alert:
                alert(f"WORKER FAILURE: live trading failed and starts again: {what}")
            sleep(decision.pause_s)

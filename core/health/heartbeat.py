"""The heartbeat: is the real position what the outside world believes it should be?

`reconcile` is a pure verdict on one check. `record` turns verdicts into a small state machine stored
in SQLite: the current state of each watched subject ("position", "worker", "strategy"), a row per
change of state, and an alert queued on every change into a bad state, on the way back, and again
while a mismatch persists (every `repeat_s`), never on every check.
"""

from __future__ import annotations

import dataclasses

from core import brokers, open_trade, store
from core.health import alerts, liveness
from core.store import Database
from core.webhook import ledger
from core.brokers import BrokerError, Position

OK, MISMATCH, STALE, UNKNOWN = "ok", "mismatch", "stale", "unknown"
ALIVE, DOWN = "alive", "down"
VALID, INVALID = "valid", "invalid"
# One vocabulary a subject; the heartbeat table's CHECK constraint (core/store.py) refuses any other pair.
STATES = {"position": (OK, MISMATCH, STALE, UNKNOWN), "worker": (ALIVE, DOWN), "stream": (ALIVE, DOWN),
          "strategy": (VALID, INVALID)}
FAILURES = {MISMATCH, STALE, UNKNOWN, DOWN, INVALID}
REPEATED = {MISMATCH}  # failures that are alerted again while they last

_TITLES = {"position": "HEARTBEAT", "worker": "WORKER", "strategy": "STRATEGY"}
# What each signal word expects of the position (DESIGN.md "External signals"): a test and its words.
EXPECTED = {"BUY": (lambda side: side == "long", "no long position"),
            "SELL": (lambda side: side != "long", "the position is long"),
            "SHORT": (lambda side: side == "short", "no short position"),
            "FLAT": (lambda side: side == "flat", "the position is not flat")}


@dataclasses.dataclass(frozen=True)
class HeartbeatSettings:
    """How the heartbeat judges: signal time-to-live, grace for a new signal, repeat interval."""

    ttl_s: float = 600.0
    grace_s: float = 90.0
    repeat_s: float = 1800.0

    @classmethod
    def from_settings(cls, settings) -> "HeartbeatSettings":
        """From the process settings (OMNIWISE_SIGNAL_TTL, _HEARTBEAT_GRACE, _ALERT_REPEAT)."""
        return cls(settings.signal_ttl_s, settings.heartbeat_grace_s, settings.alert_repeat_s)


@dataclasses.dataclass(frozen=True)
class SignalView:
    """The signal the heartbeat compares: the latest one, and since when it has said the same thing."""

    signal: str  # BUY, SELL, SHORT or FLAT
    received_at_ms: int  # arrival of the latest delivery
    since_ms: int  # arrival of the first delivery of this run of identical signals
    source: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One check's answer: a state, the reason in words, and whether a mismatch is still in its grace."""

    state: str
    reason: str
    in_grace: bool = False
    pending_until_ms: int | None = None  # a mismatch in its grace counts from then on
    is_quiet: bool = False  # nothing to tell anyone: no signal was ever received


def current_signal(db: Database, symbol: str) -> SignalView | None:
    """The latest accepted signal for `symbol`, with the arrival of the first one that said the same."""
    latest = ledger.latest_signal(db, symbol)
    if latest is None:
        return None
    # The newest accepted signal that said something else ends the previous run.
    (since_ms,) = db.execute(
        "SELECT min(received_at_ms) FROM external_signals WHERE outcome = 'accepted' AND symbol = ? AND signal = ? "
        "AND signal_time_ms > coalesce((SELECT max(signal_time_ms) FROM external_signals WHERE outcome = 'accepted' "
        "AND symbol = ? AND signal != ?), -1)",
        [latest.symbol, latest.signal, latest.symbol, latest.signal]).fetchone()
    return SignalView(latest.signal, latest.received_at_ms, since_ms or latest.received_at_ms, latest.source)


def reconcile(signal: SignalView | None, position: Position | None, now_ms: int,
              settings: HeartbeatSettings) -> Verdict:
    """Compare the external signal with the position: ok, mismatch, stale or unknown."""
    if position is None:
        return Verdict(UNKNOWN, "the position could not be read from the broker")
    if signal is None:  # nothing was ever promised: no alarm before the first signal
        return Verdict(UNKNOWN, "no external signal has been received yet", is_quiet=True)
    age_s = (now_ms - signal.received_at_ms) / 1000
    if age_s > settings.ttl_s:
        return Verdict(STALE, f"the last signal ({signal.signal} from {signal.source}) is {_duration(age_s)} old, "
                              f"more than the {_duration(settings.ttl_s)} allowed")
    expected = EXPECTED.get(signal.signal)
    if expected is not None and not expected[0](position.side):
        reason = f"signal is {signal.signal} but {expected[1]} (position is {position.side})"
        if signal.signal == "SELL":
            reason = "signal is SELL but position is long"
    else:
        return Verdict(OK, f"signal is {signal.signal} and position is {position.side}")
    pending_until_ms = signal.since_ms + int(settings.grace_s * 1000)
    in_grace = now_ms < pending_until_ms
    return Verdict(MISMATCH, reason, in_grace=in_grace, pending_until_ms=pending_until_ms if in_grace else None)


def check_position(db: Database, broker, symbol: str, now_ms: int, settings: HeartbeatSettings) -> Verdict:
    """One heartbeat check: read the position from the broker, compare it with the signal, record it."""
    try:
        position, error = broker.position(), None
    except BrokerError as exc:
        position, error = None, exc
    signal = current_signal(db, symbol)
    verdict = reconcile(signal, position, now_ms, settings)
    if verdict.state == MISMATCH and position is not None and position.side == "flat":
        note = open_trade.last_risk_exit(db, symbol)  # say so when a stop, not a fault, made the position flat
        if note:
            verdict = dataclasses.replace(verdict, reason=f"{verdict.reason}: {note}")
            verdict = _grace_after_exit(verdict, open_trade.last_risk_exit_ms(db, symbol), signal, now_ms, settings)
    if error is not None:
        verdict = dataclasses.replace(verdict, reason=f"the position could not be read from the broker: {error}")
    else:
        brokers.save_position(db, position, now_ms)
    record(db, "position", verdict, now_ms, settings.repeat_s)
    return verdict


def _grace_after_exit(verdict: Verdict, exit_ms: int | None, signal: SignalView | None, now_ms: int,
                      settings: HeartbeatSettings) -> Verdict:
    """A risk exit after the BUY it ended gets the grace a new signal gets: the sender's own exit (its SELL)
    usually follows within seconds, and a FAILURE then RECOVERED pair seconds apart would tell nothing."""
    if exit_ms is None or signal is None or exit_ms < signal.since_ms:
        return verdict
    pending_until_ms = exit_ms + int(settings.grace_s * 1000)
    if now_ms >= pending_until_ms or verdict.in_grace and verdict.pending_until_ms >= pending_until_ms:
        return verdict
    return dataclasses.replace(verdict, in_grace=True, pending_until_ms=pending_until_ms)


def check_worker(db: Database, now_ms: int) -> Verdict:
    """Judge the worker by its beacon (run by the web app, since a dead worker cannot report itself)."""
    status = liveness.worker_status(db, now_ms)
    if status.last_seen_ms is None:
        verdict = Verdict(DOWN, "the worker has never started")
    elif status.alive:
        verdict = Verdict(ALIVE, "the worker is running")
    else:
        verdict = Verdict(DOWN, f"the worker's last beacon was {_duration((now_ms - status.last_seen_ms) / 1000)} ago")
    record(db, "worker", verdict, now_ms)
    return verdict


@dataclasses.dataclass(frozen=True)
class Change:
    """A change of state that `record` stored, with the alert it queued (if any)."""

    subject: str
    old_state: str | None
    new_state: str
    reason: str
    alert_id: int | None


def record(db: Database, subject: str, verdict: Verdict, now_ms: int, repeat_s: float = 1800.0) -> Change | None:
    """Store a verdict; on a change of state write the change and queue its alert, all in one transaction."""
    with store.transaction(db):  # two processes checking at once: one of them sees the change
        row = db.execute("SELECT state, since_ms, last_alert_ms FROM heartbeat WHERE subject = ?",
                         [subject]).fetchone()
        old_state, since_ms, last_alert_ms = row if row else (None, now_ms, None)
        new_state = verdict.state
        if verdict.in_grace:  # a new signal gets time to be followed: nothing changes yet
            new_state = old_state or UNKNOWN
        change = None
        was_alerted = last_alert_ms is not None and last_alert_ms >= since_ms  # the episode ending now was told
        if new_state != old_state:
            alert_id = None
            if verdict.is_quiet or verdict.in_grace:
                pass
            elif new_state in FAILURES or (old_state in FAILURES and new_state not in FAILURES and was_alerted):
                alert_id = alerts.queue(db, subject, new_state, _message(subject, new_state, verdict.reason),
                                        now_ms, is_failure=new_state in FAILURES)
                last_alert_ms = now_ms
            db.execute("INSERT INTO heartbeat_changes(subject, old_state, new_state, reason, at_ms) "
                       "VALUES (?, ?, ?, ?, ?)", [subject, old_state, new_state, verdict.reason, now_ms])
            since_ms = now_ms
            change = Change(subject, old_state, new_state, verdict.reason, alert_id)
        elif (new_state in REPEATED and last_alert_ms is not None and now_ms - last_alert_ms >= repeat_s * 1000
              and not alerts.is_acknowledged(db, subject, since_ms)):
            message = _message(subject, new_state, verdict.reason) + f" (still, for {_duration((now_ms - since_ms) / 1000)})"
            alerts.queue(db, subject, new_state, message, now_ms, is_failure=True)
            last_alert_ms = now_ms
        reason = verdict.reason if not verdict.in_grace else f"{verdict.reason}; within the grace period"
        db.execute("INSERT INTO heartbeat(subject, state, reason, since_ms, checked_at_ms, last_alert_ms, "
                   "pending_until_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "
                   "state = excluded.state, reason = excluded.reason, since_ms = excluded.since_ms, "
                   "checked_at_ms = excluded.checked_at_ms, last_alert_ms = excluded.last_alert_ms, "
                   "pending_until_ms = excluded.pending_until_ms",
                   [subject, new_state, reason, since_ms, now_ms, last_alert_ms,
                    verdict.pending_until_ms if verdict.in_grace else None])
    return change


def state_of(db: Database, subject: str) -> dict | None:
    """The stored state of a subject: state, reason, since_ms, checked_at_ms, pending_until_ms (a mismatch in
    its grace); None before the first check."""
    return next(db.query("SELECT state, reason, since_ms, checked_at_ms, pending_until_ms FROM heartbeat "
                         "WHERE subject = ?", [subject]), None)


def is_recheck_due(db: Database, now_ms: int) -> bool:
    """True when a mismatch's grace has ended since the last check: its verdict is due now, not at the next
    periodic check up to a minute later."""
    row = db.execute("SELECT pending_until_ms FROM heartbeat WHERE subject = 'position'").fetchone()
    return row is not None and row[0] is not None and row[0] <= now_ms


def open_episodes(db: Database) -> dict[str, int]:
    """Subjects in a bad state now, with since when: their alerts can still be acknowledged."""
    marks = ", ".join("?" * len(FAILURES))
    return dict(db.execute(f"SELECT subject, since_ms FROM heartbeat WHERE state IN ({marks})",
                           sorted(FAILURES)).fetchall())


def _message(subject: str, state: str, reason: str) -> str:
    title = _TITLES.get(subject, subject.upper())
    if state in FAILURES:
        return f"{title} FAILURE: {reason}"
    return f"{title} RECOVERED: {reason}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


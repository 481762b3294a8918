"""The alert outbox: alerts are rows first, delivered through Apprise apart from trading, with retries.

Queuing an alert is part of the transaction that changed a state, so an alert is never lost and
never sent for a change that did not happen. Delivery claims due rows one at a time (so two processes
never send the same alert), and a failing notifier only reschedules the row with a growing delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from core import store
from core.store import Database

log = logging.getLogger("omniwise.alerts")

CLAIM_MS = 60_000  # a claimed alert is left to its claimer this long
MAX_BACKOFF_S = 3600
NEVER_MS = 2**62  # the next attempt of an alert that is not retried

Notifier = Callable[[str, str], None]  # (title, body); raises AlertDeliveryError when not delivered
Step = Callable[[Database, int], object]  # (db, now_ms): work a delivery loop does before each delivery


class AlertDeliveryError(Exception):
    """A notifier did not take the alert. Caller: keep the alert and retry it later."""


def queue(db: Database, subject: str, state: str, message: str, now_ms: int, is_failure: bool) -> int:
    """Add an alert to the outbox (call inside the transaction that changed the state) and log it."""
    log.log(logging.CRITICAL if is_failure else logging.WARNING, message)
    return db.execute(
        "INSERT INTO alerts(created_at_ms, subject, state, message, next_attempt_ms) VALUES (?, ?, ?, ?, ?)",
        [now_ms, subject, state, message, now_ms]).lastrowid


def recent(db: Database, limit: int = 20, state: str | None = None) -> list[dict]:
    """The newest alerts first (of one `state` when given), with their delivery state."""
    where, args = ("WHERE state = ? ", [state]) if state else ("", [])
    return list(db.query("SELECT id, created_at_ms, subject, state, message, delivered_at_ms, attempts, last_error, "
                         f"acknowledged_at_ms FROM alerts {where}ORDER BY id DESC LIMIT ?", [*args, limit]))


def states(db: Database) -> list[str]:
    """Every state an alert has had, for a filter."""
    return [state for (state,) in db.execute("SELECT DISTINCT state FROM alerts ORDER BY state").fetchall()]


def delivery(alert: dict, has_urls: bool) -> str:
    """What became of an alert, in words: sent, log only (no OMNIWISE_ALERT_URLS), queued or not sent."""
    if alert["delivered_at_ms"] is not None:
        return "sent" if has_urls else "log only"
    return "not sent" if alert["attempts"] else "queued"


def acknowledge(db: Database, alert_id: int, now_ms: int) -> bool:
    """The operator has seen an alert: its episode is not repeated any more. False for an unknown id."""
    return db.execute("UPDATE alerts SET acknowledged_at_ms = coalesce(acknowledged_at_ms, ?) WHERE id = ?",
                      [now_ms, alert_id]).rowcount == 1


def is_acknowledged(db: Database, subject: str, since_ms: int) -> bool:
    """True when an alert of `subject` raised since `since_ms` (the episode's start) was acknowledged."""
    return db.execute("SELECT 1 FROM alerts WHERE subject = ? AND created_at_ms >= ? AND acknowledged_at_ms "
                      "IS NOT NULL LIMIT 1", [subject, since_ms]).fetchone() is not None


def send_test(db: Database, notify: Notifier | None, now_ms: int) -> tuple[bool, str]:
    """Send a test notification at once (not through the outbox) and keep it as an alert with its outcome.
    Returns (delivered, what happened in words)."""
    message = "TEST: a test notification from Omniwise; alerts reach you this way"
    # claimed at once, so the outbox of either process leaves it to this request
    alert_id = db.execute("INSERT INTO alerts(created_at_ms, subject, state, message, next_attempt_ms, attempts, "
                          "delivered_at_ms, claimed_until_ms) VALUES (?, 'test', 'test', ?, ?, 1, ?, ?)",
                          [now_ms, message, now_ms, now_ms if notify is None else None, now_ms + CLAIM_MS]).lastrowid
    if notify is None:
        return False, "No OMNIWISE_ALERT_URLS are set: alerts are written to the log only, nothing was sent."
    try:
        notify("Omniwise: test", message)
    except AlertDeliveryError as exc:
        db.execute("UPDATE alerts SET last_error = ?, next_attempt_ms = ? WHERE id = ?",  # not retried: a test is about now
                   [str(exc)[:500], NEVER_MS, alert_id])
        return False, f"The test notification was not delivered: {exc}"
    db.execute("UPDATE alerts SET delivered_at_ms = ? WHERE id = ?", [now_ms, alert_id])
    return True, "The test notification was delivered to every alert URL."


def backoff_s(attempts: int) -> float:
    """Delay before the next try after `attempts` failed ones: 30 s, 1 min, 2 min, ... at most an hour."""
    return min(30 * 2 ** (attempts - 1), MAX_BACKOFF_S)


def deliver_due(db: Database, notify: Notifier | None, now_ms: int, limit: int = 20) -> int:
    """Deliver alerts that are due; returns how many were delivered. With no notifier, the log was it."""
    due = db.execute("SELECT id FROM alerts WHERE delivered_at_ms IS NULL AND next_attempt_ms <= ? "
                     "ORDER BY id LIMIT ?", [now_ms, limit]).fetchall()
    delivered = 0
    for (alert_id,) in due:
        claimed = db.execute(
            "UPDATE alerts SET claimed_until_ms = ? WHERE id = ? AND delivered_at_ms IS NULL "
            "AND (claimed_until_ms IS NULL OR claimed_until_ms < ?)",
            [now_ms + CLAIM_MS, alert_id, now_ms]).rowcount
        if not claimed:
            continue  # another process is on it
        alert = next(db.query("SELECT state, message, attempts FROM alerts WHERE id = ?", [alert_id]))
        attempts = alert["attempts"]
        try:
            if notify is not None:
                notify(f"Omniwise: {alert['state']}", alert["message"])
        except AlertDeliveryError as exc:
            attempts += 1
            db.execute("UPDATE alerts SET attempts = ?, last_error = ?, next_attempt_ms = ?, claimed_until_ms = NULL "
                       "WHERE id = ?", [attempts, str(exc)[:500], now_ms + int(backoff_s(attempts) * 1000), alert_id])
            log.warning("alert %d not delivered (try %d): %s", alert_id, attempts, exc)
            continue
        db.execute("UPDATE alerts SET delivered_at_ms = ?, attempts = ?, claimed_until_ms = NULL WHERE id = ?",
                   [now_ms, attempts + 1, alert_id])
        delivered += 1
    return delivered


class DeliveryLoop(threading.Thread):
    """Delivers the outbox every `every_s` in its own thread, so a notifier that hangs or fails slows only it.

    Both processes run one. Its `steps` run before each delivery: the web app's judges the worker (a dead
    worker cannot report itself), the worker's pings the dead-man's switch.
    """

    def __init__(self, name: str, db_path: str | Path, alert_urls: tuple[str, ...], every_s: float,
                 clock_ms: Callable[[], int], steps: Sequence[Step] = (), first_wait_s: float = 0.0,
                 stop: threading.Event | None = None):
        super().__init__(name=name, daemon=True)
        self.db_path, self.alert_urls, self.every_s, self.clock_ms = db_path, alert_urls, every_s, clock_ms
        self.steps, self.first_wait_s = tuple(steps), first_wait_s
        self.stop = stop or threading.Event()

    def run(self) -> None:
        notify = apprise_notifier(self.alert_urls)
        if self.stop.wait(self.first_wait_s):  # e.g. a worker started with the web app gets time for its beacon
            return
        with store.open_db(self.db_path) as db:
            while True:
                self.run_once(db, notify)
                if self.stop.wait(self.every_s):
                    return

    def run_once(self, db: Database, notify: Notifier | None) -> None:
        """The steps, then one delivery, each on its own: a failure is logged and the next round tries again."""
        now_ms = self.clock_ms()
        for step in (*self.steps, lambda db, now_ms: deliver_due(db, notify, now_ms)):
            try:
                step(db, now_ms)
            except Exception:  # noqa: BLE001 - the loop must outlive a locked database or an unreachable URL
                log.warning("%s: a step failed; the next round tries again", self.name, exc_info=True)


def apprise_notifier(urls: tuple[str, ...]) -> Notifier | None:
    """A notifier sending to Apprise URLs, or None when there are none (alerts then go to the log only).

    Apprise gives up on a target after its connect and read timeouts (4 s each unless a URL sets
    `cto=`/`rto=`); delivery runs in its own thread, so even that never holds up trading.
    """
    if not urls:
        return None
    import apprise

    asset = apprise.AppriseAsset()

    def notify(title: str, body: str) -> None:
        sender = apprise.Apprise(asset=asset)
        for url in urls:
            if not sender.add(url):
                raise AlertDeliveryError(f"not an Apprise URL: {_redact_url(url)}")
        result = sender.notify(title=title, body=body)
        if not result:
            raise AlertDeliveryError(f"{len(urls)} notifier(s) refused or could not be reached")

    return notify


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://..." if rest else "..."

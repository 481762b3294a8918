"""Alerts for the operator: every alert with its delivery, acknowledging one, a test notification."""

from __future__ import annotations

import re

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from blueprints.db import get_db
from core import clock
from core.health import alerts, heartbeat

bp = Blueprint("alerts", __name__)



@bp.get("/alerts")
def index():
    """The newest alerts (of one state with ?state=) with whether each was delivered, and the test button."""
    db, state = get_db(), request.args.get("state") or None
    return render_template("alerts/index.html", alerts=alerts.recent(db, 100, state), open_episodes=heartbeat.open_episodes(db),
                           has_urls=bool(current_app.config["SETTINGS"].alert_urls), states=alerts.states(db),
                           state=state)


@bp.app_template_filter("delivery")
def delivery(alert: dict) -> str:
    """What became of an alert: sent, log only, queued or not sent."""
    return alerts.delivery(alert, bool(current_app.config["SETTINGS"].alert_urls))


@bp.app_template_filter("words")
def words(state: str) -> str:
    """A state as the operator says it: trailing_stop -> trailing stop."""
    return state.replace("_", " ")


@bp.post("/alerts/<alert_id>/acknowledge")
def acknowledge(alert_id: str):
    """Seen: this alert's episode is not repeated any more."""
    # ASCII digits that fit SQLite's integer only: "²" passes isdigit() but not int(), 23 digits overflow.
    if not re.fullmatch(r"[0-9]{1,18}", alert_id) or not alerts.acknowledge(get_db(), int(alert_id), clock.now_ms()):
        abort(404, f"There is no alert {alert_id}.")
    flash("Acknowledged: its repeats are silenced until the state changes.", "good")
    return redirect(request.referrer if _is_local(request.referrer) else url_for("alerts.index"))


@bp.post("/alerts/test")
def send_test():
    """Send a test notification through Apprise now and show what became of it."""
    settings = current_app.config["SETTINGS"]
    delivered, detail = alerts.send_test(get_db(), alerts.apprise_notifier(settings.alert_urls), clock.now_ms())
    flash(detail, "good" if delivered else "bad")
    return redirect(url_for("alerts.index"))


def _is_local(url: str | None) -> bool:
    return bool(url) and url.startswith(request.host_url)

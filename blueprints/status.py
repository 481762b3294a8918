"""The operator's status dashboard and its fragments, the uptime check and the status API."""

from __future__ import annotations

import sqlite3

from flask import Blueprint, current_app, render_template, request, session

from blueprints.db import get_db
from core import clock, dashboard, replay_status, store, strategies
from core.webhook import intake
from core.policy_loader import PolicyLoader
from core.health.status import is_healthy, status_report

bp = Blueprint("status", __name__)


@bp.record_once
def _set_up(state) -> None:
    # The chart draws the averages of the strategy the file holds, compiled once per change of the file.
    state.app.extensions["omniwise.policy"] = PolicyLoader(state.app.config["SETTINGS"].strategy_path)



@bp.get("/")
def index():
    """The dashboard: status, chart, recent activity; its fragments refresh themselves."""
    db, settings, now_ms = get_db(), current_app.config["SETTINGS"], clock.now_ms()
    loader = current_app.extensions["omniwise.policy"]
    return render_template("status/index.html", report=dashboard.overview(db, settings, now_ms),
                           activity=dashboard.recent_activity(db), now_ms=now_ms, policy=loader.current(),
                           strategy_error=loader.error, worker=strategies.worker_view(db, now_ms))


@bp.app_template_global()
def page_warnings() -> list[dashboard.Warning]:
    """What every page's banner says is wrong now (none for a database that cannot be read)."""
    try:
        return dashboard.warnings(get_db(), clock.now_ms())
    except sqlite3.Error:  # the error page says why; the banner must not fail it
        return []


@bp.app_template_global()
def entry_size_share() -> float:
    """The share of the account each entry spends: the strategy's SIZE (1.0 without one)."""
    return current_app.extensions["omniwise.policy"].current().risk.size_share


@bp.app_template_global()
def page_replay() -> replay_status.Replay | None:
    """The replay the worker runs (or ran to its end), for the banner on every page."""
    try:
        return replay_status.current(get_db(), current_app.config["SETTINGS"].symbol)
    except sqlite3.Error:
        return None


@bp.app_template_global()
def page_read_ms() -> int:
    """When this page's data was read."""
    return clock.now_ms()


@bp.get("/banner")
def banner():
    """The #banner fragment on every page: the worker down, a heartbeat mismatch or a stale signal."""
    return render_template("_banner.html", warnings=page_warnings(), replay=page_replay())


@bp.get("/dashboard/summary")
def summary():
    """The #summary fragment: worker, market, position, signal, heartbeat."""
    now_ms = clock.now_ms()
    return render_template("status/_summary.html", now_ms=now_ms,
                           report=dashboard.overview(get_db(), current_app.config["SETTINGS"], now_ms))


@bp.get("/dashboard/activity")
def activity():
    """The #activity fragment: recent decisions, orders, signals and alerts."""
    return render_template("status/_activity.html", activity=dashboard.recent_activity(get_db()))


@bp.get("/api/v1/chart")
def chart():
    """Candles, the strategy's moving averages and trade/signal markers, for the dashboard's chart."""
    policy = current_app.extensions["omniwise.policy"].current()
    return dashboard.chart(get_db(), current_app.config["SETTINGS"].symbol, policy)


@bp.get("/healthz")
def healthz():
    """200 when the worker is alive and the heartbeat is ok, 503 otherwise (for uptime monitors)."""
    db = get_db()  # a database that cannot be opened answers 503 JSON too (blueprints/admin.py)
    report = status_report(db, current_app.config["SETTINGS"], clock.now_ms(), alert_limit=0)
    is_db_writable = store.is_writable(db)
    healthy = is_healthy(report) and is_db_writable
    body = {"healthy": healthy, "worker_alive": report["worker"]["alive"], "heartbeat": report["heartbeat"]["state"],
            "database_writable": is_db_writable}
    return body, 200 if healthy else 503


@bp.get("/api/v1/status")
def api_status():
    """The status report as JSON, for the webhook's token holder or the logged-in operator."""
    if not is_operator():
        return {"error": "give the webhook token (X-Omniwise-Token header or ?token=) or log in"}, 401
    return status_report(get_db(), current_app.config["SETTINGS"], clock.now_ms())


def is_operator() -> bool:
    """A request from the operator: a logged-in session, or the webhook token in a header or the query."""
    if session.get("operator"):
        return True
    token = current_app.extensions["omniwise.webhook"].token
    return intake.is_token_valid((request.headers.get("X-Omniwise-Token"), request.args.get("token")), token)

"""The operator's status page."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template, request, session

from core import liveness, signals
from core.status import is_healthy, status_report
from core.dsl import StrategyError, compile_strategy

bp = Blueprint("status", __name__)


@bp.get("/")
def index():
    from omniwise import get_db

    settings = current_app.config["SETTINGS"]
    errors, rules = [], []
    try:
        rules = compile_strategy(settings.strategy_path.read_text(encoding="utf-8")).rules
    except FileNotFoundError:
        pass
    except StrategyError as exc:
        errors = exc.errors
    worker = liveness.worker_status(get_db(), int(time.time() * 1000))
    return render_template("status/index.html", settings=settings, rules=rules, errors=errors, worker=worker,
                           now_ms=int(time.time() * 1000))


@bp.get("/healthz")
def healthz():
    """200 when the worker is alive and the heartbeat is ok, 503 otherwise (for uptime monitors)."""
    from omniwise import get_db

    report = status_report(get_db(), current_app.config["SETTINGS"], int(time.time() * 1000), alert_limit=0)
    healthy = is_healthy(report)
    body = {"healthy": healthy, "worker_alive": report["worker"]["alive"], "heartbeat": report["heartbeat"]["state"]}
    return body, 200 if healthy else 503


@bp.get("/api/v1/status")
def api_status():
    """The status report as JSON, for the webhook's token holder or the logged-in operator."""
    from omniwise import get_db

    if not is_operator():
        return {"error": "give the webhook token (X-Omniwise-Token header or ?token=) or log in"}, 401
    return status_report(get_db(), current_app.config["SETTINGS"], int(time.time() * 1000))


def is_operator() -> bool:
    """A request from the operator: a logged-in session, or the webhook token in a header or the query."""
    if session.get("operator"):
        return True
    token = current_app.extensions["omniwise.webhook"].token
    return signals.is_token_valid((request.headers.get("X-Omniwise-Token"), request.args.get("token")), token)

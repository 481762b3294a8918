"""The signal webhook, POST /api/v1/external-signal (described in docs/openapi.yaml), and JSON errors on /api/."""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from core import clock, logs, store
from core.store import Database
from core.webhook import intake, ledger
from core.ratelimit import RateLimited, RateLimiter

bp = Blueprint("signals", __name__)
log = logging.getLogger(__name__)

STATUS = {
    intake.AddressRefused: 403,
    intake.TokenError: 401,
    intake.BodyTooLarge: 413,
    intake.UnsupportedContentType: 415,
    intake.WrongSymbol: 422,
    intake.SignalError: 400,
}


@dataclasses.dataclass
class Webhook:
    """The webhook's state in one app: its token, rate limit, clock and one ledger connection a thread."""

    token: str
    limiter: RateLimiter
    db_path: Path
    clock_ms: Callable[[], int] = clock.now_ms
    _local: threading.local = dataclasses.field(default_factory=threading.local)

    def db(self) -> Database:
        """This thread's connection; kept open, as opening one costs more than a whole ledger write."""
        if getattr(self._local, "db", None) is None:
            self._local.db = ledger.open_ledger(self.db_path)
        return self._local.db


@bp.record_once
def _set_up(state) -> None:
    settings = state.app.config["SETTINGS"]
    with store.open_db(settings.db_path) as db:
        token = intake.webhook_token(db, settings.webhook_token)
    logs.add_secrets(token)  # e.g. Flask's "Exception on /api/v1/external-signal/TOKEN" line
    limiter = RateLimiter(settings.webhook_rate_per_s, burst=2 * settings.webhook_rate_per_s)
    state.app.extensions["omniwise.webhook"] = Webhook(token, limiter, settings.db_path)


@bp.post("/api/v1/external-signal")
@bp.post("/api/v1/external-signal/<token>")
def external_signal(token: str | None = None):
    """Record the position another system believes in; the answer says what became of it."""
    settings = current_app.config["SETTINGS"]
    webhook: Webhook = current_app.extensions["omniwise.webhook"]
    address = request.remote_addr or ""
    intake.check_address(address, settings.webhook_allow)
    webhook.limiter.take(address)
    # Not the app's 1 MB limit: at most 4 KB + 1 is read below, and a bigger body refused with its reason.
    request.max_content_length = sys.maxsize
    delivery = intake.Delivery(
        body=request.stream.read(intake.MAX_BODY_BYTES + 1),
        content_type=request.headers.get("Content-Type"),
        tokens=(token, request.args.get("token"), request.headers.get("X-Omniwise-Token")),
        remote_addr=address,
    )
    receipt = intake.receive(webhook.db(), delivery, token=webhook.token, symbol=settings.symbol,
                              now_ms=webhook.clock_ms())
    return receipt.as_json()


@bp.errorhandler(intake.WebhookError)
def _refused(exc: intake.WebhookError):
    # A sender may have put the token in another field, which the message quotes: never echo it.
    return {"error": intake.redact(str(exc), current_app.extensions["omniwise.webhook"].token)}, STATUS[type(exc)]


@bp.errorhandler(RateLimited)
def _rate_limited(exc: RateLimited):
    return {"error": str(exc)}, 429, {"Retry-After": str(math.ceil(exc.retry_after_s))}


@bp.errorhandler(ledger.LedgerBusy)
@bp.errorhandler(sqlite3.OperationalError)
def _ledger_unavailable(exc: Exception):
    log.error("signal ledger unavailable: %s", exc)
    return {"error": "the signal ledger is busy or unavailable; retry in a few seconds"}, 503, {"Retry-After": "5"}


@bp.app_errorhandler(HTTPException)
def _api_error_as_json(exc: HTTPException):
    """Errors under /api/ answer JSON (404, 405, 413, 500, ...); other pages answer a page in the app's layout."""
    response = exc.get_response()
    if request.path.startswith("/api/"):
        response.set_data(current_app.json.dumps({"error": f"{exc.name}: {exc.description}"}))
        response.content_type = "application/json"
    elif (exc.code or 0) >= 400:
        description = exc.description
        if exc.code == 500:  # never the exception's text: it is in the log
            log.error("500 on %s", request.path, exc_info=getattr(exc, "original_exception", None))
            description = "Omniwise failed to answer this page. The log has the details; trading goes on."
        try:
            page = render_template("error.html", code=exc.code, name=exc.name, description=description)
        except Exception:  # the layout itself failed (a broken database): Flask's plain page still answers
            log.exception("the error page for %s could not be rendered", request.path)
            return response
        response.set_data(page)
        response.content_type = "text/html; charset=utf-8"
    return response

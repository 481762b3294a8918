"""The operator's side: login, the strategy editor and its history, the webhook panel; the login and CSRF guard."""

from __future__ import annotations

import time

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from blueprints import htmx
from blueprints.db import get_db
from core import auth, backtest, strategies, tradingview
from core.dsl import StrategyError

bp = Blueprint("admin", __name__)

# Endpoints open without a session: the webhook and the uptime check answer their own callers, and
# /api/v1/status checks the token or the session itself.
PUBLIC = {"static", "admin.login", "signals.external_signal", "status.healthz", "status.api_status"}
NO_CSRF = {"signals.external_signal"}  # its token is its proof
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _db():
    return get_db()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _strategy_path():
    return current_app.config["SETTINGS"].strategy_path


@bp.before_app_request
def guard():
    """Every page but the public ones needs the operator's session; every form post its session's CSRF token."""
    if request.endpoint is None:  # no such route or method: the router's 404 or 405 answers
        return None
    if request.endpoint not in PUBLIC and not session.get("operator"):
        if request.path.startswith("/api/"):
            return {"error": "log in first"}, 401
        if htmx:  # a fragment of an expired session: send the whole page to login
            return "", 401, {"HX-Redirect": url_for("admin.login")}
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    if request.method not in SAFE_METHODS and request.endpoint not in NO_CSRF:
        given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        if not auth.is_csrf_token_valid(session.get("csrf_token"), given):
            abort(400, "The form was not sent from this session's page: reload the page and try again.")
    return None


@bp.after_app_request
def security_headers(response):
    """No framing, no foreign scripts, no sniffing; pages (which may hold secrets) are not cached."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_context_processor
def page_context() -> dict:
    return {"csrf_token": csrf_token, "settings": current_app.config["SETTINGS"]}


def csrf_token() -> str:
    """This session's CSRF token, made on first use."""
    if "csrf_token" not in session:
        session["csrf_token"] = auth.new_csrf_token()
    return session["csrf_token"]


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The password form; a right password opens a new session."""
    page = {"next": _local_path(request.values.get("next")), "has_password": auth.has_password(_db())}
    if request.method == "GET":
        return render_template("admin/login.html", **page)
    try:
        is_right = auth.log_in(_db(), request.form.get("password", ""), request.remote_addr or "", _now_ms())
    except auth.TooManyAttempts as exc:
        return render_template("admin/login.html", error=str(exc), **page), 429, {"Retry-After": str(exc.retry_after_s)}
    if not is_right:
        return render_template("admin/login.html", error="That is not the password.", **page), 401
    session.clear()  # a new session id's worth: nothing from before the login carries over
    session.permanent = True
    session["operator"] = True
    return redirect(page["next"] or url_for("status.index"))


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/admin/algo")
def editor():
    """The strategy editor with the saved text."""
    text = strategies.read_strategy(_strategy_path())
    return _editor_page(text, *strategies.check(text))


@bp.post("/admin/algo")
def save():
    """Save a valid strategy (the worker picks it up); an invalid one is shown again with its errors."""
    text = request.form.get("strategy", "")
    try:
        policy = strategies.save_strategy(_strategy_path(), text, _db(), _now_ms())
    except StrategyError as exc:
        return _editor_page(text, None, exc.errors, refused=True), 422
    flash(f"Saved version {policy.version}: {_rules(policy)}.", "good")
    return redirect(url_for("admin.editor"))


def _editor_page(text: str, policy, errors, refused: bool = False) -> str:
    saved_version = strategies.version_of(strategies.read_strategy(_strategy_path()))
    return render_template("admin/algo.html", text=text, policy=policy, errors=errors, refused=refused,
                           preview=_preview(policy),
                           saved_version=saved_version, worker=strategies.worker_view(_db(), _now_ms()))


@bp.post("/admin/algo/validate")
def validate():
    """The live check of the editor's text: the #validation fragment with every error (none: valid)."""
    policy, errors = strategies.check(request.form.get("strategy", ""))
    return render_template("admin/_validation.html", policy=policy, errors=errors, preview=_preview(policy))


def _preview(policy):
    """What a valid strategy would have done over the stored candles (the same engine as the backtest)."""
    if policy is None:
        return None
    settings = current_app.config["SETTINGS"]
    return backtest.preview(_db(), settings.symbol, policy, settings.fee_rate)


@bp.get("/admin/algo/loaded")
def loaded():
    """The #loaded fragment: whether the worker runs the saved version yet."""
    saved_version = strategies.version_of(strategies.read_strategy(_strategy_path()))
    return render_template("admin/_loaded.html", saved_version=saved_version,
                           worker=strategies.worker_view(_db(), _now_ms()))


@bp.get("/admin/algo/history")
def history():
    """Saved versions, newest first, each with its diff against the current text."""
    current = strategies.read_strategy(_strategy_path())
    entries = [(version, strategies.diff(version.text, current))  # read old -> new
               for version in strategies.versions(_db())]
    return render_template("admin/history.html", entries=entries, current_version=strategies.version_of(current))


@bp.post("/admin/algo/history/<version>/restore")
def restore(version: str):
    """Make a saved version the current strategy again."""
    try:
        policy = strategies.restore_version(_strategy_path(), version, _db(), _now_ms())
    except strategies.UnknownVersion:
        abort(404, f"No saved strategy has version {version}.")
    except StrategyError as exc:
        flash(f"Version {version} cannot be restored: {exc}", "bad")
        return redirect(url_for("admin.history"))
    flash(f"Restored version {policy.version}: {_rules(policy)}.", "good")
    return redirect(url_for("admin.editor"))


@bp.get("/admin/webhook")
def webhook():
    """What to give TradingView: the webhook URL, its secret and alert messages to paste."""
    token = current_app.extensions["omniwise.webhook"].token
    return render_template("admin/webhook.html", token=token, messages=tradingview.alert_messages(), tv=tradingview,
                           url=url_for("signals.external_signal", token=token, _external=True))


def _rules(policy) -> str:
    return "1 rule" if len(policy.rules) == 1 else f"{len(policy.rules)} rules"


def _local_path(target: str | None) -> str | None:
    """`target` when it is a path on this site (never another host), else None."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return None

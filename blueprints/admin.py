"""The operator's side: login, the strategy editor and its history, the webhook panel (the guard: blueprints/guard.py)."""

from __future__ import annotations

import logging
import sqlite3
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from blueprints.db import get_db
from core import auth, brokers, charts, clock, logs, strategies, tradingview, warmup
from core.dsl import StrategyError
from core.feeds import FeedError
from core.history import HistoryError, downloaded, preview_candles

bp = Blueprint("admin", __name__)
log = logging.getLogger(__name__)

HISTORY_PAGE_SIZE = 10  # versions a history page shows
HISTORY_LINES_SHOWN = 200  # of each version's diff and text; the rest is a link away


def _db():
    return get_db()



def _strategy_path():
    return current_app.config["SETTINGS"].strategy_path


@bp.app_errorhandler(sqlite3.OperationalError)
def database_unavailable(exc: sqlite3.OperationalError):
    """The database cannot be opened, read or written: 503 with the reason, JSON where a program asks."""
    log.error("database unavailable on %s: %s", request.path, exc)
    message = (f"The database cannot be used right now ({exc}): check that the data folder and omniwise.db are "
               "writable by this user and the disk is not full, then retry.")
    if request.path.startswith("/api/") or request.endpoint == "status.healthz":
        return {"healthy": False, "error": message}, 503, {"Retry-After": "30"}
    return render_template("admin/error.html", message=message), 503, {"Retry-After": "30"}


@bp.app_context_processor
def page_context() -> dict:
    return {"settings": current_app.config["SETTINGS"]}


@bp.app_template_filter("visible")
def visible(text: str | None) -> str:
    """Text with control characters (NUL, escapes, direction overrides) shown as escapes, one line kept one line."""
    return "" if text is None else logs.escape_controls(text)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The password form; a right password opens a new session."""
    page = {"next": _local_path(request.values.get("next")), "has_password": auth.has_password(_db())}
    if request.method == "GET":
        return render_template("admin/login.html", **page)
    try:
        is_right = auth.log_in(_db(), request.form.get("password", ""), request.remote_addr or "", clock.now_ms())
    except auth.TooManyAttempts as exc:
        return render_template("admin/login.html", error=str(exc), **page), 429, {"Retry-After": str(exc.retry_after_s)}
    if not is_right:
        return render_template("admin/login.html", error="That is not the password.", **page), 401
    session.clear()  # a new session id's worth: nothing from before the login carries over
    session.permanent = True
    session["operator"] = True
    session["generation"] = auth.session_generation(_db())
    return redirect(page["next"] or url_for("status.index"))


@bp.post("/logout")
def logout():
    """End the session here and everywhere: a copy of the cookie no longer opens anything."""
    auth.end_sessions(_db(), clock.now_ms())
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/admin/algo")
def editor():
    """The strategy editor with the saved text."""
    text, unreadable = strategies.read_for_editor(_strategy_path())
    if unreadable is not None:  # the worker does not read it either: say why, Save replaces it
        return _editor_page(text, None, unreadable.errors)
    return _editor_page(text, *strategies.check(text, _short_refusal()))


@bp.post("/admin/algo")
def save():
    """Save a valid strategy (the worker picks it up); an invalid one is shown again with its errors."""
    text = request.form.get("strategy", "")
    try:
        policy = strategies.save_strategy(_strategy_path(), text, _db(), clock.now_ms(), _short_refusal())
    except StrategyError as exc:
        return _editor_page(text, None, exc.errors, refused=True), 422
    except (OSError, sqlite3.OperationalError) as exc:  # a read-only data folder, a full disk: keep the text
        reason = getattr(exc, "strerror", None) or exc
        flash(f"Not saved: cannot write {_strategy_path()} or its database ({reason}). Make the data folder "
              "writable by the user running Omniwise, then save again; the running strategy is unchanged.", "bad")
        return _editor_page(text, *strategies.check(text, _short_refusal())), 503
    flash(f"Saved version {policy.version}: {_rules(policy)}.", "good")
    return redirect(url_for("admin.editor"))


def _editor_page(text: str, policy, errors, refused: bool = False) -> str:
    saved_version = strategies.version_of(strategies.read_for_editor(_strategy_path())[0])
    return render_template("admin/algo.html", text=text, policy=policy, errors=errors, refused=refused,
                           preview=_preview(policy), history=policy and warmup.history_needed(policy),
                           is_saved_text=strategies.version_of(text) == saved_version,
                           downloaded=downloaded(current_app.config["SETTINGS"].data_dir),
                           saved_version=saved_version, worker=strategies.worker_view(_db(), clock.now_ms()))


def _short_refusal() -> str | None:
    return current_app.config["SETTINGS"].short_refusal  # the worker's broker decides whether SHORT is allowed


@bp.post("/admin/algo/validate")
def validate():
    """The live check of the editor's text: the #validation fragment with every error (none: valid)."""
    policy, errors = strategies.check(request.form.get("strategy", ""), _short_refusal())
    return render_template("admin/_validation.html", policy=policy, errors=errors, preview=_preview(policy),
                           history=policy and warmup.history_needed(policy))


def _preview(policy):
    """What a valid strategy would have done over the stored candles, or over the downloaded history picked
    under the editor (the same engine as the backtest)."""
    if policy is None:
        return None
    settings = current_app.config["SETTINGS"]
    picked = request.form.get("preview_source", "")
    if not picked:
        return charts.preview(_db(), settings.symbol, policy, settings.fee_rate)
    try:
        candles, source = preview_candles(settings.data_dir, picked, request.form.get("preview_from", ""),
                                          request.form.get("preview_to", ""), clock.now_ms())
    except HistoryError as exc:
        return charts.Preview(None, "", source=picked, error=str(exc))
    except FeedError as exc:
        return charts.Preview(None, "", source=picked, error=exc.format())
    return charts.preview_of(candles, policy, settings.fee_rate, source)


@bp.get("/admin/algo/loaded")
def loaded():
    """The #loaded fragment: whether the worker runs the saved version yet."""
    saved_version = strategies.version_of(strategies.read_for_editor(_strategy_path())[0])
    return render_template("admin/_loaded.html", saved_version=saved_version,
                           worker=strategies.worker_view(_db(), clock.now_ms()))


@bp.get("/admin/algo/history")
def history():
    """Saved versions, newest first, a page at a time, each with what its save changed."""
    current = strategies.read_for_editor(_strategy_path())[0]
    pages = max(1, -(-strategies.version_count(_db()) // HISTORY_PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    rows = strategies.versions(_db(), HISTORY_PAGE_SIZE + 1, (page - 1) * HISTORY_PAGE_SIZE)  # + the one before
    entries = [(version, *_shown(strategies.diff(rows[i + 1].text if i + 1 < len(rows) else "", version.text)),
                *_shown(version.text.splitlines())) for i, version in enumerate(rows[:HISTORY_PAGE_SIZE])]
    try:  # the newest save of the current text is "current", not every save of the same text
        current_id = strategies.find_version(_db(), strategies.version_of(current)).id
    except strategies.UnknownVersion:
        current_id = None
    return render_template("admin/history.html", entries=entries, current_id=current_id, page=page, pages=pages)


def _shown(lines: list[str]) -> tuple[list[str], int]:
    """The lines a page shows at most, and how many more there are (a version may be 100,000 characters)."""
    return lines[:HISTORY_LINES_SHOWN], max(0, len(lines) - HISTORY_LINES_SHOWN)


@bp.get("/admin/algo/history/<version>.txt")
def version_text(version: str):
    """The whole text of a saved version."""
    try:
        text = strategies.find_version(_db(), version).text
    except strategies.UnknownVersion:
        abort(404, f"No saved strategy has version {version}.")
    return text, 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/admin/algo/history/<version>/restore")
def confirm_restore(version: str):
    """Ask before restoring: what would change against the version the worker runs, and the position now."""
    try:
        chosen = strategies.find_version(_db(), version)
    except strategies.UnknownVersion:
        abort(404, f"No saved strategy has version {version}.")
    worker = strategies.worker_view(_db(), clock.now_ms())
    try:
        running = strategies.find_version(_db(), worker.loaded_version).text if worker.loaded_version else None
    except strategies.UnknownVersion:
        running = None
    if running is None:  # the worker has loaded nothing saved here: compare with the file it will load
        running = strategies.read_for_editor(_strategy_path())[0]
    changes, more = _shown(strategies.diff(running, chosen.text))
    return render_template("admin/restore.html", chosen=chosen, changes=changes, more_changes=more, worker=worker,
                           running_version=strategies.version_of(running), position=brokers.load_position(_db()))


@bp.post("/admin/algo/history/<version>/restore")
def restore(version: str):
    """Make a saved version the current strategy again."""
    try:
        policy = strategies.restore_version(_strategy_path(), version, _db(), clock.now_ms())
    except strategies.UnknownVersion:
        abort(404, f"No saved strategy has version {version}.")
    except StrategyError as exc:
        flash(f"Version {version} cannot be restored: {exc}", "bad")
        return redirect(url_for("admin.history"))
    except OSError as exc:
        flash(f"Version {version} not restored: cannot write {_strategy_path()} ({exc.strerror or exc}).", "bad")
        return redirect(url_for("admin.history"))
    flash(f"Restored version {policy.version}: {_rules(policy)}.", "good")
    return redirect(url_for("admin.editor"))


@bp.get("/admin/webhook")
def webhook():
    """What to give TradingView: the webhook URL, its secret and alert messages to paste."""
    token = current_app.extensions["omniwise.webhook"].token
    policy = current_app.extensions["omniwise.policy"].current()  # the strategy file's, compiled once per change
    return render_template("admin/webhook.html", token=token, messages=tradingview.alert_messages(), tv=tradingview,
                           url=url_for("signals.external_signal", token=token, _external=True),
                           bar=policy.timeframe_name, bar_ttl_s=int(tradingview.ttl_for_bar_s(policy.timeframe * 60)))


def _rules(policy) -> str:
    return "1 rule" if len(policy.rules) == 1 else f"{len(policy.rules)} rules"


def _local_path(target: str | None) -> str | None:
    """`target` when it is a path on this site (never another host), else None.

    Browsers drop tabs and line breaks from a URL and read a backslash as a slash, so `/<TAB>/evil.com`
    would lead to //evil.com: a path holding any of them, a space or another control character is refused.
    """
    if not target or not target.startswith("/") or "\\" in target:
        return None
    if any(char.isspace() for char in target) or logs.has_control_characters(target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return None
    return target

"""The web app's guard: the operator's session and CSRF token on every request, security headers on every answer."""

from __future__ import annotations

import ipaddress
import logging
import time

from flask import Flask, abort, current_app, redirect, request, session, url_for

from blueprints import htmx
from blueprints.db import get_db
from core import auth

log = logging.getLogger(__name__)

# Endpoints open without a session: the webhook and the uptime check answer their own callers, and
# /api/v1/status checks the token or the session itself.
PUBLIC = {"static", "admin.login", "signals.external_signal", "status.healthz", "status.api_status"}
NO_CSRF = {"signals.external_signal"}  # its token is its proof
NO_SESSION = {"static", "signals.external_signal", "status.healthz"}  # no database read for their session
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PROXY_WARNING_EVERY_S = 600
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def init_app(app: Flask) -> None:
    """Guard every request of `app` and put the security headers on every answer."""
    app.before_request(guard)
    app.after_request(security_headers)
    app.context_processor(lambda: {"csrf_token": csrf_token})


def guard():
    """Every page but the public ones needs the operator's session; every form post its session's CSRF token."""
    _warn_of_untrusted_proxy()
    if request.endpoint is None:  # no such route or method: the router's 404 or 405 answers
        return None
    if request.endpoint not in NO_SESSION:
        _end_stale_session()
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


def security_headers(response):
    """No framing, no foreign scripts, no sniffing; pages (which may hold secrets) are not cached."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def csrf_token() -> str:
    """This session's CSRF token, made on first use."""
    if "csrf_token" not in session:
        session["csrf_token"] = auth.new_csrf_token()
    return session["csrf_token"]


def _warn_of_untrusted_proxy() -> None:
    """Say so (every 10 minutes at most) when a proxy on this machine forwards requests we do not trust it for.

    Then every visitor has the proxy's address: five wrong passwords from anyone lock the operator out,
    and the webhook's allow-list sees only 127.0.0.1.
    """
    if current_app.config["SETTINGS"].trust_proxy or "X-Forwarded-For" not in request.headers:
        return
    try:
        if not ipaddress.ip_address(request.remote_addr or "").is_loopback:
            return
    except ValueError:
        return
    now_s = time.monotonic()
    if now_s - current_app.extensions.get("omniwise.proxy_warned_s", -PROXY_WARNING_EVERY_S) < PROXY_WARNING_EVERY_S:
        return
    current_app.extensions["omniwise.proxy_warned_s"] = now_s
    log.warning("requests from %s carry X-Forwarded-For but OMNIWISE_TRUST_PROXY is 0: every visitor looks like "
                "this proxy, so failed logins of anyone lock out everyone; set OMNIWISE_TRUST_PROXY to the number "
                "of proxies in front (1 for the Caddy of docs/deploy.md)", request.remote_addr)


def _end_stale_session() -> None:
    """Forget a session made before the last logout or new password; sign with the newest key."""
    key, generation = auth.session_keys(get_db())
    if key and key != current_app.secret_key and current_app.extensions.get("omniwise.signing_key_in_db"):
        current_app.secret_key = key  # `set-password` rotated it while this process ran
    if session.get("operator") and session.get("generation") != generation:
        session.clear()

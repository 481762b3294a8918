"""The single operator's login: the password hash in the meta table, a login rate limit, CSRF tokens.

The hash is werkzeug's (scrypt, salted). Failed logins are rows of `login_failures`, so every web
process counts the same attempts.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from werkzeug.security import check_password_hash, generate_password_hash

from core import store
from core.store import Database

log = logging.getLogger("omniwise.auth")
PASSWORD_KEY = "admin_password_hash"
SIGNING_KEY = "flask_secret_key"  # signs the session cookie; a new one on every new password
GENERATION_KEY = "session_generation"  # a session is valid only while it carries the current generation
MIN_PASSWORD_CHARS = 12  # what `set-password` accepts: the login is on the internet
MAX_FAILURES = 5  # failed logins allowed from one address within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 300


class TooManyAttempts(Exception):
    """An address failed to log in too often. Caller: refuse (HTTP 429) without checking the password."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"too many failed logins: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def has_password(db: Database) -> bool:
    """Whether an operator password has been set."""
    return store.get_meta(db, PASSWORD_KEY) is not None


def set_password(db: Database, password: str, now_ms: int) -> None:
    """Store the hash of a new operator password, end every session and rotate the signing key (and commit)."""
    if not password:
        raise ValueError("the password must not be empty")
    hashed = generate_password_hash(password)
    with store.transaction(db):
        store.set_meta(db, PASSWORD_KEY, hashed, now_ms)
        rotate_session_key(db, now_ms)


def rotate_session_key(db: Database, now_ms: int) -> None:
    """A new cookie signing key and session generation: every session made before opens nothing. Part of
    the caller's transaction."""
    store.set_meta(db, SIGNING_KEY, secrets.token_urlsafe(32), now_ms)
    _advance_generation(db, now_ms)


def session_keys(db: Database) -> tuple[str | None, str]:
    """The cookie signing key kept in the database (None before one is made) and the session generation."""
    values = dict(db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", [SIGNING_KEY, GENERATION_KEY]).fetchall())
    return values.get(SIGNING_KEY), values.get(GENERATION_KEY) or "0"


def session_generation(db: Database) -> str:
    """The current session generation: a session made before the last logout or new password carries another."""
    return store.get_meta(db, GENERATION_KEY) or "0"


def end_sessions(db: Database, now_ms: int) -> None:
    """End every operator session (logout): a cookie copied before no longer opens anything."""
    with store.transaction(db):
        _advance_generation(db, now_ms)


def _advance_generation(db: Database, now_ms: int) -> None:
    store.set_meta(db, GENERATION_KEY, str(int(session_generation(db)) + 1), now_ms)


def is_password_right(db: Database, password: str) -> bool:
    """Whether `password` is the operator's; always False while none is set."""
    stored = store.get_meta(db, PASSWORD_KEY)
    return stored is not None and check_password_hash(stored, password)


def ensure_password(db: Database, configured: str | None, now_ms: int) -> str | None:
    """Make OMNIWISE_ADMIN_PASSWORD the password; with none configured and none set, generate one.

    Returns the generated password (to be shown once), else None.
    """
    if configured:
        if not is_password_right(db, configured):
            set_password(db, configured, now_ms)
        return None
    if has_password(db):
        return None
    password = secrets.token_urlsafe(12)
    set_password(db, password, now_ms)
    return password


def log_in(db: Database, password: str, address: str, now_ms: int) -> bool:
    """Check a login attempt from `address`; raises TooManyAttempts once it failed too often lately.

    Each attempt is counted as a failure *before* its password is checked, in the same write transaction
    that counts the earlier ones, so concurrent attempts can never check more than MAX_FAILURES passwords;
    a right password then forgets the address's failures.
    """
    since_ms = now_ms - FAILURE_WINDOW_S * 1000
    with store.transaction(db):
        db.execute("DELETE FROM login_failures WHERE at_ms <= ?", [since_ms])  # out of the window: forgotten
        failures, first_ms = db.execute("SELECT count(*), min(at_ms) FROM login_failures WHERE address = ?",
                                        [address]).fetchone()
        if failures < MAX_FAILURES:
            db.execute("INSERT INTO login_failures(address, at_ms) VALUES (?, ?)", [address, now_ms])
    if failures >= MAX_FAILURES:
        log.warning("login from %s refused: %d failed attempts in %d s", address, failures, FAILURE_WINDOW_S)
        raise TooManyAttempts(max(1, (first_ms - since_ms) // 1000))
    if is_password_right(db, password):  # outside the transaction: the hash takes a while, writers go on
        with store.transaction(db):
            db.execute("DELETE FROM login_failures WHERE address = ?", [address])
        return True
    log.warning("wrong password from %s", address)
    return False


def new_csrf_token() -> str:
    """A fresh token to bind a session's forms to it."""
    return secrets.token_urlsafe(32)


def is_csrf_token_valid(expected: str | None, given: str | None) -> bool:
    """Whether a form carried its session's token (compared in constant time)."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))

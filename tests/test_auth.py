"""The operator's password, the login rate limit, CSRF tokens, and the password commands."""

from __future__ import annotations

import pytest

from core import auth, store

NOW_MS = 1_800_000_000_000


def test_password_is_stored_hashed_and_checked(db):
    auth.set_password(db, "s3cret pass", NOW_MS)
    stored = store.get_meta(db, auth.PASSWORD_KEY)
    assert "s3cret" not in stored and stored.startswith("scrypt:")
    assert auth.is_password_right(db, "s3cret pass")
    assert not auth.is_password_right(db, "s3cret pas")


def test_no_password_set_lets_nobody_in(db):
    assert not auth.has_password(db)
    assert not auth.is_password_right(db, "")


def test_first_start_generates_a_password_once(db):
    generated = auth.ensure_password(db, None, NOW_MS)
    assert generated and len(generated) >= 16
    assert auth.is_password_right(db, generated)
    assert auth.ensure_password(db, None, NOW_MS) is None  # shown once, never again


def test_configured_password_replaces_the_stored_one(db):
    auth.set_password(db, "old", NOW_MS)
    assert auth.ensure_password(db, "from the environment", NOW_MS) is None
    assert auth.is_password_right(db, "from the environment") and not auth.is_password_right(db, "old")


def test_failed_logins_from_one_address_are_limited_for_a_while(db):
    auth.set_password(db, "right", NOW_MS)
    for attempt in range(auth.MAX_FAILURES):
        assert not auth.log_in(db, "wrong", "10.0.0.1", NOW_MS + attempt)
    with pytest.raises(auth.TooManyAttempts) as refused:
        auth.log_in(db, "right", "10.0.0.1", NOW_MS + 10)  # even the right password waits
    assert 0 < refused.value.retry_after_s <= auth.FAILURE_WINDOW_S
    assert auth.log_in(db, "right", "10.0.0.2", NOW_MS + 10)  # another address is not held up
    assert auth.log_in(db, "right", "10.0.0.1", NOW_MS + auth.FAILURE_WINDOW_S * 1000 + 1)


def test_a_good_login_forgets_the_addresses_failures(db):
    auth.set_password(db, "right", NOW_MS)
    for _ in range(auth.MAX_FAILURES - 1):
        auth.log_in(db, "wrong", "10.0.0.1", NOW_MS)
    assert auth.log_in(db, "right", "10.0.0.1", NOW_MS)
    assert not auth.log_in(db, "wrong", "10.0.0.1", NOW_MS)  # counting starts again, not refused


def test_concurrent_wrong_passwords_check_exactly_the_allowed_number(settings, db, monkeypatch):
    import threading

    auth.set_password(db, "right", NOW_MS)
    checked = []
    check = auth.check_password_hash
    monkeypatch.setattr(auth, "check_password_hash", lambda *args: checked.append(1) or check(*args))
    start = threading.Barrier(30)
    outcomes = []

    def attempt() -> None:
        connection = store.open_db(settings.db_path)
        start.wait()
        try:
            outcomes.append(auth.log_in(connection, "wrong", "10.0.0.9", NOW_MS))
        except auth.TooManyAttempts:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(checked), outcomes.count(False), outcomes.count("refused")) == (auth.MAX_FAILURES, 5, 25)


@pytest.mark.parametrize("expected, given, is_valid", [
    ("abc", "abc", True),
    ("abc", "abd", False),
    ("abc", None, False),
    ("abc", "", False),
    (None, "abc", False),
    (None, None, False),
    ("abc", "\udcff", False),
])
def test_csrf_tokens_must_match_the_sessions(expected, given, is_valid):
    assert auth.is_csrf_token_valid(expected, given) is is_valid


def test_init_prints_a_generated_password_once(runner, data_dir):
    first = runner.invoke(args=["init"])
    assert first.exit_code == 0, first.output
    line = next(line for line in first.stdout.splitlines() if line.startswith("Operator password"))
    password = line.rsplit(": ", 1)[1]
    second = runner.invoke(args=["init"])
    assert "Operator password" not in second.stdout
    with store.connect(data_dir / "omniwise.db") as db:
        assert auth.is_password_right(db, password)


def test_init_with_a_configured_password_prints_none(runner, data_dir):
    result = runner.invoke(args=["init"], env={"OMNIWISE_ADMIN_PASSWORD": "given"})
    assert result.exit_code == 0 and "Operator password" not in result.stdout
    with store.connect(data_dir / "omniwise.db") as db:
        assert auth.is_password_right(db, "given")


def test_set_password_reads_standard_input(runner, data_dir):
    result = runner.invoke(args=["set-password"], input="a new one, 12\n")
    assert (result.exit_code, result.stdout.strip()) == (0, "Password set."), result.output
    with store.connect(data_dir / "omniwise.db") as db:
        assert auth.is_password_right(db, "a new one, 12")
    for short in ("", "eleven char", "é" * 11):
        refused = runner.invoke(args=["set-password"], input=short + "\n")
        assert refused.exit_code == 1 and "at least 12 characters" in refused.stderr, refused.output
        with store.connect(data_dir / "omniwise.db") as db:
            assert auth.is_password_right(db, "a new one, 12")  # unchanged
    twelve = runner.invoke(args=["set-password"], input="twelve chars\n")
    assert twelve.exit_code == 0, twelve.output


def test_thirty_concurrent_wrong_passwords_on_the_real_server_get_five_checked(tmp_path):
    import re
    import threading
    from urllib.parse import urlencode

    from tests.processes import Server

    server = Server(tmp_path, OMNIWISE_ADMIN_PASSWORD="the-right-one").start()
    try:
        _, headers, page = server.request("GET", "/login")
        cookie = headers["Set-Cookie"].split(";")[0]
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
        body = urlencode({"password": "wrong", "csrf_token": token})
        start = threading.Barrier(30)
        statuses = []

        def attempt() -> None:
            start.wait()
            statuses.append(server.request("POST", "/login", body, {
                "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})[0])

        threads = [threading.Thread(target=attempt) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.kill()
    assert (statuses.count(401), statuses.count(429)) == (auth.MAX_FAILURES, 30 - auth.MAX_FAILURES)

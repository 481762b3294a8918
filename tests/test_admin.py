"""The operator's pages through the test client: login, the guard, CSRF, the editor, history, escaping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import brokers, store, strategies
from tests.conftest import OPERATOR_PASSWORD, csrf_token_of
from tests.processes import TOKEN

PUBLIC_PATHS = {"/login", "/healthz", "/api/v1/external-signal", "/api/v1/external-signal/<token>", "/api/v1/status"}
BAD_LINE = "IF MA4 > MA9 THEN BUY\nIF RSI(14) < 30 BUY\n"


@pytest.fixture
def settings(data_dir):
    from core.config import Settings

    return Settings(data_dir=data_dir, webhook_token=TOKEN)


def every_route(app):
    """(method, path) of every route of the app, with sample values for its arguments."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in PUBLIC_PATHS:
            continue
        path = re.sub(r"<[^>]+>", "0123456789ab", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path


def test_every_page_but_the_webhook_and_healthz_needs_a_login(app, client):
    routes = list(every_route(app))
    assert ("GET", "/") in routes and ("POST", "/admin/algo") in routes and ("GET", "/admin/webhook") in routes
    for method, path in routes:
        answer = client.open(path, method=method)
        if path.startswith("/api/"):
            assert (answer.status_code, answer.json) == (401, {"error": "log in first"}), path
        else:
            assert answer.status_code == 302, (method, path)
            assert answer.headers["Location"].startswith("/login"), (method, path)


def test_the_login_page_and_the_open_routes_answer_without_a_session(client):
    assert client.get("/login").status_code == 200
    assert client.get("/healthz").status_code == 503  # open, and honest: no worker here
    assert client.get("/api/v1/status").status_code == 401
    assert client.get(f"/api/v1/status?token={TOKEN}").status_code == 200
    assert client.post(f"/api/v1/external-signal/{TOKEN}", data='{"signal": "BUY"}').status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_an_expired_session_sends_htmx_fragments_to_the_login_page(client):
    answer = client.get("/dashboard/summary", headers={"HX-Request": "true"})
    assert (answer.status_code, answer.headers["HX-Redirect"]) == (401, "/login")


def test_login_opens_a_session_with_an_httponly_samesite_cookie(app, client, db):
    from core import auth

    auth.set_password(db, OPERATOR_PASSWORD, 0)
    token = csrf_token_of(client.get("/login?next=/admin/algo").data)
    answer = client.post("/login", data={"password": OPERATOR_PASSWORD, "csrf_token": token, "next": "/admin/algo"})
    assert (answer.status_code, answer.headers["Location"]) == (302, "/admin/algo")
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    with client.session_transaction() as session:
        assert session["operator"] is True and "csrf_token" not in session  # nothing of before the login is kept
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("target, expected", [
    ("/admin/webhook", "/admin/webhook"), ("/admin/algo/history?page=2", "/admin/algo/history?page=2"),
    ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"),
    ("/\t/evil.example", "/"), ("/\n/x", "/"), ("/\r\n/x", "/"), ("/\x00/x", "/"), (" //evil.example", "/"),
    ("/ /evil.example", "/"), ("/\u202e/x", "/"), ("javascript:alert(1)", "/"), ("/%09/evil.example", "/%09/evil.example"),
])
def test_login_returns_only_to_pages_of_this_site(client, db, target, expected):
    from core import auth

    auth.set_password(db, OPERATOR_PASSWORD, 0)
    token = csrf_token_of(client.get("/login").data)
    answer = client.post("/login", data={"password": OPERATOR_PASSWORD, "csrf_token": token, "next": target})
    assert answer.status_code == 302 and answer.headers["Location"] == expected


@pytest.mark.parametrize("query", ["next=/%09/evil.example", "next=/%0a/x", "next=/%0d%0aSet-Cookie:%20x=1",
                                   "next=%2F%2Fevil.example"])
def test_the_login_page_never_carries_a_foreign_next_into_its_form(client, db, query):
    from core import auth

    auth.set_password(db, OPERATOR_PASSWORD, 0)
    page = client.get(f"/login?{query}")
    assert page.status_code == 200
    answer = client.post(f"/login?{query}", data={"password": OPERATOR_PASSWORD, "csrf_token": csrf_token_of(page.data)})
    assert answer.status_code == 302 and answer.headers["Location"] == "/"


def test_wrong_passwords_are_refused_then_rate_limited(client, db):
    from core import auth

    auth.set_password(db, OPERATOR_PASSWORD, 0)
    token = csrf_token_of(client.get("/login").data)
    for _ in range(auth.MAX_FAILURES):
        answer = client.post("/login", data={"password": "guess", "csrf_token": token})
        assert answer.status_code == 401 and b"not the password" in answer.data
    answer = client.post("/login", data={"password": OPERATOR_PASSWORD, "csrf_token": token})
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert b"too many failed logins" in answer.data
    assert client.get("/").status_code == 302


def test_login_page_says_how_to_set_a_password_when_none_is(client):
    assert b"set-password" in client.get("/login").data


def test_logout_ends_the_session(operator):
    answer = operator.post("/logout", data={"csrf_token": operator.csrf_token})
    assert answer.headers["Location"] == "/login"
    assert operator.get("/").status_code == 302


@pytest.mark.parametrize("path, data", [
    ("/admin/algo", {"strategy": "IF CLOSE > 1 THEN BUY"}),
    ("/admin/algo/validate", {"strategy": "IF CLOSE > 1 THEN BUY"}),
    ("/logout", {}),
    ("/login", {"password": OPERATOR_PASSWORD}),
])
def test_a_form_post_without_the_csrf_token_is_refused(operator, settings, path, data):
    before = settings.strategy_path.read_text()
    answer = operator.post(path, data=data)
    assert answer.status_code == 400 and b"reload the page" in answer.data
    wrong = operator.post(path, data={**data, "csrf_token": "x" * 43})
    assert wrong.status_code == 400
    assert settings.strategy_path.read_text() == before
    assert operator.get("/").status_code == 200  # still logged in


def test_the_csrf_token_may_come_in_htmx_header(operator):
    answer = operator.post("/admin/algo/validate", data={"strategy": BAD_LINE},
                           headers={"X-CSRF-Token": operator.csrf_token})
    assert answer.status_code == 200


def validate(operator, text):
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_validation_lists_every_error_with_line_and_column(operator):
    fragment = validate(operator, BAD_LINE + "IF EMAA(9) > 1 THEN SELL\n")
    assert fragment.lstrip().startswith('<div id="validation"')
    assert 'data-error-lines="2 3"' in fragment
    assert "line 2, column 17</a>: missing THEN before BUY" in fragment
    assert "line 3, column 4</a>: unknown name &#39;EMAA&#39;: did you mean EMA?" in fragment


def test_validation_of_a_valid_text_clears_the_errors(operator):
    fragment = validate(operator, "IF MA4 > MA9 THEN BUY\r\n")
    assert 'data-error-lines=""' in fragment and "Valid: 1 rule" in fragment and "line " not in fragment


def test_saving_an_invalid_text_is_refused_with_its_errors(operator, settings, db):
    before = settings.strategy_path.read_text()
    answer = operator.post("/admin/algo", data={"strategy": BAD_LINE, "csrf_token": operator.csrf_token})
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert "Not saved" in page and "line 2, column 17" in page and "IF RSI(14) &lt; 30 BUY" in page
    assert '<span class="bad">2</span>' in page  # the gutter marks the line
    assert settings.strategy_path.read_text() == before and strategies.versions(db) == []


def test_saving_a_valid_text_writes_the_file_and_records_a_version(operator, settings, db):
    text = "IF EMA(9) > EMA(21) THEN BUY\nIF EMA(9) < EMA(21) THEN SELL\n"
    answer = operator.post("/admin/algo", data={"strategy": text.replace("\n", "\r\n"),
                                                "csrf_token": operator.csrf_token})
    assert (answer.status_code, answer.headers["Location"]) == (302, "/admin/algo")
    assert settings.strategy_path.read_text() == text
    version = strategies.version_of(text)
    assert strategies.versions(db)[0].version == version
    page = operator.get("/admin/algo").get_data(as_text=True)
    assert f"Saved version {version}: 2 rules." in page
    assert "The worker is not running" in page and 'hx-trigger="every 2s"' in page


def test_the_editor_says_when_the_worker_runs_the_saved_version(operator, settings, db):
    version = strategies.version_of(settings.strategy_path.read_text())
    with db.conn:
        store.set_meta(db, strategies.LOADED_KEY, version, 0)
        store.set_meta(db, strategies.ERROR_KEY, "", 0)
    fragment = operator.get("/admin/algo/loaded").get_data(as_text=True)
    assert f"The worker runs the saved version <code>{version}</code>" in fragment
    assert "hx-trigger" not in fragment  # done: it stops polling


def test_versions_diff_old_to_new_and_restore(operator, settings, db):
    shipped = settings.strategy_path.read_text()
    operator.post("/admin/algo", data={"strategy": "IF CLOSE > OPEN THEN BUY\n", "csrf_token": operator.csrf_token})
    page = operator.get("/admin/algo/history").get_data(as_text=True)
    old = strategies.version_of(shipped)
    assert page.count('class="version"') == 2 and f"/admin/algo/history/{old}/restore" in page
    # read old -> new: the shipped version's lines went, the saved one came
    assert '<span class="add">+IF CLOSE &gt; OPEN THEN BUY</span>' in page
    assert '<span class="del">-IF MA4 &gt; MA9 THEN BUY</span>' in page
    answer = operator.post(f"/admin/algo/history/{old}/restore", data={"csrf_token": operator.csrf_token})
    assert answer.status_code == 302 and settings.strategy_path.read_text() == shipped
    assert f"Restored version {old}" in operator.get("/admin/algo").get_data(as_text=True)
    missing = operator.post("/admin/algo/history/ffffffffffff/restore", data={"csrf_token": operator.csrf_token})
    assert missing.status_code == 404


def test_templates_escape_what_signals_and_strategies_carry(operator, client, settings, db):
    evil = "<script>alert(1)</script>"
    body = json.dumps({"signal": "BUY", "source": evil})
    assert client.post(f"/api/v1/external-signal/{TOKEN}", data=body).status_code == 200
    client.post(f"/api/v1/external-signal/{TOKEN}", data='{"signal": "<img src=x onerror=alert(2)>"}')
    operator.post("/admin/algo", data={"strategy": f"# {evil}\nIF MA4 > MA9 THEN BUY\n",
                                       "csrf_token": operator.csrf_token})
    pages = [operator.get(path).get_data(as_text=True)
             for path in ("/", "/dashboard/summary", "/dashboard/activity", "/admin/algo", "/admin/algo/history")]
    pages.append(validate(operator, f"IF {evil} THEN BUY"))
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0] and "&lt;script&gt;" in pages[3]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[2]  # the refused body's reason, escaped


def test_dashboard_shows_market_position_signal_heartbeat_and_activity(operator, db):
    from tests.test_dashboard import NOW_MS, SYMBOL, add_candles, add_fill, add_signal

    add_candles(db, [100.0, 102.5], symbol=SYMBOL)
    add_fill(db, "BUY", 100.25, NOW_MS - 60_000, decision_id=7)
    add_signal(db, "BUY", NOW_MS, source="TradingView")
    with db.conn:
        brokers.save_position(db, brokers.Position("long", 2.0, 100.0), NOW_MS)
    page = operator.get("/").get_data(as_text=True)
    for text in ("Worker", "down", "paper", "102.5", "long 2", "entry 100", ">+5.00<", ">+2.50 %<", "BUY", "from TradingView",
                 "not checked", "Recent activity", "100.25", 'hx-trigger="every 3s"', 'hx-trigger="every 5s"',
                 'id="chart"', "IF MA4 &gt; MA9 THEN BUY"):
        assert text in page, text
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    assert summary.lstrip().startswith('<section id="summary"') and ">+2.50 %<" in summary
    activity = operator.get("/dashboard/activity").get_data(as_text=True)
    assert activity.lstrip().startswith('<section id="activity"') and "100.25" in activity


def test_chart_api_gives_candles_and_the_strategys_averages(operator, db):
    from tests.test_dashboard import SYMBOL, add_candles

    add_candles(db, [100.0 + i for i in range(20)], symbol=SYMBOL)
    data = operator.get("/api/v1/chart").json
    assert len(data["candles"]) == 20 and [line["name"] for line in data["lines"]] == ["SMA(4)", "SMA(9)"]
    assert data["lines"][0]["points"][-1]["value"] == pytest.approx(117.5)


def test_webhook_panel_shows_the_url_the_secret_and_messages_to_paste(operator):
    page = operator.get("/admin/webhook").get_data(as_text=True)
    assert f'value="http://localhost/api/v1/external-signal/{TOKEN}"' in page and f'value="{TOKEN}"' in page
    assert "{{strategy.market_position}}" in page and "{{timenow}}" in page and "{{ticker}}" in page
    assert page.count('class="copy"') == 9  # URL, secret, the recipe's Pine line and message, 5 messages


def test_pages_carry_security_headers(operator):
    answer = operator.get("/admin/webhook")
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_validation_previews_what_the_text_would_have_done_over_the_stored_candles(operator, settings, db):
    from core.backtest import load_candles
    from core.charts import preview
    from core.dsl import compile_strategy
    from tests.conftest import SHARED_DATA

    candles = load_candles(SHARED_DATA / "candles" / "ETHBTC-1m.csv")
    columns = [candles[k].tolist() for k in ("open_time_ms", "open", "high", "low", "close", "volume")]
    with db.conn:
        db.conn.executemany("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
                            [(settings.symbol, t, o, h, lo, c, v, t + 59_999) for t, o, h, lo, c, v in zip(*columns)])
    text = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
    expected = preview(db, settings.symbol, compile_strategy(text), settings.fee_rate).result
    fragment = validate(operator, text)
    assert expected.candles == 10_000 and len(expected.trades) > 100
    assert f"Over the last 10,000 stored candles this text would have made\n        <strong>{len(expected.trades)} trades" \
        in fragment
    assert f"{expected.return_pct:+.2f} %" in fragment
    assert fragment.count("<circle") == 2 * len(expected.trades) - (expected.trades[-1].exit_time is None)
    assert 'id="preview"' not in validate(operator, "IF MA4 > MA9 THEN BUYY\n")


class EndlessBody:
    """A request body that counts what the app reads of it."""

    def __init__(self):
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else min(size, 65536)
        self.read_bytes += size
        return b"a" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.mark.parametrize("path", ["/login", "/admin/algo", "/admin/algo/validate", "/logout", "/nowhere"])
def test_a_body_over_1_mb_is_refused_before_it_is_read(operator, path):
    body = EndlessBody()
    answer = operator.post(path, content_type="application/x-www-form-urlencoded",
                           environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(200 << 20)})
    assert answer.status_code in (413, 404) and body.read_bytes == 0
    if path != "/nowhere":
        assert answer.status_code == 413


def test_a_body_of_1_mb_is_still_read(operator):
    text = "IF CLOSE > 1 THEN BUY\n" + "# " + "x" * 90_000 + "\n"
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert answer.status_code == 200


def test_the_webhook_keeps_its_own_4_kb_limit_for_bodies_over_1_mb(client, db):
    from core.webhook import intake

    token = intake.webhook_token(db, None)
    answer = client.post(f"/api/v1/external-signal/{token}", data=b"a" * (2 << 20), content_type="text/plain")
    assert answer.status_code == 413 and "over 4096 bytes" in answer.json["error"]


def _copy_of_session(app, browser):
    """Another browser holding a copy of `browser`'s session cookie (what a thief would keep)."""
    thief = app.test_client()
    thief.set_cookie("session", browser.get_cookie("session").value)
    return thief


def test_a_cookie_copied_before_logout_opens_nothing_after_it(app, operator):
    thief = _copy_of_session(app, operator)
    assert thief.get("/admin/webhook").status_code == 200
    operator.post("/logout", data={"csrf_token": operator.csrf_token})
    assert thief.get("/admin/webhook").status_code == 302
    assert thief.get("/api/v1/status").status_code == 401


def test_a_new_password_ends_every_session_and_rotates_the_signing_key(app, operator, data_dir, monkeypatch):
    from click.testing import CliRunner

    from core import auth, store
    from omniwise import set_password_command

    thief = _copy_of_session(app, operator)
    monkeypatch.chdir(data_dir)
    with store.connect(data_dir / "omniwise.db") as db:
        old_key = store.get_meta(db, auth.SIGNING_KEY)
    result = CliRunner().invoke(set_password_command, input="a new password\n", env={"OMNIWISE_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    with store.connect(data_dir / "omniwise.db") as db:
        new_key = store.get_meta(db, auth.SIGNING_KEY)
    assert new_key != old_key
    assert thief.get("/admin/webhook").status_code == 302
    assert operator.get("/admin/webhook").status_code == 302
    assert app.secret_key == new_key  # the running app signs with the new key from its next request on
    login = app.test_client()
    token = csrf_token_of(login.get("/login").data)
    assert login.post("/login", data={"password": "a new password", "csrf_token": token}).status_code == 302
    assert login.get("/admin/webhook").status_code == 200


@pytest.mark.parametrize("trust_proxy, is_secure", [(0, False), (1, True), (2, True)])
def test_the_session_cookie_is_secure_behind_the_https_proxy(data_dir, db, trust_proxy, is_secure):
    from core import auth
    from core.config import Settings
    from omniwise import create_app

    auth.set_password(db, OPERATOR_PASSWORD, 0)
    browser = create_app(Settings(data_dir=data_dir, trust_proxy=trust_proxy)).test_client()
    token = csrf_token_of(browser.get("/login").data)
    answer = browser.post("/login", data={"password": OPERATOR_PASSWORD, "csrf_token": token})
    assert ("; Secure" in answer.headers["Set-Cookie"]) is is_secure


@pytest.mark.parametrize("trust_proxy, remote, forwarded, warns", [
    (0, "127.0.0.1", "203.0.113.7", True), (0, "::1", "203.0.113.7", True), (0, "127.0.0.1", None, False),
    (0, "198.51.100.2", "203.0.113.7", False), (1, "127.0.0.1", "203.0.113.7", False),
])
def test_a_proxy_that_is_not_trusted_is_warned_about_once(data_dir, caplog, trust_proxy, remote, forwarded, warns):
    from core.config import Settings
    from omniwise import create_app

    browser = create_app(Settings(data_dir=data_dir, trust_proxy=trust_proxy)).test_client()
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    for _ in range(3):
        browser.get("/login", headers=headers, environ_base={"REMOTE_ADDR": remote})
    warnings = [r for r in caplog.records if "OMNIWISE_TRUST_PROXY is 0" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0)


READ_ONLY_PROBE = r"""
import json, os, re, shutil, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core import auth, store
from core.config import Settings
from omniwise import create_app

data, mode = Path(sys.argv[2]), sys.argv[3]
app = create_app(Settings(data_dir=data))
with store.connect(data / "omniwise.db") as db:
    auth.set_password(db, "pw", 0)
browser = app.test_client()
token = lambda page: re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
browser.post("/login", data={"password": "pw", "csrf_token": token(browser.get("/login"))})
csrf = token(browser.get("/admin/algo"))
worker = store.open_db(data / "omniwise.db")  # a running worker keeps the -wal and -shm files
if mode == "unopenable":
    worker.close()
if mode == "files":
    for path in data.iterdir():
        os.chmod(path, 0o444)
os.chmod(data, 0o555)
health = browser.get("/healthz")
save = browser.post("/admin/algo", data={"strategy": "IF CLOSE > 2 THEN BUY", "csrf_token": csrf})
print(json.dumps({"health": [health.status_code, health.content_type, health.get_json()],
                  "save": [save.status_code, save.get_data(as_text=True)],
                  "strategy": (data / "strategy.txt").read_text()}))
"""


@pytest.mark.parametrize("mode", ["folder", "files", "unopenable"])
def test_a_read_only_data_folder_gets_clear_answers_and_loses_nothing(tmp_path, mode):
    """Root writes anywhere, so as root the probe runs with every capability dropped: still the owner of the
    checkout (readable wherever it lives), but bound by permission bits, so the folder really is read-only."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from tests.conftest import ROOT

    folder = Path(tempfile.mkdtemp(prefix="omniwise-read-only-"))
    data = folder / "data"
    data.mkdir()
    (data / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\n")
    command = [sys.executable, "-c", READ_ONLY_PROBE, str(ROOT), str(data), mode]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *command]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(folder)})
    finally:
        os.chmod(data, 0o755)
        shutil.rmtree(folder, ignore_errors=True)
    assert probe.returncode == 0, probe.stderr
    answers = json.loads(probe.stdout.splitlines()[-1])
    status, content_type, health = answers["health"]
    assert (status, content_type, health["healthy"]) == (503, "application/json", False)
    status, page = answers["save"]
    assert status == 503 and "Not saved" in page or "cannot be used right now" in page
    if mode != "unopenable":
        assert "Not saved: cannot write" in page and "IF CLOSE &gt; 2 THEN BUY" in page  # the text is still there
    assert answers["strategy"] == "IF MA4 > MA9 THEN BUY\n"


def test_healthz_says_503_json_while_the_database_cannot_be_written(app, client, settings):
    import sqlite3

    holder = sqlite3.connect(settings.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        answer = client.get("/healthz")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answer.status_code == 503 and answer.json["database_writable"] is False
    assert client.get("/healthz").json["database_writable"] is True


def _save_versions(db, count: int, lines: int = 1) -> list[str]:
    """Record `count` versions (oldest first) of `lines` rules each; returns their versions."""
    from core import store

    saved = []
    for n in range(count):
        text = "\n".join(f"IF CLOSE > {n}.{line} THEN BUY" for line in range(lines)) + "\n"
        with store.transaction(db):
            db.execute("INSERT INTO strategy_versions(version, text, saved_at_ms) VALUES (?, ?, ?)",
                       [strategies.version_of(text), text, n])
        saved.append(strategies.version_of(text))
    return saved


@pytest.mark.parametrize("query, shown, says", [
    ("", range(24, 14, -1), "page 1 of 3"), ("?page=2", range(14, 4, -1), "page 2 of 3"),
    ("?page=3", range(4, -1, -1), "page 3 of 3"), ("?page=99", range(4, -1, -1), "page 3 of 3"),
    ("?page=0", range(24, 14, -1), "page 1 of 3"), ("?page=x", range(24, 14, -1), "page 1 of 3"),
])
def test_history_shows_ten_versions_a_page_newest_first(operator, db, query, shown, says):
    saved = _save_versions(db, 25)
    page = operator.get(f"/admin/algo/history{query}").get_data(as_text=True)
    assert re.findall(r'id="v-([0-9a-f]{12})"', page) == [saved[n] for n in shown]
    assert says in page
    assert ('rel="next"' in page) is (says != "page 3 of 3") and ('rel="prev"' in page) is (says != "page 1 of 3")


def test_history_of_large_versions_shows_their_start_and_links_the_whole_text(operator, db):
    (version,) = _save_versions(db, 1, lines=4000)  # about 100,000 characters
    page = operator.get("/admin/algo/history").get_data(as_text=True)
    assert len(page) < 60_000 and "3800 more lines" in page
    whole = operator.get(f"/admin/algo/history/{version}.txt")
    assert whole.status_code == 200 and whole.get_data(as_text=True).count("\n") == 4000
    assert operator.get("/admin/algo/history/ffffffffffff.txt").status_code == 404


def test_history_shows_control_characters_of_a_version_as_escapes(operator, db):
    from core import store

    text = "IF CLOSE > 1 THEN BUY # \u202eyub\x1b[2J\n"
    with store.transaction(db):
        db.execute("INSERT INTO strategy_versions(version, text, saved_at_ms) VALUES (?, ?, ?)",
                   [strategies.version_of(text), text, 0])
    page = operator.get("/admin/algo/history").get_data(as_text=True)
    assert "\u202e" not in page and "\x1b" not in page
    assert "# \\u202eyub\\x1b[2J" in page

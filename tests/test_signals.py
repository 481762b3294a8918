"""The signal webhook through the real app (Flask test client) and the ledger in a real SQLite file."""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import json
import logging
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from openapi_spec_validator import validate as validate_openapi

from core import store
from core.webhook import intake, ledger
from core.config import ConfigError, Settings, load_settings
from core.ratelimit import RateLimited, RateLimiter

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-tests_0123456789"
NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
URL = "/api/v1/external-signal"
BUY = {"signal": "BUY", "timestamp": 1_699_999_000, "source": "TradingView"}


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, webhook_token=TOKEN, webhook_rate_per_s=0)


@pytest.fixture
def clock(app) -> FakeClock:
    fake = FakeClock(NOW_MS)
    app.extensions["omniwise.webhook"].clock_ms = fake
    return fake


def post(client, body: object = BUY, content_type: str | None = "application/json", url: str = f"{URL}/{TOKEN}",
         **kwargs):
    """POST `body` (a dict is sent as JSON text) and return the response."""
    data = json.dumps(body) if isinstance(body, dict) else body
    return client.post(url, data=data, content_type=content_type, **kwargs)


def ledger_rows(db) -> list[dict]:
    return list(db.query("SELECT * FROM external_signals ORDER BY id"))


# -- accepted signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("word, expected", [
    ("BUY", "BUY"), ("buy", "BUY"), ("Buy", "BUY"), (" sell ", "SELL"), ("SELL", "SELL"),
    ("long", "BUY"), ("flat", "FLAT"), ("short", "SHORT"), ("LONG", "BUY"), ("exit", "FLAT"),
])
def test_webhook_reads_signal_words_and_tradingview_placeholders(client, db, clock, word, expected):
    response = post(client, {"signal": word})
    assert response.status_code == 200
    assert response.json["signal"] == expected
    assert ledger_rows(db)[0]["signal"] == expected


@pytest.mark.parametrize("timestamp, expected_ms", [
    (1_700_000_000, 1_700_000_000_000),                    # seconds
    (1_699_999_999.25, 1_699_999_999_250),                 # seconds with a fraction
    (1_699_999_999_123, 1_699_999_999_123),                # milliseconds
    (1_699_999_999_123_456, 1_699_999_999_123),            # microseconds
    ("1700000000", 1_700_000_000_000),                     # a number in a string
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),           # {{timenow}}
    ("2023-11-14T23:13:19.5+01:00", 1_699_999_999_500),    # ISO-8601 with an offset
    ("2023-11-14T22:13:20", 1_700_000_000_000),            # no zone: UTC
    ("946684800", 946_684_800_000),                         # 2000-01-01, the earliest time taken
    (None, NOW_MS),                                        # absent: the arrival time
    ("", NOW_MS),
    (1_700_000_290, NOW_MS),                               # ahead of the arrival: a skewed clock, counts as now
    (1_700_000_400, NOW_MS),
    ("2100-01-01T00:00:00Z", NOW_MS),
])
def test_webhook_reads_timestamps_in_seconds_milliseconds_and_iso(client, db, clock, timestamp, expected_ms):
    body = {"signal": "BUY"} if timestamp is None else {"signal": "BUY", "timestamp": timestamp}
    response = post(client, body)
    assert response.status_code == 200, response.json
    assert response.json["signal_time_ms"] == expected_ms
    assert ledger_rows(db)[0]["signal_time_ms"] == expected_ms


@pytest.mark.parametrize("content_type, body", [
    ("application/json", json.dumps(BUY)),
    ("application/json; charset=utf-8", json.dumps(BUY)),
    ("text/plain", json.dumps(BUY)),                       # TradingView, whenever it is unsure of the JSON
    ("text/plain; charset=UTF-8", json.dumps(BUY)),
    (None, json.dumps(BUY)),
    ("application/vnd.api+json", json.dumps(BUY)),
    ("application/x-www-form-urlencoded", json.dumps(BUY)),  # curl -d '{...}'
    ("application/x-www-form-urlencoded", "signal=buy&source=curl"),
    ("text/plain", b"\xef\xbb\xbf" + json.dumps(BUY).encode()),  # a byte-order mark
    ("text/plain", '{"Signal": "buy", "TIMESTAMP": 1700000000}'),  # field names in any case
])
def test_webhook_accepts_json_as_json_text_or_form(client, db, clock, content_type, body):
    response = post(client, body, content_type=content_type)
    assert response.status_code == 200, response.json
    assert response.json == {"id": 1, "accepted": True, "duplicate": False, "outcome": "accepted",
                             "signal": "BUY", "signal_time_ms": response.json["signal_time_ms"]}


@pytest.mark.parametrize("where", ["path", "query", "header", "body token", "body passphrase", "form field"])
def test_webhook_accepts_the_token_in_each_place_tradingview_can_send_it(client, db, clock, where):
    kwargs = {
        "path": dict(url=f"{URL}/{TOKEN}"),
        "query": dict(url=f"{URL}?token={TOKEN}"),
        "header": dict(url=URL, headers={"X-Omniwise-Token": TOKEN}),
        "body token": dict(url=URL, body={**BUY, "token": TOKEN}, content_type="text/plain"),
        "body passphrase": dict(url=URL, body={**BUY, "passphrase": TOKEN}),
        "form field": dict(url=URL, body=f"signal=sell&token={TOKEN}",
                           content_type="application/x-www-form-urlencoded"),
    }[where]
    response = post(client, **kwargs)
    assert response.status_code == 200, response.json
    assert len(ledger_rows(db)) == 1


@pytest.mark.parametrize("symbol_field, value", [
    ("symbol", "BTCUSDT"), ("symbol", "btcusdt"), ("symbol", "BINANCE:BTCUSDT"), ("symbol", "BTCUSDT.P"),
    ("ticker", "BINANCE:BTCUSDT.P"), ("ticker", "BYBIT:BTCUSDT.P"), ("symbol", "BTCUSDTPERP"), ("symbol", "BTC/USDT"),
    ("symbol", ""),
])
def test_webhook_accepts_its_own_symbol_with_exchange_prefix_or_perpetual_suffix(client, db, clock, symbol_field,
                                                                                 value):
    response = post(client, {**BUY, symbol_field: value})
    assert response.status_code == 200, response.json
    assert ledger_rows(db)[0]["symbol"] == "BTCUSDT"


def test_ledger_row_holds_arrival_address_body_and_outcome_but_never_the_token(client, db, clock):
    body = json.dumps({**BUY, "token": TOKEN})
    response = post(client, body, url=URL, content_type="text/plain", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 200
    (row,) = ledger_rows(db)
    assert row == {"id": 1, "received_at_ms": NOW_MS, "source": "TradingView", "signal": "BUY",
                   "signal_time_ms": 1_699_999_000_000, "symbol": "BTCUSDT", "remote_addr": "203.0.113.9",
                   "raw_body": body.replace(TOKEN, "[token]"), "outcome": "accepted"}


def test_webhook_names_an_anonymous_sender_webhook(client, db, clock):
    post(client, {"signal": "buy"})
    assert ledger_rows(db)[0]["source"] == "webhook"


@pytest.mark.parametrize("body, signal", [
    ("buy", "BUY"), ("sell", "SELL"), ("long", "BUY"), ("flat", "FLAT"), ("short", "SHORT"), ("Exit", "FLAT"),
    (" BUY\r\n", "BUY"),
])
def test_a_bare_word_as_tradingview_sends_strategy_order_action_is_a_signal(client, db, clock, body, signal):
    answer = post(client, body, content_type="text/plain; charset=utf-8")
    assert answer.status_code == 200, answer.json
    (row,) = ledger_rows(db)
    assert (row["signal"], row["signal_time_ms"], row["outcome"]) == (signal, NOW_MS, "accepted")


# -- duplicates, stale signals, the latest signal ---------------------------------------------------


def test_same_signal_delivered_twice_is_acknowledged_as_duplicate_and_stored_once(client, db, clock):
    first = post(client, BUY)
    clock.now += 5_000  # a retry arrives later
    second = post(client, BUY, url=URL, headers={"X-Omniwise-Token": TOKEN})
    assert first.json["duplicate"] is False
    assert second.status_code == 200
    assert second.json == {**first.json, "duplicate": True}
    assert len(ledger_rows(db)) == 1


@pytest.mark.parametrize("second", [
    {**BUY, "signal": "SELL"}, {**BUY, "timestamp": BUY["timestamp"] + 1}, {**BUY, "source": "bot"},
])
def test_signals_differing_in_signal_time_or_source_are_not_duplicates(client, db, clock, second):
    post(client, BUY)
    assert post(client, second).json["duplicate"] is False
    assert len(ledger_rows(db)) == 2


def test_signal_older_than_its_sources_newest_is_kept_as_stale_and_never_becomes_latest(client, db, clock):
    newer = post(client, {"signal": "SELL", "timestamp": 1_699_999_100, "source": "TradingView"})
    older = post(client, {"signal": "BUY", "timestamp": 1_699_999_000, "source": "TradingView"})
    assert older.status_code == 200
    assert older.json["accepted"] is False and older.json["outcome"] == "stale"
    assert [row["outcome"] for row in ledger_rows(db)] == ["accepted", "stale"]
    assert ledger.latest_signal(db).id == newer.json["id"]


def test_staleness_is_judged_per_source_and_latest_is_the_newest_signal_time(client, db, clock):
    post(client, {"signal": "SELL", "timestamp": 1_699_999_100, "source": "TradingView"})
    other = post(client, {"signal": "BUY", "timestamp": 1_699_999_000, "source": "bot"})
    assert other.json["outcome"] == "accepted"  # the bot had sent nothing newer
    latest = ledger.latest_signal(db)
    assert (latest.signal, latest.source, latest.signal_time_ms) == ("SELL", "TradingView", 1_699_999_100_000)


def test_a_signal_stamped_ahead_of_the_arrival_hides_no_later_signal(client, db, clock):
    """A sender whose clock runs 5 minutes ahead: its BUY counts as arriving now, so the SELL that comes a
    second later (stamped correctly) is the latest, and so is the position the heartbeat expects."""
    from core.health import heartbeat

    ahead = post(client, {"signal": "BUY", "timestamp": (NOW_MS + 300_000) // 1000, "source": "TradingView"})
    assert ahead.json["outcome"] == "accepted" and ahead.json["signal_time_ms"] == NOW_MS
    clock.now = NOW_MS + 1_000
    later = post(client, {"signal": "SELL", "timestamp": (NOW_MS + 1_000) // 1000, "source": "TradingView"})
    assert later.json["outcome"] == "accepted"
    latest = ledger.latest_signal(db)
    assert (latest.id, latest.signal) == (later.json["id"], "SELL")
    assert heartbeat.current_signal(db, "BTCUSDT").signal == "SELL"
    clock.now = NOW_MS + 2_000  # the same word stamped ahead again: the latest by arrival
    again = post(client, {"signal": "BUY", "timestamp": (NOW_MS + 600_000) // 1000, "source": "TradingView"})
    assert ledger.latest_signal(db).id == again.json["id"] and again.json["signal_time_ms"] == NOW_MS + 2_000


def test_latest_signal_is_none_without_accepted_signals(db):
    assert ledger.latest_signal(db) is None


def test_latest_signal_orders_by_signal_time_then_arrival_and_filters_by_symbol(db):
    def put(signal: str, time_ms: int, source: str, symbol: str = "BTCUSDT") -> ledger.Receipt:
        return ledger.record(db, ledger.Signal(signal, time_ms, source, symbol), received_at_ms=NOW_MS,
                              remote_addr="127.0.0.1", raw_body="")

    put("BUY", 2_000, "a")
    tie = put("SELL", 2_000, "b")  # same signal time, later arrival
    put("SELL", 1_000, "c")
    put("BUY", 3_000, "d", symbol="ETHUSDT")  # accepted earlier under another OMNIWISE_SYMBOL
    assert ledger.latest_signal(db, "BINANCE:BTCUSDT").id == tie.id
    assert ledger.latest_signal(db).signal_time_ms == 3_000
    assert ledger.latest_signal(db).received_at_ms == NOW_MS


# -- refusals -------------------------------------------------------------------------------------

BIG = json.dumps({**BUY, "pad": "x" * 5000})


@pytest.mark.parametrize("kwargs, status, says, is_recorded", [
    # 401: no token, or a wrong one, anywhere
    pytest.param(dict(url=URL), 401, "no valid token", False, id="no token"),
    pytest.param(dict(url=f"{URL}/wrong"), 401, "no valid token", False, id="wrong path token"),
    pytest.param(dict(url=f"{URL}?token=wrong"), 401, "no valid token", False, id="wrong query token"),
    pytest.param(dict(url=URL, headers={"X-Omniwise-Token": "wrong"}), 401, "no valid token", False, id="wrong header"),
    pytest.param(dict(url=URL, body={**BUY, "token": "wrong"}), 401, "no valid token", False, id="wrong body token"),
    pytest.param(dict(url=URL, body={**BUY, "token": TOKEN[:-1]}), 401, "no valid token", False, id="token prefix"),
    pytest.param(dict(url=URL, body='{"signal": "BUY", "token": "' + TOKEN + '"', content_type="text/plain"), 401,
                 "could not be read either", False, id="broken JSON hides its token"),
    # 400: the body is not a usable signal (recorded, since the token was right)
    pytest.param(dict(body="BUY NOW", content_type="text/plain"), 400, "not valid JSON", True, id="plain words"),
    pytest.param(dict(body="hold", content_type="text/plain"), 400, "buy, sell, long, flat, exit, short", True,
                 id="plain unknown word"),
    pytest.param(dict(body='{"signal": "BUY",}'), 400, "not valid JSON", True, id="trailing comma"),
    pytest.param(dict(body=""), 400, "empty", True, id="empty body"),
    pytest.param(dict(body="[1, 2]"), 400, "not an object", True, id="JSON array"),
    pytest.param(dict(body=b"\xff\xfe{}", content_type="text/plain"), 400, "not UTF-8", True, id="not UTF-8"),
    pytest.param(dict(body="=&=", content_type="application/x-www-form-urlencoded"), 400, '"signal"', True,
                 id="form without signal"),
    pytest.param(dict(body={"timestamp": 1_700_000_000}), 400, 'no "signal"', True, id="no signal"),
    pytest.param(dict(body="signal=BUY" + "&x=1" * 50, content_type="application/x-www-form-urlencoded"), 400,
                 "more than 50 fields", True, id="form of 51 fields"),
    pytest.param(dict(body={"signal": "hold"}), 400, "not BUY, SELL, SHORT or FLAT", True, id="unknown word"),
    pytest.param(dict(body={"signal": 1}), 400, "not BUY, SELL, SHORT or FLAT", True, id="number signal"),
    pytest.param(dict(body={"signal": "{{strategy.order.action}}"}), 400, "not replaced", True, id="raw placeholder"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": "yesterday"}), 400, "not a time", True, id="word time"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": True}), 400, "not a time", True, id="boolean time"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": -5}), 400, "not a time", True, id="negative time"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": 10**30}), 400, "not a time", True, id="huge time"),
    pytest.param(dict(body='{"signal": "BUY", "timestamp": NaN}'), 400, "usable JSON", True, id="NaN time"),
    pytest.param(dict(body='{"signal": "BUY", "timestamp": 1e999}'), 400, "not a time", True, id="infinite time"),
    pytest.param(dict(body='{"signal": "BUY", "timestamp": ' + "9" * 400 + "}"), 400, "not a time", True,
                 id="400-digit time"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": "9" * 400}), 400, "not a time", True,
                 id="400-digit time as text"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": 12345678}), 400, "before 2000-01-01", True,
                 id="1970 in seconds"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": 946_684_799_999}), 400, "before 2000-01-01", True,
                 id="just before 2000 in ms"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": "1970-01-02T00:00:00Z"}), 400, "before 2000-01-01", True,
                 id="1970 in ISO"),
    pytest.param(dict(body={"signal": "BUY", "timestamp": "0001-01-01T00:00:00+14:00"}), 400, "", True,
                 id="year 1 with a zone"),
    pytest.param(dict(body={**BUY, "symbol": "{{ticker}}"}), 400, 'the symbol is the placeholder "{{ticker}}"', True,
                 id="ticker placeholder"),
    pytest.param(dict(body={**BUY, "ticker": "{{ticker}}"}), 400, "placeholder", True, id="ticker field placeholder"),
    pytest.param(dict(body={**BUY, "source": "tv\n2026-01-01 CRITICAL omniwise.alerts: forged"}), 400,
                 "control characters", True, id="newline in source"),
    pytest.param(dict(body={**BUY, "source": "tv\u202egnp.exe"}), 400, "control characters", True,
                 id="bidi override in source"),
    pytest.param(dict(body={**BUY, "symbol": "BTC\u0000USDT"}), 400, "control characters", True, id="NUL in symbol"),
    pytest.param(dict(body={"signal": "BUY", "source": 7}), 400, '"source" must be a string', True, id="number source"),
    pytest.param(dict(body='{"signal": "BUY", "source": "\\ud800"}'), 400, "not valid text", True, id="surrogate"),
    pytest.param(dict(body="[" * 2000 + "]" * 2000), 400, "JSON", True, id="deep nesting"),
    # 422: a signal for another market
    pytest.param(dict(body={**BUY, "symbol": "ETHUSDT"}), 422, "trades BTCUSDT", True, id="other symbol"),
    pytest.param(dict(body={**BUY, "ticker": "BINANCE:ETHUSDT.P"}), 422, "trades BTCUSDT", True, id="other ticker"),
    # 413 and 415 come first: the token may be in a body we will not read
    pytest.param(dict(body=BIG), 413, "over 4096 bytes", True, id="too large"),
    pytest.param(dict(url=URL, body=BIG), 413, "over 4096 bytes", False, id="too large, no token"),
    pytest.param(dict(content_type="application/xml"), 415, "not supported", True, id="XML"),
    pytest.param(dict(content_type="multipart/form-data; boundary=x"), 415, "not supported", True, id="multipart"),
])
def test_webhook_refuses_bad_requests_with_a_json_reason(client, db, clock, kwargs, status, says, is_recorded):
    response = post(client, **kwargs)
    assert response.status_code == status
    assert response.is_json and says in response.json["error"]
    assert TOKEN not in response.text
    rows = ledger_rows(db)
    if is_recorded:
        (row,) = rows
        assert row["outcome"].startswith("rejected: ") and row["signal"] is None
        assert TOKEN not in row["outcome"] + row["raw_body"]
        assert len(row["raw_body"]) <= intake.MAX_BODY_BYTES
    else:
        assert rows == []


def test_refused_fields_with_control_characters_are_stored_escaped(client, db, clock):
    source = "tv\n2026-01-01T00:00:00+0000 CRITICAL omniwise.alerts: HEARTBEAT FAILURE: forged\u202e\x00"
    assert post(client, {**BUY, "source": source}).status_code == 400
    (row,) = ledger_rows(db)
    assert row["source"] == "tv\\n2026-01-01T00:00:00+0000 CRITICAL omniwise.alerts: HEARTBEAT FAILURE: forged\\u202e\\x00"


@pytest.mark.parametrize("body, content_type", [
    pytest.param({**BUY, "source": f"tv {TOKEN}"}, "application/json", id="source"),
    pytest.param({**BUY, "symbol": f"BTCUSDT{TOKEN}"}, "application/json", id="symbol"),
    pytest.param({**BUY, "ticker": TOKEN}, "application/json", id="ticker"),
    pytest.param({"signal": "X" * 30 + TOKEN}, "application/json", id="echo of a wrong signal"),
    pytest.param({"signal": "X" * 30 + TOKEN, "source": TOKEN, "timestamp": TOKEN}, "application/json",
                 id="every field"),
    pytest.param('{"signal": "BUY", "source": "' + "".join(f"\\u{ord(c):04x}" for c in TOKEN) + '"}',
                 "text/plain", id="JSON escapes"),
    pytest.param('{"signal": "BUY", "note": "' + "".join(f"\\u{ord(c):04x}" for c in TOKEN) + '"',
                 "text/plain", id="JSON escapes in broken JSON"),
    pytest.param("signal=BUY&source=" + "".join(f"%{ord(c):02X}" for c in TOKEN), "application/x-www-form-urlencoded",
                 id="percent-encoding"),
    pytest.param("signal=BUY&x=" + TOKEN[:5] + "".join(f"%{ord(c):02x}" for c in TOKEN[5:]),
                 "application/x-www-form-urlencoded", id="partly percent-encoded"),
])
def test_the_token_never_reaches_the_ledger_the_answer_or_the_log(client, db, clock, caplog, body, content_type):
    caplog.set_level(logging.DEBUG)
    response = post(client, body, content_type=content_type)
    assert response.status_code < 500
    (row,) = ledger_rows(db)
    for stored in (str(value) for value in row.values()):  # also where escapes or percent-encoding hide it
        for decoded in (stored, unquote(stored), stored.encode("ascii", "backslashreplace").decode("unicode_escape")):
            assert TOKEN not in decoded and TOKEN not in unquote(decoded)
    assert TOKEN not in response.text
    assert TOKEN not in caplog.text and TOKEN[:6] not in caplog.text


def test_body_of_exactly_4096_bytes_is_accepted(client, db, clock):
    body = json.dumps({**BUY, "pad": ""})
    body = body[:-2] + "x" * (4096 - len(body)) + body[-2:]
    assert len(body.encode()) == 4096
    assert post(client, body).status_code == 200


def test_locked_database_answers_503_json_and_the_next_signal_is_recorded(client, db, clock, monkeypatch):
    monkeypatch.setattr(ledger, "LEDGER_BUSY_TIMEOUT_MS", 20)  # read when the thread's connection opens
    db.conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    busy = post(client)
    db.conn.execute("ROLLBACK")
    assert busy.status_code == 503 and busy.is_json and busy.headers["Retry-After"]
    assert post(client).status_code == 200
    assert len(ledger_rows(db)) == 1


def test_token_in_another_field_is_not_echoed(client, db, clock):
    response = post(client, {**BUY, "symbol": TOKEN})
    assert response.status_code == 422
    assert TOKEN not in response.text and TOKEN not in ledger_rows(db)[0]["outcome"]


def test_tokens_are_compared_in_constant_time(client, clock, monkeypatch):
    calls = []
    compare = hmac.compare_digest
    monkeypatch.setattr(intake.hmac, "compare_digest", lambda a, b: calls.append(1) or compare(a, b))
    assert post(client, url=f"{URL}/wrong").status_code == 401
    assert post(client).status_code == 200
    assert calls


@pytest.mark.parametrize("candidates, is_valid", [
    ((None, "", "nope"), False), ((TOKEN,), True), ((None, TOKEN), True), ((7, ["x"]), False),
    (("ünïcode", "\ud800"), False), ((TOKEN + " ",), False),
])
def test_is_token_valid(candidates, is_valid):
    assert intake.is_token_valid(candidates, TOKEN) is is_valid


def test_logs_never_hold_the_token(client, clock, caplog):
    caplog.set_level(logging.DEBUG)
    post(client, {**BUY, "token": TOKEN}, url=URL)
    post(client, {"signal": "hold", "token": TOKEN}, url=URL)
    post(client, url=f"{URL}/{TOKEN}x")
    assert caplog.records and TOKEN not in caplog.text


# -- HTTP errors under /api/ are JSON -------------------------------------------------------------


@pytest.mark.parametrize("method, url, status", [
    ("GET", URL, 405), ("PUT", URL, 405), ("DELETE", f"{URL}/{TOKEN}", 405), ("GET", f"{URL}/{TOKEN}", 405),
    ("GET", "/api/v1/nothing", 404), ("POST", "/api/nothing/at/all", 404),
])
def test_http_errors_under_api_answer_json(client, method, url, status):
    response = client.open(url, method=method)
    assert response.status_code == status
    assert response.is_json and response.json["error"]
    if status == 405:
        assert "POST" in response.headers["Allow"]


def test_http_errors_elsewhere_keep_their_html_page(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_unexpected_error_under_api_answers_json_500(settings):
    from omniwise import create_app

    app = create_app(settings)  # not TESTING: errors are handled as in production, not raised

    @app.post("/api/v1/boom")
    def boom():
        raise RuntimeError("boom")

    client = app.test_client()
    with client.session_transaction() as session:  # every route but the webhook needs the operator's login
        session.update(operator=True, generation="0", csrf_token="form-token")  # a fresh database's generation
    response = client.post("/api/v1/boom", headers={"X-CSRF-Token": "form-token"})
    assert response.status_code == 500
    assert response.is_json and "boom" not in response.text


# -- who may send: allow-list, proxies, rate limit ------------------------------------------------


@pytest.mark.parametrize("allow, proxies, remote, forwarded, status", [
    ("", "", "198.51.100.7", None, 200),                              # no list: anyone with the token
    ("tradingview", "", "52.89.214.238", None, 200),
    ("tradingview", "", "52.32.178.7", None, 200),
    ("tradingview", "", "198.51.100.7", None, 403),
    ("tradingview", "", "127.0.0.1", "52.89.214.238", 403),          # X-Forwarded-For not trusted
    ("tradingview", "1", "127.0.0.1", "52.89.214.238", 200),         # ... unless behind a proxy
    ("tradingview", "1", "127.0.0.1", "52.89.214.238, 198.51.100.7", 403),  # the proxy saw the last one
    ("tradingview", "2", "127.0.0.1", "52.89.214.238, 10.0.0.2", 200),
    ("10.0.0.0/8 192.168.1.5", "", "10.20.30.40", None, 200),
    ("10.0.0.0/8", "", "11.0.0.1", None, 403),
    ("::1 10.0.0.0/8", "", "::1", None, 200),
    ("10.0.0.0/8", "", "::ffff:10.0.0.9", None, 200),                # IPv4 seen through an IPv6 socket
])
def test_allow_list_with_cidrs_and_the_tradingview_preset(data_dir, allow, proxies, remote, forwarded, status):
    from omniwise import create_app

    settings = load_settings({"OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_WEBHOOK_TOKEN": TOKEN,
                              "OMNIWISE_WEBHOOK_ALLOW": allow, "OMNIWISE_TRUST_PROXY": proxies}, env_file=None)
    client = create_app(settings).test_client()
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = post(client, headers=headers, environ_base={"REMOTE_ADDR": remote})
    assert response.status_code == status
    assert response.is_json
    if status == 403:
        assert "OMNIWISE_WEBHOOK_ALLOW" in response.json["error"]


def test_trusted_proxy_records_the_forwarded_address(data_dir, db):
    from omniwise import create_app

    client = create_app(Settings(data_dir=data_dir, webhook_token=TOKEN, trust_proxy=1)).test_client()
    post(client, headers={"X-Forwarded-For": "203.0.113.5"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert ledger_rows(db)[0]["remote_addr"] == "203.0.113.5"


def test_rate_limit_answers_429_past_the_burst_per_address(data_dir, db):
    from omniwise import create_app

    app = create_app(Settings(data_dir=data_dir, webhook_token=TOKEN, webhook_rate_per_s=20))
    ticks = FakeClock(100.0)
    app.extensions["omniwise.webhook"].limiter.clock = ticks
    client = app.test_client()
    times = itertools.count(1_600_000_000)

    def send(n: int, address: str = "198.51.100.1") -> list[int]:
        return [post(client, {**BUY, "timestamp": next(times)}, environ_base={"REMOTE_ADDR": address}).status_code
                for _ in range(n)]

    assert send(40) == [200] * 40
    refused = post(client, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert refused.status_code == 429 and refused.is_json and refused.headers["Retry-After"] == "1"
    assert send(1, "198.51.100.2") == [200]  # another address has its own bucket
    ticks.now += 0.125  # 2.5 tokens back at 20/s
    assert send(3) == [200, 200, 429]
    assert len(ledger_rows(db)) == 43  # refused requests are not written


@pytest.mark.parametrize("steps, expected", [
    ([0.0] * 3, [True, True, False]),           # burst of 2
    ([0.0, 0.0, 0.1], [True, True, True]),      # 0.1 s at 10/s refills one
    ([0.0, 0.0, 0.05], [True, True, False]),    # half a token is not enough
    ([0.0, 10.0, 0.0, 0.0], [True, True, True, False]),  # a long pause refills the burst, no more
])
def test_rate_limiter_token_bucket(steps, expected):
    ticks = FakeClock(0.0)
    limiter = RateLimiter(10, burst=2, clock=ticks)
    results = []
    for step in steps:
        ticks.now += step
        try:
            limiter.take("k")
            results.append(True)
        except RateLimited:
            results.append(False)
    assert results == expected


def test_rate_limiter_with_rate_zero_allows_everything():
    limiter = RateLimiter(0, burst=0)
    for _ in range(1000):
        limiter.take("k")


# -- configuration and the token's first start ----------------------------------------------------


@pytest.mark.parametrize("environ, field, expected", [
    ({"OMNIWISE_WEBHOOK_ALLOW": "tradingview"}, "webhook_allow", 4),
    ({"OMNIWISE_WEBHOOK_ALLOW": "TradingView 10.0.0.0/8 2001:db8::/32"}, "webhook_allow", 6),
    ({"OMNIWISE_TRUST_PROXY": "2"}, "trust_proxy", 2),
    ({"OMNIWISE_WEBHOOK_RATE": "0"}, "webhook_rate_per_s", 0),
    ({}, "webhook_rate_per_s", 20),
    ({}, "trust_proxy", 0),
])
def test_webhook_settings_are_read_from_the_environment(environ, field, expected):
    value = getattr(load_settings(environ, env_file=None), field)
    assert (len(value) if field == "webhook_allow" else value) == expected


@pytest.mark.parametrize("environ", [
    {"OMNIWISE_WEBHOOK_ALLOW": "10.0.0.0/33"}, {"OMNIWISE_WEBHOOK_ALLOW": "tradingvue"},
    {"OMNIWISE_TRUST_PROXY": "-1"}, {"OMNIWISE_WEBHOOK_RATE": "fast"},
])
def test_bad_webhook_settings_stop_with_a_config_error(environ):
    with pytest.raises(ConfigError):
        load_settings(environ, env_file=None)


def test_token_is_generated_at_first_start_kept_and_printed_by_init(data_dir, monkeypatch):
    from omniwise import create_app, init_command

    monkeypatch.chdir(data_dir)  # no .env of the developer's
    result = CliRunner().invoke(init_command, env={"OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_WEBHOOK_TOKEN": ""})
    assert result.exit_code == 0, result.output
    with store.connect(data_dir / "omniwise.db") as db:
        token = store.get_meta(db, "webhook_token")
    assert token and f"/api/v1/external-signal/{token}" in result.output
    client = create_app(Settings(data_dir=data_dir)).test_client()  # a later start keeps it
    assert post(client, url=f"{URL}/{token}").status_code == 200
    assert post(client).status_code == 401  # TOKEN is not configured here


def test_init_prints_the_token_only_when_it_creates_it(data_dir, monkeypatch):
    from omniwise import init_command

    monkeypatch.chdir(data_dir)
    env = {"OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_WEBHOOK_TOKEN": ""}
    first = CliRunner().invoke(init_command, env=env)
    with store.connect(data_dir / "omniwise.db") as db:
        token = store.get_meta(db, "webhook_token")
    again = CliRunner().invoke(init_command, env=env)  # systemd's ExecStartPre, on every restart
    configured = CliRunner().invoke(init_command, env={**env, "OMNIWISE_WEBHOOK_TOKEN": TOKEN})
    assert token in first.output
    assert again.exit_code == 0 and token not in again.output and "Webhook page" in again.output
    assert configured.exit_code == 0 and TOKEN not in configured.output and token not in configured.output


def test_configured_token_wins_over_the_generated_one(data_dir, db):
    generated = intake.webhook_token(db, None)
    assert intake.webhook_token(db, "mine") == "mine"
    assert intake.webhook_token(db, None) == generated


# -- property: nothing a sender does gives a 5xx ----------------------------------------------------

_WORDS = st.sampled_from(["BUY", "sell", "long", "flat", "short", "hold", "{{strategy.order.action}}", TOKEN,
                          "BINANCE:BTCUSDT.P", "ETHUSDT", "2023-11-14T22:13:20Z", "1700000000", ""])
_CONTROLS = st.sampled_from(["\n", "\r", "\x00", "\x1b[31m", "\u202e", "\u2066", "\u2028", "\x85"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _WORDS,
                     st.text(st.characters(blacklist_categories=()), max_size=20),
                     st.integers(min_value=-10**400, max_value=10**400),  # huge numbers, past any float
                     st.text("0123456789", min_size=300, max_size=1200),
                     st.lists(st.one_of(_WORDS, _CONTROLS), min_size=2, max_size=6).map("".join))
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3),
                    st.dictionaries(st.text(max_size=5), _SCALARS, max_size=3))
_KEYS = st.one_of(st.sampled_from(["signal", "timestamp", "source", "symbol", "ticker", "token", "passphrase",
                                   "SIGNAL"]), st.text(max_size=8))
_LIKELY_SIGNALS = st.fixed_dictionaries(  # mostly recordable: odd sources and symbols reach the ledger
    {"signal": st.one_of(st.sampled_from(["BUY", "sell", "long", "flat", "short"]), _WORDS), "token": st.just(TOKEN)},
    optional={"timestamp": st.one_of(st.integers(1_600_000_000, 1_700_000_000), _SCALARS),
              "source": st.one_of(st.text(st.characters(blacklist_categories=())), _SCALARS),
              "symbol": _WORDS, "extra": _VALUES})
_BODIES = st.one_of(
    _LIKELY_SIGNALS.map(lambda d: json.dumps(d).encode()),
    st.dictionaries(_KEYS, _VALUES, max_size=6).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(_KEYS, _WORDS, max_size=5).map(lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()),
    st.binary(max_size=4200),
    st.text(max_size=300).map(str.encode),
)
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_CONTENT_TYPES = st.one_of(st.none(), st.just("text/plain"), _HEADER_TEXT, st.sampled_from([
    "application/json", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data",
    "application/xml", ""]))


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES, content_type=_CONTENT_TYPES,
       url=st.sampled_from([URL, f"{URL}/{TOKEN}", f"{URL}/{TOKEN}", f"{URL}/x", f"{URL}/a/b"]),
       header_token=st.one_of(st.none(), st.just(TOKEN), _HEADER_TEXT),
       query_token=st.one_of(st.none(), st.just(TOKEN), st.text(max_size=10)),
       method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
def test_no_body_content_type_or_header_gives_a_5xx(client, db, clock, body, content_type, url, header_token,
                                                    query_token, method):
    headers = {} if header_token is None else {"X-Omniwise-Token": header_token}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.open(url, method=method, data=body, headers=headers,
                           query_string={} if query_token is None else {"token": query_token})
    assert response.status_code < 500
    assert response.is_json and ("error" in response.json or response.json["id"] > 0)
    assert TOKEN not in response.text
    leaks = db.execute("SELECT count(*) FROM external_signals WHERE instr(coalesce(source, '') || "
                       "coalesce(symbol, '') || coalesce(raw_body, '') || outcome, ?)", [TOKEN]).fetchone()[0]
    assert leaks == 0


# -- the description and the boundary ------------------------------------------------------------


def test_openapi_description_is_valid_and_lists_every_answer():
    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    validate_openapi(spec)
    from blueprints.signals import STATUS

    for path in ("/api/v1/external-signal", "/api/v1/external-signal/{token}"):
        documented = {int(code) for code in spec["paths"][path]["post"]["responses"]}
        assert set(STATUS.values()) | {200, 405, 429, 503} <= documented


def test_receive_records_before_it_raises(db):
    delivery = intake.Delivery(b'{"signal": "hold"}', "text/plain", (TOKEN,), "127.0.0.1")
    with pytest.raises(intake.SignalError):
        intake.receive(db, delivery, token=TOKEN, symbol="BTCUSDT", now_ms=NOW_MS)
    assert ledger_rows(db)[0]["outcome"] == 'rejected: signal "hold" is not BUY, SELL, SHORT or FLAT'


def test_settings_stay_hashable_with_networks(settings):
    assert hash(dataclasses.replace(settings, webhook_allow=load_settings(
        {"OMNIWISE_WEBHOOK_ALLOW": "tradingview"}, env_file=None).webhook_allow))

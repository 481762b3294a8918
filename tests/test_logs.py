"""The one log filter of both processes: secrets blotted out, control characters escaped, tracebacks indented."""

from __future__ import annotations

import io
import logging
import re

import pytest

from core import logs

SECRET = "s3cret-token_for-log-tests"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} [A-Z]+ ")


@pytest.fixture
def log_output(monkeypatch):
    """Root logging configured as both processes do, into a buffer; the previous handlers come back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stdout", buffer)
    monkeypatch.setattr(logs, "_secrets", set())
    logs.configure("DEBUG")
    logs.add_secrets(SECRET, None, "")
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_forged_record_in_a_message_stays_on_its_own_line(log_output):
    source = "tv\n2026-01-01T00:00:00+0000 CRITICAL omniwise.alerts: HEARTBEAT FAILURE: forged"
    logging.getLogger("omniwise.signals").info("external signal BUY from %s", source)
    lines = log_output.getvalue().splitlines()
    assert len(lines) == 1 and "CRITICAL" not in lines[0].split(": ", 1)[0]
    assert lines[0].endswith("from tv\\n2026-01-01T00:00:00+0000 CRITICAL omniwise.alerts: HEARTBEAT FAILURE: forged")


@pytest.mark.parametrize("char, shown", [
    ("\x00", "\\x00"), ("\r", "\\r"), ("\t", "\\t"), ("\x1b", "\\x1b"), ("\x7f", "\\x7f"), ("\x85", "\\x85"),
    ("\u202e", "\\u202e"), ("\u2066", "\\u2066"), ("\u2028", "\\u2028"), ("\u200f", "\\u200f"),
])
def test_control_characters_are_escaped(log_output, char, shown):
    logging.getLogger("omniwise").warning("a%sb", char)
    assert log_output.getvalue().rstrip("\n").endswith(f"a{shown}b")


def test_plain_text_is_left_alone(log_output):
    logging.getLogger("omniwise").info("prix: 1 000 € — ok %d%%", 5)
    assert log_output.getvalue().rstrip("\n").endswith("prix: 1 000 € — ok 5%")


@pytest.mark.parametrize("written", [
    SECRET, f"/api/v1/external-signal/{SECRET}", "".join(f"\\u{ord(c):04x}" for c in SECRET),
    "".join(f"%{ord(c):02X}" for c in SECRET), f"token={SECRET[:4]}%{ord(SECRET[4]):02x}{SECRET[5:]}",
])
def test_secrets_are_blotted_out_however_they_are_written(log_output, written):
    logging.getLogger("flask.app").error("Exception on %s [POST]", written)
    assert SECRET not in log_output.getvalue() and SECRET[:8] not in log_output.getvalue()
    assert "[token]" in log_output.getvalue()


def test_tracebacks_lose_their_secrets_and_cannot_forge_a_record(log_output):
    try:
        raise ValueError(f"bad {SECRET}\n2026-01-01T00:00:00+0000 CRITICAL omniwise.alerts: forged\u202e")
    except ValueError:
        logging.getLogger("omniwise.web").exception("request failed")
    text = log_output.getvalue()
    assert SECRET not in text and "Traceback" in text and "ValueError: bad [token]" in text
    records = [line for line in text.splitlines() if RECORD_START.match(line)]
    assert len(records) == 1 and " ERROR omniwise.web: request failed" in records[0]
    assert all(line.startswith("    ") for line in text.splitlines()[1:])
    assert "\u202e" not in text


def test_a_record_seen_by_two_handlers_is_cleaned_once(log_output):
    second = io.StringIO()
    handler = logging.StreamHandler(second)
    handler.addFilter(logs.SafeRecords())
    logging.getLogger().addHandler(handler)
    try:
        raise KeyError(SECRET)
    except KeyError:
        logging.getLogger("omniwise").exception("x")
    for text in (log_output.getvalue(), second.getvalue()):
        assert "\n    Traceback" in text and "\n        Traceback" not in text and SECRET not in text


def test_gunicorn_loggers_pass_the_same_filter(monkeypatch):
    import logging.config

    monkeypatch.setattr(logs, "_secrets", {SECRET})
    config = logs.gunicorn_logconfig("INFO")
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stdout", buffer)
    root = logging.getLogger()
    handlers = root.handlers[:]
    error_logger = logging.getLogger("gunicorn.error")
    try:
        logging.config.dictConfig(config)
        error_logger.error("Error handling request /api/v1/external-signal/%s\nforged", SECRET)
    finally:
        root.handlers[:] = handlers
        error_logger.handlers[:] = []
    assert buffer.getvalue().count("\n") == 1 and SECRET not in buffer.getvalue()


def test_redact_leaves_text_without_secrets_as_it_is():
    assert logs.redact('{"a": "\\u0041%41"}', (SECRET,)) == '{"a": "\\u0041%41"}'
    assert logs.redact("x", ()) == "x"


def test_the_web_apps_exception_line_never_holds_the_token(log_output, data_dir, monkeypatch):
    from core.webhook import intake
    from core.config import Settings
    from omniwise import create_app

    app = create_app(Settings(data_dir=data_dir, webhook_token=SECRET.upper(), webhook_rate_per_s=0))

    def explode(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(intake, "receive", explode)
    answer = app.test_client().post(f"/api/v1/external-signal/{SECRET.upper()}", data='{"signal": "BUY"}')
    assert answer.status_code == 500
    text = log_output.getvalue()
    assert "Exception on /api/v1/external-signal/[token] [POST]" in text and SECRET.upper() not in text


def test_the_workers_log_never_holds_the_token(data_dir):
    from tests.processes import query, start_worker, stop_worker, wait_until

    token = "SECRETTOKENABC123"  # a name the strategy language reads, so the worker's error quotes it
    (data_dir / "strategy.txt").write_text(f"IF {token} > 1 THEN BUY\n")
    worker = start_worker(data_dir, webhook_token=token, replay_speed=0)
    wait_until(lambda: query(data_dir, "SELECT 1 FROM heartbeat WHERE subject = 'strategy'"), worker,
               what="the worker's verdict on the strategy")
    output = stop_worker(worker)
    assert "[token]" in output and token not in output

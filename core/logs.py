"""One log format for both processes, to stdout (journald and honcho add nothing to untangle).

Every record passes one filter, `SafeRecords`, before it is written: secrets (the webhook token, the
exchange keys) are blotted out and control characters are escaped, so a log line is always one line
that says only what Omniwise wrote. A traceback follows its record with every line indented, so no
line of it can pass for a record of its own.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
from urllib.parse import quote, quote_plus, unquote, unquote_plus

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
REDACTED = "[token]"

# C0 and C1 controls, DEL, the line and paragraph separators and the bidirectional overrides and
# isolates (a right-to-left override makes a line read differently from what it holds).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\([\"\\/bfnrt])")
_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secrets(*secrets: str | None) -> None:
    """Blot these secrets out of every log record (and of every text given to `redact`) from now on."""
    with _secrets_lock:
        _secrets.update(secret for secret in secrets if secret)


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a character that could break a line or reorder what a reader sees."""
    return CONTROL_CHARACTERS.search(text) is not None


def escape_controls(text: str) -> str:
    """`text` with each control character written as an escape (\\n, \\x00, \\u202e): one visible line."""
    def escape(match: re.Match) -> str:
        char = match.group()
        if char in _NAMED:
            return _NAMED[char]
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return CONTROL_CHARACTERS.sub(escape, text)


def redact(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """`text` with every secret blotted out, also where JSON escapes or percent-encoding hide it.

    A text that hides a secret behind escapes is returned decoded (with the secret blotted out), as the
    encoded form cannot be redacted in place.
    """
    if secrets is None:
        with _secrets_lock:
            secrets = tuple(_secrets)
    secrets = tuple(s for s in secrets if s)
    if not secrets:
        return text
    if any(mark in text for mark in _ESCAPE_MARKS):  # without one, every decoding below leaves the text as it is
        for decode in (_unescape_json, unquote_plus, unquote):
            if not any(s in text for s in secrets) and any(s in decode(text) for s in secrets):
                text = decode(text)
    for secret in secrets:
        for written in _written_forms(secret):
            text = text.replace(written, REDACTED)
    return text


_ESCAPE_MARKS = ("\\", "%", "+")  # what a JSON escape or percent-encoding needs


@functools.lru_cache(maxsize=64)
def _written_forms(secret: str) -> tuple[str, ...]:
    """The ways `secret` can be written: plain, inside a JSON string, percent-encoded."""
    return tuple({secret, json.dumps(secret)[1:-1], quote_plus(secret), quote(secret, safe="")})


def _unescape_json(text: str) -> str:
    def unescape(match: re.Match) -> str:
        if match.group(1):
            return chr(int(match.group(1), 16))
        return _JSON_SIMPLE.get(match.group(2), match.group(2))

    return _JSON_ESCAPE.sub(unescape, text)


class SafeRecords(logging.Filter):
    """The one filter of both processes: secrets blotted out, control characters escaped, in every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "omniwise_safe", False):  # a second handler sees the record already cleaned
            return True
        record.omniwise_safe = True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format is still written
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = escape_controls(redact(message)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # the formatter must use the cleaned text below, not format it again
        if record.exc_text:
            record.exc_text = _indented(redact(record.exc_text))
        if record.stack_info:
            record.stack_info = _indented(redact(record.stack_info))
        return True


def _indented(text: str) -> str:
    """Each line escaped and indented, so a traceback cannot forge a record."""
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stdout in the Omniwise format, at `level` and above, through SafeRecords."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(SafeRecords())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def gunicorn_logconfig(level: str = "INFO") -> dict:
    """gunicorn's own loggers in the same format and through the same filter (its `logconfig_dict` setting)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"safe": {"()": SafeRecords}},
        "formatters": {"omniwise": {"format": FORMAT, "datefmt": DATE_FORMAT}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "omniwise",
                                "stream": "ext://sys.stdout", "filters": ["safe"]}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {"gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
                    "gunicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False}},
    }

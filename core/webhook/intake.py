"""Webhook intake: read a delivery, check its address and token, parse it into a Signal for the ledger.

An authenticated delivery is always written to the ledger (core/webhook/ledger.py), refused ones too.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from urllib.parse import parse_qsl

from core import logs, store
from core.store import Database
from core.webhook import ledger
from core.webhook.ledger import Receipt, Signal, normalize_symbol

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4096
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: an earlier time is a mistake (a 0 or a date read as 1970)
MAX_SOURCE_CHARS = 100
MAX_FORM_FIELDS = 50
DEFAULT_SOURCE = "webhook"
TOKEN_KEY = "webhook_token"  # the generated token's row of the meta table

# TradingView's words: {{strategy.order.action}} is buy/sell, {{strategy.market_position}} long/flat/short
# (DESIGN.md "External signals": BUY/LONG expect long, SHORT short, FLAT/EXIT flat, SELL not long).
SIGNAL_WORDS = {"buy": "BUY", "sell": "SELL", "long": "BUY", "flat": "FLAT", "exit": "FLAT", "short": "SHORT"}
BARE_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}")  # a lone word, not JSON: told which words are taken
EXAMPLE = '{"signal": "{{strategy.order.action}}", "timestamp": "{{timenow}}", "source": "TradingView"}'


class WebhookError(Exception):
    """A delivery was refused. `reason` is short (it goes to the ledger); str() adds how to fix it."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason = reason


class AddressRefused(WebhookError):
    """The sender's address is not on the allow-list. Caller: answer 403, record nothing."""


class TokenError(WebhookError):
    """No valid token came with the delivery. Caller: answer 401, record nothing."""


class BodyTooLarge(WebhookError):
    """The body is over MAX_BODY_BYTES. Caller: answer 413."""


class UnsupportedContentType(WebhookError):
    """The body is neither JSON, text nor a form. Caller: answer 415."""


class SignalError(WebhookError):
    """The body is not a usable signal. Caller: answer 400; the sender must fix its message."""


class WrongSymbol(SignalError):
    """The signal is for another market. Caller: answer 422; the alert is set up on the wrong chart."""


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One request to the webhook as the web layer read it (body already capped at MAX_BODY_BYTES + 1)."""

    body: bytes
    content_type: str | None
    tokens: tuple[str | None, ...]  # from the URL path, the query and the X-Omniwise-Token header
    remote_addr: str


def webhook_token(db: Database, configured: str | None) -> str:
    """The webhook's secret: OMNIWISE_WEBHOOK_TOKEN, else one generated once and kept in the database."""
    return configured or store.ensure_secret(db, TOKEN_KEY)


def check_address(address: str, allowed: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
    """Raise AddressRefused unless `address` is in one of the `allowed` networks (none given: all are)."""
    allowed = tuple(allowed)
    if not allowed:
        return
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip is None or not any(ip in network for network in allowed):
        raise AddressRefused(f"address {address} may not send signals",
                             "it is not in OMNIWISE_WEBHOOK_ALLOW (behind a reverse proxy, set "
                             "OMNIWISE_TRUST_PROXY to the number of proxies)")


def is_token_valid(candidates: Iterable[object], expected: str) -> bool:
    """Whether any candidate equals `expected`, each compared in constant time."""
    want = expected.encode("utf-8")
    found = False
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            found |= hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), want)
    return found


def read_fields(body: bytes, content_type: str | None) -> dict[str, object]:
    """The body's fields, keys lower-cased: a JSON object (sent as JSON, text or form) or form fields."""
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the body is over {MAX_BODY_BYTES} bytes", "a signal needs less than 200")
    mimetype = (content_type or "").partition(";")[0].strip().lower()
    is_form = mimetype == "application/x-www-form-urlencoded"
    if not (is_form or mimetype in ("", "text/plain", "application/json") or mimetype.endswith("+json")):
        raise UnsupportedContentType(f"content type {_quote(mimetype)} is not supported",
                                     "send the JSON as application/json or text/plain")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SignalError(f"the body is not UTF-8 text (byte {exc.start})", f"send JSON like {EXAMPLE}") from None
    if not text.strip():
        raise SignalError("the body is empty", f"send JSON like {EXAMPLE}")
    word = text.strip()
    if is_form and word.lower() in SIGNAL_WORDS:  # curl --data buy sends a form: the word is not a field
        raise SignalError(f"the form body is the bare word {_quote(word)}",
                          f"send a bare word as text/plain (curl -H 'Content-Type: text/plain' --data {word}), "
                          "or a form field: signal=BUY")
    if is_form and not text.lstrip().startswith("{"):
        return _form_fields(text)
    if mimetype in ("", "text/plain") and word.lower() in SIGNAL_WORDS:
        return {"signal": word}  # a bare word: TradingView's {{strategy.order.action}} as the whole message
    if mimetype in ("", "text/plain") and BARE_WORD.fullmatch(word):
        raise SignalError(f"the body is the word {_quote(word)}, which is not a signal",
                          f"send one of the words {', '.join(SIGNAL_WORDS)} (any case), or JSON like {EXAMPLE}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise SignalError(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                          f"TradingView sends the alert message as written, so write it as JSON: {EXAMPLE}") from None
    except (ValueError, RecursionError) as exc:
        raise SignalError(f"the body is not usable JSON ({exc.__class__.__name__})",
                          f"send JSON like {EXAMPLE}") from None
    if not isinstance(value, dict):
        raise SignalError(f"the body is JSON but not an object (it is {type(value).__name__})",
                          f"send an object like {EXAMPLE}")
    return {key.lower(): item for key, item in value.items()}


def parse_signal(fields: Mapping[str, object], symbol: str, now_ms: int) -> Signal:
    """The Signal in a body's fields, for the market `symbol`; raise SignalError when it is not usable."""
    source = _text(fields.get("source"), "source")[:MAX_SOURCE_CHARS].strip() or DEFAULT_SOURCE
    market = normalize_symbol(symbol)
    given = _text(fields.get("symbol"), "symbol") or _text(fields.get("ticker"), "ticker")
    if "{{" in given:
        raise SignalError(f"the symbol is the placeholder {_quote(given)}, not replaced by TradingView",
                          "{{ticker}} is filled in only when the alert's message is set in TradingView's "
                          "alert dialog; write the symbol, or drop the field")
    if given and normalize_symbol(given) != market:
        raise WrongSymbol(f"the signal is for {_quote(given)}, but this Omniwise trades {market}",
                          "send alerts from a chart of that symbol, or drop the symbol field")
    return Signal(_signal_word(fields.get("signal")), _signal_time_ms(fields.get("timestamp"), now_ms), source, market)


def receive(db: Database, delivery: Delivery, *, token: str, symbol: str, now_ms: int) -> Receipt:
    """Check, parse and record one delivery; raise a WebhookError when it is refused.

    An authenticated delivery is in the ledger before this returns or raises.
    """
    is_authenticated = is_token_valid(delivery.tokens, token)
    try:
        fields = read_fields(delivery.body, delivery.content_type)
    except (BodyTooLarge, UnsupportedContentType) as exc:
        if is_authenticated:
            _record_refusal(db, delivery, token, exc, None, now_ms)
        raise
    except SignalError as exc:
        if not is_authenticated:
            raise TokenError("no valid token", f"{_TOKEN_HINT} (the body could not be read either: {exc})") from None
        _record_refusal(db, delivery, token, exc, None, now_ms)
        raise
    if not (is_authenticated or is_token_valid((fields.get("token"), fields.get("passphrase")), token)):
        raise TokenError("no valid token", _TOKEN_HINT)
    # Authenticated: from here on no field may carry the token further (ledger, answer, log, pages).
    fields = {key: redact(value, token) if isinstance(value, str) else value for key, value in fields.items()}
    try:
        signal = parse_signal(fields, symbol, now_ms)
    except SignalError as exc:
        _record_refusal(db, delivery, token, exc, fields, now_ms)
        raise
    return ledger.record(db, signal, received_at_ms=now_ms, remote_addr=delivery.remote_addr,
                  raw_body=_raw_text(delivery.body, token))


def redact(text: str, token: str) -> str:
    """`text` with the token blotted out in each form it can be written in (plain, JSON escapes, URL-encoded)."""
    return logs.redact(text, (token,))


# -- helpers ------------------------------------------------------------------------------------

_TOKEN_HINT = ("put the webhook token in the URL (/api/v1/external-signal/TOKEN or ?token=TOKEN), in the "
               "body's \"token\" field or in an X-Omniwise-Token header; `python omniwise.py init` prints it")


def _record_refusal(db: Database, delivery: Delivery, token: str, exc: WebhookError,
                    fields: Mapping[str, object] | None, now_ms: int) -> int:
    source = symbol = None
    if fields is not None:  # kept for the operator, but shown escaped: they may hold anything
        source = _text_or_none(fields.get("source"), MAX_SOURCE_CHARS, token)
        symbol = _text_or_none(fields.get("symbol") or fields.get("ticker"), MAX_SOURCE_CHARS, token)
    return ledger.record_refusal(db, received_at_ms=now_ms, remote_addr=delivery.remote_addr,
                                 raw_body=_raw_text(delivery.body, token),
                                 reason=logs.escape_controls(redact(exc.reason, token)), source=source, symbol=symbol)


def _raw_text(body: bytes, token: str) -> str:
    """The body as stored: capped, decoded leniently, the token blotted out."""
    return redact(body[:MAX_BODY_BYTES].decode("utf-8", "replace"), token)


def _form_fields(text: str) -> dict[str, object]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise SignalError(f"the form body has more than {MAX_FORM_FIELDS} fields",
                          f"a signal needs signal, timestamp and source at most; or send JSON like {EXAMPLE}") from None
    if not pairs:
        raise SignalError("the form body has no fields", f"send JSON like {EXAMPLE}")
    return {key.lower(): value for key, value in pairs}


def _signal_word(value: object) -> str:
    if value is None:
        raise SignalError('the body has no "signal" field', f"send JSON like {EXAMPLE}")
    word = value.strip().lower() if isinstance(value, str) else None
    if word in SIGNAL_WORDS:
        return SIGNAL_WORDS[word]
    if word and word.startswith("{{"):
        raise SignalError(f"the signal is the placeholder {_quote(value)}, not replaced by TradingView",
                          "{{strategy.order.action}} and {{strategy.market_position}} are filled in only "
                          "for alerts on a strategy; on an indicator alert write BUY or SELL")
    raise SignalError(f"signal {_quote(value)} is not BUY, SELL, SHORT or FLAT",
                      "send BUY, SELL, SHORT or FLAT (any case), or TradingView's buy/sell/long/flat/short, or EXIT")


def _signal_time_ms(value: object, now_ms: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return now_ms
    if isinstance(value, str):
        number = _number_or_none(value.strip())
        ms = _iso_ms(value.strip()) if number is None else _epoch_ms(number)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = _epoch_ms(value)
    else:
        ms = None
    if ms is None:
        raise SignalError(f"timestamp {_quote(value)} is not a time",
                          "send seconds or milliseconds since 1970 (UTC), or ISO-8601 like {{timenow}}; "
                          "leave it out to use the arrival time")
    if ms < EARLIEST_MS:
        raise SignalError(f"timestamp {_quote(value)} is before 2000-01-01",
                          "send seconds or milliseconds since 1970 (UTC), or ISO-8601 like {{timenow}}")
    if ms > now_ms:  # a sender clock ahead of ours: kept as given, it would hide every later signal until then
        log.info("signal stamped %.1f s ahead of the arrival: it counts as arriving now", (ms - now_ms) / 1000)
        return now_ms
    return ms


def _number_or_none(text: str) -> int | float | None:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return None


def _epoch_ms(number: int | float) -> int | None:
    """Seconds, milliseconds or microseconds since 1970, told apart by size, as milliseconds."""
    if isinstance(number, float) and not math.isfinite(number) or number <= 0:  # an int may exceed any float
        return None
    for below, times, divided_by in ((1e11, 1000, 1), (1e14, 1, 1), (1e17, 1, 1000)):
        if number < below:
            return number * times // divided_by if isinstance(number, int) else round(number * times / divided_by)
    return None


def _iso_ms(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return round(moment.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        return None


def _text(value: object, name: str) -> str:
    """A string field ('' when absent); SignalError when it is not text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SignalError(f'"{name}" must be a string, not {type(value).__name__}', f"send JSON like {EXAMPLE}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SignalError(f'"{name}" is not valid text', f"send JSON like {EXAMPLE}") from None
    if logs.has_control_characters(value.strip()):
        raise SignalError(f'"{name}" holds control characters (line breaks, NUL or direction marks)',
                          "send plain text")
    return value.strip()


def _text_or_none(value: object, limit: int, token: str) -> str | None:
    if not isinstance(value, str):
        return None
    text = logs.escape_controls(redact(value, token))[:limit]
    return text.encode("utf-8", "replace").decode("utf-8")


def _quote(value: object) -> str:
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")

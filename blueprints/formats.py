"""How the pages write numbers and times: UTC always (the year when it is not this year), signed money, percents.

One time base a page: in a replay the market's times (candles, decisions, orders, trades) are the file's, so the
times of this machine's clock (a signal's arrival, an alert, a pause, the page's own refresh) are written as
ages there ("36 s ago", "in 74 s"), the time itself on hover. Outside a replay both are the same clock.
"""

from __future__ import annotations

import sqlite3
import time

from flask import Blueprint, current_app, g
from markupsafe import Markup

from blueprints.db import get_db
from core import account, clock, dashboard, precision, replay_status
from core.health.status import iso

bp = Blueprint("formats", __name__)


@bp.app_template_filter("utc")
def utc(time_ms: int | None, short: bool = False, now_ms: int | None = None) -> str:
    """'YYYY-MM-DD HH:MM:SS UTC'; short: 'MM-DD HH:MM:SS' in this year, else 'YYYY-MM-DD HH:MM' (a column
    headed UTC)."""
    if time_ms is None:
        return ""
    moment = time.gmtime(time_ms / 1000)
    if not short:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", moment)
    this_year = time.gmtime((now_ms if now_ms is not None else clock.now_ms()) / 1000).tm_year
    return time.strftime("%m-%d %H:%M:%S" if moment.tm_year == this_year else "%Y-%m-%d %H:%M", moment)


@bp.app_template_filter("hms")
def hms(time_ms: int | None) -> str:
    """A time of day, 'HH:MM:SS UTC'."""
    return "" if time_ms is None else time.strftime("%H:%M:%S UTC", time.gmtime(time_ms / 1000))


@bp.app_template_global()
def replaying() -> bool:
    """The worker replays a file (or replayed one to its end): the market's times are the file's (once a request)."""
    if "replaying" not in g:
        try:
            g.replaying = replay_status.is_replaying(get_db())
        except sqlite3.Error:  # the error page says why
            g.replaying = False
    return g.replaying


@bp.app_template_filter("clock_time")
def clock_time(time_ms: int | None, style: str = "full") -> Markup:
    """A time of this machine's clock: as `utc` ('full', 'short') or `hms` ('hms'); in a replay its age ('36 s
    ago', 'in 74 s'), since the page's absolute times are then the file's."""
    if time_ms is None:
        return Markup("")
    written = hms(time_ms) if style == "hms" else utc(time_ms, short=style == "short")
    if not replaying():
        return Markup("{}").format(written)
    seconds = (time_ms - clock.now_ms()) / 1000
    words = f"in {dashboard.duration(seconds)}" if seconds >= 1 else f"{dashboard.duration(-seconds)} ago"
    return Markup('<time class="age" datetime="{}" title="{} (this machine\'s clock)">{}</time>').format(
        iso(time_ms), utc(time_ms), words)


@bp.app_template_filter("ago")
def ago(iso_time: str | None, now_ms: int) -> str:
    """How long ago an ISO time of the status report was, in words."""
    return dashboard.age(iso_time, now_ms)


@bp.app_template_global()
def market_precision() -> precision.Precision:
    """The decimals of this market's quantities, prices and money (once a request)."""
    if "precision" not in g:
        settings, db = current_app.config["SETTINGS"], get_db()
        g.precision = precision.for_market(db, settings.symbol, account.quote_asset(settings.symbol),
                                           account.last_price(db, settings.symbol))
    return g.precision


@bp.app_template_global()
def base_asset() -> str:
    """What the market's quantities count: XRPETH -> XRP (the symbol itself when its quote is unknown)."""
    symbol = current_app.config["SETTINGS"].symbol
    quote = account.quote_asset(symbol)
    return symbol[:-len(quote)] if quote != "quote" else symbol


@bp.app_template_filter("num")
def num(value: float | None, decimals: int = 2) -> str:
    """A plain number with fixed decimals and thousands separators, never in scientific notation."""
    return precision.fixed(value, decimals)


@bp.app_template_filter("qty")
def qty(value: float | None) -> str:
    """A quantity of the base asset with the market's decimals (the exchange's step size)."""
    return precision.fixed(value, market_precision().qty)


@bp.app_template_filter("price")
def price(value: float | None) -> str:
    """A price with the market's decimals (the exchange's tick size)."""
    return precision.fixed(value, market_precision().price)


@bp.app_template_filter("money")
def money(value: float | None) -> str:
    """An amount of the quote asset with its decimals: 10,000.00 USDT, 9.876543 ETH."""
    return precision.fixed(value, market_precision().money)


@bp.app_template_filter("signed")
def signed(value: float | None) -> Markup:
    """Money won or lost in the quote asset's decimals: green with +, red with -, plain when it rounds to 0."""
    if value is None:
        return Markup("")
    text = precision.fixed(value, market_precision().money, signed=True)
    if not text.startswith(("+", "-")):
        return Markup('<span class="muted">{}</span>').format(text)
    return Markup('<span class="{}">{}</span>').format("good" if value > 0 else "bad", text)


@bp.app_template_filter("pct")
def pct(value: float | None) -> Markup:
    """A percent with two decimals; one that rounds to 0.00 (a fee-only loss) is not painted red."""
    if value is None:
        return Markup("")
    text = f"{value:+.2f}"
    if text in ("+0.00", "-0.00"):
        return Markup('<span class="muted">{} %</span>').format(precision.fixed(value, 3) if value else "0.00")
    return Markup('<span class="{}">{} %</span>').format("good" if value > 0 else "bad", text)


@bp.app_template_filter("plural")
def plural(count: int, word: str) -> str:
    """'1 rule', '3 rules'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# The ledger's "stale" (older than its source's newest signal) is not the heartbeat's "stale" (too old to trust).
LEDGER_OUTCOMES = {"stale": "superseded"}


@bp.app_template_filter("outcome")
def outcome(word: str) -> str:
    """A signal ledger outcome in the operator's words."""
    return LEDGER_OUTCOMES.get(word, word)

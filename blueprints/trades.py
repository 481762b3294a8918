"""The account's round trips with P&L, fees and exit reason, and its equity curve."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from blueprints.db import get_db
from core import account, clock, dashboard, precision

bp = Blueprint("trades", __name__)


def _page_data() -> dict:
    db, settings, now_ms = get_db(), current_app.config["SETTINGS"], clock.now_ms()
    _, trips = account.ledger(db, settings.symbol)
    return {"trips": trips[::-1], "now_ms": now_ms, "asset": account.quote_asset(settings.symbol),
            "money": account.of_settings(db, settings, now_ms)}


@bp.get("/trades")
def index():
    """Round trips newest first, the money tile and the equity curve."""
    return render_template("trades/index.html", **_page_data())


@bp.get("/trades/table")
def table():
    """The #trades fragment, refreshed in place."""
    return render_template("trades/_trades.html", **_page_data())


@bp.get("/trades.csv")
def export():
    """Every round trip as CSV, oldest first, for a spreadsheet or the tax office."""
    settings = current_app.config["SETTINGS"]
    _, trips = account.ledger(get_db(), settings.symbol)
    name = f"omniwise-{settings.symbol}-trades.csv"
    return dashboard.round_trips_csv(trips), 200, {"Content-Type": "text/csv; charset=utf-8",
                                                   "Content-Disposition": f'attachment; filename="{name}"'}


@bp.get("/api/v1/equity")
def equity():
    """Equity after each fill and now, in the quote asset, for the chart (times in UTC seconds)."""
    db, settings = get_db(), current_app.config["SETTINGS"]
    start = settings.paper_balance if settings.broker == "paper" else 0.0  # an exchange account: P&L from 0
    price, at_ms = account.last_close(db, settings.symbol) or (None, clock.now_ms())
    curve = account.equity_curve(account.ledger(db, settings.symbol)[0], start, price, at_ms,
                                 account.marking_fee(settings))
    asset = account.quote_asset(settings.symbol)
    decimals = precision.for_market(db, settings.symbol, asset, price).money  # as the money tile writes it
    return {"asset": asset, "start": start, "points": curve, "decimals": decimals}

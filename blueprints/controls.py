"""The operator's controls: pause and resume new entries, flatten the position (after a confirmation)."""

from __future__ import annotations


from flask import Blueprint, current_app, flash, redirect, render_template, url_for

from blueprints.db import get_db
from core import account, brokers, clock, controls

bp = Blueprint("controls", __name__)



@bp.post("/admin/pause")
def pause():
    """Stop new entries; exits, SELL rules and risk exits still act."""
    if controls.pause(get_db(), clock.now_ms()):
        flash("Paused: no new entries from the next candle on. Exits still happen.", "good")
    else:
        flash("Trading was already paused.", "good")
    return redirect(url_for("status.index"))


@bp.post("/admin/resume")
def resume():
    """Allow new entries again."""
    if controls.resume(get_db(), clock.now_ms()):
        flash("Resumed: the strategy may enter again from the next candle on.", "good")
    else:
        flash("Trading was not paused.", "good")
    return redirect(url_for("status.index"))


@bp.get("/admin/flatten")
def confirm_flatten():
    """What a flatten would do, and the button that does it."""
    db, settings = get_db(), current_app.config["SETTINGS"]
    return render_template("controls/flatten.html", position=brokers.load_position(db),
                           price=account.last_price(db, settings.symbol), state=controls.trading_state(db),
                           asset=account.quote_asset(settings.symbol))


@bp.post("/admin/flatten")
def flatten():
    """Ask the worker to close the position now; it does so within a second and alerts the result."""
    controls.request_flatten(get_db(), clock.now_ms())
    flash("Flatten requested: the worker closes the position within a second; the result is shown under Alerts.",
          "good")
    return redirect(url_for("status.index"))

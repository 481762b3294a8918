"""The operator's status page."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template

from core import store
from core.dsl import StrategyError, compile_strategy

bp = Blueprint("status", __name__)


@bp.get("/")
def index():
    from omniwise import get_db

    settings = current_app.config["SETTINGS"]
    errors, rules = [], []
    try:
        rules = compile_strategy(settings.strategy_path.read_text(encoding="utf-8")).rules
    except FileNotFoundError:
        pass
    except StrategyError as exc:
        errors = exc.errors
    beacon = store.get_meta(get_db(), "worker_beacon_ms")
    age_s = None if beacon is None else max(0.0, time.time() - int(beacon) / 1000)
    return render_template("status/index.html", settings=settings, rules=rules, errors=errors,
                           worker_age_s=age_s)

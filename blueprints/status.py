"""The operator's status page."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, render_template

from core import liveness
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
    worker = liveness.worker_status(get_db(), int(time.time() * 1000))
    return render_template("status/index.html", settings=settings, rules=rules, errors=errors, worker=worker,
                           now_ms=int(time.time() * 1000))

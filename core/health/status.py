"""What the operator and uptime monitors are told: the status report behind /api/v1/status and /healthz."""

from __future__ import annotations

import datetime

from core import account, brokers, controls
from core.health import alerts, heartbeat, liveness
from core.store import Database
from core.webhook import ledger


def iso(time_ms: int | None) -> str | None:
    """A UTC time in ms as ISO 8601 with milliseconds, e.g. 2026-11-26T09:30:00.000Z."""
    if time_ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def status_report(db: Database, settings, now_ms: int, alert_limit: int = 10) -> dict:
    """Worker, position, latest signal, heartbeat state and recent alerts (DESIGN.md's JSON shape)."""
    worker = liveness.worker_status(db, now_ms)
    position = brokers.load_position(db)
    latest = ledger.latest_signal(db, settings.symbol)
    state = heartbeat.state_of(db, "position")
    money = account.of_settings(db, settings, now_ms)
    return {
        "symbol": settings.symbol,
        "broker": settings.broker,
        "mode": settings.mode,  # paper, testnet or live (real money)
        "worker": {"alive": worker.alive, "last_seen": iso(worker.last_seen_ms)},
        "position": {"side": position["side"] if position else None, "qty": position["qty"] if position else None,
                     "entry_price": position["entry_price"] if position else None,
                     "read_at": iso(position["read_at_ms"]) if position else None},
        "signal": {"signal": latest.signal if latest else None,
                   "received_at": iso(latest.received_at_ms) if latest else None,
                   "source": latest.source if latest else None,
                   "stale": latest is None or now_ms - latest.received_at_ms > settings.signal_ttl_s * 1000},
        "heartbeat": {"state": state["state"] if state else None, "reason": state["reason"] if state else None,
                      "since": iso(state["since_ms"]) if state else None,
                      "checked_at": iso(state["checked_at_ms"]) if state else None,
                      "pending_until": iso(state["pending_until_ms"]) if state else None},
        "alerts": [{"created_at": iso(a["created_at_ms"]), "state": a["state"], "message": a["message"],
                    "delivered": a["delivered_at_ms"] is not None,
                    "delivery": alerts.delivery(a, bool(settings.alert_urls))}  # "log only" without alert URLs
                   for a in alerts.recent(db, alert_limit)],
        "account": money.as_json() | {"asset": account.quote_asset(settings.symbol)},
        "trading": controls.trading_state(db).as_json(iso),
    }


def is_healthy(report: dict) -> bool:
    """Healthy for an uptime monitor: the worker is alive and the heartbeat is ok."""
    return bool(report["worker"]["alive"]) and report["heartbeat"]["state"] == heartbeat.OK

"""The web app on gunicorn (`python omniwise.py serve`), with the watchdog each of its processes runs."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from gunicorn.app.base import BaseApplication

from core import clock, logs
from core.config import Settings
from core.health import alerts, heartbeat, liveness

WATCHDOG_EVERY_S = 10.0


def serve(settings: Settings, create_app: Callable[[Settings], Flask], host: str, port: int, workers: int) -> None:
    """Run `create_app(settings)` on gunicorn's threaded workers, each with its own watchdog."""

    def load() -> Flask:
        logs.configure(settings.log_level)
        app = create_app(settings)
        watchdog(settings).start()  # one per gunicorn worker; state changes are atomic in SQLite
        return app

    run_gunicorn(load, host, port, workers, settings.log_level)


def run_gunicorn(load: Callable[[], Callable], host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the WSGI app that `load()` makes in each worker process with the settings `serve` uses; the
    webhook benchmark serves its floor with the very same ones."""

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 4)
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("accesslog", None)
            self.cfg.set("logconfig_dict", logs.gunicorn_logconfig(log_level))

        def load(self) -> Callable:
            return load()

    Server().run()


def watchdog(settings: Settings, every_s: float = WATCHDOG_EVERY_S) -> alerts.DeliveryLoop:
    """The web process's alert loop: notices a dead worker (which cannot report itself) and delivers alerts."""
    return alerts.DeliveryLoop("watchdog", settings.db_path, settings.alert_urls, every_s, clock.now_ms,
                               steps=(heartbeat.check_worker,), first_wait_s=liveness.STALE_AFTER_S)

"""The Omniwise worker process: hot-reloads the strategy and writes a liveness beacon.

Thin on purpose: everything it does lives in core/. Stops cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import schedule

from core import store
from core.config import ConfigError, load_settings
from core.policy_loader import PolicyLoader

log = logging.getLogger("omniwise.worker")
BEACON_INTERVAL_S = 5


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"omniwise worker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = store.connect(settings.db_path)
    loader = PolicyLoader(settings.strategy_path)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def beacon() -> None:
        store.set_meta(db, "worker_beacon_ms", str(int(time.time() * 1000)), int(time.time() * 1000))

    scheduler = schedule.Scheduler()
    scheduler.every(BEACON_INTERVAL_S).seconds.do(beacon)
    scheduler.every(1).seconds.do(loader.refresh)
    beacon()
    loader.refresh()
    log.info("worker started: symbol %s, broker %s, strategy %s", settings.symbol, settings.broker,
             loader.policy.version)
    while not stop.is_set():
        scheduler.run_pending()
        stop.wait(min(1.0, max(0.05, scheduler.idle_seconds or 1.0)))
    log.info("worker stopped")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The webhook's floor: the same gunicorn settings as `omniwise.py serve` and one SQLite insert of a ledger row
a request, on a ledger connection opened as the real one is (WAL, synchronous=FULL), with no Flask, no parsing,
no authentication and no duplicate check. bench_webhook.py measures it in the same run as the real webhook,
so our rate reads as a share of what this machine can do at all.

Run: python bench/webhook_floor.py PORT DATA_DIR WORKERS
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import store  # noqa: E402
from core.webhook import ledger  # noqa: E402
import webserver  # noqa: E402


def floor_app(db_path: Path):
    """A WSGI app that stores each POST's body as a ledger row and answers its id, as the webhook does."""
    local = threading.local()
    numbers = itertools.count()
    lock = threading.Lock()

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"floor"]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode("utf-8", "replace")
        if getattr(local, "db", None) is None:
            local.db = ledger.open_ledger(db_path)
        with lock:
            unique = os.getpid() * 1_000_000_000 + next(numbers)  # the ledger's unique key, without parsing
        with store.transaction(local.db):
            row_id = local.db.execute(
                "INSERT INTO external_signals (received_at_ms, source, signal, signal_time_ms, symbol, remote_addr, "
                "raw_body, outcome) VALUES (?, 'floor', 'BUY', ?, NULL, ?, ?, 'accepted')",
                [time.time_ns() // 1_000_000, unique, environ.get("REMOTE_ADDR", ""), body]).lastrowid
        payload = json.dumps({"id": row_id}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]

    return app


if __name__ == "__main__":
    port, data_dir, workers = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    db_path = data_dir / "omniwise.db"
    db = store.open_db(db_path)
    store.migrate(db)  # before the workers start, as `serve` does
    db.close()
    webserver.run_gunicorn(lambda: floor_app(db_path), "127.0.0.1", port, workers, "WARNING")

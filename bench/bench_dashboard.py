"""Dashboard figures: server time of the page, its fragments and the chart data on a big database.

Goal (issue 6): <= 50 ms each with 1,000,000 candles and 100,000 external signals stored (plus a
decision per candle, 10,000 orders and 1,000 alerts, as a long-running worker leaves them). Requests
go through the Flask test client, logged in as the operator, so the figures are the server's time
(routing, queries, templates) without a network.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import auth, brokers, store  # noqa: E402
from core.config import Settings  # noqa: E402

CANDLES = 1_000_000
SIGNALS = 100_000
ORDERS = 10_000
ALERTS = 1_000
SYMBOL = "BTCUSDT"
START_MS = 1_600_000_020_000 // 60_000 * 60_000
STRATEGY = ("IF EMA(50) CROSSES ABOVE SMA(200) AND RSI(14) < 70 THEN BUY\n"
            "IF EMA(50) CROSSES BELOW SMA(200) THEN SELL\n")
ROUTES = ("/", "/dashboard/summary", "/dashboard/activity", "/api/v1/chart")
GOAL_MS = 50.0


def fill(db) -> None:
    """Write the history a worker running for two years would leave."""
    rng = np.random.default_rng(6)
    close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.001, CANDLES)))
    opens = np.roll(close, 1)
    spread = np.abs(rng.normal(0, 0.001, CANDLES)) * close
    times = START_MS + np.arange(CANDLES, dtype=np.int64) * 60_000
    with db.conn:
        db.conn.executemany(
            "INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((SYMBOL, int(t), o, h, lo, c, 1.5, int(t) + 59_999, 1.5 * c, 10, 0.7, 0.7 * c)
             for t, o, h, lo, c in zip(times.tolist(), opens.tolist(), (close + spread).tolist(),
                                       (close - spread).tolist(), close.tolist())))
        db.conn.executemany(
            "INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, rule_index, "
            "rule_text, strategy_version, reason, created_at_ms) VALUES (?, ?, ?, ?, ?, 'flat', NULL, NULL, "
            "'0123456789ab', 'strategy', ?)",
            ((i + 1, SYMBOL, t, "BUY" if i % 200 == 0 else "HOLD", "long" if i % 200 == 0 else None, t + 60_500)
             for i, t in enumerate(times.tolist())))
        step = CANDLES // ORDERS
        db.conn.executemany(
            "INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, qty, price, quote, "
            "fee_quote, created_at_ms, filled_at_ms) VALUES (?, ?, 'paper', ?, ?, 'filled', 0.01, ?, ?, 0.3, ?, ?)",
            ((i * step + 1, f"omniwise-{i * step + 1}", SYMBOL, "BUY" if i % 2 == 0 else "SELL",
              float(close[i * step]), float(close[i * step]) * 0.01, int(times[i * step]) + 60_500,
              int(times[i * step]) + 120_000) for i in range(ORDERS)))
        every = CANDLES // SIGNALS
        db.conn.executemany(
            "INSERT INTO external_signals(received_at_ms, source, signal, signal_time_ms, symbol, remote_addr, "
            "raw_body, outcome) VALUES (?, ?, ?, ?, ?, '127.0.0.1', '{}', ?)",
            ((int(times[i * every]) + 1_000, "TradingView", "BUY" if i % 3 else "SELL", int(times[i * every]) + 500,
              SYMBOL, "accepted" if i % 10 else "rejected: bad") for i in range(SIGNALS)))
        db.conn.executemany(
            "INSERT INTO alerts(created_at_ms, subject, state, message, next_attempt_ms) "
            "VALUES (?, 'position', ?, ?, ?)",
            ((int(times[i * 1000]), "mismatch", f"HEARTBEAT FAILURE: alert {i}", int(times[i * 1000]))
             for i in range(ALERTS)))
        brokers.save_position(db, brokers.Position("long", 0.01, float(close[-100])), int(times[-1]))
    db.execute("ANALYZE")


def measure(client, path: str, repeat: int = 60) -> list[float]:
    for _ in range(5):  # warm the page cache and the templates
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    return sorted(times)


def main() -> int:
    from omniwise import create_app

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / "strategy.txt").write_text(STRATEGY)
        settings = Settings(data_dir=data_dir, symbol=SYMBOL)
        started = time.perf_counter()
        with store.connect(settings.db_path) as db:
            fill(db)
            auth.set_password(db, "bench", 0)
        print(f"database: {CANDLES:,} candles and decisions, {SIGNALS:,} signals, {ORDERS:,} orders, "
              f"{ALERTS:,} alerts, {settings.db_path.stat().st_size / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - started:.0f} s")
        app = create_app(settings)
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]
        assert client.post("/login", data={"password": "bench", "csrf_token": token}).status_code == 302
        worst = 0.0
        for path in ROUTES:
            times = measure(client, path)
            p50, p95 = statistics.median(times), times[int(len(times) * 0.95)]
            worst = max(worst, p95)
            print(f"GET {path:<22} p50 {p50:6.1f} ms   p95 {p95:6.1f} ms   (goal <= {GOAL_MS:g} ms)")
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/algo").get_data(as_text=True))[1]
        times = []
        for _ in range(30):  # the editor's live validation with its preview over the newest 10,000 candles
            begin = time.perf_counter()
            answer = client.post("/admin/algo/validate", data={"strategy": STRATEGY, "csrf_token": token})
            times.append((time.perf_counter() - begin) * 1e3)
            assert answer.status_code == 200 and 'id="preview"' in answer.get_data(as_text=True)
        times.sort()
        print(f"POST /admin/algo/validate (preview of 10,000 candles) p50 {statistics.median(times):6.1f} ms   "
              f"p95 {times[int(len(times) * 0.95)]:6.1f} ms   (goal <= 200 ms)")
        chart = client.get("/api/v1/chart").json
        print(f"chart: {len(chart['candles'])} candles, lines {[line['name'] for line in chart['lines']]}, "
              f"{len(chart['markers'])} markers")
    return 0 if worst <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())

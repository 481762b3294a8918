"""Alerts from where they start to a real Apprise json:// receiver: a dead worker seen by the web process,
an invalid strategy file, the trade stream down, and the periodic check of orders of unknown outcome."""

from __future__ import annotations

import os
import threading
import time

import pytest

import webserver
import worker as worker_module
from core import store
from core.health import alerts, liveness
from core.config import Settings
from tests.conftest import SHARED_DATA
from tests.processes import AlertSink, query, start_worker, stop_worker, wait_until

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"


@pytest.fixture
def sink():
    receiver = AlertSink()
    yield receiver
    receiver.close()


def write_strategy(data_dir, text: str) -> None:
    tmp = data_dir / "strategy.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, data_dir / "strategy.txt")  # as the editor saves


def test_the_web_process_alerts_a_dead_worker_and_its_return(data_dir, sink, monkeypatch):
    settings = Settings(data_dir=data_dir, alert_urls=(sink.url,))
    db = store.connect(settings.db_path)
    now_ms = time.time_ns() // 1_000_000
    liveness.beat(db, now_ms - 600_000)  # the worker's last beacon, ten minutes ago
    monkeypatch.setattr(liveness, "STALE_AFTER_S", 0)  # the watchdog's wait for a first beacon
    watchdog = webserver.watchdog(settings, every_s=0.05)
    watchdog.start()
    try:
        wait_until(lambda: sink.messages(), timeout_s=20, what="the worker-down alert")
        liveness.beat(db, time.time_ns() // 1_000_000)  # the worker is back
        wait_until(lambda: len(sink.messages()) >= 2, timeout_s=20, what="the recovery alert")
    finally:
        watchdog.stop.set()
        watchdog.join(10)
        db.close()
    first, second = sink.messages()[:2]
    assert first == "WORKER FAILURE: the worker's last beacon was 10 min ago"
    assert second == "WORKER RECOVERED: the worker is running"


def test_an_invalid_strategy_file_is_alerted_and_its_repair_too(data_dir, sink):
    write_strategy(data_dir, "IF CLOSE < 0 THEN BUY\n")
    process = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, symbol="XRPETH",
                           heartbeat_interval=3600, alert_urls=sink.url)
    try:
        wait_until(lambda: query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'strategy'") == [("valid",)],
                   process, timeout_s=30, what="the first strategy loaded")
        write_strategy(data_dir, "IF CLOSE < 0 THEN BUY\nIF RSI(14) > THEN SELL\n")
        wait_until(lambda: any(m.startswith("STRATEGY FAILURE") for m in sink.messages()), process, timeout_s=30,
                   what="the strategy-invalid alert")
        write_strategy(data_dir, "IF CLOSE < 0 THEN SELL\n")
        wait_until(lambda: any(m.startswith("STRATEGY RECOVERED") for m in sink.messages()), process,
                   timeout_s=30, what="the recovery alert")
    finally:
        stop_worker(process)
    strategy = [m for m in sink.messages() if m.startswith("STRATEGY")]
    assert len(strategy) == 2, strategy
    assert "strategy.txt" in strategy[0] and "line 2" in strategy[0]  # the file and the line of the error
    assert strategy[1].startswith("STRATEGY RECOVERED")


def test_a_trade_stream_reported_down_is_alerted_and_so_is_its_return(settings, sink, monkeypatch):
    """The live feed reports its state through the callback the worker gives it; the alert reaches Apprise."""
    live = worker_module.Worker(settings, clock=lambda: 1_800_000_000.0)
    reports = [(False, "the trade stream is down (ConnectionRefusedError: refused)"),
               (True, "the BTCUSDT trade stream is up and its candles are complete")]

    def open_feed(settings, rest, after_ms, stop, on_state=None, warmup_minutes=None):
        def feed():
            try:
                for is_up, reason in reports:
                    on_state(is_up, reason)
            finally:
                stop.set()  # one pass of the feed, however it ends
            yield from ()

        return feed()

    monkeypatch.setattr(worker_module, "open_feed", open_feed)
    try:
        live.trade_live()
        delivered = alerts.deliver_due(live.db, alerts.apprise_notifier((sink.url,)), 1_800_000_000_000)
    finally:
        live.db.close()
    assert delivered == 2
    assert sink.messages() == ["STREAM FAILURE: the trade stream is down (ConnectionRefusedError: refused)",
                               "STREAM RECOVERED: the BTCUSDT trade stream is up and its candles are complete"]


def test_orders_of_unknown_outcome_are_asked_for_every_30_seconds(data_dir):
    from tests.exchange.standin import API_KEY, API_SECRET, start_standin

    standin = start_standin(speed=1)
    settings = Settings(data_dir=data_dir, symbol="XRPETH", broker="binance-spot", binance_api_key=API_KEY,
                        binance_api_secret=API_SECRET, binance_api_url=standin.api_url,
                        binance_futures_url=standin.futures_url, binance_timeout_s=1.0,
                        binance_recv_window_ms=500)
    live = worker_module.Worker(settings)
    try:
        broker = live.trader.broker
        live.rest.sleep = lambda seconds: None  # retries are not slept here
        (job,) = [job for job in live.scheduler.jobs if job.job_func.args == (broker.recover,)]
        assert (job.interval, job.unit) == (30, "seconds")

        now_ms = int(time.time() * 1000)
        price = float(standin.last_price())
        with live.db.conn:
            live.db.execute("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, 0, ?, 0, 0, 0, 0)",
                            ["XRPETH", now_ms - 60_000, price, price, price, price, now_ms - 1])
            decision_id = live.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
                "created_at_ms) VALUES ('XRPETH', ?, 'BUY', 'long', 'flat', 'strategy', ?)",
                [now_ms, now_ms]).lastrowid
            order = broker.submit(decision_id, "BUY", now_ms)
        standin.fail("lost")  # the order executes, its answer is lost, and asking for it fails for now
        standin.fail("500", path="/api/v3/order", method="GET", times=5)
        broker.execute(order)
        assert live.db.execute("SELECT status FROM orders WHERE id = ?", [order["id"]]).fetchone()[0] == "unknown"

        job.run()  # what the scheduler does every 30 s
        assert live.db.execute("SELECT status FROM orders WHERE id = ?", [order["id"]]).fetchone()[0] == "filled"
        assert len(standin.orders_for(order["client_order_id"])) == 1
        assert round((job.next_run - job.last_run).total_seconds()) == 30
    finally:
        live.db.close()
        standin.close()

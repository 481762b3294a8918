"""End to end: worker.py on Binance's stream and spot broker, against the exchange stand-in, faults included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from decimal import ROUND_DOWN, Decimal

import pytest

from core.health import status
from core.candles import Candle
from core.config import load_settings
from tests.exchange.standin import API_KEY, API_SECRET, DAY_START_MS, start_standin
from tests.processes import ROOT, STARTED, query, stop_worker, wait_until

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
STRATEGY = "IF CLOSE > OPEN THEN BUY\nIF CLOSE < OPEN THEN SELL\n"


def worker_env(data_dir, standin, **settings) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMNIWISE_DATA_DIR": str(data_dir),
            "OMNIWISE_LOG_LEVEL": "WARNING", "OMNIWISE_FEED": "binance", "OMNIWISE_BROKER": "binance-spot",
            "OMNIWISE_SYMBOL": "XRPETH", "OMNIWISE_WARMUP_HOURS": "1", "OMNIWISE_BINANCE_RECV_WINDOW": "1000",
            "OMNIWISE_BINANCE_TIMEOUT": "1", "OMNIWISE_BINANCE_API_URL": standin.api_url,
            "OMNIWISE_BINANCE_STREAM_URL": standin.stream_url, "BINANCE_API_KEY": API_KEY,
            "BINANCE_API_SECRET": API_SECRET, **{f"OMNIWISE_{k.upper()}": str(v) for k, v in settings.items()}}


def start_worker(data_dir, standin, **settings) -> subprocess.Popen:
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT,
                              env=worker_env(data_dir, standin, **settings), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    STARTED.append(worker)  # the reaper kills it should the test fail before stopping it
    return worker


def newest_candle_ms(data_dir) -> int:
    return (query(data_dir, "SELECT max(open_time_ms) FROM candles") or [(None,)])[0][0] or 0


def kline(standin, open_ms: int) -> tuple:
    row = standin.kline_row(open_ms)
    return Candle(int(row[0]), *map(float, row[1:6]), int(row[6]), float(row[7]), int(row[8]), float(row[9]),
                  float(row[10]))


def text(value: Decimal) -> str:
    plain = format(value, "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


@pytest.fixture
def standin():
    exchange = start_standin(start_ms=DAY_START_MS + 3 * HOUR_MS, speed=300)
    yield exchange
    exchange.close()


def test_worker_trades_the_stream_with_klines_equal_candles_and_one_order_per_decision_through_faults(
        data_dir, standin):
    (data_dir / "strategy.txt").write_text(STRATEGY)
    # The first order sends meet, in turn: a lost answer, a 503 "execution status unknown" (executed), a
    # timeout (executed 2.5 s later, long after the worker gave up waiting), a 429.
    standin.fail("lost")
    standin.fail("503")
    standin.fail("timeout", hold_s=2.5)
    standin.fail("429", retry_after_s=1)
    worker = start_worker(data_dir, standin)
    wait_until(lambda: newest_candle_ms(data_dir) >= DAY_START_MS + 3 * HOUR_MS + 15 * MINUTE_MS, worker,
               timeout_s=30, what="a quarter of an hour traded")
    subscribe = ("userDataStream.subscribe.signature", 200)
    assert standin.ws_api_requests.count(subscribe) == 1  # the spot user data stream, over the WebSocket API
    assert standin.drop_streams() == 2  # the kline stream and the WebSocket API connection
    wait_until(lambda: standin.ws_api_requests.count(subscribe) == 2, worker, timeout_s=30,
               what="the user data stream subscribed again")
    wait_until(lambda: newest_candle_ms(data_dir) >= DAY_START_MS + 3 * HOUR_MS + 30 * MINUTE_MS, worker,
               timeout_s=30, what="trading after the disconnect")
    skewed_at = len(standin.requests)
    standin.skew_clock(20_000)  # Binance's clock jumps: the next signed request gets -1021
    wait_until(lambda: ("POST", "/api/v3/order", 200) in standin.requests[skewed_at:], worker, timeout_s=30,
               what="an order after the clock jump")
    # The timed-out order executed late: the worker finds it, then trades on (through the 429).
    wait_until(lambda: not standin.faults and not query(data_dir, "SELECT 1 FROM orders WHERE status IN "
                                                                  "('unknown', 'sending')"),
               worker, timeout_s=60, what="every order settled and every fault met")
    wait_until(lambda: newest_candle_ms(data_dir) >= DAY_START_MS + 3 * HOUR_MS + 45 * MINUTE_MS, worker,
               timeout_s=30, what="trading after the clock jump")
    output = stop_worker(worker)

    # Candles: every minute from the warm-up on, each exactly Binance's kline, across the disconnect.
    rows = query(data_dir, "SELECT open_time_ms, open, high, low, close, volume, close_time_ms, quote_volume, "
                           "trades, taker_buy_base, taker_buy_quote FROM candles ORDER BY open_time_ms")
    opens = [row[0] for row in rows]
    assert opens == list(range(opens[0], opens[-1] + MINUTE_MS, MINUTE_MS))
    # an hour of warm-up before the market's time when the worker asked for it (at 300x, a slow start under load
    # moves that time on by minutes)
    assert opens[0] <= standin.klines_asked_at_ms[0] - HOUR_MS + 2 * MINUTE_MS
    assert [Candle(*row) for row in rows] == [kline(standin, t) for t in opens]
    assert [r[:2] for r in standin.requests].count(("GET", "/api/v3/klines")) >= 2  # the start, the gap

    # Orders: one per decision, with the decision's client id, whatever the faults.
    assert standin.faults == []
    # Asked for by client id (-2013: not there yet, the timed-out order); -1021 after the clock jump.
    assert -2013 in standin.error_codes and -1021 in standin.error_codes
    orders = query(data_dir, "SELECT o.client_order_id, o.decision_id, o.status, o.exchange_order_id, o.side "
                             "FROM orders o ORDER BY o.id")
    assert len(orders) >= 4 and {o[4] for o in orders} == {"BUY", "SELL"}
    (prefix,) = query(data_dir, "SELECT value FROM meta WHERE key = 'binance_client_id_prefix'")[0]
    assert all(client_id == f"{prefix}-{decision_id}" for client_id, decision_id, *_ in orders)
    assert {o[2] for o in orders} <= {"filled", "skipped"}
    filled = {o[0]: o[3] for o in orders if o[2] == "filled"}
    sent = Counter(order["clientOrderId"] for order in standin.orders)
    assert set(sent) == set(filled) and set(sent.values()) == {1}
    assert all(filled[o["clientOrderId"]] == str(o["orderId"]) for o in standin.orders)

    # Sizes: a BUY spends all the free ETH, a SELL sells the XRP in whole steps (the filter's step size).
    eth, xrp = Decimal(1), Decimal(0)
    for order in standin.orders:
        if order["side"] == "BUY":
            assert order["params"]["quoteOrderQty"] == text(eth.quantize(Decimal("1e-8"), ROUND_DOWN))
            eth -= Decimal(order["cummulativeQuoteQty"])
            xrp += Decimal(order["executedQty"]) - Decimal(order["fills"][0]["commission"])
        else:
            assert order["params"]["quantity"] == str(int(xrp))
            eth += Decimal(order["cummulativeQuoteQty"]) - Decimal(order["fills"][0]["commission"])
            xrp -= Decimal(order["executedQty"])

    # One outcome was unknown for a while: alerted, then settled; the keys never show.
    unknown, settled = [m for (m,) in query(data_dir, "SELECT message FROM alerts WHERE subject = 'orders'")]
    assert "is unknown" in unknown and "ORDER SETTLED" in settled and settled.endswith("is filled at Binance")
    assert API_KEY not in output and API_SECRET not in output
    report = status.status_report(_db(data_dir), load_settings(worker_env(data_dir, standin), env_file=None), 0)
    assert (report["mode"], report["broker"]) == ("testnet", "binance-spot")


def test_restart_between_order_sent_and_confirmed_recovers_the_order_by_client_id(data_dir, standin):
    (data_dir / "strategy.txt").write_text(STRATEGY)
    standin.fail("lost", hold_s=60)  # Binance fills the first order; its answer hangs
    worker = start_worker(data_dir, standin, binance_timeout=30)
    wait_until(lambda: standin.orders, worker, timeout_s=30, what="the first order at the exchange")
    (sending,) = wait_until(lambda: query(data_dir, "SELECT id, client_order_id, status FROM orders"), worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    order_id, client_id, state = sending
    assert state == "sending" and [o["clientOrderId"] for o in standin.orders] == [client_id]

    worker = start_worker(data_dir, standin)
    wait_until(lambda: query(data_dir, "SELECT status FROM orders WHERE id = ?", order_id) == [("filled",)],
               worker, timeout_s=30, what="the order settled by its client id")
    wait_until(lambda: len(standin.orders) >= 3, worker, timeout_s=30, what="trading on after the restart")
    stop_worker(worker)
    (exchange_order,) = standin.orders_for(client_id)
    assert query(data_dir, "SELECT exchange_order_id, qty FROM orders WHERE id = ?", order_id) == \
        [(str(exchange_order["orderId"]), float(exchange_order["executedQty"]))]
    assert set(Counter(o["clientOrderId"] for o in standin.orders).values()) == {1}
    assert query(data_dir, "SELECT message FROM alerts WHERE subject = 'orders'") == []


def test_worker_refuses_live_trading_without_the_explicit_opt_in(data_dir, standin):
    worker = start_worker(data_dir, standin, testnet="no")
    output, _ = worker.communicate(timeout=20)
    assert worker.returncode == 2
    assert "OMNIWISE_LIVE_TRADING=yes-real-money" in output
    assert standin.requests == []


def test_worker_refuses_a_binance_broker_with_the_replay_feed(data_dir, standin):
    worker = start_worker(data_dir, standin, feed="replay")
    output, _ = worker.communicate(timeout=20)
    assert worker.returncode == 2 and "needs OMNIWISE_FEED=binance" in output
    assert standin.requests == [] and standin.orders == []


def _db(data_dir):
    from core import store

    return store.open_db(data_dir / "omniwise.db")

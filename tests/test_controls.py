"""Pause, resume and flatten: recorded in SQLite, alerted, obeyed by the trader and the worker (clock injected)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from core import account, controls, store
from core.brokers import PaperBroker
from core.candles import Tick
from core.health import alerts
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.test_trader import MINUTE, T0, candle

NOW_MS = 1_700_000_000_000


@pytest.fixture
def make_trader(db, data_dir):
    def make(strategy: str, database=None):
        (data_dir / "strategy.txt").write_text(strategy)
        database = database or db
        broker = PaperBroker(database, "XRPETH", start_balance=1000.0, fee_rate=0.001)
        return Trader(database, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker,
                      clock=lambda: NOW_MS / 1000)
    return make


def orders(db):
    return db.execute("SELECT side, status, price FROM orders ORDER BY id").fetchall()


def test_pause_and_resume_are_recorded_once_with_their_time_and_alerted(db):
    assert controls.trading_state(db) == controls.TradingState(False, None)
    assert controls.pause(db, NOW_MS) is True
    assert controls.pause(db, NOW_MS + 5) is False  # already paused: nothing new recorded or alerted
    assert controls.trading_state(db) == controls.TradingState(True, NOW_MS)
    assert controls.resume(db, NOW_MS + 60_000) is True
    assert controls.trading_state(db) == controls.TradingState(False, NOW_MS + 60_000)
    assert [(a["state"], a["created_at_ms"]) for a in alerts.recent(db)] == [("resumed", NOW_MS + 60_000),
                                                                             ("paused", NOW_MS)]
    assert [h["action"] for h in controls.history(db)] == ["resume", "pause"]


def test_paused_trading_makes_no_entry_but_still_exits(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\nIF CLOSE < 5 THEN SELL\n")
    trader.on_candle(candle(0, 11))  # BUY decided while trading
    trader.on_candle(candle(1, 12, open_=11.5))  # filled: long
    controls.pause(db, NOW_MS)
    trader.on_candle(candle(2, 4))  # SELL still acts while paused
    trader.on_candle(candle(3, 11, open_=4.5))  # filled flat; then BUY is decided but not ordered
    trader.on_candle(candle(4, 12))
    assert orders(db) == [("BUY", "filled", 11.5), ("SELL", "filled", 4.5)]
    assert trader.broker.position().side == "flat"
    controls.resume(db, NOW_MS)
    trader.on_candle(candle(5, 13))  # the rule is still true: the first candle after the resume enters
    assert orders(db)[-1] == ("BUY", "pending", None)


def test_a_pause_survives_a_restart_of_the_worker(db, make_trader, settings):
    controls.pause(db, NOW_MS)
    restarted = store.connect(settings.db_path)  # another process, later
    try:
        trader = make_trader("IF CLOSE > 10 THEN BUY\n", database=restarted)
        trader.on_candle(candle(0, 11))
        assert orders(restarted) == [] and controls.is_paused(restarted)
    finally:
        restarted.close()


def test_flatten_sells_at_once_at_the_latest_trade_price_as_a_manual_exit(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\n")
    trader.on_candle(candle(0, 11))
    trader.on_candle(candle(1, 12, open_=11.5))
    trader.on_tick(Tick(price=12.25, qty=1.0, time_ms=T0 + 2 * MINUTE + 10_000, agg_id=1, first_trade_id=1,
                        last_trade_id=1, is_buyer_maker=False))
    result = trader.flatten()
    qty = 1000 / 11.5 * 0.999
    assert result == f"SELL {qty:.8g} XRPETH at 12.25"
    assert orders(db) == [("BUY", "filled", 11.5), ("SELL", "filled", 12.25)]
    assert db.execute("SELECT reason, position_before FROM decisions ORDER BY id DESC LIMIT 1").fetchone() == \
        ("manual", "long")
    (trip,) = account.round_trips(account.filled_orders(db, "XRPETH"))
    assert trip.exit_reason == "manual" and trip.pnl == pytest.approx(qty * 12.25 * 0.999 - 1000)
    assert trader.flatten() == "nothing to close, the position is flat"


def test_flatten_cancels_an_entry_waiting_for_the_next_price(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\n")
    trader.on_candle(candle(0, 11))  # BUY waits for the next open
    assert trader.flatten() == "nothing to close, the position is flat; 1 waiting entry cancelled"
    trader.on_candle(candle(1, 12, open_=11.5))  # the next open fills nothing; the rule then orders again
    assert orders(db)[0] == ("BUY", "cancelled", None)


def test_the_worker_carries_out_a_flatten_request_records_and_alerts_it(settings, db, monkeypatch):
    from worker import CONTROLS_EVERY_S, Worker

    settings = dataclasses.replace(settings, symbol="XRPETH")
    (settings.strategy_path).write_text("IF CLOSE > 10 THEN BUY\n")
    worker = Worker(settings, clock=lambda: NOW_MS / 1000)
    try:
        worker.trader.on_candle(candle(0, 11))
        worker.trader.on_candle(candle(1, 12, open_=11.5))
        request_id = controls.request_flatten(db, NOW_MS)
        assert controls.request_flatten(db, NOW_MS + 1) == request_id  # a double click is one request
        assert controls.trading_state(db).flatten_requested_ms == NOW_MS
        worker.obey_operator()
        (row,) = controls.history(db)
        assert (row["done_at_ms"], row["result"].split(" at ")[1]) == (NOW_MS, "12")
        assert alerts.recent(db, 1)[0]["message"].startswith("FLATTEN by the operator: SELL ")
        assert worker.trader.broker.position().side == "flat"
        assert controls.trading_state(db).flatten_requested_ms is None
        assert controls.last_flatten(db) == {"requested_at_ms": NOW_MS, "done_at_ms": NOW_MS, "result": row["result"]}
        # checked every second, so a flatten waits at most that long
        assert CONTROLS_EVERY_S == 1 and any(job.job_func.args == (worker.obey_operator,) and job.interval == 1
                                             and job.unit == "seconds" for job in worker.scheduler.jobs)
    finally:
        worker.db.close()


def test_flatten_of_a_futures_short_buys_it_back_reduce_only_at_the_exchange(db, data_dir):
    # The real python-binance client against the exchange stand-in: a flatten is the target "flat": the BUY that
    # closes the short is reduce-only, never one that would turn the short into a long.
    from core.binance.futures import BinanceFuturesBroker
    from core.binance.rest import FUTURES
    from tests.test_binance_brokers import broker_for
    from tests.exchange.standin import start_standin

    exchange = start_standin(speed=1)
    try:
        exchange.futures_amount, exchange.futures_entry = -50, exchange.last_price()
        broker = broker_for(exchange, db, BinanceFuturesBroker, FUTURES)
        (data_dir / "strategy.txt").write_text("IF CLOSE < 0 THEN BUY\n")
        trader = Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: NOW_MS / 1000)
        assert trader.flatten().startswith("BUY 50 XRPETH at ")
        (client_id,) = db.execute("SELECT client_order_id FROM orders").fetchone()
        (sent,) = exchange.orders_for(client_id)
        assert (sent["side"], sent["params"]["quantity"], sent["params"]["reduceOnly"]) == ("BUY", "50", "true")
        assert broker.position().side == "flat"
    finally:
        exchange.close()


@pytest.fixture
def exchange():
    from tests.exchange.standin import start_standin

    standin = start_standin(speed=1, balances={"ETH": "1", "XRP": "500"})
    yield standin
    standin.close()


def exchange_trader(exchange, db, data_dir, market: str):
    from core.binance.futures import BinanceFuturesBroker
    from core.binance.rest import FUTURES, SPOT
    from core.binance.spot import BinanceSpotBroker
    from tests.test_binance_brokers import broker_for

    broker = (broker_for(exchange, db, BinanceFuturesBroker, FUTURES) if market == "futures"
              else broker_for(exchange, db, BinanceSpotBroker, SPOT))
    (data_dir / "strategy.txt").write_text("IF CLOSE < 0 THEN BUY\n")
    return Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: NOW_MS / 1000)


def record_sell(db, broker) -> dict:
    """A rule's SELL decision and its order, recorded as the trader does (now: the broker's clock is real)."""
    import time

    now_ms = int(time.time() * 1000)
    with store.transaction(db):
        decision_id = db.execute("INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, "
                                 "reason, created_at_ms) VALUES ('XRPETH', 0, 'SELL', 'flat', 'long', 'strategy', ?)",
                                 [now_ms]).lastrowid
        return broker.submit(decision_id, "SELL", now_ms)


@pytest.mark.parametrize("market, path", [("spot", "/api/v3/order"), ("futures", "/fapi/v1/order")])
def test_flatten_acts_on_the_exchanges_position_while_an_earlier_orders_outcome_is_unknown(
        exchange, db, data_dir, market, path):
    exchange.futures_amount, exchange.futures_entry = 50, exchange.last_price()
    trader = exchange_trader(exchange, db, data_dir, market)
    trader.broker.position()
    exchange.fail("500", path=path)  # Binance: a 5xx "could have been a success": never sent again
    sell = record_sell(db, trader.broker)
    trader.broker.execute(sell)
    assert db.execute("SELECT status FROM orders WHERE id = ?", [sell["id"]]).fetchone() == ("unknown",)
    result = trader.flatten()
    (flatten_client_id,) = db.execute("SELECT client_order_id FROM orders ORDER BY id DESC LIMIT 1").fetchone()
    (sent,) = exchange.orders_for(flatten_client_id)
    price = Decimal(sent.get("cummulativeQuoteQty") or sent["cumQuote"]) / Decimal(sent["executedQty"])
    qty = "50" if market == "futures" else "500"  # the position, or the whole free base balance
    assert result == f"SELL {qty} XRPETH at {float(price):.8g}"
    assert sent["side"] == "SELL" and sent["params"]["quantity"] == qty
    if market == "futures":
        assert sent["params"]["reduceOnly"] == "true"
    assert trader.broker.position().side == "flat"


class Crash(BaseException):
    """The worker dies here (nothing catches a BaseException on the way up)."""


def test_a_flatten_a_crash_interrupted_reports_its_real_fill_when_the_worker_is_back(exchange, db, data_dir):
    trader = exchange_trader(exchange, db, data_dir, "spot")
    request_id = controls.request_flatten(db, NOW_MS)
    call = trader.broker.rest.call

    def dies_after_sending(method, *args, **kwargs):
        answer = call(method, *args, **kwargs)
        if method == "create_order":
            raise Crash  # sent and executed; the answer is never written down
        return answer

    trader.broker.rest.call = dies_after_sending
    with pytest.raises(Crash):
        controls.carry_out_flatten(db, trader, NOW_MS)
    assert controls.waiting_flatten(db) == request_id
    assert db.execute("SELECT status FROM orders").fetchall() == [("sending",)]

    back = exchange_trader(exchange, db, data_dir, "spot")  # the worker started again
    back.resume()  # settles the order from Binance's answer for its client id
    result = controls.carry_out_flatten(db, back, NOW_MS + 5_000)
    (sent,) = exchange.orders
    price = Decimal(sent["cummulativeQuoteQty"]) / Decimal(sent["executedQty"])
    assert result == (f"before the worker stopped: SELL 500 XRPETH at {float(price):.8g}; "
                      "now: nothing to close, the position is flat")
    assert controls.waiting_flatten(db) is None and controls.last_flatten(db)["result"] == result
    assert len(exchange.orders) == 1

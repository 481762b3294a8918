"""Risk statements on Binance: SIZE, one market order per risk exit, and (binance-futures) the stop kept on the
exchange: a Close-All STOP_MARKET in the Algo Service at the effective stop level, moved when the level changes
by 0.1 % or more, cancelled when flat, and recorded once when Binance triggers it. Through python-binance
against the stand-in (tests/exchange/standin.py)."""

from __future__ import annotations

import json
import time
from decimal import ROUND_DOWN, Decimal

import pytest

from core import store
from core.binance.futures import BinanceFuturesBroker
from core.binance.stops import STOP_KEY
from core.binance.rest import FUTURES, BinanceRest, ExchangeRejected
from core.candles import Candle, Tick
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.exchange.standin import start_standin
from tests.test_binance_brokers import SYMBOL, place, settings_for

TICK = Decimal("0.00000001")  # the stand-in's PRICE_FILTER tickSize


@pytest.fixture
def standin():
    exchange = start_standin(speed=1)  # real speed: the price holds still during a test
    yield exchange
    exchange.close()


def futures_broker(standin, db) -> BinanceFuturesBroker:
    rest = BinanceRest(settings_for(standin), FUTURES, sleep=lambda s: None, random=lambda: 0.5)
    return BinanceFuturesBroker(db, SYMBOL, rest)


def floor_tick(value: Decimal) -> Decimal:
    return value.quantize(TICK, rounding=ROUND_DOWN)


def live_stops(standin) -> list[dict]:
    return [a for a in standin.algo_orders if a["algoStatus"] == "NEW"]


def hold_long(standin, qty: int = 50) -> Decimal:
    price = standin.last_price()
    standin.futures_amount, standin.futures_entry = Decimal(qty), price
    return price


# -- the stand-in models Binance's conditional orders ---------------------------------------------------

def test_standin_takes_stops_only_through_the_algo_service_and_never_one_that_would_trigger_at_once(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin)
    with pytest.raises(Exception) as old_endpoint:  # python-binance's own request, past its routing to algoOrder
        broker.rest.client._request_futures_api("post", "order", True, data={
            "symbol": SYMBOL, "side": "SELL", "type": "STOP_MARKET", "stopPrice": str(price * Decimal("0.9")),
            "closePosition": "true", "newClientOrderId": "x-1"})
    assert old_endpoint.value.code == -4120
    with pytest.raises(ExchangeRejected) as at_once:
        broker.rest.call("futures_create_algo_order", symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                         triggerPrice=str(price * Decimal("1.01")), closePosition="true", clientAlgoId="x-2")
    assert at_once.value.code == -2021
    with pytest.raises(ExchangeRejected) as with_quantity:
        broker.rest.call("futures_create_algo_order", symbol=SYMBOL, side="SELL", type="STOP_MARKET", quantity="5",
                         triggerPrice=str(price * Decimal("0.9")), closePosition="true", clientAlgoId="x-3")
    assert with_quantity.value.code == -1106
    assert standin.algo_orders == []


def test_standin_triggers_a_close_all_stop_on_its_trade_price_and_expires_it_when_flat(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin, 50)
    trigger = floor_tick(price * Decimal("0.99"))
    stop = dict(symbol=SYMBOL, side="SELL", type="STOP_MARKET", triggerPrice=str(trigger), closePosition="true")
    broker.rest.call("futures_create_algo_order", clientAlgoId="a-1", **stop)
    with pytest.raises(ExchangeRejected) as second:
        broker.rest.call("futures_create_algo_order", clientAlgoId="a-2", **stop)
    assert second.value.code == -4130 and len(live_stops(standin)) == 1  # one Close-All stop per direction
    standin.trigger_stops(trigger + TICK)  # above the trigger: nothing
    assert standin.futures_amount == 50
    standin.trigger_stops(trigger - TICK)
    assert standin.futures_amount == 0
    (algo,) = standin.algo_orders
    (sold,) = [o for o in standin.orders if o["orderId"] == int(algo["actualOrderId"])]
    assert (algo["algoStatus"], sold["origType"], sold["executedQty"]) == ("FINISHED", "STOP_MARKET", "50")
    assert Decimal(sold["avgPrice"]) == trigger - TICK  # at the trade that reached it
    # A new position and stop, then the position closed by a market order: the Close-All stop expires.
    hold_long(standin, 20)
    broker.rest.call("futures_create_algo_order", symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                     triggerPrice=str(trigger), closePosition="true", clientAlgoId="a-3")
    place(broker, db, "SELL")
    assert standin.algo_orders[-1]["algoStatus"] in ("EXPIRED", "CANCELED") and live_stops(standin) == []


# -- the broker keeps the stop ------------------------------------------------------------------------

def test_the_stop_is_placed_moved_only_by_a_rise_of_a_tenth_of_a_percent_and_cancelled_when_flat(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin)
    level = float(price) * 0.98
    broker.keep_stop(level, "stop_loss")
    (stop,) = live_stops(standin)
    assert (stop["orderType"], stop["side"], stop["closePosition"], stop["workingType"]) == (
        "STOP_MARKET", "SELL", True, "CONTRACT_PRICE")
    assert Decimal(stop["triggerPrice"]) == floor_tick(Decimal(repr(level)))
    assert stop["clientAlgoId"].startswith(broker.prefix + "-s")
    requests = len(standin.requests)
    broker.keep_stop(level * 1.0009, "trailing_stop")  # up by 0.09 %: left where it is
    assert len(standin.requests) == requests and live_stops(standin) == [stop]
    broker.keep_stop(level * 1.001, "trailing_stop")  # up by 0.1 %: moved
    (moved,) = live_stops(standin)
    assert moved is not stop and Decimal(moved["triggerPrice"]) == floor_tick(Decimal(repr(level * 1.001)))
    assert stop["algoStatus"] == "CANCELED"
    broker.keep_stop(None, None)  # flat
    assert live_stops(standin) == [] and store.get_meta(db, STOP_KEY) == ""


def test_a_stop_whose_answer_was_lost_is_never_placed_twice_and_is_still_cancelled_by_its_id(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin)
    standin.fail("lost", "/fapi/v1/algoOrder")  # placed at Binance, the answer never arrives
    broker.keep_stop(float(price) * 0.98, "stop_loss")
    broker.keep_stop(float(price) * 0.98, "stop_loss")
    assert len(standin.algo_orders) == 1 and len(live_stops(standin)) == 1
    assert json.loads(store.get_meta(db, STOP_KEY))["client_id"] == standin.algo_orders[0]["clientAlgoId"]
    broker.keep_stop(None, None)
    assert live_stops(standin) == [] and standin.algo_orders[0]["algoStatus"] == "CANCELED"


def test_a_stop_triggered_on_binance_is_reported_once_with_its_fill_and_reason(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin, 50)
    broker.keep_stop(float(price) * 0.99, "trailing_stop")
    assert broker.stop_exit() is None  # waiting
    (stop,) = live_stops(standin)
    fill_price = Decimal(stop["triggerPrice"]) - 3 * TICK
    standin.trigger_stops(fill_price)
    fill = broker.stop_exit()
    assert (fill["reason"], fill["qty"], fill["client_order_id"]) == ("trailing_stop", 50.0, stop["clientAlgoId"])
    assert fill["price"] == pytest.approx(float(fill_price), rel=1e-12)
    assert broker.stop_exit() is None and broker.position().side == "flat"


def test_a_sell_after_binance_triggered_the_stop_sends_nothing_and_takes_the_stops_fill(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin, 50)
    broker.keep_stop(float(price) * 0.99, "stop_loss")
    (stop,) = live_stops(standin)
    standin.trigger_stops(Decimal(stop["triggerPrice"]))
    orders_before = len(standin.orders)
    sell = place(broker, db, "SELL")  # the worker's own exit on the same trade
    assert len(standin.orders) == orders_before  # no second exit
    row = db.execute("SELECT status, qty, exchange_order_id FROM orders WHERE id = ?", [sell["id"]]).fetchone()
    assert row == ("filled", 50.0, stop["actualOrderId"])


def test_a_sell_while_the_stop_waits_cancels_it_first(standin, db):
    broker = futures_broker(standin, db)
    price = hold_long(standin, 50)
    broker.keep_stop(float(price) * 0.99, "stop_loss")
    sell = place(broker, db, "SELL")
    (stop,) = standin.algo_orders
    assert stop["algoStatus"] == "CANCELED" and standin.futures_amount == 0
    assert standin.orders_for(sell["client_order_id"])[0]["params"]["reduceOnly"] == "true"


# -- the trader: levels -> the stop on Binance -> the exit recorded once --------------------------------

MINUTE = 60_000


def candle(open_time_ms: int, price: float, high: float | None = None) -> Candle:
    return Candle(open_time_ms, price, high or price, price, price, 1.0, open_time_ms + MINUTE - 1, price, 1, 0.5,
                  0.5 * price)


@pytest.fixture
def futures_trader(standin, db, data_dir):
    def make(strategy: str) -> Trader:
        (data_dir / "strategy.txt").write_text(strategy)
        broker = futures_broker(standin, db)
        return Trader(db, SYMBOL, PolicyLoader(data_dir / "strategy.txt"), broker, clock=time.time)
    return make


def test_trader_keeps_the_trailing_stop_on_binance_and_records_its_exit_once(standin, db, futures_trader):
    # A long of 50 at the current price (bought earlier); the rules never trade (XRPETH is far below 1000).
    entry = float(hold_long(standin, 50))
    trader = futures_trader("IF CLOSE > 1000 THEN BUY\nSTOP LOSS 2%\nTRAILING STOP 1%\n")
    trader.resume()
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    trader.on_candle(candle(t0, entry))  # adopted: stop loss 0.98 E, trailing 0.99 E (peak E)
    (first,) = live_stops(standin)
    assert Decimal(first["triggerPrice"]) == floor_tick(Decimal(repr(entry * (1 - 0.01))))
    trader.on_candle(candle(t0 + MINUTE, entry, high=entry * 1.0005))  # trailing up 0.05 %: not moved
    assert live_stops(standin) == [first]
    trader.on_candle(candle(t0 + 2 * MINUTE, entry, high=entry * 1.002))  # up 0.2 %: moved
    (second,) = live_stops(standin)
    assert first["algoStatus"] == "CANCELED"
    assert Decimal(second["triggerPrice"]) == floor_tick(Decimal(repr(entry * 1.002 * (1 - 0.01))))
    # The worker is away; Binance triggers the stop on a trade below it.
    fill_price = Decimal(second["triggerPrice"]) - TICK
    standin.trigger_stops(fill_price)
    orders_at_binance = len(standin.orders)
    trader.on_candle(candle(t0 + 3 * MINUTE, entry * 0.985))
    trader.on_candle(candle(t0 + 4 * MINUTE, entry * 0.985))
    assert len(standin.orders) == orders_at_binance  # no second exit sent
    rows = db.execute("SELECT d.reason, d.rule_text, o.client_order_id, o.status, o.qty, o.price FROM decisions d "
                      "JOIN orders o ON o.decision_id = d.id").fetchall()
    assert len(rows) == 1
    reason, rule_text, client_id, status, qty, price = rows[0]
    assert (reason, rule_text, client_id, status, qty) == ("trailing_stop", "TRAILING STOP 1%",
                                                           second["clientAlgoId"], "filled", 50.0)
    assert price == pytest.approx(float(fill_price), rel=1e-12)
    assert not trader.open_trade.is_open
    (message,) = [m for (m,) in db.execute("SELECT message FROM alerts WHERE subject = 'trade'")]
    assert "exited by trailing stop" in message and "stop kept on the exchange" in message
    assert live_stops(standin) == [] and store.get_meta(db, STOP_KEY) == ""


def test_trader_tick_on_the_trade_that_triggered_binances_stop_takes_the_stops_fill_and_sends_nothing(
        standin, db, futures_trader):
    entry = float(hold_long(standin, 50))
    trader = futures_trader("IF CLOSE > 1000 THEN BUY\nSTOP LOSS 1%\n")
    trader.resume()
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    trader.on_candle(candle(t0, entry))
    (stop,) = live_stops(standin)
    price = Decimal(stop["triggerPrice"]) - TICK
    standin.trigger_stops(price)  # Binance's matching engine acts on the trade first ...
    orders_at_binance = len(standin.orders)
    trader.on_tick(Tick(float(price), 1.0, t0 + MINUTE + 1_000, 1, 1, 1, False))  # ... then the worker sees it
    assert len(standin.orders) == orders_at_binance
    ((decision_id, reason, client_id, status, qty, exchange_order_id),) = db.execute(
        "SELECT d.id, d.reason, o.client_order_id, o.status, o.qty, o.exchange_order_id FROM decisions d "
        "JOIN orders o ON o.decision_id = d.id").fetchall()
    assert (reason, client_id, status, qty) == ("stop_loss", f"{trader.broker.prefix}-{decision_id}", "filled", 50.0)
    assert exchange_order_id == stop["actualOrderId"] and not trader.open_trade.is_open


def test_trader_risk_exit_on_binance_futures_is_one_reduce_only_market_order_from_the_exit_decision(
        standin, db, futures_trader):
    entry = float(hold_long(standin, 50))
    trader = futures_trader("IF CLOSE > 1000 THEN BUY\nTAKE PROFIT 0.5%\n")
    trader.resume()
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    trader.on_candle(candle(t0, entry))
    assert live_stops(standin) == []  # no stop statement: nothing kept on Binance
    trader.on_candle(candle(t0 + MINUTE, entry, high=entry * 1.006))  # a klines minute through the target
    (decision_id, reason, client_id) = db.execute(
        "SELECT d.id, d.reason, o.client_order_id FROM decisions d JOIN orders o ON o.decision_id = d.id").fetchone()
    assert reason == "take_profit" and client_id == f"{trader.broker.prefix}-{decision_id}"
    (sent,) = standin.orders_for(client_id)
    assert (sent["side"], sent["type"], sent["params"]["reduceOnly"], sent["params"]["quantity"]) == (
        "SELL", "MARKET", "true", "50")
    assert standin.futures_amount == 0


def test_trader_entry_on_binance_futures_spends_its_size_share_and_places_the_stop_from_the_fill(
        standin, db, futures_trader):
    price = standin.last_price()
    trader = futures_trader("IF CLOSE > 0 THEN BUY\nSTOP LOSS 2%\nSIZE 25%\n")
    trader.resume()
    t0 = (int(time.time() * 1000) // MINUTE - 10) * MINUTE
    trader.on_candle(candle(t0, float(price)))  # BUY
    (buy,) = [o for o in standin.orders if o["market"] == "futures"]
    # 10 ETH available, SIZE 25 %, leverage 1, step 1 XRP: floor(2.5 / price)
    assert buy["params"]["quantity"] == str(int(Decimal("2.5") / price))
    fill = float(Decimal(buy["avgPrice"]))
    assert trader.open_trade.entry_price == pytest.approx(fill, rel=1e-12)
    (stop,) = live_stops(standin)
    assert Decimal(stop["triggerPrice"]) == floor_tick(Decimal(repr(fill * (1 - 0.02))))


# -- end to end: worker.py on binance-futures, killed while Binance holds its stop -----------------------

def test_worker_stop_holds_on_binance_while_the_worker_is_down_and_its_exit_is_recorded_once(data_dir):
    from tests.exchange.standin import DAY_START_MS
    from tests.processes import query, stop_worker, wait_until
    from tests.test_binance_worker import start_worker

    exchange = start_standin(start_ms=DAY_START_MS + 3 * 3_600_000, speed=300)
    try:
        entry = hold_long(exchange, 50)  # bought earlier, by hand or by an earlier run
        (data_dir / "strategy.txt").write_text("IF CLOSE > 1000 THEN BUY\nSTOP LOSS 1%\n")
        settings = {"broker": "binance-futures", "binance_futures_url": exchange.futures_url,
                    "binance_futures_stream_url": exchange.futures_stream_url}
        worker = start_worker(data_dir, exchange, **settings)
        try:
            (stop,) = wait_until(lambda: live_stops(exchange), worker, timeout_s=60, what="the stop on Binance")
        finally:
            worker.kill()  # a crash: nothing is cancelled on the way out
            worker.communicate(timeout=20)
        assert Decimal(stop["triggerPrice"]) == floor_tick(entry * Decimal("0.99"))
        exchange.trigger_stops(Decimal(stop["triggerPrice"]) - TICK)  # a trade through it while the worker is down
        assert exchange.futures_amount == 0
        orders_at_binance = len(exchange.orders)
        worker = start_worker(data_dir, exchange, **settings)
        try:
            exits_done = wait_until(lambda: query(
                data_dir, "SELECT d.reason, o.client_order_id, o.status, o.qty FROM decisions d JOIN orders o "
                          "ON o.decision_id = d.id WHERE d.reason = 'stop_loss'"), worker, timeout_s=60,
                what="the stop's exit recorded")
            newest = query(data_dir, "SELECT max(open_time_ms) FROM candles")[0][0]
            wait_until(lambda: query(data_dir, "SELECT max(open_time_ms) FROM candles")[0][0] >= newest + 180_000,
                       worker, timeout_s=60, what="three more minutes")
            again = query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'stop_loss'")[0][0]
        finally:
            stop_worker(worker)
        assert exits_done == [("stop_loss", stop["clientAlgoId"], "filled", 50.0)] and again == 1
        assert len(exchange.orders) == orders_at_binance and live_stops(exchange) == []  # no second exit
    finally:
        exchange.close()


def test_live_trades_are_checked_one_by_one_and_the_exit_goes_out_on_the_crossing_trade_with_its_real_fill(
        standin, db, data_dir):
    """No kline comes: the stop is checked on each trade of the stream; the exit is a market order sent on
    the trade that crossed, and the alert and the trade record give Binance's fill, not the level."""
    from core.binance.spot import BinanceSpotBroker
    from core.candles import LiveTrade
    from core.health import alerts
    from tests.test_binance_brokers import broker_for
    from tests.test_trader import T0, candle

    broker = broker_for(standin, db, BinanceSpotBroker)
    (data_dir / "strategy.txt").write_text("IF CLOSE > 0 THEN BUY\nSTOP LOSS 1%\n")
    trader = Trader(db, SYMBOL, PolicyLoader(data_dir / "strategy.txt"), broker)
    trader.resume()  # reads the account, as the worker does at start
    trader.on_candle(candle(0, float(standin.last_price())))  # BUY, filled by Binance at once
    (buy,) = standin.orders
    entry = float(Decimal(buy["cummulativeQuoteQty"]) / Decimal(buy["executedQty"]))
    level = entry * 0.99
    minute = T0 + 60_000
    trader.on_trade(LiveTrade(entry * 0.995, minute + 1_000, 1, is_first_seen=True))
    trader.on_trade(LiveTrade(level * 1.0001, minute + 2_000, 2))
    assert len(standin.orders) == 1  # above the level: nothing
    trader.on_trade(LiveTrade(level * 0.999, minute + 3_000, 3))  # crosses: out at once, no kline needed
    assert [o["side"] for o in standin.orders] == ["BUY", "SELL"]
    sell = standin.orders[1]
    fill = float(Decimal(sell["cummulativeQuoteQty"]) / Decimal(sell["executedQty"]))
    reason, candle_ms, price = db.execute(
        "SELECT d.reason, d.candle_open_time_ms, o.price FROM orders o JOIN decisions d ON d.id = o.decision_id "
        "WHERE o.side = 'SELL'").fetchone()
    assert (reason, candle_ms, price) == ("stop_loss", minute, pytest.approx(fill, rel=1e-12))
    message = alerts.recent(db, 1)[0]["message"]
    assert f"exited by stop loss at {fill:.8g}" in message and f"level {level:.8g}" in message, message
    trader.on_trade(LiveTrade(level * 0.5, minute + 4_000, 4))
    assert len(standin.orders) == 2  # flat: later trades send nothing


def test_a_restore_leaves_no_stale_futures_stop_and_the_stop_is_held_again(standin, settings, tmp_path):
    """Long with its Close-All stop A, backup, A moved to B, restore: the restored database knows only A
    (cancelled since). B is cancelled at start (else Binance refuses a second Close-All stop, -4130), and
    the next candle places the stop again."""
    from core import maintenance

    db = store.connect(settings.db_path)
    broker = futures_broker(standin, db)
    price = hold_long(standin)
    level = float(price * Decimal("0.98"))
    broker.keep_stop(level, "trailing_stop")
    maintenance.backup(settings.db_path, tmp_path / "backup.db")
    broker.keep_stop(level * 1.01, "trailing_stop")
    db.close()
    maintenance.restore(tmp_path / "backup.db", settings.data_dir, int(time.time() * 1000))
    db = store.connect(settings.db_path)
    restored = futures_broker(standin, db)
    restored.recover()
    assert live_stops(standin) == [] and restored.stop_exit() is None
    restored.keep_stop(level * 1.01, "trailing_stop")
    (held,) = live_stops(standin)
    assert Decimal(held["triggerPrice"]) == floor_tick(Decimal(repr(level * 1.01)))
    assert len({a["clientAlgoId"] for a in standin.algo_orders}) == 3
    db.close()

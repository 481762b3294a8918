"""Shorts on Binance USDⓈ-M futures, through python-binance against the stand-in (tests/exchange/standin.py):
a SHORT sized from SIZE × available margin × leverage, reduce-only closes, the change of side as a close and
an open (each its own decision and client id), the short's stop kept on Binance as a BUY Close-All
STOP_MARKET in the Algo Service, and a kill -9 of the worker between the close and the open of a flip.

The stand-in models what fapi documents for one-way mode: "New Order (TRADE)": a SELL while flat opens a
short (positionSide BOTH), reduceOnly may only shrink the position (-2022); "New Algo Order (TRADE)": a
STOP_MARKET with closePosition=true and side BUY closes a short once the last price rises to triggerPrice,
and one that would trigger at once is refused (-2021); "Event: Algo Order Update": a Close-All stop expires
once the position is closed."""

from __future__ import annotations

import signal
import time
from collections import Counter
from decimal import ROUND_UP, Decimal

import pytest

from core import store
from core.binance.stops import STOP_KEY
from tests.exchange.standin import DAY_START_MS, start_standin
from tests.processes import query, stop_worker, wait_until
from tests.test_binance_risk import (TICK, candle, futures_trader, hold_long, live_stops,  # noqa: F401
                                     standin)
from tests.test_binance_worker import start_worker

MINUTE = 60_000


def ceil_tick(value: Decimal) -> Decimal:
    return value.quantize(TICK, rounding=ROUND_UP)


def minute_zero() -> int:
    return (int(time.time() * 1000) // MINUTE - 10) * MINUTE


def futures_orders(standin) -> list[dict]:
    return [o for o in standin.orders if o["market"] == "futures"]


def test_a_short_is_sized_from_size_margin_and_leverage_and_its_stop_is_a_buy_above(standin, db, futures_trader):
    price = standin.last_price()
    trader = futures_trader("IF CLOSE > 0 THEN SHORT\nSTOP LOSS 2%\nSIZE 25%\n")
    trader.resume()
    trader.on_candle(candle(minute_zero(), float(price)))  # SHORT
    (sell,) = futures_orders(standin)
    # 10 ETH available, SIZE 25 %, leverage 1 (set at start), step 1 XRP: floor(2.5 / price)
    assert (sell["side"], sell["params"]["quantity"], "reduceOnly" in sell["params"]) == (
        "SELL", str(int(Decimal("2.5") / price)), False)
    assert standin.futures_amount == -int(Decimal("2.5") / price)
    fill = float(Decimal(sell["avgPrice"]))
    assert trader.open_trade.is_short and trader.open_trade.entry_price == pytest.approx(fill, rel=1e-12)
    (stop,) = live_stops(standin)
    assert (stop["side"], stop["orderType"], stop["closePosition"]) == ("BUY", "STOP_MARKET", True)
    assert Decimal(stop["triggerPrice"]) == ceil_tick(Decimal(repr(fill * 1.02)))
    assert trader.broker.position().side == "short"


def test_a_change_of_side_is_a_reduce_only_close_then_an_open_each_with_its_own_client_id(standin, db,
                                                                                          futures_trader):
    hold_long(standin, 50)
    trader = futures_trader("IF CLOSE > 0 THEN SHORT\n")
    trader.resume()
    trader.on_candle(candle(minute_zero(), float(standin.last_price())))
    close, open_ = futures_orders(standin)
    assert (close["side"], close["params"]["quantity"], close["params"]["reduceOnly"]) == ("SELL", "50", "true")
    assert open_["side"] == "SELL" and "reduceOnly" not in open_["params"]
    rows = db.execute("SELECT d.reason, d.target, o.side, o.target, o.client_order_id, o.status FROM orders o "
                      "JOIN decisions d ON d.id = o.decision_id ORDER BY o.id").fetchall()
    assert [r[:4] + r[5:] for r in rows] == [("strategy:close", "flat", "SELL", "flat", "filled"),
                                             ("strategy", "short", "SELL", "short", "filled")]
    assert [r[4] for r in rows] == [close["clientOrderId"], open_["clientOrderId"]]
    assert standin.futures_amount < 0
    # Back to long: the short is bought back reduce-only, then the long opened.
    (trader.loader.path).write_text("IF CLOSE > 0 THEN BUY\n")
    trader.on_candle(candle(minute_zero() + MINUTE, float(standin.last_price())))
    buy_back, long_ = futures_orders(standin)[2:]
    assert (buy_back["side"], buy_back["params"]["reduceOnly"], buy_back["params"]["quantity"]) == (
        "BUY", "true", open_["executedQty"])
    assert long_["side"] == "BUY" and "reduceOnly" not in long_["params"] and standin.futures_amount > 0


def test_binance_triggering_the_shorts_stop_is_recorded_once_as_a_buy(standin, db, futures_trader):
    trader = futures_trader("IF CLOSE > 0 THEN SHORT\nIF CLOSE < 0 THEN SELL\nSTOP LOSS 1%\n")
    trader.resume()
    t0 = minute_zero()
    trader.on_candle(candle(t0, float(standin.last_price())))
    (stop,) = live_stops(standin)
    standin.trigger_stops(Decimal(stop["triggerPrice"]) + TICK)  # a trade above it while the worker looks away
    assert standin.futures_amount == 0
    at_binance = len(standin.orders)
    trader.on_candle(candle(t0 + MINUTE, float(standin.last_price())))
    rows = db.execute("SELECT d.reason, d.position_before, o.side, o.client_order_id, o.status FROM orders o "
                      "JOIN decisions d ON d.id = o.decision_id WHERE d.reason = 'stop_loss'").fetchall()
    assert rows == [("stop_loss", "short", "BUY", stop["clientAlgoId"], "filled")]
    assert len(standin.orders) == at_binance  # no exit of its own
    assert not trader.open_trade.is_open and trader.open_trade.reentry_blocked and trader.open_trade.is_short
    assert store.get_meta(db, STOP_KEY) == ""


def test_flat_after_a_short_cancels_its_stop_and_buys_back_reduce_only(standin, db, futures_trader):
    trader = futures_trader("IF CLOSE > 0 THEN SHORT\nSTOP LOSS 2%\n")
    trader.resume()
    t0 = minute_zero()
    trader.on_candle(candle(t0, float(standin.last_price())))
    (stop,) = live_stops(standin)
    trader.loader.path.write_text("IF CLOSE > 0 THEN SELL\nSTOP LOSS 2%\n")
    trader.on_candle(candle(t0 + MINUTE, float(standin.last_price())))
    buy = futures_orders(standin)[-1]
    assert (buy["side"], buy["params"]["reduceOnly"]) == ("BUY", "true") and standin.futures_amount == 0
    assert live_stops(standin) == [] and stop["algoStatus"] in ("CANCELED", "EXPIRED")


def test_kill_9_between_the_close_and_the_open_of_a_flip_leaves_one_of_each(data_dir):
    exchange = start_standin(start_ms=DAY_START_MS + 3 * 3_600_000, speed=300)
    try:
        hold_long(exchange, 50)
        (data_dir / "strategy.txt").write_text("IF CLOSE > 0 THEN SHORT\n")
        settings = {"broker": "binance-futures", "binance_futures_url": exchange.futures_url,
                    "binance_futures_stream_url": exchange.futures_stream_url, "binance_timeout": 30}
        # Binance fills the close; its answer hangs, so the worker is still waiting when it dies.
        exchange.fail("lost", path="/fapi/v1/order", hold_s=60)
        worker = start_worker(data_dir, exchange, **settings)
        try:
            wait_until(lambda: futures_orders(exchange), worker, timeout_s=60, what="the close at Binance")
            rows = wait_until(lambda: query(data_dir, "SELECT d.reason, o.client_order_id, o.status FROM orders o "
                                                      "JOIN decisions d ON d.id = o.decision_id ORDER BY o.id"), worker)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        (close, open_) = rows
        assert (close[0], close[2], open_[0], open_[2]) == ("strategy:close", "sending", "strategy", "sending")
        assert [o["clientOrderId"] for o in futures_orders(exchange)] == [close[1]]
        assert exchange.futures_amount == 0  # closed, not yet short

        worker = start_worker(data_dir, exchange, **{k: v for k, v in settings.items() if k != "binance_timeout"})
        try:
            wait_until(lambda: query(data_dir, "SELECT status FROM orders WHERE client_order_id = ?", close[1])
                       == [("filled",)], worker, timeout_s=60, what="the close settled by its client id")
            newest = query(data_dir, "SELECT max(open_time_ms) FROM candles")[0][0]
            wait_until(lambda: query(data_dir, "SELECT max(open_time_ms) FROM candles")[0][0] >= newest + 180_000,
                       worker, timeout_s=60, what="three more minutes")
        finally:
            stop_worker(worker)
        # One close and one open were decided and recorded; neither was sent twice, the open that may or may not
        # have reached Binance is never sent again (asked for by its client id), and nothing turned long.
        decided = query(data_dir, "SELECT d.reason, count(*) FROM orders o JOIN decisions d ON d.id = o.decision_id "
                                  "WHERE d.reason IN ('strategy:close', 'strategy') AND o.target IS NOT NULL "
                                  "GROUP BY d.reason ORDER BY d.reason")
        assert [r for r in decided if r[0] == "strategy:close"] == [("strategy:close", 1)]
        sent = Counter(o["clientOrderId"] for o in futures_orders(exchange))
        assert set(sent.values()) == {1} and sent[close[1]] == 1
        assert sum(1 for o in futures_orders(exchange) if o["params"].get("reduceOnly") == "true") == 1
        assert exchange.futures_amount <= 0
        assert query(data_dir, "SELECT status FROM orders WHERE client_order_id = ?", open_[1])[0][0] in (
            "unknown", "not_found", "filled")
    finally:
        exchange.close()

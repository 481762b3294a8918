"""The stop kept on Binance spot (core/binance/spot_stop.py): a STOP_LOSS sell of the position where the symbol
offers it, else STOP_LOSS_LIMIT; moved, cancelled before a SELL or a flatten, its fill taken when Binance
executed it first, and reconciled with Binance's open orders after a restart or a restore. Through
python-binance against the stand-in (tests/exchange/standin.py), which locks the base a stop sells."""

from __future__ import annotations

import time
from decimal import ROUND_DOWN, Decimal

import pytest

from core import maintenance, store
from core.binance.rest import ExchangeRejected
from core.binance.spot import BinanceSpotBroker
from core.binance.spot_stop import SPOT_STOP_KEY
from tests.exchange.standin import start_standin
from tests.test_binance_brokers import SYMBOL, broker_for, order_row, place

TICK = Decimal("0.00000001")


@pytest.fixture
def standin():
    exchange = start_standin(speed=1, balances={"ETH": "1", "XRP": "500"})  # long 500 XRP; real speed
    yield exchange
    exchange.close()


def open_stops(standin) -> list[dict]:
    return [s for s in standin.spot_stops if s["status"] == "NEW"]


def below(standin, share: str) -> float:
    """A level `share` under the market's price now."""
    return float(standin.last_price() * (1 - Decimal(share)))


def floor_tick(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(TICK, rounding=ROUND_DOWN)


def test_standin_serves_spot_stops_as_binance_documents(standin, db):
    rest = broker_for(standin, db).rest
    price = standin.last_price()
    stop = dict(symbol=SYMBOL, side="SELL", quantity="500", newClientOrderId="x-1")
    with pytest.raises(ExchangeRejected) as not_offered:  # not in this symbol's orderTypes
        rest.call("create_order", type="STOP_LOSS", stopPrice=str(price * Decimal("0.9")), **stop)
    assert not_offered.value.code == -1116
    with pytest.raises(ExchangeRejected) as at_once:
        rest.call("create_order", type="STOP_LOSS_LIMIT", stopPrice=str(price * Decimal("1.01")),
                  price=str(price), timeInForce="GTC", **stop)
    assert at_once.value.code == -2010 and "immediately" in str(at_once.value)
    trigger = (price * Decimal("0.99")).quantize(TICK)
    rest.call("create_order", type="STOP_LOSS_LIMIT", stopPrice=str(trigger), price=str(trigger), timeInForce="GTC",
              **stop)
    balances = {b["asset"]: b for b in rest.call("get_account")["balances"]}
    assert (balances["XRP"]["free"], balances["XRP"]["locked"]) == ("0.00000000", "500.00000000")
    (listed,) = rest.call("get_open_orders", symbol=SYMBOL)
    assert (listed["clientOrderId"], listed["type"], listed["status"]) == ("x-1", "STOP_LOSS_LIMIT", "NEW")
    rest.call("cancel_order", symbol=SYMBOL, origClientOrderId="x-1")
    assert rest.call("get_open_orders", symbol=SYMBOL) == []
    with pytest.raises(ExchangeRejected) as twice:
        rest.call("cancel_order", symbol=SYMBOL, origClientOrderId="x-1")
    assert twice.value.code == -2011
    assert standin.balances["XRP"] == 500 and standin.orders == []


@pytest.mark.parametrize("offered, kind", [(False, "STOP_LOSS_LIMIT"), (True, "STOP_LOSS")])
def test_the_stop_is_a_sell_of_the_position_of_the_type_the_symbol_offers_and_the_position_stays_long(
        standin, db, offered, kind):
    if offered:
        standin.spot_order_types.append("STOP_LOSS")
    broker = broker_for(standin, db)
    level = below(standin, "0.01")
    broker.keep_stop(level, "stop_loss")
    (stop,) = open_stops(standin)
    assert (stop["type"], stop["origQty"], stop["stopPrice"]) == (kind, "500.00000000", str(floor_tick(level)))
    if kind == "STOP_LOSS_LIMIT":  # the limit 0.5 % under the trigger
        assert Decimal(stop["price"]) == (floor_tick(level) * Decimal("0.995")).quantize(TICK, rounding=ROUND_DOWN)
    assert broker.position().side == "long" and broker.position().qty == 500  # locked, still ours


def test_the_stop_moves_with_the_level_and_is_cancelled_when_the_level_goes(standin, db):
    broker = broker_for(standin, db)
    first = below(standin, "0.02")
    broker.keep_stop(first, "trailing_stop")
    broker.keep_stop(first * 1.0005, "trailing_stop")  # under 0.1 %: kept
    assert len(standin.spot_stops) == 1
    broker.keep_stop(first * 1.01, "trailing_stop")
    assert [s["status"] for s in standin.spot_stops] == ["CANCELED", "NEW"]
    assert open_stops(standin)[0]["stopPrice"] == str(floor_tick(first * 1.01))
    broker.keep_stop(None, None)
    assert open_stops(standin) == [] and standin.balances["XRP"] == 500 and store.get_meta(db, SPOT_STOP_KEY) == ""


def test_a_sell_while_the_stop_waits_cancels_it_first_and_sells_the_whole_position(standin, db):
    broker = broker_for(standin, db)
    broker.keep_stop(below(standin, "0.02"), "stop_loss")
    order = place(broker, db, "SELL")
    assert order_row(db, order)["status"] == "filled", order_row(db, order)["error"]
    (sold,) = standin.orders
    assert (sold["type"], sold["executedQty"]) == ("MARKET", "500.00000000")
    assert [s["status"] for s in standin.spot_stops] == ["CANCELED"]


def test_a_sell_after_binance_executed_the_stop_sends_nothing_and_takes_the_stops_fill(standin, db):
    broker = broker_for(standin, db)
    broker.keep_stop(below(standin, "0.02"), "stop_loss")
    (stop,) = open_stops(standin)
    crossing = Decimal(stop["stopPrice"]) - TICK
    standin.trigger_stops(crossing)  # a trade through the stop: Binance sells the locked base
    order = place(broker, db, "SELL")  # the rule's SELL, in flight as the stop fired: cancel answers -2011
    (executed,) = standin.orders
    assert (executed["type"], executed["clientOrderId"]) == ("STOP_LOSS_LIMIT", stop["clientOrderId"])
    row = order_row(db, order)
    assert (row["status"], row["qty"], row["exchange_order_id"]) == ("filled", 500.0, str(executed["orderId"]))
    assert row["price"] == pytest.approx(float(crossing))
    assert standin.orders_for(order["client_order_id"]) == [] and broker.position().side == "flat"


def test_the_stop_fill_is_reported_once_with_its_price(standin, db):
    broker = broker_for(standin, db)
    broker.keep_stop(below(standin, "0.02"), "trailing_stop")
    assert broker.stop_exit() is None  # waiting
    (stop,) = open_stops(standin)
    standin.trigger_stops(Decimal(stop["stopPrice"]))
    fill = broker.stop_exit()
    assert (fill["reason"], fill["qty"], fill["client_order_id"]) == ("trailing_stop", 500.0, stop["clientOrderId"])
    assert fill["price"] == pytest.approx(float(stop["stopPrice"])) and broker.stop_exit() is None


def test_a_restart_keeps_the_stop_and_a_restore_cancels_the_one_it_does_not_know(standin, settings, tmp_path):
    """BUY with its stop A, backup, the stop moved to B, restore: the restored database knows A (cancelled
    since); B is cancelled when the worker starts, and the next candle places the stop again. A plain restart
    keeps the stop it knows."""
    db = store.connect(settings.db_path)
    broker = broker_for(standin, db)
    level = below(standin, "0.02")
    broker.keep_stop(level, "trailing_stop")
    broker_for(standin, db).recover()  # a restart: the stop it knows stays
    assert [s["status"] for s in standin.spot_stops] == ["NEW"]
    maintenance.backup(settings.db_path, tmp_path / "backup.db")
    broker.keep_stop(level * 1.01, "trailing_stop")  # A cancelled, B placed
    db.close()
    maintenance.restore(tmp_path / "backup.db", settings.data_dir, int(time.time() * 1000))
    db = store.connect(settings.db_path)
    restored = broker_for(standin, db)
    restored.recover()
    assert [s["status"] for s in standin.spot_stops] == ["CANCELED", "CANCELED"]  # no stale stop left
    assert restored.stop_exit() is None and store.get_meta(db, SPOT_STOP_KEY) == ""  # A: cancelled, sold nothing
    restored.keep_stop(level * 1.01, "trailing_stop")  # the next candle: the stop is held again, not lost
    (held,) = open_stops(standin)
    assert held["stopPrice"] == str(floor_tick(level * 1.01)) and held["origQty"] == "500.00000000"
    assert len({s["clientOrderId"] for s in standin.spot_stops}) == 3
    db.close()


def test_stops_of_another_key_or_placed_by_hand_are_left_alone(standin, db):
    broker = broker_for(standin, db)
    trigger = str((standin.last_price() * Decimal("0.98")).quantize(TICK))
    tag = broker._stop_tag()
    other = "0000" if tag != "0000" else "ffff"
    for client_id in (f"owAbCdEfGh-s{other}1700000000000", "my-own-stop"):  # another API key's, the operator's
        broker.rest.call("create_order", symbol=SYMBOL, side="SELL", type="STOP_LOSS_LIMIT", quantity="100",
                         stopPrice=trigger, price=trigger, timeInForce="GTC", newClientOrderId=client_id)
    broker.recover()
    assert [s["status"] for s in standin.spot_stops] == ["NEW", "NEW"]


def test_flatten_cancels_the_stop_and_sells_everything(standin, db, data_dir):
    from core.policy_loader import PolicyLoader
    from core.trader import Trader

    broker = broker_for(standin, db, BinanceSpotBroker)
    broker.keep_stop(below(standin, "0.02"), "stop_loss")
    (data_dir / "strategy.txt").write_text("IF CLOSE < 0 THEN BUY\n")
    trader = Trader(db, SYMBOL, PolicyLoader(data_dir / "strategy.txt"), broker)
    assert trader.flatten().startswith("SELL 500 XRPETH at ")
    assert [s["status"] for s in standin.spot_stops] == ["CANCELED"] and broker.position().side == "flat"


def test_an_order_of_unknown_outcome_has_the_stops_on_binance_reconciled_at_once(standin, settings, tmp_path):
    """A stale stop of ours (placed after the backup now restored) is cancelled as soon as an order's
    outcome turns unknown, not only at the next order check."""
    db = store.connect(settings.db_path)
    maintenance.backup(settings.db_path, tmp_path / "backup.db")
    broker_for(standin, db).keep_stop(below(standin, "0.02"), "stop_loss")  # placed after the backup
    db.close()
    maintenance.restore(tmp_path / "backup.db", settings.data_dir, int(time.time() * 1000))
    db = store.connect(settings.db_path)
    broker = broker_for(standin, db)  # no recover() yet: the stale stop still waits
    standin.balances["XRP"] += 300  # bought by hand meanwhile: free to sell
    broker.position()
    standin.fail("500")  # the SELL: "could have been a success"
    order = place(broker, db, "SELL")
    assert order_row(db, order)["status"] == "unknown"
    assert [s["status"] for s in standin.spot_stops] == ["CANCELED"]
    db.close()

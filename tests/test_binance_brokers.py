"""core/binance/brokers.py against the exchange stand-in: one order per decision whatever the fault."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal

import pytest

from core import brokers, store
from core.binance.brokers import BinanceFuturesBroker, BinanceSpotBroker, SymbolRules, floor_to
from core.binance.rest import FUTURES, SPOT, BinanceRest
from core.config import ConfigError, Settings
from tests.exchange.standin import API_KEY, API_SECRET, start_standin
from tests.processes import ROOT
from worker import make_broker

SYMBOL = "XRPETH"


@pytest.fixture
def standin():
    exchange = start_standin(speed=1)  # a market moving at real speed: prices hold still during a test
    yield exchange
    exchange.close()


def settings_for(standin, **overrides) -> Settings:
    values = dict(symbol=SYMBOL, broker="binance-spot", binance_api_key=API_KEY, binance_api_secret=API_SECRET,
                  binance_api_url=standin.api_url, binance_futures_url=standin.futures_url,
                  binance_timeout_s=0.3, binance_recv_window_ms=500)
    return Settings(**{**values, **overrides})


def broker_for(standin, db, cls=BinanceSpotBroker, market=SPOT, order_quote=None, retry_sleeps=None):
    # Retries and Retry-After are recorded, not slept; waiting out a recvWindow is real.
    sleeps = retry_sleeps if retry_sleeps is not None else []
    rest = BinanceRest(settings_for(standin), market, sleep=sleeps.append, random=lambda: 0.5)
    broker = cls(db, SYMBOL, rest, order_quote, void_margin_ms=200)  # localhost: transit is instant
    with db.conn:  # the newest candle's close sizes orders and tells dust from a position
        db.execute("INSERT OR REPLACE INTO candles VALUES (?, 0, ?, ?, ?, ?, 0, 59999, 0, 0, 0, 0)",
                   [SYMBOL, *[float(standin.last_price())] * 4])
    return broker


def place(broker, db, side: str) -> dict:
    """What the trader does: a decision and its order row in one transaction, then execute."""
    now_ms = int(time.time() * 1000)
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
            "created_at_ms) VALUES (?, ?, ?, ?, 'flat', 'strategy', ?)",
            [SYMBOL, now_ms, side, "long" if side == "BUY" else "flat", now_ms]).lastrowid
        order = broker.submit(decision_id, side, now_ms)
    broker.execute(order)
    return order


def order_row(db, order: dict) -> dict:
    cursor = db.execute("SELECT * FROM orders WHERE id = ?", [order["id"]])
    return dict(zip([c[0] for c in cursor.description], cursor.fetchone(), strict=True))


def order_alerts(db) -> list[str]:
    return [m for (m,) in db.execute("SELECT message FROM alerts WHERE subject = 'orders' ORDER BY id")]


@pytest.mark.parametrize("faults, status, sends, orders_at_exchange, is_alerted", [
    ([], "filled", 1, 1, False),
    ([("lost", "POST", {})], "filled", 1, 1, False),  # placed, answer lost: found by its client id
    ([("500", "POST", {})], "filled", 2, 1, False),  # not placed: confirmed absent, then sent again
    ([("timeout", "POST", {"hold_s": 0.8})], "filled", 2, 1, False),  # arrives after its recvWindow: void
    ([("timeout", "POST", {"hold_s": 0.4})], "filled", 1, 1, False),  # arrives late but in its window: found
    ([("429", "POST", {"retry_after_s": 2})], "filled", 2, 1, False),
    ([("lost", "POST", {}), ("500", "GET", {"times": 5})], "unknown", 1, 1, True),  # cannot even ask: alert
    ([("418", "POST", {"retry_after_s": 3600})], "rejected", 1, 0, True),
], ids=["clean", "answer-lost", "500", "timeout-void", "timeout-late", "429", "exchange-down", "ip-banned"])
def test_each_fault_ends_with_at_most_one_order_per_decision(standin, db, faults, status, sends, orders_at_exchange,
                                                             is_alerted):
    broker = broker_for(standin, db)
    broker.position()  # warm: exchangeInfo and the account are read before the faults start
    for kind, method, options in faults:
        standin.fail(kind, method=method, **options)
    order = place(broker, db, "BUY")
    row = order_row(db, order)
    assert row["status"] == status, row["error"]
    assert len(standin.orders_for(order["client_order_id"])) == orders_at_exchange
    assert bool(order_alerts(db)) == is_alerted
    assert [r[:2] for r in standin.requests].count(("POST", "/api/v3/order")) == sends
    if status == "filled":
        (exchange_order,) = standin.orders_for(order["client_order_id"])
        assert row["exchange_order_id"] == str(exchange_order["orderId"])
        assert row["qty"] == float(exchange_order["executedQty"])


def test_an_order_whose_outcome_stayed_unknown_is_settled_later_by_its_client_id(standin, db):
    broker = broker_for(standin, db)
    standin.fail("lost")
    standin.fail("500", path="/api/v3/order", method="GET", times=5)
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "unknown"
    broker.recover()  # the worker's periodic check, once Binance answers again
    row = order_row(db, order)
    assert row["status"] == "filled" and len(standin.orders_for(order["client_order_id"])) == 1
    assert len(order_alerts(db)) == 1
    assert brokers.load_position(db)["side"] == "long"


def test_a_stale_timestamp_resyncs_the_clock_and_the_order_goes_through_once(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    standin.skew_clock(20_000)
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "filled"
    assert broker.rest.clock_syncs == 1 and len(standin.orders_for(order["client_order_id"])) == 1


def test_restart_after_the_send_recovers_the_order_by_client_id(standin, db):
    broker = broker_for(standin, db)
    with db.conn:
        db.execute("INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms) VALUES (7, ?, 0, 'BUY', 'long', 'flat', 'strategy', 0)", [SYMBOL])
        order = broker.submit(7, "BUY", 0)
    # The crashed process had sent it; then the new process starts.
    broker.rest.call("create_order", is_order=True, symbol=SYMBOL, side="BUY", type="MARKET", quoteOrderQty="0.5",
                     newClientOrderId=order["client_order_id"])
    restarted = broker_for(standin, db)
    restarted.recover()
    row = order_row(db, order)
    assert (row["status"], row["client_order_id"]) == ("filled", "omniwise-7")
    assert row["exchange_order_id"] == str(standin.orders_for("omniwise-7")[0]["orderId"])
    assert len(standin.orders_for("omniwise-7")) == 1 and order_alerts(db) == []


def test_restart_before_the_send_finds_no_order_and_sends_none(standin, db):
    broker = broker_for(standin, db)
    with db.conn:
        db.execute("INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms) VALUES (8, ?, 0, 'BUY', 'long', 'flat', 'strategy', 0)", [SYMBOL])
        order = broker.submit(8, "BUY", 0)
    restarted = broker_for(standin, db)
    started = time.monotonic()
    restarted.recover()
    # It waited until a request the old process might have sent could no longer execute.
    assert time.monotonic() - started >= 0.5
    assert order_row(db, order)["status"] == "not_sent"
    assert standin.orders_for("omniwise-8") == [] and len(order_alerts(db)) == 1


def test_buy_spends_the_free_quote_and_sell_sells_the_base_in_whole_steps(standin, db):
    broker = broker_for(standin, db)
    assert broker.position().side == "flat"
    buy = place(broker, db, "BUY")
    (sent,) = standin.orders_for(buy["client_order_id"])
    assert sent["params"]["quoteOrderQty"] == "1" and sent["side"] == "BUY"
    position = broker.position()
    assert position.side == "long" and position.qty == float(standin.balances["XRP"])
    sell = place(broker, db, "SELL")
    (sold,) = standin.orders_for(sell["client_order_id"])
    balance_before_sell = Decimal(sent["executedQty"]) - Decimal(sent["fills"][0]["commission"])
    assert sold["params"]["quantity"] == str(int(balance_before_sell))
    assert 0 < standin.balances["XRP"] < 1  # dust below the step size is left, and is no position
    assert broker.position().side == "flat"
    assert brokers.load_position(db)["side"] == "flat"


def test_buy_is_capped_by_order_quote_and_skipped_below_the_minimum_notional(standin, db):
    broker = broker_for(standin, db, order_quote=0.2)
    order = place(broker, db, "BUY")
    assert standin.orders_for(order["client_order_id"])[0]["params"]["quoteOrderQty"] == "0.2"
    small = broker_for(standin, db, order_quote=0.001)
    standin.balances["XRP"] = Decimal(0)
    skipped = place(small, db, "BUY")
    assert order_row(db, skipped)["status"] == "skipped"
    assert standin.orders_for(skipped["client_order_id"]) == []
    assert "below Binance's minimum" in order_alerts(db)[0]


def test_a_buy_when_already_long_is_skipped_without_an_alert(standin, db):
    broker = broker_for(standin, db)
    place(broker, db, "BUY")
    again = place(broker, db, "BUY")
    assert order_row(db, again)["status"] == "skipped" and order_alerts(db) == []


def test_position_inside_a_transaction_uses_the_last_read_without_a_request(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    requests_before = len(standin.requests)
    with store.transaction(db):  # as the trader's step holds it: no network call may wait in there
        db.execute("INSERT INTO meta(key, value, updated_at_ms) VALUES ('x', 'y', 0)")
        assert broker.position().side == "flat"
    assert len(standin.requests) == requests_before


def test_futures_buy_opens_a_long_worth_the_margin_and_sell_closes_it_reduce_only(standin, db):
    broker = broker_for(standin, db, BinanceFuturesBroker, FUTURES)
    assert broker.position().side == "flat"
    buy = place(broker, db, "BUY")
    (sent,) = standin.orders_for(buy["client_order_id"])
    expected_qty = int(Decimal(10) * Decimal("0.98") / standin.last_price())  # 98% of 10 ETH margin, step 1
    assert sent["params"]["quantity"] == str(expected_qty) and "reduceOnly" not in sent["params"]
    position = broker.position()
    assert (position.side, position.qty) == ("long", expected_qty)
    sell = place(broker, db, "SELL")
    (closed,) = standin.orders_for(sell["client_order_id"])
    assert closed["side"] == "SELL" and closed["params"]["reduceOnly"] == "true"
    assert closed["params"]["quantity"] == str(expected_qty)
    assert broker.position().side == "flat" and order_row(db, sell)["status"] == "filled"


def test_futures_sell_when_short_buys_it_back_reduce_only(standin, db):
    standin.futures_amount, standin.futures_entry = Decimal(-50), standin.last_price()
    broker = broker_for(standin, db, BinanceFuturesBroker, FUTURES)
    assert broker.position().side == "short"
    order = place(broker, db, "SELL")
    (sent,) = standin.orders_for(order["client_order_id"])
    assert (sent["side"], sent["params"]["quantity"], sent["params"]["reduceOnly"]) == ("BUY", "50", "true")
    assert broker.position().side == "flat"


def test_symbol_rules_read_binance_filters():
    info = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "quoteAssetPrecision": 8,
            "filters": [{"filterType": "LOT_SIZE", "minQty": "0.00001000", "stepSize": "0.00001000"},
                        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "stepSize": "0.00000000"},
                        {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True}]}
    rules = SymbolRules.from_symbol(info, SPOT)
    assert rules.floor_qty(Decimal("0.123456789")) == Decimal("0.12345")
    assert not rules.is_tradable(Decimal("0.00004"), Decimal("100000"))  # 4 USDT < 5
    assert rules.is_tradable(Decimal("0.00005"), Decimal("100000"))
    assert floor_to(Decimal("7.9"), Decimal(0)) == Decimal("7.9")


def test_make_broker_needs_the_keys_and_makes_no_network_call(db):
    settings = Settings(broker="binance-spot", binance_api_url="http://127.0.0.1:9/api")
    with pytest.raises(ConfigError, match="BINANCE_API_KEY"):
        make_broker(settings, db)
    keyed = Settings(broker="binance-futures", binance_api_key="k", binance_api_secret="s",
                     binance_futures_url="http://127.0.0.1:9/fapi")
    broker = make_broker(keyed, db, BinanceRest(keyed, FUTURES))
    assert isinstance(broker, BinanceFuturesBroker) and broker.name == "binance-futures"


def test_the_trader_records_the_decision_but_orders_nothing_when_the_account_cannot_be_read(db, data_dir):
    from core.candles import Candle
    from core.policy_loader import PolicyLoader
    from core.trader import Trader

    (data_dir / "strategy.txt").write_text("IF CLOSE > 0 THEN BUY\n")
    unreachable = Settings(symbol=SYMBOL, broker="binance-spot", binance_api_key="k", binance_api_secret="s",
                           binance_api_url="http://127.0.0.1:9/api", binance_timeout_s=0.2)
    rest = BinanceRest(unreachable, SPOT, sleep=lambda s: None, random=lambda: 0.5, max_attempts=2)
    trader = Trader(db, SYMBOL, PolicyLoader(data_dir / "strategy.txt"), BinanceSpotBroker(db, SYMBOL, rest))
    trader.resume()  # recover cannot reach Binance either: it must not raise
    trader.on_candle(Candle(0, 1.0, 1.0, 1.0, 1.0, 1.0, 59_999, 1.0, 1, 0.0, 0.0))
    assert db.execute("SELECT action, position_before FROM decisions").fetchall() == [("BUY", "unknown")]
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_the_brokers_module_never_imports_binance_back():
    code = "import sys, core.brokers\nprint(sorted(m for m in sys.modules if m.startswith('core.binance')))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

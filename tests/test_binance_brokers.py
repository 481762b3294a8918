"""The Binance brokers (core/binance/spot.py, futures.py) against the exchange stand-in: one order per decision whatever the fault."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from core import brokers, store
from core.binance.filters import SymbolRules, floor_to
from core.binance.futures import BinanceFuturesBroker
from core.binance.spot import BinanceSpotBroker
from core.binance.rest import FUTURES, SPOT, BinanceRest, ExchangeRejected
from core.config import ConfigError, Settings
from tests.exchange.standin import API_KEY, API_SECRET, start_standin
from tests.processes import ROOT, wait_until
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
                  binance_timeout_s=1.0, binance_recv_window_ms=500)
    return Settings(**{**values, **overrides})


def broker_for(standin, db, cls=BinanceSpotBroker, market=SPOT, order_quote=None, retry_sleeps=None, **kwargs):
    # Retries and Retry-After are recorded, not slept.
    sleeps = retry_sleeps if retry_sleeps is not None else []
    rest = BinanceRest(settings_for(standin), market, sleep=sleeps.append, random=lambda: 0.5)
    broker = cls(db, SYMBOL, rest, order_quote, **kwargs)
    with db.conn:  # the newest candle's close sizes orders and tells dust from a position
        db.execute("INSERT OR REPLACE INTO candles VALUES (?, 0, ?, ?, ?, ?, 0, 59999, 0, 0, 0, 0)",
                   [SYMBOL, *[float(standin.last_price())] * 4])
    return broker


def place(broker, db, side: str, size_share: float = 1.0) -> dict:
    """What the trader does: a decision and its order row in one transaction, then execute."""
    now_ms = int(time.time() * 1000)
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
            "created_at_ms) VALUES (?, ?, ?, ?, 'flat', 'strategy', ?)",
            [SYMBOL, now_ms + len(db.execute("SELECT id FROM decisions").fetchall()), side,
             "long" if side == "BUY" else "flat", now_ms]).lastrowid
        order = broker.submit(decision_id, side, now_ms, size_share=size_share)
    broker.execute(order)
    return order


def order_row(db, order: dict) -> dict:
    cursor = db.execute("SELECT * FROM orders WHERE id = ?", [order["id"]])
    return dict(zip([c[0] for c in cursor.description], cursor.fetchone(), strict=True))


def order_alerts(db) -> list[str]:
    return [m for (m,) in db.execute("SELECT message FROM alerts WHERE subject = 'orders' ORDER BY id")]


def order_posts(standin, path="/api/v3/order") -> int:
    return [r[:2] for r in standin.requests].count(("POST", path))


@pytest.mark.parametrize("faults, status, sends, orders_at_exchange, is_alerted", [
    ([], "filled", 1, 1, False),
    ([("lost", "POST", {})], "filled", 1, 1, False),  # placed, answer lost: found by its client id at once
    ([("503", "POST", {})], "filled", 1, 1, False),  # executed, "execution status unknown": found at once
    ([("500", "POST", {})], "unknown", 1, 0, True),  # a 5xx may have executed: never sent again, alerted
    ([("429", "POST", {"retry_after_s": 2})], "filled", 2, 1, False),  # refused before execution: sent again
    ([("lost", "POST", {}), ("500", "GET", {"times": 5})], "unknown", 1, 1, True),  # cannot even ask: alert
    ([("418", "POST", {"retry_after_s": 3600})], "rejected", 1, 0, True),
], ids=["clean", "answer-lost", "503-executed", "500", "429", "exchange-down", "ip-banned"])
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
    assert order_posts(standin) == sends
    if status == "filled":
        (exchange_order,) = standin.orders_for(order["client_order_id"])
        assert row["exchange_order_id"] == str(exchange_order["orderId"])
        assert row["qty"] == float(exchange_order["executedQty"])


def test_an_order_executed_seconds_after_its_timeout_is_never_sent_twice_and_is_settled_later(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    standin.fail("timeout", hold_s=2.5)  # passes the recvWindow check, then waits in the engine: the client gives up
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "unknown"
    assert "unknown" in order_alerts(db)[0] and len(order_alerts(db)) == 1
    # The next decision while the outcome is unknown sends nothing.
    second = place(broker, db, "BUY")
    assert order_row(db, second)["status"] == "skipped" and "still unknown" in order_row(db, second)["error"]
    wait_until(lambda: standin.orders_for(order["client_order_id"]), what="the late execution at the exchange")
    broker.settle()  # the worker's check every few seconds
    row = order_row(db, order)
    assert row["status"] == "filled" and order_posts(standin) == 1
    assert len(standin.orders) == 1 and "ORDER SETTLED" in order_alerts(db)[-1]
    assert brokers.load_position(db)["side"] == "long"


def test_order_queries_lagging_a_fill_settle_nothing_and_nothing_is_sent_again(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    standin.order_query_lag_ms = 3_600_000  # Binance answers -2013 for the order although it is FILLED
    standin.trade_query_lag_ms = 3_600_000  # and its trade list does not show the trades yet either
    standin.fail("lost")
    order = place(broker, db, "BUY")
    broker.recover()
    broker.recover()
    assert order_row(db, order)["status"] == "unknown" and standin.error_codes.count(-2013) >= 3
    assert len(order_alerts(db)) == 1 and order_posts(standin) == 1
    # The account itself already shows the purchase: the position is Binance's, not the order table's.
    assert broker.position().side == "long"
    standin.order_query_lag_ms = 0  # the order database caught up
    broker.recover()
    assert order_row(db, order)["status"] == "filled" and len(standin.orders) == 1


def test_an_unknown_order_without_any_trace_is_given_up_after_the_settle_time(standin, db):
    now = [time.time()]
    broker = broker_for(standin, db, clock=lambda: now[0])
    broker.position()
    standin.fail("500")  # not executed, but the client cannot know
    order = place(broker, db, "BUY")
    now[0] += 14 * 60
    broker.recover()
    assert order_row(db, order)["status"] == "unknown"
    now[0] += 2 * 60
    broker.recover()
    row = order_row(db, order)
    assert row["status"] == "not_found" and "no trace" in row["error"]
    assert order_posts(standin) == 1 and standin.orders == []
    again = place(broker, db, "BUY")  # the next decision decides again, against the account
    assert order_row(db, again)["status"] == "filled" and order_posts(standin) == 2


def refuse_orders(broker, standin, times: int) -> None:
    """The next `times` order sends meet a refused connection (nothing listens on port 9): they provably
    never left. Everything else still reaches the stand-in."""
    client, create = broker.rest.client, broker.rest.client.create_order
    left = [times]

    def create_order(**params):
        client.API_URL = "http://127.0.0.1:9/api" if left[0] > 0 else standin.api_url
        left[0] -= 1
        try:
            return create(**params)
        finally:
            client.API_URL = standin.api_url

    client.create_order = create_order


def test_an_order_whose_connection_was_refused_is_sent_once_the_connection_opens(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    refuse_orders(broker, standin, times=2)
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "filled"
    assert order_posts(standin) == 1 and len(standin.orders_for(order["client_order_id"])) == 1
    assert order_alerts(db) == []


def test_an_order_that_never_reached_binance_is_not_sent_and_alerted(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    refuse_orders(broker, standin, times=5)
    order = place(broker, db, "BUY")
    row = order_row(db, order)
    assert row["status"] == "not_sent" and "could not be reached" in row["error"]
    assert order_posts(standin) == 0 and len(order_alerts(db)) == 1


def test_a_stale_timestamp_resyncs_the_clock_and_the_order_goes_through_once(standin, db):
    broker = broker_for(standin, db)
    broker.position()
    standin.skew_clock(20_000)
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "filled"
    assert broker.rest.clock_syncs == 1 and len(standin.orders_for(order["client_order_id"])) == 1


def decision(db, decision_id: int) -> None:
    with db.conn:
        db.execute("INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms) VALUES (?, ?, ?, 'BUY', 'long', 'flat', 'strategy', 0)",
                   [decision_id, SYMBOL, decision_id])


def test_restart_after_the_send_recovers_the_order_by_client_id(standin, db):
    broker = broker_for(standin, db)
    decision(db, 7)
    with db.conn:
        order = broker.submit(7, "BUY", 0)
    # The crashed process had sent it; then the new process starts.
    broker.rest.call("create_order", is_order=True, symbol=SYMBOL, side="BUY", type="MARKET", quoteOrderQty="0.5",
                     newClientOrderId=order["client_order_id"])
    restarted = broker_for(standin, db)
    restarted.recover()
    row = order_row(db, order)
    assert (row["status"], row["client_order_id"]) == ("filled", f"{broker.prefix}-7")
    assert row["exchange_order_id"] == str(standin.orders_for(row["client_order_id"])[0]["orderId"])
    assert len(standin.orders_for(row["client_order_id"])) == 1


def test_restart_before_the_send_finds_no_order_and_sends_none(standin, db):
    broker = broker_for(standin, db)
    decision(db, 8)
    with db.conn:
        order = broker.submit(8, "BUY", 0)  # recorded long ago (0 ms): past the settle time
    restarted = broker_for(standin, db)
    restarted.recover()
    assert order_row(db, order)["status"] == "not_found"
    assert standin.orders_for(order["client_order_id"]) == [] and order_posts(standin) == 0
    assert len(order_alerts(db)) == 1 and "no trace" in order_alerts(db)[0]


def test_client_ids_carry_a_random_prefix_new_at_every_start(standin, db, tmp_path):
    broker = broker_for(standin, db)
    assert re.fullmatch(r"ow[A-Za-z0-9]{8}", broker.prefix)
    assert store.get_meta(db, "binance_client_id_prefix") == broker.prefix
    restarted = broker_for(standin, db)
    assert restarted.prefix != broker.prefix  # the same installation, restarted: new ids all the same
    assert store.get_meta(db, "binance_client_id_prefix") == restarted.prefix
    other_db = store.connect(tmp_path / "other.db")
    other = broker_for(standin, other_db)
    assert other.prefix not in (broker.prefix, restarted.prefix)  # a reset database or a second instance
    decision(db, 123456789012)
    with db.conn:
        order = broker.submit(123456789012, "BUY", 0)
    assert order["client_order_id"] == f"{broker.prefix}-123456789012"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,36}", order["client_order_id"])
    # A restarted second instance never adopts the first one's order: its id differs.
    decision(other_db, 7)
    decision(db, 7)
    with db.conn:
        mine = broker.submit(7, "BUY", int(time.time() * 1000))
    broker.execute(mine)
    assert order_row(db, mine)["status"] == "filled", order_row(db, mine)["error"]
    with other_db.conn:
        theirs = other.submit(7, "BUY", 0)
    other.recover()
    assert order_row(other_db, theirs)["status"] == "not_found" and len(standin.orders) == 1
    other_db.close()


def test_a_restored_backup_never_reuses_a_client_id(standin, settings, tmp_path):
    """BUY, backup, SELL, restore, BUY: the last BUY's decision takes the SELL's decision id again (the backup
    knew neither); its answer is lost, so it is settled by asking Binance for its client id. Every client id
    Binance saw is new, and each order is settled as itself."""
    from core import maintenance

    db = store.connect(settings.db_path)
    buy = place(broker_for(standin, db), db, "BUY")
    maintenance.backup(settings.db_path, tmp_path / "backup.db")
    sell = place(broker_for(standin, db), db, "SELL")
    db.close()
    maintenance.restore(tmp_path / "backup.db", settings.data_dir, int(time.time() * 1000))
    db = store.connect(settings.db_path)
    broker = broker_for(standin, db)
    standin.fail("lost")
    again = place(broker, db, "BUY")
    assert again["decision_id"] == sell["decision_id"]  # the restored database hands out the same id again
    sent = [order["clientOrderId"] for order in standin.orders]
    assert len(sent) == 3 and len(set(sent)) == 3, sent
    assert [order["side"] for order in standin.orders] == ["BUY", "SELL", "BUY"]
    row = order_row(db, again)
    assert (row["status"], row["exchange_order_id"]) == ("filled", str(standin.orders[2]["orderId"])), row
    assert {buy["client_order_id"], sell["client_order_id"], again["client_order_id"]} == set(sent)
    db.close()


def test_a_restore_alone_gives_new_client_ids(standin, settings, tmp_path):
    """The restore's own rotation, for a worker that kept its broker across it (no restart)."""
    from core import maintenance

    db = store.connect(settings.db_path)
    broker = broker_for(standin, db)
    maintenance.backup(settings.db_path, tmp_path / "backup.db")
    db.close()
    maintenance.restore(tmp_path / "backup.db", settings.data_dir, int(time.time() * 1000))
    with store.connect(settings.db_path) as restored:
        assert store.get_meta(restored, "binance_client_id_prefix") not in (None, broker.prefix)


@pytest.mark.parametrize("client_id", ["ow~1", "x" * 37, ""])
def test_the_standin_refuses_client_ids_outside_binances_pattern(standin, db, client_id):
    rest = BinanceRest(settings_for(standin), SPOT)
    with pytest.raises(ExchangeRejected) as refused:
        rest.call("create_order", is_order=True, symbol=SYMBOL, side="BUY", type="MARKET", quoteOrderQty="0.5",
                  newClientOrderId=client_id)
    assert refused.value.code == -1100 and standin.orders == []


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


def futures_broker(standin, db, **kwargs):
    return broker_for(standin, db, BinanceFuturesBroker, FUTURES, **kwargs)


def futures_requests(standin, path: str) -> list:
    return [r for r in standin.requests if r[1] == f"/fapi/v1/{path}"]


def test_futures_account_is_set_to_cross_margin_and_1x_before_the_first_order_and_sized_from_them(standin, db):
    assert (standin.futures_margin_type, standin.futures_leverage) == ("ISOLATED", 20)  # a fresh account's risk
    broker = futures_broker(standin, db)
    buy = place(broker, db, "BUY")
    assert (standin.futures_margin_type, standin.futures_leverage) == ("CROSSED", 1)
    assert futures_requests(standin, "positionSide/dual") and futures_requests(standin, "symbolConfig")
    (sent,) = standin.orders_for(buy["client_order_id"])
    assert sent["params"]["quantity"] == str(int(Decimal(10) * Decimal("0.98") / standin.last_price()))
    place(broker, db, "SELL")
    assert len(futures_requests(standin, "leverage")) == 1  # set once, not before every order


def test_futures_leverage_and_isolated_margin_from_the_settings_size_the_order(standin, db):
    broker = futures_broker(standin, db, leverage=3, margin="isolated")
    buy = place(broker, db, "BUY")
    assert (standin.futures_margin_type, standin.futures_leverage) == ("ISOLATED", 3)
    assert -4046 in standin.error_codes  # "No need to change margin type": already isolated, accepted
    (sent,) = standin.orders_for(buy["client_order_id"])
    assert sent["params"]["quantity"] == str(int(Decimal(10) * Decimal("0.98") * 3 / standin.last_price()))


def test_futures_hedge_mode_is_refused_with_a_clear_message_and_no_order(standin, db):
    standin.futures_dual_side = True
    broker = futures_broker(standin, db)
    order = place(broker, db, "BUY")
    row = order_row(db, order)
    assert row["status"] == "not_sent" and "hedge mode" in row["error"] and "One-way" in row["error"]
    assert order_posts(standin, "/fapi/v1/order") == 0 and "hedge mode" in order_alerts(db)[0]
    standin.futures_amount, standin.futures_entry = Decimal(50), standin.last_price()
    sell = place(broker, db, "SELL")  # not "already flat": refused, and alerted
    assert order_row(db, sell)["status"] == "not_sent" and order_posts(standin, "/fapi/v1/order") == 0
    assert len(order_alerts(db)) == 2


def test_futures_hedge_mode_is_alerted_at_start_once(standin, db):
    standin.futures_dual_side = True
    broker = futures_broker(standin, db)
    broker.recover()  # what the worker does at start, and every 30 s
    broker.recover()
    (message,) = [m for (m,) in db.execute("SELECT message FROM alerts WHERE subject = 'account'")]
    assert "hedge mode" in message and "One-way" in message


def test_futures_margin_type_that_cannot_be_set_refuses_opening_but_still_closes(standin, db):
    standin.futures_amount, standin.futures_entry = Decimal(50), standin.last_price()  # isolated, with a position
    broker = futures_broker(standin, db)
    buy = place(broker, db, "BUY")
    assert order_row(db, buy)["status"] == "not_sent" and "-4048" in order_row(db, buy)["error"]
    sell = place(broker, db, "SELL")
    assert order_row(db, sell)["status"] == "filled" and standin.futures_amount == 0


def test_futures_leverage_refused_by_binance_sends_no_order(standin, db):
    standin.futures_max_leverage = 2
    broker = futures_broker(standin, db, leverage=3)
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "not_sent" and "-4028" in order_row(db, order)["error"]
    assert order_posts(standin, "/fapi/v1/order") == 0


def test_futures_buy_while_short_closes_the_short_reduce_only_then_opens_the_long(standin, db):
    price = standin.last_price()
    short = int(Decimal(10) * Decimal("0.95") / price)  # nearly all the margin is in the short
    standin.futures_amount, standin.futures_entry = Decimal(-short), price
    broker = futures_broker(standin, db)
    assert broker.position().side == "short"
    buy = place(broker, db, "BUY")
    close, open_ = standin.orders
    assert (close["side"], close["params"]["quantity"], close["params"]["reduceOnly"]) == ("BUY", str(short), "true")
    assert open_["side"] == "BUY" and "reduceOnly" not in open_["params"]
    assert open_["clientOrderId"] == buy["client_order_id"] and order_row(db, buy)["status"] == "filled"
    assert int(open_["params"]["quantity"]) == int(standin.futures_wallet * Decimal("0.98") / price)
    reasons = [r for (r,) in db.execute("SELECT reason FROM decisions ORDER BY id")]
    assert reasons[-1] == f"close-short-{buy['decision_id']}"
    assert db.execute("SELECT count(*) FROM orders WHERE status = 'filled'").fetchone() == (2,)
    assert broker.position().side == "long" and order_alerts(db) == []


def test_a_close_larger_than_binances_largest_market_order_goes_in_reduce_only_parts(standin, db):
    standin.market_max_qty = Decimal(100)  # as BTCUSDT futures allows 120 per market order
    standin.futures_amount, standin.futures_entry = Decimal(250), standin.last_price()
    broker = futures_broker(standin, db)
    order = place(broker, db, "SELL")
    sent = [o for o in standin.orders if o["market"] == "futures"]
    assert [(o["side"], o["params"]["quantity"], o["params"]["reduceOnly"]) for o in sent] == [
        ("SELL", "100", "true"), ("SELL", "100", "true"), ("SELL", "50", "true")]
    client_ids = [o["clientOrderId"] for o in sent]
    assert client_ids[0] == order["client_order_id"] and len(set(client_ids)) == 3
    rows = db.execute("SELECT o.client_order_id, o.status, o.qty, d.reason FROM orders o JOIN decisions d "
                      "ON d.id = o.decision_id ORDER BY o.id").fetchall()
    assert rows == [(client_ids[0], "filled", 100.0, "strategy"), (client_ids[1], "filled", 100.0, "strategy:part2"),
                    (client_ids[2], "filled", 50.0, "strategy:part3")]
    assert standin.futures_amount == 0 and order_alerts(db) == []


def test_a_part_of_a_split_close_with_unknown_outcome_is_never_resent_and_stops_the_rest(standin, db):
    standin.market_max_qty = Decimal(100)
    standin.futures_amount, standin.futures_entry = Decimal(250), standin.last_price()
    broker = futures_broker(standin, db)
    standin.fail("lost", "/fapi/v1/order", times=1)  # part 1: handled, the answer lost -> found by its id
    place(broker, db, "SELL")
    assert [o["params"]["quantity"] for o in standin.orders] == ["100", "100", "50"]  # each part sent once
    assert db.execute("SELECT count(*) FROM orders WHERE status = 'filled'").fetchone() == (3,)
    standin.orders.clear()
    standin.futures_amount = Decimal(250)
    standin.fail("500", "/fapi/v1/order", times=1)  # a 5xx: maybe executed, so never sent again
    second = place(broker, db, "SELL")
    assert standin.orders == [] and order_row(db, second)["status"] == "unknown"
    assert order_posts(standin, "/fapi/v1/order") == 3 + 1  # part 1 of the second close only
    assert any("part 1 of 3" in m and "150 XRP in the parts after it not sent" in m for m in order_alerts(db))


@pytest.mark.parametrize("order_quote, expected_quote", [(None, "0.4"), ("0.3", "0.3"), ("0.5", "0.4")])
def test_spot_size_spends_that_share_of_the_free_quote_balance_capped_by_the_order_quote(
        standin, db, order_quote, expected_quote):
    # 1 ETH free (the stand-in's spot account); SIZE 40 % -> 0.4 ETH, unless OMNIWISE_ORDER_QUOTE is lower.
    broker = broker_for(standin, db, order_quote=None if order_quote is None else float(order_quote))
    buy = place(broker, db, "BUY", size_share=0.4)
    assert standin.orders_for(buy["client_order_id"])[0]["params"]["quoteOrderQty"] == expected_quote
    assert order_row(db, buy)["size_share"] == 0.4


@pytest.mark.parametrize("share, leverage", [(0.25, 1), (0.25, 3), (1.0, 2)])
def test_futures_size_spends_that_share_of_the_available_margin_times_the_leverage(standin, db, share, leverage):
    price = standin.last_price()
    buy = place(futures_broker(standin, db, leverage=leverage), db, "BUY", size_share=share)
    # 10 ETH available; SIZE 100 % keeps the 2 % room for fees; step 1 XRP
    margin = Decimal(10) * min(Decimal(str(share)), Decimal("0.98"))
    expected = int(margin * leverage / price)
    assert standin.orders_for(buy["client_order_id"])[0]["params"]["quantity"] == str(expected)
    assert expected > 0 and order_row(db, buy)["status"] == "filled"


def test_a_futures_buy_is_capped_at_the_largest_market_order(standin, db):
    standin.market_max_qty = Decimal(10)
    buy = place(futures_broker(standin, db), db, "BUY")
    assert standin.orders_for(buy["client_order_id"])[0]["params"]["quantity"] == "10"


def test_a_spot_buy_is_capped_by_max_notional_and_checked_at_the_average_price(standin, db):
    standin.max_notional = Decimal("0.3")
    buy = place(broker_for(standin, db), db, "BUY")
    assert standin.orders_for(buy["client_order_id"])[0]["params"]["quoteOrderQty"] == "0.3"
    assert ("GET", "/api/v3/avgPrice", 200) in standin.requests


def test_exchange_info_is_read_again_after_a_filter_failure_and_daily(standin, db):
    now = [time.time()]
    broker = broker_for(standin, db, clock=lambda: now[0])
    broker.position()
    standin.min_notional = Decimal(5)  # Binance raised the minimum after we read the filters
    first = place(broker, db, "BUY")
    assert order_row(db, first)["status"] == "rejected" and -1013 in standin.error_codes
    second = place(broker, db, "BUY")  # the new minimum is known: not sent at all
    assert order_row(db, second)["status"] == "skipped" and "minimum order of 5" in order_row(db, second)["error"]
    reads = [r[:2] for r in standin.requests].count(("GET", "/api/v3/exchangeInfo"))
    assert reads == 2
    now[0] += 24 * 3600
    broker.position()
    assert [r[:2] for r in standin.requests].count(("GET", "/api/v3/exchangeInfo")) == 3


def test_symbol_rules_combine_lot_size_market_lot_size_and_notional():
    info = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "marginAsset": "USDT",
            "filters": [{"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
                        {"filterType": "MIN_NOTIONAL", "notional": "100"}]}
    rules = SymbolRules.from_symbol(info, FUTURES)
    assert (rules.min_qty, rules.max_qty, rules.step, rules.min_notional) == (
        Decimal("0.001"), Decimal(120), Decimal("0.001"), Decimal(100))
    assert rules.problem(Decimal("120.001"), None) == ("120.001 BTC is above Binance's largest market order of 120")
    assert rules.problem(Decimal("0.001"), Decimal(50_000)) == "50 USDT is below Binance's minimum order of 100"
    assert rules.problem(Decimal(1), Decimal(50_000)) is None
    spot = {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT",
            "filters": [{"filterType": "NOTIONAL", "minNotional": "5", "applyMinToMarket": True,
                         "maxNotional": "9000000", "applyMaxToMarket": True, "avgPriceMins": 5}]}
    spot_rules = SymbolRules.from_symbol(spot, SPOT)
    assert (spot_rules.max_notional, spot_rules.avg_price_mins, spot_rules.max_qty) == (Decimal(9000000), 5, None)


def test_fees_paid_in_bnb_are_recorded_in_the_quote_asset(standin, db):
    standin.bnb_price, standin.balances["BNB"] = Decimal("0.05"), Decimal(1)  # 1 BNB = 0.05 ETH
    buy = place(broker_for(standin, db), db, "BUY")
    (sent,) = standin.orders_for(buy["client_order_id"])
    fill = sent["fills"][0]
    assert fill["commissionAsset"] == "BNB"
    expected_fee = Decimal(fill["commission"]) * Decimal("0.05")  # BNB fee at BNBETH, by hand
    assert order_row(db, buy)["fee_quote"] == pytest.approx(float(expected_fee), rel=1e-9)
    assert float(expected_fee) == pytest.approx(float(Decimal(sent["cummulativeQuoteQty"]) * Decimal("0.00075")),
                                                rel=1e-3)


def test_default_hosts_are_binances_current_testnets_and_can_be_replaced():
    from core.binance.rest import endpoints

    settings = Settings(broker="binance-futures", feed="binance")
    assert endpoints(settings, FUTURES).rest_url == "https://testnet.binancefuture.com/fapi"
    assert endpoints(settings, FUTURES).stream_url == "wss://fstream.binancefuture.com/"
    assert endpoints(settings, SPOT).rest_url == "https://testnet.binance.vision/api"
    moved = Settings(binance_futures_url="https://proxy.example/fapi")
    assert endpoints(moved, FUTURES).rest_url == "https://proxy.example/fapi"


def test_futures_order_updates_from_the_user_data_stream_settle_an_order_the_queries_deny(standin, db):
    from core.binance.user_stream import UserStreamReader

    reader = UserStreamReader(API_KEY, API_SECRET, standin.futures_url, standin.futures_stream_url)
    reader.start()
    try:
        wait_until(lambda: reader.connections, what="the user data stream connected")
        broker = futures_broker(standin, db, user_events=reader.events)
        broker.position()
        standin.order_query_lag_ms = 3_600_000  # the order query keeps answering -2013
        standin.fail("timeout", path="/fapi/v1/order", hold_s=2.5)  # executed after the worker gave up
        order = place(broker, db, "BUY")
        assert order_row(db, order)["status"] == "unknown"
        wait_until(lambda: not reader.events.empty(), what="ORDER_TRADE_UPDATE on the user data stream")
        broker.settle()
        row = order_row(db, order)
        (executed,) = standin.orders_for(order["client_order_id"])
        assert (row["status"], row["exchange_order_id"]) == ("filled", str(executed["orderId"]))
        assert row["qty"] == float(executed["executedQty"])
        assert row["price"] == pytest.approx(float(executed["avgPrice"]))
        assert order_posts(standin, "/fapi/v1/order") == 1 and ("POST", "/fapi/v1/listenKey", 200) in standin.requests
    finally:
        reader.close()

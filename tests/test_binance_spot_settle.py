"""A spot order of unknown outcome is settled from what Binance tells besides the order query: the user data
stream (executionReport, over the WebSocket API, through python-binance) and the account's trades with the
base balance. Never by sending it again."""

from __future__ import annotations

import json
import queue
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import store
from core.binance.settle import BASE_BEFORE_KEY
from core.binance.rest import SPOT, endpoints
from core.binance.user_stream import ExecutionReports, UserStreamReader
from core.config import Settings
from tests.exchange.standin import API_KEY, API_SECRET
from tests.processes import wait_until
from tests.test_binance_brokers import broker_for, order_alerts, order_posts, order_row, place, standin  # noqa: F401

HOUR_MS = 3_600_000
SUBSCRIBE = "userDataStream.subscribe.signature"


@pytest.fixture
def reader(standin):  # noqa: F811
    stream = UserStreamReader(API_KEY, API_SECRET, standin.api_url, standin.stream_url, market=SPOT,
                              ws_api_url=standin.ws_api_url)
    stream.start()
    yield stream
    stream.close()


def expected_fill(executed: dict) -> tuple[float, float, float]:
    """(qty, average price, fee in the quote asset) of an executed stand-in order, by hand from its fills."""
    qty = Decimal(executed["executedQty"])
    price = Decimal(executed["cummulativeQuoteQty"]) / qty
    fee = sum(Decimal(f["commission"]) * (Decimal(f["price"]) if f["commissionAsset"] == "XRP" else 1)
              for f in executed["fills"])
    return float(qty), float(price), float(fee)


def test_an_execution_report_settles_a_spot_order_the_order_and_trade_queries_deny(standin, db, reader):  # noqa: F811
    wait_until(lambda: reader.connections, what="the spot user data stream subscribed")
    assert (SUBSCRIBE, 200) in standin.ws_api_requests  # over the WebSocket API, signed, as python-binance does
    broker = broker_for(standin, db, user_events=reader.events)
    broker.position()
    standin.order_query_lag_ms = standin.trade_query_lag_ms = HOUR_MS  # both keep denying the fill
    standin.fail("timeout", hold_s=2.5)  # executed in the matching engine after the client gave up
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "unknown"
    wait_until(lambda: standin.orders_for(order["client_order_id"]), what="the order executed")
    wait_until(lambda: reader.events.qsize() >= 2, what="executionReports NEW and FILLED")
    broker.settle()
    row = order_row(db, order)
    (executed,) = standin.orders_for(order["client_order_id"])
    qty, price, fee = expected_fill(executed)
    assert (row["status"], row["exchange_order_id"]) == ("filled", str(executed["orderId"]))
    assert (row["qty"], row["quote"]) == (qty, float(executed["cummulativeQuoteQty"]))
    assert row["price"] == pytest.approx(price, rel=1e-12) and row["fee_quote"] == pytest.approx(fee, rel=1e-9)
    assert row["filled_at_ms"] == executed["transactTime"]
    assert standin.error_codes.count(-2013) >= 1 and order_posts(standin) == 1
    assert any("is filled at Binance" in message for message in order_alerts(db))  # the unknown alert is answered


def test_the_spot_user_stream_signature_is_checked(standin):  # noqa: F811
    stream = UserStreamReader(API_KEY, "not-the-secret", standin.api_url, standin.stream_url, market=SPOT,
                              ws_api_url=standin.ws_api_url)
    stream.start()
    try:
        wait_until(lambda: (SUBSCRIBE, 400) in standin.ws_api_requests, what="the subscription refused")
        assert -1022 in standin.error_codes and stream.connections == 0
    finally:
        stream.close()


def test_the_spot_user_stream_subscribes_again_after_the_connection_drops(standin, db, reader):  # noqa: F811
    wait_until(lambda: reader.connections, what="subscribed")
    assert standin.drop_streams() >= 1
    wait_until(lambda: reader.connections >= 2, timeout_s=20, what="subscribed again")
    broker = broker_for(standin, db, user_events=reader.events)
    broker.position()
    standin.order_query_lag_ms = standin.trade_query_lag_ms = HOUR_MS
    standin.fail("lost")
    order = place(broker, db, "BUY")  # its executionReports may have arrived before the broker asked

    def settled():
        broker.settle()
        return order_row(db, order)["status"] == "filled"

    wait_until(settled, what="settled from executionReports on the new subscription")
    assert order_posts(standin) == 1


def test_the_trade_list_and_the_balance_settle_a_spot_order_the_order_query_denies(standin, db):  # noqa: F811
    broker = broker_for(standin, db)
    broker.position()
    standin.order_query_lag_ms = HOUR_MS  # -2013 for an hour; the trade list is up to date
    standin.fail("lost")
    order = place(broker, db, "BUY")
    row = order_row(db, order)
    (executed,) = standin.orders_for(order["client_order_id"])
    qty, price, fee = expected_fill(executed)
    assert (row["status"], row["exchange_order_id"]) == ("filled", str(executed["orderId"]))
    assert (row["qty"], row["price"]) == (qty, pytest.approx(price, rel=1e-12))
    assert row["fee_quote"] == pytest.approx(fee, rel=1e-9)
    assert -2013 in standin.error_codes and order_posts(standin) == 1
    assert ("GET", "/api/v3/myTrades", 200) in standin.requests


def test_trades_of_another_order_on_the_account_settle_nothing(standin, db):  # noqa: F811
    broker = broker_for(standin, db)
    broker.position()
    standin.order_query_lag_ms = HOUR_MS
    standin.trade_query_lag_ms = HOUR_MS
    standin.fail("lost")
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "unknown"
    # Someone buys by hand on the same account; then the trade list catches up: two BUY orders since ours
    # was sent, and the trade rows carry no client id.
    with standin._lock:
        standin.balances["ETH"] += 1
        standin._spot_order({"symbol": "XRPETH", "type": "MARKET", "side": "BUY", "quantity": "50",
                             "newClientOrderId": "web_manual_1"})
    standin.trade_query_lag_ms = 0
    broker.settle()
    assert order_row(db, order)["status"] == "unknown" and order_posts(standin) == 1


def test_trades_that_the_base_balance_does_not_show_settle_nothing(standin, db):  # noqa: F811
    broker = broker_for(standin, db)
    broker.position()
    standin.order_query_lag_ms = standin.trade_query_lag_ms = HOUR_MS
    base_before = standin.balances.get("XRP", Decimal(0))
    standin.fail("lost")
    order = place(broker, db, "BUY")
    assert order_row(db, order)["status"] == "unknown"
    before = json.loads(store.get_meta(db, BASE_BEFORE_KEY))  # the balance the order was planned from
    assert before["client_order_id"] == order["client_order_id"] and Decimal(before["base_total"]) == base_before
    with db.conn:  # as if 7 XRP had arrived meanwhile: the balance's change no longer equals the trades
        store.set_meta(db, BASE_BEFORE_KEY, json.dumps({**before, "base_total": str(base_before - 7)}), 0)
    standin.trade_query_lag_ms = 0
    broker.settle()
    assert order_row(db, order)["status"] == "unknown"
    with db.conn:
        store.set_meta(db, BASE_BEFORE_KEY, json.dumps(before), 0)
    broker.settle()
    assert order_row(db, order)["status"] == "filled" and order_posts(standin) == 1


def test_the_spot_web_socket_api_host_follows_the_stream_host():
    assert endpoints(Settings(), SPOT).ws_api_url == "wss://ws-api.testnet.binance.vision/ws-api/v3"
    assert endpoints(Settings(testnet=False), SPOT).ws_api_url == "wss://ws-api.binance.com:443/ws-api/v3"
    assert endpoints(Settings(binance_stream_url="ws://127.0.0.1:9/"), SPOT).ws_api_url == \
        "ws://127.0.0.1:9/ws-api/v3"


def test_the_order_id_of_a_new_execution_report_ties_the_trades_to_the_order(standin, db, reader):  # noqa: F811
    wait_until(lambda: reader.connections, what="subscribed")
    updates = queue.Queue()  # what reaches the broker: the stream's NEW report only (its FILLED one is lost)
    broker = broker_for(standin, db, user_events=updates)
    broker.position()
    standin.order_query_lag_ms = HOUR_MS
    standin.fail("timeout", hold_s=2.5)
    order = place(broker, db, "BUY")
    wait_until(lambda: reader.events.qsize() >= 2, what="executionReports NEW and FILLED")
    new, filled = reader.events.get(), reader.events.get()
    assert (new["status"], filled["status"], new["clientOrderId"]) == ("NEW", "FILLED", order["client_order_id"])
    with standin._lock:  # a manual BUY on the account: two orders of the same side traded since ours was sent
        standin.balances["ETH"] += 1
        standin._spot_order({"symbol": "XRPETH", "type": "MARKET", "side": "BUY", "quantity": "50",
                             "newClientOrderId": "web_manual_2"})
    broker.settle()
    assert order_row(db, order)["status"] == "unknown"  # the trades alone cannot tell which order is ours
    updates.put(new)
    broker.settle()
    row = order_row(db, order)
    (executed,) = standin.orders_for(order["client_order_id"])
    qty, price, fee = expected_fill(executed)
    assert (row["status"], row["exchange_order_id"], row["qty"]) == ("filled", str(executed["orderId"]), qty)
    assert row["price"] == pytest.approx(price, rel=1e-12) and row["fee_quote"] == pytest.approx(fee, rel=1e-9)
    assert order_posts(standin) == 1


def report(client_id: str, execution: str, status: str, last_qty: str, filled: str, quote: str, trade_id: int = -1,
           commission: str = "0", asset: str | None = None) -> dict:
    """An executionReport as Binance's "Order Update" documents it (the fields ExecutionReports reads)."""
    return {"subscriptionId": 1, "event": {
        "e": "executionReport", "E": 1, "s": "XRPETH", "c": client_id, "S": "BUY", "o": "MARKET", "x": execution,
        "X": status, "i": 77, "l": last_qty, "z": filled, "L": "0.00130000", "n": commission, "N": asset,
        "T": 1570762800000, "t": trade_id, "Z": quote, "C": ""}}


@given(st.lists(st.tuples(st.integers(1, 10**9), st.booleans()), min_size=1, max_size=40),
       st.sampled_from(["FILLED", "EXPIRED", "CANCELED"]))
def test_execution_reports_give_the_order_whole_and_its_fees_only_when_every_trade_was_seen(trades, final):
    reports = ExecutionReports()
    assert reports.answer(report("ow1-1", "NEW", "NEW", "0", "0", "0"))["status"] == "NEW"
    filled = Decimal(0)
    answers = []
    for number, (qty_e8, is_seen) in enumerate(trades, start=1):
        qty = Decimal(qty_e8).scaleb(-8)
        filled += qty
        status = final if number == len(trades) else "PARTIALLY_FILLED"
        message = report("ow1-1", "TRADE", status, str(qty), str(filled), str(filled * 2), number, "0.1", "XRP")
        if is_seen or number == len(trades):  # a report lost while reconnecting; the final one arrives
            answers.append(reports.answer(message))
    *partial, answer = answers
    assert partial == [None] * len(partial)  # nothing until the order is final
    assert (answer["status"], answer["executedQty"], answer["cummulativeQuoteQty"]) == (
        final, str(filled), str(filled * 2))
    every_trade_seen = all(seen for _, seen in trades[:-1])
    assert ("fills" in answer) == every_trade_seen
    if every_trade_seen:
        assert [Decimal(f["qty"]) for f in answer["fills"]] == [Decimal(q).scaleb(-8) for q, _ in trades]
    again = reports.answer(report("ow1-1", "TRADE", "FILLED", "1", "1", "1", 99))  # the order was forgotten:
    assert [f["tradeId"] for f in again["fills"]] == [99]  # none of its earlier trades are left over
    assert reports.answer({"subscriptionId": 1, "event": {"e": "outboundAccountPosition", "B": []}}) is None

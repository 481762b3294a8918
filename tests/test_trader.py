"""The trading step: candles stored, decided, ordered, filled at the next open; restarts never repeat."""

from __future__ import annotations

import pytest

from core import events, store
from core.brokers import PaperBroker, client_order_id
from core.candles import Candle
from core.policy_loader import PolicyLoader
from core.trader import CandleWindow, Trader

MINUTE = 60_000
T0 = 1_570_752_000_000


def candle(i: int, close: float, open_: float | None = None) -> Candle:
    o = close if open_ is None else open_
    return Candle(T0 + i * MINUTE, o, max(o, close), min(o, close), close, 1.0, T0 + i * MINUTE + 59_999,
                  close, 1, 0.5, close / 2)


@pytest.fixture
def make_trader(db, data_dir):
    def make(strategy: str | None = None, clock=lambda: 1_700_000_000.0):
        if strategy is not None:
            (data_dir / "strategy.txt").write_text(strategy)
        broker = PaperBroker(db, "XRPETH", start_balance=1000.0, fee_rate=0.001)
        return Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=clock)
    return make


def rows(db, sql, *args):
    return db.execute(sql, args).fetchall()


def test_decision_fills_at_the_next_candles_open_with_the_fee(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\nIF CLOSE < 5 THEN SELL\n")
    trader.on_candle(candle(0, 8))
    trader.on_candle(candle(1, 11))  # BUY decided here ...
    assert rows(db, "SELECT side, status FROM orders") == [("BUY", "pending")]
    trader.on_candle(candle(2, 12, open_=10.5))  # ... filled at this candle's open
    assert rows(db, "SELECT side, status, price, filled_at_ms FROM orders") == [("BUY", "filled", 10.5, T0 + 2 * MINUTE)]
    quote, base, entry = trader.broker.account()
    assert (quote, entry) == (0.0, 10.5) and base == pytest.approx(1000 / 10.5 * 0.999)
    trader.on_candle(candle(3, 4))  # SELL decided
    trader.on_candle(candle(4, 4, open_=4.5))
    quote, base, _ = trader.broker.account()
    assert base == 0 and quote == pytest.approx(1000 / 10.5 * 0.999 * 4.5 * 0.999)
    assert trader.broker.position().side == "flat"


def test_a_rule_that_stays_true_does_not_buy_again(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\n")
    for i, price in enumerate([11, 12, 13, 14, 15]):
        trader.on_candle(candle(i, price))
    assert rows(db, "SELECT count(*) FROM orders") == [(1,)]
    assert [r[0] for r in rows(db, "SELECT action FROM decisions ORDER BY id")] == ["BUY"] * 5
    assert [r[0] for r in rows(db, "SELECT position_before FROM decisions ORDER BY id")] == \
        ["flat", "long", "long", "long", "long"]  # filled at candle 1's open, before its decision


def test_order_carries_a_client_id_derived_from_its_decision(db, make_trader):
    trader = make_trader("IF CLOSE > 10 THEN BUY\n")
    trader.on_candle(candle(0, 11))
    (decision_id,) = rows(db, "SELECT id FROM decisions")[0]
    assert rows(db, "SELECT client_order_id FROM orders") == [(client_order_id(decision_id),)]


def test_restart_resumes_warm_and_never_decides_or_orders_twice(db, make_trader, tmp_path, data_dir):
    strategy = "IF MA3 > MA5 THEN BUY\nIF MA3 < MA5 THEN SELL\n"
    prices = [10, 9, 8, 7, 6, 7, 8, 9, 10, 11, 10, 9, 8, 7]
    first = make_trader(strategy)
    for i, p in enumerate(prices[:9]):
        first.on_candle(candle(i, p))
    before = rows(db, "SELECT * FROM decisions ORDER BY id")

    second = make_trader()  # a new process: same database and strategy file
    assert second.resume() == T0 + 8 * MINUTE
    assert len(second.window) == 9  # indicators are warm at once
    for i, p in enumerate(prices):  # the replay starts from the beginning of the file again
        second.on_candle(candle(i, p))
    after = rows(db, "SELECT * FROM decisions ORDER BY id")
    assert after[:9] == before and len(after) == len(prices)

    # The same candles without a restart, in another database, give the same decisions and orders.
    other = store.connect(tmp_path / "other.db")
    straight = Trader(other, "XRPETH", PolicyLoader(data_dir / "strategy.txt"),
                      PaperBroker(other, "XRPETH", start_balance=1000.0), clock=lambda: 1_700_000_000.0)
    for i, p in enumerate(prices):
        straight.on_candle(candle(i, p))
    query = "SELECT candle_open_time_ms, action, target FROM decisions ORDER BY id"
    assert rows(db, query) == rows(other, query)
    query = "SELECT side, status, price FROM orders ORDER BY id"
    assert rows(db, query) == rows(other, query) and len(rows(db, query)) >= 2


def test_restart_fills_an_order_that_was_waiting_for_the_next_price(db, make_trader):
    first = make_trader("IF CLOSE > 10 THEN BUY\n")
    first.on_candle(candle(0, 11))
    second = make_trader()
    second.resume()
    second.on_candle(candle(1, 12, open_=11.5))
    assert rows(db, "SELECT status, price FROM orders") == [("filled", 11.5)]


def test_strategy_change_is_used_on_the_next_candle_and_a_broken_one_is_not(db, make_trader, data_dir):
    trader = make_trader("IF CLOSE > 0 THEN BUY\n")
    reloaded, invalid = [], []
    events.strategy_reloaded.connect(lambda sender, policy: reloaded.append(policy.version), weak=False)
    events.strategy_invalid.connect(lambda sender, error: invalid.append(error.line), weak=False)
    try:
        trader.on_candle(candle(0, 5))
        (data_dir / "strategy.txt").write_text("IF CLOSE > 0 THEN SELL\n")
        trader.on_candle(candle(1, 5))
        (data_dir / "strategy.txt").write_text("IF CLOSE > 0 THEN SEL\n")
        trader.on_candle(candle(2, 5))
    finally:
        events.strategy_reloaded.receivers.clear()
        events.strategy_invalid.receivers.clear()
    assert [r[0] for r in rows(db, "SELECT action FROM decisions ORDER BY id")] == ["BUY", "SELL", "SELL"]
    assert len(reloaded) == 2 and invalid == [1]
    assert rows(db, "SELECT value FROM meta WHERE key = 'strategy_error'")[0][0].startswith("line 1, column 19")


def test_candle_window_keeps_the_newest_candles_in_order():
    window = CandleWindow(capacity=5)
    for i in range(23):
        window.append(candle(i, float(i)))
    assert window.arrays()["close"].tolist() == [18.0, 19.0, 20.0, 21.0, 22.0]
    assert window.last_open_time_ms == T0 + 22 * MINUTE


def test_a_failing_event_receiver_never_stops_trading(db, make_trader):
    trader = make_trader("IF CLOSE > 0 THEN BUY\n")

    def broken(sender, **kwargs):
        raise RuntimeError("metrics are down")

    events.decision_made.connect(broken)
    try:
        trader.on_candle(candle(0, 5))
        trader.on_candle(candle(1, 5))
    finally:
        events.decision_made.disconnect(broken)
    assert rows(db, "SELECT count(*) FROM decisions") == [(2,)]


def test_a_fixed_strategy_is_announced_even_at_the_same_version_and_a_new_breakage_again(db, make_trader, data_dir):
    good = "IF CLOSE > 0 THEN BUY\n"
    trader = make_trader(good)
    seen = []
    events.strategy_reloaded.connect(lambda sender, policy: seen.append(("reloaded", policy.version)), weak=False)
    events.strategy_invalid.connect(lambda sender, error: seen.append(("invalid", error.line)), weak=False)
    try:
        version = trader.check_strategy().version
        for text in ("IF CLOSE > 0 THEN SELLX\n", good, "\nIF CLOSE > THEN BUY\n", good):  # sizes differ: seen at once
            (data_dir / "strategy.txt").write_text(text)
            assert trader.check_strategy().version == version  # the good text runs all along
        assert trader.check_strategy().version == version  # nothing changed: nothing announced
    finally:
        events.strategy_reloaded.receivers.clear()
        events.strategy_invalid.receivers.clear()
    assert seen == [("reloaded", version), ("invalid", 1), ("reloaded", version), ("invalid", 2), ("reloaded", version)]
    assert rows(db, "SELECT value FROM meta WHERE key = 'strategy_error'") == [("",)]

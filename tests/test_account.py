"""The account in money: round trips, P&L and fees from the fills, checked against hand-computed figures."""

from __future__ import annotations

import pytest

from core import account, brokers

SYMBOL = "XRPETH"
DAY_MS = 86_400_000
T0 = 1_800_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight


def trade(db, broker, side, price, time_ms, reason="strategy"):
    """A decision, its order, and the paper fill at `price`, as the trader does it."""
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [SYMBOL, time_ms, side, "long" if side == "BUY" else "flat",
                                            broker.position().side, reason, time_ms]).lastrowid
        broker.submit(decision_id, side, time_ms)
        broker.fill_pending(price, time_ms)


@pytest.fixture
def paper(db):
    return brokers.PaperBroker(db, SYMBOL, start_balance=1000.0, fee_rate=0.001)


def test_round_trips_pnl_and_fees_match_a_hand_computation(db, paper):
    trade(db, paper, "BUY", 2.0, T0 + 60_000)
    trade(db, paper, "SELL", 2.2, T0 + 120_000, reason="manual")
    trade(db, paper, "BUY", 2.5, T0 + DAY_MS + 60_000)
    first, second = account.round_trips(account.filled_orders(db, SYMBOL))
    # 1000 / 2.0 = 500 bought, less 0.1 %: 499.5; sold at 2.2: 1098.9 gross, 1097.8011 after 1.0989 fee
    assert first.qty == pytest.approx(499.5) and first.exit_quote == pytest.approx(1097.8011)
    assert first.pnl == pytest.approx(97.8011) and first.pnl_pct == pytest.approx(9.78011)
    assert first.fees == pytest.approx(1.0 + 1.0989)
    assert (first.exit_reason, second.exit_time_ms, second.pnl) == ("manual", None, None)
    # second entry: 1097.8011 / 2.5 * 0.999 = 438.68131956
    now = T0 + DAY_MS + 3_600_000
    money = account.account(db, SYMBOL, 2.4, now, start_balance=1000.0)
    assert money.cash == pytest.approx(0.0) and money.position_qty == pytest.approx(438.68131956)
    assert money.equity == pytest.approx(438.68131956 * 2.4)
    assert money.realized_pnl == pytest.approx(97.8011) and money.realized_pnl_today == 0  # closed yesterday
    assert money.fees == pytest.approx(2.0989 + 1.0978011) and money.fees_today == pytest.approx(1.0978011)
    assert money.trades == 1


def test_realised_pnl_adds_up_to_the_paper_balance_change(db, paper):
    prices = [2.0, 2.2, 1.9, 1.7, 1.71, 1.72, 3.0, 2.95]
    for i, price in enumerate(prices):
        trade(db, paper, "BUY" if i % 2 == 0 else "SELL", price, T0 + i * 60_000)
    money = account.account(db, SYMBOL, 2.95, T0 + DAY_MS - 1, start_balance=1000.0)
    (balance,) = db.execute("SELECT quote_balance FROM paper_accounts").fetchone()
    assert money.cash == balance and money.position_qty == 0 and money.trades == 4
    assert 1000.0 + money.realized_pnl == pytest.approx(balance, rel=1e-12)
    assert money.realized_pnl_today == pytest.approx(money.realized_pnl)


def test_equity_curve_steps_at_each_fill_and_ends_at_the_last_price(db, paper):
    trade(db, paper, "BUY", 2.0, T0 + 60_000)
    trade(db, paper, "SELL", 2.2, T0 + 120_000)
    curve = account.equity_curve(account.filled_orders(db, SYMBOL), 1000.0, 2.3, T0 + 180_000)
    assert [p["time"] for p in curve] == [T0 // 1000, (T0 + 60_000) // 1000, (T0 + 120_000) // 1000,
                                          (T0 + 180_000) // 1000]
    assert [p["value"] for p in curve] == pytest.approx([1000.0, 499.5 * 2.0, 1097.8011, 1097.8011])


def test_an_empty_account_is_its_start_balance(db, paper):
    money = account.account(db, SYMBOL, None, T0, start_balance=1000.0)
    assert (money.cash, money.position_value, money.equity, money.realized_pnl, money.fees) == (1000.0, 0.0, 1000.0, 0, 0)
    assert account.equity_curve([], 1000.0, 2.0, T0) == [{"time": T0 // 1000, "value": 1000.0}]


from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st  # noqa: E402


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prices=st.lists(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, max_size=40),
       fee_rate=st.sampled_from([0.0, 0.00075, 0.001, 0.01]))
def test_round_trips_always_add_up_to_the_paper_balance(tmp_path_factory, prices, fee_rate):
    # Prices over twelve orders of magnitude, long chains of trades: the P&L of the round trips must
    # equal what the paper broker's own balance did, trip by trip.
    from core import store

    database = store.connect(tmp_path_factory.mktemp("prop") / "omniwise.db")
    try:
        broker = brokers.PaperBroker(database, SYMBOL, start_balance=1000.0, fee_rate=fee_rate)
        balances, buys = [1000.0], 0
        for i, price in enumerate(prices):
            side = "BUY" if i % 2 == 0 else "SELL"
            trade(database, broker, side, price, T0 + i * 60_000)
            (status,) = database.execute("SELECT status FROM orders ORDER BY id DESC LIMIT 1").fetchone()
            if status == "filled":  # a chain of losses can leave dust the broker will not sell: rejected
                buys += side == "BUY"
                if side == "SELL":
                    balances.append(broker.account()[0])
        trips = account.round_trips(account.filled_orders(database, SYMBOL))
        assert len(trips) == buys
        closed = [t for t in trips if t.exit_time_ms is not None]
        assert len(closed) == len(balances) - 1 and len(trips) - len(closed) <= 1
        for trip, before, after in zip(closed, balances, balances[1:]):
            assert trip.pnl == pytest.approx(after - before, rel=1e-9, abs=1e-12)
            assert trip.fees >= 0 and (fee_rate == 0 or trip.fees > 0)
    finally:
        database.close()


def test_a_close_sent_in_parts_is_one_round_trip_at_the_parts_average_price():
    # A futures close above the market order maximum goes as 100 + 100 + 50 (core/binance/futures.py).
    def fill(order_id, side, qty, price, reason, fee=0.0):
        quote = qty * price - fee if side == "SELL" else qty * price + fee
        return {"id": order_id, "side": side, "qty": qty, "price": price, "quote": quote, "fee_quote": fee,
                "filled_at_ms": order_id * 60_000, "reason": reason}

    orders = [fill(1, "BUY", 250, 2.0, "strategy", fee=0.5),
              fill(2, "SELL", 100, 1.9, "stop_loss", fee=0.19), fill(3, "SELL", 100, 1.8, "stop_loss:part2", fee=0.18),
              fill(4, "SELL", 50, 1.7, "stop_loss:part3", fee=0.085),
              fill(5, "BUY", 10, 1.0, "strategy")]
    closed, still_open = account.round_trips(orders)
    assert (closed.qty, closed.exit_time_ms, closed.exit_reason) == (250, 4 * 60_000, "stop_loss")
    assert closed.exit_price == pytest.approx((100 * 1.9 + 100 * 1.8 + 50 * 1.7) / 250)
    assert closed.pnl == pytest.approx((190 - 0.19 + 180 - 0.18 + 85 - 0.085) - (500 + 0.5))
    assert closed.fees == pytest.approx(0.5 + 0.19 + 0.18 + 0.085)
    assert (still_open.side, still_open.qty, still_open.exit_time_ms) == ("long", 10, None)


def test_the_account_is_read_again_as_soon_as_a_fill_lands(db, paper):
    trade(db, paper, "BUY", 2.0, T0)
    first = account.account(db, SYMBOL, 2.0, T0)
    assert account.account(db, SYMBOL, 2.0, T0) == first  # unchanged fills: the same figures
    trade(db, paper, "SELL", 3.0, T0 + 60_000)
    after = account.account(db, SYMBOL, 3.0, T0 + 60_000)
    assert (first.trades, after.trades) == (0, 1)
    assert after.realized_pnl == pytest.approx(1000 * 0.999 / 2.0 * 3.0 * 0.999 - 1000)
    with db.conn:  # a fee corrected on an order already filled (a BNB fee priced later) is seen too
        db.execute("UPDATE orders SET fee_quote = fee_quote + 1 WHERE side = 'SELL'")
    assert account.account(db, SYMBOL, 3.0, T0 + 60_000).fees == pytest.approx(after.fees + 1)

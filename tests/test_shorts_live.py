"""Shorts outside the backtest: the heartbeat's table of signal words against positions, follow mode, the
migration of the signal ledger and the risk state, and spot refusing SHORT (worker and editor)."""

from __future__ import annotations

import sqlite3

import pytest

from core import store
from core.brokers import PaperBroker, Position
from core.candles import Candle
from core.config import Settings
from core.dsl import StrategyError, compile_strategy
from core.health import heartbeat
from core.health.heartbeat import MISMATCH, OK, HeartbeatSettings, SignalView
from core.policy_loader import PolicyLoader
from core.trader import Trader

NOW = 1_800_000_000_000
MINUTE = 60_000
T0 = 1_570_752_000_000
SPOT_REFUSAL = Settings(broker="binance-spot").short_refusal

# -- the heartbeat: every word against every side (DESIGN.md "External signals and the heartbeat") ---------

# Written out by hand: BUY expects long, SHORT short, FLAT flat, SELL anything but long.
TABLE = {
    ("BUY", "long"): OK, ("BUY", "flat"): MISMATCH, ("BUY", "short"): MISMATCH,
    ("SELL", "long"): MISMATCH, ("SELL", "flat"): OK, ("SELL", "short"): OK,
    ("SHORT", "long"): MISMATCH, ("SHORT", "flat"): MISMATCH, ("SHORT", "short"): OK,
    ("FLAT", "long"): MISMATCH, ("FLAT", "flat"): OK, ("FLAT", "short"): MISMATCH,
}


@pytest.mark.parametrize("word, side", sorted(TABLE))
def test_the_heartbeat_knows_long_flat_and_short(word, side):
    position = Position(side, 0.0 if side == "flat" else 2.0, None if side == "flat" else 100.0)
    signal = SignalView(word, NOW - 120_000, NOW - 120_000, "TradingView")
    verdict = heartbeat.reconcile(signal, position, NOW, HeartbeatSettings(ttl_s=600, grace_s=90))
    assert verdict.state == TABLE[word, side]
    assert f"signal is {word}" in verdict.reason and side in verdict.reason


@pytest.mark.parametrize("word, stored", [("short", "SHORT"), ("Flat", "FLAT"), ("EXIT", "FLAT"), ("long", "BUY"),
                                          ("sell", "SELL")])
def test_the_webhook_stores_each_word_as_the_status_shows_it(client, db, word, stored):
    token = store.ensure_secret(db, "webhook_token")
    answer = client.post(f"/api/v1/external-signal/{token}", data=word, content_type="text/plain")
    assert answer.status_code == 200, answer.json
    assert db.execute("SELECT signal FROM external_signals").fetchone() == (stored,)
    assert client.get(f"/api/v1/status?token={token}").json["signal"]["signal"] == stored


def test_the_migration_keeps_the_ledger_and_lets_short_and_flat_in(tmp_path):
    db = store.open_db(tmp_path / "old.db")
    store.migrations.apply(db, stop_before="m010_shorts")
    rows = [(1, 10, "TradingView", "BUY", 10, "XRPETH", "127.0.0.1", "buy", "accepted"),
            (2, 20, "bot", "SELL", 20, "XRPETH", None, '{"signal": "flat"}', "accepted"),
            (3, 30, "bot", None, None, None, None, "hold", 'rejected: signal "hold"')]
    db.conn.executemany("INSERT INTO external_signals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # before: the CHECK refuses the new words
        db.conn.execute("INSERT INTO external_signals(received_at_ms, signal, outcome) VALUES (1, 'SHORT', 'x')")
    db.conn.rollback()
    store.migrate(db)
    assert db.execute("SELECT * FROM external_signals ORDER BY id").fetchall() == rows
    db.conn.execute("INSERT INTO external_signals(received_at_ms, signal, outcome) VALUES (40, 'SHORT', 'accepted')")
    db.conn.execute("INSERT INTO external_signals(received_at_ms, signal, outcome) VALUES (50, 'FLAT', 'accepted')")
    with pytest.raises(sqlite3.IntegrityError):
        db.conn.execute("INSERT INTO external_signals(received_at_ms, signal, outcome) VALUES (1, 'HOLD', 'x')")
    with pytest.raises(sqlite3.IntegrityError):  # the once-only index came back
        db.conn.execute("INSERT INTO external_signals VALUES (9, 10, 'TradingView', 'BUY', 10, 'XRPETH', NULL, '', "
                        "'accepted')")
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                            "tbl_name = 'external_signals'").fetchall()}
    assert {"external_signals_once", "external_signals_latest", "external_signals_latest_by_source"} <= indexes
    db.close()


# -- follow mode ------------------------------------------------------------------------------------------

class SpotLikePaper(PaperBroker):
    """The paper account with a spot exchange's limit: it cannot short."""

    can_short = False


def follower(db, data_dir, broker_class=PaperBroker) -> Trader:
    (data_dir / "strategy.txt").write_text("IF CLOSE < 0 THEN BUY\n")  # never decides anything itself
    broker = broker_class(db, "XRPETH", start_balance=1000.0, fee_rate=0.001)
    trader = Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: NOW / 1000)
    trader.on_candle(Candle(T0, 100, 100, 100, 100, 1.0, T0 + 59_999, 100, 1, 0.5, 50))
    return trader


def fill_at(trader, price: float) -> None:
    trader._fill_pending(price, T0 + MINUTE)


def test_follow_goes_short_on_short_and_flips_with_a_close_then_an_open(db, data_dir):
    trader = follower(db, data_dir)
    trader.follow("BUY", "follow mode: test")
    fill_at(trader, 100.0)
    assert trader.broker.position().side == "long"
    trader.window.last_open_time_ms += MINUTE  # a new candle: one follow decision per candle
    order = trader.follow("SHORT", "follow mode: test")
    assert (order["side"], order["target"]) == ("SELL", "short")
    fill_at(trader, 110.0)
    assert trader.broker.position().side == "short"
    rows = db.execute("SELECT d.reason, d.target, o.side, o.target FROM orders o JOIN decisions d "
                      "ON d.id = o.decision_id ORDER BY o.id").fetchall()
    assert rows == [("follow", "long", "BUY", "long"), ("follow:close", "flat", "SELL", "flat"),
                    ("follow", "short", "SELL", "short")]
    trader.window.last_open_time_ms += MINUTE
    assert trader.follow("SELL", "follow mode: test") is None  # SELL asks only for "not long": short is fine
    order = trader.follow("FLAT", "follow mode: test")
    assert (order["side"], order["target"]) == ("BUY", "flat")
    fill_at(trader, 105.0)
    assert trader.broker.position().side == "flat"


def test_follow_on_a_broker_that_cannot_short_closes_the_long_and_alerts_once(db, data_dir):
    trader = follower(db, data_dir, SpotLikePaper)
    trader.follow("BUY", "follow mode: test")
    fill_at(trader, 100.0)
    trader.window.last_open_time_ms += MINUTE
    order = trader.follow("SHORT", "follow mode: test")
    assert (order["side"], order["target"]) == ("SELL", "flat")
    fill_at(trader, 101.0)
    trader.window.last_open_time_ms += MINUTE
    assert trader.follow("SHORT", "follow mode: test") is None  # flat: as near to short as spot gets
    messages = [m for (m,) in db.execute("SELECT message FROM alerts WHERE state = 'cannot_short'").fetchall()]
    assert messages == ["FOLLOW: the signal is SHORT but paper cannot short XRPETH; the long is closed"]
    assert trader.broker.position().side == "flat"


# -- spot refuses SHORT -------------------------------------------------------------------------------------

def test_only_binance_spot_refuses_short():
    assert Settings(broker="paper").short_refusal is None and Settings(broker="binance-futures").short_refusal is None
    with pytest.raises(StrategyError) as error:
        compile_strategy("IF CLOSE > 1 THEN BUY\n  IF CLOSE < 1 THEN short\n", SPOT_REFUSAL)
    (problem,) = error.value.errors
    assert (problem.line, problem.column) == (2, 21) and "binance-spot cannot" in problem.message


def test_the_worker_under_spot_keeps_the_last_good_strategy_and_alerts(db, data_dir):
    path = data_dir / "strategy.txt"
    path.write_text("IF CLOSE > 1 THEN BUY\n")
    loader = PolicyLoader(path, SPOT_REFUSAL)
    trader = Trader(db, "XRPETH", loader, SpotLikePaper(db, "XRPETH"), clock=lambda: NOW / 1000)
    good = trader.check_strategy().version
    path.write_text("IF CLOSE > 1 THEN BUY\nIF CLOSE < 1 THEN SHORT\n")
    seen = []
    from core import events
    events.strategy_invalid.connect(lambda sender, error: seen.append(str(error)), sender=trader, weak=False)
    assert trader.check_strategy().version == good
    assert seen and "SHORT needs a broker that can short" in seen[0]
    assert "SHORT needs a broker that can short" in store.get_meta(db, "strategy_error")


@pytest.fixture
def settings(data_dir):
    return Settings(data_dir=data_dir, broker="binance-spot")


def test_the_editor_under_spot_says_why_before_saving(operator, settings):
    text = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SHORT\n"
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    fragment = answer.get_data(as_text=True)
    assert "line 2, column 19</a>: SHORT needs a broker that can short: OMNIWISE_BROKER=binance-spot cannot" in fragment
    before = settings.strategy_path.read_text()
    saved = operator.post("/admin/algo", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert saved.status_code == 422 and settings.strategy_path.read_text() == before


def test_a_spot_worker_refuses_a_strategy_with_short_alerts_and_orders_nothing(data_dir):
    from tests.exchange.standin import DAY_START_MS, start_standin
    from tests.processes import query, stop_worker, wait_until
    from tests.test_binance_worker import start_worker

    exchange = start_standin(start_ms=DAY_START_MS + 3 * 3_600_000, speed=300)
    try:
        (data_dir / "strategy.txt").write_text("IF CLOSE > OPEN THEN BUY\nIF CLOSE < OPEN THEN SHORT\n")
        worker = start_worker(data_dir, exchange)  # binance-spot
        try:
            ((state, reason),) = wait_until(lambda: query(data_dir, "SELECT state, reason FROM heartbeat WHERE "
                                                                    "subject = 'strategy'"), worker, timeout_s=60,
                                            what="the strategy judged")
            def newest() -> int:
                return query(data_dir, "SELECT max(open_time_ms) FROM candles")[0][0] or 0
            first = wait_until(newest, worker, timeout_s=60, what="candles")
            wait_until(lambda: newest() >= first + 300_000, worker, timeout_s=60, what="five more minutes")
        finally:
            stop_worker(worker)
        assert state == "invalid" and "line 2, column 22: SHORT needs a broker that can short" in reason
        assert exchange.orders == [] and query(data_dir, "SELECT count(*) FROM orders") == [(0,)]
        (message,) = [m for (m,) in query(data_dir, "SELECT message FROM alerts WHERE subject = 'strategy'")]
        assert "SHORT needs a broker that can short" in message
    finally:
        exchange.close()

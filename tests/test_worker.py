"""End to end: worker.py replays real trades, trades them on paper, and survives kill -9."""

from __future__ import annotations

import os
import signal

import pytest

from core.candles import candles_from_ticks, candles_to_arrays
from core.dsl import Action, compile_strategy
from core.feeds import read_agg_trades
from core.fills import buy_all, sell_all
from tests.conftest import SHARED_DATA
from tests.processes import AlertSink, query, start_worker, stop_worker, wait_until

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
KLINES = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"  # 1,440 rows: the same day's klines
STRATEGY = "IF EMA(5) CROSSES ABOVE SMA(20) THEN BUY\nIF EMA(5) CROSSES BELOW SMA(20) THEN SELL\n"


def start(data_dir, speed: float):
    return start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=speed, symbol="XRPETH", paper_balance=10)


def expected_trades():
    """Candles, actions and paper fills for the replay file, computed here from the library parts."""
    ticks = list(read_agg_trades(AGG_TRADES))
    last_open = ticks[-1].time_ms - ticks[-1].time_ms % 60_000
    candles = list(candles_from_ticks(ticks, until_ms=last_open + 60_000))
    actions = compile_strategy(STRATEGY).decide_all(candles_to_arrays(candles))
    fills, long, quote, base = [], False, 10.0, 0.0
    for i, action in enumerate(actions[:-1]):
        nxt = candles[i + 1]
        if action == Action.BUY and not long:
            fill = buy_all(quote, nxt.open, 0.001)
            quote, base, long = 0.0, fill.qty, True
        elif action == Action.SELL and long:
            fill = sell_all(base, nxt.open, 0.001)
            quote, base, long = fill.quote, 0.0, False
        else:
            continue
        fills.append((fill.side, fill.price, nxt.open_time_ms))
    return candles, actions, fills, quote, base


def test_worker_trades_a_replay_exactly_as_the_policy_decides(data_dir):
    (data_dir / "strategy.txt").write_text(STRATEGY)
    candles, actions, fills, quote, base = expected_trades()
    worker = start(data_dir, speed=0)
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions") == [(len(candles),)], worker,
               what="every candle decided")
    stop_worker(worker)
    assert query(data_dir, "SELECT open_time_ms, close FROM candles ORDER BY 1") == \
        [(c.open_time_ms, c.close) for c in candles]
    assert [a for (a,) in query(data_dir, "SELECT action FROM decisions ORDER BY candle_open_time_ms")] == \
        [Action(a).name for a in actions]
    orders = query(data_dir, "SELECT side, price, filled_at_ms FROM orders WHERE status = 'filled' ORDER BY id")
    assert orders == fills and len(fills) >= 10
    (account,) = query(data_dir, "SELECT quote_balance, base_qty FROM paper_accounts")
    assert account == pytest.approx((quote, base))


def test_kill_9_mid_replay_then_restart_never_executes_a_decision_twice(data_dir):
    (data_dir / "strategy.txt").write_text(STRATEGY)
    candles, actions, fills, quote, base = expected_trades()
    worker = start(data_dir, speed=20_000)  # the day's replay takes about four seconds
    wait_until(lambda: (query(data_dir, "SELECT count(*) FROM decisions") or [(0,)])[0][0] >= 300, worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    done_before = query(data_dir, "SELECT count(*) FROM decisions")[0][0]
    assert 300 <= done_before < len(candles)  # killed in the middle of the day

    worker = start(data_dir, speed=0)
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions") == [(len(candles),)], worker,
               what="every candle decided")
    stop_worker(worker)
    assert query(data_dir, "SELECT count(DISTINCT candle_open_time_ms), count(*) FROM decisions") == \
        [(len(candles), len(candles))]
    assert query(data_dir, "SELECT count(DISTINCT decision_id), count(*) FROM orders")[0] == (len(fills), len(fills))
    orders = query(data_dir, "SELECT side, price, filled_at_ms FROM orders WHERE status = 'filled' ORDER BY id")
    assert orders == fills
    (account,) = query(data_dir, "SELECT quote_balance, base_qty FROM paper_accounts")
    assert account == pytest.approx((quote, base))


def test_worker_stays_up_after_the_replay_and_keeps_its_beacon(data_dir):
    worker = start(data_dir, speed=0)
    first = wait_until(lambda: query(data_dir, "SELECT value FROM meta WHERE key = 'worker_beacon_ms'"), worker)
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM candles")[0][0] > 1000, worker)
    assert worker.poll() is None  # the file has ended; the worker has not
    later = wait_until(lambda: (lambda v: v if v != first else None)(
        query(data_dir, "SELECT value FROM meta WHERE key = 'worker_beacon_ms'")), worker, timeout_s=15, what="a newer beacon")
    assert int(later[0][0]) > int(first[0][0])
    stop_worker(worker)


def write_strategy(data_dir, text):
    tmp = data_dir / "strategy.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, data_dir / "strategy.txt")  # as the editor saves


def test_strategy_alerts_have_a_whole_life_broken_fixed_broken_again(data_dir):
    write_strategy(data_dir, STRATEGY)
    sink = AlertSink()
    worker = start_worker(data_dir, replay_file=KLINES, replay_speed=0, symbol="XRPETH", alert_urls=sink.url)
    try:
        def strategy_alerts():
            return [m for m in sink.messages() if m.startswith("STRATEGY")]

        def state():
            return query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'strategy'")

        wait_until(lambda: state() == [("valid",)], worker, what="the strategy state valid")
        write_strategy(data_dir, "IF " + "-" * 330 + "1 > 0 THEN BUY\n")  # a text that used to crash the worker
        wait_until(lambda: len(strategy_alerts()) == 1, worker, timeout_s=30, what="a failure alert")
        write_strategy(data_dir, STRATEGY)  # the very text that ran before: the same version again
        wait_until(lambda: len(strategy_alerts()) == 2, worker, timeout_s=30, what="a recovery alert")
        assert state() == [("valid",)]
        write_strategy(data_dir, "IF MA1" + "0" * 400 + " > 0 THEN BUY\n")
        wait_until(lambda: len(strategy_alerts()) == 3, worker, timeout_s=30, what="a second failure alert")
        assert state() == [("invalid",)]
        wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions") == [(1440,)], worker,
                   what="every candle decided meanwhile")
    finally:
        stop_worker(worker)
        sink.close()
    failure, recovery, again = strategy_alerts()
    assert failure.startswith("STRATEGY FAILURE: ") and "is invalid, still running version" in failure
    assert "line 1, column 67: the condition is nested more than 64 levels deep" in failure
    assert recovery.startswith("STRATEGY RECOVERED: strategy version ") and "2 rules" in recovery
    assert again.startswith("STRATEGY FAILURE: ") and "the period of MA has more than 20 digits" in again
    changes = query(data_dir, "SELECT old_state, new_state FROM heartbeat_changes WHERE subject = 'strategy' "
                              "ORDER BY id")
    assert changes == [(None, "valid"), ("valid", "invalid"), ("invalid", "valid"), ("valid", "invalid")]


def test_deleting_the_strategy_file_while_trading_means_hold(data_dir):
    write_strategy(data_dir, "IF CLOSE > 0 THEN BUY\n")  # BUY on every candle while the file exists
    worker = start_worker(data_dir, replay_file=KLINES, replay_speed=3000, symbol="XRPETH", paper_balance=10)
    try:
        wait_until(lambda: (query(data_dir, "SELECT count(*) FROM decisions") or [(0,)])[0][0] >= 20, worker)
        (data_dir / "strategy.txt").unlink()
        wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions WHERE action = 'HOLD'")[0][0] >= 20, worker,
                   what="decisions after the file was deleted")
    finally:
        stop_worker(worker)
    actions = [a for (a,) in query(data_dir, "SELECT action FROM decisions ORDER BY candle_open_time_ms")]
    first_hold = actions.index("HOLD")
    assert first_hold >= 20 and set(actions[:first_hold]) == {"BUY"} and set(actions[first_hold:]) == {"HOLD"}
    # HOLD keeps the position: bought once, never sold.
    assert query(data_dir, "SELECT side, status FROM orders") == [("BUY", "filled")]
    assert query(data_dir, "SELECT state, reason FROM heartbeat WHERE subject = 'strategy'")[0] == \
        ("valid", f"{data_dir / 'strategy.txt'} is missing: HOLD on every candle")


@pytest.mark.parametrize("replay_file", [KLINES, AGG_TRADES], ids=["klines", "aggTrades"])
def test_restarting_after_the_replay_ended_invents_no_candle(data_dir, replay_file):
    from core.config import Settings
    from core.feeds import ReplayFeed
    from worker import Worker

    write_strategy(data_dir, STRATEGY)
    settings = Settings(data_dir=data_dir, symbol="XRPETH", replay_file=replay_file, replay_speed=0)
    counts = []
    for _ in range(3):  # the first run, then two restarts once the file has ended
        worker = Worker(settings, clock=lambda: 1_700_000_000.0)
        worker.trader.resume()
        worker.trade(ReplayFeed(replay_file, speed=0))
        counts.append(query(data_dir, "SELECT count(*), count(DISTINCT candle_open_time_ms) FROM decisions")[0])
        worker.db.close()
    # Klines: the file's 1,440 rows. Trades: the minutes from the first trade's to the last trade's.
    minutes = 1440 if replay_file == KLINES else len(expected_trades()[0])
    assert counts == [(minutes, minutes)] * 3
    (last_trade_ms,) = query(data_dir, "SELECT max(open_time_ms) FROM candles")[0]
    assert last_trade_ms == (1_570_838_340_000 if replay_file == KLINES else expected_trades()[0][-1].open_time_ms)


def test_a_worker_started_on_a_text_that_used_to_crash_it_runs_holds_and_alerts(data_dir):
    write_strategy(data_dir, "IF " + "+".join(["1"] * 330) + " > 0 THEN BUY\n")  # RecursionError on every start
    worker = start_worker(data_dir, replay_file=KLINES, replay_speed=0, symbol="XRPETH")
    try:
        wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions") == [(1440,)], worker,
                   what="every candle decided")
        alerts = query(data_dir, "SELECT message FROM alerts WHERE subject = 'strategy'")
    finally:
        stop_worker(worker)
    assert len(alerts) == 1 and alerts[0][0].startswith("STRATEGY FAILURE: ")
    assert "line 1, column 4: a calculation has at most 32 terms, this one has 330" in alerts[0][0]
    assert query(data_dir, "SELECT DISTINCT action, rule_text FROM decisions") == [("HOLD", None)]
    assert query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'strategy'") == [("invalid",)]

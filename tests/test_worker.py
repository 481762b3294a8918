"""End to end: worker.py replays real trades, trades them on paper, and survives kill -9."""

from __future__ import annotations

import signal

import pytest

from core.candles import candles_from_ticks, candles_to_arrays
from core.dsl import Action, compile_strategy
from core.feeds import read_agg_trades
from core.fills import buy_all, sell_all
from tests.conftest import SHARED_DATA
from tests.processes import query, start_worker, stop_worker, wait_until

AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
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

"""Backtest: one engine with the worker (same trades on the same candles), checked against backtrader."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import numpy as np
import pytest

from core.backtest import load_candles, run_backtest
from core.dsl import compile_strategy
from core.feeds import FeedError
from tests.conftest import ROOT, SHARED_DATA
from tests.processes import query, start_worker, stop_worker, wait_until

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
SEED = (ROOT / "data" / "strategy.txt").read_text()


def series(closes, opens=None):
    closes = np.asarray(closes, dtype=np.float64)
    return {"open_time_ms": np.arange(len(closes), dtype=np.int64) * 60_000,
            "open": np.asarray(opens if opens is not None else closes, dtype=np.float64),
            "high": closes, "low": closes, "close": closes, "volume": np.ones_like(closes)}


def test_fills_at_the_next_open_with_the_fee_on_both_sides():
    candles = series([1, 1, 5, 5, 5, 1, 1], opens=[1, 1, 1, 4, 5, 5, 2])
    result = run_backtest(candles, compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL"), fee_rate=0.01)
    (trade,) = result.trades
    assert (trade.entry_time, trade.entry_price, trade.exit_time, trade.exit_price) == (180_000, 4.0, 360_000, 2.0)
    assert trade.return_pct == pytest.approx((2 / 4 * 0.99 ** 2 - 1) * 100)
    assert result.return_pct == pytest.approx(trade.return_pct)
    assert result.exposure_pct == pytest.approx(3 / 7 * 100)  # long at the closes of candles 3, 4 and 5
    assert result.max_drawdown_pct == pytest.approx(80.0)  # from a close of 5 down to a close of 1 while long


def test_fill_at_close_and_the_last_trade_left_open():
    candles = series([1, 5, 6, 8])
    result = run_backtest(candles, compile_strategy("IF CLOSE > 3 THEN BUY"), fee_rate=0.0, fill="close")
    (trade,) = result.trades
    assert (trade.entry_time, trade.entry_price, trade.exit_time, trade.exit_price) == (60_000 + 59_999, 5.0, None, None)
    assert trade.return_pct == pytest.approx(60.0) and result.return_pct == pytest.approx(60.0)


def test_a_decision_on_the_last_candle_has_nothing_to_fill_at():
    result = run_backtest(series([1, 1, 5]), compile_strategy("IF CLOSE > 3 THEN BUY"))
    assert result.trades == [] and result.return_pct == 0.0


@pytest.mark.parametrize("text, line, message", [
    ("open_time,open,high,low,close,volume\n1516423980000,2,3,1,2,6\n1516424040000,2,3,x,2,6\n", 3, "low"),
    ("1516423980000,2,3,1,2,6\n1516424040000,2,3,2.5,2,6\n", 2, "not between low"),
    ("1516423980000,1,1,1,1,1\n1516423920000,1,1,1,1,1\n", 2, "not sorted by time"),
    ("1516423980000,1,1\n", 1, ""),
])
def test_bad_candle_files_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(FeedError) as caught:
        load_candles(path)
    assert caught.value.line == line and message in str(caught.value)


def test_candle_files_in_seconds_ms_and_microseconds_load_the_same(tmp_path):
    rows = [(1516423980, 1.0), (1516424040, 2.0)]
    loaded = []
    for scale in (1, 1000, 1_000_000):
        path = tmp_path / f"c{scale}.csv"
        path.write_text("".join(f"{t * scale},{p},{p},{p},{p},1\n" for t, p in rows))
        loaded.append(load_candles(path)["open_time_ms"].tolist())
    assert loaded == [[1516423980000, 1516424040000]] * 3


def test_backtest_command_prints_the_contract_json(tmp_path):
    candles = tmp_path / ETHBTC.name  # a copy: the parsed-candle cache is written next to the file
    candles.write_bytes(ETHBTC.read_bytes())
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(candles),
                             "--strategy", str(ROOT / "data" / "strategy.txt"), "--json"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["candles"] == 14_397 and len(report["trades"]) > 100
    assert set(report["trades"][0]) >= {"entry_time", "entry_price", "exit_time", "exit_price"}
    assert report["trades"][-1]["exit_time"] is None and all(t["exit_time"] for t in report["trades"][:-1])
    assert isinstance(report["return_pct"], float)


def pair_orders(rows):
    """Filled paper orders (side, price, time) as round trips like the backtest's."""
    trades = []
    for side, price, time_ms in rows:
        if side == "BUY":
            trades.append([time_ms, price, None, None])
        else:
            trades[-1][2:] = [time_ms, price]
    return [tuple(t) for t in trades]


def test_worker_paper_trades_on_a_replay_equal_the_backtest(data_dir):
    (data_dir / "strategy.txt").write_text(SEED)
    candles = load_candles(ETHBTC)
    expected = run_backtest(candles, compile_strategy(SEED))
    worker = start_worker(data_dir, replay_file=ETHBTC, replay_speed=0, symbol="ETHBTC")
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions") == [(len(candles["close"]),)], worker,
               timeout_s=120, what="the whole file decided")
    stop_worker(worker)
    orders = query(data_dir, "SELECT side, price, filled_at_ms FROM orders WHERE status = 'filled' ORDER BY id")
    assert pair_orders(orders) == [(t.entry_time, t.entry_price, t.exit_time, t.exit_price) for t in expected.trades]
    assert len(expected.trades) > 1000


def test_backtrader_gives_the_same_trades_for_the_seed_strategy(tmp_path):
    bt = pytest.importorskip("backtrader")
    candles = load_candles(ETHBTC)
    csv_path = tmp_path / "ethbtc.csv"
    columns = [candles["open_time_ms"] // 1000] + [candles[k] for k in ("open", "high", "low", "close", "volume")]
    with open(csv_path, "w") as out:
        out.writelines(",".join(map(repr, row)) + "\n" for row in zip(*(c.tolist() for c in columns)))
    trades = []

    class Seed(bt.Strategy):
        def __init__(self):
            self.fast, self.slow = bt.ind.SMA(period=4), bt.ind.SMA(period=9)

        def next(self):
            fast, slow = self.fast[0], self.slow[0]
            tolerance = 1e-10 * max(abs(fast), abs(slow))  # the language's equality: 10 significant digits
            if fast - slow > tolerance and not self.position:
                self.buy(size=self.broker.getcash() / self.data.close[0] * 0.98)
            elif slow - fast > tolerance and self.position:
                self.close()

        def notify_order(self, order):
            if order.status == order.Completed:
                when = int(bt.num2date(order.executed.dt).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
                trades.append(("BUY" if order.isbuy() else "SELL", order.executed.price, when))

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.GenericCSVData(dataname=str(csv_path), dtformat=1, datetime=0, open=1, high=2, low=3,
                                            close=4, volume=5, openinterest=-1, timeframe=bt.TimeFrame.Minutes))
    cerebro.addstrategy(Seed)
    cerebro.broker.setcash(1e12)
    cerebro.broker.setcommission(commission=0.001)
    cerebro.run()
    ours = run_backtest(candles, compile_strategy(SEED))

    def rounded(trade):  # backtrader carries prices through its own float arithmetic: compare at 8 decimals
        return tuple(round(v, 8) if isinstance(v, float) else v for v in trade)

    theirs = [rounded(t) for t in pair_orders(trades)]
    assert theirs == [rounded((t.entry_time, t.entry_price, t.exit_time, t.exit_price)) for t in ours.trades]
    assert len(theirs) > 1000

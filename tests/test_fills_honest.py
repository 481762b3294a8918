"""Fills that do not flatter: `--slippage` and OMNIWISE_PAPER_SLIPPAGE move every market fill against the trader
(stops included), a paper stop crossed by a trade fills at that trade's price, and an ATR that is zero or
undefined at the entry sets no level. Reference figures are worked out by hand in each test."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from core import open_trade
from core.backtest import load_candles, run_backtest
from core.brokers import PaperBroker
from core.candles import Candle
from core.config import ConfigError, load_settings
from core.dsl import compile_strategy
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.conftest import ROOT, SHARED_DATA
from tests.processes import query, start_worker, stop_worker, wait_until
from tests.test_exits import worker_trades

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
T0 = 1_570_752_000_000
MINUTE = 60_000


def series(closes, opens=None, highs=None, lows=None):
    closes = np.asarray(closes, dtype=np.float64)
    opens = closes if opens is None else np.asarray(opens, dtype=np.float64)
    return {"open_time_ms": T0 + np.arange(len(closes), dtype=np.int64) * MINUTE, "open": opens,
            "high": np.maximum(opens, closes) if highs is None else np.asarray(highs, dtype=np.float64),
            "low": np.minimum(opens, closes) if lows is None else np.asarray(lows, dtype=np.float64),
            "close": closes, "volume": np.ones_like(closes)}


def test_backtest_slippage_moves_entry_and_exit_against_the_trader():
    candles = series([1, 1, 5, 5, 5, 1, 1], opens=[1, 1, 1, 4, 5, 5, 2])
    policy = compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL")
    result = run_backtest(candles, policy, fee_rate=0.01, slippage=0.02)
    (trade,) = result.trades
    assert (trade.entry_price, trade.exit_price) == (pytest.approx(4 * 1.02), pytest.approx(2 * 0.98))
    assert trade.return_pct == pytest.approx((2 * 0.98 / (4 * 1.02) * 0.99 ** 2 - 1) * 100)
    assert result.return_pct == pytest.approx(trade.return_pct) and result.summary_json()["slippage"] == 0.02
    assert run_backtest(candles, policy, fee_rate=0.01).trades[0].entry_price == 4.0  # default: none


def test_backtest_slippage_moves_a_short_and_a_stop_against_the_trader_too():
    # SHORT at candle 1's open 100; STOP LOSS 2 %: the level 102 is set from the market's 100, candle 2's
    # high 103 reaches it: bought back at 102, plus the slippage.
    candles = series([40, 100, 101, 101], opens=[40, 100, 100, 101], highs=[40, 100, 103, 101],
                     lows=[40, 100, 100, 101])
    result = run_backtest(candles, compile_strategy("IF CLOSE < 50 THEN SHORT\nSTOP LOSS 2%"), fee_rate=0,
                          slippage=0.001)
    (trade,) = result.trades
    assert (trade.side, trade.exit_reason) == ("short", "stop_loss")
    assert (trade.entry_price, trade.exit_price) == (pytest.approx(100 * 0.999), pytest.approx(102 * 1.001))


def test_backtest_cli_takes_slippage_and_refuses_a_wrong_one(tmp_path):
    strategy = tmp_path / "s.txt"
    strategy.write_text("IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n")
    part = tmp_path / "part.csv"
    part.write_text("".join(ETHBTC.read_text().splitlines(keepends=True)[:2001]))

    def backtest(*args):
        return subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(part),
                               "--strategy", str(strategy), *args], capture_output=True, text=True, cwd=ROOT)

    plain, slipped = (json.loads(backtest("--json", *extra).stdout) for extra in ([], ["--slippage", "0.0005"]))
    assert slipped["slippage"] == 0.0005 and len(plain["trades"]) == len(slipped["trades"]) > 10
    for a, b in zip(plain["trades"], slipped["trades"]):
        assert b["entry_price"] == pytest.approx(a["entry_price"] * 1.0005, rel=1e-12)
        if a["exit_price"] is not None:
            assert b["exit_price"] == pytest.approx(a["exit_price"] * 0.9995, rel=1e-12)
    assert "slippage 0.05 %" in backtest("--slippage", "0.0005").stdout
    refused = backtest("--slippage", "0.5")
    assert refused.returncode == 2 and "--slippage" in refused.stderr


@pytest.mark.parametrize("value, ok", [("0", 0.0), ("0.0005", 0.0005), ("x", None), ("-0.1", None), ("0.5", None),
                                       ("inf", None), ("nan", None)])
def test_paper_slippage_setting(value, ok):
    environ = {"OMNIWISE_PAPER_SLIPPAGE": value}
    if ok is None:
        with pytest.raises(ConfigError, match="PAPER_SLIPPAGE"):
            load_settings(environ, env_file=None)
    else:
        assert load_settings(environ, env_file=None).paper_slippage == ok


def paper_trader(db, data_dir, strategy: str, slippage: float = 0.0) -> Trader:
    (data_dir / "strategy.txt").write_text(strategy)
    broker = PaperBroker(db, "XRPETH", start_balance=1000.0, fee_rate=0.001, slippage=slippage)
    return Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: 1_700_000_000.0)


def candle(i: int, close: float, open_: float | None = None, high=None, low=None) -> Candle:
    o = close if open_ is None else open_
    return Candle(T0 + i * MINUTE, o, high if high is not None else max(o, close),
                  low if low is not None else min(o, close), close, 1.0, T0 + i * MINUTE + 59_999, close, 1, 0.5, 1)


def test_paper_slippage_fills_against_the_trader_and_sets_levels_from_the_market(db, data_dir):
    trader = paper_trader(db, data_dir, "IF CLOSE > 100 THEN BUY\nIF CLOSE < 90 THEN SELL\nSTOP LOSS 2%\n", 0.001)
    trader.on_candle(candle(0, 101))
    trader.on_candle(candle(1, 101, open_=100))  # filled at 100 + 0.1 %
    assert trader.open_trade.entry_price == 100.0  # the stop 98 from the market's price, as the backtest
    trader.on_candle(candle(2, 99, open_=99, low=97.5))  # the candle reaches 98: out at 98 - 0.1 %
    prices = db.execute("SELECT side, price, qty, quote FROM orders ORDER BY id").fetchall()
    qty = 1000 / 100.1 * 0.999
    assert prices == [("BUY", pytest.approx(100.1), pytest.approx(qty), pytest.approx(1000)),
                      ("SELL", pytest.approx(98 * 0.999), pytest.approx(qty), pytest.approx(qty * 98 * 0.999 * 0.999))]


def test_a_paper_stop_crossed_by_a_trade_fills_at_that_trades_price_a_take_profit_at_its_level(db, data_dir):
    from core.candles import LiveTrade

    trader = paper_trader(db, data_dir, "IF CLOSE > 100 THEN BUY\nSTOP LOSS 2%\nTAKE PROFIT 3%\n")
    trader.on_candle(candle(0, 101))
    trader.on_candle(candle(1, 101, open_=100))  # stop 98, target 103
    trader.on_trade(LiveTrade(99.0, T0 + 2 * MINUTE, 1))  # the minute's open
    trader.on_trade(LiveTrade(97.2, T0 + 2 * MINUTE + 9_000, 2))  # a fast fall through 98
    assert db.execute("SELECT price FROM orders WHERE side = 'SELL'").fetchone() == (97.2,)
    trader.on_candle(candle(2, 99))  # HOLD after the exit unblocks the entry
    trader.on_candle(candle(3, 101))  # BUY again
    trader.on_candle(candle(4, 101, open_=100))
    trader.on_trade(LiveTrade(101.0, T0 + 5 * MINUTE, 3))
    trader.on_trade(LiveTrade(104.5, T0 + 5 * MINUTE + 1_000, 4))  # through the target
    assert db.execute("SELECT price FROM orders WHERE side = 'SELL' ORDER BY id DESC").fetchone() == (103.0,)


def test_the_worker_with_paper_slippage_equals_the_backtest_with_slippage(data_dir, tmp_path):
    text = "IF MA4 > MA9 AND CLOSE > OPEN THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 0.3%\nTRAILING STOP 0.2%\n"
    (data_dir / "strategy.txt").write_text(text)
    part = tmp_path / "ETHBTC-1m-part.csv"
    part.write_text("".join(ETHBTC.read_text().splitlines(keepends=True)[:2001]))
    candles = load_candles(part)
    expected = run_backtest(candles, compile_strategy(text), slippage=0.0005)
    worker = start_worker(data_dir, replay_file=part, replay_speed=0, symbol="ETHBTC", log_level="ERROR",
                          paper_slippage="0.0005")
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'strategy'")
               == [(len(candles["close"]),)], worker, timeout_s=180, what="the whole file decided")
    stop_worker(worker)
    ours = worker_trades(data_dir)
    theirs = [(t.entry_time, t.entry_price, t.exit_time, t.exit_price, t.exit_reason) for t in expected.trades]
    assert len(ours) == len(theirs) > 20 and sum(1 for t in theirs if t[4] not in ("rule", None)) > 10
    for a, b in zip(ours, theirs):
        assert a[0::2] == b[0::2]  # times and reasons
        assert a[1] == pytest.approx(b[1], rel=1e-12) and (a[3] is None) == (b[3] is None)
        assert a[3] is None or a[3] == pytest.approx(b[3], rel=1e-12)


def test_a_zero_atr_sets_no_level_in_the_backtest_or_the_worker(db, data_dir):
    # A flat market: every candle 100, so ATR(3) is 0 once defined. A stop of 1 x ATR would be the entry
    # itself and stop the trade out at once (-0.2 % in fees); it sets no level instead.
    text = "IF MA8 >= 100 THEN BUY\nSTOP LOSS 1 * ATR(3)\nTRAILING STOP 2 * ATR(3)\n"  # decided once ATR is 0
    closes = [100.0] * 30
    result = run_backtest(series(closes), compile_strategy(text))
    (trade,) = result.trades
    assert trade.exit_time is None  # still open: nothing stopped it
    trader = paper_trader(db, data_dir, text)
    for i, close in enumerate(closes):
        trader.on_candle(candle(i, close))
    assert trader.broker.position().side == "long" and db.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    levels = trader.open_trade.levels(compile_strategy(text).risk)
    assert math.isnan(levels.stop_loss) and math.isnan(levels.trailing_stop)
    state = open_trade.load(db, "XRPETH")
    assert all(math.isnan(v) for v in state.atr.values())


def test_open_trade_takes_no_level_from_a_zero_or_undefined_atr():
    trade = open_trade.OpenTrade()
    trade.enter(100.0, {14: 0.0, 3: float("nan"), 5: 1.5})
    assert math.isnan(trade.atr[14]) and math.isnan(trade.atr[3]) and trade.atr[5] == 1.5
    assert dataclasses.asdict(trade)["entry_price"] == 100.0

"""Risk statements: the language's forms and errors, the exits of the backtest engine against a plain
per-candle reference loop written here, the worker's paper trades (klines replay and live ticks) against
the backtest, SIZE, and the exit reason wherever a trade is shown."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import exits, open_trade, store
from core.health import heartbeat
from core.backtest import load_candles, run_backtest
from core.brokers import PaperBroker
from core.candles import Candle, Tick
from core.dsl import Distance, Risk, StrategyError, compile_strategy
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.conftest import ROOT, SHARED_DATA
from tests.processes import query, start_worker, stop_worker, wait_until

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
SEED = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
MINUTE = 60_000
T0 = 1_570_752_000_000


# -- the language -------------------------------------------------------------------------------------

def test_risk_statements_parse_into_the_policy():
    policy = compile_strategy("IF MA4 > MA9 THEN BUY\nstop loss 2%\nTAKE PROFIT 3 * ATR(20)\n"
                              "Trailing Stop 1.5 * atr   # ATR alone is ATR(14)\nSIZE 50%\n")
    risk = policy.risk
    assert risk.stop_loss == Distance(share=0.02)
    assert risk.take_profit == Distance(multiple=3.0, atr_period=20)
    assert risk.trailing_stop == Distance(multiple=1.5, atr_period=14)
    assert risk.size_share == 0.5 and risk.atr_periods == (14, 20)
    assert len(policy.rules) == 1
    assert compile_strategy(SEED).risk == Risk()


@pytest.mark.parametrize("text, line, column, words", [
    ("STOP LOSS 2%\nIF MA4 > MA9 THEN BUY\n  STOP LOSS 3%", 3, 3, "already set on line 1"),
    ("STOP LOSS 0%", 1, 11, "more than 0 %"),
    ("STOP LOSS 100%", 1, 11, "less than 100 %"),
    ("TRAILING STOP 100%", 1, 15, "less than 100 %"),
    ("TAKE PROFIT 0%", 1, 13, "more than 0 %"),
    ("TRAILING STOP -2 * ATR(14)", 1, 15, "multiple of ATR in TRAILING STOP must be more than 0, got -2"),
    ("TAKE PROFIT 0 * ATR(14)", 1, 13, "must be more than 0"),
    ("SIZE 0%", 1, 6, "SIZE must be more than 0 %"),
    ("SIZE 150%", 1, 6, "at most 100 %"),
    ("SIZE 2 * ATR(14)", 1, 8, "share of equity in percent"),
    ("STOP 2%", 1, 6, "expected LOSS after STOP"),
    ("TAKE 5%", 1, 6, "expected PROFIT after TAKE"),
    ("STOP LOSS 2", 1, 12, "expected % or * ATR(n)"),
    ("STOP LOSS", 1, 10, "expected a number"),
    ("STOP LOSS 2% now", 1, 14, "ends after its amount"),
    ("STOP LOSS 1 * SMA(14)", 1, 15, "multiple of ATR only"),
    ("STOP LOSS 1 * ATR(0)", 1, 19, "period of ATR"),
    ("STOP LOSS 1 * ATR(2.5)", 1, 19, "whole number"),
    ("STOP LOSS 1 * ATR(14", 1, 21, "expected )"),
])
def test_bad_risk_statements_are_reported_with_line_and_column(text, line, column, words):
    with pytest.raises(StrategyError) as caught:
        compile_strategy(text)
    (error,) = caught.value.errors
    assert (error.line, error.column) == (line, column) and words in error.message, error


def test_check_command_reports_every_bad_risk_statement(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("IF MA4 > MA9 THEN BUY\nSTOP LOSS 2%\nSTOP LOSS 3%\nSIZE 0%\nTRAILING STOP -1 * ATR(14)\n")
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "check", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines() or result.stderr.strip().splitlines()
    assert [line.split(": error:")[0] for line in lines] == [f"{path}:3:1", f"{path}:4:6", f"{path}:5:15"]


_words = st.sampled_from(["STOP", "LOSS", "TAKE", "PROFIT", "TRAILING", "SIZE", "ATR", "%", "*", "(", ")", "-",
                          ",", "IF", "THEN", "BUY", "\x00", "\x1b", "\t", "é"])
_numbers = st.one_of(st.integers(-10, 10**400).map(str), st.floats(0, 1e6).map(lambda f: f"{f:.6f}"),
                     st.just("." + "9" * 500))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from(["STOP LOSS", "TAKE PROFIT", "TRAILING STOP", "SIZE", "stop loss", "Trailing  Stop"]),
       parts=st.lists(st.one_of(_words, _numbers), max_size=12), nesting=st.integers(0, 40))
def test_any_risk_line_parses_or_gets_a_positioned_error(head, parts, nesting):
    line = f"{head} " + " ".join(parts) + " " + "(" * nesting
    try:
        policy = compile_strategy(f"IF MA4 > MA9 THEN BUY\n{line}")
    except StrategyError as exc:
        assert all(error.line == 2 and 1 <= error.column <= len(line) + 1 for error in exc.errors)
    else:
        risk = policy.risk
        for distance in (risk.stop_loss, risk.take_profit, risk.trailing_stop):
            assert distance is None or (distance.share or 0) > 0 or (distance.multiple or 0) > 0
        assert 0 < risk.size_share <= 1


# -- the engine against a plain reference loop --------------------------------------------------------

def reference_trades(candles, actions, fill="next-open", stop=None, target=None, trail=None, atr=None):
    """The semantics of DESIGN.md "Risk statements" candle by candle, written without core.exits.
    stop/target/trail: ("pct", share) or ("atr", multiple). Returns (entry index, entry price,
    exit index, exit price, reason) per trade."""
    n = len(actions)
    O, H, L, C = (candles[k].tolist() for k in ("open", "high", "low", "close"))
    trades, pos, pending, blocked, pending_atr = [], None, None, False, math.nan

    def level(spec, price, a, sign):
        if spec is None:
            return math.nan
        kind, value = spec
        return price * (1 + sign * value) if kind == "pct" else price + sign * (value * a)

    for t in range(n):
        if pending == "BUY":
            pos = {"i": t, "E": O[t], "peak": O[t], "atr": pending_atr, "first": t}
        elif pending == "SELL":
            trades.append((pos["i"], pos["E"], t, O[t], "rule"))
            pos = None
        pending = None
        if pos is not None and t >= pos["first"]:
            E, a = pos["E"], pos["atr"]
            s, tp, tr = level(stop, E, a, -1), level(target, E, a, +1), level(trail, pos["peak"], a, -1)
            eff, why = (tr, "trailing_stop") if not math.isnan(tr) and (math.isnan(s) or tr > s) else (s, "stop_loss")
            out = None
            if O[t] <= eff:
                out = (O[t], why)
            elif O[t] >= tp:
                out = (O[t], "take_profit")
            elif L[t] <= eff:
                out = (eff, why)
            elif H[t] >= tp:
                out = (tp, "take_profit")
            if out:
                trades.append((pos["i"], E, t, out[0], out[1]))
                pos, blocked = None, True
            else:
                pos["peak"] = max(pos["peak"], H[t])
        act = int(actions[t])
        if act != 1:
            blocked = False
        if act == 1 and not blocked and pos is None:
            a = float(atr[t]) if atr is not None else math.nan
            if fill == "next-open":
                if t + 1 < n:
                    pending, pending_atr = "BUY", a
            else:
                pos = {"i": t, "E": C[t], "peak": C[t], "atr": a, "first": t + 1}
        elif act == 2 and pos is not None:
            if fill == "next-open":
                if t + 1 < n:
                    pending = "SELL"
            else:
                trades.append((pos["i"], pos["E"], t, C[t], "rule"))
                pos = None
    if pos is not None:
        trades.append((pos["i"], pos["E"], None, None, None))
    return trades


def engine_trades(candles, actions, risk, fill):
    found = exits.find_trades(candles, actions, risk, fill)
    return [(int(e), float(ep), None if x < 0 else int(x), None if x < 0 else float(xp),
             None if r < 0 else exits.REASONS[r])
            for e, ep, x, xp, r in zip(found.entry_index, found.entry_price, found.exit_index, found.exit_price,
                                       found.exit_reason)]


def as_specs(risk: Risk) -> dict:
    def spec(d):
        return None if d is None else (("atr", d.multiple) if d.is_atr else ("pct", d.share))
    return {"stop": spec(risk.stop_loss), "target": spec(risk.take_profit), "trail": spec(risk.trailing_stop)}


@pytest.fixture(scope="module")
def ethbtc():
    return load_candles(ETHBTC)


ETHBTC_STRATEGIES = [
    SEED + "STOP LOSS 0.3%",
    SEED + "TAKE PROFIT 0.4%",
    SEED + "TRAILING STOP 0.2%",
    SEED + "STOP LOSS 0.5%\nTAKE PROFIT 0.6%\nTRAILING STOP 0.25%",
    SEED + "STOP LOSS 1.5 * ATR(14)\nTAKE PROFIT 3 * ATR(14)\nTRAILING STOP 2 * ATR(14)",
    # HOLD between BUYs: re-entries inside one rule segment after a risk exit
    "IF MA4 > MA9 AND CLOSE > OPEN THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 0.2%\nTRAILING STOP 0.15%",
    # never SELL: one segment over the whole file, followed candle by candle
    "IF CLOSE > OPEN THEN BUY\nTAKE PROFIT 0.2%\nSTOP LOSS 0.2%",
]


@pytest.mark.parametrize("fill", ["next-open", "close"])
@pytest.mark.parametrize("text", ETHBTC_STRATEGIES)
def test_engine_exits_equal_a_plain_candle_loop_on_real_data(ethbtc, text, fill):
    policy = compile_strategy(text)
    actions = policy.decide_all(ethbtc)
    atr = talib.ATR(ethbtc["high"], ethbtc["low"], ethbtc["close"], 14)
    expected = reference_trades(ethbtc, actions, fill, atr=atr, **as_specs(policy.risk))
    assert engine_trades(ethbtc, actions, policy.risk, fill) == expected
    reasons = Counter(t[4] for t in expected)
    assert sum(reasons[r] for r in ("stop_loss", "take_profit", "trailing_stop")) > 50, reasons


def test_both_engine_paths_give_the_same_trades(ethbtc, monkeypatch):
    text = "IF MA4 > MA9 AND CLOSE > OPEN THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 0.2%\nTRAILING STOP 0.15%"
    policy = compile_strategy(text)
    actions = policy.decide_all(ethbtc)
    monkeypatch.setattr(exits, "SCALAR_SEGMENTS", 0)
    vectorised = engine_trades(ethbtc, actions, policy.risk, "next-open")
    monkeypatch.setattr(exits, "SCALAR_SEGMENTS", 10**9)
    assert engine_trades(ethbtc, actions, policy.risk, "next-open") == vectorised


_distance = st.one_of(st.none(), st.floats(0.0005, 0.2).map(lambda p: Distance(share=p)),
                      st.floats(0.1, 5).map(lambda k: Distance(multiple=k, atr_period=3)))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(-0.05, 0.05), st.floats(0, 0.04), st.floats(0, 0.04),
                                st.floats(-0.08, 0.08)), min_size=1, max_size=80),
       runs=st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.integers(1, 6)), min_size=1, max_size=30),
       stop=_distance, target=_distance, trail=_distance, fill=st.sampled_from(["next-open", "close"]),
       scalar=st.booleans())
def test_engine_equals_the_reference_on_gaps_and_random_decisions(steps, runs, stop, target, trail, fill, scalar):
    # Structure, not noise: gaps at the open, long and wide candles, runs of BUY / SELL / HOLD.
    price, rows = 100.0, []
    for gap, up, down, move in steps:
        o = price * (1 + gap)
        c = o * (1 + move)
        rows.append((o, max(o, c) * (1 + up), min(o, c) * (1 - down), c))
        price = c
    candles = {k: np.array(v) for k, v in zip(("open", "high", "low", "close"), zip(*rows))}
    candles["open_time_ms"] = np.arange(len(rows), dtype=np.int64) * MINUTE
    actions = np.array([a for a, k in runs for _ in range(k)][:len(rows)] + [0] * len(rows), dtype=np.int8)[:len(rows)]
    risk = Risk(stop, target, trail)
    atr = talib.ATR(candles["high"], candles["low"], candles["close"], 3)
    original = exits.SCALAR_SEGMENTS
    exits.SCALAR_SEGMENTS = 10**9 if scalar else 0
    try:
        ours = engine_trades(candles, actions, risk, fill)
    finally:
        exits.SCALAR_SEGMENTS = original
    assert ours == reference_trades(candles, actions, fill, atr=atr, **as_specs(risk))


def worked_example():
    """The README's example: numbers of one trade through a trailing stop and one through a stop loss."""
    rows = [  # open, high, low, close
        (99.0, 101.0, 99.0, 101.0),    # 0: close > 100: BUY
        (100.0, 104.0, 99.5, 103.0),   # 1: entry at 100; stop 99, trailing 98: the stop binds; peak 104
        (103.0, 105.0, 101.5, 102.0),  # 2: trailing 104 * 0.98 = 101.92 > 99; low 101.5 touches it: exit 101.92
        (102.0, 102.5, 99.5, 99.8),    # 3: BUY was still true on 2 (blocked); close <= 100: HOLD, unblocked
        (99.8, 101.0, 99.6, 100.5),    # 4: BUY
        (100.5, 100.8, 99.9, 100.2),   # 5: entry at 100.5; stop 99.495, trailing 98.49; peak 100.8
        (99.0, 99.3, 98.7, 99.2),      # 6: trailing 98.784 < stop 99.495; opens at 99 below it: exit at 99
    ]
    candles = {k: np.array(v) for k, v in zip(("open", "high", "low", "close"), zip(*rows))}
    candles["volume"] = np.ones(len(rows))
    candles["open_time_ms"] = T0 + np.arange(len(rows), dtype=np.int64) * MINUTE
    return candles


WORKED = "IF CLOSE > 100 THEN BUY\nSTOP LOSS 1%\nTRAILING STOP 2%\n"


def test_worked_example_of_the_readme():
    result = run_backtest(worked_example(), compile_strategy(WORKED), fee_rate=0.001)
    first, second = result.trades
    assert (first.entry_time, first.entry_price, first.exit_time, first.exit_reason) == \
        (T0 + MINUTE, 100.0, T0 + 2 * MINUTE, "trailing_stop")
    assert first.exit_price == pytest.approx(101.92, abs=1e-12)
    assert first.return_pct == pytest.approx((101.92 / 100 * 0.999 ** 2 - 1) * 100)  # +1.716 %
    assert (second.entry_time, second.entry_price, second.exit_time, second.exit_price, second.exit_reason) == \
        (T0 + 5 * MINUTE, 100.5, T0 + 6 * MINUTE, 99.0, "stop_loss")
    assert second.return_pct == pytest.approx((99 / 100.5 * 0.999 ** 2 - 1) * 100)  # -1.69 %


def test_size_keeps_the_rest_as_cash_in_return_and_drawdown():
    candles = worked_example()
    full = run_backtest(candles, compile_strategy(WORKED), fee_rate=0.001)
    half = run_backtest(candles, compile_strategy(WORKED + "SIZE 50%"), fee_rate=0.001)
    assert [t.return_pct for t in half.trades] == [t.return_pct for t in full.trades]  # per trade: the same
    r1, r2 = 101.92 / 100 * 0.999 ** 2, 99 / 100.5 * 0.999 ** 2
    assert full.return_pct == pytest.approx((r1 * r2 - 1) * 100)
    assert half.return_pct == pytest.approx(((0.5 + 0.5 * r1) * (0.5 + 0.5 * r2) - 1) * 100)
    # At the close of candle 1 the half-sized account holds 0.5 cash + 0.5 spent at 100 valued at 103.
    assert half.equity[1] == pytest.approx(0.5 + 0.5 * 0.999 / 100 * 103 * 0.999)
    assert half.max_drawdown_pct == pytest.approx(full.max_drawdown_pct / 2, rel=0.05)
    assert half.max_drawdown_pct < full.max_drawdown_pct


def test_backtest_json_carries_the_exit_reason(tmp_path):
    strategy = tmp_path / "s.txt"
    strategy.write_text(SEED + "STOP LOSS 0.3%\nTAKE PROFIT 0.4%\n")
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(ETHBTC),
                             "--strategy", str(strategy), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    import json
    trades = json.loads(result.stdout)["trades"]
    assert {t["exit_reason"] for t in trades[:-1]} == {"rule", "stop_loss", "take_profit"}
    assert trades[-1]["exit_reason"] is None or trades[-1]["exit_time"] is not None


# -- the worker: the same trades from a klines replay, and from ticks ----------------------------------

def worker_trades(data_dir):
    rows = query(data_dir, "SELECT o.side, o.price, o.filled_at_ms, d.reason FROM orders o "
                           "JOIN decisions d ON d.id = o.decision_id WHERE o.status = 'filled' ORDER BY o.id")
    trades = []
    for side, price, time_ms, reason in rows:
        if side == "BUY":
            trades.append([time_ms, price, None, None, None])
        else:
            trades[-1][2:] = [time_ms, price, exits.exit_reason(reason)]
    return [tuple(t) for t in trades]


@pytest.mark.parametrize("risk_lines", [
    "STOP LOSS 0.3%",
    "TAKE PROFIT 0.4%",
    "TRAILING STOP 0.2%",
    "STOP LOSS 1.5 * ATR(14)\nTAKE PROFIT 3 * ATR(14)\nTRAILING STOP 2 * ATR(14)\nSIZE 50%",
])
def test_worker_paper_trades_with_risk_exits_equal_the_backtest(data_dir, tmp_path, risk_lines):
    text = "IF MA4 > MA9 AND CLOSE > OPEN THEN BUY\nIF MA4 < MA9 THEN SELL\n" + risk_lines
    (data_dir / "strategy.txt").write_text(text)
    # The first 4,000 minutes (2.8 days) hold 59 to 417 risk exits of each kind: enough, at a quarter of the time
    part = tmp_path / "ETHBTC-1m-part.csv"
    part.write_text("".join(ETHBTC.read_text().splitlines(keepends=True)[:4001]))
    candles = load_candles(part)
    expected = run_backtest(candles, compile_strategy(text))
    # ERROR: hundreds of exit notices would fill the unread stdout pipe and stall the worker
    worker = start_worker(data_dir, replay_file=part, replay_speed=0, symbol="ETHBTC", log_level="ERROR")
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'strategy'")
               == [(len(candles["close"]),)], worker, timeout_s=180, what="the whole file decided")
    stop_worker(worker)
    ours = worker_trades(data_dir)
    theirs = [(t.entry_time, t.entry_price, t.exit_time, t.exit_price, t.exit_reason) for t in expected.trades]
    if "ATR" in risk_lines:
        # The worker's ATR reads its recent window, the backtest the whole history: equal to 1e-12 or so.
        assert [t[:3] + t[4:] for t in ours] == [t[:3] + t[4:] for t in theirs]
        assert all(a[3] == pytest.approx(b[3], rel=1e-9, abs=0) for a, b in zip(ours, theirs) if a[3] is not None)
    else:
        assert ours == theirs
    assert sum(1 for t in theirs if t[4] not in ("rule", None)) > 50


@pytest.fixture
def paper_trader(db, data_dir):
    def make(strategy: str):
        (data_dir / "strategy.txt").write_text(strategy)
        broker = PaperBroker(db, "XRPETH", start_balance=1000.0, fee_rate=0.001)
        return Trader(db, "XRPETH", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: 1_700_000_000.0)
    return make


_agg_id = iter(range(1, 10**9))


def tick(minute: int, second: float, price: float) -> Tick:
    return Tick(price, 1.0, T0 + minute * MINUTE + int(second * 1000), next(_agg_id), 0, 0, False)


def test_live_stop_fills_at_the_price_of_the_tick_that_crosses_it(db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nSTOP LOSS 2%\n")
    trader.on_tick(tick(0, 1, 101.0))          # minute 0 closes at 101: BUY
    trader.on_tick(tick(1, 0, 100.0))          # minute 1 opens at 100: the entry; stop 98
    assert trader.broker.position().side == "long"
    trader.on_tick(tick(1, 20, 98.5))
    assert trader.broker.position().side == "long"
    trader.on_tick(tick(1, 30, 97.9))          # through the stop mid-minute: sold at once, at that trade's price
    assert trader.broker.position().side == "flat"
    (row,) = db.execute("SELECT o.side, o.price, o.filled_at_ms, d.reason, d.candle_open_time_ms FROM orders o "
                        "JOIN decisions d ON d.id = o.decision_id WHERE o.side = 'SELL'").fetchall()
    assert row == ("SELL", 97.9, T0 + MINUTE + 30_000, "stop_loss", T0 + MINUTE)  # not the level 98: no flattery
    trader.on_tick(tick(2, 0, 101.0))          # minute 1 closed below 100: HOLD; the candle check is not repeated
    assert db.execute("SELECT count(*) FROM orders WHERE side = 'SELL'").fetchone() == (1,)


def test_live_stop_fills_at_the_minutes_first_price_when_it_opened_through_it(db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nIF CLOSE < 50 THEN SELL\nSTOP LOSS 2%\nTAKE PROFIT 3%\n")
    trader.on_tick(tick(0, 1, 101.0))
    trader.on_tick(tick(1, 0, 100.0))          # entry at 100
    trader.on_tick(tick(1, 50, 99.0))
    trader.on_tick(tick(2, 5, 96.0))           # the next minute's first trade is below the stop: filled there
    (price, reason) = db.execute("SELECT o.price, d.reason FROM orders o JOIN decisions d ON d.id = o.decision_id "
                                 "WHERE o.side = 'SELL'").fetchone()
    assert (price, reason) == (96.0, "stop_loss")


def test_no_reentry_after_a_risk_exit_until_the_rules_say_sell_or_hold(db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nTAKE PROFIT 1%\n")

    def minute(i, o, h, lo, c):
        trader.on_candle(Candle(T0 + i * MINUTE, o, h, lo, c, 1.0, T0 + i * MINUTE + 59_999, c, 1, 0.5, c / 2))

    minute(0, 101, 101, 101, 101)              # BUY
    minute(1, 100, 102, 100, 101.5)            # entry 100, high 102 >= 101: take profit at 101; BUY blocked
    minute(2, 101.5, 102, 101, 101.8)          # BUY still true: no order
    assert db.execute("SELECT side, price FROM orders ORDER BY id").fetchall() == [("BUY", 100.0), ("SELL", 101.0)]
    minute(3, 101.8, 101.8, 99, 99.5)          # HOLD: unblocked
    minute(4, 99.5, 101, 99.5, 100.5)          # BUY again
    assert [r[0] for r in db.execute("SELECT side FROM orders ORDER BY id")] == ["BUY", "SELL", "BUY"]
    assert open_trade.load(db, "XRPETH").reentry_blocked is False


def test_risk_state_survives_a_restart(db, data_dir, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nTRAILING STOP 2%\n")

    def minute(t, i, o, h, lo, c):
        t.on_candle(Candle(T0 + i * MINUTE, o, h, lo, c, 1.0, T0 + i * MINUTE + 59_999, c, 1, 0.5, c / 2))

    minute(trader, 0, 101, 101, 101, 101)
    minute(trader, 1, 100, 110, 100, 108)      # entry 100; the peak becomes 110
    again = paper_trader("IF CLOSE > 100 THEN BUY\nTRAILING STOP 2%\n")
    again.resume()
    assert (again.open_trade.entry_price, again.open_trade.peak) == (100.0, 110.0)
    minute(again, 2, 108, 109, 107.5, 108)     # trailing 107.8: low 107.5 reaches it
    assert db.execute("SELECT price FROM orders WHERE side = 'SELL'").fetchone() == (pytest.approx(107.8),)


def test_paper_size_spends_that_share_of_the_balance(db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nSIZE 25%\n")
    trader.on_candle(Candle(T0, 101, 101, 101, 101, 1.0, T0 + 59_999, 101, 1, 0.5, 50))
    trader.on_candle(Candle(T0 + MINUTE, 100, 101, 100, 101, 1.0, T0 + MINUTE + 59_999, 101, 1, 0.5, 50))
    quote, base, entry = trader.broker.account()
    assert quote == pytest.approx(750.0) and base == pytest.approx(250 / 100 * 0.999) and entry == 100.0


def test_a_risk_exit_is_alerted_and_explains_the_following_mismatch(db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nSTOP LOSS 2%\n")
    trader.on_tick(tick(0, 1, 101.0))
    trader.on_tick(tick(1, 0, 100.0))
    trader.on_tick(tick(1, 9, 97.0))
    (subject, state, message) = db.execute("SELECT subject, state, message FROM alerts").fetchone()
    assert (subject, state) == ("trade", "stop_loss") and "exited by stop loss at 97 " in message
    assert "level 98" in message
    now_ms = T0 + 2 * MINUTE
    with store.transaction(db):
        db.execute("INSERT INTO external_signals(received_at_ms, source, signal, signal_time_ms, symbol, outcome) "
                   "VALUES (?, 'TradingView', 'BUY', ?, 'XRPETH', 'accepted')", [T0, T0])
    verdict = heartbeat.check_position(db, trader.broker, "XRPETH", now_ms, heartbeat.HeartbeatSettings(grace_s=0))
    assert verdict.state == heartbeat.MISMATCH and "exited by stop loss" in verdict.reason


# -- where the exit reason is shown ---------------------------------------------------------------------

def store_ethbtc(db, symbol, candles):
    columns = [candles[k].tolist() for k in ("open_time_ms", "open", "high", "low", "close", "volume")]
    with db.conn:
        db.conn.executemany("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
                            [(symbol, t, o, h, lo, c, v, t + 59_999) for t, o, h, lo, c, v in zip(*columns)])


def validate(operator, text):
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_editor_preview_marks_each_exit_reason_with_its_own_shape(operator, settings, db, ethbtc):
    from core.charts import preview

    store_ethbtc(db, settings.symbol, ethbtc)
    text = SEED + "STOP LOSS 0.3%\nTAKE PROFIT 0.4%\nTRAILING STOP 0.5%\n"
    expected = preview(db, settings.symbol, compile_strategy(text), settings.fee_rate).result
    reasons = Counter(t.exit_reason for t in expected.trades)
    in_table = Counter(t.exit_reason for t in expected.trades[-5:])  # the table's "why" cells carry the class too
    fragment = validate(operator, text)
    for reason in ("stop_loss", "take_profit", "trailing_stop"):
        assert reasons[reason] > 0
        assert fragment.count(f'class="exit-{reason}"') == reasons[reason] + in_table[reason], reason
    assert fragment.count("<circle") == len(expected.trades) + reasons["rule"]  # entries and rule exits
    assert "Stop loss 0.3%. Take profit 0.4%. Trailing stop 0.5%. Live, it needs 5.0 hours of history" in fragment
    last = expected.trades[-1]
    assert f'<td class="exit-{last.exit_reason or "open"}">{(last.exit_reason or "").replace("_", " ")}</td>' in fragment


def test_editor_reports_bad_risk_statements_with_line_and_column(operator):
    fragment = validate(operator, "IF MA4 > MA9 THEN BUY\nSTOP LOSS 2%\nSTOP LOSS 3%\nSIZE 0%\n")
    assert 'data-error-lines="3 4"' in fragment
    assert "line 3, column 1</a>: STOP LOSS is already set on line 2" in fragment
    assert "line 4, column 6</a>: SIZE must be more than 0 %" in fragment


def test_dashboard_activity_says_which_level_ended_the_trade(operator, db, paper_trader):
    trader = paper_trader("IF CLOSE > 100 THEN BUY\nTRAILING STOP 2%\n")
    trader.on_tick(tick(0, 1, 101.0))
    trader.on_tick(tick(1, 0, 100.0))
    trader.on_tick(tick(1, 9, 97.0))
    page = operator.get("/").get_data(as_text=True)
    assert '<em class="exit-trailing_stop">exit by trailing stop</em> <code>TRAILING STOP 2%</code>' in page


def test_backtest_report_counts_exits_by_reason(ethbtc):
    from core.backtest import format_report

    result = run_backtest(ethbtc, compile_strategy(SEED + "STOP LOSS 0.3%\nSIZE 50%\n"))
    reasons = Counter(t.exit_reason for t in result.trades if t.exit_reason)
    report = format_report(result, "title", ethbtc)
    assert f"exits by      rule {reasons['rule']:,}, stop loss {reasons['stop_loss']:,}" in report
    assert "50 % of equity per entry" in report
    last = result.trades[-2]
    assert report.splitlines()[-2].endswith(last.exit_reason.replace("_", " "))


# -- backtrader, where its orders can say the same thing ---------------------------------------------------

def test_backtrader_stop_and_limit_orders_give_the_same_exits(tmp_path, ethbtc):
    """backtrader with cheat-on-open: the entry, a Stop sell at E·(1−p) and a Limit sell at E·(1+q) (one
    cancels the other) are placed at the entry candle's open, so the levels are checked from the entry
    candle on, as ours. Differences written down in the README: backtrader tries the stop before the
    limit (ours: a gap up through the target wins even if the low then reaches the stop), and its
    StopTrail trails the close, not the highs, so the trailing stop is not compared here."""
    bt = pytest.importorskip("backtrader")
    import datetime

    csv_path = tmp_path / "ethbtc.csv"
    columns = [ethbtc["open_time_ms"] // 1000] + [ethbtc[k] for k in ("open", "high", "low", "close", "volume")]
    with open(csv_path, "w") as out:
        out.writelines(",".join(map(repr, row)) + "\n" for row in zip(*(c.tolist() for c in columns)))
    stop_share, target_share = 0.003, 0.004
    fills = []

    class Seed(bt.Strategy):
        def __init__(self):
            self.fast, self.slow = bt.ind.SMA(period=4), bt.ind.SMA(period=9)
            self.wanted, self.blocked, self.exits = None, False, []

        def next(self):
            fast, slow = self.fast[0], self.slow[0]
            tolerance = 1e-10 * max(abs(fast), abs(slow))
            buy = fast - slow > tolerance and self.data.close[0] - self.data.open[0] > 1e-10 * self.data.open[0]
            sell = slow - fast > tolerance
            if not buy:
                self.blocked = False
            if buy and not self.position and not self.blocked:
                self.wanted = "BUY"
            elif sell and self.position:
                self.wanted = "SELL"

        def next_open(self):
            if self.wanted == "BUY":
                entry = self.data.open[0]
                size = self.broker.getcash() / entry * 0.98
                self.buy(size=size, exectype=bt.Order.Market)
                stop = self.sell(size=size, exectype=bt.Order.Stop, price=entry * (1 - stop_share))
                target = self.sell(size=size, exectype=bt.Order.Limit, price=entry * (1 + target_share), oco=stop)
                self.exits = [stop, target]
            elif self.wanted == "SELL":
                for order in self.exits:
                    self.cancel(order)
                self.exits = []
                self.close(exectype=bt.Order.Market)
            self.wanted = None

        def notify_order(self, order):
            if order.status != order.Completed:
                return
            when = int(bt.num2date(order.executed.dt).replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
            reason = {bt.Order.Stop: "stop_loss", bt.Order.Limit: "take_profit"}.get(order.exectype, "rule")
            if order.issell() and reason != "rule":
                self.blocked, self.exits = True, []
            fills.append(("BUY" if order.isbuy() else "SELL", order.executed.price, when, reason))

    cerebro = bt.Cerebro(stdstats=False, cheat_on_open=True)
    cerebro.adddata(bt.feeds.GenericCSVData(dataname=str(csv_path), dtformat=1, datetime=0, open=1, high=2, low=3,
                                            close=4, volume=5, openinterest=-1, timeframe=bt.TimeFrame.Minutes))
    cerebro.addstrategy(Seed)
    cerebro.broker.setcash(1e12)
    cerebro.broker.set_coo(True)
    cerebro.broker.setcommission(commission=0.001)
    cerebro.run()
    text = "IF MA4 > MA9 AND CLOSE > OPEN THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 0.3%\nTAKE PROFIT 0.4%\n"
    ours = run_backtest(ethbtc, compile_strategy(text))
    theirs = []
    for side, price, when, reason in fills:
        if side == "BUY":
            theirs.append([when, round(price, 8), None, None, None])
        else:
            theirs[-1][2:] = [when, round(price, 8), reason]
    expected = [[t.entry_time, round(t.entry_price, 8), t.exit_time,
                 None if t.exit_price is None else round(t.exit_price, 8), t.exit_reason] for t in ours.trades]
    assert theirs == expected
    assert Counter(t[4] for t in expected)["stop_loss"] > 100 and Counter(t[4] for t in expected)["take_profit"] > 50


# -- Binance: a risk exit is a market order whose client id comes from the exit's own decision ------------

def test_binance_spot_risk_exit_is_one_sell_the_market_order_of_the_exit_decision_or_the_stop_on_binance(data_dir):
    import os

    from tests.exchange.standin import API_KEY, API_SECRET, DAY_START_MS, start_standin

    exchange = start_standin(start_ms=DAY_START_MS + 3 * 3_600_000, speed=300)
    try:
        (data_dir / "strategy.txt").write_text("IF CLOSE > OPEN THEN BUY\nTRAILING STOP 0.02%\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMNIWISE_DATA_DIR": str(data_dir),
               "OMNIWISE_LOG_LEVEL": "ERROR", "OMNIWISE_FEED": "binance", "OMNIWISE_BROKER": "binance-spot",
               "OMNIWISE_SYMBOL": "XRPETH", "OMNIWISE_WARMUP_HOURS": "1", "OMNIWISE_BINANCE_TIMEOUT": "1",
               "OMNIWISE_BINANCE_API_URL": exchange.api_url, "OMNIWISE_BINANCE_STREAM_URL": exchange.stream_url,
               "BINANCE_API_KEY": API_KEY, "BINANCE_API_SECRET": API_SECRET}
        worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            exits_done = wait_until(lambda: query(
                data_dir, "SELECT d.id, d.reason, o.client_order_id, o.status, o.exchange_order_id FROM decisions d "
                          "JOIN orders o ON o.decision_id = d.id WHERE d.reason = 'trailing_stop' "
                          "AND o.status = 'filled'"),
                worker, timeout_s=90, what="a trailing-stop exit filled at the exchange")
        finally:
            stop_worker(worker)
        decision_id, _, client_id, _, exchange_order_id = exits_done[0]
        assert re.fullmatch(rf"ow[A-Za-z0-9]{{8}}-{decision_id}", client_id)  # this installation's prefix
        # Exactly one sell for the exit event: the worker's market order on the trade that crossed, or the stop
        # Binance held (STOP_LOSS_LIMIT here) when it was executed first; then the worker sent nothing.
        (sent,) = [o for o in exchange.orders if str(o["orderId"]) == exchange_order_id]
        if sent["type"] == "MARKET":
            assert sent["clientOrderId"] == client_id
        else:
            assert sent["type"] == "STOP_LOSS_LIMIT" and re.fullmatch(r"ow[A-Za-z0-9]{8}-s[a-z0-9]{4}\d+",
                                                                       sent["clientOrderId"])
            assert exchange.orders_for(client_id) == []
        assert sent["side"] == "SELL"
        assert query(data_dir, "SELECT count(*) FROM alerts WHERE subject = 'trade' AND state = 'trailing_stop'")[0][0] >= 1
    finally:
        exchange.close()


@pytest.fixture
def worker_in_trade(settings):
    """A paper worker long from 100 with STOP LOSS 2 % (the stop at 98), two candles in."""
    import dataclasses

    from worker import Worker

    settings = dataclasses.replace(settings, symbol="XRPETH")
    settings.strategy_path.write_text("IF CLOSE > 100 THEN BUY\nSTOP LOSS 2%\n")
    worker = Worker(settings, clock=lambda: 1_700_000_000.0)
    worker.trader.on_candle(Candle(T0, 101, 101, 101, 101, 1.0, T0 + 59_999, 101, 1, 0.5, 50))  # BUY
    worker.trader.on_candle(Candle(T0 + MINUTE, 100, 101, 100, 101, 1.0, T0 + MINUTE + 59_999, 101, 1, 0.5, 50))
    assert worker.trader.open_trade.entry_price == 100
    yield worker
    worker.db.close()


def test_the_worker_checks_the_levels_on_each_live_trade_and_a_minute_joined_late_again_by_its_candle(
        worker_in_trade):
    from core.candles import LiveTrade

    worker, trader = worker_in_trade, worker_in_trade.trader
    # Connected in the middle of minute 2: its trades before were missed, so its candle is checked too.
    worker.trade(iter([LiveTrade(99.0, T0 + 2 * MINUTE + 30_000, 7, is_first_seen=True),
                       LiveTrade(98.5, T0 + 2 * MINUTE + 40_000, 8)]))
    assert trader.open_trade.is_open  # no trade reached 98
    trader.on_candle(Candle(T0 + 2 * MINUTE, 99, 99.5, 97.5, 98.5, 1.0, T0 + 2 * MINUTE + 59_999, 98, 1, 0.5, 49))
    reason, price = worker.db.execute("SELECT d.reason, o.price FROM orders o JOIN decisions d "
                                      "ON d.id = o.decision_id WHERE o.side = 'SELL'").fetchone()
    assert (reason, price) == ("stop_loss", pytest.approx(98.0))  # the candle's low 97.5 reached the stop


def test_a_live_trade_crossing_the_stop_ends_the_trade_before_its_candle_comes(worker_in_trade):
    from core.candles import LiveTrade

    worker = worker_in_trade
    worker.trade(iter([LiveTrade(99.0, T0 + 2 * MINUTE + 1, 7, is_first_seen=True),
                       LiveTrade(99.5, T0 + 3 * MINUTE, 8),  # the minute's open, watched from its start
                       LiveTrade(97.9, T0 + 3 * MINUTE + 5_000, 9)]))
    assert not worker.trader.open_trade.is_open
    (minute_ms,) = worker.db.execute("SELECT candle_open_time_ms FROM decisions WHERE reason = 'stop_loss'").fetchone()
    assert minute_ms == T0 + 3 * MINUTE and worker.db.execute("SELECT count(*) FROM candles").fetchone() == (2,)

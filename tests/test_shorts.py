"""Shorts (DESIGN.md "Shorts"): the language, the money of a short, its mirrored risk exits and its
liquidation in the backtest, checked against hand-computed cases and a plain candle-by-candle account
written here without core; then the worker's paper trades of a reversing strategy against the backtest."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from core import exits
from core.backtest import load_candles, run_backtest
from core.dsl import Action, StrategyError, compile_strategy
from tests.conftest import ROOT, SHARED_DATA

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
REVERSING = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SHORT\n"
MINUTE = 60_000
T0 = 1_570_752_000_000


# -- the language -------------------------------------------------------------------------------------

def test_short_is_a_target_of_its_own():
    policy = compile_strategy("IF CLOSE > 3 THEN BUY\nif close < 2 then short\nIF CLOSE < 2.5 THEN SELL\n")
    actions = policy.decide_all({"close": np.array([4.0, 1.0, 2.2, 3.0])})
    assert actions.tolist() == [Action.BUY, Action.SHORT, Action.SELL, Action.HOLD]
    assert policy.has_short and not compile_strategy("IF CLOSE > 3 THEN SELL").has_short


def test_a_misspelt_short_is_named_with_the_nearest_action():
    with pytest.raises(StrategyError) as error:
        compile_strategy("IF CLOSE > 3 THEN SHORRT")
    assert "unknown action 'SHORRT': expected BUY, SELL, SHORT or HOLD (did you mean SHORT?)" in str(error.value)


# -- a plain account, candle by candle (the reference) -------------------------------------------------

def reference(candles, actions, fee=0.001, size=1.0, fill="next-open", stop=None, target=None, trail=None,
              atr=None):
    """DESIGN.md's "Risk statements" and "Shorts" for one account, written without core.exits/backtest.
    stop/target/trail: ("pct", p) or ("atr", k). Returns (trades, equity at each close); a trade is
    (side, entry index, entry price, exit index, exit price, reason, return %)."""
    O, H, L, C = (list(map(float, candles[k])) for k in ("open", "high", "low", "close"))
    n = len(O)
    cash, pos, pending, blocked, trades, equity = 1.0, None, None, None, [], []

    def level(spec, price, a, sign):
        if spec is None:
            return math.nan
        kind, value = spec
        return price * (1 + sign * value) if kind == "pct" else price + sign * (value * a)

    def open_(side, t, price, a, first):
        nonlocal cash
        money = cash * size
        cash -= money
        return {"side": side, "i": t, "E": price, "M": money, "ext": price, "atr": a, "first": first}

    def close(t, price, reason):
        nonlocal cash, pos
        E, M = pos["E"], pos["M"]
        per_unit = worth(pos["side"], E, 1.0, price)  # what one unit of money committed comes back as
        cash += M * per_unit
        trades.append((pos["side"], pos["i"], E, t, price, reason, (per_unit - 1) * 100))
        pos = None

    def worth(side, E, M, price):
        if side == "long":
            return M / E * (1 - fee) * price * (1 - fee)
        return M + M / E * (E * (1 - fee) - price * (1 + fee))

    def value(price):
        if pos is None:
            return cash
        return cash + worth(pos["side"], pos["E"], pos["M"], price)

    for t in range(n):
        if pending is not None:  # the decision of candle t - 1 fills at this open
            if pos is not None and pos["side"] != pending[0]:
                close(t, O[t], "rule")
            if pending[0] != "flat" and pos is None:
                pos = open_(pending[0], t, O[t], pending[1], t)
            pending = None
        if pos is not None and t >= pos["first"]:
            E, a, side = pos["E"], pos["atr"], pos["side"]
            d = 1 if side == "long" else -1  # prices against the trade are lower for a long, higher for a short
            s, tp, tr = level(stop, E, a, -d), level(target, E, a, d), level(trail, pos["ext"], a, -d)
            # The effective stop is the nearer of the two: the higher for a long, the lower for a short.
            eff, why = (tr, "trailing_stop") if not math.isnan(tr) and (math.isnan(s) or d * tr > d * s) else (s, "stop_loss")
            gone = E * (2 - fee) / (1 + fee)  # where a short has lost its notional
            if d < 0 and (math.isnan(eff) or eff > gone):
                eff, why = gone, "liquidation"
            worst, best = (L[t], H[t]) if d > 0 else (H[t], L[t])
            out = None
            if d * O[t] <= d * eff:
                out = (gone, "liquidation") if d < 0 and O[t] >= gone else (O[t], why)
            elif d * O[t] >= d * tp:
                out = (O[t], "take_profit")
            elif d * worst <= d * eff:
                out = (eff, why)
            elif d * best >= d * tp:
                out = (tp, "take_profit")
            if out:
                blocked = side
                close(t, *out)
            else:
                pos["ext"] = max(pos["ext"], H[t]) if side == "long" else min(pos["ext"], L[t])
        want = {1: "long", 2: "flat", 3: "short"}.get(int(actions[t]))
        if want is not None and want != blocked:
            blocked = None
        elif want is None:
            blocked = None
        if want is not None and want != blocked and (pos is None or pos["side"] != want):
            if not (want == "flat" and pos is None):
                a = float(atr[t]) if atr is not None else math.nan
                if fill == "next-open":
                    if t + 1 < n:
                        pending = (want, a)
                else:
                    if pos is not None:
                        close(t, C[t], "rule")
                    if want != "flat":
                        pos = open_(want, t, C[t], a, t + 1)
        equity.append(value(C[t]))
    if pos is not None:
        trades.append((pos["side"], pos["i"], pos["E"], None, None, None,
                       (worth(pos["side"], pos["E"], 1.0, C[-1]) - 1) * 100))
    return trades, np.array(equity)


def engine(candles, text, fee=0.001, fill="next-open"):
    result = run_backtest(candles, compile_strategy(text), fee_rate=fee, fill=fill)
    times = candles["open_time_ms"]
    index = {int(v): i for i, v in enumerate(times.tolist())}
    if fill == "close":
        index.update({int(v) + 59_999: i for i, v in enumerate(times.tolist())})
    trades = [(t.side, index[t.entry_time], t.entry_price, None if t.exit_time is None else index[t.exit_time],
               t.exit_price, t.exit_reason, t.return_pct) for t in result.trades]
    return trades, result


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a[:2] + a[3:4] + a[5:6] == b[:2] + b[3:4] + b[5:6], (a, b)
        assert a[2] == pytest.approx(b[2], rel=1e-12) and (a[4] is None) == (b[4] is None)
        if a[4] is not None:
            assert a[4] == pytest.approx(b[4], rel=1e-12)
        assert a[6] == pytest.approx(b[6], rel=1e-9, abs=1e-9)


def candles_of(rows, start=T0):
    """Candles from (open, high, low, close) rows, one a minute."""
    arrays = {k: np.array(v, dtype=np.float64) for k, v in zip(("open", "high", "low", "close"), zip(*rows))}
    arrays["volume"] = np.ones(len(rows))
    arrays["open_time_ms"] = start + np.arange(len(rows), dtype=np.int64) * MINUTE
    return arrays


# -- hand-computed cases --------------------------------------------------------------------------------

# The rule reads the candle's close: below 50 → SHORT, above 500 → BUY, between 300 and 500 → SELL.
HAND = "IF CLOSE < 50 THEN SHORT\nIF CLOSE > 500 THEN BUY\nIF CLOSE > 300 THEN SELL\n"


def test_a_short_pays_both_fees_on_its_notional():
    # SHORT decided on candle 0 fills at candle 1's open, 100; SELL on candle 2 fills at candle 3's open, 90.
    candles = candles_of([(40, 40, 40, 40), (100, 101, 95, 99), (95, 96, 94, 400), (90, 91, 89, 90)])
    result = run_backtest(candles, compile_strategy(HAND), fee_rate=0.001)
    (trade,) = result.trades
    assert (trade.side, trade.entry_price, trade.exit_price, trade.exit_reason) == ("short", 100.0, 90.0, "rule")
    # q = 1/100; profit = q·(100·0.999 − 90·1.001) = (99.9 − 90.09) / 100 = 0.0981
    assert trade.return_pct == pytest.approx(9.81, abs=1e-9)
    assert result.return_pct == pytest.approx(9.81, abs=1e-9)
    # At candle 1's close (99) the account is 1 + (99.9 − 99·1.001) / 100: marked with the buy-back fee.
    assert result.equity[1] == pytest.approx(1 + (99.9 - 99.099) / 100, abs=1e-12)
    # Fees: 100·0.001/100 at the entry, 90·0.001/100 at the exit.
    assert result.metrics.fees_paid == pytest.approx(0.001 + 0.0009, abs=1e-12)
    assert result.exposure_pct == pytest.approx(50.0)


def test_half_size_short_keeps_the_rest_as_cash():
    candles = candles_of([(40, 40, 40, 40), (100, 101, 95, 99), (95, 96, 94, 400), (90, 91, 89, 90)])
    result = run_backtest(candles, compile_strategy(HAND + "SIZE 50%"), fee_rate=0.001)
    assert result.trades[0].return_pct == pytest.approx(9.81, abs=1e-9)
    assert result.return_pct == pytest.approx(9.81 / 2, abs=1e-9)


def test_a_gap_through_a_shorts_stop_exits_at_the_open():
    # Entry at 100, STOP LOSS 2 % → 102; candle 2 opens at 105, above it: out at 105.
    candles = candles_of([(40, 40, 40, 40), (100, 101, 99, 100), (105, 106, 104, 105), (104, 104, 40, 40)])
    result = run_backtest(candles, compile_strategy(HAND + "STOP LOSS 2%"), fee_rate=0.001)
    first = result.trades[0]
    assert (first.side, first.exit_price, first.exit_reason, first.exit_time) == ("short", 105.0, "stop_loss",
                                                                                  T0 + 2 * MINUTE)
    assert first.return_pct == pytest.approx((99.9 - 105 * 1.001), abs=1e-9)  # −5.205 %
    # No instant re-entry: candle 2 still answers... HOLD (105 is between the rules); candle 3 says SHORT again.
    assert len(result.trades) == 1


def test_shorts_stop_take_profit_and_trailing_are_mirrored():
    # Entry 100. TAKE PROFIT 5 % → 95; TRAILING STOP 3 % from the lowest low of earlier candles.
    candles = candles_of([(40, 40, 40, 40), (100, 100.5, 97, 98), (98, 99.8, 96, 99), (99, 99.5, 98, 99)])
    result = run_backtest(candles, compile_strategy(HAND + "TRAILING STOP 3%\nTAKE PROFIT 5%"), fee_rate=0)
    first = result.trades[0]
    # Candle 1: trailing 100·1.03 = 103, not reached. Candle 2: lowest low so far 97 → 99.91; high 99.8: no.
    # Candle 3: lowest low 96 → 98.88; opens at 99 ≥ 98.88 → out at the open.
    assert (first.exit_price, first.exit_reason, first.exit_time) == (99.0, "trailing_stop", T0 + 3 * MINUTE)
    candles = candles_of([(40, 40, 40, 40), (100, 101, 94, 98)])
    target = run_backtest(candles, compile_strategy(HAND + "STOP LOSS 2%\nTAKE PROFIT 5%"), fee_rate=0).trades[0]
    assert (target.exit_price, target.exit_reason) == (95.0, "take_profit")
    both = candles_of([(40, 40, 40, 40), (100, 103, 94, 98)])  # touches both: the stop, conservatively
    stop = run_backtest(both, compile_strategy(HAND + "STOP LOSS 2%\nTAKE PROFIT 5%"), fee_rate=0).trades[0]
    assert (stop.exit_price, stop.exit_reason) == (102.0, "stop_loss")


def test_a_short_that_loses_its_notional_is_liquidated_at_that_level():
    # L = 100·(2 − 0.001)/(1 + 0.001) = 199.7003 ...: there the short has lost q·100, its whole notional.
    level = 100 * 1.999 / 1.001
    candles = candles_of([(40, 40, 40, 40), (100, 120, 99, 119), (119, 250, 118, 240), (240, 240, 40, 40)])
    result = run_backtest(candles, compile_strategy(HAND), fee_rate=0.001)
    first = result.trades[0]
    assert (first.exit_reason, first.exit_time) == ("liquidation", T0 + 2 * MINUTE)
    assert first.exit_price == pytest.approx(level, rel=1e-15)
    assert first.return_pct == pytest.approx(-100, abs=1e-9)
    assert result.equity[2] == pytest.approx(0, abs=1e-12)
    half = run_backtest(candles, compile_strategy(HAND + "SIZE 50%"), fee_rate=0.001)
    assert half.equity[-1] == pytest.approx(0.5, abs=1e-12)  # the other half was never at risk
    # A gap through it is still closed at the level: 1x loses the notional, no more.
    gap = candles_of([(40, 40, 40, 40), (100, 120, 99, 119), (300, 300, 280, 290)])
    assert run_backtest(gap, compile_strategy(HAND), fee_rate=0.001).trades[0].exit_price == pytest.approx(level)
    # A stop below the liquidation comes first.
    stopped = run_backtest(candles, compile_strategy(HAND + "STOP LOSS 50%"), fee_rate=0.001).trades[0]
    assert (stopped.exit_price, stopped.exit_reason) == (150.0, "stop_loss")


def test_a_flip_closes_at_the_same_open_that_opens_the_other_side():
    candles = candles_of([(600, 600, 600, 600), (100, 100, 100, 40), (90, 90, 90, 600), (80, 80, 80, 80)])
    trades = run_backtest(candles, compile_strategy(HAND), fee_rate=0).trades
    assert [(t.side, t.entry_price, t.exit_price) for t in trades] == [("long", 100, 90), ("short", 90, 80),
                                                                       ("long", 80, None)]


# -- against the reference: real data and structured random histories ----------------------------------

@pytest.fixture(scope="module")
def ethbtc():
    return load_candles(ETHBTC)


ETHBTC_STRATEGIES = [
    REVERSING,
    REVERSING + "SIZE 40%",
    "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 AND CLOSE < OPEN THEN SHORT\nIF MA4 < MA9 THEN SELL\n",
    REVERSING + "STOP LOSS 0.3%\nTAKE PROFIT 0.5%\nTRAILING STOP 0.25%",
    REVERSING + "STOP LOSS 1.5 * ATR(14)\nTAKE PROFIT 3 * ATR(14)\nTRAILING STOP 2 * ATR(14)\nSIZE 70%",
    # HOLD between SHORTs: re-entries inside one short segment after a risk exit
    "IF MA4 > MA9 THEN SELL\nIF MA4 < MA9 AND CLOSE < OPEN THEN SHORT\nSTOP LOSS 0.2%\nTRAILING STOP 0.15%",
]


def _specs(policy):
    def spec(d):
        return None if d is None else (("atr", d.multiple) if d.is_atr else ("pct", d.share))
    risk = policy.risk
    return {"stop": spec(risk.stop_loss), "target": spec(risk.take_profit), "trail": spec(risk.trailing_stop),
            "size": risk.size_share}


@pytest.mark.parametrize("fill", ["next-open", "close"])
@pytest.mark.parametrize("text", ETHBTC_STRATEGIES)
def test_backtest_equals_a_plain_account_on_real_data(ethbtc, text, fill):
    policy = compile_strategy(text)
    atr = talib.ATR(ethbtc["high"], ethbtc["low"], ethbtc["close"], 14)
    expected, equity = reference(ethbtc, policy.decide_all(ethbtc), fill=fill, atr=atr, **_specs(policy))
    ours, result = engine(ethbtc, text, fill=fill)
    assert_same(ours, expected)
    np.testing.assert_allclose(result.equity, equity, rtol=1e-9)
    sides = {t[0] for t in expected}
    assert sides == {"long", "short"} or "SELL" in text


_distance = st.one_of(st.none(), st.floats(0.0005, 0.3).map(lambda p: ("pct", p)),
                      st.floats(0.1, 80).map(lambda k: ("atr", k)))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(-0.6, 0.9), st.floats(0, 0.9), st.floats(0, 0.5),
                                st.floats(-0.5, 1.2)), min_size=1, max_size=60),
       runs=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(1, 6)), min_size=1, max_size=30),
       stop=_distance, target=_distance, trail=_distance, fill=st.sampled_from(["next-open", "close"]),
       fee=st.sampled_from([0.0, 0.001, 0.02]), scalar=st.booleans())
def test_backtest_equals_the_reference_on_gaps_doubles_and_random_targets(steps, runs, stop, target, trail, fill,
                                                                           fee, scalar):
    # Structure, not noise: big gaps both ways, candles that double (liquidations), runs of each target.
    price, rows = 100.0, []
    for gap, up, down, move in steps:
        o = price * (1 + gap)
        c = o * (1 + move)
        rows.append((o, max(o, c) * (1 + up), min(o, c) * (1 - down), c))
        price = c
    candles = candles_of(rows)
    actions = np.array([a for a, k in runs for _ in range(k)][:len(rows)] + [0] * len(rows), dtype=np.int8)[:len(rows)]
    from core.dsl import Distance, Risk
    def distance(spec):
        return None if spec is None else (Distance(share=spec[1]) if spec[0] == "pct" else
                                          Distance(multiple=spec[1], atr_period=3))
    risk = Risk(distance(stop), distance(target), distance(trail))
    atr = talib.ATR(candles["high"], candles["low"], candles["close"], 3)
    original = exits.SCALAR_SEGMENTS
    exits.SCALAR_SEGMENTS = 10**9 if scalar else 0
    try:
        found = exits.find_trades(candles, actions, risk, fill, fee)
    finally:
        exits.SCALAR_SEGMENTS = original
    expected, _ = reference(candles, actions, fee=fee, fill=fill, stop=stop, target=target, trail=trail, atr=atr)
    ours = [("short" if s else "long", int(e), float(ep), None if x < 0 else int(x), None if x < 0 else float(xp),
             None if r < 0 else exits.REASONS[r])
            for s, e, ep, x, xp, r in zip(found.is_short, found.entry_index, found.entry_price, found.exit_index,
                                          found.exit_price, found.exit_reason)]
    # The reference's entry index is the decision's fill candle; find_trades gives the same.
    theirs = [t[:6] for t in expected]
    assert [t[:2] + t[3:4] + t[5:] for t in ours] == [t[:2] + t[3:4] + t[5:] for t in theirs]
    prices = [(t[2], t[4]) for t in ours]  # the liquidation level is written E·((2−f)/(1+f)) there, so to 1e-12
    assert prices == [(pytest.approx(t[2], rel=1e-12), None if t[4] is None else pytest.approx(t[4], rel=1e-12))
                      for t in theirs]


def backtest_cli(strategy, *options) -> str:
    run = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(ETHBTC),
                          "--strategy", str(strategy), *options], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_backtest_json_puts_the_side_first_and_the_table_shows_it(tmp_path):
    strategy = tmp_path / "s.txt"
    strategy.write_text(REVERSING + "STOP LOSS 0.3%\n")
    trades = json.loads(backtest_cli(strategy, "--json"))["trades"]
    assert all(list(t)[0] == "side" for t in trades)
    assert {t["side"] for t in trades} == {"long", "short"}
    text = backtest_cli(strategy)
    assert "long and short" in text and "\n  short " in text


def test_the_chart_marks_short_entries_and_liquidations_with_their_own_shapes():
    from core.charts import render_svg
    candles = candles_of([(40, 40, 40, 40), (100, 120, 99, 119), (119, 250, 118, 240), (240, 240, 40, 40),
                          (30, 30, 30, 30)])
    result = run_backtest(candles, compile_strategy(HAND), fee_rate=0.001)
    svg = render_svg(result, candles)
    assert svg.count('class="entry-short"') == 2 and svg.count('class="exit-liquidation"') == 1
    assert "✖ liquidation" in svg and "▼ short entry" in svg


# -- paper: the worker's trades ---------------------------------------------------------------------------

from core import open_trade  # noqa: E402
from core.candles import Candle  # noqa: E402
from tests.processes import query, start_worker, stop_worker, wait_until  # noqa: E402
from tests.test_exits import paper_trader, tick  # noqa: E402,F401  (a fixture and a helper shared with it)


def paired_orders(rows):
    """Trades from filled orders (side, target, price, filled_at_ms, decision reason), paired here: an order
    to "long" or "short" opens, one to "flat" closes."""
    trades = []
    for side, target, price, time_ms, reason in rows:
        if target in ("long", "short"):
            trades.append([target, time_ms, price, None, None, None])
        else:
            assert target == "flat" and trades and trades[-1][3] is None
            trades[-1][3:] = [time_ms, price, exits.exit_reason(reason)]
    return [tuple(t) for t in trades]


def worker_trades(data_dir):
    return paired_orders(query(data_dir, "SELECT o.side, o.target, o.price, o.filled_at_ms, d.reason FROM orders o "
                                         "JOIN decisions d ON d.id = o.decision_id WHERE o.status = 'filled' "
                                         "ORDER BY o.id"))


@pytest.mark.parametrize("risk_lines", ["", "STOP LOSS 0.3%\nTAKE PROFIT 0.5%\nTRAILING STOP 0.25%\nSIZE 60%"])
def test_worker_paper_trades_of_a_reversing_strategy_equal_the_backtest(data_dir, tmp_path, risk_lines):
    text = REVERSING + risk_lines
    (data_dir / "strategy.txt").write_text(text)
    part = tmp_path / "ETHBTC-1m-part.csv"
    part.write_text("".join(ETHBTC.read_text().splitlines(keepends=True)[:3001]))
    candles = load_candles(part)
    expected = run_backtest(candles, compile_strategy(text))
    worker = start_worker(data_dir, replay_file=part, replay_speed=0, symbol="ETHBTC", log_level="ERROR")
    wait_until(lambda: query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'strategy'")
               == [(len(candles["close"]),)], worker, timeout_s=180, what="the whole file decided")
    stop_worker(worker)
    ours = worker_trades(data_dir)
    theirs = [(t.side, t.entry_time, t.entry_price, t.exit_time, t.exit_price, t.exit_reason) for t in expected.trades]
    assert ours == theirs
    assert {t[0] for t in theirs} == {"long", "short"} and len(theirs) > 100
    # Each change of side is a close and an open: two decisions, two orders, two client ids.
    flips = query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'strategy:close'")[0][0]
    assert flips > 50
    (orders, ids, decisions) = query(data_dir, "SELECT count(*), count(DISTINCT client_order_id), "
                                               "count(DISTINCT decision_id) FROM orders WHERE status = 'filled'")[0]
    assert orders == ids == decisions == 2 * len(theirs) - (theirs[-1][3] is None)
    # The paper account marked at the last close (a long with the sale's fee, a short with the buy-back's) is
    # the backtest's equity there.
    (quote, base) = query(data_dir, "SELECT quote_balance, base_qty FROM paper_accounts")[0]
    close = candles["close"][-1]
    marked = quote + base * close * (1 - 0.001 if base > 0 else 1 + 0.001)
    assert marked == pytest.approx(10_000 * expected.equity[-1], rel=1e-9)


def minute(trader, i, o, h, lo, c):
    trader.on_candle(Candle(T0 + i * MINUTE, o, h, lo, c, 1.0, T0 + i * MINUTE + 59_999, c, 1, 0.5, c / 2))


def test_paper_short_holds_the_sale_and_buys_it_back_with_both_fees(db, paper_trader):
    trader = paper_trader(HAND)
    minute(trader, 0, 40, 40, 40, 40)          # SHORT
    minute(trader, 1, 100, 101, 95, 400)       # sold short at 100: 10 XRP for 1000 · 0.999; then SELL
    assert trader.broker.position().side == "short"
    quote, base, entry = trader.broker.account()
    assert (quote, base, entry) == (pytest.approx(1000 + 999.0), pytest.approx(-10.0), 100.0)
    minute(trader, 2, 90, 91, 89, 400)         # bought back at 90: 10 · 90 · 1.001
    quote, base, _ = trader.broker.account()
    assert quote == pytest.approx(1999 - 900.9) and base == 0  # 1098.1: +9.81 %, as the backtest's hand case
    sides = db.execute("SELECT o.side, o.target, d.reason FROM orders o JOIN decisions d ON d.id = o.decision_id "
                       "ORDER BY o.id").fetchall()
    assert sides == [("SELL", "short", "strategy"), ("BUY", "flat", "strategy")]
    from core import account
    (trip,) = account.round_trips(account.filled_orders(db, "XRPETH"))
    assert (trip.side, trip.exit_reason) == ("short", "rule") and trip.pnl_pct == pytest.approx(9.81)


def test_a_flip_is_a_close_and_an_open_with_their_own_decisions_and_client_ids(db, paper_trader):
    trader = paper_trader(HAND)
    minute(trader, 0, 600, 600, 600, 600)      # BUY
    minute(trader, 1, 100, 100, 100, 40)       # long at 100; SHORT: a close and an open
    rows = db.execute("SELECT d.id, d.action, d.target, d.position_before, d.reason, o.side, o.target, "
                      "o.client_order_id, o.status FROM decisions d JOIN orders o ON o.decision_id = d.id "
                      "WHERE d.candle_open_time_ms = ? ORDER BY o.id", [T0 + MINUTE]).fetchall()
    assert [r[1:7] + r[8:] for r in rows] == [("SELL", "flat", "long", "strategy:close", "SELL", "flat", "pending"),
                                              ("SHORT", "short", "long", "strategy", "SELL", "short", "pending")]
    assert rows[0][7] != rows[1][7]
    minute(trader, 2, 90, 90, 90, 90)          # both fill at 90, in that order
    assert trader.broker.position().side == "short" and trader.open_trade.is_short
    assert db.execute("SELECT side, price FROM orders ORDER BY id").fetchall() == [
        ("BUY", 100.0), ("SELL", 90.0), ("SELL", 90.0)]


def test_live_short_stop_fills_at_the_crossing_trade_and_blocks_only_the_short_side(db, paper_trader):
    trader = paper_trader(HAND + "STOP LOSS 2%\n")
    trader.on_tick(tick(0, 1, 40.0))           # minute 0 closes at 40: SHORT
    trader.on_tick(tick(1, 0, 100.0))          # minute 1 opens at 100: short; stop 102
    assert trader.broker.position().side == "short"
    trader.on_tick(tick(1, 20, 101.5))
    assert trader.broker.position().side == "short"
    trader.on_tick(tick(1, 30, 102.4))         # through the stop (102) mid-minute: bought back at that trade
    assert trader.broker.position().side == "flat"
    (row,) = db.execute("SELECT o.side, o.price, d.reason, d.position_before FROM orders o JOIN decisions d "
                        "ON d.id = o.decision_id WHERE o.side = 'BUY'").fetchall()
    assert row == ("BUY", 102.4, "stop_loss", "short")
    state = open_trade.load(db, "XRPETH")
    assert state.reentry_blocked and state.is_short
    trader.on_tick(tick(2, 0, 45.0))           # minute 1 closed at 102.4: HOLD, unblocked
    trader.on_tick(tick(3, 0, 45.0))           # minute 2 closed at 45: SHORT again
    assert db.execute("SELECT count(*) FROM orders WHERE target = 'short'").fetchone() == (2,)


def test_a_short_opened_through_its_stop_fills_at_the_minutes_first_price(db, paper_trader):
    trader = paper_trader(HAND + "STOP LOSS 2%\nTAKE PROFIT 3%\n")
    trader.on_tick(tick(0, 1, 40.0))
    trader.on_tick(tick(1, 0, 100.0))          # short at 100
    trader.on_tick(tick(1, 50, 101.0))
    trader.on_tick(tick(2, 5, 104.0))          # the next minute opens above the stop: filled there
    assert db.execute("SELECT o.price, d.reason FROM orders o JOIN decisions d ON d.id = o.decision_id "
                      "WHERE o.side = 'BUY'").fetchone() == (104.0, "stop_loss")


def test_a_paper_short_is_liquidated_where_it_has_lost_its_notional(db, paper_trader):
    trader = paper_trader(HAND)
    minute(trader, 0, 40, 40, 40, 40)
    minute(trader, 1, 100, 120, 99, 119)       # short 10 at 100
    minute(trader, 2, 119, 250, 118, 240)      # high 250 passes L = 199.70...: bought back there
    (price, reason) = db.execute("SELECT o.price, d.reason FROM orders o JOIN decisions d ON d.id = o.decision_id "
                                 "WHERE o.side = 'BUY'").fetchone()
    assert reason == "liquidation" and price == pytest.approx(100 * 1.999 / 1.001)
    quote, base, _ = trader.broker.account()
    assert quote == pytest.approx(0.0, abs=1e-9) and base == 0  # SIZE 100 %: the whole notional is gone
    assert "LIQUIDATION" in db.execute("SELECT message FROM alerts").fetchone()[0]


def test_short_risk_state_survives_a_restart(db, paper_trader):
    trader = paper_trader(HAND + "TRAILING STOP 2%\n")
    minute(trader, 0, 40, 40, 40, 40)
    minute(trader, 1, 100, 101, 90, 92)        # short at 100; the lowest low becomes 90
    again = paper_trader(HAND + "TRAILING STOP 2%\n")
    again.resume()
    assert (again.open_trade.entry_price, again.open_trade.peak, again.open_trade.is_short) == (100.0, 90.0, True)
    minute(again, 2, 91, 92, 91, 91.5)         # trailing 91.8: high 92 reaches it
    assert db.execute("SELECT price FROM orders WHERE side = 'BUY'").fetchone() == (pytest.approx(91.8),)


def test_flatten_buys_a_paper_short_back(db, paper_trader):
    trader = paper_trader(HAND)
    minute(trader, 0, 40, 40, 40, 40)
    minute(trader, 1, 100, 101, 95, 99)
    assert trader.flatten().startswith("BUY 10 XRPETH at 99")
    assert trader.broker.position().side == "flat"


def test_the_editor_preview_shows_each_trades_side(operator, settings, db, ethbtc):
    from core.charts import preview
    from tests.test_exits import store_ethbtc, validate

    store_ethbtc(db, settings.symbol, ethbtc)
    expected = preview(db, settings.symbol, compile_strategy(REVERSING), settings.fee_rate).result
    shorts = sum(t.side == "short" for t in expected.trades)
    assert 0 < shorts < len(expected.trades)
    fragment = validate(operator, REVERSING)
    assert fragment.count('class="entry-short"') == shorts  # the chart: a downward triangle a short entry
    sides = [t.side for t in expected.trades[-5:]][::-1]  # the table: the newest five, newest first
    assert [f'<td class="side-{side}">{side}</td>' for side in sides] == \
        [cell for cell in fragment.split("<tr>") for cell in [cell[cell.find("<td"):cell.find("</td>") + 5]]
         if cell.startswith('<td class="side-')]

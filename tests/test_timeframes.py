"""Timeframes: `TIMEFRAME tf` and `value@tf` in the language, candles of a timeframe built from minutes, and
the backtest of timeframe strategies against an independent reference written here (pandas resampling plus
TA-Lib, no parser), no look-ahead, and the live trader deciding as the backtest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import timeframes
from core.backtest import load_candles, run_backtest
from core.brokers import PaperBroker
from core.candles import Candle
from core.dsl import Action, StrategyError, compile_strategy
from core.policy_loader import PolicyLoader
from core.trader import Trader
from tests.conftest import SHARED_DATA
from tests.test_exits import store_ethbtc as store_candles
from tests.processes import query, start_worker, stop_worker, wait_until

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"  # starts at 04:53 UTC; 04:38 on 2018-01-24 is missing
MINUTE = 60_000
FEE = 0.001


@pytest.fixture(scope="module")
def ethbtc():
    return load_candles(ETHBTC)


# -- the language ---------------------------------------------------------------------------------------

def test_timeframe_and_at_parse_into_the_policy():
    policy = compile_strategy("timeframe 15M   # decide on quarter hours\n"
                              "IF CLOSE > SMA(50)@4h AND RSI(14) CROSSES ABOVE 30 THEN BUY\n"
                              "IF (HIGH - LOW)@1H > 2 * ATR(14) THEN SELL\n")
    assert policy.timeframe == 15 and policy.timeframes == {15, 60, 240}
    assert compile_strategy("IF CLOSE > SMA(3)@1m THEN BUY").timeframe == 1


@pytest.mark.parametrize("text, line, column, words", [
    ("TIMEFRAME 7m\nIF CLOSE > 1 THEN BUY", 1, 11, "unknown timeframe '7m' (did you mean 5m?)"),
    ("TIMEFRAME 1w\nIF CLOSE > 1 THEN BUY", 1, 11, "unknown timeframe '1w'"),
    ("TIMEFRAME\n", 1, 10, "TIMEFRAME needs an interval"),
    ("TIMEFRAME 1h 4h", 1, 14, "one interval"),
    ("TIMEFRAME 15m\nIF CLOSE > 1 THEN BUY\n  TIMEFRAME 1h", 3, 3, "already set on line 1"),
    ("TIMEFRAME 1h\nIF CLOSE > SMA(5)@15m THEN BUY", 2, 18, "@15m is below the strategy's TIMEFRAME 1h"),
    ("IF CLOSE > SMA(5)@6h THEN BUY\nTIMEFRAME 4h", 1, 18, "@6h is not a whole multiple of the strategy's TIMEFRAME 4h"),
    ("IF CLOSE > SMA(5)@2x THEN BUY", 1, 19, "unknown timeframe '2x'"),
    ("IF CLOSE > SMA(5)@ THEN BUY", 1, 20, "expected a timeframe after @"),
    ("IF CLOSE > SMA(5)@", 1, 19, "expected a timeframe after @"),
    ("IF (CLOSE > OPEN)@1h THEN BUY", 1, 18, "not a condition"),
    ("IF CLOSE@1h THEN BUY", 1, 9, "@1h gives a value"),
])
def test_bad_timeframes_are_reported_at_their_line_and_column(text, line, column, words):
    with pytest.raises(StrategyError) as caught:
        compile_strategy(text)
    (error,) = caught.value.errors
    assert (error.line, error.column) == (line, column) and words in error.message, error


# -- candles of a timeframe -------------------------------------------------------------------------------

def frame_of(minutes: pd.DataFrame, tf: int) -> pd.DataFrame:
    """The reference: pandas' resampling of the minutes present, windows aligned to UTC, the newest window
    kept only once its last minute is present; `last` is each window's last minute present (its row)."""
    rows = minutes.assign(row=np.arange(len(minutes)))
    frame = rows.resample(f"{tf}min", closed="left", label="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum", "row": "last"}).dropna()
    if minutes.index[-1] + pd.Timedelta(minutes=1) != frame.index[-1] + pd.Timedelta(minutes=tf):
        frame = frame.iloc[:-1]
    frame["end"] = frame.index + pd.Timedelta(minutes=tf)
    frame["row"] = frame["row"].astype(np.int64)
    return frame


def minutes_frame(candles) -> pd.DataFrame:
    index = pd.to_datetime(candles["open_time_ms"], unit="ms")
    return pd.DataFrame({k: candles[k] for k in ("open", "high", "low", "close", "volume")}, index=index)


@pytest.mark.parametrize("tf", [3, 15, 60, 240, 1440])
def test_frames_equal_pandas_resampling_with_the_missing_minute_and_a_mid_hour_start(ethbtc, tf):
    ours = timeframes.build_frame(ethbtc, tf)
    theirs = frame_of(minutes_frame(ethbtc), tf)
    assert ours.candles["open_time_ms"].tolist() == (theirs.index.as_unit("ms").asi8).tolist()
    for name in ("open", "high", "low", "close"):
        assert ours.candles[name].tolist() == theirs[name].tolist(), name
    np.testing.assert_allclose(ours.candles["volume"], theirs["volume"], rtol=1e-12)
    assert ours.last_minute.tolist() == theirs["row"].tolist()


def test_a_window_is_closed_by_its_last_minute_or_a_later_one():
    minute = {k: np.array([1.0, 2.0, 3.0]) for k in ("open", "high", "low", "close", "volume")}
    base = 1_700_000_100 * 1000 // (15 * MINUTE) * (15 * MINUTE)
    # minutes 0, 1 of one window, then minute 14 (its last): closed
    closed = timeframes.build_frame(minute | {"open_time_ms": base + np.array([0, 1, 14]) * MINUTE}, 15)
    assert len(closed) == 1 and closed.last_minute.tolist() == [2]
    # minutes 0, 1, 13: the last minute has not come yet, nor a later one: open, no candle
    assert len(timeframes.build_frame(minute | {"open_time_ms": base + np.array([0, 1, 13]) * MINUTE}, 15)) == 0
    # minutes 0, 1 and one of the next window: the first window is closed (without its last minute)
    later = timeframes.build_frame(minute | {"open_time_ms": base + np.array([0, 1, 16]) * MINUTE}, 15)
    assert later.candles["close"].tolist() == [2.0] and later.last_minute.tolist() == [1]


# -- the backtest against a reference written here ---------------------------------------------------------

def crosses_above(a, b):
    out = np.zeros(len(a), dtype=bool)
    out[1:] = (a[1:] > b[1:]) & (a[:-1] <= b[:-1])
    return out


def read_at(strategy: pd.DataFrame, higher: pd.DataFrame, values) -> np.ndarray:
    """For each strategy candle, the value of the last higher-timeframe candle ended by the strategy candle's end."""
    left = pd.DataFrame({"end": strategy["end"].to_numpy()})
    right = pd.DataFrame({"end": higher["end"].to_numpy(), "value": np.asarray(values, dtype=np.float64)})
    return pd.merge_asof(left, right, on="end", direction="backward")["value"].to_numpy()


def ref_s1(m):
    """TIMEFRAME 15m; IF CLOSE > SMA(20)@1h AND RSI(14) CROSSES ABOVE 50 THEN BUY; IF RSI(14) > 60 THEN SELL"""
    f, h = frame_of(m, 15), frame_of(m, 60)
    close = f["close"].to_numpy()
    rsi = talib.RSI(close, 14)
    sma_h = read_at(f, h, talib.SMA(h["close"].to_numpy(), 20))
    buy = (close > sma_h) & crosses_above(rsi, np.full(len(rsi), 50.0))
    sell = rsi > 60
    return f, np.where(buy, "BUY", np.where(sell, "SELL", "HOLD")), {}


def ref_s2(m):
    """TIMEFRAME 1h, EMA(5)/EMA(13) with CLOSE > SMA(6)@4h, ATR levels of the hourly candles."""
    f, h4 = frame_of(m, 60), frame_of(m, 240)
    close = f["close"].to_numpy()
    fast, slow = talib.EMA(close, 5), talib.EMA(close, 13)
    trend = read_at(f, h4, talib.SMA(h4["close"].to_numpy(), 6))
    buy, sell = (fast > slow) & (close > trend), fast < slow
    atr = talib.ATR(f["high"].to_numpy(), f["low"].to_numpy(), close, 14)
    return f, np.where(buy, "BUY", np.where(sell, "SELL", "HOLD")), {"atr": atr}


def ref_s3(m):
    """TIMEFRAME 5m; MA4/MA9 with a 30-minute range filter (HIGH - LOW)@30m."""
    f, h = frame_of(m, 5), frame_of(m, 30)
    close = f["close"].to_numpy()
    ma4, ma9 = talib.SMA(close, 4), talib.SMA(close, 9)
    spread = read_at(f, h, h["high"].to_numpy() - h["low"].to_numpy())
    buy = (ma4 > ma9) & (spread > 0.0004)
    sell = ma4 < ma9
    return f, np.where(buy, "BUY", np.where(sell, "SELL", "HOLD")), {}


def ref_s4(m):
    """1-minute decisions against the 15-minute EMA(20): IF CLOSE > EMA(20)@15m THEN BUY, below it SELL."""
    f, q = frame_of(m, 1), frame_of(m, 15)
    close = f["close"].to_numpy()
    ema = read_at(f, q, talib.EMA(q["close"].to_numpy(), 20))
    return f, np.where(close > ema, "BUY", np.where(close < ema, "SELL", "HOLD")), {}


REFERENCES = [
    ("TIMEFRAME 15m\nIF CLOSE > SMA(20)@1h AND RSI(14) CROSSES ABOVE 50 THEN BUY\nIF RSI(14) > 60 THEN SELL\n",
     ref_s1, {}),
    ("TIMEFRAME 1h\nIF EMA(5) > EMA(13) AND CLOSE > SMA(6)@4h THEN BUY\nIF EMA(5) < EMA(13) THEN SELL\n"
     "STOP LOSS 1 * ATR(14)\nTAKE PROFIT 2 * ATR(14)\n", ref_s2, {"stop": ("atr", 1.0), "target": ("atr", 2.0)}),
    ("TIMEFRAME 5m\nIF MA4 > MA9 AND (HIGH - LOW)@30m > 0.0004 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
     "TRAILING STOP 0.4%\n", ref_s3, {"trail": ("pct", 0.004)}),
    ("IF CLOSE > EMA(20)@15m THEN BUY\nIF CLOSE < EMA(20)@15m THEN SELL\nSTOP LOSS 0.3%\n",
     ref_s4, {"stop": ("pct", 0.003)}),
]


def reference_trades(m: pd.DataFrame, frame, actions, extra, stop=None, target=None, trail=None,
                     fill="next-open"):
    """A plain minute-by-minute loop: decisions at each window's last minute present, fills at the next
    minute's open (or the deciding minute's close), risk levels checked on every minute of a trade."""
    o, h, lo, c = (m[k].to_numpy() for k in ("open", "high", "low", "close"))
    times = m.index.as_unit("ms").asi8
    n = len(o)
    deciding = {int(row): (str(action), extra["atr"][k] if "atr" in extra else np.nan)
                for k, (row, action) in enumerate(zip(frame["row"], actions))}

    def level(spec, price, atr, sign):
        if spec is None:
            return np.nan
        kind, amount = spec
        return price + sign * (amount * atr if kind == "atr" else price * amount)

    trades, pos, pending, blocked = [], None, None, False

    def enter(price, time_ms, atr, first):
        return {"E": price, "t": time_ms, "atr": atr, "peak": price, "first": first,
                "stop": level(stop, price, atr, -1), "target": level(target, price, atr, +1)}

    def leave(price, time_ms, reason):
        trades.append((pos["t"], pos["E"], time_ms, price, reason, (price / pos["E"] * (1 - FEE) ** 2 - 1) * 100))

    for j in range(n):
        if pending is not None:
            kind, atr = pending
            pending = None
            if kind == "BUY":
                pos = enter(o[j], times[j], atr, j)
            else:
                leave(o[j], times[j], "rule")
                pos = None
        if pos is not None and j >= pos["first"]:
            trail_level = level(trail, pos["peak"], pos["atr"], -1)
            effective, why = pos["stop"], "stop_loss"
            if trail_level > effective or (np.isnan(effective) and not np.isnan(trail_level)):
                effective, why = trail_level, "trailing_stop"
            hit = None
            if o[j] <= effective:
                hit = (o[j], why)
            elif o[j] >= pos["target"]:
                hit = (o[j], "take_profit")
            elif lo[j] <= effective:
                hit = (effective, why)
            elif h[j] >= pos["target"]:
                hit = (pos["target"], "take_profit")
            if hit:
                leave(hit[0], times[j], hit[1])
                pos, blocked = None, True
            else:
                pos["peak"] = max(pos["peak"], h[j])
        if j in deciding:
            action, atr = deciding[j]
            if blocked and action == "BUY":
                continue
            blocked = False
            if action == "BUY" and pos is None:
                if fill == "close":
                    pos = enter(c[j], times[j] + 59_999, atr, j + 1)
                elif j + 1 < n:
                    pending = ("BUY", atr)
            elif action == "SELL" and pos is not None:
                if fill == "close":
                    leave(c[j], times[j] + 59_999, "rule")
                    pos = None
                elif j + 1 < n:
                    pending = ("SELL", atr)
    if pos is not None:
        trades.append((pos["t"], pos["E"], None, None, None, (c[-1] / pos["E"] * (1 - FEE) ** 2 - 1) * 100))
    return trades


def engine_trades(candles, text, fill="next-open"):
    result = run_backtest(candles, compile_strategy(text), fee_rate=FEE, fill=fill)
    return [(t.entry_time, t.entry_price, t.exit_time, t.exit_price, t.exit_reason, t.return_pct)
            for t in result.trades]


def same_trades(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert (a[0], a[2], a[4]) == (b[0], b[2], b[4]), (a, b)
        assert a[1] == pytest.approx(b[1], rel=1e-12)
        assert (a[3] is None and b[3] is None) or a[3] == pytest.approx(b[3], rel=1e-12)
        assert a[5] == pytest.approx(b[5], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("text, reference, levels", REFERENCES, ids=["15m@1h", "1h@4h-atr", "5m@30m-trail", "1m@15m"])
def test_timeframe_backtests_equal_a_pandas_and_talib_reference_on_real_data(ethbtc, text, reference, levels):
    m = minutes_frame(ethbtc)
    frame, actions, extra = reference(m)
    theirs = reference_trades(m, frame, actions, extra, **levels)
    same_trades(engine_trades(ethbtc, text), theirs)
    assert len(theirs) >= 8, len(theirs)
    if levels:
        assert any(t[4] not in ("rule", None) for t in theirs)


def test_fill_at_the_close_of_the_window(ethbtc):
    text, reference, levels = REFERENCES[1]
    m = minutes_frame(ethbtc)
    frame, actions, extra = reference(m)
    same_trades(engine_trades(ethbtc, text, fill="close"),
                reference_trades(m, frame, actions, extra, fill="close", **levels))


def test_a_timeframe_strategy_is_not_a_minute_strategy_in_disguise(ethbtc):
    """The same rules decide differently on 15-minute candles: the timeframe really changes the input."""
    rules = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
    assert engine_trades(ethbtc, rules) != engine_trades(ethbtc, "TIMEFRAME 15m\n" + rules)


# -- no look-ahead -----------------------------------------------------------------------------------------

LOOKAHEAD_STRATEGY = ("TIMEFRAME 5m\nIF CLOSE > SMA(3)@15m AND EMA(HIGH, 4) CROSSES ABOVE (HIGH + LOW)@15m / 2 "
                      "THEN BUY\nIF CLOSE < WMA(3)@1h THEN SELL\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), steps=st.lists(st.tuples(st.integers(1, 7), st.floats(-0.03, 0.03), st.floats(0, 0.02)),
                                      min_size=5, max_size=300))
def test_changing_any_minute_after_a_decision_never_changes_that_decision(data, steps):
    # Minutes with gaps of up to 6 missing minutes; prices walking, with wide candles.
    times, rows, price, t = [], [], 100.0, 1_700_000_000_000 // MINUTE * MINUTE
    for gap, move, width in steps:
        t += gap * MINUTE
        close = price * (1 + move)
        rows.append((price, max(price, close) * (1 + width), min(price, close) * (1 - width), close))
        times.append(t)
        price = close
    candles = {k: np.array(v) for k, v in zip(("open", "high", "low", "close"), zip(*rows))}
    candles["volume"] = np.ones(len(rows))
    candles["open_time_ms"] = np.array(times, dtype=np.int64)
    policy = compile_strategy(LOOKAHEAD_STRATEGY)
    actions, decided = policy.decide_minutes(candles)
    cut = data.draw(st.integers(0, len(rows) - 1))
    changed = {k: v.copy() for k, v in candles.items()}
    factor = data.draw(st.sampled_from([0.5, 2.0, 1e6, 1e-6]))
    for name in ("open", "high", "low", "close"):
        changed[name][cut + 1:] *= factor
    again, decided_again = policy.decide_minutes(changed)
    assert decided_again.tolist() == decided.tolist()
    assert again[:cut + 1].tolist() == actions[:cut + 1].tolist()
    # The history cut after the minute: every decision made by then is the same.
    prefix = {k: v[:cut + 1] for k, v in candles.items()}
    early, decided_early = policy.decide_minutes(prefix)
    assert early[decided_early].tolist() == actions[:cut + 1][decided_early].tolist()
    assert not (decided_early & ~decided[:cut + 1]).any()


# -- live: the trader decides as the backtest ---------------------------------------------------------------

LIVE_STRATEGY = ("TIMEFRAME 15m\nIF EMA(5) CROSSES ABOVE EMA(12) AND CLOSE > SMA(8)@1h THEN BUY\n"
                 "IF EMA(5) CROSSES BELOW EMA(12) THEN SELL\nSTOP LOSS 0.8%\nTRAILING STOP 1.5 * ATR(14)\n")


def paper_fills(db, symbol):
    return db.execute("SELECT o.side, o.price, o.filled_at_ms, d.reason FROM orders o JOIN decisions d "
                      "ON d.id = o.decision_id WHERE o.status = 'filled' AND o.symbol = ? ORDER BY o.id",
                      [symbol]).fetchall()


def backtest_fills(candles, text):
    fills = []
    for t in run_backtest(candles, compile_strategy(text)).trades:
        fills.append(("BUY", t.entry_price, t.entry_time))
        if t.exit_time is not None:
            fills.append(("SELL", t.exit_price, t.exit_time))
    return fills


def without_some_last_minutes(candles, tf: int, every: int):
    """The minutes without the last minute of every `every`-th window of `tf` minutes: such a window closes
    when the next window's first minute arrives, and its decision fills at that minute's open."""
    times = candles["open_time_ms"]
    is_last = (times + MINUTE) % (tf * MINUTE) == 0
    drop = is_last & ((times // (tf * MINUTE)) % every == 0)
    return {k: v[~drop] for k, v in candles.items()}


@pytest.mark.parametrize("timeframe, holes", [("15m", False), ("3m", False), ("15m", True)])
def test_the_trader_fed_minute_by_minute_decides_and_fills_as_the_backtest(db, data_dir, ethbtc, timeframe, holes):
    strategy = LIVE_STRATEGY.replace("TIMEFRAME 15m", f"TIMEFRAME {timeframe}")
    (data_dir / "strategy.txt").write_text(strategy)
    if holes:
        ethbtc = without_some_last_minutes(ethbtc, 15, every=3)
    broker = PaperBroker(db, "ETHBTC", start_balance=1.0, fee_rate=0.001)
    trader = Trader(db, "ETHBTC", PolicyLoader(data_dir / "strategy.txt"), broker, clock=lambda: 1_700_000_000.0)
    rows = zip(*(ethbtc[k].tolist() for k in ("open_time_ms", "open", "high", "low", "close", "volume")))
    for t, o, h, lo, c, v in rows:
        trader.on_candle(Candle(t, o, h, lo, c, v, t + MINUTE - 1, 0.0, 0, 0.0, 0.0))
    ours = [(side, price, time_ms) for side, price, time_ms, _ in paper_fills(db, "ETHBTC")]
    theirs = backtest_fills(ethbtc, strategy)
    assert [(s, t) for s, _, t in ours] == [(s, t) for s, _, t in theirs]
    # Prices: ATR levels from the live window equal the whole history's to about 1e-12.
    assert [p for _, p, _ in ours] == pytest.approx([p for _, p, _ in theirs], rel=1e-9)
    reasons = {reason for *_, reason in paper_fills(db, "ETHBTC")}
    assert {"strategy", "stop_loss"} <= reasons or {"strategy", "trailing_stop"} <= reasons, reasons
    # One decision per closed window, each at the window's last minute present.
    minutes = compile_strategy(strategy).timeframe
    frame = timeframes.build_frame(ethbtc, minutes)
    decided = [t for (t,) in db.execute("SELECT candle_open_time_ms FROM decisions WHERE reason = 'strategy' "
                                        "ORDER BY 1").fetchall()]
    assert decided == ethbtc["open_time_ms"][frame.last_minute].tolist()
    assert db.execute("SELECT DISTINCT timeframe_minutes FROM decisions WHERE reason = 'strategy'").fetchall() == \
        [(minutes,)]


def test_the_worker_replaying_a_klines_file_trades_as_the_backtest(data_dir, tmp_path):
    strategy = "TIMEFRAME 15m\nIF EMA(5) > EMA(12) AND CLOSE > SMA(8)@1h THEN BUY\nIF EMA(5) < EMA(12) THEN SELL\n"
    (data_dir / "strategy.txt").write_text(strategy)
    part = tmp_path / "ETHBTC-1m-part.csv"  # the first 6,000 minutes, with the missing one
    part.write_text("".join(ETHBTC.read_text().splitlines(keepends=True)[:6001]))
    candles = load_candles(part)
    windows = len(timeframes.build_frame(candles, 15))
    worker = start_worker(data_dir, replay_file=part, replay_speed=0, symbol="ETHBTC", log_level="ERROR")
    # the file's end reached (the worker notes it once the last candle is traded), then every window decided
    def at_the_end() -> bool:
        rows = query(data_dir, "SELECT value FROM meta WHERE key = 'replay'")
        return bool(rows and rows[0][0] and json.loads(rows[0][0])["finished_at_ms"] is not None)

    wait_until(at_the_end, worker, timeout_s=180, what="the replay at the file's end")
    assert query(data_dir, "SELECT count(*) FROM decisions WHERE reason = 'strategy'") == [(windows,)]
    stop_worker(worker)
    fills = query(data_dir, "SELECT side, price, filled_at_ms FROM orders WHERE status = 'filled' ORDER BY id")
    expected = backtest_fills(candles, strategy)
    assert len(expected) >= 10
    first_difference = next((i for i, (a, b) in enumerate(zip(fills, expected)) if a != b), None)
    assert (len(fills), first_difference) == (len(expected), None), (fills[-3:], expected[-3:])
    assert Action.HOLD.name in {a for (a,) in query(data_dir, "SELECT action FROM decisions")}


# -- the editor and check ------------------------------------------------------------------------------------

def validate(operator, text):
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_the_editor_validates_timeframes_and_explains_them(operator):
    fragment = validate(operator, "TIMEFRAME 1h\nIF CLOSE > SMA(20)@4h THEN BUY\n")
    assert "Valid: 1 rule" in fragment and "Timeframe 1h." in fragment
    fragment = validate(operator, "TIMEFRAME 1h\nIF CLOSE > SMA(20)@15m THEN BUY\n")
    assert "line 2, column 19</a>: @15m is below the strategy&#39;s TIMEFRAME 1h" in fragment
    page = operator.get("/admin/algo").get_data(as_text=True)
    assert "<code>TIMEFRAME 15m</code>" in page and "<code>value@4h</code>" in page


# -- seen everywhere: the dashboard chart, the preview, decisions, the webhook page ----------------------------

def test_the_dashboard_chart_draws_candles_of_the_strategys_timeframe_with_its_averages(db, ethbtc):
    from core import dashboard

    part = {k: v[:3000] for k, v in ethbtc.items()}
    store_candles(db, "ETHBTC", part)
    with db.conn:
        db.execute("INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms) VALUES (1, 'ETHBTC', 0, 'BUY', 'long', 'flat', 'strategy', 0)")
        fill_ms = int(part["open_time_ms"][2500]) + 1234
        db.execute("INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, qty, price, "
                   "created_at_ms, filled_at_ms) VALUES (1, 'c-1', 'paper', 'ETHBTC', 'BUY', 'filled', 1, 0.09, ?, ?)",
                   [fill_ms, fill_ms])
    policy = compile_strategy("TIMEFRAME 15m\nIF CLOSE > SMA(8) AND CLOSE > SMA(4)@1h THEN BUY\n")
    data = dashboard.chart(db, "ETHBTC", policy, count=60)
    # The reference: pandas' 15-minute candles, with the forming window at the end (the last minutes).
    rows = minutes_frame(part).assign(row=np.arange(3000)).resample("15min").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last"}).dropna()
    expected = rows.iloc[-60:]
    assert [c["time"] for c in data["candles"]] == (expected.index.as_unit("s").asi8).tolist()
    assert [c["close"] for c in data["candles"]] == expected["close"].tolist()
    assert [c["high"] for c in data["candles"]] == expected["high"].tolist()
    (line,) = data["lines"]  # SMA(8) of the 15-minute closes; SMA(4)@1h is not drawn on this chart
    sma = talib.SMA(rows["close"].to_numpy(), 8)[-60:]
    assert line["name"] == "SMA(8)" and [p["value"] for p in line["points"]] == pytest.approx(list(sma), rel=1e-12)
    assert data["markers"][0]["time"] == (fill_ms - fill_ms % (15 * MINUTE)) // 1000  # on its candle
    assert data["timeframe"] == "15m"


def test_the_preview_chart_draws_one_point_per_window(operator, db, settings, ethbtc):
    from core.charts import preview

    store_candles(db, settings.symbol, {k: v[:3000] for k, v in ethbtc.items()})
    text = "TIMEFRAME 1h\nIF EMA(3) > EMA(8) THEN BUY\nIF EMA(3) < EMA(8) THEN SELL\n"
    shown = preview(db, settings.symbol, compile_strategy(text))
    price_path = shown.chart_svg.split('<path d="M', 1)[1].split('"', 1)[0]
    assert len(price_path.split(" L")) == len(frame_of(minutes_frame({k: v[:3000] for k, v in ethbtc.items()}), 60)) + 1
    assert shown.result.trades  # and its trades are marked on it
    fragment = validate(operator, text)
    assert "Timeframe 1h." in fragment and "<svg" in fragment


def test_decisions_show_their_window_and_the_webhook_page_the_strategys_bar(operator, db, data_dir):
    (data_dir / "strategy.txt").write_text("TIMEFRAME 4h\nIF CLOSE > SMA(5) THEN BUY\n")
    window_ms = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a 4-hour window's open
    with db.conn:
        db.execute("INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms, timeframe_minutes) VALUES (?, ?, 'BUY', 'long', 'flat', 'strategy', 0, 240)",
                   [operator.application.config["SETTINGS"].symbol, window_ms + 239 * MINUTE])
    page = operator.get("/").get_data(as_text=True)
    assert "2023-11-15 00:00–2023-11-15 04:00 (4h)" in page
    assert ", 4h candles</h2>" in page
    webhook = operator.get("/admin/webhook").get_data(as_text=True)
    assert "decides on <strong>4h</strong> bars" in webhook
    assert "at least <strong>28860 s</strong>" in webhook  # two bars and a minute
    assert "too short for it" in webhook  # the default 600 s


def test_backtest_command_says_the_timeframe_and_gives_the_engines_trades(tmp_path, ethbtc):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    text, _, _ = REFERENCES[1]
    strategy = tmp_path / "tf.txt"
    strategy.write_text(text)
    command = [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(ETHBTC), "--strategy",
               str(strategy)]
    report = json.loads(subprocess.run(command + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert report["timeframe"] == "1h" and report["candles"] == len(ethbtc["close"])
    assert [(t["entry_time"], t["exit_time"], t["exit_reason"]) for t in report["trades"]] == \
        [(t[0], t[2], t[4]) for t in engine_trades(ethbtc, text)]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "decided on 1h candles" in table and "the open of the first minute after the window" in table

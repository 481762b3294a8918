"""The strategy language: what parses, what each error says and where, and what the policy decides."""

from __future__ import annotations

import csv
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core.dsl import Action, StrategyError, compile_strategy, parse_strategy
from core.dsl.nodes import All, Any, Compare, Crosses, Indicator, Not, Number, Series
from core.dsl.parser import MAX_LINE_LENGTH
from core.indicators import INDICATORS
from tests.conftest import ROOT, SHARED_DATA

H, B, S = Action.HOLD, Action.BUY, Action.SELL


def candles(close, high=None, low=None, open_=None, volume=None):
    close = np.asarray(close, dtype=np.float64)
    return {
        "open": np.asarray(open_ if open_ is not None else close, dtype=np.float64),
        "high": np.asarray(high if high is not None else close, dtype=np.float64),
        "low": np.asarray(low if low is not None else close, dtype=np.float64),
        "close": close,
        "volume": np.asarray(volume if volume is not None else np.ones_like(close), dtype=np.float64),
        "open_time_ms": 1_570_752_000_000 + np.arange(len(close), dtype=np.int64) * 60_000,  # from 00:00 UTC
    }


# -- valid programs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("IF MA4 > MA9 THEN BUY",
     Compare(">", Indicator("SMA", (4.0,)), Indicator("SMA", (9.0,)))),
    ("if ma4 > ma9 then buy",
     Compare(">", Indicator("SMA", (4.0,)), Indicator("SMA", (9.0,)))),
    ("IF RSI(14) < 30 AND CLOSE > SMA(200) THEN BUY",
     All((Compare("<", Indicator("RSI", (14.0,)), Number(30.0)),
          Compare(">", Series("close"), Indicator("SMA", (200.0,)))))),
    ("IF EMA(9) CROSSES BELOW EMA(21) OR RSI(14) > 70 THEN SELL",
     Any((Crosses("below", Indicator("EMA", (9.0,)), Indicator("EMA", (21.0,))),
          Compare(">", Indicator("RSI", (14.0,)), Number(70.0))))),
    ("IF NOT CLOSE > OPEN THEN HOLD", Not(Compare(">", Series("close"), Series("open")))),
    ("IF RSI > 50 THEN BUY", Compare(">", Indicator("RSI", (14.0,)), Number(50.0))),
    ("IF SMA(VOLUME, 20) < VOLUME THEN BUY",
     Compare("<", Indicator("SMA", (20.0,), Series("volume")), Series("volume"))),
    ("IF BB_LOWER(20, 2.5) > CLOSE THEN BUY",
     Compare(">", Indicator("BB_LOWER", (20.0, 2.5)), Series("close"))),
    ("IF MACD CROSSES ABOVE MACD_SIGNAL THEN BUY",
     Crosses("above", Indicator("MACD", (12.0, 26.0, 9.0)), Indicator("MACD_SIGNAL", (12.0, 26.0, 9.0)))),
    ("IF CLOSE > -1 THEN BUY", Compare(">", Series("close"), Number(-1.0))),
    ("IF andy > 1 THEN BUY", None),  # a name that starts like a keyword is still a name (unknown here)
])
def test_parser_builds_the_expected_condition(text, expected):
    if expected is None:
        with pytest.raises(StrategyError, match="unknown name 'ANDY'"):
            parse_strategy(text)
        return
    (rule,) = parse_strategy(text)
    assert rule.condition == expected


def test_comments_blank_lines_and_actions_are_read():
    rules = parse_strategy("# a comment\n\n  IF MA4 > MA9 THEN BUY  # trend\nIF CLOSE < 1 THEN sell\n\t\nIF 1 > 2 THEN hold\n")
    assert [(r.line, r.action) for r in rules] == [(3, B), (4, S), (6, H)]
    assert rules[0].text == "IF MA4 > MA9 THEN BUY"


@pytest.mark.parametrize("name", sorted(INDICATORS))
def test_every_indicator_compiles_with_its_defaults_or_a_period(name):
    spec = INDICATORS[name]
    call = name if all(p.default is not None for p in spec.params) else f"{name}(10)"
    policy = compile_strategy(f"IF {call} > 0 THEN BUY")
    rng = np.random.default_rng(1)
    close = 100 + np.cumsum(rng.normal(size=400))
    actions = policy.decide_all(candles(close, high=close + 1, low=close - 1, volume=rng.uniform(1, 5, 400)))
    assert len(actions) == 400 and set(np.unique(actions)) <= {int(H), int(B)}


# -- errors, with line and column -----------------------------------------------------------------

@pytest.mark.parametrize("text, line, column, message", [
    ("IF MA4 > MA9 BUY", 1, 14, "missing THEN before BUY"),
    ("IF MA4 THEN BUY", 1, 4, "expected a comparison like >, <, CROSSES ABOVE"),
    ("IF EMAA(9) > 1 THEN BUY", 1, 4, "did you mean EMA?"),
    ("IF EMA9 > 1 THEN BUY", 1, 4, "did you mean EMA(9)?"),
    ("IF CLOSEE > 1 THEN BUY", 1, 4, "did you mean CLOSE?"),
    ("IF SMA(0) > 1 THEN BUY", 1, 8, "the period of SMA must be between 1 and 10000, got 0"),
    ("IF SMA(20000) > 1 THEN BUY", 1, 8, "between 1 and 10000"),
    ("IF SMA(2.5) > 1 THEN BUY", 1, 8, "must be a whole number"),
    ("IF RSI(1) > 1 THEN BUY", 1, 8, "between 2 and 10000"),
    ("IF SMA(1, 2, 3) > 1 THEN BUY", 1, 4, "SMA takes 1 argument plus an optional source series, got 3"),
    ("IF SMA > 1 THEN BUY", 1, 4, "SMA takes 1 argument"),
    ("IF CLOSE(3) > 1 THEN BUY", 1, 4, "CLOSE is a price series and takes no arguments"),
    ("IF SMA(CLOSE - OPEN, 3) > 1 THEN BUY", 1, 8, "the source of SMA must be a price series or an indicator"),
    ("IF SMA(CLOSE, LOW) > 1 THEN BUY", 1, 15, "the period of SMA must be a plain number"),
    ("IF MA4 > MA9 THEN BUYY", 1, 19, "unknown action 'BUYY': expected BUY, SELL, SHORT or HOLD (did you mean BUY?)"),
    ("IF MA4 > MA9 THEN", 1, 18, "expected an action: BUY, SELL, SHORT or HOLD"),
    ("IF MA4 > MA9", 1, 13, "the rule ends without THEN"),
    ("IF MA4 >", 1, 9, "expected a number, a price like CLOSE or an indicator"),
    ("MA4 > MA9 THEN BUY", 1, 1, "a rule starts with IF"),
    ("IFF MA4 > MA9 THEN BUY", 1, 1, "did you mean IF?"),
    ("IF CLOSE = 1 THEN BUY", 1, 10, "use == to test equality"),
    ("IF CLOSE > 1 && CLOSE < 2 THEN BUY", 1, 14, "use AND"),
    ("IF CLOSE > 1 ANDD CLOSE < 2 THEN BUY", 1, 14, "did you mean AND?"),
    ("IF CLOSE CROSSES OVER MA9 THEN BUY", 1, 18, "expected ABOVE or BELOW after CROSSES"),
    ("IF ((CLOSE > 1) THEN BUY", 1, 17, "expected ) to close the parenthesis"),
    ("IF (CLOSE > 1) + 2 > 3 THEN BUY", 1, 4, "a condition cannot be used as a number"),
    ("IF CLOSE > 1 AND 2 THEN BUY", 1, 18, "on each side of AND"),
    ("IF MA4 > MA9 THEN BUY SELL", 1, 23, "one action per rule"),
    ("IF " + "(" * 40 + "CLOSE > 1" + ")" * 40 + " THEN BUY", 1, 36, "nested more than 32 deep"),
    ("IF CLOSE > 1 " + "AND CLOSE > 1 " * 80 + "THEN BUY", 1, 1001, "longer than 1000 characters"),
    ("\n\n   IF MA4 > MA9 BUY", 3, 17, "missing THEN"),
])
def test_error_names_line_column_and_what_was_expected(text, line, column, message):
    with pytest.raises(StrategyError) as caught:
        compile_strategy(text)
    error = caught.value.errors[0]
    assert (error.line, error.column) == (line, column), error.message
    assert message in error.message


def test_every_error_of_the_file_is_reported_not_only_the_first():
    text = "IF MA4 > MA9 BUY\nIF MA4 < MA9 THEN SELL\nIF EMAA(9) > 1 THEN BUY\n# fine\nIF RSI(0) > 1 THEN SELLL\n"
    with pytest.raises(StrategyError) as caught:
        compile_strategy(text)
    assert [(e.line, e.column) for e in caught.value.errors] == [(1, 14), (3, 4), (5, 8), (5, 20)]
    assert caught.value.errors[0].format("s.txt") == "s.txt:1:14: error: missing THEN before BUY"


@given(st.text(max_size=300))
@settings(max_examples=400, deadline=None)
def test_random_text_never_raises_anything_but_strategy_error(text):
    try:
        policy = compile_strategy(text)
    except StrategyError as exc:
        assert exc.errors and all(e.line >= 1 and e.column >= 1 for e in exc.errors)
        return
    policy.decide_all(candles(np.linspace(1, 2, 50)))


_words = st.sampled_from(["IF", "THEN", "BUY", "SELL", "HOLD", "AND", "OR", "NOT", "CROSSES", "ABOVE", "BELOW",
                          "MA4", "MA9", "CLOSE", "VOLUME", "RSI", "SMA", "EMA", "MACD", "BB_UPPER", "OBV",
                          "(", ")", ",", "+", "-", "*", "/", ">", "<", ">=", "==", "!=", "0", "14", "2.5", "#",
                          "@", "@5m", "@1h", "@15m", "@7m", "@1d", "\nTIMEFRAME", "5m", "1h"])


@given(st.lists(_words, max_size=25).map(" ".join))
@settings(max_examples=600, deadline=None)
def test_random_token_soup_never_raises_anything_but_strategy_error(text):
    try:
        policy = compile_strategy(text)
    except StrategyError:
        return
    rng = np.random.default_rng(0)
    close = 1 + rng.random(80)
    policy.decide_all(candles(close, high=close + 0.1, low=close - 0.1))


def test_nothing_in_a_strategy_runs_as_python():
    for text in ('IF __import__("os").system("true") > 0 THEN BUY', "IF CLOSE.__class__ > 0 THEN BUY",
                 "IF eval(1) > 0 THEN BUY", "IF exec > 0 THEN BUY"):
        with pytest.raises(StrategyError):
            compile_strategy(text)


# -- evaluation -------------------------------------------------------------------------------------

def test_first_true_rule_wins_and_none_true_gives_hold():
    policy = compile_strategy("IF CLOSE > 10 THEN SELL\nIF CLOSE > 5 THEN BUY\nIF CLOSE > 3 THEN HOLD\nIF CLOSE > 1 THEN SELL")
    actions = policy.decide_all(candles([11, 6, 4, 2, 0.5]))
    assert actions.tolist() == [S, B, H, S, H]
    assert policy.fired_rules(candles([11, 6, 4, 2, 0.5])).tolist() == [0, 1, 2, 3, -1]


def test_undefined_values_make_comparisons_false():
    policy = compile_strategy("IF MA3 > 0 THEN BUY\nIF MA3 != 5 THEN SELL\nIF CLOSE / (CLOSE - CLOSE) > 0 THEN SELL")
    # MA3 is undefined for the first two candles; dividing by zero is undefined on every candle.
    assert policy.decide_all(candles([1, 2, 3, 4])).tolist() == [H, H, B, B]


def test_not_of_an_undefined_comparison_is_true():
    # DESIGN.md: an undefined value makes the comparison false; NOT then negates that false.
    policy = compile_strategy("IF NOT MA3 > 0 THEN SELL")
    assert policy.decide_all(candles([1, 2, 3])).tolist() == [S, S, H]


@pytest.mark.parametrize("op, expected", [
    (">", [0, 0, 1]), ("<", [1, 0, 0]), (">=", [0, 1, 1]), ("<=", [1, 1, 0]), ("==", [0, 1, 0]), ("!=", [1, 0, 1]),
])
def test_comparisons(op, expected):
    policy = compile_strategy(f"IF CLOSE {op} 2 THEN BUY")
    assert policy.decide_all(candles([1, 2, 3])).tolist() == [B if e else H for e in expected]


def test_values_equal_to_ten_significant_digits_compare_equal():
    policy = compile_strategy("IF CLOSE * 3 == 0.3 THEN BUY\nIF CLOSE * 3 > 0.3 THEN SELL")
    assert policy.decide_all(candles([0.1])).tolist() == [B]  # 0.1 * 3 is 0.30000000000000004 in floats


def test_crosses_above_and_below_need_the_previous_candle():
    up = compile_strategy("IF CLOSE CROSSES ABOVE 2 THEN BUY")
    down = compile_strategy("IF CLOSE CROSSES BELOW 2 THEN SELL")
    series = candles([3, 1, 2, 3, 3, 1, 2.5])
    assert up.decide_all(series).tolist() == [H, H, H, B, H, H, B]  # a <= b before, a > b now
    assert down.decide_all(series).tolist() == [H, S, H, H, H, S, H]


def test_arithmetic_and_precedence():
    policy = compile_strategy("IF CLOSE - OPEN * 2 > 1 AND NOT (CLOSE / 2 < 1 OR HIGH < 0) THEN BUY")
    series = candles([4, 4, 1], open_=[1, 2, 0])
    assert policy.decide_all(series).tolist() == [B, H, H]


def test_live_decision_equals_the_last_of_the_history():
    policy = compile_strategy("IF EMA(20) CROSSES ABOVE SMA(50) THEN BUY\nIF RSI(14) > 60 THEN SELL")
    rng = np.random.default_rng(7)
    close = 100 + np.cumsum(rng.normal(size=3000))
    series = candles(close, high=close + 1, low=close - 1)
    history = policy.decide_all(series)
    for end in range(policy.window, 3000, 97):
        window = {k: v[:end] for k, v in series.items()}
        assert policy.decide(window).action == history[end - 1]


def test_seed_strategy_on_real_candles_equals_a_plain_loop():
    with open(SHARED_DATA / "candles" / "ETHBTC-1m.csv") as f:
        rows = list(csv.DictReader(f))
    closes = [Decimal(r["close"]) for r in rows]
    expected = []
    for i in range(len(closes)):
        if i < 8:
            expected.append(H)
            continue
        ma4_x9 = sum(closes[i - 3:i + 1]) * 9  # compare 9 * sum(4) with 4 * sum(9): exact, no division
        ma9_x4 = sum(closes[i - 8:i + 1]) * 4
        expected.append(B if ma4_x9 > ma9_x4 else S if ma4_x9 < ma9_x4 else H)
    policy = compile_strategy((ROOT / "data" / "strategy.txt").read_text())  # the shipped seed strategy
    series = {name: np.array([float(r[name]) for r in rows]) for name in ("open", "high", "low", "close", "volume")}
    actual = policy.decide_all(series)
    assert actual.tolist() == [int(a) for a in expected]
    assert expected.count(H) > 8  # equal averages on flat stretches really happen in this file


# -- limits: no text can crash the parser or the compiler ---------------------------------------------

DEEP_MINUS = "IF " + "-" * 330 + "1 > 0 THEN BUY"
LONG_SUM = "IF " + "+".join(["1"] * 330) + " > 0 THEN BUY"
LONG_MA = "IF MA1" + "0" * 400 + " > 0 THEN BUY"


@pytest.mark.parametrize("text, column, message", [
    (DEEP_MINUS, 3 + 64, "nested more than 64 levels deep"),  # the comparison is level 1, the 64th minus 65
    ("IF " + "NOT " * 200 + "1 > 0 THEN BUY", 4 + 4 * 64, "nested more than 64 levels deep"),  # the 65th NOT
    (LONG_SUM, 4, "a calculation has at most 32 terms, this one has 330"),
    ("IF " + "*".join(["2"] * 100) + " > 0 THEN BUY", 4, "at most 32 terms, this one has 100"),
    ("IF CLOSE > " + "-".join(["1"] * 33) + " THEN BUY", 12, "at most 32 terms, this one has 33"),
    (LONG_MA, 4, "the period of MA has more than 20 digits"),
    ("IF CLOSE > " + "9" * 400 + " THEN BUY", 12, "more than 20 digits"),
    ("IF SMA(" + "9" * 400 + ") > 1 THEN BUY", 8, "more than 20 digits"),
    ("IF CLOSE > 0." + "0" * 30 + "1 THEN BUY", 12, "more than 20 digits"),
])
def test_limits_give_an_error_with_line_and_column_never_a_crash(text, column, message):
    with pytest.raises(StrategyError) as caught:
        compile_strategy("# deep\n" + text)
    error = caught.value.errors[0]
    assert (error.line, error.column) == (2, column), error.message
    assert message in error.message
    assert error.format("s.txt").startswith(f"s.txt:2:{column}: error: ")


@pytest.mark.parametrize("text", [
    "IF " + "-" * 60 + "1 > 0 THEN BUY",
    "IF " + "+".join(["1"] * 32) + " > 0 THEN BUY",
    "IF CLOSE > " + "9" * 20 + " THEN BUY",
    "IF CLOSE > 0." + "0" * 18 + "1 THEN BUY",
    "IF " + "(" * 32 + "CLOSE" + ")" * 32 + " > 1 THEN BUY",
    "IF " + "SMA(" * 31 + "CLOSE" + ", 2)" * 31 + " > 1 THEN BUY",
])
def test_texts_within_the_limits_compile_and_decide(text):
    policy = compile_strategy(text)
    assert len(policy.decide_all(candles(np.linspace(1, 2, 80)))) == 80


def test_the_whole_text_is_refused_above_100000_characters_before_parsing():
    with pytest.raises(StrategyError) as caught:
        compile_strategy("IF CLOSE > 1 THEN BUY\n" * 5000)  # 110,000 characters
    assert [(e.line, e.column) for e in caught.value.errors] == [(1, 1)]
    assert "at most 100,000" in caught.value.errors[0].message


def test_an_unexpected_fault_while_parsing_becomes_an_error_at_its_line(monkeypatch):
    from core.dsl import parser

    def broken(self, tree):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(parser._Builder, "_compare", broken)
    with pytest.raises(StrategyError) as caught:
        compile_strategy("IF CLOSE > 1 AND CLOSE > 2 THEN BUY\n\nIF CLOSE > 3 THEN SELL")
    assert [(e.line, e.column) for e in caught.value.errors] == [(1, 1), (3, 1)]
    assert "ZeroDivisionError" in caught.value.errors[0].message


def test_an_unexpected_fault_while_compiling_becomes_an_error_at_its_rule(monkeypatch):
    from core.dsl import policy

    def broken(self, *node_and_timeframe):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(policy.Policy, "_step", broken)
    with pytest.raises(StrategyError) as caught:
        compile_strategy("# first\n  IF CLOSE > 1 THEN BUY")
    assert [(e.line, e.column) for e in caught.value.errors] == [(2, 1)]
    assert "RecursionError" in caught.value.errors[0].message


# Random text never reaches these depths: generate the structure itself.

_leaf = st.sampled_from(["1", "CLOSE", "MA4", "RSI(14)", "2.5"])
_size = st.integers(0, 100) | st.integers(100, 990)  # up to what a 1000-character line can hold
_digits = st.integers(1, 600).map(lambda n: "1" + "0" * (n - 1))
_number_text = st.builds(lambda whole, fraction: whole if fraction is None else f"{whole}.{fraction}",
                         _digits, st.none() | _digits)


def _nest(kind: str, depth: int, leaf: str) -> str:
    if kind == "at":  # each level read on a longer timeframe: (((CLOSE)@1m)@3m)@...
        intervals = ["1m", "3m", "15m", "1h", "4h", "1d", "2x"]
        return "(" * depth + leaf + "".join(f")@{intervals[i % len(intervals)]}" for i in range(depth))
    if kind == "parens":
        return "(" * depth + leaf + ")" * depth
    if kind == "minus":
        return "-" * depth + leaf
    if kind == "minus spaced":
        return "- " * depth + leaf
    return "SMA(" * depth + "CLOSE" + ", 3)" * depth


_value = st.one_of(
    st.builds(_nest, st.sampled_from(["parens", "minus", "minus spaced", "calls", "at"]), _size, _leaf),
    st.builds(lambda op, n, leaf: op.join([leaf] * (n + 1)), st.sampled_from(["+", "-", "*", "/", " + "]),
              _size, st.sampled_from(["1", "2", "CLOSE"])),
    _number_text,
    st.builds(lambda digits: "MA" + digits, _digits),
)
_condition = st.one_of(
    st.builds(lambda value, op: f"{value} {op} 0", _value, st.sampled_from([">", "<", "==", "CROSSES ABOVE"])),
    st.builds(lambda a, b: f"{a} > {b}", _value, _value),
    st.builds(lambda n, v: "NOT " * n + f"{v} > 0", _size, _value),
)


@given(st.lists(_condition, min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_deep_and_long_structures_give_strategy_errors_or_a_working_policy(conditions):
    text = "\n".join(f"IF {condition} THEN BUY" for condition in conditions)
    try:
        policy = compile_strategy(text)
    except StrategyError as exc:
        assert exc.errors and all(e.line >= 1 and e.column >= 1 for e in exc.errors)
        return
    policy.decide_all(candles(np.linspace(1, 2, 60)))


@given(st.integers(0, 200), st.sampled_from(["-", "NOT ", "("]))
@settings(max_examples=100, deadline=None)
def test_depth_is_refused_exactly_above_the_limit_for_every_kind(depth, kind):
    inner = {"-": "-" * depth + "1 > 0", "NOT ": "NOT " * depth + "1 > 0",
             "(": "(" * depth + "1 > 0" + ")" * depth}[kind]
    try:
        compile_strategy(f"IF {inner} THEN BUY")
    except StrategyError as exc:
        assert any(w in exc.errors[0].message for w in ("levels deep", "nested more than 32")), exc
        assert depth > (32 if kind == "(" else 62)  # with the comparison and the number: 64 levels
        return
    assert depth <= (32 if kind == "(" else 62)


_CONTROLS = ["\x00", "\x07", "\t", "\x0b", "\x0c", "\r", "\x1b", "\x7f", "\x85", "\u200b", "\u202e", "\u2028", "\ufeff"]


@given(_condition, st.lists(st.tuples(st.sampled_from(_CONTROLS), st.integers(min_value=0)), min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_control_characters_anywhere_in_deep_or_long_rules_give_positioned_errors(condition, insertions):
    text = f"IF {condition} THEN BUY"
    for char, at in insertions:
        at %= len(text) + 1
        text = text[:at] + char + text[at:]
    try:
        policy = compile_strategy(text)
    except StrategyError as exc:
        lines = text.splitlines()
        for error in exc.errors:
            assert 1 <= error.line <= max(len(lines), 1) and 1 <= error.column <= MAX_LINE_LENGTH + 1, error
        return
    policy.decide_all(candles(np.linspace(1, 2, 60)))

"""Sweeps: text expansion before parsing, the refusal everywhere but the backtest, and errors at line/column."""

from __future__ import annotations

import itertools
import math
import os

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from core.dsl import StrategyError, compile_strategy
from core.dsl.sweeps import MAX_COMBINATIONS, check_sweep, expand, find_sweeps, has_sweep
from core.policy_loader import PolicyLoader

NAMED = "IF MA{fast: 3..6} > MA{slow: 8..20..4} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"


def test_ranges_steps_and_lists_expand_to_every_combination_in_order():
    combos = expand("IF RSI({7,14,21}) < {20..30..5} THEN BUY")
    assert [c.params for c in combos] == [{"p1": 7, "p2": 20}, {"p1": 7, "p2": 25}, {"p1": 7, "p2": 30},
                                          {"p1": 14, "p2": 20}, {"p1": 14, "p2": 25}, {"p1": 14, "p2": 30},
                                          {"p1": 21, "p2": 20}, {"p1": 21, "p2": 25}, {"p1": 21, "p2": 30}]
    assert combos[4].text == "IF RSI(14) < 25 THEN BUY"


def test_a_named_sweep_reused_by_name_takes_the_same_value_in_each_combination():
    combos = expand(NAMED)
    assert len(combos) == 4 * 4
    assert combos[0].params == {"fast": 3, "slow": 8}
    assert combos[0].text == "IF MA3 > MA8 THEN BUY\nIF MA3 < MA8 THEN SELL\n"
    assert combos[-1].text == "IF MA6 > MA20 THEN BUY\nIF MA6 < MA20 THEN SELL\n"
    assert [s.name for s in find_sweeps(NAMED)] == ["fast", "slow"]


def test_decimal_steps_are_exact_and_written_as_the_language_writes_numbers():
    combos = expand("IF CLOSE > {0.1..0.5..0.1} THEN BUY")
    assert [c.text.split()[3] for c in combos] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert [c.params["p1"] for c in combos] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert expand("IF CLOSE > {1..2..0.5} THEN BUY")[2].text == "IF CLOSE > 2 THEN BUY"


def test_braces_in_comments_are_left_alone():
    text = "# try {1..3} later\nIF MA4 > MA9 THEN BUY # not {this}\n"
    assert not has_sweep(text)
    assert expand(text)[0].text == text
    compile_strategy(text)


@pytest.mark.parametrize("text, line, column, words", [
    ("IF MA{4..12 > MA9 THEN BUY", 1, 6, "unmatched brace"),
    ("IF MA4 > MA9} THEN BUY", 1, 13, "unmatched brace"),
    ("IF MA4 > MA9 THEN BUY\nIF MA{slow} < 3 THEN SELL", 2, 6, "no sweep is named 'slow'"),
    ("IF MA{f: 3..6} > MA{f: 8..9} THEN BUY", 1, 20, "already defined at line 1, column 6"),
    ("IF CLOSE > {9..3} THEN BUY", 1, 12, "runs backwards"),
    ("IF CLOSE > {1..9..0} THEN BUY", 1, 12, "step"),
    ("IF CLOSE > {} THEN BUY", 1, 12, "empty sweep"),
    ("IF CLOSE > {1,,2} THEN BUY", 1, 12, "cannot read"),
    ("IF CLOSE > {1,2,1} THEN BUY", 1, 12, "repeats"),
    ("IF CLOSE > {a b} THEN BUY", 1, 12, "cannot read"),
])
def test_malformed_sweeps_are_reported_at_their_line_and_column(text, line, column, words):
    with pytest.raises(StrategyError) as caught:
        expand(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in caught.value.errors[0].message


def test_more_than_ten_thousand_combinations_are_refused_naming_the_sizes():
    text = "IF MA{fast: 2..102} > MA{slow: 200..299} THEN BUY"  # 101 x 100 = 10,100
    with pytest.raises(StrategyError) as caught:
        expand(text)
    message = caught.value.errors[0].message
    assert "10,100 combinations" in message and "101 (fast) × 100 (slow)" in message and "10,000" in message
    assert len(expand("IF MA{fast: 2..101} > MA{slow: 200..299} THEN BUY")) == MAX_COMBINATIONS
    with pytest.raises(StrategyError, match="1,000,000,000 values"):
        expand("IF CLOSE > {1..1000000000} THEN BUY")  # refused before a single value is made


def test_the_strategy_compiler_refuses_a_sweep_at_its_first_brace():
    with pytest.raises(StrategyError) as caught:
        compile_strategy("IF MA4 > MA9 THEN BUY\nIF RSI({7,14}) > 70 THEN SELL\n")
    assert (caught.value.line, caught.value.column) == (2, 8)
    assert "only in `omniwise.py backtest`" in caught.value.errors[0].message
    assert "check --sweep" in caught.value.errors[0].message


def test_the_worker_keeps_its_last_good_policy_when_the_file_becomes_a_sweep(tmp_path):
    path = tmp_path / "strategy.txt"
    path.write_text("IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    good = loader.current()
    path.write_text(NAMED)
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
    assert loader.current() is good
    assert (loader.error.line, loader.error.column) == (1, 6) and "sweep" in str(loader.error)


def test_the_editor_refuses_to_save_a_sweep_and_says_why(operator, settings):
    before = settings.strategy_path.read_text()
    page = operator.post("/admin/algo/validate", data={"strategy": NAMED, "csrf_token": operator.csrf_token})
    assert "line 1, column 6" in page.get_data(as_text=True) and "only in `omniwise.py backtest`" in page.get_data(as_text=True)
    answer = operator.post("/admin/algo", data={"strategy": NAMED, "csrf_token": operator.csrf_token})
    assert answer.status_code == 422 and settings.strategy_path.read_text() == before


def test_check_sweep_parses_every_value_and_names_the_one_that_fails():
    assert check_sweep(NAMED) == 16
    with pytest.raises(StrategyError) as caught:
        check_sweep("IF MA4 > MA9 THEN BUY\nIF RSI({1..3}) > 50 THEN SELL\n")
    (error,) = caught.value.errors  # only RSI(1) is bad: periods start at 2
    assert error.line == 2 and error.message.startswith("with p1 = 1: ") and "RSI" in error.message


# -- property: any structure of sweeps expands consistently ----------------------------------------

_values = st.one_of(
    st.tuples(st.integers(0, 50), st.integers(0, 6), st.integers(1, 4)).map(
        lambda t: (f"{t[0]}..{t[0] + t[1] * t[2]}..{t[2]}", [t[0] + i * t[2] for i in range(t[1] + 1)])),
    st.lists(st.integers(0, 10**12), min_size=1, max_size=4, unique=True).map(
        lambda xs: (",".join(map(str, xs)), xs)),
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(sweeps=st.lists(st.tuples(st.booleans(), _values), min_size=1, max_size=4),
       reuses=st.lists(st.integers(0, 3), max_size=6), lines=st.integers(1, 3))
def test_any_mix_of_named_unnamed_and_reused_sweeps_expands_consistently(sweeps, reuses, lines):
    # Atoms: each sweep's definition, then references to the named ones; dealt round-robin onto lines.
    named = [f"n{i}" for i, (is_named, _) in enumerate(sweeps) if is_named]
    atoms = [("define", i) for i in range(len(sweeps))] + [("use", named[r % len(named)]) for r in reuses if named]
    order = [a for line in range(lines) for a in range(line, len(atoms), lines)]  # atom indexes in text order
    names, unnamed = {}, 0
    for a in order:  # unnamed sweeps are p1, p2, ... in order of appearance in the text
        kind, i = atoms[a]
        if kind == "define":
            if sweeps[i][0]:
                names[i] = f"n{i}"
            else:
                unnamed += 1
                names[i] = f"p{unnamed}"

    def written(atom):
        kind, i = atom
        if kind == "use":
            return f"{{{i}}}"
        is_named, (body, _) = sweeps[i]
        return f"{{n{i}: {body}}}" if is_named else f"{{{body}}}"

    rows = [" + ".join(written(atoms[a]) for a in range(line, len(atoms), lines)) for line in range(lines)]
    text = "\n".join(f"IF CLOSE > {row} THEN BUY" for row in rows if row)
    combos = expand(text)
    definitions_in_text_order = [atoms[a][1] for a in order if atoms[a][0] == "define"]
    assert len(combos) == math.prod(len(sweeps[i][1][1]) for i in range(len(sweeps)))
    assert [tuple(c.params.values()) for c in combos] == list(
        itertools.product(*(sweeps[i][1][1] for i in definitions_in_text_order)))
    for combo in combos:
        assert "{" not in combo.text and "}" not in combo.text
        assert list(combo.params) == [names[i] for i in definitions_in_text_order]
        numbers = [int(x) for row in combo.text.split("\n") for x in row[len("IF CLOSE > "):-len(" THEN BUY")].split(" + ")]
        expected = [combo.params[names[atoms[a][1]]] if atoms[a][0] == "define" else combo.params[atoms[a][1]]
                    for a in order]
        assert numbers == expected

"""Ranking a sweep's rows: which null ranks where, which metrics are better small, the fallback to return_pct."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from core.metrics import NO_LOSING_DAY, NO_LOSING_TRADE, Metrics
from core.sweep_runs import RANKABLE, Run, choose_metric, rank


def run(name, return_pct=0.0, why_null=None, **figures):
    values = dict(return_pct=return_pct, buy_and_hold_pct=0.0, max_drawdown_pct=1.0, trades=1, win_rate_pct=50.0,
                  profit_factor=1.0, expectancy_pct=0.0, exposure_pct=50.0, sharpe=1.0, sortino=1.0, calmar=1.0,
                  fees_paid=0.01, days=40)
    values.update(figures)
    return Run({"name": name}, "", Metrics(**values, why_null=why_null or {}), None)


def names(runs):
    return [r.params["name"] for r in runs]


def test_a_no_loss_null_ranks_above_every_number_and_any_other_null_last():
    runs = [run("some", profit_factor=2.5),
            run("undefined", profit_factor=None, why_null={"profit_factor": "no closed trade"}),
            run("flawless", return_pct=85.0, profit_factor=None, why_null={"profit_factor": NO_LOSING_TRADE}),
            run("best number", profit_factor=9.0)]
    assert names(rank(runs, "profit_factor")) == ["flawless", "best number", "some", "undefined"]


def test_sortino_without_a_losing_day_beats_every_sortino():
    runs = [run("a", sortino=3.0), run("calm", return_pct=12.0, sortino=None, why_null={"sortino": NO_LOSING_DAY}),
            run("short", sortino=None, why_null={"sortino": "12 complete UTC days, fewer than 30"}), run("b", sortino=7.0)]
    assert names(rank(runs, "sortino")) == ["calm", "b", "a", "short"]


def test_nulls_of_one_kind_are_ordered_by_return_and_ties_keep_the_sweep_order():
    why = {"profit_factor": NO_LOSING_TRADE}
    runs = [run("small", 5.0, why, profit_factor=None), run("big", 50.0, why, profit_factor=None),
            run("tie 1", profit_factor=2.0), run("tie 2", profit_factor=2.0)]
    assert names(rank(runs, "profit_factor")) == ["big", "small", "tie 1", "tie 2"]


@pytest.mark.parametrize("metric", ["max_drawdown_pct", "fees_paid"])
def test_drawdown_and_fees_rank_smaller_first(metric):
    runs = [run("mid", **{metric: 5.0}), run("low", **{metric: 0.5}), run("high", **{metric: 50.0})]
    assert names(rank(runs, metric)) == ["low", "mid", "high"]


@pytest.mark.parametrize("metric", ["return_pct", "sharpe", "calmar", "win_rate_pct", "exposure_pct", "trades"])
def test_other_metrics_rank_larger_first(metric):
    runs = [run("mid", **{metric: 5}), run("low", **{metric: 1}), run("high", **{metric: 50})]
    assert names(rank(runs, metric)) == ["high", "mid", "low"]


def test_a_metric_null_everywhere_falls_back_to_return_pct_and_says_why():
    why = {"sharpe": "9 complete UTC days, fewer than 30"}
    runs = [run("first", 1.0, why, sharpe=None), run("best", 30.0, why, sharpe=None), run("mid", 4.0, why, sharpe=None)]
    metric, note = choose_metric(runs, "sharpe")
    assert metric == "return_pct"
    assert note == "sharpe is null for every combination (9 complete UTC days, fewer than 30): ranked by return_pct instead"
    assert names(rank(runs, metric)) == ["best", "mid", "first"]
    assert choose_metric(runs[:2] + [run("one number", sharpe=0.1)], "sharpe") == ("sharpe", None)


_figure = st.one_of(st.none(), st.floats(-1e308, 1e308), st.sampled_from([0.0, -0.0, 1e-300, -1e-300]))
_reason = st.sampled_from([NO_LOSING_TRADE, NO_LOSING_DAY, "no closed trade", "3 complete UTC days, fewer than 30",
                           "no drawdown"])


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(_figure, _reason, st.floats(-100, 1e9)), min_size=1, max_size=40),
       metric=st.sampled_from(["profit_factor", "sortino"]))
def test_ranking_never_puts_a_no_loss_null_below_a_number(rows, metric):
    runs = [run(i, ret, {} if value is not None else {metric: reason}, **{metric: value})
            for i, (value, reason, ret) in enumerate(rows)]
    ranked = rank(runs, metric)
    kinds = ["no loss" if r.metrics.is_no_loss(metric) else "number" if getattr(r.metrics, metric) is not None
             else "other null" for r in ranked]
    order = {"no loss": 0, "number": 1, "other null": 2}
    assert [order[k] for k in kinds] == sorted(order[k] for k in kinds)
    numbers = [getattr(r.metrics, metric) for r in ranked if getattr(r.metrics, metric) is not None]
    assert numbers == sorted(numbers, reverse=True)
    assert sorted(names(ranked)) == list(range(len(rows)))


def test_every_rankable_metric_is_a_figure_and_days_is_not_rankable():
    assert "days" not in RANKABLE and set(RANKABLE) <= set(Metrics.__dataclass_fields__)


def test_the_sweep_table_writes_a_no_loss_null_as_no_loss_and_other_nulls_as_a_dash():
    from backtest_cli import _table

    runs = rank([run("some", profit_factor=2.5), run("flawless", 85.0, {"profit_factor": NO_LOSING_TRADE},
                                                    profit_factor=None),
                 run("none", profit_factor=None, why_null={"profit_factor": "no closed trade"})], "profit_factor")
    rows = [line.split() for line in _table(runs, "profit_factor").splitlines()[1:]]
    assert [row[1:4] for row in rows] == [["name=flawless", "no", "loss"], ["name=some", "2.500", "0.000"],
                                          ["name=none", "-", "0.000"]]

"""The backtest command: metrics in the JSON, sweeps, out-of-sample checks, the candle cache, no web stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core import candle_cache
from core.backtest import load_candles, run_backtest
from core.dsl import compile_strategy
from core.metrics import NAMES
from tests.conftest import ROOT, SHARED_DATA

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
SWEEP = "IF MA{fast: 3..6} > MA{slow: 8..20..4} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"


def fixed(fast, slow):
    return f"IF MA{fast} > MA{slow} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The first 3,000 ETHBTC candles (a copy, so the cache lands in a temporary folder) and the sweep."""
    folder = tmp_path_factory.mktemp("backtest")
    lines = ETHBTC.read_text().splitlines(keepends=True)
    (folder / "candles.csv").write_text("".join(lines[:3001]))  # a header and 3,000 candles
    (folder / "sweep.txt").write_text(SWEEP)
    return folder


def backtest(*args, check=True):
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


def test_json_carries_every_metric_design_names(files):
    report = json.loads(backtest("--candles", files / "candles.csv", "--strategy", write(files, "s.txt", fixed(4, 9)),
                                 "--json").stdout)
    assert list(report["metrics"]) == list(NAMES) + ["why_null"]
    assert set(NAMES) == {"return_pct", "buy_and_hold_pct", "max_drawdown_pct", "trades", "win_rate_pct",
                          "profit_factor", "expectancy_pct", "exposure_pct", "sharpe", "sortino", "calmar", "fees_paid",
                          "days"}
    # 3,000 minutes from 2019-10-10 09:01: day 2019-10-11 is the one whole UTC day.
    assert report["metrics"]["days"] == 1 and report["metrics"]["sharpe"] is None
    assert report["metrics"]["why_null"]["sharpe"] == "1 complete UTC day, fewer than 30"
    assert report["metrics"]["trades"] == len(report["trades"]) and report["candles"] == 3000
    assert report["metrics"]["return_pct"] == pytest.approx(report["return_pct"], abs=1e-6)
    table = backtest("--candles", files / "candles.csv", "--strategy", files / "s.txt").stdout
    for words in ("sharpe", "sortino", "calmar", "profit factor", "expectancy", "exposure", "fees paid"):
        assert words in table


def test_a_sweep_runs_every_combination_and_each_equals_that_strategy_run_alone(files):
    result = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--json")
    runs = json.loads(result.stdout)
    assert sorted((r["params"]["fast"], r["params"]["slow"]) for r in runs) == [
        (f, s) for f in (3, 4, 5, 6) for s in (8, 12, 16, 20)]
    # Two days of candles: Sharpe (the default rank) is null everywhere, so the rank falls back and says so.
    assert all(r["metrics"]["sharpe"] is None for r in runs)
    assert result.stderr == ("sharpe is null for every combination (1 complete UTC day, fewer than 30): "
                             "ranked by return_pct instead\n")
    returns = [r["metrics"]["return_pct"] for r in runs]
    assert returns == sorted(returns, reverse=True)
    assert all("trades" not in r for r in runs)  # only with --trades
    with_trades = json.loads(backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--json",
                                      "--trades").stdout)
    assert [{k: v for k, v in r.items() if k != "trades"} for r in with_trades] == runs
    for fast, slow in ((3, 8), (6, 20)):
        alone = json.loads(backtest("--candles", files / "candles.csv", "--strategy",
                                    write(files, "one.txt", fixed(fast, slow)), "--json").stdout)
        (swept,) = [r for r in with_trades if r["params"] == {"fast": fast, "slow": slow}]
        assert swept["metrics"] == alone["metrics"] and swept["trades"] == alone["trades"]
        assert swept["candles"] == alone["candles"] and swept["return_pct"] == alone["return_pct"]


def test_the_table_shows_the_best_twenty_by_the_chosen_metric(files):
    strategy = write(files, "wide.txt", "IF MA{fast: 2..7} > MA{slow: 8..11} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n")
    runs = json.loads(backtest("--candles", files / "candles.csv", "--strategy", strategy, "--json").stdout)
    out = backtest("--candles", files / "candles.csv", "--strategy", strategy, "--rank", "max_drawdown_pct").stdout
    rows = [line.split() for line in out.splitlines()[2:-1]]  # the last line: the deflated Sharpe of #1
    assert "24 combinations" in out and "best 20 by max_drawdown_pct" in out and len(rows) == 20
    best = min(runs, key=lambda r: r["metrics"]["max_drawdown_pct"])
    assert rows[0][1:3] == [f"fast={best['params']['fast']}", f"slow={best['params']['slow']}"]
    assert float(rows[0][3]) == pytest.approx(best["metrics"]["max_drawdown_pct"], abs=1e-3)
    drawdowns = [float(row[3]) for row in rows]
    assert drawdowns == sorted(drawdowns)  # smaller drawdown is better


def test_more_than_ten_thousand_combinations_are_refused_before_any_work(files):
    strategy = write(files, "huge.txt", "IF MA{2..102} > MA{200..299} THEN BUY\n")
    result = backtest("--candles", files / "candles.csv", "--strategy", strategy, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert f"{strategy}:1:6: error: this sweep makes 10,100 combinations" in result.stderr


def test_check_refuses_a_sweep_unless_asked_to_check_one(files):
    def check(*args):
        return subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "check", *map(str, args)],
                              capture_output=True, text=True, cwd=ROOT)

    refused = check(files / "sweep.txt")
    assert refused.returncode == 1 and f"{files / 'sweep.txt'}:1:6: error: a sweep" in refused.stdout
    assert check("--sweep", files / "sweep.txt").returncode == 0
    bad = check("--sweep", write(files, "bad.txt", "IF RSI({1,14}) > 70 THEN SELL\n"))
    assert bad.returncode == 1 and ":1:8: error: with p1 = 1:" in bad.stdout


def test_split_ranks_in_sample_and_runs_the_best_five_again_on_the_rest(files):
    runs = json.loads(backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--split", "0.7",
                               "--json").stdout)
    candles = load_candles(files / "candles.csv")
    inside = {k: v[:2100] for k, v in candles.items()}  # 70 % of 3,000
    assert [r["candles"] for r in runs] == [2100] * 16
    returns = [r["metrics"]["return_pct"] for r in runs]  # sharpe is null on 2,100 minutes: return_pct ranks
    assert returns == sorted(returns, reverse=True)
    assert ["out_of_sample" in r for r in runs] == [True] * 5 + [False] * 11
    for run in runs[:5]:
        text = fixed(run["params"]["fast"], run["params"]["slow"])
        assert run["metrics"]["return_pct"] == pytest.approx(run_backtest(inside, compile_strategy(text)).return_pct, abs=1e-6)
        assert run["out_of_sample"]["candles"] == 900
        warmed = run_backtest(candles, compile_strategy(text), warmup=2100, close_at_end=True)
        assert run["out_of_sample"]["metrics"] == warmed.metrics.as_json()
        assert run["out_of_sample"]["metrics"]["trades"] == len(warmed.trades)
        assert all(t.exit_time is not None for t in warmed.trades)  # the block closes what is open at its end
    table = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--split", "0.7").stdout
    assert "first 2,100 candles" in table and "last 900" in table and "out of sample" in table
    assert "sharpe is null for every combination" in table and "Ranked by return_pct" in table


def test_walk_forward_tests_each_folds_best_on_the_next_block_and_joins_them(files):
    report = json.loads(backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt",
                                 "--walk-forward", "2", "--rank", "return_pct", "--json").stdout)
    candles = load_candles(files / "candles.csv")
    # 3,000 candles in 3 blocks of 1,000: fold 1 trains on 0-999 and tests 1000-1999, fold 2 trains on 0-1999.
    assert [(f["train_candles"], f["test_candles"]) for f in report["folds"]] == [(1000, 1000), (2000, 1000)]
    balance = 1.0
    for fold, (train_end, test_end) in zip(report["folds"], ((1000, 2000), (2000, 3000))):
        train = {k: v[:train_end] for k, v in candles.items()}
        by_return = {(f, s): run_backtest(train, compile_strategy(fixed(f, s))).return_pct
                     for f in (3, 4, 5, 6) for s in (8, 12, 16, 20)}
        best = max(by_return, key=by_return.get)
        assert (fold["runs"][0]["params"]["fast"], fold["runs"][0]["params"]["slow"]) == best
        test = {k: v[:test_end] for k, v in candles.items()}  # warmed up on everything before the block
        balance *= 1 + run_backtest(test, compile_strategy(fixed(*best)), warmup=train_end,
                                    close_at_end=True).return_pct / 100
    assert report["out_of_sample"]["candles"] == 2000
    assert report["out_of_sample"]["metrics"]["return_pct"] == pytest.approx((balance - 1) * 100, abs=1e-5)
    assert report["rolling"] is False


def test_rolling_walk_forward_trains_each_fold_on_the_block_before_its_test_only(files):
    report = json.loads(backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt",
                                 "--walk-forward", "2", "--rolling", "--rank", "return_pct", "--json").stdout)
    candles = load_candles(files / "candles.csv")
    assert report["rolling"] is True
    assert [(f["train_start"], f["train_candles"], f["test_candles"]) for f in report["folds"]] == [
        (0, 1000, 1000), (1000, 1000, 1000)]
    # Fold 2 ranks on candles 1000-1999 alone, its averages warmed up on the 1,000 before.
    history = {k: v[:2000] for k, v in candles.items()}
    by_return = {(f, s): run_backtest(history, compile_strategy(fixed(f, s)), warmup=1000).return_pct
                 for f in (3, 4, 5, 6) for s in (8, 12, 16, 20)}
    ranked = sorted(by_return, key=lambda key: -by_return[key])
    assert [(r["params"]["fast"], r["params"]["slow"]) for r in report["folds"][1]["runs"]] == ranked[:5]
    anchored = {(f, s): run_backtest(history, compile_strategy(fixed(f, s))).return_pct
                for f in (3, 4, 5, 6) for s in (8, 12, 16, 20)}
    assert max(anchored, key=anchored.get) != ranked[0]  # the window matters on this history
    table = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--walk-forward", "2",
                     "--rolling").stdout
    assert "Fold 2 of 2: ranked by return_pct on 1,000 candles (2018-01-20 21:33" in table
    refused = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--rolling", check=False)
    assert refused.returncode == 2 and "--rolling is a kind of --walk-forward" in refused.stderr


def test_bad_split_and_fold_counts_are_usage_errors(files):
    for args in (("--split", "1.5"), ("--split", "0.0001"), ("--walk-forward", "0")):
        result = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", *args, check=False)
        assert result.returncode == 2 and "Error" in result.stderr and result.stdout == ""


def test_a_long_sweep_reports_its_progress_on_stderr(tmp_path):
    candles = tmp_path / "ethbtc.csv"
    candles.write_bytes(ETHBTC.read_bytes())  # 14,397 candles x 144 combinations: a long sweep
    strategy = write(tmp_path, "s.txt", "IF MA{fast: 3..14} > MA{slow: 15..70..5} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n")
    result = backtest("--candles", candles, "--strategy", strategy)
    progress = result.stderr.splitlines()
    assert progress[0].startswith("swept 7 of 144 combinations (4 %)") and progress[-1].startswith(
        "swept 144 of 144 combinations (100 %)")


def test_the_backtest_command_loads_no_web_stack(files):
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "omniwise.py"), "backtest", "--candles",
                             str(files / "candles.csv"), "--strategy", str(files / "sweep.txt"), "--json"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported and "core.dsl" in imported
    assert not imported & {"flask", "werkzeug", "jinja2", "sqlite_utils", "apprise"}


def test_flask_cli_still_offers_the_backtest(files):
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "omniwise", "backtest", "--candles",
                             str(files / "candles.csv"), "--strategy", str(write(files, "f.txt", fixed(4, 9))), "--json"],
                            capture_output=True, text=True, cwd=ROOT, env=os.environ | {"OMNIWISE_DATA_DIR": str(files)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["candles"] == 3000


# -- the parsed-candle cache ------------------------------------------------------------------------

def test_the_cache_serves_a_second_read_and_notices_a_changed_file(tmp_path, monkeypatch):
    path = tmp_path / "c.csv"
    path.write_text("1516423980000,1,2,0.5,1.5,10\n1516424040000,1.5,2,1,2,20\n")
    first = candle_cache.load_candles_cached(path)
    assert candle_cache.cache_path(path).exists()
    parses = []
    real = candle_cache.load_candles
    monkeypatch.setattr(candle_cache, "load_candles", lambda p, progress=None: parses.append(p) or real(p))
    again = candle_cache.load_candles_cached(path)
    assert parses == [] and all(np.array_equal(first[k], again[k]) for k in first)
    path.write_text("1516423980000,1,2,0.5,1.5,10\n1516424040000,1.5,2,1,1,20\n")  # same size, new close
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert candle_cache.load_candles_cached(path)["close"].tolist() == [1.5, 1.0] and len(parses) == 1


def test_a_damaged_or_unwritable_cache_only_costs_time(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("1516423980000,1,2,0.5,1.5,10\n")
    candle_cache.cache_path(path).write_bytes(b"not a zip file")
    assert candle_cache.load_candles_cached(path)["close"].tolist() == [1.5]
    assert candle_cache.load_candles_cached(path)["close"].tolist() == [1.5]  # rewritten, now good
    other = tmp_path / "d.csv"
    other.write_text("1516423980000,1,2,0.5,1.5,10\n")
    candle_cache.cache_path(other).mkdir()  # a cache that can be neither read nor replaced (even by root)
    assert candle_cache.load_candles_cached(other)["close"].tolist() == [1.5]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file left

"""The `backtest` command: one strategy or a whole sweep over a klines CSV, with out-of-sample checks.

Kept apart from omniwise.py, which loads the web stack: `python omniwise.py backtest` comes straight
here, so a backtest starts without importing Flask (about 0.1 s saved a run; measure with
`python -X importtime omniwise.py backtest ...`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click

from core.dsl import StrategyError, compile_strategy, sweeps
from core.strategy_file import read_within_limit
from core.metrics import NAMES

RANK_CHOICES = tuple(name for name in NAMES if name != "days")
_LONG_SWEEP = 2_000_000  # combinations x candles above which a sweep reports its progress on stderr


@click.command("backtest")
@click.option("--candles", "candles_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="klines CSV (Binance's 12 columns, or open_time,open,high,low,close,volume)")
@click.option("--symbol", help="instead of --candles: the history `download` kept of this market")
@click.option("--from", "from_day", metavar="YYYY-MM-DD", help="with --symbol: first day (UTC)")
@click.option("--to", "to_day", metavar="YYYY-MM-DD", help="with --symbol: last day (UTC), inclusive [default: today]")
@click.option("--market", default="spot", show_default=True, type=click.Choice(["spot", "futures"]),
              help="with --symbol: spot, or USDⓈ-M futures")
@click.option("--strategy", "strategy_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="strategy file; numbers written {4..12}, {10..50..5}, {7,14,21} or {fast: 3..6} make a sweep")
@click.option("--fee", default=0.001, show_default=True, type=click.FloatRange(0, 0.1), help="fee per side")
@click.option("--slippage", default=0.0, show_default=True, type=click.FloatRange(0, 0.1),
              help="every fill moved this fraction against the trader (0.0005 is 0.05 %), stops included")
@click.option("--fill", default="next-open", show_default=True, type=click.Choice(["next-open", "close"]),
              help="fill at the next candle's open, or at the decision candle's close")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of the table (a list for a sweep)")
@click.option("--trades", "with_trades", is_flag=True,
              help="with a sweep's --json, every combination's trades too (left out by default: they run to GBs)")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="also write an SVG chart here")
@click.option("--rank", "rank_by", default="sharpe", show_default=True, type=click.Choice(RANK_CHOICES),
              help="the metric a sweep is ranked by")
@click.option("--split", type=float, default=None,
              help="rank on this first share of the candles (e.g. 0.7), then run the best 5 on the rest")
@click.option("--walk-forward", "walk_forward", type=click.IntRange(1, 50), default=None,
              help="rank on K anchored folds, test each fold's best on the block after it, join the tests")
@click.option("--rolling", is_flag=True,
              help="with --walk-forward: train each fold on the block before its test block only (a fixed-length "
                   "window), not on everything before it")
@click.option("--cluster", metavar="tcp://HOST:PORT", default=None,
              help="run the combinations on this Dask cluster's workers instead of the local cores")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="do not read or write the parsed candles kept next to the CSV (<file>.omniwise.npz)")
def backtest_command(candles_path: Path, strategy_path: Path, fee: float, slippage: float, fill: str, as_json: bool,
                     with_trades: bool, chart: Path | None, rank_by: str, split: float | None, walk_forward: int | None,
                     rolling: bool, cluster: str | None, no_cache: bool, symbol: str | None, from_day: str | None, to_day: str | None,
                     market: str) -> None:
    """Run a strategy (or every combination of a sweep) over a history with the worker's own policy and fills."""
    if (candles_path is None) == (symbol is None) or (symbol is None) != (from_day is None):
        raise click.UsageError("give --candles CSV, or --symbol SYMBOL --from YYYY-MM-DD [--to YYYY-MM-DD]")
    try:  # as the worker reads it: a file over 400,000 bytes is not read, one not UTF-8 is refused
        text = read_within_limit(strategy_path)
    except StrategyError as exc:
        for error in exc.errors:
            click.echo(error.format(str(strategy_path)), err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"{strategy_path}:1:1: error: cannot read the file: {exc.strerror or exc}", err=True)
        sys.exit(1)
    if split is not None and walk_forward is not None:
        raise click.UsageError("choose one of --split and --walk-forward")
    if rolling and walk_forward is None:
        raise click.UsageError("--rolling is a kind of --walk-forward: give --walk-forward K too")
    if cluster is not None and not re.fullmatch(r"tcp://[^\s:/]+:\d{1,5}", cluster):
        raise click.UsageError(f"--cluster takes the scheduler's address as tcp://HOST:PORT, not {cluster!r}")
    is_sweep = sweeps.has_sweep(text)
    if chart is not None and (is_sweep or split is not None or walk_forward is not None):
        raise click.UsageError("--chart draws one backtest: not with a sweep, --split or --walk-forward")
    try:
        if is_sweep:
            sweeps.check_sweep(text)
            combinations = sweeps.expand(text)
        else:
            policy = compile_strategy(text)
            combinations = [sweeps.Combination({}, text)]
    except StrategyError as exc:
        for error in exc.errors:
            click.echo(error.format(str(strategy_path)), err=True)
        sys.exit(1)
    if symbol is not None:
        candles = _load_history(symbol, market, from_day, to_day)
        candles_path = Path(f"{symbol.upper()} {market} from {from_day} to {to_day or 'today'}")  # the report's title
    else:
        candles = _load(candles_path, no_cache)
    if split is None and walk_forward is None and not is_sweep:
        _single(policy, candles, candles_path, strategy_path, fee, fill, as_json, chart, slippage)
    elif split is None and walk_forward is None:
        _sweep(combinations, candles, fee, fill, as_json, rank_by, with_trades, slippage, cluster)
    else:
        try:
            if split is not None:
                _split(combinations, candles, split, fee, fill, as_json, rank_by, with_trades, slippage, cluster)
            else:
                _walk_forward(combinations, candles, walk_forward, fee, fill, as_json, rank_by, rolling, slippage,
                              cluster)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None


def main() -> None:
    """`python omniwise.py backtest ...` without the web stack."""
    backtest_command(sys.argv[2:], prog_name=f"{Path(sys.argv[0]).name} backtest")


def _load(candles_path: Path, no_cache: bool):
    from core.backtest import load_candles
    from core.candle_cache import load_candles_cached
    from core.feeds import FeedError

    load = load_candles if no_cache else load_candles_cached
    size = candles_path.stat().st_size
    try:
        if sys.stderr.isatty() and size > 20_000_000:
            with click.progressbar(length=size, label="reading candles", file=sys.stderr) as bar:
                return load(candles_path, progress=lambda done: bar.update(done - bar.pos))
        return load(candles_path)
    except FeedError as exc:
        click.echo(exc.format(), err=True)
        sys.exit(1)


def _load_history(symbol: str, market: str, from_day: str, to_day: str | None):
    """The candles `download` kept of `symbol`, through the parsed-array cache; a one-line error otherwise."""
    from core import clock
    from core.config import ConfigError, load_settings
    from core.feeds import FeedError
    from core.history import HistoryError, history_candles

    try:
        return history_candles(load_settings().data_dir, symbol, market, from_day, to_day, clock.now_ms())
    except (ConfigError, HistoryError) as exc:
        raise click.ClickException(str(exc)) from None
    except FeedError as exc:
        click.echo(exc.format(), err=True)
        sys.exit(1)


def _single(policy, candles, candles_path, strategy_path, fee, fill, as_json, chart, slippage) -> None:
    from core import backtest

    result = backtest.run_backtest(candles, policy, fee_rate=fee, fill=fill, slippage=slippage)
    if chart is not None:
        from core.charts import render_svg

        chart.write_text(render_svg(result, candles, timeframe=policy.timeframe), encoding="utf-8")
    if as_json:
        sys.stdout.write(result.json_text({"strategy_version": policy.version}) + "\n")
    else:
        title = f"Backtest of {strategy_path} (version {policy.version}) on {candles_path.name}"
        click.echo(backtest.format_report(result, title, candles))


def _run(combinations, candles, fee, fill, keep_reports, label="", cluster=None, **options):
    """Every combination over `candles`, on the local cores or on the Dask cluster at `cluster`; a long
    sweep reports its progress on stderr."""
    from core import sweep_cluster, sweep_runs

    total = len(combinations)
    start = time.perf_counter()
    step = max(1, total // 20)

    def progress(done: int) -> None:
        if done % step == 0 or done == total:
            click.echo(f"{label}swept {done:,} of {total:,} combinations ({done * 100 // total} %), "
                       f"{time.perf_counter() - start:.1f} s", err=True)

    if total * len(candles["close"]) < _LONG_SWEEP:
        progress = None
    if cluster is None:
        return sweep_runs.run_combinations(combinations, candles, fee, fill, keep_reports, progress=progress, **options)
    settings = sweep_runs.RunSettings(fee, fill, keep_reports, **options)
    try:
        return sweep_cluster.run_on_cluster(cluster, combinations, candles, settings, progress)
    except sweep_cluster.ClusterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _sweep(combinations, candles, fee, fill, as_json, rank_by, with_trades, slippage, cluster) -> None:
    from core import sweep_runs

    ranked, rank_by = _rank(_run(combinations, candles, fee, fill, as_json, with_trades=with_trades, slippage=slippage,
                                 cluster=cluster), rank_by, as_json)
    deflated = sweep_runs.deflated_sharpe_of_best(ranked)
    if as_json:
        reports = [run.report | {"params": run.params} for run in ranked]
        reports[0]["deflated_sharpe"] = _rounded(deflated)
        _print_json(reports)
        return
    shown = ranked[:sweep_runs.TOP_SHOWN]
    click.echo(f"Sweep of {len(ranked):,} combinations over {len(candles['close']):,} candles "
               f"({_days(ranked[0])}), the best {len(shown)} by {rank_by}:")
    click.echo(_table(shown, rank_by))
    click.echo(_deflated_line(ranked, deflated))


def _split(combinations, candles, fraction, fee, fill, as_json, rank_by, with_trades, slippage, cluster) -> None:
    from core import sweep_runs

    n = len(candles["close"])
    point = sweep_runs.split_point(n, fraction)
    inside, outside = sweep_runs.part(candles, slice(0, point)), sweep_runs.part(candles, slice(point, n))
    ranked, rank_by = _rank(_run(combinations, inside, fee, fill, as_json, "in sample: ", with_trades=with_trades,
                                 slippage=slippage, cluster=cluster), rank_by, as_json)
    best = ranked[:sweep_runs.TOP_RECHECKED]
    again = sweep_runs.recheck(best, candles, slice(point, n), fee, fill, as_json, with_trades=with_trades,
                               slippage=slippage)
    deflated = sweep_runs.deflated_sharpe_of_best(ranked)
    if as_json:
        reports = [run.report | {"params": run.params} for run in ranked]
        reports[0]["deflated_sharpe"] = _rounded(deflated)
        for report, run in zip(reports, again):
            report["out_of_sample"] = run.report
        _print_json(reports)
        return
    click.echo(f"Ranked by {rank_by} on the first {point:,} candles ({_span(inside)}); "
               f"the best {len(best)} again on the last {n - point:,} ({_span(outside)}):")
    click.echo(_side_by_side(best, again, rank_by))
    click.echo(_deflated_line(ranked, deflated))


def _walk_forward(combinations, candles, folds, fee, fill, as_json, rank_by, rolling, slippage, cluster) -> None:
    from core import sweep_runs
    from core.backtest import metric_lines

    n = len(candles["close"])
    done, notes = [], []
    for number, (train, test) in enumerate(sweep_runs.walk_forward_folds(n, folds, rolling), start=1):
        history, warmup = sweep_runs.block(candles, train)
        runs = _run(combinations, history, fee, fill, False, f"fold {number} of {folds}: ", warmup=warmup,
                    slippage=slippage, cluster=cluster)
        metric, note = sweep_runs.choose_metric(runs, rank_by)
        if note and as_json:
            click.echo(f"fold {number}: {note}", err=True)
        notes.append((metric, note))
        ranked = sweep_runs.rank(runs, metric)
        best = ranked[:sweep_runs.TOP_RECHECKED]
        done.append(sweep_runs.Fold(train, test, ranked, sweep_runs.recheck(best, candles, test, fee, fill,
                                                                             slippage=slippage)))
    joined, results = sweep_runs.joined_out_of_sample(done, candles, fee, fill, slippage)
    if as_json:
        _print_json({
            "rolling": rolling,
            "folds": [{"train_start": fold.train.start, "train_candles": fold.train.stop - fold.train.start,
                       "test_candles": fold.test.stop - fold.test.start,
                       "runs": [{"params": run.params, "metrics": run.metrics.as_json(),
                                 "out_of_sample": {"metrics": again.metrics.as_json()}}
                                for run, again in zip(fold.ranked, fold.rechecked)]} for fold in done],
            "out_of_sample": {"candles": sum(len(r.equity) for r in results),
                              "params": [fold.ranked[0].params for fold in done], "metrics": joined.as_json()},
        })
        return
    for number, (fold, (metric, note)) in enumerate(zip(done, notes), start=1):
        click.echo(f"Fold {number} of {folds}: ranked by {metric} on {fold.train.stop - fold.train.start:,} candles "
                   f"({_span(sweep_runs.part(candles, fold.train))}), tested on the next "
                   f"{fold.test.stop - fold.test.start:,} ({_span(sweep_runs.part(candles, fold.test))}):")
        if note:
            click.echo(f"  ({note})")
        click.echo(_side_by_side(fold.ranked[:len(fold.rechecked)], fold.rechecked, metric))
        click.echo("")
    click.echo(f"Out of sample, joined: the best of each fold traded on the block after it "
               f"({sum(len(r.equity) for r in results):,} candles; each block's indicators warmed up on the candles "
               f"before it, a trade open at its end closed at its last close)")
    click.echo("\n".join(metric_lines(joined)))


def _rank(runs, rank_by: str, as_json: bool, label: str = ""):
    """The runs best first, and the metric they were ranked by; a fallback to return_pct is said (on
    stderr under --json, so the JSON stays clean)."""
    from core import sweep_runs

    metric, note = sweep_runs.choose_metric(runs, rank_by)
    if note:
        click.echo(f"{label}{note}", err=as_json)
    return sweep_runs.rank(runs, metric), metric


# -- output -----------------------------------------------------------------------------------------

def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _deflated_line(ranked, deflated: float | None) -> str:
    """What the deflated Sharpe ratio of #1 is, in one line."""
    if deflated is None:
        why = ranked[0].metrics.why_null.get("sharpe", "too few combinations with a Sharpe ratio")
        return f"  deflated Sharpe of #1: - ({why})"
    return (f"  deflated Sharpe of #1: {deflated:.3f}, the probability that its Sharpe ratio is above zero once "
            f"the luck of picking the best of {len(ranked):,} is taken out (Bailey & López de Prado 2014)")


def _days(run) -> str:
    days = run.metrics.days
    return f"{days:,} complete UTC day{'' if days == 1 else 's'}"


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value))
    sys.stdout.write("\n")


def _params(run) -> str:
    return " ".join(f"{name}={value}" for name, value in run.params.items()) or "(the strategy)"


def _figure(value, width: int = 9, fmt: str = ".2f") -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def _cell(metrics, name: str) -> str:
    """One figure of a sweep table, 16 wide: '-' where undefined, 'no loss' where that is why."""
    if metrics.is_no_loss(name):
        return f"{'no loss':>16}"
    return _figure(getattr(metrics, name), 16, "d" if name == "trades" else ".3f")


def _table(runs, rank_by: str) -> str:
    columns = [rank_by] + [c for c in ("return_pct", "max_drawdown_pct", "sharpe", "sortino", "calmar",
                                       "win_rate_pct", "profit_factor", "trades") if c != rank_by]
    width = max([len(_params(run)) for run in runs] + [6])
    lines = [f"  {'#':>3}  {'params':<{width}} " + " ".join(f"{c:>16}" for c in columns)]
    for place, run in enumerate(runs, start=1):
        cells = " ".join(_cell(run.metrics, c) for c in columns)
        lines.append(f"  {place:>3}  {_params(run):<{width}} {cells}")
    return "\n".join(lines)


def _side_by_side(best, again, rank_by: str) -> str:
    figures = [rank_by] + [c for c in ("return_pct", "max_drawdown_pct", "trades") if c != rank_by]
    width = max([len(_params(run)) for run in best] + [6])
    head = " ".join(f"{c:>16}" for c in figures)
    lines = [f"  {'':>3}  {'':<{width}}  {'in sample':^{len(head)}} | {'out of sample':^{len(head)}}",
             f"  {'#':>3}  {'params':<{width}}  {head} | {head}"]
    for place, (run, oos) in enumerate(zip(best, again), start=1):
        cells = [" ".join(_cell(m, c) for c in figures) for m in (run.metrics, oos.metrics)]
        lines.append(f"  {place:>3}  {_params(run):<{width}}  {cells[0]} | {cells[1]}")
    return "\n".join(lines)


def _span(candles) -> str:
    times = candles["open_time_ms"]
    if not len(times):
        return "no candles"
    fmt = "%Y-%m-%d %H:%M"
    return (f"{time.strftime(fmt, time.gmtime(int(times[0]) / 1000))} to "
            f"{time.strftime(fmt, time.gmtime(int(times[-1]) / 1000))} UTC")

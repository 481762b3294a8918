"""Charts of a backtest, drawn as self-contained SVG (numbers only, no script), and the editor's preview."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from core import fills, timeframes
from core.backtest import BacktestResult, run_backtest, stored_candles
from core.dsl import Policy


def _drawn(result: BacktestResult, candles: Mapping[str, np.ndarray], timeframe: int):
    """(closes, open times, equity) of the candles the chart draws: the strategy's timeframe, its newest window
    shown even while it is forming."""
    if timeframe == 1 or result.candles == 0:
        return candles["close"], candles["open_time_ms"], result.equity
    frame = timeframes.build_frame(candles, timeframe, last_is_closed=True)
    return frame.candles["close"], frame.candles["open_time_ms"], result.equity[frame.last_minute]


def render_svg(result: BacktestResult, candles: Mapping[str, np.ndarray], width: int = 1200, height: int = 500,
               timeframe: int = 1) -> str:
    """A self-contained SVG chart: closes of the strategy's timeframe (`timeframe` minutes) with entries and
    exits on the candle they happened in, and the equity curve at those closes below."""
    close, times, equity = _drawn(result, candles, timeframe)
    n = len(close)
    if n == 0:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>'
    step = max(1, n // width)  # one point a pixel is plenty
    index = np.arange(0, n, step)
    price_h, equity_h = height * 0.62, height * 0.3

    def points(values: np.ndarray, top: float, h: float, low: float, high: float) -> list[str]:
        span = (high - low) or 1.0
        xs = index / max(n - 1, 1) * (width - 20) + 10
        ys = top + h - (values[index] - low) / span * h
        return [f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys)]

    def path(values: np.ndarray, top: float, h: float) -> str:
        return "M" + " L".join(points(values, top, h, float(np.min(values)), float(np.max(values))))

    low, high = float(np.min(close)), float(np.max(close))

    def marker(time_ms: int, price: float, colour: str, reason: str | None = None) -> str:
        i = int(np.searchsorted(times, time_ms) if timeframe == 1 else np.searchsorted(times, time_ms, "right") - 1)
        x = i / max(n - 1, 1) * (width - 20) + 10
        y = 10 + price_h - (price - low) / ((high - low) or 1.0) * price_h
        return _marker_shape(reason, x, y, colour)

    marks = [marker(t.entry_time, t.entry_price, "#17803d", "short" if t.side == "short" else None)
             for t in result.trades]
    marks += [marker(t.exit_time, t.exit_price, "#b42318", t.exit_reason) for t in result.trades
              if t.exit_time is not None]
    reasons = sorted({t.exit_reason for t in result.trades} - {None, "rule"})
    legend = " · ".join(f"{_MARKER_WORDS[r]} {r.replace('_', ' ')}" for r in reasons)
    if any(t.side == "short" for t in result.trades):
        legend = " · ".join(filter(None, (legend, f"{_MARKER_WORDS['short']} short entry")))
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="{height - 4}">equity {result.return_pct:+.2f} % · buy and hold '
        f'{result.buy_hold_return_pct:+.2f} % · {len(result.trades)} trades'
        f'{" · exits: " + legend if legend else ""}</text>',
        f'<path d="{path(close, 10, price_h)}" fill="none" stroke="#1d232a" stroke-width="1"/>',
        *marks,
        *_equity_with_drawdown(equity, points, price_h + 30, equity_h - 20),
        "</svg>",
    ])


# One shape per exit reason, so the chart tells a stop from a rule's exit at a glance.
_MARKER_WORDS = {"stop_loss": "■", "take_profit": "▲", "trailing_stop": "◆", "liquidation": "✖", "short": "▼"}


# Polygon markers as (dx, dy) corners around the point, and their colour.
_POLYGONS = {"short": (((-4, -3), (4, -3), (0, 4)), "#6941c6", "entry-short"),
             "take_profit": (((0, -4), (4, 3), (-4, 3)), "#b54708", "exit-take_profit"),
             "trailing_stop": (((0, -4), (4, 0), (0, 4), (-4, 0)), "#7a2e0e", "exit-trailing_stop")}


def _marker_shape(reason: str | None, x: float, y: float, colour: str) -> str:
    """A trade's marker: an exit's shape by its reason ("short" marks a short's entry, pointing down)."""
    if reason in _POLYGONS:
        corners, fill, css = _POLYGONS[reason]
        points = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in corners)
        return f'<polygon class="{css}" points="{points}" fill="{fill}"/>'
    if reason == "liquidation":
        return (f'<path class="exit-liquidation" d="M{x - 4:.1f},{y - 4:.1f} L{x + 4:.1f},{y + 4:.1f} '
                f'M{x - 4:.1f},{y + 4:.1f} L{x + 4:.1f},{y - 4:.1f}" stroke="#b42318" stroke-width="2"/>')
    if reason == "stop_loss":
        return f'<rect class="exit-stop_loss" x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'


def _equity_with_drawdown(equity: np.ndarray, points, top: float, h: float) -> list[str]:
    """The equity line over a red band from each running peak down to it: the drawdown, seen at a glance."""
    peaks = np.maximum.accumulate(np.concatenate(([1.0], equity)))[1:]  # the start counts as a peak
    low, high = float(np.min(equity)), float(np.max(peaks))
    top_edge, bottom_edge = points(peaks, top, h, low, high), points(equity, top, h, low, high)
    band = " ".join(top_edge + bottom_edge[::-1])
    return [f'<polygon class="drawdown" points="{band}" fill="#b42318" fill-opacity="0.18" stroke="none"/>',
            f'<path class="equity" d="M{" L".join(bottom_edge)}" fill="none" stroke="#2563eb" stroke-width="1.2"/>']


@dataclasses.dataclass(frozen=True)
class Axes:
    """What the preview chart's axes say: the closes' and the equity's ranges, and the time span."""

    price_low: float
    price_high: float
    equity_low_pct: float  # the equity's lowest and highest point, in % of the start
    equity_high_pct: float
    first_ms: int
    last_ms: int


@dataclasses.dataclass(frozen=True)
class Preview:
    """The editor's preview: the backtest over the stored candles or a downloaded history, and its chart (SVG,
    numbers only); or why a downloaded history cannot be shown (`error`)."""

    result: BacktestResult | None
    chart_svg: str
    axes: Axes | None = None  # None without candles
    source: str = ""  # the downloaded history it ran over ("ETHBTC spot from ... to ..."); "" for the stored candles
    error: str | None = None


def axes(result: BacktestResult, candles: Mapping[str, np.ndarray], timeframe: int = 1) -> Axes | None:
    """The ranges the preview chart spans, for labels beside it (text inside a shrunk SVG is unreadable)."""
    if result.candles == 0:
        return None
    close, _, equity = _drawn(result, candles, timeframe)
    equity = np.concatenate(([1.0], equity))
    return Axes(float(np.min(close)), float(np.max(close)), float((np.min(equity) - 1) * 100),
                float((np.max(equity) - 1) * 100), int(candles["open_time_ms"][0]), int(candles["open_time_ms"][-1]))


def preview(db, symbol: str, policy: Policy, fee_rate: float = fills.DEFAULT_FEE_RATE,
            limit: int = 10_000) -> Preview:
    """What `policy` would have done over the stored candles: the editor's live preview."""
    return preview_of(stored_candles(db, symbol, limit), policy, fee_rate)


def preview_of(candles: Mapping[str, np.ndarray], policy: Policy, fee_rate: float, source: str = "") -> Preview:
    """The editor's preview over any candles (a downloaded history: `source` names it)."""
    result = run_backtest(candles, policy, fee_rate=fee_rate)
    return Preview(result, render_svg(result, candles, width=1100, height=260, timeframe=policy.timeframe),
                   axes(result, candles, policy.timeframe), source)

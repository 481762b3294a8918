"""The editor's preview: the key metrics under the text, and the equity curve over its drawdown band."""

from __future__ import annotations

import re

import numpy as np

from core.backtest import load_candles, run_backtest
from core.charts import preview, render_svg
from core.dsl import compile_strategy
from tests.conftest import SHARED_DATA

DAY_MS = 86_400_000


def test_the_chart_shades_the_drawdown_between_the_running_peak_and_the_equity():
    closes = np.array([2, 4, 5, 2, 4, 6, 1, 2, 4, 5], dtype=np.float64)
    opens = np.array([2, 2, 4, 5, 5, 5, 6, 2, 2, 4], dtype=np.float64)
    candles = {"open_time_ms": np.arange(10, dtype=np.int64) * DAY_MS, "open": opens, "high": np.maximum(opens, closes),
               "low": np.minimum(opens, closes), "close": closes, "volume": np.ones(10)}
    result = run_backtest(candles, compile_strategy("IF CLOSE > 3 THEN BUY\nIF CLOSE < 3 THEN SELL"), fee_rate=0.0)
    svg = render_svg(result, candles, width=1200, height=500)
    band = re.search(r'<polygon class="drawdown" points="([^"]+)"', svg).group(1).split()
    equity = re.search(r'<path class="equity" d="M([^"]+)"', svg).group(1).split(" L")
    assert len(band) == 2 * len(equity) == 20
    peak_edge, equity_edge = band[:10], band[10:][::-1]
    assert equity_edge == equity
    # Equity 1, 1, 1.25, 0.5, 1.25, 1.5, 0.25, 0.5, 0.5, 0.625; peaks 1, 1, 1.25, 1.25, 1.25, 1.5, 1.5, ...
    ys = [float(point.split(",")[1]) for point in equity]
    peak_ys = [float(point.split(",")[1]) for point in peak_edge]
    top, h = 500 * 0.62 + 30, 500 * 0.3 - 20  # the equity panel; 0.25 at its bottom, 1.5 at its top
    expected = [1, 1, 1.25, 0.5, 1.25, 1.5, 0.25, 0.5, 0.5, 0.625]
    peaks = [1, 1, 1.25, 1.25, 1.25, 1.5, 1.5, 1.5, 1.5, 1.5]
    assert ys == [round(top + h - (e - 0.25) / 1.25 * h, 1) for e in expected]
    assert peak_ys == [round(top + h - (p - 0.25) / 1.25 * h, 1) for p in peaks]


def test_the_preview_shows_the_key_metrics(operator, settings, db):
    candles = load_candles(SHARED_DATA / "candles" / "ETHBTC-1m.csv")
    columns = [candles[k].tolist() for k in ("open_time_ms", "open", "high", "low", "close", "volume")]
    with db.conn:
        db.conn.executemany("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
                            [(settings.symbol, t, o, h, lo, c, v, t + 59_999) for t, o, h, lo, c, v in zip(*columns)])
    text = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
    m = preview(db, settings.symbol, compile_strategy(text), settings.fee_rate).result.metrics
    fragment = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token}
                             ).get_data(as_text=True)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", fragment.split('class="compact metrics"')[1].split("</table>")[0])
    # The last 10,000 stored minutes: no Sharpe, Sortino or Calmar (fewer than 30 complete UTC days), and why.
    first, last = int(candles["open_time_ms"][-10_000]), int(candles["open_time_ms"][-1])
    assert m.days == (last + 60_000) // 86_400_000 - -(-first // 86_400_000) == 6 and (m.sharpe, m.sortino, m.calmar) == (None, None, None)
    assert [c.strip() for c in cells] == ["–", "–", "–", f"{m.profit_factor:.2f}", f"{m.expectancy_pct:+.3f} %",
                                          f"{m.exposure_pct:.0f} %", f"{m.fees_paid * 100:.2f} %"]
    assert fragment.count('title="6 complete UTC days, fewer than 30"') == 3
    why = fragment.split('id="why-null"')[1].split("</ul>")[0]
    assert re.findall(r"<li>([^<]*)</li>", why) == ["Sharpe, Sortino, Calmar –: 6 complete UTC days, fewer than 30"]
    assert '<polygon class="drawdown"' in fragment

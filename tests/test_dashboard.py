"""The dashboard's data: P&L, recent activity, the chart's candles, averages and markers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import brokers, dashboard, indicators
from core.webhook import ledger
from core.config import Settings
from core.dsl import compile_strategy

SYMBOL = "BTCUSDT"
START_MS = 1_700_000_040_000 // 60_000 * 60_000
NOW_MS = START_MS + 10_000 * 60_000


def add_candles(db, closes, symbol=SYMBOL, start_ms=START_MS):
    rows = [(symbol, start_ms + i * 60_000, c, c + 1, c - 1, c, 2.0, start_ms + i * 60_000 + 59_999, 2 * c, 3, 1.0, c)
            for i, c in enumerate(closes)]
    with db.conn:
        db.conn.executemany("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def add_fill(db, side, price, filled_at_ms, decision_id):
    with db.conn:
        db.execute("INSERT INTO decisions(id, symbol, candle_open_time_ms, action, target, position_before, reason, "
                   "created_at_ms) VALUES (?, ?, ?, ?, 'long', 'flat', 'strategy', ?)",
                   [decision_id, SYMBOL, filled_at_ms - 60_000, side, filled_at_ms])
        db.execute("INSERT INTO orders(decision_id, client_order_id, broker, symbol, side, status, qty, price, "
                   "created_at_ms, filled_at_ms) VALUES (?, ?, 'paper', ?, ?, 'filled', 1, ?, ?, ?)",
                   [decision_id, f"omniwise-{decision_id}", SYMBOL, side, price, filled_at_ms, filled_at_ms])


def add_signal(db, word, at_ms, source="TradingView"):
    ledger.record(db, ledger.Signal(word, at_ms, source, SYMBOL), received_at_ms=at_ms, remote_addr="127.0.0.1",
                   raw_body="{}")


@pytest.mark.parametrize("side, qty, entry, price, expected", [
    ("long", 2.0, 100.0, 110.0, (20.0, 10.0)),
    ("long", 2.0, 100.0, 90.0, (-20.0, -10.0)),
    ("short", 1.0, 100.0, 90.0, (10.0, 10.0)),
    ("flat", 0.0, None, 90.0, None),
    ("long", 2.0, 100.0, None, None),
    (None, None, None, 90.0, None),
])
def test_unrealised_pnl_in_quote_and_percent(side, qty, entry, price, expected):
    pnl = dashboard.unrealised_pnl({"side": side, "qty": qty, "entry_price": entry}, price)
    assert (pnl if pnl is None else (pytest.approx(pnl["quote"]), pytest.approx(pnl["percent"]))) == expected


def test_overview_adds_the_last_candle_and_pnl_to_the_status_report(db):
    add_candles(db, [100.0, 104.0])
    with db.conn:
        brokers.save_position(db, brokers.Position("long", 0.5, 100.0), NOW_MS)
    report = dashboard.overview(db, Settings(), NOW_MS)
    assert report["candle"].close == 104.0 and report["candle"].open_time_ms == START_MS + 60_000
    assert report["position"]["unrealised_pnl"] == {"quote": pytest.approx(2.0), "percent": pytest.approx(4.0)}
    assert report["broker"] == "paper" and report["worker"]["alive"] is False


@pytest.mark.parametrize("text, labels", [
    ("IF MA4 > MA9 THEN BUY", ["SMA(4)", "SMA(9)"]),
    ("IF EMA(9) CROSSES BELOW EMA(HIGH, 21) OR RSI(14) > 70 THEN SELL", ["EMA(9)", "EMA(HIGH, 21)"]),
    ("IF CLOSE > BB_UPPER AND SMA(VOLUME, 20) > 5 AND WMA(RSI, 5) > 50 THEN BUY", ["BB_UPPER(20, 2)"]),
    ("IF NOT (MA4 > MA9) AND MA4 > MA9 THEN SELL", ["SMA(4)", "SMA(9)"]),
    ("", []),
])
def test_moving_averages_are_the_strategys_price_scale_indicators(text, labels):
    assert list(dashboard.moving_averages(compile_strategy(text))) == labels


def test_chart_averages_equal_the_indicator_over_the_whole_history(db):
    closes = list(100 + 10 * np.sin(np.arange(600) / 20))
    add_candles(db, closes)
    policy = compile_strategy("IF MA4 > SMA(50) THEN BUY\nIF EMA(20) < MA4 THEN SELL")
    data = dashboard.chart(db, SYMBOL, policy, count=240)
    assert [c["close"] for c in data["candles"]] == closes[-240:]
    assert data["candles"][0]["time"] == (START_MS + 360 * 60_000) // 1000
    series = {"close": np.array(closes)}
    for line in data["lines"]:
        name, period = line["name"].rstrip(")").split("(")
        full = indicators.compute(name, series, (float(period),))[-240:]
        assert [p["value"] for p in line["points"]] == pytest.approx(list(full), rel=1e-9)
        assert len(line["points"]) == 240  # warmed up before the first candle shown


def test_chart_marks_fills_and_accepted_signals_inside_its_range(db):
    add_candles(db, [100.0] * 300)
    add_fill(db, "BUY", 100.5, START_MS + 250 * 60_000 + 1234, decision_id=1)
    add_fill(db, "SELL", 99.5, START_MS + 10 * 60_000, decision_id=2)  # before the chart's range
    add_signal(db, "SELL", START_MS + 280 * 60_000 + 30_000, source="<b>bot</b>")
    data = dashboard.chart(db, SYMBOL, compile_strategy(""), count=100)
    assert data["markers"] == [
        {"time": (START_MS + 250 * 60_000) // 1000, "kind": "fill", "side": "BUY", "price": 100.5},
        {"time": (START_MS + 280 * 60_000) // 1000, "kind": "signal", "side": "SELL", "text": "<b>bot</b>: SELL"},
    ]
    json.dumps(data)  # served as JSON as it is


def test_chart_of_an_empty_database_is_empty(db):
    assert dashboard.chart(db, SYMBOL, compile_strategy("IF MA4 > MA9 THEN BUY")) == {
        "symbol": SYMBOL, "candles": [], "lines": [], "markers": []}


def test_recent_activity_is_newest_first_and_limited(db):
    for i in range(15):
        add_fill(db, "BUY" if i % 2 == 0 else "SELL", 100.0 + i, START_MS + i * 60_000, decision_id=i + 1)
        add_signal(db, "BUY", START_MS + i * 60_000, source=f"bot{i}")
    activity = dashboard.recent_activity(db, limit=10)
    assert [d["id"] for d in activity["decisions"]] == list(range(15, 5, -1))
    assert [o["price"] for o in activity["orders"]][:2] == [114.0, 113.0]
    assert [s["source"] for s in activity["signals"]][:2] == ["bot14", "bot13"]
    assert activity["alerts"] == []


@pytest.mark.parametrize("seconds_ago, words", [(0, "0 s"), (59, "59 s"), (119, "119 s"), (120, "2 min"),
                                                (7200, "2 h"), (3 * 86_400, "3 d")])
def test_age_in_words(seconds_ago, words):
    from core.health.status import iso

    assert dashboard.age(iso(NOW_MS - seconds_ago * 1000), NOW_MS) == words
    assert dashboard.age(None, NOW_MS) == "never"

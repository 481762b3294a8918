"""The webhook page's TradingView recipe: its messages are accepted, and its TTL keeps the signal fresh."""

from __future__ import annotations

import pytest

from core import tradingview
from core.health import heartbeat
from core.webhook import ledger
from core.brokers import Position
from core.config import Settings

TOKEN = "recipe-token-0123456789"
START_MS = 1_800_000_000_000 // 3_600_000 * 3_600_000
MINUTE_MS = 60_000


@pytest.fixture
def settings(data_dir):
    return Settings(data_dir=data_dir, webhook_token=TOKEN, webhook_rate_per_s=0)


@pytest.mark.parametrize("position, signal", [("long", "BUY"), ("flat", "FLAT"), ("short", "SHORT")])
def test_the_recipes_message_as_tradingview_fills_it_is_a_signal(client, db, position, signal):
    # {{strategy.market_position}} and the Pine line's alert() both send the bare word
    message = tradingview.RECIPE_MESSAGE.replace("{{strategy.market_position}}", position)
    answer = client.post(f"/api/v1/external-signal/{TOKEN}", data=message, content_type="text/plain; charset=utf-8")
    assert answer.status_code == 200, answer.json
    assert answer.json["signal"] == signal
    assert f'"{position}"' in tradingview.PINE_EVERY_BAR


def worst_state_over_a_day(db, bar_s: float, ttl_s: float, delay_s: float = 45) -> set[str]:
    """TradingView alerts once per bar close (each arriving `delay_s` late); the heartbeat checks every minute of
    the day against a long position. Returns every state the checks saw."""
    check = heartbeat.HeartbeatSettings(ttl_s=ttl_s, grace_s=90)
    bars = int(86_400 // bar_s)
    arrivals = [START_MS + int((i + 1) * bar_s * 1000 + delay_s * 1000) for i in range(bars)]
    states, next_arrival = set(), 0
    for minute in range(int(bar_s // 60) + 2, 24 * 60):
        now_ms = START_MS + minute * MINUTE_MS
        while next_arrival < len(arrivals) and arrivals[next_arrival] <= now_ms:
            at = arrivals[next_arrival]
            ledger.record(db, ledger.Signal("BUY", at, "TradingView", "BTCUSDT"), received_at_ms=at,
                           remote_addr="127.0.0.1", raw_body="long")
            next_arrival += 1
        view = heartbeat.current_signal(db, "BTCUSDT")
        states.add(heartbeat.reconcile(view, Position("long", 1.0, 100.0), now_ms, check).state)
    return states


@pytest.mark.parametrize("bar", ["1 min", "5 min", "15 min", "1 h"])
def test_a_once_per_bar_alert_under_the_recommended_ttl_never_goes_stale(db, bar):
    bar_s = dict(tradingview.BAR_LENGTHS_S)[bar]
    assert worst_state_over_a_day(db, bar_s, tradingview.ttl_for_bar_s(bar_s)) == {heartbeat.OK}


def test_the_default_ttl_with_fifteen_minute_bars_is_the_false_alarm_the_page_warns_of(db):
    assert heartbeat.STALE in worst_state_over_a_day(db, 900, 600)


def test_the_ttl_table_and_the_longest_bar_agree():
    for name, ttl in tradingview.ttl_table():
        bar_s = dict(tradingview.BAR_LENGTHS_S)[name]
        assert ttl == 2 * bar_s + 60 and tradingview.longest_bar_s(ttl) == bar_s
    assert tradingview.longest_bar_s(600) == 270  # the default TTL fits bars up to 4.5 minutes


def test_the_webhook_page_shows_the_recipe_and_the_ttl_for_this_setting(operator):
    page = operator.get("/admin/webhook").get_data(as_text=True)
    assert "{{strategy.market_position}}" in page and "alert.freq_once_per_bar_close" in page
    assert "Order fills and alert() function calls" in page and "bars up to 270 s fit" in page
    assert "<td>15 min</td><td>1860</td>" in page

"""The operator's cockpit over HTTP: money in the status JSON, /trades, pause/resume/flatten, alerts, words."""

from __future__ import annotations

import dataclasses
import time

import pytest

from core import brokers, controls
from core.health import alerts, heartbeat
from tests.processes import AlertSink

SYMBOL = "BTCUSDT"  # the tests' Settings() market


def fill(db, broker, side, price, time_ms, reason="strategy"):
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, ?, 'long', 'flat', ?, ?)", [SYMBOL, time_ms, side, reason, time_ms]).lastrowid
        broker.submit(decision_id, side, time_ms)
        broker.fill_pending(price, time_ms)


def add_candle(db, open_time_ms, close):
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, open_time_ms, close, close, close, close, open_time_ms + 59_999])


@pytest.fixture
def traded(db, settings):
    """Two round trips of the paper account (the second at a loss, closed by the operator) and an open one."""
    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    now = time.time_ns() // 1_000_000
    start = now - now % 86_400_000 - 86_400_000  # yesterday 00:00 UTC
    fill(db, broker, "BUY", 100.0, start + 60_000)
    fill(db, broker, "SELL", 110.0, start + 120_000)
    fill(db, broker, "BUY", 120.0, now - 60_000)
    fill(db, broker, "SELL", 115.0, now - 30_000, reason="manual")
    fill(db, broker, "BUY", 100.0, now - 20_000)
    add_candle(db, now - now % 60_000, 105.0)
    return broker


def test_status_json_has_the_account_in_the_quote_asset_and_the_trading_state(operator, traded, db):
    report = operator.get("/api/v1/status").json
    money = report["account"]
    # independent arithmetic: 10,000 -> 99.9 @100 -> 10,978.011 -> 91.3584 @120 -> 10,496.75 -> 104.8626 @100
    first = 10_000 / 100 * 0.999 * 110 * 0.999 - 10_000
    cash_after_second = 10_000 / 100 * 0.999 * 110 * 0.999 / 120 * 0.999 * 115 * 0.999
    second = cash_after_second - 10_000 / 100 * 0.999 * 110 * 0.999
    qty = cash_after_second / 100 * 0.999
    assert money["realized_pnl"] == pytest.approx(first + second)
    assert money["realized_pnl_today"] == pytest.approx(second)
    assert (money["cash"], money["position_qty"]) == (0.0, pytest.approx(qty))
    assert money["equity"] == pytest.approx(qty * 105.0)
    assert money["asset"] == "USDT" and money["trades"] == 2
    assert report["trading"] == {"paused": False, "since": None, "flatten_requested_at": None}
    controls.pause(db, 1_700_000_000_000)
    assert operator.get("/api/v1/status").json["trading"]["since"] == "2023-11-14T22:13:20.000Z"


def test_trades_page_lists_round_trips_newest_first_with_pnl_fees_and_exit_reason(operator, traded):
    page = operator.get("/trades").get_data(as_text=True)
    assert page.index("<em>open</em>") < page.index(">manual<") < page.index(">rule<")
    assert ">+978.01<" in page  # 9,990 USDT-worth sold at 110 less the fee, minus the 10,000 spent (in cents)
    assert ">+9.78 %<" in page and 'id="equity"' in page and "Round trips" in page
    fragment = operator.get("/trades/table").get_data(as_text=True)
    assert fragment.lstrip().startswith('<section id="trades"') and 'hx-trigger="every 10s"' in fragment


def test_equity_curve_ends_at_the_equity_now(operator, traded):
    data = operator.get("/api/v1/equity").json
    assert data["start"] == 10_000 and data["asset"] == "USDT"
    assert data["points"][-1]["value"] == pytest.approx(operator.get("/api/v1/status").json["account"]["equity"])
    times = [p["time"] for p in data["points"]]
    assert times == sorted(set(times)) and len(times) == 7  # start, 5 fills, the last candle's close
    assert data["points"][0]["value"] == 10_000


def test_pause_resume_and_flatten_need_the_csrf_token_and_are_recorded(operator, db):
    assert operator.post("/admin/pause").status_code == 400  # no token: refused, nothing recorded
    assert controls.trading_state(db).is_paused is False
    answer = operator.post("/admin/pause", data={"csrf_token": operator.csrf_token})
    assert answer.status_code == 302 and controls.trading_state(db).is_paused
    page = operator.get("/").get_data(as_text=True)
    assert "Paused since " in page and ">Resume<" in page
    operator.post("/admin/resume", data={"csrf_token": operator.csrf_token})
    assert controls.trading_state(db).is_paused is False
    confirm = operator.get("/admin/flatten").get_data(as_text=True)
    assert "Close the position now?" in confirm and "Pause first" in confirm
    assert controls.waiting_flatten(db) is None  # looking at the question does nothing
    operator.post("/admin/flatten", data={"csrf_token": operator.csrf_token})
    assert controls.waiting_flatten(db) is not None
    assert "Flatten requested" in operator.get("/").get_data(as_text=True)


def test_acknowledging_an_alert_marks_it_seen(operator, db):
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is SELL but position is long"),
                     1_700_000_000_000)
    (alert,) = alerts.recent(db)
    page = operator.get("/alerts").get_data(as_text=True)
    assert f'/alerts/{alert["id"]}/acknowledge' in page and ">queued<" in page
    answer = operator.post(f'/alerts/{alert["id"]}/acknowledge', data={"csrf_token": operator.csrf_token})
    assert answer.status_code == 302 and alerts.recent(db)[0]["acknowledged_at_ms"] is not None
    assert ">seen<" in operator.get("/alerts").get_data(as_text=True)
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"),
                     1_700_000_060_000)
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is SELL but position is long"),
                     1_700_000_120_000)
    page = operator.get("/alerts").get_data(as_text=True)
    assert page.count("/acknowledge") == 1  # only the episode that lasts; the recovery and the past are done
    assert operator.post("/alerts/999/acknowledge", data={"csrf_token": operator.csrf_token}).status_code == 404


@pytest.fixture
def sink():
    receiver = AlertSink()
    yield receiver
    receiver.close()


@pytest.mark.parametrize("refusing", [False, True])
def test_the_test_notification_goes_through_apprise_and_shows_its_result(app, operator, db, sink, refusing):
    url = sink.url if not refusing else sink.url.replace("127.0.0.1:", "127.0.0.1:1")  # a port nobody listens on
    app.config["SETTINGS"] = dataclasses.replace(app.config["SETTINGS"], alert_urls=(url,))
    page = operator.post("/alerts/test", data={"csrf_token": operator.csrf_token}, follow_redirects=True)
    text = page.get_data(as_text=True)
    (row,) = alerts.recent(db)
    if refusing:
        assert "was not delivered" in text and row["delivered_at_ms"] is None and row["last_error"]
        assert sink.messages() == []
        assert alerts.deliver_due(db, None, row["created_at_ms"] + 10**9) == 0  # never retried
    else:
        assert "was delivered" in text and row["delivered_at_ms"] is not None
        assert sink.messages() == ["TEST: a test notification from Omniwise; alerts reach you this way"]
        assert ">sent<" in text


def test_without_alert_urls_the_test_says_alerts_go_to_the_log_only(operator):
    text = operator.post("/alerts/test", data={"csrf_token": operator.csrf_token},
                         follow_redirects=True).get_data(as_text=True)
    assert "No OMNIWISE_ALERT_URLS are set" in text and "log only" in text


def test_heartbeat_in_its_grace_shows_pending_until_a_time_not_ok(operator, db):
    now = time.time_ns() // 1_000_000
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"), now)
    until = now + 45_000
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=until), now)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    assert f"pending until {time.strftime('%H:%M:%S', time.gmtime(until / 1000))} UTC" in summary
    assert ">ok<" not in summary


@pytest.mark.parametrize("value, shown", [
    (-0.004, '<span class="muted">-0.004 %</span>'), (0.0, '<span class="muted">0.00 %</span>'),
    (-0.2, '<span class="bad">-0.20 %</span>'), (1.234, '<span class="good">+1.23 %</span>'),
])
def test_a_fee_only_loss_is_not_a_red_minus_zero(value, shown):
    from blueprints.formats import pct

    assert str(pct(value)) == shown


def test_times_say_utc_and_carry_the_year_when_it_is_not_this_year():
    from blueprints.formats import utc

    now = 1_796_000_000_000  # 2026-11-30 00:53:20 UTC
    assert utc(1_570_752_000_000) == "2019-10-11 00:00:00 UTC"
    assert utc(1_570_752_000_000, short=True, now_ms=now) == "2019-10-11 00:00"
    assert utc(now, short=True, now_ms=now) == "11-30 00:53:20"


def test_the_login_page_says_where_the_password_comes_from_and_how_to_reset_it(client, db):
    from core import auth

    auth.set_password(db, "x" * 12, 1_700_000_000_000)
    page = client.get("/login").get_data(as_text=True)
    assert "OMNIWISE_ADMIN_PASSWORD" in page and "python omniwise.py init" in page
    assert "python omniwise.py set-password" in page


def test_the_ledgers_stale_is_called_superseded_on_the_dashboard(operator, db):
    from core.webhook import ledger

    for t, source in ((2_000, "tv"), (1_000, "tv")):
        ledger.record(db, ledger.Signal("BUY", 1_700_000_000_000 + t, source, SYMBOL), received_at_ms=t,
                       remote_addr="127.0.0.1", raw_body="")
    page = operator.get("/dashboard/activity").get_data(as_text=True)
    assert ">superseded<" in page and ">stale<" not in page


@pytest.mark.parametrize("alert_id", ["²", "1" * 23, "٣", "-1", "1.0", "9" * 19])
def test_acknowledging_an_alert_id_that_is_not_a_plain_number_is_404(operator, alert_id):
    answer = operator.post(f"/alerts/{alert_id}/acknowledge", data={"csrf_token": operator.csrf_token})
    assert answer.status_code == 404

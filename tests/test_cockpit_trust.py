"""What makes the cockpit trustworthy at a glance: the heartbeat's verdict the moment a grace ends, banners
and freshness on every page, money written like money, honest alerts, error pages, the CSV export."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.health import heartbeat
from core.webhook import intake, ledger

SYMBOL = "BTCUSDT"  # the tests' Settings() market
S = 1000


class Clock:
    """A clock the test moves by hand (seconds, as time.time)."""

    def __init__(self, now_s: float):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def receive(db, word: str, at_ms: int) -> None:
    ledger.record(db, ledger.Signal(word, at_ms, "TradingView", SYMBOL), received_at_ms=at_ms,
                  remote_addr="127.0.0.1", raw_body=word)


def test_the_worker_rechecks_the_heartbeat_the_second_a_grace_ends_not_a_minute_later(settings):
    from worker import Worker

    settings = dataclasses.replace(settings, heartbeat_grace_s=30, heartbeat_interval_s=60)
    clock = Clock(1_800_000_000.0)
    worker = Worker(settings, clock=clock)
    try:
        receive(worker.db, "BUY", int(clock() * S))  # the paper account is flat: a mismatch, in its grace
        worker.obey_operator()  # the new signal is checked at once
        state = heartbeat.state_of(worker.db, "position")
        assert state["pending_until_ms"] == int(clock() * S) + 30 * S and state["state"] != heartbeat.MISMATCH
        clock.now_s += 29
        worker.obey_operator()
        assert heartbeat.state_of(worker.db, "position")["pending_until_ms"] is not None  # still in its grace
        clock.now_s += 1  # the grace ends: the next 1-second job decides, not the 60-second check
        worker.obey_operator()
        state = heartbeat.state_of(worker.db, "position")
        assert (state["state"], state["pending_until_ms"]) == (heartbeat.MISMATCH, None)
        assert state["checked_at_ms"] == int(clock() * S)
    finally:
        worker.db.close()


def test_a_recheck_is_due_only_once_a_pending_grace_has_ended(db):
    now = 1_800_000_000_000
    assert not heartbeat.is_recheck_due(db, now)  # never checked
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"), now)
    assert not heartbeat.is_recheck_due(db, now + 3600 * S)  # ok: the periodic check is enough
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now + 90 * S), now)
    assert not heartbeat.is_recheck_due(db, now + 90 * S - 1)
    assert heartbeat.is_recheck_due(db, now + 90 * S)


PAGES = ["/", "/trades", "/admin/algo", "/admin/algo/history", "/admin/webhook", "/alerts"]


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("path", PAGES)
def test_a_dead_worker_is_a_banner_and_in_the_title_of_every_page(operator, db, path):
    from core.health import liveness

    liveness.beat(db, now_ms() - 125_000)  # the last beacon, 2 min ago (down after 15 s)
    page = operator.get(path).get_data(as_text=True)
    assert "<title>⚠ worker down · " in page
    assert "The worker is down (last seen 2 min ago)" in page
    liveness.beat(db, now_ms())
    page = operator.get(path).get_data(as_text=True)
    assert "⚠" not in page.split("</title>")[0] and "The worker is down" not in page


@pytest.mark.parametrize("state, reason", [
    (heartbeat.MISMATCH, "signal is BUY but no long position (position is flat)"),
    (heartbeat.STALE, "the last signal (BUY from TradingView) is 12 min old, more than the 10 min allowed"),
])
def test_a_mismatch_or_a_stale_signal_is_a_banner_on_every_page(operator, db, state, reason):
    from core.health import liveness

    liveness.beat(db, now_ms())
    heartbeat.record(db, "position", heartbeat.Verdict(state, reason), now_ms())
    for path in PAGES:
        page = operator.get(path).get_data(as_text=True)
        assert f"<title>⚠ {state} · " in page, path
        assert re.search(rf"Heartbeat {state} since \d s ago: {re.escape(reason)}", page), path
    fragment = operator.get("/banner").get_data(as_text=True)
    assert f'data-title="{state}"' in fragment


def test_the_banner_is_empty_and_its_title_plain_when_all_is_well(operator, db):
    from core.health import liveness

    liveness.beat(db, now_ms())
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.OK, "signal is SELL and position is flat"), now_ms())
    fragment = operator.get("/banner").get_data(as_text=True)
    assert 'data-title=""' in fragment and "<p" not in fragment


def test_a_worker_that_is_down_greys_the_tiles_that_depend_on_it(operator, db):
    from core.health import liveness

    liveness.beat(db, now_ms() - 60_000)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    for tile in ("trading-tile", "market-tile", "position-tile", "heartbeat-tile"):
        assert f'class="tile greyed" id="{tile}"' in summary
    liveness.beat(db, now_ms())
    assert "greyed" not in operator.get("/dashboard/summary").get_data(as_text=True)


def test_the_heartbeat_tile_says_pending_until_then_that_the_grace_ended(operator, db):
    import time

    from core.health import liveness

    liveness.beat(db, now_ms())
    now = now_ms()
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now + 45_000), now)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    until = time.strftime("%H:%M:%S", time.gmtime((now + 45_000) / 1000))
    assert f'data-state="pending">pending until {until} UTC<' in summary
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now - 1_000), now - 50_000)
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    assert "grace ended" in summary and "checking now" in summary


def test_every_page_says_when_its_data_was_read(operator):
    for path in PAGES:
        page = operator.get(path).get_data(as_text=True)
        assert 'id="freshness"' in page and "data read " in page, path


# -- money written like money -------------------------------------------------------------------------

@pytest.mark.parametrize("value, decimals, text", [
    (2000620.0, 6, "2,000,620.000000"),  # was "2.00062e+06"
    (1.4092325e+09, 2, "1,409,232,500.00"),  # was "1.4092325e+09"
    (1e-7, 8, "0.00000010"),
    (0.125, 2, "0.13"),  # half up, as a person rounds money
    (-0.004, 2, "0.00"),  # no "-0.00"
    (-1234.5, 1, "-1,234.5"),
    (7063664.1, 0, "7,063,664"),
    (1e22, 2, "10,000,000,000,000,000,000,000.00"),
])
def test_numbers_have_fixed_decimals_and_separators_and_never_an_exponent(value, decimals, text):
    from core.precision import fixed

    assert fixed(value, decimals) == text


def test_signed_money_has_a_plus_and_zero_has_no_sign():
    from core.precision import fixed

    assert (fixed(3.14159, 2, signed=True), fixed(-3.14159, 2, signed=True), fixed(0.001, 2, signed=True)) == \
        ("+3.14", "-3.14", "0.00")


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30), st.integers(0, 8))
def test_any_number_reads_back_within_half_its_last_decimal(value, decimals):
    from core.precision import fixed

    text = fixed(value, decimals)
    assert "e" not in text.lower() and text.count(".") == (1 if decimals else 0)
    whole = text.split(".")[0].lstrip("-")
    assert whole == format(int(whole.replace(",", "")), ",")  # separators every three digits
    back = float(text.replace(",", ""))
    assert abs(back - value) <= 0.5 * 10 ** -decimals + abs(value) * 1e-15


@pytest.mark.parametrize("step, decimals", [("0.00100000", 3), ("1.00000000", 0), ("10", 0), ("0.00000001", 8),
                                            ("0.5", 1), ("0", 8)])
def test_decimals_of_a_step_size(step, decimals):
    from core.precision import decimals_of_step

    assert decimals_of_step(step) == decimals


@pytest.mark.parametrize("price, quote, expected", [
    (90_000.0, "USDT", (8, 2, 2)),  # BTCUSDT: a satoshi of BTC is worth 0.0009 USDT; a cent of money
    (3_000.0, "USDT", (7, 2, 2)),
    (0.00141, "ETH", (1, 7, 6)),  # XRPETH: prices to five digits, 0.1 XRP is worth 0.00014 ETH
    (1.0, "BTC", (4, 4, 8)),
    (None, "ETH", (8, 8, 6)),  # no price yet: every decimal Binance could have
])
def test_paper_trading_decimals_follow_the_price_and_the_quote_asset(price, quote, expected):
    from core.precision import paper_defaults

    got = paper_defaults(price, quote)
    assert (got.qty, got.price, got.money) == expected


def test_the_binance_brokers_step_sizes_are_what_the_pages_use(db):
    from decimal import Decimal

    from core import precision

    assert precision.for_market(db, "XRPETH", "ETH", 0.00141).source == "paper"
    precision.publish(db, "XRPETH", Decimal("1.00000000"), Decimal("0.00000001"), "ETH", 1)
    assert precision.for_market(db, "XRPETH", "ETH", 0.00141) == precision.Precision(0, 8, 6, "binance")


def test_pages_write_quantities_prices_and_money_with_the_markets_decimals(operator, db, settings):
    from core import brokers

    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    at = now_ms() - 120_000
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 95000, 95000, 95000, 95000, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, at - at % 60_000, at - at % 60_000 + 59_999])
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, 'BUY', 'long', 'flat', 'strategy', ?)", [SYMBOL, at, at]).lastrowid
    broker.submit(decision_id, "BUY", at)
    broker.fill_pending(95_000.0, at)
    qty = 10_000 / 95_000 * 0.999  # the paper fill: all the cash less the fee, at the next open
    brokers.save_position(db, broker.position(), at)  # as the worker's heartbeat check does
    summary = operator.get("/dashboard/summary").get_data(as_text=True)
    assert f"long {qty:,.8f} <small>BTC</small>" in summary  # 8 decimals for BTC at 95,000 USDT
    assert "entry 95,000.00" in summary and ">95,000.00<" in summary
    assert "9,990.00" in summary  # position value at 95,000: all the cash less the 0.1 % fee, in cents
    assert not re.search(r"\d[eE][+-]\d", summary)
    activity = operator.get("/dashboard/activity").get_data(as_text=True)
    assert f'<td class="num">{qty:,.8f}</td><td class="num">95,000.00</td>' in activity
    trades = operator.get("/trades").get_data(as_text=True)
    assert f'<td class="num" data-label="qty BTC">{qty:,.8f}</td>' in trades and "fees USDT" in trades


def test_the_money_text_follows_the_strategys_size(operator, data_dir):
    (data_dir / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\nSIZE 50%\n")
    page = operator.get("/").get_data(as_text=True)
    assert "Each BUY spends 50 % of the\n  equity (<code>SIZE 50%</code>)" in page and "all the cash" not in page
    (data_dir / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\n")
    assert "Each BUY spends all the cash" in operator.get("/").get_data(as_text=True)


def test_a_binance_broker_publishes_the_exchanges_step_sizes_when_it_reads_them(db):
    from core import precision
    from tests.exchange.standin import start_standin
    from tests.test_binance_brokers import broker_for, place

    exchange = start_standin(speed=1)
    try:
        place(broker_for(exchange, db), db, "BUY")  # the first order reads exchangeInfo
    finally:
        exchange.close()
    # the stand-in's XRPETH: LOT_SIZE stepSize 1, PRICE_FILTER tickSize 0.00000001, as Binance's own
    assert precision.for_market(db, "XRPETH", "ETH", 0.00141) == precision.Precision(0, 8, 6, "binance")


# -- error pages, webhook hints, chart levels, the CSV export ------------------------------------------

def test_an_unknown_page_is_a_404_in_the_apps_layout_for_everyone(client, operator):
    for browser in (client, operator):
        answer = browser.get("/no/such/page")
        page = answer.get_data(as_text=True)
        assert answer.status_code == 404 and answer.content_type.startswith("text/html")
        assert "404 Not Found · Omniwise</title>" in page and "This page does not exist" in page
        assert 'class="brand"' in page and "Back to the dashboard" in page
    assert "<nav" in operator.get("/no/such/page").get_data(as_text=True)  # the operator keeps the navigation
    answer = operator.post("/alerts/999/acknowledge", data={"csrf_token": operator.csrf_token})
    assert answer.status_code == 404 and "There is no alert 999." in answer.get_data(as_text=True)
    assert operator.get("/api/v1/nothing").json == {"error": "Not Found: The requested URL was not found on the "
                                                             "server. If you entered the URL manually please check "
                                                             "your spelling and try again."}


def test_a_failing_page_is_a_500_in_the_layout_without_the_exceptions_text(app, operator, monkeypatch):
    from core import dashboard

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail that must not be shown")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    monkeypatch.setattr(dashboard, "recent_activity", broken)
    answer = operator.get("/")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 500 and "Something went wrong" in page and "<nav" in page
    assert "internal detail" not in page and "The log has the details" in page


@pytest.mark.parametrize("body, content_type, words", [
    (b"hello", "text/plain", ['the body is the word "hello", which is not a signal',
                              "send one of the words " + ", ".join(intake.SIGNAL_WORDS)]),
    (b"buy", "application/x-www-form-urlencoded", ['the form body is the bare word "buy"',
                                                   "Content-Type: text/plain"]),
])
def test_the_webhook_says_which_words_it_takes_and_how_to_send_a_bare_word(app, client, body, content_type, words):
    token = app.extensions["omniwise.webhook"].token
    answer = client.post(f"/api/v1/external-signal/{token}", data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 400
    for part in words:
        assert part in answer.json["error"], answer.json
    ok = client.post(f"/api/v1/external-signal/{token}", data=b"buy", headers={"Content-Type": "text/plain"})
    assert ok.status_code == 200


def test_the_chart_draws_the_open_trades_entry_stop_and_take_profit(operator, db, data_dir):
    from core import brokers, open_trade

    (data_dir / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\nSTOP LOSS 2%\nTAKE PROFIT 5%\n")
    at = now_ms()
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 101, 101, 101, 101, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, at - at % 60_000, at - at % 60_000 + 59_999])
        open_trade.save(db, SYMBOL, open_trade.OpenTrade(100.0, {}, 100.0), at)
    brokers.save_position(db, brokers.Position("long", 1.0, 100.0), at)
    data = operator.get("/api/v1/chart").json
    assert data["levels"] == [{"name": "entry", "price": 100.0}, {"name": "stop loss", "price": 98.0},
                              {"name": "take profit", "price": 105.0}]
    assert data["price_decimals"] == 2  # as the tiles write a price of 101 USDT
    with db.conn:
        open_trade.save(db, SYMBOL, open_trade.OpenTrade(), at)
    brokers.save_position(db, brokers.Position("flat"), at)
    assert operator.get("/api/v1/chart").json["levels"] == []


def test_trades_export_as_csv_with_every_digit_and_utc_times(operator, db, settings):
    import csv
    import io

    from core import brokers

    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    start = 1_796_000_000_000  # 2026-11-30 00:53:20 UTC
    for side, price, at in (("BUY", 100.0, start), ("SELL", 110.0, start + 60_000), ("BUY", 1e-7, start + 120_000)):
        with db.conn:
            decision_id = db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
                "created_at_ms) VALUES (?, ?, ?, 'long', 'flat', 'strategy', ?)", [SYMBOL, at, side, at]).lastrowid
        broker.submit(decision_id, side, at)
        broker.fill_pending(price, at)
    answer = operator.get("/trades.csv")
    assert answer.content_type == "text/csv; charset=utf-8"
    assert 'attachment; filename="omniwise-BTCUSDT-trades.csv"' == answer.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["entry_time_utc"] for r in rows] == ["2026-11-30T00:53:20.000Z", "2026-11-30T00:55:20.000Z"]
    first = rows[0]
    qty = 10_000 / 100 * 0.999  # all the cash less the fee
    pnl = qty * 110 * 0.999 - 10_000
    assert float(first["qty"]) == pytest.approx(qty, rel=1e-15) and float(first["pnl"]) == pytest.approx(pnl, rel=1e-12)
    assert (first["exit_time_utc"], first["exit_reason"], first["side"]) == ("2026-11-30T00:54:20.000Z", "rule", "long")
    second = rows[1]
    assert second["entry_price"] == "0.0000001" and second["exit_price"] == "" and second["pnl"] == ""
    assert not any("e" in value.lower() for row in rows for key, value in row.items()
                   if key not in ("side", "exit_reason", "entry_time_utc", "exit_time_utc"))


# -- alerts -------------------------------------------------------------------------------------------

def paper_fill(db, broker, side: str, price: float, at_ms: int, reason: str = "strategy") -> None:
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [SYMBOL, at_ms, side, "long" if side == "BUY" else "flat",
                                             "flat" if side == "BUY" else "long", reason, at_ms]).lastrowid
    broker.submit(decision_id, side, at_ms)
    broker.fill_pending(price, at_ms)


@pytest.mark.parametrize("sender_follows", [True, False], ids=["sender sends SELL", "sender stays BUY"])
def test_a_stop_while_the_signal_says_buy_gets_a_grace_not_a_failure_recovered_pair(db, settings, sender_follows):
    from core import brokers
    from core.health import alerts

    hb = heartbeat.HeartbeatSettings(ttl_s=600, grace_s=90, repeat_s=1800)
    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    t0 = 1_800_000_000_000
    receive(db, "BUY", t0)
    paper_fill(db, broker, "BUY", 100.0, t0 + 60 * S)
    assert heartbeat.check_position(db, broker, SYMBOL, t0 + 61 * S, hb).state == heartbeat.OK
    exit_ms = t0 + 300 * S
    paper_fill(db, broker, "SELL", 98.0, exit_ms, reason="stop_loss")  # STOP LOSS 2%; the signal still says BUY
    verdict = heartbeat.check_position(db, broker, SYMBOL, exit_ms + 1 * S, hb)
    assert verdict.in_grace and verdict.pending_until_ms == exit_ms + 90 * S
    assert heartbeat.state_of(db, "position")["state"] == heartbeat.OK  # shown as pending, not yet a failure
    if sender_follows:  # TradingView's strategy took the same stop: its SELL arrives seconds later
        receive(db, "SELL", exit_ms + 4 * S)
        assert heartbeat.check_position(db, broker, SYMBOL, exit_ms + 5 * S, hb).state == heartbeat.OK
        heartbeat.check_position(db, broker, SYMBOL, exit_ms + 200 * S, hb)
        assert [a["message"] for a in alerts.recent(db)] == []
    else:
        assert heartbeat.is_recheck_due(db, exit_ms + 90 * S)
        heartbeat.check_position(db, broker, SYMBOL, exit_ms + 90 * S, hb)
        assert [a["message"] for a in alerts.recent(db)] == [
            "HEARTBEAT FAILURE: signal is BUY but no long position (position is flat): exited by stop loss at 98 "
            "(2027-01-15 08:05 UTC)"]


def short_fill(db, broker, side: str, price: float, at_ms: int, reason: str = "strategy") -> None:
    """A SELL opens a short, a BUY buys it back."""
    target, before = ("short", "flat") if side == "SELL" else ("flat", "short")
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [SYMBOL, at_ms, "SHORT" if side == "SELL" else "BUY", target, before,
                                             reason, at_ms]).lastrowid
        broker.submit(decision_id, side, at_ms, target=target)
    broker.fill_pending(price, at_ms)


def test_a_shorts_stop_while_the_signal_says_short_gets_the_same_grace(db, settings):
    from core import brokers
    from core.health import alerts

    hb = heartbeat.HeartbeatSettings(ttl_s=600, grace_s=90, repeat_s=1800)
    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    t0 = 1_800_000_000_000
    receive(db, "SHORT", t0)
    short_fill(db, broker, "SELL", 100.0, t0 + 60 * S)
    assert broker.position().side == "short"
    assert heartbeat.check_position(db, broker, SYMBOL, t0 + 61 * S, hb).state == heartbeat.OK
    exit_ms = t0 + 300 * S
    short_fill(db, broker, "BUY", 102.0, exit_ms, reason="stop_loss")  # STOP LOSS 2% above; the signal says SHORT
    assert broker.position().side == "flat"
    verdict = heartbeat.check_position(db, broker, SYMBOL, exit_ms + 1 * S, hb)
    assert verdict.in_grace and verdict.pending_until_ms == exit_ms + 90 * S
    receive(db, "FLAT", exit_ms + 4 * S)  # the sender took the same stop
    assert heartbeat.check_position(db, broker, SYMBOL, exit_ms + 5 * S, hb).state == heartbeat.OK
    heartbeat.check_position(db, broker, SYMBOL, exit_ms + 200 * S, hb)
    assert [a["message"] for a in alerts.recent(db)] == []


def test_in_a_replay_a_stop_gets_its_grace_from_when_the_worker_decided_it_not_from_the_files_time(db, settings):
    from core import brokers

    hb = heartbeat.HeartbeatSettings(ttl_s=600, grace_s=90, repeat_s=1800)
    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    file_day = 1_570_752_000_000  # the replayed candles' time: 2019-10-11
    now = 1_800_000_000_000  # the worker's and the webhook's clock
    receive(db, "BUY", now)
    paper_fill(db, broker, "BUY", 100.0, file_day)
    with db.conn:
        decision_id = db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, created_at_ms) "
            "VALUES (?, ?, 'SELL', 'flat', 'long', 'stop_loss', ?)", [SYMBOL, file_day + 60_000, now + 30 * S]).lastrowid
        broker.submit(decision_id, "SELL", file_day + 60_000)
    broker.fill_pending(98.0, file_day + 60_000)  # filled at the file's time
    verdict = heartbeat.check_position(db, broker, SYMBOL, now + 31 * S, hb)
    assert verdict.in_grace and verdict.pending_until_ms == now + 120 * S


def test_an_open_short_is_worth_what_buying_it_back_would_leave(operator, db, settings):
    from core import brokers

    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)  # 10,000, 0.1 % a side
    day = 1_570_752_000_000
    short_fill(db, broker, "SELL", 100.0, day)  # 100 short at 100: 9,990 received after the fee
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 90, 90, 90, 90, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, day + 60_000, day + 120_000 - 1])
    # DESIGN: notional + q (E (1 - f) - C (1 + f)) = 10,000 + 100 (99.9 - 90.09)
    marked = 10_000 + 100 * (100 * 0.999 - 90 * 1.001)
    assert operator.get("/api/v1/status").json["account"]["equity"] == pytest.approx(marked, abs=1e-9)
    assert operator.get("/api/v1/equity").json["points"][-1]["value"] == pytest.approx(marked, abs=1e-9)
    short_fill(db, broker, "BUY", 90.0, day + 120_000)  # bought back at that close: the same money, now realised
    money = operator.get("/api/v1/status").json["account"]
    assert money["equity"] == pytest.approx(marked, abs=1e-9) and money["position_qty"] == pytest.approx(0, abs=1e-9)


def queue_alerts(db) -> None:
    from core.health import alerts

    t = 1_800_000_000_000
    with db.conn:
        for i, (subject, state) in enumerate((("position", "mismatch"), ("position", "ok"), ("risk", "trailing_stop"),
                                              ("position", "mismatch"))):
            alerts.queue(db, subject, state, f"alert {i} in state {state}", t + i * S, is_failure=state != "ok")
        db.execute("UPDATE alerts SET delivered_at_ms = ? WHERE message = 'alert 0 in state mismatch'", [t + 5 * S])


def test_alerts_are_filtered_by_state_and_states_are_words(operator, db):
    queue_alerts(db)
    page = operator.get("/alerts?state=trailing_stop").get_data(as_text=True)
    assert "alert 2 in state trailing_stop" in page and "alert 0" not in page and "alert 1" not in page
    assert '<td data-label="state">trailing stop</td>' in page and ">trailing_stop</td>" not in page
    assert '<option value="trailing_stop" selected>trailing stop</option>' in page
    page = operator.get("/alerts?state=mismatch").get_data(as_text=True)
    assert "alert 0 in" in page and "alert 3 in" in page and "alert 1 in" not in page
    assert "showing 2 mismatch alerts" in page
    everything = operator.get("/alerts").get_data(as_text=True)
    assert all(f"alert {i} in" in everything for i in range(4))


def test_the_status_api_says_log_only_for_alerts_that_went_only_to_the_log(operator, db):
    queue_alerts(db)
    deliveries = {a["message"]: a["delivery"] for a in operator.get("/api/v1/status").json["alerts"]}
    assert deliveries["alert 0 in state mismatch"] == "log only"  # delivered, and no OMNIWISE_ALERT_URLS
    assert deliveries["alert 3 in state mismatch"] == "queued"


# -- editor and versions ------------------------------------------------------------------------------

def test_each_versions_diff_is_what_its_save_changed_and_one_is_current(operator, settings):
    from core import strategies

    texts = ["IF MA4 > MA9 THEN BUY\n", "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n", "IF MA4 > MA9 THEN BUY\n"]
    for text in texts:
        operator.post("/admin/algo", data={"strategy": text, "csrf_token": operator.csrf_token})
    page = operator.get("/admin/algo/history").get_data(as_text=True)
    assert page.count(">current</span>") == 1  # the first and the third save hold the same text
    entries = page.split('<li class="version"')[1:]
    assert '<span class="del">-IF MA4 &lt; MA9 THEN SELL</span>' in entries[0] and "current" in entries[0]
    assert '<span class="add">+IF MA4 &lt; MA9 THEN SELL</span>' in entries[1] and ">current<" not in entries[1]
    assert f"/admin/algo/history/{strategies.version_of(texts[1])}/restore" in entries[1]


def test_restore_asks_first_with_the_diff_against_what_runs_and_the_position(operator, settings, db):
    from core import brokers, store, strategies

    operator.post("/admin/algo", data={"strategy": "IF CLOSE > OPEN THEN BUY\n", "csrf_token": operator.csrf_token})
    operator.post("/admin/algo", data={"strategy": "IF CLOSE < OPEN THEN BUY\n", "csrf_token": operator.csrf_token})
    first = strategies.version_of("IF CLOSE > OPEN THEN BUY\n")
    store.set_meta(db, strategies.LOADED_KEY, strategies.version_of("IF CLOSE < OPEN THEN BUY\n"), now_ms())
    brokers.save_position(db, brokers.Position("long", 0.5, 95_000.0), now_ms())
    page = operator.get(f"/admin/algo/history/{first}/restore").get_data(as_text=True)
    assert '<span class="del">-IF CLOSE &lt; OPEN THEN BUY</span>' in page
    assert '<span class="add">+IF CLOSE &gt; OPEN THEN BUY</span>' in page
    assert "Position now:</strong>\n    long 0.50000000 BTC, entry 95,000.00" in page
    assert settings.strategy_path.read_text() == "IF CLOSE < OPEN THEN BUY\n"  # asking changed nothing
    assert f'action="/admin/algo/history/{first}/restore"' in page and 'method="post"' in page
    assert operator.get("/admin/algo/history/ffffffffffff/restore").status_code == 404


def test_the_editor_marks_a_text_that_is_not_the_saved_one(operator):
    page = operator.get("/admin/algo").get_data(as_text=True)
    assert 'data-saved="yes"' in page and '<p id="unsaved" class="warn" role="status" hidden>' in page
    refused = operator.post("/admin/algo", data={"strategy": "IF MA4 > MA9 BUY\n", "csrf_token": operator.csrf_token})
    page = refused.get_data(as_text=True)
    assert 'data-saved="no"' in page and '<p id="unsaved" class="warn" role="status" >' in page


def test_the_preview_chart_has_its_axes_labelled(operator, db):
    start = 1_796_000_000_000 - 1_796_000_000_000 % 60_000
    with db.conn:
        for i in range(60):
            close = 100.0 + (i % 7)
            db.execute("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, 1, ?, 1, 1, 0.5, 0.5)",
                       [SYMBOL, start + i * 60_000, close, close + 1, close - 1, close, start + i * 60_000 + 59_999])
    fragment = operator.post("/admin/algo/validate", data={"strategy": "IF MA4 > MA9 THEN BUY\n",
                                                           "csrf_token": operator.csrf_token}).get_data(as_text=True)
    axis_y = fragment.split('<div class="axis-y"')[1].split("</div>")[0]
    assert "<span>106.00</span><span>100.00</span>" in axis_y  # the closes' highest and lowest
    axis_x = fragment.split('<div class="axis-x"')[1].split("</div>")[0]
    assert "2026-11-30 00:53:00 UTC" in axis_x and "2026-11-30 01:52:00 UTC" in axis_x


# -- the first hour -----------------------------------------------------------------------------------

def test_init_with_the_port_prints_a_webhook_url_that_works_on_this_machine(data_dir, settings):
    from click.testing import CliRunner

    from omniwise import create_app, init_command

    env = {"OMNIWISE_DATA_DIR": str(data_dir)}
    first = CliRunner().invoke(init_command, ["--port", "5123"], env=env)
    assert first.exit_code == 0, first.output
    line = next(text for text in first.output.splitlines() if text.startswith("From this machine: "))
    url = line.split()[-1]
    assert url.startswith("http://127.0.0.1:5123/api/v1/external-signal/") and "https://YOUR-HOST" in first.output
    client = create_app(settings).test_client()  # the URL's path is the webhook's, with the token the app uses
    answer = client.post(url.removeprefix("http://127.0.0.1:5123"), data=b"buy", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 200, answer.json
    again = CliRunner().invoke(init_command, ["--port", "5123"], env=env)  # not a terminal: a log keeps no token
    assert "http://127.0.0.1:5123/api/v1/external-signal/TOKEN" in again.output


def test_the_replay_banner_says_the_day_the_speed_the_progress_and_finished(operator, db):
    from core import replay_status
    from core.health import liveness

    liveness.beat(db, now_ms())
    replay_status.started(db, "/data/XRPETH-aggTrades-2019-10-11.csv", 60, now_ms())
    day = 1_570_752_000_000  # 2019-10-11 00:00 UTC
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 1, 1, 1, 1, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, day + 359 * 60_000, day + 360 * 60_000 - 1])  # the minute 05:59: a quarter of the day
    banner = operator.get("/banner").get_data(as_text=True)
    assert "<strong>Replaying</strong>\n      2019-10-11 at 60× · 25 % · candles up to 2019-10-11 05:59:00 UTC." in banner
    assert 'data-title=""' in banner  # information, not a warning in the tab title
    replay_status.finished(db, now_ms())
    banner = operator.get("/").get_data(as_text=True)
    assert "<strong>Replay finished.</strong>" in banner and " %" not in banner.split('id="replay-banner"')[1][:200]
    replay_status.live(db, now_ms())
    assert "replay-banner" not in operator.get("/banner").get_data(as_text=True)


@pytest.mark.parametrize("name, period, span_days", [("XRPETH-aggTrades-2019-10-11.csv", "2019-10-11", 1),
                                                     ("BTCUSDT-1m-2024-02.csv", "2024-02", 29),
                                                     ("my-own-file.csv", None, None)])
def test_a_replay_files_period_comes_from_binances_archive_name(name, period, span_days):
    from core.replay_status import period_of

    got, span = period_of(name)
    assert got == period and (span is None if span_days is None else (span[1] - span[0]) == span_days * 86_400_000)


def test_in_a_replay_todays_pnl_is_the_candles_day(operator, db, settings):
    from core import brokers

    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    day = 1_570_752_000_000  # 2019-10-11, the file's day
    paper_fill(db, broker, "BUY", 100.0, day - 3_600_000)  # the day before
    paper_fill(db, broker, "SELL", 110.0, day - 1_800_000)
    paper_fill(db, broker, "BUY", 100.0, day + 60_000)
    paper_fill(db, broker, "SELL", 90.0, day + 120_000)
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 90, 90, 90, 90, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, day + 120_000, day + 180_000 - 1])
    money = operator.get("/api/v1/status").json["account"]
    cash_after_first = 10_000 / 100 * 0.999 * 110 * 0.999
    second = cash_after_first / 100 * 0.999 * 90 * 0.999 - cash_after_first
    assert money["realized_pnl_today"] == pytest.approx(second)  # 2019-10-11's, not the wall clock's (none)


def test_a_sell_while_already_flat_is_muted_in_the_decisions(operator, db):
    with db.conn:
        for minute, (action, before, target) in enumerate((("SELL", "flat", "flat"), ("BUY", "flat", "long"))):
            db.execute("INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
                       "created_at_ms) VALUES (?, ?, ?, ?, ?, 'strategy', ?)",
                       [SYMBOL, minute * 60_000, action, target, before, minute * 60_000])
    rows = operator.get("/dashboard/activity").get_data(as_text=True).split('id="decisions-scroll"')[1].split("</tbody>")[0]
    buy, sell = rows.split("<tr")[2:4]  # newest first
    assert 'class="action-buy"' in buy and "→ long" in buy
    assert 'class="no-change"' in sell and 'class="action-hold"' in sell and "already is flat" in sell


def visible_text(html: str) -> str:
    """A page's text as read, without its tags (a time on hover, in a title attribute, is not read)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def a_day_of_everything(db, settings, now: int) -> None:
    """A replay of 2019-10-11 with a round trip in it, and a signal, an alert, a pause and a pending heartbeat of
    this machine's clock (`now`)."""
    from core import brokers, controls, replay_status
    from core.health import alerts, liveness

    liveness.beat(db, now)
    replay_status.started(db, "/data/XRPETH-aggTrades-2019-10-11.csv", 60, now)
    day = 1_570_752_000_000  # 2019-10-11 00:00 UTC
    broker = brokers.PaperBroker(db, SYMBOL, settings.paper_balance, settings.fee_rate)
    paper_fill(db, broker, "BUY", 100.0, day + 60_000)
    paper_fill(db, broker, "SELL", 110.0, day + 120_000)
    with db.conn:
        db.execute("INSERT INTO candles VALUES (?, ?, 90, 90, 90, 90, 1, ?, 1, 1, 0.5, 0.5)",
                   [SYMBOL, day + 120_000, day + 180_000 - 1])
    receive(db, "BUY", now - 36 * S)
    heartbeat.record(db, "position", heartbeat.Verdict(heartbeat.MISMATCH, "signal is BUY but no long position",
                                                       in_grace=True, pending_until_ms=now + 74 * S), now - 36 * S)
    alerts.queue(db, "worker", "error", "a test alert", now - 5 * 60 * S, is_failure=True)
    controls.pause(db, now - 3 * 3600 * S)


def test_in_a_replay_a_page_writes_its_times_in_the_files_time_and_the_clocks_as_ages(operator, db, settings):
    now = now_ms()
    a_day_of_everything(db, settings, now)
    for path in ("/", "/dashboard/summary", "/dashboard/activity", "/trades", "/alerts"):
        text = visible_text(operator.get(path).get_data(as_text=True))
        times = re.findall(r"(?:\d{4}-)?(?:\d\d-\d\d )?\d\d:\d\d(?::\d\d)?(?: UTC)?", text)
        assert times and all(t.startswith("2019-10-11 ") for t in times), (path, times)
    summary = visible_text(operator.get("/dashboard/summary").get_data(as_text=True))
    assert re.search(r"pending · ends in 7[34] s", summary) and "Paused since 3 h ago" in summary
    activity = visible_text(operator.get("/dashboard/activity").get_data(as_text=True))
    assert "received signal" in activity and re.search(r"3[67] s ago BUY", activity) and "5 min ago" in activity
    assert "2019-10-11 00:02 SELL" in activity  # the order, in the file's time
    page = operator.get("/").get_data(as_text=True)
    assert re.search(r'id="freshness"[^>]* data-ages>data read <time [^>]*>[01] s ago</time>', page)
    hover = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime((now - 36 * S) / 1000))
    assert f'title="{hover} (this machine\'s clock)"' in page  # the time itself, on hover


def test_outside_a_replay_the_clocks_times_are_written_as_times(operator, db, settings):
    from core import replay_status

    now = now_ms()
    a_day_of_everything(db, settings, now)
    replay_status.live(db, now)  # the same rows, a live feed: one clock, times written out
    summary = visible_text(operator.get("/dashboard/summary").get_data(as_text=True))
    until = time.strftime("%H:%M:%S UTC", time.gmtime((now + 74 * S) / 1000))
    assert f"pending until {until}" in summary and "Paused since 20" in summary
    activity = visible_text(operator.get("/dashboard/activity").get_data(as_text=True))
    assert "received (UTC)" in activity and " ago" not in activity
    assert "data-ages" not in operator.get("/").get_data(as_text=True)

"""The cockpit in a real browser: money, pause/resume/flatten, acknowledge, the test notification, phone widths.

Its own web app and worker (a replay of the real XRPETH day at 600x, grace 0, alerts to a local Apprise
receiver). Every page is also screenshotted at desktop and phone width into the --output folder.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import AGG_TRADES, PASSWORD
from tests.conftest import ROOT
from tests.processes import TOKEN, AlertSink, Server, query, start_worker, stop_worker, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods")

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
PAGES = ["/", "/trades", "/admin/algo", "/admin/algo/history", "/admin/webhook", "/alerts", "/admin/flatten", "/login"]


@pytest.fixture(scope="module")
def cockpit(tmp_path_factory):
    """Web app + worker sharing a data folder, alerts delivered to a local receiver."""
    data_dir = tmp_path_factory.mktemp("cockpit") / "data"
    data_dir.mkdir()
    shutil.copy(ROOT / "data" / "strategy.txt", data_dir / "strategy.txt")
    sink = AlertSink()
    env = {"OMNIWISE_ADMIN_PASSWORD": PASSWORD, "OMNIWISE_ALERT_URLS": sink.url, "OMNIWISE_PAPER_BALANCE": "10"}
    server = Server(data_dir, **env).start()  # no OMNIWISE_SYMBOL: the bundled replay file's name says XRPETH
    try:
        worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, paper_balance=10,
                              webhook_token=TOKEN, heartbeat_grace=0, heartbeat_interval=2, alert_urls=sink.url)
        try:
            wait_until(lambda: query(data_dir, "SELECT count(*) FROM orders WHERE status = 'filled'")[0][0] >= 2,
                       worker, what="the first round trip")
            server.sink, server.worker = sink, worker
            yield server
        finally:
            stop_worker(worker)
    finally:
        server.kill(signal.SIGTERM)
        sink.close()


@pytest.fixture
def op(page, cockpit):
    page.set_default_timeout(20_000)
    page.goto(cockpit.url + "/login")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(cockpit.url + "/")
    return page


def test_money_tile_and_trades_page_with_the_equity_curve(op, cockpit):
    money = op.locator("#money-tile")
    expect(money).to_contain_text("Money, ETH")  # the quote asset of XRPETH, named after the replay file
    expect(money).to_contain_text("Equity")
    expect(money).to_contain_text("started with 10")
    expect(op.locator("header")).to_contain_text("XRPETH")
    op.get_by_role("link", name="Trades").first.click()
    expect(op.locator("#equity")).to_have_attribute("data-points", re.compile(r"^[1-9][0-9]*$"))
    expect(op.locator("#equity canvas").first).to_be_visible()
    rows = op.locator("#trades tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 1
    expect(op.locator("#trades thead")).to_contain_text("exit reason")
    expect(op.locator("#trades tbody")).to_contain_text("rule")


def test_pause_then_flatten_closes_the_position_within_seconds_and_resume(op, cockpit):
    op.get_by_role("button", name="Pause").click()
    expect(op.get_by_role("status").first).to_contain_text("Paused")
    expect(op.locator("#trading-tile")).to_contain_text("Paused since")
    wait_until(lambda: query(cockpit.data_dir, "SELECT count(*) FROM orders WHERE status = 'pending'") == [(0,)],
               cockpit.worker, what="no order waiting")
    op.get_by_role("link", name="Flatten…").click()
    expect(op.get_by_role("heading", name="Close the position now?")).to_be_visible()
    requested = time.monotonic()
    op.get_by_role("button", name="Yes, flatten now").click()
    expect(op.get_by_role("status").first).to_contain_text("Flatten requested")
    done = wait_until(lambda: query(cockpit.data_dir, "SELECT result FROM trading_controls WHERE action = 'flatten' "
                                                      "AND done_at_ms IS NOT NULL"), cockpit.worker, timeout_s=10,
                      what="the worker to carry out the flatten")
    took_s = time.monotonic() - requested
    expect(op.locator("#position-tile")).to_contain_text("flat", timeout=10_000)
    expect(op.locator("#last-flatten")).to_contain_text("Flattened ")
    assert took_s < 5, took_s  # the worker checks every second; the rest is the page and a loaded machine
    ((worker_ms,),) = query(cockpit.data_dir, "SELECT done_at_ms - requested_at_ms FROM trading_controls "
                                              "WHERE action = 'flatten'")
    print(f"flatten: request to done in the worker {worker_ms} ms, click to result {took_s:.2f} s")
    assert worker_ms < 3000, worker_ms  # every second, plus a replay item's slack on a loaded machine
    wait_until(lambda: any("FLATTEN by the operator" in m for m in cockpit.sink.messages()), timeout_s=15,
               what="the flatten's alert")
    if done[0][0].startswith("SELL"):  # it closed a position: a manual exit on /trades
        op.goto(cockpit.url + "/trades")
        expect(op.locator("#trades tbody")).to_contain_text("manual")
    op.goto(cockpit.url + "/")
    op.get_by_role("button", name="Resume").click()
    expect(op.locator("#trading-tile")).to_contain_text("on")
    assert query(cockpit.data_dir, "SELECT action FROM trading_controls ORDER BY id") == [
        ("pause",), ("flatten",), ("resume",)]
    messages = cockpit.sink.messages()
    assert any(m.startswith("TRADING PAUSED") for m in messages)
    wait_until(lambda: any(m.startswith("TRADING RESUMED") for m in cockpit.sink.messages()), timeout_s=15,
               what="the resume's alert")


def test_acknowledge_an_alert_and_send_a_test_notification(op, cockpit):
    # Paused and flat, a BUY signal is a mismatch that lasts (grace 0): its alert can be acknowledged.
    op.get_by_role("button", name="Pause").click()
    op.get_by_role("link", name="Flatten…").click()
    op.get_by_role("button", name="Yes, flatten now").click()
    expect(op.locator("#position-tile")).to_contain_text("flat", timeout=10_000)
    cockpit.post_signal("BUY", int(time.time() * 1000), source="BrowserCheck")
    wait_until(lambda: query(cockpit.data_dir, "SELECT state FROM heartbeat WHERE subject = 'position'")
               == [("mismatch",)], cockpit.worker, timeout_s=20, what="a lasting mismatch")
    op.get_by_role("link", name="Alerts", exact=True).click()
    row = op.locator("table.alerts tbody tr").filter(has=op.get_by_role("button", name="Acknowledge")).first
    expect(row).to_contain_text("signal is BUY but no long position")
    alert_id = row.get_attribute("id")
    row.get_by_role("button", name="Acknowledge").click()
    expect(op.get_by_role("status").first).to_contain_text("Acknowledged")
    expect(op.locator(f"#{alert_id}")).to_contain_text("seen")
    op.get_by_role("button", name="Send a test notification").click()
    expect(op.get_by_role("status").first).to_have_text("The test notification was delivered to every alert URL.")
    assert "TEST: a test notification from Omniwise; alerts reach you this way" in cockpit.sink.messages()
    # (the flatten's own alert may come after it: the worker tells of the flatten when it acts on it)
    test_row = op.locator("table.alerts tbody tr").filter(has_text="TEST: a test notification").first
    expect(test_row).to_contain_text("sent")
    op.goto(cockpit.url + "/")
    op.get_by_role("button", name="Resume").click()
    expect(op.locator("#trading-tile")).to_contain_text("on")


def test_not_saved_clears_once_the_text_is_valid(op, cockpit):
    op.goto(cockpit.url + "/admin/algo")
    op.locator("#strategy").fill("IF MA4 > MA9 BUY\n")
    op.get_by_role("button", name="Save").click()
    expect(op.locator("#not-saved")).to_contain_text("Not saved")
    op.locator("#strategy").fill("IF MA4 > MA9 THEN BUY\n")
    expect(op.locator("#validation")).to_contain_text("Valid: 1 rule,")
    expect(op.locator("#not-saved")).to_have_count(0)


@pytest.mark.parametrize("path", PAGES)
def test_no_page_is_wider_than_a_phone(op, cockpit, path):
    op.set_viewport_size(PHONE)
    op.goto(cockpit.url + path)
    op.wait_for_load_state("networkidle")
    if path == "/admin/algo":  # the validation fragment with the preview table, as typing brings it
        op.locator("#strategy").press("End")
        op.locator("#strategy").press_sequentially(" ")
        expect(op.locator("#preview")).to_be_visible(timeout=20_000)
    width = op.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{path} is {width} px wide"


def test_wide_tables_scroll_inside_their_card_and_keep_the_scroll_across_refreshes(op, cockpit):
    op.set_viewport_size(PHONE)
    op.goto(cockpit.url + "/")
    box = op.locator("#decisions-scroll")
    expect(box).to_be_visible()
    assert op.evaluate("document.getElementById('decisions-scroll').scrollWidth > "
                       "document.getElementById('decisions-scroll').clientWidth")  # wider than the phone: it scrolls
    op.evaluate("document.getElementById('decisions-scroll').scrollLeft = 80")
    op.evaluate("window.refreshed = 0; document.addEventListener('htmx:afterSettle', (e) => "
                "{ if (e.detail.target.id === 'activity') window.refreshed++; })")
    wait_until(lambda: op.evaluate("window.refreshed") >= 1, timeout_s=15, what="the card to replace itself")
    assert op.evaluate("document.getElementById('decisions-scroll').scrollLeft") == 80


def test_screenshots_of_every_page_at_desktop_and_phone_width(op, cockpit, pytestconfig):
    folder = Path(pytestconfig.getoption("--output")) / "screens"
    folder.mkdir(parents=True, exist_ok=True)
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        op.set_viewport_size(size)
        for path in PAGES:
            op.goto(cockpit.url + path)
            op.wait_for_load_state("networkidle")
            name = path.strip("/").replace("/", "-") or "dashboard"
            op.screenshot(path=folder / f"{name}-{size_name}.png", full_page=True)
            op.screenshot(path=folder / f"{name}-{size_name}-first-screen.png")  # what one sees without scrolling
    assert len(list(folder.glob("*.png"))) >= 2 * len(PAGES)

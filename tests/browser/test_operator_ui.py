"""The operator UI in a real browser: login, live validation, save, restore, a dashboard that follows signals."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from core import strategies
from tests.browser.conftest import PASSWORD
from tests.processes import query

# pytest-playwright's own base_url fixture (unused here) trips a pytest deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods")

FIXED = "IF MA4 > MA9 THEN BUY\nIF RSI(14) < 30 THEN BUY\nIF MA4 < MA9 THEN SELL\n"


def test_login_refuses_a_wrong_password_and_opens_the_dashboard_with_the_right_one(page, live):
    page.goto(live.url + "/admin/algo")
    expect(page).to_have_url(live.url + "/login?next=/admin/algo")
    page.get_by_label("Password").fill("not it")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not the password.")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(live.url + "/admin/algo")  # back where the operator was going
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("#summary")).to_contain_text("Worker")
    expect(page.locator("#summary")).to_contain_text("XRPETH")


def test_a_broken_line_shows_its_line_and_column_within_a_second_and_fixing_it_clears_it(operator_page):
    page = operator_page
    page.get_by_role("link", name="Strategy").click()
    editor = page.locator("#strategy")
    editor.fill("IF MA4 > MA9 THEN BUY\n")
    editor.press("Control+End")
    editor.press_sequentially("IF RSI(14) < 30 BUY")  # typed as the operator would, on line 2
    validation = page.locator("#validation")
    expect(validation).to_contain_text("line 2, column 17: missing THEN before BUY", timeout=1000)
    expect(page.locator(".gutter span.bad")).to_have_text(["2"], timeout=1000)  # the line is marked
    editor.fill(FIXED)
    expect(validation).to_contain_text("Valid: 3 rules", timeout=1000)
    expect(validation).not_to_contain_text("line ")
    expect(page.locator(".gutter span.bad")).to_have_count(0)


def test_save_writes_the_file_and_the_worker_loads_it(operator_page, live):
    page = operator_page
    page.goto(live.url + "/admin/algo")
    page.locator("#strategy").fill("IF MA4 > MA9 BUY\n")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("Not saved")  # refused, with the reason beside it
    expect(page.locator("#validation")).to_contain_text("line 1, column 14: missing THEN before BUY")
    assert (live.data_dir / "strategy.txt").read_text() != "IF MA4 > MA9 BUY\n"

    page.locator("#strategy").fill(FIXED)
    page.get_by_role("button", name="Save").click()
    version = strategies.version_of(FIXED)
    expect(page.get_by_role("status").first).to_have_text(f"Saved version {version}: 3 rules.")
    assert (live.data_dir / "strategy.txt").read_text() == FIXED
    expect(page.locator("#loaded")).to_contain_text(f"The worker runs the saved version {version}", timeout=15_000)


def test_restoring_an_older_version_from_the_history(operator_page, live):
    page = operator_page
    path = live.data_dir / "strategy.txt"
    shipped = query(live.data_dir, "SELECT text FROM strategy_versions ORDER BY id LIMIT 1")
    original = shipped[0][0] if shipped else path.read_text()
    page.goto(live.url + "/admin/algo")
    page.locator("#strategy").fill("IF CLOSE > OPEN THEN BUY\n")
    page.get_by_role("button", name="Save").click()
    page.get_by_role("link", name="Versions").first.click()
    newest = page.locator("#v-" + strategies.version_of("IF CLOSE > OPEN THEN BUY\n"))
    newest.get_by_text("What this save changed").click()
    expect(newest.locator("pre.diff .add")).to_have_text(["+IF CLOSE > OPEN THEN BUY"])  # old -> new
    expect(page.locator(".tag.good", has_text="current")).to_have_count(1)
    entry = page.locator(f"#v-{strategies.version_of(original)}")
    entry.get_by_role("link", name="Restore…").click()
    expect(page.locator("#restore-confirm pre.diff .del")).to_have_text(["-IF CLOSE > OPEN THEN BUY"])
    expect(page.locator("#restore-position")).to_contain_text("Position now:")
    page.get_by_role("button", name=f"Yes, restore {strategies.version_of(original)}").click()
    expect(page.get_by_role("status").first).to_contain_text(f"Restored version {strategies.version_of(original)}")
    assert path.read_text() == original
    expect(page.locator("#strategy")).to_have_value(original)


def test_a_posted_signal_shows_on_the_dashboard_without_a_reload(operator_page, live):
    page = operator_page
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    live.post_signal("SELL", int(time.time() * 1000), source="BrowserCheck")
    expect(page.locator("#signal-tile")).to_contain_text("SELL", timeout=10_000)
    expect(page.locator("#signal-tile")).to_contain_text("from BrowserCheck")
    expect(page.locator("#activity")).to_contain_text("BrowserCheck", timeout=10_000)
    assert page.evaluate("window.loadedOnce") is True


def test_the_chart_draws_the_workers_candles_and_the_webhook_panel_offers_copies(operator_page, live):
    page = operator_page
    expect(page.locator("#chart canvas").first).to_be_visible()
    expect(page.locator("#chart")).to_have_attribute("data-candles", re.compile(r"^[1-9][0-9]*$"))
    expect(page.locator("#chart-legend")).to_contain_text("SMA(4)")
    page.get_by_role("link", name="Webhook").click()
    token = live.env["OMNIWISE_WEBHOOK_TOKEN"]
    expect(page.locator("#webhook-url")).to_have_value(f"{live.url}/api/v1/external-signal/{token}")
    expect(page.locator("textarea.message").first).to_have_value(
        '{"signal": "{{strategy.market_position}}", "timestamp": "{{timenow}}", "source": "TradingView", '
        '"symbol": "{{ticker}}"}')
    page.locator("button.copy").first.click()
    expect(page.locator("button.copy").first).to_have_text("Copied")

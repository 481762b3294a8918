"""The cockpit's trust signals in a real browser at desktop (1280 px) and phone (390 px) width: banners and the
tab title, heartbeat changes told to screen readers, the connection lost, focus kept across refreshes.

Its own web app without a worker process: the test writes the worker's beacon and the heartbeat into the
shared SQLite file, as the worker would, so each state is set exactly when the test needs it. The page's
clock is Playwright's (`page.clock`): it runs as a real one, and a test that waits for the next refresh moves
it on instead of waiting 5 s (`next_refresh`).
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pytest
from playwright.sync_api import expect

from core import store
from core.health import heartbeat, liveness
from tests.browser.conftest import PASSWORD
from tests.processes import Server, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods")

WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from tests.conftest import ROOT

    data_dir = tmp_path_factory.mktemp("trust") / "data"
    data_dir.mkdir()
    (data_dir / "strategy.txt").write_text((ROOT / "data" / "strategy.txt").read_text())
    server = Server(data_dir, OMNIWISE_ADMIN_PASSWORD=PASSWORD, OMNIWISE_SYMBOL="BTCUSDT").start()
    try:
        yield server
    finally:
        server.kill()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write(site, action) -> None:
    """Write to the site's database as the worker would."""
    db = store.connect(site.data_dir / "omniwise.db")
    try:
        action(db)
    finally:
        db.close()


def worker_alive(site, alive: bool = True) -> None:
    # A beacon 10 min ahead keeps the worker alive for this module; one 10 min ago says it is down.
    write(site, lambda db: liveness.beat(db, now_ms() + (600_000 if alive else -600_000)))


def heartbeat_is(site, state: str, reason: str) -> None:
    write(site, lambda db: heartbeat.record(db, "position", heartbeat.Verdict(state, reason), now_ms()))


REFRESH_MS = 5_000  # the tiles' and the banner's hx-trigger="every 5s"


def next_refresh(page) -> None:
    """Move the page's clock past its next refresh: the timers due fire now (the answers still take real time)."""
    page.clock.run_for(REFRESH_MS + 100)


@pytest.fixture(params=list(WIDTHS))
def op(page, site, request):
    page.clock.install()  # Date and the timers of every page loaded from now on, running as a real clock
    page.set_viewport_size(WIDTHS[request.param])
    page.set_default_timeout(20_000)
    page.goto(site.url + "/login")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(site.url + "/")
    page.width_name = request.param
    return page


def test_a_dead_worker_is_a_banner_and_in_the_tab_title_then_goes_away(op, site):
    worker_alive(site, False)
    for path in ("/", "/trades", "/alerts"):
        op.goto(site.url + path)
        expect(op.locator("#banner")).to_contain_text("Worker down.")
        expect(op).to_have_title(re.compile(r"^⚠ worker down · "))
    op.goto(site.url + "/")
    expect(op.locator("#heartbeat-tile")).to_have_class(re.compile("greyed"))
    worker_alive(site)
    next_refresh(op)
    expect(op.locator("#banner")).not_to_contain_text("Worker down")
    expect(op).not_to_have_title(re.compile("⚠"))


def test_a_heartbeat_change_is_a_banner_and_is_told_to_screen_readers(op, site):
    worker_alive(site)
    heartbeat_is(site, heartbeat.OK, "signal is SELL and position is flat")
    op.goto(site.url + "/")
    expect(op.locator("#heartbeat-tile .big")).to_have_text("ok")
    expect(op.locator("#announcer")).to_have_attribute("aria-live", "polite")
    heartbeat_is(site, heartbeat.MISMATCH, "signal is BUY but no long position (position is flat)")
    next_refresh(op)
    expect(op.locator("#heartbeat-tile .big")).to_have_text("mismatch")
    expect(op.locator("#announcer")).to_contain_text("Heartbeat mismatch: since")
    expect(op.locator("#banner-region")).to_have_attribute("aria-live", "assertive")
    expect(op.locator("#banner")).to_contain_text("Heartbeat mismatch since")
    expect(op).to_have_title(re.compile(r"^⚠ mismatch · Dashboard"))
    heartbeat_is(site, heartbeat.OK, "signal is BUY and position is long")
    next_refresh(op)
    expect(op.locator("#banner p")).to_have_count(0)
    expect(op.locator("#announcer")).to_contain_text("Heartbeat ok")


def test_lost_refreshes_say_connection_lost_with_the_last_update_within_ten_seconds(op, site):
    worker_alive(site)
    op.goto(site.url + "/")
    expect(op.locator("#freshness")).to_contain_text("updated ")
    # The page's clock stands still from here but for run_for; the test notes the page's time of each answer
    # (its listener runs on the same event as the page's own, so on the same Date.now()).
    op.evaluate("window.asked = 0; window.answered = 0; window.answeredAt = 0;"
                "document.addEventListener('htmx:beforeRequest', () => window.asked++);"
                "document.addEventListener('htmx:afterRequest', (e) => { window.answered++;"
                " if (e.detail.successful) window.answeredAt = Date.now(); });")
    op.clock.pause_at(datetime.fromtimestamp(op.evaluate("Date.now()") / 1000 + 1, tz=timezone.utc))
    next_refresh(op)
    wait_until(lambda: 0 < op.evaluate("window.asked") == op.evaluate("window.answered"), timeout_s=10,
               what="every refresh answered")
    answered_ms = op.evaluate("window.answeredAt")
    answered = time.strftime("%H:%M:%S UTC", time.gmtime(answered_ms / 1000))
    expect(op.locator("#freshness")).to_have_text(f"updated {answered}")
    # ...then nothing answers: still "updated" 9.9 s after that answer, "connection lost" at the check after 10 s
    # (the page checks once a second).
    op.route("**/*", lambda route: route.abort("internetdisconnected"))
    op.clock.run_for(int(answered_ms + 9_900 - op.evaluate("Date.now()")))
    expect(op.locator("#freshness")).to_have_text(f"updated {answered}")
    op.clock.run_for(int(answered_ms + 11_100 - op.evaluate("Date.now()")))
    expect(op.locator("#freshness")).to_have_text(f"connection lost · last update {answered}")
    expect(op.locator("body")).to_have_class(re.compile("connection-lost"))
    expect(op).to_have_title(re.compile(r"^⚠ connection lost"))
    op.unroute("**/*")
    next_refresh(op)
    expect(op.locator("#freshness")).to_contain_text("updated ")
    expect(op.locator("body")).not_to_have_class(re.compile("connection-lost"))


def test_keyboard_focus_stays_on_pause_across_live_refreshes(op, site):
    worker_alive(site)
    op.goto(site.url + "/")
    op.evaluate("window.settled = 0; document.addEventListener('htmx:afterSettle', (e) => "
                "{ if (e.detail.target.id === 'summary') window.settled++; })")
    op.locator("#trading-toggle").focus()
    for refreshes in (1, 2):
        next_refresh(op)
        wait_until(lambda: op.evaluate("window.settled") >= refreshes, timeout_s=10, what="a refresh of the tiles")
    assert op.evaluate("document.activeElement.id") == "trading-toggle"


def seed_market(site) -> None:
    """Thirty candles of BTCUSDT around 100 and an open long from 100 under STOP LOSS 2% and TAKE PROFIT 5%."""
    from core import brokers, open_trade

    (site.data_dir / "strategy.txt").write_text("IF MA4 > MA9 THEN BUY\nSTOP LOSS 2%\nTAKE PROFIT 5%\n")

    def seed(db):
        start = now_ms() - now_ms() % 60_000 - 30 * 60_000
        with db.conn:
            for i in range(30):
                price = 100 + (i % 5) - 2
                db.execute("INSERT OR REPLACE INTO candles VALUES ('BTCUSDT', ?, ?, ?, ?, ?, 1, ?, 1, 1, 0.5, 0.5)",
                           [start + i * 60_000, price, price + 1, price - 1, price + 0.5, start + i * 60_000 + 59_999])
            open_trade.save(db, "BTCUSDT", open_trade.OpenTrade(100.0, {}, 100.0), now_ms())
        brokers.save_position(db, brokers.Position("long", 1.0, 100.0), now_ms())

    write(site, seed)


def test_the_chart_shows_values_on_hover_and_the_open_trades_lines(op, site):
    worker_alive(site)
    seed_market(site)
    op.goto(site.url + "/")
    chart = op.locator("#chart")
    expect(chart).to_have_attribute("data-levels", "entry,stop loss,take profit")
    box = chart.bounding_box()
    chart.hover(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})  # scrolled into view first
    expect(op.locator("#chart-hover")).to_have_text(
        re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC · O \d+\.\d\d · H \d+\.\d\d · L \d+\.\d\d · C \d+\.\d\d"))


def test_the_equity_curve_has_a_point_every_step_so_its_axis_is_time(op, site):
    op.goto(site.url + "/trades")
    # fills at 0, 10 min and 60 min: a point a minute, each holding the equity since the last fill
    grid = op.evaluate("window.omniwiseCharts.onTimeGrid([{time: 600, value: 1}, {time: 1200, value: 2},"
                       " {time: 4200, value: 3}])")
    assert [p["time"] for p in grid] == list(range(600, 4201, 60))
    values = {p["time"]: p["value"] for p in grid}
    assert (values[600], values[1140], values[1200], values[4140], values[4200]) == (1, 1, 2, 2, 3)
    # a year of fills: a point a week at most 1,500 points; the ends stay exact
    year = op.evaluate("window.omniwiseCharts.onTimeGrid([{time: 1000, value: 1}, {time: 1000 + 365 * 86400, value: 2}])")
    assert len(year) <= 1502 and year[0] == {"time": 1000, "value": 1} and year[-1]["time"] == 1000 + 365 * 86400


def test_an_unknown_page_is_a_404_in_the_layout(op, site):
    answer = op.goto(site.url + "/no/such/page")
    assert answer.status == 404
    expect(op.get_by_role("heading", level=1)).to_have_text("This page does not exist")
    expect(op.get_by_role("link", name="Back to the dashboard")).to_be_visible()
    assert op.evaluate("document.documentElement.scrollWidth") <= op.viewport_size["width"]


def test_unsaved_edits_are_marked_and_leaving_asks_first(op, site):
    op.goto(site.url + "/admin/algo")
    expect(op.locator("#unsaved-mark")).to_be_hidden()
    op.locator("#strategy").press("End")
    op.locator("#strategy").press_sequentially("\nIF MA4 < MA9 THEN SELL")
    expect(op.locator("#unsaved-mark")).to_be_visible()
    expect(op.locator("#unsaved")).to_contain_text("Unsaved changes: the worker runs the saved version")
    expect(op.locator("#loaded.good")).to_be_hidden()  # no "runs the saved version" claim beside other text
    asked = []

    def stay(dialog):
        asked.append(dialog.type)
        dialog.dismiss()  # "stay on the page"

    op.on("dialog", stay)
    op.get_by_role("link", name="Versions").last.click()
    wait_until(lambda: asked == ["beforeunload"], timeout_s=10, what="the browser to ask before leaving")
    assert op.url.endswith("/admin/algo")
    op.remove_listener("dialog", stay)
    op.get_by_role("button", name="Save").click()  # saving leaves without asking
    expect(op.get_by_role("status").first).to_contain_text("Saved version")
    expect(op.locator("#unsaved-mark")).to_be_hidden()


def test_a_replay_is_a_banner_with_its_day_speed_and_progress(op, site):
    from core import replay_status

    worker_alive(site)
    write(site, lambda db: replay_status.started(db, "XRPETH-aggTrades-2019-10-11.csv", 60, now_ms()))
    op.goto(site.url + "/trades")
    expect(op.locator("#replay-banner")).to_contain_text("Replaying 2019-10-11 at 60×")
    # the page's times are the file's: its own refreshes are ages, not this machine's time of day
    expect(op.locator("#freshness")).to_have_text(re.compile(r"^data read \d+ s ago$"))
    next_refresh(op)
    expect(op.locator("#freshness")).to_have_text(re.compile(r"^updated \d+ s ago$"))
    write(site, lambda db: replay_status.finished(db, now_ms()))
    next_refresh(op)
    expect(op.locator("#replay-banner")).to_contain_text("Replay finished.")
    write(site, lambda db: replay_status.live(db, now_ms()))
    next_refresh(op)
    expect(op.locator("#replay-banner")).to_have_count(0)


PAGES = ["/", "/trades", "/admin/algo", "/admin/algo/history", "/admin/webhook", "/alerts", "/admin/flatten"]

# WCAG 2.1 relative luminance and contrast ratio, computed in the page for every element holding text.
CONTRAST_FAILURES = """() => {
  const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
  const rgba = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  function background(el) {
    for (; el; el = el.parentElement) {
      const c = rgba(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  }
  const failures = [];
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg, canvas, .visually-hidden, [hidden], noscript, #chart, #equity")) continue;
    const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const fg = rgba(style.color).slice(0, 3), bg = background(el);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < needed) failures.push(el.tagName + " '" + el.textContent.trim().slice(0, 40) + "' " + ratio.toFixed(2));
  }
  return failures;
}"""

TAP_TARGETS = """() => Array.from(document.querySelectorAll("header nav a, header nav button, main button, main a.button, main select, main summary"))
  .filter((el) => el.getClientRects().length && !el.closest("[hidden]"))
  .map((el) => { const r = el.getBoundingClientRect(); return [el.textContent.trim().slice(0, 30), Math.round(r.height), Math.round(r.width)]; })"""


def test_every_page_has_one_h1_and_its_text_meets_wcag_aa_contrast(op, site):
    worker_alive(site)
    for path in PAGES:
        op.goto(site.url + path)
        assert op.locator("h1").count() == 1, path
        assert op.evaluate(CONTRAST_FAILURES) == [], path


def test_phone_tap_targets_are_at_least_44_px_and_log_out_stands_apart(op, site):
    if op.width_name != "phone":
        pytest.skip("tap targets are a phone's matter")
    for path in PAGES:
        op.goto(site.url + path)
        small = [t for t in op.evaluate(TAP_TARGETS) if t[1] < 44 or t[2] < 44]
        assert small == [], path
    logout = op.get_by_role("button", name="Log out").bounding_box()
    alerts = op.get_by_role("link", name="Alerts", exact=True).bounding_box()
    gap = logout["x"] - (alerts["x"] + alerts["width"]) if abs(logout["y"] - alerts["y"]) < 10 else 100
    assert gap >= 24, gap  # not a slip of the thumb from Alerts


def test_keyboard_focus_is_visible_in_the_editor(op, site):
    op.goto(site.url + "/admin/algo")
    op.locator("#strategy").focus()
    op.keyboard.press("End")  # keyboard use: :focus-visible applies
    outline = op.evaluate("getComputedStyle(document.querySelector('.editor')).outlineStyle")
    width = op.evaluate("parseFloat(getComputedStyle(document.querySelector('.editor')).outlineWidth)")
    assert outline == "solid" and width >= 2


def test_on_a_phone_the_heartbeat_comes_first_and_trades_and_alerts_are_cards(op, site):
    from core import brokers
    from core.health import alerts

    if op.width_name != "phone":
        pytest.skip("cards are the phone's layout")
    worker_alive(site)

    def seed(db):
        broker = brokers.PaperBroker(db, "BTCUSDT", 10_000, 0.001)
        at = now_ms() - 600_000
        for i, (side, price) in enumerate((("BUY", 100.0), ("SELL", 104.0))):
            with db.conn:
                decision_id = db.execute(
                    "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, reason, "
                    "created_at_ms) VALUES ('BTCUSDT', ?, ?, 'long', 'flat', 'strategy', ?)",
                    [at + i * 60_000, side, at + i * 60_000]).lastrowid
            broker.submit(decision_id, side, at + i * 60_000)
            broker.fill_pending(price, at + i * 60_000)
        with db.conn:
            alerts.queue(db, "position", "mismatch", "HEARTBEAT FAILURE: signal is BUY but no long position "
                         "(position is flat): exited by trailing stop at 101.92 (2026-12-06 10:00 UTC)", now_ms(), True)

    write(site, seed)
    op.goto(site.url + "/")
    tiles = op.locator("#summary > article")
    first = min(range(tiles.count()), key=lambda i: (tiles.nth(i).bounding_box()["y"], tiles.nth(i).bounding_box()["x"]))
    assert tiles.nth(first).get_attribute("id") == "heartbeat-tile"
    op.goto(site.url + "/trades")
    pnl = op.locator("#trades tbody tr").first.locator("td.pnl").first
    expect(pnl).to_contain_text("+")
    box = pnl.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    op.goto(site.url + "/alerts")
    message = op.locator("table.alerts td.message").first
    expect(message).to_contain_text("exited by trailing stop")
    box = message.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert op.evaluate("document.getElementById('alerts-scroll').scrollWidth <= "
                       "document.getElementById('alerts-scroll').clientWidth")  # nothing hidden to the right

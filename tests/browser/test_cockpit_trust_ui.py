"""The cockpit's trust signals in a real browser at desktop (1280 px) and phone (390 px) width: banners and the
tab title, heartbeat changes told to screen readers, the connection lost, focus kept across refreshes.

Its own web app without a worker process: the test writes the worker's beacon and the heartbeat into the
shared SQLite file, as the worker would, so each state is set exactly when the test needs it.
"""

from __future__ import annotations

import re
import time

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
    server = Server(data_dir, OMNIWISE_ADMIN_PASSWORD=PASSWORD).start()
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


@pytest.fixture(params=list(WIDTHS))
def op(page, site, request):
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
    expect(op.locator("#banner")).not_to_contain_text("Worker down", timeout=10_000)  # the banner refreshes every 5 s
    expect(op).not_to_have_title(re.compile("⚠"))


def test_a_heartbeat_change_is_a_banner_and_is_told_to_screen_readers(op, site):
    worker_alive(site)
    heartbeat_is(site, heartbeat.OK, "signal is SELL and position is flat")
    op.goto(site.url + "/")
    expect(op.locator("#heartbeat-tile .big")).to_have_text("ok")
    expect(op.locator("#announcer")).to_have_attribute("aria-live", "polite")
    heartbeat_is(site, heartbeat.MISMATCH, "signal is BUY but no long position (position is flat)")
    expect(op.locator("#heartbeat-tile .big")).to_have_text("mismatch", timeout=10_000)
    expect(op.locator("#announcer")).to_contain_text("Heartbeat mismatch: since")
    expect(op.locator("#banner-region")).to_have_attribute("aria-live", "assertive")
    expect(op.locator("#banner")).to_contain_text("Heartbeat mismatch since", timeout=10_000)
    expect(op).to_have_title(re.compile(r"^⚠ mismatch · Dashboard"))
    heartbeat_is(site, heartbeat.OK, "signal is BUY and position is long")
    expect(op.locator("#banner p")).to_have_count(0, timeout=10_000)
    expect(op.locator("#announcer")).to_contain_text("Heartbeat ok")


def test_lost_refreshes_say_connection_lost_with_the_last_update_within_ten_seconds(op, site):
    worker_alive(site)
    op.goto(site.url + "/")
    expect(op.locator("#freshness")).to_contain_text("updated ")
    op.route("**/*", lambda route: route.abort("internetdisconnected"))
    lost_at = time.monotonic()
    expect(op.locator("#freshness")).to_contain_text(re.compile(r"connection lost · last update \d\d:\d\d:\d\d UTC"),
                                                     timeout=15_000)
    assert time.monotonic() - lost_at < 13  # 10 s without an answer, a second's check, a loaded machine
    expect(op.locator("body")).to_have_class(re.compile("connection-lost"))
    expect(op).to_have_title(re.compile(r"^⚠ connection lost"))
    op.unroute("**/*")
    expect(op.locator("#freshness")).to_contain_text("updated ", timeout=10_000)
    expect(op.locator("body")).not_to_have_class(re.compile("connection-lost"))


def test_keyboard_focus_stays_on_pause_across_live_refreshes(op, site):
    worker_alive(site)
    op.goto(site.url + "/")
    op.evaluate("window.settled = 0; document.addEventListener('htmx:afterSettle', (e) => "
                "{ if (e.detail.target.id === 'summary') window.settled++; })")
    op.locator("#trading-toggle").focus()
    wait_until(lambda: op.evaluate("window.settled") >= 2, timeout_s=15, what="two refreshes of the tiles")
    assert op.evaluate("document.activeElement.id") == "trading-toggle"

"""Browser tests: Debian's chromium driven by Playwright against real `omniwise.py serve` and worker processes.

A failing test leaves a screenshot of its page under test-results/ (pytest-playwright's --output folder).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA
from tests.processes import TOKEN, Server, start_worker, stop_worker

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-operator-password"
AGG_TRADES = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):  # .ci/run installs it: a CI without it must fail, not pass quietly
        raise pytest.UsageError(f"{CHROMIUM} is missing: apt-get install chromium")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=f"{CHROMIUM} is missing: apt-get install chromium"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's chromium instead of a Playwright download (which cannot be fetched here)."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM),
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The web app and a worker replaying a real day of XRPETH trades at 600x, sharing one data folder."""
    data_dir = tmp_path_factory.mktemp("browser") / "data"
    data_dir.mkdir()
    shutil.copy(ROOT / "data" / "strategy.txt", data_dir / "strategy.txt")
    server = Server(data_dir, OMNIWISE_ADMIN_PASSWORD=PASSWORD, OMNIWISE_SYMBOL="XRPETH").start()
    try:
        worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, symbol="XRPETH",
                              paper_balance=10, webhook_token=TOKEN)
        try:
            yield server
        finally:
            stop_worker(worker)
    finally:
        server.kill(signal.SIGTERM)  # whatever happened to the worker, no server is left behind


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def operator_page(page, live, request, pytestconfig):
    """A page logged in as the operator through the login form; screenshotted when its test fails."""
    page.set_default_timeout(20_000)  # generous for a loaded 2-core machine; the tests set tight timeouts where time is the point
    page.goto(live.url + "/")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(live.url + "/")
    yield page
    if request.node.stash.get(FAILED, False):
        folder = Path(pytestconfig.getoption("--output"))
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=folder / (re.sub(r"[^\w.-]+", "_", request.node.name) + ".png"), full_page=True)

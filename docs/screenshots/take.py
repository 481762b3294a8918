"""Screenshots of every page at 1280 px and 390 px wide, for the README: `.venv/bin/python docs/screenshots/take.py`.

Runs the web app and a worker replaying the bundled day of XRPETH trades at 600x on a temporary data folder,
waits for a few trades, then photographs each page in Debian's chromium (Playwright) into this folder.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.conftest import AGG_TRADES, CHROMIUM, PASSWORD  # noqa: E402
from tests.processes import TOKEN, Server, query, start_worker, stop_worker, wait_until  # noqa: E402

HERE = Path(__file__).parent
WIDTHS = {"1280": {"width": 1280, "height": 800}, "390": {"width": 390, "height": 844}}
STRATEGY = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\nSTOP LOSS 1%\nTAKE PROFIT 2%\n"


def pages(first_version: str) -> dict[str, str]:
    return {"dashboard": "/", "trades": "/trades", "strategy": "/admin/algo", "versions": "/admin/algo/history",
            "restore": f"/admin/algo/history/{first_version}/restore", "webhook": "/admin/webhook",
            "alerts": "/alerts", "flatten": "/admin/flatten", "not-found": "/no/such/page", "login": "/login"}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="omniwise-shots-"))
    data_dir = folder / "data"
    data_dir.mkdir()
    (data_dir / "strategy.txt").write_text((ROOT / "data" / "strategy.txt").read_text())
    server = Server(data_dir, OMNIWISE_ADMIN_PASSWORD=PASSWORD, OMNIWISE_SYMBOL="XRPETH",
                    OMNIWISE_PAPER_BALANCE="10").start()
    worker = start_worker(data_dir, replay_file=AGG_TRADES, replay_speed=600, symbol="XRPETH", paper_balance=10,
                          webhook_token=TOKEN, heartbeat_interval=2)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            page = browser.new_page(viewport=WIDTHS["1280"])
            page.goto(server.url + "/login")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(server.url + "/")
            page.goto(server.url + "/admin/algo")  # a second version, so that Versions has two
            page.locator("#strategy").fill(STRATEGY)
            page.get_by_role("button", name="Save").click()
            page.wait_for_url(server.url + "/admin/algo")
            wait_until(lambda: query(data_dir, "SELECT count(*) FROM orders WHERE status = 'filled'")[0][0] >= 6,
                       worker, timeout_s=300, what="a few trades")
            wait_until(lambda: '"long"' in (query(data_dir, "SELECT value FROM meta WHERE key = 'position'") or [("",)])[0][0],
                       worker, timeout_s=300, what="an open trade, for its lines on the chart")
            server.post_signal("BUY", int(time.time() * 1000), source="TradingView")
            wait_until(lambda: query(data_dir, "SELECT state FROM heartbeat WHERE subject = 'position'") == [("ok",)],
                       worker, timeout_s=30, what="the heartbeat's check of the signal")
            (first,) = query(data_dir, "SELECT version FROM strategy_versions ORDER BY id LIMIT 1")[0]
            for width_name, size in WIDTHS.items():
                page.set_viewport_size(size)
                for name, path in pages(first).items():
                    if name == "login":
                        page.context.clear_cookies()
                    page.goto(server.url + path)
                    page.wait_for_load_state("networkidle")
                    if name == "strategy":
                        page.locator("#preview").wait_for(timeout=30_000)
                    if name in ("dashboard", "trades"):
                        page.wait_for_timeout(1500)  # the chart draws after its JSON arrives
                    page.screenshot(path=HERE / f"{name}-{width_name}.png", full_page=True)
                    if name == "login":
                        page.get_by_label("Password").fill(PASSWORD)
                        page.get_by_role("button", name="Log in").click()
                        page.wait_for_url(server.url + "/")
            browser.close()
    finally:
        stop_worker(worker)
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)
    for shot in sorted(HERE.glob("*.png")):
        print(f"{shot.name}: {shot.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

"""The first run: `make run` from a clean data folder shows a live worker with candles within a minute."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess

from tests.processes import ROOT, STARTED, free_port, wait_until

TOKEN = "first-run-token-0123456789"


def get(port: int, path: str, cookie: str | None = None, data: bytes | None = None):
    """One request (no redirects followed): status, headers, body text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request("POST" if data is not None else "GET", path, data, headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def test_make_run_starts_both_processes_and_the_dashboard_shows_candles(tmp_path):
    port = free_port()
    env = {**os.environ, "OMNIWISE_DATA_DIR": str(tmp_path / "data"), "OMNIWISE_WEBHOOK_TOKEN": TOKEN,
           "OMNIWISE_ADMIN_PASSWORD": "first-run-password", "PORT": str(port)}
    env.pop("MAKEFLAGS", None)
    run = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    STARTED.append(run)  # the reaper kills the group should the test fail before stopping it
    try:
        def status():
            try:
                report = json.loads(get(port, f"/api/v1/status?token={TOKEN}")[2])
            except OSError:
                return None
            return report if report["worker"]["alive"] and report["position"]["side"] else None

        report = wait_until(status, run, timeout_s=60, what="a live worker in /api/v1/status")
        # no signal was ever received: unknown, and no alarm on a first start
        assert report["heartbeat"]["state"] == "unknown" and report["alerts"] == []
        assert report["symbol"] == "XRPETH"  # the bundled replay file's market, OMNIWISE_SYMBOL unset

        def has_candles():
            import sqlite3

            try:
                conn = sqlite3.connect(tmp_path / "data" / "omniwise.db")
                return conn.execute("SELECT count(*) FROM candles").fetchone()[0] >= 3
            except sqlite3.OperationalError:
                return False

        wait_until(has_candles, run, timeout_s=60, what="candles")
        # Log in as the operator and look at the dashboard.
        _, headers, page = get(port, "/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
        cookie = headers["Set-Cookie"].split(";")[0]
        body = f"password=first-run-password&csrf_token={csrf}".encode()
        status_code, headers, _ = get(port, "/login", cookie=cookie, data=body)
        assert status_code == 302
        cookie = headers["Set-Cookie"].split(";")[0]
        status_code, _, dashboard = get(port, "/", cookie=cookie)
        assert status_code == 200 and "alive" in dashboard and "0.001" in dashboard  # XRP/ETH prices on show
        assert "XRPETH" in dashboard and "BTCUSDT" not in dashboard and "Money, ETH" in dashboard
    finally:
        os.killpg(run.pid, signal.SIGINT)
        output, _ = run.communicate(timeout=30)
    assert f"Open http://127.0.0.1:{port}/" in output
    assert "/api/v1/external-signal/TOKEN" in output and TOKEN not in output  # configured: never printed

"""Real processes for end-to-end tests: the web app on gunicorn, the worker, and an alert receiver."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "server-test-token-0123456789"
START_TIMEOUT_S = 30
STARTED: list[subprocess.Popen] = []  # every process a test started; conftest reaps those left running


def reap() -> None:
    """Kill whatever a test started and left running (a failed assertion skips its own clean-up)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
            process.wait(timeout=10)


def free_port() -> int:
    """A port that was free a moment ago (for programs that cannot take a socket; it can race)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1: the port is held from here on, so nothing can race."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def wait_until(condition, process: subprocess.Popen | None = None, timeout_s: float = 60.0, what: str = "condition"):
    """Poll `condition` until it gives something true and return it; fail if `process` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"process exited with {process.returncode} while waiting for {what}: {output}")
        time.sleep(0.05)
    pytest.fail(f"{what} not met within {timeout_s} s")


def query(data_dir: Path, sql: str, *args) -> list[tuple]:
    """Rows from the data folder's database; [] while its schema does not exist yet."""
    conn = sqlite3.connect(data_dir / "omniwise.db", timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def count(data_dir: Path, table: str) -> int:
    """Rows in a table of the data folder's database; 0 while it does not exist yet."""
    rows = query(data_dir, f"SELECT count(*) FROM {table}")
    return rows[0][0] if rows else 0


class Server:
    """`omniwise.py serve` in its own process group, on a free port, with its own data folder."""

    def __init__(self, data_dir: Path, **env: str):
        self.data_dir = data_dir
        self.env = {**os.environ, "OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_WEBHOOK_TOKEN": TOKEN, **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        # gunicorn is handed a socket already listening, as systemd's socket activation does (fd 3,
        # LISTEN_FDS=1, LISTEN_PID its own pid; `exec` keeps bash's pid): no free port can be taken
        # by another process between choosing it and binding it.
        with listening_socket() as listener:
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            self.process = subprocess.Popen(
                ["/bin/bash", "-c", f'LISTEN_PID=$$ exec "$@" 3<&{fd}', "bash",
                 sys.executable, str(ROOT / "omniwise.py"), "serve", "--port", str(self.port)],
                cwd=self.data_dir, env={**self.env, "LISTEN_FDS": "1"}, pass_fds=(fd,),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.append(self.process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:  # poll until it answers, no fixed sleep
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stderr.read().decode()}")
            try:
                self.request("GET", "/healthz")
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"server did not answer within {START_TIMEOUT_S} s")

    @property
    def url(self) -> str:
        """The server's base URL, e.g. for a browser."""
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, body, headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_signal(self, signal_word: str, timestamp_ms: int, source: str = "TradingView") -> dict:
        body = json.dumps({"signal": signal_word, "timestamp": timestamp_ms, "source": source})
        status, _, payload = self.request("POST", f"/api/v1/external-signal/{TOKEN}", body,
                                          {"Content-Type": "text/plain"})
        assert status == 200, payload
        return json.loads(payload)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to the whole group (gunicorn's master and workers) and reap the master."""
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        self.process.stderr.close()

    def ledger(self) -> list[tuple]:
        with sqlite3.connect(self.data_dir / "omniwise.db") as db:
            return db.execute("SELECT id, source, signal, signal_time_ms, outcome FROM external_signals").fetchall()


def start_worker(data_dir: Path, **env: str) -> subprocess.Popen:
    """`python worker.py` on `data_dir` with OMNIWISE_* settings given as keyword arguments."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMNIWISE_DATA_DIR": str(data_dir),
                   "OMNIWISE_LOG_LEVEL": "WARNING", **{f"OMNIWISE_{k.upper()}": str(v) for k, v in env.items()}}
    worker = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    STARTED.append(worker)
    return worker


def stop_worker(worker: subprocess.Popen) -> str:
    """SIGTERM, then the worker must stop cleanly; returns what it printed."""
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=20)
    assert worker.returncode == 0, output
    return output


class AlertSink:
    """An HTTP server on 127.0.0.1 taking Apprise json:// posts; answers 500 to the first `failures`."""

    def __init__(self, failures: int = 0):
        self.received: list[dict] = []
        self.refused = 0
        self.pings = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if sink.refused < failures:
                    sink.refused += 1
                    self.send_response(500)
                else:
                    sink.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def do_GET(self):  # the dead-man's switch ping (OMNIWISE_PING_URL)
                sink.pings += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.ping_url = f"http://127.0.0.1:{self.server.server_address[1]}/ping"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[str]:
        return [alert["message"] for alert in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

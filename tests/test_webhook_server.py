"""The signal webhook on a real server: `python omniwise.py serve` on 127.0.0.1, and a SIGKILL under load."""

from __future__ import annotations

import http.client
import json
import signal
import threading

import pytest

from tests.processes import TOKEN, Server

URL = "/api/v1/external-signal"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("server-data")).start()
    yield running
    running.kill(signal.SIGTERM)


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("POST", f"{URL}/{TOKEN}", '{"signal": "BUY", "timestamp": 1700000000, "source": "TradingView"}',
     {"Content-Type": "application/json"}, 200),
    ("POST", f"{URL}?token={TOKEN}", '{"signal": "sell"}', {"Content-Type": "text/plain; charset=utf-8"}, 200),
    ("POST", URL, json.dumps({"signal": "long", "timestamp": "2023-11-14T22:13:21Z", "token": TOKEN}),
     {"Content-Type": "text/plain"}, 200),
    ("POST", URL, '{"signal": "flat", "timestamp": 1700000002}', {"X-Omniwise-Token": TOKEN}, 200),
    ("POST", URL, '{"signal": "BUY"}', {"Content-Type": "application/json"}, 401),
    ("POST", f"{URL}/{TOKEN}", "BUY now", {"Content-Type": "text/plain"}, 400),
    ("POST", f"{URL}/{TOKEN}", '{"signal": "BUY", "symbol": "BINANCE:ETHUSDT"}', {}, 422),
    ("POST", f"{URL}/{TOKEN}", "x" * 100_000, {"Content-Type": "text/plain"}, 413),
    ("POST", f"{URL}/{TOKEN}", "<signal/>", {"Content-Type": "application/xml"}, 415),
    ("GET", URL, None, {}, 405),
    ("GET", "/api/v1/does-not-exist", None, {}, 404),
])
def test_real_server_answers_json_for_every_case(server, method, path, body, headers, status):
    got, response_headers, payload = server.request(method, path, body, headers)
    assert got == status
    assert response_headers["Content-Type"].startswith("application/json")
    answer = json.loads(payload)
    assert ("id" in answer) if status == 200 else answer["error"]
    assert TOKEN.encode() not in payload


def test_real_server_answers_a_duplicate_from_the_ledger(server):
    body = '{"signal": "SELL", "timestamp": 1700000100123, "source": "dup-check"}'
    first = json.loads(server.request("POST", f"{URL}/{TOKEN}", body)[2])
    second = json.loads(server.request("POST", f"{URL}/{TOKEN}", body)[2])
    assert (first["duplicate"], second["duplicate"], second["id"]) == (False, True, first["id"])
    assert sum(1 for row in server.ledger() if row[1] == "dup-check") == 1


def test_every_acknowledged_signal_survives_a_sigkill_under_load(tmp_path):
    server = Server(tmp_path, OMNIWISE_WEBHOOK_RATE="0").start()
    acknowledged: dict[int, tuple[str, str, int]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for i in range(100_000):  # bounded; the kill ends it long before
            if stop.is_set():
                return
            signal_word = "BUY" if i % 2 else "SELL"
            sent = (f"client-{n}", signal_word, 1_600_000_000_000 + i)
            body = json.dumps({"signal": signal_word, "timestamp": sent[2], "source": sent[0]})
            try:
                conn.request("POST", f"{URL}/{TOKEN}", body, {"Content-Type": "text/plain"})
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                return  # the server is gone: what was not answered was never promised
            if response.status == 200:
                with lock:
                    acknowledged[json.loads(payload)["id"]] = sent
                    if len(acknowledged) >= 300:
                        enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(timeout=60), "the server did not acknowledge 300 signals in 60 s"
        server.kill(signal.SIGKILL)  # mid-load: requests are in flight
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    restarted = Server(tmp_path).start()  # recovers the WAL, as the next start after a crash would
    try:
        stored = {row[0]: (row[1], row[2], row[3]) for row in restarted.ledger()}
        status, _, _ = restarted.request("POST", f"{URL}/{TOKEN}", '{"signal": "BUY", "source": "after"}')
    finally:
        restarted.kill(signal.SIGTERM)
    missing = {id_: sent for id_, sent in acknowledged.items() if stored.get(id_) != sent}
    assert len(acknowledged) >= 300 and not missing
    assert status == 200


def test_a_locked_database_is_answered_503_within_2_5_s_even_under_a_burst(server):
    """Another process holds the write lock (a long backup, a stuck writer): every sender hears back in time."""
    import sqlite3
    import time

    holder = sqlite3.connect(server.data_dir / "omniwise.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers: list[tuple[float, int, str | None]] = []

    def send(n: int) -> None:
        started = time.monotonic()
        status, headers, _ = server.request("POST", f"{URL}/{TOKEN}",
                                            json.dumps({"signal": "BUY", "timestamp": 1_700_000_500_000 + n}))
        answers.append((time.monotonic() - started, status, headers.get("Retry-After")))

    try:  # twice the server's threads (2 workers x 4): the later ones queue behind the first
        senders = [threading.Thread(target=send, args=(n,)) for n in range(16)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(answers) == 16 and {(status, bool(retry)) for _, status, retry in answers} == {(503, True)}
    assert max(seconds for seconds, _, _ in answers) < 2.5, sorted(answers)
    assert server.post_signal("SELL", 1_700_000_600_000)["accepted"]  # the lock gone, signals go in at once

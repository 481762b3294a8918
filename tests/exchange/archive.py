"""Binance's public data archive (data.binance.vision) on 127.0.0.1, with files built from ../shared/data.

What it models, from binance/binance-public-data's README ("Klines", "CHECKSUM"):
- paths `/data/spot/monthly/klines/SYMBOL/1m/SYMBOL-1m-YYYY-MM.zip` and
  `/data/spot/daily/klines/SYMBOL/1m/SYMBOL-1m-YYYY-MM-DD.zip` (`/data/futures/um/...` for USDⓈ-M
  futures), each zip holding one CSV of the same name, each with `NAME.zip.CHECKSUM` holding
  `SHA256  NAME.zip` as sha256sum writes it;
- spot CSVs have no header and, from 2025, times in µs; futures CSVs start with a header row;
- a file that does not exist answers 404.
Faults a test can ask for: a file missing (404), corrupt (its bytes never match its checksum), cut
short once (the answer ends before its Content-Length), 5xx answers, slow answers.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

from core.history import Piece

DAY_MS = 86_400_000
FUTURES_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                  "taker_buy_quote_volume,ignore")


def binance_rows(csv_path: Path) -> list[list[str]]:
    """A shared klines CSV as Binance's 12 columns; the 6-column file's missing columns are written as 0."""
    with open(csv_path, newline="") as file:
        rows = [row for row in csv.reader(file) if row and row[0].isdigit()]
    if rows and len(rows[0]) == 6:
        rows = [row + [str(int(row[0]) + 59_999), "0.00000000", "0", "0.00000000", "0.00000000", "0"] for row in rows]
    return rows


class ArchiveStandIn:
    """The archive on 127.0.0.1: `url` is the base URL (OMNIWISE_BINANCE_ARCHIVE_URL)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []  # path of every GET, in order
        self.missing: set[str] = set()  # file names answered with 404 (zip and CHECKSUM)
        self.corrupt: set[str] = set()  # zip names whose bytes never match their checksum
        self.cut_short: collections.Counter = collections.Counter()  # zip name -> answers to cut short
        self.failing: dict[str, list] = {}  # file name -> [status, times]
        self.slow: dict[str, list] = {}  # file name -> [seconds, times]
        self._lock = threading.Lock()

    def publish(self, market: str, symbol: str, rows: list[list[str]], *, monthly: bool = True, daily: bool = True,
                until: dt.date | None = None, micros: bool = False) -> None:
        """Serve `rows` as the archive would: a zip a month (only for months ended by `until`) and a zip a day
        (up to `until`). `micros` writes times in µs, as spot files from 2025 on."""
        by_day: dict[dt.date, list[list[str]]] = collections.defaultdict(list)
        for row in rows:
            by_day[dt.date(1970, 1, 1) + dt.timedelta(days=int(row[0]) // DAY_MS)].append(row)
        by_month: dict[dt.date, list[list[str]]] = collections.defaultdict(list)
        for day in sorted(by_day):
            if until is None or day <= until:
                by_month[day.replace(day=1)] += by_day[day]
                if daily:
                    self._add(market, Piece(symbol, day, day, False), by_day[day], micros)
        for month, month_rows in by_month.items():
            month_last = (month + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
            if monthly and (until is None or month_last <= until):
                self._add(market, Piece(symbol, month, month_last, True), month_rows, micros)

    def _add(self, market: str, piece: Piece, rows: list[list[str]], micros: bool) -> None:
        lines = [",".join([str(int(row[0]) * 1000), *row[1:6], str(int(row[6]) * 1000 + 999), *row[7:]])
                 if micros else ",".join(row) for row in rows]
        if market == "futures":
            lines.insert(0, FUTURES_HEADER)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(piece.name.replace(".zip", ".csv"), "\n".join(lines) + "\n")
        data = buffer.getvalue()
        self.files[piece.url_path(market)] = data
        self.files[piece.url_path(market) + ".CHECKSUM"] = (
            f"{hashlib.sha256(data).hexdigest()}  {piece.name}\n".encode())

    def count(self, name: str) -> int:
        """How many GETs asked for the file called `name` (a zip or a .CHECKSUM)."""
        return sum(1 for path in self.requests if path.rsplit("/", 1)[-1] == name)

    # -- serving --------------------------------------------------------------------------------------

    def start(self) -> "ArchiveStandIn":
        handler = type("Handler", (_Handler,), {"archive": self})
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._http.block_on_close = False
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="archive", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._closing = threading.Event()
        return self

    def close(self) -> None:
        self._closing.set()
        self._http.shutdown()
        self._http.server_close()

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        with self._lock:
            self.requests.append(path)
            slow = self.slow.get(name)
            hold_s = slow[0] if slow and slow[1] > 0 else 0.0
            if hold_s:
                slow[1] -= 1
            failing = self.failing.get(name)
            status = failing[0] if failing and failing[1] > 0 else 200
            if status != 200:
                failing[1] -= 1
            cut = self.cut_short[name] > 0
            if cut:
                self.cut_short[name] -= 1
        if hold_s:
            self._closing.wait(hold_s)
        data = self.files.get(path)
        if data is None or name in self.missing or name.removesuffix(".CHECKSUM") in self.missing:
            # The archive is served from S3: a key that does not exist is 404 NoSuchKey.
            self._send(handler, 404, b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist."
                                     b"</Message></Error>", "application/xml")
            return
        if status != 200:
            self._send(handler, status, b"<Error><Code>InternalError</Code></Error>", "application/xml")
            return
        if name in self.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        if cut:  # the connection drops mid-answer: fewer bytes than Content-Length promised
            handler.send_response(200)
            handler.send_header("Content-Type", "application/zip")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        self._send(handler, 200, data, "text/plain" if name.endswith(".CHECKSUM") else "application/zip")

    @staticmethod
    def _send(handler, status: int, data: bytes, content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class _Handler(http.server.BaseHTTPRequestHandler):
    archive: ArchiveStandIn
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.archive.answer(self)

    def log_message(self, *args):
        pass


def start_archive() -> ArchiveStandIn:
    """A started archive stand-in, serving nothing until `publish` is called."""
    return ArchiveStandIn().start()


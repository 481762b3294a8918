"""`download`: 1-minute klines of one Binance market from Binance's public archive, verified and resumable.

The archive (data.binance.vision, or OMNIWISE_BINANCE_ARCHIVE_URL) publishes a zip for each whole
month and for each day, each beside a `.CHECKSUM` file (`sha256  NAME`); binance/binance-public-data's
README. Files are kept under DATA_DIR/history/<market>/<SYMBOL>/ with the archive's names
(core/history.py). A zip is written to a hidden `.NAME.PID.part` file, hashed as it arrives, and only
renamed to its name once it matches its checksum, so a file with the archive's name is always whole
and verified; its `.CHECKSUM` is kept beside it so that a later run checks it without asking the
archive. An interrupted run therefore resumes, and a second run over kept files sends no request.

Which files are missing (404) tells what happened:
- before the first file found: the market did not exist yet at --from;
- between files found: the archive lost a file (an error naming it);
- after the last file found: days newer than the archive (a month's file appears a few days after
  it ends, a day's file the next day). A missing month becomes its daily files; missing days come
  from the klines endpoint of the Binance API (core/binance/rest.py: weights, 429s, retries), at most
  MAX_API_DAYS of them, and are asked of the archive again on the next run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import os
import random as _random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from core.candles import DAY_MS, MINUTE_MS
from core.retry import backoff_s
from core.history import API_SUFFIX, HistoryError, Piece, daily_pieces, day_start_ms, plan

WORKERS = 4  # files fetched at once: enough to fill a line, few enough to stay a polite client
ATTEMPTS = 4  # per request, on a 5xx, a timeout or a broken connection
TIMEOUT_S = (10.0, 60.0)  # connect, and between two reads of an answer
MONTHLY_FILE_DELAY_DAYS = 15  # a month's file may appear this long after the month ends: ask for its days
MAX_API_DAYS = 7  # days taken from the klines endpoint (1,000 minutes a request) when the archive lacks them
_CHUNK_BYTES = 1 << 16
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
KEPT, FETCHED, MISSING = "kept", "fetched", "missing"


class DownloadError(Exception):
    """The download cannot go on: one line naming the file, URL or argument at fault.

    Caller: print it and exit non-zero. Files verified before it are kept (a new run resumes from
    them); nothing unverified is left under an archive name.
    """


@dataclasses.dataclass(frozen=True)
class Report:
    """What a download did: archive files fetched and already kept, and the days from the klines endpoint."""

    fetched: int
    kept: int
    api_days: list[dt.date]


class Archive:
    """Binance's public data archive over HTTP: GETs retried on 5xx, timeouts and broken connections."""

    def __init__(self, base_url: str, market: str, *, timeout_s=TIMEOUT_S, attempts: int = ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, random: Callable[[], float] = _random.random):
        self.base_url = base_url.rstrip("/")
        self.market = market
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.sleep = sleep
        self.random = random
        self._local = threading.local()  # one requests.Session (a connection pool) per thread

    def url(self, piece: Piece, suffix: str = "") -> str:
        """The URL of `piece` (and of its `.CHECKSUM` with that suffix)."""
        return f"{self.base_url}{piece.url_path(self.market)}{suffix}"

    def checksum(self, piece: Piece) -> str | None:
        """The sha256 the archive gives for `piece` (hex, lower case), or None when it has no such file."""
        url = self.url(piece, ".CHECKSUM")
        text = self._get(url, lambda answer: answer.text)
        if text is None:
            return None
        words = text.split()
        if not words or not _SHA256.fullmatch(words[0]):
            raise DownloadError(f"{url}: not a sha256 checksum file ({text[:60]!r})")
        return words[0].lower()

    def save(self, piece: Piece, partial: Path) -> str | None:
        """Write `piece` to `partial`; its sha256, or None when the archive has no such file."""
        def write(answer: requests.Response) -> str:
            digest = hashlib.sha256()
            with open(partial, "wb") as out:
                for chunk in answer.iter_content(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
            return digest.hexdigest()

        return self._get(self.url(piece), write, stream=True)

    def _get(self, url: str, read: Callable[[requests.Response], object], stream: bool = False):
        """`read(answer)` of a GET of `url`, None on 404; DownloadError after `attempts` failures."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                with session.get(url, timeout=self.timeout_s, stream=stream) as answer:
                    if answer.status_code == 404:
                        return None
                    if answer.status_code < 500 and answer.status_code not in (408, 429):
                        if answer.status_code != 200:
                            raise DownloadError(f"{url}: HTTP {answer.status_code} {answer.reason}")
                        return read(answer)
                    error = f"HTTP {answer.status_code} {answer.reason}"
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                error = type(exc).__name__
            if attempt < self.attempts:
                self.sleep(backoff_s(attempt, self.random))
        raise DownloadError(f"{url}: {error} ({self.attempts} tries)")


class KlinesApi:
    """Binance's 1-minute klines endpoint of one market, for days newer than the archive."""

    PER_REQUEST = 1000  # the endpoint's largest `limit`

    def __init__(self, rest):
        from core.binance.rest import SPOT

        self.rest = rest  # a core.binance.rest.BinanceRest
        self.method = "get_klines" if rest.market == SPOT else "futures_klines"

    def klines(self, symbol: str, start_ms: int, end_ms: int, most: int | None = None) -> list[list]:
        """The klines opened in [start_ms, end_ms) (the first `most`), as the endpoint's rows; DownloadError
        when refused, naming the symbol when Binance does not know it."""
        from core.brokers import BrokerError

        rows: list[list] = []
        while start_ms < end_ms:
            try:
                batch = self.rest.call(self.method, symbol=symbol, interval="1m", startTime=start_ms,
                                       endTime=end_ms - 1, limit=most or self.PER_REQUEST)
            except BrokerError as exc:
                code = getattr(exc, "code", None)
                if code == -1121:  # spot and futures "Error codes": -1121 Invalid symbol.
                    raise DownloadError(f"unknown symbol {symbol}: Binance's {self.rest.market} API answers "
                                        f"'Invalid symbol' ({self.rest.endpoints.rest_url})") from None
                raise DownloadError(f"the klines endpoint ({self.rest.endpoints.rest_url}): {exc}") from None
            rows += batch
            if most is not None or len(batch) < self.PER_REQUEST:
                break
            start_ms = int(batch[-1][0]) + MINUTE_MS
        return rows


def download(symbol: str, market: str, first_day: dt.date, last_day: dt.date, *, folder: Path,
             archive: Archive, api: KlinesApi | None, now_ms: int,
             on_file: Callable[[int, int], None] | None = None, workers: int = WORKERS) -> Report:
    """Fetch what is missing of first_day..last_day into `folder`; DownloadError or HistoryError if it cannot.

    `on_file(done, total)` is called after each archive file. `now_ms` decides which klines of the
    API are final (closed before it).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{folder}: cannot create the folder: {exc.strerror or exc}") from None
    _remove_leftovers(folder)
    pieces = plan(symbol, first_day, last_day)
    results = _fetch_all(archive, pieces, folder, on_file, workers)
    last_found = max((i for i, piece in enumerate(pieces) if results[piece] != MISSING), default=-1)
    # A month ended lately whose file is not published yet: its days may be, one file a day.
    unpublished = [piece for piece in pieces[last_found + 1:]
                   if piece.is_monthly and piece.end_ms > now_ms - MONTHLY_FILE_DELAY_DAYS * DAY_MS]
    if unpublished:
        pieces = [day for piece in pieces
                  for day in (daily_pieces(symbol, piece.first_day, piece.last_day) if piece in unpublished
                              else [piece])]
        results |= _fetch_all(archive, [piece for piece in pieces if piece not in results], folder, on_file,
                              workers)
    found = [i for i, piece in enumerate(pieces) if results[piece] != MISSING]
    if found:
        _check_no_holes(archive, pieces, found, results, first_day)
    api_days = _from_api(api, archive, symbol, pieces[found[-1] + 1 if found else 0:], folder, now_ms,
                         first_day, is_first=not found)
    counts = [results[piece] for piece in pieces]
    return Report(counts.count(FETCHED), counts.count(KEPT), api_days)


def _fetch_all(archive: Archive, pieces: list[Piece], folder: Path, on_file, workers: int) -> dict[Piece, str]:
    """fetch_piece for every piece, `workers` at a time; the first DownloadError once all have ended."""
    results: dict[Piece, str] = {}
    failures: list[tuple[Piece, Exception]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fetch_piece, archive, piece, folder): piece for piece in pieces}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            piece = futures[future]
            try:
                results[piece] = future.result()
            except (DownloadError, OSError) as exc:
                failures.append((piece, exc))
            if on_file is not None:
                on_file(done, len(pieces))
    if failures:
        piece, exc = min(failures, key=lambda failure: failure[0].first_day)
        if isinstance(exc, OSError):  # a full disk, a read-only folder: name the file it was writing
            raise DownloadError(f"{folder / piece.name}: cannot write: {exc.strerror or exc}") from None
        raise exc
    return results


def fetch_piece(archive: Archive, piece: Piece, folder: Path) -> str:
    """Make `folder / piece.name` the archive's verified file: KEPT, FETCHED, or MISSING (404)."""
    path = folder / piece.name
    checksum_path = folder / f"{piece.name}.CHECKSUM"
    if path.is_file() and checksum_path.is_file() and _sha256_of(path) == _checksum_in(checksum_path):
        return KEPT
    expected = archive.checksum(piece)
    if expected is None:
        return MISSING
    if path.is_file() and _sha256_of(path) == expected:
        _write_atomically(checksum_path, f"{expected}  {piece.name}\n".encode())
        return KEPT
    partial = folder / f".{piece.name}.{os.getpid()}.part"
    digest = None
    try:
        for _ in range(2):  # DESIGN.md "History": a mismatch is fetched once more, then named in an error
            digest = archive.save(piece, partial)
            if digest is None:
                return MISSING
            if digest == expected:
                os.replace(partial, path)
                _write_atomically(checksum_path, f"{expected}  {piece.name}\n".encode())
                if not piece.is_monthly:  # the archive's file replaces the API's
                    (folder / piece.api_name).unlink(missing_ok=True)
                return FETCHED
    finally:
        partial.unlink(missing_ok=True)
    raise DownloadError(f"{archive.url(piece)}: sha256 {digest} does not match its .CHECKSUM ({expected}) "
                        f"after 2 downloads; nothing kept")


def _check_no_holes(archive: Archive, pieces: list[Piece], found: list[int], results: dict, first_day) -> None:
    """HistoryError when files are missing before the first file found or between two found."""
    first = found[0]
    if first > 0:
        raise HistoryError(f"--from {first_day}: Binance's {archive.market} archive has no file for "
                           f"{pieces[0].symbol} before {pieces[first].name} ({archive.url(pieces[0])}: 404 Not "
                           f"Found), so the market did not exist yet: start on {pieces[first].first_day} or later")
    hole = next((pieces[i] for i in range(first, found[-1]) if results[pieces[i]] == MISSING), None)
    if hole is not None:
        raise DownloadError(f"{archive.url(hole)}: 404 Not Found, though the archive has files before and "
                            f"after it; nothing invented in its place")


def _from_api(api: KlinesApi | None, archive: Archive, symbol: str, pieces: list[Piece], folder: Path,
              now_ms: int, first_day: dt.date, is_first: bool) -> list[dt.date]:
    """Days the archive has no file for yet, from the klines endpoint, each kept as SYMBOL-1m-DAY.api.csv."""
    if not pieces:
        return []
    days = [day for piece in pieces for day in daily_pieces(symbol, piece.first_day, piece.last_day)]
    missing = f"{archive.url(pieces[0])}: 404 Not Found"
    if api is None:
        raise DownloadError(f"{missing}, and no Binance API to ask instead")
    if is_first:  # nothing in the archive: is the symbol known, and did the market exist at --from?
        rows = api.klines(symbol, day_start_ms(first_day), day_start_ms(days[-1].first_day) + DAY_MS, most=1)
        if not rows or int(rows[0][0]) >= day_start_ms(first_day) + DAY_MS:
            since = f"its first minute is {_utc(int(rows[0][0]))} UTC" if rows else "no klines after that"
            raise HistoryError(f"--from {first_day}: {symbol} has no file in Binance's {archive.market} archive "
                               f"and the API has {since}: the market did not exist yet")
    if len(days) > MAX_API_DAYS:
        raise DownloadError(f"{missing}; the archive has no {symbol} file from {days[0].first_day} on, and "
                            f"{len(days):,} days are more than the {MAX_API_DAYS} the klines endpoint is asked for")
    kept: list[dt.date] = []
    for piece in days:
        start_ms = day_start_ms(piece.first_day)
        rows = [row for row in api.klines(symbol, start_ms, start_ms + DAY_MS) if int(row[6]) < now_ms]
        path = folder / piece.api_name
        if not rows:
            path.unlink(missing_ok=True)
            continue
        text = "".join(",".join(str(value) for value in row[:11]) + ",0\r\n" for row in rows)
        try:
            _write_atomically(path, text.encode())
        except OSError as exc:
            raise DownloadError(f"{path}: cannot write: {exc.strerror or exc}") from None
        kept.append(piece.first_day)
    return kept


def _remove_leftovers(folder: Path) -> None:
    """Delete partial files of runs that died (their process is gone): they are never read anyway."""
    for partial in folder.glob(".*.part"):
        try:
            pid = int(partial.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_in(path: Path) -> str | None:
    words = path.read_text(encoding="ascii", errors="replace").split()
    return words[0].lower() if words and _SHA256.fullmatch(words[0]) else None


def _minutes(count: int) -> str:
    return f"{count:,} minute{'s' if count != 1 else ''}"


def _utc(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))


def run(settings, symbol_text: str, market: str, from_text: str, to_text: str | None, now_ms: int,
        on_file: Callable[[int, int], None] | None = None) -> list[str]:
    """The `download` command: check the arguments, fetch, read what is kept; the summary's lines.

    Raises HistoryError (a bad argument, or the market did not exist yet), DownloadError (the archive
    or the API failed) or FeedError (a verified file that does not read as klines).
    """
    from core.binance.rest import BinanceRest
    from core.history import coverage, folder_of, load_history, parse_arguments

    symbol, first_day, last_day = parse_arguments(symbol_text, from_text, to_text, now_ms)
    folder = folder_of(settings.data_dir, market, symbol)
    # The archive is the live market, so its missing days come from the live API (or the URL set for it),
    # never from the testnet's unrelated prices.
    api = KlinesApi(BinanceRest(dataclasses.replace(settings, testnet=False), market))
    archive = Archive(settings.binance_archive_url, market)
    report = download(symbol, market, first_day, last_day, folder=folder, archive=archive, api=api, now_ms=now_ms,
                      on_file=on_file)
    candles = load_history(folder, symbol, first_day, last_day)
    start_ms = day_start_ms(first_day)
    end_ms = min(day_start_ms(last_day) + DAY_MS, now_ms - now_ms % MINUTE_MS)
    return summary_lines(symbol, market, first_day, last_day, report, coverage(candles["open_time_ms"], start_ms,
                                                                                end_ms), folder)


def summary_lines(symbol: str, market: str, first_day: dt.date, last_day: dt.date, report: Report, held,
                  folder: Path) -> list[str]:
    """What a download tells the trader: files, minutes held of the period, the longest gaps."""
    api = (f", {len(report.api_days)} day{'s' if len(report.api_days) != 1 else ''} from the klines endpoint"
           if report.api_days else "")
    lines = [f"{symbol} {market} {first_day} to {last_day}: {report.fetched} archive file"
             f"{'s' if report.fetched != 1 else ''} fetched, {report.kept} already kept{api}, in {folder}",
             f"{held.minutes:,} of {held.expected:,} minutes ({held.share_pct:.2f} %)"]
    if held.gaps:
        lines.append("largest gaps (not filled in): " + "; ".join(
            f"{_utc(start)} to {_utc(end - MINUTE_MS)} UTC ({_minutes((end - start) // MINUTE_MS)})"
            for start, end in held.gaps))
    else:
        lines.append("no gaps")
    return lines

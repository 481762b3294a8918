"""Downloaded history: Binance's archive of 1-minute klines, kept as its own files and read as candle arrays.

`python omniwise.py download` (core/download.py) keeps each file of data.binance.vision under
`DATA_DIR/history/<market>/<SYMBOL>/` with the archive's name: `SYMBOL-1m-YYYY-MM.zip` for a whole
month, `SYMBOL-1m-YYYY-MM-DD.zip` for a day, each beside its `.CHECKSUM`; days newer than the archive
come from the klines endpoint as `SYMBOL-1m-YYYY-MM-DD.api.csv` (Binance's 12 columns). This module
names those files and reads them back for a backtest: whole files through the parsed-array cache
(core/candle_cache.py), joined, cut to the dates asked for. A minute missing from the files stays
missing (DESIGN.md "Candles": a klines file is used as given).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core import candle_cache
from core.backtest import klines_arrays
from core.candles import DAY_MS, MINUTE_MS
from core.feeds import FeedError, read_kline_lines, sniff_lines

MARKETS = ("spot", "futures")
_ARCHIVE_ROOTS = {"spot": "data/spot", "futures": "data/futures/um"}  # USDⓈ-M futures
API_SUFFIX = ".api.csv"
_SYMBOL = re.compile(r"^[A-Z0-9_]{2,30}$")  # BTCUSDT, 1000SHIBUSDT, futures delivery BTCUSDT_250627
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_KEPT_NAME = re.compile(r"(?P<symbol>[A-Z0-9_]+)-1m-(?P<year>[0-9]{4})-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2}))?"
                        r"(?:\.zip|\.api\.csv)")
_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")


class HistoryError(Exception):
    """A bad argument or a history not downloaded: one line naming the argument or the file.

    Caller: print it and stop (exit 1); nothing was changed.
    """


@dataclasses.dataclass(frozen=True)
class Piece:
    """One file of Binance's archive: a whole month (`is_monthly`) or one day."""

    symbol: str
    first_day: dt.date
    last_day: dt.date
    is_monthly: bool

    @property
    def name(self) -> str:
        """The archive's file name: SYMBOL-1m-YYYY-MM.zip or SYMBOL-1m-YYYY-MM-DD.zip."""
        when = self.first_day.strftime("%Y-%m") if self.is_monthly else self.first_day.isoformat()
        return f"{self.symbol}-1m-{when}.zip"

    @property
    def api_name(self) -> str:
        """The file a day newer than the archive is kept in, from the klines endpoint."""
        return f"{self.symbol}-1m-{self.first_day.isoformat()}{API_SUFFIX}"

    def url_path(self, market: str) -> str:
        """The path under the archive's base URL, as Binance publishes it."""
        period = "monthly" if self.is_monthly else "daily"
        return f"/{_ARCHIVE_ROOTS[market]}/{period}/klines/{self.symbol}/1m/{self.name}"

    @property
    def start_ms(self) -> int:
        """Open time of the first minute this file can hold."""
        return day_start_ms(self.first_day)

    @property
    def end_ms(self) -> int:
        """End of the last day this file can hold (exclusive)."""
        return day_start_ms(self.last_day) + DAY_MS


def day_start_ms(day: dt.date) -> int:
    """00:00 UTC of `day`, in ms since 1970."""
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


def parse_symbol(text: str) -> str:
    """A Binance symbol as the archive spells it (upper case); HistoryError for anything else."""
    symbol = text.strip().upper()
    if not _SYMBOL.match(symbol):
        raise HistoryError(f"unknown symbol {text!r}: a Binance symbol is 2 to 30 letters and digits, like BTCUSDT")
    return symbol


def parse_day(text: str, option: str) -> dt.date:
    """A YYYY-MM-DD date of an option (`--from`); HistoryError naming the option otherwise."""
    try:
        if _DATE.fullmatch(text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise HistoryError(f"{option} {text!r} is not a date: write YYYY-MM-DD, e.g. 2024-01-31")


def parse_arguments(symbol_text: str, from_text: str, to_text: str | None, now_ms: int) -> tuple[str, dt.date, dt.date]:
    """SYMBOL, --from and --to (default: today, UTC) of `download` and `backtest --symbol`, checked."""
    symbol = parse_symbol(symbol_text)
    today = dt.date(1970, 1, 1) + dt.timedelta(days=now_ms // DAY_MS)
    first_day = parse_day(from_text, "--from")
    last_day = parse_day(to_text, "--to") if to_text is not None else today
    if first_day > last_day:
        raise HistoryError(f"--from {first_day} is after --to {last_day}")
    if last_day > today:
        raise HistoryError(f"--to {last_day} is after today ({today} UTC): Binance has no klines for it yet")
    return symbol, first_day, last_day


def folder_of(data_dir: Path, market: str, symbol: str) -> Path:
    """Where a market's files are kept: DATA_DIR/history/<market>/<SYMBOL>/."""
    return Path(data_dir) / "history" / market / symbol


def plan(symbol: str, first_day: dt.date, last_day: dt.date) -> list[Piece]:
    """The archive files for the days first_day..last_day: monthly for whole months, daily for the rest."""
    pieces: list[Piece] = []
    for month_first, month_last in _months(first_day, last_day):
        if month_first >= first_day and month_last <= last_day:
            pieces.append(Piece(symbol, month_first, month_last, True))
        else:
            pieces += daily_pieces(symbol, max(month_first, first_day), min(month_last, last_day))
    return pieces


def daily_pieces(symbol: str, first_day: dt.date, last_day: dt.date) -> list[Piece]:
    """One daily file for each day first_day..last_day."""
    return [Piece(symbol, day, day, False) for day in _days(first_day, last_day)]


def kept_files(folder: Path, symbol: str, first_day: dt.date, last_day: dt.date) -> list[Path]:
    """The downloaded files covering first_day..last_day, oldest first; HistoryError naming the days missing.

    A month's own file wins over its daily files, and a day's archive file over its klines-endpoint file.
    """
    files: list[Path] = []
    missing: list[dt.date] = []
    for month_first, month_last in _months(first_day, last_day):
        monthly = folder / Piece(symbol, month_first, month_last, True).name
        if monthly.is_file():
            files.append(monthly)
            continue
        for piece in daily_pieces(symbol, max(month_first, first_day), min(month_last, last_day)):
            found = next((path for path in (folder / piece.name, folder / piece.api_name) if path.is_file()), None)
            if found is None:
                missing.append(piece.first_day)
            else:
                files.append(found)
    if missing:
        span = str(missing[0]) if len(missing) == 1 else f"{missing[0]} to {missing[-1]}"
        raise HistoryError(f"{folder}: {len(missing):,} day{'s' if len(missing) > 1 else ''} of {first_day} to "
                           f"{last_day} not downloaded ({span}): run `python omniwise.py download {symbol} "
                           f"--from {missing[0]} --to {missing[-1]}{_market_option(folder)}`")
    return files


def _market_option(folder: Path) -> str:
    return " --market futures" if folder.parent.name == "futures" else ""


def load_history(folder: Path, symbol: str, first_day: dt.date, last_day: dt.date) -> dict[str, np.ndarray]:
    """The candles of first_day 00:00 to last_day 23:59 UTC from the downloaded files, as backtest arrays.

    Raises HistoryError when a day was not downloaded, FeedError when a file does not read exactly.
    """
    start_ms, end_ms = day_start_ms(first_day), day_start_ms(last_day) + DAY_MS
    parts = []
    previous: tuple[Path, int] | None = None
    for path in kept_files(folder, symbol, first_day, last_day):
        candles = read_file(path)
        times = candles["open_time_ms"]
        if len(times) and previous is not None and times[0] <= previous[1]:
            raise FeedError(path, 1, f"its first minute is not after the last minute of {previous[0].name}")
        if len(times):
            previous = (path, int(times[-1]))
        inside = slice(int(np.searchsorted(times, start_ms)), int(np.searchsorted(times, end_ms)))
        parts.append({column: candles[column][inside] for column in _COLUMNS})
    return {column: np.concatenate([part[column] for part in parts]) if parts else
            np.zeros(0, dtype=np.int64 if column == "open_time_ms" else np.float64) for column in _COLUMNS}


def history_candles(data_dir: Path, symbol_text: str, market: str, from_text: str, to_text: str | None,
                    now_ms: int) -> dict[str, np.ndarray]:
    """`backtest --symbol --from --to`: the arguments checked, then `load_history` of the kept files."""
    symbol, first_day, last_day = parse_arguments(symbol_text, from_text, to_text, now_ms)
    return load_history(folder_of(data_dir, market, symbol), symbol, first_day, last_day)


@dataclasses.dataclass(frozen=True)
class Downloaded:
    """A market with kept files, and the first and last day they hold."""

    market: str
    symbol: str
    first_day: dt.date
    last_day: dt.date

    @property
    def key(self) -> str:
        """How the editor's form names it: market/SYMBOL."""
        return f"{self.market}/{self.symbol}"


def downloaded(data_dir: Path) -> list[Downloaded]:
    """Every market `download` kept files of under DATA_DIR/history/, by market and symbol."""
    found = []
    for market in MARKETS:
        root = Path(data_dir) / "history" / market
        for folder in sorted(root.iterdir()) if root.is_dir() else ():
            days = [span for path in folder.iterdir() if (span := _days_in_name(path.name, folder.name))]
            if days:
                found.append(Downloaded(market, folder.name, min(d[0] for d in days), max(d[1] for d in days)))
    return found


def _days_in_name(name: str, symbol: str) -> tuple[dt.date, dt.date] | None:
    """(first day, last day) a kept file's name covers, or None for any other file (checksums, caches)."""
    match = _KEPT_NAME.fullmatch(name)
    if match is None or match["symbol"] != symbol:
        return None
    try:
        if match["day"] is None:
            first = dt.date(int(match["year"]), int(match["month"]), 1)
            return first, next(_months(first, first))[1]
        day = dt.date(int(match["year"]), int(match["month"]), int(match["day"]))
        return day, day
    except ValueError:
        return None


def preview_candles(data_dir: Path, key: str, from_text: str, to_text: str,
                    now_ms: int) -> tuple[dict[str, np.ndarray], str]:
    """The candles of a downloaded history the editor's preview was pointed at (`key` market/SYMBOL), and
    their name; the dates default to all the kept files hold. HistoryError for anything not downloaded."""
    market, _, symbol_text = key.partition("/")
    if market not in MARKETS:
        raise HistoryError(f"no downloaded history {key!r}")
    symbol = parse_symbol(symbol_text)
    kept = next((d for d in downloaded(data_dir) if d.market == market and d.symbol == symbol), None)
    if kept is None:
        raise HistoryError(f"nothing of {symbol} {market} is downloaded: run `python omniwise.py download {symbol} "
                           f"--from YYYY-MM-DD" + (" --market futures`" if market == "futures" else "`"))
    from_text, to_text = from_text.strip() or str(kept.first_day), to_text.strip() or str(kept.last_day)
    candles = history_candles(data_dir, symbol, market, from_text, to_text, now_ms)
    return candles, f"{symbol} {market} from {from_text} to {to_text}"


def read_file(path: Path) -> dict[str, np.ndarray]:
    """One kept file (an archive zip, or a klines-endpoint CSV) as candle arrays, through the cache."""
    if path.name.endswith(API_SUFFIX):
        return candle_cache.load_candles_cached(path)
    return candle_cache.cached(path, lambda: read_zip(path))


def read_zip(path: Path) -> dict[str, np.ndarray]:
    """The klines CSV inside an archive zip as candle arrays; FeedError naming the zip and the CSV's line.

    Reads every layout the archive has used: spot files without a header (times in µs from 2025),
    futures files with a header row.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.lower().endswith(".csv")]
            if len(members) != 1:
                raise FeedError(path, 1, f"holds {len(members)} CSV files, not the one klines CSV of the archive")
            raw = archive.read(members[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise FeedError(path, 1, f"not a readable zip file ({exc})") from None
    layout = sniff_lines(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", errors="replace"), path)
    return klines_arrays(io.BytesIO(raw), layout, path,
                         lambda: read_kline_lines(raw.decode("utf-8-sig", "replace").splitlines(), path))


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Which minutes of a period the candles hold: a count, and the longest runs missing."""

    minutes: int
    expected: int  # minutes from the period's start to its end
    gaps: list[tuple[int, int]]  # (first missing open time, end exclusive) in ms, longest first

    @property
    def share_pct(self) -> float:
        """Minutes held as a share of the period, in %."""
        return 100.0 * self.minutes / self.expected if self.expected else 100.0


def coverage(open_time_ms: np.ndarray, start_ms: int, end_ms: int, top: int = 3) -> Coverage:
    """The minutes of [start_ms, end_ms) held by `open_time_ms` (sorted), and the `top` longest gaps."""
    times = open_time_ms[(open_time_ms >= start_ms) & (open_time_ms < end_ms)]
    edges = np.concatenate([[start_ms - MINUTE_MS], times, [end_ms]])
    steps = np.diff(edges)
    holes = np.flatnonzero(steps > MINUTE_MS)
    order = holes[np.argsort(-steps[holes], kind="stable")][:top]
    gaps = [(int(edges[i]) + MINUTE_MS, int(edges[i + 1])) for i in order]
    return Coverage(len(times), max(0, (end_ms - start_ms) // MINUTE_MS), gaps)


def _months(first_day: dt.date, last_day: dt.date) -> Iterator[tuple[dt.date, dt.date]]:
    """(first day, last day) of every calendar month that first_day..last_day touches."""
    month = first_day.replace(day=1)
    while month <= last_day:
        following = (month + dt.timedelta(days=32)).replace(day=1)
        yield month, following - dt.timedelta(days=1)
        month = following


def _days(first_day: dt.date, last_day: dt.date) -> Iterator[dt.date]:
    day = first_day
    while day <= last_day:
        yield day
        day += dt.timedelta(days=1)

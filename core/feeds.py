"""Where ticks and candles come from: Binance public-data CSV files (data.binance.vision), replayed.

Layouts, with or without a header row:
  aggTrades  agg_trade_id, price, quantity, first_trade_id, last_trade_id, transact_time,
             is_buyer_maker[, is_best_match]          (spot files have 8 columns, futures files 7)
  klines     open_time, open, high, low, close, volume, close_time, quote_volume, count,
             taker_buy_volume, taker_buy_quote_volume, ignore
             or just open_time, open, high, low, close, volume
Timestamps may be in s, ms or µs (Binance's spot files use µs from 2025); the unit is read from the
magnitude of the first row and every time is turned into ms. A file that cannot be read exactly raises
FeedError naming the line: a wrong candle is worse than none.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, repeat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from core.candles import MINUTE_MS, Candle, Tick

AGG_TRADES = "aggTrades"
KLINES = "klines"

AGG_TRADES_COLUMNS = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id",
                      "transact_time", "is_buyer_maker", "is_best_match")
KLINES_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
                  "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore")

_BOOLS = {"True": True, "true": True, "False": False, "false": False}
# The raw timestamps each unit covers: 1973 to 5138 in ms and µs, up to 5138 in s, so that every
# timestamp has exactly one reading.
UNIT_RANGES = {"s": (0, 10**11), "ms": (10**11, 10**14), "µs": (10**14, 10**17)}
_TO_MS = {"s": (1000, 1), "ms": (1, 1), "µs": (1, 1000)}  # (multiplier, divisor)
_CHUNK_CHARS = 1 << 18  # lines parsed at once on the fast path; about 3,500 aggTrades rows
MAX_LINE_BYTES = 4096  # a Binance CSV row is under 200 bytes: a longer line is not one, and is not read on


class FeedError(Exception):
    """A market-data file that cannot be read exactly: the file, the 1-based line, and what is wrong.

    Caller: stop and show it to the operator (`format()` gives FILE:LINE: error: MESSAGE); never
    trade or backtest on a file that raised this, since the candles would be wrong.
    """

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")

    def format(self) -> str:
        """The compiler-style form editors understand: FILE:LINE: error: MESSAGE."""
        return f"{self.path}:{self.line}: error: {self.message}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a Binance CSV holds and how: its kind, column count, first data line and time unit."""

    kind: str  # AGG_TRADES or KLINES
    columns: int
    first_data_line: int  # 1-based; lines before it are blank or the header
    time_unit: str  # "s", "ms" or "µs"


def detect_layout(path: str | Path) -> str:
    """Which Binance layout the CSV file at `path` has: "aggTrades" or "klines"."""
    return sniff(path).kind


def read_agg_trades(path: str | Path) -> Iterator[Tick]:
    """The ticks of a Binance aggTrades CSV, in file order; FeedError on any row that is not exact."""
    layout = sniff(path)
    if layout.kind != AGG_TRADES:
        raise FeedError(path, layout.first_data_line, "this is a klines file, not aggTrades")
    return _read_agg_trades(Path(path), layout)


def read_klines(path: str | Path) -> list[Candle]:
    """The candles of a Binance klines CSV as given (a missing minute stays missing); FeedError on a bad row.

    The 6-column layout has no quote volume, trade count or taker volumes: they are 0.
    """
    layout = sniff(path)
    with open(path, "rb") as file:
        return _kline_rows(text_lines(file, path), layout, path)


def text_lines(file: BinaryIO, path: str | Path) -> Iterator[str]:
    """The lines of a file open in binary, as text (a UTF-8 byte order mark dropped), read one bounded line
    at a time: a line over MAX_LINE_BYTES or not UTF-8 raises FeedError naming it, so a file of zeros,
    random bytes or /dev/zero ends at its first line instead of filling the memory."""
    for line_no, raw in enumerate(iter(lambda: file.readline(MAX_LINE_BYTES + 1), b""), start=1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise FeedError(path, line_no, f"the line is longer than {MAX_LINE_BYTES:,} bytes: not a Binance CSV row")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FeedError(path, line_no, "the line is not text (UTF-8): not a Binance CSV row") from None
        yield text.removeprefix("\ufeff") if line_no == 1 else text


def read_kline_lines(lines: Sequence[str], name: str | Path) -> list[Candle]:
    """`read_klines` over the lines of a file already in memory (one inside a zip); errors name `name`."""
    return _kline_rows(lines, sniff_lines(lines, name), name)


def _kline_rows(lines: Iterable[str], layout: Layout, name: str | Path) -> list[Candle]:
    if layout.kind != KLINES:
        raise FeedError(name, layout.first_data_line, "this is an aggTrades file, not klines")
    candles: list[Candle] = []
    for line_no, line in enumerate(lines, start=1):
        if line_no < layout.first_data_line or not line.strip():
            continue
        candle = _kline(line.rstrip("\r\n").split(","), layout, Path(name), line_no)
        if candles and candle.open_time_ms <= candles[-1].open_time_ms:
            raise FeedError(name, line_no, f"open_time {candle.open_time_ms} ms is not after the previous "
                            f"row's {candles[-1].open_time_ms} ms: the file is not sorted by time")
        candles.append(candle)
    return candles


class ReplayFeed:
    """Replays a Binance CSV file: ticks of an aggTrades file, or closed candles of a klines file.

    Items come at `speed` times real time (0 = as fast as possible), timed from the first item: a
    tick at its trade time, a candle when it closes (close_time_ms + 1). `sleep` and `monotonic` are
    injectable, so a worker can keep its schedule running while it waits and tests never sleep.
    Iterating again starts the file over.
    """

    def __init__(self, path: str | Path, speed: float = 0.0, *, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic):
        if not speed >= 0:
            raise ValueError(f"replay speed must be 0 or more, not {speed!r}")
        self.path = Path(path)
        self.speed = speed
        self.layout = detect_layout(path)
        self._sleep = sleep
        self._monotonic = monotonic
        self._start: tuple[float, int] | None = None  # (monotonic s, data ms) of the first item

    def __iter__(self) -> Iterator[Tick] | Iterator[Candle]:
        if self.layout == AGG_TRADES:
            items, event_ms = read_agg_trades(self.path), _tick_time_ms
        else:
            items, event_ms = iter(read_klines(self.path)), _candle_end_ms
        if not self.speed:
            return items
        return self._paced(items, event_ms)

    def replay_now_ms(self) -> int | None:
        """The data time the replay clock has reached; None before a paced replay's first item (or at speed 0)."""
        reached_ms = self._reached_ms()
        return None if reached_ms is None else round(reached_ms)

    def _reached_ms(self) -> float | None:
        if self._start is None:
            return None
        start_s, start_ms = self._start
        return start_ms + (self._monotonic() - start_s) * 1000 * self.speed

    def _paced(self, items, event_ms: Callable) -> Iterator:
        self._start = None
        reached_ms = -math.inf  # data time the clock is known to have reached; read the clock past it
        for item in items:
            due_ms = event_ms(item)
            if due_ms > reached_ms:
                if self._start is None:
                    self._start = (self._monotonic(), due_ms)
                reached_ms = self._reached_ms()
                if due_ms > reached_ms:
                    self._sleep((due_ms - reached_ms) / 1000 / self.speed)
                    reached_ms = due_ms
            yield item


def _tick_time_ms(tick: Tick) -> int:
    return tick.time_ms


def _candle_end_ms(candle: Candle) -> int:
    return candle.close_time_ms + 1


# -- sniffing -------------------------------------------------------------------------------------


def sniff(path: str | Path) -> Layout:
    """Layout, header and time unit of a file, from its first two non-blank lines; FeedError if unknown."""
    with open(path, "rb") as file:
        return sniff_lines(text_lines(file, path), path)


def sniff_lines(lines: Iterable[str], path: str | Path) -> Layout:
    """`sniff` over lines already open (a file inside a zip); errors name `path`."""
    header: list[str] | None = None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.rstrip("\r\n").split(",")]
        if header is None and not _is_integer(fields[0]):
            header = fields
            continue
        return _layout_of_row(path, line_no, fields)
    if header is None:
        raise FeedError(path, 1, "the file is empty")
    # A header and no rows: an empty file of a known layout.
    kind = {"agg_trade_id": AGG_TRADES, "open_time": KLINES}.get(header[0])
    if kind is None:
        raise FeedError(path, 1, f"unknown header {','.join(header)[:80]!r}: expected Binance aggTrades or klines")
    return Layout(kind, len(header), 2, "ms")


def _layout_of_row(path, line_no: int, fields: list[str]) -> Layout:
    if len(fields) in (7, 8) and fields[6] in _BOOLS:
        kind, time_field = AGG_TRADES, 5
    elif len(fields) in (6, 12):
        kind, time_field = KLINES, 0
    else:
        raise FeedError(path, line_no, f"{len(fields)} columns: neither Binance aggTrades (7 or 8 columns "
                        f"with true/false in the 7th) nor klines (6 or 12 columns)")
    raw = _integer(fields[time_field], (AGG_TRADES_COLUMNS if kind == AGG_TRADES else KLINES_COLUMNS)[time_field],
                   path, line_no)
    for unit, (lower, upper) in UNIT_RANGES.items():
        if lower <= raw < upper:
            return Layout(kind, len(fields), line_no, unit)
    raise FeedError(path, line_no, f"timestamp {raw} is not in s, ms or µs")


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def to_ms_factor(unit: str) -> float:
    """What a timestamp in `unit` is multiplied by to give ms."""
    multiplier, divisor = _TO_MS[unit]
    return multiplier / divisor


def _time_ms(raw: int, unit: str, path, line_no: int) -> int:
    """A raw timestamp of the file's unit in ms; FeedError if its magnitude says another unit."""
    lower, upper = UNIT_RANGES[unit]
    if not lower <= raw < upper:
        raise FeedError(path, line_no, f"timestamp {raw} is not in {unit} like the first row of the file")
    multiplier, divisor = _TO_MS[unit]
    return raw * multiplier // divisor


# -- aggTrades ------------------------------------------------------------------------------------


def _read_agg_trades(path: Path, layout: Layout) -> Iterator[Tick]:
    # Chained in C: no Python frame runs per tick, only one per chunk of lines.
    return chain.from_iterable(_agg_trade_chunks(path, layout))


def _agg_trade_chunks(path: Path, layout: Layout) -> Iterator[Iterator[Tick]]:
    state = _AggState(path, layout)
    with open(path, "rb") as file:
        for _ in range(layout.first_data_line - 1):
            file.readline(MAX_LINE_BYTES + 1)  # sniff has read these already
        line_no = layout.first_data_line
        for lines in _line_chunks(file, path, line_no):
            ticks = state.fast_chunk(lines)
            if ticks is None:  # something is off: find it (or accept an odd but valid chunk) row by row
                ticks = state.slow_chunk(lines, line_no)
            line_no += len(lines)
            yield ticks


def _line_chunks(file: BinaryIO, path, first_line_no: int) -> Iterator[list[str]]:
    """Whole lines of a file open in binary, as text, about _CHUNK_CHARS bytes at a time; a line longer
    than MAX_LINE_BYTES or not UTF-8 raises FeedError naming it (memory stays bounded)."""
    line_no, first = first_line_no, first_line_no == 1
    try:
        for rows in line_blocks(file, _CHUNK_CHARS):
            try:
                text = rows.decode("utf-8-sig" if first else "utf-8")
            except UnicodeDecodeError as exc:
                bad = line_no + rows.count(b"\n", 0, exc.start)
                raise FeedError(path, bad, "the line is not text (UTF-8): not a Binance CSV row") from None
            lines = text.splitlines(keepends=True)
            if len(lines) != rows.count(b"\n") + (not rows.endswith(b"\n")):  # a \r, \x0b, \u2028 ... inside
                lines = [line + "\n" for line in text.split("\n")]
                lines[-1] = lines[-1][:-1]
                if not lines[-1]:
                    lines.pop()
            first = False
            line_no += len(lines)
            yield lines
    except LineTooLong:
        raise FeedError(path, line_no, f"the line is longer than {MAX_LINE_BYTES:,} bytes: not a Binance CSV row") from None


class LineTooLong(Exception):
    """A line goes on past MAX_LINE_BYTES: the file is not a Binance CSV from there on."""


def line_blocks(file: BinaryIO, size: int) -> Iterator[bytes]:
    """The bytes of a file open in binary as blocks of whole lines, about `size` bytes each (the file's
    last line may lack its end); LineTooLong, after the lines before it, at a line over MAX_LINE_BYTES."""
    rest = b""
    while True:
        block = file.read(size)
        data = rest + block
        cut = len(data) if not block else data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
        if len(rest) > MAX_LINE_BYTES:
            raise LineTooLong
        if not block:
            return


class _AggState:
    """Parses aggTrades chunks, carrying the previous row's time and id across chunks."""

    def __init__(self, path: Path, layout: Layout):
        self.path = path
        self.layout = layout
        self.lower, self.upper = UNIT_RANGES[layout.time_unit]
        self.multiplier, self.divisor = _TO_MS[layout.time_unit]
        self.prev_time_ms = -1
        self.prev_id = -1
        fields = [("agg_trade_id", "i8"), ("price", "f8"), ("quantity", "f8"), ("first_trade_id", "i8"),
                  ("last_trade_id", "i8"), ("transact_time", "i8"), ("is_buyer_maker", "S6")]
        if layout.columns == 8:
            fields.append(("is_best_match", "S6"))  # 6 characters, so that "Falsey" cannot pass as "False"
        self.dtype = np.dtype(fields)

    def fast_chunk(self, lines: list[str]) -> Iterator[Tick] | None:
        """The ticks of a chunk of lines parsed at C speed, or None when any check fails."""
        if not lines[0].strip():  # blank lines (a file's end): the row-by-row path knows them
            return None
        try:
            rows = np.loadtxt(lines, delimiter=",", dtype=self.dtype, comments=None, quotechar=None, ndmin=1)
        except ValueError:
            return None
        ids, prices, qtys = rows["agg_trade_id"], rows["price"], rows["quantity"]
        first_ids, last_ids, raw_times = rows["first_trade_id"], rows["last_trade_id"], rows["transact_time"]
        makers = rows["is_buyer_maker"]
        is_maker = (makers == b"True") | (makers == b"true")
        valid = (is_maker | (makers == b"False") | (makers == b"false")).all()
        if self.layout.columns == 8:
            best = rows["is_best_match"]
            valid &= ((best == b"True") | (best == b"true") | (best == b"False") | (best == b"false")).all()
        times = raw_times if self.layout.time_unit == "ms" else raw_times * self.multiplier // self.divisor
        valid &= (raw_times.min() >= self.lower) & (raw_times.max() < self.upper)
        valid &= (ids[0] > self.prev_id) & (ids[1:] > ids[:-1]).all()
        valid &= (times[0] >= self.prev_time_ms) & (times[1:] >= times[:-1]).all()
        valid &= _positive_finite(prices) & _positive_finite(qtys) & (first_ids <= last_ids).all()
        if not valid:
            return None
        self.prev_id, self.prev_time_ms = int(ids[-1]), int(times[-1])
        # Lazily, so each tick is freed as soon as it is used: thousands of live ticks would wake the
        # garbage collector again and again. tuple.__new__ skips Tick.__new__'s Python frame.
        return map(tuple.__new__, repeat(Tick), zip(
            prices.tolist(), qtys.tolist(), times.tolist(), ids.tolist(), first_ids.tolist(),
            last_ids.tolist(), is_maker.tolist()))

    def slow_chunk(self, lines: list[str], first_line_no: int) -> list[Tick]:
        """The ticks of a chunk parsed row by row; FeedError at the first bad row."""
        ticks = []
        for line_no, line in enumerate(lines, start=first_line_no):
            if line.strip():
                ticks.append(self.row(line.rstrip("\r\n").split(","), line_no))
        return ticks

    def row(self, fields: list[str], line_no: int) -> Tick:
        path = self.path
        if len(fields) != self.layout.columns:
            raise FeedError(path, line_no, f"{len(fields)} columns instead of {self.layout.columns}: "
                            "the line is cut short or not an aggTrades row")
        agg_id = _integer(fields[0], "agg_trade_id", path, line_no)
        price = _positive(fields[1], "price", path, line_no)
        qty = _positive(fields[2], "quantity", path, line_no)
        first_id = _integer(fields[3], "first_trade_id", path, line_no)
        last_id = _integer(fields[4], "last_trade_id", path, line_no)
        raw_time = _integer(fields[5], "transact_time", path, line_no)
        is_maker = _boolean(fields[6], "is_buyer_maker", path, line_no)
        if self.layout.columns == 8:
            _boolean(fields[7], "is_best_match", path, line_no)
        if first_id > last_id:
            raise FeedError(path, line_no, f"first_trade_id {first_id} is after last_trade_id {last_id}")
        time_ms = _time_ms(raw_time, self.layout.time_unit, path, line_no)
        if time_ms < self.prev_time_ms:
            raise FeedError(path, line_no, f"transact_time {time_ms} ms is before the previous row's "
                            f"{self.prev_time_ms} ms: the file is not sorted by time")
        if agg_id <= self.prev_id:
            raise FeedError(path, line_no, f"agg_trade_id {agg_id} is not after the previous row's "
                            f"{self.prev_id}: the file is not sorted or repeats a trade")
        self.prev_id, self.prev_time_ms = agg_id, time_ms
        return Tick(price, qty, time_ms, agg_id, first_id, last_id, is_maker)


def _positive_finite(values: np.ndarray) -> bool:
    return bool(((values > 0) & (values < math.inf)).all())


# -- klines ---------------------------------------------------------------------------------------


def _kline(fields: list[str], layout: Layout, path: Path, line_no: int) -> Candle:
    if len(fields) != layout.columns:
        raise FeedError(path, line_no, f"{len(fields)} columns instead of {layout.columns}: "
                        "the line is cut short or not a klines row")
    open_ms = _time_ms(_integer(fields[0], "open_time", path, line_no), layout.time_unit, path, line_no)
    open_, high, low, close = (_positive(fields[i], KLINES_COLUMNS[i], path, line_no) for i in range(1, 5))
    volume = _non_negative(fields[5], "volume", path, line_no)
    if not low <= min(open_, close) <= max(open_, close) <= high:
        raise FeedError(path, line_no, f"open {fields[1]}, close {fields[4]} are not between low {fields[3]} "
                        f"and high {fields[2]}: the columns are mixed up")
    if open_ms % MINUTE_MS:
        raise FeedError(path, line_no, f"open_time {fields[0]} is not on a whole minute: not 1-minute klines")
    if layout.columns == 6:
        return Candle(open_ms, open_, high, low, close, volume, open_ms + MINUTE_MS - 1, 0.0, 0, 0.0, 0.0)
    close_ms = _time_ms(_integer(fields[6], "close_time", path, line_no), layout.time_unit, path, line_no)
    if layout.time_unit == "s":  # a close time in s names its whole last second, which ends at its last ms
        close_ms += 999
    if close_ms < open_ms:
        raise FeedError(path, line_no, f"close_time {close_ms} ms is before open_time {open_ms} ms")
    return Candle(open_ms, open_, high, low, close, volume, close_ms,
                  _non_negative(fields[7], "quote_volume", path, line_no),
                  _integer(fields[8], "count", path, line_no),
                  _non_negative(fields[9], "taker_buy_volume", path, line_no),
                  _non_negative(fields[10], "taker_buy_quote_volume", path, line_no))


# -- fields ---------------------------------------------------------------------------------------


def _integer(text: str, column: str, path, line_no: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise FeedError(path, line_no, f"{column} {text!r} is not a whole number") from None


def _number(text: str, column: str, path, line_no: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FeedError(path, line_no, f"{column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise FeedError(path, line_no, f"{column} {text!r} is not a finite number")
    return value


def _positive(text: str, column: str, path, line_no: int) -> float:
    value = _number(text, column, path, line_no)
    if value <= 0:
        raise FeedError(path, line_no, f"{column} {text!r} is not above 0")
    return value


def _non_negative(text: str, column: str, path, line_no: int) -> float:
    value = _number(text, column, path, line_no)
    if value < 0:
        raise FeedError(path, line_no, f"{column} {text!r} is negative")
    return value


def _boolean(text: str, column: str, path, line_no: int) -> bool:
    try:
        return _BOOLS[text]
    except KeyError:
        raise FeedError(path, line_no, f"{column} {text!r} is not true or false") from None

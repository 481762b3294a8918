"""Candle files are checked as DESIGN.md "Candles" says: one time unit per file, rows strictly increasing
and on whole minutes, a fixed column count; anything else is FILE:LINE: error: ..., in bounded memory
(1 GB of zeros, random bytes, /dev/zero), never a traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core.backtest import load_candles
from core.feeds import FeedError, read_agg_trades, read_klines
from tests.conftest import ROOT

GB = 1 << 30
MINUTE = 60_000
T0 = 1_516_423_980_000  # 2018-01-20 04:53 UTC, a whole minute


def row(time, price=1.0, columns=6):
    fields = [str(time), *[repr(price)] * 4, "1.0"]
    if columns == 12:
        fields += [str(time + MINUTE - 1), "1.0", "1", "0.5", "0.5", "0"]
    return ",".join(fields)


def peak_mb(command):
    """Run `command` and give (exit code, its output (stdout and stderr), its peak resident memory in MB),
    measured by os.wait4.
    Its address space is capped at 4 GB, so a reader that does not bound its memory fails here rather
    than taking the machine's."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 * GB, 4 * GB)))
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), output, usage.ru_maxrss / 1024


def command(candles, tmp_path):
    strategy = tmp_path / "s.txt"
    strategy.write_text("IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n")
    return [sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(candles), "--strategy",
            str(strategy), "--no-cache"]


def sparse(path, head: bytes = b"", size: int = GB):
    """A file of `size` bytes: `head`, then zeros (sparse: it costs no disk)."""
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(size)
    return path


@pytest.mark.parametrize("name, head, line, message", [
    ("zeros.csv", b"", 1, "the line is longer than 4,096 bytes: not a Binance CSV row"),
    ("random.csv", np.random.default_rng(5).bytes(16 << 20), 1, "not a Binance CSV row"),
    ("valid-then-zeros.csv", ("\n".join(row(T0 + i * MINUTE) for i in range(1000)) + "\n").encode(), 1001,
     "the line is longer than 4,096 bytes"),
])
def test_a_gigabyte_of_garbage_ends_with_file_line_error_in_bounded_memory(tmp_path, name, head, line, message):
    path = sparse(tmp_path / name, head)
    code, stderr, peak = peak_mb(command(path, tmp_path))
    assert code == 1 and stderr.startswith(f"{path}:{line}: error: ") and message in stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert peak < 250  # MB, for a file of 1,024 MB (the process itself takes about 100)


def test_dev_zero_is_refused_at_its_first_line(tmp_path):
    code, stderr, peak = peak_mb(command("/dev/zero", tmp_path))
    assert code == 1 and stderr == "/dev/zero:1: error: the line is longer than 4,096 bytes: not a Binance CSV row\n"
    assert peak < 250


@pytest.mark.parametrize("rows, line, message", [
    # Mixed ms and µs rows once gave a span "2018 to 50029".
    ([row(T0), row(T0 + MINUTE), row((T0 + 2 * MINUTE) * 1000)], 3, "is not in ms like the first row"),
    ([row(T0 // 1000), row(T0 // 1000 + 60), row(T0 + 2 * MINUTE)], 3, "is not in s like the first row"),
    ([row(T0), row(T0 + 30_000)], 2, "is not on a whole minute"),
    ([row(T0), row(T0 + MINUTE), row(T0 + MINUTE)], 3, "is not after the previous row's"),
    ([row(T0, columns=12), row(T0 + MINUTE, columns=6)], 2, "6 columns instead of 12"),
    ([row(T0), row(T0 + MINUTE) + ",1,2"], 2, "8 columns instead of 6"),
    ([row(T0), row(T0 + MINUTE), "\x00" * 5000], 3, "longer than 4,096 bytes"),
    ([row(T0), "\udcff"], 2, "not text (UTF-8)"),
])
def test_each_rule_of_a_candle_file_names_the_line_that_breaks_it(tmp_path, rows, line, message):
    path = tmp_path / "bad.csv"
    path.write_bytes("\n".join(rows).encode("utf-8", "surrogateescape") + b"\n")
    for read in (load_candles, read_klines):
        with pytest.raises(FeedError) as caught:
            read(path)
        assert caught.value.line == line and message in caught.value.message


def test_rows_of_many_blocks_read_as_fast_as_one_and_odd_but_right_files_still_read(tmp_path):
    times = T0 + np.arange(150_000, dtype=np.int64) * MINUTE  # more than one 8 MiB block of 12-column rows
    path = tmp_path / "big.csv"
    path.write_text("\n".join(row(int(t), columns=12) for t in times) + "\n")
    assert load_candles(path)["open_time_ms"].tolist() == times.tolist()
    odd = tmp_path / "odd.csv"  # a line of spaces and CRLF line ends: the fast parse doubts, the slow one reads it
    odd.write_bytes(f"{row(T0)}\r\n   \r\n{row(T0 + MINUTE)}\r\n".encode())
    assert load_candles(odd)["open_time_ms"].tolist() == [T0, T0 + MINUTE]


_valid_row = st.integers(0, 5).map(lambda k: row(T0 + k * MINUTE))
_line = st.one_of(_valid_row, st.text(max_size=30), st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
                  st.sampled_from(["", " ", "\r", "\x00", "1,2,3", row(T0 * 1000), row(T0 + 1)]))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_line, max_size=12), raw=st.binary(max_size=64), as_bytes=st.booleans())
def test_any_file_gives_valid_candles_or_a_feed_error(tmp_path_factory, lines, raw, as_bytes):
    path = tmp_path_factory.mktemp("any") / "any.csv"
    path.write_bytes(raw if as_bytes else "\n".join(lines).encode("utf-8", "surrogateescape"))
    try:
        candles = load_candles(path)
    except FeedError as exc:
        assert exc.line >= 1 and "\n" not in exc.format()
        return
    times = candles["open_time_ms"]
    assert np.all(np.diff(times) > 0) and np.all(times % MINUTE == 0)
    assert times.tolist() == [c.open_time_ms for c in read_klines(path)]


AGG_ROW = "13519807,0.00141342,23.00000000,15373518,15373518,{time},True,True"


def test_an_agg_trades_file_that_turns_to_zeros_ends_at_that_line_in_bounded_memory(tmp_path):
    rows = "\n".join(AGG_ROW.format(time=1_570_752_011_620 + i) for i in range(1000)).replace("13519807,", "{id},")
    head = "\n".join(line.format(id=13_519_807 + i) for i, line in enumerate(rows.splitlines())) + "\n"
    path = sparse(tmp_path / "agg.csv", head.encode())
    code, stderr, peak = peak_mb([sys.executable, str(ROOT / "omniwise.py"), "candles", "--agg-trades", str(path),
                                  "--out", str(tmp_path / "out.csv")])
    assert code == 1 and stderr == f"{path}:1001: error: the line is longer than 4,096 bytes: not a Binance CSV row\n"
    assert peak < 250


def test_an_agg_trades_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "agg.csv"
    rows = [AGG_ROW.format(time=1_570_752_011_620).encode(), b"1,\xff\xfe,2,3,4,5,True,True"]
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(FeedError) as caught:
        list(read_agg_trades(path))
    assert (caught.value.line, caught.value.message) == (2, "the line is not text (UTF-8): not a Binance CSV row")

"""Reading a strategy file as the worker reads it: the web app, `check` and `backtest --strategy` use the
same limits (no web or database imports here: a backtest starts fast)."""

from __future__ import annotations

import os
from pathlib import Path

from core.dsl import Diagnostic, StrategyError
from core.dsl.parser import MAX_CHARS

MAX_FILE_BYTES = 4 * MAX_CHARS  # UTF-8 takes at most 4 bytes a character: a larger file is surely too long


def read_within_limit(path: str | Path) -> str:
    """A strategy file's text, read as the worker reads it. StrategyError (one line) when the file is too
    large to be a strategy (not read at all: a 1 GB file costs one stat) or is not UTF-8 text (where its
    first bad byte is); OSError as opening it gives (FileNotFoundError when it is missing)."""
    size_bytes = os.stat(path).st_size
    if size_bytes > MAX_FILE_BYTES:
        raise StrategyError([Diagnostic(1, 1, f"the file is {size_bytes:,} bytes long; a strategy has at most "
                                              f"{MAX_CHARS:,} characters")])
    with open(path, "rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)  # the file may have grown since the stat
    if len(data) > MAX_FILE_BYTES:
        raise StrategyError([Diagnostic(1, 1, f"the file is over {MAX_FILE_BYTES:,} bytes long; a strategy has at "
                                              f"most {MAX_CHARS:,} characters")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise StrategyError([Diagnostic(data.count(b"\n", 0, exc.start) + 1, exc.start - line_start + 1,
                                        f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as "
                                        "UTF-8")]) from None

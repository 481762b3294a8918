"""Import a library without the pandas and polars support it builds when they are installed.

TA-Lib wraps its functions for pandas and polars when they are installed: every input here is a numpy
array, and importing pandas costs 0.3 to 1 s of every process start (the backtest's 0.8 s budget). pandas
is installed for the tests' independent reference.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def without_dataframes(name: str) -> ModuleType:
    """`import name` as if pandas and polars were not installed; a library already imported stays as it is."""
    blocked = [lib for lib in ("pandas", "polars") if lib not in sys.modules]
    for lib in blocked:
        sys.modules[lib] = None  # `import pandas` then fails as if pandas were not installed
    try:
        return importlib.import_module(name)
    finally:
        for lib in blocked:
            del sys.modules[lib]

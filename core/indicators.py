"""The indicators a strategy can name, computed by TA-Lib over float64 numpy arrays.

Every indicator returns an array as long as its inputs; NaN marks a value that is not defined yet
(the warm-up). `warmup` says how many candles an indicator needs before its value no longer depends
on where the history started: the lookback for windowed indicators, and enough candles for the
recursive ones (EMA, RSI, ATR, ADX, ...) to settle below the language's comparison tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from core.lean_imports import without_dataframes

talib = without_dataframes("talib")

MAX_PERIOD = 10_000
SERIES = ("open", "high", "low", "close", "volume")

# A recursive average forgets its starting point like (1 - alpha) ** k; 28 / alpha candles bring
# that below 1e-12, well under the 1e-10 relative tolerance comparisons use.
_SETTLE = 28


@dataclasses.dataclass(frozen=True)
class Param:
    """One argument of an indicator: name, default (None = required), allowed range, integer or not."""

    name: str
    default: float | None
    minimum: float
    maximum: float = MAX_PERIOD
    integer: bool = True


@dataclasses.dataclass(frozen=True)
class Indicator:
    """A named indicator: what it reads, what it takes, how to compute it and how long it warms up."""

    name: str
    summary: str
    params: tuple[Param, ...]
    inputs: tuple[str, ...]  # candle series it reads; a single "close" can be replaced by a source
    compute: Callable[..., np.ndarray]
    warmup: Callable[..., int]

    @property
    def takes_source(self) -> bool:
        """True when the first argument may name another series, e.g. SMA(VOLUME, 20)."""
        return self.inputs == ("close",)

    @property
    def usage(self) -> str:
        """How to write it, e.g. 'SMA([source,] period)'."""
        names = [p.name if p.default is None else f"{p.name}={p.default:g}" for p in self.params]
        if self.takes_source:
            names.insert(0, "[source]")
        return f"{self.name}({', '.join(names)})" if names else self.name


def _period(default: float | None = None, minimum: int = 2) -> tuple[Param, ...]:
    return (Param("period", default, minimum),)


def _recursive(alpha_of: Callable[[int], float]) -> Callable[[int], int]:
    return lambda n: int(_SETTLE / alpha_of(n)) + n


def _macd_warmup(fast: int, slow: int, signal: int) -> int:
    return _recursive(lambda n: 2 / (n + 1))(max(fast, slow)) + _recursive(lambda n: 2 / (n + 1))(signal)


def _macd(part: int) -> Callable[..., np.ndarray]:
    def compute(close: np.ndarray, fast: int, slow: int, signal: int) -> np.ndarray:
        return talib.MACD(close, fast, slow, signal)[part]

    return compute


def _bbands(part: int) -> Callable[..., np.ndarray]:
    def compute(close: np.ndarray, period: int, deviations: float) -> np.ndarray:
        return talib.BBANDS(close, period, deviations, deviations, 0)[part]

    return compute


def _stoch(part: int) -> Callable[..., np.ndarray]:
    def compute(high, low, close, k_period: int, k_smooth: int, d_period: int) -> np.ndarray:
        return talib.STOCH(high, low, close, k_period, k_smooth, 0, d_period, 0)[part]

    return compute


_EMA_ALPHA = lambda n: 2 / (n + 1)  # noqa: E731
_WILDER_ALPHA = lambda n: 1 / n  # noqa: E731
_MACD_PARAMS = (Param("fast", 12, 2), Param("slow", 26, 2), Param("signal", 9, 1))
_BB_PARAMS = (Param("period", 20, 2), Param("deviations", 2, 0.01, 10, integer=False))
_STOCH_PARAMS = (Param("k_period", 14, 1), Param("k_smooth", 3, 1), Param("d_period", 3, 1))
_HLC = ("high", "low", "close")

INDICATORS: dict[str, Indicator] = {
    ind.name: ind
    for ind in (
        Indicator("SMA", "simple moving average", _period(minimum=1), ("close",),
                  lambda x, n: talib.SMA(x, n), lambda n: n - 1),
        Indicator("EMA", "exponential moving average", _period(minimum=1), ("close",),
                  lambda x, n: talib.EMA(x, n), _recursive(_EMA_ALPHA)),
        Indicator("WMA", "weighted moving average", _period(minimum=1), ("close",),
                  lambda x, n: talib.WMA(x, n), lambda n: n - 1),
        Indicator("RSI", "relative strength index, 0..100", _period(14), ("close",),
                  lambda x, n: talib.RSI(x, n), _recursive(_WILDER_ALPHA)),
        Indicator("ROC", "rate of change in percent", _period(10, minimum=1), ("close",),
                  lambda x, n: talib.ROC(x, n), lambda n: n),
        Indicator("MACD", "MACD line (fast EMA - slow EMA)", _MACD_PARAMS, ("close",), _macd(0), _macd_warmup),
        Indicator("MACD_SIGNAL", "MACD signal line", _MACD_PARAMS, ("close",), _macd(1), _macd_warmup),
        Indicator("MACD_HIST", "MACD histogram (line - signal)", _MACD_PARAMS, ("close",), _macd(2), _macd_warmup),
        Indicator("BB_UPPER", "upper Bollinger band", _BB_PARAMS, ("close",), _bbands(0), lambda n, d: n - 1),
        Indicator("BB_MIDDLE", "middle Bollinger band", _BB_PARAMS, ("close",), _bbands(1), lambda n, d: n - 1),
        Indicator("BB_LOWER", "lower Bollinger band", _BB_PARAMS, ("close",), _bbands(2), lambda n, d: n - 1),
        Indicator("ATR", "average true range", _period(14, minimum=1), _HLC,
                  lambda h, l, c, n: talib.ATR(h, l, c, n), _recursive(_WILDER_ALPHA)),
        Indicator("ADX", "average directional index, 0..100", _period(14), _HLC,
                  lambda h, l, c, n: talib.ADX(h, l, c, n), lambda n: 2 * _recursive(_WILDER_ALPHA)(n)),
        Indicator("CCI", "commodity channel index", _period(14), _HLC,
                  lambda h, l, c, n: talib.CCI(h, l, c, n), lambda n: n - 1),
        Indicator("MFI", "money flow index, 0..100", _period(14), _HLC + ("volume",),
                  lambda h, l, c, v, n: talib.MFI(h, l, c, v, n), lambda n: n),
        Indicator("STOCH_K", "slow stochastic %K", _STOCH_PARAMS, _HLC, _stoch(0),
                  lambda k, s, d: k + s),
        Indicator("STOCH_D", "slow stochastic %D", _STOCH_PARAMS, _HLC, _stoch(1),
                  lambda k, s, d: k + s + d),
        # OBV is a running total: its level depends on where the history starts, so only its changes
        # (crosses, comparisons with its own averages) mean the same live and in a backtest.
        Indicator("OBV", "on-balance volume", (), ("close", "volume"),
                  lambda c, v: talib.OBV(c, v), lambda: 0),
    )
}

# Names of candle series, as the language spells them.
SERIES_NAMES = tuple(s.upper() for s in SERIES)


def compute(name: str, series: Mapping[str, np.ndarray], args: tuple[float, ...],
            source: np.ndarray | None = None) -> np.ndarray:
    """Compute indicator `name` with `args` over the candle `series` (or over `source` if given)."""
    ind = INDICATORS[name]
    inputs = [source] if source is not None else [series[s] for s in ind.inputs]
    values = [int(a) if p.integer else float(a) for p, a in zip(ind.params, args)]
    return ind.compute(*inputs, *values)

"""Every indicator's numbers against reference formulas written out here in plain Python and numpy.

TA-Lib is the implementation; the references below are the textbook definitions (Wilder for RSI, ATR
and ADX; Bollinger with the population deviation; Lane's slow stochastic), written independently of
it. Windowed indicators must match at every candle, NaN included. Recursive ones (EMA, RSI, ATR, ADX,
MACD) depend on their seed, which TA-Lib chooses in its own way: they must match once the
indicator's declared warm-up has passed, which is exactly the promise `warmup` makes.
"""

from __future__ import annotations

import numpy as np
import pytest

from core import indicators
from core.dsl import compile_strategy
from core.indicators import INDICATORS
from tests.conftest import SHARED_DATA

CANDLES_CSV = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
N = 3000
RTOL = 1e-9


@pytest.fixture(scope="module")
def real():
    """3,000 real 1-minute ETHBTC candles, read with numpy alone."""
    rows = np.loadtxt(CANDLES_CSV, delimiter=",", skiprows=1, max_rows=N, dtype=np.float64)
    return {name: np.ascontiguousarray(rows[:, i + 1]) for i, name in enumerate(indicators.SERIES)}


# -- references -------------------------------------------------------------------------------------

def nans(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def ref_sma(x, n):
    out = nans(len(x))
    for i in range(n - 1, len(x)):
        out[i] = sum(x[i - n + 1:i + 1]) / n
    return out


def ref_wma(x, n):
    weights = np.arange(1, n + 1, dtype=np.float64)
    out = nans(len(x))
    for i in range(n - 1, len(x)):
        out[i] = float(np.dot(x[i - n + 1:i + 1], weights)) / weights.sum()
    return out


def ref_ema(x, n, first=0):
    """alpha = 2 / (n + 1), seeded with the mean of the first n defined values (from index `first`)."""
    alpha = 2 / (n + 1)
    out = nans(len(x))
    start = first + n - 1
    out[start] = np.mean(x[first:start + 1])
    for i in range(start + 1, len(x)):
        out[i] = alpha * x[i] + (1 - alpha) * out[i - 1]
    return out


def ref_wilder(x, n, first):
    """Wilder's smoothing (alpha = 1 / n), seeded with the mean of n values from index `first`."""
    out = nans(len(x))
    start = first + n - 1
    out[start] = np.mean(x[first:start + 1])
    for i in range(start + 1, len(x)):
        out[i] = (out[i - 1] * (n - 1) + x[i]) / n
    return out


def ref_rsi(close, n):
    change = np.concatenate([[np.nan], np.diff(close)])
    gain = ref_wilder(np.where(change > 0, change, 0.0), n, 1)
    loss = ref_wilder(np.where(change < 0, -change, 0.0), n, 1)
    return 100 * gain / (gain + loss)


def ref_roc(close, n):
    out = nans(len(close))
    out[n:] = (close[n:] / close[:-n] - 1) * 100
    return out


def ref_macd(close, fast, slow, signal):
    line = ref_ema(close, fast) - ref_ema(close, slow)
    first = slow - 1
    sig = ref_ema(line, signal, first)
    return line, sig, line - sig


def ref_bbands(close, n, k):
    mid, width = nans(len(close)), nans(len(close))
    for i in range(n - 1, len(close)):
        window = close[i - n + 1:i + 1]
        mid[i] = window.mean()
        width[i] = k * np.sqrt(((window - window.mean()) ** 2).mean())  # population deviation
    return mid + width, mid, mid - width


def true_range(high, low, close):
    tr = nans(len(close))
    for i in range(1, len(close)):
        tr[i] = max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
    return tr


def ref_atr(high, low, close, n):
    return ref_wilder(true_range(high, low, close), n, 1)


def ref_adx(high, low, close, n):
    up = np.concatenate([[np.nan], np.diff(high)])
    down = np.concatenate([[np.nan], -np.diff(low)])
    plus_dm = np.where((up > down) & (up > 0), up, 0.0)
    minus_dm = np.where((down > up) & (down > 0), down, 0.0)
    tr = ref_wilder(true_range(high, low, close), n, 1)
    plus_di = 100 * ref_wilder(plus_dm, n, 1) / tr
    minus_di = 100 * ref_wilder(minus_dm, n, 1) / tr
    dx = 100 * np.abs(plus_di - minus_di) / (plus_di + minus_di)
    return ref_wilder(dx, n, n)


def ref_cci(high, low, close, n):
    typical = (high + low + close) / 3
    out = nans(len(close))
    for i in range(n - 1, len(close)):
        window = typical[i - n + 1:i + 1]
        mean_deviation = np.abs(window - window.mean()).mean()
        out[i] = (typical[i] - window.mean()) / (0.015 * mean_deviation)
    return out


def ref_mfi(high, low, close, volume, n):
    typical = (high + low + close) / 3
    flow = typical * volume
    out = nans(len(close))
    # Prices have 8 decimals: two typical prices within rounding noise of each other are equal (a tie
    # counts on neither side), whatever order the float additions happened in.
    change = np.concatenate([[0.0], np.diff(typical)])
    change[np.abs(change) <= 1e-12 * typical] = 0.0
    for i in range(n, len(close)):
        rising = sum(flow[j] for j in range(i - n + 1, i + 1) if change[j] > 0)
        falling = sum(flow[j] for j in range(i - n + 1, i + 1) if change[j] < 0)
        out[i] = 100 * rising / (rising + falling)
    return out


def ref_stoch(high, low, close, k_period, k_smooth, d_period):
    fast_k = nans(len(close))
    for i in range(k_period - 1, len(close)):
        lowest, highest = low[i - k_period + 1:i + 1].min(), high[i - k_period + 1:i + 1].max()
        fast_k[i] = 0.0 if highest == lowest else 100 * (close[i] - lowest) / (highest - lowest)
    slow_k = nans(len(close))
    slow_k[k_period - 1:] = ref_sma(fast_k[k_period - 1:], k_smooth)
    slow_d = nans(len(close))
    slow_d[k_period - 1:] = ref_sma(slow_k[k_period - 1:], d_period)
    slow_k[np.isnan(slow_d)] = np.nan  # TA-Lib starts both lines where %D starts
    return slow_k, slow_d


def ref_obv(close, volume):
    out = np.empty(len(close))
    out[0] = volume[0]
    for i in range(1, len(close)):
        step = volume[i] if close[i] > close[i - 1] else -volume[i] if close[i] < close[i - 1] else 0.0
        out[i] = out[i - 1] + step
    return out


# name, args, reference over the candles, recursive (compared only after the warm-up)
CASES = [
    ("SMA", (20,), lambda c: ref_sma(c["close"], 20), False),
    ("SMA", (3,), lambda c: ref_sma(c["close"], 3), False),
    ("WMA", (10,), lambda c: ref_wma(c["close"], 10), False),
    ("ROC", (10,), lambda c: ref_roc(c["close"], 10), False),
    ("BB_UPPER", (20, 2), lambda c: ref_bbands(c["close"], 20, 2)[0], False),
    ("BB_MIDDLE", (20, 2), lambda c: ref_bbands(c["close"], 20, 2)[1], False),
    ("BB_LOWER", (20, 2), lambda c: ref_bbands(c["close"], 20, 2)[2], False),
    ("BB_UPPER", (10, 1.5), lambda c: ref_bbands(c["close"], 10, 1.5)[0], False),
    ("CCI", (14,), lambda c: ref_cci(c["high"], c["low"], c["close"], 14), False),
    ("MFI", (14,), lambda c: ref_mfi(c["high"], c["low"], c["close"], c["volume"], 14), False),
    ("STOCH_K", (14, 3, 3), lambda c: ref_stoch(c["high"], c["low"], c["close"], 14, 3, 3)[0], False),
    ("STOCH_D", (14, 3, 3), lambda c: ref_stoch(c["high"], c["low"], c["close"], 14, 3, 3)[1], False),
    ("STOCH_K", (5, 2, 4), lambda c: ref_stoch(c["high"], c["low"], c["close"], 5, 2, 4)[0], False),
    ("STOCH_D", (5, 2, 4), lambda c: ref_stoch(c["high"], c["low"], c["close"], 5, 2, 4)[1], False),
    ("OBV", (), lambda c: ref_obv(c["close"], c["volume"]), False),
    ("EMA", (9,), lambda c: ref_ema(c["close"], 9), True),
    ("EMA", (21,), lambda c: ref_ema(c["close"], 21), True),
    ("RSI", (14,), lambda c: ref_rsi(c["close"], 14), True),
    ("RSI", (7,), lambda c: ref_rsi(c["close"], 7), True),
    ("ATR", (14,), lambda c: ref_atr(c["high"], c["low"], c["close"], 14), True),
    ("ADX", (14,), lambda c: ref_adx(c["high"], c["low"], c["close"], 14), True),
    ("ADX", (10,), lambda c: ref_adx(c["high"], c["low"], c["close"], 10), True),
    ("MACD", (12, 26, 9), lambda c: ref_macd(c["close"], 12, 26, 9)[0], True),
    ("MACD_SIGNAL", (12, 26, 9), lambda c: ref_macd(c["close"], 12, 26, 9)[1], True),
    ("MACD_HIST", (12, 26, 9), lambda c: ref_macd(c["close"], 12, 26, 9)[2], True),
    ("MACD_SIGNAL", (5, 13, 4), lambda c: ref_macd(c["close"], 5, 13, 4)[1], True),
]


def test_every_indicator_has_a_reference_case():
    assert {name for name, *_ in CASES} == set(INDICATORS)


@pytest.mark.parametrize("name, args, reference, is_recursive", CASES,
                         ids=[f"{name}{args}" for name, args, *_ in CASES])
def test_indicator_matches_its_reference_formula(real, name, args, reference, is_recursive):
    got = indicators.compute(name, real, args)
    expected = reference(real)
    assert got.shape == expected.shape
    # Relative to the indicator's own scale: values that cross zero (MACD, ROC) or sit at 0 (STOCH)
    # carry rounding noise that no relative tolerance per value can judge.
    atol = RTOL * np.nanmax(np.abs(expected))
    if is_recursive:
        start = INDICATORS[name].warmup(*args)
        assert start < N - 500, "the sample must reach well past the warm-up"
        np.testing.assert_allclose(got[start:], expected[start:], rtol=RTOL, atol=atol)
    else:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=atol)


def test_bollinger_bands_are_ordered_and_symmetric_about_the_middle(real):
    upper, middle, lower = (indicators.compute(n, real, (20, 2)) for n in ("BB_UPPER", "BB_MIDDLE", "BB_LOWER"))
    defined = ~np.isnan(middle)
    assert (upper[defined] > lower[defined]).any()
    assert (upper[defined] >= middle[defined]).all() and (middle[defined] >= lower[defined]).all()


def test_macd_histogram_is_the_line_minus_the_signal(real):
    line, signal, hist = (indicators.compute(n, real, (12, 26, 9)) for n in ("MACD", "MACD_SIGNAL", "MACD_HIST"))
    defined = ~np.isnan(hist)
    np.testing.assert_allclose(hist[defined], (line - signal)[defined], rtol=1e-12, atol=1e-15)
    assert not np.allclose(signal[defined], hist[defined])


# Warm-ups written out by hand. A recursive average forgets its seed like (1 - alpha) ** k and needs
# 28 / alpha candles for that to fall below 1e-12, plus its own period to be defined at all.
@pytest.mark.parametrize("name, args, expected", [
    ("SMA", (20,), 19),
    ("WMA", (10,), 9),
    ("ROC", (10,), 10),
    ("BB_UPPER", (20, 2), 19),
    ("CCI", (14,), 13),
    ("MFI", (14,), 14),
    ("STOCH_K", (14, 3, 3), 17),
    ("STOCH_D", (14, 3, 3), 20),
    ("OBV", (), 0),
    ("EMA", (9,), 28 * 10 // 2 + 9),  # alpha 2/10
    ("RSI", (14,), 28 * 14 + 14),  # Wilder: alpha 1/14
    ("ATR", (14,), 28 * 14 + 14),
    ("ADX", (14,), 2 * (28 * 14 + 14)),  # two Wilder averages in a row: the DI's, then the DX's
    ("MACD_SIGNAL", (12, 26, 9), (28 * 27 // 2 + 26) + (28 * 10 // 2 + 9)),  # slow EMA, then the signal's EMA
])
def test_declared_warmups(name, args, expected):
    assert INDICATORS[name].warmup(*args) == expected


def _start_independent_from(values_full, values_late, offset, warmup, rtol):
    """Compare the full history's values with those computed from candle `offset` on, past the warm-up."""
    tail = offset + warmup
    np.testing.assert_allclose(values_late[warmup:], values_full[tail:], rtol=rtol, atol=0)


@pytest.mark.parametrize("name, args", [(name, args) for name, args, _, is_recursive in CASES if is_recursive])
def test_after_its_warmup_a_value_no_longer_depends_on_where_history_started(real, name, args):
    warmup = INDICATORS[name].warmup(*args)
    full = indicators.compute(name, real, args)
    for offset in (1, 37, 500):
        late = indicators.compute(name, {k: np.ascontiguousarray(v[offset:]) for k, v in real.items()}, args)
        # The module's promise: the seed's weight is below 1e-12, well under the comparisons' 1e-10.
        _start_independent_from(full, late, offset, warmup, rtol=1e-12)


def test_nested_warmup_adds_the_inner_indicators_warmup():
    policy = compile_strategy("IF EMA(RSI(14), 9) > 50 THEN BUY")
    assert policy.warmup == (28 * 14 + 14) + (28 * 10 // 2 + 9)
    assert policy.window == policy.warmup + 2


def test_live_window_decides_as_the_backtest_for_nested_indicators(real):
    """The worker decides over its last `window` candles; the backtest over all of them: same answers."""
    # RSI(50)'s own warm-up is far longer than the 300-candle minimum window, so a window that
    # forgot it would start the RSI cold and decide differently from the full history.
    policy = compile_strategy("IF EMA(RSI(50), 9) > 50 THEN BUY\nIF EMA(RSI(50), 9) < 50 THEN SELL\n")
    assert policy.window < N - 1000
    everything = policy.decide_all(real)
    disagreements = [t for t in range(policy.window, N, 7)
                     if int(policy.decide({k: v[:t + 1] for k, v in real.items()}).action) != int(everything[t])]
    assert disagreements == []

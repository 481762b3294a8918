"""Rules -> one compiled policy that decides BUY / SELL / SHORT / HOLD over numpy candle arrays.

The policy is a flat program: every distinct sub-expression of every rule becomes one step, computed
once per evaluation over whole arrays. The same object decides the newest candle for the live worker
(`decide`) and every candle of a history for the backtest and the editor preview (`decide_all`), so
they cannot disagree.

Timeframes (DESIGN.md "Timeframes"): the policy always takes 1-minute candles. With `TIMEFRAME tf` the
rules are evaluated on the closed candles of `tf` built from them (core.timeframes), and each window's
decision belongs to its last minute present; the other minutes get no decision. A step is computed in
one timeframe (its context); `value@tf` computes `value` on `tf` candles and reads, for each candle of its
context, the last `tf` candle closed by the end of that candle.

Semantics (DESIGN.md): rules are tried top to bottom and the first true rule gives the action, none
true gives HOLD. NaN marks an undefined value (warm-up, division by zero) and makes every comparison
that uses it false. Two values equal to within a relative 1e-10 compare equal, so rounding noise in
an indicator never decides a trade (and a live window and a full history agree).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from core import indicators, timeframes

from . import sweeps
from .errors import Diagnostic, StrategyError
from .nodes import (Action, All, Any, Arithmetic, AtTimeframe, Compare, Crosses, Indicator, Negate, Not, Number,
                    Rule, Series)
from .parser import parse_program
from .risk import Risk
from .timeframe import name_of

REL_TOL = 1e-10
MIN_WINDOW = 300  # minutes the live decision looks at, at least
MAX_WINDOW = 20_000  # minutes of candles always kept (the database's retention keeps these too)
MAX_LOOKBACK_MINUTES = 366 * 1440  # the live window's limit: a year of minutes (about 50 MB of arrays)
MINUTE_MS = 60_000

Candles = Mapping[str, np.ndarray]  # "open", "high", "low", "close", "volume" -> float64 arrays, "open_time_ms"
Step = Callable[[list, "_Frames"], object]


class _Frames:
    """The candles of every timeframe a policy reads over one history of minutes, each built once."""

    def __init__(self, minutes: Candles, last_is_closed: bool = False):
        self.minutes = minutes
        self.last_is_closed = last_is_closed
        self._frames: dict[int, timeframes.Frame] = {}

    def frame(self, tf: int) -> timeframes.Frame:
        if tf not in self._frames:
            if "open_time_ms" not in self.minutes:
                raise ValueError("candles without open_time_ms cannot be read on timeframes")
            self._frames[tf] = timeframes.build_frame(self.minutes, tf, self.last_is_closed)
        return self._frames[tf]

    def candles(self, tf: int) -> Candles:
        if tf == 1:
            return self.minutes
        return self.frame(tf).candles

    def length(self, tf: int) -> int:
        return len(self.minutes["close"]) if tf == 1 else len(self.frame(tf))


@dataclasses.dataclass(frozen=True)
class Decision:
    """The policy's answer for one candle: the action and the 0-based index of the rule that fired."""

    action: Action
    rule_index: int | None  # None when no rule was true (HOLD)


class Policy:
    """A compiled strategy. Build with `compile_strategy`; immutable and safe to share.

    Raises StrategyError (at the rule's line) should compiling a rule fail in a way nobody foresaw.
    """

    def __init__(self, rules: list[Rule], text: str, risk: Risk | None = None, timeframe: int = 1):
        self.rules = tuple(rules)
        self.text = text
        self.risk = risk if risk is not None else Risk()
        self.timeframe = timeframe  # minutes of the candles the rules decide on
        self.version = hashlib.sha256(text.encode()).hexdigest()[:12]
        self._steps: list[Step] = []
        self._slots: dict[object, int] = {}
        self._rule_slots: list[int] = []
        self._indicator_nodes: dict[int, tuple] = {}  # slot -> (node, timeframe), for decide_all's indicator_cache
        self.timeframes = {timeframe}  # every timeframe a step is computed in
        warmups = [0]
        for rule in self.rules:
            try:
                self._rule_slots.append(self._compile(rule.condition, timeframe))
                warmups.append(lookback_minutes(rule.condition, timeframe))
            except Exception as exc:  # a compiler bug must refuse the rule, never crash the caller
                raise StrategyError([Diagnostic(rule.line, 1, f"this rule could not be compiled "
                                                              f"({type(exc).__name__}); simplify it")]) from exc
        self._actions = np.array([int(rule.action) for rule in self.rules], dtype=np.int8)
        # Minutes of history a decision depends on (the ATR of the levels too).
        self.warmup = max(warmups + [lookback_minutes(Indicator("ATR", (float(n),)), timeframe)
                                     for n in self.risk.atr_periods])
        # The live decision needs the warm-up plus one previous candle for CROSSES, and whole windows of
        # the longest timeframe (its first one may start before the window does).
        slack = 0 if self.is_minutely else max(self.timeframes)
        self.window = min(max(self.warmup + 2 * timeframe + slack, MIN_WINDOW), MAX_LOOKBACK_MINUTES)

    @property
    def has_short(self) -> bool:
        """True when a rule can answer SHORT (a broker that cannot short refuses such a strategy)."""
        return any(rule.action == Action.SHORT for rule in self.rules)

    def __repr__(self) -> str:
        tf = "" if self.timeframe == 1 else f", timeframe {name_of(self.timeframe)}"
        return f"<Policy {self.version}: {len(self.rules)} rules{tf}, window {self.window}>"

    @property
    def timeframe_name(self) -> str:
        """The strategy's timeframe as Binance writes it, e.g. '15m'."""
        return name_of(self.timeframe)

    @property
    def is_minutely(self) -> bool:
        """True when every step is computed on 1-minute candles: the minutes are the strategy's candles."""
        return self.timeframes == {1}

    def closes_window(self, open_time_ms: int) -> bool:
        """True when the minute opened at `open_time_ms` is the last minute of a strategy-timeframe window."""
        return (open_time_ms + MINUTE_MS) % (self.timeframe * MINUTE_MS) == 0

    def window_open_ms(self, open_time_ms: int) -> int:
        """Open time of the strategy-timeframe window the minute opened at `open_time_ms` belongs to."""
        return open_time_ms - open_time_ms % (self.timeframe * MINUTE_MS)

    # -- deciding -------------------------------------------------------------------------------

    def fired_rules(self, candles: Candles) -> np.ndarray:
        """For every candle of the strategy's timeframe (every minute without TIMEFRAME), the index of the
        first true rule, or -1 when none is true."""
        frames = _Frames(candles)
        fired = np.full(frames.length(self.timeframe), -1, dtype=np.int16)
        if not self.rules or len(fired) == 0:
            return fired
        values = self._evaluate(frames)
        # Walk the rules bottom-up so that the first true rule is the one left standing.
        for index in range(len(self.rules) - 1, -1, -1):
            np.copyto(fired, index, where=values[self._rule_slots[index]])
        return fired

    def decide_all(self, candles: Candles, indicator_cache: dict | None = None) -> np.ndarray:
        """The action (an Action value, int8) for every minute of a history: HOLD on minutes that decide
        nothing (see `decide_minutes`).

        `indicator_cache` keeps indicator values between calls over the same candles (a sweep's
        combinations share their averages); whoever passes it makes sure the candles are the same.
        """
        return self.decide_minutes(candles, indicator_cache)[0]

    def decide_minutes(self, candles: Candles, indicator_cache: dict | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """(action of every minute, which minutes decide): a minute decides when it is the last minute
        present of a closed strategy-timeframe window. The mask is None when every minute decides."""
        n = len(candles["close"])
        actions = np.full(n, Action.HOLD, dtype=np.int8)
        if not self.rules or n == 0:
            return actions, None
        frames = _Frames(candles)
        values = self._evaluate(frames, indicator_cache)
        if self.timeframe == 1:
            for index in range(len(self.rules) - 1, -1, -1):  # bottom-up: the first true rule is written last
                np.copyto(actions, self._actions[index], where=values[self._rule_slots[index]])
            return actions, None
        frame = frames.frame(self.timeframe)
        window_actions = np.full(len(frame), Action.HOLD, dtype=np.int8)
        for index in range(len(self.rules) - 1, -1, -1):
            np.copyto(window_actions, self._actions[index], where=values[self._rule_slots[index]])
        actions[frame.last_minute] = window_actions
        decided = np.zeros(n, dtype=bool)
        decided[frame.last_minute] = True
        return actions, decided

    def atr_by_minute(self, candles: Candles) -> dict[int, np.ndarray]:
        """ATR(n) of the strategy's timeframe for every period the levels use, at each deciding minute
        (the window that closed there; NaN on other minutes)."""
        if self.timeframe == 1:
            return {n: indicators.compute("ATR", candles, (float(n),)) for n in self.risk.atr_periods}
        frame = timeframes.build_frame(candles, self.timeframe)
        out = {}
        for n in self.risk.atr_periods:
            values = np.full(len(candles["close"]), np.nan)
            values[frame.last_minute] = indicators.compute("ATR", frame.candles, (float(n),))
            out[n] = values
        return out

    def atr_now(self, candles: Candles) -> dict[int, float]:
        """ATR(n) of the strategy-timeframe window of the newest minute, the one just decided (also when a later
        minute closed it), over the live window, for each level period."""
        if not self.risk.atr_periods or len(candles["close"]) == 0:
            return {}
        recent = self._recent(candles)
        if self.timeframe == 1:
            return {n: float(indicators.compute("ATR", recent, (float(n),))[-1]) for n in self.risk.atr_periods}
        frame = timeframes.build_frame(recent, self.timeframe, last_is_closed=True)  # the window just decided
        return {n: float(indicators.compute("ATR", frame.candles, (float(n),))[-1]) for n in self.risk.atr_periods}

    def _evaluate(self, frames: _Frames, indicator_cache: dict | None = None) -> list:
        """Every step's value over the candles, in slot order."""
        values: list = [None] * len(self._steps)
        with np.errstate(all="ignore"):
            for slot, step in enumerate(self._steps):
                key = self._indicator_nodes.get(slot) if indicator_cache is not None else None
                value = None if key is None else indicator_cache.get(key)
                if value is None:
                    value = step(values, frames)
                    if key is not None:
                        indicator_cache[key] = value  # the cache may decline to keep it (a memory limit)
                values[slot] = value
        return values

    def _recent(self, candles: Candles) -> dict[str, np.ndarray]:
        """The last `window` minutes; with timeframes, a history cut there is cut further to start on a window
        of the longest timeframe, so that no candle is built from part of its window. A shorter history is
        all there is, and is read whole, as the backtest reads it."""
        if len(candles["close"]) <= self.window:
            return candles
        recent = {name: series[-self.window:] for name, series in candles.items()}
        if self.is_minutely:
            return recent
        longest_ms = max(self.timeframes) * MINUTE_MS
        times = recent["open_time_ms"]
        first = int(times[0])
        if first % longest_ms:
            start = int(np.searchsorted(times, first - first % longest_ms + longest_ms))
            recent = {name: series[start:] for name, series in recent.items()}
        return recent

    def decide(self, candles: Candles, is_closed: bool = False) -> Decision | None:
        """The decision for the strategy-timeframe window of the newest minute, computed over the last
        `window` minutes; None when that window is still open. The window is closed when the newest minute
        is its last one, or when `is_closed` says a later minute has arrived (the caller knows)."""
        if len(candles["close"]) == 0:
            return Decision(Action.HOLD, None)
        if self.timeframe > 1 and not is_closed and not self.closes_window(int(candles["open_time_ms"][-1])):
            return None
        recent = self._recent(candles)
        if len(recent["close"]) == 0:  # the window holds fewer minutes than one window of the longest timeframe
            return Decision(Action.HOLD, None)
        frames = _Frames(recent, last_is_closed=True)
        if frames.length(self.timeframe) == 0 or not self.rules:
            return Decision(Action.HOLD, None)
        values = self._evaluate(frames)
        for index in range(len(self.rules)):
            if _last(values[self._rule_slots[index]]):
                return Decision(self.rules[index].action, index)
        return Decision(Action.HOLD, None)

    # -- compiling ------------------------------------------------------------------------------

    def _compile(self, node, tf: int) -> int:
        """Add the steps computing `node` on `tf` candles (once per distinct node and timeframe) and return
        its slot."""
        key = (node, tf) if not isinstance(node, Number) else node  # a number is the same in every timeframe
        if key in self._slots:
            return self._slots[key]
        self.timeframes.add(tf)
        step = self._step(node, tf)
        self._steps.append(step)
        self._slots[key] = len(self._steps) - 1
        if isinstance(node, Indicator):
            self._indicator_nodes[self._slots[key]] = (node, tf)
        return self._slots[key]

    def _difference(self, left, right, tf: int) -> int:
        """The slot of (left − right, tolerance), shared by every comparison of the same two values."""
        key = ("difference", left, right, tf)
        if key not in self._slots:
            a, b = self._compile(left, tf), self._compile(right, tf)
            self._steps.append(lambda values, frames: _difference(values[a], values[b]))
            self._slots[key] = len(self._steps) - 1
        return self._slots[key]

    def _step(self, node, tf: int) -> Step:
        match node:
            case Number(value=value):
                constant = np.float64(value)
                return lambda values, frames: constant
            case Series(name=name):
                return lambda values, frames: frames.candles(tf)[name]
            case Indicator(name=name, args=args, source=source):
                if source is None:
                    return lambda values, frames: indicators.compute(name, frames.candles(tf), args)
                src = self._compile(source, tf)
                return lambda values, frames: indicators.compute(
                    name, frames.candles(tf), args,
                    np.ascontiguousarray(np.broadcast_to(values[src], frames.length(tf)), dtype=np.float64))
            case AtTimeframe(value=inner, minutes=minutes):
                a = self._compile(inner, minutes)
                if minutes == tf:
                    return lambda values, frames: values[a]
                return lambda values, frames: timeframes.read_at(values[a], frames.frame(minutes),
                                                                 _end_ms(frames, tf))
            case Arithmetic(op=op, left=left, right=right):
                a, b, fn = self._compile(left, tf), self._compile(right, tf), _ARITHMETIC[op]
                return lambda values, frames: _defined(fn(values[a], values[b]))
            case Negate(operand=operand):
                a = self._compile(operand, tf)
                return lambda values, frames: np.negative(values[a])
            case Compare(op=op, left=left, right=right):
                d, test = self._difference(left, right, tf), _COMPARISONS[op]
                return lambda values, frames: test(*values[d])
            case Crosses(direction=direction, left=left, right=right):
                d = self._difference(left, right, tf)
                return lambda values, frames: _crosses(*values[d], direction, frames.length(tf))
            case All(parts=parts):
                slots = [self._compile(part, tf) for part in parts]
                return lambda values, frames: functools.reduce(np.logical_and, [values[s] for s in slots])
            case Any(parts=parts):
                slots = [self._compile(part, tf) for part in parts]
                return lambda values, frames: functools.reduce(np.logical_or, [values[s] for s in slots])
            case Not(operand=operand):
                a = self._compile(operand, tf)
                return lambda values, frames: np.logical_not(values[a])
        raise TypeError(f"cannot compile {node!r}")  # a parser bug, not an operator's mistake


def _end_ms(frames: _Frames, tf: int) -> np.ndarray:
    """End times of the candles of timeframe `tf` (minutes: open + 1 min)."""
    if tf == 1:
        return np.asarray(frames.minutes["open_time_ms"], dtype=np.int64) + MINUTE_MS
    return frames.frame(tf).end_ms


def _last(value) -> bool:
    """The newest element of a step's value (a scalar stands for every candle)."""
    return bool(value if np.ndim(value) == 0 else value[-1])


_ARITHMETIC = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}

# Each test gets d = a - b and the tolerance; NaN in d makes every test false.
_COMPARISONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ">": lambda d, tol: d > tol,
    "<": lambda d, tol: d < -tol,
    ">=": lambda d, tol: d >= -tol,
    "<=": lambda d, tol: d <= tol,
    "==": lambda d, tol: np.abs(d) <= tol,
    "!=": lambda d, tol: np.abs(d) > tol,
}


def _defined(result):
    """Division by zero and overflow give undefined values, never infinities."""
    return np.where(np.isfinite(result), result, np.nan)


def _difference(a, b):
    return a - b, REL_TOL * np.maximum(np.abs(a), np.abs(b))


def _crosses(d, tol, direction: str, n: int) -> np.ndarray:
    d = np.broadcast_to(d, (n,))
    tol = np.broadcast_to(tol, (n,))
    if direction == "above":
        now, before = d > tol, d <= tol  # a > b now, a <= b on the previous candle
    else:
        now, before = d < -tol, d >= -tol
    result = np.zeros(n, dtype=bool)
    result[1:] = now[1:] & before[:-1]
    return result


def lookback_minutes(node, tf: int = 1) -> int:
    """Minutes of history a node computed on `tf` candles needs before its value is defined and no longer
    depends on where the history starts: its candles of warm-up times their length, nested indicators and
    higher timeframes included (a higher timeframe adds one window: the one in progress at the start)."""
    match node:
        case Indicator(name=name, args=args, source=source):
            spec = indicators.INDICATORS[name]
            values = [int(a) if p.integer else a for p, a in zip(spec.params, args)]
            own = spec.warmup(*values) * tf
            return own + (lookback_minutes(source, tf) if source is not None else 0)
        case AtTimeframe(value=value, minutes=minutes):
            return lookback_minutes(value, minutes) + (minutes if minutes != tf else 0)
        case Crosses(left=left, right=right):
            return max(lookback_minutes(left, tf), lookback_minutes(right, tf)) + tf
        case Arithmetic(left=left, right=right) | Compare(left=left, right=right):
            return max(lookback_minutes(left, tf), lookback_minutes(right, tf))
        case Negate(operand=operand) | Not(operand=operand):
            return lookback_minutes(operand, tf)
        case All(parts=parts) | Any(parts=parts):
            return max(lookback_minutes(part, tf) for part in parts)
    return 0


def compile_strategy(text: str, short_refusal: str | None = None) -> Policy:
    """Parse and compile a strategy text; raise StrategyError listing every error in it. With
    `short_refusal` (why the broker cannot short), every SHORT is an error saying so."""
    sweeps.refuse_sweep(text)  # a sweep is a family of strategies: only the backtest expands it
    rules, risk, timeframe = parse_program(text)
    if short_refusal is not None:
        refused = [Diagnostic(rule.line, rule.action_column, short_refusal) for rule in rules
                   if rule.action == Action.SHORT]
        if refused:
            raise StrategyError(refused)
    return Policy(rules, text, risk, timeframe)


def hold_policy(reason: str = "") -> Policy:
    """A policy with no rules: HOLD on every candle (used while no strategy file exists)."""
    return Policy([], f"# {reason}\n" if reason else "")

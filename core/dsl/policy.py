"""Rules -> one compiled policy that decides BUY / SELL / SHORT / HOLD over numpy candle arrays.

The policy is a flat program: every distinct sub-expression of every rule becomes one step, computed
once per evaluation over whole arrays. The same object decides the newest candle for the live worker
(`decide`) and every candle of a history for the backtest and the editor preview (`decide_all`), so
they cannot disagree.

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

from core import indicators

from . import sweeps
from .errors import Diagnostic, StrategyError
from .nodes import Action, All, Any, Arithmetic, Compare, Crosses, Indicator, Negate, Not, Number, Rule, Series
from .parser import parse_program
from .risk import Risk

REL_TOL = 1e-10
MIN_WINDOW = 300  # candles the live decision looks at, at least
MAX_WINDOW = 20_000  # and at most (two weeks of minutes): a longer warm-up only costs precision

Candles = Mapping[str, np.ndarray]  # "open", "high", "low", "close", "volume" -> float64 arrays
Step = Callable[[list, Candles], object]


@dataclasses.dataclass(frozen=True)
class Decision:
    """The policy's answer for one candle: the action and the 0-based index of the rule that fired."""

    action: Action
    rule_index: int | None  # None when no rule was true (HOLD)


class Policy:
    """A compiled strategy. Build with `compile_strategy`; immutable and safe to share.

    Raises StrategyError (at the rule's line) should compiling a rule fail in a way nobody foresaw.
    """

    def __init__(self, rules: list[Rule], text: str, risk: Risk | None = None):
        self.rules = tuple(rules)
        self.text = text
        self.risk = risk if risk is not None else Risk()
        self.version = hashlib.sha256(text.encode()).hexdigest()[:12]
        self._steps: list[Step] = []
        self._slots: dict[object, int] = {}
        self._rule_slots: list[int] = []
        self._indicator_nodes: dict[int, Indicator] = {}  # slot -> node, for decide_all's indicator_cache
        warmups = [0]
        for rule in self.rules:
            try:
                self._rule_slots.append(self._compile(rule.condition))
                warmups.append(_warmup(rule.condition))
            except Exception as exc:  # a compiler bug must refuse the rule, never crash the caller
                raise StrategyError([Diagnostic(rule.line, 1, f"this rule could not be compiled "
                                                              f"({type(exc).__name__}); simplify it")]) from exc
        self._actions = np.array([int(rule.action) for rule in self.rules], dtype=np.int8)
        self.warmup = max(warmups + [_warmup(Indicator("ATR", (float(n),))) for n in self.risk.atr_periods])
        # The live decision needs the warm-up plus one previous candle for CROSSES.
        self.window = min(max(self.warmup + 2, MIN_WINDOW), MAX_WINDOW)

    @property
    def has_short(self) -> bool:
        """True when a rule can answer SHORT (a broker that cannot short refuses such a strategy)."""
        return any(rule.action == Action.SHORT for rule in self.rules)

    def __repr__(self) -> str:
        return f"<Policy {self.version}: {len(self.rules)} rules, window {self.window}>"

    # -- deciding -------------------------------------------------------------------------------

    def fired_rules(self, candles: Candles) -> np.ndarray:
        """For every candle, the index of the first true rule, or -1 when none is true."""
        n = len(candles["close"])
        fired = np.full(n, -1, dtype=np.int16)
        if not self.rules or n == 0:
            return fired
        values = self._evaluate(candles)
        # Walk the rules bottom-up so that the first true rule is the one left standing.
        for index in range(len(self.rules) - 1, -1, -1):
            np.copyto(fired, index, where=values[self._rule_slots[index]])
        return fired

    def decide_all(self, candles: Candles, indicator_cache: dict | None = None) -> np.ndarray:
        """The action (an Action value, int8) for every candle of a history.

        `indicator_cache` keeps indicator values between calls over the same candles (a sweep's
        combinations share their averages); whoever passes it makes sure the candles are the same.
        """
        actions = np.full(len(candles["close"]), Action.HOLD, dtype=np.int8)
        if not self.rules or len(actions) == 0:
            return actions
        values = self._evaluate(candles, indicator_cache)
        for index in range(len(self.rules) - 1, -1, -1):  # bottom-up: the first true rule is written last
            np.copyto(actions, self._actions[index], where=values[self._rule_slots[index]])
        return actions

    def _evaluate(self, candles: Candles, indicator_cache: dict | None = None) -> list:
        """Every step's value over `candles`, in slot order."""
        values: list = [None] * len(self._steps)
        with np.errstate(all="ignore"):
            for slot, step in enumerate(self._steps):
                node = self._indicator_nodes.get(slot) if indicator_cache is not None else None
                value = None if node is None else indicator_cache.get(node)
                if value is None:
                    value = step(values, candles)
                    if node is not None:
                        indicator_cache[node] = value  # the cache may decline to keep it (a memory limit)
                values[slot] = value
        return values

    def decide(self, candles: Candles) -> Decision:
        """The decision for the newest candle, computed over the last `window` candles."""
        if len(candles["close"]) == 0:
            return Decision(Action.HOLD, None)
        recent = {name: series[-self.window:] for name, series in candles.items()}
        index = int(self.fired_rules(recent)[-1])
        if index < 0:
            return Decision(Action.HOLD, None)
        return Decision(self.rules[index].action, index)

    # -- compiling ------------------------------------------------------------------------------

    def _compile(self, node) -> int:
        """Add the steps computing `node` (once per distinct node) and return its slot."""
        if node in self._slots:
            return self._slots[node]
        step = self._step(node)
        self._steps.append(step)
        self._slots[node] = len(self._steps) - 1
        if isinstance(node, Indicator):
            self._indicator_nodes[self._slots[node]] = node
        return self._slots[node]

    def _difference(self, left, right) -> int:
        """The slot of (left − right, tolerance), shared by every comparison of the same two values."""
        key = ("difference", left, right)
        if key not in self._slots:
            a, b = self._compile(left), self._compile(right)
            self._steps.append(lambda values, candles: _difference(values[a], values[b]))
            self._slots[key] = len(self._steps) - 1
        return self._slots[key]

    def _step(self, node) -> Step:
        match node:
            case Number(value=value):
                constant = np.float64(value)
                return lambda values, candles: constant
            case Series(name=name):
                return lambda values, candles: candles[name]
            case Indicator(name=name, args=args, source=source):
                if source is None:
                    return lambda values, candles: indicators.compute(name, candles, args)
                src = self._compile(source)
                return lambda values, candles: indicators.compute(
                    name, candles, args, np.ascontiguousarray(values[src], dtype=np.float64))
            case Arithmetic(op=op, left=left, right=right):
                a, b, fn = self._compile(left), self._compile(right), _ARITHMETIC[op]
                return lambda values, candles: _defined(fn(values[a], values[b]))
            case Negate(operand=operand):
                a = self._compile(operand)
                return lambda values, candles: np.negative(values[a])
            case Compare(op=op, left=left, right=right):
                d, test = self._difference(left, right), _COMPARISONS[op]
                return lambda values, candles: test(*values[d])
            case Crosses(direction=direction, left=left, right=right):
                d = self._difference(left, right)
                return lambda values, candles: _crosses(*values[d], direction, len(candles["close"]))
            case All(parts=parts):
                slots = [self._compile(part) for part in parts]
                return lambda values, candles: functools.reduce(np.logical_and, [values[s] for s in slots])
            case Any(parts=parts):
                slots = [self._compile(part) for part in parts]
                return lambda values, candles: functools.reduce(np.logical_or, [values[s] for s in slots])
            case Not(operand=operand):
                a = self._compile(operand)
                return lambda values, candles: np.logical_not(values[a])
        raise TypeError(f"cannot compile {node!r}")  # a parser bug, not an operator's mistake


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


def _warmup(node) -> int:
    """Candles a node needs before its value is defined and no longer depends on the start."""
    match node:
        case Indicator(name=name, args=args, source=source):
            spec = indicators.INDICATORS[name]
            values = [int(a) if p.integer else a for p, a in zip(spec.params, args)]
            own = spec.warmup(*values)
            return own + (_warmup(source) if source is not None else 0)
        case Crosses(left=left, right=right):
            return max(_warmup(left), _warmup(right)) + 1
        case Arithmetic(left=left, right=right) | Compare(left=left, right=right):
            return max(_warmup(left), _warmup(right))
        case Negate(operand=operand) | Not(operand=operand):
            return _warmup(operand)
        case All(parts=parts) | Any(parts=parts):
            return max(_warmup(part) for part in parts)
    return 0


def compile_strategy(text: str) -> Policy:
    """Parse and compile a strategy text; raise StrategyError listing every error in it."""
    sweeps.refuse_sweep(text)  # a sweep is a family of strategies: only the backtest expands it
    rules, risk = parse_program(text)
    return Policy(rules, text, risk)


def hold_policy(reason: str = "") -> Policy:
    """A policy with no rules: HOLD on every candle (used while no strategy file exists)."""
    return Policy([], f"# {reason}\n" if reason else "")

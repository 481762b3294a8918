"""Parameter sweeps: `{4..12}`, `{10..50..5}`, `{7,14,21}`, named `{fast: 3..6}` reused as `{fast}`.

A sweep is expanded as text, before the strategy is parsed: each combination is an ordinary strategy,
so the grammar knows nothing of sweeps and every combination is checked by the same parser. Only
`backtest` (and `check --sweep`) accept a sweep; `compile_strategy` refuses one with a clear error,
so the worker and the editor never run a file with braces in it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

from .errors import Diagnostic, StrategyError
from .parser import parse_strategy

MAX_COMBINATIONS = 10_000

_BRACES = re.compile(r"\{([^{}]*)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_BODY = re.compile(rf"\s*(?:(?P<name>{_NAME})\s*:)?\s*(?P<values>.*?)\s*")
_REFERENCE = re.compile(rf"\s*(?P<name>{_NAME})\s*")
_RANGE = re.compile(rf"(?P<start>{_NUMBER})\s*\.\.\s*(?P<stop>{_NUMBER})(?:\s*\.\.\s*(?P<step>{_NUMBER}))?")
_LIST = re.compile(rf"{_NUMBER}(?:\s*,\s*{_NUMBER})*")
_EXAMPLES = "write {4..12}, {10..50..5}, {7,14,21}, {fast: 3..6} or {fast} for a named one"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One swept number: its name (given, or p1, p2, ... by order) and its values as written in text."""

    name: str
    values: tuple[str, ...]
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One pair of braces in the text: where it is and which sweep fills it."""

    line: int
    start: int  # 0-based offsets in the line, end exclusive
    end: int
    name: str


@dataclasses.dataclass(frozen=True)
class Combination:
    """One strategy of a sweep: the values chosen and the text with them written in."""

    params: dict[str, int | float]
    text: str


def has_sweep(text: str) -> bool:
    """True when the text (outside comments) has braces, i.e. is meant as a sweep."""
    return any("{" in code or "}" in code for code in _code_parts(text))


def refuse_sweep(text: str) -> None:
    """Raise StrategyError at the first brace: only `backtest` and `check --sweep` run sweeps."""
    for number, code in enumerate(_code_parts(text), start=1):
        column = next((i for i, char in enumerate(code) if char in "{}"), None)
        if column is not None:
            raise StrategyError([Diagnostic(number, column + 1,
                                            "a sweep ({...}) runs only in `omniwise.py backtest`; write one number "
                                            "here to trade it (`check --sweep` checks a sweep file)")])


def find_sweeps(text: str) -> list[Sweep]:
    """The sweeps of a text in order of appearance; StrategyError naming line and column if one is malformed."""
    sweeps, _ = _scan(text)
    return sweeps


def count_combinations(sweeps: list[Sweep]) -> int:
    """How many strategies the sweeps make."""
    return math.prod(len(s.values) for s in sweeps)


def expand(text: str, limit: int = MAX_COMBINATIONS) -> list[Combination]:
    """Every combination of the text's sweeps (one, the text itself, without any); refuses more than `limit`."""
    sweeps, slots = _scan(text)
    total = count_combinations(sweeps)
    if total > limit:
        first = sweeps[0]
        sizes = " × ".join(f"{len(s.values)} ({s.name})" for s in sweeps)
        raise StrategyError([Diagnostic(first.line, first.column,
                                        f"this sweep makes {total:,} combinations ({sizes}); at most {limit:,} run: "
                                        "use fewer values or a larger step")])
    lines = text.split("\n")
    combinations = []
    for chosen in itertools.product(*(s.values for s in sweeps)):
        value_of = {s.name: v for s, v in zip(sweeps, chosen)}
        combinations.append(Combination({name: _number(v) for name, v in value_of.items()},
                                        _fill(lines, slots, value_of)))
    return combinations


def line_variants(text: str) -> Iterator[tuple[int, dict[str, int | float], str]]:
    """Each line with every combination of its own sweeps: (line number, values, the line), for checking."""
    sweeps, slots = _scan(text)
    by_name = {s.name: s for s in sweeps}
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        names = list(dict.fromkeys(slot.name for slot in slots if slot.line == number))
        for chosen in itertools.product(*(by_name[name].values for name in names)):
            value_of = dict(zip(names, chosen))
            filled = _fill([line], [dataclasses.replace(s, line=1) for s in slots if s.line == number], value_of)
            yield number, {name: _number(v) for name, v in value_of.items()}, filled


def check_sweep(text: str, limit: int = MAX_COMBINATIONS) -> int:
    """Check every value of every sweep with the parser; the number of combinations, or StrategyError."""
    expand_count = count_combinations(find_sweeps(text))
    errors: list[Diagnostic] = []
    if expand_count > limit:
        expand(text, limit)  # raises the error naming the sizes
    seen: set[tuple[int, str]] = set()
    for number, params, line in line_variants(text):
        if (number, line) in seen:
            continue
        seen.add((number, line))
        try:
            parse_strategy("\n" * (number - 1) + line)  # at its own line number, alone
        except StrategyError as exc:
            values = ", ".join(f"{name} = {value}" for name, value in params.items())
            errors += [dataclasses.replace(d, message=f"with {values}: {d.message}") if values else d
                       for d in exc.errors]
            if len(errors) >= 20:  # one bad value makes many combinations fail alike: enough to fix it
                break
    if errors:
        raise StrategyError(list(dict.fromkeys(errors)))
    return expand_count


# -- scanning ---------------------------------------------------------------------------------------

def _code_parts(text: str) -> list[str]:
    """Each line without its comment (the parser ignores everything after #)."""
    return [line.split("#", 1)[0] for line in text.split("\n")]


def _scan(text: str) -> tuple[list[Sweep], list[_Slot]]:
    errors: list[Diagnostic] = []
    defined: dict[str, Sweep] = {}
    references: list[tuple[str, int, int]] = []  # name, line, column
    slots: list[_Slot] = []
    unnamed = 0
    for number, code in enumerate(_code_parts(text), start=1):
        covered = 0
        for match in _BRACES.finditer(code):
            stray = _stray_brace(code, covered, match.start())
            if stray is not None:
                errors.append(Diagnostic(number, stray + 1, f"unmatched brace: {_EXAMPLES}"))
            covered = match.end()
            column = match.start() + 1
            body = match.group(1)
            if reference := _REFERENCE.fullmatch(body):
                name = reference.group("name")
                references.append((name, number, column))
                slots.append(_Slot(number, match.start(), match.end(), name))
                continue
            parts = _BODY.fullmatch(body)
            name = parts.group("name")
            values, problem = _values(parts.group("values"))
            if problem:
                errors.append(Diagnostic(number, column, problem))
                continue
            if name is None:
                unnamed += 1
                name = f"p{unnamed}"
            if name in defined:
                first = defined[name]
                errors.append(Diagnostic(number, column, f"the sweep {name!r} is already defined at line {first.line}, "
                                                         f"column {first.column}; reuse it as {{{name}}}"))
                continue
            defined[name] = Sweep(name, values, number, column)
            slots.append(_Slot(number, match.start(), match.end(), name))
        stray = _stray_brace(code, covered, len(code))
        if stray is not None:
            errors.append(Diagnostic(number, stray + 1, f"unmatched brace: {_EXAMPLES}"))
    for name, number, column in references:
        if name not in defined:
            known = ", ".join(sorted(defined)) or "none yet"
            errors.append(Diagnostic(number, column, f"{{{name}}} reuses a named sweep, but no sweep is named "
                                                     f"{name!r} (named sweeps: {known}); define it as {{{name}: 3..6}}"))
    if errors:
        raise StrategyError(sorted(errors, key=lambda d: (d.line, d.column)))
    return list(defined.values()), slots


def _stray_brace(code: str, start: int, end: int) -> int | None:
    for i in range(start, end):
        if code[i] in "{}":
            return i
    return None


def _values(written: str) -> tuple[tuple[str, ...], str | None]:
    """The values a sweep body stands for, as text, or an error message."""
    if not written:
        return (), f"empty sweep: {_EXAMPLES}"
    if match := _RANGE.fullmatch(written):
        try:
            start, stop = Decimal(match.group("start")), Decimal(match.group("stop"))
            step = Decimal(match.group("step") or "1")
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            return (), f"not a number in {written!r}"
        if step <= 0:
            return (), f"the step of {written!r} must be more than 0"
        if stop < start:
            return (), f"the range {written!r} runs backwards: write the smaller number first"
        count = int((stop - start) / step) + 1
        if count > MAX_COMBINATIONS:
            return (), f"the range {written!r} has {count:,} values; at most {MAX_COMBINATIONS:,} combinations run"
        return tuple(_text(start + i * step) for i in range(count)), None
    if _LIST.fullmatch(written):
        values = tuple(_text(Decimal(v.strip())) for v in written.split(","))
        if len(set(values)) != len(values):
            return (), f"the list {written!r} repeats a value"
        return values, None
    return (), f"cannot read the sweep {{{written}}}: {_EXAMPLES}"


def _text(value: Decimal) -> str:
    """A number as the strategy text writes it: 7, 1.5 (never 7.0 or 1.50)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def _fill(lines: list[str], slots: list[_Slot], value_of: dict[str, str]) -> str:
    out = list(lines)
    for slot in sorted(slots, key=lambda s: (s.line, -s.start)):  # right to left keeps offsets valid
        line = out[slot.line - 1]
        out[slot.line - 1] = line[:slot.start] + value_of[slot.name] + line[slot.end:]
    return "\n".join(out)

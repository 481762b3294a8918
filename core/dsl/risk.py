"""Risk statements of a strategy: STOP LOSS, TAKE PROFIT, TRAILING STOP and SIZE, one of each at most.

```
STOP LOSS 2%            STOP LOSS 1.5 * ATR(14)
TAKE PROFIT 5%          TAKE PROFIT 3 * ATR(14)
TRAILING STOP 1.5%      TRAILING STOP 2 * ATR(14)
SIZE 50%
```

Each statement is one line, read by a small hand-written parser (the forms are few and fixed), with
every problem reported by line and column like the rules' errors. Nothing is evaluated as code.
"""

from __future__ import annotations

import dataclasses
import math
import re

from core.indicators import INDICATORS

from .errors import Diagnostic

STATEMENTS = {"STOP": ("LOSS", "stop_loss"), "TAKE": ("PROFIT", "take_profit"),
              "TRAILING": ("STOP", "trailing_stop"), "SIZE": (None, "size")}
MAX_TAKE_PROFIT_PCT = 10_000.0
MAX_ATR_MULTIPLE = 1_000.0
_TOKEN = re.compile(r"\s*(?:(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<symbol>[%*()\-,])|(?P<other>\S))")
_EXAMPLES = {"stop_loss": "STOP LOSS 2% or STOP LOSS 1.5 * ATR(14)",
             "take_profit": "TAKE PROFIT 5% or TAKE PROFIT 3 * ATR(14)",
             "trailing_stop": "TRAILING STOP 1.5% or TRAILING STOP 2 * ATR(14)", "size": "SIZE 50%"}
_TITLES = {"stop_loss": "STOP LOSS", "take_profit": "TAKE PROFIT", "trailing_stop": "TRAILING STOP", "size": "SIZE"}


@dataclasses.dataclass(frozen=True)
class Distance:
    """How far a level lies from its reference price: a share of it, or a multiple of ATR(period)."""

    share: float | None = None  # 0.02 for 2 %
    multiple: float | None = None
    atr_period: int | None = None
    text: str = dataclasses.field(default="", compare=False)

    @property
    def is_atr(self) -> bool:
        """True for the k * ATR(n) form."""
        return self.multiple is not None


@dataclasses.dataclass(frozen=True)
class Risk:
    """The risk statements of one strategy; None where a statement is absent."""

    stop_loss: Distance | None = None
    take_profit: Distance | None = None
    trailing_stop: Distance | None = None
    size_share: float = 1.0  # share of equity each entry spends

    @property
    def has_exits(self) -> bool:
        """True when any exit level is set."""
        return any((self.stop_loss, self.take_profit, self.trailing_stop))

    @property
    def atr_periods(self) -> tuple[int, ...]:
        """The ATR periods the levels read, each once."""
        return tuple(sorted({d.atr_period for d in (self.stop_loss, self.take_profit, self.trailing_stop)
                             if d is not None and d.is_atr}))


def is_risk_statement(line: str) -> bool:
    """True when the line starts with a risk statement's first word (STOP, TAKE, TRAILING, SIZE)."""
    match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", line)
    return bool(match) and match.group(1).upper() in STATEMENTS


class _Tokens:
    def __init__(self, line: str, number: int):
        self.items = []
        for match in _TOKEN.finditer(line):
            kind = match.lastgroup
            self.items.append((kind, match.group(kind), match.start(kind) + 1))
        self.position = 0
        self.end_column = len(line) + 1
        self.line = number

    def peek(self):
        return self.items[self.position] if self.position < len(self.items) else ("end", "", self.end_column)

    def take(self):
        token = self.peek()
        self.position += 1
        return token


class _Problem(Exception):
    def __init__(self, column: int, message: str):
        self.column, self.message = column, message


def parse_risk_line(line: str, number: int) -> tuple[str, Distance | float] | Diagnostic:
    """One risk statement -> (kind, value): a Distance, or the share for SIZE; or the Diagnostic."""
    tokens = _Tokens(line, number)
    try:
        kind = _statement(tokens)
        value = _amount(tokens, kind) if kind != "size" else _size(tokens)
        extra = tokens.peek()
        if extra[0] != "end":
            raise _Problem(extra[2], f"unexpected {extra[1]!r}: a {_TITLES[kind]} statement ends after its amount, "
                                     f"e.g. {_EXAMPLES[kind]}")
    except _Problem as problem:
        return Diagnostic(number, problem.column, problem.message)
    return kind, value


def _statement(tokens: _Tokens) -> str:
    _, word, _ = tokens.take()
    second, kind = STATEMENTS[word.upper()]
    if second is not None:
        token = tokens.take()
        if token[0] != "word" or token[1].upper() != second:
            found = f", not {token[1]!r}" if token[0] != "end" else ""
            raise _Problem(token[2], f"expected {second} after {word.upper()}{found}, e.g. {_EXAMPLES[kind]}")
    return kind


def _number(tokens: _Tokens, kind: str) -> tuple[float, int, bool]:
    """A number, with its column and whether a minus sign came before it."""
    negative = False
    token = tokens.take()
    column = token[2]
    if token[0] == "symbol" and token[1] == "-":
        negative = True
        token = tokens.take()
    if token[0] != "number":
        found = "the line ends" if token[0] == "end" else f"found {token[1]!r}"
        raise _Problem(token[2], f"expected a number after {_TITLES[kind]} ({found}), e.g. {_EXAMPLES[kind]}")
    value = float(token[1])
    if not math.isfinite(value):
        raise _Problem(token[2], f"number {token[1][:20]}... is too large")
    return (-value if negative else value), column, negative


def _size(tokens: _Tokens) -> float:
    value, column, _ = _number(tokens, "size")
    token = tokens.take()
    if token[0] != "symbol" or token[1] != "%":
        raise _Problem(token[2], "SIZE is a share of equity in percent, e.g. SIZE 50%")
    if not 0 < value <= 100:
        raise _Problem(column, f"SIZE must be more than 0 % and at most 100 % of equity, got {value:g} %")
    return value / 100


def _amount(tokens: _Tokens, kind: str) -> Distance:
    value, column, negative = _number(tokens, kind)
    token = tokens.take()
    if token[0] == "symbol" and token[1] == "%":
        upper = MAX_TAKE_PROFIT_PCT if kind == "take_profit" else 100.0
        in_range = 0 < value <= upper if kind == "take_profit" else 0 < value < upper
        if not in_range:
            bound = f"at most {upper:,.0f} %" if kind == "take_profit" else f"less than {upper:g} %"
            raise _Problem(column, f"{_TITLES[kind]} must be more than 0 % and {bound}, got {value:g} %")
        return Distance(share=value / 100, text=f"{value:g}%")
    if token[0] == "symbol" and token[1] == "*":
        if negative or value <= 0:
            raise _Problem(column, f"the multiple of ATR in {_TITLES[kind]} must be more than 0, got {value:g}")
        if value > MAX_ATR_MULTIPLE:
            raise _Problem(column, f"the multiple of ATR in {_TITLES[kind]} must be at most {MAX_ATR_MULTIPLE:g}, "
                                   f"got {value:g}")
        period = _atr(tokens, kind)
        return Distance(multiple=value, atr_period=period, text=f"{value:g} * ATR({period})")
    found = "the line ends" if token[0] == "end" else f"found {token[1]!r}"
    raise _Problem(token[2], f"expected % or * ATR(n) after the number ({found}), e.g. {_EXAMPLES[kind]}")


def _atr(tokens: _Tokens, kind: str) -> int:
    token = tokens.take()
    if token[0] != "word" or token[1].upper() != "ATR":
        found = "the line ends" if token[0] == "end" else f"found {token[1]!r}"
        raise _Problem(token[2], f"a level is a multiple of ATR only ({found}), e.g. {_EXAMPLES[kind]}")
    param = INDICATORS["ATR"].params[0]
    if tokens.peek()[1] != "(":
        return int(param.default)
    tokens.take()
    value, column, _ = _number(tokens, kind)
    if value != int(value) or not param.minimum <= value <= param.maximum:
        raise _Problem(column, f"the period of ATR must be a whole number between {param.minimum:g} and "
                               f"{param.maximum:g}, got {value:g}")
    close = tokens.take()
    if close[1] != ")":
        raise _Problem(close[2], "expected ) to close ATR(")
    return int(value)


def collect(statements: list[tuple[int, str]], errors: list[Diagnostic]) -> Risk:
    """The Risk of a file's risk lines (line number, text); duplicates and bad forms go to `errors`."""
    found: dict[str, tuple[int, Distance | float]] = {}
    for number, line in statements:
        parsed = parse_risk_line(line, number)
        if isinstance(parsed, Diagnostic):
            errors.append(parsed)
            continue
        kind, value = parsed
        if kind in found:
            column = len(line) - len(line.lstrip()) + 1
            errors.append(Diagnostic(number, column, f"{_TITLES[kind]} is already set on line {found[kind][0]}: "
                                                     f"one {_TITLES[kind]} per strategy"))
            continue
        found[kind] = (number, value)
    values = {kind: value for kind, (_, value) in found.items()}
    size = values.pop("size", 1.0)
    return Risk(size_share=size, **values)

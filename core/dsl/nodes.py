"""The parsed form of a strategy: rules whose conditions are trees of these nodes.

Nodes are frozen and compare by content (positions excluded), so equal sub-expressions are computed
once per evaluation.
"""

from __future__ import annotations

import dataclasses
import enum


class Action(enum.IntEnum):
    """What a rule asks for: a target position, not an order."""

    HOLD = 0  # keep whatever position there is
    BUY = 1  # be long
    SELL = 2  # be flat
    SHORT = 3  # be short (paper, backtest and binance-futures; refused under binance-spot)


_pos = dataclasses.field(default=(0, 0), compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Number:
    value: float
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Series:
    """A candle series: open, high, low, close or volume."""

    name: str
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Indicator:
    name: str
    args: tuple[float, ...]
    source: "Series | Indicator | None" = None
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    op: str  # + - * /
    left: "Value"
    right: "Value"
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Negate:
    operand: "Value"
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class AtTimeframe:
    """`value@tf`: the value on candles of `minutes`, read from the last such candle closed by the end of
    the deciding one."""

    value: "Value"
    minutes: int
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Compare:
    op: str  # > < >= <= == !=
    left: "Value"
    right: "Value"
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Crosses:
    direction: str  # above, below
    left: "Value"
    right: "Value"
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class All:
    """AND of its parts."""

    parts: tuple["Condition", ...]
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Any:
    """OR of its parts."""

    parts: tuple["Condition", ...]
    at: tuple[int, int] = _pos


@dataclasses.dataclass(frozen=True)
class Not:
    operand: "Condition"
    at: tuple[int, int] = _pos


Value = Number | Series | Indicator | Arithmetic | Negate | AtTimeframe
Condition = Compare | Crosses | All | Any | Not


@dataclasses.dataclass(frozen=True)
class Rule:
    """IF condition THEN action, as written on line `line` of the file."""

    condition: Condition
    action: Action
    line: int
    text: str
    action_column: int = dataclasses.field(default=1, compare=False)  # where the action word starts


def timeframes_of(node) -> list[AtTimeframe]:
    """Every `@tf` under `node`, outermost first."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, AtTimeframe):
            found.append(item)
        if dataclasses.is_dataclass(item):
            for field in dataclasses.fields(item):
                child = getattr(item, field.name)
                if isinstance(child, tuple) and field.name == "parts":
                    stack.extend(reversed(child))
                elif dataclasses.is_dataclass(child):
                    stack.append(child)
    return found

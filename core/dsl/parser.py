"""Strategy text -> rules, with every error of the file reported by line and column.

Each non-blank line is one rule and is parsed on its own (lark, LALR), so an error on one line never
hides the errors of the next. The parse tree is then checked and turned into `nodes`: names resolved
against the indicator registry, argument counts and ranges checked, conditions and values kept apart.
Nothing in a strategy is ever executed as code.

Limits keep every text cheap and every recursion shallow: the text's size is checked before anything
is parsed, a line's length and nesting before lark runs, and the parse tree's depth, chain lengths and
number sizes before it is turned into nodes. A fault nobody foresaw still becomes a StrategyError at
its line: a strategy text is refused, it never crashes the process reading it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from core.indicators import INDICATORS, SERIES_NAMES

from .errors import Diagnostic, StrategyError
from . import timeframe as tf
from .nodes import (Action, All, Any, Arithmetic, AtTimeframe, Compare, Condition, Crosses, Indicator, Negate,
                    Not, Number, Rule, Series, Value, timeframes_of)
from .risk import Risk, collect, is_risk_statement

MAX_CHARS = 100_000  # the whole text, checked before parsing (the editor's limit too)
MAX_LINE_LENGTH = 1000
MAX_NESTING = 32  # parentheses
MAX_DEPTH = 64  # levels of the parse tree: parentheses, minus signs, NOT, calls, operators
MAX_TERMS = 32  # terms of one calculation such as 1 + 2 * 3 - 4
MAX_DIGITS = 20  # digits of one number (a float64 holds about 16 significant ones anyway)
MAX_RULES = 200

log = logging.getLogger(__name__)

_MA_SHORTHAND = re.compile(r"MA([0-9]+)")
_GLUED_PERIOD = re.compile(r"([A-Z_]+?)([0-9]+)")
_KEYWORDS = ("IF", "THEN", "AND", "OR", "NOT", "CROSSES", "ABOVE", "BELOW", "TIMEFRAME")
_ACTIONS = tuple(a.name for a in Action)
_EXAMPLE = "IF MA4 > MA9 THEN BUY"


@functools.cache
def _parser() -> Lark:
    grammar = (Path(__file__).with_name("grammar.lark")).read_text()
    return Lark(grammar, start="rule", parser="lalr", maybe_placeholders=True)


def parse_strategy(text: str) -> list[Rule]:
    """Parse a whole strategy into rules; raise StrategyError listing every error in the text."""
    return parse_program(text)[0]


def parse_program(text: str) -> tuple[list[Rule], Risk, int]:
    """Parse a whole strategy into its rules, risk statements and timeframe (minutes; 1 without a TIMEFRAME
    line); raise StrategyError listing every error."""
    if len(text) > MAX_CHARS:
        raise StrategyError([Diagnostic(1, 1, f"the strategy is {len(text):,} characters long; "
                                              f"at most {MAX_CHARS:,} are allowed")])
    rules: list[Rule] = []
    errors: list[Diagnostic] = []
    risk_lines: list[tuple[int, str]] = []
    timeframe: tuple[int, int] | None = None  # (minutes, line)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if tf.is_timeframe_statement(line) and len(line) <= MAX_LINE_LENGTH:
            parsed = tf.parse_timeframe_line(line, number)
            if isinstance(parsed, Diagnostic):
                errors.append(parsed)
            elif timeframe is not None:
                errors.append(Diagnostic(number, len(line) - len(line.lstrip()) + 1,
                                         f"TIMEFRAME is already set on line {timeframe[1]}: one TIMEFRAME per strategy"))
            else:
                timeframe = (parsed, number)
            continue
        if is_risk_statement(line) and len(line) <= MAX_LINE_LENGTH:
            risk_lines.append((number, line))
            continue
        problems: list[Diagnostic] = []
        try:
            rule = _parse_line(line, number, problems)
        except Exception as exc:  # noqa: BLE001 - a parser bug must refuse the line, never crash the caller
            log.exception("unexpected fault parsing line %d of a strategy", number)
            problems = [Diagnostic(number, 1, f"this rule could not be read ({type(exc).__name__}); "
                                              f"simplify it")]
            rule = None
        errors.extend(problems)
        if rule is not None and not problems:
            rules.append(rule)
    if len(rules) > MAX_RULES:
        errors.append(Diagnostic(1, 1, f"a strategy has at most {MAX_RULES} rules, this one has {len(rules)}"))
    risk = collect(risk_lines, errors)
    minutes = timeframe[0] if timeframe else 1
    for rule in rules:
        for node in timeframes_of(rule.condition):
            problem = tf.check_multiple(node.minutes, minutes)
            if problem:
                errors.append(Diagnostic(*node.at, problem))
    if errors:
        raise StrategyError(errors)
    return rules, risk, minutes


def _parse_line(line: str, number: int, problems: list[Diagnostic]) -> Rule | None:
    if len(line) > MAX_LINE_LENGTH:
        problems.append(Diagnostic(number, MAX_LINE_LENGTH + 1,
                                   f"line is longer than {MAX_LINE_LENGTH} characters; split it into several rules"))
        return None
    depth_error = _nesting_error(line)
    if depth_error:
        problems.append(Diagnostic(number, *depth_error))
        return None
    try:
        tree = _parser().parse(line)
    except UnexpectedInput as exc:
        problems.append(Diagnostic(number, *_syntax_error(exc, line)))
        return None
    size_error = _size_error(tree)
    if size_error:
        problems.append(Diagnostic(number, *size_error))
        return None
    builder = _Builder(number, problems)
    _, condition, _, action_token = tree.children
    node = builder.condition(condition, "after IF")
    action = builder.action(action_token)
    if node is None or action is None:
        return None
    return Rule(condition=node, action=action, line=number, text=line.strip(), action_column=action_token.column)


def _nesting_error(line: str) -> tuple[int, str] | None:
    depth = 0
    for column, char in enumerate(line, start=1):
        if char == "(":
            depth += 1
            if depth > MAX_NESTING:
                return column, f"parentheses nested more than {MAX_NESTING} deep"
        elif char == ")":
            depth -= 1
    return None


def _size_error(tree: Tree) -> tuple[int, str] | None:
    """The first place where the tree is too deep, a calculation too long or a number too big.

    Iterative on purpose: this runs before any recursion over the tree, so it must not recurse itself.
    """
    stack: list[tuple[Tree, int, bool]] = [(child, 1, False) for child in reversed(tree.children)
                                           if isinstance(child, Tree)]
    while stack:
        node, depth, is_left_term = stack.pop()
        if depth > MAX_DEPTH:
            return _start_column(node), (f"the condition is nested more than {MAX_DEPTH} levels deep "
                                         f"(parentheses, minus signs, NOT and calls all count); simplify it")
        if node.data == "arithmetic" and not is_left_term:
            terms, left = 2, node.children[0]
            while isinstance(left, Tree) and left.data == "arithmetic":
                terms, left = terms + 1, left.children[0]
            if terms > MAX_TERMS:
                return _start_column(node), (f"a calculation has at most {MAX_TERMS} terms, this one has "
                                             f"{terms}; split it or use an indicator")
        for token in node.children:
            if isinstance(token, Token) and _too_many_digits(token):
                what = "the period of MA" if token.type == "NAME" else f"number {str(token)[:MAX_DIGITS]}..."
                return token.column, f"{what} has more than {MAX_DIGITS} digits"
        for index in range(len(node.children) - 1, -1, -1):
            child = node.children[index]
            if isinstance(child, Tree):
                stack.append((child, depth + 1, node.data == "arithmetic" and index == 0))
    return None


def _too_many_digits(token: Token) -> bool:
    if token.type == "NUMBER":
        return len(token) - token.count(".") > MAX_DIGITS
    shorthand = token.type == "NAME" and _MA_SHORTHAND.fullmatch(token.upper())
    return bool(shorthand) and len(shorthand.group(1)) > MAX_DIGITS


def _start_column(tree: Tree) -> int:
    """Column of the first token under `tree`, found without recursion."""
    node = tree
    while isinstance(node, Tree):
        node = next((child for child in node.children if child is not None), None)
    return node.column if isinstance(node, Token) else 1


# -- syntax errors: what lark expected, said in words -------------------------------------------

_EXPECT_VALUE = {"NUMBER", "NAME", "LPAR", "MINUS"}


def _describe_expected(expected: set[str]) -> str:
    if expected == {"IF"}:
        return f"a rule starts with IF, e.g. {_EXAMPLE}"
    if expected <= {"NAME"}:
        return "expected an action: BUY, SELL, SHORT or HOLD"
    if expected == {"INTERVAL"}:
        return f"expected a timeframe after @, one of {' '.join(tf.INTERVALS)}, e.g. SMA(50)@4h"
    if "DIRECTION" in expected:
        return "expected ABOVE or BELOW after CROSSES"
    if expected & _EXPECT_VALUE and not expected & {"THEN", "COMPARATOR"}:
        return "expected a number, a price like CLOSE or an indicator like SMA(20)"
    if "COMPARATOR" in expected:
        return "expected a comparison like >, <, CROSSES ABOVE"
    if "THEN" in expected:
        return "expected THEN (or AND / OR to add a condition)"
    if "RPAR" in expected and "COMMA" in expected:
        return "expected , or ) in the argument list"
    if "RPAR" in expected:
        return "expected ) to close the parenthesis"
    if expected & {"$END", "<END-OF-FILE>"}:
        return "expected the end of the rule: one action per rule"
    return "expected " + ", ".join(sorted(expected))


def _syntax_error(exc: UnexpectedInput, line: str) -> tuple[int, str]:
    end_column = len(line) + 1
    if isinstance(exc, UnexpectedCharacters):
        char = line[exc.column - 1]
        if exc.allowed and set(exc.allowed) <= {"INTERVAL"}:
            return exc.column, _describe_expected({"INTERVAL"})
        hints = {"=": "use == to test equality", "&": "use AND", "|": "use OR", "!": "use NOT or !=",
                 "'": "names are written without quotes", '"': "names are written without quotes"}
        hint = hints.get(char, "only letters, digits, spaces and + - * / ( ) , < > = ! @ are allowed")
        return exc.column, f"unexpected character {char!r}: {hint}"
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = set(exc.expected)
        if "THEN" in expected and ("COMPARATOR" not in expected or _comparison_is_complete(line)):
            return end_column, "the rule ends without THEN and an action, e.g. ... THEN BUY"
        return end_column, "the rule ends too early: " + _describe_expected(expected)
    assert isinstance(exc, UnexpectedToken)
    token: Token = exc.token
    expected = set(exc.expected)
    if {"THEN", "COMPARATOR"} <= expected and _comparison_is_complete(line[: token.column - 1]):
        expected -= {"COMPARATOR", "CROSSES"}
    word = str(token).upper()
    if "THEN" in expected and word in _ACTIONS:
        return token.column, f"missing THEN before {word}"
    message = f"unexpected {str(token)!r}: " + _describe_expected(expected)
    if token.type == "NAME":
        suggestion = _closest(word, [t for t in _KEYWORDS if t in expected] + (["IF"] if "IF" in expected else []))
        if suggestion:
            message += f" (did you mean {suggestion}?)"
    return token.column, message


def _comparison_is_complete(prefix: str) -> bool:
    """True when the condition being written already has its comparison (so THEN/AND/OR come next)."""
    stack = [False]  # one flag per open parenthesis
    try:
        for token in _parser().lex(prefix):
            if token.type in ("COMPARATOR", "CROSSES"):
                stack[-1] = True
            elif token.type in ("IF", "AND", "OR", "NOT"):
                stack[-1] = False
            elif token.type == "LPAR":
                stack.append(False)
            elif token.type == "RPAR" and len(stack) > 1:
                inner = stack.pop()
                stack[-1] = stack[-1] or inner
    except UnexpectedInput:
        return False
    return stack[-1]


def _closest(word: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    matches = difflib.get_close_matches(word.upper(), candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


# -- from parse tree to nodes ---------------------------------------------------------------------

_KNOWN_NAMES = tuple(INDICATORS) + SERIES_NAMES + ("MA",)


class _Builder:
    """Turns one line's parse tree into nodes, recording problems instead of stopping at the first."""

    def __init__(self, line: int, problems: list[Diagnostic]):
        self.line = line
        self.problems = problems

    def at(self, tree: Tree) -> tuple[int, int]:
        return (self.line, _column(tree))

    def error(self, column: int, message: str) -> None:
        self.problems.append(Diagnostic(self.line, column, message))

    def action(self, token: Token) -> Action | None:
        word = str(token).upper()
        if word in _ACTIONS:
            return Action[word]
        suggestion = _closest(word, _ACTIONS)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        self.error(token.column, f"unknown action {str(token)!r}: expected BUY, SELL, SHORT or HOLD{hint}")
        return None

    # A tree is either a condition (true/false on each candle) or a value (a number on each candle).

    def condition(self, tree: Tree | Token, where: str) -> Condition | None:
        node = self.build(tree)
        if node is None or isinstance(node, Compare | Crosses | All | Any | Not):
            return node
        if isinstance(node, AtTimeframe):
            self.error(node.at[1], f"expected a comparison like >, <, CROSSES ABOVE {where}: "
                                   f"@{tf.name_of(node.minutes)} gives a value, e.g. CLOSE > SMA(50)@4h")
            return None
        self.error(_column(tree), f"expected a comparison like >, <, CROSSES ABOVE {where}, "
                                  f"not just a value")
        return None

    def value(self, tree: Tree | Token, where: str) -> Value | None:
        node = self.build(tree)
        if node is None or isinstance(node, Number | Series | Indicator | Arithmetic | Negate | AtTimeframe):
            return node
        self.error(_column(tree), f"a condition cannot be used as a number {where}")
        return None

    def build(self, tree: Tree | Token):
        kind = tree.data if isinstance(tree, Tree) else tree.type
        return getattr(self, "_" + kind)(tree)

    def _group(self, tree: Tree):
        return self.build(tree.children[1])

    def _or_expr(self, tree: Tree):
        parts = [self.condition(child, "on each side of OR") for child in tree.children[::2]]
        return None if None in parts else Any(tuple(parts), at=self.at(tree))

    def _and_expr(self, tree: Tree):
        parts = [self.condition(child, "on each side of AND") for child in tree.children[::2]]
        return None if None in parts else All(tuple(parts), at=self.at(tree))

    def _not_op(self, tree: Tree):
        operand = self.condition(tree.children[1], "after NOT")
        return None if operand is None else Not(operand, at=self.at(tree))

    def _compare(self, tree: Tree):
        left, op, right = tree.children
        a = self.value(left, f"on the left of {op}")
        b = self.value(right, f"on the right of {op}")
        return None if a is None or b is None else Compare(str(op), a, b, at=self.at(tree))

    def _crosses(self, tree: Tree):
        left, _, direction, right = tree.children
        a = self.value(left, "before CROSSES")
        b = self.value(right, f"after CROSSES {str(direction).upper()}")
        if a is None or b is None:
            return None
        return Crosses(str(direction).lower(), a, b, at=self.at(tree))

    def _arithmetic(self, tree: Tree):
        left, op, right = tree.children
        a = self.value(left, f"on the left of {op}")
        b = self.value(right, f"on the right of {op}")
        return None if a is None or b is None else Arithmetic(str(op), a, b, at=self.at(tree))

    def _negate(self, tree: Tree):
        operand = self.value(tree.children[1], "after -")
        if operand is None:
            return None
        if isinstance(operand, Number):
            return Number(-operand.value, at=self.at(tree))
        return Negate(operand, at=self.at(tree))

    def _at_timeframe(self, tree: Tree):
        inner, at_token, interval = tree.children
        minutes = tf.interval_minutes(str(interval))
        if minutes is None:
            self.error(interval.column, tf.unknown_interval(str(interval)[:20]))
            return None
        operand = self.build(inner)
        if operand is None:
            return None
        if not isinstance(operand, Number | Series | Indicator | Arithmetic | Negate | AtTimeframe):
            self.error(at_token.column, f"@{tf.name_of(minutes)} reads a value (a price, an indicator or a "
                                        f"calculation in parentheses), not a condition")
            return None
        if isinstance(operand, Number):
            return operand  # a number is the same on every timeframe
        return AtTimeframe(operand, minutes, at=(self.line, at_token.column))

    def _number(self, tree: Tree):
        token = tree.children[0]
        value = float(token)
        if value == float("inf"):
            self.error(token.column, f"number {str(token)[:20]}... is too large")
            return None
        return Number(value, at=self.at(tree))

    def _name(self, tree: Tree):
        return self.resolve(tree.children[0], None)

    def _call(self, tree: Tree):
        name = tree.children[0]
        args = [child for child in tree.children[2:-1] if not (isinstance(child, Token) and child.type == "COMMA")]
        args = [a for a in args if a is not None]
        return self.resolve(name, args)

    def resolve(self, token: Token, args: list | None):
        """A name, with its arguments if it was called: a series, MA<n>, or an indicator."""
        word = str(token).upper()
        column = token.column
        if word in SERIES_NAMES:
            if args is not None:
                self.error(column, f"{word} is a price series and takes no arguments")
                return None
            return Series(word.lower(), at=(self.line, column))
        shorthand = _MA_SHORTHAND.fullmatch(word)
        if shorthand and args is None:
            period = int(shorthand.group(1))
            if not self.check_range(column, "MA", "period", period, INDICATORS["SMA"].params[0]):
                return None
            return Indicator("SMA", (float(period),), None, at=(self.line, column))
        indicator = INDICATORS.get(word)
        if indicator is None:
            self.error(column, self.unknown_name(word, args))
            return None
        return self.indicator(indicator, token, args or [])

    def unknown_name(self, word: str, args: list | None) -> str:
        glued = _GLUED_PERIOD.fullmatch(word)
        if glued and args is None and glued.group(1) in INDICATORS:
            return f"unknown name {word!r}: did you mean {glued.group(1)}({glued.group(2)})?"
        message = f"unknown name {word!r}"
        if word in _KEYWORDS or word in _ACTIONS:
            return f"{word} cannot be used here: expected a number, a price like CLOSE or an indicator"
        suggestion = _closest(word, _KNOWN_NAMES)
        if suggestion:
            return message + f": did you mean {suggestion}?"
        return message + ": known are " + ", ".join(SERIES_NAMES) + ", MA<n>, " + ", ".join(INDICATORS)

    def indicator(self, indicator, token: Token, args: list) -> Indicator | None:
        column = token.column
        source = None
        if indicator.takes_source and args and (_is_source(args[0]) or len(args) == len(indicator.params) + 1):
            source_tree, args = args[0], args[1:]
            source = self.build(source_tree)
            if source is None:
                return None
            if not isinstance(source, Series | Indicator | AtTimeframe):
                self.error(_column(source_tree),
                           f"the source of {indicator.name} must be a price series or an indicator, "
                           f"e.g. {indicator.name}(VOLUME, 20)")
                return None
        if not _required(indicator) <= len(args) <= len(indicator.params):
            self.error(column, f"{indicator.name} takes {_count_words(indicator)}, got {len(args)}: "
                               f"write {indicator.usage}")
            return None
        values: list[float] = []
        for param, arg in zip(indicator.params, args):
            value = self.literal(arg)
            if value is None:
                self.error(_column(arg), f"the {param.name} of {indicator.name} must be a plain number")
                return None
            if not self.check_range(_column(arg), indicator.name, param.name, value, param):
                return None
            values.append(value)
        values.extend(p.default for p in indicator.params[len(values):])
        return Indicator(indicator.name, tuple(float(v) for v in values), source, at=(self.line, column))

    def literal(self, tree) -> float | None:
        if isinstance(tree, Tree) and tree.data == "number":
            return float(tree.children[0])
        return None

    def check_range(self, column: int, name: str, param_name: str, value: float, param) -> bool:
        if param.integer and value != int(value):
            self.error(column, f"the {param_name} of {name} must be a whole number, got {value:g}")
            return False
        if not param.minimum <= value <= param.maximum:
            self.error(column, f"the {param_name} of {name} must be between {param.minimum:g} and "
                               f"{param.maximum:g}, got {value:g}")
            return False
        return True


def _required(indicator) -> int:
    return sum(1 for p in indicator.params if p.default is None)


def _count_words(indicator) -> str:
    low, high = _required(indicator), len(indicator.params)
    counts = f"{low}" if low == high else f"{low} to {high}"
    plural = "" if high == 1 else "s"
    extra = " plus an optional source series" if indicator.takes_source else ""
    return f"{counts} argument{plural}{extra}"


def _is_source(tree) -> bool:
    """True for an argument that is a name or a call: a source series, never a period."""
    return isinstance(tree, Tree) and tree.data in ("name", "call", "at_timeframe")


def _column(tree) -> int:
    if isinstance(tree, Token):
        return tree.column
    if isinstance(tree, Tree):
        for child in tree.children:
            if child is not None:
                return _column(child)
    return getattr(tree, "at", (0, 1))[1]

"""The strategy language: parse text into rules, compile rules into one policy."""

from .errors import Diagnostic, StrategyError
from .nodes import Action, Rule
from .parser import parse_strategy
from .policy import Policy, compile_strategy, hold_policy

__all__ = ["Action", "Diagnostic", "Policy", "Rule", "StrategyError", "compile_strategy", "hold_policy",
           "parse_strategy"]

"""The strategy language: parse text into rules, compile rules into one policy."""

from .errors import Diagnostic, StrategyError
from .nodes import Action, Rule
from .parser import parse_strategy
from .policy import Policy, compile_strategy, hold_policy
from .risk import Distance, Risk

__all__ = ["Action", "Diagnostic", "Distance", "Risk", "Policy", "Rule", "StrategyError", "compile_strategy", "hold_policy",
           "parse_strategy"]

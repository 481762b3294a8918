"""Strategy texts at the limits: how long the worst texts of at most 100,000 characters take to be
compiled or refused, and how fast an oversized file is refused.

Goal (issue 12): no text stalls the worker or a page; each case below within 1 s (before the limits,
a 9.6 MB file held the worker for 28 s and the dashboard for 33 s).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.dsl import StrategyError, compile_strategy  # noqa: E402
from core.dsl.parser import MAX_CHARS  # noqa: E402
from core.policy_loader import PolicyLoader  # noqa: E402
from timing import best_of  # noqa: E402


def fill(line: str) -> str:
    """As many copies of `line` as fit in MAX_CHARS characters."""
    return (line + "\n") * (MAX_CHARS // (len(line) + 1))


CASES = {
    "valid rules (refused: more than 200)": fill("IF EMA(9) CROSSES ABOVE SMA(21) AND RSI(14) < 70 THEN BUY"),
    "200 valid rules, the rest comments": "IF EMA(9) CROSSES ABOVE SMA(21) AND RSI(14) < 70 THEN BUY\n" * 200
    + fill("# " + "x" * 997)[:MAX_CHARS - 200 * 59],
    "a syntax error on every line": fill("IF CLOSEE > 1 ANDD RSI(14) < 30 BUY"),
    "an unknown name on every line": fill("IF EMAA(9) > SMAA(21) THEN BUY"),
    "1,000-character lines of minus signs": fill("IF " + "-" * 980 + "1 > 0 THEN BUY"),
    "1,000-character sums": fill("IF " + "+".join(["1"] * 490) + " > 0 THEN BUY"),
    "1,000-character numbers": fill("IF CLOSE > " + "9" * 970 + " THEN BUY"),
    "deepest allowed nesting (over 200 rules)":
        fill("IF " + "(" * 32 + "-" * 28 + "CLOSE" + ")" * 32 + " > 1 THEN BUY"),
    "longest allowed sums (190 rules)": fill("IF " + " + ".join(["SMA(CLOSE, 3)"] * 32) + " > 1 THEN BUY"),
    "one character over the limit": "#" * (MAX_CHARS + 1),
}


def compile_or_refuse(text: str) -> str:
    try:
        policy = compile_strategy(text)
    except StrategyError as exc:
        return f"refused, {len(exc.errors):,} errors"
    return f"compiled, {len(policy.rules)} rules"


def main() -> None:
    logging.disable(logging.ERROR)  # the loader logs each refusal
    for name, text in CASES.items():
        seconds = best_of(lambda: compile_or_refuse(text), 3)
        print(f"{name} ({len(text):,} chars): {compile_or_refuse(text)} in {seconds * 1e3:.1f} ms (goal <= 1 s)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "strategy.txt"
        path.write_text("IF CLOSE > 1 THEN BUY\n" * 450_000)  # 9.9 MB

        def load() -> None:
            loader = PolicyLoader(path)
            loader.current()
            assert loader.error is not None
        print(f"worker's loader refusing a 9.9 MB file: {best_of(load, 5) * 1e3:.2f} ms (was 28 s)")


if __name__ == "__main__":
    main()

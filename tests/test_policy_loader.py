"""Hot reload: a changed file is picked up, a broken one never replaces the running policy."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.dsl import Action
from core.policy_loader import PolicyLoader


def write(path, text):
    path.write_text(text)


def test_loader_compiles_the_file_and_keeps_it_while_unchanged(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    first = loader.current()
    assert [r.action for r in first.rules] == [Action.BUY]
    assert loader.current() is first and loader.refresh() is False


def test_atomic_replace_is_picked_up(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    loader.current()
    tmp = tmp_path / "strategy.txt.tmp"
    write(tmp, "IF MA4 < MA9 THEN SELL\n")
    os.replace(tmp, path)
    assert [r.action for r in loader.current().rules] == [Action.SELL]


def test_in_place_write_of_the_same_size_is_picked_up(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF CLOSE > 1 THEN BUY\n")
    loader = PolicyLoader(path)
    loader.current()
    with open(path, "r+") as f:  # what a text editor saving in place does: same inode, same size
        f.write("IF CLOSE > 2 THEN BUY\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later save, even on a coarse clock
    assert loader.current().rules[0].text == "IF CLOSE > 2 THEN BUY"


def test_broken_file_keeps_last_good_policy_and_exposes_the_error(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    good = loader.current()
    write(path, "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 SELL\n")
    assert loader.current() is good
    assert loader.error is not None and (loader.error.line, loader.error.column) == (2, 14)
    write(path, "IF MA4 < MA9 THEN SELL\n")
    assert loader.current().rules[0].action == Action.SELL and loader.error is None


def test_missing_file_gives_a_hold_only_policy_then_loads_when_created(tmp_path):
    path = tmp_path / "strategy.txt"
    loader = PolicyLoader(path)
    assert loader.current().rules == () and loader.missing
    write(path, "IF CLOSE > 0 THEN BUY\n")
    assert len(loader.current().rules) == 1 and not loader.missing


def test_unchanged_file_costs_a_stat_and_no_read(tmp_path, monkeypatch):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    loader.current()
    reads = []
    monkeypatch.setattr(type(path), "read_text", lambda self, *a, **k: reads.append(self) or "")
    for _ in range(100):
        loader.current()
    assert reads == []


def test_deleting_the_file_after_a_good_load_gives_a_hold_only_policy(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF CLOSE > 0 THEN BUY\n")
    loader = PolicyLoader(path)
    assert len(loader.current().rules) == 1
    path.unlink()
    policy = loader.current()
    assert policy.rules == () and loader.missing and loader.error is None
    assert policy.decide({"close": np.array([1.0, 2.0])}).action == Action.HOLD


def test_a_text_that_used_to_crash_keeps_the_last_good_policy_with_a_positioned_error(tmp_path):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    good = loader.current()
    write(path, "IF MA4 > MA9 THEN BUY\nIF " + "-" * 330 + "1 > 0 THEN BUY\n")
    assert loader.current() is good
    assert (loader.error.line, loader.error.column) == (2, 67) and "levels deep" in str(loader.error)


def test_a_file_too_large_for_a_strategy_is_refused_without_being_read(tmp_path, monkeypatch):
    path = tmp_path / "strategy.txt"
    write(path, "IF MA4 > MA9 THEN BUY\n")
    loader = PolicyLoader(path)
    good = loader.current()
    write(path, "IF CLOSE > 1 THEN BUY\n" * 450_000)  # 9.9 MB, as in the report that stalled the worker 28 s
    reads = []
    monkeypatch.setattr(type(path), "read_text", lambda self, *a, **k: reads.append(self) or "")
    assert loader.current() is good and reads == []
    assert (loader.error.line, loader.error.column) == (1, 1)
    assert "9,900,000 bytes long; a strategy has at most 100,000 characters" in str(loader.error)


def test_a_text_just_over_the_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    from core.dsl import parser

    path = tmp_path / "strategy.txt"
    write(path, "#" * 100_000 + "\nIF CLOSE > 1 THEN BUY\n")  # within the bytes, over the characters
    monkeypatch.setattr(parser, "_parse_line", lambda *a: pytest.fail("parsed a text above the limit"))
    loader = PolicyLoader(path)
    assert loader.current().rules == () and "100,023 characters long; at most 100,000" in str(loader.error)

"""Saving the strategy file: the worker's compiler first, an atomic write, versions to restore."""

from __future__ import annotations

import os

import pytest

from core import store, strategies
from core.health import liveness
from core.dsl import StrategyError, compile_strategy
from core.dsl.parser import MAX_CHARS

NOW_MS = 1_800_000_000_000
GOOD = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"
OTHER = "IF EMA(9) CROSSES ABOVE EMA(21) THEN BUY\n"


@pytest.fixture
def path(data_dir):
    return data_dir / "strategy.txt"


@pytest.mark.parametrize("text", [GOOD, OTHER, "", "# only a comment\n", "if close > open then buy\r\n"])
def test_version_is_the_workers_policy_version(text):
    assert strategies.version_of(text) == compile_strategy(text).version


@pytest.mark.parametrize("text", ["IF MA4 > MA9 BUY\n",
                                  "IF MA4 > MA9 THEN BUY\nIF EMAA(9) > 1 THEN SELL\nIF RSI(0) < 3 THEN BUY"])
def test_check_gives_exactly_the_compilers_errors(text):
    with pytest.raises(StrategyError) as compiled:
        compile_strategy(text)
    policy, errors = strategies.check(text)
    assert policy is None and errors == compiled.value.errors


def test_check_of_a_valid_text_gives_its_policy():
    policy, errors = strategies.check(GOOD)
    assert errors == [] and policy.version == compile_strategy(GOOD).version and len(policy.rules) == 2


def test_crlf_from_a_browser_is_saved_as_lf(path, db):
    policy = strategies.save_strategy(path, GOOD.replace("\n", "\r\n"), db, NOW_MS)
    assert path.read_bytes() == GOOD.encode() and policy.version == compile_strategy(GOOD).version


def test_an_overlong_text_is_refused_with_a_position():
    _, errors = strategies.check("#" * (MAX_CHARS + 1))
    assert (errors[0].line, errors[0].column) == (1, 1) and "at most" in errors[0].message


def test_invalid_text_is_refused_and_nothing_changes(path, db):
    before = path.read_text()
    with pytest.raises(StrategyError) as refused:
        strategies.save_strategy(path, "IF MA4 > MA9 BUY\n", db, NOW_MS)
    assert refused.value.errors[0].message == "missing THEN before BUY"
    assert path.read_text() == before and strategies.versions(db) == []
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_save_writes_atomically_and_keeps_the_files_mode(path, db):
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    strategies.save_strategy(path, OTHER, db, NOW_MS)
    assert path.read_text() == OTHER
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not a rewrite in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_a_failed_write_leaves_the_old_file_and_no_version(path, db, monkeypatch):
    before = path.read_text()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(strategies.os, "fsync", full_disk)
    with pytest.raises(OSError):
        strategies.save_strategy(path, OTHER, db, NOW_MS)
    assert path.read_text() == before and strategies.versions(db) == []
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_saving_over_an_unrecorded_text_records_it_first(path, db):
    shipped = path.read_text()
    strategies.save_strategy(path, OTHER, db, NOW_MS)
    assert [(v.version, v.text) for v in strategies.versions(db)] == [
        (strategies.version_of(OTHER), OTHER), (strategies.version_of(shipped), shipped)]


def test_saving_the_same_text_twice_records_one_version(path, db):
    strategies.save_strategy(path, OTHER, db, NOW_MS)
    strategies.save_strategy(path, OTHER, db, NOW_MS + 1)
    assert [v.text for v in strategies.versions(db)].count(OTHER) == 1


def test_a_missing_file_is_created(data_dir, db):
    path = data_dir / "new.txt"
    strategies.save_strategy(path, GOOD, db, NOW_MS)
    assert path.read_text() == GOOD and [v.text for v in strategies.versions(db)] == [GOOD]


def test_restore_makes_an_old_version_current_and_records_it_again(path, db):
    shipped = path.read_text()
    strategies.save_strategy(path, OTHER, db, NOW_MS)
    policy = strategies.restore_version(path, strategies.version_of(shipped), db, NOW_MS + 1)
    assert path.read_text() == shipped and policy.version == strategies.version_of(shipped)
    assert [v.text for v in strategies.versions(db)] == [shipped, OTHER, shipped]


def test_restoring_an_unknown_version_raises(path, db):
    with pytest.raises(strategies.UnknownVersion):
        strategies.restore_version(path, "0123456789ab", db, NOW_MS)


def test_diff_shows_what_restoring_would_change():
    assert strategies.diff(GOOD, OTHER) == ["@@ -1,2 +1 @@", "-IF MA4 > MA9 THEN BUY", "-IF MA4 < MA9 THEN SELL",
                                            "+IF EMA(9) CROSSES ABOVE EMA(21) THEN BUY"]
    assert strategies.diff(GOOD, GOOD) == []


@pytest.mark.parametrize("loaded, error, alive, is_loaded", [
    ("abc", "", True, True),
    ("abc", "line 1, column 3: ...", True, False),
    ("old", "", True, False),
    (None, None, False, False),
])
def test_worker_view_tells_whether_the_saved_version_runs(db, loaded, error, alive, is_loaded):
    with db.conn:
        if loaded is not None:
            store.set_meta(db, strategies.LOADED_KEY, loaded, NOW_MS)
        if error is not None:
            store.set_meta(db, strategies.ERROR_KEY, error, NOW_MS)
        if alive:
            store.set_meta(db, liveness.BEACON_KEY, str(NOW_MS), NOW_MS)
    view = strategies.worker_view(db, NOW_MS + 1000)
    assert view.has_loaded("abc") is is_loaded and view.is_alive is alive


# -- a refused file on disk or in the editor: every page renders and says so ----------------------------

CRASHERS = {  # texts that raised RecursionError / OverflowError inside the compiler (500 on every page)
    "minus signs": ("IF " + "-" * 330 + "1 > 0 THEN BUY\n", "line 1, column 67", "nested more than 64 levels deep"),
    "long sum": ("IF " + "+".join(["1"] * 330) + " > 0 THEN BUY\n", "line 1, column 4", "this one has 330"),
    "long MA": ("IF MA1" + "0" * 400 + " > 0 THEN BUY\n", "line 1, column 4", "more than 20 digits"),
    "too long": ("IF CLOSE > 1 THEN BUY\n" * 5000, "line 1, column 1", "110,000 characters long; at most 100,000"),
}


@pytest.mark.parametrize("name", CRASHERS)
def test_pages_render_and_say_a_file_on_disk_is_refused(operator, path, name):
    text, where, message = CRASHERS[name]
    path.write_text(text)
    dashboard = operator.get("/")
    assert dashboard.status_code == 200
    assert "The strategy file does not compile" in dashboard.get_data(as_text=True)
    assert operator.get("/api/v1/chart").status_code == 200
    editor = operator.get("/admin/algo")
    page = editor.get_data(as_text=True)
    assert editor.status_code == 200 and "the worker would refuse this text" in page
    assert f"{where}</a>: " in page and message in page


@pytest.mark.parametrize("name", CRASHERS)
def test_validate_and_save_refuse_such_a_text_with_its_position(operator, path, name):
    text, where, message = CRASHERS[name]
    before = path.read_text()
    answer = operator.post("/admin/algo/validate", data={"strategy": text, "csrf_token": operator.csrf_token})
    assert answer.status_code == 200 and f"{where}</a>: " in answer.get_data(as_text=True)
    answer = operator.post("/admin/algo", data={"strategy": text, "csrf_token": operator.csrf_token})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422 and "Not saved" in page and message in page
    assert path.read_text() == before


NOT_UTF8 = b"IF CLOSE > 10 THEN BUY\nIF CLOSE < 5 THEN SELL # caf\xe9\n"  # Latin-1, as an old editor saves it


def test_a_strategy_file_that_is_not_utf8_is_refused_everywhere_with_its_place_and_kept_when_saved_over(
        operator, settings, runner, tmp_path):
    from core.policy_loader import PolicyLoader

    path = settings.strategy_path
    path.write_bytes(NOT_UTF8)
    expected = "2:29: error: the file is not UTF-8 text (byte 0xe9); save it as UTF-8"
    editor = operator.get("/admin/algo")
    assert editor.status_code == 200 and "the file is not UTF-8 text (byte 0xe9)" in editor.get_data(as_text=True)
    assert "IF CLOSE &lt; 5 THEN SELL # caf\ufffd" in editor.get_data(as_text=True)  # shown, the bad byte marked
    for page in ("/admin/algo/history", "/admin/algo/loaded"):
        assert operator.get(page).status_code == 200, page
    loader = PolicyLoader(path)
    assert loader.current().rules == () and loader.error.errors[0].format(str(path)) == f"{path}:{expected}"
    checked = runner.invoke(args=["check", str(path)])
    assert checked.exit_code == 1 and checked.output == f"{path}:{expected}\n"
    saved = operator.post("/admin/algo", data={"strategy": "IF CLOSE > 11 THEN BUY\n",
                                               "csrf_token": operator.csrf_token})
    assert saved.status_code == 302
    assert path.read_text() == "IF CLOSE > 11 THEN BUY\n"
    (aside,) = path.parent.glob("strategy.txt.unreadable-*")
    assert aside.read_bytes() == NOT_UTF8  # nothing lost


def test_a_huge_sparse_strategy_file_is_refused_unread_by_the_web_app_and_the_backtest(operator, settings, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, SHARED_DATA

    path = settings.strategy_path
    with open(path, "wb") as file:
        file.truncate(1 << 30)  # 1 GB of holes: instant to make, 80 s and 4 GB to render when read
    message = "the file is 1,073,741,824 bytes long; a strategy has at most 100,000 characters"
    editor = operator.get("/admin/algo")
    assert editor.status_code == 200 and message in editor.get_data(as_text=True)
    assert operator.get("/admin/algo/history").status_code == 200
    candles = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(candles),
                             "--strategy", str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"{path}:1:1: error: {message}\n")


def test_backtest_refuses_a_strategy_that_is_not_utf8_with_its_place(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, SHARED_DATA

    path = tmp_path / "latin1.txt"
    path.write_bytes(NOT_UTF8)
    candles = SHARED_DATA / "binance" / "XRPETH-1m-2019-10-11.csv"
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", "--candles", str(candles),
                             "--strategy", str(path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr) == (
        1, f"{path}:2:29: error: the file is not UTF-8 text (byte 0xe9); save it as UTF-8\n")

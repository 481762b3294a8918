"""Settings, the database, the boundary between core/ and Flask, and the check command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import store
from core.config import ConfigError, load_settings
from tests.conftest import ROOT


def test_settings_defaults_follow_the_design():
    s = load_settings({}, env_file=None)
    assert (s.data_dir, s.symbol, s.feed, s.replay_speed, s.broker) == (Path("data"), "XRPETH", "replay", 60, "paper")
    assert (s.heartbeat_interval_s, s.heartbeat_grace_s, s.signal_ttl_s, s.alert_urls) == (60, 90, 600, ())


def test_settings_read_environment_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("OMNIWISE_SYMBOL=ethbtc\nOMNIWISE_REPLAY_SPEED=0\nOMNIWISE_ALERT_URLS=json://a json://b\n")
    s = load_settings({"OMNIWISE_REPLAY_SPEED": "10", "BINANCE_API_SECRET": "s3cret"}, env_file=env_file)
    assert (s.symbol, s.replay_speed, s.alert_urls) == ("ETHBTC", 10, ("json://a", "json://b"))
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize("replay_file, symbol", [
    ("XRPETH-aggTrades-2019-10-11.csv", "XRPETH"),
    ("/anywhere/ETHBTC-1m.csv", "ETHBTC"),
    ("btcusdt-1m-2024-01.csv", "BTCUSDT"),
    ("SOLUSDT-trades-2025-03-01.csv", "SOLUSDT"),
])
def test_the_symbol_follows_the_replay_file_name_when_not_set(replay_file, symbol):
    assert load_settings({"OMNIWISE_REPLAY_FILE": replay_file}, env_file=None).symbol == symbol
    given = {"OMNIWISE_REPLAY_FILE": replay_file, "OMNIWISE_SYMBOL": "bnbbtc"}
    assert load_settings(given, env_file=None).symbol == "BNBBTC"  # a set symbol wins


@pytest.mark.parametrize("environ, message", [
    ({"OMNIWISE_FEED": "binance"}, "OMNIWISE_FEED=binance needs OMNIWISE_SYMBOL"),
    ({"OMNIWISE_REPLAY_FILE": "my-prices.csv"}, "does not start with a market"),
])
def test_a_symbol_that_cannot_be_known_is_asked_for(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ, env_file=None)


@pytest.mark.parametrize("name, value, message", [
    ("OMNIWISE_BROKER", "kraken", "not one of: paper, binance-spot, binance-futures"),
    ("OMNIWISE_FEED", "x", "not one of: replay, binance"),
    ("OMNIWISE_REPLAY_SPEED", "fast", "is not a number"),
    ("OMNIWISE_HEARTBEAT_INTERVAL", "0", "must be at least 1"),
])
def test_bad_settings_are_refused_with_the_variable_named(name, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings({name: value}, env_file=None)
    assert name in str(caught.value)


def test_database_is_wal_with_busy_timeout_and_migrations_apply_once(tmp_path):
    db = store.connect(tmp_path / "x" / "omniwise.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
    assert "meta" in db.table_names()
    assert store.migrate(db) == []  # nothing pending the second time
    db.close()


def test_generated_secret_is_stable_across_connections(tmp_path):
    path = tmp_path / "omniwise.db"
    with store.connect(path) as a:
        first = store.ensure_secret(a, "token")
    with store.connect(path) as b:
        assert store.ensure_secret(b, "token") == first and len(first) >= 32


def test_core_never_imports_flask():
    code = ("import pkgutil, importlib, sys, core\n"
            "for m in pkgutil.walk_packages(core.__path__, 'core.'): importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'blueprints', 'worker', 'omniwise')]\n"
            "print(len([m for m in sys.modules if m.startswith('core.')]))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 6  # the walk really imported the core modules


def test_blueprints_never_import_the_script_that_assembles_them():
    # Flask's tutorial shape: the request's db lives in the web package (blueprints/db.py), so no import loop.
    code = ("import pkgutil, importlib, sys, blueprints\n"
            "for m in pkgutil.walk_packages(blueprints.__path__, 'blueprints.'): importlib.import_module(m.name)\n"
            "assert 'omniwise' not in sys.modules and 'worker' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for path in (ROOT / "blueprints").glob("*.py"):  # nor later, from inside a view
        assert not re.search(r"^\s*(from omniwise |import omniwise)", path.read_text(), re.M), path


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "omniwise.py"), *args], cwd=cwd, capture_output=True, text=True)


def test_check_prints_compiler_style_errors_and_exits_1(runner, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("IF MA4 > MA9 THEN BUY\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("# mine\nIF MA4 > MA9 BUY\nIF EMAA(9) > 1 THEN SELL\n")
    result = runner.invoke(args=["check", str(good), str(bad)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{bad}:2:14: error: missing THEN before BUY",
        f"{bad}:3:4: error: unknown name 'EMAA': did you mean EMA?",
    ]


def test_check_refuses_deep_long_and_huge_texts_with_positions_never_a_traceback(tmp_path):
    files = {"minus.txt": "IF " + "-" * 330 + "1 > 0 THEN BUY\n",
             "sum.txt": "IF " + "+".join(["1"] * 330) + " > 0 THEN BUY\n",
             "ma.txt": "# period\nIF MA1" + "0" * 400 + " > 0 THEN BUY\n",
             "huge.txt": "IF CLOSE > 1 THEN BUY\n" * 450_000}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_cli("check", *(str(tmp_path / name) for name in files))
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'minus.txt'}:1:67: error: the condition is nested more than 64 levels deep "
        "(parentheses, minus signs, NOT and calls all count); simplify it",
        f"{tmp_path / 'sum.txt'}:1:4: error: a calculation has at most 32 terms, this one has 330; "
        "split it or use an indicator",
        f"{tmp_path / 'ma.txt'}:2:4: error: the period of MA has more than 20 digits",
        f"{tmp_path / 'huge.txt'}:1:1: error: the file is 9,900,000 bytes long; "
        "a strategy has at most 100,000 characters",
    ]


def test_check_exits_0_for_the_shipped_strategy(runner):
    result = runner.invoke(args=["check", str(ROOT / "data" / "strategy.txt")])
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"{ROOT / 'data' / 'strategy.txt'}: note: needs 5.0 hours of history (300 one-minute candles)\n"


def test_flask_cli_runs_the_same_check(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("IF CLOSE > 1 THEN BUYY\n")
    env = {"PATH": "/usr/bin:/bin", "OMNIWISE_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([str(Path(sys.executable).with_name("flask")), "--app", "omniwise", "check", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "bad.txt:1:19: error: unknown action 'BUYY'" in result.stdout


def test_status_page_answers_and_shows_the_rules(operator):
    page = operator.get("/")
    assert page.status_code == 200
    assert b"IF MA4 &gt; MA9 THEN BUY" in page.data


def test_every_setting_is_explained_in_env_example_and_the_readme():
    from core.config import _FIELDS, PREFIX

    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for suffix in _FIELDS:
        name = PREFIX + suffix
        assert name in example, f"{name} is missing from .env.example"
        grouped = f"`_{suffix.split('_', 1)[-1]}`"  # e.g. `_DECISIONS_DAYS` beside OMNIWISE_KEEP_CANDLES_DAYS
        assert name in readme or grouped in readme, f"{name} is missing from the README"

"""Shared fixtures: a temporary data folder, settings pointing at it, the app, a client, the db, the operator."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from core import store
from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
if not SHARED_DATA.exists():  # CI clones next to a copy of shared/; developers work in /work/main
    SHARED_DATA = Path("/work/shared/data")

# Hypothesis's per-example deadline measures the machine's load, not our code: on a busy 2-core CI box a
# 200 ms deadline fails examples that take 60 ms alone. Speed is measured by bench/, never by tests.
hypothesis_settings.register_profile("omniwise", deadline=None)
hypothesis_settings.load_profile("omniwise")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data folder holding the shipped strategy."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(ROOT / "data" / "strategy.txt", folder / "strategy.txt")
    return folder


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir)


@pytest.fixture
def db(settings: Settings):
    database = store.connect(settings.db_path)
    yield database
    database.close()


@pytest.fixture
def app(settings: Settings):
    from omniwise import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app, data_dir: Path):
    """The app's command line run in this process (Flask's test_cli_runner), on the test's data folder."""
    return app.test_cli_runner(env={"OMNIWISE_DATA_DIR": str(data_dir)})


OPERATOR_PASSWORD = "correct horse battery staple"


def csrf_token_of(page: bytes | str) -> str:
    """The CSRF token a rendered page carries in its forms."""
    text = page.decode() if isinstance(page, bytes) else page
    return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)


_operator_hash: list[str] = []  # scrypt costs ~0.1 s of CPU: one hash of the operator's password per test process


@pytest.fixture
def operator(app, db, monkeypatch):
    """A test client logged in as the operator through the login form (which checks the password for real)."""
    import time

    from core import auth

    real_hash = auth.generate_password_hash
    if not _operator_hash:
        _operator_hash.append(real_hash(OPERATOR_PASSWORD))
    with monkeypatch.context() as patch:  # set_password stores this process's one (salted) hash of it
        patch.setattr(auth, "generate_password_hash",
                      lambda password: _operator_hash[0] if password == OPERATOR_PASSWORD else real_hash(password))
        auth.set_password(db, OPERATOR_PASSWORD, int(time.time() * 1000))
    browser = app.test_client()
    token = csrf_token_of(browser.get("/login").data)
    answer = browser.post("/login", data={"password": OPERATOR_PASSWORD, "csrf_token": token})
    assert answer.status_code == 302, answer.data
    browser.csrf_token = csrf_token_of(browser.get("/admin/algo").data)
    return browser


@pytest.fixture(autouse=True, scope="module")
def reap_processes():
    """No server or worker outlives the test module that started it, even when a test failed midway."""
    yield
    from tests.processes import reap

    reap()

"""Shared fixtures: a temporary data folder, settings pointing at it, the app, a client, the db."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core import store
from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
if not SHARED_DATA.exists():  # CI clones next to a copy of shared/; developers work in /work/main
    SHARED_DATA = Path("/work/shared/data")


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

"""The request's database connection, as Flask's tutorial keeps it (flaskr/db.py): opened on first use, closed
with the app context. Blueprints import it from here, never from omniwise.py (which imports them)."""

from __future__ import annotations

from flask import Flask, current_app, g

from core import store


def get_db():
    """The request's database connection, opened on first use."""
    if "db" not in g:
        g.db = store.open_db(current_app.config["SETTINGS"].db_path)
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    """Close the request's connection, if one was opened."""
    db = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Close each request's connection when its app context ends."""
    app.teardown_appcontext(close_db)

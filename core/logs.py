"""One log format for both processes, to stdout (journald and honcho add nothing to untangle)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stdout in the Omniwise format, at `level` and above."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def gunicorn_logconfig(level: str = "INFO") -> dict:
    """gunicorn's own loggers in the same format (its `logconfig_dict` setting)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"omniwise": {"format": FORMAT, "datefmt": DATE_FORMAT}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "omniwise",
                                "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {"gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
                    "gunicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False}},
    }

"""Settings of both processes, read once from OMNIWISE_* variables and an optional .env file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

PREFIX = "OMNIWISE_"


class ConfigError(Exception):
    """A setting has a value that cannot be used. Caller: print it and stop before starting anything."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable, with DESIGN.md's defaults. Build with `load_settings`."""

    data_dir: Path = Path("data")
    symbol: str = "BTCUSDT"
    feed: str = "replay"
    replay_file: Path | None = None
    replay_speed: float = 60.0
    broker: str = "paper"
    webhook_token: str | None = None
    admin_password: str | None = None
    heartbeat_interval_s: float = 60.0
    heartbeat_grace_s: float = 90.0
    signal_ttl_s: float = 600.0
    alert_urls: tuple[str, ...] = ()
    log_level: str = "INFO"
    binance_api_key: str | None = dataclasses.field(default=None, repr=False)
    binance_api_secret: str | None = dataclasses.field(default=None, repr=False)

    @property
    def strategy_path(self) -> Path:
        """The operator's strategy file."""
        return self.data_dir / "strategy.txt"

    @property
    def db_path(self) -> Path:
        """The SQLite database shared by the web app and the worker."""
        return self.data_dir / "omniwise.db"


# variable suffix -> (field name, parser)
_FIELDS = {
    "DATA_DIR": ("data_dir", Path),
    "SYMBOL": ("symbol", lambda v: v.strip().upper()),
    "FEED": ("feed", lambda v: _choice(v, "FEED", ("replay", "binance"))),
    "REPLAY_FILE": ("replay_file", Path),
    "REPLAY_SPEED": ("replay_speed", lambda v: _number(v, "REPLAY_SPEED", minimum=0)),
    "BROKER": ("broker", lambda v: _choice(v, "BROKER", ("paper", "binance-spot", "binance-futures"))),
    "WEBHOOK_TOKEN": ("webhook_token", str),
    "ADMIN_PASSWORD": ("admin_password", str),
    "HEARTBEAT_INTERVAL": ("heartbeat_interval_s", lambda v: _number(v, "HEARTBEAT_INTERVAL", minimum=1)),
    "HEARTBEAT_GRACE": ("heartbeat_grace_s", lambda v: _number(v, "HEARTBEAT_GRACE", minimum=0)),
    "SIGNAL_TTL": ("signal_ttl_s", lambda v: _number(v, "SIGNAL_TTL", minimum=1)),
    "ALERT_URLS": ("alert_urls", lambda v: tuple(v.split())),
    "LOG_LEVEL": ("log_level", lambda v: _choice(v.upper(), "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))),
}


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    value = value.strip()
    if value not in allowed:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not one of: {', '.join(allowed)}")
    return value


def _number(value: str, name: str, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a number") from None
    if not number >= minimum:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be at least {minimum:g}")
    return number


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Read settings from the environment, falling back to the .env file, then to the defaults."""
    values: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    kwargs: dict[str, object] = {}
    for suffix, (field, parse) in _FIELDS.items():
        raw = values.get(PREFIX + suffix)
        if raw is not None and raw != "":
            kwargs[field] = parse(raw)
    for name, field in (("BINANCE_API_KEY", "binance_api_key"), ("BINANCE_API_SECRET", "binance_api_secret")):
        if values.get(name):
            kwargs[field] = values[name]
    return Settings(**kwargs)

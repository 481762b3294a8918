"""Settings of both processes, read once from OMNIWISE_* variables and an optional .env file."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

PREFIX = "OMNIWISE_"
BUNDLED_REPLAY = Path(__file__).resolve().parent.parent / "data" / "replay" / "XRPETH-aggTrades-2019-10-11.csv"
# data.binance.vision names files SYMBOL-aggTrades-DATE.csv or SYMBOL-1m-DATE.csv
_SYMBOL_IN_FILE_NAME = re.compile(r"^([A-Za-z0-9]{2,20})-(?:aggTrades|trades|\d+[smhdwM])[-.]")


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
    paper_balance: float = 10_000.0  # quote asset the paper account starts with
    fee_rate: float = 0.001  # per side, paper trading and backtests
    paper_slippage: float = 0.0  # fraction every paper market fill is moved against the trader
    webhook_token: str | None = None
    webhook_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: any address
    webhook_rate_per_s: float = 20.0  # per source address, burst twice that; 0 turns the limit off
    trust_proxy: int = 0  # reverse proxies in front whose X-Forwarded-For is believed
    admin_password: str | None = None
    heartbeat_interval_s: float = 60.0
    heartbeat_grace_s: float = 90.0
    signal_ttl_s: float = 600.0
    alert_urls: tuple[str, ...] = ()
    alert_repeat_s: float = 1800.0  # a persisting mismatch is alerted again this often
    on_mismatch: str = "alert"  # or "follow": move the position to the external signal after the grace
    ping_url: str | None = None  # fetched after each good heartbeat check (a dead-man's switch)
    log_level: str = "INFO"
    keep_candles_days: float = 90  # retention; 0 keeps rows forever
    keep_decisions_days: float = 90
    keep_signals_days: float = 90
    keep_alerts_days: float = 365
    testnet: bool = True  # Binance's testnet; off trades real money and needs live_trading
    live_trading: str | None = None  # LIVE_TRADING_OPT_IN confirms trading real money
    futures_leverage: int = 1  # set on the futures symbol at start, and verified
    futures_margin: str = "cross"  # or "isolated": the futures symbol's margin type, set at start
    order_quote: float | None = None  # at most this much quote (margin) asset per BUY on Binance; None: all free
    warmup_hours: float = 24.0  # 1-minute klines loaded from Binance on start, for warm indicators
    binance_timeout_s: float = 10.0  # per REST request
    binance_recv_window_ms: int = 5000  # how long after signing Binance may still execute a request
    binance_api_url: str | None = None  # the *_url settings replace Binance's hosts (tests, proxies)
    binance_futures_url: str | None = None
    binance_stream_url: str | None = None
    binance_futures_stream_url: str | None = None
    binance_archive_url: str = "https://data.binance.vision"  # Binance's public data archive, for `download`
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

    @property
    def short_refusal(self) -> str | None:
        """Why the broker cannot trade SHORT (binance-spot: spot holds no negative balance), else None."""
        if self.broker == "binance-spot":
            return ("SHORT needs a broker that can short: OMNIWISE_BROKER=binance-spot cannot (use binance-futures, "
                    "or paper)")
        return None

    @property
    def mode(self) -> str:
        """What trading means: "paper" (simulated), "testnet" (Binance's test exchange) or "live" (real money)."""
        if self.broker == "paper":
            return "paper"
        return "testnet" if self.testnet else "live"


# variable suffix -> (field name, parser)
_FIELDS = {
    "DATA_DIR": ("data_dir", Path),
    "SYMBOL": ("symbol", lambda v: v.strip().upper()),
    "FEED": ("feed", lambda v: _choice(v, "FEED", ("replay", "binance"))),
    "REPLAY_FILE": ("replay_file", Path),
    "REPLAY_SPEED": ("replay_speed", lambda v: _number(v, "REPLAY_SPEED", minimum=0)),
    "PAPER_BALANCE": ("paper_balance", lambda v: _number(v, "PAPER_BALANCE", minimum=0)),
    "FEE": ("fee_rate", lambda v: _number(v, "FEE", minimum=0)),
    "PAPER_SLIPPAGE": ("paper_slippage", lambda v: _fraction(v, "PAPER_SLIPPAGE")),
    "BROKER": ("broker", lambda v: _choice(v, "BROKER", ("paper", "binance-spot", "binance-futures"))),
    "WEBHOOK_TOKEN": ("webhook_token", str),
    "WEBHOOK_ALLOW": ("webhook_allow", lambda v: _networks(v, "WEBHOOK_ALLOW")),
    "WEBHOOK_RATE": ("webhook_rate_per_s", lambda v: _number(v, "WEBHOOK_RATE", minimum=0)),
    "TRUST_PROXY": ("trust_proxy", lambda v: int(_number(v, "TRUST_PROXY", minimum=0))),
    "ADMIN_PASSWORD": ("admin_password", str),
    "HEARTBEAT_INTERVAL": ("heartbeat_interval_s", lambda v: _number(v, "HEARTBEAT_INTERVAL", minimum=1)),
    "HEARTBEAT_GRACE": ("heartbeat_grace_s", lambda v: _number(v, "HEARTBEAT_GRACE", minimum=0)),
    "SIGNAL_TTL": ("signal_ttl_s", lambda v: _number(v, "SIGNAL_TTL", minimum=1)),
    "ALERT_URLS": ("alert_urls", lambda v: tuple(v.split())),
    "ALERT_REPEAT": ("alert_repeat_s", lambda v: _number(v, "ALERT_REPEAT", minimum=1)),
    "ON_MISMATCH": ("on_mismatch", lambda v: _choice(v, "ON_MISMATCH", ("alert", "follow"))),
    "PING_URL": ("ping_url", str),
    "KEEP_CANDLES_DAYS": ("keep_candles_days", lambda v: _number(v, "KEEP_CANDLES_DAYS", minimum=0)),
    "KEEP_DECISIONS_DAYS": ("keep_decisions_days", lambda v: _number(v, "KEEP_DECISIONS_DAYS", minimum=0)),
    "KEEP_SIGNALS_DAYS": ("keep_signals_days", lambda v: _number(v, "KEEP_SIGNALS_DAYS", minimum=0)),
    "KEEP_ALERTS_DAYS": ("keep_alerts_days", lambda v: _number(v, "KEEP_ALERTS_DAYS", minimum=0)),
    "TESTNET": ("testnet", lambda v: _flag(v, "TESTNET")),
    "LIVE_TRADING": ("live_trading", str.strip),
    "FUTURES_LEVERAGE": ("futures_leverage", lambda v: _whole(v, "FUTURES_LEVERAGE", 1, 125)),
    "FUTURES_MARGIN": ("futures_margin", lambda v: _choice(v.lower(), "FUTURES_MARGIN", ("cross", "isolated"))),
    "ORDER_QUOTE": ("order_quote", lambda v: _number(v, "ORDER_QUOTE", minimum=0)),
    "WARMUP_HOURS": ("warmup_hours", lambda v: _number(v, "WARMUP_HOURS", minimum=0)),
    "BINANCE_TIMEOUT": ("binance_timeout_s", lambda v: _number(v, "BINANCE_TIMEOUT", minimum=0.1)),
    "BINANCE_RECV_WINDOW": ("binance_recv_window_ms", lambda v: _whole(v, "BINANCE_RECV_WINDOW", 1, 60_000)),
    "BINANCE_API_URL": ("binance_api_url", str.strip),
    "BINANCE_FUTURES_URL": ("binance_futures_url", str.strip),
    "BINANCE_STREAM_URL": ("binance_stream_url", str.strip),
    "BINANCE_FUTURES_STREAM_URL": ("binance_futures_stream_url", str.strip),
    "BINANCE_ARCHIVE_URL": ("binance_archive_url", str.strip),
    "LOG_LEVEL": ("log_level", lambda v: _choice(v.upper(), "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))),
}


_FLAGS = {"1": True, "yes": True, "true": True, "on": True, "0": False, "no": False, "false": False, "off": False}
LIVE_TRADING_OPT_IN = "yes-real-money"


def _flag(value: str, name: str) -> bool:
    try:
        return _FLAGS[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not yes or no") from None


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    value = value.strip()
    if value not in allowed:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not one of: {', '.join(allowed)}")
    return value


# TradingView's documented webhook senders, the preset `OMNIWISE_WEBHOOK_ALLOW=tradingview`.
TRADINGVIEW_ADDRESSES = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")


def _networks(value: str, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    words = [a for w in value.split() for a in (TRADINGVIEW_ADDRESSES if w.lower() == "tradingview" else (w,))]
    try:
        return tuple(ipaddress.ip_network(w, strict=False) for w in words)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name}: {exc} (give addresses or CIDRs like 10.0.0.0/8, "
                          "or the word tradingview)") from None


def _whole(value: str, name: str, minimum: int, maximum: int) -> int:
    number = _number(value, name, minimum)
    if number != int(number) or number > maximum:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be a whole number from {minimum} to {maximum:,}")
    return int(number)


def _number(value: str, name: str, minimum: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={value!r} is not a number") from None
    if not number >= minimum:
        raise ConfigError(f"{PREFIX}{name}={value!r} must be at least {minimum:g}")
    return number


def _fraction(value: str, name: str) -> float:
    number = _number(value, name, minimum=0)
    if not number < 0.5:  # half the price against the trader is no longer a slippage (and inf is no number)
        raise ConfigError(f"{PREFIX}{name}={value!r} must be a fraction below 0.5 (0.001 is 0.1 %)")
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
    if "symbol" not in kwargs:
        kwargs["symbol"] = _default_symbol(kwargs.get("feed", "replay"), kwargs.get("replay_file") or BUNDLED_REPLAY)
    settings = Settings(**kwargs)
    if settings.broker != "paper" and settings.feed != "binance":
        raise ConfigError(f"{PREFIX}BROKER={settings.broker} places real orders: it needs {PREFIX}FEED=binance "
                          f"(a replay would trade old prices, faster than real time)")
    if settings.mode == "live" and settings.live_trading != LIVE_TRADING_OPT_IN:
        raise ConfigError(f"{PREFIX}TESTNET=no with {PREFIX}BROKER={settings.broker} trades real money: confirm it "
                          f"with {PREFIX}LIVE_TRADING={LIVE_TRADING_OPT_IN}, or keep the testnet")
    return settings


def symbol_of_file(path: Path) -> str | None:
    """The market a Binance public-data file is named after (XRPETH-aggTrades-2019-10-11.csv -> XRPETH), or None."""
    match = _SYMBOL_IN_FILE_NAME.match(Path(path).name)
    return match.group(1).upper() if match else None


def _default_symbol(feed: str, replay_file: Path) -> str:
    if feed == "binance":
        raise ConfigError(f"{PREFIX}FEED=binance needs {PREFIX}SYMBOL, the market to trade (e.g. BTCUSDT)")
    symbol = symbol_of_file(replay_file)
    if symbol is None:
        raise ConfigError(f"{PREFIX}SYMBOL is not set and the replay file name {Path(replay_file).name!r} does not "
                          "start with a market (as in XRPETH-aggTrades-2019-10-11.csv): set "
                          f"{PREFIX}SYMBOL to the market the file holds")
    return symbol

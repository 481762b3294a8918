"""Omniwise web app (Flask app factory) and command line: check, serve, init, backup, restore, ...

`python omniwise.py COMMAND` and `flask --app omniwise COMMAND` run the same commands.
"""

from __future__ import annotations

import contextlib
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["backtest"]:  # a backtest needs no web stack: skip loading it
    import backtest_cli

    backtest_cli.main()

from pathlib import Path

import click
from flask import Flask
from flask.cli import FlaskGroup
from werkzeug.middleware.proxy_fix import ProxyFix

from backtest_cli import backtest_command
from core import auth, clock, logs, store, warmup
from core.webhook import intake
from core.config import ConfigError, Settings, load_settings
from core.dsl import StrategyError, compile_strategy, sweeps
from core.strategy_file import read_within_limit


MAX_REQUEST_BYTES = 1 << 20  # the editor's 100,000 characters, several times over


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app; `settings` defaults to the OMNIWISE_* environment and .env."""
    app = Flask(__name__)
    settings = settings or load_settings()
    app.config["SETTINGS"] = settings
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=14 * 86_400,
                      # Behind the HTTPS proxy of docs/deploy.md the cookie never travels in clear text;
                      # OMNIWISE_SESSION_COOKIE_SECURE still overrides it.
                      SESSION_COOKIE_SECURE=settings.trust_proxy > 0,
                      # A bigger body is refused (413) from its Content-Length, before a byte of it is read;
                      # the webhook keeps its own 4 KB limit.
                      MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES)
    app.config.from_prefixed_env("OMNIWISE")
    with store.connect(settings.db_path) as db:  # schema up to date before the first request
        if not app.config.get("SECRET_KEY"):  # Flask's default config holds the key None, so setdefault won't do
            # Kept in the database, so `set-password` can rotate it for every web process (blueprints/guard.py).
            app.config["SECRET_KEY"] = store.ensure_secret(db, auth.SIGNING_KEY)
            app.extensions["omniwise.signing_key_in_db"] = True
        logs.add_secrets(app.config["SECRET_KEY"])
        if settings.admin_password:  # OMNIWISE_ADMIN_PASSWORD wins over a password set before
            auth.ensure_password(db, settings.admin_password, clock.now_ms())
    from blueprints import db as web_db
    from blueprints import guard, htmx

    web_db.init_app(app)
    htmx.init_app(app)
    guard.init_app(app)  # before the blueprints: the guard runs first on every request
    if settings.trust_proxy:  # believe X-Forwarded-For/-Proto from that many reverse proxies, no more
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trust_proxy, x_proto=settings.trust_proxy)

    from blueprints import admin, alerts as alerts_bp, controls, formats, status, trades

    app.register_blueprint(admin.bp)
    app.register_blueprint(status.bp)
    for blueprint in (formats.bp, trades.bp, controls.bp, alerts_bp.bp):
        app.register_blueprint(blueprint)
    from blueprints import signals as signals_bp

    app.register_blueprint(signals_bp.bp)
    for command in COMMANDS:
        app.cli.add_command(command)
    return app


# -- command line -------------------------------------------------------------------------------


@click.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sweep", is_flag=True, help="accept sweeps ({4..12}) and check every value they take")
def check_command(files: tuple[Path, ...], sweep: bool) -> None:
    """Check strategy files; print FILE:LINE:COL: error: MESSAGE for each error, exit 1 on any."""
    failed = False
    for path in files:
        try:
            text = read_within_limit(path)  # as the worker reads it: a huge file is refused unread
            if sweep and sweeps.has_sweep(text):
                sweeps.check_sweep(text)
            else:
                need = warmup.history_needed(compile_strategy(text))
                # On stderr: stdout stays the compiler-style error list editors read.
                click.echo(f"{path}: note: {need.text()}", err=True)
                if need.warning():
                    click.echo(f"{path}: warning: {need.warning()}", err=True)
        except OSError as exc:
            click.echo(f"{path}:1:1: error: cannot read the file: {exc.strerror or exc}")
            failed = True
        except StrategyError as exc:
            failed = True
            for error in exc.errors:
                click.echo(error.format(str(path)))
    sys.exit(1 if failed else 0)


@click.command("candles")
@click.option("--agg-trades", "agg_trades", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Binance aggTrades CSV to read")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="klines CSV to write")
@click.option("--until-ms", type=int, default=None,
              help="flat candles for empty minutes up to this time [default: end of the last trade's UTC day]")
def candles_command(agg_trades: Path, out: Path, until_ms: int | None) -> None:
    """Build Binance's 1-minute klines (12 columns, no header) from an aggTrades CSV."""
    from core.candles import candles_from_ticks, format_kline_row
    from core.feeds import FeedError, read_agg_trades

    try:  # read everything first, so that a bad file leaves no half-written output
        candles = list(candles_from_ticks(read_agg_trades(agg_trades), until_ms))
    except FeedError as exc:
        click.echo(exc.format())
        sys.exit(1)
    try:  # CRLF line ends (RFC 4180), as in Binance's files under shared/data, so the two compare equal
        out.write_text("".join(",".join(format_kline_row(candle)) + "\r\n" for candle in candles), encoding="utf-8")
    except OSError as exc:
        click.echo(f"{out}: error: cannot write: {exc}")
        sys.exit(1)
    click.echo(f"{len(candles)} candles written to {out}")


@click.command("download")
@click.argument("symbol")
@click.option("--from", "from_day", required=True, metavar="YYYY-MM-DD", help="first day (UTC)")
@click.option("--to", "to_day", metavar="YYYY-MM-DD", help="last day (UTC), inclusive  [default: today]")
@click.option("--market", default="spot", show_default=True, type=click.Choice(["spot", "futures"]),
              help="spot, or USDⓈ-M futures")
def download_command(symbol: str, from_day: str, to_day: str | None, market: str) -> None:
    """Download SYMBOL's 1-minute klines from Binance's public data archive into DATA_DIR/history/."""
    from core import download
    from core.feeds import FeedError
    from core.history import HistoryError

    settings = _settings_or_exit()
    with _progress_bar() as on_file:
        try:
            lines = download.run(settings, symbol, market, from_day, to_day, clock.now_ms(), on_file)
        except (download.DownloadError, HistoryError) as exc:
            raise click.ClickException(str(exc)) from None
        except FeedError as exc:
            raise click.ClickException(exc.format()) from None
    click.echo("\n".join(lines))


@contextlib.contextmanager
def _progress_bar():
    """A callback drawing a progress bar of files on a terminal (tqdm), or doing nothing elsewhere."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(unit="file", file=sys.stderr, leave=False) as bar:
        def on_file(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        yield on_file


@click.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def backup_command(dest: Path) -> None:
    """Copy the database to DEST while both processes run (SQLite online backup), and check the copy."""
    from core.maintenance import BackupError, backup

    settings = _settings_or_exit()
    try:
        pages = backup(settings.db_path, dest)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {settings.db_path} to {dest}: {pages} pages, integrity ok")


@click.command("restore")
@click.argument("backup_file", metavar="BACKUP", type=click.Path(dir_okay=False, path_type=Path))
def restore_command(backup_file: Path) -> None:
    """Put BACKUP in place of the database (stop both processes first): the session key and the client-id
    prefix are made new, so no cookie from before and no order id is used again."""
    from core.maintenance import BackupError, WorkerRunning, restore

    settings = _settings_or_exit()
    try:
        summary = restore(backup_file, settings.data_dir, clock.now_ms())
    except WorkerRunning as exc:
        raise click.ClickException(f"{exc}: stop it first (sudo systemctl stop omniwise-worker)") from None
    except BackupError as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    except OSError as exc:  # the data folder cannot be written (the backup is put in place by one rename)
        raise click.ClickException(f"cannot restore into {settings.data_dir}: {exc.strerror or exc} "
                                   f"({exc.filename})") from None
    click.echo(f"restored {backup_file} to {settings.db_path}")
    click.echo(f"  taken at:       {_utc(summary.taken_at_ms) or 'not recorded (an older backup)'}")
    click.echo(f"  worker's last beacon: {_utc(summary.last_beacon_ms) or 'none'}")
    click.echo(f"  last candle:    {_utc(summary.last_candle_ms) or 'none'}")
    if summary.last_decision:
        decision_id, created_at_ms, action = summary.last_decision
        click.echo(f"  last decision:  #{decision_id} {action} at {_utc(created_at_ms)}")
    else:
        click.echo("  last decision:  none")
    click.echo("Every session is logged out and orders get a new client-id prefix. Start the web app and the "
               "worker again; the worker reads the position from the exchange.")


def _utc(time_ms: int | None) -> str | None:
    if time_ms is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command("init")
@click.option("--port", type=int, default=None,
              help="the port `serve` will listen on: also print the webhook's URL on this machine (127.0.0.1)")
def init_command(port: int | None) -> None:
    """Create the data folder, the database and a starter strategy; print where to open the browser."""
    settings = _settings_or_exit()
    with store.connect(settings.db_path) as db:
        is_token_new = not settings.webhook_token and store.get_meta(db, intake.TOKEN_KEY) is None
        token = intake.webhook_token(db, settings.webhook_token)
        password = auth.ensure_password(db, settings.admin_password, clock.now_ms())
    if not settings.strategy_path.exists():
        settings.strategy_path.write_text(Path(__file__).with_name("data").joinpath("strategy.txt").read_text())
    click.echo(f"Omniwise data in {settings.data_dir.resolve()}")
    _show_new_password(password)
    # Shown only when made here: systemd runs `init` before every start, and journald keeps what it prints.
    if is_token_new:
        click.echo(f"Signal webhook (shown once; the admin's Webhook page shows it again): "
                   f"https://YOUR-HOST/api/v1/external-signal/{token}")
        click.echo("  (the token is the last segment; TradingView calls ports 80 and 443 only, so serve it behind "
                   "a reverse proxy with HTTPS)")
    else:
        click.echo("Signal webhook: https://YOUR-HOST/api/v1/external-signal/TOKEN (the token is on the admin's "
                   "Webhook page)")
    if port is not None:
        # The token only on a terminal or when new: a service's log (journald) never gets it again.
        shown = token if is_token_new or sys.stdout.isatty() else "TOKEN"
        click.echo(f"From this machine: curl -H 'Content-Type: text/plain' --data buy "
                   f"http://127.0.0.1:{port}/api/v1/external-signal/{shown}")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=5000, show_default=True, type=int, help="port to listen on")
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
def serve_command(host: str, port: int, workers: int) -> None:
    """Run the web app on gunicorn, a production WSGI server."""
    import webserver

    settings = _settings_or_exit()
    with store.connect(settings.db_path) as db:  # create the schema before any worker starts
        _show_new_password(auth.ensure_password(db, settings.admin_password, clock.now_ms()))
    click.echo(f"Omniwise web app on http://{host}:{port}/")
    webserver.serve(settings, create_app, host, port, workers)


@click.command("set-password")
def set_password_command() -> None:
    """Set the operator's password: asked for twice, or read as one line from standard input.

    OMNIWISE_ADMIN_PASSWORD, when set, replaces it again on the next start.
    """
    settings = _settings_or_exit()
    if sys.stdin.isatty():
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < auth.MIN_PASSWORD_CHARS:
        raise click.ClickException(f"the password must have at least {auth.MIN_PASSWORD_CHARS} characters; "
                                   "nothing was changed")
    with store.connect(settings.db_path) as db:
        auth.set_password(db, password, clock.now_ms())
    click.echo("Password set.")


def _show_new_password(password: str | None) -> None:
    if password:  # shown this once: only its hash is kept
        click.echo(f"Operator password (shown once; change it with `python omniwise.py set-password`): {password}")



def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


COMMANDS = (check_command, init_command, serve_command, candles_command, backtest_command, backup_command,
            restore_command, set_password_command, download_command)

cli = FlaskGroup(create_app=create_app, add_default_commands=False, help="Omniwise: a self-hosted trading assistant.")
for _command in COMMANDS:
    cli.add_command(_command)

if __name__ == "__main__":
    cli()

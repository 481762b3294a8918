"""The Omniwise worker process: feed -> candles -> decisions -> orders, plus its periodic jobs.

Thin on purpose: the trading step lives in core/trader.py. The loop reads the feed, hands every tick
(or candle) to the trader, and runs the scheduled jobs in between, also while the replay waits for
the next tick and after the replay file has ended. SIGINT and SIGTERM stop it cleanly.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import schedule

from core import config, controls, events, fault_policy, logs, maintenance, replay_status, store, warmup
from core.binance.futures import BinanceFuturesBroker
from core.binance.spot import BinanceSpotBroker
from core.binance.feed import Backfill, StreamTime, klines, open_feed
from core.binance.rest import BinanceRest, endpoints, market_of
from core.binance.user_stream import UserStreamReader
from core.brokers import BrokerError, PaperBroker
from core.candles import LiveTrade, Tick
from core.config import ConfigError, Settings, load_settings
from core.feeds import FeedError, ReplayFeed
from core.health import alerts, heartbeat, liveness
from core.policy_loader import PolicyLoader
from core.trader import Trader
from core.webhook import intake

log = logging.getLogger("omniwise.worker")
ROOT = Path(__file__).resolve().parent
BUNDLED_REPLAY = config.BUNDLED_REPLAY
JOBS_EVERY_N_ITEMS = 256  # run due jobs at least this often while replaying as fast as possible
CONTROLS_EVERY_S = 1  # a flatten is carried out, and a new signal re-checked, within this
ORDER_CHECK_S = 30  # exchange brokers settle open orders and read the position this often
STRATEGY_CHECK_S = 2  # the strategy file is looked at this often even when no candle closes
UNKNOWN_CHECK_S = 5  # and ask Binance about orders of unknown outcome this often


def make_broker(settings: Settings, db, rest: BinanceRest | None = None, user_events=None):
    """The broker OMNIWISE_BROKER names: paper, or a Binance broker calling the exchange through `rest`
    (settling orders from the user data stream's `user_events` too). Makes no network call;
    ConfigError when the Binance keys are missing."""
    if settings.broker == "paper":
        return PaperBroker(db, settings.symbol, settings.paper_balance, settings.fee_rate, settings.paper_slippage)
    if not (settings.binance_api_key and settings.binance_api_secret):
        raise ConfigError(f"OMNIWISE_BROKER={settings.broker} needs BINANCE_API_KEY and BINANCE_API_SECRET "
                          "in the environment")
    if settings.broker == "binance-futures":
        return BinanceFuturesBroker(db, settings.symbol, rest, settings.order_quote, leverage=settings.futures_leverage,
                                    margin=settings.futures_margin, user_events=user_events)
    return BinanceSpotBroker(db, settings.symbol, rest, settings.order_quote, user_events=user_events)


def guarded(job: Callable[[], object]) -> None:
    """Run a scheduled job; a failure is logged and the job runs again at its next time (a failing
    side job, such as a locked database during a backup, must never stop trading)."""
    try:
        job()
    except Exception:  # noqa: BLE001
        log.exception("scheduled job %s failed; it runs again at its next time", getattr(job, "__name__", job))


class Worker:
    """One worker: its trader, its scheduled jobs, and a stop flag."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock
        self.stop = threading.Event()
        self.db = store.connect(settings.db_path)
        self.loader = PolicyLoader(settings.strategy_path, settings.short_refusal)
        is_binance = settings.feed == "binance" or settings.broker != "paper"
        self.rest = BinanceRest(settings, market_of(settings)) if is_binance else None
        self.user_stream = None
        if settings.broker != "paper" and settings.binance_api_key and settings.binance_api_secret:
            hosts = endpoints(settings, market_of(settings))
            self.user_stream = UserStreamReader(settings.binance_api_key, settings.binance_api_secret, hosts.rest_url,
                                                hosts.stream_url, market=market_of(settings),
                                                ws_api_url=hosts.ws_api_url)
        broker = make_broker(settings, self.db, self.rest, self.user_stream and self.user_stream.events)
        self.trader = Trader(self.db, settings.symbol, self.loader, broker, clock=clock)
        self.heartbeat = heartbeat.HeartbeatSettings.from_settings(settings)
        self.ping_due = threading.Event()  # set by a good heartbeat check; the alert loop then pings
        self.alert_loop = alerts.DeliveryLoop("alert-sender", settings.db_path, settings.alert_urls, every_s=2.0,
                                              clock_ms=lambda: int(clock() * 1000), steps=(self.ping_if_due,),
                                              stop=self.stop)
        self.scheduler = schedule.Scheduler()
        self.scheduler.every(liveness.BEACON_INTERVAL_S).seconds.do(guarded, self.beat)
        self.scheduler.every(settings.heartbeat_interval_s).seconds.do(guarded, self.check_heartbeat)
        self.scheduler.every(60).seconds.do(guarded, self.report)
        self.scheduler.every(CONTROLS_EVERY_S).seconds.do(guarded, self.obey_operator)
        self._latest_signal_id: int | None = None
        self.scheduler.every(1).days.do(guarded, self.prune)
        # Between candles too (a replay that has ended, a quiet market): a broken or fixed file is alerted.
        self.scheduler.every(STRATEGY_CHECK_S).seconds.do(guarded, self.trader.check_strategy)
        if settings.broker != "paper":
            self.scheduler.every(ORDER_CHECK_S).seconds.do(guarded, broker.recover)
            self.scheduler.every(UNKNOWN_CHECK_S).seconds.do(guarded, broker.settle)
        events.strategy_invalid.connect(self.on_strategy_invalid, sender=self.trader)
        events.strategy_reloaded.connect(self.on_strategy_loaded, sender=self.trader)
        events.order_filled.connect(self.on_position_changed, sender=broker)
        events.order_placed.connect(self.on_position_changed, sender=broker)  # exchanges fill as they place

    def beat(self) -> None:
        liveness.beat(self.db, int(self.clock() * 1000))

    def check_heartbeat(self) -> None:
        """Compare the external signal with the broker's position; follow it if configured to."""
        verdict = heartbeat.check_position(self.db, self.trader.broker, self.settings.symbol,
                                           int(self.clock() * 1000), self.heartbeat)
        if verdict.state == heartbeat.OK:
            self.ping_due.set()
        elif verdict.state == heartbeat.MISMATCH and not verdict.in_grace and self.settings.on_mismatch == "follow":
            latest = heartbeat.current_signal(self.db, self.settings.symbol)
            self.trader.follow(latest.signal, f"follow mode: {verdict.reason}")

    def ping_if_due(self, db, now_ms: int) -> None:
        """Ping the dead-man's switch (OMNIWISE_PING_URL) after a good heartbeat check; run by the alert loop."""
        if self.ping_due.is_set() and self.settings.ping_url:
            self.ping_due.clear()
            urllib.request.urlopen(self.settings.ping_url, timeout=10).close()

    def obey_operator(self) -> None:
        """Carry out a waiting flatten; re-check the heartbeat at once when a new signal arrived or a mismatch's
        grace has just ended."""
        result = controls.carry_out_flatten(self.db, self.trader, int(self.clock() * 1000))
        if result is not None:
            log.warning("flatten by the operator: %s", result)
        (latest,) = self.db.execute("SELECT max(id) FROM external_signals WHERE outcome = 'accepted'").fetchone()
        if latest != self._latest_signal_id:
            self._latest_signal_id = latest
            self.check_heartbeat()
        elif heartbeat.is_recheck_due(self.db, int(self.clock() * 1000)):
            self.check_heartbeat()

    def on_position_changed(self, sender, order) -> None:
        """A fill changed the position: the heartbeat must not show the old one for up to a minute."""
        if not self.trader.broker.has_pending():  # a paper order waiting for the next price changed nothing yet
            self.check_heartbeat()

    def prune(self) -> None:
        """The daily retention job: drop rows older than the OMNIWISE_KEEP_* limits."""
        keep = maintenance.Retention(self.settings.keep_candles_days, self.settings.keep_decisions_days,
                                     self.settings.keep_signals_days, self.settings.keep_alerts_days)
        maintenance.prune(self.db, self.settings.symbol, int(self.clock() * 1000), keep)

    def on_strategy_invalid(self, sender, error) -> None:
        verdict = heartbeat.Verdict(heartbeat.INVALID, f"{self.settings.strategy_path} is invalid, still running "
                                                       f"version {self.loader.policy.version}: {error}")
        heartbeat.record(self.db, "strategy", verdict, int(self.clock() * 1000))

    def load_history(self, policy) -> int:
        """Live: load from Binance's klines the minutes before the oldest kept that the strategy's look-back
        still needs (at start, after a strategy change); returns how many were added. A failure is logged and
        trading goes on with the history there is."""
        if self.settings.feed != "binance":
            return 0  # a replay's history is its file, as the backtest's
        window = self.trader.window
        missing = warmup.missing_range(policy, window.first_open_time_ms, window.last_open_time_ms)
        if missing is None:
            return 0
        try:
            added = self.trader.prepend_history(klines(self.rest, self.settings.symbol, *missing), policy.window)
        except BrokerError as exc:
            log.warning("the strategy's history could not be loaded from Binance's klines: %s", exc)
            return 0
        log.info("loaded %d older candles: the strategy %s", added, warmup.history_needed(policy).text())
        return added

    def on_strategy_loaded(self, sender, policy) -> None:
        self.load_history(policy)
        reason = (f"{self.settings.strategy_path} is missing: HOLD on every candle" if self.loader.missing
                  else f"strategy version {policy.version} loaded, {len(policy.rules)} rule{'' if len(policy.rules) == 1 else 's'}")
        verdict = heartbeat.Verdict(heartbeat.VALID, reason)
        heartbeat.record(self.db, "strategy", verdict, int(self.clock() * 1000))

    def report(self) -> None:
        latencies = sorted(self.trader.latencies_s)
        if latencies:
            log.info("last minute: %d candles (newest 10,000 at most), decision p50 %.2f ms, p99 %.2f ms",
                     len(latencies),
                     latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3)
        self.trader.latencies_s.clear()

    def wait(self, seconds: float) -> None:
        """Pause the feed for `seconds` while keeping the jobs running; returns early on stop."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            self.scheduler.run_pending()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.5))

    def run(self) -> int:
        """Trade the feed to its end, then keep the jobs running until stopped."""
        self.beat()
        self.alert_loop.start()
        if self.user_stream is not None:
            self.user_stream.start()
        self.trader.resume()
        self.trader.check_strategy()
        self.check_heartbeat()
        if self.settings.feed == "binance":
            replay_status.live(self.db, int(self.clock() * 1000))
            log.info("worker started: %s, broker %s (%s), Binance's kline stream", self.settings.symbol,
                     self.trader.broker.name, self.settings.mode)
            self.trade_live()
        else:
            replay_file = self.settings.replay_file or BUNDLED_REPLAY
            log.info("worker started: %s, broker %s (%s), replaying %s at %gx", self.settings.symbol,
                     self.trader.broker.name, self.settings.mode, replay_file, self.settings.replay_speed)
            replay_status.started(self.db, replay_file, self.settings.replay_speed, int(self.clock() * 1000))
            try:
                self.trade(ReplayFeed(replay_file, speed=self.settings.replay_speed, sleep=self.wait))
                if not self.stop.is_set():  # the file's end, not a stop in the middle
                    replay_status.finished(self.db, int(self.clock() * 1000))
            except FeedError as exc:
                log.critical("replay stopped: %s", exc)
        while not self.stop.is_set():
            self.wait(1.0)
        self.alert_loop.join(timeout=15)
        if self.user_stream is not None:
            self.user_stream.close()
        log.info("worker stopped")
        self.db.close()
        return 0

    def trade(self, feed) -> None:
        trader = self.trader
        for count, item in enumerate(feed):
            if self.stop.is_set():
                return
            if isinstance(item, Tick):
                trader.on_tick(item)
            elif isinstance(item, LiveTrade):  # live: the exit levels are checked on every trade
                trader.on_trade(item)
            elif isinstance(item, StreamTime):  # the live feed pauses about twice a second: run the jobs
                if item.now_ms is not None:
                    trader.close_due(item.now_ms)
                self.scheduler.run_pending()
            elif isinstance(item, Backfill):
                trader.backfill(item.candles, item.decide_from_ms)
            else:
                trader.on_candle(item)
            if count % JOBS_EVERY_N_ITEMS == 0:
                self.scheduler.run_pending()
        if not isinstance(feed, ReplayFeed):
            return
        # The file is complete: its last minute is over too. Only a minute holding trades of the file is
        # closed: after a restart past the end (or with a klines file) there is none, and nothing is invented.
        if trader.buffer.has_ticks:
            trader.close_due(trader.buffer.open_time_ms + 60_000 + trader.buffer.lateness_ms)
        log.info("replay finished: %d ticks skipped as already traded", trader.skipped_ticks)

    def trade_live(self) -> None:
        """Trade Binance's stream until stopped. A failure is handled by core/fault_policy.py's table:
        the feed starts again after a pause, unless starting again cannot help."""

        def run() -> None:
            self.trade(open_feed(self.settings, self.rest, self.trader.window.last_open_time_ms, self.stop,
                                 self.on_stream_state, warmup_minutes=self.loader.current().window))

        fault_policy.keep_running(run, self.stop, fault_policy.FaultCounter(self.clock), self.wait,
                                  self.alert_failure)

    def alert_failure(self, message: str) -> None:
        """Queue a worker failure alert."""
        alerts.queue(self.db, "worker", "error", message, int(self.clock() * 1000), is_failure=True)

    def on_stream_state(self, is_up: bool, reason: str) -> None:
        """Record the live feed's state; a change is alerted (the stream down, and back)."""
        verdict = heartbeat.Verdict(heartbeat.ALIVE if is_up else heartbeat.DOWN, reason)
        heartbeat.record(self.db, "stream", verdict, int(self.clock() * 1000))


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"omniwise worker: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        lock = maintenance.hold_worker_lock(settings.data_dir)  # one worker a data folder; `restore` waits for none
    except maintenance.WorkerRunning as exc:
        print(f"omniwise worker: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a data folder it cannot write to
        print(f"omniwise worker: cannot take the lock in {settings.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with store.connect(settings.db_path) as db:  # no log line of the worker may carry a secret either
        logs.add_secrets(intake.webhook_token(db, settings.webhook_token), settings.binance_api_key,
                         settings.binance_api_secret)
    try:
        worker = Worker(settings)
    except ConfigError as exc:
        print(f"omniwise worker: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stop.set())
    try:
        return worker.run()
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())

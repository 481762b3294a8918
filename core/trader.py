"""The trading step of the worker: closed candle -> stored -> decided -> target handed to the broker.

One SQLite transaction per candle holds the candle, the fills of orders waiting for this price, the
decision and any new order, so a crash at any point leaves either all of it or none of it; a restart
then skips candles already stored and never decides (or orders) twice.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from core import brokers, controls, events, exits, open_trade, store
from core.health import alerts
from core.candles import Candle, LiveTrade, Tick, TickBuffer
from core.dsl import Action, Policy
from core.dsl.policy import MAX_WINDOW
from core.policy_loader import PolicyLoader
from core.store import Database

log = logging.getLogger(__name__)

TARGETS = {Action.BUY: "long", Action.SELL: "flat", Action.SHORT: "short", Action.HOLD: None}
OPEN_SIDE = {"long": "BUY", "short": "SELL"}  # the order side that opens a position of that side
CLOSE_SIDE = {"long": "SELL", "short": "BUY"}  # ... and the one that closes it
SIGNAL_TARGETS = {"BUY": "long", "SHORT": "short", "FLAT": "flat", "SELL": "flat"}  # follow mode
FLATTEN_ORDER_KEY = "flatten_order"  # meta: the flatten request being carried out and its order, as JSON
_SERIES = ("open", "high", "low", "close", "volume")


class CandleWindow:
    """The most recent closed candles as arrays (float64 prices, int64 open times), appended in O(1),
    read as views."""

    def __init__(self, capacity: int = MAX_WINDOW):
        self.capacity = capacity
        self._data = {name: np.empty(2 * capacity, dtype=np.float64) for name in _SERIES}
        self._data["open_time_ms"] = np.empty(2 * capacity, dtype=np.int64)
        self._start = self._end = 0
        self.last_open_time_ms: int | None = None

    def __len__(self) -> int:
        return self._end - self._start

    def grow(self, capacity: int) -> None:
        """Keep at least `capacity` candles from now on (a strategy that looks further back)."""
        if capacity <= self.capacity:
            return
        kept = {name: array[self._start:self._end] for name, array in self._data.items()}
        self.capacity = capacity
        for name, old in kept.items():
            array = np.empty(2 * capacity, dtype=old.dtype)
            array[:len(old)] = old
            self._data[name] = array
        self._start, self._end = 0, len(kept["close"])

    def append(self, candle: Candle) -> None:
        """Add the newest closed candle, forgetting the oldest beyond the capacity."""
        if self._end == 2 * self.capacity:  # full: keep the newest capacity - 1 at the front
            keep = self.capacity - 1
            for array in self._data.values():
                array[:keep] = array[self._end - keep:self._end]
            self._start, self._end = 0, keep
        for name in _SERIES:
            self._data[name][self._end] = getattr(candle, name)
        self._data["open_time_ms"][self._end] = candle.open_time_ms
        self._end += 1
        if self._end - self._start > self.capacity:
            self._start += 1
        self.last_open_time_ms = candle.open_time_ms

    @property
    def first_open_time_ms(self) -> int | None:
        """Open time of the oldest candle kept, or None while empty."""
        return int(self._data["open_time_ms"][self._start]) if len(self) else None

    def prepend(self, candles: list[Candle]) -> None:
        """Put older candles (in time order, all before the oldest kept) in front, as far as the capacity goes."""
        room = self.capacity - len(self)
        older = candles[len(candles) - room:] if room > 0 else []
        if not older:
            return
        kept = {name: array[self._start:self._end].copy() for name, array in self._data.items()}
        for name, array in self._data.items():
            array[:len(older)] = [getattr(c, name) for c in older]
            array[len(older):len(older) + len(kept[name])] = kept[name]
        self._start, self._end = 0, len(older) + len(kept["close"])
        if self.last_open_time_ms is None:
            self.last_open_time_ms = older[-1].open_time_ms

    def arrays(self) -> dict[str, np.ndarray]:
        """The window as the policy reads it: open, high, low, close, volume, open_time_ms."""
        return {name: array[self._start:self._end] for name, array in self._data.items()}


class Trader:
    """Turns ticks or candles of one symbol into stored candles, decisions and orders."""

    def __init__(self, db: Database, symbol: str, loader: PolicyLoader, broker,
                 clock: Callable[[], float] = time.time, lateness_ms: int = 2000):
        self.db = db
        self.symbol = symbol
        self.loader = loader
        self.broker = broker
        self.clock = clock
        self.buffer = TickBuffer(lateness_ms=lateness_ms)
        self.window = CandleWindow()
        self.resume_before_ms = 0  # ticks before this time belong to candles already stored
        self.skipped_ticks = 0
        # Seconds each closed candle took, the newest 10,000: bounded however fast a replay runs.
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self._policy_version: str | None = None
        self.last_price: float | None = None  # the latest trade's price: what a flatten is paper-filled at
        self._error_seen: object = None
        self.open_trade = open_trade.OpenTrade()  # the risk state of the position (stored in risk_state)
        self._last_policy: Policy | None = None
        self._tick_minute_ms: int | None = None  # the minute whose ticks were checked against the levels
        self._cannot_short_signal: tuple | None = None  # follow mode's "cannot short" alert, once a signal
        self._trade_minute_ms: int | None = None  # live: the minute of the stream's last trade
        self._partly_watched_ms: int | None = None  # live: a minute whose first trades were missed (a connect)
        self._exits_to_alert: list[_ExitAlert] = []  # risk exits sent to an exchange, alerted with their fill

    # -- start ----------------------------------------------------------------------------------

    def resume(self) -> int | None:
        """Load the newest stored candles so indicators are warm, let the broker settle orders a crash
        left in flight; returns the last stored open time."""
        self.broker.recover()
        self.open_trade = open_trade.load(self.db, self.symbol)
        self.window.grow(self.loader.current().window)
        rows = self.db.execute(
            "SELECT * FROM (SELECT open_time_ms, open, high, low, close, volume, close_time_ms, quote_volume, "
            "trades, taker_buy_base, taker_buy_quote FROM candles WHERE symbol = ? "
            "ORDER BY open_time_ms DESC LIMIT ?) ORDER BY open_time_ms", [self.symbol, self.window.capacity]
        ).fetchall()
        for row in rows:
            self.window.append(Candle(*row))
        if not rows:
            return None
        last = Candle(*rows[-1])
        self.buffer.resume_after(last)
        self.resume_before_ms = last.open_time_ms + 60_000
        log.info("resumed after candle %s with %d candles loaded", _iso(last.open_time_ms), len(rows))
        return last.open_time_ms

    # -- input ----------------------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> None:
        """Feed one trade; candles it closes are traded at once."""
        if tick.time_ms < self.resume_before_ms:
            self.skipped_ticks += 1
            return
        dropped_before = self.buffer.duplicate_ticks + self.buffer.late_ticks
        closed = self.buffer.add(tick)
        if closed:
            for candle in closed:
                self.on_candle(candle)
            # This tick opened the new minute: its price is the new candle's open, the fill price.
            self._fill_pending(tick.price, tick.time_ms - tick.time_ms % 60_000)
        self.last_price = tick.price
        if self.buffer.duplicate_ticks + self.buffer.late_ticks == dropped_before:
            self._check_tick(tick)

    def close_due(self, now_ms: int) -> None:
        """Close the current candle (and empty minutes) once the clock is past the minute end."""
        for candle in self.buffer.close_until(now_ms):
            self.on_candle(candle)

    def on_candle(self, candle: Candle) -> None:
        """Store a closed candle, fill waiting orders at its open, decide, and hand the target over."""
        last = self.window.last_open_time_ms
        if last is not None and candle.open_time_ms <= last:
            return  # already traded (a replay after a restart, or a repeated candle)
        started = time.perf_counter()
        self.last_price = candle.close
        policy = self.check_strategy()
        self._last_policy = policy
        self.window.grow(policy.window)
        now_ms = int(self.clock() * 1000)
        filled, orders, exit_order, late_orders, late_row = [], [], None, [], None
        stop_fill = self._exchange_stop_fill()  # asked before the transaction: no lock waits on the network
        with store.transaction(self.db):
            state_before = dataclasses.astuple(self.open_trade)
            if last is not None and policy.timeframe > 1 and not policy.closes_window(last) \
                    and policy.window_open_ms(last) != policy.window_open_ms(candle.open_time_ms):
                # The window of the previous minute lacks its last minute (a file's gap): this later minute
                # closes it, and its decision fills at this minute's open, as in the backtest.
                late_row, late_orders = self._decide(policy, last, now_ms, is_closed=True)
            if stop_fill is not None:  # the stop kept on the exchange closed the trade: its exit, recorded once
                fill_minute_ms = stop_fill["time_ms"] - stop_fill["time_ms"] % 60_000
                exit_order, filled = self._risk_exit(policy, stop_fill["reason"] or exits.STOP_LOSS, stop_fill["price"],
                                                     fill_minute_ms, stop_fill["time_ms"], now_ms, stop_fill=stop_fill)
            if self.broker.has_pending():
                filled = self.broker.fill_pending(candle.open, candle.open_time_ms)
                self._after_fills(filled, policy)
                brokers.save_position(self.db, self.broker.position(), now_ms)
            self._adopt_position(policy)
            levels = self._levels(policy)
            if levels is not None and candle.open_time_ms != self._tick_minute_ms:
                # No tick of this minute was checked (a klines replay, a backfilled minute): the candle is.
                hit = levels.check_candle(candle.open, candle.high, candle.low)
                if hit is not None:
                    exit_order, exit_fills = self._risk_exit(policy, *hit, candle.open_time_ms, candle.open_time_ms,
                                                             now_ms)
                    filled += exit_fills
            self.open_trade.candle_closed(candle.high, candle.low)  # the trailing stop moves from the next candle on
            self.db.execute("INSERT OR IGNORE INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [self.symbol, *candle])
            self.window.append(candle)
            row = None
            if policy.timeframe == 1 or policy.closes_window(candle.open_time_ms):
                row, orders = self._decide(policy, candle.open_time_ms, now_ms)
            if dataclasses.astuple(self.open_trade) != state_before:
                open_trade.save(self.db, self.symbol, self.open_trade, now_ms)
        for sent in [*late_orders, exit_order, *orders]:
            if sent is not None and sent.get("status") != "filled":
                self.broker.execute(sent)  # only after the commit: the order's row exists before it is sent
        self._alert_exits()
        for sent in [*late_orders, *orders]:  # in order: a change of side closes, then opens
            if sent.get("target") == "flat":
                self._closed_by_exchange_fill(sent)
            elif sent.get("target") in OPEN_SIDE and (policy.risk.has_exits or sent["target"] == "short"):
                self._enter_from_exchange_fill(sent, policy)
        self._keep_exchange_stop(policy)
        self.latencies_s.append(time.perf_counter() - started)
        events.emit(events.candle_closed, self, candle=candle)
        for fill in filled:
            events.emit(events.order_filled, self.broker, order=fill)
        for decided in (late_row, row):
            if decided is not None:
                events.emit(events.decision_made, self, decision=decided)
        for sent in [*late_orders, exit_order, *orders]:
            if sent is not None:
                events.emit(events.order_placed, self.broker, order=sent)

    def _decide(self, policy: Policy, minute_ms: int, now_ms: int, is_closed: bool = False) -> tuple[dict, list[dict]]:
        """Decide the strategy-timeframe window that the minute `minute_ms` (the newest in the window) closes:
        the decision's row and the orders it sends (a change of side: a close, then an open). Call inside the
        candle's transaction."""
        decision = policy.decide(self.window.arrays(), is_closed=is_closed)
        try:
            position_side = self.broker.position().side
        except brokers.BrokerError as exc:  # the account cannot be read: decide, but order nothing
            position_side = "unknown"
            log.warning("no order on candle %s: %s", _iso(minute_ms), exc)
        target = TARGETS[decision.action]
        # After a risk exit, that side waits until the rules have answered anything else once.
        is_blocked = self.open_trade.reentry_blocked and target == self.open_trade.side
        if self.open_trade.reentry_blocked and target != self.open_trade.side:
            self.open_trade.reentry_blocked = False
        rule = policy.rules[decision.rule_index] if decision.rule_index is not None else None
        row = {"symbol": self.symbol, "candle_open_time_ms": minute_ms,
               "action": decision.action.name, "target": None if is_blocked else target,
               "position_before": position_side,
               "rule_index": decision.rule_index, "rule_text": rule.text if rule else None,
               "strategy_version": policy.version, "reason": "strategy", "created_at_ms": now_ms,
               "timeframe_minutes": policy.timeframe}
        row["id"] = self.db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_index, "
            "rule_text, strategy_version, reason, created_at_ms, timeframe_minutes) VALUES (:symbol, "
            ":candle_open_time_ms, :action, :target, :position_before, :rule_index, :rule_text, :strategy_version, "
            ":reason, :created_at_ms, :timeframe_minutes)", row).lastrowid
        orders = []
        if row["target"] is not None and position_side not in (target, "unknown"):
            orders = self._move(row, position_side, target, now_ms, policy)
        return row, orders

    def _move(self, decision: dict, position_side: str, target: str, now_ms: int, policy: Policy) -> list[dict]:
        """The orders taking the position from `position_side` to `target`, recorded (call inside a transaction):
        a close, then an open. A change of side makes the close a decision of its own (reason "<reason>:close"),
        so each order has its own decision and client id; paused, nothing is opened (exits still happen)."""
        orders = []
        if position_side in CLOSE_SIDE:
            close_id = decision["id"]
            if target != "flat":
                close_id = self.db.execute(
                    "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_index, "
                    "rule_text, strategy_version, reason, created_at_ms) VALUES (?, ?, 'SELL', 'flat', ?, ?, ?, ?, ?, ?)",
                    [self.symbol, decision["candle_open_time_ms"], position_side, decision.get("rule_index"),
                     decision.get("rule_text"), decision.get("strategy_version"), f"{decision['reason']}:close",
                     now_ms]).lastrowid
            orders.append(self.broker.submit(close_id, CLOSE_SIDE[position_side], now_ms, target="flat"))
        if target in OPEN_SIDE:
            if controls.is_paused(self.db):
                log.info("no entry on candle %s: trading is paused", _iso(decision["candle_open_time_ms"]))
            else:
                orders.append(self._submit(decision["id"], OPEN_SIDE[target], now_ms, policy, target))
        return orders


    # -- risk exits -----------------------------------------------------------------------------

    def _submit(self, decision_id: int, side: str, now_ms: int, policy: Policy, target: str) -> dict:
        """Record the opening order of a decision; it commits the strategy's SIZE share of the account."""
        return self.broker.submit(decision_id, side, now_ms, size_share=policy.risk.size_share, target=target)

    def _after_fills(self, filled: list[dict], policy: Policy) -> None:
        """A filled entry opens the trade's levels (ATR of the decision candle: the newest in the window,
        since an entry fills at the next candle's open before that candle joins); a close closes them."""
        for fill in filled:
            target = fill.get("target") or ("long" if fill["side"] == "BUY" else "flat")
            if target in OPEN_SIDE:  # levels from the market's price, as the backtest (paper slippage aside)
                self.open_trade.enter(fill.get("market_price", fill["price"]), self._atr(policy),
                                      is_short=target == "short")
            else:
                self.open_trade.close()

    def _liquidation_fee(self) -> float | None:
        """The fee rate at which a paper short is liquidated (DESIGN.md "Shorts"); None where the exchange does it."""
        return getattr(self.broker, "fee_rate", None) if getattr(self.broker, "fills_at_level", False) else None

    def _levels(self, policy: Policy):
        return self.open_trade.levels(policy.risk, self._liquidation_fee())

    def _atr(self, policy: Policy) -> dict[int, float]:
        """ATR of the strategy's timeframe at the newest decision (the newest closed window)."""
        if not policy.risk.atr_periods or not len(self.window):
            return {}
        return policy.atr_now(self.window.arrays())

    def _adopt_position(self, policy: Policy) -> None:
        """Keep the risk state in step with the account: a long position without levels (an exchange fill,
        a database from before risk exits) gets them from its entry price; a position sold elsewhere
        drops them."""
        try:
            position = self.broker.position()
        except brokers.BrokerError:
            return
        is_checked = policy.risk.has_exits or (position.side == "short" and self._liquidation_fee() is not None)
        if not is_checked:
            return
        if position.side in OPEN_SIDE and (not self.open_trade.is_open or self.open_trade.side != position.side):
            entry = position.entry_price or (self._last_buy_price() if position.side == "long" else None)
            if entry:  # spot accounts have no entry price: the last buy's
                self.open_trade.enter(entry, self._atr(policy), is_short=position.side == "short")
        elif position.side not in OPEN_SIDE and self.open_trade.is_open:
            self.open_trade.close()

    def _enter_from_exchange_fill(self, order: dict, policy: Policy) -> None:
        """An exchange broker fills an entry while sending it: its levels start now, from the fill price and
        the ATR of the decision candle (the newest in the window), so the next ticks are checked."""
        row = self.db.execute("SELECT status, price FROM orders WHERE id = ?", [order["id"]]).fetchone()
        if row is None or row[0] != "filled" or not row[1] or self.open_trade.is_open:
            return
        self.open_trade.enter(row[1], self._atr(policy), is_short=order.get("target") == "short")
        with store.transaction(self.db):
            open_trade.save(self.db, self.symbol, self.open_trade, int(self.clock() * 1000))

    def _closed_by_exchange_fill(self, order: dict) -> None:
        """An exchange broker filled a close while sending it: the trade's levels end now, so no stop is kept
        for a position that is gone (and a change of side opens the other side's from its own fill)."""
        row = self.db.execute("SELECT status FROM orders WHERE id = ?", [order["id"]]).fetchone()
        if row is None or row[0] != "filled" or not self.open_trade.is_open:
            return
        self.open_trade.close()
        with store.transaction(self.db):
            open_trade.save(self.db, self.symbol, self.open_trade, int(self.clock() * 1000))

    def _last_buy_price(self) -> float | None:
        row = self.db.execute("SELECT price FROM orders WHERE symbol = ? AND side = 'BUY' AND status = 'filled' "
                              "ORDER BY id DESC LIMIT 1", [self.symbol]).fetchone()
        return row[0] if row else None

    def _risk_exit(self, policy: Policy, reason: str, price: float, minute_ms: int, time_ms: int,
                   now_ms: int, stop_fill: dict | None = None, level: float | None = None) -> tuple[dict, list[dict]]:
        """Sell the position because a level was reached: a decision of its own (its id gives the order's
        client id), the order, and on paper its fill at `price` (`level`: the level it crossed, when that
        differs); with `stop_fill`, the fill of the stop the exchange triggered is the order (nothing is
        sent). Call inside a transaction."""
        distance = getattr(policy.risk, reason, None)  # a liquidation has no statement
        statement = exits.STATEMENT_TITLES[reason] + (f" {distance.text}" if distance is not None else "")
        entry, side = self.open_trade.entry_price, self.open_trade.side
        decision_id = self.db.execute(
            "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_text, "
            "strategy_version, reason, created_at_ms) VALUES (?, ?, 'SELL', 'flat', ?, ?, ?, ?, ?)",
            [self.symbol, minute_ms, side, statement, policy.version, reason, now_ms]).lastrowid
        filled = []
        if stop_fill is not None:
            order = self.broker.record_stop_fill(decision_id, stop_fill, now_ms)
        else:
            order = self.broker.submit(decision_id, CLOSE_SIDE[side], now_ms, target="flat")
        if stop_fill is None and getattr(self.broker, "fills_at_level", False):
            filled = self.broker.fill_pending(price, time_ms)
            order["status"] = "filled"
        self.open_trade.close()
        self.open_trade.reentry_blocked = True
        exit_alert = _ExitAlert(order["id"], reason, statement, entry, price if level is None else level,
                                 stop_fill is not None, side == "short")
        if order.get("status") == "filled" or stop_fill is not None:
            self._alert_exit(exit_alert, filled[0]["price"] if filled else price, now_ms)  # paper: after slippage
        else:  # an exchange fills it when it is sent: the alert gives that fill, not the level
            self._exits_to_alert.append(exit_alert)
        return order, filled

    def _alert_exits(self) -> None:
        """Alert the risk exits sent to the exchange since, each with its real fill (after execute)."""
        while self._exits_to_alert:
            exit_alert = self._exits_to_alert.pop(0)
            status, price = self.db.execute("SELECT status, price FROM orders WHERE id = ?",
                                            [exit_alert.order_id]).fetchone()
            with store.transaction(self.db):
                self._alert_exit(exit_alert, price if status == "filled" else None, int(self.clock() * 1000), status)

    def _alert_exit(self, exit_alert: "_ExitAlert", price: float | None, now_ms: int, status: str = "filled") -> None:
        reason, entry = exit_alert.reason, exit_alert.entry
        head = f"{exit_alert.statement.upper()}: {self.symbol} exited by {exits.REASON_WORDS[reason]}"
        if price is None:  # refused, or its outcome unknown: the order's own alert tells what follows
            message = f"{head}: the exit order at the level {exit_alert.level:.8g} is {status}"
        else:
            moved = (price / entry - 1) * (-1 if exit_alert.is_short else 1) if entry else 0.0  # for the trade
            change = f" (entry {entry:.8g}, {moved * 100:+.2f} %)" if entry else ""
            level = f", level {exit_alert.level:.8g}" if price != exit_alert.level else ""
            message = f"{head} at {price:.8g}{change}{level}" + (
                " by the stop kept on the exchange" if exit_alert.by_exchange_stop else "")
        alerts.queue(self.db, "trade", reason, message, now_ms, is_failure=False)  # an exit is worth a notification

    def on_trade(self, trade: LiveTrade) -> None:
        """Live: one trade of the exchange's stream (the candles are the exchange's klines), checked against
        the stop, take-profit and trailing levels at once, so an exit goes out on the trade that crossed.
        The first trade seen on a new connection is not its minute's open, and that minute's candle is
        checked too (its earlier trades were missed)."""
        minute_ms = trade.time_ms - trade.time_ms % 60_000
        is_open = minute_ms != self._trade_minute_ms and not trade.is_first_seen
        self._trade_minute_ms = minute_ms
        if trade.is_first_seen:
            self._partly_watched_ms = minute_ms
        self._tick_minute_ms = None if minute_ms == self._partly_watched_ms else minute_ms
        self.last_price = trade.price
        if self.open_trade.is_open and self._last_policy is None:  # started in a trade: no candle yet
            self._last_policy = self.check_strategy()
        self._check_level(trade.price, trade.time_ms, is_open)

    def _check_tick(self, tick: Tick) -> None:
        """Replay: check the levels on every trade of the minute; the first one is the minute's open."""
        minute_ms = tick.time_ms - tick.time_ms % 60_000
        is_open = minute_ms != self._tick_minute_ms
        self._tick_minute_ms = minute_ms
        self._check_level(tick.price, tick.time_ms, is_open)

    def _check_level(self, price: float, time_ms: int, is_open: bool) -> None:
        policy = self._last_policy
        levels = self._levels(policy) if policy is not None else None
        if levels is None:
            return
        hit = levels.check_tick(price, is_open)
        if hit is None:
            return
        reason, level = hit
        # A stop is a market order once crossed: paper fills at the crossing trade's price, beyond the level
        # (a take profit is not worse than its level).
        fill_price = level if reason == exits.TAKE_PROFIT else price
        minute_ms = time_ms - time_ms % 60_000
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            order, filled = self._risk_exit(policy, reason, fill_price, minute_ms, time_ms, now_ms, level=level)
            open_trade.save(self.db, self.symbol, self.open_trade, now_ms)
            if filled:
                brokers.save_position(self.db, self.broker.position(), now_ms)
        if order.get("status") != "filled":
            self.broker.execute(order)
        self._alert_exits()
        self._keep_exchange_stop(policy)
        for fill in filled:
            events.emit(events.order_filled, self.broker, order=fill)
        events.emit(events.order_placed, self.broker, order=order)

    def _exchange_stop_fill(self) -> dict | None:
        """The fill of the stop a broker keeps on the exchange (binance-futures) once it was triggered there."""
        stop_exit = getattr(self.broker, "stop_exit", None)
        if stop_exit is None:
            return None
        try:
            return stop_exit()
        except brokers.BrokerError as exc:
            log.warning("the stop kept on the exchange was not checked: %s", exc)
            return None

    def _keep_exchange_stop(self, policy: Policy) -> None:
        """Keep the broker's stop on the exchange at the effective stop level (binance-futures: the stop holds
        while the worker is down); none while flat or without STOP LOSS / TRAILING STOP."""
        keep_stop = getattr(self.broker, "keep_stop", None)
        if keep_stop is None:
            return
        levels = self._levels(policy)
        try:
            keep_stop(*(levels.stop() if levels is not None else (None, None)), is_short=self.open_trade.is_short)
        except brokers.BrokerError as exc:
            log.warning("the stop kept on the exchange was not updated: %s", exc)

    def prepend_history(self, candles: list[Candle], capacity: int) -> int:
        """Older closed candles (the exchange's klines, loaded at start or after a strategy change that looks
        further back): stored, and put before the window's oldest so that the indicators read the strategy's
        whole look-back, up to `capacity` candles. Nothing is decided for them. Returns how many were added."""
        first = self.window.first_open_time_ms
        older = [c for c in candles if first is None or c.open_time_ms < first]
        if not older:
            return 0
        with store.transaction(self.db):
            self.db.conn.executemany("INSERT OR IGNORE INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     [[self.symbol, *candle] for candle in older])
        self.window.grow(capacity)
        before = len(self.window)
        self.window.prepend(older)
        return len(self.window) - before

    def backfill(self, candles: list[Candle], decide_from_ms: int) -> None:
        """Take closed candles from the exchange's klines where ticks are missing (the start, a gap in the
        stream): those opened before `decide_from_ms` only warm the indicators (no order is sent for the
        past), later ones are traded. Ticks then continue with the minute after the last candle."""
        if not candles:
            return
        history = [c for c in candles if c.open_time_ms < decide_from_ms
                   and (self.window.last_open_time_ms is None or c.open_time_ms > self.window.last_open_time_ms)]
        if history:
            with store.transaction(self.db):
                self.db.conn.executemany("INSERT OR IGNORE INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                         [[self.symbol, *candle] for candle in history])
            for candle in history:
                self.window.append(candle)
        for candle in candles:
            if candle.open_time_ms >= decide_from_ms:
                self.on_candle(candle)
        last = candles[-1]
        self.buffer = TickBuffer(lateness_ms=self.buffer.lateness_ms)
        self.buffer.resume_after(last)
        self.resume_before_ms = max(self.resume_before_ms, last.open_time_ms + 60_000)

    def follow(self, signal: str, reason: str) -> dict | None:
        """Move the position to an external signal (BUY -> long, SHORT -> short, FLAT -> flat, SELL -> not long):
        a decision of its own, with `reason`, on the newest candle, and its orders (a change of side: a close,
        then an open). A broker that cannot short closes a long on SHORT and alerts, once a signal, that it
        cannot go short. Returns the last order, or None when nothing is needed."""
        last = self.window.last_open_time_ms
        if last is None:
            return None  # no price yet to trade at
        target = SIGNAL_TARGETS.get(signal, "flat")
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            position = self.broker.position()
            if self.broker.has_pending() or (signal == "SELL" and position.side != "long"):
                return None  # SELL only asks for "not long"
            if target == "short" and not getattr(self.broker, "can_short", False):
                if self._cannot_short_signal != (signal, last // 3_600_000):  # once an hour while it lasts
                    self._cannot_short_signal = (signal, last // 3_600_000)
                    alerts.queue(self.db, "trade", "cannot_short",
                                 f"FOLLOW: the signal is SHORT but {self.broker.name} cannot short {self.symbol}"
                                 + ("; the long is closed" if position.side == "long" else ""), now_ms, is_failure=True)
                target = "flat"
            if position.side == target or (target == "flat" and position.side not in CLOSE_SIDE):
                return None
            if target in OPEN_SIDE and position.side == "flat" and controls.is_paused(self.db):
                return None  # paused: the operator allows no entry, not even a correction
            row = {"candle_open_time_ms": last, "rule_text": reason, "strategy_version": self._policy_version,
                   "reason": "follow"}
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO decisions(symbol, candle_open_time_ms, action, target, position_before, "
                "rule_text, strategy_version, reason, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'follow', ?)",
                [self.symbol, last, signal, target, position.side, reason, self._policy_version, now_ms])
            if not cursor.rowcount:
                return None  # already followed on this candle
            row["id"] = cursor.lastrowid
            orders = self._move(row, position.side, target, now_ms, self.loader.current())
        for order in orders:
            self.broker.execute(order)
        log.warning("following the external signal %s: %s", signal, reason)
        for order in orders:
            events.emit(events.order_placed, self.broker, order=order)
        return orders[-1] if orders else None

    def flatten(self, request_id: int | None = None) -> str:
        """Close the position now (the operator's flatten): a decision of its own with reason 'manual' and its
        order, filled at once by an exchange, or by paper at the latest trade's price. It acts on the position
        the exchange reports now, even while an earlier order's outcome is unknown. The order of request
        `request_id` is noted with it, so a flatten that a crash interrupted reports its real fill when the
        worker is back (and closes what is still open). Returns what it did."""
        now_ms = int(self.clock() * 1000)
        before = self._earlier_flatten(request_id)
        try:
            self.broker.position()  # a fresh read: inside the transaction an exchange broker answers its last one
        except brokers.BrokerError as exc:
            return _joined(before, f"nothing done, the position could not be read: {exc}")
        with store.transaction(self.db):
            # An entry still waiting for the next price would undo the flatten: it is cancelled first.
            cancelled = self.db.execute(
                "UPDATE orders SET status = 'cancelled', error = 'cancelled by a flatten' WHERE broker = ? "
                "AND symbol = ? AND status = 'pending' AND (target IN ('long', 'short') OR (target IS NULL AND "
                "side = 'BUY'))", [self.broker.name, self.symbol]).rowcount
            position = self.broker.position()
            if position.side == "flat" or self.broker.has_pending():
                return _joined(before, ("nothing to close, the position is flat" if position.side == "flat"
                                        else "a closing order is already waiting")
                               + (f"; {cancelled} waiting entry cancelled" if cancelled else ""))
            side = CLOSE_SIDE.get(position.side, "SELL")
            # Keyed by the request's own time, not a candle's: two flattens within one candle are two decisions.
            decision_id = self.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_text, "
                "strategy_version, reason, created_at_ms) VALUES (?, ?, ?, 'flat', ?, 'flatten by the operator', ?, "
                "'manual', ?)", [self.symbol, now_ms, side, position.side, self._policy_version, now_ms]).lastrowid
            order = self.broker.submit(decision_id, side, now_ms, target="flat")
            if request_id is not None:
                store.set_meta(self.db, FLATTEN_ORDER_KEY, json.dumps({"request": request_id, "order": order["id"]}),
                               now_ms)
        self.broker.execute(order, even_if_unknown=True)
        events.emit(events.order_placed, self.broker, order=order)
        if self.broker.has_pending() and self.last_price is not None:
            self._fill_pending(self.last_price, now_ms)
        return _joined(before, self._order_outcome(order["id"]))

    def _earlier_flatten(self, request_id: int | None) -> str | None:
        """What the order of flatten request `request_id` did, when a crash interrupted that flatten; else None."""
        value = store.get_meta(self.db, FLATTEN_ORDER_KEY)
        noted = json.loads(value) if value else None
        if request_id is None or noted is None or noted["request"] != request_id:
            return None
        return f"before the worker stopped: {self._order_outcome(noted['order'])}"

    def _order_outcome(self, order_id: int) -> str:
        side, status, qty, price, error = self.db.execute(
            "SELECT side, status, qty, price, error FROM orders WHERE id = ?", [order_id]).fetchone()
        if status == "filled":
            return f"{side} {qty:.8g} {self.symbol} at {price:.8g}"
        return f"{side} order {status}" + (f": {error}" if error else "")

    def _fill_pending(self, price: float, time_ms: int) -> None:
        if not self.broker.has_pending():
            return
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            filled = self.broker.fill_pending(price, time_ms)
            if filled:
                self._after_fills(filled, self._last_policy or self.loader.current())
                open_trade.save(self.db, self.symbol, self.open_trade, now_ms)
            brokers.save_position(self.db, self.broker.position(), now_ms)
        for fill in filled:
            events.emit(events.order_filled, self.broker, order=fill)

    def check_strategy(self) -> Policy:
        """The policy to decide with, reloading the file if it changed; a change is recorded and announced:
        strategy_invalid for a refused text, strategy_reloaded whenever the file's text runs again (a new
        version, or the old one after a broken file was fixed). The worker also calls it between candles."""
        policy = self.loader.current()
        error = self.loader.error
        is_new_version, is_new_error = policy.version != self._policy_version, error is not self._error_seen
        if is_new_version:
            self._policy_version = policy.version
            store.set_meta(self.db, "strategy_loaded_version", policy.version, int(self.clock() * 1000))
        if is_new_error:
            self._error_seen = error
            message = "" if error is None else str(error)
            store.set_meta(self.db, "strategy_error", message, int(self.clock() * 1000))
        if error is not None and is_new_error:
            events.emit(events.strategy_invalid, self, error=error)
        elif error is None and (is_new_version or is_new_error):
            events.emit(events.strategy_reloaded, self, policy=policy)
        return policy


class _ExitAlert(NamedTuple):
    order_id: int
    reason: str
    statement: str
    entry: float | None
    level: float
    by_exchange_stop: bool
    is_short: bool = False


def _joined(before: str | None, now: str) -> str:
    return now if before is None else f"{before}; now: {now}"


def _iso(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))

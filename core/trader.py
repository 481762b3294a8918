"""The trading step of the worker: closed candle -> stored -> decided -> target handed to the broker.

One SQLite transaction per candle holds the candle, the fills of orders waiting for this price, the
decision and any new order, so a crash at any point leaves either all of it or none of it; a restart
then skips candles already stored and never decides (or orders) twice.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import numpy as np
from sqlite_utils import Database

from core import brokers, controls, events, store
from core.candles import Candle, Tick, TickBuffer
from core.dsl import Action, Policy
from core.dsl.policy import MAX_WINDOW
from core.policy_loader import PolicyLoader

log = logging.getLogger(__name__)

TARGETS = {Action.BUY: "long", Action.SELL: "flat", Action.HOLD: None}
SIDE_FOR_TARGET = {"long": "BUY", "flat": "SELL"}
_SERIES = ("open", "high", "low", "close", "volume")


class CandleWindow:
    """The most recent closed candles as float64 arrays, appended in O(1), read as views."""

    def __init__(self, capacity: int = MAX_WINDOW):
        self.capacity = capacity
        self._data = {name: np.empty(2 * capacity, dtype=np.float64) for name in _SERIES}
        self._start = self._end = 0
        self.last_open_time_ms: int | None = None

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, candle: Candle) -> None:
        """Add the newest closed candle, forgetting the oldest beyond the capacity."""
        if self._end == 2 * self.capacity:  # full: keep the newest capacity - 1 at the front
            keep = self.capacity - 1
            for array in self._data.values():
                array[:keep] = array[self._end - keep:self._end]
            self._start, self._end = 0, keep
        for name in _SERIES:
            self._data[name][self._end] = getattr(candle, name)
        self._end += 1
        if self._end - self._start > self.capacity:
            self._start += 1
        self.last_open_time_ms = candle.open_time_ms

    def arrays(self) -> dict[str, np.ndarray]:
        """The window as the policy reads it: open, high, low, close, volume."""
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

    # -- start ----------------------------------------------------------------------------------

    def resume(self) -> int | None:
        """Load the newest stored candles so indicators are warm, let the broker settle orders a crash
        left in flight; returns the last stored open time."""
        self.broker.recover()
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
        closed = self.buffer.add(tick)
        if closed:
            for candle in closed:
                self.on_candle(candle)
            # This tick opened the new minute: its price is the new candle's open, the fill price.
            self._fill_pending(tick.price, tick.time_ms - tick.time_ms % 60_000)
        self.last_price = tick.price

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
        policy = self._policy()
        now_ms = int(self.clock() * 1000)
        filled, order = [], None
        with store.transaction(self.db):
            if self.broker.has_pending():
                filled = self.broker.fill_pending(candle.open, candle.open_time_ms)
                brokers.save_position(self.db, self.broker.position(), now_ms)
            self.db.execute("INSERT OR IGNORE INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [self.symbol, *candle])
            self.window.append(candle)
            decision = policy.decide(self.window.arrays())
            try:
                position_side = self.broker.position().side
            except brokers.BrokerError as exc:  # the account cannot be read: decide, but order nothing
                position_side = "unknown"
                log.warning("no order on candle %s: %s", _iso(candle.open_time_ms), exc)
            target = TARGETS[decision.action]
            rule = policy.rules[decision.rule_index] if decision.rule_index is not None else None
            row = {"symbol": self.symbol, "candle_open_time_ms": candle.open_time_ms,
                   "action": decision.action.name, "target": target, "position_before": position_side,
                   "rule_index": decision.rule_index, "rule_text": rule.text if rule else None,
                   "strategy_version": policy.version, "reason": "strategy", "created_at_ms": now_ms}
            row["id"] = self.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_index, "
                "rule_text, strategy_version, reason, created_at_ms) VALUES (:symbol, :candle_open_time_ms, "
                ":action, :target, :position_before, :rule_index, :rule_text, :strategy_version, :reason, "
                ":created_at_ms)", row).lastrowid
            if target is not None and position_side not in (target, "unknown"):
                if target == "long" and controls.is_paused(self.db):  # paused: exits only
                    log.info("no entry on candle %s: trading is paused", _iso(candle.open_time_ms))
                else:
                    order = self.broker.submit(row["id"], SIDE_FOR_TARGET[target], now_ms)
        if order is not None:
            self.broker.execute(order)  # only after the commit: the order's row exists before it is sent
        self.latencies_s.append(time.perf_counter() - started)
        events.emit(events.candle_closed, self, candle=candle)
        for fill in filled:
            events.emit(events.order_filled, self.broker, order=fill)
        events.emit(events.decision_made, self, decision=row)
        if order is not None:
            events.emit(events.order_placed, self.broker, order=order)

    def backfill(self, candles: list[Candle], decide_from_ms: int) -> None:
        """Take closed candles from the exchange's klines where ticks are missing (the start, a gap in the
        stream): those opened before `decide_from_ms` only warm the indicators (no order is sent for the
        past), later ones are traded. Ticks then continue with the minute after the last candle."""
        if not candles:
            return
        history = [c for c in candles if c.open_time_ms < decide_from_ms
                   and (self.window.last_open_time_ms is None or c.open_time_ms > self.window.last_open_time_ms)]
        if history:
            with self.db.conn:
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
        """Move the position to an external signal (BUY -> long, SELL -> flat): a decision of its own, with
        `reason`, on the newest candle, and its order. Returns the order, or None when nothing is needed."""
        last = self.window.last_open_time_ms
        if last is None:
            return None  # no price yet to trade at
        target = "long" if signal == "BUY" else "flat"
        now_ms = int(self.clock() * 1000)
        with store.transaction(self.db):
            position = self.broker.position()
            if self.broker.has_pending() or position.side == target or (target == "flat" and position.side != "long"):
                return None
            if target == "long" and controls.is_paused(self.db):
                return None  # paused: the operator allows no entry, not even a correction
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO decisions(symbol, candle_open_time_ms, action, target, position_before, "
                "rule_text, strategy_version, reason, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'follow', ?)",
                [self.symbol, last, signal, target, position.side, reason, self._policy_version, now_ms])
            if not cursor.rowcount:
                return None  # already followed on this candle
            order = self.broker.submit(cursor.lastrowid, SIDE_FOR_TARGET[target], now_ms)
        self.broker.execute(order)
        log.warning("following the external signal %s: %s", signal, reason)
        events.emit(events.order_placed, self.broker, order=order)
        return order

    def flatten(self) -> str:
        """Close the position now (the operator's flatten): a decision of its own with reason 'manual' and its
        order, filled at once by an exchange, or by paper at the latest trade's price. Returns what it did."""
        now_ms = int(self.clock() * 1000)
        try:
            self.broker.position()  # a fresh read: inside the transaction an exchange broker answers its last one
        except brokers.BrokerError as exc:
            return f"nothing done, the position could not be read: {exc}"
        with store.transaction(self.db):
            # An entry still waiting for the next price would undo the flatten: it is cancelled first.
            cancelled = self.db.execute(
                "UPDATE orders SET status = 'cancelled', error = 'cancelled by a flatten' WHERE broker = ? "
                "AND symbol = ? AND status = 'pending' AND side = 'BUY'", [self.broker.name, self.symbol]).rowcount
            position = self.broker.position()
            if position.side == "flat" or self.broker.has_pending():
                return ("nothing to close, the position is flat" if position.side == "flat"
                        else "a closing order is already waiting") + (f"; {cancelled} waiting entry cancelled"
                                                                      if cancelled else "")
            side = SIDE_FOR_TARGET["flat"]  # brokers take targets: SELL means be flat, closing a short too
            # Keyed by the request's own time, not a candle's: two flattens within one candle are two decisions.
            decision_id = self.db.execute(
                "INSERT INTO decisions(symbol, candle_open_time_ms, action, target, position_before, rule_text, "
                "strategy_version, reason, created_at_ms) VALUES (?, ?, ?, 'flat', ?, 'flatten by the operator', ?, "
                "'manual', ?)", [self.symbol, now_ms, side, position.side, self._policy_version, now_ms]).lastrowid
            order = self.broker.submit(decision_id, side, now_ms)
        self.broker.execute(order)
        events.emit(events.order_placed, self.broker, order=order)
        if self.broker.has_pending() and self.last_price is not None:
            self._fill_pending(self.last_price, now_ms)
        row = self.db.execute("SELECT status, qty, price, error FROM orders WHERE id = ?", [order["id"]]).fetchone()
        status, qty, price, error = row
        if status == "filled":
            return f"{side} {qty:.8g} {self.symbol} at {price:.8g}"
        return f"{side} order {status}" + (f": {error}" if error else "")

    def _fill_pending(self, price: float, time_ms: int) -> None:
        if not self.broker.has_pending():
            return
        with store.transaction(self.db):
            filled = self.broker.fill_pending(price, time_ms)
            brokers.save_position(self.db, self.broker.position(), int(self.clock() * 1000))
        for fill in filled:
            events.emit(events.order_filled, self.broker, order=fill)

    def _policy(self) -> Policy:
        policy = self.loader.current()
        if policy.version != self._policy_version:
            self._policy_version = policy.version
            with self.db.conn:
                store.set_meta(self.db, "strategy_loaded_version", policy.version, int(self.clock() * 1000))
            events.emit(events.strategy_reloaded, self, policy=policy)
        if self.loader.error is not self._error_seen:
            self._error_seen = self.loader.error
            message = "" if self.loader.error is None else str(self.loader.error)
            with self.db.conn:
                store.set_meta(self.db, "strategy_error", message, int(self.clock() * 1000))
            if self.loader.error is not None:
                events.emit(events.strategy_invalid, self, error=self.loader.error)
        return policy


def _iso(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))

"""What the operator's dashboard shows: the status report with the market and P&L, recent activity, the chart.

Every query here reads a handful of rows through an index (newest rows by id, candles by their
primary key), so the dashboard costs the same with a million candles as with a hundred.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io

from decimal import Decimal

import numpy as np

from core import account, brokers, controls, indicators, open_trade, precision, timeframes
from core.health import alerts, heartbeat, liveness
from core.candles import Candle
from core.exits import REASON_WORDS
from core.dsl import Policy
from core.dsl import timeframe
from core.dsl.nodes import AtTimeframe, Indicator, Series
from core.health.status import iso, status_report
from core.store import Database

CHART_CANDLES = 240  # four hours of minutes
MAX_WARMUP = 5_000  # candles read before the chart so that its averages are settled
MAX_CHART_MINUTES = 30_000  # minutes read for one chart at most (a 4-hour chart shows 125 candles)
MAX_MARKERS = 200
RECENT_ROWS = 10
OVERLAYS = ("SMA", "EMA", "WMA", "BB_UPPER", "BB_MIDDLE", "BB_LOWER")  # drawn on the price scale
PRICE_SERIES = ("open", "high", "low", "close")


def overview(db: Database, settings, now_ms: int) -> dict:
    """The status report plus the last candle and the position's unrealised P&L at its close."""
    report = status_report(db, settings, now_ms, alert_limit=0)
    candle = last_candle(db, settings.symbol)
    report["candle"] = candle
    report["position"]["unrealised_pnl"] = unrealised_pnl(report["position"], candle.close if candle else None)
    report["trading_since_ms"] = controls.trading_state(db).since_ms  # the tiles write times from ms
    report["last_flatten"] = controls.last_flatten(db)
    state = heartbeat.state_of(db, "position")
    report["heartbeat_pending_until_ms"] = state["pending_until_ms"] if state else None
    return report


@dataclasses.dataclass(frozen=True)
class Warning:
    """Something every page must say at once: the worker is down, or the heartbeat is bad."""

    kind: str  # "worker down", "mismatch", "stale"
    text: str


def warnings(db: Database, now_ms: int) -> list[Warning]:
    """What is wrong now, worst first: the worker down, then a heartbeat mismatch or a stale signal."""
    found = []
    worker = liveness.worker_status(db, now_ms)
    if not worker.alive:
        seen = ("it has never started" if worker.last_seen_ms is None
                else f"last seen {age_ms(worker.last_seen_ms, now_ms)} ago")
        found.append(Warning("worker down", f"The worker is down ({seen}): no trading, no heartbeat checks, "
                                            "no alerts until it runs again."))
    state = heartbeat.state_of(db, "position")
    if state and state["state"] in (heartbeat.MISMATCH, heartbeat.STALE):
        found.append(Warning(state["state"], f"Heartbeat {state['state']} since {age_ms(state['since_ms'], now_ms)} "
                                             f"ago: {state['reason']}"))
    return found


def age_ms(time_ms: int, now_ms: int) -> str:
    """How long ago a time in ms was, in words."""
    return age(datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.timezone.utc).isoformat(), now_ms)


def last_candle(db: Database, symbol: str) -> Candle | None:
    """The newest candle of `symbol`, or None before the first one closed."""
    row = db.execute("SELECT open_time_ms, open, high, low, close, volume, close_time_ms, quote_volume, trades, "
                     "taker_buy_base, taker_buy_quote FROM candles WHERE symbol = ? "
                     "ORDER BY open_time_ms DESC LIMIT 1", [symbol]).fetchone()
    return Candle(*row) if row else None


def unrealised_pnl(position: dict, price: float | None) -> dict | None:
    """P&L of an open position at `price`, in the quote asset and in percent of its entry; None when flat."""
    side, qty, entry = position.get("side"), position.get("qty"), position.get("entry_price")
    if side not in ("long", "short") or not qty or not entry or price is None:
        return None
    direction = 1 if side == "long" else -1
    return {"quote": direction * (price - entry) * qty, "percent": direction * (price / entry - 1) * 100}


def recent_activity(db: Database, limit: int = RECENT_ROWS) -> dict[str, list[dict]]:
    """The newest decisions, orders, external signals and alerts, newest first."""
    return {
        "decisions": [_with_window(row) for row in _rows(
            db, "SELECT id, candle_open_time_ms, action, target, position_before, rule_text, strategy_version, "
                "reason, created_at_ms, timeframe_minutes FROM decisions ORDER BY id DESC LIMIT ?", limit)],
        "orders": _rows(db, "SELECT id, side, status, qty, price, fee_quote, broker, error, created_at_ms, "
                            "filled_at_ms FROM orders ORDER BY id DESC LIMIT ?", limit),
        "signals": _rows(db, "SELECT id, received_at_ms, source, signal, signal_time_ms, symbol, outcome "
                             "FROM external_signals ORDER BY id DESC LIMIT ?", limit),
        "alerts": alerts.recent(db, limit),
        "open_episodes": heartbeat.open_episodes(db),
    }


def chart(db: Database, symbol: str, policy: Policy, count: int = CHART_CANDLES) -> dict:
    """Recent candles of the strategy's timeframe (the newest one still forming), the strategy's moving
    averages over them, and markers for fills and signals on the candle they happened in.

    Times are UTC seconds, as lightweight-charts wants them.
    """
    tf = policy.timeframe
    count = min(count, MAX_CHART_MINUTES // tf)  # a daily chart shows fewer candles: the minutes are read
    warmup = min(policy.warmup, MAX_WARMUP * tf, MAX_CHART_MINUTES)
    rows = db.execute("SELECT open_time_ms, open, high, low, close, volume FROM candles WHERE symbol = ? "
                      "ORDER BY open_time_ms DESC LIMIT ?", [symbol, count * tf + warmup]).fetchall()[::-1]
    if not rows:
        return {"symbol": symbol, "candles": [], "lines": [], "markers": []}
    table = np.array(rows, dtype=np.float64)
    series = {name: np.ascontiguousarray(table[:, i + 1]) for i, name in enumerate(("open", "high", "low",
                                                                                     "close", "volume"))}
    last_close = float(table[-1, 4])
    series["open_time_ms"] = table[:, 0].astype(np.int64)
    if tf > 1:
        series = timeframes.build_frame(series, tf, last_is_closed=True).candles  # the forming window shown too
    times = [int(ms) // 1000 for ms in series["open_time_ms"].tolist()]
    shown = slice(max(0, len(times) - count), len(times))
    candles = [{"time": t, "open": o, "high": h, "low": lo, "close": c}
               for t, o, h, lo, c in zip(times[shown], *(series[n][shown].tolist() for n in PRICE_SERIES))]
    lines = []
    for name, node in moving_averages(policy).items():
        source = series[node.source.name] if node.source is not None else None
        values = indicators.compute(node.name, series, node.args, source)[shown]
        points = [{"time": t, "value": v} for t, v in zip(times[shown], values.tolist()) if v == v]  # NaN != NaN
        lines.append({"name": name, "points": points})
    first_ms, last_ms = times[shown.start] * 1000, int(table[-1, 0]) + 59_999
    decimals = precision.for_market(db, symbol, account.quote_asset(symbol), last_close).price
    return {"symbol": symbol, "candles": candles, "lines": lines, "price_decimals": decimals,
            "markers": _markers(db, symbol, first_ms, last_ms, tf), "levels": trade_levels(db, symbol, policy),
            "timeframe": policy.timeframe_name}


def trade_levels(db: Database, symbol: str, policy: Policy) -> list[dict]:
    """The open trade's entry, and its stop and take profit under the strategy's risk statements, as
    horizontal lines for the chart: [{"name", "price"}]; none while flat."""
    position = brokers.load_position(db) or {}
    trade = open_trade.load(db, symbol)
    entry = trade.entry_price or (position.get("entry_price") if position.get("side") in ("long", "short") else None)
    if entry is None:
        return []
    found = [{"name": "entry", "price": entry}]
    levels = trade.levels(policy.risk)
    if levels is not None:
        stop, which = levels.stop()
        for name, price in ((REASON_WORDS[which], stop), ("take profit", levels.take_profit)):
            if price == price and abs(price) != float("inf"):  # not set: NaN or infinite
                found.append({"name": name, "price": price})
    return found


def moving_averages(policy: Policy) -> dict[str, Indicator]:
    """The strategy's indicators that live on the price scale (SMA, EMA, WMA, Bollinger bands), by label."""
    found: dict[str, Indicator] = {}
    for rule in policy.rules:
        for node in _walk(rule.condition):
            if isinstance(node, Indicator) and node.name in OVERLAYS and _reads_price(node):
                found.setdefault(label(node), node)
    return found


def label(node: Indicator) -> str:
    """How the operator writes an indicator, e.g. SMA(9) or EMA(HIGH, 21)."""
    args = [f"{a:g}" for a in node.args]
    if node.source is not None:
        args.insert(0, node.source.name.upper())
    return f"{node.name}({', '.join(args)})"


def age(iso_time: str | None, now_ms: int) -> str:
    """How long ago an ISO 8601 UTC time was, in words: '12 s', '5 min', '3 h', '2 d'."""
    if not iso_time:
        return "never"
    then = datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    return duration(now_ms / 1000 - then.timestamp())


def duration(seconds: float) -> str:
    """A length of time in words: '12 s', '5 min', '3 h', '2 d' (a negative one counts as 0 s)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _reads_price(node: Indicator) -> bool:
    return node.source is None or (isinstance(node.source, Series) and node.source.name in PRICE_SERIES)


def _walk(node):
    """A condition tree's nodes, depth first (every node is a dataclass; positions are tuples); a value read
    on another timeframe (`@tf`) is not drawn on the minutes' chart, so its inside is left out."""
    yield node
    if isinstance(node, AtTimeframe):
        return
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        for child in value if isinstance(value, tuple) else (value,):
            if dataclasses.is_dataclass(child):
                yield from _walk(child)


def _markers(db: Database, symbol: str, first_ms: int, last_ms: int, tf: int = 1) -> list[dict]:
    fills = db.execute("SELECT filled_at_ms, side, price FROM orders WHERE symbol = ? AND filled_at_ms "
                       "BETWEEN ? AND ? ORDER BY filled_at_ms DESC LIMIT ?",
                       [symbol, first_ms, last_ms, MAX_MARKERS]).fetchall()
    signals = db.execute("SELECT signal_time_ms, signal, source FROM external_signals WHERE outcome = 'accepted' "
                         "AND signal_time_ms BETWEEN ? AND ? AND symbol = ? ORDER BY signal_time_ms DESC LIMIT ?",
                         [first_ms, last_ms, symbol, MAX_MARKERS]).fetchall()
    markers = [{"time": _candle_s(ms, tf), "kind": "fill", "side": side, "price": price} for ms, side, price in fills]
    markers += [{"time": _candle_s(ms, tf), "kind": "signal", "side": signal, "text": f"{source}: {signal}"}
                for ms, signal, source in signals]
    return sorted(markers, key=lambda marker: marker["time"])


def _candle_s(time_ms: int, tf: int = 1) -> int:
    """The open time (s) of the candle of `tf` minutes that holds `time_ms`."""
    return time_ms // (60_000 * tf) * 60 * tf


def _with_window(decision: dict) -> dict:
    """A strategy decision on a longer timeframe gets its window: (open ms, end ms, interval name)."""
    minutes = decision.get("timeframe_minutes") or 1
    if minutes > 1 and decision["reason"] == "strategy":
        window_ms = minutes * 60_000
        opened = decision["candle_open_time_ms"] - decision["candle_open_time_ms"] % window_ms
        decision["window"] = (opened, opened + window_ms, timeframe.name_of(minutes))
    return decision


def _rows(db: Database, sql: str, limit: int) -> list[dict]:
    cursor = db.execute(sql, [limit])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


CSV_COLUMNS = ("side", "entry_time_utc", "entry_price", "exit_time_utc", "exit_price", "qty", "pnl", "pnl_pct",
               "fees", "exit_reason")


def round_trips_csv(trips: list[account.RoundTrip]) -> str:
    """Round trips as CSV (RFC 4180, a header row, oldest first): ISO 8601 UTC times and every digit of the
    numbers (a spreadsheet rounds as it likes; the file does not); an open trade has empty exit fields."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for trip in trips:
        writer.writerow([trip.side, iso(trip.entry_time_ms), _digits(trip.entry_price), iso(trip.exit_time_ms) or "",
                         _digits(trip.exit_price), _digits(trip.qty), _digits(trip.pnl), _digits(trip.pnl_pct),
                         _digits(trip.fees), trip.exit_reason or ""])
    return out.getvalue()


def _digits(value: float | None) -> str:
    """Every digit of a float (its shortest repr), never in scientific notation: 1e-07 is 0.0000001."""
    if value is None:
        return ""
    text = format(Decimal(repr(value)), "f")
    return text[:-2] if text.endswith(".0") else text

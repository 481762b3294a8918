"""Risk exits: the levels of an open trade, checked against candles or ticks (DESIGN.md "Risk statements").

E is the entry's fill price; an ATR multiple uses the ATR of the candle whose decision caused the entry,
fixed for the trade. Stop = E·(1−p) or E − k·ATR; take profit = E·(1+p) or E + k·ATR; trailing on
candle j = P·(1−p) or P − k·ATR with P the highest of E and the highs of the trade's candles before j;
the effective stop is the higher of stop and trailing. A candle is checked in this order: open ≤ stop →
the open; open ≥ take profit → the open; low ≤ stop → the stop; high ≥ take profit → the take profit.

The worker uses `TradeLevels` one candle (or tick) at a time; the backtest uses `find_trades`, which
gives the same exits to the price over a whole history. Undefined levels (ATR still warming up) are
NaN and never trigger. The same float expressions are used on both paths so the prices are equal.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from core import indicators
from core.dsl import Action, Distance, Risk
from core.fills import DEFAULT_FEE_RATE

RULE, STOP_LOSS, TAKE_PROFIT, TRAILING_STOP, MANUAL = "rule", "stop_loss", "take_profit", "trailing_stop", "manual"
LIQUIDATION = "liquidation"  # a 1x short that lost its whole notional (DESIGN.md "Shorts")
BLOCK_END = "block_end"  # backtest only: an out-of-sample block ended with the trade open (closed at its last close)
REASONS = (RULE, STOP_LOSS, TAKE_PROFIT, TRAILING_STOP, MANUAL, LIQUIDATION, BLOCK_END)  # codes 0..6 in find_trades' arrays
STATEMENT_TITLES = {STOP_LOSS: "STOP LOSS", TAKE_PROFIT: "TAKE PROFIT", TRAILING_STOP: "TRAILING STOP",
                    LIQUIDATION: "LIQUIDATION"}
REASON_WORDS = {RULE: "rule", STOP_LOSS: "stop loss", TAKE_PROFIT: "take profit", TRAILING_STOP: "trailing stop",
                MANUAL: "hand", LIQUIDATION: "liquidation", BLOCK_END: "block end"}
# decisions.reason -> the exit reason of the trade its SELL order ended
DECISION_EXIT_REASONS = {"strategy": RULE, "follow": MANUAL, "flatten": MANUAL, STOP_LOSS: STOP_LOSS,
                         TAKE_PROFIT: TAKE_PROFIT, TRAILING_STOP: TRAILING_STOP, LIQUIDATION: LIQUIDATION}


def exit_reason(decision_reason: str | None) -> str:
    """The exit reason of a trade closed by an order of a decision with this `reason`."""
    # A close sent in parts (core/binance: above the market maximum): part 2 on is "<reason>:part<n>"; the
    # close of a change of side is "<reason>:close".
    return DECISION_EXIT_REASONS.get((decision_reason or "").split(":")[0], MANUAL)
_NAN = float("nan")
_ROUND_ELEMENTS = 1 << 20  # candles looked at per vectorised round, over all open trades
_FIRST_WIDTH = 16  # candles a new trade is first looked at for; four times more each round after
SCALAR_SEGMENTS = 16  # this few segments left: follow them candle by candle


def _below(distance: Distance | None, price, atr: dict) -> float:
    """price·(1−p) or price − k·ATR; NaN without the statement or the ATR."""
    if distance is None:
        return _NAN
    if distance.is_atr:
        return price - distance.multiple * atr.get(distance.atr_period, _NAN)
    return price * (1 - distance.share)


def _above(distance: Distance | None, price, atr: dict) -> float:
    if distance is None:
        return _NAN
    if distance.is_atr:
        return price + distance.multiple * atr.get(distance.atr_period, _NAN)
    return price * (1 + distance.share)


@dataclasses.dataclass
class TradeLevels:
    """The risk levels of one open trade; `peak` takes each finished candle of the trade: its high for a long,
    its low for a short (whose trailing stop follows the lowest low). A short on paper also has the level
    where a 1x short has lost its notional (`liquidation`, NaN where none is kept)."""

    risk: Risk
    entry_price: float
    atr: dict[int, float]
    peak: float
    is_short: bool = False
    liquidation: float = _NAN

    @classmethod
    def open(cls, risk: Risk, entry_price: float, atr: dict[int, float]) -> "TradeLevels":
        """Levels of a long trade that just filled at `entry_price`."""
        return cls(risk, entry_price, atr, entry_price)

    @property
    def stop_loss(self) -> float:
        if self.is_short:
            return _above(self.risk.stop_loss, self.entry_price, self.atr)
        return _below(self.risk.stop_loss, self.entry_price, self.atr)

    @property
    def take_profit(self) -> float:
        if self.is_short:
            return _below(self.risk.take_profit, self.entry_price, self.atr)
        return _above(self.risk.take_profit, self.entry_price, self.atr)

    @property
    def trailing_stop(self) -> float:
        if self.is_short:
            return _above(self.risk.trailing_stop, self.peak, self.atr)
        return _below(self.risk.trailing_stop, self.peak, self.atr)

    def stop(self) -> tuple[float, str]:
        """The effective stop (the nearer of stop loss and trailing stop: the higher for a long, the lower for
        a short, where the liquidation binds when no stop lies at or below it) and which of them it is."""
        stop, trail = self.stop_loss, self.trailing_stop
        sign = -1 if self.is_short else 1
        if sign * trail > sign * stop or (math.isnan(stop) and not math.isnan(trail)):
            stop, reason = trail, TRAILING_STOP
        else:
            reason = STOP_LOSS
        if self.is_short and not math.isnan(self.liquidation) and not stop <= self.liquidation:
            return self.liquidation, LIQUIDATION
        return stop, reason

    def check_candle(self, open_: float, high: float, low: float) -> tuple[str, float] | None:
        """(reason, exit price) when this candle of the trade ends it, else None."""
        stop, stop_reason = self.stop()
        target = self.take_profit
        # sign · price turns a short's checks into a long's: against a short is up (negation is exact).
        sign, worst, best = (-1, high, low) if self.is_short else (1, low, high)
        if sign * open_ <= sign * stop:
            if self.is_short and open_ >= self.liquidation:  # through it: a 1x short loses its notional, no more
                return LIQUIDATION, self.liquidation
            return stop_reason, open_
        if sign * open_ >= sign * target:
            return TAKE_PROFIT, open_
        if sign * worst <= sign * stop:
            return stop_reason, stop
        if sign * best >= sign * target:
            return TAKE_PROFIT, target
        return None

    def check_tick(self, price: float, is_open: bool) -> tuple[str, float] | None:
        """(reason, exit price) when a trade at `price` ends the trade: the first trade of a minute is its
        open (a gap fills there), later ones fill at the level they touched."""
        if is_open:
            return self.check_candle(price, price, price)
        stop, stop_reason = self.stop()
        sign = -1 if self.is_short else 1
        if sign * price <= sign * stop:
            return stop_reason, stop
        if sign * price >= sign * self.take_profit:
            return TAKE_PROFIT, self.take_profit
        return None

    def candle_closed(self, high: float, low: float | None = None) -> None:
        """A candle of the trade has ended: its high (a short: its low) counts for the trailing stop from the
        next one on."""
        self.peak = min(self.peak, low) if self.is_short else max(self.peak, high)


# -- the whole history at once (backtest, editor preview) ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class TradeArrays:
    """Round trips over a history, in entry order: fill candle indices, prices and exit reason codes.

    A trade is held at the closes of candles entry_index .. exit_index − 1; exit_index is −1 for the
    trade still open at the end (its exit price NaN).
    """

    entry_index: np.ndarray
    entry_price: np.ndarray
    exit_index: np.ndarray
    exit_price: np.ndarray
    exit_reason: np.ndarray  # int8 index into REASONS; −1 for the open trade
    exit_at_open: np.ndarray  # bool: the exit filled at a candle's open (rule exits with next-open, gaps)
    is_short: np.ndarray | None = None  # bool per trade; None: every trade is long

    def __post_init__(self):
        if self.is_short is None:
            object.__setattr__(self, "is_short", np.zeros(len(self.entry_index), dtype=bool))


_WANT = np.array([0, 1, 0, -1], dtype=np.int8)  # Action value -> the position it asks for: 1 long, 0 flat, −1 short


def liquidation_factor(fee_rate: float) -> float:
    """L / E for a 1x short: at L = E·(2−f)/(1+f) its profit q·(E·(1−f) − L·(1+f)) is −q·E, the whole notional."""
    return (2 - fee_rate) / (1 + fee_rate)


def usable_atr(atr: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """ATR that can set a level: zero (a flat market: the level would be the entry itself, stopped out at
    once) and undefined (warming up) become NaN, which sets no level. The worker's OpenTrade.enter does the
    same."""
    with np.errstate(invalid="ignore"):
        return {period: np.where(np.asarray(values) > 0, values, np.nan) for period, values in atr.items()}


def find_trades(candles, actions: np.ndarray, risk: Risk, fill: str = "next-open",
                fee_rate: float = DEFAULT_FEE_RATE, decided: np.ndarray | None = None,
                atr: dict[int, np.ndarray] | None = None) -> TradeArrays:
    """Every trade `actions` (the policy's per-candle decisions) and `risk` make over `candles`.

    `fee_rate` sets where a short is liquidated (`liquidation_factor`). With a strategy timeframe only some
    minutes decide (`decided`, from Policy.decide_minutes; None = all); the others hold HOLD and do not count
    as an answer of the rules after a risk exit. `atr`: ATR(n) per period at each deciding candle
    (Policy.atr_by_minute); computed on the candles when None."""
    n = len(actions)
    if risk.atr_periods:
        if atr is None:
            atr = {p: indicators.compute("ATR", candles, (float(p),)) for p in risk.atr_periods}
        atr = usable_atr(atr)
    # Rule segments: from a BUY (SHORT) while not long (short) to the next other target, as without risk
    # exits. The wish changes only on a candle whose BUY, SELL or SHORT differs from the last one before it.
    acted = np.flatnonzero(actions != Action.HOLD)
    want = _WANT[actions[acted]]
    changed = np.flatnonzero(want != np.concatenate(([0], want[:-1])))
    change, new_want = acted[changed], want[changed]
    if fill == "next-open":
        keep = change + 1 < n  # a decision on the last candle has no next open to fill at
        change, new_want = change[keep], new_want[keep]
    starts = np.flatnonzero(new_want != 0)
    seg_entry = change[starts]
    seg_exit = np.where(starts + 1 < len(change), change[np.minimum(starts + 1, len(change) - 1)], -1)
    is_short = new_want[starts] < 0
    if not is_short.any():
        if not risk.has_exits:
            return _rule_trades(candles, seg_entry, seg_exit, fill)
        return _risk_trades(candles, actions, risk, fill, seg_entry, seg_exit, atr=atr, decided=decided)
    parts = []
    if not is_short.all():
        longs = ~is_short
        parts.append(_rule_trades(candles, seg_entry[longs], seg_exit[longs], fill) if not risk.has_exits else
                     _risk_trades(candles, actions, risk, fill, seg_entry[longs], seg_exit[longs], atr=atr,
                                  decided=decided))
    parts += _short_trades(candles, actions, risk, fill, seg_entry[is_short], seg_exit[is_short], fee_rate,
                           decided, atr)
    return _joined(parts)


def _short_trades(candles, actions, risk: Risk, fill, seg_entry, seg_exit, fee_rate, decided=None,
                  atr=None) -> list[TradeArrays]:
    """The short segments' trades. A short is a long on the mirrored prices (−price, high and low swapped)
    with the percentages negated: E·(1+p) = −(−E·(1−(−p))) to the bit, and ATR is the same on both. The
    liquidation level is a floor of the mirrored long. Without risk statements only the segments whose
    high reaches the liquidation level take the candle-by-candle path."""
    n = len(actions)
    factor = liquidation_factor(fee_rate)
    parts = []
    if not risk.has_exits:
        trades = _rule_trades(candles, seg_entry, seg_exit, fill)
        first, last = seg_entry + 1, np.where(seg_exit >= 0, seg_exit, n - 1)  # candles checked for a liquidation
        has_range = first <= last
        highest = np.full(len(seg_entry), -np.inf)
        if has_range.any():
            bounds = np.empty(2 * int(has_range.sum()), dtype=np.int64)
            bounds[0::2], bounds[1::2] = first[has_range], last[has_range] + 1
            highest[has_range] = np.maximum.reduceat(np.append(candles["high"], -np.inf), bounds)[0::2]
        hit = highest >= trades.entry_price * factor
        if not hit.any():
            return [_as_short(trades, np.ones(len(seg_entry), bool))]
        keep = ~hit
        parts.append(_as_short(TradeArrays(*(getattr(trades, f.name)[keep] for f in dataclasses.fields(TradeArrays)
                                             if f.name != "is_short")), np.ones(int(keep.sum()), bool)))
        seg_entry, seg_exit = seg_entry[hit], seg_exit[hit]
    mirror = {"open": -candles["open"], "high": -candles["low"], "low": -candles["high"], "close": -candles["close"]}
    if atr is None:
        atr = {p: indicators.compute("ATR", candles, (float(p),)) for p in risk.atr_periods}
    found = _risk_trades(mirror, actions, _mirrored(risk), fill, seg_entry, seg_exit, Action.SHORT, atr, factor,
                         decided)
    found = dataclasses.replace(found, entry_price=-found.entry_price, exit_price=-found.exit_price)
    return parts + [_as_short(found, np.ones(len(found.entry_index), bool))]


def _as_short(trades: TradeArrays, is_short: np.ndarray) -> TradeArrays:
    return dataclasses.replace(trades, is_short=is_short)


def _mirrored(risk: Risk) -> Risk:
    """The levels of a short as a long's on negated prices: each percentage negated, ATR multiples as they are."""
    def flip(distance: Distance | None) -> Distance | None:
        if distance is None or distance.is_atr:
            return distance
        return dataclasses.replace(distance, share=-distance.share)
    return dataclasses.replace(risk, stop_loss=flip(risk.stop_loss), take_profit=flip(risk.take_profit),
                               trailing_stop=flip(risk.trailing_stop))


def _joined(parts: list[TradeArrays]) -> TradeArrays:
    """Trades of several groups of segments as one set, in entry order."""
    fields = [f.name for f in dataclasses.fields(TradeArrays)]
    columns = {name: np.concatenate([getattr(part, name) for part in parts]) for name in fields}
    order = np.argsort(columns["entry_index"], kind="stable")
    return TradeArrays(**{name: column[order] for name, column in columns.items()})


def _entry_fill(candles, decision: np.ndarray, fill: str) -> tuple[np.ndarray, np.ndarray]:
    if fill == "next-open":
        return decision + 1, candles["open"][decision + 1]
    return decision, candles["close"][decision]


def _rule_trades(candles, seg_entry, seg_exit, fill) -> TradeArrays:
    entry_index, entry_price = _entry_fill(candles, seg_entry, fill)
    closed = seg_exit >= 0
    exit_index, exit_price = np.full(len(seg_exit), -1), np.full(len(seg_exit), np.nan)
    exit_index[closed], exit_price[closed] = _entry_fill(candles, seg_exit[closed], fill)
    reason = np.where(closed, 0, -1).astype(np.int8)
    return TradeArrays(entry_index, entry_price, exit_index, exit_price, reason,
                       closed & (fill == "next-open"))


def _next_index(mask: np.ndarray) -> np.ndarray:
    """For each i (and n), the first index >= i where mask is true, n when none."""
    n = len(mask)
    where = np.where(mask, np.arange(n), n)
    return np.concatenate((np.minimum.accumulate(where[::-1])[::-1], [n]))


def _risk_trades(candles, actions, risk: Risk, fill, seg_entry, seg_exit, side: Action = Action.BUY,
                 atr: dict | None = None, liquidation: float | None = None,
                 decided: np.ndarray | None = None) -> TradeArrays:
    """Trades with risk exits: each rule segment's trades, followed candle range by candle range for
    all open trades at once (numpy over a 2-D window), so only the candles of open trades are looked
    at, and a trade re-enters inside its segment only as the rules allow after a risk exit.

    `side` is the action that enters; `liquidation` (a short's, mirrored) puts a floor at entry × it."""
    n = len(actions)
    if atr is None:
        atr = {p: indicators.compute("ATR", candles, (float(p),)) for p in risk.atr_periods}
    not_side = actions != side
    next_not_buy = _next_index(not_side if decided is None else not_side & decided)
    next_buy = _next_index(actions == side)
    # The candle through which each segment's trades are checked: its SELL decision, or the last candle.
    seg_last = np.where(seg_exit >= 0, seg_exit, n - 1)
    out = {k: [] for k in ("decision", "exit_index", "exit_price", "reason", "at_open")}
    scalar: list[tuple] = []
    seg = np.arange(len(seg_entry))  # the segments with a trade to follow, and that trade's entry decision
    decision = seg_entry.copy()
    while len(seg):
        if len(seg) <= SCALAR_SEGMENTS:  # a few long chains of re-entries: a plain loop costs less than rounds
            for s, t in zip(seg.tolist(), decision.tolist()):
                _scalar_segment(candles, risk, fill, atr, next_not_buy, next_buy, t, int(seg_last[s]),
                                int(seg_exit[s]), scalar, liquidation)
            break
        exit_at, exit_price, reason, at_open = _vector_round(candles, risk, fill, atr, decision, seg_last[seg],
                                                             liquidation)
        ended = exit_at >= 0
        # Trades not ended by a risk exit end by their segment's rule exit, or stay open.
        rule_end = ~ended & (seg_exit[seg] >= 0)
        if rule_end.any():
            exit_at[rule_end], exit_price[rule_end] = _entry_fill(candles, seg_exit[seg][rule_end], fill)
            reason[rule_end] = REASONS.index(RULE)
            at_open[rule_end] = fill == "next-open"
        for key, value in (("decision", decision), ("exit_index", exit_at), ("exit_price", exit_price),
                           ("reason", reason), ("at_open", at_open)):
            out[key].append(value)
        # After a risk exit on candle j: a new entry needs a non-BUY answer on j or later, then a BUY,
        # still before the segment's SELL (or with a candle left to fill at, for the open segment).
        j = exit_at[ended]
        again = next_buy[np.minimum(next_not_buy[j] + 1, n)]
        limit = _reentry_limit(seg_exit[seg[ended]], n, fill)
        keep = again < limit
        seg, decision = seg[ended][keep], again[keep]
    if scalar:
        for key, column in zip(out, zip(*scalar)):
            out[key].append(np.array(column, dtype=np.int8 if key == "reason" else None))
    if not out["decision"]:
        none = np.zeros(0, dtype=np.int64)
        return TradeArrays(none, np.zeros(0), none, np.zeros(0), np.zeros(0, np.int8), np.zeros(0, bool))
    decision = np.concatenate(out["decision"])
    order = np.argsort(decision, kind="stable")
    entry_index, entry_price = _entry_fill(candles, decision[order], fill)
    pick = lambda key: np.concatenate(out[key])[order]  # noqa: E731
    return TradeArrays(entry_index, entry_price, pick("exit_index"), pick("exit_price"), pick("reason"),
                       pick("at_open"))


def _reentry_limit(seg_exit, n: int, fill: str):
    """Entries must be decided before the segment's SELL, or (open segment) with a candle to fill at."""
    return np.where(seg_exit >= 0, seg_exit, n - 1 if fill == "next-open" else n)


def _vector_round(candles, risk: Risk, fill, atr, decision, last, liquidation: float | None = None):
    """The risk exit of one trade per segment, all at once: (exit candle or −1, price, reason, at open)."""
    n = len(candles["close"])
    open_, high, low = candles["open"], candles["high"], candles["low"]
    entry_index, entry_price = _entry_fill(candles, decision, fill)
    stop = _levels(risk.stop_loss, entry_price, atr, decision, below=True)
    target = _levels(risk.take_profit, entry_price, atr, decision, below=False)
    count = len(decision)
    floor = entry_price * liquidation if liquidation is not None else None  # a mirrored short's liquidation
    peak = entry_price.copy()
    start = decision + 1  # the first candle checked: the one whose open filled (next-open) or the next
    exit_at = np.full(count, -1)
    exit_price = np.full(count, np.nan)
    reason = np.full(count, -1, dtype=np.int8)
    at_open = np.zeros(count, dtype=bool)
    todo = np.flatnonzero(start <= last)
    width = _FIRST_WIDTH
    while len(todo):
        remaining = int(np.max(last[todo] - start[todo])) + 1
        width = max(1, min(remaining, width, _ROUND_ELEMENTS // len(todo)))
        rows = start[todo, None] + np.arange(width)
        valid = rows <= last[todo, None]
        rows = np.minimum(rows, n - 1)
        o, h, lo = open_[rows], high[rows], low[rows]
        effective, is_trail = _effective_stop(risk, stop[todo], peak[todo], h, atr, decision[todo])
        if floor is not None:  # the liquidation binds where no stop lies at or above it
            f = floor[todo, None]
            is_liquidation = ~(effective >= f)
            effective = np.where(is_liquidation, f, effective)
        tp = target[todo, None]
        hit = ((lo <= effective) | (h >= tp)) & valid
        has_hit = hit.any(axis=1)
        col = hit.argmax(axis=1)
        r = np.arange(len(todo))
        oj, lj, ej, tj, trail_j = o[r, col], lo[r, col], effective[r, col], tp[:, 0], is_trail[r, col]
        stop_code = np.where(trail_j, REASONS.index(TRAILING_STOP), REASONS.index(STOP_LOSS))
        gap_stop, gap_target, touch_stop = oj <= ej, oj >= tj, lj <= ej
        if floor is not None:
            fj = floor[todo]
            stop_code = np.where(is_liquidation[r, col], REASONS.index(LIQUIDATION), stop_code)
            gap_liquidation = gap_stop & (oj <= fj)  # through the liquidation: closed at that level, not the open
            stop_code = np.where(gap_liquidation, REASONS.index(LIQUIDATION), stop_code)
            oj = np.where(gap_liquidation, fj, oj)
        price = np.where(gap_stop | gap_target, oj, np.where(touch_stop, ej, tj))
        code = np.where(gap_stop, stop_code, np.where(gap_target, REASONS.index(TAKE_PROFIT),
                                                       np.where(touch_stop, stop_code, REASONS.index(TAKE_PROFIT))))
        done = todo[has_hit]
        exit_at[done] = rows[r, col][has_hit]
        exit_price[done] = price[has_hit]
        reason[done] = code[has_hit]
        at_open[done] = (gap_stop | gap_target)[has_hit]
        # Trades without a hit in this window go on after it, with the window's highs in their peak.
        go_on = ~has_hit & (start[todo] + width <= last[todo])
        cont = todo[go_on]
        peak[cont] = np.maximum(peak[cont], np.max(h[go_on], axis=1))
        start[cont] += width
        todo = cont
        width *= 4
    return exit_at, exit_price, reason, at_open


def _offsets(distance: Distance | None, atr: dict, first: int, last: int):
    """For one level: (share factor, None) or (None, k·ATR per decision index from `first`), or (None, None)."""
    if distance is None:
        return None, None
    if distance.is_atr:
        return None, (distance.multiple * atr[distance.atr_period][first:last + 1]).tolist()
    return distance.share, None


def _scalar_segment(candles, risk: Risk, fill, atr, next_not_buy, next_buy, decision: int, last: int,
                    seg_exit: int, out: list, liquidation: float | None = None) -> None:
    """Every trade of one segment from the entry decided on `decision`, candle by candle, appended to `out`
    as (decision, exit index, exit price, reason code, at open). The arithmetic is that of TradeLevels
    and the vectorised rounds (E·(1−p), E − k·ATR, ...), so the prices are the same."""
    n = len(candles["close"])
    base = decision  # the segment's candles as lists: plain floats are quicker one at a time
    open_, high, low, close = (candles[k][base:last + 1].tolist() for k in ("open", "high", "low", "close"))
    limit = int(_reentry_limit(np.array([seg_exit]), n, fill)[0])
    stop_share, stop_atr = _offsets(risk.stop_loss, atr, base, last)
    target_share, target_atr = _offsets(risk.take_profit, atr, base, last)
    trail_share, trail_atr = _offsets(risk.trailing_stop, atr, base, last)
    has_trailing = risk.trailing_stop is not None
    stop_code, trail_code, target_code, liq_code = (REASONS.index(r) for r in (STOP_LOSS, TRAILING_STOP, TAKE_PROFIT,
                                                                              LIQUIDATION))
    while True:
        d = decision - base
        entry = open_[d + 1] if fill == "next-open" else close[d]
        stop_loss = (_NAN if stop_share is None and stop_atr is None
                     else entry * (1 - stop_share) if stop_atr is None else entry - stop_atr[d])
        target = (_NAN if target_share is None and target_atr is None
                  else entry * (1 + target_share) if target_atr is None else entry + target_atr[d])
        trail_keep = None if trail_share is None else 1 - trail_share
        trail_offset = None if trail_atr is None else trail_atr[d]
        floor = entry * liquidation if liquidation is not None else _NAN
        peak, stop, code = entry, stop_loss, stop_code
        result = None
        j = decision + 1
        while j <= last:
            k = j - base
            if has_trailing:
                trail = peak * trail_keep if trail_keep is not None else peak - trail_offset
                if trail > stop_loss or (stop_loss != stop_loss and trail == trail):
                    stop, code = trail, trail_code
                else:
                    stop, code = stop_loss, stop_code
            if floor == floor and not stop >= floor:
                stop, code = floor, liq_code
            o = open_[k]
            if o <= stop:
                result = (liq_code, floor, True) if o <= floor else (code, o, True)
            elif o >= target:
                result = (target_code, o, True)
            elif low[k] <= stop:
                result = (code, stop, False)
            elif high[k] >= target:
                result = (target_code, target, False)
            if result is not None:
                break
            if high[k] > peak:
                peak = high[k]
            j += 1
        if result is None:
            if seg_exit >= 0:
                index, price = _entry_fill(candles, np.array([seg_exit]), fill)
                out.append((decision, int(index[0]), float(price[0]), REASONS.index(RULE), fill == "next-open"))
            else:
                out.append((decision, -1, _NAN, -1, False))
            return
        out.append((decision, j, result[1], result[0], result[2]))
        again = int(next_buy[min(int(next_not_buy[j]) + 1, n)])
        if again >= limit:
            return
        decision = again


def _levels(distance: Distance | None, price: np.ndarray, atr: dict, decision: np.ndarray, below: bool):
    if distance is None:
        return np.full(len(price), np.nan)
    if distance.is_atr:
        offset = distance.multiple * atr[distance.atr_period][decision]
        return price - offset if below else price + offset
    return price * (1 - distance.share) if below else price * (1 + distance.share)


def _effective_stop(risk: Risk, stop: np.ndarray, peak: np.ndarray, h: np.ndarray, atr: dict, decision):
    """Per window cell: the effective stop and whether the trailing stop is the one that binds."""
    shape = h.shape
    if risk.trailing_stop is None:
        return np.broadcast_to(stop[:, None], shape), np.zeros(shape, dtype=bool)
    before = np.empty(shape)
    before[:, 0] = peak
    if shape[1] > 1:
        before[:, 1:] = np.maximum(peak[:, None], np.maximum.accumulate(h[:, :-1], axis=1))
    distance = risk.trailing_stop
    if distance.is_atr:
        trail = before - (distance.multiple * atr[distance.atr_period][decision])[:, None]
    else:
        trail = before * (1 - distance.share)
    s = stop[:, None]
    is_trail = (trail > s) | (np.isnan(s) & ~np.isnan(trail))
    return np.where(is_trail, trail, s), is_trail

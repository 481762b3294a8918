"""Live exit checks: how many trades of Binance's aggregate-trade stream the worker's Trader.on_trade checks a
second, in process, while a trade is held with STOP LOSS, TAKE PROFIT and TRAILING STOP set (no level
reached: the steady case), and while flat (levels not set). Real SQLite file, paper broker.

Why it matters: the live feed hands every trade over; BTCUSDT prints up to a few thousand aggregate trades
a second in a burst, and a trade checked late is an exit sent late. Goal: >= 20,000 trades/s held.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import store  # noqa: E402
from core.brokers import PaperBroker  # noqa: E402
from core.candles import Candle, LiveTrade  # noqa: E402
from core.policy_loader import PolicyLoader  # noqa: E402
from core.trader import Trader  # noqa: E402
from timing import sample_seconds  # noqa: E402

T0 = 1_570_752_000_000
COUNT = 200_000


def trader_in(folder: Path, strategy: str) -> Trader:
    (folder / "strategy.txt").write_text(strategy)
    db = store.connect(folder / "omniwise.db")
    trader = Trader(db, "BTCUSDT", PolicyLoader(folder / "strategy.txt"), PaperBroker(db, "BTCUSDT"))
    for i, (open_, close) in enumerate(((101.0, 101.0), (100.0, 101.0))):
        trader.on_candle(Candle(T0 + i * 60_000, open_, max(open_, close), min(open_, close), close, 1.0,
                                T0 + i * 60_000 + 59_999, close, 1, 0.5, 50.0))
    return trader


def trades(count: int) -> list[LiveTrade]:
    # Prices wander between 99.5 and 100.5: never reaching the stop (98), target (105) or trail (98.5).
    return [LiveTrade(100.0 + ((i * 7919) % 1000 - 500) / 1000, T0 + 120_000 + i * 10, i, i == 0)
            for i in range(count)]


def main() -> None:
    stream = trades(COUNT)
    with tempfile.TemporaryDirectory() as held_dir, tempfile.TemporaryDirectory() as flat_dir:
        held = trader_in(Path(held_dir), "IF CLOSE > 100 THEN BUY\nSTOP LOSS 2%\nTAKE PROFIT 5%\n"
                                         "TRAILING STOP 1.5%\n")
        assert held.open_trade.is_open
        flat = trader_in(Path(flat_dir), "IF CLOSE < 0 THEN BUY\nSTOP LOSS 2%\n")
        assert not flat.open_trade.is_open
        for name, trader in (("a trade held, three levels", held), ("flat", flat)):
            seconds = min(sample_seconds(lambda t=trader: [t.on_trade(x) for x in stream], 3))
            print(f"{name:<28} {COUNT / seconds:>12,.0f} trades/s  ({seconds / COUNT * 1e6:.2f} µs a trade)")
        assert held.open_trade.is_open  # nothing was reached
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores)")


if __name__ == "__main__":
    main()

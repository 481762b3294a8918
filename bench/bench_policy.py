"""Strategy language figures: hot-reload check, one live decision, whole-history evaluation.

Goals (issue 2): unchanged-file check <= 5 us per call; one decision of a 20-rule strategy on a
1,000-candle window <= 1 ms; the 14k-candle ETHBTC history and a 1,000,000-candle synthetic history
<= 1 s each.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.dsl import compile_strategy  # noqa: E402
from core.policy_loader import PolicyLoader  # noqa: E402
from timing import best_of, p50_p99_ms, sample_seconds  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SEED = (ROOT / "data" / "strategy.txt").read_text()
TWENTY_RULES = "\n".join([
    "IF EMA(9) CROSSES ABOVE EMA(21) AND RSI(14) < 70 THEN BUY",
    "IF EMA(9) CROSSES BELOW EMA(21) THEN SELL",
    "IF RSI(14) < 30 AND CLOSE > SMA(200) THEN BUY",
    "IF RSI(14) > 70 OR CLOSE < BB_LOWER(20, 2) THEN SELL",
    "IF MACD CROSSES ABOVE MACD_SIGNAL AND ADX(14) > 25 THEN BUY",
    "IF MACD_HIST < 0 AND MACD < 0 THEN SELL",
    "IF CLOSE > BB_UPPER(20, 2) AND VOLUME > SMA(VOLUME, 20) * 2 THEN BUY",
    "IF STOCH_K(14, 3, 3) CROSSES ABOVE STOCH_D(14, 3, 3) AND STOCH_K(14, 3, 3) < 20 THEN BUY",
    "IF STOCH_K(14, 3, 3) > 80 THEN SELL",
    "IF CCI(20) < -100 AND MFI(14) < 20 THEN BUY",
    "IF CCI(20) > 100 AND MFI(14) > 80 THEN SELL",
    "IF ATR(14) / CLOSE > 0.05 THEN HOLD",
    "IF ROC(10) > 5 AND OBV > SMA(OBV, 20) THEN BUY",
    "IF ROC(10) < -5 THEN SELL",
    "IF WMA(30) > EMA(50) AND MA4 > MA9 THEN BUY",
    "IF WMA(30) < EMA(50) AND MA4 < MA9 THEN SELL",
    "IF (HIGH - LOW) / CLOSE > 0.02 AND CLOSE > OPEN THEN BUY",
    "IF (HIGH - LOW) / CLOSE > 0.02 AND CLOSE < OPEN THEN SELL",
    "IF NOT (CLOSE > SMA(100)) AND RSI(7) < 20 THEN BUY",
    "IF EMA(100) CROSSES BELOW SMA(100) THEN SELL",
])


def synthetic(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    spread = np.abs(rng.normal(0, 0.002, n)) * close
    return {"open": np.roll(close, 1), "high": close + spread, "low": close - spread, "close": close,
            "volume": rng.uniform(1, 100, n)}


def load_ethbtc() -> dict[str, np.ndarray]:
    with open(SHARED / "candles" / "ETHBTC-1m.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("open", "high", "low", "close", "volume")}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "strategy.txt"
        path.write_text(TWENTY_RULES)
        loader = PolicyLoader(path)
        loader.current()
        calls = 200_000
        start = time.perf_counter()
        for _ in range(calls):
            loader.current()
        per_call_us = (time.perf_counter() - start) / calls * 1e6
    print(f"unchanged-file check: {per_call_us:.2f} us per call (goal <= 5 us)")

    policy = compile_strategy(TWENTY_RULES)
    window = {k: v[-1000:] for k, v in synthetic(5000).items()}
    p50, p99 = p50_p99_ms(sample_seconds(lambda: policy.fired_rules(window), 2000))
    print(f"20-rule decision on a 1,000-candle window: p50 {p50:.3f} ms, p99 {p99:.3f} ms (goal <= 1 ms)")
    live = synthetic(5000)
    p50, p99 = p50_p99_ms(sample_seconds(lambda: policy.decide(live), 2000))
    print(f"20-rule live decide() (window {policy.window} candles): p50 {p50:.3f} ms, p99 {p99:.3f} ms")

    seed = compile_strategy(SEED)
    ethbtc = load_ethbtc()
    n = len(ethbtc["close"])
    print(f"seed strategy over ETHBTC history ({n:,} candles): "
          f"{best_of(lambda: seed.decide_all(ethbtc), 20) * 1e3:.2f} ms (goal <= 1 s)")
    big = synthetic(1_000_000)
    print(f"seed strategy over 1,000,000 synthetic candles: {best_of(lambda: seed.decide_all(big), 5) * 1e3:.1f} ms "
          f"(goal <= 1 s)")
    print(f"20-rule strategy over 1,000,000 synthetic candles: "
          f"{best_of(lambda: policy.decide_all(big), 3) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

"""A sweep on a Dask cluster (dask.distributed): the combinations of `backtest` on many machines.

The candle arrays go to every worker once (`Client.scatter(..., broadcast=True)`); the combinations go
in batches, a few per worker, and each worker keeps the indicators it computed for the next batch of
the same sweep, as the local pool does. A row comes back as the local run makes it (core.sweep_runs.
run_one), so the results are the same. Workers must run this project's code: start them from the
project folder with its virtualenv (README, "Sweeps on a Dask cluster").
"""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import Callable

from core.dsl.sweeps import Combination
from core.sweep_runs import Candles, IndicatorCache, Run, RunSettings, keep_freed_memory, run_one

BATCHES_PER_WORKER = 4  # enough to even out slow and fast batches, few enough to keep messages few
CONNECT_TIMEOUT_S = 10


class ClusterError(Exception):
    """The cluster cannot run the sweep (no scheduler at the address, no worker): say so and stop."""


def _reachable(address: str) -> None:
    """Open and close a TCP connection to tcp://HOST:PORT: a refused port fails at once, where Dask's
    Client would retry it for its whole timeout."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()


def run_on_cluster(address: str, combinations: list[Combination], candles: Candles, settings: RunSettings,
                   progress: Callable[[int], None] | None = None) -> list[Run]:
    """Backtest every combination on the Dask cluster whose scheduler is at `address` (tcp://HOST:PORT)."""
    from distributed import Client, as_completed

    try:
        _reachable(address)
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"no Dask scheduler answers at {address}: {exc}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {address} has no worker") from None
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        (shared,) = client.scatter([dict(candles)], broadcast=True, hash=False)  # once per worker, as one object
        tasks = list(enumerate(combinations))
        size = max(1, math.ceil(len(tasks) / (workers * BATCHES_PER_WORKER)))
        batches = [tasks[start:start + size] for start in range(0, len(tasks), size)]
        sweep = uuid.uuid4().hex  # names this sweep's candles in the workers' indicator caches
        futures = client.map(run_batch, batches, candles=shared, settings=settings, sweep=sweep, pure=False)
        results: list[Run | None] = [None] * len(tasks)
        done = 0
        for future in as_completed(futures):
            rows = future.result()
            for index, run in rows:
                results[index] = run
            done += len(rows)
            if progress:
                progress(done)
    return results  # type: ignore[return-value]


# -- on the workers ----------------------------------------------------------------------------------

# The sweep whose indicators this worker process keeps, and which candle objects its batches got (one
# per sweep when the arrays were sent once, not with every batch: tests read it with Client.run).
_WORKER: dict = {"sweep": None, "indicators": None, "candle_objects": {}}


def run_batch(batch: list[tuple[int, Combination]], candles: Candles, settings: RunSettings,
              sweep: str) -> list[tuple[int, Run]]:
    """Some combinations of one sweep, in a worker, sharing its indicator cache between batches."""
    if _WORKER["sweep"] != sweep:
        keep_freed_memory()
        _WORKER.update(sweep=sweep, indicators=IndicatorCache())
        _WORKER["candle_objects"] = {}
    _WORKER["candle_objects"].setdefault(sweep, set()).add(id(candles["close"]))
    return [(index, run_one(combination, candles, settings, _WORKER["indicators"])) for index, combination in batch]


def candle_objects() -> dict[str, int]:
    """For each sweep this worker served: how many distinct close-price arrays its batches were given."""
    return {sweep: len(ids) for sweep, ids in _WORKER["candle_objects"].items()}

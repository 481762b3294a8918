"""backtest --cluster: a sweep on a Dask cluster (a scheduler and two workers started here, on 127.0.0.1
with ports the system picks) gives the local run's results, with the candles sent once per worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_backtest_cli import ETHBTC, backtest, write

DASK = str(ROOT / ".venv" / "bin" / "dask")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Dask scheduler and two single-threaded worker processes that run this project's code."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    address_file = folder / "scheduler.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = ["--no-dashboard", "--scheduler-file", str(address_file)]
    scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", *common],
                                 cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() or not address_file.read_text().strip():
            assert time.monotonic() < deadline and scheduler.poll() is None, "the scheduler did not start"
            time.sleep(0.1)  # waiting for another process to write its address, not for time to pass
        workers = subprocess.Popen([DASK, "worker", "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
                                    "--local-directory", str(folder), *common],
                                   cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = json.loads(address_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            yield address, client
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-sweep")
    lines = ETHBTC.read_text().splitlines(keepends=True)
    (folder / "candles.csv").write_text("".join(lines[:3001]))
    write(folder, "sweep.txt", "IF MA{fast: 3..6} > MA{slow: 8..20..4} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n")
    return folder


def test_a_sweep_on_the_cluster_equals_the_local_sweep(cluster, files):
    address, client = cluster
    args = ("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--json", "--trades")
    local = json.loads(backtest(*args).stdout)
    remote = json.loads(backtest(*args, "--cluster", address).stdout)
    assert remote == local and len(remote) == 16
    served = client.run(lambda: __import__("core.sweep_cluster", fromlist=["candle_objects"]).candle_objects())
    # Each worker that ran batches of the sweep was given one candle object for all of them: sent once.
    counts = [count for sweeps in served.values() for count in sweeps.values()]
    assert counts and all(count == 1 for count in counts)


def test_split_and_walk_forward_rank_on_the_cluster_too(cluster, files):
    address, _ = cluster
    for extra in (("--split", "0.7"), ("--walk-forward", "2", "--rolling")):
        args = ("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--json", *extra)
        assert json.loads(backtest(*args, "--cluster", address).stdout) == json.loads(backtest(*args).stdout)


def test_a_long_sweep_on_the_cluster_reports_its_progress(cluster, tmp_path):
    address, _ = cluster
    candles = tmp_path / "ethbtc.csv"
    candles.write_bytes(ETHBTC.read_bytes())  # 14,397 candles x 144 combinations
    strategy = write(tmp_path, "s.txt", "IF MA{fast: 3..14} > MA{slow: 15..70..5} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n")
    result = backtest("--candles", candles, "--strategy", strategy, "--cluster", address)
    progress = result.stderr.splitlines()
    assert progress[-1].startswith("swept 144 of 144 combinations (100 %)") and len(progress) >= 2
    assert "the best 20 by return_pct" in result.stdout


def test_a_cluster_that_is_not_there_is_one_line_of_error(files):
    wrong = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--cluster", "127.0.0.1:8786",
                     check=False)
    assert wrong.returncode == 2 and "--cluster takes the scheduler's address as tcp://HOST:PORT" in wrong.stderr
    import socket

    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    absent = backtest("--candles", files / "candles.csv", "--strategy", files / "sweep.txt", "--cluster",
                      f"tcp://127.0.0.1:{port}", check=False)
    assert absent.returncode == 1 and absent.stderr.startswith(f"error: no Dask scheduler answers at tcp://127.0.0.1:{port}")
    assert len(absent.stderr.splitlines()) == 1

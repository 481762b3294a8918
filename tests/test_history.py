"""`download` from Binance's public archive (a stand-in on 127.0.0.1) and reading the kept files back.

The reference for every figure is the shared ETHBTC CSV itself (2018-01-20 04:53 to 2018-01-30 04:50,
one minute missing on 2018-01-24), read here with the csv module, not with the code under test.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from core import download, history
from core.binance.rest import SPOT, BinanceRest
from core.config import Settings
from core.feeds import FeedError
from tests.conftest import ROOT, SHARED_DATA
from tests.exchange.archive import ArchiveStandIn, binance_rows
from tests.exchange.standin import API_KEY, API_SECRET, StandIn

ETHBTC = SHARED_DATA / "candles" / "ETHBTC-1m.csv"
ROWS = binance_rows(ETHBTC)
DAY = 86_400_000
JAN = {d: int(dt.datetime(2018, 1, d, tzinfo=dt.timezone.utc).timestamp() * 1000) for d in range(1, 32)}
NOW_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)  # long after every test day


def reference(start_ms: int, end_ms: int) -> list[list[float]]:
    """open time, open, high, low, close, volume of the shared CSV's rows in [start_ms, end_ms)."""
    with open(ETHBTC, newline="") as file:
        rows = [row for row in csv.reader(file) if row[0].isdigit() and start_ms <= int(row[0]) < end_ms]
    return [[float(value) for value in row[:6]] for row in rows]


def as_rows(candles) -> list[list[float]]:
    return np.column_stack([candles["open_time_ms"].astype(np.float64)] +
                           [candles[c] for c in ("open", "high", "low", "close", "volume")]).tolist()


@pytest.fixture
def archive():
    server = ArchiveStandIn().start()
    server.publish("spot", "ETHBTC", ROWS)
    yield server
    server.close()


def cli(data_dir, archive, *args, api_url="http://127.0.0.1:9/api", preexec_fn=None):
    """`python omniwise.py download ARGS` in a fresh process against the stand-ins."""
    env = {**os.environ, "OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_BINANCE_ARCHIVE_URL": archive.url,
           "OMNIWISE_BINANCE_API_URL": api_url, "OMNIWISE_BINANCE_FUTURES_URL": api_url.replace("/api", "/fapi")}
    return subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "download", *args], capture_output=True,
                          text=True, env=env, cwd=data_dir, preexec_fn=preexec_fn, timeout=120)


def folder(data_dir, market="spot", symbol="ETHBTC"):
    return data_dir / "history" / market / symbol


def leftovers(path):
    return sorted(p.name for p in path.rglob(".*")) if path.exists() else []


def quick_archive(server, market="spot", **kwargs) -> download.Archive:
    """The archive client with short timeouts and no real waiting between tries."""
    return download.Archive(server.url, market, sleep=lambda s: None, **kwargs)


# -- the command ---------------------------------------------------------------------------------------

def test_download_keeps_the_archives_files_verified_and_reports_minutes_and_gaps(data_dir, archive):
    result = cli(data_dir, archive, "ethbtc", "--from", "2018-01-20", "--to", "2018-01-29")
    assert result.returncode == 0, result.stderr
    kept = folder(data_dir)
    for day in range(20, 30):
        name = f"ETHBTC-1m-2018-01-{day}.zip"
        served = archive.files[f"/data/spot/daily/klines/ETHBTC/1m/{name}"]
        assert (kept / name).read_bytes() == served
        assert (kept / f"{name}.CHECKSUM").read_text().split()[0] == hashlib.sha256(served).hexdigest()
    assert archive.count("ETHBTC-1m-2018-01.zip") == 0  # January is not whole in the period: daily files
    expected = reference(JAN[20], JAN[30])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ETHBTC spot 2018-01-20 to 2018-01-29: 10 archive files fetched, 0 already kept")
    assert lines[1] == f"{len(expected):,} of 14,400 minutes ({len(expected) / 144:.2f} %)" == \
        "14,106 of 14,400 minutes (97.96 %)"
    # By hand (awk over the CSV): the file starts at 04:53 on the 20th, and 2018-01-24 05:18 is missing.
    assert lines[2] == ("largest gaps (not filled in): 2018-01-20 00:00 to 2018-01-20 04:52 UTC (293 minutes); "
                        "2018-01-24 05:18 to 2018-01-24 05:18 UTC (1 minute)")
    assert leftovers(kept) == []

    asked = len(archive.requests)
    again = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-20", "--to", "2018-01-29")
    assert again.returncode == 0, again.stderr
    assert len(archive.requests) == asked  # everything kept was verified here: not one request
    assert "0 archive files fetched, 10 already kept" in again.stdout


def test_a_whole_month_comes_as_one_monthly_file(data_dir, archive):
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-01", "--to", "2018-01-31")
    assert result.returncode == 0, result.stderr
    assert archive.count("ETHBTC-1m-2018-01.zip") == 1
    assert not [p for p in archive.requests if "/daily/" in p]
    assert f"{len(ROWS):,} of 44,640 minutes" in result.stdout
    assert "2018-01-01 00:00 to 2018-01-20 04:52 UTC (27,653 minutes)" in result.stdout


def test_an_interrupted_download_resumes_with_only_the_missing_file(data_dir, archive):
    archive.failing["ETHBTC-1m-2018-01-23.zip"] = [503, 100]
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-25")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {archive.url}/data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2018-01-23.zip: HTTP 503 "
        f"Service Unavailable ({download.ATTEMPTS} tries)"]
    assert not (folder(data_dir) / "ETHBTC-1m-2018-01-23.zip").exists() and leftovers(folder(data_dir)) == []
    assert (folder(data_dir) / "ETHBTC-1m-2018-01-24.zip").exists()  # the others are kept, verified

    archive.failing.clear()
    archive.requests.clear()
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-25")
    assert result.returncode == 0, result.stderr
    assert [p.rsplit("/", 1)[1] for p in archive.requests] == ["ETHBTC-1m-2018-01-23.zip.CHECKSUM",
                                                              "ETHBTC-1m-2018-01-23.zip"]
    assert "1 archive file fetched, 4 already kept" in result.stdout


def test_a_file_not_matching_its_checksum_twice_is_named_and_not_kept(data_dir, archive):
    archive.corrupt.add("ETHBTC-1m-2018-01-22.zip")
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-22")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {archive.url}/data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2018-01-22.zip: sha256 ")
    assert "does not match its .CHECKSUM" in line and line.endswith("after 2 downloads; nothing kept")
    assert archive.count("ETHBTC-1m-2018-01-22.zip") == 2
    assert not (folder(data_dir) / "ETHBTC-1m-2018-01-22.zip").exists() and leftovers(folder(data_dir)) == []


def test_a_kept_file_changed_on_disk_is_fetched_again(data_dir, archive):
    assert cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-21").returncode == 0
    kept = folder(data_dir) / "ETHBTC-1m-2018-01-21.zip"
    kept.write_bytes(kept.read_bytes()[:-10])
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-21")
    assert result.returncode == 0 and "1 archive file fetched" in result.stdout
    assert kept.read_bytes() == archive.files["/data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2018-01-21.zip"]


def test_a_404_between_files_found_is_an_error_naming_the_file(data_dir, archive):
    archive.missing.add("ETHBTC-1m-2018-01-23.zip")
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-25")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {archive.url}/data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2018-01-23.zip: 404 Not Found, though "
        "the archive has files before and after it; nothing invented in its place"]
    assert leftovers(folder(data_dir)) == []


def test_a_date_before_the_market_existed_names_from_and_the_first_file(data_dir, archive):
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-15", "--to", "2018-01-22")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: --from 2018-01-15: Binance's spot archive has no file for ETHBTC before ETHBTC-1m-2018-01-20.zip "
        f"({archive.url}/data/spot/daily/klines/ETHBTC/1m/ETHBTC-1m-2018-01-15.zip: 404 Not Found), so the market "
        "did not exist yet: start on 2018-01-20 or later"]


@pytest.mark.parametrize(("args", "message"), [
    (["ETHBTC", "--from", "2018-01-25", "--to", "2018-01-21"], "Error: --from 2018-01-25 is after --to 2018-01-21"),
    (["ETHBTC", "--from", "2018-02-30"], "Error: --from '2018-02-30' is not a date: write YYYY-MM-DD, e.g. 2024-01-31"),
    (["ETHBTC", "--from", "20180101"], "Error: --from '20180101' is not a date: write YYYY-MM-DD, e.g. 2024-01-31"),
    (["ETHBTC", "--from", "2018-01-21", "--to", "2999-01-01"], "Error: --to 2999-01-01 is after today ("),
    (["BTC/USDT", "--from", "2018-01-21"], "Error: unknown symbol 'BTC/USDT': a Binance symbol is 2 to 30 letters"),
])
def test_bad_arguments_are_one_line_errors_before_any_request(data_dir, archive, args, message):
    result = cli(data_dir, archive, *args)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message)
    assert archive.requests == [] and not (data_dir / "history").exists()


def test_a_full_disk_is_named_and_leaves_no_partial_file(data_dir, archive):
    monthly = archive.files["/data/spot/monthly/klines/ETHBTC/1m/ETHBTC-1m-2018-01.zip"]

    def small_disk():  # writes beyond this size fail (EFBIG), as on a full disk (ENOSPC): the same OSError path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(monthly) // 2, len(monthly) // 2))

    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-01", "--to", "2018-01-31", preexec_fn=small_disk)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {folder(data_dir) / 'ETHBTC-1m-2018-01.zip'}: cannot write: File too large"]
    assert sorted(p.name for p in folder(data_dir).iterdir()) == []


# -- the archive client ---------------------------------------------------------------------------------

def test_slow_answers_cut_answers_and_5xx_are_tried_again(tmp_path, archive):
    archive.slow["ETHBTC-1m-2018-01-21.zip"] = [2.0, 1]
    archive.cut_short["ETHBTC-1m-2018-01-22.zip"] = 1
    archive.failing["ETHBTC-1m-2018-01-23.zip.CHECKSUM"] = [500, 2]
    waits = []
    client = download.Archive(archive.url, "spot", timeout_s=(1.0, 0.5), sleep=waits.append)
    report = download.download("ETHBTC", "spot", dt.date(2018, 1, 21), dt.date(2018, 1, 23), folder=tmp_path,
                               archive=client, api=None, now_ms=NOW_MS)
    assert report == download.Report(3, 0, [])
    assert [archive.count(f"ETHBTC-1m-2018-01-{d}.zip") for d in (21, 22, 23)] == [2, 2, 1]
    assert archive.count("ETHBTC-1m-2018-01-23.zip.CHECKSUM") == 3
    assert len(waits) == 4 and all(0.25 <= w <= 1.0 for w in waits)  # backoff 0.5 s then 1 s, jittered
    candles = history.load_history(tmp_path, "ETHBTC", dt.date(2018, 1, 21), dt.date(2018, 1, 23))
    assert as_rows(candles) == reference(JAN[21], JAN[24])


def test_futures_files_with_a_header_and_spot_files_in_microseconds_read_like_the_csv(tmp_path):
    server = ArchiveStandIn().start()
    try:
        server.publish("futures", "ETHBTC", ROWS)
        server.publish("spot", "ETHBTC", ROWS, micros=True)
        for market in ("futures", "spot"):
            download.download("ETHBTC", market, dt.date(2018, 1, 1), dt.date(2018, 1, 31),
                              folder=tmp_path / market, archive=quick_archive(server, market), api=None, now_ms=NOW_MS)
            with zipfile.ZipFile(tmp_path / market / "ETHBTC-1m-2018-01.zip") as kept:
                first = kept.read("ETHBTC-1m-2018-01.csv").decode().splitlines()[0]
            assert first.startswith("open_time,") if market == "futures" else first.startswith("1516423980000000,")
            candles = history.load_history(tmp_path / market, "ETHBTC", dt.date(2018, 1, 1), dt.date(2018, 1, 31))
            assert as_rows(candles) == reference(JAN[1], JAN[31] + DAY)
        assert server.count("ETHBTC-1m-2018-01.zip") == 2 and "/data/futures/um/monthly/klines/ETHBTC/1m/" \
            "ETHBTC-1m-2018-01.zip" in server.requests
    finally:
        server.close()


def test_a_month_ended_lately_without_its_file_is_asked_for_day_by_day(tmp_path):
    server = ArchiveStandIn().start()
    try:
        server.publish("spot", "ETHBTC", ROWS, until=dt.date(2018, 1, 29))  # days to the 29th, no month yet
        with pytest.raises(history.HistoryError, match="before ETHBTC-1m-2018-01-20.zip"):
            download.download("ETHBTC", "spot", dt.date(2018, 1, 1), dt.date(2018, 1, 31), folder=tmp_path,
                              archive=quick_archive(server), api=None, now_ms=JAN[31] + 3 * DAY)
        assert server.count("ETHBTC-1m-2018-01.zip.CHECKSUM") == 1
        assert server.count("ETHBTC-1m-2018-01-20.zip") == 1  # its days were asked for
        server.requests.clear()
        with pytest.raises(download.DownloadError, match=r"ETHBTC-1m-2018-01.zip: 404 Not Found, and no Binance"):
            download.download("ETHBTC", "spot", dt.date(2018, 1, 1), dt.date(2018, 1, 31), folder=tmp_path,
                              archive=quick_archive(server), api=None, now_ms=JAN[31] + 40 * DAY)
        assert not [p for p in server.requests if "/daily/" in p]  # a month long over is not asked day by day
    finally:
        server.close()


def test_a_kept_zip_that_does_not_read_names_the_zip_and_the_line(tmp_path):
    path = tmp_path / "ETHBTC-1m-2018-01-21.zip"
    with zipfile.ZipFile(path, "w") as out:
        out.writestr("ETHBTC-1m-2018-01-21.csv", "\n".join(",".join(row) for row in ROWS[:5])
                     + "\n1516600000000,1,2,x,1,1,1516600059999,0,0,0,0,0\n")
    with pytest.raises(FeedError) as caught:
        history.read_zip(path)
    assert caught.value.format() == f"{path}:6: error: low 'x' is not a number"
    path.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(FeedError, match="not a readable zip file"):
        history.read_zip(path)


# -- days newer than the archive: the klines endpoint ---------------------------------------------------

@pytest.fixture
def exchange(tmp_path):
    """The exchange stand-in serving ETHBTC's klines, its market clock held at 2018-01-29 05:00:30."""
    klines = tmp_path / "ETHBTC-1m.csv"
    klines.write_text("".join(",".join(row) + "\n" for row in ROWS))
    trades = SHARED_DATA / "binance" / "XRPETH-aggTrades-2019-10-11.csv"
    server = StandIn(trades, klines, api_key=API_KEY, api_secret=API_SECRET, start_ms=JAN[29] + 5 * 3_600_000 + 30_000,
                     speed=1e-6, symbol="ETHBTC", base="ETH", quote="BTC").start()
    yield server
    server.close()


def api_of(exchange) -> download.KlinesApi:
    return download.KlinesApi(BinanceRest(Settings(binance_api_url=exchange.api_url, binance_timeout_s=2), SPOT,
                                          sleep=lambda s: None))


def test_days_newer_than_the_archive_come_from_the_klines_endpoint_final_minutes_only(tmp_path, exchange):
    server = ArchiveStandIn().start()
    try:
        server.publish("spot", "ETHBTC", ROWS, until=dt.date(2018, 1, 27))
        now_ms = exchange.market_now_ms()
        report = download.download("ETHBTC", "spot", dt.date(2018, 1, 26), dt.date(2018, 1, 29), folder=tmp_path,
                                   archive=quick_archive(server), api=api_of(exchange), now_ms=now_ms)
        assert report == download.Report(2, 0, [dt.date(2018, 1, 28), dt.date(2018, 1, 29)])
        candles = history.load_history(tmp_path, "ETHBTC", dt.date(2018, 1, 26), dt.date(2018, 1, 29))
        # 05:00 is the minute in progress at the stand-in's clock: left out.
        assert as_rows(candles) == reference(JAN[26], JAN[29] + 5 * 3_600_000)
        assert (tmp_path / "ETHBTC-1m-2018-01-28.api.csv").exists()

        server.publish("spot", "ETHBTC", ROWS, until=dt.date(2018, 1, 28))  # the archive caught up a day
        report = download.download("ETHBTC", "spot", dt.date(2018, 1, 26), dt.date(2018, 1, 29), folder=tmp_path,
                                   archive=quick_archive(server), api=api_of(exchange), now_ms=now_ms)
        assert report == download.Report(1, 2, [dt.date(2018, 1, 29)])
        assert not (tmp_path / "ETHBTC-1m-2018-01-28.api.csv").exists()
        again = history.load_history(tmp_path, "ETHBTC", dt.date(2018, 1, 26), dt.date(2018, 1, 29))
        assert as_rows(again) == as_rows(candles)
    finally:
        server.close()


def test_an_unknown_symbol_is_named_by_the_api(data_dir, archive, exchange):
    result = cli(data_dir, archive, "NOSUCHCOIN", "--from", "2018-01-21", "--to", "2018-01-23",
                 api_url=exchange.api_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: unknown symbol NOSUCHCOIN: Binance's spot API answers 'Invalid symbol' ({exchange.api_url})"]
    assert not list(folder(data_dir, symbol="NOSUCHCOIN").iterdir())


def test_a_market_younger_than_from_is_named_when_the_archive_has_nothing(tmp_path, exchange):
    server = ArchiveStandIn().start()  # publishes nothing: the market is newer than the archive
    try:
        with pytest.raises(history.HistoryError) as caught:
            download.download("ETHBTC", "spot", dt.date(2018, 1, 19), dt.date(2018, 1, 21), folder=tmp_path,
                              archive=quick_archive(server), api=api_of(exchange), now_ms=exchange.market_now_ms())
        assert str(caught.value) == ("--from 2018-01-19: ETHBTC has no file in Binance's spot archive and the API "
                                     "has its first minute is 2018-01-20 04:53 UTC: the market did not exist yet")
    finally:
        server.close()


# -- reading ---------------------------------------------------------------------------------------------

def test_the_summary_gaps_are_the_longest_runs_of_missing_minutes():
    minute = 60_000
    times = np.array([2, 3, 7, 8, 9, 20], dtype=np.int64) * minute
    held = history.coverage(times, 0, 25 * minute)
    # Missing by hand: 0-1 (2), 4-6 (3), 10-19 (10), 21-24 (4).
    assert held.minutes == 6 and held.expected == 25
    assert held.gaps == [(10 * minute, 20 * minute), (21 * minute, 25 * minute), (4 * minute, 7 * minute)]
    assert history.coverage(np.arange(5, dtype=np.int64) * minute, 0, 5 * minute).gaps == []


def test_plan_takes_whole_months_as_monthly_files_and_the_rest_as_days():
    names = [p.name for p in history.plan("BTCUSDT", dt.date(2024, 1, 30), dt.date(2024, 4, 2))]
    assert names == ["BTCUSDT-1m-2024-01-30.zip", "BTCUSDT-1m-2024-01-31.zip", "BTCUSDT-1m-2024-02.zip",
                     "BTCUSDT-1m-2024-03.zip", "BTCUSDT-1m-2024-04-01.zip", "BTCUSDT-1m-2024-04-02.zip"]
    assert [p.name for p in history.plan("BTCUSDT", dt.date(2024, 2, 1), dt.date(2024, 2, 29))] == \
        ["BTCUSDT-1m-2024-02.zip"]


# -- backtest --symbol ------------------------------------------------------------------------------------

SWEEP = "IF MA{fast: 3..6} > MA{slow: 8..20..4} THEN BUY\nIF MA{fast} < MA{slow} THEN SELL\n"


def run_backtest(data_dir, *args):
    env = {**os.environ, "OMNIWISE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "backtest", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=data_dir, timeout=300)


@pytest.fixture
def downloaded(data_dir, archive):
    """ETHBTC 2018-01-21 to 2018-01-29 downloaded into the data folder, and one CSV of the same minutes."""
    download.download("ETHBTC", "spot", dt.date(2018, 1, 21), dt.date(2018, 1, 29), folder=folder(data_dir),
                      archive=quick_archive(archive), api=None, now_ms=NOW_MS)
    lines = ETHBTC.read_text().splitlines(keepends=True)
    same = data_dir / "same-minutes.csv"
    same.write_text(lines[0] + "".join(line for line in lines[1:] if JAN[21] <= int(line.split(",")[0]) < JAN[30]))
    return same


@pytest.mark.parametrize("options", [[], ["--trades"], ["--split", "0.7"], ["--walk-forward", "3"]])
def test_backtest_by_symbol_is_the_backtest_of_one_csv_of_those_minutes(data_dir, downloaded, options):
    (data_dir / "sweep.txt").write_text(SWEEP)  # 16 combinations; options other than none run the sweep
    strategy = data_dir / ("sweep.txt" if options else "strategy.txt")
    by_symbol = run_backtest(data_dir, "--symbol", "ethbtc", "--from", "2018-01-21", "--to", "2018-01-29",
                             "--strategy", strategy, "--json", *options)
    assert by_symbol.returncode == 0, by_symbol.stderr
    by_csv = run_backtest(data_dir, "--candles", downloaded, "--strategy", strategy, "--json", *options)
    assert by_csv.returncode == 0, by_csv.stderr
    assert by_symbol.stdout == by_csv.stdout
    if not options:
        assert json.loads(by_symbol.stdout)["candles"] == len(reference(JAN[21], JAN[30])) == 12_959


def test_backtest_by_symbol_cuts_the_files_to_the_days_asked_for(data_dir, archive, downloaded):
    download.download("ETHBTC", "spot", dt.date(2018, 1, 1), dt.date(2018, 1, 31), folder=folder(data_dir),
                      archive=quick_archive(archive), api=None, now_ms=NOW_MS)
    assert (folder(data_dir) / "ETHBTC-1m-2018-01.zip").exists()  # the month's file is read now, and cut
    table = run_backtest(data_dir, "--symbol", "ETHBTC", "--from", "2018-01-22", "--to", "2018-01-23",
                         "--strategy", data_dir / "strategy.txt")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].endswith("on ETHBTC spot from 2018-01-22 to 2018-01-23")
    assert "  candles       2,880 (2018-01-22 00:00 to 2018-01-23 23:59 UTC)" in table.stdout


def test_a_second_read_of_a_history_comes_from_the_cache(data_dir, downloaded, monkeypatch):
    parsed = []
    real = history.read_zip
    monkeypatch.setattr(history, "read_zip", lambda path: parsed.append(path.name) or real(path))
    first = history.history_candles(data_dir, "ETHBTC", "spot", "2018-01-21", "2018-01-29", NOW_MS)
    assert len(parsed) == 9
    again = history.history_candles(data_dir, "ETHBTC", "spot", "2018-01-21", "2018-01-29", NOW_MS)
    assert len(parsed) == 9 and as_rows(again) == as_rows(first) == reference(JAN[21], JAN[30])
    (folder(data_dir) / "ETHBTC-1m-2018-01-25.zip").touch()  # a file changed: read again, that one only
    history.history_candles(data_dir, "ETHBTC", "spot", "2018-01-21", "2018-01-29", NOW_MS)
    assert parsed[9:] == ["ETHBTC-1m-2018-01-25.zip"]


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2018-01-20", "--to", "2018-01-23"],
     "Error: {folder}: 1 day of 2018-01-20 to 2018-01-23 not downloaded (2018-01-20): run `python omniwise.py "
     "download ETHBTC --from 2018-01-20 --to 2018-01-20`"),
    (["--from", "2018-01-23", "--to", "2018-01-22"], "Error: --from 2018-01-23 is after --to 2018-01-22"),
    (["--from", "2018-01-21", "--to", "2018-01-22", "--market", "futures"],
     "Error: {futures}: 2 days of 2018-01-21 to 2018-01-22 not downloaded (2018-01-21 to 2018-01-22): run "
     "`python omniwise.py download ETHBTC --from 2018-01-21 --to 2018-01-22 --market futures`"),
])
def test_backtest_by_symbol_refuses_a_history_not_downloaded_in_one_line(data_dir, downloaded, args, message):
    result = run_backtest(data_dir, "--symbol", "ETHBTC", *args, "--strategy", data_dir / "strategy.txt")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        message.format(folder=folder(data_dir), futures=folder(data_dir, "futures"))]


def test_backtest_takes_candles_or_a_symbol_with_its_dates(data_dir, downloaded):
    for args in (["--symbol", "ETHBTC"], ["--candles", downloaded, "--symbol", "ETHBTC", "--from", "2018-01-21"], []):
        result = run_backtest(data_dir, *args, "--strategy", data_dir / "strategy.txt")
        assert result.returncode == 2
        assert "give --candles CSV, or --symbol SYMBOL --from YYYY-MM-DD [--to YYYY-MM-DD]" in result.stderr


# -- the editor's preview over a downloaded history ------------------------------------------------------

SEED = "IF MA4 > MA9 THEN BUY\nIF MA4 < MA9 THEN SELL\n"


def validate(operator, **form):
    answer = operator.post("/admin/algo/validate", data={"strategy": SEED, "csrf_token": operator.csrf_token, **form})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_the_editor_offers_the_downloaded_histories(operator, data_dir, downloaded):
    page = operator.get("/admin/algo").get_data(as_text=True)
    assert '<option value="spot/ETHBTC">ETHBTC spot, downloaded 2018-01-21 to 2018-01-29</option>' in page
    assert '<option value="">the stored candles</option>' in page  # the default, selected when nothing else is


def test_the_preview_runs_over_the_picked_history_and_period(operator, data_dir, downloaded):
    from core.backtest import run_backtest
    from core.dsl import compile_strategy

    fragment = validate(operator, preview_source="spot/ETHBTC", preview_from="2018-01-22", preview_to="2018-01-23")
    rows = np.array(reference(JAN[22], JAN[24]))
    candles = {"open_time_ms": rows[:, 0].astype(np.int64), **{c: np.ascontiguousarray(rows[:, i + 1])
               for i, c in enumerate(("open", "high", "low", "close", "volume"))}}
    expected = run_backtest(candles, compile_strategy(SEED), fee_rate=0.001)
    assert "Over 2,880 candles of ETHBTC spot from 2018-01-22 to 2018-01-23 this text would have made" in fragment
    assert f"<strong>{len(expected.trades)} trades</strong>" in fragment
    assert f"{expected.return_pct:+.2f} %</strong>" in fragment

    whole = validate(operator, preview_source="spot/ETHBTC")  # no dates: all the kept files hold
    assert "Over 12,959 candles of ETHBTC spot from 2018-01-21 to 2018-01-29" in whole


def test_a_preview_over_days_not_downloaded_says_why(operator, data_dir, downloaded):
    fragment = validate(operator, preview_source="spot/ETHBTC", preview_from="2018-01-20", preview_to="2018-01-22")
    assert 'id="preview"' not in fragment
    assert ('<p class="bad" id="preview-error">No preview over spot/ETHBTC: '
            f"{folder(data_dir)}: 1 day of 2018-01-20 to 2018-01-22 not downloaded") in fragment
    fragment = validate(operator, preview_source="futures/ETHBTC")
    assert "nothing of ETHBTC futures is downloaded" in fragment
    assert "Valid: 2 rules" in fragment  # the text itself is still checked


def test_a_terminal_gets_a_progress_bar_and_a_pipe_does_not(data_dir, archive):
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "OMNIWISE_DATA_DIR": str(data_dir), "OMNIWISE_BINANCE_ARCHIVE_URL": archive.url}
    result = subprocess.run([sys.executable, str(ROOT / "omniwise.py"), "download", "ETHBTC", "--from", "2018-01-21",
                             "--to", "2018-01-23"], stdout=subprocess.PIPE, stderr=follower, env=env, cwd=data_dir,
                            timeout=120)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal's other end is closed: all of it is read
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert result.returncode == 0
    assert b"3/3" in drawn and b"file" in drawn  # tqdm's bar: files done of the files planned
    piped = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-23")
    assert piped.returncode == 0 and piped.stderr == ""


def test_a_data_folder_that_cannot_be_written_is_one_line(data_dir, archive):
    (data_dir / "history").write_text("a file where the folder should be")
    result = cli(data_dir, archive, "ETHBTC", "--from", "2018-01-21", "--to", "2018-01-21")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {folder(data_dir)}: cannot create the folder: Not a directory"]


# -- open-ended input -------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st  # noqa: E402

_ROW_PARTS = st.sampled_from(["1516600000000", "1516600060000", "1516600000000000", "0.1", "-1", "nan", "inf", "1e400",
                              "", " ", "x", "\x00", "\u00e9", "open_time", "true", "99999999999999999999"])
_CSV_BYTES = st.one_of(
    st.binary(max_size=400),
    st.lists(st.lists(_ROW_PARTS, min_size=0, max_size=14).map(",".join), max_size=12)
    .map(lambda lines: "\n".join(lines).encode()),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_CSV_BYTES)
def test_any_bytes_inside_a_kept_zip_read_as_klines_or_name_the_zip(tmp_path, content):
    path = tmp_path / "ETHBTC-1m-2018-01-21.zip"
    with zipfile.ZipFile(path, "w") as out:
        out.writestr("ETHBTC-1m-2018-01-21.csv", content)
    try:
        candles = history.read_zip(path)
    except FeedError as exc:
        assert exc.format().startswith(f"{path}:") and "\n" not in exc.message
        return
    times = candles["open_time_ms"]
    assert np.all(np.diff(times) > 0) and np.all(candles["low"] > 0)
    assert np.all(candles["low"] <= np.minimum(candles["open"], candles["close"]))


@given(text=st.text(max_size=40))
def test_any_date_or_symbol_text_is_parsed_or_refused_in_one_line(text):
    for parse in (lambda: history.parse_day(text, "--from"), lambda: history.parse_symbol(text)):
        try:
            value = parse()
        except history.HistoryError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc)  # the text is quoted (repr): one line
            assert str(exc).startswith(("--from ", "unknown symbol "))
            continue
        assert isinstance(value, (dt.date, str))
        if isinstance(value, str):
            assert history._SYMBOL.fullmatch(value) and value == text.strip().upper()
        else:
            assert value.isoformat() == text

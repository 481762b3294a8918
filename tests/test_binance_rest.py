"""core/binance/rest.py: the real python-binance client against the exchange stand-in, faults included."""

from __future__ import annotations

import pytest
from binance.client import Client
from binance.exceptions import BinanceAPIException

from core.binance.rest import FUTURES, SPOT, BinanceRest, ExchangeRejected, ExchangeUnreachable
from core.retry import backoff_s
from core.config import ConfigError, Settings, load_settings
from tests.exchange.standin import API_KEY, API_SECRET, start_standin


class FakeTime:
    """An injected clock whose sleep moves it on, recording each sleep."""

    def __init__(self, now_s: float):
        self.now_s = now_s
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now_s += seconds


@pytest.fixture(scope="module")
def standin():
    exchange = start_standin()
    yield exchange
    exchange.close()


@pytest.fixture(autouse=True)
def no_faults_left(standin):
    yield
    standin.faults.clear()
    standin.extra_weight = 0


def settings_for(standin, **overrides) -> Settings:
    values = dict(symbol="XRPETH", broker="binance-spot", binance_api_key=API_KEY, binance_api_secret=API_SECRET,
                  binance_api_url=standin.api_url, binance_futures_url=standin.futures_url,
                  binance_stream_url=standin.stream_url, binance_futures_stream_url=standin.futures_stream_url,
                  binance_timeout_s=1.0, binance_recv_window_ms=1000)
    return Settings(**{**values, **overrides})


def rest_for(standin, fake: FakeTime | None = None, market: str = SPOT, **overrides) -> BinanceRest:
    fake = fake or FakeTime(1_700_000_000.0)
    return BinanceRest(settings_for(standin, **overrides), market, sleep=fake.sleep, random=lambda: 0.5,
                       clock=fake.time)


def client_with(standin, key: str | None, secret: str | None) -> Client:
    client = Client(key, secret, ping=False)
    client.API_URL = standin.api_url
    return client


@pytest.mark.parametrize("key, secret, code", [
    (API_KEY, API_SECRET, None),
    (API_KEY, API_SECRET[:-1] + "x", -1022),  # a wrong secret: the signature does not match
    ("someone-elses-key", API_SECRET, -2015),
    (None, API_SECRET, -2014),
])
def test_standin_checks_key_and_signature_of_signed_requests(standin, key, secret, code):
    client = client_with(standin, key, secret)
    if code is None:
        assert client.get_account()["balances"]
        return
    with pytest.raises(BinanceAPIException) as refused:
        client.get_account()
    assert refused.value.code == code


def test_standin_refuses_a_signature_that_covers_other_parameters(standin):
    import hashlib
    import hmac
    import time

    import requests

    query = f"timestamp={int(time.time() * 1000)}&recvWindow=5000"
    signature = hmac.new(API_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
    url = f"{standin.api_url}/v3/account"
    good = requests.get(f"{url}?{query}&signature={signature}", headers={"X-MBX-APIKEY": API_KEY}, timeout=5)
    tampered = requests.get(f"{url}?{query.replace('5000', '6000')}&signature={signature}",
                            headers={"X-MBX-APIKEY": API_KEY}, timeout=5)
    assert good.status_code == 200
    assert (tampered.status_code, tampered.json()["code"]) == (400, -1022)


def test_a_timestamp_outside_the_recv_window_resyncs_the_clock_and_succeeds(standin):
    rest = rest_for(standin)
    standin.skew_clock(30_000)
    try:
        assert rest.call("get_account")["balances"]
        assert rest.clock_syncs == 1
        assert 29_000 < rest.client.timestamp_offset < 31_000
        assert ("GET", "/api/v3/account", 400) in standin.requests
    finally:
        standin.skew_clock(-30_000)


def test_429_is_honoured_with_retry_after_then_the_request_goes_through(standin):
    fake = FakeTime(1_700_000_000.0)
    rest = rest_for(standin, fake)
    standin.fail("429", path="/api/v3/account", method="GET", retry_after_s=7)
    assert rest.call("get_account")["balances"]
    assert fake.sleeps == [7.0]


def test_418_ban_longer_than_we_wait_is_refused_at_once_and_nothing_is_sent_during_it(standin):
    fake = FakeTime(1_700_000_000.0)
    rest = rest_for(standin, fake)
    standin.fail("418", path="/api/v3/account", method="GET", retry_after_s=3600)
    with pytest.raises(ExchangeRejected) as refused:
        rest.call("get_account")
    assert refused.value.status == 418 and "IP banned for 3600 s" in str(refused.value)
    sent = len(standin.requests)
    with pytest.raises(ExchangeRejected):
        rest.call("get_account")  # still banned: sending now would lengthen the ban
    assert len(standin.requests) == sent and fake.sleeps == []
    fake.now_s += 3600
    assert rest.call("get_account")["balances"]


@pytest.mark.parametrize("fault", ["500", "lost", "timeout"])
def test_failed_reads_are_retried_with_jittered_backoff(standin, fault):
    fake = FakeTime(1_700_000_000.0)
    rest = rest_for(standin, fake)
    standin.fail(fault, path="/api/v3/klines", method="GET", hold_s=2.5 if fault == "timeout" else 0, times=2)
    # (held 2.5 s against the client's 1 s: a client starved of CPU under load would find a short hold's answer waiting)
    rows = rest.call("get_klines", symbol="XRPETH", interval="1m", limit=5)
    assert len(rows) == 5
    assert fake.sleeps == [backoff_s(1, lambda: 0.5), backoff_s(2, lambda: 0.5)] == [0.375, 0.75]


def test_backoff_doubles_up_to_its_cap_with_jitter_between_half_and_all():
    assert [backoff_s(n, lambda: 0.0) for n in (1, 2, 3, 8, 20)] == [0.25, 0.5, 1.0, 15.0, 15.0]
    assert [backoff_s(n, lambda: 1.0) for n in (1, 2, 3, 8, 20)] == [0.5, 1.0, 2.0, 30.0, 30.0]


def test_reads_give_up_after_the_last_try(standin):
    fake = FakeTime(1_700_000_000.0)
    rest = rest_for(standin, fake)
    standin.fail("500", path="/api/v3/account", method="GET", times=5)
    with pytest.raises(ExchangeUnreachable, match="5 tries"):
        rest.call("get_account")
    assert len(fake.sleeps) == 4


@pytest.mark.parametrize("fault", ["500", "lost"])
def test_an_order_with_an_unknown_outcome_is_not_sent_again(standin, fault):
    rest = rest_for(standin)
    standin.fail(fault)
    before = [r for r in standin.requests if r[:2] == ("POST", "/api/v3/order")]
    with pytest.raises(ExchangeUnreachable, match="outcome is unknown"):
        rest.call("create_order", is_order=True, symbol="XRPETH", side="BUY", type="MARKET", quoteOrderQty="0.05",
                  newClientOrderId=f"test-unknown-{fault}")
    after = [r for r in standin.requests if r[:2] == ("POST", "/api/v3/order")]
    assert len(after) == len(before) + 1
    assert len(standin.orders_for(f"test-unknown-{fault}")) == (1 if fault == "lost" else 0)


def test_request_weight_is_read_and_paces_at_the_minutes_limit(standin):
    fake = FakeTime(1_699_999_990.0)  # 10 s into a minute
    rest = rest_for(standin, fake)
    rest.set_weight_limit(rest.call("get_exchange_info"))
    assert rest.weight_limit_1m == 6000 and rest.used_weight_1m > 0
    standin.extra_weight = 5400  # 90% of the limit is used
    rest.call("ping")
    assert rest.used_weight_1m >= 5400 and fake.sleeps == []
    rest.call("ping")
    assert rest.client.timestamp_offset == 0
    assert fake.sleeps == [50.0]  # until the next minute


def test_futures_endpoints_answer_through_the_futures_url(standin):
    rest = rest_for(standin, market=FUTURES, broker="binance-futures")
    info = rest.call("futures_exchange_info")
    rest.set_weight_limit(info)
    assert rest.weight_limit_1m == 2400
    assert rest.call("futures_klines", symbol="XRPETH", interval="1m", limit=2)[0][0] % 60_000 == 0
    assert rest.call("futures_account_balance")[0]["asset"] == "ETH"


def test_error_messages_never_carry_keys_or_signatures(standin):
    rest = rest_for(standin)
    standin.fail("lost", path="/api/v3/account", method="GET", times=5)
    with pytest.raises(ExchangeUnreachable) as failed:
        rest.call("get_account")
    text = str(failed.value)
    assert API_KEY not in text and API_SECRET not in text and "signature=" not in text
    assert API_KEY not in repr(settings_for(standin)) and API_SECRET not in repr(settings_for(standin))


def binance_env(**values) -> dict[str, str]:
    return {"OMNIWISE_FEED": "binance", "OMNIWISE_BROKER": "binance-futures", "OMNIWISE_SYMBOL": "XRPETH",
            **{f"OMNIWISE_{k.upper()}": v for k, v in values.items()}}


def test_a_binance_broker_with_the_replay_feed_is_refused_at_start():
    with pytest.raises(ConfigError, match="needs OMNIWISE_FEED=binance"):
        load_settings(binance_env(feed="replay"), env_file=None)
    assert load_settings(binance_env(broker="paper", feed="replay"), env_file=None).broker == "paper"


@pytest.mark.parametrize("name, value, accepted", [
    ("binance_recv_window", "60000", True), ("binance_recv_window", "60001", False),
    ("binance_recv_window", "5000.5", False), ("futures_leverage", "1", True), ("futures_leverage", "125", True),
    ("futures_leverage", "0", False), ("futures_leverage", "126", False), ("futures_leverage", "2.5", False),
    ("futures_margin", "isolated", True), ("futures_margin", "CROSS", True), ("futures_margin", "portfolio", False),
])
def test_binance_settings_are_checked_at_start(name, value, accepted):
    environ = binance_env(**{name: value})
    if accepted:
        load_settings(environ, env_file=None)
    else:
        with pytest.raises(ConfigError, match=f"OMNIWISE_{name.upper()}"):
            load_settings(environ, env_file=None)


def test_futures_settings_default_to_cross_margin_at_1x():
    settings = load_settings(binance_env(), env_file=None)
    assert (settings.futures_margin, settings.futures_leverage) == ("cross", 1)

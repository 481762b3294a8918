"""Binance's REST API through python-binance, with the fault handling Binance asks of its clients.

python-binance signs and sends requests but neither retries nor paces them. `BinanceRest.call` adds:
the request weight read from X-MBX-USED-WEIGHT-1M (and a pause until the next minute near the limit),
429 and 418 honoured with Retry-After, error -1021 answered by measuring the clock offset again, and
network errors and 5xx retried with jittered backoff, except for an order: after a timeout, a lost
answer or a 5xx its outcome is unknown (Binance: "execution status UNKNOWN and could have been a
success"), and it is never sent again. Only a request that provably never left (the connection was
refused or could not be opened) is sent again.

The API key and secret live only inside python-binance's client: never logged, never in a message.
"""

from __future__ import annotations

import dataclasses
import logging
import random as _random
import re
import time
from collections.abc import Callable

import requests
import urllib3.exceptions
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException
from binance.ws.streams import BinanceSocketManager

from core.brokers import BrokerError
from core.retry import backoff_s

log = logging.getLogger(__name__)

SPOT, FUTURES = "spot", "futures"
TIMESTAMP_OUTSIDE_RECV_WINDOW = -1021
ORDER_DOES_NOT_EXIST = -2013
EXECUTION_UNKNOWN = (-1006, -1007)  # Binance's own words: "execution status unknown"
WEIGHT_HEADROOM = 0.9  # pause once this share of the minute's request weight is used
DEFAULT_WEIGHT_LIMIT_1M = {SPOT: 6000, FUTURES: 2400}  # until exchangeInfo says otherwise


class ExchangeRejected(BrokerError):
    """Binance answered and refused the request (an error code, or a rate limit we will not wait out):
    it was not carried out. Caller: alert; the same request would be refused again."""

    def __init__(self, status: int, code: int | None, message: str):
        self.status = status
        self.code = code
        super().__init__(f"Binance refused the request (HTTP {status}, code {code}): {message}")


class ExchangeUnreachable(BrokerError):
    """No usable answer after the retries (network errors, timeouts, 5xx). Caller: a read can be tried
    again later; for an order with `may_have_arrived` the outcome is unknown: never send it again, find
    out what became of it (by its client id, the trade list, the account)."""

    def __init__(self, message: str, may_have_arrived: bool = True):
        self.may_have_arrived = may_have_arrived
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """Base URLs of one market: REST (python-binance's API_URL or FUTURES_URL) and the streams."""

    rest_url: str
    stream_url: str
    ws_api_url: str = ""  # spot: the WebSocket API, where python-binance subscribes the user data stream


# Binance's hosts; OMNIWISE_BINANCE_*_URL replace them (the tests point them at a local stand-in).
_HOSTS = {
    (SPOT, True): Endpoints(Client.API_TESTNET_URL, BinanceSocketManager.STREAM_TESTNET_URL,
                            Client.WS_API_TESTNET_URL),
    (SPOT, False): Endpoints("https://api.binance.com/api", "wss://stream.binance.com:9443/",
                             "wss://ws-api.binance.com:443/ws-api/v3"),
    (FUTURES, True): Endpoints(Client.FUTURES_TESTNET_URL, BinanceSocketManager.FSTREAM_TESTNET_URL),
    (FUTURES, False): Endpoints("https://fapi.binance.com/fapi", "wss://fstream.binance.com/"),
}


def market_of(settings) -> str:
    """The market the worker trades and watches: USDⓈ-M futures for the futures broker, else spot."""
    return FUTURES if settings.broker == "binance-futures" else SPOT


def endpoints(settings, market: str) -> Endpoints:
    """The URLs for `market`: testnet or live by OMNIWISE_TESTNET, each replaceable by a setting."""
    default = _HOSTS[(market, settings.testnet)]
    if market == SPOT:  # a replaced stream host serves the WebSocket API too, at /ws-api/v3
        stream_url = settings.binance_stream_url or default.stream_url
        ws_api_url = f"{stream_url.rstrip('/')}/ws-api/v3" if settings.binance_stream_url else default.ws_api_url
        return Endpoints(settings.binance_api_url or default.rest_url, stream_url, ws_api_url)
    return Endpoints(settings.binance_futures_url or default.rest_url,
                     settings.binance_futures_stream_url or default.stream_url)


class BinanceRest:
    """python-binance's Client for one market, with weight tracking, rate limits, clock sync and retries."""

    def __init__(self, settings, market: str = SPOT, sleep: Callable[[float], None] = time.sleep,
                 random: Callable[[], float] = _random.random, clock: Callable[[], float] = time.time,
                 max_attempts: int = 5, max_wait_s: float = 10.0):
        self.market = market
        self.sleep = sleep
        self.random = random
        self.clock = clock
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s  # longer Retry-After waits are refused at once, not slept
        self.endpoints = endpoints(settings, market)
        # ping=False: no network call here; the worker must start even while Binance is unreachable.
        self.client = Client(settings.binance_api_key, settings.binance_api_secret, ping=False)
        if market == SPOT:
            self.client.API_URL = self.endpoints.rest_url
        else:
            self.client.FUTURES_URL = self.endpoints.rest_url
        self.client.REQUEST_TIMEOUT = settings.binance_timeout_s
        self.client.REQUEST_RECVWINDOW = settings.binance_recv_window_ms
        self.used_weight_1m = 0
        self.weight_limit_1m = DEFAULT_WEIGHT_LIMIT_1M[market]
        self._weight_minute = 0  # the exchange minute used_weight_1m was read in
        self.blocked_until_ms = 0  # local time until which Binance asked us to send nothing (429/418)
        self.clock_syncs = 0

    @property
    def recv_window_ms(self) -> int:
        """How long after its timestamp Binance still executes a signed request."""
        return self.client.REQUEST_RECVWINDOW

    def now_ms(self) -> int:
        """The exchange's time as estimated here: the local clock plus the measured offset."""
        return int(self.clock() * 1000) + self.client.timestamp_offset

    def call(self, method: str, *, is_order: bool = False, **params):
        """Call python-binance's `method` with `params`; retries what is safe to retry.

        Raises ExchangeRejected when Binance refused, ExchangeUnreachable when no answer came; with
        `is_order`, a failure after which the order may exist (a timeout, a lost answer, a 5xx) is not
        retried but raised at once; only one that provably never left (no connection) is retried.
        """
        synced, error, may_have_arrived = False, "no answer", False
        for attempt in range(1, self.max_attempts + 1):
            self._wait_for_limits()
            try:
                result = getattr(self.client, method)(**params)
            except BinanceAPIException as exc:
                self._read_weight(exc.response)
                status = exc.status_code
                if status in (429, 418):
                    self._honour_retry_after(exc, method)
                    error = f"HTTP {status} from Binance: {exc.message}"
                    continue
                if exc.code == TIMESTAMP_OUTSIDE_RECV_WINDOW and not synced:
                    self.sync_clock()
                    synced, error = True, exc.message
                    continue
                if status >= 500 or status == 408 or exc.code in EXECUTION_UNKNOWN:
                    error = f"HTTP {status} from Binance: {exc.message}"
                else:
                    raise ExchangeRejected(status, exc.code, exc.message) from None
                may_have_arrived = True
            except BinanceRequestException as exc:  # a 2xx whose body is not JSON: the answer is lost
                error, may_have_arrived = f"unreadable answer: {exc.message[:200]}", True
            except requests.RequestException as exc:
                error = _describe(exc)
                may_have_arrived = may_have_arrived or not never_left(exc)
            else:
                self._read_weight(self.client.response)
                return result
            if is_order and may_have_arrived:
                raise ExchangeUnreachable(f"{method}: {error}; the order's outcome is unknown")
            if attempt == self.max_attempts:
                break
            delay = backoff_s(attempt, self.random)
            log.warning("Binance %s failed (%s), try %d of %d in %.1f s", method, error, attempt + 1,
                        self.max_attempts, delay)
            self.sleep(delay)
        raise ExchangeUnreachable(f"{method}: {error} ({self.max_attempts} tries)", may_have_arrived)

    def sync_clock(self) -> int:
        """Measure the offset between Binance's clock and ours, for request timestamps; returns it in ms."""
        method = "get_server_time" if self.market == SPOT else "futures_time"
        # Against time.time(), not the injected clock: python-binance stamps requests with time.time().
        before_ms = int(time.time() * 1000)
        try:
            server_ms = getattr(self.client, method)()["serverTime"]
        except (BinanceAPIException, BinanceRequestException, requests.RequestException) as exc:
            raise ExchangeUnreachable(f"the exchange's time could not be read: {_describe(exc)}") from None
        after_ms = int(time.time() * 1000)
        self.client.timestamp_offset = server_ms - (before_ms + after_ms) // 2
        self.clock_syncs += 1
        log.warning("clock offset to Binance measured again: %d ms", self.client.timestamp_offset)
        return self.client.timestamp_offset

    def set_weight_limit(self, exchange_info: dict) -> None:
        """Take the request weight limit per minute from an exchangeInfo answer."""
        for limit in exchange_info.get("rateLimits", ()):
            if limit.get("rateLimitType") == "REQUEST_WEIGHT" and limit.get("interval") == "MINUTE":
                self.weight_limit_1m = int(limit["limit"]) // int(limit.get("intervalNum", 1))

    def _read_weight(self, response) -> None:
        value = getattr(response, "headers", {}).get("X-MBX-USED-WEIGHT-1M")
        if value is not None:
            self.used_weight_1m = int(value)
            self._weight_minute = self.now_ms() // 60_000

    def _wait_for_limits(self) -> None:
        """Sleep through a Retry-After we accepted, and to the next minute when the weight is nearly used."""
        now_ms = int(self.clock() * 1000)
        if now_ms < self.blocked_until_ms:
            wait_s = (self.blocked_until_ms - now_ms) / 1000
            if wait_s > self.max_wait_s:  # sending during a ban only makes it longer
                raise ExchangeRejected(429, -1003, f"Binance asked for no requests for another {wait_s:.0f} s")
            self.sleep(wait_s)
        minute = self.now_ms() // 60_000
        if minute == self._weight_minute and self.used_weight_1m >= self.weight_limit_1m * WEIGHT_HEADROOM:
            wait_ms = (minute + 1) * 60_000 - self.now_ms()
            log.warning("request weight %d of %d used this minute: pausing %.1f s", self.used_weight_1m,
                        self.weight_limit_1m, wait_ms / 1000)
            self.sleep(wait_ms / 1000)
            self.used_weight_1m = 0

    def _honour_retry_after(self, exc: BinanceAPIException, method: str) -> None:
        headers = getattr(exc.response, "headers", {})
        try:
            retry_after_s = float(headers.get("Retry-After", 60))
        except ValueError:
            retry_after_s = 60.0
        now_ms = int(self.clock() * 1000)
        self.blocked_until_ms = max(self.blocked_until_ms, now_ms + int(retry_after_s * 1000))
        what = "IP banned" if exc.status_code == 418 else "rate limited"
        if retry_after_s > self.max_wait_s:
            raise ExchangeRejected(exc.status_code, exc.code, f"{what} for {retry_after_s:g} s: {exc.message}")
        log.warning("Binance %s: %s, waiting %g s as asked (Retry-After)", method, what, retry_after_s)


def never_left(exc: requests.RequestException) -> bool:
    """Whether a failed request provably never reached Binance: no connection could be opened (refused,
    unresolvable, or timed out while connecting). Anything later (a read timeout, a dropped
    connection) may have delivered the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


def _describe(exc: Exception) -> str:
    """An exception in a few words, without URLs' query strings (they carry signatures)."""
    text = re.sub(r"\?[^\s'\")]*", "?...", str(exc))
    return f"{type(exc).__name__}: {text[:300]}"

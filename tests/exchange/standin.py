"""A local stand-in for Binance, for the tests: spot and USDⓈ-M futures REST, the kline and aggTrade
streams, faults.

REST (a ThreadingHTTPServer on 127.0.0.1) answers the endpoints Omniwise uses with Binance's JSON
shapes and error codes, and checks signed requests as Binance does: the X-MBX-APIKEY header, the
HMAC-SHA256 signature over the query string and body, and the timestamp against its own clock and
the recvWindow. Every answer carries X-MBX-USED-WEIGHT-1M.

The market replays one real day of XRPETH: from `start_ms` on, trades are published at `speed` times
real time and pushed to every open aggTrade stream (a `websockets` server); the kline stream gets the
current minute every 2 s and each finished minute's final kline: a client that is disconnected misses
what is pushed meanwhile, as on Binance. Klines of finished minutes are Binance's own (the day's 1m
file); the current minute's kline is built from the trades published so far. Market orders fill at the
last published price, 0.1% commission (or in BNB). Futures stop orders live in the Algo Service
(`/fapi/v1/algoOrder`): a STOP_MARKET (Close-All or reduce-only) is triggered by the replayed trades,
before each is pushed, and fills at that trade's price; `trigger_stops(price)` acts as a trade at `price`. `stall_streams` keeps connections open but silent,
`announce_shutdown` sends `serverShutdown`.

Faults on demand (`fail`): "timeout" (the request passes the timestamp check on arrival, then waits
`hold_s` in the "matching engine" before it is executed: the client has long given up), "503" (executed,
answered -1007 "execution status unknown"), "500" (not executed, -1000), "429" and "418" with Retry-After
(not handled), "lost" (handled, then the connection closes without an answer); `order_query_lag_ms`
makes order queries answer -2013 for orders younger than that; `skew_clock` makes timestamps fall
outside the recvWindow (-1021); `drop_streams` cuts every stream connection.
`trade_query_lag_ms` does the same to the account trade list (`GET /api/v3/myTrades`).

The spot user data stream is served as Binance serves it today, over the WebSocket API (`ws_api_url`):
`userDataStream.subscribe.signature` (checked like a SIGNED request), then `executionReport` and
`outboundAccountPosition` events pushed to the subscription as spot orders execute (see
`_serve_ws_api`).

Each modelled behaviour cites the section of Binance's API documentation it follows:
spot  = https://developers.binance.com/docs/binance-spot-api-docs (rest-api, errors, filters),
fapi  = https://developers.binance.com/docs/derivatives/usds-margined-futures (trade, account, errors).
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import dataclasses
import hashlib
import hmac
import http.server
import json
import re
import threading
import time
import urllib.parse
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from websockets.asyncio.server import broadcast, serve

E8 = Decimal("0.00000001")
COMMISSION = Decimal("0.001")
MINUTE_MS = 60_000
# spot "General API Information" > newClientOrderId; fapi "New Order (TRADE)": the same pattern.
CLIENT_ORDER_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
# spot "General API Information" > "LIMITS": each endpoint's request weight, summed per minute.
WEIGHTS = {"ping": 1, "time": 1, "exchangeInfo": 20, "klines": 2, "account": 20, "order": 4, "positionRisk": 5,
           "balance": 5, "avgPrice": 2, "myTrades": 20}


def e8(value: Decimal) -> str:
    """Binance's 8-decimal text."""
    return format(Decimal(value).quantize(E8, rounding=ROUND_DOWN), "f")


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclasses.dataclass
class Fault:
    kind: str
    method: str
    path: str
    hold_s: float = 0.0
    retry_after_s: int = 1


class StandIn:
    """Binance on 127.0.0.1: `api_url`, `futures_url`, `stream_url`, `futures_stream_url` for the client."""

    def __init__(self, trades_csv: Path, klines_csv: Path, *, api_key: str, api_secret: str, start_ms: int,
                 speed: float = 600.0, symbol: str = "XRPETH", base: str = "XRP", quote: str = "ETH",
                 balances: dict[str, str] | None = None, futures_balance: str = "10"):
        self.api_key, self.api_secret = api_key, api_secret
        self.symbol, self.base, self.quote = symbol, base, quote
        self.start_ms, self.speed = start_ms, speed
        self.klines_asked_at_ms: list[int] = []
        with open(trades_csv, newline="") as file:
            self.trades = [row for row in csv.reader(file) if row and row[0].isdigit()]
        self.trade_times = [int(row[5]) for row in self.trades]
        with open(klines_csv, newline="") as file:
            self.klines = {int(row[0]): row for row in csv.reader(file) if row and row[0].isdigit()}
        self.step, self.min_qty, self.min_notional = Decimal(1), Decimal(1), Decimal("0.01")
        self.balances = {asset: Decimal(amount) for asset, amount in (balances or {quote: "1"}).items()}
        self.futures_wallet = Decimal(futures_balance)
        self.futures_amount = self.futures_entry = Decimal(0)
        # fapi "Change Initial Leverage" / "Change Margin Type" / "Change Position Mode": a new account's
        # symbol starts at 20x; the margin type is whatever the account last used (isolated here, the
        # risky case); position mode one-way unless the account switched to hedge mode.
        self.futures_leverage, self.futures_margin_type, self.futures_dual_side = 20, "ISOLATED", False
        self.futures_max_leverage = 125
        self.bnb_price: Decimal | None = None  # BNB in the quote asset; set (with a BNB balance) to pay fees in BNB
        self.order_query_lag_ms = 0  # order queries answer -2013 for orders younger than this
        self.trade_query_lag_ms = 0  # the account trade list leaves out trades younger than this
        self.listen_keys: list[str] = []
        self.ws_api_requests: list[tuple[str, int]] = []  # (method, status) of every WebSocket API request
        self._user_subscriptions: dict = {}  # WebSocket API connection -> its user data stream subscription ids
        self._next_subscription_id = 0
        # Exchange filters (spot "Filters"): the market-order limits beyond LOT_SIZE's minimum and step.
        self.market_max_qty = Decimal("2000000")
        self.max_notional = Decimal("9000000")
        self.orders: list[dict] = []  # every order executed, both markets, in order
        self.algo_orders: list[dict] = []  # futures conditional orders (STOP_MARKET), every one placed
        self.spot_stops: list[dict] = []  # spot STOP_LOSS / STOP_LOSS_LIMIT sells, every one placed
        self.locked: dict[str, Decimal] = {}  # spot balances held by open orders (the stops)
        # spot "Exchange information" > symbols[].orderTypes: STOP_LOSS is not offered on every symbol; this
        # one (as XRPETH long was) has only STOP_LOSS_LIMIT. Tests add "STOP_LOSS" to model the others.
        self.spot_order_types = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"]
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every REST request
        self.error_codes: list[int] = []  # Binance error codes answered, in order
        self.faults: list[Fault] = []
        self.skew_ms = 0
        self.extra_weight = 0  # added to the used weight this stand-in reports
        self._weight_minute, self._weight = 0, 0
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._t0 = 0.0
        self._subscribers: dict = {}  # stream connection -> (combined-stream form?, stream kinds)
        self._silenced: set = set()  # connections that stay open but get nothing (a half-open TCP line)
        self.kline_every_s = 2.0  # spot "Kline/Candlestick Streams": "Update Speed: 2000ms"
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> "StandIn":
        self._t0 = time.monotonic()
        handler = type("Handler", (_Handler,), {"standin": self})
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        self._http.block_on_close = False
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="standin-rest", daemon=True).start()
        ready = threading.Event()
        self._ws_thread = threading.Thread(target=lambda: asyncio.run(self._serve_streams(ready)),
                                           name="standin-stream", daemon=True)
        self._ws_thread.start()
        ready.wait(10)
        rest = f"http://127.0.0.1:{self._http.server_address[1]}"
        self.api_url, self.futures_url = f"{rest}/api", f"{rest}/fapi"
        self.stream_url = self.futures_stream_url = f"ws://127.0.0.1:{self._ws_port}/"
        self.ws_api_url = f"ws://127.0.0.1:{self._ws_port}/ws-api/v3"
        return self

    def close(self) -> None:
        self._closing.set()
        self._http.shutdown()
        self._http.server_close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_streams.set)
        self._ws_thread.join(10)

    # -- controls for tests ---------------------------------------------------------------------------

    def fail(self, kind: str, path: str = "/api/v3/order", method: str = "POST", hold_s: float = 0.0,
             retry_after_s: int = 1, times: int = 1) -> None:
        """Make the next `times` requests to `method path` meet a fault (see the module docstring)."""
        with self._lock:
            self.faults.extend(Fault(kind, method, path, hold_s, retry_after_s) for _ in range(times))

    def skew_clock(self, ms: int) -> None:
        """Move the exchange's clock: requests signed by the old one fall outside the recvWindow."""
        self.skew_ms += ms

    def drop_streams(self) -> int:
        """Cut every stream connection without a close frame; returns how many there were."""
        future = asyncio.run_coroutine_threadsafe(self._drop(), self._loop)
        return future.result(10)

    def stall_streams(self) -> int:
        """Stop sending on every open stream connection without closing it (python-binance #1057: a
        half-open connection); returns how many there were. New connections are served again."""
        connections = list(self._subscribers)
        self._silenced.update(connections)
        return len(connections)

    def announce_shutdown(self) -> int:
        """Send Binance's `serverShutdown` event on every open stream connection (which stays open)."""
        message = json.dumps({"e": "serverShutdown", "E": self.server_time_ms()})
        connections = [c for c in self._subscribers if c not in self._silenced]
        self._loop.call_soon_threadsafe(broadcast, connections, message)
        return len(connections)

    def server_time_ms(self) -> int:
        return int(time.time() * 1000) + self.skew_ms

    def market_now_ms(self) -> int:
        """The replayed market's time: `start_ms` plus `speed` times the real time since start()."""
        return self.start_ms + int((time.monotonic() - self._t0) * 1000 * self.speed)

    def orders_for(self, client_order_id: str) -> list[dict]:
        with self._lock:
            return [o for o in self.orders if o["clientOrderId"] == client_order_id]

    def kline_row(self, open_ms: int) -> list[str]:
        """Binance's kline of a finished minute, as the 1m file has it."""
        return self.klines[open_ms]

    # -- market ---------------------------------------------------------------------------------------

    def last_price(self) -> Decimal:
        index = bisect.bisect_right(self.trade_times, self.market_now_ms())
        return Decimal(self.trades[index - 1][1])

    def _kline_json(self, open_ms: int, now_ms: int) -> list:
        # spot "Market Data endpoints" > "Kline/Candlestick data": 12 columns; the current minute is
        # included, built from the trades so far (not final).
        if open_ms + MINUTE_MS <= now_ms:
            row = self.klines[open_ms]
            return [int(row[0]), *row[1:6], int(row[6]), row[7], int(row[8]), row[9], row[10], "0"]
        # The minute in progress, from the trades published so far.
        first = bisect.bisect_left(self.trade_times, open_ms)
        last = bisect.bisect_right(self.trade_times, now_ms)
        trades = self.trades[first:last]
        previous_close = Decimal(self.klines[open_ms - MINUTE_MS][4]) if open_ms - MINUTE_MS in self.klines else 0
        prices = [Decimal(t[1]) for t in trades] or [previous_close]
        volume = sum((Decimal(t[2]) for t in trades), Decimal(0))
        quote = sum((Decimal(t[1]) * Decimal(t[2]) for t in trades), Decimal(0))
        buys = [t for t in trades if t[6] == "False"]
        return [open_ms, e8(prices[0]), e8(max(prices)), e8(min(prices)), e8(prices[-1]), e8(volume),
                open_ms + MINUTE_MS - 1, e8(quote), sum(int(t[4]) - int(t[3]) + 1 for t in trades),
                e8(sum((Decimal(t[2]) for t in buys), Decimal(0))),
                e8(sum((Decimal(t[1]) * Decimal(t[2]) for t in buys), Decimal(0))), "0"]

    def _trade_message(self, row: list[str], is_combined: bool, is_spot: bool = True) -> str:
        # spot "WebSocket Streams" > "Aggregate Trade Streams"; combined streams wrap it in {"stream", "data"}.
        data = {"e": "aggTrade", "E": int(row[5]) + 3, "s": self.symbol, "a": int(row[0]), "p": row[1], "q": row[2],
                "f": int(row[3]), "l": int(row[4]), "T": int(row[5]), "m": row[6] == "True"}
        if is_spot:
            data["M"] = True
        if is_combined:
            return json.dumps({"stream": f"{self.symbol.lower()}@aggTrade", "data": data})
        return json.dumps(data)

    async def _serve_streams(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_streams = asyncio.Event()
        # close_timeout: a client gone without a close frame (drop_streams) must not hold close() for 10 s
        async with serve(self._stream, "127.0.0.1", 0, close_timeout=0.5) as server:
            self._ws_port = server.sockets[0].getsockname()[1]
            ready.set()
            market = asyncio.create_task(self._publish())
            klines = asyncio.create_task(self._publish_klines())
            await self._stop_streams.wait()
            market.cancel()
            klines.cancel()

    async def _stream(self, connection) -> None:
        # spot "WebSocket Streams" > "General WSS information": /ws/<stream> raw, /stream?streams=a/b combined;
        # a client that is not connected misses what is pushed meanwhile.
        path = connection.request.path
        if path.startswith("/ws-api/v3"):
            await self._serve_ws_api(connection)
            return
        kinds = {kind for kind in ("aggTrade", "kline_1m") if f"{self.symbol.lower()}@{kind}" in path}
        if any(f"listenKey={key}" in path for key in self.listen_keys):  # fapi "Connect": /ws?listenKey=
            kinds.add("user")
        if not kinds:
            await connection.close(1008, "unknown stream")
            return
        self._subscribers[connection] = ("streams=" in path, kinds)
        try:
            await connection.wait_closed()
        finally:
            self._subscribers.pop(connection, None)
            self._silenced.discard(connection)

    async def _publish(self) -> None:
        index = bisect.bisect_left(self.trade_times, self.start_ms)
        while index < len(self.trades):
            due_s = self._t0 + (self.trade_times[index] - self.start_ms) / 1000 / self.speed
            delay = due_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            row = self.trades[index]
            self.trigger_stops(Decimal(row[1]))  # the matching engine acts before the trade is printed
            for is_combined in (False, True):
                connections = [c for c, (combined, kinds) in self._subscribers.items()
                               if combined == is_combined and "aggTrade" in kinds and c not in self._silenced]
                if connections:
                    broadcast(connections, self._trade_message(row, is_combined, is_spot=not is_combined))
            index += 1

    async def _publish_klines(self) -> None:
        """spot "Kline/Candlestick Streams": the current minute's kline every `kline_every_s`, and each
        minute's final form (x = true, Binance's own kline) once the minute is over."""
        now_ms = self.market_now_ms()
        last_final_ms = now_ms - now_ms % MINUTE_MS - MINUTE_MS
        next_update_s = 0.0
        while True:
            now_ms = self.market_now_ms()
            minute_ms = now_ms - now_ms % MINUTE_MS
            while last_final_ms + MINUTE_MS < minute_ms:
                last_final_ms += MINUTE_MS
                self._push_kline(last_final_ms, last_final_ms + MINUTE_MS + 5, is_final=True)
            if time.monotonic() >= next_update_s:
                self._push_kline(minute_ms, now_ms, is_final=False)
                next_update_s = time.monotonic() + self.kline_every_s
            to_next_minute_s = (minute_ms + MINUTE_MS - now_ms) / 1000 / self.speed
            await asyncio.sleep(max(0.002, min(to_next_minute_s, next_update_s - time.monotonic())))

    def _push_kline(self, open_ms: int, event_ms: int, is_final: bool) -> None:
        if open_ms not in self.klines:
            return
        row = self._kline_json(open_ms, event_ms)
        data = {"e": "kline", "E": event_ms, "s": self.symbol,
                "k": {"t": row[0], "T": row[6], "s": self.symbol, "i": "1m", "f": 0, "L": 0, "o": row[1], "c": row[4],
                      "h": row[2], "l": row[3], "v": row[5], "n": row[8], "x": is_final, "q": row[7], "V": row[9],
                      "Q": row[10], "B": "0"}}
        for is_combined in (False, True):
            connections = [c for c, (combined, kinds) in self._subscribers.items()
                           if combined == is_combined and "kline_1m" in kinds and c not in self._silenced]
            if connections:
                message = {"stream": f"{self.symbol.lower()}@kline_1m", "data": data} if is_combined else data
                broadcast(connections, json.dumps(message))

    async def _drop(self) -> int:
        # spot "General WSS information": "A single connection to stream.binance.com is only valid for 24
        # hours; expect to be disconnected at the 24 hour mark" (here: at once, with no close frame).
        connections = list(self._subscribers)
        for connection in connections:
            connection.transport.abort()
        return len(connections)

    # -- the spot user data stream over the WebSocket API ------------------------------------------------

    async def _serve_ws_api(self, connection) -> None:
        """spot "WebSocket API" (wss://ws-api.binance.com/ws-api/v3, testnet wss://ws-api.testnet.binance.vision)
        > "General API Information": requests {"id", "method", "params"}, answers {"id", "status", "result"} or
        {"id", "status", "error": {"code", "msg"}}, with "rateLimits".

        Only the user data stream requests are served, as python-binance sends them (ws/keepalive_websocket.py):
        "User Data Stream requests" > "Subscribe to User Data Stream through signature subscription
        (USER_STREAM)": method `userDataStream.subscribe.signature`, params apiKey, timestamp, recvWindow
        (optional), signature; result {"subscriptionId": N}; and `userDataStream.unsubscribe` {subscriptionId}.
        Events then come on the same connection as {"subscriptionId": N, "event": {...}} (spot "User Data
        Streams" > "General information"), and only to a subscribed connection: one that was not connected
        when an order executed never gets its executionReport.
        """
        self._subscribers[connection] = (False, {"ws-api"})  # cut by drop_streams, silenced by stall_streams
        self._user_subscriptions[connection] = set()
        try:
            async for raw in connection:
                try:
                    request = json.loads(raw)
                    answer = self._ws_api_answer(connection, request)
                except (ValueError, TypeError, AttributeError):
                    request, answer = {}, {"status": 400, "error": {"code": -1000, "msg": "Malformed request."}}
                with self._lock:
                    self.ws_api_requests.append((str(request.get("method")), answer["status"]))
                if connection not in self._silenced:
                    await connection.send(json.dumps({"id": request.get("id"), **answer, "rateLimits": [
                        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000,
                         "count": 2}]}))
        except Exception:  # noqa: BLE001 - the connection was cut: its subscriptions end with it
            pass
        finally:
            self._subscribers.pop(connection, None)
            self._silenced.discard(connection)
            self._user_subscriptions.pop(connection, None)

    def _ws_api_answer(self, connection, request: dict) -> dict:
        method, params = request["method"], dict(request.get("params") or {})
        try:
            if method == "userDataStream.subscribe.signature":
                self._authenticate_ws_api(params)
                self._next_subscription_id += 1
                self._user_subscriptions[connection].add(self._next_subscription_id)
                return {"status": 200, "result": {"subscriptionId": self._next_subscription_id}}
            if method == "userDataStream.unsubscribe":
                self._user_subscriptions[connection].discard(int(params.get("subscriptionId", -1)))
                return {"status": 200, "result": {}}
            raise ApiError(400, -1000, f"no WebSocket API method {method} in this stand-in")
        except ApiError as exc:
            with self._lock:
                self.error_codes.append(exc.code)
            return {"status": exc.status, "error": {"code": exc.code, "msg": exc.message}}

    def _check_timing(self, params: dict) -> None:
        """"Timing security", the same for REST and the WebSocket API: timestamp and signature present
        (-1102), recvWindow at most 60000 (-1131), a timestamp at most 1 s ahead of the server and no older
        than recvWindow (-1021)."""
        if "timestamp" not in params or "signature" not in params:
            raise ApiError(400, -1102, "Mandatory parameter 'timestamp' or 'signature' was not sent, was "
                                       "empty/null, or malformed.")
        recv_window = int(params.get("recvWindow", 5000))
        if recv_window > 60_000:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
        server_ms, timestamp = self.server_time_ms(), int(params["timestamp"])
        if not (timestamp < server_ms + 1000 and server_ms - timestamp <= recv_window):
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def _authenticate_ws_api(self, params: dict) -> None:
        """spot "WebSocket API" > "Request security" > "SIGNED request security": the HMAC-SHA256 of every
        parameter but `signature`, sorted by name, as `name=value` joined by `&`; apiKey in the params (not a
        header); timestamp and recvWindow checked as for REST ("Timing security"); the same error codes."""
        if not hmac.compare_digest(str(params.get("apiKey", "")), self.api_key):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        self._check_timing(params)
        payload = "&".join(f"{name}={value}" for name, value in sorted(params.items()) if name != "signature")
        expected = hmac.new(self.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(params["signature"])):
            raise ApiError(400, -1022, "Signature for this request is not valid.")

    def _push_user_events(self, events: list[dict]) -> None:
        """Push user data stream events to every subscription, in order, each in its own message."""
        targets = [(c, sub) for c, subs in list(self._user_subscriptions.items()) if c not in self._silenced
                   for sub in subs]
        if not targets or self._loop is None:
            return
        for event in events:
            for connection, subscription in targets:
                message = json.dumps({"subscriptionId": subscription, "event": event})
                self._loop.call_soon_threadsafe(broadcast, [connection], message)

    def _push_execution_reports(self, order: dict) -> None:
        """spot "User Data Streams" > "Order Update": a MARKET order gives an executionReport with x NEW,
        then one per trade (x TRADE; X PARTIALLY_FILLED, the last FILLED), each with the trade's l (qty),
        L (price), n and N (its commission and asset; N null without commission), t (trade id), and the
        order's cumulative z (filled qty) and Z (quote qty); c is the client order id, i the order id, T the
        transaction time. Then "Account Update" (outboundAccountPosition) with the changed balances."""
        base = {"e": "executionReport", "E": order["transactTime"], "s": self.symbol, "c": order["clientOrderId"],
                "S": order["side"], "o": "MARKET", "f": "GTC", "q": order["origQty"], "p": "0.00000000",
                "P": "0.00000000", "F": "0.00000000", "g": -1, "C": "", "r": "NONE", "i": order["orderId"],
                "T": order["transactTime"], "I": 0, "M": False, "O": order["transactTime"],
                "Q": order["origQuoteOrderQty"], "W": order["transactTime"], "V": "EXPIRE_MAKER"}
        events = [{**base, "x": "NEW", "X": "NEW", "l": "0.00000000", "z": "0.00000000", "L": "0.00000000",
                   "n": "0", "N": None, "t": -1, "w": True, "m": False, "Z": "0.00000000", "Y": "0.00000000"}]
        filled, quote = Decimal(0), Decimal(0)
        for number, fill in enumerate(order["fills"], start=1):
            qty, price = Decimal(fill["qty"]), Decimal(fill["price"])
            filled, quote = filled + qty, quote + (qty * price).quantize(E8, rounding=ROUND_DOWN)
            is_last = number == len(order["fills"])
            events.append({**base, "x": "TRADE", "X": "FILLED" if is_last else "PARTIALLY_FILLED", "l": e8(qty),
                           "z": e8(filled), "L": e8(price), "n": fill["commission"],
                           "N": fill["commissionAsset"] if Decimal(fill["commission"]) else None,
                           "t": fill["tradeId"], "w": False, "m": False,
                           "Z": order["cummulativeQuoteQty"] if is_last else e8(quote), "Y": e8(qty * price)})
        assets = {self.base, self.quote, *(f["commissionAsset"] for f in order["fills"])}
        events.append({"e": "outboundAccountPosition", "E": order["transactTime"], "u": order["transactTime"],
                       "B": [{"a": a, "f": e8(self.balances.get(a, Decimal(0))), "l": "0.00000000"}
                             for a in sorted(assets)]})
        self._push_user_events(events)

    def _my_trades(self, params: dict) -> list[dict]:
        """spot "Account endpoints" > "Account trade list (USER_DATA)" (GET /api/v3/myTrades): the account's
        trades of `symbol`, by orderId, or from startTime / fromId, at most `limit` (500, at most 1000). The
        rows carry orderId but no client order id. Like the order query it reads a copy that can lag
        (`trade_query_lag_ms`). Parameter combinations outside the documented ones answer -1128."""
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        if "orderId" in params and ("startTime" in params or "endTime" in params):
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1100, "Illegal characters found in parameter 'limit'.")
        start_ms = int(params.get("startTime", 0))
        end_ms = int(params.get("endTime", start_ms + 24 * 3_600_000 if "startTime" in params else 2**62))
        if end_ms - start_ms > 24 * 3_600_000 and "startTime" in params:
            raise ApiError(400, -1127, "More than 24 hours between startTime and endTime.")
        now_ms = self.server_time_ms()
        rows = []
        for order in self.orders:
            if order["market"] != "spot" or now_ms - order["transactTime"] < self.trade_query_lag_ms:
                continue
            if "orderId" in params and str(order["orderId"]) != params["orderId"]:
                continue
            if not start_ms <= order["transactTime"] <= end_ms:
                continue
            for fill in order["fills"]:
                if fill["tradeId"] < int(params.get("fromId", 0)):
                    continue
                rows.append({"symbol": self.symbol, "id": fill["tradeId"], "orderId": order["orderId"],
                             "orderListId": -1, "price": fill["price"], "qty": fill["qty"],
                             "quoteQty": e8(Decimal(fill["price"]) * Decimal(fill["qty"])),
                             "commission": fill["commission"], "commissionAsset": fill["commissionAsset"],
                             "time": order["transactTime"], "isBuyer": order["side"] == "BUY", "isMaker": False,
                             "isBestMatch": True})
        return rows[:limit] if "fromId" in params or "startTime" in params else rows[-limit:]

    # -- REST -----------------------------------------------------------------------------------------

    def handle(self, handler: "_Handler", method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        fault = self._take_fault(method, url.path)
        # spot "General API Information" > "HTTP Return Codes": 429 rate limit, 418 IP banned (both with
        # Retry-After, the request not handled), 5XX internal errors.
        if fault is not None and fault.kind in ("500", "429", "418"):
            status = int(fault.kind)
            if status == 500:
                self._answer(handler, method, url.path, 500, {"code": -1000, "msg": "An unknown error occurred "
                                                                                    "while processing the request."})
            else:
                self._answer(handler, method, url.path, status, {"code": -1003, "msg": "Too much request weight "
                             "used; current limit is 6000 request weight per 1 MINUTE."},
                             {"Retry-After": str(fault.retry_after_s)})
            return
        # spot "Timing security": the timestamp and recvWindow are checked when the request arrives, before
        # it reaches the matching engine; a request that waits there afterwards is still executed.
        hold_s = fault.hold_s if fault is not None and fault.kind == "timeout" else 0.0
        try:
            status, payload = 200, self._route(handler, method, url.path, url.query, body, hold_s)
        except ApiError as exc:
            status, payload = exc.status, {"code": exc.code, "msg": exc.message}
            with self._lock:
                self.error_codes.append(exc.code)
        if fault is not None and fault.kind == "503" and status == 200:
            # spot "General API Information" (HTTP 5XX) and error -1007: the execution status is unknown
            # to the caller, and the order may well have been executed (it was, here).
            status, payload = 503, {"code": -1007, "msg": "Timeout waiting for response from backend server. "
                                                          "Send status unknown; execution status unknown."}
            with self._lock:
                self.error_codes.append(-1007)
        # Not a Binance behaviour but the network's: the request was handled, the answer never arrives.
        if fault is not None and fault.kind == "lost":
            self._closing.wait(fault.hold_s)
            with self._lock:
                self.requests.append((method, url.path, 0))
            handler.close_connection = True  # handled, but the answer never leaves
            return
        try:
            self._answer(handler, method, url.path, status, payload)
        except OSError:
            pass  # the client gave up waiting

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path == path:
                    self.faults.remove(fault)
                    return fault
        return None

    def _answer(self, handler, method: str, path: str, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        with self._lock:
            self.requests.append((method, path, status))
            minute = int(time.time() // 60)
            if minute != self._weight_minute:
                self._weight_minute, self._weight = minute, 0
            self._weight += WEIGHTS.get(path.rsplit("/", 1)[-1], 1)
            weight = self._weight + self.extra_weight
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json;charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("X-MBX-USED-WEIGHT-1M", str(weight))  # spot "LIMITS" > "IP Limits"
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, handler, method: str, path: str, query: str, body: str, hold_s: float = 0.0):
        params = dict(urllib.parse.parse_qsl(query + ("&" if query and body else "") + body))
        public = {
            ("GET", "/api/v3/ping"): lambda: {}, ("GET", "/fapi/v1/ping"): lambda: {},
            ("GET", "/api/v3/time"): lambda: {"serverTime": self.server_time_ms()},
            ("GET", "/fapi/v1/time"): lambda: {"serverTime": self.server_time_ms()},
            ("GET", "/api/v3/exchangeInfo"): self._spot_exchange_info,
            ("GET", "/fapi/v1/exchangeInfo"): self._futures_exchange_info,
            ("GET", "/api/v3/klines"): lambda: self._klines(params),
            ("GET", "/fapi/v1/klines"): lambda: self._klines(params),
            ("GET", "/api/v3/avgPrice"): lambda: self._avg_price(params),
            ("GET", "/api/v3/ticker/price"): lambda: self._ticker_price(params),
        }
        signed = {
            ("GET", "/api/v3/account"): lambda: self._spot_account(),
            ("POST", "/api/v3/order"): lambda: self._spot_order(params),
            ("GET", "/api/v3/order"): lambda: self._query_order(params, "spot"),
            ("DELETE", "/api/v3/order"): lambda: self._cancel_spot_order(params),
            ("GET", "/api/v3/openOrders"): lambda: self._open_spot_orders(params),
            ("GET", "/api/v3/myTrades"): lambda: self._my_trades(params),
            ("POST", "/fapi/v1/order"): lambda: self._futures_order(params),
            ("POST", "/fapi/v1/algoOrder"): lambda: self._new_algo_order(params),
            ("GET", "/fapi/v1/algoOrder"): lambda: self._query_algo_order(params),
            ("DELETE", "/fapi/v1/algoOrder"): lambda: self._cancel_algo_order(params),
            ("GET", "/fapi/v1/openAlgoOrders"): lambda: [a for a in self._algo_answers() if a["algoStatus"] == "NEW"],
            ("GET", "/fapi/v1/order"): lambda: self._query_order(params, "futures"),
            ("GET", "/fapi/v3/positionRisk"): lambda: self._position_risk(),
            ("GET", "/fapi/v3/balance"): lambda: self._futures_balance(),
            ("GET", "/fapi/v1/positionSide/dual"): lambda: {"dualSidePosition": self.futures_dual_side},
            ("POST", "/fapi/v1/positionSide/dual"): lambda: self._set_dual_side(params),
            ("POST", "/fapi/v1/marginType"): lambda: self._set_margin_type(params),
            ("POST", "/fapi/v1/leverage"): lambda: self._set_leverage(params),
            ("GET", "/fapi/v1/symbolConfig"): lambda: self._symbol_config(params),
        }
        keyed = {  # fapi "User Data Streams" > "Start / Keepalive User Data Stream (USER_STREAM)": API key only
            ("POST", "/fapi/v1/listenKey"): lambda: {"listenKey": self._new_listen_key()},
            ("PUT", "/fapi/v1/listenKey"): lambda: {},
        }
        if (method, path) in keyed:
            if handler.headers.get("X-MBX-APIKEY") != self.api_key:
                raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
            return keyed[(method, path)]()
        if (method, path) in public:
            self._closing.wait(hold_s)
            return public[(method, path)]()
        if (method, path) in signed:
            self._authenticate(handler, query, body, params)
            if hold_s:
                self._closing.wait(hold_s)
            with self._lock:
                return signed[(method, path)]()
        raise ApiError(404, -1000, f"no endpoint {method} {path} in this stand-in")

    def _authenticate(self, handler, query: str, body: str, params: dict) -> None:
        """Binance's checks of a SIGNED request: key, timestamp within recvWindow, HMAC-SHA256 signature.

        spot "Request security" > "SIGNED Endpoint security" and "Timing security" (recvWindow at most
        60000, -1131; a timestamp more than 1 s ahead of the server or older than recvWindow, -1021);
        errors -2014/-2015 (key), -1102 (missing parameter), -1022 (signature) as in spot "Error codes".
        """
        key = handler.headers.get("X-MBX-APIKEY")
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key, self.api_key):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        self._check_timing(params)
        unsigned = "".join("&".join(p for p in part.split("&") if not p.startswith("signature="))
                           for part in (query, body))
        expected = hmac.new(self.api_secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params["signature"]):
            raise ApiError(400, -1022, "Signature for this request is not valid.")

    # -- market data ----------------------------------------------------------------------------------

    def _spot_exchange_info(self) -> dict:
        # spot "General endpoints" > "Exchange information", with the filters of spot "Filters".
        return {"timezone": "UTC", "serverTime": self.server_time_ms(),
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                "limit": 6000},
                               {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                               {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
                                "limit": 61000}],
                "exchangeFilters": [],
                "symbols": [{"symbol": self.symbol, "status": "TRADING", "baseAsset": self.base,
                             "baseAssetPrecision": 8,
                             "quoteAsset": self.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                             "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                             "orderTypes": list(self.spot_order_types),
                             "icebergAllowed": True, "ocoAllowed": True, "quoteOrderQtyMarketAllowed": True,
                             "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                             "filters": [
                                 {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000.00000000",
                                  "tickSize": "0.00000001"},
                                 {"filterType": "LOT_SIZE", "minQty": e8(self.min_qty), "maxQty": "90000000.00000000",
                                  "stepSize": e8(self.step)},
                                 {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000",
                                  "maxQty": e8(self.market_max_qty), "stepSize": "0.00000000"},
                                 {"filterType": "NOTIONAL", "minNotional": e8(self.min_notional),
                                  "applyMinToMarket": True, "maxNotional": e8(self.max_notional),
                                  "applyMaxToMarket": True, "avgPriceMins": 5}],
                             "permissions": [], "permissionSets": [["SPOT"]],
                             "defaultSelfTradePreventionMode": "EXPIRE_MAKER"}]}

    def _futures_exchange_info(self) -> dict:
        # fapi "Market Data" > "Exchange Information": LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL ("notional").
        return {"timezone": "UTC", "serverTime": self.server_time_ms(), "futuresType": "U_MARGINED",
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                "limit": 2400},
                               {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}],
                "assets": [{"asset": self.quote, "marginAvailable": True}],
                "symbols": [{"symbol": self.symbol, "pair": self.symbol, "contractType": "PERPETUAL",
                             "status": "TRADING",
                             "baseAsset": self.base, "quoteAsset": self.quote, "marginAsset": self.quote,
                             "pricePrecision": 8, "quantityPrecision": 0, "baseAssetPrecision": 8, "quotePrecision": 8,
                             "filters": [
                                 {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000",
                                  "tickSize": "0.00000001"},
                                 {"filterType": "LOT_SIZE", "stepSize": "1", "maxQty": "10000000", "minQty": "1"},
                                 {"filterType": "MARKET_LOT_SIZE", "stepSize": "1",
                                  "maxQty": str(int(self.market_max_qty)), "minQty": "1"},
                                 {"filterType": "MIN_NOTIONAL", "notional": "0.01"}],
                             "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET"],
                             "timeInForce": ["GTC", "IOC", "FOK", "GTX"]}]}

    def _klines(self, params: dict) -> list:
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        if params.get("interval") != "1m":
            raise ApiError(400, -1120, "Invalid interval.")
        limit = min(int(params.get("limit", 500)), 1000)
        now_ms = self.market_now_ms()
        self.klines_asked_at_ms.append(now_ms)  # the market's time of each klines request, for the tests
        current_ms = now_ms - now_ms % MINUTE_MS
        end_ms = min(int(params.get("endTime", current_ms)), current_ms)
        if "startTime" in params:
            first_ms = -(-int(params["startTime"]) // MINUTE_MS) * MINUTE_MS
        else:
            first_ms = end_ms - end_ms % MINUTE_MS - (limit - 1) * MINUTE_MS
        opens = [t for t in range(first_ms, end_ms + 1, MINUTE_MS) if t in self.klines][:limit]
        return [self._kline_json(t, now_ms) for t in opens]

    # -- spot account ---------------------------------------------------------------------------------

    def _spot_account(self) -> dict:
        # spot "Account endpoints" > "Account information (USER_DATA)".
        return {"makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
                "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000",
                                    "seller": "0.00000000"},
                "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
                "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self.server_time_ms(),
                "accountType": "SPOT",
                "balances": [{"asset": asset, "free": e8(amount), "locked": e8(self.locked.get(asset, Decimal(0)))}
                             for asset, amount in self.balances.items()],
                "permissions": ["SPOT"], "uid": 354937868}

    def _spot_order(self, params: dict) -> dict:
        # spot "Trading endpoints" > "New order (TRADE)": MARKET with quantity or quoteOrderQty; FULL answer
        # with fills; -2010 when the balance is insufficient; commission 0.1 % in the asset received.
        if params.get("type") in ("STOP_LOSS", "STOP_LOSS_LIMIT"):
            return self._new_spot_stop(params)
        self._check_order_params(params)
        return self._execute_spot(params, self.last_price())

    def _execute_spot(self, params: dict, price: Decimal, order_type: str = "MARKET") -> dict:
        """Execute a spot sell or buy at `price` now (a MARKET order, or a triggered stop)."""
        side = params["side"]
        if "quoteOrderQty" in params:
            qty = (Decimal(params["quoteOrderQty"]) / price / self.step).to_integral_value(ROUND_DOWN) * self.step
        else:
            qty = Decimal(params["quantity"])
            if qty % self.step:
                raise ApiError(400, -1013, "Filter failure: LOT_SIZE")
        # spot "Filters": LOT_SIZE (min, step) and MARKET_LOT_SIZE (max for MARKET orders); NOTIONAL with
        # applyMinToMarket/applyMaxToMarket, at the average price (avgPriceMins) for MARKET orders.
        if qty < self.min_qty:
            raise ApiError(400, -1013, "Filter failure: LOT_SIZE")
        if qty > self.market_max_qty:
            raise ApiError(400, -1013, "Filter failure: MARKET_LOT_SIZE")
        notional = qty * self._average_price()
        if notional < self.min_notional or notional > self.max_notional:
            raise ApiError(400, -1013, "Filter failure: NOTIONAL")
        cost = (qty * price).quantize(E8, rounding=ROUND_DOWN)
        if side == "BUY":
            if cost > self.balances.get(self.quote, 0):
                raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
            commission, commission_asset = (qty * COMMISSION).quantize(E8), self.base
            self.balances[self.quote] -= cost
            self.balances[self.base] = self.balances.get(self.base, Decimal(0)) + qty - commission
        else:
            if qty > self.balances.get(self.base, 0):
                raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
            commission, commission_asset = (cost * COMMISSION).quantize(E8), self.quote
            self.balances[self.base] -= qty
            self.balances[self.quote] = self.balances.get(self.quote, Decimal(0)) + cost - commission
        if self.bnb_price is not None and self.balances.get("BNB", Decimal(0)) > 0:
            # spot "Account trade list": with "pay fees in BNB" on, commissionAsset is BNB (25 % off). The
            # fee is taken from BNB instead of the traded asset: give the traded asset back.
            fee_in_quote = commission if commission_asset == self.quote else commission * price
            if commission_asset == self.quote:
                self.balances[self.quote] += commission
            else:
                self.balances[self.base] += commission
            commission, commission_asset = (fee_in_quote * Decimal("0.75") / self.bnb_price).quantize(E8), "BNB"
            self.balances["BNB"] -= commission
        now_ms = self.server_time_ms()
        order = {"symbol": self.symbol, "orderId": len(self.orders) + 1, "orderListId": -1,
                 "clientOrderId": params["newClientOrderId"], "transactTime": now_ms, "price": "0.00000000",
                 "origQty": e8(qty), "executedQty": e8(qty), "origQuoteOrderQty": params.get("quoteOrderQty", "0"),
                 "cummulativeQuoteQty": e8(cost), "status": "FILLED", "timeInForce": "GTC", "type": order_type,
                 "side": side, "workingTime": now_ms, "selfTradePreventionMode": "EXPIRE_MAKER",
                 "fills": [{"price": e8(price), "qty": e8(qty), "commission": e8(commission),
                            "commissionAsset": commission_asset, "tradeId": 56000 + len(self.orders)}],
                 "market": "spot", "params": params}
        self.orders.append(order)
        self._push_execution_reports(order)
        return {k: v for k, v in order.items() if k not in ("market", "params")}

    def _average_price(self) -> Decimal:
        """spot "Current average price": the volume-weighted price of the last avgPriceMins (5) minutes."""
        now_ms = self.market_now_ms()
        first = bisect.bisect_left(self.trade_times, now_ms - 5 * MINUTE_MS)
        last = bisect.bisect_right(self.trade_times, now_ms)
        trades = self.trades[first:last]
        volume = sum((Decimal(t[2]) for t in trades), Decimal(0))
        if not volume:
            return self.last_price()
        return (sum((Decimal(t[1]) * Decimal(t[2]) for t in trades), Decimal(0)) / volume).quantize(E8)

    def _ticker_price(self, params: dict) -> dict:
        """spot "Symbol price ticker": the traded symbol, and BNB in the quote asset when set."""
        if params.get("symbol") == self.symbol:
            return {"symbol": self.symbol, "price": e8(self.last_price())}
        if self.bnb_price is not None and params.get("symbol") == f"BNB{self.quote}":
            return {"symbol": params["symbol"], "price": e8(self.bnb_price)}
        raise ApiError(400, -1121, "Invalid symbol.")

    def _avg_price(self, params: dict) -> dict:
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        return {"mins": 5, "price": e8(self._average_price()), "closeTime": self.server_time_ms()}

    def _check_order_params(self, params: dict) -> None:
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        if params.get("type") != "MARKET":
            raise ApiError(400, -1116, "Invalid orderType.")
        if params.get("side") not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        client_id = params.get("newClientOrderId", "")
        if not CLIENT_ORDER_ID.match(client_id):
            # spot "Error codes" -1100 ILLEGAL_CHARS, with the newClientOrderId pattern as the legal range.
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                                       "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")

    def _query_order(self, params: dict, market: str) -> dict:
        # spot "Query order (USER_DATA)" / fapi "Query Order": by orderId or origClientOrderId; -2013
        # NO_SUCH_ORDER "Order does not exist." otherwise.
        wanted = params.get("origClientOrderId")
        for order in reversed(self.orders):
            executed_ms = order.get("transactTime", order.get("updateTime"))
            if self.server_time_ms() - executed_ms < self.order_query_lag_ms:
                # -2013 "Order does not exist." for an order already FILLED: the order query reads a copy
                # that can lag the matching engine (reported by bot authors on dev.binance.vision).
                continue
            if order["market"] == market and (order["clientOrderId"] == wanted or
                                              str(order["orderId"]) == params.get("orderId")):
                found = {k: v for k, v in order.items() if k not in ("market", "params", "fills", "transactTime")}
                return {**found, "time": order.get("transactTime", order.get("updateTime")),
                        "updateTime": order.get("transactTime", order.get("updateTime")), "isWorking": False}
        if market == "spot":
            for stop in reversed(self.spot_stops):
                if stop["clientOrderId"] == wanted or str(stop["orderId"]) == params.get("orderId"):
                    return self._stop_answer(stop)
        raise ApiError(400, -2013, "Order does not exist.")

    # -- spot stops -----------------------------------------------------------------------------------

    def _new_spot_stop(self, params: dict) -> dict:
        """spot "New order (TRADE)" with type STOP_LOSS (quantity, stopPrice: a market order once the last
        price reaches stopPrice) or STOP_LOSS_LIMIT (also price and timeInForce: a limit order then). Only the
        symbol's orderTypes are taken (-1116 otherwise, as spot "Error codes" INVALID_ORDER_TYPE); the sold
        base is locked while the order is open (spot "Account information": balances[].locked); a stop the
        last price has already reached is refused, -2010 "Stop price would trigger immediately." (spot
        "Error codes" > "Messages for -1010 ERROR_MSG_RECEIVED, -2010 NEW_ORDER_REJECTED")."""
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        if params["type"] not in self.spot_order_types:
            raise ApiError(400, -1116, "Invalid orderType.")
        if params.get("side") != "SELL":
            raise ApiError(400, -1116, "Only SELL stops are modelled by this stand-in.")
        required = ["quantity", "stopPrice"] + (["price", "timeInForce"] if params["type"] == "STOP_LOSS_LIMIT" else [])
        for name in required:
            if name not in params:
                raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or "
                                           "malformed.")
        if not CLIENT_ORDER_ID.match(params.get("newClientOrderId", "")):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                                       "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        qty, stop_price = Decimal(params["quantity"]), Decimal(params["stopPrice"])
        if qty % self.step or qty < self.min_qty:
            raise ApiError(400, -1013, "Filter failure: LOT_SIZE")
        if self.last_price() <= stop_price:
            raise ApiError(400, -2010, "Stop price would trigger immediately.")
        if qty > self.balances.get(self.base, Decimal(0)):
            raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
        self.balances[self.base] -= qty
        self.locked[self.base] = self.locked.get(self.base, Decimal(0)) + qty
        now_ms = self.server_time_ms()
        stop = {"symbol": self.symbol, "orderId": 9_000_000 + len(self.spot_stops), "orderListId": -1,
                "clientOrderId": params["newClientOrderId"], "price": params.get("price", "0.00000000"),
                "origQty": e8(qty), "executedQty": "0.00000000", "cummulativeQuoteQty": "0.00000000",
                "status": "NEW", "timeInForce": params.get("timeInForce", "GTC"), "type": params["type"],
                "side": "SELL", "stopPrice": e8(stop_price), "time": now_ms, "updateTime": now_ms,
                "isWorking": False, "triggered": False}
        self.spot_stops.append(stop)
        return {"symbol": self.symbol, "orderId": stop["orderId"], "orderListId": -1,
                "clientOrderId": stop["clientOrderId"], "transactTime": now_ms}

    def _stop_answer(self, stop: dict) -> dict:
        # spot "Query order (USER_DATA)" / "Current open orders": the order's fields, no fills.
        return {k: v for k, v in stop.items() if k != "triggered"}

    def _open_spot_orders(self, params: dict) -> list[dict]:
        """spot "Current open orders (USER_DATA)" (GET /api/v3/openOrders): the symbol's orders still open."""
        return [self._stop_answer(s) for s in self.spot_stops
                if s["status"] in ("NEW", "PARTIALLY_FILLED") and params.get("symbol", s["symbol"]) == s["symbol"]]

    def _cancel_spot_order(self, params: dict) -> dict:
        """spot "Cancel order (TRADE)" (DELETE /api/v3/order): an open order is cancelled and its locked base
        freed; one already filled, cancelled or unknown answers -2011 "Unknown order sent." (spot "Error codes"
        CANCEL_REJECTED)."""
        for stop in reversed(self.spot_stops):
            if stop["clientOrderId"] == params.get("origClientOrderId") or \
                    str(stop["orderId"]) == params.get("orderId"):
                if stop["status"] not in ("NEW", "PARTIALLY_FILLED"):
                    break
                self._unlock(Decimal(stop["origQty"]) - Decimal(stop["executedQty"]))
                stop["status"], stop["updateTime"] = "CANCELED", self.server_time_ms()
                return self._stop_answer(stop)
        raise ApiError(400, -2011, "Unknown order sent.")

    def _unlock(self, qty: Decimal) -> None:
        self.locked[self.base] = self.locked.get(self.base, Decimal(0)) - qty
        self.balances[self.base] = self.balances.get(self.base, Decimal(0)) + qty

    def _trigger_spot_stops(self, price: Decimal) -> None:
        """spot "Order types": a SELL STOP_LOSS becomes a market order once the last price is at or below its
        stopPrice, filled at that trade's price here; a STOP_LOSS_LIMIT becomes a limit order at its price and
        fills at the first trade at or above that price (a fall through the limit leaves it open)."""
        for stop in self.spot_stops:
            if stop["status"] != "NEW":
                continue
            if not stop["triggered"] and price > Decimal(stop["stopPrice"]):
                continue
            stop["triggered"] = stop["isWorking"] = True
            if stop["type"] == "STOP_LOSS_LIMIT" and price < Decimal(stop["price"]):
                continue  # a working limit order below the market's price now
            qty = Decimal(stop["origQty"])
            self._unlock(qty)
            order = self._execute_spot({"side": "SELL", "quantity": e8(qty),
                                        "newClientOrderId": stop["clientOrderId"]}, price, order_type=stop["type"])
            self.orders[-1]["orderId"] = stop["orderId"]  # one order at Binance: the stop, now filled
            stop.update(status="FILLED", executedQty=order["executedQty"], updateTime=order["transactTime"],
                        cummulativeQuoteQty=order["cummulativeQuoteQty"])

    # -- futures account ------------------------------------------------------------------------------

    def _futures_order(self, params: dict) -> dict:
        # fapi "Trade" > "New Order (TRADE)": MARKET by quantity; reduceOnly may only shrink the position
        # (-2022); an opening order below the minimum notional is -4164, beyond the margin -2019.
        if params.get("type") in CONDITIONAL_TYPES:
            # fapi change log 2025-11-06: from 2025-12-09 conditional orders live in the Algo Service; the
            # order endpoint refuses them with -4120 STOP_ORDER_SWITCH_ALGO.
            raise ApiError(400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API "
                                       "endpoints instead.")
        self._check_order_params(params)
        # fapi "New Order": positionSide defaults to BOTH, which hedge mode refuses (-4061).
        if self.futures_dual_side and params.get("positionSide", "BOTH") == "BOTH":
            raise ApiError(400, -4061, "Order's position side does not match user's setting.")
        qty = Decimal(params.get("quantity", "0"))
        if qty <= 0 or qty % self.step or qty < self.min_qty:
            raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
        if qty > self.market_max_qty:  # fapi error -4005 QTY_GREATER_THAN_MAX_QTY (MARKET_LOT_SIZE)
            raise ApiError(400, -4005, "Quantity greater than max quantity.")
        return self._execute_futures(params, qty, self.last_price())

    def _execute_futures(self, params: dict, qty: Decimal, price: Decimal, orig_type: str = "MARKET") -> dict:
        """Execute a futures market order of `qty` at `price` (a MARKET order, or a triggered stop's order)."""
        signed = qty if params["side"] == "BUY" else -qty
        amount, entry = self.futures_amount, self.futures_entry
        new_amount = amount + signed
        if params.get("reduceOnly") == "true" and (amount == 0 or abs(new_amount) > abs(amount)
                                                   or new_amount * amount < 0):
            raise ApiError(400, -2022, "ReduceOnly Order is rejected.")
        is_opening = abs(new_amount) > abs(amount) or new_amount * amount < 0
        if is_opening and params.get("reduceOnly") != "true":
            if qty * price < self.min_notional:
                raise ApiError(400, -4164, "Order's notional must be no smaller than 0.01 (unless you choose "
                                           "reduce only).")
            # fapi "Change Initial Leverage": the initial margin is the notional divided by the leverage.
            if abs(new_amount) * price / self.futures_leverage > self.futures_wallet:
                raise ApiError(400, -2019, "Margin is insufficient.")
        closed = min(abs(amount), qty) if amount * signed < 0 else Decimal(0)
        if closed:
            self.futures_wallet += (price - entry) * closed * (1 if amount > 0 else -1)
        if new_amount == 0:
            entry = Decimal(0)
        elif amount * new_amount <= 0:
            entry = price
        elif abs(new_amount) > abs(amount):
            entry = (entry * abs(amount) + price * qty) / abs(new_amount)
        self.futures_amount, self.futures_entry = new_amount, entry
        now_ms = self.server_time_ms()
        order = {"orderId": 8_000_000 + len(self.orders), "symbol": self.symbol, "status": "FILLED",
                 "clientOrderId": params["newClientOrderId"], "price": "0", "avgPrice": e8(price),
                 "origQty": str(qty), "executedQty": str(qty), "cumQty": str(qty), "cumQuote": e8(qty * price),
                 "timeInForce": "GTC", "type": "MARKET", "reduceOnly": params.get("reduceOnly") == "true",
                 "closePosition": False, "side": params["side"], "positionSide": "BOTH", "stopPrice": "0",
                 "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": orig_type,
                 "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
                 "updateTime": now_ms, "market": "futures", "params": params}
        self.orders.append(order)
        self._push_order_update(order, price, qty)
        if new_amount == 0:
            self._expire_close_position_stops()
        return {k: v for k, v in order.items() if k not in ("market", "params")}

    # -- futures conditional orders (the Algo Service) ------------------------------------------------

    def _new_algo_order(self, params: dict) -> dict:
        """fapi "Trade" > "New Algo Order (TRADE)": algoType CONDITIONAL; STOP_MARKET with triggerPrice, either
        closePosition=true (Close-All: no quantity, no reduceOnly) or a reduce-only quantity; workingType
        CONTRACT_PRICE (the default: the last trade price; MARK_PRICE is not modelled here)."""
        if params.get("symbol") != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")
        if params.get("algoType") != "CONDITIONAL":
            raise ApiError(400, -1116, "Invalid algoType.")
        if params.get("type") != "STOP_MARKET":
            raise ApiError(400, -1116, "Invalid orderType.")  # the only conditional type modelled
        if params.get("side") not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        if not CLIENT_ORDER_ID.match(params.get("clientAlgoId", "")):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'clientAlgoId'; legal range is "
                                       "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        if params.get("workingType", "CONTRACT_PRICE") != "CONTRACT_PRICE":
            raise ApiError(400, -1116, "workingType MARK_PRICE is not modelled by this stand-in.")
        if self.futures_dual_side and params.get("positionSide", "BOTH") == "BOTH":
            raise ApiError(400, -4061, "Order's position side does not match user's setting.")
        is_close_all = params.get("closePosition") == "true"
        if is_close_all and ("quantity" in params or "reduceOnly" in params):
            # fapi "New Order": quantity and reduceOnly "cannot be sent with closePosition=true".
            raise ApiError(400, -1106, "Parameter 'quantity' or 'reduceOnly' sent when not required.")
        if not is_close_all and params.get("reduceOnly") != "true":
            raise ApiError(400, -1116, "Only reduce-only stops are modelled by this stand-in.")
        trigger = Decimal(params.get("triggerPrice", "0"))
        if trigger <= 0:
            raise ApiError(400, -1102, "Mandatory parameter 'triggerPrice' was not sent, was empty/null, or malformed.")
        last = self.last_price()
        if (params["side"] == "SELL" and trigger >= last) or (params["side"] == "BUY" and trigger <= last):
            raise ApiError(400, -2021, "Order would immediately trigger.")  # fapi error -2021
        same_side = [a for a in self.algo_orders if a["algoStatus"] == "NEW" and a["closePosition"]
                     and a["side"] == params["side"]]
        if is_close_all and same_side:  # fapi error -4130: one Close-All stop per direction
            raise ApiError(400, -4130, "An open stop or take profit order with GTE and closePosition in the "
                                       "direction is existing.")
        now_ms = self.server_time_ms()
        algo = {"algoId": 3_000_000 + len(self.algo_orders), "clientAlgoId": params["clientAlgoId"],
                "algoType": "CONDITIONAL", "orderType": "STOP_MARKET", "symbol": self.symbol, "side": params["side"],
                "positionSide": "BOTH", "timeInForce": "GTE_GTC" if is_close_all else "GTC",
                "quantity": params.get("quantity", "0"), "algoStatus": "NEW", "triggerPrice": params["triggerPrice"],
                "price": "0", "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": is_close_all,
                "priceProtect": params.get("priceProtect", "FALSE").upper() == "TRUE",
                "reduceOnly": params.get("reduceOnly") == "true", "createTime": now_ms, "updateTime": now_ms,
                "triggerTime": 0, "goodTillDate": 0, "actualOrderId": "", "actualPrice": ""}
        self.algo_orders.append(algo)
        return dict(algo)

    def _algo_answers(self) -> list[dict]:
        with self._lock:
            return [dict(a) for a in self.algo_orders]

    def _find_algo(self, params: dict) -> dict:
        for algo in reversed(self.algo_orders):
            if algo["clientAlgoId"] == params.get("clientAlgoId") or str(algo["algoId"]) == params.get("algoId"):
                return algo
        raise ApiError(400, -2013, "Order does not exist.")

    def _query_algo_order(self, params: dict) -> dict:
        """fapi "Query Algo Order (USER_DATA)": by algoId or clientAlgoId, with its algoStatus and, once
        triggered, actualOrderId (the order it became in the matching engine)."""
        return dict(self._find_algo(params))

    def _cancel_algo_order(self, params: dict) -> dict:
        """fapi "Cancel Algo Order (TRADE)": only while NEW; -2011 "Unknown order sent." once it was triggered,
        cancelled or expired."""
        algo = self._find_algo(params)
        if algo["algoStatus"] != "NEW":
            raise ApiError(400, -2011, "Unknown order sent.")
        algo["algoStatus"], algo["updateTime"] = "CANCELED", self.server_time_ms()
        return {"algoId": algo["algoId"], "clientAlgoId": algo["clientAlgoId"], "code": "200", "msg": "success"}

    def trigger_stops(self, price: Decimal) -> None:
        """Trigger the conditional orders a trade at `price` reaches (workingType CONTRACT_PRICE: the last
        price): a SELL stop at price <= triggerPrice, a BUY stop at price >= triggerPrice. The triggered stop
        becomes a market order (origType STOP_MARKET) for the whole position (closePosition) or at most its
        reduce-only quantity; with nothing left to reduce it expires (fapi "Event: Algo Order Update")."""
        with self._lock:
            self._trigger_spot_stops(price)
            for algo in self.algo_orders:
                if algo["algoStatus"] != "NEW":
                    continue
                trigger = Decimal(algo["triggerPrice"])
                if not (price <= trigger if algo["side"] == "SELL" else price >= trigger):
                    continue
                amount = self.futures_amount
                closable = amount if algo["side"] == "SELL" else -amount
                now_ms = self.server_time_ms()
                algo["triggerTime"] = algo["updateTime"] = now_ms
                if closable <= 0:
                    algo["algoStatus"] = "EXPIRED"
                    continue
                qty = closable if algo["closePosition"] else min(closable, Decimal(algo["quantity"]))
                params = {"side": algo["side"], "newClientOrderId": algo["clientAlgoId"], "reduceOnly": "true"}
                order = self._execute_futures(params, qty, price, orig_type="STOP_MARKET")
                algo["algoStatus"], algo["actualOrderId"], algo["actualPrice"] = "FINISHED", str(order["orderId"]), \
                    order["avgPrice"]

    def _expire_close_position_stops(self) -> None:
        """fapi "Event: Algo Order Update" > EXPIRED: a GTE_GTC (Close-All) conditional order is cancelled by
        the system once the position on the symbol is closed."""
        for algo in self.algo_orders:
            if algo["algoStatus"] == "NEW" and algo["closePosition"]:
                algo["algoStatus"], algo["updateTime"] = "EXPIRED", self.server_time_ms()

    def _new_listen_key(self) -> str:
        self.listen_keys.append(f"standin-listen-key-{len(self.listen_keys)}")
        return self.listen_keys[-1]

    def _push_order_update(self, order: dict, price: Decimal, qty: Decimal) -> None:
        """fapi "User Data Streams" > "Event: Order Update" (ORDER_TRADE_UPDATE): pushed when the order
        executes, whatever became of the REST answer and however far the order query lags."""
        data = {"e": "ORDER_TRADE_UPDATE", "E": order["updateTime"], "T": order["updateTime"],
                "o": {"s": self.symbol, "c": order["clientOrderId"], "S": order["side"], "o": "MARKET", "f": "GTC",
                      "q": str(qty), "p": "0", "ap": e8(price), "sp": "0", "x": "TRADE", "X": "FILLED",
                      "i": order["orderId"], "l": str(qty), "z": str(qty), "L": e8(price), "N": self.quote,
                      "n": e8(qty * price * Decimal("0.0004")), "T": order["updateTime"], "t": order["orderId"],
                      "m": False, "R": order["reduceOnly"], "ps": "BOTH", "rp": "0"}}
        connections = [c for c, (_, kinds) in self._subscribers.items() if "user" in kinds and c not in self._silenced]
        if connections and self._loop is not None:
            self._loop.call_soon_threadsafe(broadcast, connections, json.dumps(data))

    def _position_risk(self) -> list:
        # fapi "Account" > "Position Information V3 (USER_DATA)".
        if self.futures_amount == 0:
            return []  # v3 lists only symbols with a position or open orders
        price = self.last_price()
        # fapi "Position Information V3": hedge mode reports LONG and SHORT legs instead of BOTH.
        side = ("LONG" if self.futures_amount > 0 else "SHORT") if self.futures_dual_side else "BOTH"
        return [{"symbol": self.symbol, "positionSide": side, "positionAmt": str(self.futures_amount),
                 "entryPrice": e8(self.futures_entry), "breakEvenPrice": e8(self.futures_entry),
                 "markPrice": e8(price), "unRealizedProfit": e8((price - self.futures_entry) * self.futures_amount),
                 "liquidationPrice": "0", "isolatedMargin": "0", "notional": e8(self.futures_amount * price),
                 "marginAsset": self.quote, "isolatedWallet": "0", "initialMargin": "0", "maintMargin": "0",
                 "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 1, "bidNotional": "0",
                 "askNotional": "0", "updateTime": self.server_time_ms()}]

    def _set_dual_side(self, params: dict) -> dict:
        # fapi "Change Position Mode (TRADE)" / "Get Current Position Mode (USER_DATA)": dualSidePosition.
        wanted = params.get("dualSidePosition") == "true"
        if wanted == self.futures_dual_side:  # fapi error -4059 NO_NEED_TO_CHANGE_POSITION_SIDE
            raise ApiError(400, -4059, "No need to change position side.")
        self.futures_dual_side = wanted
        return {"code": 200, "msg": "success"}

    def _set_margin_type(self, params: dict) -> dict:
        """fapi "Change Margin Type (TRADE)": CROSSED or ISOLATED; -4046 when already so; -4048 with a position."""
        wanted = params.get("marginType")
        if wanted not in ("CROSSED", "ISOLATED"):
            raise ApiError(400, -4044, "The margin type is invalid.")
        if wanted == self.futures_margin_type:
            raise ApiError(400, -4046, "No need to change margin type.")
        if self.futures_amount != 0:
            raise ApiError(400, -4048, "Margin type cannot be changed if there exists position.")
        self.futures_margin_type = wanted
        return {"code": 200, "msg": "success"}

    def _set_leverage(self, params: dict) -> dict:
        """fapi "Change Initial Leverage (TRADE)": 1 to the bracket's maximum."""
        leverage = int(params.get("leverage", 0))
        if not 1 <= leverage <= self.futures_max_leverage:
            raise ApiError(400, -4028, f"Leverage {leverage} is not valid")
        self.futures_leverage = leverage
        return {"leverage": leverage, "maxNotionalValue": "50000000", "symbol": self.symbol}

    def _symbol_config(self, params: dict) -> list:
        """fapi "Symbol Configuration (USER_DATA)": margin type and leverage per symbol."""
        return [{"symbol": self.symbol, "marginType": self.futures_margin_type, "isAutoAddMargin": "false",
                 "leverage": self.futures_leverage, "maxNotionalValue": "50000000"}]

    def _futures_balance(self) -> list:
        # fapi "Account" > "Futures Account Balance V3 (USER_DATA)": availableBalance net of initial margin.
        used = abs(self.futures_amount) * self.futures_entry / self.futures_leverage
        return [{"accountAlias": "SgsR", "asset": self.quote, "balance": e8(self.futures_wallet),
                 "crossWalletBalance": e8(self.futures_wallet), "crossUnPnl": "0.00000000",
                 "availableBalance": e8(self.futures_wallet - used),
                 "maxWithdrawAmount": e8(self.futures_wallet - used),
                 "marginAvailable": True, "updateTime": self.server_time_ms()}]


class _Handler(http.server.BaseHTTPRequestHandler):
    standin: StandIn

    def do_GET(self):
        self.standin.handle(self, "GET")

    def do_POST(self):
        self.standin.handle(self, "POST")

    def do_PUT(self):
        self.standin.handle(self, "PUT")

    def do_DELETE(self):
        self.standin.handle(self, "DELETE")

    def log_message(self, *args):
        pass



API_KEY = "standin-api-key-0123456789abcdef0123456789abcdef0123456789abcdef"
API_SECRET = "standin-api-secret-0123456789abcdef0123456789abcdef0123456789ab"
DAY_START_MS = 1570752000000  # 2019-10-11 00:00 UTC, the day of the shared XRPETH files


def start_standin(start_ms: int = DAY_START_MS + 3 * 3_600_000, speed: float = 600.0, **kwargs) -> StandIn:
    """A started stand-in replaying the shared XRPETH day from `start_ms`, with the test keys."""
    from tests.conftest import SHARED_DATA

    folder = SHARED_DATA / "binance"
    return StandIn(folder / "XRPETH-aggTrades-2019-10-11.csv", folder / "XRPETH-1m-2019-10-11.csv",
                   api_key=API_KEY, api_secret=API_SECRET, start_ms=start_ms, speed=speed, **kwargs).start()

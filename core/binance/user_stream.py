"""The account's user data stream: order updates that settle an order whose REST answer was lost, even
while Binance's order query still says it does not exist.

A reader thread holds python-binance's user socket and puts each order update on `events`, shaped as the
order query answers, for the broker, which takes them on its next check.
- Futures: `futures_user_socket` (a listenKey taken over REST and kept alive), ORDER_TRADE_UPDATE events.
- Spot: `user_socket`, which python-binance subscribes over Binance's WebSocket API
  (`userDataStream.subscribe.signature` on `ws_api_url`), executionReport events: the trades of an order
  are gathered until its final status (FILLED, EXPIRED, ...), so its fills (and fees) come whole. An order
  that is not final yet is passed on with its order id only (status NEW), which ties the account's trades
  to it.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import Callable
from decimal import Decimal

from binance.async_client import AsyncClient
from binance.ws.constants import WSListenerState
from binance.ws.streams import BinanceSocketManager
from binance.ws.websocket_api import WebsocketAPI

from core.binance.feed import QUEUE_SIZE, StreamThread
from core.binance.rest import FUTURES, SPOT, backoff_s

log = logging.getLogger(__name__)


def order_answer(message: dict) -> dict | None:
    """An ORDER_TRADE_UPDATE event as the order query would answer it; None for other messages."""
    data = message.get("data", message)
    if data.get("e") != "ORDER_TRADE_UPDATE":
        return None
    o = data["o"]
    executed = Decimal(o["z"])
    return {"clientOrderId": o["c"], "orderId": o["i"], "status": o["X"], "side": o["S"],
            "executedQty": o["z"], "cumQuote": format(executed * Decimal(o["ap"]), "f"), "updateTime": o["T"]}


WS_API_TIMEOUT_S = 5  # a WebSocket API request unanswered this long failed (python-binance: 10 s)
FINAL_STATUSES = ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED")


class ExecutionReports:
    """Spot executionReport events gathered per order into order-query answers (with their fills)."""

    def __init__(self):
        self._fills: dict[str, list[dict]] = {}

    def answer(self, message: dict) -> dict | None:
        """The answer an executionReport gives: the whole order once it is final, its order id (status NEW)
        on the first report, else None (a trade of an order still filling, or another event)."""
        event = message.get("event", message)
        if event.get("e") != "executionReport":
            return None
        # "Order Update": c is the client order id, except on a cancel, where C is the order's own.
        client_id = event["C"] if event["X"] == "CANCELED" and event.get("C") else event["c"]
        is_first = client_id not in self._fills
        fills = self._fills.setdefault(client_id, [])
        if event["x"] == "TRADE":
            fills.append({"price": event["L"], "qty": event["l"], "commission": event["n"],
                          "commissionAsset": event["N"] or "", "tradeId": event["t"]})
        answer = {"clientOrderId": client_id, "orderId": event["i"], "status": event["X"], "side": event["S"],
                  "executedQty": event["z"], "cummulativeQuoteQty": event["Z"], "transactTime": event["T"]}
        if event["X"] in FINAL_STATUSES:
            self._fills.pop(client_id)
            if sum((Decimal(f["qty"]) for f in fills), Decimal(0)) == Decimal(event["z"]):
                answer["fills"] = fills  # every trade seen: the fees are whole (else they stay unknown)
            return answer
        return {**answer, "status": "NEW"} if is_first else None


class UserStreamReader(StreamThread):
    """Reads the account's user data stream (futures, or spot over the WebSocket API) in its own thread;
    order answers go on `events`."""

    def __init__(self, api_key: str, api_secret: str, rest_url: str, stream_url: str,
                 random: Callable[[], float] = _random.random, market: str = FUTURES, ws_api_url: str = ""):
        super().__init__("binance-user-stream", random)
        self._keys = (api_key, api_secret)
        self.rest_url = rest_url
        self.stream_url = stream_url
        self.ws_api_url = ws_api_url
        self.market = market
        self._reports = ExecutionReports()

    async def _read(self) -> None:
        client = AsyncClient(*self._keys)  # makes no network call until the socket subscribes
        client.FUTURES_URL = self.rest_url
        if self.market == SPOT:  # python-binance subscribes the spot user stream over its WebSocket API
            client.ws_api = WebsocketAPI(url=self.ws_api_url)  # not connected yet: nothing to close
            client.ws_api.TIMEOUT = WS_API_TIMEOUT_S
        manager = BinanceSocketManager(client, max_queue_size=QUEUE_SIZE)
        manager.FSTREAM_URL = self.stream_url
        failures = 0
        try:
            while not self._closing.is_set():
                if self.market == SPOT:
                    # A fresh manager each time: python-binance keeps a spot user socket (and the messages
                    # left in its queue, such as the error that ended it) for reuse otherwise.
                    manager = BinanceSocketManager(client, max_queue_size=QUEUE_SIZE)
                    socket = manager.user_socket()
                else:
                    socket = manager.futures_user_socket()
                socket.TIMEOUT = 1
                try:
                    async with socket as stream:
                        self.connections += 1
                        failures = 0
                        await self._pump(stream, client.ws_api.ws if self.market == SPOT else None, client)
                except Exception as exc:  # noqa: BLE001 - any failure: log it, then connect again
                    log.warning("user data stream: %s: %s", type(exc).__name__, exc)
                if self._closing.is_set():
                    break
                failures += 1
                await self._pause(backoff_s(failures, self.random))
        finally:
            ws_api = client.ws_api if self.market == SPOT else None
            if ws_api is not None and ws_api.ws is not None:
                # python-binance ends its WebSocket API read loop only once a read times out (TIMEOUT, 5 s
                # here): marked as exiting, with its connection closed, it ends at once.
                ws_api.ws_state = WSListenerState.EXITING
                await ws_api.ws.close()
            await client.close_connection()

    async def _pump(self, stream, ws_api_connection, client) -> None:
        while not self._closing.is_set():
            if ws_api_connection is not None and client.ws_api.ws is not ws_api_connection:
                # python-binance opens its WebSocket API connection again by itself, but a subscription
                # lives and dies with its connection (spot "User Data Streams"): subscribe again.
                raise ConnectionError("the WebSocket API connection was lost: subscribing again")
            try:
                message = await asyncio.wait_for(stream.recv(), 1.0)
            except asyncio.TimeoutError:
                continue
            if message.get("e") == "error":
                raise ConnectionError(f"{message.get('type')}: {message.get('m')}")
            answer = self._reports.answer(message) if self.market == SPOT else order_answer(message)
            if answer is not None:
                self.events.put(answer)

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))

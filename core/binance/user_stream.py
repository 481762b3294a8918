"""The futures account's user data stream: ORDER_TRADE_UPDATE events, which settle an order whose REST
answer was lost even while Binance's order query still says it does not exist.

A reader thread holds python-binance's futures user socket (it takes a listenKey over REST and keeps it
alive) and puts each order update on `events` for the broker, which takes them on its next check.
Spot is not covered: python-binance subscribes the spot user stream over Binance's WebSocket API.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random as _random
import threading
import time
from collections.abc import Callable
from decimal import Decimal

from binance.async_client import AsyncClient
from binance.ws.streams import BinanceSocketManager

from core.binance.feed import QUEUE_SIZE
from core.binance.rest import backoff_s

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


class UserStreamReader(threading.Thread):
    """Reads the futures user data stream in its own thread; order answers go on `events`."""

    def __init__(self, api_key: str, api_secret: str, rest_url: str, stream_url: str,
                 random: Callable[[], float] = _random.random):
        super().__init__(name="binance-user-stream", daemon=True)
        self._keys = (api_key, api_secret)
        self.rest_url = rest_url
        self.stream_url = stream_url
        self.random = random
        self.events: queue.Queue = queue.Queue()
        self.connections = 0
        self._closing = threading.Event()

    def run(self) -> None:
        asyncio.run(self._read())

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop reading and wait for the thread."""
        self._closing.set()
        if self.is_alive():
            self.join(timeout_s)

    async def _read(self) -> None:
        client = AsyncClient(*self._keys)  # makes no network call until the socket asks for a listenKey
        client.FUTURES_URL = self.rest_url
        manager = BinanceSocketManager(client, max_queue_size=QUEUE_SIZE)
        manager.FSTREAM_URL = self.stream_url
        failures = 0
        try:
            while not self._closing.is_set():
                socket = manager.futures_user_socket()
                socket.TIMEOUT = 1
                try:
                    async with socket as stream:
                        self.connections += 1
                        failures = 0
                        await self._pump(stream)
                except Exception as exc:  # noqa: BLE001 - any failure: log it, then connect again
                    log.warning("user data stream: %s: %s", type(exc).__name__, exc)
                if self._closing.is_set():
                    break
                failures += 1
                await self._pause(backoff_s(failures, self.random))
        finally:
            await client.close_connection()

    async def _pump(self, stream) -> None:
        while not self._closing.is_set():
            try:
                message = await asyncio.wait_for(stream.recv(), 1.0)
            except asyncio.TimeoutError:
                continue
            if message.get("e") == "error":
                raise ConnectionError(f"{message.get('type')}: {message.get('m')}")
            answer = order_answer(message)
            if answer is not None:
                self.events.put(answer)

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))

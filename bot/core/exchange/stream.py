"""Top-of-book stream from Bybit's public websocket (`orderbook.1.{SYMBOL}`) for asyncio.

pybit's WebSocket runs its callbacks on its own thread; each message becomes a
Quote (best bid/ask of the book pybit maintains from the snapshot and deltas) and
is handed to the event loop with `call_soon_threadsafe`. On the loop side:

- Order: a message older than the last one accepted for its symbol (exchange `ts`
  in ms, then the book's update id `u`) is dropped and counted, so a reconnect
  never yields a duplicate or an out-of-order quote.
- Reconnects: one path only, this module's watchdog (pybit's own restart is off).
  Every `check_every_s` it checks the socket; if it is closed, or no message came
  for `stale_after_s` while symbols are subscribed (Bybit re-sends a depth-1
  snapshot every ~3 s even when nothing changes, so silence means a dead stream),
  it abandons the connection, opens a new one and subscribes every wanted symbol
  again, with exponential backoff between failed attempts.
- Symbols follow `set_symbols`: new ones are subscribed on the live connection,
  removed ones unsubscribed (one topic per subscription message, so pybit's
  unsubscribe removes exactly that topic) and filtered out at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

from pybit.unified_trading import WebSocket

from bot.core.exchange.interface import Quote

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """Raised inside pybit's threads once a connection has been given up."""


class _LocalWebSocket(WebSocket):  # type: ignore[misc]
    """pybit's WebSocket, optionally pointed at another URL (a local fake in tests),
    and able to be abandoned (pybit's subscribe waits forever for a connection)."""

    def __init__(self, url: str | None, **kwargs: Any):
        self._url_override = url
        self._abandoned = False
        super().__init__(**kwargs)

    def _connect(self, url: str) -> None:
        super()._connect(self._url_override or url)

    def is_connected(self) -> bool:
        if self._abandoned:
            raise _Abandoned()
        return bool(super().is_connected())


def quote_from_book(message: dict[str, Any], received: float) -> Quote | None:
    """The top of book of a pybit orderbook callback (its `data` is the whole book).

    None for a one-sided or crossed book (pybit keys levels by their price string, so
    a venue that changed its formatting could leave a stale level behind: such a book
    is not a price).
    """
    data = message.get("data") or {}
    bids, asks = data.get("b") or [], data.get("a") or []
    if not bids or not asks:
        return None
    bid = max(bids, key=lambda lv: Decimal(lv[0]))
    ask = min(asks, key=lambda lv: Decimal(lv[0]))
    if Decimal(bid[0]) >= Decimal(ask[0]):
        return None
    return Quote(data["s"], int(message["ts"]) / 1000.0, Decimal(bid[0]), Decimal(ask[0]), Decimal(bid[1]),
                 Decimal(ask[1]), received)


class BybitQuoteStream:
    """`await stream.start(symbols)`, then `await stream.get()` -> Quote; `await stream.close()`."""

    def __init__(self, url: str | None = None, *, testnet: bool = False, stale_after_s: float = 10.0,
                 check_every_s: float = 0.25, connect_timeout_s: float = 10.0, max_backoff_s: float = 30.0):
        self.url = url
        self.testnet = testnet
        self.stale_after_s = stale_after_s
        self.check_every_s = check_every_s
        self.connect_timeout_s = connect_timeout_s
        self.max_backoff_s = max_backoff_s
        self.queue: asyncio.Queue[Quote] = asyncio.Queue()
        self.reconnects = 0
        self.dropped_out_of_order = 0
        self.messages = 0
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._ws: _LocalWebSocket | None = None
        self._last: dict[str, tuple[int, int]] = {}
        self._last_received: dict[str, float] = {}
        self._last_message = 0.0
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ public

    async def start(self, symbols: set[str] | list[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._wanted = set(symbols)
        async with self._lock:
            await self._reconnect(first=True)
        self._watchdog = asyncio.create_task(self._watch(), name="quote-stream-watchdog")

    async def get(self) -> Quote:
        return await self.queue.get()

    def age(self, symbol: str, now: float | None = None) -> float:
        """Seconds since the last quote of `symbol` arrived (inf when none has)."""
        last = self._last_received.get(symbol)
        return float("inf") if last is None else (now if now is not None else time.time()) - last

    @property
    def symbols(self) -> set[str]:
        return set(self._wanted)

    async def set_symbols(self, symbols: set[str] | list[str]) -> None:
        new = set(symbols)
        async with self._lock:
            removed = self._wanted - new
            self._wanted = new
            ws = self._ws
            if ws is None or not self._alive(ws):
                return  # the watchdog subscribes everything on the next connection
            try:
                for s in sorted(new - self._subscribed):
                    await self._subscribe(ws, s)
                for s in sorted(removed & self._subscribed):
                    await asyncio.wait_for(asyncio.to_thread(ws.unsubscribe, f"orderbook.1.{s}"),
                                           self.connect_timeout_s)
                    self._subscribed.discard(s)
            except Exception as e:  # the watchdog will rebuild the connection
                log.warning("quote stream: changing subscriptions failed (%s); reconnecting", e)
                self._abandon(ws)
            log.info("quote stream: %d symbols (%d removed)", len(new), len(removed))

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
        if self._ws is not None:
            await self._exit(self._ws)
            self._ws = None

    # ------------------------------------------------------------ pybit thread side

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            q = quote_from_book(message, time.time())
            if q is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver, q, int((message.get("data") or {}).get("u", 0)))
        except Exception:  # an exception here would make pybit close the connection
            log.exception("quote stream: bad message %s", str(message)[:200])

    # ------------------------------------------------------------ loop side

    def _deliver(self, q: Quote, u: int) -> None:
        if q.symbol not in self._wanted:
            return
        ts = round(q.ts * 1000)
        last = self._last.get(q.symbol)
        if last is not None and (ts < last[0] or (ts == last[0] and u <= last[1])):
            self.dropped_out_of_order += 1
            return
        self._last[q.symbol] = (ts, u)
        self._last_received[q.symbol] = q.received
        self._last_message = time.monotonic()
        self.messages += 1
        self.queue.put_nowait(q)

    @staticmethod
    def _alive(ws: _LocalWebSocket) -> bool:
        try:
            return ws.is_connected()
        except _Abandoned:
            return False

    def _abandon(self, ws: _LocalWebSocket) -> None:
        ws._abandoned = True

    async def _exit(self, ws: _LocalWebSocket) -> None:
        ws._abandoned = True
        try:
            await asyncio.wait_for(asyncio.to_thread(ws.exit), 5.0)
        except Exception as e:  # the socket is gone either way
            log.debug("quote stream: exit of old connection: %s", e)

    async def _subscribe(self, ws: _LocalWebSocket, symbol: str) -> None:
        await asyncio.wait_for(asyncio.to_thread(ws.orderbook_stream, 1, symbol, self._on_message),
                               self.connect_timeout_s)
        self._subscribed.add(symbol)

    def _make(self) -> _LocalWebSocket:
        # retries=2: pybit raises after its last attempt even when that attempt
        # connected, so 2 means one real attempt; the watchdog does the retrying
        return _LocalWebSocket(self.url, channel_type="linear", testnet=self.testnet, restart_on_error=False,
                               retries=2, ping_interval=20, ping_timeout=10)

    async def _reconnect(self, first: bool = False) -> None:
        old = self._ws
        self._ws = None
        if old is not None:
            await self._exit(old)
        self._subscribed = set()
        ws = await asyncio.wait_for(asyncio.to_thread(self._make), self.connect_timeout_s)
        self._ws = ws
        for s in sorted(self._wanted):
            await self._subscribe(ws, s)
        self._last_message = time.monotonic()
        if not first:
            self.reconnects += 1
            log.warning("quote stream: reconnected, %d symbols resubscribed", len(self._wanted))

    async def _watch(self) -> None:
        failures = 0
        while not self._closed:
            await asyncio.sleep(self.check_every_s)
            ws = self._ws
            stale = bool(self._wanted) and time.monotonic() - self._last_message > self.stale_after_s
            if ws is not None and self._alive(ws) and not stale:
                failures = 0
                continue
            alive = ws is not None and self._alive(ws)
            reason = f"stale (no message for {self.stale_after_s:.1f} s)" if stale and alive else "connection lost"
            log.warning("quote stream: %s; reconnecting", reason)
            try:
                async with self._lock:
                    await self._reconnect()
                failures = 0
            except Exception as e:
                failures += 1
                wait = min(self.max_backoff_s, 0.5 * 2 ** failures)
                log.warning("quote stream: reconnect failed (%s: %s); next try in %.1f s", type(e).__name__, e, wait)
                await asyncio.sleep(wait)

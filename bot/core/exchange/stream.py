"""Top-of-book stream from Bybit's public websocket (`orderbook.1.{SYMBOL}`) for asyncio.

pybit's WebSocket owns the connection, the pings and the subscription messages;
every incoming message goes to this module's raw callback (pybit's
`callback_function`), on pybit's thread. pybit's own per-topic dispatch is not
used: it registers a topic's callback only AFTER sending the subscription, so a
venue that answers fast (a snapshot within microseconds, as on loopback) hits a
KeyError that makes pybit close the connection. Here the book of each symbol is
kept per connection (`Book`: a snapshot resets it, a delta sets or, with size
0, deletes a price level; levels keyed by Decimal price, so "150.0" and "150.00"
are one level), and its top becomes a Quote handed to the event loop with
`call_soon_threadsafe`. On the loop side:

- Order: a message older than the last one accepted for its symbol (exchange `ts`
  in ms, then the book's update id `u`) is dropped and counted, so a reconnect
  never yields a duplicate or an out-of-order quote.
- Reconnects: one path only, this module's watchdog (pybit's own restart is off).
  Every `check_every_s` it checks the socket; if it is closed, or no message came
  for `stale_after_s` while symbols are subscribed (Bybit re-sends a depth-1
  snapshot every ~3 s even when nothing changes, so silence means a dead stream),
  it abandons the connection, opens a new one and subscribes every wanted symbol
  again (each starts from a fresh snapshot), with exponential backoff between
  failed attempts.
- Symbols follow `set_symbols`: new ones are subscribed on the live connection,
  removed ones unsubscribed (one topic per subscription message, so pybit's
  unsubscribe removes exactly that topic) and filtered out at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pybit.unified_trading import WebSocket

from bot.core.exchange.interface import Quote

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """Raised inside pybit's threads once a connection has been given up."""


class Book:
    """One symbol's order book from `orderbook.N` snapshot and delta messages."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, str] = {}
        self.asks: dict[Decimal, str] = {}

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "snapshot":
            self.bids.clear()
            self.asks.clear()
        for side, levels in ((self.bids, data.get("b") or []), (self.asks, data.get("a") or [])):
            for price, size in levels:
                p = Decimal(price)
                if Decimal(size) == 0:
                    side.pop(p, None)
                else:
                    side[p] = size

    def top(self) -> tuple[Decimal, Decimal, Decimal, Decimal] | None:
        """(bid, ask, bid size, ask size); None when a side is empty or the book is crossed."""
        if not self.bids or not self.asks:
            return None
        bid, ask = max(self.bids), min(self.asks)
        if bid >= ask:
            return None
        return bid, ask, Decimal(self.bids[bid]), Decimal(self.asks[ask])


def quote_from_book(message: dict[str, Any], received: float, book: Book | None = None) -> Quote | None:
    """Apply one orderbook message to `book` (a fresh one if None) and return its top as a Quote."""
    book = book if book is not None else Book()
    data = message.get("data") or {}
    book.apply(message.get("type", "snapshot"), data)
    top = book.top()
    if top is None:
        return None
    return Quote(data["s"], int(message["ts"]) / 1000.0, top[0], top[1], top[2], top[3], received)


class _LocalWebSocket(WebSocket):  # type: ignore[misc]
    """pybit's WebSocket with every message sent to `on_raw(self, message)`, optionally
    pointed at another URL (a local fake in tests), and able to be abandoned (pybit's
    subscribe waits forever for a connection that is gone)."""

    def __init__(self, url: str | None, on_raw: Callable[[_LocalWebSocket, dict[str, Any]], None], **kwargs: Any):
        self._url_override = url
        self._abandoned = False
        self.books: dict[str, Book] = {}
        super().__init__(callback_function=lambda message: on_raw(self, message), **kwargs)

    def _connect(self, url: str) -> None:
        super()._connect(self._url_override or url)

    def is_connected(self) -> bool:
        if self._abandoned:
            raise _Abandoned()
        return bool(super().is_connected())


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
        """Connect and subscribe; if the venue is unreachable now, the watchdog keeps trying
        (a service must outlive a venue outage at its start)."""
        self._loop = asyncio.get_running_loop()
        self._wanted = set(symbols)
        try:
            async with self._lock:
                await self._reconnect(first=True)
        except Exception as e:
            log.warning("quote stream: first connection failed (%s: %s); retrying in the background",
                        type(e).__name__, e)
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

    @property
    def healthy(self) -> bool:
        """Connected, subscribed and not stale: False while the stream is reconnecting (the
        executor opens nothing then: quotes missed during a reconnect are not replayed)."""
        ws = self._ws
        if ws is None or self._closed or not self._alive(ws):
            return False
        return not (self._wanted and time.monotonic() - self._last_message > self.stale_after_s)

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

    def _on_raw(self, ws: _LocalWebSocket, message: dict[str, Any]) -> None:
        try:
            if ws._abandoned:
                return  # a message still in flight on a connection already replaced
            topic = message.get("topic", "")
            if topic.startswith("orderbook."):
                sym = (message.get("data") or {}).get("s") or topic.rsplit(".", 1)[-1]
                book = ws.books.setdefault(sym, Book())
                q = quote_from_book(message, time.time(), book)
                if q is not None and self._loop is not None:
                    u = int((message.get("data") or {}).get("u", 0))
                    self._loop.call_soon_threadsafe(self._deliver, q, u)
            elif message.get("op") == "unsubscribe":
                ws._process_unsubscription_message(message)
            elif message.get("op") == "subscribe" and message.get("success") is False:
                log.error("quote stream: subscription refused: %s", message.get("ret_msg"))
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
        await asyncio.wait_for(asyncio.to_thread(ws.orderbook_stream, 1, symbol, _unused_callback),
                               self.connect_timeout_s)
        self._subscribed.add(symbol)

    def _make(self) -> _LocalWebSocket:
        # retries=2: pybit raises after its last attempt even when that attempt
        # connected, so 2 means one real attempt; the watchdog does the retrying
        return _LocalWebSocket(self.url, self._on_raw, channel_type="linear", testnet=self.testnet,
                               restart_on_error=False, retries=2, ping_interval=20, ping_timeout=10)

    async def _reconnect(self, first: bool = False) -> None:
        old = self._ws
        self._ws = None
        if old is not None:
            await self._exit(old)
        self._subscribed = set()
        ws = await asyncio.wait_for(asyncio.to_thread(self._make), self.connect_timeout_s)
        try:
            for s in sorted(self._wanted):
                await self._subscribe(ws, s)
        except BaseException:
            await self._exit(ws)  # never leave pybit's subscribe spinning on a dead socket
            raise
        self._ws = ws
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


def _unused_callback(message: dict[str, Any]) -> None:
    """pybit wants a per-topic callback; every message goes to the raw callback instead."""

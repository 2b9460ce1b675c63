"""The market-data recorder: top of book of the traded symbols into the quotes table.

What is stored. Every `interval_s` (default `data.quote_interval_s` = 5 s) on the
UTC grid t = k * interval_s, one row per symbol: the latest top of book RECEIVED
before t, stamped t. A row never uses a message that arrived at or after its
timestamp (no look-ahead in what the backtester later reads), a symbol gets at
most one row per grid time and its rows are strictly increasing in time (so a
websocket reconnect cannot store a duplicate or an out-of-order quote). A book
older than `max_age_s` at t is not stored (a stale price must not look fresh);
those skips are counted.

Symbols: both tokens of every row of the `pairs` table plus the reference
symbols (BTC, ETH, SOL), re-read on NOTIFY `pairs_changed` and after every
reconnect of the listening connection (a notification may have been missed).

Writes: a writer task takes up to `batch_max` rows in order and COPYs them
(`append_quote_rows`: asyncpg's record COPY, the day partition checked once per day). When Postgres is unreachable the rows stay
buffered, the write is retried with backoff, and they are flushed in order when
it is back. The buffer holds at most `buffer_max` rows; beyond that the OLDEST
rows are dropped and counted (`stats.dropped`) -- the recent past is what the
executor's warm-up and the next bars need, and the 5m/1h bars of a gap can be
backfilled from klines. A retry after a failed commit uses the idempotent
(ON CONFLICT DO NOTHING) path, so a batch that did commit before the connection
broke is not written twice.

Bars: at start (catching up the last hour, e.g. quotes recorded before a restart) and
after each 5-minute boundary, the 5m and 1h bars that completed since the last
successful build are built from the stored quotes (`build_bars_from_quotes`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from bot.core.db.market import append_quote_rows, build_bars_from_quotes, symbol_of
from bot.core.exchange.interface import Quote

log = logging.getLogger(__name__)

DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
             ConnectionError, TimeoutError)


class QuoteSource(Protocol):
    async def get(self) -> Quote: ...

    async def set_symbols(self, symbols: set[str] | list[str]) -> None: ...


@dataclass
class RecorderStats:
    received: int = 0
    sampled: int = 0
    written: int = 0
    dropped: int = 0  # oldest rows dropped when the buffer was full
    stale_skipped: int = 0
    late_samples: int = 0  # sampler ran so late that no kept quote predates t (row skipped)
    write_failures: int = 0
    max_buffered: int = 0
    batches: int = 0
    bars_built: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))  # receive -> commit, s
    sample_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))  # grid t -> commit, s


def pair_symbols(pairs: Iterable[dict[str, Any]], reference: Iterable[str]) -> set[str]:
    """Exchange symbols of every token of `pairs` plus the reference tokens."""
    out = {symbol_of(r) for r in reference}
    for p in pairs:
        out.add(symbol_of(p["token_1"]))
        out.add(symbol_of(p["token_2"]))
    return out


def grid_after(t: float, interval_s: float) -> float:
    """The first grid time strictly after t."""
    return (math.floor(t / interval_s) + 1) * interval_s


class QuoteRecorder:
    def __init__(self, pool: asyncpg.Pool, source: QuoteSource, *, interval_s: float = 5.0,
                 reference: Iterable[str] = ("BTC", "ETH", "SOL"), max_age_s: float = 30.0,
                 buffer_max: int = 200_000, batch_max: int = 20_000, retry_s: float = 0.5,
                 max_retry_s: float = 10.0, dsn: str | None = None, follow_pairs: bool = True,
                 symbols: Iterable[str] | None = None, bars: bool = True,
                 clock: Callable[[], float] = time.time):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive (got {interval_s})")
        if buffer_max < 1 or batch_max < 1:
            raise ValueError("buffer_max and batch_max must be at least 1")
        self.pool = pool
        self.source = source
        self.interval_s = interval_s
        self.reference = tuple(reference)
        self.max_age_s = max_age_s
        self.buffer_max = buffer_max
        self.batch_max = batch_max
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.dsn = dsn
        self.follow_pairs = follow_pairs
        self.bars = bars
        self.clock = clock
        self.stats = RecorderStats()
        self.symbols: set[str] = set(symbols) if symbols is not None else {symbol_of(r) for r in self.reference}
        # per symbol: recent quotes (to pick the last one received before t), last grid time stored
        self._recent: dict[str, deque[Quote]] = {}
        self._last_t: dict[str, float] = {}
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._bars_from: float | None = None
        self._stopping = False
        self._stop_deadline = math.inf
        self._days_ready: set[int] = set()  # UTC days whose quotes partition is known to exist

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Run until cancelled or `stop()`; pending rows are flushed on the way out."""
        if self.follow_pairs:
            await self._reload_pairs_once()
        await self.source.set_symbols(self.symbols)
        tasks = [asyncio.create_task(self._consume(), name="recorder-consume"),
                 asyncio.create_task(self._sample_loop(), name="recorder-sample"),
                 asyncio.create_task(self._write_loop(), name="recorder-write")]
        if self.bars:
            tasks.append(asyncio.create_task(self._bars_loop(), name="recorder-bars"))
        if self.follow_pairs:
            tasks.append(asyncio.create_task(self._listen_loop(), name="recorder-pairs"))
        writer = tasks[2]
        try:
            # the writer returns after stop() once the buffer is flushed (the sampler returns
            # earlier and must not cut the flush short); any task failing ends the run
            pending = set(tasks)
            while writer in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Stop sampling; the writer flushes what is buffered (giving up after flush_timeout_s)."""
        self._stopping = True
        self._stop_deadline = time.monotonic() + flush_timeout_s
        self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._inflight

    # ------------------------------------------------------------ quotes in

    async def _consume(self) -> None:
        while True:
            self.on_quote(await self.source.get())

    def on_quote(self, q: Quote) -> None:
        """Keep a quote as a candidate for the next grid times (`q.received` is when it arrived)."""
        if q.symbol not in self.symbols:
            return
        self.stats.received += 1
        dq = self._recent.get(q.symbol)
        if dq is None:
            dq = self._recent[q.symbol] = deque(maxlen=64)
        dq.append(q)

    def sample(self, t: float) -> int:
        """Append the rows of grid time t (latest quote received before t) to the buffer."""
        n = 0
        for sym in sorted(self.symbols):
            if self._last_t.get(sym, -math.inf) >= t:
                continue
            dq = self._recent.get(sym)
            if not dq:
                continue
            q = None
            for cand in reversed(dq):
                if cand.received < t:
                    q = cand
                    break
            if q is None:
                self.stats.late_samples += 1
                continue
            if t - q.received > self.max_age_s:
                self.stats.stale_skipped += 1
                continue
            self._last_t[sym] = t
            self._append((sym, t, float(q.bid), float(q.ask), float(q.bid_size), float(q.ask_size), q.received, q.ts))
            n += 1
        self.stats.sampled += n
        if n:
            self._wake.set()
        return n

    def _append(self, row: tuple[Any, ...]) -> None:
        self._buffer.append(row)
        self._trim()
        self.stats.max_buffered = max(self.stats.max_buffered, self.buffered)

    def _trim(self) -> None:
        """Hold the bound: drop (and count) the oldest rows not being written."""
        while self.buffered > self.buffer_max and self._buffer:
            self._buffer.popleft()
            self.stats.dropped += 1

    async def _sample_loop(self) -> None:
        t = grid_after(self.clock(), self.interval_s)
        while not self._stopping:
            await asyncio.sleep(max(0.0, t - self.clock()))
            if self._stopping:
                return
            self.sample(t)
            t = grid_after(max(t, self.clock() - self.interval_s), self.interval_s)

    # ------------------------------------------------------------ rows out

    async def _write_loop(self) -> None:
        delay = self.retry_s
        retrying = False
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self._buffer), self.batch_max)
            batch = [self._buffer.popleft() for _ in range(n)]
            self._inflight = n
            try:
                await self._write(batch, idempotent=retrying)
            except DB_ERRORS as e:
                self._inflight = 0
                self._buffer.extendleft(reversed(batch))  # back in front, order kept
                self._trim()
                self.stats.write_failures += 1
                retrying = True
                if self._stopping and time.monotonic() > self._stop_deadline:
                    log.error("recorder: stopping with %d rows unwritten (database unreachable)", self.buffered)
                    return
                log.warning("recorder: write of %d rows failed (%s: %s); %d buffered, retry in %.1f s",
                            n, type(e).__name__, str(e)[:120], self.buffered, delay)
                await asyncio.sleep(delay)
                delay = min(self.max_retry_s, delay * 2)
                continue
            self._inflight = 0
            if retrying:
                log.info("recorder: database back, flushed %d rows; %d still buffered", n, self.buffered)
            retrying = False
            delay = self.retry_s

    async def _write(self, batch: list[tuple[Any, ...]], idempotent: bool) -> None:
        days = {int(r[1] // 86400) for r in batch}
        await append_quote_rows(self.pool, [r[:6] for r in batch], idempotent=idempotent,
                                ensure_partitions=not days <= self._days_ready)
        self._days_ready |= days
        done = time.time()
        self.stats.written += len(batch)
        self.stats.batches += 1
        self.stats.latencies.extend(done - r[6] for r in batch)
        self.stats.sample_latencies.extend(done - r[1] for r in batch)

    # ------------------------------------------------------------ bars

    async def _bars_loop(self, step_s: float = 300.0) -> None:
        # catch up at start: the bars of the last hour's quotes (those recorded before a stop or a
        # crash were never built: the build runs after each boundary)
        self._bars_from = None
        await self.build_bars()
        while True:
            await asyncio.sleep(max(0.0, grid_after(self.clock(), step_s) + 1.0 - self.clock()))
            await self.build_bars()

    async def build_bars(self, now: float | None = None) -> int:
        """Build the 5m and 1h bars completed since the last successful build."""
        now = self.clock() if now is None else now
        start = self._bars_from if self._bars_from is not None else now - 3600
        lo = dt.datetime.fromtimestamp(math.floor(start / 3600) * 3600, dt.UTC)
        hi = dt.datetime.fromtimestamp(now, dt.UTC)
        try:
            n = 0
            for tf in ("5m", "1h"):
                n += await build_bars_from_quotes(self.pool, tf, lo, hi, sorted(self.symbols))
        except DB_ERRORS as e:
            log.warning("recorder: bar build failed (%s); retried at the next boundary", type(e).__name__)
            return 0
        self._bars_from = now
        self.stats.bars_built += n
        return n

    # ------------------------------------------------------------ pairs

    async def _set_symbols(self, symbols: set[str]) -> None:
        if symbols != self.symbols:
            added, removed = symbols - self.symbols, self.symbols - symbols
            log.info("recorder: symbols %d (+%s -%s)", len(symbols), sorted(added), sorted(removed))
            self.symbols = symbols
            await self.source.set_symbols(symbols)

    async def _read_pair_symbols(self, conn: asyncpg.Connection) -> set[str]:
        from bot.core.db.selection import read_pairs

        return pair_symbols(await read_pairs(conn), self.reference)

    async def _reload_pairs_once(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                self.symbols = await self._read_pair_symbols(conn)
        except DB_ERRORS as e:
            log.warning("recorder: cannot read pairs yet (%s); recording the reference symbols", type(e).__name__)

    async def _listen_once(self, conn: asyncpg.Connection) -> None:
        """Follow the pairs on one connection until it is lost."""
        changed, lost = asyncio.Event(), asyncio.Event()
        await conn.add_listener("pairs_changed", lambda *_: changed.set())
        conn.add_termination_listener(lambda *_: lost.set())
        await self._set_symbols(await self._read_pair_symbols(conn))  # a notice may have been missed
        while not lost.is_set():
            waiters = {asyncio.create_task(changed.wait()), asyncio.create_task(lost.wait())}
            await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if changed.is_set():
                changed.clear()
                await self._set_symbols(await self._read_pair_symbols(conn))
            elif not lost.is_set():
                await conn.fetchval("SELECT 1")  # notices a dead server within 5 s

    async def _listen_loop(self) -> None:
        """LISTEN pairs_changed on a dedicated connection, reconnecting with backoff."""
        delay = self.retry_s
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await (asyncpg.connect(self.dsn) if self.dsn else self.pool.acquire())
                delay = self.retry_s
                await self._listen_once(conn)
            except DB_ERRORS as e:
                log.warning("recorder: pairs listener lost (%s); reconnecting in %.1f s", type(e).__name__, delay)
            finally:
                if conn is not None:
                    try:
                        if self.dsn:
                            await asyncio.wait_for(conn.close(), 2.0)
                        else:
                            await self.pool.release(conn)
                    except Exception:
                        conn.terminate()
            await asyncio.sleep(delay)
            delay = min(self.max_retry_s, delay * 2)

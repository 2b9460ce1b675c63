"""Orders of a pair trade, each written to Postgres before it leaves the bot
(docs/executor.md, "Durable order flow" and "Leg risk").

- `Ledger.write(fn, ...)`: a ledger write (bot.core.db.positions / incidents) that waits
  out a Postgres outage (retry every `executor.db_retry_s`) instead of failing: an order
  is never sent before the row announcing it is stored, and a fill that came back is
  never forgotten.
- `send_leg`: mark the order `sent`, place it with the deterministic orderLinkId, wait
  at most `executor.leg_timeout_s`; a definitive answer is recorded (filled, partly
  filled, rejected); no answer (timeout, transport error) is ambiguous: the order is
  cancelled by orderLinkId and looked up (realtime, then history) before anything else
  happens, and stays `sent` ("unresolved") when the venue cannot say. An unanswered
  order the venue does not know YET is unresolved too, not "never placed": its request
  may still be on its way (the HTTP call outlives the timeout); only after
  `unknown_grace_s` is "unknown to the venue" taken as final.
- `resolve_leg`: the same outcome for an order found `sent` after a restart, by lookup
  only, never by sending a new id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from bot.config.model import ExecutorConfig
from bot.core.db import incidents, positions
from bot.core.db.positions import OrderRow
from bot.core.exchange.interface import (
    FINAL_STATUSES,
    Exchange,
    ExchangeError,
    Fill,
    OrderRejected,
    OrderRequest,
)

log = logging.getLogger("bot.executor")

DB_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
             ConnectionError, TimeoutError)
T = TypeVar("T")


UNKNOWN = "Unknown"  # the venue knows no order with this orderLinkId (realtime nor history)


def _nothing(order: OrderRow, status: str) -> Fill:
    return Fill(order.order_link_id, order.symbol, order.side, Decimal(0), Decimal(0), Decimal(0),  # type: ignore[arg-type]
                0.0, status)


@dataclass(frozen=True)
class LegResult:
    """What became of one order: `fill` (qty may be below the order's: partly filled),
    `rejected` (the venue refused it: nothing filled), or `unresolved` (the venue could not
    say: the order stays `sent`, reconciliation settles it)."""

    order: OrderRow
    fill: Fill | None = None
    rejected: OrderRejected | None = None
    unresolved: str | None = None

    @property
    def filled_qty(self) -> Decimal:
        return self.fill.qty if self.fill is not None else Decimal(0)

    @property
    def complete(self) -> bool:
        return self.fill is not None and self.fill.qty == self.order.qty


class Ledger:
    """The executor's IO: the pool, the exchange, the installation's orderLinkId prefix."""

    def __init__(self, pool: asyncpg.Pool, exchange: Exchange, prefix: str, mode: str, cfg: ExecutorConfig):
        self.pool = pool
        self.exchange = exchange
        self.prefix = prefix
        self.mode = mode
        self.cfg = cfg
        self.db_ok = True
        self.db_failures = 0
        self.latencies: deque[float] = deque(maxlen=10_000)  # quote in -> first order out, seconds
        self.unanswered: dict[str, float] = {}  # orderLinkId -> monotonic time its request went unanswered

    @property
    def unknown_grace_s(self) -> float:
        """How long an order sent the venue does not know may still arrive there (the
        adapter's own HTTP timeout and retries outlive leg_timeout_s): executor.unknown_grace_s."""
        return self.cfg.unknown_grace_s

    async def write(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args)` on a pooled connection, retrying while Postgres is unreachable."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    out = await fn(conn, *args, **kwargs)
                if not self.db_ok:
                    log.warning("event=db_back ledger writes resume")
                self.db_ok = True
                return out
            except DB_ERRORS as e:
                self.db_failures += 1
                if self.db_ok:
                    log.error("event=db_down ledger write %s failed (%s: %s); retrying every %.1f s",
                              getattr(fn, "__name__", fn), type(e).__name__, e, self.cfg.db_retry_s)
                self.db_ok = False
                await asyncio.sleep(self.cfg.db_retry_s)

    async def read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`fn(pool, *args)` (functions that take the pool: bot.core.db.market), retried as `write`."""
        while True:
            try:
                return await fn(self.pool, *args)
            except DB_ERRORS as e:
                self.db_ok = False
                log.warning("event=db_down read %s failed (%s); retrying", getattr(fn, "__name__", fn), type(e).__name__)
                await asyncio.sleep(self.cfg.db_retry_s)

    async def incident(self, kind: str, message: str, *, pair: tuple[str, str] | None = None,
                       position_id: int | None = None, order_link_id: str | None = None,
                       details: dict[str, Any] | None = None) -> int:
        """An incident row and one ERROR line (the pair, position id and orderLinkId in it)."""
        t1, t2 = pair if pair is not None else (None, None)
        log.error("event=incident kind=%s pair=%s position=%s link=%s %s", kind,
                  f"{t1}/{t2}" if pair else "-", position_id if position_id is not None else "-",
                  order_link_id or "-", message)
        return await self.write(incidents.record, kind, message, token_1=f"{t1}_USDT" if t1 else None,
                                token_2=f"{t2}_USDT" if t2 else None, position_id=position_id,
                                order_link_id=order_link_id, details=details, mode=self.mode)

    # ------------------------------------------------------------ one order

    async def send_leg(self, order: OrderRow, position_status: tuple[int, str] | None = None, *,
                       tick_t0: float | None = None) -> LegResult:
        """Write `sent` (and the position's status, e.g. orders_sent, in the same
        transaction), then place the order and record what the venue says. `tick_t0`: the
        perf_counter() of the quote that decided it (tick-to-order latency, `latencies`)."""
        await self.write(positions.mark_sent, order.order_link_id, position_status)
        order.status = "sent"  # the in-memory row follows the ledger: a lookup must now cancel, not assume
        req = OrderRequest(order.symbol, order.side, order.qty, order.order_link_id, order.reduce_only)  # type: ignore[arg-type]
        if tick_t0 is not None:
            self.latencies.append(time.perf_counter() - tick_t0)
        log.info("event=order_sent position=%d link=%s symbol=%s side=%s qty=%s reduce_only=%s", order.position_id,
                 order.order_link_id, order.symbol, order.side, order.qty, order.reduce_only)
        try:
            fill = await asyncio.wait_for(self.exchange.place_market_order(req), self.cfg.leg_timeout_s)
        except OrderRejected as e:
            await self.write(positions.record_order_failure, order.order_link_id, "rejected", e.code, e.message)
            log.warning("event=order_rejected position=%d link=%s code=%s %s", order.position_id,
                        order.order_link_id, e.code, e.message)
            return LegResult(order, rejected=e)
        except (TimeoutError, ExchangeError) as e:
            why = "no answer within leg_timeout_s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            log.warning("event=order_unanswered position=%d link=%s %s; cancelling and looking it up",
                        order.position_id, order.order_link_id, why)
            self.unanswered[order.order_link_id] = time.monotonic()
            return await self.resolve_leg(order, cancel=True, why=why)
        return await self._filled(order, fill)

    async def _filled(self, order: OrderRow, fill: Fill) -> LegResult:
        if fill.qty <= 0:
            await self.write(positions.record_order_failure, order.order_link_id, "cancelled", None,
                             f"ended {fill.status} with nothing filled")
            return LegResult(order, fill=fill)
        await self.write(positions.record_fill, fill)
        log.info("event=order_filled position=%d link=%s symbol=%s qty=%s price=%s fee=%s status=%s",
                 order.position_id, order.order_link_id, fill.symbol, fill.qty, fill.avg_price, fill.fee, fill.status)
        return LegResult(order, fill=fill)

    async def resolve_leg(self, order: OrderRow, *, cancel: bool, why: str = "", unknown_final: bool = False
                          ) -> LegResult:
        """The outcome of an order that may have reached the venue, by orderLinkId (with its
        symbol): a resting one is cancelled first; unknown to the venue = nothing filled,
        except for an order of this process that went unanswered less than unknown_grace_s
        ago (unresolved) unless `unknown_final` (the caller resends under the same id)."""
        if order.status == "filled" and order.fill() is not None:
            return LegResult(order, fill=order.fill())
        if order.status in ("rejected", "cancelled"):
            return LegResult(order, fill=_nothing(order, "Cancelled"))
        if order.status == "planned":  # never left the bot
            await self.write(positions.record_order_failure, order.order_link_id, "cancelled", None, "never sent")
            return LegResult(order, fill=_nothing(order, "NotSent"))
        ex = self.exchange
        link = order.order_link_id
        since = self.unanswered.get(link)
        if since is None and order.sent_ts is not None:  # sent by an earlier process: its age from the ledger
            since = time.monotonic() - max(0.0, time.time() - order.sent_ts)
        try:
            state = await ex.order_status(order.symbol, link)
            if cancel and (since is not None or (state is not None and state.status not in FINAL_STATUSES)):
                # by orderLinkId, even when the lookup does not know it (yet): a resting copy dies
                await ex.cancel_order(order.symbol, link)
                state = await ex.order_status(order.symbol, link)
        except ExchangeError as e:
            return LegResult(order, unresolved=f"{why}; lookup failed: {type(e).__name__}: {e}")
        if (state is None and since is not None and not unknown_final
                and time.monotonic() - since < self.unknown_grace_s):
            return LegResult(order, unresolved=f"{why}; unknown to the venue so far (its request may still arrive:"
                             f" final after {self.unknown_grace_s:.0f} s)")
        self.unanswered.pop(link, None)
        if state is None:
            await self.write(positions.record_order_failure, order.order_link_id, "cancelled", None,
                             f"unknown to the venue ({why or 'after restart'})")
            return LegResult(order, fill=_nothing(order, UNKNOWN))
        if state.status not in FINAL_STATUSES:
            return LegResult(order, unresolved=f"{why}; still {state.status} at the venue")
        return await self._filled(order, state)

    async def ensure_leg(self, order: OrderRow, tick_t0: float | None = None) -> LegResult:
        """Drive a reduceOnly order (close, unwind) to an outcome: a planned one is sent;
        a sent one is looked up and, when the venue does not know it, sent again with the
        SAME orderLinkId (a late first copy then fails as a duplicate)."""
        if order.status == "planned":
            return await self.send_leg(order, tick_t0=tick_t0)
        if order.status == "sent":
            res = await self.resolve_leg(order, cancel=True, why="resumed", unknown_final=True)
            if res.fill is not None and res.fill.status == UNKNOWN:
                # the venue never saw it: send it again under its own id
                order.status = "planned"
                return await self.send_leg(order)
            return res
        return await self.resolve_leg(order, cancel=False)

"""Backfill 1h and 5m bars from the venue's klines, and refresh instruments.

`backfill(db, client, symbols, days)`: for every (symbol, tf), the complete bars
with open time in the window [floor((now - days) / tf) * tf, floor(now / tf) * tf)
that are not stored yet are fetched page by page (`page` bars per request) and
upserted page by page, so an interrupted run keeps what it fetched. What is
missing is found by one query per tf for all symbols (`missing_bar_ranges`): the
head (before the first stored bar, or the whole window when nothing is stored),
holes between stored bars, and the tail (after the last stored bar).

- Holes and the tail are fetched oldest first, completely.
- The head is fetched newest first and ends at the first page the venue returns no
  bar for once a later bar is known (returned by the venue or stored): the venue's
  history is taken to begin there (a symbol listed inside the window), so the pages
  before a listing are not requested. (A halt longer than one page inside the head
  is therefore taken as the listing; rerun with a window starting after it, or
  re-import, to fill what lies before it.)

Cost of a rerun: 0 requests when every bar of the window is stored. The venue's
answers are not remembered, so a range it has no bars for stays missing and is
asked again on every run: 1 request for a symbol listed inside the window (the page
just before its first bar), ceil(hole / page) for a hole the venue has no bars for
(a halt) and for the tail of a symbol that stopped trading. Idempotent: rows are
upserted, unchanged ones are not rewritten. The bar still forming at `now` is never
stored. Requests go through the adapter, so they are rate-limited and retried like
every other call.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from bot.analysis.zscore import tf_seconds
from bot.core.db.market import copy_bars, missing_bar_ranges, symbol_of, upsert_instruments
from bot.core.exchange.interface import Instrument

log = logging.getLogger(__name__)


@dataclass
class BackfillResult:
    symbol: str
    tf: str
    requests: int
    fetched: int
    written: int
    first: dt.datetime | None
    last: dt.datetime | None


def klines_frame(rows: list[list[str]]) -> pl.DataFrame:
    """Bybit kline rows [start ms, open, high, low, close, volume, turnover] -> bars frame."""
    if not rows:
        return pl.DataFrame(schema={"open_time": pl.Float64, "open": pl.Float64, "high": pl.Float64,
                                    "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64})
    return pl.DataFrame({
        "open_time": [int(r[0]) / 1000.0 for r in rows],
        "open": [float(r[1]) for r in rows], "high": [float(r[2]) for r in rows],
        "low": [float(r[3]) for r in rows], "close": [float(r[4]) for r in rows],
        "volume": [float(r[5]) for r in rows],
    })


async def backfill(db: Any, client: Any, symbols: Iterable[str], days: float, tfs: Iterable[str] = ("1h", "5m"),
                   *, page: int = 1000, now: float | None = None,
                   progress: Callable[[BackfillResult], None] | None = None) -> list[BackfillResult]:
    if days <= 0:
        raise ValueError(f"days must be positive (got {days})")
    if not 1 <= page <= 1000:
        raise ValueError(f"page must be within 1..1000 bars (got {page})")
    now = time.time() if now is None else now
    out: list[BackfillResult] = []
    syms = sorted({symbol_of(s) for s in symbols})
    for tf in tfs:
        step = tf_seconds(tf)
        end = int(now // step) * step  # bars opening before this are complete
        window_start = int((now - days * 86400) // step) * step
        missing = await missing_bar_ranges(db, syms, tf, window_start, end)
        for sym in syms:
            res = BackfillResult(sym, tf, 0, 0, 0, None, None)
            for lo, hi in missing[sym]:
                first = -(-math.ceil(lo) // step) * step  # the grid's open times in [lo, hi)
                last = (math.ceil(hi) - 1) // step * step
                if first > last:
                    continue
                if first == window_start:
                    await _fetch_head(db, client, res, first, last, step, page, known_later=hi < end)
                else:
                    await _fetch_forward(db, client, res, first, last, step, page)
            out.append(res)
            if progress is not None:
                progress(res)
    return out


async def _fetch_page(db: Any, client: Any, res: BackfillResult, first: int, last: int, page: int) -> int:
    """One request for the bars opening in [first, last] (epoch s); writes them, returns how many came."""
    rows = await client.klines(res.symbol, res.tf, first * 1000, last * 1000, limit=page)
    res.requests += 1
    rows = [r for r in rows if first * 1000 <= int(r[0]) <= last * 1000]
    if not rows:
        return 0
    frame = klines_frame(rows)
    res.fetched += frame.height
    res.written += await copy_bars(db, frame.with_columns(pl.lit(res.symbol).alias("symbol")), res.tf,
                                   source="bybit")
    t0 = dt.datetime.fromtimestamp(float(frame["open_time"].min()), dt.UTC)  # type: ignore[arg-type]
    t1 = dt.datetime.fromtimestamp(float(frame["open_time"].max()), dt.UTC)  # type: ignore[arg-type]
    res.first = t0 if res.first is None else min(res.first, t0)
    res.last = t1 if res.last is None else max(res.last, t1)
    return frame.height


async def _fetch_forward(db: Any, client: Any, res: BackfillResult, first: int, last: int, step: int,
                         page: int) -> None:
    """Open times first..last (on the grid), oldest page first, every page."""
    start = first
    while start <= last:
        page_end = min(last, start + (page - 1) * step)
        await _fetch_page(db, client, res, start, page_end, page)
        start = page_end + step


async def _fetch_head(db: Any, client: Any, res: BackfillResult, first: int, last: int, step: int, page: int,
                      *, known_later: bool) -> None:
    """Open times first..last, newest page first, until a page comes back empty while a later
    bar is known (`known_later`: a stored bar follows `last`): the venue's history starts there."""
    page_end = last
    while page_end >= first:
        start = max(first, page_end - (page - 1) * step)
        n = await _fetch_page(db, client, res, start, page_end, page)
        if n == 0 and known_later:
            return
        known_later = known_later or n > 0
        page_end = start - step


def instruments_frame(instruments: list[Instrument]) -> pl.DataFrame:
    """Instruments as rows of the `instruments` table (numbers as exact decimal strings)."""
    def s(v: Any) -> str | None:
        return None if v is None else format(v, "f")
    return pl.DataFrame({
        "symbol": [i.symbol for i in instruments],
        "qty_step": [s(i.qty_step) for i in instruments],
        "min_qty": [s(i.min_qty) for i in instruments],
        "max_qty": [s(i.max_qty) for i in instruments],
        "max_mkt_qty": [s(i.max_mkt_qty) for i in instruments],
        "min_notional": [s(i.min_notional) for i in instruments],
        "tick_size": [s(i.tick_size) for i in instruments],
        "price_scale": [i.price_scale if i.price_scale is not None else
                        max(0, -int(i.tick_size.as_tuple().exponent)) for i in instruments],
        "status": [i.status for i in instruments],
    }, schema={"symbol": pl.Utf8, "qty_step": pl.Utf8, "min_qty": pl.Utf8, "max_qty": pl.Utf8,
               "max_mkt_qty": pl.Utf8, "min_notional": pl.Utf8, "tick_size": pl.Utf8, "price_scale": pl.Int64,
               "status": pl.Utf8})


async def refresh_instruments(db: Any, client: Any) -> int:
    """Fetch every linear instrument (all pages) and upsert them into `instruments`."""
    inst = await client.instruments()
    if not inst:
        raise RuntimeError("the venue returned no instruments; the table is left as it was")
    return await upsert_instruments(db, instruments_frame(inst))

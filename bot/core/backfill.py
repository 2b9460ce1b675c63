"""Backfill 1h and 5m bars from the venue's klines, and refresh instruments.

`backfill(db, client, symbols, days)`: for every (symbol, tf), the complete bars
with open time in [now - days, floor(now / tf) * tf) are fetched page by page
(`page` bars per request, oldest first) and upserted page by page, so an
interrupted run keeps what it fetched. Resumable: a (symbol, tf) whose bars
already reach into the window restarts after its last stored bar. Idempotent:
rows are upserted, unchanged ones are not rewritten. The bar still forming at
`now` is never stored. Requests go through the adapter, so they are rate-limited
and retried like every other call.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from bot.analysis.zscore import tf_seconds
from bot.core.db.market import bar_symbols, copy_bars, symbol_of, upsert_instruments
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
        stored = await bar_symbols(db, tf)
        last_stored = dict(zip(stored["symbol"].to_list(), stored["last_ts"].to_list(), strict=True)) \
            if stored.height else {}
        for sym in syms:
            start = window_start
            last = last_stored.get(sym)
            if last is not None and last >= window_start:
                start = int(last) + step  # resume after the last stored bar
            res = BackfillResult(sym, tf, 0, 0, 0, None, None)
            while start < end:
                page_end = min(end - step, start + (page - 1) * step)
                rows = await client.klines(sym, tf, start * 1000, page_end * 1000, limit=page)
                res.requests += 1
                rows = [r for r in rows if start * 1000 <= int(r[0]) <= page_end * 1000]
                if rows:
                    frame = klines_frame(rows)
                    res.fetched += frame.height
                    res.written += await copy_bars(db, frame.with_columns(pl.lit(sym).alias("symbol")), tf,
                                                   source="bybit")
                    t0 = dt.datetime.fromtimestamp(float(frame["open_time"][0]), dt.UTC)
                    t1 = dt.datetime.fromtimestamp(float(frame["open_time"][-1]), dt.UTC)
                    res.first = res.first or t0
                    res.last = t1
                start = page_end + step
            out.append(res)
            if progress is not None:
                progress(res)
    return out


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

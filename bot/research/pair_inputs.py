"""Each pair's inputs, built where the pair runs, so the job's memory stays bounded.

A research or re-selection job over hundreds of pairs must not hold every pair's
ticks at once (431 pairs x 60 days of 5 s quotes would be ~17 GB). Each token's
quotes are still read from Postgres once per job, not once per pair:

- Local workers: the parent reads the window's quotes in one pass over the day
  partitions (binary COPY, one day in memory) into a disk cache, one raw file per
  symbol (float64 columns ts, bid, ask: 24 bytes a quote, ~25 MB for 60 days of 5 s
  quotes). A worker maps its pair's two files (:func:`cache_array`)
  and builds the pair's window itself (:func:`pair_input`: the window of
  :func:`bot.core.db.market.pair_frames`, the notebook's ``load_pair_data``). The parent holds one day of quotes at a time, a
  worker one pair's window; the cache costs disk (``compute.cache_dir``, default
  the system temp directory: put it on a disk, not a tmpfs) and is removed when the
  job ends, failed or not.
- A Dask cluster (``compute.dask_scheduler``): the workers share no disk, so one
  loader task per symbol (:func:`load_token`) reads the symbol's quotes from
  Postgres on a worker, and each pair task receives its two symbols' arrays from
  the cluster, worker to worker: the client sends small task descriptions only.
  The scheduler frees a symbol's array once its last pair has run.

Bars (one query for all symbols, small) travel with each task: the pair's two
symbols and the reference symbols, ~1 MB.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from bot.analysis.zscore import tf_seconds
from bot.config.model import BotConfig
from bot.research.pair_job import PairInput, PairOutcome, run_pair
from bot.research.params import ParamSet

log = logging.getLogger(__name__)

QUOTE_COLUMNS = ("ts", "bid_price", "ask_price", "bid_size", "ask_size")
CACHE_COLUMNS = QUOTE_COLUMNS[:3]  # what a backtest reads: the cache keeps no sizes


class SkipPair(Exception):
    """A pair that cannot run; the message is the recorded reason."""


@dataclass(frozen=True)
class TokenRef:
    """One symbol's quotes of [start, end) (epoch s) in the job's database, to be read
    by a Dask worker. The DSN is kept out of the repr (it may carry a password)."""

    symbol: str
    start: float
    end: float
    dsn: str = field(repr=False)


QuoteSource = str | TokenRef | np.ndarray


def quotes_array(frame: pl.DataFrame) -> np.ndarray:
    """A read_quotes frame of ONE symbol as an (n, 5) float64 array (QUOTE_COLUMNS), ts-sorted."""
    if frame.height == 0:
        return np.empty((0, len(QUOTE_COLUMNS)))
    return np.ascontiguousarray(frame.select(QUOTE_COLUMNS).to_numpy().astype(np.float64, copy=False))


def quotes_frame(symbol: str, arr: np.ndarray) -> pl.DataFrame:
    """The inverse of :func:`quotes_array`: the read_quotes layout (symbol first)."""
    cols: dict[str, Any] = {"symbol": pl.Series("symbol", [symbol] * arr.shape[0], dtype=pl.Utf8)}
    for k, c in enumerate(QUOTE_COLUMNS):
        cols[c] = np.asarray(arr[:, k], dtype=np.float64)
    return pl.DataFrame(cols)


async def fill_cache(db: Any, symbols: Sequence[str], start: dt.datetime, end: dt.datetime, directory: Path,
                     progress: Callable[[str, int], None] | None = None) -> dict[str, str]:
    """Read the quotes of `symbols` in [start, end) once into ``directory/<k>.f64`` (raw
    float64 rows of CACHE_COLUMNS, ts-ascending; :func:`cache_array` maps one); the paths by
    symbol. One sequential pass over the day partitions (market.scan_quotes_by_day): one
    day of quotes in memory at a time."""
    from bot.core.db.market import scan_quotes_by_day

    directory.mkdir(parents=True, exist_ok=True)
    names = list(symbols)
    paths = {sym: str(directory / f"{k:05d}.f64") for k, sym in enumerate(names)}  # no input in a file name
    counts = dict.fromkeys(names, 0)
    for path in paths.values():
        Path(path).write_bytes(b"")  # a symbol without quotes is an empty file

    def append(k: int, rows: np.ndarray) -> None:  # opened per day: no limit on open files
        with open(paths[names[k]], "ab") as f:
            f.write(np.ascontiguousarray(rows, dtype="<f8").tobytes())
        counts[names[k]] += int(rows.shape[0])

    await scan_quotes_by_day(db, names, start, end, append)
    if progress is not None:
        for sym in names:
            progress(sym, counts[sym])
    return paths


CACHE_PREFIX = "bot-quotes-"


def new_cache_dir(parent: str | None) -> Path:
    """A fresh cache directory for this job (under `parent`, default the temp directory),
    after removing those left by jobs whose process is gone (killed before its cleanup):
    each directory names its owner's pid in ``owner.pid``."""
    import os
    import shutil
    import tempfile

    root = Path(parent or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{CACHE_PREFIX}*"):
        try:
            pid = int((old / "owner.pid").read_text())
            os.kill(pid, 0)  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed %s, left by a job that died (pid %d)", old, pid)
        except (OSError, ValueError):
            continue  # no marker yet, unreadable, or another user's process
    path = Path(tempfile.mkdtemp(prefix=CACHE_PREFIX, dir=root))
    (path / "owner.pid").write_text(str(os.getpid()))
    return path


def cache_array(path: str) -> np.ndarray:
    """A cached symbol's quotes, mapped read-only: an (n, 3) float64 array (CACHE_COLUMNS)."""
    if Path(path).stat().st_size == 0:
        return np.empty((0, len(CACHE_COLUMNS)))
    return np.memmap(path, dtype="<f8", mode="r").reshape(-1, len(CACHE_COLUMNS))


def load_token(ref: TokenRef) -> np.ndarray:
    """A Dask worker's read of one symbol's quotes (its own connection, closed after)."""
    from bot.core.db.market import read_quote_array
    from bot.core.db.pool import create_pool

    async def go() -> np.ndarray:
        pool = await create_pool(ref.dsn, min_size=1, max_size=1)
        try:
            return await read_quote_array(pool, ref.symbol, dt.datetime.fromtimestamp(ref.start, dt.UTC),
                                   dt.datetime.fromtimestamp(ref.end, dt.UTC))
        finally:
            await pool.close()

    # ts, bid, ask only: what a pair reads, a third less to move between workers
    return np.ascontiguousarray(asyncio.run(go())[:, : len(CACHE_COLUMNS)])


def _resolve(source: QuoteSource | None) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, str):
        return np.load(source, mmap_mode="r", allow_pickle=False) if source.endswith(".npy") else cache_array(source)
    raise TypeError(f"quotes not resolved: {source!r} (a TokenRef is loaded by the Dask executor)")


@njit(cache=True)
def common_times(ts_1: np.ndarray, ts_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) with ts_1[i] == ts_2[j], in time order, of two ascending arrays of
    distinct times (a symbol's quotes: the primary key is (symbol, ts)): the inner join
    of the two legs on ts, by one merge walk."""
    n1 = ts_1.shape[0]
    n2 = ts_2.shape[0]
    out_1 = np.empty(min(n1, n2), np.int64)
    out_2 = np.empty(min(n1, n2), np.int64)
    i = 0
    j = 0
    k = 0
    while i < n1 and j < n2:
        a = ts_1[i]
        b = ts_2[j]
        if a == b:
            out_1[k] = i
            out_2[k] = j
            k += 1
            i += 1
            j += 1
        elif a < b:
            i += 1
        else:
            j += 1
    return out_1[:k], out_2[:k]


@njit(cache=True)
def merge_ticks(q_ts: np.ndarray, i1: np.ndarray, i2: np.ndarray, bid_1: np.ndarray, ask_1: np.ndarray,
                bid_2: np.ndarray, ask_2: np.ndarray, w_ts: np.ndarray, close_1: np.ndarray, close_2: np.ndarray,
                tf_s: int, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
    """The pair's ticks (ts, bid_1, ask_1, bid_2, ask_2, is_quote) in time order: the quote
    ticks (q_ts, the legs' rows i1 / i2) and a bar-close tick for every window bar (w_ts,
    whole seconds; closes close_1 / close_2) whose slot [w, w + tf_s) holds no quote tick,
    at bid / ask = close (1 -/+ half). A bar not on the tf grid is never covered (pair_frames
    matches slots by equality). On equal times a quote tick comes first (a stable sort)."""
    nq = q_ts.shape[0]
    nw = w_ts.shape[0]
    gap = np.ones(nw, np.bool_)
    j = 0
    for k in range(nw):
        w = w_ts[k]
        if w % tf_s != 0:
            continue
        while j < nq and q_ts[j] < w:
            j += 1
        if j < nq and q_ts[j] < w + tf_s:
            gap[k] = False
    n = nq + int(gap.sum())
    ts = np.empty(n)
    b1 = np.empty(n)
    a1 = np.empty(n)
    b2 = np.empty(n)
    a2 = np.empty(n)
    isq = np.empty(n, np.bool_)
    i = 0
    k = 0
    for m in range(n):
        while k < nw and not gap[k]:
            k += 1
        if i < nq and (k >= nw or q_ts[i] <= w_ts[k]):
            ts[m] = q_ts[i]
            b1[m] = bid_1[i1[i]]
            a1[m] = ask_1[i1[i]]
            b2[m] = bid_2[i2[i]]
            a2[m] = ask_2[i2[i]]
            isq[m] = True
            i += 1
        else:
            ts[m] = w_ts[k]
            b1[m] = close_1[k] * (1 - half)
            a1[m] = close_1[k] * (1 + half)
            b2[m] = close_2[k] * (1 - half)
            a2[m] = close_2[k] * (1 + half)
            isq[m] = False
            k += 1
    return ts, b1, a1, b2, a2, isq


def pair_input(cfg: BotConfig, t1: str, t2: str, train_start: dt.datetime, valid: dt.datetime, end: dt.datetime,
               max_wind: int, metas: Sequence[dict[str, Any] | None], bars_long: pl.DataFrame,
               quotes_1: np.ndarray, quotes_2: np.ndarray, history: dt.timedelta | None) -> PairInput:
    """A pair's PairInput from what was read (no IO): long bars, and each leg's quotes as a
    quotes_array of [train_start, end). The window of bot.core.db.market.pair_frames (the
    notebook's load_pair_data), built without frames for the ticks: quote ticks where
    both legs quoted at the same time (ts rounded to the second, as pair_frames does),
    plus one bar-close tick, at the bar's open time, for every bar of the window closing
    inside it without a quote tick in its slot (strategy.md section 1); equal to a
    PairInput built from pair_frames, array for array (tests/research/test_pair_inputs.py).
    `metas`: the instruments' rows (None: the step assumed from the first close price,
    bot.core.exchange.rounding.assumed_qty_step)."""
    from bot.core.db.market import pair_bars
    from bot.core.exchange.rounding import assumed_qty_step

    s = cfg.strategy
    tf_s = tf_seconds(s.tf)
    lo, hi = train_start, end
    agg = pair_bars(t1, t2, lo, hi, s.tf, max_wind, cfg.data.reference_symbols, bars_long, history)
    legs = []
    for q in (quotes_1, quotes_2):  # [lo, hi) of an ascending array: a view, no copy
        a, b = np.searchsorted(q[:, 0], [lo.timestamp(), hi.timestamp()], side="left")
        legs.append(q[a:b])
    q1, q2 = legs
    i1, i2 = common_times(q1[:, 0], q2[:, 0])
    q_ts = pl.Series(q1[i1, 0]).round().cast(pl.Int64).to_numpy()  # pair_frames' rounding, to the bit
    # a bar-close tick carries the bar's close: only bars that close inside the window
    window = agg.select((pl.col("time") >= lo) & (pl.col("ts") + tf_s <= hi.timestamp())).to_series().to_numpy()
    if agg.height == 0 or (q_ts.size == 0 and not bool(window.any())):
        raise SkipPair(f"no data for {t1}/{t2} in the window (unknown token or no history)")
    w_ts = np.ascontiguousarray(agg["ts"].to_numpy()[window], dtype=np.int64)
    ts, bid_1, ask_1, bid_2, ask_2, is_quote = merge_ticks(
        q_ts, i1, i2, q1[:, 1], q1[:, 2], q2[:, 1], q2[:, 2], w_ts,
        np.ascontiguousarray(agg[t1].to_numpy()[window], dtype=np.float64),
        np.ascontiguousarray(agg[t2].to_numpy()[window], dtype=np.float64), tf_s, s.half_spread_bp * 1e-4)
    bars_only = not bool(is_quote.any())
    m1, m2 = metas
    steps = [m["qty_step"] if m else assumed_qty_step(float(agg[t][0])) for m, t in zip(metas, (t1, t2), strict=True)]
    refs = {r.lower(): agg[r].cast(pl.Float64).to_numpy() for r in cfg.data.reference_symbols if r in agg.columns}
    return PairInput(
        t1, t2, ts, bid_1, ask_1, bid_2, ask_2, agg["ts"].cast(pl.Float64).to_numpy(), agg[t1].cast(pl.Float64).to_numpy(),
        agg[t2].cast(pl.Float64).to_numpy(), train_start.timestamp(), valid.timestamp(), end.timestamp(),
        steps[0], steps[1], m1["min_qty"] if m1 else None, m2["min_qty"] if m2 else None,
        (m1["min_notional"] or 0.0) if m1 else 0.0, (m2["min_notional"] or 0.0) if m2 else 0.0,
        bars_only, refs, None if bars_only or bool(is_quote.all()) else is_quote,
    )


@dataclass
class PairTask:
    """One pair's job, small enough to send anywhere: its bars, where its two symbols'
    quotes are (cache paths, TokenRefs for a Dask cluster, or arrays) and what to run.
    Calling it builds the PairInput (timed as ``load_s``) and runs :func:`run_pair`."""

    cfg: BotConfig
    token_1: str
    token_2: str
    symbols: tuple[str, str]
    quotes: tuple[QuoteSource, QuoteSource]
    bars: pl.DataFrame | tuple[pl.DataFrame, ...]  # long bars, or per-symbol parts shared by many tasks
    window: tuple[dt.datetime, dt.datetime, dt.datetime]  # train_start, valid_time, end_time
    max_wind: int
    metas: tuple[dict[str, Any] | None, dict[str, Any] | None]
    history: dt.timedelta | None
    param_sets: list[ParamSet]
    default: ParamSet
    with_features: bool

    @property
    def bars_frame(self) -> pl.DataFrame:
        """The task's long bars (its parts joined: a job's tasks share each symbol's frame
        in the parent instead of holding a copy each)."""
        return pl.concat(self.bars) if isinstance(self.bars, tuple) else self.bars

    @property
    def remote_inputs(self) -> tuple[TokenRef, ...]:
        """The quotes a Dask executor loads first and passes to __call__, in leg order."""
        return tuple(q for q in self.quotes if isinstance(q, TokenRef))

    def build(self, *arrays: np.ndarray) -> PairInput:
        got = list(arrays)
        legs = [got.pop(0) if isinstance(q, TokenRef) else _resolve(q) for q in self.quotes]
        start, valid, end = self.window
        return pair_input(self.cfg, self.token_1, self.token_2, start, valid, end, self.max_wind, self.metas,
                          self.bars_frame, legs[0], legs[1], self.history)

    def __call__(self, *arrays: np.ndarray) -> PairOutcome:
        t0 = time.perf_counter()
        try:
            inp = self.build(*arrays)
        except SkipPair as why:
            return PairOutcome(self.token_1, self.token_2, "skipped", str(why))
        t_load = time.perf_counter() - t0
        out = run_pair(inp, self.param_sets, self.default, self.cfg.strategy, self.with_features)
        out.timings["load_s"] = t_load
        out.bars_only = inp.bars_only
        out.partial_quotes = inp.is_quote is not None
        out.ticks = int(inp.tick_ts.shape[0])
        return out


def cache_bytes(n_quotes: int) -> int:
    """Disk the cache takes for `n_quotes` quotes."""
    return n_quotes * 8 * len(CACHE_COLUMNS)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


__all__ = ["PairTask", "QUOTE_COLUMNS", "SkipPair", "TokenRef", "cache_bytes", "fill_cache", "human_bytes",
           "load_token", "pair_input", "quotes_array", "quotes_frame"]

"""Market-data repository: instruments, quotes (partitioned by day) and bars.

All SQL of these tables lives here. Writes go through COPY (CSV produced by polars,
no per-row Python objects); imports stage into a temp table and insert with
ON CONFLICT DO NOTHING so a re-import is idempotent. Reads come back as polars
frames through ``COPY (query) TO STDOUT`` (again, no per-row Python loop).

Symbols are exchange symbols (``JASMYUSDT``); a token is the symbol without the
``USDT`` suffix (``JASMY``). Timestamps are UTC; ``ts`` columns are epoch seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg
import numpy as np
import polars as pl

from bot.analysis.zscore import TF_SECONDS, tf_seconds

log = logging.getLogger(__name__)

QUOTE_COLS = ("symbol", "ts", "bid_price", "ask_price", "bid_size", "ask_size")
BAR_COLS = ("symbol", "tf", "open_time", "open", "high", "low", "close", "volume", "source")
INSTRUMENT_COLS = (
    "symbol", "base_coin", "qty_step", "min_qty", "max_qty", "max_mkt_qty", "min_notional",
    "tick_size", "price_scale", "status",
)


def symbol_of(token: str) -> str:
    """'JASMY' or 'JASMY_USDT' or 'JASMYUSDT' -> 'JASMYUSDT'."""
    t = token.upper().replace("_", "")
    return t if t.endswith("USDT") else t + "USDT"


def token_of(symbol: str) -> str:
    s = symbol.upper().replace("_", "")
    return s[:-4] if s.endswith("USDT") else s


def to_utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    if isinstance(value, str):
        return to_utc(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    raise TypeError(f"not a time: {value!r}")


def _pool_of(db: Any) -> asyncpg.Pool:
    """The pool of a Database (or DBManager), or `db` itself when it is a pool/connection."""
    pool = getattr(db, "pool", None)
    return pool if pool is not None else db


async def read_frame(conn_or_pool: Any, query: str, *args: Any, schema: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run `query` through COPY ... TO STDOUT (CSV) and parse it with polars."""
    buf = io.BytesIO()
    pool = _pool_of(conn_or_pool)
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            await conn.copy_from_query(query, *args, output=buf, format="csv", header=True)
    else:
        await pool.copy_from_query(query, *args, output=buf, format="csv", header=True)
    data = buf.getvalue()
    if not data:
        return pl.DataFrame(schema=schema or {})
    return pl.read_csv(io.BytesIO(data), schema_overrides=schema, try_parse_dates=False)


# ---------------------------------------------------------------- instruments

async def upsert_instruments(db: Any, rows: pl.DataFrame) -> int:
    """Insert or update instruments; `rows` has INSTRUMENT_COLS (max_* may be null)."""
    missing = [c for c in ("symbol", "qty_step", "min_qty", "tick_size", "price_scale") if c not in rows.columns]
    if missing:
        raise ValueError(f"instruments: missing columns {missing}")
    frame = rows
    if "base_coin" not in frame.columns:
        frame = frame.with_columns(pl.col("symbol").map_elements(token_of, return_dtype=pl.Utf8).alias("base_coin"))
    for c, default in (("max_qty", None), ("max_mkt_qty", None), ("min_notional", 0.0), ("status", "Trading")):
        if c not in frame.columns:
            frame = frame.with_columns(pl.lit(default).alias(c))
    sql = (
        "INSERT INTO instruments (symbol, base_coin, qty_step, min_qty, max_qty, max_mkt_qty, min_notional,"
        " tick_size, price_scale, status, updated_at)"
        " VALUES ($1, $2, $3::text::numeric, $4::text::numeric, $5::text::numeric, $6::text::numeric,"
        " $7::text::numeric, $8::text::numeric, $9, $10, now())"
        " ON CONFLICT (symbol) DO UPDATE SET base_coin = EXCLUDED.base_coin, qty_step = EXCLUDED.qty_step,"
        " min_qty = EXCLUDED.min_qty, max_qty = EXCLUDED.max_qty, max_mkt_qty = EXCLUDED.max_mkt_qty,"
        " min_notional = EXCLUDED.min_notional, tick_size = EXCLUDED.tick_size,"
        " price_scale = EXCLUDED.price_scale, status = EXCLUDED.status, updated_at = now()"
    )
    # numeric columns go as text so a float like 0.001 is stored as the decimal 0.001
    records = [tuple(None if v is None else (str(v) if i in (2, 3, 4, 5, 6, 7) else v) for i, v in enumerate(r))
               for r in frame.select(INSTRUMENT_COLS).iter_rows()]
    async with _pool_of(db).acquire() as conn:
        await conn.executemany(sql, records)
    return len(records)


async def read_instruments(db: Any) -> pl.DataFrame:
    return await read_frame(
        db,
        "SELECT symbol, base_coin, qty_step::text AS qty_step, min_qty::text AS min_qty,"
        " max_qty::text AS max_qty, max_mkt_qty::text AS max_mkt_qty, min_notional::text AS min_notional,"
        " tick_size::text AS tick_size, price_scale, status FROM instruments ORDER BY symbol",
        schema={"qty_step": pl.Utf8, "min_qty": pl.Utf8, "max_qty": pl.Utf8, "max_mkt_qty": pl.Utf8,
                "min_notional": pl.Utf8, "tick_size": pl.Utf8},
    )


async def coin_information(db: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The notebook's mapping: {'bybit_linear': {'JASMY_USDT': {'qty_step': 1.0, ...}}}.

    Numbers are floats for the notebook (exact decimal strings are kept under
    `qty_step_str` / `tick_size_str` for order rounding).
    """
    frame = await read_instruments(db)
    out: dict[str, dict[str, Any]] = {}
    for r in frame.iter_rows(named=True):
        def num(v: Any) -> float | None:
            return None if v is None or v == "" else float(v)
        out[f"{r['base_coin']}_USDT"] = {
            "symbol": r["symbol"],
            "qty_step": num(r["qty_step"]),
            "min_qty": num(r["min_qty"]),
            "max_qty": num(r["max_qty"]),
            "max_mkt_qty": num(r["max_mkt_qty"]),
            "min_notional": num(r["min_notional"]),
            "tick_size": num(r["tick_size"]),
            "price_scale": int(r["price_scale"]),
            "status": r["status"],
            "qty_step_str": r["qty_step"],
            "tick_size_str": r["tick_size"],
        }
    return {"bybit_linear": out}


# ---------------------------------------------------------------- quotes

def _partition_name(day: dt.date) -> str:
    return f"quotes_{day:%Y%m%d}"


async def ensure_quote_partitions(conn: asyncpg.Connection, first: dt.datetime, last: dt.datetime) -> int:
    """Create the daily partitions covering [first, last]; returns how many were created."""
    day = first.astimezone(dt.UTC).date()
    end = last.astimezone(dt.UTC).date()
    made = 0
    while day <= end:
        name = _partition_name(day)
        lo = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        hi = lo + dt.timedelta(days=1)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
        if not exists:
            # identifiers and bounds cannot be bind parameters in DDL; both are generated here
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF quotes "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            made += 1
        day += dt.timedelta(days=1)
    return made


async def drop_old_quote_partitions(db: Any, retention_days: int, now: dt.datetime) -> list[str]:
    cutoff = (now - dt.timedelta(days=retention_days)).date()
    dropped = []
    async with _pool_of(db).acquire() as conn:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'quotes'"
        )
        for r in names:
            name = r["relname"]
            try:
                day = dt.datetime.strptime(name[len("quotes_"):], "%Y%m%d").date()
            except ValueError:
                continue
            if day < cutoff:
                await conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
    return dropped


_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in unix microseconds
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"


def pgcopy_binary(frame: pl.DataFrame, columns: Sequence[tuple[str, str]]) -> bytes:
    """Encode `frame` in PostgreSQL's binary COPY format with numpy (no per-row Python).

    `columns` lists (name, kind) in table order, kind one of ``text`` (UTF-8),
    ``ts`` (float epoch seconds -> timestamptz, microseconds since 2000-01-01) or
    ``f8``. Rows of one group share a fixed-width record layout (field count, then
    per field its byte length and big-endian value) and are encoded in one numpy
    pass: a group is one text value when values repeat (imports: one symbol's
    history), else one tuple of text byte lengths (a live batch: one row for each
    of many symbols). Row order across groups is not kept (a table has none).
    """
    text_cols = [c for c, k in columns if k == "text"]
    parts = [_PGCOPY_HEADER]
    frame = frame.with_columns([pl.col(c).cast(pl.Utf8).str.len_bytes().alias(f"_len_{c}") for c in text_cols])
    if text_cols and frame.select(pl.min_horizontal([pl.col(f"_len_{c}").min() for c in text_cols])).item() == 0:
        raise ValueError(f"COPY encoding: empty text in one of {text_cols}")
    # long runs of the same text (an import): one group per value, the text set once per group;
    # many distinct texts with few rows each (a live batch): one group per byte-length tuple
    by_value = bool(text_cols) and frame.select(pl.struct(text_cols).n_unique()).item() * 20 <= frame.height
    keys = text_cols if by_value else [f"_len_{c}" for c in text_cols]
    groups = frame.group_by(keys, maintain_order=True) if text_cols else [((), frame)]
    for _, grp in groups:
        width = {c: int(grp.get_column(f"_len_{c}")[0]) for c in text_cols}
        fields: list[tuple[str, str]] = [("nf", ">i2")]
        for name, kind in columns:
            fields.append((f"len_{name}", ">i4"))
            if kind == "text":
                fields.append((name, f"S{width[name]}"))
            elif kind == "ts":
                fields.append((name, ">i8"))
            else:
                fields.append((name, ">f8"))
        rec = np.empty(grp.height, dtype=np.dtype(fields))
        rec["nf"] = len(columns)
        for name, kind in columns:
            if kind == "text":
                rec[f"len_{name}"] = width[name]
                if by_value:
                    rec[name] = str(grp.get_column(name)[0]).encode()
                else:
                    rec[name] = np.char.encode(grp.get_column(name).cast(pl.Utf8).to_numpy().astype(str), "utf-8")
            elif kind == "ts":
                rec[f"len_{name}"] = 8
                secs = grp.get_column(name).cast(pl.Float64).to_numpy()
                rec[name] = np.round(secs * 1e6).astype(np.int64) - _PG_EPOCH_US
            else:
                rec[f"len_{name}"] = 8
                rec[name] = grp.get_column(name).cast(pl.Float64).to_numpy()
        parts.append(rec.tobytes())
    parts.append(b"\xff\xff")
    return b"".join(parts)


_QUOTE_KINDS = (("symbol", "text"), ("ts", "ts"), ("bid_price", "f8"), ("ask_price", "f8"),
                ("bid_size", "f8"), ("ask_size", "f8"))
_BAR_KINDS = (("symbol", "text"), ("tf", "text"), ("open_time", "ts"), ("open", "f8"), ("high", "f8"),
              ("low", "f8"), ("close", "f8"), ("volume", "f8"), ("source", "text"))


def quotes_pgcopy(frame: pl.DataFrame) -> bytes:
    """Quotes (QUOTE_COLS, ts in epoch seconds) in binary COPY format."""
    return pgcopy_binary(frame, _QUOTE_KINDS)


def normalise_quotes(frame: pl.DataFrame) -> pl.DataFrame:
    """Quotes with `ts` as float epoch seconds (accepts a datetime `ts` or `time`)."""
    if "ts" not in frame.columns and "time" in frame.columns:
        frame = frame.rename({"time": "ts"})
    if frame.schema.get("ts") is not None and frame.schema["ts"].is_temporal():
        frame = frame.with_columns((pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6).alias("ts"))
    missing = [c for c in QUOTE_COLS if c not in frame.columns]
    if missing:
        raise ValueError(f"quotes: missing columns {missing}")
    return frame.select(QUOTE_COLS)


async def _copy_day(pool: asyncpg.Pool, day_frame: pl.DataFrame, ignore_duplicates: bool) -> int:
    day = to_utc(float(day_frame["ts"].min())).date()  # type: ignore[arg-type]
    target = _partition_name(day)
    data = quotes_pgcopy(day_frame)
    async with pool.acquire() as conn, conn.transaction():
        if ignore_duplicates:
            # nothing of these symbols stored that day yet: no duplicate is possible, COPY straight in
            symbols = day_frame.get_column("symbol").unique().to_list()
            taken = await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {target} WHERE symbol = ANY($1::text[]))", symbols
            )
            if not taken and day_frame.select(pl.struct("symbol", "ts").is_unique().all()).item():
                ignore_duplicates = False
        if not ignore_duplicates:
            await conn.copy_to_table(target, source=io.BytesIO(data), columns=list(QUOTE_COLS), format="binary")
            return day_frame.height
        await conn.execute("CREATE TEMP TABLE quotes_stage (LIKE quotes INCLUDING DEFAULTS) ON COMMIT DROP")
        await conn.copy_to_table("quotes_stage", source=io.BytesIO(data), columns=list(QUOTE_COLS), format="binary")
        # partition name is generated from the date above, never from input text
        status = await conn.execute(
            f"INSERT INTO {target} SELECT * FROM quotes_stage ON CONFLICT (symbol, ts) DO NOTHING"
        )
        return int(status.split()[-1])


async def copy_quotes(db: Any, frame: pl.DataFrame, *, ignore_duplicates: bool = False, parallel: int = 2) -> int:
    """Bulk-write quotes with binary COPY, straight into the daily partitions.

    Partitions are created first; days are written on up to `parallel` connections
    at once (each day in its own transaction). With `ignore_duplicates`, rows
    already stored (same symbol and ts) are skipped (idempotent imports); otherwise
    a duplicate is an error and that day's rows are not written.
    """
    frame = normalise_quotes(frame)
    if frame.height == 0:
        return 0
    pool = _pool_of(db)
    lo = to_utc(float(frame["ts"].min()))  # type: ignore[arg-type]
    hi = to_utc(float(frame["ts"].max()))  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        await ensure_quote_partitions(conn, lo, hi)
    days = frame.with_columns((pl.col("ts") // 86400).alias("_day")).partition_by("_day", include_key=False)
    sem = asyncio.Semaphore(max(1, parallel))

    async def one(part: pl.DataFrame) -> int:
        async with sem:
            return await _copy_day(pool, part, ignore_duplicates)

    try:
        async with asyncio.TaskGroup() as tg:  # the first failure cancels the other days
            tasks = [tg.create_task(one(d)) for d in days]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return sum(t.result() for t in tasks)


async def append_quote_rows(db: Any, rows: Sequence[tuple[str, float, float, float, float, float]], *,
                            idempotent: bool = False, ensure_partitions: bool = True) -> int:
    """Append a small batch of quotes: the live recorder's write.

    `rows` are (symbol, ts epoch seconds, bid, ask, bid size, ask size). One COPY of
    the records through asyncpg's own binary encoder into `quotes` (the partition is
    routed by the server): no polars frame, no staging table, one statement, so a
    batch of one row per symbol costs a round trip or two, not a bulk import's set-up.
    `idempotent` (a retry after a commit whose answer was lost): INSERT ... ON
    CONFLICT DO NOTHING instead, so rows that did commit are not written twice.
    `ensure_partitions=False` skips the partition check for days the caller knows exist.
    Returns the number of rows sent.
    """
    if not rows:
        return 0
    records = [(sym, to_utc(t), b, a, bs, az) for sym, t, b, a, bs, az in rows]
    async with _pool_of(db).acquire() as conn:
        if ensure_partitions:
            ts = [r[1] for r in records]
            await ensure_quote_partitions(conn, min(ts), max(ts))
        if idempotent:
            await conn.executemany(
                "INSERT INTO quotes (symbol, ts, bid_price, ask_price, bid_size, ask_size)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (symbol, ts) DO NOTHING", records)
        else:
            await conn.copy_records_to_table("quotes", records=records, columns=list(QUOTE_COLS))
    return len(records)


async def insert_quotes_executemany(db: Any, frame: pl.DataFrame) -> int:
    """The naive path (one INSERT per row via executemany); kept for the benchmark."""
    frame = normalise_quotes(frame)
    if frame.height == 0:
        return 0
    lo = to_utc(float(frame["ts"].min()))  # type: ignore[arg-type]
    hi = to_utc(float(frame["ts"].max()))  # type: ignore[arg-type]
    rows = [(s, to_utc(t), b, a, bs, az) for s, t, b, a, bs, az in frame.iter_rows()]
    async with _pool_of(db).acquire() as conn:
        await ensure_quote_partitions(conn, lo, hi)
        await conn.executemany(
            "INSERT INTO quotes (symbol, ts, bid_price, ask_price, bid_size, ask_size)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )
    return len(rows)


_QUOTE_ROW = np.dtype([
    ("nf", ">i2"), ("l0", ">i4"), ("ts", ">i8"), ("l1", ">i4"), ("bid_price", ">f8"), ("l2", ">i4"),
    ("ask_price", ">f8"), ("l3", ">i4"), ("bid_size", ">f8"), ("l4", ">i4"), ("ask_size", ">f8"),
])


def parse_pgcopy_fixed(data: bytes, row: np.dtype) -> np.ndarray:
    """Rows of a binary COPY whose columns are all NOT NULL fixed-width (numpy, no loop)."""
    if not data.startswith(_PGCOPY_HEADER[:11]):
        raise ValueError("not a PostgreSQL binary COPY stream")
    ext = int.from_bytes(data[15:19], "big")
    body = data[19 + ext:-2]  # header + extension, trailer
    if len(body) % row.itemsize:
        raise ValueError("binary COPY rows are not fixed-width (a NULL?)")
    return np.frombuffer(body, dtype=row)


class _Chunks:
    """A COPY's output collected in memory: asyncpg awaits a coroutine output directly,
    while a file-like output costs a thread-pool hop per chunk (measured: most of the
    client time of a 2 GB read)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def add(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


async def read_quote_array(db: Any, symbol: str, start: Any, end: Any) -> np.ndarray:
    """One symbol's quotes with start <= ts < end as an (n, 5) float64 array, ts-ascending:
    columns ts (epoch s), bid_price, ask_price, bid_size, ask_size (QUOTE_COLS[1:]).

    Read through binary COPY and decoded with numpy (no per-row Python, no frame).
    """
    pool = _pool_of(db)
    lo, hi = to_utc(start), to_utc(end)
    buf = _Chunks()
    async with pool.acquire() as conn:
        # no ORDER BY: partitions come back in time order per day; numpy sorts the rest
        await conn.copy_from_query(
            "SELECT ts, bid_price, ask_price, bid_size, ask_size"
            " FROM quotes WHERE symbol = $1 AND ts >= $2 AND ts < $3",
            symbol, lo, hi, output=buf.add, format="binary",
        )
    rows = parse_pgcopy_fixed(buf.getvalue(), _QUOTE_ROW)
    del buf
    order = np.argsort(rows["ts"], kind="stable")
    out = np.empty((rows.shape[0], 5))
    # timestamptz on the wire: microseconds since 2000-01-01 UTC
    out[:, 0] = (rows["ts"][order].astype(np.int64) + _PG_EPOCH_US) / 1e6
    for k, c in enumerate(("bid_price", "ask_price", "bid_size", "ask_size"), start=1):
        out[:, k] = rows[c][order]
    return out


_KEYED_QUOTE_ROW = np.dtype([
    ("nf", ">i2"), ("lk", ">i4"), ("k", ">i4"), ("l0", ">i4"), ("ts", ">i8"), ("l1", ">i4"), ("bid_price", ">f8"),
    ("l2", ">i4"), ("ask_price", ">f8"),
])


async def scan_quotes_by_day(db: Any, symbols: Sequence[str], start: Any, end: Any,
                             on_symbol: Callable[[int, np.ndarray], None]) -> int:
    """Every quote of `symbols` with start <= ts < end, read day partition by day partition
    in one pass: for each UTC day, ``on_symbol(k, rows)`` per symbol k (its index in
    `symbols`) that has quotes that day, rows an (n, 3) float64 array of ts (epoch s),
    bid_price, ask_price (the first columns of :func:`read_quote_array`; the sizes, which a
    backtest does not read, stay behind: a third less to transfer), ts-ascending, days in
    time order. Returns the row count.

    Reading symbol by symbol fetches each heap page once per symbol (the recorder writes
    all symbols interleaved in time order), so for many symbols this single sequential
    pass is several times faster; memory is one day of quotes.
    """
    pool = _pool_of(db)
    lo, hi = to_utc(start), to_utc(end)
    names = list(symbols)
    day = dt.datetime.combine(lo.date(), dt.time(), tzinfo=dt.UTC)
    total = 0
    while day < hi:
        a, b = max(lo, day), min(hi, day + dt.timedelta(days=1))
        buf = _Chunks()
        async with pool.acquire() as conn, conn.transaction():
            # a sequential scan of the day whatever the statistics say (a freshly imported
            # partition has none, and the planner then walks the index symbol by symbol)
            await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
            await conn.copy_from_query(
                "SELECT s.k::int4, q.ts, q.bid_price, q.ask_price FROM quotes q"
                " JOIN unnest($1::text[]) WITH ORDINALITY AS s(symbol, k) ON q.symbol = s.symbol"
                " WHERE q.ts >= $2 AND q.ts < $3",
                names, a, b, output=buf.add, format="binary",
            )
        rows = parse_pgcopy_fixed(buf.getvalue(), _KEYED_QUOTE_ROW)
        del buf
        if rows.shape[0]:
            keys = rows["k"].astype(np.int64) - 1
            order = np.lexsort((rows["ts"], keys))
            keys = keys[order]
            cuts = np.flatnonzero(np.diff(keys)) + 1
            for lo_i, hi_i in zip(np.r_[0, cuts], np.r_[cuts, keys.size], strict=True):
                idx = order[lo_i:hi_i]
                out = np.empty((idx.size, 3))
                out[:, 0] = (rows["ts"][idx].astype(np.int64) + _PG_EPOCH_US) / 1e6
                out[:, 1] = rows["bid_price"][idx]
                out[:, 2] = rows["ask_price"][idx]
                on_symbol(int(keys[lo_i]), out)
            total += int(rows.shape[0])
        day += dt.timedelta(days=1)
    return total


async def read_quotes(db: Any, symbols: Sequence[str], start: Any, end: Any) -> pl.DataFrame:
    """Quotes of `symbols` with start <= ts < end: symbol, ts (float epoch s), prices, sizes
    (read_quote_array per symbol, concurrently)."""

    async def one(sym: str) -> pl.DataFrame:
        arr = await read_quote_array(db, sym, start, end)
        cols = {c: arr[:, k] for k, c in enumerate(QUOTE_COLS[1:])}
        return pl.DataFrame(cols).with_columns(pl.lit(sym, dtype=pl.Utf8).alias("symbol"))

    frames = list(await asyncio.gather(*(one(s) for s in symbols)))
    if not frames:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Float64, "bid_price": pl.Float64,
                                    "ask_price": pl.Float64, "bid_size": pl.Float64, "ask_size": pl.Float64})
    return pl.concat([f.select("symbol", *QUOTE_COLS[1:]) for f in frames]).sort(["ts", "symbol"])


async def quote_counts(db: Any) -> pl.DataFrame:
    return await read_frame(
        db,
        "SELECT symbol, count(*) AS n, extract(epoch FROM min(ts))::float8 AS first_ts,"
        " extract(epoch FROM max(ts))::float8 AS last_ts FROM quotes GROUP BY symbol ORDER BY symbol",
    )


# ---------------------------------------------------------------- bars

def _interval(tf: str) -> str:
    return f"{tf_seconds(tf)} seconds"


async def build_bars_from_quotes(db: Any, tf: str, start: Any, end: Any,
                                 symbols: Iterable[str] | None = None) -> int:
    """Upsert the bars of timeframe `tf` fully inside [start, end) from quote mids.

    OHLC of mid = (bid + ask) / 2; volume 0 (quotes carry no traded volume). Only
    completed bars are written (bar open + tf <= end), so rerunning is idempotent
    and a bar is never built from part of its quotes.
    """
    syms = list(symbols) if symbols is not None else None
    sql = (
        "INSERT INTO bars (symbol, tf, open_time, open, high, low, close, volume, source)"
        " SELECT symbol, $1, b, (array_agg(mid ORDER BY ts))[1], max(mid), min(mid),"
        " (array_agg(mid ORDER BY ts DESC))[1], 0, 'quotes' FROM ("
        "   SELECT symbol, ts, (bid_price + ask_price) / 2 AS mid,"
        "     date_bin($2::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b"
        "   FROM quotes WHERE ts >= $3 AND ts < $4 AND ($5::text[] IS NULL OR symbol = ANY($5::text[]))"
        " ) q WHERE b + $2::interval <= $4 AND b >= $3 GROUP BY symbol, b"
        " ON CONFLICT (symbol, tf, open_time) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high,"
        " low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume, source = EXCLUDED.source"
    )
    lo = to_utc(start)
    # align the lower bound down to a bar boundary so the first bar is complete
    lo = to_utc((int(lo.timestamp()) // tf_seconds(tf)) * tf_seconds(tf))
    hi = to_utc(end)
    async with _pool_of(db).acquire() as conn:
        status = await conn.execute(sql, tf, dt.timedelta(seconds=tf_seconds(tf)), lo, hi, syms)
    return int(status.split()[-1])


def normalise_bars(frame: pl.DataFrame, tf: str, source: str) -> pl.DataFrame:
    if "open_time" not in frame.columns:
        for alt in ("date", "time", "ts", "timestamp"):
            if alt in frame.columns:
                frame = frame.rename({alt: "open_time"})
                break
    if frame.schema["open_time"].is_temporal():
        t = pl.col("open_time").dt.epoch("us").cast(pl.Float64) / 1e6
    else:
        t = pl.col("open_time").cast(pl.Float64)
    frame = frame.with_columns(t.alias("open_time"))
    if "volume" not in frame.columns:
        frame = frame.with_columns(pl.lit(0.0).alias("volume"))
    return frame.with_columns(pl.lit(tf).alias("tf"), pl.lit(source).alias("source")).select(BAR_COLS)


async def copy_bars(db: Any, frame: pl.DataFrame, tf: str, source: str = "import") -> int:
    """Upsert bars (symbol, open_time, open, high, low, close[, volume]) with COPY + staging."""
    frame = normalise_bars(frame, tf, source)
    if frame.height == 0:
        return 0
    data = pgcopy_binary(frame, _BAR_KINDS)
    async with _pool_of(db).acquire() as conn, conn.transaction():
        await conn.execute("CREATE TEMP TABLE bars_stage (LIKE bars INCLUDING DEFAULTS) ON COMMIT DROP")
        await conn.copy_to_table("bars_stage", source=io.BytesIO(data), columns=list(BAR_COLS), format="binary")
        # rows that are already stored unchanged are not rewritten (cheap re-imports)
        status = await conn.execute(
            "INSERT INTO bars SELECT * FROM bars_stage ON CONFLICT (symbol, tf, open_time) DO UPDATE SET"
            " open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,"
            " volume = EXCLUDED.volume, source = EXCLUDED.source"
            " WHERE (bars.open, bars.high, bars.low, bars.close, bars.volume)"
            " IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)"
        )
    return int(status.split()[-1])


_BAR_SCHEMA = {"symbol": pl.Utf8, "ts": pl.Float64, "open": pl.Float64, "high": pl.Float64,
               "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64}


async def read_bars(db: Any, symbols: Sequence[str], tf: str, start: Any, end: Any) -> pl.DataFrame:
    """Long frame of bars with start <= open_time < end: symbol, ts (epoch s), OHLCV.

    Every `tf` slot (UTC-aligned, date_bin from the epoch) of a symbol that holds no stored
    `tf` bar (none at all, a late start, a hole, an early stop) gets a bar built from the
    coarsest stored finer timeframe that divides `tf` and covers the slot completely
    (5m -> 15m, 1h -> 4h and 1d; see :func:`read_resampled_bars`); a stored bar always
    wins over a built one. So every timeframe of strategy.md section 1 works from what
    the recorder and backfill store (5m and 1h), and a coarse series imported for part of
    the range is completed rather than cut.
    """
    direct = await read_frame(
        db,
        "SELECT symbol, extract(epoch FROM open_time)::float8 AS ts, open, high, low, close, volume"
        " FROM bars WHERE tf = $1 AND symbol = ANY($2::text[]) AND open_time >= $3 AND open_time < $4"
        " ORDER BY open_time, symbol",
        tf, list(symbols), to_utc(start), to_utc(end), schema=_BAR_SCHEMA,
    )
    step = float(tf_seconds(tf))
    lo_ts, hi_ts = to_utc(start).timestamp(), to_utc(end).timestamp()
    first_slot = math.ceil(lo_ts / step) * step
    stored = {k[0]: g.get_column("ts").to_numpy() for k, g in direct.group_by("symbol")} if direct.height else {}
    gaps = [(sym, a, b) for sym in dict.fromkeys(symbols)
            for a, b in _slot_gaps(stored.get(sym, np.empty(0)), first_slot, hi_ts, step)]
    parts = [direct]
    for src in finer_timeframes(tf):
        if not gaps:
            break
        built = await read_resampled_bars(db, gaps, src, tf)
        if built.height:
            log.info("%s bars of %s built from stored %s bars", tf,
                     ", ".join(sorted(set(built.get_column("symbol").to_list()))), src)
            parts.append(built)
            # the slots still empty go on to the next finer timeframe
            have = {k[0]: g.get_column("ts").to_numpy() for k, g in built.group_by("symbol")}
            gaps = [(sym, c, d) for sym, a, b in gaps
                    for c, d in _slot_gaps(_within(have.get(sym), a, b), a, b, step)]
    if len(parts) == 1:
        return direct
    return pl.concat(parts).sort(["ts", "symbol"])


def _within(ts: np.ndarray | None, a: float, b: float) -> np.ndarray:
    if ts is None:
        return np.empty(0)
    return ts[(ts >= a) & (ts < b)]


def _slot_gaps(ts: np.ndarray, first_slot: float, end: float, step: float) -> list[tuple[float, float]]:
    """Ranges [a, b) of slot open times in [first_slot, end) with no open time in sorted `ts`
    (a missing head, holes, a missing tail), slots being first_slot + k * step."""
    edges = np.concatenate([[first_slot - step], np.sort(ts), [math.ceil(end / step) * step]])
    d = np.diff(edges)
    idx = np.nonzero(d > step * 1.5)[0]
    return [(float(edges[i] + step), float(min(edges[i + 1], end))) for i in idx
            if edges[i] + step < end]


def finer_timeframes(tf: str) -> list[str]:
    """Stored timeframes a `tf` bar can be built from: those that divide it, coarsest first."""
    n = tf_seconds(tf)
    return sorted((t for t, s in TF_SECONDS.items() if s < n and n % s == 0), key=lambda t: -TF_SECONDS[t])


async def read_resampled_bars(db: Any, ranges: Sequence[tuple[str, float, float]], src: str,
                              tf: str) -> pl.DataFrame:
    """`tf` bars built from stored `src` bars, for the slots in each (symbol, lo, hi) range
    (epoch seconds, lo on the tf grid, hi exclusive): open of the first, max high, min low,
    close of the last, summed volume, per UTC-aligned `tf` interval (date_bin from the
    epoch). Only complete bars: every one of the tf / src source bars must be stored and
    inside the range, so a hole never makes a short bar that looks whole. One query."""
    if not ranges:
        return pl.DataFrame(schema=_BAR_SCHEMA)
    n_src = tf_seconds(tf) // tf_seconds(src)
    return await read_frame(
        db,
        "SELECT symbol, extract(epoch FROM b)::float8 AS ts, (array_agg(open ORDER BY open_time))[1] AS open,"
        " max(high) AS high, min(low) AS low, (array_agg(close ORDER BY open_time DESC))[1] AS close,"
        " sum(volume) AS volume FROM ("
        "   SELECT bars.symbol, bars.open_time, open, high, low, close, volume, r.lo,"
        "     date_bin($2::interval, open_time, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b"
        "   FROM unnest($3::text[], $4::float8[], $5::float8[]) AS r(symbol, lo, hi)"
        "   JOIN bars ON bars.tf = $1 AND bars.symbol = r.symbol"
        "     AND bars.open_time >= to_timestamp(r.lo) AND bars.open_time < to_timestamp(r.hi)"
        " ) q WHERE b >= to_timestamp(lo) GROUP BY symbol, b HAVING count(*) = $6 ORDER BY b, symbol",
        src, dt.timedelta(seconds=tf_seconds(tf)), [r[0] for r in ranges], [float(r[1]) for r in ranges],
        [float(r[2]) for r in ranges], n_src, schema=_BAR_SCHEMA,
    )


async def stored_timeframes(db: Any, symbol: str) -> list[str]:
    """The timeframes with bars stored for `symbol`, shortest first."""
    async with _pool_of(db).acquire() as conn:
        rows = await conn.fetch("SELECT DISTINCT tf FROM bars WHERE symbol = $1", symbol)
    return sorted((r["tf"] for r in rows), key=lambda t: TF_SECONDS.get(t, 0))


async def bar_symbols(db: Any, tf: str) -> pl.DataFrame:
    return await read_frame(
        db,
        "SELECT symbol, count(*) AS n, extract(epoch FROM min(open_time))::float8 AS first_ts,"
        " extract(epoch FROM max(open_time))::float8 AS last_ts FROM bars WHERE tf = $1"
        " GROUP BY symbol ORDER BY symbol",
        tf,
    )


_COVERAGE_SCHEMA = {"symbol": pl.Utf8, "tf": pl.Utf8, "n": pl.Int64, "first_ts": pl.Float64, "last_ts": pl.Float64,
                    "missing": pl.Int64, "holes": pl.Int64, "largest_hole": pl.Int64}


async def bar_coverage(db: Any, symbols: Sequence[str] | None = None) -> pl.DataFrame:
    """Per stored (symbol, tf): the bars' count `n`, the first and last open time (epoch s),
    `missing` (the bars absent between the first and the last: (last - first) / tf + 1 - n),
    `holes` (runs of missing bars) and `largest_hole` (the longest run, in bars; 0 without
    a hole). The counts come from one aggregate over the bars' primary key; only the
    series with missing bars are walked (a lag per (symbol, tf)) for their holes, all in
    the server (no bar comes to Python). `symbols` limits it to those symbols. Ordered by
    symbol, then timeframe length; a timeframe of no known length gets null
    missing/holes."""
    tfs = list(TF_SECONDS)
    return await read_frame(
        db,
        "WITH s AS (SELECT * FROM unnest($1::text[], $2::float8[]) AS s(tf, secs)),"
        " a AS (SELECT symbol, tf, count(*) AS n, min(open_time) AS lo, max(open_time) AS hi FROM bars"
        "   WHERE $3::text[] IS NULL OR symbol = ANY($3::text[]) GROUP BY symbol, tf),"
        " c AS (SELECT a.*, s.secs, round(extract(epoch FROM a.hi - a.lo)::float8 / s.secs)::bigint + 1 - a.n"
        "   AS missing FROM a LEFT JOIN s ON s.tf = a.tf),"
        " g AS (SELECT b.symbol, b.tf, c.secs, extract(epoch FROM b.open_time - lag(b.open_time)"
        "   OVER (PARTITION BY b.symbol, b.tf ORDER BY b.open_time))::float8 AS gap"
        "   FROM bars b JOIN c ON b.symbol = c.symbol AND b.tf = c.tf WHERE c.missing > 0),"
        " h AS (SELECT symbol, tf, count(*) FILTER (WHERE gap > secs) AS holes,"
        "   round(max(gap) / min(secs))::bigint - 1 AS largest FROM g GROUP BY symbol, tf)"
        " SELECT c.symbol, c.tf, c.n, extract(epoch FROM c.lo)::float8 AS first_ts,"
        " extract(epoch FROM c.hi)::float8 AS last_ts, c.missing,"
        " CASE WHEN c.secs IS NULL THEN NULL ELSE coalesce(h.holes, 0) END AS holes,"
        " CASE WHEN c.secs IS NULL THEN NULL ELSE greatest(coalesce(h.largest, 0), 0) END AS largest_hole"
        " FROM c LEFT JOIN h ON h.symbol = c.symbol AND h.tf = c.tf ORDER BY c.symbol, c.secs NULLS LAST, c.tf",
        tfs, [float(TF_SECONDS[t]) for t in tfs], None if symbols is None else list(symbols),
        schema=_COVERAGE_SCHEMA,
    )


async def first_bar_times(db: Any, tf: str) -> dict[str, float]:
    """Per symbol, the open time (epoch s) of its first bar that `tf` bars can be read or
    built from (read_bars): stored `tf` bars and the finer timeframes dividing it."""
    async with _pool_of(db).acquire() as conn:
        rows = await conn.fetch(
            "SELECT symbol, extract(epoch FROM min(open_time))::float8 AS first_ts FROM bars"
            " WHERE tf = ANY($1::text[]) GROUP BY symbol ORDER BY symbol", [tf, *finer_timeframes(tf)])
    return {r["symbol"]: float(r["first_ts"]) for r in rows}


async def missing_bar_ranges(db: Any, symbols: Sequence[str], tf: str, start: Any,
                             end: Any) -> dict[str, list[tuple[float, float]]]:
    """Per symbol, the ranges [lo, hi) of open times in [start, end) that hold no stored bar.

    One query for all symbols: the stored open times of the window, plus two sentinels
    per symbol (start - tf and end), ordered per symbol; a pair of neighbours t0 < t1
    with t1 > t0 + tf is the missing range [t0 + tf, t1). So a symbol with nothing
    stored gets [start, end), one with complete bars gets [], and a hole between two
    stored bars, a missing head or a missing tail each get one range. Times are epoch
    seconds; every symbol asked for is a key. Only the table is read (no bar is
    pulled into Python).
    """
    syms = sorted(set(symbols))
    out: dict[str, list[tuple[float, float]]] = {s: [] for s in syms}
    if not syms or to_utc(end) <= to_utc(start):
        return out
    sql = (
        "WITH s AS (SELECT unnest($1::text[]) AS symbol),"
        " t AS ("
        "   SELECT symbol, open_time FROM bars"
        "   WHERE tf = $2 AND symbol = ANY($1::text[]) AND open_time >= $3 AND open_time < $4"
        "   UNION ALL SELECT symbol, $3 - $5::interval FROM s"
        "   UNION ALL SELECT symbol, $4 FROM s),"
        " g AS (SELECT symbol, open_time,"
        "   lag(open_time) OVER (PARTITION BY symbol ORDER BY open_time) AS prev FROM t)"
        " SELECT symbol, extract(epoch FROM prev + $5::interval)::float8 AS lo,"
        " extract(epoch FROM open_time)::float8 AS hi"
        " FROM g WHERE prev IS NOT NULL AND open_time > prev + $5::interval ORDER BY symbol, lo"
    )
    async with _pool_of(db).acquire() as conn:
        rows = await conn.fetch(sql, syms, tf, to_utc(start), to_utc(end), dt.timedelta(seconds=tf_seconds(tf)))
    for r in rows:
        out[r["symbol"]].append((float(r["lo"]), float(r["hi"])))
    return out


async def newest_bar_close(db: Any, symbols: Sequence[str], tf: str, before: Any) -> dt.datetime | None:
    """Close time (open + length) of the newest complete bar of any of `symbols` at `before`,
    over `tf` and the finer timeframes `tf` bars are built from (read_bars); None: no bar."""
    tfs = [tf, *finer_timeframes(tf)]
    async with _pool_of(db).acquire() as conn:
        value = await conn.fetchval(
            "SELECT max(open_time + make_interval(secs => s.secs)) FROM bars"
            " JOIN unnest($1::text[], $2::float8[]) AS s(tf, secs) ON bars.tf = s.tf"
            " WHERE symbol = ANY($3::text[]) AND open_time + make_interval(secs => s.secs) <= $4",
            tfs, [float(tf_seconds(t)) for t in tfs], list(symbols), to_utc(before))
    return None if value is None else to_utc(value)


# ---------------------------------------------------------------- the notebook's load_data

def _with_time(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.from_epoch((pl.col("ts") * 1e6).round().cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC").alias("time"),
        pl.col("ts").round().cast(pl.Int64).alias("ts"),
    )


def bars_wide(long: pl.DataFrame, tokens: Sequence[str]) -> pl.DataFrame:
    """Long bars -> `time`, `ts`, one close column per token, inner-aligned on ts."""
    out: pl.DataFrame | None = None
    for tok in tokens:
        part = long.filter(pl.col("symbol") == symbol_of(tok)).select("ts", pl.col("close").alias(tok))
        out = part if out is None else out.join(part, on="ts", how="inner")
    assert out is not None
    return _with_time(out.sort("ts")).select(["time", "ts", *tokens])


def bar_close_ticks(agg: pl.DataFrame, tokens: Sequence[str], half_spread: float) -> pl.DataFrame:
    """Bars-only ticks (strategy.md section 1): one per bar, stamped at the bar's open time,
    bid/ask = close (1 -/+ half_spread), sizes null (which marks them as bar ticks)."""
    return agg.select(
        "time", "ts",
        *[e for tok in tokens for e in (
            pl.col(tok),
            pl.lit(None, dtype=pl.Float64).alias(f"{tok}_size"),
            (pl.col(tok) * (1 - half_spread)).alias(f"{tok}_bid_price"),
            (pl.col(tok) * (1 + half_spread)).alias(f"{tok}_ask_price"),
            pl.lit(None, dtype=pl.Float64).alias(f"{tok}_bid_size"),
            pl.lit(None, dtype=pl.Float64).alias(f"{tok}_ask_size"),
        )],
    )


def pair_quote_ticks(quotes: pl.DataFrame, t1: str, t2: str) -> pl.DataFrame:
    """The pair's quote ticks from long quotes (a read_quotes frame): the two legs inner-aligned
    on ts, in the notebook's columns (the backtester's ticks; the executor's warm-up)."""
    return _quote_ticks(quotes, t1, t2)


def _quote_ticks(quotes: pl.DataFrame, t1: str, t2: str) -> pl.DataFrame:
    legs = []
    for tok in (t1, t2):
        q = quotes.filter(pl.col("symbol") == symbol_of(tok))
        legs.append(q.select(
            "ts",
            ((pl.col("bid_price") + pl.col("ask_price")) / 2).alias(tok),
            ((pl.col("bid_size") + pl.col("ask_size")) / 2).alias(f"{tok}_size"),
            pl.col("bid_price").alias(f"{tok}_bid_price"),
            pl.col("ask_price").alias(f"{tok}_ask_price"),
            pl.col("bid_size").alias(f"{tok}_bid_size"),
            pl.col("ask_size").alias(f"{tok}_ask_size"),
        ))
    ticks = _with_time(legs[0].join(legs[1], on="ts", how="inner").sort("ts"))
    return ticks.select(["time", "ts"] + [c for c in ticks.columns if c not in ("time", "ts")])


async def load_pair_data(db: Any, token_1: str, token_2: str, start: Any, end: Any, tf: str, wind: int,
                         reference_tokens: Sequence[str] = ("BTC", "ETH", "SOL"),
                         bars_long: pl.DataFrame | None = None,
                         quotes_long: pl.DataFrame | None = None,
                         half_spread: float = 1e-4,
                         history: dt.timedelta | None = None,
                         quiet: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tick_df, agg_df) in the notebook's layout.

    tick_df: the ticks of [start, end), sorted by ts; columns `time`, `ts` (int s) and
    per token T: `T` (mid), `T_size` (mean of bid and ask size), `T_bid_price`,
    `T_ask_price`, `T_bid_size`, `T_ask_size`. Quote ticks are the two tokens' quotes
    inner-aligned on ts. Every bar of the window in which the pair has no quote tick
    gets a bar-close tick instead (strategy.md section 1, bars-only mode: stamped at the
    bar's open time, bid/ask = close (1 -/+ half_spread), default 1 bp, sizes null), so
    partial quote coverage (a recorder that started late or was down) still trades the
    whole window and the metrics' denominator is honest; no quotes at all is the
    bars-only extreme of the same rule. `quote_coverage` measures the share
    (docs/strategy.md, "Partial quote coverage").
    agg_df: bars with open time in [start - max(wind * tf, history), end): `time`, `ts`,
    and the bar close per token (the pair's tokens inner-aligned; reference tokens
    BTC/ETH/SOL left-joined when present). `history` (e.g. 180 days for the open-time
    features) loads more of the past than the z windows need. `bars_long` (a read_bars
    frame covering the window for these symbols) saves the bar query when many pairs
    are loaded, and `quotes_long` (a read_quotes frame) the quote queries. `quiet`: no
    per-pair debug line about bar-close ticks (run_sweep counts them in one line).
    """
    t1, t2 = token_of(token_1), token_of(token_2)
    lo, hi = to_utc(start), to_utc(end)
    if bars_long is None:
        warm = max(dt.timedelta(seconds=tf_seconds(tf) * int(wind)), history or dt.timedelta(0))
        refs = [r for r in reference_tokens if r not in (t1, t2)]
        bars_long = await read_bars(db, [symbol_of(t) for t in (t1, t2, *refs)], tf, lo - warm, hi)
    if quotes_long is None:
        quotes_long = await read_quotes(db, [symbol_of(t1), symbol_of(t2)], lo, hi)
    return pair_frames(t1, t2, lo, hi, tf, wind, reference_tokens, bars_long, quotes_long, half_spread, history,
                       quiet)


def pair_bars(token_1: str, token_2: str, start: Any, end: Any, tf: str, wind: int,
              reference_tokens: Sequence[str], bars_long: pl.DataFrame,
              history: dt.timedelta | None = None) -> pl.DataFrame:
    """The pair's agg_df from long bars: open times in [start - max(wind * tf, history), end),
    `time`, `ts`, the two closes inner-aligned, reference closes left-joined."""
    t1, t2 = token_of(token_1), token_of(token_2)
    lo, hi = to_utc(start), to_utc(end)
    warm = max(dt.timedelta(seconds=tf_seconds(tf) * int(wind)), history or dt.timedelta(0))
    refs = [r for r in reference_tokens if r not in (t1, t2)]
    wanted = [symbol_of(t) for t in (t1, t2, *refs)]
    lo_s, hi_s = (lo - warm).timestamp(), hi.timestamp()
    long = bars_long.filter(pl.col("symbol").is_in(wanted) & (pl.col("ts") >= lo_s) & (pl.col("ts") < hi_s))
    agg = bars_wide(long, [t1, t2])
    for r in refs:
        part = long.filter(pl.col("symbol") == symbol_of(r)).select(
            pl.col("ts").round().cast(pl.Int64), pl.col("close").alias(r)
        )
        if part.height:
            agg = agg.join(part, on="ts", how="left")
    return agg


def pair_frames(token_1: str, token_2: str, start: Any, end: Any, tf: str, wind: int,
                reference_tokens: Sequence[str], bars_long: pl.DataFrame, quotes_long: pl.DataFrame,
                half_spread: float = 1e-4, history: dt.timedelta | None = None,
                quiet: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`load_pair_data` from frames already read (long bars and quotes covering the
    window; other symbols and times are filtered out): no IO, so a worker process builds
    a pair's window from its own copy of two tokens' quotes."""
    t1, t2 = token_of(token_1), token_of(token_2)
    lo, hi = to_utc(start), to_utc(end)
    tf_s = tf_seconds(tf)
    agg = pair_bars(t1, t2, lo, hi, tf, wind, reference_tokens, bars_long, history)
    quotes = quotes_long.filter(pl.col("symbol").is_in([symbol_of(t1), symbol_of(t2)])
                                & (pl.col("ts") >= lo.timestamp()) & (pl.col("ts") < hi.timestamp()))
    # a bar-close tick carries the bar's close: only bars that close inside the window
    window_bars = agg.filter((pl.col("time") >= lo) & (pl.col("ts") + tf_s <= hi.timestamp()))
    qticks = _quote_ticks(quotes, t1, t2) if quotes.height else None
    if qticks is None or qticks.height == 0:
        if not quiet:
            log.debug("no quotes for %s/%s in range: bars-only mode", t1, t2)
        return bar_close_ticks(window_bars, (t1, t2), half_spread), agg
    covered = qticks.select((pl.col("ts") // tf_s * tf_s).unique().alias("ts"))
    gaps = window_bars.join(covered, on="ts", how="anti")
    if gaps.height == 0:
        return qticks, agg
    ticks = pl.concat([qticks, bar_close_ticks(gaps, (t1, t2), half_spread).select(qticks.columns)],
                      how="vertical_relaxed").sort("ts", maintain_order=True)
    if not quiet:
        log.debug("%s/%s: %d of %d bars without quotes get bar-close ticks", t1, t2, gaps.height, window_bars.height)
    return ticks, agg

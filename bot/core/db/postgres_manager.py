"""`DBManager`: the notebook's handle on the bot's Postgres.

    db = DBManager({"host": "127.0.0.1", "user": "postgres", "password": "", "dbname": "bot"})
    coins = await db.coin_information()
    tick_df, agg_df = await load_data("JASMY", "VET", start, end, "1h", 72, db)
    pairs = await db.get_table("pairs")             # typed polars DataFrame

The password is used to connect and never printed (repr masks it). The pool is
created on first use, by whichever call comes first: the DBManager's own methods,
`load_data`, or any `bot.core.db.market` function handed the DBManager (it stands
in for a pool: `acquire()` and `copy_from_query()` connect lazily). `await
db.close()` releases it. Used from another event loop than the one that created
the pool (`asyncio.run` per call in a script), it connects afresh.

`get_table` returns typed columns: timestamptz as Datetime(us, UTC), timestamp as
naive Datetime, date as Date, integers as Int16/32/64, real/double as
Float32/Float64, boolean as Boolean, text and jsonb/json as String (the JSON text;
`pl.col("params").str.json_decode()` gives structs), anything else as its text.
numeric comes back as Float64 by default (the notebook's maths); with
`numeric="decimal"` as exact `pl.Decimal` (scale: the column's declared scale, or
the largest in the data), which is what order sizes and tick rounding need.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import asyncpg
import polars as pl

from bot.core.db import market
from bot.core.db.pool import create_pool

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")

_COLUMNS_SQL = (
    "SELECT a.attname AS name, t.typname AS type, a.atttypmod AS typmod"
    " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
    " WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)

_INTS = {"int2": pl.Int16, "int4": pl.Int32, "int8": pl.Int64, "oid": pl.Int64}
_FLOATS = {"float4": pl.Float32, "float8": pl.Float64}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _numeric_scale(typmod: int) -> int | None:
    """The declared scale of numeric(p, s), None for a plain numeric."""
    return (typmod - 4) & 0xFFFF if typmod >= 4 else None


def _column_plan(name: str, typname: str) -> tuple[str, Any, str]:
    """(select expression, CSV dtype, post-processing kind) of one column."""
    col = _quote_ident(name)
    if typname in ("timestamptz", "timestamp"):
        expr = f"CASE WHEN isfinite({col}) THEN (extract(epoch FROM {col}) * 1000000)::int8 END"
        return f"{expr} AS {col}", pl.Int64, typname
    if typname == "date":
        return f"CASE WHEN isfinite({col}) THEN ({col} - DATE '1970-01-01') END AS {col}", pl.Int32, "date"
    if typname in _INTS:
        return col, _INTS[typname], ""
    if typname in _FLOATS:
        return col, _FLOATS[typname], ""
    if typname == "bool":
        return f"{col}::int4 AS {col}", pl.Int32, "bool"
    if typname == "numeric":
        return f"{col}::text AS {col}", pl.Utf8, "numeric"
    return f"{col}::text AS {col}", pl.Utf8, ""


class DBManager:
    def __init__(self, db_params: dict[str, Any]):
        missing = [k for k in ("host", "user", "dbname") if not db_params.get(k)]
        if missing:
            raise ValueError(f"db_params: missing {missing}")
        self._params = dict(db_params)
        self.pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        p = self._params
        return f"DBManager(host={p['host']!r}, port={p.get('port', 5432)}, user={p['user']!r}, dbname={p['dbname']!r})"

    @property
    def dsn(self) -> str:
        p = self._params
        pw = p.get("password") or ""
        auth = quote(str(p["user"])) + (":" + quote(str(pw)) if pw else "")
        if str(p["host"]).startswith("/"):  # a unix-socket directory
            return f"postgresql://{auth}@/{p['dbname']}?host={quote(str(p['host']))}&port={int(p.get('port', 5432))}"
        return f"postgresql://{auth}@{p['host']}:{int(p.get('port', 5432))}/{p['dbname']}"

    async def get_pool(self) -> asyncpg.Pool:
        """The pool, created on first use (once, however many callers race for it)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop: the old pool is unusable here
            if self.pool is not None:
                try:
                    self.pool.terminate()
                except RuntimeError:  # its loop is closed: nothing left to release
                    pass
            self.pool, self._loop, self._lock = None, loop, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self.pool is None:
                self.pool = await create_pool(self.dsn, 1, 4)
        return self.pool

    connect = get_pool

    # ------------------------------------------------------------ a stand-in for the pool

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the (lazily created) pool, like `asyncpg.Pool.acquire()`."""
        pool = await self.get_pool()
        async with pool.acquire() as conn:
            yield conn

    async def copy_from_query(self, query: str, *args: Any, **kwargs: Any) -> str:
        async with self.acquire() as conn:
            result: str = await conn.copy_from_query(query, *args, **kwargs)
            return result

    # ------------------------------------------------------------ the notebook's calls

    async def get_table(self, name: str, df_type: str = "polars", *, numeric: str = "float") -> Any:
        """The whole table `name` as a typed polars (or pandas) frame; see the module doc."""
        if not _IDENT.match(name):
            raise ValueError(f"table name: not a plain identifier (got {name!r})")
        if df_type not in ("polars", "pandas"):
            raise ValueError(f"df_type: 'polars' or 'pandas' (got {df_type!r})")
        if numeric not in ("float", "decimal"):
            raise ValueError(f"numeric: 'float' or 'decimal' (got {numeric!r})")
        pool = await self.get_pool()
        buf = io.BytesIO()
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                raise ValueError(f"table {name!r} does not exist")
            columns = await conn.fetch(_COLUMNS_SQL, name)
            plans = [(r["name"], r["typmod"], *_column_plan(r["name"], r["type"])) for r in columns]
            select = ", ".join(expr for _, _, expr, _, _ in plans)
            await conn.copy_from_query(f"SELECT {select} FROM {_quote_ident(name)}", output=buf,
                                       format="csv", header=True)
        schema = {col: dtype for col, _, _, dtype, _ in plans}
        frame = pl.read_csv(io.BytesIO(buf.getvalue()), schema=schema, has_header=True, try_parse_dates=False)
        frame = frame.with_columns([_finish(frame, col, typmod, kind, numeric)
                                    for col, typmod, _, _, kind in plans if kind])
        return frame if df_type == "polars" else frame.to_pandas()

    async def coin_information(self) -> dict[str, dict[str, dict[str, Any]]]:
        return await market.coin_information(await self.get_pool())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
            self._loop = None


def _finish(frame: pl.DataFrame, col: str, typmod: int, kind: str, numeric: str) -> pl.Expr:
    c = pl.col(col)
    if kind == "timestamptz":
        return pl.from_epoch(c, time_unit="us").dt.replace_time_zone("UTC").alias(col)
    if kind == "timestamp":
        return pl.from_epoch(c, time_unit="us").alias(col)
    if kind == "date":
        return c.cast(pl.Date).alias(col)
    if kind == "bool":
        return c.cast(pl.Boolean).alias(col)
    # numeric
    if numeric == "float":
        return c.cast(pl.Float64).alias(col)
    scale = _numeric_scale(typmod)
    if scale is None:  # plain numeric: the largest scale in the data
        digits = frame.get_column(col).str.extract(r"\.(\d+)$").str.len_chars().max()
        scale = int(digits) if isinstance(digits, int) else 0
    return c.str.to_decimal(scale=scale).alias(col)

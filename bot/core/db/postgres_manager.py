"""`DBManager`: the notebook's handle on the bot's Postgres.

    db = DBManager({"host": "127.0.0.1", "user": "postgres", "password": "", "dbname": "bot"})
    pairs = await db.get_table("pairs")             # polars DataFrame
    coins = await db.coin_information()

The password is used to connect and never printed (repr masks it). The pool is
created on first use; `await db.close()` releases it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import asyncpg
import polars as pl

from bot.core.db import market
from bot.core.db.pool import create_pool

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


class DBManager:
    def __init__(self, db_params: dict[str, Any]):
        missing = [k for k in ("host", "user", "dbname") if not db_params.get(k)]
        if missing:
            raise ValueError(f"db_params: missing {missing}")
        self._params = dict(db_params)
        self.pool: asyncpg.Pool | None = None

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
        if self.pool is None:
            self.pool = await create_pool(self.dsn, 1, 4)
        return self.pool

    async def get_table(self, name: str, df_type: str = "polars") -> Any:
        """The whole table `name` as a polars (or pandas) frame."""
        if not _IDENT.match(name):
            raise ValueError(f"table name: not a plain identifier (got {name!r})")
        pool = await self.get_pool()
        async with pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            if not exists:
                raise ValueError(f"table {name!r} does not exist")
        frame: pl.DataFrame = await market.read_frame(pool, f'SELECT * FROM "{name}"')
        if df_type == "polars":
            return frame
        if df_type == "pandas":
            return frame.to_pandas()
        raise ValueError(f"df_type: 'polars' or 'pandas' (got {df_type!r})")

    async def coin_information(self) -> dict[str, dict[str, dict[str, Any]]]:
        return await market.coin_information(await self.get_pool())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

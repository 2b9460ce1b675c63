"""Throw-away databases for tests, benchmarks and scripts (never used by the service).

`scratch_server()` yields an admin DSN: `$BOT_DATABASE_DSN` / the given DSN, or an
embedded PostgreSQL in a temp directory. `scratch_database(admin)` creates a fresh
migrated database, yields a Database, and drops it afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.core.db.migrate import migrate
from bot.core.db.pool import Database, EmbeddedPostgres, create_pool


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at database `name`."""
    p = urlsplit(dsn)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def create_database(admin: str, prefix: str = "bot_scratch") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')  # generated name, not input
    finally:
        await conn.close()
    return with_database(admin, name)


async def drop_database(admin: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextmanager
def scratch_server(admin: str | None = None) -> Iterator[str]:
    if admin:
        yield admin
        return
    tmp = Path(tempfile.mkdtemp(prefix="bot-scratch-pg-"))
    server = EmbeddedPostgres(tmp / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@asynccontextmanager
async def scratch_database(admin: str, prefix: str = "bot_scratch") -> AsyncIterator[Database]:
    dsn = await create_database(admin, prefix)
    pool = await create_pool(dsn, 1, 4)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield Database(pool, dsn)
    finally:
        await pool.close()
        await drop_database(admin, dsn)

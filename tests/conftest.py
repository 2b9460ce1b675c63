"""Shared fixtures: a real PostgreSQL (BOT_TEST_DSN, else an embedded pgserver), the
shared market data directory, and a fresh migrated database per test module."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from bot.core.db.migrate import migrate
from bot.core.db.pool import Database, EmbeddedPostgres, create_pool

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; a test that needs it fails under CI=true when it is missing."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {SHARED_DATA} (CI must provide it)")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """DSN of a server where tests may create databases."""
    dsn = os.environ.get("BOT_TEST_DSN")
    if dsn:
        yield dsn
        return
    tmp = Path(tempfile.mkdtemp(prefix="bot-test-pg-"))
    server = EmbeddedPostgres(tmp / "pgdata")
    uri = server.start()
    try:
        yield uri
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _with_db(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def make_database(admin: str) -> str:
    name = f"bot_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(admin, name)


async def drop_database(admin: str, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db_dsn(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database per test module (not migrated)."""
    dsn = await make_database(admin_dsn)
    try:
        yield dsn
    finally:
        await drop_database(admin_dsn, dsn)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def db(db_dsn: str) -> AsyncIterator[Database]:
    """A migrated database with a pool, per test module."""
    pool = await create_pool(db_dsn, 1, 4)
    async with pool.acquire() as conn:
        await migrate(conn)
    database = Database(pool, db_dsn)
    try:
        yield database
    finally:
        await asyncio.wait_for(pool.close(), 30)

"""Shared fixtures: a real PostgreSQL (BOT_TEST_DSN, else an embedded pgserver), the
shared market data directory, and a fresh migrated database per test module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.core.db.migrate import migrate
from bot.core.db.pool import Database, create_pool
from bot.core.db.scratch import create_database, drop_database, scratch_server

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
    """DSN of a server where tests may create databases: BOT_TEST_DSN, else an embedded one."""
    with scratch_server(os.environ.get("BOT_TEST_DSN")) as dsn:
        yield dsn


async def make_database(admin: str) -> str:
    return await create_database(admin, "bot_test")


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

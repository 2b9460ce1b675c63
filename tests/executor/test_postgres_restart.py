"""Postgres restarted while a position is open (issue 13, tests): the exit decided while the
server is down waits for its ledger writes (no order leaves before its row is stored), then
completes once the server is back: one close, one trades row, nothing lost."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.core.db.migrate import migrate
from bot.core.db.pool import EmbeddedPostgres, create_pool
from tests.executor import live
from tests.executor import test_pairs_and_inputs as t

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _Db:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool


async def test_exit_while_postgres_restarts_completes_once_it_is_back() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bot-exec-restart-pg-"))
    server = EmbeddedPostgres(tmp / "pgdata")
    dsn = server.start()
    try:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        pool = await create_pool(dsn, 1, 4)
        db: Any = _Db(pool)
        await t._bars(db, t.PAIRS)
        await t._pairs(db, [{"t1": "AAA", "t2": "BBB"}])
        ex = await t._executor(db, db_retry_s=0.1)
        t.RUNNING.remove(ex)
        await t._feed(ex, t._quotes("AAA", "BBB", live.ENTRY_SPREAD))
        assert await t._statuses(db) == [("AAA_USDT", "open")]
        await asyncio.to_thread(server.stop)  # a real shutdown with the position open
        feeding = asyncio.create_task(t._feed(ex, t._quotes("AAA", "BBB", live.EXIT_SPREAD)))
        await asyncio.sleep(1.0)
        assert not feeding.done() and not ex.L.db_ok and ex.L.db_failures >= 1
        assert await ex.exchange.positions() != {}  # nothing was sent without its ledger row
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(feeding, 30)
        assert ex.L.db_ok and await ex.exchange.positions() == {}
        assert await t._statuses(db) == [("AAA_USDT", "closed")]
        async with pool.acquire() as c:
            assert await c.fetchval("SELECT count(*) FROM trades") == 1
            assert await c.fetchval("SELECT count(*) FROM orders WHERE status = 'filled'") == 4
        await ex.stop()
        await pool.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

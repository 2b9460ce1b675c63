"""Migrations: idempotent, refuse a newer schema, an interrupted migration rolls back."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from bot.core.db.migrate import SchemaTooNew, current_version, load_migrations, migrate
from tests.conftest import drop_database, make_database

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

TABLES = {"instruments", "quotes", "bars", "pairs", "positions", "orders", "trades", "backtest_runs",
          "sweep_results", "selection_runs", "selection_candidates", "job_runs"}


async def test_migrate_is_idempotent_and_creates_the_tables(admin_dsn: str) -> None:
    dsn = await make_database(admin_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            first = await migrate(conn)
            assert first == [m.version for m in load_migrations()]
            assert await migrate(conn) == []
            names = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
            assert TABLES <= names
            part = await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'quotes'")
            assert part == b"p" or part == "p"  # partitioned
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, dsn)


async def test_newer_schema_is_refused(admin_dsn: str) -> None:
    dsn = await make_database(admin_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
            with pytest.raises(SchemaTooNew, match="999"):
                await migrate(conn)
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, dsn)


async def test_interrupted_migration_rolls_back_and_next_run_succeeds(admin_dsn: str, tmp_path: Path) -> None:
    good = "CREATE TABLE a (x int);\n"
    (tmp_path / "0001_a.sql").write_text(good)
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);\nSELECT 1/0;\n")
    dsn = await make_database(admin_dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.DivisionByZeroError):
                await migrate(conn, tmp_path)
            assert await current_version(conn) == 1
            assert await conn.fetchval("SELECT to_regclass('public.b')") is None  # rolled back whole
            (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);\n")
            assert await migrate(conn, tmp_path) == [2]
            assert await conn.fetchval("SELECT count(*) FROM b") == 1
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, dsn)

"""Versioned SQL migrations, applied under an advisory lock, each in one transaction.

Files `migrations/NNNN_name.sql` are applied in order; `schema_migrations` records
what is applied. A database whose schema is newer than this code is refused. A
migration that fails half-way is rolled back whole (DDL is transactional in
Postgres), so the next run starts it again cleanly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

MIGRATION_LOCK = 0x626F745F6D6967  # "bot_mig"
_NAME = re.compile(r"^(\d{4})_([\w-]+)\.sql$")


class SchemaTooNew(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    base = directory or Path(str(resources.files("bot.core.db").joinpath("migrations")))
    found = []
    for path in sorted(base.iterdir()):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m[1]), m[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations in {base} must be numbered 0001.. without gaps (got {versions})")
    return found


async def current_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied (empty when up to date)."""
    migrations = load_migrations(directory)
    latest = migrations[-1].version if migrations else 0
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = await current_version(conn)
        if have > latest:
            raise SchemaTooNew(
                f"database schema is version {have}, this code knows up to {latest}: upgrade the bot"
            )
        for mig in migrations:
            if mig.version <= have:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", mig.version, mig.name
                )
            applied.append(mig.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied

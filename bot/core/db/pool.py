"""The one asyncpg pool of a process, and the embedded PostgreSQL default.

`open_database(cfg)` is the composition root's entry: with `database.dsn` set it
connects there; without, it starts a private PostgreSQL (pgserver) in
`database.embedded_dir` and stops it when the Database is closed. Migrations are
applied at start. Connection failures become :class:`DatabaseUnavailable` whose
message names host and port, never the password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bot.config.model import DatabaseConfig
from bot.config.secrets import mask_dsn
from bot.core.db.migrate import migrate

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message is safe to print."""


def describe_dsn(dsn: str) -> str:
    """'host:port/db' of a DSN for messages (no user, no password)."""
    if "://" not in dsn:
        return mask_dsn(dsn) or "?"
    parts = urlsplit(dsn)
    host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
    port = parts.port or 5432
    db = parts.path.lstrip("/") or "?"
    return f"{host}:{port}/{db}"


async def _init_conn(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")
    # the bot's queries are short range scans: JIT compilation only adds latency
    await conn.execute("SET jit = off")


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=timeout_s, init=_init_conn,
            command_timeout=None,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, socket.gaierror) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        if isinstance(err, asyncpg.PostgresError):
            reason = str(err).splitlines()[0]
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {reason}") from None
    assert pool is not None
    return pool


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL in `data_dir`, started by pgserver."""

    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        import pgserver  # imported late: only the embedded path needs it

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.data_dir)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.cleanup()
            finally:
                self._server = None


@dataclass
class Database:
    """The pool plus, when embedded, the server that backs it."""

    pool: asyncpg.Pool
    dsn: str
    embedded: EmbeddedPostgres | None = None

    async def close(self, timeout_s: float = 10.0) -> None:
        try:
            try:
                await asyncio.wait_for(self.pool.close(), timeout_s)
            except TimeoutError:
                log.warning("pool did not close within %.0f s: terminating connections", timeout_s)
                self.pool.terminate()
        finally:
            if self.embedded is not None:
                self.embedded.stop()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_database(cfg: DatabaseConfig, *, run_migrations: bool = True, base_dir: Path | None = None) -> Database:
    embedded = None
    dsn = cfg.dsn or os.environ.get("BOT_DATABASE_DSN")
    if not dsn:
        data_dir = Path(cfg.embedded_dir)
        if not data_dir.is_absolute() and base_dir is not None:
            data_dir = base_dir / data_dir
        embedded = EmbeddedPostgres(data_dir.resolve())
        dsn = await asyncio.to_thread(embedded.start)
    try:
        pool = await create_pool(dsn, cfg.pool_min_size, cfg.pool_max_size, cfg.connect_timeout_s)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    db = Database(pool, dsn, embedded)
    if run_migrations:
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await db.close()
            raise
    return db

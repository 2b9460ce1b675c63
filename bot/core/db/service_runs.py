"""Repository of `service_runs`: one row per `bot run` (or replay) process, written at start,
at READY, at every heartbeat and at the stop, so `bot status` can tell whether the service
is running, since when, and how it last stopped. All its SQL is here."""

from __future__ import annotations

import os
import socket
from decimal import Decimal
from typing import Any

from bot.core.db.codec import dumps


async def start(conn: Any, mode: str) -> int:
    return int(await conn.fetchval("INSERT INTO service_runs (pid, host, mode) VALUES ($1, $2, $3) RETURNING id",
                                   os.getpid(), socket.gethostname(), mode))


async def ready(conn: Any, run_id: int) -> None:
    await conn.execute("UPDATE service_runs SET ready_at = now(), heartbeat_at = now() WHERE id = $1", run_id)


async def heartbeat(conn: Any, run_id: int, balance: Decimal | None, status: dict[str, Any]) -> None:
    await conn.execute("UPDATE service_runs SET heartbeat_at = now(), balance = $2, status = $3::jsonb WHERE id = $1",
                       run_id, balance, dumps(status))


async def stop(conn: Any, run_id: int, reason: str, exit_code: int) -> None:
    await conn.execute("UPDATE service_runs SET stopped_at = now(), stop_reason = $2, exit_code = $3 WHERE id = $1",
                       run_id, reason[:500], exit_code)


async def latest(conn: Any, replays: bool = False) -> dict[str, Any] | None:
    """The newest run of the service (or of a replay when `replays`)."""
    row = await conn.fetchrow(
        "SELECT id, started_at, ready_at, stopped_at, heartbeat_at, pid, host, mode, stop_reason, exit_code, balance,"
        " status FROM service_runs WHERE (mode LIKE 'replay-%') = $1 ORDER BY id DESC LIMIT 1", replays)
    return dict(row) if row is not None else None


async def set_mode(conn: Any, run_id: int, mode: str) -> None:
    await conn.execute("UPDATE service_runs SET mode = $2 WHERE id = $1", run_id, mode)

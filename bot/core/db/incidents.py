"""Repository of the `incidents` table: every anomaly the executor meets (a naked leg
unwound, a position the venue lost, an orphan, stale data under a position, a bad pairs
row), with what it did about it. All its SQL is here. Written AND logged at ERROR by
the executor; acknowledged by an operator (`acknowledged_at`)."""

from __future__ import annotations

from typing import Any

from bot.core.db.codec import dumps

KINDS = ("entry_rejected", "leg_failed", "leg_unresolved", "unwind_failed", "lost", "half_open", "orphan",
         "orphan_adopted", "qty_mismatch", "stale_position", "bad_pair", "instrument_changed", "close_failed",
         "liquidation", "reconcile_failed")


async def record(conn: Any, kind: str, message: str, *, token_1: str | None = None, token_2: str | None = None,
                 position_id: int | None = None, order_link_id: str | None = None,
                 details: dict[str, Any] | None = None, mode: str | None = None) -> int:
    if kind not in KINDS:
        raise ValueError(f"incident kind must be one of {KINDS} (got {kind!r})")
    return int(await conn.fetchval(
        "INSERT INTO incidents (kind, token_1, token_2, position_id, order_link_id, message, details, mode)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING id",
        kind, token_1, token_2, position_id, order_link_id, message, dumps(details or {}), mode))


async def open_incidents(conn: Any, include_replays: bool = False) -> list[dict[str, Any]]:
    """Incidents not yet acknowledged, oldest first; a replay's own only when asked."""
    rows = await conn.fetch("SELECT id, at, kind, token_1, token_2, position_id, order_link_id, message, details, mode"
                            " FROM incidents WHERE acknowledged_at IS NULL AND ($1 OR mode IS NULL OR mode NOT LIKE"
                            " 'replay-%') ORDER BY id", include_replays)
    return [dict(r) for r in rows]


async def acknowledge(conn: Any, ids: list[int]) -> int:
    res = await conn.execute("UPDATE incidents SET acknowledged_at = now() WHERE id = ANY($1::bigint[])"
                             " AND acknowledged_at IS NULL", ids)
    return int(res.split()[-1])

"""Repository of the traded pairs and the re-selection record: pairs, positions (open
ones), selection_runs, selection_candidates. All their SQL is here."""

from __future__ import annotations

import json
import math
from typing import Any

import asyncpg

from bot.analysis.pair_selection import Decision
from bot.core.db import positions
from bot.core.db.codec import dumps

RESELECT_LOCK = 0x626F745F72736C  # "bot_rsl"
PAIR_COLS = ("token_1", "token_2", "tf", "wind", "spr_method", "thresh_in", "thresh_out", "open_method",
             "close_method", "dist_in", "dist_out", "params", "pred", "run_id")


async def try_lock(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RESELECT_LOCK))


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", RESELECT_LOCK)


async def read_pairs(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {', '.join(PAIR_COLS)} FROM pairs ORDER BY token_1, token_2")
    out = []
    for r in rows:
        d = dict(r)
        d["params"] = json.loads(d["params"]) if isinstance(d["params"], str) else d["params"]
        out.append(d)
    return out


async def open_position_pairs(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Pairs (as tokens) holding exposure (positions.EXPOSED_STATUSES), which stay selected."""
    return await positions.exposed_pairs(conn)


async def start_run(conn: asyncpg.Connection, dry_run: bool) -> int:
    # runs left 'running' by a killed process are closed as failed first
    await conn.execute("UPDATE selection_runs SET status = 'failed', finished_at = now(),"
                       " error = coalesce(error, 'interrupted: the process stopped before finishing')"
                       " WHERE status = 'running'")
    return int(await conn.fetchval("INSERT INTO selection_runs (dry_run) VALUES ($1) RETURNING id", dry_run))


async def fail_run(conn: asyncpg.Connection, run_id: int, error: str) -> None:
    await conn.execute("UPDATE selection_runs SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
                       run_id, error)


async def note_run(conn: asyncpg.Connection, run_id: int, status: str, error: str | None = None) -> None:
    await conn.execute("UPDATE selection_runs SET status = $2, error = $3 WHERE id = $1", run_id, status, error)


async def commit_selection(
    conn: asyncpg.Connection,
    run_id: int,
    pair_rows: list[dict[str, Any]],
    decisions: list[Decision],
    stats_by_pair: dict[tuple[str, str], dict[str, Any]],
    details: dict[str, Any],
    before_commit: Any = None,
) -> None:
    """In ONE transaction: replace the pairs table, record the run and every candidate."""
    async with conn.transaction():
        await conn.execute("DELETE FROM pairs")
        await conn.executemany(
            f"INSERT INTO pairs ({', '.join(PAIR_COLS)}) VALUES ({', '.join(f'${k}' for k in range(1, 15))})",
            [(r["token_1"], r["token_2"], r["tf"], int(r["wind"]), r["spr_method"], float(r["thresh_in"]),
              float(r["thresh_out"]), r["open_method"], r["close_method"], float(r["dist_in"]),
              float(r["dist_out"]), dumps(r.get("params", {})), r.get("pred"), run_id) for r in pair_rows],
        )
        await conn.executemany(
            "INSERT INTO selection_candidates (run_id, token_1, token_2, stats, pred, decision, reason, coverage)"
            " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)",
            [(run_id, d.token_1, d.token_2, dumps(stats_by_pair.get((d.token_1, d.token_2), {})),
              _pred(stats_by_pair.get((d.token_1, d.token_2), {})), d.decision, d.reason,
              _num(stats_by_pair.get((d.token_1, d.token_2), {}), "coverage")) for d in decisions],
        )
        n_sel = sum(d.decision in ("selected", "kept") for d in decisions)
        await conn.execute(
            "UPDATE selection_runs SET status = 'ok', finished_at = now(), n_candidates = $2, n_selected = $3,"
            " details = $4::jsonb, model_sha256 = $5 WHERE id = $1",
            run_id, len(decisions), n_sel, dumps(details), details.get("model_sha256"))
        if before_commit is not None:
            await before_commit()


async def notify_pairs_changed(conn: asyncpg.Connection) -> None:
    """NOTIFY pairs_changed: sent by the job after token_pairs.txt is written."""
    await conn.execute("NOTIFY pairs_changed")


def _num(stats: dict[str, Any], key: str) -> float | None:
    v = stats.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _pred(stats: dict[str, Any]) -> float | None:
    return _num(stats, "pred")


async def finish_dry_run(conn: asyncpg.Connection, run_id: int, n_candidates: int, n_selected: int,
                         details: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE selection_runs SET status = 'ok', finished_at = now(), n_candidates = $2, n_selected = $3,"
        " details = $4::jsonb WHERE id = $1", run_id, n_candidates, n_selected, dumps(details))


async def last_runs(conn: asyncpg.Connection, limit: int = 5) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, started_at, finished_at, status, error, dry_run, n_candidates, n_selected"
                            " FROM selection_runs ORDER BY id DESC LIMIT $1", limit)
    return [dict(r) for r in rows]


async def last_committed_run(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The newest committed (ok, not dry) re-selection run with its details, or None."""
    row = await conn.fetchrow("SELECT id, finished_at, n_candidates, n_selected, details FROM selection_runs"
                              " WHERE status = 'ok' AND NOT dry_run ORDER BY id DESC LIMIT 1")
    if row is None:
        return None
    out = dict(row)
    details = out.pop("details")
    out["details"] = json.loads(details) if isinstance(details, str) else (details or {})
    return out

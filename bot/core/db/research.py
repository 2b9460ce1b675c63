"""Research results: backtest_runs, sweep_results, pair_stats. All their SQL is here."""

from __future__ import annotations

import math
from typing import Any

from bot.core.db.codec import dumps
from bot.research.pair_job import STATS_COLUMNS, PairOutcome

_STAT_VALUES = [c for c in STATS_COLUMNS if c not in ("coin1", "coin2")]


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None




async def start_run(pool: Any, kind: str, params: dict[str, Any]) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(
            "INSERT INTO backtest_runs (kind, params) VALUES ($1, $2::jsonb) RETURNING id", kind, dumps(params)))


async def finish_run(pool: Any, run_id: int, status: str, error: str | None = None) -> None:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE backtest_runs SET finished_at = now(), status = $2, error = $3 WHERE id = $1",
                           run_id, status, error)


async def write_outcomes(pool: Any, run_id: int, outcomes: list[PairOutcome]) -> tuple[int, int]:
    """One pair_stats row per pair (any status) and one sweep_results row per
    (pair, parameter set), in one transaction; returns (pairs, summaries)."""
    stat_rows = []
    sweep_rows = []
    for o in outcomes:
        stat_rows.append((run_id, o.token_1, o.token_2, o.status, o.reason, dumps(o.skips) if o.skips else None,
                          *[_num(o.stats.get(c)) for c in _STAT_VALUES]))
        for s in o.summaries:
            sweep_rows.append((run_id, o.token_1, o.token_2, int(s["param_id"]), dumps(s["params"]),
                               int(s["trades"]), _num(s["pr"]), _num(s["pr_rat"]), _num(s["max_drdn"]),
                               _num(s["loss"]), _num(s["avg_dur"]), dumps(s["metrics"])))
    cols = ", ".join(["run_id", "coin1", "coin2", "status", "reason", "skips", *_STAT_VALUES])
    marks = ", ".join(f"${k}" for k in range(1, 7 + len(_STAT_VALUES)))
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(f"INSERT INTO pair_stats ({cols}) VALUES ({marks})", stat_rows)
        if sweep_rows:
            await conn.copy_records_to_table(
                "sweep_results", records=sweep_rows,
                columns=["run_id", "token_1", "token_2", "param_id", "params", "trades", "pr", "pr_rat",
                         "max_drdn", "loss", "avg_dur", "metrics"],
            )
    return len(stat_rows), len(sweep_rows)


async def read_pair_stats(pool: Any, run_id: int) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM pair_stats WHERE run_id = $1 ORDER BY coin1, coin2", run_id)
    return [dict(r) for r in rows]


async def sweep_result_count(pool: Any, run_id: int) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM sweep_results WHERE run_id = $1", run_id))

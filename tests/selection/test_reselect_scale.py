"""The re-selection job at scale changes nothing in what it decides (issue 16).

Three runs of `bot reselect` on the same small market, each from the same empty pairs
table: the job as it runs now (inputs built in the workers from the quote cache, the
block skip, frame-free metrics), today's path before it (inputs from pair_frames, the
tick loop, a trades frame and analyze_strategy per set: tests/research/
test_pair_inputs.reference_executor), and the job on a distributed.LocalCluster whose
workers read the quotes from Postgres themselves. The pairs table, token_pairs.txt, the
candidates' statistics, the sweep rows and the run records must be equal row for row.
The market has a recorder outage in one symbol (bar-close ticks in its pairs) and a
symbol without quotes at all (bars-only pairs).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bot.config import load
from bot.config.loader import example_path
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.selection.reselect import reselect
from tests.research.test_pair_inputs import reference_executor

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

VOLATILE = {"id", "run_id", "started_at", "finished_at", "created_at", "updated_at", "selected_at"}


@pytest.fixture(scope="module")
def market():
    m = generate(n_symbols=8, days=9, quote_interval_s=60.0, seed=11)
    syms = m.symbols
    q = m.quotes
    out_start = m.start + dt.timedelta(days=5)
    # an outage of one symbol's recorder (10 h), and one symbol never recorded
    gone = (pl.col("symbol") == f"{syms[3]}USDT") & (pl.col("ts") >= out_start.timestamp()) & (
        pl.col("ts") < (out_start + dt.timedelta(hours=10)).timestamp())
    q = q.filter(~gone & (pl.col("symbol") != f"{syms[4]}USDT"))
    return m, q


@pytest.fixture
def cfg(tmp_path: Path):
    base = load(example_path())
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"wind": 48, "min_order_size": 0.0}),
        "research": base.research.model_copy(update={"iters": 12, "winds": (24, 48)}),
        "selection": base.selection.model_copy(update={
            "train_days": 6, "max_pairs": 3, "candidates_file": str(tmp_path / "candidates.txt"),
            "token_pairs_file": str(tmp_path / "token_pairs.txt"),
            "thresholds": base.selection.thresholds.model_copy(update={"pr_rat_ind": -1e9, "pr_rat_all": -1e9,
                                                                       "pr_rat_best": -1e9, "pred": -1e9})}),
        "model": base.model.model_copy(update={"dir": str(tmp_path / "models")}),
    })


def _clean(rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = {k: v for k, v in dict(r).items() if k not in VOLATILE}
        for k, v in d.items():
            if isinstance(v, str) and v and v[0] in "{[":
                d[k] = json.loads(v)
        out.append(d)
    return out


async def _run(db: Database, cfg, now: dt.datetime, **kw: Any) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM pairs")
    rep = await reselect(db, cfg, now=now, workers=2, **kw)
    assert rep.status == "ok"
    async with db.pool.acquire() as conn:
        sel = await conn.fetchrow("SELECT * FROM selection_runs ORDER BY id DESC LIMIT 1")
        bt = await conn.fetchval("SELECT max(id) FROM backtest_runs WHERE kind = 'reselect'")
        details = sel["details"] if isinstance(sel["details"], dict) else json.loads(sel["details"])
        for k in [k for k in details if "run" in k or k.endswith("_s")]:
            details.pop(k)
        return {
            "pairs": _clean(await conn.fetch("SELECT * FROM pairs ORDER BY token_1, token_2")),
            "file": Path(cfg.selection.token_pairs_file).read_text(),
            "stats": _clean(await conn.fetch("SELECT * FROM pair_stats WHERE run_id = $1 ORDER BY coin1, coin2",
                                             bt)),
            "sweep": _clean(await conn.fetch("SELECT * FROM sweep_results WHERE run_id = $1 "
                                             "ORDER BY token_1, token_2, param_id", bt)),
            "candidates": _clean(await conn.fetch("SELECT * FROM selection_candidates WHERE run_id = $1 "
                                                  "ORDER BY token_1, token_2", sel["id"])),
            "run": {"status": sel["status"], "n_candidates": sel["n_candidates"], "n_selected": sel["n_selected"],
                    "details": details},
        }


async def test_setup_market(db: Database, market) -> None:
    from bot.core.db.market import copy_bars, copy_quotes, upsert_instruments
    from bot.core.demo_market import bars_from_quotes

    m, q = market
    await upsert_instruments(db, m.instruments)
    await copy_quotes(db, q)
    await copy_bars(db, bars_from_quotes(m.quotes, 3600), "1h", source="demo")  # bars of every symbol


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k in a:
        assert a[k] == b[k], k


async def test_the_job_decides_as_todays_path_did(db: Database, market, cfg) -> None:
    m, _ = market
    now = m.end
    new = await _run(db, cfg, now)
    old = await _run(db, cfg, now, executor=reference_executor)
    _same(new, old)
    status = {(r["coin1"], r["coin2"]): r["status"] for r in new["stats"]}
    assert list(status.values()).count("ok") >= 15 and len(new["pairs"]) == 3
    assert len(new["sweep"]) >= cfg.research.iters * list(status.values()).count("ok")
    assert any(r["trades"] > 0 for r in new["sweep"]) and any(r["pr"] != 0 for r in new["sweep"])
    bars_only = [r for r in new["stats"] if r["coverage"] == 0.0]
    partial = [r for r in new["stats"] if r["coverage"] is not None and 0.0 < r["coverage"] < 1.0]
    assert bars_only and partial  # the market reaches both input kinds


@pytest.mark.slow
async def test_the_job_on_a_dask_cluster_commits_the_same(db: Database, market, cfg) -> None:
    from distributed import LocalCluster

    m, _ = market
    local = await _run(db, cfg, m.end)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        dcfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(
            update={"dask_scheduler": cluster.scheduler_address})})
        remote = await _run(db, dcfg, m.end)
    _same(local, remote)

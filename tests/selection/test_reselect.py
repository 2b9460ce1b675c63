"""The re-selection job against a real PostgreSQL: the happy path and every injected fault."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db import selection as repo
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research import model as mdl
from bot.selection.evaluate import GATE_VERSION
from bot.selection.reselect import ReselectError, reselect, sync_token_pairs_file, token_pairs_text
from tests.research.test_model import synthetic

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=9, days=10, quote_interval_s=300.0, seed=5)


@pytest.fixture
def cfg(tmp_path: Path):
    base = load(example_path())
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"wind": 48, "min_order_size": 0.0}),
        "research": base.research.model_copy(update={"iters": 6, "winds": (24, 48)}),
        "selection": base.selection.model_copy(update={
            "train_days": 6, "max_pairs": 3, "candidates_file": str(tmp_path / "candidates.txt"),
            "token_pairs_file": str(tmp_path / "token_pairs.txt"),
            "thresholds": base.selection.thresholds.model_copy(update={"pr_rat_ind": -1e9, "pr_rat_all": -1e9,
                                                                       "pr_rat_best": -1e9, "pred": -1e9})}),
        "model": base.model.model_copy(update={"dir": str(tmp_path / "models"), "iterations": 30, "depth": 3}),
    })


async def _state(db: Database, cfg) -> tuple[list, str | None]:
    async with db.pool.acquire() as conn:
        rows = await repo.read_pairs(conn)
    p = Path(cfg.selection.token_pairs_file)
    return rows, (p.read_text() if p.exists() else None)


async def _last_run(db: Database) -> dict:
    async with db.pool.acquire() as conn:
        return (await repo.last_runs(conn, 1))[0]


async def test_setup_market(db: Database, market) -> None:
    await write_demo_market(db, market, tfs=("1h",))


async def test_dry_run_changes_nothing(db: Database, market, cfg) -> None:
    before = await _state(db, cfg)
    rep = await reselect(db, cfg, dry_run=True, now=market.end)
    assert rep.status == "dry-run" and rep.decisions and len(rep.pairs) <= 3
    assert await _state(db, cfg) == before
    assert (await _last_run(db))["status"] == "ok"


async def test_run_with_fallback_then_with_a_promoted_model(db: Database, market, cfg) -> None:
    listener = await asyncpg.connect(db.dsn)
    notes: list[str] = []
    await listener.add_listener("pairs_changed", lambda *a: notes.append(a[2]))
    try:
        rep = await reselect(db, cfg, now=market.end)
        await asyncio.sleep(0.3)
    finally:
        await listener.close()
    assert rep.status == "ok" and "fallback" in rep.model
    assert notes == ["pairs_changed"]  # the channel name, once
    rows, text = await _state(db, cfg)
    assert 1 <= len(rows) <= 3 and text == token_pairs_text(rows)
    toks = [t for r in rows for t in (r["token_1"], r["token_2"])]
    assert len(toks) == len(set(toks)) and all(t.endswith("_USDT") for t in toks)
    async with db.pool.acquire() as conn:
        n_cand = await conn.fetchval("SELECT count(*) FROM selection_candidates WHERE run_id = $1", rep.run_id)
    assert n_cand == len(rep.decisions) == 36  # all pairs of 9 symbols
    # now with a promoted model: preds are stored and used
    model = mdl.fit_catboost(synthetic(), cfg)
    mdl.save_model(model, cfg.model.dir, {"promoted": True, "gate_version": GATE_VERSION}, 3)
    rep2 = await reselect(db, cfg, now=market.end)
    assert "model-" in rep2.model
    rows2, _ = await _state(db, cfg)
    assert all(r["pred"] is not None for r in rows2)


async def test_the_run_record_says_which_rule_and_why(db: Database, market, cfg) -> None:
    """Issue 15, item 4: a newer model the gate refused leaves the previous promoted one in use,
    and the run record names both with the gate's reasons; with none promoted the fallback is
    used and said; the fallback's own skill (from the newest walk-forward) is recorded and
    `bot status` shows it."""
    from bot.core import status as st

    model = mdl.fit_catboost(synthetic(), cfg)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    mdl.save_model(model, cfg.model.dir, {"promoted": False, "gate": "refused: not 2 SE above random",
                                          "fallback_skill": "the fallback rule: NO skill shown"}, 5, now=t0)
    rep = await reselect(db, cfg, now=market.end)
    assert "no promoted model" in rep.model and "refused: not 2 SE above random" in rep.model
    async with db.pool.acquire() as conn:
        details = await conn.fetchval("SELECT details FROM selection_runs WHERE id = $1", rep.run_id)
    assert "NO skill shown" in details and "refused" in details
    # promoted by the old gate (no gate_version): not used, and said
    mdl.save_model(model, cfg.model.dir, {"promoted": True, "gate": "old: +0.56 SE 0.49"}, 5,
                   now=t0 + dt.timedelta(hours=1))
    rep = await reselect(db, cfg, now=market.end)
    assert "no promoted model" in rep.model and "older, weaker gate" in rep.model
    mdl.save_model(model, cfg.model.dir, {"promoted": True, "gate": "passed: +3 SE", "gate_version": GATE_VERSION}, 5,
                   now=t0 + dt.timedelta(1))
    mdl.save_model(model, cfg.model.dir, {"promoted": False, "gate": "refused: worse than the fallback rule",
                                          "fallback_skill": "the fallback rule: skill shown"}, 5,
                   now=t0 + dt.timedelta(2))
    rep = await reselect(db, cfg, now=market.end)
    assert rep.model.startswith("model-20260102") and "passed: +3 SE" in rep.model
    assert "newer model model-20260103" in rep.model and "worse than the fallback rule" in rep.model
    status = await st.gather(db, cfg, now=market.end)
    assert status["selection"]["run_id"] == rep.run_id and "skill shown" in status["selection"]["fallback_skill"]
    text = st.render(status)
    assert f"selection: run {rep.run_id}" in text and "the fallback rule: skill shown" in text
    for f in Path(cfg.model.dir).glob("model-*"):
        f.unlink()


async def test_open_position_pair_is_kept(db: Database, market, cfg) -> None:
    rows, _ = await _state(db, cfg)
    g = market.groups[0]
    # a pair with an open position stays, whatever its score
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO positions (token_1, token_2, pos_side, status) VALUES ($1, $2, 1, 'open')",
                           f"{g.leader}_USDT", f"{g.members[0]}_USDT")
    strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={
        "thresholds": cfg.selection.thresholds.model_copy(update={"pr_rat_all": 1e9})})})
    rep = await reselect(db, strict, now=market.end)
    rows, text = await _state(db, cfg)
    assert [(r["token_1"], r["token_2"]) for r in rows] == [(f"{g.leader}_USDT", f"{g.members[0]}_USDT")]
    assert any(d.decision == "kept" for d in rep.decisions)
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE positions SET status = 'closed'")


def _boom_executor(tasks, progress=None):
    raise RuntimeError("backtest worker exploded")


@pytest.mark.parametrize("fault", ["backtest", "scoring", "model_missing", "db_write"])
async def test_failure_before_commit_changes_nothing(db: Database, market, cfg, fault: str) -> None:
    await reselect(db, cfg, now=market.end)  # a known state
    before = await _state(db, cfg)
    kw: dict = {}
    if fault == "backtest":
        kw["executor"] = _boom_executor
    elif fault in ("scoring", "model_missing"):
        mdl.save_model(mdl.fit_catboost(synthetic(), cfg), cfg.model.dir, {"promoted": True,
                                                                           "gate_version": GATE_VERSION}, 3)
        newest = sorted(Path(cfg.model.dir).glob("model-*.meta.json"))[-1]
        model_file = newest.with_name(newest.name.replace(".meta.json", ".json"))
        if fault == "scoring":
            model_file.write_text(model_file.read_text()[:-50])  # corrupt
        else:
            model_file.unlink()
    else:
        async def fail() -> None:
            raise asyncpg.PostgresError("disk full (injected)")
        kw["hooks"] = {"before_commit": fail}
    with pytest.raises(ReselectError):
        await reselect(db, cfg, now=market.end - dt.timedelta(hours=7), **kw)
    assert await _state(db, cfg) == before
    last = await _last_run(db)
    assert last["status"] == "failed" and last["error"]
    for p in Path(cfg.model.dir).glob("*"):
        p.unlink()


async def test_killed_process_changes_nothing(db: Database, market, cfg, tmp_path: Path) -> None:
    await reselect(db, cfg, now=market.end)
    before = await _state(db, cfg)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(cfg.model_dump_json())
    code = (
        "import asyncio, os, signal, sys, json\n"
        "from bot.config.model import BotConfig\n"
        "from bot.core.db.pool import create_pool, Database\n"
        "from bot.selection.reselect import reselect\n"
        "import datetime as dt\n"
        "cfg = BotConfig.model_validate_json(open(sys.argv[1]).read())\n"
        "async def main():\n"
        "    pool = await create_pool(sys.argv[2])\n"
        "    async def die():\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    await reselect(Database(pool, sys.argv[2]), cfg, now=dt.datetime.fromisoformat(sys.argv[3]),"
        " hooks={'before_commit': die}, workers=1)\n"
        "asyncio.run(main())\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(cfg_file), db.dsn, market.end.isoformat()],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr
    assert await _state(db, cfg) == before
    # the next run closes the interrupted one as failed
    await reselect(db, cfg, dry_run=True, now=market.end)
    async with db.pool.acquire() as conn:
        runs = await repo.last_runs(conn, 2)
    assert runs[1]["status"] == "failed" and "interrupted" in runs[1]["error"]


async def test_file_write_failure_is_loud_and_repaired(db: Database, market, cfg) -> None:
    path = Path(cfg.selection.token_pairs_file)
    if path.exists():
        path.unlink()
    path.mkdir()  # a directory where the file should go: the rename fails
    rep = await reselect(db, cfg, now=market.end)
    assert rep.file_error
    async with db.pool.acquire() as conn:
        rows = await repo.read_pairs(conn)
    assert rows  # the table is the truth
    assert "not written" in (await _last_run(db))["error"]
    path.rmdir()
    async with db.pool.acquire() as conn:
        assert await sync_token_pairs_file(conn, path)  # the repair from the table
    assert path.read_text() == token_pairs_text(rows)


async def test_second_process_does_not_run(db: Database, market, cfg) -> None:
    holder = await asyncpg.connect(db.dsn)
    try:
        assert await repo.try_lock(holder)
        rep = await reselect(db, cfg, now=market.end)
        assert rep.status == "skipped" and "lock" in rep.reason
    finally:
        await holder.close()


async def test_candidates_file_is_used(db: Database, market, cfg) -> None:
    g = market.groups[0]
    Path(cfg.selection.candidates_file).write_text(f"{g.leader} {g.members[0]}\nBTC ETH\n")
    rep = await reselect(db, cfg, dry_run=True, now=market.end)
    assert len(rep.decisions) == 2
    os.remove(cfg.selection.candidates_file)

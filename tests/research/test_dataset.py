"""`bot dataset`: one commit per finished window, resume after a kill, the test-window columns."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import polars as pl
import pytest
import pytest_asyncio

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research import dataset as ds
from tests.cli.test_cli import REPO
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DAYS = 14
CONFIG = ("strategy:\n  wind: 24\n  min_order_size: 0\nresearch:\n  winds: [24, 36, 48]\n  iters: 6\n"
          "model:\n  train_days: 4\n  test_days: 2\n")
WINDOWS = 5  # (14 - 6) / 2 + 1 rolling windows of 4 + 2 days


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def market(db: Database):
    m = generate(n_symbols=8, days=DAYS, quote_interval_s=600.0, seed=5, start=START)
    await write_demo_market(db, m, tfs=("1h",))
    return m


@pytest.fixture(scope="module")
def pairs(market):
    toks = market.symbols
    return [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]][:8]


@pytest.fixture(scope="module")
def cfg():
    import yaml

    base = load(example_path())
    data = yaml.safe_load(CONFIG)
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update=data["strategy"]),
        "research": base.research.model_copy(update={"winds": (24, 36, 48), "iters": 6}),
        "model": base.model.model_copy(update=data["model"]),
    })


def _bot(work: Path, dsn: str, pairs_path: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BOT_DATABASE_DSN", "BOT_CONFIG")}
    env["BOT_DATABASE_DSN"] = dsn
    return subprocess.Popen([sys.executable, "-m", "bot.cli.main", "--config", str(work / "config.yaml"), "dataset",
                             "--pairs", str(pairs_path), "--start", START.isoformat(),
                             "--end", (START + dt.timedelta(days=DAYS)).isoformat(), "--workers", "1",
                             "--out", str(out), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _windows_done(conn: asyncpg.Connection, dataset_id: int | None = None) -> int:
    if dataset_id is None:
        return int(await conn.fetchval("SELECT count(*) FROM dataset_windows"))
    return int(await conn.fetchval("SELECT count(*) FROM dataset_windows WHERE dataset_id = $1", dataset_id))


async def test_a_killed_build_resumes_at_the_first_missing_window(db: Database, market, pairs,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    pf = tmp_path / "pairs.txt"
    pf.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("TRUNCATE dataset_builds CASCADE")
        proc = _bot(tmp_path, db.dsn, pf, tmp_path / "killed.parquet")
        deadline = time.monotonic() + 300
        while await _windows_done(conn) < 1:  # the first window is committed ...
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no window committed in 300 s"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # ... and the process dies without any cleanup
        proc.communicate()
        killed_id = int(await conn.fetchval("SELECT dataset_id FROM dataset_builds"))
        done = await _windows_done(conn, killed_id)
        assert 1 <= done < WINDOWS, f"{done} windows committed before the kill: the test needs a partial build"
        assert await conn.fetchval("SELECT status FROM backtest_runs WHERE id = $1", killed_id) == "running"
        assert not (tmp_path / "killed.parquet").exists()
        runs_before = await conn.fetchval("SELECT count(*) FROM backtest_runs WHERE kind = 'dataset-window'")

        # the rerun with the same arguments resumes: skips the committed windows and says so
        proc = _bot(tmp_path, db.dsn, pf, tmp_path / "resumed.parquet")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        skipped = "1" if done == 1 else f"1-{done}"
        todo = f"{done + 1}-{WINDOWS}" if done + 1 < WINDOWS else f"{WINDOWS}"
        assert (f"resuming dataset {killed_id}: window{'s' if done > 1 else ''} {skipped} of {WINDOWS} already "
                f"committed (skipped); running {todo}") in out
        assert f"window {done + 1}/{WINDOWS} committed" in out and "window 1/5 committed" not in out
        runs_after = await conn.fetchval("SELECT count(*) FROM backtest_runs WHERE kind = 'dataset-window'")
        assert runs_after - runs_before == WINDOWS - done  # the done windows did not run again
        assert await conn.fetchval("SELECT status FROM backtest_runs WHERE id = $1", killed_id) == "ok"
        assert f"dataset {killed_id}: " in out

        # an uninterrupted build of the same arguments: a new build (a finished one is not reused), same rows
        proc = _bot(tmp_path, db.dsn, pf, tmp_path / "whole.parquet")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "resuming" not in out and f"dataset {killed_id}: " not in out
    finally:
        await conn.close()
    resumed = pl.read_parquet(tmp_path / "resumed.parquet")
    whole = pl.read_parquet(tmp_path / "whole.parquet")
    assert resumed.height == WINDOWS * len(pairs) and resumed["window_id"].n_unique() == WINDOWS
    assert resumed.columns == list(ds.COLUMNS)
    assert resumed.equals(whole)


async def test_the_dataset_stores_the_test_window_columns(db: Database, market, pairs, cfg) -> None:
    dataset_id, frame = await ds.build_dataset(db, cfg, pairs[:3], START, START + dt.timedelta(days=8),
                                               executor=inproc, resume=False)
    assert frame.columns == list(ds.COLUMNS) and frame.height == 2 * 3
    for c in ("pr_test", "pr_rat_test", "trades_test", "skipped_test", "liquidations_test"):
        assert frame[c].null_count() == 0, c
    assert (frame["skipped_test"] >= 0).all() and (frame["liquidations_test"] >= 0).all()
    assert (frame["trades_test"] > 0).any()
    # the same rows in pair_stats of the window's sweep run (the numbers come from the pair job)
    async with db.pool.acquire() as conn:
        run_id = await conn.fetchval("SELECT sweep_run_id FROM dataset_windows WHERE dataset_id = $1 AND "
                                     "window_id = 0", dataset_id)
        rows = await conn.fetch("SELECT coin1, coin2, pr_test, skipped_test, liquidations_test FROM pair_stats "
                                "WHERE run_id = $1 ORDER BY coin1, coin2", run_id)
    first = frame.filter(pl.col("window_id") == 0).sort("coin1", "coin2")
    assert [r["skipped_test"] for r in rows] == first["skipped_test"].to_list()
    assert [r["pr_test"] for r in rows] == first["pr_test"].to_list()
    # the latest finished dataset is what `bot train` reads by default
    latest = await ds.load_dataset(db.pool)
    assert latest.equals(frame)


async def test_one_build_per_arguments_at_a_time(db: Database, market, pairs, cfg) -> None:
    sets = ds.sample_params(cfg.research, cfg.strategy, cfg.research.iters, cfg.research.seed)
    end = START + dt.timedelta(days=8)
    _, digest = ds.build_args(cfg, pairs[:2], START, end, cfg.research.iters, cfg.research.seed, False, sets)
    other = await asyncpg.connect(db.dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", int(digest[:15], 16))
        with pytest.raises(ds.DatasetBusy, match="another `bot dataset` with these arguments is running"):
            await ds.build_dataset(db, cfg, pairs[:2], START, end, executor=inproc)
        # other arguments are another build: not blocked
        _, frame = await ds.build_dataset(db, cfg, pairs[:1], START, end, executor=inproc)
        assert frame.height == 2
    finally:
        await other.close()
    # a different argument (the pairs) changes the key, the same ones give the same key
    assert ds.build_args(cfg, pairs[:2], START, end, 6, 42, False, sets)[1] == digest
    assert ds.build_args(cfg, pairs[:3], START, end, 6, 42, False, sets)[1] != digest

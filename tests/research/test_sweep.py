"""The research run end to end on a real PostgreSQL: outputs, skips, worker deaths, Dask."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from pathlib import Path

import polars as pl
import pytest

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db import research as repo
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research.executor import run_local
from bot.research.pair_job import STATS_COLUMNS
from bot.research.sweep import run_sweep

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
TRAIN = START + dt.timedelta(days=4)
VALID = START + dt.timedelta(days=9)
END = START + dt.timedelta(days=12)


@pytest.fixture(scope="module")
def cfg():
    base = load(example_path())
    return base.model_copy(update={"strategy": base.strategy.model_copy(update={"wind": 48, "min_order_size": 0.0})})


@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=10, days=12, quote_interval_s=120.0, seed=9)


@pytest.fixture(scope="module")
def pairs(market):
    g = market.groups
    return [(g[0].leader, g[0].members[0]), (g[1].leader, g[1].members[0]), ("BTC", "ETH")]


async def _sweep(db, cfg, pairs, tmp_path, **kw):
    sets_kw = dict(iters=12, seed=3, train_start=TRAIN, valid_time=VALID, end_time=END,
                   trades_log=tmp_path / "trades.jsonl", parquet_path=tmp_path / "all_pairs.parquet")
    sets_kw.update(kw)
    return await run_sweep(db, cfg, pairs, **sets_kw)


async def test_sweep_outputs(db: Database, market, cfg, pairs, tmp_path: Path) -> None:
    await write_demo_market(db, market, tfs=("1h",))
    bad = [("NOPE", "BTC")]
    rep = await _sweep(db, cfg, pairs + bad, tmp_path, workers=2)
    assert rep.counts() == {"ok": 3, "skipped": 1, "failed": 0}
    skipped = next(o for o in rep.outcomes if o.status == "skipped")
    assert "NOPE" in skipped.reason
    stats = pl.read_parquet(tmp_path / "all_pairs.parquet")
    assert stats.columns == list(STATS_COLUMNS) and stats.height == 3
    assert stats["pv_1"].is_between(0, 1).all()
    rows = await repo.read_pair_stats(db.pool, rep.run_id)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok", "skipped"}
    assert await repo.sweep_result_count(db.pool, rep.run_id) == 3 * 12
    lines = (tmp_path / "trades.jsonl").read_text().splitlines()
    assert len(lines) == rep.trades_logged == sum(len(o.trade_records) for o in rep.outcomes) > 0
    rec = json.loads(lines[0])
    for key in ("wind", "spr_method", "in_", "open_ts", "total_profit", "pv_1", "hurst_wind", "btc_corr_1"):
        assert key in rec
    # the truly cointegrated pair is more cointegrated than BTC/ETH (independent walks)
    by = {(r["coin1"], r["coin2"]): r for r in stats.iter_rows(named=True)}
    assert by[pairs[0]]["pv_1"] < by[("BTC", "ETH")]["pv_1"]


async def test_same_seed_same_results(db: Database, cfg, pairs, tmp_path: Path) -> None:
    a = await _sweep(db, cfg, pairs[:1], tmp_path / "a", with_features=False, workers=1)
    b = await _sweep(db, cfg, pairs[:1], tmp_path / "b", with_features=False, workers=2)
    assert a.outcomes[0].summaries == b.outcomes[0].summaries
    assert a.stats.equals(b.stats)


def _die_once(marker: str, fn):
    if not os.path.exists(marker):
        Path(marker).write_text("x")
        os._exit(137)
    return fn()


def _die_always(fn):
    os._exit(9)


async def test_worker_death_costs_only_its_pair(db: Database, cfg, pairs, tmp_path: Path) -> None:
    marker = str(tmp_path / "died")

    def executor(tasks, progress=None):
        wrapped = []
        for t1, t2, fn in tasks:
            if (t1, t2) == pairs[0]:
                fn = functools.partial(_die_once, marker, fn)
            elif (t1, t2) == pairs[1]:
                fn = functools.partial(_die_always, fn)
            wrapped.append((t1, t2, fn))
        return run_local(wrapped, 2, progress)

    rep = await _sweep(db, cfg, pairs, tmp_path, with_features=False, executor=executor)
    status = {(o.token_1, o.token_2): o for o in rep.outcomes}
    assert status[pairs[0]].status == "ok"  # died once, retried
    assert status[pairs[1]].status == "failed" and "died" in status[pairs[1]].reason
    assert status[pairs[2]].status == "ok"


@pytest.mark.slow
async def test_dask_cluster_gives_the_local_results(db: Database, cfg, pairs, tmp_path: Path) -> None:
    from distributed import LocalCluster

    local = await _sweep(db, cfg, pairs, tmp_path / "l", with_features=True, workers=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        dcfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"dask_scheduler": cluster.scheduler_address})})
        remote = await _sweep(db, dcfg, pairs, tmp_path / "d", with_features=True)
    assert local.stats.equals(remote.stats)
    for a, b in zip(local.outcomes, remote.outcomes, strict=True):
        assert a.summaries == b.summaries
    la = (tmp_path / "l" / "trades.jsonl").read_text()
    assert la == (tmp_path / "d" / "trades.jsonl").read_text()


async def test_too_little_history_is_skipped_and_recorded(db: Database, cfg, pairs, tmp_path: Path) -> None:
    rep = await _sweep(db, cfg, pairs[:1], tmp_path, valid_time=START + dt.timedelta(days=3),
                       train_start=START + dt.timedelta(days=1), with_features=False, workers=1)
    (o,) = rep.outcomes
    assert o.status == "skipped" and "too little history" in o.reason
    rows = await repo.read_pair_stats(db.pool, rep.run_id)
    assert rows[0]["status"] == "skipped" and "too little history" in rows[0]["reason"]


async def test_stats_command(db: Database, pairs, tmp_path: Path) -> None:
    from tests.cli.test_cli import run_bot

    pf = tmp_path / "pairs.txt"
    pf.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text("strategy:\n  wind: 48\n  min_order_size: 0\n")
    out = tmp_path / "ap.parquet"
    res = run_bot("--config", str(cfg_file), "stats", "--pairs", str(pf), "--start", TRAIN.isoformat(),
                  "--valid", VALID.isoformat(), "--end", END.isoformat(), "--iters", "5", "--workers", "2",
                  "--out", str(out), env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 0, res.stderr
    assert "3 ok, 0 skipped, 0 failed" in res.stdout
    assert pl.read_parquet(out).height == 3


async def test_each_symbol_is_read_once_and_the_cache_is_removed(db: Database, cfg, pairs, tmp_path: Path,
                                                                  monkeypatch) -> None:
    from bot.core.db import market as mk

    scans: list[list[str]] = []
    real = mk.scan_quotes_by_day

    async def counted(db_, symbols, start, end, on_symbol):
        scans.append(list(symbols))
        return await real(db_, symbols, start, end, on_symbol)

    monkeypatch.setattr(mk, "scan_quotes_by_day", counted)
    cache = tmp_path / "cache"
    ccfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"cache_dir": str(cache)})})
    g = [p[0] for p in pairs[:2]] + [p[1] for p in pairs[:2]]
    many = [(a, b) for i, a in enumerate(g) for b in g[i + 1:]]  # 4 symbols, 6 pairs: each symbol in 3
    rep = await _sweep(db, ccfg, many, tmp_path, with_features=False, workers=2)
    assert rep.counts()["ok"] == 6
    assert len(scans) == 1 and sorted(scans[0]) == sorted(f"{t}USDT" for t in g)  # one pass, each symbol once
    assert cache.exists() and list(cache.iterdir()) == []  # the job's cache is gone

    def boom(tasks, progress=None):
        assert all(Path(t[2].quotes[0]).exists() for t in tasks)  # the workers would find the files
        raise RuntimeError("executor died")

    with pytest.raises(RuntimeError, match="executor died"):
        await _sweep(db, ccfg, many, tmp_path, with_features=False, executor=boom)
    assert list(cache.iterdir()) == []  # removed on failure too


async def test_the_cache_holds_what_a_symbol_read_returns(db: Database, pairs, tmp_path: Path) -> None:
    import numpy as np

    from bot.core.db.market import read_quote_array
    from bot.research.pair_inputs import cache_array, fill_cache

    syms = ["NOPEUSDT"] + sorted({f"{t}USDT" for p in pairs for t in p})  # one without any quote
    lo, hi = TRAIN + dt.timedelta(hours=5, minutes=7), END - dt.timedelta(hours=3)  # days cut mid-way
    paths = await fill_cache(db, syms, lo, hi, tmp_path / "c")
    for sym in syms:
        direct = await read_quote_array(db, sym, lo, hi)
        cached = cache_array(paths[sym])
        assert cached.shape == direct[:, :3].shape and np.array_equal(cached, direct[:, :3]), sym
    assert cache_array(paths["NOPEUSDT"]).shape == (0, 3)
    assert cache_array(paths[syms[1]]).shape[0] > 1000

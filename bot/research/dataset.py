"""The model's dataset (selection.md section 5): pair statistics over rolling windows.

Windows roll over [start, end): train L_train days, test L_test days, step L_test
(model.train_days / model.test_days). Each window is one research run (the same
pair job as `bot stats`); every pair that ran becomes one row: the statistics of
its train window as features and its test-window results as targets (pr_test,
pr_rat_test, trades_test, skipped_test, liquidations_test; `model.target` picks the
one the model learns, the validation judges picks by pr_test).

Resumable: a build is keyed by the hash of everything that decides its rows (pairs,
windows, parameter sets, strategy, reference symbols, assume_instruments, code
version). Each finished window commits its rows and a `dataset_windows` row in one
transaction; a rerun with the same arguments continues the newest unfinished build
with that hash at the first missing window (a finished build is never reused: a
rerun after it is a rebuild). An advisory lock on the hash keeps two processes from
building the same dataset at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from bot.config.model import BotConfig
from bot.research.pair_job import STATS_COLUMNS
from bot.research.params import ParamSet, default_params, sample_params
from bot.research.sweep import run_sweep

log = logging.getLogger(__name__)

TARGET = "pr_rat_test"  # the default of model.target (the notebook's target)
TARGETS = ("pr_rat_test", "pr_test")  # what model.target may choose
JUDGE = "pr_test"  # realised test profit after fees (% of balance): what the validation judges picks by
TEST_COUNTS = ("trades_test", "skipped_test", "liquidations_test", "fees_test")
FEATURES = tuple(c for c in STATS_COLUMNS if c not in ("coin1", "coin2", "best_param_id") and not c.endswith("_test"))
META = ("window_id", "train_start", "valid_time", "end_time", "coin1", "coin2")
COLUMNS = (*META, *FEATURES, "pr_test", "pr_rat_test", *TEST_COUNTS)
DATASET_VERSION = 2  # bump when the rows a build produces change meaning (no resume across it)


class DatasetBusy(RuntimeError):
    """Another process is building a dataset with the same arguments."""


def windows(start: dt.datetime, end: dt.datetime, train_days: int, test_days: int) -> list[tuple[dt.datetime, dt.datetime, dt.datetime]]:
    """(train_start, valid_time, end_time) of every full window inside [start, end)."""
    out = []
    s = start
    while s + dt.timedelta(days=train_days + test_days) <= end:
        v = s + dt.timedelta(days=train_days)
        out.append((s, v, v + dt.timedelta(days=test_days)))
        s += dt.timedelta(days=test_days)
    return out


def build_args(cfg: BotConfig, pairs: list[tuple[str, str]], start: dt.datetime, end: dt.datetime, iters: int,
               seed: int, assume_instruments: bool, sets: list[ParamSet]) -> tuple[dict[str, Any], str]:
    """What decides a build's rows, and its sha256 (the resume key)."""
    from bot import __version__

    args = {"version": DATASET_VERSION, "bot": __version__, "pairs": [list(p) for p in pairs],
            "start": start.isoformat(), "end": end.isoformat(), "train_days": cfg.model.train_days,
            "test_days": cfg.model.test_days, "iters": iters, "seed": seed,
            "param_sets": [p.as_dict() for p in sets], "default": default_params(cfg.strategy).as_dict(),
            "strategy": cfg.strategy.model_dump(mode="json"),
            "reference_symbols": list(cfg.data.reference_symbols), "assume_instruments": assume_instruments}
    digest = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()
    return args, digest


async def _resumable(conn: Any, digest: str) -> tuple[int | None, list[int]]:
    """The newest unfinished build with this hash and its committed windows."""
    dataset_id = await conn.fetchval(
        "SELECT b.dataset_id FROM dataset_builds b JOIN backtest_runs r ON r.id = b.dataset_id"
        " WHERE b.args_hash = $1 AND r.status <> 'ok' ORDER BY b.dataset_id DESC LIMIT 1", digest)
    if dataset_id is None:
        return None, []
    done = await conn.fetch("SELECT window_id FROM dataset_windows WHERE dataset_id = $1 ORDER BY window_id",
                            dataset_id)
    return int(dataset_id), [int(r["window_id"]) for r in done]


def _spans(ids: list[int] | set[int]) -> str:
    """1-based window numbers as ranges: [0, 1, 2, 5] -> '1-3, 6'."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i + 1, i + 1])
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


async def build_dataset(db: Any, cfg: BotConfig, pairs: list[tuple[str, str]], start: dt.datetime,
                        end: dt.datetime, *, iters: int | None = None, seed: int | None = None,
                        workers: int | None = None, assume_instruments: bool = False, resume: bool = True,
                        executor: Any = None, say: Callable[[str], None] | None = None,
                        kind: str = "dataset") -> tuple[int, pl.DataFrame]:
    """Run every window not yet committed, committing each one's rows to `model_dataset`
    as it finishes; returns (dataset_id, every row of the build, as `load_dataset` reads them).

    `resume=False` starts a new build even when an unfinished one has the same arguments.
    `say` gets the user-facing lines (resuming, per window); default: the log.
    `kind`: the backtest_runs kind; `bot evaluate` builds "evaluate-dataset" so that
    `bot train` (the newest finished "dataset") never trains on an evaluation's rows.
    """
    from bot.core.db import research as repo

    tell = say or log.info
    wins = windows(start, end, cfg.model.train_days, cfg.model.test_days)
    if not wins:
        raise ValueError(f"no full window of {cfg.model.train_days}+{cfg.model.test_days} days in "
                         f"{start:%Y-%m-%d} -> {end:%Y-%m-%d}")
    iters = iters or cfg.research.iters
    seed = cfg.research.seed if seed is None else seed
    sets = sample_params(cfg.research, cfg.strategy, iters, seed)
    args, digest = build_args(cfg, pairs, start, end, iters, seed, assume_instruments, sets)
    if kind != "dataset":  # its own resume key: a `bot dataset` never continues an evaluation's build
        args["kind"] = kind
        digest = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()
    pool = getattr(db, "pool", db)
    async with pool.acquire() as lock:
        key = int(digest[:15], 16)  # 60 bits: a signed bigint
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", key):
            raise DatasetBusy(f"another `bot dataset` with these arguments is running (args {digest[:12]}): "
                              "wait for it, or stop it and rerun to resume")
        try:
            dataset_id, done = await _resumable(lock, digest) if resume else (None, [])
            if dataset_id is None:
                dataset_id = await repo.start_run(pool, kind, {"windows": len(wins), "pairs": len(pairs),
                                                                    "args_hash": digest})
                await lock.execute("INSERT INTO dataset_builds (dataset_id, args_hash, args, windows)"
                                   " VALUES ($1, $2, $3::jsonb, $4)", dataset_id, digest, json.dumps(args), len(wins))
            else:
                await lock.execute("UPDATE backtest_runs SET status = 'running', finished_at = NULL, error = NULL"
                                   " WHERE id = $1", dataset_id)
                todo = [k for k in range(len(wins)) if k not in done]
                tell(f"resuming dataset {dataset_id}: window{'s' if len(done) != 1 else ''} {_spans(done) or 'none'}"
                     f" of {len(wins)} already committed (skipped); running "
                     f"{_spans(todo) if todo else 'nothing'}")
            return dataset_id, await _run_windows(db, pool, cfg, dataset_id, pairs, wins, set(done), sets, iters,
                                                  seed, workers, assume_instruments, executor, tell)
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", key)


async def _run_windows(db: Any, pool: Any, cfg: BotConfig, dataset_id: int, pairs: list[tuple[str, str]],
                       wins: list[tuple[dt.datetime, dt.datetime, dt.datetime]], done: set[int], sets: list[ParamSet],
                       iters: int, seed: int, workers: int | None, assume_instruments: bool, executor: Any,
                       tell: Callable[[str], None]) -> pl.DataFrame:
    from bot.core.db import research as repo

    try:
        for k, (ts, vt, et) in enumerate(wins):
            if k in done:
                continue
            t0 = time.perf_counter()
            rep = await run_sweep(db, cfg, pairs, iters=iters, seed=seed, param_sets=sets, train_start=ts,
                                  valid_time=vt, end_time=et, workers=workers, with_features=False,
                                  assume_instruments=assume_instruments, kind="dataset-window", executor=executor,
                                  progress_desc=f"window {k + 1}/{len(wins)}")
            st = rep.stats
            frame = st.with_columns(pl.lit(k).alias("window_id"), pl.lit(ts).alias("train_start"),
                                    pl.lit(vt).alias("valid_time"), pl.lit(et).alias("end_time")).select(*COLUMNS)
            wall = time.perf_counter() - t0
            await store_window(pool, dataset_id, k, rep.run_id, frame, wall)
            c = rep.counts()
            line = (f"window {k + 1}/{len(wins)} committed: {ts:%Y-%m-%d} -> {vt:%Y-%m-%d} -> {et:%Y-%m-%d}, "
                    f"{frame.height} rows ({c.get('untradeable', 0)} pairs untradeable, {c['skipped']} skipped,"
                    f" {c['failed']} failed) in {wall:.1f} s")
            tell(line)
        await repo.finish_run(pool, dataset_id, "ok")
    except BaseException as err:
        await repo.finish_run(pool, dataset_id, "failed", f"{type(err).__name__}: {err}")
        raise
    try:
        return await load_dataset(pool, dataset_id)
    except ValueError:  # no pair ran in any window
        return pl.DataFrame()


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _rows(dataset_id: int, frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return [
        (dataset_id, int(r["window_id"]), r["train_start"], r["valid_time"], r["end_time"], r["coin1"], r["coin2"],
         json.dumps({f: _num(r[f]) for f in FEATURES}), _num(r["pr_test"]), _num(r["pr_rat_test"]),
         *(_num(r.get(c)) for c in TEST_COUNTS))
        for r in frame.iter_rows(named=True)
    ]


_INSERT = ("INSERT INTO model_dataset (dataset_id, window_id, train_start, valid_time, end_time, coin1, coin2,"
           " features, pr_test, pr_rat_test, trades_test, skipped_test, liquidations_test, fees_test)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14)")


async def store_window(pool: Any, dataset_id: int, window_id: int, sweep_run_id: int | None, frame: pl.DataFrame,
                       wall_s: float) -> None:
    """One window's rows and its `dataset_windows` mark, in one transaction (all or nothing)."""
    async with pool.acquire() as conn, conn.transaction():
        if frame.height:
            await conn.executemany(_INSERT, _rows(dataset_id, frame))
        await conn.execute("INSERT INTO dataset_windows (dataset_id, window_id, sweep_run_id, rows, wall_s)"
                           " VALUES ($1, $2, $3, $4, $5)", dataset_id, window_id, sweep_run_id, frame.height, wall_s)


async def store_dataset(pool: Any, dataset_id: int, frame: pl.DataFrame) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(_INSERT, _rows(dataset_id, frame))


async def load_dataset(pool: Any, dataset_id: int | None = None) -> pl.DataFrame:
    """A stored dataset (the latest finished one when no id is given) as a polars frame (COLUMNS)."""
    async with pool.acquire() as conn:
        if dataset_id is None:
            dataset_id = await conn.fetchval(
                "SELECT max(r.id) FROM backtest_runs r WHERE r.kind = 'dataset' AND r.status = 'ok'"
                " AND EXISTS (SELECT 1 FROM model_dataset d WHERE d.dataset_id = r.id)")
            if dataset_id is None:
                raise ValueError("no finished dataset stored: run `bot dataset` first")
        version = await conn.fetchval("SELECT (args->>'version')::int FROM dataset_builds WHERE dataset_id = $1",
                                      dataset_id)
        if version is not None and version < DATASET_VERSION:
            raise ValueError(f"dataset {dataset_id} predates the spread-shape columns (zero_cross, half_life_h, "
                             "hurst, pos_share_all, fees_test): rebuild it with `bot dataset`")
        rows = await conn.fetch("SELECT * FROM model_dataset WHERE dataset_id = $1 ORDER BY window_id, coin1, coin2",
                                dataset_id)
    if not rows:
        raise ValueError(f"dataset {dataset_id} is empty or does not exist")
    recs = []
    for r in rows:
        feats = json.loads(r["features"])
        recs.append({"window_id": r["window_id"], "train_start": r["train_start"], "valid_time": r["valid_time"],
                     "end_time": r["end_time"], "coin1": r["coin1"], "coin2": r["coin2"],
                     **{f: feats.get(f) for f in FEATURES}, "pr_test": r["pr_test"], "pr_rat_test": r["pr_rat_test"],
                     **{c: r[c] for c in TEST_COUNTS}})
    schema = {f: pl.Float64 for f in (*FEATURES, "pr_test", "pr_rat_test", *TEST_COUNTS)}
    return pl.DataFrame(recs, schema_overrides=schema).select(*COLUMNS)

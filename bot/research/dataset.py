"""The model's dataset (selection.md section 5): pair statistics over rolling windows.

Windows roll over [start, end): train L_train days, test L_test days, step L_test
(model.train_days / model.test_days). Each window is one research run (the same
pair job as `bot stats`); every pair that ran becomes one row: the statistics of
its train window as features and its test-window results as targets.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from typing import Any

import polars as pl

from bot.config.model import BotConfig
from bot.research.pair_job import STATS_COLUMNS
from bot.research.sweep import run_sweep

log = logging.getLogger(__name__)

TARGET = "pr_rat_test"
FEATURES = tuple(c for c in STATS_COLUMNS if c not in ("coin1", "coin2", "best_param_id") and not c.endswith("_test"))
META = ("window_id", "train_start", "valid_time", "end_time", "coin1", "coin2")


def windows(start: dt.datetime, end: dt.datetime, train_days: int, test_days: int) -> list[tuple[dt.datetime, dt.datetime, dt.datetime]]:
    """(train_start, valid_time, end_time) of every full window inside [start, end)."""
    out = []
    s = start
    while s + dt.timedelta(days=train_days + test_days) <= end:
        v = s + dt.timedelta(days=train_days)
        out.append((s, v, v + dt.timedelta(days=test_days)))
        s += dt.timedelta(days=test_days)
    return out


async def build_dataset(db: Any, cfg: BotConfig, pairs: list[tuple[str, str]], start: dt.datetime,
                        end: dt.datetime, *, iters: int | None = None, seed: int | None = None,
                        workers: int | None = None, assume_instruments: bool = False) -> tuple[int, pl.DataFrame]:
    """Run every window, store the rows in `model_dataset`; returns (dataset_id, frame)."""
    from bot.core.db import research as repo

    wins = windows(start, end, cfg.model.train_days, cfg.model.test_days)
    if not wins:
        raise ValueError(f"no full window of {cfg.model.train_days}+{cfg.model.test_days} days in "
                         f"{start:%Y-%m-%d} -> {end:%Y-%m-%d}")
    pool = getattr(db, "pool", db)
    dataset_id = await repo.start_run(pool, "dataset", {"windows": len(wins), "pairs": len(pairs)})
    frames = []
    try:
        for k, (ts, vt, et) in enumerate(wins):
            log.info("dataset window %d/%d: %s -> %s -> %s", k + 1, len(wins), ts.date(), vt.date(), et.date())
            rep = await run_sweep(db, cfg, pairs, iters=iters or cfg.research.iters,
                                  seed=cfg.research.seed if seed is None else seed, train_start=ts, valid_time=vt,
                                  end_time=et, workers=workers, with_features=False,
                                  assume_instruments=assume_instruments, kind="dataset-window")
            st = rep.stats
            if st.height:
                frames.append(st.with_columns(pl.lit(k).alias("window_id"), pl.lit(ts).alias("train_start"),
                                              pl.lit(vt).alias("valid_time"), pl.lit(et).alias("end_time")))
        frame = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
        if frame.height:
            frame = frame.select(*META, *FEATURES, "pr_test", TARGET)
            await store_dataset(pool, dataset_id, frame)
        await repo.finish_run(pool, dataset_id, "ok")
        return dataset_id, frame
    except BaseException as err:
        await repo.finish_run(pool, dataset_id, "failed", f"{type(err).__name__}: {err}")
        raise


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


async def store_dataset(pool: Any, dataset_id: int, frame: pl.DataFrame) -> None:
    rows = [
        (dataset_id, int(r["window_id"]), r["train_start"], r["valid_time"], r["end_time"], r["coin1"], r["coin2"],
         json.dumps({f: _num(r[f]) for f in FEATURES}), _num(r["pr_test"]), _num(r[TARGET]))
        for r in frame.iter_rows(named=True)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO model_dataset (dataset_id, window_id, train_start, valid_time, end_time, coin1, coin2,"
            " features, pr_test, pr_rat_test) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)", rows)


async def load_dataset(pool: Any, dataset_id: int | None = None) -> pl.DataFrame:
    """A stored dataset (the latest when no id is given) as a polars frame."""
    async with pool.acquire() as conn:
        if dataset_id is None:
            dataset_id = await conn.fetchval("SELECT max(dataset_id) FROM model_dataset")
            if dataset_id is None:
                raise ValueError("no dataset stored: run `bot dataset` first")
        rows = await conn.fetch("SELECT * FROM model_dataset WHERE dataset_id = $1 ORDER BY window_id, coin1, coin2",
                                dataset_id)
    if not rows:
        raise ValueError(f"dataset {dataset_id} is empty or does not exist")
    recs = []
    for r in rows:
        feats = json.loads(r["features"])
        recs.append({"window_id": r["window_id"], "train_start": r["train_start"], "valid_time": r["valid_time"],
                     "end_time": r["end_time"], "coin1": r["coin1"], "coin2": r["coin2"],
                     **{f: feats.get(f) for f in FEATURES}, "pr_test": r["pr_test"], TARGET: r["pr_rat_test"]})
    schema = {**{f: pl.Float64 for f in FEATURES}, "pr_test": pl.Float64, TARGET: pl.Float64}
    return pl.DataFrame(recs, schema_overrides=schema)

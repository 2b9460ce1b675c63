"""Real-data check: a small dataset from the real 1h perpetuals (bars-only), trained,
saved, reloaded and scored; predictions after reload are the same bits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bot.config import load
from bot.config.loader import example_path
from bot.core.db.pool import Database
from bot.core.importer import import_files
from bot.research import model as mdl
from bot.research.dataset import build_dataset, load_dataset

pytestmark = [pytest.mark.db, pytest.mark.realdata, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

TOKENS = ("BTC", "ETH", "SOL", "LINK", "AVAX", "DOGE", "XRP", "ADA")


async def test_real_dataset_train_save_reload_score(db: Database, shared_data: Path, tmp_path: Path) -> None:
    src = pl.read_parquet(shared_data / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet")
    part = src.filter(pl.col("pair").is_in([f"{t}/USDT:USDT" for t in TOKENS]) & (pl.col("date") >= pl.datetime(2025, 5, 1, time_zone="UTC"))
                      & (pl.col("date") < pl.datetime(2025, 9, 15, time_zone="UTC")))
    part.write_parquet(tmp_path / "perps.parquet")
    await import_files(db, [tmp_path / "perps.parquet"])
    base = load(example_path())
    cfg = base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"fee_rate": 0.00055, "min_order_size": 0.0}),
        "model": base.model.model_copy(update={"train_days": 30, "test_days": 14, "iterations": 80, "depth": 4,
                                               "dir": str(tmp_path / "models")}),
        "selection": base.selection.model_copy(update={"max_pairs": 3}),
    })
    pairs = [(a, b) for i, a in enumerate(TOKENS) for b in TOKENS[i + 1:]]
    start = dt.datetime(2025, 5, 6, tzinfo=dt.UTC)
    dataset_id, frame = await build_dataset(db, cfg, pairs, start, start + dt.timedelta(days=30 + 14 * 5),
                                            iters=5, workers=2, assume_instruments=True)
    assert frame["window_id"].n_unique() == 5
    # every (window, pair) is a row, except BTC pairs no entry of which can be sized (one 0.001
    # step of BTC costs more than 100 USDT per leg): those are untradeable, not rows of 0 trades
    have = {(w, a, b) for w, a, b in frame.select("window_id", "coin1", "coin2").iter_rows()}
    missing = {(w, a, b) for w in range(5) for a, b in pairs} - have
    assert all("BTC" in (a, b) for _w, a, b in missing) and len(have) == frame.height > 4 * len(pairs)
    stored = await load_dataset(db.pool, dataset_id)
    assert stored.height == frame.height
    np.testing.assert_allclose(stored["pv_1"].to_numpy(), frame.sort(["window_id", "coin1", "coin2"])["pv_1"].to_numpy())
    wf = mdl.walk_forward(frame, cfg, min_train_windows=2, random_draws=50)
    assert set(wf.per_window["window_id"].unique().to_list()) == {2, 3, 4}
    model = mdl.fit_catboost(frame, cfg)
    path = mdl.save_model(model, cfg.model.dir, {"promoted": wf.promoted}, cfg.model.keep_last)
    first = mdl.load_model(path).predict(stored)
    second = mdl.load_model(path).predict(stored)
    assert np.array_equal(first, second) and np.isfinite(first).all()

"""Model benchmark (issue: pair scoring model). Run (about 10 minutes on 2 cores):

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/bench_model.py

In a scratch database: a 40-symbol demo market (150 days, hourly quotes: the
bars-only scale of research), the dataset of all 780 pairs over 6 rolling windows
(60-day train, 14-day test, 10 parameter sets per pair) on 2 workers, the
walk-forward table at the default CatBoost settings, the final fit, scoring 10,000
rows, and precision@k of the model's ranking against the demo manifest's truly
cointegrated pairs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db.scratch import scratch_database, scratch_server
from bot.core.demo_market import generate
from bot.research import model as mdl
from bot.research.dataset import build_dataset


async def main(admin: str, tmp: Path) -> None:
    async with scratch_database(admin, "bot_model") as db:
        market = generate(n_symbols=40, days=150, quote_interval_s=3600.0, seed=21)
        await write_demo_market(db, market, tfs=("1h",))
        toks = market.symbols
        pairs = [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]]
        base = load(example_path())
        cfg = base.model_copy(update={"strategy": base.strategy.model_copy(update={"min_order_size": 0.0,
                                                                                   "sl_method": "cooldown"})})
        start = market.start + dt.timedelta(days=5)
        end = start + dt.timedelta(days=60 + 14 * 6)
        t = time.perf_counter()
        _, frame = await build_dataset(db, cfg, pairs, start, end, iters=10, workers=2)
        t_dataset = time.perf_counter() - t
        t = time.perf_counter()
        wf = mdl.walk_forward(frame, cfg, min_train_windows=2)
        t_wf = time.perf_counter() - t
        t = time.perf_counter()
        model = mdl.fit_catboost(frame, cfg)
        t_fit = time.perf_counter() - t
        path = mdl.save_model(model, tmp / "models", {"promoted": wf.promoted}, 5)
        lm = mdl.load_model(path)
        big = pl.concat([frame] * (10_000 // frame.height + 1)).head(10_000)
        lm.predict(big)
        t = time.perf_counter()
        lm.predict(big)
        t_score = time.perf_counter() - t
        # precision@k against the manifest, on the last window (scored by a model fit on the earlier ones)
        truth = {tuple(sorted(pair)) for pair in market.cointegrated_pairs()}
        last = frame["window_id"].max()
        early = mdl.fit_catboost(frame.filter(pl.col("window_id") < last), cfg)
        val = frame.filter(pl.col("window_id") == last)
        x = val.select([pl.col(f).cast(pl.Float64) for f in mdl.FEATURES]).to_numpy()
        order = np.argsort(-np.asarray(early.predict(x)))
        pv = np.maximum(val["pv_1"].fill_null(1.0).to_numpy(), val["pv_2"].fill_null(1.0).to_numpy())
        keys = [tuple(sorted((a, b))) for a, b in zip(val["coin1"], val["coin2"], strict=True)]
        k = len(truth)
        p_model = sum(keys[i] in truth for i in order[:k]) / k
        p_pv = sum(keys[i] in truth for i in np.argsort(pv)[:k]) / k
        with pl.Config(tbl_rows=20, tbl_cols=10, float_precision=3, tbl_width_chars=140):
            print(wf.summary)
        print(wf.reason)
        print(f"{'measure':60s} {'value':>10s}")
        print(f"{'dataset: 40 symbols, 780 pairs x 6 windows, 2 workers: s':60s} {t_dataset:>10.1f}")
        print(f"{'  rows':60s} {frame.height:>10d}")
        print(f"{'walk-forward (4 validation windows, 4 CatBoost fits): s':60s} {t_wf:>10.1f}")
        print(f"{'final fit, default settings (800 it, depth 8): s':60s} {t_fit:>10.1f}")
        print(f"{'scoring 10,000 rows: ms':60s} {t_score * 1e3:>10.1f}")
        print(f"{f'precision@{k} vs the manifest (model, last window)':60s} {p_model:>10.2f}")
        print(f"{f'precision@{k} vs the manifest (lowest Engle-Granger p)':60s} {p_pv:>10.2f}")
        print(f"{'  base rate (cointegrated / all pairs)':60s} {k / len(pairs):>10.3f}")


if __name__ == "__main__":
    import os
    import tempfile

    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(admin, Path(tmp)))

"""Pair research on real data: the 32 gap-free Binance USDT-M perpetuals, 1h bars-only.

Run (about 2-4 minutes on 2 cores):

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/research_realdata.py

(without BOT_DATABASE_DSN an embedded PostgreSQL is used). In a scratch database it
imports ../shared/data/ohlcv/binance_usdm_futures_1h_40pairs.parquet, computes the
pair statistics of all 496 pairs (train 2025-05-05 -> 2026-02-01, test -> 2026-05-07,
10 parameter sets each, Bybit taker fee 0.055 %), prints the most cointegrated
pairs, then runs a seeded sweep with open-time features on five pairs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from bot.config import load
from bot.config.loader import example_path
from bot.core.db.scratch import scratch_database, scratch_server
from bot.core.importer import import_files
from bot.research.sweep import run_sweep

DATA = Path(os.environ.get("BOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GAPLESS = ("1000PEPE 1000SHIB AAVE ADA ALGO ARB AVAX BCH BTC DOGE DOT ENA ETH HBAR KAS LINK LTC NEAR ONDO OP "
           "RENDER SOL SUI TON TRX VET WLD XLM XMR XRP XTZ ZEC").split()
TRAIN = dt.datetime(2025, 5, 5, tzinfo=dt.UTC)
VALID = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 5, 7, tzinfo=dt.UTC)


async def main(admin: str, tmp: Path) -> None:
    async with scratch_database(admin, "bot_real") as db:
        t = time.perf_counter()
        await import_files(db, [DATA / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet"])
        print(f"imported 1h candles in {time.perf_counter() - t:.1f} s")
        base = load(example_path())
        cfg = base.model_copy(update={"strategy": base.strategy.model_copy(
            update={"fee_rate": 0.00055, "min_order_size": 0.0, "sl_method": "cooldown"})})
        pairs = [(a, b) for i, a in enumerate(GAPLESS) for b in GAPLESS[i + 1:]]
        t = time.perf_counter()
        rep = await run_sweep(db, cfg, pairs, iters=10, seed=1, train_start=TRAIN, valid_time=VALID, end_time=END,
                              workers=2, with_features=False, assume_instruments=True,
                              parquet_path=tmp / "all_pairs.parquet", kind="stats")
        print(f"pair statistics: {len(pairs)} pairs {rep.counts()} in {time.perf_counter() - t:.1f} s")
        st = rep.stats.with_columns(pl.max_horizontal("pv_1", "pv_2").alias("pv_max"))
        with pl.Config(tbl_rows=12, tbl_cols=12, tbl_width_chars=160, float_precision=4):
            print("most cointegrated (both Engle-Granger directions):")
            print(st.sort("pv_max").select("coin1", "coin2", "pv_1", "pv_2", "corr", "dist", "pr_rat_all",
                                           "pr_rat_best", "pr_rat_test").head(12))
            print(f"pairs with both p-values < 0.05: {st.filter(pl.col('pv_max') < 0.05).height} of {st.height}"
                  f" (5 % expected by chance alone: {0.05 * st.height:.0f})")
            from scipy.stats import spearmanr

            ok = st.drop_nulls(["pr_rat_all", "pr_rat_test"])
            for col in ("pv_max", "pr_rat_all", "pr_rat_best", "corr"):
                rho = spearmanr(ok[col].to_numpy(), ok["pr_rat_test"].to_numpy()).statistic
                print(f"  Spearman({col}, pr_rat_test) = {rho:+.3f}")
        top = [tuple(r) for r in st.sort("pv_max").select("coin1", "coin2").head(3).iter_rows()]
        few = top + [("BTC", "ETH"), ("SOL", "AVAX")]
        t = time.perf_counter()
        rep2 = await run_sweep(db, cfg, few, iters=30, seed=7, train_start=TRAIN, valid_time=VALID, end_time=END,
                               workers=2, with_features=True, trades_log=tmp / "trades.jsonl",
                               assume_instruments=True, kind="sweep")
        print(f"seeded sweep with features on {few}: {rep2.counts()}, {rep2.trades_logged} trades logged "
              f"in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    import os
    import tempfile

    if not (DATA / "ohlcv").is_dir():
        raise SystemExit(f"shared data not found at {DATA}")
    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(admin, Path(tmp)))

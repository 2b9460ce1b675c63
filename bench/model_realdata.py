"""Walk-forward table of the scoring model on real data (about 8 minutes on 2 cores):

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/model_realdata.py

16 of the gap-free Binance perpetuals (120 pairs), 1h bars-only, 60-day train /
14-day test windows stepping 14 days over 2025-05-05 -> 2026-05-07, 10 parameter
sets per pair, Bybit taker fee 0.055 %, default CatBoost settings, validation from
the 11th window on (earlier windows only ever train).
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
from bot.research import model as mdl
from bot.research.dataset import build_dataset

DATA = Path(os.environ.get("BOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TOKENS = "ADA ARB AVAX BCH BTC DOGE DOT ETH HBAR LINK LTC NEAR SOL SUI XLM XRP".split()


async def main(admin: str, tmp: Path) -> None:
    async with scratch_database(admin, "bot_mreal") as db:
        await import_files(db, [DATA / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet"])
        base = load(example_path())
        cfg = base.model_copy(update={"strategy": base.strategy.model_copy(
            update={"fee_rate": 0.00055, "min_order_size": 0.0, "sl_method": "cooldown"})})
        pairs = [(a, b) for i, a in enumerate(TOKENS) for b in TOKENS[i + 1:]]
        t = time.perf_counter()
        _, frame = await build_dataset(db, cfg, pairs, dt.datetime(2025, 5, 5, tzinfo=dt.UTC),
                                       dt.datetime(2026, 5, 7, tzinfo=dt.UTC), iters=10, workers=2,
                                       assume_instruments=True)
        print(f"dataset: {frame.height} rows, {frame['window_id'].n_unique()} windows in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        wf = mdl.walk_forward(frame, cfg, min_train_windows=10)
        print(f"walk-forward in {time.perf_counter() - t:.0f} s")
        with pl.Config(tbl_rows=20, tbl_cols=10, float_precision=3, tbl_width_chars=140):
            print(wf.summary)
        print(wf.reason)
        print("importances: " + ", ".join(f"{n} {v:.1f}" for n, v in wf.importances[:6]))


if __name__ == "__main__":
    import os
    import tempfile

    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(admin, Path(tmp)))

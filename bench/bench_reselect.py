"""Re-selection benchmark (issue: re-selection job). Run (about 5-10 minutes on 2 cores):

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/bench_reselect.py

A 30-symbol demo market of 60 days with 60 s quotes (435 candidate pairs, 86k ticks
per pair in the 55-day train window), 100 parameter sets per pair, a promoted model
trained on a synthetic dataset (scoring cost only), 2 worker processes. Prints the
wall time and its split: loading, backtests, features (none: the job logs no
features), scoring, writes. 60 days of 5 s quotes for 431 pairs would hold ~17 GB
of tick arrays at once in this design (inputs are loaded before the workers run),
which is why the bench uses 60 s quotes; see the issue note.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db.scratch import scratch_database, scratch_server
from bot.core.demo_market import generate
from bot.research import model as mdl
from bot.research.pairs_file import format_pairs
from bot.selection.reselect import reselect


async def main(admin: str, tmp: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.research.test_model import synthetic

    async with scratch_database(admin, "bot_rsl") as db:
        market = generate(n_symbols=30, days=60, quote_interval_s=60.0, seed=3)
        await write_demo_market(db, market, tfs=("1h",))
        toks = market.symbols
        pairs = [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]]
        (tmp / "candidates.txt").write_text(format_pairs(pairs))
        base = load(example_path())
        cfg = base.model_copy(update={
            "research": base.research.model_copy(update={"iters": 100}),
            "selection": base.selection.model_copy(update={"train_days": 55, "candidates_file": str(tmp / "candidates.txt"),
                                                           "token_pairs_file": str(tmp / "token_pairs.txt")}),
            "model": base.model.model_copy(update={"dir": str(tmp / "models"), "iterations": 200, "depth": 6}),
        })
        mdl.save_model(mdl.fit_catboost(synthetic(), cfg), cfg.model.dir, {"promoted": True}, 3)
        t = time.perf_counter()
        rep = await reselect(db, cfg, now=market.end, workers=2)
        wall = time.perf_counter() - t
        tm = rep.timings
        print(f"candidates: {len(pairs)}; selected {len(rep.pairs)}; wall {wall:.1f} s on 2 workers")
        print("split: " + ", ".join(f"{k} {v:.1f} s" for k, v in tm.items()))


if __name__ == "__main__":
    import os
    import tempfile

    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(admin, Path(tmp)))

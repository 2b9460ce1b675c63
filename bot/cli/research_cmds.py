"""`bot stats` and `bot sweep`: the research loop on the command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from bot.cli.args import (
    Problems,
    output_file,
    pairs_file,
    parse_time,
    positive_int,
    require_instruments,
    window,
)
from bot.config import BotConfig


def register(sub: Any) -> None:
    for name, helptext in (("stats", "pair statistics (with their backtest summaries) for a pairs file"),
                           ("sweep", "random parameter sweep over a pairs file, logging every trade")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--pairs", required=True, help="file of pairs, one 'T1 T2' per line")
        p.add_argument("--start", help="train start (default: valid_time - research.train_days)")
        p.add_argument("--valid", help="end of train / start of test (default: research.valid_time)")
        p.add_argument("--end", help="end of test (default: research.end_time)")
        p.add_argument("--iters", type=int, help="parameter sets per pair (default: research.iters)")
        p.add_argument("--seed", type=int, help="sweep seed (default: research.seed)")
        p.add_argument("--workers", type=int, help="worker processes (default: compute.workers or all cores)")
        p.add_argument("--grid", action="store_true", help="grid search over the configured ranges, not random")
        p.add_argument("--assume-instruments", action="store_true",
                       help="derive qty steps from prices when instruments are missing (imported candles)")
        p.add_argument("--out", help="parquet of the statistics (default: <data_dir>/all_pairs.parquet)")
        if name == "sweep":
            p.add_argument("--log", help="trades JSONL (default: research.trades_log)")
            p.add_argument("--no-features", action="store_true", help="do not compute open-time features")
        p.set_defaults(func=cmd_research, research_kind=name)


def cmd_research(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.research.params import sample_params
    from bot.research.sweep import outcome_summary, run_sweep

    r = cfg.research
    sweep = args.research_kind == "sweep"
    p = Problems()
    valid = p.check(parse_time, args.valid, "--valid", r.valid_time)
    end = p.check(parse_time, args.end, "--end", r.end_time)
    default_start = r.train_start or (valid - dt.timedelta(days=r.train_days) if valid else None)
    start = p.check(parse_time, args.start, "--start", default_start) if args.start or default_start else None
    p.check(window, start, valid, "--start", "--valid")
    p.check(window, valid, end, "--valid", "--end", allow_equal=True)
    p.check(positive_int, args.iters, "--iters")
    p.check(positive_int, args.workers, "--workers")
    out = p.check(output_file, args.out or Path(cfg.paths.data_dir) / "all_pairs.parquet", "--out")
    if sweep:
        p.check(output_file, args.log or r.trades_log, "--log")
    pairs = p.check(pairs_file, args.pairs)  # a malformed file stops here: nothing run
    p.raise_if_any()
    assert pairs is not None and start is not None and valid is not None and end is not None and out is not None
    seed = r.seed if args.seed is None else args.seed
    sets = sample_params(r, cfg.strategy, args.iters or (0 if args.grid else r.iters), seed,
                         mode="grid" if args.grid else "random")

    async def run() -> Any:
        db = await open_database(cfg.database)
        try:
            await require_instruments(db, [t for pair in pairs for t in pair], "--pairs",
                                      assume=args.assume_instruments)
            return await run_sweep(
                db, cfg, pairs, iters=len(sets), seed=seed, param_sets=sets,
                train_start=start, valid_time=valid, end_time=end, workers=args.workers,
                with_features=sweep and not args.no_features,
                trades_log=(args.log or r.trades_log) if sweep else None, parquet_path=out,
                assume_instruments=args.assume_instruments, kind=args.research_kind,
            )
        finally:
            await db.close()

    rep = asyncio.run(run())
    c = rep.counts()
    untradeable = f", {c['untradeable']} untradeable" if c.get("untradeable") else ""
    print(f"run {rep.run_id}: {len(pairs)} pairs ({c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed"
          f"{untradeable}) "
          f"in {rep.wall_s:.1f} s")
    for line in outcome_summary(rep.outcomes):  # one line per reason, with a count (not one per pair)
        print(f"  {line}")
    st = rep.stats
    if st.height:
        import polars as pl

        with pl.Config(tbl_rows=15, tbl_cols=10, tbl_width_chars=150):
            print(st.sort("pv_1").select("coin1", "coin2", "pv_1", "pv_2", "corr", "pr_rat_ind", "pr_rat_all",
                                         "pr_rat_best", "pr_rat_test").head(15))
    print(f"statistics: {out}")
    if sweep:
        print(f"trades logged: {rep.trades_logged} -> {args.log or r.trades_log}")
    return 0 if c["failed"] == 0 else 1

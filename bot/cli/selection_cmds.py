"""`bot reselect [--dry-run]` and `bot jobs`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import polars as pl

from bot.config import BotConfig


def register(sub: Any) -> None:
    r = sub.add_parser("reselect", help="re-select the traded pairs now (the scheduled job, by hand)")
    r.add_argument("--dry-run", action="store_true", help="print the decision table, change nothing")
    r.add_argument("--workers", type=int)
    r.add_argument("--as-of", metavar="TIME", help="run as of this UTC ISO time (demo or imported data); "
                   "default: now. The scheduler always runs as of now")
    r.set_defaults(func=cmd_reselect)
    j = sub.add_parser("jobs", help="scheduled jobs: next run and last result")
    j.set_defaults(func=cmd_jobs)


def print_report(rep: Any) -> None:
    from bot.selection.reselect import decisions_frame

    if rep.status == "skipped":
        print(f"re-selection skipped: {rep.reason}")
        return
    print(f"re-selection run {rep.run_id} ({rep.status}), model: {rep.model}")
    frame = decisions_frame(rep)
    with pl.Config(tbl_rows=40, tbl_width_chars=140):
        print(frame.group_by("decision").len().sort("decision"))
        print(frame.filter(pl.col("decision").is_in(["selected", "kept"])))
    if rep.file_error:
        print(f"WARNING: pairs table updated but token_pairs.txt was not written: {rep.file_error}")
    t = rep.timings
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))


def cmd_reselect(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.cli.args import parse_time, positive_int
    from bot.core.db.pool import open_database
    from bot.selection.reselect import ReselectError, reselect

    as_of = parse_time(args.as_of, "--as-of") if args.as_of else None
    positive_int(args.workers, "--workers")

    async def run() -> Any:
        db = await open_database(cfg.database)
        try:
            return await reselect(db, cfg, dry_run=args.dry_run, workers=args.workers, now=as_of)
        finally:
            await db.close()

    try:
        rep = asyncio.run(run())
    except ReselectError as err:
        print(f"error: re-selection failed, pairs and token_pairs.txt unchanged: {err}", file=sys.stderr)
        return 1
    print_report(rep)
    return 1 if rep.file_error else 0


def cmd_jobs(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.core.scheduler import job_table

    async def run() -> pl.DataFrame:
        db = await open_database(cfg.database)
        try:
            return await job_table(db, cfg)
        finally:
            await db.close()

    with pl.Config(tbl_rows=20, tbl_width_chars=160):
        print(asyncio.run(run()))
    return 0

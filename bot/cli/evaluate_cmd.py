"""`bot evaluate`: does the selection beat chance? (bot.selection.evaluate)

Data: the bot's database (its bars and instruments), or candle files (`--files`,
bars-only: imported into a throw-away database that is dropped afterwards: on the
configured server when a DSN is set, else an embedded PostgreSQL in a temp
directory), or a dataset parquet already built (`--dataset`). Writes, into `--out`:
rows.parquet (every window x pair with its statistics, test results and pick flags
per method), windows.parquet (per window and method), summary.parquet, report.txt
(the table and the verdict) and cumulative.png (cumulative profit per method).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from bot.cli.args import (
    Problems,
    UsageError,
    output_file,
    pairs_file,
    parse_time,
    positive_int,
    window,
)
from bot.config import BotConfig


def register(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="walk-forward: the bot's selection against random picks and simple rules")
    e.add_argument("--start", help="first train window start (UTC ISO); required unless --dataset")
    e.add_argument("--end", help="end of the last test window; required unless --dataset")
    e.add_argument("--files", nargs="+", metavar="FILE",
                   help="candle files (bars-only mode): imported into a throw-away database, not the bot's")
    e.add_argument("--dataset", metavar="PARQUET", help="evaluate a dataset already built (bot dataset --out, or"
                   " an earlier evaluate's rows.parquet) instead of building one")
    e.add_argument("--pairs", help="file of candidate pairs 'T1 T2' (default: every pair of the symbols whose bars"
                   " cover [start, end) without a gap)")
    e.add_argument("--iters", type=int, help="parameter sets per pair and window (default: research.iters)")
    e.add_argument("--workers", type=int)
    e.add_argument("--draws", type=int, default=200, help="random draws per window (default 200)")
    e.add_argument("--min-train-windows", type=int, default=4,
                   help="windows before the first model is trained (default 4); earlier windows use the fallback")
    e.add_argument("--holdout-after", metavar="TIME",
                   help="windows whose test ends after this are reported apart as the holdout")
    e.add_argument("--out", help="output directory (default: <data_dir>/evaluate/<UTC time>)")
    e.set_defaults(func=cmd_evaluate)


def _check(args: argparse.Namespace, cfg: BotConfig) -> dict[str, Any]:
    p = Problems()
    got: dict[str, Any] = {}
    if args.dataset:
        if args.files or args.pairs:
            p.messages.append("--dataset: evaluates a built dataset; --files and --pairs do not apply")
        if args.iters is not None or args.workers is not None:
            p.messages.append("--dataset: the dataset is built already; --iters and --workers do not apply")
        if args.start or args.end:
            p.messages.append("--dataset: the dataset's windows are its own; --start and --end do not apply")
        got["dataset"] = Path(args.dataset)
    else:
        if not args.start or not args.end:
            p.messages.append("--start and --end are required (or --dataset)")
        else:
            got["start"] = p.check(parse_time, args.start, "--start")
            got["end"] = p.check(parse_time, args.end, "--end")
            p.check(window, got["start"], got["end"])
            from bot.research.dataset import windows

            m = cfg.model
            if got["start"] and got["end"] and got["end"] > got["start"] and not windows(
                    got["start"], got["end"], m.train_days, m.test_days):
                p.messages.append(f"--start .. --end: shorter than one window of model.train_days + "
                                  f"model.test_days = {m.train_days} + {m.test_days} days")
        for f in args.files or []:
            if not Path(f).is_file():
                p.messages.append(f"--files: no such file: {f}")
        if args.pairs:
            got["pairs"] = p.check(pairs_file, args.pairs)
    p.check(positive_int, args.iters, "--iters")
    p.check(positive_int, args.workers, "--workers")
    p.check(positive_int, args.draws, "--draws")
    p.check(positive_int, args.min_train_windows, "--min-train-windows")
    got["holdout"] = p.check(parse_time, args.holdout_after, "--holdout-after") if args.holdout_after else None
    out = Path(args.out) if args.out else Path(cfg.paths.data_dir) / "evaluate" / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    got["out"] = p.check(output_file, out / "report.txt", "--out")
    p.raise_if_any()
    return got


async def gap_free_symbols(db: Any, tf: str, start: dt.datetime, end: dt.datetime) -> tuple[list[str], list[str]]:
    """Tokens whose `tf` bars cover [start, end) without a gap, and the others."""
    from bot.core.db.market import missing_bar_ranges, token_of

    async with db.pool.acquire() as conn:
        symbols = [r["symbol"] for r in await conn.fetch("SELECT DISTINCT symbol FROM bars WHERE tf = $1", tf)]
    holes = await missing_bar_ranges(db, symbols, tf, start, end)
    ok = sorted(token_of(s) for s, h in holes.items() if not h)
    return ok, sorted(token_of(s) for s, h in holes.items() if h)


async def _build(db: Any, cfg: BotConfig, got: dict[str, Any], args: argparse.Namespace, assume: bool) -> pl.DataFrame:
    from bot.research.dataset import build_dataset, windows

    start, end = got["start"], got["end"]
    pairs = got.get("pairs")
    if pairs is None:
        ok, left = await gap_free_symbols(db, cfg.strategy.tf, start, end)
        print(f"symbols with {cfg.strategy.tf} bars over the whole range: {len(ok)}"
              + (f" (left out, with gaps: {' '.join(left)})" if left else ""))
        pairs = [(a, b) for i, a in enumerate(ok) for b in ok[i + 1:]]
    if len(pairs) < 2:
        raise UsageError(f"fewer than two candidate pairs ({len(pairs)}): nothing to compare")
    wins = windows(start, end, cfg.model.train_days, cfg.model.test_days)
    print(f"{len(pairs)} pairs, {len(wins)} windows of {cfg.model.train_days} + {cfg.model.test_days} days, "
          f"fee_rate {cfg.strategy.fee_rate:g}", flush=True)
    _, frame = await build_dataset(db, cfg, pairs, start, end, iters=args.iters, workers=args.workers,
                                   assume_instruments=assume, say=lambda line: print(line, flush=True),
                                   kind="evaluate-dataset")
    return frame


def _dataset(cfg: BotConfig, got: dict[str, Any], args: argparse.Namespace) -> pl.DataFrame:
    if "dataset" in got:
        from bot.research.model import read_dataset_file

        return read_dataset_file(got["dataset"], cfg.model.target)
    from bot.core.db.pool import open_database

    async def run() -> pl.DataFrame:
        if args.files:
            from bot.core.db.scratch import scratch_database, scratch_server
            from bot.core.importer import import_files

            with scratch_server(cfg.database.dsn) as admin:
                async with scratch_database(admin, "bot_evaluate") as db:
                    print(f"importing {len(args.files)} file(s) into a throw-away database", flush=True)
                    await import_files(db, list(args.files))
                    return await _build(db, cfg, got, args, assume=True)
        db = await open_database(cfg.database)
        try:
            return await _build(db, cfg, got, args, assume=False)
        finally:
            await db.close()

    return asyncio.run(run())


def _bar(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        fill = int(width * done / total)
        sys.stderr.write(f"\revaluating windows [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    elif done == total or done % 5 == 0:
        print(f"evaluated {done}/{total} windows", flush=True)


def plot_cumulative(per_window: pl.DataFrame, path: Path) -> None:
    """cumulative.png: per method, the cumulative sum over windows of its per-window total profit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    ceiling = ""
    methods = per_window["method"].unique(maintain_order=True).to_list()
    all_w = pl.DataFrame({"window_id": sorted(per_window["window_id"].unique().to_list())},
                         schema={"window_id": pl.Int64})
    for method in [m for m in methods if m != "bot"] + (["bot"] if "bot" in methods else []):
        # every method over every window (a window where it did not run adds 0), so the curves compare
        rows = all_w.join(per_window.filter(pl.col("method") == method), on="window_id", how="left")
        cum = rows["total"].fill_null(0.0).cum_sum().to_list()
        if method == "hindsight":  # an order of magnitude above the rest: named, not drawn
            ceiling = f" (hindsight ceiling: {cum[-1]:+.0f} %)"
            continue
        ax.plot(rows["window_id"].to_list(), cum, label=method, linewidth=2.6 if method == "bot" else 1.2,
                color="black" if method == "bot" else None, linestyle=":" if method == "model" else "-")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_title("cumulative test profit after fees per method" + ceiling)
    hold = per_window.filter(pl.col("split") == "holdout")
    if hold.height:
        ax.axvline(int(hold["window_id"].min()) - 0.5, color="grey", linestyle=":", label="holdout from here")
    ax.set_xlabel("window")
    ax.set_ylabel("cumulative test profit after fees (% of one pair's balance)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)


def report_text(ev: Any, cfg: BotConfig, header: str) -> str:
    from bot.selection.evaluate import verdict

    lines = [header, f"K = {cfg.selection.max_pairs} pairs per window, greedy, no token twice; fee_rate "
             f"{cfg.strategy.fee_rate:g}; profits are test-window pr_test (% of balance, after fees) of the train"
             " window's best parameter set"]
    with pl.Config(tbl_rows=60, tbl_cols=20, float_precision=2, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        lines.append(str(ev.summary))
    lines.append("per_pick, se: mean test profit per pick per window and its standard error across windows; "
                 "diff_vs_random, diff_se: the paired difference with random picks (mean of the draws) per window; "
                 "total: summed over every pick; windows_picked: windows where the method picked something (a window"
                 " without a pick is left out of the means)")
    splits = ev.summary["split"].unique(maintain_order=True).to_list()
    for split in splits:
        lines.append(verdict(ev.summary, split, cfg.model.min_skill_se))
    from bot.selection.evaluate import skill_line

    rules = [g["rule"] for g in ev.gates]
    lines.append(f"bot rule per window: new model in {rules.count('model')}, kept model in "
                 f"{rules.count('kept model')}, fallback ({cfg.model.fallback_sort}) in {rules.count('fallback')}; "
                 f"last gate: {ev.gates[-1]['reason'] if ev.gates else '-'}")
    lines.append(skill_line(ev.fallback_skill, cfg.model.min_skill_se, cfg.model.fallback_sort))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.selection.evaluate import evaluate

    got = _check(args, cfg)
    out_dir = got["out"].parent
    t0 = time.perf_counter()
    frame = _dataset(cfg, got, args)
    if not frame.height or frame["window_id"].n_unique() < 2:
        raise UsageError("the dataset holds fewer than two windows with rows: nothing to evaluate")
    from bot.selection.evaluate import check_windows

    try:
        check_windows(frame)
    except ValueError as err:
        raise UsageError(f"{got.get('dataset', 'the dataset')}: {err}") from None
    n_w = frame["window_id"].n_unique()
    if args.min_train_windows >= n_w:
        print(f"note: --min-train-windows {args.min_train_windows} >= the {n_w} windows: no model is trained; "
              "the bot's selection is its fallback rule throughout")
    if got["holdout"] is not None:
        late = int((frame.group_by("window_id").agg(pl.col("end_time").first())["end_time"] > got["holdout"]).sum())
        if late in (0, n_w):
            print(f"note: --holdout-after {got['holdout']:%Y-%m-%d}: {'no' if late == 0 else 'every'} window ends "
                  "after it; the report has one split")
    t1 = time.perf_counter()
    ev = evaluate(frame, cfg, min_train_windows=args.min_train_windows, random_draws=args.draws,
                  holdout_after=got["holdout"], progress=_bar)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, f in (("rows", ev.rows), ("windows", ev.per_window), ("summary", ev.summary)):
        tmp = out_dir / f".{name}.parquet.tmp"
        f.write_parquet(tmp)
        tmp.replace(out_dir / f"{name}.parquet")
    plot_cumulative(ev.per_window, out_dir / "cumulative.png")
    header = (f"bot evaluate: {frame['window_id'].n_unique()} windows, {frame.height} (window, pair) rows; dataset "
              f"{t1 - t0:.0f} s, evaluation {time.perf_counter() - t1:.0f} s")
    text = report_text(ev, cfg, header)
    (out_dir / "report.txt").write_text(text + "\n")
    print(text)
    print(f"written: {out_dir}/ rows.parquet windows.parquet summary.parquet report.txt cumulative.png")
    return 0

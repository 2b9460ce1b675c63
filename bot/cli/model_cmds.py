"""`bot dataset`, `bot train`, `bot score`: the pair-scoring model."""

from __future__ import annotations

import argparse
import asyncio
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
    require_instruments,
    window,
)
from bot.config import BotConfig


def register(sub: Any) -> None:
    p = sub.add_parser("dataset", help="build the model dataset over rolling windows")
    p.add_argument("--pairs", required=True, help="file of pairs, one 'T1 T2' per line")
    p.add_argument("--start", required=True, help="first train window start (UTC ISO date)")
    p.add_argument("--end", required=True, help="end of the last test window")
    p.add_argument("--iters", type=int, help="parameter sets per pair and window (default: research.iters)")
    p.add_argument("--workers", type=int)
    p.add_argument("--assume-instruments", action="store_true",
                   help="derive qty steps from prices when instruments are missing (imported candles)")
    p.add_argument("--out", help="parquet export (default: <data_dir>/dataset.parquet)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new build even if an unfinished one with the same arguments can be resumed")
    p.set_defaults(func=cmd_dataset)

    t = sub.add_parser("train", help="walk-forward validation, then fit and save the model")
    t.add_argument("--dataset", help="a dataset parquet (default: the latest dataset in the database)")
    t.add_argument("--min-train-windows", type=int, default=2)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score a pair-statistics parquet with the saved model")
    s.add_argument("stats", help="parquet with the statistics columns (bot stats output)")
    s.add_argument("--model", help="model file (default: the newest promoted model in model.dir)")
    s.add_argument("--any", action="store_true", help="use the newest model even if it was not promoted")
    s.set_defaults(func=cmd_score)


def cmd_dataset(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.research.dataset import build_dataset, windows

    p = Problems()
    start = p.check(parse_time, args.start, "--start")
    end = p.check(parse_time, args.end, "--end")
    p.check(window, start, end)
    p.check(positive_int, args.iters, "--iters")
    p.check(positive_int, args.workers, "--workers")
    out = p.check(output_file, args.out or Path(cfg.paths.data_dir) / "dataset.parquet", "--out")
    pairs = p.check(pairs_file, args.pairs)  # a malformed file stops here: nothing run
    p.raise_if_any()
    assert pairs is not None and start is not None and end is not None and out is not None
    m = cfg.model
    if not windows(start, end, m.train_days, m.test_days):
        raise UsageError(f"--start {start:%Y-%m-%d %H:%M} .. --end {end:%Y-%m-%d %H:%M}: shorter than one window of "
                         f"model.train_days + model.test_days = {m.train_days} + {m.test_days} days")

    async def run() -> tuple[int, pl.DataFrame]:
        db = await open_database(cfg.database)
        try:
            await require_instruments(db, [t for pair in pairs for t in pair], "--pairs",
                                      assume=args.assume_instruments)
            return await build_dataset(db, cfg, pairs, start, end, iters=args.iters, workers=args.workers,
                                       assume_instruments=args.assume_instruments, resume=not args.fresh,
                                       say=lambda line: print(line, flush=True))
        finally:
            await db.close()

    dataset_id, frame = asyncio.run(run())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.write_parquet(tmp)
    tmp.replace(out)
    print(f"dataset {dataset_id}: {frame.height} rows over {frame['window_id'].n_unique() if frame.height else 0} "
          f"windows -> {out}")
    return 0


def _window_rows(rows: dict[int, int]) -> str:
    counts = list(rows.values())
    if len(counts) <= 10:
        return ", ".join(str(c) for c in counts)
    srt = sorted(counts)
    return f"min {srt[0]}, median {srt[len(srt) // 2]}, max {srt[-1]}"


def print_walk_forward(wf: Any) -> None:
    ids = sorted(wf.rows)
    print(f"walk-forward validation: the models learn {wf.target}; every method is judged by the realised pr_test "
          "(% of balance, after fees) of its picks")
    print(f"K = {wf.k}: up to {wf.k} pairs picked per validation window (selection.max_pairs; greedy by score, no "
          f"token twice, ties in a seeded random order); {len(ids)} validation windows (window ids {ids[0]}..{ids[-1]}), each "
          f"trained on the windows before it; rows per window: {_window_rows(wf.rows)}")
    with pl.Config(tbl_rows=20, tbl_cols=10, float_precision=3, tbl_width_chars=140):
        print(wf.summary)
    print("pick_profit: mean pr_test of a window's K picks, averaged over the windows; diff_vs_random, se: the paired "
          "difference with random picks (mean of many seeded draws) per window, its mean and standard error")
    print(f"sel_value: the realised pr_test summed over the rows a model predicts above selection.thresholds.pred = "
          f"{wf.threshold:g}, over all windows; sel_n: how many rows that is (models only); rmse: against "
          f"{wf.target}; mean: the RMSE baseline only (a constant ranks nothing)")
    print("feature importances: " + ", ".join(f"{n} {v:.1f}" for n, v in wf.importances[:8]))
    print("selection / fallback: what the re-selection job would trade with this model (its thresholds incl. pred,"
          " selection.sort_key) and without one (model.fallback_sort); a window where it picks nothing is left out")
    print(wf.reason)
    print(wf.fallback_skill)


def cmd_train(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.research.model import (
        ModelError,
        fit_catboost,
        latest_model,
        read_dataset_file,
        save_model,
        walk_forward,
        windows_path,
    )

    positive_int(args.min_train_windows, "--min-train-windows")
    if args.dataset:
        frame = read_dataset_file(args.dataset, cfg.model.target)
    else:
        from bot.core.db.pool import open_database
        from bot.research.dataset import load_dataset

        async def get() -> pl.DataFrame:
            db = await open_database(cfg.database)
            try:
                return await load_dataset(db.pool)
            finally:
                await db.close()

        frame = asyncio.run(get())
    from bot.selection.evaluate import GATE_VERSION

    wf = walk_forward(frame, cfg, min_train_windows=args.min_train_windows)
    print_walk_forward(wf)
    model = fit_catboost(frame, cfg)
    summary = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in wf.summary.iter_rows(named=True)}
    meta = {"train_range": [str(frame["train_start"].min()), str(frame["end_time"].max())],
            "rows": frame.height, "windows": int(frame["window_id"].n_unique()), "validation": summary,
            "target": wf.target, "judged_by": "pr_test", "picks_per_window": wf.k,
            "promoted": wf.promoted, "gate": wf.reason, "fallback_skill": wf.fallback_skill, "gate_version": GATE_VERSION,
            "params": cfg.model.model_dump()}
    try:
        previous = latest_model(cfg.model.dir).path.name
    except ModelError:
        previous = None
    path = save_model(model, cfg.model.dir, meta, cfg.model.keep_last, per_window=wf.per_window)
    if wf.promoted:
        note = "promoted: the re-selection job uses it from its next run"
    elif previous:
        note = f"NOT promoted: the re-selection job keeps its previous model {previous}"
    else:
        note = (f"NOT promoted, and there is no promoted model: the re-selection job uses the fallback rule "
                f"(sort by model.fallback_sort = {cfg.model.fallback_sort})")
    print(f"saved {path} ({note})")
    print(f"per-window validation rows: {windows_path(path)}")
    return 0


def cmd_score(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.research.model import (
        BASE_FEATURES,
        check_columns,
        latest_model,
        load_model,
        read_stats_file,
    )

    # the file first: a bad one is exit 2 whatever the model (the columns every model uses), ...
    frame = read_stats_file(args.stats, BASE_FEATURES)
    if args.model and not Path(args.model).is_file():
        raise UsageError(f"--model: no such model file: {args.model}")
    lm = load_model(args.model) if args.model else latest_model(cfg.model.dir, promoted_only=not args.any)
    frame = check_columns(frame, args.stats, lm.features)  # ... then the features this model uses
    pred = lm.predict(frame)
    out = frame.select("coin1", "coin2").with_columns(pl.Series("pred", pred)).sort("pred", descending=True)
    print(f"model {lm.path.name} (created {lm.meta['created_at']}, promoted {lm.meta.get('promoted')})")
    with pl.Config(tbl_rows=30):
        print(out)
    return 0

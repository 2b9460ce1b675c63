"""The research run: load pairs from the database, sweep them in parallel, store everything.

Outputs of one run (selection.md sections 2, 4): a `backtest_runs` row; one
`pair_stats` row per candidate pair (status ok / skipped / failed with the
reason); one `sweep_results` row per (pair, parameter set); one JSON line per
swept trade (parameters | trade | open-time features) appended to the trades log;
optionally the statistics as parquet (the notebook's all_pairs.parquet layout).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bot.analysis.zscore import tf_seconds
from bot.config.model import BotConfig
from bot.core.db import research as repo
from bot.core.db.market import (
    coin_information,
    load_pair_data,
    read_bars,
    read_quotes,
    symbol_of,
    to_utc,
)
from bot.core.exchange.rounding import assumed_qty_step
from bot.research.executor import Task, run_tasks
from bot.research.jsonl import JsonlLog
from bot.research.pair_job import PairInput, PairOutcome, run_pair, stats_frame
from bot.research.params import ParamSet, default_params, sample_params

log = logging.getLogger(__name__)


FEATURE_HISTORY = dt.timedelta(days=180)  # the open-time features' *_180d look-back (selection.md section 3)


class SkipPair(Exception):
    """A pair that cannot run; the message is the recorded reason."""


@dataclass
class SweepReport:
    run_id: int
    outcomes: list[PairOutcome]
    trades_logged: int
    wall_s: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stats(self) -> pl.DataFrame:
        return stats_frame(self.outcomes)

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "skipped": 0, "failed": 0}  # and "untradeable" when there is one
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


async def load_input(db: Any, cfg: BotConfig, t1: str, t2: str, train_start: dt.datetime, valid: dt.datetime,
                     end: dt.datetime, max_wind: int, info: dict[str, Any], assume_instruments: bool,
                     bars_long: pl.DataFrame | None = None, quotes_long: pl.DataFrame | None = None,
                     history: dt.timedelta | None = None) -> PairInput:
    s = cfg.strategy
    metas = []
    for t in (t1, t2):
        meta = info.get(f"{t}_USDT")
        if meta is None and not assume_instruments:
            raise SkipPair(f"no instrument info for {t}")
        metas.append(meta)
    tick_df, agg = await load_pair_data(db, t1, t2, train_start, end, s.tf, max_wind, cfg.data.reference_symbols,
                                        bars_long, quotes_long, half_spread=s.half_spread_bp * 1e-4,
                                        history=history, quiet=True)
    if agg.height == 0 or tick_df.height == 0:
        raise SkipPair(f"no data for {t1}/{t2} in the window (unknown token or no history)")
    is_quote = tick_df[f"{t1}_bid_size"].is_not_null().to_numpy()
    bars_only = not bool(is_quote.any())
    bid_1, ask_1 = tick_df[f"{t1}_bid_price"].to_numpy(), tick_df[f"{t1}_ask_price"].to_numpy()
    bid_2, ask_2 = tick_df[f"{t2}_bid_price"].to_numpy(), tick_df[f"{t2}_ask_price"].to_numpy()
    steps = [m["qty_step"] if m else assumed_qty_step(float(agg[t][0])) for m, t in zip(metas, (t1, t2), strict=True)]
    refs = {r.lower(): agg[r].cast(pl.Float64).to_numpy() for r in cfg.data.reference_symbols if r in agg.columns}
    return PairInput(
        t1, t2, tick_df["ts"].cast(pl.Float64).to_numpy(), np.ascontiguousarray(bid_1), np.ascontiguousarray(ask_1),
        np.ascontiguousarray(bid_2), np.ascontiguousarray(ask_2), agg["ts"].cast(pl.Float64).to_numpy(),
        agg[t1].cast(pl.Float64).to_numpy(), agg[t2].cast(pl.Float64).to_numpy(), train_start.timestamp(),
        valid.timestamp(), end.timestamp(), steps[0], steps[1],
        metas[0]["min_qty"] if metas[0] else None, metas[1]["min_qty"] if metas[1] else None,
        (metas[0]["min_notional"] or 0.0) if metas[0] else 0.0, (metas[1]["min_notional"] or 0.0) if metas[1] else 0.0,
        bars_only, refs, None if bars_only or bool(is_quote.all()) else is_quote,
    )


def _progress(total: int, desc: str = "sweep") -> Any:
    """A progress callback: a tqdm bar on a terminal (stderr is a tty); otherwise one log
    line (INFO) per 10 % of the pairs, with the counts so far and the time left."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="pair", desc=desc, file=sys.stderr)

        def tick(o: PairOutcome) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{o.token_1}/{o.token_2} {o.status}")

        tick.close = bar.close  # type: ignore[attr-defined]
        return tick
    done = [0]
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    marks = sorted({math.ceil(total * k / 10) for k in range(1, 11)})

    def line(o: PairOutcome) -> None:
        done[0] += 1
        counts[o.status] = counts.get(o.status, 0) + 1
        if marks and done[0] == marks[0]:
            marks.pop(0)
            el = time.perf_counter() - t0
            eta = el / done[0] * (total - done[0])
            log.info("%s: %d %% (%d/%d pairs: %s) in %.0f s, about %.0f s left", desc, 100 * done[0] // total,
                     done[0], total, ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), el, eta)

    line.close = lambda: None  # type: ignore[attr-defined]
    return line


_NUMBER = re.compile(r"\d+(\.\d+)?")


def outcome_summary(outcomes: list[PairOutcome], examples: int = 2) -> list[str]:
    """The pairs that did not run, one line per (status, reason) with a count and examples;
    token names and numbers in reasons are folded (a reason repeated for 10,000 pairs is one line)."""
    groups: dict[tuple[str, str], list[PairOutcome]] = {}
    for o in outcomes:
        if o.status == "ok":
            continue
        why = o.reason
        for t in sorted({o.token_1, o.token_2}, key=len, reverse=True):
            why = re.sub(rf"\b{re.escape(t)}\b", "<token>", why)
        groups.setdefault((o.status, _NUMBER.sub("N", why)), []).append(o)
    out = []
    for (status, why), group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        eg = ", ".join(f"{o.token_1}/{o.token_2}" for o in group[:examples])
        first = group[0].reason
        out.append(f"{len(group)} pair{'s' if len(group) > 1 else ''} {status}: "
                   f"{first if len(group) == 1 else why} ({'' if len(group) == 1 else 'e.g. '}{eg})")
    return out


async def run_sweep(
    db: Any,
    cfg: BotConfig,
    pairs: list[tuple[str, str]],
    *,
    iters: int,
    seed: int,
    train_start: dt.datetime,
    valid_time: dt.datetime,
    end_time: dt.datetime,
    workers: int | None = None,
    with_features: bool = True,
    trades_log: str | Path | None = None,
    parquet_path: str | Path | None = None,
    assume_instruments: bool = False,
    param_sets: list[ParamSet] | None = None,
    kind: str = "sweep",
    executor: Any = None,
    progress_desc: str = "sweep",
) -> SweepReport:
    """Sweep every pair (skipping, with a reason, those that cannot run) and store the results."""
    t0 = time.perf_counter()
    pool = getattr(db, "pool", db)
    sets = param_sets if param_sets is not None else sample_params(cfg.research, cfg.strategy, iters, seed)
    default = default_params(cfg.strategy)
    max_wind = max([p.wind for p in sets] + [default.wind])
    run_id = await repo.start_run(pool, kind, {
        "pairs": len(pairs), "iters": len(sets), "seed": seed, "train_start": train_start.isoformat(),
        "valid_time": valid_time.isoformat(), "end_time": end_time.isoformat()})
    try:
        info = (await coin_information(db))["bybit_linear"]
        # every pair's bars (and the reference symbols') in one query
        tokens = sorted({t for pair in pairs for t in pair} | set(cfg.data.reference_symbols))
        # the z windows' warm-up, and the open-time features' 180 days (bounded by what exists)
        history = FEATURE_HISTORY if with_features else None
        warm = max(dt.timedelta(seconds=tf_seconds(cfg.strategy.tf) * max_wind), history or dt.timedelta(0))
        bars_long = await read_bars(db, [symbol_of(t) for t in tokens], cfg.strategy.tf,
                                    to_utc(train_start) - warm, to_utc(end_time))
        # and every pair token's quotes once (each token is in many pairs)
        pair_tokens = sorted({t for pair in pairs for t in pair})
        quotes_long = await read_quotes(db, [symbol_of(t) for t in pair_tokens], to_utc(train_start), to_utc(end_time))
        tasks: list[Task] = []
        skipped: list[PairOutcome] = []
        bars_only = partial = 0
        for t1, t2 in pairs:
            try:
                inp = await load_input(db, cfg, t1, t2, to_utc(train_start), to_utc(valid_time), to_utc(end_time),
                                       max_wind, info, assume_instruments, bars_long, quotes_long, history)
            except SkipPair as why:
                log.debug("skipping %s/%s: %s", t1, t2, why)
                skipped.append(PairOutcome(t1, t2, "skipped", str(why)))
                continue
            bars_only += inp.bars_only
            partial += inp.is_quote is not None
            tasks.append((t1, t2, functools.partial(run_pair, inp, sets, default, cfg.strategy, with_features)))
        if bars_only or partial:  # one line, not one per pair
            log.info("%s: %d of %d pairs without quotes in the window (bars-only mode: bar-close ticks, half spread "
                     "%g bp), %d partly covered by quotes", progress_desc, bars_only, len(tasks),
                     cfg.strategy.half_spread_bp, partial)
        t_load = time.perf_counter() - t0
        progress = _progress(len(tasks), progress_desc)
        try:
            run = executor or run_tasks
            outcomes = run(tasks, workers=workers or cfg.compute.workers, dask_address=cfg.compute.dask_scheduler,
                           progress=progress) if executor is None else run(tasks, progress=progress)
        finally:
            progress.close()  # type: ignore[attr-defined]
        outcomes = outcomes + skipped
        for o in outcomes:
            if o.status != "ok":
                log.debug("%s/%s %s: %s", o.token_1, o.token_2, o.status, o.reason)
        for text in outcome_summary(outcomes):
            log.warning("%s: %s", progress_desc, text)
        logged = 0
        if trades_log is not None:
            jl = JsonlLog(trades_log)
            for o in outcomes:
                logged += jl.append(o.trade_records)
        await repo.write_outcomes(pool, run_id, outcomes)
        report = SweepReport(run_id, outcomes, logged, time.perf_counter() - t0, {"load_s": t_load})
        if parquet_path is not None:
            Path(parquet_path).parent.mkdir(parents=True, exist_ok=True)
            report.stats.write_parquet(parquet_path)
        await repo.finish_run(pool, run_id, "ok")
        return report
    except BaseException as err:
        await repo.finish_run(pool, run_id, "failed", f"{type(err).__name__}: {err}")
        raise

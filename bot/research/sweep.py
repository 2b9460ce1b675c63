"""The research run: load pairs from the database, sweep them in parallel, store everything.

Outputs of one run (selection.md sections 2, 4): a `backtest_runs` row; one
`pair_stats` row per candidate pair (status ok / skipped / failed with the
reason); one `sweep_results` row per (pair, parameter set); one JSON line per
swept trade (parameters | trade | open-time features) appended to the trades log;
optionally the statistics as parquet (the notebook's all_pairs.parquet layout).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from bot.analysis.zscore import tf_seconds
from bot.config.model import BotConfig
from bot.core.db import research as repo
from bot.core.db.market import coin_information, read_bars, read_quotes, symbol_of, to_utc
from bot.research.executor import Task, run_tasks
from bot.research.jsonl import JsonlLog
from bot.research.pair_inputs import (
    PairTask,
    SkipPair,
    TokenRef,
    cache_bytes,
    fill_cache,
    human_bytes,
    new_cache_dir,
    pair_input,
    quotes_array,
)
from bot.research.pair_job import PairInput, PairOutcome, stats_frame
from bot.research.params import ParamSet, default_params, sample_params

log = logging.getLogger(__name__)


FEATURE_HISTORY = dt.timedelta(days=180)  # the open-time features' *_180d look-back (selection.md section 3)


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
    """One pair's PairInput read from the database (`bot backtest`); the frames, when
    given, save the queries. SkipPair when it cannot run."""
    metas = instrument_metas(info, t1, t2, assume_instruments)
    s = cfg.strategy
    warm = max(dt.timedelta(seconds=tf_seconds(s.tf) * max_wind), history or dt.timedelta(0))
    if bars_long is None:
        refs = [r for r in cfg.data.reference_symbols if r not in (t1, t2)]
        bars_long = await read_bars(db, [symbol_of(t) for t in (t1, t2, *refs)], s.tf, train_start - warm, end)
    if quotes_long is None:
        quotes_long = await read_quotes(db, [symbol_of(t1), symbol_of(t2)], train_start, end)
    legs = [quotes_array(quotes_long.filter(pl.col("symbol") == symbol_of(t))) for t in (t1, t2)]
    return pair_input(cfg, t1, t2, train_start, valid, end, max_wind, metas, bars_long, legs[0], legs[1], history)


def instrument_metas(info: dict[str, Any], t1: str, t2: str, assume_instruments: bool
                     ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The two instruments' rows of coin_information; SkipPair when one is missing (unless
    `assume_instruments`: None, the step is then assumed from the price)."""
    metas = []
    for t in (t1, t2):
        meta = info.get(f"{t}_USDT")
        if meta is None and not assume_instruments:
            raise SkipPair(f"no instrument info for {t}")
        metas.append(meta)
    return metas[0], metas[1]


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


def _local_only(address: str) -> bool:
    """True when a DSN or a scheduler address can only be reached from this machine."""
    from urllib.parse import urlsplit

    if "://" not in address:
        return "host=" not in address or any(h in address for h in ("host=localhost", "host=127.", "host=/"))
    host = urlsplit(address).hostname or ""
    return host in ("", "localhost", "::1") or host.startswith("127.")


def worker_seconds(outcomes: list[PairOutcome]) -> dict[str, float]:
    """The pairs' own timings summed over all workers (core-seconds, not wall): building the
    inputs from the quotes, z-scores, backtests, features."""
    out = {"pair_load_core_s": 0.0, "zscore_core_s": 0.0, "backtests_core_s": 0.0, "features_core_s": 0.0}
    for o in outcomes:
        out["pair_load_core_s"] += o.timings.get("load_s", 0.0)
        out["zscore_core_s"] += o.timings.get("zscore_s", 0.0)
        out["backtests_core_s"] += o.timings.get("backtests_s", 0.0)
        out["features_core_s"] += o.timings.get("features_s", 0.0)
    return out


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
    cache_dir: Path | None = None
    try:
        info = (await coin_information(db))["bybit_linear"]
        # every pair's bars (and the reference symbols') in one query
        tokens = sorted({t for pair in pairs for t in pair} | set(cfg.data.reference_symbols))
        # the z windows' warm-up, and the open-time features' 180 days (bounded by what exists)
        history = FEATURE_HISTORY if with_features else None
        warm = max(dt.timedelta(seconds=tf_seconds(cfg.strategy.tf) * max_wind), history or dt.timedelta(0))
        lo, valid, hi = to_utc(train_start), to_utc(valid_time), to_utc(end_time)
        t_read = time.perf_counter()
        bars_long = await read_bars(db, [symbol_of(t) for t in tokens], cfg.strategy.tf, lo - warm, hi)
        timings = {"read_bars_s": time.perf_counter() - t_read}
        by_symbol = bars_long.partition_by("symbol", as_dict=True) if bars_long.height else {}
        ready: list[tuple[str, str, tuple[dict[str, Any] | None, dict[str, Any] | None]]] = []
        skipped: list[PairOutcome] = []
        for t1, t2 in pairs:
            try:
                ready.append((t1, t2, instrument_metas(info, t1, t2, assume_instruments)))
            except SkipPair as why:
                log.debug("skipping %s/%s: %s", t1, t2, why)
                skipped.append(PairOutcome(t1, t2, "skipped", str(why)))
        # each token's quotes read once (pair_inputs: a disk cache for local workers,
        # loader tasks on a Dask cluster); every task carries only its pair's bars
        pair_symbols = sorted({symbol_of(t) for t1, t2, _ in ready for t in (t1, t2)})
        sources: dict[str, Any]
        if executor is None and cfg.compute.dask_scheduler:
            dsn = getattr(db, "dsn", None)
            if not dsn:
                raise ValueError("compute.dask_scheduler: the Dask workers read the quotes from Postgres "
                                 "themselves and need the database's DSN (pass a Database, not a pool)")
            if _local_only(dsn) and not _local_only(cfg.compute.dask_scheduler):
                log.warning("%s: the Dask workers read the quotes through the database DSN, which names this "
                            "machine (localhost or a socket): workers elsewhere will fail to connect (set "
                            "database.dsn to an address they can reach)", progress_desc)
            sources = {sym: TokenRef(sym, lo.timestamp(), hi.timestamp(), dsn) for sym in pair_symbols}
        else:
            cache_dir = new_cache_dir(cfg.compute.cache_dir)
            n_quotes = [0]

            def filled(sym: str, n: int) -> None:
                n_quotes[0] += n

            t_read = time.perf_counter()
            sources = await fill_cache(db, pair_symbols, lo, hi, cache_dir, filled)
            timings["read_quotes_s"] = time.perf_counter() - t_read
            log.info("%s: %d quotes of %d symbols read once into %s (%s on disk)", progress_desc, n_quotes[0],
                     len(pair_symbols), cache_dir, human_bytes(cache_bytes(n_quotes[0])))
        tasks: list[Task] = []
        for t1, t2, metas in ready:
            wanted = {symbol_of(t) for t in (t1, t2, *cfg.data.reference_symbols)}
            parts = tuple(by_symbol[(sym,)] for sym in sorted(wanted) if (sym,) in by_symbol)
            bars = parts or (bars_long.clear(),)
            syms = (symbol_of(t1), symbol_of(t2))
            tasks.append((t1, t2, PairTask(cfg, t1, t2, syms, (sources[syms[0]], sources[syms[1]]), bars,
                                           (lo, valid, hi), max_wind, metas, history, sets, default,
                                           with_features)))
        t_load = time.perf_counter() - t0
        progress = _progress(len(tasks), progress_desc)
        try:
            run = executor or run_tasks
            outcomes = run(tasks, workers=workers or cfg.compute.workers, dask_address=cfg.compute.dask_scheduler,
                           progress=progress) if executor is None else run(tasks, progress=progress)
        finally:
            progress.close()  # type: ignore[attr-defined]
        # pairs that ran, then every skipped pair in the candidates' order (as when inputs were
        # built in the parent): a window without data is found by the worker (ticks 0)
        at = {pair: i for i, pair in enumerate(pairs)}
        early = [o for o in outcomes if o.status == "skipped" and o.ticks == 0]
        outcomes = [o for o in outcomes if not (o.status == "skipped" and o.ticks == 0)] + sorted(
            skipped + early, key=lambda o: at.get((o.token_1, o.token_2), len(at)))
        bars_only = sum(o.bars_only for o in outcomes)
        partial = sum(o.partial_quotes for o in outcomes)
        if bars_only or partial:  # one line, not one per pair
            log.info("%s: %d of %d pairs without quotes in the window (bars-only mode: bar-close ticks, half spread "
                     "%g bp), %d partly covered by quotes", progress_desc, bars_only, len(tasks),
                     cfg.strategy.half_spread_bp, partial)
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
        t_write = time.perf_counter()
        await repo.write_outcomes(pool, run_id, outcomes)
        timings["write_results_s"] = time.perf_counter() - t_write
        report = SweepReport(run_id, outcomes, logged, time.perf_counter() - t0,
                             {"load_s": t_load, **timings, **worker_seconds(outcomes)})
        if parquet_path is not None:
            Path(parquet_path).parent.mkdir(parents=True, exist_ok=True)
            report.stats.write_parquet(parquet_path)
        await repo.finish_run(pool, run_id, "ok")
        return report
    except BaseException as err:
        await repo.finish_run(pool, run_id, "failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)

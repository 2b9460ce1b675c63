"""The re-selection job (selection.md section 6): `bot reselect` and the scheduler's job.

1. Postgres advisory lock (another holder: log and return `skipped`).
2. Candidates from `selection.candidates_file`, else every pair of symbols with bars
   covering the train window.
3. Re-backtest every candidate on the train window [now - train_days, now) with the
   research code (`run_sweep`, in parallel).
4. Score with the newest promoted model. No promoted model at all: the configured
   fallback sort, said loudly in the run record. A model that is there but
   missing its file or corrupt: the run FAILS, nothing changes.
5-6. Thresholds, sort key, reserved tokens of pairs holding exposure
   (bot.core.db.positions.EXPOSED_STATUSES), greedy pick (bot.analysis.pair_selection).
   Guards (bot.selection.guards): stale data is refused before the backtests, too few
   evaluated candidates and an empty selection replacing a non-empty table before the
   commit; a refusal is a failed run with its reason.
7. One transaction: pairs table, selection_runs, selection_candidates; then
   token_pairs.txt atomically; then NOTIFY pairs_changed (after the file, so a
   listener always reads the final file).
8. Any failure before the commit leaves the table and the file as they were and
   records the run as failed (the file too: a refused or failed run does not touch it).
   A file write failure after the commit is loud and repaired by the next committed
   run, or at once by `sync_token_pairs_file` (the table is the truth).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from bot.analysis.pair_selection import Decision, decide
from bot.config.model import BotConfig
from bot.core.db import selection as repo
from bot.core.db.market import (
    first_bar_times,
    newest_bar_close,
    read_instruments,
    symbol_of,
    to_utc,
    token_of,
)
from bot.research.model import LoadedModel, ModelError, load_model
from bot.research.pairs_file import read_pairs
from bot.research.sweep import run_sweep
from bot.selection import guards
from bot.selection.evaluate import GATE_VERSION
from bot.selection.guards import Refusal
from bot.utils.files import atomic_write_text

log = logging.getLogger(__name__)


class ReselectError(RuntimeError):
    """The run failed before its commit; nothing changed. The message is the recorded error."""


@dataclass
class ReselectReport:
    status: str  # ok | skipped | dry-run
    run_id: int | None = None
    decisions: list[Decision] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    file_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def token_pairs_text(pair_rows: list[dict[str, Any]]) -> str:
    """token_pairs.txt: `T1 T2` lines in the pairs table's order (token_1, token_2), so the file
    written after a commit and the one rebuilt from the table are the same bytes."""
    keys = sorted((str(r["token_1"]), str(r["token_2"])) for r in pair_rows)
    return "".join(f"{token_of(a)} {token_of(b)}\n" for a, b in keys)


async def sync_token_pairs_file(conn: Any, path: Path) -> bool:
    """Rewrite token_pairs.txt from the pairs table if it differs; True if rewritten."""
    want = token_pairs_text(await repo.read_pairs(conn))
    try:
        have = path.read_text(encoding="utf-8")
    except OSError:
        have = None
    if have == want:
        return False
    atomic_write_text(path, want)
    log.warning("token_pairs.txt differed from the pairs table: rewritten from the table (%s)", path)
    return True


def find_model(directory: str | Path) -> tuple[LoadedModel | None, str]:
    """(newest promoted model, description), or (None, why) when no model was ever
    promoted. The description says which model the job uses and why: newer models the
    gate did not promote are named with the gate's reason. A model promoted by an
    older gate (metadata without gate_version >= GATE_VERSION) is not used, and said. A promoted model whose file
    is missing or corrupt raises ModelError: the job must fail loudly rather than
    quietly fall back to an older model."""
    d = Path(directory)
    passed: list[str] = []
    for meta in sorted(d.glob("model-*.meta.json"), reverse=True) if d.is_dir() else []:
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelError(f"model metadata unreadable: {meta}: {err}") from None
        if info.get("promoted") and int(info.get("gate_version") or 1) < GATE_VERSION:
            if not passed:
                passed.append(f"model {info.get('model_file', meta.name)} was promoted by an older, weaker gate "
                              f"(before {GATE_VERSION}: judged on its own ranking, no fallback comparison): not "
                              "used; retrain with `bot train`")
            continue
        if info.get("promoted"):
            lm = load_model(d / info.get("model_file", meta.name.replace(".meta.json", ".json")))
            why = f"; newer {passed[0]}" if passed else ""
            return lm, f"{lm.path.name} (sha256 {lm.meta['sha256'][:12]}, promoted: {info.get('gate', '')}){why}"
        if not passed:
            passed.append(f"model {info.get('model_file', meta.name)} not promoted: {info.get('gate', 'no gate recorded')}")
    return None, f"no promoted model in {d}: fallback sort" + (f" ({passed[0]})" if passed else "")


def skill_notes(directory: str | Path) -> dict[str, str]:
    """What the newest trained model's walk-forward said of the fallback rule and of itself
    (for the run record and `bot status`); 'not measured' when no model was ever trained."""
    d = Path(directory)
    for meta in sorted(d.glob("model-*.meta.json"), reverse=True) if d.is_dir() else []:
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return {"gate": str(info.get("gate", "")),
                "fallback_skill": str(info.get("fallback_skill") or "not measured (a model trained before the gate"
                                                                    " measured the fallback rule)")}
    return {"gate": "no model trained", "fallback_skill": "not measured: no model trained (`bot train` measures it)"}


async def _candidates(db: Any, cfg: BotConfig, train_start: dt.datetime) -> list[tuple[str, str]]:
    path = Path(cfg.selection.candidates_file)
    if path.exists():
        return read_pairs(path)
    # symbols whose bars (stored in tf, or finer ones tf bars are built from) reach back to train_start
    firsts = await first_bar_times(db, cfg.strategy.tf)
    ok = sorted(token_of(s) for s, first in firsts.items() if first <= train_start.timestamp())
    return [(a, b) for i, a in enumerate(ok) for b in ok[i + 1:]]


def _pair_row(t1: str, t2: str, params: dict[str, Any], pred: float | None) -> dict[str, Any]:
    return {"token_1": f"{t1}_USDT", "token_2": f"{t2}_USDT", "tf": params["tf"], "wind": params["wind"],
            "spr_method": params["spr_method"], "thresh_in": params["in_"], "thresh_out": params["out_"],
            "open_method": params["open_method"], "close_method": params["close_method"],
            "dist_in": params["dist_in"], "dist_out": params["dist_out"], "params": params, "pred": pred}


async def reselect(db: Any, cfg: BotConfig, *, dry_run: bool = False, now: dt.datetime | None = None,
                   workers: int | None = None, executor: Any = None, hooks: dict[str, Any] | None = None) -> ReselectReport:
    """Run the job once, as of `now` (default: the wall clock; `bot reselect --as-of` passes a past time).

    `hooks` (tests) maps stage names to async callables run there.
    """
    hooks = hooks or {}
    pool = getattr(db, "pool", db)
    now = to_utc(now) if now is not None else dt.datetime.now(dt.UTC)
    file_path = Path(cfg.selection.token_pairs_file)
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        if not await repo.try_lock(conn):
            log.warning("re-selection already running in another process: not starting a second one")
            return ReselectReport("skipped", reason="another re-selection holds the lock")
        try:
            run_id = await repo.start_run(conn, dry_run)
            try:
                report, by_pair, details = await _evaluate(db, conn, cfg, run_id, now, dry_run, workers, executor, hooks)
                if dry_run:
                    await repo.finish_dry_run(conn, run_id, len(report.decisions), len(report.pairs), details)
                    report.timings["total_s"] = time.perf_counter() - t0
                    return report
                t = time.perf_counter()
                await repo.commit_selection(conn, run_id, report.pairs, report.decisions, by_pair, details,
                                            before_commit=hooks.get("before_commit"))
                report.timings["writes_s"] = time.perf_counter() - t
            except BaseException as err:
                msg = str(err) if isinstance(err, Refusal) else f"{type(err).__name__}: {err}"
                try:
                    await repo.fail_run(conn, run_id, msg)
                finally:
                    log.error("re-selection run %s failed, nothing changed: %s", run_id, msg)
                if isinstance(err, Exception):
                    raise ReselectError(msg) from err
                raise
            if "before_file" in hooks:
                await hooks["before_file"]()
            try:
                atomic_write_text(file_path, token_pairs_text(report.pairs))
            except OSError as err:
                report.file_error = f"{file_path}: {err.strerror or err}"
                log.error("pairs table committed but %s could not be written (%s): it will be rewritten "
                          "from the table on the next run", file_path, err)
                await repo.note_run(conn, run_id, "ok", f"token_pairs.txt not written: {report.file_error}")
            # after the file (selection.md section 6, step 7): a listener reads a final token_pairs.txt
            await repo.notify_pairs_changed(conn)
            report.timings["total_s"] = time.perf_counter() - t0
            return report
        finally:
            await repo.unlock(conn)


async def _evaluate(db: Any, conn: Any, cfg: BotConfig, run_id: int, now: dt.datetime, dry_run: bool,
                    workers: int | None, executor: Any, hooks: dict[str, Any]
                    ) -> tuple[ReselectReport, dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """Steps 2-6 and the guards: the report (decisions, pair rows) and what the commit writes."""
    train_start = now - dt.timedelta(days=cfg.selection.train_days)
    candidates = await _candidates(db, cfg, train_start)
    if not candidates:
        raise Refusal(f"refused: no candidate pair ({cfg.selection.candidates_file} is empty, or no two symbols"
                      f" have {cfg.strategy.tf} bars from {train_start.isoformat()})")
    symbols = sorted({symbol_of(t) for pair in candidates for t in pair})
    have = set((await read_instruments(db)).get_column("symbol").to_list())
    if all(symbol_of(a) not in have or symbol_of(b) not in have for a, b in candidates):
        lacking = [s for s in symbols if s not in have]
        shown = ", ".join(lacking[:12]) + (f", ... ({len(lacking) - 12} more)" if len(lacking) > 12 else "")
        raise Refusal(f"refused: no candidate pair has both instruments (no instrument for {shown}): `bot data"
                      " import <instruments-info.json>` (a saved Bybit instruments-info answer) or `bot data"
                      " instruments` (from the venue) fills the instruments table")
    guards.check_freshness(await newest_bar_close(db, symbols, cfg.strategy.tf, now), now,
                           cfg.selection.max_data_age_h, cfg.strategy.tf)
    open_pairs = await repo.open_position_pairs(conn)
    current = {(token_of(r["token_1"]), token_of(r["token_2"])): r for r in await repo.read_pairs(conn)}
    t = time.perf_counter()
    rep = await run_sweep(db, cfg, candidates, iters=cfg.research.iters, seed=cfg.research.seed,
                          train_start=train_start, valid_time=now, end_time=now, workers=workers,
                          with_features=False, kind="reselect", executor=executor)
    t_bt = time.perf_counter() - t
    t_load = rep.timings.get("load_s", 0.0)
    if "after_backtest" in hooks:
        await hooks["after_backtest"]()
    guards.check_coverage([o.status for o in rep.outcomes], cfg.selection.min_evaluated_share)
    t = time.perf_counter()
    ok_rows, thresholds, sort_key, model_desc, model_sha = _score(rep, cfg)
    t_score = time.perf_counter() - t
    rows = []
    for o in rep.outcomes:
        r = ok_rows.get((o.token_1, o.token_2), {"coin1": o.token_1, "coin2": o.token_2})
        r["status"], r["reason"] = o.status, o.reason
        r.setdefault("coverage", o.stats.get("coverage"))
        rows.append(r)
    decisions = decide(rows, open_pairs, thresholds, sort_key, cfg.selection.max_pairs)
    pair_rows = _pair_rows(cfg, decisions, rep.outcomes, ok_rows, current)
    guards.check_not_emptied(len(pair_rows), len(current), cfg.selection.allow_empty)
    details = {"model": model_desc, "model_sha256": model_sha, "train_start": train_start.isoformat(),
               "now": now.isoformat(), "sort_key": sort_key, "thresholds": thresholds,
               "evaluated": sum(o.status == "ok" for o in rep.outcomes), "candidates": len(rep.outcomes),
               **skill_notes(cfg.model.dir)}
    report = ReselectReport("dry-run" if dry_run else "ok", run_id, decisions, pair_rows, model_desc,
                            timings={"load_s": t_load, "backtests_s": t_bt - t_load, "features_s": 0.0,
                                     "scoring_s": t_score,
                                     **{k: v for k, v in rep.timings.items() if k.startswith(("read_", "write_"))
                                        or k.endswith("_core_s")}})
    by_pair = {(str(r["coin1"]), str(r["coin2"])): r for r in rows}
    return report, by_pair, details


def _score(rep: Any, cfg: BotConfig) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, float], str, str,
                                             str | None]:
    """Step 4: stats rows by pair with `pred` (newest promoted model), or the fallback sort."""
    model, model_desc = find_model(cfg.model.dir)
    stats = rep.stats
    ok_rows = {(r["coin1"], r["coin2"]): dict(r) for r in stats.iter_rows(named=True)}
    thresholds = cfg.selection.thresholds.model_dump()
    sort_key = cfg.selection.sort_key
    if model is not None and stats.height:
        preds = model.predict(stats)
        for row, p in zip(ok_rows.values(), preds, strict=True):
            row["pred"] = float(p)
    elif model is None:
        log.warning("re-selection without a promoted model: %s (sort by %s, no pred threshold)",
                    model_desc, cfg.model.fallback_sort)
        thresholds.pop("pred", None)
        sort_key = cfg.model.fallback_sort
    return ok_rows, thresholds, sort_key, model_desc, model.meta["sha256"] if model else None


def _pair_rows(cfg: BotConfig, decisions: list[Decision], outcomes: list[Any],
               ok_rows: dict[tuple[str, str], dict[str, Any]],
               current: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The new pairs table: kept pairs with their current parameters, selected ones with their best set."""
    best = {(o.token_1, o.token_2): o for o in outcomes}
    pair_rows = []
    for d in decisions:
        key = (d.token_1, d.token_2)
        if d.decision == "kept":
            cur = current.get(key)
            pair_rows.append(dict(cur) if cur else _pair_row(*key, _default(cfg), None))
        elif d.decision == "selected":
            o = best[key]
            bid = ok_rows[key].get("best_param_id")
            params = next((s["params"] for s in o.summaries if s["param_id"] == bid), _default(cfg))
            pair_rows.append(_pair_row(*key, params, ok_rows[key].get("pred")))
    return pair_rows


def _default(cfg: BotConfig) -> dict[str, Any]:
    from bot.research.params import default_params

    return default_params(cfg.strategy).as_dict()


def decisions_frame(report: ReselectReport) -> pl.DataFrame:
    return pl.DataFrame([{"token_1": d.token_1, "token_2": d.token_2, "decision": d.decision, "reason": d.reason}
                         for d in report.decisions],
                        schema={"token_1": pl.Utf8, "token_2": pl.Utf8, "decision": pl.Utf8, "reason": pl.Utf8})


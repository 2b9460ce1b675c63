"""APScheduler 3.x jobs of the service (service.md Scheduler), every run recorded in job_runs.

Jobs (UTC crontab lines from config.schedule): re-selection, bar maintenance,
instruments refresh, optional retraining. Each has max_instances=1, coalesce and
a misfire grace time; the wrapper records start, end, status and error, and
swallows nothing silently: a failure is logged and recorded, and the scheduler
lives on.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import polars as pl
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.config.model import BotConfig

log = logging.getLogger(__name__)

JobFn = Callable[[], Awaitable[str | None]]


async def record_run(pool: Any, name: str, fn: JobFn) -> str:
    """Run `fn` and record it in job_runs; returns the final status (never raises)."""
    async with pool.acquire() as conn:
        run_id = await conn.fetchval("INSERT INTO job_runs (job) VALUES ($1) RETURNING id", name)
    status, error = "ok", None
    try:
        note = await fn()
        if note and note.startswith("skipped"):
            status, error = "skipped", note
    except Exception as err:  # recorded, logged, and the scheduler carries on
        status, error = "failed", f"{type(err).__name__}: {err}"
        log.exception("job %s failed", name)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE job_runs SET finished_at = now(), status = $2, error = $3 WHERE id = $1",
                           run_id, status, error)
    return status


_DOW = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(line: str) -> CronTrigger:
    """A UTC CronTrigger from a standard crontab line.

    APScheduler 3 numbers weekdays from Monday = 0, unlike cron (Sunday = 0 or 7), so
    `from_crontab("0 0 * * 1")` would fire on Tuesdays. Numeric weekdays are turned
    into names first (steps like */2 are left alone).
    """
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"not a 5-field crontab line: {line!r}")
    parts = []
    for item in fields[4].split(","):
        base, _, step = item.partition("/")
        base = re.sub(r"\d+", lambda m: _DOW[int(m.group())] if int(m.group()) <= 7 else m.group(), base)
        parts.append(base + (f"/{step}" if step else ""))
    minute, hour, day, month, _ = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=",".join(parts), timezone=dt.UTC)


def job_functions(db: Any, cfg: BotConfig) -> dict[str, tuple[str | None, JobFn]]:
    """name -> (cron line or None when disabled, coroutine function)."""
    from bot.core.db.market import build_bars_from_quotes

    async def reselect_job() -> str | None:
        from bot.selection.reselect import reselect

        rep = await reselect(db, cfg)
        return f"skipped: {rep.reason}" if rep.status == "skipped" else None

    async def bars_job() -> str | None:
        now = dt.datetime.now(dt.UTC)
        for tf in ("5m", "1h"):
            await build_bars_from_quotes(db, tf, now - dt.timedelta(hours=3), now)
        return None

    async def instruments_job() -> str | None:
        # public endpoint: no keys needed, the same in paper and live mode
        from bot.core.backfill import refresh_instruments
        from bot.core.exchange.factory import market_client

        await refresh_instruments(db, market_client(cfg))
        return None

    async def retrain_job() -> str | None:
        from bot.research.dataset import load_dataset
        from bot.research.model import fit_catboost, save_model, walk_forward

        frame = await load_dataset(getattr(db, "pool", db))
        wf = walk_forward(frame, cfg)
        save_model(fit_catboost(frame, cfg), cfg.model.dir, {"promoted": wf.promoted, "gate": wf.reason},
                   cfg.model.keep_last)
        return None

    s = cfg.schedule
    return {
        "reselect": (s.reselect_cron, reselect_job),
        "bars": (s.bars_cron, bars_job),
        "instruments": (s.instruments_cron, instruments_job),
        "retrain": (s.retrain_cron, retrain_job),
    }


def build_scheduler(db: Any, cfg: BotConfig, jobs: dict[str, tuple[str | None, JobFn]] | None = None) -> AsyncIOScheduler:
    sched = AsyncIOScheduler(timezone=dt.UTC)
    pool = getattr(db, "pool", db)
    for name, (cron, fn) in (jobs or job_functions(db, cfg)).items():
        if cron is None:
            continue
        sched.add_job(record_run, cron_trigger(cron), args=(pool, name, fn), id=name,
                      name=name, max_instances=1, coalesce=True, misfire_grace_time=cfg.schedule.misfire_grace_s,
                      replace_existing=True)
    return sched


async def job_table(db: Any, cfg: BotConfig, now: dt.datetime | None = None) -> pl.DataFrame:
    """Each configured job with its cron, next run and last recorded result."""
    now = now or dt.datetime.now(dt.UTC)
    pool = getattr(db, "pool", db)
    rows = []
    async with pool.acquire() as conn:
        for name, (cron, _) in job_functions(db, cfg).items():
            last = await conn.fetchrow("SELECT started_at, finished_at, status, error FROM job_runs WHERE job = $1"
                                       " ORDER BY started_at DESC LIMIT 1", name)
            nxt = cron_trigger(cron).get_next_fire_time(None, now) if cron else None
            rows.append({"job": name, "cron": cron or "(disabled)", "next_run": nxt,
                         "last_start": last["started_at"] if last else None,
                         "last_status": last["status"] if last else None,
                         "last_error": (last["error"] or "")[:60] if last else None})
    return pl.DataFrame(rows, schema={"job": pl.Utf8, "cron": pl.Utf8, "next_run": pl.Datetime("us", "UTC"),
                                      "last_start": pl.Datetime("us", "UTC"), "last_status": pl.Utf8,
                                      "last_error": pl.Utf8})

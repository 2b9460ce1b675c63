"""The scheduler: job options, every run recorded, a failing job never kills it; `bot jobs`."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from bot.config import load
from bot.config.loader import example_path
from bot.core.db.pool import Database
from bot.core.scheduler import build_scheduler, job_table, record_run
from tests.cli.test_cli import run_bot

pytestmark = [pytest.mark.db]


@pytest.mark.asyncio(loop_scope="session")
async def test_jobs_are_configured_from_the_schedule(db: Database) -> None:
    cfg = load(example_path())
    sched = build_scheduler(db, cfg)
    jobs = {j.id: j for j in sched.get_jobs()}
    assert set(jobs) == {"reselect", "bars", "instruments"}  # retrain is off by default
    for j in jobs.values():
        assert j.max_instances == 1 and j.coalesce is True and j.misfire_grace_time == cfg.schedule.misfire_grace_s
    assert str(jobs["reselect"].trigger.timezone) == "UTC"


@pytest.mark.asyncio(loop_scope="session")
async def test_failing_job_is_recorded_and_the_scheduler_lives_on(db: Database) -> None:
    cfg = load(example_path())
    calls: list[str] = []

    async def bad() -> None:
        calls.append("bad")
        raise ValueError("exchange said no")

    async def good() -> None:
        calls.append("good")

    sched = build_scheduler(db, cfg, jobs={"bad": ("* * * * *", bad), "good": ("* * * * *", good)})
    sched.start()
    try:
        now = dt.datetime.now(dt.UTC)
        for job in sched.get_jobs():
            job.modify(next_run_time=now)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if len(calls) >= 2:
                break
        await asyncio.sleep(0.3)
        assert sched.running and sorted(calls) == ["bad", "good"]
    finally:
        sched.shutdown(wait=False)
    async with db.pool.acquire() as conn:
        rows = {r["job"]: r for r in await conn.fetch("SELECT job, status, error, finished_at FROM job_runs")}
    assert rows["bad"]["status"] == "failed" and "exchange said no" in rows["bad"]["error"]
    assert rows["good"]["status"] == "ok" and rows["good"]["finished_at"] is not None


@pytest.mark.asyncio(loop_scope="session")
async def test_job_table_and_cli(db: Database) -> None:
    cfg = load(example_path())

    async def skip() -> str:
        return "skipped: nothing to do"

    assert await record_run(db.pool, "instruments", skip) == "skipped"
    table = await job_table(db, cfg, now=dt.datetime(2026, 11, 25, 10, tzinfo=dt.UTC))
    row = table.filter(table["job"] == "reselect").row(0, named=True)
    assert row["next_run"] == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)  # next Monday 00:00
    assert table.filter(table["job"] == "instruments")["last_status"][0] == "skipped"
    res = run_bot("jobs", env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 0 and "reselect" in res.stdout and "0 0 * * 1" in res.stdout


@pytest.mark.parametrize(("line", "expected"), [
    ("0 0 * * 1", dt.datetime(2026, 11, 30, tzinfo=dt.UTC)),      # Monday, as cron means it
    ("0 0 * * 0", dt.datetime(2026, 11, 29, tzinfo=dt.UTC)),      # Sunday
    ("0 0 * * 7", dt.datetime(2026, 11, 29, tzinfo=dt.UTC)),      # Sunday again
    ("30 6 * * 1-5", dt.datetime(2026, 11, 26, 6, 30, tzinfo=dt.UTC)),
    ("*/5 * * * *", dt.datetime(2026, 11, 25, 10, 5, tzinfo=dt.UTC)),
])
def test_cron_lines_mean_what_cron_means(line: str, expected: dt.datetime) -> None:
    from bot.core.scheduler import cron_trigger

    now = dt.datetime(2026, 11, 25, 10, 1, tzinfo=dt.UTC)  # a Wednesday
    assert cron_trigger(line).get_next_fire_time(None, now) == expected

"""Backfill of klines through the adapter, against the fake: paginated, resumable, idempotent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.backfill import backfill
from bot.core.db.market import read_bars
from bot.core.db.pool import Database
from bot.core.exchange.bybit import BybitExchange, RetryPolicy
from bot.core.exchange.interface import TemporaryError
from tests.cli.test_cli import run_bot
from tests.fakes.bybit import FakeBybit, Market, kline_close

# a fixed "now" inside an hour (so that hour's bar is incomplete), in the past (the fake serves no future bar)
NOW = (time.time() // 3600) * 3600 - 3600 + 1234.5


@pytest.fixture
def fake() -> Iterator[FakeBybit]:
    markets = [Market("KAUSDT", 5.0, "0.1", "0.001"), Market("KBUSDT", 0.5, "1", "0.0001"),
               Market("KCUSDT", 20.0, "0.01", "0.01", listed_ms=int((NOW - 86400) * 1000))]
    with FakeBybit(markets) as f:
        yield f


def client(fake: FakeBybit) -> BybitExchange:
    return BybitExchange(base_url=fake.http_url, retry=RetryPolicy(attempts=3, backoff_s=0.01), rate_per_s=500)


class FailingAfter:
    """The adapter, failing for good after `n` kline requests (an interrupted run)."""

    def __init__(self, inner: BybitExchange, n: int):
        self.inner, self.n = inner, n

    async def klines(self, *args: Any, **kw: Any) -> list[list[str]]:
        if self.n <= 0:
            raise TemporaryError("connection lost")
        self.n -= 1
        return await self.inner.klines(*args, **kw)  # type: ignore[no-any-return]


@pytest.mark.asyncio(loop_scope="session")
async def test_pages_complete_bars_and_exact_values(fake: FakeBybit, db: Database) -> None:
    res = await backfill(db, client(fake), ["KA", "KBUSDT"], days=2, tfs=("1h", "5m"), page=100, now=NOW)
    by = {(r.symbol, r.tf): r for r in res}
    assert by[("KAUSDT", "1h")].fetched == 48 and by[("KAUSDT", "1h")].requests == 1
    assert by[("KAUSDT", "5m")].fetched == 576 and by[("KAUSDT", "5m")].requests == 6  # 100 bars a page
    bars = await read_bars(db, ["KAUSDT"], "1h", 0, NOW + 86400)
    assert bars.height == 48
    assert bars["ts"].max() == (NOW // 3600) * 3600 - 3600  # the forming bar is not stored
    t = float(bars["ts"][10])
    assert bars["close"][10] == pytest.approx(kline_close("KAUSDT", 5.0, int(t * 1000)), rel=1e-6)
    # the same run again: nothing to fetch, nothing written
    before = sum(fake.requests.values())
    again = await backfill(db, client(fake), ["KA", "KBUSDT"], days=2, tfs=("1h", "5m"), page=100, now=NOW)
    assert sum(r.requests for r in again) == 0 and sum(fake.requests.values()) == before


@pytest.mark.asyncio(loop_scope="session")
async def test_interrupted_run_resumes_where_it_stopped(fake: FakeBybit, db: Database) -> None:
    # 3 days of 5m = 864 bars in pages of 50; KC was listed 1 day ago (inside bar 576), so it has
    # bars 577..863 (287); pages 0-10 are empty, page 11 holds 577..599, page 12 holds 600..649
    with pytest.raises(TemporaryError):
        await backfill(db, FailingAfter(client(fake), 13), ["KCUSDT"], days=3, tfs=("5m",), page=50, now=NOW)
    kept = await read_bars(db, ["KCUSDT"], "5m", 0, NOW + 86400)
    assert kept.height == 23 + 50  # what was fetched before the failure is stored
    res = await backfill(db, client(fake), ["KCUSDT"], days=3, tfs=("5m",), page=50, now=NOW)
    assert res[0].requests == 5  # resumes after bar 649: 650..863 is 214 bars, 5 pages
    full = await read_bars(db, ["KCUSDT"], "5m", 0, NOW + 86400)
    assert full.height == 287 and full["ts"].is_sorted() and full["ts"].n_unique() == 287
    assert (full["ts"].diff().drop_nulls() == 300).all()  # no hole


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_arguments(fake: FakeBybit, db: Database) -> None:
    with pytest.raises(ValueError, match="days"):
        await backfill(db, client(fake), ["KAUSDT"], days=0)
    with pytest.raises(ValueError, match="page"):
        await backfill(db, client(fake), ["KAUSDT"], days=1, page=1001)


def test_cli_instruments_and_backfill(fake: FakeBybit, db: Database, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"exchange:\n  base_url: {fake.http_url}\n  rate_limit_per_s: 100\n")
    env = {"BOT_DATABASE_DSN": db.dsn}
    res = run_bot("--config", str(cfg), "data", "instruments", env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "instruments: 3 upserted" in res.stdout
    listed = NOW - 86400
    expected = int((time.time() // 3600 * 3600 - 3600 - (listed // 3600 * 3600 + 3600)) // 3600) + 1
    res = run_bot("--config", str(cfg), "data", "backfill", "--days", "1", "--symbols", "KC", "--tf", "1h",
                  env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    # complete bars from the first hour after the listing to the last complete hour
    assert f"KCUSDT  1h: {expected:>7,} bars in   1 requests" in res.stdout, res.stdout
    res = run_bot("--config", str(cfg), "data", "backfill", "--days", "1", "--tf", "7m", env=env, timeout=60)
    assert res.returncode == 2 and "7m" in res.stderr
    down = tmp_path / "down.yaml"
    down.write_text("exchange:\n  base_url: http://127.0.0.1:9\n  max_attempts: 2\n")
    res = run_bot("--config", str(down), "data", "instruments", env=env, timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "gave up after 2 attempts" in res.stderr

"""Backfill of klines through the adapter, against the fake: paginated, fills every missing range,
resumable, idempotent."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.backfill import backfill
from bot.core.db.market import missing_bar_ranges, read_bars
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
    # 3 days of 5m = bars 0..863 in pages of 50; KC was listed 1 day ago (inside bar 576), so it has
    # bars 577..863 (287). Nothing stored: the window is walked newest first, 814..863, 764..813, ...
    with pytest.raises(TemporaryError):
        await backfill(db, FailingAfter(client(fake), 3), ["KCUSDT"], days=3, tfs=("5m",), page=50, now=NOW)
    kept = await read_bars(db, ["KCUSDT"], "5m", 0, NOW + 86400)
    assert kept.height == 150  # the 3 pages fetched before the failure are stored (714..863)
    res = await backfill(db, client(fake), ["KCUSDT"], days=3, tfs=("5m",), page=50, now=NOW)
    # resumes before bar 714: 664..713, 614..663, 564..613 (holds 577..613), 514..563 empty: listed, stop
    assert res[0].requests == 4 and res[0].fetched == 287 - 150
    full = await read_bars(db, ["KCUSDT"], "5m", 0, NOW + 86400)
    assert full.height == 287 and full["ts"].is_sorted() and full["ts"].n_unique() == 287
    assert (full["ts"].diff().drop_nulls() == 300).all()  # no hole
    # the venue's "nothing before the listing" is not remembered: one page (527..576) is asked again
    again = await backfill(db, client(fake), ["KCUSDT"], days=3, tfs=("5m",), page=50, now=NOW)
    assert again[0].requests == 1 and again[0].fetched == 0


# a fixed "now" in the past, on an hour: 2025-02-15 00:00 UTC
FEB15 = dt.datetime(2025, 2, 15, tzinfo=dt.UTC).timestamp()
H = 3600


@pytest.fixture
def old_fake() -> Iterator[FakeBybit]:
    with FakeBybit([Market("KDUSDT", 3.0, "0.1", "0.001"), Market("KEUSDT", 7.0, "0.1", "0.001"),
                    Market("KFUSDT", 1.0, "1", "0.0001")]) as f:
        yield f


async def delete_bars(db: Database, symbol: str, lo: float, hi: float) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM bars WHERE symbol = $1 AND tf = '1h' AND open_time >= $2 AND open_time < $3",
                           symbol, dt.datetime.fromtimestamp(lo, dt.UTC), dt.datetime.fromtimestamp(hi, dt.UTC))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_longer_window_fetches_before_the_first_stored_bar(old_fake: FakeBybit, db: Database) -> None:
    jan1 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
    first = await backfill(db, client(old_fake), ["KD"], days=45, tfs=("1h",), now=FEB15)
    assert first[0].fetched == 45 * 24 and first[0].requests == 2  # 2025-01-01 .. 02-14 23:00
    assert first[0].first == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    # 60 days back from 02-15 is 2024-12-17: 12-17 .. 12-31 (15 days) is missing before the stored bars
    res = await backfill(db, client(old_fake), ["KD"], days=60, tfs=("1h",), now=FEB15)
    assert res[0].requests == 1 and res[0].fetched == 15 * 24 and res[0].written == 15 * 24
    assert res[0].first == dt.datetime(2024, 12, 17, tzinfo=dt.UTC)
    assert res[0].last == dt.datetime(2024, 12, 31, 23, tzinfo=dt.UTC)
    bars = await read_bars(db, ["KDUSDT"], "1h", 0, FEB15)
    assert bars.height == 60 * 24 and bars["ts"][0] == jan1 - 15 * 86400 and bars["ts"][-1] == FEB15 - H
    assert (bars["ts"].diff().drop_nulls() == H).all()
    t = float(bars["ts"][5])
    assert bars["close"][5] == pytest.approx(kline_close("KDUSDT", 3.0, int(t * 1000)), rel=1e-6)
    before = sum(old_fake.requests.values())
    again = await backfill(db, client(old_fake), ["KD"], days=60, tfs=("1h",), now=FEB15)
    assert again[0].requests == 0 and sum(old_fake.requests.values()) == before


@pytest.mark.asyncio(loop_scope="session")
async def test_holes_and_both_ends_are_filled(old_fake: FakeBybit, db: Database) -> None:
    start = FEB15 - 10 * 86400  # bars 0..239
    await backfill(db, client(old_fake), ["KE", "KF"], days=10, tfs=("1h",), now=FEB15)
    await delete_bars(db, "KEUSDT", start, start + 30 * H)  # the head: bars 0..29
    await delete_bars(db, "KEUSDT", start + 100 * H, start + 150 * H)  # a hole: 100..149
    await delete_bars(db, "KEUSDT", start + 220 * H, FEB15)  # the tail: 220..239
    await delete_bars(db, "KFUSDT", start + 7 * H, start + 8 * H)  # one bar
    missing = await missing_bar_ranges(db, ["KEUSDT", "KFUSDT", "KGUSDT"], "1h", start, FEB15)
    assert missing == {
        "KEUSDT": [(start, start + 30 * H), (start + 100 * H, start + 150 * H), (start + 220 * H, FEB15)],
        "KFUSDT": [(start + 7 * H, start + 8 * H)],
        "KGUSDT": [(start, FEB15)],  # nothing stored
    }
    res = await backfill(db, client(old_fake), ["KE", "KF"], days=10, tfs=("1h",), page=40, now=FEB15)
    by = {r.symbol: r for r in res}
    # head 0..29 (1 page), hole 100..139 and 140..149 (2 pages), tail 220..239 (1 page)
    assert by["KEUSDT"].requests == 4 and by["KEUSDT"].fetched == 30 + 50 + 20 == by["KEUSDT"].written
    assert by["KFUSDT"].requests == 1 and by["KFUSDT"].fetched == 1
    bars = await read_bars(db, ["KEUSDT", "KFUSDT"], "1h", start, FEB15)
    for sym, price in (("KEUSDT", 7.0), ("KFUSDT", 1.0)):
        one = bars.filter(bars["symbol"] == sym)
        assert one.height == 240 and (one["ts"].diff().drop_nulls() == H).all()
        for i in (0, 29, 100, 149, 239):
            assert one["close"][i] == pytest.approx(kline_close(sym, price, int(one["ts"][i] * 1000)), rel=1e-6)
    assert await missing_bar_ranges(db, ["KEUSDT", "KFUSDT"], "1h", start, FEB15) == {"KEUSDT": [], "KFUSDT": []}
    before = sum(old_fake.requests.values())
    again = await backfill(db, client(old_fake), ["KE", "KF"], days=10, tfs=("1h",), page=40, now=FEB15)
    assert sum(r.requests for r in again) == 0 and sum(old_fake.requests.values()) == before


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
    # the window is [now - 1 day, now): once the clock passed an hour since the fake listed the
    # symbol (NOW, at import; a long suite), the window starts after the first listed hour
    now = time.time()
    first = max(listed // 3600 * 3600 + 3600, (now - 86400) // 3600 * 3600)
    expected = int((now // 3600 * 3600 - 3600 - first) // 3600) + 1
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

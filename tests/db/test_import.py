"""`bot data import`: real candles and quotes from ../shared/data, bad files rejected whole."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bot.core.db.market import read_bars, read_quotes
from bot.core.db.pool import Database
from bot.core.importer import ImportFileError, import_files, parse_file, symbol_from_pair

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

FUT_1H = "ohlcv/binance_usdm_futures_1h_40pairs.parquet"
BOOK = "ticks/binance_usdm_bookTicker_BTCUSDT_ETHUSDT_2024-07-18_19_2024-08-08.parquet"


async def test_symbols() -> None:
    assert symbol_from_pair("BTC/USDT:USDT") == "BTCUSDT"
    assert symbol_from_pair("1000PEPE/USDT") == "1000PEPEUSDT"
    assert symbol_from_pair("ETHUSDT") == "ETHUSDT"


async def _count(db: Database, table: str) -> int:
    async with db.pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


@pytest.mark.realdata
async def test_real_candles_import_idempotent(db: Database, shared_data: Path) -> None:
    path = shared_data / FUT_1H
    written = await import_files(db, [path])
    pf, n = written[0]
    src = pl.read_parquet(path)
    assert pf.tf == "1h" and n == src.height
    assert await _count(db, "bars") == src.height
    again = await import_files(db, [path])  # re-import: nothing added or rewritten
    assert again[0][1] == 0 and await _count(db, "bars") == src.height
    btc = await read_bars(db, ["BTCUSDT"], "1h", "2025-05-01", "2025-05-02")
    ref = src.filter((pl.col("pair") == "BTC/USDT:USDT") & (pl.col("date").dt.date() == pl.date(2025, 5, 1)))
    assert btc.height == 24 and btc["close"].to_list() == ref.sort("date")["close"].to_list()


@pytest.mark.realdata
async def test_real_book_ticker_as_quotes(db: Database, shared_data: Path) -> None:
    path = shared_data / BOOK
    pf = parse_file(path)
    assert pf.kind == "quotes" and set(pf.frame["symbol"].unique()) == {"BTCUSDT", "ETHUSDT"}
    written = await import_files(db, [path])
    assert written[0][1] == pf.frame.height
    q = await read_quotes(db, ["BTCUSDT", "ETHUSDT"], "2024-07-18", "2024-08-10")
    assert q.height == pf.frame.height
    assert (q["ask_price"] >= q["bid_price"]).all()
    assert (await import_files(db, [path]))[0][1] == 0  # idempotent


@pytest.mark.parametrize(("content", "message", "row"), [
    ("date,open,high,low,close,volume\n2025-01-01T00:00:00Z,1,2,0.5,1.5,10\n2025-01-01T01:00:00Z,1,2,0.5,-1,10\n",
     "price must be positive", 2),
    ("date,open,high,low,close,volume\n2025-01-01T01:00:00Z,1,2,0.5,1.5,10\n2025-01-01T00:00:00Z,1,2,0.5,1.5,10\n",
     "increase", 2),
    ("date,open,high,low,close,volume\n2025-01-01T00:00:00Z,1,2,0.5,1.5,10\n2025-01-01T01:00:00Z,1,2,0.5,abc,10\n",
     "not a number", 2),
    ("date,open,high,low\n2025-01-01T00:00:00Z,1,2,0.5\n", "neither candles", None),
    ("date,open,high,low,close\nyesterday,1,2,0.5,1.5\n", "not a timestamp", 1),
])
async def test_malformed_file_is_rejected_whole(db: Database, tmp_path: Path, content: str, message: str,
                                                row: int | None) -> None:
    good = tmp_path / "AAA_USDT-1h.csv"
    good.write_text("date,open,high,low,close,volume\n2025-01-01T00:00:00Z,1,2,0.5,1.5,10\n"
                    "2025-01-01T01:00:00Z,1,2,0.5,1.5,10\n")
    bad = tmp_path / "ZZZ_USDT-1h.csv"
    bad.write_text(content)
    before = await _count(db, "bars")
    with pytest.raises(ImportFileError, match=message) as err:
        await import_files(db, [good, bad], tf="1h")
    assert str(bad) in str(err.value)
    if row is not None:
        assert f"row {row}" in str(err.value)
    assert await _count(db, "bars") == before  # nothing written, not even the good file

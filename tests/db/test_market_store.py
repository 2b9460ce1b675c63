"""Market-data store on a real PostgreSQL: quotes, bars, instruments, load_data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from bot.core.db.market import (
    append_quote_rows,
    build_bars_from_quotes,
    coin_information,
    copy_bars,
    copy_quotes,
    drop_old_quote_partitions,
    read_bars,
    read_quotes,
    upsert_instruments,
)
from bot.core.db.pool import Database
from bot.core.demo_market import bars_from_quotes, generate
from bot.utils.pair_trading import create_zscore_df, load_data

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=8, days=2.0, quote_interval_s=60.0, seed=3)


async def test_quotes_roundtrip_and_idempotent_import(db: Database, market) -> None:
    q = market.quotes
    assert await copy_quotes(db, q) == q.height
    back = await read_quotes(db, q["symbol"].unique().to_list(), market.start, market.end)
    assert back.height == q.height
    a = q.sort(["ts", "symbol"])
    b = back.sort(["ts", "symbol"])
    for c in ("bid_price", "ask_price", "bid_size", "ask_size"):
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy())
    np.testing.assert_array_equal(a["ts"].to_numpy(), b["ts"].to_numpy())
    # duplicates: an error on the plain path (and nothing of that day written twice) ...
    with pytest.raises(Exception, match="duplicate"):
        await copy_quotes(db, q.head(10))
    # ... and skipped on the idempotent path
    assert await copy_quotes(db, q, ignore_duplicates=True) == 0
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM quotes") == q.height
        parts = await conn.fetchval("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
                                    " WHERE p.relname = 'quotes'")
        assert parts == 2


async def test_sql_bar_builder_equals_polars_bars(db: Database, market) -> None:
    n = await build_bars_from_quotes(db, "1h", market.start, market.end)
    assert n == 48 * 8
    assert await build_bars_from_quotes(db, "1h", market.start, market.end) == n  # idempotent upsert
    sql_bars = await read_bars(db, market.quotes["symbol"].unique().to_list(), "1h", market.start, market.end)
    ref = bars_from_quotes(market.quotes, 3600).sort(["open_time", "symbol"])
    assert sql_bars.height == ref.height
    for c in ("open", "high", "low", "close"):
        np.testing.assert_allclose(sql_bars[c].to_numpy(), ref[c].to_numpy(), rtol=1e-14)
    # a bar is never built from part of its quotes
    part = await build_bars_from_quotes(db, "4h", market.start, market.start + dt.timedelta(hours=6))
    assert part == 8  # only [00:00, 04:00) is complete


async def test_bars_upsert_is_idempotent(db: Database, market) -> None:
    bars = bars_from_quotes(market.quotes, 300)
    assert await copy_bars(db, bars, "5m", source="test") == bars.height
    assert await copy_bars(db, bars, "5m", source="test") == 0  # unchanged rows are not rewritten
    changed = bars.with_columns(pl.when(pl.col("symbol") == "BTCUSDT").then(pl.col("close") * 1.01)
                                .otherwise(pl.col("close")).alias("close"))
    assert await copy_bars(db, changed, "5m", source="test") == bars.filter(pl.col("symbol") == "BTCUSDT").height
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM bars WHERE tf = '5m'") == bars.height


async def test_coin_information_mapping(db: Database, market) -> None:
    await upsert_instruments(db, market.instruments)
    info = await coin_information(db)
    assert set(info) == {"bybit_linear"}
    btc = info["bybit_linear"]["BTC_USDT"]
    assert btc["qty_step"] == 0.001 and btc["qty_step_str"] == "0.001"
    assert isinstance(btc["price_scale"], int) and btc["min_notional"] == 5.0
    assert len(info["bybit_linear"]) == 8


async def test_load_data_layout_and_warm_up(db: Database, market) -> None:
    g = market.groups[0]
    t1, t2 = g.leader, g.members[0]
    start = market.start + dt.timedelta(hours=10)
    end = market.end
    tick_df, agg_df = await load_data(t1, t2, start, end, "1h", 6, db)
    assert tick_df.columns[:2] == ["time", "ts"]
    for tok in (t1, t2):
        for suffix in ("", "_size", "_bid_price", "_ask_price", "_bid_size", "_ask_size"):
            assert f"{tok}{suffix}" in tick_df.columns
    assert tick_df["time"].dtype == pl.Datetime("us", "UTC") and tick_df["ts"].dtype == pl.Int64
    assert tick_df["ts"].min() == int(start.timestamp())
    assert tick_df["ts"].max() < int(end.timestamp())
    assert tick_df["ts"].is_sorted() and tick_df["ts"].n_unique() == tick_df.height
    mid = (tick_df[f"{t1}_bid_price"] + tick_df[f"{t1}_ask_price"]) / 2
    np.testing.assert_allclose(tick_df[t1].to_numpy(), mid.to_numpy())
    # 6 bars of warm-up before start, bar closes per token, reference symbols present
    assert agg_df["ts"].min() == int(start.timestamp()) - 6 * 3600
    assert {"BTC", "ETH", "SOL", t1, t2} <= set(agg_df.columns)
    z = create_zscore_df(t1, t2, tick_df, agg_df, "1h", [6], int(start.timestamp()))
    assert z["z_score_6_1h"].null_count() == 0  # warm-up bars are there from the first tick


async def test_retention_drops_old_partitions(db: Database, market) -> None:
    dropped = await drop_old_quote_partitions(db, 1, market.end)
    assert dropped == [f"quotes_{market.start:%Y%m%d}"]
    async with db.pool.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM quotes")
    assert left == market.quotes.filter(pl.col("ts") >= market.start.timestamp() + 86400).height


async def test_db_manager_for_notebooks(db: Database, market) -> None:
    from urllib.parse import parse_qs, urlsplit

    from bot.core.db.postgres_manager import DBManager

    parts = urlsplit(db.dsn)
    host = parts.hostname or parse_qs(parts.query)["host"][0]  # the embedded server: a socket directory
    mgr = DBManager({"host": host, "port": parts.port or 5432, "user": parts.username or "postgres",
                     "password": "not-shown", "dbname": parts.path.lstrip("/")})
    assert "not-shown" not in repr(mgr)
    try:
        inst = await mgr.get_table("instruments")
        assert isinstance(inst, pl.DataFrame) and inst.height == 8
        assert "BTC_USDT" in (await mgr.coin_information())["bybit_linear"]
        with pytest.raises(ValueError, match="identifier"):
            await mgr.get_table("pairs; DROP TABLE pairs")
    finally:
        await mgr.close()


async def test_copy_of_many_symbols_with_one_row_each(db: Database) -> None:
    """The recorder's batch shape: one row for each of many symbols of different name lengths."""
    rng = np.random.default_rng(3)
    syms = [f"{'X' * (1 + i % 9)}{i}USDT" for i in range(60)]
    t0 = 1_900_000_000.0
    frame = pl.DataFrame({"symbol": syms, "ts": [t0 + 0.1 * (i % 3) for i in range(60)],
                          "bid_price": rng.uniform(1, 2, 60), "ask_price": rng.uniform(2, 3, 60),
                          "bid_size": rng.uniform(0, 9, 60), "ask_size": rng.uniform(0, 9, 60)})
    assert await copy_quotes(db, frame) == 60
    back = await read_quotes(db, syms, t0 - 1, t0 + 1)
    got = back.sort("symbol").select("symbol", "bid_price", "ask_price", "bid_size", "ask_size")
    want = frame.sort("symbol").select("symbol", "bid_price", "ask_price", "bid_size", "ask_size")
    assert got.equals(want)  # bit-exact floats, every symbol intact
    assert np.allclose(back.sort("symbol")["ts"].to_numpy(), frame.sort("symbol")["ts"].to_numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="empty text"):
        await copy_quotes(db, frame.with_columns(pl.lit("").alias("symbol")).head(1))


async def test_append_rows_and_its_idempotent_retry(db: Database) -> None:
    import asyncpg

    rows = [(f"AP{i}USDT", 1_900_100_000.0 + 0.5 * i, 1.0 + i, 1.5 + i, 2.0, 3.0) for i in range(5)]
    assert await append_quote_rows(db, rows) == 5
    with pytest.raises(asyncpg.UniqueViolationError):  # a plain append never overwrites or duplicates
        await append_quote_rows(db, rows[:2])
    await append_quote_rows(db, rows + [("AP9USDT", 1_900_100_010.0, 9.0, 9.5, 1.0, 1.0)], idempotent=True)
    back = await read_quotes(db, [r[0] for r in rows] + ["AP9USDT"], 1_900_099_999, 1_900_100_100)
    assert back.height == 6 and back.sort("symbol")["bid_price"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]

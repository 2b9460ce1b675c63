"""The notebook's DBManager on a real PostgreSQL: every call works as the first call on
a fresh manager, the README's notebook cell runs in its order, and get_table returns
typed frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import polars as pl
import pytest
import pytest_asyncio

from bot.core.db import market
from bot.core.db import postgres_manager as pm
from bot.core.db.market import copy_bars, copy_quotes, load_pair_data, upsert_instruments
from bot.core.db.pool import Database
from bot.core.db.postgres_manager import DBManager
from bot.core.demo_market import DemoMarket, bars_from_quotes, generate
from bot.utils.pair_trading import create_zscore_df, load_data

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

CREATED = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def params_of(dsn: str) -> dict[str, Any]:
    parts = urlsplit(dsn)
    host = parts.hostname or parse_qs(parts.query)["host"][0]  # the embedded server: a socket directory
    return {"host": host, "port": parts.port or 5432, "user": parts.username or "postgres",
            "password": parts.password or "", "dbname": parts.path.lstrip("/")}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def market_db(db: Database) -> tuple[Database, DemoMarket]:
    """Instruments, quotes and 1h bars of a small demo market, a pair, an order and a
    table of the remaining column types."""
    m = generate(n_symbols=8, days=3.0, quote_interval_s=300.0, seed=5)
    await upsert_instruments(db, m.instruments)
    await copy_quotes(db, m.quotes)
    await copy_bars(db, bars_from_quotes(m.quotes, 3600), "1h", source="demo")
    g = m.groups[0]
    async with db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method,"
            " close_method, params, pred, run_id, created_at)"
            " VALUES ($1, $2, '1h', 24, 'lr', 2.0, 0.5, 'direct', 'direct', $3::jsonb, 0.25, 7, $4)",
            g.leader, g.members[0], json.dumps({"sl_std": 5.0, "note": "x"}), CREATED)
        await conn.execute(
            "INSERT INTO orders (order_link_id, symbol, side, qty, price, reduce_only, status, error_code)"
            " VALUES ('a1', 'BTCUSDT', 'Buy', 0.123, NULL, true, 'filled', NULL),"
            " ('a2', 'BTCUSDT', 'Sell', 10, 101.5, false, 'rejected', 110007)")
        await conn.execute(
            "CREATE TABLE nb_types (d date, t timestamp, tz timestamptz, n numeric(10, 4), f4 real,"
            " arr integer[], iv interval, s text)")
        await conn.execute(
            "INSERT INTO nb_types VALUES ('2025-03-04', '2025-03-04 05:06:07', 'infinity', 1.5, 0.5, '{1,2}',"
            " '1 hour', ''), (NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL)")
    return db, m


async def test_the_notebook_cell_in_its_order(market_db: tuple[Database, DemoMarket]) -> None:
    db, m = market_db
    g = m.groups[0]
    t1, t2 = g.leader, g.members[0]
    start, end = m.start + dt.timedelta(days=1), m.end

    mgr = DBManager(params_of(db.dsn))
    try:
        coins = await mgr.coin_information()
        assert f"{t1}_USDT" in coins["bybit_linear"] and coins["bybit_linear"][f"{t1}_USDT"]["qty_step"] > 0
        tick_df, agg_df = await load_data(t1, t2, start, end, "1h", 24, mgr)
        df = create_zscore_df(t1, t2, tick_df, agg_df, "1h", [24], start, median_length=6, spr_method="lr")
        pairs = await mgr.get_table("pairs")
    finally:
        await mgr.close()
    want_tick, want_agg = await load_pair_data(db, t1, t2, start, end, "1h", 24)
    assert tick_df.equals(want_tick) and agg_df.equals(want_agg)
    assert tick_df.height == 2 * 24 * 12  # two days of 5-minute quotes
    z = df.get_column("z_score_24_1h").drop_nulls().to_numpy()
    assert z.size > 0.9 * df.height and np.isfinite(z).all()
    assert pairs.select("token_1", "token_2", "created_at").row(0) == (t1, t2, CREATED)
    assert mgr.pool is None  # closed


@pytest.mark.parametrize("first", ["load_data", "get_table", "coin_information", "read_bars", "read_quotes"])
async def test_any_call_first_on_a_fresh_manager(first: str, market_db: tuple[Database, DemoMarket],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db, m = market_db
    pools: list[Any] = []
    real = pm.create_pool

    async def counting(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.05)  # widen the race of concurrent first calls
        pools.append(await real(*args, **kw))
        return pools[-1]

    monkeypatch.setattr(pm, "create_pool", counting)
    g = m.groups[0]
    syms = [f"{t}USDT" for t in (g.leader, *g.members)]
    mgr = DBManager(params_of(db.dsn))
    assert mgr.pool is None
    try:
        if first == "load_data":
            tick_df, agg_df = await load_data(g.leader, g.members[0], m.start + dt.timedelta(days=1), m.end,
                                              "1h", 24, mgr)
            assert tick_df.height > 0 and agg_df.height > 0
        elif first == "get_table":
            assert (await mgr.get_table("instruments")).height == 8
        elif first == "coin_information":
            assert len((await mgr.coin_information())["bybit_linear"]) == 8
        elif first == "read_bars":  # a repository function handed the manager itself
            assert (await market.read_bars(mgr, syms, "1h", m.start, m.end)).height == 72 * len(syms)
        else:  # one connection per symbol, acquired concurrently: still one pool
            q = await market.read_quotes(mgr, syms, m.start, m.end)
            assert q.height == m.quotes.filter(pl.col("symbol").is_in(syms)).height
        assert len(pools) == 1 and mgr.pool is pools[0]
    finally:
        await mgr.close()


async def test_a_new_event_loop_gets_a_new_pool(market_db: tuple[Database, DemoMarket]) -> None:
    """A script calling asyncio.run once per call: each run gets a pool of its own loop."""
    db, _ = market_db
    mgr = DBManager(params_of(db.dsn))

    async def one() -> int:
        return int((await mgr.get_table("instruments")).height)

    assert await asyncio.to_thread(asyncio.run, one()) == 8
    first = mgr.pool
    assert await asyncio.to_thread(asyncio.run, one()) == 8
    assert mgr.pool is not first
    mgr.pool = None  # its loop is gone with the thread's asyncio.run


async def test_get_table_types(market_db: tuple[Database, DemoMarket]) -> None:
    db, m = market_db
    mgr = DBManager(params_of(db.dsn))
    try:
        inst = await mgr.get_table("instruments")
        exact = await mgr.get_table("instruments", numeric="decimal")
        pairs = await mgr.get_table("pairs")
        orders = await mgr.get_table("orders")
        trades = await mgr.get_table("trades")
        other = await mgr.get_table("nb_types", numeric="decimal")
        as_pandas = await mgr.get_table("pairs", "pandas")
        with pytest.raises(ValueError, match="does not exist"):
            await mgr.get_table("no_such_table")
        with pytest.raises(ValueError, match="numeric"):
            await mgr.get_table("pairs", numeric="text")
    finally:
        await mgr.close()

    utc = pl.Datetime("us", "UTC")
    assert inst.schema["updated_at"] == utc and inst.schema["price_scale"] == pl.Int32
    assert inst.schema["qty_step"] == pl.Float64 and inst.schema["symbol"] == pl.Utf8
    now = dt.datetime.now(dt.UTC)
    assert all(now - dt.timedelta(hours=1) < t <= now for t in inst["updated_at"].to_list())
    want = {r["symbol"]: r["qty_step"] for r in m.instruments.iter_rows(named=True)}
    got = dict(zip(exact["symbol"].to_list(), exact["qty_step"].to_list(), strict=True))
    assert isinstance(exact.schema["qty_step"], pl.Decimal)
    assert {k: Decimal(str(want[k])) for k in got} == got  # exact, not a float near it
    assert dict(zip(inst["symbol"].to_list(), inst["qty_step"].to_list(), strict=True)) == \
        {k: float(v) for k, v in got.items()}

    assert pairs.schema["created_at"] == utc and pairs["created_at"][0] == CREATED  # microseconds kept
    assert pairs.schema["wind"] == pl.Int32 and pairs.schema["run_id"] == pl.Int64
    assert pairs.schema["pred"] == pl.Float64 and pairs["pred"][0] == 0.25
    assert pairs.schema["params"] == pl.Utf8 and json.loads(pairs["params"][0]) == {"sl_std": 5.0, "note": "x"}
    assert pairs["params"].str.json_decode().struct.field("sl_std")[0] == 5.0
    assert str(as_pandas["created_at"].dtype).startswith("datetime64") and "UTC" in str(as_pandas["created_at"].dtype)

    orders = orders.sort("order_link_id")
    assert orders.schema["reduce_only"] == pl.Boolean and orders["reduce_only"].to_list() == [True, False]
    assert orders["qty"].to_list() == [0.123, 10.0] and orders["price"].to_list() == [None, 101.5]
    assert orders["error_code"].to_list() == [None, 110007] and orders.schema["error_code"] == pl.Int32

    assert trades.height == 0  # an empty table is typed too
    assert trades.schema["open_time"] == utc and trades.schema["qty_1"] == pl.Float64
    assert trades.schema["pos_side"] == pl.Int16 and trades.schema["id"] == pl.Int64

    assert other.schema["d"] == pl.Date and other["d"][0] == dt.date(2025, 3, 4)
    assert other.schema["t"] == pl.Datetime("us") and other["t"][0] == dt.datetime(2025, 3, 4, 5, 6, 7)
    assert other["tz"].to_list() == [None, None]  # 'infinity' has no Datetime: null
    assert other.schema["n"] == pl.Decimal(38, 4) and other["n"].to_list() == [Decimal("1.5000"), None]
    assert other.schema["f4"] == pl.Float32 and other["f4"][0] == 0.5 and np.isnan(other["f4"][1])
    assert other["arr"].to_list() == ["{1,2}", None] and other["iv"][0] == "01:00:00"
    assert other["s"].to_list() == ["", None]  # empty text and NULL stay apart

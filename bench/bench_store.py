"""Market-data store benchmark (issue: foundation). Run:

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/bench_store.py

(without BOT_DATABASE_DSN it uses an embedded PostgreSQL in a temp directory).
Works in a scratch database it creates and drops. Measures, in one run:
1. quote ingestion: binary COPY (copy_quotes) against executemany, rows/s and ratio;
2. load_data of 30 days of 5 s quotes for one pair (~1M rows) against a naive
   fetch-then-build-a-row-at-a-time path;
3. `bot data demo` for 30 symbols x 30 days (5 s quotes): wall time, in a subprocess;
4. cold start: wall time of a second `bot backtest` in a new process on the demo market.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from bot.core.db.market import copy_quotes, insert_quotes_executemany, symbol_of, to_utc
from bot.core.db.migrate import migrate
from bot.core.db.pool import Database, create_pool
from bot.core.db.scratch import create_database, drop_database, scratch_server
from bot.core.demo_market import generate
from bot.utils.pair_trading import load_data


async def naive_load(db: Database, t1: str, t2: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    """fetch() then build the frame one row at a time (the path load_data avoids)."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT symbol, ts, bid_price, ask_price, bid_size, ask_size FROM quotes"
            " WHERE symbol = ANY($1::text[]) AND ts >= $2 AND ts < $3 ORDER BY ts",
            [symbol_of(t1), symbol_of(t2)], start, end)
    legs: dict[str, dict[int, tuple]] = {symbol_of(t1): {}, symbol_of(t2): {}}
    for r in rows:
        legs[r["symbol"]][int(r["ts"].timestamp())] = (r["bid_price"], r["ask_price"], r["bid_size"], r["ask_size"])
    out = []
    a, b = legs[symbol_of(t1)], legs[symbol_of(t2)]
    for ts in sorted(set(a) & set(b)):
        qa, qb = a[ts], b[ts]
        out.append({"ts": ts, t1: (qa[0] + qa[1]) / 2, f"{t1}_bid_price": qa[0], f"{t1}_ask_price": qa[1],
                    t2: (qb[0] + qb[1]) / 2, f"{t2}_bid_price": qb[0], f"{t2}_ask_price": qb[1]})
    return pl.DataFrame(out)


async def store_bench(dsn: str) -> dict[str, float]:
    res: dict[str, float] = {}
    pool = await create_pool(dsn, 1, 4)
    db = Database(pool, dsn)
    async with pool.acquire() as conn:
        await migrate(conn)
    # 1. ingestion: 10 symbols x 2 days of 5 s quotes = 345,600 rows through each path
    market = generate(n_symbols=10, days=2.0, quote_interval_s=5.0, seed=1)
    q = market.quotes
    t = time.perf_counter()
    await copy_quotes(db, q)
    res["copy_rows_s"] = q.height / (time.perf_counter() - t)
    shifted = q.with_columns(pl.col("ts") + 10 * 86400).head(100_000)
    t = time.perf_counter()
    await insert_quotes_executemany(db, shifted)
    res["executemany_rows_s"] = shifted.height / (time.perf_counter() - t)
    res["copy_rows"] = q.height
    # 2. load_data: 30 days of 5 s quotes for one pair (2 x 518,400 rows stored)
    m30 = generate(n_symbols=8, days=30.0, quote_interval_s=5.0, seed=2,
                   start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    g = m30.groups[0]
    pair = m30.quotes.filter(pl.col("symbol").is_in([f"{g.leader}USDT", f"{g.members[0]}USDT"]))
    await copy_quotes(db, pair)
    from bot.core.db.market import copy_bars
    from bot.core.demo_market import bars_from_quotes

    await copy_bars(db, bars_from_quotes(pair, 3600), "1h", "bench")
    t = time.perf_counter()
    tick_df, _ = await load_data(g.leader, g.members[0], m30.start, m30.end, "1h", 72, db)
    res["load_data_s"] = time.perf_counter() - t
    res["load_data_rows"] = tick_df.height
    t = time.perf_counter()
    naive = await naive_load(db, g.leader, g.members[0], to_utc(m30.start), to_utc(m30.end))
    res["naive_s"] = time.perf_counter() - t
    assert naive.height == tick_df.height
    await pool.close()
    return res


def bot(*args: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bot.cli.main", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        dsn = asyncio.run(create_database(admin, "bot_bench"))
        try:
            res = asyncio.run(store_bench(dsn))
            env = {**os.environ, "BOT_DATABASE_DSN": dsn}
            demo_s = bot("data", "demo", "--days", "30", "--symbols", "30", "--quote-interval", "5",
                         "--manifest", str(tmp / "m.json"), env=env)
            grp = json.loads((tmp / "m.json").read_text())["groups"][0]
            args = ("backtest", grp["leader"], grp["members"][0], "--start", "2025-01-10", "--end", "2025-01-30",
                    "--wind", "72")
            first = bot(*args, env=env)
            second = bot(*args, env=env)
        finally:
            asyncio.run(drop_database(admin, dsn))
    print(f"{'measure':56s} {'value':>14s}")
    print(f"{'quotes via binary COPY: rows/s':56s} {res['copy_rows_s']:>14,.0f}")
    print(f"{'quotes via executemany: rows/s':56s} {res['executemany_rows_s']:>14,.0f}")
    print(f"{'  ratio COPY / executemany':56s} {res['copy_rows_s'] / res['executemany_rows_s']:>14.1f}")
    print(f"{'load_data 30 d of 5 s quotes, one pair: s':56s} {res['load_data_s']:>14.2f}")
    print(f"{'  rows (aligned ticks)':56s} {res['load_data_rows']:>14,.0f}")
    print(f"{'  rows/s (per stored quote row: x2)':56s} {2 * res['load_data_rows'] / res['load_data_s']:>14,.0f}")
    print(f"{'naive fetch + row-by-row frame: s':56s} {res['naive_s']:>14.2f}")
    print(f"{'  ratio naive / load_data':56s} {res['naive_s'] / res['load_data_s']:>14.1f}")
    print(f"{'bot data demo 30 symbols x 30 days (5 s quotes): s':56s} {demo_s:>14.1f}")
    print(f"{'bot backtest, first run (new process): s':56s} {first:>14.2f}")
    print(f"{'bot backtest, second run (new process): s':56s} {second:>14.2f}")


if __name__ == "__main__":
    main()

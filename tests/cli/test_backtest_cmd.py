"""`bot backtest` against a database holding the demo market."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.data_cmds import write_demo_market
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from tests.cli.test_cli import run_bot
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


async def test_backtest_command_prints_trades_metrics_and_plots(db: Database, tmp_path: Path) -> None:
    market = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4)
    await write_demo_market(db, market)
    g = market.groups[0]
    plot = tmp_path / "bt.png"
    res = run_bot("backtest", g.leader, g.members[0], "--start", "2025-01-05", "--end", "2025-01-12",
                  "--wind", "48", "--in", "1.8", "--out", "0.2", "--sl-method", "leave", "--plot", str(plot),
                  env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"{g.leader}/{g.members[0]}" in out and "in 1.8 out 0.2" in out
    for key in ("trades", "pr_rat", "max_drdn", "sharpe", "exposure"):
        assert f"  {key} " in out
    # the trades table names pos_side and reason (the trades frame keeps the integers)
    table = out.split("total_profit", 1)[1].split("skipped_entries", 1)[0]
    assert any(f" {side} " in table for side in ("long", "short"))
    assert any(f" {why} " in table for why in ("exit", "stop-loss", "force close", "liquidation"))
    assert plot.exists() and plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_backtest_command_errors(db: Database) -> None:
    res = run_bot("backtest", "NOPE", "NADA", "--start", "2025-01-05", "--end", "2025-01-06",
                  env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 2 and "NOPE" in res.stderr and "Traceback" not in res.stderr
    res = run_bot("backtest", "A", "B", "--in", "0.5", "--out", "1.0", env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 2 and "--out must be below --in" in res.stderr


# ---------------------------------------------------------------- issue 11 items 6 and 8



TRADE_KEYS = ("open_ts", "close_ts", "pos_side", "qty_1", "qty_2", "open_price_1", "close_price_1",
              "open_price_2", "close_price_2", "fees", "profit_1", "profit_2", "total_profit", "reason",
              "open_z", "close_z")


async def test_backtest_and_research_give_identical_trades(db: Database) -> None:
    """`bot backtest` (run_backtest_from_db) and the research sweep on the same pair, window and
    parameters: vol_neutral sizing (one volatility definition), an instrument minimum notional
    that skips some entries, partial quote coverage. Every trade must be identical."""
    import datetime as dt

    from bot.cli.backtest_cmd import run_backtest_from_db
    from bot.config import load
    from bot.config.loader import example_path
    from bot.research.params import default_params
    from bot.research.sweep import run_sweep

    base = load(example_path())
    cfg = base.model_copy(update={"strategy": base.strategy.model_copy(update={
        "wind": 48, "min_order_size": 0.0, "qty_method": "vol_neutral", "thresh_in": 1.2, "thresh_out": 0.2,
        "sl_method": "cooldown",
        "median_length": 3})})
    market = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4)
    g = market.groups[0]
    t1, t2 = g.leader, g.members[0]
    start, end = dt.datetime(2025, 1, 4, tzinfo=dt.UTC), dt.datetime(2025, 1, 11, tzinfo=dt.UTC)
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM quotes WHERE symbol = $1 AND ts < $2", f"{t2}USDT",
                           dt.datetime(2025, 1, 6, tzinfo=dt.UTC))
    # a notional floor between the legs' vol_neutral notionals seen: some entries are skipped
    free = await run_backtest_from_db(db, cfg, t1, t2, start, end, cfg.strategy.model_dump())
    n_1 = sorted(r["qty_1"] * r["open_price_1"] for r in free.trades.iter_rows(named=True))
    assert len(n_1) >= 4
    floor = n_1[len(n_1) // 2]
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE instruments SET min_notional = $2 WHERE symbol = $1", f"{t1}USDT", floor)
    try:
        run = await run_backtest_from_db(db, cfg, t1, t2, start, end, cfg.strategy.model_dump())
        p = default_params(cfg.strategy)
        # the sweep's configured wind differs from the set's: sizing follows the set (wind 48)
        sweep_cfg = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"wind": 24})})
        assert p.wind == 48 and sweep_cfg.strategy.wind == 24
        rep = await run_sweep(db, sweep_cfg, [(t1, t2)], iters=1, seed=0, train_start=start, valid_time=end,
                              end_time=end, param_sets=[p], with_features=True, executor=inproc)
    finally:
        async with db.pool.acquire() as conn:
            await conn.execute("UPDATE instruments SET min_notional = 5 WHERE symbol = $1", f"{t1}USDT")
    (o,) = rep.outcomes
    research = [{k: r[k] for k in TRADE_KEYS} for r in o.trade_records]
    ours = [{k: r[k] for k in TRADE_KEYS} for r in run.trades.iter_rows(named=True)]
    assert len(ours) >= 2 and ours == research
    assert run.skipped_entries > 0 and run.skipped_entries == o.summaries[0]["skipped_entries"]
    assert 0 < run.coverage < 1
    assert run.metrics["pr"] == o.summaries[0]["pr"]


async def test_coarser_timeframes_are_built_from_finer_bars(db: Database) -> None:
    import datetime as dt

    import polars as pl

    from bot.core.db.market import read_bars

    g = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4).groups[0]
    sym = f"{g.leader}USDT"
    lo, hi = dt.datetime(2025, 1, 2, tzinfo=dt.UTC), dt.datetime(2025, 1, 9, 7, tzinfo=dt.UTC)
    for tf, src, n in (("15m", "5m", 3), ("4h", "1h", 4), ("1d", "1h", 24)):
        built = await read_bars(db, [sym], tf, lo, hi)
        fine = await read_bars(db, [sym], src, lo, hi)
        step = {"15m": 900, "4h": 14400, "1d": 86400}[tf]
        want = (fine.with_columns((pl.col("ts") // step * step).alias("b")).group_by("b")
                .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
                     pl.len().alias("n")).filter(pl.col("n") == n).sort("b"))
        assert built.height == want.height > 0, tf
        assert built["ts"].to_list() == want["b"].to_list()
        for c in ("open", "high", "low", "close"):
            assert built[c].to_list() == pytest.approx(want[c].to_list(), rel=1e-12), (tf, c)
        assert built["ts"].max() + step <= hi.timestamp()  # only complete bars
    res = run_bot("backtest", g.leader, g.members[0], "--start", "2025-01-05", "--end", "2025-01-12",
                  "--tf", "15m", "--wind", "48", env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 0, res.stderr
    trades = int(next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("  trades ")))
    assert trades > 0


async def test_a_timeframe_that_cannot_be_built_is_a_clear_error(db: Database) -> None:
    g = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4).groups[0]
    async with db.pool.acquire() as conn:
        saved = await conn.fetch("SELECT * FROM bars WHERE symbol = $1 AND tf = '5m'", f"{g.leader}USDT")
        await conn.execute("DELETE FROM bars WHERE symbol = $1 AND tf = '5m'", f"{g.leader}USDT")
    try:
        res = run_bot("backtest", g.leader, g.members[0], "--start", "2025-01-05", "--end", "2025-01-12",
                      "--tf", "15m", env={"BOT_DATABASE_DSN": db.dsn})
    finally:
        async with db.pool.acquire() as conn:
            await conn.copy_records_to_table("bars", records=[tuple(r) for r in saved], columns=list(saved[0].keys()))
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert "15m" in line and f"{g.leader}: 1h" in line and "5m" in line


async def test_direct_coarse_bars_for_part_of_the_range_are_completed_from_finer(db: Database) -> None:
    import datetime as dt

    import polars as pl

    from bot.core.db.market import copy_bars, read_bars

    g = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4).groups[0]
    sym = f"{g.leader}USDT"
    lo, hi = dt.datetime(2025, 1, 2, tzinfo=dt.UTC), dt.datetime(2025, 1, 9, tzinfo=dt.UTC)
    built = await read_bars(db, [sym], "4h", lo, hi)
    # one late day of "imported" 4h bars, with a marker close: they win over the built ones
    late = built.filter(pl.col("ts") >= dt.datetime(2025, 1, 8, tzinfo=dt.UTC).timestamp())
    await copy_bars(db, late.with_columns(pl.col("close") * 0 + 1.2345).rename({"ts": "open_time"}), "4h")
    try:
        got = await read_bars(db, [sym], "4h", lo, hi)
        assert got["ts"].to_list() == built["ts"].to_list()  # the older days are built from 1h
        assert (got.filter(pl.col("close") == 1.2345).height == late.height == 6)
    finally:
        async with db.pool.acquire() as conn:
            await conn.execute("DELETE FROM bars WHERE symbol = $1 AND tf = '4h'", sym)


async def test_direct_coarse_bars_that_stop_early_or_have_holes_are_completed(db: Database) -> None:
    """Imported 4h bars from the range's start that stop early and have a hole: the hole and
    the tail are built from 1h, the stored bars win, no slot is lost or doubled."""
    import datetime as dt

    import polars as pl

    from bot.core.db.market import copy_bars, read_bars

    g = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4).groups[0]
    sym = f"{g.leader}USDT"
    lo, hi = dt.datetime(2025, 1, 2, tzinfo=dt.UTC), dt.datetime(2025, 1, 9, tzinfo=dt.UTC)
    built = await read_bars(db, [sym], "4h", lo, hi)
    assert built.height == 7 * 6
    a, b = lo.timestamp(), dt.datetime(2025, 1, 6, tzinfo=dt.UTC).timestamp()
    hole = dt.datetime(2025, 1, 5, 8, tzinfo=dt.UTC).timestamp()
    mid = built.filter((pl.col("ts") >= a) & (pl.col("ts") < b) & (pl.col("ts") != hole))
    await copy_bars(db, mid.with_columns(pl.col("close") * 0 + 1.2345).rename({"ts": "open_time"}), "4h")
    try:
        got = await read_bars(db, [sym], "4h", lo, hi)
        assert got["ts"].to_list() == built["ts"].to_list()
        marked = got.filter(pl.col("close") == 1.2345)
        assert marked.height == mid.height == 23 and hole not in marked["ts"].to_list()
        rest = got.filter(pl.col("close") != 1.2345)
        assert rest.equals(built.filter(pl.col("ts").is_in(rest["ts"].to_list())))
    finally:
        async with db.pool.acquire() as conn:
            await conn.execute("DELETE FROM bars WHERE symbol = $1 AND tf = '4h'", sym)


async def test_median_length_on_bars_only_data_is_said_not_applied(db: Database) -> None:
    g = generate(n_symbols=10, days=12, quote_interval_s=60.0, seed=4).groups[0]
    syms = [f"{g.leader}USDT", f"{g.members[0]}USDT"]
    async with db.pool.acquire() as conn:
        saved = await conn.fetch("SELECT * FROM quotes WHERE symbol = ANY($1::text[])", syms)
        await conn.execute("DELETE FROM quotes WHERE symbol = ANY($1::text[])", syms)
    try:
        res = run_bot("backtest", g.leader, g.members[0], "--start", "2025-01-05", "--end", "2025-01-12",
                      "--wind", "48", "--median-length", "5", env={"BOT_DATABASE_DSN": db.dsn})
        plain = run_bot("backtest", g.leader, g.members[0], "--start", "2025-01-05", "--end", "2025-01-12",
                        "--wind", "48", env={"BOT_DATABASE_DSN": db.dsn})
    finally:
        async with db.pool.acquire() as conn:
            await conn.copy_records_to_table("quotes", records=[tuple(r) for r in saved],
                                             columns=list(saved[0].keys()))
    assert res.returncode == 0, res.stderr
    assert "--median-length 5 not applied" in res.stderr and "bars-only" in res.stderr
    assert "not applied" not in plain.stderr
    assert res.stdout == plain.stdout

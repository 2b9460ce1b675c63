"""The research inputs are what they claim (issue 11 items 3 and 4), on a real PostgreSQL:

- partial quote coverage is never silent: bars without quotes trade on bar-close
  ticks, and the coverage is recorded in the stats row and the re-selection run;
- the 180-day open-time features see every bar of the past 180 days that exists.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bot.analysis.coverage import quote_coverage
from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db import research as repo
from bot.core.db.market import load_pair_data
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research.sweep import run_sweep
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DAYS = 24
CUT = START + dt.timedelta(days=14)  # quotes before this are deleted for the "late recorder" pair




@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=8, days=DAYS, quote_interval_s=600.0, seed=21)


@pytest.fixture(scope="module")
def cfg():
    base = load(example_path())
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"wind": 24, "min_order_size": 0.0}),
        "research": base.research.model_copy(update={"winds": (24,)}),
    })


async def test_setup(db: Database, market) -> None:
    await write_demo_market(db, market, tfs=("1h",))
    a, b = market.symbols[:2]
    async with db.pool.acquire() as conn:  # the recorder started late for A/B: quotes only from CUT
        await conn.execute("DELETE FROM quotes WHERE symbol = ANY($1::text[]) AND ts < $2",
                           [f"{a}USDT", f"{b}USDT"], CUT)


async def test_uncovered_bars_trade_on_bar_close_ticks(db: Database, market) -> None:
    a, b = market.symbols[:2]
    start, end = START + dt.timedelta(days=4), START + dt.timedelta(days=DAYS)
    ticks, agg = await load_pair_data(db, a, b, start, end, "1h", 24)
    ts = ticks["ts"].to_numpy()
    is_quote = ticks[f"{a}_bid_size"].is_not_null().to_numpy()
    # before CUT: exactly one bar-close tick per bar, at the bar's open time; after: quotes only
    early = ts < CUT.timestamp()
    n_early_bars = int(((agg["ts"] >= start.timestamp()) & (agg["ts"] < CUT.timestamp())).sum())
    assert early.sum() == n_early_bars == 10 * 24
    assert not is_quote[early].any() and is_quote[~early].all()
    assert np.all(np.diff(ts) > 0)
    bar = agg.filter(agg["ts"] == int(ts[0]))
    assert ticks[f"{a}_bid_price"][0] == pytest.approx(bar[a][0] * (1 - 1e-4))
    cov = quote_coverage(ts, is_quote, start.timestamp(), end.timestamp(), 3600)
    assert cov == pytest.approx(10 / 20)
    # a pair with quotes all along gets no bar tick
    c, d = market.symbols[2:4]
    full, _ = await load_pair_data(db, c, d, start, end, "1h", 24)
    assert full[f"{c}_bid_size"].null_count() == 0


async def test_bar_close_ticks_never_carry_a_close_after_the_window_end(db: Database, market) -> None:
    """An unaligned end (10:30): the 10:00 bar closes at 11:00, after the end, so it gives
    no bar-close tick; the 09:00 bar (closing at 10:00) does."""
    a, b = market.symbols[:2]
    start = START + dt.timedelta(days=4)
    end = START + dt.timedelta(days=6, hours=10, minutes=30)
    ticks, agg = await load_pair_data(db, a, b, start, end, "1h", 24)
    assert ticks["ts"].max() == (START + dt.timedelta(days=6, hours=9)).timestamp()
    assert agg["ts"].max() == (START + dt.timedelta(days=6, hours=10)).timestamp()  # the bar itself is loaded
    # aligned: the last bar of the window gives its tick
    aligned, _ = await load_pair_data(db, a, b, start, end.replace(minute=0), "1h", 24)
    assert aligned["ts"].max() == (START + dt.timedelta(days=6, hours=9)).timestamp()


async def test_coverage_is_recorded_in_the_stats_rows(db: Database, market, cfg, tmp_path: Path) -> None:
    a, b = market.symbols[:2]
    c, d = market.symbols[2:4]
    train, valid = START + dt.timedelta(days=4), START + dt.timedelta(days=19)
    rep = await run_sweep(db, cfg, [(a, b), (c, d)], iters=3, seed=1, train_start=train, valid_time=valid,
                          end_time=START + dt.timedelta(days=DAYS), with_features=True, executor=inproc,
                          assume_instruments=True, trades_log=tmp_path / "t.jsonl")
    rows = {(r["coin1"], r["coin2"]): r for r in await repo.read_pair_stats(db.pool, rep.run_id)}
    assert rows[(a, b)]["coverage"] == pytest.approx(5 / 15)  # train window: 10 of 15 days without quotes
    assert rows[(c, d)]["coverage"] == 1.0
    stats = rep.stats
    assert "coverage" in stats.columns
    # the partial pair still trades its whole train window: exposure is measured over it, and
    # some trade opens before CUT (on bar-close ticks), which the old loader made impossible
    o = next(o for o in rep.outcomes if (o.token_1, o.token_2) == (a, b))
    assert o.status == "ok"
    opens = [dt.datetime.fromisoformat(r["open_time"]) for r in o.trade_records]
    assert any(t < CUT for t in opens) and any(t >= CUT for t in opens)


async def test_reselect_run_records_coverage(db: Database, market, cfg, tmp_path: Path) -> None:
    from bot.selection.reselect import reselect

    a, b = market.symbols[:2]
    (tmp_path / "c.txt").write_text(f"{a} {b}\n{market.symbols[2]} {market.symbols[3]}\n")
    low = {"pr_rat_ind": -1e9, "pr_rat_all": -1e9, "pr_rat_best": -1e9, "pred": -1e9}
    rcfg = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={
        "train_days": 15, "candidates_file": str(tmp_path / "c.txt"), "token_pairs_file": str(tmp_path / "t.txt"),
        "thresholds": cfg.selection.thresholds.model_copy(update=low)}),
        "model": cfg.model.model_copy(update={"dir": str(tmp_path / "m")})})
    rep = await reselect(db, rcfg, now=START + dt.timedelta(days=19), executor=inproc, dry_run=False)
    async with db.pool.acquire() as conn:
        got = {(r["token_1"], r["token_2"]): r["coverage"] for r in await conn.fetch(
            "SELECT token_1, token_2, coverage FROM selection_candidates WHERE run_id = $1", rep.run_id)}
    assert got[(a, b)] == pytest.approx(5 / 15)
    assert got[(market.symbols[2], market.symbols[3])] == 1.0


async def test_180_day_features_see_all_the_history_there_is(db: Database, market, cfg, tmp_path: Path) -> None:
    c, d = market.symbols[2:4]
    train, valid = START + dt.timedelta(days=16), START + dt.timedelta(days=DAYS)
    log = tmp_path / "trades.jsonl"
    await run_sweep(db, cfg, [(c, d)], iters=6, seed=4, train_start=train, valid_time=valid, end_time=valid,
                    with_features=True, trades_log=log, executor=inproc, assume_instruments=True)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert recs, "the sweep made no trade to check"
    for r in recs:
        open_ts = dt.datetime.fromisoformat(r["open_time"]).timestamp()
        there = (open_ts - START.timestamp()) / 86400  # the bars stored before the open
        # the old loader started the bars at train_start - max_wind * tf: about 1 + days since train_start
        assert r["history_days_180d"] == pytest.approx(there, abs=2 / 24), r["open_time"]
        assert r["short_history_180d"] == 1.0
        assert math.isfinite(r["std_1_180d"])


async def test_notebook_load_data_can_load_the_feature_history(db: Database, market) -> None:
    from bot.utils.pair_trading import load_data

    c, d = market.symbols[2:4]
    start = START + dt.timedelta(days=16)
    _, short = await load_data(c, d, start, START + dt.timedelta(days=DAYS), "1h", 24, db.pool)
    _, long = await load_data(c, d, start, START + dt.timedelta(days=DAYS), "1h", 24, db.pool, history_days=180)
    assert short["ts"][0] == start.timestamp() - 24 * 3600  # the notebook's default: wind bars of warm-up
    assert long["ts"][0] == START.timestamp()  # 180 days asked, bounded by what exists

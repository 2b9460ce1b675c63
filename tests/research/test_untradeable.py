"""A pair no entry of which can be sized is `untradeable` with its reason, never `ok` with 0 trades
(issue 12 item 2), against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from pathlib import Path

import pytest

from bot.analysis.backtesting import SizingParams, entry_sizing_problem
from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db import research as repo
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research.sweep import run_sweep
from tests.cli.test_cli import run_bot
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
TRAIN, VALID, END = START + dt.timedelta(days=3), START + dt.timedelta(days=9), START + dt.timedelta(days=12)


@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=8, days=12, quote_interval_s=600.0, seed=5)


@pytest.fixture(scope="module")
def cfg():
    base = load(example_path())
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"wind": 24, "min_order_size": 0.0, "thresh_in": 1.2}),
        "research": base.research.model_copy(update={"winds": (24,)}),
    })


async def test_entry_sizing_problem_knows_the_answer() -> None:
    """100 USDT per leg (50 margin x 2): a 0.001 step at 120 000 needs 120 USDT -> min_qty;
    at 90 000 it needs 90 -> sizable; min_order_size 60 > margin 50 -> min_order_size."""
    btc = SizingParams(100.0, 50.0, 0.0, 2.0, "usdt_neutral", 1.0, 1.0, 0.00055, 0.001, 0.1, 0.001, 0.1)
    assert entry_sizing_problem(btc, 120_000.0, 1.0) == "min_qty"
    assert entry_sizing_problem(btc, 90_000.0, 1.0) is None
    strict = SizingParams(100.0, 50.0, 60.0, 2.0, "usdt_neutral", 1.0, 1.0, 0.00055, 0.001, 0.1, 0.001, 0.1)
    assert entry_sizing_problem(strict, 90_000.0, 1.0) == "min_order_size"
    floor = SizingParams(100.0, 50.0, 0.0, 2.0, "usdt_neutral", 1.0, 1.0, 0.00055, 0.001, 0.1, 0.001, 0.1,
                         min_notional_1=150.0)
    assert entry_sizing_problem(floor, 90_000.0, 1.0) == "min_notional"


async def test_setup(db: Database, market) -> None:
    await write_demo_market(db, market, tfs=("1h",))


async def _btc_like(db: Database, sym: str) -> Decimal:
    """Give `sym` a qty step (and min qty) whose one step costs more than 100 USDT at any price seen."""
    async with db.pool.acquire() as conn:
        low = await conn.fetchval("SELECT min(bid_price) FROM quotes WHERE symbol = $1", sym)
        step = Decimal(10) ** math.ceil(math.log10(150.0 / float(low)))
        await conn.execute("UPDATE instruments SET qty_step = $2, min_qty = $2 WHERE symbol = $1", sym, step)
    return step


async def test_a_pair_that_cannot_be_sized_is_untradeable(db: Database, market, cfg, tmp_path: Path) -> None:
    a, b, c, d = market.symbols[:4]
    await _btc_like(db, f"{b}USDT")
    rep = await run_sweep(db, cfg, [(a, b), (c, d)], iters=3, seed=1, train_start=TRAIN, valid_time=VALID,
                          end_time=END, with_features=False, executor=inproc)
    out = {(o.token_1, o.token_2): o for o in rep.outcomes}
    bad, good = out[(a, b)], out[(c, d)]
    assert bad.status == "untradeable" and good.status == "ok"
    assert bad.reason.startswith("no entry can be sized: qty below the instrument's minimum")
    assert f"{b} min qty" in bad.reason and "skipped in the train window" in bad.reason
    assert not any(r["trades"] for r in bad.summaries)
    rows = {(r["coin1"], r["coin2"]): r for r in await repo.read_pair_stats(db.pool, rep.run_id)}
    assert rows[(a, b)]["status"] == "untradeable" and rows[(a, b)]["reason"] == bad.reason
    skips = json.loads(rows[(a, b)]["skips"])
    assert skips["min_qty"] > 0 and skips["min_qty"] == sum(skips.values())
    # the statistics frame (the dataset's rows) holds only pairs that traded normally
    assert rep.stats.height == 1 and rep.stats["coin1"][0] == c


async def test_margin_below_min_order_size_is_untradeable(db: Database, market, cfg) -> None:
    c, d = market.symbols[2:4]
    strict = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"min_order_size": 60.0})})
    rep = await run_sweep(db, strict, [(c, d)], iters=2, seed=1, train_start=TRAIN, valid_time=VALID,
                          end_time=END, with_features=False, executor=inproc)
    (o,) = rep.outcomes
    assert o.status == "untradeable" and "min_order_size" in o.reason and "margin 50" in o.reason


async def test_reselect_treats_untradeable_as_failed_with_the_reason(db: Database, market, cfg,
                                                                     tmp_path: Path) -> None:
    from bot.selection.reselect import reselect

    a, b, c, d = market.symbols[:4]
    (tmp_path / "c.txt").write_text(f"{a} {b}\n{c} {d}\n")
    low = {"pr_rat_ind": -1e9, "pr_rat_all": -1e9, "pr_rat_best": -1e9, "pred": -1e9}
    rcfg = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={
        "train_days": 6, "min_evaluated_share": 1.0, "candidates_file": str(tmp_path / "c.txt"),
        "token_pairs_file": str(tmp_path / "t.txt"), "thresholds": cfg.selection.thresholds.model_copy(update=low)}),
        "model": cfg.model.model_copy(update={"dir": str(tmp_path / "m")})})
    rep = await reselect(db, rcfg, now=VALID, executor=inproc, dry_run=True)
    # evaluated (the data is fine), so the coverage guard passes at a share of 1.0
    assert rep.status == "dry-run"
    dec = {(x.token_1, x.token_2): x for x in rep.decisions}
    assert dec[(a, b)].decision == "failed" and "untradeable" in dec[(a, b)].reason
    assert dec[(c, d)].decision != "failed"


async def test_bot_backtest_says_untradeable(db: Database, market) -> None:
    a, b = market.symbols[:2]
    res = run_bot("backtest", a, b, "--start", TRAIN.isoformat(), "--end", VALID.isoformat(), "--wind", "24",
                  env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 0, res.stderr
    assert f"{a}/{b} untradeable: no entry can be sized: qty below the instrument's minimum" in res.stderr
    assert "skipped in the window" in res.stderr
    line = next(x for x in res.stdout.splitlines() if "skipped_entries" in x)
    assert "min_qty" in line

"""A run over many pairs logs counts, not one line per pair: bars-only mode, skips, progress."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from bot.cli.data_cmds import write_demo_market
from bot.config import load
from bot.config.loader import example_path
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from bot.research.sweep import outcome_summary, run_sweep
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


async def test_per_pair_notices_are_one_line_each(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    market = generate(n_symbols=8, days=8, quote_interval_s=600.0, seed=2, start=START)
    await write_demo_market(db, market, tfs=("1h",))
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM quotes")  # imported candles: every pair in bars-only mode
    base = load(example_path())
    cfg = base.model_copy(update={"strategy": base.strategy.model_copy(update={"wind": 24, "min_order_size": 0.0}),
                                  "research": base.research.model_copy(update={"winds": (24, 36)})})
    toks = market.symbols
    pairs = [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]][:12] + [("NOPE", "BTC"), ("NOPE", "ETH")]
    with caplog.at_level(logging.DEBUG):
        rep = await run_sweep(db, cfg, pairs, iters=3, seed=1, train_start=START, valid_time=START + dt.timedelta(days=6),
                              end_time=START + dt.timedelta(days=8), with_features=False, executor=inproc,
                              progress_desc="window 1/1")
    assert rep.counts() == {"ok": 12, "skipped": 2, "failed": 0}
    msgs = [r.getMessage() for r in caplog.records]
    bars_only = [m for m in msgs if "bars-only" in m]
    assert bars_only == ["window 1/1: 12 of 12 pairs without quotes in the window (bars-only mode: bar-close ticks, "
                         "half spread 1 bp), 0 partly covered by quotes"]
    assert not any(m.startswith("no quotes for") for m in msgs)  # the per-pair debug line of load_pair_data
    skipped = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "skipp" in r.getMessage()]
    assert skipped == ["window 1/1: 2 pairs skipped: no instrument info for <token> (e.g. NOPE/BTC, NOPE/ETH)"]
    progress = [m for m in msgs if m.startswith("window 1/1: ") and " % (" in m]
    assert len(progress) == 10 and progress[-1].startswith("window 1/1: 100 % (12/12 pairs: 12 ok)")
    # the same summary the `bot stats` command prints, numbers folded
    from bot.research.pair_job import PairOutcome

    many = [PairOutcome(f"T{i}", "BTC", "skipped", f"too little history: {i} bars before valid_time")
            for i in range(50)]
    assert outcome_summary(many) == ["50 pairs skipped: too little history: N bars before valid_time "
                                     "(e.g. T0/BTC, T1/BTC)"]

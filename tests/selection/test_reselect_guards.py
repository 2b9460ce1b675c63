"""The re-selection job refuses unfit inputs (issue 11 items 1, 2, 12), against a real PostgreSQL.

Every refusal must be a failed run with its reason, and leave the pairs table and
token_pairs.txt byte-identical.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg
import pytest
import yaml

from bot.cli.data_cmds import write_demo_market
from bot.cli.main import main
from bot.config import load
from bot.config.loader import example_path
from bot.core.db import selection as repo
from bot.core.db.pool import Database
from bot.core.db.positions import EXPOSED_STATUSES, POSITION_STATUSES
from bot.core.demo_market import generate
from bot.selection.reselect import ReselectError, reselect, token_pairs_text
from tests.fakes.executor import inproc

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]




@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=8, days=10, quote_interval_s=300.0, seed=11)


@pytest.fixture
def cfg(tmp_path: Path, market):
    base = load(example_path())
    four = market.symbols[:4]
    (tmp_path / "candidates.txt").write_text("".join(f"{a} {b}\n" for i, a in enumerate(four) for b in four[i + 1:]))
    low = {"pr_rat_ind": -1e9, "pr_rat_all": -1e9, "pr_rat_best": -1e9, "pred": -1e9}
    return base.model_copy(update={
        "strategy": base.strategy.model_copy(update={"wind": 48, "min_order_size": 0.0}),
        "research": base.research.model_copy(update={"iters": 3, "winds": (24, 48)}),
        "selection": base.selection.model_copy(update={
            "train_days": 6, "max_pairs": 2, "candidates_file": str(tmp_path / "candidates.txt"),
            "token_pairs_file": str(tmp_path / "token_pairs.txt"),
            "thresholds": base.selection.thresholds.model_copy(update=low)}),
        "model": base.model.model_copy(update={"dir": str(tmp_path / "models")}),
    })


async def _snapshot(db: Database, cfg) -> tuple[list, bytes | None]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM pairs ORDER BY token_1, token_2")
    p = Path(cfg.selection.token_pairs_file)
    return [tuple(r) for r in rows], (p.read_bytes() if p.exists() else None)


async def _last_run(db: Database) -> dict:
    async with db.pool.acquire() as conn:
        return (await repo.last_runs(conn, 1))[0]


async def _known_state(db: Database, cfg, market) -> tuple[list, bytes | None]:
    rep = await reselect(db, cfg, now=market.end, executor=inproc)
    assert rep.status == "ok" and rep.pairs
    snap = await _snapshot(db, cfg)
    assert snap[0] and snap[1]
    return snap


async def _refused(db: Database, cfg, before, now, *words: str) -> str:
    with pytest.raises(ReselectError) as info:
        await reselect(db, cfg, now=now, executor=inproc)
    assert await _snapshot(db, cfg) == before  # table and file byte-identical
    last = await _last_run(db)
    assert last["status"] == "failed"
    for w in words:
        assert w in last["error"] and w in str(info.value)
    return last["error"]


async def test_setup_market(db: Database, market) -> None:
    await write_demo_market(db, market, tfs=("1h",))


async def test_stale_data_is_refused_and_nothing_changes(db: Database, market, cfg) -> None:
    before = await _known_state(db, cfg, market)
    # the recorder was down for 30 days: every candidate would be "no data in the window";
    # before this guard the job deleted every pair and recorded the run ok
    await _refused(db, cfg, before, market.end + dt.timedelta(days=30), "stale data", "max_data_age_h")
    # within the limit it runs
    fresh = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"max_data_age_h": 24 * 31})})
    with pytest.raises(ReselectError, match="evaluated"):  # the next guard: nothing could be evaluated
        await reselect(db, fresh, now=market.end + dt.timedelta(days=30), executor=inproc)
    assert await _snapshot(db, cfg) == before


async def test_no_bar_before_now_is_refused(db: Database, market, cfg) -> None:
    before = await _snapshot(db, cfg)
    await _refused(db, cfg, before, market.start - dt.timedelta(days=1), "no 1h bar")


async def test_low_coverage_is_refused(db: Database, market, cfg) -> None:
    before = await _known_state(db, cfg, market)
    a, b = market.symbols[:2]
    # one real candidate, three that cannot be evaluated (unknown tokens): 25 % < 50 %
    Path(cfg.selection.candidates_file).write_text(f"{a} {b}\nFOO BAR\nFOO BAZ\nQUX ZED\n")
    err = await _refused(db, cfg, before, market.end, "only 1 of 4 candidates evaluated")
    assert "min_evaluated_share" in err
    lenient = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"min_evaluated_share": 0.25})})
    rep = await reselect(db, lenient, now=market.end, executor=inproc)
    assert rep.status == "ok"


async def test_empty_selection_is_refused_unless_allowed(db: Database, market, cfg) -> None:
    before = await _known_state(db, cfg, market)
    strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={
        "thresholds": cfg.selection.thresholds.model_copy(update={"pr_rat_all": 1e9})})})
    await _refused(db, strict, before, market.end, "selection is empty", "allow_empty")
    allowed = strict.model_copy(update={"selection": strict.selection.model_copy(update={"allow_empty": True})})
    rep = await reselect(db, allowed, now=market.end, executor=inproc)
    assert rep.status == "ok" and rep.pairs == []
    rows, text = await _snapshot(db, cfg)
    assert rows == [] and text == b""
    # an empty table may stay empty without allow_empty (nothing is removed)
    rep = await reselect(db, strict, now=market.end, executor=inproc)
    assert rep.status == "ok" and rep.pairs == []


async def test_only_exposed_positions_reserve_tokens(db: Database, market, cfg) -> None:
    await _known_state(db, cfg, market)
    a, b = market.symbols[2:4]
    for status in POSITION_STATUSES:
        async with db.pool.acquire() as conn:
            await conn.execute("DELETE FROM positions")
            await conn.execute("INSERT INTO positions (token_1, token_2, pos_side, status) VALUES ($1, $2, 1, $3)",
                               f"{a}_USDT", f"{b}_USDT", status)
            kept = await repo.open_position_pairs(conn)
        assert (kept == [(a, b)]) == (status in EXPOSED_STATUSES), status
    # the job: an abandoned intent and a failed entry do not keep the pair, an unanswered order does
    strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"allow_empty": True,
        "thresholds": cfg.selection.thresholds.model_copy(update={"pr_rat_all": 1e9})})})
    try:
        for status, kept_pair in (("intent", False), ("failed", False), ("orders_sent", True)):
            async with db.pool.acquire() as conn:
                await conn.execute("UPDATE positions SET status = $1", status)
            rep = await reselect(db, strict, now=market.end, executor=inproc)
            reasons = {(d.token_1, d.token_2): d.reason for d in rep.decisions}
            assert (reasons.get((a, b)) == "kept: open position") == kept_pair, status
            assert [(r["token_1"], r["token_2"]) for r in rep.pairs] == ([(f"{a}_USDT", f"{b}_USDT")] if kept_pair else [])
    finally:
        async with db.pool.acquire() as conn:
            await conn.execute("DELETE FROM positions")


async def test_unknown_position_status_is_rejected_by_the_schema(db: Database) -> None:
    async with db.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO positions (token_1, token_2, pos_side, status)"
                               " VALUES ('A_USDT', 'B_USDT', 1, 'abandoned')")


async def test_notification_arrives_after_the_file_is_final(db: Database, market, cfg) -> None:
    await _known_state(db, cfg, market)
    path = Path(cfg.selection.token_pairs_file)
    path.write_text("STALE CONTENT\n")  # the run rewrites it
    seen: list[str] = []
    listener = await asyncpg.connect(db.dsn)
    # read the file the moment the notification is delivered
    await listener.add_listener("pairs_changed", lambda *a: seen.append(path.read_text()))
    try:
        strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"max_pairs": 1})})
        # a slow disk: a notification sent before the file is written would be seen now
        rep = await reselect(db, strict, now=market.end, executor=inproc,
                             hooks={"before_file": lambda: asyncio.sleep(0.3)})
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.02)
    finally:
        await listener.close()
    assert seen == [token_pairs_text(rep.pairs)] and len(rep.pairs) == 1


async def test_cli_refusal_exits_1_with_one_line_and_as_of_runs(db: Database, market, cfg, tmp_path: Path,
                                                                capsys) -> None:
    before = await _known_state(db, cfg, market)
    data = cfg.model_dump(mode="json")
    data["database"]["dsn"] = db.dsn
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(data))
    late = (market.end + dt.timedelta(days=30)).isoformat()
    code = await asyncio.to_thread(main, ["--config", str(conf), "reselect", "--as-of", late])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "stale data" in err[0] and "unchanged" in err[0]
    assert await _snapshot(db, cfg) == before
    code = await asyncio.to_thread(main, ["--config", str(conf), "reselect", "--as-of", market.end.isoformat()])
    assert code == 0
    assert (await _last_run(db))["status"] == "ok"


async def test_candidates_without_instruments_are_refused_naming_the_remedies(db: Database, market, cfg) -> None:
    before = await _known_state(db, cfg, market)
    async with db.pool.acquire() as conn:
        saved = await conn.fetch("SELECT * FROM instruments")
        await conn.execute("DELETE FROM instruments")
    try:
        err = await _refused(db, cfg, before, market.end, "no candidate pair has both instruments",
                             "`bot data import <instruments-info.json>`", "`bot data instruments`")
        assert all(f"{s}USDT" in err for s in market.symbols[:4])
    finally:
        async with db.pool.acquire() as conn:
            await conn.copy_records_to_table("instruments", records=[tuple(r) for r in saved],
                                             columns=list(saved[0].keys()))
    assert (await reselect(db, cfg, now=market.end, executor=inproc)).status == "ok"


async def test_no_candidate_is_refused(db: Database, market, cfg) -> None:
    before = await _known_state(db, cfg, market)
    Path(cfg.selection.candidates_file).write_text("# nothing to trade\n")
    await _refused(db, cfg, before, market.end, "no pairs in the file")
    # no candidates file: every pair of symbols with bars over the whole train window; none has
    Path(cfg.selection.candidates_file).unlink()
    await _refused(db, cfg, before, market.start + dt.timedelta(days=3), "no candidate pair")


async def test_a_4h_strategy_on_1h_bars_is_fresh(db: Database, market, cfg) -> None:
    """Only 1h bars are stored: the 4h bars are built from them, and so is freshness."""
    coarse = cfg.model_copy(update={
        "strategy": cfg.strategy.model_copy(update={"tf": "4h", "wind": 6}),
        "research": cfg.research.model_copy(update={"winds": (6,)}),
        "selection": cfg.selection.model_copy(update={"allow_empty": True})})
    rep = await reselect(db, coarse, now=market.end, executor=inproc)
    assert rep.status == "ok"
    assert (await _last_run(db))["status"] == "ok"


async def test_without_a_candidates_file_coarse_bars_are_found_in_finer_ones(db: Database, market, cfg) -> None:
    """No candidates file, a 4h strategy, only 1h (and 5m) bars stored: every symbol whose
    finer bars reach back to the train start is a candidate (not none)."""
    Path(cfg.selection.candidates_file).unlink()
    coarse = cfg.model_copy(update={
        "strategy": cfg.strategy.model_copy(update={"tf": "4h", "wind": 6}),
        "research": cfg.research.model_copy(update={"winds": (6,)}),
        "selection": cfg.selection.model_copy(update={"allow_empty": True})})
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM bars WHERE tf = '4h'") == 0
    rep = await reselect(db, coarse, now=market.end, executor=inproc, dry_run=True)
    assert rep.status == "dry-run"
    n = len(market.symbols)
    assert len(rep.decisions) == n * (n - 1) // 2

"""`bot run --replay`: recorded quotes through the live path (the executor, the paper
exchange, a simulated clock, a real Postgres) give the trades backtest() gives on the same
window and pair, in the replay's own ledger mode (the paper ledger untouched)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from bot.analysis.backtesting import backtest
from bot.core.backfill import instruments_frame
from bot.core.db.market import copy_quotes, upsert_instruments
from bot.core.replay import metrics, replay
from tests.executor.harness import (
    INSTRUMENTS,
    T1,
    T2,
    backtest_kwargs,
    backtest_view,
    config,
    pair_row,
    quotes,
    quotes_frame,
    reset_ledger,
    write_pairs,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
REPO = Path(__file__).resolve().parents[2]


async def _market(db: Any, qs: list[Any], row: dict[str, Any]) -> None:
    async with db.pool.acquire() as conn:
        await reset_ledger(conn)
        await conn.execute("TRUNCATE quotes")
        await write_pairs(conn, [row])
    await upsert_instruments(db, instruments_frame(INSTRUMENTS))
    await copy_quotes(db, quotes_frame(qs))


@pytest.mark.parametrize("open_method", ["direct", "reverse_dynamic"])
async def test_replay_trades_equal_backtest_trades(db: Any, open_method: str) -> None:
    cfg = config(open_method=open_method, close_method="direct", dist_in=0.3, dist_out=0.3)
    row = pair_row(cfg)
    qs = quotes()
    await _market(db, qs, row)
    start, end = dt.datetime.fromtimestamp(qs[0].ts, dt.UTC), dt.datetime.fromtimestamp(qs[-1].ts + 1, dt.UTC)
    res = await replay(db, cfg, start, end, progress=None, chunk_s=3_600.0)  # chunks cut the window: still exact
    assert res.quotes == len(qs) and res.mode.startswith("replay-")
    view = backtest_view(qs, cfg)
    bt = backtest(view.frame, T1, T2, 0.1, 1.0, **backtest_kwargs(cfg, row))
    assert bt.height >= 8 and len(res.trades) == bt.height, (len(res.trades), bt.height)
    for got, want in zip(res.trades, bt.iter_rows(named=True), strict=True):
        assert got["open_ts"] == want["open_ts"] and got["close_ts"] == want["close_ts"]
        assert got["pos_side"] == want["pos_side"] and got["reason"] == want["reason"]
        for c in ("qty_1", "qty_2", "open_price_1", "close_price_1", "open_price_2", "close_price_2"):
            assert got[c] == D(repr(want[c])), (c, got[c], want[c])
        assert abs(float(got["total_profit"]) - want["total_profit"]) < 1e-9
    assert float(metrics(res.trades)["total_profit"]) == pytest.approx(float(bt["total_profit"].sum()), abs=1e-9)
    async with db.pool.acquire() as conn:  # its own mode: nothing in the paper ledger, the run recorded
        assert await conn.fetchval("SELECT count(*) FROM positions WHERE mode = 'paper'") == 0
        run = await conn.fetchrow("SELECT mode, stop_reason, exit_code FROM service_runs WHERE id = $1", res.run_id)
    assert (run["mode"], run["stop_reason"], run["exit_code"]) == (res.mode, "replay done", 0)


async def test_replay_runs_beside_an_open_paper_position_and_from_the_command_line(db: Any, tmp_path: Path) -> None:
    """A paper position open on the same pair does not block the replay (the one-active-position
    index and the executor lock are per mode), and `bot run --replay` prints the trades."""
    cfg = config()
    row = pair_row(cfg)
    qs = quotes(n_ticks=2000)
    await _market(db, qs, row)
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO positions (token_1, token_2, pos_side, status, qty_1, qty_2, params, mode)"
                           " VALUES ($1, $2, 1, 'open', 1, 1, '{}'::jsonb, 'paper')", f"{T1}_USDT", f"{T2}_USDT")
    cfg_file = tmp_path / "config.yaml"
    s = cfg.strategy
    cfg_file.write_text(
        "strategy:\n" + "".join(f"  {k}: {v if v is not None else 'null'}\n" for k, v in
                                (("tf", s.tf), ("wind", s.wind), ("spr_method", s.spr_method),
                                 ("median_length", s.median_length), ("thresh_in", s.thresh_in),
                                 ("thresh_out", s.thresh_out), ("balance", s.balance), ("order_size", s.order_size),
                                 ("min_order_size", s.min_order_size), ("leverage", s.leverage),
                                 ("fee_rate", s.fee_rate), ("sl_std", s.sl_std), ("sl_dist", s.sl_dist),
                                 ("sl_seconds", s.sl_seconds), ("sl_method", s.sl_method),
                                 ("maintenance_margin_rate", s.maintenance_margin_rate)))
        + "executor:\n  max_quote_age_s: 1000000000\n  stale_exit_s: 1000000000\n")
    env = {**os.environ, "BOT_DATABASE_DSN": db.dsn}
    start = dt.datetime.fromtimestamp(qs[0].ts, dt.UTC).isoformat()
    end = dt.datetime.fromtimestamp(qs[-1].ts + 1, dt.UTC).isoformat()
    out = subprocess.run([sys.executable, "-m", "bot.cli.main", "--config", str(cfg_file), "run", "--replay",
                          "--from", start, "--to", end], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    view = backtest_view(qs, cfg)
    bt = backtest(view.frame, T1, T2, 0.1, 1.0, **backtest_kwargs(cfg, row))
    assert f"{bt.height} trades" in out.stdout, out.stdout[:800]
    assert f"total profit {float(bt['total_profit'].sum()):+.4f} USDT" in out.stdout
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM positions WHERE mode = 'paper' AND status = 'open'") == 1
    bad = subprocess.run([sys.executable, "-m", "bot.cli.main", "--config", str(cfg_file), "run", "--replay",
                          "--from", end, "--to", start], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--to must be after --from" in bad.stderr

"""`bot backtest` against a database holding the demo market."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.data_cmds import write_demo_market
from bot.core.db.pool import Database
from bot.core.demo_market import generate
from tests.cli.test_cli import run_bot

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
    assert plot.exists() and plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_backtest_command_errors(db: Database) -> None:
    res = run_bot("backtest", "NOPE", "NADA", "--start", "2025-01-05", "--end", "2025-01-06",
                  env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 2 and "no data for NOPE/NADA" in res.stderr
    res = run_bot("backtest", "A", "B", "--in", "0.5", "--out", "1.0", env={"BOT_DATABASE_DSN": db.dsn})
    assert res.returncode == 2 and "--out must be below --in" in res.stderr

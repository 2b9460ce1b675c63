"""Item 1: one pair, one path. The same quotes fed to the executor (paper exchange, a real
Postgres) and to backtest() give the same trades: open/close ts, sides, quantities,
prices, fees, reasons, for every open and close method."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from bot.analysis.backtesting import backtest
from bot.core.db import positions as ledger_sql
from bot.core.executor.executor import Executor
from tests.executor.harness import (
    T1,
    T2,
    backtest_kwargs,
    backtest_view,
    config,
    pair_row,
    paper,
    quotes,
    reset_ledger,
    write_pairs,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

METHODS = ["direct", "reverse_static", "reverse_dynamic"]


async def run_executor(db: Any, cfg: Any, row: dict[str, Any], qs: list[Any]) -> tuple[Executor, list[dict[str, Any]]]:
    async with db.pool.acquire() as conn:
        await reset_ledger(conn)
        await write_pairs(conn, [row])
    clock = {"now": qs[0].ts}
    ex = Executor(db.pool, paper(), cfg, clock=lambda: clock["now"])
    await ex.start()
    try:
        for q in qs:
            clock["now"] = q.ts
            await ex.on_quote(q)
        await ex.drain()
    finally:
        await ex.stop()
    async with db.pool.acquire() as conn:
        rows = await ledger_sql.trades(conn, "paper")
    return ex, rows


@pytest.mark.parametrize("open_method", METHODS)
@pytest.mark.parametrize("close_method", METHODS)
async def test_executor_trades_equal_backtest_trades(db: Any, open_method: str, close_method: str) -> None:
    cfg = config(open_method=open_method, close_method=close_method, dist_in=0.3, dist_out=0.3)
    row = pair_row(cfg)
    qs = quotes()
    ex, rows = await run_executor(db, cfg, row, qs)
    view = backtest_view(qs, cfg)
    bt = backtest(view.frame, T1, T2, 0.1, 1.0, **backtest_kwargs(cfg, row))
    assert bt.height >= 8, "the generated market must trade"
    assert len(rows) == bt.height, (len(rows), bt.height)
    for got, want in zip(rows, bt.iter_rows(named=True), strict=True):
        assert got["open_ts"] == want["open_ts"] and got["close_ts"] == want["close_ts"]
        assert got["pos_side"] == want["pos_side"] and got["reason"] == want["reason"]
        for c in ("qty_1", "qty_2", "open_price_1", "close_price_1", "open_price_2", "close_price_2"):
            assert got[c] == D(repr(want[c])), (c, got[c], want[c])
        for c in ("fees", "profit_1", "profit_2", "total_profit"):
            assert abs(float(got[c]) - want[c]) < 1e-9, (c, got[c], want[c])
        assert abs(got["open_z"] - want["open_z"]) < 1e-9
    # the ledger: every position closed, four filled orders each, no incident
    async with db.pool.acquire() as conn:
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM positions")}
        n_orders = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'filled'")
        n_inc = await conn.fetchval("SELECT count(*) FROM incidents")
    assert statuses <= {"closed", "open"} and n_orders >= 4 * len(rows) and n_inc == 0

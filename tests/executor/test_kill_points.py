"""Kill points (issue 13, tests): the executor runs in a child process in live mode against
the loopback Bybit fake and a real Postgres, and SIGKILLs itself at each point of the order
flow. A second child then starts, reconciles, sees the entry signal again and the exit:
0 positions lost, 0 double opens, the venue's positions equal the ledger's, every
half-open pair resolved, every anomaly an incident row."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from tests.executor import live
from tests.fakes.bybit import FakeBybit

pytestmark = pytest.mark.asyncio(loop_scope="session")
REPO = Path(__file__).resolve().parents[2]

# kill point -> (final statuses of the positions, incident kinds that must be there)
EXPECT = {
    "after_intent": (["failed", "closed"], set()),  # nothing was sent: the restart trades afresh
    "leg1_sent": (["unwound"], {"half_open"}),
    "leg1_filled": (["unwound"], {"half_open"}),
    "leg2_sent": (["closed"], set()),  # both legs filled at the venue: adopted, closed by its exit
    "both_filled": (["closed"], set()),
    "closing_written": (["closed"], set()),
    "close1_sent": (["closed"], set()),
    "between_closes": (["closed"], set()),
}


def _child(dsn: str, url: str, phase: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "tests.executor.child", dsn, url, phase] + ([kill_at] if kill_at else [])
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _ledger_exposure(state: dict[str, Any], orders: list[dict[str, Any]]) -> dict[str, D]:
    out: dict[str, D] = {}
    for o in orders:
        if o["status"] == "filled" and o["filled_qty"]:
            q = o["filled_qty"] if o["side"] == "Buy" else -o["filled_qty"]
            out[o["symbol"]] = out.get(o["symbol"], D(0)) + q
    return {s: q for s, q in out.items() if q != 0}


@pytest.mark.parametrize("kill_at", list(EXPECT))
async def test_kill_and_restart_loses_nothing_and_opens_nothing_twice(db: Any, kill_at: str) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs RESTART IDENTITY CASCADE")
        await live.pairs_row(conn)
    await live.store_bars(db)
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        first = await asyncio.to_thread(_child, db.dsn, fake.http_url, "trade", kill_at)
        assert first.returncode == -signal.SIGKILL, f"the kill point was not reached:\n{first.stderr[-3000:]}"
        second = await asyncio.to_thread(_child, db.dsn, fake.http_url, "settle")
        assert second.returncode == 0, second.stderr[-3000:]
        venue = {s: q for s, q in fake.state.positions.items() if q != 0}
        async with db.pool.acquire() as conn:
            state = await live.ledger_state(conn)
            orders = [dict(r) for r in await conn.fetch("SELECT symbol, side, status, filled_qty FROM orders")]
    statuses, kinds = EXPECT[kill_at]
    assert [p["status"] for p in state["positions"]] == statuses, (state, second.stderr[-2000:])
    assert venue == {} and _ledger_exposure(state, orders) == {}, (venue, state)
    got_kinds = {i["kind"] for i in state["incidents"]}
    assert kinds <= got_kinds, (kinds, state["incidents"])
    if not kinds:
        assert got_kinds == set(), state["incidents"]
    # every order the venue filled is in the ledger as filled, with the venue's quantity
    filled_at_venue = {link: o for link, o in fake.state.orders.items() if D(o["cumExecQty"]) > 0}
    ledger = {o["order_link_id"]: o for o in state["orders"]}
    for link, o in filled_at_venue.items():
        assert ledger[link]["status"] == "filled" and ledger[link]["filled_qty"] == D(o["cumExecQty"]), link
    assert len(state["trades"]) == statuses.count("closed")

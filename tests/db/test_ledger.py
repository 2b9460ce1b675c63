"""The ledger repository on a real Postgres: one active position per pair, and a position
closed once (a second close from another path writes no second trades row)."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import asyncpg
import pytest

from bot.core.db import positions as ledger

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]


def _trade(pid: int, profit: str) -> ledger.TradeRow:
    return ledger.TradeRow(pid, "AAA_USDT", "BBB_USDT", 100.0, 200.0, 1, D(3), D(4), D(1), D("1.1"), D(2), D("1.9"),
                           D("0.01"), D("0.02"), D(profit), D(0), 1, 2.5, 0.1, "paper")


async def test_a_position_is_closed_once_and_one_active_position_per_pair(db: Any) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions RESTART IDENTITY CASCADE")
        prefix = await ledger.link_prefix(conn)
        legs = [(1, "AAAUSDT", "Buy", D(3)), (2, "BBBUSDT", "Sell", D(4))]
        pid, orders = await ledger.create_intent(conn, prefix, "AAA_USDT", "BBB_USDT", 1, D(3), D(4), 2.5, {},
                                                 "paper", legs)
        assert [o.order_link_id for o in orders] == [ledger.link_id(prefix, pid, k, "open", 0) for k in (1, 2)]
        with pytest.raises(asyncpg.UniqueViolationError):  # no second active position on the pair
            await ledger.create_intent(conn, prefix, "AAA_USDT", "BBB_USDT", 2, D(3), D(4), -2.5, {}, "paper", legs)
        assert not await ledger.close_position(conn, _trade(pid, "0.5"))  # not closing yet: refused
        await ledger.plan_orders(conn, prefix, pid, "closing", [], close_reason=1, close_z=0.1)
        assert await ledger.close_position(conn, _trade(pid, "0.5"))
        assert not await ledger.close_position(conn, _trade(pid, "0.7"))  # another path: nothing written
        assert await conn.fetchval("SELECT count(*) FROM trades") == 1
        assert await ledger.closed_profit(conn, "paper") == D("0.5")
        assert (await ledger.position(conn, pid)).status == "closed"

"""The executor in a child process, live mode against the fake, for the kill-point tests:
`python -m tests.executor.child DSN HTTP_URL PHASE [KILL_AT]`.

PHASE `trade`: start, feed entry quotes (an entry), then exit quotes (its close).
PHASE `settle`: start (reconciliation), feed entry quotes again (nothing may open twice),
then exit quotes (an adopted position closes). KILL_AT names the point where the process
SIGKILLs itself (the wrapped ledger write or order call has just returned):

  after_intent     the intent row is written
  leg1_sent        the first leg's order reached the venue, its fill not recorded
  leg1_filled      the first leg's fill is recorded
  leg2_sent        the second leg's order reached the venue, its fill not recorded
  both_filled      both fills recorded, the position not yet `open`
  closing_written  `closing` and the first close order are written, nothing sent
  close1_sent      the first close order reached the venue, its fill not recorded
  between_closes   the first close fill is recorded, the second close not sent
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
from typing import Any

from bot.core.db import positions as ledger_sql
from bot.core.db.pool import create_pool
from bot.core.executor.executor import Executor
from tests.executor import live


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _after_call(obj: Any, name: str, nth: int) -> None:
    """SIGKILL right after the nth call of obj.name returns."""
    real = getattr(obj, name)
    count = {"n": 0}

    @functools.wraps(real)
    async def wrapped(*a: Any, **kw: Any) -> Any:
        out = await real(*a, **kw)
        count["n"] += 1
        if count["n"] == nth:
            _die()
        return out

    setattr(obj, name, wrapped)


async def main(dsn: str, http_url: str, phase: str, kill_at: str | None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    pool = await create_pool(dsn, 1, 4)
    exchange = live.exchange(http_url)
    points = {
        "after_intent": (ledger_sql, "create_intent", 1),
        "leg1_sent": (exchange, "place_market_order", 1),
        "leg1_filled": (ledger_sql, "record_fill", 1),
        "leg2_sent": (exchange, "place_market_order", 2),
        "both_filled": (ledger_sql, "record_fill", 2),
        "closing_written": (ledger_sql, "plan_orders", 2),  # 1: the `closing` status, 2: the first close order
        "close1_sent": (exchange, "place_market_order", 3),
        "between_closes": (ledger_sql, "record_fill", 3),
    }
    if kill_at:
        _after_call(*points[kill_at])
    ex = Executor(pool, exchange, live.live_config(http_url))
    await ex.start()
    for spread in (live.ENTRY_SPREAD, live.EXIT_SPREAD):
        for q in live.quotes(spread):
            await ex.on_quote(q)
        await ex.drain()
    await ex.stop()
    await pool.close()
    print(json.dumps({"stats": dict(ex.stats)}))


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], args[2], args[3] if len(args) > 3 else None))

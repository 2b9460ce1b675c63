"""Leg risk (item 3) in live mode against the loopback fake: the second leg rejected, partly
filled, resting unanswered, answered late; and the stream reconnecting during an entry."""

from __future__ import annotations

import functools
from decimal import Decimal as D
from typing import Any

import pytest

from bot.core.executor.executor import Executor
from tests.executor import live
from tests.fakes.bybit import FakeBybit

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _setup(db: Any) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs RESTART IDENTITY CASCADE")
        await live.pairs_row(conn)
    await live.store_bars(db)


def _before_nth_order(ex: Any, nth: int, fault: Any) -> None:
    real = ex.exchange.place_market_order
    count = {"n": 0}

    @functools.wraps(real)
    async def wrapped(order: Any) -> Any:
        count["n"] += 1
        if count["n"] == nth:
            fault()
        return await real(order)

    ex.exchange.place_market_order = wrapped


RUNNING: list[Executor] = []


@pytest.fixture(autouse=True)
async def _stop_executors() -> Any:
    """An assertion must not leave an executor holding the database's executor lock."""
    yield
    while RUNNING:
        await RUNNING.pop().stop()


async def _start(db: Any, fake: FakeBybit, **executor: Any) -> Executor:
    ex = Executor(db.pool, live.exchange(fake.http_url), live.live_config(fake.http_url, **executor))
    await ex.start()
    RUNNING.append(ex)
    return ex


async def _enter(db: Any, fake: FakeBybit, fault: Any, **executor: Any) -> tuple[Executor, dict[str, Any]]:
    await _setup(db)
    ex = await _start(db, fake, **executor)
    _before_nth_order(ex, 2, fault)
    for q in live.quotes(live.ENTRY_SPREAD):
        await ex.on_quote(q)
    await ex.drain()
    async with db.pool.acquire() as conn:
        state = await live.ledger_state(conn)
    return ex, state


def _venue(fake: FakeBybit) -> dict[str, D]:
    return {s: q for s, q in fake.state.positions.items() if q != 0}


async def _no_second_entry(db: Any, ex: Executor) -> None:
    """The pair is blocked for incident_cooldown_s: the same signal opens nothing."""
    for q in live.quotes(live.ENTRY_SPREAD):
        await ex.on_quote(q)
    await ex.drain()
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM positions") == 1
    assert ex.runners[(live.T1, live.T2)].skips["cooldown"] >= 1


async def test_second_leg_rejected_unwinds_the_first(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        ex, state = await _enter(db, fake, lambda: fake.reject_next_order(110007, "ab not enough for new order"))
        assert [p["status"] for p in state["positions"]] == ["unwound"]
        assert _venue(fake) == {}
        kinds = [i["kind"] for i in state["incidents"]]
        assert kinds == ["leg_failed"] and "rejected (110007" in state["incidents"][0]["message"]
        acts = [(o["leg"], o["action"], o["status"]) for o in state["orders"]]
        assert [a for a in acts if a[1] == "unwind"] and all(a[2] == "filled" for a in acts if a[1] == "unwind")
        await _no_second_entry(db, ex)


async def test_second_leg_partly_filled_unwinds_both_filled_parts(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        ex, state = await _enter(db, fake, lambda: fake.partial_next_order(0.5))
        assert [p["status"] for p in state["positions"]] == ["unwound"]
        assert _venue(fake) == {}  # the first leg and the second's half both closed again
        unwinds = [o for o in state["orders"] if o["action"] == "unwind"]
        assert len(unwinds) == 2 and all(o["status"] == "filled" for o in unwinds)
        assert "filled" in state["incidents"][0]["message"] and state["incidents"][0]["kind"] == "leg_failed"


async def test_second_leg_resting_unanswered_is_cancelled_and_the_first_unwound(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        ex, state = await _enter(db, fake, lambda: fake.hold_next_orders(1))
        assert [p["status"] for p in state["positions"]] == ["unwound"]
        assert _venue(fake) == {}
        held = [o for o in fake.state.orders.values() if o["orderStatus"] == "Cancelled"]
        assert len(held) == 1  # the resting leg was cancelled by its orderLinkId, not left live
        assert [i["kind"] for i in state["incidents"]] == ["leg_failed"]


async def test_second_leg_answered_late_but_filled_is_found_by_lookup_and_opens(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        # the venue places the order and answers after 3 s; leg_timeout_s is 2 s: the lookup
        # by orderLinkId finds it filled, so the position is open and nothing was sent twice
        ex, state = await _enter(db, fake, lambda: fake.delay_create(3.0))
        assert [p["status"] for p in state["positions"]] == ["open"], state
        assert fake.orders_created == 2 and len(_venue(fake)) == 2
        assert state["incidents"] == []
        for q in live.quotes(live.EXIT_SPREAD):
            await ex.on_quote(q)
        await ex.drain()
        assert _venue(fake) == {}


class _Source:
    """A scripted source whose `healthy` the test toggles (a reconnecting stream)."""

    def __init__(self) -> None:
        self.healthy = True


async def test_stream_reconnecting_during_an_entry_blocks_the_next_entry_not_the_one_in_flight(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        src = _Source()
        await _setup(db)
        ex = await _start(db, fake)
        ex.stream_healthy = lambda: src.healthy
        _before_nth_order(ex, 2, lambda: setattr(src, "healthy", False))  # the stream drops mid-entry
        for q in live.quotes(live.ENTRY_SPREAD):
            await ex.on_quote(q)
        await ex.drain()
        assert len(_venue(fake)) == 2  # the entry in flight completed over REST
        for spread in (live.EXIT_SPREAD, live.ENTRY_SPREAD):
            for q in live.quotes(spread):
                await ex.on_quote(q)  # the exit is allowed on fresh quotes; the new entry is not
            await ex.drain()
        assert _venue(fake) == {}
        assert ex.runners[(live.T1, live.T2)].skips["stream_down"] >= 1  # every tick of the signal refused
        async with db.pool.acquire() as conn:
            assert [r["status"] for r in await conn.fetch("SELECT status FROM positions ORDER BY id")] == ["closed"]

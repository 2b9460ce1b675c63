"""Failure paths a review found (issue 13), live mode against the loopback fake: a crashed
order flow never holds its pair forever; a late fill recorded before its unwind was planned
is still unwound; a close that keeps failing backs off with one incident per cause; a close
finishing while reconciliation holds an older venue snapshot is not taken for an orphan."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import pytest

from bot.core.db import positions as ledger_sql
from tests.executor import live
from tests.executor.test_leg_risk import RUNNING, _enter, _setup, _start, _venue
from tests.executor.test_leg_risk import _stop_executors as _stop  # noqa: F401  (the autouse fixture)
from tests.fakes.bybit import FakeBybit

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEY = (live.T1, live.T2)
_ = RUNNING


async def _state(db: Any) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        return await live.ledger_state(conn)


async def _signal(ex: Any, spread: float) -> None:
    for q in live.quotes(spread):
        await ex.on_quote(q)
    await ex.drain()


async def test_a_flow_crashing_before_its_intent_is_freed_by_reconciliation(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        await _setup(db)
        ex = await _start(db, fake)
        real = ex.L.write
        crashed = {"n": 0}

        async def write(fn: Any, *a: Any, **k: Any) -> Any:
            if fn is ledger_sql.create_intent and not crashed["n"]:
                crashed["n"] += 1
                raise RuntimeError("boom (a bug, a CheckViolation)")
            return await real(fn, *a, **k)

        ex.L.write = write  # type: ignore[method-assign]
        await _signal(ex, live.ENTRY_SPREAD)
        r = ex.runners[KEY]
        assert r.busy and r.stuck and live.S1 in ex.exposed  # held, loudly (an incident)
        assert [i["kind"] for i in (await _state(db))["incidents"]] == ["leg_failed"]
        await ex.reconcile()
        r = ex.runners[KEY]
        assert not r.busy and not r.stuck and r.position_id is None and live.S1 not in ex.exposed
        assert r.machine.position == 0


async def test_a_flow_crashing_after_its_intent_is_settled_and_freed(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        await _setup(db)
        ex = await _start(db, fake)
        real = ex.L.send_leg

        async def boom(*a: Any, **k: Any) -> Any:
            raise RuntimeError("boom before mark_sent")

        ex.L.send_leg = boom  # type: ignore[method-assign]
        await _signal(ex, live.ENTRY_SPREAD)
        ex.L.send_leg = real  # type: ignore[method-assign]
        await ex.reconcile()
        r = ex.runners[KEY]
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["failed"] and _venue(fake) == {}
        assert not r.busy and not r.stuck and live.S1 not in ex.exposed


async def test_a_late_fill_recorded_before_its_unwind_was_planned_is_unwound(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        # leg_timeout_s (1 s) below the HTTP timeout (2 s): the leg times out while its request
        # is in flight. With both at 2 s they raced: when the HTTP timeout won, the adapter looked
        # the order up, found nothing and sent it again, which filled at once (rightly: open);
        # the resend is late too (count=2), so the only fill is the late one
        ex, state = await _enter(db, fake, lambda: fake.arrive_late(3.0, count=2), leg_timeout_s=1.0)
        assert [p["status"] for p in state["positions"]] == ["unwinding"], state
        deadline = asyncio.get_running_loop().time() + 10
        while fake.orders_created < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert len(_venue(fake)) == 1
        real = ex.L.write
        n = {"c": 0}

        async def write(fn: Any, *a: Any, **k: Any) -> Any:
            if fn is ledger_sql.plan_orders and not n["c"]:
                n["c"] += 1
                raise RuntimeError("the process dies here: the fill is recorded, its unwind not planned")
            return await real(fn, *a, **k)

        ex.L.write = write  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await ex.reconcile()
        await ex.reconcile()
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["unwound"] and _venue(fake) == {}, (st, _venue(fake))


async def test_a_close_that_keeps_failing_backs_off_with_one_incident_per_cause(db: Any) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        ex, state = await _enter(db, fake, lambda: None, close_retry_s=0.3)
        assert [p["status"] for p in state["positions"]] == ["open"]
        with fake.lock:
            fake.state.positions[live.S2] = D(0)  # leg 2 closed outside the bot
        real = ex.exchange.place_market_order

        async def busy(order: Any) -> Any:
            if order.symbol == live.S1:
                fake.reject_next_order(10001, "system busy")
            return await real(order)

        ex.exchange.place_market_order = busy  # type: ignore[method-assign]
        t0 = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - t0 < 1.5:  # fresh ticks every 50 ms for 1.5 s
            await _signal(ex, live.EXIT_SPREAD)
            await asyncio.sleep(0.05)
        st = await _state(db)
        kinds = [i["kind"] for i in st["incidents"]]
        assert sorted(kinds) == ["close_failed", "lost"], kinds  # once each, not per tick
        closes = [(o["leg"], o["status"]) for o in st["orders"] if o["action"] == "close"]
        assert closes.count((2, "rejected")) == 1  # the gone leg is not sent again
        assert 2 <= closes.count((1, "rejected")) <= 5, closes  # 0.3, 0.6, 1.2 s back-off: a few, not ~30
        ex.exchange.place_market_order = real  # type: ignore[method-assign]
        await asyncio.sleep(2.5)
        await _signal(ex, live.EXIT_SPREAD)
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["lost"] and _venue(fake) == {}


@pytest.mark.parametrize("adopt", [False, True])
async def test_a_close_finishing_under_an_older_venue_snapshot_is_no_orphan(db: Any, adopt: bool) -> None:
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        ex, state = await _enter(db, fake, lambda: None, adopt_orphans=adopt)
        assert [p["status"] for p in state["positions"]] == ["open"]
        snap, go = asyncio.Event(), asyncio.Event()
        real = ex.exchange.positions

        async def slow() -> Any:
            out = await real()  # both legs still held
            snap.set()
            await go.wait()
            return out

        ex.exchange.positions = slow  # type: ignore[method-assign]
        rec = asyncio.create_task(ex.reconcile())
        await snap.wait()
        await _signal(ex, live.EXIT_SPREAD)  # the close completes meanwhile
        go.set()
        await rec
        ex.exchange.positions = real  # type: ignore[method-assign]
        await ex.reconcile()
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["closed"] and st["incidents"] == [], st
        assert ex.exposed == {} and _venue(fake) == {}


async def test_an_order_sent_just_before_a_restart_and_unknown_is_held_until_the_grace_ends(db: Any) -> None:
    """The grace of an unknown order counts from its `sent` row, so a quick restart does not
    take a request still on its way for "never placed"."""
    with FakeBybit(live.markets(), api_key=live.KEY, api_secret=live.SECRET) as fake:
        await _setup(db)
        async with db.pool.acquire() as conn:
            prefix = await ledger_sql.link_prefix(conn)
            pid, orders = await ledger_sql.create_intent(
                conn, prefix, "AAA_USDT", "BBB_USDT", 2, D(97), D(99), 3.8, {}, "live",
                [(1, live.S1, "Sell", D(97)), (2, live.S2, "Buy", D(99))])
            await ledger_sql.mark_sent(conn, orders[0].order_link_id, (pid, "orders_sent"))  # then the process died
        ex = await _start(db, fake, unknown_grace_s=30.0)
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["orders_sent"]  # held, not "failed" at once
        assert [i["kind"] for i in st["incidents"]] == ["leg_unresolved"] and ex.runners[KEY].stuck
        ex.L.cfg = ex.L.cfg.model_copy(update={"unknown_grace_s": 0.0})  # the grace is over
        await ex.reconcile()
        st = await _state(db)
        assert [p["status"] for p in st["positions"]] == ["failed"] and not ex.runners[KEY].stuck
        assert fake.orders_created == 0

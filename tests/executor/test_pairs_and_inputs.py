"""Paper mode, a real Postgres: pairs changing while trading (item 6), data it can trust
(item 5: stale quotes, a missing bar, stale positions), bad input (an unknown or halted
symbol, a parameter set the machine refuses, a qtyStep change between open and close)."""

from __future__ import annotations

import dataclasses
import math
import time
from decimal import Decimal as D
from typing import Any

import polars as pl
import pytest

from bot.core.db.market import copy_bars
from bot.core.exchange.interface import Instrument, Quote
from bot.core.exchange.paper import PaperExchange
from bot.core.executor.executor import Executor
from tests.executor import live

pytestmark = pytest.mark.asyncio(loop_scope="session")
PAIRS = [("AAA", "BBB"), ("CCC", "DDD")]
RUNNING: list[Executor] = []


@pytest.fixture(autouse=True)
async def _stop_executors() -> Any:
    yield
    while RUNNING:
        await RUNNING.pop().stop()


def _instruments(**status: str) -> list[Instrument]:
    return [Instrument(f"{t}USDT", D("1"), D("1"), D("0.0001"), status=status.get(t, "Trading"))
            for t in ("AAA", "BBB", "CCC", "DDD")]


async def _bars(db: Any, pairs: list[tuple[str, str]], skip: int | None = None) -> None:
    now = time.time()
    bar_now = math.floor(now / 3600) * 3600
    rows = []
    for a, b in pairs:
        for k, s in enumerate(live.SPREADS):
            if k == skip:
                continue
            t = bar_now - (len(live.SPREADS) - k) * 3600
            for sym, c in ((f"{a}USDT", math.exp(s)), (f"{b}USDT", 1.0)):
                rows.append({"symbol": sym, "open_time": float(t), "open": c, "high": c, "low": c, "close": c})
    if skip is not None:  # one bar further back, so W bars are stored but not contiguous
        t = bar_now - (len(live.SPREADS) + 1) * 3600
        for a, b in pairs:
            for sym in (f"{a}USDT", f"{b}USDT"):
                rows.append({"symbol": sym, "open_time": float(t), "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0})
    await copy_bars(db, pl.DataFrame(rows), "1h", "test")


async def _pairs(db: Any, rows: list[dict[str, Any]]) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM pairs")
        for r in rows:
            await conn.execute(
                "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method,"
                " close_method, dist_in, dist_out) VALUES ($1, $2, '1h', $3, 'dist', $4, $5, 'direct', 'direct', 0, 0)",
                f"{r['t1']}_USDT", f"{r['t2']}_USDT", r.get("wind", len(live.SPREADS)), r.get("thresh_in", 2.0),
                r.get("thresh_out", 0.5))


async def _reset(db: Any) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs, bars RESTART IDENTITY CASCADE")


def _quotes(a: str, b: str, spread: float, ts: float | None = None) -> list[Quote]:
    ts = time.time() if ts is None else ts
    m1 = D(repr(round(math.exp(spread), 4)))
    tick = D("0.0001")
    return [Quote(f"{a}USDT", ts, m1 - tick, m1 + tick, D(5000), D(5000), ts),
            Quote(f"{b}USDT", ts, D("0.9999"), D("1.0001"), D(4000), D(4000), ts)]


async def _executor(db: Any, clock: Any = time.time, instruments: list[Instrument] | None = None,
                    **executor: Any) -> Executor:
    cfg = live.live_config("http://unused", **executor)
    cfg = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"mode": "paper"})})
    ex = Executor(db.pool, PaperExchange(instruments or _instruments(), D(1000), D("0.00055"), D(2)), cfg,
                  clock=clock)
    await ex.start()
    RUNNING.append(ex)
    return ex


async def _feed(ex: Executor, qs: list[Quote]) -> None:
    for q in qs:
        await ex.on_quote(q)
    await ex.drain()


async def _statuses(db: Any) -> list[tuple[str, str]]:
    async with db.pool.acquire() as conn:
        return [(r["token_1"], r["status"]) for r in await conn.fetch("SELECT token_1, status FROM positions ORDER BY id")]


async def _incidents(db: Any) -> list[str]:
    async with db.pool.acquire() as conn:
        return [r["kind"] for r in await conn.fetch("SELECT kind FROM incidents ORDER BY id")]


# ------------------------------------------------------------ pairs change while trading

async def test_removed_pair_keeps_its_parameters_until_flat_and_a_new_pair_starts_flat(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    ex = await _executor(db)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))
    assert await _statuses(db) == [("AAA_USDT", "open")]
    # re-selection: AAA/BBB removed, CCC/DDD added
    await _pairs(db, [{"t1": "CCC", "t2": "DDD"}])
    await ex.reload_pairs()
    assert ex.runners[("AAA", "BBB")].retiring and ex.runners[("CCC", "DDD")].position_id is None
    assert ex.runners[("CCC", "DDD")].window_complete  # warmed from the bars table
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))  # still in position: nothing new
    await _feed(ex, _quotes("AAA", "BBB", live.EXIT_SPREAD))  # its own exit rule closes it
    assert await _statuses(db) == [("AAA_USDT", "closed")] and ("AAA", "BBB") not in ex.runners
    await _feed(ex, _quotes("CCC", "DDD", live.ENTRY_SPREAD))
    assert await _statuses(db) == [("AAA_USDT", "closed"), ("CCC_USDT", "open")]


async def test_parameters_changed_while_open_apply_once_flat(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    ex = await _executor(db)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))
    await _pairs(db, [{"t1": "AAA", "t2": "BBB", "thresh_out": 0.1, "thresh_in": 3.0}])
    await ex.reload_pairs()
    r = ex.runners[("AAA", "BBB")]
    assert r.spec.signal.thresh_high_out == 0.5 and ("AAA", "BBB") in ex.pending_specs
    await _feed(ex, _quotes("AAA", "BBB", 0.0024))  # z ~ 0.3: the old parameters' exit (<= 0.5)
    assert await _statuses(db) == [("AAA_USDT", "closed")]
    new = ex.runners[("AAA", "BBB")]
    assert new.spec.signal.thresh_high_in == 3.0 and not ex.pending_specs
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))  # z 3.8 >= 3.0: the new entry band
    assert (await _statuses(db))[-1] == ("AAA_USDT", "open")


async def test_notify_pairs_changed_reloads_while_running(db: Any) -> None:
    import asyncio

    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    ex = await _executor(db)

    class Src:
        def __init__(self) -> None:
            self.q: asyncio.Queue[Quote] = asyncio.Queue()
            self.symbols: set[str] = set()

        async def get(self) -> Quote:
            return await self.q.get()

        async def set_symbols(self, symbols: Any) -> None:
            self.symbols = set(symbols)

    src, stop = Src(), asyncio.Event()
    task = asyncio.create_task(ex.run(src, stop=stop))
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}, {"t1": "CCC", "t2": "DDD"}])
    async with db.pool.acquire() as conn:
        await conn.execute("NOTIFY pairs_changed")
    for _ in range(100):
        if ("CCC", "DDD") in ex.runners and "CCCUSDT" in src.symbols:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert ("CCC", "DDD") in ex.runners and {"CCCUSDT", "DDDUSDT", "AAAUSDT", "BBBUSDT"} <= src.symbols


# ------------------------------------------------------------ data it can trust

async def test_a_stale_leg_blocks_the_entry(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    now = {"t": time.time()}
    ex = await _executor(db, clock=lambda: now["t"], max_quote_age_s=30)
    old = _quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"] - 100)
    await _feed(ex, [old[1]])  # BBB's last quote is 100 s old
    await _feed(ex, [_quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"])[0]])
    assert await _statuses(db) == []
    await _feed(ex, [_quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"])[1]])  # both fresh now
    assert await _statuses(db) == [("AAA_USDT", "open")]


async def test_a_missing_bar_in_the_window_blocks_entries(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS, skip=2)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    ex = await _executor(db)
    r = ex.runners[("AAA", "BBB")]
    assert not r.window_complete
    await _feed(ex, _quotes("AAA", "BBB", 0.08))
    assert await _statuses(db) == [] and r.skips["missing_bar"] >= 1


async def test_a_position_whose_data_stays_stale_is_flagged_not_closed(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    now = {"t": time.time()}
    ex = await _executor(db, clock=lambda: now["t"], stale_exit_s=60)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"]))
    now["t"] += 61
    ex.flag_stale()
    ex.flag_stale()  # once per position
    await ex.drain()
    assert await _statuses(db) == [("AAA_USDT", "open")] and await _incidents(db) == ["stale_position"]
    # an exit signal on stale data is not acted upon; on fresh quotes it is
    await _feed(ex, _quotes("AAA", "BBB", live.EXIT_SPREAD, now["t"] - 61))
    assert await _statuses(db) == [("AAA_USDT", "open")]
    await _feed(ex, _quotes("AAA", "BBB", live.EXIT_SPREAD, now["t"]))
    assert await _statuses(db) == [("AAA_USDT", "closed")]


async def test_a_position_with_no_quote_since_start_is_flagged_after_stale_exit_s_not_at_once(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    now = {"t": time.time()}
    ex = await _executor(db, clock=lambda: now["t"], stale_exit_s=60)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"]))
    await ex.stop()
    RUNNING.remove(ex)
    venue = PaperExchange(_instruments(), D(1000), D("0.00055"), D(2))  # a restart: rebuilt from the ledger
    again = Executor(db.pool, venue, ex.cfg, clock=lambda: now["t"])  # adopted, no quote yet
    await again.start()
    RUNNING.append(again)
    again.flag_stale()
    await again.drain()
    assert await _incidents(db) == []  # not stale yet: no quote since start is not "infinitely old"
    now["t"] += 61
    again.flag_stale()
    await again.drain()
    assert await _incidents(db) == ["stale_position"]
    await _feed(again, _quotes("AAA", "BBB", live.ENTRY_SPREAD, now["t"]))
    again.flag_stale()  # fresh again: the flag is lifted, a later staleness is flagged anew
    now["t"] += 61
    again.flag_stale()
    await again.drain()
    assert await _incidents(db) == ["stale_position"] * 2


async def test_a_removed_pair_listed_again_with_new_parameters_stays(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}])
    ex = await _executor(db)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))
    await _pairs(db, [])
    await ex.reload_pairs()
    assert ex.runners[("AAA", "BBB")].retiring
    await _pairs(db, [{"t1": "AAA", "t2": "BBB", "thresh_in": 3.0}])
    await ex.reload_pairs()
    assert not ex.runners[("AAA", "BBB")].retiring and ("AAA", "BBB") in ex.pending_specs
    await _feed(ex, _quotes("AAA", "BBB", live.EXIT_SPREAD))
    r = ex.runners[("AAA", "BBB")]  # flat: kept, with the new parameters
    assert r.spec.signal.thresh_high_in == 3.0 and r.position_id is None


# ------------------------------------------------------------ bad input

async def test_unknown_halted_and_refused_pairs_are_incidents_and_the_others_trade(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}, {"t1": "CCC", "t2": "ZZZ"}, {"t1": "CCC", "t2": "DDD"},
                      {"t1": "BBB", "t2": "DDD", "thresh_in": 0.5, "thresh_out": 0.9}])
    ex = await _executor(db, instruments=_instruments(DDD="Closed"))
    kinds = await _incidents(db)
    async with db.pool.acquire() as conn:
        msgs = [r["message"] for r in await conn.fetch("SELECT message FROM incidents ORDER BY id")]
    assert kinds == ["bad_pair"] * 3, msgs
    assert any("ZZZUSDT is unknown" in m for m in msgs) and any("DDDUSDT is not trading (Closed)" in m for m in msgs)
    assert any("thresh_low_in: must be below thresh_low_out" in m for m in msgs)
    assert set(ex.runners) == {("AAA", "BBB")}
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))
    assert await _statuses(db) == [("AAA_USDT", "open")]
    await ex.reload_pairs()  # the same bad rows are not reported twice
    assert await _incidents(db) == ["bad_pair"] * 3
    # the venue resumes DDD: the next reload (NOTIFY re-reads the instruments) trades CCC/DDD
    ex.exchange._instruments["DDDUSDT"] = dataclasses.replace(  # type: ignore[attr-defined]
        ex.exchange._instruments["DDDUSDT"], status="Trading")  # type: ignore[attr-defined]
    await ex.reload_pairs(refresh_instruments=True)
    assert set(ex.runners) == {("AAA", "BBB"), ("CCC", "DDD")} and await _incidents(db) == ["bad_pair"] * 3
    # a row fixed and broken again differently is reported anew
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}, {"t1": "CCC", "t2": "DDD"},
                      {"t1": "BBB", "t2": "DDD", "wind": 1}])
    await ex.reload_pairs()
    assert await _incidents(db) == ["bad_pair"] * 4


async def test_qty_step_change_between_open_and_close_is_an_incident(db: Any) -> None:
    await _reset(db)
    await _bars(db, PAIRS)
    await _pairs(db, [{"t1": "AAA", "t2": "BBB"}, {"t1": "CCC", "t2": "DDD"}])
    ex = await _executor(db)
    await _feed(ex, _quotes("AAA", "BBB", live.ENTRY_SPREAD))
    async with db.pool.acquire() as conn:
        qty_1 = await conn.fetchval("SELECT qty_1 FROM positions")
    assert qty_1 % 10 != 0
    changed = dataclasses.replace(ex.instruments["AAAUSDT"], qty_step=D("10"), min_qty=D("10"))
    ex.instruments["AAAUSDT"] = changed
    ex.exchange._instruments["AAAUSDT"] = changed  # type: ignore[attr-defined]  # the venue changed it
    await _feed(ex, _quotes("AAA", "BBB", live.EXIT_SPREAD))
    assert await _statuses(db) == [("AAA_USDT", "closed")]
    assert await _incidents(db) == ["instrument_changed"]
    residual = (await ex.exchange.positions()).get("AAAUSDT")
    assert residual == -(qty_1 % 10)  # the short leg's rest, named in the incident
    await _feed(ex, _quotes("CCC", "DDD", live.ENTRY_SPREAD))  # the other pair keeps trading
    assert (await _statuses(db))[-1] == ("CCC_USDT", "open")

"""Reconciliation: the database's positions against the venue's, at start and every
`executor.reconcile_every_s` (docs/executor.md, "Restart reconciliation").

Per position of this mode in an active status:

- ``intent``: no order left the bot (orders_sent is written before the first one):
  `failed`.
- ``orders_sent``: each entry order is looked up by orderLinkId with its symbol
  (realtime, then history; a resting one is cancelled first). Both legs filled:
  `open`, adopted. Neither: `failed`. Anything else is a half-open pair: every filled
  quantity is unwound (reduceOnly), `unwound`, incident `half_open`.
- ``open``: both legs at the venue with the recorded signed quantities: adopted and
  managed by its exit rules. Neither: `lost`, incident (never re-opened). One: the
  other is unwound, `lost`, incident `half_open`. Other quantities: incident
  `qty_mismatch`, adopted.
- ``closing`` / ``unwinding``: the written orders are driven to the end (a sent one
  looked up, resent under its own orderLinkId when the venue never saw it).

A venue position nobody owns is an `orphan` incident (once per symbol), left untouched
and its symbol closed to new entries, unless `executor.adopt_orphans` and its two
symbols form a selected pair with opposite signs (adopted at the first tick's mids).
A venue that does not answer the position query raises ReconcileError: not flat.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING

from bot.core.db import positions as ledger_sql
from bot.core.db.positions import PositionRow
from bot.core.exchange.interface import ExchangeError, Fill

if TYPE_CHECKING:
    from bot.core.executor.executor import Executor
    from bot.core.executor.pair import PairRunner

log = logging.getLogger("bot.executor")


def _syms(p: PositionRow) -> tuple[str, str]:
    return (f"{p.token_1.removesuffix('_USDT')}USDT", f"{p.token_2.removesuffix('_USDT')}USDT")


def _key(p: PositionRow) -> tuple[str, str]:
    return (p.token_1.removesuffix("_USDT"), p.token_2.removesuffix("_USDT"))


def _expected(p: PositionRow) -> dict[str, Decimal]:
    """Signed quantities the venue should hold for `p`: open fills minus close/unwind fills."""
    from bot.core.executor.executor import _signed

    out: dict[str, Decimal] = {}
    for o in p.orders:
        if o.filled_qty and o.status == "filled":
            out[o.symbol] = out.get(o.symbol, Decimal(0)) + _signed(o.side, o.filled_qty)
    return out


async def reconcile(ex: Executor, initial: bool) -> None:
    async with ex._reconcile_lock:  # noqa: SLF001 - one reconciliation at a time
        await _reconcile(ex, initial)


async def _reconcile(ex: Executor, initial: bool) -> None:
    """The venue's snapshot is taken after noting each pair's flow generation: a pair whose
    flow started or ended since (or is in flight) is skipped this round, its flow owns the
    outcome; a pair being settled is held busy, so no flow starts under reconciliation."""
    from bot.core.executor.executor import ReconcileError

    L = ex.L
    if initial and hasattr(ex.exchange, "restore_position"):
        await _seed_paper(ex)
    gens = dict(ex.flow_gen)
    try:
        venue = await ex.exchange.positions()
    except ExchangeError as e:
        await L.incident("reconcile_failed", f"the venue's positions could not be read ({e}): not trading")
        raise ReconcileError(f"the venue's positions could not be read: {e}") from e
    active = await L.write(ledger_sql.active_positions, ex.mode)
    owned: set[str] = set()
    for p in active:
        key = _key(p)
        r = ex.runners.get(key)
        owned.update(_syms(p))
        if not initial and r is not None and ((r.busy and not r.stuck) or ex.flow_gen[key] != gens.get(key, 0)):
            continue  # a flow is in flight or moved since the snapshot: it owns the outcome
        if r is not None:
            r.busy = True  # settled under reconciliation: no flow starts meanwhile
        try:
            await _settle(ex, p, venue, initial)
        except ExchangeError as e:
            await L.incident("reconcile_failed", f"position {p.id} ({p.status}) could not be settled: {e}",
                             pair=_key(p), position_id=p.id)
            if initial:
                raise ReconcileError(f"position {p.id} could not be settled: {e}") from e
        finally:
            if r is not None and not r.stuck:
                r.busy = False
    active_ids = {p.id for p in active}
    for key, r in list(ex.runners.items()):
        # a crashed flow left the runner held, but no active position is its: nothing to settle, free it
        if r.stuck and (r.position_id is None or r.position_id not in active_ids) \
                and ex.flow_gen[key] == gens.get(key, 0):
            await _free(ex, r)
    # pairs whose flow ran since the snapshot: the venue's view of their symbols is stale, not orphaned
    moving = {s for key, r in ex.runners.items() if r.busy or ex.flow_gen[key] != gens.get(key, 0)
              for s in (r.spec.symbol_1, r.spec.symbol_2)}
    await _orphans(ex, venue, owned | moving)
    if not initial:
        await ex._refresh_balance()  # noqa: SLF001


async def _settle(ex: Executor, p: PositionRow, venue: dict[str, Decimal], initial: bool) -> None:
    L = ex.L
    key = _key(p)
    s1, s2 = _syms(p)
    if p.status == "intent":
        await L.write(ledger_sql.set_status, p.id, "failed", "no order had left the bot")
        log.info("event=reconciled position=%d intent -> failed (nothing sent)", p.id)
        await _release(ex, p, cooldown=False)  # nothing reached the venue: no incident, no cooldown
        return
    if p.status == "orders_sent":
        opens = p.legs("open")
        results = [await L.resolve_leg(opens[k], cancel=True, why="after restart") for k in sorted(opens)]
        if any(r.unresolved for r in results):
            await L.incident("leg_unresolved", "an entry order could not be resolved: "
                             + "; ".join(r.unresolved for r in results if r.unresolved), pair=key, position_id=p.id)
            await _hold(ex, p)
            return
        filled = {r.order.leg: r for r in results if r.filled_qty > 0}
        if len(filled) == 2 and all(r.complete for r in filled.values()):
            f1, f2 = filled[1].fill, filled[2].fill
            assert f1 is not None and f2 is not None
            open_ts = max(f1.ts, f2.ts) or ex.clock()
            await L.write(ledger_sql.mark_open, p.id, f1.qty, f2.qty, f1.avg_price, f2.avg_price, None, open_ts)
            log.info("event=reconciled position=%d orders_sent -> open (both legs filled)", p.id)
            await _adopt(ex, await L.write(ledger_sql.position, p.id))
            return
        if not filled:
            await L.write(ledger_sql.set_status, p.id, "failed", "no entry leg filled (reconciliation)")
            log.info("event=reconciled position=%d orders_sent -> failed (nothing filled)", p.id)
            await _release(ex, p)
            return
        unwind = [(r.order.leg, r.order.symbol, _opp(r.order.side), r.filled_qty) for r in filled.values()]
        await L.incident("half_open", "a half-open entry found at reconciliation: unwinding "
                         + ", ".join(f"{q} {s}" for _, s, _, q in unwind), pair=key, position_id=p.id)
        if await ex._unwind(p.id, unwind, key):  # noqa: SLF001
            await L.write(ledger_sql.set_status, p.id, "unwound", "half-open at reconciliation")
            await _release(ex, p)
        else:
            await _hold(ex, p)
        return
    if p.status == "unwinding":
        await _resume_unwind(ex, p)
        return
    if p.status == "closing":
        fills = await ex._drive_close(p, p.close_reason or 1, p.close_z if p.close_z is not None else float("nan"),  # noqa: SLF001
                                      None)
        if fills is None:
            r = await _adopt(ex, p)
            if r is not None:
                from bot.core.executor.executor import restore_pending_close

                restore_pending_close(r, p.close_reason or 1)
            return
        r = ex.runners.get(key)
        await ex._finish_close(r if r is not None and r.position_id == p.id else None, p, fills,  # noqa: SLF001
                               p.close_reason or 1, p.close_z, ex.clock())
        if r is None or r.position_id != p.id:
            await _release(ex, p)
        return
    # open
    want = _expected(p)
    have = {s: venue.get(s, Decimal(0)) for s in (s1, s2)}
    if all(have[s] == want.get(s, Decimal(0)) for s in (s1, s2)):
        r = ex.runners.get(key)
        if initial or r is None or r.position_id != p.id or r.stuck:
            await _adopt(ex, p)
        return
    if all(have[s] == 0 for s in (s1, s2)):
        await L.write(ledger_sql.set_status, p.id, "lost", "the venue holds neither leg")
        await L.incident("lost", f"the venue holds neither leg of position {p.id} (recorded {want}): closed as "
                         "lost, never re-opened", pair=key, position_id=p.id)
        await _release(ex, p)
        return
    gone = [s for s in (s1, s2) if have[s] == 0]
    if gone:
        left = [s for s in (s1, s2) if have[s] != 0]
        unwind = []
        for o in p.orders:
            if o.action == "open" and o.symbol in left and o.filled_qty:
                unwind.append((o.leg, o.symbol, _opp(o.side), min(o.filled_qty, abs(have[o.symbol]))))
        await L.incident("half_open", f"the venue no longer holds {', '.join(gone)} of position {p.id}: unwinding "
                         + ", ".join(f"{q} {s}" for _, s, _, q in unwind), pair=key, position_id=p.id)
        if await ex._unwind(p.id, unwind, key):  # noqa: SLF001
            await L.write(ledger_sql.set_status, p.id, "lost", f"{', '.join(gone)} gone at the venue; rest unwound")
            await _release(ex, p)
        else:
            await _hold(ex, p)
        return
    if p.id not in ex.mismatch_flagged:  # once per position and process
        ex.mismatch_flagged.add(p.id)
        await L.incident("qty_mismatch", f"the venue holds {have}, position {p.id} recorded {want}: adopted as "
                         "recorded; check the account", pair=key, position_id=p.id)
    if initial:
        await _adopt(ex, p)


async def _resume_unwind(ex: Executor, p: PositionRow) -> None:
    """An `unwinding` position: first every entry order still `sent` is resolved (a late
    fill of it is unwound too: a second leg answered after the first was unwound), then
    every unwind is driven to its quantity (new attempts for what is left)."""
    L = ex.L
    key = _key(p)
    late = []
    for leg, o in sorted(p.legs("open").items()):
        if o.status != "sent":
            continue
        res = await L.resolve_leg(o, cancel=True, why="entry order still open while unwinding")
        if res.unresolved is not None:
            await L.incident("leg_unresolved", f"entry order {o.order_link_id} ({o.symbol}) still unresolved while "
                             f"unwinding: {res.unresolved}", pair=key, position_id=p.id, order_link_id=o.order_link_id)
            await _hold(ex, p)
            return
        if res.filled_qty > 0 and not any(u.action == "unwind" and u.leg == leg for u in p.orders):
            late.append((leg, o.symbol, _opp(o.side), res.filled_qty))
    for leg, o in sorted(p.legs("open").items()):
        # a fill recorded by an earlier pass (or process) whose unwind was never planned
        if o.status == "filled" and o.filled_qty and not any(u.action == "unwind" and u.leg == leg for u in p.orders) \
                and all(x[0] != leg for x in late):
            late.append((leg, o.symbol, _opp(o.side), o.filled_qty))
    if late:
        await L.incident("half_open", "an entry order answered late (after its pair was being unwound): unwinding "
                         + ", ".join(f"{q} {s}" for _, s, _, q in late), pair=key, position_id=p.id)
        await L.write(ledger_sql.plan_orders, L.prefix, p.id, None,
                      [(leg, "unwind", 0, sym, side, qty) for leg, sym, side, qty in late])
    if await ex.drive_unwind(await L.write(ledger_sql.position, p.id), key):
        await L.write(ledger_sql.set_status, p.id, "unwound", "unwind completed at reconciliation")
        log.info("event=reconciled position=%d unwinding -> unwound", p.id)
        await _release(ex, p)
    else:
        await _hold(ex, p)


def _opp(side: str) -> str:
    return "Sell" if side == "Buy" else "Buy"


async def _runner_for(ex: Executor, p: PositionRow) -> PairRunner | None:
    from bot.core.executor.executor import spec_from_row

    key = _key(p)
    r = ex.runners.get(key)
    if r is not None:
        return r
    try:
        spec = spec_from_row(p.params, ex.cfg)
    except (ValueError, KeyError, TypeError) as e:
        await ex.L.incident("bad_pair", f"position {p.id}: its parameters are refused ({e}); held, not managed",
                            pair=key, position_id=p.id)
        return None
    r = await ex._make_runner(spec)  # noqa: SLF001
    if r is None:
        return None
    r.retiring = True  # not in the pairs table: exits only, dropped once flat
    ex.runners[key] = r
    return r


async def _adopt(ex: Executor, p: PositionRow) -> PairRunner | None:
    """Manage `p` by its pair's exit rules (a runner in position on its side)."""
    r = await _runner_for(ex, p)
    for s in _syms(p):
        ex.exposed[s] = "/".join(_key(p))
    if r is None:
        return None
    opens = p.legs("open")
    q1 = opens[1].filled_qty if 1 in opens and opens[1].filled_qty else p.qty_1
    q2 = opens[2].filled_qty if 2 in opens and opens[2].filled_qty else p.qty_2
    px1 = p.open_price_1 or (opens[1].avg_price if 1 in opens else None) or Decimal(0)
    px2 = p.open_price_2 or (opens[2].avg_price if 2 in opens else None) or Decimal(0)
    r.restore(p.pos_side, q1, q2, px1, px2, p.open_z)
    r.position_id = p.id
    r.busy = False
    r.stuck = False
    track = getattr(ex.exchange, "track_pair", None)
    if track is not None:
        try:
            track(*_syms(p))
        except ValueError:
            pass  # already tracked
    log.info("event=position_adopted pair=%s position=%d side=%d qty=%s/%s", r.spec.name, p.id, p.pos_side, q1, q2)
    return r


async def _hold(ex: Executor, p: PositionRow) -> None:
    """Not settled: the pair takes no decision until a later reconciliation settles it."""
    for s in _syms(p):
        ex.exposed[s] = "/".join(_key(p))
    r = ex.runners.get(_key(p))
    if r is not None:
        r.position_id = p.id
        r.busy = True
        r.stuck = True


async def _free(ex: Executor, r: PairRunner) -> None:
    """A runner held by a crashed flow whose position is not active (never written, or
    closed by the flow before it crashed): flat again, after the incident cooldown."""
    log.warning("event=runner_freed pair=%s position=%s (held by a crashed flow; no active position)", r.spec.name,
                r.position_id)
    r.busy = False
    r.stuck = False
    if r.machine.position != 0:
        r.closed()
    else:
        r.open_failed()
    key = r.spec.key
    ex.blocked_until[key] = max(ex.blocked_until.get(key, 0.0), ex.clock() + ex.ecfg.incident_cooldown_s)
    await ex._flat(r)  # noqa: SLF001


async def _release(ex: Executor, p: PositionRow, cooldown: bool = True) -> None:
    """The position is settled flat: its pair may trade again (after the incident cooldown)."""
    key = _key(p)
    for s in _syms(p):
        if ex.exposed.get(s) == "/".join(key):
            del ex.exposed[s]
    r = ex.runners.get(key)
    if r is not None and r.position_id in (p.id, None):
        was_open = r.machine.position != 0 or r.stuck
        r.position_id = None
        r.busy = False
        r.stuck = False
        if r.machine.position != 0:
            r.closed()
        elif was_open:
            r.open_failed()
        if cooldown:
            ex.blocked_until[key] = max(ex.blocked_until.get(key, 0.0), ex.clock() + ex.ecfg.incident_cooldown_s)
        await ex._flat(r)  # noqa: SLF001


async def _orphans(ex: Executor, venue: dict[str, Decimal], owned: set[str]) -> None:
    orphans = {s: q for s, q in venue.items() if q != 0 and s not in owned}
    for s in [s for s, who in ex.exposed.items() if who == "orphan" and s not in orphans]:
        del ex.exposed[s]
        ex.orphans_reported.discard(s)
        log.info("event=orphan_gone symbol=%s", s)
    for s, q in sorted(orphans.items()):
        ex.exposed.setdefault(s, "orphan")
        if s in ex.orphans_reported:
            continue
        ex.orphans_reported.add(s)
        await ex.L.incident("orphan", f"the venue holds {q} {s} that no position of this bot owns: left untouched; "
                            "no entry on pairs using it" + (" unless adopted" if ex.ecfg.adopt_orphans else ""),
                            details={"symbol": s, "qty": str(q)})
    if ex.ecfg.adopt_orphans:
        for r in list(ex.runners.values()):
            q1, q2 = orphans.get(r.spec.symbol_1), orphans.get(r.spec.symbol_2)
            if q1 is None or q2 is None or (q1 > 0) == (q2 > 0) or r.position_id is not None or r.busy:
                continue
            r.adopt_pending = (q1, q2)
            await adopt_orphan_now(ex, r)


async def adopt_orphan_now(ex: Executor, r: PairRunner) -> bool:
    """Adopt the orphan legs of `r`'s symbols as an open position at the latest mids (the
    bot does not know the venue's entry prices; its PnL counts from the adoption)."""
    pend = r.adopt_pending
    if pend is None or len(r.quotes) < 2:
        return False
    q1, q2 = pend
    side = 1 if q1 > 0 else 2
    L = ex.L
    quotes = (r.quotes[r.spec.symbol_1], r.quotes[r.spec.symbol_2])
    mids = [(q.bid + q.ask) / 2 for q in quotes]
    from bot.core.executor.executor import _sides, spec_row

    sides = _sides(side)
    legs = [(1, r.spec.symbol_1, sides[0], abs(q1)), (2, r.spec.symbol_2, sides[1], abs(q2))]
    pid, orders = await L.write(ledger_sql.create_intent, L.prefix, f"{r.spec.token_1}_USDT",
                                f"{r.spec.token_2}_USDT", side, abs(q1), abs(q2), r.last_z,
                                {**spec_row(r.spec), "median_length": r.spec.median_length, "adopted": True},
                                ex.mode, legs)
    ts = ex.clock()
    for o, px in zip(orders, mids, strict=True):
        await L.write(ledger_sql.record_fill, Fill(o.order_link_id, o.symbol, o.side, o.qty, px,  # type: ignore[arg-type]
                                                   Decimal(0), ts, "Adopted"))
    await L.write(ledger_sql.mark_open, pid, abs(q1), abs(q2), mids[0], mids[1], r.last_z, ts)
    r.adopt_pending = None
    for s in (r.spec.symbol_1, r.spec.symbol_2):
        ex.orphans_reported.discard(s)
    await L.incident("orphan_adopted", f"orphan legs {q1} {r.spec.symbol_1} / {q2} {r.spec.symbol_2} adopted as "
                     f"position {pid} at the mids {mids[0]} / {mids[1]}", pair=r.spec.key, position_id=pid)
    await _adopt(ex, await L.write(ledger_sql.position, pid))
    return True


async def _seed_paper(ex: Executor) -> None:
    """Paper mode: the paper venue lives in the process, so at start it is rebuilt from the
    ledger (every filled order of the active positions); orders the ledger never saw
    filled did not happen there."""
    for p in await ex.L.write(ledger_sql.active_positions, ex.mode):
        for o in p.orders:
            if o.status == "filled" and o.filled_qty and o.avg_price is not None:
                ex.exchange.restore_position(o.symbol, _signed_qty(o.side, o.filled_qty), o.avg_price)  # type: ignore[attr-defined]


def _signed_qty(side: str, qty: Decimal) -> Decimal:
    return qty if side == "Buy" else -qty

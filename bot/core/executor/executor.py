"""The live executor (service.md "Live executor"; docs/executor.md): every row of `pairs`
traded by the backtester's own state machine, both legs placed through a durable order
flow, every anomaly an incident.

Composition: `Executor(pool, exchange, cfg, clock=...)`; `await ex.start()` (advisory
lock, the installation's orderLinkId prefix, instruments, balance, reconciliation,
pairs and their warm-up); then `await ex.on_quote(q)` per quote (or `await ex.run(source)`,
which also follows NOTIFY pairs_changed and reconciles every `executor.reconcile_every_s`).
Order flows run as tasks, one per pair at most; `await ex.drain()` waits for them. The
clock, the exchange and the pool are passed in.

Order of the legs (`executor.leg_order: thinner_first`): the leg whose top-of-book size
on the side we take (the ask for a buy, the bid for a sell) covers our quantity the
fewest times goes first: it is the one most likely to fail or slip, and if it fails
nothing else has been sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from bot.analysis import estimators as est
from bot.analysis.backtesting import SizingParams
from bot.analysis.signals import REASON_LIQUIDATION, S_PEND, S_REASON, SignalParams
from bot.config.model import BotConfig
from bot.core.db import positions as ledger_sql
from bot.core.db.market import pair_quote_ticks, read_bars, read_quotes
from bot.core.db.positions import OrderRow, PositionRow, TradeRow
from bot.core.db.selection import read_pairs
from bot.core.exchange.interface import Exchange, ExchangeError, Fill, Instrument, Quote
from bot.core.exchange.rounding import round_qty
from bot.core.executor.legs import DB_ERRORS, Ledger, LegResult
from bot.core.executor.pair import Entry, Exit, PairRunner, PairSpec

log = logging.getLogger("bot.executor")

EXECUTOR_LOCK = 0x626F7465  # "bote": with hashtext(mode), one executor per database and mode (a replay runs beside)
REDUCE_ONLY_NOTHING = 110017  # reduce-only rejected: the venue holds nothing to reduce


class ReconcileError(RuntimeError):
    """Reconciliation could not be done (the venue did not answer): do not trade."""


class ExecutorBusy(RuntimeError):
    """Another executor of this mode trades from this database."""


class QuoteSource(Protocol):
    async def get(self) -> Quote: ...

    async def set_symbols(self, symbols: set[str] | list[str]) -> None: ...


def _sides(pos_side: int) -> tuple[str, str]:
    """Entry sides of (leg 1, leg 2): long spread buys token_1 and sells token_2."""
    return ("Buy", "Sell") if pos_side == 1 else ("Sell", "Buy")


def _opposite(side: str) -> str:
    return "Sell" if side == "Buy" else "Buy"


def _signed(side: str, qty: Decimal) -> Decimal:
    return qty if side == "Buy" else -qty


def spec_from_row(row: dict[str, Any], cfg: BotConfig) -> PairSpec:
    """A `pairs` row as a PairSpec; ValueError naming the problem (a parameter set the state
    machine refuses, an unknown method). Thresholds symmetric as in the notebook; the
    stop-loss, sides and tick median from config; latency 0 (live latency is real)."""
    s = cfg.strategy
    t1, t2 = str(row["token_1"]).removesuffix("_USDT"), str(row["token_2"]).removesuffix("_USDT")
    tin, tout = float(row["thresh_in"]), float(row["thresh_out"])
    signal = SignalParams(-tin, -tout, tin, tout, s.long_possible, s.short_possible, str(row["open_method"]),
                          str(row["close_method"]), float(row["dist_in"]), float(row["dist_out"]), s.sl_std,
                          s.sl_dist, s.sl_seconds, s.sl_method, 0.0)
    wind = int(row["wind"])
    if wind < 2:
        raise ValueError(f"wind: must be >= 2 bars (got {wind})")
    if row["spr_method"] not in ("dist", "lr"):
        raise ValueError(f"spr_method: must be dist or lr (got {row['spr_method']!r})")
    key = tuple(str(row.get(k)) for k in ("tf", "wind", "spr_method", "thresh_in", "thresh_out", "open_method",
                                         "close_method", "dist_in", "dist_out"))
    return PairSpec(t1, t2, str(row["tf"]), wind, str(row["spr_method"]), s.median_length, signal, key)


def spec_row(spec: PairSpec) -> dict[str, Any]:
    """The pairs-row fields of a spec (kept in positions.params, so a pair removed from
    `pairs` while open can be rebuilt after a restart)."""
    sig = spec.signal
    return {"token_1": f"{spec.token_1}_USDT", "token_2": f"{spec.token_2}_USDT", "tf": spec.tf,
            "wind": spec.wind, "spr_method": spec.spr_method, "thresh_in": sig.thresh_high_in,
            "thresh_out": sig.thresh_high_out, "open_method": sig.open_method, "close_method": sig.close_method,
            "dist_in": sig.dist_in, "dist_out": sig.dist_out}


class Executor:
    def __init__(self, pool: asyncpg.Pool, exchange: Exchange, cfg: BotConfig, *,
                 clock: Callable[[], float] = time.time, mode: str | None = None):
        self.pool = pool
        self.exchange = exchange
        self.cfg = cfg
        self.ecfg = cfg.executor
        self.clock = clock
        self.mode = mode or cfg.exchange.mode
        self.paper = self.mode != "live"
        self.ledger: Ledger | None = None
        self.runners: dict[tuple[str, str], PairRunner] = {}
        self.pending_specs: dict[tuple[str, str], PairSpec] = {}  # new parameters waiting for the pair to be flat
        self.instruments: dict[str, Instrument] = {}
        self.balance = Decimal(repr(cfg.strategy.balance))
        self.blocked_until: dict[tuple[str, str], float] = {}
        self.exposed: dict[str, str] = {}  # symbol -> who holds it ("pair A/B" or "orphan")
        self.stale_flagged: set[int] = set()
        self.orphans_reported: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stream_healthy: Callable[[], bool] = lambda: True
        self.stats: Counter[str] = Counter()
        self._recv: dict[str, float] = {}
        self._lock_conn: asyncpg.Connection | None = None
        self._paper_liqs = 0
        self.closed_trades: deque[TradeRow] = deque(maxlen=1000)  # the latest, for reports (the table holds all)
        self.flow_gen: Counter[tuple[str, str]] = Counter()  # flows started/ended per pair (reconcile skips moved ones)
        self.mismatch_flagged: set[int] = set()
        self.bad_reported: dict[tuple[str, str], str] = {}
        self.started_at = math.nan
        self._reload_lock = asyncio.Lock()
        self.accepting = True  # False once a stop began: no new order flow starts
        self.close_backoff: dict[int, tuple[float, float]] = {}  # position -> (retry not before, current delay)
        self.close_reported: set[tuple[int, str, Any]] = set()
        self._reconcile_lock = asyncio.Lock()

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        """Lock, prefix, instruments, balance, pairs, then reconcile before trading (a venue
        that does not answer is ReconcileError: a failed position query is not 'flat')."""
        self._lock_conn = await self.pool.acquire()
        if not await self._lock_conn.fetchval("SELECT pg_try_advisory_lock($1::int, hashtext($2))", EXECUTOR_LOCK,
                                              self.mode):
            await self.pool.release(self._lock_conn)
            self._lock_conn = None
            raise ExecutorBusy(f"another executor holds this database's {self.mode} executor lock: one executor per "
                               "database and mode")
        try:
            prefix = await self._lock_conn.fetchval("SELECT link_prefix FROM installation")
            self.ledger = Ledger(self.pool, self.exchange, str(prefix), self.mode, self.ecfg)
            try:
                self.instruments = {i.symbol: i for i in await self.exchange.instruments()}
            except ExchangeError as e:
                raise ReconcileError(f"instruments: {e}") from e
            await self._refresh_balance()
            await self.reload_pairs()  # runners first: reconciliation adopts positions into them
            await self.reconcile(initial=True)
        except BaseException:  # not started (the venue silent, a cancelled start): give the lock back
            await self._unlock()
            self.runners.clear()
            raise
        self.started_at = self.clock()
        log.info("event=executor_started mode=%s pairs=%d open=%d balance=%s prefix=%s", self.mode,
                 len(self.runners), sum(r.position_id is not None for r in self.runners.values()), self.balance,
                 prefix)

    async def stop(self, timeout_s: float = 30.0) -> None:
        await self.drain(timeout_s)
        await self._unlock()

    async def _unlock(self) -> None:
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            try:
                await conn.execute("SELECT pg_advisory_unlock($1::int, hashtext($2))", EXECUTOR_LOCK, self.mode)
            except DB_ERRORS:
                pass
            await self.pool.release(conn)

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for the order flows in flight."""
        while self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)
            if timeout_s is not None:
                break

    @property
    def latencies(self) -> deque[float]:
        """Tick-to-order latency inside the bot, seconds: from the quote entering on_quote to
        the first order of the flow it decided leaving for the venue (its ledger rows written)."""
        return self.L.latencies

    @property
    def L(self) -> Ledger:  # noqa: N802
        assert self.ledger is not None, "Executor.start() first"
        return self.ledger

    async def _refresh_balance(self) -> None:
        """Paper: initial balance + closed profits of this mode (the trades table). Live: the
        wallet's USDT, capped by executor.max_balance (default strategy.balance)."""
        if self.paper:
            profit = await self.L.write(ledger_sql.closed_profit, self.mode)
            self.balance = Decimal(repr(self.cfg.strategy.balance)) + profit
            return
        cap = Decimal(repr(self.ecfg.max_balance if self.ecfg.max_balance is not None else self.cfg.strategy.balance))
        try:
            self.balance = min(await self.exchange.wallet_balance(), cap)
        except ExchangeError as e:
            log.warning("event=balance_unavailable %s; keeping %s", e, self.balance)

    # ------------------------------------------------------------ pairs

    def _sizing(self, spec: PairSpec, bars: list[tuple[float, float, float]]) -> SizingParams:
        s = self.cfg.strategy
        i1, i2 = self.instruments[spec.symbol_1], self.instruments[spec.symbol_2]
        qty_method = s.qty_method
        std_1 = std_2 = 1.0
        if qty_method == "beta_neutral" and spec.spr_method != "lr":
            qty_method = "usdt_neutral"
        if qty_method == "vol_neutral":
            import numpy as np

            ts = np.array([b[0] for b in bars], dtype=float)
            now = ts[-1] + 1 if ts.size else 0.0
            tf_s = spec_tf_s(spec)
            std_1 = est.sizing_vol(ts, np.array([b[1] for b in bars]), now + tf_s, spec.wind, tf_s)
            std_2 = est.sizing_vol(ts, np.array([b[2] for b in bars]), now + tf_s, spec.wind, tf_s)
            if not (math.isfinite(std_1) and math.isfinite(std_2) and std_1 > 0 and std_2 > 0):
                qty_method, std_1, std_2 = "usdt_neutral", 1.0, 1.0
        return SizingParams(s.balance, s.order_size, s.min_order_size, s.leverage, qty_method, std_1, std_2,
                            s.fee_rate, float(i1.qty_step), float(i2.qty_step), float(i1.min_qty), float(i2.min_qty),
                            float(i1.min_notional), float(i2.min_notional), s.maintenance_margin_rate)

    async def _make_runner(self, spec: PairSpec) -> PairRunner | None:
        """A warmed runner, or None with a bad_pair incident (unknown or halted symbol)."""
        for sym in (spec.symbol_1, spec.symbol_2):
            inst = self.instruments.get(sym)
            if inst is None or inst.status != "Trading":
                state = "unknown to the venue" if inst is None else f"not trading ({inst.status})"
                await self._bad_pair(spec.key, f"{sym} is {state}: the pair is not traded")
                return None
        now = self.clock()
        tf_s = spec_tf_s(spec)
        bar_now = math.floor(now / tf_s) * tf_s
        bars, ticks = await self.L.read(_warm_data, spec, bar_now, tf_s, now)
        runner = PairRunner(spec, self._sizing(spec, bars))
        runner.warm(bars, ticks)
        log.info("event=pair_warm pair=%s bars=%d ticks=%d window_complete=%s", spec.name, len(bars), len(ticks),
                 runner.window_complete)
        return runner

    async def _bad_pair(self, key: tuple[str, str], message: str) -> None:
        """A pairs row that cannot be traded: one incident per distinct problem (a reload that
        finds the same problem again stays quiet; a fixed row trades, a new problem is reported)."""
        if self.bad_reported.get(key) == message:
            return
        self.bad_reported[key] = message
        await self.L.incident("bad_pair", message, pair=key)

    async def _refresh_instruments(self) -> None:
        try:
            self.instruments = {i.symbol: i for i in await self.exchange.instruments()}
        except ExchangeError as e:
            log.warning("event=instruments_unavailable %s; keeping the last list", e)

    async def reload_pairs(self, refresh_instruments: bool = False) -> None:
        """Follow the `pairs` table: new pairs start flat (warm-up from bars); a removed pair
        holding a position keeps its parameters and exits by its own rules, then is dropped;
        a pair whose parameters changed while open keeps the old ones until flat. Rows refused
        before are judged again (with the venue's instruments re-read when asked)."""
        async with self._reload_lock:
            await self._reload_pairs(refresh_instruments)

    async def _reload_pairs(self, refresh_instruments: bool) -> None:
        if refresh_instruments:
            await self._refresh_instruments()
        rows = await self.L.write(read_pairs)
        wanted: dict[tuple[str, str], PairSpec] = {}
        for row in rows:
            key = (str(row["token_1"]).removesuffix("_USDT"), str(row["token_2"]).removesuffix("_USDT"))
            try:
                wanted[key] = spec_from_row(row, self.cfg)
            except (ValueError, KeyError, TypeError) as e:
                await self._bad_pair(key, f"pairs row refused: {e}")
        for key in [k for k in self.bad_reported if k not in rows_keys(rows)]:
            del self.bad_reported[key]  # the row is gone: a new one is judged afresh
        for key, spec in wanted.items():
            r = self.runners.get(key)
            if r is None:
                new = await self._make_runner(spec)
                if new is None:
                    continue
                self.bad_reported.pop(key, None)
                if self.runners.get(key) is None:  # reconciliation may have adopted one meanwhile
                    self.runners[key] = new
                else:
                    self.runners[key].retiring = False  # listed: it stays, with these parameters once flat
                    self.pending_specs[key] = spec
            elif r.spec.row != spec.row:
                r.retiring = False  # listed again: it stays, with the new parameters once flat
                if r.position_id is None and not r.busy:
                    r.busy = True  # no decision on the old parameters while the new runner warms up
                    new = await self._make_runner(spec)
                    if new is not None:
                        self.runners[key] = new
                        log.info("event=pair_params_applied pair=%s", spec.name)
                    else:
                        self.runners.pop(key, None)
                else:
                    self.pending_specs[key] = spec
                    log.info("event=pair_params_deferred pair=%s the open position keeps its parameters", spec.name)
            else:
                r.retiring = False
                self.pending_specs.pop(key, None)
        for key, r in list(self.runners.items()):
            if key not in wanted:
                self.pending_specs.pop(key, None)
                if r.position_id is None and not r.busy:
                    del self.runners[key]
                    log.info("event=pair_dropped pair=%s", r.spec.name)
                else:
                    r.retiring = True
                    log.info("event=pair_retiring pair=%s closes by its own rules, then is dropped", r.spec.name)

    @property
    def symbols(self) -> set[str]:
        return {s for r in self.runners.values() for s in (r.spec.symbol_1, r.spec.symbol_2)}

    def _release_symbols(self, runner: PairRunner) -> None:
        for sym in (runner.spec.symbol_1, runner.spec.symbol_2):
            if self.exposed.get(sym) == runner.spec.name:
                del self.exposed[sym]

    async def _flat(self, runner: PairRunner) -> None:
        """The runner became flat: apply deferred parameters or drop a retiring pair."""
        key = runner.spec.key
        runner.position_id = None
        self._release_symbols(runner)
        if runner.retiring:
            self.runners.pop(key, None)
            log.info("event=pair_dropped pair=%s (flat after removal)", runner.spec.name)
        elif key in self.pending_specs:
            runner.busy = True  # no decision on the old parameters while the new runner warms up
            new = await self._make_runner(self.pending_specs.pop(key))
            if new is not None:
                self.runners[key] = new
                log.info("event=pair_params_applied pair=%s (flat)", runner.spec.name)
            else:
                self.runners.pop(key, None)

    # ------------------------------------------------------------ ticks

    def _fresh(self, sym: str, now: float) -> bool:
        t = self._recv.get(sym)
        return t is not None and now - t <= self.ecfg.max_quote_age_s

    def _entry_block(self, r: PairRunner, now: float) -> str | None:
        if r.retiring:
            return "retiring"
        if self.blocked_until.get(r.spec.key, 0) > now:
            return "cooldown"
        if not self.L.db_ok:
            return "db_down"
        if not self.stream_healthy():
            return "stream_down"
        if not r.window_complete:
            return "missing_bar"
        if r.spec.symbol_1 in self.exposed or r.spec.symbol_2 in self.exposed:
            return "exposed_symbol"
        return None

    async def on_quote(self, q: Quote) -> None:
        """One quote: a tick of every pair it belongs to."""
        await self.on_quotes((q,))

    async def on_quotes(self, batch: tuple[Quote, ...] | list[Quote]) -> None:
        """Quotes of one instant (a replay's grid time; live: one quote): all applied first,
        then one tick of every pair they touch, so two legs stamped alike make one tick (as
        the backtester's ts-aligned ticks)."""
        t0 = time.perf_counter()
        now = self.clock()
        on_quote = getattr(self.exchange, "on_quote", None)
        touched: dict[tuple[str, str], PairRunner] = {}
        for q in batch:
            self._recv[q.symbol] = q.received if q.received > 0 else now
            if on_quote is not None:  # the paper venue sees the book first (and may liquidate)
                on_quote(q)
            self.stats["quotes"] += 1
            for r in self.runners.values():
                if r.on_quote(q):
                    touched.setdefault(r.spec.key, r)
        if on_quote is not None:
            self._paper_liquidations()
        q = batch[-1]
        for r in list(touched.values()):
            if self.runners.get(r.spec.key) is not r:
                continue
            if r.adopt_pending is not None:
                from bot.core.executor.reconcile import adopt_orphan_now

                await adopt_orphan_now(self, r)
            fresh = self._fresh(r.spec.symbol_1, now) and self._fresh(r.spec.symbol_2, now)
            self.stats["ticks"] += 1
            decision = r.tick(q.ts, float(self.balance), fresh and self.accepting,
                              self._entry_block(r, now) if fresh else "stale", live_liquidation=not self.paper)
            if decision is None:
                continue
            decision.t0 = t0
            r.busy = True
            self.flow_gen[r.spec.key] += 1
            if isinstance(decision, Entry):
                # reserved now, before any await: no other pair enters on these symbols meanwhile
                for sym in (r.spec.symbol_1, r.spec.symbol_2):
                    self.exposed[sym] = r.spec.name
            flow = self._enter(r, decision) if isinstance(decision, Entry) else self._exit(r, decision)
            if self.paper:
                # the in-process venue fills at the book of this very tick, as the backtester
                # does: the flow completes before the next quote is read
                await self._guard(r, flow)
            else:  # a real venue: the other pairs keep trading while this one's orders are out
                task = asyncio.create_task(self._guard(r, flow), name=f"flow-{r.spec.name}")
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _guard(self, r: PairRunner, flow: Any) -> None:
        try:
            await flow
        except asyncio.CancelledError:
            r.stuck = r.busy  # cut short (shutdown): reconciliation settles what it left
            raise
        except Exception as e:  # a bug must not kill the executor: the pair stays busy, loudly
            log.exception("event=flow_crashed pair=%s", r.spec.name)
            try:
                await self.L.incident("close_failed" if r.position_id else "leg_failed",
                                      f"order flow crashed: {type(e).__name__}: {e}; the pair is held until "
                                      "reconciliation", pair=r.spec.key, position_id=r.position_id)
            finally:
                r.busy = True  # held: reconciliation frees it
                r.stuck = True
        finally:
            self.flow_gen[r.spec.key] += 1

    def _paper_liquidations(self) -> None:
        liqs = getattr(self.exchange, "liquidations", None)
        if liqs is None or len(liqs) == self._paper_liqs:
            return
        for liq in liqs[self._paper_liqs:]:
            for r in self.runners.values():
                if (r.spec.symbol_1, r.spec.symbol_2) == (liq.symbol_1, liq.symbol_2) and r.position_id is not None:
                    r.busy = True
                    self.flow_gen[r.spec.key] += 1
                    task = asyncio.create_task(self._guard(r, self._book_paper_liquidation(r, liq.fills, liq.ts)))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        self._paper_liqs = len(liqs)

    # ------------------------------------------------------------ entry

    def _leg_order(self, entry_qty: tuple[Decimal, Decimal], sides: tuple[str, str],
                   quotes: tuple[Quote, Quote]) -> list[int]:
        if self.ecfg.leg_order == "as_listed":
            return [1, 2]
        cover = []
        for k in (0, 1):
            q = quotes[k]
            size = q.ask_size if sides[k] == "Buy" else q.bid_size
            cover.append(size / entry_qty[k] if entry_qty[k] > 0 else Decimal(0))
        return [1, 2] if cover[0] <= cover[1] else [2, 1]

    async def _enter(self, r: PairRunner, e: Entry) -> None:
        spec, L = r.spec, self.L
        sides = _sides(e.side)
        order = self._leg_order((e.qty_1, e.qty_2), sides, e.quotes)
        syms = (spec.symbol_1, spec.symbol_2)
        qtys = (e.qty_1, e.qty_2)
        legs = [(k, syms[k - 1], sides[k - 1], qtys[k - 1]) for k in order]
        params = {**spec_row(spec), "median_length": spec.median_length}
        try:
            pid, orders = await L.write(ledger_sql.create_intent, L.prefix, f"{spec.token_1}_USDT",
                                        f"{spec.token_2}_USDT", e.side, e.qty_1, e.qty_2, e.z, params, self.mode, legs)
        except asyncpg.UniqueViolationError:
            await L.incident("entry_rejected", "an active position already exists for the pair: no double open",
                             pair=spec.key)
            r.open_failed()
            r.busy = False
            self._release_symbols(r)
            return
        r.position_id = pid
        for s in syms:
            self.exposed[s] = spec.name
        log.info("event=entry_intent pair=%s position=%d side=%d qty=%s/%s z=%.4f", spec.name, pid, e.side,
                 e.qty_1, e.qty_2, e.z)
        first = await L.send_leg(orders[0], (pid, "orders_sent"), tick_t0=e.t0)
        if first.unresolved is not None:
            await self._hold(r, "leg_unresolved", f"leg {orders[0].leg} ({orders[0].symbol}) unresolved: "
                             f"{first.unresolved}; the pair is held until reconciliation", orders[0])
            return
        if first.filled_qty == 0:
            await L.write(ledger_sql.set_status, pid, "failed", "first leg not filled")
            why = first.rejected.message if first.rejected else (first.fill.status if first.fill else "?")
            await L.incident("entry_rejected", f"first leg {orders[0].symbol} not filled ({why}); nothing is open",
                             pair=spec.key, position_id=pid, order_link_id=orders[0].order_link_id)
            await self._entry_failed(r)
            return
        if not first.complete:
            await self._leg_risk(r, pid, [first], f"first leg {orders[0].symbol} partly filled "
                                 f"({first.filled_qty} of {orders[0].qty})")
            return
        second = await L.send_leg(orders[1])
        if second.complete:
            fills = {first.order.leg: first.fill, second.order.leg: second.fill}
            f1, f2 = fills[1], fills[2]
            assert f1 is not None and f2 is not None
            z_fill = r.last_z if self.paper is False else e.z
            await L.write(ledger_sql.mark_open, pid, f1.qty, f2.qty, f1.avg_price, f2.avg_price, z_fill, e.ts)
            r.opened(f1.qty, f2.qty, f1.avg_price, f2.avg_price, z_fill)
            track = getattr(self.exchange, "track_pair", None)
            if track is not None:
                track(spec.symbol_1, spec.symbol_2)
            self.stats["entries"] += 1
            log.info("event=position_open pair=%s position=%d side=%d qty=%s/%s price=%s/%s", spec.name, pid, e.side,
                     f1.qty, f2.qty, f1.avg_price, f2.avg_price)
            r.busy = False
            return
        if second.unresolved is not None:
            what = f"second leg {orders[1].symbol} unanswered ({second.unresolved})"
        elif second.rejected is not None:
            what = f"second leg {orders[1].symbol} rejected ({second.rejected.code}: {second.rejected.message})"
        else:
            what = f"second leg {orders[1].symbol} filled {second.filled_qty} of {orders[1].qty}"
        await self._leg_risk(r, pid, [first, second], what)

    async def _entry_failed(self, r: PairRunner) -> None:
        r.open_failed()
        self.blocked_until[r.spec.key] = self.clock() + self.ecfg.incident_cooldown_s
        r.busy = False
        await self._flat(r)

    async def _hold(self, r: PairRunner, kind: str, message: str, order: OrderRow) -> None:
        """An outcome the venue could not tell: the pair is held (busy) until reconciliation."""
        await self.L.incident(kind, message, pair=r.spec.key, position_id=r.position_id,
                              order_link_id=order.order_link_id)
        r.stuck = True

    async def _leg_risk(self, r: PairRunner, pid: int, results: list[LegResult], what: str) -> None:
        """A failed second leg (or a partial first): unwind every filled quantity at once
        (reduceOnly), record an incident, block the pair for incident_cooldown_s."""
        unwind = [(res.order.leg, res.order.symbol, _opposite(res.order.side), res.filled_qty)
                  for res in results if res.filled_qty > 0]
        unresolved = [res for res in results if res.unresolved is not None]
        await self.L.incident("leg_failed", f"{what}: unwinding {', '.join(f'{q} {s}' for _, s, _, q in unwind) or 'nothing'}"
                              f"{'; an order is still unresolved' if unresolved else ''}", pair=r.spec.key,
                              position_id=pid, details={"unwind": [[leg, s, sd, str(q)] for leg, s, sd, q in unwind]})
        done = await self._unwind(pid, unwind, r.spec.key)
        if unresolved:
            r.stuck = True
            return
        if done:
            await self.L.write(ledger_sql.set_status, pid, "unwound", what)
            await self._entry_failed(r)
        else:
            r.stuck = True

    async def _unwind(self, pid: int, legs: list[tuple[int, str, str, Decimal]], key: tuple[str, str]) -> bool:
        """Close the filled quantities `legs` [(leg, symbol, side, qty)] with reduceOnly
        orders (status unwinding, written with the orders before they leave)."""
        if not legs:
            return True
        L = self.L
        await L.write(ledger_sql.plan_orders, L.prefix, pid, "unwinding",
                      [(leg, "unwind", 0, sym, side, qty) for leg, sym, side, qty in legs])
        return await self.drive_unwind(await L.write(ledger_sql.position, pid), key)

    async def drive_unwind(self, pos: PositionRow, key: tuple[str, str]) -> bool:
        """Drive every leg's unwind to its quantity (the first attempt's qty): a planned or
        sent order is driven (ensure_leg), a partly filled or failed one is followed by a new
        attempt for the rest, at most 3 per call (reconciliation calls again). A reduceOnly
        rejection 110017 means the venue holds nothing there: that leg is flat. True when
        every leg is done; each leg left naked is an `unwind_failed` incident."""
        L = self.L
        ok = True
        for leg in (1, 2):
            mine = [o for o in pos.orders if o.action == "unwind" and o.leg == leg]
            if not mine:
                continue
            target = min(mine, key=lambda o: o.attempt).qty
            done = sum((o.filled_qty or Decimal(0) for o in mine if o.status == "filled"), Decimal(0))
            why = ""
            for _ in range(3):
                rest = target - done
                if rest <= 0:
                    break
                newest = max(mine, key=lambda o: o.attempt)
                if newest.status in ("planned", "sent"):
                    order = newest
                else:
                    [order] = await L.write(ledger_sql.plan_orders, L.prefix, pos.id, None,
                                            [(leg, "unwind", newest.attempt + 1, newest.symbol, newest.side, rest)])
                    mine.append(order)
                res = await L.ensure_leg(order)
                if res.filled_qty > 0:
                    order.status = "filled"
                    order.filled_qty = res.filled_qty
                    done += res.filled_qty
                    continue
                if res.rejected is not None and res.rejected.code == REDUCE_ONLY_NOTHING:
                    order.status = "rejected"
                    log.warning("event=unwind_flat position=%d link=%s the venue holds nothing to reduce on %s: "
                                "that leg is flat", pos.id, order.order_link_id, order.symbol)
                    done = target
                    break
                order.status = "sent" if res.unresolved else "rejected" if res.rejected else "cancelled"
                why = res.unresolved or (f"{res.rejected.code}: {res.rejected.message}" if res.rejected
                                         else "nothing filled")
                if res.unresolved or res.rejected:
                    break
            if done < target:
                ok = False
                await L.incident("unwind_failed", f"unwind of {mine[0].symbol}: {done} of {target} done ({why}): THE "
                                 "LEG IS NAKED; reconciliation retries", pair=key, position_id=pos.id,
                                 order_link_id=mine[-1].order_link_id)
        return ok

    # ------------------------------------------------------------ exit

    async def _exit(self, r: PairRunner, x: Exit) -> None:
        pid = r.position_id
        assert pid is not None
        now = self.clock()
        wait = self.close_backoff.get(pid)
        if wait is not None and now < wait[0]:
            r.busy = False  # a failed close backs off: the pending close is retried after the wait
            return
        pos = await self.L.write(ledger_sql.position, pid)
        done = await self._drive_close(pos, x.reason, x.z, x.quotes, x.t0)
        if done is None:
            delay = min(60.0, wait[1] * 2) if wait is not None else self.ecfg.close_retry_s
            self.close_backoff[pid] = (self.clock() + delay, delay)
            log.warning("event=close_retry pair=%s position=%d in %.1f s", r.spec.name, pid, delay)
            r.busy = False  # the machine keeps its pending close: a fresh tick after the wait retries
            return
        self.close_backoff.pop(pid, None)
        await self._finish_close(r, pos, done, x.reason, x.z, x.ts)

    async def _close_incident(self, pos: PositionRow, kind: str, cause: Any, message: str, link: str) -> None:
        """One incident per position, kind and cause (a close retried every few seconds must not
        file one per attempt)."""
        mark = (pos.id, kind, cause)
        if mark in self.close_reported:
            log.warning("event=%s_again position=%d %s", kind, pos.id, message)
            return
        self.close_reported.add(mark)
        await self.L.incident(kind, message, pair=_key(pos), position_id=pos.id, order_link_id=link)

    async def _drive_close(self, pos: PositionRow, reason: int, z: float, quotes: tuple[Quote, Quote] | None,
                           tick_t0: float | None = None) -> dict[int, list[Fill]] | None:
        """Close both legs (reduceOnly, the position's quantities), resuming any close orders
        already written; the close fills per leg, or None when not done yet."""
        L = self.L
        sides = _sides(pos.pos_side)
        qty = {1: pos.qty_1, 2: pos.qty_2}
        syms = {1: f"{pos.token_1.removesuffix('_USDT')}USDT", 2: f"{pos.token_2.removesuffix('_USDT')}USDT"}
        closes = [o for o in pos.orders if o.action == "close"]
        if pos.status != "closing":  # written before the first close order leaves
            await L.write(ledger_sql.plan_orders, L.prefix, pos.id, "closing", [], close_reason=reason, close_z=z)
        filled: dict[int, list[Fill]] = {1: [], 2: []}
        residual: set[int] = set()  # legs whose rest cannot be sent at the instrument's current qtyStep
        gone: set[int] = set()  # legs the venue no longer holds (110017)
        for o in closes:
            f = o.fill()
            if f is not None:
                filled[o.leg].append(f)
        legs = [1, 2]
        if quotes is not None:
            legs = self._leg_order((qty[1], qty[2]), (_opposite(sides[0]), _opposite(sides[1])), quotes)
        incomplete = False
        for leg in legs:
            for _ in range(3):
                rest = qty[leg] - sum((f.qty for f in filled[leg]), Decimal(0))
                if rest <= 0:
                    break
                newest = max((o for o in closes if o.leg == leg), key=lambda o: o.attempt, default=None)
                if newest is not None and newest.status == "rejected" and newest.error_code == REDUCE_ONLY_NOTHING:
                    gone.add(leg)  # known gone (an earlier attempt): not sent again
                    break
                if newest is not None and newest.status in ("planned", "sent"):
                    order = newest
                else:
                    inst = self.instruments.get(syms[leg])
                    send_qty = rest
                    if inst is not None and round_qty(rest, inst.qty_step) != rest:
                        send_qty = round_qty(rest, inst.qty_step)
                        if send_qty <= 0 and filled[leg]:  # the rest the incident already named
                            residual.add(leg)
                            break
                        await L.incident("instrument_changed", f"{syms[leg]} qtyStep is now {inst.qty_step}: the "
                                         f"position's {rest} is not a multiple; closing {send_qty}, "
                                         f"{rest - send_qty} stays at the venue (close it by hand)",
                                         pair=(pos.token_1.removesuffix("_USDT"), pos.token_2.removesuffix("_USDT")),
                                         position_id=pos.id)
                        if send_qty <= 0:  # nothing closable at the new step: the rest stays, flagged
                            residual.add(leg)
                            break
                    attempt = 0 if newest is None else newest.attempt + 1
                    [order] = await L.write(ledger_sql.plan_orders, L.prefix, pos.id, None,
                                            [(leg, "close", attempt, syms[leg], _opposite(sides[leg - 1]), send_qty)],
                                            close_reason=reason, close_z=z)
                    closes.append(order)
                res = await L.ensure_leg(order, tick_t0)
                tick_t0 = None  # the first order out only
                order.status = "filled" if res.fill is not None and res.fill.qty > 0 else \
                    ("sent" if res.unresolved else "rejected" if res.rejected else "cancelled")
                if res.rejected is not None:
                    order.error_code = res.rejected.code
                if res.fill is not None and res.fill.qty > 0:
                    filled[leg].append(res.fill)
                    continue
                if res.unresolved is not None:
                    await self._close_incident(pos, "close_failed", "unresolved", f"close of {syms[leg]} unresolved "
                                               f"({res.unresolved}); retrying", order.order_link_id)
                    break
                if res.rejected is not None and res.rejected.code == REDUCE_ONLY_NOTHING:
                    await self._close_incident(pos, "lost", leg, f"closing {syms[leg]}: the venue holds nothing to "
                                               "reduce (110017); that leg was closed outside the bot; the other leg "
                                               "is still closed", order.order_link_id)
                    gone.add(leg)
                    break
                if res.rejected is not None:
                    await self._close_incident(pos, "close_failed", res.rejected.code, f"close of {syms[leg]} "
                                               f"rejected ({res.rejected.code}: {res.rejected.message}); retried "
                                               "with back-off (executor.close_retry_s)", order.order_link_id)
                    break
            rest = qty[leg] - sum((f.qty for f in filled[leg]), Decimal(0))
            if rest > 0 and leg not in residual and leg not in gone:
                incomplete = True  # the other leg is still closed meanwhile; this one is retried
        if incomplete:
            return None
        if gone:  # no trade row from a leg whose close the bot never saw: lost, its fills kept in orders
            await L.write(ledger_sql.set_status, pos.id, "lost", f"{', '.join(syms[k] for k in sorted(gone))} gone "
                          "at the venue; the rest closed")
            return {}
        return filled

    async def _finish_close(self, r: PairRunner | None, pos: PositionRow, fills: dict[int, list[Fill]],
                            reason: int, z: float | None, ts: float) -> None:
        if not fills:  # lost
            if r is not None:
                r.closed()
                r.busy = False
                await self._flat(r)
            return
        trade = trade_row(pos, fills, reason, z, ts, self.mode)
        if not await self.L.write(ledger_sql.close_position, trade):
            log.warning("event=close_skipped position=%d was no longer closing (closed by another path): no "
                        "second trades row", pos.id)
        else:
            self.closed_trades.append(trade)
        untrack = getattr(self.exchange, "untrack_pair", None)
        if untrack is not None:
            untrack(f"{pos.token_1.removesuffix('_USDT')}USDT", f"{pos.token_2.removesuffix('_USDT')}USDT")
        self.stats["exits"] += 1
        log.info("event=position_closed pair=%s position=%d reason=%d profit=%s fees=%s", _name(pos), pos.id, reason,
                 trade.total_profit, trade.fees)
        await self._refresh_balance()
        if r is not None:
            if reason == REASON_LIQUIDATION:
                r.liquidated()
            else:
                r.closed()
            r.busy = False
            await self._flat(r)

    async def _book_paper_liquidation(self, r: PairRunner, fills: tuple[Fill, Fill], ts: float) -> None:
        """The paper venue liquidated the pair (strategy.md section 4): its fills become the
        close orders of the position (under our orderLinkIds) and the trade, reason 4."""
        pid = r.position_id
        assert pid is not None
        L = self.L
        pos = await L.write(ledger_sql.position, pid)
        planned = await L.write(ledger_sql.plan_orders, L.prefix, pid, "closing",
                                [(k, "close", 90, f.symbol, f.side, f.qty) for k, f in ((1, fills[0]), (2, fills[1]))],
                                close_reason=REASON_LIQUIDATION, close_z=r.last_z)
        booked: dict[int, list[Fill]] = {}
        for k, (o, f) in enumerate(zip(planned, fills, strict=True), start=1):
            mine = Fill(o.order_link_id, f.symbol, f.side, f.qty, f.avg_price, f.fee, f.ts, f.status)
            await L.write(ledger_sql.record_fill, mine)
            booked[k] = [mine]
        await L.incident("liquidation", f"the paper venue liquidated the pair at {ts}", pair=r.spec.key,
                         position_id=pid)
        await self._finish_close(r, pos, booked, REASON_LIQUIDATION, r.last_z, ts)

    # ------------------------------------------------------------ reconciliation

    async def reconcile(self, initial: bool = False) -> None:
        from bot.core.executor.reconcile import reconcile

        await reconcile(self, initial)

    async def run(self, source: QuoteSource, dsn: str | None = None, stop: asyncio.Event | None = None) -> None:
        """Trade until `stop` is set: quotes from `source`, pairs followed on NOTIFY
        pairs_changed (a dedicated connection to `dsn`, or a pooled one), reconciliation
        every reconcile_every_s, stale positions flagged."""
        stop = stop or asyncio.Event()
        await source.set_symbols(self.symbols)
        healthy = getattr(source, "healthy", None)
        if healthy is not None:
            self.stream_healthy = lambda: bool(source.healthy)  # type: ignore[attr-defined]
        aux = [asyncio.create_task(self._listen(source, dsn)), asyncio.create_task(self._periodic())]
        try:
            while not stop.is_set():
                get = asyncio.create_task(source.get())
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({get, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    stopper.cancel()
                    q = get.result()
                    try:
                        await self.on_quote(q)
                    except Exception:  # one bad quote or a bug in one pair must not stop trading
                        self.stats["quote_errors"] += 1
                        log.exception("event=quote_failed symbol=%s", q.symbol)
                else:
                    get.cancel()
        finally:
            for t in aux:
                t.cancel()
            await asyncio.gather(*aux, return_exceptions=True)

    async def _periodic(self) -> None:
        every = self.ecfg.reconcile_every_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(every, 1.0))
            try:
                self.flag_stale()
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    await self.reconcile()
            except ReconcileError as e:
                log.error("event=reconcile_failed %s (entries continue to be refused on unknown state)", e)
            except Exception as e:  # a bug must not stop reconciliation for good
                log.exception("event=periodic_crashed")
                await self._incident_safe("reconcile_failed", f"periodic reconciliation crashed: "
                                          f"{type(e).__name__}: {e}; retried at the next period")

    async def _incident(self, kind: str, message: str, **kw: Any) -> None:
        await self.L.incident(kind, message, **kw)

    async def _incident_safe(self, kind: str, message: str, **kw: Any) -> None:
        """An incident from a crash handler: bounded, and never raising itself."""
        try:
            await asyncio.wait_for(self.L.incident(kind, message, **kw), 10.0)
        except Exception:
            log.exception("event=incident_unrecorded kind=%s %s", kind, message)

    def flag_stale(self) -> None:
        now = self.clock()
        for r in self.runners.values():
            if r.position_id is None:
                continue
            since = self.started_at if math.isfinite(self.started_at) else now  # no quote yet: stale since start
            ages = [now - self._recv.get(s, since) for s in (r.spec.symbol_1, r.spec.symbol_2)]
            if r.position_id in self.stale_flagged:
                if max(ages) <= self.ecfg.max_quote_age_s:  # fresh again: a later staleness is flagged anew
                    self.stale_flagged.discard(r.position_id)
                    log.info("event=stale_resolved pair=%s position=%d", r.spec.name, r.position_id)
                continue
            if max(ages) > self.ecfg.stale_exit_s:
                self.stale_flagged.add(r.position_id)
                task = asyncio.create_task(self._incident_safe(
                    "stale_position", f"no fresh quote for {max(ages):.0f} s (stale_exit_s "
                    f"{self.ecfg.stale_exit_s:.0f}): the position is held, not closed blindly; exits resume on fresh "
                    "quotes", pair=r.spec.key, position_id=r.position_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _listen_once(self, conn: asyncpg.Connection, source: QuoteSource) -> None:
        """Follow NOTIFY pairs_changed on one connection until it is lost."""
        changed, lost = asyncio.Event(), asyncio.Event()

        def on_notice(*_: Any) -> None:
            changed.set()

        await conn.add_listener("pairs_changed", on_notice)
        conn.add_termination_listener(lambda *_: lost.set())
        changed.set()  # a notice may have been missed while not listening
        try:
            while not lost.is_set():
                if changed.is_set():
                    changed.clear()
                    await self.reload_pairs(refresh_instruments=True)
                    await source.set_symbols(self.symbols)
                try:
                    await asyncio.wait_for(changed.wait(), 5.0)
                except TimeoutError:
                    await conn.fetchval("SELECT 1")
        finally:
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.remove_listener("pairs_changed", on_notice), 2.0)
                except Exception:  # the connection is going away anyway
                    pass

    async def _listen(self, source: QuoteSource, dsn: str | None) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await (asyncpg.connect(dsn) if dsn else self.pool.acquire())
                await self._listen_once(conn, source)
            except DB_ERRORS as e:
                log.warning("event=pairs_listener_lost %s; reconnecting", type(e).__name__)
            except Exception as e:  # a bug in a reload must not end pair following for good
                log.exception("event=pairs_listener_crashed")
                await self._incident_safe("bad_pair", f"following the pairs table crashed: {type(e).__name__}: {e}; "
                                          "retrying")
            finally:
                if conn is not None:
                    try:
                        if dsn:
                            await asyncio.wait_for(conn.close(), 2.0)
                        else:
                            await self.pool.release(conn)
                    except Exception:
                        conn.terminate()
            await asyncio.sleep(self.ecfg.db_retry_s)


def rows_keys(rows: list[Any]) -> set[tuple[str, str]]:
    return {(str(r["token_1"]).removesuffix("_USDT"), str(r["token_2"]).removesuffix("_USDT")) for r in rows}


def spec_tf_s(spec: PairSpec) -> int:
    from bot.analysis.zscore import tf_seconds

    return tf_seconds(spec.tf)


def _key(pos: PositionRow) -> tuple[str, str]:
    return (pos.token_1.removesuffix("_USDT"), pos.token_2.removesuffix("_USDT"))


def _name(pos: PositionRow) -> str:
    return "/".join(_key(pos))


def trade_row(pos: PositionRow, closes: dict[int, list[Fill]], reason: int, close_z: float | None, close_ts: float,
              mode: str) -> TradeRow:
    """The trades row of a closed position from the venue's fills (strategy.md section 4, in
    Decimal): per leg the open fill and the close fills (volume-weighted), fees_i = the leg's
    open and close fees as the venue charged them, profit_i = side_i (close_i - open_i)
    qty_i - fees_i with qty_i the closed quantity (below the open one only when an
    instrument change left a residual, which its incident names; funding is not in the
    fills: 0)."""
    opens = {o.leg: o for o in pos.orders if o.action == "open" and o.status == "filled"}
    s1 = Decimal(1) if pos.pos_side == 1 else Decimal(-1)
    out: dict[str, Any] = {}
    for leg, sign in ((1, s1), (2, -s1)):
        o = opens[leg]
        assert o.filled_qty is not None and o.avg_price is not None
        qty = sum((f.qty for f in closes[leg]), Decimal(0))
        close_px = sum((f.qty * f.avg_price for f in closes[leg]), Decimal(0)) / qty if qty else o.avg_price
        fees = (o.fee or Decimal(0)) + sum((f.fee for f in closes[leg]), Decimal(0))
        out[f"qty_{leg}"] = o.filled_qty
        out[f"open_price_{leg}"] = o.avg_price
        out[f"close_price_{leg}"] = close_px
        out[f"fees_{leg}"] = fees
        out[f"profit_{leg}"] = sign * (close_px - o.avg_price) * qty - fees  # the closed qty (a residual: less)
    return TradeRow(pos.id, pos.token_1, pos.token_2, float(pos.open_ts or 0.0), float(close_ts), pos.pos_side,
                    out["qty_1"], out["qty_2"], out["open_price_1"], out["close_price_1"], out["open_price_2"],
                    out["close_price_2"], out["fees_1"], out["fees_2"], out["profit_1"], out["profit_2"], reason,
                    pos.open_z, close_z, mode)


async def _warm_data(conn: Any, spec: PairSpec, bar_now: float, tf_s: int, now: float
                     ) -> tuple[list[tuple[float, float, float]], list[tuple[float, float, float]]]:
    """The W completed bars before the current bar (both legs, aligned) and the last
    median_length pair ticks before `now` (from the quotes table), for PairRunner.warm."""
    import datetime as dt

    import polars as pl

    from bot.core.db.market import bars_wide

    lo = dt.datetime.fromtimestamp(bar_now - 2 * spec.wind * tf_s, dt.UTC)
    hi = dt.datetime.fromtimestamp(bar_now, dt.UTC)
    long = await read_bars(conn, [spec.symbol_1, spec.symbol_2], spec.tf, lo, hi)
    bars: list[tuple[float, float, float]] = []
    if long.height:
        wide = bars_wide(long, [spec.token_1, spec.token_2]).tail(spec.wind)
        bars = [(float(t), float(a), float(b)) for t, a, b in
                zip(wide["ts"], wide[spec.token_1], wide[spec.token_2], strict=True)]
    ticks: list[tuple[float, float, float]] = []
    if spec.median_length > 1:
        qlo = dt.datetime.fromtimestamp(max(bar_now - tf_s, now - 86_400), dt.UTC)
        quotes = await read_quotes(conn, [spec.symbol_1, spec.symbol_2], qlo, dt.datetime.fromtimestamp(now, dt.UTC))
        if quotes.height:
            qt = pair_quote_ticks(quotes, spec.token_1, spec.token_2).tail(spec.median_length - 1)
            ticks = [(float(t), float(a), float(b)) for t, a, b in
                     zip(qt["ts"], qt[spec.token_1], qt[spec.token_2], strict=True)]
    _ = pl
    return bars, ticks


def restore_pending_close(r: PairRunner, reason: int) -> None:
    """A position found `closing`: the machine in position with its close pending (the next
    fresh tick retries the close)."""
    st = r.machine._st  # noqa: SLF001
    st[S_PEND] = 3.0
    st[S_REASON] = float(reason)

"""`bot run`: the service's composition root (service.md "Service and deploy"; docs/service.md).

One asyncio process, one Postgres pool, composed here and nowhere else:

    config check -> migrations -> instruments -> executor (lock, reconciliation) ->
    quote stream (the pairs' symbols + the reference symbols) -> recorder -> executor
    trading -> scheduler (re-selection, bars, instruments, optional retraining)

then READY=1 (systemd), WATCHDOG=1 while the event loop, the stream and Postgres are
healthy, a heartbeat row in `service_runs` and a STATUS= line every `service.heartbeat_s`.

Signals: SIGTERM / SIGINT stop new order flows, let those in flight resolve (bounded by
`service.shutdown_timeout_s`), flush the recorder, record the stop and exit 0; open
positions stay open (the next start adopts them). SIGHUP re-reads config.yaml: a bad file
is refused with every problem logged and the old config kept; the keys that apply live
are listed in `LIVE_SECTIONS`, the others need a restart (`RESTART_SECTIONS`).

A failing job or a venue outage never ends the process (the scheduler records the job's
failure; the executor refuses entries on stale data; reconciliation retries). What it
cannot survive (a crashed core task, no instruments at all) ends it with one clear line
and exit code 1, for systemd to restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot.config import BotConfig, ConfigError, load
from bot.core.db import service_runs
from bot.core.exchange.interface import ExchangeError, Instrument, Quote
from bot.core.sdnotify import Notifier

log = logging.getLogger("bot.service")

# config sections applied on SIGHUP, and those read once at start (a change is logged as needing a restart)
LIVE_SECTIONS = ("strategy", "selection", "model", "schedule", "executor", "service", "research", "compute")
RESTART_SECTIONS = ("database", "exchange", "data", "paths")

EXIT_OK, EXIT_FATAL = 0, 1


class FatalError(RuntimeError):
    """The service cannot go on: one line, exit 1 (systemd restarts it)."""


# ------------------------------------------------------------------ quote fan-out

class HubSource:
    """One consumer's view of the shared stream (the QuoteSource protocol): its own queue
    and its own wanted symbols (the stream subscribes to the union)."""

    def __init__(self, hub: QuoteHub, name: str, maxsize: int):
        self.hub, self.name = hub, name
        self.queue: asyncio.Queue[Quote] = asyncio.Queue(maxsize)
        self.dropped = 0

    async def get(self) -> Quote:
        return await self.queue.get()

    async def set_symbols(self, symbols: set[str] | list[str]) -> None:
        await self.hub.want(self.name, set(symbols))

    @property
    def healthy(self) -> bool:
        return self.hub.healthy

    def put(self, q: Quote) -> None:
        if self.queue.full():  # a slow consumer loses its OLDEST quote, counted, never the newest
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(q)


class QuoteHub:
    """The one quote stream of the process, fanned out to the recorder and the executor."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.sources: dict[str, HubSource] = {}
        self.wanted: dict[str, set[str]] = {}
        self.started = False

    def source(self, name: str, maxsize: int = 10_000) -> HubSource:
        src = HubSource(self, name, maxsize)
        self.sources[name] = src
        return src

    @property
    def symbols(self) -> set[str]:
        return set().union(*self.wanted.values()) if self.wanted else set()

    @property
    def healthy(self) -> bool:
        return bool(getattr(self.stream, "healthy", True))

    async def want(self, name: str, symbols: set[str]) -> None:
        self.wanted[name] = symbols
        if self.started:
            await self.stream.set_symbols(self.symbols)

    async def start(self) -> None:
        await self.stream.start(self.symbols)
        self.started = True

    async def run(self) -> None:
        while True:
            q = await self.stream.get()
            for src in self.sources.values():
                src.put(q)


# ------------------------------------------------------------------ the service

@dataclass
class Health:
    loop_lag_s: float = 0.0
    db_ok: bool = True
    db_checked: float = 0.0


class Service:
    """`bot run` in live or paper mode. `notifier`, `env` and the clock are passed in."""

    def __init__(self, cfg: BotConfig, config_path: str | None, *, notifier: Notifier | None = None,
                 stream_factory: Callable[[BotConfig], Any] | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.stream_factory = stream_factory
        self.stop_event = asyncio.Event()
        self.stop_reason = ""
        self.health = Health()
        self.run_id: int | None = None
        self.db: Any = None
        self.executor: Any = None
        self.recorder: Any = None
        self.scheduler: Any = None
        self.hub: QuoteHub | None = None
        self.reloads = 0
        self.reload_refused = 0

    # -------------------------------------------------------------- signals

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            log.info("event=stop_requested reason=%s", reason)
            self.stop_reason = reason
            self.stop_event.set()

    def reload_config(self) -> bool:
        """SIGHUP: re-read config.yaml; the live sections are applied, a bad file changes nothing."""
        try:
            new = load(self.config_path)
        except (ConfigError, OSError) as e:
            self.reload_refused += 1
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            log.error("event=config_reload_refused problems=%d the old config is kept", len(problems))
            for p in problems:
                log.error("event=config_problem %s", p)
            return False
        old = self.cfg
        restart = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
        if restart:
            log.warning("event=config_needs_restart sections=%s (kept as they were until a restart)",
                        ",".join(restart))
        merged = old.model_copy(update={s: getattr(new, s) for s in LIVE_SECTIONS})
        changed = [s for s in LIVE_SECTIONS if getattr(new, s) != getattr(old, s)]
        self.cfg = merged
        ex = self.executor
        started = ex is not None and ex.ledger is not None and ex.started_at == ex.started_at
        if ex is not None:
            ex.cfg = merged
            ex.ecfg = merged.executor
            if ex.ledger is not None:
                ex.ledger.cfg = merged.executor
        if self.scheduler is not None and changed:
            self._schedule_jobs()  # the jobs' closures hold the config: rebuilt with the new one
        self.reloads += 1
        log.info("event=config_reloaded applied=%s", ",".join(changed) or "nothing changed")
        if started and "strategy" in changed:
            self._respec = asyncio.get_running_loop().create_task(self._apply_strategy())
        return True

    async def _apply_strategy(self) -> None:
        """A new `strategy` section: flat pairs are rebuilt with it (sizing, stop-loss, tick
        median); a pair in position keeps its parameters until it is flat (then rebuilt by the
        next reload)."""
        ex = self.executor
        for key, r in list(ex.runners.items()):
            if r.position_id is None and not r.busy:
                del ex.runners[key]
        await ex.reload_pairs()
        await self._exec_source.set_symbols(ex.symbols)

    def _schedule_jobs(self) -> None:
        from bot.core.scheduler import build_scheduler

        fresh = build_scheduler(self.db, self.cfg)
        for job in self.scheduler.get_jobs():
            job.remove()
        for job in fresh.get_jobs():
            self.scheduler.add_job(job.func, job.trigger, args=job.args, id=job.id, name=job.name, max_instances=1,
                                   coalesce=True, misfire_grace_time=self.cfg.schedule.misfire_grace_s,
                                   replace_existing=True)

    # -------------------------------------------------------------- run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.request_stop, name)
        loop.add_signal_handler(signal.SIGHUP, self.reload_config)
        code = EXIT_OK
        try:
            start = asyncio.create_task(self._start(), name="start")
            stopper = asyncio.create_task(self.stop_event.wait())
            await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not start.done():  # SIGTERM during start-up (a silent venue): stop now, not after the retries
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
            else:
                start.result()
            if not self.stop_event.is_set():
                await self._serve()
        except FatalError as e:
            log.error("event=fatal %s", e)
            print(f"error: {e}", flush=True)
            self.stop_reason, code = f"fatal: {e}", EXIT_FATAL
        except Exception as e:  # a crashed core task: one line, exit 1, systemd restarts the service
            log.exception("event=fatal_crash")
            first = (str(e).splitlines() or [""])[0]
            print(f"error: unexpected {type(e).__name__}: {first}", flush=True)
            self.stop_reason, code = f"fatal: {type(e).__name__}: {first}", EXIT_FATAL
        finally:
            await self._shutdown(code)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return code

    async def _start(self) -> None:
        from bot.core.db.pool import DatabaseUnavailable, open_database
        from bot.core.exchange.factory import quote_stream, trading_exchange
        from bot.core.executor.executor import Executor, ExecutorBusy, ReconcileError
        from bot.core.recorder import QuoteRecorder

        cfg = self.cfg
        self.notifier.status("starting: database")
        try:
            self.db = await open_database(cfg.database)  # migrations applied
        except DatabaseUnavailable as e:
            raise FatalError(f"database: {e}") from e
        async with self.db.pool.acquire() as conn:
            self.run_id = await service_runs.start(conn, cfg.exchange.mode)
        log.info("event=service_start run=%d mode=%s", self.run_id, cfg.exchange.mode)
        self.notifier.status("starting: instruments")
        instruments = await self._instruments()
        exchange = trading_exchange(cfg, instruments)
        self.executor = Executor(self.db.pool, exchange, cfg)
        delay = 1.0
        while True:  # the venue may be down at start: reconcile when it answers (a failed query is not flat)
            self.notifier.status("starting: reconciliation")
            try:
                await self.executor.start()
                break
            except ReconcileError as e:
                log.error("event=start_reconcile_failed %s; retrying in %.0f s", e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                if self.stop_event.is_set():
                    return
                delay = min(delay * 2, 60.0)
            except ExecutorBusy as e:
                raise FatalError(str(e)) from e
        stream = (self.stream_factory or quote_stream)(cfg)
        self.hub = QuoteHub(stream)
        self._exec_source = self.hub.source("executor")
        rec_source = self.hub.source("recorder")
        self.recorder = QuoteRecorder(self.db.pool, rec_source, interval_s=cfg.data.quote_interval_s,
                                      reference=cfg.data.reference_symbols, max_age_s=cfg.data.max_quote_age_s,
                                      buffer_max=cfg.data.recorder_buffer_rows, dsn=self.db.dsn)
        await self.hub.want("executor", self.executor.symbols)
        await self.hub.want("recorder", set(self.recorder.symbols))
        self.notifier.status("starting: quote stream")
        await self.hub.start()

    async def _serve(self) -> None:
        from bot.core.scheduler import build_scheduler

        assert self.hub is not None
        self.scheduler = build_scheduler(self.db, self.cfg)
        self.scheduler.start()
        tasks = {
            asyncio.create_task(self.hub.run(), name="quote-hub"),
            asyncio.create_task(self.recorder.run(), name="recorder"),
            asyncio.create_task(self.executor.run(self._exec_source, self.db.dsn, self.stop_event), name="executor"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._watch_loop(), name="loop-lag"),
            asyncio.create_task(self._watch_db(), name="db-probe"),
        }
        self._tasks = tasks
        async with self.db.pool.acquire() as conn:
            await service_runs.ready(conn, self._run())
        self.notifier.ready(self._status_line())
        log.info("event=service_ready run=%d pairs=%d open=%d", self.run_id, len(self.executor.runners),
                 self._open_count())
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        stopper = asyncio.create_task(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    raise FatalError(f"task {t.get_name()} crashed: {type(t.exception()).__name__}: "
                                     f"{t.exception()}")
                if t is not stopper and t.get_name() == "executor":
                    break  # the executor returns only when asked to stop
        finally:
            watchdog.cancel()
            stopper.cancel()

    def _run(self) -> int:
        assert self.run_id is not None, "the run is recorded at start"
        return self.run_id

    # -------------------------------------------------------------- health

    def _open_count(self) -> int:
        ex = self.executor
        return 0 if ex is None else sum(r.position_id is not None for r in ex.runners.values())

    def _status_line(self) -> str:
        ex = self.executor
        if ex is None:
            return "starting"
        return (f"{ex.mode}: {len(ex.runners)} pairs, {self._open_count()} open, {ex.stats['entries']} entries, "
                f"{ex.stats['exits']} exits, stream {'ok' if self.hub and self.hub.healthy else 'down'}, "
                f"db {'ok' if self.health.db_ok else 'down'}")

    def healthy(self) -> tuple[bool, str]:
        """WATCHDOG=1 is sent only while this holds: the loop answers, the stream and Postgres are up."""
        if self.health.loop_lag_s > self.cfg.service.max_loop_lag_s:
            return False, f"event loop lag {self.health.loop_lag_s:.1f} s"
        if not self.health.db_ok:
            return False, "database down"
        if self.executor is not None and not self.executor.L.db_ok:
            return False, "ledger writes failing"
        if self.hub is not None and self.hub.symbols and not self.hub.healthy:
            return False, "quote stream down"
        return True, "ok"

    async def _watch_loop(self) -> None:
        step = 0.5
        while True:
            t = time.monotonic()
            await asyncio.sleep(step)
            self.health.loop_lag_s = max(0.0, time.monotonic() - t - step)

    async def _watch_db(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.cfg.service.db_check_s):
                    async with self.db.pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
                if not self.health.db_ok:
                    log.warning("event=db_back")
                self.health.db_ok = True
            except Exception as e:  # any failure of the probe is "down"
                if self.health.db_ok:
                    log.error("event=db_down probe failed: %s: %s", type(e).__name__, e)
                self.health.db_ok = False
            self.health.db_checked = time.monotonic()
            await asyncio.sleep(self.cfg.service.db_check_s)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        withheld = False
        while True:
            ok, why = self.healthy()
            if ok:
                self.notifier.watchdog()
                if withheld:
                    log.warning("event=watchdog_resumed")
                withheld = False
            elif not withheld:
                log.error("event=watchdog_withheld %s", why)
                self.notifier.status(f"unhealthy: {why}")
                withheld = True
            await asyncio.sleep(interval)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.service.heartbeat_s)
            line = self._status_line()
            self.notifier.status(line)
            ex = self.executor
            status = {"pairs": len(ex.runners), "open": self._open_count(), "stats": dict(ex.stats),
                      "stream_healthy": bool(self.hub and self.hub.healthy), "db_ok": self.health.db_ok,
                      "recorder": {"written": self.recorder.stats.written, "buffered": self.recorder.buffered,
                                   "dropped": self.recorder.stats.dropped},
                      "executor_queue_dropped": self._exec_source.dropped, "reloads": self.reloads,
                      "skips": {r.spec.name: dict(r.skips) for r in ex.runners.values() if r.skips},
                      "last_z": {r.spec.name: r.last_z for r in ex.runners.values() if r.last_z == r.last_z},
                      "reloads_refused": self.reload_refused}
            try:
                async with asyncio.timeout(5):
                    async with self.db.pool.acquire() as conn:
                        await service_runs.heartbeat(conn, self._run(), ex.balance, status)
            except Exception as e:  # Postgres down: the next beat tries again
                log.warning("event=heartbeat_unrecorded %s: %s", type(e).__name__, e)

    # -------------------------------------------------------------- stop

    async def _shutdown(self, code: int) -> None:
        self.notifier.stopping(f"stopping: {self.stop_reason or 'done'}")
        t_stop = time.monotonic()
        bound = self.cfg.service.shutdown_timeout_s
        ex = self.executor
        if ex is not None:
            ex.accepting = False  # no new order flow from here on
            for t in getattr(self, "_tasks", set()):
                if t.get_name() == "executor" and not t.done():  # a paper flow runs inside it: let it finish
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(t), bound)
            await ex.drain(max(0.1, bound - (time.monotonic() - t_stop)))
            if ex.tasks:
                log.error("event=shutdown_flows_unresolved n=%d after %.0f s: reconciliation settles them at the "
                          "next start", len(ex.tasks), bound)
                for t in list(ex.tasks):
                    t.cancel()
                await asyncio.gather(*ex.tasks, return_exceptions=True)
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                self.scheduler.shutdown(wait=False)
        if self.recorder is not None:
            self.recorder.stop(flush_timeout_s=max(1.0, bound - (time.monotonic() - t_stop)))
        for t in getattr(self, "_tasks", set()):
            if t.get_name() == "recorder":
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(t, max(1.0, bound - (time.monotonic() - t_stop)))
        for t in getattr(self, "_tasks", set()):
            t.cancel()
        await asyncio.gather(*getattr(self, "_tasks", set()), return_exceptions=True)
        if self.hub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.hub.stream.close(), 10)
        if ex is not None and ex.ledger is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ex.stop(1.0), 10)
        if self.db is not None:
            if self.run_id is not None:
                try:
                    async with asyncio.timeout(5):
                        async with self.db.pool.acquire() as conn:
                            await service_runs.stop(conn, self.run_id, self.stop_reason or "stopped", code)
                except Exception as e:
                    log.warning("event=stop_unrecorded %s: %s", type(e).__name__, e)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.db.close(), 15)
        log.info("event=service_stopped reason=%s code=%d in %.1f s", self.stop_reason or "-", code,
                 time.monotonic() - t_stop)
        self.notifier.close()

    async def _instruments(self) -> list[Instrument]:
        """The venue's instruments (refreshing the table), else the table's (a venue outage at
        start is survived when the table has them); none at all is fatal."""
        from bot.core.backfill import refresh_instruments
        from bot.core.exchange.factory import market_client

        try:
            await refresh_instruments(self.db, market_client(self.cfg))
        except (ExchangeError, RuntimeError, OSError) as e:
            log.warning("event=instruments_refresh_failed %s; using the stored table", e)
        inst = await instruments_from_table(self.db)
        if not inst:
            raise FatalError("no instruments: the venue did not answer and the instruments table is empty "
                             "(run `bot data instruments`)")
        return inst


async def instruments_from_table(db: Any) -> list[Instrument]:
    from bot.core.db.market import read_instruments

    frame = await read_instruments(db)

    def dec(v: Any) -> Decimal | None:
        return None if v is None else Decimal(str(v))

    return [Instrument(r["symbol"], Decimal(r["qty_step"]), Decimal(r["min_qty"]), Decimal(r["tick_size"]),
                       dec(r["min_notional"]) or Decimal(0), dec(r["max_mkt_qty"]), dec(r["max_qty"]),
                       r["price_scale"], r["status"] or "Trading") for r in frame.iter_rows(named=True)]



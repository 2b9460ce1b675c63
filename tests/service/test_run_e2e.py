"""`bot run` end to end: a child process against the loopback Bybit fake (REST + websocket)
and a real Postgres, under a NOTIFY_SOCKET the test listens on (as systemd would).

Paper mode: it signals READY=1 after reconciliation and WATCHDOG=1 while healthy, records
quotes and builds bars, opens and closes a pair trade on a spread the test moves at the fake, answers SIGHUP
with a broken config.yaml by keeping the old one, and exits 0 on SIGTERM within the bound
with no half-written rows. Live mode (signed requests to the fake): SIGKILL with a position
open, a restart adopts it, nothing is opened twice, the exit closes it at the venue."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bot.core.db.market import copy_quotes
from tests.executor import live
from tests.fakes.bybit import FakeBybit, Market

pytestmark = pytest.mark.asyncio(loop_scope="session")
REPO = Path(__file__).resolve().parents[2]


def _config(fake: FakeBybit, mode: str) -> str:
    return f"""
strategy: {{tf: 1h, wind: {len(live.SPREADS)}, spr_method: dist, median_length: 1, thresh_in: 2.0, thresh_out: 0.5,
  balance: 1000.0, order_size: 50.0, min_order_size: 0.0, leverage: 2.0, fee_rate: 0.00055, sl_std: 50.0,
  sl_dist: null, sl_seconds: 0.0, maintenance_margin_rate: 0.01}}
exchange: {{mode: {mode}, base_url: "{fake.http_url}", ws_public_url: "{fake.public_ws_url}", http_timeout_s: 3.0,
  max_attempts: 2, stale_stream_s: 5.0}}
executor: {{leg_timeout_s: 3.0, incident_cooldown_s: 600, reconcile_every_s: 3600, db_retry_s: 0.2}}
data: {{quote_interval_s: 1.0}}
service: {{shutdown_timeout_s: 10, heartbeat_s: 1, db_check_s: 1}}
"""


class Notify:
    """The test's NOTIFY_SOCKET: every datagram the child sends, with its arrival time."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:  # read as systemd does, all the time
        while True:
            self.drain()
            await asyncio.sleep(0.05)

    def drain(self) -> list[str]:
        while True:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return [m for _, m in self.got]

    async def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.drain()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s; got {self.drain()[-10:]}")


def _spawn(cfg_file: Path, dsn: str, notify: Notify, log: Path, mode: str, verbose: str = "-v"
           ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BOT_DATABASE_DSN": dsn, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
           "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    if mode == "live":
        env.update({"BYBIT_API_KEY": live.KEY, "BYBIT_API_SECRET": live.SECRET})
    return subprocess.Popen([sys.executable, "-m", "bot.cli.main", verbose, "--config", str(cfg_file), "run"],
                            cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _set_spread(fake: FakeBybit, spread: float) -> None:
    """Move AAA so that log(mid_AAA / mid_BBB) = spread (BBB held at 1.0); the feed pushes it."""
    tick = D("0.0001")
    mid = D(repr(round(math.exp(spread), 4)))
    fake.set_book(live.S2, D("0.9999"), D("1.0001"))
    fake.set_book(live.S1, mid - tick, mid + tick)


async def _wait(db: Any, query: str, want: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        async with db.pool.acquire() as conn:
            got = await conn.fetchval(query)
        if got == want:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the service exited {proc.returncode}: {log.read_text()[-3000:]}")
        await asyncio.sleep(0.2)
    async with db.pool.acquire() as conn:
        beat = await conn.fetchval("SELECT status FROM service_runs ORDER BY id DESC LIMIT 1")
    proc.send_signal(signal.SIGUSR2)  # the stacks of a stuck service, into its log
    await asyncio.sleep(1)
    raise AssertionError(f"{query!r}: {got!r} != {want!r} after {timeout} s; heartbeat {beat}; "
                         f"log: {log.read_text()[-8000:]}")


def _markets() -> list[Market]:
    return [*live.markets(), *(Market(f"{s}USDT", 100.0, "0.001", "0.01", "0.001", "5") for s in ("BTC", "ETH", "SOL"))]


async def _prepare(db: Any) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs, service_runs, quotes RESTART "
                           "IDENTITY CASCADE")
        await live.pairs_row(conn)  # the row the re-selection job writes (token_1/2, tf, wind, thresholds, methods)
    await live.store_bars(db)


async def _stop_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def test_bot_run_paper_trades_reloads_and_stops_cleanly(db: Any, tmp_path: Path) -> None:
    with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        await _prepare(db)
        _set_spread(fake, live.EXIT_SPREAD)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(_config(fake, "paper"))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        # quotes recorded before this start, in the last complete 5-minute bar: the service builds its bars
        b5 = math.floor(time.time() / 300) * 300 - 300
        earlier = [(sym, float(b5 + 10 * k), 1.0, 1.0002) for k in range(30) for sym in (live.S1, live.S2)]
        await copy_quotes(db, pl.DataFrame(earlier, schema=["symbol", "ts", "bid_price", "ask_price"], orient="row")
                          .with_columns(pl.lit(1.0).alias("bid_size"), pl.lit(1.0).alias("ask_size")))
        t0 = time.monotonic()
        proc = _spawn(cfg_file, db.dsn, notify, log, "paper")
        try:
            await notify.wait_for("READY=1", 90)
            ready_s = time.monotonic() - t0
            await _wait(db, "SELECT count(*) > 10 FROM quotes WHERE symbol = 'AAAUSDT' AND ts > now() - interval '1 min'",
                        True, 30, proc, log)  # recording
            await _wait(db, f"SELECT count(*) FROM bars WHERE tf = '5m' AND source = 'quotes' AND symbol = 'AAAUSDT'"
                        f" AND open_time = to_timestamp({b5})", 1, 30, proc, log)  # and building bars
            _set_spread(fake, live.ENTRY_SPREAD)  # z 3.8: the short-spread entry
            await _wait(db, "SELECT status FROM positions ORDER BY id DESC LIMIT 1", "open", 30, proc, log)
            # SIGHUP with a broken file: refused, every problem logged, the old config kept, still trading
            cfg_file.write_text(_config(fake, "paper").replace("thresh_in: 2.0", "thresh_in: -1") + "nonsense: 1\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.5)
            assert proc.poll() is None
            text = log.read_text()
            assert "event=config_reload_refused problems=2" in text, text[-2000:]
            assert "nonsense" in text and "thresh_in" in text
            # a good file: the live sections applied at once, a restart-only change named and kept as it was
            good = _config(fake, "paper").replace("incident_cooldown_s: 600", "incident_cooldown_s: 900")
            cfg_file.write_text(good.replace("http_timeout_s: 3.0", "http_timeout_s: 4.0"))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            text = log.read_text()
            assert "event=config_needs_restart sections=exchange" in text, text[-2000:]
            assert "event=config_reloaded applied=executor" in text
            n_before = len([m for m in notify.drain() if m == "WATCHDOG=1"])
            await asyncio.sleep(1.5)
            assert len([m for m in notify.drain() if m == "WATCHDOG=1"]) >= n_before + 2  # pinging while healthy
            _set_spread(fake, live.EXIT_SPREAD)  # z 0: its exit, by the old (kept) thresholds
            await _wait(db, "SELECT count(*) FROM trades", 1, 30, proc, log)
            _set_spread(fake, live.ENTRY_SPREAD)  # a new entry...
            await _wait(db, "SELECT count(*) FROM positions WHERE status = 'open'", 1, 30, proc, log)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # ...stays open through the stop
            code = proc.wait(30)
            stop_s = time.monotonic() - t_term
        finally:
            await _stop_quietly(proc)
        assert code == 0, log.read_text()[-3000:]
        assert stop_s < 10 + 5, stop_s
        msgs = notify.drain()
        assert any(m.startswith("STOPPING=1") for m in msgs)
        async with db.pool.acquire() as conn:
            statuses = [r["status"] for r in await conn.fetch("SELECT status FROM positions ORDER BY id")]
            loose = await conn.fetchval("SELECT count(*) FROM orders WHERE status IN ('planned', 'sent')")
            run = await conn.fetchrow("SELECT ready_at, stopped_at, stop_reason, exit_code FROM service_runs"
                                      " ORDER BY id DESC LIMIT 1")
            trade = await conn.fetchrow("SELECT reason, pos_side FROM trades")
        assert statuses == ["closed", "open"] and loose == 0  # the open one stays open: adopted at the next start
        assert run["ready_at"] is not None and run["stop_reason"] == "SIGTERM" and run["exit_code"] == 0
        assert (trade["reason"], trade["pos_side"]) == (1, 2)
        print(f"\nstart to READY {ready_s:.1f} s (1 pair), stop on SIGTERM {stop_s:.2f} s")


async def test_bot_run_live_sigkill_with_a_position_open_is_adopted_at_restart(db: Any, tmp_path: Path) -> None:
    with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        await _prepare(db)
        _set_spread(fake, live.EXIT_SPREAD)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(_config(fake, "live"))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        proc = _spawn(cfg_file, db.dsn, notify, log, "live", "-vv")  # DEBUG: pybit logs its request headers
        try:
            await notify.wait_for("READY=1", 90)
            _set_spread(fake, live.ENTRY_SPREAD)
            await _wait(db, "SELECT status FROM positions ORDER BY id DESC LIMIT 1", "open", 30, proc, log)
            # the row is marked open just before the event line is logged: kill after the line
            for _ in range(100):
                if "event=position_open" in log.read_text():
                    break
                await asyncio.sleep(0.1)
            proc.kill()  # SIGKILL mid-trade
            proc.wait(10)
            venue = {s: q for s, q in fake.state.positions.items() if q != 0}
            assert set(venue) == {live.S1, live.S2}
            notify.got.clear()
            proc = _spawn(cfg_file, db.dsn, notify, log, "live")
            await notify.wait_for("READY=1", 90)
            assert "event=position_adopted" in log.read_text()
            await asyncio.sleep(1.0)  # still the entry signal: nothing is opened twice
            async with db.pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM positions") == 1
            assert fake.orders_created == 2
            _set_spread(fake, live.EXIT_SPREAD)
            await _wait(db, "SELECT count(*) FROM trades", 1, 30, proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            await _stop_quietly(proc)
        assert {s: q for s, q in fake.state.positions.items() if q != 0} == {}
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM incidents") == 0
        text = log.read_text()
        assert "level=DEBUG" in text and live.KEY not in text and live.SECRET not in text  # never, even at DEBUG
        assert "event=position_open pair=AAA/BBB position=1" in text  # one line per event, with pair and position


class _Db:
    def __init__(self, pool: Any, dsn: str) -> None:
        self.pool, self.dsn = pool, dsn


async def test_no_watchdog_while_the_database_is_down(tmp_path: Path) -> None:
    """An embedded PostgreSQL the test stops: WATCHDOG=1 stops (systemd would restart the
    service), the STATUS line says why, and the pings resume once the server is back."""
    import asyncpg

    from bot.core.db.migrate import migrate
    from bot.core.db.pool import EmbeddedPostgres, create_pool

    server = EmbeddedPostgres(tmp_path / "pgdata")
    dsn = server.start()
    proc = None
    try:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await conn.close()
        pool = await create_pool(dsn, 1, 2)
        db = _Db(pool, dsn)
        with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
            await _prepare(db)
            await pool.close()
            cfg_file = tmp_path / "config.yaml"
            cfg_file.write_text(_config(fake, "paper"))
            notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
            proc = _spawn(cfg_file, dsn, notify, log, "paper")
            await notify.wait_for("READY=1", 90)
            await asyncio.sleep(1.5)
            assert notify.drain().count("WATCHDOG=1") >= 2
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(3.0)  # the probe (db_check_s 1) notices
            n_down = notify.drain().count("WATCHDOG=1")
            await asyncio.sleep(3.0)
            msgs = notify.drain()
            assert msgs.count("WATCHDOG=1") == n_down, "no WATCHDOG=1 while the database is down"
            assert any(m.startswith("STATUS=unhealthy: database down") for m in msgs), msgs[-5:]
            assert proc.poll() is None  # the outage is survived, not fatal
            await asyncio.to_thread(server.start)
            await asyncio.sleep(4.0)
            assert notify.drain().count("WATCHDOG=1") > n_down  # resumed
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc is not None:
            await _stop_quietly(proc)
        server.stop()


async def test_sigterm_with_an_entry_in_flight_lets_it_resolve_then_exits_0(db: Any, tmp_path: Path) -> None:
    with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        await _prepare(db)
        _set_spread(fake, live.EXIT_SPREAD)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(_config(fake, "live"))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        proc = _spawn(cfg_file, db.dsn, notify, log, "live")
        try:
            await notify.wait_for("READY=1", 90)
            fake.delay_create(1.5, count=2)  # each leg answers 1.5 s late (within leg_timeout_s 3)
            _set_spread(fake, live.ENTRY_SPREAD)
            await _wait(db, "SELECT status FROM positions ORDER BY id DESC LIMIT 1", "orders_sent", 30, proc, log)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            stop_s = time.monotonic() - t_term
        finally:
            await _stop_quietly(proc)
        assert code == 0, log.read_text()[-3000:]
        async with db.pool.acquire() as conn:
            statuses = [r["status"] for r in await conn.fetch("SELECT status FROM positions")]
            loose = await conn.fetchval("SELECT count(*) FROM orders WHERE status IN ('planned', 'sent')")
        assert statuses == ["open"] and loose == 0  # resolved, recorded, and kept open for the next start
        assert {s for s, q in fake.state.positions.items() if q != 0} == {live.S1, live.S2}
        assert 0.5 < stop_s < 10 + 5, stop_s  # it waited for the flow, within service.shutdown_timeout_s
        print(f"\nSIGTERM with an entry in flight: stopped in {stop_s:.2f} s")


async def test_bot_run_trades_the_pair_a_reselection_chose(db: Any, tmp_path: Path) -> None:
    """The whole loop: the demo market (its cointegrated groups mean-revert), the re-selection
    job writes the pairs table, `bot run` (paper, against the fake at the market's latest
    prices) trades the chosen pair with the chosen parameters: an entry on a spread moved
    beyond its thresh_in, the exit on its return to the window's mean."""
    import datetime as dt

    from bot.cli.data_cmds import write_demo_market
    from bot.config import load
    from bot.config.loader import dump_effective, example_path
    from bot.core.db.market import read_bars
    from bot.core.db.selection import read_pairs
    from bot.core.demo_market import generate
    from bot.selection.reselect import reselect

    now = dt.datetime.now(dt.UTC)
    market = generate(n_symbols=9, days=10, quote_interval_s=300.0, seed=5, start=now - dt.timedelta(days=10))
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs, service_runs, quotes, bars,"
                           " instruments RESTART IDENTITY CASCADE")
    await write_demo_market(db, market, tfs=("1h",))
    base = load(example_path())
    with FakeBybit([], api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        cfg = base.model_copy(update={
            "strategy": base.strategy.model_copy(update={"wind": 24, "spr_method": "dist", "min_order_size": 0.0,
                                                         "balance": 1000.0, "sl_std": 50.0, "sl_dist": None}),
            "research": base.research.model_copy(update={"iters": 6, "winds": (24,), "spr_methods": ("dist",),
                                                         "open_methods": ("direct",)}),
            "selection": base.selection.model_copy(update={
                "train_days": 6, "max_pairs": 1, "candidates_file": str(tmp_path / "candidates.txt"),
                "token_pairs_file": str(tmp_path / "token_pairs.txt"),
                "thresholds": base.selection.thresholds.model_copy(update={
                    "pr_rat_ind": -1e9, "pr_rat_all": -1e9, "pr_rat_best": -1e9, "pred": -1e9})}),
            "model": base.model.model_copy(update={"dir": str(tmp_path / "models")}),
            "exchange": base.exchange.model_copy(update={"base_url": fake.http_url,
                                                         "ws_public_url": fake.public_ws_url,
                                                         "http_timeout_s": 3.0, "max_attempts": 2}),
            "executor": base.executor.model_copy(update={"reconcile_every_s": 3600}),
            "data": base.data.model_copy(update={"quote_interval_s": 1.0}),
            "service": base.service.model_copy(update={"shutdown_timeout_s": 10, "heartbeat_s": 1}),
        })
        rep = await reselect(db, cfg, now=market.end)
        assert rep.status == "ok", rep
        async with db.pool.acquire() as conn:
            [row] = await read_pairs(conn)
        t1, t2 = row["token_1"].removesuffix("_USDT"), row["token_2"].removesuffix("_USDT")
        s1, s2 = f"{t1}USDT", f"{t2}USDT"
        # the fake lists every demo symbol at its last recorded book, with the demo's instruments
        last = market.quotes.group_by("symbol").agg(pl.all().sort_by("ts").last())
        inst = {r["symbol"]: r for r in market.instruments.iter_rows(named=True)}
        for r in last.iter_rows(named=True):
            i = inst[r["symbol"]]
            fake.add_market(Market(r["symbol"], (r["bid_price"] + r["ask_price"]) / 2, str(i["qty_step"]),
                                   str(i["tick_size"]), str(i["min_qty"]), str(i["min_notional"] or "5")))
        # the window's mean and std of the bar spread (dist: ln c1 - ln c2), the W bars before this hour
        w = int(row["wind"])
        bar_now = dt.datetime.fromtimestamp(math.floor(time.time() / 3600) * 3600, dt.UTC)
        bars = await read_bars(db, [s1, s2], "1h", bar_now - dt.timedelta(hours=w + 5), bar_now)
        c = bars.pivot(on="symbol", index="ts", values="close").sort("ts").drop_nulls().tail(w)
        spreads = [math.log(a) - math.log(b) for a, b in zip(c[s1], c[s2], strict=True)]
        assert len(spreads) == w
        mean, std = sum(spreads) / w, (sum((x - sum(spreads) / w) ** 2 for x in spreads) / (w - 1)) ** 0.5
        m2 = float(fake.state.markets[s2].bid + fake.state.markets[s2].ask) / 2
        tick1 = D(str(inst[s1]["tick_size"]))

        def move(z: float) -> None:  # leg 1 to the mid giving z against leg 2's current mid
            mid = D(repr(m2 * math.exp(mean + z * std))).quantize(tick1)
            fake.set_book(s1, mid - tick1, mid + tick1)
            fake.set_book(s2, *(fake.state.markets[s2].bid, fake.state.markets[s2].ask))

        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(dump_effective(cfg))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        move(0.0)
        proc = _spawn(cfg_file, db.dsn, notify, log, "paper")
        try:
            await notify.wait_for("READY=1", 90)
            move(float(row["thresh_in"]) + 1.0)  # beyond the chosen entry threshold: a short-spread entry
            await _wait(db, "SELECT status FROM positions ORDER BY id DESC LIMIT 1", "open", 40, proc, log)
            move(0.0)  # back to the window's mean: inside the chosen exit band
            await _wait(db, "SELECT count(*) FROM trades", 1, 40, proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
        finally:
            await _stop_quietly(proc)
        async with db.pool.acquire() as conn:
            trade = await conn.fetchrow("SELECT token_1, token_2, pos_side, reason FROM trades")
        assert (trade["token_1"], trade["token_2"], trade["pos_side"], trade["reason"]) == \
            (row["token_1"], row["token_2"], 2, 1)


async def _instruments_stored(db: Any, fake: FakeBybit) -> None:
    from bot.core.backfill import instruments_frame
    from bot.core.db.market import upsert_instruments
    from bot.core.exchange.interface import Instrument

    await upsert_instruments(db, instruments_frame([
        Instrument(m.symbol, D(m.qty_step), D(m.min_qty), D(m.tick_size), D(m.min_notional))
        for m in fake.state.markets.values()]))


async def test_a_venue_down_at_start_is_retried_not_fatal(db: Any, tmp_path: Path) -> None:
    with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        await _prepare(db)
        await _instruments_stored(db, fake)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(_config(fake, "live"))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        fake.http_status_next(503, 8)  # the instruments refresh, the executor's instruments, a retry: all refused
        proc = _spawn(cfg_file, db.dsn, notify, log, "live")
        try:
            await notify.wait_for("READY=1", 90)
            text = log.read_text()
            assert "event=start_reconcile_failed" in text and "executor lock" not in text, text[-3000:]
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
        finally:
            await _stop_quietly(proc)


async def test_sigterm_during_start_up_stops_at_once(db: Any, tmp_path: Path) -> None:
    with FakeBybit(_markets(), api_key=live.KEY, api_secret=live.SECRET, feed_rate=5.0) as fake:
        await _prepare(db)
        await _instruments_stored(db, fake)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(_config(fake, "live"))
        notify, log = Notify(tmp_path / "notify.sock"), tmp_path / "bot.log"
        fake.delay_all(6.0)  # a venue that hangs (6 s a request, 2 attempts, retries): start-up cannot finish
        proc = _spawn(cfg_file, db.dsn, notify, log, "live")
        try:
            await notify.wait_for("STATUS=starting", 60)
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            stop_s = time.monotonic() - t0
        finally:
            fake.delay_all(0.0)
            await _stop_quietly(proc)
        assert code == 0 and stop_s < 4, (code, stop_s, log.read_text()[-2000:])
        assert not any(m.startswith("READY=1") for m in notify.drain())
        async with db.pool.acquire() as conn:
            run = await conn.fetchrow("SELECT ready_at, stop_reason, exit_code FROM service_runs ORDER BY id DESC"
                                      " LIMIT 1")
        assert run["ready_at"] is None and run["stop_reason"] == "SIGTERM" and run["exit_code"] == 0

"""Service benchmark (issue 14: `bot run`). Run:

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test PYTHONPATH=. .venv/bin/python bench/bench_service.py

(without BOT_DATABASE_DSN: an embedded PostgreSQL; PYTHONPATH=. for the loopback fake in
tests/fakes). Scratch databases, created and dropped. In one run:

1. start to READY=1 with 20 pairs: `bot run` as a child process (paper mode, the loopback
   fake's REST and websocket, 40 symbols + the reference symbols), from the spawn to the
   READY=1 datagram on a NOTIFY_SOCKET (Python start-up, config, migrations, instruments,
   20 warm-ups, reconciliation, the stream's subscriptions), median of 3;
2. stop time on SIGTERM with an entry in flight: live mode, the fake answering each leg
   1.5 s late; SIGTERM as soon as `orders_sent` is written; the time to exit 0 (the flow
   resolves first), median of 3;
3. replay speed: `replay()` (the executor through the paper exchange, quotes read from
   Postgres, the ledger written) against `backtest()` on the same ticks: ticks per second
   and the ratio.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.core.db.market import copy_bars  # noqa: E402
from bot.core.db.scratch import scratch_database, scratch_server  # noqa: E402
from tests.executor import live  # noqa: E402
from tests.fakes.bybit import FakeBybit, Market  # noqa: E402


def _config(fake: FakeBybit, mode: str) -> str:
    return f"""
strategy: {{tf: 1h, wind: {len(live.SPREADS)}, spr_method: dist, median_length: 1, thresh_in: 2.0, thresh_out: 0.5,
  balance: 100000.0, order_size: 50.0, min_order_size: 0.0, leverage: 2.0, fee_rate: 0.00055, sl_std: 50.0,
  sl_dist: null, sl_seconds: 0.0, maintenance_margin_rate: 0.01}}
exchange: {{mode: {mode}, base_url: "{fake.http_url}", ws_public_url: "{fake.public_ws_url}", http_timeout_s: 3.0,
  max_attempts: 2}}
executor: {{leg_timeout_s: 3.0, incident_cooldown_s: 600, reconcile_every_s: 3600}}
service: {{shutdown_timeout_s: 10, heartbeat_s: 1}}
"""


async def _market(db: Any, pairs: list[tuple[str, str]]) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs, service_runs RESTART IDENTITY CASCADE")
        for a, b in pairs:
            await conn.execute(
                "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method,"
                " close_method, dist_in, dist_out) VALUES ($1, $2, '1h', $3, 'dist', 2.0, 0.5, 'direct', 'direct', 0,"
                " 0)", f"{a}_USDT", f"{b}_USDT", len(live.SPREADS))
    bar_now = math.floor(time.time() / 3600) * 3600
    rows = []
    for a, b in pairs:
        for k, s in enumerate(live.SPREADS):
            t = float(bar_now - (len(live.SPREADS) - k) * 3600)
            for sym, c in ((f"{a}USDT", math.exp(s)), (f"{b}USDT", 1.0)):
                rows.append({"symbol": sym, "open_time": t, "open": c, "high": c, "low": c, "close": c})
    await copy_bars(db, pl.DataFrame(rows), "1h", "bench")


def _spawn(cfg: Path, dsn: str, sock: str, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BOT_DATABASE_DSN": dsn, "NOTIFY_SOCKET": sock, "BYBIT_API_KEY": live.KEY,
           "BYBIT_API_SECRET": live.SECRET}
    return subprocess.Popen([sys.executable, "-m", "bot.cli.main", "--config", str(cfg), "run"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _until(sock: socket.socket, text: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in sock.recv(4096).decode():
                return time.monotonic()
        except BlockingIOError:
            await asyncio.sleep(0.005)
    raise TimeoutError(text)


async def start_to_ready(admin: str, n_pairs: int, reps: int) -> list[float]:
    toks = [f"R{i:02d}" for i in range(2 * n_pairs)]
    pairs = [(toks[2 * k], toks[2 * k + 1]) for k in range(n_pairs)]
    markets = [Market(f"{t}USDT", 1.0, "1", "0.0001", "1", "5") for t in toks]
    markets += [Market(f"{s}USDT", 100.0, "0.001", "0.01", "0.001", "5") for s in ("BTC", "ETH", "SOL")]
    out = []
    async with scratch_database(admin, "bot_bench_svc") as db:
        await _market(db, pairs)
        with FakeBybit(markets, api_key=live.KEY, api_secret=live.SECRET) as fake, \
                tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "config.yaml"
            cfg.write_text(_config(fake, "paper"))
            for k in range(reps):
                path = f"{tmp}/n{k}.sock"
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(path)
                sock.setblocking(False)
                t0 = time.monotonic()
                proc = _spawn(cfg, db.dsn, path, "paper")
                try:
                    out.append(await _until(sock, "READY=1", 120) - t0)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                    sock.close()
    return out


async def stop_with_entry_in_flight(admin: str, reps: int) -> list[float]:
    markets = [*live.markets(), *(Market(f"{s}USDT", 100.0, "0.001", "0.01", "0.001", "5") for s in ("BTC", "ETH",
                                                                                                    "SOL"))]
    out = []
    async with scratch_database(admin, "bot_bench_svc") as db:
        for k in range(reps):  # a fresh venue each time
            with FakeBybit(markets, api_key=live.KEY, api_secret=live.SECRET) as fake, \
                    tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "config.yaml"
                cfg.write_text(_config(fake, "live"))
                await _market(db, [(live.T1, live.T2)])
                path = f"{tmp}/s{k}.sock"
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(path)
                sock.setblocking(False)
                proc = _spawn(cfg, db.dsn, path, "live")
                try:
                    await _until(sock, "READY=1", 120)
                    fake.delay_create(1.5, count=2)
                    mid = D(repr(round(math.exp(live.ENTRY_SPREAD), 4)))
                    fake.set_book(live.S1, mid - D("0.0001"), mid + D("0.0001"))
                    while True:
                        async with db.pool.acquire() as conn:
                            if await conn.fetchval("SELECT count(*) FROM positions WHERE status = 'orders_sent'"):
                                break
                        await asyncio.sleep(0.01)
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    code = await asyncio.to_thread(proc.wait, 60)
                    out.append(time.monotonic() - t0)
                    assert code == 0, code
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    sock.close()
    return out


async def replay_speed(admin: str, n_ticks: int) -> dict[str, float]:
    from bot.analysis.backtesting import backtest
    from bot.core.backfill import instruments_frame
    from bot.core.db.market import copy_quotes, upsert_instruments
    from bot.core.replay import replay
    from tests.executor.harness import (
        INSTRUMENTS,
        T1,
        T2,
        backtest_kwargs,
        backtest_view,
        config,
        pair_row,
        quotes,
        quotes_frame,
        write_pairs,
    )

    cfg = config()
    row = pair_row(cfg)
    qs = quotes(n_ticks=n_ticks)
    async with scratch_database(admin, "bot_bench_svc") as db:
        async with db.pool.acquire() as conn:
            await write_pairs(conn, [row])
        await upsert_instruments(db, instruments_frame(INSTRUMENTS))
        await copy_quotes(db, quotes_frame(qs))
        res = await replay(db, cfg, dt.datetime.fromtimestamp(qs[0].ts, dt.UTC),
                           dt.datetime.fromtimestamp(qs[-1].ts + 1, dt.UTC), progress=None)
    view = backtest_view(qs, cfg)
    t0 = time.perf_counter()
    bt = backtest(view.frame, T1, T2, 0.1, 1.0, **backtest_kwargs(cfg, row))
    bt_s = time.perf_counter() - t0
    assert bt.height == len(res.trades), (bt.height, len(res.trades))
    ticks = view.frame.height
    return {"ticks": ticks, "trades": bt.height, "replay_tps": ticks / res.wall_s, "backtest_tps": ticks / bt_s,
            "replay_s": res.wall_s, "backtest_s": bt_s}


async def main() -> None:
    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin:
        ready = await start_to_ready(admin, 20, 3)
        print(f"1. start to READY=1, 20 pairs (paper, the fake's REST + websocket): median "
              f"{statistics.median(ready):.2f} s ({', '.join(f'{x:.2f}' for x in ready)})", flush=True)
        stop = await stop_with_entry_in_flight(admin, 3)
        print(f"2. SIGTERM with an entry in flight (each leg answered 1.5 s late): exit 0 after median "
              f"{statistics.median(stop):.2f} s ({', '.join(f'{x:.2f}' for x in stop)})", flush=True)
        rp = await replay_speed(admin, 40_000)
        print(f"3. replay through the live path: {rp['ticks']:,} ticks, {rp['trades']} trades (= backtest), "
              f"{rp['replay_tps']:,.0f} ticks/s ({rp['replay_s']:.2f} s) vs backtest() {rp['backtest_tps']:,.0f} "
              f"ticks/s ({rp['backtest_s']:.3f} s): the backtester is {rp['backtest_tps'] / rp['replay_tps']:.0f}x "
              "faster (replay pays the ledger's Postgres writes and per-tick Python)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

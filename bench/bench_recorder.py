"""Recorder benchmark (issue 7: the exchange edge). Run:

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/bench_recorder.py

(without BOT_DATABASE_DSN: an embedded PostgreSQL in a temp directory). Works in a
scratch database it creates and drops. The fake Bybit v5 server runs in its own
process (`python -m tests.fakes.bybit`), pushing `orderbook.1` deltas over a real
websocket; the bot side is the real path: pybit WebSocket -> BybitQuoteStream ->
QuoteRecorder -> binary COPY. In one run:

1. 60 symbols x 10 updates/s, quote_interval_s 0.1 (every update becomes a row):
   rows recorded per second; latency from the websocket message to its row being
   committed (receive -> commit, and the venue's ts -> commit), median and p99;
2. the same feed with the default quote_interval_s 5: rows/s and grid time -> commit;
3. the naive recorder on the same feed: one INSERT per message, awaited in the
   consumer (rows/s, latency), and the ratio;
4. capacity: 60 symbols x 40 updates/s (2,400 messages/s), both recorders;
5. one live batch (one row for each of 60 symbols): the recorder's write
   (append_quote_rows: record COPY), the bulk path (copy_quotes: polars + numpy
   COPY per day) and executemany of the same rows, ms per batch;
6. faults at 60 x 10/s, quote_interval 0.1 s: the websocket dropped mid-stream
   (time until quotes flow again, rows lost), and a real PostgreSQL (embedded,
   in a temp directory) stopped for 5 s while recording (rows buffered, rows in
   the table = rows sampled, time to flush after the restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bot.core.db.market import (
    append_quote_rows,
    copy_quotes,
    ensure_quote_partitions,
    insert_quotes_executemany,
)
from bot.core.db.migrate import migrate
from bot.core.db.pool import Database, EmbeddedPostgres, create_pool
from bot.core.db.scratch import scratch_database, scratch_server
from bot.core.exchange.stream import BybitQuoteStream
from bot.core.recorder import QuoteRecorder

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = [f"S{i:03d}USDT" for i in range(60)]


FAKE_PID: dict[str, int] = {}


@contextlib.contextmanager
def fake_server(rate: float) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.bybit", "--symbols", "60", "--rate", str(rate)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        FAKE_PID["pid"] = proc.pid
        yield f"ws://127.0.0.1:{port}/v5/public/linear"
    finally:
        proc.terminate()
        proc.wait(10)


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1000) if len(values) else float("nan")


async def run_recorder(db: Database, url: str, interval: float, seconds: float, warmup: float = 2.0) -> dict[str, float]:
    stream = BybitQuoteStream(url)
    rec = QuoteRecorder(db.pool, stream, interval_s=interval, symbols=SYMBOLS, follow_pairs=False, bars=False)
    await stream.start(SYMBOLS)
    task = asyncio.create_task(rec.run())
    await asyncio.sleep(warmup)
    w0, m0, l0, s0 = rec.stats.written, stream.messages, len(rec.stats.latencies), len(rec.stats.sample_latencies)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    w1, m1 = rec.stats.written, stream.messages
    lat = list(rec.stats.latencies)[l0:]
    sample_lat = list(rec.stats.sample_latencies)[s0:]
    rec.stop()
    await asyncio.wait_for(task, 30)
    await stream.close()
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE quotes")
    return {"rows_per_s": (w1 - w0) / elapsed, "msgs_per_s": (m1 - m0) / elapsed,
            "recv_commit_p50": pct(lat, 50), "recv_commit_p99": pct(lat, 99),
            "grid_commit_p50": pct(sample_lat, 50), "grid_commit_p99": pct(sample_lat, 99),
            "dropped": rec.stats.dropped, "out_of_order": stream.dropped_out_of_order}


async def run_naive(db: Database, url: str, seconds: float, warmup: float = 2.0) -> dict[str, float]:
    """One INSERT per websocket message, awaited before the next message is taken."""
    stream = BybitQuoteStream(url)
    await stream.start(SYMBOLS)
    now = dt.datetime.now(dt.UTC)
    lat: list[float] = []
    written = 0
    async with db.pool.acquire() as conn:
        await ensure_quote_partitions(conn, now - dt.timedelta(days=1), now + dt.timedelta(days=1))
        t_start = time.perf_counter()
        counting_from = t_start + warmup
        while time.perf_counter() < counting_from + seconds:
            q = await stream.get()
            await conn.execute(
                "INSERT INTO quotes (symbol, ts, bid_price, ask_price, bid_size, ask_size)"
                " VALUES ($1, to_timestamp($2), $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                q.symbol, q.ts, float(q.bid), float(q.ask), float(q.bid_size), float(q.ask_size))
            if time.perf_counter() >= counting_from:
                written += 1
                lat.append(time.time() - q.received)
        backlog = stream.queue.qsize()
        await conn.execute("TRUNCATE quotes")
    await stream.close()
    return {"rows_per_s": written / seconds, "recv_commit_p50": pct(lat, 50), "recv_commit_p99": pct(lat, 99),
            "backlog_at_end": backlog}


async def websocket_drop(db: Database, url: str) -> dict[str, float]:
    stream = BybitQuoteStream(url, check_every_s=0.1)
    rec = QuoteRecorder(db.pool, stream, interval_s=0.1, symbols=SYMBOLS, follow_pairs=False, bars=False)
    await stream.start(SYMBOLS)
    task = asyncio.create_task(rec.run())
    await asyncio.sleep(3.0)
    os.kill(FAKE_PID["pid"], signal.SIGUSR1)
    t_drop = time.time()
    m0 = stream.messages
    while stream.messages == m0 or stream.reconnects == 0:
        await asyncio.sleep(0.005)
    back = time.time() - t_drop
    await asyncio.sleep(3.0)
    rec.stop()
    await asyncio.wait_for(task, 30)
    await stream.close()
    async with db.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM quotes")
        dup = await conn.fetchval("SELECT count(*) - count(DISTINCT (symbol, ts)) FROM quotes")
        await conn.execute("TRUNCATE quotes")
    # every symbol should have one row per grid time from its first row on; count the holes
    return {"back_s": back, "reconnects": stream.reconnects, "stored": stored, "sampled": rec.stats.sampled,
            "duplicates": dup, "out_of_order": stream.dropped_out_of_order}


async def postgres_restart(url: str, down_s: float = 5.0) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-restart-"))
    server = EmbeddedPostgres(tmp / "pgdata")
    dsn = server.start()
    try:
        pool = await create_pool(dsn, 1, 2)
        async with pool.acquire() as conn:
            await migrate(conn)
        stream = BybitQuoteStream(url)
        rec = QuoteRecorder(pool, stream, interval_s=0.1, symbols=SYMBOLS, follow_pairs=False, bars=False,
                            retry_s=0.2, max_retry_s=1.0)
        await stream.start(SYMBOLS)
        task = asyncio.create_task(rec.run())
        await asyncio.sleep(3.0)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(down_s)
        peak = rec.buffered
        t_up = time.perf_counter()
        await asyncio.to_thread(server.start)
        while rec.buffered > 600:  # one second of rows or less left: flushed
            await asyncio.sleep(0.01)
        flush_s = time.perf_counter() - t_up
        await asyncio.sleep(2.0)
        rec.stop()
        await asyncio.wait_for(task, 30)
        await stream.close()
        async with pool.acquire() as conn:
            stored = await conn.fetchval("SELECT count(*) FROM quotes")
        await pool.close()
        return {"peak_buffered": peak, "failures": rec.stats.write_failures, "sampled": rec.stats.sampled,
                "stored": stored, "dropped": rec.stats.dropped, "flush_s": flush_s}
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def live_batch(db: Database, n: int = 200) -> dict[str, float]:
    import polars as pl

    t0 = time.time() - 3600
    out: dict[str, float] = {}
    async with db.pool.acquire() as conn:  # the recorder checks a day's partition once; do it here
        await ensure_quote_partitions(conn, dt.datetime.fromtimestamp(t0, dt.UTC),
                                      dt.datetime.fromtimestamp(t0 + 10, dt.UTC))
    async def append(pool: object, frame: pl.DataFrame) -> int:
        return await append_quote_rows(pool, list(frame.iter_rows()), ensure_partitions=False)

    for name, write in (("append", append), ("copy", copy_quotes), ("executemany", insert_quotes_executemany)):
        times = []
        for k in range(n):
            frame = pl.DataFrame({"symbol": SYMBOLS, "ts": [t0 + 0.01 * k] * 60, "bid_price": [1.0] * 60,
                                  "ask_price": [1.1] * 60, "bid_size": [2.0] * 60, "ask_size": [3.0] * 60})
            t = time.perf_counter()
            await write(db.pool, frame)  # type: ignore[operator]
            times.append(time.perf_counter() - t)
        out[name] = float(np.median(times) * 1000)
        async with db.pool.acquire() as conn:
            await conn.execute("TRUNCATE quotes")
    return out


async def main(seconds: float) -> None:
    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin:
        async with scratch_database(admin, "bot_bench_rec") as db:
            print(f"{len(SYMBOLS)} symbols, {seconds:.0f} s per measurement, PostgreSQL at "
                  f"{db.dsn.rsplit('@', 1)[-1].split('/')[0] or 'embedded'}", flush=True)
            lb = await live_batch(db)
            print(f"\nlive batch (60 symbols x 1 row), median of 200: recorder's record COPY {lb['append']:.2f} ms, "
                  f"bulk copy_quotes {lb['copy']:.2f} ms, executemany {lb['executemany']:.2f} ms; "
                  f"executemany / record COPY {lb['executemany'] / lb['append']:.1f}x", flush=True)
            for rate in (10.0, 40.0):
                with fake_server(rate) as url:
                    feed = 60 * rate
                    print(f"\nfeed: 60 x {rate:g} updates/s = {feed:,.0f} messages/s", flush=True)
                    r = await run_recorder(db, url, interval=1.0 / rate, seconds=seconds)
                    print(f"  recorder, quote_interval {1 / rate:.3g} s: {r['rows_per_s']:,.0f} rows/s "
                          f"(stream delivered {r['msgs_per_s']:,.0f} msg/s); message -> commit median "
                          f"{r['recv_commit_p50']:.1f} ms, p99 {r['recv_commit_p99']:.1f} ms; grid time -> commit "
                          f"median {r['grid_commit_p50']:.1f} ms, p99 {r['grid_commit_p99']:.1f} ms; "
                          f"dropped {r['dropped']:.0f}, out-of-order {r['out_of_order']:.0f}", flush=True)
                    if rate == 10.0:
                        d = await run_recorder(db, url, interval=5.0, seconds=max(seconds, 20.0))
                        print(f"  recorder, quote_interval 5 s (default): {d['rows_per_s']:,.1f} rows/s; "
                              f"grid time -> commit median {d['grid_commit_p50']:.1f} ms, "
                              f"p99 {d['grid_commit_p99']:.1f} ms; message -> commit median "
                              f"{d['recv_commit_p50']:.0f} ms (includes waiting for the grid)", flush=True)
                    n = await run_naive(db, url, seconds=seconds)
                    print(f"  naive (INSERT per message): {n['rows_per_s']:,.0f} rows/s; message -> commit median "
                          f"{n['recv_commit_p50']:.1f} ms, p99 {n['recv_commit_p99']:.1f} ms; "
                          f"backlog at the end {n['backlog_at_end']:.0f} messages", flush=True)
                    print(f"  ratio recorder / naive rows/s: {r['rows_per_s'] / max(n['rows_per_s'], 1e-9):.2f}; "
                          f"p99 latency naive / recorder: "
                          f"{n['recv_commit_p99'] / max(r['recv_commit_p99'], 1e-9):.2f}", flush=True)
                    if rate == 10.0:
                        w = await websocket_drop(db, url)
                        print(f"  fault, websocket dropped: quotes flowing again after {w['back_s'] * 1000:.0f} ms "
                              f"({w['reconnects']:.0f} reconnect); rows stored {w['stored']:,.0f} = sampled "
                              f"{w['sampled']:,.0f}; duplicate rows {w['duplicates']:.0f}; out-of-order messages "
                              f"dropped {w['out_of_order']:.0f}", flush=True)
                        pg = await postgres_restart(url)
                        print(f"  fault, PostgreSQL stopped 5 s: {pg['peak_buffered']:,.0f} rows buffered, "
                              f"{pg['failures']:.0f} failed writes; rows stored {pg['stored']:,.0f} = sampled "
                              f"{pg['sampled']:,.0f} (dropped {pg['dropped']:.0f}); flushed "
                              f"{pg['flush_s']:.2f} s after the restart began", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    asyncio.run(main(ap.parse_args().seconds))

"""Executor benchmark (issue 13: the live executor). Run:

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test PYTHONPATH=. .venv/bin/python bench/bench_executor.py

(without BOT_DATABASE_DSN: an embedded PostgreSQL in a temp directory; PYTHONPATH=. for
the loopback Bybit fake in tests/fakes). Scratch databases, created and dropped. In one run:

1. tick-to-order latency inside the bot, live mode, 20 pairs (40 symbols) against the
   loopback Bybit fake (signed REST through pybit): from a quote entering
   `Executor.on_quote` to the first order of the flow it decided leaving for the venue
   (the intent / closing rows and `sent` written first: two Postgres transactions),
   median and p99 over every entry and exit; background quotes of all 40 symbols
   interleaved. The split: the same quote's decision alone (z-score, machine, sizing)
   against the ledger writes.
2. CPU share of one core at 60 symbols x 10 updates/s (30 pairs, paper mode, quotes paced
   in real time, trades happening): process CPU seconds / wall seconds. Against the naive
   per-tick work in the same run: recomputing the z-score from the W bars and the tick
   by the batch function (`zscore_arrays`) on every tick instead of StreamingZScore.
3. resident memory over a long high-speed run (paper, 30 pairs, quotes as fast as the
   executor takes them, simulated clock, trades written to Postgres): RSS sampled every
   10 % of the run; growth from the 20 % mark to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import statistics
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.analysis.zscore import zscore_arrays  # noqa: E402
from bot.config.model import BotConfig  # noqa: E402
from bot.core.db.market import copy_bars  # noqa: E402
from bot.core.db.scratch import scratch_database, scratch_server  # noqa: E402
from bot.core.exchange.bybit import BybitExchange, RetryPolicy  # noqa: E402
from bot.core.exchange.interface import Instrument, Quote  # noqa: E402
from bot.core.exchange.paper import FILLS_KEPT, PaperExchange  # noqa: E402
from bot.core.executor.executor import Executor  # noqa: E402
from bot.core.executor.pair import PairRunner  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"
SPREADS = [0.0, 0.01, -0.01, 0.005, -0.005]  # the stored W = 5 bar spreads of part 1 (z = 0 at spread 0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p)) if xs else math.nan


def _config(mode: str, base_url: str = "http://unused", **strategy: Any) -> BotConfig:
    s = {"tf": "1h", "wind": len(SPREADS), "spr_method": "dist", "median_length": 1, "thresh_in": 2.0,
         "thresh_out": 0.5, "balance": 100_000.0, "order_size": 50.0, "min_order_size": 0.0, "leverage": 2.0,
         "fee_rate": 0.00055, "sl_std": 50.0, "sl_dist": None, "sl_seconds": 0.0, "maintenance_margin_rate": 0.01}
    s.update(strategy)
    return BotConfig.model_validate({
        "strategy": s, "exchange": {"mode": mode, "base_url": base_url, "http_timeout_s": 5.0, "max_attempts": 2},
        "executor": {"leg_timeout_s": 5.0, "incident_cooldown_s": 0, "reconcile_every_s": 3600,
                     "max_quote_age_s": 30.0, "stale_exit_s": 1e9}})


async def _pairs(db: Any, pairs: list[tuple[str, str]], tf: str, wind: int, thresh_in: float,
                 thresh_out: float) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs RESTART IDENTITY CASCADE")
        for a, b in pairs:
            await conn.execute(
                "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method,"
                " close_method, dist_in, dist_out) VALUES ($1, $2, $3, $4, 'dist', $5, $6, 'direct', 'direct', 0, 0)",
                f"{a}_USDT", f"{b}_USDT", tf, wind, thresh_in, thresh_out)


def _quote(sym: str, mid: float, ts: float) -> Quote:
    m = D(repr(round(mid, 4)))
    t = D("0.0001")
    return Quote(sym, ts, m - t, m + t, D(100_000), D(100_000), ts)


# ------------------------------------------------------------ 1. latency, live against the fake

async def _rounds(ex: Executor, pairs: list[tuple[str, str]], toks: list[str], mid: dict[str, float], rng: Any,
                  rounds: int, decide: list[float], isolated: bool) -> None:
    """`rounds` x (every pair enters, then every pair exits); `isolated`: each flow completes
    before the next signal, else all the pairs' flows are in flight together."""
    for _ in range(rounds):
        for spread in (0.03, 0.0):  # z 3.8 (a short-spread entry) then z 0 (its exit)
            for a, b in pairs:
                now = time.time()
                for t in rng.choice(toks, 10, replace=False):  # other symbols' quotes in between, at
                    if t not in (a, b):  # their current mids (no signal of their own)
                        await ex.on_quote(_quote(f"{t}USDT", mid[f"{t}USDT"], now))
                await ex.on_quote(_quote(f"{b}USDT", 1.0, now))
                mid[f"{a}USDT"] = math.exp(spread)
                t0 = time.perf_counter()
                n_tasks = len(ex.tasks)
                await ex.on_quote(_quote(f"{a}USDT", math.exp(spread), now))
                if len(ex.tasks) > n_tasks:
                    decide.append(time.perf_counter() - t0)  # decision + task creation only
                if isolated:
                    await ex.drain()
            await ex.drain()


async def latency(admin: str, n_pairs: int, rounds: int) -> dict[str, Any]:
    from tests.fakes.bybit import FakeBybit, Market

    toks = [f"P{i:02d}" for i in range(2 * n_pairs)]
    pairs = [(toks[2 * k], toks[2 * k + 1]) for k in range(n_pairs)]
    markets = [Market(f"{t}USDT", 1.0, "1", "0.0001", "1", "5") for t in toks]
    async with scratch_database(admin, "bot_bench_exe") as db:
        await _pairs(db, pairs, "1h", len(SPREADS), 2.0, 0.5)
        bar_now = math.floor(time.time() / 3600) * 3600
        rows = []
        for a, b in pairs:
            for k, s in enumerate(SPREADS):
                t = float(bar_now - (len(SPREADS) - k) * 3600)
                for sym, c in ((f"{a}USDT", math.exp(s)), (f"{b}USDT", 1.0)):
                    rows.append({"symbol": sym, "open_time": t, "open": c, "high": c, "low": c, "close": c})
        await copy_bars(db, pl.DataFrame(rows), "1h", "bench")
        with FakeBybit(markets, api_key=KEY, api_secret=SECRET) as fake:
            fake.state.balance = D(10**9)
            exch = BybitExchange(KEY, SECRET, base_url=fake.http_url, timeout_s=5.0, fill_wait_s=2.0,
                                 fill_poll_s=0.005, retry=RetryPolicy(attempts=2, backoff_s=0.05, max_backoff_s=0.2,
                                                                      ip_ban_s=0.2), rate_per_s=1000.0)
            ex = Executor(db.pool, exch, _config("live", fake.http_url))
            await ex.start()
            decide: list[float] = []
            mid = {f"{t}USDT": 1.0 for t in toks}
            rng = np.random.default_rng(5)
            lat: dict[str, list[float]] = {}
            try:
                for scenario in ("isolated", "burst"):
                    ex.latencies.clear()
                    await _rounds(ex, pairs, toks, mid, rng, rounds, decide, scenario == "isolated")
                    lat[scenario] = list(ex.latencies)
            finally:
                await ex.stop()
            async with db.pool.acquire() as conn:
                trades = await conn.fetchval("SELECT count(*) FROM trades")
                incidents = await conn.fetchval("SELECT count(*) FROM incidents")
    return {**{f"{k}_{m}": v for k, xs in lat.items() for m, v in
               (("n", len(xs)), ("median_ms", statistics.median(xs) * 1e3), ("p99_ms", _pct(xs, 99) * 1e3))},
            "decide_median_ms": statistics.median(decide) * 1e3 if decide else math.nan, "trades": trades,
            "incidents": incidents}


# ------------------------------------------------------------ 2./3. paper: CPU share and memory

class Market30:
    """30 pairs of OU spreads (mean reversion per quote of a leg), 60 symbols, mids near 1."""

    def __init__(self, n_pairs: int, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        self.pairs = [(f"Q{2 * k:02d}", f"Q{2 * k + 1:02d}") for k in range(n_pairs)]
        self.x = np.zeros(n_pairs)
        self.lb = np.zeros(n_pairs)
        self.i = 0

    def instruments(self) -> list[Instrument]:
        return [Instrument(f"{t}USDT", D("1"), D("1"), D("0.0001")) for p in self.pairs for t in p]

    def next(self, ts: float) -> Quote:
        """The next quote: symbols in turn, pair k's leg 1 carries the spread x_k."""
        n = len(self.pairs)
        k, leg = (self.i // 2) % n, self.i % 2
        self.i += 1
        if leg == 0:
            self.x[k] += -0.01 * self.x[k] + 0.002 * self.rng.standard_normal()
            self.lb[k] += 0.0005 * self.rng.standard_normal()
            return _quote(f"{self.pairs[k][0]}USDT", math.exp(self.lb[k] + self.x[k]), ts)
        return _quote(f"{self.pairs[k][1]}USDT", math.exp(self.lb[k]), ts)


PAPER = {"tf": "1m", "wind": 30, "median_length": 3, "thresh_in": 1.8, "thresh_out": 0.3}


async def _paper_executor(db: Any, mk: Market30, clock: Any) -> Executor:
    await _pairs(db, mk.pairs, PAPER["tf"], PAPER["wind"], PAPER["thresh_in"], PAPER["thresh_out"])
    cfg = _config("paper", **PAPER)
    ex = Executor(db.pool, PaperExchange(mk.instruments(), D(10**7), D("0.00055"), D(2), D("0.01")), cfg,
                  clock=clock, mode="paper")
    await ex.start()
    return ex


def naive_tick_cost(ticks: list[tuple[float, float, float]], wind: int, median_length: int, tf: str) -> float:
    """Seconds per tick of the naive z: the batch z-score over the W bars and the tick."""
    arr = np.array(ticks)
    ts, m1, m2 = arr[:, 0], arr[:, 1], arr[:, 2]
    bar = np.floor(ts / 60) * 60
    last_of_bar = np.r_[bar[1:] != bar[:-1], False]
    bts, c1, c2 = bar[last_of_bar], m1[last_of_bar], m2[last_of_bar]
    n = 0
    t0 = time.perf_counter()
    for j in range(len(ts) // 2, len(ts)):
        lo = np.searchsorted(bts, ts[j] - (wind + 1) * 60)
        hi = np.searchsorted(bts, ts[j], side="right")
        a = max(0, j - median_length + 1)
        zscore_arrays(ts[a:j + 1], m1[a:j + 1], m2[a:j + 1], bts[lo:hi], c1[lo:hi], c2[lo:hi], tf, wind, "dist",
                      median_length)
        n += 1
    return (time.perf_counter() - t0) / n


async def cpu_share(admin: str, n_pairs: int, rate: float, seconds: float) -> dict[str, Any]:
    mk = Market30(n_pairs)
    async with scratch_database(admin, "bot_bench_exe") as db:
        t_start = time.time()
        # warm the runners' bars first: 40 simulated minutes (24,000 quotes), as fast as possible
        sim = {"t": t_start - 2400.0}
        ex = await _paper_executor(db, mk, lambda: sim["t"])
        try:
            return await _cpu_run(ex, mk, sim, rate, seconds, n_pairs)
        finally:
            await ex.stop()


async def _cpu_run(ex: Executor, mk: Market30, sim: dict[str, float], rate: float, seconds: float,
                   n_pairs: int) -> dict[str, Any]:
    for _ in range(24_000):
        sim["t"] += 0.1
        await ex.on_quote(mk.next(sim["t"]))
    await ex.drain()
    # then real time, paced: rate quotes per wall second
    ex.clock = time.time
    pair_ticks: list[tuple[float, float, float]] = []
    pair_quotes: list[tuple[Quote, Quote]] = []
    last: dict[str, Quote] = {}
    a0, b0 = (f"{t}USDT" for t in mk.pairs[0])
    qs = []
    t_wall = time.time()
    for i in range(int(seconds * rate)):
        qs.append(mk.next(t_wall + i / rate))
    entries0 = ex.stats["entries"] + ex.stats["exits"]
    cpu0, w0 = time.process_time(), time.perf_counter()
    start = time.perf_counter()
    for i, q in enumerate(qs):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        q = Quote(q.symbol, now, q.bid, q.ask, q.bid_size, q.ask_size, now)
        await ex.on_quote(q)
        if q.symbol in (a0, b0):
            last[q.symbol] = q
            if len(last) == 2:
                qa, qb = last[a0], last[b0]
                pair_quotes.append((qa, qb))
                pair_ticks.append((now, float((qa.bid + qa.ask) / 2), float((qb.bid + qb.ask) / 2)))
    await ex.drain()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - w0
    flows = ex.stats["entries"] + ex.stats["exits"] - entries0
    # the runner's per-tick cost (bars, StreamingZScore, the machine), unpaced, on a fresh
    # runner fed the same pair's ticks, against the naive z on the same ticks
    r = ex.runners[mk.pairs[0]]
    fresh = PairRunner(r.spec, r.sizing)
    n = 0
    t0 = time.perf_counter()
    for q1, q2 in pair_quotes:
        fresh.quotes[q1.symbol], fresh.quotes[q2.symbol] = q1, q2
        fresh.tick(max(q1.ts, q2.ts), 1e6, True, "bench", False)
        n += 1
    stream_cost = (time.perf_counter() - t0) / max(n, 1)
    naive = naive_tick_cost(pair_ticks, PAPER["wind"], PAPER["median_length"], PAPER["tf"])
    ticks_per_s = rate  # every symbol is in one pair: every quote is one pair tick
    return {"cpu_share": cpu / wall, "wall_s": wall, "quotes": len(qs), "flows": flows,
            "stream_us": stream_cost * 1e6, "naive_us": naive * 1e6, "ticks_per_s": ticks_per_s,
            "naive_share_extra": naive * ticks_per_s}


async def memory(admin: str, n_pairs: int, n_quotes: int) -> dict[str, Any]:
    mk = Market30(n_pairs, seed=11)
    async with scratch_database(admin, "bot_bench_exe") as db:
        sim = {"t": time.time() - n_quotes * 0.05}
        ex = await _paper_executor(db, mk, lambda: sim["t"])
        try:
            out = await _memory_run(ex, mk, sim, n_quotes)
        finally:
            await ex.stop()
        async with db.pool.acquire() as conn:
            out["trades"] = await conn.fetchval("SELECT count(*) FROM trades")
    return out


async def _memory_run(ex: Executor, mk: Market30, sim: dict[str, float], n_quotes: int) -> dict[str, Any]:
    samples: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for i in range(n_quotes):
        sim["t"] += 0.05  # 20 quotes per simulated second: 1M quotes = 14 h, many trades
        await ex.on_quote(mk.next(sim["t"]))
        if (i + 1) % (n_quotes // 10) == 0:
            await ex.drain()
            samples.append((i + 1, _rss_mb()))
    wall = time.perf_counter() - t0
    return {"samples": samples, "wall_s": wall, "quotes_per_s": n_quotes / wall, "stats": dict(ex.stats),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


async def main(args: argparse.Namespace) -> None:
    with scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin:
        print(f"PostgreSQL at {admin.rsplit('@', 1)[-1].split('/')[0]}", flush=True)
        lat = await latency(admin, args.pairs, args.rounds)
        print(f"\n1. tick-to-order latency, live mode, {args.pairs} pairs against the loopback fake: "
              f"one signal at a time: {lat['isolated_n']} orders (entries and exits), median "
              f"{lat['isolated_median_ms']:.2f} ms, p99 {lat['isolated_p99_ms']:.2f} ms; all 20 pairs signalling on "
              f"the same instant (20 flows in flight, a pool of 4 connections): median {lat['burst_median_ms']:.2f} ms, "
              f"p99 {lat['burst_p99_ms']:.2f} ms; "
              f"the deciding quote's on_quote alone (z, machine, sizing, task start) median "
              f"{lat['decide_median_ms']:.3f} ms, the rest is the intent/closing row and `sent` in Postgres; "
              f"{lat['trades']} trades, {lat['incidents']} incidents", flush=True)
        cpu = await cpu_share(admin, 30, args.rate, args.seconds)
        print(f"\n2. CPU at 60 symbols x {args.rate / 60:.0f} updates/s ({args.rate:.0f} quotes/s, paper, 30 pairs, "
              f"{cpu['wall_s']:.0f} s paced, {cpu['flows']} entries+exits): {100 * cpu['cpu_share']:.1f} % of one core"
              f"\n   per pair tick: the runner (bars, StreamingZScore, machine) {cpu['stream_us']:.1f} us vs the naive batch z over the window "
              f"{cpu['naive_us']:.1f} us ({cpu['naive_us'] / cpu['stream_us']:.0f}x): the naive z alone would add "
              f"{100 * cpu['naive_share_extra']:.0f} % of a core at {cpu['ticks_per_s']:.0f} ticks/s", flush=True)
        mem = await memory(admin, 30, args.quotes)
        s = mem["samples"]
        base = s[1][1] if len(s) > 1 else s[0][1]
        print(f"\n3. memory over {args.quotes:,} quotes (paper, 30 pairs, {mem['quotes_per_s']:.0f} quotes/s, "
              f"{mem['trades']} trades written): RSS "
              + ", ".join(f"{n // 1000}k {mb:.0f} MB" for n, mb in s)
              + f"; growth from 20 % to the end {s[-1][1] - base:+.1f} MB ({100 * (s[-1][1] - base) / base:+.1f} %), "
              f"over the second half {s[-1][1] - s[len(s) // 2 - 1][1]:+.1f} MB (bounded: the paper venue keeps "
              f"{FILLS_KEPT} fills, the executor its last 1000 trades), "
              f"max RSS {mem['maxrss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="entry+exit rounds over every pair (part 1)")
    ap.add_argument("--rate", type=float, default=600.0, help="quotes per second (part 2)")
    ap.add_argument("--seconds", type=float, default=30.0, help="paced seconds (part 2)")
    ap.add_argument("--quotes", type=int, default=1_000_000, help="quotes of the long run (part 3)")
    asyncio.run(main(ap.parse_args()))

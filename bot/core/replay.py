"""Replay through the live path (`bot run --replay --from --to [--speed X]`; docs/service.md).

Quotes recorded in the `quotes` table are fed, in time order, to the SAME Executor the
service trades with (its runners, state machines, sizing and ledger), on the paper
exchange, under a simulated clock (the clock is each quote's timestamp). It trades under
its own mode `replay-<run id>`: its positions, orders, trades and incidents never touch
the live or paper ledger (the one-active-position index and the executor lock are per
mode), so it can run while `bot run` trades.

Quotes of one timestamp are one instant (`Executor.on_quotes`): recorded grid quotes of
both legs make one tick, as the backtester's ts-aligned ticks; `--speed X` paces the
replay at X times real time (default: as fast as it goes). Pairs: the `pairs` table as it
is now. Warm-up: the bars and quotes stored before `--from`, as at a live start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from bot.config import BotConfig
from bot.core.db import positions as ledger_sql
from bot.core.db import service_runs
from bot.core.db.market import read_quotes, to_utc
from bot.core.exchange.interface import Quote

log = logging.getLogger("bot.replay")


@dataclass
class ReplayResult:
    mode: str
    run_id: int
    quotes: int
    instants: int
    ticks: int
    wall_s: float
    trades: list[dict[str, Any]]
    open_positions: int

    @property
    def ticks_per_s(self) -> float:
        return self.ticks / self.wall_s if self.wall_s > 0 else float("inf")


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))


async def replay(db: Any, cfg: BotConfig, start: Any, end: Any, *, speed: float | None = None,
                 progress: TextIO | None = sys.stderr, chunk_s: float = 86_400.0) -> ReplayResult:
    """Replay [start, end) through the executor; the run's trades from its own ledger."""
    from bot.core.exchange.factory import trading_exchange
    from bot.core.executor.executor import Executor
    from bot.core.service import instruments_from_table

    lo, hi = to_utc(start).timestamp(), to_utc(end).timestamp()
    if not hi > lo:
        raise ValueError(f"--to must be after --from (got {to_utc(start)} .. {to_utc(end)})")
    if speed is not None and not speed > 0:
        raise ValueError(f"--speed must be > 0 (got {speed})")
    pool = db.pool
    paper_cfg = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"mode": "paper"})})
    instruments = await instruments_from_table(db)
    if not instruments:
        raise ValueError("replay: the instruments table is empty (bot data instruments, or bot data demo)")
    async with pool.acquire() as conn:
        run_id = await service_runs.start(conn, "replay")
        mode = f"replay-{run_id}"
        await service_runs.set_mode(conn, run_id, mode)
    clock = {"t": lo}
    ex = Executor(pool, trading_exchange(paper_cfg, instruments), paper_cfg, clock=lambda: clock["t"], mode=mode)
    await ex.start()
    n_quotes = n_instants = 0
    t_wall = time.perf_counter()
    code, reason = 0, "replay done"
    try:
        symbols = sorted(ex.symbols)
        if not symbols:
            raise ValueError("replay: the pairs table is empty (nothing to trade)")
        t = lo
        first_ts: float | None = None
        while t < hi:
            t_next = min(hi, t + chunk_s)
            frame = await read_quotes(pool, symbols, dt.datetime.fromtimestamp(t, dt.UTC),
                                      dt.datetime.fromtimestamp(t_next, dt.UTC))
            cols = [frame[c].to_list() for c in ("symbol", "ts", "bid_price", "ask_price", "bid_size", "ask_size")]
            i, n = 0, frame.height
            while i < n:
                ts = cols[1][i]
                batch = []
                while i < n and cols[1][i] == ts:
                    batch.append(Quote(cols[0][i], ts, _dec(cols[2][i]), _dec(cols[3][i]), _dec(cols[4][i]),
                                       _dec(cols[5][i]), ts))
                    i += 1
                if speed is not None:
                    first_ts = ts if first_ts is None else first_ts
                    due = t_wall + (ts - first_ts) / speed
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                clock["t"] = ts
                await ex.on_quotes(batch)
                n_quotes += len(batch)
                n_instants += 1
            if progress is not None:
                done = (t_next - lo) / (hi - lo)
                print(f"\rreplay {mode}: {100 * done:5.1f} % ({dt.datetime.fromtimestamp(t_next, dt.UTC):%Y-%m-%d %H:%M}"
                      f", {n_quotes:,} quotes, {ex.stats['entries']} entries, {ex.stats['exits']} exits)",
                      end="" if done < 1 else "\n", file=progress, flush=True)
            t = t_next
        await ex.drain()
    except BaseException as e:
        code, reason = 1, f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        wall = time.perf_counter() - t_wall
        open_n = sum(r.position_id is not None for r in ex.runners.values())
        await ex.stop()
        async with pool.acquire() as conn:
            await service_runs.stop(conn, run_id, reason, code)
    async with pool.acquire() as conn:
        trades = await ledger_sql.trades(conn, mode)
    return ReplayResult(mode, run_id, n_quotes, n_instants, ex.stats["ticks"], wall, trades, open_n)


def metrics(trades: list[dict[str, Any]]) -> dict[str, Any]:
    """Trades, total and mean profit, win rate, fees, profit factor, worst drawdown of the
    cumulative profit (USDT, from the ledger's Decimal columns)."""
    profits = [Decimal(t["total_profit"]) for t in trades]
    fees = sum((Decimal(t["fees"]) for t in trades), Decimal(0))
    wins = [p for p in profits if p > 0]
    losses = [p for p in profits if p < 0]
    cum = peak = dd = Decimal(0)
    for p in profits:
        cum += p
        peak = max(peak, cum)
        dd = min(dd, cum - peak)
    return {"trades": len(trades), "total_profit": sum(profits, Decimal(0)),
            "mean_profit": (sum(profits, Decimal(0)) / len(profits)) if profits else Decimal(0),
            "win_rate": len(wins) / len(profits) if profits else 0.0, "fees": fees,
            "profit_factor": (float(sum(wins, Decimal(0)) / -sum(losses, Decimal(0))) if losses else float("inf"))
            if wins else 0.0, "max_drawdown": dd}

"""Live mode against the loopback Bybit fake: signed requests through pybit, a real
Postgres. A pair AAA/BBB whose stored 1h bars give a known z window (dist, W = 5), and
quotes that put z far above the entry band (a short-spread entry) or back at 0 (its exit).
Used in-process (leg risk) and by the child process of the kill-point tests."""

from __future__ import annotations

import math
import time
from decimal import Decimal as D
from typing import Any

import polars as pl

from bot.config.model import BotConfig
from bot.core.db.market import copy_bars
from bot.core.exchange.bybit import BybitExchange, RetryPolicy
from bot.core.exchange.interface import Quote
from tests.fakes.bybit import Market

T1, T2 = "AAA", "BBB"
S1, S2 = f"{T1}USDT", f"{T2}USDT"
KEY, SECRET = "test-key", "test-secret"
SPREADS = [0.0, 0.01, -0.01, 0.005, -0.005]  # the W bar spreads: mean 0, std 0.0079
ENTRY_SPREAD = 0.03  # z = 3.8: a short-spread entry (thresh_in 2)
EXIT_SPREAD = 0.0  # z = 0: its exit (thresh_out 0.5)


def markets() -> list[Market]:
    return [Market(S1, 1.0, "1", "0.0001", "1", "5"), Market(S2, 1.0, "1", "0.0001", "1", "5")]


def live_config(http_url: str, **executor: Any) -> BotConfig:
    ex = {"leg_timeout_s": 2.0, "incident_cooldown_s": 600, "reconcile_every_s": 3600, "db_retry_s": 0.2,
          "unknown_grace_s": 0.5, "close_retry_s": 0.2}
    ex.update(executor)
    return BotConfig.model_validate({
        "strategy": {"tf": "1h", "wind": len(SPREADS), "spr_method": "dist", "median_length": 1, "thresh_in": 2.0,
                     "thresh_out": 0.5, "balance": 1000.0, "order_size": 50.0, "min_order_size": 0.0,
                     "leverage": 2.0, "fee_rate": 0.00055, "sl_std": 50.0, "sl_dist": None, "sl_seconds": 0.0,
                     "maintenance_margin_rate": 0.01},
        "exchange": {"mode": "live", "base_url": http_url, "http_timeout_s": 2.0, "max_attempts": 2},
        "executor": ex})


def exchange(http_url: str) -> BybitExchange:
    return BybitExchange(KEY, SECRET, base_url=http_url, timeout_s=2.0, fill_wait_s=1.0, fill_poll_s=0.02,
                         retry=RetryPolicy(attempts=2, backoff_s=0.05, max_backoff_s=0.2, ip_ban_s=0.2),
                         rate_per_s=200.0)


async def store_bars(db: Any, now: float | None = None) -> None:
    """The W completed 1h bars before the current one: AAA close exp(s_k), BBB close 1."""
    now = time.time() if now is None else now
    bar_now = math.floor(now / 3600) * 3600
    rows = []
    for k, s in enumerate(SPREADS):
        t = bar_now - (len(SPREADS) - k) * 3600
        for sym, c in ((S1, math.exp(s)), (S2, 1.0)):
            rows.append({"symbol": sym, "open_time": float(t), "open": c, "high": c, "low": c, "close": c})
    await copy_bars(db, pl.DataFrame(rows), "1h", "test")


async def pairs_row(conn: Any) -> None:
    await conn.execute("DELETE FROM pairs")
    await conn.execute(
        "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method, close_method,"
        " dist_in, dist_out) VALUES ($1, $2, '1h', $3, 'dist', 2.0, 0.5, 'direct', 'direct', 0, 0)",
        f"{T1}_USDT", f"{T2}_USDT", len(SPREADS))


def quotes(spread: float, ts: float | None = None) -> list[Quote]:
    """One quote per leg with log(mid_1 / mid_2) = spread."""
    ts = time.time() if ts is None else ts
    m1 = D(repr(round(math.exp(spread), 4)))
    tick = D("0.0001")
    return [Quote(S1, ts, m1 - tick, m1 + tick, D(5000), D(5000), ts),
            Quote(S2, ts, D("1.0000") - tick, D("1.0000") + tick, D(4000), D(4000), ts)]


async def ledger_state(conn: Any) -> dict[str, Any]:
    pos = [dict(r) for r in await conn.fetch("SELECT id, status, qty_1, qty_2 FROM positions ORDER BY id")]
    inc = [dict(r) for r in await conn.fetch("SELECT kind, position_id, message FROM incidents ORDER BY id")]
    orders = [dict(r) for r in await conn.fetch("SELECT order_link_id, leg, action, status, filled_qty FROM orders"
                                                 " ORDER BY id")]
    trades = [dict(r) for r in await conn.fetch("SELECT position_id, reason, total_profit FROM trades ORDER BY id")]
    return {"positions": pos, "incidents": inc, "orders": orders, "trades": trades}


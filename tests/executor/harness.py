"""Shared pieces of the executor tests: a generated mean-reverting pair as quotes, the
config, the paper exchange, the backtester's view of the same ticks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Any

import numpy as np
import polars as pl

from bot.analysis.zscore import tf_seconds, zscore_arrays
from bot.config.model import BotConfig
from bot.core.exchange.interface import Instrument, Quote
from bot.core.exchange.paper import PaperExchange

T1, T2 = "AAA", "BBB"
S1, S2 = f"{T1}USDT", f"{T2}USDT"
INSTRUMENTS = [Instrument(S1, D("0.1"), D("0.1"), D("0.0001")), Instrument(S2, D("1"), D("1"), D("0.0001"))]


def config(**strategy: Any) -> BotConfig:
    s = {"tf": "1m", "wind": 20, "spr_method": "dist", "median_length": 3, "thresh_in": 1.6, "thresh_out": 0.3,
         "balance": 1000.0, "order_size": 50.0, "min_order_size": 0.0, "leverage": 2.0, "fee_rate": 0.00055,
         "sl_std": 3.2, "sl_dist": None, "sl_seconds": 30.0, "sl_method": "cooldown", "latency_s": 0.0,
         "maintenance_margin_rate": 0.01}
    s.update(strategy)
    return BotConfig.model_validate({"strategy": s, "executor": {"max_quote_age_s": 1e9, "stale_exit_s": 1e9,
                                                                 "incident_cooldown_s": 600}})


def pair_row(cfg: BotConfig, **kw: Any) -> dict[str, Any]:
    s = cfg.strategy
    row = {"token_1": f"{T1}_USDT", "token_2": f"{T2}_USDT", "tf": s.tf, "wind": s.wind, "spr_method": s.spr_method,
           "thresh_in": s.thresh_in, "thresh_out": s.thresh_out, "open_method": s.open_method,
           "close_method": s.close_method, "dist_in": s.dist_in, "dist_out": s.dist_out}
    row.update(kw)
    return row


async def write_pairs(conn: Any, rows: list[dict[str, Any]]) -> None:
    await conn.execute("DELETE FROM pairs")
    for r in rows:
        await conn.execute(
            "INSERT INTO pairs (token_1, token_2, tf, wind, spr_method, thresh_in, thresh_out, open_method,"
            " close_method, dist_in, dist_out) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            r["token_1"], r["token_2"], r["tf"], r["wind"], r["spr_method"], r["thresh_in"], r["thresh_out"],
            r["open_method"], r["close_method"], r["dist_in"], r["dist_out"])


async def reset_ledger(conn: Any) -> None:
    await conn.execute("TRUNCATE trades, orders, incidents, positions, pairs RESTART IDENTITY CASCADE")


def quotes_frame(qs: list[Quote]) -> pl.DataFrame:
    """Quotes as rows of the `quotes` table (copy_quotes), prices and sizes as floats."""
    return pl.DataFrame({"symbol": [q.symbol for q in qs], "ts": [q.ts for q in qs],
                         "bid_price": [float(q.bid) for q in qs], "ask_price": [float(q.ask) for q in qs],
                         "bid_size": [float(q.bid_size) for q in qs], "ask_size": [float(q.ask_size) for q in qs]})


def paper() -> PaperExchange:
    return PaperExchange(INSTRUMENTS, D(1000), D("0.00055"), D(2), D("0.01"))


def quotes(n_ticks: int = 4000, seed: int = 3, start: float = 1_750_000_000.0, step_s: float = 5.0,
           kappa: float = 0.02, sigma: float = 0.004) -> list[Quote]:
    """Alternating quotes of the two legs (leg 1 at even steps, leg 2 at odd), prices on a
    0.0001 tick: log p1 - log p2 is an OU process (mean reversion `kappa` per step), so
    |z| crosses the entry and exit bands many times."""
    rng = np.random.default_rng(seed)
    x = 0.0
    lp2 = math.log(2.0)
    out: list[Quote] = []
    for i in range(n_ticks):
        x += -kappa * x + sigma * rng.standard_normal()
        lp2 += 0.0015 * rng.standard_normal()
        if i % 2 == 0:
            sym, mid = S1, math.exp(lp2 + x) * 0.5 + 1.0
        else:
            sym, mid = S2, math.exp(lp2)
        half = D("0.0001") * (1 + int(rng.integers(0, 3)))
        m = D(repr(round(mid, 4)))
        out.append(Quote(sym, start + i * step_s, m - half, m + half, D(int(rng.integers(50, 5000))),
                         D(int(rng.integers(50, 5000))), start + i * step_s))
    return out


@dataclass
class Ticks:
    frame: pl.DataFrame  # the backtester's frame: ts, bid/ask per token, z_score
    z: np.ndarray


def backtest_view(qs: list[Quote], cfg: BotConfig) -> Ticks:
    """The executor's ticks as the backtester sees them: after every quote with both legs
    known, the latest quote of each leg; bars built from those ticks' mids (close = the last
    mid of the bar), z from the batch z-score."""
    last: dict[str, Quote] = {}
    rows = []
    for q in qs:
        last[q.symbol] = q
        if len(last) == 2:
            a, b = last[S1], last[S2]
            rows.append((q.ts, float(a.bid), float(a.ask), float(b.bid), float(b.ask)))
    arr = np.array(rows)
    ts = arr[:, 0]
    m1 = (arr[:, 1] + arr[:, 2]) / 2
    m2 = (arr[:, 3] + arr[:, 4]) / 2
    s = cfg.strategy
    tf_s = tf_seconds(s.tf)
    bar = np.floor(ts / tf_s) * tf_s
    last_of_bar = np.r_[bar[1:] != bar[:-1], False]  # the final bar is incomplete: never fed
    bar_ts, c1, c2 = bar[last_of_bar], m1[last_of_bar], m2[last_of_bar]
    cols = zscore_arrays(ts, m1, m2, bar_ts, c1, c2, s.tf, s.wind, s.spr_method, s.median_length)
    frame = pl.DataFrame({"ts": ts, f"{T1}_bid_price": arr[:, 1], f"{T1}_ask_price": arr[:, 2],
                          f"{T2}_bid_price": arr[:, 3], f"{T2}_ask_price": arr[:, 4], "z_score": cols.z_score,
                          "beta": cols.beta})
    return Ticks(frame, cols.z_score)


def backtest_kwargs(cfg: BotConfig, row: dict[str, Any]) -> dict[str, Any]:
    s = cfg.strategy
    return dict(thresh_low_in=-row["thresh_in"], thresh_low_out=-row["thresh_out"], thresh_high_in=row["thresh_in"],
                thresh_high_out=row["thresh_out"], balance=s.balance, order_size=s.order_size,
                min_order_size=s.min_order_size, leverage=s.leverage, fee_rate=s.fee_rate, sl_std=s.sl_std,
                sl_dist=s.sl_dist, sl_seconds=s.sl_seconds, sl_method=s.sl_method, open_method=row["open_method"],
                close_method=row["close_method"], dist_in=row["dist_in"], dist_out=row["dist_out"],
                maintenance_margin_rate=s.maintenance_margin_rate, min_qty_1=0.1, min_qty_2=1.0)

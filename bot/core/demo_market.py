"""A deterministic synthetic market for `bot data demo` (no exchange needed).

Model (log prices, time in days):

- a market factor M with daily vol 5 %, and for every symbol an idiosyncratic
  random walk; leaders and independents: d ln p_i = b_i dM + s_i dW_i, total daily
  vol 10 % (b_i in [0.5, 1.0]);
- cointegrated groups: each member follows its leader through
  ln p_m = a_m + beta_m ln p_L + u_m, where u_m is an Ornstein-Uhlenbeck process
  with half-life h_m (hours) and stationary std sd_m (log units); the manifest
  lists every group with its betas and half-lives, the known answer for research;
- planted so that they are findable in a train window of a few days of 1 h bars:
  groups are (leader, member) pairs, as many as `selection.max_pairs` (8) when the
  symbols allow (n_groups = min(8, (n_symbols - 3) // 3), so at least a third of
  the names stay independent random walks), each pair disjoint from the others;
  half-lives of 4-8 h (many half-lives inside a 9-day window and inside the demo's
  24-48 bar z windows, so the z-score reverts within a trade), spread std of 3-4 %
  (a reversion from 2 sd pays the round trip's fees many times over) and betas of
  0.8-1.25. The legs' own moves are large (10 % a day, about 2 % an hour) against
  the spread's hourly moves (about 1.2 %): a member paired with any other symbol is
  dominated by that symbol's random walk, so only the planted pair has a small,
  stationary normalised-price gap (the distance rule, lowest `std`, ranks it first);
  with the quieter legs of a real alt (4 % a day) the member's spread noise would
  make it mean-revert against every symbol and no statistic could tell the planted
  pair from the others;
- top-of-book quotes every `quote_interval_s`: bid/ask = mid (1 -/+ h) rounded to
  the tick size, h a per-symbol half spread of 0.5..1.5 bp (spreads 1-3 bp),
  lognormal sizes;
- instruments with Bybit-like qty steps (1e-3..100), tick sizes of ~1e-4 of the
  price and min notional 5 USDT.

Same seed, same market, bit for bit.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from bot.core.exchange.rounding import assumed_qty_step

REFERENCE = ("BTC", "ETH", "SOL")
_NAMES = (
    "ADA", "ALGO", "APT", "ARB", "ATOM", "AVAX", "BCH", "DOGE", "DOT", "ENA", "FIL", "HBAR",
    "JASMY", "KAS", "LINK", "LTC", "NEAR", "ONDO", "OP", "SEI", "SUI", "TON", "TRX", "VET",
    "WLD", "XLM", "XRP", "ZEC", "AAVE", "INJ", "MANTA", "ARKM", "RENDER", "TIA", "STX", "IMX",
    "GALA", "SAND", "MANA", "CRV", "LDO", "UNI", "SNX", "RUNE", "KAVA", "ZIL", "ONE", "ICP",
)
SYMBOL_VOL = 0.10  # daily vol of a leader or an independent symbol (log units)
MARKET_VOL = 0.05  # daily vol of the market factor
HALF_LIFE_H = (4.0, 8.0)  # planted spreads' half-lives, hours
SPREAD_SD = (0.03, 0.04)  # planted spreads' stationary std, log units
BETA = (0.8, 1.25)  # planted hedge ratios
PLANTED_PAIRS = 8  # the default selection.max_pairs: the demo plants that many disjoint pairs
_START_PRICE = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0}


@dataclass(frozen=True)
class DemoGroup:
    leader: str
    members: tuple[str, ...]
    betas: tuple[float, ...]
    half_lives_h: tuple[float, ...]
    spread_sd: tuple[float, ...]


@dataclass
class DemoMarket:
    quotes: pl.DataFrame  # symbol, ts, bid_price, ask_price, bid_size, ask_size
    instruments: pl.DataFrame
    groups: list[DemoGroup]
    symbols: list[str]
    start: dt.datetime
    end: dt.datetime
    seed: int
    quote_interval_s: float
    meta: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "quote_interval_s": self.quote_interval_s,
            "symbols": self.symbols,
            "groups": [
                {
                    "leader": g.leader,
                    "members": list(g.members),
                    "betas": list(g.betas),
                    "half_lives_h": list(g.half_lives_h),
                    "spread_sd": list(g.spread_sd),
                }
                for g in self.groups
            ],
            "cointegrated_pairs": self.cointegrated_pairs(),
        }

    def cointegrated_pairs(self) -> list[list[str]]:
        """Every (leader, member) and (member, member) pair inside a group."""
        pairs = []
        for g in self.groups:
            names = [g.leader, *g.members]
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    pairs.append([names[i], names[j]])
        return pairs


def _tick_size(price: float) -> float:
    return float(10.0 ** (math.floor(math.log10(price)) - 5))


def generate(
    n_symbols: int = 30,
    days: float = 30.0,
    quote_interval_s: float = 5.0,
    seed: int = 7,
    start: dt.datetime = dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    n_groups: int | None = None,
) -> DemoMarket:
    if n_symbols < 8:
        raise ValueError(f"--symbols: at least 8 symbols (got {n_symbols})")
    if n_symbols - 3 > len(_NAMES):
        raise ValueError(f"--symbols: at most {len(_NAMES) + 3} symbols (got {n_symbols})")
    if days <= 0 or quote_interval_s <= 0:
        raise ValueError(f"--days and --quote-interval must be positive (got {days}, {quote_interval_s})")
    rng = np.random.default_rng(seed)
    names = list(REFERENCE) + list(_NAMES[: n_symbols - 3])
    n_steps = int(round(days * 86400.0 / quote_interval_s))
    dt_days = quote_interval_s / 86400.0
    sq = math.sqrt(dt_days)

    # groups: disjoint (leader, member) pairs drawn from the non-reference names
    pool = names[3:]
    if n_groups is None:
        n_groups = min(PLANTED_PAIRS, len(pool) // 3)
    order = rng.permutation(len(pool))
    groups: list[DemoGroup] = []
    k = 0
    for _g in range(n_groups):
        size = 2
        if k + size > len(pool):
            break
        chosen = [pool[i] for i in order[k:k + size]]
        k += size
        betas = tuple(round(float(rng.uniform(*BETA)), 3) for _ in chosen[1:])
        hls = tuple(round(float(rng.uniform(*HALF_LIFE_H)), 1) for _ in chosen[1:])
        sds = tuple(round(float(rng.uniform(*SPREAD_SD)), 4) for _ in chosen[1:])
        groups.append(DemoGroup(chosen[0], tuple(chosen[1:]), betas, hls, sds))
    member_of = {m: (g, i) for g in groups for i, m in enumerate(g.members)}

    market = rng.standard_normal(n_steps) * MARKET_VOL * sq
    log_p: dict[str, np.ndarray] = {}
    start_price: dict[str, float] = {}
    for name in names:
        p0 = _START_PRICE.get(name, float(np.exp(rng.uniform(math.log(0.005), math.log(80.0)))))
        start_price[name] = p0
    for name in names:
        if name in member_of:
            continue
        b = float(rng.uniform(0.5, 1.0))
        idio = math.sqrt(max(SYMBOL_VOL**2 - (b * MARKET_VOL) ** 2, 1e-6))
        steps = b * market + rng.standard_normal(n_steps) * idio * sq
        log_p[name] = math.log(start_price[name]) + np.cumsum(steps) - steps[0]
    for name, (g, i) in member_of.items():
        beta, hl_h, sd = g.betas[i], g.half_lives_h[i], g.spread_sd[i]
        kappa = math.log(2.0) / (hl_h / 24.0)  # per day
        phi = math.exp(-kappa * dt_days)
        eps_sd = sd * math.sqrt(1.0 - phi * phi)
        u = np.empty(n_steps)
        u[0] = rng.standard_normal() * sd
        shocks = rng.standard_normal(n_steps) * eps_sd
        # exact AR(1) discretisation of the OU process
        from scipy.signal import lfilter  # local: only the demo needs scipy

        u[1:] = lfilter([1.0], [1.0, -phi], shocks[1:], zi=[phi * u[0]])[0]
        leader = log_p[g.leader]
        alpha = math.log(start_price[name]) - beta * leader[0]
        log_p[name] = alpha + beta * leader + u

    ts0 = start.timestamp()
    ts = ts0 + np.arange(n_steps) * quote_interval_s
    frames = []
    inst_rows = []
    for name in names:
        mid = np.exp(log_p[name])
        p_ref = float(mid[0])
        tick = _tick_size(p_ref)
        step = assumed_qty_step(p_ref)
        half = float(rng.uniform(0.5e-4, 1.5e-4))
        bid = np.floor(mid * (1 - half) / tick) * tick
        ask = np.ceil(mid * (1 + half) / tick) * tick
        ask = np.where(ask <= bid, bid + tick, ask)
        dec = max(0, -int(math.floor(math.log10(tick))))
        bid = np.round(bid, dec)
        ask = np.round(ask, dec)
        notional = np.exp(rng.normal(math.log(20000.0), 0.8, size=(2, n_steps)))
        size_dec = max(0, -int(math.floor(math.log10(step))))
        bid_sz = np.round(np.maximum(notional[0] / mid, step), size_dec)
        ask_sz = np.round(np.maximum(notional[1] / mid, step), size_dec)
        frames.append(pl.DataFrame({
            "symbol": f"{name}USDT", "ts": ts, "bid_price": bid, "ask_price": ask,
            "bid_size": bid_sz, "ask_size": ask_sz,
        }))
        inst_rows.append({
            "symbol": f"{name}USDT", "base_coin": name, "qty_step": step, "min_qty": step,
            "max_qty": step * 1e7, "max_mkt_qty": step * 1e6, "min_notional": 5.0, "tick_size": tick,
            "price_scale": dec, "status": "Trading",
        })
    quotes = pl.concat(frames).sort(["ts", "symbol"])
    end = start + dt.timedelta(seconds=n_steps * quote_interval_s)
    return DemoMarket(
        quotes=quotes, instruments=pl.DataFrame(inst_rows), groups=groups, symbols=names,
        start=start, end=end, seed=seed, quote_interval_s=quote_interval_s,
    )


def bars_from_quotes(quotes: pl.DataFrame, tf_s: int) -> pl.DataFrame:
    """OHLC of mid per symbol and bar (open time = floor(ts / tf_s) * tf_s), volume 0.

    The same rule as the SQL bar builder of bot.core.db.market (tested equal).
    `quotes` must be in time order within each symbol.
    """
    return (
        quotes.with_columns(
            ((pl.col("bid_price") + pl.col("ask_price")) / 2).alias("mid"),
            ((pl.col("ts") // tf_s) * tf_s).alias("open_time"),
        )
        # quotes are in time order within each symbol, so first/last need no sort
        .group_by(["symbol", "open_time"], maintain_order=True)
        .agg(
            pl.col("mid").first().alias("open"),
            pl.col("mid").max().alias("high"),
            pl.col("mid").min().alias("low"),
            pl.col("mid").last().alias("close"),
        )
        .with_columns(pl.lit(0.0).alias("volume"))
        .sort(["open_time", "symbol"])
    )

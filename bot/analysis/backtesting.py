"""The batch backtester (strategy.md sections 3-6), with the notebook's signature.

`backtest(df, token_1, token_2, dp_1, dp_2, ...)` runs the signal state machine of
:mod:`bot.analysis.signals` over every tick of `df` in one compiled loop, with the
sizing/fill/fee/funding helpers of :mod:`bot.analysis.fills`, and returns one row
per closed trade. :class:`StreamingBacktest` runs the very same functions tick by
tick (the parity test proves identical trades).

Liquidation (strategy.md section 4, `maintenance_margin_rate`, None = off): on every
tick with valid prices while a position is open, before the signal rules of that tick,
:func:`bot.analysis.fills.liquidation_hit` values the position at its close prices; a
hit closes it at that tick (no latency, a pending close dropped) with the close fees,
reason 4, and the pair then behaves as after a stop-loss (sl_method). The position's
margin M is computed once, at the fill (:func:`bot.analysis.fills.pair_margin`).

`df` is the notebook's frame: `ts` (epoch s) or `time`, per token T the columns
`T_bid_price`, `T_ask_price` (quote ticks) and `z_score`; optionally `beta` (for
beta_neutral). Bars-only frames (no bid/ask columns, the bar close in column `T`)
get synthetic quotes: bid = close (1 - half_spread), ask = close (1 + half_spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from bot.analysis.fills import (
    QTY_METHODS,
    funding_paid,
    leg_notionals,
    liquidation_hit,
    pair_margin,
    round_qty,
    step_decimals,
)
from bot.analysis.signals import (
    ACT_CLOSE,
    ACT_NONE,
    REASON_FORCE,
    REASON_LIQUIDATION,
    REASON_NAMES,
    S_POS,
    SIDE_NAMES,
    STATE_SIZE,
    SignalParams,
    machine_closed,
    machine_liquidated,
    machine_open_skipped,
    machine_opened,
    machine_skip,
    machine_step,
)

# sizing vector slots
Z_BALANCE, Z_ORDER, Z_MIN_ORDER, Z_LEV, Z_QTYM, Z_STD1, Z_STD2, Z_FEE = range(8)
Z_STEP1, Z_DEC1, Z_STEP2, Z_DEC2, Z_MINQ1, Z_MINQ2, Z_MINN1, Z_MINN2 = range(8, 16)
Z_MMR = 16  # maintenance_margin_rate, NaN: liquidation off
SIZING_SIZE = 17

# outcome of an entry (open_trade) and the per-reason skip counts (strategy.md section 3)
OPEN_FILLED, SKIP_MIN_ORDER, SKIP_MIN_QTY, SKIP_MIN_NOTIONAL = range(4)
SKIP_REASONS = ("min_order_size", "min_qty", "min_notional")  # count slot k = code k + 1
C_LIQUIDATIONS = 3  # kernel counts: [skips by reason (3), liquidations, blocks skipped]
C_BLOCKS_SKIPPED = 4
N_COUNTS = 5

# trade record columns (internal)
TRADE_COLS = (
    "open_ts", "close_ts", "qty_1", "qty_2", "open_price_1", "close_price_1", "open_price_2",
    "close_price_2", "pos_side", "fees", "profit_1", "profit_2", "total_profit", "reason",
    "open_z", "close_z", "funding_1", "funding_2", "fees_1", "fees_2", "balance",
)
NTC = len(TRADE_COLS)
T_OPEN_TS, T_CLOSE_TS, T_Q1, T_Q2, T_OP1, T_CP1, T_OP2, T_CP2, T_SIDE, T_FEES = range(10)
T_P1, T_P2, T_TOT, T_REASON, T_OZ, T_CZ, T_F1, T_F2, T_FEE1, T_FEE2, T_BAL = range(10, 21)


@dataclass(frozen=True)
class SizingParams:
    balance: float = 100.0
    order_size: float = 50.0
    min_order_size: float = 0.0
    leverage: float = 2.0
    qty_method: str = "usdt_neutral"
    std_1: float = 1.0
    std_2: float = 1.0
    fee_rate: float = 0.001
    qty_step_1: float = 1.0
    qty_step_2: float = 1.0
    min_qty_1: float | None = None
    min_qty_2: float | None = None
    min_notional_1: float = 0.0
    min_notional_2: float = 0.0
    maintenance_margin_rate: float | None = 0.01  # None: no liquidation

    def __post_init__(self) -> None:
        if self.qty_method not in QTY_METHODS:
            raise ValueError(f"qty_method: must be one of {list(QTY_METHODS)} (got {self.qty_method!r})")
        for name in ("balance", "order_size", "leverage"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a positive number (got {v!r})")
        if not (self.fee_rate >= 0):
            raise ValueError(f"fee_rate: must be >= 0 (got {self.fee_rate})")
        if self.qty_method == "vol_neutral" and not (self.std_1 > 0 and self.std_2 > 0):
            raise ValueError(f"std_1, std_2: must be positive for vol_neutral (got {self.std_1}, {self.std_2})")
        step_decimals(self.qty_step_1)
        step_decimals(self.qty_step_2)
        mmr = self.maintenance_margin_rate
        if mmr is not None and not (isinstance(mmr, int | float) and 0 <= mmr < 1):
            raise ValueError(f"maintenance_margin_rate: must be in [0, 1) or None (got {mmr!r})")

    def to_array(self) -> np.ndarray:
        z = np.empty(SIZING_SIZE)
        z[Z_BALANCE] = self.balance
        z[Z_ORDER] = self.order_size
        z[Z_MIN_ORDER] = self.min_order_size
        z[Z_LEV] = self.leverage
        z[Z_QTYM] = QTY_METHODS[self.qty_method]
        z[Z_STD1] = self.std_1
        z[Z_STD2] = self.std_2
        z[Z_FEE] = self.fee_rate
        z[Z_STEP1] = self.qty_step_1
        z[Z_DEC1] = step_decimals(self.qty_step_1)
        z[Z_STEP2] = self.qty_step_2
        z[Z_DEC2] = step_decimals(self.qty_step_2)
        z[Z_MINQ1] = self.qty_step_1 if self.min_qty_1 is None else self.min_qty_1
        z[Z_MINQ2] = self.qty_step_2 if self.min_qty_2 is None else self.min_qty_2
        z[Z_MINN1] = self.min_notional_1
        z[Z_MINN2] = self.min_notional_2
        z[Z_MMR] = math.nan if self.maintenance_margin_rate is None else self.maintenance_margin_rate
        return z


@njit(cache=True)
def open_trade(
    rec: np.ndarray, sz: np.ndarray, balance: float, side: int, ts: float, z: float,
    bid1: float, ask1: float, bid2: float, ask2: float, beta: float,
) -> int:
    """Size and fill an entry into `rec` (one trade row): OPEN_FILLED, or why sizing
    refused it, checked in this order: SKIP_MIN_ORDER (margin per leg m <= 0 or
    m < min_order_size), SKIP_MIN_QTY (a leg's qty below its min qty, or zero: e.g. a
    NaN beta), SKIP_MIN_NOTIONAL (a leg's qty * fill price below its min notional)."""
    margin = min(sz[Z_ORDER], balance / 2.0)
    if margin <= 0.0 or margin < sz[Z_MIN_ORDER]:
        return SKIP_MIN_ORDER
    n1, n2 = leg_notionals(margin, sz[Z_LEV], int(sz[Z_QTYM]), sz[Z_STD1], sz[Z_STD2], beta)
    if side == 1:
        px1 = ask1
        px2 = bid2
    else:
        px1 = bid1
        px2 = ask2
    q1 = round_qty(n1, px1, sz[Z_STEP1], int(sz[Z_DEC1]))
    q2 = round_qty(n2, px2, sz[Z_STEP2], int(sz[Z_DEC2]))
    if q1 < sz[Z_MINQ1] - 1e-12 or q2 < sz[Z_MINQ2] - 1e-12 or q1 <= 0.0 or q2 <= 0.0:
        return SKIP_MIN_QTY
    if q1 * px1 < sz[Z_MINN1] or q2 * px2 < sz[Z_MINN2]:
        return SKIP_MIN_NOTIONAL
    rec[:] = np.nan
    rec[T_OPEN_TS] = ts
    rec[T_Q1] = q1
    rec[T_Q2] = q2
    rec[T_OP1] = px1
    rec[T_OP2] = px2
    rec[T_SIDE] = side
    rec[T_OZ] = z
    return OPEN_FILLED


def entry_sizing_problem(sizing: SizingParams, low_1: float, low_2: float) -> str | None:
    """Why no entry can be sized at the initial balance, or None when one can: the entry
    of strategy.md section 3 tried on both sides at the most favourable fill prices seen
    (each leg's lowest price over the window, `low_1`, `low_2`: the largest qty for a
    notional), beta 1. A name of SKIP_REASONS; beta_neutral (its legs follow the beta
    of each tick) is never judged here (None)."""
    if sizing.qty_method == "beta_neutral" or not (low_1 > 0 and low_2 > 0):
        return None
    sz = sizing.to_array()
    rec = np.empty(NTC)
    why = OPEN_FILLED
    for side in (1, 2):
        why = open_trade(rec, sz, sizing.balance, side, 0.0, 0.0, low_1, low_1, low_2, low_2, 1.0)
        if why == OPEN_FILLED:
            return None
    return SKIP_REASONS[why - 1]


@njit(cache=True)
def trade_margin(rec: np.ndarray, sz: np.ndarray) -> float:
    """M of the open trade `rec`, USDT (fills.pair_margin), once per position."""
    return pair_margin(rec[T_Q1], rec[T_OP1], rec[T_Q2], rec[T_OP2], sz[Z_LEV])


@njit(cache=True)
def trade_liquidated(rec: np.ndarray, margin: float, mmr: float, bid1: float, ask1: float,
                     bid2: float, ask2: float) -> bool:
    """fills.liquidation_hit for the open trade `rec` with margin M = `margin`."""
    return liquidation_hit(rec[T_SIDE], rec[T_Q1], rec[T_Q2], rec[T_OP1], rec[T_OP2], margin, mmr,
                           bid1, ask1, bid2, ask2)


@njit(cache=True)
def finish_close(
    rec: np.ndarray, sz: np.ndarray, balance: float, ts: float, z: float, reason: int,
    bid1: float, ask1: float, bid2: float, ask2: float, fund1: float, fund2: float,
) -> float:
    """Fill the close of the open trade `rec`, compute fees and PnL; returns the new balance."""
    side = rec[T_SIDE]
    if side == 1.0:
        cp1 = bid1
        cp2 = ask2
        s1 = 1.0
    else:
        cp1 = ask1
        cp2 = bid2
        s1 = -1.0
    fee = sz[Z_FEE]
    q1 = rec[T_Q1]
    q2 = rec[T_Q2]
    fees1 = fee * rec[T_OP1] * q1 + fee * cp1 * q1
    fees2 = fee * rec[T_OP2] * q2 + fee * cp2 * q2
    p1 = s1 * (cp1 - rec[T_OP1]) * q1 - fees1 + fund1
    p2 = -s1 * (cp2 - rec[T_OP2]) * q2 - fees2 + fund2
    rec[T_CLOSE_TS] = ts
    rec[T_CP1] = cp1
    rec[T_CP2] = cp2
    rec[T_FEE1] = fees1
    rec[T_FEE2] = fees2
    rec[T_FEES] = fees1 + fees2
    rec[T_F1] = fund1
    rec[T_F2] = fund2
    rec[T_P1] = p1
    rec[T_P2] = p2
    rec[T_TOT] = p1 + p2
    rec[T_REASON] = reason
    rec[T_CZ] = z
    rec[T_BAL] = balance + p1 + p2
    return balance + p1 + p2


@njit(cache=True)
def _fillable(b1: float, a1: float, b2: float, a2: float) -> bool:
    return b1 > 0.0 and a1 > 0.0 and b2 > 0.0 and a2 > 0.0 and math.isfinite(b1 + a1 + b2 + a2)


@njit(cache=True)
def _push(out: np.ndarray, ntr: int, rec: np.ndarray) -> np.ndarray:
    """Append `rec` as row `ntr` of `out`, doubling its capacity when full."""
    if ntr == out.shape[0]:
        bigger = np.empty((2 * out.shape[0], NTC))
        bigger[:ntr] = out[:ntr]
        out = bigger
    out[ntr] = rec
    return out


@njit(cache=True)
def _last_z(z: np.ndarray, i: int) -> float:
    """z of the last tick at or before i that has one (NaN: none)."""
    while i >= 0 and z[i] != z[i]:
        i -= 1
    return z[i] if i >= 0 else np.nan


@njit(cache=True)
def _close_at(
    cur: np.ndarray, sz: np.ndarray, balance: float, i: int, zc: float, reason: int, ts: np.ndarray,
    bid1: np.ndarray, ask1: np.ndarray, bid2: np.ndarray, ask2: np.ndarray, f1_ts: np.ndarray,
    f1_rate: np.ndarray, f2_ts: np.ndarray, f2_rate: np.ndarray, mid1: np.ndarray, mid2: np.ndarray,
) -> float:
    """Close the open trade `cur` at tick i (funding over (open_ts, ts_i]); the new balance."""
    s = 1.0 if cur[T_SIDE] == 1.0 else -1.0
    f1 = funding_paid(cur[T_OPEN_TS], ts[i], s, cur[T_Q1], f1_ts, f1_rate, ts, mid1)
    f2 = funding_paid(cur[T_OPEN_TS], ts[i], -s, cur[T_Q2], f2_ts, f2_rate, ts, mid2)
    return finish_close(cur, sz, balance, ts[i], zc, reason, bid1[i], ask1[i], bid2[i], ask2[i], f1, f2)


@njit(cache=True)
def _liq_clear(rec: np.ndarray, margin: float, mmr: float, b1_min: float, a1_max: float, b2_min: float,
               a2_max: float) -> bool:
    """True when no tick whose fillable prices lie within these extremes can liquidate `rec`.

    The equity margin of :func:`bot.analysis.fills.liquidation_hit`, M + PnL - mmr (c1 q1 + c2 q2),
    rises with the leg sold at a bid and falls with the leg bought back at an ask (mmr < 1),
    so its minimum over a block is at (lowest bid, highest ask) of the closing sides. The
    block is cleared only with a margin of 1e-9 of the notional left, far above the
    rounding of the formula, so a cleared block never hides a hit the tick loop would see.
    """
    q1 = rec[T_Q1]
    q2 = rec[T_Q2]
    if rec[T_SIDE] == 1.0:
        c1 = b1_min
        c2 = a2_max
        pnl = (c1 - rec[T_OP1]) * q1 - (c2 - rec[T_OP2]) * q2
    else:
        c1 = a1_max
        c2 = b2_min
        pnl = -(c1 - rec[T_OP1]) * q1 + (c2 - rec[T_OP2]) * q2
    notional = c1 * q1 + c2 * q2
    return margin + pnl - mmr * notional > 1e-9 * notional


@njit(cache=True)
def z_blocks(z: np.ndarray, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of `bs` ticks (the last one shorter): min and max of the non-null z
    (+inf and -inf for a block without one)."""
    n = z.shape[0]
    nb = (n + bs - 1) // bs
    lo = np.full(nb, np.inf)
    hi = np.full(nb, -np.inf)
    for k in range(nb):
        a = np.inf
        b = -np.inf
        for i in range(k * bs, min(n, (k + 1) * bs)):
            v = z[i]
            if v < a:
                a = v
            if v > b:
                b = v
        lo[k] = a
        hi[k] = b
    return lo, hi


@njit(cache=True)
def price_blocks(bid1: np.ndarray, ask1: np.ndarray, bid2: np.ndarray, ask2: np.ndarray, bs: int) -> np.ndarray:
    """Per block of `bs` ticks, over its fillable ticks: [min bid_1, max ask_1, min bid_2,
    max ask_2]; [+inf, -inf, +inf, -inf] for a block without a fillable tick."""
    n = bid1.shape[0]
    nb = (n + bs - 1) // bs
    out = np.empty((nb, 4))
    for k in range(nb):
        b1 = np.inf
        a1 = -np.inf
        b2 = np.inf
        a2 = -np.inf
        for i in range(k * bs, min(n, (k + 1) * bs)):
            if _fillable(bid1[i], ask1[i], bid2[i], ask2[i]):
                b1 = min(b1, bid1[i])
                a1 = max(a1, ask1[i])
                b2 = min(b2, bid2[i])
                a2 = max(a2, ask2[i])
        out[k, 0] = b1
        out[k, 1] = a1
        out[k, 2] = b2
        out[k, 3] = a2
    return out


@njit(cache=True)
def _run(
    ts: np.ndarray, z: np.ndarray, bid1: np.ndarray, ask1: np.ndarray, bid2: np.ndarray,
    ask2: np.ndarray, beta: np.ndarray, p: np.ndarray, sz: np.ndarray, force_close: bool,
    f1_ts: np.ndarray, f1_rate: np.ndarray, f2_ts: np.ndarray, f2_rate: np.ndarray,
    bs: int, zmin: np.ndarray, zmax: np.ndarray, pblk: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The batch loop: (trade rows, counts) with counts = skipped entries per SKIP_REASONS
    and, in slot C_LIQUIDATIONS, the number of liquidations.

    With `bs` > 0, blocks of `bs` ticks (z_blocks, price_blocks of the same arrays) are
    stepped over whole when they cannot change anything; the result is the tick loop's
    to the bit (tests/analysis/test_tick_blocks.py)."""
    n = ts.shape[0]
    st = np.zeros(STATE_SIZE)
    st[6] = np.nan  # S_ADV
    low_in = p[0]  # P_LOW_IN
    high_in = p[2]  # P_HIGH_IN
    out = np.empty((64, NTC))
    ntr = 0
    cur = np.empty(NTC)
    balance = sz[Z_BALANCE]
    counts = np.zeros(N_COUNTS, np.int64)
    mmr = sz[Z_MMR]
    liq_on = mmr == mmr
    margin = 0.0  # M of the open position, set at its fill
    mid1 = np.empty(0)
    mid2 = np.empty(0)
    if f1_ts.shape[0] > 0 or f2_ts.shape[0] > 0:
        mid1 = (bid1 + ask1) * 0.5
        mid2 = (bid2 + ask2) * 0.5
    start = 0
    while start < n:
        stop = n if bs <= 0 else min(start + bs, n)
        if bs > 0:
            # a block the machine provably steps over unchanged (signals.machine_skip) and,
            # in a position, that cannot liquidate it, is skipped whole
            k = start // bs
            clear = True
            if st[S_POS] != 0.0 and liq_on and pblk[k, 0] != np.inf:
                clear = _liq_clear(cur, margin, mmr, pblk[k, 0], pblk[k, 1], pblk[k, 2], pblk[k, 3])
            if clear and machine_skip(st, p, zmin[k], zmax[k]):
                counts[C_BLOCKS_SKIPPED] += 1
                start = stop
                continue
        for i in range(start, stop):
            # fast path, same decision as machine_step: FLAT, nothing armed, pending or
            # blocked, and z null or strictly inside (low_in, high_in) changes nothing
            if st[0] == 0.0 and st[1] == 0.0 and st[8] == 0.0 and st[7] == 0.0:
                zi = z[i]
                if zi != zi or (zi > low_in and zi < high_in):
                    continue
            b1 = bid1[i]
            a1 = ask1[i]
            b2 = bid2[i]
            a2 = ask2[i]
            ok = _fillable(b1, a1, b2, a2)
            if st[S_POS] != 0.0 and liq_on and ok and trade_liquidated(cur, margin, mmr, b1, a1, b2, a2):
                machine_liquidated(st, p)
                balance = _close_at(cur, sz, balance, i, _last_z(z, i), REASON_LIQUIDATION, ts, bid1, ask1, bid2,
                                    ask2, f1_ts, f1_rate, f2_ts, f2_rate, mid1, mid2)
                out = _push(out, ntr, cur)
                ntr += 1
                counts[C_LIQUIDATIONS] += 1
                continue
            act = machine_step(st, p, ts[i], z[i], ok)
            if act == ACT_NONE:
                continue
            if act == ACT_CLOSE:
                zc = z[i] if z[i] == z[i] else st[11]
                reason = machine_closed(st, p)
                balance = _close_at(cur, sz, balance, i, zc, reason, ts, bid1, ask1, bid2, ask2, f1_ts, f1_rate,
                                    f2_ts, f2_rate, mid1, mid2)
                if ntr == out.shape[0]:  # inline, not _push: measured ~5 % faster on this hot branch
                    bigger = np.empty((2 * ntr, NTC))
                    bigger[:ntr] = out[:ntr]
                    out = bigger
                out[ntr] = cur
                ntr += 1
            else:
                zo = z[i] if z[i] == z[i] else st[11]
                why = open_trade(cur, sz, balance, act, ts[i], zo, b1, a1, b2, a2, beta[i])
                if why == OPEN_FILLED:
                    machine_opened(st, z[i])
                    margin = trade_margin(cur, sz)
                else:
                    machine_open_skipped(st)
                    counts[why - 1] += 1
        start = stop
    if force_close and st[S_POS] != 0.0:
        j = n - 1
        while j >= 0 and not _fillable(bid1[j], ask1[j], bid2[j], ask2[j]):
            j -= 1
        if j >= 0:
            st[10] = REASON_FORCE  # S_REASON
            machine_closed(st, p)
            balance = _close_at(cur, sz, balance, j, _last_z(z, j), REASON_FORCE, ts, bid1, ask1, bid2, ask2,
                                f1_ts, f1_rate, f2_ts, f2_rate, mid1, mid2)
            out = _push(out, ntr, cur)
            ntr += 1
    return out[:ntr].copy(), counts


def _no_skips() -> dict[str, int]:
    return dict.fromkeys(SKIP_REASONS, 0)


@dataclass
class BacktestResult:
    """Trades (section 6), skipped entries (total and per reason: `skips` maps
    min_order_size / min_qty / min_notional to counts summing to `skipped_entries`),
    the final balance (USDT) and the number of liquidations (trades with reason 4)."""

    trades: pl.DataFrame
    skipped_entries: int
    final_balance: float
    params: dict[str, Any] = field(default_factory=dict)
    liquidations: int = 0
    skips: dict[str, int] = field(default_factory=_no_skips)


def trades_frame(rows: np.ndarray) -> pl.DataFrame:
    """Polars trades frame (strategy.md section 6) from the internal record array."""
    data: dict[str, Any] = {name: rows[:, k] for k, name in enumerate(TRADE_COLS)}
    frame = pl.DataFrame(data, schema={name: pl.Float64 for name in TRADE_COLS})
    return frame.with_columns(
        pl.col("pos_side").cast(pl.Int8),
        pl.col("reason").cast(pl.Int8),
        pl.from_epoch((pl.col("open_ts") * 1_000_000).cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC").alias("open_time"),
        pl.from_epoch((pl.col("close_ts") * 1_000_000).cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC").alias("close_time"),
    ).select(
        "open_time", "close_time", "open_ts", "close_ts", "qty_1", "qty_2", "open_price_1",
        "close_price_1", "open_price_2", "close_price_2", "pos_side", "fees", "profit_1",
        "profit_2", "total_profit", "reason", "open_z", "close_z", "funding_1", "funding_2",
        "fees_1", "fees_2", "balance",
    )


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    return df.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy()


@dataclass(frozen=True)
class TickArrays:
    ts: np.ndarray
    z: np.ndarray
    bid_1: np.ndarray
    ask_1: np.ndarray
    bid_2: np.ndarray
    ask_2: np.ndarray
    beta: np.ndarray


def tick_arrays(df: pl.DataFrame, token_1: str, token_2: str, half_spread: float = 1e-4,
                z_col: str = "z_score", beta_col: str = "beta") -> TickArrays:
    """Extract contiguous float64 arrays from the notebook's frame (or a bars-only frame)."""
    if z_col not in df.columns:
        raise ValueError(f"df: missing column {z_col!r} (have {df.columns[:12]})")
    if "ts" in df.columns:
        ts = _col(df, "ts")
    elif "time" in df.columns:
        ts = df.get_column("time").dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6
    else:
        raise ValueError("df: needs a 'ts' (epoch seconds) or 'time' column")
    if ts.size > 1 and np.any(np.diff(ts) < 0):
        raise ValueError("df: ticks must be sorted by ts")
    legs = []
    for tok in (token_1, token_2):
        bid, ask = f"{tok}_bid_price", f"{tok}_ask_price"
        if bid in df.columns and ask in df.columns:
            legs.append((_col(df, bid), _col(df, ask)))
        elif tok in df.columns:
            close = _col(df, tok)
            legs.append((close * (1.0 - half_spread), close * (1.0 + half_spread)))
        else:
            raise ValueError(f"df: no prices for {tok!r}: need {bid!r}/{ask!r} or the bar close {tok!r}")
    beta = _col(df, beta_col) if beta_col in df.columns else np.full(ts.size, np.nan)
    return TickArrays(ts, _col(df, z_col), legs[0][0], legs[0][1], legs[1][0], legs[1][1], beta)


def _funding_arrays(funding: Any, token: str) -> tuple[np.ndarray, np.ndarray]:
    empty = (np.empty(0), np.empty(0))
    if funding is None:
        return empty
    if isinstance(funding, dict):
        got = funding.get(token)
        if got is None:
            return empty
        if isinstance(got, pl.DataFrame):
            f = got
        else:
            t, r = got
            return np.asarray(t, dtype=np.float64), np.asarray(r, dtype=np.float64)
    else:
        f = funding.filter(pl.col("token") == token)
    f = f.sort("ts")
    return _col(f, "ts"), _col(f, "rate")


@dataclass(frozen=True)
class TickBlocks:
    """Block extremes of one TickArrays (z_blocks, price_blocks) for the block skip of the
    batch loop: computed once per z series and reused by every parameter set run on it."""

    bs: int
    zmin: np.ndarray
    zmax: np.ndarray
    prices: np.ndarray


BLOCK_TICKS = 64  # ticks per block: measured fastest of 16-512 on 5 s ticks (bench/bench_reselect.py)


def tick_blocks(ticks: TickArrays, bs: int = BLOCK_TICKS, prices: np.ndarray | None = None) -> TickBlocks:
    """The block extremes of `ticks`; `prices` (price_blocks of the same price arrays and
    `bs`) when already computed for another z series over the same ticks."""
    if bs < 1:
        raise ValueError(f"bs: must be >= 1 (got {bs})")
    zmin, zmax = z_blocks(ticks.z, bs)
    if prices is None:
        prices = price_blocks(ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2, bs)
    elif prices.shape != (zmin.shape[0], 4):
        raise ValueError(f"prices: expected shape {(zmin.shape[0], 4)} for {ticks.z.shape[0]} ticks, got {prices.shape}")
    return TickBlocks(bs, zmin, zmax, prices)


_NO_BLOCKS = (0, np.empty(0), np.empty(0), np.empty((0, 4)))


@dataclass(frozen=True)
class RawBacktest:
    """The kernel's answer before any frame is built: trade records (TRADE_COLS columns),
    skipped entries per SKIP_REASONS, liquidations, final balance (USDT)."""

    rows: np.ndarray
    skips: dict[str, int]
    liquidations: int
    final_balance: float
    blocks_skipped: int = 0  # blocks of TickBlocks.bs ticks stepped over whole

    @property
    def skipped_entries(self) -> int:
        return sum(self.skips.values())

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, TRADE_COLS.index(name)]


def run_backtest_rows(
    ticks: TickArrays, signal: SignalParams, sizing: SizingParams, force_close: bool = False,
    funding: Any = None, token_1: str = "", token_2: str = "", blocks: TickBlocks | None = None,
) -> RawBacktest:
    """The compiled loop over prepared arrays, without building the trades frame (a sweep
    runs it for every parameter set); `blocks` (tick_blocks of `ticks`) turns on the block skip."""
    f1 = _funding_arrays(funding, token_1)
    f2 = _funding_arrays(funding, token_2)
    if blocks is not None and blocks.zmin.shape[0] != (ticks.z.shape[0] + blocks.bs - 1) // blocks.bs:
        raise ValueError("blocks: computed for other ticks (block count does not match)")
    blk = _NO_BLOCKS if blocks is None else (blocks.bs, blocks.zmin, blocks.zmax, blocks.prices)
    rows, counts = _run(
        ticks.ts, ticks.z, ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2, ticks.beta,
        signal.to_array(), sizing.to_array(), bool(force_close), f1[0], f1[1], f2[0], f2[1], *blk,
    )
    bal = float(rows[-1, T_BAL]) if rows.shape[0] else float(sizing.balance)
    skips = {name: int(counts[k]) for k, name in enumerate(SKIP_REASONS)}
    return RawBacktest(rows, skips, int(counts[C_LIQUIDATIONS]), bal, int(counts[C_BLOCKS_SKIPPED]))


def run_backtest(
    ticks: TickArrays, signal: SignalParams, sizing: SizingParams, force_close: bool = False,
    funding: Any = None, token_1: str = "", token_2: str = "", blocks: TickBlocks | None = None,
) -> BacktestResult:
    """Run the compiled loop over prepared arrays (used by sweeps to reuse z-scores)."""
    raw = run_backtest_rows(ticks, signal, sizing, force_close, funding, token_1, token_2, blocks)
    return BacktestResult(trades_frame(raw.rows), raw.skipped_entries, raw.final_balance,
                          liquidations=raw.liquidations, skips=raw.skips)


def named_trades(trades: pl.DataFrame) -> pl.DataFrame:
    """The trades frame with `pos_side` and `reason` as names (SIDE_NAMES, REASON_NAMES:
    1 long / 2 short; 1 exit, 2 stop-loss, 3 force close, 4 liquidation), for printing;
    the frame itself keeps the notebook's integers."""
    return trades.with_columns(
        pl.col("pos_side").replace_strict(SIDE_NAMES, return_dtype=pl.Utf8),
        pl.col("reason").replace_strict(REASON_NAMES, return_dtype=pl.Utf8),
    )


def backtest(
    df: pl.DataFrame,
    token_1: str,
    token_2: str,
    dp_1: float,
    dp_2: float,
    thresh_low_in: float = -2.0,
    thresh_low_out: float = -0.5,
    thresh_high_in: float = 2.0,
    thresh_high_out: float = 0.5,
    long_possible: bool = True,
    short_possible: bool = True,
    balance: float = 100.0,
    order_size: float = 50.0,
    qty_method: str = "usdt_neutral",
    std_1: float = 1.0,
    std_2: float = 1.0,
    fee_rate: float = 0.001,
    sl_std: float | None = None,
    sl_dist: float | None = None,
    sl_method: str = "leave",
    sl_seconds: float = 0.0,
    open_method: str = "direct",
    close_method: str = "direct",
    leverage: float = 2.0,
    dist_in: float = 0.0,
    dist_out: float = 0.0,
    force_close: bool = False,
    verbose: int = 0,
    *,
    min_order_size: float = 0.0,
    min_qty_1: float | None = None,
    min_qty_2: float | None = None,
    min_notional_1: float = 0.0,
    min_notional_2: float = 0.0,
    latency_s: float = 0.0,
    half_spread: float = 1e-4,
    funding: Any = None,
    maintenance_margin_rate: float | None = 0.01,
    return_result: bool = False,
) -> Any:
    """Backtest one parameter set over `df`; returns the trades frame (section 6).

    `dp_1`, `dp_2` are the legs' qty steps (e.g. 1 for JASMY, 0.1). `funding` is an
    optional polars frame (`token`, `ts`, `rate`) or a mapping token -> (ts, rate).
    `maintenance_margin_rate` (fraction of the close notional; None: off) sets the
    liquidation of section 4 (reason 4). With `return_result=True` returns a
    :class:`BacktestResult` (trades, skipped entries in total and per reason,
    liquidations, final balance). Deterministic: same input, same output bit for bit.
    """
    signal = SignalParams(
        thresh_low_in, thresh_low_out, thresh_high_in, thresh_high_out, bool(long_possible),
        bool(short_possible), open_method, close_method, float(dist_in), float(dist_out),
        sl_std, sl_dist, float(sl_seconds), sl_method, float(latency_s),
    )
    sizing = SizingParams(
        float(balance), float(order_size), float(min_order_size), float(leverage), qty_method,
        float(std_1), float(std_2), float(fee_rate), float(dp_1), float(dp_2), min_qty_1,
        min_qty_2, float(min_notional_1), float(min_notional_2),
        None if maintenance_margin_rate is None else float(maintenance_margin_rate),
    )
    if qty_method == "beta_neutral" and "beta" not in df.columns:
        raise ValueError("qty_method: beta_neutral needs a 'beta' column in df (lr spread)")
    ticks = tick_arrays(df, token_1, token_2, half_spread)
    res = run_backtest(ticks, signal, sizing, force_close, funding, token_1, token_2)
    if verbose:
        by_reason = ", ".join(f"{k} {v}" for k, v in res.skips.items())
        print(f"{token_1}-{token_2}: {res.trades.height} trades, {res.liquidations} liquidations, "
              f"{res.skipped_entries} skipped entries ({by_reason}), balance {res.final_balance:.4f}")
    return res if return_result else res.trades


class StreamingBacktest:
    """Feed ticks one at a time through the step interface; same trades as `backtest`.

    Counts as in :class:`BacktestResult`: `skipped_entries`, `skips` (per reason),
    `liquidations`. A liquidation (checked before the signal rules, as in the batch
    loop) closes the position at the tick and `on_tick` returns ACT_CLOSE; the row's
    reason is 4.
    """

    def __init__(self, signal: SignalParams, sizing: SizingParams):
        from bot.analysis.signals import SignalMachine

        self.machine = SignalMachine(signal)
        self._sz = sizing.to_array()
        self._mmr = float(self._sz[Z_MMR])
        self._margin = 0.0  # M of the open position, set at its fill
        self.balance = float(sizing.balance)
        self._cur = np.empty(NTC)
        self.rows: list[np.ndarray] = []
        self.skipped_entries = 0
        self.skips = _no_skips()
        self.liquidations = 0
        self._last: tuple[float, float, float, float, float, float] | None = None
        self._last_z = math.nan

    def on_tick(self, ts: float, z: float | None, bid_1: float, ask_1: float, bid_2: float,
                ask_2: float, beta: float = math.nan) -> int:
        zz = math.nan if z is None else float(z)
        ok = bool(_fillable(bid_1, ask_1, bid_2, ask_2))
        if zz == zz:
            self._last_z = zz
        if ok:
            self._last = (ts, self._last_z, bid_1, ask_1, bid_2, ask_2)  # z: the last one up to here
        if (ok and self.machine.position != 0 and self._mmr == self._mmr
                and trade_liquidated(self._cur, self._margin, self._mmr, bid_1, ask_1, bid_2, ask_2)):
            self.machine.liquidated()
            self._book_close(ts, self._last_z, REASON_LIQUIDATION, bid_1, ask_1, bid_2, ask_2)
            self.liquidations += 1
            return ACT_CLOSE
        act = self.machine.on_tick(ts, zz, ok)
        if act == ACT_NONE:
            return act
        if act == ACT_CLOSE:
            self._close(ts, zz, bid_1, ask_1, bid_2, ask_2, None)
        else:
            zo = zz if zz == zz else float(self.machine.state()[11])
            why = open_trade(self._cur, self._sz, self.balance, act, float(ts), zo, bid_1, ask_1, bid_2, ask_2, beta)
            if why == OPEN_FILLED:
                self.machine.opened(zz)
                self._margin = float(trade_margin(self._cur, self._sz))
            else:
                self.machine.open_skipped()
                self.skipped_entries += 1
                self.skips[SKIP_REASONS[why - 1]] += 1
        return act

    def _close(self, ts: float, zz: float, b1: float, a1: float, b2: float, a2: float,
               reason: int | None) -> None:
        st = self.machine.state()
        zc = zz if (zz == zz or reason is not None) else float(st[11])
        r = self.machine.closed()
        self._book_close(ts, zc, r if reason is None else reason, b1, a1, b2, a2)

    def _book_close(self, ts: float, zc: float, reason: int, b1: float, a1: float, b2: float, a2: float) -> None:
        self.balance = float(finish_close(self._cur, self._sz, self.balance, float(ts), zc, reason,
                                          b1, a1, b2, a2, 0.0, 0.0))
        self.rows.append(self._cur.copy())

    def finish(self, force_close: bool = False) -> pl.DataFrame:
        if force_close and self.machine.position != 0 and self._last is not None:
            ts, zz, b1, a1, b2, a2 = self._last
            self._close(ts, zz, b1, a1, b2, a2, 3)
        rows = np.array(self.rows) if self.rows else np.empty((0, NTC))
        return trades_frame(rows)

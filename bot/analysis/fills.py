"""Sizing, quantity rounding, fills, fees and funding (strategy.md sections 3-4).

Compiled helpers shared by the batch backtester and the streaming one, so both
compute the same numbers. All amounts are in USDT; quantities in base units.

- margin per leg m = min(order_size, balance / 2); skip if m < min_order_size or m <= 0;
  notional per leg N = m * leverage.
- usdt_neutral: (N, N); vol_neutral: (2N s2/(s1+s2), 2N s1/(s1+s2));
  beta_neutral: (2N/(1+|b|), 2N|b|/(1+|b|)).
- qty = n * step with n = floor(notional / (price * step) + 1e-9), rounded to the
  step's decimals (so 454.8 stays 454.8, never 454.79999999999995): `qty_decimal`
  exactly in Decimal (orders), `round_qty` in floats (the backtester; equal to it
  but within 6.7e-16 x of x = k - 1e-9, x = notional / (price * step), k an integer).
- fee per fill = fee_rate * price * qty; profit_i = side_i (close_i - open_i) qty_i
  - fees_i + funding_i.
- funding: for each funding time t_f with open_ts < t_f <= close_ts, a long leg pays
  qty * mark * rate and a short leg receives it (rate > 0); mark = the leg's mid at
  the last tick at or before t_f.
- liquidation (isolated margin per pair trade): margin in use
  M = (qty_1 open_1 + qty_2 open_2) / leverage; at close prices c_i (long leg at the
  bid, short leg at the ask) equity = M + sum_i side_i (c_i - open_i) qty_i (fees and
  funding not counted); liquidated when equity <= mmr * sum_i c_i qty_i.
"""

from __future__ import annotations

import math
from decimal import Decimal, Inexact, localcontext

import numpy as np
from numba import njit

QTY_METHODS = {"usdt_neutral": 0, "vol_neutral": 1, "beta_neutral": 2}


def step_decimals(step: float) -> int:
    """Decimals of a qty step as written (0.001 -> 3, 10 -> 0, 1e-05 -> 5)."""
    if not (isinstance(step, int | float) and math.isfinite(step) and step > 0):
        raise ValueError(f"qty step: must be a positive number (got {step!r})")
    exp = Decimal(repr(float(step))).normalize().as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


_TOLERANCE = Decimal("1e-9")


def _as_decimal(v: Decimal | float | int | str) -> Decimal:
    """A number as written: a float through its repr (0.3 -> Decimal('0.3'), not 0.29999...)."""
    return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)


def qty_decimal(notional: Decimal | float | int | str, price: Decimal | float | int | str,
                step: Decimal | float | int | str) -> Decimal:
    """The order quantity of strategy.md section 5, exactly: n * step with
    n = floor(notional / (price * step) + 1e-9).

    Computed in Decimal on the numbers as written (floats through repr), without
    rounding: n = (notional + 1e-9 * price * step) // (price * step). The result is
    quantized to the step's decimals (454.8 stays 454.8; a step of 10 gives 1230,
    not 1.23E+3). A non-positive or non-finite notional or price gives 0 (no order);
    a step that is not a positive finite number is a ValueError. The one
    implementation of the rule: the order path (`rounding.qty_for_notional`) calls
    it, and it is the reference of the backtester's compiled :func:`round_qty`.
    """
    d_not, d_px, d_step = _as_decimal(notional), _as_decimal(price), _as_decimal(step)
    if not (d_step.is_finite() and d_step > 0):
        raise ValueError(f"qty step must be a positive number (got {step!r})")
    exp = d_step.normalize().as_tuple().exponent
    assert isinstance(exp, int)
    quantum = Decimal(1).scaleb(min(0, exp))  # the step's last decimal; 1 for 10, 25
    if not (d_not.is_finite() and d_px.is_finite() and d_not > 0 and d_px > 0):
        return Decimal(0).quantize(quantum)
    with localcontext() as ctx:
        # exact: products and sums of the inputs' digits fit, an integer part of up to 200 digits too
        ctx.prec = 200
        ctx.traps[Inexact] = True
        unit = d_px * d_step  # the value of one step
        n = (d_not + _TOLERANCE * unit) // unit
        return (n * d_step).quantize(quantum)


@njit(cache=True)
def round_qty(notional: float, price: float, step: float, decimals: int) -> float:
    """The float twin of :func:`qty_decimal` for the compiled backtester:
    n = floor(notional / (price * step) + 1e-9), qty = round(n * step, decimals)
    (`decimals` = step_decimals(step)); 0 for a non-positive or non-finite notional or price.

    Equal to float(qty_decimal(notional, price, step)) except where float arithmetic
    cannot tell. Let x = notional / (price * step) on the numbers as written and
    u = 2^-53. The float quotient is within 5u x of x (each input's nearest double, the
    product, the division: one rounding each) and adding 1e-9 rounds once more (u x),
    so n differs, by one, only if x + 1e-9 lies within 6u x + 1e-24 (6.7e-16 x) of
    an integer k (tested: tests/analysis/test_backtest.py). For x < 7.5e5 steps this
    band holds neither k nor k's float noise (|x - k| <= 6u x): it takes a quotient
    like 999.999999999, 1e-9 below an integer to 12 digits. From 1.5e6 steps on,
    1e-9 is below the float error, and a notional computed in floats as k steps can
    floor to k - 1. The quantity (n * step to the step's decimals) is the nearest
    double of the decimal n * step while n * step * 10^decimals < 2^51.
    """
    if not (price > 0.0) or not (notional > 0.0) or math.isinf(notional) or math.isinf(price):
        return 0.0
    n = math.floor(notional / (price * step) + 1e-9)
    if n <= 0:
        return 0.0
    return round(n * step, decimals)


@njit(cache=True)
def leg_notionals(
    margin: float, leverage: float, qty_method: int, std_1: float, std_2: float, beta: float
) -> tuple[float, float]:
    n = margin * leverage
    if qty_method == 1:
        s = std_1 + std_2
        if not (s > 0.0):
            return np.nan, np.nan
        return 2.0 * n * std_2 / s, 2.0 * n * std_1 / s
    if qty_method == 2:
        b = abs(beta)
        if not math.isfinite(b):
            return np.nan, np.nan
        return 2.0 * n / (1.0 + b), 2.0 * n * b / (1.0 + b)
    return n, n


@njit(cache=True)
def funding_paid(
    open_ts: float,
    close_ts: float,
    side: float,
    qty: float,
    f_ts: np.ndarray,
    f_rate: np.ndarray,
    tick_ts: np.ndarray,
    mid: np.ndarray,
) -> float:
    """Funding cash flow of one leg (positive = received). `side` +1 long, -1 short."""
    total = 0.0
    if f_ts.shape[0] == 0:
        return 0.0
    k = np.searchsorted(f_ts, open_ts, side="right")
    while k < f_ts.shape[0] and f_ts[k] <= close_ts:
        j = np.searchsorted(tick_ts, f_ts[k], side="right") - 1
        if j >= 0:
            total -= side * qty * mid[j] * f_rate[k]
        k += 1
    return total


@njit(cache=True)
def pair_margin(qty_1: float, open_1: float, qty_2: float, open_2: float, leverage: float) -> float:
    """Margin in use of a pair trade, USDT: M = (qty_1 open_1 + qty_2 open_2) / leverage,
    the open notionals at the fill prices (strategy.md section 4)."""
    return (qty_1 * open_1 + qty_2 * open_2) / leverage


@njit(cache=True)
def liquidation_hit(
    pos_side: float, qty_1: float, qty_2: float, open_1: float, open_2: float, margin: float,
    mmr: float, bid_1: float, ask_1: float, bid_2: float, ask_2: float,
) -> bool:
    """True when a pair position is liquidated at these prices (strategy.md section 4).

    pos_side 1 (long token_1, short token_2) closes leg 1 at `bid_1` and leg 2 at
    `ask_2`; pos_side 2 closes leg 1 at `ask_1` and leg 2 at `bid_2`. With c_i those
    close prices and `margin` = M (:func:`pair_margin`), in USDT:
    equity = M + side_1 (c_1 - open_1) qty_1 + side_2 (c_2 - open_2) qty_2, side +1 long,
    -1 short (price PnL only: no fees, no funding); liquidated iff
    equity <= mmr * (c_1 qty_1 + c_2 qty_2). `mmr` NaN (rule off) is never a hit.
    The one implementation: the batch kernel, the step interface and the paper
    exchange all call it.
    """
    if pos_side == 1.0:
        c1 = bid_1
        c2 = ask_2
        pnl = (c1 - open_1) * qty_1 - (c2 - open_2) * qty_2
    else:
        c1 = ask_1
        c2 = bid_2
        pnl = -(c1 - open_1) * qty_1 + (c2 - open_2) * qty_2
    return margin + pnl <= mmr * (c1 * qty_1 + c2 * qty_2)

"""Sizing, quantity rounding, fills, fees and funding (strategy.md sections 3-4).

Compiled helpers shared by the batch backtester and the streaming one, so both
compute the same numbers. All amounts are in USDT; quantities in base units.

- margin per leg m = min(order_size, balance / 2); skip if m < min_order_size or m <= 0;
  notional per leg N = m * leverage.
- usdt_neutral: (N, N); vol_neutral: (2N s2/(s1+s2), 2N s1/(s1+s2));
  beta_neutral: (2N/(1+|b|), 2N|b|/(1+|b|)).
- qty = n * step with n = floor(notional / (price * step) + 1e-9), rounded to the
  step's decimals (so 454.8 stays 454.8, never 454.79999999999995).
- fee per fill = fee_rate * price * qty; profit_i = side_i (close_i - open_i) qty_i
  - fees_i + funding_i.
- funding: for each funding time t_f with open_ts < t_f <= close_ts, a long leg pays
  qty * mark * rate and a short leg receives it (rate > 0); mark = the leg's mid at
  the last tick at or before t_f.
"""

from __future__ import annotations

import math
from decimal import Decimal

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


def qty_decimal(notional: Decimal | float | str, price: Decimal | float | str, step: Decimal | float | str) -> Decimal:
    """Decimal-exact order quantity: floor(notional / (price * step) + 1e-9) * step.

    For orders that leave the bot (the exchange adapters); equals :func:`round_qty`
    wherever the quantity has at most 15 significant digits (every real order).
    """
    d_not, d_px, d_step = (Decimal(repr(v)) if isinstance(v, float) else Decimal(v) for v in (notional, price, step))
    if d_px <= 0 or d_step <= 0 or d_not <= 0:
        return Decimal(0) * d_step
    n = int((d_not / (d_px * d_step) + Decimal("1e-9")).to_integral_value(rounding="ROUND_FLOOR"))
    return (d_step * max(n, 0)).quantize(d_step.normalize()) if n > 0 else Decimal(0)


@njit(cache=True)
def round_qty(notional: float, price: float, step: float, decimals: int) -> float:
    """Largest multiple of `step` whose value at `price` does not exceed `notional`."""
    if not (price > 0.0) or not (notional > 0.0):
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

"""Quote coverage of a tick series: how much of a window traded on real quotes.

A loaded window (bot.core.db.market.load_pair_data) holds quote ticks where the
recorder saw both legs, and one bar-close tick for every bar without any
(strategy.md section 1, bars-only mode). The coverage of [start, end) is

    coverage = quoted slots / (quoted slots + bar-close ticks)

where a slot is a bar interval [k * tf, (k + 1) * tf) holding at least one quote
tick. 1.0: quotes all along; 0.0: bars-only (imported candles); NaN: no tick in
the window. Pure: arrays in, a number out.
"""

from __future__ import annotations

import math

import numpy as np


def quote_coverage(tick_ts: np.ndarray, is_quote: np.ndarray, start: float, end: float, tf_s: float) -> float:
    """Share of the bar slots of [start, end) with ticks that are backed by quote ticks."""
    ts = np.asarray(tick_ts, dtype=np.float64)
    q = np.asarray(is_quote, dtype=bool)
    if ts.shape != q.shape:
        raise ValueError(f"tick_ts and is_quote differ in shape ({ts.shape} vs {q.shape})")
    if not tf_s > 0:
        raise ValueError(f"tf_s must be positive (got {tf_s})")
    inside = (ts >= start) & (ts < end)
    if not inside.any():
        return math.nan
    quoted_slots = np.unique(np.floor(ts[inside & q] / tf_s)).size
    bar_ticks = int(np.count_nonzero(inside & ~q))
    return float(quoted_slots / (quoted_slots + bar_ticks))

"""Spread and rolling z-score (strategy.md section 2), batch and streaming forms.

For a tick at time t let B(t) be the last W completed bars strictly before the bar
that contains t (bar open = floor(t / tf_s) * tf_s; the bar containing t is never
used). On B(t):

- ``dist``: beta = 1, alpha = 0;  ``lr``: OLS of ln close_1 = alpha + beta ln close_2.
- bar spreads s_k = ln c1_k - beta ln c2_k - alpha; spread_mean = mean(s_k),
  spread_std = sample std (ddof 1) of s_k.
- raw tick spread r_t = ln mid_1 - beta ln mid_2 - alpha, with the alpha and beta in
  force at that tick; with ``median_length`` m > 1 the tick spread s_t is the median
  of the last m raw tick spreads that exist (fewer at the start: the median of those
  there are).
- z = (s_t - spread_mean) / spread_std.

Null (NaN) z: fewer than W bars behind the tick, spread_std == 0 (or a degenerate
OLS with var(ln c2) == 0), or a non-positive / NaN mid. A tick without a defined raw
spread (bad price, or lr during warm-up) does not enter the median buffer.

Both forms call the same compiled kernels (`window_stats`, `tick_spread_median`),
so batch and streaming agree bit for bit, not only to 1e-9.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np
from numba import njit

TF_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400, "1d": 86400}
SPREAD_METHODS = ("dist", "lr")


def tf_seconds(tf: str | int) -> int:
    """Bar length in seconds of a timeframe string ('5m', '1h', ...) or an int of seconds."""
    if isinstance(tf, int | np.integer):
        if tf <= 0:
            raise ValueError(f"tf: must be positive seconds (got {tf})")
        return int(tf)
    try:
        return TF_SECONDS[tf]
    except KeyError:
        raise ValueError(f"tf: unknown timeframe (got {tf!r}; expected one of {sorted(TF_SECONDS)})") from None


def _method_code(spr_method: str) -> int:
    if spr_method not in SPREAD_METHODS:
        raise ValueError(f"spr_method: must be 'dist' or 'lr' (got {spr_method!r})")
    return 1 if spr_method == "lr" else 0


@njit(cache=True)
def window_stats(ly1: np.ndarray, ly2: np.ndarray, is_lr: int) -> tuple[float, float, float, float]:
    """(alpha, beta, spread_mean, spread_std) of one window of log closes; NaNs if degenerate."""
    n = ly1.shape[0]
    nan = np.nan
    if n < 2:
        return nan, nan, nan, nan
    for k in range(n):
        if not (math.isfinite(ly1[k]) and math.isfinite(ly2[k])):
            return nan, nan, nan, nan
    alpha = 0.0
    beta = 1.0
    if is_lr:
        mx = 0.0
        my = 0.0
        for k in range(n):
            mx += ly2[k]
            my += ly1[k]
        mx /= n
        my /= n
        sxx = 0.0
        sxy = 0.0
        for k in range(n):
            dx = ly2[k] - mx
            sxx += dx * dx
            sxy += dx * (ly1[k] - my)
        if sxx == 0.0:
            return nan, nan, nan, nan
        beta = sxy / sxx
        alpha = my - beta * mx
    m = 0.0
    for k in range(n):
        m += ly1[k] - beta * ly2[k] - alpha
    m /= n
    ss = 0.0
    for k in range(n):
        d = ly1[k] - beta * ly2[k] - alpha - m
        ss += d * d
    sd = math.sqrt(ss / (n - 1))
    return alpha, beta, m, sd


@njit(cache=True)
def _median_small(buf: np.ndarray, count: int) -> float:
    tmp = np.empty(count)
    for k in range(count):
        tmp[k] = buf[k]
    # insertion sort: m is small (default 6)
    for a in range(1, count):
        v = tmp[a]
        b = a - 1
        while b >= 0 and tmp[b] > v:
            tmp[b + 1] = tmp[b]
            b -= 1
        tmp[b + 1] = v
    if count % 2 == 1:
        return tmp[count // 2]
    return 0.5 * (tmp[count // 2 - 1] + tmp[count // 2])


@njit(cache=True)
def tick_spread_median(window: np.ndarray, count: int) -> float:
    """Median of the `count` most recent raw spreads held in `window` (any order)."""
    return _median_small(window, count)


@njit(cache=True)
def _bar_stats_all(lc1: np.ndarray, lc2: np.ndarray, wind: int, is_lr: int) -> np.ndarray:
    """stats[n] = window_stats over bars [n - wind, n); row n is in force for ticks
    with exactly n completed bars behind them. Rows n < wind are NaN."""
    nb = lc1.shape[0]
    out = np.full((nb + 1, 4), np.nan)
    for n in range(wind, nb + 1):
        a, b, m, s = window_stats(lc1[n - wind:n], lc2[n - wind:n], is_lr)
        out[n, 0] = a
        out[n, 1] = b
        out[n, 2] = m
        out[n, 3] = s
    return out


@njit(cache=True)
def _tick_pass(
    tick_ts: np.ndarray,
    mid1: np.ndarray,
    mid2: np.ndarray,
    bar_ts: np.ndarray,
    stats: np.ndarray,
    tf_s: int,
    median_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_t = tick_ts.shape[0]
    spread = np.full(n_t, np.nan)
    mean = np.full(n_t, np.nan)
    std = np.full(n_t, np.nan)
    z = np.full(n_t, np.nan)
    beta_out = np.full(n_t, np.nan)
    ring = np.empty(max(median_length, 1))
    count = 0
    head = 0
    nb = bar_ts.shape[0]
    n = 0  # completed bars strictly before the current tick's bar
    for i in range(n_t):
        bar_open = math.floor(tick_ts[i] / tf_s) * tf_s
        while n < nb and bar_ts[n] < bar_open:
            n += 1
        alpha = stats[n, 0]
        beta = stats[n, 1]
        m = stats[n, 2]
        s = stats[n, 3]
        p1 = mid1[i]
        p2 = mid2[i]
        if not (p1 > 0.0 and p2 > 0.0 and math.isfinite(p1) and math.isfinite(p2)):
            continue
        if not math.isfinite(beta):
            continue
        raw = math.log(p1) - beta * math.log(p2) - alpha
        if median_length > 1:
            ring[head] = raw
            head = (head + 1) % median_length
            if count < median_length:
                count += 1
            sp = _median_small(ring, count)
        else:
            sp = raw
        spread[i] = sp
        mean[i] = m
        std[i] = s
        beta_out[i] = beta
        if s > 0.0 and math.isfinite(s):
            z[i] = (sp - m) / s
    return spread, mean, std, z, beta_out


class ZScoreColumns(NamedTuple):
    """Per-tick outputs, float64 arrays aligned with the input ticks (NaN = null)."""

    spread: np.ndarray
    spread_mean: np.ndarray
    spread_std: np.ndarray
    z_score: np.ndarray
    beta: np.ndarray


def _check_sorted(name: str, ts: np.ndarray) -> None:
    if ts.size > 1 and np.any(np.diff(ts) < 0):
        raise ValueError(f"{name}: timestamps must be sorted ascending")


def zscore_arrays(
    tick_ts: np.ndarray,
    mid_1: np.ndarray,
    mid_2: np.ndarray,
    bar_ts: np.ndarray,
    close_1: np.ndarray,
    close_2: np.ndarray,
    tf: str | int,
    wind: int,
    spr_method: str = "lr",
    median_length: int = 1,
) -> ZScoreColumns:
    """Batch z-score over arrays. `bar_ts` are bar OPEN times (epoch s), sorted.

    Units: timestamps in epoch seconds; prices in quote currency; spreads are log
    price differences; z is dimensionless.
    """
    if wind < 2:
        raise ValueError(f"wind: must be >= 2 bars (got {wind})")
    if median_length < 1:
        raise ValueError(f"median_length: must be >= 1 (got {median_length})")
    is_lr = _method_code(spr_method)
    tf_s = tf_seconds(tf)
    tick_ts = np.ascontiguousarray(tick_ts, dtype=np.float64)
    bar_ts = np.ascontiguousarray(bar_ts, dtype=np.float64)
    _check_sorted("ticks", tick_ts)
    _check_sorted("bars", bar_ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        c1 = np.asarray(close_1, dtype=np.float64)
        c2 = np.asarray(close_2, dtype=np.float64)
        lc1 = np.where(c1 > 0, np.log(np.where(c1 > 0, c1, 1.0)), np.nan)
        lc2 = np.where(c2 > 0, np.log(np.where(c2 > 0, c2, 1.0)), np.nan)
    stats = _bar_stats_all(np.ascontiguousarray(lc1), np.ascontiguousarray(lc2), int(wind), is_lr)
    out = _tick_pass(
        tick_ts,
        np.ascontiguousarray(mid_1, dtype=np.float64),
        np.ascontiguousarray(mid_2, dtype=np.float64),
        bar_ts,
        stats,
        tf_s,
        int(median_length),
    )
    return ZScoreColumns(*out)


class StreamingZScore:
    """The same z-score fed one completed bar and one tick at a time (live executor).

    Call `on_bar(open_ts, close_1, close_2)` when a bar completes (in order), and
    `on_tick(ts, mid_1, mid_2)` for each quote; it returns the tick's z (NaN = null).
    A bar fed with an open time at or after the current tick's bar is an error:
    that would be look-ahead.
    """

    def __init__(self, tf: str | int, wind: int, spr_method: str = "lr", median_length: int = 1):
        if wind < 2:
            raise ValueError(f"wind: must be >= 2 bars (got {wind})")
        if median_length < 1:
            raise ValueError(f"median_length: must be >= 1 (got {median_length})")
        self.tf_s = tf_seconds(tf)
        self.wind = int(wind)
        self.is_lr = _method_code(spr_method)
        self.median_length = int(median_length)
        self._bars: deque[tuple[float, float, float]] = deque(maxlen=self.wind)
        self._last_bar_ts = -math.inf
        self._stats: tuple[float, float, float, float] = (math.nan,) * 4
        self._ring = np.empty(max(self.median_length, 1))
        self._count = 0
        self._head = 0
        self.last_spread = math.nan
        self.last_mean = math.nan
        self.last_std = math.nan
        self.last_beta = math.nan

    @property
    def bars_held(self) -> int:
        return len(self._bars)

    def on_bar(self, open_ts: float, close_1: float, close_2: float) -> None:
        if open_ts <= self._last_bar_ts:
            raise ValueError(f"bars must arrive in order (got {open_ts} after {self._last_bar_ts})")
        self._last_bar_ts = float(open_ts)
        l1 = math.log(close_1) if close_1 > 0 else math.nan
        l2 = math.log(close_2) if close_2 > 0 else math.nan
        self._bars.append((float(open_ts), l1, l2))
        if len(self._bars) == self.wind:
            arr = np.array(self._bars)
            self._stats = window_stats(
                np.ascontiguousarray(arr[:, 1]), np.ascontiguousarray(arr[:, 2]), self.is_lr
            )
        else:
            self._stats = (math.nan,) * 4

    def on_tick(self, ts: float, mid_1: float, mid_2: float) -> float:
        bar_open = math.floor(ts / self.tf_s) * self.tf_s
        if self._last_bar_ts >= bar_open:
            raise ValueError(f"bar {self._last_bar_ts} is not completed before tick {ts}: look-ahead")
        alpha, beta, m, s = self._stats
        self.last_spread = self.last_mean = self.last_std = self.last_beta = math.nan
        if not (mid_1 > 0 and mid_2 > 0 and math.isfinite(mid_1) and math.isfinite(mid_2)):
            return math.nan
        if not math.isfinite(beta):
            return math.nan
        raw = math.log(mid_1) - beta * math.log(mid_2) - alpha
        if self.median_length > 1:
            self._ring[self._head] = raw
            self._head = (self._head + 1) % self.median_length
            self._count = min(self._count + 1, self.median_length)
            sp = float(tick_spread_median(self._ring, self._count))
        else:
            sp = raw
        self.last_spread, self.last_mean, self.last_std, self.last_beta = sp, m, s, beta
        if s > 0.0 and math.isfinite(s):
            return (sp - m) / s
        return math.nan

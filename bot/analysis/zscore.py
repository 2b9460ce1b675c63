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
  there are). For ``dist`` (beta 1, alpha 0, always in force) a raw spread exists at
  every tick with valid prices, warm-up included; for ``lr`` only once W bars exist.
- z = (s_t - spread_mean) / spread_std.

Null (NaN) z: fewer than W bars behind the tick, spread_std == 0 (or a degenerate
OLS with var(ln c2) == 0), or a non-positive / NaN mid. A tick without a defined raw
spread (bad price, or lr during warm-up) does not enter the median buffer.

Both forms share `window_stats` (the window's alpha, beta, mean, std); the batch
form computes the median with a sorted sliding window, the streaming form by
sorting its ring; they agree to ~1e-15 (tested to 1e-9 on random data). Without a
tick median the batch form runs one fused pass per tick (`_z_fused`: bar lookup by a
merge walk, log mids, spread, z), which matches the staged passes to ~1e-14 in z
(math.log against numpy's log) and is 2-2.5x faster (bench/bench_zscore.py).
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
def _median_small(buf: np.ndarray, count: int, tmp: np.ndarray) -> float:
    """Median of buf[:count] using the scratch array `tmp` (len >= count)."""
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
    return _median_small(window, count, np.empty(count))


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
def _raw_spreads(l1: np.ndarray, l2: np.ndarray, nbefore: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Raw tick spread ln m1 - beta ln m2 - alpha with the (alpha, beta) in force (NaN: none)."""
    n_t = l1.shape[0]
    out = np.empty(n_t)
    for i in range(n_t):
        n = nbefore[i]
        out[i] = l1[i] - stats[n, 1] * l2[i] - stats[n, 0]
    return out


@njit(cache=True)
def _rolling_median_defined(raw: np.ndarray, m: int) -> np.ndarray:
    """At each i with a defined raw[i]: the median of the last m defined values up to i.

    Keeps the window sorted (insert the new value, drop the oldest) so each step
    costs O(m) comparisons; NaN where raw[i] is NaN.
    """
    n_t = raw.shape[0]
    out = np.full(n_t, np.nan)
    ring = np.empty(m)
    srt = np.empty(m)
    count = 0
    head = 0
    for i in range(n_t):
        v = raw[i]
        if v != v:
            continue
        if count == m:
            old = ring[head]
            k = 0
            while srt[k] != old:
                k += 1
            while k < count - 1:
                srt[k] = srt[k + 1]
                k += 1
            count -= 1
        k = count
        while k > 0 and srt[k - 1] > v:
            srt[k] = srt[k - 1]
            k -= 1
        srt[k] = v
        count += 1
        ring[head] = v
        head += 1
        if head == m:
            head = 0
        if count % 2 == 1:
            out[i] = srt[count // 2]
        else:
            out[i] = 0.5 * (srt[count // 2 - 1] + srt[count // 2])
    return out


@njit(cache=True)
def _z_pass(
    sp: np.ndarray, nbefore: np.ndarray, stats: np.ndarray, out_mean: np.ndarray, out_std: np.ndarray,
    out_z: np.ndarray,
) -> None:
    for i in range(sp.shape[0]):
        v = sp[i]
        n = nbefore[i]
        if v != v:
            out_mean[i] = np.nan
            out_std[i] = np.nan
            out_z[i] = np.nan
            continue
        m = stats[n, 2]
        s = stats[n, 3]
        out_mean[i] = m
        out_std[i] = s
        if s > 0.0 and math.isfinite(s):
            out_z[i] = (v - m) / s
        else:
            out_z[i] = np.nan


@njit(cache=True)
def _z_fused(tick_ts: np.ndarray, mid_1: np.ndarray, mid_2: np.ndarray, bar_ts: np.ndarray, tf_s: float,
             stats: np.ndarray, is_lr: int, out_spread: np.ndarray, out_mean: np.ndarray, out_std: np.ndarray,
             out_z: np.ndarray, out_beta: np.ndarray, full: int, with_beta: int) -> None:
    """One pass per tick without a tick median (m = 1): the bars behind the tick (a merge
    walk over the sorted bar opens, = searchsorted(bar_ts, floor(t / tf) * tf)), the log
    mids (NaN unless positive and finite), the raw spread with the (alpha, beta) in
    force, and z; the same values as the staged path (_safe_log, _raw_spreads, _z_pass).
    `full` 0: only z (and beta with `with_beta`) are written; the other outputs may be
    empty arrays (research reads z and beta only, and the writes are most of the cost)."""
    nb = bar_ts.shape[0]
    j = 0
    for i in range(tick_ts.shape[0]):
        bo = math.floor(tick_ts[i] / tf_s) * tf_s
        while j < nb and bar_ts[j] < bo:
            j += 1
        if with_beta:
            out_beta[i] = stats[j, 1]
        m1 = mid_1[i]
        m2 = mid_2[i]
        if m1 > 0.0 and m2 > 0.0 and math.isfinite(m1) and math.isfinite(m2):
            if is_lr:
                v = math.log(m1) - stats[j, 1] * math.log(m2) - stats[j, 0]
            else:
                v = math.log(m1) - math.log(m2)
        else:
            v = np.nan
        if full:
            out_spread[i] = v
        if v != v:
            if full:
                out_mean[i] = np.nan
                out_std[i] = np.nan
            out_z[i] = np.nan
            continue
        m = stats[j, 2]
        sd = stats[j, 3]
        if full:
            out_mean[i] = m
            out_std[i] = sd
        if sd > 0.0 and math.isfinite(sd):
            out_z[i] = (v - m) / sd
        else:
            out_z[i] = np.nan


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


def _safe_log(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((x > 0) & np.isfinite(x), np.log(np.where(x > 0, x, 1.0)), np.nan)


def zscore_multi(
    tick_ts: np.ndarray,
    mid_1: np.ndarray,
    mid_2: np.ndarray,
    bar_ts: np.ndarray,
    close_1: np.ndarray,
    close_2: np.ndarray,
    tf: str | int,
    winds: list[int] | tuple[int, ...],
    spr_method: str = "lr",
    median_length: int = 1,
    with_beta: bool = True,
    z_only: bool = False,
) -> dict[int, ZScoreColumns]:
    """Batch z-scores for several windows at once (log prices and bar lookup shared).

    `z_only` (research): spread, spread_mean and spread_std come back empty (the fused
    pass then writes z and beta only); only without a tick median.

    `bar_ts` are bar OPEN times (epoch s), sorted; timestamps in epoch seconds;
    prices in quote currency; spreads are log price differences; z is dimensionless.
    """
    for w in winds:
        if w < 2:
            raise ValueError(f"wind: must be >= 2 bars (got {w})")
    if median_length < 1:
        raise ValueError(f"median_length: must be >= 1 (got {median_length})")
    is_lr = _method_code(spr_method)
    tf_s = tf_seconds(tf)
    tick_ts = np.ascontiguousarray(tick_ts, dtype=np.float64)
    bar_ts = np.ascontiguousarray(bar_ts, dtype=np.float64)
    _check_sorted("ticks", tick_ts)
    _check_sorted("bars", bar_ts)
    lc1, lc2 = _safe_log(close_1), _safe_log(close_2)
    out: dict[int, ZScoreColumns] = {}
    if median_length == 1:  # the fused one-pass kernel (bench/bench_zscore.py)
        m1 = np.ascontiguousarray(mid_1, dtype=np.float64)
        m2 = np.ascontiguousarray(mid_2, dtype=np.float64)
        for w in winds:
            stats = _bar_stats_all(lc1, lc2, int(w), is_lr)
            size = 0 if z_only else tick_ts.size
            sp, mean, std = (np.empty(size) for _ in range(3))
            z, beta = np.empty(tick_ts.size), np.empty(tick_ts.size if with_beta else 0)
            _z_fused(tick_ts, m1, m2, bar_ts, float(tf_s), stats, is_lr, sp, mean, std, z, beta, int(not z_only),
                     int(with_beta))
            out[int(w)] = ZScoreColumns(sp, mean, std, z, beta if with_beta else np.full(0, np.nan))
        return out
    l1, l2 = _safe_log(mid_1), _safe_log(mid_2)
    bar_open = np.floor(tick_ts / tf_s) * tf_s
    nbefore = np.searchsorted(bar_ts, bar_open, side="left").astype(np.int64)
    shared_spread: np.ndarray | None = None  # dist: the tick spread does not depend on W
    for w in winds:
        stats = _bar_stats_all(lc1, lc2, int(w), is_lr)
        if shared_spread is None or is_lr:
            # dist: beta = 1, alpha = 0 are always in force, so the raw spread exists at
            # every tick with valid prices (warm-up included) and does not depend on W
            raw = _raw_spreads(l1, l2, nbefore, stats) if is_lr else l1 - l2
            spread = _rolling_median_defined(raw, int(median_length)) if median_length > 1 else raw
            if not is_lr:
                shared_spread = spread
        else:
            spread = shared_spread
        mean = np.empty(tick_ts.size)
        std = np.empty(tick_ts.size)
        z = np.empty(tick_ts.size)
        _z_pass(spread, nbefore, stats, mean, std, z)
        beta = stats[nbefore, 1] if with_beta else np.full(0, np.nan)
        out[int(w)] = ZScoreColumns(spread, mean, std, z, beta)
    return out


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
    """Batch z-score of one window (see :func:`zscore_multi`)."""
    return zscore_multi(tick_ts, mid_1, mid_2, bar_ts, close_1, close_2, tf, [wind], spr_method,
                        median_length)[int(wind)]


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
        if not self.is_lr:
            alpha, beta = 0.0, 1.0  # always in force, even during warm-up
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
        if not math.isfinite(m):
            return math.nan
        if s > 0.0 and math.isfinite(s):
            return (sp - m) / s
        return math.nan

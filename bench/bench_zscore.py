"""The z-score kernel against a minimal compiled loop of the same formula (issue 16, item 2).

    python bench/bench_zscore.py [--days 180] [--tick-s 5]

180 days of 5 s ticks (3.1M) of a synthetic pair, 1 h bars, W = 72. For dist and lr,
with and without the tick median (m = 6): `zscore_multi` (what research and the
re-selection call) against `minimal`, one numba pass per tick that keeps the W-bar
window sums incrementally and computes the same z (no NaN handling, no median ring
beyond a sorted insert). Both are warmed (compiled) first; the figure is the best of
5 runs. The outputs are compared (max |dz| over the ticks both define). `z_only` is
what research asks for (pair_job.z_ticks: z and beta, no spread/mean/std columns).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit

from bot.analysis.zscore import zscore_multi


@njit(cache=True)
def minimal(tick_ts: np.ndarray, mid_1: np.ndarray, mid_2: np.ndarray, lc1: np.ndarray, lc2: np.ndarray,
            bar0: float, tf_s: float, wind: int, is_lr: int, m: int) -> np.ndarray:
    """z per tick: bars [n - W, n) before the tick's bar, OLS (lr) or beta 1 (dist), the log
    of each tick's mids, the median of the last m tick spreads (log bar closes given). Window sums are recomputed per bar (W work per bar,
    one pass per tick), as a hand-written loop would."""
    n_t = tick_ts.shape[0]
    out = np.full(n_t, np.nan)
    ring = np.empty(m)
    srt = np.empty(m)
    count = 0
    head = 0
    cur = -1
    alpha = beta = mean = std = np.nan
    for i in range(n_t):
        n = int((math.floor(tick_ts[i] / tf_s) * tf_s - bar0) / tf_s)
        if n != cur:
            cur = n
            if n >= wind:
                a = 0.0
                b = 1.0
                if is_lr:
                    mx = 0.0
                    my = 0.0
                    for k in range(n - wind, n):
                        mx += lc2[k]
                        my += lc1[k]
                    mx /= wind
                    my /= wind
                    sxx = 0.0
                    sxy = 0.0
                    for k in range(n - wind, n):
                        dx = lc2[k] - mx
                        sxx += dx * dx
                        sxy += dx * (lc1[k] - my)
                    b = sxy / sxx
                    a = my - b * mx
                s1 = 0.0
                for k in range(n - wind, n):
                    s1 += lc1[k] - b * lc2[k] - a
                mu = s1 / wind
                s2 = 0.0
                for k in range(n - wind, n):
                    d = lc1[k] - b * lc2[k] - a - mu
                    s2 += d * d
                alpha, beta, mean, std = a, b, mu, math.sqrt(s2 / (wind - 1))
            else:
                alpha = beta = mean = std = np.nan
        if is_lr and not (beta == beta):
            continue
        v = math.log(mid_1[i]) - (beta if is_lr else 1.0) * math.log(mid_2[i]) - (alpha if is_lr else 0.0)
        if m > 1:
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
            head = (head + 1) % m
            v = srt[count // 2] if count % 2 == 1 else 0.5 * (srt[count // 2 - 1] + srt[count // 2])
        if std == std and std > 0:
            out[i] = (v - mean) / std
    return out


def market(days: float, tick_s: float, seed: int = 1) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / tick_s)
    ts = 1.7e9 + np.arange(n) * tick_s
    lx = np.cumsum(rng.normal(0, 0.0004, n))
    u = np.zeros(n)
    phi = math.exp(-math.log(2) / (6 * 3600 / tick_s))
    e = rng.normal(0, 0.01 * math.sqrt(1 - phi * phi), n)
    for i in range(1, n):  # an OU spread, 6 h half-life
        u[i] = phi * u[i - 1] + e[i]
    m1, m2 = np.exp(1.2 * lx + u + 3.0), np.exp(lx + 2.0)
    bar = 3600.0
    b_ts = np.unique(np.floor(ts / bar) * bar)
    idx = np.searchsorted(ts, b_ts + bar, side="left") - 1
    return ts, m1, m2, b_ts, m1[idx], m2[idx]


def best(fn, reps: int = 5) -> float:
    t = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=180.0)
    ap.add_argument("--tick-s", type=float, default=5.0)
    ap.add_argument("--wind", type=int, default=72)
    a = ap.parse_args()
    ts, m1, m2, b_ts, c1, c2 = market(a.days, a.tick_s)
    lc1, lc2 = np.log(c1), np.log(c2)
    print(f"{ts.size:,} ticks, {b_ts.size:,} bars, W = {a.wind}")
    print(f"{'method':6s} {'median':>6s} {'zscore_multi':>13s} {'z_only':>9s} {'minimal':>9s} {'ratio':>6s} "
          f"{'z_only':>6s} {'max |dz|':>9s}")
    for method in ("dist", "lr"):
        for med in (1, 6):
            def ours(method: str = method, med: int = med) -> np.ndarray:
                return zscore_multi(ts, m1, m2, b_ts, c1, c2, "1h", [a.wind], method, med,
                                    with_beta=False)[a.wind].z_score

            def mini(method: str = method, med: int = med) -> np.ndarray:
                return minimal(ts, m1, m2, lc1, lc2, float(b_ts[0]), 3600.0, a.wind, int(method == "lr"), med)

            def research(method: str = method, med: int = med) -> np.ndarray:  # what pair_job asks for
                return zscore_multi(ts, m1, m2, b_ts, c1, c2, "1h", [a.wind], method, med,
                                    z_only=med == 1)[a.wind].z_score

            z1, z2, z3 = ours(), mini(), research()
            both = np.isfinite(z1) & np.isfinite(z2)
            dz = float(np.max(np.abs(z1[both] - z2[both]))) if both.any() else math.nan
            assert np.array_equal(z1, z3, equal_nan=True)
            t1, t3, t2 = best(ours), best(research), best(mini)
            print(f"{method:6s} {med:6d} {t1 * 1e3:10.1f} ms {t3 * 1e3:6.1f} ms {t2 * 1e3:6.1f} ms {t1 / t2:6.2f} "
                  f"{t3 / t2:6.2f} {dz:9.1e}")


if __name__ == "__main__":
    main()

"""Research benchmark (issue: pair research). Run: python bench/bench_research.py

1. Pair statistics/features for 431 pairs on 180 days of 1h bars: the naive way
   (statsmodels `coint` both directions with autolag, Johansen, TLS, Hurst,
   half-life, RSI, correlations) per pair on a sample, against
   `open_time_features` (fast Engle-Granger) per pair, and all 431 pairs on 2 worker
   processes; p-values compared with statsmodels on every sampled pair.
2. `open_time_features` per trade: median ms (180-day block cached per bar, as the
   sweep does, and uncached); 1,000 trades through the sweep's feature path.
3. Sweep throughput: parameter sets per second per core on 60 days of 5 s ticks.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings

import numpy as np

from bot.analysis import estimators as est
from bot.analysis.open_time_features import open_time_features
from bot.config import load
from bot.config.loader import example_path
from bot.research.executor import run_local
from bot.research.pair_job import PairInput, PairOutcome, run_pair
from bot.research.params import default_params, sample_params

T0 = 1_735_689_600


def market(n_sym: int, n_bars: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = np.cumsum(rng.normal(0, 0.006, n_bars))
    out = np.empty((n_sym, n_bars))
    for k in range(n_sym):
        out[k] = np.exp(2 + 0.8 * common + np.cumsum(rng.normal(0, 0.006, n_bars)))
    return out


def naive_stats(c1: np.ndarray, c2: np.ndarray) -> dict[str, float]:
    from statsmodels.tsa.stattools import coint
    from statsmodels.tsa.vector_ar.vecm import coint_johansen

    l1, l2 = np.log(c1), np.log(c2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pv1 = coint(l1, l2)[1]
        pv2 = coint(l2, l1)[1]
        jo = coint_johansen(np.column_stack([l1, l2]), 0, 1)
    return {"pv_1": pv1, "pv_2": pv2, "jo": float(jo.lr1[0]), "tls": est.tls_beta(l1, l2),
            "hurst": est.hurst_exponent(l1 - l2), "hl": est.half_life(l1 - l2), "rsi": est.wilder_rsi(c1),
            "corr": est.corr(np.diff(l1), np.diff(l2))}


def features_task(bar_ts: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> PairOutcome:
    f = open_time_features(float(bar_ts[-1] + 3600), bar_ts, c1, c2, 3600, 72)
    return PairOutcome("a", "b", "ok", stats=f)


def main() -> None:
    n_bars = 180 * 24
    bar_ts = T0 + np.arange(n_bars) * 3600.0
    closes = market(30, n_bars)
    pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)][:431]

    sample = pairs[:20]
    t = time.perf_counter()
    naive = [naive_stats(closes[i], closes[j]) for i, j in sample]
    naive_per = (time.perf_counter() - t) / len(sample)
    t = time.perf_counter()
    fast = [open_time_features(float(bar_ts[-1] + 3600), bar_ts, closes[i], closes[j], 3600, 72) for i, j in sample]
    fast_per = (time.perf_counter() - t) / len(sample)
    worst = max(max(abs(a["pv_1"] - b["pv_1"]), abs(a["pv_2"] - b["pv_2"])) for a, b in zip(naive, fast, strict=True))

    tasks = [(str(i), str(j), functools.partial(features_task, bar_ts, closes[i], closes[j])) for i, j in pairs]
    t = time.perf_counter()
    run_local(tasks, workers=2)
    all_2 = time.perf_counter() - t

    # per-trade features: 1,000 trade open times spread over the last 60 days
    rng = np.random.default_rng(1)
    opens = np.sort(rng.uniform(bar_ts[-60 * 24], bar_ts[-1], 1000))
    c1, c2 = closes[0], closes[1]
    cache: dict = {}
    per = []
    t = time.perf_counter()
    for t_open in opens:
        s = time.perf_counter()
        open_time_features(float(t_open), bar_ts, c1, c2, 3600, 72, cache=cache)
        per.append(time.perf_counter() - s)
    thousand = time.perf_counter() - t
    uncached = []
    for t_open in opens[:20]:
        s = time.perf_counter()
        open_time_features(float(t_open), bar_ts, c1, c2, 3600, 72)
        uncached.append(time.perf_counter() - s)

    # sweep throughput: 60 days of 5 s ticks, one pair, one core
    cfg = load(example_path())
    n = 60 * 17280
    tick_ts = T0 + np.arange(n) * 5.0
    x = np.cumsum(rng.normal(0, 0.0003, n))
    u = np.zeros(n)
    eps = rng.normal(0, 0.0003, n)
    for k in range(1, n):
        u[k] = 0.9995 * u[k - 1] + eps[k]
    m2 = 2 * np.exp(x)
    m1 = np.exp(0.9 * np.log(m2) + u)
    bars = tick_ts[::720]
    inp = PairInput("A", "B", tick_ts, m1 * 0.9999, m1 * 1.0001, m2 * 0.9999, m2 * 1.0001, bars,
                    m1[719::720], m2[719::720], T0 + 5 * 86400, T0 + 50 * 86400, T0 + 60 * 86400, 0.1, 0.1)
    sets = sample_params(cfg.research, cfg.strategy, 100, 5)
    t = time.perf_counter()
    out = run_pair(inp, sets, default_params(cfg.strategy), cfg.strategy, with_features=False)
    sweep_s = time.perf_counter() - t

    print(f"{'measure':64s} {'value':>12s}")
    print(f"{'naive stats per pair (statsmodels coint x2, Johansen, ...): ms':64s} {naive_per * 1e3:>12.1f}")
    print(f"{'fast stats+features per pair (open_time_features): ms':64s} {fast_per * 1e3:>12.1f}")
    print(f"{'  speed-up':64s} {naive_per / fast_per:>12.1f}")
    print(f"{'  max |p-value - statsmodels| over the sample':64s} {worst:>12.1e}")
    print(f"{'431 pairs, 2 worker processes: s':64s} {all_2:>12.1f}")
    print(f"{'  naive estimate for 431 pairs on one core: s':64s} {naive_per * 431:>12.1f}")
    print(f"{'features per trade, 180d block cached per bar: median ms':64s} {statistics.median(per) * 1e3:>12.2f}")
    print(f"{'features per trade, uncached: median ms':64s} {statistics.median(uncached) * 1e3:>12.1f}")
    print(f"{'1,000 trades of features (cached path): s':64s} {thousand:>12.2f}")
    print(f"{'sweep 100 sets, 60 d of 5 s ticks (1.04M), one core: s':64s} {sweep_s:>12.2f}")
    print(f"{'  parameter sets per second per core (incl. z-scores)':64s} {100 / sweep_s:>12.1f}")
    print(f"{'  of which z-scores: s':64s} {out.timings['zscore_s']:>12.2f}")
    assert math.isfinite(sweep_s)


if __name__ == "__main__":
    main()

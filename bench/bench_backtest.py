"""Analysis-core benchmark (issue: analysis core). Run: python bench/bench_backtest.py

Measures, on generated 5 s ticks of one cointegrated pair:
1. the full spec state machine (`_run`, compiled) in ticks/s, against
   a. the same rules run as plain Python (the kernels' `py_func`, on a slice), and
   b. a minimal compiled loop of the simplest rules (direct entry/exit, z stop);
2. a whole `backtest(...)` call including building the result frame;
3. `create_zscore_df` for 3 windows x both methods on 3.1M ticks;
4. a 200-set random sweep on 30 days (518k ticks) reusing z per (spr_method, wind),
   with the process's peak RSS.
Numbers are printed as a table; ratios compare implementations in the same run.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import time

import numpy as np
import polars as pl
from numba import njit

from bot.analysis import backtesting as bt
from bot.analysis import signals as sg
from bot.analysis.backtesting import SizingParams, TickArrays, backtest, run_backtest
from bot.analysis.signals import SignalParams
from bot.utils.pair_trading import create_zscore_df

T0 = 1_735_689_600  # 2025-01-01


def make_ticks(days: float, seed: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / 5)
    ts = T0 + np.arange(n) * 5
    x = np.cumsum(rng.normal(0, 0.04 / math.sqrt(17280), n))
    u = np.zeros(n)
    phi = math.exp(-math.log(2) / (12 * 720))
    eps = rng.normal(0, 0.01 * math.sqrt(1 - phi * phi), n)
    for i in range(1, n):  # OU spread, half-life 12 h
        u[i] = phi * u[i - 1] + eps[i]
    m2 = 2.0 * np.exp(x)
    m1 = np.exp(0.9 * np.log(m2) + u)
    tick_df = pl.DataFrame({
        "ts": ts, "A": m1, "B": m2,
        "A_bid_price": m1 * (1 - 1e-4), "A_ask_price": m1 * (1 + 1e-4),
        "B_bid_price": m2 * (1 - 1e-4), "B_ask_price": m2 * (1 + 1e-4),
    })
    agg = tick_df.with_columns((pl.col("ts") // 3600 * 3600).alias("bar")).group_by("bar", maintain_order=True).agg(
        pl.col("A").last(), pl.col("B").last()).rename({"bar": "ts"})
    return tick_df, agg


@njit(cache=True)
def minimal_loop(z: np.ndarray, bid1: np.ndarray, ask1: np.ndarray, bid2: np.ndarray, ask2: np.ndarray,
                 hi_in: float, hi_out: float, sl: float) -> float:
    """The simplest rules: direct entry at |z| >= in, exit at |z| <= out, stop at |z| >= sl."""
    pos = 0
    pnl = 0.0
    op1 = op2 = 0.0
    for i in range(z.shape[0]):
        zi = z[i]
        if zi != zi:
            continue
        if pos == 0:
            if zi >= hi_in:
                pos, op1, op2 = 2, bid1[i], ask2[i]
            elif zi <= -hi_in:
                pos, op1, op2 = 1, ask1[i], bid2[i]
        elif pos == 2:
            if zi <= hi_out or zi >= sl:
                pnl += (op1 - ask1[i]) + (bid2[i] - op2)
                pos = 0
        else:
            if zi >= -hi_out or zi <= -sl:
                pnl += (bid1[i] - op1) + (op2 - ask2[i])
                pos = 0
    return pnl


def full_params() -> tuple[SignalParams, SizingParams]:
    sig = SignalParams(-2.0, -0.3, 2.0, 0.3, True, True, "reverse_dynamic", "reverse_static", 0.3, 0.3,
                       5.0, 1.0, 60.0, "cooldown", 0.0)
    siz = SizingParams(100.0, 50.0, 42.0, 2.0, "usdt_neutral", 1.0, 1.0, 0.001, 0.1, 0.1)
    return sig, siz


def python_reference(ticks: TickArrays, sig: SignalParams, siz: SizingParams) -> np.ndarray:
    """The same rules executed by the Python interpreter (numba's py_func of every kernel)."""
    saved = {}
    run_py = bt._run.py_func
    mods = (sg, bt, sys.modules["bot.analysis.fills"])
    for mod in mods:
        for name in dir(mod):
            obj = getattr(mod, name)
            if hasattr(obj, "py_func"):
                saved[(mod, name)] = obj
                setattr(mod, name, obj.py_func)
    try:
        rows, _ = run_py(ticks.ts, ticks.z, ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2,
                                   ticks.beta, sig.to_array(), siz.to_array(), False,
                                   np.empty(0), np.empty(0), np.empty(0), np.empty(0))
    finally:
        for (mod, name), obj in saved.items():
            setattr(mod, name, obj)
    return rows


def best_of(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sweep_only() -> None:
    """The sweep alone in a fresh process, so its peak RSS is its own."""
    siz = full_params()[1]
    # sweep: 30 days, z per (spr_method, wind) computed once, 200 random sets
    tick30, agg30 = make_ticks(30, seed=2)
    rng = np.random.default_rng(42)
    t = time.perf_counter()
    zcache: dict[tuple[str, int], TickArrays] = {}
    for method in ("dist", "lr"):
        zz = create_zscore_df("A", "B", tick30, agg30, "1h", [64, 72, 96], int(tick30["ts"][0]), 6, method)
        for w in (64, 72, 96):
            zcache[(method, w)] = bt.tick_arrays(zz.rename({f"z_score_{w}_1h": "z_score"}), "A", "B")
    total_trades = 0
    for _ in range(200):
        key = (str(rng.choice(["dist", "lr"])), int(rng.choice([64, 72, 96])))
        in_ = round(float(rng.uniform(1.6, 2.75)), 2)
        out_ = round(float(rng.uniform(0.0, 0.5)), 2)
        dist = round(float(rng.uniform(0.05, 1.0)), 2)
        om = str(rng.choice(["direct", "reverse_static", "reverse_dynamic"]))
        s = SignalParams(-in_, -out_, in_, out_, True, True, om, "direct", dist, dist, 5.0, 1.0, 60.0, "leave", 0.0)
        total_trades += run_backtest(zcache[key], s, siz).trades.height
    t_sweep = time.perf_counter() - t
    print(t_sweep, total_trades, peak_rss_mb())


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would include the parent's peak: Linux keeps it across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    print("generating 180 days of 5 s ticks ...", flush=True)
    tick_df, agg = make_ticks(180)
    n = tick_df.height
    t = time.perf_counter()
    z = create_zscore_df("A", "B", tick_df, agg, "1h", [64, 72, 96], int(tick_df["ts"][0]), 6, "lr")
    create_zscore_df("A", "B", tick_df, agg, "1h", [64, 72, 96], int(tick_df["ts"][0]), 6, "dist")
    t_z_first = time.perf_counter() - t
    t_z = best_of(lambda: (
        create_zscore_df("A", "B", tick_df, agg, "1h", [64, 72, 96], int(tick_df["ts"][0]), 6, "lr"),
        create_zscore_df("A", "B", tick_df, agg, "1h", [64, 72, 96], int(tick_df["ts"][0]), 6, "dist"),
    ))
    df = z.rename({"z_score_72_1h": "z_score"})
    ticks = bt.tick_arrays(df, "A", "B")
    sig, siz = full_params()
    run = lambda: bt._run(ticks.ts, ticks.z, ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2, ticks.beta,  # noqa: E731
                          sig.to_array(), siz.to_array(), False, np.empty(0), np.empty(0), np.empty(0), np.empty(0))
    rows, _ = run()
    t_full = best_of(run, 5)
    mini = lambda: minimal_loop(ticks.z, ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2, 2.0, 0.3, 5.0)  # noqa: E731
    mini()
    t_min = best_of(mini, 5)
    kw = dict(thresh_low_in=-2.0, thresh_low_out=-0.3, thresh_high_in=2.0, thresh_high_out=0.3,
              open_method="reverse_dynamic", close_method="reverse_static", dist_in=0.3, dist_out=0.3,
              sl_std=5.0, sl_dist=1.0, sl_seconds=60, sl_method="cooldown", min_order_size=42.0)
    t_call = best_of(lambda: backtest(df, "A", "B", 0.1, 0.1, **kw), 5)
    n_ref = 300_000
    sl = TickArrays(*(np.ascontiguousarray(getattr(ticks, f)[:n_ref]) for f in TickArrays.__dataclass_fields__))
    t = time.perf_counter()
    ref_rows = python_reference(sl, sig, siz)
    t_ref = time.perf_counter() - t
    fast_rows, _ = bt._run(sl.ts, sl.z, sl.bid_1, sl.ask_1, sl.bid_2, sl.ask_2, sl.beta, sig.to_array(),
                           siz.to_array(), False, np.empty(0), np.empty(0), np.empty(0), np.empty(0))
    same = np.array_equal(ref_rows, fast_rows, equal_nan=True)

    sweep = subprocess.run([sys.executable, __file__, "--sweep-only"], capture_output=True, text=True, check=True)
    t_sweep, trades_f, peak_mb = (float(x) for x in sweep.stdout.split())
    total_trades = int(trades_f)

    print()
    print(f"{'measure':58s} {'value':>14s}")
    print(f"{'ticks (180 d of 5 s)':58s} {n:>14,d}")
    print(f"{'full state machine, compiled: ticks/s':58s} {n / t_full:>14,.0f}")
    print(f"{'minimal compiled loop (direct, z stop): ticks/s':58s} {n / t_min:>14,.0f}")
    print(f"{'  ratio full / minimal':58s} {t_min / t_full:>14.2f}")
    print(f"{'plain-Python reference (same rules, 300k ticks): ticks/s':58s} {n_ref / t_ref:>14,.0f}")
    print(f"{'  speed-up compiled / Python':58s} {(n / t_full) / (n_ref / t_ref):>14.0f}")
    print(f"{'  compiled == Python reference (trades)':58s} {str(same):>14s}")
    print(f"{'whole backtest() call incl. frame: s':58s} {t_call:>14.3f}")
    print(f"{'trades in the 180-day run':58s} {rows.shape[0]:>14,d}")
    print(f"{'create_zscore_df 3 winds x 2 methods, 3.1M ticks: s':58s} {t_z:>14.3f}")
    print(f"{'  (first call, incl. loading compiled cache): s':58s} {t_z_first:>14.3f}")
    print(f"{'sweep 200 sets on 30 d (518k ticks) incl. z: s':58s} {t_sweep:>14.3f}")
    print(f"{'  trades over the sweep':58s} {total_trades:>14,d}")
    print(f"{'  peak RSS of the sweep process: MB':58s} {peak_mb:>14.0f}")


if __name__ == "__main__":
    if "--sweep-only" in sys.argv:
        sweep_only()
    else:
        main()

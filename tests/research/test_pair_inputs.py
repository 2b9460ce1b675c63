"""A pair's input built in its worker equals the one built from the notebook's frames.

pair_inputs.pair_input merges the two legs' quote arrays and the bar-close ticks with
compiled walks; bot.core.db.market.pair_frames (load_pair_data, the notebook's path)
does it with polars joins. The reference below is the conversion the sweep used
before (frames -> PairInput), so every array must match to the bit: full and partial
quote coverage, a leg without quotes, fractional and unaligned timestamps, quotes
outside the window, no bars at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from bot.config import load
from bot.config.loader import example_path
from bot.core.db.market import pair_frames
from bot.core.exchange.rounding import assumed_qty_step
from bot.research.pair_inputs import (
    PairTask,
    SkipPair,
    cache_array,
    common_times,
    pair_input,
    quotes_array,
    quotes_frame,
)
from bot.research.pair_job import PairInput, PairOutcome
from bot.research.params import default_params

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
CFG = load(example_path())


def reference(t1: str, t2: str, lo: dt.datetime, valid: dt.datetime, hi: dt.datetime, bars: pl.DataFrame,
              q1: np.ndarray, q2: np.ndarray, metas=(None, None), cfg=CFG, max_wind: int = 96,
              history: dt.timedelta | None = None) -> PairInput:
    """The pre-issue-16 conversion: pair_frames' tick_df / agg -> PairInput."""
    s = cfg.strategy
    # a cache file keeps ts, bid, ask only: sizes (never read by a backtest) set to 0
    q1, q2 = (q if q.shape[1] == 5 else np.column_stack([q, np.zeros((q.shape[0], 2))]) for q in (q1, q2))
    quotes = pl.concat([quotes_frame(f"{t1}USDT", q1), quotes_frame(f"{t2}USDT", q2)])
    tick_df, agg = pair_frames(t1, t2, lo, hi, s.tf, max_wind, cfg.data.reference_symbols, bars, quotes,
                               half_spread=s.half_spread_bp * 1e-4, history=history, quiet=True)
    if agg.height == 0 or tick_df.height == 0:
        raise SkipPair(f"no data for {t1}/{t2} in the window (unknown token or no history)")
    is_quote = tick_df[f"{t1}_bid_size"].is_not_null().to_numpy()
    bars_only = not bool(is_quote.any())
    m1, m2 = metas
    steps = [m["qty_step"] if m else assumed_qty_step(float(agg[t][0])) for m, t in zip(metas, (t1, t2), strict=True)]
    refs = {r.lower(): agg[r].cast(pl.Float64).to_numpy() for r in cfg.data.reference_symbols if r in agg.columns}
    return PairInput(
        t1, t2, tick_df["ts"].cast(pl.Float64).to_numpy(), tick_df[f"{t1}_bid_price"].to_numpy(),
        tick_df[f"{t1}_ask_price"].to_numpy(), tick_df[f"{t2}_bid_price"].to_numpy(),
        tick_df[f"{t2}_ask_price"].to_numpy(), agg["ts"].cast(pl.Float64).to_numpy(),
        agg[t1].cast(pl.Float64).to_numpy(), agg[t2].cast(pl.Float64).to_numpy(), lo.timestamp(),
        valid.timestamp(), hi.timestamp(), steps[0], steps[1], m1["min_qty"] if m1 else None,
        m2["min_qty"] if m2 else None, (m1["min_notional"] or 0.0) if m1 else 0.0,
        (m2["min_notional"] or 0.0) if m2 else 0.0, bars_only, refs,
        None if bars_only or bool(is_quote.all()) else is_quote)


def reference_executor(tasks, progress=None):
    """Today's path before issue 16, in this process: each pair's input from pair_frames,
    every parameter set through the tick loop, a trades frame and analyze_strategy."""
    from bot.research.pair_job import run_pair

    out = []
    for t1, t2, task in tasks:
        legs = [cache_array(q) if isinstance(q, str) else q for q in task.quotes]
        lo, valid, hi = task.window
        try:
            inp = reference(t1, t2, lo, valid, hi, task.bars_frame, legs[0], legs[1], task.metas, task.cfg,
                            task.max_wind, task.history)
        except SkipPair as why:
            o = PairOutcome(t1, t2, "skipped", str(why))
        else:
            o = run_pair(inp, task.param_sets, task.default, task.cfg.strategy, task.with_features, reference=True)
            o.ticks = int(inp.tick_ts.shape[0])
        out.append(o)
        if progress is not None:
            progress(o)
    return out


def assert_same(a: PairInput, b: PairInput) -> None:
    for f in dataclasses.fields(PairInput):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, f.name
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), f.name
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for k in x:
                assert np.array_equal(x[k], y[k], equal_nan=True), (f.name, k)
        else:
            assert x == y, f.name


def market(seed: int, days: float = 3.0, step: float = 5.0, jitter: bool = False):
    rng = np.random.default_rng(seed)
    lo = T0
    hi = T0 + dt.timedelta(days=days)
    n_bars = int((days + 5) * 24)
    bar_ts = (T0 - dt.timedelta(days=5)).timestamp() + np.arange(n_bars) * 3600.0
    frames = []
    for k, sym in enumerate(("AAAUSDT", "BBBUSDT", "BTCUSDT", "ETHUSDT")):
        close = 10.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 0.01, n_bars)))
        keep = rng.random(n_bars) > (0.02 if k < 2 else 0.1)  # holes in the bars too
        frames.append(pl.DataFrame({"symbol": sym, "ts": bar_ts[keep], "open": close[keep], "high": close[keep],
                                    "low": close[keep], "close": close[keep], "volume": 1.0}))
    bars = pl.concat(frames).sort(["ts", "symbol"])
    n = int(days * 86400 / step) + 200
    legs = []
    for k in range(2):
        ts = (lo - dt.timedelta(seconds=500)).timestamp() + np.arange(n) * step
        if jitter:
            ts = ts + rng.choice([0.0, 0.25, 0.5, 0.75], n)  # fractional seconds, some shared
        mid = 5.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
        arr = np.column_stack([ts, mid * 0.9999, mid * 1.0001, rng.uniform(0, 9, n), rng.uniform(0, 9, n)])
        keep = rng.random(n) > 0.1  # each leg misses its own quotes
        # and a recorder outage of several hours in one leg
        out_a = lo.timestamp() + rng.uniform(0.2, 0.6) * days * 86400
        if seed % 2:  # an outage on the bar grid: the next quote opens the next slot exactly
            out_a -= out_a % 3600
        keep &= ~((ts >= out_a) & (ts < out_a + 5 * 3600)) if k == seed % 2 else True
        legs.append(arr[keep])
    return lo, hi, bars, legs[0], legs[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("jitter", [False, True])
def test_the_worker_input_equals_the_frames_input(seed: int, jitter: bool) -> None:
    lo, hi, bars, q1, q2 = market(seed, jitter=jitter)
    valid = lo + dt.timedelta(days=2)
    fast = pair_input(CFG, "AAA", "BBB", lo, valid, hi, 96, (None, None), bars, q1, q2, None)
    ref = reference("AAA", "BBB", lo, valid, hi, bars, q1, q2)
    assert_same(fast, ref)
    assert fast.is_quote is not None and 0 < fast.is_quote.sum() < fast.is_quote.size  # partial coverage


def test_a_leg_without_quotes_is_bars_only_in_both() -> None:
    lo, hi, bars, q1, _ = market(1)
    empty = np.empty((0, 5))
    fast = pair_input(CFG, "AAA", "BBB", lo, hi, hi, 96, (None, None), bars, q1, empty, None)
    assert_same(fast, reference("AAA", "BBB", lo, hi, hi, bars, q1, empty))
    assert fast.bars_only and fast.is_quote is None


def test_full_coverage_has_no_mask() -> None:
    lo, hi, bars, q1, _ = market(2)
    q2 = q1.copy()
    q2[:, 1:3] *= 3.0
    fast = pair_input(CFG, "AAA", "BBB", lo, hi, hi, 96, (None, None), bars, q1, q2, None)
    assert_same(fast, reference("AAA", "BBB", lo, hi, hi, bars, q1, q2))


def test_no_bars_is_skipped_as_before() -> None:
    lo, hi, bars, q1, q2 = market(3)
    none = bars.filter(pl.col("symbol") == "XXXUSDT")
    with pytest.raises(SkipPair, match="no data"):
        pair_input(CFG, "AAA", "BBB", lo, hi, hi, 96, (None, None), none, q1, q2, None)
    with pytest.raises(SkipPair):
        reference("AAA", "BBB", lo, hi, hi, none, q1, q2)


def test_common_times_is_the_inner_join() -> None:
    a = np.array([1.0, 2.0, 3.5, 7.0, 9.0])
    b = np.array([0.5, 2.0, 3.5, 8.0, 9.0, 11.0])
    i, j = common_times(a, b)
    assert a[i].tolist() == b[j].tolist() == [2.0, 3.5, 9.0]


def test_the_quote_cache_round_trip_keeps_every_value() -> None:
    _, _, _, q1, _ = market(4)
    frame = quotes_frame("AAAUSDT", q1)
    assert np.array_equal(quotes_array(frame), q1)
    assert quotes_array(frame.clear()).shape == (0, 5)


def test_a_task_with_cache_files_runs_like_one_with_arrays(tmp_path) -> None:
    lo, hi, bars, q1, q2 = market(5, days=8.0, step=60.0)
    np.save(tmp_path / "a.npy", q1)
    np.save(tmp_path / "b.npy", q2)
    valid = lo + dt.timedelta(days=6)
    common = dict(cfg=CFG, token_1="AAA", token_2="BBB", symbols=("AAAUSDT", "BBBUSDT"), bars=bars,
                  window=(lo, valid, hi), max_wind=96, metas=(None, None), history=None,
                  param_sets=[default_params(CFG.strategy)], default=default_params(CFG.strategy),
                  with_features=False)
    from_files = PairTask(quotes=(str(tmp_path / "a.npy"), str(tmp_path / "b.npy")), **common)()
    from_arrays = PairTask(quotes=(q1, q2), **common)()
    assert from_files.status == from_arrays.status == "ok"
    assert from_files.stats == from_arrays.stats and from_files.summaries == from_arrays.summaries
    assert from_files.ticks == from_arrays.ticks > 0


def test_a_cache_left_by_a_killed_job_is_removed_by_the_next(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from bot.research.pair_inputs import new_cache_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "bot-quotes-killed"
    left.mkdir()
    (left / "owner.pid").write_text(str(dead.pid))
    (left / "BTCUSDT.f64").write_bytes(b"\0" * 24)
    running = tmp_path / "bot-quotes-running"
    running.mkdir()
    (running / "owner.pid").write_text(str(os.getpid()))  # a job still at work
    fresh = new_cache_dir(str(tmp_path / "."))
    assert not left.exists() and running.exists()
    assert fresh.parent == tmp_path and (fresh / "owner.pid").read_text() == str(os.getpid())


def test_a_dsn_only_this_machine_reaches_is_told_apart() -> None:
    from bot.research.sweep import _local_only

    assert _local_only("postgresql://postgres@127.0.0.1:5432/test") and _local_only("postgresql:///bot")
    assert _local_only("host=/var/run/postgresql dbname=bot") and _local_only("tcp://localhost:8786")
    assert not _local_only("postgresql://bot@db.internal:5432/bot") and not _local_only("tcp://10.0.0.5:8786")

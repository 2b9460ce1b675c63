"""Spread and z-score: known answers, batch = streaming, and no look-ahead."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.analysis.zscore import StreamingZScore, zscore_arrays
from bot.utils.pair_trading import create_zscore_df

TF = 3600


def _market(rng: np.random.Generator, n_bars: int = 60, ticks_per_bar: int = 12, beta: float = 0.8):
    """Bars (open times, closes) and ticks (ts, mids) of a cointegrated pair."""
    t0 = 1_700_006_400  # aligned to the hour
    n_ticks = n_bars * ticks_per_bar
    ts = t0 + np.arange(n_ticks) * (TF // ticks_per_bar)
    x = np.cumsum(rng.normal(0, 0.002, n_ticks)) + math.log(2.0)
    y = 0.1 + beta * x + rng.normal(0, 0.003, n_ticks)
    mid_1, mid_2 = np.exp(y), np.exp(x)
    bar_ts = t0 + np.arange(n_bars) * TF
    close_1 = mid_1[ticks_per_bar - 1::ticks_per_bar]
    close_2 = mid_2[ticks_per_bar - 1::ticks_per_bar]
    return ts.astype(float), mid_1, mid_2, bar_ts.astype(float), close_1, close_2


@pytest.mark.parametrize("method", ["dist", "lr"])
def test_known_answer_against_numpy(method: str) -> None:
    rng = np.random.default_rng(3)
    ts, m1, m2, bts, c1, c2 = _market(rng)
    w = 20
    res = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", w, method, median_length=1)
    for i in (0, 100, 239, 240, 241, 500, len(ts) - 1):
        n_before = int(np.sum(bts < math.floor(ts[i] / TF) * TF))
        if n_before < w:
            assert math.isnan(res.z_score[i])
            continue
        y, x = np.log(c1[n_before - w:n_before]), np.log(c2[n_before - w:n_before])
        if method == "lr":
            beta, alpha = np.polyfit(x, y, 1)
        else:
            beta, alpha = 1.0, 0.0
        s = y - beta * x - alpha
        raw = math.log(m1[i]) - beta * math.log(m2[i]) - alpha
        z = (raw - s.mean()) / s.std(ddof=1)
        assert res.z_score[i] == pytest.approx(z, rel=1e-9, abs=1e-9)
        assert res.spread_std[i] == pytest.approx(s.std(ddof=1), rel=1e-9)


def test_tick_median_uses_each_ticks_own_beta() -> None:
    rng = np.random.default_rng(5)
    ts, m1, m2, bts, c1, c2 = _market(rng)
    w, m = 10, 4
    med = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", w, "lr", median_length=m)
    raw = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", w, "lr", median_length=1)
    valid = np.flatnonzero(~np.isnan(raw.spread))
    for k in (0, 1, 2, 3, 10, 200, len(valid) - 1):
        i = valid[k]
        window = raw.spread[valid[max(0, k - m + 1):k + 1]]
        assert med.spread[i] == pytest.approx(float(np.median(window)), abs=1e-15)
        z = (np.median(window) - raw.spread_mean[i]) / raw.spread_std[i]
        assert med.z_score[i] == pytest.approx(z, rel=1e-12, abs=1e-12)


def test_null_z_cases() -> None:
    rng = np.random.default_rng(1)
    ts, m1, m2, bts, c1, c2 = _market(rng, n_bars=30)
    m1 = m1.copy()
    m1[-5] = -1.0
    m1[-6] = np.nan
    res = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", 10, "dist", 1)
    assert np.isnan(res.z_score[:10 * 12]).all()  # warm-up: fewer than W completed bars
    assert not np.isnan(res.z_score[10 * 12])
    assert np.isnan(res.z_score[-5]) and np.isnan(res.z_score[-6])
    flat = np.full_like(c1, 2.0)
    res = zscore_arrays(ts, m1, m2, bts, flat, flat, "1h", 10, "dist", 1)
    assert np.isnan(res.z_score).all()  # spread_std == 0


def test_bad_arguments() -> None:
    z = np.zeros(3)
    with pytest.raises(ValueError, match="spr_method"):
        zscore_arrays(z, z + 1, z + 1, z, z + 1, z + 1, "1h", 5, "ols")
    with pytest.raises(ValueError, match="tf"):
        zscore_arrays(z, z + 1, z + 1, z, z + 1, z + 1, "2h", 5, "lr")
    with pytest.raises(ValueError, match="wind"):
        zscore_arrays(z, z + 1, z + 1, z, z + 1, z + 1, "1h", 1, "lr")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["dist", "lr"]),
    wind=st.integers(2, 30),
    median_length=st.integers(1, 8),
    tf=st.sampled_from(["5m", "1h"]),
)
def test_streaming_equals_batch(seed: int, method: str, wind: int, median_length: int, tf: str) -> None:
    rng = np.random.default_rng(seed)
    tf_s = {"5m": 300, "1h": 3600}[tf]
    n_bars = wind + 15
    t0 = 1_700_000_000 - 1_700_000_000 % tf_s
    bts = (t0 + np.arange(n_bars) * tf_s).astype(float)
    # irregular ticks, some missing prices
    ts = np.sort(rng.uniform(t0, t0 + n_bars * tf_s, size=n_bars * 7)).round()
    m2 = np.exp(np.cumsum(rng.normal(0, 0.01, ts.size)))
    m1 = np.exp(0.7 * np.log(m2) + rng.normal(0, 0.01, ts.size))
    m1[rng.random(ts.size) < 0.03] = np.nan
    c1 = np.exp(rng.normal(0, 0.05, n_bars)) * 1.5
    c2 = np.exp(rng.normal(0, 0.05, n_bars))
    batch = zscore_arrays(ts, m1, m2, bts, c1, c2, tf, wind, method, median_length)
    s = StreamingZScore(tf, wind, method, median_length)
    k = 0
    for i in range(ts.size):
        bar_open = math.floor(ts[i] / tf_s) * tf_s
        while k < n_bars and bts[k] < bar_open:
            s.on_bar(bts[k], c1[k], c2[k])
            k += 1
        z = s.on_tick(ts[i], m1[i], m2[i])
        if math.isnan(batch.z_score[i]):
            assert math.isnan(z)
        else:
            assert abs(z - batch.z_score[i]) <= 1e-9


def test_streaming_refuses_look_ahead() -> None:
    s = StreamingZScore("1h", 3, "dist")
    s.on_bar(3600.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="look-ahead"):
        s.on_tick(3700.0, 1.0, 1.0)  # the bar of 3600 is not complete at 3700


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.floats(0.3, 0.9), method=st.sampled_from(["dist", "lr"]))
def test_no_look_ahead_perturbing_the_future(seed: int, cut: float, method: str) -> None:
    """Changing every bar and tick after t leaves every z up to t unchanged."""
    rng = np.random.default_rng(seed)
    ts, m1, m2, bts, c1, c2 = _market(rng, n_bars=40)
    t = ts[int(cut * ts.size)]
    base = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", 12, method, 6)
    fut_t = ts > t
    fut_b = bts + TF > t  # bars not completed at t (including the one containing t)
    m1b, m2b, c1b, c2b = m1.copy(), m2.copy(), c1.copy(), c2.copy()
    m1b[fut_t] *= np.exp(rng.normal(0, 0.2, fut_t.sum()))
    m2b[fut_t] *= 3.0
    c1b[fut_b] *= np.exp(rng.normal(0, 0.3, fut_b.sum()))
    c2b[fut_b] = 0.5
    pert = zscore_arrays(ts, m1b, m2b, bts, c1b, c2b, "1h", 12, method, 6)
    upto = ~fut_t
    np.testing.assert_array_equal(base.z_score[upto], pert.z_score[upto])


def test_create_zscore_df_layout() -> None:
    rng = np.random.default_rng(2)
    ts, m1, m2, bts, c1, c2 = _market(rng, n_bars=50)
    tick_df = pl.DataFrame({"ts": ts.astype(np.int64), "A": m1, "B": m2})
    agg_df = pl.DataFrame({"ts": bts.astype(np.int64), "A": c1, "B": c2})
    start = int(ts[300])
    out = create_zscore_df("A", "B", tick_df, agg_df, "1h", [10, 20], start, median_length=6, spr_method="lr")
    assert out.height == int((ts >= start).sum())
    for w in (10, 20):
        for c in ("spread", "spread_mean", "spread_std", "z_score"):
            assert f"{c}_{w}_1h" in out.columns
    direct = zscore_arrays(ts, m1, m2, bts, c1, c2, "1h", 20, "lr", 6)
    np.testing.assert_allclose(out["z_score_20_1h"].to_numpy(), direct.z_score[ts >= start], rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing column"):
        create_zscore_df("A", "C", tick_df, agg_df, "1h", [10], start)


@pytest.mark.parametrize("method", ["dist", "lr"])
def test_the_fused_kernel_equals_the_staged_passes(method: str) -> None:
    """median 1 runs one fused pass (zscore._z_fused); it must give the staged path's values:
    bad prices, a gap in the bars, ticks before the first bar and after the last."""
    from bot.analysis import zscore as zs

    rng = np.random.default_rng(11)
    ts = np.sort(rng.uniform(0, 40 * 3600, 20_000)) - 2 * 3600
    m1 = np.exp(np.cumsum(rng.normal(0, 0.001, ts.size)) + 1.0)
    m2 = np.exp(np.cumsum(rng.normal(0, 0.001, ts.size)) + 0.5)
    m1[::997] = np.nan
    m2[::1301] = -1.0
    m1[5] = np.inf
    bar_ts = np.array([h * 3600.0 for h in range(36) if h not in (10, 11, 12)])
    c1 = np.exp(rng.normal(1.0, 0.01, bar_ts.size))
    c2 = np.exp(rng.normal(0.5, 0.01, bar_ts.size))
    got = zs.zscore_multi(ts, m1, m2, bar_ts, c1, c2, "1h", [6, 9], method, 1)
    is_lr = int(method == "lr")
    l1, l2 = zs._safe_log(m1), zs._safe_log(m2)
    nbefore = np.searchsorted(bar_ts, np.floor(ts / 3600) * 3600, side="left").astype(np.int64)
    for w in (6, 9):
        stats = zs._bar_stats_all(zs._safe_log(c1), zs._safe_log(c2), w, is_lr)
        raw = zs._raw_spreads(l1, l2, nbefore, stats) if is_lr else l1 - l2
        mean, std, z = (np.empty(ts.size) for _ in range(3))
        zs._z_pass(raw, nbefore, stats, mean, std, z)
        for a, b in ((got[w].spread, raw), (got[w].spread_mean, mean), (got[w].spread_std, std),
                     (got[w].z_score, z), (got[w].beta, stats[nbefore, 1])):
            assert np.array_equal(np.isnan(a), np.isnan(b))
            assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=1e-12)
        assert np.isfinite(got[w].z_score).sum() > 1000

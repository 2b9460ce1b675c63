"""Estimators on processes with a known answer, and against statsmodels."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.tsa.stattools import coint

from bot.analysis import estimators as est


def ou(n: int, half_life: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    phi = math.exp(-math.log(2) / half_life)
    eps = rng.normal(0, sd * math.sqrt(1 - phi * phi), n)
    x = np.empty(n)
    x[0] = rng.normal(0, sd)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + eps[i]
    return x


def pair(n: int, beta: float, rng: np.random.Generator, hl: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    x = np.cumsum(rng.normal(0, 0.01, n)) + 3.0
    y = 0.2 + beta * x + ou(n, hl, 0.01, rng)
    return y, x


def test_half_life_of_an_ou_process() -> None:
    rng = np.random.default_rng(1)
    for hl in (5.0, 20.0, 50.0):
        x = ou(200_000, hl, 1.0, rng)
        assert est.half_life(x) == pytest.approx(hl, rel=0.15)
    assert est.half_life(ou(50_000, 10.0, 1.0, rng), bar_hours=0.25) == pytest.approx(2.5, rel=0.15)
    assert est.half_life(np.cumsum(np.ones(100))) == math.inf  # a trend: phi = 1, no mean reversion


def test_hurst_random_walk_and_mean_reversion() -> None:
    rng = np.random.default_rng(2)
    rw = np.cumsum(rng.normal(size=20_000))
    assert est.hurst_exponent(rw) == pytest.approx(0.5, abs=0.1)
    assert est.hurst_exponent(ou(20_000, 3.0, 1.0, rng)) < 0.3


def test_betas_of_a_cointegrated_pair() -> None:
    rng = np.random.default_rng(3)
    y, x = pair(20_000, 1.3, rng)
    assert est.ols_beta(y, x) == pytest.approx(1.3, rel=0.05)
    assert est.tls_beta(y, x) == pytest.approx(1.3, rel=0.05)
    assert est.tls_beta(x, y) == pytest.approx(1 / est.tls_beta(y, x), rel=1e-12)
    jo = est.johansen(y, x)
    assert jo.coint == 1 and jo.beta == pytest.approx(1.3, rel=0.05)
    rw = np.cumsum(rng.normal(size=5000))
    assert est.johansen(rw, np.cumsum(rng.normal(size=5000))).coint == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1_000_000), n=st.integers(60, 3000), beta=st.floats(-2, 2),
       hl=st.floats(2, 500), coint_=st.booleans())
def test_engle_granger_equals_statsmodels(seed: int, n: int, beta: float, hl: float, coint_: bool) -> None:
    rng = np.random.default_rng(seed)
    if coint_:
        y, x = pair(n, beta, rng, hl)
    else:
        x, y = np.cumsum(rng.normal(size=n)), np.cumsum(rng.normal(size=n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = coint(y, x)
    got = est.engle_granger(y, x)
    assert got.pvalue == pytest.approx(ref[1], abs=1e-8)
    assert got.tstat == pytest.approx(ref[0], rel=1e-9)


def test_wilder_rsi_by_hand() -> None:
    # changes: +1 x 14 then -2: first averages 1 and 0, then gain 13/14, loss 2/14
    x = np.concatenate([np.arange(15.0), [12.0]])
    assert est.wilder_rsi(x) == pytest.approx(100 - 100 / (1 + (13 / 14) / (2 / 14)))
    assert est.wilder_rsi(np.arange(20.0)) == 100.0
    assert est.wilder_rsi(np.ones(20)) == 50.0
    assert math.isnan(est.wilder_rsi(np.arange(10.0)))


@pytest.mark.parametrize("bad", [np.ones(200), np.array([1.0, 2.0]), np.array([1.0, np.nan] * 50), np.array([])])
def test_degenerate_input_gives_nan_not_errors(bad: np.ndarray) -> None:
    other = np.linspace(1, 2, bad.size)
    for value in (est.half_life(bad), est.hurst_exponent(bad), est.ols_beta(other, bad),
                  est.tls_beta(bad, other), est.engle_granger(bad, other).pvalue, est.johansen(bad, other).beta,
                  est.wilder_rsi(bad) if bad.size < 15 or np.isnan(bad).any() else math.nan,
                  est.corr(bad, other), est.distance(bad, other)[0] if np.isnan(bad).any() or bad.size < 3 else math.nan):
        assert math.isnan(value) or math.isinf(value)


def test_sizing_vol_known_answer_and_no_look_ahead() -> None:
    import math

    rng = np.random.default_rng(3)
    tf = 3600.0
    r = rng.normal(0.0, 0.01, 400)
    close = np.exp(np.cumsum(r))
    ts = np.arange(400) * tf
    # the last 50 complete bars before 300 h: bars 250..299, returns 251..299
    want = float(np.std(np.diff(np.log(close[250:300])), ddof=1) * math.sqrt(24))
    assert est.sizing_vol(ts, close, 300 * tf, 50, tf) == pytest.approx(want, rel=1e-12)
    # an unaligned time inside bar 300 does not see bar 300's close; changing the future changes nothing
    later = close.copy()
    later[300:] *= 1.5
    for before in (300 * tf, 300 * tf + 1800, 301 * tf - 1):
        assert est.sizing_vol(ts, later, before, 50, tf) == pytest.approx(want, rel=1e-12)
    assert math.isnan(est.sizing_vol(ts, close, 2 * tf, 50, tf))  # fewer than three bars


def test_zero_crossings_counts_mean_crossings() -> None:
    t = np.arange(10_000)
    assert est.zero_crossings(np.sin(2 * np.pi * t / 1000 + 0.1)) == 20  # 10 periods: two crossings each
    assert est.zero_crossings(np.array([1.0, -1.0, 1.0, -1.0])) == 3
    assert est.zero_crossings(np.array([1.0, 0.0, 0.0, 1.0, -1.0])) == 3  # mean 0.2: 0.8, -0.2, -0.2, 0.8, -1.2
    assert est.zero_crossings(np.array([2.0, 2.0, 2.0])) == 0  # constant: no sign at all
    assert est.zero_crossings(np.array([1.0, np.nan, 2.0])) == 0  # degenerate: 0, never an exception
    # an OU process crosses its mean far more often than a random walk of the same length
    rng = np.random.default_rng(4)
    assert est.zero_crossings(ou(5_000, 5.0, 1.0, rng)) > 10 * est.zero_crossings(np.cumsum(rng.normal(size=5_000)))


def test_regression_spread_is_the_engle_granger_residual() -> None:
    rng = np.random.default_rng(5)
    y, x = pair(20_000, 1.3, rng)
    s = est.regression_spread(y, x)
    b, a = np.polyfit(x, y, 1)
    assert np.allclose(s, y - a - b * x, atol=1e-9) and abs(s.mean()) < 1e-9
    assert est.half_life(s) < 100 and est.hurst_exponent(s) < 0.3  # the planted pair's spread is stationary
    assert est.regression_spread(y, np.ones_like(x)).size == 0  # no slope: empty, no exception

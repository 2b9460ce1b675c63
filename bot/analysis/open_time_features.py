"""Open-time features of a trade (selection.md section 3), computed only from the past.

Inputs are arrays of what was known strictly before the trade's open time t0:
completed bars (open + tf <= t0) of timeframe tf with the closes of both legs and
the reference symbols, and ticks with ts < t0 (mids). :func:`open_time_features`
slices them itself from the full arrays, so callers cannot leak the future.

Definitions (windows count completed bars before t0; prices in logs):

- ``*_180d``: the bars of the last 180 days (fewer if history is shorter; then
  ``history_days_180d`` < 180 and ``short_history_180d`` = 1). std_i_180d: std of
  daily log returns (daily closes = the last bar close of each UTC day);
  beta_1_180d: OLS slope of ln p1 on ln p2, beta_2_180d the reverse; pv_1, pv_2:
  Engle-Granger p-values (p1 on p2, p2 on p1); tls_beta_180d: orthogonal-regression
  slope of ln p1 on ln p2; coint_180d / johansen_beta_180d: Johansen trace test.
- ``*_wind``: the last `wind` bars (NaN until `wind` bars exist). ``*_12h``: 5-minute
  closes of the last 12 hours resampled from the ticks (144 points), or the bars of
  the last 12 h when there are no ticks (bars-only mode); NaN with fewer than 6 points.
- log spread = ln p1 - ln p2; lr spread = OLS residual of ln p1 on ln p2 in the
  same window. mean_wind / mean_12h: mean log spread; mean_diff = (mean_12h -
  mean_wind) / std(log spread over wind); std_i_wind / std_i_12h: std of log
  returns of leg i at that sampling; tls_beta_wind / tls_beta_12h.
- hurst_wind / hurst_12h: Hurst exponent of the lr spread (estimators.hurst_exponent);
  half_life_log_spread / half_life_lr_spread: AR(1) half-life over the wind bars, hours.
- spread_rsi_5m / spread_rsi_1h: Wilder RSI 14 of the lr spread on 5-minute closes
  (ticks of the last 12 h) / 1-hour closes (bars of the last 4 days); rsi_t{i}_5m,
  rsi_t{i}_1h the same for each leg's price. NaN without that data.
- trend_wind / trend_12h: slope per hour of a linear fit of the lr spread, in units
  of its std.
- profit_sensitivity_{12h,wind}_{mean,pos,neg}: for every past step k of that
  window, the PnL the opened position would have made, side (q1 p1 dln p1_k - q2 p2
  dln p2_k), divided by 100 dlog_spread_k: USDT per 1 % move of the log spread; the
  mean over all steps with a spread move, over those with an up move (pos) and a
  down move (neg). Position from `pos_side`, `qty_1`, `qty_2` (else 100 USDT per leg).
- btc_corr_i, eth_corr_i, sol_corr_i: correlation of leg i's bar log returns with
  the reference symbol's over the wind bars (NaN when that symbol is missing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bot.analysis import estimators as est

FEATURE_NAMES = (
    "std_1_180d", "std_2_180d", "beta_1_180d", "beta_2_180d", "pv_1", "pv_2", "tls_beta_180d",
    "coint_180d", "johansen_beta_180d", "history_days_180d", "short_history_180d",
    "mean_wind", "mean_12h", "std_1_wind", "std_2_wind", "std_1_12h", "std_2_12h", "mean_diff",
    "tls_beta_wind", "tls_beta_12h", "hurst_wind", "hurst_12h", "half_life_log_spread",
    "half_life_lr_spread", "spread_rsi_5m", "spread_rsi_1h", "rsi_t1_5m", "rsi_t2_5m", "rsi_t1_1h",
    "rsi_t2_1h", "trend_wind", "trend_12h",
    "profit_sensitivity_12h_mean", "profit_sensitivity_12h_pos", "profit_sensitivity_12h_neg",
    "profit_sensitivity_wind_mean", "profit_sensitivity_wind_pos", "profit_sensitivity_wind_neg",
    "btc_corr_1", "btc_corr_2", "eth_corr_1", "eth_corr_2", "sol_corr_1", "sol_corr_2",
)


def _lr_resid(l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
    b = est.ols_beta(l1, l2)
    if not math.isfinite(b):
        return np.full(l1.shape, np.nan)
    a = l1.mean() - b * l2.mean()
    return l1 - a - b * l2


def _std_ret(lp: np.ndarray) -> float:
    return float(np.std(np.diff(lp), ddof=1)) if lp.shape[0] > 2 else math.nan


def _sensitivity(l1: np.ndarray, l2: np.ndarray, side: float, n1: float, n2: float) -> tuple[float, float, float]:
    """Per-step PnL of the position per 1 % log-spread move: (mean, up moves, down moves)."""
    if l1.shape[0] < 3:
        return math.nan, math.nan, math.nan
    d1, d2 = np.diff(l1), np.diff(l2)
    ds = d1 - d2
    pnl = side * (n1 * d1 - n2 * d2)
    ok = np.abs(ds) > 1e-12
    if not ok.any():
        return math.nan, math.nan, math.nan
    sens = pnl[ok] / (100.0 * ds[ok])
    up, down = sens[ds[ok] > 0], sens[ds[ok] < 0]
    return (float(sens.mean()), float(up.mean()) if up.size else math.nan,
            float(down.mean()) if down.size else math.nan)


def open_time_features(
    t0: float,
    bar_ts: np.ndarray,
    bar_close_1: np.ndarray,
    bar_close_2: np.ndarray,
    tf_s: int,
    wind: int,
    tick_ts: np.ndarray | None = None,
    tick_mid_1: np.ndarray | None = None,
    tick_mid_2: np.ndarray | None = None,
    refs: Mapping[str, np.ndarray] | None = None,
    position: Mapping[str, Any] | None = None,
    ref_names: Sequence[str] = ("btc", "eth", "sol"),
    cache: dict[Any, Any] | None = None,
) -> dict[str, float]:
    """Every feature of FEATURE_NAMES for a trade opened at `t0` (epoch s).

    `bar_ts` are bar open times (sorted); only bars with open + tf_s <= t0 and ticks
    with ts < t0 are read. `refs` maps lower-case reference names (btc, eth, sol) to
    closes aligned with `bar_ts`. Degenerate data gives NaN, never an exception.
    `cache` (optional dict) memoises the 180-day block per number of completed bars:
    trades opened within the same bar share it (it depends on those bars only).
    """
    out = dict.fromkeys(FEATURE_NAMES, math.nan)
    n_done = int(np.searchsorted(bar_ts, t0 - tf_s, side="right"))  # bars complete at t0
    with np.errstate(divide="ignore", invalid="ignore"):
        lc1 = np.log(np.asarray(bar_close_1[:n_done], dtype=np.float64))
        lc2 = np.log(np.asarray(bar_close_2[:n_done], dtype=np.float64))
    bts = np.asarray(bar_ts[:n_done], dtype=np.float64)
    bar_h = tf_s / 3600.0

    # 180 days
    k180 = int(np.searchsorted(bts, t0 - 180 * 86400, side="left"))
    y1, y2, t180 = lc1[k180:], lc2[k180:], bts[k180:]
    days = (t0 - bts[0]) / 86400.0 if bts.size else 0.0  # all the history there is
    out["history_days_180d"] = min(days, 180.0)
    out["short_history_180d"] = float(days < 180.0)
    key = ("180d", n_done)
    if cache is not None and key in cache:
        out.update(cache[key])
    elif y1.size >= 30 and np.isfinite(y1).all() and np.isfinite(y2).all():
        out["std_1_180d"] = est.daily_return_std(t180, y1)
        out["std_2_180d"] = est.daily_return_std(t180, y2)
        out["beta_1_180d"] = est.ols_beta(y1, y2)
        out["beta_2_180d"] = est.ols_beta(y2, y1)
        out["pv_1"] = est.engle_granger(y1, y2).pvalue
        out["pv_2"] = est.engle_granger(y2, y1).pvalue
        out["tls_beta_180d"] = est.tls_beta(y1, y2)
        jo = est.johansen(y1, y2)
        out["coint_180d"] = float(jo.coint)
        out["johansen_beta_180d"] = jo.beta
        if cache is not None:
            cache[key] = {k: out[k] for k in FEATURE_NAMES if k.endswith("_180d") or k in ("pv_1", "pv_2")}

    # wind bars
    w1, w2 = lc1[max(0, n_done - wind):], lc2[max(0, n_done - wind):]
    if w1.size >= max(wind, 3) and np.isfinite(w1).all() and np.isfinite(w2).all():
        log_spread = w1 - w2
        lr = _lr_resid(w1, w2)
        out["mean_wind"] = float(log_spread.mean())
        out["std_1_wind"], out["std_2_wind"] = _std_ret(w1), _std_ret(w2)
        out["tls_beta_wind"] = est.tls_beta(w1, w2)
        out["hurst_wind"] = est.hurst_exponent(lr)
        out["half_life_log_spread"] = est.half_life(log_spread, bar_h)
        out["half_life_lr_spread"] = est.half_life(lr, bar_h)
        out["trend_wind"] = est.linear_trend(lr, bar_h)
        for ref in ref_names:
            series = None if refs is None else refs.get(ref)
            if series is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    lr_ref = np.log(np.asarray(series[:n_done], dtype=np.float64))[max(0, n_done - wind):]
                r = np.diff(lr_ref)
                out[f"{ref}_corr_1"] = est.corr(np.diff(w1), r)
                out[f"{ref}_corr_2"] = est.corr(np.diff(w2), r)
    # 1h RSI on the last 4 days of hourly closes
    per_h = max(1, int(round(3600 / tf_s)))
    h1, h2 = lc1[::-1][::per_h][::-1][-96:], lc2[::-1][::per_h][::-1][-96:]
    if h1.size >= 15:
        out["rsi_t1_1h"] = est.wilder_rsi(np.exp(h1))
        out["rsi_t2_1h"] = est.wilder_rsi(np.exp(h2))
        out["spread_rsi_1h"] = est.wilder_rsi(_lr_resid(h1, h2))

    # 12 hours: 5-minute closes from ticks, else bars
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None
    step_h = bar_h
    if tick_ts is not None and tick_mid_1 is not None and tick_mid_2 is not None and len(tick_ts):
        lo = int(np.searchsorted(tick_ts, t0 - 12 * 3600, side="left"))
        hi = int(np.searchsorted(tick_ts, t0, side="left"))  # ts < t0
        tt = np.asarray(tick_ts[lo:hi], dtype=np.float64)
        if tt.size:
            with np.errstate(divide="ignore", invalid="ignore"):
                s1 = np.log(est.last_per_bucket(tt, np.asarray(tick_mid_1[lo:hi], dtype=np.float64), 300.0))
                s2 = np.log(est.last_per_bucket(tt, np.asarray(tick_mid_2[lo:hi], dtype=np.float64), 300.0))
            step_h = 5 / 60
            if s1.size >= 15:
                out["rsi_t1_5m"] = est.wilder_rsi(np.exp(s1))
                out["rsi_t2_5m"] = est.wilder_rsi(np.exp(s2))
                out["spread_rsi_5m"] = est.wilder_rsi(_lr_resid(s1, s2))
    if s1 is None or s2 is None:
        k12 = int(np.searchsorted(bts, t0 - 12 * 3600, side="left"))
        s1, s2 = lc1[k12:], lc2[k12:]
    if s1.size >= 6 and np.isfinite(s1).all() and np.isfinite(s2).all():
        lr12 = _lr_resid(s1, s2)
        out["mean_12h"] = float(np.mean(s1 - s2))
        out["std_1_12h"], out["std_2_12h"] = _std_ret(s1), _std_ret(s2)
        out["tls_beta_12h"] = est.tls_beta(s1, s2)
        out["hurst_12h"] = est.hurst_exponent(lr12)
        out["trend_12h"] = est.linear_trend(lr12, step_h)
        if math.isfinite(out["mean_wind"]):
            sd = float(np.std(w1 - w2, ddof=1))
            out["mean_diff"] = (out["mean_12h"] - out["mean_wind"]) / sd if sd > 0 else math.nan

    # profit sensitivity of the opened position
    pos = dict(position or {})
    side = 1.0 if int(pos.get("pos_side", 1)) == 1 else -1.0
    p1 = math.exp(lc1[-1]) if lc1.size else math.nan
    p2 = math.exp(lc2[-1]) if lc2.size else math.nan
    n1 = float(pos["qty_1"]) * p1 if "qty_1" in pos else 100.0
    n2 = float(pos["qty_2"]) * p2 if "qty_2" in pos else 100.0
    for name, a, b, need in (("wind", w1, w2, max(wind, 3)), ("12h", s1, s2, 6)):
        if a.size < need:
            continue
        m, up, down = _sensitivity(a, b, side, n1, n2)
        out[f"profit_sensitivity_{name}_mean"] = m
        out[f"profit_sensitivity_{name}_pos"] = up
        out[f"profit_sensitivity_{name}_neg"] = down
    return out

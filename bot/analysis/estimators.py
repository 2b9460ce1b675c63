"""Statistical estimators of pair research (selection.md sections 2-3).

Pure numpy (plus statsmodels' MacKinnon p-value tables and Johansen test). Inputs
are 1-d float arrays (log prices unless stated); every function validates its
input and returns NaN (or inf where stated) on degenerate data, never raising.

References: Engle & Granger (1987); MacKinnon (1994, 2010) for p-values;
Johansen (1991); Gatev, Goetzmann & Rouwenhorst (2006) for the distance method;
Wilder (1978) for RSI; Lo (1991) / Mandelbrot for the Hurst exponent.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

_SQRTEPS = math.sqrt(np.finfo(float).eps)


def _clean(*arrays: np.ndarray) -> tuple[np.ndarray, ...] | None:
    out = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    n = out[0].shape[0]
    if any(a.ndim != 1 or a.shape[0] != n for a in out):
        return None
    if n < 3 or not all(np.isfinite(a).all() for a in out):
        return None
    return out


class EGResult(NamedTuple):
    tstat: float
    pvalue: float
    usedlag: int


def _adf_tstat_nc(x: np.ndarray) -> tuple[float, int]:
    """ADF t-statistic, no deterministic terms, lag chosen by AIC (statsmodels' rules).

    Replicates `adfuller(x, regression='n', autolag='AIC')`: maxlag =
    ceil(12 (n/100)^(1/4)) capped at n//2 - 1; every lag 0..maxlag is fitted on the
    same sample (the one of maxlag) and the smallest AIC wins (ties: fewer lags);
    then the chosen lag is refitted on its own, longer sample. The nested fits come
    from one triangular factor R (Cholesky of X'X, or QR if that fails):
    SSR_k = |y|^2 - sum_{j<k} (R^-T X'y)_j^2.
    """
    nobs = x.shape[0]
    maxlag = int(np.ceil(12.0 * np.power(nobs / 100.0, 1 / 4.0)))
    maxlag = min(nobs // 2 - 1, maxlag)
    if maxlag < 0:
        return math.nan, 0
    xdiff = np.diff(x)

    def design(lag: int) -> tuple[np.ndarray, np.ndarray]:
        n = xdiff.shape[0] - lag
        cols = [x[lag:lag + n]]  # the lagged level x_{t-1}
        for j in range(1, lag + 1):
            cols.append(xdiff[lag - j:lag - j + n])
        return np.column_stack(cols), xdiff[lag:lag + n]

    full, y = design(maxlag)
    n = y.shape[0]
    # nested least squares from the Cholesky factor of the Gram matrix (R of a QR):
    # z = L^-1 X'y, SSR_k = y'y - sum_{j<k} z_j^2
    gram = full.T @ full
    try:
        chol = np.linalg.cholesky(gram)
        qy = np.linalg.solve(chol, full.T @ y)
        diag = np.abs(np.diag(chol))
    except np.linalg.LinAlgError:
        q, r = np.linalg.qr(full)
        qy = q.T @ y
        diag = np.abs(np.diag(r))
    yy = float(y @ y)
    best_aic, best_k = math.inf, 1
    for k in range(1, maxlag + 2):
        if diag[k - 1] <= 1e-12 * max(diag[0], 1e-300):
            break  # rank deficient beyond this column
        ssr = yy - float(np.sum(qy[:k] ** 2))
        if ssr <= 0:
            break
        llf = -n / 2.0 * (math.log(2 * math.pi) + math.log(ssr / n) + 1.0)
        aic = -2.0 * llf + 2.0 * k
        if aic < best_aic:
            best_aic, best_k = aic, k
    lag = best_k - 1
    xd, yd = design(lag)
    beta, *_ = np.linalg.lstsq(xd, yd, rcond=None)
    resid = yd - xd @ beta
    dof = xd.shape[0] - xd.shape[1]
    if dof <= 0:
        return math.nan, lag
    s2 = float(resid @ resid) / dof
    xtx_inv = np.linalg.pinv(xd.T @ xd)
    se = math.sqrt(s2 * xtx_inv[0, 0])
    if se == 0:
        return -math.inf, lag
    return float(beta[0] / se), lag


def engle_granger(y0: np.ndarray, y1: np.ndarray) -> EGResult:
    """Engle-Granger cointegration test of y0 on y1 with a constant (statsmodels `coint`).

    H0: no cointegration. Step 1: OLS y0 = a + b y1 + u; step 2: ADF on u without
    deterministic terms, AIC lag selection; p-value from MacKinnon's (2010)
    surface for N = 2 variables with a constant. Equal to
    `statsmodels.tsa.stattools.coint(y0, y1)` (tested to 1e-8), in a fraction of
    its time. NaN on degenerate input; p = 0 (t = -inf) when y0 and y1 are
    (almost) collinear, as statsmodels does.
    """
    from statsmodels.tsa.adfvalues import mackinnonp

    clean = _clean(y0, y1)
    if clean is None:
        return EGResult(math.nan, math.nan, 0)
    a, b = clean
    if np.ptp(b) == 0 or np.ptp(a) == 0:
        return EGResult(math.nan, math.nan, 0)
    xx = np.column_stack([b, np.ones_like(b)])
    coef, *_ = np.linalg.lstsq(xx, a, rcond=None)
    resid = a - xx @ coef
    centered = a - a.mean()
    r2 = 1.0 - float(resid @ resid) / float(centered @ centered)
    if not r2 < 1 - 100 * _SQRTEPS:
        return EGResult(-math.inf, 0.0, 0)
    if np.ptp(resid) == 0:
        return EGResult(math.nan, math.nan, 0)
    t, lag = _adf_tstat_nc(resid)
    if not math.isfinite(t):
        return EGResult(t, 0.0 if t == -math.inf else math.nan, lag)
    return EGResult(t, float(mackinnonp(t, regression="c", N=2)), lag)


def ols_beta(y: np.ndarray, x: np.ndarray) -> float:
    """Slope of OLS y = a + b x (NaN if var(x) = 0)."""
    clean = _clean(y, x)
    if clean is None:
        return math.nan
    yy, xx = clean
    dx = xx - xx.mean()
    sxx = float(dx @ dx)
    return float(dx @ (yy - yy.mean())) / sxx if sxx > 0 else math.nan


def tls_beta(y: np.ndarray, x: np.ndarray) -> float:
    """Total-least-squares (orthogonal regression) slope of y on x.

    The direction of the first principal axis of the centred (x, y) cloud:
    b = (syy - sxx + sqrt((syy - sxx)^2 + 4 sxy^2)) / (2 sxy). Symmetric in the
    errors of both series, so tls_beta(y, x) = 1 / tls_beta(x, y).
    """
    clean = _clean(y, x)
    if clean is None:
        return math.nan
    yy, xx = clean
    dx, dy = xx - xx.mean(), yy - yy.mean()
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    if sxy == 0:
        return math.nan
    return (syy - sxx + math.sqrt((syy - sxx) ** 2 + 4 * sxy * sxy)) / (2 * sxy)


class JohansenResult(NamedTuple):
    coint: int  # 1 if the trace test rejects r = 0 at 95 %
    beta: float  # y = beta x from the first eigenvector, normalised on y
    trace_stat: float
    crit_95: float


def johansen(y: np.ndarray, x: np.ndarray, k_ar_diff: int = 1) -> JohansenResult:
    """Johansen trace test on (y, x) with a constant (det_order 0), statsmodels.

    beta = -v_x / v_y of the first cointegrating eigenvector v (so y - beta x is the
    stationary combination).
    """
    clean = _clean(y, x)
    if clean is None or clean[0].shape[0] < 10 * (k_ar_diff + 2):
        return JohansenResult(0, math.nan, math.nan, math.nan)
    from statsmodels.tsa.vector_ar.vecm import coint_johansen

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = coint_johansen(np.column_stack(clean), det_order=0, k_ar_diff=k_ar_diff)
    except (np.linalg.LinAlgError, ValueError):
        return JohansenResult(0, math.nan, math.nan, math.nan)
    v = res.evec[:, 0]
    beta = -float(v[1] / v[0]) if v[0] != 0 else math.nan
    trace, crit = float(res.lr1[0]), float(res.cvt[0, 1])
    return JohansenResult(int(trace > crit), beta, trace, crit)


def half_life(x: np.ndarray, bar_hours: float = 1.0) -> float:
    """Ornstein-Uhlenbeck half-life in hours from an AR(1) fit.

    OLS x_t = c + phi x_{t-1} + e; half-life = -ln 2 / ln(phi) bars * bar_hours.
    inf when phi >= 1 (no mean reversion), NaN when phi <= 0 or on degenerate input.
    """
    clean = _clean(x)
    if clean is None:
        return math.nan
    (s,) = clean
    phi = ols_beta(s[1:], s[:-1])
    if not math.isfinite(phi) or phi <= 0:
        return math.nan
    if phi >= 1:
        return math.inf
    return -math.log(2.0) / math.log(phi) * bar_hours


def zero_crossings(x: np.ndarray) -> int:
    """Number of times `x` crosses its own mean: sign changes of x - mean(x), exact
    zeros skipped (a touch is not a crossing). 0 on degenerate input.

    The mean-crossing count of a spread is the frequency filter of Sarmento & Horta
    (2020) and the "number of zero crossings" of Do & Faff (2010).
    """
    clean = _clean(x)
    if clean is None:
        return 0
    d = clean[0] - clean[0].mean()
    signs = np.sign(d[d != 0])
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def regression_spread(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residual of OLS y = a + b x (the Engle-Granger spread), demeaned; empty on degenerate input."""
    clean = _clean(y, x)
    if clean is None:
        return np.empty(0)
    yy, xx = clean
    b = ols_beta(yy, xx)
    if not math.isfinite(b):
        return np.empty(0)
    return (yy - yy.mean()) - b * (xx - xx.mean())


def hurst_exponent(x: np.ndarray, max_lag: int = 100) -> float:
    """Hurst exponent from the scaling of lagged differences.

    For lags tau = 2..L (L = min(max_lag, n // 4)), sd(x_{t+tau} - x_t) ~ tau^H;
    H is the OLS slope of log sd on log tau. 0.5 for a random walk, < 0.5 for a
    mean-reverting series, > 0.5 for a trending one. NaN with fewer than 20 points
    or a constant series.
    """
    clean = _clean(x)
    if clean is None or clean[0].shape[0] < 20:
        return math.nan
    (s,) = clean
    top = min(max_lag, s.shape[0] // 4)
    lags = np.arange(2, top + 1)
    sd = np.array([np.std(s[lag:] - s[:-lag]) for lag in lags])
    if lags.size < 3 or np.any(sd <= 0):
        return math.nan
    return ols_beta(np.log(sd), np.log(lags.astype(float)))


def wilder_rsi(x: np.ndarray, period: int = 14) -> float:
    """Wilder's RSI of the last point of `x` (prices or a spread), in [0, 100].

    Gains/losses of first differences; the first averages are simple means of the
    first `period` changes, then avg = (avg (period - 1) + change) / period.
    RSI = 100 - 100 / (1 + avg_gain / avg_loss); 100 when there are no losses, 50
    when nothing moved, NaN with fewer than period + 1 points.
    """
    clean = _clean(x)
    if clean is None or clean[0].shape[0] < period + 1:
        return math.nan
    d = np.diff(clean[0])
    gain, loss = np.maximum(d, 0.0), np.maximum(-d, 0.0)
    ag, al = float(gain[:period].mean()), float(loss[:period].mean())
    for g, lo in zip(gain[period:], loss[period:], strict=True):
        ag = (ag * (period - 1) + g) / period
        al = (al * (period - 1) + lo) / period
    if al == 0:
        return 50.0 if ag == 0 else 100.0
    return 100.0 - 100.0 / (1.0 + ag / al)


def distance(lp1: np.ndarray, lp2: np.ndarray) -> tuple[float, float]:
    """Gatev et al. distance of two log-price paths: (mean squared gap, std of the gap).

    Each path is normalised to start at 0 (cumulative log return), gap = path_1 - path_2.
    """
    clean = _clean(lp1, lp2)
    if clean is None:
        return math.nan, math.nan
    a, b = clean
    gap = (a - a[0]) - (b - b[0])
    return float(np.mean(gap**2)), float(np.std(gap, ddof=1))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation (NaN if either is constant)."""
    clean = _clean(a, b)
    if clean is None:
        return math.nan
    x, y = clean
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return math.nan
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))


def last_per_bucket(ts: np.ndarray, values: np.ndarray, seconds: float) -> np.ndarray:
    """The last value of each time bucket of `seconds` (epoch-aligned), in time order.

    `ts` sorted epoch seconds; empty input gives an empty array.
    """
    if ts.shape[0] == 0:
        return values[:0]
    bucket = np.floor(ts / seconds)
    last = np.flatnonzero(np.diff(bucket) != 0)
    return values[np.concatenate([last, [ts.shape[0] - 1]])]


def daily_return_std(ts: np.ndarray, log_prices: np.ndarray) -> float:
    """Std (ddof 1) of daily log returns; daily close = the last point of each UTC day.

    NaN with fewer than three daily closes.
    """
    closes = last_per_bucket(np.asarray(ts, dtype=np.float64), np.asarray(log_prices, dtype=np.float64), 86400.0)
    if closes.shape[0] < 3:
        return math.nan
    return float(np.std(np.diff(closes), ddof=1))


def sizing_vol(bar_ts: np.ndarray, close: np.ndarray, before_ts: float, n_bars: int, tf_s: float) -> float:
    """The daily volatility of vol_neutral sizing (strategy.md section 3), known at `before_ts`:

        sigma = std(ddof 1) of the log returns of the last `n_bars` bars complete at
                `before_ts` (fewer if fewer are there), times sqrt(86400 / tf_s)

    Bars are stamped by open time; only bars complete at `before_ts` count (open + tf_s <=
    before_ts), so an unaligned `before_ts` never sees the close of the bar it falls in. NaN with fewer than three bars. The one definition used by
    `bot backtest`, the research runs and (to come) the live executor, each at the start
    of the window it trades.
    """
    ts = np.asarray(bar_ts, dtype=np.float64)
    k = int(np.searchsorted(ts, before_ts - tf_s, side="right"))
    c = np.asarray(close, dtype=np.float64)[max(0, k - int(n_bars)):k]
    if c.shape[0] < 3 or not np.all(c > 0):
        return math.nan
    return float(np.std(np.diff(np.log(c)), ddof=1) * math.sqrt(86400.0 / tf_s))


def linear_trend(x: np.ndarray, hours_per_point: float) -> float:
    """Slope of a linear fit of x per hour, in units of std(x) (NaN if flat)."""
    clean = _clean(x)
    if clean is None:
        return math.nan
    (s,) = clean
    sd = float(np.std(s, ddof=1))
    if sd == 0:
        return math.nan
    t = np.arange(s.shape[0]) * hours_per_point
    return ols_beta(s, t) / sd

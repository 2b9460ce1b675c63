"""Strategy metrics of a trades frame (strategy.md section 7).

Definitions (all money in USDT, percentages in %, durations in hours):

- trades, wins (total_profit > 0), win_rate = wins / trades * 100.
- total_profit = sum; pr = total_profit / initial_balance * 100; avg_profit = mean.
- loss = sum of the losing trades' total_profit (<= 0).
- max_drdn: equity E_k = initial_balance + cumulative profit after the k-th close
  (E_0 = initial_balance); max over k of (max_{j<=k} E_j - E_k) / max_{j<=k} E_j * 100.
- pr_rat = pr / max(max_drdn, 1.0).
- avg_dur, max_dur: (close_ts - open_ts) / 3600.
- profit_factor = gross profit / |gross loss| (None without losing trades).
- sharpe, sortino: daily returns r_d = E(d)/E(d-1) - 1 of the closed-trade equity
  sampled at each UTC day end over [start, end]; sharpe = mean / std(ddof 1) * sqrt(365);
  sortino = mean / sqrt(mean(min(r, 0)^2)) * sqrt(365); None when undefined.
- calmar = annualised return % / max_drdn, annualised return = (E_end / E_0)^(365 / days) - 1.
- exposure = % of [start, end] covered by the union of [open_ts, close_ts].
- stop_losses = trades with reason 2; liquidations = trades with reason 4 (strategy.md
  section 4); trades_per_day = trades / days.

Empty input gives the same keys with zeros (counts, sums) or None (ratios).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl

METRIC_KEYS = (
    "trades", "wins", "win_rate", "total_profit", "pr", "avg_profit", "loss", "max_drdn",
    "pr_rat", "avg_dur", "max_dur", "profit_factor", "sharpe", "sortino", "calmar", "exposure",
    "stop_losses", "liquidations", "trades_per_day",
)


def _epoch_s(value: Any) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    return float(value)


def max_drawdown_pct(equity: np.ndarray) -> float:
    """Max drawdown of an equity curve, % of the running peak."""
    if equity.size == 0:
        return 0.0
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, (peak - equity) / peak * 100.0, 0.0)
    return float(dd.max())


def _daily_returns(close_ts: np.ndarray, profit: np.ndarray, start: float, end: float,
                   initial: float) -> np.ndarray:
    day = 86400.0
    first = math.floor(start / day) * day
    edges = np.arange(first + day, end + day, day)
    edges = np.minimum(edges, end)
    edges = np.unique(np.concatenate([[start], edges]))
    order = np.argsort(close_ts, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(profit[order])])
    idx = np.searchsorted(close_ts[order], edges, side="right")
    equity = initial + cum[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        return equity[1:] / equity[:-1] - 1.0


def _exposure(open_ts: np.ndarray, close_ts: np.ndarray, start: float, end: float) -> float:
    if end <= start or open_ts.size == 0:
        return 0.0
    a = np.clip(open_ts, start, end)
    b = np.clip(close_ts, start, end)
    order = np.argsort(a, kind="stable")
    covered = 0.0
    cur_a, cur_b = -math.inf, -math.inf
    for x, y in zip(a[order], b[order], strict=True):
        if x > cur_b:
            if cur_b > cur_a:
                covered += cur_b - cur_a
            cur_a, cur_b = x, y
        else:
            cur_b = max(cur_b, y)
    if cur_b > cur_a:
        covered += cur_b - cur_a
    return covered / (end - start) * 100.0


def analyze_strategy(trades_df: pl.DataFrame | None, start_date: Any, end_date: Any,
                     initial_balance: float) -> dict[str, Any]:
    """Every metric of strategy.md section 7 for one backtest; never raises on empty input."""
    if trades_df is None or trades_df.height == 0:
        return analyze_arrays(None, None, None, None, start_date, end_date, initial_balance)
    return analyze_arrays(
        trades_df.get_column("total_profit").cast(pl.Float64).to_numpy(),
        trades_df.get_column("open_ts").cast(pl.Float64).to_numpy(),
        trades_df.get_column("close_ts").cast(pl.Float64).to_numpy(),
        trades_df.get_column("reason").cast(pl.Int64).to_numpy(),
        start_date, end_date, initial_balance,
    )


def analyze_arrays(profit: np.ndarray | None, open_ts: np.ndarray | None, close_ts: np.ndarray | None,
                   reason: np.ndarray | None, start_date: Any, end_date: Any,
                   initial_balance: float) -> dict[str, Any]:
    """:func:`analyze_strategy` from the trades' columns (total_profit, open_ts, close_ts in
    epoch s, reason), one value per trade; a sweep calls it on the kernel's records
    without building a frame (same numbers: the frame holds the same floats)."""
    start = _epoch_s(start_date)
    end = _epoch_s(end_date)
    days = max((end - start) / 86400.0, 0.0)
    n = 0 if profit is None else int(profit.shape[0])
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out.update(trades=0, wins=0, total_profit=0.0, pr=0.0, loss=0.0, max_drdn=0.0, pr_rat=0.0,
               exposure=0.0, stop_losses=0, liquidations=0, trades_per_day=0.0)
    if n == 0 or profit is None or open_ts is None or close_ts is None or reason is None:
        return out
    order = np.argsort(close_ts, kind="stable")
    equity = initial_balance + np.concatenate([[0.0], np.cumsum(profit[order])])
    wins = int((profit > 0).sum())
    total = float(profit.sum())
    pr = total / initial_balance * 100.0
    mdd = max_drawdown_pct(equity)
    gross_win = float(profit[profit > 0].sum())
    gross_loss = float(profit[profit < 0].sum())
    dur_h = (close_ts - open_ts) / 3600.0
    out.update(
        trades=n, wins=wins, win_rate=wins / n * 100.0, total_profit=total, pr=pr,
        avg_profit=total / n, loss=gross_loss, max_drdn=mdd, pr_rat=pr / max(mdd, 1.0),
        avg_dur=float(dur_h.mean()), max_dur=float(dur_h.max()),
        profit_factor=(gross_win / -gross_loss) if gross_loss < 0 else None,
        stop_losses=int((reason == 2).sum()),
        liquidations=int((reason == 4).sum()),
        trades_per_day=(n / days) if days > 0 else None,
        exposure=_exposure(open_ts, close_ts, start, end),
    )
    if days > 0:
        rets = _daily_returns(close_ts, profit, start, end, initial_balance)
        rets = rets[np.isfinite(rets)]
        if rets.size >= 2:
            sd = float(rets.std(ddof=1))
            mean = float(rets.mean())
            out["sharpe"] = mean / sd * math.sqrt(365.0) if sd > 0 else None
            downside = math.sqrt(float(np.mean(np.minimum(rets, 0.0) ** 2)))
            out["sortino"] = mean / downside * math.sqrt(365.0) if downside > 0 else None
        final = float(equity[-1])
        if final > 0 and mdd > 0:
            ann = ((final / initial_balance) ** (365.0 / days) - 1.0) * 100.0
            out["calmar"] = ann / mdd
    return out

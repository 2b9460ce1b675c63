"""The notebook's pair-trading helpers: `load_data`, `create_zscore_df`.

`create_zscore_df` is a thin frame adapter over :func:`bot.analysis.zscore.zscore_arrays`
(the same kernels the live executor streams through).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from bot.analysis.zscore import zscore_multi


def _to_epoch_s(value: Any) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float(value)


def _ts_seconds(df: pl.DataFrame, name: str) -> Any:
    if "ts" in df.columns:
        return df.get_column("ts").cast(pl.Float64).to_numpy()
    if "time" in df.columns:
        return df.get_column("time").dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6
    raise ValueError(f"{name}: needs a 'ts' or 'time' column")


def create_zscore_df(
    token_1: str,
    token_2: str,
    tick_df: pl.DataFrame,
    agg_df: pl.DataFrame,
    tf: str,
    winds: Iterable[int],
    start_ts: Any,
    median_length: int = 6,
    spr_method: str = "lr",
    with_beta: bool = False,
) -> pl.DataFrame:
    """tick_df rows with ts >= start_ts plus, for each w in `winds`, the columns
    `spread_{w}_{tf}`, `spread_mean_{w}_{tf}`, `spread_std_{w}_{tf}`, `z_score_{w}_{tf}`
    (and `beta_{w}_{tf}` with `with_beta=True`). Ticks before start_ts feed the tick
    median only; bars come from agg_df (bar open times, closes per token)."""
    for frame, name in ((tick_df, "tick_df"), (agg_df, "agg_df")):
        for tok in (token_1, token_2):
            if tok not in frame.columns:
                raise ValueError(f"{name}: missing column {tok!r}")
    tick_ts = _ts_seconds(tick_df, "tick_df")
    bar_ts = _ts_seconds(agg_df, "agg_df")
    mid_1 = tick_df.get_column(token_1).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    mid_2 = tick_df.get_column(token_2).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    c1 = agg_df.get_column(token_1).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    c2 = agg_df.get_column(token_2).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    cols: dict[str, Any] = {}
    results = zscore_multi(tick_ts, mid_1, mid_2, bar_ts, c1, c2, tf, [int(w) for w in winds], spr_method,
                           median_length, with_beta=with_beta)
    for w in winds:
        res = results[int(w)]
        cols[f"spread_{w}_{tf}"] = res.spread
        cols[f"spread_mean_{w}_{tf}"] = res.spread_mean
        cols[f"spread_std_{w}_{tf}"] = res.spread_std
        cols[f"z_score_{w}_{tf}"] = res.z_score
        if with_beta:
            cols[f"beta_{w}_{tf}"] = res.beta
    start = _to_epoch_s(start_ts)
    keep = tick_ts >= start
    first = int(keep.argmax()) if keep.any() else tick_df.height
    if keep[first:].all():  # sorted ticks: a slice, no copy of the kept rows
        out = tick_df.slice(first)
        cols = {k: v[first:] for k, v in cols.items()}
    else:
        out = tick_df.filter(pl.Series(keep))
        cols = {k: v[keep] for k, v in cols.items()}
    return out.with_columns([pl.Series(name, values, nan_to_null=True) for name, values in cols.items()])


async def load_data(token_1: str, token_2: str, start: Any, end: Any, tf: str, wind: int,
                    db: Any, history_days: float = 0.0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tick_df, agg_df) of a pair from the database; see bot.core.db.market.load_pair_data.

    `db` is the notebook's DBManager (connected here when this is its first call), a
    Database, or an asyncpg pool. agg_df starts `wind` bars before `start`, or
    `history_days` before it when that is longer: pass 180 so that
    `get_open_time_stats` sees the 180 days its `*_180d` features promise."""
    from bot.core.db.market import load_pair_data
    from bot.core.db.postgres_manager import DBManager

    source = await db.get_pool() if isinstance(db, DBManager) else db
    history = dt.timedelta(days=history_days) if history_days > 0 else None
    return await load_pair_data(source, token_1, token_2, start, end, tf, wind, history=history)


def get_open_time_stats(
    token_1: str,
    token_2: str,
    open_time: Any,
    tick_df: pl.DataFrame,
    agg_df: pl.DataFrame,
    lr_spread: Any = None,
    params: dict[str, Any] | None = None,
    coin_information: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The notebook's per-trade features (bot.analysis.open_time_features), from data
    strictly before `open_time` (datetime or epoch s).

    `params` gives `wind` and `tf` (defaults 72, '1h') and optionally the opened
    position (`pos_side`, `qty_1`, `qty_2`). `agg_df` may carry the reference
    symbols' closes (BTC, ETH, SOL columns). `lr_spread` and `coin_information` are
    accepted for the notebook's call and not needed: the lr spread is recomputed from
    past bars only (a precomputed series could hold future-fitted betas).
    """
    from bot.analysis.open_time_features import open_time_features
    from bot.analysis.zscore import tf_seconds

    del lr_spread, coin_information
    p = dict(params or {})
    tf = str(p.get("tf", "1h"))
    wind = int(p.get("wind", 72))
    t0 = _to_epoch_s(open_time)
    bar_ts = _ts_seconds(agg_df, "agg_df")
    refs = {r.lower(): agg_df.get_column(r).cast(pl.Float64).fill_null(float("nan")).to_numpy()
            for r in ("BTC", "ETH", "SOL") if r in agg_df.columns and r not in (token_1, token_2)}
    for r in ("BTC", "ETH", "SOL"):
        if r in (token_1, token_2):  # a leg is a reference symbol: its own closes
            refs[r.lower()] = agg_df.get_column(r).cast(pl.Float64).to_numpy()
    tick_ts = m1 = m2 = None
    if tick_df is not None and tick_df.height and token_1 in tick_df.columns and token_2 in tick_df.columns:
        tick_ts = _ts_seconds(tick_df, "tick_df")
        m1 = tick_df.get_column(token_1).cast(pl.Float64).to_numpy()
        m2 = tick_df.get_column(token_2).cast(pl.Float64).to_numpy()
        if tick_ts.size > 1 and np.median(np.diff(tick_ts)) >= tf_seconds(tf):
            tick_ts = m1 = m2 = None  # bars-only tick frame: no finer data than the bars
    return open_time_features(
        t0, bar_ts, agg_df.get_column(token_1).cast(pl.Float64).to_numpy(),
        agg_df.get_column(token_2).cast(pl.Float64).to_numpy(), tf_seconds(tf), wind, tick_ts, m1, m2,
        refs, {k: p[k] for k in ("pos_side", "qty_1", "qty_2") if k in p},
    )

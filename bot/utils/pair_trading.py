"""The notebook's pair-trading helpers: `load_data`, `create_zscore_df`.

`create_zscore_df` is a thin frame adapter over :func:`bot.analysis.zscore.zscore_arrays`
(the same kernels the live executor streams through).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

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
                    db: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tick_df, agg_df) of a pair from the database; see bot.core.db.market.load_pair_data."""
    from bot.core.db.market import load_pair_data

    return await load_pair_data(db, token_1, token_2, start, end, tf, wind)

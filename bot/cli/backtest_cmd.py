"""`bot backtest T1 T2`: one pair, one window, parameters from config or flags."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
from typing import Any

import polars as pl

from bot.config import BotConfig

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("backtest", help="backtest one pair over a window from the database")
    p.add_argument("token_1")
    p.add_argument("token_2")
    p.add_argument("--start", help="window start, UTC ISO date/time (default: research.valid_time)")
    p.add_argument("--end", help="window end (default: research.end_time)")
    p.add_argument("--tf")
    p.add_argument("--wind", type=int)
    p.add_argument("--spr-method", choices=("dist", "lr"))
    p.add_argument("--median-length", type=int)
    p.add_argument("--in", dest="thresh_in", type=float, help="entry threshold (|z|)")
    p.add_argument("--out", dest="thresh_out", type=float, help="exit threshold (|z|)")
    p.add_argument("--open-method", choices=("direct", "reverse_static", "reverse_dynamic"))
    p.add_argument("--close-method", choices=("direct", "reverse_static", "reverse_dynamic"))
    p.add_argument("--dist-in", type=float)
    p.add_argument("--dist-out", type=float)
    p.add_argument("--sl-std", type=float)
    p.add_argument("--sl-dist", type=float)
    p.add_argument("--sl-seconds", type=float)
    p.add_argument("--sl-method", choices=("leave", "cooldown"))
    p.add_argument("--fee-rate", type=float)
    p.add_argument("--latency", dest="latency_s", type=float)
    p.add_argument("--force-close", action="store_true", default=None)
    p.add_argument("--plot", metavar="FILE.png", help="draw z with entries/exits and the equity curve")
    p.add_argument("--max-rows", type=int, default=20, help="trades printed (default 20)")
    p.set_defaults(func=cmd_backtest)


def _parse_time(text: str | None, default: dt.datetime) -> dt.datetime:
    if text is None:
        return default
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def effective_params(args: argparse.Namespace, cfg: BotConfig) -> dict[str, Any]:
    s = cfg.strategy.model_dump()
    for key in ("tf", "wind", "spr_method", "median_length", "thresh_in", "thresh_out", "open_method",
                "close_method", "dist_in", "dist_out", "sl_std", "sl_dist", "sl_seconds", "sl_method",
                "fee_rate", "latency_s", "force_close"):
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    if not s["thresh_out"] < s["thresh_in"]:
        raise ValueError(f"--out must be below --in (got {s['thresh_out']} >= {s['thresh_in']})")
    return s


def daily_log_return_std(agg: pl.DataFrame, token: str, before_ts: float, tf_s: int) -> float:
    """Std of bar log returns before `before_ts`, scaled to one day (no look-ahead)."""
    closes = agg.filter(pl.col("ts") < before_ts).get_column(token).to_numpy()
    if closes.size < 3:
        return math.nan
    import numpy as np

    r = np.diff(np.log(closes))
    return float(np.std(r, ddof=1) * math.sqrt(86400 / tf_s))


async def run_backtest_from_db(db: Any, cfg: BotConfig, t1: str, t2: str, start: dt.datetime,
                               end: dt.datetime, s: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    from bot.analysis.backtesting import backtest
    from bot.analysis.strategy_analysis import analyze_strategy
    from bot.analysis.zscore import tf_seconds
    from bot.core.db.market import coin_information, load_pair_data
    from bot.utils.pair_trading import create_zscore_df

    tick_df, agg_df = await load_pair_data(db, t1, t2, start, end, s["tf"], s["wind"], cfg.data.reference_symbols,
                                           half_spread=s["half_spread_bp"] * 1e-4)
    if tick_df.height == 0:
        raise ValueError(f"no data for {t1}/{t2} between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M}")
    info = (await coin_information(db))["bybit_linear"]
    steps = []
    for t in (t1, t2):
        meta = info.get(f"{t}_USDT")
        if meta is None:
            raise ValueError(f"no instrument info for {t} (import or refresh instruments first)")
        steps.append(meta["qty_step"])
    tf, w = s["tf"], s["wind"]
    zdf = create_zscore_df(t1, t2, tick_df, agg_df, tf, [w], start, s["median_length"], s["spr_method"])
    zdf = zdf.rename({f"spread_{w}_{tf}": "spread", f"spread_mean_{w}_{tf}": "spread_mean",
                      f"spread_std_{w}_{tf}": "spread_std", f"z_score_{w}_{tf}": "z_score"})
    tf_s = tf_seconds(tf)
    std_1 = daily_log_return_std(agg_df, t1, start.timestamp(), tf_s)
    std_2 = daily_log_return_std(agg_df, t2, start.timestamp(), tf_s)
    trades = backtest(
        zdf, t1, t2, steps[0], steps[1],
        thresh_low_in=-s["thresh_in"], thresh_low_out=-s["thresh_out"],
        thresh_high_in=s["thresh_in"], thresh_high_out=s["thresh_out"],
        long_possible=s["long_possible"], short_possible=s["short_possible"], balance=s["balance"],
        order_size=s["order_size"], qty_method=s["qty_method"], std_1=std_1, std_2=std_2,
        fee_rate=s["fee_rate"], sl_std=s["sl_std"], sl_dist=s["sl_dist"], sl_method=s["sl_method"],
        sl_seconds=s["sl_seconds"], open_method=s["open_method"], close_method=s["close_method"],
        leverage=s["leverage"], dist_in=s["dist_in"], dist_out=s["dist_out"], force_close=s["force_close"],
        min_order_size=s["min_order_size"], latency_s=s["latency_s"], half_spread=s["half_spread_bp"] * 1e-4,
    )
    metrics = analyze_strategy(trades, start, end, s["balance"])
    return zdf, trades, metrics


def plot_backtest(path: str, zdf: pl.DataFrame, trades: pl.DataFrame, s: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    t = zdf.get_column("time").to_numpy()
    ax1.plot(t, zdf.get_column("z_score").to_numpy(), lw=0.6, color="tab:blue", label="z")
    for y in (s["thresh_in"], -s["thresh_in"]):
        ax1.axhline(y, color="tab:red", lw=0.6, ls="--")
    for y in (s["thresh_out"], -s["thresh_out"]):
        ax1.axhline(y, color="tab:green", lw=0.6, ls=":")
    if trades.height:
        ax1.scatter(trades["open_time"].to_numpy(), trades["open_z"].to_numpy(), marker="^", color="black",
                    s=25, label="entry", zorder=3)
        ax1.scatter(trades["close_time"].to_numpy(), trades["close_z"].to_numpy(), marker="x", color="tab:red",
                    s=25, label="exit", zorder=3)
        import numpy as np

        eq = np.concatenate([[s["balance"]], s["balance"] + trades["total_profit"].cum_sum().to_numpy()])
        when = np.concatenate([t[:1], trades["close_time"].to_numpy(), t[-1:]])
        ax2.step(when, np.concatenate([eq, eq[-1:]]), where="post", color="tab:purple")
    ax2.axhline(s["balance"], color="grey", lw=0.5)
    ax1.set_ylabel("z-score")
    ax2.set_ylabel("equity, USDT")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_backtest(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.market import token_of
    from bot.core.db.pool import open_database

    s = effective_params(args, cfg)
    start = _parse_time(args.start, cfg.research.valid_time)
    end = _parse_time(args.end, cfg.research.end_time)
    if end <= start:
        raise ValueError(f"--end must be after --start (got {start.isoformat()} -> {end.isoformat()})")
    t1, t2 = token_of(args.token_1), token_of(args.token_2)

    async def run() -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
        db = await open_database(cfg.database)
        try:
            return await run_backtest_from_db(db, cfg, t1, t2, start, end, s)
        finally:
            await db.close()

    zdf, trades, metrics = asyncio.run(run())
    print(f"{t1}/{t2} {start:%Y-%m-%d %H:%M} -> {end:%Y-%m-%d %H:%M} UTC, tf {s['tf']}, wind {s['wind']}, "
          f"{s['spr_method']}, in {s['thresh_in']} out {s['thresh_out']}, {s['open_method']}/{s['close_method']}")
    with pl.Config(tbl_rows=args.max_rows, tbl_cols=12, tbl_width_chars=160):
        print(trades.select("open_time", "close_time", "pos_side", "reason", "qty_1", "qty_2",
                            "open_z", "close_z", "fees", "total_profit"))
    for k, v in metrics.items():
        print(f"  {k:15s} {v:.4f}" if isinstance(v, float) else f"  {k:15s} {v}")
    if args.plot:
        plot_backtest(args.plot, zdf, trades, s, f"{t1}/{t2} {s['spr_method']} w={s['wind']} {s['tf']}")
        print(f"plot: {args.plot}")
    return 0

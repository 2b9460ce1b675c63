"""`bot backtest T1 T2`: one pair, one window, parameters from config or flags."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from dataclasses import dataclass
from typing import Any

import polars as pl

from bot.cli.args import (
    UsageError,
    parse_time,
    positive_int,
    require_instruments,
    require_known_tokens,
    timeframe,
    token_of,
    window,
)
from bot.config import BotConfig
from bot.config.model import StrategyConfig

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
    p.add_argument("--assume-instruments", action="store_true",
                   help="derive qty steps from prices when instruments are missing (imported candles), as research")
    p.set_defaults(func=cmd_backtest)


def effective_params(args: argparse.Namespace, cfg: BotConfig) -> dict[str, Any]:
    s = cfg.strategy.model_dump()
    for key in ("tf", "wind", "spr_method", "median_length", "thresh_in", "thresh_out", "open_method",
                "close_method", "dist_in", "dist_out", "sl_std", "sl_dist", "sl_seconds", "sl_method",
                "fee_rate", "latency_s", "force_close"):
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    if not s["thresh_out"] < s["thresh_in"]:
        raise UsageError(f"--out must be below --in (got {s['thresh_out']} >= {s['thresh_in']})")
    return s


@dataclass
class BacktestRun:
    zdf: pl.DataFrame  # time, ts, z_score of the window's ticks
    trades: pl.DataFrame
    metrics: dict[str, Any]
    skipped_entries: int
    coverage: float
    median_length: int = 1
    skips: dict[str, int] | None = None  # skipped entries per sizing reason
    untradeable: str = ""  # why no entry can be sized (pair_job.untradeable_reason), "" when one can


async def run_backtest_from_db(db: Any, cfg: BotConfig, t1: str, t2: str, start: dt.datetime,
                               end: dt.datetime, s: dict[str, Any], *,
                               assume_instruments: bool = False) -> BacktestRun:
    """One pair over [start, end) through the research path (bot.research.pair_job), so `bot
    backtest` and `bot stats`/`bot sweep` give identical trades for the same pair, window
    and parameters: the same loader (bar-close ticks where quotes are missing), instrument
    steps, min qty and min notional, sizing volatility and z-score kernels."""
    from bot.analysis.backtesting import run_backtest
    from bot.analysis.coverage import quote_coverage
    from bot.analysis.strategy_analysis import analyze_strategy
    from bot.analysis.zscore import tf_seconds
    from bot.core.db.market import coin_information
    from bot.research.pair_job import (
        signal_params,
        slice_ticks,
        tick_median_length,
        untradeable_reason,
        window_sizing,
        window_slice,
        z_ticks,
    )
    from bot.research.params import default_params
    from bot.research.sweep import SkipPair, load_input

    strategy = StrategyConfig.model_validate(s)
    p = default_params(strategy)
    info = (await coin_information(db))["bybit_linear"]
    try:
        inp = await load_input(db, cfg.model_copy(update={"strategy": strategy}), t1, t2, start, end, end,
                               p.wind, info, assume_instruments)
    except SkipPair as why:
        raise UsageError(f"{t1}/{t2}: {why}; {await _what_is_stored(db, t1, t2, strategy.tf)}") from None
    m = tick_median_length(inp, strategy)
    zs = z_ticks(inp, {p.z_key}, p.tf, m)
    lo, hi = window_slice(inp, start.timestamp(), end.timestamp())
    if hi <= lo:
        raise UsageError(f"no tick of {t1}/{t2} between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M}")
    ticks = slice_ticks(zs[p.z_key], lo, hi)
    sizing = window_sizing(inp, strategy, start.timestamp(), p.wind)
    res = run_backtest(ticks, signal_params(p, strategy), sizing, strategy.force_close, token_1=t1, token_2=t2)
    why = untradeable_reason(inp, sizing, lo, hi, res.skips, res.trades.height > 0, where="the window")
    metrics = analyze_strategy(res.trades, start, end, strategy.balance)
    coverage = quote_coverage(inp.tick_ts, inp.quote_mask(), start.timestamp(), end.timestamp(), tf_seconds(p.tf))
    zdf = pl.DataFrame({"ts": ticks.ts, "z_score": ticks.z}).with_columns(
        pl.from_epoch((pl.col("ts") * 1e6).round().cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC")
        .alias("time"))
    return BacktestRun(zdf, res.trades, metrics, res.skipped_entries, coverage, m, dict(res.skips), why)


async def _what_is_stored(db: Any, t1: str, t2: str, tf: str) -> str:
    """One clause naming the timeframes stored for the pair's symbols (for a clear error)."""
    from bot.core.db.market import finer_timeframes, stored_timeframes, symbol_of

    parts = []
    for t in (t1, t2):
        tfs = await stored_timeframes(db, symbol_of(t))
        parts.append(f"{t}: {', '.join(tfs) if tfs else 'no bars'}")
    return (f"{tf} bars are read directly or built from {', '.join(finer_timeframes(tf)) or 'nothing finer'};"
            f" stored: {'; '.join(parts)}")


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
    from bot.analysis.backtesting import named_trades
    from bot.core.db.pool import open_database

    s = effective_params(args, cfg)
    start = parse_time(args.start, "--start", cfg.research.valid_time)
    end = parse_time(args.end, "--end", cfg.research.end_time)
    window(start, end)
    timeframe(s["tf"])
    positive_int(args.wind, "--wind")
    positive_int(args.median_length, "--median-length")
    t1, t2 = token_of(args.token_1), token_of(args.token_2)

    async def run() -> BacktestRun:
        db = await open_database(cfg.database)
        try:
            await require_known_tokens(db, [t1, t2], "T1/T2", bars_tf=s["tf"])
            await require_instruments(db, [t1, t2], "T1/T2", assume=args.assume_instruments)
            return await run_backtest_from_db(db, cfg, t1, t2, start, end, s,
                                              assume_instruments=args.assume_instruments)
        finally:
            await db.close()

    run_ = asyncio.run(run())
    zdf, trades, metrics = run_.zdf, run_.trades, run_.metrics
    print(f"{t1}/{t2} {start:%Y-%m-%d %H:%M} -> {end:%Y-%m-%d %H:%M} UTC, tf {s['tf']}, wind {s['wind']}, "
          f"{s['spr_method']}, in {s['thresh_in']} out {s['thresh_out']}, {s['open_method']}/{s['close_method']}")
    with pl.Config(tbl_rows=args.max_rows, tbl_cols=12, tbl_width_chars=160):
        print(named_trades(trades).select("open_time", "close_time", "pos_side", "reason", "qty_1", "qty_2",
                                          "open_z", "close_z", "fees", "total_profit"))
    by_reason = ", ".join(f"{k} {v}" for k, v in (run_.skips or {}).items())
    print(f"  {'skipped_entries':15s} {run_.skipped_entries}  (entries not sized, by reason: {by_reason})")
    if run_.untradeable:
        print(f"WARNING: {t1}/{t2} untradeable: {run_.untradeable}", file=sys.stderr)
    cov = run_.coverage
    if args.median_length is not None and run_.median_length != args.median_length:
        print(f"WARNING: --median-length {args.median_length} not applied: {t1}/{t2} has no quotes in the"
              " window (bars-only ticks), where the tick median is off (1), as in research", file=sys.stderr)
    print(f"  {'coverage':15s} {cov:.4f}  (share of the window's bars traded on quotes; the rest on bar closes)")
    if cov < 1.0:
        print(f"WARNING: quotes cover {cov:.1%} of the window's bars; the others trade on bar-close ticks"
              " (docs/strategy.md, 'Partial quote coverage')", file=sys.stderr)
    for k, v in metrics.items():
        print(f"  {k:15s} {v:.4f}" if isinstance(v, float) else f"  {k:15s} {v}")
    if args.plot:
        plot_backtest(args.plot, zdf, trades, s, f"{t1}/{t2} {s['spr_method']} w={s['wind']} {s['tf']}")
        print(f"plot: {args.plot}")
    return 0

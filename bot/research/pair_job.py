"""One pair's research: sweep the parameter sets, summarise, compute the statistics row.

Pure computation over arrays already loaded (no database, no files), so the same
function runs in a local worker process or on a Dask worker with the same result.

Windows (selection.md section 1): train = [train_start, valid_time), test =
[valid_time, end_time). z-scores are computed once per (spr_method, wind) over
all ticks (a test tick's z uses only bars before it, which may lie in the train
window: that is the past, not a leak) and reused by every parameter set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from bot.analysis import estimators as est
from bot.analysis.backtesting import (
    BLOCK_TICKS,
    TRADE_COLS,
    RawBacktest,
    SizingParams,
    TickArrays,
    TickBlocks,
    entry_sizing_problem,
    price_blocks,
    run_backtest,
    run_backtest_rows,
    tick_blocks,
    trades_frame,
)
from bot.analysis.coverage import quote_coverage
from bot.analysis.open_time_features import open_time_features
from bot.analysis.signals import SignalParams
from bot.analysis.strategy_analysis import analyze_arrays, analyze_strategy
from bot.analysis.zscore import tf_seconds, zscore_multi
from bot.config.model import StrategyConfig
from bot.research.params import ParamSet

STATS_COLUMNS = (
    "coin1", "coin2", "std_1", "std_2", "corr", "dist", "std", "pv_1", "pv_2", "pr_ind", "pr_rat_ind",
    "avg_pr_all", "pr_rat_all", "pr_best", "pr_rat_best", "loss_best", "max_drdn_best", "dur_best",
    "trades_best", "coverage", "zero_cross", "half_life_h", "hurst", "pos_share_all",
    "best_param_id", "pr_test", "pr_rat_test", "loss_test", "max_drdn_test", "dur_test",
    "trades_test", "skipped_test", "liquidations_test", "fees_test",
)
# Spread-shape statistics of the train window (docs/selection.md "Statistics"): the
# Engle-Granger spread ln p1 - a - b ln p2 (OLS on the train bars) gives zero_cross
# (mean crossings, est.zero_crossings), half_life_h (est.half_life, hours) and hurst
# (est.hurst_exponent); pos_share_all is the share of swept parameter sets with pr > 0
# (robustness rather than the best set); fees_test the test window's fees, % of balance.
NO_REVERSION_HALF_LIFE_WINDOWS = 10.0  # half_life_h when the AR(1) fit has phi >= 1: 10 train windows
MIN_TRAIN_BARS_EXTRA = 24  # bars beyond the largest window needed before valid_time


@dataclass
class PairInput:
    token_1: str
    token_2: str
    tick_ts: np.ndarray
    bid_1: np.ndarray
    ask_1: np.ndarray
    bid_2: np.ndarray
    ask_2: np.ndarray
    bar_ts: np.ndarray
    close_1: np.ndarray
    close_2: np.ndarray
    train_start: float
    valid_time: float
    end_time: float
    qty_step_1: float
    qty_step_2: float
    min_qty_1: float | None = None
    min_qty_2: float | None = None
    min_notional_1: float = 0.0
    min_notional_2: float = 0.0
    bars_only: bool = False
    refs: dict[str, np.ndarray] = field(default_factory=dict)
    is_quote: np.ndarray | None = None  # per tick: a quote tick (True) or a bar-close tick; None: all one kind

    def quote_mask(self) -> np.ndarray:
        """Per tick: True for a quote tick, False for a bar-close tick."""
        if self.is_quote is not None:
            return self.is_quote
        return np.full(self.tick_ts.shape, not self.bars_only)


@dataclass
class PairOutcome:
    token_1: str
    token_2: str
    status: str  # ok | skipped | failed | untradeable (no entry can be sized: `reason` says why)
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)  # train-window skipped entries per reason, all sets
    summaries: list[dict[str, Any]] = field(default_factory=list)
    trade_records: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    bars_only: bool = False  # the input had no quote tick (bars-only mode)
    partial_quotes: bool = False  # quote ticks and bar-close ticks mixed
    ticks: int = 0  # ticks of the loaded window


def slice_ticks(ticks: TickArrays, lo: int, hi: int) -> TickArrays:
    return TickArrays(*(getattr(ticks, f)[lo:hi] for f in TickArrays.__dataclass_fields__))


def signal_params(p: ParamSet, s: StrategyConfig) -> SignalParams:
    return SignalParams(-p.in_, -p.out_, p.in_, p.out_, s.long_possible, s.short_possible, p.open_method,
                        p.close_method, p.dist_in, p.dist_out, s.sl_std, s.sl_dist, s.sl_seconds, s.sl_method,
                        s.latency_s)


def window_sizing(inp: PairInput, s: StrategyConfig, start_ts: float, wind: int) -> SizingParams:
    """Sizing of a backtest of the window starting at `start_ts`: the instrument's steps, min
    qty and min notional, and for vol_neutral the volatilities known at the window's start
    (est.sizing_vol over the `wind` bars before it, `wind` being the parameter set's z-score
    window, so `bot backtest --wind W` and a sweep's set with wind W size alike;
    usdt_neutral when unknown); the strategy's maintenance_margin_rate (liquidation)."""
    tf_s = tf_seconds(s.tf)
    std_1 = est.sizing_vol(inp.bar_ts, inp.close_1, start_ts, wind, tf_s)
    std_2 = est.sizing_vol(inp.bar_ts, inp.close_2, start_ts, wind, tf_s)
    ok = math.isfinite(std_1) and math.isfinite(std_2) and std_1 > 0 and std_2 > 0
    return SizingParams(s.balance, s.order_size, s.min_order_size, s.leverage,
                        s.qty_method if (ok or s.qty_method != "vol_neutral") else "usdt_neutral",
                        std_1 if ok else 1.0, std_2 if ok else 1.0, s.fee_rate, inp.qty_step_1,
                        inp.qty_step_2, inp.min_qty_1, inp.min_qty_2, inp.min_notional_1, inp.min_notional_2,
                        s.maintenance_margin_rate)


def z_ticks(inp: PairInput, keys: set[tuple[str, int]], tf: str, median_length: int) -> dict[tuple[str, int], TickArrays]:
    """Tick arrays with the z-score of every (spr_method, wind) in `keys`, over all ticks (once per pair)."""
    mid_1 = (inp.bid_1 + inp.ask_1) / 2
    mid_2 = (inp.bid_2 + inp.ask_2) / 2
    zs: dict[tuple[str, int], TickArrays] = {}
    for method in sorted({k[0] for k in keys}):
        winds = sorted({w for m, w in keys if m == method})
        res = zscore_multi(inp.tick_ts, mid_1, mid_2, inp.bar_ts, inp.close_1, inp.close_2, tf, winds, method,
                           median_length, z_only=True)  # only z and beta are read here
        for w, cols in res.items():
            zs[(method, w)] = TickArrays(inp.tick_ts, cols.z_score, inp.bid_1, inp.ask_1, inp.bid_2,
                                         inp.ask_2, cols.beta)
    return zs


def tick_median_length(inp: PairInput, strategy: StrategyConfig) -> int:
    """The tick median of the z-score: off (1) on bars-only data, the strategy's otherwise."""
    return 1 if inp.bars_only else strategy.median_length


def window_slice(inp: PairInput, start_ts: float, end_ts: float) -> tuple[int, int]:
    return (int(np.searchsorted(inp.tick_ts, start_ts, side="left")),
            int(np.searchsorted(inp.tick_ts, end_ts, side="left")))


def _summary(p: ParamSet, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"param_id": p.param_id, "params": p.as_dict(), "trades": int(metrics["trades"]),
            "pr": metrics["pr"], "pr_rat": metrics["pr_rat"], "max_drdn": metrics["max_drdn"],
            "loss": metrics["loss"], "avg_dur": metrics["avg_dur"], "metrics": metrics}


def _best(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best pr_rat; ties: more trades, then lower max_drdn (selection.md section 2)."""
    ranked = [r for r in summaries if r["trades"] > 0]
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r["pr_rat"], r["trades"], -r["max_drdn"]))


def run_pair(
    inp: PairInput,
    param_sets: list[ParamSet],
    default: ParamSet,
    strategy: StrategyConfig,
    with_features: bool = True,
    median_length: int | None = None,
    reference: bool = False,
) -> PairOutcome:
    """Sweep `param_sets` on the train window, then the best set on the test window.

    `reference`: every set through the tick loop without the block skip, a trades frame
    and analyze_strategy (the path before the block skip and the frame-free metrics);
    the tests compare both paths, which must agree to the bit."""
    out = PairOutcome(inp.token_1, inp.token_2, "ok")
    t_start = time.perf_counter()
    tf = default.tf
    tf_s = tf_seconds(tf)
    winds = sorted({p.wind for p in param_sets} | {default.wind})
    n_train_bars = int(np.searchsorted(inp.bar_ts, inp.valid_time, side="left"))
    n_before = int(np.searchsorted(inp.bar_ts, inp.train_start, side="left"))
    if n_train_bars < max(winds) + MIN_TRAIN_BARS_EXTRA:
        out.status, out.reason = "skipped", f"too little history: {n_train_bars} bars before valid_time"
        return out
    lo = int(np.searchsorted(inp.tick_ts, inp.train_start, side="left"))
    mid = int(np.searchsorted(inp.tick_ts, inp.valid_time, side="left"))
    hi = int(np.searchsorted(inp.tick_ts, inp.end_time, side="left"))
    if mid - lo < 10:
        out.status, out.reason = "skipped", f"too few ticks in the train window ({mid - lo})"
        return out
    m = median_length if median_length is not None else tick_median_length(inp, strategy)
    mid_1 = (inp.bid_1 + inp.ask_1) / 2
    mid_2 = (inp.bid_2 + inp.ask_2) / 2
    zs = z_ticks(inp, {p.z_key for p in param_sets} | {default.z_key}, tf, m)
    out.timings["zscore_s"] = time.perf_counter() - t_start

    # pair statistics on the train bars (no look-ahead: bars before valid_time)
    tb = slice(n_before, n_train_bars)
    l1, l2 = np.log(inp.close_1[tb]), np.log(inp.close_2[tb])
    std_1, std_2 = est.daily_return_std(inp.bar_ts[tb], l1), est.daily_return_std(inp.bar_ts[tb], l2)
    dist, dist_std = est.distance(l1, l2)
    stats: dict[str, Any] = dict.fromkeys(STATS_COLUMNS)
    stats.update(coin1=inp.token_1, coin2=inp.token_2, std_1=std_1, std_2=std_2,
                 coverage=quote_coverage(inp.tick_ts, inp.quote_mask(), inp.train_start, inp.valid_time, tf_s),
                 corr=est.corr(np.diff(l1), np.diff(l2)), dist=dist, std=dist_std,
                 pv_1=est.engle_granger(l1, l2).pvalue, pv_2=est.engle_granger(l2, l1).pvalue)
    spread = est.regression_spread(l1, l2)
    hl = est.half_life(spread, tf_s / 3600.0)
    if hl == math.inf:  # no mean reversion: a finite "longer than anything" so stored and live rows agree
        hl = NO_REVERSION_HALF_LIFE_WINDOWS * (inp.valid_time - inp.train_start) / 3600.0
    stats.update(zero_cross=float(est.zero_crossings(spread)), half_life_h=hl, hurst=est.hurst_exponent(spread))
    sizings = {w: window_sizing(inp, strategy, inp.train_start, w) for w in winds}

    t0 = time.perf_counter()
    # the train slice of every z series once, with its block extremes (the kernel's block
    # skip: same trades to the bit, tests/analysis/test_tick_blocks.py)
    train: dict[tuple[str, int], tuple[TickArrays, TickBlocks]] = {}
    prices = None
    for key, full in zs.items():
        ticks = slice_ticks(full, lo, mid)
        if prices is None:
            prices = price_blocks(ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2, BLOCK_TICKS)
        train[key] = (ticks, tick_blocks(ticks, BLOCK_TICKS, prices))
    feature_cache: dict[Any, Any] = {}
    t_feat = 0.0
    for p in param_sets:
        ticks, blocks = train[p.z_key]
        if reference:
            bt = run_backtest(ticks, signal_params(p, strategy), sizings[p.wind], strategy.force_close,
                              token_1=inp.token_1, token_2=inp.token_2)
            metrics = analyze_strategy(bt.trades, inp.train_start, inp.valid_time, strategy.balance)
            res = RawBacktest(bt.trades.select(TRADE_COLS).cast(pl.Float64).to_numpy() if bt.trades.height
                              else np.empty((0, len(TRADE_COLS))), bt.skips, bt.liquidations, bt.final_balance)
        else:
            res = run_backtest_rows(ticks, signal_params(p, strategy), sizings[p.wind], strategy.force_close,
                                    token_1=inp.token_1, token_2=inp.token_2, blocks=blocks)
            metrics = _metrics(res, inp.train_start, inp.valid_time, strategy.balance)
        summary = _summary(p, metrics)
        summary["skipped_entries"] = res.skipped_entries
        summary["skips"] = res.skips
        for k, v in res.skips.items():
            out.skips[k] = out.skips.get(k, 0) + v
        out.summaries.append(summary)
        if with_features and res.rows.shape[0]:
            tf0 = time.perf_counter()
            for tr in trades_frame(res.rows).iter_rows(named=True):
                pos = {"pos_side": tr["pos_side"], "qty_1": tr["qty_1"], "qty_2": tr["qty_2"]}
                feats = open_time_features(
                    tr["open_ts"], inp.bar_ts, inp.close_1, inp.close_2, tf_s, p.wind,
                    None if inp.bars_only else inp.tick_ts, None if inp.bars_only else mid_1,
                    None if inp.bars_only else mid_2, inp.refs, pos, cache=feature_cache,
                )
                trade = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in tr.items()}
                out.trade_records.append({"token_1": inp.token_1, "token_2": inp.token_2, **p.as_dict(),
                                          **trade, **feats})
            t_feat += time.perf_counter() - tf0
    out.timings["backtests_s"] = time.perf_counter() - t0 - t_feat
    out.timings["features_s"] = t_feat

    ticks, blocks = train[default.z_key]
    if reference:
        ind_full = run_backtest(ticks, signal_params(default, strategy), sizings[default.wind], strategy.force_close)
        ind_m = analyze_strategy(ind_full.trades, inp.train_start, inp.valid_time, strategy.balance)
    else:
        ind = run_backtest_rows(ticks, signal_params(default, strategy), sizings[default.wind],
                                strategy.force_close, blocks=blocks)
        ind_m = _metrics(ind, inp.train_start, inp.valid_time, strategy.balance)
    stats.update(pr_ind=ind_m["pr"], pr_rat_ind=ind_m["pr_rat"])
    if out.summaries:
        stats["avg_pr_all"] = float(np.mean([r["pr"] for r in out.summaries]))
        stats["pr_rat_all"] = float(np.mean([r["pr_rat"] for r in out.summaries]))
        stats["pos_share_all"] = float(np.mean([r["pr"] > 0 for r in out.summaries]))
    best = _best(out.summaries)
    if best is not None:
        stats.update(pr_best=best["pr"], pr_rat_best=best["pr_rat"], loss_best=best["loss"],
                     max_drdn_best=best["max_drdn"], dur_best=best["avg_dur"], trades_best=best["trades"],
                     best_param_id=best["param_id"])
        if hi > mid:
            bp = next(p for p in param_sets if p.param_id == best["param_id"])
            test = run_backtest(slice_ticks(zs[bp.z_key], mid, hi), signal_params(bp, strategy),
                                window_sizing(inp, strategy, inp.valid_time, bp.wind), True)
            tm = analyze_strategy(test.trades, inp.valid_time, inp.end_time, strategy.balance)
            stats.update(pr_test=tm["pr"], pr_rat_test=tm["pr_rat"], loss_test=tm["loss"],
                         max_drdn_test=tm["max_drdn"], dur_test=tm["avg_dur"], trades_test=tm["trades"],
                         skipped_test=test.skipped_entries,
                         liquidations_test=test.liquidations,
                         fees_test=_fees_pct(test.trades, strategy.balance))
    out.stats = stats
    why = untradeable_reason(inp, sizings[default.wind], lo, mid, out.skips,
                             any(r["trades"] for r in out.summaries))
    if why:
        out.status, out.reason = "untradeable", why
    out.timings["total_s"] = time.perf_counter() - t_start
    return out


def _metrics(res: Any, start: float, end: float, balance: float) -> dict[str, Any]:
    """analyze_strategy of a RawBacktest, from its records (no frame)."""
    if not res.rows.shape[0]:
        return analyze_arrays(None, None, None, None, start, end, balance)
    return analyze_arrays(res.column("total_profit"), res.column("open_ts"), res.column("close_ts"),
                          res.column("reason"), start, end, balance)


def _fees_pct(trades: pl.DataFrame, balance: float) -> float:
    """Fees paid by `trades` (open and close, both legs), % of the initial balance."""
    if not trades.height or balance <= 0:
        return 0.0
    return float(trades["fees"].sum()) / balance * 100.0


SKIP_TEXT = {"min_order_size": "margin per leg below min_order_size",
             "min_qty": "qty below the instrument's minimum",
             "min_notional": "notional below the instrument's minimum"}


def untradeable_reason(inp: PairInput, sizing: SizingParams, lo: int, hi: int, skips: dict[str, int],
                       traded: bool, where: str = "the train window") -> str:
    """Why no entry of the pair can be sized at the configured notional over ticks [lo, hi),
    or "" when one can. Two proofs: the entry tried at the window's lowest prices (the
    largest quantities: backtesting.entry_sizing_problem) fails, or no parameter set traded
    (`traded` False) while sizing refused entries (`skips`, per reason). The reason names
    the sizing rule and the numbers: margin m = min(order_size, balance / 2), notional N = m * leverage."""
    low_1 = float(np.nanmin(inp.bid_1[lo:hi])) if hi > lo else math.nan
    low_2 = float(np.nanmin(inp.bid_2[lo:hi])) if hi > lo else math.nan
    problem = entry_sizing_problem(sizing, low_1, low_2)
    if problem is None and not traded and any(v > 0 for v in skips.values()):
        problem = max(skips, key=lambda k: skips[k])
    if problem is None:
        return ""
    m = min(sizing.order_size, sizing.balance / 2)
    n = m * sizing.leverage
    if problem == "min_order_size":
        detail = f"margin {m:g} USDT < min_order_size {sizing.min_order_size:g}"
    else:
        legs = []
        for tok, low, step, mq, mn in ((inp.token_1, low_1, inp.qty_step_1, inp.min_qty_1, inp.min_notional_1),
                                       (inp.token_2, low_2, inp.qty_step_2, inp.min_qty_2, inp.min_notional_2)):
            least = max(mq or step, step) * low
            legs.append(f"{tok} min qty {max(mq or step, step):g} x lowest price {low:.6g} = {least:.6g} USDT"
                        + (f", min notional {mn:g}" if mn else ""))
        detail = f"{n:g} USDT per leg; " + "; ".join(legs)
    skipped = sum(skips.values())
    return f"no entry can be sized: {SKIP_TEXT[problem]} ({detail}; {skipped} entries skipped in {where})"


def stats_frame(outcomes: list[PairOutcome]) -> pl.DataFrame:
    """The notebook's all_pairs layout: one row per pair that ran (STATS_COLUMNS)."""
    rows = [o.stats for o in outcomes if o.status == "ok"]
    schema = {c: (pl.Utf8 if c in ("coin1", "coin2") else pl.Float64) for c in STATS_COLUMNS}
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([{c: r.get(c) for c in STATS_COLUMNS} for r in rows], schema=schema)

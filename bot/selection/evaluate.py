"""`bot evaluate`: does the selection beat chance? The walk-forward protocol of
selection.md section 5 as a product feature, pure (a dataset frame in, tables out).

Input: the rows of a dataset build (`bot.research.dataset`): one row per (window,
pair) with the train window's statistics and the realised test profit after fees
`pr_test` (% of balance) of the parameter set the job would trade (the train
window's best set), `trades_test`, `fees_test`.

Methods, each picking at most K = selection.max_pairs pairs per window, greedy, no
token used twice:
- bot: the selection as the re-selection job makes it at that window. A model
  trained on the rows whose test had ended by the window's valid_time (never the
  window itself, whatever the step) is used when the gate of `gate_decision` passes
  on those earlier validation windows (its paired difference over random >
  model.min_skill_se SE AND not worse than the fallback rule); otherwise the model
  promoted earlier, if any (the job keeps its previous promoted model), else the
  fallback rule. Thresholds, sort key, cap: the job's
  (`bot.analysis.pair_selection.decide`).
- model: the job with the model always (no gate); fallback: the job with the
  fallback rule always (`model.fallback_sort`, no pred threshold).
- random: `random_draws` seeded greedy draws of K, averaged per window.
- lowest_pvalue: lowest max(pv_1, pv_2) (Engle-Granger, both directions).
- coint_filter: max(pv_1, pv_2) < 0.05, Hurst < 0.5, half-life in [1 h, 7 d],
  >= 12 mean crossings of the Engle-Granger spread (Sarmento & Horta 2020), ranked
  by the p-value; may pick fewer than K.
- train_pr_rat: highest in-sample pr_rat_all (the notebook's sort, no thresholds).
- hindsight: highest realised pr_test (the ceiling; not a method anyone can run).

Per (window, method): picks, profit per pick = mean pr_test of the picks (a pick
with no test figure counts 0), their sum, profitable picks, trades, fees. A window
where a method picks nothing has no per-pick profit: it is left out of that
method's means and paired differences (and counted), so a rule cannot look skilled
by not trading; its total profit is 0 there.

Per method, over a set of windows: mean per-pick profit and its standard error
(std over windows / sqrt(n)), the paired difference with random (per window,
method - random) with its standard error, total profit after fees (sum over every
pick, % of one pair's balance), share of profitable picks, trades and fees per pick.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from bot.analysis.pair_selection import decide
from bot.config.model import BotConfig
from bot.research.dataset import FEATURES, JUDGE

METHODS = ("bot", "model", "fallback", "random", "lowest_pvalue", "coint_filter", "train_pr_rat", "hindsight")
COINT_MAX_P = 0.05
COINT_MAX_HURST = 0.5
COINT_HALF_LIFE_H = (1.0, 168.0)
COINT_MIN_CROSSINGS = 12
MIN_GATE_WINDOWS = 3  # validation windows with picks the gate needs before it can promote
GATE_VERSION = 2  # saved in a model's metadata: promotions by an older (weaker) gate are not used


def greedy(c1: Sequence[str], c2: Sequence[str], score: np.ndarray, k: int, higher_is_better: bool = True,
           seed: int | Sequence[int] = 0, eligible: np.ndarray | None = None) -> list[int]:
    """Row indices picked greedily by score (non-finite and not `eligible` never), no token
    twice, at most k; equal scores in an order seeded by `seed` (never by row order)."""
    s = np.asarray(score, dtype=np.float64)
    tiebreak = np.random.default_rng(seed).permutation(len(s))
    order = np.lexsort((tiebreak, -s if higher_is_better else s))
    used: set[str] = set()
    picks: list[int] = []
    for i in order:
        if not math.isfinite(s[i]) or (eligible is not None and not eligible[i]):
            continue
        if c1[i] in used or c2[i] in used:
            continue
        picks.append(int(i))
        used.update((c1[i], c2[i]))
        if len(picks) == k:
            break
    return picks


def job_picks(val: pl.DataFrame, cfg: BotConfig, pred: np.ndarray | None) -> list[int]:
    """Row indices the re-selection job would select in this window (no open positions):
    with a model (`pred`) the configured thresholds incl. pred and `selection.sort_key`;
    without one the thresholds minus pred and `model.fallback_sort`."""
    thresholds = cfg.selection.thresholds.model_dump()
    sort_key = cfg.selection.sort_key
    rows = val.to_dicts()
    for i, r in enumerate(rows):
        r["_i"] = i
        if pred is not None:
            r["pred"] = float(pred[i])
    if pred is None:
        thresholds.pop("pred", None)
        sort_key = cfg.model.fallback_sort
    index = {(str(r["coin1"]), str(r["coin2"])): r["_i"] for r in rows}
    return [index[(d.token_1, d.token_2)] for d in decide(rows, [], thresholds, sort_key, cfg.selection.max_pairs)
            if d.decision == "selected"]


def _col(frame: pl.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.full(frame.height, np.nan)
    return frame.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy()


def pvalue(frame: pl.DataFrame) -> np.ndarray:
    """max(pv_1, pv_2): the pair is cointegrated in both directions only when this is small."""
    return np.fmax(_col(frame, "pv_1"), _col(frame, "pv_2"))


def coint_filter(frame: pl.DataFrame) -> np.ndarray:
    """The cointegration filter's eligibility per row (module docstring)."""
    p, h, hl, zc = pvalue(frame), _col(frame, "hurst"), _col(frame, "half_life_h"), _col(frame, "zero_cross")
    with np.errstate(invalid="ignore"):
        return ((p < COINT_MAX_P) & (h < COINT_MAX_HURST) & (hl >= COINT_HALF_LIFE_H[0])
                & (hl <= COINT_HALF_LIFE_H[1]) & (zc >= COINT_MIN_CROSSINGS))


@dataclass
class WindowPicks:
    picks: int
    per_pick: float | None
    total: float
    profitable: int
    trades: float | None  # None: the dataset does not hold the figure (an older build)
    fees: float | None
    names: list[str]


def _known_sum(val: pl.DataFrame, name: str, picks: list[int]) -> float | None:
    """The picks' sum of a test figure; None when the dataset does not hold it (an older build)."""
    values = _col(val, name)
    return None if not np.isfinite(values).any() else float(np.nansum(values[picks]))


def _measure(val: pl.DataFrame, picks: list[int]) -> WindowPicks:
    pr = np.nan_to_num(_col(val, JUDGE)[picks], nan=0.0)
    names = [f"{val['coin1'][i]}/{val['coin2'][i]}" for i in picks]
    return WindowPicks(len(picks), float(pr.mean()) if picks else None, float(pr.sum()), int((pr > 0).sum()),
                       _known_sum(val, "trades_test", picks), _known_sum(val, "fees_test", picks), names)


def random_picks(val: pl.DataFrame, k: int, draws: int, seed: int) -> WindowPicks:
    """`draws` seeded greedy random picks of K, their figures averaged (picks, per pick, totals)."""
    rng = random.Random(seed)
    c1, c2 = val["coin1"].to_list(), val["coin2"].to_list()
    got = []
    for _ in range(draws):
        score = np.array([rng.random() for _ in range(val.height)])
        got.append(_measure(val, greedy(c1, c2, score, k)))
    n = float(np.mean([g.picks for g in got]))
    def mean(xs: list[float | None]) -> float | None:
        known = [x for x in xs if x is not None]
        return float(np.mean(known)) if known else None

    return WindowPicks(int(round(n)), mean([g.per_pick for g in got]), float(np.mean([g.total for g in got])),
                       int(round(np.mean([g.profitable for g in got]))), mean([g.trades for g in got]),
                       mean([g.fees for g in got]), [])


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    diff: float
    se: float
    vs_fallback: float
    windows: int
    skill: bool = False  # beats random: >= MIN_GATE_WINDOWS windows with picks, diff > 0 and > min_skill_se SE


def gate_decision(model: Sequence[float | None], rand: Sequence[float | None], fallback: Sequence[float | None],
                  min_skill_se: float, what: str = "the model") -> GateDecision:
    """The skill gate (selection.md section 5, issue 15): per-pick profits per validation
    window of the job with the model, of random picks and of the job with the fallback
    rule. Promoted only when, over the windows where the model picked something, the
    mean paired difference over random is > 0 and > min_skill_se standard errors,
    there are at least MIN_GATE_WINDOWS such windows, and the mean paired difference
    with the fallback (windows where both picked) is >= 0 without being exactly 0 in
    every window (a model whose picks are the fallback's adds nothing)."""
    d = np.array([m - r for m, r in zip(model, rand, strict=True) if m is not None and r is not None])
    f = np.array([m - b for m, b in zip(model, fallback, strict=True) if m is not None and b is not None])
    n = d.size
    diff = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    vs_fb = float(f.mean()) if f.size else math.nan
    if n < MIN_GATE_WINDOWS:
        return GateDecision(False, f"{what} picked pairs in {n} validation window(s); the gate needs "
                                   f"{MIN_GATE_WINDOWS}: not promoted", diff, se, vs_fb, n)
    beats = diff > 0 and diff > min_skill_se * se
    not_worse = (not f.size) or vs_fb >= 0
    adds = (not f.size) or bool(np.any(f != 0))
    ok = beats and not_worse and adds
    why = [] if beats else [f"not {min_skill_se:g} SE above random"]
    if not not_worse:
        why.append("worse than the fallback rule")
    elif not adds:
        why.append("its picks are the fallback rule's in every window: it adds nothing")
    fb_part = "" if what == "the fallback rule" else f", {vs_fb:+.3f} against the fallback rule"
    return GateDecision(ok, f"{what} against random picks: {diff:+.3f} %/pick/window, SE {se:.3f} ({n} windows)"
                            f"{fb_part}; gate {min_skill_se:g} SE and not worse than the fallback: "
                            f"{'promoted' if ok else 'not promoted'}" + (f" ({'; '.join(why)})" if why else ""),
                        diff, se, vs_fb, n, beats)


def skill_line(g: GateDecision | None, min_skill_se: float, rule: str) -> str:
    """One line on the fallback rule's own skill against random (the run record, bot status)."""
    if g is None or g.windows == 0:
        return f"the fallback rule ({rule}) against random: not measured (no window)"
    verdict = f"skill shown ({min_skill_se:g} SE)" if g.skill else "NO skill shown"
    return (f"the fallback rule ({rule}) against random: {g.diff:+.3f} %/pick/window, SE {g.se:.3f} over "
            f"{g.windows} windows: {verdict}")


@dataclass
class Evaluation:
    rows: pl.DataFrame  # every (window, pair) of the input with its pick flags per method
    per_window: pl.DataFrame  # window_id, split, method, picks, per_pick, total, profitable, trades, fees, rule
    summary: pl.DataFrame  # split, method, windows, ... (summarise)
    gates: list[dict[str, Any]]  # per window: the rule the bot used and why
    fallback_skill: GateDecision | None


def _fit(train: pl.DataFrame, cfg: BotConfig, thread_count: int) -> Any:
    from bot.research.model import fit_catboost

    return fit_catboost(train, cfg, thread_count)


def _predict(model: Any, val: pl.DataFrame) -> np.ndarray:
    x = val.select([pl.col(f).cast(pl.Float64) for f in FEATURES]).to_numpy()
    return np.asarray(model.predict(x), dtype=np.float64)


def check_windows(frame: pl.DataFrame) -> pl.DataFrame:
    """The dataset sorted, or a ValueError: one (train_start, valid_time, end_time) per
    window, windows in time order, no (window, pair) twice, and some test profit."""
    need = [c for c in ("window_id", "train_start", "valid_time", "end_time", "coin1", "coin2", JUDGE)
            if c not in frame.columns]
    if need:
        raise ValueError(f"the dataset lacks the columns {need}")
    spans = frame.group_by("window_id").agg(pl.col("train_start").n_unique().alias("a"),
                                            pl.col("valid_time").n_unique().alias("b"),
                                            pl.col("end_time").n_unique().alias("c"),
                                            pl.col("valid_time").first()).sort("window_id")
    bad = spans.filter((pl.col("a") > 1) | (pl.col("b") > 1) | (pl.col("c") > 1))["window_id"].to_list()
    if bad:
        raise ValueError(f"windows {bad[:5]} hold rows of different train/test periods")
    if not spans["valid_time"].is_sorted():
        raise ValueError("window ids are not in time order (valid_time must grow with window_id)")
    dup = frame.group_by("window_id", "coin1", "coin2").len().filter(pl.col("len") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise ValueError(f"{dup.height} (window, pair) rows appear more than once, e.g. window {r['window_id']} "
                         f"{r['coin1']}/{r['coin2']}")
    if frame[JUDGE].drop_nulls().drop_nans().len() == 0:
        raise ValueError(f"no row has a test profit ({JUDGE}): nothing to judge")
    return frame.sort(["window_id", "coin1", "coin2"])


def evaluate(frame: pl.DataFrame, cfg: BotConfig, *, min_train_windows: int = 4, random_draws: int = 200,
             holdout_after: Any = None, thread_count: int = -1,
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Every method on every window of `frame` (module docstring). Windows whose test
    ends after `holdout_after` (a datetime) are the holdout, the others tuning; without
    `holdout_after` every window is in one split, "all".

    Time: the model of window k trains on the rows whose test ended by k's valid_time
    (end_time <= valid_time, whatever the step), and the gate at window k judges only
    those validation windows; a model the gate promoted stays in use (as the job keeps
    its previous promoted model) until a newer one passes."""
    from catboost import CatBoostError

    from bot.research.model import ModelError

    data = check_windows(frame)
    wins = sorted(data["window_id"].unique().to_list())
    k = cfg.selection.max_pairs
    seed = cfg.model.random_seed
    target = cfg.model.target
    per: list[dict[str, Any]] = []
    flags: list[pl.DataFrame] = []
    gates: list[dict[str, Any]] = []
    # per validation window: (its end_time, model-as-job, random, fallback-as-job per-pick profits)
    hist: list[tuple[Any, float | None, float | None, float | None]] = []
    every: dict[str, list[float | None]] = {"random": [], "fallback": []}  # the fallback's skill: all windows
    kept: tuple[Any, int] | None = None  # the promoted model in use and the window it was promoted at
    for n, w in enumerate(wins):
        val = data.filter(pl.col("window_id") == w)
        end, valid = val["end_time"][0], val["valid_time"][0]
        split = "all" if holdout_after is None else ("holdout" if end > holdout_after else "tuning")
        c1, c2 = val["coin1"].to_list(), val["coin2"].to_list()
        ws = (seed, int(w))
        picks: dict[str, list[int]] = {}
        train = data.filter((pl.col("end_time") <= valid) & pl.col(target).is_not_null() & pl.col(target).is_finite())
        known = train["window_id"].n_unique()
        pred = None
        model = None
        if known < min_train_windows:
            why_none = (f"no model: {known} earlier window(s) with a known test (--min-train-windows "
                        f"{min_train_windows})")
        elif train.height < 10:
            why_none = f"no model: {train.height} training rows with a {target} (10 needed)"
        else:
            try:
                model = _fit(train, cfg, thread_count)
                pred = _predict(model, val)
            except (ModelError, CatBoostError) as err:  # e.g. every target equal: nothing to learn
                why_none = f"no model: {str(err).strip().splitlines()[-1][:160]}"
        picks["fallback"] = job_picks(val, cfg, None)
        rand = random_picks(val, k, random_draws, 1000 + int(w))
        fb = _measure(val, picks["fallback"])
        rule = "fallback"
        if pred is not None:
            picks["model"] = job_picks(val, cfg, pred)
            seen = [h for h in hist if h[0] <= valid]
            gate = gate_decision([h[1] for h in seen], [h[2] for h in seen], [h[3] for h in seen],
                                 cfg.model.min_skill_se)
            reason = gate.reason
            if gate.promoted:
                kept, rule = (model, int(w)), "model"
        else:
            reason = why_none
        if rule == "model":
            picks["bot"] = picks["model"]
        elif kept is not None:  # the job keeps its previous promoted model
            picks["bot"] = job_picks(val, cfg, _predict(kept[0], val))
            rule, reason = "kept model", f"{reason}; keeps the model promoted at window {kept[1]}"
        else:
            picks["bot"] = picks["fallback"]
        gates.append({"window_id": w, "rule": rule, "reason": reason})
        picks["lowest_pvalue"] = greedy(c1, c2, pvalue(val), k, higher_is_better=False, seed=ws)
        picks["coint_filter"] = greedy(c1, c2, pvalue(val), k, higher_is_better=False, seed=ws,
                                       eligible=coint_filter(val))
        picks["train_pr_rat"] = greedy(c1, c2, _col(val, "pr_rat_all"), k, seed=ws)
        picks["hindsight"] = greedy(c1, c2, _col(val, JUDGE), k, seed=ws)
        if pred is not None:
            hist.append((end, _measure(val, picks["model"]).per_pick, rand.per_pick, fb.per_pick))
        every["random"].append(rand.per_pick)
        every["fallback"].append(fb.per_pick)
        for method in METHODS:
            if method not in picks and method != "random":
                continue
            wp = rand if method == "random" else _measure(val, picks[method])
            per.append({"window_id": int(w), "split": split, "method": method, "picks": wp.picks,
                        "per_pick": wp.per_pick, "total": wp.total, "profitable": wp.profitable,
                        "trades": wp.trades, "fees": wp.fees, "names": wp.names,
                        "rule": gates[-1]["rule"] if method == "bot" else None})
        cols = {f"pick_{m}": np.isin(np.arange(val.height), picks.get(m, [])) for m in METHODS if m != "random"}
        flags.append(val.with_columns(pl.lit(split).alias("split"),
                                      pl.Series("pred", pred if pred is not None else np.full(val.height, np.nan)),
                                      *[pl.Series(c, v) for c, v in cols.items()]))
        if progress is not None:
            progress(n + 1, len(wins))
    schema: dict[str, Any] = {"window_id": pl.Int64, "split": pl.Utf8, "method": pl.Utf8, "picks": pl.Int64,
                              "per_pick": pl.Float64, "total": pl.Float64, "profitable": pl.Int64,
                              "trades": pl.Float64, "fees": pl.Float64, "names": pl.List(pl.Utf8), "rule": pl.Utf8}
    per_window = pl.DataFrame(per, schema=schema)
    fb_gate = gate_decision(every["fallback"], every["random"], every["fallback"], cfg.model.min_skill_se,
                            "the fallback rule") if wins else None
    return Evaluation(pl.concat(flags, how="diagonal_relaxed") if flags else pl.DataFrame(), per_window,
                      summarise(per_window), gates, fb_gate)


def summarise(per_window: pl.DataFrame) -> pl.DataFrame:
    """Per split (tuning, holdout, all) and method: the figures of the module docstring."""
    out = []
    have = per_window["split"].unique().to_list()
    splits = [s for s in ("tuning", "holdout") if s in have]
    for split in ([*splits, "all"] if splits else ["all"] if have else []):
        part = per_window if split == "all" else per_window.filter(pl.col("split") == split)
        rnd = dict(zip(*part.filter(pl.col("method") == "random").select("window_id", "per_pick")
                       .to_dict(as_series=False).values(), strict=True))
        for method in METHODS:
            rows = part.filter(pl.col("method") == method)
            if not rows.height:
                continue
            pp = [(w, v) for w, v in zip(rows["window_id"], rows["per_pick"], strict=True) if v is not None]
            vals = np.array([v for _, v in pp])
            diffs = np.array([v - rnd[w] for w, v in pp if rnd.get(w) is not None])
            n_picks = int(rows["picks"].sum())
            out.append({
                "split": split, "method": method, "windows": rows.height, "windows_picked": len(pp),
                "picks": n_picks,
                "per_pick": float(vals.mean()) if vals.size else None,
                "se": float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else None,
                "diff_vs_random": float(diffs.mean()) if diffs.size else None,
                "diff_se": float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else None,
                "total": float(rows["total"].sum()),
                "profitable_share": float(rows["profitable"].sum() / n_picks) if n_picks else None,
                "trades_per_pick": float(rows["trades"].sum() / n_picks) if n_picks and rows["trades"].null_count()
                < rows.height else None,
                "fees_per_pick": float(rows["fees"].sum() / n_picks) if n_picks and rows["fees"].null_count()
                < rows.height else None,
            })
    schema = {"split": pl.Utf8, "method": pl.Utf8, "windows": pl.Int64, "windows_picked": pl.Int64,
              "picks": pl.Int64, "per_pick": pl.Float64, "se": pl.Float64, "diff_vs_random": pl.Float64,
              "diff_se": pl.Float64, "total": pl.Float64, "profitable_share": pl.Float64,
              "trades_per_pick": pl.Float64, "fees_per_pick": pl.Float64}
    return pl.DataFrame(out, schema=schema)


def verdict(summary: pl.DataFrame, split: str, min_se: float = 2.0) -> str:
    """One plain sentence: does the bot's selection beat random on `split`, after fees?"""
    rows = summary.filter((pl.col("split") == split) & (pl.col("method") == "bot"))
    if not rows.height:
        return f"{split}: no window"
    r = rows.row(0, named=True)
    d, se, total = r["diff_vs_random"], r["diff_se"], r["total"]
    if d is None or se is None or se == 0:
        return (f"{split}: the bot's selection shows NO skill that can be measured: it picked pairs in "
                f"{r['windows_picked']} window(s)" + ("" if se is None or d is None else
                                                      f", {d:+.2f} %/pick/window against random with no spread"))
    skill = d > min_se * se and d > 0
    paid = total > 0
    head = ("shows skill" if skill else "shows NO skill") + (" and a profit after fees" if paid else
                                                              ", and no profit after fees" if not skill else
                                                              " but no profit after fees")
    return (f"{split}: the bot's selection {head}: {d:+.2f} +/- {se:.2f} %/pick/window against random "
            f"({d / se:+.1f} SE, {min_se:g} needed), total {total:+.1f} % after fees over "
            f"{r['picks']} picks")

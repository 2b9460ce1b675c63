"""`bot evaluate`'s core (bot.selection.evaluate): methods with known answers, a gate that
cannot be fooled, no look-ahead, the holdout apart."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import polars as pl
import pytest

from bot.config import load
from bot.config.loader import example_path
from bot.research.dataset import FEATURES
from bot.selection import evaluate as ev

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def cfg():
    base = load(example_path())
    low = base.selection.thresholds.model_copy(update=dict.fromkeys(("pr_rat_ind", "pr_rat_all", "pr_rat_best",
                                                                      "pred"), -1e9))
    return base.model_copy(update={
        "model": base.model.model_copy(update={"iterations": 40, "depth": 3, "target": "pr_test"}),
        "selection": base.selection.model_copy(update={"max_pairs": 3, "thresholds": low})})


def frame(n_windows: int = 8, n_tokens: int = 8, seed: int = 0, signal: float = 3.0) -> pl.DataFrame:
    """pr_test = signal * (0.5 - pv) + noise: the lowest p-value pairs earn most (known answer)."""
    rng = np.random.default_rng(seed)
    toks = [f"T{k}" for k in range(n_tokens)]
    rows = []
    for w in range(n_windows):
        for a, b in itertools.combinations(toks, 2):
            f = {c: float(rng.normal()) for c in FEATURES}
            pv = float(rng.uniform())
            f.update(pv_1=pv, pv_2=pv * 0.5, hurst=0.3, half_life_h=10.0, zero_cross=40.0)
            rows.append({"window_id": w, "train_start": T0 + dt.timedelta(days=14 * w),
                         "valid_time": T0 + dt.timedelta(days=14 * w + 60),
                         "end_time": T0 + dt.timedelta(days=14 * w + 74), "coin1": a, "coin2": b, **f,
                         "pr_test": signal * (0.5 - pv) + 0.3 * rng.normal(), "pr_rat_test": 0.0,
                         "trades_test": 4.0, "fees_test": 0.8})
    return pl.DataFrame(rows)


def by(e: ev.Evaluation, method: str, split: str = "all") -> dict:
    return e.summary.filter((pl.col("method") == method) & (pl.col("split") == split)).row(0, named=True)


def test_methods_have_their_known_answers(cfg) -> None:
    data = frame()
    e = ev.evaluate(data, cfg, min_train_windows=3, random_draws=100)
    for r in e.per_window.iter_rows(named=True):
        val = data.filter(pl.col("window_id") == r["window_id"])
        if r["method"] == "random":
            assert val["pr_test"].min() < r["per_pick"] < val["pr_test"].max()
            continue
        pr = val.filter((pl.col("coin1") + "/" + pl.col("coin2")).is_in(r["names"]))["pr_test"]
        assert r["picks"] == len(r["names"]) == pr.len() and r["per_pick"] == pytest.approx(pr.mean())
        assert r["total"] == pytest.approx(pr.sum()) and r["trades"] == 4.0 * pr.len()
        assert r["fees"] == pytest.approx(0.8 * pr.len()) and r["profitable"] == int((pr > 0).sum())
        toks = [t for n in r["names"] for t in n.split("/")]
        assert len(toks) == len(set(toks))  # no token twice
    for r in e.per_window.filter(pl.col("method") == "hindsight").iter_rows(named=True):  # its first pick: the best
        val = data.filter(pl.col("window_id") == r["window_id"]).sort("pr_test", descending=True)
        assert r["names"][0] == f"{val['coin1'][0]}/{val['coin2'][0]}"
    assert by(e, "hindsight")["per_pick"] > by(e, "random")["per_pick"] + 1.0
    # the lowest p-value earns most here: the p-value rules beat random by many standard errors
    for m in ("lowest_pvalue", "coint_filter"):
        r = by(e, m)
        assert r["diff_vs_random"] > 4 * r["diff_se"] > 0, r
    assert by(e, "random")["diff_vs_random"] == 0.0
    flags = e.rows.filter(pl.col("pick_lowest_pvalue"))
    assert flags.height == e.per_window.filter(pl.col("method") == "lowest_pvalue")["picks"].sum()


def test_every_method_ties_when_every_pair_earns_the_same(cfg) -> None:
    data = frame(n_windows=5).with_columns(pl.lit(1.25).alias("pr_test"))
    e = ev.evaluate(data, cfg, min_train_windows=2, random_draws=20)
    got = e.per_window["per_pick"].drop_nulls().to_list()
    assert len(got) >= e.per_window.height - 5 and got == pytest.approx([1.25] * len(got))
    assert all(abs(v) < 1e-12 for v in e.summary["diff_vs_random"].drop_nulls().to_list())


def test_the_cointegration_filter_drops_what_fails_any_test(cfg) -> None:
    data = frame(n_windows=1)
    bad = {"hurst": 0.7, "half_life_h": 0.5, "zero_cross": 3.0}
    for col, value in bad.items():
        spoiled = data.with_columns(pl.when(pl.col("coin1") == "T0").then(value).otherwise(pl.col(col)).alias(col))
        ok = ev.coint_filter(spoiled)
        assert not ok[(spoiled["coin1"] == "T0").to_numpy()].any(), col
    assert not ev.coint_filter(data.with_columns(pl.lit(0.2).alias("pv_2")))[
        (data["pv_1"] >= 0.05).to_numpy()].any()  # max(pv_1, pv_2) < 0.05: both directions


def test_a_rule_that_sits_out_cannot_look_skilled(cfg) -> None:
    """Pick nothing but in one window: no per-pick profit elsewhere, left out of the means;
    the gate needs MIN_GATE_WINDOWS windows with picks and refuses."""
    data = frame(n_windows=6, signal=0.0)  # nothing to find; random loses nothing on average either
    shy = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={
        "thresholds": cfg.selection.thresholds.model_copy(update={"pr_rat_all": 1e9})})})
    e = ev.evaluate(data, shy, min_train_windows=2, random_draws=20)
    fb = e.per_window.filter(pl.col("method") == "fallback")
    assert fb["picks"].sum() == 0 and fb["per_pick"].is_null().all() and (fb["total"] == 0).all()
    s = by(e, "fallback")
    assert s["windows_picked"] == 0 and s["diff_vs_random"] is None and s["per_pick"] is None
    g = ev.gate_decision([None, None, 5.0, None], [-1.0, -1.0, -1.0, -1.0], [None] * 4, 2.0)
    assert not g.promoted and "1 validation window" in g.reason


def test_the_gate_needs_two_se_and_not_worse_than_the_fallback() -> None:
    rand = [-1.0] * 6
    model = [0.0, 0.1, -0.1, 0.05, 0.0, -0.05]  # +1 over random with a tiny SE
    assert ev.gate_decision(model, rand, [-1.0] * 6, 2.0).promoted
    worse = ev.gate_decision(model, rand, [0.5] * 6, 2.0)
    assert not worse.promoted and "worse than the fallback rule" in worse.reason
    noisy = ev.gate_decision([2.0, -2.5, 1.5, -1.0, 0.5, -0.2], rand, rand, 2.0)
    assert not noisy.promoted and "not 2 SE above random" in noisy.reason
    assert not ev.gate_decision([-1.0] * 6, rand, rand, 0.0).promoted  # never with no edge at all
    assert math.isinf(ev.gate_decision([1.0], [0.0], [0.0], 2.0).se)


def test_the_bots_choice_at_a_window_never_sees_its_future(cfg) -> None:
    """Perturb every target from window 5 on: the bot's rule, the gate's reasons, the
    predictions and every method's picks up to and including window 5 stay the same
    (window 5's model trains on windows < 5, its gate judges windows < 5); hindsight
    aside, which is the only method that reads the window's own outcome."""
    data = frame(n_windows=8, seed=3)
    future = data.with_columns(pl.when(pl.col("window_id") >= 5).then(-pl.col("pr_test") * 7.0)
                               .otherwise(pl.col("pr_test")).alias("pr_test"))
    a = ev.evaluate(data, cfg, min_train_windows=2, random_draws=20)
    b = ev.evaluate(future, cfg, min_train_windows=2, random_draws=20)
    assert a.gates[:6] == b.gates[:6]
    upto = (pl.col("window_id") <= 5) & (pl.col("method") != "hindsight")
    assert a.per_window.filter(upto)["names"].to_list() == b.per_window.filter(upto)["names"].to_list()
    early = pl.col("window_id") <= 5
    assert np.array_equal(a.rows.filter(early)["pred"].to_numpy(), b.rows.filter(early)["pred"].to_numpy(),
                          equal_nan=True)
    # window 6's model learned from window 5's perturbed outcome: its predictions move
    w6 = pl.col("window_id") == 6
    assert not np.allclose(a.rows.filter(w6)["pred"].to_numpy(), b.rows.filter(w6)["pred"].to_numpy())


def test_overlapping_windows_train_only_on_tests_that_have_ended(cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset stepped by 7 days with 14-day tests: window k - 1's test ends 7 days after
    window k's valid_time, so window k's model must not see it."""
    data = frame(n_windows=8).with_columns(
        (pl.col("train_start") - pl.duration(days=7) * pl.col("window_id")).alias("train_start"),
        (pl.col("valid_time") - pl.duration(days=7) * pl.col("window_id")).alias("valid_time"),
        (pl.col("end_time") - pl.duration(days=7) * pl.col("window_id")).alias("end_time"))
    seen: list[set[int]] = []
    real = ev._fit

    def spy(train: pl.DataFrame, c, thread_count: int = -1):
        seen.append(set(train["window_id"].unique().to_list()))
        return real(train, c, thread_count)

    monkeypatch.setattr(ev, "_fit", spy)
    ev.evaluate(data, cfg, min_train_windows=2, random_draws=5)
    # window w (valid at 53 w + ... days) sees windows j with end_j <= valid_w: j <= w - 2
    # window w is valid at day 7 w + 60; window j's test ends at day 7 j + 74: known when j <= w - 2
    assert [sorted(s) for s in seen] == [list(range(w - 1)) for w in range(3, 8)]


def test_bad_datasets_are_refused_with_the_reason(cfg) -> None:
    data = frame(n_windows=3)
    with pytest.raises(ValueError, match="more than once"):
        ev.evaluate(pl.concat([data, data.head(1)]), cfg)
    with pytest.raises(ValueError, match="no row has a test profit"):
        ev.evaluate(data.with_columns(pl.lit(None, pl.Float64).alias("pr_test")), cfg)
    with pytest.raises(ValueError, match="time order"):
        ev.evaluate(data.with_columns((2 - pl.col("window_id")).alias("window_id")), cfg)
    with pytest.raises(ValueError, match="different train/test periods"):
        ev.evaluate(data.with_columns(pl.when(pl.col("coin1") == "T0").then(pl.col("end_time") + pl.duration(days=1))
                                      .otherwise(pl.col("end_time")).alias("end_time")), cfg)
    e = ev.evaluate(data.drop("fees_test", "trades_test"), cfg, min_train_windows=1, random_draws=5)
    assert e.summary["fees_per_pick"].is_null().all() and e.summary["trades_per_pick"].is_null().all()


def test_a_model_that_only_repeats_the_fallback_adds_nothing() -> None:
    same = [0.5, 0.7, 0.4, 0.6]
    g = ev.gate_decision(same, [-1.0] * 4, same, 2.0)
    assert not g.promoted and "adds nothing" in g.reason and g.skill


def test_the_bot_uses_the_model_only_once_the_gate_passes(cfg) -> None:
    strict = cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"sort_key": "pred"}),
                                    "model": cfg.model.model_copy(update={"fallback_sort": "pr_rat_all"})})
    e = ev.evaluate(frame(n_windows=10, seed=5), strict, min_train_windows=2, random_draws=20)
    rules = [g["rule"] for g in e.gates]
    assert rules[:2 + ev.MIN_GATE_WINDOWS] == ["fallback"] * (2 + ev.MIN_GATE_WINDOWS)  # no model, then no record
    assert "model" in rules  # the learnable p-value signal: the gate opens
    first = rules.index("model")
    assert "fallback" not in rules[first:]  # once promoted, a model stays in use (new or kept)
    for g, r in zip(e.gates, e.per_window.filter(pl.col("method") == "bot").iter_rows(named=True), strict=True):
        assert r["rule"] == g["rule"]
        if g["rule"] in ("model", "fallback"):
            same = e.per_window.filter((pl.col("method") == g["rule"]) & (pl.col("window_id") == g["window_id"]))
            assert r["names"] == same["names"][0].to_list()
        else:
            assert "keeps the model promoted at window" in g["reason"]
    never = strict.model_copy(update={"model": strict.model.model_copy(update={"min_skill_se": 1e6})})
    e2 = ev.evaluate(frame(n_windows=10, seed=5), never, min_train_windows=2, random_draws=20)
    assert {g["rule"] for g in e2.gates} == {"fallback"}


def test_holdout_windows_are_reported_apart(cfg) -> None:
    data = frame(n_windows=6)
    cut = T0 + dt.timedelta(days=14 * 3 + 74)  # windows 0..3 end at or before it
    e = ev.evaluate(data, cfg, min_train_windows=2, random_draws=10, holdout_after=cut)
    assert e.per_window.filter(pl.col("split") == "holdout")["window_id"].unique().sort().to_list() == [4, 5]
    assert set(e.summary["split"].to_list()) == {"tuning", "holdout", "all"}
    assert by(e, "random", "holdout")["windows"] == 2 and by(e, "random", "all")["windows"] == 6
    assert "shows" in ev.verdict(e.summary, "holdout")


def test_the_verdict_says_no_skill_on_noise(cfg) -> None:
    e = ev.evaluate(frame(n_windows=6, signal=0.0, seed=9), cfg, min_train_windows=2, random_draws=50)
    assert set(e.summary["split"].to_list()) == {"all"}  # no holdout asked for: one split
    text = ev.verdict(e.summary, "all")
    assert "shows NO skill" in text and "SE" in text

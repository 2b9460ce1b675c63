"""The scoring model: walk-forward without leaks, greedy picks, safe persistence, real data."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import load
from bot.config.loader import example_path
from bot.research import model as mdl
from bot.research.dataset import FEATURES, TARGET, windows


@pytest.fixture(scope="module")
def cfg():
    base = load(example_path())
    return base.model_copy(update={"model": base.model.model_copy(update={"iterations": 60, "depth": 4}),
                                   "selection": base.selection.model_copy(update={"max_pairs": 3})})


def synthetic(n_windows: int = 6, n_tokens: int = 8, seed: int = 0) -> pl.DataFrame:
    """pr_rat_test depends on pv_1 (low p-value -> profit), so skill is learnable."""
    rng = np.random.default_rng(seed)
    toks = [f"T{k}" for k in range(n_tokens)]
    rows = []
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for w in range(n_windows):
        for i in range(n_tokens):
            for j in range(i + 1, n_tokens):
                f = {c: float(rng.normal()) for c in FEATURES}
                f["pv_1"] = float(rng.uniform())
                target = 2.0 * (0.5 - f["pv_1"]) + 0.3 * rng.normal()
                rows.append({"window_id": w, "train_start": t0 + dt.timedelta(days=14 * w),
                             "valid_time": t0 + dt.timedelta(days=14 * w + 60),
                             "end_time": t0 + dt.timedelta(days=14 * w + 74), "coin1": toks[i], "coin2": toks[j],
                             **f, "pr_test": target * 2, TARGET: target})
    return pl.DataFrame(rows)


def test_windows_roll_by_the_test_length() -> None:
    s = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    ws = windows(s, s + dt.timedelta(days=102), 60, 14)  # 28 + 74 = 102: the third fits exactly
    assert [(a - s).days for a, _, _ in ws] == [0, 14, 28]
    assert all((b - a).days == 60 and (c - b).days == 14 for a, b, c in ws)


def test_walk_forward_never_trains_on_the_validation_window(cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[set[int], int]] = []
    real_fit = mdl.fit_catboost

    def recording_fit(frame: pl.DataFrame, c, thread_count: int = -1):
        seen.append((set(frame["window_id"].unique().to_list()), -1))
        return real_fit(frame, c, thread_count)

    monkeypatch.setattr(mdl, "fit_catboost", recording_fit)
    wf = mdl.walk_forward(synthetic(), cfg, min_train_windows=2, random_draws=20)
    assert [sorted(s) for s, _ in seen] == [[0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert set(wf.per_window["window_id"].unique().to_list()) == {2, 3, 4, 5}
    methods = set(wf.summary["method"].to_list())
    assert {"catboost", "mean", "ridge", "random", "lowest_pvalue", "pr_rat_all", "hindsight"} <= methods
    cb = wf.summary.filter(pl.col("method") == "catboost").row(0, named=True)
    mean = wf.summary.filter(pl.col("method") == "mean").row(0, named=True)
    assert cb["rmse"] < mean["rmse"]  # the signal is learnable
    assert cb["diff_vs_random"] > 0 and wf.promoted
    assert wf.importances[0][0] == "pv_1"


def test_no_skill_is_not_promoted(cfg) -> None:
    noise = synthetic(seed=3).with_columns(pl.Series(TARGET, np.random.default_rng(9).normal(size=6 * 28)),
                                           pl.Series("pr_test", np.random.default_rng(8).normal(size=6 * 28)))
    wf = mdl.walk_forward(noise, cfg, min_train_windows=2, random_draws=50)
    assert not wf.promoted and "not promoted" in wf.reason


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6))
def test_greedy_picks_never_reuse_a_token(seed: int, k: int) -> None:
    frame = synthetic(n_windows=1, n_tokens=7, seed=seed)
    score = np.random.default_rng(seed).normal(size=frame.height)
    picks = mdl.greedy_picks(frame, score, k)
    toks = [t for i in picks for t in (frame["coin1"][i], frame["coin2"][i])]
    assert len(toks) == len(set(toks)) and len(picks) <= k
    assert picks and picks[0] == int(np.argmax(score))


def test_save_reload_bit_exact_and_guards(cfg, tmp_path: Path) -> None:
    data = synthetic()
    model = mdl.fit_catboost(data, cfg)
    path = mdl.save_model(model, tmp_path, {"promoted": True}, keep_last=2)
    a = mdl.load_model(path).predict(data)
    b = mdl.load_model(path).predict(data)
    assert np.array_equal(a, b)
    code = ("import sys, polars as pl, numpy as np; from bot.research.model import load_model; "
            "d = pl.read_parquet(sys.argv[2]); np.save(sys.argv[3], load_model(sys.argv[1]).predict(d))")
    data.write_parquet(tmp_path / "d.parquet")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "d.parquet"), str(tmp_path / "p.npy")],
                   check=True)
    assert np.array_equal(np.load(tmp_path / "p.npy"), a)  # a new process gives the same bits
    meta = json.loads(path.with_name(path.name.replace(".json", ".meta.json")).read_text())
    assert meta["features"] == list(FEATURES) and len(meta["sha256"]) == 64 and "catboost" in meta["versions"]
    # corrupt the newest model: the loader refuses it and latest_model falls back to the previous one
    newer = mdl.save_model(model, tmp_path, {"promoted": True}, keep_last=2)
    newer.write_text(newer.read_text().replace('"', "'", 1))
    with pytest.raises(mdl.ModelError, match="corrupt"):
        mdl.load_model(newer)
    assert mdl.latest_model(tmp_path).path == path
    with pytest.raises(mdl.ModelError, match="features do not match"):
        mdl.load_model(path, expected_features=(*FEATURES, "extra"))
    with pytest.raises(mdl.ModelError, match="missing"):
        mdl.load_model(tmp_path / "model-nothing.json")
    # keep_last: a third save prunes the oldest
    mdl.save_model(model, tmp_path, {"promoted": False}, keep_last=2)
    assert len(list(tmp_path.glob("model-*.meta.json"))) == 2 and not path.exists()

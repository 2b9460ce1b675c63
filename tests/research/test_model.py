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
    # the job ranks by the model (sort_key pred) with no threshold in the way, so the gate,
    # which judges what the job would trade with the model, sees the model's ranking
    low = base.selection.thresholds.model_copy(update=dict.fromkeys(("pr_rat_ind", "pr_rat_all", "pr_rat_best",
                                                                      "pred"), -1e9))
    return base.model_copy(update={"model": base.model.model_copy(update={"iterations": 60, "depth": 4}),
                                   "selection": base.selection.model_copy(update={"max_pairs": 3, "sort_key": "pred",
                                                                                  "thresholds": low})})


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
    with pytest.raises(mdl.ModelError, match=r"features do not match this code: it uses \['std_1'\]"):
        mdl.load_model(path, expected_features=FEATURES[1:])  # the model uses a feature this code lacks
    with pytest.raises(mdl.ModelError, match="missing"):
        mdl.load_model(tmp_path / "model-nothing.json")
    # keep_last: a third save prunes the oldest
    mdl.save_model(model, tmp_path, {"promoted": False}, keep_last=2)
    assert len(list(tmp_path.glob("model-*.meta.json"))) == 2 and not path.exists()


# ---------------------------------------------------------------- ties, target and judgement, old files

def test_tied_scores_pick_in_a_seeded_random_order_never_alphabetically() -> None:
    frame = synthetic(n_windows=1, n_tokens=8)  # rows sorted by name: T0/T1, T0/T2, ...
    const = np.zeros(frame.height)
    alphabetical = mdl.greedy_picks(frame, np.arange(frame.height, 0, -1.0), 3)  # strictly by row order
    assert alphabetical == [0, 13, 22]  # T0/T1, T2/T3, T4/T5: what a stable sort of a constant gave
    a = mdl.greedy_picks(frame, const, 3, seed=(42, 5))
    b = mdl.greedy_picks(frame, const, 3, seed=(43, 5))
    assert a != b and a != alphabetical and b != alphabetical
    assert a == mdl.greedy_picks(frame, const, 3, seed=(42, 5))  # seeded: the same seed, the same picks
    assert 0 not in a + b  # neither starts with the alphabetically first pair
    # only the ties are shuffled: a strictly better score still wins
    best = const.copy()
    best[27] = 1.0
    assert mdl.greedy_picks(frame, best, 3, seed=(42, 5))[0] == 27


def _two_targets(seed: int = 0) -> pl.DataFrame:
    """pr_rat_test follows pv_1, pr_test follows corr: the two targets teach different things."""
    rng = np.random.default_rng(seed)
    base = synthetic(n_windows=6, n_tokens=8, seed=seed)
    n = base.height
    corr = rng.uniform(-1, 1, n)
    return base.with_columns(pl.Series("corr", corr),
                             pl.Series("pr_test", 3.0 * corr + 0.2 * rng.normal(size=n)))


def test_the_target_switch_changes_what_is_learnt_not_the_judgement(cfg) -> None:
    data = _two_targets()
    runs = {}
    for target in ("pr_rat_test", "pr_test"):
        c = cfg.model_copy(update={"model": cfg.model.model_copy(update={"target": target})})
        runs[target] = mdl.walk_forward(data, c, min_train_windows=2, random_draws=30)
    rat, pr = runs["pr_rat_test"], runs["pr_test"]
    assert rat.target == "pr_rat_test" and pr.target == "pr_test"
    assert rat.importances[0][0] == "pv_1" and pr.importances[0][0] == "corr"  # what is learnt follows the target

    def by(wf, method):
        return wf.per_window.filter(pl.col("method") == method).sort("window_id")

    # the judgement is pr_test either way: the methods that ignore the target judge identically, and
    # every pick profit is the mean pr_test of the picks
    for method in ("random", "hindsight", "pr_rat_all", "lowest_pvalue"):
        assert by(rat, method)["pick_profit"].to_list() == by(pr, method)["pick_profit"].to_list()
    for wf in (rat, pr):
        for r in wf.per_window.filter(pl.col("picks").is_not_null()).iter_rows(named=True):
            val = data.filter(pl.col("window_id") == r["window_id"])
            judged = val.filter((pl.col("coin1") + "/" + pl.col("coin2")).is_in(r["picks"]))["pr_test"]
            assert r["pick_profit"] == pytest.approx(judged.mean())
            assert len(r["picks"]) == wf.k == 3
        cb = by(wf, "catboost")
        for r in cb.iter_rows(named=True):  # sel_value: the real pr_test of the rows predicted above the threshold
            assert r["sel_n"] >= 0 and (r["sel_n"] > 0 or r["sel_value"] == 0)
    # a model of pr_rat_test (unrelated to pr_test here) earns nothing when judged by pr_test; one of pr_test does
    cb_rat = rat.summary.filter(pl.col("method") == "catboost").row(0, named=True)
    cb_pr = pr.summary.filter(pl.col("method") == "catboost").row(0, named=True)
    assert cb_pr["diff_vs_random"] > cb_rat["diff_vs_random"] + 1.0
    assert pr.promoted
    # rmse is against the target; the mean predictor is an RMSE baseline only
    mean = by(pr, "mean")
    assert mean["pick_profit"].is_null().all() and mean["sel_value"].is_null().all()
    assert pr.summary.filter(pl.col("method") == "mean")["rmse"][0] > cb_pr["rmse"]


def test_train_output_and_the_per_window_parquet(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli.main import main

    synthetic(n_windows=5, n_tokens=6).write_parquet(offline / "dataset.parquet")
    (offline / "config.yaml").write_text("model:\n  iterations: 20\n  depth: 3\n  dir: models\n"
                                         "  min_skill_se: 1000\nselection:\n  max_pairs: 2\n")
    assert main(["--config", "config.yaml", "train", "--dataset", "dataset.parquet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "K = 2: up to 2 pairs picked per validation window" in out
    assert "3 validation windows (window ids 2..4)" in out and "rows per window: 15, 15, 15" in out
    assert "sel_value: the realised pr_test summed over the rows a model predicts above" in out
    assert "the models learn pr_rat_test" in out
    # not promoted (gate of 1000 SE) and no earlier promoted model: no "previous model" to keep
    assert "keeps its previous model" not in out and "uses the fallback rule" in out
    (saved,) = sorted((offline / "models").glob("model-*.windows.parquet"))
    per = pl.read_parquet(saved)
    assert set(per["window_id"].to_list()) == {2, 3, 4} and "pick_profit" in per.columns
    meta = json.loads(saved.with_name(saved.name.replace(".windows.parquet", ".meta.json")).read_text())
    assert meta["windows_file"] == saved.name and meta["target"] == "pr_rat_test"
    # with a promoted model in the directory, a model that fails the gate leaves it in place, and says so
    first = sorted((offline / "models").glob("model-*.meta.json"))[0]
    m = json.loads(first.read_text())
    first.write_text(json.dumps({**m, "promoted": True}))
    assert main(["--config", "config.yaml", "train", "--dataset", "dataset.parquet"]) == 0
    out = capsys.readouterr().out
    assert f"keeps its previous model {m['model_file']}" in out


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_CONFIG", raising=False)
    monkeypatch.setenv("BOT_DATABASE_DSN", "postgresql://u@127.0.0.1:1/x")
    return tmp_path


def test_old_files_without_coverage(cfg, offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stats file from before the coverage column scores with a model that does not use it;
    training refuses a dataset without it, saying why."""
    from catboost import CatBoostRegressor

    from bot.cli.main import main

    data = synthetic(n_windows=4, n_tokens=6)
    old = [f for f in FEATURES if f != "coverage"]
    old_model = CatBoostRegressor(iterations=20, depth=3, verbose=0, random_seed=1, allow_writing_files=False)
    old_model.fit(data.select(old).to_numpy(), data[TARGET].to_numpy())
    old_path = mdl.save_model(old_model, offline / "old", {"promoted": True}, features=old)
    new_path = mdl.save_model(mdl.fit_catboost(data, cfg), offline / "new", {"promoted": True})
    stats = data.drop("window_id", "train_start", "valid_time", "end_time", "coverage")
    stats.write_parquet(offline / "stats_old.parquet")
    # score: the check follows the model's own feature list
    assert main(["score", "stats_old.parquet", "--model", str(old_path)]) == 0, capsys.readouterr().err
    assert "pred" in capsys.readouterr().out
    assert main(["score", "stats_old.parquet", "--model", str(new_path)]) == 2
    err = capsys.readouterr().err
    assert "stats_old.parquet" in err and "['coverage']" in err
    assert "predates the coverage column: rebuild it with bot stats" in err
    # the old model's predictions are its own features' (the extra column is ignored, not required)
    got = mdl.load_model(old_path).predict(stats)
    assert np.array_equal(got, mdl.load_model(old_path).predict(data))
    # train: every feature of this code, with the reason when coverage is what is missing
    data.drop("coverage").write_parquet(offline / "dataset_old.parquet")
    assert main(["train", "--dataset", "dataset_old.parquet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "dataset_old.parquet" in line and "['coverage']" in line
    assert "this dataset predates the coverage column: rebuild it with bot dataset" in line


def test_model_target_is_checked_by_the_config(tmp_path: Path) -> None:
    from bot.config import ConfigError

    p = tmp_path / "config.yaml"
    p.write_text("model:\n  target: pr_best\n")
    with pytest.raises(ConfigError) as err:
        load(p)
    assert any("model.target" in line and "pr_best" in line for line in err.value.problems), err.value.problems
    p.write_text("model:\n  target: pr_test\n")
    assert load(p).model.target == "pr_test"


def test_prune_never_deletes_the_newest_promoted_model(tmp_path) -> None:
    """keep_last=1 after a promoted then an unpromoted model: the promoted one (the model the
    re-selection uses, which `bot train` says it keeps) survives."""
    import json

    from bot.research.model import prune

    for name, promoted in (("model-20260101T000000000000", True), ("model-20260102T000000000000", False),
                           ("model-20260103T000000000000", False)):
        (tmp_path / f"{name}.json").write_text("{}")
        (tmp_path / f"{name}.meta.json").write_text(json.dumps({"promoted": promoted}))
    removed = prune(tmp_path, 1)
    left = sorted(p.name for p in tmp_path.glob("model-*.meta.json"))
    assert left == ["model-20260101T000000000000.meta.json", "model-20260103T000000000000.meta.json"]
    assert [p.name for p in removed] == ["model-20260102T000000000000.json", "model-20260102T000000000000.meta.json"]

"""The pair-scoring model: honest walk-forward validation, a skill gate, safe persistence.

Validation (selection.md section 5): windows in time order; for every validation
window k >= `min_train_windows`, models are fitted on windows < k only (never a
shuffle across time, never a window on both sides) and evaluated on window k:
RMSE, the selection value (sum of the real pr_rat_test of rows predicted above
the threshold, and how many), and the realised test profit of the pairs each
method would pick: greedy by score, no token used twice, K = selection.max_pairs;
profit per pick = mean pr_test (% of balance) of the picks. Methods: CatBoost, a
mean predictor, ridge regression, random picks (mean over `random_draws` seeded
shuffles), the lowest Engle-Granger p-value, and the notebook's highest
pr_rat_all. The paired difference (method - random) per window gives a mean and
its standard error across windows; the skill gate promotes a model only when its
mean difference exceeds `model.min_skill_se` standard errors.

Persistence: CatBoost JSON plus `<name>.meta.json` (ordered feature names, train
range, metrics, versions, created_at, sha256 of the model file). Both are written
to temp files and renamed; the last `model.keep_last` models are kept. Loading
checks the hash and the feature names and raises ModelError otherwise, so a
caller keeps its previous model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bot.config.model import BotConfig
from bot.research.dataset import FEATURES, META, TARGET
from bot.utils.files import atomic_write_text


class ModelError(RuntimeError):
    """A model that cannot be used (missing, corrupt, mismatched); the message says why."""


class DataFileError(ValueError):
    """A dataset or statistics file given by the user that cannot be used: bad input (exit 2)."""


DATASET_COLUMNS = (*META, *FEATURES, "pr_test", TARGET)


def _read_parquet_checked(path: str | Path, required: tuple[str, ...], what: str,
                          numeric: tuple[str, ...]) -> pl.DataFrame:
    """The parquet at `path` with every `required` column, `numeric` ones numeric;
    otherwise a DataFileError naming the file and every missing or mistyped column."""
    p = Path(path)
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    if not p.is_file():
        raise DataFileError(f"{p}: not a file")
    try:
        schema = pl.read_parquet_schema(p)
    except OSError as err:
        raise DataFileError(f"{p}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # polars raises ComputeError and friends for a file that is not parquet
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"{p}: not a parquet file ({first})") from None
    problems = []
    missing = [c for c in required if c not in schema]
    if missing:
        problems.append(f"lacks the {what} columns {missing}")
    wrong = [f"{c} ({schema[c]})" for c in numeric if c in schema and not (schema[c].is_numeric() or schema[c] == pl.Null)]
    if wrong:
        problems.append(f"columns not numeric: {', '.join(wrong)}")
    if problems:
        raise DataFileError(f"{p}: " + "; ".join(problems))
    try:
        return pl.read_parquet(p)
    except Exception as err:  # a truncated or corrupt body behind a readable footer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"{p}: unreadable parquet ({first})") from None


def read_dataset_file(path: str | Path) -> pl.DataFrame:
    """A dataset parquet (`bot dataset --out`): META, FEATURES, pr_test and the target."""
    return _read_parquet_checked(path, DATASET_COLUMNS, "dataset's", ("window_id", *FEATURES, "pr_test", TARGET))


def read_stats_file(path: str | Path, features: tuple[str, ...] = FEATURES) -> pl.DataFrame:
    """A pair-statistics parquet (`bot stats --out`): coin1, coin2 and the model's features."""
    return _read_parquet_checked(path, ("coin1", "coin2", *features), "statistics", features)


def _xy(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = frame.select([pl.col(f).cast(pl.Float64) for f in FEATURES]).to_numpy()
    y = frame.get_column(TARGET).cast(pl.Float64).to_numpy()
    return x, y


def fit_catboost(frame: pl.DataFrame, cfg: BotConfig, thread_count: int = -1) -> Any:
    from catboost import CatBoostRegressor

    m = cfg.model
    train = frame.filter(pl.col(TARGET).is_not_null() & pl.col(TARGET).is_finite())
    if train.height < 10:
        raise ModelError(f"too few training rows with a target ({train.height})")
    x, y = _xy(train)
    model = CatBoostRegressor(loss_function=m.loss_function, learning_rate=m.learning_rate, iterations=m.iterations,
                              depth=m.depth, random_seed=m.random_seed, verbose=0, thread_count=thread_count,
                              allow_writing_files=False)
    model.fit(x, y)
    return model


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> Any:
    mu = np.nanmean(x, axis=0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    sd = np.nanstd(x, axis=0)
    sd = np.where((sd > 0) & np.isfinite(sd), sd, 1.0)

    def prep(a: np.ndarray) -> np.ndarray:
        z = (np.where(np.isfinite(a), a, mu) - mu) / sd
        return np.column_stack([np.ones(len(z)), z])

    xx = prep(x)
    reg = alpha * np.eye(xx.shape[1])
    reg[0, 0] = 0.0
    beta = np.linalg.solve(xx.T @ xx + reg, xx.T @ y)
    return lambda a: prep(a) @ beta


def greedy_picks(frame: pl.DataFrame, score: np.ndarray, k: int, higher_is_better: bool = True) -> list[int]:
    """Row indices picked greedily by score with no token used twice, at most k."""
    order = np.argsort(-score if higher_is_better else score, kind="stable")
    used: set[str] = set()
    picks: list[int] = []
    c1, c2 = frame["coin1"].to_list(), frame["coin2"].to_list()
    for i in order:
        if not math.isfinite(score[i]):
            continue
        if c1[i] in used or c2[i] in used:
            continue
        picks.append(int(i))
        used.update((c1[i], c2[i]))
        if len(picks) == k:
            break
    return picks


def _pick_profit(frame: pl.DataFrame, picks: list[int]) -> float:
    if not picks:
        return 0.0
    pr = frame.get_column("pr_test").to_numpy()[picks]
    pr = np.where(np.isfinite(pr), pr, 0.0)
    return float(pr.mean())


@dataclass
class WalkForward:
    per_window: pl.DataFrame  # window_id, method, rmse, sel_value, sel_n, pick_profit
    summary: pl.DataFrame  # method, rmse, sel_value, sel_n, pick_profit, diff_vs_random, se
    importances: list[tuple[str, float]]
    promoted: bool
    reason: str


def walk_forward(frame: pl.DataFrame, cfg: BotConfig, *, min_train_windows: int = 2, random_draws: int = 200,
                 thread_count: int = -1) -> WalkForward:
    data = frame.filter(pl.col(TARGET).is_not_null() & pl.col(TARGET).is_finite()).sort(["window_id", "coin1", "coin2"])
    wins = sorted(data["window_id"].unique().to_list())
    if len(wins) <= min_train_windows:
        raise ModelError(f"walk-forward needs more than {min_train_windows} windows with targets (got {len(wins)})")
    thr = cfg.selection.thresholds.pred
    k = cfg.selection.max_pairs
    rows = []
    importances = np.zeros(len(FEATURES))
    for w in wins[min_train_windows:]:
        train = data.filter(pl.col("window_id") < w)
        val = data.filter(pl.col("window_id") == w)
        xt, yt = _xy(train)
        xv, yv = _xy(val)
        cb = fit_catboost(train, cfg, thread_count)
        importances += np.asarray(cb.get_feature_importance())
        preds = {
            "catboost": np.asarray(cb.predict(xv)),
            "mean": np.full(len(yv), float(np.mean(yt))),
            "ridge": np.asarray(_ridge(xt, yt)(xv)),
        }
        for name, p in preds.items():
            sel = p > thr
            rows.append({"window_id": w, "method": name, "rmse": float(np.sqrt(np.mean((p - yv) ** 2))),
                         "sel_value": float(yv[sel].sum()), "sel_n": int(sel.sum()),
                         "pick_profit": _pick_profit(val, greedy_picks(val, p, k))})
        pv = np.maximum(val["pv_1"].fill_null(np.nan).to_numpy(), val["pv_2"].fill_null(np.nan).to_numpy())
        rows.append({"window_id": w, "method": "lowest_pvalue", "rmse": math.nan, "sel_value": math.nan, "sel_n": 0,
                     "pick_profit": _pick_profit(val, greedy_picks(val, pv, k, higher_is_better=False))})
        rows.append({"window_id": w, "method": "pr_rat_all", "rmse": math.nan, "sel_value": math.nan, "sel_n": 0,
                     "pick_profit": _pick_profit(val, greedy_picks(val, val["pr_rat_all"].fill_null(np.nan).to_numpy(), k))})
        rng = random.Random(1000 + int(w))
        draws = []
        for _ in range(random_draws):
            score = np.array([rng.random() for _ in range(val.height)])
            draws.append(_pick_profit(val, greedy_picks(val, score, k)))
        rows.append({"window_id": w, "method": "random", "rmse": math.nan, "sel_value": math.nan, "sel_n": 0,
                     "pick_profit": float(np.mean(draws))})
        picks_best = greedy_picks(val, val["pr_test"].fill_null(np.nan).to_numpy(), k)
        rows.append({"window_id": w, "method": "hindsight", "rmse": math.nan, "sel_value": math.nan, "sel_n": 0,
                     "pick_profit": _pick_profit(val, picks_best)})
    per = pl.DataFrame(rows)
    rnd = per.filter(pl.col("method") == "random").select("window_id", pl.col("pick_profit").alias("rand"))
    paired = per.join(rnd, on="window_id").with_columns((pl.col("pick_profit") - pl.col("rand")).alias("diff"))
    n_w = len(wins) - min_train_windows
    summary = paired.group_by("method", maintain_order=True).agg(
        pl.col("rmse").mean(), pl.col("sel_value").sum(), pl.col("sel_n").sum(), pl.col("pick_profit").mean(),
        pl.col("diff").mean().alias("diff_vs_random"),
        (pl.col("diff").std() / math.sqrt(max(n_w, 1))).alias("se"),
    )
    cb = summary.filter(pl.col("method") == "catboost").row(0, named=True)
    se = cb["se"] if cb["se"] is not None and math.isfinite(cb["se"]) else math.inf
    need = cfg.model.min_skill_se * se
    promoted = cb["diff_vs_random"] > 0 and cb["diff_vs_random"] > need
    reason = (f"catboost beats random picks by {cb['diff_vs_random']:+.3f} %/pick/window, "
              f"SE {se:.3f}, gate {cfg.model.min_skill_se} SE: {'promoted' if promoted else 'not promoted'}")
    imp = sorted(zip(FEATURES, (importances / max(n_w, 1)).tolist(), strict=True), key=lambda t: -t[1])
    return WalkForward(per, summary, imp, bool(promoted), reason)


# ---------------------------------------------------------------- persistence

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import catboost
    import numpy
    import polars

    from bot import __version__

    return {"bot": __version__, "catboost": catboost.__version__, "numpy": numpy.__version__,
            "polars": polars.__version__, "python": platform.python_version()}


@dataclass
class LoadedModel:
    path: Path
    meta: dict[str, Any]
    model: Any

    @property
    def features(self) -> list[str]:
        return list(self.meta["features"])

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ModelError(f"frame lacks the model's features {missing}")
        x = frame.select([pl.col(f).cast(pl.Float64) for f in self.features]).to_numpy()
        return np.asarray(self.model.predict(x), dtype=np.float64)


def save_model(model: Any, directory: str | Path, meta: dict[str, Any], keep_last: int = 5,
               now: dt.datetime | None = None) -> Path:
    """Write model + metadata atomically; returns the model path. Prunes old models."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    created = now or dt.datetime.now(dt.UTC)
    name = f"model-{created:%Y%m%dT%H%M%S%f}"
    final = d / f"{name}.json"
    tmp = d / f".{name}.json.tmp"
    model.save_model(str(tmp), format="json")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    full = {**meta, "features": list(FEATURES), "created_at": created.isoformat(), "versions": _versions(),
            "sha256": _sha256(final), "model_file": final.name}
    atomic_write_text(d / f"{name}.meta.json", json.dumps(full, indent=2, default=str))
    prune(d, keep_last)
    return final


def prune(directory: Path, keep_last: int) -> list[Path]:
    metas = sorted(directory.glob("model-*.meta.json"))
    removed = []
    for meta in metas[:-keep_last] if keep_last > 0 else []:
        model = meta.with_name(meta.name.replace(".meta.json", ".json"))
        for p in (model, meta):
            if p.exists():
                p.unlink()
                removed.append(p)
    return removed


def load_model(path: str | Path, expected_features: tuple[str, ...] = FEATURES) -> LoadedModel:
    """Load one model file, verifying its metadata, hash and feature names."""
    from catboost import CatBoostRegressor

    p = Path(path)
    meta_path = p.with_name(p.name.replace(".json", ".meta.json"))
    if not p.exists():
        raise ModelError(f"model file missing: {p}")
    if not meta_path.exists():
        raise ModelError(f"model metadata missing: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"model metadata unreadable: {meta_path}: {err}") from None
    digest = _sha256(p)
    if digest != meta.get("sha256"):
        raise ModelError(f"model file corrupt: sha256 {digest[:12]}... does not match its metadata "
                         f"({str(meta.get('sha256'))[:12]}...): {p}")
    if list(meta.get("features", [])) != list(expected_features):
        raise ModelError(f"model features do not match this code: {meta.get('features')} vs {list(expected_features)}")
    model = CatBoostRegressor()
    try:
        model.load_model(str(p), format="json")
    except Exception as err:  # catboost raises its own error types
        raise ModelError(f"model file unreadable: {p}: {err}") from None
    return LoadedModel(p, meta, model)


def latest_model(directory: str | Path, promoted_only: bool = True) -> LoadedModel:
    """The newest (promoted) model that loads cleanly; broken ones are skipped loudly."""
    d = Path(directory)
    metas = sorted(d.glob("model-*.meta.json"), reverse=True)
    errors = []
    for meta in metas:
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as err:
            errors.append(f"{meta.name}: {err}")
            continue
        if promoted_only and not info.get("promoted", False):
            continue
        try:
            return load_model(d / info.get("model_file", meta.name.replace(".meta.json", ".json")))
        except ModelError as err:
            errors.append(str(err))
    raise ModelError(f"no usable {'promoted ' if promoted_only else ''}model in {d}"
                     + (": " + "; ".join(errors) if errors else ""))

"""The pair-scoring model: honest walk-forward validation, a skill gate, safe persistence.

Validation (selection.md section 5): windows in time order; for every validation
window k >= `min_train_windows`, models are fitted on windows < k only (never a
shuffle across time, never a window on both sides) and evaluated on window k.
The models learn `model.target` (default pr_rat_test, the notebook's); every
judgement uses the realised test profit after fees, pr_test (% of balance), whatever
the target: RMSE (against the target), the selection value (sum of the real pr_test
of the rows a model predicts above selection.thresholds.pred, and how many), and the
profit per pick of the pairs each method would pick: greedy by score, no token used
twice, K = selection.max_pairs; profit per pick = mean pr_test of the picks.
Methods: CatBoost, ridge regression, random picks (mean over `random_draws` seeded
shuffles), the lowest Engle-Granger p-value, the notebook's highest pr_rat_all, and
the mean predictor for RMSE only (a constant ranks nothing: its picks would be one
random draw, which `random` already measures with many). Tied scores are broken in
a seeded random order (model.random_seed and the window), never by row order (the
rows are sorted by name: a stable sort would pick alphabetically). The paired
difference (method - random) per window gives a mean and its standard error across
windows. The skill gate (`bot.selection.evaluate.gate_decision`) judges what the
re-selection job would trade: `selection` (the job's thresholds incl. pred and its
sort key, with this model) against random and against `fallback` (the job without
a model: `model.fallback_sort`); promoted only when `selection` beats random by more
than `model.min_skill_se` standard errors AND is not worse than the fallback. A
window where the job picks nothing has no per-pick profit and is left out (a rule
cannot look skilled by not trading). `fallback_skill` says whether the fallback rule
itself beats random.

Persistence: CatBoost JSON plus `<name>.meta.json` (ordered feature names, train
range, metrics, versions, created_at, sha256 of the model file) and, from `bot
train`, `<name>.windows.parquet` (the walk-forward's per-window rows). All are
written to temp files and renamed, the metadata last; the last `model.keep_last`
models are kept. Loading checks the hash and that this code computes every feature
the model uses (an older model with fewer features still loads and scores on its
own list) and raises ModelError otherwise, so a caller keeps its previous model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bot.config.model import BotConfig
from bot.research.dataset import COLUMNS, FEATURES, JUDGE, META, TARGET, TARGETS
from bot.selection.evaluate import gate_decision, greedy, job_picks, random_picks, skill_line
from bot.utils.files import atomic_write_text


class ModelError(RuntimeError):
    """A model that cannot be used (missing, corrupt, mismatched); the message says why."""


class DataFileError(ValueError):
    """A dataset or statistics file given by the user that cannot be used: bad input (exit 2)."""


DATASET_COLUMNS = COLUMNS  # what `bot dataset` writes; training needs META, FEATURES, pr_test and the target
PREDATES = {"coverage": "the coverage column", "zero_cross": "the spread-shape columns",
            "half_life_h": "the spread-shape columns", "hurst": "the spread-shape columns",
            "pos_share_all": "the spread-shape columns"}  # features added later: name -> what an old file lacks
BASE_FEATURES = tuple(f for f in FEATURES if f not in PREDATES)  # used by every model this code ever saved


def _problems(p: Path, schema: Any, required: Sequence[str], what: str, numeric: Sequence[str],
              rebuild: str) -> None:
    """A DataFileError naming `p` and every missing or mistyped column, if any."""
    problems = []
    missing = [c for c in required if c not in schema]
    if missing:
        problems.append(f"lacks the {what} columns {missing}")
        late = list(dict.fromkeys(PREDATES[c] for c in missing if c in PREDATES))
        if late:
            problems.append(f"this {'dataset' if 'dataset' in what else 'file'} predates {', '.join(late)}: "
                            f"rebuild it with {rebuild}")
    wrong = [f"{c} ({schema[c]})" for c in numeric if c in schema and not (schema[c].is_numeric() or schema[c] == pl.Null)]
    if wrong:
        problems.append(f"columns not numeric: {', '.join(wrong)}")
    if problems:
        raise DataFileError(f"{p}: " + "; ".join(problems))


def _read_parquet_checked(path: str | Path, required: Sequence[str], what: str,
                          numeric: Sequence[str], rebuild: str) -> pl.DataFrame:
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
    _problems(p, schema, required, what, numeric, rebuild)
    try:
        return pl.read_parquet(p)
    except Exception as err:  # a truncated or corrupt body behind a readable footer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"{p}: unreadable parquet ({first})") from None


def read_dataset_file(path: str | Path, target: str = TARGET) -> pl.DataFrame:
    """A dataset parquet (`bot dataset --out`) for training: META, every feature of this
    code (a model is trained on FEATURES), the judged pr_test and the `target`."""
    cols = (*META, *FEATURES, *dict.fromkeys((JUDGE, target)))
    return _read_parquet_checked(path, cols, "dataset's", ("window_id", *FEATURES, JUDGE, target), "bot dataset")


def read_stats_file(path: str | Path, features: Sequence[str] = FEATURES) -> pl.DataFrame:
    """A pair-statistics parquet (`bot stats --out`): coin1, coin2 and `features`, every
    feature column present numeric. Scoring reads it with BASE_FEATURES, then checks the
    model's own saved list (`check_columns`): an old file without a later column scores
    with an old model that does not use it."""
    return _read_parquet_checked(path, ("coin1", "coin2", *features), "statistics", tuple(dict.fromkeys((*features, *FEATURES))),
                                 "bot stats")


def check_columns(frame: pl.DataFrame, path: str | Path, features: Sequence[str]) -> pl.DataFrame:
    """`frame` (read from `path`) if it has every one of `features`, numeric; else a DataFileError."""
    _problems(Path(path), frame.schema, features, "model's feature", features, "bot stats")
    return frame


def _target(cfg: BotConfig) -> str:
    t = cfg.model.target
    if t not in TARGETS:  # the config type allows only these; a hand-built config may not
        raise ModelError(f"model.target must be one of {list(TARGETS)} (got {t!r})")
    return t


def _xy(frame: pl.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    x = frame.select([pl.col(f).cast(pl.Float64) for f in FEATURES]).to_numpy()
    y = frame.get_column(target).cast(pl.Float64).to_numpy()
    return x, y


def fit_catboost(frame: pl.DataFrame, cfg: BotConfig, thread_count: int = -1) -> Any:
    """CatBoost on every row with a finite `model.target`, features FEATURES."""
    from catboost import CatBoostRegressor

    m = cfg.model
    target = _target(cfg)
    if target not in frame.columns:
        raise ModelError(f"the dataset has no {target} column (model.target)")
    train = frame.filter(pl.col(target).is_not_null() & pl.col(target).is_finite())
    if train.height < 10:
        raise ModelError(f"too few training rows with a target {target} ({train.height})")
    x, y = _xy(train, target)
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


def greedy_picks(frame: pl.DataFrame, score: np.ndarray, k: int, higher_is_better: bool = True,
                 seed: int | Sequence[int] = 0) -> list[int]:
    """Row indices picked greedily by score with no token used twice, at most k
    (`bot.selection.evaluate.greedy` on the frame's coin1 / coin2).

    Equal scores are taken in a random order seeded by `seed` (never by row order:
    the rows are sorted by name, so a stable sort would pick alphabetically)."""
    return greedy(frame["coin1"].to_list(), frame["coin2"].to_list(), score, k, higher_is_better, seed)


def _pick_profit(frame: pl.DataFrame, picks: list[int]) -> float:
    if not picks:
        return 0.0
    pr = frame.get_column("pr_test").to_numpy()[picks]
    pr = np.where(np.isfinite(pr), pr, 0.0)
    return float(pr.mean())


@dataclass
class WalkForward:
    per_window: pl.DataFrame  # window_id, method, rows, rmse, sel_value, sel_n, pick_profit, picks
    summary: pl.DataFrame  # method, rmse, sel_value, sel_n, pick_profit, diff_vs_random, se
    importances: list[tuple[str, float]]
    promoted: bool
    reason: str
    target: str = TARGET
    k: int = 0  # pairs picked per window (selection.max_pairs)
    rows: dict[int, int] = field(default_factory=dict)  # validation window -> its rows with a target
    threshold: float = 0.0  # selection.thresholds.pred (sel_value / sel_n)
    fallback_skill: str = ""  # the fallback rule against random on the same windows


def walk_forward(frame: pl.DataFrame, cfg: BotConfig, *, min_train_windows: int = 2, random_draws: int = 200,
                 thread_count: int = -1) -> WalkForward:
    target = _target(cfg)
    for c in (target, JUDGE):
        if c not in frame.columns:
            raise ModelError(f"the dataset has no {c} column")
    data = frame.filter(pl.col(target).is_not_null() & pl.col(target).is_finite()).sort(["window_id", "coin1", "coin2"])
    wins = sorted(data["window_id"].unique().to_list())
    if len(wins) <= min_train_windows:
        raise ModelError(f"walk-forward needs more than {min_train_windows} windows with targets (got {len(wins)})")
    thr = cfg.selection.thresholds.pred
    k = cfg.selection.max_pairs
    seed = cfg.model.random_seed
    rows = []
    n_rows: dict[int, int] = {}
    importances = np.zeros(len(FEATURES))

    def row(val: pl.DataFrame, w: int, method: str, picks: list[int] | None, rmse: float | None = None,
            sel_value: float | None = None, sel_n: int | None = None) -> dict[str, Any]:
        names = [f"{val['coin1'][i]}/{val['coin2'][i]}" for i in picks] if picks is not None else None
        return {"window_id": w, "method": method, "rows": val.height, "rmse": rmse, "sel_value": sel_value,
                "sel_n": sel_n, "pick_profit": None if picks is None else _pick_profit(val, picks), "picks": names}

    for w in wins[min_train_windows:]:
        val = data.filter(pl.col("window_id") == w)
        # rows whose test had ended by this window's valid_time (window_id < w when the step is test_days)
        train = data.filter((pl.col("window_id") != w) & (pl.col("end_time") <= val["valid_time"][0]))
        n_rows[w] = val.height
        judge = val.get_column(JUDGE).cast(pl.Float64).fill_null(np.nan).to_numpy()
        xt, yt = _xy(train, target)
        xv, yv = _xy(val, target)
        cb = fit_catboost(train, cfg, thread_count)
        importances += np.asarray(cb.get_feature_importance())
        ws = (seed, int(w))  # the tie-break order of this window (the same for every method)
        p_cb = np.asarray(cb.predict(xv))
        for name, p in (("catboost", p_cb), ("ridge", np.asarray(_ridge(xt, yt)(xv)))):
            sel = p > thr
            rows.append(row(val, w, name, greedy_picks(val, p, k, seed=ws), float(np.sqrt(np.mean((p - yv) ** 2))),
                            float(np.nansum(judge[sel])), int(sel.sum())))
        # what the re-selection job trades: with this model, and with the fallback rule (the gate's judges)
        for name, pred in (("selection", p_cb), ("fallback", None)):
            picks = job_picks(val, cfg, pred)
            rows.append({**row(val, w, name, picks), "pick_profit": _pick_profit(val, picks) if picks else None})
        mean = float(np.mean(yt))  # RMSE only: a constant ranks nothing (module docstring)
        rows.append(row(val, w, "mean", None, float(np.sqrt(np.mean((mean - yv) ** 2)))))
        pv = np.maximum(val["pv_1"].fill_null(np.nan).to_numpy(), val["pv_2"].fill_null(np.nan).to_numpy())
        rows.append(row(val, w, "lowest_pvalue", greedy_picks(val, pv, k, higher_is_better=False, seed=ws)))
        rows.append(row(val, w, "pr_rat_all", greedy_picks(val, val["pr_rat_all"].fill_null(np.nan).to_numpy(), k,
                                                      seed=ws)))
        rows.append({**row(val, w, "random", None),
                     "pick_profit": random_picks(val, k, random_draws, 1000 + int(w)).per_pick})
        rows.append(row(val, w, "hindsight", greedy_picks(val, judge, k, seed=ws)))
    schema: dict[str, Any] = {"window_id": pl.Int64, "method": pl.Utf8, "rows": pl.Int64, "rmse": pl.Float64,
              "sel_value": pl.Float64, "sel_n": pl.Int64, "pick_profit": pl.Float64, "picks": pl.List(pl.Utf8)}
    per = pl.DataFrame(rows, schema=schema)
    rnd = per.filter(pl.col("method") == "random").select("window_id", pl.col("pick_profit").alias("rand"))
    paired = per.join(rnd, on="window_id").with_columns((pl.col("pick_profit") - pl.col("rand")).alias("diff"))
    n_w = len(wins) - min_train_windows

    def total(c: str) -> pl.Expr:  # null for a method that does not have the figure (not 0)
        return pl.when(pl.col(c).is_null().all()).then(None).otherwise(pl.col(c).sum()).alias(c)

    summary = paired.group_by("method", maintain_order=True).agg(
        pl.col("rmse").mean(), total("sel_value"), total("sel_n"), pl.col("pick_profit").mean(),
        pl.col("diff").mean().alias("diff_vs_random"),
        # over the windows where the method picked something (a window it sat out has no per-pick profit)
        (pl.col("diff").std() / pl.col("diff").count().cast(pl.Float64).sqrt()).alias("se"),
    )

    def series(method: str) -> list[float | None]:
        return per.filter(pl.col("method") == method).sort("window_id")["pick_profit"].to_list()

    gate = gate_decision(series("selection"), series("random"), series("fallback"), cfg.model.min_skill_se)
    fb = gate_decision(series("fallback"), series("random"), series("fallback"), cfg.model.min_skill_se,
                       "the fallback rule")
    fb_text = skill_line(fb, cfg.model.min_skill_se, cfg.model.fallback_sort)
    imp = sorted(zip(FEATURES, (importances / max(n_w, 1)).tolist(), strict=True), key=lambda t: -t[1])
    return WalkForward(per, summary, imp, gate.promoted, gate.reason, target, k, n_rows, thr, fb_text)


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


def windows_path(model_path: str | Path) -> Path:
    """The walk-forward's per-window rows beside a model: model-X.json -> model-X.windows.parquet."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".json") + ".windows.parquet")


def save_model(model: Any, directory: str | Path, meta: dict[str, Any], keep_last: int = 5,
               now: dt.datetime | None = None, per_window: pl.DataFrame | None = None,
               features: Sequence[str] = FEATURES) -> Path:
    """Write model (+ the walk-forward's `per_window` rows) + metadata atomically, the
    metadata last; returns the model path. Prunes old models. `features`: the columns
    the model was fitted on, in order (fit_catboost: FEATURES)."""
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
    extra: dict[str, Any] = {}
    if per_window is not None:
        wp = windows_path(final)
        wtmp = d / f".{wp.name}.tmp"
        per_window.write_parquet(wtmp)
        with wtmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(wtmp, wp)
        extra["windows_file"] = wp.name
    full = {**meta, **extra, "features": list(features), "created_at": created.isoformat(), "versions": _versions(),
            "sha256": _sha256(final), "model_file": final.name}
    atomic_write_text(d / f"{name}.meta.json", json.dumps(full, indent=2, default=str))
    prune(d, keep_last)
    return final


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest models, never the newest promoted one (the
    model the re-selection uses, which `bot train` says it keeps)."""
    metas = sorted(directory.glob("model-*.meta.json"))
    promoted = [m for m in metas if _is_promoted(m)]
    keep = {promoted[-1]} if promoted else set()
    removed = []
    for meta in metas[:-keep_last] if keep_last > 0 else []:
        if meta in keep:
            continue
        model = meta.with_name(meta.name.replace(".meta.json", ".json"))
        for p in (model, windows_path(model), meta):
            if p.exists():
                p.unlink()
                removed.append(p)
    return removed


def _is_promoted(meta: Path) -> bool:
    try:
        return bool(json.loads(meta.read_text()).get("promoted"))
    except (OSError, ValueError):
        return False


def load_model(path: str | Path, expected_features: Sequence[str] = FEATURES) -> LoadedModel:
    """Load one model file, verifying its metadata, hash and feature names: every feature
    the model uses must be one this code computes (`expected_features`); a model saved
    before a feature was added uses fewer and still loads (it scores on its own list)."""
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
    feats = meta.get("features")
    if not isinstance(feats, list) or not feats or len(set(feats)) != len(feats):
        raise ModelError(f"model features do not match this code: the metadata lists {feats!r}: {meta_path}")
    unknown = [f for f in feats if f not in expected_features]
    if unknown:
        raise ModelError(f"model features do not match this code: it uses {unknown}, which this code does not "
                         f"compute (it computes {list(expected_features)}): {p}")
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

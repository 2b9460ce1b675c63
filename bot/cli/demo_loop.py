"""The whole loop on the demo market: research, dataset, model, re-selection.

The demo market is short (30 days by default), so the windows are scaled to it:
z windows of 24/36/48 one-hour bars, a re-selection train window of 30 % of the
market, rolling dataset windows of 30 % train / 10 % test. Everything else is the
configured behaviour.
"""

from __future__ import annotations

import datetime as dt
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

from bot.config import BotConfig
from bot.config.model import DatabaseConfig
from bot.utils.files import atomic_write_text

# The demo ranks by the distance method (Gatev et al. 2006): the smallest std of the
# normalised-price gap first. On the demo market the planted pairs are the ones with a
# stationary gap (docs/selection.md "The demo market"); `bot evaluate` on the demo's
# database shows how this rule and the notebook's pr_rat_all fare against random.
DEMO_SORT = "-std"


def demo_config(cfg: BotConfig, work: Path, days: float, database: DatabaseConfig | None = None) -> BotConfig:
    """The configured behaviour with windows scaled to the demo market, paths inside `work`
    (absolute, so the written config works from any directory) and `database`."""
    train = max(4, int(days * 0.3))
    test = max(2, int(days * 0.1))
    work = work.resolve()
    db = database or cfg.database
    # absolute even with a DSN: a DSN with a password is not written, and the file then
    # falls back to this directory unless the environment gives the DSN again
    db = db.model_copy(update={"embedded_dir": str(Path(db.embedded_dir).resolve())})
    return cfg.model_copy(update={
        "database": db,
        "strategy": cfg.strategy.model_copy(update={"wind": 36, "min_order_size": 0.0, "sl_method": "cooldown"}),
        "research": cfg.research.model_copy(update={"winds": (24, 36, 48), "iters": 10}),
        "selection": cfg.selection.model_copy(update={
            "train_days": train, "sort_key": DEMO_SORT, "candidates_file": str(work / "candidates.txt"),
            "token_pairs_file": str(work / "token_pairs.txt")}),
        "model": cfg.model.model_copy(update={"train_days": train, "test_days": test, "dir": str(work / "models"),
                                             "fallback_sort": DEMO_SORT}),
    })


def write_demo_config(dcfg: BotConfig, work: Path) -> Path:
    """`work`/config.yaml: the demo's effective config, so the user can go on where it stopped.

    A DSN carrying a password (from BOT_DATABASE_DSN) is never written: the file says
    `dsn: null` then, and the environment must provide it again."""
    from bot.config.secrets import dsn_has_password

    data = dcfg.model_dump(mode="json")
    if data["database"]["dsn"] and dsn_has_password(data["database"]["dsn"]):
        data["database"]["dsn"] = None
    path = work / "config.yaml"
    text = ("# written by `bot demo`: the effective config of the demo (windows scaled to its market)\n"
            + yaml.safe_dump(data, sort_keys=False))
    atomic_write_text(path, text)
    return path


def next_steps(config_path: Path, market: Any, dcfg: BotConfig, pairs: list[tuple[str, str]]) -> list[str]:
    """Commands that work on the demo's database as it is (the market ends at market.end)."""
    end = market.end.isoformat()
    start = (market.end - dt.timedelta(days=dcfg.selection.train_days)).isoformat()
    t1, t2 = pairs[0] if pairs else (market.groups[0].leader, market.groups[0].members[0])
    q = shlex.quote
    c = f"bot --config {q(str(config_path))}"
    steps = [f"{c} data info",
             f"{c} reselect --as-of {q(end)} --dry-run",
             f"{c} reselect --as-of {q(end)}",
             f"{c} backtest {q(t1)} {q(t2)} --start {q(start)} --end {q(end)}",
             f"{c} jobs"]
    dsn = dcfg.database.dsn
    if dsn:
        from bot.config.secrets import dsn_has_password

        if dsn_has_password(dsn):  # the file holds no DSN: the commands need it from the environment
            steps.insert(0, "# the config holds no DSN with a password: export BOT_DATABASE_DSN first")
    return steps


async def run_loop(db: Any, cfg: BotConfig, market: Any, work: Path,
                   dcfg: BotConfig | None = None) -> dict[str, Any]:
    from bot.research import model as mdl
    from bot.research.dataset import build_dataset
    from bot.research.pairs_file import format_pairs
    from bot.selection.reselect import reselect

    days = (market.end - market.start).total_seconds() / 86400
    dcfg = dcfg or demo_config(cfg, work, days)
    toks = market.symbols
    pairs = [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]]
    (work / "candidates.txt").write_text(format_pairs(pairs))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    print(f"[4/6] dataset: {len(pairs)} pairs over rolling windows of {dcfg.model.train_days}+{dcfg.model.test_days} days",
          flush=True)
    import polars as pl

    try:
        _, frame = await build_dataset(db, dcfg, pairs, market.start + dt.timedelta(days=2), market.end)
    except ValueError as err:  # a market too short for one window
        print(f"  {err}: no dataset")
        frame = pl.DataFrame()
    timings["dataset_s"] = time.perf_counter() - t
    t = time.perf_counter()
    print(f"[5/6] model: walk-forward validation on {frame.height} rows, then the final fit", flush=True)
    promoted = False
    if frame.height and frame["window_id"].n_unique() > 2:
        from bot.selection.evaluate import GATE_VERSION

        wf = mdl.walk_forward(frame, dcfg, min_train_windows=2, random_draws=100)
        from bot.cli.model_cmds import print_walk_forward

        print_walk_forward(wf)
        promoted = wf.promoted
        mdl.save_model(mdl.fit_catboost(frame, dcfg), dcfg.model.dir, {"promoted": promoted, "gate": wf.reason,
                                                                   "fallback_skill": wf.fallback_skill, "gate_version": GATE_VERSION},
                       dcfg.model.keep_last)
    else:
        print("  too few windows for a walk-forward: no model (the re-selection uses the fallback sort)")
    timings["model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    print("[6/6] re-selection", flush=True)
    rep = await reselect(db, dcfg, now=market.end)
    timings["reselect_s"] = time.perf_counter() - t
    return {"report": rep, "timings": timings, "promoted": promoted, "cfg": dcfg}


def print_outcome(result: dict[str, Any], market: Any) -> None:
    from bot.core.db.market import token_of

    rep = result["report"]
    truth = {tuple(sorted(p)) for p in market.cointegrated_pairs()}
    print(f"model: {rep.model}")
    print("chosen pairs (truly cointegrated in the demo manifest?):")
    for r in rep.pairs:
        a, b = token_of(r["token_1"]), token_of(r["token_2"])
        mark = "yes" if tuple(sorted((a, b))) in truth else "no"
        print(f"  {a:8s} {b:8s} wind {r['wind']:3d} {r['spr_method']:4s} in {r['thresh_in']:.2f} "
              f"out {r['thresh_out']:.2f} {r['open_method']:16s} cointegrated: {mark}")
    print("manifest groups: " + "; ".join(f"{g.leader}: {', '.join(g.members)}" for g in market.groups))
    print(f"token_pairs.txt: {result['cfg'].selection.token_pairs_file}")
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items()))

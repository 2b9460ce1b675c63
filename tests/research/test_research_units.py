"""Pairs files, the JSONL log, parameter draws, and open-time features without look-ahead."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bot.analysis.open_time_features import FEATURE_NAMES, open_time_features
from bot.config import load
from bot.config.loader import example_path
from bot.research.jsonl import JsonlLog
from bot.research.pairs_file import PairsFileError, read_pairs
from bot.research.params import sample_params
from bot.utils.pair_trading import get_open_time_stats
from tests.cli.test_cli import run_bot


def test_pairs_file(tmp_path: Path) -> None:
    p = tmp_path / "pairs.txt"
    p.write_text("# candidates\nJASMY VET\nBTC_USDT ETHUSDT  # comment\n\nJASMY VET\n")
    assert read_pairs(p) == [("JASMY", "VET"), ("BTC", "ETH")]
    p.write_text("JASMY VET\nADA\n")
    with pytest.raises(PairsFileError, match=r"pairs.txt, line 2: expected two tokens"):
        read_pairs(p)
    p.write_text("JASMY JASMY\n")
    with pytest.raises(PairsFileError, match="line 1"):
        read_pairs(p)


def test_malformed_pairs_file_runs_nothing(tmp_path: Path) -> None:
    p = tmp_path / "pairs.txt"
    p.write_text("A B\nC D E\n")
    res = run_bot("sweep", "--pairs", str(p), env={"BOT_DATABASE_DSN": "postgresql://u@127.0.0.1:1/x"})
    assert res.returncode == 2 and "line 2" in res.stderr and "127.0.0.1:1" not in res.stderr


def test_jsonl_never_keeps_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    log = JsonlLog(path)
    assert log.append([{"a": 1, "x": float("nan")}, {"a": 2}]) == 2
    with path.open("ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"a": 3, "b": [1, 2')
    log2 = JsonlLog(path)
    assert log2.repaired_bytes == len(b'{"a": 3, "b": [1, 2')
    log2.append([{"a": 4}])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == [{"a": 1, "x": None}, {"a": 2}, {"a": 4}]


def test_parameter_draws_are_seeded_and_in_range() -> None:
    cfg = load(example_path())
    a = sample_params(cfg.research, cfg.strategy, 50, 7)
    assert a == sample_params(cfg.research, cfg.strategy, 50, 7)
    assert a != sample_params(cfg.research, cfg.strategy, 50, 8)
    for p in a:
        assert 1.6 <= p.in_ <= 2.75 and 0 <= p.out_ <= 0.5 and p.out_ < p.in_ and 0.05 <= p.dist_in <= 1.0
        assert p.wind in (64, 72, 96) and p.spr_method in ("dist", "lr") and round(p.in_, 2) == p.in_
    grid = sample_params(cfg.research, cfg.strategy, 0, 0, mode="grid")
    assert len(grid) == 2 * 3 * 3 * 4 * 3 * 3


def _market(seed: int = 1, days: int = 200):
    rng = np.random.default_rng(seed)
    n = days * 24
    bar_ts = 1_700_000_000 - 1_700_000_000 % 3600 + np.arange(n) * 3600.0
    x = np.cumsum(rng.normal(0, 0.01, n)) + 2.0
    u = np.zeros(n)
    for i in range(1, n):
        u[i] = 0.9 * u[i - 1] + rng.normal(0, 0.005)
    c2, c1 = np.exp(x), np.exp(0.1 + 0.9 * x + u)
    tick_ts = bar_ts[0] + np.arange(n * 12) * 300.0
    m1, m2 = np.repeat(c1, 12), np.repeat(c2, 12)
    refs = {"btc": np.exp(np.cumsum(rng.normal(0, 0.01, n)) + 10)}
    return bar_ts, c1, c2, tick_ts, m1, m2, refs


def test_features_use_only_the_past() -> None:
    bar_ts, c1, c2, tick_ts, m1, m2, refs = _market()
    t0 = float(bar_ts[4500] + 1234)  # 187 days of history
    base = open_time_features(t0, bar_ts, c1, c2, 3600, 72, tick_ts, m1, m2, refs, {"pos_side": 2, "qty_1": 10, "qty_2": 5})
    assert set(base) == set(FEATURE_NAMES)
    missing = {k for k, v in base.items() if not math.isfinite(v)}
    assert missing == {"eth_corr_1", "eth_corr_2", "sol_corr_1", "sol_corr_2"}  # only BTC was given
    # change every bar that is not complete at t0 and every tick at or after t0
    fb = bar_ts + 3600 > t0
    ft = tick_ts >= t0
    c1b, c2b, m1b, m2b = c1.copy(), c2.copy(), m1.copy(), m2.copy()
    c1b[fb] *= 3.0
    c2b[fb] = 0.01
    m1b[ft] *= 2.0
    m2b[ft] = -1.0
    refs_b = {"btc": np.where(fb, 1.0, refs["btc"])}
    pert = open_time_features(t0, bar_ts, c1b, c2b, 3600, 72, tick_ts, m1b, m2b, refs_b, {"pos_side": 2, "qty_1": 10, "qty_2": 5})
    for k in FEATURE_NAMES:
        assert (math.isnan(base[k]) and math.isnan(pert[k])) or base[k] == pert[k], k
    assert base["beta_1_180d"] == pytest.approx(0.9, rel=0.05)
    assert base["pv_1"] < 0.01 and base["coint_180d"] == 1.0
    assert base["history_days_180d"] == pytest.approx(180.0) and base["short_history_180d"] == 0.0


def test_short_history_is_flagged_and_degenerate_data_is_nan() -> None:
    bar_ts, c1, c2, *_ = _market(days=40)
    f = open_time_features(float(bar_ts[-1] + 3600), bar_ts, c1, c2, 3600, 72)
    assert f["short_history_180d"] == 1.0 and f["history_days_180d"] < 41
    flat = open_time_features(float(bar_ts[-1] + 3600), bar_ts, np.ones_like(c1), np.ones_like(c2), 3600, 72)
    assert math.isnan(flat["pv_1"]) and math.isnan(flat["hurst_wind"])
    few = open_time_features(float(bar_ts[5]), bar_ts, c1, c2, 3600, 72)
    assert all(math.isnan(v) for k, v in few.items() if k not in ("history_days_180d", "short_history_180d"))


def test_notebook_call_get_open_time_stats() -> None:
    bar_ts, c1, c2, tick_ts, m1, m2, refs = _market(days=60)
    agg_df = pl.DataFrame({"ts": bar_ts.astype(np.int64), "A": c1, "B": c2, "BTC": refs["btc"]})
    tick_df = pl.DataFrame({"ts": tick_ts.astype(np.int64), "A": m1, "B": m2})
    open_time = float(bar_ts[1000])
    f = get_open_time_stats("A", "B", open_time, tick_df, agg_df, None, {"wind": 72, "tf": "1h", "pos_side": 1},
                            {"bybit_linear": {}})
    direct = open_time_features(open_time, bar_ts, c1, c2, 3600, 72, tick_ts, m1, m2, {"btc": refs["btc"]},
                                {"pos_side": 1})
    assert f.keys() == direct.keys()
    for k in f:
        assert (math.isnan(f[k]) and math.isnan(direct[k])) or f[k] == direct[k], k
    assert math.isfinite(f["btc_corr_1"]) and math.isnan(f["eth_corr_1"])

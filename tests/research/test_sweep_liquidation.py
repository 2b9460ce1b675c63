"""The research path (pair_job: sweeps, `bot backtest`) sizes with the configured
maintenance_margin_rate, so liquidations happen there exactly as in `backtest`."""

from __future__ import annotations

import numpy as np

from bot.analysis.backtesting import run_backtest
from bot.config import load
from bot.config.loader import example_path
from bot.research.pair_job import (
    PairInput,
    run_pair,
    signal_params,
    slice_ticks,
    window_sizing,
    z_ticks,
)
from bot.research.params import ParamSet

T0 = 1_735_689_600


def _pair(n_bars: int = 400, seed: int = 3) -> PairInput:
    """Bars-only hourly data (each bar close one tick, half spread 1 bp), a noisy pair."""
    rng = np.random.default_rng(seed)
    common = np.cumsum(rng.normal(0, 0.01, n_bars))
    c1 = np.exp(1.0 + common + np.cumsum(rng.normal(0, 0.01, n_bars)))
    c2 = np.exp(0.5 + common + np.cumsum(rng.normal(0, 0.01, n_bars)))
    ts = T0 + 3600.0 * np.arange(n_bars)
    return PairInput("A", "B", ts, c1 * 0.9999, c1 * 1.0001, c2 * 0.9999, c2 * 1.0001, ts, c1, c2,
                     train_start=ts[0], valid_time=ts[300], end_time=ts[-1] + 3600, qty_step_1=0.001,
                     qty_step_2=0.001, bars_only=True)


def test_sweep_sizing_carries_the_configured_rate() -> None:
    cfg = load(example_path())
    inp = _pair()
    s = cfg.strategy.model_copy(update={"leverage": 50.0, "min_order_size": 0.0, "sl_std": None, "sl_dist": None,
                                        "sl_method": "cooldown", "qty_method": "usdt_neutral"})
    assert window_sizing(inp, s, inp.train_start, 24).maintenance_margin_rate == 0.01
    off = s.model_copy(update={"maintenance_margin_rate": None})
    assert window_sizing(inp, off, inp.train_start, 24).maintenance_margin_rate is None
    p = ParamSet(0, "1h", 24, "dist", 1.5, 0.2, "direct", "direct", 0.3, 0.3)
    ticks = z_ticks(inp, {p.z_key}, "1h", 1)[p.z_key]
    on = run_backtest(ticks, signal_params(p, s), window_sizing(inp, s, inp.train_start, 24))
    free = run_backtest(ticks, signal_params(p, off), window_sizing(inp, off, inp.train_start, 24))
    assert on.liquidations > 0 and (on.trades["reason"] == 4).sum() == on.liquidations
    assert free.liquidations == 0 and (free.trades["reason"] == 4).sum() == 0
    # the sweep (run_pair) over the train window: its summary is the train slice's backtest
    # with the rate; without it, another result
    lo, mid = (int(np.searchsorted(inp.tick_ts, t)) for t in (inp.train_start, inp.valid_time))
    sliced = run_backtest(slice_ticks(ticks, lo, mid), signal_params(p, s), window_sizing(inp, s, inp.train_start, 24))
    out_on = run_pair(inp, [p], p, s, with_features=False)
    out_off = run_pair(inp, [p], p, off, with_features=False)
    assert sliced.liquidations > 0 and out_on.summaries[0]["trades"] == sliced.trades.height
    assert out_on.summaries[0]["skipped_entries"] == sliced.skipped_entries
    assert out_on.summaries[0]["trades"] != out_off.summaries[0]["trades"]

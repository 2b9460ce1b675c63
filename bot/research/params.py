"""Parameter sets of a sweep (selection.md section 4): seeded random or grid draws."""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass
from typing import Any

from bot.config.model import ResearchConfig, StrategyConfig


@dataclass(frozen=True)
class ParamSet:
    """One parameter set; thresholds symmetric (in_, out_) as in the notebook."""

    param_id: int
    tf: str
    wind: int
    spr_method: str
    in_: float
    out_: float
    open_method: str
    close_method: str
    dist_in: float
    dist_out: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def z_key(self) -> tuple[str, int]:
        return (self.spr_method, self.wind)


def default_params(s: StrategyConfig) -> ParamSet:
    """The pair's default parameters from config (pr_ind)."""
    return ParamSet(-1, s.tf, s.wind, s.spr_method, s.thresh_in, s.thresh_out, s.open_method, s.close_method,
                    s.dist_in, s.dist_out)


def sample_params(r: ResearchConfig, s: StrategyConfig, iters: int, seed: int, mode: str = "random") -> list[ParamSet]:
    """`iters` random sets (uniform ranges rounded to 2 decimals), or the grid.

    The same (config, iters, seed) always gives the same list. out_ is kept below in_.
    """
    if mode == "grid":
        ins = _grid(r.in_range, 4)
        outs = _grid(r.out_range, 3)
        dists = _grid(r.dist_range, 3)
        combos = itertools.product(r.spr_methods, r.winds, r.open_methods, ins, outs, dists)
        out = []
        for k, (m, w, om, i, o, d) in enumerate(combos):
            out.append(ParamSet(k, s.tf, int(w), m, i, min(o, round(i - 0.01, 2)), om, s.close_method, d, d))
        return out[:iters] if iters else out
    rng = random.Random(seed)
    sets = []
    for k in range(iters):
        m = rng.choice(list(r.spr_methods))
        w = int(rng.choice(list(r.winds)))
        om = rng.choice(list(r.open_methods))
        i = round(rng.uniform(*r.in_range), 2)
        o = min(round(rng.uniform(*r.out_range), 2), round(i - 0.01, 2))
        d = round(rng.uniform(*r.dist_range), 2)
        sets.append(ParamSet(k, s.tf, w, m, i, o, om, s.close_method, d, d))
    return sets


def _grid(bounds: tuple[float, float], n: int) -> list[float]:
    lo, hi = bounds
    if n == 1 or hi == lo:
        return [round(lo, 2)]
    return [round(lo + (hi - lo) * k / (n - 1), 2) for k in range(n)]

"""The batch loop's block skip gives the tick loop's result to the bit.

The skip steps over blocks of ticks on the state machine's own rules
(signals.machine_skip) and a liquidation bound (backtesting._liq_clear); any rule
it gets wrong shows here as a trade that differs. Scenarios are random but seeded:
z paths that cross every band, null z runs, invalid prices, latency, stops of both
kinds, cooldown and leave, reverse entries and exits, leverage high enough to
liquidate, and block sizes from 1 tick to longer than a position.
"""

from __future__ import annotations

import numpy as np
import pytest

from bot.analysis.backtesting import (
    SizingParams,
    TickArrays,
    price_blocks,
    run_backtest_rows,
    tick_blocks,
    z_blocks,
)
from bot.analysis.signals import SignalParams


def scenario(seed: int, grid: float = 0.0) -> tuple[TickArrays, SignalParams, SizingParams]:
    """A random backtest; with `grid` > 0, z and every threshold lie on multiples of it, so
    z lands exactly on thresholds (where a strict comparison differs from a loose one)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2_000, 12_000))
    ts = 1.7e9 + np.cumsum(rng.choice([1.0, 5.0, 30.0], n))
    phi = rng.uniform(0.95, 0.999)
    sd = rng.uniform(0.05, 0.3)
    z = np.empty(n)
    z[0] = 0.0
    shocks = rng.normal(0, sd, n) + rng.normal(0, 2.0, n) * (rng.random(n) < 0.002)
    for i in range(1, n):
        z[i] = phi * z[i - 1] + shocks[i]
    z *= rng.uniform(0.5, 2.0) / max(np.std(z), 1e-9)
    for _ in range(int(rng.integers(0, 6))):  # runs of null z
        a = int(rng.integers(0, n))
        z[a:a + int(rng.integers(1, 400))] = np.nan
    # leg 1 moves with z (a spread that trades), leg 2 a random walk
    p2 = 10.0 * np.exp(np.cumsum(rng.normal(0, 4e-4, n)))
    p1 = 2.0 * np.exp(np.log(p2 / 10.0) + 0.02 * np.nan_to_num(z))
    half = rng.uniform(1e-5, 5e-4)
    bid1, ask1, bid2, ask2 = p1 * (1 - half), p1 * (1 + half), p2 * (1 - half), p2 * (1 + half)
    bad = rng.random(n) < 0.003
    bid1[bad] = np.where(rng.random(int(bad.sum())) < 0.5, 0.0, np.nan)
    beta = rng.uniform(0.5, 1.5, n)
    def g(v: float) -> float:
        return float(np.round(v / grid) * grid) if grid else v

    if grid:
        z = np.round(z / grid) * grid
    inn = g(float(rng.uniform(0.8, 2.5)))
    out = g(float(rng.uniform(-0.2, min(0.8, inn - 0.1))))
    if not out < inn:
        out = inn - max(grid, 0.1)
    methods = ("direct", "reverse_static", "reverse_dynamic")
    sig = SignalParams(
        -inn, -out, inn, out, bool(rng.random() < 0.9), bool(rng.random() < 0.9),
        methods[int(rng.integers(0, 3))], methods[int(rng.integers(0, 3))],
        g(float(rng.uniform(0, 0.6))), g(float(rng.uniform(0, 0.6))),
        None if rng.random() < 0.3 else g(float(rng.uniform(inn + 0.2, inn + 2.5))),
        None if rng.random() < 0.3 else max(g(float(rng.uniform(0.3, 2.0))), grid or 0.3),
        float(rng.choice([0.0, 30.0, 600.0])), ("leave", "cooldown")[int(rng.integers(0, 2))],
        float(rng.choice([0.0, 0.0, 10.0])),
    )
    size = SizingParams(1000.0, 100.0, 5.0, float(rng.choice([2.0, 10.0, 50.0])),
                        ("usdt_neutral", "vol_neutral")[int(rng.integers(0, 2))], 0.02, 0.03, 0.00055,
                        0.01, 0.1, maintenance_margin_rate=float(rng.choice([0.005, 0.05, 0.3])))
    return TickArrays(ts, z, bid1, ask1, bid2, ask2, beta), sig, size


def _same(a, b) -> None:
    assert a.rows.shape == b.rows.shape
    assert np.array_equal(a.rows, b.rows, equal_nan=True)
    assert a.skips == b.skips and a.liquidations == b.liquidations and a.final_balance == b.final_balance


@pytest.mark.parametrize("grid", [0.0, 0.25])
@pytest.mark.parametrize("bs", [1, 3, 16, 64, 1000])
def test_block_skip_equals_the_tick_loop(bs: int, grid: float) -> None:
    seen = {"trades": 0, "liquidations": 0, "stops": 0, "skipped": 0, "entries_refused": 0}
    for seed in range(60):
        ticks, sig, size = scenario(seed, grid)
        for force in (False, True):
            plain = run_backtest_rows(ticks, sig, size, force)
            blocked = run_backtest_rows(ticks, sig, size, force, blocks=tick_blocks(ticks, bs))
            _same(plain, blocked)
            assert plain.blocks_skipped == 0
        seen["trades"] += plain.rows.shape[0]
        seen["liquidations"] += plain.liquidations
        seen["stops"] += int((plain.column("reason") == 2).sum()) if plain.rows.shape[0] else 0
        seen["skipped"] += blocked.blocks_skipped
        seen["entries_refused"] += plain.skipped_entries
    # the scenarios reach every path the skip must respect
    assert seen["trades"] > 500 and seen["liquidations"] > 5 and seen["stops"] > 20, seen
    assert seen["skipped"] > 0, seen


def test_blocks_skip_most_of_a_quiet_series() -> None:
    ticks, sig, size = scenario(7)
    quiet = TickArrays(ticks.ts, np.zeros_like(ticks.z), ticks.bid_1, ticks.ask_1, ticks.bid_2, ticks.ask_2,
                       ticks.beta)
    res = run_backtest_rows(quiet, sig, size, blocks=tick_blocks(quiet, 64))
    assert res.blocks_skipped == (quiet.z.size + 63) // 64 and res.rows.shape[0] == 0


def test_block_extremes_ignore_null_z_and_unfillable_prices() -> None:
    z = np.array([np.nan, 1.0, -2.0, np.nan, np.nan, np.nan, 3.0])
    lo, hi = z_blocks(z, 3)
    assert lo.tolist() == [-2.0, np.inf, 3.0] and hi.tolist() == [1.0, -np.inf, 3.0]
    b = np.array([1.0, 0.0, 2.0, np.nan])
    a = np.array([1.1, 5.0, 2.2, 9.0])
    out = price_blocks(b, a, b.copy(), a.copy(), 2)
    assert out[0].tolist() == [1.0, 1.1, 1.0, 1.1]  # tick 1 has a zero bid: not fillable
    assert out[1].tolist() == [2.0, 2.2, 2.0, 2.2]


def test_blocks_for_other_ticks_are_refused() -> None:
    ticks, sig, size = scenario(1)
    other = TickArrays(*(getattr(ticks, f)[:-100] for f in TickArrays.__dataclass_fields__))
    with pytest.raises(ValueError, match="other ticks"):
        run_backtest_rows(ticks, sig, size, blocks=tick_blocks(other, 64))
    with pytest.raises(ValueError, match="bs"):
        tick_blocks(ticks, 0)


def test_machine_skip_is_exactly_the_machine_stepped() -> None:
    """Whenever machine_skip steps over a block, stepping machine_step over the same z values
    acts on none of them and leaves the same state, in every reachable state. z and the
    thresholds lie on a 0.25 grid, so z sits exactly on thresholds (strict vs loose)."""
    from bot.analysis.signals import (
        ACT_CLOSE,
        ACT_NONE,
        machine_closed,
        machine_opened,
        machine_skip,
        machine_step,
        new_state,
    )

    rng = np.random.default_rng(5)
    grid = np.arange(-16, 17) * 0.25
    skipped = {0.0: 0, 1.0: 0, 2.0: 0}
    for trial in range(6000):
        q = lambda lo, hi: float(rng.integers(int(lo * 4), int(hi * 4) + 1)) / 4  # noqa: E731 (a grid draw)
        inn = q(0.5, 2.5)
        out = q(-0.5, inn - 0.25)
        methods = ("direct", "reverse_static", "reverse_dynamic")
        p = SignalParams(
            -inn, -out, inn, out, bool(rng.random() < 0.85), bool(rng.random() < 0.85),
            methods[int(rng.integers(0, 3))], methods[int(rng.integers(0, 3))], q(0, 2.0), q(0, 2.0),
            None if rng.random() < 0.3 else q(inn + 0.25, inn + 2.0), None if rng.random() < 0.3 else q(0.25, 2.0),
            float(rng.choice([0.0, 5.0, 50.0])), ("leave", "cooldown")[int(rng.integers(0, 2))],
            float(rng.choice([0.0, 0.0, 5.0])),
        ).to_array()
        st = new_state()
        ts = 0.0
        walk = np.clip(np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5], int(rng.integers(1, 80)))), -4, 4)
        for v in walk * float(rng.choice([1.0, -1.0])):  # a reachable state: a random past
            ts += float(rng.choice([1.0, 5.0, 100.0]))
            act = machine_step(st, p, ts, float(v), True)
            if act == ACT_CLOSE:
                machine_closed(st, p)
            elif act != ACT_NONE:
                machine_opened(st, float(v))
        if trial % 2:  # or a state set directly: every combination, rare ones as often as common ones
            st = new_state()
            st[0] = float(rng.integers(0, 3))  # S_POS
            if st[0] == 0.0:
                st[1] = float(rng.integers(0, 3)) if p[6] != 0.0 else 0.0  # S_ARM (reverse entries only)
                st[2] = (p[2] + q(0, 1.5)) if st[1] == 2.0 else (p[0] - q(0, 1.5))  # S_EXT beyond the band
                st[7] = float(rng.choice([0, 0, 1, 2])) if st[1] == 0.0 else 0.0  # S_BLOCK
            else:
                st[3] = float(rng.integers(0, 2)) if p[7] != 0.0 else 0.0  # S_XARM
                out_level = p[3] if st[0] == 2.0 else p[1]
                st[4] = out_level + (-1 if st[0] == 2.0 else 1) * q(0, 1.0)  # S_XEXT past the exit level
                st[5] = (1 if st[0] == 2.0 else -1) * q(0.5, 3.0)  # S_OPENZ
            if rng.random() < 0.1:
                st[6] = ts  # S_ADV: an adverse run timing
            if rng.random() < 0.05:
                st[8], st[9] = float(rng.integers(1, 4)), ts + 5.0  # a pending decision
            v = st[5] if st[0] != 0.0 else 0.0
        # blocks start near the levels the state's rules compare with, so they touch them exactly
        pv = p
        levels = [pv[0], pv[1], pv[2], pv[3], pv[3] - pv[9], pv[1] + pv[9], pv[2] - pv[8], pv[0] + pv[8],
                  st[2] - pv[8], st[2] + pv[8], st[4] - pv[9], st[4] + pv[9], st[5] - pv[11], st[5] + pv[11],
                  pv[10], -pv[10], float(v), float(rng.choice(grid))]
        levels = [x for x in levels if np.isfinite(x)]
        start = float(rng.choice(levels)) + float(rng.choice([-0.25, 0.0, 0.25]))
        steps = rng.choice([-0.25, 0.0, 0.25], int(rng.integers(1, 9)))
        block = start + np.concatenate([[0.0], np.cumsum(steps)[:-1]])
        block[rng.random(block.size) < 0.1] = np.nan
        finite = block[np.isfinite(block)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.inf, -np.inf)
        after_skip = st.copy()
        if not machine_skip(after_skip, p, lo, hi):
            assert np.array_equal(after_skip, st, equal_nan=True)  # a refusal leaves the state alone
            continue
        stepped = st.copy()
        for v in block:
            ts += 5.0
            assert machine_step(stepped, p, ts, float(v), True) == ACT_NONE, (trial, st, block)
        assert np.array_equal(after_skip, stepped, equal_nan=True), (trial, st, block)
        skipped[float(st[0])] += 1
    assert min(skipped.values()) > 100, skipped  # flat, long and short states all skipped often

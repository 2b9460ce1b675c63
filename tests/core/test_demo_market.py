"""The demo market is deterministic and has the structure its manifest claims."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from bot.core.demo_market import bars_from_quotes, generate


@pytest.fixture(scope="module")
def market():
    return generate(n_symbols=30, days=30, quote_interval_s=60.0, seed=11)


def test_same_seed_same_market() -> None:
    a = generate(n_symbols=10, days=2, quote_interval_s=30, seed=5)
    b = generate(n_symbols=10, days=2, quote_interval_s=30, seed=5)
    c = generate(n_symbols=10, days=2, quote_interval_s=30, seed=6)
    assert a.quotes.equals(b.quotes) and a.manifest() == b.manifest()
    assert not a.quotes.equals(c.quotes)


def test_symbols_spreads_and_volatility(market) -> None:
    assert len(market.symbols) == 30 and {"BTC", "ETH", "SOL"} <= set(market.symbols)
    q = market.quotes.with_columns(((pl.col("ask_price") - pl.col("bid_price"))
                                    / ((pl.col("ask_price") + pl.col("bid_price")) / 2) * 1e4).alias("bp"))
    per = q.group_by("symbol").agg(pl.col("bp").mean())
    assert per["bp"].min() >= 0.9 and per["bp"].max() <= 3.3
    daily = bars_from_quotes(market.quotes, 86400).sort(["symbol", "open_time"])
    vol = daily.group_by("symbol").agg(pl.col("close").log().diff().std().alias("v"))
    assert 0.07 < float(vol["v"].median()) < 0.13  # SYMBOL_VOL = 10 % a day (module docstring)
    inst = market.instruments
    assert (inst["qty_step"] > 0).all() and (inst["min_notional"] == 5.0).all()


def test_groups_are_cointegrated_with_the_manifest_betas() -> None:
    # a long sample (120 days) so that the AR(1) half-life estimate is tight enough to check
    market = generate(n_symbols=30, days=120, quote_interval_s=900.0, seed=11)
    bars = bars_from_quotes(market.quotes, 3600)
    wide = bars.pivot(on="symbol", index="open_time", values="close").sort("open_time")
    for g in market.groups:
        x = np.log(wide[f"{g.leader}USDT"].to_numpy())
        for m, beta, hl in zip(g.members, g.betas, g.half_lives_h, strict=True):
            y = np.log(wide[f"{m}USDT"].to_numpy())
            b, a = np.polyfit(x, y, 1)
            assert b == pytest.approx(beta, rel=0.05), (m, b, beta)
            u = y - beta * x
            u = u - u.mean()
            phi = np.polyfit(u[:-1], u[1:], 1)[0]
            est = -math.log(2) / math.log(phi)
            # delta method: se(hl)/hl = se(phi) / (phi |ln phi|), se(phi) = sqrt((1 - phi^2) / n)
            true_phi = math.exp(-math.log(2) / hl)
            rel_se = math.sqrt((1 - true_phi**2) / u.size) / (true_phi * -math.log(true_phi))
            assert est == pytest.approx(hl, rel=3.5 * rel_se), (m, est, hl, rel_se)


@pytest.mark.parametrize("seed", [7, 8, 21])
def test_the_planted_pairs_are_disjoint_and_findable_in_a_train_window(seed: int) -> None:
    """Eight disjoint (leader, member) pairs; on the last 9 days of 1 h bars (the demo's
    re-selection train window) the distance rule (smallest std of the normalised-price
    gap, est.distance), greedy with no token twice, finds at least 7 of them."""
    from bot.analysis import estimators as est
    from bot.selection.evaluate import greedy

    market = generate(n_symbols=30, days=30, quote_interval_s=600.0, seed=seed)
    planted = {tuple(sorted(p)) for p in market.cointegrated_pairs()}
    names = [t for p in planted for t in p]
    assert len(planted) == 8 and len(names) == len(set(names)) == 16
    bars = bars_from_quotes(market.quotes, 3600)
    wide = bars.pivot(on="symbol", index="open_time", values="close").sort("open_time").tail(9 * 24)
    toks = market.symbols
    pairs = [(a, b) for i, a in enumerate(toks) for b in toks[i + 1:]]
    std = np.array([est.distance(np.log(wide[f"{a}USDT"].to_numpy()), np.log(wide[f"{b}USDT"].to_numpy()))[1]
                    for a, b in pairs])
    picks = greedy([a for a, _ in pairs], [b for _, b in pairs], std, 8, higher_is_better=False)
    found = {tuple(sorted(pairs[i])) for i in picks} & planted
    assert len(found) >= 7, (sorted(found), sorted(planted))
    # and the Engle-Granger test sees the planted spreads as stationary in 9 days (most at 5 %)
    pv = []
    for a, b in planted:
        la, lb = np.log(wide[f"{a}USDT"].to_numpy()), np.log(wide[f"{b}USDT"].to_numpy())
        pv.append(min(est.engle_granger(la, lb).pvalue, est.engle_granger(lb, la).pvalue))
    assert max(pv) < 0.2 and float(np.median(pv)) < 0.05, pv


def test_an_older_group_count_can_still_be_asked_for() -> None:
    m = generate(n_symbols=12, days=3, quote_interval_s=600.0, seed=1)
    assert len(m.groups) == 3  # min(8, (12 - 3) // 3): a third of the names stay independent
    m = generate(n_symbols=12, days=3, quote_interval_s=600.0, seed=1, n_groups=2)
    assert len(m.groups) == 2

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
    assert 0.025 < float(vol["v"].median()) < 0.06
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

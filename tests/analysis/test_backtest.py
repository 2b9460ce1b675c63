"""Backtester: parity with the step interface, validation, sizing, rounding, funding."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.analysis.backtesting import SizingParams, StreamingBacktest, backtest
from bot.analysis.fills import qty_decimal, round_qty, step_decimals
from bot.analysis.signals import SignalParams


def _random_ticks(seed: int, n: int = 600, null_frac: float = 0.05) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.normal(0, 0.35, n))
    z = z - np.convolve(z, np.ones(25) / 25, mode="same")
    z = z * 2.0
    z[rng.random(n) < null_frac] = np.nan
    ts = 1_700_000_000 + np.cumsum(rng.integers(1, 12, n))
    p1 = 1.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    p2 = 2.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    return pl.DataFrame({
        "ts": ts, "A_bid_price": p1 * 0.9999, "A_ask_price": p1 * 1.0001,
        "B_bid_price": p2 * 0.9998, "B_ask_price": p2 * 1.0002, "z_score": z,
    }).with_columns(pl.col("z_score").fill_nan(None))


params_strategy = st.fixed_dictionaries({
    "in_": st.floats(1.0, 2.5), "out_": st.floats(0.0, 0.6), "asym": st.floats(-0.3, 0.3),
    "open_method": st.sampled_from(["direct", "reverse_static", "reverse_dynamic"]),
    "close_method": st.sampled_from(["direct", "reverse_static", "reverse_dynamic"]),
    "dist_in": st.floats(0.0, 1.0), "dist_out": st.floats(0.0, 1.0),
    "sl_std": st.one_of(st.none(), st.floats(2.6, 4.0)), "sl_dist": st.one_of(st.none(), st.floats(0.2, 2.0)),
    "sl_seconds": st.sampled_from([0, 5, 30]), "sl_method": st.sampled_from(["leave", "cooldown"]),
    "latency_s": st.sampled_from([0, 3, 20]), "long_possible": st.booleans(), "short_possible": st.booleans(),
    "force_close": st.booleans(), "qty_method": st.sampled_from(["usdt_neutral", "vol_neutral"]),
    "min_order_size": st.sampled_from([0.0, 42.0]),
    "leverage": st.sampled_from([2.0, 20.0, 50.0]), "mmr": st.sampled_from([None, 0.0, 0.01, 0.05]),
})


def _kwargs(p: dict) -> dict:
    return dict(
        thresh_low_in=-p["in_"] + p["asym"], thresh_low_out=-p["out_"] + p["asym"] / 2,
        thresh_high_in=p["in_"] + p["asym"], thresh_high_out=p["out_"] + p["asym"] / 2,
        long_possible=p["long_possible"], short_possible=p["short_possible"], balance=100.0, order_size=50.0,
        qty_method=p["qty_method"], std_1=0.05, std_2=0.03, fee_rate=0.001, sl_std=p["sl_std"],
        sl_dist=p["sl_dist"], sl_method=p["sl_method"], sl_seconds=p["sl_seconds"],
        open_method=p["open_method"], close_method=p["close_method"], leverage=p["leverage"], dist_in=p["dist_in"],
        dist_out=p["dist_out"], force_close=p["force_close"], latency_s=p["latency_s"],
        min_order_size=p["min_order_size"], maintenance_margin_rate=p["mmr"],
    )


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 100_000), p=params_strategy)
def test_step_interface_gives_the_batch_trades(seed: int, p: dict) -> None:
    df = _random_ticks(seed)
    kw = _kwargs(p)
    res = backtest(df, "A", "B", 0.1, 0.01, **kw, return_result=True)
    batch = res.trades
    sig = SignalParams(kw["thresh_low_in"], kw["thresh_low_out"], kw["thresh_high_in"], kw["thresh_high_out"],
                       kw["long_possible"], kw["short_possible"], kw["open_method"], kw["close_method"],
                       kw["dist_in"], kw["dist_out"], kw["sl_std"], kw["sl_dist"], kw["sl_seconds"],
                       kw["sl_method"], kw["latency_s"])
    siz = SizingParams(100.0, 50.0, kw["min_order_size"], kw["leverage"], kw["qty_method"], 0.05, 0.03, 0.001, 0.1,
                       0.01, maintenance_margin_rate=kw["maintenance_margin_rate"])
    sb = StreamingBacktest(sig, siz)
    for r in df.iter_rows(named=True):
        sb.on_tick(r["ts"], r["z_score"], r["A_bid_price"], r["A_ask_price"], r["B_bid_price"], r["B_ask_price"])
    stream = sb.finish(kw["force_close"])
    assert stream.equals(batch), (stream, batch)
    assert (sb.liquidations, sb.skips, sb.skipped_entries) == (res.liquidations, res.skips, res.skipped_entries)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), p=params_strategy, cut=st.floats(0.2, 0.9))
def test_no_look_ahead_in_decisions(seed: int, p: dict, cut: float) -> None:
    """Changing every tick after t leaves every trade closed by t unchanged."""
    df = _random_ticks(seed)
    kw = _kwargs(p) | {"force_close": False}
    k = int(cut * df.height)
    t = df["ts"][k]
    rng = np.random.default_rng(seed + 1)
    fut = df.with_columns(
        pl.when(pl.col("ts") > t).then(pl.Series(rng.normal(0, 3, df.height))).otherwise(pl.col("z_score")).alias("z_score"),
        pl.when(pl.col("ts") > t).then(pl.col("A_bid_price") * 1.3).otherwise(pl.col("A_bid_price")).alias("A_bid_price"),
    )
    a = backtest(df, "A", "B", 0.1, 0.01, **kw).filter(pl.col("close_ts") <= t)
    b = backtest(fut, "A", "B", 0.1, 0.01, **kw).filter(pl.col("close_ts") <= t)
    assert a.equals(b)


@pytest.mark.parametrize(("kw", "name"), [
    ({"thresh_low_in": -0.5, "thresh_low_out": -2.0}, "thresh_low_in"),
    ({"thresh_high_in": 0.5, "thresh_high_out": 2.0}, "thresh_high_out"),
    ({"open_method": "reverse_static", "dist_in": -0.1}, "dist_in"),
    ({"close_method": "reverse_dynamic", "dist_out": -1.0}, "dist_out"),
    ({"open_method": "sideways"}, "open_method"),
    ({"qty_method": "equal"}, "qty_method"),
    ({"sl_method": "stay"}, "sl_method"),
    ({"balance": 0.0}, "balance"),
])
def test_bad_parameters_name_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        backtest(_random_ticks(1, 50), "A", "B", 0.1, 0.1, **kw)


def test_missing_columns_are_clear_errors() -> None:
    df = _random_ticks(1, 50)
    with pytest.raises(ValueError, match="z_score"):
        backtest(df.drop("z_score"), "A", "B", 0.1, 0.1)
    with pytest.raises(ValueError, match="'C'"):
        backtest(df, "A", "C", 0.1, 0.1)
    with pytest.raises(ValueError, match="sorted"):
        backtest(df.reverse(), "A", "B", 0.1, 0.1)


U = 2.0 ** -53
# qty steps m * 10^k: 0.000001 .. 1000, and 0.5, 5, 25, 0.02, ...
FLOAT_STEPS = sorted({float(Decimal(m).scaleb(k)) for m in (1, 2, 5, 25) for k in range(-6, 4)})


def _quotient(notional: float, price: float, step: float) -> Decimal:
    """x = notional / (price * step) on the numbers as written, to 60 digits."""
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(repr(notional)) / (Decimal(repr(price)) * Decimal(repr(step)))


def _in_band(notional: float, price: float, step: float) -> bool:
    """Whether x + 1e-9 is within fills.round_qty's documented 6u x + 1e-24 of an integer."""
    with localcontext() as ctx:
        ctx.prec = 60
        y = _quotient(notional, price, step) + Decimal("1e-9")
        return abs(y - y.to_integral_value()) <= 6 * Decimal(U) * y + Decimal("1e-24")


def _check_float_kernel(notional: float, price: float, step: float) -> bool:
    """round_qty == float(qty_decimal) outside the band; inside it, one step apart at most.
    Returns whether the two differ."""
    q = round_qty(notional, price, step, step_decimals(step))
    exact = qty_decimal(notional, price, step)
    if q == float(exact):
        return False
    assert _in_band(notional, price, step), (notional, price, step, q, exact)
    assert abs(Decimal(repr(q)) - exact) == Decimal(repr(step))
    return True


@settings(max_examples=500, deadline=None)
@given(notional=st.floats(1.0, 1e6), price=st.floats(1e-6, 1e6), step=st.sampled_from(FLOAT_STEPS))
def test_float_quantities_equal_the_decimal_formula(notional: float, price: float, step: float) -> None:
    assume(_quotient(notional, price, step) < 1e12)  # up to 10^12 steps: every real order
    q = round_qty(notional, price, step, step_decimals(step))
    dq, ds = Decimal(repr(q)), Decimal(repr(step))
    assert dq % ds == 0
    assert q * price <= notional * (1 + 1e-9)
    assert (q + step) * price > notional * (1 - 1e-9)
    _check_float_kernel(notional, price, step)


@settings(max_examples=500, deadline=None)
@given(target=st.floats(1.0, 1e6), price=st.floats(1e-6, 1e6), step=st.sampled_from(FLOAT_STEPS),
       below=st.booleans(), t=st.floats(-12.0, 12.0))
def test_float_quantities_near_step_boundaries(target: float, price: float, step: float, below: bool,
                                               t: float) -> None:
    # quotients at k + t u k (float noise around a whole number of steps) and at k - 1e-9 + t u k
    # (the spec's tolerance edge): the float kernel leaves the Decimal formula only inside the band.
    # k is drawn through a notional in range, so few draws are filtered out
    k = round(target / (price * step))
    assume(1 <= k <= 10 ** 12)
    with localcontext() as ctx:
        ctx.prec = 60
        x = Decimal(k) + Decimal(t) * Decimal(U) * k - (Decimal("1e-9") if below else 0)
        notional = float(x * Decimal(repr(price)) * Decimal(repr(step)))
    assume(1.0 <= notional <= 1e6)
    differs = _check_float_kernel(notional, price, step)
    if not below and k < 7.5e5:
        assert not differs  # float noise of a whole number of steps never loses one below 7.5e5 steps


def test_float_and_decimal_disagree_only_in_the_band() -> None:
    # x = 4593.999999998999...: x + 1e-9 is 1e-12 below 4594, inside 6u x = 3e-12; the float
    # quotient lands above the integer (4594 steps), the exact one below (4593)
    args = (2.7313626999994045, 594.55, 1e-06)
    assert _in_band(*args) and round_qty(*args, 6) == 0.004594 and qty_decimal(*args) == Decimal("0.004593")
    # just outside the band, equal (same k with x + 1e-9 a further 1e-11 below the integer)
    assert not _in_band(2.7313626999400000, 594.55, 1e-06)
    assert round_qty(2.7313626999400000, 594.55, 1e-06, 6) == float(qty_decimal(2.7313626999400000, 594.55, 1e-06))


def test_float_quantity_regression_and_no_drift() -> None:
    # 29.999999999999996 USDT at 0.3 is 1000 steps of 0.1 up to float noise: both formulas give 100.0
    assert round_qty(29.999999999999996, 0.3, 0.1, 1) == 100.0 == float(qty_decimal(29.999999999999996, 0.3, 0.1))
    assert qty_decimal(29.999999999999996, 0.3, 0.1) == Decimal("100.0")


def test_no_float_drift_in_quantities() -> None:
    assert round_qty(454.8 * 2.0, 2.0, 0.1, 1) == 454.8
    assert repr(round_qty(454.8 * 2.0, 2.0, 0.1, 1)) == "454.8"
    assert repr(round_qty(0.3, 1.0, 0.1, 1)) == "0.3"
    assert step_decimals(1e-05) == 5 and step_decimals(10.0) == 0 and step_decimals(0.001) == 3


def _entry_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "ts": [0, 5, 10], "A_bid_price": [0.999, 0.999, 0.999], "A_ask_price": [1.001, 1.001, 1.001],
        "B_bid_price": [1.998] * 3, "B_ask_price": [2.002] * 3, "z_score": [0.0, 2.5, 0.0], "beta": [0.5] * 3,
    })


def test_sizing_methods() -> None:
    df = _entry_frame()
    vol = backtest(df, "A", "B", 0.1, 0.1, qty_method="vol_neutral", std_1=0.03, std_2=0.01)
    # legs 2N*s2/(s1+s2) = 50 and 2N*s1/(s1+s2) = 150 with N = 100
    assert vol["qty_1"][0] == math.floor(50 / 0.999 * 10) / 10
    assert vol["qty_2"][0] == math.floor(150 / 2.002 * 10) / 10
    beta = backtest(df, "A", "B", 0.1, 0.1, qty_method="beta_neutral")
    # notional_2 = |beta| notional_1, sum 200: 133.33 / 66.67
    assert beta["qty_1"][0] == math.floor(200 / 1.5 / 0.999 * 10) / 10
    assert beta["qty_2"][0] == math.floor(200 * 0.5 / 1.5 / 2.002 * 10) / 10
    with pytest.raises(ValueError, match="beta"):
        backtest(df.drop("beta"), "A", "B", 0.1, 0.1, qty_method="beta_neutral")


def test_entries_below_minimums_are_skipped_and_counted() -> None:
    df = _entry_frame()
    res = backtest(df, "A", "B", 0.1, 0.1, min_notional_1=150.0, return_result=True)
    assert res.trades.height == 0 and res.skipped_entries == 1
    res = backtest(df, "A", "B", 0.1, 0.1, min_qty_2=60.0, return_result=True)
    assert res.trades.height == 0 and res.skipped_entries == 1
    res = backtest(df, "A", "B", 0.1, 0.1, balance=80.0, min_order_size=42.0, return_result=True)
    assert res.trades.height == 0 and res.skipped_entries == 1  # margin 40 < 42
    res = backtest(df, "A", "B", 0.1, 0.1, return_result=True)
    assert res.trades.height == 1 and res.skipped_entries == 0


def test_funding_signs_and_marks() -> None:
    df = pl.DataFrame({
        "ts": [0, 10, 20, 30, 40], "A_bid_price": [0.99, 0.99, 1.09, 0.99, 0.99],
        "A_ask_price": [1.01, 1.01, 1.11, 1.01, 1.01], "B_bid_price": [1.99] * 5, "B_ask_price": [2.01] * 5,
        "z_score": [0.0, 2.5, 1.0, 1.0, 0.0],
    })
    base = backtest(df, "A", "B", 1.0, 1.0)
    assert base["funding_1"][0] == 0.0 and base["funding_2"][0] == 0.0
    funding = pl.DataFrame({"token": ["A", "A", "A", "B"], "ts": [10, 25, 45, 40], "rate": [0.01, 0.001, 0.5, -0.002]})
    res = backtest(df, "A", "B", 1.0, 1.0, funding=funding)
    row = res.row(0, named=True)
    # short spread: short A receives qty*mark*rate at t=25 (mark = mid at 20 = 1.10); the t=10
    # event is not inside (open_ts, close_ts] and t=45 is after the close; long B pays
    # qty*mark*rate at 40 with rate < 0, i.e. receives
    assert row["funding_1"] == pytest.approx(row["qty_1"] * 1.10 * 0.001)
    assert row["funding_2"] == pytest.approx(row["qty_2"] * 2.00 * 0.002)
    assert row["profit_1"] == pytest.approx(base["profit_1"][0] + row["funding_1"])
    assert row["total_profit"] == pytest.approx(base["total_profit"][0] + row["funding_1"] + row["funding_2"])


def test_profits_add_up() -> None:
    df = _random_ticks(11, 2000)
    tr = backtest(df, "A", "B", 0.1, 0.01, thresh_low_in=-1.5, thresh_low_out=-0.2, thresh_high_in=1.5,
                  thresh_high_out=0.2)
    assert tr.height > 5
    np.testing.assert_allclose(tr["profit_1"] + tr["profit_2"], tr["total_profit"], atol=1e-12)
    np.testing.assert_allclose(tr["fees_1"] + tr["fees_2"], tr["fees"], atol=1e-12)
    bal = 100.0 + np.cumsum(tr["total_profit"].to_numpy())
    np.testing.assert_allclose(tr["balance"].to_numpy(), bal, atol=1e-9)
    assert (tr["open_ts"].to_numpy()[1:] > tr["close_ts"].to_numpy()[:-1]).all()  # never share a tick

"""Liquidation (strategy.md section 4), skipped entries per reason (section 3) and the
printing names of pos_side / reason, through the batch backtester and the step interface."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bot.analysis.backtesting import SizingParams, StreamingBacktest, backtest, named_trades
from bot.analysis.signals import REASON_NAMES, SIDE_NAMES, SignalParams

CASES = {c["name"]: c for c in json.loads(
    (Path(__file__).parents[1] / "fixtures" / "strategy_cases.json").read_text())["cases"]}
LIQ = CASES["liquidation"]
SIG_KEYS = ("thresh_low_in", "thresh_low_out", "thresh_high_in", "thresh_high_out", "long_possible",
            "short_possible", "open_method", "close_method", "dist_in", "dist_out", "sl_std", "sl_dist",
            "sl_seconds", "sl_method", "latency_s")


def _frame(ticks: dict) -> pl.DataFrame:
    return pl.DataFrame({
        "ts": ticks["ts"], "A_bid_price": ticks["bid_1"], "A_ask_price": ticks["ask_1"],
        "B_bid_price": ticks["bid_2"], "B_ask_price": ticks["ask_2"],
        "z_score": [None if v is None or v != v else float(v) for v in ticks["z"]],
    }, schema_overrides={"z_score": pl.Float64, "A_bid_price": pl.Float64, "A_ask_price": pl.Float64,
                         "B_bid_price": pl.Float64, "B_ask_price": pl.Float64})


def _stream(df: pl.DataFrame, kw: dict, dp_1: float, dp_2: float) -> StreamingBacktest:
    sig = SignalParams(*(kw[k] for k in SIG_KEYS))
    siz = SizingParams(kw["balance"], kw["order_size"], kw.get("min_order_size", 0.0), kw["leverage"],
                       kw["qty_method"], kw["std_1"], kw["std_2"], kw["fee_rate"], dp_1, dp_2,
                       kw.get("min_qty_1"), kw.get("min_qty_2"), kw.get("min_notional_1", 0.0),
                       kw.get("min_notional_2", 0.0), kw.get("maintenance_margin_rate", 0.01))
    sb = StreamingBacktest(sig, siz)
    for r in df.iter_rows(named=True):
        sb.on_tick(r["ts"], r["z_score"], r["A_bid_price"], r["A_ask_price"], r["B_bid_price"], r["B_ask_price"])
    return sb


def _both(df: pl.DataFrame, kw: dict, dp_1: float = 0.1, dp_2: float = 0.1) -> tuple:
    res = backtest(df, "A", "B", dp_1, dp_2, **kw, return_result=True)
    sb = _stream(df, kw, dp_1, dp_2)
    stream = sb.finish(kw.get("force_close", False))
    assert stream.equals(res.trades), (stream, res.trades)
    assert (sb.liquidations, sb.skipped_entries, sb.skips) == (res.liquidations, res.skipped_entries, res.skips)
    return res, sb


def _case(**changes: object) -> tuple[pl.DataFrame, dict]:
    ticks = {k: list(v) for k, v in LIQ["ticks"].items()}
    params = dict(LIQ["params"])
    for key, value in changes.items():
        if key in ticks:
            ticks[key] = value  # type: ignore[assignment]
        else:
            params[key] = value
    return _frame(ticks), params


# ------------------------------------------------------------------ the worked example


def test_worked_example_is_liquidated_at_tick_5_and_counted() -> None:
    df, kw = _case()
    res, _ = _both(df, kw)
    assert res.liquidations == 1 and res.trades.height == 1
    row = res.trades.row(0, named=True)
    # margin in use (1001 * 0.999 + 499.5 * 2.002) / 20 = 100.0; tick 4 holds (equity 44.95 >
    # 20.52), tick 5 liquidates at its own prices, no latency
    assert (row["reason"], row["close_ts"], row["close_price_1"], row["close_price_2"]) == (4, 1700000025, 1.082, 1.998)
    assert row["close_z"] == 2.8
    assert row["total_profit"] == pytest.approx(-89.162081, abs=1e-9)
    assert res.final_balance == pytest.approx(100 - 89.162081, abs=1e-9)
    # the stop-loss rule of 'leave' then blocks the z of 3.5 at tick 6


def test_without_the_rule_the_example_is_held_to_its_exit() -> None:
    df, kw = _case(maintenance_margin_rate=None)
    res, _ = _both(df, kw)
    assert res.liquidations == 0 and res.trades["reason"].to_list() == [1]
    assert res.trades["close_ts"][0] == 1700000035  # z 0.0 at tick 7: direct exit


def test_rate_zero_liquidates_only_when_equity_is_gone() -> None:
    # mmr 0: equity must reach 0, i.e. a loss of M = 100: leg 1's ask would need 1.097
    df, kw = _case(maintenance_margin_rate=0.0)
    res, _ = _both(df, kw)
    assert res.liquidations == 0
    df, kw = _case(maintenance_margin_rate=0.0, ask_1=[1.001, 1.001, 1.001, 1.022, 1.052, 1.082, 1.098, 1.098])
    res, _ = _both(df, kw)
    # tick 6: equity = 100 - 1001 * 0.099 - 1.998 = -1.097 <= 0
    assert res.liquidations == 1 and res.trades["close_ts"][0] == 1700000030


def test_long_spread_is_valued_at_the_long_legs_bid_and_the_short_legs_ask() -> None:
    # long spread (z -2.1): long 999.0 A at 1.001, short 500.5 B at 1.998; M = 1999.998 / 20.
    # Leg 1's book widens to 0.9215 / 0.9415 at tick 4: at the bid, equity = 99.9999 + 999 *
    # (0.9215 - 1.001) + 500.5 * (1.998 - 2.002) = 18.58 <= 0.01 x (999 * 0.9215 + 500.5 * 2.002)
    # = 19.23: liquidated (at the mid, 0.9315, equity 28.57 > 19.33 would hold); tick 3 (bid
    # 0.93: 27.07 > 19.31) holds
    bid_1 = [0.999, 0.999, 0.999, 0.93, 0.9215, 0.9215, 0.9215, 0.9215]
    ask_1 = [1.001, 1.001, 1.001, 0.932, 0.9415, 0.9415, 0.9415, 0.9415]
    df, kw = _case(z=[0.0, -1.0, -2.1, -2.3, -2.6, -2.8, -3.5, 0.0], bid_1=bid_1, ask_1=ask_1)
    res, _ = _both(df, kw)
    row = res.trades.row(0, named=True)
    assert (row["pos_side"], row["qty_1"], row["qty_2"], row["open_price_1"], row["open_price_2"]) == (
        1, 999.0, 500.5, 1.001, 1.998)
    assert (row["reason"], row["close_ts"], row["close_price_1"], row["close_price_2"]) == (4, 1700000020, 0.9215, 2.002)
    margin = (999.0 * 1.001 + 500.5 * 1.998) / 20
    assert margin + 999 * (0.9215 - 1.001) - 500.5 * 0.004 <= 0.01 * (999 * 0.9215 + 500.5 * 2.002)
    assert margin + 999 * (0.9315 - 1.001) - 500.5 * 0.002 > 0.01 * (999 * 0.9315 + 500.5 * 2.0)


def test_a_gap_takes_the_loss_past_the_margin() -> None:
    df, kw = _case(ask_1=[1.001, 1.001, 1.001, 1.022, 1.052, 1.30, 1.30, 1.30])
    res, _ = _both(df, kw)
    row = res.trades.row(0, named=True)
    assert row["reason"] == 4 and row["close_price_1"] == 1.30
    # price loss 1001 * 0.301 + 499.5 * 0.004 = 303.3 > M = 100; fees 0.001 of the four fills on top
    fees = 0.001 * (1001 * 0.999 + 1001 * 1.30 + 499.5 * 2.002 + 499.5 * 1.998)
    assert row["total_profit"] == pytest.approx(-(1001 * 0.301 + 499.5 * 0.004) - fees, abs=1e-9)
    assert row["total_profit"] < -100


def test_liquidation_preempts_a_pending_close_and_ignores_latency() -> None:
    # latency 10 s: z 2.1 at tick 2 opens the short at tick 4 (bid 0.999); z 0.0 at tick 5
    # decides the exit, due at tick 7
    z = [0.0, 1.0, 2.1, 2.3, 2.4, 0.0, 0.1, 0.1]

    def run(ask_6: float, ask_7: float) -> pl.DataFrame:
        ask_1 = [1.001] * 6 + [ask_6, ask_7]
        df, kw = _case(z=z, ask_1=ask_1, bid_1=[a - 0.002 for a in ask_1], latency_s=10)
        return _both(df, kw)[0].trades

    # tick 6 (ask 1.09): equity 100 - 1001 * 0.091 - 1.998 = 6.91 <= 20.9: liquidated before the due exit
    assert run(1.09, 1.09).select("open_ts", "close_ts", "reason", "close_price_1").row(0) == (
        1700000020, 1700000030, 4, 1.09)
    # only tick 7 is liquidating: the check comes before the pending exit's fill on that tick
    assert run(1.001, 1.09).select("close_ts", "reason").row(0) == (1700000035, 4)
    # neither: the exit fills at tick 7
    assert run(1.001, 1.001).select("close_ts", "reason").row(0) == (1700000035, 1)


def test_null_z_ticks_are_checked_and_close_z_is_the_last_z() -> None:
    df, kw = _case(z=[0.0, 1.0, 2.1, 2.3, 2.6, None, None, 0.0])
    res, _ = _both(df, kw)
    row = res.trades.row(0, named=True)
    assert (row["reason"], row["close_ts"], row["close_z"]) == (4, 1700000025, 2.6)


def test_invalid_prices_are_not_checked() -> None:
    bid_2 = [1.998, 1.998, 1.998, 1.998, 1.998, math.nan, 1.998, 1.998]
    df, kw = _case(bid_2=bid_2, bid_1=[0.999, 0.999, 0.999, 1.02, 1.05, 1.08, 0.998, 0.998],
                   ask_1=[1.001, 1.001, 1.001, 1.022, 1.052, 1.082, 1.0, 1.0])
    res, _ = _both(df, kw)
    # tick 5 would liquidate but has no valid price; tick 6 is safe again (z 3.5 holds), tick 7 exits
    assert res.liquidations == 0 and res.trades.select("close_ts", "reason").row(0) == (1700000035, 1)


def test_cooldown_after_a_liquidation() -> None:
    t = LIQ["ticks"]
    ticks = {"ts": t["ts"] + [1700000040, 1700000045], "bid_1": t["bid_1"][:6] + [0.999] * 4,
             "ask_1": t["ask_1"][:6] + [1.001] * 4, "bid_2": [1.998] * 10, "ask_2": [2.002] * 10,
             "z": [0.0, 1.0, 2.1, 2.3, 2.6, 2.8, 3.5, 0.0, 2.5, 0.0]}
    res, _ = _both(_frame(ticks), dict(LIQ["params"]) | {"sl_method": "cooldown"})
    # liquidated at tick 5; tick 6 (z 3.5) is outside the band, tick 7 (0.0) ends the cooldown,
    # tick 8 (2.5) enters again on the balance left (margin 10.84 / 2), tick 9 exits
    assert res.trades["reason"].to_list() == [4, 1]
    assert res.trades["open_ts"].to_list() == [1700000010, 1700000040]
    res, _ = _both(_frame(ticks), dict(LIQ["params"]))  # leave: nothing after the liquidation
    assert res.trades["reason"].to_list() == [4]


# ------------------------------------------------------------------ generated data, high leverage


def _walk(seed: int, n: int = 3000) -> pl.DataFrame:
    """Random-walk prices (0.5 % per tick, half spreads 0.3 % / 0.4 %), an AR(1) z that stays
    out for a while, 5 % null z, 1 % of ticks without a valid bid on leg 1."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, 1.5 * math.sqrt(1 - 0.98**2), n)
    z = np.zeros(n)
    for i in range(1, n):
        z[i] = 0.98 * z[i - 1] + e[i]
    z[rng.random(n) < 0.05] = np.nan
    ts = 1_700_000_000 + np.cumsum(rng.integers(1, 12, n))
    p1 = np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    p2 = 2.0 * np.exp(np.cumsum(rng.normal(0, 0.005, n)))
    bid_1 = p1 * 0.997  # wide books: the close price of each leg matters to the liquidation tick
    bid_1[rng.random(n) < 0.01] = np.nan
    return pl.DataFrame({"ts": ts, "A_bid_price": bid_1, "A_ask_price": p1 * 1.003, "B_bid_price": p2 * 0.996,
                         "B_ask_price": p2 * 1.004, "z_score": z}).with_columns(pl.col("z_score").fill_nan(None))


def _first_liquidation_ts(trade: dict, df: pl.DataFrame, mmr: float, leverage: float) -> float | None:
    """Plain Python, written from the spec text: the first tick after the fill with valid
    prices where M + price PnL <= mmr x close notional (long leg at bid, short leg at ask)."""
    q1, q2, o1, o2 = trade["qty_1"], trade["qty_2"], trade["open_price_1"], trade["open_price_2"]
    margin = (q1 * o1 + q2 * o2) / leverage
    for r in df.filter(pl.col("ts") > trade["open_ts"]).iter_rows(named=True):
        prices = (r["A_bid_price"], r["A_ask_price"], r["B_bid_price"], r["B_ask_price"])
        if not all(p > 0 for p in prices):  # NaN included
            continue
        if trade["pos_side"] == 1:  # long A, short B
            c1, c2 = r["A_bid_price"], r["B_ask_price"]
            pnl = q1 * (c1 - o1) + q2 * (o2 - c2)
        else:
            c1, c2 = r["A_ask_price"], r["B_bid_price"]
            pnl = q1 * (o1 - c1) + q2 * (c2 - o2)
        if margin + pnl <= mmr * (q1 * c1 + q2 * c2):
            return float(r["ts"])
    return None


GEN = [(1, 20, 0, "cooldown"), (2, 50, 0, "cooldown"), (3, 30, 5, "cooldown"), (4, 50, 20, "cooldown"),
       (5, 25, 0, "leave"), (6, 40, 5, "cooldown")]


@pytest.mark.parametrize(("seed", "leverage", "latency_s", "sl_method"), GEN)
def test_generated_liquidations_match_an_independent_computation(seed: int, leverage: float, latency_s: float,
                                                                 sl_method: str) -> None:
    df = _walk(seed)
    kw = dict(thresh_low_in=-1.5, thresh_low_out=-0.2, thresh_high_in=1.5, thresh_high_out=0.2,
              long_possible=True, short_possible=True, balance=100.0, order_size=50.0, qty_method="usdt_neutral",
              std_1=1.0, std_2=1.0, fee_rate=0.0005, sl_std=None, sl_dist=None, sl_method=sl_method,
              sl_seconds=0, open_method="direct", close_method="direct", leverage=float(leverage), dist_in=0.0,
              dist_out=0.0, force_close=False, latency_s=latency_s, maintenance_margin_rate=0.01)
    res, _ = _both(df, kw, 0.1, 0.01)
    trades = res.trades.to_dicts()
    assert res.liquidations == sum(t["reason"] == 4 for t in trades)
    if sl_method == "cooldown":
        assert len(trades) >= 5 and len(trades) > res.liquidations >= (1 if leverage < 30 else 5)
    else:
        assert res.liquidations == 1 and trades[-1]["reason"] == 4  # leave: the last trade
    ts = df["ts"].to_numpy()
    for t in trades:
        hit = _first_liquidation_ts(t, df, 0.01, leverage)
        if t["reason"] == 4:
            assert hit == t["close_ts"], t
            r = df.row(int(np.searchsorted(ts, t["close_ts"])), named=True)
            if t["pos_side"] == 1:
                assert (t["close_price_1"], t["close_price_2"]) == (r["A_bid_price"], r["B_ask_price"])
            else:
                assert (t["close_price_1"], t["close_price_2"]) == (r["A_ask_price"], r["B_bid_price"])
            fees = 0.0005 * (t["qty_1"] * (t["open_price_1"] + t["close_price_1"])
                            + t["qty_2"] * (t["open_price_2"] + t["close_price_2"]))
            assert t["fees"] == pytest.approx(fees, rel=1e-12)
        else:
            assert hit is None or hit > t["close_ts"], t
    # up to the first liquidation, the run without the rule is the same run
    free = backtest(df, "A", "B", 0.1, 0.01, **(kw | {"maintenance_margin_rate": None}), return_result=True)
    assert free.liquidations == 0 and 4 not in free.trades["reason"].to_list()
    k = next(i for i, t in enumerate(trades) if t["reason"] == 4)
    assert free.trades.head(k).equals(res.trades.head(k))
    assert free.trades.row(k, named=True)["open_ts"] == trades[k]["open_ts"]


def test_no_rate_never_liquidates_at_any_leverage() -> None:
    for seed in range(5):
        df = _walk(seed)
        for lev in (2.0, 50.0, 100.0):
            kw = dict(LIQ["params"]) | {"leverage": lev, "thresh_low_in": -1.5, "thresh_high_in": 1.5,
                                        "sl_method": "cooldown", "maintenance_margin_rate": None}
            res, _ = _both(df, kw, 0.1, 0.01)
            assert res.liquidations == 0 and 4 not in res.trades["reason"].to_list()


def test_bad_rates_name_the_parameter() -> None:
    df, kw = _case()
    for bad in (-0.01, 1.0, math.nan):
        with pytest.raises(ValueError, match="maintenance_margin_rate"):
            backtest(df, "A", "B", 0.1, 0.1, **(kw | {"maintenance_margin_rate": bad}))


# ------------------------------------------------------------------ the notebook's call


def test_the_notebook_call_still_works_with_the_default_rate(capsys: pytest.CaptureFixture[str]) -> None:
    df, _ = _case()
    # the notebook's positional arguments, up to verbose; leverage 20 (position 23)
    trades = backtest(df, "A", "B", 0.1, 0.1, -2.0, -0.5, 2.0, 0.5, True, True, 100.0, 50.0, "usdt_neutral",
                      0.05, 0.04, 0.001, None, None, "leave", 0, "direct", "direct", 20, 0.0, 0.0, False, 1)
    out = capsys.readouterr().out
    assert trades["reason"].to_list() == [4] and trades["pos_side"].dtype == pl.Int8
    assert trades.equals(backtest(df, "A", "B", 0.1, 0.1, **LIQ["params"]))
    assert "1 trades, 1 liquidations, 0 skipped entries (min_order_size 0, min_qty 0, min_notional 0)" in out


# ------------------------------------------------------------------ skipped entries per reason


def test_skipped_entries_are_counted_per_reason() -> None:
    # six entry signals (z 2.5 / 0.0 alternating), each entry sized on the running balance
    n = 12
    df = _frame({"ts": list(range(0, 5 * n, 5)), "bid_1": [0.999] * n, "ask_1": [1.001] * n,
                 "bid_2": [1.998] * n, "ask_2": [2.002] * n, "z": [2.5, 0.0] * (n // 2)})
    kw = dict(LIQ["params"]) | {"leverage": 2}
    res, _ = _both(df, kw)
    assert res.skipped_entries == 0 and res.skips == {"min_order_size": 0, "min_qty": 0, "min_notional": 0}
    for change, reason in (({"min_order_size": 60.0}, "min_order_size"), ({"min_qty_2": 60.0}, "min_qty"),
                           ({"min_notional_1": 150.0}, "min_notional"), ({"min_qty_1": 1000.0}, "min_qty")):
        res, _ = _both(df, kw | change)
        assert res.trades.height == 0 and res.skipped_entries == 6, change
        assert res.skips == {k: (6 if k == reason else 0) for k in res.skips}, change
    # margin 50 per leg at balance 100: below min 49.99 once the balance drops under 99.98
    res, _ = _both(df, kw | {"min_order_size": 49.99})
    assert res.trades.height == 1 and res.skips == {"min_order_size": 5, "min_qty": 0, "min_notional": 0}
    assert sum(res.skips.values()) == res.skipped_entries


# ------------------------------------------------------------------ names


def test_names_of_sides_and_reasons() -> None:
    assert SIDE_NAMES == {1: "long", 2: "short"}
    assert REASON_NAMES == {1: "exit", 2: "stop-loss", 3: "force close", 4: "liquidation"}
    df, kw = _case()
    trades = backtest(df, "A", "B", 0.1, 0.1, **kw)
    named = named_trades(trades)
    assert named.select("pos_side", "reason").row(0) == ("short", "liquidation")
    assert trades.select("pos_side", "reason").row(0) == (2, 4)  # the frame keeps the integers
    every = pl.DataFrame({"pos_side": [1, 2, 1, 2], "reason": [1, 2, 3, 4]},
                         schema={"pos_side": pl.Int8, "reason": pl.Int8})
    assert named_trades(every).to_dict(as_series=False) == {
        "pos_side": ["long", "short", "long", "short"], "reason": ["exit", "stop-loss", "force close", "liquidation"]}
    with pytest.raises(pl.exceptions.InvalidOperationError):
        named_trades(pl.DataFrame({"pos_side": [3], "reason": [1]}))

"""Backtests on real market data from ../shared/data, checking invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bot.analysis.backtesting import backtest
from bot.analysis.strategy_analysis import analyze_strategy
from bot.utils.pair_trading import create_zscore_df

pytestmark = pytest.mark.realdata


def _check_invariants(trades: pl.DataFrame, ticks: pl.DataFrame, t1: str, t2: str, fee: float) -> None:
    by_ts = {r["ts"]: r for r in ticks.iter_rows(named=True)}
    for tr in trades.iter_rows(named=True):
        o, c = by_ts[int(tr["open_ts"])], by_ts[int(tr["close_ts"])]
        if tr["pos_side"] == 1:  # long t1 at ask, short t2 at bid; closes the other way
            assert (tr["open_price_1"], tr["open_price_2"]) == (o[f"{t1}_ask_price"], o[f"{t2}_bid_price"])
            assert (tr["close_price_1"], tr["close_price_2"]) == (c[f"{t1}_bid_price"], c[f"{t2}_ask_price"])
        else:
            assert (tr["open_price_1"], tr["open_price_2"]) == (o[f"{t1}_bid_price"], o[f"{t2}_ask_price"])
            assert (tr["close_price_1"], tr["close_price_2"]) == (c[f"{t1}_ask_price"], c[f"{t2}_bid_price"])
        fees = fee * (tr["open_price_1"] + tr["close_price_1"]) * tr["qty_1"] + \
            fee * (tr["open_price_2"] + tr["close_price_2"]) * tr["qty_2"]
        assert tr["fees"] == pytest.approx(fees, rel=1e-12)
        s = 1 if tr["pos_side"] == 1 else -1
        gross = s * (tr["close_price_1"] - tr["open_price_1"]) * tr["qty_1"] - \
            s * (tr["close_price_2"] - tr["open_price_2"]) * tr["qty_2"]
        assert tr["total_profit"] == pytest.approx(gross - fees, abs=1e-9)
        assert o["z_score"] is not None


def test_real_perpetuals_bars_only_one_year(shared_data: Path) -> None:
    src = pl.read_parquet(shared_data / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet")
    wide = (
        src.filter(pl.col("pair").is_in(["LINK/USDT:USDT", "AVAX/USDT:USDT"]))
        .with_columns((pl.col("date").dt.epoch("s")).alias("ts"), pl.col("pair").str.split("/").list.first().alias("t"))
        .pivot(on="t", index="ts", values="close").drop_nulls().sort("ts")
        .filter(pl.col("ts") >= 1_746_057_600)  # 2025-05-01, where both are gapless
    )
    assert wide.height > 8000
    w = 72
    z = create_zscore_df("LINK", "AVAX", wide, wide, "1h", [w], int(wide["ts"][0]), median_length=1, spr_method="lr")
    df = z.rename({f"z_score_{w}_1h": "z_score"}).with_columns(
        (pl.col("LINK") * (1 - 1e-4)).alias("LINK_bid_price"), (pl.col("LINK") * (1 + 1e-4)).alias("LINK_ask_price"),
        (pl.col("AVAX") * (1 - 1e-4)).alias("AVAX_bid_price"), (pl.col("AVAX") * (1 + 1e-4)).alias("AVAX_ask_price"),
    )
    assert df["z_score"][:w].null_count() == w and df["z_score"][w] is not None  # warm-up
    kw = dict(thresh_low_in=-2.0, thresh_low_out=-0.25, thresh_high_in=2.0, thresh_high_out=0.25,
              sl_std=5.0, sl_dist=1.0, sl_seconds=0, sl_method="cooldown", fee_rate=0.00055, force_close=True)
    trades = backtest(df, "LINK", "AVAX", 0.1, 0.1, **kw)
    assert trades.height > 10
    assert trades["open_ts"].min() >= df["ts"][w]  # no trade before the warm-up
    _check_invariants(trades, df, "LINK", "AVAX", 0.00055)
    # the bars-only frame (no bid/ask columns) gives the same trades
    bars_only = z.rename({f"z_score_{w}_1h": "z_score"})
    assert backtest(bars_only, "LINK", "AVAX", 0.1, 0.1, half_spread=1e-4, **kw).equals(trades)
    m = analyze_strategy(trades, df["time"][0] if "time" in df.columns else int(df["ts"][0]), int(df["ts"][-1]), 100.0)
    assert m["trades"] == trades.height


def test_real_funding_rates(shared_data: Path) -> None:
    """Real 8h funding of LINK and AVAX charged on a year of bars-only trades."""
    from bot.core.importer import funding_from_freqtrade

    src = pl.read_parquet(shared_data / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet")
    wide = (
        src.filter(pl.col("pair").is_in(["LINK/USDT:USDT", "AVAX/USDT:USDT"]))
        .with_columns((pl.col("date").dt.epoch("s")).alias("ts"), pl.col("pair").str.split("/").list.first().alias("t"))
        .pivot(on="t", index="ts", values="close").drop_nulls().sort("ts").filter(pl.col("ts") >= 1_746_057_600)
    )
    z = create_zscore_df("LINK", "AVAX", wide, wide, "1h", [72], int(wide["ts"][0]), 1, "lr").rename(
        {"z_score_72_1h": "z_score"})
    funding = funding_from_freqtrade(pl.read_parquet(shared_data / "funding" / "binance_usdm_funding_rates_40pairs.parquet"))
    assert funding.filter(pl.col("token") == "LINK").height > 1000
    kw = dict(thresh_low_in=-2.0, thresh_low_out=-0.25, thresh_high_in=2.0, thresh_high_out=0.25, sl_std=5.0,
              sl_method="cooldown", fee_rate=0.00055)
    plain = backtest(z, "LINK", "AVAX", 0.1, 0.1, **kw)
    funded = backtest(z, "LINK", "AVAX", 0.1, 0.1, funding=funding, **kw)
    assert (plain["funding_1"] == 0).all() and (plain["funding_2"] == 0).all()
    assert plain.height == funded.height and (funded["funding_1"] != 0).any()
    ts = z["ts"].to_numpy()
    for tok, leg in (("LINK", 1), ("AVAX", 2)):
        f = funding.filter(pl.col("token") == tok)
        ft, fr = f["ts"].to_numpy(), f["rate"].to_numpy()
        for tr in funded.iter_rows(named=True):
            side = (1 if tr["pos_side"] == 1 else -1) * (1 if leg == 1 else -1)
            expect = 0.0
            for t_f, rate in zip(ft, fr, strict=True):
                if tr["open_ts"] < t_f <= tr["close_ts"]:
                    j = int(np.searchsorted(ts, t_f, side="right")) - 1
                    expect -= side * tr[f"qty_{leg}"] * z[tok][j] * rate
            assert tr[f"funding_{leg}"] == pytest.approx(expect, rel=1e-9, abs=1e-12)
    # the first trade is sized alike in both runs: its profit differs by exactly its funding
    a, b = plain.row(0, named=True), funded.row(0, named=True)
    assert b["total_profit"] == pytest.approx(a["total_profit"] + b["funding_1"] + b["funding_2"], abs=1e-12)


def test_real_btc_eth_top_of_book(shared_data: Path) -> None:
    src = pl.read_parquet(shared_data / "ticks" / "binance_usdm_bookTicker_BTCUSDT_ETHUSDT_2024-07-18_19_2024-08-08.parquet")
    snap = (
        src.with_columns((pl.col("transaction_time_ms") // 1000).alias("ts"))
        .sort(["symbol", "local_ts_ns"]).group_by(["symbol", "ts"], maintain_order=True).last()
    )
    legs = []
    for sym, tok in (("BTCUSDT", "BTC"), ("ETHUSDT", "ETH")):
        legs.append(snap.filter(pl.col("symbol") == sym).select(
            "ts", pl.col("bid_price").alias(f"{tok}_bid_price"), pl.col("ask_price").alias(f"{tok}_ask_price"),
            ((pl.col("bid_price") + pl.col("ask_price")) / 2).alias(tok)))
    ticks = legs[0].join(legs[1], on="ts", how="inner").sort("ts")
    # the clip holds two windows; use the first (about 8 minutes)
    ticks = ticks.filter(pl.col("ts") < ticks["ts"][0] + 3600)
    bars = ticks.with_columns((pl.col("ts") // 60 * 60).alias("bar")).group_by("bar", maintain_order=True).agg(
        pl.col("BTC").last(), pl.col("ETH").last()).rename({"bar": "ts"})
    w = 3
    z = create_zscore_df("BTC", "ETH", ticks, bars, "1m", [w], int(ticks["ts"][0]), median_length=3, spr_method="dist")
    df = z.rename({f"z_score_{w}_1m": "z_score"})
    first_valid = int(df.filter(pl.col("z_score").is_not_null())["ts"][0])
    # exactly the first tick with W completed bars strictly before its own bar: not one bar early
    bar_ts = bars["ts"].to_numpy()
    tick_ts = ticks["ts"].to_numpy()
    n_before = np.searchsorted(bar_ts, tick_ts // 60 * 60, side="left")
    expected = int(tick_ts[np.argmax(n_before >= w)])
    assert expected >= (int(tick_ts[0]) // 60 + w) * 60
    assert first_valid == expected
    trades = backtest(df, "BTC", "ETH", 0.001, 0.01, thresh_low_in=-1.0, thresh_low_out=-0.2,
                      thresh_high_in=1.0, thresh_high_out=0.2, fee_rate=0.0002, balance=10_000.0,
                      order_size=5_000.0, force_close=True)
    assert trades.height >= 1
    assert trades["open_ts"].min() >= first_valid
    _check_invariants(trades, df, "BTC", "ETH", 0.0002)
    assert np.all(trades["qty_1"].to_numpy() * 1000 == np.round(trades["qty_1"].to_numpy() * 1000))

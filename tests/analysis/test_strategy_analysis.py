"""analyze_strategy against hand-computed values."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from bot.analysis.strategy_analysis import METRIC_KEYS, analyze_strategy

D = 86400
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
T0 = int(START.timestamp())


def _trades(rows: list[tuple[int, int, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"open_ts": [r[0] for r in rows], "close_ts": [r[1] for r in rows],
         "total_profit": [r[2] for r in rows], "reason": [r[3] for r in rows]},
    )


def test_hand_computed_metrics() -> None:
    # equity: 100 -> 110 (day 0) -> 104.5 (day 1) -> 106.5 (day 3)
    trades = _trades([
        (T0 + 3600, T0 + 3 * 3600, 10.0, 1),        # 2 h
        (T0 + D + 3600, T0 + D + 7 * 3600, -5.5, 2),  # 6 h
        (T0 + 3 * D, T0 + 3 * D + 3600, 2.0, 1),       # 1 h
    ])
    m = analyze_strategy(trades, START, START + dt.timedelta(days=4), 100.0)
    assert m["trades"] == 3 and m["wins"] == 2
    assert m["win_rate"] == pytest.approx(200 / 3)
    assert m["total_profit"] == pytest.approx(6.5)
    assert m["pr"] == pytest.approx(6.5)
    assert m["avg_profit"] == pytest.approx(6.5 / 3)
    assert m["loss"] == pytest.approx(-5.5)
    assert m["max_drdn"] == pytest.approx(5.5 / 110 * 100)  # 5 %
    assert m["pr_rat"] == pytest.approx(6.5 / 5.0)
    assert m["avg_dur"] == pytest.approx(3.0) and m["max_dur"] == pytest.approx(6.0)
    assert m["profit_factor"] == pytest.approx(12.0 / 5.5)
    assert m["stop_losses"] == 1
    assert m["liquidations"] == 0
    exits = int((trades["reason"] == 1).sum())
    liq = trades.with_columns(pl.when(pl.col("reason") == 1).then(4).otherwise(pl.col("reason"))
                              .cast(trades["reason"].dtype).alias("reason"))
    m4 = analyze_strategy(liq, START, START + dt.timedelta(days=4), 100.0)
    assert m4["liquidations"] == exits >= 1 and m4["stop_losses"] == 1
    assert m["trades_per_day"] == pytest.approx(0.75)
    assert m["exposure"] == pytest.approx(9 / 96 * 100)
    rets = [110 / 100 - 1, 104.5 / 110 - 1, 0.0, 106.5 / 104.5 - 1]
    mean = sum(rets) / 4
    sd = math.sqrt(sum((r - mean) ** 2 for r in rets) / 3)
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(365))
    down = math.sqrt(sum(min(r, 0) ** 2 for r in rets) / 4)
    assert m["sortino"] == pytest.approx(mean / down * math.sqrt(365))
    ann = ((106.5 / 100) ** (365 / 4) - 1) * 100
    assert m["calmar"] == pytest.approx(ann / 5.0)


def test_small_drawdown_uses_floor_of_one() -> None:
    trades = _trades([(T0, T0 + 60, 3.0, 1), (T0 + 100, T0 + 200, -0.5, 1)])
    m = analyze_strategy(trades, START, START + dt.timedelta(days=1), 100.0)
    assert m["max_drdn"] == pytest.approx(0.5 / 103 * 100)
    assert m["pr_rat"] == pytest.approx(2.5 / 1.0)


def test_overlapping_exposure_is_not_double_counted() -> None:
    trades = _trades([(T0, T0 + 10 * 3600, 1.0, 1), (T0 + 5 * 3600, T0 + 12 * 3600, 1.0, 1)])
    m = analyze_strategy(trades, START, START + dt.timedelta(days=1), 100.0)
    assert m["exposure"] == pytest.approx(12 / 24 * 100)
    assert m["profit_factor"] is None


@pytest.mark.parametrize("trades", [None, _trades([]).clear()])
def test_empty_gives_a_full_dict(trades: pl.DataFrame | None) -> None:
    m = analyze_strategy(trades, START, START + dt.timedelta(days=1), 100.0)
    assert set(METRIC_KEYS) <= set(m)
    assert m["trades"] == 0 and m["total_profit"] == 0.0 and m["sharpe"] is None

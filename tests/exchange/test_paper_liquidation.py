"""The paper exchange applies the backtester's liquidation rule (strategy.md section 4) to a
tracked pair trade: the worked example "liquidation" of strategy_cases.json, fed as quotes."""

from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.analysis.backtesting import backtest
from bot.core.exchange.interface import Instrument, OrderRequest, Quote
from bot.core.exchange.paper import PaperExchange
from tests.analysis.test_liquidation import _frame

CASE = next(c for c in json.loads((Path(__file__).parents[1] / "fixtures" / "strategy_cases.json").read_text())["cases"]
            if c["name"] == "liquidation")
T = CASE["ticks"]


def _quotes(ex: PaperExchange, i: int) -> None:
    for sym, leg in (("AUSDT", "1"), ("BUSDT", "2")):
        ex.on_quote(Quote(sym, float(T["ts"][i]), D(repr(T[f"bid_{leg}"][i])), D(repr(T[f"ask_{leg}"][i])),
                          D(1000), D(1000)))


def _exchange(mmr: D | None) -> PaperExchange:
    inst = [Instrument("AUSDT", D("0.1"), D("0.1"), D("0.001")), Instrument("BUSDT", D("0.1"), D("0.1"), D("0.001"))]
    # a wallet of 1000: the paper exchange's own cross-margin pre-check must not refuse the
    # 20x legs (the rule itself is per pair trade, isolated)
    return PaperExchange(inst, D(1000), D("0.001"), D(20), mmr)


async def _open_short_spread(ex: PaperExchange) -> None:
    for i in range(3):
        _quotes(ex, i)
    # the backtest's entry at tick 2: short 1001 A at the bid, long 499.5 B at the ask
    await ex.place_market_order(OrderRequest("AUSDT", "Sell", D("1001.0"), "o-1"))
    await ex.place_market_order(OrderRequest("BUSDT", "Buy", D("499.5"), "o-2"))
    ex.track_pair("AUSDT", "BUSDT")


@pytest.mark.asyncio
async def test_paper_liquidates_the_worked_example_at_the_backtests_tick() -> None:
    ex = _exchange(D("0.01"))
    await _open_short_spread(ex)
    for i in (3, 4):
        _quotes(ex, i)
        assert ex.liquidations == [] and len(await ex.positions()) == 2  # tick 4: equity 44.95 > 20.52
    _quotes(ex, 5)  # equity 14.92 <= 20.81
    assert len(ex.liquidations) == 1 and await ex.positions() == {}
    liq = ex.liquidations[0]
    assert (liq.symbol_1, liq.symbol_2, liq.ts) == ("AUSDT", "BUSDT", float(T["ts"][5]))
    f1, f2 = liq.fills
    assert (f1.side, f1.qty, f1.avg_price) == ("Buy", D("1001.0"), D("1.082"))  # the short leg at the ask
    assert (f2.side, f2.qty, f2.avg_price) == ("Sell", D("499.5"), D("1.998"))  # the long leg at the bid
    assert await ex.order_status("AUSDT", "liq-1-1") == f1 and f1.status == "Filled"
    # the same trade as the backtester's: total profit -89.162081 (four fills' fees included)
    bt = backtest(_frame(T), "A", "B", 0.1, 0.1, **CASE["params"])
    assert bt["reason"].to_list() == [4] and bt["close_ts"][0] == T["ts"][5]
    assert await ex.wallet_balance() - D(1000) == D("-89.162081")
    assert bt["total_profit"][0] == pytest.approx(-89.162081, abs=1e-9)
    _quotes(ex, 6)  # untracked once liquidated: nothing more happens
    assert len(ex.liquidations) == 1


@pytest.mark.asyncio
async def test_paper_without_a_rate_or_untracked_never_liquidates() -> None:
    for mmr, track in ((None, True), (D("0.01"), False)):
        ex = _exchange(mmr)
        await _open_short_spread(ex)
        if not track:
            ex.untrack_pair("AUSDT", "BUSDT")
        for i in range(3, len(T["ts"])):
            _quotes(ex, i)
        assert ex.liquidations == [] and len(await ex.positions()) == 2


def test_track_pair_refuses_unknown_and_shared_symbols() -> None:
    ex = _exchange(D("0.01"))
    with pytest.raises(ValueError, match="unknown symbol"):
        ex.track_pair("AUSDT", "XUSDT")
    ex.track_pair("AUSDT", "BUSDT")
    with pytest.raises(ValueError, match="already in a tracked pair"):
        ex.track_pair("BUSDT", "AUSDT")


def test_the_configured_rate_reaches_the_paper_exchange() -> None:
    from bot.config import load
    from bot.config.loader import example_path
    from bot.core.exchange.factory import trading_exchange

    cfg = load(example_path())
    ex = trading_exchange(cfg, [], env={})
    assert isinstance(ex, PaperExchange) and ex.maintenance_margin_rate == D("0.01")
    off = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"maintenance_margin_rate": None})})
    ex = trading_exchange(off, [], env={})
    assert isinstance(ex, PaperExchange) and ex.maintenance_margin_rate is None

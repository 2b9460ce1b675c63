"""Decimal rounding of orders, deterministic order link ids, the paper exchange."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.analysis.fills import qty_decimal
from bot.core.exchange.interface import (
    Instrument,
    OrderRejected,
    OrderRequest,
    Quote,
    TemporaryError,
)
from bot.core.exchange.paper import PaperExchange
from bot.core.exchange.rounding import (
    MAX_LINK_ID,
    order_link_id,
    qty_for_notional,
    round_price,
    round_qty,
)


@settings(max_examples=300, deadline=None)
@given(notional=st.decimals("1", "1000000", places=4), price=st.decimals("0.000001", "100000", places=6),
       step=st.sampled_from(["0.001", "0.01", "0.1", "1", "10", "100", "0.00001"]))
def test_qty_is_an_exact_multiple_never_above_the_notional(notional: D, price: D, step: str) -> None:
    q = qty_for_notional(notional, price, step)
    s = D(step)
    assert q % s == 0 and q >= 0
    assert q * price <= notional
    assert (q + s) * price > notional
    assert q == qty_decimal(notional, price, s) or abs(q - qty_decimal(notional, price, s)) <= s


def test_rounding_examples() -> None:
    assert str(round_qty(454.8, 0.1)) == "454.8"
    assert str(round_qty("454.89", "0.1")) == "454.8"
    assert round_qty("5", "0.1", max_qty="3.05") == D("3.0")
    assert round_price("0.0076289", "0.000001", "Buy") == D("0.007628")
    assert round_price("0.0076281", "0.000001", "Sell") == D("0.007629")
    with pytest.raises(ValueError):
        round_qty(1, 0)


def test_order_link_ids_are_deterministic_and_short() -> None:
    a = order_link_id(123456789012, 1, "open")
    assert a == order_link_id(123456789012, 1, "open") and len(a) <= MAX_LINK_ID
    assert a != order_link_id(123456789012, 2, "open") != order_link_id(123456789012, 1, "close")
    assert order_link_id(1, 1, "open", attempt=1) != order_link_id(1, 1, "open")
    long_id = order_link_id("x" * 60, 1, "unwind")
    assert len(long_id) <= MAX_LINK_ID
    with pytest.raises(ValueError):
        order_link_id(1, 3, "open")


def _paper() -> PaperExchange:
    inst = [Instrument("JASMYUSDT", D("1"), D("1"), D("0.000001"), D("5")),
            Instrument("VETUSDT", D("1"), D("1"), D("0.00001"), D("5"), max_mkt_qty=D("100000"))]
    ex = PaperExchange(inst, D("100"), D("0.001"), D("2"))
    ex.on_quote(Quote("JASMYUSDT", 1.0, D("0.007620"), D("0.007628"), D("1e6"), D("1e6")))
    ex.on_quote(Quote("VETUSDT", 1.0, D("0.01410"), D("0.01420"), D("1e6"), D("1e6")))
    return ex


@pytest.mark.asyncio
async def test_paper_fills_at_top_of_book_with_fees_and_is_idempotent() -> None:
    ex = _paper()
    f1 = await ex.place_market_order(OrderRequest("JASMYUSDT", "Buy", D("13083"), "b-1-1o0-x"))
    assert f1.avg_price == D("0.007628") and f1.fee == D("13083") * D("0.007628") * D("0.001")
    again = await ex.place_market_order(OrderRequest("JASMYUSDT", "Buy", D("13083"), "b-1-1o0-x"))
    assert again == f1 and (await ex.positions())["JASMYUSDT"] == D("13083")  # not filled twice
    assert await ex.order_status("b-1-1o0-x") == f1
    f2 = await ex.place_market_order(OrderRequest("VETUSDT", "Sell", D("7078"), "b-1-2o0-x"))
    assert f2.avg_price == D("0.01410")
    ex.on_quote(Quote("JASMYUSDT", 2.0, D("0.007274"), D("0.007280"), D("1e6"), D("1e6")))
    ex.on_quote(Quote("VETUSDT", 2.0, D("0.01330"), D("0.01339"), D("1e6"), D("1e6")))
    await ex.place_market_order(OrderRequest("JASMYUSDT", "Sell", D("13083"), "b-1-1c0-x", reduce_only=True))
    await ex.place_market_order(OrderRequest("VETUSDT", "Buy", D("7078"), "b-1-2c0-x", reduce_only=True))
    # the strategy.md seed trade: total profit 0.004461 on a balance of 100
    assert abs((await ex.wallet_balance()) - D("100.004461")) < D("0.000001")
    assert await ex.positions() == {}


@pytest.mark.asyncio
@pytest.mark.parametrize(("req", "code"), [
    (OrderRequest("JASMYUSDT", "Buy", D("10.5"), "a"), 10001),          # not a multiple of qtyStep
    (OrderRequest("JASMYUSDT", "Buy", D("100"), "b"), 10001),           # notional 0.76 < 5
    (OrderRequest("VETUSDT", "Buy", D("200000"), "c"), 10001),          # above maxMktOrderQty
    (OrderRequest("JASMYUSDT", "Buy", D("50000"), "d"), 110007),        # margin 190 > balance 100
    (OrderRequest("JASMYUSDT", "Sell", D("1000"), "e", reduce_only=True), 110017),
])
async def test_paper_rejections_are_typed_and_fill_nothing(req: OrderRequest, code: int) -> None:
    ex = _paper()
    with pytest.raises(OrderRejected) as err:
        await ex.place_market_order(req)
    assert err.value.code == code and err.value.order_link_id == req.order_link_id
    assert await ex.positions() == {} and await ex.order_status(req.order_link_id) is None
    assert await ex.wallet_balance() == D("100")


@pytest.mark.asyncio
async def test_no_quote_is_a_temporary_error() -> None:
    ex = PaperExchange([Instrument("XUSDT", D("1"), D("1"), D("0.1"))], D("100"), D("0.001"))
    with pytest.raises(TemporaryError):
        await ex.place_market_order(OrderRequest("XUSDT", "Buy", D("1"), "z"))

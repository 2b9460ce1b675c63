"""Decimal rounding of orders, deterministic order link ids, the paper exchange."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.analysis.fills import qty_decimal
from bot.core.exchange.interface import (
    FINAL_STATUSES,
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

STEPS = ["0.000001", "0.00001", "0.0001", "0.001", "0.01", "0.1", "1", "10", "100", "1000", "0.5", "5", "25"]


@settings(max_examples=300, deadline=None)
@given(notional=st.decimals("1", "1000000", places=4), price=st.decimals("0.000001", "1000000", places=6),
       step=st.sampled_from(STEPS))
def test_order_qty_is_the_spec_formula_exactly(notional: D, price: D, step: str) -> None:
    s = D(step)
    q = qty_for_notional(notional, price, step)
    assert q == qty_decimal(notional, price, s)  # the one implementation, no one-step slack
    # n = floor(notional / (price * step) + 1e-9), checked without division
    n = q / s
    assert n == n.to_integral_value() and n >= 0
    assert n * price * s <= notional + D("1e-9") * price * s < (n + 1) * price * s
    assert qty_for_notional(float(notional), float(price), float(step)) == \
        qty_decimal(float(notional), float(price), float(step))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10 ** 9), price=st.decimals("0.000001", "1000000", places=6), step=st.sampled_from(STEPS),
       short=st.decimals("0", "1e-9", places=12))
def test_order_qty_within_the_tolerance_of_a_whole_number_of_steps(n: int, price: D, step: str, short: D) -> None:
    # a notional up to 1e-9 steps short of n steps buys n steps (the spec's + 1e-9), never n - 1
    s = D(step)
    notional = (n - short) * price * s
    assert qty_for_notional(notional, price, step) == n * s == qty_decimal(notional, price, step)
    if short > 0:
        assert qty_for_notional(notional - D("1e-9") * price * s, price, step) == (n - 1) * s


def test_order_qty_keeps_a_whole_number_of_steps_lost_to_float_noise() -> None:
    # 0.1 * 3 * 100: 29.999999999999996 USDT is 1000 steps of 0.1 at 0.3 up to float noise;
    # floor(notional / price / step) without the spec's 1e-9 gave 999 (99.9), the backtester 100.0
    assert qty_for_notional(29.999999999999996, 0.3, 0.1) == D("100.0") == qty_decimal(29.999999999999996, 0.3, 0.1)
    assert qty_for_notional("29.999999999999996", "0.3", "0.1") == D("100.0")
    assert qty_for_notional("29.99999997", "0.3", "0.1") == D("99.9")  # 1e-7 steps short: not a whole number
    assert str(qty_for_notional("100", "0.01", "10")) == "10000"  # a step of 10: plain, not 1E+4


def test_order_qty_cap_and_bad_prices() -> None:
    assert qty_for_notional("1000", "1", "0.1", max_qty="55.55") == D("55.5")
    assert qty_for_notional("10", "1", "0.1", max_qty="55.55") == D("10.0")
    assert qty_for_notional("0", "1", "0.1") == 0 and qty_for_notional("-5", "1", "0.1") == 0
    with pytest.raises(ValueError, match="price"):
        qty_for_notional("10", "0", "0.1")
    with pytest.raises(ValueError, match="step"):
        qty_for_notional("10", "1", "0")


def test_rounding_examples() -> None:
    assert str(round_qty(454.8, 0.1)) == "454.8"
    assert str(round_qty("454.89", "0.1")) == "454.8"
    assert round_qty("5", "0.1", max_qty="3.05") == D("3.0")
    assert str(round_qty("1234", "10")) == "1230"
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
    assert await ex.order_status("JASMYUSDT", "b-1-1o0-x") == f1
    assert await ex.order_status("VETUSDT", "b-1-1o0-x") is None  # the symbol is part of the lookup
    assert f1.status == "Filled" and f1.status in FINAL_STATUSES
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
    assert await ex.positions() == {} and await ex.order_status(req.symbol, req.order_link_id) is None
    assert await ex.wallet_balance() == D("100")


@pytest.mark.asyncio
async def test_paper_fills_an_order_sized_by_qty_for_notional() -> None:
    ex = _paper()
    vet = (await ex.instruments())[1]
    qty = qty_for_notional(D("100"), D("0.01420"), vet.qty_step, max_qty=vet.max_mkt_qty)
    assert qty == D("7042")  # 100 / 0.0142 = 7042.25
    fill = await ex.place_market_order(OrderRequest("VETUSDT", "Buy", qty, "b-2-1o0-x"))
    assert fill.qty == qty and fill.qty * fill.avg_price <= D("100")
    capped = qty_for_notional(D("1e7"), D("0.01420"), vet.qty_step, max_qty=vet.max_mkt_qty)
    assert capped == D("100000") == vet.max_mkt_qty  # the most the paper exchange (and Bybit) accepts


@pytest.mark.asyncio
async def test_no_quote_is_a_temporary_error() -> None:
    ex = PaperExchange([Instrument("XUSDT", D("1"), D("1"), D("0.1"))], D("100"), D("0.001"))
    with pytest.raises(TemporaryError):
        await ex.place_market_order(OrderRequest("XUSDT", "Buy", D("1"), "z"))

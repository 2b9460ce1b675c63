"""Order lookup by symbol and orderLinkId (realtime, then history), open orders, partial
fills and cancels, against the loopback fake held to Bybit v5's documented rules."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal as D
from typing import Any

import pytest
from pybit.exceptions import InvalidRequestError
from pybit.unified_trading import HTTP

from bot.core.exchange.interface import FINAL_STATUSES, OrderRejected, OrderRequest, TemporaryError
from bot.core.exchange.rounding import order_link_id
from tests.exchange.conftest import MARKETS, adapter
from tests.fakes.bybit import FakeBybit, Market


def _raw(fake: FakeBybit) -> HTTP:
    """A signed pybit session on the fake, one attempt per call: what the venue answers."""
    http = HTTP(api_key="test-key", api_secret="test-secret", max_retries=1, retry_codes={0}, force_retry=False)
    http.endpoint = fake.http_url
    return http


def _code(call: Any, **kwargs: Any) -> int:
    with pytest.raises(InvalidRequestError) as err:
        call(**kwargs)
    return err.value.status_code  # type: ignore[no-any-return]


@pytest.mark.asyncio(loop_scope="session")
async def test_the_fake_refuses_what_bybit_refuses(fake: FakeBybit) -> None:
    """Proof the fake is strict: the raw endpoints answer 10001 without the parameters
    Bybit's docs require, so an adapter that leaves them out fails here as it would live."""
    ex = adapter(fake)
    link = order_link_id(40, 1, "open")
    await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.10"), link))
    raw = _raw(fake)
    # realtime, linear: symbol, baseCoin or settleCoin is required (orderLinkId alone is not enough)
    assert _code(raw.get_open_orders, category="linear", orderLinkId=link) == 10001
    assert _code(raw.get_open_orders, symbol="ETHUSDT", orderLinkId=link) == 10001  # no category
    assert _code(raw.get_open_orders, category="linear", symbol="ETHUSDT", limit=51) == 10001
    found = raw.get_open_orders(category="linear", symbol="ETHUSDT", orderLinkId=link)["result"]["list"]
    assert [r["orderLinkId"] for r in found] == [link]  # by id: a closed order too (openOnly ignored)
    assert raw.get_open_orders(category="linear", symbol="ETHUSDT")["result"]["list"] == []  # openOnly=0: open only
    assert [r["orderLinkId"] for r in raw.get_open_orders(category="linear", settleCoin="USDT",
                                                          openOnly=1)["result"]["list"]] == [link]
    assert raw.get_open_orders(category="linear", symbol="SOLUSDT", orderLinkId=link)["result"]["list"] == []
    # history: startTime and endTime together, at most 7 days apart
    assert _code(raw.get_order_history, category="linear", orderLinkId=link, startTime=1) == 10001
    assert _code(raw.get_order_history, category="linear", startTime=0, endTime=8 * 86_400_000) == 10001
    assert _code(raw.get_order_history, orderLinkId=link) == 10001
    hist = raw.get_order_history(category="linear", orderLinkId=link)["result"]["list"]
    assert [(r["orderLinkId"], r["orderStatus"]) for r in hist] == [(link, "Filled")]
    # cancel: symbol and orderId or orderLinkId are required; a final order is 110001
    assert _code(raw.cancel_order, category="linear", orderLinkId=link) == 10001
    assert _code(raw.cancel_order, category="linear", symbol="ETHUSDT") == 10001
    assert _code(raw.cancel_order, category="linear", symbol="ETHUSDT", orderLinkId=link) == 110001


@pytest.mark.asyncio(loop_scope="session")
async def test_lookup_falls_back_to_history_after_a_server_restart(fake: FakeBybit) -> None:
    ex = adapter(fake)
    link = order_link_id(41, 1, "open")
    placed = await ex.place_market_order(OrderRequest("ETHUSDT", "Sell", D("0.20"), link))
    fake.forget_closed_orders()  # Bybit restarted: realtime no longer knows closed orders
    raw = _raw(fake)
    assert raw.get_open_orders(category="linear", symbol="ETHUSDT", orderLinkId=link)["result"]["list"] == []
    before = fake.requests["/v5/order/history"]
    fill = await ex.order_status("ETHUSDT", link)
    assert fill is not None and fake.requests["/v5/order/history"] == before + 1
    assert (fill.qty, fill.avg_price, fill.fee, fill.status) == (placed.qty, placed.avg_price, placed.fee, "Filled")
    assert fill.status in FINAL_STATUSES
    assert await ex.order_status("SOLUSDT", link) is None  # the symbol is part of the lookup
    assert await ex.order_status("ETHUSDT", "b-none") is None  # neither realtime nor history knows it


@pytest.fixture
def small_fake(shared_data: object) -> Iterator[FakeBybit]:
    with FakeBybit([Market(**m.__dict__) for m in MARKETS], realtime_closed_kept=2) as f:
        yield f


@pytest.mark.asyncio(loop_scope="session")
async def test_realtime_keeps_only_the_most_recent_closed_orders(small_fake: FakeBybit) -> None:
    """Realtime answers only the last N closed orders (500 on Bybit, 2 here): an older one is
    found in history."""
    ex = adapter(small_fake)
    links = [order_link_id(42 + k, 1, "open") for k in range(3)]
    for link in links:
        await ex.place_market_order(OrderRequest("SOLUSDT", "Buy", D("1.0"), link))
    raw = _raw(small_fake)
    recent = raw.get_open_orders(category="linear", symbol="SOLUSDT", openOnly=1)["result"]["list"]
    assert [r["orderLinkId"] for r in recent] == links[:0:-1]  # newest first, the first one forgotten
    assert raw.get_open_orders(category="linear", symbol="SOLUSDT", orderLinkId=links[0])["result"]["list"] == []
    fill = await ex.order_status("SOLUSDT", links[0])
    assert fill is not None and fill.qty == D("1.0") and fill.status == "Filled"


@pytest.mark.asyncio(loop_scope="session")
async def test_partial_fill_is_a_fill_with_its_qty_and_status(fake: FakeBybit) -> None:
    ex = adapter(fake)
    await ex.instruments()
    fake.partial_next_order(0.55)  # 0.10 ETH: floor(0.055 / 0.01) * 0.01 = 0.05 fills, the rest is cancelled
    link = order_link_id(46, 1, "open")
    fill = await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.10"), link))
    assert (fill.qty, fill.status) == (D("0.05"), "PartiallyFilledCanceled")
    assert fill.fee == D("0.05") * fill.avg_price * fake.state.fee_rate
    assert await ex.positions() == {"ETHUSDT": D("0.05")}
    assert await ex.order_status("ETHUSDT", link) == fill
    fake.partial_next_order(0.05)  # 0.005 ETH rounds down to nothing: Cancelled unfilled
    with pytest.raises(OrderRejected, match="Cancelled unfilled"):
        await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.10"), order_link_id(46, 2, "open")))
    assert await ex.positions() == {"ETHUSDT": D("0.05")}


@pytest.mark.asyncio(loop_scope="session")
async def test_a_held_order_is_found_new_then_cancelled(fake: FakeBybit) -> None:
    ex = adapter(fake, fill_wait_s=0.3)
    await ex.instruments()
    fake.hold_next_orders()
    link = order_link_id(44, 1, "open")
    with pytest.raises(TemporaryError, match="not final"):
        await ex.place_market_order(OrderRequest("SOLUSDT", "Sell", D("2.0"), link))
    state = await ex.order_status("SOLUSDT", link)
    assert state is not None and (state.status, state.qty) == ("New", D(0))
    assert state.status not in FINAL_STATUSES
    assert fake.state.orders[link]["leavesQty"] == "2.0"
    assert await ex.cancel_order("SOLUSDT", link) is True
    done = await ex.order_status("SOLUSDT", link)
    assert done is not None and (done.status, done.qty) == ("Cancelled", D(0))
    assert await ex.cancel_order("SOLUSDT", link) is False  # already final: 110001
    assert await ex.positions() == {} and fake.requests["/v5/order/cancel"] == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_a_held_order_filled_later_is_never_placed_twice(fake: FakeBybit) -> None:
    ex = adapter(fake, fill_wait_s=0.3)
    await ex.instruments()
    fake.hold_next_orders()
    link = order_link_id(45, 1, "open")
    req = OrderRequest("SOLUSDT", "Buy", D("3.0"), link)
    with pytest.raises(TemporaryError):
        await ex.place_market_order(req)
    fake.fill_held(link)
    fill = await ex.place_market_order(req)  # the retry finds the order by its link id
    assert (fill.qty, fill.status) == (D("3.0"), "Filled") and fake.orders_created == 1
    assert await ex.positions() == {"SOLUSDT": D("3.0")}
    assert await ex.cancel_order("SOLUSDT", link) is False

"""The pybit adapter against the loopback fake of Bybit v5: real HTTP, real signatures."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.config.loader import example_path, load
from bot.core.backfill import refresh_instruments
from bot.core.db.market import read_instruments
from bot.core.db.pool import Database
from bot.core.exchange.bybit import BybitExchange, RetryPolicy, instrument_from_json, order_body
from bot.core.exchange.factory import ExchangeConfigError, trading_exchange
from bot.core.exchange.interface import OrderRejected, OrderRequest, TemporaryError, VenueError
from bot.core.exchange.paper import PaperExchange
from bot.core.exchange.rounding import order_link_id, qty_for_notional
from tests.exchange.conftest import adapter
from tests.fakes.bybit import FakeBybit, kline_close


@pytest.mark.asyncio(loop_scope="session")
async def test_instruments_follow_the_cursor_and_keep_exact_decimals(fake: FakeBybit) -> None:
    ex = adapter(fake)
    inst = {i.symbol: i for i in await ex.instruments()}
    assert sorted(inst) == ["BTCUSDT", "ETHUSDT", "JASMYUSDT", "SOLUSDT", "VETUSDT"]
    assert fake.requests["/v5/market/instruments-info"] == 3  # 2 per page: 5 symbols need 3 pages
    btc = inst["BTCUSDT"]
    assert (btc.qty_step, btc.tick_size, btc.min_notional, btc.max_mkt_qty) == (D("0.001"), D("0.10"), D("5"), D("120"))
    assert str(inst["JASMYUSDT"].tick_size) == "0.000001"


def test_instrument_parser_reads_the_real_fixture(shared_data: Path) -> None:
    raw = json.loads((shared_data / "bybit_api/nautilus_legacy_integration_resources/http_responses/linear/"
                      "instruments.json").read_text())
    inst = {i.symbol: i for i in map(instrument_from_json, raw["result"]["list"])}
    assert inst["BTCUSDT"].qty_step == D("0.001") and inst["BTCUSDT"].tick_size == D("0.10")
    assert inst["BTCUSDT"].max_mkt_qty == D("500.000") and inst["BTCUSDT"].price_scale == 2
    assert inst["ETHUSDT"].qty_step == D("0.01") and inst["ETHUSDT"].tick_size == D("0.01")


@pytest.mark.asyncio(loop_scope="session")
async def test_instruments_refresh_into_the_table(fake: FakeBybit, db: Database) -> None:
    n = await refresh_instruments(db, adapter(fake))
    assert n == 5
    table = {r["symbol"]: r for r in (await read_instruments(db)).iter_rows(named=True)}
    assert table["BTCUSDT"]["qty_step"] == "0.001" and table["BTCUSDT"]["tick_size"] == "0.10"
    assert table["JASMYUSDT"]["base_coin"] == "JASMY" and table["VETUSDT"]["tick_size"] == "0.00001"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_bad_instrument_from_the_venue_fails_the_refresh_and_keeps_the_table(fake: FakeBybit,
                                                                                     db: Database) -> None:
    """The live refresh and `bot data import` share the parser: a qtyStep of 0 (or none) is
    never stored as a step; the refresh fails naming the field and the table is unchanged."""
    from bot.core.exchange.bybit import InstrumentsAnswerError

    await refresh_instruments(db, adapter(fake))
    before = await read_instruments(db)
    fake.state.markets["SOLUSDT"].qty_step = "0"
    with pytest.raises(InstrumentsAnswerError, match=r"page 2: result\.list\[1\] \(SOLUSDT\)\.lotSizeFilter\.qtyStep: "
                                                     r"must be positive \(got '0'\)"):
        await refresh_instruments(db, adapter(fake))
    assert (await read_instruments(db)).equals(before)


@pytest.mark.asyncio(loop_scope="session")
async def test_market_order_leaves_as_an_exact_decimal_and_fills(fake: FakeBybit) -> None:
    ex = adapter(fake)
    await ex.instruments()
    qty = qty_for_notional(D("50"), D("0.01415"), D("1"))  # 3533 VET
    link = order_link_id(7, 1, "open")
    fill = await ex.place_market_order(OrderRequest("VETUSDT", "Buy", qty, link))
    assert fill.qty == qty and fill.order_link_id == link
    assert fill.avg_price == D("0.01416")  # the ask of the untouched book: bid 0.01415 + one tick
    assert fill.fee == D(fake.state.orders[link]["cumExecFee"])
    assert fake.state.orders[link]["qty"] == "3533"
    assert await ex.positions() == {"VETUSDT": D("3533")}
    # a reduce-only close of the whole position
    close = await ex.place_market_order(OrderRequest("VETUSDT", "Sell", qty, order_link_id(7, 1, "close"), True))
    assert close.qty == qty and await ex.positions() == {}
    assert await ex.wallet_balance() == fake.state.balance


@pytest.mark.asyncio(loop_scope="session")
async def test_qty_off_the_step_is_refused_before_sending(fake: FakeBybit) -> None:
    ex = adapter(fake)
    await ex.instruments()
    with pytest.raises(OrderRejected) as err:
        await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.015"), "b-x-1o0-1"))
    assert err.value.code == 10001 and "qtyStep" in err.value.message
    with pytest.raises(OrderRejected):  # above maxMktOrderQty, even though on the step
        await ex.place_market_order(OrderRequest("BTCUSDT", "Buy", D("120.001"), "b-x-1o0-2"))
    assert fake.requests["/v5/order/create"] == 0 and fake.orders_created == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_unknown_symbol_is_refused_after_refreshing_instruments(fake: FakeBybit) -> None:
    ex = adapter(fake)  # nothing cached yet: the adapter fetches instruments before its qty check
    with pytest.raises(OrderRejected, match="NOPEUSDT is unknown"):
        await ex.place_market_order(OrderRequest("NOPEUSDT", "Buy", D("1"), "b-n-1o0-1"))
    assert fake.requests["/v5/market/instruments-info"] == 3 and fake.requests["/v5/order/create"] == 0


def test_order_body_never_drifts() -> None:
    from bot.core.exchange.interface import Instrument

    inst = Instrument("XUSDT", D("0.1"), D("0.1"), D("0.01"))
    body = order_body(OrderRequest("XUSDT", "Sell", D("454.8"), "b-1-2c0-ab"), inst)
    assert body["qty"] == "454.8" and body["reduceOnly"] is False and body["positionIdx"] == 0
    assert order_body(OrderRequest("XUSDT", "Buy", D("1E+1"), "b-1"), inst)["qty"] == "10.0"


@pytest.mark.parametrize(("code", "msg"), [(110007, "ab not enough for new order"), (10001, "Qty invalid")])
@pytest.mark.asyncio(loop_scope="session")
async def test_rejected_order_is_typed_and_nothing_is_filled(fake: FakeBybit, code: int, msg: str) -> None:
    ex = adapter(fake)
    await ex.instruments()
    fake.reject_next_order(code, msg)
    link = order_link_id(9, 2, "open")
    with pytest.raises(OrderRejected) as err:
        await ex.place_market_order(OrderRequest("ETHUSDT", "Sell", D("0.10"), link))
    assert (err.value.code, err.value.message, err.value.order_link_id) == (code, msg, link)
    assert fake.orders_created == 0 and await ex.positions() == {} and await ex.order_status("ETHUSDT", link) is None
    assert fake.requests["/v5/order/create"] == 1  # a rejection is not retried


@pytest.mark.asyncio(loop_scope="session")
async def test_timeout_on_create_is_looked_up_never_placed_twice(fake: FakeBybit) -> None:
    ex = adapter(fake, timeout_s=0.4)
    await ex.instruments()
    fake.delay_create(1.5)  # the venue places the order but answers after the client gave up
    link = order_link_id(11, 1, "open")
    fill = await ex.place_market_order(OrderRequest("SOLUSDT", "Buy", D("1.0"), link))
    assert fill.qty == D("1.0") and fill.order_link_id == link
    assert fake.orders_created == 1 and fake.requests["/v5/order/create"] == 1
    assert await ex.positions() == {"SOLUSDT": D("1.0")}


@pytest.mark.asyncio(loop_scope="session")
async def test_timeout_then_resend_after_lookup_finds_nothing(fake: FakeBybit) -> None:
    ex = adapter(fake, timeout_s=0.4)
    await ex.instruments()
    fake.reject_next_order(10016, "Server error")  # a retryable code: nothing placed, so it is sent again
    fill = await ex.place_market_order(OrderRequest("SOLUSDT", "Sell", D("2.0"), order_link_id(12, 2, "open")))
    assert fill.qty == D("2.0") and fake.orders_created == 1 and fake.requests["/v5/order/create"] == 2
    assert fake.requests["/v5/order/realtime"] >= 2  # the lookup before the resend, then the fill


@pytest.mark.asyncio(loop_scope="session")
async def test_rate_limit_waits_for_the_reset_then_succeeds(fake: FakeBybit) -> None:
    ex = adapter(fake)
    fake.rate_limit_next(2)
    t0 = time.monotonic()
    inst = await ex.instruments()
    assert len(inst) == 5 and ex.retries == 2
    assert time.monotonic() - t0 >= 0.2  # waited for X-Bapi-Limit-Reset-Timestamp (now + 200 ms) at least once


@pytest.mark.asyncio(loop_scope="session")
async def test_http_403_waits_the_full_ip_ban_not_max_backoff(fake: FakeBybit) -> None:
    """A 403 is Bybit's IP ban (minutes): the retry waits ip_ban_s in full, though it is
    above max_backoff_s (which caps every other wait)."""
    ex = adapter(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.1, ip_ban_s=0.6))
    fake.http_status_next(403)
    t0 = time.monotonic()
    assert await ex.wallet_balance() == D("10000")
    assert time.monotonic() - t0 >= 0.6
    assert ex.retries == 1 and fake.requests["/v5/account/wallet-balance"] == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_http_403_waits_its_retry_after(fake: FakeBybit) -> None:
    """With a Retry-After header the ban lasts that long (here shorter than ip_ban_s, longer
    than max_backoff_s); an order create behind a 403 waits it too, then is looked up and
    placed once."""
    ex = adapter(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.1, ip_ban_s=60.0))
    await ex.instruments()
    fake.http_status_next(403, retry_after=0.7)
    t0 = time.monotonic()
    fill = await ex.place_market_order(OrderRequest("SOLUSDT", "Buy", D("1.0"), order_link_id(13, 1, "open")))
    waited = time.monotonic() - t0
    assert 0.7 <= waited < 10.0 and fill.qty == D("1.0")
    assert fake.orders_created == 1 and fake.requests["/v5/order/create"] == 2  # the 403 one placed nothing


def test_retry_policy_waits() -> None:
    from bot.core.exchange.bybit import retry_after_s

    pol = RetryPolicy(backoff_s=0.25, max_backoff_s=30.0, ip_ban_s=90.0)
    assert pol.wait(0, None) == 0.25 and pol.wait(10, None) == 30.0 and pol.wait(0, 45.0) == 30.0  # capped
    assert pol.wait(0, None, ip_ban=True) == 90.0 and pol.wait(3, 300.0, ip_ban=True) == 300.0  # never capped
    assert RetryPolicy().ip_ban_s == 60.0
    assert retry_after_s({"Retry-After": "120"}) == 120.0 and retry_after_s({}) is None
    assert retry_after_s(None) is None and retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=lambda: 1445412450.0) == 60.0  # an HTTP date


@pytest.mark.asyncio(loop_scope="session")
async def test_rate_limiter_spaces_calls() -> None:
    from bot.core.exchange.bybit import RateLimiter

    lim = RateLimiter(50.0, burst=1)
    t0 = time.monotonic()
    for _ in range(11):
        await lim.acquire()
    assert time.monotonic() - t0 >= 0.19  # 10 waits of 20 ms after the first token
    with pytest.raises(ValueError):
        RateLimiter(0)


@pytest.mark.asyncio(loop_scope="session")
async def test_retries_are_bounded(fake: FakeBybit) -> None:
    ex = adapter(fake, retry=RetryPolicy(attempts=3, backoff_s=0.01))
    fake.rate_limit_next(10)
    with pytest.raises(TemporaryError, match="gave up after 3 attempts"):
        await ex.wallet_balance()
    assert fake.requests["/v5/account/wallet-balance"] == 3


@pytest.mark.asyncio(loop_scope="session")
async def test_network_error_is_temporary() -> None:
    ex = BybitExchange("k", "s", base_url="http://127.0.0.1:9", retry=RetryPolicy(attempts=2, backoff_s=0.01),
                       timeout_s=0.5)
    with pytest.raises(TemporaryError, match="network error"):
        await ex.instruments()


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_signature_is_a_venue_error(fake: FakeBybit) -> None:
    ex = BybitExchange("test-key", "wrong-secret", base_url=fake.http_url)
    with pytest.raises(VenueError) as err:
        await ex.wallet_balance()
    assert err.value.code == 10004
    with pytest.raises(OrderRejected) as rej:
        await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.10"), "b-s-1o0-1"))
    assert rej.value.code == 10004 and fake.orders_created == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_leverage_already_set_is_success(fake: FakeBybit) -> None:
    ex = adapter(fake)
    await ex.set_leverage("ETHUSDT", D(3))
    await ex.set_leverage("ETHUSDT", D(3))  # 110043 "leverage not modified"
    assert fake.state.leverage["ETHUSDT"] == "3"
    with pytest.raises(VenueError):
        await ex.set_leverage("NOPEUSDT", D(3))


@pytest.mark.asyncio(loop_scope="session")
async def test_cancel_of_a_filled_market_order_is_false(fake: FakeBybit) -> None:
    ex = adapter(fake)
    link = order_link_id(31, 1, "open")
    await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.10"), link))
    assert await ex.cancel_order("ETHUSDT", link) is False  # market orders are final at once (110001)
    assert await ex.cancel_order("ETHUSDT", "b-none") is False  # unknown: the same answer
    assert fake.requests["/v5/order/cancel"] == 2 and await ex.positions() == {"ETHUSDT": D("0.10")}


@pytest.mark.asyncio(loop_scope="session")
async def test_kline_page_is_oldest_first_and_deterministic(fake: FakeBybit) -> None:
    ex = adapter(fake)
    end = int(time.time() // 3600 * 3600 * 1000) - 3_600_000
    rows = await ex.klines("BTCUSDT", "1h", end - 9 * 3_600_000, end)
    assert len(rows) == 10 and [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    assert float(rows[-1][4]) == pytest.approx(kline_close("BTCUSDT", 60000.0, end), rel=1e-9)
    with pytest.raises(ValueError):
        await ex.klines("BTCUSDT", "7m", 0, 1)


def test_live_mode_without_keys_is_refused() -> None:
    cfg = load(example_path())
    live = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"mode": "live"})})
    with pytest.raises(ExchangeConfigError, match="BYBIT_API_KEY and BYBIT_API_SECRET"):
        trading_exchange(live, [], env={})
    with pytest.raises(ExchangeConfigError, match="BYBIT_API_SECRET is not set"):
        trading_exchange(live, [], env={"BYBIT_API_KEY": "k"})
    assert isinstance(trading_exchange(live, [], env={"BYBIT_API_KEY": "k", "BYBIT_API_SECRET": "s"}),
                      BybitExchange)
    assert isinstance(trading_exchange(cfg, [], env={}), PaperExchange)  # paper is the default


@pytest.mark.asyncio(loop_scope="session")
async def test_private_order_and_position_topics(fake: FakeBybit, shared_data: Path) -> None:
    """pybit's authenticated websocket against the fake: auth checked, order/position pushed on a fill,
    in the layout of the real fixtures."""
    import asyncio

    from bot.core.exchange.stream import _LocalWebSocket

    got: list[dict[str, object]] = []

    def on_raw(ws: object, message: dict[str, object]) -> None:
        got.append(message)

    def connect(secret: str) -> _LocalWebSocket:
        ws = _LocalWebSocket(fake.private_ws_url, on_raw, channel_type="private", api_key="test-key",
                             api_secret=secret, testnet=False, restart_on_error=False, retries=2)
        ws.order_stream(lambda m: None)
        ws.position_stream(lambda m: None)
        return ws

    ws = await asyncio.to_thread(connect, "test-secret")
    try:
        ex = adapter(fake)
        await ex.instruments()
        link = order_link_id(21, 1, "open")
        await ex.place_market_order(OrderRequest("ETHUSDT", "Buy", D("0.20"), link))
        for _ in range(100):
            if any(m.get("topic") == "position" for m in got):
                break
            await asyncio.sleep(0.02)
    finally:
        await asyncio.to_thread(ws.exit)
    assert any(m.get("op") == "auth" and m.get("success") is True for m in got)
    order = next(m for m in got if m.get("topic") == "order")["data"][0]  # type: ignore[index]
    position = next(m for m in got if m.get("topic") == "position")["data"][0]  # type: ignore[index]
    assert (order["orderLinkId"], order["orderStatus"], order["cumExecQty"]) == (link, "Filled", "0.20")
    assert (position["symbol"], position["side"], position["size"]) == ("ETHUSDT", "Buy", "0.20")
    real = json.loads((shared_data / "bybit_api/nautilus_crates_test_data/ws_account_order.json").read_text())
    assert set(real["data"][0]) <= set(order)  # every field of the real message is there
    got.clear()
    bad = await asyncio.to_thread(connect, "wrong-secret")
    await asyncio.sleep(0.2)
    await asyncio.to_thread(bad.exit)
    assert any(m.get("op") == "auth" and m.get("success") is False for m in got)
    assert any(m.get("op") == "subscribe" and m.get("success") is False for m in got)  # not authorized


@pytest.mark.asyncio(loop_scope="session")
async def test_scheduled_instruments_job(fake: FakeBybit, db: Database) -> None:
    from bot.core.scheduler import job_functions, record_run

    cfg = load(example_path())
    cfg = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"base_url": fake.http_url})})
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM instruments")
    assert await record_run(db.pool, "instruments", job_functions(db, cfg)["instruments"][1]) == "ok"
    assert (await read_instruments(db)).height == 5
    down = cfg.model_copy(update={"exchange": cfg.exchange.model_copy(update={"base_url": "http://127.0.0.1:9",
                                                                                "max_attempts": 1})})
    assert await record_run(db.pool, "instruments", job_functions(db, down)["instruments"][1]) == "failed"
    assert (await read_instruments(db)).height == 5  # a failed refresh leaves the table as it was

"""pybit's websocket bridged into asyncio, against the fake's orderbook.1 stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from bot.core.db.market import read_quotes
from bot.core.db.pool import Database
from bot.core.exchange.interface import Quote
from bot.core.exchange.stream import Book, BybitQuoteStream, quote_from_book
from tests.cli.test_cli import run_bot
from tests.fakes.bybit import FakeBybit


async def collect(stream: BybitQuoteStream, seconds: float) -> list[Quote]:
    out: list[Quote] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(stream.get(), left))
        except TimeoutError:
            break
    return out


def assert_in_order(quotes: list[Quote]) -> None:
    last: dict[str, float] = defaultdict(lambda: -1.0)
    for q in quotes:
        assert q.ts >= last[q.symbol], f"{q.symbol} went back in time"
        last[q.symbol] = q.ts
        assert q.bid < q.ask


def test_top_of_book_from_the_real_fixtures(shared_data: Path) -> None:
    d = shared_data / "bybit_api/nautilus_crates_test_data"
    snap = json.loads((d / "ws_orderbook_snapshot.json").read_text())
    q = quote_from_book(snap, received=1.0)
    assert q is not None and (str(q.bid), str(q.ask), str(q.bid_size), str(q.ask_size)) == (
        "27450.00", "27451.00", "0.500", "0.750")
    assert q.symbol == "BTCUSDT" and q.ts == 1709891679.0
    book = Book()
    quote_from_book(snap, 1.0, book)
    delta = json.loads((d / "ws_orderbook_delta.json").read_text())  # bid size changes, best ask deleted
    q2 = quote_from_book(delta, 2.0, book)
    assert q2 is not None and (str(q2.bid), str(q2.bid_size), str(q2.ask), str(q2.ask_size)) == (
        "27450.00", "0.400", "27451.50", "0.900")
    no_asks = json.loads((shared_data / "bybit_api/nautilus_legacy_integration_resources/ws_messages/public/"
                          "ws_orderbook_snapshot_no_asks.json").read_text())
    assert quote_from_book(no_asks, 1.0) is None  # one side empty: no top of book
    crossed = {"ts": 1, "data": {"s": "X", "b": [["10.0", "1"], ["10.00", "1"]], "a": [["10.00", "1"]]}}
    assert quote_from_book(crossed, 1.0) is None


@pytest.mark.asyncio(loop_scope="session")
async def test_snapshot_then_deltas_in_order(fake: FakeBybit) -> None:
    stream = BybitQuoteStream(fake.public_ws_url)
    await stream.start(["BTCUSDT", "ETHUSDT"])
    try:
        quotes = await collect(stream, 1.0)
    finally:
        await stream.close()
    assert {q.symbol for q in quotes} == {"BTCUSDT", "ETHUSDT"}
    assert len(quotes) >= 12  # 10 updates/s per symbol
    assert_in_order(quotes)
    assert all(0 <= q.received - q.ts < 1.0 for q in quotes)


@pytest.mark.asyncio(loop_scope="session")
async def test_dropped_socket_reconnects_and_resubscribes(fake: FakeBybit) -> None:
    stream = BybitQuoteStream(fake.public_ws_url, check_every_s=0.1)
    await stream.start(["BTCUSDT", "SOLUSDT"])
    try:
        before = await collect(stream, 0.5)
        assert fake.drop_websockets() == 1
        t_drop = time.time()
        after = await collect(stream, 2.0)
    finally:
        await stream.close()
    assert stream.reconnects == 1 and fake.ws_connections == 2
    assert fake.ws_subscribe_requests == 4  # two topics, each subscribed again on the new connection
    resumed = [q for q in after if q.received > t_drop + 0.05]
    assert {q.symbol for q in resumed} == {"BTCUSDT", "SOLUSDT"}
    assert min(q.received for q in resumed) - t_drop < 2.0  # back within seconds
    everything = before + after
    assert_in_order(everything)
    keys = [(q.symbol, q.ts, q.bid, q.ask, q.bid_size, q.ask_size) for q in everything]
    assert len(keys) == len(set(keys))  # no message delivered twice


@pytest.mark.asyncio(loop_scope="session")
async def test_a_silent_stream_is_rebuilt(fake: FakeBybit) -> None:
    stream = BybitQuoteStream(fake.public_ws_url, stale_after_s=0.5, check_every_s=0.1)
    await stream.start(["ETHUSDT"])
    try:
        await collect(stream, 0.3)
        fake.pause_feed()
        t0 = time.monotonic()
        while stream.reconnects == 0 and time.monotonic() - t0 < 5.0:
            await asyncio.sleep(0.05)
        assert stream.reconnects >= 1  # no message for 0.5 s on a connected socket
        assert time.monotonic() - t0 >= 0.4  # not before the stream was silent for ~stale_after_s
        fake.pause_feed(False)
        assert await collect(stream, 0.5)
    finally:
        await stream.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_symbols_follow_set_symbols(fake: FakeBybit) -> None:
    stream = BybitQuoteStream(fake.public_ws_url)
    await stream.start(["BTCUSDT"])
    try:
        await stream.set_symbols(["BTCUSDT", "VETUSDT"])
        await collect(stream, 0.4)
        await stream.set_symbols(["VETUSDT"])
        await asyncio.sleep(0.2)
        while not stream.queue.empty():
            stream.queue.get_nowait()
        later = await collect(stream, 0.5)
        assert fake.public_subscriptions() == {"orderbook.1.VETUSDT"}  # BTCUSDT unsubscribed at the venue
    finally:
        await stream.close()
    assert later and {q.symbol for q in later} == {"VETUSDT"}
    assert stream.age("VETUSDT") < 1.0 and stream.age("NOPEUSDT") == float("inf")


@pytest.mark.asyncio(loop_scope="session")
async def test_out_of_order_and_duplicate_messages_are_dropped() -> None:
    stream = BybitQuoteStream("ws://127.0.0.1:9")
    stream._wanted = {"XUSDT"}
    from decimal import Decimal as D

    def q(ts: float) -> Quote:
        return Quote("XUSDT", ts, D(1), D(2), D(1), D(1), ts)

    stream._deliver(q(10.0), 5)
    stream._deliver(q(10.0), 5)  # the same message again (a resend after reconnect)
    stream._deliver(q(9.9), 6)  # older
    stream._deliver(q(10.1), 1)  # newer snapshot after a venue restart resets u: kept
    stream._deliver(Quote("YUSDT", 11.0, D(1), D(2), D(1), D(1), 11.0), 1)  # not wanted
    got = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert [g.ts for g in got] == [10.0, 10.1] and stream.dropped_out_of_order == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_cli_record_end_to_end(fake: FakeBybit, db: Database, tmp_path: Path) -> None:
    """`bot data record` against the fake: the reference symbols recorded, a clean stop after --seconds."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"exchange:\n  ws_public_url: {fake.public_ws_url}\ndata:\n  quote_interval_s: 0.5\n")
    res = await asyncio.to_thread(run_bot, "--config", str(cfg), "data", "record", "--seconds", "3",
                                  env={"BOT_DATABASE_DSN": db.dsn}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "recorded" in res.stderr and "0 unwritten" in res.stderr
    quotes = await read_quotes(db, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 0, time.time() + 10)
    assert set(quotes["symbol"].unique()) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert quotes.height >= 9  # ~5 grid times x 3 symbols once the connection is up


@pytest.mark.asyncio(loop_scope="session")
async def test_venue_down_at_start_is_retried_in_the_background(shared_data: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stream = BybitQuoteStream(f"ws://127.0.0.1:{port}/v5/public/linear", check_every_s=0.05, max_backoff_s=0.2)
    await stream.start(["BTCUSDT"])  # does not raise: the watchdog keeps trying
    try:
        await asyncio.sleep(0.3)
        assert stream.messages == 0
        with FakeBybit(feed_rate=20, port=port):
            quotes = await collect(stream, 3.0)
    finally:
        await stream.close()
    assert quotes and stream.reconnects >= 1

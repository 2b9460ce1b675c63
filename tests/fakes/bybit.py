"""A loopback fake of the Bybit v5 API subset the bot uses, for tests and benchmarks.

REST (http://127.0.0.1:PORT): market/instruments-info (cursor pagination),
market/tickers, market/kline, market/time, order/create, order/cancel,
order/realtime, order/history, position/list, position/set-leverage,
account/wallet-balance. Private endpoints check Bybit's HMAC signature (timestamp +
key + recvWindow + payload, hex SHA-256) and the recv window, answering 10003 /
10004 / 10002 like the venue.

Orders follow Bybit's v5 docs (order/open-order, order/order-list, order/cancel-order)
as strictly as they are written; a request outside them answers retCode 10001:

- order/create: category linear; a Market order fills at once at the top of the book
  (IOC), unless a fault below holds it open or fills part of it.
- order/realtime: category linear and one of symbol, baseCoin or settleCoin
  (required for linear); limit 1-50 (default 20), cursor pagination, newest first.
  By orderId or orderLinkId (openOnly ignored): the order when it is open or among the
  500 most recently closed (`realtime_closed_kept`); else openOnly=0 (default) the open
  orders, openOnly=1 those closed ones. `forget_closed_orders()` is Bybit's server
  restart: realtime then knows no order closed before it (history still does).
- order/history: category linear; symbol, baseCoin, settleCoin, orderId, orderLinkId,
  orderStatus filter (all given filters apply); startTime and endTime must be passed
  together, at most 7 days apart, the last 7 days when absent; limit 1-50, cursor.
  It answers final orders (Filled, PartiallyFilledCanceled, Cancelled, Rejected ...).
- order/cancel: category linear, symbol (required) and orderId or orderLinkId. An open
  order on that symbol is cancelled (Cancelled, or PartiallyFilledCanceled when partly
  filled) and the answer is retCode 0 with orderId/orderLinkId; an unknown order, one on
  another symbol or one already final answers 110001. Websockets: /v5/public/linear (`orderbook.1.{SYMBOL}`: a snapshot, then
deltas, `{"op": "ping"}` answered) and /v5/private (auth, `order`, `position`).
Message layouts follow the real v5 fixtures in ../shared/data/bybit_api (an
instrument is the BTCUSDT entry of the fixture with its numbers replaced).

Faults, set from the test thread: `reject_next_order(code, msg)`,
`rate_limit_next(n)` (retCode 10006 with X-Bapi-Limit-* headers), `delay_create(s)`
(the order is placed, the answer comes late: a client timeout), `arrive_late(s)` (the
request reaches the venue late: unknown to lookups until then), `delay_all(s)`,
`http_status_next(403, retry_after=None)` (the IP limit's bare HTTP answer, with a
Retry-After header when given), `hold_next_orders(n)` (the next n orders are accepted
and rest unfilled, status New, leavesQty = qty, until cancelled or `fill_held(link)`),
`partial_next_order(fraction)` (the next order fills floor(qty * fraction / qtyStep)
qtySteps and the rest is cancelled: PartiallyFilledCanceled, or Cancelled when nothing
filled), `forget_closed_orders()`, `drop_websockets()` (abort every public connection),
`pause_feed()`.

The server runs on its own thread and event loop so the code under test (pybit is
synchronous; the bot's asyncio loop is the test's) talks to it over real sockets.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import math
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

FIXTURES = Path(os.environ.get("BOT_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")) \
    / "bybit_api"
_INSTRUMENT_FIXTURE = FIXTURES / "nautilus_legacy_integration_resources" / "http_responses" / "linear" / "instruments.json"
_ORDER_FIXTURE = FIXTURES / "nautilus_crates_test_data" / "ws_account_order.json"
_POSITION_FIXTURE = FIXTURES / "nautilus_crates_test_data" / "http_get_positions.json"

FINAL = frozenset({"Filled", "Cancelled", "Rejected", "PartiallyFilledCanceled", "Deactivated"})
REALTIME_CLOSED_KEPT = 500  # closed orders /v5/order/realtime still answers
HISTORY_WINDOW_MS = 7 * 86_400_000
_TF_MS = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": 3_600_000,
          "120": 7_200_000, "240": 14_400_000, "D": 86_400_000}


def _load(path: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return fallback


@dataclass
class Market:
    """One symbol of the fake venue."""

    symbol: str
    price: float
    qty_step: str = "0.001"
    tick_size: str = "0.01"
    min_qty: str = "0.001"
    min_notional: str = "5"
    max_mkt_qty: str = "1000000"
    listed_ms: int = 0  # klines exist from here on
    resnapshot: bool = False  # set_book moved it: the next feed message is a snapshot
    bid: Decimal = Decimal(0)
    ask: Decimal = Decimal(0)
    bid_size: Decimal = Decimal("10")
    ask_size: Decimal = Decimal("12")
    u: int = 0
    step: int = 0


@dataclass
class FakeState:
    markets: dict[str, Market] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # by orderLinkId
    positions: dict[str, Decimal] = field(default_factory=dict)
    entry_value: dict[str, Decimal] = field(default_factory=dict)
    leverage: dict[str, str] = field(default_factory=dict)
    balance: Decimal = Decimal("10000")
    fee_rate: Decimal = Decimal("0.00055")


def kline_close(symbol: str, base: float, t_ms: int) -> float:
    """Deterministic close of the bar opening at t_ms: the same for every page and call."""
    h = int(hashlib.sha256(symbol.encode()).hexdigest()[:6], 16)
    x = t_ms / 3_600_000.0
    return base * (1.0 + 0.03 * math.sin(x / 24.0 + h) + 0.004 * math.sin(x * 1.7 + h / 7.0))


class FakeBybit:
    """Start with `with FakeBybit(markets) as fake:`; `fake.http_url`, `fake.public_ws_url`."""

    def __init__(self, markets: list[Market] | None = None, api_key: str = "test-key",
                 api_secret: str = "test-secret", feed_rate: float = 10.0, page_limit_max: int = 1000,
                 seed: int = 7, port: int = 0, realtime_closed_kept: int = REALTIME_CLOSED_KEPT):
        self.keys = {api_key: api_secret}
        self.realtime_closed_kept = realtime_closed_kept  # Bybit keeps 500; smaller in tests
        self.feed_rate = feed_rate
        self.page_limit_max = page_limit_max
        self.state = FakeState()
        for m in markets or [Market("BTCUSDT", 60000.0, "0.001", "0.10"), Market("ETHUSDT", 3000.0, "0.01", "0.01")]:
            self.add_market(m)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.orders_created = 0
        self.ws_connections = 0
        self.ws_subscribe_requests = 0
        self.messages_sent = 0
        self._rejections: list[tuple[int, str]] = []
        self._rate_limited = 0
        self._http_status: list[tuple[int, float | None]] = []
        self._held = 0
        self._partial: list[Decimal] = []
        self._seq = 0  # creation order of orders (createdTime in ms ties)
        self._closed: list[str] = []  # orderLinkIds in the order they became final
        self._realtime_floor = 0  # index in _closed from which realtime knows closed orders
        self._create_delay = 0.0
        self._create_delay_count = 0
        self._arrive_late = 0.0
        self._arrive_late_count = 0
        self._delay_all = 0.0
        self._feed_paused = False
        self._seed = seed
        self._public: dict[web.WebSocketResponse, set[str]] = {}
        self._private: dict[web.WebSocketResponse, set[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = port  # 0: any free port
        self._instrument_template = _load(_INSTRUMENT_FIXTURE, {"result": {"list": [{}]}})["result"]["list"][0]
        self._order_template = _load(_ORDER_FIXTURE, {"data": [{}]})["data"][0]
        self._position_template = _load(_POSITION_FIXTURE, {"result": {"list": [{}]}})["result"]["list"][0]

    # ------------------------------------------------------------ set-up

    def add_market(self, m: Market) -> None:
        tick = Decimal(m.tick_size)
        p = Decimal(repr(m.price))
        # prices always carry the tick's decimals: pybit matches book levels by their string
        m.bid = ((p / tick).to_integral_value() * tick).quantize(tick)
        m.ask = (m.bid + tick).quantize(tick)
        self.state.markets[m.symbol] = m
        self.state.leverage.setdefault(m.symbol, "10")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/public/linear"

    @property
    def private_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v5/private"

    def __enter__(self) -> FakeBybit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-bybit", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake Bybit did not start")

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._startup())
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _startup(self) -> None:
        app = web.Application()
        app.router.add_get("/v5/market/instruments-info", self._instruments)
        app.router.add_get("/v5/market/tickers", self._tickers)
        app.router.add_get("/v5/market/kline", self._kline)
        app.router.add_get("/v5/market/time", self._time)
        app.router.add_post("/v5/order/create", self._order_create)
        app.router.add_post("/v5/order/cancel", self._order_cancel)
        app.router.add_get("/v5/order/realtime", self._order_realtime)
        app.router.add_get("/v5/order/history", self._order_history)
        app.router.add_get("/v5/position/list", self._position_list)
        app.router.add_post("/v5/position/set-leverage", self._set_leverage)
        app.router.add_get("/v5/account/wallet-balance", self._wallet)
        app.router.add_get("/v5/public/linear", self._public_ws)
        app.router.add_get("/v5/private", self._private_ws)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
        self._feed_task = asyncio.get_running_loop().create_task(self._feed())

    async def _shutdown(self) -> None:
        self._feed_task.cancel()
        for ws in list(self._public) + list(self._private):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------ faults

    def reject_next_order(self, code: int, message: str) -> None:
        with self.lock:
            self._rejections.append((code, message))

    def rate_limit_next(self, n: int) -> None:
        with self.lock:
            self._rate_limited += n

    def http_status_next(self, status: int, n: int = 1, retry_after: float | None = None) -> None:
        """The next n requests get this HTTP status (403: Bybit's IP rate limit) and no JSON;
        with a Retry-After header of `retry_after` seconds when given."""
        with self.lock:
            self._http_status.extend([(status, retry_after)] * n)

    def hold_next_orders(self, n: int = 1) -> None:
        """The next n created orders are accepted but rest unfilled (status New, leavesQty =
        qty) until cancelled (order/cancel) or filled by `fill_held`."""
        with self.lock:
            self._held += n

    def partial_next_order(self, fraction: float) -> None:
        """The next created order (not held) fills floor(qty * fraction / qtyStep) * qtyStep
        and the rest is cancelled at once, as IOC / price protection does: status
        PartiallyFilledCanceled (Cancelled, nothing filled, when that is 0)."""
        f = Decimal(str(fraction))
        if not 0 <= f < 1:
            raise ValueError(f"fraction must be in [0, 1) (got {fraction})")
        with self.lock:
            self._partial.append(f)

    def fill_held(self, link: str) -> dict[str, Any]:
        """Fill the rest of a held (open) order at the current top of book; returns its row."""
        with self.lock:
            order = self.state.orders.get(link)
            if order is None or order["orderStatus"] in FINAL:
                raise ValueError(f"fill_held: {link} is not an open order")
            m = self.state.markets[order["symbol"]]
            rest = Decimal(order["leavesQty"])
            price = m.ask if order["side"] == "Buy" else m.bid
            fee = self._execute(m, order["side"], rest, price)
            done = Decimal(order["cumExecQty"])
            value = Decimal(order["cumExecValue"]) + rest * price
            qty = done + rest
            order.update({"orderStatus": "Filled", "leavesQty": "0", "leavesValue": "0", "cumExecQty": str(qty),
                          "cumExecValue": str(value), "avgPrice": str((value / qty).quantize(Decimal(m.tick_size))),
                          "cumExecFee": str(Decimal(order["cumExecFee"]) + fee),
                          "updatedTime": str(int(time.time() * 1000))})
            self._close(link)
            snapshot, position = self._public_row(order), self._position_entry(m.symbol)
        self._push_threadsafe("order", [snapshot])
        self._push_threadsafe("position", [position])
        return snapshot

    def _push_threadsafe(self, topic: str, data: list[dict[str, Any]]) -> None:
        """Push to the private topic from the test's thread (the server runs on its own loop)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._push_private(topic, data), self._loop).result(10)

    def forget_closed_orders(self) -> None:
        """Bybit's server restart: /v5/order/realtime no longer knows the orders closed so far
        (open ones it still answers); /v5/order/history still has them all."""
        with self.lock:
            self._realtime_floor = len(self._closed)

    def delay_create(self, seconds: float, count: int = 1) -> None:
        with self.lock:
            self._create_delay, self._create_delay_count = seconds, count

    def arrive_late(self, seconds: float, count: int = 1) -> None:
        """The next `count` create requests reach the matching engine `seconds` late: until
        then the venue knows no such order (a lookup by orderLinkId finds nothing), then it
        is placed as usual (a request the bot gave up on, still on its way)."""
        with self.lock:
            self._arrive_late, self._arrive_late_count = seconds, count

    def delay_all(self, seconds: float) -> None:
        self._delay_all = seconds

    def set_book(self, symbol: str, bid: Decimal, ask: Decimal) -> None:
        """Move a book to bid/ask at once (a price jump); the next feed message of the symbol is
        a snapshot, then it walks on from there. Orders fill at the new book right away."""
        with self.lock:
            m = self.state.markets[symbol]
            m.bid, m.ask = bid, ask
            m.resnapshot = True

    def pause_feed(self, paused: bool = True) -> None:
        self._feed_paused = paused

    def drop_websockets(self) -> int:
        """Abort every public websocket connection (no close frame); returns how many."""
        assert self._loop is not None
        n = len(self._public)

        def abort() -> None:
            for ws in list(self._public):
                transport = ws._req.transport if ws._req is not None else None
                if transport is not None:
                    transport.abort()
        self._loop.call_soon_threadsafe(abort)
        return n

    def public_subscriptions(self) -> set[str]:
        out: set[str] = set()
        for topics in list(self._public.values()):
            out |= topics
        return out

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _ok(result: Any, headers: dict[str, str] | None = None) -> web.Response:
        body = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": int(time.time() * 1000)}
        return web.json_response(body, headers=headers)

    @staticmethod
    def _err(code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": int(time.time() * 1000)}
        return web.json_response(body, headers=headers)

    async def _common(self, request: web.Request, private: bool) -> tuple[web.Response | None, str]:
        self.requests[request.path] += 1
        if self._delay_all:
            await asyncio.sleep(self._delay_all)
        payload = request.query_string if request.method == "GET" else await request.text()
        with self.lock:
            status, retry_after = self._http_status.pop(0) if self._http_status else (None, None)
            limited = self._rate_limited > 0
            if limited and status is None:
                self._rate_limited -= 1
        if status is not None:
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return web.Response(status=status, text="Forbidden", headers=headers), payload
        if limited:
            now = int(time.time() * 1000)
            return self._err(10006, "Too many visits!", {
                "X-Bapi-Limit-Status": "0", "X-Bapi-Limit": "10",
                "X-Bapi-Limit-Reset-Timestamp": str(now + 200)}), payload
        if private:
            key = request.headers.get("X-BAPI-API-KEY", "")
            secret = self.keys.get(key)
            if secret is None:
                return self._err(10003, "API key is invalid."), payload
            ts = request.headers.get("X-BAPI-TIMESTAMP", "0")
            window = request.headers.get("X-BAPI-RECV-WINDOW", "5000")
            expect = hmac.new(secret.encode(), f"{ts}{key}{window}{payload}".encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expect, request.headers.get("X-BAPI-SIGN", "")):
                return self._err(10004, "error sign! origin_string[...]"), payload
            if abs(time.time() * 1000 - int(ts)) > int(window):
                return self._err(10002, "invalid request, please check your server timestamp or recv_window param"), payload
        return None, payload

    def _instrument_json(self, m: Market) -> dict[str, Any]:
        out = copy.deepcopy(self._instrument_template)
        out["symbol"] = m.symbol
        out["baseCoin"] = m.symbol[:-4]
        out["priceScale"] = str(max(0, -Decimal(m.tick_size).as_tuple().exponent))  # type: ignore[operator]
        out.setdefault("priceFilter", {})["tickSize"] = m.tick_size
        lot = out.setdefault("lotSizeFilter", {})
        lot.update({"qtyStep": m.qty_step, "minOrderQty": m.min_qty, "maxMktOrderQty": m.max_mkt_qty,
                    "maxOrderQty": str(Decimal(m.max_mkt_qty) * 10), "minNotionalValue": m.min_notional})
        return out

    # ------------------------------------------------------------ REST: market

    async def _time(self, request: web.Request) -> web.Response:
        now = time.time()
        return self._ok({"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))})

    async def _instruments(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=False)
        if err:
            return err
        q = request.query
        limit = min(int(q.get("limit", "500")), self.page_limit_max)
        names = sorted(self.state.markets)
        if q.get("symbol"):
            names = [s for s in names if s == q["symbol"]]
        start = int(q["cursor"]) if q.get("cursor") else 0
        page = names[start:start + limit]
        nxt = str(start + limit) if start + limit < len(names) else ""
        return self._ok({"category": "linear", "list": [self._instrument_json(self.state.markets[s]) for s in page],
                         "nextPageCursor": nxt})

    async def _tickers(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=False)
        if err:
            return err
        sym = request.query.get("symbol")
        rows = []
        for m in self.state.markets.values():
            if sym and m.symbol != sym:
                continue
            rows.append({"symbol": m.symbol, "bid1Price": str(m.bid), "bid1Size": str(m.bid_size),
                         "ask1Price": str(m.ask), "ask1Size": str(m.ask_size),
                         "lastPrice": str((m.bid + m.ask) / 2), "markPrice": str((m.bid + m.ask) / 2)})
        return self._ok({"category": "linear", "list": rows})

    async def _kline(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=False)
        if err:
            return err
        q = request.query
        m = self.state.markets.get(q.get("symbol", ""))
        if m is None:
            return self._err(10001, "params error: symbol invalid")
        step = _TF_MS.get(q.get("interval", ""))
        if step is None:
            return self._err(10001, "params error: interval invalid")
        limit = min(int(q.get("limit", "200")), 1000)
        now = int(time.time() * 1000)
        end = int(q.get("end", now))
        start = int(q.get("start", end - step * (limit - 1)))
        first = -(-max(start, m.listed_ms) // step) * step
        last = min(end, now) // step * step
        opens = list(range(first, last + 1, step))[-limit:]
        rows = []
        for t in reversed(opens):  # newest first, as Bybit answers
            o, c = kline_close(m.symbol, m.price, t - step), kline_close(m.symbol, m.price, t)
            rows.append([str(t), f"{o:.6f}", f"{max(o, c) * 1.001:.6f}", f"{min(o, c) * 0.999:.6f}", f"{c:.6f}",
                         "100.0", f"{100.0 * c:.4f}"])
        return self._ok({"category": "linear", "symbol": m.symbol, "list": rows})

    # ------------------------------------------------------------ REST: trading

    def _position_entry(self, symbol: str) -> dict[str, Any]:
        size = self.state.positions.get(symbol, Decimal(0))
        out = copy.deepcopy(self._position_template)
        m = self.state.markets[symbol]
        value = self.state.entry_value.get(symbol, Decimal(0))
        out.update({"symbol": symbol, "side": "Buy" if size > 0 else "Sell" if size < 0 else "",
                    "size": str(abs(size)), "positionIdx": 0, "leverage": self.state.leverage[symbol],
                    "avgPrice": str(abs(value / size)) if size else "0", "positionValue": str(abs(value)),
                    "markPrice": str((m.bid + m.ask) / 2)})
        return out

    def _execute(self, m: Market, side: str, qty: Decimal, price: Decimal) -> Decimal:
        """Book a fill of `qty` at `price` into the one-way position and the balance (under
        the lock); returns its taker fee."""
        signed = qty if side == "Buy" else -qty
        pos = self.state.positions.get(m.symbol, Decimal(0))
        fee = qty * price * self.state.fee_rate
        # one-way position: realise the pnl of the closed part at the average entry
        if pos != 0 and (pos > 0) != (signed > 0):
            closed = min(abs(signed), abs(pos))
            avg = self.state.entry_value[m.symbol] / pos
            pnl = closed * (price - avg) * (1 if pos > 0 else -1)
            self.state.balance += pnl
            self.state.entry_value[m.symbol] -= avg * closed * (1 if pos > 0 else -1)
            rest = abs(signed) - closed
            if rest:
                self.state.entry_value[m.symbol] = price * rest * (1 if signed > 0 else -1)
        else:
            self.state.entry_value[m.symbol] = self.state.entry_value.get(m.symbol, Decimal(0)) + price * signed
        self.state.positions[m.symbol] = pos + signed
        self.state.balance -= fee
        return fee

    def _close(self, link: str) -> None:
        """Under the lock: the order just became final."""
        self._closed.append(link)

    def _realtime_visible(self, order: dict[str, Any], kept: set[str]) -> bool:
        return order["orderStatus"] not in FINAL or order["orderLinkId"] in kept

    def _realtime_kept(self) -> set[str]:
        """Under the lock: the closed orders realtime still answers (the last 500, or
        `realtime_closed_kept`; none closed before the last `forget_closed_orders`)."""
        start = max(self._realtime_floor, len(self._closed) - self.realtime_closed_kept)
        return set(self._closed[start:])

    def _newest_first(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda o: (int(o["createdTime"]), o["_seq"]), reverse=True)

    @staticmethod
    def _public_row(order: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in order.items() if not k.startswith("_")}

    def _linear_only(self, params: Any) -> web.Response | None:
        category = params.get("category")
        if not category:
            return self._err(10001, "params error: category is required")
        if category != "linear":
            return self._err(10001, f"params error: category {category} is not served by the fake (linear only)")
        return None

    def _page(self, q: Any, rows: list[dict[str, Any]], category: str = "linear") -> web.Response:
        """One page of `rows` (newest first) by Bybit's limit [1, 50] (default 20) and cursor."""
        try:
            limit = int(q.get("limit") or 20)
            start = int(q.get("cursor") or 0)
        except ValueError:
            return self._err(10001, "params error: limit or cursor invalid")
        if not 1 <= limit <= 50 or start < 0:
            return self._err(10001, "params error: limit must be in [1, 50]")
        page = [self._public_row(o) for o in rows[start:start + limit]]
        nxt = str(start + limit) if start + limit < len(rows) else ""
        return self._ok({"category": category, "list": page, "nextPageCursor": nxt})

    def _matches(self, o: dict[str, Any], q: Any) -> bool:
        """Every filter given applies (symbol, baseCoin, settleCoin, orderId, orderLinkId)."""
        return ((not q.get("symbol") or o["symbol"] == q["symbol"])
                and (not q.get("baseCoin") or o["symbol"][:-4] == q["baseCoin"])
                and (not q.get("settleCoin") or o["symbol"].endswith(q["settleCoin"]))
                and (not q.get("orderId") or o["orderId"] == q["orderId"])
                and (not q.get("orderLinkId") or o["orderLinkId"] == q["orderLinkId"]))

    async def _order_create(self, request: web.Request) -> web.Response:
        err, payload = await self._common(request, private=True)
        if err:
            return err
        body = json.loads(payload)
        link = body.get("orderLinkId") or uuid.uuid4().hex
        with self.lock:
            late, self._arrive_late_count = ((self._arrive_late, self._arrive_late_count - 1)
                                             if self._arrive_late_count > 0 else (0.0, 0))
        if late:
            await asyncio.sleep(late)
        with self.lock:
            if self._rejections:
                code, msg = self._rejections.pop(0)
                return self._err(code, msg)
            bad = self._linear_only(body)
            if bad is not None:
                return bad
            if link in self.state.orders:
                return self._err(110072, "OrderLinkedID is duplicate")
            m = self.state.markets.get(body.get("symbol", ""))
            if m is None:
                return self._err(10001, "params error: symbol invalid")
            side, qty = body.get("side"), Decimal(str(body.get("qty", "0")))
            if side not in ("Buy", "Sell") or body.get("orderType") != "Market":
                return self._err(10001, "params error: side or orderType invalid")
            step = Decimal(m.qty_step)
            if qty <= 0 or qty % step != 0 or qty < Decimal(m.min_qty):
                return self._err(10001, "Qty invalid")
            if qty > Decimal(m.max_mkt_qty):
                return self._err(10001, "The quantity of a single market order must be less than the maximum")
            price = m.ask if side == "Buy" else m.bid
            signed = qty if side == "Buy" else -qty
            pos = self.state.positions.get(m.symbol, Decimal(0))
            if body.get("reduceOnly") and (pos == 0 or (pos > 0) == (signed > 0)):
                return self._err(110017, "current position is zero, cannot fix reduce-only order qty")
            if body.get("reduceOnly") and abs(signed) > abs(pos):  # Bybit fixes the qty to the position's
                qty = abs(pos)
                signed = qty if side == "Buy" else -qty
            if qty * price < Decimal(m.min_notional) and not body.get("reduceOnly"):
                return self._err(110094, "Order does not meet minimum order value")
            margin = qty * price / Decimal(self.state.leverage[m.symbol])
            if not body.get("reduceOnly") and margin > self.state.balance:
                return self._err(110007, "ab not enough for new order")
            held = self._held > 0
            if held:
                self._held -= 1
            fraction = self._partial.pop(0) if self._partial and not held else None
            now = str(int(time.time() * 1000))
            self._seq += 1
            order = copy.deepcopy(self._order_template)
            order.update({"category": "linear", "symbol": m.symbol, "orderId": uuid.uuid4().hex, "side": side,
                          "orderType": "Market", "price": str(price), "qty": str(qty), "timeInForce": "IOC",
                          "orderLinkId": link, "reduceOnly": bool(body.get("reduceOnly")),
                          "createdTime": now, "updatedTime": now, "cancelType": "UNKNOWN", "rejectReason": "EC_NoError",
                          "stopOrderType": "", "triggerPrice": "", "positionIdx": 0, "_seq": self._seq})
            if held:
                order.update({"orderStatus": "New", "leavesQty": str(qty), "leavesValue": str(qty * price),
                              "cumExecQty": "0", "cumExecValue": "0", "avgPrice": "", "cumExecFee": "0"})
            else:
                filled = qty if fraction is None else (qty * fraction / step).to_integral_value(ROUND_FLOOR) * step
                fee = self._execute(m, side, filled, price) if filled else Decimal(0)
                status = "Filled" if filled == qty else "PartiallyFilledCanceled" if filled else "Cancelled"
                order.update({"orderStatus": status, "leavesQty": "0", "leavesValue": "0", "cumExecQty": str(filled),
                              "cumExecValue": str(filled * price), "avgPrice": str(price) if filled else "",
                              "cumExecFee": str(fee),
                              "rejectReason": "EC_NoError" if filled == qty else "EC_CancelForNoFullFill"})
            self.state.orders[link] = order
            if order["orderStatus"] in FINAL:
                self._close(link)
            self.orders_created += 1
            delay = 0.0
            if self._create_delay_count > 0:
                delay, self._create_delay_count = self._create_delay, self._create_delay_count - 1
            snapshot, position = self._public_row(order), self._position_entry(m.symbol)
        await self._push_private("order", [snapshot])
        await self._push_private("position", [position])
        if delay:
            await asyncio.sleep(delay)
        return self._ok({"orderId": order["orderId"], "orderLinkId": link})

    async def _order_cancel(self, request: web.Request) -> web.Response:
        err, payload = await self._common(request, private=True)
        if err:
            return err
        body = json.loads(payload or "{}")
        bad = self._linear_only(body)
        if bad is not None:
            return bad
        symbol = body.get("symbol")
        if not symbol:
            return self._err(10001, "params error: symbol is required")
        if symbol not in self.state.markets:
            return self._err(10001, "params error: symbol invalid")
        order_id, link = body.get("orderId"), body.get("orderLinkId")
        if not order_id and not link:
            return self._err(10001, "params error: orderId or orderLinkId is required")
        with self.lock:
            if order_id:  # orderId first when both are given, as Bybit does
                order = next((o for o in self.state.orders.values() if o["orderId"] == order_id), None)
            else:
                order = self.state.orders.get(link)
            if order is None or order["symbol"] != symbol or order["orderStatus"] in FINAL:
                return self._err(110001, "order not exists or too late to cancel")
            filled = Decimal(order["cumExecQty"])
            order.update({"orderStatus": "PartiallyFilledCanceled" if filled else "Cancelled", "leavesQty": "0",
                          "leavesValue": "0", "cancelType": "CancelByUser",
                          "updatedTime": str(int(time.time() * 1000))})
            self._close(order["orderLinkId"])
            snapshot = self._public_row(order)
        await self._push_private("order", [snapshot])
        return self._ok({"orderId": snapshot["orderId"], "orderLinkId": snapshot["orderLinkId"]})

    async def _order_realtime(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=True)
        if err:
            return err
        q = request.query
        bad = self._linear_only(q)
        if bad is not None:
            return bad
        if not (q.get("symbol") or q.get("baseCoin") or q.get("settleCoin")):
            return self._err(10001, "params error: symbol, baseCoin or settleCoin is required for linear")
        if q.get("symbol") and q["symbol"] not in self.state.markets:
            return self._err(10001, "params error: symbol invalid")
        open_only = q.get("openOnly") or "0"
        if open_only not in ("0", "1"):
            return self._err(10001, "params error: openOnly invalid")
        with self.lock:
            kept = self._realtime_kept()
            if q.get("orderId") or q.get("orderLinkId"):  # openOnly is ignored for a query by id
                rows = [o for o in self.state.orders.values() if self._realtime_visible(o, kept)]
            elif open_only == "0":
                rows = [o for o in self.state.orders.values() if o["orderStatus"] not in FINAL]
            else:
                rows = [o for o in self.state.orders.values() if o["orderLinkId"] in kept]
            return self._page(q, self._newest_first([o for o in rows if self._matches(o, q)]))

    async def _order_history(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=True)
        if err:
            return err
        q = request.query
        bad = self._linear_only(q)
        if bad is not None:
            return bad
        if q.get("symbol") and q["symbol"] not in self.state.markets:
            return self._err(10001, "params error: symbol invalid")
        if bool(q.get("startTime")) != bool(q.get("endTime")):
            return self._err(10001, "params error: startTime and endTime must be passed together")
        now = int(time.time() * 1000)
        try:
            start, end = (int(q["startTime"]), int(q["endTime"])) if q.get("startTime") else (
                now - HISTORY_WINDOW_MS, now)
        except ValueError:
            return self._err(10001, "params error: startTime or endTime invalid")
        if end < start or end - start > HISTORY_WINDOW_MS:
            return self._err(10001, "params error: the query window is at most 7 days")
        with self.lock:
            rows = [o for o in self.state.orders.values()
                    if o["orderStatus"] in FINAL and start <= int(o["createdTime"]) <= end
                    and (not q.get("orderStatus") or o["orderStatus"] == q["orderStatus"]) and self._matches(o, q)]
            return self._page(q, self._newest_first(rows))

    async def _position_list(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=True)
        if err:
            return err
        q = request.query
        with self.lock:
            syms = [q["symbol"]] if q.get("symbol") else [s for s, v in self.state.positions.items() if v != 0]
            rows = [self._position_entry(s) for s in syms if s in self.state.markets]
        return self._ok({"category": "linear", "list": rows, "nextPageCursor": ""})

    async def _set_leverage(self, request: web.Request) -> web.Response:
        err, payload = await self._common(request, private=True)
        if err:
            return err
        body = json.loads(payload)
        sym = body.get("symbol", "")
        with self.lock:
            if sym not in self.state.markets:
                return self._err(10001, "params error: symbol invalid")
            if Decimal(self.state.leverage[sym]) == Decimal(str(body.get("buyLeverage"))):
                return self._err(110043, "leverage not modified")
            self.state.leverage[sym] = str(body.get("buyLeverage"))
        return self._ok({})

    async def _wallet(self, request: web.Request) -> web.Response:
        err, _ = await self._common(request, private=True)
        if err:
            return err
        bal = str(self.state.balance)
        return self._ok({"list": [{"accountType": "UNIFIED", "totalWalletBalance": bal, "totalEquity": bal,
                                   "coin": [{"coin": "USDT", "walletBalance": bal, "equity": bal,
                                             "unrealisedPnl": "0", "locked": "0"}]}]})

    # ------------------------------------------------------------ websockets

    async def _serve_ws(self, request: web.Request, registry: dict[web.WebSocketResponse, set[str]],
                        handle: Callable[[web.WebSocketResponse, dict[str, Any]], Awaitable[None]]
                        ) -> web.WebSocketResponse:
        """Accept a websocket, register it, hand each JSON text message to `handle`."""
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        registry[ws] = set()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await handle(ws, json.loads(msg.data))
        finally:
            registry.pop(ws, None)
        return ws

    async def _public_ws(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_connections += 1

        async def handle(ws: web.WebSocketResponse, req: dict[str, Any]) -> None:
            op = req.get("op")
            if op == "ping":
                await ws.send_json({"success": True, "ret_msg": "pong", "conn_id": "fake",
                                    "req_id": req.get("req_id", ""), "op": "ping"})
            elif op in ("subscribe", "unsubscribe"):
                self.ws_subscribe_requests += 1
                topics = self._public[ws]
                for t in req.get("args", []):
                    (topics.add if op == "subscribe" else topics.discard)(t)
                await ws.send_json({"success": True, "ret_msg": "", "conn_id": "fake",
                                    "req_id": req.get("req_id", ""), "op": op})
                if op == "subscribe":
                    for t in req.get("args", []):
                        m = self.state.markets.get(t.rsplit(".", 1)[-1])
                        if m is not None:
                            await self._send(ws, self._book_message(m, "snapshot"))

        return await self._serve_ws(request, self._public, handle)

    async def _private_ws(self, request: web.Request) -> web.WebSocketResponse:
        authed: set[web.WebSocketResponse] = set()

        async def handle(ws: web.WebSocketResponse, req: dict[str, Any]) -> None:
            op = req.get("op")
            if op == "auth":
                key, expires, sig = req["args"]
                secret = self.keys.get(key, "")
                expect = hmac.new(secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
                ok = bool(secret) and hmac.compare_digest(expect, sig)
                if ok:
                    authed.add(ws)
                await ws.send_json({"op": "auth", "success": ok, "retCode": 0 if ok else 10004,
                                    "retMsg": "" if ok else "Invalid sign", "connId": "fake"})
            elif op == "ping":
                await ws.send_json({"op": "pong", "conn_id": "fake"})
            elif op == "subscribe":
                ok = ws in authed
                if ok:
                    self._private[ws].update(req.get("args", []))
                await ws.send_json({"success": ok, "ret_msg": "" if ok else "Request not authorized",
                                    "conn_id": "fake", "req_id": req.get("req_id", ""), "op": "subscribe"})

        return await self._serve_ws(request, self._private, handle)

    async def _push_private(self, topic: str, data: list[dict[str, Any]]) -> None:
        msg = {"id": uuid.uuid4().hex, "topic": topic, "creationTime": int(time.time() * 1000), "data": data}
        for ws, topics in list(self._private.items()):
            if topic in topics:
                await self._send(ws, msg)

    async def _send(self, ws: web.WebSocketResponse, msg: dict[str, Any]) -> None:
        try:
            await ws.send_str(json.dumps(msg))
            self.messages_sent += 1
        except (ConnectionError, RuntimeError):
            pass

    def _book_message(self, m: Market, kind: str, old: tuple[Decimal, Decimal] | None = None) -> dict[str, Any]:
        now = int(time.time() * 1000)
        m.u += 1
        if kind == "snapshot":
            b, a = [[str(m.bid), str(m.bid_size)]], [[str(m.ask), str(m.ask_size)]]
        else:
            assert old is not None
            b = [[str(m.bid), str(m.bid_size)]]
            a = [[str(m.ask), str(m.ask_size)]]
            if old[0] != m.bid:
                b.insert(0, [str(old[0]), "0"])
            if old[1] != m.ask:
                a.insert(0, [str(old[1]), "0"])
        return {"topic": f"orderbook.1.{m.symbol}", "type": kind, "ts": now,
                "data": {"s": m.symbol, "b": b, "a": a, "u": m.u, "seq": m.u * 10}, "cts": now - 1}

    def _move(self, m: Market) -> tuple[Decimal, Decimal]:
        """Advance the book one step (deterministic per symbol and step)."""
        old = (m.bid, m.ask)
        m.step += 1
        tick = Decimal(m.tick_size)
        h = int(hashlib.sha256(f"{self._seed}|{m.symbol}|{m.step}".encode()).hexdigest()[:8], 16)
        move = (h % 3) - 1
        m.bid = max(tick, m.bid + move * tick).quantize(tick)
        m.ask = (m.bid + tick * (1 + (h >> 4) % 2)).quantize(tick)
        m.bid_size = Decimal(1 + (h >> 8) % 50)
        m.ask_size = Decimal(1 + (h >> 16) % 50)
        return old

    async def _feed(self) -> None:
        """Every 1/feed_rate seconds each subscribed book moves and its delta is pushed."""
        period = 1.0 / self.feed_rate
        nxt = time.monotonic()
        while True:
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if self._feed_paused:
                continue
            subs: dict[str, list[web.WebSocketResponse]] = defaultdict(list)
            for ws, topics in list(self._public.items()):
                for t in topics:
                    subs[t].append(ws)
            for topic, clients in subs.items():
                m = self.state.markets.get(topic.rsplit(".", 1)[-1])
                if m is None:
                    continue
                with self.lock:
                    if m.resnapshot:  # the test moved the book (set_book): a snapshot resets the client's
                        m.resnapshot = False
                        msg = self._book_message(m, "snapshot")
                    else:
                        old = self._move(m)
                        msg = self._book_message(m, "delta", old)
                for ws in clients:
                    await self._send(ws, msg)


def main() -> None:
    """Run the fake alone (benchmarks): prints its port, serves until killed;
    SIGUSR1 drops every public websocket.

    python -m tests.fakes.bybit --symbols 60 --rate 10
    """
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--symbols", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10.0, help="book updates per second per symbol")
    args = ap.parse_args()
    markets = [Market(f"S{i:03d}USDT", 1.0 + i, "0.1", "0.0001") for i in range(args.symbols)]
    fake = FakeBybit(markets, feed_rate=args.rate)
    fake.start()
    print(fake.port, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: fake.drop_websockets())  # a fault on demand
    done.wait()
    print(f"messages sent: {fake.messages_sent}", flush=True)
    fake.stop()


if __name__ == "__main__":
    main()

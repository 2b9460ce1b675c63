"""The Bybit v5 adapter (linear USDT perpetuals) over pybit, for asyncio.

pybit 5.x is synchronous (requests): every call runs on a worker thread with a
timeout, behind a token-bucket rate limiter. pybit's own retry loop is switched
off (it sleeps on the calling thread and would retry an order create blindly);
this module retries instead, with exponential backoff, on:

- retCodes that a retry can fix (RETRYABLE_CODES: pybit's default set plus 10016
  "server error"); for 10006 (per-UID rate limit) it waits until the
  X-Bapi-Limit-Reset-Timestamp the venue names;
- network errors, timeouts and non-200 HTTP answers. A 403 is Bybit's IP ban (600
  requests per 5 s exceeded; it lasts minutes): the next attempt waits the answer's
  Retry-After when it gives one, else `RetryPolicy.ip_ban_s`, in full (never cut to
  `max_backoff_s`, which caps the other waits).

Order creation is never retried blindly: after a timeout or a network error the
order is first looked up by its orderLinkId; only when the venue does not know it
is it sent again (with the same orderLinkId, so a late first attempt makes the
second one fail as a duplicate, 110072, which is again resolved by lookup). Any
other retCode on an order is an OrderRejected with Bybit's code and message, and
nothing is assumed filled.

An order is looked up by symbol and orderLinkId (`order_status`): first in
/v5/order/realtime (open orders and the last 500 closed ones, forgotten when Bybit
restarts its servers), then in /v5/order/history. The fill of a market order is its
final state: Filled, or PartiallyFilledCanceled with what filled (IOC / price
protection cancelled the rest: a Fill with that qty and status); a final order with
nothing filled is an OrderRejected.

Quantities leave as the exact decimal string of a multiple of qtyStep
(`rounding.round_qty`); a quantity that is not one is refused before sending.
Secrets are held by pybit's session only; nothing here logs them.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP

from bot.core.exchange.interface import (
    FINAL_STATUSES,
    Fill,
    Instrument,
    OrderRejected,
    OrderRequest,
    Quote,
    TemporaryError,
    VenueError,
)
from bot.core.exchange.rounding import round_qty

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({10002, 10006, 10016, 30034, 30035, 130035, 130150})
LEVERAGE_NOT_MODIFIED = 110043
DUPLICATE_LINK_ID = 110072
ORDER_NOT_FOUND = 110001
KLINE_INTERVAL = {"1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120",
                  "4h": "240", "1d": "D"}


class RateLimiter:
    """Token bucket: at most `rate` calls per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be positive (got {rate})")
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_s: float = 0.25
    max_backoff_s: float = 30.0
    ip_ban_s: float = 60.0  # after an HTTP 403 without Retry-After (Bybit's IP ban lasts minutes)

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt)

    def wait(self, attempt: int, hint_s: float | None, *, ip_ban: bool = False) -> float:
        """Seconds before the next attempt. After an IP ban (HTTP 403): the answer's
        Retry-After (`hint_s`) or else ip_ban_s, in full. Otherwise the venue's hint (the
        10006 rate-limit reset) when it gave one, else the exponential backoff; never above
        max_backoff_s."""
        if ip_ban:
            return max(0.0, hint_s if hint_s is not None else self.ip_ban_s)
        return min(self.max_backoff_s, hint_s if hint_s is not None else self.delay(attempt))


class _Retry(Exception):
    """Internal: this attempt failed in a way a retry may fix."""

    def __init__(self, reason: str, wait_s: float | None = None, ip_ban: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s
        self.ip_ban = ip_ban


def retry_after_s(headers: Any, now: Callable[[], float] = time.time) -> float | None:
    """The seconds an HTTP Retry-After header asks for (delta-seconds or an HTTP date);
    None when there is none or it cannot be read."""
    value = headers.get("Retry-After") if headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError):
        return None


def _decimal(v: Any, default: str = "0") -> Decimal:
    return Decimal(str(v)) if v not in (None, "") else Decimal(default)


class InstrumentsAnswerError(ValueError):
    """An instruments-info answer (or one of its entries) that is not what Bybit v5 sends:
    the message names the field (`result.list[3].lotSizeFilter.qtyStep`) and the value."""


def _field(row: dict[str, Any], where: str, group: str | None, key: str, *, required: bool = True,
           positive: bool = True) -> Decimal | None:
    """The exact Decimal of `row[group][key]` (as written: '0.001' stays 0.001)."""
    path = f"{where}.{group}.{key}" if group else f"{where}.{key}"
    obj = row.get(group) if group else row
    if group and not isinstance(obj, dict):
        if required:
            raise InstrumentsAnswerError(f"{where}.{group}: missing (an object with {key} is expected)")
        return None
    assert isinstance(obj, dict)
    v = obj.get(key)
    if v is None or v == "":
        if required:
            raise InstrumentsAnswerError(f"{path}: missing")
        return None
    if isinstance(v, bool) or not isinstance(v, str | int | float | Decimal):
        raise InstrumentsAnswerError(f"{path}: not a number (got {v!r})")
    try:
        d = Decimal(str(v))
    except ArithmeticError:
        raise InstrumentsAnswerError(f"{path}: not a number (got {v!r})") from None
    if not d.is_finite() or d < 0 or (positive and d == 0):
        raise InstrumentsAnswerError(f"{path}: must be {'positive' if positive else '>= 0'} (got {v!r})")
    return d


LINEAR_CONTRACTS = frozenset({"LinearPerpetual", "LinearFutures"})


def instrument_from_json(row: Any, where: str = "instrument") -> Instrument:
    """An Instrument from one entry of /v5/market/instruments-info (category linear).

    The one parser of that answer: the live refresh (`BybitExchange.instruments`) and
    `bot data import` of a saved answer both go through it. Numbers stay exact Decimals
    of the strings Bybit sends. Required: `symbol`, `lotSizeFilter.qtyStep` and
    `lotSizeFilter.minOrderQty` (> 0), `priceFilter.tickSize` (> 0); optional:
    `lotSizeFilter.minNotionalValue` (>= 0, default 0), `maxOrderQty`, `maxMktOrderQty`,
    `priceScale`, `status` (default Trading). An entry of another contract type
    (`contractType` given and not LinearPerpetual/LinearFutures: inverse; an option's
    `optionsType`; a spot entry has no qtyStep) is an error. Every problem raises InstrumentsAnswerError naming the field under `where`.
    """
    if not isinstance(row, dict):
        raise InstrumentsAnswerError(f"{where}: not an object (got {type(row).__name__})")
    symbol = row.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise InstrumentsAnswerError(f"{where}.symbol: missing")
    where = f"{where} ({symbol})"
    kind = row.get("contractType")
    if kind not in (None, "") and kind not in LINEAR_CONTRACTS:
        raise InstrumentsAnswerError(f"{where}.contractType: {kind!r} is not a linear contract "
                                     f"(expected one of {', '.join(sorted(LINEAR_CONTRACTS))})")
    if row.get("optionsType") not in (None, ""):
        raise InstrumentsAnswerError(f"{where}.optionsType: {row['optionsType']!r}: an option, not a linear contract")
    scale = row.get("priceScale")
    if scale in (None, ""):
        price_scale = None
    else:
        try:
            price_scale = int(str(scale))
        except ValueError:
            raise InstrumentsAnswerError(f"{where}.priceScale: not an integer (got {scale!r})") from None
        if price_scale < 0:
            raise InstrumentsAnswerError(f"{where}.priceScale: must be >= 0 (got {scale!r})")
    status = row.get("status")
    qty_step = _field(row, where, "lotSizeFilter", "qtyStep")
    min_qty = _field(row, where, "lotSizeFilter", "minOrderQty")
    tick = _field(row, where, "priceFilter", "tickSize")
    assert qty_step is not None and min_qty is not None and tick is not None
    return Instrument(
        symbol=symbol.strip(),
        qty_step=qty_step,
        min_qty=min_qty,
        tick_size=tick,
        min_notional=_field(row, where, "lotSizeFilter", "minNotionalValue", required=False, positive=False)
        or Decimal(0),
        max_mkt_qty=_field(row, where, "lotSizeFilter", "maxMktOrderQty", required=False),
        max_qty=_field(row, where, "lotSizeFilter", "maxOrderQty", required=False),
        price_scale=price_scale,
        status=status if isinstance(status, str) and status else "Trading",
    )


def instruments_from_result(result: Any, where: str = "result") -> tuple[list[Instrument], str | None]:
    """The instruments of one page of /v5/market/instruments-info (its `result` object) and
    the page's nextPageCursor (None on the last page). `result.category`, when given, must
    be linear; `result.list` a list of entries (instrument_from_json); a symbol twice in
    one page is an error."""
    if not isinstance(result, dict):
        got = "missing" if result is None else f"not an object (got {type(result).__name__})"
        raise InstrumentsAnswerError(f"{where}: {got}")
    category = result.get("category")
    if category not in (None, "", "linear"):
        raise InstrumentsAnswerError(f"{where}.category: {category!r}, expected 'linear' (USDT/USDC perpetuals)")
    rows = result.get("list")
    if not isinstance(rows, list):
        got = "missing" if rows is None else f"not a list (got {type(rows).__name__})"
        raise InstrumentsAnswerError(f"{where}.list: {got}")
    out: list[Instrument] = []
    first: dict[str, int] = {}
    for k, row in enumerate(rows):
        inst = instrument_from_json(row, f"{where}.list[{k}]")
        if inst.symbol in first:
            raise InstrumentsAnswerError(f"{where}.list[{k}].symbol: {inst.symbol} repeated "
                                         f"(first at {where}.list[{first[inst.symbol]}])")
        first[inst.symbol] = k
        out.append(inst)
    cursor = result.get("nextPageCursor")
    return out, cursor if isinstance(cursor, str) and cursor else None


def fill_from_order(row: dict[str, Any]) -> Fill:
    """A Fill from one order of /v5/order/realtime, /v5/order/history or the private
    `order` topic: the cumulative qty and fee so far and the orderStatus (avgPrice "" while
    nothing filled reads 0)."""
    status = row.get("orderStatus")
    if not isinstance(status, str) or not status:
        raise VenueError(10001, f"order {row.get('orderLinkId', '')!r} has no orderStatus")
    return Fill(
        order_link_id=row.get("orderLinkId", ""),
        symbol=row["symbol"],
        side=row["side"],
        qty=_decimal(row.get("cumExecQty")),
        avg_price=_decimal(row.get("avgPrice")),
        fee=_decimal(row.get("cumExecFee")),
        ts=int(row.get("updatedTime") or 0) / 1000.0,
        status=status,
    )


def order_body(order: OrderRequest, instrument: Instrument) -> dict[str, Any]:
    """The /v5/order/create body of a market order; qty checked against the instrument.

    The quantity must already be a positive multiple of qtyStep within
    [minOrderQty, maxMktOrderQty]: the adapter never changes the size of an order
    (the caller sized it with `rounding.qty_for_notional`), it refuses one that the
    venue would reject, so nothing is sent and nothing is assumed filled.
    """
    qty = Decimal(order.qty)
    if qty <= 0 or round_qty(qty, instrument.qty_step) != qty:
        raise OrderRejected(10001, f"qty {qty} is not a positive multiple of qtyStep {instrument.qty_step}",
                            order.order_link_id)
    if qty < instrument.min_qty or (instrument.max_mkt_qty is not None and qty > instrument.max_mkt_qty):
        raise OrderRejected(10001, f"qty {qty} outside [{instrument.min_qty}, {instrument.max_mkt_qty}]",
                            order.order_link_id)
    qty = round_qty(qty, instrument.qty_step)
    if len(order.order_link_id) > 36 or not order.order_link_id:
        raise OrderRejected(10001, f"orderLinkId must be 1-36 characters (got {order.order_link_id!r})",
                            order.order_link_id)
    return {
        "category": "linear", "symbol": order.symbol, "side": order.side, "orderType": "Market",
        "qty": format(qty, "f"), "orderLinkId": order.order_link_id, "reduceOnly": order.reduce_only,
        "positionIdx": 0,
    }


class BybitExchange:
    """The Exchange seam on Bybit v5 through pybit's HTTP session."""

    def __init__(self, api_key: str | None = None, api_secret: str | None = None, *, testnet: bool = False,
                 base_url: str | None = None, recv_window_ms: int = 5000, timeout_s: float = 10.0,
                 retry: RetryPolicy | None = None, rate_per_s: float = 10.0, fill_poll_s: float = 0.05,
                 fill_wait_s: float = 5.0):
        # retry_codes={0}: retCode 0 is success, so pybit's own retry loop never triggers;
        # max_retries=1: one attempt per call, the loop below does the retrying.
        self._http = HTTP(testnet=testnet, api_key=api_key, api_secret=api_secret, recv_window=recv_window_ms,
                          timeout=timeout_s, max_retries=1, retry_codes={0}, force_retry=False,
                          logging_level=logging.WARNING)
        if base_url:
            self._http.endpoint = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rate_per_s)
        self.fill_poll_s = fill_poll_s
        self.fill_wait_s = fill_wait_s
        self._instruments: dict[str, Instrument] = {}
        self.calls = 0
        self.retries = 0

    # ------------------------------------------------------------ plumbing

    async def _once(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        await self.limiter.acquire()
        self.calls += 1
        try:
            # the thread keeps running after a timeout; requests' own timeout ends it
            return await asyncio.wait_for(asyncio.to_thread(fn, **kwargs), self.timeout_s + 1.0)  # type: ignore[no-any-return]
        except TimeoutError as e:
            raise _Retry(f"timed out after {self.timeout_s:.1f} s") from e
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise _Retry(f"network error: {type(e).__name__}") from e
        except FailedRequestError as e:
            if e.status_code == 403:  # the IP ban: wait its Retry-After, else RetryPolicy.ip_ban_s
                raise _Retry(f"HTTP 403 (IP rate limit): {e.message}", retry_after_s(e.resp_headers),
                             ip_ban=True) from e
            raise _Retry(f"HTTP {e.status_code}: {e.message}") from e
        except InvalidRequestError as e:
            if e.status_code in RETRYABLE_CODES:
                raise _Retry(f"retCode {e.status_code}: {e.message}", self._reset_wait(e)) from e
            raise

    @staticmethod
    def _reset_wait(e: InvalidRequestError) -> float | None:
        if e.status_code != 10006 or not e.resp_headers:
            return None
        reset = e.resp_headers.get("X-Bapi-Limit-Reset-Timestamp")
        if not reset:
            return None
        return max(0.0, int(reset) / 1000.0 - time.time())

    async def _call(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
        """One request with retries; returns the `result` object of the answer."""
        last = ""
        for attempt in range(self.retry.attempts):
            try:
                answer = await self._once(fn, kwargs)
                return answer.get("result") or {}  # type: ignore[no-any-return]
            except _Retry as r:
                last = r.reason
                if attempt + 1 < self.retry.attempts:
                    self.retries += 1
                    wait = self.retry.wait(attempt, r.wait_s, ip_ban=r.ip_ban)
                    log.warning("bybit %s: %s; retry %d in %.2f s", name, r.reason, attempt + 1, wait)
                    await asyncio.sleep(wait)
            except InvalidRequestError as e:
                raise VenueError(e.status_code, e.message) from None
        raise TemporaryError(f"bybit {name}: gave up after {self.retry.attempts} attempts ({last})")

    # ------------------------------------------------------------ market data

    async def instruments(self) -> list[Instrument]:
        """Every linear instrument, following nextPageCursor; cached for order checks."""
        out: list[Instrument] = []
        cursor: str | None = None
        pages = 0
        while True:
            kwargs: dict[str, Any] = {"category": "linear", "limit": 1000}
            if cursor:
                kwargs["cursor"] = cursor
            res = await self._call("instruments-info", self._http.get_instruments_info, **kwargs)
            page, cursor = instruments_from_result(res, f"instruments-info page {pages + 1}: result")
            out.extend(page)
            pages += 1
            if not cursor or pages > 1000:
                break
        self._instruments = {i.symbol: i for i in out}
        return out

    async def ticker(self, symbol: str) -> Quote:
        res = await self._call("tickers", self._http.get_tickers, category="linear", symbol=symbol)
        rows = res.get("list") or []
        if not rows:
            raise VenueError(10001, f"no ticker for {symbol}")
        r = rows[0]
        return Quote(symbol, time.time(), _decimal(r.get("bid1Price")), _decimal(r.get("ask1Price")),
                     _decimal(r.get("bid1Size")), _decimal(r.get("ask1Size")), time.time())

    async def klines(self, symbol: str, tf: str, start_ms: int, end_ms: int, limit: int = 1000) -> list[list[str]]:
        """One page of klines (oldest first): [openTime ms, open, high, low, close, volume, turnover]."""
        if tf not in KLINE_INTERVAL:
            raise ValueError(f"timeframe {tf!r} has no Bybit kline interval (one of {sorted(KLINE_INTERVAL)})")
        res = await self._call("kline", self._http.get_kline, category="linear", symbol=symbol,
                               interval=KLINE_INTERVAL[tf], start=start_ms, end=end_ms, limit=limit)
        rows = res.get("list") or []
        return sorted(rows, key=lambda r: int(r[0]))

    # ------------------------------------------------------------ account

    async def wallet_balance(self) -> Decimal:
        res = await self._call("wallet-balance", self._http.get_wallet_balance, accountType="UNIFIED", coin="USDT")
        for acct in res.get("list", []):
            for coin in acct.get("coin", []):
                if coin.get("coin") == "USDT":
                    return _decimal(coin.get("walletBalance"))
        return Decimal(0)

    async def positions(self) -> dict[str, Decimal]:
        """Open one-way positions: symbol -> signed size (Buy positive)."""
        out: dict[str, Decimal] = {}
        cursor: str | None = None
        while True:
            kwargs: dict[str, Any] = {"category": "linear", "settleCoin": "USDT", "limit": 200}
            if cursor:
                kwargs["cursor"] = cursor
            res = await self._call("position-list", self._http.get_positions, **kwargs)
            for p in res.get("list", []):
                size = _decimal(p.get("size"))
                if size != 0:
                    out[p["symbol"]] = size if p.get("side") == "Buy" else -size
            cursor = res.get("nextPageCursor") or None
            if not cursor:
                return out

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        lev = format(Decimal(leverage), "f")
        try:
            await self._call("set-leverage", self._http.set_leverage, category="linear", symbol=symbol,
                             buyLeverage=lev, sellLeverage=lev)
        except VenueError as e:
            if e.code != LEVERAGE_NOT_MODIFIED:  # already at that leverage: success
                raise

    # ------------------------------------------------------------ orders

    async def order_status(self, symbol: str, order_link_id: str) -> Fill | None:
        """The order's state so far: cumulative qty, avg price and fee, and its orderStatus
        (`status in FINAL_STATUSES` once it can no longer change); None when the venue knows
        no order with that orderLinkId on `symbol` (neither realtime nor history)."""
        row = await self._order_row(symbol, order_link_id)
        return fill_from_order(row) if row is not None else None

    async def _order_row(self, symbol: str, order_link_id: str) -> dict[str, Any] | None:
        """The order's row: /v5/order/realtime first (open orders and the last 500 closed,
        until Bybit restarts), then /v5/order/history (closed orders, with some delay)."""
        for name, fn in (("order-realtime", self._http.get_open_orders),
                         ("order-history", self._http.get_order_history)):
            res = await self._call(name, fn, category="linear", symbol=symbol, orderLinkId=order_link_id)
            rows = [r for r in res.get("list") or [] if r.get("orderLinkId") == order_link_id]
            if rows:
                return rows[0]  # type: ignore[no-any-return]
        return None

    async def _await_final(self, symbol: str, order_link_id: str) -> Fill:
        """Poll the order until it is final (market IOC orders are, within milliseconds).
        Filled or PartiallyFilledCanceled with something filled: that Fill; final with
        nothing filled (Cancelled, Rejected, ...): OrderRejected."""
        deadline = time.monotonic() + self.fill_wait_s
        while True:
            row = await self._order_row(symbol, order_link_id)
            if row is not None and row.get("orderStatus") in FINAL_STATUSES:
                fill = fill_from_order(row)
                if fill.qty == 0:
                    raise OrderRejected(0, f"order {row.get('orderStatus')} unfilled: {row.get('rejectReason', '')}",
                                        order_link_id)
                return fill
            if time.monotonic() > deadline:
                raise TemporaryError(f"order {order_link_id} not final after {self.fill_wait_s:.1f} s")
            await asyncio.sleep(self.fill_poll_s)

    async def place_market_order(self, order: OrderRequest) -> Fill:
        """Place a market order and return its fill; never places the same orderLinkId twice."""
        if order.symbol not in self._instruments:
            await self.instruments()  # the qty check needs qtyStep / minOrderQty / maxMktOrderQty
        instrument = self._instruments.get(order.symbol)
        if instrument is None or instrument.status != "Trading":
            state = "unknown" if instrument is None else f"not trading ({instrument.status})"
            raise OrderRejected(10001, f"symbol {order.symbol} is {state}", order.order_link_id)
        body = order_body(order, instrument)
        last = ""
        for attempt in range(self.retry.attempts):
            if attempt:
                # the previous attempt may have reached the venue: look before sending again
                try:
                    if await self._order_row(order.symbol, order.order_link_id) is not None:
                        return await self._await_final(order.symbol, order.order_link_id)
                except TemporaryError:
                    # cannot tell whether it was placed: sending again is safe (a duplicate
                    # orderLinkId is refused by the venue), so go on
                    pass
            try:
                await self._once(self._http.place_order, dict(body))
                return await self._await_final(order.symbol, order.order_link_id)
            except _Retry as r:
                last = r.reason
                self.retries += 1
                wait = self.retry.wait(attempt, r.wait_s, ip_ban=r.ip_ban)
                log.warning("bybit order %s: %s; checking by orderLinkId in %.2f s", order.order_link_id,
                            r.reason, wait)
                await asyncio.sleep(wait)
            except InvalidRequestError as e:
                if e.status_code == DUPLICATE_LINK_ID:
                    return await self._await_final(order.symbol, order.order_link_id)
                raise OrderRejected(e.status_code, e.message, order.order_link_id) from None
        raise TemporaryError(f"order {order.order_link_id}: no answer after {self.retry.attempts} attempts ({last})")

    async def cancel_order(self, symbol: str, order_link_id: str) -> bool:
        """Cancel an open order (True: the venue accepted the cancel; confirm the final state
        with order_status); False when it is already final or unknown (110001)."""
        try:
            await self._call("order-cancel", self._http.cancel_order, category="linear", symbol=symbol,
                             orderLinkId=order_link_id)
        except VenueError as e:
            if e.code == ORDER_NOT_FOUND:
                return False
            raise
        return True

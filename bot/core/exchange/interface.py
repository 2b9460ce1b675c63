"""The exchange seam: what the executor, the recorder and the jobs need from a venue.

Two implementations share it: the paper exchange (`paper.py`, the default) and the
Bybit v5 adapter over pybit (`bybit.py`); the top-of-book stream is `stream.py`. Money that leaves the bot is Decimal:
quantities are multiples of qtyStep, prices of tickSize (`rounding.py`). Errors are
grouped by what the caller should do: retry a TemporaryError, record and handle an
OrderRejected, stop on anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

Side = Literal["Buy", "Sell"]

# Bybit v5 orderStatus values after which an order never changes again (`Fill.status`)
FINAL_STATUSES = frozenset({"Filled", "Cancelled", "Rejected", "PartiallyFilledCanceled", "Deactivated"})


class ExchangeError(Exception):
    """Base of the exchange errors."""


class TemporaryError(ExchangeError):
    """Network trouble, rate limits, retryable codes: retry with backoff."""


class VenueError(ExchangeError):
    """The venue answered a request with an error code that retrying will not fix."""

    def __init__(self, code: int, message: str):
        super().__init__(f"bybit error {code}: {message}")
        self.code = code
        self.message = message


class OrderRejected(ExchangeError):
    """The venue refused an order; nothing was filled."""

    def __init__(self, code: int, message: str, order_link_id: str | None = None):
        super().__init__(f"order rejected ({code}): {message}")
        self.code = code
        self.message = message
        self.order_link_id = order_link_id


@dataclass(frozen=True)
class Instrument:
    symbol: str
    qty_step: Decimal
    min_qty: Decimal
    tick_size: Decimal
    min_notional: Decimal = Decimal(0)
    max_mkt_qty: Decimal | None = None
    max_qty: Decimal | None = None
    price_scale: int | None = None
    status: str = "Trading"


@dataclass(frozen=True)
class Quote:
    symbol: str
    ts: float
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal
    received: float = 0.0  # wall-clock epoch seconds when the bot received it (0: unknown)


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: Side
    qty: Decimal
    order_link_id: str
    reduce_only: bool = False


@dataclass(frozen=True)
class Fill:
    """An order's execution so far: qty and fee are cumulative, avg_price their average
    (0 while nothing filled); status is the venue's orderStatus (New, PartiallyFilled,
    Filled, PartiallyFilledCanceled, Cancelled, Rejected, ...): final once it is in
    FINAL_STATUSES. A market order partly filled then cancelled by the venue (IOC, price
    protection) is a Fill with status PartiallyFilledCanceled and the qty that filled."""

    order_link_id: str
    symbol: str
    side: Side
    qty: Decimal
    avg_price: Decimal
    fee: Decimal
    ts: float
    status: str = "Filled"


class Exchange(Protocol):
    async def instruments(self) -> list[Instrument]: ...

    async def place_market_order(self, order: OrderRequest) -> Fill: ...

    async def order_status(self, symbol: str, order_link_id: str) -> Fill | None:
        """The order's state so far (None when the venue knows no such order on `symbol`)."""
        ...

    async def positions(self) -> dict[str, Decimal]: ...

    async def wallet_balance(self) -> Decimal: ...

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None: ...

    async def cancel_order(self, symbol: str, order_link_id: str) -> bool: ...

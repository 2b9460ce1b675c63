"""The paper exchange (`exchange.mode: paper`, the default): market orders fill at the
top of book with taker fees and the same rounding rules as the venue.

- Buy at the ask, sell at the bid of the latest quote fed in (`on_quote`).
- qty must be a positive multiple of qtyStep, >= minOrderQty, <= maxMktOrderQty, and
  qty * price >= minNotionalValue: else OrderRejected 10001 (Bybit's "params error").
  The caller sizes it as for the venue, with `rounding.qty_for_notional` (the
  backtester's formula, `fills.qty_decimal`); the paper exchange never resizes it.
- Margin: notional / leverage must fit the free balance: else OrderRejected 110007.
- reduce_only that would grow or flip the position: OrderRejected 110017.
- One fill per orderLinkId: placing the same link id again returns the first fill
  (what a retry after a timeout must see), never a second fill.
"""

from __future__ import annotations

from decimal import Decimal

from bot.core.exchange.interface import (
    Fill,
    Instrument,
    OrderRejected,
    OrderRequest,
    Quote,
    TemporaryError,
)
from bot.core.exchange.rounding import round_qty


class PaperExchange:
    def __init__(self, instruments: list[Instrument], balance: Decimal, fee_rate: Decimal,
                 leverage: Decimal = Decimal(2)):
        self._instruments = {i.symbol: i for i in instruments}
        self._quotes: dict[str, Quote] = {}
        self._positions: dict[str, Decimal] = {}
        self._entry_value: dict[str, Decimal] = {}
        self._fills: dict[str, Fill] = {}
        self.balance = Decimal(balance)
        self.fee_rate = Decimal(fee_rate)
        self._leverage: dict[str, Decimal] = dict.fromkeys(self._instruments, Decimal(leverage))

    def on_quote(self, quote: Quote) -> None:
        self._quotes[quote.symbol] = quote

    async def instruments(self) -> list[Instrument]:
        return list(self._instruments.values())

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        if symbol not in self._instruments:
            raise OrderRejected(10001, f"unknown symbol {symbol}")
        self._leverage[symbol] = Decimal(leverage)

    async def positions(self) -> dict[str, Decimal]:
        return {s: q for s, q in self._positions.items() if q != 0}

    async def wallet_balance(self) -> Decimal:
        return self.balance

    async def order_status(self, order_link_id: str) -> Fill | None:
        return self._fills.get(order_link_id)

    def _margin_in_use(self) -> Decimal:
        used = Decimal(0)
        for s, q in self._positions.items():
            quote = self._quotes.get(s)
            if q and quote is not None:
                used += abs(q) * (quote.bid + quote.ask) / 2 / self._leverage[s]
        return used

    async def place_market_order(self, order: OrderRequest) -> Fill:
        done = self._fills.get(order.order_link_id)
        if done is not None:
            return done
        inst = self._instruments.get(order.symbol)
        if inst is None:
            raise OrderRejected(10001, f"unknown symbol {order.symbol}", order.order_link_id)
        quote = self._quotes.get(order.symbol)
        if quote is None:
            raise TemporaryError(f"no quote for {order.symbol} yet")
        qty = Decimal(order.qty)
        if qty <= 0 or round_qty(qty, inst.qty_step) != qty:
            raise OrderRejected(10001, f"qty {qty} is not a positive multiple of qtyStep {inst.qty_step}",
                                order.order_link_id)
        if qty < inst.min_qty or (inst.max_mkt_qty is not None and qty > inst.max_mkt_qty):
            raise OrderRejected(10001, f"qty {qty} outside [{inst.min_qty}, {inst.max_mkt_qty}]", order.order_link_id)
        price = quote.ask if order.side == "Buy" else quote.bid
        notional = qty * price
        if notional < inst.min_notional:
            raise OrderRejected(10001, f"notional {notional} below minNotionalValue {inst.min_notional}",
                                order.order_link_id)
        signed = qty if order.side == "Buy" else -qty
        pos = self._positions.get(order.symbol, Decimal(0))
        if order.reduce_only and (pos == 0 or (pos > 0) == (signed > 0) or abs(signed) > abs(pos)):
            raise OrderRejected(110017, "reduce-only order would not reduce the position", order.order_link_id)
        fee = notional * self.fee_rate
        if not order.reduce_only:
            need = notional / self._leverage[order.symbol] + fee
            if need > self.balance - self._margin_in_use():
                raise OrderRejected(110007, "ab not enough for new order", order.order_link_id)
        # realised PnL of the reduced part at the average entry
        entry = self._entry_value.get(order.symbol, Decimal(0))
        if pos != 0 and (pos > 0) != (signed > 0):
            closed = min(abs(signed), abs(pos))
            avg = entry / abs(pos)
            pnl = (price - avg) * closed * (1 if pos > 0 else -1)
            self.balance += pnl
            entry -= avg * closed
            rest = abs(signed) - closed
            if rest:
                entry = rest * price
        else:
            entry += notional
        self._positions[order.symbol] = pos + signed
        self._entry_value[order.symbol] = entry if pos + signed != 0 else Decimal(0)
        self.balance -= fee
        fill = Fill(order.order_link_id, order.symbol, order.side, qty, price, fee, quote.ts)
        self._fills[order.order_link_id] = fill
        return fill

    async def cancel_order(self, symbol: str, order_link_id: str) -> bool:
        """Paper market orders fill or fail at once: there is never anything to cancel."""
        return False

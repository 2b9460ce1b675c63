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
  (what a retry after a timeout must see), never a second fill; `order_status(symbol,
  link)` answers it (status Filled: a paper order is final at once).
- Liquidation (strategy.md section 4, the backtester's rule): the exchange holds
  positions per symbol (one-way, netted) and knows nothing of pairs, so the caller
  names the pair trade it holds with `track_pair(symbol_1, symbol_2)`. On every quote
  of a tracked pair's symbol, with both legs open in opposite directions and both
  quotes valid, `fills.liquidation_hit` (the function the batch kernel and the step
  interface call) values the pair: margin M = the legs' entry notionals / leverage,
  close prices long leg at the bid, short leg at the ask, equity = M + price PnL
  (fees not counted), hit when equity <= maintenance_margin_rate x close notional.
  A hit closes both legs at once at those prices with taker fees (fills with link ids
  `liq-<n>-1`, `liq-<n>-2`), appends a :class:`PairLiquidation` to `liquidations`
  and untracks the pair. `maintenance_margin_rate=None` switches it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from bot.analysis.fills import liquidation_hit
from bot.core.exchange.interface import (
    Fill,
    Instrument,
    OrderRejected,
    OrderRequest,
    Quote,
    Side,
    TemporaryError,
)
from bot.core.exchange.rounding import round_qty

FILLS_KEPT = 2_000  # fills order_status still answers (orderLinkIds never repeat; older ones: the ledger)


@dataclass(frozen=True)
class PairLiquidation:
    """A tracked pair trade closed by the liquidation rule: its two closing fills."""

    symbol_1: str
    symbol_2: str
    ts: float  # venue time of the quote that triggered it
    fills: tuple[Fill, Fill]


class PaperExchange:
    def __init__(self, instruments: list[Instrument], balance: Decimal, fee_rate: Decimal,
                 leverage: Decimal = Decimal(2), maintenance_margin_rate: Decimal | None = Decimal("0.01")):
        self._instruments = {i.symbol: i for i in instruments}
        self._quotes: dict[str, Quote] = {}
        self._positions: dict[str, Decimal] = {}
        self._entry_value: dict[str, Decimal] = {}
        self._fills: dict[str, Fill] = {}  # the latest FILLS_KEPT, by orderLinkId (the ledger holds them all)
        self.balance = Decimal(balance)
        self.fee_rate = Decimal(fee_rate)
        self._leverage: dict[str, Decimal] = dict.fromkeys(self._instruments, Decimal(leverage))
        self.maintenance_margin_rate = maintenance_margin_rate
        self._pairs: set[tuple[str, str]] = set()
        self.liquidations: list[PairLiquidation] = []

    def on_quote(self, quote: Quote) -> None:
        self._quotes[quote.symbol] = quote
        for pair in [pr for pr in self._pairs if quote.symbol in pr]:
            self._check_liquidation(*pair)

    def track_pair(self, symbol_1: str, symbol_2: str) -> None:
        """Apply the liquidation rule to the pair trade held in `symbol_1` / `symbol_2`.

        Positions are netted per symbol, so a symbol can belong to one tracked pair only
        (ValueError otherwise). Checked from the next quote on (as the backtester checks from
        the tick after the fill); call it once both legs are filled."""
        for s in (symbol_1, symbol_2):
            if s not in self._instruments:
                raise ValueError(f"track_pair: unknown symbol {s}")
            if any(s in pr for pr in self._pairs):
                raise ValueError(f"track_pair: {s} is already in a tracked pair")
        self._pairs.add((symbol_1, symbol_2))

    def restore_position(self, symbol: str, signed_qty: Decimal, price: Decimal) -> None:
        """Rebuild a position at restart from the ledger (the executor's reconciliation in
        paper mode): add `signed_qty` at `price` to the symbol's position, with no fee and no
        change of balance (both were booked when the fill happened)."""
        if symbol not in self._instruments:
            raise ValueError(f"restore_position: unknown symbol {symbol}")
        pos = self._positions.get(symbol, Decimal(0))
        if pos != 0 and (pos > 0) != (signed_qty > 0):
            # a close or unwind fill: reduce at the average entry
            avg = self._entry_value[symbol] / abs(pos)
            closed = min(abs(pos), abs(signed_qty))
            self._entry_value[symbol] -= avg * closed
        else:
            self._entry_value[symbol] = self._entry_value.get(symbol, Decimal(0)) + abs(signed_qty) * price
        self._positions[symbol] = pos + signed_qty
        if self._positions[symbol] == 0:
            self._entry_value[symbol] = Decimal(0)

    def untrack_pair(self, symbol_1: str, symbol_2: str) -> None:
        self._pairs.discard((symbol_1, symbol_2))

    def _check_liquidation(self, s1: str, s2: str) -> None:
        """strategy.md section 4 on the tracked pair (s1, s2), through fills.liquidation_hit."""
        mmr = self.maintenance_margin_rate
        p1, p2 = self._positions.get(s1, Decimal(0)), self._positions.get(s2, Decimal(0))
        q1, q2 = self._quotes.get(s1), self._quotes.get(s2)
        if mmr is None or q1 is None or q2 is None or p1 == 0 or p2 == 0 or (p1 > 0) == (p2 > 0):
            return
        if min(q1.bid, q1.ask, q2.bid, q2.ask) <= 0:
            return
        e1, e2 = self._entry_value[s1], self._entry_value[s2]
        margin = e1 / self._leverage[s1] + e2 / self._leverage[s2]  # one leverage: (e1 + e2) / leverage
        side = 1.0 if p1 > 0 else 2.0
        if not liquidation_hit(side, float(abs(p1)), float(abs(p2)), float(e1 / abs(p1)), float(e2 / abs(p2)),
                               float(margin), float(mmr), float(q1.bid), float(q1.ask), float(q2.bid),
                               float(q2.ask)):
            return
        n = len(self.liquidations) + 1
        fills = tuple(self._book(f"liq-{n}-{k}", s, "Sell" if pos > 0 else "Buy", abs(pos), q)
                      for k, (s, pos, q) in enumerate(((s1, p1, q1), (s2, p2, q2)), start=1))
        self.liquidations.append(PairLiquidation(s1, s2, max(q1.ts, q2.ts), (fills[0], fills[1])))
        self._pairs.discard((s1, s2))

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

    async def order_status(self, symbol: str, order_link_id: str) -> Fill | None:
        """The fill of that orderLinkId on `symbol` (paper fills are final at once: status
        Filled); None for an id never filled here, or filled on another symbol."""
        fill = self._fills.get(order_link_id)
        return fill if fill is not None and fill.symbol == symbol else None

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
        if not order.reduce_only:
            need = notional / self._leverage[order.symbol] + notional * self.fee_rate
            if need > self.balance - self._margin_in_use():
                raise OrderRejected(110007, "ab not enough for new order", order.order_link_id)
        return self._book(order.order_link_id, order.symbol, order.side, qty, quote)

    def _book(self, link_id: str, symbol: str, side: Side, qty: Decimal, quote: Quote) -> Fill:
        """Fill `qty` at the top of `quote` (buy at the ask, sell at the bid) with the taker
        fee: realised PnL of the reduced part at the average entry, position, balance."""
        price = quote.ask if side == "Buy" else quote.bid
        notional = qty * price
        fee = notional * self.fee_rate
        signed = qty if side == "Buy" else -qty
        pos = self._positions.get(symbol, Decimal(0))
        # realised PnL of the reduced part at the average entry
        entry = self._entry_value.get(symbol, Decimal(0))
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
        self._positions[symbol] = pos + signed
        self._entry_value[symbol] = entry if pos + signed != 0 else Decimal(0)
        self.balance -= fee
        fill = Fill(link_id, symbol, side, qty, price, fee, quote.ts)
        self._fills[link_id] = fill
        if len(self._fills) > FILLS_KEPT:  # bounded memory over a long run, as Bybit's realtime orders
            del self._fills[next(iter(self._fills))]
        return fill

    async def cancel_order(self, symbol: str, order_link_id: str) -> bool:
        """Paper market orders fill or fail at once: there is never anything to cancel."""
        return False

"""Decimal-exact order quantities and prices, and deterministic order link ids.

- qty: n * qtyStep with n = floor(notional / (price * qtyStep) + 1e-9), the spec's
  formula (strategy.md section 5), computed exactly in Decimal by
  `bot.analysis.fills.qty_decimal` (the one implementation, shared with the
  backtester's reference; no float drift: 454.8 stays 454.8), then capped by
  maxMktOrderQty (rounded down to the step). The 1e-9 lets a notional that is a
  whole number of steps up to float noise (29.999999999999996 at 0.3 x 0.1) buy
  them all; the quantity's value then exceeds the notional by at most
  1e-9 * price * qtyStep.
- price: rounded to tickSize, down for buys and up for sells when `protective`
  is False (never worse than asked), or to the nearest tick.
- orderLinkId: `<prefix>-<position>-<leg><action><attempt>-<hash>` (prefix: the installation's), at most 36 characters, the
  same for the same (position, leg, action, attempt), so a retry of the same
  intent can be looked up instead of placed twice.
"""

from __future__ import annotations

import hashlib
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from bot.analysis.fills import qty_decimal

MAX_LINK_ID = 36


def to_decimal(value: Decimal | float | int | str) -> Decimal:
    """Decimal of a number as written (floats through repr: 0.1 -> Decimal('0.1'))."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def _quantum(step: Decimal) -> Decimal:
    """1 at the step's last decimal (0.10 -> 0.1, 25 -> 1, 1E+1 -> 1: integers stay plain)."""
    exp = step.normalize().as_tuple().exponent
    assert isinstance(exp, int)
    return Decimal(1).scaleb(min(0, exp))


def round_qty(qty: Decimal | float | str, step: Decimal | float | str,
              max_qty: Decimal | float | str | None = None) -> Decimal:
    """`qty` rounded DOWN to a multiple of `step` (and capped at `max_qty`)."""
    q, s = to_decimal(qty), to_decimal(step)
    if s <= 0:
        raise ValueError(f"qty step must be positive (got {s})")
    n = (q / s).to_integral_value(rounding=ROUND_FLOOR)
    out = (n * s).quantize(_quantum(s)) if n > 0 else Decimal(0)
    if max_qty is not None:
        cap = round_qty(max_qty, s)
        out = min(out, cap)
    return out


def qty_for_notional(notional: Decimal | float | str, price: Decimal | float | str,
                     step: Decimal | float | str, max_qty: Decimal | float | str | None = None) -> Decimal:
    """The order quantity for `notional` USDT at `price`: `fills.qty_decimal`, i.e.
    n * step with n = floor(notional / (price * step) + 1e-9), capped at `max_qty`
    (maxMktOrderQty) rounded down to the step. A price that is not positive is a
    ValueError (an order is never sized at no price); a non-positive notional gives 0.
    """
    p = to_decimal(price)
    if not p > 0:
        raise ValueError(f"price must be positive (got {p})")
    out = qty_decimal(to_decimal(notional), p, to_decimal(step))
    if max_qty is not None:
        out = min(out, round_qty(max_qty, step))
    return out


def round_price(price: Decimal | float | str, tick: Decimal | float | str, side: str | None = None) -> Decimal:
    """`price` on the tick grid: down for a Buy, up for a Sell, nearest when side is None."""
    p, t = to_decimal(price), to_decimal(tick)
    if t <= 0:
        raise ValueError(f"tick size must be positive (got {t})")
    mode = ROUND_FLOOR if side == "Buy" else ROUND_CEILING if side == "Sell" else ROUND_HALF_EVEN
    return ((p / t).to_integral_value(rounding=mode) * t).quantize(t.normalize())


def assumed_qty_step(price: float) -> float:
    """A Bybit-like qty step for a price, for markets without instrument info (the demo
    market, imported candles): 10^round(log10(1 / price)) clipped to [0.001, 100]."""
    exp = round(math.log10(1.0 / price))
    return float(10.0 ** min(max(exp, -3), 2))


def order_link_id(position_id: int | str, leg: int, action: str, attempt: int = 0, *, prefix: str = "b") -> str:
    """Deterministic Bybit orderLinkId (<= 36 chars) for (prefix, position, leg, action, attempt).

    `prefix` is the installation's (migration 0007 draws it once per database, so ids do not
    repeat after a database reset, nor between two installations trading one account); the
    executor always passes it. The hash covers the prefix too."""
    if leg not in (1, 2):
        raise ValueError(f"leg must be 1 or 2 (got {leg})")
    if action not in ("open", "close", "unwind"):
        raise ValueError(f"action must be open, close or unwind (got {action!r})")
    if not prefix or not prefix.isalnum():
        raise ValueError(f"prefix must be 1+ letters or digits (got {prefix!r})")
    digest = hashlib.sha256(f"{prefix}|{position_id}|{leg}|{action}|{attempt}".encode()).hexdigest()[:8]
    link = f"{prefix}-{position_id}-{leg}{action[0]}{attempt}-{digest}"
    if len(link) > MAX_LINK_ID:
        link = f"{prefix}-{hashlib.sha256(link.encode()).hexdigest()[:MAX_LINK_ID - len(prefix) - 1]}"
    return link

"""Repository of the trading ledger: `positions`, `orders`, `trades` and the installation's
orderLinkId prefix, and THE definition of the position statuses. All their SQL is here.

A position moves intent -> orders_sent -> open -> closing -> closed (service.md, "Live
executor"; docs/executor.md), each status written BEFORE the external action it
announces; a failed entry ends `failed` (nothing filled) or, through `unwinding`,
`unwound` (the filled leg was closed again); a position the venue no longer holds is
`lost`. Which statuses hold exposure is defined here once, for the re-selection job
(which keeps a pair, and reserves its tokens, while it holds exposure) and the executor:

- ``intent``: decided and written, no order has left the bot: no exposure. The
  executor's reconciliation settles a stale one as `failed`; it never reserves tokens.
- ``orders_sent``: orders may have reached the venue: exposed until a lookup by
  orderLinkId says otherwise.
- ``open``, ``closing``, ``unwinding``: exposed.
- ``closed``, ``failed``, ``unwound``, ``lost``: flat.

Orders: one row per (position, leg, action, attempt), its orderLinkId fixed when the row
is written (`link_id`), statuses planned -> sent -> filled | rejected | cancelled
(`sent` is written before the request leaves).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot.core.db.codec import dumps
from bot.core.exchange.interface import Fill
from bot.core.exchange.rounding import order_link_id

POSITION_STATUSES = ("intent", "orders_sent", "open", "closing", "closed", "failed", "unwinding", "unwound", "lost")
EXPOSED_STATUSES = ("orders_sent", "open", "closing", "unwinding")
ACTIVE_STATUSES = ("intent", *EXPOSED_STATUSES)
ORDER_STATUSES = ("planned", "sent", "filled", "rejected", "cancelled")


async def exposed_pairs(conn: Any) -> list[tuple[str, str]]:
    """Pairs (as tokens) with at least one position in an EXPOSED status."""
    rows = await conn.fetch("SELECT DISTINCT token_1, token_2 FROM positions WHERE status = ANY($1::text[])"
                            " ORDER BY token_1, token_2", list(EXPOSED_STATUSES))
    return [(r["token_1"].removesuffix("_USDT"), r["token_2"].removesuffix("_USDT")) for r in rows]


async def link_prefix(conn: Any) -> str:
    """The installation's orderLinkId prefix (migration 0007 creates it once)."""
    return str(await conn.fetchval("SELECT link_prefix FROM installation"))


def link_id(prefix: str, position_id: int, leg: int, action: str, attempt: int) -> str:
    return order_link_id(position_id, leg, action, attempt, prefix=prefix)


@dataclass
class OrderRow:
    position_id: int
    leg: int
    action: str
    attempt: int
    order_link_id: str
    symbol: str
    side: str
    qty: Decimal
    reduce_only: bool
    status: str
    filled_qty: Decimal | None = None
    avg_price: Decimal | None = None
    fee: Decimal | None = None
    fill_ts: float | None = None
    error: str | None = None
    error_code: int | None = None
    sent_ts: float | None = None  # epoch s of the row's last change (= when it was marked sent, while sent)

    def fill(self) -> Fill | None:
        if self.status != "filled" or self.filled_qty is None or self.avg_price is None:
            return None
        return Fill(self.order_link_id, self.symbol, self.side, self.filled_qty, self.avg_price,  # type: ignore[arg-type]
                    self.fee or Decimal(0), self.fill_ts or 0.0)


@dataclass
class PositionRow:
    id: int
    token_1: str  # T_USDT, as the pairs table
    token_2: str
    pos_side: int
    status: str
    qty_1: Decimal
    qty_2: Decimal
    open_price_1: Decimal | None
    open_price_2: Decimal | None
    open_z: float | None
    open_ts: float | None
    params: dict[str, Any]
    mode: str
    close_reason: int | None
    close_z: float | None
    close_ts: float | None
    orders: list[OrderRow]

    def legs(self, action: str) -> dict[int, OrderRow]:
        """The newest attempt of each leg's order for `action`."""
        out: dict[int, OrderRow] = {}
        for o in sorted(self.orders, key=lambda o: o.attempt):
            if o.action == action:
                out[o.leg] = o
        return out


_ORDER_COLS = ("position_id, leg, action, attempt, order_link_id, symbol, side, qty, reduce_only, status,"
               " filled_qty, avg_price, fee, fill_ts, error, error_code, extract(epoch FROM updated_at)::float8 AS sent_ts")


def _order(r: Any) -> OrderRow:
    return OrderRow(r["position_id"], r["leg"], r["action"], r["attempt"], r["order_link_id"], r["symbol"],
                    r["side"], r["qty"], r["reduce_only"], r["status"], r["filled_qty"], r["avg_price"], r["fee"],
                    r["fill_ts"], r["error"], r["error_code"], r["sent_ts"])


_POS_COLS = ("id, token_1, token_2, pos_side, status, qty_1, qty_2, open_price_1, open_price_2, open_z, open_ts,"
             " params, mode, close_reason, close_z, close_ts")


async def _read(conn: Any, where: str, *args: Any) -> list[PositionRow]:
    rows = await conn.fetch(f"SELECT {_POS_COLS} FROM positions WHERE {where} ORDER BY id", *args)
    if not rows:
        return []
    orders = await conn.fetch(f"SELECT {_ORDER_COLS} FROM orders WHERE position_id = ANY($1::bigint[]) ORDER BY id",
                              [r["id"] for r in rows])
    by_pos: dict[int, list[OrderRow]] = {}
    for o in orders:
        by_pos.setdefault(o["position_id"], []).append(_order(o))
    return [PositionRow(r["id"], r["token_1"], r["token_2"], r["pos_side"], r["status"], r["qty_1"], r["qty_2"],
                        r["open_price_1"], r["open_price_2"], r["open_z"], r["open_ts"],
                        json.loads(r["params"]) if isinstance(r["params"], str) else r["params"], r["mode"],
                        r["close_reason"], r["close_z"], r["close_ts"], by_pos.get(r["id"], [])) for r in rows]


async def active_positions(conn: Any, mode: str) -> list[PositionRow]:
    """Positions of `mode` in an ACTIVE status, with their orders, oldest first."""
    return await _read(conn, "status = ANY($1::text[]) AND mode = $2", list(ACTIVE_STATUSES), mode)


async def all_positions(conn: Any, mode: str | None = None) -> list[PositionRow]:
    return await _read(conn, "($1::text IS NULL OR mode = $1)", mode)


async def position(conn: Any, position_id: int) -> PositionRow:
    rows = await _read(conn, "id = $1", position_id)
    if not rows:
        raise LookupError(f"position {position_id} not found")
    return rows[0]


async def create_intent(conn: Any, prefix: str, token_1: str, token_2: str, pos_side: int, qty_1: Decimal,
                        qty_2: Decimal, decision_z: float, params: dict[str, Any], mode: str,
                        legs: list[tuple[int, str, str, Decimal]]) -> tuple[int, list[OrderRow]]:
    """In one transaction: the `intent` row and its two planned entry orders, their
    orderLinkIds fixed from the new id. `legs` = [(leg, symbol, side, qty)] in sending
    order. The partial unique index refuses a second active position on the pair
    (asyncpg.UniqueViolationError)."""
    async with conn.transaction():
        pid = await conn.fetchval(
            "INSERT INTO positions (token_1, token_2, pos_side, status, qty_1, qty_2, decision_z, params, mode)"
            " VALUES ($1, $2, $3, 'intent', $4, $5, $6, $7::jsonb, $8) RETURNING id",
            token_1, token_2, pos_side, qty_1, qty_2, decision_z, dumps(params), mode)
        orders = [await _insert_order(conn, prefix, pid, leg, "open", 0, sym, side, qty, False)
                  for leg, sym, side, qty in legs]
    return int(pid), orders


async def _insert_order(conn: Any, prefix: str, pid: int, leg: int, action: str, attempt: int, symbol: str,
                        side: str, qty: Decimal, reduce_only: bool) -> OrderRow:
    link = link_id(prefix, pid, leg, action, attempt)
    await conn.execute(
        "INSERT INTO orders (position_id, leg, action, attempt, order_link_id, symbol, side, qty, reduce_only, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'planned')",
        pid, leg, action, attempt, link, symbol, side, qty, reduce_only)
    return OrderRow(pid, leg, action, attempt, link, symbol, side, qty, reduce_only, "planned")


async def plan_orders(conn: Any, prefix: str, position_id: int, status: str | None,
                      orders: list[tuple[int, str, int, str, str, Decimal]], *, close_reason: int | None = None,
                      close_z: float | None = None, note: str | None = None) -> list[OrderRow]:
    """In one transaction: the position's new `status` (closing, unwinding; None keeps it)
    and planned orders [(leg, action, attempt, symbol, side, qty)], all reduceOnly."""
    async with conn.transaction():
        if status is not None:
            await conn.execute(
                "UPDATE positions SET status = $2, close_reason = coalesce($3, close_reason),"
                " close_z = coalesce($4, close_z), note = coalesce($5, note), updated_at = now() WHERE id = $1",
                position_id, status, close_reason, close_z, note)
        return [await _insert_order(conn, prefix, position_id, leg, action, attempt, sym, side, qty, True)
                for leg, action, attempt, sym, side, qty in orders]


async def mark_sent(conn: Any, link: str, position_status: tuple[int, str] | None = None) -> None:
    """The order is about to leave the bot (written before the request), and optionally
    the position's status (orders_sent) in the same transaction."""
    async with conn.transaction():
        if position_status is not None:
            await conn.execute("UPDATE positions SET status = $2, updated_at = now() WHERE id = $1", *position_status)
        await conn.execute("UPDATE orders SET status = 'sent', updated_at = now() WHERE order_link_id = $1", link)


async def record_fill(conn: Any, fill: Fill) -> None:
    """The venue's fill of an order (price, qty, fee as the venue reported them)."""
    await conn.execute(
        "UPDATE orders SET status = 'filled', filled_qty = $2, avg_price = $3, fee = $4, fill_ts = $5,"
        " updated_at = now() WHERE order_link_id = $1",
        fill.order_link_id, fill.qty, fill.avg_price, fill.fee, fill.ts)


async def record_order_failure(conn: Any, link: str, status: str, code: int | None, error: str) -> None:
    """rejected (the venue refused: nothing filled) or cancelled (nothing filled)."""
    await conn.execute(
        "UPDATE orders SET status = $2, error_code = $3, error = $4, filled_qty = coalesce(filled_qty, 0),"
        " updated_at = now() WHERE order_link_id = $1", link, status, code, error[:500])


async def set_status(conn: Any, position_id: int, status: str, note: str | None = None) -> None:
    await conn.execute("UPDATE positions SET status = $2, note = coalesce($3, note), updated_at = now(),"
                       " closed_at = CASE WHEN $2 IN ('closed', 'failed', 'unwound', 'lost') THEN now()"
                       " ELSE closed_at END WHERE id = $1", position_id, status, note)


async def mark_open(conn: Any, position_id: int, qty_1: Decimal, qty_2: Decimal, open_price_1: Decimal,
                    open_price_2: Decimal, open_z: float | None, open_ts: float) -> None:
    await conn.execute(
        "UPDATE positions SET status = 'open', qty_1 = $2, qty_2 = $3, open_price_1 = $4, open_price_2 = $5,"
        " open_z = $6, open_ts = $7, opened_at = to_timestamp($7), updated_at = now() WHERE id = $1",
        position_id, qty_1, qty_2, open_price_1, open_price_2, open_z, open_ts)


@dataclass(frozen=True)
class TradeRow:
    """A closed pair trade in the backtester's columns (strategy.md section 6), Decimal."""

    position_id: int
    token_1: str
    token_2: str
    open_ts: float
    close_ts: float
    pos_side: int
    qty_1: Decimal
    qty_2: Decimal
    open_price_1: Decimal
    close_price_1: Decimal
    open_price_2: Decimal
    close_price_2: Decimal
    fees_1: Decimal
    fees_2: Decimal
    profit_1: Decimal
    profit_2: Decimal
    reason: int
    open_z: float | None
    close_z: float | None
    mode: str

    @property
    def fees(self) -> Decimal:
        return self.fees_1 + self.fees_2

    @property
    def total_profit(self) -> Decimal:
        return self.profit_1 + self.profit_2


async def close_position(conn: Any, trade: TradeRow) -> bool:
    """In one transaction: the position `closed` with its close fields, and its trades row;
    only from `closing` (False, nothing written, when it is not: closed already by another
    path, so a position never gets two trades rows)."""
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE positions SET status = 'closed', close_ts = $2, closed_at = to_timestamp($2), close_reason = $3,"
            " close_z = $4, updated_at = now() WHERE id = $1 AND status = 'closing' RETURNING id",
            trade.position_id, trade.close_ts, trade.reason, trade.close_z)
        if done is None:
            return False
        await conn.execute(
            "INSERT INTO trades (position_id, token_1, token_2, open_time, close_time, pos_side, qty_1, qty_2,"
            " open_price_1, close_price_1, open_price_2, close_price_2, fees, profit_1, profit_2, total_profit,"
            " reason, open_z, close_z, mode, open_ts, close_ts, fees_1, fees_2)"
            " VALUES ($1, $2, $3, to_timestamp($4), to_timestamp($5), $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
            " $16, $17, $18, $19, $20, $4, $5, $21, $22)",
            trade.position_id, trade.token_1, trade.token_2, trade.open_ts, trade.close_ts, trade.pos_side,
            trade.qty_1, trade.qty_2, trade.open_price_1, trade.close_price_1, trade.open_price_2,
            trade.close_price_2, trade.fees, trade.profit_1, trade.profit_2, trade.total_profit, trade.reason,
            trade.open_z, trade.close_z, trade.mode, trade.fees_1, trade.fees_2)
    return True


async def closed_profit(conn: Any, mode: str) -> Decimal:
    """Sum of total_profit over the closed trades of `mode` (the paper balance's part)."""
    return Decimal(await conn.fetchval("SELECT coalesce(sum(total_profit), 0) FROM trades WHERE mode = $1", mode))


async def trades(conn: Any, mode: str | None = None, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM trades WHERE ($1::text IS NULL OR mode = $1) AND ($2::timestamptz IS NULL OR close_time >= $2)"
        " ORDER BY close_ts, id", mode, since)
    return [dict(r) for r in rows]

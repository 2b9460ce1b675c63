"""Repository of the `positions` table, and THE definition of its statuses.

A position moves intent -> orders_sent -> open -> closing -> closed (service.md,
"Live executor"), or ends in `failed` / `unwound`. Which of them hold exposure is
defined here once, for the re-selection job (which keeps a pair, and reserves its
tokens, while it holds exposure) and the executor:

- ``intent``: decided and written, no order has left the bot: no exposure. A stale
  intent (a crash before sending) is the executor's reconciliation to settle; it
  never reserves tokens.
- ``orders_sent``: orders may have reached the venue: treated as exposed until a
  lookup by orderLinkId says otherwise.
- ``open``, ``closing``: exposed.
- ``closed``, ``failed`` (nothing filled), ``unwound`` (a failed entry whose filled
  leg was closed again): flat.
"""

from __future__ import annotations

from typing import Any

POSITION_STATUSES = ("intent", "orders_sent", "open", "closing", "closed", "failed", "unwound")
EXPOSED_STATUSES = ("orders_sent", "open", "closing")


async def exposed_pairs(conn: Any) -> list[tuple[str, str]]:
    """Pairs (as tokens) with at least one position in an EXPOSED status."""
    rows = await conn.fetch("SELECT DISTINCT token_1, token_2 FROM positions WHERE status = ANY($1::text[])"
                            " ORDER BY token_1, token_2", list(EXPOSED_STATUSES))
    return [(r["token_1"].removesuffix("_USDT"), r["token_2"].removesuffix("_USDT")) for r in rows]

"""The re-selection decision (selection.md section 6, steps 5-6), pure.

Given the scored candidates and the pairs that hold open positions:
1. open-position pairs stay selected (reason ``kept: open position``) and reserve
   their tokens, whatever their new score;
2. candidates failing a threshold are dropped (``below threshold: <name>``);
3. the rest, sorted by the sort key (descending; a key written `-name` sorts by
   `name` ascending, e.g. `-std`: the smallest normalised-price gap first, Gatev et
   al. 2006), are taken greedily when neither
   token is used yet (``token taken: <T>``), up to `max_pairs` selected in total
   (kept pairs count; ``cap reached``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    token_1: str
    token_2: str
    decision: str  # selected | kept | rejected | failed
    reason: str


def _val(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return float(v) if v is not None and isinstance(v, int | float) and math.isfinite(v) else math.nan


def sort_value(row: Mapping[str, Any], sort_key: str) -> float:
    """The value `decide` sorts by, descending: the column, or minus the column for `-name`."""
    return -_val(row, sort_key[1:]) if sort_key.startswith("-") else _val(row, sort_key)


def decide(
    candidates: Sequence[Mapping[str, Any]],
    open_pairs: Sequence[tuple[str, str]],
    thresholds: Mapping[str, float],
    sort_key: str,
    max_pairs: int,
) -> list[Decision]:
    """One Decision per candidate (and per open pair not among them), in decision order."""
    out: list[Decision] = []
    used: set[str] = set()
    kept = {tuple(p) for p in open_pairs}
    for t1, t2 in open_pairs:
        out.append(Decision(t1, t2, "kept", "kept: open position"))
        used.update((t1, t2))
    n_selected = len(out)
    eligible = []
    for row in candidates:
        t1, t2 = str(row["coin1"]), str(row["coin2"])
        if (t1, t2) in kept:
            continue
        if row.get("status", "ok") != "ok":
            what = "failed: untradeable:" if row.get("status") == "untradeable" else "failed:"
            out.append(Decision(t1, t2, "failed", f"{what} {row.get('reason', '')}".strip()))
            continue
        failing = [k for k, thr in thresholds.items() if not _val(row, k) > thr]
        if failing:
            out.append(Decision(t1, t2, "rejected", "below threshold: " + ", ".join(failing)))
            continue
        eligible.append(row)
    eligible.sort(key=lambda r: (-sort_value(r, sort_key) if math.isfinite(sort_value(r, sort_key)) else math.inf,
                                 str(r["coin1"]), str(r["coin2"])))
    for row in eligible:
        t1, t2 = str(row["coin1"]), str(row["coin2"])
        taken = [t for t in (t1, t2) if t in used]
        if taken:
            out.append(Decision(t1, t2, "rejected", "token taken: " + ", ".join(taken)))
        elif n_selected >= max_pairs:
            out.append(Decision(t1, t2, "rejected", "cap reached"))
        else:
            out.append(Decision(t1, t2, "selected", "selected"))
            used.update((t1, t2))
            n_selected += 1
    return out

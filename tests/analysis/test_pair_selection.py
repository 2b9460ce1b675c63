"""Re-selection decisions: open positions always stay, no token is ever used twice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.analysis.pair_selection import decide

TOKENS = [f"T{k}" for k in range(9)]
TH = {"pr_rat_ind": 0.4, "pr_rat_all": 0.4, "pr_rat_best": 0.4, "pred": 0.4}


def row(t1: str, t2: str, v: float, status: str = "ok") -> dict:
    return {"coin1": t1, "coin2": t2, "pr_rat_ind": v, "pr_rat_all": v, "pr_rat_best": v, "pred": v,
            "status": status}


def test_reasons() -> None:
    cands = [row("A", "B", 2.0), row("A", "C", 3.0), row("D", "E", 0.1), row("F", "G", 1.0, "failed"),
             row("H", "I", 1.5), row("J", "K", 1.2)]
    d = {(x.token_1, x.token_2): x for x in decide(cands, [("X", "B")], TH, "pr_rat_all", 3)}
    assert d[("X", "B")].decision == "kept"
    assert d[("A", "C")].decision == "selected"
    assert d[("A", "B")].reason == "token taken: A, B"
    assert d[("D", "E")].reason.startswith("below threshold: pr_rat_ind")
    assert d[("F", "G")].decision == "failed"
    assert d[("H", "I")].decision == "selected"
    assert d[("J", "K")].reason == "cap reached"


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(TOKENS), st.floats(-1, 3)), max_size=30),
    opens=st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(TOKENS)), max_size=3),
    cap=st.integers(1, 6),
)
def test_open_pairs_stay_and_no_token_twice(data, opens, cap) -> None:
    cands = [row(a, b, v) for a, b, v in data if a != b]
    open_pairs = []
    used: set[str] = set()
    for a, b in opens:  # positions never share tokens with each other
        if a != b and a not in used and b not in used:
            open_pairs.append((a, b))
            used.update((a, b))
    out = decide(cands, open_pairs, TH, "pr_rat_all", cap)
    chosen = [(x.token_1, x.token_2) for x in out if x.decision in ("selected", "kept")]
    toks = [t for p in chosen for t in p]
    assert len(toks) == len(set(toks))
    assert set(open_pairs) <= set(chosen)
    assert len([x for x in out if x.decision == "selected"]) <= max(0, cap - len(open_pairs))


def test_a_minus_sort_key_sorts_ascending() -> None:
    rows = [{"coin1": "A", "coin2": "B", "std": 0.3}, {"coin1": "C", "coin2": "D", "std": 0.1},
            {"coin1": "E", "coin2": "F", "std": 0.2}, {"coin1": "G", "coin2": "H", "std": None}]
    asc = [(d.token_1, d.decision) for d in decide(rows, [], {}, "-std", 2)]
    assert asc[:2] == [("C", "selected"), ("E", "selected")] and ("A", "rejected") in asc
    desc = [(d.token_1, d.decision) for d in decide(rows, [], {}, "std", 2)]
    assert desc[:2] == [("A", "selected"), ("E", "selected")]
    assert [d.token_1 for d in decide(rows, [], {}, "-std", 4)][-1] == "G"  # no value: last either way

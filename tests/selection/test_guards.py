"""The re-selection guards as pure functions, on their edges."""

from __future__ import annotations

import datetime as dt

import pytest

from bot.selection.guards import Refusal, check_coverage, check_freshness, check_not_emptied


def test_guard_functions_on_their_edges() -> None:
    now = dt.datetime(2025, 1, 10, tzinfo=dt.UTC)
    # newest bar CLOSE: one bar in progress + 6 h allowed
    check_freshness(now - dt.timedelta(hours=7), now, 6.0, "1h")  # exactly at the limit: fine
    with pytest.raises(Refusal, match="7.0 h"):
        check_freshness(now - dt.timedelta(hours=7, seconds=1), now, 6.0, "1h")
    # a 1d strategy: at 15:00 the newest complete day closed at 00:00, fresh with a recorder up
    afternoon = dt.datetime(2025, 3, 10, 15, tzinfo=dt.UTC)
    check_freshness(dt.datetime(2025, 3, 10, tzinfo=dt.UTC), afternoon, 6.0, "1d")
    with pytest.raises(Refusal):
        check_freshness(dt.datetime(2025, 3, 9, tzinfo=dt.UTC), afternoon, 6.0, "1d")
    with pytest.raises(Refusal, match="no candidate"):
        check_coverage([], 0.0)
    check_coverage(["ok", "skipped"], 0.5)
    with pytest.raises(Refusal):
        check_coverage(["ok", "skipped", "failed"], 0.5)
    check_not_emptied(0, 0, False)
    check_not_emptied(1, 5, False)
    with pytest.raises(Refusal):
        check_not_emptied(0, 1, False)

"""Input guards of the re-selection job: a run commits only on inputs fit to trade on.

Checked before the commit (docs/selection.md, "Refusals"); a failing guard makes the
run fail with its reason, and the pairs table and token_pairs.txt stay byte-identical:

- freshness: the newest complete bar of the candidates' symbols (of `strategy.tf`, or of
  the finer timeframes it is built from) closed at most one `tf` bar (the one in
  progress) plus `selection.max_data_age_h` hours before the run's time (`now`, or
  `--as-of`).
  A recorder that was down, or data older than the train window, is refused here,
  before any backtest runs;
- coverage: evaluated / candidates >= `selection.min_evaluated_share`, where a
  candidate is evaluated when its backtest ran (status ok; skipped and failed ones
  are not), and a run with no candidate at all is refused;
- empty: a selection of no pair while the pairs table holds rows is refused unless
  `selection.allow_empty` is true (an empty table stops all trading).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from bot.analysis.zscore import tf_seconds


class Refusal(RuntimeError):
    """Inputs unfit to commit on; the message is the recorded reason (one line)."""


def check_freshness(newest_close: dt.datetime | None, now: dt.datetime, max_age_h: float, tf: str) -> None:
    """`newest_close`: when the newest complete bar (of `tf` or the finer bars it is built from)
    closed. A running recorder keeps that less than one `tf` bar behind `now` (the bar in
    progress); the data is stale when it lags more than `max_age_h` beyond that."""
    if newest_close is None:
        raise Refusal(f"refused: no {tf} bar of the candidates' symbols before {now.isoformat()}"
                      " (is the recorder running, or was the data imported?)")
    lag_h = (now - newest_close).total_seconds() / 3600
    allowed_h = max_age_h + tf_seconds(tf) / 3600
    if lag_h > allowed_h:
        raise Refusal(f"refused: stale data: the newest bar of the candidates' symbols closed at "
                      f"{newest_close.isoformat()}, {lag_h:.1f} h before {now.isoformat()} (allowed: one {tf} bar"
                      f" in progress + selection.max_data_age_h = {max_age_h:g} h)")


def check_coverage(statuses: Sequence[str], min_share: float) -> None:
    n = len(statuses)
    if n == 0:
        raise Refusal("refused: no candidate pair to evaluate")
    # an untradeable pair was evaluated (its data is fine; sizing refuses it): it counts
    ok = sum(s in ("ok", "untradeable") for s in statuses)
    if ok / n < min_share:
        raise Refusal(f"refused: only {ok} of {n} candidates evaluated ({ok / n:.0%}; the rest skipped or failed;"
                      f" selection.min_evaluated_share = {min_share:g})")


def check_not_emptied(n_selected: int, n_current: int, allow_empty: bool) -> None:
    if n_selected == 0 and n_current > 0 and not allow_empty:
        raise Refusal(f"refused: the selection is empty and would remove all {n_current} traded pairs"
                      " (set selection.allow_empty: true to allow it)")

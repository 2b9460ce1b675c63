"""An in-process stand-in for the worker pool (bot.research.executor.run_tasks): the pair
tasks run one after the other in the test's process, so job tests pay no worker start-up.
It is the same call the pool makes (`fn()` per task, `progress` per outcome)."""

from __future__ import annotations

from typing import Any


def inproc(tasks: Any, progress: Any = None) -> list[Any]:
    out = []
    for _t1, _t2, fn in tasks:
        out.append(fn())
        if progress is not None:
            progress(out[-1])
    return out

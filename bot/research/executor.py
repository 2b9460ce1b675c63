"""Run pair jobs in parallel: local worker processes, or a Dask cluster.

Local: one forked process per pair, at most `workers` at a time; the outcome comes
back through a pipe. A process that dies without answering (killed, out of
memory) costs only its pair: it is retried once, then reported as failed. An
exception inside the job is reported as that pair's failure (no retry: it would
fail the same way). With a Dask scheduler address the same function runs on the
cluster (`retries=1`), so the results are the same.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from bot.research.pair_job import PairOutcome

log = logging.getLogger(__name__)

Task = tuple[str, str, Callable[[], PairOutcome]]
Progress = Callable[[PairOutcome], None]


def _child(fn: Callable[[], PairOutcome], conn: Connection, t1: str, t2: str) -> None:
    try:
        outcome = fn()
    except Exception as err:  # reported as the pair's failure, never swallowed
        outcome = PairOutcome(t1, t2, "failed", f"{type(err).__name__}: {err}",
                              timings={"traceback": 0.0})
        log.debug("pair %s/%s failed:\n%s", t1, t2, traceback.format_exc())
    conn.send_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


def run_local(tasks: Sequence[Task], workers: int | None = None, progress: Progress | None = None,
              max_attempts: int = 2) -> list[PairOutcome]:
    """Run every task in forked worker processes; results in task order."""
    ctx = mp.get_context("fork")
    workers = max(1, workers or os.cpu_count() or 1)
    results: dict[int, PairOutcome] = {}
    attempts = [0] * len(tasks)
    queue = list(range(len(tasks)))
    running: dict[Any, tuple[int, Any, Connection]] = {}

    def start(i: int) -> None:
        t1, t2, fn = tasks[i]
        attempts[i] += 1
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(fn, send, t1, t2), daemon=True)
        proc.start()
        send.close()
        running[recv] = (i, proc, recv)

    while queue or running:
        while queue and len(running) < workers:
            start(queue.pop(0))
        ready = wait(list(running.keys()))
        for conn in ready:
            i, proc, recv = running.pop(conn)  # type: ignore[index]
            try:
                outcome: PairOutcome | None = pickle.loads(recv.recv_bytes())
            except (EOFError, OSError):
                outcome = None
            recv.close()
            proc.join()
            if outcome is None:
                t1, t2, _ = tasks[i]
                if attempts[i] < max_attempts:
                    log.warning("worker for %s/%s died (exit code %s): retrying", t1, t2, proc.exitcode)
                    queue.append(i)
                    continue
                outcome = PairOutcome(t1, t2, "failed",
                                      f"worker died (exit code {proc.exitcode}) {attempts[i]} times")
            results[i] = outcome
            if progress is not None:
                progress(outcome)
    return [results[i] for i in range(len(tasks))]


def run_dask(tasks: Sequence[Task], address: str, progress: Progress | None = None) -> list[PairOutcome]:
    """Run every task on the Dask cluster at `address` (e.g. tcp://host:8786)."""
    from distributed import Client, as_completed
    from distributed.client import FutureCancelledError

    def call(fn: Callable[[], PairOutcome], t1: str, t2: str) -> PairOutcome:
        try:
            return fn()
        except Exception as err:
            return PairOutcome(t1, t2, "failed", f"{type(err).__name__}: {err}")

    with Client(address, set_as_default=False) as client:
        futures = [client.submit(call, fn, t1, t2, retries=1, pure=False) for t1, t2, fn in tasks]
        index = {f.key: k for k, f in enumerate(futures)}
        results: dict[int, PairOutcome] = {}
        for fut in as_completed(futures):
            k = index[fut.key]
            t1, t2, _ = tasks[k]
            try:
                outcome = fut.result()
            except (FutureCancelledError, Exception) as err:  # KilledWorker after the retry
                outcome = PairOutcome(t1, t2, "failed", f"dask: {type(err).__name__}: {err}")
            results[k] = outcome
            if progress is not None:
                progress(outcome)
    return [results[k] for k in range(len(tasks))]


def run_tasks(tasks: Sequence[Task], workers: int | None = None, dask_address: str | None = None,
              progress: Progress | None = None) -> list[PairOutcome]:
    if dask_address:
        return run_dask(tasks, dask_address, progress)
    return run_local(tasks, workers, progress)

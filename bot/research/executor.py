"""Run pair jobs in parallel: local worker processes, or a Dask cluster.

Local: `workers` spawned worker processes, each running one pair at a time; the
outcome comes back through a pipe. A process that dies without answering (killed, out of
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
import uuid
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from bot.research.pair_job import PairOutcome

log = logging.getLogger(__name__)

Task = tuple[str, str, Callable[[], PairOutcome]]
Progress = Callable[[PairOutcome], None]


def _worker_loop(conn: Connection) -> None:
    """A persistent worker: receive a pickled (t1, t2, fn), answer a pickled PairOutcome."""
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        t1, t2, fn = pickle.loads(data)
        try:
            outcome = fn()
        except Exception as err:  # reported as the pair's failure, never swallowed
            log.debug("pair %s/%s failed:\n%s", t1, t2, traceback.format_exc())
            outcome = PairOutcome(t1, t2, "failed", f"{type(err).__name__}: {err}")
        conn.send_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))


_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "POLARS_MAX_THREADS")


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        # one thread per worker: N workers x M BLAS/polars threads on N cores thrash
        saved = {k: os.environ.get(k) for k in _ONE_THREAD}
        os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.task: int | None = None

    def stop(self) -> None:
        try:
            self.conn.close()
        finally:
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()


def run_local(tasks: Sequence[Task], workers: int | None = None, progress: Progress | None = None,
              max_attempts: int = 2) -> list[PairOutcome]:
    """Run every task on `workers` spawned worker processes; results in task order.

    Workers are spawned, not forked: the parent holds thread pools (polars, numba)
    that a fork would copy mid-lock. Each worker runs one task at a time, so a dead
    worker names its task exactly; it is replaced and the task retried once.
    """
    if not tasks:
        return []
    ctx = mp.get_context("spawn")
    n = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    results: dict[int, PairOutcome] = {}
    attempts = [0] * len(tasks)
    queue = list(range(len(tasks)))
    pool = [_Worker(ctx) for _ in range(n)]
    try:
        while queue or any(w.task is not None for w in pool):
            for w in pool:
                if w.task is None and queue:
                    i = queue.pop(0)
                    attempts[i] += 1
                    w.task = i
                    w.conn.send_bytes(pickle.dumps(tasks[i], protocol=pickle.HIGHEST_PROTOCOL))
            busy = [w for w in pool if w.task is not None]
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for k, w in enumerate(pool):
                if w.task is None or not (w.conn in ready or w.proc.sentinel in ready):
                    continue
                i = w.task
                outcome: PairOutcome | None = None
                if w.conn.poll():
                    try:
                        outcome = pickle.loads(w.conn.recv_bytes())
                    except (EOFError, OSError):
                        outcome = None
                if outcome is None and w.proc.is_alive():
                    continue  # answer not complete yet
                w.task = None
                if outcome is None:  # the worker died on this task
                    t1, t2, _ = tasks[i]
                    code = w.proc.exitcode
                    w.stop()
                    pool[k] = _Worker(ctx)
                    if attempts[i] < max_attempts:
                        log.warning("worker for %s/%s died (exit code %s): retrying", t1, t2, code)
                        queue.insert(0, i)
                        continue
                    outcome = PairOutcome(t1, t2, "failed", f"worker died (exit code {code}) {attempts[i]} times")
                results[i] = outcome
                if progress is not None:
                    progress(outcome)
    finally:
        for w in pool:
            w.stop()
    return [results[i] for i in range(len(tasks))]


def run_dask(tasks: Sequence[Task], address: str, progress: Progress | None = None) -> list[PairOutcome]:
    """Run every task on the Dask cluster at `address` (e.g. tcp://host:8786).

    A task whose function names `remote_inputs` (pair_inputs.TokenRef: a symbol's quotes in
    the job's database) gets them as arguments: one loader task per distinct symbol reads
    it from Postgres on a worker, and the cluster moves the array to the pair's worker;
    the client drops its handles at once, so a symbol's quotes are freed after its last pair.
    """
    from distributed import Client, as_completed
    from distributed.client import FutureCancelledError

    from bot.research.pair_inputs import load_token

    def call(fn: Callable[..., PairOutcome], t1: str, t2: str, *inputs: Any) -> PairOutcome:
        try:
            return fn(*inputs)
        except Exception as err:
            return PairOutcome(t1, t2, "failed", f"{type(err).__name__}: {err}")

    if not tasks:
        return []
    with Client(address) as client:
        loaders: dict[Any, Any] = {}
        futures = []
        for t1, t2, fn in tasks:
            deps = []
            for ref in getattr(fn, "remote_inputs", ()):
                if ref not in loaders:
                    loaders[ref] = client.submit(load_token, ref, retries=1, pure=False,
                                                 key=f"quotes-{ref.symbol}-{uuid.uuid4().hex}")
                deps.append(loaders[ref])
            futures.append(client.submit(call, fn, t1, t2, *deps, retries=1, pure=False))
        loaders.clear()
        del deps  # no handle left here: the cluster frees a symbol after its last pair
        index = {f.key: k for k, f in enumerate(futures)}
        results: dict[int, PairOutcome] = {}
        for fut in as_completed(futures):
            k = index[fut.key]
            t1, t2, _ = tasks[k]
            try:
                outcome = fut.result()
            except (FutureCancelledError, Exception) as err:  # KilledWorker after the retry, a failed loader
                outcome = PairOutcome(t1, t2, "failed", f"dask: {type(err).__name__}: {err}")
            results[k] = outcome
            fut.release()
            if progress is not None:
                progress(outcome)
    return [results[k] for k in range(len(tasks))]


def run_tasks(tasks: Sequence[Task], workers: int | None = None, dask_address: str | None = None,
              progress: Progress | None = None) -> list[PairOutcome]:
    if dask_address:
        return run_dask(tasks, dask_address, progress)
    return run_local(tasks, workers, progress)

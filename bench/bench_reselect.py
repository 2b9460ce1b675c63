"""Re-selection at production scale (issue 16). Run (2 cores; the first run generates and
stores the market, ~31M quotes, and keeps it in a database for the next runs):

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test python bench/bench_reselect.py --quotes-s 5

The demo market (bot.core.demo_market) of `--symbols` symbols (30: 435 candidate pairs) over
`--days` days (60) of `--quotes-s` s quotes (5: 1.04M quotes a symbol), 1h bars built from
them, `--iters` parameter sets (100), a promoted CatBoost model (scoring cost), `--workers`
worker processes (2). `bot reselect`'s job (bot.selection.reselect) runs from the
database to the committed pairs table, each job in its own process, measured there:

- wall time and its split: load (parent: bars, instruments, each symbol's quotes into
  the cache), the pairs' own input building, z-scores and backtests (core-seconds
  summed over the workers), scoring, writes;
- peak resident memory of the job's processes together (parent + workers, sampled
  every 50 ms; a mapped cache page counts in every process that maps it);
- ticks per second per core: pairs x (sets + 1) x train ticks / (wall x workers).

The same job on today's path (`--baseline`, a git ref checked out into a worktree: the
code before this issue, which holds every pair's ticks before the workers start) runs on
the largest market it can hold here (`--baseline-symbols` of the symbols, their pairs)
next to the new path on the same pairs: the ratio of the two walls, and whether both
wrote the same statistics rows. The z kernel against a minimal compiled loop is
bench/bench_zscore.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "bot-bench-reselect"


def db_name(a: argparse.Namespace) -> str:
    return f"bench_reselect_{a.symbols}s_{a.days:g}d_q{a.quotes_s:g}".replace(".", "_")


# --- market (once) ---------------------------------------------------------------------

async def ensure_market(a: argparse.Namespace) -> str:
    """The market's database DSN, generating the market (in a child process) when absent."""
    import asyncpg

    from bot.core.db.scratch import with_database

    dsn = with_database(a.admin, db_name(a))
    conn = await asyncpg.connect(a.admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db_name(a))
    finally:
        await conn.close()
    if exists:
        try:
            c = await asyncpg.connect(dsn)
            try:
                ready = await c.fetchval("SELECT count(*) FROM bench_market")
            finally:
                await c.close()
            if ready:
                return dsn
        except asyncpg.PostgresError:
            pass
    t = time.perf_counter()
    print(f"generating the market into {db_name(a)} (once) ...", flush=True)
    subprocess.run([sys.executable, __file__, "--generate", "--symbols", str(a.symbols), "--days", str(a.days),
                    "--quotes-s", str(a.quotes_s), "--admin", a.admin], check=True)
    print(f"  generated and stored in {time.perf_counter() - t:.0f} s", flush=True)
    return dsn


async def generate(a: argparse.Namespace) -> None:
    import asyncpg

    from bot.cli.data_cmds import write_demo_market
    from bot.core.db.migrate import migrate
    from bot.core.db.pool import Database, create_pool
    from bot.core.db.scratch import with_database
    from bot.core.demo_market import generate as gen
    from bot.research import model as mdl
    from tests.research.test_model import synthetic

    conn = await asyncpg.connect(a.admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name(a)}" WITH (FORCE)')  # name built from numbers
        await conn.execute(f'CREATE DATABASE "{db_name(a)}"')
    finally:
        await conn.close()
    dsn = with_database(a.admin, db_name(a))
    pool = await create_pool(dsn, 1, 4)
    try:
        async with pool.acquire() as c:
            await migrate(c)
        market = gen(n_symbols=a.symbols, days=a.days, quote_interval_s=a.quotes_s, seed=3)
        counts = await write_demo_market(Database(pool, dsn), market, tfs=("1h",))
        async with pool.acquire() as c:
            await c.execute("CREATE TABLE bench_market (symbols text[], end_time timestamptz, quotes bigint)")
            await c.execute("INSERT INTO bench_market VALUES ($1, $2, $3)", market.symbols, market.end,
                            counts["quotes"])
    finally:
        await pool.close()
    from bot.config import load
    from bot.config.loader import example_path

    cfg = load(example_path())
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"iterations": 200, "depth": 6})})
    models = WORK / db_name(a) / "models"
    models.mkdir(parents=True, exist_ok=True)
    from bot.selection.evaluate import GATE_VERSION

    # promoted by the current gate (scoring cost only: the model is trained on synthetic rows)
    mdl.save_model(mdl.fit_catboost(synthetic(), cfg), str(models), {"promoted": True, "gate_version": GATE_VERSION}, 3)


# --- one job, in its own process --------------------------------------------------------

class PeakRss:
    """Peak resident memory of this process and all its children together."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total, n = 0, 0
            try:
                procs = [self.me, *self.me.children(recursive=True)]
            except psutil.Error:
                procs = [self.me]
            for p in procs:
                try:
                    total += p.memory_info().rss
                    n += 1
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, n
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


async def job(a: argparse.Namespace) -> None:
    from bot.config import load
    from bot.config.loader import example_path
    from bot.core.db.pool import Database, create_pool
    from bot.selection.reselect import reselect

    pool = await create_pool(a.dsn, 1, 4)
    db = Database(pool, a.dsn)
    try:
        async with pool.acquire() as c:
            symbols, end, quotes = await c.fetchrow("SELECT symbols, end_time, quotes FROM bench_market")
            await c.execute("TRUNCATE pairs")  # every job starts from the same pairs table
        toks = list(symbols)[: a.job_symbols] if a.job_symbols else list(symbols)
        pairs = [(x, y) for i, x in enumerate(toks) for y in toks[i + 1:]]
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "candidates.txt").write_text("".join(f"{x} {y}\n" for x, y in pairs))
        base = load(example_path())
        cfg = base.model_copy(update={
            "research": base.research.model_copy(update={"iters": a.iters}),
            "selection": base.selection.model_copy(update={
                "train_days": a.days, "candidates_file": str(out / "candidates.txt"),
                "token_pairs_file": str(out / "token_pairs.txt")}),
            "model": base.model.model_copy(update={"dir": str(WORK / a.db_name / "models")}),
        })
        with PeakRss() as rss:
            t = time.perf_counter()
            rep = await reselect(db, cfg, now=end, workers=a.workers)
            wall = time.perf_counter() - t
        async with pool.acquire() as c:
            run_id = await c.fetchval("SELECT max(id) FROM backtest_runs WHERE kind = 'reselect'")
            stats = await c.fetch("SELECT * FROM pair_stats WHERE run_id = $1 ORDER BY coin1, coin2", run_id)
        drop = {"run_id", "id", "created_at"}
        rows = [{k: (None if v is None else str(v)) for k, v in dict(r).items() if k not in drop} for r in stats]
        import bot

        print(f"job ran {Path(bot.__file__).parent}", flush=True)
        (out / "stats.json").write_text(json.dumps(rows, sort_keys=True))
        result = {"wall_s": wall, "timings": rep.timings, "pairs": len(pairs), "selected": len(rep.pairs),
                  "peak_rss": rss.peak, "peak_procs": rss.peak_procs, "quotes_per_symbol": quotes / len(symbols),
                  "iters": a.iters, "workers": a.workers}
        (out / "result.json").write_text(json.dumps(result))
    finally:
        await pool.close()


def run_job(a: argparse.Namespace, dsn: str, out: Path, symbols: int | None, code: Path | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code or ROOT)
    cmd = [sys.executable, __file__, "--job", "--dsn", dsn, "--out", str(out), "--iters", str(a.iters),
           "--workers", str(a.workers), "--days", str(a.days), "--db-name", db_name(a)]
    if symbols:
        cmd += ["--job-symbols", str(symbols)]
    subprocess.run(cmd, check=True, env=env, cwd=str(code or ROOT))
    return json.loads((out / "result.json").read_text())


def worktree(ref: str) -> Path:
    path = WORK / f"baseline-{ref}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(path), ref], check=True,
                       capture_output=True)
    return path


def report(name: str, r: dict, ticks_per_pair: float) -> None:
    t = r["timings"]
    gb = r["peak_rss"] / 2**30
    ticks = r["pairs"] * (r["iters"] + 1) * ticks_per_pair
    print(f"\n{name}: {r['pairs']} candidates x {r['iters']} sets, {r['workers']} workers, selected {r['selected']}")
    print(f"  wall {r['wall_s']:.1f} s; peak RSS {gb:.2f} GB over {r['peak_procs']} processes")
    split = ["load_s", "backtests_s", "scoring_s", "writes_s", "total_s"]
    print("  split (wall): " + ", ".join(f"{k[:-2]} {t[k]:.1f} s" for k in split if k in t))
    reads = [k for k in t if k.startswith("read_")]
    if reads:
        print("  of the load: " + ", ".join(f"{k[:-2]} {t[k]:.1f} s" for k in reads))
    if "write_results_s" in t:
        print(f"  of the backtests phase: writing the statistics and sweep rows {t['write_results_s']:.1f} s")
    cores = [k for k in t if k.endswith("_core_s")]
    if cores:
        print("  in the workers (core-s): " + ", ".join(f"{k[:-7]} {t[k]:.1f}" for k in cores))
    print(f"  ticks per second per core: {ticks / (r['wall_s'] * r['workers']) / 1e6:.1f}M end to end"
          + (f", {ticks / t['backtests_core_s'] / 1e6:.0f}M in the backtests" if t.get("backtests_core_s") else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quotes-s", type=float, default=5.0)
    ap.add_argument("--symbols", type=int, default=30)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", default="2af8697", help="git ref of today's path (before issue 16)")
    ap.add_argument("--baseline-symbols", type=int, default=10, help="symbols of the market today's path runs on")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--admin", default=os.environ.get("BOT_DATABASE_DSN"))
    # internal
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dsn", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--job-symbols", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db-name", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        asyncio.run(generate(a))
        return
    if a.job:
        asyncio.run(job(a))
        return
    if not a.admin:
        sys.exit("set BOT_DATABASE_DSN to a PostgreSQL server's admin DSN (the market is kept in a database there)")
    dsn = asyncio.run(ensure_market(a))
    ticks = a.days * 86400 / a.quotes_s
    out = WORK / "runs"
    if not a.skip_baseline:
        old = run_job(a, dsn, out / "baseline", a.baseline_symbols, worktree(a.baseline))
        new = run_job(a, dsn, out / "new-small", a.baseline_symbols, None)
        report(f"today's path ({a.baseline}), {a.baseline_symbols} symbols", old, ticks)
        report(f"this path, {a.baseline_symbols} symbols", new, ticks)
        same = (out / "baseline" / "stats.json").read_text() == (out / "new-small" / "stats.json").read_text()
        print(f"\n  ratio (today's wall / this wall): {old['wall_s'] / new['wall_s']:.1f}x; "
              f"same statistics rows: {'yes' if same else 'NO'}")
    full = run_job(a, dsn, out / "new-full", None, None)
    report(f"this path, all {a.symbols} symbols", full, ticks)
    budget = 300.0
    print(f"\n  target: under {budget:.0f} s wall and 4 GB: {'met' if full['wall_s'] < budget else 'NOT met'} / "
          f"{'met' if full['peak_rss'] < 4 * 2**30 else 'NOT met'}")


if __name__ == "__main__":
    if "--job" not in sys.argv:  # a job imports `bot` from its PYTHONPATH (today's path: a worktree)
        sys.path.insert(0, str(ROOT))
    main()

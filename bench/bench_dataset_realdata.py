"""`bot dataset` on real data, old code against new in one run, plus the resume of a killed build.

    BOT_DATABASE_DSN=postgresql://postgres@127.0.0.1:5432/test \\
        python bench/bench_dataset_realdata.py --old /tmp/old --windows 22

The 32 gap-free Binance USDT-M perpetuals of ../shared/data (496 pairs), 1h bars-only,
60-day train / 14-day test windows from 2025-05-05, 10 parameter sets, taker fee
0.055 %, 2 workers, `--assume-instruments`. Each side runs the `bot` CLI of its own
source tree (`--old DIR`: a checkout of the earlier commit, e.g. `git worktree add
/tmp/old <sha>`; omitted: the new side only) on its own scratch database. The new side
then starts a second build, is SIGKILLed once its first window is committed, and is
rerun with the same arguments: the resumed run's time and whether its rows equal the
uninterrupted run's are printed. The server must allow CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BOT_SHARED_DATA", REPO.parent / "shared" / "data"))
GAPLESS = ("1000PEPE 1000SHIB AAVE ADA ALGO ARB AVAX BCH BTC DOGE DOT ENA ETH HBAR KAS LINK LTC NEAR ONDO OP "
           "RENDER SOL SUI TON TRX VET WLD XLM XMR XRP XTZ ZEC").split()
START = dt.datetime(2025, 5, 5, tzinfo=dt.UTC)
CONFIG = """strategy:
  fee_rate: 0.00055
  min_order_size: 0.0
  sl_method: cooldown
model:
  train_days: 60
  test_days: 14
"""


def bot(src: Path, dsn: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "BOT_DATABASE_DSN": dsn, "PYTHONPATH": str(src)}
    return subprocess.Popen([sys.executable, "-m", "bot.cli.main", *args], env=env, cwd=src, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def run(src: Path, dsn: str, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    p = bot(src, dsn, *args)
    out, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{src}: bot {' '.join(args)} exited {p.returncode}:\n{out[-3000:]}")
    return time.perf_counter() - t, out


def killed_after_first_window(src: Path, dsn: str, *args: str) -> float:
    """Start the build, SIGKILL it once the database holds its first committed window."""
    import asyncpg

    async def committed() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('public.dataset_windows') IS NOT NULL"):
                return 0
            return int(await conn.fetchval(
                "SELECT count(*) FROM dataset_windows w JOIN dataset_builds b USING (dataset_id)"
                " WHERE b.dataset_id = (SELECT max(dataset_id) FROM dataset_builds)"))
        finally:
            await conn.close()

    async def before() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT coalesce(max(dataset_id), 0) FROM dataset_builds"))
        finally:
            await conn.close()

    first_build = asyncio.run(before())
    t = time.perf_counter()
    p = bot(src, dsn, *args)
    while p.poll() is None:
        time.sleep(0.5)
        if asyncio.run(before()) > first_build and asyncio.run(committed()) >= 1:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return time.perf_counter() - t
    raise SystemExit("the build ended before it could be killed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=Path, help="source tree of the earlier commit")
    ap.add_argument("--windows", type=int, default=22)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if not (DATA / "ohlcv").is_dir():
        raise SystemExit(f"no data under {DATA}")
    from bot.core.db.scratch import create_database, drop_database, scratch_server

    end = START + dt.timedelta(days=60 + 14 * a.windows)
    with tempfile.TemporaryDirectory() as tmp_s, scratch_server(os.environ.get("BOT_DATABASE_DSN")) as admin:
        tmp = Path(tmp_s)
        (tmp / "config.yaml").write_text(CONFIG)
        pairs = tmp / "pairs.txt"
        pairs.write_text("".join(f"{x} {y}\n" for i, x in enumerate(GAPLESS) for y in GAPLESS[i + 1:]))
        sides = [("new", REPO)] + ([("old", a.old.resolve())] if a.old else [])
        results: dict[str, float] = {}

        async def body() -> None:
            for name, src in sides:
                dsn = await create_database(admin, f"bot_ds_{name}")  # each side migrates with its own code
                try:
                    cfg = ("--config", str(tmp / "config.yaml"))
                    run(src, dsn, *cfg, "db", "migrate")
                    t_imp, _ = run(src, dsn, *cfg, "data", "import",
                                   str(DATA / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet"))
                    args = (*cfg, "dataset", "--pairs", str(pairs), "--start", START.date().isoformat(),
                            "--end", end.date().isoformat(), "--iters", "10", "--workers", str(a.workers),
                            "--assume-instruments")
                    wall, out = await asyncio.to_thread(run, src, dsn, *args, "--out", str(tmp / f"{name}.parquet"))
                    results[name] = wall
                    print(f"{name}: import {t_imp:.1f} s, dataset {wall:.1f} s; {out.strip().splitlines()[-1]}")
                    if name == "new":
                        k = await asyncio.to_thread(killed_after_first_window, src, dsn, *args, "--out",
                                                    str(tmp / "killed.parquet"))
                        wall_r, out_r = await asyncio.to_thread(run, src, dsn, *args, "--out",
                                                                str(tmp / "resumed.parquet"))
                        said = [x for x in out_r.splitlines() if "resum" in x]
                        same = (pl.read_parquet(tmp / "resumed.parquet").sort("window_id", "coin1", "coin2").equals(
                            pl.read_parquet(tmp / "new.parquet").sort("window_id", "coin1", "coin2")))
                        print(f"new: killed after {k:.1f} s (first window committed); resumed run {wall_r:.1f} s;"
                              f" rows equal to the uninterrupted run: {same}; {said[:1]}")
                finally:
                    await drop_database(admin, dsn)

        asyncio.run(body())
        if "old" in results:
            print(f"dataset wall time new / old: {results['new'] / results['old']:.2f}")


if __name__ == "__main__":
    main()

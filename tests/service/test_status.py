"""`bot status [--json]` on a known state (a real Postgres, the command as a process): the
service's run, the pairs, an open position with its entry z, current z (equal to the
executor's own) and unrealised PnL from the latest quotes, today's closed trade and PnL, the
balance, the incidents not acknowledged, the recorder's lag and the jobs' last runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from bot.core.db import service_runs
from bot.core.db.market import copy_quotes
from tests.executor import live
from tests.executor import test_pairs_and_inputs as t
from tests.executor.harness import quotes_frame

pytestmark = pytest.mark.asyncio(loop_scope="session")
REPO = Path(__file__).resolve().parents[2]

CONFIG = """
strategy: {tf: 1h, wind: 5, spr_method: dist, median_length: 1, thresh_in: 2.0, thresh_out: 0.5, balance: 1000.0,
  order_size: 50.0, min_order_size: 0.0, leverage: 2.0, fee_rate: 0.00055, sl_std: 50.0, sl_dist: null,
  sl_seconds: 0.0, maintenance_margin_rate: 0.01}
"""


def _status(cfg_file: Path, dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli.main", "--config", str(cfg_file), "status", *extra],
                          cwd=REPO, env={**os.environ, "BOT_DATABASE_DSN": dsn}, capture_output=True, text=True,
                          timeout=120)


async def test_status_text_and_json_on_a_known_state(db: Any, tmp_path: Path) -> None:
    await t._reset(db)
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE service_runs, job_runs, quotes RESTART IDENTITY")
    await t._bars(db, t.PAIRS)
    await t._pairs(db, [{"t1": "AAA", "t2": "BBB"}, {"t1": "CCC", "t2": "DDD"}])
    ex = await t._executor(db)
    now = time.time()
    entry = t._quotes("AAA", "BBB", live.ENTRY_SPREAD, now - 5)
    await t._feed(ex, entry)  # AAA/BBB open (short spread)
    await t._feed(ex, t._quotes("CCC", "DDD", live.ENTRY_SPREAD, now - 4))
    await t._feed(ex, t._quotes("CCC", "DDD", live.EXIT_SPREAD, now - 3))  # CCC/DDD: one closed trade today
    later = t._quotes("AAA", "BBB", 0.02, now - 2)  # AAA/BBB now at spread 0.02: still open, z lower
    await t._feed(ex, later)
    z_exec = ex.runners[("AAA", "BBB")].last_z
    await copy_quotes(db, quotes_frame(later))
    async with db.pool.acquire() as conn:
        run = await service_runs.start(conn, "paper")
        await service_runs.ready(conn, run)
        await service_runs.heartbeat(conn, run, D(1000), {"pairs": 2})
        await conn.execute("INSERT INTO job_runs (job, finished_at, status) VALUES ('reselect', now(), 'ok')")
        await conn.execute("INSERT INTO incidents (kind, message) VALUES ('orphan', 'the venue holds 3 XYZUSDT')")
        await conn.execute("INSERT INTO incidents (kind, message, acknowledged_at) VALUES ('orphan', 'old', now())")
        pos = await conn.fetchrow("SELECT id, open_z FROM positions WHERE status = 'open'")
        opens = await conn.fetch("SELECT symbol, side, filled_qty, avg_price, fee FROM orders WHERE position_id = $1"
                                 " AND action = 'open'", pos["id"])
        trade = await conn.fetchrow("SELECT total_profit FROM trades")
    await ex.stop()
    t.RUNNING.remove(ex)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(CONFIG)
    out = _status(cfg_file, db.dsn, "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["mode"] == "paper" and st["service"]["running"] is True and st["service"]["id"] == run
    assert [(p["token_1"], p["token_2"]) for p in st["pairs"]] == [("AAA_USDT", "BBB_USDT"), ("CCC_USDT", "DDD_USDT")]
    [p] = st["open_positions"]
    assert p["pair"] == "AAA/BBB" and p["side"] == "short" and p["entry_z"] == pytest.approx(pos["open_z"])
    assert p["current_z"] == pytest.approx(z_exec, abs=1e-9) and p["current_z"] < p["entry_z"]
    # uPnL: short AAA closes at the ask, long BBB at the bid, minus the open fees
    want = D(0)
    px = {later[0].symbol: later[0], later[1].symbol: later[1]}
    for o in opens:
        q = px[o["symbol"]]
        want += (o["avg_price"] - q.ask) * o["filled_qty"] if o["side"] == "Sell" else (q.bid - o["avg_price"]) * \
            o["filled_qty"]
        want -= o["fee"]
    assert p["unrealised_pnl"] == pytest.approx(float(want), abs=1e-9) and want > 0
    assert st["today"]["trades"] == 1 and st["today"]["pnl"] == pytest.approx(float(trade["total_profit"]))
    assert st["balance"] == pytest.approx(1000 + float(trade["total_profit"]))
    assert [i["message"] for i in st["incidents"]] == ["the venue holds 3 XYZUSDT"]  # the acknowledged one is not
    assert 0 <= st["recorder_lag_s"] < 60
    jobs = {j["job"]: j for j in st["jobs"]}
    assert jobs["reselect"]["last_status"] == "ok" and jobs["bars"]["last_status"] is None
    text = _status(cfg_file, db.dsn)
    assert text.returncode == 0, text.stderr
    body = text.stdout
    assert "mode paper" in body and f"service: RUNNING (run {run}" in body
    assert f"#{pos['id']} AAA/BBB short open" in body and f"uPnL {float(want):+.4f} USDT" in body
    assert "today: 1 closed trades" in body and "the venue holds 3 XYZUSDT" in body and "reselect" in body
    async with db.pool.acquire() as conn:  # stopped: the status says so, with the reason
        await service_runs.stop(conn, run, "SIGTERM", 0)
    assert "service: NOT RUNNING" in _status(cfg_file, db.dsn).stdout

"""The command line as a user runs it: exit codes, one-line errors, the embedded path."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("BOT_DATABASE_DSN", "BOT_CONFIG")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "bot.cli.main", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def test_unreachable_database_is_one_line_exit_1(tmp_path: Path) -> None:
    res = run_bot("db", "migrate", env={"BOT_DATABASE_DSN": "postgresql://bot:topsecret@127.0.0.1:1/bot"},
                  cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "127.0.0.1:1" in lines[0] and "topsecret" not in res.stderr + res.stdout


def test_bad_config_lists_all_problems_exit_2_nothing_started(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("database:\n  embedded_dir: pg\nstrategy:\n  wind: -3\n  qty_method: wrong\nschedule:\n  reselect_cron: daily\n")
    res = run_bot("--config", str(cfg), "data", "info", cwd=tmp_path)
    assert res.returncode == 2
    for key in ("strategy.wind:", "strategy.qty_method:", "schedule.reselect_cron:"):
        assert key in res.stderr
    assert not (tmp_path / "pg").exists()  # nothing started


def test_wrong_typed_yaml_root(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- a\n- b\n")
    res = run_bot("config", "check", str(cfg))
    assert res.returncode == 2 and "must be a mapping" in res.stderr


def test_import_bad_file_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "X_USDT-1h.csv"
    bad.write_text("date,open,high,low,close\n2025-01-01T00:00:00Z,1,2,0.5,0\n")
    res = run_bot("data", "import", str(bad), env={"BOT_DATABASE_DSN": "postgresql://u@127.0.0.1:1/x"})
    assert res.returncode == 2 and "row 1" in res.stderr and "positive" in res.stderr


@pytest.mark.slow
@pytest.mark.db
def test_demo_on_embedded_postgres(tmp_path: Path) -> None:
    """`bot demo` on a fresh directory: embedded PostgreSQL, migrations, a market (the embedded path)."""
    res = run_bot("demo", "--days", "12", "--symbols", "10", "--quote-interval", "600", "--dir",
                  str(tmp_path / "demo"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "embedded PostgreSQL" in res.stdout
    assert "quotes: 17,280 rows over 10 symbols" in res.stdout  # 12 days of 600 s quotes
    for step in ("[4/6] dataset", "[5/6] model", "[6/6] re-selection", "chosen pairs"):
        assert step in res.stdout
    chosen = (tmp_path / "demo" / "token_pairs.txt").read_text().split("\n")
    for line in filter(None, chosen):
        a, b = line.split()
        assert f"  {a:8s} {b:8s}" in res.stdout
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert {"BTC", "ETH", "SOL"} <= set(manifest["symbols"]) and manifest["groups"]
    # the server was stopped cleanly: no postmaster left
    assert not (tmp_path / "demo" / "pgdata" / "postmaster.pid").exists()
    # the demo leaves a set-up to continue with: its config, and next commands that work as printed
    conf = tmp_path / "demo" / "config.yaml"
    assert f"config: {conf}" in res.stdout
    from bot.config import load

    assert Path(load(conf).database.embedded_dir) == tmp_path / "demo" / "pgdata"
    steps = res.stdout.split("next, on this database as it is:\n", 1)[1].strip().splitlines()
    assert any(" reselect --as-of " in line for line in steps) and any(" backtest " in line for line in steps)
    before = chosen
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for line in steps:
        argv = shlex.split(line)
        assert argv[0] == "bot"
        out = run_bot(*argv[1:], cwd=elsewhere)  # from another directory: the config's paths are absolute
        assert out.returncode == 0, (line, out.stderr)
    # the re-selection re-run as of the market's end (same data, same model) chose the same pairs
    after = (tmp_path / "demo" / "token_pairs.txt").read_text().split("\n")
    assert [x for x in after if x] and sorted(after) == sorted(before)


def test_missing_input_file_is_one_line_exit_2(tmp_path: Path) -> None:
    res = run_bot("score", str(tmp_path / "nope.parquet"), "--model", str(tmp_path / "model-x.json"))
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr
    res = run_bot("train", "--dataset", str(tmp_path / "nope.parquet"),
                  env={"BOT_DATABASE_DSN": "postgresql://u@127.0.0.1:1/x"})
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nope.parquet" in res.stderr

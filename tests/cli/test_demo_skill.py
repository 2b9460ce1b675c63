"""`bot demo` finds the planted pairs, and the same ones on every run (issue 15, item 2).

Two runs of the command a new user types, each in a fresh directory with its own embedded
PostgreSQL: at least 6 of the 8 chosen pairs are planted (the manifest's), and
token_pairs.txt is byte-identical across the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _demo(work: Path) -> tuple[bytes, set[tuple[str, str]], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BOT_CONFIG", "BOT_DATABASE_DSN")}
    run = subprocess.run([sys.executable, "-m", "bot.cli.main", "demo", "--dir", str(work)], cwd=work.parent,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    planted = {tuple(sorted(p)) for p in json.loads((work / "manifest.json").read_text())["cointegrated_pairs"]}
    return (work / "token_pairs.txt").read_bytes(), planted, run.stdout


def test_bot_demo_picks_the_planted_pairs_the_same_way_twice(tmp_path: Path) -> None:
    a, planted, out = _demo(tmp_path / "a")
    b, planted_b, _ = _demo(tmp_path / "b")
    assert a == b and planted == planted_b
    chosen = [tuple(sorted(line.split())) for line in a.decode().splitlines()]
    assert len(chosen) == 8, a
    hits = sum(c in planted for c in chosen)
    assert hits >= 6, (chosen, sorted(planted))
    assert out.count("cointegrated: yes") == hits

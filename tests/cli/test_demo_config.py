"""The demo's written config and next commands: absolute paths, no password, shell-safe."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

from bot.cli.demo_loop import demo_config, next_steps, write_demo_config
from bot.config import load
from bot.config.loader import example_path


def test_password_dsn_is_not_written_and_paths_are_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = load(example_path())
    work = tmp_path / "my demo"  # a space: the printed commands must quote it
    work.mkdir()
    db = base.database.model_copy(update={"dsn": "postgresql://u:hunter2pw@127.0.0.1:5432/x",
                                          "embedded_dir": "var/pgdata"})
    dcfg = demo_config(base, work, 12.0, db)
    path = write_demo_config(dcfg, work)
    text = path.read_text()
    assert "hunter2pw" not in text
    written = load(path)
    assert written.database.dsn is None
    assert os.path.isabs(written.database.embedded_dir)
    assert Path(written.database.embedded_dir) == tmp_path / "var" / "pgdata"
    market = SimpleNamespace(end=dt.datetime(2025, 1, 13, tzinfo=dt.UTC),
                             groups=[SimpleNamespace(leader="AAA", members=["BBB"])])
    steps = next_steps(path, market, dcfg, [])
    assert steps[0].startswith("#") and "BOT_DATABASE_DSN" in steps[0]
    for line in steps[1:]:
        argv = shlex.split(line)
        assert argv[:3] == ["bot", "--config", str(path)]
    assert any(shlex.split(s)[3:5] == ["backtest", "AAA"] for s in steps[1:])

"""SIGHUP's reload (Service.reload_config) without a process: a bad file changes nothing and
names every problem; a good one applies the live sections, rebuilds the scheduled jobs with
the new config (their closures hold it), and names the restart-only changes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.config import BotConfig, load
from bot.config.loader import dump_effective, example_path
from bot.core.scheduler import build_scheduler
from bot.core.service import Service


def _cfg_of(job: object) -> BotConfig:
    fn = job.args[2]  # type: ignore[attr-defined]
    return next(c.cell_contents for c in fn.__closure__ if isinstance(c.cell_contents, BotConfig))


def test_reload_applies_live_sections_and_rebuilds_jobs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = load(example_path())
    path = tmp_path / "config.yaml"
    path.write_text(dump_effective(base))
    svc = Service(load(str(path)), str(path))
    svc.scheduler = build_scheduler(None, svc.cfg)
    assert _cfg_of(svc.scheduler.get_job("reselect")).selection.max_pairs == 8
    path.write_text(dump_effective(base).replace("max_pairs: 8", "max_pairs: 15").replace("http_timeout_s: 10.0",
                                                                                         "http_timeout_s: 20.0"))
    with caplog.at_level(logging.INFO, logger="bot.service"):
        assert svc.reload_config()
    assert svc.cfg.selection.max_pairs == 15 and svc.cfg.exchange.http_timeout_s == 10.0  # restart-only: kept
    assert _cfg_of(svc.scheduler.get_job("reselect")).selection.max_pairs == 15  # the job sees the new config
    assert "sections=exchange" in caplog.text and "applied=selection" in caplog.text
    path.write_text("selection:\n  max_pairs: -1\nnonsense: 1\n")
    with caplog.at_level(logging.ERROR, logger="bot.service"):
        assert not svc.reload_config()
    assert svc.cfg.selection.max_pairs == 15 and svc.reload_refused == 1
    assert "problems=2" in caplog.text and "nonsense" in caplog.text

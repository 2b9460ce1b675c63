"""deploy/bot.service is a valid systemd unit (systemd-analyze verify), with the settings the
service relies on; the test fails, not skips, under CI=true when the tool is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "bot.service"


def _settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_unit_has_the_settings_the_service_relies_on() -> None:
    s = _settings()
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main" and int(s["WatchdogSec"]) > 0
    assert s["Restart"] == "on-failure" and s["User"] == "bot" and s["EnvironmentFile"].startswith("/etc/bot/")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == "true", key
    assert s["ProtectSystem"] == "strict" and s["ReadWritePaths"]
    assert int(s["TimeoutStopSec"]) > 30  # above service.shutdown_timeout_s (30 s): systemd never SIGKILLs a clean stop
    assert s["ExecStart"].split()[-1] == "run" and s["ExecReload"].endswith("-HUP $MAINPID")
    env = (REPO / "deploy" / "bot.env.example").read_text()
    assert "BYBIT_API_KEY=" in env and "BYBIT_API_SECRET=" in env


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: the unit cannot be verified")
        pytest.skip("systemd-analyze not installed")
    bot = Path(sys.executable).parent / "bot"
    assert bot.exists(), "the bot console script (pip install -e .)"
    unit = tmp_path / "bot.service"  # the install path of ExecStart replaced by this checkout's venv
    unit.write_text(UNIT.read_text().replace("/opt/bot/.venv/bin/bot", str(bot)))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "bot.service" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
    broken = tmp_path / "broken" / "bot.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in bad.stdout + bad.stderr  # the check can fail

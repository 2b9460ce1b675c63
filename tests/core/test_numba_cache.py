"""numba's cache directory follows the compiled sources' content (bot/numba_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.numba_cache import PACKAGE, cache_dir, compiled_sources


def test_any_byte_of_any_compiled_source_names_a_new_directory(tmp_path: Path) -> None:
    a, b = tmp_path / "signals.py", tmp_path / "backtesting.py"
    a.write_text("from numba import njit\n@njit\ndef f(x):\n    return x > 1\n")
    b.write_text("from numba import njit\n")
    first = cache_dir([a, b], tmp_path / "base")
    assert first == cache_dir([a, b], tmp_path / "base") and first.parent == tmp_path / "base"
    a.write_text(a.read_text().replace("x > 1", "x >= 1"))  # the inlined file changes, the caller does not
    assert cache_dir([a, b], tmp_path / "base") != first


def test_the_kernels_files_are_all_hashed() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in compiled_sources()}
    assert {"analysis/backtesting.py", "analysis/signals.py", "analysis/fills.py", "analysis/zscore.py",
            "research/pair_inputs.py"} <= names


def test_a_process_importing_bot_caches_in_the_hashed_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "BOT_NUMBA_BASE")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)  # a user's choice is kept as the base
    code = "import numba, bot; from numba.core import config; print(config.CACHE_DIR)"  # numba imported first
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == cache_dir(compiled_sources(), tmp_path)

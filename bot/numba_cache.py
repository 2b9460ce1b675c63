"""Where numba keeps its compiled kernels: a directory named by the compiled sources' content.

numba's on-disk cache (``@njit(cache=True)``) keys a function on its own file only. A
kernel that calls a function of another file (backtesting._run runs signals.machine_step
and signals.machine_skip, and fills' sizing) would keep its old machine code after that
other file changed, for example after a deploy that touched only signals.py: the
backtester would then disagree with the live machine without any error. Naming the
cache directory by a hash of every source file that holds compiled code makes any
change of them a fresh cache. It is set when ``bot`` is imported, before any kernel
is compiled. A NUMBA_CACHE_DIR set by the user is kept as the base directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def compiled_sources(root: Path = PACKAGE) -> list[Path]:
    """The package's source files that define compiled functions (they mention njit)."""
    return sorted(p for p in root.rglob("*.py") if "njit" in p.read_text(encoding="utf-8", errors="replace"))


def cache_dir(sources: Iterable[Path], base: str | os.PathLike[str]) -> Path:
    """`base`/<16 hex digits of the SHA-256 of the sources' names and bytes>."""
    h = hashlib.sha256()
    for p in sources:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return Path(base) / h.hexdigest()[:16]


def configure() -> Path | None:
    """Set numba's cache directory for this process (None when the sources cannot be read)."""
    base = os.environ.get("BOT_NUMBA_BASE") or os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "bot", "numba")
    try:
        target = cache_dir(compiled_sources(), base)
    except OSError:
        return None
    os.environ["BOT_NUMBA_BASE"] = str(base)  # child processes hash from the same base
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    import sys

    if "numba" in sys.modules:  # imported before bot: make it read the new directory
        from numba.core import config

        config.reload_config()
    return target

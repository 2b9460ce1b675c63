"""File helpers the research notebook imports (`from bot.utils.files import load_config`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bot.config import load


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The notebook's view of config.yaml: one flat mapping plus the sections.

    Flat keys are the strategy defaults and research keys (``valid_time`` and
    ``end_time`` are tz-aware UTC datetimes, ``winds`` a list, ...); each section is
    also available under its own name (``config['selection']['thresholds']``).
    The file is validated exactly as the bot does; a bad file raises ConfigError.
    """
    cfg = load(path)
    sections = cfg.model_dump()  # python mode: datetimes stay datetimes
    flat: dict[str, Any] = {}
    for name in ("research", "strategy"):
        flat.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in sections[name].items()})
    flat.update(sections)
    flat["dsn"] = cfg.database.dsn
    return flat


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically: temp file in the same directory, fsync, rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

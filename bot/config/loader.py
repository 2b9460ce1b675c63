"""Find, read and validate config.yaml.

Search order: explicit path, then ``$BOT_CONFIG``, then ``./config.yaml``, then the
shipped example. ``$BOT_DATABASE_DSN`` overrides ``database.dsn`` (it may carry a
password, config.yaml may not). Problems are collected, never the first only, and
reported as ``path.to.key: message (got X)``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.config.model import BotConfig
from bot.config.secrets import mask_dsn

EXAMPLE_NAME = "config.example.yaml"


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


def example_path() -> Path:
    return Path(str(resources.files("bot.config").joinpath(EXAMPLE_NAME)))


def resolve_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path is not None:
        return Path(path)
    env = os.environ.get("BOT_CONFIG")
    if env:
        return Path(env)
    local = Path("config.yaml")
    if local.exists():
        return local
    return example_path()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{loc}: {msg} (got {_short(e.get('input'))})")
    return problems


def parse_config(data: Any, source: str = "<config>", env: dict[str, str] | None = None) -> BotConfig:
    """Validate an already parsed mapping (the YAML document) into a BotConfig."""
    env = dict(os.environ) if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"<root>: must be a mapping of sections (got {_short(data)})"])
    dsn = env.get("BOT_DATABASE_DSN")
    if dsn:
        db = data.get("database")
        db = dict(db) if isinstance(db, dict) else {}
        db["dsn"] = dsn
        data = {**data, "database": db}
    try:
        if dsn:
            # the env DSN may carry a password: validate with it removed, then re-insert
            data["database"]["dsn"] = None
            cfg = BotConfig.model_validate(data)
            return cfg.model_copy(update={"database": cfg.database.model_copy(update={"dsn": dsn})})
        return BotConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err)) from None


def load(path: str | os.PathLike[str] | None = None) -> BotConfig:
    p = resolve_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(p), [f"<file>: cannot read ({err.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(str(p), [f"<yaml>: not valid YAML at {where}: {getattr(err, 'problem', err)}"]) from None
    return parse_config(data, str(p))


def effective_dict(cfg: BotConfig) -> dict[str, Any]:
    """The effective config as plain data, secrets masked (for printing)."""
    data = cfg.model_dump(mode="json")
    data["database"]["dsn"] = mask_dsn(cfg.database.dsn)
    return data


def dump_effective(cfg: BotConfig) -> str:
    return yaml.safe_dump(effective_dict(cfg), sort_keys=False)

"""Secrets come only from the environment and are masked whenever printed."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_DSN_PASSWORD = re.compile(r"(?P<pre>://[^:/@]+:)(?P<pw>[^@]*)(?P<post>@)")
_KV_PASSWORD = re.compile(r"(?P<pre>password\s*=\s*)(?P<pw>\S+)", re.IGNORECASE)


def dsn_has_password(dsn: str) -> bool:
    """True when a postgres URL or key=value DSN carries a password."""
    if "://" in dsn:
        return bool(urlsplit(dsn).password)
    return bool(_KV_PASSWORD.search(dsn))


def mask_dsn(dsn: str | None) -> str | None:
    """Replace the password of a DSN with `***` (URL and key=value forms)."""
    if dsn is None:
        return None
    masked = _DSN_PASSWORD.sub(lambda m: m["pre"] + "***" + m["post"], dsn)
    return _KV_PASSWORD.sub(lambda m: m["pre"] + "***", masked)


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in repr/str/logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def reveal(self) -> str:
        return self.value


def env_secret(name: str) -> Secret | None:
    raw = os.environ.get(name)
    return Secret(raw) if raw else None


class SecretMaskFilter:
    """A logging filter that replaces every known secret value (the API key and secret named by
    the config's env variables, a DSN password) in a record's message with `***`. pybit logs
    request headers, the API key among them, at DEBUG: with this filter on the handler a
    secret never reaches the log, whatever the level."""

    def __init__(self, names: tuple[str, ...] = ("BYBIT_API_KEY", "BYBIT_API_SECRET", "PGPASSWORD"),
                 extra: tuple[str, ...] = ()):
        self.names: set[str] = set(names)
        self.extra = list(extra)
        self._refresh()

    def add_env(self, *names: str) -> None:
        """Also mask the values of these variables (the config's exchange.api_key_env / api_secret_env)."""
        self.names.update(names)
        self._refresh()

    def _refresh(self) -> None:
        vals = [os.environ.get(n) or "" for n in self.names] + self.extra
        dsn = os.environ.get("BOT_DATABASE_DSN") or ""
        if "://" in dsn and urlsplit(dsn).password:
            vals.append(urlsplit(dsn).password or "")
        m = _KV_PASSWORD.search(dsn)
        if m:
            vals.append(m["pw"])
        self.values = sorted({v for v in vals if len(v) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for v in self.values:
            text = text.replace(v, "***")
        return text

    def filter(self, record: object) -> bool:
        import logging

        assert isinstance(record, logging.LogRecord)
        if not self.values:
            return True
        msg = record.getMessage()
        masked = msg
        for v in self.values:
            masked = masked.replace(v, "***")
        if masked != msg:
            record.msg, record.args = masked, ()
        return True


LOG_MASK = SecretMaskFilter()  # the process's one masker: on the log handler (filter) and its formatter


def masking_formatter(fmt: str) -> object:
    """A logging.Formatter whose whole output (message, traceback, stack) goes through LOG_MASK."""
    import logging

    class _Masking(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return LOG_MASK.mask(super().format(record))

    return _Masking(fmt)

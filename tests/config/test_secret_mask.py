"""Secrets never reach a log line: the handler's SecretMaskFilter masks the API key, the
secret and a DSN password in any record, at any level (pybit logs request headers, the key
among them, at DEBUG)."""

from __future__ import annotations

import io
import logging

import pytest

from bot.config.secrets import SecretMaskFilter


def test_known_secrets_are_masked_in_every_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYBIT_API_KEY", "AbCdEfGh1234")
    monkeypatch.setenv("BYBIT_API_SECRET", "s3cr3t-value-xyz")
    monkeypatch.setenv("BOT_DATABASE_DSN", "postgresql://bot:pw-9876@db:5432/bot")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(SecretMaskFilter())  # type: ignore[arg-type]
    log = logging.getLogger("test.secret.mask")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.debug("Request -> POST /v5/order/create. Headers: {'X-BAPI-API-KEY': '%s', 'sig': '%s'}",
                  "AbCdEfGh1234", "x")
        log.info("connect to postgresql://bot:pw-9876@db:5432/bot with s3cr3t-value-xyz")
        log.info("nothing secret here")
    finally:
        log.removeHandler(handler)
    out = buf.getvalue()
    assert "AbCdEfGh1234" not in out and "s3cr3t-value-xyz" not in out and "pw-9876" not in out
    assert out.count("***") == 3 and "nothing secret here" in out


def test_configured_names_and_tracebacks_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config.secrets import SecretMaskFilter

    monkeypatch.setenv("MY_KEY", "custom-key-1234")
    mask = SecretMaskFilter()
    mask.add_env("MY_KEY")  # exchange.api_key_env: MY_KEY
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)

    class F(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return mask.mask(super().format(record))

    handler.setFormatter(F("%(message)s"))
    log = logging.getLogger("test.secret.mask2")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError("bad key custom-key-1234")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = buf.getvalue()
    assert "custom-key-1234" not in out and "RuntimeError: bad key ***" in out

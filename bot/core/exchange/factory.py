"""Build the exchange objects from config: keys only from the environment.

- `market_client(cfg)`: the Bybit adapter for public data (instruments, klines,
  tickers); needs no keys, used in both modes.
- `trading_exchange(cfg, instruments)`: `mode: paper` -> PaperExchange (the
  default); `mode: live` -> BybitExchange with the keys named by
  `exchange.api_key_env` / `api_secret_env`, refused (ExchangeConfigError) when
  either is missing or empty, before anything connects.
- `quote_stream(cfg)`: the public top-of-book websocket.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal

from bot.config.model import BotConfig, ExchangeConfig
from bot.core.exchange.bybit import BybitExchange, RetryPolicy
from bot.core.exchange.interface import Exchange, Instrument
from bot.core.exchange.paper import PaperExchange
from bot.core.exchange.stream import BybitQuoteStream


class ExchangeConfigError(ValueError):
    """The exchange section cannot work as configured (e.g. live mode without keys)."""


def api_keys(cfg: ExchangeConfig, env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    env = os.environ if env is None else env
    return env.get(cfg.api_key_env) or None, env.get(cfg.api_secret_env) or None


def check_live_keys(cfg: ExchangeConfig, env: Mapping[str, str] | None = None) -> None:
    if cfg.mode != "live":
        return
    key, secret = api_keys(cfg, env)
    missing = [name for name, v in ((cfg.api_key_env, key), (cfg.api_secret_env, secret)) if not v]
    if missing:
        raise ExchangeConfigError(
            f"exchange.mode: live needs API keys in the environment; {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (use mode: paper to trade on paper)")


def _bybit(cfg: ExchangeConfig, key: str | None, secret: str | None) -> BybitExchange:
    return BybitExchange(key, secret, testnet=cfg.testnet, base_url=cfg.base_url, recv_window_ms=cfg.recv_window_ms,
                         timeout_s=cfg.http_timeout_s, retry=RetryPolicy(attempts=cfg.max_attempts),
                         rate_per_s=cfg.rate_limit_per_s)


def market_client(cfg: BotConfig) -> BybitExchange:
    return _bybit(cfg.exchange, None, None)


def trading_exchange(cfg: BotConfig, instruments: list[Instrument], balance: Decimal | None = None,
                     env: Mapping[str, str] | None = None) -> Exchange:
    check_live_keys(cfg.exchange, env)
    if cfg.exchange.mode == "paper":
        s = cfg.strategy
        mmr = s.maintenance_margin_rate
        return PaperExchange(instruments, Decimal(repr(balance if balance is not None else s.balance)),
                             Decimal(repr(s.fee_rate)), Decimal(repr(s.leverage)),
                             None if mmr is None else Decimal(repr(mmr)))
    key, secret = api_keys(cfg.exchange, env)
    return _bybit(cfg.exchange, key, secret)


def quote_stream(cfg: BotConfig) -> BybitQuoteStream:
    return BybitQuoteStream(cfg.exchange.ws_public_url, testnet=cfg.exchange.testnet,
                            stale_after_s=cfg.exchange.stale_stream_s)

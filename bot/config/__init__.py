"""Typed configuration: `load()` finds and validates config.yaml into a frozen BotConfig."""

from bot.config.loader import ConfigError, dump_effective, effective_dict, load, parse_config
from bot.config.model import BotConfig, StrategyConfig

__all__ = ["BotConfig", "ConfigError", "StrategyConfig", "dump_effective", "effective_dict", "load", "parse_config"]

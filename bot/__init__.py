"""bot: statistical arbitrage on Bybit USDT perpetuals."""

__version__ = "0.1.0"

"""The loopback fake of Bybit v5, one per test, and adapters pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.core.exchange.bybit import BybitExchange, RetryPolicy
from tests.fakes.bybit import FakeBybit, Market

MARKETS = [
    Market("BTCUSDT", 60000.0, "0.001", "0.10", min_notional="5", max_mkt_qty="120"),
    Market("ETHUSDT", 3000.0, "0.01", "0.01"),
    Market("SOLUSDT", 150.0, "0.1", "0.01"),
    Market("JASMYUSDT", 0.007624, "1", "0.000001", min_qty="1"),
    Market("VETUSDT", 0.01415, "1", "0.00001", min_qty="1"),
]


@pytest.fixture
def fake(shared_data: object) -> Iterator[FakeBybit]:
    with FakeBybit([Market(**m.__dict__) for m in MARKETS], page_limit_max=2) as f:
        yield f


def adapter(fake: FakeBybit, **kw: object) -> BybitExchange:
    opts: dict[str, object] = {"retry": RetryPolicy(attempts=4, backoff_s=0.05), "rate_per_s": 200.0,
                               "timeout_s": 2.0}
    opts.update(kw)
    return BybitExchange("test-key", "test-secret", base_url=fake.http_url, **opts)  # type: ignore[arg-type]

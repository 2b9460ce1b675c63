"""Sort keys name what the statistics rows hold (a typo would sort every value as missing)."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, load
from bot.config.model import SORTABLE
from bot.research.dataset import FEATURES


def test_the_sortable_names_are_the_features_and_pred() -> None:
    assert set(SORTABLE) == set(FEATURES) | {"pred"}


@pytest.mark.parametrize("text, ok", [
    ("selection:\n  sort_key: -std\n", True), ("selection:\n  sort_key: pred\n", True),
    ("model:\n  fallback_sort: zero_cross\n", True), ("selection:\n  sort_key: pr_rat_al\n", False),
    ("model:\n  fallback_sort: pred\n", False), ("model:\n  fallback_sort: --std\n", False),
])
def test_sort_keys_are_checked(tmp_path, text: str, ok: bool) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    if ok:
        load(p)
    else:
        with pytest.raises(ConfigError):
            load(p)

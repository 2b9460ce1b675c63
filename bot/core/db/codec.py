"""JSON for jsonb columns: non-finite floats become null (JSON has no NaN)."""

from __future__ import annotations

import json
import math
from typing import Any


def clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(clean(value), default=str, allow_nan=False)

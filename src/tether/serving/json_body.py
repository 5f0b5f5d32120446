"""Response bodies as strict JSON: a prediction of NaN or infinity is written ``null``.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which no JSON parser
outside Python's takes (a browser's ``JSON.parse`` failed on a whole answer, and
jq read ``-Infinity`` as -1.797e308). Such a value is no number a client can use:
``null`` says "no value", as pandas' ``to_json`` writes it.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(payload: Any) -> str:
    """``payload`` as compact JSON, every non-finite float as ``null``."""
    try:
        return json.dumps(payload, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: the rare case walks the payload
        return json.dumps(_finite(payload), separators=(",", ":"), default=str,
                          allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value

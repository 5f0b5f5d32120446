"""Strict JSON for answers read outside Python: NaN and infinities written ``null``.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which no JSON parser
outside Python's takes (a browser's ``JSON.parse`` failed on a whole answer, and
jq read ``-Infinity`` as -1.797e308). Such a value is no number a client can use:
``null`` says "no value", as pandas' ``to_json`` writes it. Serving's answers and
the web UI's JSON views use it; the registry's REST API writes Python's JSON, so a
client re-hashing a version to its digest reads back the values it hashed.
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
        return json.dumps(finite(payload), separators=(",", ":"), default=str,
                          allow_nan=False)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (JSON cannot hold them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value

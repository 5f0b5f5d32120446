"""A model version's input/output schema (its "signature" in MLflow's words).

Not to be confused with a cryptographic signature (``tether._signing``): this
package describes what a model takes and returns. ``types`` holds the records,
``inference`` reads them off an input example, ``compatibility`` compares two
(the semantic-version bump follows from it) and ``records`` enforces one on
prediction requests. Pure logic, no I/O; pandas is imported only when a caller
hands it a DataFrame or asks for one.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .compatibility import Compatibility, check_compatibility, schema_from_declared
from .types import KINDS, TYPES, Field, Schema, Signature

if TYPE_CHECKING:
    from .inference import infer_signature
    from .records import RecordSchemaError, validate_records

#: Names whose modules import numpy: loaded on first use (PEP 562), so reading
#: and comparing schemas (every `tether versions`) does not pay for numpy.
_LAZY = {
    "infer_signature": ".inference",
    "RecordSchemaError": ".records",
    "validate_records": ".records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "KINDS",
    "TYPES",
    "Compatibility",
    "Field",
    "RecordSchemaError",
    "Schema",
    "Signature",
    "check_compatibility",
    "infer_signature",
    "schema_from_declared",
    "validate_records",
]

"""A model version's input/output schema (its "signature" in MLflow's words).

Not to be confused with a cryptographic signature (``tether._signing``): this
package describes what a model takes and returns. ``types`` holds the records,
``inference`` reads them off an input example, ``compatibility`` compares two
(the semantic-version bump follows from it) and ``records`` enforces one on
prediction requests. Pure logic, no I/O; pandas is imported only when a caller
hands it a DataFrame or asks for one.
"""

from .compatibility import Compatibility, check_compatibility, schema_from_declared
from .inference import infer_signature
from .records import RecordSchemaError, validate_records
from .types import KINDS, TYPES, Field, Schema, Signature

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

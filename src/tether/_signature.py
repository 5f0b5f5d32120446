"""Old import path of ``tether._schema`` (a model's input/output schema).

Kept while modules move over; new code imports ``tether._schema``.
"""

from ._schema import (
    KINDS,
    TYPES,
    Compatibility,
    Field,
    RecordSchemaError,
    Schema,
    Signature,
    check_compatibility,
    infer_signature,
    schema_from_declared,
    validate_records,
)

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

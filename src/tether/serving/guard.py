"""What a caller may send: finite numbers only, unless an endpoint opts in.

JSON as Python reads it carries ``NaN``, ``Infinity`` and ``1e999`` (infinity)
into a ``double`` field, and integers of any size. A model that cannot take
them fails with a server error, and server errors count toward an endpoint's
``error_rate`` rule: an anonymous caller could roll back a production alias.
So a non-finite number (or an integer too large for a float) is refused with
422 naming the record and the field before the model sees it, unless the
endpoint's ``allow_non_finite`` names that field (or is ``true``). A nullable
field may take NaN: it is the missing value such a field is declared to take.

A finite number too large for the field's own type is refused the same way: a
``float`` field (or a float32 tensor) turns ``1e39`` into infinity, which the
model then fails on just as it would on ``Infinity``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from .._errors import InvalidInput
from .._schema import RecordSchemaError, Signature

#: ``long`` fields become int64 columns.
_INT64 = (-(2**63), 2**63 - 1)
#: How deep the check follows nested lists (tensor fields) before refusing.
MAX_DEPTH = 64


class Unprocessable(InvalidInput):
    """Well-formed JSON whose values cannot be used (non-finite numbers, bad weights)."""

    http_status = 422


def finite_number(value: Any) -> bool:
    """A JSON number (not a boolean) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


#: Where the floating types narrower than a double round to infinity: a value of at
#: least this magnitude becomes infinity (one between the largest finite value and
#: this rounds down to it: 3.4028235e38, as numpy prints float32's maximum, is finite).
_FLOAT_MAX = {"float32": 2.0**128 - 2.0**103, "float16": 65520.0}


def float_limit(type_: str | None, dtype: str | None = None) -> float | None:
    """The largest magnitude a field of ``type_`` (a tensor: of ``dtype``) keeps finite;
    None for a double (Python's own floats are doubles)."""
    if type_ == "float":
        return _FLOAT_MAX["float32"]
    if type_ == "tensor" and dtype is not None:
        try:
            return _FLOAT_MAX.get(np.dtype(dtype).name)
        except TypeError:
            return None
    return None


def _problem(value: Any, nullable: bool, depth: int = 0,
             limit: float | None = None) -> str | None:
    """Why ``value`` (a number, or nested lists of them) is not acceptable, or None.
    ``limit``: the largest magnitude the field's type holds (see ``float_limit``)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None if nullable else "NaN"
        if math.isinf(value):
            return "infinite" if value > 0 else "-infinite"
        if limit is not None and abs(value) >= limit:
            return f"{value!r}, beyond the field's range (it would be infinity)"
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return "an integer too large for a float"
        if limit is not None and abs(number) >= limit:
            return f"{value!r}, beyond the field's range (it would be infinity)"
        return None
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} lists"
        for item in value:
            found = _problem(item, False, depth + 1, limit)
            if found is not None:
                return found
    return None


def refuse_non_finite(records: Any, signature: Signature | None,
                      allowed: bool | Collection[str]) -> None:
    """Raise RecordSchemaError (422) naming the first record and field with a bad number.

    With a signature only its input fields are checked (the rest are ignored by
    validation); without one every field of every record is.
    """
    if allowed is True or not isinstance(records, list):
        return
    allow = frozenset() if allowed is False else frozenset(allowed)
    fields: list[tuple[str, bool, str | None, float | None]] | None = None
    if signature is not None:
        fields = [(f.name, f.nullable, f.type, float_limit(f.type, f.dtype))
                  for f in signature.inputs.fields if f.name not in allow]
    hint = ("send finite numbers (null for a missing value where the field allows it); "
            "an endpoint whose model takes NaN or infinity can say so in the deployment "
            "file: allow_non_finite: true, or a list of fields")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            return  # validation names the record
        pairs = ((name, record.get(name), nullable, type_, limit)
                 for name, nullable, type_, limit in fields) \
            if fields is not None else ((str(k), v, False, None, None)
                                        for k, v in record.items() if str(k) not in allow)
        for name, value, nullable, type_, limit in pairs:
            found = _problem(value, nullable, limit=limit)
            if found is None and type_ == "long" and isinstance(value, int) and not isinstance(
                    value, bool) and not _INT64[0] <= value <= _INT64[1]:
                found = "an integer outside the 64-bit range"
            if found is not None:
                raise RecordSchemaError(
                    f"record {index}: field {name!r} is {found}; this endpoint takes "
                    "finite numbers only", field=name, index=index, hint=hint)

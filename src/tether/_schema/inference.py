"""Inferring a signature from an input example (numpy, pandas, records, columns)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import InvalidInput
from .types import _NUMERIC, TYPES, Field, Schema, Signature

# --- inference ---------------------------------------------------------------------------


def infer_signature(
    example: Any, output: Any = None, *, feature_names: list[str] | None = None
) -> Signature:
    """Infer a signature from an input example and, optionally, the model's output on it.

    An example that cannot be read raises `InvalidInput`. An output that cannot
    be read (a scalar, an object of no known shape) leaves ``outputs`` None, as
    for a model that cannot predict on its example.
    """
    inputs = _infer_schema(example, feature_names, prefix="f", single="f0", what="input example")
    if output is None:
        return Signature(inputs, None)
    try:
        outputs = _infer_schema(output, None, prefix="p", single="prediction", what="output")
    except InvalidInput:
        outputs = None
    return Signature(inputs, outputs)


def _infer_schema(
    value: Any, names: list[str] | None, *, prefix: str, single: str, what: str
) -> Schema:
    if _is_dataframe(value):
        fields = tuple(_column_field(str(c), value[c]) for c in value.columns)
        return _non_empty(Schema(fields, "columns"), what)
    if _is_series(value):
        name = str(value.name) if value.name is not None else single
        return Schema((_column_field(name, value),), "vector")
    if isinstance(value, Mapping):
        columns = {str(k): v if _is_column(v) else [v] for k, v in value.items()}
        return _non_empty(Schema(tuple(_column_field(k, v) for k, v in columns.items())), what)
    if isinstance(value, list | tuple) and value and all(isinstance(r, Mapping) for r in value):
        keys = list(dict.fromkeys(str(k) for r in value for k in r))
        return Schema(tuple(_column_field(k, [r.get(k) for r in value]) for k in keys))
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(r, list | tuple) for r in value)
    ):
        if len({len(r) for r in value}) != 1:
            raise InvalidInput(f"the {what} is a list of rows of different lengths")
        value = np.array(value, dtype=object)
    array: np.ndarray[Any, Any] | None = None
    if isinstance(value, list | tuple):
        array = np.asarray(value, dtype=object)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        array = np.asarray(value)
    if array is None or array.size == 0 or array.ndim == 0:
        raise InvalidInput(
            f"cannot infer a schema from the {what} ({type(value).__name__})",
            hint="give a non-empty numpy array, DataFrame, list of records or dict of columns",
        )
    if array.ndim == 1:
        return Schema((_column_field(names[0] if names else single, array),), "vector")
    if array.ndim > 2:
        name = "input" if prefix == "f" else single
        tensor = Field(name, "tensor", shape=(-1, *array.shape[1:]), dtype=str(array.dtype))
        return Schema((tensor,), "tensor")
    width = array.shape[1]
    if names is not None and len(names) != width:
        raise InvalidInput(f"{len(names)} feature names given for a {what} of {width} columns")
    labels = names or [f"{prefix}{j}" for j in range(width)]
    fields = tuple(_column_field(labels[j], array[:, j]) for j in range(width))
    return Schema(fields, "columns" if names else "array")


def _non_empty(schema: Schema, what: str) -> Schema:
    if not schema.fields:
        raise InvalidInput(f"the {what} has no columns")
    return schema


def _is_dataframe(value: Any) -> bool:
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "iloc")


def _is_series(value: Any) -> bool:
    return hasattr(value, "dtype") and hasattr(value, "isna") and hasattr(value, "iloc")


def _is_column(value: Any) -> bool:
    return isinstance(value, np.ndarray | list | tuple) or _is_series(value)


def _column_field(name: str, column: Any) -> Field:
    """A field from one column: a numpy array, a pandas Series, or a list of values."""
    dtype = getattr(column, "dtype", None)
    if dtype is not None and getattr(dtype, "name", "") == "category":
        categories = dtype.categories
        type_ = _dtype_type(categories.dtype, name) or _values_type(list(categories), name)[0]
        return Field(name, type_, bool(column.isna().any()))
    known = _dtype_type(dtype, name) if dtype is not None else None
    if known is None:
        found, nullable = _values_type(list(column), name)
        return Field(name, found, nullable)
    return Field(name, known, _has_missing(column))


def _dtype_type(dtype: Any, name: str) -> str | None:
    """The schema type of a numpy or pandas dtype; None for object (look at the values)."""
    kind, size = getattr(dtype, "kind", "O"), getattr(dtype, "itemsize", 8)
    if kind == "O":
        return None
    simple = {"b": "boolean", "M": "datetime", "U": "string", "S": "binary"}
    if kind in simple:
        return simple[kind]
    if kind in "iu":
        return "integer" if size <= (4 if kind == "i" else 2) else "long"
    if kind == "f":
        return "float" if size <= 4 else "double"
    raise InvalidInput(
        f"column {name!r} has dtype {dtype}, which has no schema type",
        hint="convert it to numbers, text or datetimes first",
    )


def _has_missing(column: Any) -> bool:
    if hasattr(column, "isna"):
        return bool(column.isna().any())
    kind = column.dtype.kind
    if kind == "f":
        return bool(np.isnan(column).any())
    return bool(np.isnat(column).any()) if kind == "M" else False


def _is_missing(value: Any) -> bool:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def _values_type(values: list[Any], name: str) -> tuple[str, bool]:
    """The one schema type of Python values, and whether any is missing."""
    found: set[str] = set()
    nullable = False
    for value in values:
        if _is_missing(value):
            nullable = True
        else:
            found.add(_scalar_type(value, name))
    if not found:
        raise InvalidInput(f"column {name!r} holds only missing values; its type is unknown")
    if len(found) == 1:
        return found.pop(), nullable
    if found <= set(_NUMERIC):
        if found <= {"integer", "long"}:
            return "long", nullable
        return ("float" if found == {"float"} else "double"), nullable
    raise InvalidInput(f"column {name!r} mixes {' and '.join(sorted(found))} values")


def _scalar_type(value: Any, name: str) -> str:
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, np.generic):
        found = _dtype_type(value.dtype, name)
        if found is not None:
            return found
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "binary"
    if isinstance(value, dt.date | np.datetime64):
        return "datetime"
    raise InvalidInput(
        f"column {name!r} holds {type(value).__name__} values, which have no schema type",
        hint="allowed types: " + ", ".join(TYPES),
    )


# --- compatibility -----------------------------------------------------------------------


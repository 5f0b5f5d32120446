"""Enforcing a model's input schema on records sent for prediction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import InvalidInput
from .compatibility import _shape_fits
from .inference import _is_missing
from .types import _INT32, _NUMERIC, Field, Schema, Signature

# --- enforcing a signature on records ----------------------------------------------------


class RecordSchemaError(InvalidInput):
    """A record sent for prediction does not fit the model's input schema."""

    code = "record_schema_mismatch"
    http_status = 400

    def __init__(
        self, message: str, *, field: str | None, index: int | None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.field = field
        self.index = index


def validate_records(
    signature: Signature, records: list[dict[str, Any]], *, strict: bool = False
) -> Any:
    """Check records against the inputs and shape them as the model takes them.

    Returns a pandas DataFrame (columns in signature order) for a ``columns``
    schema when pandas is importable; otherwise a numpy array: 1-D for a
    ``vector``, n-D for a ``tensor``, else 2-D (float when every input is a
    number). Raises `RecordSchemaError` on the first bad record; fields the
    signature does not name are ignored, or refused when ``strict``.
    """
    inputs = signature.inputs
    hint = f"the model takes: {inputs.describe()}"
    if not isinstance(records, list):
        raise RecordSchemaError(
            f"records must be a list of objects, not {type(records).__name__}",
            field=None,
            index=None,
            hint=hint,
        )
    columns: dict[str, list[Any]] = {f.name: [] for f in inputs.fields}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise RecordSchemaError(
                f"record {index} is {type(record).__name__}, not an object of named fields",
                field=None,
                index=index,
                hint=hint,
            )
        if strict:
            unknown = [str(k) for k in record if k not in columns]
            if unknown:
                raise RecordSchemaError(
                    f"record {index} has unknown fields: {', '.join(map(repr, unknown))}",
                    field=unknown[0],
                    index=index,
                    hint=hint,
                )
        for f in inputs.fields:
            columns[f.name].append(_checked(f, record, index, hint))
    return _shaped(inputs, columns)


def _checked(f: Field, record: Mapping[str, Any], index: int, hint: str) -> Any:
    expected = f.type_text
    value = record.get(f.name)
    if value is None or (_is_missing(value) and f.type not in ("double", "float")):
        if f.nullable:
            return None
        given = "missing" if f.name not in record else "null"
        raise RecordSchemaError(
            f"record {index}: field {f.name!r} expected {expected}, got {given}",
            field=f.name,
            index=index,
            hint=hint,
        )
    try:
        return _converted(f, value)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RecordSchemaError(
            f"record {index}: field {f.name!r} expected {expected}, "
            f"got {type(value).__name__} {shown}",
            field=f.name,
            index=index,
            hint=hint,
        ) from None


def _converted(f: Field, value: Any) -> Any:
    """The value as the field's type; TypeError or ValueError when it is not one."""
    if isinstance(value, bool | np.bool_):
        if f.type != "boolean":
            raise TypeError
        return bool(value)
    if f.type in ("double", "float") and isinstance(value, int | float | np.number):
        return float(value)
    if f.type in ("long", "integer") and isinstance(value, int | float | np.number):
        if not float(value).is_integer():
            raise ValueError
        number = int(value)
        if f.type == "integer" and not _INT32[0] <= number <= _INT32[1]:
            raise ValueError
        return number
    if f.type == "string" and isinstance(value, str):
        return value
    if f.type == "binary" and isinstance(value, bytes | bytearray | str):
        return value
    if f.type == "datetime" and isinstance(value, dt.date | np.datetime64 | str):
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if f.type == "tensor" and isinstance(value, list | tuple | np.ndarray):
        array = np.asarray(value, dtype=f.dtype)
        if array.dtype.kind in "fc" and not np.isfinite(array).all() and (
                np.asarray(value).dtype.kind in "OUS"):
            # None, "nan" or "1e400" in a numeric tensor: numpy's cast made them NaN or
            # infinity without a word (and the model's refusal of those counted against
            # the version, rolling production back). Finite text and objects convert as
            # before; a NaN sent as a number is the guard's to judge.
            raise TypeError
        if f.shape is not None and not _shape_fits((-1, *array.shape), f.shape):
            raise ValueError
        return array
    raise TypeError


def _shaped(inputs: Schema, columns: dict[str, list[Any]]) -> Any:
    fields = inputs.fields
    if inputs.kind == "tensor":
        return np.asarray(columns[fields[0].name], dtype=fields[0].dtype)
    numeric = all(f.type in (*_NUMERIC, "boolean") for f in fields)
    dtype: Any = float if numeric else object
    if inputs.kind == "vector":
        values = columns[fields[0].name]
        return np.array([np.nan if v is None else v for v in values] if numeric else values, dtype)
    if inputs.kind == "columns":
        pd = _pandas()
        if pd is not None:
            return pd.DataFrame({f.name: _series(pd, f, columns[f.name]) for f in fields})
    rows = list(zip(*(columns[f.name] for f in fields), strict=True))
    if numeric:
        rows = [tuple(np.nan if v is None else v for v in row) for row in rows]
    return np.array(rows, dtype=dtype).reshape(len(rows), len(fields))


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        return None
    return pandas


def _series(pd: Any, f: Field, values: list[Any]) -> Any:
    has_none = any(v is None for v in values)
    if f.type == "datetime":
        try:
            return pd.Series(pd.to_datetime(values))
        except (TypeError, ValueError):  # e.g. naive and zone-aware times mixed
            return pd.Series(values, dtype=object)
    numpy_dtype = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}
    if f.type in numpy_dtype:
        return pd.Series(values, dtype="float64" if has_none else numpy_dtype[f.type])
    if f.type == "boolean" and not has_none:
        return pd.Series(values, dtype=bool)
    return pd.Series(values, dtype=object)


"""Signatures: the input and output schema of a model version.

A `Signature` is inferred from an input example (numpy, pandas, records,
columns), stored as JSON (`Signature.to_dict`), compared between versions
(`check_compatibility`, which drives the semantic-version bump) and enforced
by the serving layer (`validate_records`). Pure logic, no I/O; pandas is
imported only when a caller hands it a DataFrame or asks for one.

A schema has a ``kind`` that says how the model takes its input: ``columns``
(a DataFrame, by name), ``array`` (a 2-D array, by position), ``vector`` (a
1-D array) or ``tensor`` (one n-D array).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import InvalidInput, SchemaMismatch

TYPES = ("double", "float", "long", "integer", "boolean", "string", "binary", "datetime", "tensor")
KINDS = ("columns", "array", "vector", "tensor")
_NUMERIC = ("double", "float", "long", "integer")
#: Input type changes that callers built for the old type survive.
_WIDENING = {("integer", "long"), ("integer", "double"), ("long", "double"), ("float", "double")}
_INT32 = (-(2**31), 2**31 - 1)
#: How many fields `Schema.describe` names before it says "+N more".
_DESCRIBED = 8


@dataclass(frozen=True)
class Field:
    """One named column (or the one tensor) of a schema."""

    name: str
    type: str
    nullable: bool = False
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput(f"a field name must be a non-empty string, not {self.name!r}")
        if self.type not in TYPES:
            raise InvalidInput(
                f"field {self.name!r} has unknown type {self.type!r}",
                hint="allowed types: " + ", ".join(TYPES),
            )
        if (self.type == "tensor") != (self.dtype is not None):
            raise InvalidInput(
                f"field {self.name!r}: a dtype goes with type tensor, and only there"
            )
        if self.dtype is not None:
            try:
                np.dtype(self.dtype)
            except TypeError:
                raise InvalidInput(
                    f"field {self.name!r} has unknown dtype {self.dtype!r}",
                    hint='use a numpy dtype name such as "float32"',
                ) from None

    @property
    def type_text(self) -> str:
        """The type in words: ``long``, or ``float32[-1, 28, 28]`` for a tensor."""
        return f"{self.dtype}{list(self.shape or ())}" if self.type == "tensor" else self.type

    def describe(self) -> str:
        return f"{self.name} {self.type_text}" + ("?" if self.nullable else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "nullable": self.nullable}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "field") -> Field:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} must be an object, not {type(data).__name__}")
        name, type_ = _key(data, "name", where), _key(data, "type", where)
        if type_ not in TYPES:
            raise InvalidInput(
                f"{where}.type {type_!r} is not a known type", hint="allowed: " + ", ".join(TYPES)
            )
        shape = data.get("shape")
        if shape is not None and not (
            isinstance(shape, Sequence) and all(isinstance(n, int) for n in shape)
        ):
            raise InvalidInput(f"{where}.shape must be a list of integers, not {shape!r}")
        nullable = data.get("nullable", False)
        if not isinstance(nullable, bool):
            raise InvalidInput(f"{where}.nullable must be true or false, not {nullable!r}")
        return cls(
            str(name),
            type_,
            nullable,
            tuple(shape) if shape is not None else None,
            data.get("dtype"),
        )


@dataclass(frozen=True)
class Schema:
    """An ordered tuple of fields and the ``kind`` of input they make."""

    fields: tuple[Field, ...]
    kind: str = "columns"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInput(
                f"schema kind {self.kind!r} is unknown", hint="allowed: " + ", ".join(KINDS)
            )
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise InvalidInput(f"schema names a field twice: {', '.join(dupes)}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    def describe(self) -> str:
        shown = ", ".join(f.describe() for f in self.fields[:_DESCRIBED])
        more = len(self.fields) - _DESCRIBED
        return shown + (f", +{more} more" if more > 0 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "schema") -> Schema:
        if isinstance(data, list):
            data = {"fields": data}
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} must be an object, not {type(data).__name__}")
        fields = _key(data, "fields", where)
        if not isinstance(fields, list):
            raise InvalidInput(f"{where}.fields must be a list, not {type(fields).__name__}")
        kind = data.get("kind", "columns")
        return cls(
            tuple(Field.from_dict(f, f"{where}.fields[{i}]") for i, f in enumerate(fields)), kind
        )


@dataclass(frozen=True)
class Signature:
    """What a model takes and what it returns (``outputs`` None when unknown)."""

    inputs: Schema
    outputs: Schema | None = None

    def describe(self) -> str:
        outputs = self.outputs.describe() if self.outputs is not None else "not declared"
        return f"inputs: {self.inputs.describe()}; outputs: {outputs}"

    def to_dict(self) -> dict[str, Any]:
        outputs = self.outputs.to_dict() if self.outputs is not None else None
        return {"inputs": self.inputs.to_dict(), "outputs": outputs}

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a signature must be an object, not {type(data).__name__}")
        inputs = Schema.from_dict(_key(data, "inputs", "signature"), "signature.inputs")
        outputs = data.get("outputs")
        return cls(
            inputs, None if outputs is None else Schema.from_dict(outputs, "signature.outputs")
        )


def _key(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise InvalidInput(f"{where} is missing key {key!r}")
    return data[key]


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


@dataclass(frozen=True)
class Compatibility:
    """Whether callers built for an old signature still work with a new one, and why."""

    compatible: bool
    reasons: list[str] = field(default_factory=list)


def check_compatibility(old: Signature, new: Signature) -> Compatibility:
    """Compare two signatures; breaking reasons come first, then informational ones."""
    breaking: list[str] = []
    info: list[str] = []
    before, after = old.inputs.by_name(), new.inputs.by_name()
    for name, f in after.items():
        if name not in before:
            (info if f.nullable else breaking).append(
                f"input {name!r} added" + (" (optional)" if f.nullable else " and required")
            )
    for name, f in before.items():
        if name not in after:
            # DESIGN.md: a removed input is a major change. Frameworks such as
            # scikit-learn reject columns they were not fitted on, so callers
            # that still send it break.
            breaking.append(f"input {name!r} removed")
            continue
        g = after[name]
        if f.type != g.type:
            widened = (f.type, g.type) in _WIDENING
            (info if widened else breaking).append(
                f"input {name!r} {'widened' if widened else 'retyped'}: {f.type} -> {g.type}"
            )
        elif f.type == "tensor" and (f.dtype != g.dtype or not _shape_fits(f.shape, g.shape)):
            breaking.append(f"input {name!r} retyped: {f.type_text} -> {g.type_text}")
        if f.nullable and not g.nullable:
            breaking.append(f"input {name!r} is now required (it was optional)")
        elif g.nullable and not f.nullable:
            info.append(f"input {name!r} is now optional")
    if old.inputs.kind != new.inputs.kind:
        info.append(f"inputs taken as {new.inputs.kind} (was {old.inputs.kind})")
    _compare_outputs(old.outputs, new.outputs, breaking, info)
    return Compatibility(not breaking, breaking + info)


def _compare_outputs(
    old: Schema | None, new: Schema | None, breaking: list[str], info: list[str]
) -> None:
    if old is None or new is None:
        if old is not None:
            breaking.append("outputs no longer declared")
        elif new is not None:
            info.append("outputs now declared")
        return
    before, after = old.by_name(), new.by_name()
    for name, f in before.items():
        g = after.get(name)
        if g is None:
            breaking.append(f"output {name!r} removed")
        elif (f.type, f.dtype, f.shape) != (g.type, g.dtype, g.shape):
            breaking.append(f"output {name!r} retyped: {f.type_text} -> {g.type_text}")
        elif g.nullable and not f.nullable:
            breaking.append(f"output {name!r} may now be null")
    info.extend(f"output {name!r} added" for name in after if name not in before)


def _shape_fits(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> bool:
    """Whether every array of shape ``old`` also has shape ``new`` (-1 matches any size)."""
    if old is None or new is None:
        return new is None
    return len(old) == len(new) and all(b in (-1, a) for a, b in zip(old, new, strict=True))


# --- declared schemas --------------------------------------------------------------------


def schema_from_declared(data: dict[str, Any] | list[Any]) -> Schema:
    """A schema an application declares it sends.

    Either the `Schema.to_dict` form (or its list of fields), or a plain
    mapping of field name to type name, ``{"age": "long", "city": "string"}``.
    """
    if isinstance(data, list) or (
        isinstance(data, Mapping) and isinstance(data.get("fields"), list)
    ):
        return Schema.from_dict(data, "declared schema")
    if not isinstance(data, Mapping) or not data:
        raise InvalidInput(
            "a declared schema must be a non-empty mapping of field name to type",
            hint='e.g. {"age": "long", "city": "string"}',
        )
    fields = []
    for name, type_ in data.items():
        if type_ not in TYPES or type_ == "tensor":
            raise InvalidInput(
                f"field {name!r} has unknown type {type_!r}",
                hint="allowed types: " + ", ".join(t for t in TYPES if t != "tensor"),
            )
        fields.append(Field(str(name), type_))
    return Schema(tuple(fields))


# --- enforcing a signature on records ----------------------------------------------------


class RecordSchemaError(SchemaMismatch):
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

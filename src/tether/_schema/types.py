"""The input and output schema of a model version: fields, schemas, signatures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidInput

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
            import numpy as np  # here: reading a version's schema never needs numpy

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



"""Whether callers built for one signature still work with another (drives semver)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import InvalidInput
from .types import _WIDENING, TYPES, Field, Schema, Signature


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



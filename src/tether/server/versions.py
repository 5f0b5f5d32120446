"""Committing a version a remote client prepared: validate, check bytes, number."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

from .._errors import IntegrityError, InvalidInput
from .._records import ModelVersion
from .._registry.log_version import commit_version
from .._registry.registry import Registry
from .._signature import Signature
from .._store.base import FileEntry
from .bodies import describe

_FIELDS = {
    "manifest": list,
    "flavor": dict,
    "signature": (dict, type(None)),
    "input_example": object,
    "params": dict,
    "metrics": dict,
    "data": dict,
    "lineage": dict,
    "environment": dict,
    "tags": dict,
    "notes": str,
}
_IGNORED = {"author", "digest", "files_digest"}  # recomputed or taken from the token


def check_artifact_path(path: Any) -> str:
    """A manifest path must stay inside the version's folder."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("every file needs a non-empty path")
    pure = PurePosixPath(path)
    if (
        pure.is_absolute()
        or ".." in pure.parts
        or "\\" in path
        or path.startswith("~")
        or any(part in ("", ".") for part in path.split("/"))
    ):
        error = InvalidInput(
            f"artifact path {path!r} escapes the version folder",
            hint="paths are relative POSIX paths without '..'",
        )
        error.code = "invalid_path"
        raise error
    return path


def validate_values(values: Any) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InvalidInput("values must be a JSON object")
    unknown = set(values) - set(_FIELDS) - _IGNORED
    if unknown:
        error = InvalidInput(f"unknown field(s) in values: {', '.join(sorted(unknown))}")
        error.code = "unknown_field"
        raise error
    checked: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        if key not in values:
            raise InvalidInput(f"values.{key} is missing")
        if kind is not object and not isinstance(values[key], kind):  # type: ignore[arg-type]
            raise InvalidInput(f"values.{key} has the wrong type")
        checked[key] = values[key]
    files = []
    for raw in checked["manifest"]:
        if not isinstance(raw, dict):
            raise InvalidInput("each manifest entry must be an object")
        check_artifact_path(raw.get("path"))
        try:
            files.append(FileEntry.from_dict(raw))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"manifest entry {raw.get('path')!r} is malformed: {error}"
            ) from error
    if len({f.path for f in files}) != len(files):
        raise InvalidInput("the manifest lists a path twice")
    checked["manifest"] = [f.to_dict() for f in files]
    for name, info in checked["data"].items():
        if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
            raise InvalidInput(f"values.data.{name} needs a digest")
    if not isinstance(checked["flavor"].get("name"), str) or not checked["flavor"]["name"]:
        raise InvalidInput("values.flavor needs a name (a string)")
    for key, value in checked["metrics"].items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(
                f"values.metrics.{key} is {value!r}, not a finite number",
                hint="metrics are numbers; put text in notes or tags",
            )
    for key, value in checked["tags"].items():
        if not isinstance(value, str):
            raise InvalidInput(f"values.tags.{key} must be a string, not {describe(value)}")
    if checked["signature"] is not None:
        Signature.from_dict(checked["signature"])  # InvalidInput naming the bad field
    return checked


def commit_remote_version(
    registry: Registry, name: str, values: Any, bump: str | None, principal: str
) -> ModelVersion:
    checked = validate_values(values)
    digests = {c[0] for f in checked["manifest"] for c in f["chunks"]}
    missing = registry.store.missing(digests)
    if missing:
        raise IntegrityError(
            f"{len(missing)} chunk(s) of this version are not in the store",
            hint="upload them first (the client does this); nothing was registered",
        )
    checked["author"] = principal
    return commit_version(registry, name, checked, bump)

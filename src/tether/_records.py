"""The records the registry hands out: plain, immutable, JSON-friendly."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ._environment.record import UNREADABLE, readable_environment
from ._errors import InvalidInput, InvalidPath, NotFound, UnknownField
from ._humanize import short_repr
from ._identity import check_one_file_each, names_reserved, path_escapes
from ._lineage_record import readable_lineage
from ._store.base import FileEntry


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    owners: list[str]
    tags: dict[str, str]
    created_at: str
    updated_at: str
    version_count: int = 0
    latest: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def readable_mapping(value: Any) -> dict[str, Any]:
    """A stored mapping outside a version's digest (metrics, tags) as Tether reads it:
    itself, nothing for none, and for anything else one entry ``UNREADABLE`` holding what
    was stored, cut short. Not an empty mapping: a tampered row must not pass for one
    that never recorded anything (a review: a policy's not_worse_than_current was then
    skipped), and it must not fail pages either."""
    if value is None or isinstance(value, dict):
        return value or {}
    return {UNREADABLE: short_repr(value, 200)}


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version, with the aliases that point at it right now."""

    name: str
    seq: int
    semver: str
    digest: str
    files: tuple[FileEntry, ...]
    flavor: dict[str, Any]
    signature: dict[str, Any] | None
    input_example: Any
    params: dict[str, Any]
    metrics: dict[str, Any]
    data: dict[str, dict[str, Any]]
    lineage: dict[str, Any]
    environment: dict[str, Any]
    tags: dict[str, str]
    notes: str
    author: str
    created_at: str
    status: str
    files_digest: str
    aliases: tuple[str, ...] = ()
    id: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.semver}"

    @property
    def short_digest(self) -> str:
        return f"sha:{self.digest[:12]}"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        """The entry of ``path`` in this version (NotFound listing its files)."""
        return file_in(self.files, path, ref=self.ref)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        """The inverse of ``to_dict`` (digests given with or without ``sha:``).

        Nothing here is trusted: whoever uses the version for bytes checks it
        with ``tether._identity.require_intact`` first.
        """
        return cls(
            name=data["name"],
            seq=int(data["seq"]),
            semver=data["semver"],
            digest=str(data["digest"]).removeprefix("sha:"),
            files=tuple(FileEntry.from_dict(f) for f in data.get("files", [])),
            flavor=data["flavor"],
            signature=data.get("signature"),
            input_example=data.get("input_example"),
            params=data.get("params") or {},
            # Not part of the digest: of the wrong shape, nothing (`show` crashed on it).
            metrics=readable_mapping(data.get("metrics")),
            data=data.get("data") or {},
            lineage=readable_lineage(data.get("lineage") or {}),
            # What Tether compares, prints and exports of it (a server's word: see there).
            environment=readable_environment(data.get("environment") or {}),
            tags=readable_mapping(data.get("tags")),
            notes=str(data.get("notes") or ""),
            author=data["author"],
            created_at=data["created_at"],
            status=data["status"],
            files_digest=data["files_digest"],
            aliases=tuple(data.get("aliases") or ()),
            id=int(data.get("id") or 0),
        )

    def to_dict(self, *, with_environment: bool = True, with_files: bool = True,
                brief_lists: bool = False) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads; ``with_files=False``: without ``files``, for
        an answer that sends them packed (``_packed_manifest.PackedBody``);
        ``brief_lists``: large chunk lists as their lengths (``FileEntry.to_dict``)."""
        data = {
            "name": self.name,
            "ref": self.ref,
            "seq": self.seq,
            "semver": self.semver,
            "digest": f"sha:{self.digest}",
            "files_digest": self.files_digest,
            **({"files": [f.to_dict(brief=brief_lists) for f in self.files]}
               if with_files else {}),
            "size": self.size,
            "flavor": self.flavor,
            "signature": self.signature,
            "input_example": self.input_example,
            "params": self.params,
            "metrics": self.metrics,
            "data": self.data,
            "lineage": self.lineage,
            "tags": self.tags,
            "notes": self.notes,
            "author": self.author,
            "created_at": self.created_at,
            "status": self.status,
            "aliases": list(self.aliases),
        }
        if with_environment:
            data["environment"] = self.environment
        return data


#: A version's recorded fields and the JSON type each must have (``object``: any).
_VALUE_TYPES: dict[str, type | tuple[type, ...]] = {
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
#: Accepted and dropped: recomputed at commit (digests) or set by the registry (author).
_DERIVED = frozenset({"digest", "files_digest"})


@dataclass(frozen=True)
class VersionValues:
    """What a version records, before the registry numbers it: one checked value.

    ``log_model``, a remote client's commit and the MLflow API all build one;
    ``Registry.commit`` takes its ``to_dict`` and converts back through
    ``from_dict``, so every way in is validated the same way. The digests are
    not part of it: the commit recomputes them from these fields.
    """

    manifest: tuple[FileEntry, ...]
    flavor: dict[str, Any]
    signature: dict[str, Any] | None
    input_example: Any
    params: dict[str, Any]
    metrics: dict[str, float]
    data: dict[str, dict[str, Any]]
    lineage: dict[str, Any]
    environment: dict[str, Any]
    tags: dict[str, str]
    notes: str
    #: Who logged it; empty when the caller does not say (the registry's actor then).
    author: str = ""

    @classmethod
    def from_dict(cls, values: Any) -> VersionValues:
        """Checked values from JSON; ``InvalidInput`` (or a subclass) naming the bad field."""
        if not isinstance(values, dict):
            raise InvalidInput(f"values must be a JSON object, not {_kind(values)}")
        unknown = set(values) - set(_VALUE_TYPES) - _DERIVED - {"author"}
        if unknown:
            raise UnknownField(
                f"unknown field(s) in values: {', '.join(sorted(unknown))}",
                hint=f"fields: {', '.join(sorted(_VALUE_TYPES))}, author",
            )
        for key, kind in _VALUE_TYPES.items():
            if key not in values:
                raise InvalidInput(f"values.{key} is missing")
            if kind is not object and not isinstance(values[key], kind):
                raise InvalidInput(
                    f"values.{key} has the wrong type ({_kind(values[key])})"
                )
        author = values.get("author") or ""
        if not isinstance(author, str):
            raise InvalidInput(f"values.author must be a string, not {_kind(author)}")
        checked = cls(
            manifest=_manifest(values["manifest"]),
            flavor=values["flavor"],
            signature=values["signature"],
            input_example=values["input_example"],
            params=values["params"],
            metrics=values["metrics"],
            data=values["data"],
            lineage=values["lineage"],
            environment=values["environment"],
            tags=values["tags"],
            notes=values["notes"],
            author=author,
        )
        checked._check_fields()
        return checked

    def _check_fields(self) -> None:
        for name, info in self.data.items():
            if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
                raise InvalidInput(f"values.data.{name} needs a digest")
        if not isinstance(self.flavor.get("name"), str) or not self.flavor["name"]:
            raise InvalidInput("values.flavor needs a name (a string)")
        for key, value in self.metrics.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidInput(
                    f"values.metrics.{key} is {value!r}, not a finite number",
                    hint="metrics are numbers; put text in notes or tags",
                )
        for key, tag in self.tags.items():
            if not isinstance(tag, str):
                raise InvalidInput(f"values.tags.{key} must be a string, not {_kind(tag)}")
        if self.signature is not None:
            from ._schema.types import Signature  # numpy: only when there is a schema

            Signature.from_dict(self.signature)  # InvalidInput naming the bad field

    def checked(self) -> VersionValues:
        """These values checked as ``from_dict`` checks their JSON form, without that
        form's manifest: a file's chunk list would be encoded as text and decoded
        again (a 70 GB file's list is 45 MB packed, 60 MB as text)."""
        rest = VersionValues.from_dict({**self.to_dict(manifest=False), "manifest": []})
        for entry in self.manifest:
            if not isinstance(entry, FileEntry):
                raise InvalidInput(f"each manifest entry must be a file, not {_kind(entry)}")
            check_artifact_path(entry.path)
            check_file_digest(entry)
        check_one_file_each(f.path for f in self.manifest)  # and none twice
        return replace(rest, manifest=tuple(self.manifest))

    def to_dict(self, *, manifest: bool = True) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads, as ``Registry.commit`` and the REST API take it
        (without ``manifest`` when the caller has the entries already)."""
        return {
            **({"manifest": [f.to_dict() for f in self.manifest]} if manifest else {}),
            "flavor": self.flavor,
            "signature": self.signature,
            "input_example": self.input_example,
            "params": self.params,
            "metrics": self.metrics,
            "data": self.data,
            "lineage": self.lineage,
            "environment": self.environment,
            "tags": self.tags,
            "notes": self.notes,
            "author": self.author,
        }


_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_file_digest(entry: FileEntry) -> None:
    """A file's digest is a BLAKE3 in hex (InvalidInput naming the file if not): any
    other value was taken and made every load of the version fail."""
    if not isinstance(entry.digest, str) or not _DIGEST.fullmatch(entry.digest):
        raise InvalidInput(f"manifest entry {entry.path!r} has a digest that is not a "
                           "BLAKE3 in hex (64 lowercase hex digits)")


def check_artifact_path(path: Any) -> str:
    """A manifest path must stay inside the version's folder (``InvalidPath`` if not)."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("every file needs a non-empty path")
    if path.startswith("~") or path_escapes(path):  # no home-folder look-alikes either
        raise InvalidPath(
            f"manifest path {path!r} escapes the version folder",
            hint="paths are relative POSIX paths without '..'",
        )
    if names_reserved(path):
        raise InvalidPath(
            f"manifest path {path!r} is inside a .git or .tether folder, which no version "
            "may hold", hint="leave version-control and registry folders out of what you log")
    return path


def _manifest(raw: list[Any]) -> tuple[FileEntry, ...]:
    files = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise InvalidInput(f"each manifest entry must be an object, not {_kind(entry)}")
        check_artifact_path(entry.get("path"))
        try:
            files.append(FileEntry.from_dict(entry))
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(
                f"manifest entry {entry.get('path')!r} is malformed: {error}"
            ) from error
        check_file_digest(files[-1])
    check_one_file_each(f.path for f in files)  # and none twice
    return tuple(files)


def _kind(value: Any) -> str:
    """A JSON value's type as a client would name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    version: str | None
    previous: str | None
    action: str
    actor: str
    reason: str
    moved_at: str
    undone: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    id: int
    ts: str
    actor: str
    action: str
    model: str | None
    subject: str | None
    before: Any
    after: Any
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_in(files: Sequence[FileEntry], path: str, *, ref: str) -> FileEntry:
    """The entry of ``path`` among a version's ``files`` (NotFound listing them)."""
    wanted = path.strip("/")
    for entry in files:
        if entry.path == wanted:
            return entry
    names = [f.path for f in files]
    raise NotFound(
        f"{ref} has no file {path!r}",
        hint=f"files: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}",
    )

"""The records the registry hands out: plain, immutable, JSON-friendly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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
            metrics=data.get("metrics") or {},
            data=data.get("data") or {},
            lineage=data.get("lineage") or {},
            environment=data.get("environment") or {},
            tags=data.get("tags") or {},
            notes=data.get("notes") or "",
            author=data["author"],
            created_at=data["created_at"],
            status=data["status"],
            files_digest=data["files_digest"],
            aliases=tuple(data.get("aliases") or ()),
            id=int(data.get("id") or 0),
        )

    def to_dict(self, *, with_environment: bool = True) -> dict[str, Any]:
        data = {
            "name": self.name,
            "ref": self.ref,
            "seq": self.seq,
            "semver": self.semver,
            "digest": f"sha:{self.digest}",
            "files_digest": self.files_digest,
            "files": [f.to_dict() for f in self.files],
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

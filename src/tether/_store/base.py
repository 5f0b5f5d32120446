"""The artifact store contract.

The registry only ever sees this: it hands the store a folder and gets back a
manifest of files, each a list of content-addressed chunks; it hands a manifest
back and gets verified files in a folder. How chunks are cut, compressed,
packed and where they live (a local folder, S3) is the store's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .chunklist import NO_CHUNKS, ChunkList, ChunkRef

__all__ = ["ChunkList", "ChunkRef", "FileEntry"]


#: Files this large are cut following their previous version's chunks (see
#: following.py); below it, cutting from scratch costs less than asking for them.
FOLLOW_FROM = 16 * 1024 * 1024


#: A file of more chunks than this records them packed in the REST API (``chunks`` is
#: then one base64 string of 40-byte records, not a JSON list of [digest, size]
#: pairs: parsing a million pairs took 250 MB and a second). A string, under the
#: same key, so a reader that expects pairs refuses it rather than reading none.
LISTED_CHUNKS = 4096


@dataclass(frozen=True)
class FileEntry:
    """A file of a version: relative POSIX path, size, BLAKE3 of its bytes, chunks.

    ``chunks`` is kept as a compact ``ChunkList``; any sequence of ``ChunkRef``
    (or of (digest, size) pairs) given instead is converted (ValueError if one
    is not a chunk).
    """

    path: str
    size: int
    digest: str
    chunks: ChunkList = NO_CHUNKS

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, ChunkList):
            object.__setattr__(self, "chunks", ChunkList.of(self.chunks))

    def to_dict(self, *, brief: bool = False) -> dict[str, Any]:
        """The JSON form ``from_dict`` reads; ``brief``: a list of more than
        ``LISTED_CHUNKS`` chunks as its length alone (``"chunk_count"``), for a list of
        versions (the whole list is one version's, asked for by itself)."""
        head: dict[str, Any] = {"path": self.path, "size": self.size, "digest": self.digest}
        chunks = self.chunks
        if len(chunks) > LISTED_CHUNKS and brief:
            # "chunks": null, so that an older reader refuses it rather than read none.
            return {**head, "chunks": None, "chunk_count": len(chunks)}
        if len(chunks) > LISTED_CHUNKS:
            return {**head, "chunks": chunks.to_text()}
        return {**head, "chunks": [[c.digest, c.size] for c in chunks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        """The entry ``to_dict`` wrote (either form of chunks); KeyError, TypeError or
        ValueError when ``data`` is not one."""
        listed = data.get("chunks", ())
        chunks = (ChunkList.from_text(listed) if isinstance(listed, str)
                  else ChunkList.of(listed))
        return cls(path=data["path"], size=int(data["size"]), digest=data["digest"],
                   chunks=chunks)


@dataclass
class IngestReport:
    """What an ingest did: logical bytes seen, new bytes stored, chunks reused."""

    files: list[FileEntry]
    logical_bytes: int = 0
    new_chunks: int = 0
    reused_chunks: int = 0
    stored_bytes: int = 0
    #: The pin protecting these chunks until the version is committed (then released).
    pin: str | None = None


@dataclass
class StoreStats:
    logical_bytes: int
    stored_bytes: int
    chunks: int
    packs: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


#: What gc removes, by kind (the keys of ``GcReport.removed``).
GC_KINDS = (
    "unreferenced_chunks",  # chunks no kept version (nor a young pin) references
    "packs_without_index",  # packs a killed writer uploaded but never indexed
    "partial_uploads",      # the store's tmp/: packs being written when a writer died
    "stale_locks",          # ingest/gc leases whose owner died or whose lease expired
    "stale_pins",           # ingest pins older than the grace period
    "scratch",              # this client's cache tmp/ left by dead processes
)


@dataclass
class GcReport:
    """What gc removed (or, for a dry run, would remove): the same numbers either way.

    ``removed`` maps each of ``GC_KINDS`` to ``{"count": n, "bytes": b}``;
    ``removed_bytes`` is their sum, ``removed_chunks`` the unreferenced chunks.
    """

    removed_chunks: int
    removed_bytes: int
    repacked_packs: int
    kept_chunks: int
    dry_run: bool
    removed: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class PackCheck:
    """One pack checked against its index: what is wrong (nothing, for a good pack)."""

    pack: str
    problems: list[str]
    chunks: int = 0
    bytes_read: int = 0
    reads: int = 0
    quarantined: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"pack": self.pack, "problems": self.problems, "chunks": self.chunks,
                "quarantined": self.quarantined}


@dataclass
class VerifyReport:
    """What ``verify_packs`` read and found."""

    packs: int
    chunks: int
    bytes_read: int
    reads: int
    bad: list[PackCheck]
    dry_run: bool
    #: Damaged merged index files: what is wrong (each rewritten unless a dry run).
    bad_indexes: list[str] = field(default_factory=list)
    indexes_rewritten: bool = False
    #: Files under index/ no reader can use and verification cannot fix (a merged index
    #: cut short, a named pipe): left where they are, each with what to do.
    unusable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"packs": self.packs, "chunks": self.chunks, "bytes_read": self.bytes_read,
                "reads": self.reads, "dry_run": self.dry_run,
                "bad": [b.to_dict() for b in self.bad],
                "bad_indexes": list(self.bad_indexes),
                "indexes_rewritten": self.indexes_rewritten,
                "unusable": list(self.unusable)}


class ArtifactStore(Protocol):
    """What the registry needs from an artifact store."""

    url: str
    #: ``tidy_index`` merges on a thread of its own rather than before it returns.
    tidy_in_background: bool

    def ingest(
        self,
        root: Path,
        paths: Sequence[str],
        *,
        progress: bool = False,
        pin_also: Iterable[FileEntry] = (),
        previous: Mapping[str, Sequence[ChunkRef]] | None = None,
    ) -> IngestReport:
        """Store the files ``paths`` (relative to ``root``) and return their entries.

        ``previous`` (path -> the chunks of its previous version) may make cutting
        faster; it never changes the chunks found.

        Must be durable when it returns: a version may point at these chunks.
        """
        ...

    def tidy_index(self) -> None:
        """Keep lookups cheap after uploads made by others (merge the index journal)."""
        ...

    def release_pin(self, key: str | None) -> None:
        """Drop the pin an ingest left (``IngestReport.pin``) once its version is committed."""
        ...

    def materialize(
        self,
        files: Sequence[FileEntry],
        dest: Path,
        *,
        label: str,
        progress: bool = False,
        cache_chunks: bool = True,
    ) -> None:
        """Write ``files`` under ``dest``, verifying every byte (``cache_chunks=False``:
        keep no second copy in a remote store's chunk cache, ``dest`` is the copy).

        Raises ``IntegrityError`` naming the file and ``label`` (the version) on
        any mismatch, and ``NotFound`` when a chunk is missing.
        """
        ...

    def verify(self, files: Sequence[FileEntry], *, label: str,
               source: str = "store") -> list[str]:
        """Return one line per problem found in the stored bytes of ``files``.

        ``source="store"`` checks the store's own copy, never a local cache.
        """
        ...

    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests among ``digests`` that the store does not hold."""
        ...

    def missing_of(self, lists: Iterable[ChunkList]) -> set[str]:
        """The digests of the chunks of ``lists`` that the store does not hold."""
        ...

    def stats(self, live: Iterable[FileEntry] = ()) -> StoreStats:
        ...

    def gc(self, live: Iterable[FileEntry], *, grace_seconds: float, dry_run: bool,
           commit: Callable[[], None] | None = None, progress: bool = False) -> GcReport:
        """Remove chunks no entry of ``live`` references and older than the grace period.

        ``progress``: a bar of the bytes repacked, on a terminal.

        ``commit`` runs after every write gc needs (repacks) succeeded and before
        anything is deleted; if a write fails (a full disk) gc undoes its writes and
        raises without calling it, so the store and the database stay as they were.
        """
        ...

    def scratch_args(self, kind: str) -> dict[str, Any]:
        """``tempfile`` arguments (prefix, dir) for a scratch file or folder of this client."""
        ...

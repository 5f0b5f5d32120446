"""Content-addressed artifact storage (see ``base.py`` for the contract)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import ParseResult, urlparse

from .._errors import InvalidInput
from .base import (
    ArtifactStore,
    ChunkRef,
    FileEntry,
    GcReport,
    IngestReport,
    PackCheck,
    StoreStats,
    VerifyReport,
)

if TYPE_CHECKING:
    from .chunkstore import ChunkStore


def open_store(url: str, *, cache_dir: Path | None = None, **options: int) -> ChunkStore:
    """The store at ``url``: ``file:///abs/path`` or ``s3://bucket/prefix``."""
    # Imported here: the codecs and the chunker load when a store is opened, not
    # when a record type of this package is (reading versions opens no store).
    from .blobs import LocalBlobs, S3Blobs
    from .chunkstore import ChunkStore

    parsed = check_store_url(url)
    if parsed.scheme == "file":
        return ChunkStore(LocalBlobs(Path(parsed.path)), cache_dir=cache_dir, **options)
    if parsed.scheme == "s3":
        threshold = options.pop("multipart_threshold", 16 << 20)
        attempts = options.pop("max_attempts", 3)  # boto3's tries; then S3Blobs._retrying
        read_timeout = options.pop("read_timeout", 30)  # seconds a response may stall
        blobs = S3Blobs(parsed.netloc, parsed.path, multipart_threshold=threshold,
                        max_attempts=attempts, read_timeout=read_timeout)
        return ChunkStore(blobs, cache_dir=cache_dir, **options)
    raise AssertionError(f"check_store_url let {url!r} through")


def check_store_url(url: str) -> ParseResult:
    """``url`` parsed, if a store can be opened there: ``file:///absolute/path`` or
    ``s3://bucket/prefix``; else InvalidInput saying how to write it."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc or not parsed.path.startswith("/") or parsed.query or parsed.fragment:
            # file://data/objects would name /objects, file:///a#b /a: refused, not guessed
            raise InvalidInput(f"store URL {url!r} is not an absolute file URL",
                               hint="use file:///absolute/path (three slashes, no host, "
                               "no ? or #)")
        return parsed
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInput(f"store URL {url!r} names no bucket", hint="s3://bucket/prefix")
        return parsed
    if not parsed.scheme:
        folder = Path(url).expanduser().absolute()
        raise InvalidInput(f"unsupported store URL {url!r}: a folder is written as a file URL",
                           hint=f"use file://{folder}")
    raise InvalidInput(f"unsupported store URL {url!r}",
                       hint="use file:///absolute/path or s3://bucket/prefix")


def __getattr__(name: str) -> Any:
    if name == "ChunkStore":
        return import_module(".chunkstore", __name__).ChunkStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ArtifactStore", "ChunkRef", "ChunkStore", "FileEntry", "GcReport", "IngestReport",
           "PackCheck", "StoreStats", "VerifyReport", "open_store"]

"""Reading one file of a model version, or a byte range of it, without fetching the rest.

``Registry.open_file("llm@production", "model.safetensors")`` (and the same
method of the remote client) returns a read-only, seekable binary file built
on the dataset reader (``datasets_io.ChunkedReader``): a read fetches only the
chunks it covers, one ranged read per run of chunks stored back to back, and
checks each against its BLAKE3 digest before returning a byte of it. Reading
a safetensors header and two tensors of a multi-GB file moves a few MB.
"""

from __future__ import annotations

from typing import Any

from .._errors import InvalidInput
from .._identity import require_intact
from .._records import ModelVersion
from .._store.chunkstore import ChunkStore
from .datasets_io import ChunkedReader, StoredFile


class ModelFile(StoredFile):
    """A file of a model version (what ``open_file`` gives)."""

    version: ModelVersion


def open_file(store: Any, version: ModelVersion, path: str) -> ModelFile:
    """A streaming file over ``path`` of ``version``, read from ``store``."""
    version = require_intact(version)  # the manifest read from is the one the digest names
    entry = version.file(path)
    if not isinstance(store, ChunkStore):  # pragma: no cover - every store is a ChunkStore
        raise InvalidInput(f"the store {store.url} cannot stream files")
    return ModelFile(ChunkedReader(store, entry, label=version.ref), version)

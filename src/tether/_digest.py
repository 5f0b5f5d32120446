"""Digests and canonical serialisation: the ground every identity stands on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import blake3

#: Files are hashed in pieces this large; blake3 is fastest on big buffers.
_READ_SIZE = 8 * 1024 * 1024


def blake3_hex(data: bytes | memoryview) -> str:
    """BLAKE3 of ``data`` as lowercase hex (multi-threaded for large buffers)."""
    if len(data) >= 4 * 1024 * 1024:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    return blake3.blake3(data).hexdigest()


def file_digest(path: str | Path) -> str:
    """BLAKE3 of a file's bytes, read in large pieces."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as handle:
        while block := handle.read(_READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant white space.

    Two equal values always give the same text, so its digest identifies them.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest_of(value: Any) -> str:
    """BLAKE3 hex of the canonical JSON of ``value``."""
    return blake3_hex(canonical_json(value).encode("utf-8"))

"""Keeping gc and ingests apart.

An ingest may decide to reuse a chunk that lives in a pack gc is about to
delete. So ingests hold a shared lock from their first index read until their
pin is written, and gc holds an exclusive one. Locally that is ``flock`` on a
file; on S3 it is lease objects (``locks/ingest-*``, ``locks/gc``) that expire,
so a killed process cannot block the store forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from .._errors import Conflict, NotFound

if TYPE_CHECKING:
    from .chunkstore import ChunkStore

LEASE_SECONDS = 3600.0


@contextmanager
def _flock(store: ChunkStore, mode: int) -> Iterator[None]:
    path = store.blobs.local_path("locks/store.lock")
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _leases(store: ChunkStore, prefix: str) -> list[str]:
    now = time.time()
    found = []
    for info in store.blobs.list("locks/"):
        name = info.key.rsplit("/", 1)[-1]
        if name.startswith(prefix) and now - info.mtime < LEASE_SECONDS:
            found.append(info.key)
    return found


@contextmanager
def store_lock(store: ChunkStore, *, wait_seconds: float = 60.0) -> Iterator[None]:
    """Exclusive: one gc at a time, and no ingest in flight."""
    if store.blobs.is_local:
        with _flock(store, fcntl.LOCK_EX):
            yield
        return
    if _leases(store, "gc"):
        raise Conflict("another gc is running on this store", hint="wait for it to finish")
    key = "locks/gc"
    store.blobs.put_bytes(key, json.dumps({"since": time.time()}).encode())
    try:
        deadline = time.time() + wait_seconds
        while _leases(store, "ingest-"):
            if time.time() > deadline:
                raise Conflict("ingests are still running; gc did not start",
                               hint="retry when uploads have finished")
            time.sleep(0.5)
        yield
    finally:
        store.blobs.delete(key)


@contextmanager
def ingest_lock(store: ChunkStore, *, wait_seconds: float = 600.0) -> Iterator[None]:
    """Shared: many ingests at once, never during a gc."""
    if store.blobs.is_local:
        with _flock(store, fcntl.LOCK_SH):
            yield
        return
    deadline = time.time() + wait_seconds
    while _leases(store, "gc"):
        if time.time() > deadline:
            raise Conflict("a gc has held the store for too long", hint="retry later")
        time.sleep(0.5)
    key = f"locks/ingest-{uuid.uuid4().hex}"
    store.blobs.put_bytes(key, b"{}")
    try:
        yield
    finally:
        with suppress(NotFound):
            store.blobs.delete(key)

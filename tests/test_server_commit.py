"""What a commit through `tether server` costs its client: the server already knows the
index files the client uploaded (it checked each against its pack), and it merges them
after answering, not while the client waits.

A 2 GB version's commit took 0.4 s on the server (0.04 s committed locally): 0.1 s
reading back the 128 index files it had just checked, 0.2 s merging them.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether import Registry
from tether._store import chunk_index
from tether._store.chunk_index import ChunkIndex
from tether._store.midx import is_merged
from tether.server.app import create_app

from .servers import app_in_thread


@pytest.fixture
def served(registry: Registry) -> Iterator[str]:
    """``registry`` behind a real uvicorn running the server's app, in this process (so
    a test can watch what the server's store does)."""
    try:
        with app_in_thread(create_app(registry)) as url:
            yield url
    finally:
        _tidied(registry)


def _tidied(registry: Registry) -> bool:
    """Whether a merge the server started in the background is over."""
    wait = getattr(registry.store, "wait_for_tidying", None)
    return wait is None or bool(wait())


def _model(folder: Path, seed: int, size: int = 9 << 20) -> Path:
    """Bytes of their own (seeded), several packs' worth through a gateway (2 MB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(random.Random(seed).randbytes(size))
    return folder


def _token(registry: Registry) -> str:
    return str(registry.create_token("ci@example.com", role="contributor")["token"])


def test_a_commit_does_not_read_back_the_index_files_its_client_uploaded(
        registry: Registry, served: str, tmp_path: Path, monkeypatch: Any) -> None:
    blobs = registry.store.blobs  # type: ignore[attr-defined]
    read_back: list[str] = []
    real_get = blobs.get_bytes
    monkeypatch.setattr(blobs, "get_bytes", lambda key: (
        read_back.append(key) if key.startswith("index/") else None, real_get(key))[1])
    client = tether.connect(served, token=_token(registry))
    try:
        version = client.log_model(_model(tmp_path / "m", 1), "big", progress=False)
        uploaded = [k for k in os.listdir(registry.store.blobs.root / "index")]  # type: ignore
        assert len(uploaded) >= 4  # several packs, each with its index file
        assert read_back == []  # the commit found every chunk without reading one back
        out = tmp_path / "out"
        client.download(version.ref, out)
        assert (out / "weights.bin").read_bytes() == (tmp_path / "m" / "weights.bin").read_bytes()
    finally:
        client.close()


def test_the_server_merges_uploaded_index_files_after_answering_the_commit(
        registry: Registry, served: str, tmp_path: Path, monkeypatch: Any) -> None:
    """The merge waits (up to 10 s) for the client to have its answer: run before
    answering, as it was, the client had none in that time."""
    monkeypatch.setattr(chunk_index, "_JOURNAL_MAX", 3)
    answered = threading.Event()
    merges: list[tuple[bool, str]] = []
    real = ChunkIndex.maybe_consolidate

    def merge_once_answered(self: ChunkIndex) -> None:
        if self.can_merge():  # the server's (its client, in this process too, may not)
            merges.append((answered.wait(10), threading.current_thread().name))
        real(self)

    monkeypatch.setattr(ChunkIndex, "maybe_consolidate", merge_once_answered)
    client = tether.connect(served, token=_token(registry))
    try:
        version = client.log_model(_model(tmp_path / "m", 2), "big", progress=False)
        answered.set()
        assert _tidied(registry)
        assert merges and merges[0][0], merges  # the client had its answer first
        assert merges[0][1].startswith("tether-tidy"), merges
        index = registry.store.blobs.root / "index"  # type: ignore[attr-defined]
        files = list(index.iterdir())
        assert files and all(is_merged(p.read_bytes()[:8]) for p in files)  # merged
        out = tmp_path / "out"
        client.download(version.ref, out)
        assert (out / "weights.bin").read_bytes() == (tmp_path / "m" / "weights.bin").read_bytes()
    finally:
        answered.set()
        client.close()


def test_a_merge_in_the_background_gives_way_to_a_gc_holding_the_store(
        tmp_path: Path, monkeypatch: Any) -> None:
    """It waited for the gc (a server could not stop until that gc ended); now it is
    skipped, and a later commit merges."""
    import fcntl

    from tether._store import open_store

    monkeypatch.setattr(chunk_index, "_JOURNAL_MAX", 2)
    # As a client of a server leaves them: index files it could not merge itself.
    monkeypatch.setattr(ChunkIndex, "merge_own", lambda self, packs, entries: None)
    store = open_store(f"file://{tmp_path / 'store'}", pack_target=64 * 1024)
    store.ingest(_model(tmp_path / "m", 3, size=1 << 20), ["weights.bin"])
    assert store.index.journal_is_long()
    store.tidy_in_background = True
    lock = os.open(tmp_path / "store" / "locks" / "store.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as `tether gc` holds it
        store.tidy_index()
        assert store.wait_for_tidying(timeout=10)  # given up at once, not waiting
        assert store.index.journal_is_long()  # nothing merged under the gc
    finally:
        os.close(lock)
    store.tidy_index()
    assert store.wait_for_tidying(timeout=30)
    assert not store.index.journal_is_long()  # merged once the store was free


def test_a_merged_file_replaced_while_a_lookup_reads_it_stays_readable(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A refresh that met a merged file covering an older one closed the older one's
    mapping, though a lookup on another thread might be reading it: the close failed
    (BufferError: pointers to it exported) and left the refresh half done, a 500 for
    the commit that ran it. Now it is let go, and unmapped when its last reader is done."""
    from tether._store import open_store

    url = f"file://{tmp_path / 'store'}"
    store = open_store(url, pack_target=64 * 1024)
    store.ingest(_model(tmp_path / "a", 4, size=256 << 10), ["weights.bin"])
    store.consolidate()
    store.refresh()
    (old_name, old), = store.index.segments.items()
    reading = memoryview(old._data)  # a lookup's numpy view of it, mid-search
    other = open_store(url, pack_target=64 * 1024)  # another writer: merges it with more
    other.ingest(_model(tmp_path / "b", 5, size=256 << 10), ["weights.bin"])
    other.consolidate()
    store.refresh()  # meets the new file, which covers the old one
    assert old_name not in store.index.segments
    assert bytes(reading[:8]) == bytes(old._data[:8])  # still mapped for its reader
    reading.release()


def test_an_index_file_a_refresh_read_first_is_not_learned_again(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A refresh between the server's store of a checked index and its learning it added
    the file twice (once folded, its chunks sat in a block and the dict: census and
    stats counted them twice)."""
    from tether._store import open_store

    monkeypatch.setattr(ChunkIndex, "merge_own", lambda self, packs, entries: None)
    url = f"file://{tmp_path / 'store'}"
    writer = open_store(url)
    writer.ingest(_model(tmp_path / "m", 6, size=64 << 10), ["weights.bin"])
    (name,) = [p.stem for p in (tmp_path / "store" / "index").iterdir()]
    index = json.loads((tmp_path / "store" / "index" / f"{name}.idx").read_bytes())
    server = open_store(url)
    server.refresh()  # read it first
    added: list[str] = []
    real_add = ChunkIndex.add
    monkeypatch.setattr(ChunkIndex, "add", lambda self, pack, size, entries: (
        added.append(pack), real_add(self, pack, size, entries))[1])
    server.index.learn(name, index["pack"], index["size"], index["chunks"])
    assert added == []

"""Packs sent from memory (``tether._store.pack_bodies``) to a store that takes them so.

A server's gateway takes a pack as a request body: the writer keeps it in a
reused buffer, never in a temporary file, and what it sends is exactly the
pack its index describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import blake3
import pytest

from tether._store.blobs import LocalBlobs
from tether._store.chunklist import ChunkRef
from tether._store.chunkstore import ChunkStore, PackWriter
from tether._store.fileio import BufferPool
from tether._store.pack_bodies import FileBody, MemoryBody, body_for


class BufferBlobs(LocalBlobs):
    """A folder that takes packs from memory, as the server's gateway does, and
    refuses to hand out a temporary file for one."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.buffers_sent: list[Any] = []  # kept alive: their ids stay theirs
        self.fail_next = False
        self.temp_files_allowed = True

    def put_file(self, key: str, path: Path) -> None:
        assert self.temp_files_allowed or not key.startswith("packs/"), \
            "a pack went through a temporary file"
        super().put_file(key, path)

    def put_buffer(self, key: str, data: memoryview) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the server went away")
        self.buffers_sent.append(data.obj)
        fd, tmp = self.temp_file()
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        LocalBlobs.put_file(self, key, tmp)  # stored as a folder stores it


def test_a_body_outgrows_its_buffer_even_while_a_view_of_it_is_held() -> None:
    """A pack can end past its target by a chunk. Resizing the buffer in place
    fails while anything still holds a view of it (say, a sender that has not let
    go): the body moves to a larger buffer instead, its bytes intact."""
    pool = BufferPool(keep=2)
    body = MemoryBody(pool, 8)
    body.write([b"abcdef"])
    held = memoryview(body.buffer)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        body.buffer.extend(b"xyz")  # type: ignore[union-attr]  # the harm: no in-place growth
    body.write([b"ghij", memoryview(b"klm")])
    assert body.size == 13 and bytes(body.buffer[:13]) == b"abcdefghijklm"  # type: ignore[index]
    held.release()


def test_buffers_are_reused_and_at_most_keep_are_kept() -> None:
    pool = BufferPool(keep=1)
    first, second = MemoryBody(pool, 16), MemoryBody(pool, 16)
    kept = first.buffer
    first.discard()
    second.discard()  # beyond keep: dropped
    assert pool.take(16) is kept
    assert len(pool.take(16)) == 16  # a new one: the pool kept only one


def test_which_body_a_store_gets(tmp_path: Path) -> None:
    pool = BufferPool(keep=1)
    assert isinstance(body_for(BufferBlobs(tmp_path / "a"), pool, 16), MemoryBody)
    file_body = body_for(LocalBlobs(tmp_path / "b"), pool, 16)
    assert isinstance(file_body, FileBody)
    file_body.discard()
    assert not any((tmp_path / "b" / "tmp").iterdir())


def _chunks(count: int, size: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        data = os.urandom(size)
        out.append((blake3.blake3(data).hexdigest(), data))
    return out


def test_a_writer_sends_packs_from_reused_buffers_and_they_check_out(tmp_path: Path) -> None:
    blobs = BufferBlobs(tmp_path / "store")
    blobs.temp_files_allowed = False
    store = ChunkStore(blobs, upload_streams=2)
    writer = PackWriter(store, target=100_000)
    chunks = _chunks(40, 30_000)  # 1.2 MB: a dozen packs of four chunks
    for digest, data in chunks:
        writer.add(digest, data, len(data), 0)
        writer.write_out()
    writer.finish()
    assert len(writer.published) == 10
    assert len({id(b) for b in blobs.buffers_sent}) <= 3  # two in flight, one filling
    for pack in writer.published:
        index: Any = json.loads(store.blobs.get_bytes(f"index/{pack}.idx"))
        check = store.check_pack(pack, index)
        assert check.problems == [] and check.chunks == 4
    reader = ChunkStore(LocalBlobs(tmp_path / "store"))
    for digest, data in chunks:
        assert bytes(reader._read_chunk(ChunkRef(digest, len(data)), what="t")) == data


def test_a_failed_send_leaves_no_buffer_behind_and_is_raised(tmp_path: Path) -> None:
    blobs = BufferBlobs(tmp_path / "store")
    store = ChunkStore(blobs, upload_streams=1)
    writer = PackWriter(store, target=50_000)
    blobs.fail_next = True
    with pytest.raises(ConnectionError):
        for digest, data in _chunks(10, 30_000):
            writer.add(digest, data, len(data), 0)
            writer.write_out()
        writer.finish()
    writer.abort()
    assert writer.body is None
    assert not list((tmp_path / "store").glob("packs/*"))  # nothing half-published


def test_starting_writeback_is_a_hint_that_never_fails(tmp_path: Path) -> None:
    """Where the system has it, the kernel is asked to start writing a range; an error
    (a descriptor that is not a file, say) is no loss and is not raised."""
    from tether._store.fileio import start_writeback

    path = tmp_path / "f"
    with open(path, "wb") as handle:
        handle.write(b"x" * 100_000)
        handle.flush()
        start_writeback(handle.fileno(), 0, 100_000)
    read, write = os.pipe()
    try:
        start_writeback(read, 0, 10)  # ESPIPE, ignored
    finally:
        os.close(read)
        os.close(write)
    assert path.read_bytes() == b"x" * 100_000


def test_only_a_store_on_this_disk_has_its_packs_writeback_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder store fsyncs a pack as it publishes it: its writeback is started as it
    is written. A bucket's temporary pack is uploaded and deleted; started, its pages
    would all go to the local disk for nothing (they are otherwise dropped unwritten)."""
    from tether._store import pack_bodies

    started: list[int] = []
    monkeypatch.setattr(pack_bodies, "start_writeback",
                        lambda fd, offset, length: started.append(length))

    class Bucket(LocalBlobs):
        is_local = False  # as S3Blobs: its temporary files are uploaded, then deleted

    for blobs, expected in ((LocalBlobs(tmp_path / "here"), [5]),
                            (Bucket(tmp_path / "bucket"), [])):
        started.clear()
        body = FileBody(blobs)
        body.write([b"abcde"])
        body.discard()
        assert started == expected

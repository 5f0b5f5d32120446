"""A pack being written (``tether._store.pack_file``): a temporary file of the store's,
its writeback started as it is written where the store keeps it on this disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import blake3
import pytest

from tether._store.blobs import LocalBlobs
from tether._store.chunklist import ChunkRef
from tether._store.chunkstore import ChunkStore
from tether._store.fileio import BufferPool, start_writeback
from tether._store.ingest import PackWriter
from tether._store.pack_file import PackFile


class FailingBlobs(LocalBlobs):
    """A folder whose next pack upload fails, as a server going away would."""

    fail_next = False

    def put_file(self, key: str, path: Path) -> None:
        if self.fail_next and key.startswith("packs/"):
            self.fail_next = False
            path.unlink(missing_ok=True)
            raise ConnectionError("the server went away")
        super().put_file(key, path)


def _chunks(count: int, size: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        data = os.urandom(size)
        out.append((blake3.blake3(data).hexdigest(), data))
    return out


def test_a_writers_packs_check_out_and_leave_no_temporary_file(tmp_path: Path) -> None:
    store = ChunkStore(LocalBlobs(tmp_path / "store"), upload_streams=2)
    writer = PackWriter(store, target=100_000)
    chunks = _chunks(40, 30_000)  # 1.2 MB: ten packs of four chunks
    for digest, data in chunks:
        writer.add(digest, data, len(data), 0)
        writer.write_out()
    writer.finish()
    assert len(writer.published) == 10
    for pack in writer.published:
        index: Any = json.loads(store.blobs.get_bytes(f"index/{pack}.idx"))
        check = store.check_pack(pack, index)
        assert check.problems == [] and check.chunks == 4
    reader = ChunkStore(LocalBlobs(tmp_path / "store"))
    for digest, data in chunks:
        assert bytes(reader._read_chunk(ChunkRef(digest, len(data)), what="t")) == data
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_a_failed_publish_is_raised_and_leaves_nothing_half_published(tmp_path: Path) -> None:
    blobs = FailingBlobs(tmp_path / "store")
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
    assert not list((tmp_path / "store").glob("packs/*"))
    assert not any((tmp_path / "store" / "tmp").iterdir())  # no temporary pack left


def test_buffers_are_reused_and_at_most_keep_are_kept() -> None:
    pool = BufferPool(keep=1)
    first, second = pool.take(16), pool.take(16)
    pool.give(first)
    pool.give(second)  # beyond keep: dropped
    assert pool.take(16) is first
    assert pool.take(16) is not second
    pool.give(bytearray(8))
    assert len(pool.take(16)) == 16  # one too small is not handed out


def test_starting_writeback_is_a_hint_that_never_fails(tmp_path: Path) -> None:
    """Where the system has it, the kernel is asked to start writing a range; an error
    (a descriptor that is not a file, say) is no loss and is not raised."""
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
    from tether._store import pack_file

    started: list[int] = []
    monkeypatch.setattr(pack_file, "start_writeback",
                        lambda fd, offset, length: started.append(length))

    class Bucket(LocalBlobs):
        is_local = False  # as S3Blobs: its temporary files are uploaded, then deleted

    for blobs, expected in ((LocalBlobs(tmp_path / "here"), [5]),
                            (Bucket(tmp_path / "bucket"), [])):
        started.clear()
        body = PackFile(blobs)
        body.write([b"abcde"])
        body.discard()
        assert started == expected

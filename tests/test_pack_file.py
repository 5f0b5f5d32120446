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


# -- a large ingest's packs, written around the page cache (O_DIRECT) ----------------


def _direct_possible(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()
    return True


def _pieces(rng: Any) -> list[bytes]:
    """Pieces that fill buffers exactly, cross their ends, are empty, and end off a block."""
    from tether._store.pack_file import STAGE

    sizes = [STAGE, 1, 0, STAGE - 1, 3 * STAGE + 17, 4096, 65_536, 12_345]
    return [rng.randbytes(n) for n in sizes]


def test_a_direct_pack_holds_exactly_the_bytes_a_buffered_one_does(tmp_path: Path) -> None:
    import random

    from tether._store import pack_file

    if not _direct_possible(tmp_path / "store"):
        pytest.skip("this filesystem has no direct I/O")
    blobs = LocalBlobs(tmp_path / "store")
    rng = random.Random(3)
    for round_ in range(3):  # the buffers of one pack are reused by the next
        pieces = _pieces(rng)
        rng.shuffle(pieces)
        written = {}
        for direct in (True, False):
            body = PackFile(blobs, direct=direct)
            assert (body._direct is not None) is direct
            half = len(pieces) // 2
            body.write(pieces[:half])  # two calls, as ingest makes one per window
            body.write(pieces[half:])
            body.seal()
            key = f"packs/{round_}-{direct}.pack"
            body.publish(blobs, key)
            written[direct] = (tmp_path / "store" / key).read_bytes()
        assert written[True] == written[False] == b"".join(pieces)
    assert len(pack_file._spare) <= 2 * pack_file._BUFFERS
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_direct_writes_fall_back_where_the_filesystem_has_none_or_they_are_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses O_DIRECT at open (EINVAL; tmpfs before Linux 6.6): the
    pack goes through the page cache, whole. TETHER_DIRECT_IO=0 turns direct writes off."""
    import errno

    from tether._store import pack_file

    blobs = LocalBlobs(tmp_path / "store")
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    with monkeypatch.context() as patch:
        patch.setattr(pack_file.os, "open", no_direct)
        body = PackFile(blobs, direct=True)
        assert body._direct is None
        body.write([b"abc" * 5000])
        body.seal()
        body.publish(blobs, "packs/a.pack")
    assert (tmp_path / "store" / "packs" / "a.pack").read_bytes() == b"abc" * 5000
    monkeypatch.setenv("TETHER_DIRECT_IO", "0")
    assert PackFile(blobs, direct=True)._direct is None


def test_a_failed_direct_write_is_a_clear_error_and_leaves_no_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk met by a direct write (on the writer thread) is raised as the
    store's disk-full error when the pack is published; nothing is published and no
    temporary file is left."""
    import errno

    from tether._errors import StoreError
    from tether._store import pack_file

    if not _direct_possible(tmp_path / "store"):
        pytest.skip("this filesystem has no direct I/O")

    def full(fd: int, pieces: Any, offset: int | None = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack_file, "write_pieces", full)
    store = ChunkStore(LocalBlobs(tmp_path / "store"), upload_streams=1)
    writer = PackWriter(store, target=20 << 20, direct=True)
    with pytest.raises(StoreError, match=r"(?i)disk|space"):
        for digest, data in _chunks(12, 1 << 20):
            writer.add(digest, data, len(data), 0)
            writer.write_out()
        writer.finish()
    writer.abort()
    assert not list((tmp_path / "store").glob("packs/*"))
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_a_filesystem_refusing_direct_writes_gets_them_through_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One that opens files for direct I/O and then refuses the writes (EINVAL): the
    pack is still written whole, and later packs on that device skip direct I/O."""
    import errno

    from tether._store import pack_file

    if not _direct_possible(tmp_path / "store"):
        pytest.skip("this filesystem has no direct I/O")
    real = pack_file.write_pieces
    refusing: set[int] = set()

    def picky(fd: int, pieces: Any, offset: int | None = None) -> None:
        if fd in refusing:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, pieces, offset)

    monkeypatch.setattr(pack_file, "write_pieces", picky)
    monkeypatch.setattr(pack_file, "_refused", set())
    blobs = LocalBlobs(tmp_path / "store")
    body = PackFile(blobs, direct=True)
    assert body._direct is not None
    refusing.add(body._direct.fd)
    pieces = [os.urandom(5 << 20), os.urandom(13 << 20), os.urandom(777)]
    body.write(pieces)
    body.seal()
    body.publish(blobs, "packs/p.pack")
    assert (tmp_path / "store" / "packs" / "p.pack").read_bytes() == b"".join(pieces)
    assert pack_file._refused == {os.stat(tmp_path / "store").st_dev}
    later = PackFile(blobs, direct=True)
    assert later._direct is None
    later.discard()


def test_a_failed_direct_write_never_hands_a_buffer_out_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write that fails is met while the next buffer is being handed over: every
    buffer goes back to the pool once (one given back twice was filled as two by the
    next pack, and its bytes came out wrong: a review)."""
    import errno
    import random

    from tether._store import pack_file

    if not _direct_possible(tmp_path / "store"):
        pytest.skip("this filesystem has no direct I/O")
    real = pack_file.write_pieces
    calls = []

    def second_fails(fd: int, pieces: Any, offset: int | None = None) -> None:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EFBIG, "File too large")
        real(fd, pieces, offset)

    monkeypatch.setattr(pack_file, "write_pieces", second_fails)
    monkeypatch.setattr(pack_file, "_spare", [])
    blobs = LocalBlobs(tmp_path / "store")
    body = PackFile(blobs, direct=True)
    with pytest.raises(OSError, match="too large"):
        for _ in range(6):
            body.write([os.urandom(pack_file.STAGE)])
    assert len({id(b) for b in pack_file._spare}) == len(pack_file._spare) > 0
    monkeypatch.setattr(pack_file, "write_pieces", real)
    rng = random.Random(1)
    pieces = [rng.randbytes(pack_file.STAGE) for _ in range(5)] + [rng.randbytes(12_345)]
    again = PackFile(blobs, direct=True)
    again.write(pieces)
    again.seal()
    again.publish(blobs, "packs/again.pack")
    assert (tmp_path / "store" / "packs" / "again.pack").read_bytes() == b"".join(pieces)
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_no_memory_for_the_buffers_leaves_no_descriptor_or_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether._store import pack_file

    if not _direct_possible(tmp_path / "store"):
        pytest.skip("this filesystem has no direct I/O")

    def no_memory() -> list[memoryview]:
        raise MemoryError

    monkeypatch.setattr(pack_file, "_take_buffers", no_memory)
    blobs = LocalBlobs(tmp_path / "store")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(MemoryError):
        PackFile(blobs, direct=True)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_gather_copies_pieces_in_order_and_refuses_what_does_not_fit() -> None:
    from tether._store import native

    dest = memoryview(bytearray(10))
    native.gather(dest, 2, [memoryview(b"abc"), memoryview(b""), memoryview(b"defg")])
    assert bytes(dest) == b"\0\0abcdefg\0"
    # Slices that follow each other in memory are copied as one run, and a gap ends it.
    source = memoryview(bytes(range(20)))
    runs = [source[0:3], source[3:7], source[7:7], source[10:12], source[12:13], source[1:2]]
    out = memoryview(bytearray(11))
    native.gather(out, 0, runs)
    assert bytes(out) == bytes([0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 1])
    if native.available:
        with pytest.raises(ValueError, match="do not fit"):
            native.gather(dest, 8, [memoryview(b"abc")])
        with pytest.raises(ValueError, match="do not fit"):
            native.gather(dest, -1, [memoryview(b"a")])


def test_a_write_that_makes_no_progress_is_an_error_not_a_loop(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """write_pieces asked again after a write of nothing, for ever; the direct writes'
    own loop stopped there, and they now share write_pieces."""
    from tether._store import fileio

    monkeypatch.setattr(fileio.os, "pwritev", lambda fd, views, offset: 0)
    with open(tmp_path / "f", "wb") as handle, pytest.raises(OSError, match="wrote nothing"):
        fileio.write_pieces(handle.fileno(), [b"abc", b""], 0)
    fileio.write_pieces(1, [b""], 0)  # nothing to write: nothing asked

"""Bytes sit where the kernel copies them fastest: buffers start on a page, a file's
window sits in its buffer as the page cache holds the file, and a raw chunk sits in
its pack at its file offset modulo 64 (the kernel's copies ran at half speed
between differently aligned addresses: see fileio.aligned_buffer)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from tether._store import open_store
from tether._store.chunkstore import RAW
from tether._store.fileio import ALIGN, BufferPool, aligned_buffer
from tether._store.ingest import _BufferRing


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_buffers_start_on_a_page_and_windows_sit_as_the_file_does() -> None:
    assert _address(aligned_buffer(1 << 20)) % 4096 == 0
    assert _address(BufferPool(keep=2).take(3 << 20)) % 4096 == 0
    ring = _BufferRing()
    for at in (0, 1, 17, 63, 64, 4095, 8 * 1024 * 1024 + 5):
        view = ring.next(1 << 20, at=at)
        assert len(view) == 1 << 20
        assert _address(view) % ALIGN == at % ALIGN


def test_a_raw_chunk_sits_in_its_pack_at_its_file_offset_modulo_64(tmp_path: Path) -> None:
    # Two files of random bytes (raw chunks) in one pack: the second starts wherever
    # the first ended, so without padding its chunks would sit anywhere.
    (tmp_path / "a").mkdir()
    first, second = os.urandom(3_000_017), os.urandom(10_000_003)
    (tmp_path / "a" / "one.bin").write_bytes(first)
    (tmp_path / "a" / "two.bin").write_bytes(second)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    report = store.ingest(tmp_path / "a", ["one.bin", "two.bin"])
    checked = 0
    for entry in report.files:
        offset = 0
        for chunk in entry.chunks:
            loc = store.locate(chunk.digest)
            assert loc is not None and loc.codec == RAW
            assert (loc.offset - offset) % ALIGN == 0, (entry.path, offset, loc.offset)
            offset += chunk.size
            checked += 1
    assert checked > 100
    # Padding changes where chunks sit, not what a load or a check reads.
    store.materialize(report.files, tmp_path / "out", label="test")
    assert (tmp_path / "out" / "one.bin").read_bytes() == first
    assert (tmp_path / "out" / "two.bin").read_bytes() == second
    assert store.verify(report.files, label="test") == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_buffer_stays_the_process_own_across_a_fork() -> None:
    """An anonymous mapping is shared by default: a process forked later (multiprocessing,
    a data loader's workers) would read packs into the pages its parent is checking."""
    shared = mmap.mmap(-1, 4096)  # the unsafe way
    mine = aligned_buffer(4096)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only writes and leaves
        shared[:5] = b"CHILD"
        mine[:5] = b"CHILD"
        os._exit(0)
    os.waitpid(child, 0)
    assert shared[:5] == b"CHILD"  # the harm: the child's bytes in the parent's buffer
    assert bytes(mine[:5]) == bytes(5)


def test_what_an_ingest_reports_stored_is_what_the_store_grew_by(tmp_path: Path) -> None:
    """Padding counts: two raw files whose chunks sit apart in one pack."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.bin").write_bytes(os.urandom(300_017))
    (tmp_path / "a" / "two.bin").write_bytes(os.urandom(500_003))
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    report = store.ingest(tmp_path / "a", ["one.bin", "two.bin"])
    packs = sum(p.stat().st_size for p in (tmp_path / "store").glob("packs/*.pack"))
    assert report.stored_bytes == packs > 800_020

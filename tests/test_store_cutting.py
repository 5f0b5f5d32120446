"""Cutting on every core finds exactly the chunks one cutting finds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from pyfastcdc.cy import FastCDC

from tether._errors import StoreError
from tether._store import cutting, native, open_store
from tether._store.fileio import aligned_buffer
from tether._store.ingest import AVG_CHUNK

_real_workers = cutting.workers  # before any test patches it


def test_the_native_core_is_built_here() -> None:
    """`make test` builds it (setup.py; this machine has a C compiler): a failed build
    would otherwise only show as skipped tests and slower cutting."""
    assert native.built, "build it: .venv/bin/pip install -e . (needs a C compiler)"


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 1 MB, so a few MB exercise stitching (and its fallback)."""
    monkeypatch.setattr(cutting, "SEGMENT", 1 << 20)
    monkeypatch.setattr(cutting, "OVERLAP", 1 << 19)
    monkeypatch.setattr(cutting, "PARALLEL_FROM", 2 << 20)
    monkeypatch.setattr(cutting, "workers", lambda: 2)


def _awkward_bytes() -> bytes:
    # Random bytes; then a run of zeros longer than the overlap, which FastCDC
    # cuts at its largest size from wherever it starts (two segments' cuttings
    # never meet inside it: the fallback); then random bytes again, an odd size.
    return os.urandom(3_300_000) + bytes(1_500_000) + os.urandom(2_100_003)


@pytest.mark.parametrize("how", ["native threads", "worker processes"])
def test_stitched_chunks_equal_one_cutting(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    data = _awkward_bytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    buffer = None
    if how == "native threads":
        if not native.available:
            pytest.skip("the native core is not in use (TETHER_NATIVE=0, or not built)")
        handed: list[memoryview] = []

        def buffer(size: int, at: int) -> memoryview:
            handed.append(aligned_buffer(size))  # never reused: views stay valid
            return handed[-1]
    else:
        monkeypatch.setattr(native, "available", False)
    sequential = [(c.offset, c.length) for c in FastCDC(avg_size=AVG_CHUNK).cut_buf(data)]
    stretches = list(cutting.parallel_cuts(path, len(data), AVG_CHUNK, buffer=buffer))
    assert len(stretches) > 3  # really cut in several pieces
    parallel = [cut for stretch, _view in stretches for cut in stretch]
    assert [(offset, length) for offset, length, _ in parallel] == sequential
    for offset, length, digest in parallel:
        assert digest == blake3.blake3(data[offset : offset + length]).hexdigest()
    for stretch, view in stretches:  # the bytes handed with each stretch are the file's
        first, stop = stretch[0][0], stretch[-1][0] + stretch[-1][1]
        if how == "native threads":
            assert view is not None and bytes(view) == data[first:stop]
        else:
            assert view is None


def test_a_file_stored_in_parallel_dedups_against_one_stored_sequentially(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _awkward_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(data)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    parallel = store.ingest(tmp_path / "a", ["model.bin"]).files[0]
    monkeypatch.setattr(cutting, "PARALLEL_FROM", 1 << 40)  # one cutting, in this thread
    fresh = open_store(f"file://{tmp_path / 'store2'}", cache_dir=tmp_path / "cache2")
    sequential = fresh.ingest(tmp_path / "a", ["model.bin"]).files[0]
    assert parallel == sequential
    again = store.ingest(tmp_path / "a", ["model.bin"])
    assert again.new_chunks == 0 and again.reused_chunks == len(parallel.chunks)
    store.materialize([parallel], tmp_path / "out", label="test")
    assert (tmp_path / "out" / "model.bin").read_bytes() == data


def test_a_file_truncated_under_a_worker_kills_the_worker_never_the_caller(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers map the file; a mapped page the file no longer has is SIGBUS."""
    data = os.urandom(6 << 20)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(data)
    # The harm, the unsafe way: the process that touches such a page dies on the spot.
    touch = (
        "import os, sys\n"
        "from tether._store import cutting\n"
        "with cutting._mapped(sys.argv[1], 0, 1 << 20) as view:\n"
        "    os.truncate(sys.argv[1], 0)\n"
        "    print(view[8192])\n"
    )
    died = subprocess.run([sys.executable, "-c", touch, str(victim)], capture_output=True)
    assert died.returncode == -signal.SIGBUS
    # Against Tether: only workers map. The file shrinks under each worker as it maps
    # its segment (a test hook); the worker dies, the caller cuts the segment itself
    # with pread, finds the file shrank and says so; nothing is stored.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(data)
    monkeypatch.setenv("TETHER_TEST_TRUNCATE_MAPPED", "1")
    monkeypatch.setattr(native, "available", False)  # the worker processes' path
    monkeypatch.setattr(cutting, "_pool", None)  # workers started with the hook
    ended: list[int | None] = []
    close = cutting._Worker.close

    def noted_close(worker: cutting._Worker) -> None:
        close(worker)
        ended.append(worker.proc.returncode)

    monkeypatch.setattr(cutting._Worker, "close", noted_close)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    try:
        with pytest.raises(StoreError, match="shrank while it was being cut") as caught:
            store.ingest(tmp_path / "a", ["model.bin"])
        assert "nobody is writing" in str(caught.value.hint)
        assert -signal.SIGBUS in ended  # a worker died of it, and the caller lives on
    finally:
        if cutting._pool is not None:
            cutting._pool.close()
    assert not list((tmp_path / "store").glob("packs/*.pack"))


@pytest.mark.parametrize("native_on", [True, False])
def test_with_the_native_core_threads_cut_and_no_worker_process_starts(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch, native_on: bool
) -> None:
    if native_on:
        if not native.available:
            pytest.skip("the native core is not in use (TETHER_NATIVE=0, or not built)")
    else:
        monkeypatch.setattr(native, "available", False)
    data = _awkward_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(data)
    monkeypatch.setattr(cutting, "_pool", None)  # a pool of this test's own
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    try:
        entry = store.ingest(tmp_path / "a", ["model.bin"]).files[0]
        pool = cutting._pool
        assert pool is not None  # cut in parallel either way
        assert (pool.started == 0) is native_on  # processes only without the native core
    finally:
        if cutting._pool is not None:
            cutting._pool.close()
    assert entry.digest == blake3.blake3(data).hexdigest()
    store.materialize([entry], tmp_path / "out", label="test")
    assert (tmp_path / "out" / "model.bin").read_bytes() == data


@pytest.mark.parametrize("pool_size", [2, 6])
def test_no_buffer_is_handed_out_again_while_a_window_in_it_is_in_use(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch, pool_size: int
) -> None:
    """Segments cut on threads take their ring buffers ahead of the windows being
    hashed and written: every buffer is poisoned as it is handed out, and the file
    still stores and hashes as its own bytes (the ring is large enough), also when
    the process's cutting pool is larger than ``workers()`` says now (the pool is
    sized once; a review found a ring sized from ``workers()`` corrupting packs)."""
    from tether._store import ingest

    monkeypatch.setattr(cutting, "_pool", cutting._Pool(pool_size))

    handed = ingest._BufferRing.next

    def poisoned(ring: ingest._BufferRing, size: int, at: int = 0) -> memoryview:
        view = handed(ring, size, at)
        view[:] = b"\xaa" * len(view)
        return view

    monkeypatch.setattr(ingest._BufferRing, "next", poisoned)
    data = os.urandom(9 << 20)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(data)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    entry = store.ingest(tmp_path / "a", ["model.bin"]).files[0]
    assert entry.digest == blake3.blake3(data).hexdigest()
    sequential = [(c.offset, c.length) for c in FastCDC(avg_size=AVG_CHUNK).cut_buf(data)]
    assert [c.size for c in entry.chunks] == [length for _, length in sequential]
    store.materialize([entry], tmp_path / "out", label="test")
    assert (tmp_path / "out" / "model.bin").read_bytes() == data
    assert cutting._pool is not None
    cutting._pool.close()


@pytest.mark.parametrize("count", [0, 1])
def test_one_core_or_no_cutting_workers_still_logs(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """``TETHER_CUT_WORKERS=0`` (or one core): cut in the calling thread; no pool of
    zero threads is asked for (that was a ValueError on every log)."""
    monkeypatch.setenv("TETHER_CUT_WORKERS", str(count))
    monkeypatch.setattr(cutting, "workers", _real_workers)
    monkeypatch.setattr(cutting, "_pool", None)
    data = _awkward_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.bin").write_bytes(data)
    store = open_store(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    entry = store.ingest(tmp_path / "a", ["model.bin"]).files[0]
    assert cutting._pool is None  # nothing cut in parallel
    assert entry.digest == blake3.blake3(data).hexdigest()
    sequential = [length for _, length in
                  ((c.offset, c.length) for c in FastCDC(avg_size=AVG_CHUNK).cut_buf(data))]
    assert [c.size for c in entry.chunks] == sequential

"""Cutting a large file into content-defined chunks on every core.

Each segment of the file (8 MB, plus an overlap into the next) is cut as if a
chunk started at the segment's first byte, and its chunks hashed. Where a chunk
ends depends only on the bytes since the chunk began, so two cuttings that
share one boundary agree on every boundary after it: the caller's thread
stitches each segment to the previous one at their first shared boundary in
the overlap, and the chunks are exactly those of cutting the whole file in one
go (deduplication against versions logged sequentially is unchanged). When no
boundary is shared inside the overlap (a run of identical bytes longer than the
overlap, cut at the largest size from two different starts), that stretch is
cut again from the last agreed boundary.

Who cuts: with the native core (native.py), threads. Each reads its segment
(and the largest chunk's length before it) into a buffer the caller hands out,
and cuts and hashes it in one call that releases the GIL; the caller then
writes packs from those buffers, so the file is read once. Without it,
pyfastcdc and blake3 give the GIL back for every chunk, and threads stall
behind any busy Python thread, so worker processes cut instead: plain
``python -m tether._store.cutting`` processes speaking JSON lines over pipes,
not ``multiprocessing`` (that would import the caller's ``__main__`` again in
every worker, or fork a process full of threads). Each maps its segment (the
page cache's pages, no copy) and returns offsets and digests; the caller reads
each stitched stretch once more. A worker that cannot start or dies leaves its
segments to be cut by the caller, slower but the same.

Memory stays bounded by a few segments whatever the file's size.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import json
import mmap
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import blake3
from pyfastcdc.cy import FastCDC

from . import native
from .chunklist import RECORD
from .fileio import aligned_buffer, pread_into, settle

#: Bytes each worker cuts (and the most the main process reads at once).
SEGMENT = 8 * 1024 * 1024
#: How far a segment is cut into the next to meet its cutting: several of the
#: largest chunks (FastCDC's maximum is 4x the average), and cut twice, so kept
#: short (2 MB, a quarter more cutting, until 2026-11-27; two cuttings of random
#: bytes meet within a few chunks).
OVERLAP = 1024 * 1024
#: Files smaller than this are cut in the calling thread: the pipeline's other
#: stages already keep a second core busy, and workers cost a start-up.
PARALLEL_FROM = 16 * SEGMENT

Cut = tuple[int, int, str]  # (offset in the file, length, BLAKE3 hex digest)
#: Chunks cut in parallel, and their bytes when a buffer holds them (parallel_cuts).
Stretch = tuple[list[Cut], memoryview | None]


def workers() -> int:
    """Worker processes: one per core (0 with one core, or ``TETHER_CUT_WORKERS=0``)."""
    chosen = os.environ.get("TETHER_CUT_WORKERS")
    if chosen is not None and chosen.isdigit():
        return min(int(chosen), 16)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = min(8, cores or 1)
    return count if count > 1 else 0


def _read(path: str, start: int, length: int) -> memoryview:
    """``length`` bytes of ``path`` from ``start``, read into a buffer of their own."""
    view = aligned_buffer(length)
    fd = os.open(path, os.O_RDONLY)
    try:
        if pread_into(fd, view, start) < length:
            raise OSError(f"{path} shrank while it was being cut")
    finally:
        os.close(fd)
    return view


@contextlib.contextmanager
def _mapped(path: str, start: int, length: int) -> Iterator[memoryview]:
    """``length`` bytes of ``path`` from ``start``, mapped: the page cache's own pages.

    Only in a worker process: reading a segment into a buffer was a fifth of a
    worker's time, and mapping it costs next to nothing (the page cache maps large
    folios). If the file is truncated while mapped, touching the lost pages kills
    the process with SIGBUS: the worker's, never the caller's, which then cuts the
    segment itself with ``pread`` and reports that the file shrank.
    """
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size < start + length:
            raise OSError(f"{path} shrank while it was being cut")
        try:
            mapping = mmap.mmap(handle.fileno(), start + length - base, offset=base,
                                access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system that cannot map it: read it
            mapping = None
        if os.environ.get("TETHER_TEST_TRUNCATE_MAPPED"):  # test hook: the file shrinks now
            os.truncate(path, start)
    if mapping is None:
        yield _read(path, start, length)
        return
    view = memoryview(mapping)[start - base:]
    try:
        yield view
    finally:
        view.release()
        mapping.close()


def cut_segment(
    path: str, start: int, stop: int, avg_size: int, final: bool, *, mapped: bool = False
) -> list[Cut]:
    """The chunks of ``path[start:stop]`` cut as if one began at ``start``.

    Unless ``final`` (the segment reaches the end of the file), the last chunk
    ends only because the bytes do, so it is left out. ``mapped``: in a worker
    process, from a mapping of the file (see ``_mapped``).
    """
    if mapped and stop > start:
        with _mapped(path, start, stop - start) as view:
            return _cut(view, start, avg_size, final)
    return _cut(_read(path, start, stop - start), start, avg_size, final)


def _cut(view: memoryview, start: int, avg_size: int, final: bool) -> list[Cut]:
    cuts = [(c.offset, c.length) for c in FastCDC(avg_size=avg_size).cut_buf(view)]
    if not final and len(cuts) > 1:
        cuts.pop()
    return [
        (start + offset, length, blake3.blake3(view[offset : offset + length]).hexdigest())
        for offset, length in cuts
    ]


def _records_as_cuts(records: bytes, start: int) -> list[Cut]:
    """``native.cut``'s records as cuts of the file, the first at ``start``."""
    cuts: list[Cut] = []
    at = start
    for digest, length in RECORD.iter_unpack(records):
        cuts.append((at, length, digest.hex()))
        at += length
    return cuts


class Segment:
    """A segment's chunks, and the buffer holding its bytes from ``held_from`` (when
    the native core cut it: the caller writes packs from that buffer, no second read)."""

    __slots__ = ("cuts", "held", "held_from")

    def __init__(self, cuts: list[Cut], held: memoryview | None = None, held_from: int = 0):
        self.cuts, self.held, self.held_from = cuts, held, held_from

    def view_of(self, first: int, stop: int) -> memoryview | None:
        """The file's bytes ``[first, stop)`` in the held buffer, or None if not all there."""
        if self.held is None or first < self.held_from or stop > self.held_from + len(self.held):
            return None
        return self.held[first - self.held_from:stop - self.held_from]


def cut_segment_native(path: str, start: int, stop: int, avg_size: int, final: bool,
                       buffer: memoryview, lookback: int) -> Segment:
    """``cut_segment`` by the native core on the calling thread, without the GIL
    (native.py). ``buffer`` receives the file from ``start - lookback`` to ``stop``:
    the ``lookback`` bytes before the segment are not cut here, but the caller's
    stretch may begin there (in the chunk that straddles the previous segment's end).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if pread_into(fd, buffer, start - lookback) < len(buffer):
            raise OSError(f"{path} shrank while it was being cut")
    finally:
        os.close(fd)
    records = native.cut(buffer[lookback:], avg_size, keep_last=final)
    return Segment(_records_as_cuts(records, start), buffer, start - lookback)


def recut_held(segment: Segment, first: int, stop: int, avg_size: int, final: bool,
               path: str) -> list[Cut]:
    """The chunks of ``[first, stop)`` cut from ``first``: from the segment's buffer
    when it holds those bytes, else read again."""
    view = segment.view_of(first, stop)
    if view is None or not native.available:
        return cut_segment(path, first, stop, avg_size, final)
    return _records_as_cuts(native.cut(view, avg_size, keep_last=final), first)


class _Worker:
    """One worker process and its pipes (one request at a time)."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether._store.cutting"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )

    def cut(self, path: str, start: int, stop: int, avg_size: int, final: bool) -> list[Cut]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        request = {"path": path, "start": start, "stop": stop, "avg": avg_size, "final": final}
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise OSError("the cutting worker exited")
        answer = json.loads(line)
        if "error" in answer:
            raise OSError(answer["error"])
        return [(int(o), int(n), str(d)) for o, n, d in answer["cuts"]]

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except Exception:
            self.proc.kill()


class _Pool:
    """Idle workers, started on first use and kept for the process's life."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self.started = 0
        self.lock = threading.Lock()
        self.threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="tether-cut")
        self.all: list[_Worker] = []

    def _take(self) -> _Worker | None:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            if self.started < self.size:
                self.started += 1
                try:
                    worker = _Worker()
                except OSError:
                    return None  # cannot start one: cut here
                self.all.append(worker)
                return worker
        return self.idle.get()

    def cut(self, path: str, start: int, stop: int, avg_size: int, final: bool) -> list[Cut]:
        worker = self._take()
        if worker is None:
            return cut_segment(path, start, stop, avg_size, final)
        try:
            cuts = worker.cut(path, start, stop, avg_size, final)
        except (OSError, ValueError, KeyError, TypeError):
            worker.close()  # broken: replaced by a fresh one next time
            with self.lock:
                self.started -= 1
                self.all.remove(worker)
            return cut_segment(path, start, stop, avg_size, final)
        self.idle.put(worker)
        return cuts

    def submit(self, *args: Any) -> Future[list[Cut]]:
        return self.threads.submit(self.cut, *args)

    def submit_native(self, *args: Any) -> Future[Segment]:
        return self.threads.submit(cut_segment_native, *args)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        for worker in list(self.all):
            worker.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(workers())
            atexit.register(_pool.close)
        return _pool


def _start_index(cuts: list[Cut], offset: int) -> int | None:
    """Where in ``cuts`` (in file order) a chunk starts at ``offset``, if one does
    (a binary search: this runs for every segment of the file)."""
    i = bisect.bisect_left(cuts, offset, key=lambda cut: cut[0])
    return i if i < len(cuts) and cuts[i][0] == offset else None


def _stitch(agreed_end: int, previous_tail: list[Cut], segment: list[Cut]) -> list[Cut] | None:
    """``previous_tail`` (true chunks from ``agreed_end``) followed by ``segment``'s chunks
    from the first boundary both share; None when they share none."""
    at = _start_index(segment, agreed_end)
    if at is not None:
        return segment[at:]
    for i, (offset, length, _digest) in enumerate(previous_tail):
        at = _start_index(segment, offset + length)
        if at is not None:
            return previous_tail[: i + 1] + segment[at:]
    return None


def segments_ahead() -> int:
    """How many segments ``parallel_cuts`` hands to the cutting pool ahead of its
    caller: one per thread of the process's pool, plus one (the pool's size is
    fixed when it is first used; ``workers()`` may say otherwise later). 0 where
    nothing is cut in parallel (one core, or ``TETHER_CUT_WORKERS=0``)."""
    with _pool_lock:
        pool = _pool
    if pool is None:
        if workers() <= 1:
            return 0
        pool = _shared_pool()
    return pool.size + 1


def parallel_cuts(path: Path, size: int, avg_size: int, first: int = 0,
                  buffer: Callable[[int, int], memoryview] | None = None,
                  ahead: int | None = None) -> Iterator[Stretch]:
    """The file's chunks from ``first`` (a chunk boundary), a stretch at a time, in order,
    exactly as one cutting finds them, each with its bytes when they are at hand.

    With the native core and ``buffer`` (``buffer(size, at)``: room for the file's
    bytes from offset ``at``, asked for in order, one per segment), segments are cut
    on threads, each read into its buffer once; the stretch's bytes are then a view
    of that buffer, valid until ``buffer`` hands it out again. Otherwise worker
    processes cut and the view is None (read the stretch yourself).

    At most ``ahead`` segments (``segments_ahead()`` unless given) are cut ahead
    of the caller: a ``buffer`` must not hand a buffer out again within that many
    calls of the caller's oldest stretch still in use.
    """
    pool = _shared_pool()
    ahead = max(1, ahead if ahead is not None else pool.size + 1)
    held = buffer is not None and native.available
    lookback = 4 * avg_size  # FastCDC's largest chunk: see cut_segment_native
    starts = list(range(first, size, SEGMENT))
    pending: deque[tuple[int, Future[Any]]] = deque()
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        start = starts[submitted]
        stop = min(size, start + SEGMENT + OVERLAP)
        if held:
            assert buffer is not None
            back = min(lookback, start - first)
            into = buffer(stop - start + back, start - back)
            future: Future[Any] = pool.submit_native(str(path), start, stop, avg_size,
                                                     stop == size, into, back)
        else:
            future = pool.submit(str(path), start, stop, avg_size, stop == size)
        pending.append((start, future))
        submitted += 1

    def stretch(chunks: list[Cut], segment: Segment) -> Stretch:
        return chunks, segment.view_of(chunks[0][0], chunks[-1][0] + chunks[-1][1])

    try:
        while submitted < len(starts) and len(pending) < ahead:
            submit()
        agreed_end = first  # every chunk before this offset has been yielded
        carried: list[Cut] = []  # true chunks from agreed_end, not yielded yet
        while pending:
            start, future = pending.popleft()
            if submitted < len(starts):
                submit()
            result = future.result()
            segment = result if isinstance(result, Segment) else Segment(result)
            chunks = (segment.cuts if start == first
                      else _stitch(agreed_end, carried, segment.cuts))
            if chunks is None:
                # No shared boundary in the overlap: cut this stretch again, from
                # the last boundary both cuttings agree on.
                stop = min(size, start + SEGMENT + OVERLAP)
                chunks = recut_held(segment, agreed_end, stop, avg_size, stop == size, str(path))
            boundary = start + SEGMENT
            if boundary >= size:
                if chunks:
                    yield stretch(chunks, segment)
                return
            # Yield what the next segment cannot change: the chunks ending by its start.
            ready = chunks[:bisect.bisect_right(chunks, boundary, key=lambda c: c[0] + c[1])]
            carried = chunks[len(ready):]
            if ready:
                yield stretch(ready, segment)
                agreed_end = ready[-1][0] + ready[-1][1]
    finally:
        settle([future for _start, future in pending])


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A worker's loop: one JSON request per line in, one JSON answer per line out."""
    for line in requests:
        try:
            r = json.loads(line)
            answer: dict[str, Any] = {
                "cuts": cut_segment(
                    r["path"], r["start"], r["stop"], r["avg"], r["final"], mapped=True
                )
            }
        except Exception as error:  # reported to the parent, which cuts the segment itself
            answer = {"error": f"{type(error).__name__}: {error}"}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        # A worker killed by SIGBUS (its file truncated under it: see _mapped) leaves
        # no core dump behind.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    _serve(sys.stdin.buffer, sys.stdout.buffer)

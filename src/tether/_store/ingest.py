"""Ingest: a file's bytes into the chunk store, read, cut, hashed, compressed and written
in bounded memory on both cores.

This thread reads and cuts a file in windows (threads cut a large file in segments:
cutting.py); a pool hashes and compresses whole windows (BLAKE3 and zstd release the
GIL); a pack writer (``PackWriter``) appends new chunks to a pack and publishes full
packs, then their indexes, on threads of its own. A new version of a file is cut by
following its previous version's chunks where the bytes still match (following.py).
A pin keeps the chunks an ingest references from gc until its version commits.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
from pyfastcdc.cy import FastCDC

from .._envflags import env_off
from .._errors import NotFound, StoreError
from . import cutting, native
from .base import LISTED_CHUNKS, ChunkRef, FileEntry, IngestReport
from .cache import dead_scratch, remove_paths
from .chunklist import ChunkList, ChunkListBuilder, ListBudget
from .chunkstore import RAW, REMOTE_PACK_TARGET
from .fileio import ALIGN, aligned_buffer, pread_into
from .following import Hint, Window, followed_windows, hash_cuts
from .handoffs import prompt_handoffs
from .locking import owner_tag
from .pack_file import PackFile, drop_spare_buffers
from .progress import Progress

if TYPE_CHECKING:
    from .chunkstore import ChunkStore

#: FastCDC's average chunk size.
AVG_CHUNK = 64 * 1024
#: A network upload's packs are 1/_REMOTE_PACK_SHARE of it, at most REMOTE_PACK_MAX and at
#: least chunkstore.REMOTE_PACK_TARGET (see there).
REMOTE_PACK_MAX = 16 * 1024 * 1024
_REMOTE_PACK_SHARE = 100
#: Ingest reads and cuts a file in windows of this size ...
_WINDOW = 8 * 1024 * 1024
#: ... with at most this many windows being hashed and compressed at once.
_AHEAD = 3
#: Hashing and compressing threads (BLAKE3 and zstd release the GIL).
_WORKERS = max(2, min(4, os.cpu_count() or 2))
#: An ingest of this many bytes or more writes its packs around the page cache
#: (pack_file._DirectWrites): gigabytes of new packs would push what is cached out
#: and cost the writer a second of CPU per GB, while a small model's pack is best
#: written, and read back, through the cache.
_DIRECT_FROM = 256 * 1024 * 1024
#: Pins of more chunks than this are written this many at a time through a file.
_PIN_PIECE = 50_000
#: A pack writer remembers the chunks of packs it indexed until this many bytes of
#: later packs are indexed: more than the windows an ingest looks up ahead.
_HELD_BYTES = (_AHEAD + 2) * _WINDOW
#: Follow the previous version's chunks when cutting a new one (following.py);
#: ``TETHER_FOLLOW=0`` cuts every file from scratch (same chunks, slower).
_FOLLOW = not env_off("TETHER_FOLLOW")


def _pinned_text(files: Sequence[FileEntry]) -> Iterator[bytes]:
    """The chunk digests of ``files`` to pin as pieces of a JSON list's inside
    (``"<64 hex>", "<64 hex>"``), in file order: whoever reads a pin makes a set of
    it, so a repeat costs a line. A small pin's are unique and sorted (tidy).

    In numpy, ``_PIN_PIECE`` records at a time: a str per digest, sorted and dumped
    as JSON, took 40 ms of a 2 GB log (80 beside the log's other threads), and the
    set of a million hex digests was 150 MB."""
    import numpy as np

    lists = [f.chunks for f in files if len(f.chunks)]
    if sum(len(c) for c in lists) < _PIN_PIECE:  # small: tidy
        if lists:
            yield _quoted(np.unique(np.concatenate([c.rows()["digest"] for c in lists])))
        return
    first = True
    for chunks in lists:
        for piece in chunks.pieces(_PIN_PIECE):
            text = _quoted(np.frombuffer(piece, dtype=[("d", "S32"), ("s", "<u8")])["d"])
            yield text if first else b", " + text
            first = False


def _quoted(digests: Any) -> bytes:
    """``"<hex>", "<hex>"`` of an array of 32-byte digests (numpy ``S32``)."""
    import numpy as np

    count = len(digests)
    out = np.empty((count, 68), dtype=np.uint8)
    out[:, 0] = out[:, 65] = ord('"')
    out[:, 1:65] = np.frombuffer(digests.tobytes().hex().encode(), dtype=np.uint8).reshape(
        count, 64)
    out[:, 66], out[:, 67] = ord(","), ord(" ")
    return out.tobytes()[:-2]


#: Chunks from this size are aligned in packs (see ``PackWriter.add``); smaller ones
#: (a small file's) are not worth the padding.
_ALIGN_FROM = 4096
_PADDING = bytes(ALIGN)


class _BufferRing:
    """The window buffers of one file's ingest, reused round robin.

    A fresh 16-32 MB buffer per window costs more than reading the window:
    the kernel maps and zeroes new pages every time (about 1 GB/s here,
    against 5 GB/s for reading into a buffer already mapped). When a buffer is
    asked for, ingest holds at most ``_AHEAD - 1`` windows not yet taken (their
    chunks being hashed and compressed: it takes one as soon as ``_AHEAD`` are
    held) and one more whose file digest is being computed; the window being
    walked (a followed ingest reads the next one ahead, following.py) is the
    fourth, and the one asked for the fifth. No view of a window is kept once
    it has been taken and hashed (packs are written as chunks arrive), so
    ``_AHEAD + 2`` buffers are never overwritten in use, with none to spare: a
    review that poisoned each buffer as it was handed out found loads correct
    with five and a wrong file digest with four.

    With the native core, a large file's segments are read by the cutting threads
    into buffers of the ring taken when each segment is submitted, up to
    ``cutting.segments_ahead()`` ahead of the window being walked, and never more
    than the ring's ``ahead`` (cutting.parallel_cuts is told it): ``ahead`` adds as
    many buffers, so the ring holds one to spare
    (tests/test_store_cutting.py poisons each buffer as it is handed out: the file
    stored right with one buffer fewer, wrong with two fewer).
    """

    SIZE = _AHEAD + 2

    def __init__(self, ahead: int = 0) -> None:
        """``ahead``: buffers asked for ahead of the window being walked (segments
        being cut on threads before their turn: cutting.parallel_cuts)."""
        self.ahead = ahead
        self.size = self.SIZE + ahead
        self._buffers: list[memoryview] = []  # page-aligned: see fileio.aligned_buffer
        self._handed = 0

    def next(self, size: int, at: int = 0) -> memoryview:
        """``size`` bytes of the next buffer, for the file's bytes from offset ``at``:
        placed as the page cache holds them (``at`` modulo 64), so the kernel copies
        them at full speed (see fileio.aligned_buffer), and so do pack writes."""
        turn = self._handed % self.size  # the buffer handed out size calls ago
        self._handed += 1
        shift = at % ALIGN
        if turn == len(self._buffers):  # never smaller than a window: windows vary a little
            self._buffers.append(aligned_buffer(max(shift + size, _WINDOW + _WINDOW // 8)))
        elif len(self._buffers[turn]) < shift + size:
            self._buffers[turn] = aligned_buffer(shift + size)
        return self._buffers[turn][shift:shift + size]


def _cut_window(cdc: FastCDC, view: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of ``view``: with the native core in one call
    without the GIL (pyfastcdc takes it back for every chunk: see native.py)."""
    if not native.available:
        return [(c.offset, c.length) for c in cdc.cut_buf(view)]
    cuts, at = [], 0
    for length in native.lengths(native.cut(view, cdc.avg_size, keep_last=True, hash=False)):
        cuts.append((at, length))
        at += length
    return cuts


def _cut_or_fail(stretches: Iterator[cutting.Stretch], path: Path) -> Iterator[cutting.Stretch]:
    """``stretches``, with a failure to read the file while cutting it as a StoreError."""
    try:
        yield from stretches
    except OSError as error:
        raise StoreError(f"{path} could not be read while it was being stored: {error}",
                         hint="check that the file is readable, and log a file nobody "
                         "is writing") from error


class PackWriter:
    """Appends chunks to a temp file; publishes it (then its index) when full.

    Publishing (fsync and rename, or an upload) runs on background threads
    while the next pack fills; at most ``store.upload_streams`` packs wait to
    be published, so what is in flight is bounded (and on disk, not in memory).
    """

    def __init__(self, store: ChunkStore, target: int | None = None, *,
                 direct: bool = False) -> None:
        self.store = store
        self.target = target or store.pack_target
        #: Write packs around the page cache where the store is on this disk
        #: (pack_file._DirectWrites): for a large ingest (see _DIRECT_FROM).
        self.direct = direct
        self.body: PackFile | None = None  # the pack being filled
        self.size = 0
        self.entries: list[list[Any]] = []
        self.published: list[str] = []
        self._publisher: ThreadPoolExecutor | None = None
        self._inflight: deque[Future[None]] = deque()
        self._streams = max(1, store.upload_streams)
        #: The chunks written and not yet indexed, and those of the last packs indexed
        #: (``_HELD_BYTES`` of them): what an ingest must not write twice although the
        #: index did not list them when its windows were looked up. Older ones are
        #: found in the index; a set of every new chunk grew 150 bytes a chunk.
        self._held: set[str] = set()
        self._indexed: deque[tuple[int, list[str]]] = deque()
        self._indexed_bytes = 0
        self._held_lock = threading.Lock()
        self._queued: list[bytes | memoryview] = []  # chunks added, not yet written

    def holds(self, digest: str) -> bool:
        """Whether this writer wrote ``digest`` lately (see ``_held``)."""
        return digest in self._held

    def add(self, digest: str, payload: bytes | memoryview, raw_size: int, codec: int,
            at: int | None = None) -> int:
        """Queue one chunk for the current pack; ``write_out`` writes the queue.

        The caller keeps ``payload`` unchanged until then: ingest calls
        ``write_out`` once per window, so one ``writev`` writes a window's new
        chunks. One ``write`` a chunk took the GIL back 16 times per MB, and
        with the hashing threads running that cost more than the copy.

        ``at``: where the chunk starts in its file. A raw chunk is then placed at
        the same offset modulo 64 in the pack (a few bytes of padding where the
        file's chunks stop following each other), so the kernel's copies of it,
        into the pack now and into the loaded file later, run at full speed
        (see fileio.aligned_buffer). Returns the bytes the pack grew by.
        """
        if self.body is None:
            self.body = PackFile(self.store.blobs, direct=self.direct)
            self.size = 0
            self.entries = []
        pad = 0
        if at is not None and codec == RAW and raw_size >= _ALIGN_FROM:
            pad = (at - self.size) % ALIGN
            if pad:
                self._queued.append(_PADDING[:pad])
                self.size += pad
        self._queued.append(payload)
        self.entries.append([digest, self.size, len(payload), raw_size, codec])
        with self._held_lock:
            self._held.add(digest)
        self.size += len(payload)
        if self.size >= self.target:
            self.flush()
        return pad + len(payload)

    def write_out(self) -> None:
        """Write the queued chunks to the current pack."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        assert self.body is not None
        try:
            self.body.write(queued)
        except BaseException:
            self.abort()
            raise

    def flush(self) -> None:
        """Close the current pack and hand it to the publisher (waiting for the previous one)."""
        if self.body is None:
            return
        self.write_out()
        body, self.body = self.body, None
        try:
            body.seal()
        except BaseException:
            body.discard()
            self.abort()
            raise
        size, entries = self.size, self.entries
        self.entries = []
        try:
            while len(self._inflight) >= self._streams:
                self._inflight.popleft().result()
            if self._publisher is None:
                self._publisher = ThreadPoolExecutor(max_workers=self._streams,
                                                     thread_name_prefix="tether-publish")
            self._inflight.append(self._publisher.submit(self._publish, body, size, entries))
        except BaseException:
            body.discard()  # an earlier pack failed: this one is never published
            raise
        if os.environ.get("TETHER_TEST_CRASH_BEFORE_PACK") or os.environ.get(
                "TETHER_TEST_CRASH_BEFORE_INDEX"):
            self._wait()  # test hooks: die with exactly this pack in flight

    def finish(self) -> None:
        """Publish what is left and wait until every pack is durable and indexed."""
        try:
            self.flush()
            self._wait()
        finally:
            self._close_publisher()
            drop_spare_buffers()

    def _wait(self) -> None:
        """Wait for every pack in flight; the first failure is raised once all are done."""
        failure: BaseException | None = None
        while self._inflight:
            try:
                self._inflight.popleft().result()
            except BaseException as error:
                failure = failure or error
        if failure is not None:
            raise failure

    def _close_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
            self._publisher = None

    def _publish(self, body: PackFile, size: int, entries: list[list[Any]]) -> None:
        pack_id = uuid.uuid4().hex
        if os.environ.get("TETHER_TEST_CRASH_BEFORE_PACK"):  # test hook: die mid-ingest
            os._exit(99)
        body.publish(self.store.blobs, f"packs/{pack_id}.pack")
        if os.environ.get("TETHER_TEST_CRASH_BEFORE_INDEX"):  # test hook: a pack, no index
            os._exit(98)
        index = {"pack": pack_id, "size": size, "chunks": entries}
        try:
            self.store.blobs.put_bytes(f"index/{pack_id}.idx", json.dumps(index).encode())
        except BaseException:
            if self.store.blobs.is_local:  # the index is surely not there: neither is the pack
                with contextlib.suppress(Exception):
                    self.store.blobs.delete(f"packs/{pack_id}.pack")
            raise
        self.store.index.add(pack_id, size, entries)
        self.store.index.note_journal(pack_id)
        self.published.append(pack_id)
        with self._held_lock:  # indexed now: held a little longer, then left to the index
            self._indexed.append((size, [e[0] for e in entries]))
            self._indexed_bytes += size
            while len(self._indexed) > 1 and self._indexed_bytes > _HELD_BYTES:
                gone_size, gone = self._indexed.popleft()
                self._indexed_bytes -= gone_size
                self._held.difference_update(gone)

    def abort(self) -> None:
        self._queued = []
        body, self.body = self.body, None
        if body is not None:
            body.discard()
        with contextlib.suppress(BaseException):
            self._wait()
        self._close_publisher()
        drop_spare_buffers()


def ingest_files(store: ChunkStore, root: Path, paths: Sequence[str], *, progress: bool = False,
           pin_also: Iterable[FileEntry] = (),
           previous: Mapping[str, Sequence[ChunkRef]] | None = None) -> IngestReport:
    """Store ``paths`` (under ``root``); the pin also covers the chunks of ``pin_also``
    (files the caller reuses without reading them again, e.g. from the stat cache).

    ``previous`` maps a path to the chunks of its previous version: cutting
    follows them where the bytes still match (see following.py).
    """
    from .locking import ingest_lock

    if store.cache_dir is not None:
        remove_paths(dead_scratch(store.cache_dir / "tmp").paths)  # crashed processes' copies
    started = time.time()
    published: list[str] = []
    try:
        with ingest_lock(store), prompt_handoffs():
            with contextlib.suppress(Exception):  # an optimisation: never fails an ingest
                store.maybe_consolidate()  # before ours: a failed ingest undoes only its own
            report = _ingest(store, root, paths, progress=progress, published=published,
                                  pin_also=list(pin_also), previous=previous or {})
            with contextlib.suppress(Exception):  # an optimisation: never fails an ingest
                store.index.merge_own(published, report.new_chunks)
            return report
    except BaseException:
        if published:
            _undo_ingest(store, published, started)
        raise

def _undo_ingest(store: ChunkStore, published: list[str], started: float) -> None:
    """Delete the packs a failed ingest published, unless another ingest may use them.

    Safe only while no other ingest runs (one may have read the index listing
    them) and no ingest that finished since ours started pinned their chunks.
    Otherwise they stay, and gc collects them once unreferenced.
    """
    from .locking import exclusive_now

    with contextlib.suppress(Exception), exclusive_now(store) as alone:
        if not alone:
            return
        listed = {i.key for i in store.blobs.list("index/")}
        if any(f"index/{pack}.idx" not in listed for pack in published):
            return  # merged into a merged index meanwhile: gc collects them
        ours = store.index.digests_in(set(published))
        for pin in store.blobs.list("pins/"):
            if pin.mtime < started - 2:
                continue
            with contextlib.suppress(NotFound, ValueError, KeyError, TypeError):
                if ours & set(json.loads(store.blobs.get_bytes(pin.key))["chunks"]):
                    return
        for pack in published:
            store.blobs.delete(f"index/{pack}.idx")
            store.blobs.delete(f"packs/{pack}.pack")
            store.index.forget_pack(pack)

def _pack_target_for(store: ChunkStore, total: int) -> int:
    if not store._adaptive_packs:
        return store.pack_target
    return max(REMOTE_PACK_TARGET, min(REMOTE_PACK_MAX, total // _REMOTE_PACK_SHARE))

def _ingest(store: ChunkStore, root: Path, paths: Sequence[str], *, progress: bool,
            published: list[str], pin_also: list[FileEntry],
            previous: Mapping[str, Sequence[ChunkRef]]) -> IngestReport:
    store.refresh()
    report = IngestReport(files=[])
    total = sum((root / p).stat().st_size for p in paths)
    writer = PackWriter(store, _pack_target_for(store, total), direct=total >= _DIRECT_FROM)
    writer.published = published
    # Window buffers shared by every file of this ingest; with the native core,
    # segments being cut ahead hold one each (cutting.parallel_cuts).
    ring = _BufferRing(ahead=cutting.segments_ahead() if native.available else 0)
    bar = Progress("storing", total, enabled=progress)
    try:
        with ThreadPoolExecutor(max_workers=_WORKERS,
                                thread_name_prefix="tether-ingest") as pool:
            budget = ListBudget()  # the chunk lists built so far kept in memory
            for rel in paths:
                hint = Hint.of(previous.get(rel, ())) if _FOLLOW else None
                entry = _ingest_file(store, root / rel, rel, writer, report, bar,
                                          pool, ring, hint)
                report.files.append(_list_kept(store, entry, budget))
        writer.finish()
        # Pins protect reused chunks from a concurrent gc until the version commits.
        report.pin = f"pins/{uuid.uuid4().hex}.json"
        _write_pin(store, report.pin, _pinned_text([*report.files, *pin_also]))
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close(f"{report.new_chunks} new chunks, {report.reused_chunks} reused")
    return report

def _write_pin(store: ChunkStore, key: str, chunks: Iterable[bytes]) -> None:
    """``{"created", "owner", "chunks"}`` at ``key``, the digests' JSON text given in
    pieces (``_pinned_text``); one of many pieces written through a file (a million
    digests at once were 150 MB)."""
    head = json.dumps({"created": time.time(), "owner": owner_tag()})[:-1].encode()
    stream = iter(chunks)
    first, second = next(stream, b""), next(stream, None)
    if second is None:
        store.blobs.put_bytes(key, head + b', "chunks": [' + first + b"]}")
        return
    fd, path = store.blobs.temp_file()
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head + b', "chunks": [')
            for piece in itertools.chain((first, second), stream):
                out.write(piece)
            out.write(b"]}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    store.blobs.put_file(key, path)

def _windows(store: ChunkStore, path: Path, ring: _BufferRing, hint: Hint | None,
             pool: ThreadPoolExecutor) -> Iterator[Window]:
    """The file as windows of about ``_WINDOW`` bytes, cut into chunks.

    Yields (window, cuts, end, digests): the chunks of ``window`` up to
    ``end``, with their digests when the parallel cutting computed them (a large
    file, several cores: see cutting.py). The last chunk of a window may
    only be cut there because the window ends, so it is carried into the
    next one and cut again: the chunks are exactly those of cutting the
    whole file at once, in bounded memory.
    """
    size = path.stat().st_size
    parallel = size >= cutting.PARALLEL_FROM and cutting.workers() > 1
    start = 0
    if hint is not None and size:
        with open(path, "rb", buffering=0) as handle:
            start = yield from followed_windows(
                handle.fileno(), size, hint, avg_size=AVG_CHUNK, window=_WINDOW,
                buffer=ring.next, pool=pool, give_up=parallel)
        if start >= size:
            return
    if parallel:
        yield from _parallel_windows(store, path, size, ring, start)
        return
    cdc = FastCDC(avg_size=AVG_CHUNK)
    carry = b""
    left = size  # as stat said: one byte more is asked for, so growth is still read
    position = 0  # of the next byte to read
    with open(path, "rb", buffering=0) as handle:
        while True:
            view = ring.next(len(carry) + min(_WINDOW, left + 1), at=position - len(carry))
            view[:len(carry)] = carry
            got = pread_into(handle.fileno(), view[len(carry):], position)
            position += got
            filled = len(carry) + got
            eof = filled < len(view)
            left = max(0, left - got)
            view = view[:filled]
            if not filled:
                return
            cuts = _cut_window(cdc, view)
            if not eof and len(cuts) > 1:
                last_offset = cuts.pop()[0]
                carry = bytes(view[last_offset:])
            else:
                carry = b""
            end = cuts[-1][0] + cuts[-1][1]
            yield view, cuts, end, None
            if eof:
                return

def _parallel_windows(store: ChunkStore, path: Path, size: int, ring: _BufferRing,
                      start: int = 0) -> Iterator[Window]:
    """``_windows`` of a large file from ``start`` (a chunk boundary), cut and
    hashed on every core: by threads reading each segment into a buffer of the
    ring once (the native core), else by worker processes, each stretch then
    read here."""
    held = native.available and ring.ahead > 0  # ring buffers for segments cut ahead
    with open(path, "rb", buffering=0) as handle:
        fd = handle.fileno()
        stretches = cutting.parallel_cuts(path, size, AVG_CHUNK, start,
                                          buffer=ring.next if held else None,
                                          ahead=ring.ahead if held else None)
        for stretch, view in _cut_or_fail(stretches, path):
            first = stretch[0][0]
            end = stretch[-1][0] + stretch[-1][1] - first
            if view is None:
                # The ring hands its buffers out in order; while segments hold
                # them ahead of this stretch, one of its own is safer.
                view = aligned_buffer(end) if held else ring.next(end, at=first)
                if pread_into(fd, view, first) < end:
                    raise StoreError(f"{path} shrank while it was being stored",
                                     hint="log a file nobody is writing")
            cuts = [(offset - first, length) for offset, length, _ in stretch]
            yield view, cuts, end, [digest for _, _, digest in stretch]

def _digest_window(store: ChunkStore, view: memoryview, cuts: list[tuple[int, int]],
                   digests: list[str] | None = None,
                   ) -> list[tuple[str, int, bytes | memoryview | None, int]]:
    """(digest, size, stored payload or None when already stored, codec) per chunk.

    ``digests`` were computed by the process that cut the window; a wrong one
    cannot harm the store: the file's digest is computed here from the bytes,
    and every chunk read back is checked against the digest it is stored under.
    """
    if digests is None:
        digests = hash_cuts(view, cuts)
    out: list[tuple[str, int, bytes | memoryview | None, int]] = []
    for (offset, length), digest, known in zip(cuts, digests, store.index.known_all(digests),
                                               strict=True):
        if known:
            out.append((digest, length, None, RAW))
        else:
            payload, codec = store._encode(view[offset:offset + length])
            out.append((digest, length, payload, codec))
    return out

def _list_kept(store: ChunkStore, entry: FileEntry, budget: ListBudget) -> FileEntry:
    """``entry`` with its chunk list in a scratch file once the lists kept in memory
    pass the budget (each list spilled on its own only past ``SPILL_BYTES``: a
    hundred 5 GB shards, 80,000 chunks each, held 320 MB). Lists of up to
    ``LISTED_CHUNKS`` chunks stay: one file each for thousands of small files
    would run out of descriptors."""
    chunks = entry.chunks
    if chunks.in_file:
        return entry
    if len(chunks) <= LISTED_CHUNKS:
        budget.hold(len(chunks.records))
        return entry
    if budget.keeps(len(chunks.records)):
        return entry
    try:
        kept = ChunkList.kept_in_file(chunks.pieces(),
                                      lambda: store.scratch_file("chunk-list"))
    except (OSError, StoreError):
        budget.hold(len(chunks.records))  # no scratch file: in memory
        return entry
    return replace(entry, chunks=kept)

def _ingest_file(store: ChunkStore, path: Path, rel: str, writer: PackWriter,
                 report: IngestReport, bar: Progress, pool: ThreadPoolExecutor,
                 ring: _BufferRing, hint: Hint | None) -> FileEntry:
    """Read, cut, hash, compress and write one file, a bounded number of windows at once.

    This thread reads and cuts (or threads cut large files in segments:
    cutting.py); the workers hash and compress whole windows (BLAKE3 and zstd
    release the GIL);
    results are taken in order, so the pack is written as they arrive. The
    file digest is computed on a thread of its own (the second BLAKE3 pass
    over every byte: on this thread it was a third of a followed ingest),
    one window behind. At most ``_AHEAD`` windows are in flight, plus the
    one being hashed whole (see ``_BufferRing`` for what the ring holds).
    """
    # One thread: the cutting threads and the pool keep both cores busy, and
    # BLAKE3's own threads competed with them (2 GB all new: 593 against 553 MB/s,
    # a 5% change: 1,080 against 996, medians of interleaved rounds).
    hasher = blake3.blake3()
    # 40 bytes a chunk, in a scratch file past 100,000 chunks (see chunklist.py).
    chunks = ChunkListBuilder(lambda: store.scratch_file("chunk-list"))
    size = 0
    pending: deque[tuple[memoryview, int, Future[Any]]] = deque()
    whole = (ThreadPoolExecutor(1, thread_name_prefix="tether-file-digest")
             if path.stat().st_size > _WINDOW else None)
    hashing: deque[Future[Any]] = deque()

    def take() -> None:
        nonlocal size
        view, end, future = pending.popleft()
        if whole is None:
            hasher.update(view[:end])
        else:
            hashing.append(whole.submit(hasher.update, view[:end]))
            if len(hashing) > 1:
                hashing.popleft().result()
        at, size = size, size + end  # the window's first byte in the file, and past it
        saved = 0
        for digest, length, payload, codec in future.result():
            chunks.append(digest, length)
            at += length
            if payload is None or writer.holds(digest):  # stored, or written just now
                report.reused_chunks += 1
                saved += length
                continue
            report.stored_bytes += writer.add(digest, payload, length, codec, at=at - length)
            report.new_chunks += 1
        writer.write_out()  # before the window's buffer can be read into again
        report.logical_bytes += end
        bar.advance(end, saved=saved)

    try:
        for view, cuts, end, digests in _windows(store, path, ring, hint, pool):
            pending.append((view, end, pool.submit(_digest_window, store, view, cuts, digests)))
            if len(pending) >= _AHEAD:
                take()
        while pending:
            take()
        while hashing:
            hashing.popleft().result()
    except BaseException:
        chunks.discard()
        raise
    finally:
        for _view, _end, future in pending:
            future.cancel()
        if whole is not None:
            whole.shutdown(wait=True)  # no thread may still read a window
    if size == 0:
        return FileEntry(rel, 0, blake3.blake3(b"").hexdigest(), ChunkList())
    return FileEntry(rel, size, hasher.hexdigest(), chunks.build())

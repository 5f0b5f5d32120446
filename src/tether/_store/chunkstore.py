"""The deduplicating chunk store: FastCDC chunks, BLAKE3 names, zstd, packs.

Layout (the same on a folder and in a bucket):

    packs/<id>.pack    chunk bytes back to back (zstd or raw), tens of MB each
    index/<id>.idx     JSON: the pack's size and [digest, offset, length, raw size, codec]
    pins/<id>.json     chunks an ingest referenced, so gc spares them until the
                       version that needs them is committed (or the grace ends)

    quarantine/        packs and indexes `verify_packs` (or the server) found
                       lying about their chunks: out of use, never deleted

A pack is durable before its index is written, and readers trust only chunks
an index lists, so a writer killed at any point leaves at most unindexed bytes
(collected by gc), never an index pointing at missing data. Pack ids are
random, so concurrent writers never collide; a chunk two writers stored at
once lives in two packs until gc repacks.

An index is a claim, not a proof: every chunk read is checked against its
digest, and a chunk several packs claim keeps every candidate location, so a
pack whose bytes do not match (damaged, or uploaded to squat on another
version's chunks) costs a fallback read, never a failed load while an honest
copy exists.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import zstandard

from .._errors import IntegrityError, NotFound, RangeNotSatisfiable, StoreError
from . import native
from .base import (
    ChunkRef,
    FileEntry,
    GcReport,
    IngestReport,
    PackCheck,
    StoreStats,
    VerifyReport,
)
from .blobs import Blobs, MalformedObject, make_temp, open_regular, scratch_root
from .cache import ChunkCache, dead_scratch
from .chunk_index import ChunkIndex, Location, index_name
from .chunklist import ChunkList
from .fileio import ALIGN, BufferPool, pread_into, write_pieces
from .handoffs import prompt_handoffs
from .locking import SEP, Owner, is_alive_here, is_dead, leases, owner_tag
from .progress import Progress

PACK_TARGET = 32 * 1024 * 1024
#: Packs sent over a network (a server's gateway, S3) are smaller: an upload cut
#: off at any point resends at most the packs in flight, not tens of MB each.
#: They are 1/_REMOTE_PACK_SHARE of the upload, within these bounds: a few
#: requests for a large file (one per 2 MB was most of the time through a
#: server), and still under 5% sent again after a kill (streams + 1 packs, each
#: up to a chunk past its target: 4.1-4.5% at most, from 200 MB to 1.6 GB up).
#: 1/100 rather than 1/200: a 2 GB log through a server took 128 packs of 16 MB
#: instead of 200 of 10 MB, each a request, a file and its fsync on the server,
#: and ran at 491 against 428 MB/s (three interleaved rounds each, all faster).
REMOTE_PACK_TARGET = 2 * 1024 * 1024
#: Packs uploaded at once to a network store (a local store publishes one at a time).
REMOTE_UPLOAD_STREAMS = 3
RAW, ZSTD = 0, 1
#: Compress only when a sample shrinks below this fraction of its size. Float
#: weights typically shrink ~10%, and decompressing them runs at ~650 MB/s on
#: one core, slower than reading raw bytes: loads matter more than 10%.
_WORTH_COMPRESSING = 0.85
_SAMPLE = 4096
_READ_THREADS = 4
#: Largest single read when loading: adjacent chunks of a pack are read together.
_RUN_BYTES = 8 * 1024 * 1024
#: ... and over a network, where a response is held twice while it is joined.
_REMOTE_RUN_BYTES = 2 * 1024 * 1024
#: Loads and verifies keep at most this many runs (of <= _RUN_BYTES) in flight.
_RUNS_AHEAD = 6
#: gc (``chunk_gc``) moves the live chunks of packs under pack_target / this into
#: shared packs (and never those of a network upload's full size: see REMOTE_PACK_TARGET).
_SMALL_PACK_PART = 8
#: Loads and verify locate a file's chunks this many at a time (bounded memory).
_LOCATE_PIECE = 16384
#: A load of up to this many chunks (4 GB at 64 KiB) pins them in the chunk cache.
_CACHE_PIN_MAX = 65536


#: ``store stats`` reports ingest pins older than this (gc's default grace) as stale.
_PIN_REPORT_SECONDS = 3600.0
#: A pin from another host (a remote client between upload and commit) is kept this long
#: even by `gc --grace 0`: its owner cannot be asked whether it is still alive.
_PIN_MIN_SECONDS = 900.0


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: No chunk is ever this large (FastCDC cuts at a few hundred KiB); an index or
#: a frame header claiming more is refused before anything is allocated.
_MAX_CHUNK = 64 * 1024 * 1024


def _unpack(payload: bytes | memoryview, codec: int, size: int,
            digest: str) -> tuple[bytes | memoryview | None, str]:
    """Decode a stored chunk and check it is ``size`` bytes hashing to ``digest``.

    Returns the bytes, or None and what is wrong. Never trusts the payload: the
    output is bounded by ``size`` whatever a zstd frame header claims.
    """
    if codec == RAW:
        data = payload
    elif codec == ZSTD:
        if not 0 <= size <= _MAX_CHUNK:
            return None, f"claims an impossible size ({size} bytes)"
        try:
            declared = zstandard.frame_content_size(payload)
            if declared not in (-1, size):
                return None, "does not match its digest (wrong size)"
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
        except zstandard.ZstdError as error:
            return None, f"is corrupt ({error})"
    else:
        return None, f"has an unknown codec {codec!r}"
    if len(data) != size or blake3.blake3(data).hexdigest() != digest:
        return None, "does not match its digest"
    return data, ""


def _raw_matches(view: memoryview, chunks: Sequence[ChunkRef], locs: Sequence[Location],
                 base: int) -> list[bool]:
    """Which chunks of a run read into ``view`` (from pack offset ``base``) are stored
    raw and hash to their digests (see ``_raw_checked``)."""
    return _raw_checked(view, [(loc.offset - base, loc.length, chunk.size, loc.codec,
                                chunk.digest) for chunk, loc in zip(chunks, locs, strict=True)])


def _raw_checked(view: memoryview, pieces: Sequence[tuple[int, int, int, int, str]],
                 ) -> list[bool]:
    """For each piece of ``view`` (start, stored length, raw size, codec, digest):
    whether it is stored raw and hashes to its digest, checked in one call without
    the GIL (native.py). All False without the native core, or for pieces it cannot
    check that way (a location outside the view, as a hostile index could claim):
    those are checked one by one, as ``_unpack`` always does."""
    matched = [False] * len(pieces)
    if not native.available:
        return matched
    raw = [i for i, (_start, length, size, codec, _digest) in enumerate(pieces)
           if codec == RAW and length == size]
    try:
        found = native.digests(view, [(pieces[i][0], pieces[i][1]) for i in raw])
    except (ValueError, OverflowError):  # outside the view: hostile or stale
        return matched
    for i, digest in zip(raw, found, strict=True):
        matched[i] = digest == pieces[i][4]
    return matched


#: The name of a pack Tether wrote (uuid4 hex): gc deletes nothing else as a pack.
_PACK_KEY = re.compile(r"packs/[0-9a-f]{32}\.pack")

class _PackMissing(IntegrityError):
    """A pack is gone: every location in it fails alike, so a read tries it once.

    Unlike a short read (a range past the pack's end), which says only that this one
    location lies: an index may claim a chunk past the end of the pack that holds its
    honest copy, and failing the pack then hid that copy.
    """

    @classmethod
    def of(cls, pack: str) -> _PackMissing:
        return cls(f"pack {pack} is missing", hint="restore the store")


def _tried_text(tried: Mapping[Location | str, str]) -> str:
    """What ``_read_chunk`` found wanting: a pack (missing) or one location in it."""
    return "; ".join(f"pack {where} {why}" if isinstance(where, str) else
                     f"pack {where.pack} at offset {where.offset} {why}"
                     for where, why in tried.items())


def _handed(items: list[Any]) -> Iterator[Any]:
    """The items of ``items``, taken out of it as they are given."""
    items.reverse()
    while items:
        yield items.pop()


def _read_pool() -> ThreadPoolExecutor:
    """The threads a load or verify reads runs on (named, as Tether's threads are: see
    handoffs.py)."""
    return ThreadPoolExecutor(max_workers=_READ_THREADS, thread_name_prefix="tether-read")


class ChunkStore:
    def __init__(self, blobs: Blobs, *, cache_dir: Path | None = None,
                 pack_target: int | None = None, cache_max_bytes: int | None = None,
                 upload_streams: int | None = None) -> None:
        self.blobs = blobs
        self.url = blobs.url
        remote = not blobs.is_local
        self.pack_target = pack_target or (REMOTE_PACK_TARGET if remote else PACK_TARGET)
        #: Remote packs grow with the upload unless a size was asked for.
        self._adaptive_packs = remote and pack_target is None
        #: Runs are read into reused buffers where the store can (a local pack, or a
        #: streamed response): then a large run costs one buffer, not a joined copy.
        self._reads_into = not remote or hasattr(blobs, "get_range_into")
        self._run_bytes = _RUN_BYTES if self._reads_into else _REMOTE_RUN_BYTES
        self._run_buffers = BufferPool(keep=_RUNS_AHEAD + _READ_THREADS + 2)  # see fileio
        self.upload_streams = upload_streams or (REMOTE_UPLOAD_STREAMS if remote else 1)
        #: Packs under this many bytes are compacted by gc (tiny versions' packs).
        self._small_pack = min(self.pack_target, REMOTE_PACK_TARGET) // _SMALL_PACK_PART
        self.cache_dir = cache_dir
        #: The chunk cache (remote stores only; a local store is read in place).
        self.cache = (ChunkCache(cache_dir, max_bytes=cache_max_bytes)
                      if cache_dir is not None and not blobs.is_local else None)
        if cache_dir is not None and getattr(blobs, "tmp_dir", False) is None:
            blobs.tmp_dir = cache_dir / "tmp"  # type: ignore[attr-defined]
        #: Which pack holds each chunk (chunk_index.py): read by every ingest and load.
        self.index = ChunkIndex(blobs, cache_dir=cache_dir, scratch_file=self.scratch_file)
        self._cctx = threading.local()
        self._tidying = threading.Lock()
        #: Merge after a commit on a thread of its own, not before the commit answers (a
        #: server: the merge was half of a 2 GB version's commit, 0.2 of 0.4 s, while its
        #: client waited). Set by ``tether server``; embedded registries merge inline.
        self.tidy_in_background = False

    # -- the index (chunk_index.py) ------------------------------------------------

    def refresh(self) -> None:
        """Read index files written since the last look (``ChunkIndex.refresh``)."""
        self.index.refresh()

    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests the store lacks (``ChunkIndex.missing``)."""
        return self.index.missing(digests)

    def missing_of(self, lists: Iterable[ChunkList]) -> set[str]:
        """The chunks of ``lists`` the store lacks (``ChunkIndex.missing_of``)."""
        return self.index.missing_of(lists)

    def locate(self, digest: str) -> Location | None:
        return self.index.locate(digest)

    def candidates(self, digest: str) -> list[Location]:
        """Every location some index claims for ``digest``, the one to try first first."""
        return self.index.candidates(digest)

    def maybe_consolidate(self) -> None:
        """Merge the index journal once it is long (``ChunkIndex.maybe_consolidate``)."""
        self.index.maybe_consolidate()

    def consolidate(self, *, exclude: Iterable[str] = ()) -> None:
        """Merge every index file into one, leaving out ``exclude`` packs."""
        self.index.consolidate(exclude=exclude)

    def tidy_index(self) -> None:
        """Merge the index journal once it is long, unless this process is merging already.

        For the bytes others uploaded: a client writing through a server's
        gateway cannot delete index files, so the server merges after its commits
        and every later lookup still reads a few files, not one per upload.
        """
        if (not self.index.journal_is_long() or not self.index.can_merge()
                or not self._tidying.acquire(blocking=False)):
            return
        if not self.tidy_in_background:
            self._tidy()
            return
        # A thread of its own each time (one at a time: _tidying), not a pool's: a
        # thread that could not start never runs, so the lock is released once, here.
        try:
            threading.Thread(target=self._tidy, kwargs={"wait": False},
                             name="tether-tidy").start()
        except RuntimeError:  # shutting down, or no thread to be had: a later commit merges
            self._tidying.release()

    def _tidy(self, *, wait: bool = True) -> None:
        """``tidy_index``'s merge, ``_tidying`` held (released here). ``wait``: for a gc
        holding the store; in the background it is skipped instead (a server waited for
        that gc to end before it could stop)."""
        from .locking import ingest_lock

        try:
            with contextlib.suppress(Exception), ingest_lock(
                    self, wait_seconds=600.0 if wait else 0.0):  # an optimisation only
                self.maybe_consolidate()
        finally:
            self._tidying.release()

    def wait_for_tidying(self, timeout: float = 60.0) -> bool:
        """Whether a merge ``tidy_index`` started in the background is over (within
        ``timeout`` seconds). A server stopping needs no call: its merge thread is joined
        at exit, and gives way to a gc rather than wait for one."""
        if self._tidying.acquire(timeout=timeout):
            self._tidying.release()
            return True
        return False

    # -- writing -----------------------------------------------------------------

    def _compressor(self) -> zstandard.ZstdCompressor:
        cctx = getattr(self._cctx, "c", None)
        if cctx is None:
            cctx = self._cctx.c = zstandard.ZstdCompressor(level=1)
        return cctx

    def _encode(self, data: memoryview) -> tuple[bytes | memoryview, int]:
        cctx = self._compressor()
        sample = data[:_SAMPLE]
        if len(cctx.compress(sample)) > len(sample) * _WORTH_COMPRESSING:
            return data, RAW
        packed = cctx.compress(data)
        if len(packed) > len(data) * _WORTH_COMPRESSING:
            return data, RAW
        return packed, ZSTD

    # -- temporary files ------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """Where this client's temporary files go: the cache's tmp/ (never the system /tmp)."""
        folder = self.cache_dir / "tmp" if self.cache_dir is not None else scratch_root()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def scratch_args(self, kind: str) -> dict[str, Any]:
        """``tempfile`` arguments for a scratch file or folder named for its owner."""
        return {"prefix": f"{kind}-{owner_tag()}{SEP}", "dir": str(self.scratch_dir())}

    def scratch_file(self, kind: str) -> tuple[int, Path]:
        return make_temp(self.scratch_dir(), kind)

    # -- ingest (ingest.py) --------------------------------------------------------

    def ingest(self, root: Path, paths: Sequence[str], *, progress: bool = False,
               pin_also: Iterable[FileEntry] = (),
               previous: Mapping[str, Sequence[ChunkRef]] | None = None) -> IngestReport:
        """Store ``paths`` (under ``root``); see ``ingest.ingest_files``."""
        from . import ingest

        return ingest.ingest_files(self, root, paths, progress=progress, pin_also=pin_also,
                                   previous=previous)

    # -- reading -----------------------------------------------------------------

    def _read_chunk(self, chunk: ChunkRef, *, what: str,
                    tried: Mapping[Location | str, str] | None = None,
                    keep: bool = True) -> bytes | memoryview:
        """One chunk, verified, from the first of its candidate locations that holds it.

        ``tried`` maps what was already found wanting to why, not read again: a
        location, or a pack (str) found missing. Locations, not packs: one lying entry
        (a wrong offset in the pack holding the honest copy, from an index that sorts
        first) failed its pack, and the honest copy beside it was never read.
        """
        tried = dict(tried or {})
        data = self._from_cache(chunk)
        if data is not None:
            return data
        self.index.locate_chunk(chunk, what=what)
        refreshed = False
        while True:
            for loc in self.index.candidates(chunk.digest):
                if loc in tried or loc.pack in tried:
                    continue
                try:
                    payload = self._fetch(loc)
                except _PackMissing as error:
                    tried[loc.pack] = error.message.removeprefix(f"pack {loc.pack} ")
                    self.index.demote(chunk.digest, loc)
                    continue
                except IntegrityError as error:  # short: this location, not the pack
                    tried[loc] = error.message.removeprefix(f"pack {loc.pack} ")
                    self.index.demote(chunk.digest, loc)
                    continue
                data, problem = _unpack(payload, loc.codec, chunk.size, chunk.digest)
                if data is None:
                    tried[loc] = problem
                    self.index.demote(chunk.digest, loc)
                    continue
                if keep:
                    self._cache_store(chunk.digest, payload)
                return data
            if refreshed:
                break
            self.refresh()  # another writer may have stored a good copy since
            refreshed = True
        hint = ("the store is damaged; `tether store verify` quarantines lying packs, "
                "then restore the chunk from a backup or log the version again")
        if self.index.forget_kept_copies():
            # Perhaps the store is fine and the index copies kept on this disk lie (a
            # man in the middle once served one, and every later process failed: a
            # review): the next process fetches them again.
            hint = ("this machine's kept copies of the store's index were dropped: run it "
                    "again; if it fails again, " + hint)
        raise IntegrityError(
            f"{what}: chunk {chunk.digest[:16]} matches its digest in none of the "
            f"{len(tried)} place(s) claiming it: {_tried_text(tried)}", hint=hint)

    def _located_runs(self, chunks: ChunkList, *, what: str,
                      ) -> Iterator[tuple[list[ChunkRef], list[Location], int]]:
        """(chunks, their locations, offset in the file) of each run of ``chunks``, in order.

        Located ``_LOCATE_PIECE`` chunks at a time (one numpy search each, see
        ``_locate_all``): a million chunks' locations at once were 150 MB.
        """
        position = 0
        for first in range(0, len(chunks), _LOCATE_PIECE):
            piece = chunks[first:first + _LOCATE_PIECE]
            locs = self.index.locate_all(piece, what=what)
            starts = list(itertools.accumulate(piece.sizes(), initial=position))
            position = starts[-1]
            for run in self._runs(piece, what=what, locs=locs):
                # A run is consecutive chunks: one slice, unpacked in one pass.
                first_i, end_i = run[0], run[-1] + 1
                yield list(piece[first_i:end_i]), locs[first_i:end_i], starts[first_i]

    def _runs(self, chunks: Sequence[ChunkRef], *, what: str,
              locs: Sequence[Location] | None = None) -> list[list[int]]:
        """Chunk indexes grouped into runs stored back to back in one pack.

        One read (one ranged GET on S3) per run instead of per chunk; chunks
        already in the local cache stand alone.
        """
        runs: list[list[int]] = []
        previous: Location | None = None
        size = 0
        cache = self.cache
        for i in range(len(chunks)):  # a chunk's ChunkRef only where it is needed
            loc = locs[i] if locs is not None else self.index.locate_chunk(chunks[i], what=what)
            alone = cache is not None and cache.has(chunks[i].digest)
            joins = (previous is not None and runs and not alone
                     and loc.pack == previous.pack
                     and loc.offset == previous.offset + previous.length
                     and size + loc.length <= self._run_bytes)
            if joins:
                runs[-1].append(i)
                size += loc.length
            else:
                runs.append([i])
                size = loc.length
            previous = None if alone else loc
        return runs

    def _read_run(self, chunks: Sequence[ChunkRef], *, what: str) -> list[bytes]:
        """The verified bytes of each of ``chunks`` (stored back to back), one read."""
        views = self._read_run_views(chunks, what=what)
        if len(views) == len(chunks):
            return [bytes(piece) for piece in views]
        whole, out, start = memoryview(views[0]), [], 0
        for chunk in chunks:
            out.append(bytes(whole[start:start + chunk.size]))
            start += chunk.size
        return out

    def _run_buffer(self) -> memoryview | None:
        """A buffer to read a run into (room for it placed as the page cache holds the
        pack: see ``_read_run_views``), or None where the store cannot read into one."""
        return self._run_buffers.take(self._run_bytes + ALIGN) if self._reads_into else None

    def _read_run_views(self, chunks: Sequence[ChunkRef], *, what: str,
                        keep: bool = True, into: memoryview | None = None,
                        locs: Sequence[Location] | None = None) -> list[bytes | memoryview]:
        """``_read_run`` without copies: views into the one buffer read (``keep``: into
        the chunk cache too; ``into``: a buffer to read a local pack into)."""
        if len(chunks) == 1:
            return [self._read_chunk(chunks[0], what=what, keep=keep)]
        if locs is None:
            locs = [self.index.locate_chunk(c, what=what) for c in chunks]
        first, last = locs[0], locs[-1]
        length = last.offset + last.length - first.offset
        try:
            shift = first.offset % ALIGN  # placed as the page cache holds the pack
            if into is not None and len(into) >= shift + length:
                payload: bytes | memoryview = self._read_into(
                    first.pack, first.offset, into[shift:shift + length])
            else:
                payload = self._get_range(first.pack, first.offset, length)
        except _PackMissing as error:
            # The pack is gone: each chunk falls back to its other copies.
            why = error.message.removeprefix(f"pack {first.pack} ")
            return [self._read_chunk(c, what=what, tried={first.pack: why}, keep=keep)
                    for c in chunks]
        except IntegrityError:
            # Short: some location of the run is past the pack's end (a lie, perhaps,
            # beside honest ones). Each chunk is read alone: those in the pack are found.
            return [self._read_chunk(c, what=what, keep=keep) for c in chunks]
        out: list[bytes | memoryview] = []
        view = memoryview(payload)
        matched = _raw_matches(view, chunks, locs, first.offset)
        raw = True  # every chunk stored raw and matching: the run is the file's bytes as read
        for chunk, loc, match in zip(chunks, locs, matched, strict=True):
            start = loc.offset - first.offset
            piece = view[start:start + loc.length]
            if match:
                data: bytes | memoryview | None = piece
            else:
                data, problem = _unpack(piece, loc.codec, chunk.size, chunk.digest)
            if data is None:
                self.index.demote(chunk.digest, loc)
                data = self._read_chunk(chunk, what=what, tried={loc: problem}, keep=keep)
                raw = False
            else:
                raw = raw and loc.codec == RAW
                if self.cache is not None and keep:
                    self._cache_store(chunk.digest, bytes(piece))
            out.append(data)
        if raw:
            return [view]  # one buffer: one write, one large (multi-threaded) hash update
        return out

    def _cache_store(self, digest: str, payload: bytes) -> None:
        """Keep a verified payload (callers pass only one that matched its digest)."""
        if self.cache is not None:
            self.cache.put(digest, payload)

    def _from_cache(self, chunk: ChunkRef) -> bytes | memoryview | None:
        """The cached chunk, verified; None (and the entry dropped) if it does not match.

        The cache keeps stored payloads, which two packs may hold in different
        codecs, so both are tried: the digest decides.
        """
        if self.cache is None:
            return None
        payload = self.cache.read(chunk.digest)
        if payload is None:
            return None
        for codec in (ZSTD, RAW) if payload[:4] == _ZSTD_MAGIC else (RAW, ZSTD):
            data, _ = _unpack(payload, codec, chunk.size, chunk.digest)
            if data is not None:
                return data
        self.cache.drop(chunk.digest)
        return None

    def _get_range(self, pack: str, offset: int, length: int) -> bytes:
        try:
            payload = self.blobs.get_range(f"packs/{pack}.pack", offset, length)
        except NotFound as error:
            raise _PackMissing.of(pack) from error
        except RangeNotSatisfiable:  # an index claims bytes past the pack's end
            payload = b""
        if len(payload) != length:
            raise IntegrityError(f"pack {pack} is truncated", hint="restore the store")
        return payload

    def _read_into(self, pack: str, offset: int, view: memoryview) -> memoryview:
        """``_get_range`` into ``view`` (a reused buffer: no new pages, no joined copy)."""
        path = self.blobs.local_path(f"packs/{pack}.pack")
        if path is None:
            try:
                got = self.blobs.get_range_into(f"packs/{pack}.pack", offset, view)  # type: ignore[attr-defined]
            except NotFound as error:
                raise _PackMissing.of(pack) from error
            except RangeNotSatisfiable:  # an index claims bytes past the pack's end
                got = 0
            if got != len(view):
                raise IntegrityError(f"pack {pack} is truncated", hint="restore the store")
            return view
        try:
            fd = open_regular(path, f"packs/{pack}.pack")  # a named pipe blocked for good
        except NotFound as error:
            raise _PackMissing.of(pack) from error
        except MalformedObject as error:
            raise IntegrityError(error.message, hint=error.hint) from error
        try:
            if pread_into(fd, view, offset) < len(view):
                raise IntegrityError(f"pack {pack} is truncated", hint="restore the store")
        finally:
            os.close(fd)
        return view

    def _fetch(self, loc: Location) -> bytes:
        """The stored bytes of one chunk at ``loc`` (unverified)."""
        return self._get_range(loc.pack, loc.offset, loc.length)

    def _in_use(self, files: Sequence[FileEntry]) -> Any:
        """Pin the chunks of ``files`` in the cache while they are read.

        Only an optimisation: a cached chunk pruned meanwhile is fetched from the
        store again. So a load of more than ``_CACHE_PIN_MAX`` chunks does without
        (the pin of a million chunks, as a set and a JSON file, was 300 MB).
        """
        if self.cache is None or sum(len(f.chunks) for f in files) > _CACHE_PIN_MAX:
            return contextlib.nullcontext()
        return self.cache.in_use(c.digest for f in files for c in f.chunks)

    def materialize(self, files: Sequence[FileEntry], dest: Path, *, label: str,
                    progress: bool = False, cache_chunks: bool = True) -> None:
        """Write ``files`` under ``dest``, verified; ``cache_chunks=False`` when ``dest``
        is kept (a download), so a remote store's bytes land on disk once, not twice."""
        self.refresh()
        bar = Progress("loading", sum(f.size for f in files), enabled=progress)
        try:
            with (self._in_use(files), prompt_handoffs(),
                  _read_pool() as pool):
                for entry in files:
                    self._materialize_file(entry, dest, label, pool, bar, keep=cache_chunks)
        finally:
            bar.close("verified")

    def _stream(self, entry: FileEntry, what: str, pool: ThreadPoolExecutor,
                sink: Any = None, *, keep: bool = True) -> Iterator[list[bytes | memoryview]]:
        """The verified chunks of ``entry``, run by run, in order, in bounded memory.

        Runs are read (and handed to ``sink(offset, pieces)``, which writes
        them) on ``pool``; at most ``_RUNS_AHEAD`` runs are in flight.
        """

        def read(chunks: list[ChunkRef], locs: list[Location], offset: int,
                 ) -> tuple[list[bytes | memoryview], memoryview | None]:
            buffer = self._run_buffer()
            pieces = self._read_run_views(chunks, what=what, keep=keep, into=buffer, locs=locs)
            if sink is not None:
                sink(offset, pieces)
            return pieces, buffer

        def handed(future: Future[Any]) -> Iterator[list[bytes | memoryview]]:
            pieces, buffer = future.result()
            yield pieces
            # The caller has written and hashed the run: its buffer may be read into again.
            if buffer is not None:
                self._run_buffers.give(buffer)

        pending: deque[Future[Any]] = deque()
        try:
            for run in self._located_runs(entry.chunks, what=what):
                pending.append(pool.submit(read, *run))
                if len(pending) >= _RUNS_AHEAD:
                    yield from handed(pending.popleft())
            while pending:
                yield from handed(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                with contextlib.suppress(BaseException):
                    future.result()

    def _materialize_file(self, entry: FileEntry, dest: Path, label: str,
                          pool: ThreadPoolExecutor, bar: Progress, *, keep: bool) -> None:
        """Write one file once: chunks checked as read, the file digest as written."""
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        what = f"{entry.path} of {label}"
        # Never over a file already there: every caller writes into a new folder, so one
        # found is another entry of this version that names the same file on this file
        # system (``MODEL.pkl`` and ``model.pkl`` where case is ignored), whose bytes,
        # checked against their digest, the second would replace after the check.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise IntegrityError(
                f"{what}: another file of {label} was already written under that name "
                "(on this file system two of its paths name one file)",
                hint="load it on a file system that tells its names apart (case, Unicode "
                "normalisation), or re-log it with distinct names") from None

        # One read thread writes at a time: the others wait here, asleep. Left to the
        # file's own lock, they spun on it in the kernel, taking the core the one
        # writing needed (2 GB loaded: system CPU 1.3 against 1.7 s, 1,298 against
        # 1,099 MB/s, four interleaved rounds each).
        writing = threading.Lock()

        def write(offset: int, pieces: list[bytes | memoryview]) -> None:
            with writing:
                write_pieces(fd, pieces, offset)

        # One thread: the read threads hash every chunk meanwhile, and BLAKE3's own
        # threads only competed with them for the two cores (a 2 GB download, 13
        # interleaved pairs: median 1.69 s against 1.78 s with max_threads=AUTO,
        # faster in 11 of the 13).
        hasher = native.hasher()  # a run's chunks in one call (see native.hasher)
        written = 0
        try:
            if entry.size:
                os.ftruncate(fd, entry.size)
            # Runs come back in order, so the whole-file digest is computed as
            # they arrive rather than by reading the file again.
            for pieces in self._stream(entry, what, pool, write, keep=keep):
                hasher.update_many(pieces)
                run = sum(len(p) for p in pieces)
                written += run
                bar.advance(run)
        finally:
            os.close(fd)
        if written != entry.size or hasher.hexdigest() != entry.digest:
            raise IntegrityError(f"{what} does not match its recorded digest",
                                 hint="the store is damaged; restore it from a backup")

    def verify(self, files: Sequence[FileEntry], *, label: str,
               source: str = "store") -> list[str]:
        """Problems in the bytes of ``files`` (none: every byte matched its digest).

        ``source="store"`` checks the store's own copy, never the local cache
        (whose verified copy would hide a corrupt pack), one ranged read per run
        of chunks stored back to back; ``"any"`` accepts cached chunks, as a load.
        """
        with prompt_handoffs():
            if source == "store":
                direct = copy.copy(self)  # shares the index; reads and keeps nothing cached
                direct.cache = None
                direct.refresh()
                return direct._verify_store(files, label=label)
            self.refresh()
            with self._in_use(files), _read_pool() as pool:
                return self._verify(files, label=label, pool=pool)

    def _verify(self, files: Sequence[FileEntry], *, label: str,
                pool: ThreadPoolExecutor) -> list[str]:
        problems = []
        for entry in files:
            hasher = native.hasher()  # one thread, as a load's (see _materialize_file)
            what = f"{entry.path} of {label}"
            try:
                for pieces in self._stream(entry, what, pool):
                    hasher.update_many(pieces)
            except IntegrityError as error:
                problems.append(error.message)
                continue
            if hasher.hexdigest() != entry.digest:
                problems.append(f"{what} does not match its recorded digest")
        return problems

    def _verify_store(self, files: Sequence[FileEntry], *, label: str) -> list[str]:
        problems = []
        with _read_pool() as pool:
            for entry in files:
                what = f"{entry.path} of {label}"
                hasher = native.hasher()

                def read(chunks: list[ChunkRef], locs: list[Location], _offset: int,
                         what: str = what) -> tuple[list[bytes | memoryview], memoryview | None]:
                    # Views into one reused buffer: no copy of each chunk, no fresh 8 MB
                    # per run (glibc keeps freed ones resident: 350 MB at 215k chunks).
                    buffer = self._run_buffer()
                    return self._read_run_views(chunks, what=what, keep=False, locs=locs,
                                                into=buffer), buffer

                def hash_run(future: Future[Any], hasher: Any = hasher) -> None:
                    pieces, buffer = future.result()
                    hasher.update_many(pieces)
                    if buffer is not None:
                        self._run_buffers.give(buffer)

                try:
                    ahead: deque[Future[Any]] = deque()  # a few runs in flight: flat memory
                    for run in self._located_runs(entry.chunks, what=what):
                        ahead.append(pool.submit(read, *run))
                        while len(ahead) > _READ_THREADS:
                            hash_run(ahead.popleft())
                    while ahead:
                        hash_run(ahead.popleft())
                except IntegrityError as error:
                    problems.append(error.message)
                    # The runs read ahead are not needed: stopped, or waited for so
                    # their buffers go back to the pool before the next file.
                    for future in ahead:
                        future.cancel()
                    for future in ahead:
                        if future.cancelled() or future.exception() is not None:
                            continue
                        _pieces, buffer = future.result()
                        if buffer is not None:
                            self._run_buffers.give(buffer)
                    continue
                if hasher.hexdigest() != entry.digest:
                    problems.append(f"{what} does not match its recorded digest")
        return problems

    # -- whole-pack verification and quarantine (pack_verify.py) -------------------

    def check_pack(self, pack: str, index: Any) -> PackCheck:
        """Read ``pack`` and check every chunk its index claims (``pack_verify``)."""
        from . import pack_verify

        return pack_verify.check_pack(self, pack, index)

    def verify_packs(self, *, dry_run: bool = False, progress: bool = False) -> VerifyReport:
        """Check every indexed pack against its index; quarantine the ones that lie."""
        from . import pack_verify

        return pack_verify.verify_packs(self, dry_run=dry_run, progress=progress)

    def quarantine(self, pack: str, problems: Sequence[str], *,
                   index_bytes: bytes | None = None) -> str:
        """Move ``pack`` and its index out of use, under ``quarantine/``."""
        from . import pack_verify

        return pack_verify.quarantine(self, pack, problems, index_bytes=index_bytes)

    # -- accounting; garbage collection itself is in chunk_gc --------------------

    def _leftovers(self, now: float, *, grace_seconds: float,
                   pin_grace: float) -> dict[str, list[tuple[str, int]]]:
        """Store objects crashed or finished processes left, by kind: [(key, size)].

        A thing is a leftover when its owner is provably dead (same host, pid
        gone), when its lease expired, or, with no owner to ask, when it is older
        than the grace period. A live owner's things are never leftovers.
        """
        found: dict[str, list[tuple[str, int]]] = {
            "packs_without_index": [], "partial_uploads": [], "stale_locks": [],
            "stale_pins": []}
        self.refresh()
        indexed = set(self.index.all_packs())
        # And every pack a journal index file is named for, whatever a merged index says
        # it covers: a planted merged file "covering" a live pack's journal (its chunks
        # claimed elsewhere) had gc delete that pack as one without an index (a review).
        indexed.update(index_name(i.key) for i in self.blobs.list("index/"))
        for info in self.blobs.list("packs/"):
            if not _PACK_KEY.fullmatch(info.key):
                continue  # not a pack's name: never Tether's to delete as one
            pack = info.key.rsplit("/", 1)[-1].removesuffix(".pack")
            if pack not in indexed and now - info.mtime >= grace_seconds:
                found["packs_without_index"].append((info.key, info.size))
        for info in self.blobs.list("tmp/"):
            if not info.key.startswith("tmp/") or "/" in info.key[4:]:
                continue  # a listing that ignored its prefix (a review: every pack went)
            owner = Owner.from_name(info.key.rsplit("/", 1)[-1])
            if is_dead(owner) or (not is_alive_here(owner)
                                  and now - info.mtime >= grace_seconds):
                found["partial_uploads"].append((info.key, info.size))
        for lease in leases(self):
            if lease.stale(now):
                found["stale_locks"].append((lease.key, lease.size))
        for info in self.blobs.list("pins/"):
            if not info.key.startswith("pins/"):
                continue
            if self._pin_is_stale(info.key, info.size, now - info.mtime, pin_grace):
                found["stale_pins"].append((info.key, info.size))
        return found

    def _pin_is_stale(self, key: str, size: int, age: float, pin_grace: float) -> bool:
        """A pin protects its chunks until its version commits (and releases it).

        So a pin whose owner runs on this host is never stale, whatever the grace
        (``gc --grace 0`` must not pull chunks from under an ingest about to
        commit); one whose owner is provably dead is stale at once; one from
        another host (a remote client) is kept for at least ``_PIN_MIN_SECONDS``.
        """
        from .pin_file import mapped_pin, pin_owner

        try:
            with mapped_pin(self.blobs, key, size) as data:  # never parsed whole (pin_file)
                tag = pin_owner(data)
        except (NotFound, OSError, ValueError):
            tag = ""
        owner = Owner.from_name(f"pin-{tag}{SEP}0") if tag else None
        if is_dead(owner):
            return True
        if is_alive_here(owner):
            return False
        return age >= max(pin_grace, _PIN_MIN_SECONDS)

    def release_pin(self, key: str | None) -> None:
        """Drop an ingest's pin once its version is committed (best effort: gc ages it out)."""
        if key:
            with contextlib.suppress(Exception):
                self.blobs.delete(key)

    def stats(self, live: Iterable[FileEntry] = ()) -> StoreStats:
        from .census import LiveChunks

        referenced = LiveChunks()
        logical = referenced.add_files(live)  # streamed: one version's files at a time
        now = time.time()
        found = self._leftovers(now, grace_seconds=0, pin_grace=_PIN_REPORT_SECONDS)
        leftovers = {kind: {"count": len(items), "bytes": sum(s for _, s in items)}
                     for kind, items in found.items()}
        if self.cache_dir is not None:
            leftovers["scratch"] = dead_scratch(self.cache_dir / "tmp").to_dict()
        tally = self.index.census().tally(referenced)
        repeated = {c.digest: c.live for c in tally.claims}  # chunks listed more than once
        chunks = tally.single_chunks + len(repeated)
        unreferenced = tally.single_unused + sum(not alive for alive in repeated.values())
        packs = self.index.all_packs()
        with self.index.lock:
            extra: dict[str, Any] = {
                "leftovers": leftovers, "unreferenced_chunks": unreferenced,
                "index_files": {"merged": len(self.index.segments),
                                "journal": len(self.index.journal)}}
        return StoreStats(logical_bytes=logical, stored_bytes=sum(packs.values()),
                          chunks=chunks, packs=len(packs), extra=extra)

    def gc(self, live: Iterable[FileEntry], *, grace_seconds: float, dry_run: bool,
           commit: Any = None, progress: bool = False) -> GcReport:
        """Plan, then (unless ``dry_run``) write repacks, ``commit()``, and delete.

        The report comes from the plan, so a dry run reports exactly what the
        run would remove. A failed write (a full disk) undoes the repacks and
        raises before ``commit`` and before any deletion. See ``chunk_gc``.
        """
        # Imported here: chunk_gc builds on this module (PackWriter, the indexes).
        from . import chunk_gc

        return chunk_gc.gc(self, live, grace_seconds=grace_seconds, dry_run=dry_run,
                           commit=commit, progress=progress)


def describe(error: Exception) -> StoreError:
    return StoreError(str(error))

"""Cutting a new version of a file along the chunks of its previous version.

A new version of a large model mostly repeats the previous one's bytes.
Cutting it with FastCDC costs about half a core-second per GB here; checking
that the bytes where the previous version's next chunk would be *are* that
chunk costs one BLAKE3 of them, which ingest computes anyway, on every core.
So ingest follows the previous version's chunks while they match, and cuts
with FastCDC only where the bytes changed, until a chunk it cuts is one of the
previous version's again.

The chunks are exactly those FastCDC finds cutting the whole file, so versions
deduplicate as if every one were cut from scratch. FastCDC ends a chunk where
the gear hash of its bytes *and the next byte* says so (or at its largest size),
and the file's last chunk where the file ends. So a followed chunk is kept only
once the chunk after it matched as well (the same next byte), or when it ends
exactly where the file ends; the previous version's last chunk is never
followed into the middle of a file. Where following stops, cutting resumes from
the start of the chunk not yet confirmed: a boundary both cuttings share.

That holds when the hint is what it is meant to be: the chunks of one file
cut in one go by this FastCDC (the same average size), as every version the
store records is. Any other hint (a chunk list made up, reordered, or cut with
another average size, say by a hostile server) can only change where chunks
end, never what is stored: every digest kept is computed here from the file's
bytes, a hinted length over FastCDC's largest chunk is not followed, and the
worst outcome is a version cut differently (deduplicating less) than from
scratch. Checking that each followed chunk is FastCDC's would cost the gear
scan that following saves; a review fuzzed 300,000 honest cases and found no
difference (tests/test_store_following.py keeps the telling ones).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3
from pyfastcdc.cy import FastCDC

from .._errors import StoreError
from . import native
from .base import ChunkList, ChunkRef
from .chunklist import RECORD
from .fileio import ALIGN, pread_into, settle

#: FastCDC cuts a changed stretch this much at a time, then looks for a chunk it
#: knows to follow again (raised to twice the largest chunk if need be, so a step
#: not at the end of the file keeps a chunk after dropping the one its end cut).
STEP = 1024 * 1024
#: Followed chunks are hashed this many bytes at a time: a mismatch wastes at most this.
BATCH = 2 * 1024 * 1024
#: After this many bytes, a hint that matched less than GIVE_UP_SHARE of them is dropped
#: (the caller cuts the rest on every core instead).
GIVE_UP_AFTER = 64 * 1024 * 1024
GIVE_UP_SHARE = 0.25

Cut = tuple[int, int]  # (offset in the window, length)
#: A window of a file as ingest takes it: its bytes, its chunks (offset, length),
#: where the last ends, and the chunks' digests when already computed.
Window = tuple[memoryview, list[Cut], int, list[str] | None]
#: Digests of the given cuts of a window (the caller hashes them on its threads).
DigestsOf = Callable[[memoryview, Sequence[Cut]], list[str]]


def hash_cuts(view: memoryview, cuts: Sequence[Cut]) -> list[str]:
    """The BLAKE3 (hex) of each cut of ``view`` (with the native core, in one call
    that releases the GIL once, not once per chunk)."""
    if native.available:
        return native.digests(view, cuts)
    return [blake3.blake3(view[offset:offset + length]).hexdigest() for offset, length in cuts]


def digests_on(pool: Executor) -> DigestsOf:
    """Digests of a window's cuts, half of them on ``pool`` (BLAKE3 releases the GIL).

    Reading windows and hashing them ahead on the pool was tried: slower here
    (1.1-1.2 against 1.3-1.6 GB/s), the window read by this thread being
    hashed while it is still in the cache.
    """
    def digests_of(view: memoryview, cuts: Sequence[Cut]) -> list[str]:
        if len(cuts) < 8:
            return hash_cuts(view, cuts)
        half = len(cuts) // 2
        rest = pool.submit(hash_cuts, view, cuts[half:])
        return hash_cuts(view, cuts[:half]) + rest.result()
    return digests_of


class Hint:
    """The chunks of a file's previous version, and where each digest first occurs.

    Read from the packed ``ChunkList`` as needed: a tuple of a million hex
    digests, another of sizes and a dict of first places were 360 MB. Where a
    digest first occurs is asked only where the bytes changed, from a sorted
    numpy copy of the digests built on first use (36 bytes a chunk).
    """

    __slots__ = ("_keys", "_places", "chunks")

    def __init__(self, chunks: ChunkList) -> None:
        self.chunks = chunks
        self._keys: Any = None
        self._places: Any = None

    @classmethod
    def of(cls, chunks: Sequence[ChunkRef]) -> Hint | None:
        if not chunks:
            return None
        return cls(ChunkList.of(chunks))

    def __len__(self) -> int:
        return len(self.chunks)

    def digest(self, index: int) -> str:
        return self.chunks.digest_at(index)

    def length(self, index: int) -> int:
        return self.chunks.size_at(index)

    def first(self, digest: str) -> int | None:
        """Where ``digest`` first occurs in the hint (None: nowhere)."""
        import numpy as np  # only where bytes changed: a followed ingest may never ask

        if self._keys is None:
            # 8-byte prefixes and 4-byte places, 12 bytes a chunk (whole digests and
            # places were 40): a prefix found is checked against the whole digest.
            keys = np.concatenate([
                np.frombuffer(piece, dtype=[("key", ">u8"), ("rest", "V32")])["key"]
                for piece in self.chunks.pieces()]) if len(self.chunks) else np.empty(0, "u8")
            order = np.argsort(keys, kind="stable")  # ties: the first place first
            self._keys = keys[order]
            self._places = order.astype(np.uint32 if len(order) < 1 << 32 else np.int64)
            del keys, order
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return None
        if len(raw) != 32:
            return None
        key = np.uint64(int.from_bytes(raw[:8], "big"))
        at = int(np.searchsorted(self._keys, key))
        while at < len(self._keys) and self._keys[at] == key:
            place = int(self._places[at])
            if self.chunks.digest_at(place) == digest:
                return place
            at += 1  # the same prefix, another digest: rare
        return None


@dataclass
class _Walk:
    """Where the walk through one window stands."""

    view: memoryview
    eof: bool  # the window reaches the end of the file
    at: int = 0  # a boundary FastCDC would cut at: everything before it is in cuts
    cuts: list[Cut] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    followed: int = 0  # bytes taken by following

    def take(self, cuts: Sequence[Cut], digests: Sequence[str], *, followed: bool = False) -> None:
        self.cuts.extend(cuts)
        self.digests.extend(digests)
        if cuts:
            self.at = cuts[-1][0] + cuts[-1][1]
        if followed:
            self.followed += sum(length for _, length in cuts)


def followed_windows(
    fd: int, size: int, hint: Hint, *, avg_size: int, window: int,
    buffer: Callable[[int, int], memoryview], pool: Executor, give_up: bool,
) -> Generator[Window, None, int]:
    """The file as windows of chunks with their digests, following ``hint``.

    Returns where it stopped: ``size``, or (``give_up``) an earlier chunk
    boundary once the hint has proved of little use, for the caller to cut the
    rest another way. ``buffer(length, offset)`` gives a buffer for the file's
    bytes from ``offset``: two are held at once (the window walked, the next one
    read ahead), besides those of the windows the caller still holds.
    """
    cdc = FastCDC(avg_size=avg_size)
    longest = cdc.max_size
    step = max(STEP, 2 * longest)
    window = max(window, 2 * step)  # room for a step and what follows it
    digests_of = digests_on(pool)
    position = 0  # in the file: where the next window starts (a boundary)
    predicted: int | None = 0  # the hint's chunk expected at ``position``
    followed = 0
    reading = _ReadAhead(fd, size, window, buffer, room=2 * longest)
    try:
        while position < size:
            if give_up and position >= GIVE_UP_AFTER and followed < GIVE_UP_SHARE * position:
                return position
            view = reading.window_at(position)
            length = len(view)
            walk = _Walk(view, eof=position + length == size)
            reading.start(position + length)  # the next window's bytes, while this one is walked
            while walk.at < length:
                if predicted is not None:
                    predicted, window_ended = (
                        _follow_native(walk, hint, predicted, longest) if native.available
                        else _follow(walk, hint, predicted, longest, digests_of))
                    if window_ended:
                        break
                    continue
                if not walk.eof and length - walk.at < 2 * longest:
                    break  # too little left to cut here without the window's end deciding
                predicted = _cut_step(walk, cdc, step, hint, digests_of)
            if walk.at == 0:
                raise StoreError("internal error: following a hint made no progress",
                                 hint="set TETHER_FOLLOW=0 and report this")
            followed += walk.followed
            reading.carry(view[walk.at:])
            yield view, walk.cuts, walk.at, walk.digests
            position += walk.at
        return position
    finally:
        reading.close()


class _ReadAhead:
    """The windows of a file, each read on a thread of its own while the one before it
    is walked: the walk's thread only copies the few bytes a window carries over.

    A window's bytes from where the last one ended are read into the next buffer
    behind ``room`` bytes left free; the stretch the last window could not take
    (less than two of FastCDC's largest chunks: the room) is copied into it when
    the next window is asked for, so the window is one piece. Reading took the
    main thread a fifth of a followed ingest; read ahead, a 2 GB log with 5%
    changed ran at 1,589 against 1,526 MB/s (medians of eight interleaved rounds,
    faster in six).
    """

    def __init__(self, fd: int, size: int, window: int,
                 buffer: Callable[[int, int], memoryview], *, room: int) -> None:
        self.fd, self.size, self.window, self.buffer = fd, size, window, buffer
        self.room = room
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tether-read-ahead")
        #: The read in flight: the file offset it reads from, its buffer, the read.
        self._ahead: tuple[int, memoryview, Future[int]] | None = None
        self._carried: memoryview | None = None  # the last window's untaken bytes

    def start(self, offset: int) -> None:
        """Read the window's worth of bytes from ``offset`` (unless the file ends there)."""
        if offset >= self.size:
            return
        length = min(self.window, self.size - offset)
        # Placed as the page cache holds them (buffer's ``at``), ``room`` bytes in.
        whole = self.buffer(self.room + length, offset - self.room)
        self._ahead = (offset, whole,
                       self._thread.submit(pread_into, self.fd, whole[self.room:], offset))

    def carry(self, rest: memoryview) -> None:
        self._carried = rest

    def window_at(self, position: int) -> memoryview:
        """The file's bytes from ``position``: those carried, then those read ahead."""
        ahead, self._ahead = self._ahead, None
        carried, self._carried = self._carried, None
        if ahead is None:  # the first window
            length = min(self.window, self.size - position)
            view = self.buffer(length, position)
            self._check(pread_into(self.fd, view, position), length)
            return view
        offset, whole, read = ahead
        self._check(read.result(), min(self.window, self.size - offset))
        kept = len(carried) if carried is not None else 0
        if carried is None or offset - position != kept or kept > self.room:
            # Not what was read ahead for (never, as windows are walked): read here,
            # into the same buffer (another would break the ring's count), placed as
            # the page cache holds the bytes; shorter, if need be.
            first = (position - offset + self.room) % ALIGN
            length = min(self.window, self.size - position, len(whole) - first)
            view = whole[first:first + length]
            self._check(pread_into(self.fd, view, position), length)
            return view
        whole[self.room - kept:self.room] = carried
        return whole[self.room - kept:self.room + min(self.window, self.size - offset)]

    @staticmethod
    def _check(got: int, wanted: int) -> None:
        if got < wanted:
            raise StoreError("the file shrank while it was being stored",
                             hint="log a file nobody is writing")

    def close(self) -> None:
        """Wait for a read in flight (its buffer and the file's descriptor are the caller's)."""
        ahead, self._ahead = self._ahead, None
        try:
            settle([ahead[2]] if ahead is not None else [])  # its failure is no matter now
        finally:
            self._thread.shutdown(wait=True)


def _follow(walk: _Walk, hint: Hint, first: int, longest: int,
            digests_of: DigestsOf) -> tuple[int | None, bool]:
    """Take the hint's chunks from ``first`` while they match; (next to follow, window ended).

    A matched chunk is confirmed by the match of the one after it (FastCDC's
    cut looked at that chunk's first byte) or by ending exactly at the end of
    the file. The last matched chunk, unconfirmed, is left: when the window
    ended, the next window follows from it; otherwise cutting resumes at it.
    """
    view = walk.view
    pending: tuple[Cut, str] | None = None  # matched, not yet confirmed; walk.at is its start
    i, offset = first, walk.at
    while True:
        plan: list[Cut] = []
        planned = 0
        while i < len(hint) and planned < BATCH:
            length = hint.length(i)
            if not 0 < length <= longest or offset + length > len(view):
                break
            plan.append((offset, length))
            offset += length
            planned += length
            i += 1
        if not plan:
            # Nothing more fits: the window ended (the next one follows from the
            # unconfirmed chunk), or the hint did (its last chunk, or a length
            # FastCDC never cuts): cutting resumes at the unconfirmed chunk.
            ends_window = i < len(hint) and 0 < hint.length(i) <= longest and not walk.eof
            return (i - (pending is not None) if ends_window else None), ends_window
        start = i - len(plan)
        digests = digests_of(view, plan)
        matched = 0
        while matched < len(plan) and digests[matched] == hint.digest(start + matched):
            matched += 1
        if matched and pending is not None:
            walk.take([pending[0]], [pending[1]], followed=True)
        pending = None
        ends_file = (walk.eof and matched == len(plan)
                     and plan[-1][0] + plan[-1][1] == len(view))
        keep = matched if ends_file else max(0, matched - 1)
        walk.take(plan[:keep], digests[:keep], followed=True)
        if ends_file or matched < len(plan):
            return None, False  # done, or cut from the first chunk not confirmed
        pending = (plan[-1], digests[-1])


def _follow_native(walk: _Walk, hint: Hint, first: int, longest: int) -> tuple[int | None, bool]:
    """``_follow`` in one native call: the hint's chunks from ``first`` are hashed and
    compared one after another without the GIL, up to the first that differs or does
    not fit (nothing hashed past a change, no batches shared with the pool). The
    same chunks are taken and the same answer given (tests/test_store_following.py
    runs both); the digests kept are those computed from the bytes."""
    view, start = walk.view, walk.at
    records = native.follow(view, start, hint.chunks.records, first, longest)
    matched = len(records) // RECORD.size
    end = first + matched  # the hint's chunk after the last one matched
    cuts, digests = _cuts_of(records, start)
    at = cuts[-1][0] + cuts[-1][1] if cuts else start
    if walk.eof and matched and at == len(view):
        walk.take(cuts, digests, followed=True)  # ends where the file does: confirmed
        return None, False
    # The last chunk matched is confirmed only by the next one matching: it did not.
    walk.take(cuts[:-1], digests[:-1], followed=True)
    valid = end < len(hint) and 0 < hint.length(end) <= longest
    if valid and at + hint.length(end) <= len(view):
        return None, False  # its bytes differ: cut from the chunk not confirmed
    ends_window = valid and not walk.eof
    return (end - (matched > 0) if ends_window else None), ends_window


def _cuts_of(records: bytes, start: int) -> tuple[list[Cut], list[str]]:
    """The cuts (the first at ``start``) and hex digests of native records."""
    cuts: list[Cut] = []
    digests: list[str] = []
    at = start
    for raw, length in RECORD.iter_unpack(records):
        cuts.append((at, length))
        digests.append(raw.hex())
        at += length
    return cuts, digests


def _cut_step(walk: _Walk, cdc: FastCDC, step: int, hint: Hint,
              digests_of: DigestsOf) -> int | None:
    """Cut up to ``step`` bytes at ``walk.at`` with FastCDC; the hint's chunk to follow next."""
    view = walk.view
    stop = min(len(view), walk.at + step)
    final = walk.eof and stop == len(view)
    if native.available:  # cut and hashed in one call without the GIL
        found, digests = _cuts_of(
            native.cut(view[walk.at:stop], cdc.avg_size, keep_last=final), walk.at)
    else:
        found = [(walk.at + c.offset, c.length) for c in cdc.cut_buf(view[walk.at:stop])]
        if not final and len(found) > 1:
            found.pop()  # ended by the step, not by its bytes
        digests = digests_of(view, found)
    walk.take(found, digests)
    known = hint.first(digests[-1])
    return known + 1 if known is not None and known + 1 < len(hint) else None

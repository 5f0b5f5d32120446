"""A file's chunk list in 40 bytes a chunk, not 250.

A 70 GB checkpoint has about a million 64 KiB chunks. As Python objects (a
``ChunkRef`` holding a 64-character hex string) that list alone took some
250 MB, and the load path held two or three copies of it; memory grew with
the file. A ``ChunkList`` keeps the chunks as packed records (the 32-byte
BLAKE3 digest, then the size as 8 bytes little-endian) in one ``bytes``, and
hands out ``ChunkRef`` values only as they are read.

Its text form (``to_text``/``from_text``) is those records in base64: what a
manifest stores for a file of many chunks, instead of a JSON list of pairs
that parses into a million lists (see ``FileEntry.to_dict``).

Past ``SPILL_BYTES`` (100,000 chunks) a list being built goes to a scratch
file, and the list built is that file, mapped: the records of a 1 TB file
(16 million chunks, 640 MB) are then read from the page cache, not held in
the process. ``pieces`` hands them out a piece at a time and lets each
piece's pages go once the caller is done with it, so a pass over the whole
list (a commit's checks, its digest, its row) does not gather them either.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from .fileio import drop_pages, write_pieces


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One content-defined chunk of a file: its BLAKE3 (hex) and raw size."""

    digest: str
    size: int


RECORD = struct.Struct("<32sQ")
RECORD_SIZE = RECORD.size  # 40
#: Chunk sizes are byte counts; JSON manifests allow nothing larger either.
_MAX_SIZE = (1 << 63) - 1
#: A list being built moves to a scratch file at this size (100,000 chunks), if the
#: builder was given one; it then writes ``_WRITE_BYTES`` at a time.
SPILL_BYTES = 100_000 * RECORD_SIZE
_WRITE_BYTES = 1 << 20
#: ``pieces`` hands out this many records at a time (2.6 MB).
PIECE_RECORDS = 65536
#: Lists of at least this many chunks are summed in numpy (``ChunkList.total``).
_SUM_IN_NUMPY = 1024

#: Where a builder spills: a new private scratch file, as (descriptor, path).
Scratch = Callable[[], tuple[int, Path]]


class ListBudget:
    """The bytes of a version's chunk lists kept in memory, against ``SPILL_BYTES``
    in all: past that, each further list goes to a scratch file. One list at a time
    against the threshold, a hundred lists just under it each held 400 MB. Reading a
    version's lists (``_packed_manifest.files_from_entries``) and an ingest building
    them (``ingest._list_kept``) keep to the same rule through this."""

    def __init__(self) -> None:
        self.held = 0

    def keeps(self, nbytes: int) -> bool:
        """Whether a list of ``nbytes`` stays in memory (counted if it does)."""
        if self.held + nbytes > SPILL_BYTES:
            return False
        self.held += nbytes
        return True

    def hold(self, nbytes: int) -> None:
        """Count a list kept in memory whatever the budget (no scratch file could be
        made, or a list too short to be worth a file of its own)."""
        self.held += nbytes


class ChunkList(Sequence[ChunkRef]):
    """An immutable sequence of ``ChunkRef``, stored as packed 40-byte records."""

    __slots__ = ("_records",)

    def __init__(self, records: bytes | bytearray | mmap.mmap = b"", *,
                 adopt: bool = False) -> None:
        """The list of ``records`` (copied, unless ``adopt``: the caller hands over a
        buffer nobody changes again, as ``ChunkListBuilder.build`` does). An adopted
        ``mmap`` must map a file: its pages are let go as it is read, and an
        anonymous mapping's would come back as zeros."""
        if len(records) % RECORD_SIZE:
            raise ValueError(f"a chunk list is a multiple of {RECORD_SIZE} bytes, "
                             f"not {len(records)}")
        self._records: bytes | bytearray | mmap.mmap = records if adopt else bytes(records)

    @classmethod
    def of(cls, chunks: Iterable[Any]) -> ChunkList:
        """The list of ``chunks``: ChunkRefs or (hex digest, size) pairs; ValueError naming
        the first that is not a 64-digit hex digest with a byte count."""
        if isinstance(chunks, ChunkList):
            return chunks
        builder = ChunkListBuilder()
        for chunk in chunks:
            if isinstance(chunk, ChunkRef):
                builder.append(chunk.digest, chunk.size)
            else:
                digest, size = chunk  # ValueError/TypeError: not a pair
                builder.append(digest, size)
        return builder.build()

    @classmethod
    def kept_in_file(cls, pieces: Iterable[bytes | bytearray | memoryview],
                     scratch: Scratch) -> ChunkList:
        """The list of the records in ``pieces`` (a database row's, read a range at a
        time), written to a scratch file and mapped: held for a whole load, a million
        chunks would be 40 MB of the process."""
        fd, path = scratch()
        try:
            with contextlib.suppress(OSError):
                path.unlink()  # the mapping keeps it; nothing is left if this process dies
            size = 0
            for records in pieces:
                write_pieces(fd, [records])
                size += len(records)
            if size % RECORD_SIZE:
                raise ValueError(f"a chunk list is a multiple of {RECORD_SIZE} bytes, "
                                 f"not {size}")
            if not size:
                return cls()
            return cls(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), adopt=True)
        finally:
            os.close(fd)

    @classmethod
    def from_text(cls, text: str) -> ChunkList:
        """The list ``to_text`` wrote; ValueError if ``text`` is not one."""
        if not isinstance(text, str):
            raise ValueError(f"packed chunks must be base64 text, not {type(text).__name__}")
        try:
            records = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"packed chunks are not base64: {error}") from None
        return cls(records)

    def to_text(self) -> str:
        return base64.b64encode(self._records).decode("ascii")

    @property
    def records(self) -> bytes | bytearray | mmap.mmap:
        """The packed records (digest, then size as little-endian u64), back to back.
        A pass over every record of a long list goes through ``pieces`` instead."""
        return self._records

    @property
    def in_file(self) -> bool:
        """Whether the records are a scratch file's, mapped (see the module's doc)."""
        return isinstance(self._records, mmap.mmap)

    def pieces(self, records: int = PIECE_RECORDS) -> Iterator[memoryview]:
        """The records, ``records`` at a time; a list kept in a file lets each piece's
        pages go when the next is asked for (the page cache keeps them)."""
        step = records * RECORD_SIZE
        data = self._records
        whole = memoryview(data)  # never released here: the caller may keep a piece
        for start in range(0, len(data), step):
            yield whole[start:start + step]
            if isinstance(data, mmap.mmap):
                drop_pages(data, start, start + step)

    def digests(self) -> Iterator[str]:
        for piece in self.pieces():
            for digest, _ in RECORD.iter_unpack(piece):
                yield digest.hex()

    def sizes(self) -> Iterator[int]:
        for piece in self.pieces():
            for _, size in RECORD.iter_unpack(piece):
                yield size

    def rows(self) -> Any:
        """The records as a numpy array (fields ``digest``, S32, and ``size``), no copy."""
        import numpy as np  # only for the few callers that search many chunks at once

        return np.frombuffer(self._records, dtype=[("digest", "S32"), ("size", "<u8")])

    def digest_at(self, index: int) -> str:
        """The hex digest of chunk ``index`` (0 <= index < len), no ChunkRef built."""
        return bytes(self._records[index * RECORD_SIZE:index * RECORD_SIZE + 32]).hex()

    def size_at(self, index: int) -> int:
        """The size of chunk ``index`` (0 <= index < len)."""
        size: int = RECORD.unpack_from(self._records, index * RECORD_SIZE)[1]
        return size

    def total(self) -> int:
        """The sum of the chunks' sizes (the file's size, when the list is honest), exact
        whatever the sizes claim (a hostile list may claim 2**64 - 1 each).

        A piece at a time in numpy (a version may have 24 million chunks; a load checks
        the sum of every file), each size as two 32-bit halves summed in 64 bits: no
        piece of ``PIECE_RECORDS`` can overflow either sum.
        """
        if len(self) < _SUM_IN_NUMPY:
            return sum(self.sizes())
        import numpy as np

        total = 0
        for piece in self.pieces():
            sizes = np.frombuffer(piece, dtype=[("digest", "S32"), ("size", "<u8")])["size"]
            high = int(np.sum(sizes >> np.uint64(32), dtype=np.uint64))
            low = int(np.sum(sizes & np.uint64(0xFFFFFFFF), dtype=np.uint64))
            total += (high << 32) + low
        return total

    def __len__(self) -> int:
        return len(self._records) // RECORD_SIZE

    def __iter__(self) -> Iterator[ChunkRef]:
        for piece in self.pieces():
            for digest, size in RECORD.iter_unpack(piece):
                yield ChunkRef(digest.hex(), size)

    @overload
    def __getitem__(self, index: int) -> ChunkRef: ...

    @overload
    def __getitem__(self, index: slice) -> ChunkList: ...

    def __getitem__(self, index: int | slice) -> ChunkRef | ChunkList:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                begin, end = start * RECORD_SIZE, max(start, stop) * RECORD_SIZE
                part = ChunkList(self._records[begin:end])
                if isinstance(self._records, mmap.mmap):
                    # Copied out: a load reads the list slice after slice, once.
                    drop_pages(self._records, begin, end)
                return part
            return ChunkList.of(self[i] for i in range(start, stop, step))
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("chunk index out of range")
        digest, size = RECORD.unpack_from(self._records, index * RECORD_SIZE)
        return ChunkRef(digest.hex(), size)

    def __eq__(self, other: object) -> bool:
        # Only another ChunkList: equal to a tuple, it would need a tuple's hash too.
        if isinstance(other, ChunkList):
            if len(self._records) != len(other._records):
                return False
            # A mapping compares by identity: piece by piece, as bytes.
            return all(a == b for a, b in zip(self.pieces(), other.pieces(), strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self._records))  # a built list's buffer is a bytearray

    def __repr__(self) -> str:
        shown = ", ".join(f"{c.digest[:12]}:{c.size}" for c in self[:3])
        more = f", ... {len(self) - 3} more" if len(self) > 3 else ""
        return f"ChunkList([{shown}{more}])"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkList, (bytes(self._records),))


class DeferredChunkList(ChunkList):
    """A chunk list read from where it is kept (a database row, a server) when first used.

    Lists of versions hold these for large files: ``len`` is known without reading,
    and a listing that only shows or counts (``tether versions``, a catalog) never
    reads a version's records. Read, each list held them, 40 MB a million chunks,
    for every version listed at once.
    """

    __slots__ = ("_count", "_load")

    def __init__(self, count: int, load: Callable[[], ChunkList]) -> None:
        self._count = count
        self._load: Callable[[], ChunkList] | None = load

    @property  # type: ignore[override]
    def _records(self) -> bytes | bytearray | mmap.mmap:
        try:
            held: bytes | bytearray | mmap.mmap = _RECORDS.__get__(self, ChunkList)
            return held
        except AttributeError:
            pass
        assert self._load is not None
        loaded = self._load()
        if len(loaded) != self._count:
            raise ValueError(f"a list of {self._count} chunks read back as {len(loaded)}")
        _RECORDS.__set__(self, loaded.records)
        self._load = None
        return loaded.records

    @_records.setter
    def _records(self, value: bytes | bytearray | mmap.mmap) -> None:
        _RECORDS.__set__(self, value)

    @property
    def loaded(self) -> bool:
        """Whether the records were read (tests show a listing reads none)."""
        return self._load is None

    def __len__(self) -> int:
        return self._count


#: ChunkList's own slot, under the property that DeferredChunkList puts over it.
_RECORDS: Any = ChunkList.__dict__["_records"]


class ChunkListBuilder:
    """Appends chunks as they are cut; ``build`` gives the ``ChunkList``.

    Given ``scratch``, a list past ``SPILL_BYTES`` is written to a scratch file as
    it grows, and built as that file, mapped (unlinked at once: the mapping keeps
    it until the list goes). A million-chunk ingest held 40 MB here, a 1 TB one
    would hold 640 MB.
    """

    __slots__ = ("_fd", "_records", "_scratch", "_written")

    def __init__(self, scratch: Scratch | None = None) -> None:
        self._records = bytearray()
        self._scratch = scratch
        self._fd: int | None = None  # the scratch file's, unlinked once made
        self._written = 0  # records in the file

    def append(self, digest: str, size: int) -> None:
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError(f"chunk digest {str(digest)[:70]!r} is not 64 hex digits")
        if isinstance(size, bool) or not isinstance(size, int):
            size = int(size)  # ValueError/TypeError for what is not a count
        if not 0 <= size <= _MAX_SIZE:
            raise ValueError(f"chunk size {size} is not a byte count")
        raw = bytes.fromhex(digest)  # ValueError for what is not hex
        if len(raw) != 32 or raw.hex() != digest:  # fromhex skips spaces, reads capitals
            raise ValueError(f"chunk digest {digest!r} is not 64 lowercase hex digits")
        self._records += raw
        self._records += size.to_bytes(8, "little")
        if self._scratch is not None and len(self._records) >= (
                _WRITE_BYTES if self._fd is not None else SPILL_BYTES):
            self._write_out()

    def _write_out(self) -> None:
        if self._fd is None:
            assert self._scratch is not None
            self._fd, path = self._scratch()
            # Unlinked at once: a process killed mid-ingest leaves no file behind.
            with contextlib.suppress(OSError):
                path.unlink()
        write_pieces(self._fd, [self._records])
        self._written += len(self._records) // RECORD_SIZE
        self._records = bytearray()

    def __len__(self) -> int:
        return self._written + len(self._records) // RECORD_SIZE

    def build(self) -> ChunkList:
        """The list (the builder is empty again). Handed over, not copied: at the end
        of a million-chunk ingest a copy was 40 MB more."""
        if self._fd is None:
            built = ChunkList(self._records, adopt=True)
            self._records = bytearray()
            return built
        try:
            self._write_out()
            mapped = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        finally:
            self.discard()
        return ChunkList(mapped, adopt=True)

    def discard(self) -> None:
        """Close the scratch file, if any (a failed ingest's list; unlinked already)."""
        fd, self._fd = self._fd, None
        self._records, self._written = bytearray(), 0
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


#: The chunks of an empty file (or of an entry recorded without them).
NO_CHUNKS = ChunkList()


class KnownChunks:
    """The chunks of some files, to ask how many bytes of another file they hold.

    A diff of two versions asks it of every file. As a set of hex digests, a
    million chunks were 150 MB; past a few thousand chunks this keeps their
    sorted raw digests in numpy (32 bytes each) and answers with one search.
    """

    _SMALL = 4096

    def __init__(self, lists: Iterable[ChunkList]) -> None:
        known = ChunkList(b"".join(chunks.records for chunks in lists), adopt=True)
        self._set: set[bytes] | None = None
        self._keys: Any = None
        if len(known) <= self._SMALL:
            self._set = {digest for digest, _ in RECORD.iter_unpack(known.records)}
            return
        import numpy as np  # only for large versions: a diff of small ones does without

        self._keys = np.unique(known.rows()["digest"])

    def shared_bytes(self, chunks: ChunkList) -> int:
        """The bytes of ``chunks`` whose digest is one of the known chunks."""
        if self._set is not None:
            known = self._set
            return sum(size for digest, size in RECORD.iter_unpack(chunks.records)
                       if digest in known)

        rows = chunks.rows()
        if not len(rows) or not len(self._keys):
            return 0
        return int(rows["size"][self._known(rows)].sum())

    def unknown_bytes(self, chunks: ChunkList) -> int:
        """The bytes of the distinct chunks of ``chunks`` that are not known: what
        storing ``chunks`` next to the known ones adds (a repeat is stored once)."""
        if self._set is not None:
            known, seen, total = self._set, set(), 0
            for digest, size in RECORD.iter_unpack(chunks.records):
                if digest not in known and digest not in seen:
                    seen.add(digest)
                    total += size
            return total
        import numpy as np

        rows = chunks.rows()
        if not len(rows):
            return 0
        if len(self._keys):
            rows = rows[~self._known(rows)]
        _, first = np.unique(rows["digest"], return_index=True)
        return int(rows["size"][first].sum())

    def _known(self, rows: Any) -> Any:
        """Which of ``rows`` (``ChunkList.rows()``, known keys not empty) are known."""
        import numpy as np

        at = np.minimum(np.searchsorted(self._keys, rows["digest"]), len(self._keys) - 1)
        return self._keys[at] == rows["digest"]

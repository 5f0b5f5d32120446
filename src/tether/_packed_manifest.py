"""A manifest with its large chunk lists apart, as records: how a database row stores
it and how the REST API carries it.

A file of more than ``LISTED_CHUNKS`` chunks is written in the manifest as
``{"path", "size", "digest", "stored_chunks": [first record, count]}`` and its
chunk list goes, as packed 40-byte records, after every earlier such file's
(``stored_entries``). A row keeps those records in its ``chunk_records`` column
(repository.py); a request or an answer of the REST API sends them after the
JSON, in the same body (``PackedBody``, ``read_packed``). Either way the
records are handed over a piece at a time and read back into lists kept in
scratch files, so a million chunks never make a 53 MB base64 string, nor a
40 MB ``bytes`` plus its copies, in the client or the server.

The reader checks the layout, not the contents: ranges in order, back to back,
each record used once, none left over. Whether the lists are the version's is
for its digest to say (``_identity.require_intact``) or, for a commit, for the
registry, which recomputes every digest from them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ._errors import PayloadTooLarge, StoreError
from ._store import chunklist
from ._store.base import LISTED_CHUNKS, FileEntry
from ._store.blobs import make_temp, scratch_root
from ._store.chunklist import RECORD_SIZE, ChunkList, ListBudget

#: The REST API's packed form: one line of JSON, then the records it names.
MEDIA_TYPE = "application/x-tether-packed"
#: The head's key that says how many bytes of records follow it.
RECORDS_KEY = "records"
#: Most chunk records one version can keep: a row's value is at most 10^9 bytes on
#: SQLite and 1 GiB on PostgreSQL. 24 million chunks: 1.5 TB of files at 64 KiB.
MAX_RECORDS = 24_000_000 * RECORD_SIZE


def too_many_records(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a version of {size // RECORD_SIZE} chunks is over the "
        f"{MAX_RECORDS // RECORD_SIZE} a version can record",
        hint="split the files among several models or versions")


class StoredRecords:
    """The chunk records of a manifest's large files, back to back (``stored_entries``),
    handed over whole or a piece at a time."""

    def __init__(self, lists: Sequence[ChunkList]) -> None:
        self.lists = list(lists)

    def __len__(self) -> int:
        return sum(len(chunks) for chunks in self.lists) * RECORD_SIZE

    def joined(self) -> bytes | bytearray | memoryview:
        """Every record in one buffer (one list's own, without a copy)."""
        if len(self.lists) == 1:
            return memoryview(self.lists[0].records)
        return b"".join(piece for chunks in self.lists for piece in chunks.pieces())

    def pieces(self) -> Iterator[memoryview]:
        for chunks in self.lists:
            yield from chunks.pieces()


def stored_entries(files: Iterable[FileEntry | Mapping[str, Any]],
                   ) -> tuple[list[dict[str, Any]], StoredRecords | None]:
    """(manifest entries, chunk records) of ``files`` in the packed form.

    The records go as they are: as JSON text a million chunks were 90 MB
    (53 MB in base64), held twice while written and parsed again on every read.
    """
    entries, parts, at = [], [], 0
    for item in files:
        entry = item if isinstance(item, FileEntry) else FileEntry.from_dict(dict(item))
        if len(entry.chunks) <= LISTED_CHUNKS:
            entries.append(entry.to_dict())
            continue
        entries.append({"path": entry.path, "size": entry.size, "digest": entry.digest,
                        "stored_chunks": [at, len(entry.chunks)]})
        parts.append(entry.chunks)
        at += len(entry.chunks)
    return entries, StoredRecords(parts) if parts else None


class RecordSource(Protocol):
    """Records read a range at a time (a database blob, a request body)."""

    def __len__(self) -> int: ...

    def chunk_list(self, start: int, end: int, *, in_file: bool) -> ChunkList: ...


def files_from_entries(entries: Any, records: bytes | RecordSource | None, *,
                       in_file: bool) -> tuple[FileEntry, ...]:
    """The files ``entries`` (as ``stored_entries`` wrote them) and ``records`` describe;
    KeyError, TypeError or ValueError when they are not such a manifest.

    ``in_file``: lists are kept in memory up to ``SPILL_BYTES`` in all, and in
    scratch files past that (``chunklist.ListBudget``; in memory too if none can be
    made): for a version held for a whole load, not for lists of versions (each
    list in a file keeps a descriptor open).
    """
    if not isinstance(entries, list):
        raise TypeError(f"a manifest is a list, not {type(entries).__name__}")
    files, used, budget = [], 0, ListBudget()
    for data in entries:
        if "stored_chunks" not in data:
            files.append(FileEntry.from_dict(data))
            continue
        # Ranges in order, back to back, using every record once (so no manifest
        # makes a reader copy the records many times, and a stream can be read as
        # it comes).
        first, count = data["stored_chunks"]
        if (type(first) is not int or type(count) is not int or first != used
                or count <= 0 or records is None
                or (first + count) * RECORD_SIZE > len(records)):
            raise ValueError(f"{data.get('path')!r} names chunk records that are not there")
        start, end = first * RECORD_SIZE, (first + count) * RECORD_SIZE
        large = in_file and not budget.keeps(end - start)
        if not isinstance(records, bytes | bytearray | memoryview):
            chunks = records.chunk_list(start, end, in_file=large)
        elif large:
            with memoryview(records) as view:
                part = view[start:end]
                chunks = kept_in_file(lambda part=part: [part])  # type: ignore[misc]
        else:
            whole = start == 0 and end == len(records)  # the one large file: no copy
            chunks = ChunkList(records if whole else records[start:end])
        files.append(FileEntry(path=data["path"], size=int(data["size"]),
                               digest=data["digest"], chunks=chunks))
        used = first + count
    if records is not None and used * RECORD_SIZE != len(records):
        raise ValueError("there are chunk records no file names")
    return tuple(files)


def scratch() -> tuple[int, Path]:
    return make_temp(scratch_root(), "chunk-list")


def kept_in_file(pieces: Callable[[], Iterable[bytes | memoryview]]) -> ChunkList:
    """The records ``pieces()`` gives as a list kept in a scratch file, else (no scratch
    folder, a full disk, no descriptors left) read again into memory: reading a version
    must not fail for want of a place to put it."""
    try:
        return ChunkList.kept_in_file(pieces(), scratch)
    except (OSError, StoreError):
        return ChunkList(b"".join(pieces()), adopt=True)


# -- the REST API's packed form ------------------------------------------------------


class PackedBody:
    """``head`` as one line of JSON, with ``files`` under ``key`` in the packed form and
    their records after it: an HTTP body of known length that can be sent again
    (each iteration starts over, as a retry needs)."""

    def __init__(self, head: Mapping[str, Any], files: Iterable[FileEntry], *,
                 key: str) -> None:
        entries, self._records = stored_entries(files)
        size = len(self._records) if self._records is not None else 0
        text = json.dumps({**head, key: entries, RECORDS_KEY: size}, separators=(",", ":"))
        self._line = text.encode() + b"\n"  # json.dumps writes no raw newline
        self.length = len(self._line) + size

    def __iter__(self) -> Iterator[bytes]:
        yield self._line
        if self._records is not None:
            for piece in self._records.pieces():
                yield bytes(piece)


class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class StreamRecords:
    """Records read from a stream as ``files_from_entries`` asks for them, in order."""

    def __init__(self, stream: Reader, length: int) -> None:
        self._stream, self._length, self._at = stream, length, 0

    def __len__(self) -> int:
        return self._length

    @property
    def all_read(self) -> bool:
        return self._at == self._length

    def chunk_list(self, start: int, end: int, *, in_file: bool) -> ChunkList:
        if start != self._at:
            raise ValueError("chunk records are read in order")

        def pieces() -> Iterator[bytes]:
            while self._at < end:
                piece = self._stream.read(min(end - self._at,
                                              chunklist.PIECE_RECORDS * RECORD_SIZE))
                if not piece:
                    raise ValueError(f"the body ended {end - self._at} bytes into "
                                     "its chunk records")
                self._at += len(piece)
                yield piece

        if in_file:
            try:
                made = scratch()
            except (OSError, StoreError):
                made = None  # no scratch folder: in memory
            if made is not None:
                return ChunkList.kept_in_file(pieces(), lambda: made)
        return ChunkList(b"".join(pieces()), adopt=True)


def read_packed(stream: Any, limit: int, parse: Callable[[bytes], Any] = json.loads,
                ) -> tuple[dict[str, Any], StreamRecords]:
    """The head of a packed body (ValueError if it is not one, or longer than ``limit``)
    and its records, to be read with ``files_from_entries``, then ``finish``."""
    line = stream.readline(limit + 1)
    if not line.endswith(b"\n"):
        raise ValueError(f"a packed body starts with a line of JSON of at most {limit} "
                         "bytes" if len(line) > limit else "a packed body ended in its head")
    head = parse(line)
    if not isinstance(head, dict):
        raise ValueError("a packed body's head is a JSON object")
    size = head.pop(RECORDS_KEY, None)
    if type(size) is not int or size < 0 or size % RECORD_SIZE:
        raise ValueError(f"a packed body's head says how many bytes of {RECORD_SIZE}-byte "
                         f"records follow (\"{RECORDS_KEY}\")")
    if size > MAX_RECORDS:  # they go to scratch files: a server's word was their only bound
        raise ValueError(f"a packed body announces {size // RECORD_SIZE} chunk records, "
                         f"over the {MAX_RECORDS // RECORD_SIZE} a version can record")
    return head, StreamRecords(stream, size)


def finish(stream: Any, records: StreamRecords) -> None:
    """ValueError if the body goes on after its records (or they were not all read)."""
    if not records.all_read:
        raise ValueError("there are chunk records no file names")
    if stream.read(1):
        raise ValueError("a packed body goes on after its chunk records")


class IterReader:
    """``read``/``readline`` over an iterator of byte strings (an HTTP answer's body)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._buffer = bytearray()

    def _fill(self, want: int, stop: bytes | None = None) -> None:
        searched = 0  # where ``stop`` was last looked for: each byte is searched once
        while len(self._buffer) < want:
            if stop is not None and self._buffer.find(stop, searched) >= 0:
                return
            searched = len(self._buffer)
            piece = next(self._pieces, None)
            if piece is None:
                return
            self._buffer += piece

    def read(self, size: int) -> bytes:
        self._fill(size)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def readline(self, limit: int) -> bytes:
        self._fill(limit, b"\n")
        end = self._buffer.find(b"\n", 0, limit)
        size = end + 1 if end >= 0 else min(limit, len(self._buffer))
        return self.read(size)

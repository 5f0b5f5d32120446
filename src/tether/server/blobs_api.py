"""The artifact gateway: clients run the chunk store themselves, the server
authorises each object and either sends it (local store: by ``sendfile`` under
``tether server``, see protocol.py) or hands out a presigned URL (S3), so bytes go
straight between client and bucket.

Clients may read packs, indexes and pins, and write new ones under fresh
random names; they can never overwrite or delete stored data (only their own
ingest lease). An index is what makes a pack visible, so before one is stored
the server reads its pack and checks every chunk it claims against its digest:
a pack that lies (say, claiming another version's chunks with other bytes) is
refused and moved to the store's quarantine/, never published.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .._errors import (
    Conflict,
    InvalidInput,
    InvalidPath,
    NotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    TetherError,
    Unavailable,
)
from .._store.blobs import open_regular, scratch_root
from .._store.chunk_index import index_name
from .._store.fileio import IOV_MAX, start_writeback, write_pieces
from .bodies import parse_json
from .pins import check_pin
from .protocol import ZEROCOPY

_READABLE = re.compile(
    r"^(packs/[0-9a-f]{32}\.pack|index/[0-9a-f]{32}\.idx|pins/[0-9a-f]{32}\.json)\Z"
)
_WRITABLE = re.compile(
    r"^(packs/[0-9a-f]{32}\.pack|index/[0-9a-f]{32}\.idx|pins/[0-9a-f]{32}\.json"
    r"|locks/ingest-[0-9a-f]{32})\Z"
)
_LISTABLE = ("index/", "pins/", "locks/")
#: Largest object a client may upload (packs are 4-32 MB; gc may write larger ones).
MAX_OBJECT = 1024 * 1024 * 1024
#: Largest index file: it is read whole to be checked against its pack.
MAX_INDEX = 64 * 1024 * 1024
#: Bytes read and sent at a time: no route holds more of an object than this. 4 MB:
#: each block is a hop to a worker thread and a send; a 2 GB download through the
#: server took a median 3.76 s against 4.39 s with 1 MB blocks (six rounds each,
#: alternating servers), and 8 MB did no better.
_BLOCK = 4 * 1024 * 1024
#: An upload's bytes are handed to the disk this many at a time as they come, so
#: the fsync before it is stored has little left to wait for.
_WRITEBACK_STEP = 1024 * 1024
#: An upload's pieces (64-256 KB as they come off the socket) are written this many
#: bytes at a time, in one system call: 2 GB of new bytes logged through a server,
#: four interleaved rounds each, 290-308 MB/s against 261-294 written piece by piece
#: (the server's system time 2.4-2.6 s against 2.8-3.2).
_WRITE_BATCH = 1024 * 1024
#: No offset is past this (the largest file offset and S3 Range number there is).
_MAX_OFFSET = 2**63 - 1


class PackRejected(InvalidInput):
    """An uploaded pack does not hold the bytes its index claims."""

    code = "pack_rejected"
    http_status = 422


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``(start, end)`` inclusive of a single ``bytes=`` range over ``size`` bytes.

    Malformed or multiple ranges are 400, ranges no byte satisfies 416; an end
    past the object is clamped to its last byte (RFC 9110).
    """
    text = header.strip()
    unit, _, spec = text.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        raise InvalidInput(f"unsupported Range {header[:80]!r}", hint="bytes=START-END")
    if "," in spec:
        raise InvalidInput("multiple ranges are not supported", hint="ask for one: bytes=START-END")
    match = re.fullmatch(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*", spec)
    if not match or not (match[1] or match[2]):
        raise InvalidInput(f"malformed Range {header[:80]!r}", hint="bytes=START-END")
    first, last = match[1], match[2]
    if any(len(n) > 19 or int(n) > _MAX_OFFSET for n in (first, last) if n):
        raise RangeNotSatisfiable(f"Range {header[:80]!r} is past any object's size",
                                  hint=f"this object has {size} bytes")
    if not first:  # suffix: the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"Range {header[:80]!r} selects no byte of the object")
        return max(size - count, 0), size - 1
    start = int(first)
    if start >= size:  # first: 'bytes=N-' with N past the end said "ends before it starts"
        raise RangeNotSatisfiable(f"Range {header[:80]!r} starts past the object ({size} bytes)")
    end = int(last) if last else size - 1
    if end < start:
        raise RangeNotSatisfiable(f"Range {header[:80]!r} ends before it starts")
    return start, min(end, size - 1)


def _size_of(blobs: Any, key: str) -> int:
    path = blobs.local_path(key)
    if path is not None:
        try:
            return int(path.stat().st_size)
        except FileNotFoundError as error:
            raise NotFound(f"store object {key} does not exist") from error
    size = getattr(blobs, "size", None)
    if size is not None:
        return int(size(key))
    folder = key.rpartition("/")[0]
    for info in blobs.list(folder + "/"):
        if info.key == key:
            return int(info.size)
    raise NotFound(f"store object {key} does not exist")


def stream_range(blobs: Any, key: str, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``key`` (in a store that is not a local folder: those are
    ``FileRegion``s) from ``start``, in blocks of at most ``_BLOCK``."""
    iter_range = getattr(blobs, "iter_range", None)
    if iter_range is not None:
        return iter(iter_range(key, start, length, _BLOCK))

    def pieces() -> Iterator[bytes]:
        position, end = start, start + length
        while position < end:
            count = min(_BLOCK, end - position)
            yield blobs.get_range(key, position, count)
            position += count

    return pieces()


def _open_local(path: Path, key: str) -> BinaryIO:
    """Opened before the response starts, so a missing object is a 404, not a cut body."""
    # A regular file (a named pipe planted in the store blocked a worker thread for good),
    # closed by whoever sends it.
    return os.fdopen(open_regular(path, key), "rb")


def _file_blocks(handle: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    with handle:
        position, left = start, length
        while left > 0:
            block = os.pread(handle.fileno(), min(left, _BLOCK), position)
            if not block:
                return
            position += len(block)
            left -= len(block)
            yield block


class FileRegion(Response):
    """Bytes [start, start + length) of an open local file, sent by the kernel where
    the server offers ASGI's zero-copy send (``tether server``: protocol.py), else
    read and streamed in blocks (any other ASGI server, the test client)."""

    def __init__(self, handle: BinaryIO, start: int, length: int, *, status_code: int,
                 headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, headers=headers,
                         media_type="application/octet-stream")
        self.handle, self.start, self.length = handle, start, length

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if ZEROCOPY not in scope.get("extensions", {}):
            streamed = StreamingResponse(_file_blocks(self.handle, self.start, self.length),
                                         status_code=self.status_code,
                                         media_type="application/octet-stream")
            streamed.raw_headers = self.raw_headers
            await streamed(scope, receive, send)
            return
        with self.handle:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await send({"type": ZEROCOPY, "file": self.handle.fileno(), "offset": self.start,
                        "count": self.length, "more_body": False})


def check_key(key: str, *, write: bool) -> str:
    pattern = _WRITABLE if write else _READABLE
    if not pattern.match(key):
        raise InvalidPath(
            f"store key {key!r} is not one a client may {'write' if write else 'read'}",
            hint="keys look like packs/<32 hex>.pack, index/<32 hex>.idx, pins/<32 hex>.json",
        )
    return key


#: Largest lease a client may write (an owner and a time: a few hundred bytes).
MAX_LEASE = 64 * 1024
#: Largest pin: a pin lists every chunk an ingest references (68 bytes each), so a large
#: version's is large: about 1.09 GB for 1 TB of unique chunks, which went presigned to
#: S3 before pins were checked here. Checked in one pass, streamed, whatever its size.
MAX_PIN = 16 * MAX_OBJECT


def _limit_for(key: str) -> int:
    """The most bytes an upload to ``key`` may have."""
    if key.startswith("locks/"):
        return MAX_LEASE
    if key.startswith("index/"):
        return MAX_INDEX
    if key.startswith("pins/"):
        return MAX_PIN
    return MAX_OBJECT


def _lease_holder(blobs: Any, key: str) -> str | None:
    """The principal the server stamped into the lease at ``key`` (None: none, or no lease)."""
    try:
        data = parse_json(blobs.get_bytes(key))
    except (NotFound, InvalidInput):
        return None
    holder = data.get("principal") if isinstance(data, dict) else None
    return str(holder) if holder is not None else None


#: Leases are checked and written one at a time by the threads of this process ...
_LEASES = threading.Lock()
#: ... and across processes and servers, in a transaction of the registry's database
#: (PostgreSQL: holding this advisory lock; SQLite: its write lock, BEGIN IMMEDIATE).
_LEASE_LOCK_ID = zlib.crc32(b"tether.blobs.leases")
#: How long a lease request waits for another to finish before a 503 (clients retry).
_LEASE_WAIT_SECONDS = 10.0


@contextmanager
def _one_lease_writer(registry: Any) -> Iterator[None]:
    """Held while a lease's holder is read and the lease written or dropped: two writers
    who both saw no holder both got 201, and the last to write held it."""
    # Bounded: a database holding its write lock (another process's long transaction)
    # made every lease request wait behind the one before, until no worker thread was
    # left for any other request.
    if not _LEASES.acquire(timeout=_LEASE_WAIT_SECONDS):
        raise Unavailable("ingest leases are busy; nothing was changed",
                          hint="retry in a few seconds")
    try:
        with registry.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"),
                             {"id": _LEASE_LOCK_ID})
            yield
    finally:
        _LEASES.release()


def _stamp_lease(blobs: Any, key: str, tmp: Path, who: str) -> None:
    """Record who holds the lease ``tmp`` will become, and refuse another's.

    A lease's body comes from the client; without the principal any contributor could
    renew or drop another client's lease (gc could then run under that client's
    ingest). Renewing one's own lease is what a client does every few seconds.
    Call it holding ``_one_lease_writer``, and store the lease before letting go.
    """
    if tmp.stat().st_size > MAX_LEASE:
        raise InvalidInput(f"a lease of {tmp.stat().st_size} bytes is over {MAX_LEASE}")
    body = parse_json(tmp.read_bytes())  # InvalidInput, TooDeep: a 400 saying why
    if not isinstance(body, dict):
        raise InvalidInput(f"{key} is not a JSON object")
    holder = _lease_holder(blobs, key)
    if holder is not None and holder != who:
        raise Conflict(f"{key} is held by {holder}",
                       hint="wait for it to end, or to go stale if its client died")
    body["principal"] = who
    tmp.write_bytes(json.dumps(body).encode())


def _store_lease(registry: Any, key: str, tmp: Path, who: str) -> None:
    """Stamp and store the lease at ``key`` for ``who``, unless another holds it."""
    blobs = registry.store.blobs
    with _one_lease_writer(registry):
        _stamp_lease(blobs, key, tmp, who)
        blobs.put_file(key, tmp)


def _drop_lease(registry: Any, key: str, who: str) -> None:
    """Delete the lease at ``key``, if ``who`` holds it (or nobody does)."""
    blobs = registry.store.blobs
    with _one_lease_writer(registry):
        holder = _lease_holder(blobs, key)
        if holder is not None and holder != who:
            raise PermissionDenied(f"{key} is {holder}'s ingest lease; only its holder drops it",
                                   hint="a dead client's lease goes stale by itself; "
                                   "`tether gc` on the server removes it")
        blobs.delete(key)


def _refuse_if_stored(blobs: Any, key: str) -> None:
    """Conflict if ``key`` is stored: objects are never overwritten."""
    if _exists(blobs, key):
        raise Conflict(f"{key} already exists; stored objects are never overwritten")


def _put_new(blobs: Any, key: str, tmp: Path) -> None:
    """Store ``tmp`` as ``key``, never replacing it: a second upload racing the first must
    not swap bytes under an index that was verified against the first."""
    getattr(blobs, "put_file_new", blobs.put_file)(key, tmp)


def _exists(blobs: Any, key: str) -> bool:
    """Whether ``key`` is stored: one stat or HEAD, not a listing of its folder."""
    try:
        _size_of(blobs, key)
    except NotFound:
        return False
    return True


def _check_index(blobs: Any, key: str, data: bytes) -> dict[str, Any]:
    index = parse_json(data)  # InvalidInput, TooDeep: a 400 saying why
    try:
        pack, size, chunks = index["pack"], int(index["size"]), index["chunks"]
        entries = [(str(d), int(o), int(n), int(r), int(c)) for d, o, n, r, c in chunks]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InvalidInput(f"index file is malformed: {error}") from error
    if key != f"index/{pack}.idx":
        raise InvalidInput(f"{key} names pack {pack!r}; an index must be stored as "
                           f"index/<its pack id>.idx")
    try:
        actual = _size_of(blobs, f"packs/{pack}.pack")
    except NotFound:
        raise InvalidInput(
            f"index names pack {pack}, which is not uploaded",
            hint="upload the pack first, then its index",
        ) from None
    if actual != size or any(o < 0 or n <= 0 or o + n > size for _, o, n, _r, _c in entries):
        raise InvalidInput(f"index does not fit pack {pack} ({actual} bytes)")
    _refuse_repeats(pack, entries)
    return dict(index)


def _refuse_repeats(pack: str, entries: list[tuple[str, int, int, int, int]]) -> None:
    """A client writes each chunk once to a pack, back to back. Overlapping ranges, or a
    digest claimed twice, are honest bytes said many times over: a pack of 64 MB of one
    byte value claimed as a chunk at every offset was 750,000 true claims of one digest,
    which the server's index took hours to add (each a location beside the others)."""
    if len({digest for digest, *_ in entries}) != len(entries):
        raise InvalidInput(f"index of pack {pack} claims a chunk twice",
                           hint="a pack holds each chunk once")
    end = 0
    for _digest, offset, length, _raw, _codec in sorted(entries, key=lambda e: e[1]):
        if offset < end:
            raise InvalidInput(f"index of pack {pack} claims overlapping chunks (at {offset})",
                               hint="a pack's chunks follow each other")
        end = offset + length


def _verify_pack(store: Any, key: str, index: dict[str, Any], data: bytes) -> None:
    """Refuse (and quarantine) a pack whose bytes are not the chunks its index claims."""
    pack = str(index["pack"])
    check = store.check_pack(pack, index)
    if not check.problems:
        return
    _refuse_if_stored(store.blobs, key)  # another server process stored an honest one meanwhile
    where = store.quarantine(pack, check.problems, index_bytes=data)
    more = f" (and {len(check.problems) - 1} more)" if len(check.problems) > 1 else ""
    raise PackRejected(
        f"pack {pack} does not hold what its index claims: {check.problems[0]}{more}; "
        f"the index was refused and the pack moved to {where}",
        hint="upload the chunks' real bytes; a chunk's name is the BLAKE3 of its content",
    )


#: Uploads of one pack's index are checked one at a time (by stripe of pack names):
#: by the threads of this process, the processes of this host (``--workers``), and
#: the servers sharing a PostgreSQL database.
_INDEX_STRIPES = [threading.Lock() for _ in range(64)]
_INDEX_LOCK_ID = zlib.crc32(b"tether.blobs.index")


@contextmanager
def _one_index_check(registry: Any, key: str) -> Iterator[None]:
    """Held while an uploaded index of ``key``'s pack is checked and stored."""
    stripe = zlib.crc32(key.encode()) % len(_INDEX_STRIPES)
    folder = scratch_root() / "index-checks"
    folder.mkdir(parents=True, exist_ok=True)
    with _INDEX_STRIPES[stripe], open(folder / f"{stripe}.lock", "a+b") as host:
        fcntl.flock(host.fileno(), fcntl.LOCK_EX)  # unlocked as the file closes
        if registry.engine.dialect.name != "postgresql":
            yield
            return
        with registry.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"),
                         {"id": _INDEX_LOCK_ID + stripe})
            yield


def _store_index(registry: Any, key: str, tmp: Path) -> None:
    """Check the uploaded index ``tmp`` against its pack, store it, and add it to the
    server's own chunk index: from then on the commit naming its chunks does not read
    it back (128 files, 0.1 s of a 2 GB version's commit while its client waited).

    One at a time for a pack: a lying index sent slowly past the "exists?" check,
    while an honest one for the same pack was checked and stored, had the pack
    quarantined from under the honest index (a review). A liar met once an index is
    stored is refused without touching the pack."""
    data = tmp.read_bytes()
    store = registry.store
    blobs = store.blobs
    with _one_index_check(registry, key):
        index = _check_index(blobs, key, data)
        _refuse_if_stored(blobs, key)
        _verify_pack(store, key, index, data)
        _put_new(blobs, key, tmp)
        store.index.learn(index_name(key), str(index["pack"]), int(index["size"]),
                          index["chunks"])


async def _receive(stream: AsyncIterator[bytes], fd: int, *, writeback: bool,
                   limit: int | None = None) -> int:
    """Write an upload's body to ``fd`` as it comes, ``_WRITE_BATCH`` bytes (or
    ``IOV_MAX`` pieces) at a time (``writeback``: each MB handed to the disk at
    once); returns its size. Refused once past ``limit`` bytes (``MAX_OBJECT``)."""
    limit = MAX_OBJECT if limit is None else limit
    size = started = held = 0
    batch: list[bytes] = []
    async for block in stream:
        size += len(block)
        if size > limit:
            raise InvalidInput(f"object is over the {limit} byte limit")
        batch.append(block)
        held += len(block)
        # ... or IOV_MAX pieces, whichever comes first: a client trickling a byte at a
        # time would otherwise have a million small objects held for one batch.
        if held < _WRITE_BATCH and len(batch) < IOV_MAX:
            continue
        write_pieces(fd, batch)
        batch, held = [], 0
        if writeback and size - started >= _WRITEBACK_STEP:
            start_writeback(fd, started, size - started)
            started = size
    if batch:
        write_pieces(fd, batch)
    return size


def _error(error: TetherError, headers: dict[str, str]) -> Response:
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


class BlobGateway:
    def __init__(self, api: Any) -> None:
        self.api = api

    @property
    def blobs(self) -> Any:
        return self.api.registry.store.blobs

    def _caller(self, request: Request, role: str, action: str, key: str = "") -> str:
        """The registry decides who may; the gateway authenticates.

        The store is shared by every model, so its gateway needs the role registry-wide.
        Letting a role on one model upload and read the index was tried and withdrawn
        (2026-11-27): a review showed such a caller could graft another model's chunks
        into its own versions (the index names them; a commit checks only the role on
        its own model), forge pins that keep gc off another model's bytes for good, and
        take or drop other clients' leases.
        """
        reg, who = self.api.as_caller(request)
        why = " (the store holds the bytes of every model)"
        reg.require(role, action=action + why)
        return str(who)

    async def listing(self, request: Request) -> Any:
        self._caller(request, "reader", "reading the store", request.query_params.get("prefix", ""))
        prefix = request.query_params.get("prefix", "")
        if prefix not in _LISTABLE:
            raise InvalidInput(f"cannot list {prefix!r}", hint=f"prefixes: {', '.join(_LISTABLE)}")
        infos = await run_in_threadpool(self.blobs.list, prefix)
        return [{"key": i.key, "size": i.size, "mtime": i.mtime} for i in infos]

    async def presign(self, request: Request) -> Any:
        body = await self.api.read_json(request, {"key", "method"}, {"key", "method"})
        method = body["method"]
        if method not in ("GET", "PUT"):
            raise InvalidInput("method must be GET or PUT")
        key = check_key(str(body["key"]), write=method == "PUT")
        self._caller(
            request,
            "contributor" if method == "PUT" else "reader",
            "uploading artifacts" if method == "PUT" else "downloading artifacts",
            key,
        )
        if method == "PUT" and not key.startswith("locks/"):
            _refuse_if_stored(self.blobs, key)
        presign = getattr(self.blobs, "presign", None)
        if presign is None or key.startswith(("index/", "pins/", "locks/")):
            # Through the API: indexes and pins are checked there, and a lease is stamped
            # with its holder (a presigned lease skipped the stamp and named anyone).
            return {"url": None}
        url = await run_in_threadpool(presign, key, method)
        # A PUT URL only creates: the client sends this header (signed into the URL).
        headers = {"If-None-Match": "*"} if method == "PUT" else {}
        return {"url": url, "expires_in": 3600, "headers": headers}

    async def get(self, request: Request) -> Response:
        """The object, or one byte range of it: a local one sent by the kernel where the
        server can (``FileRegion``), else streamed in blocks (never read whole)."""
        key = check_key(request.path_params["key"], write=False)
        self._caller(request, "reader", "downloading artifacts", key)
        size = await run_in_threadpool(_size_of, self.blobs, key)
        header = request.headers.get("range")
        headers = {"Accept-Ranges": "bytes"}
        status = 200
        start, end = 0, size - 1
        if header is not None:
            try:
                start, end = parse_range(header, size)
            except RangeNotSatisfiable as error:
                return _error(error, {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        headers["Content-Length"] = str(length)
        if length <= 0:
            return Response(b"", status_code=status, media_type="application/octet-stream",
                            headers=headers)
        path = self.blobs.local_path(key)
        if path is not None:
            handle = await run_in_threadpool(_open_local, path, key)
            return FileRegion(handle, start, length, status_code=status, headers=headers)
        body = await run_in_threadpool(stream_range, self.blobs, key, start, length)
        return StreamingResponse(body, status_code=status, headers=headers,
                                 media_type="application/octet-stream")

    async def put(self, request: Request) -> Any:
        key = check_key(request.path_params["key"], write=True)
        who = self._caller(request, "contributor", "uploading artifacts")
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        limit = _limit_for(key)
        if length > limit:
            raise InvalidInput(f"object of {length} bytes is over the {limit} byte limit "
                               f"for {key.split('/')[0]}/")
        if not key.startswith("locks/"):
            await run_in_threadpool(_refuse_if_stored, self.blobs, key)
        fd, tmp = self.blobs.temp_file()
        try:
            try:
                # Only where the store keeps (and fsyncs) this file; a bucket's is
                # uploaded and deleted, its pages best dropped unwritten.
                size = await _receive(request.stream(), fd, writeback=self.blobs.is_local,
                                      limit=limit)
            finally:
                os.close(fd)
            if key.startswith("index/"):
                # Checked, stored and learned as one step (see _store_index).
                await run_in_threadpool(_store_index, self.api.registry, key, tmp)
            elif key.startswith("locks/"):
                # Checked and stored as one step: see _one_lease_writer.
                await run_in_threadpool(_store_lease, self.api.registry, key, tmp, who)
            else:
                if key.startswith("pins/"):
                    await run_in_threadpool(check_pin, key, tmp)
                await run_in_threadpool(_put_new, self.blobs, key, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return JSONResponse({"key": key, "size": size}, status_code=201)

    async def delete(self, request: Request) -> Any:
        key = request.path_params["key"]
        if not re.fullmatch(r"locks/ingest-[0-9a-f]{32}", key):
            raise PermissionDenied(
                "clients may only delete their own ingest lease",
                hint="stored data is removed by `tether gc` on the server",
            )
        who = self._caller(request, "contributor", "uploading artifacts")
        await run_in_threadpool(_drop_lease, self.api.registry, key, who)
        return {"deleted": key}

    def routes(self) -> list[Route]:
        w = self.api.wrap
        return [
            Route("/blobs", w(self.listing), methods=["GET"]),
            Route("/blobs/presign", w(self.presign), methods=["POST"]),
            Route("/blobs/{key:path}", w(self.get), methods=["GET"]),
            Route("/blobs/{key:path}", w(self.put), methods=["PUT"]),
            Route("/blobs/{key:path}", w(self.delete), methods=["DELETE"]),
        ]

"""Where a pack's bytes wait between being written and being published.

A store on this machine (or a bucket, through boto3's file upload) takes a pack
as a file: ``FileBody`` writes it to one of the store's temporary files, which
``put_file`` renames into place or uploads. A Tether server's gateway takes it
as a request body: ``MemoryBody`` keeps it in a reused buffer that is sent from
memory. Through a server, writing each pack to a temporary file first only to
send it again cost the client 0.45 s of system time per 2 GB here (fresh
page-cache pages for every pack), a tenth of the whole log.

Memory stays bounded: a writer holds one body being filled and at most
``upload_streams`` being sent, each about one pack (2-16 MB over a network), and
their buffers are reused from pack to pack.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any, Protocol

from .blobs import disk_full
from .fileio import BufferPool, start_writeback, write_pieces


class PackBody(Protocol):
    def write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None: ...
    def seal(self) -> None: ...
    def publish(self, blobs: Any, key: str) -> None: ...
    def discard(self) -> None: ...


class FileBody:
    """A pack in one of the store's temporary files."""

    def __init__(self, blobs: Any) -> None:
        self.fd: int | None
        self.fd, self.path = blobs.temp_file()
        self.size = 0
        #: A store on this disk fsyncs the file as it is published: its writeback is
        #: started as it is written. A bucket's temporary file is uploaded and
        #: deleted, its pages usually dropped unwritten: never hand those to the disk.
        self._kept_here = bool(getattr(blobs, "is_local", False))

    def write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        assert self.fd is not None
        size = sum(len(piece) for piece in pieces)
        try:
            write_pieces(self.fd, pieces)
        except OSError as error:
            self.discard()
            raise disk_full(error, self.path) or error from error
        if self._kept_here:
            start_writeback(self.fd, self.size, size)  # the fsync at publishing waits less
        self.size += size

    def seal(self) -> None:
        """Close the file (a full disk may only show here)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError as error:
            self.discard()
            raise disk_full(error, self.path) or error from error

    def publish(self, blobs: Any, key: str) -> None:
        try:
            blobs.put_file(key, self.path)
        finally:
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)


class MemoryBody:
    """A pack in a buffer of ``pool``'s, sent with the blob store's ``put_buffer``."""

    def __init__(self, pool: BufferPool, capacity: int) -> None:
        self.pool = pool
        self.buffer: bytearray | None = pool.take(capacity)
        self.size = 0

    def write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        buffer = self.buffer
        assert buffer is not None
        needed = self.size + sum(len(piece) for piece in pieces)
        if needed > len(buffer):  # a pack ends past its target by up to one chunk
            # A new buffer, not a resized one: a view of the old one may still be held
            # (a sender's, say), and a bytearray with views cannot be resized.
            grown = bytearray(max(needed, len(buffer) + len(buffer) // 4))
            grown[:self.size] = memoryview(buffer)[:self.size]
            self.buffer = buffer = grown
        for piece in pieces:
            end = self.size + len(piece)
            buffer[self.size:end] = piece
            self.size = end

    def seal(self) -> None:
        pass

    def publish(self, blobs: Any, key: str) -> None:
        assert self.buffer is not None
        try:
            blobs.put_buffer(key, memoryview(self.buffer)[:self.size])
        finally:
            self.discard()

    def discard(self) -> None:
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            self.pool.give(buffer)


def body_for(blobs: Any, pool: BufferPool, capacity: int) -> PackBody:
    """The body a pack for ``blobs`` is written into (memory where it is sent from there)."""
    if hasattr(blobs, "put_buffer"):
        return MemoryBody(pool, capacity)
    return FileBody(blobs)

"""Where a pack's bytes wait between being written and being published: one of the
store's temporary files, which ``put_file`` renames into place (a folder) or
uploads (a server's gateway, a bucket).

Sending packs to a server from reused memory buffers instead was tried
(2026-11-27): with 10 MB packs it saved the client 0.7 s of system time per
2 GB logged and ran 8% faster, but once packs were 16 MB and the server started
their writeback as they came, it ran no faster (477 against 475 MB/s, three
interleaved rounds each) and held 67 MB more (four buffers of a pack each): it
was dropped, for the memory bound.

A large ingest into a store on this disk writes its packs around the page cache
(O_DIRECT, ``_DirectWrites``); everything else, and any filesystem without
direct I/O, writes through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cache
from typing import Any

from .._envflags import env_off
from . import native
from .blobs import disk_full
from .fileio import aligned_buffer, start_writeback, write_pieces

#: A large ingest's pack in a store on this disk is written around the page cache
#: (O_DIRECT), this many bytes at a time, from one of ``_BUFFERS`` buffers while the
#: next fills.
STAGE = 8 * 1024 * 1024
#: What O_DIRECT offsets and lengths are multiples of (the largest logical block size).
_BLOCK = 4096


class PackFile:
    """A pack being written, in one of the store's temporary files."""

    def __init__(self, blobs: Any, *, direct: bool = False) -> None:
        self.fd: int | None
        self.fd, self.path = blobs.temp_file()
        self.size = 0
        #: A store on this disk fsyncs the file as it is published: its writeback is
        #: started as it is written. A bucket's temporary file is uploaded and
        #: deleted, its pages usually dropped unwritten: never hand those to the disk.
        self._kept_here = bool(blobs.is_local)
        #: Written around the page cache when asked (``direct``: a large ingest) and
        #: the store is on this disk (see _DirectWrites); None where it cannot be, or
        #: is turned off.
        try:
            self._direct = (_DirectWrites.open(self.path, self.fd)
                            if direct and self._kept_here else None)
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        #: The file's ordinary descriptor, sealed but kept open until the direct writes
        #: are done and the file is cut to its size (in ``publish``).
        self._open_fd: int | None = None

    def write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        assert self.fd is not None
        size = sum(len(piece) for piece in pieces)
        try:
            if self._direct is not None:
                self._direct.write(pieces)
                self.size += size
                return
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
            if self._direct is not None:
                # Waited for as it is published, on the publisher's thread.
                self._open_fd = fd
                self._direct.send_rest()
                return
            os.close(fd)
        except OSError as error:
            self.discard()
            raise disk_full(error, self.path) or error from error

    def publish(self, blobs: Any, key: str) -> None:
        try:
            direct, self._direct = self._direct, None
            if direct is not None:
                fd, self._open_fd = self._open_fd, None
                assert fd is not None
                try:
                    direct.complete(fd, self.size)
                except OSError as error:
                    raise disk_full(error, self.path) or error from error
                finally:
                    with contextlib.suppress(OSError):
                        os.close(fd)  # its data went direct; put_file's fsync is the check
            blobs.put_file(key, self.path)
        finally:
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.abandon()
        fd, self._open_fd = self._open_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self.path.unlink(missing_ok=True)


class _DirectWrites:
    """A pack file written with O_DIRECT: the chunks are copied into page-aligned
    buffers of ``STAGE`` bytes, and each full one is written by a worker thread
    while the next fills.

    Why: on these machines writing 2 GB to a new file and fsyncing it cost the
    writer 1.7-3.3 CPU seconds through the page cache (the copy into fresh pages,
    then the writeback of every page) and 0.2 direct (a copy into buffers used
    again and again), and took 2.4-4.2 s against 0.9-1.3 (bench/RESULTS.md). Large
    writes matter: one 8 MB write in flight kept the disk at 1.7-2.0 GB/s. Ingest
    hands over a window's new chunks at once (8 MB), so ``_BUFFERS`` buffers take a
    window while the one before is still being written; the copy is made without
    the GIL (native.gather), which the hashing threads need meanwhile.

    What it costs: the packs are not in the page cache afterwards, so a load on the
    same machine right after the log reads them from the disk.

    Where the folder's filesystem refuses O_DIRECT (at open, as tmpfs did before Linux
    6.6; or at the first write), or ``TETHER_DIRECT_IO`` is off, the pack is written
    through the page cache as before. Each pack holds its buffers until it is
    published: a local store publishes one at a time, so at most two packs' (48 MB).
    """

    def __init__(self, fd: int, plain: int, device: int) -> None:
        self.fd = fd
        #: The file's ordinary descriptor (the PackFile's), where a write the system
        #: refuses direct goes instead; and the device that refused it (see _refused).
        self.plain = plain
        self.device = device
        self.free = _take_buffers()
        #: The buffer being filled (None only while one is being handed over).
        self.current: memoryview | None = self.free.pop()
        self.fill = 0
        self.offset = 0  # where the current buffer goes in the file
        #: Writes under way, oldest first, with the buffer each is written from.
        self.pending: deque[tuple[Future[None], memoryview]] = deque()

    @classmethod
    def open(cls, path: Any, plain: int) -> _DirectWrites | None:
        """Direct writes to the new file ``path`` (open as ``plain``), or None."""
        if env_off("TETHER_DIRECT_IO") or not hasattr(os, "O_DIRECT"):
            return None
        device = os.fstat(plain).st_dev
        if device in _refused:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None  # EINVAL: this filesystem has no direct I/O
        try:
            return cls(fd, plain, device)
        except BaseException:  # no memory for the buffers, say
            os.close(fd)
            raise

    def write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        batch: list[memoryview] = []  # what fits the current buffer, copied in one call
        room = STAGE - self.fill
        for piece in pieces:
            view = memoryview(piece).cast("B")
            while len(view) >= room:
                batch.append(view[:room])
                view = view[room:]
                assert self.current is not None
                native.gather(self.current, self.fill, batch)
                batch = []
                self.fill = STAGE
                self._send(STAGE)
                room = STAGE
            if view:
                batch.append(view)
                room -= len(view)
        if batch:
            assert self.current is not None
            native.gather(self.current, self.fill, batch)
            self.fill = STAGE - room

    def _send(self, length: int) -> None:
        """Hand the current buffer's first ``length`` bytes (a multiple of _BLOCK) to the
        worker and go on in a free buffer (waiting for the oldest write if none is)."""
        buffer, self.current = self.current, None
        assert buffer is not None
        job = _writer().submit(self._write_at, buffer[:length], self.offset)
        self.pending.append((job, buffer))
        self.offset += length
        self.fill = 0
        if not self.free:
            # Left pending until it is done: a failed write, or a Ctrl-C meanwhile,
            # leaves it for abandon() to wait for, its buffer never handed out twice.
            self.pending[0][0].result()
            self.free.append(self.pending.popleft()[1])
        self.current = self.free.pop()

    def send_rest(self) -> None:
        """Hand over what is left, padded with zeros to a whole block (``complete``
        cuts the file back to its size)."""
        if self.fill and self.current is not None:
            whole = -(-self.fill // _BLOCK) * _BLOCK
            self.current[self.fill:whole] = bytes(whole - self.fill)
            self._send(whole)

    def complete(self, fd: int, size: int) -> None:
        """Wait for every write, cut the file to ``size`` through the ordinary
        descriptor ``fd``, and let go of the buffers."""
        try:
            for job, _buffer in self.pending:
                job.result()  # the first failure, raised once abandon has waited for all
            os.ftruncate(fd, size)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop: wait for writes under way (their buffers are reused), close, and give
        the buffers back."""
        while self.pending:
            wait([self.pending[0][0]])  # done, failed or not: only then is its buffer free
            self.free.append(self.pending.popleft()[1])
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.current is not None:
            self.free.append(self.current)
            self.current = None
        if self.free:
            _give_buffers(self.free)
            self.free = []

    def _write_at(self, buffer: memoryview, offset: int) -> None:
        """On the worker: one buffer's bytes at ``offset``. A filesystem that opens
        files for direct I/O and then refuses the writes (EINVAL: alignment rules of
        its own) gets this write, and every later one on its device, through the page
        cache, rather than a failed ingest."""
        if self.device not in _refused:
            try:
                write_pieces(self.fd, [buffer], offset)
                return
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                _refused.add(self.device)
        write_pieces(self.plain, [buffer], offset)


#: Devices whose filesystem refused a direct write: written through the page cache.
_refused: set[int] = set()


@cache
def _writer() -> ThreadPoolExecutor:
    # Two: the last writes of a pack being published can overlap the next pack's first.
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="tether-direct-write")


#: Buffers each direct-written pack fills and writes from.
_BUFFERS = 3
#: Buffers of packs finished, kept for the next while an ingest runs (fresh memory is
#: what costs); ``drop_spare_buffers`` lets them go when it ends.
_spare: list[memoryview] = []
_spare_lock = threading.Lock()


def _take_buffers() -> list[memoryview]:
    with _spare_lock:
        taken = [_spare.pop() for _ in range(min(_BUFFERS, len(_spare)))]
    return taken + [aligned_buffer(STAGE) for _ in range(_BUFFERS - len(taken))]


def _give_buffers(buffers: list[memoryview]) -> None:
    with _spare_lock:
        for buffer in buffers:
            if len(_spare) < 2 * _BUFFERS and not any(b is buffer for b in _spare):
                _spare.append(buffer)


def drop_spare_buffers() -> None:
    """Let go of the buffers kept for the next pack (an ingest has ended)."""
    with _spare_lock:
        _spare.clear()

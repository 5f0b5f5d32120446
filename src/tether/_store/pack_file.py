"""Where a pack's bytes wait between being written and being published: one of the
store's temporary files, which ``put_file`` renames into place (a folder) or
uploads (a server's gateway, a bucket).

Sending packs to a server from reused memory buffers instead was tried
(2026-11-27): with 10 MB packs it saved the client 0.7 s of system time per
2 GB logged and ran 8% faster, but once packs were 16 MB and the server started
their writeback as they came, it ran no faster (477 against 475 MB/s, three
interleaved rounds each) and held 67 MB more (four buffers of a pack each): it
was dropped, for the memory bound.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from .blobs import disk_full
from .fileio import start_writeback, write_pieces


class PackFile:
    """A pack being written, in one of the store's temporary files."""

    def __init__(self, blobs: Any) -> None:
        self.fd: int | None
        self.fd, self.path = blobs.temp_file()
        self.size = 0
        #: A store on this disk fsyncs the file as it is published: its writeback is
        #: started as it is written. A bucket's temporary file is uploaded and
        #: deleted, its pages usually dropped unwritten: never hand those to the disk.
        self._kept_here = bool(blobs.is_local)

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

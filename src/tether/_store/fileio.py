"""Reading a stretch of a file into a buffer the caller owns.

Ingest, load and the cutting workers read into buffers they reuse (fresh pages
for every read cost more than the read here); this is their one read loop.
Light on purpose: the cutting workers import it.
"""

from __future__ import annotations

import os


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; the bytes read, fewer only at end of file."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled:]], offset + filled)
        if not got:
            break
        filled += got
    return filled

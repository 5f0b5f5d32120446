"""Reading an ingest's pin (``pins/<32 hex>.json``) without parsing it into objects.

A pin names the chunks an ingest reuses: ``{"chunks": ["<64 hex>", ...], "owner":
"<tag>", "created": <time>}``. A large version's is large (1.6 GB for 1.5 TB), and
a server accepts pins up to 16 GB: gc read each whole, twice, into Python lists
(a 191 MB pin took gc from 74 MB to 661 MB; a contributor's 16 GB one made gc
impossible: a review). Here a pin is mapped (a store folder's file in place, any
other store's fetched to a scratch file in pieces), its owner found by one
pattern and its digests walked in runs, each turned into gc's 8-byte keys.
Whatever is not a digest is skipped: a malformed pin keeps nothing, and a pin
can only ever keep more chunks, never fewer.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._errors import RangeNotSatisfiable, StoreError
from .blobs import make_temp, scratch_root

_OWNER = re.compile(rb'"owner"[ \t\n\r]*:[ \t\n\r]*("(?:[^"\\\x00-\x1f]|\\.){0,1024}")')
_DIGEST = re.compile(rb'"([0-9a-f]{64})"')
#: Digests turned into keys at a time.
_RUN = 65536
#: Bytes of a pin fetched at a time from a store that is not a folder.
_PIECE = 8 << 20
#: The most of one pin read (a server accepts pins up to 16 GB).
_MAX_PIN = 16 << 30


@contextlib.contextmanager
def mapped_pin(blobs: Any, key: str, size: int) -> Iterator[bytes | mmap.mmap]:
    """The pin's bytes, mapped (``size``: its listed size); empty when it is empty or
    gone. NotFound and store errors pass through."""
    local = blobs.local_path(key)
    if local is not None:
        with open(local, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield data
        return
    fd, path = make_temp(getattr(blobs, "tmp_dir", None) or scratch_root(), "pin")
    try:
        with os.fdopen(fd, "w+b") as out:
            # To its end, whatever the listing said (one that under-reported a pin's size
            # had gc keep none of its chunks: a review), and no shorter than listed (a
            # short answer would keep its first part only). Pins are written once.
            offset = 0
            while offset < _MAX_PIN:
                try:
                    piece = blobs.get_range(key, offset, _PIECE)
                except RangeNotSatisfiable:
                    break
                out.write(piece)
                offset += len(piece)
                if len(piece) < _PIECE:
                    break
            if offset < size:
                raise StoreError(f"{key} answered fewer bytes than listed; gc removed "
                                 "nothing", hint="run it again")
            out.flush()
            if out.tell() == 0:
                yield b""
                return
            with mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield data
    finally:
        path.unlink(missing_ok=True)


def pin_owner(data: bytes | mmap.mmap) -> str:
    """The pin's owner tag ("" when it names none)."""
    found = _OWNER.search(data)
    if found is None:
        return ""
    try:
        owner = json.loads(found.group(1))
    except ValueError:
        return ""
    return owner if isinstance(owner, str) else ""


def pin_keys(data: bytes | mmap.mmap) -> Iterator[Any]:
    """gc's 8-byte keys of the pin's digests, as uint64 arrays of at most ``_RUN``."""
    run: list[int] = []
    for found in _DIGEST.finditer(data):
        run.append(int(found.group(1)[:16], 16))
        if len(run) >= _RUN:
            yield np.array(run, dtype=np.uint64)
            run = []
    if run:
        yield np.array(run, dtype=np.uint64)

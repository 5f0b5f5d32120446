"""Cutting and hashing whole windows without the GIL, when the native core is built.

``_native`` (``_native.c``, built by ``setup.py`` with the vendored BLAKE3 C
code) cuts a buffer with FastCDC and hashes each chunk in one call that
releases the GIL, so threads can share the work. pyfastcdc and blake3 each
release the GIL per chunk and take it back to hand the chunk to Python: a
thread that does that 13,000 times a GB waits behind every busy Python thread,
which is why cutting otherwise runs on worker processes (cutting.py).

The gear tables and masks are pyfastcdc's own, read from its constants, so
the chunks are exactly pyfastcdc's (tests/test_store_native.py compares every
boundary). Where the extension was not built (no C compiler at install time),
``available`` is False and callers keep to pyfastcdc and blake3.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from functools import cache
from itertools import chain
from typing import Any

import blake3
from pyfastcdc import utils as _fastcdc_utils
from pyfastcdc.py.constants import GEAR, GEAR_LS, MASKS

from .._envflags import env_off
from .chunklist import RECORD

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError:  # not built here: pyfastcdc and worker processes
    _native = None

#: Whether the extension was built at install time ...
built = _native is not None
#: ... and is in use: built and not turned off (``TETHER_NATIVE=0``).
available = built and not env_off("TETHER_NATIVE")

_GEAR = GEAR.tobytes()
_GEAR_LS = GEAR_LS.tobytes()


@cache
def _sizes(avg_size: int) -> tuple[int, int, int, int, int]:
    """(min, avg, max, mask_s, mask_l) as pyfastcdc's ``FastCDC(avg_size)`` sets them
    (normalized chunking 1, no seed)."""
    bits = _fastcdc_utils.logarithm2(avg_size)
    return avg_size // 4, avg_size, avg_size * 4, MASKS[bits + 1], MASKS[bits - 1]


def cut(view: memoryview | bytes, avg_size: int, *, keep_last: bool, hash: bool = True) -> bytes:
    """The chunks of ``view`` as 40-byte records (BLAKE3 digest, u64 length: chunklist.RECORD).

    Unless ``keep_last``, a last chunk that ends only because ``view`` does is left
    out (when there is more than one). Digests are zero bytes unless ``hash``.
    """
    assert _native is not None
    out: bytes = _native.cut(view, _GEAR, _GEAR_LS, *_sizes(avg_size), keep_last, hash)
    return out


def gather(dest: memoryview, offset: int, pieces: list[memoryview]) -> None:
    """Copy ``pieces`` one after another into ``dest`` from ``offset`` on: in one call
    without the GIL where the native core is in use (slice assignments hold it)."""
    if _native is not None and available:
        _native.gather(dest, offset, pieces)
        return
    for piece in pieces:
        dest[offset:offset + len(piece)] = piece
        offset += len(piece)


def lengths(records: bytes) -> list[int]:
    """The chunk lengths of ``cut``'s records."""
    return [size for _digest, size in RECORD.iter_unpack(records)]


def digests(view: memoryview | bytes, spans: Sequence[tuple[int, int]]) -> list[str]:
    """The BLAKE3 (hex) of each ``(offset, length)`` span of ``view``, in one call
    without the GIL. A span past the end of ``view`` is a ValueError."""
    assert _native is not None
    out = _native.hash_spans(view, array("Q", chain.from_iterable(spans)))
    return [out[i:i + 32].hex() for i in range(0, len(out), 32)]


def follow(view: memoryview | bytes | bytearray, offset: int, records: Any, first: int,
           longest: int) -> bytes:
    """The records (``cut``'s layout) of ``view``'s chunks from ``offset`` on that are,
    one after another, those of ``records`` from record ``first`` on: each hashed and
    compared in turn, in one call without the GIL, stopping at the first that
    differs, does not fit in ``view``, or is empty or longer than ``longest``. The
    records returned are what was hashed, not read back from ``records``."""
    assert _native is not None
    matched: bytes = _native.follow(view, offset, records, first, longest)
    return matched


class _Pieces:
    """blake3's hasher with ``update_many``, where the native core is not in use."""

    __slots__ = ("_hasher",)

    def __init__(self) -> None:
        self._hasher = blake3.blake3()

    def update(self, piece: Any) -> None:
        self._hasher.update(piece)

    def update_many(self, pieces: Sequence[Any]) -> None:
        for piece in pieces:
            self._hasher.update(piece)

    def digest(self) -> bytes:
        return bytes(self._hasher.digest())

    def hexdigest(self) -> str:
        return str(self._hasher.hexdigest())


def hasher() -> Any:
    """A BLAKE3 hasher whose ``update_many(pieces)`` hashes a run's chunks in one call
    that releases the GIL once (with the native core): blake3's own takes the GIL back
    after every update, and beside a busy Python thread 8,000 updates of 64 KB took
    3.1 s against 0.09 s alone."""
    if available:
        assert _native is not None
        return _native.Hasher()
    return _Pieces()

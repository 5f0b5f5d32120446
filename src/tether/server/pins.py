"""What a client may store as a pin: checked in one pass over the file, in bounded memory.

A pin (``pins/<32 hex>.json``) names the chunks an ingest reuses, so that gc spares
them until the version commits: ``{"created": <number>, "owner": "<tag>", "chunks":
["<64 hex>", ...]}``, in any key order (older clients wrote ``chunks`` before
``owner``, the oldest no ``owner`` at all). Anything else was stored as it came (300
MB of NUL bytes, once). A pin of a large version is large (a 1.5 TB version's lists
24 million chunks, 1.6 GB), so it is not parsed into objects: regular expressions
walk the mapped file, the chunk list ``_RUN`` digests at a time.
"""

from __future__ import annotations

import json
import math
import mmap
import re
from pathlib import Path

from .._errors import InvalidInput, UnknownField

_WS = rb"[ \t\n\r]*"
_OPEN = re.compile(_WS + rb"\{" + _WS)
_CLOSE_EMPTY = re.compile(rb"\}")
_KEY = re.compile(rb'"(created|owner|chunks)"' + _WS + rb":" + _WS)
_OTHER_KEY = re.compile(rb'"((?:[^"\\\x00-\x1f]|\\.){0,64})"' + _WS + rb":")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?(?:[eE][+-]?[0-9]{1,4})?")
#: An owner tag is host~pid~start: far below this.
MAX_OWNER = 1024
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,%d}"'
                     % MAX_OWNER)
_LIST_OPEN = re.compile(rb"\[" + _WS)
_LIST_EMPTY = re.compile(rb"\]")
_DIGEST = re.compile(rb'"[0-9a-f]{64}"')
#: Digests matched at a time after the first: each match holds no more than this.
_RUN = 16384
_MORE = re.compile(rb'(?:' + _WS + rb"," + _WS + rb'"[0-9a-f]{64}"){1,%d}+' % _RUN)
_LIST_CLOSE = re.compile(_WS + rb"\]")
_NEXT = re.compile(_WS + rb"([,}])" + _WS)
_END = re.compile(_WS + rb"\Z")

_SHAPE = 'a pin is a JSON object {"chunks": ["<64 hex>", ...], "created": <time>, ' \
         '"owner": "<tag>"}'


def _not_a_pin(key: str, why: str) -> InvalidInput:
    return InvalidInput(f"{key} is not a pin: {why}", hint=_SHAPE)


def check_pin(key: str, path: Path) -> None:
    """Refuse (``InvalidInput`` naming what is wrong) a file that is not a pin."""
    with open(path, "rb") as handle:
        if not handle.seek(0, 2):
            raise _not_a_pin(key, "it is empty")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check(key, data)


def _check(key: str, data: mmap.mmap) -> None:
    opened = _OPEN.match(data)
    if opened is None:
        raise _not_a_pin(key, "it is not a JSON object")
    pos = opened.end()
    seen: set[bytes] = set()
    if not _CLOSE_EMPTY.match(data, pos):
        while True:
            found = _KEY.match(data, pos)
            if found is None:
                other = _OTHER_KEY.match(data, pos)
                if other is not None:
                    name = other.group(1).decode("utf-8", "replace")
                    raise UnknownField(f"{key}: a pin has no field {name!r}",
                                       hint="fields: chunks, created, owner")
                raise _not_a_pin(key, f"it is not JSON at byte {pos}")
            name = found.group(1)
            if name in seen:
                raise _not_a_pin(key, f"it names {name.decode()!r} twice")
            seen.add(name)
            pos = _VALUE[name](key, data, found.end())
            separator = _NEXT.match(data, pos)
            if separator is None:
                raise _not_a_pin(key, f"it is not JSON at byte {pos}")
            pos = separator.end()
            if separator.group(1) == b"}":
                break
    else:
        pos += 1
    if _END.match(data, pos) is None:
        raise _not_a_pin(key, f"there is more after the object, at byte {pos}")
    if b"chunks" not in seen:
        raise _not_a_pin(key, "it has no chunks")


def _created(key: str, data: mmap.mmap, pos: int) -> int:
    number = _NUMBER.match(data, pos)
    if number is None or not math.isfinite(float(number.group())):
        raise InvalidInput(f"{key}: a pin's created must be a finite number (a Unix time)",
                           hint=_SHAPE)
    return number.end()


def _owner(key: str, data: mmap.mmap, pos: int) -> int:
    text = _STRING.match(data, pos)
    try:
        if text is None:
            raise ValueError
        json.loads(text.group())  # valid UTF-8, escapes that decode
    except ValueError:
        raise InvalidInput(f"{key}: a pin's owner must be a string of at most {MAX_OWNER} "
                           "characters", hint=_SHAPE) from None
    return text.end()


def _chunks(key: str, data: mmap.mmap, pos: int) -> int:
    opened = _LIST_OPEN.match(data, pos)
    if opened is None:
        raise InvalidInput(f"{key}: a pin's chunks must be a list of digests", hint=_SHAPE)
    pos = opened.end()
    if _LIST_EMPTY.match(data, pos):
        return pos + 1
    first = _DIGEST.match(data, pos)
    if first is not None:
        pos = first.end()
        while (more := _MORE.match(data, pos)) is not None:
            pos = more.end()
        closed = _LIST_CLOSE.match(data, pos)
        if closed is not None:
            return closed.end()
    raise InvalidInput(f"{key}: a pin's chunks must be 64-digit lowercase hex digests in "
                       f"quotes, separated by commas; not so at byte {pos}", hint=_SHAPE)


_VALUE = {b"created": _created, b"owner": _owner, b"chunks": _chunks}

"""What a committed manifest must be for its version ever to load.

A commit used to take paths no file system can hold (100,000 characters) and
files whose chunk lists cannot rebuild them (200,000 bytes and no chunks); the
version was numbered, and every load of it failed. Refused at commit instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import InvalidInput, InvalidPath, TooDeep
from .._store.base import FileEntry

#: Longest path component and longest path, in UTF-8 bytes: what Linux holds (NAME_MAX,
#: PATH_MAX), so a version's files can be written out where they are loaded.
MAX_COMPONENT = 255
MAX_PATH = 4096
#: Largest file size: the largest file offset there is.
MAX_FILE_SIZE = 2**63 - 1


def _shown(path: str) -> str:
    return repr(path) if len(path) <= 80 else f"{path[:60]!r}... ({len(path)} characters)"


def check_path_length(path: str) -> None:
    """Refuse (``InvalidPath``) a path no file system holds: over ``MAX_PATH`` bytes, a
    component over ``MAX_COMPONENT`` bytes, or text that is not Unicode."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"manifest path {_shown(path)} is not valid Unicode") from None
    if len(encoded) > MAX_PATH:
        raise InvalidPath(
            f"manifest path {_shown(path)} is {len(encoded)} bytes, longer than {MAX_PATH} "
            "bytes",
            hint=f"paths are at most {MAX_PATH} bytes, each folder or file name at most "
            f"{MAX_COMPONENT} (in UTF-8)",
        )
    for part in encoded.split(b"/"):
        if len(part) > MAX_COMPONENT:
            name = part.decode("utf-8")
            raise InvalidPath(
                f"manifest path {_shown(path)} has a name of {len(part)} bytes "
                f"({_shown(name)}); names are at most {MAX_COMPONENT} bytes",
                hint=f"each folder or file name at most {MAX_COMPONENT} bytes (in UTF-8)",
            )


def check_loadable(files: Iterable[FileEntry]) -> None:
    """Refuse a manifest a load could never rebuild: paths too long for a file system,
    or a file whose chunks do not add up to its size (an empty list is 0 bytes)."""
    for entry in files:
        check_path_length(entry.path)
        if entry.size < 0:
            raise InvalidInput(f"manifest size of {_shown(entry.path)} is {entry.size}, "
                               "not a byte count")
        if entry.size > MAX_FILE_SIZE:
            raise InvalidInput(f"manifest size of {_shown(entry.path)} is {entry.size}, "
                               f"over the largest file size {MAX_FILE_SIZE}")
        total = entry.chunks.total()
        if total != entry.size:
            raise InvalidInput(
                f"the chunks of {_shown(entry.path)} add up to {total} bytes, not its size "
                f"{entry.size}",
                hint="list every chunk of the file, in order, as [digest, size]; "
                "an empty file has no chunks",
            )


#: Deepest nesting of a version's metadata (flavor, params, tags, lineage, ...): what a
#: server's JSON bodies allow (``server.bodies.MAX_DEPTH``).
MAX_METADATA_DEPTH = 64


def check_nesting(values: Mapping[str, Any]) -> None:
    """Refuse metadata nested deeper than ``MAX_METADATA_DEPTH``: a thousand levels of a
    flavor record passed the Python API and broke the digest with a RecursionError (a
    review). Walked without recursion."""
    for field, value in values.items():
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if not isinstance(item, dict | list | tuple):
                continue
            if depth > MAX_METADATA_DEPTH:
                raise TooDeep(f"values.{field} is nested deeper than {MAX_METADATA_DEPTH} "
                              "levels", hint="metadata is a few levels of names and values")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


#: Tags and free text a caller may attach to a model, a version or a dataset version: a
#: contributor set one 7 MB tag, every update copied it into the append-only audit log
#: (84 MB in ten calls), and every listing carried it (a review). MLflow's own limits for
#: a tag, a few more of them.
MAX_TAGS = 1000
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 100_000
MAX_TEXT = 100_000  # a description or notes
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: What a name may not hold on top: line breaks, tabs, bidi overrides and isolates (a
#: key that reads backwards), line and paragraph separators.
_NOT_IN_A_KEY = re.compile(r"[\t\n\r\u202a-\u202e\u2066-\u2069\u2028\u2029\u200b-\u200f]")


def check_tags(tags: Mapping[str, Any] | None, *, what: str = "tags") -> None:
    """Refuse (``InvalidInput``) tags past the limits, or holding control characters
    other than line breaks and tabs in a value (none in a key)."""
    if not tags:
        return
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"{len(tags)} {what}: at most {MAX_TAGS}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > MAX_TAG_KEY or _CONTROL.search(
                key) or _NOT_IN_A_KEY.search(key) or key == "(unreadable)":
            raise InvalidInput(f"{what} key {str(key)[:60]!r} is not a name of 1 to "
                               f"{MAX_TAG_KEY} characters without control characters")
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE or _CONTROL.search(value):
            raise InvalidInput(f"{what} {key!r}: the value is not text of at most "
                               f"{MAX_TAG_VALUE} characters without control characters")


def check_text(text: str | None, what: str, *, limit: int = MAX_TEXT) -> None:
    """Refuse a description or notes past ``limit`` characters or holding control
    characters other than line breaks and tabs."""
    if text is None:
        return
    if not isinstance(text, str) or len(text) > limit or _CONTROL.search(text):
        raise InvalidInput(f"{what} is not text of at most {limit} characters without "
                           "control characters (line breaks and tabs are fine)")


#: A reason or a comment given with a change (a promotion, a rollback, an approval, a
#: token's description): a line or a paragraph. Each is kept in the audit log forever;
#: 7 MB ones with escape sequences were taken (a review). The UI's forms take as much.
MAX_REASON = 2000


def check_reason(text: str | None, what: str = "the reason") -> None:
    """``check_text`` for a reason or a comment (``MAX_REASON``)."""
    check_text(text, what, limit=MAX_REASON)

"""Reading a small file someone else may have written: a regular file, read no further
than a limit.

A size from ``stat`` is no bound: ``/dev/zero`` reports 0 bytes, and a named pipe
none at all. A file a repository, an image or an import source holds is read here,
in one ``read`` of the limit plus one byte, and refused past it.
"""

from __future__ import annotations

from pathlib import Path

from ._errors import InvalidInput, TetherError


def read_regular(path: Path, limit: int, *, links: bool = True,
                 error: type[TetherError] = InvalidInput, hint: str | None = None) -> bytes:
    """The bytes of ``path``, a regular file (``links``: reached through a symbolic link
    too) of at most ``limit`` bytes; ``error`` naming the path otherwise."""
    if (not links and path.is_symlink()) or not path.is_file():
        raise error(f"{path} is {'a link or ' if not links else ''}not a regular file: "
                    "not read", hint=hint)
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} is larger than {limit >> 20} MB", hint=hint)
    return data

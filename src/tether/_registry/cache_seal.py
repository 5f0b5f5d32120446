"""A stat seal beside a ``files`` version's cached folder: a load need not hash every
byte of it again.

A cached copy is checked against its manifest at every load (a file its user changed
came back from every later load, signed or not), which hashed every byte each time:
seconds for a folder of a few GB. After a copy is written or wholly checked, each
file's size, modification and change times and inode go in ``FOLDER.seal``; a file
whose facts still match is not hashed again. Writing to a file sets its change time
to the present, which no one but root can set back, so a changed file never matches.
A change time less than ``SETTLE_NS`` before the seal was written does not count
(file systems that keep it to the second or two): such a file is hashed again, and
the seal written anew.

The seal speeds a check up; it is not a signature. Whoever can write the cache can
write the seal too, as they can the installed Tether itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: A change time this close to the seal's own is not trusted (nanoseconds).
SETTLE_NS = 2_000_000_000


def seal_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".seal")


def _facts(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class Seal:
    """The facts a folder's seal recorded, to compare files with."""

    def __init__(self, folder: Path) -> None:
        self.files: dict[str, Any] = {}
        self.written_ns = 0
        path = seal_path(folder)
        try:
            with path.open() as handle:
                self.written_ns = os.fstat(handle.fileno()).st_mtime_ns
                data = json.load(handle)
        except (OSError, ValueError):
            return  # none yet, or unreadable: every file is hashed
        if isinstance(data, dict):
            self.files = data

    def vouches(self, rel: str, stat: os.stat_result) -> bool:
        """Whether the file at ``rel`` is as it was when it was checked."""
        return (self.files.get(rel) == _facts(stat)
                and stat.st_ctime_ns + SETTLE_NS <= self.written_ns)


def write_seal(folder: Path, paths: Iterable[str]) -> None:
    """Seal ``folder``'s files (``paths``, as checked just now); best effort: without a
    seal the next load hashes every file, as it always did."""
    try:
        facts = {rel: _facts((folder / rel).lstat()) for rel in paths}
        fd, name = tempfile.mkstemp(prefix=f".{folder.name}.seal-", dir=folder.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(facts, handle)
        os.replace(name, seal_path(folder))
    except OSError:
        pass

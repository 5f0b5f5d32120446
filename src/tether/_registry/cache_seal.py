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

The seal speeds a check up; it is not a signature. It is read only where no one
else can have written it: a seal file owned by this user, in a folder owned by
this user that no one else may write (in a shared cache, another user swapped a
file and wrote a seal for it: a review). Elsewhere every file is hashed. The
facts sealed are the ones read before the files were hashed, and only those
still true after (a file changed while a large folder was being hashed was
sealed as it had become: a review). Cached files are made read-only, so a
writable mapping of one (whose later writes need not move its change time)
fails to open rather than changing it unseen.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: A change time this close to the seal's own is not trusted (nanoseconds).
SETTLE_NS = 2_000_000_000


def seal_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".seal")


def _facts(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev,
            stat.st_mode]


def private(stat: os.stat_result) -> bool:
    """Whether a file or folder with these facts is this user's alone to write."""
    return stat.st_uid == os.geteuid() and not stat.st_mode & 0o022


class Seal:
    """The facts a folder's seal recorded, to compare files with."""

    def __init__(self, folder: Path) -> None:
        self.files: dict[str, Any] = {}
        self.written_ns = 0
        path = seal_path(folder)
        try:
            if not private(folder.parent.stat()):
                return  # a cache others may write: their seal would vouch for their bytes
            with path.open() as handle:
                facts = os.fstat(handle.fileno())
                if not private(facts):
                    return
                self.written_ns = facts.st_mtime_ns
                data = json.load(handle)
        except (OSError, ValueError):
            return  # none yet, or unreadable: every file is hashed
        if isinstance(data, dict):
            self.files = data

    def vouches(self, rel: str, stat: os.stat_result) -> bool:
        """Whether the file at ``rel`` is as it was when it was checked."""
        return (self.files.get(rel) == _facts(stat)
                and stat.st_ctime_ns + SETTLE_NS <= self.written_ns)


def write_seal(folder: Path, checked: Mapping[str, os.stat_result]) -> None:
    """Seal ``folder``'s files: ``checked`` holds each file's facts as read before it was
    checked; a file whose facts are no longer those is left out (hashed next time). Best
    effort: without a seal the next load hashes every file, as it always did."""
    try:
        facts = {rel: _facts(before) for rel, before in checked.items()
                 if _facts((folder / rel).lstat()) == _facts(before)}
        fd, name = tempfile.mkstemp(prefix=f".{folder.name}.seal-", dir=folder.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(facts, handle)
        os.replace(name, seal_path(folder))
    except OSError:
        pass


def make_read_only(folder: Path, paths: Mapping[str, os.stat_result] | list[str]) -> None:
    """Make ``folder``'s files (``paths``) read-only for everyone (see the module)."""
    for rel in paths:
        path = folder / rel
        with contextlib.suppress(OSError, NotImplementedError):
            os.chmod(path, os.lstat(path).st_mode & 0o555, follow_symlinks=False)

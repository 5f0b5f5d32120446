"""Which tracked paths of a clone hold this clone's own data: tracked, pulled, checked
out or pushed here.

``tether data push`` adds a tracked path's bytes as a new version when they differ
from its pointer. A pointer is a file of the repository, so whoever commits one
chooses what it tracks: a committed ``.env.tether`` beside a colleague's ``.env``
(which git ignores, as it ignores every tracked path) had their next ``data push``
upload it to a dataset the committer can read. So push adds a path only if this
clone put its data there or took it from there: a record kept in git's own folder
for the clone (``git rev-parse --git-path``), which no commit can write. Other
paths are refused with the two ways on: ``data pull PATH`` (take the version the
pointer names) or ``data push --adopt PATH`` (the bytes are yours to add).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

#: The record, under the clone's git folder.
RECORD = "tether/held-paths"


def _record(top: Path) -> Path | None:
    """Where the record of work tree ``top`` lives (None: git does not say)."""
    result = subprocess.run(["git", "rev-parse", "--git-path", RECORD], cwd=top,
                            capture_output=True, check=False, timeout=60)
    if result.returncode != 0:
        return None
    where = Path(result.stdout.decode().strip())
    return where if where.is_absolute() else top / where


def held(top: Path) -> set[str]:
    """The paths (relative to ``top``, POSIX) this clone holds as its own."""
    return _read(_record(top))


def _read(record: Path | None) -> set[str]:
    try:
        lines = record.read_text().splitlines() if record is not None else []
    except (OSError, UnicodeDecodeError):
        return set()
    found = set()
    for line in lines:
        try:
            path = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others stand
        if isinstance(path, str):
            found.add(path)
    return found


def hold(top: Path, paths: Iterable[str]) -> None:
    """Record ``paths`` (relative to ``top``) as this clone's own."""
    record = _record(top)
    new = sorted(set(paths) - _read(record))
    if not new or record is None:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(path) + "\n" for path in new)
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def holding(top: Path) -> Iterator[list[str]]:
    """A list to put this clone's own paths in, recorded at once when done (a push or
    a pull of many pointers asks git where the record is once, not once a path)."""
    kept: list[str] = []
    try:
        yield kept
    finally:
        hold(top, kept)


def hold_path(path: Path) -> None:
    """Record ``path`` as its clone's own, if it is in a git work tree (else nothing)."""
    from .._errors import InvalidInput
    from .data_sync import work_tree  # which imports this module

    try:
        top = work_tree(path.parent)
    except InvalidInput:
        return
    try:  # git names the top with its links resolved
        rel = (path.absolute().parent.resolve() / path.name).relative_to(top.resolve())
    except ValueError:
        return
    hold(top, [rel.as_posix()])

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


def _read(record: Path | None) -> dict[str, str | None]:
    return {path: dataset for path, (dataset, _digest) in _read_all(record).items()}


def _read_all(record: Path | None) -> dict[str, tuple[str | None, str | None]]:
    """Each path: (the dataset it is held for, the digest of the version it last held
    here: tracked, pulled, checked out or pushed; None where a record predates it)."""
    try:
        lines = record.read_text().splitlines() if record is not None else []
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[str, tuple[str | None, str | None]] = {}
    for line in lines:  # the newest line of a path says what it holds
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others stand
        if isinstance(item, str):
            found[item] = (None, None)
        elif (isinstance(item, list) and len(item) in (2, 3)
              and all(isinstance(part, str) for part in item)):
            found[item[0]] = (item[1], item[2] if len(item) == 3 else None)
    return found


def last_held(top: Path) -> dict[str, str]:
    """Each path of work tree ``top`` with the digest (``sha:...``) of the version it
    last held here, where the record says."""
    return {path: digest for path, (_dataset, digest) in _read_all(_record(top)).items()
            if digest is not None}


def holds_for(own: dict[str, str | None], path: str, dataset: str) -> bool:
    """Whether ``path`` is this clone's own for ``dataset``: a commit that renamed the
    dataset in a held path's pointer sent that path's bytes to another dataset (a
    review), so a path is held for the dataset it was tracked, pulled or pushed with."""
    return path in own and own[path] in (None, dataset)


#: What is recorded of a path: (path, dataset) or (path, dataset, the version's digest).
Held = tuple[str, str] | tuple[str, str, str]


def hold(top: Path, items: Iterable[Held]) -> None:
    """Record each (path relative to ``top``, dataset[, digest]) as this clone's own."""
    _write(_record(top), items)


def _write(record: Path | None, items: Iterable[Held]) -> None:
    if record is None:
        return
    known = _read_all(record)
    new = sorted({item for item in items
                  if known.get(item[0]) != (item[1], item[2] if len(item) == 3 else None)})
    if not new:
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(list(item)) + "\n" for item in new)
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def holding(top: Path) -> Iterator[tuple[dict[str, str | None], list[Held]]]:
    """What this clone holds now (each path with the dataset it holds it for; None: any,
    a record written before datasets were kept), and a list to put its own (path, dataset)
    in, recorded at once when done: a push or a pull of many pointers asks git where the
    record is once, not once a path (nor once to read it and again to write it)."""
    record = _record(top)
    kept: list[Held] = []
    try:
        yield _read(record), kept
    finally:
        _write(record, kept)


def hold_path(path: Path, dataset: str, digest: str | None = None) -> None:
    """Record ``path`` as its clone's own for ``dataset``, if it is in a git work tree
    (else nothing)."""
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
    hold(top, [(rel.as_posix(), dataset, digest) if digest else (rel.as_posix(), dataset)])

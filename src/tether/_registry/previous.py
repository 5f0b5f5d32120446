"""The chunks a new version of a large file is cut along (see _store/following.py).

Models and datasets alike ask for them only when a file is large enough for
following to pay, and cut from scratch when there is nothing to follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .._errors import TetherError
from .._store.base import FOLLOW_FROM, ChunkList, FileEntry


def previous_chunks(root: Path, paths: Sequence[str], newest: Callable[[], Sequence[FileEntry]],
                    *, renamed: bool) -> dict[str, ChunkList]:
    """The chunks of each large file of ``paths`` in ``newest()`` (the newest version's
    files), by the same path; ``renamed``: else its largest file (a file renamed
    between versions, as a checkpoint named after its step)."""
    large = [p for p in paths if (root / p).stat().st_size >= FOLLOW_FROM]
    if not large:
        return {}
    try:
        files = newest()
    except TetherError:  # no version yet, no read permission, ...: cut from scratch
        return {}
    by_path = {f.path: f.chunks for f in files}
    if renamed and files:
        fallback = max(files, key=lambda f: f.size).chunks
        return {p: by_path.get(p, fallback) for p in large}
    return {p: by_path[p] for p in large if p in by_path}

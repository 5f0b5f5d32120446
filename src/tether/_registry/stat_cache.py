"""Remembering what a file on disk was cut into, so unchanged files are not read again.

Adding a folder of 10,000 files where 1% changed must not re-read the other
99%. The cache maps a file's path and its stat (size, mtime and ctime in
nanoseconds, inode) to the entry it was stored as, for one store. A file whose
stat still matches is taken as the bytes it was (as git's index and DVC do);
anything else is read, cut and hashed again. The cached chunks must still be
in the store, or the file is read again; and the commit is pinned over them.

A file is remembered only if its stat before it was read is still its stat after
(a file rewritten meanwhile is read again next time), and only once its change
time is SETTLE_NS old (as the cache seal does): on a file system whose clock ticks
coarsely (FAT 2 s, HFS+ and some network file systems 1 s) a rewrite in the tick
it was read in keeps size, mtime and ctime, and would be taken as unchanged (git's
"racily clean" files). The cache is used only
where it is this user's alone: a cache file of their own in a folder no one else
may write (another user who could write the cache mapped a victim's file to other
stored bytes, and the victim's next add registered them: a review).

``TETHER_STAT_CACHE=off`` reads every file every time.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from .._digest import blake3_hex
from .._envflags import env_off
from .._store.base import FileEntry
from . import cache_seal
from .cache_seal import private

#: A file changed this recently (ns) is read again next time rather than remembered.
SETTLE_NS = cache_seal.SETTLE_NS

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
    "entry TEXT NOT NULL, tables TEXT)"
)


def stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _settled(key: str) -> bool:
    """Whether the file's change time (in ``key``) is SETTLE_NS or more in the past (a
    change time, unlike an mtime, cannot be set back but by root)."""
    ctime_ns = int(key.split(":")[2])
    return ctime_ns + SETTLE_NS <= time.time_ns()


class StatCache:
    """(path, stat) -> (FileEntry, table facts) for files already stored in one store."""

    def __init__(self, file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(file, timeout=30)
        self._db.execute(_SCHEMA)

    @classmethod
    def for_store(cls, store: Any) -> StatCache | None:
        folder = getattr(store, "cache_dir", None)
        if folder is None or env_off("TETHER_STAT_CACHE"):
            return None
        name = blake3_hex(str(getattr(store, "url", "")).encode())[:16]
        file = Path(folder) / f"stat-{name}.sqlite"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            if not private(Path(folder).stat()) or (file.exists() and not private(file.stat())):
                return None  # others may write it: what it says could be theirs
            return cls(file)
        except (OSError, sqlite3.Error):
            return None  # an unusable cache only costs reading the files

    def lookup(self, path: Path, rel: str) -> tuple[FileEntry, Any] | None:
        key = stat_key(path)
        if key is None:
            return None
        row = self._db.execute(
            "SELECT stat, entry, tables FROM files WHERE path = ?", (str(path),)
        ).fetchone()
        if row is None or row[0] != key:
            return None
        data = json.loads(row[1])
        data["path"] = rel
        return FileEntry.from_dict(data), json.loads(row[2]) if row[2] else None

    def remember(self, path: Path, entry: FileEntry, tables: Any, *, seen: str | None) -> None:
        """Remember ``path`` as ``entry`` if its stat is still ``seen`` (read before it was)."""
        key = stat_key(path)
        if key is None or key != seen or not _settled(key):
            return
        self._db.execute(
            "INSERT OR REPLACE INTO files (path, stat, entry, tables) VALUES (?, ?, ?, ?)",
            (str(path), key, json.dumps(entry.to_dict()),
             json.dumps(tables) if tables is not None else None),
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.commit()
            self._db.close()

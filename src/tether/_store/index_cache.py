"""A network store's merged index files, kept on the client's disk and read in place.

Every process that opens a store through a server or on S3 reads its index.
Held in memory, that was every merged file downloaded again by every fresh
process, and kept whole in its RAM: 56 bytes for each chunk the store holds, so
900 MB for a store of 1 TB at 64 KiB chunks, for a `load` of a 3 KB model.
A merged file never changes once written (a merge writes a new one under a new
name and deletes what it covers), so a copy found here under its name and with
its listed size is the file: it is mapped (only the pages a lookup touches are
read), and only files merged since are fetched, streamed to disk in pieces.

What is here is no more trusted than the store it came from: an index only
says where a chunk should be, and every chunk is checked against its digest
when read. Files the store no longer lists are removed at the next refresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
from pathlib import Path

from .blobs import Blobs, make_temp
from .fileio import write_synced
from .midx import MergedIndex, declared_size

#: A merged file is downloaded this many bytes at a time (one reused buffer).
_PIECE = 8 << 20


class IndexCache:
    """Merged index files of one store (by its URL) under ``root``."""

    def __init__(self, root: Path, blobs: Blobs) -> None:
        self.root = root
        # One folder per store: two stores' files never meet, whatever their names. An
        # S3 URL names no endpoint: two endpoints' s3://bucket/prefix are two stores.
        where = f"{blobs.url} {getattr(blobs, 'endpoint', '') or ''}"
        self.folder = root / "index" / hashlib.sha256(where.encode()).hexdigest()[:24]
        self.blobs = blobs

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.idx"

    def open(self, name: str, size: int) -> MergedIndex | None:
        """The kept copy of merged file ``name`` if it has the listed ``size``."""
        path = self._path(name)
        try:
            if path.stat().st_size != size:
                return None
            return MergedIndex.open(name, path)
        except (OSError, ValueError, struct.error):
            return None  # gone (another process pruned it) or damaged: fetched again

    def fetch(self, key: str, name: str, size: int) -> MergedIndex:
        """Download merged file ``key`` (``size`` bytes) to disk and map it. Raises
        NotFound when it is gone, ValueError when it is not a whole merged file."""
        read_into = getattr(self.blobs, "get_range_into", None)
        buffer = bytearray(min(max(size, 1), _PIECE))
        fd, tmp = self._temp()
        try:
            with os.fdopen(fd, "wb") as out:
                offset = 0
                while offset < size:
                    view = memoryview(buffer)[:min(len(buffer), size - offset)]
                    if read_into is not None:
                        got = read_into(key, offset, view)
                    else:
                        data = self.blobs.get_range(key, offset, len(view))
                        got = len(data)
                        view[:got] = data
                    if got != len(view):
                        raise ValueError(f"{key} is shorter than listed")
                    if offset == 0:
                        self._check_declared(key, view, size, tmp.parent)
                    out.write(view)
                    offset += got
                out.flush()
                os.fsync(out.fileno())  # a torn copy must never pass for the file
            return self._install(name, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _check_declared(self, key: str, head: memoryview, listed: int, folder: Path) -> None:
        """Before more than a piece is fetched: the file's header must say the size the
        listing gave, and it must fit the cache's disk with a GB to spare (a listing of
        1 PB had 1 GB fetched in 8 s, checked only at the end: a review)."""
        import shutil

        declared = declared_size(head)
        if declared != listed:
            raise ValueError(f"{key} says it is {declared} bytes; {listed} were listed")
        free = shutil.disk_usage(folder).free  # where the copy is written
        if listed > max(0, free - (1 << 30)):
            raise ValueError(f"{key} is listed at {listed} bytes, more than the cache's disk "
                             f"can hold ({free} bytes free)")

    def keep(self, name: str, data: bytes) -> MergedIndex:
        """Keep merged file ``name`` (already fetched whole: a small one) and map it."""
        fd, tmp = self._temp()
        try:
            write_synced(fd, data)
            return self._install(name, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, name: str, path: Path) -> None:
        """Keep a copy of merged file ``name`` this process wrote at ``path`` (before it
        goes up), so its next refresh does not download what it just uploaded."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, self._path(name))  # the same (synced) bytes, when on one disk
                return
            except OSError:
                pass
            fd, tmp = self._temp()
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
                    shutil.copyfileobj(source, out)
                    out.flush()
                    os.fsync(out.fileno())  # as fetch: a torn copy must never pass for it
                os.replace(tmp, self._path(name))
            finally:
                tmp.unlink(missing_ok=True)

    def forget(self) -> bool:
        """Remove every kept file (a process reading one keeps its mapping); whether
        any was here."""
        try:
            kept = [e.path for e in os.scandir(self.folder) if e.name.endswith(".idx")]
        except FileNotFoundError:
            return False
        for path in kept:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return bool(kept)

    def prune(self, listed: set[str]) -> None:
        """Remove kept files the store no longer lists (merged away or collected).
        A process still reading one keeps its mapping."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry.name.removesuffix(".idx")
            if entry.name.endswith(".idx") and name not in listed:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def _temp(self) -> tuple[int, Path]:
        return make_temp(self.root / "tmp", "index")  # the scratch folder stale files leave

    def _install(self, name: str, tmp: Path) -> MergedIndex:
        index = MergedIndex.open(name, tmp)  # checks it is a whole merged file first
        with contextlib.suppress(OSError):  # not kept (read-only cache): read in place, once
            self.folder.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, self._path(name))
        return index


"""The client's chunk cache: verified stored payloads, bounded, least recently used first.

Layout under the cache folder:

    chunks/<2>/<digest>   a chunk's stored payload (only ever one that matched its digest)
    pins/<owner>.json     chunks a running load or verify uses: never evicted while
                          their owner lives (see locking.Owner)
    tmp/                  every temporary file of this client, named for its owner:
                          chunk downloads, upload packs, whole-model scratch copies
    cache.lock            serialises eviction against pin creation

The bound is ``TETHER_CACHE_MAX_BYTES`` (default 10 GiB). A write that would
exceed it first evicts the least recently used unpinned chunks (a hit refreshes
a chunk's mtime); if pinned chunks alone fill the cache the new chunk is simply
not kept, so the bound holds whatever one load needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import InvalidInput
from .blobs import make_temp
from .locking import SEP, Owner, is_dead, me, owner_tag

DEFAULT_MAX_BYTES = 10 << 30
#: After an eviction the cache holds at most this fraction of its bound, so
#: evictions (a scan of the folder) are rare.
LOW_WATER = 0.9

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """``10GiB``, ``500MB``, ``1.5G``, ``123`` (bytes) to a number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidInput(f"not a size: {text!r}", hint="e.g. 10GiB, 500MB or 1048576")
    return int(float(match.group(1)) * _UNITS[unit])


def configured_max_bytes() -> int:
    """``TETHER_CACHE_MAX_BYTES`` if set, else 10 GiB."""
    text = os.environ.get("TETHER_CACHE_MAX_BYTES")
    return parse_size(text) if text else DEFAULT_MAX_BYTES


@dataclass
class Leftovers:
    """Files and folders a dead process left under a cache's tmp/ and pins/."""

    count: int = 0
    bytes: int = 0
    paths: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self.bytes}


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(_size(p) for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0  # gone meanwhile (another process pruned it): counts nothing


def dead_scratch(folder: Path) -> Leftovers:
    """Entries of ``folder`` (a tmp/) whose owner is provably dead."""
    found = Leftovers()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    for entry in entries:
        if is_dead(Owner.from_name(entry.name)):
            path = Path(entry.path)
            found.count += 1
            found.bytes += _size(path)
            found.paths.append(path)
    return found


def remove_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class ChunkCache:
    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = root
        self.chunks = root / "chunks"
        self._chunks_text = str(self.chunks)
        self.tmp = root / "tmp"
        self.pins = root / "pins"
        self.max_bytes = configured_max_bytes() if max_bytes is None else max_bytes
        self._lock = threading.RLock()
        self._in_use: Counter[str] = Counter()
        self._estimate: int | None = None
        #: Bytes admitted whose files are still being written: counted by the bound,
        #: though a scan of the folder (eviction) may not see them yet.
        self._writing = 0
        self.evicted = 0  # chunks this process evicted, for tests and stats

    def path(self, digest: str) -> Path:
        return self.chunks / digest[:2] / digest

    def has(self, digest: str) -> bool:
        # A string, not a Path: a load asks this of every chunk (6.8 against 2.0 us).
        return os.path.exists(f"{self._chunks_text}/{digest[:2]}/{digest}")

    def read(self, digest: str) -> bytes | None:
        """The cached payload (unverified: the caller checks it), refreshing its recency."""
        path = self.path(digest)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return payload

    def drop(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def put(self, digest: str, payload: bytes) -> bool:
        """Keep a verified payload if the bound allows (evicting LRU chunks); True if kept."""
        size = len(payload)
        if size > self.max_bytes:
            return False
        with self._lock:
            if self._estimate is None:
                self._estimate = sum(s for _, s, _ in self._entries()) + self._writing
            if self._estimate + size > self.max_bytes:
                self._evict(int(self.max_bytes * LOW_WATER) - size)
                if self._estimate + size > self.max_bytes:
                    return False  # pinned chunks fill the cache: serve without keeping
            self._estimate += size
            self._writing += size
        target = self.path(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = make_temp(self.tmp, "chunk")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            # A cache that cannot be written (full disk) only costs a refetch.
            with self._lock:
                self._estimate = None
                self._writing -= size
            return False
        with self._lock:
            self._writing -= size
        return True

    # -- pins -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "cache.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def in_use(self, digests: Iterable[str]) -> Iterator[None]:
        """Pin ``digests`` (in this process and for other processes) while the block runs."""
        wanted = sorted(set(digests))
        with self._lock:
            self._in_use.update(wanted)
        pin = self.pins / f"load-{owner_tag()}{SEP}{uuid.uuid4().hex[:12]}.json"
        try:
            try:
                with self._flock():
                    self.pins.mkdir(parents=True, exist_ok=True)
                    pin.write_text(json.dumps({**me().to_dict(), "since": time.time(),
                                               "chunks": wanted}))
            except OSError:
                pin = Path()  # cannot pin for others (full disk): this process still does
            yield
        finally:
            if pin != Path():
                pin.unlink(missing_ok=True)
            with self._lock:
                self._in_use.subtract(wanted)
                self._in_use += Counter()  # drop zero counts

    def _pinned(self) -> tuple[set[str], Leftovers]:
        """Digests some live load uses, and the pin files of dead owners."""
        with self._lock:
            pinned = set(self._in_use)
        dead = Leftovers()
        try:
            entries = list(os.scandir(self.pins))
        except FileNotFoundError:
            return pinned, dead
        for entry in entries:
            path = Path(entry.path)
            if is_dead(Owner.from_name(entry.name)):
                dead.count += 1
                dead.bytes += _size(path)
                dead.paths.append(path)
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                pinned.update(json.loads(path.read_text())["chunks"])
        return pinned, dead

    # -- eviction and accounting ----------------------------------------------------

    def _entries(self) -> list[tuple[Path, int, float]]:
        found: list[tuple[Path, int, float]] = []
        try:
            folders = list(os.scandir(self.chunks))
        except FileNotFoundError:
            return found
        for folder in folders:
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder.path):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    found.append((Path(entry.path), st.st_size, st.st_mtime))
        return found

    def _evict(self, target: int) -> tuple[int, int]:
        """Remove least recently used unpinned chunks until at most ``target`` bytes remain.

        Call with ``self._lock`` held. Returns (chunks, bytes) removed.
        """
        removed = freed = 0
        with self._flock():
            pinned, dead = self._pinned()
            remove_paths(dead.paths)
            entries = sorted(self._entries(), key=lambda e: e[2])
            # Files being written count whether or not the scan saw them (at worst
            # twice: the bound errs on the small side, never on the large).
            total = sum(s for _, s, _ in entries) + self._writing
            for path, size, _ in entries:
                if total <= target:
                    break
                if path.name in pinned:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
                freed += size
        self._estimate = total
        self.evicted += removed
        return removed, freed

    def prune(self, max_bytes: int | None = None) -> dict[str, Any]:
        """Evict down to ``max_bytes`` (default: the bound) and remove dead leftovers."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        scratch = dead_scratch(self.tmp)
        remove_paths(scratch.paths)
        with self._lock:
            _, dead_pins = self._pinned()
            chunks, freed = self._evict(limit)
        index_freed = 0
        if max_bytes == 0:
            # Asked to empty the cache: the network stores' index copies go too
            # (index_cache.py; fetched again when needed; a process reading one keeps
            # its mapping). A bound of 0 from the environment leaves them.
            index_freed = _size(self.root / "index")
            shutil.rmtree(self.root / "index", ignore_errors=True)
        return {"max_bytes": limit, "evicted_chunks": chunks, "evicted_bytes": freed,
                "removed_index_bytes": index_freed,
                "removed_scratch": scratch.to_dict(), "removed_pins": dead_pins.to_dict(),
                **self.stats()}

    def sweep(self) -> Leftovers:
        """Remove what dead processes left under tmp/ (cheap: one folder listing)."""
        scratch = dead_scratch(self.tmp)
        remove_paths(scratch.paths)
        return scratch

    def stats(self) -> dict[str, Any]:
        entries = self._entries()
        pinned, dead_pins = self._pinned()
        present = {p.name for p, _, _ in entries}
        scratch = dead_scratch(self.tmp)
        try:
            tmp_entries = len(os.listdir(self.tmp))
        except FileNotFoundError:
            tmp_entries = 0
        return {
            "cache_dir": str(self.root),
            "chunks": len(entries),
            "bytes": sum(s for _, s, _ in entries),
            "max_bytes": self.max_bytes,
            "pinned_chunks": len(present & pinned),
            "leftovers": {"scratch": scratch.to_dict(), "pins": dead_pins.to_dict()},
            "tmp_in_use": tmp_entries - scratch.count,
            "versions_bytes": _size(self.root / "versions"),
            # Network stores' merged index files kept here (index_cache.py): 56 bytes for
            # each chunk a store holds, outside the chunk bound, pruned as stores merge.
            "index_bytes": _size(self.root / "index"),
        }

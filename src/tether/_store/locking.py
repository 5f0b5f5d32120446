"""Keeping gc and ingests apart, and knowing when a crashed process left something.

An ingest may decide to reuse a chunk that lives in a pack gc is about to
delete. So ingests hold a shared lock from their first index read until their
pin is written, and gc holds an exclusive one. Locally that is ``flock`` on a
file; remote clients and S3 use lease objects (``locks/ingest-*``,
``locks/gc``) that the holder renews and that expire, so a killed process
cannot block the store forever. A local gc also writes ``locks/gc`` and waits
for live ingest leases, so clients of a server on a local store respect it.

Every lock, pin and temporary file carries its owner: host, pid and the
process's start time (``Owner``). On the same host a leftover whose process is
gone (or whose pid now belongs to a younger process) is provably dead and is
removed at once; one from another host waits for its lease or the grace period.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import Conflict, NotFound, StoreError

if TYPE_CHECKING:
    from .chunkstore import ChunkStore

#: A lease not renewed for this long is expired; holders renew every ``RENEW_SECONDS``.
LEASE_SECONDS = 600.0
RENEW_SECONDS = 60.0
#: Separates the fields of an owner tag in file and object names.
SEP = "~"


@dataclass(frozen=True)
class Owner:
    """Who made a lock, pin or temporary file: host, pid and the process's start time."""

    host: str
    pid: int
    start: int  # the process's start time in clock ticks since boot (0: unknown)

    @property
    def tag(self) -> str:
        return f"{self.host}{SEP}{self.pid}{SEP}{self.start}"

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "start": self.start}

    @classmethod
    def from_dict(cls, data: Any) -> Owner | None:
        try:
            return cls(str(data["host"]), int(data["pid"]), int(data["start"]))
        except (TypeError, KeyError, ValueError):
            return None

    @classmethod
    def from_name(cls, name: str) -> Owner | None:
        """The owner a tagged name (``kind-HOST~PID~START~random``) records, if any."""
        parts = name.split(SEP)
        if len(parts) < 4:
            return None
        host = parts[0].split("-", 1)[-1]
        try:
            return cls(host, int(parts[1]), int(parts[2]))
        except ValueError:
            return None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time since boot); None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return 0


@lru_cache(maxsize=4)
def _me(pid: int) -> Owner:
    return Owner(_host(), pid, _start_ticks(pid) or 0)


def me() -> Owner:
    """This process (recomputed after a fork)."""
    return _me(os.getpid())


def owner_tag() -> str:
    return me().tag


def pid_gone(pid: int) -> bool:
    """True only when no process of this namespace has ``pid`` (another user's: there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def is_dead(owner: Owner | None) -> bool:
    """True only when ``owner`` is provably gone: same host, and its pid is free or reused."""
    if owner is None or owner.host != _host():
        return False
    if owner.pid == os.getpid():
        return owner.start != me().start
    if Path("/proc").is_dir():
        started = _start_ticks(owner.pid)
        if started is None:
            return True
        return bool(owner.start and started and started != owner.start)
    return pid_gone(owner.pid)


def is_alive_here(owner: Owner | None) -> bool:
    """True when ``owner`` is a running process on this host.

    Where /proc tells start times, only an owner whose recorded start matches counts:
    every Tether process records one, and a pin uploaded through a server naming
    "this host, pid 1, start 0" (always running) kept gc off its chunks for good.
    """
    if owner is None or owner.host != _host() or is_dead(owner):
        return False
    if Path("/proc").is_dir() and owner.pid != os.getpid():
        return bool(owner.start) and _start_ticks(owner.pid) == owner.start
    return True


def lease_body(**extra: Any) -> bytes:
    return json.dumps({**me().to_dict(), "since": time.time(), **extra}).encode()


# -- leases --------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    key: str
    size: int
    mtime: float
    owner: Owner | None

    def stale(self, now: float) -> bool:
        # As far from now either way: a lease dated in the future (a clock ahead on a
        # shared folder, a restored backup, a planted file) was never stale, and gc
        # refused to start for good without a word (a review). A live holder rewrites
        # its lease every RENEW_SECONDS, so hosts must agree on the time within
        # LEASE_SECONDS, as they must already for one dated in the past.
        return abs(now - self.mtime) >= LEASE_SECONDS or is_dead(self.owner)


def leases(store: ChunkStore, prefix: str = "") -> list[Lease]:
    """Lease objects under ``locks/`` whose name starts with ``prefix`` (not the flock file)."""
    found = []
    for info in store.blobs.list("locks/"):
        name = info.key.rsplit("/", 1)[-1]
        if name == "store.lock" or not name.startswith(prefix):
            continue
        owner = Owner.from_name(name)
        if owner is None and getattr(store.blobs, "reads_locks", True):
            # The server's gateway names leases ``ingest-<hex>``: the owner is inside.
            try:
                owner = Owner.from_dict(json.loads(store.blobs.get_bytes(info.key)))
            except (NotFound, ValueError, OSError):
                owner = None
        found.append(Lease(info.key, info.size, info.mtime, owner))
    return found


def _live(store: ChunkStore, prefix: str, *, mine: str | None = None) -> list[Lease]:
    now = time.time()
    return [lease for lease in leases(store, prefix)
            if not lease.stale(now) and lease.key != mine]


@contextmanager
def _renewed(store: ChunkStore, key: str) -> Iterator[None]:
    """Hold the lease ``key``: written now, rewritten every RENEW_SECONDS, deleted at the end."""
    store.blobs.put_bytes(key, lease_body())
    done = threading.Event()

    def renew() -> None:
        while not done.wait(RENEW_SECONDS):
            with suppress(Exception):
                store.blobs.put_bytes(key, lease_body())

    thread = threading.Thread(target=renew, name=f"tether-lease-{key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        with suppress(NotFound, OSError):
            store.blobs.delete(key)


@contextmanager
def _flock(store: ChunkStore, mode: int) -> Iterator[None]:
    """The store's lock file, locked ``mode`` (with LOCK_NB: Conflict if it is held)."""
    path = store.blobs.local_path("locks/store.lock")
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            fd = -1
            raise Conflict("a gc holds the store now", hint="retry later") from None
        yield
    finally:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextmanager
def store_lock(store: ChunkStore, *, wait_seconds: float = 60.0) -> Iterator[None]:
    """Exclusive: one gc at a time, and no ingest in flight (local or remote)."""
    if store.blobs.is_local:
        with _flock(store, fcntl.LOCK_EX), ExitStack() as stack:
            try:
                stack.enter_context(_gc_lease(store, wait_seconds))
            except StoreError as error:
                # A full disk cannot take the lease object; the flock still keeps
                # local ingests out, and a gc that frees space must still run.
                if "disk is full" not in error.message:
                    raise
            yield
        return
    if _live(store, "gc"):
        raise Conflict("another gc is running on this store", hint="wait for it to finish")
    with _gc_lease(store, wait_seconds):
        yield


@contextmanager
def _gc_lease(store: ChunkStore, wait_seconds: float) -> Iterator[None]:
    key = "locks/gc"
    with _renewed(store, key):
        deadline = time.time() + wait_seconds
        while _live(store, "ingest-"):
            if time.time() > deadline:
                raise Conflict("ingests are still running; gc did not start",
                               hint="retry when uploads have finished")
            time.sleep(0.5)
        yield


@contextmanager
def ingest_lock(store: ChunkStore, *, wait_seconds: float = 600.0) -> Iterator[None]:
    """Shared: many ingests at once, never during a gc (``wait_seconds`` 0: Conflict at
    once if a gc holds the store)."""
    if store.blobs.is_local:
        with _flock(store, fcntl.LOCK_SH | (fcntl.LOCK_NB if wait_seconds <= 0 else 0)):
            yield
        return
    # Announce first, then look: a gc writes its lease and then waits for ingest leases,
    # so whichever of the two comes second sees the other (checking first and writing
    # after let a gc and an ingest both start: the gc then took the ingest's new pack
    # for one without an index).
    deadline = time.time() + wait_seconds
    while True:
        with _renewed(store, f"locks/ingest-{uuid.uuid4().hex}"):
            if not _live(store, "gc"):
                yield
                return
        if time.time() > deadline:
            raise Conflict("a gc has held the store for too long", hint="retry later")
        time.sleep(0.5)


@contextmanager
def exclusive_now(store: ChunkStore) -> Iterator[bool]:
    """Hold the store exclusively if nobody else holds it now (True), else yield False.

    Used to undo a failed ingest: its published packs may be deleted only while
    no other ingest can be reading the index that lists them.
    """
    if store.blobs.is_local:
        path = store.blobs.local_path("locks/store.lock")
        assert path is not None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                if _live(store, "ingest-") or _live(store, "gc"):
                    yield False
                    return
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    if (not getattr(store.blobs, "reads_locks", True)  # a client cannot take locks/gc
            or _live(store, "gc") or _live(store, "ingest-")):
        yield False
        return
    try:
        lease = _gc_lease(store, 0.0)
        lease.__enter__()
    except Conflict:
        yield False
        return
    try:
        yield True
    finally:
        lease.__exit__(None, None, None)

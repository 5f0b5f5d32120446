"""Whole-pack verification and quarantine: ``tether store verify`` and the server's
check of an uploaded pack against the index that claims its chunks.

A pack whose bytes do not match what its index claims (damaged, or uploaded to
squat on another version's chunks) moves under ``quarantine/`` with a note of what
was wrong: no reader uses it again, nothing is deleted. Each pack is read in a few
large ranged reads; the store is read a batch of packs at a time (``census``), so
a store of any size is verified in bounded memory.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError, InvalidInput, NotFound
from .base import PackCheck, VerifyReport
from .blobs import MalformedObject
from .chunk_index import index_name
from .chunkstore import _MAX_CHUNK, _RUN_BYTES, _raw_checked, _unpack
from .fileio import ALIGN, aligned_buffer
from .midx import MAGIC, MergedIndex, damage, is_merged
from .progress import Progress

if TYPE_CHECKING:
    from .census import Census
    from .chunkstore import ChunkStore

#: Verification reads across holes up to this size rather than issuing another read.
_GAP_BYTES = 256 * 1024
#: ``store verify`` gathers the index entries of this many chunks (a batch of packs) at once.
_VERIFY_BATCH_ENTRIES = 1 << 18


def check_pack(store: ChunkStore, pack: str, index: Any) -> PackCheck:
    """Read ``pack`` (a few large ranged reads) and check every chunk its index claims."""
    check = PackCheck(pack=pack, problems=[])
    try:
        size = int(index["size"])
        entries = [(str(d), int(o), int(n), int(r), int(c))
                   for d, o, n, r, c in index["chunks"]]
        if index.get("pack") != pack:
            check.problems.append(f"index names pack {index.get('pack')!r}, not {pack}")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        check.problems.append(f"index is malformed ({type(error).__name__}: {error})")
        return check
    readable = []
    for entry in entries:
        digest, offset, length, raw, _codec = entry
        if offset < 0 or length <= 0 or offset + length > size:
            check.problems.append(f"chunk {digest[:16]} at offset {offset}: outside the "
                                  f"pack's {size} bytes")
        elif length > _MAX_CHUNK or not 0 <= raw <= _MAX_CHUNK:
            check.problems.append(f"chunk {digest[:16]} at offset {offset}: claims an "
                                  f"impossible size")
        else:
            readable.append(entry)
    readable.sort(key=lambda e: e[1])
    i = 0
    while i < len(readable):
        # Coalesce neighbours into one read of at most _RUN_BYTES.
        start = readable[i][1]
        end = start + readable[i][2]
        j = i + 1
        while j < len(readable):
            offset, length = readable[j][1], readable[j][2]
            if offset > end + _GAP_BYTES or max(end, offset + length) - start > _RUN_BYTES:
                break
            end = max(end, offset + length)
            j += 1
        # Read into one of the store's reused buffers, of the size loads take (so neither
        # drops the other's): a new 8 MB bytes for each read had the kernel map and zero
        # fresh pages, 12% of a server's CPU while it checked a 2 GB upload. A longer run
        # (one chunk past it) gets a buffer of its own, never kept.
        pooled = end - start <= _RUN_BYTES + ALIGN
        buffer = (store._run_buffers.take(_RUN_BYTES + ALIGN) if pooled
                  else aligned_buffer(end - start))
        try:
            try:
                view = store._read_into(pack, start, buffer[:end - start])
            except IntegrityError as error:
                check.problems.append(error.message)
                return check
            check.reads += 1
            check.bytes_read += len(view)
            _check_run(check, view, start, readable[i:j])
        finally:
            if pooled:
                store._run_buffers.give(buffer)
        i = j
    return check


def _check_run(check: PackCheck, view: memoryview, start: int,
               run: list[tuple[str, int, int, int, int]]) -> None:
    """Check the chunks ``run`` claims against ``view``, the pack's bytes from ``start``."""
    matched = _raw_checked(view, [(offset - start, length, raw, codec, digest)
                                  for digest, offset, length, raw, codec in run])
    for (digest, offset, length, raw, codec), match in zip(run, matched, strict=True):
        check.chunks += 1
        if match:
            continue
        _, problem = _unpack(view[offset - start:offset - start + length], codec, raw, digest)
        if problem:
            check.problems.append(f"chunk {digest[:16]} at offset {offset} {problem}")


def verify_packs(store: ChunkStore, *, dry_run: bool = False,
                 progress: bool = False) -> VerifyReport:
    """Check every indexed pack against its index; quarantine the ones that lie.

    A quarantined pack and its index move under ``quarantine/`` (with a note
    of what was wrong): no reader uses them again, nothing is deleted.
    ``progress``: a bar of the packs' bytes on a terminal (a store of a TB
    takes a while).
    """
    from .locking import store_lock

    if not dry_run and getattr(store.blobs, "move", None) is None:
        raise InvalidInput(f"the store at {store.url} cannot move objects into quarantine",
                           hint="run `tether store verify` where the store is directly "
                           "reachable (on the server), or use --dry-run")
    report = VerifyReport(packs=0, chunks=0, bytes_read=0, reads=0, bad=[], dry_run=dry_run)
    census = store.index.census()  # refreshed first
    with store.index.lock:
        segments = list(store.index.segments.values())
    for segment in segments:  # a merged file's own order, pack numbers and filter
        report.bad_indexes.extend(damage(segment))
    unreadable: dict[str, Any] = {}
    listed = set(census.names)
    for info in store.blobs.list("index/"):  # files no reader could parse
        name = index_name(info.key)
        if name in store.index.seen_files or name in listed:
            continue
        try:
            raw = store.blobs.get_bytes(info.key)
        except NotFound:
            continue  # removed by a concurrent gc
        except MalformedObject as error:  # not a regular file, or huge: never a pack's index
            report.unusable.append(f"{info.key}: {error.message}")
            continue
        if is_merged(raw[:len(MAGIC)]):
            # A merged index no reader could open (cut short, say) is not a pack's index:
            # quarantined as one, it took the store's only index out of use (a review).
            # Kept where it is; its packs' chunks are unreachable until it is restored.
            # One that reads was merged by another process since the census.
            why = _why_unreadable(name, raw)
            if why is not None:
                report.unusable.append(
                    f"{info.key}: a merged index that cannot be read ({why}); "
                    "the chunks it lists cannot be found: restore it from a backup")
            continue
        try:
            unreadable[name] = json.loads(raw)
        except (ValueError, RecursionError):
            unreadable[name] = None
    indexes: dict[str, Any] = {}  # of the packs found bad: what their index said
    bar = Progress("verifying", int(census.sizes.sum()), enabled=progress)

    def check(pack: str, index: Any) -> None:
        result = check_pack(store, pack, index)
        with contextlib.suppress(TypeError, ValueError, AttributeError, OverflowError):
            bar.advance(max(0, int(index["size"])))
        report.packs += 1
        report.chunks += result.chunks
        report.bytes_read += result.bytes_read
        report.reads += result.reads
        if result.problems:
            report.bad.append(result)
            indexes[pack] = index

    # Pack by pack, each pack's entries gathered with a batch of others': what is
    # held is a batch's entries, not the store's.
    try:
        with tempfile.TemporaryDirectory(**store.scratch_args("verify")) as spill:
            for batch, entries in census.entries_by_batch(
                    census.batches(_VERIFY_BATCH_ENTRIES), Path(spill)):
                _check_batch(census, batch, entries, check)
        for name in sorted(unreadable):
            check(name, unreadable.pop(name))
    finally:
        bar.close()
    report.bad.sort(key=lambda c: c.pack)
    liars = _liars_about_honest_packs(store, report, segments)
    for key, problem in liars.items():
        if key.removeprefix("index/").removesuffix(".idx") in store.index.journal:
            # A journal index claims only its own pack: without it the pack keeps
            # the honest claims of another index file.
            if not dry_run:
                with store_lock(store):
                    _move(store, key, f"quarantine/{key}")
            report.bad_indexes.append(f"{key}: {problem}" + (
                "" if dry_run else "; moved under quarantine/"))
        else:
            # A merged file holds other packs' entries too, often their only ones:
            # moved away, those packs would look unindexed (and gc deletes such
            # packs). Loads fall back past its lie; it is named, not moved.
            report.unusable.append(f"{key}: {problem}; loads fall back to the pack's "
                                   "true index; remove or restore this file once "
                                   "you know where it came from")
    if report.bad and not dry_run:
        with store_lock(store):  # no ingest may be deciding to reuse these chunks now
            merged = False
            for bad in report.bad:
                in_journal = bad.pack in store.index.journal or indexes[bad.pack] is None
                quarantine(store, bad.pack, bad.problems, index_bytes=None if in_journal
                                else json.dumps(indexes[bad.pack]).encode())
                merged = merged or not in_journal
                bad.quarantined = True
            if merged:  # rewrite the merged index without them
                store.consolidate()
                report.indexes_rewritten = True
    if report.bad_indexes and not dry_run and not report.indexes_rewritten:
        with store_lock(store):
            store.consolidate()  # every merged file written again: sorted, filter rebuilt
        report.indexes_rewritten = True
    return report

def _liars_about_honest_packs(store: ChunkStore, report: VerifyReport,
                              segments: Sequence[MergedIndex]) -> dict[str, str]:
    """The index files that lie about a pack another index file tells the truth about,
    by key, with what they claim; those packs leave ``report.bad``.

    Every index's claims about a pack are checked together, so a planted merged file
    claiming that an honest pack holds other chunks had the honest pack quarantined,
    and its true index with it (a review). A pack is bad only when no index file's
    own claims about it hold."""
    liars: dict[str, str] = {}
    honest: list[PackCheck] = []
    for bad in report.bad:
        verdicts = [(key, check_pack(store, bad.pack, claims).problems)
                    for key, claims in _claims_by_file(store, bad.pack, segments)]
        if len(verdicts) < 2 or all(problems for _, problems in verdicts):
            continue
        honest.append(bad)
        for key, problems in verdicts:
            if problems:
                liars.setdefault(key, f"claims chunks pack {bad.pack} does not hold "
                                      f"({problems[0]})")
    report.bad = [b for b in report.bad if b not in honest]
    return liars


def _claims_by_file(store: ChunkStore, pack: str,
                    segments: Sequence[MergedIndex]) -> list[tuple[str, dict[str, Any]]]:
    """(index file key, its own claims about ``pack``) for each index file naming it."""
    from .chunk_index import _journal_file

    found: list[tuple[str, dict[str, Any]]] = []
    with contextlib.suppress(NotFound, ValueError, KeyError, TypeError, OverflowError):
        found.append((f"index/{pack}.idx",
                      _journal_file(pack, store.blobs.get_bytes(f"index/{pack}.idx"))))
    for segment in segments:
        size = segment.packs().get(pack)
        if size is None:
            continue
        chunks = [[digest, offset, length, raw, codec]
                  for digest, name, offset, length, raw, codec in segment.entries()
                  if name == pack]
        found.append((f"index/{segment.name}.idx", {"pack": pack, "size": size,
                                                    "chunks": chunks}))
    return found


def _why_unreadable(name: str, raw: bytes) -> str | None:
    """Why a merged index's bytes cannot be read, or None when they can."""
    try:
        MergedIndex(name, raw)
    except (ValueError, struct.error, IndexError, OverflowError) as error:
        return str(error) or type(error).__name__
    return None


def _check_batch(census: Census, batch: list[int], entries: dict[int, Any],
                 check: Any) -> None:
    """``check(pack, index)`` each pack of ``batch``, its index made of ``entries``
    (and of the journal entries no merged index can hold, which claim nothing)."""
    from .census import rows_as_lists

    for number in batch:
        name = census.names[number]
        rows = entries.pop(number, None)
        chunks = [] if rows is None else rows_as_lists(rows)
        check(name, {"pack": name, "size": int(census.sizes[number]),
                     "chunks": chunks + census.malformed.get(name, [])})

def quarantine(store: ChunkStore, pack: str, problems: Sequence[str], *,
               index_bytes: bytes | None = None) -> str:
    """Move ``pack`` and its index out of use, under ``quarantine/``; returns the prefix.

    ``index_bytes``: an index that was refused (never published) to keep beside it.
    """
    taken = {i.key for i in store.blobs.list("quarantine/")}
    name = pack if f"quarantine/{pack}.json" not in taken else f"{pack}.{time.time_ns()}"
    note = {"pack": pack, "quarantined_at": time.time(), "problems": list(problems)}
    store.blobs.put_bytes(f"quarantine/{name}.json", json.dumps(note, indent=1).encode())
    # The pack first: an index left without its pack only costs readers a fallback.
    _move(store, f"packs/{pack}.pack", f"quarantine/packs/{name}.pack")
    if index_bytes is not None:
        store.blobs.put_bytes(f"quarantine/index/{name}.idx", index_bytes)
    else:
        _move(store, f"index/{pack}.idx", f"quarantine/index/{name}.idx")
    store.index.forget_pack(pack)
    return f"quarantine/{name}"

def _move(store: ChunkStore, key: str, dest: str) -> None:
    mover = getattr(store.blobs, "move", None)
    if mover is None:
        raise InvalidInput(f"the store at {store.url} cannot move objects into quarantine",
                           hint="run `tether store verify` where the store is directly "
                           "reachable (on the server), or use --dry-run")
    with contextlib.suppress(NotFound):
        mover(key, dest)

"""Garbage collection of a chunk store: deciding what gc removes, then removing it.

A gc first plans: the chunks to keep are the live versions' plus those that
unexpired ingest pins protect; a pack is dropped when it is mostly dead or
small (its live chunks are copied into new shared packs), and the leftovers
of crashed or finished processes are listed. The plan's report is the dry
run's answer, so a dry run says exactly what the run removes.

Then it applies the plan in an order that survives a crash or a full disk at
any step: every write (the repacks, the caller's ``commit``) comes first and
is undone if one fails; then the merged index, when the store has or needs
one, is rewritten without the dropped packs; only then come the deletions,
which need no space, each pack's index before the pack.

The store's format (packs, indexes, pins, leftovers) is ``chunkstore``'s; this
module only decides and applies what goes.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import IntegrityError, NotFound, StoreError
from . import chunk_index
from .base import FileEntry, GcReport
from .blobs import scratch_root
from .cache import dead_scratch, remove_paths
from .census import Census, Claim, LiveChunks, grouped, rows_as_lists
from .chunkstore import ChunkStore, _unpack
from .ingest import PackWriter
from .locking import store_lock
from .pin_file import mapped_pin, pin_keys
from .progress import Progress

#: gc reads the live entries of the packs it repacks a batch of about this many at a time.
_REPACK_BATCH = 1 << 18

#: gc moves the live chunks of small packs (under ``ChunkStore._small_pack``: tiny
#: versions' packs) into shared packs once there are at least this many such packs.
_SMALL_PACKS_TO_COMPACT = 8


@dataclass
class _GcPlan:
    """What one gc will do; its report is what a dry run shows."""

    report: GcReport
    #: The packs to repack (by the census's number): their live claims on chunks listed
    #: more than once; the rest of their live entries are read when they are repacked,
    #: a batch of packs at a time (``_repack_batches``), never all at once.
    repacks: dict[int, list[Claim]] = field(default_factory=dict)
    census: Census | None = None
    keep: LiveChunks | None = None
    repeated: Any = None
    live_entries: Any = None  # live entries per pack, by the census's number
    repack_bytes: int = 0  # what the repacks copy
    drop_packs: list[str] = field(default_factory=list)  # index and pack both go
    deletes: list[str] = field(default_factory=list)     # leftovers: one store key each
    scratch: list[Path] = field(default_factory=list)    # this client's dead temp files


def gc(store: ChunkStore, live: Iterable[FileEntry], *, grace_seconds: float,
       dry_run: bool, commit: Any = None, progress: bool = False) -> GcReport:
    """Plan, then (unless ``dry_run``) write repacks, ``commit()``, and delete.

    The report comes from the plan, so a dry run reports exactly what a run
    would remove at that moment. A dry run only reads, so it takes no lock: under
    the store lock it waited up to a minute for every ingest in flight, and then
    held every new ingest off while it planned. A failed write (a full disk)
    undoes the repacks and raises before ``commit`` and before any deletion.
    """
    # The store's own index, never copies kept on this disk: one read through a man in
    # the middle (or a planted file) named another pack for live chunks, and a later
    # honest gc deleted the real one and wrote the lie back into the store (a review).
    store.index.forget_kept_copies()
    if dry_run:
        return _plan(store, live, grace_seconds=grace_seconds, dry_run=True).report
    with store_lock(store):
        plan = _plan(store, live, grace_seconds=grace_seconds, dry_run=False)
        _apply(store, plan, commit, progress=progress)
        return plan.report


def _plan(store: ChunkStore, live: Iterable[FileEntry], *, grace_seconds: float,
          dry_run: bool) -> _GcPlan:
    """What a gc would do now: the packs to repack or drop, and the leftovers to delete.

    Read as columns (``census``): what this holds grows with the packs and the
    distinct live chunks (8 bytes each), not with the entries or the versions.
    """
    now = time.time()
    keep = LiveChunks()
    committed = LiveChunks()  # the versions' chunks (pins may name chunks still uploading)
    found = store._leftovers(now, grace_seconds=grace_seconds, pin_grace=grace_seconds)
    stale_pins = {key for key, _ in found["stale_pins"]}
    for pin in store.blobs.list("pins/"):
        if pin.key in stale_pins or not pin.key.startswith("pins/"):
            continue
        try:
            with mapped_pin(store.blobs, pin.key, pin.size) as data:  # never parsed whole
                for keys in pin_keys(data):
                    keep.add_keys(keys)
        except (NotFound, FileNotFoundError):
            continue  # committed and released meanwhile
    # The versions after the pins: an ingest commits its version, then drops its pin, so
    # one whose pin was gone when read above is committed by now and read here.
    keep.add_files(committed.feeding(live))  # streamed: one version's lists at a time
    listed = {i.key.rsplit("/", 1)[-1].removesuffix(".pack"): i
              for i in store.blobs.list("packs/")}
    mtimes = {name: info.mtime for name, info in listed.items()}
    census = store.index.census()
    _require_every_version_chunk_placed(store, census, committed,
                                        {name: info.size for name, info in listed.items()})
    tally = census.tally(keep)
    report = GcReport(removed_chunks=0, removed_bytes=0, repacked_packs=0, kept_chunks=0,
                      dry_run=dry_run)
    plan = _GcPlan(report=report)
    claims_of: dict[int, list[Claim]] = {}  # chunks listed more than once, by pack
    for claim in tally.claims:
        claims_of.setdefault(claim.pack, []).append(claim)
    doubtful = _lying_duplicates(store, census, tally.claims)
    placed: set[str] = set()  # live chunks listed more than once, already kept in some pack
    # Visit fuller packs first so duplicates are dropped from the emptier ones.
    order = sorted(range(len(census)), key=lambda p: (-int(tally.live_bytes[p]),
                                                      census.names[p]))
    young = {p for p in order if now - mtimes.get(census.names[p], 0.0) < grace_seconds}
    small = {p for p in order if census.sizes[p] < store._small_pack and p not in young}
    if len(small) < _SMALL_PACKS_TO_COMPACT:
        small = set()
    dead_chunks = dead_bytes = 0
    moving = plan.repacks  # dropped packs: their live claims on repeated chunks
    plan.census, plan.keep, plan.repeated = census, keep, tally.repeated
    plan.live_entries = tally.single_live
    for pack in order:
        claims = claims_of.get(pack, [])
        live_claims = [c for c in claims if c.live and c.digest not in placed
                       and (pack, c.digest, c.offset) not in doubtful]
        live_count = int(tally.single_live[pack]) + len(live_claims)
        live_bytes = int(tally.single_live_bytes[pack]) + sum(c.length for c in live_claims)
        dead = int(tally.entries[pack]) - live_count
        total = int(tally.bytes[pack]) or 1
        report.kept_chunks += live_count
        # A small pack (a small version's) is always rewritten: its live chunks
        # move into shared packs. Another is left while young, whole or mostly live.
        if pack in young or pack not in small:
            if pack in young or not dead:
                # Its doubtful claims are no copy to rely on: an honest one elsewhere
                # must still be kept (a young pack lying about a chunk lost it before).
                placed.update(c.digest for c in claims
                              if c.live and (pack, c.digest, c.offset) not in doubtful)
                continue
            if live_count and live_bytes / total >= 0.5:
                # Mostly live: leave it; the dead part is not worth a rewrite yet.
                placed.update(c.digest for c in live_claims)
                continue
        placed.update(c.digest for c in live_claims)
        dead_chunks += dead
        dead_bytes += int(tally.bytes[pack]) - live_bytes
        if live_count:
            moving[pack] = live_claims
            plan.repack_bytes += live_bytes
        plan.drop_packs.append(census.names[pack])
    report.removed_chunks = dead_chunks
    report.repacked_packs = len(plan.repacks)
    report.removed["unreferenced_chunks"] = {"count": dead_chunks, "bytes": dead_bytes}
    for kind, items in found.items():
        report.removed[kind] = {"count": len(items), "bytes": sum(s for _, s in items)}
        plan.deletes.extend(key for key, _ in items)
    scratch = (dead_scratch(store.cache_dir / "tmp") if store.cache_dir is not None
               else dead_scratch(scratch_root()))
    report.removed["scratch"] = scratch.to_dict()
    plan.scratch = scratch.paths
    report.removed_bytes = sum(v["bytes"] for v in report.removed.values())
    return plan


def _require_every_version_chunk_placed(store: ChunkStore, census: Census,
                                        committed: LiveChunks, listed: dict[str, int],
                                        ) -> None:
    """Refuse to plan while a committed version's chunk has no entry in a pack the store
    lists: the listing or the index is then wrong (a short or lying answer left a live
    pack's index out, or named another pack), and gc would take the real pack for a
    leftover and delete it (a review lost live packs both ways on S3). A store that
    truly lost bytes stops here too: nothing is removed until it is repaired."""
    import numpy as np

    # Listed, and at the size its index gave: a merged index naming another pack for a
    # live one's chunks (a pack the listing also showed) passed, and the real pack went
    # as unindexed (a review). A man in the middle of a plain-http endpoint can still
    # forge both; keep S3 behind https.
    present = np.array([listed.get(name) == int(size)
                        for name, size in zip(census.names, census.sizes, strict=True)],
                       dtype=bool)
    missing = census.uncovered(committed, present)
    if missing:
        store.index.forget_kept_copies()
        raise StoreError(
            f"gc found {missing} chunk(s) of registered versions in no pack {store.url} "
            "lists: its listing or index is wrong, or bytes were lost; nothing was removed",
            hint="run it again (indexes are read afresh); if it persists, `tether store "
            "verify` names the versions whose bytes are gone")


def _apply(store: ChunkStore, plan: _GcPlan, commit: Any, *, progress: bool = False) -> None:
    # 1. Every write first: a failure here (a full disk) undoes them and changes nothing.
    written: list[str] = []
    try:
        bar = Progress("repacking", plan.repack_bytes, enabled=progress)
        try:
            written.extend(_repack_all(store, _repack_batches(store, plan), bar))
        finally:
            bar.close()
        if commit is not None:
            commit()
    except BaseException:
        for pack in written:
            with contextlib.suppress(Exception):
                store.blobs.delete(f"index/{pack}.idx")
                store.blobs.delete(f"packs/{pack}.pack")
            store.index.forget_pack(pack)
        raise
    # 2. One merged index without the dropped packs (written before anything is
    #    deleted, so an index never lists a deleted pack); then the deletions,
    #    which need no space. An index goes before its pack.
    with store.index.lock:
        merge = bool(store.index.segments) or len(store.index.journal - set(plan.drop_packs)) \
            >= chunk_index._JOURNAL_MAX
    if merge:  # a small store keeps one index file per pack
        with contextlib.suppress(StoreError):  # a full disk: handled just below
            store.consolidate(exclude=plan.drop_packs)
    for pack in plan.drop_packs:
        store.blobs.delete(f"index/{pack}.idx")
    # A merged index that could not be rewritten still lists some: keep those packs.
    listed = _segment_packs(store)
    dropped = [pack for pack in plan.drop_packs if pack not in listed]
    for pack in dropped:
        store.blobs.delete(f"packs/{pack}.pack")
        store.index.forget_pack(pack)
    for key in plan.deletes:
        with contextlib.suppress(NotFound):
            store.blobs.delete(key)
    remove_paths(plan.scratch)
    store.index.reset()
    store.refresh()


def _segment_packs(store: ChunkStore) -> set[str]:
    """Packs the merged index files read claim."""
    with store.index.lock:
        segments = list(store.index.segments.values())
    return {pack for segment in segments for pack in segment.pack_names}


def _lying_duplicates(store: ChunkStore, census: Census,
                      claims: list[Claim]) -> set[tuple[int, str, int]]:
    """(pack, digest, offset) of live chunks claimed by several packs whose bytes lie.

    gc keeps one copy of a chunk several packs hold; it must never keep the
    copy that does not match while dropping the one that does. Duplicates
    are rare (racing writers), so reading each claim once costs little.
    """
    by_digest: dict[str, list[Claim]] = {}
    for claim in claims:
        if claim.live:
            by_digest.setdefault(claim.digest, []).append(claim)
    doubtful: set[tuple[int, str, int]] = set()
    for digest, where in by_digest.items():
        if len({c.pack for c in where}) < 2:
            continue
        bad = set()
        for c in where:
            key = (c.pack, digest, c.offset)
            try:
                payload = store._get_range(census.names[c.pack], c.offset, c.length)
            except (IntegrityError, ValueError, TypeError):
                bad.add(key)
                continue
            if _unpack(payload, c.codec, c.raw, digest)[0] is None:
                bad.add(key)
        if len(bad) < len(where):  # a copy that verifies exists: never rely on the others
            doubtful |= bad
    return doubtful


def _repack_batches(store: ChunkStore, plan: _GcPlan,
                    ) -> Iterator[tuple[str, list[list[Any]]]]:
    """(pack, its live entries in offset order) of each pack to repack: the entries of
    chunks listed once gathered a batch of packs (``_REPACK_BATCH`` entries) at a time,
    the indexes read once for all batches (``Census.entries_by_batch``), plus the
    claims chosen."""
    census = plan.census
    if census is None or not plan.repacks:
        return
    sizes = {number: int(plan.live_entries[number]) + len(claims)
             for number, claims in plan.repacks.items()}
    batches = grouped(sorted(plan.repacks), sizes, _REPACK_BATCH)
    with tempfile.TemporaryDirectory(**store.scratch_args("gc")) as spill:
        for batch, rows in census.entries_by_batch(batches, Path(spill), live=plan.keep,
                                                   skip=plan.repeated):
            for pack in batch:
                listed = rows.pop(pack, None)
                entries = ([] if listed is None else rows_as_lists(listed)) + [
                    [c.digest, c.offset, c.length, c.raw, c.codec] for c in plan.repacks[pack]]
                yield census.names[pack], sorted(entries, key=lambda e: e[1])


def _repack_all(store: ChunkStore, repacks: Iterable[tuple[str, list[list[Any]]]],
                bar: Progress | None = None) -> list[str]:
    """Copy the live entries of each pack into new shared packs; returns their ids."""
    writer = PackWriter(store)
    try:
        for pack, entries in repacks:
            for digest, offset, length, raw, codec in entries:
                payload = store.blobs.get_range(f"packs/{pack}.pack", offset, length)
                # Checked before it is copied: the old pack is deleted once the copy is
                # in, so a lying read (a flipped bit over http) lost the chunk for good.
                if len(payload) != length or _unpack(payload, codec, raw, digest)[0] is None:
                    raise IntegrityError(
                        f"gc read chunk {digest[:16]} of pack {pack} and it does not match "
                        "its digest; nothing was removed",
                        hint="run it again; if it persists, `tether store verify` "
                        "quarantines the pack")
                writer.add(digest, payload, raw, codec)
                writer.write_out()  # one chunk held at a time
                if bar is not None:
                    bar.advance(int(length))
        writer.finish()
    except BaseException:
        writer.abort()
        for new in writer.published:
            with contextlib.suppress(Exception):
                store.blobs.delete(f"index/{new}.idx")
                store.blobs.delete(f"packs/{new}.pack")
            store.index.forget_pack(new)
        raise
    return writer.published

"""The chunk store's index: which pack holds each chunk.

Every pack has a journal index file (``index/<id>.idx``, JSON: the pack's size and
``[digest, offset, length, raw size, codec]`` per chunk). Once ``_JOURNAL_MAX``
accumulate they are merged into merged index files (midx.py, like git's
multi-pack index), so opening a store reads a few files whatever its size. What
this process adds meanwhile (its own packs, or others' journal files) is held in a
dict, folded into numpy-built blocks and spilled to scratch files as it grows, so
a large ingest's index stays out of the heap.

An index is a claim, not a proof (see chunkstore.py): a chunk several packs claim
keeps every candidate location, and a location whose bytes did not match is
demoted, tried last.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import re
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError, NotFound, StoreError
from .base import ChunkRef
from .blobs import Blobs
from .chunklist import RECORD_SIZE, ChunkList
from .index_cache import IndexCache
from .midx import (
    MAGIC,
    PAGES,
    MergedIndex,
    Unsorted,
    build,
    combine,
    find_first,
    is_merged,
    merge_into,
)

if TYPE_CHECKING:
    from .census import Census

#: Journal index files (one per pack) merged into a merged index once this many.
_JOURNAL_MAX = 64
#: Other locations kept for one chunk (beside the first): enough for honest copies
#: beside damaged ones. From the journal and from each merged file or block alike
#: (``candidates``): a hostile index listing one chunk at 50,000 offsets made every
#: read of it compare each with the rest (10 s at 8,000, ``tether verify`` hung) and
#: would have had it tried at each.
_MAX_ALTERNATES = 16
#: A network store's index file larger than this is asked whether it is a merged
#: file first, and if so streamed to disk (index_cache.py), never held whole.
_INDEX_IN_MEMORY = 1 << 20
#: Index lookups of at least this many digests at once are vectorised (numpy),
#: at most _LOOKUP_PIECE at a time (memory stays flat for a million chunks). One at
#: a time, a binary search each, the last 566 chunks of a file mapped 36 MB of index.
_BATCH_LOOKUP = 16
_LOOKUP_PIECE = 65536
#: Whether-stored questions go to numpy from this many digests: an ingest asks for
#: every window's chunks (about 128) of every merged file and index block, and one
#: numpy search of 128 keys took 23 us against 230 us one at a time.
_BATCH_KNOWN = 16
#: The in-memory index is folded into a numpy-built block (56 bytes an entry, not
#: some 300 as a dict of Locations) once it holds this many entries; blocks are
#: combined, smallest first, while the result stays under ``_BLOCK_MAX`` entries.
_INDEX_FOLD = 16384
_BLOCK_MAX = 131072
#: A merged index file holds at most about this many entries (117 MB, the chunks of
#: 128 GB at 64 KiB): merging streams (``merge_into``), so its memory does not
#: depend on this; the cap bounds what one merge rewrites, and a lookup searches
#: one more file for every 2 million chunks stored.
_MERGE_MAX = 2097152
#: A merge keeps at most this many journal entries in memory (7 MB); more are
#: merged into a scratch file first.
_SPILL_ENTRIES = 131072
#: The name of a merge's scratch inputs (closed when the merge is done).
_SPILLED = "spilled"
#: The name of blocks spilled to a scratch file (``_spill_blocks``): unmapped when the
#: last lookup holding one lets go, like any block.
_SPILLED_BLOCK = "spilled-block"
#: A load's chunks found in merged files: their entries are read this many at a time,
#: within the mapped-pages budget (midx.MappedPages).
_ENTRIES_AT_ONCE = 256
#: Index files a network store's client fetches at once.
_FETCH_THREADS = 8
#: What an index file's key looks like (a journal's is its pack's name, a merged one's a
#: name of its own): nothing else under index/ is read as one.
_INDEX_KEY = re.compile(r"index/[0-9a-f]{32}\.idx")
#: Index files of a network store fetched (and held) at once while the index refreshes.
_FETCH_BATCH = 4 * _FETCH_THREADS
#: A journal index file larger than this is malformed (a pack's index is a few hundred KB).
_JOURNAL_FILE_MAX = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Location:
    pack: str
    offset: int
    length: int
    raw_size: int
    codec: int



def _journal_file(name: str, raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A journal index file's JSON; ValueError unless it names the pack it is named for
    (``index/<pack>.idx``): one naming another pack left the real one looking unindexed,
    and gc deleted it as a leftover (a review, through a lying S3)."""
    try:
        data = json.loads(bytes(raw))
    except RecursionError:  # arrays nested 100,000 deep: a traceback on every command
        raise ValueError(f"index {name} is nested too deeply") from None
    if not isinstance(data, dict) or data.get("pack") != name:
        raise ValueError(f"index {name} names another pack")
    return data


def index_name(key: str) -> str:
    """The name of index file ``key`` (``index/<name>.idx``)."""
    return key.rsplit("/", 1)[-1].removesuffix(".idx")


def _segment_keys(digests: Sequence[str],
                  settled: Sequence[object]) -> tuple[list[int], list[bytes]]:
    """(positions, 32-byte keys) of the digests still to look up in the merged index:
    those whose ``settled`` entry is falsy (not found in memory); a digest that is not
    64 hex digits is left out (no index lists it)."""
    where: list[int] = []
    keys: list[bytes] = []
    for i, digest in enumerate(digests):
        if not settled[i] and len(digest) == 64:
            try:
                keys.append(bytes.fromhex(digest))
            except ValueError:
                continue
            where.append(i)
    return where, keys


def _is_hex(text: str, digits: int) -> bool:
    if not isinstance(text, str) or len(text) != digits or text != text.lower():
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _fits_a_block(digest: str, loc: Location) -> bool:
    """Whether an index entry is one a merged index can hold: hex names, sizes in range."""
    return (_is_hex(digest, 64) and _is_hex(loc.pack, 32) and 0 <= loc.offset < 1 << 64
            and 0 <= loc.length < 1 << 32 and 0 <= loc.raw_size < 1 << 32
            and 0 <= loc.codec < 256)


def _off_heap(data: bytes | bytearray) -> mmap.mmap:
    """``data`` copied into memory of its own (an anonymous mapping), given back to the
    system whole when closed.

    Index blocks live as long as the ingest and are joined into ever larger ones.
    On malloc's heap, the freed smaller ones left holes that larger ones did not
    fit: logging 242,000 chunks peaked at 226 MB with the blocks there, 218-221 MB
    with them here.
    """
    block = mmap.mmap(-1, max(1, len(data)), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block[:len(data)] = data
    return block


def _to_spill(blocks: Sequence[MergedIndex]) -> list[MergedIndex]:
    """The blocks ``ChunkStore._spill_blocks`` merges next into one file: every block in
    memory once they hold ``_SPILL_ENTRIES`` entries, else the two smallest spilled
    files if the larger is at most twice the smaller, else none."""
    memory = [b for b in blocks if not b.from_file]
    if sum(b.entry_count for b in memory) >= _SPILL_ENTRIES:
        return memory
    spilled = sorted((b for b in blocks if b.from_file), key=lambda b: b.entry_count)
    for smaller, larger in itertools.pairwise(spilled):
        if larger.entry_count <= 2 * smaller.entry_count:
            return [smaller, larger]
    return []




class ChunkIndex:
    """Which pack holds each chunk: the journal (one index file per pack), the merged
    index files (midx.py), and what this process added since, in memory.

    Lookups are by the thousand (every window of an ingest, every file of a load), so
    they are vectorised (numpy) and never build a Location they do not return. One
    lock guards the state; merged files and blocks are searched outside it.
    """

    def __init__(self, blobs: Blobs, *, cache_dir: Path | None,
                 scratch_file: Callable[[str], tuple[int, Path]]) -> None:
        self.blobs = blobs
        self.url = blobs.url
        #: Where a merge's scratch inputs go (the store's scratch folder).
        self._scratch_file = scratch_file
        self.lock = threading.Lock()
        self._index: dict[str, Location] = {}
        #: Further candidates of chunks more than one pack claims (rare: two
        #: writers racing, or a pack that lies); the first stays in ``_index``.
        self._alternates: dict[str, list[Location]] = {}
        #: Packs known from journal index files (and the ones this process wrote).
        self._pack_sizes: dict[str, int] = {}
        #: Merged index files (see midx.py), by name, read in place.
        self.segments: dict[str, MergedIndex] = {}
        #: The in-memory index folded into blocks (``_fold_index``): searched like the
        #: merged files, but no file of the store (never merged, collected or listed).
        self._blocks: list[MergedIndex] = []
        #: Index files read (or covered by a merged one read): never read again.
        self.seen_files: set[str] = set()
        #: Journal index files (by name) this process knows are still listed.
        self.journal: set[str] = set()
        #: Packs gone (gc, quarantine, undo) that merged indexes may still list.
        self._forgotten: set[str] = set()
        #: Locations whose bytes did not match: tried last.
        self._demoted: set[Location] = set()
        self._spilling = threading.Lock()
        #: A network store's merged index files, kept on disk (index_cache.py).
        self._index_cache = (IndexCache(cache_dir, blobs)
                             if cache_dir is not None and not blobs.is_local else None)

    def add(self, pack: str, size: int, entries: Iterable[list[Any]]) -> None:
        # Every entry read before any is added: one that is no number (1e999) made the
        # pack known with half its entries, and `store verify` found nothing wrong.
        located = [(digest, Location(pack, int(offset), int(length), int(raw), int(codec)))
                   for digest, offset, length, raw, codec in entries]
        with self.lock:
            self._pack_sizes[pack] = size
            self._forgotten.discard(pack)
            for digest, loc in located:
                first = self._index.setdefault(digest, loc)
                if first is not loc and first != loc:
                    # Another pack claims it too: keep every candidate, so a pack
                    # whose bytes do not match never hides an honest copy.
                    others = self._alternates.setdefault(digest, [])
                    if len(others) < _MAX_ALTERNATES and loc not in others:
                        others.append(loc)
            if len(self._index) >= _INDEX_FOLD:
                self._fold_index()
        self._spill_blocks()

    def _journal_entries(self) -> tuple[dict[str, tuple[int, list[list[Any]]]],
                                        dict[str, list[list[Any]]]]:
        """The in-memory index and its alternates by pack (``_lock`` held): those a block
        can hold ({pack: (size, entries)}), and the rest ({pack: entries}: from a
        malformed index file, they claim nothing, and ``store verify`` names them)."""
        packs: dict[str, tuple[int, list[list[Any]]]] = {}
        malformed: dict[str, list[list[Any]]] = {}
        every = itertools.chain(self._index.items(), (
            (digest, loc) for digest, others in self._alternates.items() for loc in others))
        for digest, loc in every:
            entry = [digest, loc.offset, loc.length, loc.raw_size, loc.codec]
            if not _fits_a_block(digest, loc):
                malformed.setdefault(loc.pack, []).append(entry)
                continue
            size = self._pack_sizes.get(loc.pack, 0)
            # A size a block cannot hold (a malformed index) must not keep the others out.
            packs.setdefault(loc.pack, (size if 0 <= size < 1 << 64 else 0, []))[1].append(
                entry)
        return packs, malformed

    def _dict_as_block(self) -> MergedIndex | None:
        """The in-memory index (and its alternates) as a block, off the heap (``_lock``
        held); None if it cannot be built (memory)."""
        packs, _ = self._journal_entries()
        try:
            return MergedIndex("memory", _off_heap(build(packs, ())))
        except (ValueError, OverflowError, struct.error, OSError, MemoryError):
            return None

    def census(self) -> Census:
        """Every index entry naming a pack in use, for reading in rounds (refreshed first).

        Never without the journal: gc would take its packs for empty and drop them,
        verify would check them against nothing. If it cannot be read (memory), this
        raises rather than go on without it.
        """
        from .census import Census  # numpy: only gc, stats and verify need it

        self.refresh()
        with self.lock:  # one snapshot: no pack listed without its entries
            sources = self._searched()
            packs = self._packs_listed()
            journal, malformed = self._journal_entries()
        if journal:
            try:
                sources.append(MergedIndex("memory", build(journal, ())))
            except (ValueError, OverflowError, struct.error, MemoryError) as error:
                raise StoreError(f"could not read the index journal of {self.url} "
                                 f"({type(error).__name__}: {error})",
                                 hint="free memory and retry; nothing was changed") from error
        return Census(sources, packs, malformed)

    def _fold_index(self) -> None:
        """Move the in-memory index (and its alternates) into a block (``_lock`` held).

        A large ingest adds an entry per new chunk, and a fresh process reads a
        long journal: as Locations in a dict, a million entries were 300 MB.
        A block holds every candidate of a digest, as a merged file does.
        """
        block = self._dict_as_block()
        if block is None:
            return  # not folded: the dict keeps answering, as before
        # The list is changed in place, never replaced: a copy of this store made for
        # ``verify`` shares it (and the dict, and the files read), so a fold on either
        # is seen by both. The new block is in it before the dict is emptied.
        self._blocks.append(block)
        self._index.clear()
        self._alternates.clear()
        while True:
            small = sorted((b for b in self._blocks if not b.from_file),
                           key=lambda b: b.entry_count)[:2]
            if len(small) < 2 or small[0].entry_count + small[1].entry_count > _BLOCK_MAX:
                return
            # Joined blocks are unmapped when the last reference goes (a lookup may
            # still be searching them): never closed here. If joining fails, both stay.
            try:
                joined = MergedIndex("memory", _off_heap(combine(small, ())))
            except (ValueError, OverflowError, OSError, MemoryError):
                return
            self._blocks[:] = [b for b in self._blocks if b is not small[0]
                               and b is not small[1]] + [joined]

    def _spill_blocks(self) -> None:
        """Move the blocks in memory to a scratch file, read in place, once they hold
        ``_SPILL_ENTRIES`` entries; and merge spilled files of about one size into one.

        An ingest adds an entry per new chunk and keeps them until it ends (its own
        later windows must find them). In memory that was 56 bytes a chunk, 54 MB of
        the 290 MB peak of logging 967,000 chunks, and grew with the file. In files,
        the pages its lookups touch are let go within ``midx.MAPPED_BUDGET`` (the
        page cache keeps them). Files are merged when one is at most twice another,
        so an entry is rewritten about log2(entries / ``_SPILL_ENTRIES``) times and a
        lookup searches as many files. Not under ``_lock``: lookups go on meanwhile,
        finding the entries in the inputs until the merged file takes their place.
        """
        if not self._spilling.acquire(blocking=False):
            return  # another publisher thread is at it: it sees these blocks too
        try:
            while True:
                with self.lock:
                    group = _to_spill(self._blocks)
                if not group:
                    return
                try:
                    spilled = self._merged_scratch(group, name=_SPILLED_BLOCK)
                except (OSError, ValueError, MemoryError, StoreError):
                    # No room for a scratch file (make_temp says StoreError): they stay
                    # as they are, in memory, and lookups still find every entry.
                    return
                with self.lock:
                    if not all(any(b is g for b in self._blocks) for g in group):
                        spilled.close()  # changed meanwhile (dropped, reset): not needed
                        return
                    self._blocks[:] = [b for b in self._blocks
                                       if not any(b is g for g in group)] + [spilled]
        finally:
            self._spilling.release()

    def _searched(self) -> list[MergedIndex]:
        """The merged files and blocks a lookup searches after ``_index`` (``_lock`` held)."""
        return [*self.segments.values(), *self._blocks]

    def learn(self, name: str, pack: str, size: int, entries: list[list[Any]]) -> None:
        """``add`` and ``note_journal`` of an index file this process just stored (a
        server, one it checked), unless a refresh read it first: added twice, its
        chunks were counted twice by census and stats."""
        with self.lock:
            if name in self.seen_files or pack in self._pack_sizes:
                return
            self.seen_files.add(name)
            self.journal.add(name)
        self.add(pack, size, entries)

    def note_journal(self, name: str) -> None:
        with self.lock:
            self.journal.add(name)
            self.seen_files.add(name)

    def reset(self) -> None:
        """Forget everything read (after gc rewrote the indexes); the next refresh rereads."""
        with self.lock:
            for segment in self.segments.values():
                segment.close()
            self.segments.clear()
            self._blocks.clear()
            self._index.clear()
            self._alternates.clear()
            self._pack_sizes.clear()
            self.seen_files.clear()
            self.journal.clear()
            self._forgotten.clear()
            self._demoted.clear()

    def _add_segment(self, name: str, segment: MergedIndex) -> None:
        with self.lock:
            self.segments[name] = segment
            self.seen_files.update(segment.covers)
            for covered in segment.covers:  # replaced: its entries are all in ``segment``
                # Dropped, not closed: a lookup on another thread may be searching it
                # now (a server merges after its commits while others look up). It is
                # unmapped once the last of them lets go of it.
                self.segments.pop(covered, None)
                self.journal.discard(covered)

    def _open_segment(self, key: str, name: str) -> MergedIndex:
        path = self.blobs.local_path(key)
        if path is not None:
            try:
                return MergedIndex.open(name, path)
            except FileNotFoundError as error:
                raise NotFound(f"store object {key} is missing") from error
        return MergedIndex(name, self.blobs.get_bytes(key))

    def forget_kept_copies(self) -> bool:
        """Remove this store's merged index files kept on this disk (a network store's),
        so the next process fetches them again; whether there were any to remove."""
        return self._index_cache is not None and self._index_cache.forget()

    def refresh(self) -> None:
        """Read index files written since the last look (by us or other writers).

        A few merged files plus a short journal, whatever the store's size. A
        listed file found gone was merged (or collected) since the listing: the
        merged file replacing it was written first, so listing again finds it.
        """
        for _attempt in range(4):
            lost = False
            # Sorted, so every process sees the candidates of a chunk in one order.
            # Only index files by name (32 hex digits): a server refuses to serve others,
            # and one such file made every refresh fail (a review).
            listing = sorted((i for i in self.blobs.list("index/") if _INDEX_KEY.fullmatch(i.key)),
                             key=lambda i: i.key)
            names = [index_name(info.key) for info in listing]
            new = [(name, info) for name, info in zip(names, listing, strict=True)
                   if name not in self.seen_files and name not in self._pack_sizes]
            # A batch at a time: the bodies of a batch are what is held (network stores).
            for first in range(0, len(new), _FETCH_BATCH):
                batch = new[first:first + _FETCH_BATCH]
                fetched = self._fetch_new_indexes(batch)
                for name, info in batch:
                    if name in self.seen_files or name in self._pack_sizes:
                        continue  # covered by a merged file read just before it in this loop
                    try:
                        if name in fetched:
                            # Over a network: fetched at once, one request per file.
                            raw = fetched[name]
                            if raw is None:
                                raise NotFound(f"{info.key} is gone")
                            if isinstance(raw, MergedIndex):  # kept on disk (index_cache.py)
                                self._add_segment(name, raw)
                            elif is_merged(raw[:len(MAGIC)]):
                                self._add_segment(name, MergedIndex(name, raw))
                            else:
                                data = _journal_file(name, raw)
                                self.add(data["pack"], int(data["size"]), data["chunks"])
                                with self.lock:
                                    self.journal.add(name)
                        elif info.size >= len(MAGIC) and self._is_merged(info.key):
                            self._add_segment(name, self._open_segment(info.key, name))
                        else:
                            data = _journal_file(name, self.blobs.get_bytes(info.key))
                            self.add(data["pack"], int(data["size"]), data["chunks"])
                            with self.lock:
                                self.journal.add(name)
                    except NotFound:
                        lost = True  # merged away or collected since the listing
                        continue
                    except (ValueError, KeyError, TypeError, OverflowError, struct.error):
                        # Malformed (an offset of 1e999 too): claims nothing (`tether store
                        # verify` reports it).
                        continue
                    self.seen_files.add(name)
            if not lost:
                if self._index_cache is not None:
                    self._index_cache.prune(set(names))
                return

    def _fetch_new_indexes(self, new: list[tuple[str, Any]],
                           ) -> dict[str, bytes | MergedIndex | None]:
        """The index files ``new`` ((name, listing entry) not read yet), by name, from a
        network store, fetched a few at a time: merged files kept on disk and mapped
        (``index_cache``: a fresh process fetches only those merged since), the
        journal's as bytes (None: gone since the listing). Nothing for a local store."""
        if self.blobs.is_local:
            return {}
        new = [(name, info) for name, info in new if self.blobs.local_path(info.key) is None]
        if not new:
            return {}
        cache = self._index_cache

        def get(name: str, info: Any) -> bytes | MergedIndex | None:
            try:
                if cache is not None:
                    kept = cache.open(name, info.size)
                    if kept is not None:
                        return kept
                    if info.size > _INDEX_IN_MEMORY and is_merged(
                            self.blobs.get_range(info.key, 0, len(MAGIC))):
                        # Else (a short answer, a full cache disk) fetched whole, as before.
                        with contextlib.suppress(OSError, ValueError, struct.error):
                            return cache.fetch(info.key, name, info.size)
                raw = self._listed_bytes(info)
                if cache is not None and is_merged(raw[:len(MAGIC)]):
                    with contextlib.suppress(OSError, ValueError, struct.error):
                        return cache.keep(name, raw)  # else read from memory (and refused there)
                return raw
            except NotFound:
                return None
            except (ValueError, IntegrityError):  # longer than listed: claims nothing
                return b""

        if len(new) == 1:
            return {new[0][0]: get(*new[0])}
        with ThreadPoolExecutor(max_workers=_FETCH_THREADS,
                                thread_name_prefix="tether-index") as pool:
            return dict(zip([name for name, _ in new],
                            pool.map(lambda item: get(*item), new), strict=True))

    def _listed_bytes(self, info: Any) -> bytes:
        """An index file of a network store, read no further than the size its listing
        gives; nothing of a journal file listed larger than any journal (it claims
        nothing). Every body was read up to 512 MB, and all the files of a listing held
        at once: 16 junk files took a client to 3 GB (a review)."""
        size = int(info.size)
        if size <= 0:
            return b""
        if size > _JOURNAL_FILE_MAX and not is_merged(
                self.blobs.get_range(info.key, 0, len(MAGIC))):
            return b""
        raw = self.blobs.get_range(info.key, 0, size)
        if len(raw) > size:
            raise ValueError(f"{info.key} is longer than its listing says")
        return bytes(raw)

    def _is_merged(self, key: str) -> bool:
        # A local store's get_range opens regular files only (a named pipe: a review).
        return is_merged(self.blobs.get_range(key, 0, len(MAGIC)))

    def forget_pack(self, pack: str) -> None:
        with self.lock:
            self._forgotten.add(pack)
            self._pack_sizes.pop(pack, None)
            for digest, others in list(self._alternates.items()):
                others[:] = [loc for loc in others if loc.pack != pack]
                if not others:
                    del self._alternates[digest]
            for digest in [d for d, loc in self._index.items() if loc.pack == pack]:
                rest = self._alternates.get(digest)
                if rest:
                    self._index[digest] = rest.pop(0)
                    if not rest:
                        del self._alternates[digest]
                else:
                    del self._index[digest]

    def known_all(self, digests: Sequence[str]) -> list[bool]:
        """Whether some index lists each of ``digests`` (ingest asks for every chunk:
        one lock, no Location built)."""
        with self.lock:
            index = self._index
            known = [d in index for d in digests]
            segments = self._searched()
            forgotten = set(self._forgotten)
        if not segments or all(known):
            return known
        where, keys = _segment_keys(digests, known)
        if len(keys) >= _BATCH_KNOWN and not forgotten:
            for i, number in zip(where, find_first(segments, keys)[0].tolist(), strict=True):
                if number >= 0:
                    known[i] = True
        else:
            for n, (i, key) in enumerate(zip(where, keys, strict=True), start=1):
                known[i] = any(s.has(key, forgotten) for s in segments)
                if n % 64 == 0 or n == len(keys):
                    PAGES.spend(segments)  # as find_first does
        return known

    def missing(self, digests: Iterable[str]) -> set[str]:
        """The digests the store lacks, looked up ``_LOOKUP_PIECE`` at a time: ``digests``
        may be a generator over a million chunks, never held at once."""
        self.refresh()
        gone: set[str] = set()
        stream = iter(digests)
        while piece := list(dict.fromkeys(itertools.islice(stream, _LOOKUP_PIECE))):
            gone.update(d for d, known in zip(piece, self.known_all(piece), strict=True)
                        if not known)
        return gone

    def missing_of(self, lists: Iterable[ChunkList]) -> set[str]:
        """``missing`` of every chunk of ``lists`` (a version's files), searched from the
        packed records: a commit checks every chunk of the version, and through hex
        digests (made, parsed back, then searched) 967,000 chunks took 6 s."""
        self.refresh()
        with self.lock:
            simple = not self._forgotten
        if not simple:
            return self.missing(d for chunks in lists for d in chunks.digests())
        import numpy as np  # as find_first does

        gone: set[str] = set()
        for chunks in lists:
            for records in chunks.pieces(_LOOKUP_PIECE):
                digests = np.frombuffer(records, dtype=[("digest", "S32"), ("size", "<u8")])
                with self.lock:
                    segments = self._searched()
                which, _ = find_first(segments, digests["digest"])
                # Not in a merged file or block: the few left are looked for in the dict.
                at = [i * RECORD_SIZE for i in (which < 0).nonzero()[0].tolist()]
                absent = [bytes(records[a:a + 32]).hex() for a in at]
                del digests
                if absent:
                    with self.lock:
                        gone.update(d for d in absent if d not in self._index)
        self._let_go_segments()
        return gone

    def _let_go_segments(self) -> None:
        """Drop the merged files' pages a bulk search mapped (a commit checks every chunk
        of a version, a load locates every chunk of a file): on this kernel a few
        thousand lookups map nearly all of a large file, and those pages counted in the
        process's peak (54 MB for 967,000 chunks) though the page cache holds them."""
        with self.lock:
            segments = self._searched()  # the spilled blocks too
        for segment in segments:
            segment.let_go()

    def locate_all(self, chunks: Sequence[ChunkRef], *, what: str) -> list[Location]:
        """``_locate`` of every chunk of a file at once: the merged index is searched
        with numpy for all of them (one at a time, 27,000 chunks took 0.26 s, and a
        load located each twice). The same answers: the in-memory index first, then
        each merged file's first entry; one at a time when locations were demoted or
        packs forgotten (their order rules), or for a few chunks."""
        with self.lock:
            index = self._index
            segments = self._searched()
            simple = not self._demoted and not self._forgotten and not self._alternates
        if not simple or not segments or len(chunks) < _BATCH_LOOKUP:
            located = []
            for n, chunk in enumerate(chunks, start=1):
                located.append(self.locate_chunk(chunk, what=what))
                if n % 64 == 0:
                    PAGES.spend(segments)
            return located
        import numpy as np  # as find_first does

        # Hex digests straight from packed records: a ChunkRef built for each chunk,
        # three times over, was most of a 2 GB load's locating (150-210 ms).
        digests = (list(chunks.digests()) if isinstance(chunks, ChunkList)
                   else [c.digest for c in chunks])
        found: list[Location | None] = [index.get(d) for d in digests]
        where, keys = _segment_keys(digests, found)
        which, entries = find_first(segments, keys)
        # Read in file order, within the mapped-pages budget: in the chunks' order a
        # piece of 16,384 chunks maps every page of a large index (midx.MappedPages).
        hit = (which >= 0).nonzero()[0]
        hit = hit[np.lexsort((entries[hit], which[hit]))]
        for number, segment in enumerate(segments):
            mine = hit[which[hit] == number]
            for start in range(0, len(mine), _ENTRIES_AT_ONCE):
                part = mine[start:start + _ENTRIES_AT_ONCE]
                for i, entry in zip(part.tolist(), segment.entries_at(entries[part]),
                                    strict=True):
                    if entry is not None:  # else damaged: found one at a time
                        found[where[i]] = Location(*entry)
                PAGES.spend(segments)
        self._let_go_segments()
        return [loc if loc is not None else self.locate_chunk(chunks[i], what=what)
                for i, loc in enumerate(found)]

    def locate(self, digest: str) -> Location | None:
        found = self.candidates(digest)
        return found[0] if found else None

    def candidates(self, digest: str) -> list[Location]:
        """Every location some index claims for ``digest``, the one to try first first:
        from the journal and from each merged file or block, the first and at most
        ``_MAX_ALTERNATES`` others.

        Capped per file, not in all: a cap in all would let one hostile file that sorts
        first, listing the chunk at 17 wrong offsets, push every honest copy out. So
        the list stays as short as the files searched are few, and each honest one
        still offers its copy.
        """
        with self.lock:
            first = self._index.get(digest)
            found = [first, *self._alternates.get(digest, ())] if first is not None else []
            segments = self._searched()
            forgotten = self._forgotten
        seen = set(found)  # not ``in found``: a list scanned for each is quadratic
        for segment in segments:
            for pack, offset, length, raw, codec in segment.lookup(
                    digest, limit=1 + _MAX_ALTERNATES):
                loc = Location(pack, offset, length, raw, codec)
                if pack not in forgotten and loc not in seen:
                    seen.add(loc)
                    found.append(loc)
        if self._demoted and len(found) > 1:
            found.sort(key=lambda loc: loc in self._demoted)
        return found

    def demote(self, digest: str, bad: Location) -> None:
        """Try ``bad`` last from now on: its bytes did not match ``digest``."""
        with self.lock:
            self._demoted.add(bad)
            others = self._alternates.get(digest)
            if not others:
                return
            if self._index.get(digest) == bad:
                self._index[digest] = others.pop(0)
                others.append(bad)
            elif bad in others:
                others.remove(bad)
                others.append(bad)

    def all_packs(self) -> dict[str, int]:
        """{pack: size} of every pack some index lists."""
        with self.lock:
            return self._packs_listed()

    def _packs_listed(self) -> dict[str, int]:
        """``_all_packs`` with ``_lock`` held."""
        packs: dict[str, int] = {}
        for segment in self.segments.values():
            packs.update(segment.packs())
        packs.update(self._pack_sizes)
        for pack in self._forgotten:
            packs.pop(pack, None)
        return packs

    # -- consolidation -------------------------------------------------------------

    def can_merge(self) -> bool:
        """Merging deletes the index files it replaces: a gateway client may not."""
        return getattr(self.blobs, "reads_locks", True) and hasattr(self.blobs, "delete")

    def journal_is_long(self) -> bool:
        """Whether the journal, as last read, is long enough to merge (commits read it first)."""
        with self.lock:
            return len(self.journal) >= _JOURNAL_MAX

    def maybe_consolidate(self) -> None:
        """Merge the journal once it is long (and similar-sized merged files with it).

        Tiered like an LSM tree: a merged file is merged again only with files
        of similar size, so each entry is rewritten O(log n) times in all.
        Safe beside other writers: inputs are deleted only after the output
        that covers them is durable. Never concurrently with gc (callers hold
        the ingest or store lock).
        """
        if not self.can_merge():
            return
        self.refresh()
        with self.lock:
            journal = sorted(self.journal)
        if len(journal) < _JOURNAL_MAX:
            return
        with self.lock:
            segments = sorted(self.segments.values(), key=lambda m: m.pack_count)
        weight, chosen = len(journal), []
        for segment in segments:
            if segment.pack_count > 2 * weight:
                break
            if segment.entry_count >= _MERGE_MAX // 2:
                continue  # full enough: merged files stay under _MERGE_MAX entries
            chosen.append(segment)
            weight += segment.pack_count
        self._merge(journal, chosen)

    def consolidate(self, *, exclude: Iterable[str] = ()) -> None:
        """Merge every index file into one (gc, quarantine), leaving out ``exclude`` packs."""
        if not self.can_merge():
            return
        self.refresh()
        with self.lock:
            journal = sorted(self.journal)
            segments = list(self.segments.values())
        self._merge(journal, segments, exclude=set(exclude))

    def _merge(self, journal: list[str], segments: list[MergedIndex], *,
               exclude: set[str] | None = None) -> None:
        """Merge ``journal`` files and ``segments`` into merged files of at most
        ``_MERGE_MAX`` entries each, in bounded memory.

        Each output is streamed to a file (``merge_into``: a few MB in rounds,
        whatever its size). Journal files are read into small blocks
        ``_INDEX_FOLD`` entries at a time (as Python lists, the 268,000 entries of
        one 20 GB ingest took 140 MB), and blocks past ``_SPILL_ENTRIES`` are
        merged into a scratch file read in place, so a long journal (a 70 GB
        ingest writes thousands of packs) is not held either. Each merged file
        is durable before the files it covers go.
        """
        skip = (exclude or set()) | set(self._forgotten)
        inputs: list[MergedIndex] = []  # merged files and spilled blocks, read in place
        blocks: list[MergedIndex] = []  # journal entries not spilled yet, in memory
        covered: list[str] = []
        count = held = 0

        def spill() -> None:
            nonlocal blocks
            inputs.append(self._merged_scratch(blocks))
            blocks = []

        def write() -> None:
            nonlocal inputs, blocks, covered, count
            inputs.extend(blocks)  # as they are: the merge reads them a round at a time
            blocks = []
            try:
                if covered:
                    self._publish_merged(inputs, covered, skip)
            finally:
                for index in inputs:
                    if index.name == _SPILLED:
                        # A failed merge's traceback may still hold a view into it: then
                        # it is unmapped when that goes (the file is unlinked already).
                        with contextlib.suppress(BufferError):
                            index.close()
            inputs, covered, count = [], [], 0

        for segment in segments:
            if count and count + segment.entry_count > _MERGE_MAX:
                write()
            inputs.append(segment)
            covered.append(segment.name)
            count += segment.entry_count
        packs: dict[str, tuple[int, list[Any]]] = {}
        for name in journal:
            try:
                data = _journal_file(name, self.blobs.get_bytes(f"index/{name}.idx"))
                pack, size, chunks = str(data["pack"]), int(data["size"]), list(data["chunks"])
                if pack not in skip and not all(  # one that cannot be merged is left alone
                        _fits_a_block(d, Location(pack, o, n, r, c)) for d, o, n, r, c in chunks):
                    raise ValueError(f"index {name} lists an entry no merged index can hold")
            except NotFound:
                continue  # merged by another writer meanwhile
            except (ValueError, KeyError, TypeError, OverflowError, struct.error):
                continue  # malformed: left alone (`tether store verify` reports it)
            covered.append(name)
            if pack not in skip:
                packs[pack] = (size, chunks)
                held += len(chunks)
            if held >= _INDEX_FOLD:
                blocks.append(MergedIndex("merging", build(packs, ())))
                count += held
                packs, held = {}, 0
                if count >= _MERGE_MAX:
                    write()
                elif sum(b.entry_count for b in blocks) >= _SPILL_ENTRIES:
                    spill()
        if packs:
            blocks.append(MergedIndex("merging", build(packs, ())))
        write()
        for pack in exclude or ():
            self.forget_pack(pack)
        self.refresh()

    def merge_own(self, packs: list[str], entries: int) -> None:
        """Merge the index files of ``packs``, which this ingest wrote (``entries``
        entries in all), once they are many or large, from the entries this process
        holds (not by reading them back).

        A large model writes thousands of packs (70 GB: 2,200 of 32 MB), and the
        merge after its commit (``tidy_index``) read them all back, a million
        entries parsed from JSON in about 6 s of the log; fewer, larger files
        (small chunks) were not merged at all, and every process opening the
        store parsed them (967,000 entries in 36 files: 9 s). One merged file is
        written whatever its size (an ingest of more than ``_MERGE_MAX`` new
        chunks, 128 GB, writes a larger one).
        """
        if not packs or (len(packs) < _JOURNAL_MAX and entries < _SPILL_ENTRIES) \
                or not self.can_merge():
            return
        with self.lock:
            if self._index:
                self._fold_index()  # every entry into a block (the dict's last ones too)
            if self._index:
                return  # could not fold: the journal stays as it is
            blocks = list(self._blocks)
            forgotten = set(self._forgotten)
        mine = set(packs)
        others = {name for block in blocks for name in block.pack_names if name not in mine}
        name = self._publish_merged(blocks, packs, others | forgotten)
        self.refresh()
        with self.lock:
            if name in self.segments:
                # Every entry of ``packs`` is in the file just read in place: the blocks
                # keep only the others' (56 bytes a new chunk, 54 MB for 967,000).
                self._drop_from_blocks(mine)

    def _drop_from_blocks(self, packs: set[str]) -> None:
        """Leave out of the in-memory blocks the entries of ``packs`` (``_lock`` held;
        every entry of theirs is in a merged file read in place). All blocks, not only
        those merged: a fold since may have joined one with newer entries. What stays
        is other writers' entries (read from the journal) and packs published since."""
        if not self._blocks:
            return
        if all(set(block.pack_names) <= packs for block in self._blocks):
            self._blocks.clear()
            return
        try:
            if sum(b.entry_count for b in self._blocks) < _SPILL_ENTRIES:
                rest = MergedIndex("memory", _off_heap(combine(list(self._blocks), (),
                                                               drop=packs)))
            else:  # combine holds 110 bytes an entry: streamed to a file instead
                rest = self._merged_scratch(list(self._blocks), name=_SPILLED_BLOCK,
                                            drop=packs)
        except (ValueError, OSError, MemoryError, StoreError):
            return  # kept whole: lookups still find everything
        self._blocks[:] = [rest] if rest.entry_count else []

    def _publish_merged(self, inputs: list[MergedIndex], covers: list[str],
                        drop: set[str]) -> str:
        """Write the merged index of ``inputs`` (without the packs in ``drop``) as a new
        index file replacing the index files ``covers``, which go once it is durable;
        its name."""
        fd, tmp = self.blobs.temp_file()
        try:
            with os.fdopen(fd, "w+b") as handle:
                try:
                    merge_into(handle, inputs, covers, drop=drop)
                except Unsorted:
                    # A damaged input: sorted whole in memory (about 110 bytes an entry,
                    # once), which puts it right.
                    handle.seek(0)
                    handle.truncate()
                    handle.write(combine(inputs, covers, drop=drop))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        name = uuid.uuid4().hex
        if self._index_cache is not None:
            self._index_cache.adopt(name, tmp)  # not downloaded again by the next refresh
        self.blobs.put_file(f"index/{name}.idx", tmp)
        # The merged file is durable: only now may what it replaces go.
        for old in covers:
            with contextlib.suppress(NotFound):
                self.blobs.delete(f"index/{old}.idx")
        return name

    def _merged_scratch(self, blocks: list[MergedIndex], *, name: str = _SPILLED,
                        drop: Iterable[str] = ()) -> MergedIndex:
        """``blocks`` merged (without the entries of the packs in ``drop``) into a scratch
        file, read in place (the file is unlinked at once: the mapping keeps it until
        closed)."""
        fd, path = self._scratch_file("index-merge")
        try:
            with os.fdopen(fd, "w+b") as handle:
                merge_into(handle, blocks, (), drop=drop)
            index = MergedIndex.open(name, path)
        finally:
            path.unlink(missing_ok=True)
        return index


    def digests_in(self, packs: set[str]) -> set[str]:
        """The digests some index entry places in one of ``packs`` (one pass over all)."""
        with self.lock:
            blocks = list(self._blocks)
            found = {d for d, loc in self._index.items() if loc.pack in packs}
            found.update(d for d, others in self._alternates.items()
                         if any(loc.pack in packs for loc in others))
        for block in blocks:
            found.update(d for d, pack, *_ in block.entries() if pack in packs)
        return found

    def locate_chunk(self, chunk: ChunkRef, *, what: str) -> Location:
        loc = self.locate(chunk.digest)
        if loc is None:
            self.refresh()
            loc = self.locate(chunk.digest)
        if loc is None:
            raise self.not_in_store(f"{what}: chunk {chunk.digest[:16]} is not in the store")
        return loc

    def not_in_store(self, message: str) -> IntegrityError:
        """The error for chunks the index does not list. When this machine kept copies of
        the store's merged index, they may be what lies (a man in the middle once served
        one with altered digests, and every later process failed: a review): they are
        dropped, and the next process fetches them again."""
        if self.forget_kept_copies():
            return IntegrityError(message, hint="this machine's kept copies of the store's "
                                  "index were dropped: run it again; if it fails again, the "
                                  "store lost data (restore it from a backup)")
        return IntegrityError(message, hint="the store lost data; restore it from a backup")


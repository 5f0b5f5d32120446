"""Every entry of a store's indexes, and the chunks still in use, as numpy columns.

gc, ``store stats`` and ``store verify`` look at every index entry. Read as
Python lists ([digest, offset, length, raw, codec] per entry, some 250 bytes)
with the live chunks as a set of hex digests (another 140 bytes each), a store
of 967,000 chunks took gc 837 MB and ``store stats`` 750 MB; a 1 TB store at
64 KiB chunks (16 million) would have needed some 6 GB. Here the entries stay
where they are (the merged index files, mapped) and are read a round of
``ROUND`` entries at a time; the live chunks are a sorted array of the first
8 bytes of their digests (128 MB for 16 million).

Two chunks sharing those 8 bytes are one to ``LiveChunks``: a dead chunk that
shares them with a live one (each dead chunk has about one chance in 10^12 of
it beside 16 million live ones) is kept as if it were live. gc never drops a
live one for it.

An entry may be listed twice (a pack indexed both in a merged file and in the
journal while a merge is being published) and a chunk may be stored twice
(two writers racing). Both are rare, and so are the chunks they concern: the
census finds those chunks (``Census.tally``) and hands every claim on them
over as Python values, exactly as listed; every other chunk has one claim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .midx import _ENTRY, _ENTRY_FIELDS, MERGE_ROUND, MergedIndex, _let_go, find_first

if TYPE_CHECKING:
    from .base import FileEntry

#: Entries read at a time (3.5 MB of columns).
ROUND = MERGE_ROUND

#: An entry as numpy reads it, with the digest's first 8 bytes as a number too.
_ROW = np.dtype({"names": [name for name, _ in _ENTRY_FIELDS if name != "pad"] + ["key"],
                 "formats": [kind for name, kind in _ENTRY_FIELDS if name != "pad"] + [">u8"],
                 "offsets": [0, 32, 36, 44, 48, 52, 0], "itemsize": _ENTRY.size})
#: A chunk list's record (``chunklist.RECORD``): the digest's first 8 bytes as a number.
_RECORD_KEY = np.dtype({"names": ["key"], "formats": [">u8"], "offsets": [0], "itemsize": 40})


def keys_of(digests: Any) -> Any:
    """The 8-byte keys (native unsigned) of an S32 column of digests."""
    raw = np.ascontiguousarray(digests, dtype="S32")
    return np.ndarray((len(raw),), dtype=">u8", buffer=raw, strides=(32,)).astype(np.uint64)


class LiveChunks:
    """The chunks gc must keep, as a sorted array of 8-byte digest prefixes.

    Chunk lists are added as they are read (a registry streams its versions),
    so what is held is 8 bytes per distinct chunk plus what was added since the
    last merge (``_MERGE_PENDING`` keys, 32 MB), not every version's list.
    """

    _MERGE_PENDING = 1 << 22

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.uint64)
        #: Keys added since the last merge, back to back (one buffer, not an array per
        #: file: a million one-chunk files made a million arrays, 128 MB).
        self._pending = bytearray()

    def add_files(self, files: Iterable[FileEntry]) -> int:
        """Add every chunk of ``files`` (read once, one at a time); returns their bytes."""
        size = 0
        for entry in files:
            size += entry.size
            for piece in entry.chunks.pieces():
                self._add(np.frombuffer(piece, dtype=_RECORD_KEY)["key"].astype(np.uint64))
            del entry  # not held while the next (a database row, 40 MB) is fetched
        return size

    def add_digests(self, digests: Iterable[Any]) -> None:
        """Hex digests (an ingest pin's list); anything that is not one is skipped."""
        keys = []
        for digest in digests:
            try:
                raw = bytes.fromhex(digest)
            except (TypeError, ValueError):
                continue
            if len(raw) == 32:
                keys.append(int.from_bytes(raw[:8], "big"))
        if keys:
            self._add(np.array(keys, dtype=np.uint64))

    def _add(self, keys: Any) -> None:
        self._pending += keys.tobytes()
        if len(self._pending) >= 8 * self._MERGE_PENDING:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending keys in, sorted, each once: sorted in place and compacted,
        about twice the keys at the peak (``np.unique`` copies them twice more)."""
        if not self._pending:
            return
        keys = np.concatenate([self._keys, np.frombuffer(self._pending, dtype=np.uint64)])
        self._keys = np.empty(0, dtype=np.uint64)
        self._pending = bytearray()
        keys.sort()
        if len(keys) > 1:
            first = np.empty(len(keys), dtype=bool)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            keys = keys[first]
        self._keys = keys

    def __len__(self) -> int:
        self._merge()
        return len(self._keys)

    def holds(self, keys: Any) -> Any:
        """Which of ``keys`` (8-byte keys, ``keys_of``) are live, as a bool array."""
        self._merge()
        return _within(keys, self._keys)

    def add_keys(self, keys: Any) -> None:
        """Add 8-byte keys (``keys_of``)."""
        self._add(np.asarray(keys, dtype=np.uint64))

    def feeding(self, files: Iterable[FileEntry]) -> Iterator[FileEntry]:
        """``files``, each added here as it passes (to feed two sets from one stream)."""
        for entry in files:
            self.add_files([entry])
            yield entry


@dataclass
class Claim:
    """One index entry on a chunk stored (or listed) more than once."""

    digest: str
    pack: int  # the census's pack number
    offset: int
    length: int
    raw: int
    codec: int
    live: bool


@dataclass
class Tally:
    """Per pack (arrays by the census's pack number): entries and bytes in all, the
    bytes of live entries, and the live entries and bytes among chunks listed once.
    ``claims``: every claim on a chunk listed more than once, each once."""

    entries: Any
    bytes: Any
    live_bytes: Any
    single_live: Any
    single_live_bytes: Any
    single_chunks: int = 0        # chunks listed once
    single_unused: int = 0        # ... of which not live
    claims: list[Claim] = field(default_factory=list)
    repeated: Any = None          # S32 digests of the chunks listed more than once


class Census:
    """The entries of ``sources`` (merged files, blocks, the journal as a block) that
    name a pack in ``packs``, read in rounds as numpy columns."""

    def __init__(self, sources: list[MergedIndex], packs: dict[str, int],
                 malformed: dict[str, list[list[Any]]] | None = None) -> None:
        self.sources = [s for s in sources if s.entry_count]
        #: Journal entries no block can hold ({pack: entries}): they claim nothing (no
        #: lookup finds them), so gc and stats leave them out; ``store verify`` names them.
        self.malformed = malformed or {}
        self.names = sorted(packs)
        self.sizes = np.array([packs[name] for name in self.names], dtype=np.int64)
        number = {name: i for i, name in enumerate(self.names)}
        # Per source: its pack numbers to ours, -1 for a pack not in use (forgotten,
        # dropped) and one more slot for a number the file does not list.
        self._maps = [np.array([number.get(name, -1) for name in s.pack_names] + [-1],
                               dtype=np.int64) for s in self.sources]

    def __len__(self) -> int:
        return len(self.names)

    def rounds(self, only: Any = None) -> Iterator[tuple[int, Any, Any]]:
        """(source number, rows, our pack numbers) of each round's entries naming a pack
        in use (in ``only``, a sorted array of our pack numbers, if given: only those
        entries are copied); rows are a copy (fields of ``_ROW``), each round's pages
        let go. With ``only``, rounds with none of them are left out."""
        for number, source in enumerate(self.sources):
            mapping = self._maps[number]
            for first in range(0, source.entry_count, ROUND):
                count = min(ROUND, source.entry_count - first)
                at = source._entries_at + first * _ENTRY.size
                column = np.ndarray((count,), dtype="<u4", buffer=source._data,
                                    offset=at + 32, strides=(_ENTRY.size,))
                packs = mapping[np.minimum(column, len(mapping) - 1)]
                used = packs >= 0 if only is None else _within(packs, only)
                del column
                if only is not None and not used.any():
                    _let_go(source, first, first + count)
                    continue
                rows = np.frombuffer(source._data, dtype=_ROW, count=count, offset=at)
                picked, numbers = rows[used], packs[used]  # copies
                del rows  # no view of the file is held while the caller works
                _let_go(source, first, first + count)
                yield number, picked, numbers

    def repeated(self) -> Any:
        """The digests (sorted S32) listed more than once: twice in one file, or in a file
        and an earlier one. Rare; each is then looked at claim by claim."""
        found = []
        previous: dict[int, bytes] = {}
        for number, rows, _ in self.rounds():
            digests = rows["digest"]
            if not len(digests):
                continue
            same = np.zeros(len(digests), dtype=bool)
            same[1:] = digests[1:] == digests[:-1]  # a file's entries are in digest order
            same[0] = previous.get(number) == digests[0]
            previous[number] = digests[-1]
            if number:
                which, _ = find_first(self.sources[:number], digests)
                same |= which >= 0
            if same.any():
                found.append(digests[same])
        if not found:
            return np.empty(0, dtype="S32")
        return np.unique(np.concatenate(found))

    def tally(self, live: LiveChunks) -> Tally:
        """Two passes over every entry: the chunks listed more than once, then the counts."""
        count = len(self.names)
        tally = Tally(entries=np.zeros(count, np.int64), bytes=np.zeros(count, np.int64),
                      live_bytes=None, single_live=np.zeros(count, np.int64),
                      single_live_bytes=np.zeros(count, np.int64))
        repeated = tally.repeated = self.repeated()
        seen: set[tuple[bytes, int, int]] = set()
        claimed_live = np.zeros(count, np.int64)  # live bytes of the repeated chunks' claims
        for _, rows, packs in self.rounds():
            lengths = rows["length"].astype(np.int64)
            is_live = live.holds(rows["key"].astype(np.uint64))
            several = _within(rows["digest"], repeated)
            once = ~several
            kept = once & is_live
            _add(tally.entries, packs[once], None)
            _add(tally.bytes, packs[once], lengths[once])
            _add(tally.single_live, packs[kept], None)
            _add(tally.single_live_bytes, packs[kept], lengths[kept])
            tally.single_chunks += int(once.sum())
            tally.single_unused += int((once & ~is_live).sum())
            for row, pack, alive in zip(rows[several], packs[several], is_live[several],
                                        strict=True):
                claim = (_raw(row["digest"]), int(pack), int(row["offset"]))
                if claim in seen:
                    continue  # the same entry listed in two files
                seen.add(claim)
                tally.claims.append(Claim(claim[0].hex(), claim[1], claim[2],
                                          int(row["length"]), int(row["raw"]),
                                          int(row["codec"]), bool(alive)))
                tally.entries[pack] += 1
                tally.bytes[pack] += int(row["length"])
                if alive:
                    claimed_live[pack] += int(row["length"])
        tally.live_bytes = tally.single_live_bytes + claimed_live
        return tally

    def uncovered(self, wanted: LiveChunks, present: Any) -> int:
        """How many of ``wanted``'s chunks no entry places in a pack ``present`` (a bool
        array by our pack number: the pack is in the store's listing)."""
        covered = LiveChunks()
        for _, rows, packs in self.rounds():
            keys = rows["key"].astype(np.uint64)
            covered.add_keys(keys[wanted.holds(keys) & present[packs]])
        return len(wanted) - len(covered)

    def batches(self, entries: int) -> list[list[int]]:
        """Our pack numbers in order, in batches listing about ``entries`` entries (one
        pass to count them)."""
        counts = np.zeros(len(self.names), np.int64)
        for _, _, packs in self.rounds():
            _add(counts, packs, None)
        return grouped(range(len(self.names)), counts.tolist(), entries)

    def entries_of(self, packs: Iterable[int], *, live: LiveChunks | None = None,
                   skip: Any = None) -> dict[int, Any]:
        """{pack number: its entries} of ``packs``, each a numpy array (fields of
        ``_ROW``) in offset order, an entry listed in several files once; only live
        entries with ``live``; never chunks in ``skip`` (sorted S32). 56 bytes an
        entry: ``rows_as_lists`` makes Python values of one pack's at a time."""
        wanted = np.array(sorted(set(packs)), dtype=np.int64)
        found = list(self._wanted_rows(wanted, live, skip))
        return _by_pack(np.concatenate(found)) if found else {}

    def entries_by_batch(self, batches: list[list[int]], spill: Path, *,
                         live: LiveChunks | None = None, skip: Any = None,
                         ) -> Iterator[tuple[list[int], dict[int, Any]]]:
        """(batch, ``entries_of(batch)``) for each batch of pack numbers, reading the
        index once, not once a batch (a pass per batch grew with the square of the
        store): each round's entries go to their batch's file in the folder ``spill``
        (56 bytes an entry), read back, and removed, when the batch's turn comes."""
        if len(batches) <= 1:
            for batch in batches:
                yield batch, self.entries_of(batch, live=live, skip=skip)
            return
        owner = np.full(len(self.names), -1, dtype=np.int64)
        for number, batch in enumerate(batches):
            owner[np.asarray(batch, dtype=np.int64)] = number
        paths = [spill / f"batch-{number}.rows" for number in range(len(batches))]
        with contextlib.ExitStack() as files:
            outs = [files.enter_context(open(path, "wb")) for path in paths]
            for rows in self._wanted_rows(np.flatnonzero(owner >= 0), live, skip):
                which = owner[rows["pack"]]
                for number in np.unique(which):
                    rows[which == number].tofile(outs[number])
        for batch, path in zip(batches, paths, strict=True):
            rows = np.fromfile(path, dtype=_ROW)
            path.unlink()
            yield batch, _by_pack(rows) if len(rows) else {}

    def _wanted_rows(self, wanted: Any, live: LiveChunks | None, skip: Any) -> Iterator[Any]:
        """Each round's entries of the packs ``wanted`` (sorted), filtered, with our pack
        numbers in their ``pack`` field."""
        if not len(wanted):
            return
        for _, rows, numbers in self.rounds(only=wanted):
            picked = np.ones(len(rows), dtype=bool)
            if live is not None:
                picked &= live.holds(rows["key"].astype(np.uint64))
            if skip is not None and len(skip):
                picked &= ~_within(rows["digest"], skip)
            if picked.any():
                rows = rows[picked]
                rows["pack"] = numbers[picked]
                yield rows


def grouped(numbers: Iterable[int], sizes: Any, limit: int) -> list[list[int]]:
    """``numbers`` in order, in batches whose ``sizes`` (indexed by number) add up to
    about ``limit``: a batch is closed before a number that would take it past."""
    batches: list[list[int]] = []
    held = 0
    for number in numbers:
        if not batches or (batches[-1] and held + sizes[number] > limit):
            batches.append([])
            held = 0
        batches[-1].append(number)
        held += sizes[number]
    return batches


def _by_pack(rows: Any) -> dict[int, Any]:
    """{pack number: its rows in offset order, each entry once} of ``rows`` whose ``pack``
    field holds our pack numbers."""
    order = np.lexsort((rows["digest"], rows["offset"], rows["pack"]))
    rows = rows[order]
    again = np.zeros(len(rows), dtype=bool)  # the entry before it is the same one
    again[1:] = ((rows["pack"][1:] == rows["pack"][:-1])
                 & (rows["offset"][1:] == rows["offset"][:-1])
                 & (rows["digest"][1:] == rows["digest"][:-1]))
    rows = rows[~again]
    bounds = np.flatnonzero(np.diff(rows["pack"].astype(np.int64))) + 1
    return {int(part["pack"][0]): part for part in np.split(rows, bounds)}


def rows_as_lists(rows: Any) -> list[list[Any]]:
    """[[digest, offset, length, raw, codec]] of ``entries_of`` rows (one pack's)."""
    return [[_raw(digest).hex(), int(offset), int(length), int(raw), int(codec)]
            for digest, offset, length, raw, codec in zip(
                rows["digest"], rows["offset"], rows["length"], rows["raw"], rows["codec"],
                strict=True)]


def _raw(digest: Any) -> bytes:
    """A digest read from an S32 column, whole: numpy drops trailing zero bytes."""
    return bytes(digest).ljust(32, b"\0")


def _within(values: Any, sorted_set: Any) -> Any:
    """Which of ``values`` are in ``sorted_set`` (a sorted numpy array), as a bool array."""
    if not len(sorted_set) or not len(values):
        return np.zeros(len(values), dtype=bool)
    where = np.searchsorted(sorted_set, values)
    np.minimum(where, len(sorted_set) - 1, out=where)
    return sorted_set[where] == values  # type: ignore[no-any-return]


def _add(totals: Any, packs: Any, weights: Any) -> None:
    """Add a count (or ``weights``) per pack number into ``totals``, in place."""
    if len(packs):
        totals += np.bincount(packs, weights=weights, minlength=len(totals)).astype(np.int64)

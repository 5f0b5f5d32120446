"""Merged chunk indexes: many packs' indexes in one sorted, binary-searchable file.

In the spirit of git's multi-pack index. A store's ``index/`` holds two kinds
of file under the same ``index/<32 hex>.idx`` names (so every reader and the
server's gateway treat them alike):

- a *journal* file: one pack's JSON index, written by the ingest that wrote
  the pack (the pack's own id is the name);
- a *merged* file (this module): the entries of many packs sorted by digest,
  with a 256-way fanout, read in place (mmap) with a binary search, so opening
  a store costs a few files whatever the number of versions or packs.

A merged file records the index files it replaces (``covers``). Whoever
merges writes the merged file first and only then deletes what it covers, so
at every moment each pack's entries are in some listed file; a reader that
finds a listed file gone lists again (its replacement is there by then).

Layout (little endian)::

    magic "TMIDX001" | packs u32 | entries u32 | covers u32 | filter bits u32
    covers  x 16 bytes      (ids of the index files this one replaces)
    packs   x (16 bytes id, u64 size)
    fanout  256 x u32       (entries whose first digest byte <= i)
    entries x (32 bytes digest, u32 pack, u64 offset, u32 length, u32 raw, u8 codec, 3 pad)
    filter  2**bits bits    (only if bits > 0; see ``_probes``)

The filter (written by ``merge_into``) answers "surely not here" for most chunks
a file does not list without touching its entries: an ingest of new bytes asks
every merged file about every window. Readers that predate it ignore the field
and the bytes after the entries. A filter that lies can only make a chunk look
new (stored again), never make a missing one look stored: a "maybe" is searched.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .fileio import drop_pages

MAGIC = b"TMIDX001"
_HEAD = struct.Struct("<8sIIII")
_PACK = struct.Struct("<16sQ")
_ENTRY = struct.Struct("<32sIQIIB3x")
_FANOUT = struct.Struct("<256I")


#: Lookups let the mapped files' pages go once the process's file-backed resident
#: memory grew this much since they were last let go (``MappedPages``).
MAPPED_BUDGET = 16 << 20
#: ``find_first`` searches mapped files this many keys at a time, checking the budget
#: after each: a key touches up to a dozen pages (filter probes, binary search).
_CHECK_KEYS = 64
#: Entries of one digest ``has`` reads when some packs are skipped: an honest file lists
#: a chunk a few times (writers racing, a repack), a hostile one thousands of times
#: (50,000 in a 2.8 MB file), and ingest asks about every chunk. As many as the chunk
#: index takes from one file for a chunk's candidates (the first and 16 others).
CLAIMS_READ = 17


#: Filter bits per entry (at least; a power of two in all) and probes per digest:
#: about 0.2% of absent digests pass at 16 bits an entry, 0.02% at 32.
_FILTER_BITS_PER_ENTRY = 16
_FILTER_PROBES = 4
#: No filter for files of fewer entries: a search of those costs no more.
_FILTER_MIN_ENTRIES = 4096


def _filter_bits(entries: int) -> int:
    """log2 of the filter's size in bits for ``entries`` entries (0: no filter)."""
    if entries < _FILTER_MIN_ENTRIES:
        return 0
    return min(31, max(10, (entries * _FILTER_BITS_PER_ENTRY - 1).bit_length()))


def _probes(digests: Any, bits: int) -> Any:
    """The filter bits of each digest (an S32 column): four 32-bit words of it, masked.
    BLAKE3 digests are uniform, so their own bytes serve as the hash functions."""
    import numpy as np

    words = np.frombuffer(np.ascontiguousarray(digests).tobytes(), dtype="<u4").reshape(-1, 8)
    return words[:, 2:2 + _FILTER_PROBES] & np.uint32((1 << bits) - 1)


def is_merged(data: bytes | memoryview) -> bool:
    return bytes(data[:8]) == MAGIC


def build(packs: Mapping[str, tuple[int, Iterable[Any]]], covers: Iterable[str]) -> bytes:
    """A merged index of ``packs`` ({pack: (size, [[digest, offset, length, raw, codec]])})."""
    names = sorted(packs)
    number = {name: i for i, name in enumerate(names)}
    rows = []
    for name in names:
        for digest, offset, length, raw, codec in packs[name][1]:
            rows.append((bytes.fromhex(digest), number[name], int(offset), int(length),
                         int(raw), int(codec)))
    rows.sort()
    cover_ids = sorted(set(covers))
    counts = [0] * 256
    for row in rows:
        counts[row[0][0]] += 1
    fanout, total = [], 0
    for count in counts:
        total += count
        fanout.append(total)
    out = bytearray(_HEAD.pack(MAGIC, len(names), len(rows), len(cover_ids), 0))
    for cover in cover_ids:
        out += bytes.fromhex(cover)
    for name in names:
        out += _PACK.pack(bytes.fromhex(name), int(packs[name][0]))
    out += _FANOUT.pack(*fanout)
    for row in rows:
        out += _ENTRY.pack(*row)
    return bytes(out)


def declared_size(head: bytes | bytearray | memoryview) -> int:
    """The size a merged file's first bytes say it has (its filter included); ValueError
    when they are not a merged file's."""
    if len(head) < _HEAD.size:
        raise ValueError("merged index is truncated")
    magic, packs, entries, covers, bits = _HEAD.unpack_from(head, 0)
    if magic != MAGIC:
        raise ValueError("not a merged index")
    end = _HEAD.size + 16 * covers + _PACK.size * packs + _FANOUT.size + _ENTRY.size * entries
    return int(end) + ((1 << int(bits)) // 8 if 10 <= bits <= 31 else 0)


class MergedIndex:
    """A merged index file, read in place."""

    def __init__(self, name: str, data: bytes | bytearray | mmap.mmap) -> None:
        """Checked before anything is read by count: the file may come from a hostile
        store (a header claiming 4 billion covers took a client's memory)."""
        self.name = name
        self._data = data
        if len(data) < _HEAD.size:
            raise ValueError("merged index is truncated")
        magic, self.pack_count, self.entry_count, cover_count, bits = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise ValueError("not a merged index")
        end = (_HEAD.size + 16 * cover_count + _PACK.size * self.pack_count + _FANOUT.size
               + _ENTRY.size * self.entry_count)
        if end > len(data):
            raise ValueError("merged index is truncated")
        #: log2 of the filter's bits (0: none, or one this file does not hold whole).
        self._filter_bits = bits if 10 <= bits <= 31 and end + (1 << bits) // 8 <= len(data) \
            else 0
        at = _HEAD.size
        self.covers = [bytes(data[at + 16 * i:at + 16 * (i + 1)]).hex()
                       for i in range(cover_count)]
        at += 16 * cover_count
        self._packs_at = at
        at += _PACK.size * self.pack_count
        self._fanout = _FANOUT.unpack_from(data, at)
        self._entries_at = at + _FANOUT.size
        if (any(a > b for a, b in itertools.pairwise(self._fanout))
                or self._fanout[-1] != self.entry_count):
            raise ValueError("merged index has a malformed fanout")
        self._pack_names: list[str] | None = None
        #: Mapped from a file (``open``): its pages may be let go and read again.
        #: Never an anonymous mapping, whose pages would come back as zeros.
        self._from_file = False

    @classmethod
    def open(cls, name: str, path: Path) -> MergedIndex:
        from .blobs import open_regular  # not a named pipe: a mapping of one blocks

        with os.fdopen(open_regular(path, f"index/{name}.idx"), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise ValueError("empty merged index")
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            index = cls(name, data)
            index._from_file = True
            return index
        except BaseException:
            data.close()
            raise

    @property
    def from_file(self) -> bool:
        """Whether this is mapped from a file: its pages may be let go and read again."""
        return self._from_file

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    @property
    def pack_names(self) -> list[str]:
        if self._pack_names is None:
            at = self._packs_at
            self._pack_names = [bytes(self._data[at + _PACK.size * i:
                                                 at + _PACK.size * i + 16]).hex()
                                for i in range(self.pack_count)]
        return self._pack_names

    def packs(self) -> dict[str, int]:
        """{pack: size} of every pack this index covers."""
        names = self.pack_names
        return {names[i]: _PACK.unpack_from(self._data, self._packs_at + _PACK.size * i)[1]
                for i in range(self.pack_count)}

    def has(self, key: bytes, skip: set[str] | frozenset[str] = frozenset()) -> bool:
        """Whether an entry for the 32-byte ``key`` names a pack not in ``skip``
        (ingest asks this of every chunk: no entry is decoded)."""
        lo, hi = self._bounds(key)
        if lo >= hi or not skip:
            return lo < hi
        # The first few entries only (a hostile file lists one chunk thousands of times):
        # if all name skipped packs, the chunk looks new and is stored again, no worse.
        return any(pack not in skip
                   for pack, *_ in self.lookup(key.hex(), limit=CLAIMS_READ))

    def let_go(self) -> None:
        """Drop this file's pages from the process (they stay in the page cache): after a
        bulk search, which maps nearly all of a large file (see README), filter too."""
        _drop_pages(self, 0, len(self._data))

    def maybe_many(self, wanted: Any) -> Any:
        """Which of ``wanted`` (an S32 column) this file may list: all, without a filter;
        with one, about 0.2% of those it does not list, and every one it does."""
        import numpy as np

        if not self._filter_bits or not len(wanted):
            return np.ones(len(wanted), dtype=bool)
        at = self._entries_at + _ENTRY.size * self.entry_count
        bits = np.frombuffer(self._data, dtype=np.uint8, count=(1 << self._filter_bits) // 8,
                             offset=at)
        probes = _probes(wanted, self._filter_bits)
        found = (bits[probes >> 3] >> (probes & 7).astype(np.uint8)) & 1
        return found.all(axis=1)  # type: ignore[no-any-return]

    def _column(self) -> Any:
        """The entries' digests as a numpy column, read in place."""
        import numpy as np  # only here: reading a store must not import it

        return np.ndarray((self.entry_count,), dtype="S32", buffer=self._data,
                          offset=self._entries_at, strides=(_ENTRY.size,))

    def entry(self, i: int) -> tuple[str, int, int, int, int]:
        """(pack, offset, length, raw, codec) of entry ``i``; ValueError if it names a pack
        the file does not list."""
        _, pack, offset, length, raw, codec = _ENTRY.unpack_from(
            self._data, self._entries_at + i * _ENTRY.size)
        if pack >= self.pack_count:
            raise ValueError(f"merged index {self.name} names pack number {pack} it lacks")
        return self.pack_names[pack], offset, length, raw, codec

    def entries_at(self, positions: Any) -> list[tuple[str, int, int, int, int] | None]:
        """``entry`` of each of ``positions`` (a numpy array of entry numbers, best in
        file order), read with one numpy gather: a load locates every chunk of a file,
        and a million calls of ``entry`` took 2.7 s. None for an entry naming a pack
        the file does not list (``entry`` would raise)."""
        import numpy as np

        rows = np.ndarray((self.entry_count,), dtype=np.dtype(_ENTRY_FIELDS),
                          buffer=self._data, offset=self._entries_at)[positions]
        names = self.pack_names
        count = self.pack_count
        return [(names[pack], offset, length, raw, codec) if pack < count else None
                for pack, offset, length, raw, codec in zip(
                    rows["pack"].tolist(), rows["offset"].tolist(), rows["length"].tolist(),
                    rows["raw"].tolist(), rows["codec"].tolist(), strict=True)]

    def _bounds(self, key: bytes) -> tuple[int, int]:
        """The entries whose digest is ``key``: [lo, hi).

        Both ends binary searched: a file may list one digest thousands of times (a
        hostile one), and a walk to the last of them cost that many reads per question.
        """
        first = key[0]
        lo = self._fanout[first - 1] if first else 0
        bucket_end = hi = self._fanout[first]
        data, base, size = self._data, self._entries_at, _ENTRY.size
        while lo < hi:
            mid = (lo + hi) // 2
            at = base + mid * size
            if data[at:at + 32] < key:
                lo = mid + 1
            else:
                hi = mid
        end, hi = lo, bucket_end  # the first entry past ``key``, in [lo, bucket_end]
        while end < hi:
            mid = (end + hi) // 2
            at = base + mid * size
            if data[at:at + 32] <= key:
                end = mid + 1
            else:
                hi = mid
        return lo, end

    def lookup(self, digest: str, *, limit: int | None = None,
               ) -> list[tuple[str, int, int, int, int]]:
        """(pack, offset, length, raw, codec) of every entry for ``digest``; with ``limit``,
        of the first ``limit`` entries only (those naming no pack count too, so a hostile
        file's thousands of entries of one digest are never all read)."""
        try:
            key = bytes.fromhex(digest)
        except ValueError:
            return []
        if len(key) != 32:
            return []
        lo, hi = self._bounds(key)
        if limit is not None:
            hi = min(hi, lo + max(0, limit))
        data, base, size = self._data, self._entries_at, _ENTRY.size
        found = []
        for i in range(lo, hi):
            _, pack, offset, length, raw, codec = _ENTRY.unpack_from(data, base + i * size)
            if pack >= self.pack_count:
                continue  # names no pack: claims nothing
            name_at = self._packs_at + _PACK.size * pack
            found.append((bytes(data[name_at:name_at + 16]).hex(), offset, length, raw, codec))
        return found

    def entries(self) -> Iterator[tuple[str, str, int, int, int, int]]:
        """(digest, pack, offset, length, raw, codec) of every entry, in digest order."""
        names = self.pack_names
        for i in range(self.entry_count):
            digest, pack, offset, length, raw, codec = _ENTRY.unpack_from(
                self._data, self._entries_at + i * _ENTRY.size)
            if pack < self.pack_count:  # else names no pack: claims nothing
                yield digest.hex(), names[pack], offset, length, raw, codec


_statm: tuple[int, int] | None = None  # (pid, descriptor): opened once a process


def _file_resident() -> int:
    """Bytes of this process resident and backed by files (statm's third field: the
    RssFile and RssShmem pages); 0 where there is no /proc. Read through a descriptor
    kept open (1.4 us a read, where opening the file each time took 12)."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():  # a forked child reads its own
            _statm = (os.getpid(), -1)  # -1 until opened: no /proc is not asked again
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        if _statm[1] < 0:
            return 0
        return int(os.pread(_statm[1], 256, 0).split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return 0


class MappedPages:
    """Paces letting go of the pages lookups map, by what they cost the process.

    A lookup touches a few pages of a mapped index, and this kernel maps about 64 KB
    around each page touched (fault-around, large folios): 1,000 random reads of a
    cached 200 MB file mapped 54 MB of it. The pages stay in the page cache when
    let go, but while mapped they count in the process's resident memory, and the
    merged files grow 56 bytes a chunk stored: a batch of lookups against a large
    store mapped nearly all of them. ``spend`` lets the files go once the
    process's file-backed resident memory grew by ``MAPPED_BUDGET`` since the last
    time; the pages come back from the page cache, a minor fault each.
    """

    def __init__(self) -> None:
        self._base = _file_resident()

    def spend(self, indexes: Iterable[MergedIndex]) -> None:
        now = _file_resident()
        if now < self._base:
            self._base = now  # let go elsewhere (a merge, a census round)
        elif now - self._base > MAPPED_BUDGET:
            for index in indexes:
                index.let_go()
            self._base = _file_resident()


#: One for the process: what it bounds is the process's memory.
PAGES = MappedPages()


def find_first(indexes: Sequence[MergedIndex], keys: Any) -> tuple[Any, Any]:
    """For each 32-byte key (a list of bytes, or a numpy S32 column), which of ``indexes``
    lists it first and its first entry there, as two numpy arrays (-1 and -1: none
    does). An ingest asks this of every window's chunks, a commit of every chunk of a
    version, a load of every chunk of a file.

    Vectorised, with the keys sorted once: numpy's binary search starts each key
    where the previous one ended, so sorted keys touch a few pages of a large
    index instead of jumping across it (65,536 random keys against 131,072
    entries: 77 ms unsorted, 17 ms sorted, the sort included). A key found is
    not searched for in the indexes after. Against mapped files the keys go
    ``_CHECK_KEYS`` at a time, within ``MAPPED_BUDGET`` (see ``MappedPages``).
    """
    import numpy as np  # only here: reading a store must not import it

    count = len(keys)
    which = np.full(count, -1, dtype=np.int64)
    entry = np.full(count, -1, dtype=np.int64)
    if not count:
        return which, entry
    every = np.asarray(keys, dtype="S32")
    ordered = np.argsort(every, kind="stable")
    mapped = any(index.from_file for index in indexes)
    step = _CHECK_KEYS if mapped else count
    for start in range(0, count, step):
        order = ordered[start:start + step]
        wanted = every[order]
        for number, index in enumerate(indexes):
            if not len(order):
                break
            if not index.entry_count:
                continue
            maybe = index.maybe_many(wanted)
            hit = np.zeros(len(wanted), dtype=bool)
            at = np.zeros(len(wanted), dtype=np.int64)
            if maybe.any():
                column = index._column()
                where = np.searchsorted(column, wanted[maybe])
                np.minimum(where, index.entry_count - 1, out=where)
                at[maybe] = where
                hit[maybe] = column[where] == wanted[maybe]
            if hit.any():
                which[order[hit]] = number
                entry[order[hit]] = at[hit]
                missed = ~hit
                order, wanted = order[missed], wanted[missed]
        if mapped:
            PAGES.spend(indexes)
    return which, entry


#: An entry as numpy sees it (the layout of ``_ENTRY``).
_ENTRY_FIELDS = [("digest", "S32"), ("pack", "<u4"), ("offset", "<u8"), ("length", "<u4"),
                 ("raw", "<u4"), ("codec", "u1"), ("pad", "V3")]


def _numbering(indexes: Sequence[MergedIndex], drop: Iterable[str],
               ) -> tuple[dict[bytes, int], list[Any]]:
    """The packs a merge of ``indexes`` lists ({16-byte id: size}, a pack listed twice
    keeping its first size, those in ``drop`` left out), and for each input the new
    number of each of its pack numbers. Packs are numbered in id order; a dropped one
    gets the number past the last (``gone``), and so does one more slot at the end, for
    a pack number the input does not list (a damaged file): both are then left out."""
    import numpy as np

    dropped = {bytes.fromhex(pack) for pack in drop}
    tables = [[_PACK.unpack_from(index._data, index._packs_at + _PACK.size * i)
               for i in range(index.pack_count)] for index in indexes]  # (name, size) each
    sizes: dict[bytes, int] = {}
    for name, size in itertools.chain.from_iterable(tables):
        if name not in dropped:
            sizes.setdefault(name, size)
    gone = len(sizes)
    number = {name: i for i, name in enumerate(sorted(sizes))}
    return sizes, [np.array([number.get(name, gone) for name, _ in table] + [gone],
                            dtype="<u4") for table in tables]


def _build_order(rows: Any) -> Any:
    """The order ``build`` writes entries in: by digest (the binary search), then where
    each is stored, then the rest, so every writer orders ties alike."""
    import numpy as np

    return np.lexsort((rows["codec"], rows["raw"], rows["length"], rows["offset"],
                       rows["pack"], rows["digest"]))


def _out_of_order(digests: Any, previous: Any) -> bool:
    """Whether ``digests`` (the next entries of a file) are not sorted, or start below
    ``previous`` (the digest before them; None at the file's start)."""
    return bool((previous is not None and len(digests) and digests[0] < previous)
                or (digests[1:] < digests[:-1]).any())


def combine(indexes: Iterable[MergedIndex], covers: Iterable[str],
            drop: Iterable[str] = ()) -> bytearray:
    """One merged index of every entry of ``indexes`` (but those of the packs in
    ``drop``), built in numpy.

    What ``build`` does from Python lists, at 56 bytes an entry instead of some
    300: merging a million entries through lists took more memory than the
    bound a large ingest must stay under. Pack numbers are renumbered into
    the union of the packs (a pack listed twice keeps its first size).
    """
    import numpy as np  # only when merging: reading a store must not import it

    indexes = list(indexes)
    sizes, renumber = _numbering(indexes, drop)
    names = sorted(sizes)
    gone = len(names)  # the number the entries of a dropped pack get, then left out
    dtype = np.dtype(_ENTRY_FIELDS)
    assert dtype.itemsize == _ENTRY.size
    rows = np.concatenate([np.frombuffer(index._data, dtype=dtype, count=index.entry_count,
                                         offset=index._entries_at) for index in indexes]
                          or [np.zeros(0, dtype=dtype)])  # the one copy of the entries
    counts = [index.entry_count for index in indexes]
    # Copied: an input nobody else holds (``_merge`` hands its blocks over) is freed
    # now, not after the output is built beside it.
    del indexes
    start = 0
    for count, numbers in zip(counts, renumber, strict=True):
        part = rows[start:start + count]
        part["pack"] = numbers[np.minimum(part["pack"], len(numbers) - 1)]
        start += count
    if (rows["pack"] == gone).any():
        rows = rows[rows["pack"] != gone]
    # Sorted by digest (the binary search), then where it is stored: as ``build`` orders;
    # taken straight into the output (no sorted copy, no joined copy).
    order = _build_order(rows)
    cover_ids = sorted(set(covers))
    entries_at = (_HEAD.size + 16 * len(cover_ids) + _PACK.size * len(names) + _FANOUT.size)
    count = len(rows)
    out = bytearray(entries_at + _ENTRY.size * count)
    target = np.frombuffer(out, dtype=dtype, count=count, offset=entries_at)
    np.take(rows, order, out=target)
    del rows, order
    fanout = np.cumsum(np.bincount(target.view("u1")[::_ENTRY.size], minlength=256)).tolist()
    del target
    at = 0
    for piece in (_HEAD.pack(MAGIC, len(names), count, len(cover_ids), 0),
                  *(bytes.fromhex(cover) for cover in cover_ids),
                  *(_PACK.pack(name, sizes[name]) for name in names),
                  _FANOUT.pack(*fanout)):
        out[at:at + len(piece)] = piece
        at += len(piece)
    return out


class Unsorted(ValueError):
    """An input of a streaming merge is not in digest order (a damaged file)."""


#: A streaming merge holds about this many entries at a time (3.5 MB), whatever
#: the size of its inputs and output.
MERGE_ROUND = 65536


def damage(index: MergedIndex, *, round_entries: int = MERGE_ROUND) -> list[str]:
    """What is wrong with a merged file's entries, read a round at a time (bounded memory,
    its pages let go as passed): out of digest order (searches miss entries), a pack
    number it does not list, or a filter that says "not here" for an entry it lists."""
    import numpy as np

    dtype = np.dtype(_ENTRY_FIELDS)
    problems: list[str] = []
    previous: Any = None
    hidden = unlisted = 0
    unsorted = False
    for first in range(0, index.entry_count, round_entries):
        count = min(round_entries, index.entry_count - first)
        rows = np.frombuffer(index._data, dtype=dtype, count=count,
                             offset=index._entries_at + first * _ENTRY.size)
        digests = rows["digest"]
        unsorted = unsorted or _out_of_order(digests, previous)
        previous = digests[-1]
        unlisted += int((rows["pack"] >= index.pack_count).sum())
        hidden += int((~index.maybe_many(digests)).sum())
        del rows, digests
        _let_go(index, first, first + count)
    if unsorted:
        problems.append(f"merged index {index.name} is out of digest order "
                        "(lookups miss some of its entries)")
    if unlisted:
        problems.append(f"merged index {index.name}: {unlisted} entries name a pack it lacks")
    if hidden:
        problems.append(f"merged index {index.name}: its filter hides {hidden} of its entries")
    return problems


def merge_into(handle: BinaryIO, indexes: Sequence[MergedIndex], covers: Iterable[str],
               drop: Iterable[str] = (), *, round_entries: int = MERGE_ROUND) -> int:
    """Write one merged index of every entry of ``indexes`` (but those of the packs
    in ``drop``) to ``handle`` (a new, seekable file), and return its entry count.

    The same bytes as ``combine``, in bounded memory: ``combine`` holds every
    entry twice (rows and output), 110 bytes an entry, so a merged file had to
    stay small (262,144 entries), and a large store needed a file, and a search,
    for every 16 GB it held. Here the inputs (sorted by digest) are merged in
    rounds: each round reads the next few thousand entries of every input,
    writes out those below the smallest digest some input may still go past,
    and leaves the rest for the next round. Every entry of a digest is in the
    same round (the cut is strict), so ties keep ``build``'s order. Read pages
    of a mapped input are let go as it is passed, so the inputs' pages do not
    stay counted against the process either.
    """
    import numpy as np  # only when merging: reading a store must not import it

    dtype = np.dtype(_ENTRY_FIELDS)
    sizes, renumber = _numbering(indexes, drop)
    names = sorted(sizes)
    gone = len(names)
    last: list[Any] = [None] * len(indexes)  # each input's last digest merged
    cover_ids = sorted(set(covers))
    start = handle.tell()
    handle.write(_HEAD.pack(MAGIC, 0, 0, 0, 0))  # written again at the end, with the counts
    for cover in cover_ids:
        handle.write(bytes.fromhex(cover))
    for name in names:
        handle.write(_PACK.pack(name, sizes[name]))
    fanout_at = handle.tell()
    handle.write(bytes(_FANOUT.size))
    counts = np.zeros(256, dtype=np.int64)
    # Sized for every input entry (drops are known only at the end): a few bits more.
    bits = _filter_bits(sum(index.entry_count for index in indexes))
    bloom = np.zeros((1 << bits) // 8 if bits else 0, dtype=np.uint8)
    total = 0
    cursor = [0] * len(indexes)
    per_input = max(1, round_entries // max(1, len(indexes)))
    reach = per_input
    while True:
        batches: list[tuple[int, Any]] = []
        bound: Any = None  # the smallest last digest of an input not read to its end
        for i, index in enumerate(indexes):
            left = index.entry_count - cursor[i]
            if left <= 0:
                continue
            n = min(reach, left)
            view = np.frombuffer(index._data, dtype=dtype, count=n,
                                 offset=index._entries_at + cursor[i] * _ENTRY.size)
            batches.append((i, view))
            if n < left and (bound is None or view["digest"][-1] < bound[0]):
                bound = view["digest"][-1:].copy()
        if not batches:
            break
        takes = [len(view) if bound is None else
                 int(np.searchsorted(view["digest"], bound, side="left")[0])
                 for _, view in batches]
        if not any(takes):
            # One digest fills a whole read of some input: read further this round
            # (a few entries share a digest at most, unless an index lies).
            reach *= 2
            continue
        reach = per_input
        parts = []
        for (i, view), take in zip(batches, takes, strict=True):
            part = view[:take].copy()
            digests = part["digest"]
            # The rounds rely on each input being sorted (``combine`` sorted everything
            # at once): a file out of order would leave entries no search finds.
            if take and _out_of_order(digests, last[i]):
                raise Unsorted(f"merged index {indexes[i].name} is not sorted by digest")
            if take:
                last[i] = digests[-1]
            part["pack"] = renumber[i][np.minimum(part["pack"], len(renumber[i]) - 1)]
            parts.append(part[part["pack"] != gone])
            _let_go(indexes[i], cursor[i], cursor[i] + take)
            cursor[i] += take
        rows = np.concatenate(parts)
        del parts, batches
        rows = rows[_build_order(rows)]
        counts += np.bincount(rows.view("u1")[::_ENTRY.size], minlength=256)
        if bits and len(rows):
            probes = _probes(rows["digest"], bits).ravel()
            np.bitwise_or.at(bloom, probes >> 3, np.left_shift(1, probes & 7).astype(np.uint8))
        handle.write(rows.data.cast("B"))
        total += len(rows)
        del rows
    if total < _FILTER_MIN_ENTRIES:
        bits = 0  # most were dropped: not worth one
    while bits > _filter_bits(total):
        # Sized for every input entry, before drops: folded down to the entries kept.
        # A probe is its word's low bits, so bit p of the half-size filter is bit p
        # or bit p + half of this one.
        half = len(bloom) // 2
        bloom = bloom[:half] | bloom[half:]
        bits -= 1
    if bits:
        handle.write(bloom.data)
    end = handle.tell()
    handle.seek(start)
    handle.write(_HEAD.pack(MAGIC, len(names), total, len(cover_ids), bits))
    handle.seek(fanout_at)
    handle.write(_FANOUT.pack(*np.cumsum(counts).tolist()))
    handle.seek(end)
    return total


def _let_go(index: MergedIndex, first: int, end: int) -> None:
    """Drop the pages of entries [first, end) of a mapped ``index`` from this process
    (they stay in the page cache): a merge reads each once."""
    _drop_pages(index, index._entries_at + first * _ENTRY.size,
                index._entries_at + end * _ENTRY.size)


def _drop_pages(index: MergedIndex, start: int, end: int) -> None:
    """Drop the whole pages in bytes [start, end) of ``index`` from this process, if it is
    mapped from a file (an anonymous mapping's pages would come back as zeros)."""
    data = index._data
    if index._from_file and isinstance(data, mmap.mmap):
        drop_pages(data, start, end)

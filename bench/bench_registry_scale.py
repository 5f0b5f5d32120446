"""Registry-size benchmark: logging and loading a tiny model must not slow down as versions pile up.

    .venv/bin/python bench/bench_registry_scale.py [--sizes 1000,10000] [--huge] [--json]
    .venv/bin/python bench/bench_registry_scale.py --registry [--sizes 100,1000,10000]
    .venv/bin/python bench/bench_registry_scale.py --lookups 2097152,16777216

For each size N, a store is filled with N versions of a tiny model (a few KB of
new bytes each: one pack and one index entry per version, as `tether.log_model`
leaves them), then timed: a fresh process's view of the store (``open_store``,
as every ``tether.log_model`` call opens its registry) logging one more tiny
version, and loading one. The same is run with merging turned off (one index
file per pack, as before the merged index) for comparison. ``--huge`` adds
100,000 versions.

``--registry`` times the whole of ``Registry.log_model`` and ``load`` instead (an
embedded registry: SQLite plus a local store, one model with N versions, logged
for real; run outside a git work tree, where each log also runs ``git status``).

Goal: flat, and under 15 ms per log on the embedded (local) store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tether._store import chunk_index, open_store

GOAL_MS = 15.0


def _tiny(folder: Path, i: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(os.urandom(3000) + i.to_bytes(8, "big"))


def _fill(url: str, src: Path, count: int) -> None:
    """N real ingests (fsync skipped while filling only: the fill is not what is timed)."""
    store = open_store(url)
    real_fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        for i in range(count):
            (src / "model.bin").write_bytes(os.urandom(3000) + i.to_bytes(8, "big"))
            store.ingest(src, ["model.bin"])
    finally:
        os.fsync = real_fsync
    os.sync()


def _synced_write_ms(tmp: Path, rounds: int) -> float:
    """The anchor: write + fsync + rename + fsync the folder of a 3 KB file, x3 (pack,
    index, pin), which any durable log of a version needs at least."""
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        for kind in ("pack", "index", "pin"):
            path = tmp / f"anchor-{kind}-{r}"
            with open(path.with_suffix(".tmp"), "wb") as handle:
                handle.write(os.urandom(3000))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(path.with_suffix(".tmp"), path)
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _measure(url: str, tmp: Path, rounds: int) -> dict[str, float]:
    logs, loads, files_read = [], [], []
    for r in range(rounds):
        folder = tmp / f"new{r}"
        _tiny(folder, 10**9 + r)
        start = time.perf_counter()
        store = open_store(url)  # what each tether.log_model call does
        report = store.ingest(folder, ["model.bin"])
        logs.append((time.perf_counter() - start) * 1000)
        files_read.append(len(store.index.journal) + len(store.index.segments))
        start = time.perf_counter()
        fresh = open_store(url)
        fresh.materialize(report.files, tmp / f"out{r}", label="tiny@new")
        loads.append((time.perf_counter() - start) * 1000)
    return {"log_ms": statistics.median(logs), "load_ms": statistics.median(loads),
            "fsync_ms": _synced_write_ms(tmp, rounds),
            "index_files_read": statistics.median(files_read)}


def run(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for merged in (True, False):
        saved = chunk_index._JOURNAL_MAX
        if not merged:
            chunk_index._JOURNAL_MAX = 1 << 40  # never merge: one index file per pack
        try:
            for size in sizes:
                with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
                    tmp = Path(folder)
                    url = f"file://{tmp / 'store'}"
                    src = tmp / "src"
                    src.mkdir()
                    start = time.perf_counter()
                    _fill(url, src, size)
                    fill_s = time.perf_counter() - start
                    row = {"versions": size, "merged_index": merged, "fill_s": fill_s,
                           **_measure(url, tmp, rounds),
                           "index_files": len(list((tmp / "store" / "index").iterdir())),
                           "packs": len(list((tmp / "store" / "packs").iterdir()))}
                    rows.append(row)
                    print(_line(row), flush=True)
        finally:
            chunk_index._JOURNAL_MAX = saved
    return rows


def _line(row: dict[str, Any]) -> str:
    kind = "merged index " if row["merged_index"] else "per-pack only"
    return (f"{kind} {row['versions']:>7} versions: log {row['log_ms']:6.1f} ms "
            f"(goal < {GOAL_MS:.0f}, flat), load {row['load_ms']:6.1f} ms, "
            f"{row['index_files_read']:.0f} index files read ({row['index_files']} listed), "
            f"{row['packs']} packs; synced write of one tiny version {row['fsync_ms']:.1f} ms")


def run_registry(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """``Registry.log_model``/``load`` of a tiny file, in a registry of N versions of it."""
    from tether._registry.registry import Registry

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-scale-reg-") as folder:
            tmp = Path(folder)
            os.chdir(tmp)  # outside any git work tree
            reg = Registry.init(tmp / ".tether", actor="bench")
            model = tmp / "model.bin"
            real_fsync = os.fsync
            os.fsync = lambda fd: None  # the fill is not what is timed
            start = time.perf_counter()
            try:
                for i in range(size):
                    model.write_bytes(os.urandom(3000) + i.to_bytes(8, "big"))
                    reg.log_model(model, "tiny", progress=False)
            finally:
                os.fsync = real_fsync
            os.sync()
            fill_s = time.perf_counter() - start
            logs, loads = [], []
            for r in range(rounds):
                model.write_bytes(os.urandom(3000) + (10**9 + r).to_bytes(8, "big"))
                start = time.perf_counter()
                version = reg.log_model(model, "tiny", progress=False)
                logs.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                reg.load(version.ref, progress=False)
                loads.append((time.perf_counter() - start) * 1000)
            reg.close()
            row = {"versions": size, "fill_s": fill_s, "log_ms": statistics.median(logs),
                   "log_p90_ms": sorted(logs)[int(len(logs) * 0.9)],
                   "load_ms": statistics.median(loads), "fsync_ms": _synced_write_ms(tmp, rounds)}
            rows.append(row)
            print(f"registry {size:>7} versions: log_model {row['log_ms']:6.1f} ms "
                  f"(p90 {row['log_p90_ms']:.1f}; goal < {GOAL_MS:.0f}, flat), "
                  f"load {row['load_ms']:6.1f} ms; synced write of one tiny version "
                  f"{row['fsync_ms']:.1f} ms (filled in {fill_s:.0f} s)", flush=True)
    return rows


def _write_merged(path: Path, digests: Any, *, with_filter: bool) -> None:
    """A merged index file (midx layout) listing sorted ``digests`` in one pack, written
    as a merge writes it (with its filter), or without the filter (as before it)."""
    import numpy as np

    from tether._store import midx

    rows = np.zeros(len(digests), dtype=np.dtype(midx._ENTRY_FIELDS))
    rows["digest"] = np.sort(digests)
    rows["offset"] = np.arange(len(digests)) * 65536
    rows["length"] = rows["raw"] = 65536
    fanout = np.cumsum(np.bincount(rows.view("u1")[::midx._ENTRY.size], minlength=256))
    data = b"".join((midx._HEAD.pack(midx.MAGIC, 1, len(rows), 0, 0),
                     midx._PACK.pack(os.urandom(16), len(rows) * 65536),
                     midx._FANOUT.pack(*fanout.tolist()), rows.tobytes()))
    with open(path, "wb") as out:
        if with_filter:
            midx.merge_into(out, [midx.MergedIndex("bench", data)], [])
        else:
            out.write(data)


def _rss_file_mb() -> float:
    """Pages of mapped files this process holds (the index files a lookup touched)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_lookups(totals: list[int], rounds: int) -> list[dict[str, Any]]:
    """What an ingest pays per 8 MB window (128 chunks at 64 KiB) to ask whether its
    chunks are stored, in a store of N chunks: in merged files of at most 262,144
    entries without filters (before merges streamed), of at most 2,097,152 without
    and with (now) their filters; for new chunks (every file is asked) and stored
    ones; beside BLAKE3 of the 8 MB, which the ingest does anyway (the anchor, same
    run)."""
    import blake3
    import numpy as np

    window = os.urandom(8 << 20)
    start = time.perf_counter()
    for _ in range(20):
        blake3.blake3(window).digest()
    hash_ms = (time.perf_counter() - start) / 20 * 1000
    rows = []
    layouts = ((262_144, False, "before: capped, no filter"), (2_097_152, False, "no filter"),
               (2_097_152, True, "now"))
    for total in totals:
        digests = np.frombuffer(os.urandom(32 * total), dtype="S32")
        for cap, with_filter, label in layouts:
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
                folder = Path(tmp) / "index"
                folder.mkdir()
                for first in range(0, total, cap):
                    _write_merged(folder / f"{os.urandom(16).hex()}.idx",
                                  digests[first:first + cap], with_filter=with_filter)
                store = open_store(f"file://{tmp}")
                store.refresh()
                timings = {}
                for kind in ("new", "stored"):
                    times = []
                    for round_ in range(rounds + rounds // 4):  # the first quarter warms up
                        if round_ == rounds // 4:
                            times = []
                        if kind == "new":
                            keys = [os.urandom(32).hex() for _ in range(128)]
                        else:
                            picked = np.random.randint(0, total, 128)
                            keys = [bytes(digests[i]).ljust(32, b"\0").hex() for i in picked]
                        begin = time.perf_counter()
                        known = store.index.known_all(keys)
                        times.append(time.perf_counter() - begin)
                        assert all(known) == (kind == "stored"), kind
                    timings[kind] = statistics.median(times) * 1000
                row = {"chunks": total, "cap": cap, "filter": with_filter, "layout": label,
                       "files": len(store.index.segments),
                       "new_ms": timings["new"], "stored_ms": timings["stored"],
                       "blake3_8mb_ms": hash_ms, "index_mb": sum(
                           p.stat().st_size for p in folder.iterdir()) / (1 << 20),
                       "mapped_mb": _rss_file_mb()}
                rows.append(row)
                print(f"{total:>10,} chunks in {row['files']:>3} files ({label}): "
                      f"new {row['new_ms']:.3f} ms, stored {row['stored_ms']:.3f} ms per "
                      f"128-chunk window; BLAKE3 of the window {hash_ms:.2f} ms; "
                      f"index {row['index_mb']:.0f} MB, {row['mapped_mb']:.0f} MB of it mapped "
                      f"(RssFile)", flush=True)
                del store
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--huge", action="store_true", help="add 100,000 versions")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--registry", action="store_true",
                        help="time Registry.log_model/load end to end instead of the store")
    parser.add_argument("--lookups", default="",
                        help="instead: an ingest's whether-stored question per 8 MB window "
                             "in stores of these many chunks (e.g. 2097152,16777216)")
    args = parser.parse_args()
    if args.lookups:
        rows = run_lookups([int(n) for n in args.lookups.split(",") if n], args.rounds * 20)
        if args.json:
            print(json.dumps(rows, indent=2))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.huge:
        sizes.append(100_000)
    where = "an embedded registry" if args.registry else "a local store"
    print(f"tiny model (3 KB) log/load on {where}, {os.cpu_count()} CPUs, "
          f"median of {args.rounds}")
    rows = run_registry(sizes, args.rounds) if args.registry else run(sizes, args.rounds)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

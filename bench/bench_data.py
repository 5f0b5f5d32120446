"""Data-versioning benchmark: a CSV grown by appending rows costs about the new rows.

    .venv/bin/python bench/bench_data.py [--size-mb 100] [--gb] [--steps 10] [--grow 0.02] [--json]

Workload: a CSV of random rows (id, two floats, an int, a category, a
timestamp; fixed seed) of ``--size-mb`` (100 MB by default, ``--gb`` for
1 GB), added as dataset version 1; then ``--steps`` times 2% more rows are
appended to the file and the file is added again (a new version each time).

Prints per step: the bytes appended, the raw bytes of the chunks the new
version added (the appended bytes plus the re-cut last chunk), the bytes the
store grew by (packs, zstd where it pays), its ratio to the appended bytes, and
the add time; then totals: the
bytes of all versions, the floor (the first file plus every appended byte),
what the store holds, and the stored/floor ratio (goal: within 10% of the new
bytes; a store that keeps each changed file whole, as DVC does, holds the sum
of all versions). Then `tether data diff` of the last two versions (rows
counted from the changed chunks only), and streaming reads through
``tether.open_dataset`` against reading the plain file (both from a warm
page cache).

``--dvc`` compares with DVC 3 on the same data and machine instead. The bench
makes its own venv with DVC (pinned, ``DVC_VERSION``) in ``bench/out/dvc-venv``
and runs two workloads, each step once through Tether and once through DVC:

- the CSV above (``--size-mb``/``--gb``), grown by ``--grow`` rows ``--steps`` times;
- a folder of ``--files`` small files (1-8 KiB of text), ``--change`` of them
  rewritten each step.

Tether: ``tether data track`` (add a version, write the pointer) into an
embedded registry; checkout is ``tether data checkout`` of the first and the
last version's pointer. DVC: ``dvc add`` (cache: ``.dvc/cache``, the default
link type) and ``dvc push`` to a local remote; checkout is ``dvc checkout`` of
the first and the last ``.dvc`` file. Stored bytes: Tether's store against
DVC's cache and its remote (each holds every version). Then streaming reads of
the CSV's last version through ``tether.open_dataset`` against a plain read of
the file. Figures go to stdout and ``bench/out/bench_data_dvc.json``.

    .venv/bin/python bench/bench_data.py --dvc [--gb] [--files 10000] [--change 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tether

MB = 1 << 20
#: The DVC release the comparison installs (DVC 3).
DVC_VERSION = "3.67.1"
OUT = Path(__file__).resolve().parent / "out"


def rows(start: int, count: int, rng: random.Random) -> bytes:
    cats = ["alpha", "beta", "gamma", "delta", "epsilon"]
    out = []
    for i in range(start, start + count):
        out.append(
            f"{i},{rng.random():.8f},{rng.gauss(0, 1):.6f},{rng.randint(0, 10_000)},"
            f"{rng.choice(cats)},2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z\n"
        )
    return "".join(out).encode()


def write_csv(path: Path, size: int, rng: random.Random) -> int:
    """Write about ``size`` bytes of CSV; returns the number of rows."""
    header = b"id,x,z,count,category,ts\n"
    with path.open("wb") as handle:
        handle.write(header)
        written, n = len(header), 0
        while written < size:
            block = rows(n, 20_000, rng)
            handle.write(block)
            written += len(block)
            n += 20_000
    return n


def stored(reg: Any) -> int:
    return int(reg.store_stats().stored_bytes)


def read_throughput(reg: Any, ref: str, name: str, path: Path) -> dict[str, float]:
    size = path.stat().st_size
    path.read_bytes()  # warm the page cache for both readers
    start = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(MB):
            pass
    plain = size / (time.perf_counter() - start) / MB
    start = time.perf_counter()
    with reg.open_dataset(ref, name) as handle:
        while handle.read(MB):
            pass
    streamed = size / (time.perf_counter() - start) / MB
    start = time.perf_counter()
    with reg.open_dataset(ref, name) as handle:
        handle.seek(size // 2)
        handle.read(4096)
        fetched = handle.fetched_bytes
    seek_ms = (time.perf_counter() - start) * 1000
    return {"plain_mb_s": plain, "open_dataset_mb_s": streamed,
            "seek_middle_read_4k_ms": seek_ms, "seek_middle_fetched_bytes": fetched}


# -- against DVC 3 ------------------------------------------------------------------------


def ensure_dvc() -> Path:
    """``dvc`` of a venv in bench/out with DVC_VERSION installed (made on first use)."""
    venv = OUT / "dvc-venv"
    exe = venv / "bin" / "dvc"
    if exe.exists():
        found = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                               env=dvc_env(), check=False).stdout.strip()
        if found == DVC_VERSION:
            return exe
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"installing dvc=={DVC_VERSION} into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"dvc=={DVC_VERSION}"],
                   check=True)
    return exe


def dvc_env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(OUT / "dvc-site")}


def dvc(exe: Path, cwd: Path, *args: str) -> float:
    """Run one dvc command in ``cwd``; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          env=dvc_env(), check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {done.stderr or done.stdout}")
    return seconds


def tree_bytes(path: Path) -> int:
    """Bytes of the file ``path``, or of every file under it (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def digest_tree(path: Path) -> str:
    """One BLAKE3 over every file's path and bytes (to check a checkout wrote the version)."""
    import blake3

    hasher = blake3.blake3()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for item in files:
        hasher.update(item.name.encode() if item == path else
                      item.relative_to(path).as_posix().encode())
        hasher.update(item.read_bytes())
    return hasher.hexdigest()


class Sides:
    """One workspace per tool over the same data: Tether's registry, DVC's project."""

    def __init__(self, root: Path, exe: Path, name: str) -> None:
        from tether._registry import datasets_io

        self.io = datasets_io
        self.exe = exe
        self.name = name
        self.reg = tether.init(root / "tether" / ".tether", actor="bench@tether")
        self.t_ws = root / "tether" / "ws"
        self.d_ws = root / "dvc" / "ws"
        self.remote = root / "dvc" / "remote"
        for folder in (self.t_ws, self.d_ws, self.remote):
            folder.mkdir(parents=True)
        dvc(exe, self.d_ws, "init", "--no-scm", "-q")
        dvc(exe, self.d_ws, "config", "core.analytics", "false")
        dvc(exe, self.d_ws, "remote", "add", "-d", "local", str(self.remote))

    def roots(self) -> list[Path]:
        return [self.t_ws / self.name, self.d_ws / self.name]

    def put(self, source: Path) -> None:
        """The workspace copies of ``source`` (the same bytes for both tools)."""
        for ws in (self.t_ws, self.d_ws):
            target = ws / self.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)

    def add(self) -> dict[str, float]:
        start = time.perf_counter()
        self.io.track(self.reg, self.t_ws / self.name, name="data")
        tether_add = time.perf_counter() - start
        dvc_add = dvc(self.exe, self.d_ws, "add", "-q", self.name)
        dvc_push = dvc(self.exe, self.d_ws, "push", "-q")
        return {"tether_add": tether_add, "dvc_add": dvc_add, "dvc_push": dvc_push}

    def pointers(self) -> tuple[str, str]:
        return ((self.t_ws / f"{self.name}.tether").read_text(),
                (self.d_ws / f"{self.name}.dvc").read_text())

    def checkout(self, pointers: tuple[str, str], expect: str) -> dict[str, float]:
        """Both workspaces switched to the version ``pointers`` name (like a git checkout)."""
        (self.t_ws / f"{self.name}.tether").write_text(pointers[0])
        (self.d_ws / f"{self.name}.dvc").write_text(pointers[1])
        start = time.perf_counter()
        self.io.checkout(self.reg, self.t_ws / self.name)
        tether_seconds = time.perf_counter() - start
        dvc_seconds = dvc(self.exe, self.d_ws, "checkout", "-q", "--force", f"{self.name}.dvc")
        for ws in (self.t_ws, self.d_ws):
            assert digest_tree(ws / self.name) == expect, f"{ws} holds other bytes"
        return {"tether_checkout": tether_seconds, "dvc_checkout": dvc_seconds}

    def stored(self) -> dict[str, int]:
        return {"tether_store": stored(self.reg),
                "dvc_cache": tree_bytes(self.d_ws / ".dvc" / "cache"),
                "dvc_remote": tree_bytes(self.remote)}


def run_versions(
    sides: Sides, source: Path, steps: int, change: Any
) -> dict[str, Any]:
    """Version 1 of ``source``, then ``steps`` changes.

    ``change(roots)`` makes the same change in the source and both workspaces
    and returns the new bytes.
    """
    sides.put(source)
    first = {"new_bytes": tree_bytes(source), **sides.add()}
    first_stored = sides.stored()
    first_pointers, first_digest = sides.pointers(), digest_tree(source)
    rows_: list[dict[str, Any]] = []
    floor = first["new_bytes"]
    for _ in range(steps):
        new_bytes = change([source, *sides.roots()])
        floor += new_bytes
        rows_.append({"new_bytes": new_bytes, "version_bytes": tree_bytes(source),
                      **sides.add(), **sides.stored()})
    last_pointers, last_digest = sides.pointers(), digest_tree(source)
    to_first = sides.checkout(first_pointers, first_digest)
    to_last = sides.checkout(last_pointers, last_digest)
    return {"first": first, "first_stored": first_stored, "steps": rows_, "floor_bytes": floor,
            **sides.stored(),
            "checkout_first": to_first, "checkout_last": to_last}


def grow_csv(paths: list[Path], count: list[int], grow: float, rng: random.Random) -> int:
    new_rows = max(1, int(count[0] * grow))
    block = rows(count[0], new_rows, rng)
    count[0] += new_rows
    for path in paths:
        with path.open("ab") as handle:
            handle.write(block)
    return len(block)


def small_text(rng: random.Random) -> bytes:
    words = ["alpha", "beta", "gamma", "delta", "label", "value", "0.5", "1", "true", "null"]
    size = rng.randint(1024, 8192)
    out = []
    while sum(map(len, out)) < size:
        out.append(" ".join(rng.choice(words) for _ in range(12)) + f" {rng.random():.9f}\n")
    return "".join(out).encode()[:size]


def make_folder(root: Path, files: int, rng: random.Random) -> None:
    for i in range(files):
        target = root / f"shard-{i % 100:02d}" / f"item-{i:05d}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(small_text(rng))


def change_folder(roots: list[Path], fraction: float, rng: random.Random) -> int:
    every = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*.txt"))
    chosen = rng.sample(every, max(1, int(len(every) * fraction)))
    written = 0
    for rel in chosen:
        data = small_text(rng)
        for root in roots:
            (root / rel).write_bytes(data)
        written += len(data)
    return written


def dvc_main(args: argparse.Namespace, size: int) -> None:
    exe = ensure_dvc()
    rng = random.Random(0)
    startup = min(dvc(exe, OUT, "--version") for _ in range(3))
    result: dict[str, Any] = {"dvc_version": DVC_VERSION, "csv_bytes": size,
                              "files": args.files, "change": args.change, "steps": args.steps,
                              "dvc_startup_seconds": startup}
    with tempfile.TemporaryDirectory(prefix="tether-bench-dvc-", dir=args.workdir) as tmp:
        root = Path(tmp)
        source = root / "source-csv" / "events.csv"
        source.parent.mkdir()
        count = [write_csv(source, size, rng)]
        sides = Sides(root / "csv", exe, "events.csv")
        result["csv"] = run_versions(
            sides, source, args.steps, lambda p: grow_csv(p, count, args.grow, rng)
        )
        csv = sides.t_ws / "events.csv"
        result["reads"] = read_throughput(sides.reg, "data@latest", "events.csv", csv)
        sides.reg.close()

        folder = root / "source-folder" / "items"
        folder.mkdir(parents=True)
        make_folder(folder, args.files, rng)
        sides = Sides(root / "folder", exe, "items")
        result["folder"] = run_versions(
            sides, folder, args.steps, lambda p: change_folder(p, args.change, rng)
        )
        sides.reg.close()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_data_dvc.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_dvc(result)


def print_dvc(result: dict[str, Any]) -> None:
    print(f"Tether vs DVC {result['dvc_version']}, {result['steps']} new versions each")
    for key, title in (("csv", f"CSV of {result['csv_bytes'] / MB:.0f} MB, +2% rows per version"),
                       ("folder", f"{result['files']:,} small files, "
                                  f"{result['change']:.0%} rewritten per version")):
        r = result[key]
        steps = r["steps"]
        appended = r["floor_bytes"] - r["first"]["new_bytes"]
        print(f"\n{title}: first version {r['first']['new_bytes'] / MB:.1f} MB, then "
              f"{appended / MB:.1f} MB of new bytes; all versions {_all_versions(r) / MB:.0f} MB")
        print(f"  {'':28} {'Tether':>12} {'DVC cache':>12} {'DVC remote':>12}")
        print(f"  {'stored, all versions':28} {r['tether_store'] / MB:>9.1f} MB "
              f"{r['dvc_cache'] / MB:>9.1f} MB {r['dvc_remote'] / MB:>9.1f} MB")
        growth = {k: r[k] - _first_store(r, k) for k in ("tether_store", "dvc_cache", "dvc_remote")}
        print(f"  {'stored for the new bytes':28} {growth['tether_store'] / MB:>9.1f} MB "
              f"{growth['dvc_cache'] / MB:>9.1f} MB {growth['dvc_remote'] / MB:>9.1f} MB"
              f"   (new bytes {appended / MB:.1f} MB: Tether "
              f"{growth['tether_store'] / appended:.2f} x, "
              f"DVC {growth['dvc_cache'] / appended:.2f} x)")
        t_add = [s["tether_add"] for s in steps]
        d_add = [s["dvc_add"] for s in steps]
        d_push = [s["dvc_push"] for s in steps]
        first = r["first"]
        print(f"  {'first add':28} {first['tether_add']:>10.2f} s {first['dvc_add']:>10.2f} s"
              f" (+ push {first['dvc_push']:.2f} s)")
        print(f"  {'add per new version (median)':28} {_median(t_add):>10.2f} s "
              f"{_median(d_add):>10.2f} s (+ push {_median(d_push):.2f} s)")
        print(f"  {'checkout first version':28} {r['checkout_first']['tether_checkout']:>10.2f} s "
              f"{r['checkout_first']['dvc_checkout']:>10.2f} s")
        print(f"  {'checkout last version':28} {r['checkout_last']['tether_checkout']:>10.2f} s "
              f"{r['checkout_last']['dvc_checkout']:>10.2f} s")
    print(f"\n(each dvc command starts a Python process: `dvc --version` takes "
          f"{result['dvc_startup_seconds']:.2f} s here)")
    reads = result["reads"]
    print(f"streaming read of the last CSV version: tether.open_dataset "
          f"{reads['open_dataset_mb_s']:.0f} MB/s, plain file read {reads['plain_mb_s']:.0f} MB/s"
          f" (page cache); seek to the middle + 4 KiB: {reads['seek_middle_read_4k_ms']:.1f} ms, "
          f"{reads['seek_middle_fetched_bytes'] / 1024:.0f} KiB fetched")


def _first_store(r: dict[str, Any], key: str) -> int:
    """What a store held after version 1."""
    return int(r["first_stored"][key])


def _all_versions(r: dict[str, Any]) -> int:
    return int(r["first"]["new_bytes"] + sum(s.get("version_bytes", 0) for s in r["steps"]))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--gb", action="store_true", help="a 1 GB CSV (same as --size-mb 1024)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--grow", type=float, default=0.02, help="rows appended per step")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dvc", action="store_true", help="compare with DVC 3 (see above)")
    parser.add_argument("--files", type=int, default=10_000, help="--dvc: small files")
    parser.add_argument("--change", type=float, default=0.01,
                        help="--dvc: fraction of the small files rewritten per version")
    parser.add_argument("--workdir", default=None, help="--dvc: where the workspaces go")
    args = parser.parse_args()
    size = (1024 if args.gb else args.size_mb) * MB
    if args.dvc:
        dvc_main(args, size)
        return
    rng = random.Random(0)

    with tempfile.TemporaryDirectory(prefix="tether-bench-data-") as tmp:
        root = Path(tmp)
        reg = tether.init(root / ".tether", actor="bench@tether")
        csv = root / "events.csv"
        count = write_csv(csv, size, rng)
        start = time.perf_counter()
        reg.add_dataset(csv, "events")
        first_add = time.perf_counter() - start
        first_size = csv.stat().st_size
        steps: list[dict[str, Any]] = []
        total_logical = first_size
        floor = first_size
        before = stored(reg)
        first_stored = before
        previous = reg.get_dataset("events@1")
        for _ in range(args.steps):
            new_rows = max(1, int(count * args.grow))
            block = rows(count, new_rows, rng)
            count += new_rows
            with csv.open("ab") as handle:
                handle.write(block)
            start = time.perf_counter()
            version = reg.add_dataset(csv, "events")
            seconds = time.perf_counter() - start
            after = stored(reg)
            known = {c.digest for f in previous.files for c in f.chunks}
            raw_new = sum(c.size for f in version.files for c in f.chunks if c.digest not in known)
            previous = version
            steps.append({
                "version": version.semver,
                "appended_bytes": len(block),
                "new_chunk_bytes": raw_new,
                "stored_growth": after - before,
                "ratio": (after - before) / len(block),
                "add_seconds": seconds,
                "file_bytes": csv.stat().st_size,
            })
            before = after
            total_logical += csv.stat().st_size
            floor += len(block)
        total_stored = stored(reg)
        start = time.perf_counter()
        diff = reg.diff_datasets(f"events@{args.steps}", f"events@{args.steps + 1}")
        diff_seconds = time.perf_counter() - start
        table = diff["changed"][0]["table"]
        reads = read_throughput(reg, "events@latest", "events.csv", csv)
        reg.close()

    result = {
        "file_bytes_first": first_size,
        "first_add_seconds": first_add,
        "first_stored": first_stored,
        "steps": steps,
        "all_versions_bytes": total_logical,
        "floor_bytes": floor,
        "stored_bytes": total_stored,
        "stored_over_floor": total_stored / floor,
        "appended_total": floor - first_size,
        "stored_growth_total": total_stored - first_stored,
        "growth_over_appended": (total_stored - first_stored) / (floor - first_size),
        "new_chunk_bytes_total": sum(s["new_chunk_bytes"] for s in steps),
        "diff": {"seconds": diff_seconds, "rows_added": table.get("rows_added"),
                 "rows_removed": table.get("rows_removed"),
                 "bytes_read": table.get("bytes_read")},
        "reads": reads,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"first version: {first_size / MB:.1f} MB CSV, stored {first_stored / MB:.1f} MB "
          f"in {first_add:.2f} s ({first_size / MB / first_add:.0f} MB/s)")
    print(f"{'version':>8} {'appended':>11} {'new chunks':>11} {'store grew':>11} "
          f"{'ratio':>6} {'add':>7}")
    for s in steps:
        print(f"{s['version']:>8} {s['appended_bytes'] / MB:>8.2f} MB "
              f"{s['new_chunk_bytes'] / MB:>8.2f} MB {s['stored_growth'] / MB:>8.2f} MB "
              f"{s['ratio']:>6.2f} {s['add_seconds']:>6.2f}s")
    print(f"all {args.steps + 1} versions: {total_logical / MB:.0f} MB of files; "
          f"new bytes (floor) {floor / MB:.1f} MB; store holds {total_stored / MB:.1f} MB "
          f"({total_stored / floor:.3f} x floor)")
    print(f"appended {result['appended_total'] / MB:.1f} MB over {args.steps} steps; new chunks "
          f"(before compression) {result['new_chunk_bytes_total'] / MB:.1f} MB "
          f"({result['new_chunk_bytes_total'] / result['appended_total']:.3f} x); "
          f"the store grew {result['stored_growth_total'] / MB:.1f} MB "
          f"({result['growth_over_appended']:.3f} x)")
    print(f"diff of the last two versions: +{table.get('rows_added')} / "
          f"-{table.get('rows_removed')} rows, read {table.get('bytes_read', 0) / MB:.2f} MB, "
          f"{diff_seconds:.2f} s")
    print(f"streaming read: open_dataset {reads['open_dataset_mb_s']:.0f} MB/s, plain file "
          f"{reads['plain_mb_s']:.0f} MB/s; seek to the middle + 4 KiB read "
          f"{reads['seek_middle_read_4k_ms']:.1f} ms, fetched "
          f"{reads['seek_middle_fetched_bytes'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

"""Loading a ``files`` version again from its cached folder: sealed against hashed.

    .venv/bin/python bench/bench_files_cache.py [--size-mb 1024] [--rounds 5] [--json]

Every load of a ``files`` version checks its cached folder against the manifest.
Without a seal (``_registry/cache_seal.py``) that hashed every byte each time; with
it, an unchanged file's size, times and inode are compared instead. Workload: a
folder of one random file of ``--size-mb`` and a small script, logged once, loaded
once (the copy is made), then loaded ``--rounds`` times each way, alternating: the
anchor removes the seal before each load (what every load did before), the other
keeps it. Prints the median seconds per load of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import tether
from tether._registry.cache_seal import SETTLE_NS, seal_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TETHER_BENCH_DIR")) as tmp:
        root = Path(tmp)
        folder = root / "tool"
        folder.mkdir()
        (folder / "run.py").write_text("X = 1\n")
        with (folder / "weights.bin").open("wb") as handle:
            for _ in range(args.size_mb):
                handle.write(os.urandom(1 << 20))
        registry = tether.init(root / "reg" / ".tether")
        version = registry.log_model(folder, "tool", progress=False)
        cached = Path(registry.load(version.ref, progress=False))
        time.sleep(SETTLE_NS / 1e9 + 0.1)  # change times older than the seal's settling
        registry.load(version.ref, progress=False)  # checked whole once more: sealed now
        hashed: list[float] = []
        sealed: list[float] = []
        for _ in range(args.rounds):
            seal = seal_path(cached).read_bytes()
            seal_path(cached).unlink()
            start = time.perf_counter()
            registry.load(version.ref, progress=False)
            hashed.append(time.perf_counter() - start)
            seal_path(cached).write_bytes(seal)  # the one made before, settled
            start = time.perf_counter()
            registry.load(version.ref, progress=False)
            sealed.append(time.perf_counter() - start)
        registry.close()
    result = {"size_mb": args.size_mb, "rounds": args.rounds,
              "hashed_s": statistics.median(hashed), "sealed_s": statistics.median(sealed)}
    result["speedup"] = result["hashed_s"] / result["sealed_s"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"load of a cached {args.size_mb} MB files version, median of {args.rounds}: "
          f"hashing every byte (anchor) {result['hashed_s'] * 1000:.1f} ms, sealed "
          f"{result['sealed_s'] * 1000:.1f} ms ({result['speedup']:.0f}x)")


if __name__ == "__main__":
    main()

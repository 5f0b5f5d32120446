"""Logging and loading beside a thread that runs Python: what the GIL costs them.

    .venv/bin/python bench/bench_busy.py [--size-mb 512] [--rounds 2] [--json]

A program that logs a checkpoint from a background thread while its training loop
runs Python, or a model server loading a new version while its event loop
answers requests, shares the interpreter with that thread. Each step here runs in
a fresh process, alone and then beside a thread running ``sum(range(1000))`` flat
out, interleaved, the median of ``--rounds``: log v1 (all bytes new), log v2 (5%
rewritten in 1 MB pieces), load v1 (verified, into an empty folder). Incompressible
bytes, a local store.

The busy thread takes one of the two cores, so about twice the time alone is what
sharing the machine costs by itself. What goes past that is the GIL: every time a
Tether thread gives the GIL up (a read, a write, a native call, a lock) it waits
up to the interpreter's switch interval to take it back from the busy thread.
Tether lowers the interval to 0.5 ms while it moves bytes (tether/_store/handoffs.py);
the "5 ms" columns run the same steps with ``TETHER_SWITCH_INTERVAL=0``, the
interpreter's own 5 ms, alone and beside the busy thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from bench_large import make_files  # the same two versions as bench_large's

MB = 1 << 20

# One step in a fresh process: prints its seconds.
STEP = textwrap.dedent(
    """
    import json, sys, threading, time
    import tether

    op, registry, arg, mode = sys.argv[1:5]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    if mode.startswith("busy"):
        threading.Thread(target=spin, daemon=True).start()
    reg = tether.open(registry)
    start = time.perf_counter()
    if op == "log":
        reg.log_model(arg, "big", progress=False)
    else:
        reg.download("big", arg)
    print(json.dumps({"seconds": time.perf_counter() - start}))
    stop.set()
    """
)

MODES = ("alone", "alone-5ms", "busy", "busy-5ms")


def step(op: str, registry: Path, arg: Path, mode: str, cache: Path) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    os.sync()
    env = dict(os.environ, TETHER_CACHE_DIR=str(cache))
    if mode.endswith("-5ms"):
        env["TETHER_SWITCH_INTERVAL"] = "0"  # the interpreter's own interval
    done = subprocess.run([sys.executable, "-c", STEP, op, str(registry), str(arg), mode],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{op} ({mode}) failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def one_round(work: Path, v1: Path, v2: Path, mode: str) -> dict[str, float]:
    """Log v1, log v2 and load v1 into a fresh registry, each in its own process."""
    registry = work / f"reg-{mode}"
    shutil.rmtree(registry, ignore_errors=True)
    subprocess.run([str(Path(sys.executable).parent / "tether"), "init", str(registry)],
                   capture_output=True, check=True)
    out = work / f"out-{mode}"
    cache = work / "cache"
    times = {"log v1 (new)": step("log", registry, v1, mode, cache),
             "log v2 (5% changed)": step("log", registry, v2, mode, cache)}
    shutil.rmtree(out, ignore_errors=True)
    times["load v2"] = step("load", registry, out, mode, cache)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(registry, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(prefix="tether-bench-busy-", dir=os.getcwd()) as tmp:
        work = Path(tmp)
        v1, v2 = make_files(work, size)
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for number in range(args.rounds):
            # Interleaved, and each round starts with the next mode: the machine's slow
            # spells, and whatever a round leaves behind, fall on every mode alike.
            for mode in MODES[number % len(MODES):] + MODES[:number % len(MODES)]:
                runs[mode].append(one_round(work, v1, v2, mode))
    table: dict[str, dict[str, Any]] = {}
    for op in runs["alone"][0]:
        row: dict[str, Any] = {mode: statistics.median(r[op] for r in runs[mode])
                               for mode in MODES}
        row["MB/s alone"] = size / MB / row["alone"]
        row["busy / alone"] = row["busy"] / row["alone"]
        row["busy / alone, 5 ms"] = row["busy-5ms"] / row["alone-5ms"]
        table[op] = row
    if args.json:
        print(json.dumps({"size_mb": args.size_mb, "rounds": args.rounds, "steps": table},
                         indent=2))
        return
    print(f"{args.size_mb} MB of incompressible bytes, local store, median of {args.rounds} "
          f"interleaved rounds, each step a fresh process; seconds")
    print(f"{'operation':<22}{'alone':>8}{'busy':>8}{'x':>6}   "
          f"{'alone 5 ms':>11}{'busy 5 ms':>11}{'x':>6}")
    for op, row in table.items():
        print(f"{op:<22}{row['alone']:>8.2f}{row['busy']:>8.2f}{row['busy / alone']:>6.1f}   "
              f"{row['alone-5ms']:>11.2f}{row['busy-5ms']:>11.2f}"
              f"{row['busy / alone, 5 ms']:>6.1f}")
    print("the busy thread holds one of the two cores: about 2x is the machine shared; past "
          "that, the GIL (Tether's 0.5 ms switch interval, then the interpreter's 5 ms)")

if __name__ == "__main__":
    main()

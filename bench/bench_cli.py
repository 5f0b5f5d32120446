"""Start-up time of the `tether` command, next to `git --version` measured in the same run.

    python bench/bench_cli.py [--runs 20]

Makes a small registry (3 versions of one model) in a temporary folder, then
times `tether --help` and `tether versions NAME` with hyperfine when it is on
PATH (`apt-get install -y hyperfine`), else with a timed loop of subprocesses.
Targets: --help under 0.15 s, versions under 0.5 s. The commands run with
Python's bytecode cache on, as an installed tool does.
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
import time
from pathlib import Path


def tether_exe() -> str:
    local = Path(sys.executable).with_name("tether")
    return str(local) if local.exists() else "tether"


def make_registry(folder: Path) -> Path:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import tether

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    root = folder / ".tether"
    with tether.init(root, actor="bench@tether") as reg:
        for C in (1.0, 0.5, 0.2):
            model = LogisticRegression(C=C).fit(X, y)
            reg.log_model(model, "wine", params={"C": C}, metrics={"acc": 0.9})
    return root


def with_hyperfine(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        args = ["hyperfine", "-N", "--warmup", "2", "--runs", str(runs), "--export-json", out.name]
        for label, argv in commands.items():
            args += ["-n", label, " ".join(argv)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return {r["command"]: (r["mean"], r["stddev"] or 0.0) for r in results}


def with_loop(commands: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float]]:
    figures = {}
    for label, argv in commands.items():
        for _ in range(2):
            subprocess.run(argv, check=True, capture_output=True)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        figures[label] = (statistics.mean(times), statistics.stdev(times))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    exe = tether_exe()
    with tempfile.TemporaryDirectory(prefix="tether-bench-cli-") as tmp:
        root = make_registry(Path(tmp))
        os.environ.pop("TETHER_URI", None)
        # As installed: Python caches compiled modules. With PYTHONDONTWRITEBYTECODE set
        # (some CI images set it) every run compiles Tether's modules again, which here
        # cost ~120 ms of the `versions` figure; one unmeasured run writes the caches.
        bytecode = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([exe, "--registry", str(root), "versions", "wine"],
                       capture_output=True, check=False)
        commands = {
            "git --version": ["git", "--version"],
            "tether --help": [exe, "--help"],
            "tether versions wine": [exe, "--registry", str(root), "versions", "wine"],
        }
        tool = "hyperfine" if shutil.which("hyperfine") else "timed loop"
        run = with_hyperfine if tool == "hyperfine" else with_loop
        figures = run(commands, options.runs)
    print(f"tether CLI start-up ({tool}, {options.runs} runs, {os.cpu_count()} cores"
          + (", bytecode caching turned back on for the runs" if bytecode else "") + ")")
    for label, (mean, stddev) in figures.items():
        print(f"  {label:<24} {mean * 1000:8.1f} ms ± {stddev * 1000:5.1f} ms")


if __name__ == "__main__":
    main()

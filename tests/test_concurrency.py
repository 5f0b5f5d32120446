"""Several processes writing one registry; a writer killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tether

from .conftest import subprocess_env

WRITER = textwrap.dedent(
    """
    import sys, numpy as np, tether
    from sklearn.linear_model import LogisticRegression
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    worker, count = int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        C = 0.01 + worker * 100 + i
        model = LogisticRegression(C=C, max_iter=300).fit(X, y)
        v = tether.log_model(model, "shared", params={"C": C, "worker": worker},
                             registry=sys.argv[1])
        print(v.seq, v.semver, flush=True)
    """
)


@pytest.mark.slow
def test_concurrent_writers_get_unique_numbers_and_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / ".tether"
    tether.init(root).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    workers, each = 4, 3
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), str(w), str(each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for w in range(workers)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    with tether.open(root) as reg:
        versions = reg.versions("shared")
        assert sorted(v.seq for v in versions) == list(range(1, workers * each + 1))
        assert len({v.semver for v in versions}) == workers * each
        assert len({(v.params["worker"], v.params["C"]) for v in versions}) == workers * each
        count, problems = reg.verify_audit()
        assert problems == [] and count == 2 + workers * each  # created + admin grant
        for v in versions:
            assert reg.verify(v.ref) == []


KILLED_WRITER = textwrap.dedent(
    """
    import sys, os, tether
    folder = sys.argv[2]
    i = 0
    while True:
        i += 1
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.write(os.urandom(4 << 20))
        tether.log_model(folder, "big", params={"i": i}, registry=sys.argv[1])
        print(i, flush=True)
    """
)


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_the_registry_consistent(tmp_path: Path) -> None:
    root = tmp_path / ".tether"
    tether.init(root).close()
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITER)
    folder = tmp_path / "model"
    folder.mkdir()
    for delay in (0.8, 1.3, 1.9, 2.6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with tether.open(root) as reg:
        try:
            versions = reg.versions("big")
        except tether.NotFound:
            versions = []
        assert [v.seq for v in versions] == list(range(1, len(versions) + 1))
        for v in versions:
            assert reg.verify(v.ref) == [], f"{v.ref} is half-written"
        assert reg.verify_audit()[1] == []
        # The registry still takes writes after the kills.
        (folder / "weights.bin").write_bytes(b"after the storm")
        after = reg.log_model(folder, "big")
        assert after.seq == len(versions) + 1
        assert (Path(reg.load(after.ref)) / "weights.bin").read_bytes() == b"after the storm"

"""Several processes writing one registry; a writer killed half-way."""

from __future__ import annotations

import contextlib
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


# -- races on PostgreSQL (READ COMMITTED: each transaction sees others' commits) --------


def _pg_registry(pg_database: str, tmp_path: Path) -> tether.Registry:
    return tether.init(tmp_path / "reg" / ".tether", actor="ops@example.com",
                       db_url=pg_database)


def _log(registry: tether.Registry, tmp_path: Path, text: str) -> object:
    (tmp_path / f"{text}.bin").write_bytes(text.encode() * 100)
    return registry.log_model(tmp_path / f"{text}.bin", "fraud", progress=False)


def _slowly(seconds: float) -> object:
    def check(*_args: object) -> None:  # a promotion's gate taking a moment
        time.sleep(seconds)
    return check


def _in_thread(call: object) -> tuple[object, list[object]]:
    import threading

    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())  # type: ignore[operator]
        except Exception as error:
            out.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)  # it holds the model's lock now
    return thread, out


def test_a_route_rollback_does_not_undo_a_fix_promoted_meanwhile(
        pg_database: str, tmp_path: Path) -> None:
    """rollback_route judged the failing version, then rolled the alias back without
    saying from what: an approver's fix promoted in between was undone, and the failing
    version went back to production (a review)."""
    registry = _pg_registry(pg_database, tmp_path)
    a, x, y = (_log(registry, tmp_path, t) for t in ("a", "x", "y"))
    registry.promote(a.ref, "production", create=True)  # type: ignore[attr-defined]
    registry.promote(x.ref, "production")  # type: ignore[attr-defined]  # X fails
    registry.apply_deployment("svc", {"endpoints": {"e": {"routes": [
        {"name": "stable", "target": "fraud@production", "weight": 100}]}}})
    thread, out = _in_thread(lambda: registry.promote(
        y.ref, "production", checks=[_slowly(1.0)]))  # type: ignore[attr-defined]
    result = registry.rollback_route("svc", endpoint="e", route="stable",
                                     failing=f"sha:{x.digest}", reason="X fails")  # type: ignore[attr-defined]
    thread.join()
    assert not isinstance(out[0], Exception), out
    assert result["rolled_back"] is False, result
    assert registry.get("fraud@production").digest == y.digest  # type: ignore[attr-defined]


def test_a_deletion_racing_a_promotion_leaves_no_alias_on_a_deleted_version(
        pg_database: str, tmp_path: Path) -> None:
    registry = _pg_registry(pg_database, tmp_path)
    _log(registry, tmp_path, "a")
    v = _log(registry, tmp_path, "b")
    thread, _ = _in_thread(lambda: registry.promote(
        v.ref, "production", create=True, checks=[_slowly(1.0)]))  # type: ignore[attr-defined]
    # Waits for the promotion, then sees the alias: refused.
    with contextlib.suppress(tether.PolicyViolation):
        registry.delete_version(v.ref)  # type: ignore[attr-defined]
    thread.join()
    target = registry.versions_with_deleted("fraud")[-1]
    assert not (target.status == "deleted" and "production" in target.aliases), target


def test_a_deployment_racing_gc_routes_no_traffic_to_a_deleted_version(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply resolved its targets without the models' locks: gc expired the version
    meanwhile, and the deployment routed to a deleted version with no bytes (a review)."""
    from tether._registry import deployments

    registry = _pg_registry(pg_database, tmp_path)
    first = _log(registry, tmp_path, "a")
    for text in ("b", "c"):
        _log(registry, tmp_path, text)
    real = deployments._check_traffic

    def slow_check(*args: object) -> None:
        time.sleep(1.0)  # between resolving the targets and committing
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(deployments, "_check_traffic", slow_check)
    thread, out = _in_thread(lambda: registry.apply_deployment("svc", {"endpoints": {"e": {
        "routes": [{"name": "main", "target": first.ref, "weight": 100}]}}}))  # type: ignore[attr-defined]
    # Waits for the deployment, then sees it route there: nothing removed.
    with contextlib.suppress(tether.Conflict):
        registry.gc(keep_last=1, grace_seconds=0)
    thread.join()
    routed = registry.versions_with_deleted("fraud")[0]
    assert isinstance(out[0], dict) and routed.status != "deleted", (out, routed.status)

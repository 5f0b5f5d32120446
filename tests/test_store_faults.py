"""Faults: killed ingests, leftovers, gc dry run == real run, a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tether import Registry, StoreError
from tether._store import open_store, pack_file
from tether._store.base import GC_KINDS
from tether._store.chunkstore import ChunkStore
from tether.cli import cli

#: An ingest in a child process. argv: store folder, data folder, cache folder, mode.
#: mode "remote" makes the store look remote (leases in locks/, uploads staged in
#: the cache's tmp/); "scratch" leaves a whole-model scratch copy as log_model does.
INGEST = textwrap.dedent(
    """
    import sys, tempfile, time
    from pathlib import Path
    from tether._store.blobs import LocalBlobs, make_temp, scratch_root
    from tether._store.chunkstore import ChunkStore

    class RemoteLike(LocalBlobs):
        is_local = False
        tmp_dir = None
        def temp_file(self):
            return make_temp(self.tmp_dir or scratch_root(), "upload")
        def local_path(self, key):
            return None

    folder, data, cache, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    blobs = RemoteLike(folder) if mode == "remote" else LocalBlobs(folder)
    store = ChunkStore(blobs, cache_dir=cache, pack_target=1 << 20)
    if mode == "scratch":
        keep = tempfile.TemporaryDirectory(**store.scratch_args("log"))
        (Path(keep.name) / "model.bin").write_bytes(b"x" * 300_000)
    print("ready", flush=True)
    store.ingest(data, ["big.bin"])
    if mode == "scratch":
        time.sleep(60)
    """
)


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


def _run(tmp_path: Path, mode: str, *, env: dict[str, str] | None = None,
         kill_after: float | None = None) -> int:
    script = tmp_path / "ingest.py"
    script.write_text(INGEST)
    args = [sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "new"),
            str(tmp_path / "cache"), mode]
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if kill_after is not None:
        time.sleep(kill_after)
        proc.kill()  # SIGKILL: no finally, no cleanup
    return proc.wait(timeout=120)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_ingests_leave_leftovers_that_stats_report_and_gc_removes_as_dry_run_said(
    tmp_path: Path,
) -> None:
    store = ChunkStore(open_store(f"file://{tmp_path / 'store'}").blobs,
                       cache_dir=tmp_path / "cache", pack_target=1 << 20)
    kept = store.ingest(_write(tmp_path / "old", "old.bin", os.urandom(1 << 20)), ["old.bin"])
    store.release_pin(kept.pin)  # "old" stands for a committed version
    _write(tmp_path / "new", "big.bin", os.urandom(6 << 20))

    # Killed at chosen points: with a partial pack in tmp/, with a pack but no
    # index, holding a lease with uploads staged in the cache, and with a
    # whole-model scratch copy in the cache.
    assert _run(tmp_path, "local", env={"TETHER_TEST_CRASH_BEFORE_PACK": "1"}) == 99
    assert _run(tmp_path, "local", env={"TETHER_TEST_CRASH_BEFORE_INDEX": "1"}) == 98
    assert _run(tmp_path, "remote", env={"TETHER_TEST_CRASH_BEFORE_PACK": "1"}) == 99
    assert _run(tmp_path, "scratch", kill_after=0.1) == -9

    root = tmp_path / "store"
    assert list((root / "locks").glob("ingest-*")), "the killed remote-like ingest's lease"
    assert list((tmp_path / "cache" / "tmp").glob("log-*")), "the killed log's scratch copy"
    left = store.stats(kept.files).extra["leftovers"]
    for kind in ("packs_without_index", "partial_uploads", "stale_locks", "scratch"):
        assert left[kind]["count"] >= 1 and left[kind]["bytes"] > 0, (kind, left)

    dry = store.gc(kept.files, grace_seconds=0, dry_run=True)
    assert _files(root) == _files(root)  # nothing changed (sanity of the helper)
    before = _files(root)
    assert store.gc(kept.files, grace_seconds=0, dry_run=True).removed == dry.removed
    assert _files(root) == before
    real = store.gc(kept.files, grace_seconds=0, dry_run=False)
    assert real.removed == dry.removed and real.removed_bytes == dry.removed_bytes
    assert set(real.removed) == set(GC_KINDS)
    assert real.removed_bytes >= 3 << 20  # the orphaned packs, partial uploads and copies
    for kind in ("packs_without_index", "partial_uploads", "stale_locks", "scratch"):
        assert real.removed[kind]["count"] >= 1, kind

    # Nothing is left: no tmp file, no lease, no unindexed pack, no scratch.
    assert not list((root / "tmp").iterdir())
    assert [p.name for p in (root / "locks").iterdir()] == ["store.lock"]
    indexed = {p.stem for p in (root / "index").iterdir()}
    assert {p.stem for p in (root / "packs").iterdir()} == indexed
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    again = store.gc(kept.files, grace_seconds=0, dry_run=True)
    assert again.removed_bytes == 0
    assert all(v["count"] == 0 for v in store.stats(kept.files).extra["leftovers"].values())
    store.materialize(kept.files, tmp_path / "out", label="old@1")
    assert (tmp_path / "out" / "old.bin").read_bytes() == (
        tmp_path / "old" / "old.bin"
    ).read_bytes()


@pytest.mark.parametrize("delay", [0.05, 0.25, 0.6])
def test_kill_9_mid_ingest_then_gc_dry_run_equals_the_run_and_nothing_is_left(
    tmp_path: Path, delay: float
) -> None:
    store = ChunkStore(open_store(f"file://{tmp_path / 'store'}").blobs,
                       cache_dir=tmp_path / "cache", pack_target=1 << 20)
    kept = store.ingest(_write(tmp_path / "old", "old.bin", os.urandom(1 << 20)), ["old.bin"])
    store.release_pin(kept.pin)  # "old" stands for a committed version
    _write(tmp_path / "new", "big.bin", os.urandom(16 << 20))
    _run(tmp_path, "remote", kill_after=delay)  # may finish first on a fast machine: fine
    _run(tmp_path, "local", kill_after=delay)
    dry = store.gc(kept.files, grace_seconds=0, dry_run=True)
    real = store.gc(kept.files, grace_seconds=0, dry_run=False)
    assert real.removed == dry.removed
    root = tmp_path / "store"
    assert not list((root / "tmp").iterdir())
    assert [p.name for p in (root / "locks").iterdir()] == ["store.lock"]
    assert {p.stem for p in (root / "packs").iterdir()} == {
        p.stem for p in (root / "index").iterdir()}
    assert not list((root / "pins").iterdir())
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    assert store.gc(kept.files, grace_seconds=0, dry_run=True).removed_bytes == 0
    assert store.verify(kept.files, label="old@1") == []


def test_a_live_owners_files_are_never_leftovers(tmp_path: Path) -> None:
    store = ChunkStore(open_store(f"file://{tmp_path / 'store'}").blobs,
                       cache_dir=tmp_path / "cache")
    fd, partial = store.blobs.temp_file()  # type: ignore[attr-defined]
    os.write(fd, b"x" * 1000)
    os.close(fd)
    fd2, scratch = store.scratch_file("log")
    os.close(fd2)
    report = store.gc([], grace_seconds=0, dry_run=False)
    assert report.removed["partial_uploads"]["count"] == 0 and partial.exists()
    assert report.removed["scratch"]["count"] == 0 and scratch.exists()
    assert str(scratch).startswith(str(tmp_path / "cache" / "tmp"))


def test_cli_gc_dry_run_reports_what_the_run_removes_by_kind(
    registry: Registry, tmp_path: Path
) -> None:
    data = _write(tmp_path / "model", "w.bin", os.urandom(1 << 20))
    registry.log_model(str(data), "m")
    store_root = Path(registry.location.store_url.removeprefix("file://"))
    (tmp_path / "store").symlink_to(store_root)
    _write(tmp_path / "new", "big.bin", os.urandom(3 << 20))
    assert _run(tmp_path, "local", env={"TETHER_TEST_CRASH_BEFORE_INDEX": "1"}) == 98
    assert _run(tmp_path, "local", env={"TETHER_TEST_CRASH_BEFORE_PACK": "1"}) == 99
    root = str(registry.location.root)
    runner = CliRunner()
    stats = runner.invoke(cli, ["-r", root, "store", "stats"])
    assert stats.exit_code == 0 and "packs without index" in stats.output, stats.output
    dry = json.loads(runner.invoke(cli, ["-r", root, "gc", "--dry-run", "--grace", "0",
                                         "--json"]).output)
    text = runner.invoke(cli, ["-r", root, "gc", "--dry-run", "--grace", "0"]).output
    assert "would remove" in text and "partial uploads" in text
    real = json.loads(runner.invoke(cli, ["-r", root, "gc", "--grace", "0", "--json"]).output)
    assert dry["removed"] == real["removed"] and dry["removed_bytes"] == real["removed_bytes"]
    assert real["removed_bytes"] >= 1 << 20
    assert real["removed"]["packs_without_index"]["count"] == 1
    assert real["removed"]["partial_uploads"]["count"] == 1
    assert registry.verify("m@latest") == []


def test_a_gc_dry_run_neither_waits_for_ingests_nor_holds_them_off(
    registry: Registry, tmp_path: Path
) -> None:
    """A dry run only reads, yet took the store lock: it waited for every ingest in
    flight (a minute, then a 409, through a server) and held new ones off meanwhile."""
    import threading

    from tether._store.locking import ingest_lock

    data = _write(tmp_path / "model", "w.bin", os.urandom(1 << 20))
    registry.log_model(str(data), "m")
    answers: list[Any] = []
    with ingest_lock(registry.store):  # an ingest in flight
        dry = threading.Thread(target=lambda: answers.append(registry.gc(dry_run=True)),
                               daemon=True)
        dry.start()
        dry.join(timeout=10)
        assert answers, "the dry run waited for the ingest"
    assert answers[0].store.dry_run and answers[0].expired == []


# -- a full disk ------------------------------------------------------------------


def _enospc_after(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Pack writes fail with ENOSPC once ``budget`` bytes were written."""
    real = pack_file.write_pieces
    state = {"left": budget}

    def write_pieces(fd: int, pieces: list[bytes], offset: int | None = None) -> None:
        size = sum(len(piece) for piece in pieces)
        if size > state["left"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        state["left"] -= size
        real(fd, pieces, offset)

    monkeypatch.setattr(pack_file, "write_pieces", write_pieces)  # packs being written


def test_enospc_during_an_ingest_leaves_store_and_database_as_they_were(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.log_model(str(_write(tmp_path / "a", "w.bin", os.urandom(1 << 20))), "m")
    store_root = Path(registry.location.store_url.removeprefix("file://"))
    store = registry.store
    assert isinstance(store, ChunkStore)
    store.pack_target = 1 << 20  # several packs are published before the disk fills
    before = _files(store_root)
    _enospc_after(monkeypatch, 3 << 20)
    with pytest.raises(StoreError, match="disk is full") as caught:
        registry.log_model(str(_write(tmp_path / "b", "w.bin", os.urandom(6 << 20))), "m")
    assert str(store_root / "tmp") in caught.value.message  # says where
    after = _files(store_root)
    assert after == before
    assert [v.semver for v in registry.versions("m")] == ["1.0.0"]
    assert not list((registry.cache_dir / "tmp").iterdir())  # the scratch copy went too


def test_enospc_during_gc_leaves_store_and_database_as_they_were(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = _write(tmp_path / "v1", "small.bin", os.urandom(256 << 10))
    (both / "big.bin").write_bytes(os.urandom(3 << 20))
    registry.log_model(str(both), "m")  # one pack: small (kept by v2) and big
    registry.log_model(str(_write(tmp_path / "v2", "small.bin",
                                  (both / "small.bin").read_bytes())), "m")
    store_root = Path(registry.location.store_url.removeprefix("file://"))
    dry = registry.gc(keep_last=1, grace_seconds=0, dry_run=True)
    assert dry.expired == ["m@1.0.0"] and dry.store.repacked_packs == 1
    before = _files(store_root)
    _enospc_after(monkeypatch, 0)
    with pytest.raises(StoreError, match="disk is full"):
        registry.gc(keep_last=1, grace_seconds=0)
    assert _files(store_root) == before
    assert [v.semver for v in registry.versions("m")] == ["1.0.0", "1.1.0"]  # none deleted
    monkeypatch.undo()
    real = registry.gc(keep_last=1, grace_seconds=0)
    assert real.expired == dry.expired and real.store.removed == dry.store.removed
    assert registry.verify("m@1.1.0") == []


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_a_really_full_tmpfs_store(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "3m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        store = open_store(f"file://{mount / 'store'}", pack_target=1 << 20)
        kept = store.ingest(_write(tmp_path / "a", "a.bin", os.urandom(512 << 10)), ["a.bin"])
        before = _files(mount / "store")
        with pytest.raises(StoreError, match="disk is full") as caught:
            store.ingest(_write(tmp_path / "b", "b.bin", os.urandom(8 << 20)), ["b.bin"])
        assert str(mount / "store") in caught.value.message
        assert _files(mount / "store") == before
        assert store.verify(kept.files, label="a@1") == []
        report: Any = store.gc(kept.files, grace_seconds=0, dry_run=False)
        assert report.removed_chunks == 0 and report.removed["packs_without_index"]["count"] == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_log_killed_after_its_pin_and_before_its_commit(tmp_path: Path) -> None:
    """The third crash point the faults issue names: every chunk stored and pinned, the
    version not registered. Nothing is registered; the pin keeps gc off the chunks while
    its owner might still commit; once the owner is dead, gc removes the pin and the
    chunks no version uses; logging again stores and registers the model whole."""
    registry = Registry.init(tmp_path / ".tether")
    registry.close()
    (tmp_path / "w.bin").write_bytes(os.urandom(3 << 20))
    script = ("import sys, tether; tether.log_model(sys.argv[1], 'w', "
              f"registry={str(tmp_path / '.tether')!r})")
    code = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w.bin")],
                          env={**os.environ, "TETHER_TEST_CRASH_BEFORE_COMMIT": "1"}).returncode
    assert code == 97
    with Registry.open(tmp_path / ".tether") as reg:
        assert reg.models() == []
        store = reg.store
        root = Path(store.url.removeprefix("file://"))
        assert len(list((root / "pins").iterdir())) == 1
        planned = reg.gc(grace_seconds=0, dry_run=True)
        assert planned.store.removed["stale_pins"]["count"] == 1
        assert planned.store.removed["unreferenced_chunks"]["count"] > 0
        done = reg.gc(grace_seconds=0)
        assert done.store.removed == planned.store.removed
        assert list((root / "pins").iterdir()) == []
        version = reg.log_model(tmp_path / "w.bin", "w", progress=False)
        assert reg.verify(version.ref) == []


def test_a_pin_naming_a_process_it_cannot_prove_ages_out(tmp_path: Path) -> None:
    """A pin uploaded through a server may name any owner: "this host, pid 1, start 0"
    (a process that always runs) kept gc off its chunks for good. An owner on this host
    counts as alive only with the start time /proc gives for its pid."""
    from tether._store.locking import Owner, _host, is_alive_here, me

    assert is_alive_here(me())
    assert not is_alive_here(Owner(_host(), 1, 0))
    store = ChunkStore(open_store(f"file://{tmp_path / 'store'}").blobs,
                       cache_dir=tmp_path / "cache", pack_target=1 << 20)
    root = tmp_path / "store"
    (root / "pins").mkdir(parents=True, exist_ok=True)
    forged = root / "pins" / "forged.json"
    forged.write_text(json.dumps({"owner": Owner(_host(), 1, 0).tag, "chunks": []}))
    os.utime(forged, (1, 1))  # a month old
    planned = store.gc(iter([]), grace_seconds=0, dry_run=True)
    assert planned.removed["stale_pins"]["count"] == 1

"""gc racing ingests, on a local store and on S3 (moto over HTTP).

The dangerous case is an ingest whose chunks are already in the store but
referenced by no version (a failed or abandoned earlier attempt): the ingest
does not write them again, so only its pin keeps gc from removing them before
the version is committed. A writer process logs versions that way while this
process runs gc with no grace period as fast as it can; afterwards every
committed version must verify byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import tether

from .conftest import make_bucket, subprocess_env

WRITER = textwrap.dedent(
    """
    import os, sys, random
    from pathlib import Path
    import tether

    root, count = Path(sys.argv[1]), int(sys.argv[2])
    registry = tether.open(root, actor="writer@test")
    rng = random.Random(7)
    base = bytearray(rng.randbytes(3 << 20))
    for i in range(count):
        start = rng.randrange(len(base) - 65536)
        base[start:start + 65536] = rng.randbytes(65536)
        folder = root.parent / f"v{i}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes(base))
        # An abandoned attempt first: its chunks are stored but belong to no version.
        registry.store.ingest(folder, ["weights.bin"])
        registry.log_model(folder / "weights.bin", "racer", progress=False)
        print(i, flush=True)
    """
)


def _race(root: Path, count: int = 8, pause: float = 0.0) -> tuple[int, float]:
    """``pause``: seconds between collections. An S3 ingest looks for a gc's lease every
    0.5 s; collections back to back leave it no gap and starve the writer (a minute for
    five versions) instead of racing it."""
    script = root.parent / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(root), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    collections = 0
    started = time.monotonic()
    with tether.open(root, actor="gc@test") as registry:
        while writer.poll() is None:
            registry.gc(grace_seconds=0)
            collections += 1
            time.sleep(pause)
            if time.monotonic() - started > 240:
                writer.kill()
                raise AssertionError("the writer did not finish in 240 s")
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert out.split() == [str(i) for i in range(count)]
    return collections, time.monotonic() - started


def _everything_verifies(root: Path, count: int) -> None:
    with tether.open(root, actor="auditor@test") as registry:
        versions = registry.versions("racer")
        assert len(versions) == count
        for version in versions:
            assert registry.verify(version.ref) == [], version.ref
        registry.gc(grace_seconds=0)  # the orphans of the abandoned attempts go now
        for version in versions:
            assert registry.verify(version.ref) == [], version.ref
        assert registry.verify_audit()[1] == []


def test_gc_racing_ingests_on_a_local_store(tmp_path: Path) -> None:
    root = tmp_path / "reg" / ".tether"
    tether.init(root, actor="gc@test").close()
    collections, _ = _race(root)
    assert collections >= 2
    _everything_verifies(root, 8)


def test_gc_racing_ingests_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    make_bucket(s3_endpoint, "race")
    root = tmp_path / "reg" / ".tether"
    tether.init(root, actor="gc@test", store_url="s3://race/registry").close()
    collections, _ = _race(root, count=5, pause=0.6)
    assert collections >= 2
    _everything_verifies(root, 5)


def test_a_remote_clients_pin_protects_its_chunks_from_a_server_side_gc(tmp_path: Path) -> None:
    """The upload is done, the commit not yet: a server-side gc must not take the chunks."""
    import os

    from tether._registry.location import RegistryLocation, default_cache_dir
    from tether._registry.registry import Registry

    from .servers import start_server, stop

    db, store = f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}"
    server = start_server(db, store, tmp_path)
    try:
        client = server.client()
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(os.urandom(3 << 20))
        # Stored twice, as an abandoned attempt and a retry: every chunk is reused,
        # only the retry's pin says they are about to be used.
        client.store.ingest(folder, ["weights.bin"])
        report = client.store.ingest(folder, ["weights.bin"])
        with Registry(RegistryLocation(None, db, store, default_cache_dir())) as on_server:
            on_server.gc(grace_seconds=0)  # what an operator runs on the server
        values = {
            "manifest": [f.to_dict() for f in report.files],
            "flavor": {"name": "files", "kind": "file", "entry": "weights.bin",
                       "framework_packages": [], "framework_versions": {}},
            "signature": None, "input_example": None, "params": {}, "metrics": {},
            "data": {}, "lineage": {}, "environment": {}, "tags": {}, "notes": "",
            "author": "root@team",
        }
        version = client.commit("remote", values, None)
        assert client.verify(version.ref) == []
    finally:
        stop(server)


def _three_versions(registry: Any, tmp_path: Path) -> None:
    import os

    for i in range(3):
        (tmp_path / f"w{i}.bin").write_bytes(os.urandom(200_000))
        registry.log_model(tmp_path / f"w{i}.bin", "m", progress=False)


def test_a_version_promoted_while_gc_plans_is_not_deleted(tmp_path: Path,
                                                          monkeypatch: Any) -> None:
    """gc chose the versions to expire in a read, waited for the store lock and planned;
    a promotion in that window went through, then gc marked the version deleted and
    removed its bytes: production pointed at nothing (a review). The marking checks
    again under the models' locks, and nothing is removed."""
    import tether
    from tether._errors import Conflict

    registry = tether.init(tmp_path / "reg", actor="ops@example.com")
    _three_versions(registry, tmp_path)
    store = registry.store
    real = type(store).gc

    def promote_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        registry.promote("m@1.0.0", "production", create=True)  # another user's promotion
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(store), "gc", promote_meanwhile)
    with pytest.raises(Conflict, match="promoted, deployed or changed while the gc ran"):
        registry.gc(keep_last=1, grace_seconds=0)
    monkeypatch.setattr(type(store), "gc", real)
    assert registry.get("m@production").semver == "1.0.0"
    assert registry.verify("m@production") == []
    assert registry.gc(keep_last=1, grace_seconds=0).expired == ["m@1.1.0"]


def test_gc_keeps_what_deployments_route_to_and_delete_refuses_it(tmp_path: Path) -> None:
    """A canary pinned to m@1.0.0 (the form trusted endpoints need) lost its bytes to
    keep_last while it took traffic, and replicas failed at their next reload (a
    review); so did a version only an earlier revision routed to (a rollback's)."""
    import tether
    from tether import PolicyViolation

    registry = tether.init(tmp_path / "reg", actor="ops@example.com")
    _three_versions(registry, tmp_path)
    (tmp_path / "w3.bin").write_bytes(b"4" * 1000)
    registry.log_model(tmp_path / "w3.bin", "m", progress=False)
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "stable", "target": "m@1.2.0", "weight": 90},
        {"name": "canary", "target": "m@1.0.0", "weight": 10}]}}})
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "stable", "target": "m@1.0.0", "weight": 100}]}}})
    assert registry.gc(keep_last=1, grace_seconds=0).expired == ["m@1.1.0"]
    for ref in ("m@1.0.0", "m@1.2.0"):  # routed now, and by the first revision
        assert registry.verify(ref) == []
    with pytest.raises(PolicyViolation, match="takes traffic in deployment 'svc'"):
        registry.delete_version("m@1.0.0")
    registry.delete_version("m@1.2.0")  # only history routes to it: an explicit delete


def test_gc_reads_pins_in_place_never_whole_into_objects(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    """gc read every pin whole, twice, into Python lists: a 191 MB pin took it from 74 MB
    to 661 MB, and the 16 GB a server accepts made gc impossible (a review). Pins are
    mapped and walked now; what one names is still kept."""
    import json
    import os
    import uuid

    from tether._store import open_store

    store = open_store(f"file://{tmp_path / 'objects'}", cache_dir=tmp_path / "cache")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(os.urandom(300_000))
    report = store.ingest(tmp_path / "src", ["w.bin"])
    store.release_pin(report.pin)
    digests = list(report.files[0].chunks.digests())
    filler = [uuid.uuid4().hex * 2 for _ in range(50_000)]  # other chunks, never stored
    pin = {"created": 0, "owner": "pin-elsewhere~1~1", "chunks": filler + digests}
    (tmp_path / "objects" / "pins" / f"{uuid.uuid4().hex}.json").write_text(json.dumps(pin))
    real = store.blobs.get_bytes

    def no_whole_pins(key: str) -> bytes:
        assert not key.startswith("pins/"), key
        return real(key)

    monkeypatch.setattr(store.blobs, "get_bytes", no_whole_pins)
    store.gc([], grace_seconds=0, dry_run=False)  # no version: only the pin keeps them
    monkeypatch.setattr(store.blobs, "get_bytes", real)
    assert store.verify(report.files, label="w") == []


def test_a_pin_answered_short_stops_gc_rather_than_keep_part_of_it(tmp_path: Path) -> None:
    """Read in pieces from a store that is not a folder, a pin answered shorter than
    listed would keep only the chunks its first part names: gc stops instead; one
    listed shorter than it is (0 bytes: none of its chunks were kept, a review) is read
    to its end."""
    from tether import StoreError
    from tether._store.pin_file import mapped_pin

    class ShortStore:
        tmp_dir = tmp_path

        def local_path(self, key: str) -> None:
            return None

        def get_range(self, key: str, offset: int, length: int) -> bytes:
            return b'{"chunks": []}'[offset:offset + length]  # 14 bytes in all

    with pytest.raises(StoreError, match="fewer bytes than listed"), mapped_pin(
            ShortStore(), "pins/x.json", 20):  # listed at 20
        pass
    with mapped_pin(ShortStore(), "pins/x.json", 0) as data:  # listed short: read whole
        assert bytes(data) == b'{"chunks": []}'


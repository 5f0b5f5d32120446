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


def _race(root: Path, count: int = 8) -> tuple[int, float]:
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
    collections, _ = _race(root, count=5)
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

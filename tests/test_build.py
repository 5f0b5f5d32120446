"""`tether build`: an OCI build context with the verified bytes baked in, and an image
that refuses to start on any bytes but the ones it was built for."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether import Registry

from .conftest import fit_logreg, free_port, subprocess_env, tether_exe, wait_until


@pytest.fixture
def context(registry: Registry, iris: tuple[Any, Any], tmp_path: Path) -> tuple[Path, Any]:
    X, _ = iris
    version = registry.log_model(fit_logreg(iris), "iris", input_example=X.head(3),
                                 progress=False)
    out = subprocess.run(
        [tether_exe(), "--registry", str(registry.location.root), "build", version.ref,
         "-t", "iris:1.0.0", "--out", str(tmp_path / "ctx"), "--no-build", "--json"],
        capture_output=True, text=True, env=subprocess_env(), check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["digest"] == f"sha:{version.digest}" and report["built"] is False
    return tmp_path / "ctx", version


def test_the_context_pins_labels_and_bakes_the_verified_bytes(context: tuple[Path, Any]) -> None:
    folder, version = context
    dockerfile = (folder / "Dockerfile").read_text()
    python = version.environment["python"]
    for line in (
        f"FROM python:{python}-slim",
        "COPY model/ /opt/tether/model/",
        f"ENV TETHER_BAKED_DIGEST=sha:{version.digest}",
        f'tether.baked="{version.ref}"',
        "USER 10001:10001",
        "HEALTHCHECK",
        "/readyz",
        'CMD ["image", "serve", "/opt/tether/model"',
    ):
        assert line in dockerfile, line
    requirements = (folder / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "pytest==" not in requirements
    record = json.loads((folder / "model" / "version.json").read_text())
    assert record["digest"] == f"sha:{version.digest}"
    baked = folder / "model" / "files" / version.files[0].path
    assert baked.stat().st_size == version.files[0].size
    assert "!model" in (folder / ".dockerignore").read_text()


def _built_record(folder: Path) -> str:
    """The record digest the Dockerfile sets, as the image's environment would hold it."""
    line = next(line for line in (folder / "Dockerfile").read_text().splitlines()
                if line.startswith("ENV TETHER_BAKED_RECORD="))
    return line.partition("=")[2]


def _serve(folder: Path, digest: str, port: int,
           record: str | None = "built") -> subprocess.Popen[str]:
    pins = {"TETHER_BAKED_DIGEST": digest}
    if record is not None:
        pins["TETHER_BAKED_RECORD"] = _built_record(folder) if record == "built" else record
    return subprocess.Popen(
        [tether_exe(), "image", "serve", str(folder / "model"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(**pins))


def _ready(proc: subprocess.Popen[str], port: int) -> None:
    def answers() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200

    wait_until(answers, timeout=60, ignoring=(httpx.HTTPError,))


def test_the_image_serves_the_baked_version_under_its_own_identity(
    context: tuple[Path, Any], iris: tuple[Any, Any]
) -> None:
    folder, version = context
    port = free_port()
    proc = _serve(folder, f"sha:{version.digest}", port)
    try:
        _ready(proc, port)
        X, _ = iris
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/endpoints/iris/predict",
                            json={"records": X.head(2).to_dict(orient="records")}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["x-model-version"] == f"{version.ref}; digest=sha:{version.digest}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # Its private registry goes with it: each start of a crash-looping pod left a copy
    # of the model in the cache folder (a review).
    assert not list(Path(os.environ["TETHER_CACHE_DIR"]).glob("baked-*"))


@pytest.mark.parametrize("attack", ["other digest", "changed byte", "edited record",
                                    "edited record, unpinned", "renamed", "renamed, unpinned"])
def test_the_image_refuses_to_start_on_other_bytes(context: tuple[Path, Any], attack: str) -> None:
    """A record renamed (`fraud-detector@9.9.9`, its tags, its environment: fields the
    version's digest leaves out) served under the new name while the digest held (a
    review): the record's own digest, set by the build, pins those too. Without it, the
    start says what is not pinned."""
    folder, version = context
    digest = f"sha:{version.digest}"
    if attack == "other digest":
        digest = "sha:" + "ab" * 32  # an image built for another version
    elif attack == "changed byte":
        path = folder / "model" / "files" / version.files[0].path
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
    else:
        record = json.loads((folder / "model" / "version.json").read_text())
        if attack.startswith("renamed"):
            record.update(name="fraud-detector", semver="9.9.9", tags={"team": "risk"})
        else:
            record["params"] = {"C": 1000}
        (folder / "model" / "version.json").write_text(json.dumps(record))
    proc = _serve(folder, digest, port := free_port(),
                  record=None if attack.endswith("unpinned") else "built")
    if attack == "renamed, unpinned":  # the bytes are the ones built: it serves, and says so
        try:
            _ready(proc, port)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert "warning: the record is not pinned" in err, err
        return
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert {"other digest": "not the sha:abab",
            "changed byte": "does not match its digest",
            "edited record": "is not the one the image was built with",
            "edited record, unpinned": "hashes to",
            "renamed": "is not the one the image was built with"}[attack] in err, err
    assert "Traceback" not in err
    del port


def test_the_record_digest_is_built_in_and_pins_the_record(context: tuple[Path, Any]) -> None:
    from tether._registry.baked import record_digest

    folder, _ = context
    assert _built_record(folder) == record_digest(folder / "model")
    assert f'tether.baked_record="{record_digest(folder / "model")}"' in (
        folder / "Dockerfile").read_text()


@pytest.mark.parametrize("kind", ["deep", "zero", "fifo", "huge seq", "folder"])
def test_a_malformed_baked_record_is_a_clear_refusal(context: tuple[Path, Any],
                                                     kind: str) -> None:
    """Nested 100,000 deep: a RecursionError traceback; a link to /dev/zero: read until
    memory ran out; a named pipe: a start that hung; a seq of 10**30: a database
    OverflowError (a review)."""
    import os

    from tether import IntegrityError, InvalidInput
    from tether._registry.baked import read_baked

    folder, version = context
    path = folder / "model" / "version.json"
    record = json.loads(path.read_text())
    path.unlink()
    if kind == "deep":
        path.write_text('{"params": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text(json.dumps({**record, "seq": 10**30}))
    with pytest.raises((IntegrityError, InvalidInput)) as refused:
        read_baked(folder / "model", f"sha:{version.digest}")
    assert {"deep": "unreadable", "zero": "not a regular file", "fifo": "not a regular file",
            "folder": "not a regular file", "huge seq": "beyond any registry's"}[kind] in str(
                refused.value)


def test_a_short_digest_to_expect_is_refused_clearly(context: tuple[Path, Any]) -> None:
    """A user passing the 12-digit digest `tether show` prints got "carries iris@1.0.0
    (sha:42e6c3b2aee8), not the sha:42e6c3b2aee8 it was built for"."""
    folder, version = context
    proc = _serve(folder, f"sha:{version.digest[:12]}", free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "must be whole: sha: and 64 hex digits" in err and "Traceback" not in err


def test_a_running_servers_private_registry_is_kept_by_anothers_clean_up(
        tmp_path: Path) -> None:
    """Two `image serve` containers sharing a cache volume are both PID 1: the second's
    start removed the first's live registry (a review of the day's fixes). A running
    server holds a lock on its own; only an unlocked one is a dead server's."""
    from tether._registry.baked import clear_dead_baked, hold_baked

    live = tmp_path / "baked-1-live"
    dead = tmp_path / "baked-1-dead"
    for folder in (live, dead):
        folder.mkdir()
    held = hold_baked(live)
    hold_baked(dead).close()  # its server gone: the lock went with it
    try:
        clear_dead_baked(tmp_path)
        assert live.exists() and not dead.exists()
    finally:
        held.close()


def test_a_version_its_policy_requires_signed_is_built_only_once_signed(
        registry: Registry, tmp_path: Path) -> None:
    """The image serves from a registry of its own, with no policy to ask: `tether build`
    baked and the image served an unsigned version whose policy says
    ``require_signed_by``, which load, check and serve refuse (a review)."""
    from tether._signing import generate_key

    (tmp_path / "m.bin").write_bytes(b"weights")
    version = registry.log_model(tmp_path / "m.bin", "m", progress=False)
    key, public, _ = generate_key(tmp_path / "release.key")
    registry.trust_key("release", public.read_text())
    registry.set_policy("m", "require_signed_by: [release]\n")

    def build(out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tether_exe(), "--registry", str(registry.location.root), "build", version.ref,
             "-t", "m:1", "--out", str(tmp_path / out), "--no-build"],
            capture_output=True, text=True, env=subprocess_env(), check=False)

    refused = build("unsigned")
    assert refused.returncode == 1, refused.stdout
    assert "requires a signature by release" in refused.stderr
    assert not (tmp_path / "unsigned" / "model").exists()
    registry.sign(version.ref, str(key))
    assert build("signed").returncode == 0

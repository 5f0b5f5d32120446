"""`tether build`: an OCI build context with the verified bytes baked in, and an image
that refuses to start on any bytes but the ones it was built for."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether import Registry

from .conftest import fit_logreg, free_port, subprocess_env, tether_exe


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


def _serve(folder: Path, digest: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tether_exe(), "image", "serve", str(folder / "model"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(TETHER_BAKED_DIGEST=digest))


def test_the_image_serves_the_baked_version_under_its_own_identity(
    context: tuple[Path, Any], iris: tuple[Any, Any]
) -> None:
    folder, version = context
    port = free_port()
    proc = _serve(folder, f"sha:{version.digest}", port)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "the baked image did not become ready"
            time.sleep(0.3)
        X, _ = iris
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/endpoints/iris/predict",
                            json={"records": X.head(2).to_dict(orient="records")}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["x-model-version"] == f"{version.ref}; digest=sha:{version.digest}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("attack", ["other digest", "changed byte", "edited record"])
def test_the_image_refuses_to_start_on_other_bytes(context: tuple[Path, Any], attack: str) -> None:
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
        record["params"] = {"C": 1000}
        (folder / "model" / "version.json").write_text(json.dumps(record))
    proc = _serve(folder, digest, free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert {"other digest": "not the sha:abab", "changed byte": "does not match its digest",
            "edited record": "hashes to"}[attack] in err, err
    assert "Traceback" not in err


def test_a_short_digest_to_expect_is_refused_clearly(context: tuple[Path, Any]) -> None:
    """A user passing the 12-digit digest `tether show` prints got "carries iris@1.0.0
    (sha:42e6c3b2aee8), not the sha:42e6c3b2aee8 it was built for"."""
    folder, version = context
    proc = _serve(folder, f"sha:{version.digest[:12]}", free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "must be whole: sha: and 64 hex digits" in err and "Traceback" not in err

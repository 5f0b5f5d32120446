"""`tether import mlflow` from a real local MLflow store (an ``mlruns`` folder MLflow
itself writes here), as it is and damaged (a review)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tether

pytest.importorskip("mlflow")

BUILD = """
import sys
from pathlib import Path
import mlflow
from mlflow.tracking import MlflowClient
where = Path(sys.argv[1])
uri = str(where / "mlruns")
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
client = MlflowClient(uri, uri)
for name in ("first", "second"):
    with mlflow.start_run() as run:
        art = where / f"model-{name}"
        art.mkdir()
        (art / "weights.bin").write_bytes(name.encode() * 10)
        mlflow.log_artifacts(str(art), "model")
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
print(uri)
"""


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


@pytest.fixture
def mlruns(tmp_path: Path) -> Path:
    """Two registered models, each one version whose location is runs:/RUN/model (as
    MLflow 3 writes them), built in a child process by MLflow itself."""
    source = tmp_path / "source"
    source.mkdir()
    done = subprocess.run([sys.executable, "-c", BUILD, str(source)], capture_output=True,
                          text=True, env=_env(), cwd=source, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])


def _import(tmp_path: Path, mlruns: Path, *more: str) -> subprocess.CompletedProcess[str]:
    registry = tmp_path / "reg"
    if not registry.exists():
        tether.init(registry, actor="r@test").close()
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.run(["tether", "--registry", str(registry), "import", "mlflow",
                           "--from", str(mlruns), *more], capture_output=True, text=True,
                          env=_env(), cwd=work, timeout=300, check=False)


def test_a_local_store_imports_and_writes_nothing_where_it_runs(
        tmp_path: Path, mlruns: Path) -> None:
    """Its versions' runs:/ locations were refused (nothing imported), and MLflow's file
    store left an mlflow.db in the working folder (it reads through the global URI)."""
    done = _import(tmp_path, mlruns)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 version(s) imported" in done.stdout
    assert list((tmp_path / "work").iterdir()) == []
    reg = tether.open(tmp_path / "reg")
    assert reg.get("first@1.0.0").ref == "first@1.0.0"


def test_a_damaged_store_is_reported_model_by_model_without_a_traceback(
        tmp_path: Path, mlruns: Path) -> None:
    """A damaged meta.yaml ended the import in MLflow's own traceback. Now each model it
    spoils is reported (MLflow's file store reads every model's versions to list one
    model's, so here both are) and the import ends with exit 1, nothing half done."""
    meta = mlruns / "models" / "first" / "version-1" / "meta.yaml"
    meta.write_text("- 1\n- 2\n")  # a list where MLflow expects a mapping
    done = _import(tmp_path, mlruns)
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode != 0
    assert "could not read it" in done.stderr and "--model NAME" in done.stderr
    done = _import(tmp_path, mlruns, "--model", "first", "--model", "second")
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    assert "first: model 'first' failed" in done.stdout
    assert "could not read it" in done.stdout
    assert "0 version(s) imported" in done.stdout
    assert tether.open(tmp_path / "reg").models() == []


def test_a_description_of_the_wrong_shape_is_reported_after_the_versions(
        tmp_path: Path, mlruns: Path) -> None:
    """A model description that is a mapping escaped after the versions were logged:
    exit 1 with no report, and the later models never done."""
    meta = mlruns / "models" / "first" / "meta.yaml"
    meta.write_text(meta.read_text() + "description:\n  a: 1\n")
    done = _import(tmp_path, mlruns)
    assert "Traceback" not in done.stderr + done.stdout
    assert "2 version(s) imported" in done.stdout, done.stdout + done.stderr
    assert "were not imported" in done.stdout
    shutil.rmtree(tmp_path / "work")

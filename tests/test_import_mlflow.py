"""`tether import mlflow` against a real `mlflow server` started here.

The server runs on a free loopback port over SQLite with a local artifact
folder (served through the server, so the import only talks HTTP). It is
filled with the MLflow client: two models, a skops and a cloudpickle
scikit-learn model, a folder of files, tags, descriptions and aliases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from tether import Registry
from tether._registry.import_mlflow import (
    TAG_MODEL,
    TAG_RUN,
    TAG_SOURCE,
    TAG_URI,
    TAG_VERSION,
    import_mlflow,
)
from tether.cli import cli

from .conftest import free_port

pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [
            str(exe) if exe.exists() else "mlflow",
            "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text())
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run_with(client: Any, experiment: str, folder: Path, params: dict[str, str],
              metrics: dict[str, float]) -> Any:
    run = client.create_run(experiment)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    return run


def _sklearn_run(
    client: Any, experiment: str, model: Any, fmt: str, accuracy: float, **options: Any
) -> Any:
    import mlflow.sklearn

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.sklearn.save_model(
            model,
            f"{tmp}/model",
            serialization_format=fmt,
            pip_requirements=["scikit-learn"],
            **options,
        )
        return _run_with(client, experiment, Path(tmp) / "model", {"C": "0.5"},
                         {"accuracy": accuracy})


def _register(client: Any, name: str, run: Any, **options: Any) -> Any:
    return client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, **options
    )


def _cli(registry: Registry, *args: str) -> Any:
    assert registry.location.root is not None
    return CliRunner(env={"TETHER_USER": "tester@example.com"}).invoke(
        cli, ["--registry", str(registry.location.root), *args]
    )


def test_import_brings_versions_aliases_and_only_what_is_new(
    mlflow_uri: str, registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    X, y = iris
    X = X.to_numpy()
    client = _client(mlflow_uri)
    experiment = client.create_experiment("import-test")

    # fraud: v1 skops (safe types only), v2 cloudpickle; alias champion -> 2.
    logreg = LogisticRegression(max_iter=500).fit(X, y)
    run1 = _sklearn_run(client, experiment, logreg, "skops", 0.95)
    run2 = _sklearn_run(client, experiment, logreg, "cloudpickle", 0.97)
    client.create_registered_model("fraud", tags={"team": "risk"}, description="Flags fraud")
    _register(client, "fraud", run1, tags={"stage": "exp"}, description="first cut")
    _register(client, "fraud", run2, description="second cut")
    client.set_registered_model_alias("fraud", "champion", "2")

    # churn: a folder of plain files, a few KB; alias prod -> 1.
    files = tmp_path / "churn"
    files.mkdir()
    (files / "weights.bin").write_bytes(np.random.default_rng(7).bytes(6000))
    (files / "config.json").write_text(json.dumps({"layers": [8, 4]}))
    run3 = _run_with(client, experiment, files, {"lr": "0.1"}, {"auc": 0.81})
    client.create_registered_model("churn", description="Who leaves")
    _register(client, "churn", run3, tags={"data": "2026-10"})
    client.set_registered_model_alias("churn", "prod", "1")

    report = import_mlflow(registry, mlflow_uri)

    assert report.imported == 3 and report.problems == 0
    fraud = registry.versions("fraud")
    assert [v.tags[TAG_VERSION] for v in fraud] == ["1", "2"]
    assert [v.notes for v in fraud] == ["first cut", "second cut"]
    for version, run in zip(fraud, (run1, run2), strict=True):
        assert version.tags[TAG_MODEL] == "fraud"
        assert version.tags[TAG_RUN] == run.info.run_id
        assert version.tags[TAG_SOURCE] == f"{run.info.artifact_uri}/model"
        assert version.tags[TAG_URI] == mlflow_uri
        assert version.params == {"C": "0.5"}
    assert fraud[0].tags["stage"] == "exp"
    assert fraud[0].metrics == {"accuracy": 0.95}
    # skops with only default-trusted types: a native version that loads without trust.
    assert fraud[0].flavor["name"] == "sklearn"
    loaded = registry.load(fraud[0].ref, progress=False)
    assert (loaded.predict(X) == logreg.predict(X)).all()
    # cloudpickle would need unpickling: kept as files, and the report says why.
    assert fraud[1].flavor["name"] == "files"
    assert {f.path for f in fraud[1].files} >= {"MLmodel", "model.pkl"}
    (fraud_report,) = [m for m in report.models if m.name == "fraud"]
    notes = {v.mlflow_version: v.note for v in fraud_report.versions}
    assert "cloudpickle" in notes["2"] and "files" in notes["2"]
    assert "natively" in notes["1"]

    (churn,) = registry.versions("churn")
    assert churn.flavor["name"] == "files" and churn.tags["data"] == "2026-10"
    assert churn.metrics == {"auc": 0.81}
    copy = registry.download(churn.ref, tmp_path / "copy", progress=False)
    for name in ("weights.bin", "config.json"):
        assert (copy / name).read_bytes() == (files / name).read_bytes()

    info = registry.model("fraud")
    assert info.description == "Flags fraud" and info.tags == {"team": "risk"}
    assert registry.model("churn").description == "Who leaves"
    assert registry.get("fraud@champion").seq == 2
    assert registry.get("churn@prod").seq == 1
    assert registry.alias_history("fraud", "champion")[0].reason.startswith("imported from MLflow")
    logged = registry.audit_log(action="version.logged")
    assert len(logged) == 3

    # MLflow moves on: fraud v3 (a tree: skops types not trusted by default) and
    # champion -> 3; a Tether policy refuses champion for a version under 0.99.
    registry.set_policy(
        "fraud", "aliases:\n  champion:\n    checks:\n      - metric: accuracy\n        min: 0.99\n"
    )
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    run4 = _sklearn_run(
        client, experiment, tree, "skops", 0.98, skops_trusted_types=["sklearn.tree._tree.Tree"]
    )
    _register(client, "fraud", run4, description="a tree")
    client.set_registered_model_alias("fraud", "champion", "3")

    result = _cli(registry, "import", "mlflow", "--from", mlflow_uri, "--json")

    assert result.exit_code == 1, result.output  # the refusal is a problem worth an exit code
    again = json.loads(result.output)
    assert again["imported"] == 1 and again["problems"] == 1
    by_name = {m["name"]: m for m in again["models"]}
    statuses = {v["mlflow_version"]: v["status"] for v in by_name["fraud"]["versions"]}
    assert statuses == {"1": "present", "2": "present", "3": "imported"}
    assert [v["status"] for v in by_name["churn"]["versions"]] == ["present"]
    (champion,) = by_name["fraud"]["aliases"]
    assert champion["status"] == "refused" and "accuracy" in champion["note"]
    assert by_name["churn"]["aliases"][0]["status"] == "unchanged"
    new = by_name["fraud"]["versions"][2]
    assert new["flavor"] == "files" and "does not trust" in new["note"]

    assert [v.tags[TAG_VERSION] for v in registry.versions("fraud")] == ["1", "2", "3"]
    assert len(registry.versions("churn")) == 1
    assert registry.get("fraud@champion").seq == 2  # refused: stays where it was
    assert len(registry.audit_log(action="version.logged")) == 4

    # A third run finds nothing new (text output this time).
    third = _cli(registry, "import", "mlflow", "--from", mlflow_uri, "--model", "churn")
    assert third.exit_code == 0, third.output
    assert "0 version(s) imported" in third.output
    assert len(registry.audit_log(action="version.logged")) == 4


def test_unreachable_server_is_a_clear_error(registry: Registry) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = _cli(registry, "import", "mlflow", "--from", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert "unreachable" in result.output and f"127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 30


def test_unknown_model_is_reported(mlflow_uri: str, registry: Registry) -> None:
    result = _cli(registry, "import", "mlflow", "--from", mlflow_uri, "--model", "nope", "--json")
    assert result.exit_code == 1
    (model,) = json.loads(result.output)["models"]
    assert "not found" in model["error"]


def test_dry_run_changes_nothing_and_a_tether_side_alias_move_is_kept(
    mlflow_uri: str, registry: Registry, tmp_path: Path
) -> None:
    client = _client(mlflow_uri)
    experiment = client.create_experiment("kept-test")
    client.create_registered_model("ranker")
    for n in (1, 2):
        folder = tmp_path / f"v{n}"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(np.random.default_rng(n).bytes(3000))
        _register(client, "ranker", _run_with(client, experiment, folder, {}, {}))
    client.set_registered_model_alias("ranker", "prod", "1")

    plan = import_mlflow(registry, mlflow_uri, models=["ranker"], dry_run=True)
    (model,) = plan.models
    assert [v.status for v in model.versions] == ["planned", "planned"]
    assert [a.status for a in model.aliases] == ["planned"]
    assert "ranker" not in {m.name for m in registry.models()}

    import_mlflow(registry, mlflow_uri, models=["ranker"])
    assert registry.get("ranker@prod").seq == 1
    registry.promote("ranker@2", "prod", reason="hotfix")  # a decision made in Tether

    again = import_mlflow(registry, mlflow_uri, models=["ranker"])
    (alias,) = again.models[0].aliases
    assert alias.status == "kept" and "moved in Tether" in alias.note
    assert registry.get("ranker@prod").seq == 2
    assert again.problems == 0 and again.imported == 0

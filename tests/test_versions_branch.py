"""Model versions record the git branch they were logged from; `tether versions --branch`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tether._registry.registry import Registry
from tether.cli import cli

from .conftest import fit_logreg


def test_versions_filter_by_the_branch_they_came_from(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "BRANCH_NAME"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(work)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (work / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    monkeypatch.chdir(work)
    X, _ = iris

    def log(C: float) -> Any:
        return registry.log_model(fit_logreg(iris, C=C), "iris", input_example=X.head(5))

    assert log(1.0).lineage["git"]["branch"] == "main"
    subprocess.run([*git, "checkout", "-q", "-b", "exp/wider"], check=True)
    assert log(0.5).lineage["git"]["branch"] == "exp/wider"
    # Detached (as CI checks out): the branch CI names.
    subprocess.run([*git, "checkout", "-q", "--detach"], check=True)
    monkeypatch.setenv("GITHUB_HEAD_REF", "feature-x")
    assert log(0.25).lineage["git"]["branch"] == "feature-x"

    def versions(*extra: str) -> list[str]:
        result = CliRunner().invoke(
            cli,
            ["--registry", str(tmp_path / "reg" / ".tether"), "versions", "iris", "--json", *extra],
        )
        assert result.exit_code == 0, result.output
        return [v["semver"] for v in json.loads(result.output)]

    assert versions() == ["1.0.0", "1.1.0", "1.2.0"]
    assert versions("--branch", "main") == ["1.0.0"]
    assert versions("--branch", "exp/wider") == ["1.1.0"]
    assert versions("--branch", "feature-x") == ["1.2.0"]
    assert versions("--branch", "nope") == []

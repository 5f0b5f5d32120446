"""What `tether env export` pins, and what a load that fails after a warned
environment difference says."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tether import Registry
from tether._environment import capture_environment
from tether._errors import EnvironmentMismatch

from .conftest import fit_logreg


def test_export_pins_what_the_model_needs_not_the_dev_tools(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    version = registry.log_model(fit_logreg(iris), "iris", progress=False)
    needed = registry.env_export(version.ref)
    assert "scikit-learn==" in needed and "numpy==" in needed and "skops==" in needed
    for tool in ("pytest==", "mypy==", "ruff==", "moto=="):
        assert tool not in needed
    full = registry.env_export(version.ref, full=True)
    assert "pytest==" in full
    # This checkout is an editable install: named, never pinned.
    if capture_environment()["local_installs"].get("tether") == "editable":
        assert "# tether==0.1.0: an editable install that no index has" in full
        assert "\ntether==" not in full


def test_a_version_without_a_dependency_graph_exports_everything(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    from tether._environment.export import export_requirements

    environment = {"packages": {"numpy": "2.0.0", "pytest": "8.0.0"}, "python": "3.11"}
    text = export_requirements(environment, roots=["numpy"])
    assert "no dependency graph" in text and "pytest==8.0.0" in text


def test_a_framework_failure_after_a_warned_difference_names_the_difference(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "vanishing_model.py"
    module.write_text("class Model:\n    def predict(self, rows):\n        return rows\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_model

    version = registry.log_model(vanishing_model.Model(), "vanish", progress=False)
    # The framework goes away (as numpy._core did for numpy 1.26 readers of numpy 2 pickles).
    module.unlink()
    monkeypatch.delitem(sys.modules, "vanishing_model")
    other = capture_environment()
    other["packages"]["numpy"] = "1.26.4"
    with pytest.raises(EnvironmentMismatch) as refused:
        registry.load(version.ref, trusted=True, env_policy="warn", environment=other)
    text = str(refused.value)
    assert "ModuleNotFoundError" in text and "numpy" in text and "1.26.4" in text
    assert "pip install" in text


def test_warnings_point_at_the_callers_line(registry: Registry, iris: tuple[Any, Any]) -> None:
    version = registry.log_model(fit_logreg(iris), "iris", progress=False)
    other = capture_environment()
    other["packages"]["numpy"] = "1.26.4"
    with pytest.warns(UserWarning) as caught:
        registry.load(version.ref, env_policy="warn", environment=other)
    assert caught[0].filename == __file__


def test_a_files_only_version_says_nothing_is_pinned(registry: Any, tmp_path: Path) -> None:
    """Its header read "what  need": a files model loads with no framework."""
    (tmp_path / "w.bin").write_bytes(b"x" * 1000)
    version = registry.log_model(tmp_path / "w.bin", "f", progress=False)
    text = registry.env_export(version.ref)
    assert "what  need" not in text and "nothing is pinned" in text
    assert [line for line in text.splitlines() if line and not line.startswith("#")] == []


def test_editable_and_local_installs_are_known_whoever_installed_them() -> None:
    """uv writes direct_url.json without spaces (``"editable":true``): searched for pip's
    spelling, an editable install made by uv passed for one from an index (an image
    build then asked an index for a tether it could not have)."""
    from tether._environment.capture import _installed_how

    assert _installed_how('{"dir_info": {"editable": true}, "url": "file:///src"}') == "editable"
    assert _installed_how('{"url":"file:///tmp/check","dir_info":{"editable":true}}') == "editable"
    assert _installed_how('{"url":"file:///w/x.whl","archive_info":{}}') == "local"
    assert _installed_how('{"url":"https://h/x.whl","archive_info":{}}') is None
    assert _installed_how('{"url":"file:///s","dir_info":{"editable":"yes"}}') == "local"
    for junk in ("", "not json", "[1]", '{"dir_info": 3}'):
        assert _installed_how(junk) is None

"""Capturing, comparing, judging and exporting environments."""

from __future__ import annotations

import platform
import warnings
from importlib import metadata

import pytest

from tether import EnvironmentMismatch, InvalidInput
from tether._environment import (
    EnvironmentWarning,
    EnvPolicy,
    capture_environment,
    compare_environments,
    evaluate,
    export_dockerfile,
    export_requirements,
)


def _env(**packages: str) -> dict[str, object]:
    return {
        "python": "3.11.7",
        "platform": "linux",
        "machine": "x86_64",
        "accelerators": [],
        "packages": {k.replace("_", "-"): v for k, v in packages.items()},
    }


def test_capture_reads_this_interpreter_and_every_distribution() -> None:
    env = capture_environment()
    assert env["python"] == platform.python_version()
    assert env["packages"]["numpy"] == metadata.version("numpy")
    assert env["packages"]["scikit-learn"] == metadata.version("scikit-learn")
    env["packages"]["numpy"] = "0.0.1"  # callers get a copy, not the cache
    assert capture_environment()["packages"]["numpy"] == metadata.version("numpy")


def test_differences_are_classified() -> None:
    recorded = _env(scikit_learn="1.5.2", numpy="2.1.0", requests="2.31.0", rich="13.0.0")
    current = _env(scikit_learn="1.4.0", numpy="1.26.4", requests="2.31.1", httpx="0.27.0")
    current["python"] = "3.12.1"
    found = {d.name: d for d in compare_environments(recorded, current, ["scikit-learn"])}
    assert (found["scikit-learn"].kind, found["scikit-learn"].level) == ("framework", "minor")
    assert (found["numpy"].kind, found["numpy"].level) == ("numpy", "major")
    assert (found["python"].kind, found["python"].level) == ("python", "minor")
    assert found["requests"].level == "patch" and found["requests"].kind == "package"
    assert found["rich"].level == "missing" and found["httpx"].level == "added"
    ordered = [d.name for d in compare_environments(recorded, current, ["scikit-learn"])]
    assert ordered.index("numpy") < ordered.index("requests")


def test_policies_and_overrides() -> None:
    recorded = _env(scikit_learn="1.5.2", numpy="2.1.0", requests="2.31.0")
    current = _env(scikit_learn="1.5.3", numpy="2.1.0", requests="3.0.0")
    found = compare_environments(recorded, current, ["scikit-learn"])
    strict = evaluate(found, EnvPolicy.parse("strict"))
    assert strict.ok and {d.name for d in strict.warnings} == {"scikit-learn", "requests"}
    tight = evaluate(found, EnvPolicy.parse("strict,framework-patch=strict,package=off"))
    assert [d.name for d in tight.refusals] == ["scikit-learn"] and tight.warnings == []
    assert evaluate(found, EnvPolicy.parse("off")).warnings == []
    assert str(EnvPolicy.parse("warn,python-minor=strict")) == "warn,python-minor=strict"
    for bad in ("lenient", "strict,framework=maybe", "strict,gpu=off", "strict,numpy-tiny=off"):
        with pytest.raises(InvalidInput):
            EnvPolicy.parse(bad)


def test_enforce_names_packages_versions_and_the_fix() -> None:
    found = compare_environments(
        _env(scikit_learn="1.5.2", numpy="2.1.0"),
        _env(scikit_learn="1.3.0", numpy="2.1.0"),
        ["scikit-learn"],
    )
    with pytest.raises(EnvironmentMismatch) as info:
        evaluate(found, EnvPolicy.parse("strict")).enforce(subject="fraud@1.2.0")
    text = str(info.value)
    assert "fraud@1.2.0" in text and "1.5.2" in text and "1.3.0" in text
    assert "pip install 'scikit-learn==1.5.2'" in text
    with pytest.warns(EnvironmentWarning, match="scikit-learn"):
        evaluate(found, EnvPolicy.parse("warn")).enforce(subject="fraud@1.2.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(found, EnvPolicy.parse("off")).enforce(subject="fraud@1.2.0")


def test_exports_pin_everything() -> None:
    env = _env(scikit_learn="1.5.2", numpy="2.1.0", pip="24.0")
    requirements = export_requirements(env)
    assert "scikit-learn==1.5.2" in requirements and "numpy==2.1.0" in requirements
    assert "pip==" not in requirements
    dockerfile = export_dockerfile(env)
    assert "FROM python:3.11.7-slim" in dockerfile and "pip install" in dockerfile
    gpu = dict(env, accelerators=[{"kind": "cuda"}])
    assert "CUDA" in export_dockerfile(gpu)


def test_the_fast_metadata_reader_agrees_with_importlib_on_every_distribution() -> None:
    """capture reads METADATA headers itself (the email parser cost ~1 ms a distribution);
    on every distribution installed here it must find what importlib.metadata finds."""
    from tether._environment.capture import _headers

    compared = 0
    for dist in metadata.distributions():
        text = dist.read_text("METADATA")
        if text is None:
            continue
        name, version, requires = _headers(text)
        assert name == dist.metadata["Name"], dist
        assert version == dist.version, name
        assert requires == list(dist.requires or []), name
        compared += 1
    assert compared > 20
    folded = "Name: a\nVersion: 1\nLicense: x\n \n  more\nRequires-Dist: b\n\nbody: no\n"
    assert _headers(folded) == ("a", "1", ["b"])

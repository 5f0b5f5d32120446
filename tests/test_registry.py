"""The embedded registry end to end: log, number, resolve, load, verify."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

import tether
from tether import (
    AmbiguousReference,
    Conflict,
    EnvironmentMismatch,
    IncompatibleBump,
    IntegrityError,
    InvalidReference,
    NotFound,
    PolicyViolation,
    Registry,
    RegistryNotFound,
)
from tether._environment import capture_environment

from .conftest import fit_logreg, pack_files


def _log(registry: Registry, model: Any, iris: tuple[Any, Any], **kw: Any) -> tether.ModelVersion:
    X, _ = iris
    kw.setdefault("input_example", X.head(5))
    return registry.log_model(model, "iris", **kw)


# -- creating and finding ------------------------------------------------------


def test_init_refuses_an_existing_registry_and_a_foreign_folder(tmp_path: Path) -> None:
    tether.init(tmp_path / "a").close()
    with pytest.raises(tether.Conflict, match="already exists"):
        tether.init(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(tether.InvalidInput, match="not empty"):
        tether.init(tmp_path / "b")
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_open_a_folder_that_is_not_a_registry(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(RegistryNotFound, match="not a Tether registry") as info:
        tether.open(tmp_path / "plain")
    assert "tether init" in str(info.value)
    with pytest.raises(RegistryNotFound, match="does not exist"):
        tether.open(tmp_path / "missing")


def test_registry_is_found_from_cwd_and_tether_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tether.init(tmp_path / "proj" / ".tether").close()
    (tmp_path / "proj" / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj" / "src" / "deep")
    with tether.open() as reg:
        assert reg.location.root == tmp_path / "proj" / ".tether"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TETHER_URI", str(tmp_path / "proj"))
    with tether.open() as reg:
        assert reg.location.root == tmp_path / "proj" / ".tether"


# -- logging and numbering -----------------------------------------------------


def test_first_version_captures_everything(registry: Registry, iris: tuple[Any, Any]) -> None:
    X, _y = iris
    v = _log(
        registry,
        fit_logreg(iris),
        iris,
        params={"C": 1.0},
        metrics={"acc": 0.97},
        data={"train": X},
        notes="first",
    )
    assert (v.seq, v.semver, v.status) == (1, "1.0.0", "ready")
    assert len(v.digest) == 64 and v.short_digest == "sha:" + v.digest[:12]
    assert v.flavor["name"] == "sklearn"
    assert v.environment["packages"]["numpy"]
    assert v.environment["python"].count(".") == 2
    assert [f["name"] for f in v.signature["inputs"]["fields"]] == list(X.columns)
    assert v.data["train"]["digest"]
    assert v.author == "tester@example.com"
    assert v.params == {"C": 1.0} and v.metrics == {"acc": 0.97}


def test_git_lineage_is_captured_with_dirty_flag(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "-C", str(work)]
    subprocess.run([*git, "init", "-q"], check=True)
    (work / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(work)
    clean = _log(registry, fit_logreg(iris), iris)
    assert clean.lineage["git"]["commit"] == commit
    assert clean.lineage["git"]["dirty"] is False
    (work / "train.py").write_text("print(2)\n")
    dirty = _log(registry, fit_logreg(iris, C=0.5), iris)
    assert dirty.lineage["git"]["dirty"] is True
    assert dirty.lineage["git"]["diff_digest"]


def test_semantic_versions_follow_the_change(registry: Registry, iris: tuple[Any, Any]) -> None:
    v1 = _log(registry, fit_logreg(iris), iris, metrics={"acc": 0.9})
    v2 = _log(registry, fit_logreg(iris, C=0.1), iris, metrics={"acc": 0.9})
    assert v2.semver == "1.1.0"  # new weights
    v3 = _log(registry, fit_logreg(iris, C=0.1), iris, metrics={"acc": 0.95})
    assert v3.semver == "1.1.1"  # metadata only
    narrow = list(iris[0].columns[:2])
    with pytest.raises(IncompatibleBump) as info:
        registry.log_model(
            fit_logreg(iris, columns=narrow),
            "iris",
            input_example=iris[0][narrow].head(5),
            bump="minor",
        )
    assert "major" in str(info.value) and "removed" in str(info.value)
    assert [v.semver for v in registry.versions("iris")] == ["1.0.0", "1.1.0", "1.1.1"]
    v4 = registry.log_model(
        fit_logreg(iris, columns=narrow), "iris", input_example=iris[0][narrow].head(5)
    )
    assert v4.semver == "2.0.0"
    assert [v.seq for v in registry.versions("iris")] == [1, 2, 3, 4]
    assert v1.digest != v2.digest


def test_a_larger_bump_or_explicit_version_is_allowed(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _log(registry, fit_logreg(iris), iris)
    assert _log(registry, fit_logreg(iris, C=0.3), iris, bump="major").semver == "2.0.0"
    assert _log(registry, fit_logreg(iris, C=0.2), iris, bump="3.5.0").semver == "3.5.0"
    with pytest.raises(IncompatibleBump):
        _log(registry, fit_logreg(iris, C=0.25), iris, bump="patch")


def test_identical_content_returns_the_existing_version(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    model = fit_logreg(iris)
    first = _log(registry, model, iris, params={"C": 1.0}, metrics={"acc": 0.9})
    again = _log(registry, model, iris, params={"C": 1.0}, metrics={"acc": 0.9})
    assert (again.seq, again.digest) == (first.seq, first.digest)
    assert len(registry.versions("iris")) == 1


def test_bad_log_arguments(registry: Registry, iris: tuple[Any, Any]) -> None:
    with pytest.raises(tether.InvalidInput, match="not a number"):
        _log(registry, fit_logreg(iris), iris, metrics={"acc": "high"})
    with pytest.raises(InvalidReference):
        registry.log_model(fit_logreg(iris), "bad name!")
    assert registry.models() == []


# -- references ----------------------------------------------------------------


def test_every_reference_form_resolves(registry: Registry, iris: tuple[Any, Any]) -> None:
    v1 = _log(registry, fit_logreg(iris), iris)
    v2 = _log(registry, fit_logreg(iris, C=0.2), iris)
    registry.promote("iris@1.0.0", "production", create=True)
    assert registry.get("iris@production").seq == 1
    assert registry.get("iris@1.1.0").seq == 2
    assert registry.get("iris@~1").seq == 2
    assert registry.get("iris@~1.0").seq == 1
    assert registry.get("iris@1").semver == "1.0.0"
    assert registry.get(f"iris@sha:{v2.digest[:8]}").seq == 2
    assert registry.get("iris@latest").seq == 2
    assert registry.get("iris").seq == 2
    assert v1.aliases == () and registry.get("iris@1").aliases == ("production",)


def test_unknown_references_list_what_exists(registry: Registry, iris: tuple[Any, Any]) -> None:
    _log(registry, fit_logreg(iris), iris)
    registry.promote("iris@1.0.0", "staging", create=True)
    with pytest.raises(NotFound) as info:
        registry.get("iris@9.9.9")
    assert "1.0.0 (#1)" in str(info.value) and "staging -> 1.0.0" in str(info.value)
    with pytest.raises(NotFound, match="no model named 'nope'") as info:
        registry.get("nope@production")
    assert "iris" in str(info.value)
    with pytest.raises(NotFound, match="alias 'production'"):
        registry.get("iris@production")
    for bad in ("iris@", "@1.0.0", "iris@sha:zz", "iris@1.0", "iris@~x"):
        with pytest.raises(InvalidReference):
            registry.get(bad)


def test_an_ambiguous_digest_prefix_is_refused(registry: Registry, iris: tuple[Any, Any]) -> None:
    from tether._metadata import repository as repo

    real = _log(registry, fit_logreg(iris), iris)
    with registry.write() as conn:
        mid = repo.model_id(conn, "iris")
        assert mid is not None
        row = repo.version_by_id(conn, real.id)
        assert row is not None
        values = {c: getattr(row, c) for c in row._fields if c not in ("id", "model_id")}
        values.update(seq=2, semver="1.0.1", patch=1, digest=real.digest[:6] + "0" * 58,
                      manifest=real.files)
        repo.insert_version(conn, mid, {k: v for k, v in values.items()})
    with pytest.raises(AmbiguousReference, match="matches 2 versions"):
        registry.get(f"iris@sha:{real.digest[:6]}")


# -- loading -------------------------------------------------------------------


def test_load_returns_an_equivalent_model(registry: Registry, iris: tuple[Any, Any]) -> None:
    model = fit_logreg(iris)
    v = _log(registry, model, iris)
    loaded = registry.load("iris@1.0.0")
    assert (loaded.predict(iris[0]) == model.predict(iris[0])).all()
    assert registry.load("iris", expect=v.short_digest) is not None
    with pytest.raises(IntegrityError, match="not the expected"):
        registry.load("iris", expect="sha:000000000000")
    # Four hex digits were taken: a version made to start with them is 65,536 tries away.
    with pytest.raises(tether.InvalidInput, match="too short a pin"):
        registry.load("iris", expect=v.short_digest[:8])
    with pytest.raises(tether.InvalidInput, match="is not a digest"):
        registry.load("iris", expect="production-2026-11-28")  # an alias, not a digest


def test_a_flipped_byte_in_the_store_is_refused_naming_the_file(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _log(registry, fit_logreg(iris), iris)
    packs = pack_files(registry)
    assert packs, "expected pack files in the local store"
    target = max(packs, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        registry.load("iris@1.0.0")
    assert "model.skops" in str(info.value) and "iris@1.0.0" in str(info.value)
    assert registry.verify("iris@1.0.0")


def test_environment_mismatch_is_refused_with_a_fix(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _log(registry, fit_logreg(iris), iris)
    recorded = registry.get("iris").environment["packages"]["scikit-learn"]
    other = capture_environment()
    other["packages"]["scikit-learn"] = "0.24.2"
    with pytest.raises(EnvironmentMismatch) as info:
        registry.load("iris", environment=other)
    text = str(info.value)
    assert "scikit-learn" in text and "0.24.2" in text and recorded in text
    assert f"pip install 'scikit-learn=={recorded}'" in text
    with pytest.warns(tether.EnvironmentWarning):
        registry.load("iris", environment=other, env_policy="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.load("iris", environment=other, env_policy="off")


def test_env_policy_from_variable_and_registry_setting(
    registry: Registry, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _log(registry, fit_logreg(iris), iris)
    other = capture_environment()
    other["packages"]["numpy"] = "1.0.0"
    registry.set_setting("env_policy", "off")
    registry.load("iris", environment=other)
    monkeypatch.setenv("TETHER_ENV_POLICY", "strict")
    with pytest.raises(EnvironmentMismatch, match="numpy"):
        registry.load("iris", environment=other)
    with pytest.raises(tether.InvalidInput):
        registry.set_setting("env_policy", "lenient")


def test_files_and_python_flavors(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 1000)
    (folder / "sub" / "vocab.txt").write_text("a\nb\n")
    v = registry.log_model(folder, "embeddings")
    assert v.flavor["name"] == "files"
    path = registry.load("embeddings")
    assert (Path(path) / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    assert (Path(path) / "sub" / "vocab.txt").read_text() == "a\nb\n"

    def double(rows: list[float]) -> list[float]:
        return [2 * r for r in rows]

    registry.log_model(double, "doubler")
    with pytest.raises(tether.UnsafeArtifact):
        registry.load("doubler")
    assert registry.load("doubler", trusted=True)([1.0, 2.0]) == [2.0, 4.0]


# -- aliases, audit ---------------------------------------------------------------


def test_promote_rollback_history(registry: Registry, iris: tuple[Any, Any]) -> None:
    for C in (1.0, 0.5, 0.2):
        _log(registry, fit_logreg(iris, C=C), iris)
    for ref in ("iris@1.0.0", "iris@1.1.0", "iris@1.2.0"):
        registry.promote(ref, "production", reason="test", create=True)
    assert registry.get("iris@production").semver == "1.2.0"
    assert registry.rollback("iris", "production").version == "1.1.0"
    assert registry.rollback("iris", "production").version == "1.0.0"
    with pytest.raises(NotFound, match="no earlier target"):
        registry.rollback("iris", "production")
    assert registry.get("iris@production").semver == "1.0.0"
    actions = [m.action for m in registry.alias_history("iris", "production")]
    assert actions == ["rollback", "rollback", "set", "set", "set"]
    with pytest.raises(NotFound):
        registry.rollback("iris", "staging")
    with pytest.raises(InvalidReference):
        registry.promote("iris@1.0.0", "latest", create=True)


def test_deprecated_versions_warn_and_cannot_be_promoted(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _log(registry, fit_logreg(iris), iris)
    registry.deprecate("iris@1.0.0", reason="leaks labels")
    with pytest.raises(PolicyViolation, match="deprecated"):
        registry.promote("iris@1.0.0", "production", create=True)
    with pytest.warns(tether.DeprecatedVersionWarning):
        registry.load("iris@1.0.0")


def test_audit_action_filters_are_prefixes_not_patterns(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    """`?action=_` (or `%`) matched every event: the prefix went into LIKE unescaped."""
    _log(registry, fit_logreg(iris), iris)
    registry.promote("iris@1.0.0", "production", create=True)
    assert [e.action for e in registry.audit_log(action="alias.")] == ["alias.set"]
    assert registry.audit_log(action="_") == [] and registry.audit_log(action="%") == []
    assert registry.audit_log(action="alias_set") == []


def test_audit_log_records_and_detects_tampering(registry: Registry, iris: tuple[Any, Any]) -> None:
    import sqlite3

    _log(registry, fit_logreg(iris), iris)
    registry.promote("iris@1.0.0", "production", create=True)
    events = registry.audit_log()
    assert [e.action for e in events][:2] == ["alias.set", "version.logged"]
    assert events[0].actor == "tester@example.com" and events[0].after == "1.0.0"
    count, problems = registry.verify_audit()
    assert count == len(events) and problems == []

    db = registry.location.db_url.removeprefix("sqlite:///")
    registry.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET actor = 'mallory' WHERE action = 'version.logged'")
    reopened = tether.open(registry.location.root)
    _, problems = reopened.verify_audit()
    assert problems and "edited" in " ".join(problems)
    reopened.close()

    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE events SET actor = 'tester@example.com' WHERE action = 'version.logged'"
        )
        conn.execute("DELETE FROM events WHERE id = (SELECT max(id) FROM events)")
    reopened = tether.open(registry.location.root)
    _, problems = reopened.verify_audit()
    assert problems
    reopened.close()


def test_diff_reports_params_metrics_signature_and_bytes(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _log(registry, fit_logreg(iris), iris, params={"C": 1.0}, metrics={"acc": 0.9})
    _log(registry, fit_logreg(iris, C=0.5), iris, params={"C": 0.5}, metrics={"acc": 0.95})
    result = registry.diff("iris@1.0.0", "iris@1.1.0")
    assert result["params"] == [{"name": "C", "change": "changed", "old": 1.0, "new": 0.5}]
    assert result["metrics"][0]["delta"] == pytest.approx(0.05)
    assert result["signature"]["compatible"] is True
    assert result["files"]["files"][0]["change"] == "changed"
    assert result["environment"] == []


def test_schema_head_read_from_the_scripts_matches_alembic() -> None:
    from alembic.script import ScriptDirectory

    from tether._metadata.engine import _MIGRATIONS, head_revision

    assert head_revision() == ScriptDirectory(str(_MIGRATIONS)).get_current_head()


def test_versions_sharing_a_digest_resolve_by_it(registry: Registry, tmp_path: Path) -> None:
    """The same bytes logged again with other notes is a new version with the same digest
    (notes are not in it); resolving by that digest, as serving, lock pins and `tether
    check` do, was refused as ambiguous ("give more digits"), so `tether serve` of such
    an alias failed."""
    (tmp_path / "w.bin").write_bytes(b"x" * 1000)
    first = registry.log_model(tmp_path / "w.bin", "s", notes="one", progress=False)
    second = registry.log_model(tmp_path / "w.bin", "s", notes="two", progress=False)
    assert first.digest == second.digest and first.seq != second.seq
    assert registry.get(f"s@sha:{first.digest}").seq == second.seq
    assert registry.get(f"s@sha:{first.digest[:10]}").seq == second.seq
    registry.promote(first.ref, "production", create=True)
    registry.lock_add("s@production", path=tmp_path / "tether.lock")
    assert registry.load("s@production", progress=False) is not None


def test_rollback_skips_an_earlier_target_with_the_same_bytes(
    registry: Registry, tmp_path: Path
) -> None:
    """1.1.0 and 1.1.1 hold the same bytes (logged again with other notes); rolling back
    from 1.1.1 went to 1.1.0, which kept serving what had failed."""
    (tmp_path / "good.bin").write_bytes(b"good" * 100)
    (tmp_path / "bad.bin").write_bytes(b"bad" * 100)
    good = registry.log_model(tmp_path / "good.bin", "m", progress=False)
    bad = registry.log_model(tmp_path / "bad.bin", "m", progress=False)
    again = registry.log_model(tmp_path / "bad.bin", "m", notes="again", progress=False)
    assert bad.digest == again.digest
    for version in (good, bad, again):
        registry.promote(version.ref, "production", create=True)
    move = registry.rollback("m", "production", from_digest=again.digest)
    assert (move.previous, move.version) == (again.semver, good.semver)


def test_a_late_rollback_does_not_undo_a_promotion_made_since(
    registry: Registry, tmp_path: Path
) -> None:
    """Rollback by digest alone let a replica that saw 1.1.0 fail roll back again after an
    operator had promoted 1.1.0 once more (same digest): the alias's generation says the
    alias moved since that replica looked."""
    (tmp_path / "good.bin").write_bytes(b"good" * 100)
    (tmp_path / "bad.bin").write_bytes(b"bad" * 100)
    good = registry.log_model(tmp_path / "good.bin", "m", progress=False)
    bad = registry.log_model(tmp_path / "bad.bin", "m", progress=False)
    registry.promote(good.ref, "production", create=True)
    registry.promote(bad.ref, "production")
    seen = registry.alias("m", "production")["generation"]  # both replicas serve 1.1.0
    registry.rollback("m", "production", from_digest=bad.digest, from_generation=seen)
    registry.promote(bad.ref, "production", reason="fixed upstream, trying again")
    with pytest.raises(Conflict, match="moved since generation"):
        registry.rollback("m", "production", from_digest=bad.digest, from_generation=seen)
    assert registry.get("m@production").semver == bad.semver


def test_a_new_alias_that_reads_as_a_protected_one_is_refused(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    """A contributor could make 'Production' or 'production.' beside the guarded alias."""
    _log(registry, fit_logreg(iris), iris)
    for look_alike in ("Production", "production.", "PRODUCTION", "production_"):
        with pytest.raises(tether.InvalidInput, match="reads as the guarded alias"):
            registry.promote("iris@1.0.0", look_alike, create=True)
    registry.promote("iris@1.0.0", "production", create=True)
    registry.promote("iris@1.0.0", "production-eu", create=True)  # another name altogether
    assert set(registry.get("iris@1.0.0").aliases) == {"production", "production-eu"}


def test_an_alias_that_reads_as_a_version_is_refused(registry: Registry, tmp_path: Path) -> None:
    """The harm: 'v2.0.0' pointed at 1.0.0 could be set, but m@v2.0.0 is semantic version
    2.0.0, so the reference loaded another version than the alias named, once 2.0.0
    was logged. Refused when set (a word like 'release-2.0.0' is fine); the model's
    versions and their references are untouched."""
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    (tmp_path / "b.bin").write_bytes(b"b" * 100)
    first = registry.log_model(tmp_path / "a.bin", "m", progress=False)
    for reads_as_a_version in ("v2.0.0", "v0.1.0", "v1.0.0"):
        with pytest.raises(tether.InvalidReference, match="reads as a version"):
            registry.promote(first.ref, reads_as_a_version, create=True)
    registry.promote(first.ref, "release-2.0.0", create=True)
    registry.promote(first.ref, "V2", create=True)  # not a version: m@V2 is this alias
    second = registry.log_model(tmp_path / "b.bin", "m", bump="major", progress=False)
    assert second.semver == "2.0.0"
    assert registry.get("m@v2.0.0").digest == second.digest
    assert registry.get("m@release-2.0.0").digest == first.digest
    assert registry.get("m@V2").digest == first.digest

    # One an older Tether made can still be moved, rolled back and deleted.
    from tether._registry import aliases

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aliases, "refuse_a_version_name", lambda alias: None)
        registry.promote(first.ref, "v3.0.0", create=True)
    registry.promote(second.ref, "v3.0.0")
    registry.rollback("m", "v3.0.0")
    assert registry.alias("m", "v3.0.0")["version"] == first.semver
    # MLflow's API answers it by the version it points at (it asked for m@v3.0.0: 404).
    from starlette.testclient import TestClient

    from tether.server.app import create_app

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aliases, "refuse_a_version_name", lambda alias: None)
        registry.promote(first.ref, "v2.0.0", create=True)  # as 2.0.0 exists
    mlflow = TestClient(create_app(registry, open_access=True))
    for alias, number in (("v3.0.0", "1"), ("v2.0.0", "1")):
        answer = mlflow.get("/api/2.0/mlflow/registered-models/alias",
                            params={"name": "m", "alias": alias})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"]["version"] == number
    registry.delete_alias("m", "v3.0.0")


def test_a_trusted_deployment_takes_an_admin_and_targets_that_cannot_be_moved_under_it(
        registry: Registry, tmp_path: Path) -> None:
    """The harm (a review): a contributor on one model re-applied a deployment with
    ``trusted: true`` and its own pickle; every replica ran it. Now ``trusted`` takes an
    admin, and its targets must stay what the admin saw (a fixed version, or an alias
    only approvers move); a contributor still moves traffic among them."""
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    first = registry.log_model(tmp_path / "a.bin", "m", progress=False)
    registry.promote(first.ref, "production", create=True)
    registry.promote(first.ref, "staging", create=True)
    registry.create_token("mallory@example.com", role="contributor", model="m")
    mallory = registry.as_actor("mallory@example.com", enforce_roles=True)

    def spec(target: str, trusted: bool = True) -> dict[str, Any]:
        return {"endpoints": {"m": {"routes": [{"name": "main", "target": target,
                                                "weight": 100}], "trusted": trusted}}}

    mallory.apply_deployment("svc", spec("m@staging", trusted=False))  # untrusted: fine
    with pytest.raises(tether.PermissionDenied, match="needs role admin"):
        mallory.apply_deployment("svc", spec(first.ref))
    for movable in ("m@staging", "m@latest", "m@~1"):
        with pytest.raises(tether.InvalidInput, match="not a fixed version or a protected"):
            registry.apply_deployment("svc", spec(movable))
    with pytest.raises(tether.InvalidInput, match="a digest prefix"):
        registry.apply_deployment("svc", spec(f"m@sha:{first.digest[:12]}"))
    for fixed in (first.ref, f"m@sha:{first.digest}", "m@production"):
        registry.apply_deployment("svc", spec(fixed))
    assert registry.deployment("svc")["spec"]["endpoints"]["m"]["trusted"] is True

    # Nor through a rollback (a second review): a contributor's untrusted revision, then
    # the trusted one restored, then a route rolled back into the contributor's version.
    trusted_revision = registry.apply_deployment("svc", spec(first.ref))["revision"]
    (tmp_path / "b.bin").write_bytes(b"b" * 100)
    mine = mallory.log_model(tmp_path / "b.bin", "m", progress=False)
    mallory.apply_deployment("svc", {"endpoints": {"m": {"routes": [
        {"name": "main", "target": mine.ref, "weight": 100}]}}})
    with pytest.raises(tether.PermissionDenied, match="needs role admin"):
        mallory.rollback_deployment("svc", to_revision=trusted_revision)
    registry.apply_deployment("svc", spec(first.ref))  # an admin makes it trusted again
    with pytest.raises(tether.Conflict, match="no earlier version and no other route"):
        mallory.rollback_route("svc", endpoint="m", route="main",
                               failing=f"sha:{first.digest}")
    routes = registry.deployment("svc")["spec"]["endpoints"]["m"]["routes"]
    assert [r["target"] for r in routes] == [first.ref]  # never the contributor's

    # Nor by un-protecting an alias a trusted endpoint follows (any contributor could
    # then move it under the replicas).
    registry.apply_deployment("svc", spec("m@production"))
    with pytest.raises(tether.InvalidInput, match="trusted endpoint m follows m@production"):
        registry.set_setting("protected_aliases", "release")
    assert registry.get_setting("protected_aliases") is None  # unchanged
    registry.apply_deployment("svc", spec(first.ref))
    registry.set_setting("protected_aliases", "release")  # nothing trusted follows it now


def test_metadata_nested_past_any_real_record_is_refused_at_commit(
        registry: Registry, tmp_path: Path) -> None:
    """A thousand levels in a flavor record (the Python API takes any dict) broke the
    version digest with a RecursionError, a traceback instead of a message."""
    import dataclasses

    from tether._errors import TooDeep

    (tmp_path / "w.bin").write_bytes(b"w" * 100)
    version = registry.log_model(tmp_path / "w.bin", "deep", flavor="files", progress=False)
    deep: Any = "leaf"
    for _ in range(2000):
        deep = {"a": deep}
    from tether._records import VersionValues

    values = VersionValues(manifest=tuple(version.files), flavor={**version.flavor, "x": deep},
                           signature=None, input_example=None, params={}, metrics={},
                           data={}, lineage={}, environment=version.environment, tags={},
                           notes="", author="a")
    with pytest.raises(TooDeep, match=r"values.flavor is nested deeper than 64 levels"):
        registry.commit("deep", values, None)
    shallow = dataclasses.replace(values, flavor={**version.flavor, "x": {"a": {"b": 1}}})
    assert registry.commit("deep", shallow, None).seq == 2


def test_a_reference_that_is_not_text_is_an_invalid_reference(registry: Registry) -> None:
    for bad in (None, 5, b"m@1"):
        with pytest.raises(tether.InvalidReference):
            registry.load(bad)  # type: ignore[arg-type]
        with pytest.raises(tether.InvalidReference):
            registry.get(bad)  # type: ignore[arg-type]


def test_a_folder_whose_name_starts_like_a_database_url_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tether --registry` takes a database URL (sqlite:///..., postgresql://...) as a
    server's registry; a relative folder named sqlite-models is still a folder."""
    monkeypatch.chdir(tmp_path)
    tether.init("sqlite-models/.tether", actor="tester@example.com").close()
    with tether.open("sqlite-models/.tether") as registry:
        assert registry.location.root == (tmp_path / "sqlite-models" / ".tether").resolve()

"""Policies, approvals, roles, signatures, tether.lock, the CI gate, reproduce."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tether
from tether import InvalidInput, PermissionDenied, PolicyViolation, Registry
from tether._policy import parse_policy
from tether._registry.pinning import PinnedVersionWarning

from .conftest import fit_logreg, subprocess_env, tether_exe


def _two_versions(registry: Registry, iris: tuple[Any, Any]) -> None:
    X, _ = iris
    registry.log_model(fit_logreg(iris), "iris", metrics={"acc": 0.95}, input_example=X.head(3))
    registry.log_model(
        fit_logreg(iris, C=0.01), "iris", metrics={"acc": 0.80}, input_example=X.head(3)
    )


def as_user(registry: Registry, user: str) -> Registry:
    return Registry(registry.location, actor=user)


# -- policy files -----------------------------------------------------------------


def test_policy_parser_refuses_unknown_rules() -> None:
    with pytest.raises(InvalidInput, match="unknown rule"):
        parse_policy("aliases:\n  production:\n    checks:\n      - metrik: acc\n")
    with pytest.raises(InvalidInput, match="unknown key"):
        parse_policy("aliasses: {}\n")
    with pytest.raises(InvalidInput, match="unknown option"):
        parse_policy("aliases:\n  production:\n    checks:\n      - {metric: acc, minimum: 1}\n")
    with pytest.raises(InvalidInput, match="unknown role"):
        parse_policy("aliases:\n  production:\n    roles: [boss]\n")
    with pytest.raises(InvalidInput, match="environment"):
        parse_policy("aliases:\n  production:\n    checks:\n      - environment: sometimes\n")
    policy = parse_policy(
        "aliases:\n  production:\n    roles: [approver]\n    approvals: 1\n"
        "    checks:\n      - {metric: acc, min: 0.9}\n      - schema_compatible: true\n"
        "retention: {keep_last: 3}\ndeprecated: ['~0']\n"
    )
    assert policy.keep_last == 3 and policy.is_deprecated("0.4.1")


def test_policy_is_versioned_and_bad_files_change_nothing(
    registry: Registry, iris: tuple[Any, Any]
) -> None:
    _two_versions(registry, iris)
    assert registry.set_policy("iris", "retention: {keep_last: 5}\n")["revision"] == 1
    with pytest.raises(InvalidInput):
        registry.set_policy("iris", "aliases: {production: {checks: [{nope: 1}]}}\n")
    assert registry.set_policy("iris", "retention: {keep_last: 6}\n")["revision"] == 2
    shown = registry.get_policy("iris")
    assert shown["revisions"] == [1, 2] and "6" in shown["text"]
    assert "5" in registry.get_policy("iris", 1)["text"]


def test_promote_explains_every_failed_rule(registry: Registry, iris: tuple[Any, Any]) -> None:
    _two_versions(registry, iris)
    registry.set_policy(
        "iris",
        (
            "aliases:\n  production:\n    approvals: 1\n    checks:\n"
            "      - {metric: acc, min: 0.9}\n"
            "      - {metric: acc, not_worse_than_current: 0.01}\n"
        ),
    )
    registry.grant("alice", "approver")
    as_user(registry, "alice").approve("iris@1.0.0", "production")
    registry.promote("iris@1.0.0", "production", create=True)
    with pytest.raises(PolicyViolation) as info:
        registry.promote("iris@1.1.0", "production", create=True)
    text = str(info.value)
    assert "below the minimum 0.9" in text
    assert "worse than 1.0.0's" in text
    assert "needs 1 approval" in text and "tether approve" in text
    assert registry.get("iris@production").semver == "1.0.0"


def test_schema_environment_and_metric_max_rules_each_refuse(
    registry: Registry, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules the policy parser knows, each shown refusing (only min had a test)."""
    from tether._environment import capture_environment
    from tether._registry import log_version

    X, _ = iris
    registry.log_model(fit_logreg(iris), "iris", metrics={"latency_ms": 4.0},
                       input_example=X.head(3))
    registry.promote("iris@1", "production", create=True)
    registry.set_policy("iris", (
        "aliases:\n  production:\n    checks:\n"
        "      - {metric: latency_ms, max: 10}\n      - schema_compatible: true\n"
        "      - environment: strict\n"))
    columns = list(X.columns[:2])
    narrow = registry.log_model(fit_logreg(iris, columns=columns), "iris",
                                metrics={"latency_ms": 25.0}, input_example=X[columns].head(3))
    with pytest.raises(PolicyViolation) as info:
        registry.promote(narrow.ref, "production")
    text = str(info.value)
    assert "latency_ms" in text and "above the maximum 10" in text
    assert "schema" in text and registry.get("iris@production").seq == 1

    recorded = capture_environment()
    older = {**recorded, "packages": {**recorded["packages"], "scikit-learn": "0.20.0"}}
    monkeypatch.setattr(log_version, "capture_environment", lambda: older)
    stale = registry.log_model(fit_logreg(iris, C=0.5), "iris", metrics={"latency_ms": 3.0},
                               input_example=X.head(3))
    with pytest.raises(PolicyViolation, match="scikit-learn"):
        registry.promote(stale.ref, "production")
    assert registry.get("iris@production").seq == 1


def test_lock_remove_drops_pins_and_refuses_names_not_pinned(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """The lock file itself says "edit with tether lock add/update/remove"; remove was missing."""
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    registry.lock_add("iris@1", path=lock)
    env = subprocess_env(TETHER_URI=str(registry.location.root))
    refused = subprocess.run([tether_exe(), "lock", "remove", "nope", "--lock", str(lock)],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and "not pinned" in refused.stderr
    assert "iris" in json.loads(lock.read_text())["models"]
    done = subprocess.run([tether_exe(), "lock", "remove", "iris", "--lock", str(lock)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(lock.read_text())["models"] == {}


def test_roles_approvals_and_authors(registry: Registry, iris: tuple[Any, Any]) -> None:
    _two_versions(registry, iris)
    registry.set_policy(
        "iris", "aliases:\n  production:\n    roles: [approver]\n    approvals: 2\n"
    )
    bob = as_user(registry, "bob")
    with pytest.raises(PermissionDenied, match="needs role approver"):
        bob.approve("iris@1.0.0", "production")
    registry.grant("bob", "approver", model="iris")
    registry.grant("carol", "approver")
    with pytest.raises(PolicyViolation, match="logged"):
        registry.approve("iris@1.0.0", "production")  # the author cannot approve
    bob.approve("iris@1.0.0", "production")
    with pytest.raises(tether.Conflict):
        bob.approve("iris@1.0.0", "production")
    with pytest.raises(PolicyViolation, match="needs 2 approval"):
        bob.promote("iris@1.0.0", "production", create=True)
    as_user(registry, "carol").approve("iris@1.0.0", "production")
    dave = as_user(registry, "dave")
    with pytest.raises(PermissionDenied, match="needs role approver"):  # production is protected
        dave.promote("iris@1.0.0", "production", create=True)
    assert bob.promote("iris@1.0.0", "production", create=True).version == "1.0.0"
    with pytest.raises(PermissionDenied):
        dave.grant("dave", "admin")


def test_signing_and_verification(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    from tether._signing import generate_key

    _two_versions(registry, iris)
    private, public, kid = generate_key(tmp_path / "release")
    other_private, _, _ = generate_key(tmp_path / "intruder")
    registry.trust_key("release", public.read_text())
    registry.set_policy(
        "iris",
        (
            "aliases:\n  production:\n    checks:\n      - signed_by: [release]\n"
            "require_signed_by: [release]\n"
        ),
    )
    with pytest.raises(PolicyViolation, match="signed by release"):
        registry.promote("iris@1.0.0", "production", create=True)
    with pytest.raises(PolicyViolation, match="requires a signature"):
        registry.load("iris@1.0.0")
    with pytest.raises(PermissionDenied, match="not trusted"):  # refused before it is stored
        registry.sign("iris@1.0.0", str(other_private))
    with pytest.raises(PolicyViolation):
        registry.promote("iris@1.0.0", "production", create=True)
    assert registry.sign("iris@1.0.0", str(private))["key_id"] == kid
    assert registry.signatures("iris@1.0.0")[0] == ["release"]
    registry.promote("iris@1.0.0", "production", create=True)
    registry.load("iris@production")

    # A forged signature (bytes of another version's signature) is detected.
    import sqlite3

    db = registry.location.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE signatures SET signature = ? WHERE key_id = ?", ("00" * 64, kid))
    valid, problems = registry.signatures("iris@1.0.0")
    assert valid == [] and any("does not match" in p for p in problems)
    with pytest.raises(PolicyViolation):
        registry.load("iris@1.0.0")


def test_policy_deprecation_and_retention(registry: Registry, iris: tuple[Any, Any]) -> None:
    X, _ = iris
    for C in (1.0, 0.5, 0.2, 0.1):
        registry.log_model(fit_logreg(iris, C=C), "iris", input_example=X.head(3))
    registry.promote("iris@1.0.0", "production", create=True)
    registry.set_policy("iris", "retention: {keep_last: 2}\ndeprecated: ['1.1.0']\n")
    with pytest.raises(PolicyViolation, match="deprecated"):
        registry.promote("iris@1.1.0", "staging", create=True)
    with pytest.warns(tether.DeprecatedVersionWarning):
        registry.load("iris@1.1.0")
    result = registry.gc(grace_seconds=0)
    # 1.0.0 is kept (an alias pointed at it), 1.2.0 and 1.3.0 are the newest two.
    assert result.expired == ["iris@1.1.0"]
    assert [v.semver for v in registry.versions("iris")] == ["1.0.0", "1.2.0", "1.3.0"]
    registry.load("iris@1.2.0")
    assert any(e.action == "version.deleted" for e in registry.audit_log())


# -- tether.lock and the CI gate -----------------------------------------------------


def test_lock_pins_exact_digests_and_warns_when_the_alias_moves(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_versions(registry, iris)
    registry.promote("iris@1.0.0", "production", create=True)
    app = tmp_path / "app"
    app.mkdir()
    monkeypatch.chdir(app)
    _, entry = registry.lock_add("iris@production")
    assert entry.semver == "1.0.0"
    lock = json.loads((app / "tether.lock").read_text())
    assert lock["models"]["iris"]["requires"]["packages"]["scikit-learn"]
    registry.promote("iris@1.1.0", "production", create=True)
    with pytest.warns(PinnedVersionWarning, match="now points at 1.1.0"):
        model = registry.load("iris@production")
    pinned = registry.get("iris@1.0.0")
    assert (model.predict(iris[0]) == registry.load("iris@1.0.0").predict(iris[0])).all()
    assert registry.lock_update() == [("iris", "1.0.0", "1.1.0")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PinnedVersionWarning)
        registry.load("iris@production")
    assert pinned.semver == "1.0.0"


def test_a_tampered_lock_is_refused(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    _two_versions(registry, iris)
    path = tmp_path / "tether.lock"
    registry.lock_add("iris@1.0.0", path=path)
    data = json.loads(path.read_text())
    data["models"]["iris"]["digest"] = registry.get("iris@1.1.0").digest
    path.write_text(json.dumps(data))
    with pytest.raises(tether.IntegrityError, match="edited by hand"):
        registry.check(lock_path=path)


def test_check_reads_lock_files_and_ranges_and_never_compares_nothing(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """Only ``name==version`` lines were read: a uv.lock pinning scikit-learn 1.2.0 (the model
    needs another) or a file of ranges gave no pins, compared nothing, and passed."""
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    registry.lock_add("iris@1.0.0", path=lock)
    packages = registry.get("iris@1.0.0").environment["packages"]
    sk, np_ = packages["scikit-learn"], packages["numpy"]

    def env_result(text: str, name: str) -> Any:
        path = tmp_path / name
        path.write_text(text)
        report = registry.check(lock_path=lock, requirements_path=path)
        return next(r for r in report.results if r.check == "environment")

    uv = env_result('version = 1\n[[package]]\nname = "scikit-learn"\nversion = "1.2.0"\n'
                    f'[[package]]\nname = "numpy"\nversion = "{np_}"\n', "uv.lock")
    assert not uv.ok and "scikit-learn" in uv.message and f"scikit-learn=={sk}" in str(uv.fix)
    poetry = env_result("".join(f'[[package]]\nname = "{n}"\nversion = "{packages[k]}"\n'
                                for n, k in (("scikit_learn", "scikit-learn"), ("numpy", "numpy"),
                                             ("SciPy", "scipy"), ("skops", "skops"))),
                        "poetry.lock")
    assert poetry.ok, poetry.message
    pipfile = env_result(json.dumps({"default": {"scikit-learn": {"version": f"=={sk}"},
                                                 "numpy": {"version": "==1.16.0"}}}),
                         "Pipfile.lock")
    assert not pipfile.ok and "numpy" in pipfile.message
    ranges = env_result("scikit-learn>=1.0\nnumpy\n", "requirements.txt")
    assert not ranges.ok and "allowed, not pinned" in ranges.message
    excluded = env_result(f"scikit-learn<1.0\nnumpy=={np_}\n", "req-excl.txt")
    assert not excluded.ok and f"excludes {sk}" in excluded.message
    absent = env_result("flask==3.0.0\n", "req-absent.txt")
    assert not absent.ok and "scikit-learn" in absent.message and "missing" in absent.message
    (tmp_path / "empty.txt").write_text("# nothing here\n")
    with pytest.raises(tether.InvalidInput, match="names no package"):
        registry.check(lock_path=lock, requirements_path=tmp_path / "empty.txt")


def test_check_catches_an_environment_mismatch_and_a_missing_version(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    registry.lock_add("iris@1.0.0", path=lock)
    version = registry.get("iris@1.0.0")
    sklearn_version = version.environment["packages"]["scikit-learn"]
    numpy_version = version.environment["packages"]["numpy"]
    good = tmp_path / "requirements-good.txt"
    good.write_text(
        f"scikit-learn=={sklearn_version}\nnumpy=={numpy_version}\n"
        f"scipy=={version.environment['packages']['scipy']}\nflask==3.0.0\n"
        f"skops=={version.environment['packages']['skops']}\n"
    )
    assert registry.check(lock_path=lock, requirements_path=good).ok
    bad = tmp_path / "requirements-bad.txt"
    bad.write_text(f"scikit-learn==1.2.0\nnumpy=={numpy_version}\n")
    report = registry.check(lock_path=lock, requirements_path=bad)
    failed = [r for r in report.results if not r.ok]
    assert [r.check for r in failed] == ["environment"]
    assert "scikit-learn" in failed[0].message and f"scikit-learn=={sklearn_version}" in str(
        failed[0].fix
    )
    junit = report.to_junit()
    assert 'failures="1"' in junit and "scikit-learn" in junit

    # A lock that names a version the registry does not have.
    other = tmp_path / "other.lock"
    registry.lock_add("iris@1.1.0", path=other)
    data = json.loads(other.read_text())
    from tether._lockfile import read_lock

    parsed = read_lock(other)
    parsed.models["iris"].digest = "f" * 64
    parsed.save()
    report = registry.check(lock_path=other)
    assert not report.ok and report.results[0].check == "exists"
    assert data  # the original lock was readable


def test_check_schema_declared_by_the_application(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    columns = list(iris[0].columns)
    registry.lock_add("iris@1.0.0", path=lock, sends={c: "double" for c in columns})
    assert registry.check(lock_path=lock, check_environment=False).ok
    registry.lock_add("iris@1.0.0", path=lock, sends={c: "double" for c in columns[:3]})
    report = registry.check(lock_path=lock, check_environment=False)
    schema = next(r for r in report.results if r.check == "schema")
    assert not schema.ok and columns[3] in schema.message


def test_check_cli_exit_code_json_and_junit(
    registry: Registry, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    registry.lock_add("iris@1.0.0", path=lock)
    (tmp_path / "requirements.txt").write_text("scikit-learn==0.20.0\nnumpy==1.16.0\n")
    root = str(registry.location.root)
    proc = subprocess.run(
        [
            tether_exe(),
            "--registry",
            root,
            "check",
            "--lock",
            str(lock),
            "--json",
            "--junit",
            str(tmp_path / "report.xml"),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert (tmp_path / "report.xml").read_text().count("<failure") == 1


def test_reproduce(registry: Registry, iris: tuple[Any, Any], tmp_path: Path) -> None:
    X, _ = iris
    registry.log_model(fit_logreg(iris), "iris", params={"C": 1.0}, data={"train": X})
    info = registry.reproduce("iris@1.0.0")
    assert info["params"] == {"C": 1.0} and info["data"]["train"]["digest"]
    assert any("pip install -r requirements.txt" in s for s in info["steps"])
    from tether._registry.reproduce import write_recipe

    written = {p.name for p in write_recipe(registry.get("iris@1.0.0"), tmp_path / "r")}
    assert {"requirements.txt", "Dockerfile", "params.json", "REPRODUCE.md"} <= written


#: Eight levels of an anchor named ten times: a billion ones once expanded (a review's
#: 471-byte request took 19 s and 4 GB of a server's memory).
YAML_BOMB = "retention: {keep_last: [&a0 [1,1,1,1,1,1,1,1,1,1]" + "".join(
    f", &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 8)) + "]}"


def test_a_policy_is_read_only_for_an_admin_and_never_expanded(
        registry: Registry, tmp_path: Path) -> None:
    import time

    from starlette.testclient import TestClient

    from tether.server.app import create_app

    (tmp_path / "m.bin").write_bytes(b"m")
    registry.log_model(tmp_path / "m.bin", "fraud", progress=False)
    reader = registry.create_token("intern@example.com", role="reader")["token"]
    admin = registry.create_token("owner@example.com", role="admin")["token"]
    client = TestClient(create_app(registry))

    def set_policy(token: str, text: str) -> Any:
        return client.post("/api/v1/call/set_policy", json={"args": ["fraud", text]},
                           headers={"Authorization": f"Bearer {token}"})

    started = time.monotonic()
    refused = set_policy(reader, YAML_BOMB)
    assert refused.status_code == 403 and len(refused.content) < 2000  # asked first
    bomb = set_policy(admin, YAML_BOMB)
    assert bomb.status_code == 400 and "anchors or aliases" in bomb.json()["message"]
    assert time.monotonic() - started < 5
    for text, why in (("aliases: [1]", "must be a mapping"), ("aliases: 5", "must be a mapping"),
                      ("[" * 10000, "nested deeper"), ("- " * 5000 + "x", "nested deeper"),
                      ("deprecated: [" + "'x', " * 20000 + "]", "longer than"),
                      ("retention: {keep_last: '" + "k" * 5000 + "'}", "positive integer"),
                      # A second review: 500s, and policies stored that broke every promote.
                      ("retention: {keep_last: " + "9" * 5000 + "}", "cannot read"),
                      ("retention: {keep_last: -0x" + "f" * 5000 + "}", "positive integer"),
                      ("aliases: {p: {approvals: 0x" + "f" * 20000 + "}}", "from 0 to 100"),
                      ("aliases: {p: {checks: [{metric: [1], min: 1}]}}", "a metric's name"),
                      ("aliases: {p: {checks: [{metric: acc, min: .nan}]}}", "finite")):
        answer = set_policy(admin, text)
        assert answer.status_code == 400 and why in answer.json()["message"], answer.text
        assert len(answer.content) < 2000  # the value is not echoed whole
    with pytest.raises(tether.NotFound, match="has no policy"):
        registry.get_policy("fraud")  # nothing was stored


def test_rollback_and_delete_of_an_alias_keep_to_its_policy(
        registry: Registry, tmp_path: Path) -> None:
    """The harm (a review): promoting to production needed an admin, and 1.0.0 was
    deprecated, yet an approver rolled production back onto 1.0.0 and deleted it."""
    refs = []
    for n in range(3):
        (tmp_path / f"{n}.bin").write_bytes(bytes([n]) * 10)
        refs.append(registry.log_model(tmp_path / f"{n}.bin", "m", progress=False).ref)
    for ref in refs:
        registry.promote(ref, "production", create=True)
    registry.set_policy("m", "aliases:\n  production:\n    roles: [admin]\n"
                             "deprecated: ['1.1.0']\n")
    registry.create_token("alice@example.com", role="approver", model="m")
    alice = registry.as_actor("alice@example.com", enforce_roles=True)
    with pytest.raises(PermissionDenied, match="needs role admin by its policy"):
        alice.rollback("m", "production")
    with pytest.raises(PermissionDenied, match="needs role admin by its policy"):
        alice.delete_alias("m", "production")
    assert registry.alias("m", "production")["version"] == "1.2.0"
    moved = registry.rollback("m", "production")  # past the deprecated 1.1.0
    assert moved.version == "1.0.0"
    registry.promote(refs[2], "production")
    registry.deprecate(refs[0], reason="bad")
    with pytest.raises(tether.NotFound, match=r"not deprecated \(passed over: 1\.0\.0, 1\.1\.0"):
        registry.rollback("m", "production")  # says what was passed over and what to do


def test_a_trusted_key_can_be_removed_and_names_are_names(
        registry: Registry, tmp_path: Path) -> None:
    """There was no way to revoke a leaked key (the hint named `tether key remove`, which
    did not exist); key names took escape sequences, commas and nothing at all; a huge
    key id was written into the audit log twice before being refused (reviews)."""
    from tether._signing import generate_key

    (tmp_path / "m.bin").write_bytes(b"m")
    version = registry.log_model(tmp_path / "m.bin", "m", progress=False)
    key, public, key_id = generate_key(tmp_path / "release.key")
    for bad in ("", "rel,ease", "\x1b]0;PWNED\x07", "-x", "a" * 65):
        with pytest.raises(InvalidInput, match="is not a name"):
            registry.trust_key(bad, public.read_text())
    registry.trust_key("release", public.read_text())
    registry.sign(version.ref, str(key))
    registry.set_policy("m", "require_signed_by: [release]\n")
    assert registry.signatures(version.ref) == (["release"], [])
    events = len(registry.audit_log())
    with pytest.raises(InvalidInput, match="is not 16 hex digits"):
        registry.record_signature(version.ref, "k" * 6_000_000, "00" * 64)
    assert len(registry.audit_log()) == events  # refused before anything was written
    registry.create_token("mallory@example.com", role="contributor", model="m")
    with pytest.raises(PermissionDenied, match="needs role admin"):
        registry.as_actor("mallory@example.com", enforce_roles=True).remove_key("release")
    assert registry.remove_key("release") == {"name": "release", "key_id": key_id}
    valid, problems = registry.signatures(version.ref)
    assert valid == [] and "untrusted key" in problems[0]
    with pytest.raises(tether.PolicyViolation, match="requires a signature by release"):
        registry.load(version.ref)
    assert registry.audit_log(action="key.removed")[0].subject == "release"
    with pytest.raises(tether.NotFound, match="no trusted key named"):
        registry.remove_key("release")


def test_an_approval_counts_only_while_its_approver_holds_the_role(
        registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"m")
    version = registry.log_model(tmp_path / "m.bin", "m", progress=False)
    registry.set_policy("m", "aliases:\n  production:\n    approvals: 1\n")
    registry.create_token("alice@example.com", role="approver", model="m")
    registry.as_actor("alice@example.com", enforce_roles=True).approve(version.ref,
                                                                      "production")
    registry.revoke("alice@example.com", "approver", model="m")
    with pytest.raises(tether.PolicyViolation, match="needs 1 approval"):
        registry.promote(version.ref, "production", create=True)


def test_a_scoped_caller_is_not_told_other_models_or_datasets_names(
        registry: Registry, tmp_path: Path) -> None:
    """The harm (a review): a contributor on one (absent) model was told every model's
    and dataset's name in a 404's hint, and another dataset's versions and aliases by
    promote_dataset, which resolved the version before asking for the role."""
    from starlette.testclient import TestClient

    from tether.server.app import create_app

    (tmp_path / "m.bin").write_bytes(b"m")
    registry.log_model(tmp_path / "m.bin", "fraud", progress=False)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a\n1\n")
    registry.add_dataset(data, "secret-customers")
    scoped = registry.create_token("carl@example.com", role="contributor", model="mine")
    admin = registry.create_token("owner@example.com", role="admin")["token"]
    client = TestClient(create_app(registry))

    def get(path: str, token: str) -> Any:
        return client.get(path, headers={"Authorization": f"Bearer {token}"})

    for path in ("/api/v1/datasets/mine/versions", "/api/v1/models/mine/versions"):
        answer = get(path, scoped["token"])
        assert answer.status_code in (403, 404), answer.text
        assert "fraud" not in answer.text and "secret-customers" not in answer.text
        assert get(path, admin).status_code == 404
    shown = get("/api/v1/models/ghost/versions", admin).json()["hint"]
    assert "fraud" in shown  # an admin still gets the names
    promoted = client.post("/api/v1/call/promote_dataset",
                           json={"args": ["secret-customers@9", "x"]},
                           headers={"Authorization": f"Bearer {scoped['token']}"})
    assert promoted.status_code == 403 and "1.0.0" not in promoted.text
    # Moving an alias: a missing model and one the caller may not touch answer alike
    # (a 404 against a 403 told which names exist: a review).
    carl = registry.as_actor("carl@example.com", enforce_roles=True)
    for model in ("fraud", "ghost"):
        for move in (lambda m=model: carl.promote(f"{m}@1.0.0", "staging", create=True),
                     lambda m=model: carl.rollback(m, "staging"),
                     lambda m=model: carl.delete_alias(m, "staging")):
            with pytest.raises(PermissionDenied):
                move()


def test_a_scoped_caller_cannot_route_to_or_probe_another_model_through_deployments(
        registry: Registry, tmp_path: Path) -> None:
    """The harm (a review): a caller with a role on iris rolled a deployment's route back
    onto payroll, which it could not even read, and applying a deployment told it
    payroll's versions and aliases (targets were resolved before roles were asked)."""
    versions = {}
    for name in ("iris", "payroll"):
        (tmp_path / f"{name}.bin").write_bytes(name.encode())
        versions[name] = registry.log_model(tmp_path / f"{name}.bin", name, progress=False)
    registry.promote(versions["payroll"].ref, "staging", create=True)

    def spec(target: str) -> dict[str, Any]:
        return {"endpoints": {"e": {"routes": [{"name": "main", "target": target,
                                                "weight": 100}]}}}

    registry.apply_deployment("svc", spec(versions["payroll"].ref))
    registry.apply_deployment("svc", spec(versions["iris"].ref))
    registry.create_token("sc@x", role="approver", model="iris")
    scoped = registry.as_actor("sc@x", enforce_roles=True)
    for roll_back in (lambda: scoped.rollback_route("svc", endpoint=None, route="main"),
                      lambda: scoped.rollback_deployment("svc")):
        with pytest.raises(PermissionDenied, match="may not use deployment") as refused:
            roll_back()
        assert "payroll" not in str(refused.value)  # nothing of its history
    routes = registry.deployment("svc")["spec"]["endpoints"]["e"]["routes"]
    assert routes[0]["target"] == versions["iris"].ref  # not moved onto payroll
    for target in ("payroll@9.9.9", "payroll@nope", "ghost@1.0.0"):
        with pytest.raises(PermissionDenied) as refused:
            scoped.apply_deployment("mine", spec(target))
        assert "1.0.0 (#1)" not in str(refused.value) and "staging" not in str(refused.value)


def test_a_deployment_gives_a_deprecated_version_no_more_traffic(
        registry: Registry, tmp_path: Path) -> None:
    """A promotion of a deprecated version was refused, but `deploy apply` pinned one and
    sent it traffic; then (reviews) a kept weight-0 shadow became a 100% route, weights
    or a resume raised its share, and so did lowering, pausing or rolling back the other
    routes (the router splits by share). What already serves it may stay."""
    refs = []
    for n in range(4):
        (tmp_path / f"{n}.bin").write_bytes(bytes([n]) * 10)
        refs.append(registry.log_model(tmp_path / f"{n}.bin", "m", progress=False).ref)

    def spec(*routes: tuple[str, float], shadow: tuple[str, ...] = (),
             endpoint: str = "m") -> dict[str, Any]:
        body: dict[str, Any] = {"routes": [{"name": f"r{i}", "target": t, "weight": w}
                                           for i, (t, w) in enumerate(routes)]}
        if shadow:
            body["shadow"] = [{"target": t} for t in shadow]
        return {"endpoints": {endpoint: body}}

    current = spec(("m@1.0.0", 90), ("m@1.1.0", 10), ("m@1.1.0", 30),
                   shadow=("m@1.3.0", "m@1.2.0"))
    registry.apply_deployment("svc", current)
    registry.pause_routes("svc", ["r2"])
    registry.deprecate(refs[1], reason="bad")
    registry.set_policy("m", "deprecated: ['1.2.0']\n")
    deprecated = r"is deprecated: endpoint \w+ may not"
    refused = [
        spec(("m@1.0.0", 90), ("m@1.1.0", 50), ("m@1.1.0", 30)),   # its weight raised
        spec(("m@1.0.0", 90), ("m@1.2.0", 10)),                    # a shadow made a route
        spec(("m@1.0.0", 90), shadow=("m@1.1.0",)),                # a new shadow
        spec(("m@1.1.0", 100), endpoint="other"),                  # a new endpoint
        spec(("m@1.0.0", 90), (refs[1], 20)),                      # by digest, more share
        spec(("m@1.0.0", 9), ("m@1.1.0", 10), ("m@1.1.0", 30)),    # the others lowered
    ]
    for body in refused:
        with pytest.raises(PolicyViolation, match=deprecated):
            registry.apply_deployment("svc", body)
    with pytest.raises(PolicyViolation, match=deprecated):
        registry.set_deployment_weights("svc", {"r1": 20})
    with pytest.raises(PolicyViolation, match=deprecated):
        registry.set_deployment_weights("svc", {"r0": 0.001})
    with pytest.raises(PolicyViolation, match=deprecated):
        registry.pause_routes("svc", ["r0"])
    with pytest.raises(PolicyViolation, match=deprecated):
        registry.pause_routes("svc", ["r2"], resume=True)
    with pytest.raises(PolicyViolation, match=deprecated):
        registry.rollback_route("svc", endpoint="m", route="r0")
    assert registry.deployment("svc")["revision"] == 2
    # Kept as they were (or given less), deprecated routes block no other change; a
    # shadow is known by its version, not its place in the list.
    registry.deprecate(refs[0], reason="also bad")
    moved = registry.apply_deployment("svc", spec(
        ("m@1.0.0", 90), ("m@1.1.0", 10), (refs[3], 30), shadow=("m@1.2.0",)))
    assert moved["revision"] == 3

def test_only_an_admin_changes_a_deployments_auth(registry: Registry, tmp_path: Path) -> None:
    """A contributor of one routed model re-applied a deployment with token_env: PATH and
    no protected reads: every replica restarted open (a review)."""
    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    routes = {"endpoints": {"m": {"routes": [{"name": "main", "target": version.ref,
                                              "weight": 100}]}}}
    guarded = {**routes, "auth": {"token_env": "TETHER_SERVING_TOKEN", "protect_reads": True}}
    registry.apply_deployment("svc", guarded)
    registry.create_token("carol@example.com", role="contributor", model="m")
    carol = registry.as_actor("carol@example.com", enforce_roles=True)
    for changed in ({**routes, "auth": {"token_env": "PATH", "protect_reads": False}},
                    routes):  # changed, or dropped
        with pytest.raises(PermissionDenied, match="may not change the auth section"):
            carol.apply_deployment("svc", changed)
    kept = {**guarded, "endpoints": {"m": {"routes": [
        {"name": "main", "target": version.ref, "weight": 50}]}}}
    assert carol.apply_deployment("svc", kept)["revision"] == 2  # routes are theirs
    assert registry.apply_deployment("svc", routes)["revision"] == 3  # an admin may
    with pytest.raises(PermissionDenied, match="may not change the auth section"):
        carol.rollback_deployment("svc", to_revision=2)  # back to the guarded one


def test_tags_and_text_are_bounded_and_updates_audit_only_what_changed(
        registry: Registry, tmp_path: Path) -> None:
    """One 7 MB tag, then ten small updates: each copied every tag into the append-only
    audit log (84 MB), and every listing carried it (a review)."""
    from tether._metadata.schema import events

    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    for bad in ({"k": "v" * 100_001}, {"k" * 251: "v"}, {f"k{i}": "v" for i in range(1001)},
                {"k": "\x1b[2J"}, {"a\nb": "v"}, {"k": "\x9b31m"}, {"a\u202eb": "v"}):
        with pytest.raises(InvalidInput):
            registry.update_model("m", set_tags=bad)
        with pytest.raises(InvalidInput):
            registry.update_version(version.ref, set_tags=bad)
    with pytest.raises(InvalidInput, match="the notes"):
        registry.update_version(version.ref, notes="x" * 100_001)
    with pytest.raises(InvalidInput, match="the description"):
        registry.update_model("m", description="\x1b]8;;https://evil\x1b\\")
    registry.update_model("m", set_tags={"big": "v" * 90_000})
    registry.update_model("m", set_tags={"small": "1"}, description="line one\nline two")
    with registry.engine.begin() as conn:
        last = conn.execute(sa.select(events.c.details).order_by(
            events.c.id.desc()).limit(1)).scalar()
    assert "big" not in str(last) and "small" in str(last)


def test_reasons_and_comments_are_bounded_and_odd_metrics_are_not_empty(
        registry: Registry, tmp_path: Path) -> None:
    """7 MB reasons and comments with escape sequences went into the append-only audit
    log (a review); and a tampered metrics row read as "no metrics", so a policy's
    not_worse_than_current was skipped (a review of the fix that read it so)."""
    import json as _json

    import sqlalchemy as sa

    from tether._metadata.schema import versions

    refs = []
    for n in range(2):
        (tmp_path / f"{n}.bin").write_bytes(bytes([n]) * 10)
        refs.append(registry.log_model(tmp_path / f"{n}.bin", "m", progress=False,
                                       metrics={"auc": 0.9}).ref)
    registry.promote(refs[0], "production", create=True)
    for call in (lambda: registry.promote(refs[1], "production", reason="x" * 2001),
                 lambda: registry.approve(refs[1], "production", comment="\x1b[2J"),
                 lambda: registry.deprecate(refs[1], reason="\x9b31m"),
                 lambda: registry.create_token("t@example.com", description="x" * 5000),
                 lambda: registry.apply_deployment("svc", {"endpoints": {"m": {"routes": [
                     {"name": "a", "target": refs[0], "weight": 1}]}}}, reason="y" * 3000)):
        with pytest.raises(InvalidInput, match="at most 2000 characters"):
            call()
    with registry.engine.begin() as conn:
        conn.execute(versions.update().where(versions.c.semver == "1.0.0").values(
            metrics=_json.dumps([0.1]), tags=_json.dumps("wiped")))
    current = registry.get(refs[0])
    assert current.metrics == {"(unreadable)": "[0.1]"}
    assert current.tags == {"(unreadable)": "'wiped'"}
    registry.set_policy("m", "aliases:\n  production:\n    checks:\n"
                             "      - {metric: auc, not_worse_than_current: 0.01}\n")
    with pytest.raises(PolicyViolation, match=r"metrics recorded on 1\.0\.0 are unreadable"):
        registry.promote(refs[1], "production")
    for stored in ({"auc": None}, {"auc": "high"}):  # a value, not the mapping, tampered
        with registry.engine.begin() as conn:
            conn.execute(versions.update().where(versions.c.semver == "1.0.0").values(
                metrics=_json.dumps(stored)))
        with pytest.raises(PolicyViolation, match="not a finite number"):
            registry.promote(refs[1], "production")
    with pytest.raises(InvalidInput, match="not a metric name"):
        registry.log_model(tmp_path / "0.bin", "m", progress=False, metrics={"(unreadable)": 1})
    assert sa  # imported for the update above


def test_only_an_admin_weakens_what_an_endpoint_checks(registry: Registry, tmp_path: Path
                                                       ) -> None:
    """A contributor of one routed model could switch an endpoint's environment policy
    off or let NaN through, for every caller of the deployment (left open by a review;
    closed as auth was)."""
    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)

    def spec(**endpoint: Any) -> dict[str, Any]:
        return {"endpoints": {"m": {"routes": [{"name": "main", "target": version.ref,
                                                "weight": 100}], **endpoint}}}

    registry.create_token("carol@example.com", role="contributor", model="m")
    carol = registry.as_actor("carol@example.com", enforce_roles=True)
    carol.apply_deployment("svc", spec(env_policy="strict"))  # stricter: theirs to set
    for weaker in (spec(env_policy="off"), spec(env_policy="strict,framework=warn"), spec(),
                   spec(env_policy="strict", allow_non_finite=True)):
        with pytest.raises(PermissionDenied, match="may not weaken"):
            carol.apply_deployment("svc", weaker)
    registry.apply_deployment("svc", spec(env_policy="warn", allow_non_finite=["x", "y"]))
    assert carol.apply_deployment("svc", spec(env_policy="warn", allow_non_finite=["x"]))[
        "revision"] == 3  # as stored, or stricter
    with pytest.raises(PermissionDenied, match="may not weaken"):
        carol.rollback_deployment("svc", to_revision=2)  # back to the looser one


def test_raising_a_canary_cannot_take_traffic_from_a_route_the_caller_may_not_move(
        registry: Registry, tmp_path: Path) -> None:
    """Weights are relative: a contributor set the canary's weight to 1e12 and took
    production's traffic (a route following an approver's alias) for its own version
    (a review). Lowering the canary, or pausing it, gives traffic back: theirs to do."""
    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    good = registry.log_model(tmp_path / "w.bin", "fraud", progress=False)
    registry.promote(good.ref, "production", create=True)
    registry.promote(good.ref, "canary", create=True)
    registry.apply_deployment("prod", {"endpoints": {"score": {"routes": [
        {"name": "stable", "target": "fraud@production", "weight": 90},
        {"name": "canary", "target": "fraud@canary", "weight": 10}]}}})
    registry.create_token("mallory@example.com", role="contributor", model="fraud")
    mallory = registry.as_actor("mallory@example.com", enforce_roles=True)
    with pytest.raises(PermissionDenied, match="needs role approver"):
        mallory.set_deployment_weights("prod", {"canary": 1e12})
    mallory.pause_routes("prod", ["canary"])  # back to production alone: allowed
    with pytest.raises(PermissionDenied, match="needs role approver"):
        mallory.pause_routes("prod", ["canary"], resume=True)  # takes it from stable
    registry.pause_routes("prod", ["canary"], resume=True)
    assert mallory.set_deployment_weights("prod", {"canary": 5})["revision"] == 4


def test_renaming_an_endpoint_does_not_drop_its_policy_and_rollback_needs_live_targets(
        registry: Registry, tmp_path: Path) -> None:
    """Renaming endpoint m to m-tmp and back, each apply without a policy, made it new each
    time and dropped an admin's strict policy; a deployment rollback restored traffic to
    a version deleted since (two reviews)."""
    (tmp_path / "w.bin").write_bytes(b"w" * 10)
    first = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    (tmp_path / "w.bin").write_bytes(b"x" * 10)
    second = registry.log_model(tmp_path / "w.bin", "m", progress=False)

    def spec(endpoint: str, target: str, **body: Any) -> dict[str, Any]:
        return {"endpoints": {endpoint: {"routes": [{"name": "main", "target": target,
                                                     "weight": 100}], **body}}}

    registry.apply_deployment("svc", spec("m", first.ref, env_policy="strict"))
    registry.create_token("carol@example.com", role="contributor", model="m")
    carol = registry.as_actor("carol@example.com", enforce_roles=True)
    with pytest.raises(PermissionDenied, match="may not weaken"):
        carol.apply_deployment("svc", spec("m-tmp", first.ref))
    registry.apply_deployment("svc", spec("m", second.ref, env_policy="strict"))
    registry.delete_version(first.ref)
    with pytest.raises(tether.NotFound):
        registry.rollback_deployment("svc", to_revision=1)
    assert registry.deployment("svc")["revision"] == 2


def test_a_deployment_is_a_few_routes_not_thousands(registry: Registry, tmp_path: Path
                                                    ) -> None:
    """A contributor's 20,000-route spec held the write lock for seconds, and each
    100-byte pause stored it again (20,000 bytes kept per byte sent); one route named
    100,000 times in a pause ran past two minutes (a review of what one-model users can
    make a server do)."""
    (tmp_path / "w.bin").write_bytes(b"w")
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    many = [{"name": f"r{i}", "target": version.ref, "weight": 1} for i in range(65)]
    with pytest.raises(InvalidInput, match="more than 64 routes"):
        registry.apply_deployment("svc", {"endpoints": {"m": {"routes": many}}})
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": many[:2]}}})
    assert registry.pause_routes("svc", ["r1"] * 100_000)["paused"] == ["m/r1"]


def test_a_rollback_is_bounded_as_an_apply_and_a_named_shadow_counts_once(
        registry: Registry, tmp_path: Path) -> None:
    """A revision stored before the 64-route bound came back by rollback, and replicas
    then refused the deployment; a shadow given as one name was counted by its
    characters (a review)."""
    import json as _json

    from tether._metadata.schema import deployment_revisions

    (tmp_path / "w.bin").write_bytes(b"w")
    version = registry.log_model(tmp_path / "w.bin", "m", progress=False)
    routes = [{"name": f"r{i}", "target": version.ref, "weight": 1} for i in range(50)]
    registry.apply_deployment("svc", {"endpoints": {"m": {
        "routes": routes, "shadow": [{"target": version.ref}]}}})
    registry.apply_deployment("svc", {"endpoints": {"m": {"routes": routes[:2]}}})
    with registry.engine.begin() as conn:  # revision 1 as one stored before the bound
        stored = _json.loads(conn.execute(sa.select(deployment_revisions.c.spec).where(
            deployment_revisions.c.revision == 1)).scalar())
        stored["endpoints"]["m"]["routes"] = [
            {"name": f"r{i}", "target": version.ref, "weight": 1.0} for i in range(200)]
        conn.execute(deployment_revisions.update().where(
            deployment_revisions.c.revision == 1).values(spec=_json.dumps(stored)))
    with pytest.raises(InvalidInput, match="more than 64 routes"):
        registry.rollback_deployment("svc", to_revision=1)
    registry.promote(version.ref, "a-rather-long-alias-name", create=True)
    named = "m@a-rather-long-alias-name"  # 26 characters, one shadow
    assert registry.apply_deployment("svc", {"endpoints": {"m": {
        "routes": routes, "shadow": named}}})["revision"] == 3


# -- a later review: rules dodged by deleting, renaming, quoting, repeating -------------


def _scored(registry: Registry, tmp_path: Path, scores: list[float]) -> list[str]:
    refs = []
    for n, acc in enumerate(scores):
        (tmp_path / f"s{n}.bin").write_bytes(bytes([n + 1]) * 10)
        refs.append(registry.log_model(tmp_path / f"s{n}.bin", "m", metrics={"acc": acc},
                                       progress=False).ref)
    return refs


def test_deleting_an_alias_does_not_reset_what_its_checks_compare_with(
        registry: Registry, tmp_path: Path) -> None:
    """Production at acc 0.95; 0.50 refused as worse than the current, then accepted once
    the alias was deleted and created again: no current, so no comparison (a review)."""
    good, bad = _scored(registry, tmp_path, [0.95, 0.50])
    registry.promote(good, "production", create=True)
    registry.set_policy("m", "aliases:\n  production:\n    checks:\n"
                             "      - {metric: acc, not_worse_than_current: 0.01}\n")
    with pytest.raises(PolicyViolation, match="acc"):
        registry.promote(bad, "production")
    registry.delete_alias("m", "production")
    with pytest.raises(PolicyViolation, match="acc"):
        registry.promote(bad, "production", create=True)
    registry.promote(good, "production", create=True)  # the same as before: fine
    assert registry.alias("m", "production")["version"] == "1.0.0"
    registry.promote(bad, "staging", create=True)  # another alias: never had a target


@pytest.mark.parametrize("name", ["Champion", "CHAMPION", "champion.", "champion-",
                                  "PROD-eu", "Prod-eu"])
def test_a_look_alike_of_a_guarded_name_or_pattern_is_refused(
        registry: Registry, tmp_path: Path, name: str) -> None:
    """A contributor could not create `champion` (guarded by the policy) but could create
    `Champion`; nor `prod-eu` (protected_aliases prod-*) but could `PROD-eu` (a review)."""
    (ref,) = _scored(registry, tmp_path, [0.9])
    registry.set_policy("m", "aliases:\n  champion: {roles: [approver], approvals: 1}\n")
    registry.set_setting("protected_aliases", "production,prod-*")
    registry.create_token("carl@example.com", role="contributor", model="m")
    carl = registry.as_actor("carl@example.com", enforce_roles=True)
    with pytest.raises(InvalidInput, match="reads as the guarded alias"):
        carl.promote(ref, name, create=True)
    carl.promote(ref, "challenger", create=True)  # no look-alike: still a contributor's


@pytest.mark.parametrize("text, problem", [
    ("aliases:\n  production:\n    checks:\n      - {metric: latency, "
     "not_worse_than_current: 1, higher_is_better: 'false'}\n", "higher_is_better must be"),
    ("aliases:\n  production: {roles: [admin], approvals: 2}\n"
     "  production: {roles: [approver]}\n", "given twice"),
    ("deprecated: ['~v1']\n", "neither a version"),
    ("deprecated: ['1.0']\n", "neither a version"),
])
def test_a_policy_that_would_silently_weaken_a_rule_is_refused(text: str,
                                                               problem: str) -> None:
    """Quoted 'false' read as true; a rule written twice kept the last, lenient one; a
    deprecated entry no version matches deprecated nothing (a review)."""
    with pytest.raises(InvalidInput, match=problem):
        parse_policy(text)


def test_deleting_and_deprecating_need_their_role_on_an_embedded_registry_too(
        registry: Registry, tmp_path: Path) -> None:
    """The README says administering and approving need their role in every mode; on an
    embedded registry in open mode a user with no role deleted and deprecated versions
    while approving and setting a policy were refused (a review)."""
    first, second = _scored(registry, tmp_path, [0.9, 0.8])
    nobody = as_user(registry, "nobody@example.com")
    for attempt in (lambda: nobody.delete_version(first),
                    lambda: nobody.deprecate(second, reason="mine"),
                    lambda: nobody.delete_model("m")):
        with pytest.raises(PermissionDenied):
            attempt()
    nobody.log_model(tmp_path / "s0.bin", "m", progress=False)  # logging stays open
    registry.deprecate(second, reason="the admin may")
    assert registry.get(second).status == "deprecated"


def test_a_route_rollback_event_names_a_route_and_real_versions(
        registry: Registry, tmp_path: Path) -> None:
    """A contributor recorded a rollback of an endpoint nowhere, "from iris@2.0.0
    (approved by root@team)", 200 KB of it (a review)."""
    first, second = _scored(registry, tmp_path, [0.9, 0.8])
    fine = {"endpoint": "iris", "route": "canary", "before": second, "after": first}
    registry.record_route_rollback("m", **fine, reason="error_rate > 0.05")
    for bad in ({"before": "m@2.0.0 (approved by root@team)"}, {"before": "m@9.9.9"},
                {"after": "other@1.0.0"}, {"endpoint": "x" * 200_000},
                {"route": "a b\nc"}):
        with pytest.raises((InvalidInput, tether.NotFound, tether.InvalidReference)):
            registry.record_route_rollback("m", **{**fine, **bad}, reason="r")
    events = registry.audit_log(action="deployment.rollback")
    assert [(e.subject, e.before) for e in events] == [("iris/canary", second)]


# -- a later review: a gate that passed what it never compared ------------------------


def _locked(registry: Registry, iris: tuple[Any, Any], tmp_path: Path) -> Path:
    _two_versions(registry, iris)
    lock = tmp_path / "tether.lock"
    registry.lock_add("iris@1.0.0", path=lock)
    return lock


def _env_row(report: Any) -> Any:
    return next(r for r in report.results if r.check == "environment")


def test_a_gate_without_requirements_fails_unless_told_to_skip(
        registry: Registry, iris: tuple[Any, Any], tmp_path: Path) -> None:
    """An application with only a pyproject.toml: no environment row, "requirements
    none", exit 0 (a review). Now the row fails, naming both ways on."""
    lock = _locked(registry, iris, tmp_path)
    report = registry.check(lock_path=lock)
    assert not report.ok and "was not checked" in _env_row(report).message
    assert "--no-environment" in (_env_row(report).fix or "")
    skipped = registry.check(lock_path=lock, check_environment=False)
    assert skipped.ok and not any(r.check == "environment" for r in skipped.results)
    empty = tmp_path / "empty.lock"
    registry.lock_add("iris@1.0.0", path=empty)
    from tether._registry.pinning import lock_remove

    lock_remove(["iris"], path=empty)
    nothing = registry.check(lock_path=empty, check_environment=False)
    assert not nothing.ok and "pins no model" in nothing.results[0].message


def test_the_gate_keeps_its_own_policy_not_the_one_for_loads(
        registry: Registry, iris: tuple[Any, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TETHER_ENV_POLICY=off (or a registry's env_policy of warn) made the gate say
    "satisfied" of scikit-learn 1.2.0 against a model logged with another (a review)."""
    lock = _locked(registry, iris, tmp_path)
    old = tmp_path / "old.txt"
    old.write_text("scikit-learn==0.20.0\nnumpy==1.16.0\n")
    monkeypatch.setenv("TETHER_ENV_POLICY", "off")
    registry.set_setting("env_policy", "warn")
    assert not _env_row(registry.check(lock_path=lock, requirements_path=old)).ok
    assert _env_row(registry.check(lock_path=lock, requirements_path=old,
                                   env_policy="off")).ok  # said on the call: as asked


def test_requirements_are_read_for_this_machine_markers_hashes_and_forks(
        tmp_path: Path) -> None:
    """A pin under a marker that holds here beside one under a marker that does not read
    as the last one; hashed requirements were refused; a uv.lock fork per platform kept
    whichever came last (a review)."""
    import sys

    from tether._environment.app_requirements import parse_requirements_text, read_requirements

    here, there = f'sys_platform == "{sys.platform}"', 'sys_platform == "nowhere"'
    pins = parse_requirements_text(f"scikit-learn==1.2.0 ; {here}\n"
                                   f"scikit-learn==1.9.1 ; {there}\n", source="r").pins
    assert pins == {"scikit-learn": "1.2.0"}
    with pytest.raises(InvalidInput, match="pinned twice"):
        parse_requirements_text("numpy==1.0.0\nnumpy==2.0.0\n", source="r")
    hashed = parse_requirements_text(
        "scikit-learn==1.9.1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "numpy==2.0.0 --hash=sha256:cc  # via scikit-learn\n", source="r")
    assert hashed.pins == {"scikit-learn": "1.9.1", "numpy": "2.0.0"}
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\n'
        f'[[package]]\nname = "scikit-learn"\nversion = "1.2.0"\n'
        f"resolution-markers = ['{here}']\n"
        f'[[package]]\nname = "scikit-learn"\nversion = "1.9.1"\n'
        f"resolution-markers = ['{there}']\n"
        '[[package]]\nname = "numpy"\nversion = "2.0.0"\n')
    assert read_requirements(lock).pins == {"scikit-learn": "1.2.0", "numpy": "2.0.0"}
    lock.write_text('version = 1\n[[package]]\nname = "numpy"\nversion = "1.0.0"\n'
                    '[[package]]\nname = "numpy"\nversion = "2.0.0"\n')
    with pytest.raises(InvalidInput, match="cannot tell which one is installed"):
        read_requirements(lock)


def test_a_pin_is_its_own_version_not_another_with_the_same_bytes(
        registry: Registry, tmp_path: Path) -> None:
    """1.0.0 and 1.0.1 logged with the same bytes; 1.0.0 pinned and then deprecated: the
    gate checked 1.0.1 (newest with that digest) and passed, loads took 1.0.1's records
    (a review)."""
    from tether._registry.pinning import pinned_reference

    (tmp_path / "m.bin").write_bytes(b"same bytes")
    first = registry.log_model(tmp_path / "m.bin", "same", progress=False)
    second = registry.log_model(tmp_path / "m.bin", "same", progress=False, notes="again",
                                bump="patch")
    assert first.digest == second.digest and first.seq != second.seq
    lock = tmp_path / "tether.lock"
    registry.lock_add(first.ref, path=lock)
    registry.deprecate(first.ref, reason="bad")
    report = registry.check(lock_path=lock, check_environment=False)
    row = next(r for r in report.results if r.check == "not deprecated")
    assert not row.ok and first.ref in row.message
    os.environ["TETHER_LOCK"] = str(lock)
    try:
        assert pinned_reference(registry, first.ref) == f"same@{first.seq}"
    finally:
        del os.environ["TETHER_LOCK"]


@pytest.mark.parametrize("kind", ["twice", "short digest", "upper digest", "deep",
                                  "not utf-8", "huge seq", "packages list"])
def test_a_crafted_lock_is_refused_clearly(registry: Registry, iris: tuple[Any, Any],
                                           tmp_path: Path, kind: str) -> None:
    """A lock naming a model twice (the reviewer reads the first, json keeps the last,
    the integrity is computed over what was kept); a 4-digit or uppercase digest
    resolved by prefix; nesting, bytes and numbers that were tracebacks (a review)."""
    from tether._lockfile import read_lock

    lock = _locked(registry, iris, tmp_path)
    document = json.loads(lock.read_text())
    entry = document["models"]["iris"]
    text = None
    if kind == "twice":
        body = json.dumps(entry)
        text = (json.dumps({**document, "models": {}})[:-1].replace(
            '"models": {}', '"models": {"iris": ' + body + ', "iris": ' + body + "}") + "}")
    elif kind == "short digest":
        entry["digest"] = entry["digest"][:4]
    elif kind == "upper digest":
        entry["digest"] = entry["digest"].upper()
    elif kind == "deep":
        text = '{"format": 1, "models": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif kind == "not utf-8":
        lock.write_bytes(b'{"format": 1, "models": {"\xff": 1}}')
    elif kind == "huge seq":
        entry["seq"] = 10**40
    else:
        entry["requires"] = {"packages": ["scikit-learn"]}
    if kind != "not utf-8":
        lock.write_text(text if text is not None else json.dumps(document))
    with pytest.raises((InvalidInput, tether.IntegrityError)) as refused:
        read_lock(lock)
    if kind in ("twice", "short digest", "upper digest", "huge seq", "packages list"):
        assert isinstance(refused.value, InvalidInput), refused.value


def test_a_lock_another_user_left_in_a_folder_above_is_not_used(tmp_path: Path) -> None:
    """A tether.lock in /tmp (anyone's to write) redirected tether.load("wine") below it."""
    from tether._lockfile import LOCK_NAME, find_lock

    if not hasattr(os, "getuid") or os.getuid() != 0:
        pytest.skip("needs root to give the file to another user")
    (tmp_path / LOCK_NAME).write_text("{}")
    os.chown(tmp_path / LOCK_NAME, 4242, 4242)
    (tmp_path / "app").mkdir()
    with pytest.warns(UserWarning, match="belongs to another user"):
        assert find_lock(tmp_path / "app") is None
    os.chown(tmp_path / LOCK_NAME, 0, 0)
    assert find_lock(tmp_path / "app") == tmp_path / LOCK_NAME


def test_one_version_written_two_ways_is_one_pin() -> None:
    from tether._environment.app_requirements import parse_requirements_text

    found = parse_requirements_text('numpy==2.4.6\nnumpy==2.4.6.0 ; python_version >= "3.0"\n',
                                    source="r")
    assert found.pins in ({"numpy": "2.4.6"}, {"numpy": "2.4.6.0"})  # the same version

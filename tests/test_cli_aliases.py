"""`tether promote` refuses unknown aliases, policy patterns, deletes, tables, errors, --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether import NotFound, PermissionDenied, TetherError
from tether._policy import parse_policy
from tether.cli import cli

from .conftest import fit_logreg

AUTHOR = "a-rather-long-author-name.for-wrapping@example-company.com"


@pytest.fixture
def reg_path(tmp_path: Path, iris: tuple[Any, Any]) -> Path:
    root = tmp_path / ".tether"
    with tether.init(root, actor=AUTHOR) as reg:
        X, _ = iris
        for C, acc in ((1.0, 0.9), (0.3, 0.93)):
            reg.log_model(
                fit_logreg(iris, C=C),
                "iris",
                params={"C": C},
                metrics={"acc": acc},
                input_example=X.head(3),
            )
    return root


def run(root: Path, *args: str) -> Any:
    return CliRunner(env={"TETHER_USER": AUTHOR}).invoke(cli, ["--registry", str(root), *args])


def test_first_promote_needs_create(reg_path: Path) -> None:
    out = run(reg_path, "promote", "iris@1.0.0", "production")
    assert out.exit_code == 1
    assert "iris has no alias 'production'" in out.stderr
    assert "tether promote iris@1.0.0 production --create" in out.stderr
    out = run(reg_path, "promote", "iris@1.0.0", "production", "--create")
    assert out.exit_code == 0 and "iris@production → 1.0.0 (new alias)" in out.stdout


def test_promote_refuses_a_typo_and_suggests_the_alias(reg_path: Path) -> None:
    assert run(reg_path, "promote", "iris@1.0.0", "production", "--create").exit_code == 0
    out = run(reg_path, "promote", "iris@1.1.0", "prodution")
    assert out.exit_code == 1
    assert "error: iris has no alias 'prodution'" in out.stderr
    assert "aliases of iris: production" in out.stderr
    assert "did you mean production?" in out.stderr
    data = json.loads(run(reg_path, "promote", "iris@1.1.0", "prodution", "--json").stdout)
    assert data["error"] == "not_found" and "did you mean production?" in data["hint"]
    with tether.open(reg_path, actor=AUTHOR) as reg:
        assert reg.models()[0].aliases == {"production": "1.0.0"}
        with pytest.raises(NotFound, match="did you mean production"):
            reg.promote("iris@1.1.0", "prodution")
    with (
        tether.open(reg_path, actor="nobody") as reg,  # may not move it: told no more
        pytest.raises(PermissionDenied, match="needs role contributor on iris"),
    ):
        reg.promote("iris@1.1.0", "prodution")


def test_policy_pattern_covers_new_aliases(reg_path: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('aliases:\n  "prod-*":\n    checks:\n      - {metric: acc, min: 0.95}\n')
    assert run(reg_path, "policy", "set", "iris", str(policy)).exit_code == 0
    out = run(reg_path, "promote", "iris@1.1.0", "prod-eu", "--create")
    assert out.exit_code == 1 and "policy rule(s) failed" in out.stderr
    assert run(reg_path, "promote", "iris@1.1.0", "staging", "--create").exit_code == 0


def test_rule_for_prefers_exact_then_pattern_then_star() -> None:
    policy = parse_policy(
        "aliases:\n  prod-eu: {approvals: 1}\n  'prod-*': {approvals: 2}\n  '*': {approvals: 3}\n"
    )
    assert [policy.rule_for(a).approvals for a in ("prod-eu", "prod-us", "dev")] == [1, 2, 3]  # type: ignore[union-attr]
    assert parse_policy("aliases:\n  'prod-*': {approvals: 2}\n").rule_for("staging") is None


def test_policy_hint_names_the_model(reg_path: Path, tmp_path: Path) -> None:
    assert run(reg_path, "promote", "iris@1.0.0", "production", "--create").exit_code == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text("aliases:\n  production: {approvals: 1}\n")
    assert run(reg_path, "policy", "set", "iris", str(policy)).exit_code == 0
    out = run(reg_path, "promote", "iris@1.1.0", "production")
    assert out.exit_code == 1
    assert "tether approve iris@1.1.0 production" in out.stderr and "NAME@" not in out.stderr
    # The use case names the model itself: the library and the server say it too.
    with tether.open(reg_path, actor=AUTHOR) as reg, pytest.raises(TetherError) as refused:
        reg.promote("iris@1.1.0", "production")
    assert "tether approve iris@1.1.0 production" in str(refused.value)


def test_alias_get_of_a_missing_alias_lists_what_exists(reg_path: Path) -> None:
    run(reg_path, "promote", "iris@1.0.0", "staging", "--create")
    out = run(reg_path, "alias", "get", "iris", "stagin")
    assert out.exit_code == 1
    assert out.stderr.splitlines() == [
        "error: iris has no alias 'stagin'",
        "  hint: aliases of iris: staging; did you mean staging?",
    ]
    data = json.loads(run(reg_path, "alias", "get", "iris", "stagin", "--json").stdout)
    assert set(data) == {"error", "message", "hint"}


def test_click_errors_have_the_same_shape(reg_path: Path, tmp_path: Path) -> None:
    out = run(reg_path, "lock", "list", "--lock", str(tmp_path / "nothing" / "tether.lock"))
    assert out.exit_code == 1 and out.stderr.startswith("error: ")


def test_piped_tables_never_wrap_values(reg_path: Path) -> None:
    out = run(reg_path, "versions", "iris")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["#", "VERSION", "DIGEST", "METRICS", "ALIASES", "STATUS",
                                "AUTHOR", "CREATED"]  # fmt: skip
    assert len(lines) == 3 and all(AUTHOR in line for line in lines[1:])
    audit = run(reg_path, "audit", "log").stdout
    assert any(AUTHOR in line and "version.logged" in line for line in audit.splitlines())


def test_delete_refuses_an_alias_target_and_keeps_the_record(reg_path: Path) -> None:
    run(reg_path, "promote", "iris@1.1.0", "production", "--create")
    out = run(reg_path, "delete", "iris@1.1.0")
    assert out.exit_code == 1 and "target of production" in out.stderr
    assert "tether alias delete iris production" in out.stderr
    data = json.loads(run(reg_path, "delete", "iris@1.0.0", "--json").stdout)
    assert data["semver"] == "1.0.0" and data["status"] == "deleted"
    assert [
        v["semver"] for v in json.loads(run(reg_path, "versions", "iris", "--json").stdout)
    ] == ["1.1.0"]
    listed = json.loads(run(reg_path, "versions", "iris", "--all", "--json").stdout)
    assert [(v["semver"], v["status"]) for v in listed] == [
        ("1.0.0", "deleted"),
        ("1.1.0", "ready"),
    ]
    assert "deleted" in run(reg_path, "versions", "iris", "--all").stdout
    assert run(reg_path, "show", "iris@1.0.0").exit_code == 1
    events = json.loads(run(reg_path, "audit", "log", "--json").stdout)
    assert any(e["action"] == "version.deleted" and e["subject"] == "iris@1.0.0" for e in events)
    models = json.loads(run(reg_path, "models", "--all", "--json").stdout)
    assert [(m["name"], m["deleted"], m["version_count"]) for m in models] == [("iris", False, 1)]


def test_commands_that_lacked_json_now_take_it(reg_path: Path, tmp_path: Path) -> None:
    def js(*args: str) -> Any:
        out = run(reg_path, *args, "--json")
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    assert js("role", "grant", "bob@x", "approver", "--model", "iris")["granted"] is True
    assert js("role", "revoke", "bob@x", "approver", "--model", "iris")["revoked"] is True
    key = js("key", "generate", str(tmp_path / "k.key"))
    assert js("key", "trust", "release", key["public_key"])["key_id"] == key["key_id"]
    policy = tmp_path / "p.yaml"
    policy.write_text("aliases:\n  'prod-*': {approvals: 1}\n")
    assert js("policy", "validate", str(policy))["valid"] is True
    assert "scikit-learn==" in js("env", "export", "iris@1.0.0")["text"]
    with tether.open(reg_path, actor=AUTHOR) as reg:
        prefix = reg.create_token("bob@x")["prefix"]
    assert js("token", "revoke", prefix)["revoked"] is True

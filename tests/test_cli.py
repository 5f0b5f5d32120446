"""The `tether` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether.cli import cli

from .conftest import fit_logreg, subprocess_env, tether_exe


@pytest.fixture
def populated(tmp_path: Path, iris: tuple[Any, Any]) -> Path:
    root = tmp_path / ".tether"
    with tether.init(root, actor="cli@test") as reg:
        X, _ = iris
        reg.log_model(
            fit_logreg(iris),
            "iris",
            params={"C": 1.0},
            metrics={"acc": 0.9},
            input_example=X.head(3),
        )
        reg.log_model(
            fit_logreg(iris, C=0.3),
            "iris",
            params={"C": 0.3},
            metrics={"acc": 0.93},
            input_example=X.head(3),
        )
    return root


@pytest.fixture(autouse=True)
def _as_the_registry_creator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run as the user who created the registry (its admin), as on a laptop."""
    monkeypatch.setenv("TETHER_USER", "cli@test")


def run(root: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--registry", str(root), *args], catch_exceptions=False)
    return result


def test_tables_and_json(populated: Path) -> None:
    out = run(populated, "versions", "iris")
    assert out.exit_code == 0 and "1.1.0" in out.output and "acc=0.93" in out.output
    data = json.loads(run(populated, "versions", "iris", "--json").output)
    assert [v["semver"] for v in data] == ["1.0.0", "1.1.0"]
    models = json.loads(run(populated, "models", "--json").output)
    assert models[0]["name"] == "iris" and models[0]["version_count"] == 2
    shown = json.loads(run(populated, "show", "iris@1", "--json").output)
    assert shown["params"] == {"C": 1.0} and shown["environment"]["packages"]
    assert "signature" in run(populated, "show", "iris@latest").output


def test_diff_promote_rollback_history_audit(populated: Path) -> None:
    out = run(populated, "diff", "iris@1.0.0", "iris@1.1.0")
    assert out.exit_code == 0 and "+0.03" in out.output and "compatible" in out.output
    created = run(populated, "promote", "iris@1.0.0", "production", "--create").output
    assert "iris@production → 1.0.0" in created
    assert "→ 1.1.0 (was 1.0.0)" in run(populated, "promote", "iris@1.1.0", "production").output
    assert "→ 1.0.0 (was 1.1.0)" in run(populated, "rollback", "iris", "production").output
    history = json.loads(run(populated, "alias", "history", "iris", "production", "--json").output)
    assert [h["action"] for h in history] == ["rollback", "set", "set"]
    log = json.loads(run(populated, "audit", "log", "--json").output)
    assert log[0]["action"] == "alias.rollback"
    verified = run(populated, "audit", "verify")
    assert verified.exit_code == 0 and "chain intact" in verified.output


def test_env_commands(populated: Path) -> None:
    out = run(populated, "env", "diff", "iris@1.0.0")
    assert out.exit_code == 0 and "matches" in out.output
    requirements = run(populated, "env", "export", "iris@1.0.0").output
    assert "scikit-learn==" in requirements and "numpy==" in requirements
    dockerfile = run(populated, "env", "export", "iris@1.0.0", "--format", "dockerfile").output
    assert dockerfile.startswith("#") or "FROM python:" in dockerfile


def test_store_stats_gc_and_config(populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = json.loads(run(populated, "store", "stats", "--json").output)
    assert stats["logical_bytes"] > 0 and stats["stored_bytes"] > 0
    dry = json.loads(run(populated, "gc", "--dry-run", "--json").output)
    assert dry["dry_run"] is True and dry["expired_versions"] == []
    monkeypatch.setenv("TETHER_USER", "someone-else@test")
    refused = run(populated, "config", "set", "env_policy", "warn")  # settings need an admin
    assert refused.exit_code == 1 and "admin" in refused.output
    monkeypatch.setenv("TETHER_USER", "cli@test")  # the registry's creator
    assert run(populated, "config", "set", "env_policy", "warn").exit_code == 0
    bad = run(populated, "config", "set", "env_policy", "sometimes")
    assert bad.exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "iris@9.9.9"], "iris has no version 9.9.9"),
        (["show", "iris@"], "nothing after '@'"),
        (["show", "ghost"], "no model named 'ghost'"),
        (["rollback", "iris", "production"], "no alias 'production'"),
        (["promote", "iris@1.0.0", "latest"], "latest"),
    ],
)
def test_bad_input_gets_an_error_not_a_traceback(
    populated: Path, args: list[str], message: str
) -> None:
    proc = subprocess.run(
        [tether_exe(), "--registry", str(populated), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_json_errors_are_machine_readable(populated: Path) -> None:
    out = run(populated, "show", "iris@7.7.7", "--json")
    assert out.exit_code == 1
    assert json.loads(out.output)["error"] == "not_found"


def test_not_a_registry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tether_exe(), "versions", "x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(),
    )
    assert proc.returncode == 1 and "no registry found" in proc.stderr
    assert "tether init" in proc.stderr


def test_init_via_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tether_exe(), "init"], capture_output=True, text=True, cwd=tmp_path, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".tether" / "tether.toml").is_file()
    again = subprocess.run(
        [tether_exe(), "init"], capture_output=True, text=True, cwd=tmp_path, env=subprocess_env()
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_a_registry_in_a_git_work_tree_is_not_committed_with_it(tmp_path: Path) -> None:
    """`git add -A` in a project with its .tether took the database, the store and the
    audit signing key; switching branches then rolled the database back."""
    from .conftest import git

    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("print('hi')\n")
    made = subprocess.run([tether_exe(), "init"], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env())
    assert made.returncode == 0, made.stderr
    assert (tmp_path / ".tether" / "keys" / "audit-key.pem").is_file()
    git(tmp_path, "add", "-A")
    assert git(tmp_path, "diff", "--cached", "--name-only").splitlines() == ["train.py"]


def test_init_with_a_server_url_exported_makes_no_folder_named_after_it(tmp_path: Path) -> None:
    """The shared-server section has users export TETHER_URI=http://...; `tether init`
    then created a folder called "http:" holding "127.0.0.1:9"."""
    env = {**subprocess_env(), "TETHER_URI": "http://127.0.0.1:9"}
    proc = subprocess.run([tether_exe(), "init"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "is a URL" in proc.stderr and "server-init" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
    made = subprocess.run([tether_exe(), "init", f"file://{tmp_path / 'reg'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=subprocess_env())
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "reg" / "tether.toml").is_file()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tether_exe(), "demo"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(COLUMNS="120"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in (
        "logged cancer-detector@1.0.0",
        "logged cancer-detector@1.1.0",
        "refused",
        "pip install",
        "→ 1.0.0 (was 1.1.0)",
        "chain intact",
        "Demo complete",
    ):
        assert expected in out, expected


def test_download_writes_verified_files(populated: Path, tmp_path: Path) -> None:
    out = run(populated, "download", "iris@1.0.0", str(tmp_path / "dl"), "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["files"] == ["model.skops"]
    assert (tmp_path / "dl" / "model.skops").stat().st_size > 0
    again = run(populated, "download", "iris@1.0.0", str(tmp_path / "dl"))
    assert again.exit_code == 1


def test_show_a_version_logged_in_a_repository_with_no_commit_yet(
    tmp_path: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lineage records commit None there; `tether show` printed a TypeError traceback."""
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    monkeypatch.chdir(work)
    registry = tether.init(tmp_path / "reg" / ".tether")
    try:
        version = registry.log_model(fit_logreg(iris), "iris", progress=False,
                                     data={"train": str(work)})
    finally:
        registry.close()
    assert version.lineage["git"]["commit"] is None
    shown = CliRunner().invoke(cli, ["-r", str(tmp_path / "reg" / ".tether"), "show", "iris@1"])
    assert shown.exit_code == 0, shown.output
    assert "git: (no commit yet)" in shown.output and "data train:" in shown.output


def test_in_a_github_actions_job_registry_text_is_never_a_workflow_command(
        tmp_path: Path) -> None:
    """The runner reads lines starting with ``::`` (and ``##[`` anywhere) as commands: a
    version's notes ``##[add-mask]FAILED`` hid the word in the rest of the job's log, and
    a param named ``::error::...`` forged an annotation (a review). Tether's output runs
    between stop-commands and its resume token, on standard error (JSON stays JSON)."""
    import json as _json
    import re
    import subprocess

    from .conftest import subprocess_env, tether_exe

    registry = tether.init(tmp_path / ".tether", actor="ci@example.com")
    (tmp_path / "w.bin").write_bytes(b"w")
    registry.log_model(tmp_path / "w.bin", "m", notes="##[add-mask]FAILED", progress=False,
                       params={"::error title=ok::all models verified": 1})
    for extra in ([], ["--json"]):
        done = subprocess.run([tether_exe(), "--registry", str(tmp_path / ".tether"), "show",
                               "m@1.0.0", *extra], capture_output=True, text=True,
                              env=subprocess_env(GITHUB_ACTIONS="true"), timeout=120)
        assert done.returncode == 0, done.stderr
        stop = re.match(r"::stop-commands::([0-9a-f]{32})\n", done.stderr)
        assert stop is not None, done.stderr
        assert done.stderr.endswith(f"::{stop.group(1)}::\n")
        assert "##[add-mask]FAILED" in done.stdout  # shown as text, as it is
        if extra:
            assert _json.loads(done.stdout)["notes"] == "##[add-mask]FAILED"


def test_names_that_reach_ci_logs_are_shown_as_text(tmp_path: Path) -> None:
    """A staged file's name with a line break wrote lines of its own into the pre-commit
    hook's output; a lock entry named ``::error::...`` went out as a line of `tether
    check`; a prediction "\\ud800" broke /metrics for good (one review)."""
    import json as _json

    from tether._errors import InvalidInput
    from tether._lockfile import FORMAT, read_lock
    from tether._registry.git_hooks import Refused
    from tether.serving.metrics import _escape_value

    message = Refused("a\n::error::forged.bin", 200 << 20, None).message(100 << 20)
    assert "\n" not in message and "a\\n::error::forged.bin" in message
    lock = tmp_path / "tether.lock"
    lock.write_text(_json.dumps({"format": FORMAT, "models": {"::error::x": {}}}))
    with pytest.raises(InvalidInput, match="not a model name"):
        read_lock(lock)
    assert _escape_value("\ud800").encode("utf-8") == b"\\\\ud800"


def test_a_warning_is_one_line_of_text_naming_its_remedy(tmp_path: Path) -> None:
    """A registry re-created at the same URL with the same audit key warns (its key's
    mark says it signed more than this log holds). The warning was Python's report,
    ``.../contextlib.py:144: UnsignedAuditEvents: ...`` and a source line; now it is one
    line that says what to do."""
    db = tmp_path / "meta.db"
    command = [tether_exe(), "server-init", "--db", f"sqlite:///{db}", "--store",
               f"file://{tmp_path / 'objects'}", "--admin", "root@team", "--json"]
    first = subprocess.run(command, capture_output=True, text=True, env=subprocess_env())
    assert first.returncode == 0 and first.stderr == "", first.stderr
    db.unlink()
    again = subprocess.run(command, capture_output=True, text=True, env=subprocess_env())
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("warning: the audit log holds events"), again.stderr
    assert "tether audit accept" in again.stderr
    assert ".py:" not in again.stderr and len(again.stderr.splitlines()) == 1

    # The remedy works on the server's host, against its database (there was no way to
    # name a server's database: `--registry sqlite:///...` was taken for a folder).
    def tether(*args: str, user: str = "root@team") -> subprocess.CompletedProcess[str]:
        return subprocess.run([tether_exe(), "--registry", f"sqlite:///{db}", *args],
                              capture_output=True, text=True,
                              env=subprocess_env(TETHER_USER=user))

    assert tether("audit", "verify").returncode == 1
    refused = tether("audit", "accept", "--reason", "x", user="mallory@team")
    assert refused.returncode == 1 and "admin" in refused.stderr, refused.stderr
    accepted = tether("audit", "accept", "--reason", "re-created the dev registry")
    assert accepted.returncode == 0 and "accepted, recorded" in accepted.stdout, accepted.stderr
    verified = tether("audit", "verify")
    assert verified.returncode == 0 and "audit log OK" in verified.stdout, verified.stdout

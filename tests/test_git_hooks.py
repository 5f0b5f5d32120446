"""`tether hooks install`: real commits and pushes in git repositories made here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import tether
from tether._registry.datasets_io import track
from tether._registry.git_hooks import CHAINED_SUFFIX, parse_size
from tether.cli import cli

from .conftest import git_project


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_project(tmp_path, monkeypatch, name="Hook Tester", email="hooks@test")
    monkeypatch.setenv("TETHER_URI", str(root / ".tether"))
    (root / "data").mkdir()
    monkeypatch.chdir(root)
    return root


def install(*args: str) -> list[dict[str, str]]:
    result = CliRunner().invoke(cli, ["hooks", "install", "--json", *args])
    assert result.exit_code == 0, result.output
    loaded: list[dict[str, str]] = json.loads(result.output)
    return loaded


def test_parse_size() -> None:
    assert parse_size("5MB") == 5 * 1024 * 1024
    assert parse_size("500k") == 500 * 1024
    assert parse_size("1048576") == 1048576
    with pytest.raises(tether.InvalidInput):
        parse_size("five")


def test_pre_commit_refuses_large_untracked_files_and_allows_tracked_ones(repo: Path) -> None:
    assert {d["hook"]: d["action"] for d in install("--max-size", "64KB")} == {
        "pre-commit": "installed", "pre-push": "installed"
    }
    # Idempotent: a second install changes nothing.
    assert {d["action"] for d in install("--max-size", "64KB")} == {"unchanged"}

    (repo / "README.md").write_text("small files commit as usual\n")
    big = repo / "data" / "weights.bin"
    big.write_bytes(bytes(range(256)) * 400)  # 100 KiB
    git(repo, "add", "README.md", "data/weights.bin")
    refused = git(repo, "commit", "-q", "-m", "add weights", check=False)
    assert refused.returncode != 0
    assert "data/weights.bin" in refused.stderr
    assert "tether data track data/weights.bin" in refused.stderr
    assert git(repo, "rev-parse", "--verify", "HEAD", check=False).returncode != 0  # no commit

    # Do what it says: the bytes go to Tether, the pointer to git; now the commit passes.
    git(repo, "rm", "-q", "--cached", "data/weights.bin")
    reg = tether.init(repo / ".tether", actor="hooks@test")
    track(reg, big, name="weights")
    reg.close()
    git(repo, "add", "-A")
    allowed = git(repo, "commit", "-q", "-m", "track weights", check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert git(repo, "ls-files").stdout.split() == [
        ".gitignore", "README.md", "data/.gitignore", "data/weights.bin.tether"
    ]

    # Forcing the tracked bytes into git anyway names the pointer that tracks them.
    git(repo, "add", "-f", "data/weights.bin")
    forced = git(repo, "commit", "-q", "-m", "oops", check=False)
    assert forced.returncode != 0
    assert "tracked by data/weights.bin.tether" in forced.stderr

    # A higher limit (re-install updates our own hooks in place) lets it through.
    assert {d["action"] for d in install("--max-size", "1MB")} == {"updated", "unchanged"}
    assert git(repo, "commit", "-q", "-m", "fine under 1MB", check=False).returncode == 0


def test_foreign_hooks_are_chained_not_overwritten(repo: Path, tmp_path: Path) -> None:
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    log = tmp_path / "foreign.log"
    foreign = hooks / "pre-commit"
    foreign.write_text(f"#!/bin/sh\necho foreign-ran >> {log}\nexit 0\n")
    foreign.chmod(0o755)
    done = {d["hook"]: d for d in install()}
    assert done["pre-commit"]["action"] == "chained"
    assert done["pre-commit"]["chained"] == str(hooks / f"pre-commit{CHAINED_SUFFIX}")
    assert "foreign-ran" in (hooks / f"pre-commit{CHAINED_SUFFIX}").read_text()
    assert {d["action"] for d in install()} == {"unchanged"}  # and stays chained

    (repo / "a.txt").write_text("a\n")
    git(repo, "add", "a.txt")
    assert git(repo, "commit", "-q", "-m", "a", check=False).returncode == 0
    assert log.read_text() == "foreign-ran\n"

    # A foreign hook that refuses still refuses: ours runs it first.
    (hooks / f"pre-commit{CHAINED_SUFFIX}").write_text("#!/bin/sh\necho no >&2\nexit 3\n")
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    assert git(repo, "commit", "-q", "-m", "b", check=False).returncode != 0

    # --force replaces a hook that is not ours.
    (hooks / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    replaced = {d["hook"]: d["action"] for d in install("--force")}
    assert replaced["pre-push"] == "replaced"
    assert "tether check" in (hooks / "pre-push").read_text()


def test_pre_push_runs_tether_check_when_there_is_a_lock(repo: Path, tmp_path: Path) -> None:
    tether.init(repo / ".tether", actor="hooks@test").close()
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    install()
    (repo / "app.py").write_text("print('hi')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    # No tether.lock: nothing to check, the push goes through.
    assert git(repo, "push", "-q", "origin", "main", check=False).returncode == 0

    # A lock edited by hand fails `tether check`, so the push is refused.
    (repo / "tether.lock").write_text(json.dumps({"format": 1, "models": {}, "integrity": "x"}))
    git(repo, "add", "tether.lock")
    git(repo, "commit", "-q", "-m", "lock")
    refused = git(repo, "push", "-q", "origin", "main", check=False)
    assert refused.returncode != 0
    assert "tether.lock" in refused.stderr
    assert git(remote, "log", "--format=%s", "main").stdout.split("\n")[0] == "app"

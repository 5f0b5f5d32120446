"""`tether data push` / `pull` over the pointers of a real git repository made here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether._registry.datasets_io import track
from tether.cli import cli

from .conftest import git, git_project


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_project(tmp_path, monkeypatch, name="Data Tester", email="data@test")
    (root / "data").mkdir()
    monkeypatch.chdir(root)
    return root


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def run(repo: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--registry", str(repo / ".tether"), *args])
    assert result.exit_code == code, result.output
    return json.loads(result.output) if "--json" in args else result.output


def by_path(done: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["path"]: item for item in done}


def test_push_then_pull_across_branches(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = tether.init(repo / ".tether", actor="data@test")
    train = repo / "data" / "train.csv"
    images = repo / "data" / "images"
    train.write_text("a,b\n1,2\n")
    (images / "cats").mkdir(parents=True)
    (images / "cats" / "a.txt").write_text("cat a")
    (images / "dog.txt").write_text("dog")
    track(reg, train, name="train")
    track(reg, images, name="images")
    reg.close()
    commit_all(repo, "data v1")

    # Nothing changed: push adds nothing and leaves the pointers alone.
    done = by_path(run(repo, "data", "push", "--json"))
    assert {p: d["status"] for p, d in done.items()} == {
        "data/images": "up-to-date", "data/train.csv": "up-to-date"
    }
    assert git(repo, "status", "--porcelain") == ""

    # On a branch, edit both; push adds them and rewrites both pointers.
    git(repo, "checkout", "-q", "-b", "more")
    train.write_text("a,b\n1,2\n3,4\n")
    (images / "cats" / "b.txt").write_text("cat b")
    done = by_path(run(repo, "data", "push", "--json"))
    assert done["data/train.csv"]["status"] == "pushed"
    assert done["data/train.csv"]["previous"] == "1.0.0"
    assert done["data/train.csv"]["version"] == "1.1.0"
    assert done["data/images"]["status"] == "pushed"
    assert sorted(line.strip() for line in git(repo, "status", "--porcelain").splitlines()) == [
        "M data/images.tether", "M data/train.csv.tether"
    ]
    assert f"digest: {done['data/train.csv']['digest']}" in (
        repo / "data" / "train.csv.tether"
    ).read_text()
    commit_all(repo, "data v2")
    # Only the paths asked for: nothing more to push there.
    assert run(repo, "data", "push", "data/images", "--json")[0]["status"] == "up-to-date"

    # Back on main: the pointers say v1, the tree still holds v2 -> pull rewrites it.
    git(repo, "checkout", "-q", "main")
    done = by_path(run(repo, "data", "pull", "--json"))
    assert {p: (d["status"], d["version"]) for p, d in done.items()} == {
        "data/images": ("pulled", "1.0.0"), "data/train.csv": ("pulled", "1.0.0")
    }
    assert train.read_text() == "a,b\n1,2\n"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        "cats/a.txt", "dog.txt"
    ]
    # Pulled again: every byte re-hashed and found in place, nothing written.
    assert {d["status"] for d in run(repo, "data", "pull", "--json")} == {"up-to-date"}

    # A fresh clone has only the pointers; pull (the top-level spelling) brings the bytes.
    clone = repo.parent / "clone"
    git(repo.parent, "clone", "-q", "-b", "more", str(repo), str(clone))
    assert not (clone / "data" / "train.csv").exists()
    monkeypatch.chdir(clone)
    output = run(repo, "pull")
    assert "↓ data/train.csv  train@1.1.0" in output and "2 pulled, 0 unchanged" in output
    assert (clone / "data" / "train.csv").read_text() == "a,b\n1,2\n3,4\n"
    assert (clone / "data" / "images" / "cats" / "b.txt").read_text() == "cat b"
    assert git(clone, "status", "--porcelain") == ""


def test_pull_reports_a_pointer_the_registry_lacks(repo: Path, tmp_path: Path) -> None:
    other = tether.init(tmp_path / "elsewhere", actor="data@test")
    train = repo / "data" / "train.csv"
    train.write_text("x\n1\n")
    track(other, train, name="train")
    other.close()
    tether.init(repo / ".tether", actor="data@test").close()
    train.unlink()
    done = run(repo, "data", "pull", "--json", code=1)
    assert done[0]["status"] == "failed" and "train" in done[0]["error"]
    # push with nothing in the tree says so and changes nothing
    assert run(repo, "data", "push", "--json")[0]["status"] == "missing"


def test_push_outside_git_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tether.init(tmp_path / ".tether", actor="data@test").close()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    output = run(tmp_path, "data", "push", code=1)
    assert "not inside a git work tree" in output


def _tracked_folder(repo: Path) -> Path:
    data = repo / "data"
    (data / "a.csv").write_text("id\n1\n")
    (data / "b.csv").write_text("id\n2\n")
    reg = tether.init(repo / ".tether", actor="data@test")
    track(reg, data, name="ds")
    reg.close()
    commit_all(repo, "ds v1")
    return data


def test_pull_never_loses_work_no_version_holds_unless_forced(repo: Path) -> None:
    """Edits and new files in a tracked folder, not pushed: pull reverted the edit and
    deleted the new file, "1 pulled", without a word (a review)."""
    data = _tracked_folder(repo)
    (data / "a.csv").write_text("id\n1\nMY UNPUSHED EDIT\n")
    (data / "new.csv").write_text("precious\n")
    done = run(repo, "data", "pull", "--json", code=1)
    assert [d["status"] for d in done] == ["failed"]
    assert "changes no version holds" in done[0]["error"]
    assert "--force" in done[0]["error"] or "push" in done[0]["error"]
    assert (data / "new.csv").read_text() == "precious\n"
    assert "MY UNPUSHED EDIT" in (data / "a.csv").read_text()
    # Pushed, the same bytes are a version: pulling an older pointer replaces them.
    assert [d["status"] for d in run(repo, "data", "push", "--json")] == ["pushed"]
    git(repo, "checkout", "-q", "data.tether")  # the pointer back at v1
    assert [d["status"] for d in run(repo, "data", "pull", "--json")] == ["pulled"]
    assert not (data / "new.csv").exists() and (data / "a.csv").read_text() == "id\n1\n"
    # And --force replaces what no version holds, on purpose.
    (data / "b.csv").write_text("scratch\n")
    assert [d["status"] for d in run(repo, "data", "pull", "--force", "--json")] == ["pulled"]
    assert (data / "b.csv").read_text() == "id\n2\n"


def test_a_pull_whose_fetch_fails_leaves_the_folder_as_it_was(repo: Path) -> None:
    """The files the version lacks were deleted before its bytes were fetched: a fetch
    that failed left the folder neither the old state nor the new (a review)."""
    data = _tracked_folder(repo)
    (data / "a.csv").write_text("id\nedit\n")
    (data / "extra.csv").write_text("mine\n")
    for pack in (repo / ".tether").rglob("packs/*.pack"):
        pack.chmod(0o644)
        with open(pack, "r+b") as handle:
            handle.truncate(0)
    done = run(repo, "data", "pull", "--force", "--json", code=1)
    assert [d["status"] for d in done] == ["failed"]
    assert (data / "extra.csv").read_text() == "mine\n"
    assert (data / "a.csv").read_text() == "id\nedit\n"
    assert not list(repo.glob(".tether-checkout-*"))


def test_pull_leaves_a_path_whose_last_version_this_registry_lacks(repo: Path) -> None:
    """The version a path last held here is not in this registry: whether the path holds
    changes cannot be told, so it is left alone, and said so (not "edited")."""
    data = _tracked_folder(repo)
    (data / "a.csv").write_text("id\n1\n2\n")
    assert [d["status"] for d in run(repo, "data", "push", "--json")] == ["pushed"]
    record = repo / ".git" / "tether" / "held-paths"
    lines = record.read_text().splitlines()
    held = json.loads(lines[-1])
    record.write_text("\n".join([*lines, json.dumps([held[0], held[1], "sha:" + "0" * 64])])
                      + "\n")
    git(repo, "checkout", "-q", "data.tether")  # the pointer back at v1
    done = run(repo, "data", "pull", "--json", code=1)
    assert [d["status"] for d in done] == ["failed"]
    assert "cannot be told" in done[0]["error"]
    assert (data / "a.csv").read_text() == "id\n1\n2\n"
    assert [d["status"] for d in run(repo, "data", "pull", "--force", "--json")] == ["pulled"]
    assert (data / "a.csv").read_text() == "id\n1\n"


def test_a_pull_reads_each_file_once_to_judge_it(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull judges a file against the version its pointer names, the version it last
    held here, and again as it syncs the folder: each file is hashed once, not three
    times (a 10 GB folder was read 30 GB)."""
    from tether._registry import datasets_io

    data = _tracked_folder(repo)
    (data / "a.csv").write_text("id\n1\n2\n")
    assert [d["status"] for d in run(repo, "data", "push", "--json")] == ["pushed"]
    git(repo, "checkout", "-q", "data.tether")  # the pointer back at v1
    hashed: list[str] = []
    real = datasets_io._file_digest

    def counted(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(datasets_io, "_file_digest", counted)
    assert [d["status"] for d in run(repo, "data", "pull", "--json")] == ["pulled"]
    assert sorted(hashed) == ["a.csv", "b.csv"]
    assert (data / "a.csv").read_text() == "id\n1\n"

"""Data tracked in git by pointer files: read at a revision, like dvc.api.open.

Every test makes real git repositories in its temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import tether
from tether import NotFound
from tether._registry.datasets_io import checkout, track
from tether.cli import cli

from .conftest import git, git_project


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_project(tmp_path, monkeypatch, name="Data Tester", email="data@test")
    (root / "data").mkdir()
    return root


def commit_all(root: Path, message: str, tag: str | None = None) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    if tag:
        git(root, "tag", tag)


def test_track_writes_a_pointer_and_ignores_the_data(repo: Path) -> None:
    reg = tether.init(repo / ".tether", actor="data@test")
    train = repo / "data" / "train.csv"
    train.write_text("a,b\n1,2\n")
    pointer, version = track(reg, train)
    assert pointer == repo / "data" / "train.csv.tether"
    body = pointer.read_text()
    assert f"digest: sha:{version.digest}" in body and "dataset: train.csv" in body
    assert (repo / "data" / ".gitignore").read_text() == "/train.csv\n"
    track(reg, train)  # again: the line is not repeated
    assert (repo / "data" / ".gitignore").read_text() == "/train.csv\n"
    commit_all(repo, "track train")
    assert git(repo, "ls-files", "data") == "data/.gitignore\ndata/train.csv.tether"
    reg.close()


def test_open_at_a_revision_local_and_remote(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_root = repo / ".tether"
    tether.init(registry_root, actor="data@test").close()
    monkeypatch.chdir(repo)
    train = repo / "data" / "train.csv"
    runner = CliRunner()

    def track_cli(*extra: str) -> dict[str, object]:
        result = runner.invoke(
            cli, ["--registry", str(registry_root), "data", "track", "data/train.csv",
                  "--name", "train", "--json", *extra]
        )
        assert result.exit_code == 0, result.output
        loaded: dict[str, object] = json.loads(result.output)
        return loaded

    train.write_text("a,b\n1,2\n")
    assert track_cli()["semver"] == "1.0.0"
    commit_all(repo, "data v1", tag="v1")
    train.write_text("a,b\n1,2\n3,4\n")
    assert track_cli()["semver"] == "1.1.0"
    commit_all(repo, "data v2", tag="v2")
    train.write_text("a,b\n9,9\n")  # the working tree's pointer still says v2

    def read(**options: str | None) -> bytes:
        with tether.open_dataset("data/train.csv", registry=registry_root, **options) as handle:
            data: bytes = handle.read()
            return data

    assert read(rev="v1") == b"a,b\n1,2\n"
    assert read(rev="v2") == b"a,b\n1,2\n3,4\n"
    assert read(rev="HEAD~1") == b"a,b\n1,2\n"
    assert read() == b"a,b\n1,2\n3,4\n"  # no rev: the pointer in the working tree
    with tether.open_dataset(
        "data/train.csv", repo=str(repo), rev="v1", mode="r", registry=registry_root
    ) as text:
        assert text.read() == "a,b\n1,2\n"

    # A clone elsewhere, read through its URL: only the pointer comes from git.
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    monkeypatch.chdir(tmp_path)
    assert read(repo=f"file://{remote}", rev="v1") == b"a,b\n1,2\n"
    assert read(repo=f"file://{remote}", rev="main") == b"a,b\n1,2\n3,4\n"
    with pytest.raises(NotFound, match="not tracked by Tether at v1"):
        tether.open_dataset(
            "data/other.csv", repo=f"file://{remote}", rev="v1", registry=registry_root
        )


def test_a_tracked_folder_and_checkout_across_branches(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = tether.init(repo / ".tether", actor="data@test")
    monkeypatch.chdir(repo)
    images = repo / "data" / "images"
    (images / "cats").mkdir(parents=True)
    (images / "cats" / "a.txt").write_text("cat a")
    (images / "dog.txt").write_text("dog")
    track(reg, images, name="images")
    commit_all(repo, "images v1")
    git(repo, "checkout", "-q", "-b", "more-cats")
    (images / "cats" / "b.txt").write_text("cat b")
    (images / "cats" / "a.txt").write_text("cat A, relabelled")
    _, second = track(reg, images, name="images")
    assert second.semver == "1.1.0"
    commit_all(repo, "more cats")

    with tether.open_dataset(
        "data/images/cats/a.txt", rev="main", registry=repo / ".tether"
    ) as handle:
        assert handle.read() == b"cat a"
    with tether.open_dataset(
        "data/images/cats/b.txt", rev="more-cats", registry=repo / ".tether"
    ) as handle:
        assert handle.read() == b"cat b"
    with pytest.raises(NotFound, match=r"has no file 'cats/b\.txt'"):
        tether.open_dataset("data/images/cats/b.txt", rev="main", registry=repo / ".tether")

    # Switching branches switches the pointer; checkout brings that branch's bytes.
    git(repo, "checkout", "-q", "main")
    assert checkout(reg, images).semver == "1.0.0"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()) == [
        "cats/a.txt", "dog.txt"
    ]
    assert (images / "cats" / "a.txt").read_text() == "cat a"
    git(repo, "checkout", "-q", "more-cats")
    result = CliRunner().invoke(
        cli, ["--registry", str(repo / ".tether"), "data", "checkout", "data/images", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["semver"] == "1.1.0"
    assert (images / "cats" / "b.txt").read_text() == "cat b"
    assert git(repo, "status", "--porcelain") == ""  # the data itself never shows up in git
    reg.close()

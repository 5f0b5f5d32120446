"""`tether import dvc` over a hand-made DVC 3 repository (DVC itself is not installed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether.cli import cli

from .conftest import git, git_project


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def cache_put(cache: Path, data: bytes, suffix: str = "") -> str:
    """Store ``data`` the way DVC 3 does: cache/files/md5/ab/cdef…"""
    digest = md5(data) + suffix
    where = cache / "files" / "md5" / digest[:2] / digest[2:]
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(data)
    return digest


@pytest.fixture
def dvc_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = git_project(tmp_path, monkeypatch, name="Dvc User", email="dvc@test")
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    autostage = true\n")
    (root / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    cache = root / ".dvc" / "cache"

    # A file added with `dvc add data/train.csv`.
    train = b"a,b\n1,2\n3,4\n"
    (root / "data").mkdir()
    (root / "data" / "train.csv.dvc").write_text(
        "outs:\n"
        f"- md5: {cache_put(cache, train)}\n"
        f"  size: {len(train)}\n"
        "  hash: md5\n"
        "  path: train.csv\n"
    )
    # A folder added with `dvc add data/images`: a .dir listing plus each file.
    files = {"cats/a.txt": b"cat a", "dog.txt": b"dog"}
    listing = [{"md5": cache_put(cache, data), "relpath": rel} for rel, data in files.items()]
    dir_md5 = cache_put(cache, json.dumps(listing).encode(), suffix=".dir")
    (root / "data" / "images.dvc").write_text(
        f"outs:\n- md5: {dir_md5}\n  size: 8\n  nfiles: 2\n  hash: md5\n  path: images\n"
    )
    # A pipeline whose stage writes model/features.parquet (one out kept in git).
    features = b"\x00PAR1 pretend parquet bytes"
    (root / "dvc.yaml").write_text("stages:\n  featurize:\n    cmd: python featurize.py\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\n"
        "stages:\n"
        "  featurize:\n"
        "    cmd: python featurize.py\n"
        "    deps:\n"
        f"    - path: data/train.csv\n      hash: md5\n      md5: {md5(train)}\n"
        "    outs:\n"
        "    - path: out/features.parquet\n      hash: md5\n"
        f"      md5: {cache_put(cache, features)}\n"
        f"      size: {len(features)}\n"
        f"    - path: out/summary.json\n      hash: md5\n      md5: {md5(b'{}')}\n"
        "      size: 2\n      cache: false\n"
    )
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "dvc-tracked data")
    monkeypatch.chdir(root)
    tether.init(tmp_path / "reg", actor="dvc@test").close()
    return root


def run(root: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--registry", str(root.parent / "reg"), *args])
    assert result.exit_code == code, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_import_dvc_registers_files_folders_and_pipeline_outputs(
    dvc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = run(dvc_repo, "import", "dvc", "--dry-run", "--json")
    assert {d["path"]: d["status"] for d in planned} == {
        "data/images": "planned", "data/train.csv": "planned",
        "out/features.parquet": "planned", "out/summary.json": "skipped",
    }
    reg = tether.open(dvc_repo.parent / "reg")
    assert reg.list_datasets() == []
    reg.close()

    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--write-pointers", "--json")}
    assert done["data/train.csv"]["status"] == "imported"
    assert done["data/train.csv"]["dataset"] == "train.csv"
    assert done["data/images"]["files"] == 2
    assert done["out/features.parquet"]["source"] == "dvc.lock:featurize"
    assert done["out/summary.json"]["status"] == "skipped"

    reg = tether.open(dvc_repo.parent / "reg")
    train = reg.get_dataset("train.csv@latest")
    assert train.tags["dvc.md5"] == md5(b"a,b\n1,2\n3,4\n")
    with tether.open_dataset("train.csv@latest", "train.csv",
                             registry=dvc_repo.parent / "reg") as handle:
        assert handle.read() == b"a,b\n1,2\n3,4\n"
    images = reg.get_dataset("images@latest")
    assert sorted(f.path for f in images.files) == ["cats/a.txt", "dog.txt"]
    reg.close()

    # Again: the same bytes are the same versions.
    again = run(dvc_repo, "import", "dvc", "--json")
    assert {d["status"] for d in again if d["path"] != "out/summary.json"} == {"unchanged"}

    # The pointers it wrote let `tether data pull` replace `dvc pull` in a clone.
    assert (dvc_repo / "data" / "train.csv.tether").is_file()
    clone = dvc_repo.parent / "clone"
    git(dvc_repo, "add", "data/train.csv.tether", "data/images.tether",
        "out/features.parquet.tether")
    git(dvc_repo, "commit", "-q", "-m", "tether pointers")
    git(dvc_repo.parent, "clone", "-q", str(dvc_repo), str(clone))
    monkeypatch.chdir(clone)
    statuses = {d["path"]: d["status"] for d in run(dvc_repo, "data", "pull", "--json")}
    assert statuses == {"data/images": "pulled", "data/train.csv": "pulled",
                        "out/features.parquet": "pulled"}
    assert (clone / "data" / "images" / "cats" / "a.txt").read_bytes() == b"cat a"


def test_missing_and_corrupt_cache_objects_are_reported(dvc_repo: Path) -> None:
    cache = dvc_repo / ".dvc" / "cache" / "files" / "md5"
    train = md5(b"a,b\n1,2\n3,4\n")
    (cache / train[:2] / train[2:]).write_bytes(b"a,b\n1,2\n3,5\n")  # same size, not the bytes
    features = next(p for p in cache.rglob("*") if p.is_file() and p.read_bytes().startswith(
        b"\x00PAR1"))
    features.unlink()
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    assert done["data/train.csv"]["status"] == "failed"
    assert "does not hold the bytes of md5" in done["data/train.csv"]["error"]
    assert done["out/features.parquet"]["status"] == "missing"
    assert done["data/images"]["status"] == "imported"
    output = run(dvc_repo, "import", "dvc", code=1)
    assert "1 unchanged" in output and "1 missing" in output and "1 failed" in output


def test_a_local_default_remote_and_dvc2_layout(dvc_repo: Path, tmp_path: Path) -> None:
    # Move the cache away into a local remote with DVC 2's flat layout.
    cache = dvc_repo / ".dvc" / "cache"
    remote = tmp_path / "dvc-remote"
    for item in (cache / "files" / "md5").rglob("*"):
        if item.is_file():
            target = remote / item.parent.name / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            item.rename(target)
    (dvc_repo / ".dvc" / "config").write_text(
        "[core]\n    remote = store\n['remote \"store\"']\n    url = ../../dvc-remote\n"
    )
    done = {d["path"]: d["status"] for d in run(dvc_repo, "import", "dvc", "--json")}
    assert done == {"data/images": "imported", "data/train.csv": "imported",
                    "out/features.parquet": "imported", "out/summary.json": "skipped"}


def test_not_a_dvc_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tether.init(tmp_path / "reg").close()
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    assert "not a DVC repository" in run(tmp_path / "plain", "import", "dvc", code=1)


def test_an_import_keeps_its_scratch_out_of_the_system_temp_folder(
    dvc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Imports copied whole datasets into /tmp, where a killed import left them for good;
    they go to the registry's cache folder, named for the process, as ingests do."""
    import tempfile

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: list[str] = []
    real = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        made = real(*args, **kwargs)
        seen.append(made)
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json")}
    assert done["data/train.csv"]["status"] == "imported"
    assert list(system_tmp.iterdir()) == []
    assert seen and all(f"{Path('cache')}/tmp/dvc-" in made for made in seen), seen


def test_hostile_dvc_files_are_refused_clearly(dvc_repo: Path) -> None:
    """An output outside the repository was a ValueError traceback; a folder listing with
    relpath '.' aborted the whole import."""
    (dvc_repo / "escape.dvc").write_text("outs:\n- md5: " + "0" * 32 + "\n  path: ../../x\n")
    outside = run(dvc_repo, "import", "dvc", "--json", code=1)
    assert outside["error"] == "invalid_input" and "outside the repository" in outside["message"]
    (dvc_repo / "escape.dvc").unlink()
    cache = dvc_repo / ".dvc" / "cache"
    listing = [{"md5": cache_put(cache, b"x"), "relpath": "."}]
    dir_md5 = cache_put(cache, json.dumps(listing).encode(), suffix=".dir")
    (dvc_repo / "data" / "dot.dvc").write_text(f"outs:\n- md5: {dir_md5}\n  path: dot\n")
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    assert done["data/dot"]["status"] == "failed" and "outside the folder" in done["data/dot"][
        "error"]
    assert done["data/images"]["status"] == "imported"  # the others went on


# -- hostile caches and pointers (a review) ------------------------------------------------


def test_a_cache_object_linked_outside_the_repository_is_not_read(
        dvc_repo: Path, tmp_path: Path) -> None:
    """A cache object that is a link to a file outside the repository was imported as a
    dataset, and with a wrong md5 the error quoted the outside file's MD5 (a hash oracle
    over any readable file)."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"TOP SECRET outside the repo\n")
    cache = dvc_repo / ".dvc" / "cache" / "files" / "md5"
    leak = md5(secret.read_bytes())
    (cache / leak[:2]).mkdir(exist_ok=True)
    (cache / leak[:2] / leak[2:]).symlink_to(secret)
    (dvc_repo / "leak.dvc").write_text(f"outs:\n- md5: {leak}\n  path: leak.txt\n")
    fake = "ab" * 16
    (cache / fake[:2]).mkdir(exist_ok=True)
    (cache / fake[:2] / fake[2:]).symlink_to(secret)
    (dvc_repo / "oracle.dvc").write_text(f"outs:\n- md5: {fake}\n  path: oracle.txt\n")
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    for path in ("leak.txt", "oracle.txt"):
        assert done[path]["status"] == "failed", done[path]
        assert "plain file" in done[path]["error"]
        assert leak not in done[path]["error"]
    assert done["data/train.csv"]["status"] == "imported"  # the others go on
    assert "leak.txt" not in [d.name for d in tether.open(dvc_repo.parent / "reg")
                              .list_datasets()]


def test_a_linked_dvc_folder_is_refused_unread(dvc_repo: Path, tmp_path: Path) -> None:
    """.dvc linked to a folder of the user's (~/.ssh): its config was read and quoted."""
    import shutil

    private = tmp_path / "home" / ".ssh"
    private.mkdir(parents=True)
    (private / "config").write_text("Host prod-bastion\n")
    shutil.rmtree(dvc_repo / ".dvc")
    (dvc_repo / ".dvc").symlink_to(private)
    result = CliRunner().invoke(cli, ["--registry", str(dvc_repo.parent / "reg"),
                                      "import", "dvc", str(dvc_repo)])
    assert result.exit_code != 0
    assert "is a link" in result.output and "prod-bastion" not in result.output
    assert "Traceback" not in result.output


def test_nul_bytes_in_names_are_clear_errors(dvc_repo: Path) -> None:
    """A NUL in an output's path, or in a folder listing's relpath, ended the import in a
    traceback; the listing's, half way through, with earlier outputs already imported."""
    cache = dvc_repo / ".dvc" / "cache"
    listing = [{"md5": cache_put(cache, b"x"), "relpath": "a\u0000b"}]
    folder = cache_put(cache, json.dumps(listing).encode(), suffix=".dir")
    (dvc_repo / "nul.dvc").write_text(f"outs:\n- md5: {folder}\n  path: nul-folder\n")
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    assert done["nul-folder"]["status"] == "failed"
    assert "not a file name" in done["nul-folder"]["error"]
    assert done["data/images"]["status"] == "imported"
    (dvc_repo / "nul.dvc").write_text(f"outs:\n- md5: {md5(b'x')}\n  path: \"a\\0b\"\n")
    result = CliRunner().invoke(cli, ["--registry", str(dvc_repo.parent / "reg"),
                                      "import", "dvc", str(dvc_repo)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not a file name" in result.output
    (dvc_repo / "nul.dvc").write_text(f"wdir: \"a\\0b\"\nouts:\n- md5: {md5(b'x')}\n  path: x\n")
    result = CliRunner().invoke(cli, ["--registry", str(dvc_repo.parent / "reg"),
                                      "import", "dvc", str(dvc_repo)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "is not a folder name" in result.output


def test_a_cache_object_of_another_size_than_claimed_is_not_copied(dvc_repo: Path) -> None:
    """A pointer claiming 3 bytes with a 256 MB sparse object took 256 MB of the disk
    before the md5 said no; the size is checked first."""
    cache = dvc_repo / ".dvc" / "cache" / "files" / "md5"
    big = "cd" * 16
    (cache / big[:2]).mkdir(exist_ok=True)
    with open(cache / big[:2] / big[2:], "wb") as handle:
        handle.truncate(256 << 20)
    (dvc_repo / "big.dvc").write_text(f"outs:\n- md5: {big}\n  size: 3\n  path: big.bin\n")
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    assert done["big.bin"]["status"] == "failed"
    assert "the pointer says 3" in done["big.bin"]["error"]


def test_a_listing_naming_a_file_twice_is_refused(dvc_repo: Path) -> None:
    cache = dvc_repo / ".dvc" / "cache"
    listing = [{"md5": cache_put(cache, b"one"), "relpath": "a.txt"},
               {"md5": cache_put(cache, b"two"), "relpath": "a.txt"}]
    folder = cache_put(cache, json.dumps(listing).encode(), suffix=".dir")
    (dvc_repo / "twice.dvc").write_text(f"outs:\n- md5: {folder}\n  path: twice\n")
    done = {d["path"]: d for d in run(dvc_repo, "import", "dvc", "--json", code=1)}
    assert done["twice"]["status"] == "failed" and "twice" in done["twice"]["error"]

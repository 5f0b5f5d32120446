"""Importers against hostile sources: an MLflow registry or a DVC repository written by
an attacker (each case from a review, replayed here; the harm shown the unsafe way where
it can be)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from tether import Registry
from tether._errors import InvalidInput
from tether._registry import import_mlflow as importer
from tether._registry.import_dvc import _dataset_names, import_dvc
from tether.cli import cli

pytest.importorskip("mlflow")


class _Page(list[Any]):
    token = None


class HostileMlflow:
    """An MLflow client whose server says model ``churn`` v1's artifacts are ``location``."""

    def __init__(self, location: str, versions: tuple[str, ...] = ("1",)) -> None:
        self.location = location
        self.versions = versions

    def search_registered_models(self, **_: Any) -> _Page:
        return _Page([SimpleNamespace(name="churn")])

    def get_registered_model(self, name: str) -> Any:
        return SimpleNamespace(name=name, description="", tags={}, aliases={})

    def search_model_versions(self, *_: Any, **__: Any) -> _Page:
        return _Page(SimpleNamespace(name="churn", version=v, source="s3://b/m", run_id=None,
                                     status="READY", tags={}, description="")
                     for v in self.versions)

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return self.location


def _secret(tmp_path: Path) -> Path:
    folder = tmp_path / "home" / ".ssh"
    folder.mkdir(parents=True)
    (folder / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY----- secret\n")
    return folder


def test_a_server_cannot_make_the_import_store_this_machines_files(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _secret(tmp_path)
    client = HostileMlflow(f"file://{secret}")
    uri = "http://127.0.0.1:1"  # never reached: the client above answers

    # The harm, without the check: the folder became a version anyone could load.
    with monkeypatch.context() as unsafe:
        unsafe.setattr(importer.ArtifactSources, "check", lambda *a: None)
        importer.import_mlflow(registry, uri, client=client)
    stolen = Path(registry.load("churn@1.0.0"))
    assert "secret" in (stolen / "id_ed25519").read_text()
    registry.delete_model("churn")

    report = importer.import_mlflow(registry, uri, client=client)
    entry = report.models[0].versions[0]
    assert entry.status == "failed" and "outside the folders this import reads" in str(
        entry.note)
    for location in (str(secret), f"runs:/abc/{secret}", "ftp://x/y", "s3://private/keys",
                     "http://169.254.169.254/latest/meta-data/", "mlflow-artifacts://other:1/x"):
        report = importer.import_mlflow(registry, uri, client=HostileMlflow(location))
        assert report.models[0].versions[0].status == "failed", location


def test_artifact_sources_are_the_tracking_server_a_local_stores_folder_and_what_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "mlflow"
    inside = store / "mlruns" / "1" / "model"
    inside.mkdir(parents=True)
    (inside / "w.bin").write_bytes(b"w")
    secret = _secret(tmp_path)
    local = importer.ArtifactSources.of(f"sqlite:///{store / 'mlflow.db'}")
    # Beside a database only MLflow's own folders: run from home, the database's folder
    # was all of it (a review).
    assert store / "mlruns" in local.folders and store not in local.folders
    monkeypatch.chdir(tmp_path)
    assert tmp_path / "mlruns" in importer.ArtifactSources.of("sqlite:///mlflow.db").folders
    server = importer.ArtifactSources.of("http://h:5000")
    assert server.folders == () and server.tracking_host == "h:5000"

    for fine in (f"file://{inside}", str(inside)):
        assert local.check(fine, "v1") == (store / "mlruns", ("1", "model"))
    for outside in (str(secret), f"{inside}/../../../../home/.ssh", str(store / "mlflow.db"),
                    f"{store}/mlruns/%2e%2e/%2e%2e/home/.ssh", f"file://otherhost{inside}"):
        with pytest.raises(InvalidInput):
            local.check(outside, "v1")

    server.check("mlflow-artifacts:/1/abc/model", "v1")
    server.check("mlflow-artifacts://h:5000/1/abc/model", "v1")
    named = importer.ArtifactSources.of("http://h:5000", ["s3://bucket/mlflow", str(inside)])
    named.check("s3://bucket/mlflow/1/abc/model", "v1")
    named.check(str(inside), "v1")
    for refused in ("s3://bucket/mlflowx/1", "s3://bucket/other", "s3://bucket.evil/mlflow/1",
                    "s3://bucket/mlflow/../secrets/k", "s3://bucket/mlflow/%2e%2e/secrets/k",
                    "gs://bucket/mlflow/1", str(secret)):
        with pytest.raises(InvalidInput):
            named.check(refused, "v1")
    with pytest.raises(InvalidInput, match="neither a folder nor a URI"):
        importer.ArtifactSources.of("http://h", ["s3:nohost"])


def test_local_artifacts_are_copied_without_following_any_link(tmp_path: Path) -> None:
    """Checked first and copied by MLflow after, a link swapped in between was followed
    (a review: the private key stored on the 21st try); now every step is opened with
    O_NOFOLLOW, so what is checked is what is read."""
    store = tmp_path / "mlruns"
    model = store / "1" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "w.bin").write_bytes(b"weights")
    (model / "sub" / "a.txt").write_text("a")
    secret = _secret(tmp_path)
    copied = importer.copy_local(store, ("1", "model"), tmp_path / "out", "v1")
    assert (copied / "w.bin").read_bytes() == b"weights"
    assert (copied / "sub" / "a.txt").read_text() == "a"
    one = importer.copy_local(store, ("1", "model", "w.bin"), tmp_path / "one", "v1")
    assert one.read_bytes() == b"weights"
    (model / "key").symlink_to(secret / "id_ed25519")
    with pytest.raises(InvalidInput, match="symbolic link"):
        importer.copy_local(store, ("1", "model"), tmp_path / "out2", "v1")
    (model / "key").unlink()
    (store / "2").symlink_to(secret.parent, target_is_directory=True)  # a linked folder
    with pytest.raises(InvalidInput, match="symbolic link"):
        importer.copy_local(store, ("2", ".ssh"), tmp_path / "out3", "v1")
    os.mkfifo(model / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        importer.copy_local(store, ("1", "model"), tmp_path / "out4", "v1")


@pytest.mark.parametrize("text, note", [
    ("flavors:\n  sklearn: &a [" + "[" * 20_000 + "]" * 20_000 + "]\n", "unreadable"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "flavors: {sklearn: {serialization_format: [*b, *b, *b, *b]}}\n", "unreadable"),
    ("flavors: {1: {}, python_function: {}}\n", "flavors '1', 'python_function'"),
    ("flavors: {sklearn: {serialization_format: [skops]}}\n", "malformed"),
    ("flavors: {sklearn: {serialization_format: skops, pickled_model: {a: 1}}}\n", "malformed"),
])
def test_a_hostile_mlmodel_file_is_imported_as_files_with_a_note(
        tmp_path: Path, text: str, note: str) -> None:
    (tmp_path / "MLmodel").write_text(text)
    _, flavor, said = importer._choose_flavor(tmp_path)
    assert flavor == "files" and note in said, said


def test_one_broken_version_fails_alone(registry: Registry, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A version number that is not a number, and a library raising anything at all,
    ended the whole import with a traceback."""
    (tmp_path / "mlruns").mkdir()
    client = HostileMlflow(str(tmp_path / "mlruns"), versions=("2", "x", "1"))
    monkeypatch.setattr(importer, "_choose_flavor", lambda local: (_ for _ in ()).throw(
        RecursionError("maximum recursion depth exceeded")))
    report = importer.import_mlflow(registry, f"sqlite:///{tmp_path / 'm.db'}", client=client)
    versions = report.models[0].versions
    assert [v.mlflow_version for v in versions] == ["1", "2", "x"]
    assert all(v.status == "failed" and "RecursionError" in str(v.note) for v in versions)


def _dvc_repo(root: Path, dvc_file: str) -> Path:
    (root / ".dvc" / "cache").mkdir(parents=True)
    (root / "a.dvc").write_text(dvc_file)
    return root


@pytest.mark.parametrize("dvc_file, message", [
    ("outs:\n- &o {path: a, md5: " + "0" * 32 + "}\n- *o\n", "anchors or aliases"),
    ("outs:\n- path: a\n  md5: " + "0" * 32 + "\n  size: lots\n", "not a count of bytes"),
    ("outs:\n- path: a\n  md5: ../../../home/.ssh/id_ed25519\n", "not an MD5 digest"),
    ("outs:\n- path: [a]\n  md5: " + "0" * 32 + "\n", "not a file name"),
    ("outs: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper"),
    ("wdir: [x]\nouts: []\n", "not a folder name"),
])
def test_a_hostile_dvc_file_is_a_clear_error(registry: Registry, tmp_path: Path,
                                             dvc_file: str, message: str) -> None:
    repo = _dvc_repo(tmp_path / "repo", dvc_file)
    with pytest.raises(InvalidInput, match=message):
        import_dvc(registry, repo)
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "import",
                                      "dvc", str(repo)])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


def test_dvc_outputs_whose_names_meet_once_cleaned_are_different_datasets() -> None:
    outs = [SimpleNamespace(path=p) for p in ("a b.csv", "a-b.csv", "x/y.csv", "z/y.csv")]
    names = _dataset_names(outs)  # type: ignore[arg-type]
    assert len(set(names.values())) == 4, names
    assert names["x/y.csv"] == "x-y.csv"


def test_a_dvc_listing_naming_both_a_file_and_a_folder_under_it_fails_that_output_only(
        registry: Registry, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cache = repo / ".dvc" / "cache" / "files" / "md5"

    def put(data: bytes, suffix: str = "") -> str:
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest() + suffix
        (cache / digest[:2]).mkdir(parents=True, exist_ok=True)
        (cache / digest[:2] / digest[2:]).write_bytes(data)
        return digest

    leaf = put(b"leaf")
    listing = put(b'[{"relpath": "a", "md5": "%s"}, {"relpath": "a/b", "md5": "%s"}]'
                  % (leaf.encode(), leaf.encode()), ".dir")
    (repo / "d.dvc").write_text(f"outs:\n- path: d\n  md5: {listing}\n")
    (repo / "e.dvc").write_text(f"outs:\n- path: e\n  md5: {leaf}\n")
    done = {d.path: d for d in import_dvc(registry, repo)}
    assert done["d"].status == "failed" and "Error" in str(done["d"].error)
    assert done["e"].status == "imported"


def test_importers_show_a_sources_escape_sequences_escaped(
        registry: Registry, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = b"x"
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    where = repo / ".dvc" / "cache" / "files" / "md5" / digest[:2]
    where.mkdir(parents=True)
    (where / digest[2:]).write_bytes(data)
    evil = "\x1b[2J\x1b[32mALL GOOD"
    (repo / "a.dvc").write_text(f'outs:\n- path: "{evil.encode("unicode_escape").decode()}"\n'
                                f"  md5: {digest}\n")
    result = CliRunner().invoke(cli, ["--registry", str(registry.location.root), "import",
                                      "dvc", str(repo)])
    assert "\x1b" not in result.output and "\\x1b[2J" in result.output, result.output


def test_yaml_base_60_numbers_read_as_text() -> None:
    """YAML 1.1 made '1:0:0:...' an integer by repeated big-number multiplication: a
    2 MB .dvc file took 86 s of CPU (a review). Read as the text it is (YAML 1.2)."""
    from tether._plain_yaml import plain_yaml

    huge = ":".join(["1"] + ["0"] * 200_000)
    assert plain_yaml(f"size: {huge}\n", "x", max_bytes=1 << 20, max_depth=4) == {"size": huge}
    assert plain_yaml("a: 0x1f\nb: -1_000\nc: 1.5\nd: .inf\ne: 12:30\n", "x",
                      max_bytes=1024, max_depth=4) == {
        "a": 31, "b": -1000, "c": 1.5, "d": float("inf"), "e": "12:30"}


def test_explicit_number_tags_cannot_reach_base_60_arithmetic() -> None:
    """!!int and !!float reached the base-60 arithmetic the implicit rule no longer did
    (quadratic: 29 s for 1.2 MB), and '!!float 1:1:...' overflowed into a traceback."""
    from tether._plain_yaml import plain_yaml

    for text in ("x: !!int " + ":".join(["1"] + ["59"] * 50_000),
                 "x: !!float " + ":".join(["1"] * 200)):
        with pytest.raises(InvalidInput, match="base-60"):
            plain_yaml(text, "x", max_bytes=1 << 20, max_depth=4)
    assert plain_yaml("x: !!int 12\ny: !!float 1.5", "x", max_bytes=64,
                      max_depth=4) == {"x": 12, "y": 1.5}


def test_a_sparse_artifact_larger_than_the_free_space_is_refused_before_copying(
        tmp_path: Path) -> None:
    """A sparse file costs its source nothing and its copy every byte (a review)."""
    import shutil as sh

    store = tmp_path / "mlruns"
    (store / "1" / "model").mkdir(parents=True)
    huge = sh.disk_usage(tmp_path).free + (1 << 30)
    with open(store / "1" / "model" / "w.bin", "wb") as handle:
        handle.truncate(huge)  # no blocks on disk
    with pytest.raises(InvalidInput, match=r"more than the .* free"):
        importer.copy_local(store, ("1", "model"), tmp_path / "out", "v1")
    assert not (tmp_path / "out" / "model" / "w.bin").exists()


# -- a later review: bombs, links and listings a source could hold --------------------


def _put(cache: Path, data: bytes, suffix: str = "") -> str:
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest() + suffix
    (cache / digest[:2]).mkdir(parents=True, exist_ok=True)
    (cache / digest[:2] / digest[2:]).write_bytes(data)
    return digest


def test_a_dvc_file_or_config_that_is_a_link_is_not_read(registry: Registry,
                                                         tmp_path: Path) -> None:
    """`zero.dvc -> /dev/zero` reported a size of 0 and was read until memory ran out;
    `.dvc/config -> /dev/zero` the same (a review)."""
    import time

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "zero.dvc").symlink_to("/dev/zero")
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="link or not a regular file"):
        import_dvc(registry, repo)
    (repo / "zero.dvc").unlink()
    (repo / ".dvc" / "config").symlink_to("/dev/zero")
    with pytest.raises(InvalidInput, match="link or not a regular file"):
        import_dvc(registry, repo)
    assert time.perf_counter() - started < 5


def test_a_dvc_listing_is_checked_against_its_md5_and_a_deep_one_fails_alone(
        registry: Registry, tmp_path: Path) -> None:
    """A listing in the cache replaced by one naming other files was imported under the
    folder's md5, exit 0; one nested 100,000 deep ended the whole import (a review)."""
    repo = tmp_path / "repo"
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    good = _put(cache, b"real")
    listing = _put(cache, b'[{"relpath": "real.txt", "md5": "%s"}]' % good.encode(), ".dir")
    forged = _put(cache, b"forged")
    replaced = b'[{"relpath": "injected.txt", "md5": "%s"}]' % forged.encode()
    (cache / listing[:2] / listing[2:]).write_bytes(replaced)
    deep = _put(cache, b"[" * 100_000 + b"]" * 100_000, ".dir")
    (repo / "images.dvc").write_text(f"outs:\n- path: images\n  md5: {listing}\n")
    (repo / "deep.dvc").write_text(f"outs:\n- path: deep\n  md5: {deep}\n")
    (repo / "ok.dvc").write_text(f"outs:\n- path: ok.txt\n  md5: {good}\n")
    done = {d.path: d for d in import_dvc(registry, repo)}
    assert done["images"].status == "failed" and "does not match its md5" in str(
        done["images"].error)
    assert done["deep"].status == "failed"
    assert done["ok.txt"].status == "imported"


def test_a_skops_file_that_inflates_past_the_limit_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 MB model.skops whose schema.json inflated to 2 GB took 4.5 GB and 55 s to have
    its types read (a review). The inflated sizes are checked first."""
    import zipfile

    from tether._errors import UnsafeArtifact
    from tether._flavors import sklearn as flavor

    monkeypatch.setattr(flavor, "MAX_SKOPS_SCHEMA", 1 << 20)
    bomb = tmp_path / "model.skops"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", b" " * (2 << 20))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UnsafeArtifact, match="inflate"):
        flavor._load_skops(bomb, label="m@1", trusted=False, trusted_types=())


def test_an_mlflow_listing_that_never_ends_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile server answering a next page forever kept the import paging (1,496 pages
    in 60 s and growing, a review): a token given twice, or 10,000 pages, stops it."""
    from tether._errors import IntegrityError

    class Looped(list):  # type: ignore[type-arg]
        token = "again"  # every page names a next one, the same

    class Looping:
        def search_registered_models(self, **_: Any) -> Any:
            return Looped([SimpleNamespace(name="m")])

    with pytest.raises(IntegrityError, match="does not end"):
        importer._all_model_names(Looping(), "http://127.0.0.1:1")


def test_a_missing_local_mlflow_store_is_refused_not_created(tmp_path: Path) -> None:
    """`--from sqlite:///mlfow.db` (a typo) made a new database and reported 0 imported."""
    with pytest.raises(InvalidInput, match="does not exist"):
        importer.open_client(f"sqlite:///{tmp_path / 'mlfow.db'}")
    assert not (tmp_path / "mlfow.db").exists()
    with pytest.raises(InvalidInput, match="does not exist"):
        importer.open_client(str(tmp_path / "mlrnus"))


@pytest.mark.parametrize("config", ["[" * 100_000 + "]" * 100_000, "[1, 2]",
                                    '{"architectures": {"0": "X"}}', "{not json",
                                    '{"model_type": [1]}'])
def test_a_broken_hugging_face_config_is_a_clear_refusal(tmp_path: Path, config: str) -> None:
    from tether._flavors.huggingface_model import _config

    (tmp_path / "config.json").write_text(config)
    with pytest.raises(InvalidInput):
        _config(tmp_path / "config.json")


def test_mlflow_uris_that_are_not_local_paths_are_left_to_mlflow(tmp_path: Path) -> None:
    """The check for a missing local store refused `databricks` (a name MLflow resolves)
    and an existing folder given as a `file:` URI with an escaped space (a review)."""
    importer._check_local_store("databricks")
    importer._check_local_store("databricks-uc")
    (tmp_path / "my runs" / "mlruns").mkdir(parents=True)
    importer._check_local_store((tmp_path / "my runs" / "mlruns").as_uri())
    (tmp_path / "mlflow.db").write_bytes(b"")
    importer._check_local_store(f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=20")

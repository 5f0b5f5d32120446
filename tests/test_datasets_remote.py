"""Datasets through `tether server`: a real server process, a local store and moto S3.

The client chunks the files and uploads them through the blob gateway (presigned
straight to S3 where the store allows it); the server validates the manifest,
recomputes the digests, checks every chunk is stored and numbers the version.
Reads come back as ranged reads of the chunks a read covers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import tether
from tether import NotFound, PermissionDenied
from tether._errors import MissingChunks
from tether._registry.datasets_io import TetherFileSystem
from tether.cli import cli
from tether.remote import connect

from .conftest import make_bucket
from .servers import Server, start_server, stop


def _rows(start: int, count: int, seed: int = 3) -> str:
    rng = random.Random(seed + start)
    return "".join(
        f"{i},{rng.random():.6f},{rng.randint(0, 9)},{rng.choice('abcdef')}\n"
        for i in range(start, start + count)
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / "part-0.csv").write_text("id,x,y,label\n" + _rows(0, 60_000))
    (root / "README.txt").write_text("toy data\n")
    return root


@pytest.fixture(params=["local", "s3"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        make_bucket(endpoint, "data")
        store = "s3://data/registry"
    else:
        store = f"file://{tmp_path / 'objects'}"
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", store, tmp_path)
    try:
        yield running
    finally:
        stop(running)


def _client(server: Server, cache: Path, token: str | None = None) -> Any:
    return connect(server.url, token=token or server.admin_token, cache_dir=cache)


def test_add_versions_diff_promote_and_read_through_a_server(
    served: Server, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(served, tmp_path / "cache-writer")
    csv = folder / "train" / "part-0.csv"

    first = client.add_dataset(folder, "ds", notes="first cut")
    assert (first.seq, first.semver, first.bump_reasons) == (1, "1.0.0", ("first version",))
    assert first.author == "root@team"  # from the token, not from the client
    assert first.tables["train/part-0.csv"]["rows"] == 60_000
    again = client.add_dataset(folder, "ds", notes="first cut")  # same bytes: same version
    assert (again.seq, again.digest) == (1, first.digest)

    with csv.open("a") as handle:
        handle.write(_rows(60_000, 1_200))
    grown = client.add_dataset(folder, "ds")
    assert (grown.seq, grown.semver) == (2, "1.1.0")
    assert "train/part-0.csv: rows 60000 -> 61200" in grown.bump_reasons
    # Appending 2% stores about the appended bytes (plus a re-cut last chunk).
    assert grown.source["stored_bytes"] < 0.25 * csv.stat().st_size

    assert [v.semver for v in client.dataset_versions("ds")] == ["1.0.0", "1.1.0"]
    [info] = client.list_datasets()
    assert (info.name, info.version_count, info.latest) == ("ds", 2, "1.1.0")

    diff = client.diff_datasets("ds@1", "ds@2")
    [changed] = diff["changed"]
    assert changed["path"] == "train/part-0.csv"
    assert changed["table"]["rows_added"] == 1_200 and changed["table"]["rows_removed"] == 0
    assert diff["unchanged"] == 1

    move = client.promote_dataset("ds@1.1.0", "production", reason="fresh rows")
    assert (move.model, move.alias, move.version, move.action) == ("ds", "production", "1.1.0",
                                                                    "set")
    assert client.get_dataset("ds@production").digest == grown.digest
    assert client.get_dataset("ds@production").aliases == ("production",)
    events = client.audit_log(model="data:ds")
    assert [e.action for e in events].count("dataset.alias.set") == 1
    assert [e.action for e in events].count("dataset.added") == 2

    # A fresh client (empty cache) streams one range: only the chunks it covers come.
    reader = _client(served, tmp_path / "cache-reader")
    data = csv.read_bytes()
    with reader.open_dataset("ds@production", "train/part-0.csv") as handle:
        assert handle.size == len(data)
        handle.seek(len(data) // 2)
        assert handle.read(5_000) == data[len(data) // 2 : len(data) // 2 + 5_000]
        assert 0 < handle.fetched_bytes < len(data) // 3
    if served.store_url.startswith("s3://"):  # bytes straight from the bucket, presigned
        urls = [url for (key, method), (url, *_) in reader.store.blobs._urls.items()
                if method == "GET" and key.startswith("packs/")]
        assert urls and all("/api/v1/" not in str(url) for url in urls)

    # tether.open_dataset and the tether:// filesystem, given the server's URL.
    monkeypatch.setenv("TETHER_TOKEN", served.admin_token)
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache-env"))
    with tether.open_dataset("ds@production", "train/part-0.csv", registry=served.url) as handle:
        handle.seek(-100, 2)
        assert handle.read() == data[-100:]
    with tether.open_dataset("ds@1/README.txt", mode="r", registry=served.url) as text:
        assert text.read() == "toy data\n"

    pd = pytest.importorskip("pandas")
    frame = pd.read_csv("tether://ds@production/train/part-0.csv",
                        storage_options={"registry": served.url})
    assert frame.shape == (61_200, 4) and list(frame.columns) == ["id", "x", "y", "label"]
    assert frame.equals(pd.read_csv(csv))
    monkeypatch.setenv("TETHER_URI", served.url)  # the default registry of tether://
    fs = TetherFileSystem(token=served.admin_token)
    assert fs.cat_file("ds@1/README.txt", start=4, end=8) == b"data"
    assert sorted(fs.ls("ds@1", detail=False)) == ["ds@1/README.txt", "ds@1/train"]

    # The CLI against the server, too.
    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli, ["--registry", served.url, "data", *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert [v["semver"] for v in run("versions", "ds")] == ["1.0.0", "1.1.0"]
    assert run("show", "ds@production")["digest"] == f"sha:{grown.digest}"
    assert run("diff", "ds@1", "ds@2")["summary"]["changed"] == 1


def test_dataset_roles_on_a_server(folder: Path, tmp_path: Path) -> None:
    served = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                          tmp_path)
    try:
        admin = _client(served, tmp_path / "cache-admin")
        tokens = {who: admin.create_token(who, role=role)["token"] for who, role in
                  (("rita", "reader"), ("carl", "contributor"), ("anna", "approver"))}
        rita = _client(served, tmp_path / "cache-rita", tokens["rita"])
        carl = _client(served, tmp_path / "cache-carl", tokens["carl"])
        anna = _client(served, tmp_path / "cache-anna", tokens["anna"])

        with pytest.raises(PermissionDenied, match="needs role contributor"):
            rita.add_dataset(folder, "ds")
        added = carl.add_dataset(folder, "ds")
        assert added.author == "carl"
        assert rita.get_dataset("ds@1").digest == added.digest  # readers read
        assert len(rita.dataset_versions("ds")) == 1
        with rita.open_dataset("ds@1", "README.txt") as handle:
            assert handle.read() == b"toy data\n"

        # Alias moves follow role_to_move: contributor for an ordinary alias,
        # approver for a protected one (production by default); readers move none.
        with pytest.raises(PermissionDenied, match="needs role contributor on ds"):
            rita.promote_dataset("ds@1", "staging")
        assert carl.promote_dataset("ds@1", "staging").action == "set"
        with pytest.raises(PermissionDenied, match="needs role approver on ds"):
            carl.promote_dataset("ds@1", "production")
        assert anna.promote_dataset("ds@1", "production").actor == "anna"
        with pytest.raises(NotFound, match="no dataset named 'nope'"):
            rita.get_dataset("nope@1")
    finally:
        stop(served)


def test_the_server_reseals_and_checks_a_remote_commit(folder: Path, tmp_path: Path) -> None:
    served = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                          tmp_path)
    try:
        client = _client(served, tmp_path / "cache")
        real = client.add_dataset(folder, "ds")
        manifest = [f.to_dict() for f in real.files]
        base = {"manifest": manifest, "tables": {}, "source": {}, "tags": {}, "notes": "n"}

        def post(values: dict[str, Any], name: str = "ds") -> httpx.Response:
            return served.api("POST", f"/api/v1/datasets/{name}/versions",
                              json={"values": values})

        # A digest the client made up is ignored: the server computes its own.
        forged = post({**base, "digest": "sha:" + "0" * 64, "files_digest": "1" * 64})
        assert forged.status_code == 201, forged.text
        assert forged.json()["digest"] == f"sha:{real.digest}"
        assert forged.json()["semver"] == "1.0.1"  # notes only: patch

        # Bytes that were never uploaded are refused before anything is numbered.
        ghost = json.loads(json.dumps(manifest))
        ghost[0]["chunks"][0][0] = "f" * 64
        refused = post({**base, "manifest": ghost}, "ghost")
        assert refused.status_code == MissingChunks.http_status == 409
        assert "not in the store" in refused.json()["message"]

        escaping = json.loads(json.dumps(manifest))
        escaping[0]["path"] = "../../etc/passwd"
        assert post({**base, "manifest": escaping}).status_code == 400
        assert post({**base, "tables": {"README.txt": {"columns": "x"}}}).status_code == 400
        assert post({**base, "surprise": 1}).json()["error"] == "unknown_field"
        assert post({**base, "manifest": []}).status_code == 400
        bad_sizes = json.loads(json.dumps(manifest))
        bad_sizes[0]["size"] += 1
        assert post({**base, "manifest": bad_sizes}).status_code == 400
        with pytest.raises(NotFound):
            client.get_dataset("ghost@1")
        assert [v.semver for v in client.dataset_versions("ds")] == ["1.0.0", "1.0.1"]
    finally:
        stop(served)


def test_track_and_checkout_a_folder_through_a_server(folder: Path, tmp_path: Path) -> None:
    from tether._registry.datasets_io import checkout, track

    served = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                          tmp_path)
    try:
        client = _client(served, tmp_path / "cache")
        pointer, first = track(client, folder, name="ds")
        first_pointer = pointer.read_text()
        (folder / "README.txt").write_text("edited\n")
        (folder / "train" / "new.csv").write_text("a\n1\n")
        _, second = track(client, folder, name="ds")
        assert second.semver == "1.1.0"
        csv_before = (folder / "train" / "part-0.csv").stat().st_mtime_ns

        pointer.write_text(first_pointer)  # as after `git checkout` of the first commit
        (folder / "stray.tmp").write_text("not in any version")
        assert checkout(client, folder).digest == first.digest
        assert (folder / "README.txt").read_text() == "toy data\n"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                      if p.is_file()) == ["README.txt", "train/part-0.csv"]
        # The unchanged file was checked against its digest and left alone.
        assert (folder / "train" / "part-0.csv").stat().st_mtime_ns == csv_before
    finally:
        stop(served)


def test_committing_a_dataset_version_again_names_only_models_you_may_read(
        folder: Path, tmp_path: Path) -> None:
    """A contributor on one dataset read `used_by: []` for its version, sent the same
    fields back to be committed and got the models trained on it, names, versions and
    digests, a model it may not read among them (a review)."""
    served = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                          tmp_path)
    try:
        admin = _client(served, tmp_path / "cache-admin")
        admin.add_dataset(folder, "alpha")
        (tmp_path / "m.bin").write_bytes(b"secret model")
        secret = admin.log_model(tmp_path / "m.bin", "secret", data={"train": "alpha@1"},
                                 progress=False)
        assert [u["model"] for u in admin.get_dataset("alpha@1").used_by] == ["secret"]
        carl = admin.create_token("carl", role="contributor", model="alpha")["token"]
        shown = served.api("GET", "/api/v1/datasets/alpha/versions/1", token=carl).json()
        assert shown["used_by"] == []
        values = {k: shown[k] for k in ("tables", "source", "tags", "notes")}
        again = served.api("POST", "/api/v1/datasets/alpha/versions", token=carl,
                           json={"values": {**values, "manifest": shown["files"]}})
        assert again.status_code == 201, again.text
        assert again.json()["used_by"] == [] and secret.digest not in again.text
    finally:
        stop(served)

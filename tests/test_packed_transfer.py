"""A version's large chunk lists cross the REST API packed, apart from its JSON.

A file of more than ``LISTED_CHUNKS`` chunks used to travel as one base64 string
inside the JSON of a commit and of every answer: 53 MB for a million chunks,
with the JSON document and the decoded copy beside it, in the client and in the
server (378 bytes a chunk of the server's peak; bench/bench_server_chunks.py).
Packed, they follow the JSON as records and are read into lists kept in
scratch files. The server checks the body's layout and the registry every
digest; the client checks what it is answered against the version's digest.
"""

from __future__ import annotations

import json
import os
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether import IntegrityError
from tether._packed_manifest import MAX_RECORDS, MEDIA_TYPE, PackedBody, files_from_entries
from tether._records import VersionValues
from tether._store import chunklist
from tether._store.base import LISTED_CHUNKS, FileEntry
from tether._store.chunklist import RECORD_SIZE, ChunkList
from tether.remote import RemoteRegistry, connect, read_version
from tether.server import packed as server_packed

from .servers import Server, start_server, stop


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}",
                           f"file://{tmp_path / 'objects'}", tmp_path)
    yield running
    stop(running)


def _packed_bodies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the packed bodies this process makes from now on."""
    sent: list[int] = []
    original = PackedBody.__init__

    def counted(self: PackedBody, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        sent.append(self.length)

    monkeypatch.setattr(PackedBody, "__init__", counted)
    return sent


@pytest.fixture
def big_version(served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                ) -> tuple[RemoteRegistry, Any, Path]:
    """A model whose one file has more chunks than the JSON form lists (1 KiB chunks)."""
    from tether._store import ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 1000 * RECORD_SIZE)  # lists go to files
    source = tmp_path / "src" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(6 << 20))
    registry = connect(served.url, token=served.admin_token, cache_dir=tmp_path / "cache")
    sent = _packed_bodies(monkeypatch)
    version = registry.log_model(str(source), "big", progress=False)
    assert len(version.files[0].chunks) > LISTED_CHUNKS
    assert sent, "the commit did not go packed"
    return registry, version, source


def test_a_large_list_goes_packed_and_comes_back_the_same(
        big_version: tuple[RemoteRegistry, Any, Path], served: Server, tmp_path: Path) -> None:
    registry, logged, source = big_version
    assert logged.files[0].chunks.in_file  # the commit's answer, read into a scratch file
    got = registry.get("big@latest")
    assert got.digest == logged.digest
    assert got.files[0].chunks == logged.files[0].chunks
    assert got.files[0].chunks.in_file
    registry.download("big@latest", tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "weights.bin").read_bytes() == source.read_bytes()
    # Clients that did not ask for the packed form get the JSON form, as before.
    plain = served.api("GET", "/api/v1/models/big/versions/latest").json()
    assert isinstance(plain["files"][0]["chunks"], str)  # base64 records
    assert plain["digest"] == f"sha:{logged.digest}"


def _packed_commit(served: Server, body: bytes, key: str | None = None) -> httpx.Response:
    headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE}
    if key:
        headers["Idempotency-Key"] = key
    return served.api("POST", "/api/v1/models/big/versions", content=body, headers=headers)


def _body(version: Any, **head: Any) -> bytes:
    values = VersionValues(
        manifest=(), flavor=version.flavor, signature=version.signature,
        input_example=version.input_example, params={"again": 1}, metrics=version.metrics,
        data=version.data, lineage=version.lineage, environment=version.environment,
        tags=version.tags, notes=version.notes).to_dict(manifest=False)
    return b"".join(PackedBody({"values": values, "bump": None, **head}, version.files,
                               key="manifest"))


def test_a_retried_packed_commit_gets_the_first_version(
        big_version: tuple[RemoteRegistry, Any, Path], served: Server) -> None:
    _registry, logged, _source = big_version
    body, key = _body(logged), uuid.uuid4().hex
    first = _packed_commit(served, body, key)
    again = _packed_commit(served, body, key)
    assert first.status_code == 201 and again.status_code == 201, first.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.headers["content-type"].startswith(MEDIA_TYPE)
    one, two = (read_version(httpx.Response(200, headers=r.headers, content=r.content))
                for r in (first, again))
    assert one.seq == two.seq == logged.seq + 1
    assert one.files[0].chunks == two.files[0].chunks == logged.files[0].chunks


def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
    line, _, records = body.partition(b"\n")
    return json.loads(line), records


def _join(head: dict[str, Any], records: bytes) -> bytes:
    return json.dumps(head).encode() + b"\n" + records


DAMAGES = ("records cut short", "records left over", "a record too many said",
           "not records", "ranges overlap", "range out of order", "manifest inside values",
           "no head line", "head not json", "unknown field", "a chunk not in the store",
           "more records than a row can hold", "a digest that is not one")


def _damaged(body: bytes, damage: str) -> bytes:
    head, records = _split(body)
    entry = head["manifest"][0]
    count = entry["stored_chunks"][1]
    if damage == "records cut short":
        return _join(head, records[:-RECORD_SIZE])
    if damage == "records left over":
        return _join(head, records) + b"x" * RECORD_SIZE
    if damage == "a record too many said":
        return _join({**head, "records": len(records) + RECORD_SIZE},
                     records + records[:RECORD_SIZE])
    if damage == "not records":
        return _join({**head, "records": len(records) - 1}, records[:-1])
    if damage == "ranges overlap":
        second = {**entry, "path": "copy.bin", "stored_chunks": [0, count]}
        return _join({**head, "manifest": [entry, second]}, records)
    if damage == "range out of order":
        entry["stored_chunks"] = [1, count - 1]
        return _join(head, records)
    if damage == "manifest inside values":
        head["values"]["manifest"] = []
        return _join(head, records)
    if damage == "no head line":
        return json.dumps(head).encode()
    if damage == "head not json":
        return b"{not json\n" + records
    if damage == "unknown field":
        return _join({**head, "extra": 1}, records)
    if damage == "a digest that is not one":  # taken before, and every load failed
        entry["digest"] = {"sha": 1}
        return _join(head, records)
    if damage == "more records than a row can hold":  # said, not sent: refused at the head
        return _join({**head, "records": MAX_RECORDS + RECORD_SIZE}, records)
    assert damage == "a chunk not in the store"  # a real-looking record never uploaded
    return _join(head, bytes(32) + (1024).to_bytes(8, "little") + records[RECORD_SIZE:])


def test_a_malformed_packed_commit_is_refused_and_registers_nothing(
        big_version: tuple[RemoteRegistry, Any, Path], served: Server) -> None:
    registry, logged, _source = big_version
    body = _body(logged)
    for damage in DAMAGES:
        answer = _packed_commit(served, _damaged(body, damage))
        assert 400 <= answer.status_code < 500, (damage, answer.status_code, answer.text)
        assert answer.json()["message"] and "Traceback" not in answer.text, damage
    # Who asks is known before a byte of the body is read (a packed body may be 1 GB).
    headers = {"Content-Type": MEDIA_TYPE}
    stranger = served.api("POST", "/api/v1/models/big/versions", token="tth_not-a-token",
                          content=b"{not even json\n", headers=headers)
    assert stranger.status_code == 401, stranger.text
    reader = registry.create_token("rita", role="reader")["token"]
    refused = served.api("POST", "/api/v1/models/big/versions", token=reader,
                         content=b"{not even json\n", headers=headers)
    assert refused.status_code == 403, refused.text
    assert [v.seq for v in registry.versions("big")] == [logged.seq]
    assert _packed_commit(served, body).status_code == 201  # the undamaged body is taken


def test_a_changed_list_in_a_packed_answer_is_refused(
        big_version: tuple[RemoteRegistry, Any, Path], served: Server) -> None:
    """The server is not trusted: a list swapped in its answer fails the version's digest."""
    from tether._identity import require_intact

    _registry, logged, _source = big_version
    answer = served.api("GET", "/api/v1/models/big/versions/latest",
                        headers={"Accept": MEDIA_TYPE})
    line, _, records = answer.content.partition(b"\n")
    first = bytearray(records[:RECORD_SIZE])
    first[0] ^= 1  # another chunk in the first place: a load would fetch other bytes
    forged = line + b"\n" + bytes(first) + records[RECORD_SIZE:]
    changed = read_version(httpx.Response(200, headers=answer.headers, content=forged))
    assert changed.files[0].chunks != logged.files[0].chunks  # read as sent: the harm
    with pytest.raises(IntegrityError):
        require_intact(changed)  # what get() runs on every answer
    intact = read_version(httpx.Response(200, headers=answer.headers, content=answer.content))
    assert require_intact(intact).digest == logged.digest


def test_a_packed_answer_announcing_more_records_than_a_version_holds_is_refused() -> None:
    """The records of a packed answer go to scratch files; the head's count was their
    only bound, and the client took up to 16 GB of them (a review). A version records at
    most MAX_RECORDS: more is refused at the head, before a record is read."""
    count = MAX_RECORDS // RECORD_SIZE + 1
    head = {"name": "big", "records": count * RECORD_SIZE, "files": [
        {"path": "w.bin", "size": count * 65536, "digest": "0" * 64,
         "stored_chunks": [0, count]}]}
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        yield json.dumps(head).encode() + b"\n"
        for _ in range(64):  # 64 MB of records, if asked for
            sent.append(1)
            yield bytes(1 << 20)

    with pytest.raises(IntegrityError, match="a version can record"):
        read_version(httpx.Response(200, headers={"content-type": MEDIA_TYPE},
                                    content=body()))
    assert len(sent) <= 1, len(sent)


def _many_chunks(count: int) -> FileEntry:
    records = b"".join(os.urandom(32) + (1024).to_bytes(8, "little") for _ in range(count))
    return FileEntry(path="w.bin", size=1024 * count, digest="0" * 64,
                     chunks=ChunkList(records, adopt=True))


def test_reading_a_packed_commit_holds_a_piece_of_its_lists_not_all_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """200,000 chunks (8 MB of records): the JSON form held 10 MB of base64 text, its
    parsed copy and the decoded list (tracemalloc: 30 MB); packed, one piece at a time."""
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache"))
    entry = _many_chunks(200_000)
    values = {"manifest": [], "flavor": {"name": "files"}, "signature": None,
              "input_example": None, "params": {}, "metrics": {}, "data": {},
              "lineage": {}, "environment": {}, "tags": {}, "notes": ""}
    del values["manifest"]
    spool = tmp_path / "body"
    with open(spool, "wb") as out:
        for piece in PackedBody({"values": values, "bump": None}, [entry], key="manifest"):
            out.write(piece)
    as_json = json.dumps({"values": {**values, "manifest": [entry.to_dict()]}}).encode()
    del entry

    def peak(work: Any) -> float:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1] / (1 << 20)
        finally:
            tracemalloc.stop()

    def packed() -> None:
        with open(spool, "rb") as body:
            fields, files, _bump = server_packed._commit_parts(body)
        checked = VersionValues.from_dict({**fields, "manifest": []})
        assert len(files[0].chunks) == 200_000 and files[0].chunks.in_file
        assert checked.flavor == {"name": "files"}

    def plain() -> None:
        checked = VersionValues.from_dict(json.loads(as_json)["values"])
        assert len(checked.manifest[0].chunks) == 200_000

    unsafe, safe = peak(plain), peak(packed)
    assert unsafe > 20, unsafe  # the JSON form: the harm this guards against
    assert safe < 6, (safe, unsafe)  # a 2.6 MB piece in flight, and its bytes object


def test_a_list_of_versions_carries_large_lists_as_their_lengths(
        big_version: tuple[RemoteRegistry, Any, Path], served: Server) -> None:
    """The REST list of a model's versions carried every version's list as base64 (53 MB
    a million chunks, each); now their lengths, and a client asks for one version's
    list (checked against its digest) only when it is used."""
    from tether._store.chunklist import DeferredChunkList

    registry, logged, _source = big_version
    plain = served.api("GET", "/api/v1/models/big/versions").json()
    entry = plain[0]["files"][0]
    assert entry["chunks"] is None and entry["chunk_count"] == len(logged.files[0].chunks)
    with pytest.raises((TypeError, ValueError)):
        FileEntry.from_dict(entry)  # an older client refuses it rather than read no chunks
    listed = registry.versions("big")
    chunks = listed[0].files[0].chunks
    assert isinstance(chunks, DeferredChunkList) and not chunks.loaded
    assert len(chunks) == len(logged.files[0].chunks)
    assert chunks == logged.files[0].chunks and chunks.loaded


def test_a_dataset_version_goes_and_comes_packed(
        served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether._store import ingest

    monkeypatch.setattr(ingest, "AVG_CHUNK", 1024)
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 1000 * RECORD_SIZE)
    folder = tmp_path / "data"
    folder.mkdir()
    payload = os.urandom(6 << 20)
    (folder / "blob.bin").write_bytes(payload)
    registry = connect(served.url, token=served.admin_token, cache_dir=tmp_path / "cache")
    sent = _packed_bodies(monkeypatch)
    added = registry.add_dataset(folder, "corpus")
    assert sent, "the dataset commit did not go packed"
    chunks = added.file("blob.bin").chunks
    assert len(chunks) > LISTED_CHUNKS and chunks.in_file
    again = registry.get_dataset("corpus@latest")
    assert again.digest == added.digest and again.file("blob.bin").chunks == chunks
    assert again.file("blob.bin").chunks.in_file
    with registry.open_dataset("corpus@latest", "blob.bin") as handle:
        assert handle.read_range(3_000_000, 3_000_100) == payload[3_000_000:3_000_100]
    plain = served.api("GET", "/api/v1/datasets/corpus/versions/latest").json()
    assert plain["digest"] == f"sha:{added.digest}"  # JSON for clients that ask for JSON
    # A list of dataset versions gives large lists as their lengths, as a model's does.
    from tether._store.chunklist import DeferredChunkList

    listed = registry.dataset_versions("corpus")[0].file("blob.bin").chunks
    assert isinstance(listed, DeferredChunkList) and not listed.loaded
    assert len(listed) == len(chunks) and listed == chunks and listed.loaded


def test_lists_past_the_threshold_in_all_go_to_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each list under the threshold stayed in memory, so a hundred lists just under it
    were 400 MB; now lists stay in memory up to the threshold in all."""
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(chunklist, "SPILL_BYTES", 100 * RECORD_SIZE)
    lists = [_many_chunks(60).chunks for _ in range(5)]
    entries = [{"path": f"f{n}.bin", "size": 60 * 1024, "digest": "0" * 64,
                "stored_chunks": [60 * n, 60]} for n in range(5)]
    records = b"".join(bytes(chunks.records) for chunks in lists)
    files = files_from_entries(entries, records, in_file=True)
    assert [f.chunks.in_file for f in files] == [False, True, True, True, True]
    assert [f.chunks for f in files] == lists
    kept = files_from_entries(entries, records, in_file=False)  # lists of versions
    assert not any(f.chunks.in_file for f in kept)


def test_a_retry_across_an_upgrade_finds_its_version(registry: Any, tmp_path: Path) -> None:
    """Keys recorded before the packed form hold a digest of the JSON as sent; a retry
    after the upgrade, with the same JSON, still gets its version (not a 409)."""
    import sqlalchemy as sa

    from tether._errors import Conflict
    from tether._metadata.schema import idempotency_keys
    from tether._registry.idempotent_commit import _legacy_digest

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(os.urandom(1 << 20))
    logged = registry.log_model(str(tmp_path / "m"), "m", flavor="files")
    values = VersionValues(
        manifest=logged.files, flavor=logged.flavor, signature=logged.signature,
        input_example=logged.input_example, params={"retry": 1}, metrics=logged.metrics,
        data=logged.data, lineage=logged.lineage, environment=logged.environment,
        tags=logged.tags, notes=logged.notes).to_dict()
    key = uuid.uuid4().hex
    first, replayed = registry.commit_once("m", values, None, key=key)
    assert not replayed

    def recorded_as(digest: str) -> None:
        with registry.engine.begin() as conn:
            conn.execute(sa.update(idempotency_keys).where(idempotency_keys.c.key == key)
                         .values(request_digest=digest))

    recorded_as("0" * 64)  # another request's digest: refused, as it should be
    with pytest.raises(Conflict):
        registry.commit_once("m", values, None, key=key)
    recorded_as(_legacy_digest("m", values, None))  # what an older server recorded
    again, replayed = registry.commit_once("m", values, None, key=key)
    assert replayed and again.id == first.id


def test_a_record_holding_a_lone_surrogate_is_still_answered_as_json() -> None:
    """A deployment whose stored signature payload held a lone surrogate was a 500 for
    every replica asking for it (a review): UTF-8 cannot encode it. Escaped, it is JSON
    that reads back to the same text."""
    import json

    from tether.server.packed import RecordResponse

    body = RecordResponse({"note": "caf\u00e9 \ud800"}).body
    assert json.loads(body) == {"note": "caf\u00e9 \ud800"}
    assert "café".encode() in RecordResponse({"note": "caf\u00e9"}).body  # as before

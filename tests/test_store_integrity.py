"""Packs that lie: an index claiming chunks its pack does not hold.

The attack: a contributor uploads a pack whose index names another version's
chunk digests over garbage bytes. Nothing wrong is ever loaded (every chunk is
checked against its digest), but with one location per chunk the victim's
loads would fail: a denial of service. Tether keeps every candidate location
and falls back; the server refuses such uploads; `tether store verify`
quarantines what got in some other way.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

import tether
from tether import IntegrityError, InvalidInput
from tether._store import FileEntry, open_store
from tether._store.chunk_index import ChunkIndex
from tether._store.chunkstore import RAW, ChunkStore
from tether.cli import cli
from tether.server.blobs_api import RangeNotSatisfiable, parse_range

from .conftest import fit_logreg
from .servers import Server, start_server, stop

LIAR = "0" * 32  # sorts first: the pack a sorted listing (S3, or ours) meets first


def lying_pack(claims: list[tuple[str, int]]) -> tuple[bytes, dict[str, Any]]:
    """Garbage bytes, and an index claiming they are the chunks ``claims`` names."""
    body, entries = b"", []
    for digest, size in claims:
        entries.append([digest, len(body), size, size, RAW])
        body += os.urandom(size)
    return body, {"pack": LIAR, "size": len(body), "chunks": entries}


def plant(store_root: Path, body: bytes, index: dict[str, Any]) -> None:
    """Write a pack and its index straight into a local store's folder."""
    pack = index["pack"]
    (store_root / "packs").mkdir(parents=True, exist_ok=True)
    (store_root / "index").mkdir(parents=True, exist_ok=True)
    (store_root / "packs" / f"{pack}.pack").write_bytes(body)
    (store_root / "index" / f"{pack}.idx").write_text(json.dumps(index))


def claims_of(files: list[FileEntry]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for entry in files:
        for chunk in entry.chunks:
            seen.setdefault(chunk.digest, chunk.size)
    return list(seen.items())


def store_root(registry: Any) -> Path:
    return Path(registry.location.store_url.removeprefix("file://"))


# -- the attack on a local store ------------------------------------------------------------


def test_a_lying_pack_in_a_local_store_costs_a_fallback_not_a_failed_load(
    tmp_path: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "reg" / ".tether"
    with tether.init(root, actor="victim@example.com") as reg:
        victim = reg.log_model(fit_logreg(iris), "fraud", input_example=iris[0].head(3))
        body, index = lying_pack(claims_of(list(victim.files)))
        plant(store_root(reg), body, index)

    # Without the fallback (one location per chunk, the liar listed first): the
    # victim's load fails, though nothing wrong is loaded.
    original = ChunkIndex.candidates
    with monkeypatch.context() as patch:
        patch.setattr(ChunkIndex, "candidates", lambda self, d: original(self, d)[:1])
        patch.setattr(ChunkIndex, "demote", lambda self, d, loc: None)
        with tether.open(root) as reg:
            with pytest.raises(IntegrityError, match=f"pack {LIAR}"):
                reg.load("fraud@1.0.0", progress=False)
            assert reg.verify("fraud@1.0.0")

    # With it: every chunk the liar claims loads from the honest pack.
    with tether.open(root) as reg:
        reg.store.refresh()
        assert reg.store.candidates(index["chunks"][0][0])[0].pack == LIAR
        model = reg.load("fraud@1.0.0", progress=False)
        assert (model.predict(iris[0].head(5)) == fit_logreg(iris).predict(iris[0].head(5))).all()
        assert reg.verify("fraud@1.0.0") == []
        # The liar was found wanting once and is now tried last.
        assert reg.store.candidates(index["chunks"][0][0])[0].pack != LIAR


def test_fallback_inside_coalesced_runs_and_an_error_naming_every_pack(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    rng = np.random.default_rng(7)
    data = rng.standard_normal(3 << 18).astype(np.float32).tobytes()  # 3 MiB, ~48 chunks
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(data)
    files = store.ingest(tmp_path / "src", ["w.bin"]).files
    honest = [p.stem for p in (tmp_path / "store" / "packs").glob("*.pack")]
    body, index = lying_pack(claims_of(files))  # back to back: the liar's runs coalesce
    plant(tmp_path / "store", body, index)

    fresh = open_store(f"file://{tmp_path / 'store'}")
    fresh.materialize(files, tmp_path / "out", label="w@1.0.0")
    assert (tmp_path / "out" / "w.bin").read_bytes() == data

    # No honest copy left: the error names the chunk and every pack tried.
    for pack in honest:
        (tmp_path / "store" / "packs" / f"{pack}.pack").unlink()
    with pytest.raises(IntegrityError) as failure:
        open_store(f"file://{tmp_path / 'store'}").materialize(
            files, tmp_path / "out2", label="w@1.0.0"
        )
    message = failure.value.message
    assert "w.bin of w@1.0.0" in message and files[0].chunks[0].digest[:16] in message
    assert LIAR in message and all(pack in message for pack in honest)
    assert "missing" in message and "does not match its digest" in message


def test_gc_never_keeps_the_lying_copy_of_a_duplicated_chunk(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    (tmp_path / "src").mkdir()
    keep, drop = os.urandom(1 << 20), os.urandom(3 << 20)
    (tmp_path / "src" / "keep.bin").write_bytes(keep)
    (tmp_path / "src" / "drop.bin").write_bytes(drop)
    files = store.ingest(tmp_path / "src", ["keep.bin", "drop.bin"]).files
    live = [f for f in files if f.path == "keep.bin"]
    body, index = lying_pack(claims_of(live))
    plant(tmp_path / "store", body, index)
    # The honest pack is mostly dead, the liar all "live": without checking, gc
    # would keep the liar's copy and repack the honest one without it.
    report = store.gc(live, grace_seconds=0, dry_run=False)
    assert report.removed_chunks > 0
    out = tmp_path / "out"
    open_store(f"file://{tmp_path / 'store'}").materialize(live, out, label="k@1.0.0")
    assert (out / "keep.bin").read_bytes() == keep


# -- tether store verify ---------------------------------------------------------------------


def test_store_verify_quarantines_a_planted_pack(tmp_path: Path, iris: tuple[Any, Any]) -> None:
    root = tmp_path / "reg" / ".tether"
    with tether.init(root, actor="victim@example.com") as reg:
        victim = reg.log_model(fit_logreg(iris), "fraud", input_example=iris[0].head(3))
        big = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)
        reg.log_model(fit_logreg(iris, C=0.5), "other", input_example=iris[0].head(3))
        objects = store_root(reg)
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "big.bin").write_bytes(big.tobytes())
        reg.store.ingest(tmp_path / "src", ["big.bin"])  # a many-chunk honest pack
        body, index = lying_pack(claims_of(list(victim.files)))
        plant(objects, body, index)
    packs_before = sorted(p.name for p in (objects / "packs").iterdir())

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--registry", str(root), *args], catch_exceptions=False)

    dry = run("store", "verify", "--dry-run", "--json")
    assert dry.exit_code == 1, dry.output
    found = json.loads(dry.output)
    assert found["dry_run"] and [b["pack"] for b in found["bad"]] == [LIAR]
    assert not found["bad"][0]["quarantined"]
    assert "does not match its digest" in found["bad"][0]["problems"][0]
    # Whole packs in a few large reads, not one request per chunk.
    assert found["chunks"] > 40 and found["reads"] <= found["packs"] + 2
    assert sorted(p.name for p in (objects / "packs").iterdir()) == packs_before

    done = run("store", "verify")
    assert done.exit_code == 0, done.output
    assert f"quarantined pack {LIAR}" in done.output and "1 bad" in done.output
    assert not (objects / "packs" / f"{LIAR}.pack").exists()
    assert not (objects / "index" / f"{LIAR}.idx").exists()
    assert (objects / "quarantine" / "packs" / f"{LIAR}.pack").read_bytes() == body  # kept
    assert json.loads((objects / "quarantine" / "index" / f"{LIAR}.idx").read_text()) == index
    note = json.loads((objects / "quarantine" / f"{LIAR}.json").read_text())
    assert note["pack"] == LIAR and note["problems"]

    again = json.loads(run("store", "verify", "--json").output)
    assert again["bad"] == [] and again["packs"] == len(packs_before) - 1
    with tether.open(root) as reg:
        assert reg.verify("fraud@1.0.0") == []


def test_verify_packs_reports_malformed_and_oversized_indexes(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    bad_json = uuid.uuid4().hex
    (tmp_path / "store" / "index").mkdir(parents=True)
    (tmp_path / "store" / "index" / f"{bad_json}.idx").write_text("{not json")
    outside = uuid.uuid4().hex
    plant(tmp_path / "store", b"x" * 10,
          {"pack": outside, "size": 10, "chunks": [["ab" * 32, 5, 50, 50, RAW]]})
    report = store.verify_packs(dry_run=True)
    problems = {b.pack: b.problems for b in report.bad}
    assert "malformed" in problems[bad_json][0] and "outside" in problems[outside][0]


# -- through the real server -------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(
        f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}", tmp_path
    )
    yield running
    stop(running)


def test_the_server_refuses_a_lying_upload_and_a_planted_liar_costs_only_a_fallback(
    server: Server, iris: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = tmp_path / "objects"
    admin = server.client()
    victim = admin.log_model(fit_logreg(iris), "fraud", input_example=iris[0].head(3))
    carl = admin.create_token("carl", role="contributor")["token"]
    body, index = lying_pack(claims_of(list(victim.files)))

    # The contributor uploads the lying pack, then its index: refused, quarantined.
    put = server.api("PUT", f"/api/v1/blobs/packs/{LIAR}.pack", token=carl, content=body)
    assert put.status_code == 201, put.text
    refused = server.api("PUT", f"/api/v1/blobs/index/{LIAR}.idx", token=carl,
                         content=json.dumps(index).encode())
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert error["error"] == "pack_rejected"
    assert f"pack {LIAR} does not hold what its index claims" in error["message"]
    assert "does not match its digest" in error["message"] and "quarantine" in error["message"]
    assert not (objects / "index" / f"{LIAR}.idx").exists()
    assert not (objects / "packs" / f"{LIAR}.pack").exists()
    assert (objects / "quarantine" / "packs" / f"{LIAR}.pack").read_bytes() == body
    # The same name cannot be taken again with the same lie; nor listed or read.
    assert server.api("PUT", f"/api/v1/blobs/index/{LIAR}.idx", token=carl,
                      content=json.dumps(index).encode()).status_code == 400
    assert all(LIAR not in row["key"] for row in
               server.api("GET", "/api/v1/blobs", params={"prefix": "index/"}).json())
    # An honest contributor's upload (real chunks, through the client) still works.
    tether.connect(server.url, token=carl).log_model(
        fit_logreg(iris, C=0.2), "fraud", input_example=iris[0].head(3)
    )
    assert tether.connect(server.url, token=carl).verify("fraud@latest") == []

    # A liar that got in another way (planted straight into the store, as a
    # presigned upload or an older server would have let it) ...
    plant(objects, body, index)
    original = ChunkIndex.candidates
    with monkeypatch.context() as patch:
        patch.setattr(ChunkIndex, "candidates", lambda self, d: original(self, d)[:1])
        patch.setattr(ChunkIndex, "demote", lambda self, d, loc: None)
        patch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache-a"))
        with pytest.raises(IntegrityError, match=f"pack {LIAR}"):
            tether.connect(server.url, token=carl).load("fraud@1.0.0", progress=False)
    # ... costs the victim a fallback, not a failed load, and poisons no cache.
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache-b"))
    reader = tether.connect(server.url, token=carl)
    model = reader.load("fraud@1.0.0", progress=False)
    assert (model.predict(iris[0].head(5)) == fit_logreg(iris).predict(iris[0].head(5))).all()
    cached = list((tmp_path / "cache-b").rglob("chunks/*/*"))
    assert cached
    assert all(p.read_bytes() not in body for p in cached)
    assert tether.connect(server.url, token=carl).verify("fraud@1.0.0") == []


def test_range_headers_get_4xx_never_500(server: Server, iris: tuple[Any, Any]) -> None:
    server.client().log_model(fit_logreg(iris), "fraud", input_example=iris[0].head(3))
    key = server.api("GET", "/api/v1/blobs", params={"prefix": "index/"}).json()[0]["key"]
    whole = server.api("GET", f"/api/v1/blobs/{key}").content
    size = len(whole)

    def get(header: str) -> httpx.Response:
        return server.api("GET", f"/api/v1/blobs/{key}", headers={"Range": header})

    ok = get("bytes=2-9")
    assert ok.status_code == 206 and ok.content == whole[2:10]
    assert ok.headers["content-range"] == f"bytes 2-9/{size}"
    assert get("bytes=-5").content == whole[-5:]
    assert get("bytes=3-").content == whole[3:]
    clamped = get(f"bytes=1-{size + 1000}")
    assert clamped.status_code == 206 and clamped.content == whole[1:]
    cases = {
        "bytes=0-99999999999999999999999": 416,
        "bytes=99999999999999999999999-": 416,
        "bytes=0-9223372036854775808": 416,
        "bytes=5-2": 416,
        f"bytes={size}-{size + 5}": 416,
        "bytes=-0": 416,
        "bytes=0-1,4-5": 400,
        "bytes=0-1, 3-": 400,
        "bytes=abc": 400,
        "bytes=-": 400,
        "bytes=": 400,
        "items=0-5": 400,
        "": 400,
    }
    for header, status in cases.items():
        answer = get(header)
        assert answer.status_code == status, (header, answer.status_code, answer.text)
        assert answer.json()["error"] in ("range_not_satisfiable", "invalid_input")
        if status == 416:
            assert answer.headers["content-range"] == f"bytes */{size}"
    # A garbage Content-Length on upload is a 400 too.
    raw = httpx.Client(timeout=10).build_request(
        "PUT", f"{server.url}/api/v1/blobs/pins/{uuid.uuid4().hex}.json",
        headers={"Authorization": f"Bearer {server.admin_token}"}, content=b"{}")
    raw.headers["Content-Length"] = "12x"
    with httpx.Client(timeout=10) as http:
        try:
            answer = http.send(raw)
        except httpx.HTTPError:
            return  # the client or server refused it at the protocol level: no 500 either
    assert answer.status_code in (400, 411, 422), answer.text


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range(" bytes = 2 - 4 ", 10) == (2, 4)
    assert parse_range("bytes=-100", 10) == (0, 9)
    assert parse_range("bytes=8-", 10) == (8, 9)
    for header in ("bytes=10-", "bytes=5-2", "bytes=0-" + "9" * 30, "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 10)
    for header in ("bytes=0-1,2-3", "pages=1-2", "bytes=x-1", "bytes=-", "bytes", "bytes=١-٢"):
        with pytest.raises(InvalidInput) as refused:
            parse_range(header, 10)
        assert not isinstance(refused.value, RangeNotSatisfiable)


def test_quarantine_needs_direct_access_and_uploads_never_replace(tmp_path: Path) -> None:
    from tether import Conflict
    from tether._store.blobs import LocalBlobs

    blobs = LocalBlobs(tmp_path / "store")

    class NoMove:  # like the remote client's blobs: no way to move objects
        def __getattr__(self, name: str) -> Any:
            if name == "move":
                raise AttributeError(name)
            return getattr(blobs, name)

    store = ChunkStore(NoMove())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="cannot move objects into quarantine"):
        store.verify_packs()
    assert store.verify_packs(dry_run=True).bad == []

    key = f"packs/{uuid.uuid4().hex}.pack"
    for content in (b"first", b"second"):
        fd, tmp = blobs.temp_file()
        os.write(fd, content)
        os.close(fd)
        if content == b"first":
            blobs.put_file_new(key, tmp)
        else:
            with pytest.raises(Conflict, match="never overwritten"):
                blobs.put_file_new(key, tmp)
            assert not tmp.exists()
    assert blobs.get_bytes(key) == b"first"


def test_verify_stops_reading_ahead_after_a_damaged_run(tmp_path: Path, monkeypatch: Any) -> None:
    """``verify`` reads runs ahead on threads; when one is damaged it reports the file and
    stops: no read of that file goes on after it returns, and the runs read ahead give
    their buffers back to the pool for the next file."""
    import threading
    import time

    from tether._store import chunkstore

    monkeypatch.setattr(chunkstore, "_RUN_BYTES", 256 * 1024)  # many runs per file
    (tmp_path / "src").mkdir()
    for name in ("a.bin", "b.bin"):
        (tmp_path / "src" / name).write_bytes(os.urandom(6 << 20))
    store = open_store(f"file://{tmp_path / 'store'}")
    report = store.ingest(tmp_path / "src", ["a.bin", "b.bin"])
    first = report.files[0].chunks[0]
    loc = store.locate(first.digest)
    assert loc is not None
    with open(tmp_path / "store" / "packs" / f"{loc.pack}.pack", "r+b") as pack:
        pack.seek(loc.offset)
        pack.write(b"\0" * 16)  # the first run of a.bin is damaged
    reads: list[float] = []
    real = ChunkStore._read_run_views

    def slow(self: ChunkStore, chunks: Any, **kw: Any) -> Any:
        time.sleep(0.02)
        out = real(self, chunks, **kw)
        reads.append(time.monotonic())
        return out

    monkeypatch.setattr(ChunkStore, "_read_run_views", slow)
    pool = store._run_buffers
    problems = store.verify(report.files[:1], label="v")
    returned = time.monotonic()
    assert len(problems) == 1 and "a.bin" in problems[0]
    time.sleep(0.2)
    assert all(t <= returned for t in reads)  # nothing still reading the damaged file
    assert threading.active_count() < 50
    assert len(pool._free) >= 2  # the buffers read ahead came back


def test_store_verify_finds_a_damaged_merged_index_and_writes_it_again(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A merged index out of digest order (searches miss entries) or whose filter hides
    entries (they look new, a commit relying on them fails) is reported by
    `tether store verify`, exit 1 with --dry-run, and written again without it."""
    from tether._store import ingest
    from tether._store.midx import MergedIndex

    monkeypatch.setattr(ingest, "AVG_CHUNK", 256)  # many entries: the file has a filter
    root = tmp_path / "reg" / ".tether"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(3 << 20))
    with tether.init(root) as reg:
        version = reg.log_model(str(tmp_path / "src" / "big.bin"), "big", progress=False)
        reg.store.consolidate()  # type: ignore[attr-defined]
        objects = store_root(reg)
    [path] = list((objects / "index").iterdir())
    honest = MergedIndex("h", path.read_bytes())
    assert honest.entry_count > 8000 and honest._filter_bits
    data = bytearray(path.read_bytes())
    first = honest._entries_at
    data[first:first + 56], data[first + 56:first + 112] = (
        data[first + 56:first + 112], data[first:first + 56])  # two entries swapped
    filter_at = honest._entries_at + 56 * honest.entry_count
    data[filter_at:filter_at + 64] = bytes(64)  # some filter bits cleared
    path.write_bytes(bytes(data))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--registry", str(root), *args], catch_exceptions=False)

    dry = run("store", "verify", "--dry-run", "--json")
    assert dry.exit_code == 1, dry.output
    found = json.loads(dry.output)["bad_indexes"]
    assert any("out of digest order" in p for p in found), found
    assert any("filter hides" in p for p in found), found
    assert path.read_bytes() == bytes(data)  # a dry run changes nothing
    done = run("store", "verify")
    assert done.exit_code == 0 and "written again" in done.output, done.output
    assert json.loads(run("store", "verify", "--json").output)["bad_indexes"] == []
    with tether.open(root) as reg:
        assert reg.verify("big@latest") == []
        assert reg.store.missing_of([version.files[0].chunks]) == set()


def test_one_chunk_claimed_at_every_offset_is_refused_and_kept_few(
        server: Server, tmp_path: Path) -> None:
    """Every claim true, the index still an attack: a pack of one byte value claimed as
    a one-byte chunk at every offset. The server's index compared each new location
    with all the others kept for that chunk, so N claims cost N squared while every
    commit waited (750,000 in a 64 MB index: hours). The server refuses a chunk claimed
    twice, or overlapping claims; an index read from the store keeps a few locations."""
    import blake3

    digest = blake3.blake3(b"a").hexdigest()
    pack = uuid.uuid4().hex
    body = b"a" * 4000
    put = server.api("PUT", f"/api/v1/blobs/packs/{pack}.pack", content=body)
    assert put.status_code == 201, put.text
    for chunks, says in (([[digest, o, 1, 1, RAW] for o in range(4000)], "claims a chunk twice"),
                         ([[digest, 0, 2, 2, RAW], [blake3.blake3(b"aa").hexdigest(), 1, 2, 2,
                                                   RAW]], "overlapping")):
        refused = server.api("PUT", f"/api/v1/blobs/index/{pack}.idx", content=json.dumps(
            {"pack": pack, "size": len(body), "chunks": chunks}).encode())
        assert refused.status_code == 400 and says in refused.text, refused.text
    assert not (tmp_path / "objects" / "index" / f"{pack}.idx").exists()

    index = open_store(f"file://{tmp_path / 'other'}").index
    index.add(pack, len(body), [[digest, o, 1, 1, RAW] for o in range(4000)])
    assert len(index.candidates(digest)) <= 17  # the first and at most 16 others


def test_a_lie_sent_slowly_beside_an_honest_index_cannot_quarantine_its_pack(
        server: Server, tmp_path: Path) -> None:
    """A lying index for pack P, its body held back past the server's "exists?" check
    while an honest index for P was checked and stored, was then refused: and P moved
    to quarantine from under the honest index, which clients deduplicating against it
    trusted (their versions lost those bytes). Now the liar is refused (409) and P
    stays."""
    import http.client

    import blake3

    pack = uuid.uuid4().hex
    body = os.urandom(5000)
    honest = {"pack": pack, "size": len(body), "chunks": [
        [blake3.blake3(body).hexdigest(), 0, len(body), len(body), RAW]]}
    lie = json.dumps({**honest, "chunks": [["ab" * 32, 0, len(body), len(body), RAW]]}).encode()
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    assert server.api("PUT", f"/api/v1/blobs/packs/{pack}.pack", content=body).status_code == 201
    host, port = server.url.removeprefix("http://").split(":")
    slow = http.client.HTTPConnection(host, int(port), timeout=30)
    slow.putrequest("PUT", f"/api/v1/blobs/index/{pack}.idx")
    for name, value in {**headers, "Content-Length": str(len(lie))}.items():
        slow.putheader(name, value)
    slow.endheaders()
    slow.send(lie[:10])
    time.sleep(1.0)  # the server has checked that no index of P exists, and waits
    stored = server.api("PUT", f"/api/v1/blobs/index/{pack}.idx",
                        content=json.dumps(honest).encode())
    assert stored.status_code == 201, stored.text
    slow.send(lie[10:])
    answer = slow.getresponse()
    assert answer.status == 409, answer.read()
    objects = tmp_path / "objects"
    assert (objects / "packs" / f"{pack}.pack").read_bytes() == body  # not quarantined
    assert json.loads((objects / "index" / f"{pack}.idx").read_text()) == honest


def test_index_checks_of_one_pack_take_turns_across_server_processes(
        registry: Any, tmp_path: Path) -> None:
    """The check of a pack's uploaded index held a lock of its process only: with
    `tether server --workers 2`, a lie checked by one worker could quarantine the pack
    while the other stored its honest index (a second review). The stripe is held across
    the processes of a host (and PostgreSQL's advisory lock across hosts)."""
    import subprocess
    import sys

    from tether.server.blobs_api import _one_index_check

    key = f"index/{uuid.uuid4().hex}.idx"
    held, released = tmp_path / "held", tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import pathlib, time, tether
from tether.server.blobs_api import _one_index_check
registry = tether.open({str(registry.location.root)!r})
with _one_index_check(registry, {key!r}):
    pathlib.Path({str(held)!r}).touch()
    time.sleep(1.0)
    pathlib.Path({str(released)!r}).touch()
"""])
    try:
        for _ in range(600):
            if held.exists() or holder.poll() is not None:
                break
            time.sleep(0.05)
        assert held.exists(), "the other process never took the lock"
        with _one_index_check(registry, key):
            assert released.exists()  # taken only once the other process let go
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0


# -- one chunk claimed many times, and lies beside honest copies ---------------------------


class _CountedBytes(bytes):
    """A merged file's bytes that count the digests a search reads (``data[a:b]``)."""

    reads = 0

    def __getitem__(self, item: Any) -> Any:
        _CountedBytes.reads += 1
        return super().__getitem__(item)


def test_a_merged_file_listing_one_digest_50000_times_is_searched_not_walked() -> None:
    """Both ends of a digest's entries are binary searched, and a bounded lookup reads the
    first few: a hostile file listing one chunk 50,000 times cost 50,000 reads for every
    "is it stored?" (``has``) and every lookup of it."""
    from tether._store.midx import MergedIndex, build

    key, after = "5a" * 32, "5b" * 32
    entries = [[key, i, 5, 5, RAW] for i in range(50_000)] + [[after, 0, 5, 5, RAW]]
    index = MergedIndex("hostile", _CountedBytes(build({LIAR: (1 << 40, entries)}, ())))
    _CountedBytes.reads = 0
    assert index._bounds(bytes.fromhex(key)) == (0, 50_000)
    assert index._bounds(bytes.fromhex(after)) == (50_000, 50_001)
    assert index._bounds(bytes.fromhex("5a" * 31 + "5b")) == (50_000, 50_000)  # absent
    assert _CountedBytes.reads < 120, _CountedBytes.reads  # a few dozen each, not 50,000
    from tether._store.midx import CLAIMS_READ

    _CountedBytes.reads = 0
    assert not index.has(bytes.fromhex(key), {LIAR})  # its first entries name skipped packs
    assert len(index.lookup(key, limit=CLAIMS_READ)) == CLAIMS_READ
    assert _CountedBytes.reads < 200, _CountedBytes.reads
    assert len(index.lookup(key)) == 50_000  # unbounded when asked: merges and checks read all


def _plant_claims(objects: Path, claims: dict[str, list[list[Any]]], body: bytes = b"") -> None:
    """A merged index file named to sort first, claiming ``claims`` ({pack: entries});
    the liar's own pack (``LIAR``) holds ``body``."""
    from tether._store.midx import build

    (objects / "packs" / f"{LIAR}.pack").write_bytes(body)
    sizes = {pack: (objects / "packs" / f"{pack}.pack").stat().st_size for pack in claims}
    (objects / "index" / f"{LIAR}.idx").write_bytes(
        build({pack: (sizes[pack], entries) for pack, entries in claims.items()}, ()))


def test_a_chunk_listed_at_50000_offsets_costs_a_few_reads_not_their_square(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merged index (or a kept copy of one in a client's cache) listing one chunk at
    N offsets: each candidate was compared with every one kept before it (N=8,000 took
    10 s; 50,000, in a 2.8 MB file, kept `tether verify` busy for minutes), and a
    load would have read each. Now a file offers at most the first and
    ``_MAX_ALTERNATES`` others: a few reads, then the honest copy."""
    from tether._store.chunk_index import _MAX_ALTERNATES

    objects = tmp_path / "store"
    store = open_store(f"file://{objects}")
    (tmp_path / "src").mkdir()
    data = os.urandom(3000)  # one chunk
    (tmp_path / "src" / "w.bin").write_bytes(data)
    files = store.ingest(tmp_path / "src", ["w.bin"]).files
    store.consolidate()  # the honest entry in a merged file too, after the liar's
    [chunk] = list(files[0].chunks)
    honest = store.locate(chunk.digest)
    assert honest is not None
    garbage = os.urandom(chunk.size + 50_000)

    def lies(n: int) -> list[list[Any]]:
        return [[chunk.digest, i, chunk.size, chunk.size, RAW] for i in range(n)]

    # A few thousand first (the square of those took a second): the list is capped.
    _plant_claims(objects, {LIAR: lies(3000)}, garbage)
    small = open_store(f"file://{objects}")
    small.refresh()
    found = small.candidates(chunk.digest)
    assert len(found) <= 2 + _MAX_ALTERNATES and honest in found, len(found)

    _plant_claims(objects, {LIAR: lies(50_000)}, garbage)
    fresh = open_store(f"file://{objects}")
    reads: list[Any] = []
    real = ChunkStore._fetch

    def counted(self: ChunkStore, loc: Any) -> bytes:
        reads.append(loc)
        return real(self, loc)

    monkeypatch.setattr(ChunkStore, "_fetch", counted)
    started = time.perf_counter()
    fresh.refresh()
    found = fresh.candidates(chunk.digest)
    fresh.materialize(files, tmp_path / "out", label="w@1.0.0")
    problems = fresh.verify(files, label="w@1.0.0")
    took = time.perf_counter() - started
    assert (tmp_path / "out" / "w.bin").read_bytes() == data and problems == []
    assert len(found) <= 2 + _MAX_ALTERNATES and honest in found, len(found)
    assert len(reads) <= 2 * (2 + _MAX_ALTERNATES), len(reads)  # the load and the verify
    assert took < 5, took  # milliseconds; the square of 50,000 took minutes


def test_a_lie_in_the_pack_holding_the_honest_copy_does_not_hide_it(tmp_path: Path) -> None:
    """A merged index that sorts first claims each chunk at a wrong offset of the very
    pack holding its honest copy: failures were remembered by pack, so the honest entry
    was skipped and the load failed ("never a failed load while an honest copy
    exists"). Now by location; only a missing pack stands for all its locations. The
    lies point into the pack (their bytes do not match) or past its end (a short read,
    which says nothing of the honest copy before it)."""
    from tether._store import chunkstore

    objects = tmp_path / "store"
    store = open_store(f"file://{objects}")
    (tmp_path / "src").mkdir()
    data = np.random.default_rng(3).standard_normal(3 << 17).astype(np.float32).tobytes()
    (tmp_path / "src" / "w.bin").write_bytes(data)  # 1.5 MiB: a few dozen chunks
    files = store.ingest(tmp_path / "src", ["w.bin"]).files
    store.consolidate()
    claims: dict[str, list[Any]] = {}
    for chunk in files[0].chunks:
        loc = store.locate(chunk.digest)
        assert loc is not None
        claims.setdefault(loc.pack, []).append((chunk.digest, loc))
    pack_size = sum((objects / "packs" / f"{p}.pack").stat().st_size for p in claims)
    # Inside the pack (a byte short, so no lie reaches past its end), then past its end.
    for shift, trim in ((1, 1), (pack_size, 0)):
        _plant_claims(objects, {pack: [[d, loc.offset + shift, loc.length - trim,
                                        loc.raw_size, loc.codec] for d, loc in located]
                                for pack, located in claims.items()})
        out = tmp_path / f"out-{shift}"
        fresh = open_store(f"file://{objects}")
        fresh.materialize(files, out, label="w@1.0.0")
        assert (out / "w.bin").read_bytes() == data
        assert open_store(f"file://{objects}").verify(files, label="w@1.0.0") == []
    # A pack that is gone still stands for all its locations: read once, named once.
    for pack in claims:
        (objects / "packs" / f"{pack}.pack").unlink()
    with pytest.raises(IntegrityError) as failure:
        open_store(f"file://{objects}").materialize(files, tmp_path / "gone", label="w@1.0.0")
    assert failure.value.message.count("is missing") == 1, failure.value.message
    assert chunkstore._PackMissing.__mro__[1] is IntegrityError


def test_a_journal_index_naming_another_pack_claims_nothing_and_gc_deletes_nothing(
        tmp_path: Path) -> None:
    """An index file ``index/V.idx`` answered as naming pack W (a lying store or a man in
    the middle): V looked unindexed, every live chunk looked placed in W, and gc deleted
    V as a leftover (a review). The index is taken only for the pack it is named for."""
    from tether import StoreError

    store = open_store(f"file://{tmp_path / 'objects'}", cache_dir=tmp_path / "cache")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(os.urandom(200_000))
    report = store.ingest(tmp_path / "src", ["w.bin"])
    store.release_pin(report.pin)
    [pack] = [i.key for i in store.blobs.list("packs/")]
    victim = pack.rsplit("/", 1)[-1].removesuffix(".pack")
    fake = uuid.uuid4().hex
    index = tmp_path / "objects" / "index" / f"{victim}.idx"
    data = json.loads(index.read_bytes())
    index.write_text(json.dumps({**data, "pack": fake}))
    (tmp_path / "objects" / "packs" / f"{fake}.pack").write_bytes(
        (tmp_path / "objects" / pack).read_bytes())  # and the listing shows it
    old = time.time() - 7200
    for path in (tmp_path / "objects" / "packs").iterdir():
        os.utime(path, (old, old))
    reader = open_store(f"file://{tmp_path / 'objects'}", cache_dir=tmp_path / "cache2")
    with pytest.raises(StoreError, match="in no pack"):
        reader.gc(report.files, grace_seconds=3600, dry_run=False)
    assert (tmp_path / "objects" / pack).exists()


def test_a_merged_index_naming_another_pack_makes_gc_delete_nothing(tmp_path: Path) -> None:
    """A merged index whose pack table named W for the live pack V, with W listed too,
    made every live chunk look placed; V looked unindexed and gc deleted it (a third
    review). A pack counts as a live chunk's place only at the size its index gives."""
    from tether import StoreError

    objects = tmp_path / "objects"
    store = open_store(f"file://{objects}", cache_dir=tmp_path / "cache")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.bin").write_bytes(os.urandom(200_000))
    report = store.ingest(tmp_path / "src", ["w.bin"])
    store.release_pin(report.pin)
    store.consolidate()
    [pack] = [i.key for i in store.blobs.list("packs/")]
    victim = pack.rsplit("/", 1)[-1].removesuffix(".pack")
    [merged] = list((objects / "index").iterdir())
    fake = uuid.uuid4().hex
    merged.write_bytes(merged.read_bytes().replace(bytes.fromhex(victim), bytes.fromhex(fake)))
    (objects / "packs" / f"{fake}.pack").write_bytes(os.urandom(300_000))
    old = time.time() - 7200
    for path in (objects / "packs").iterdir():
        os.utime(path, (old, old))
    reader = open_store(f"file://{objects}", cache_dir=tmp_path / "cache2")
    with pytest.raises(StoreError, match="in no pack"):
        reader.gc(report.files, grace_seconds=3600, dry_run=False)
    assert (objects / pack).exists()

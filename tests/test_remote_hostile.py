"""The client against a hostile server (or whoever sits between them over http): answers
without end, answers that drip, redirects, answers of the wrong shape, and messages
carrying terminal escapes (each from a review, replayed against a fake server here)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tether
from tether import remote
from tether._errors import IntegrityError, StoreError, Unavailable
from tether.cli import cli

from .servers import app_in_thread

SEEN: list[dict[str, Any]] = []


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"["
        while True:
            yield b'{"name": "m", "description": "' + b"x" * 65536 + b'"},'
            await asyncio.sleep(0)
    return StreamingResponse(body(), media_type="application/json")


async def drip(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(600):
            yield b" "
            await asyncio.sleep(0.05)
    return StreamingResponse(body(), media_type="application/json")


async def redirect(request: Request) -> Response:
    return Response(status_code=302, headers={"location": "http://127.0.0.1:9/steal"})


async def misshapen(request: Request) -> Response:
    return JSONResponse([1, 2, 3])


async def escapes(request: Request) -> Response:
    return JSONResponse({"error": "not_found",
                         "message": "\x1b[2K\x1b[1A\x1b[32mm@1.0.0: 3 file(s) verified",
                         "hint": "\x1b]52;c;ZXZpbA==\x1b\\"}, status_code=404)


def _app(handler: Any) -> Starlette:
    async def record(request: Request) -> Response:
        SEEN.append(dict(request.headers))
        return await handler(request)
    return Starlette(routes=[Route("/api/v1/{rest:path}", record, methods=["GET", "POST"])])


def _serving(handler: Any) -> contextlib.AbstractContextManager[str]:
    return app_in_thread(_app(handler))  # type: ignore[no-any-return]


def test_an_answer_without_end_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "MAX_ANSWER", 4 << 20)
    with _serving(endless) as url:
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(IntegrityError, match="more bytes than were asked for or allowed"):
            client.models()


def test_an_answer_that_drips_is_given_up_on() -> None:
    with _serving(drip) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="answered too slowly"):
            client.models()
        assert time.monotonic() - started < 10  # not the 30 s the drip would take


def test_a_redirect_is_not_followed_and_says_so() -> None:
    SEEN.clear()
    with _serving(redirect) as url:
        client = tether.connect(url, token="secret-token-" + "t" * 30)
        with pytest.raises(StoreError, match=r"302.*not followed"):
            client.models()
    assert len(SEEN) == 1  # nothing went to the redirect's target


def test_an_answer_of_the_wrong_shape_is_a_clear_error(tmp_path: Any) -> None:
    with _serving(misshapen) as url:
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(IntegrityError, match="answer to models is malformed"):
            client.models()
        with pytest.raises(TypeError):  # the caller's own mistake stays Python's
            client.models("unexpected")  # type: ignore[call-arg]
        result = CliRunner(env={"TETHER_TOKEN": "t" * 40}).invoke(
            cli, ["--registry", url, "models"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output


def test_a_servers_message_reaches_the_terminal_escaped() -> None:
    """Its escape sequences erased the "error:" line and drew a green "verified" one, and
    its hint wrote to the clipboard (OSC 52)."""
    with _serving(escapes) as url:
        result = CliRunner(env={"TETHER_TOKEN": "t" * 40}).invoke(
            cli, ["--registry", url, "show", "m@1.0.0"])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\\x1b[2K" in result.output, result.output


def test_a_lying_kept_index_copy_fails_one_load_not_every_later_one(tmp_path: Any) -> None:
    """A man in the middle served one session a merged index pointing a byte off; the
    client kept it (same name and size), and every later process on that URL failed,
    told the store was damaged (a review). Now the failure drops the kept copies."""
    import os
    import shutil
    import struct

    from tether._store import open_store

    from .servers import start_server, stop

    server = start_server(f"sqlite:///{tmp_path / 'meta.db'}",
                          f"file://{tmp_path / 'objects'}", tmp_path)
    try:
        (tmp_path / "w.bin").write_bytes(os.urandom(300_000))
        version = server.client().log_model(tmp_path / "w.bin", "m", progress=False)
        store = open_store(f"file://{tmp_path / 'objects'}")
        store.refresh()
        store.consolidate()  # one merged index file, as the server's own merging makes
        cache = tmp_path / "client-cache"

        def load() -> Any:
            shutil.rmtree(cache / "chunks", ignore_errors=True)  # read through the index
            client = remote.RemoteRegistry(server.url, token=server.admin_token,
                                           cache_dir=cache)
            try:
                return client.download(version.ref, tmp_path / f"out-{time.time_ns()}",
                                       progress=False)
            finally:
                client.close()

        def poison(how: str) -> None:
            kept = list((cache / "index").rglob("*.idx"))
            assert kept, "the merged index was kept on disk"
            for path in kept:  # what the man in the middle served
                data = bytearray(path.read_bytes())
                _, packs, entries, covers, _ = struct.unpack_from("<8sIIII", data, 0)
                start = 24 + 16 * covers + 24 * packs + 1024
                for i in range(entries):
                    at = start + 56 * i
                    d, p, off, ln, rs, codec = struct.unpack_from("<32sIQIIB", data, at)
                    if how == "offsets":  # every entry a byte off
                        off += 1
                    else:  # every digest altered (a second review)
                        d = d[:-1] + bytes([d[-1] ^ 1])
                    struct.pack_into("<32sIQIIB", data, at, d, p, off, ln, rs, codec)
                path.write_bytes(bytes(data))

        load()
        for how in ("offsets", "digests"):
            poison(how)
            with pytest.raises(IntegrityError, match="kept copies of the store's index were "
                               "dropped"):
                load()
            assert not list((cache / "index").rglob("*.idx"))
            assert (load() / "w.bin").read_bytes() == (tmp_path / "w.bin").read_bytes()
    finally:
        stop(server)


def test_a_callers_own_error_is_not_blamed_on_the_server() -> None:
    """An argument that cannot be sent (an object in set_tags) failed inside httpx and was
    reported as "the server's answer to update_model is malformed" (a review)."""
    with _serving(misshapen) as url:
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(TypeError, match="not JSON serializable"):
            client.update_model("m", set_tags={"a": object()})  # type: ignore[dict-item]


async def endless_version(request: Request) -> Response:
    return await endless(request)


async def dripping_version(request: Request) -> Response:
    return await drip(request)


def test_reading_a_version_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """get() read a version's answer through its own path, without the cap or the pace:
    1.4 GB read, or 20 s for one drip (a review)."""
    monkeypatch.setattr(remote, "MAX_ANSWER", 4 << 20)
    with _serving(endless_version) as url, pytest.raises(
            IntegrityError, match="more bytes than were asked for or allowed"):
        tether.connect(url, token="t" * 40).get("m@1.0.0")
    with _serving(dripping_version) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="answered too slowly"):
            client.get("m@1.0.0")
        assert time.monotonic() - started < 10


def test_records_of_the_wrong_shape_show_without_a_traceback(tmp_path: Any) -> None:
    """metrics "abc" (not part of the digest, so a server may send anything there) and
    framework_versions ["x"] made `tether show` end in a traceback (a review); read as
    one (unreadable) entry, not as empty (a later review: a policy then skipped)."""
    from tether import Registry
    from tether._records import ModelVersion
    from tether.cli.inspect import _lines, _pins

    reg = Registry.init(tmp_path / "reg", actor="t@example.com")
    (tmp_path / "w.bin").write_bytes(b"w")
    data = reg.log_model(tmp_path / "w.bin", "m", progress=False).to_dict()
    version = ModelVersion.from_dict({**data, "metrics": "abc", "tags": ["x"], "notes": 5})
    assert version.metrics == {"(unreadable)": "'abc'"}  # shown, never "none recorded"
    assert version.tags == {"(unreadable)": "['x']"} and version.notes == "5"
    assert _pins(["x"]) == "-" and _lines("abc") == "  (unreadable)"


def test_a_kept_index_copy_claiming_a_missing_chunk_fails_one_log_not_every_later_one(
        tmp_path: Any) -> None:
    """A kept copy listing the digest of the user's next file: ingest skipped uploading
    it, the server refused the commit, and every later log failed (a third review)."""
    import os
    import struct

    from tether import Registry
    from tether._errors import MissingChunks
    from tether._store import open_store

    from .servers import start_server, stop

    server = start_server(f"sqlite:///{tmp_path / 'meta.db'}",
                          f"file://{tmp_path / 'objects'}", tmp_path)
    try:
        (tmp_path / "w.bin").write_bytes(os.urandom(1000))
        (tmp_path / "new.bin").write_bytes(os.urandom(1000))
        server.client().log_model(tmp_path / "w.bin", "m", progress=False)
        store = open_store(f"file://{tmp_path / 'objects'}")
        store.refresh()
        store.consolidate()
        cache = tmp_path / "client-cache"

        def client() -> remote.RemoteRegistry:
            return remote.RemoteRegistry(server.url, token=server.admin_token, cache_dir=cache)

        first = client()
        first.get("m@1.0.0")
        first.store.refresh()  # the merged index kept on disk
        first.close()
        target = bytes.fromhex(Registry.init(tmp_path / "local", actor="a@example.com")
                               .log_model(tmp_path / "new.bin", "x", progress=False)
                               .files[0].chunks[0].digest)
        for path in (cache / "index").rglob("*.idx"):  # what a man in the middle served
            data = bytearray(path.read_bytes())
            _, packs, _entries, covers, _ = struct.unpack_from("<8sIIII", data, 0)
            start = 24 + 16 * covers + 24 * packs + 1024
            _, p, off, ln, rs, codec = struct.unpack_from("<32sIQIIB", data, start)
            struct.pack_into("<32sIQIIB", data, start, target, p, off, ln, rs, codec)
            fan = 24 + 16 * covers + 24 * packs
            for i in range(256):
                struct.pack_into("<I", data, fan + 4 * i, 1 if i >= target[0] else 0)
            path.write_bytes(bytes(data))
        victim = client()
        with pytest.raises(MissingChunks, match="not in the store") as refused:
            victim.log_model(tmp_path / "new.bin", "victim", progress=False)
        victim.close()
        assert "kept copies of the store's index were dropped" in str(refused.value.hint)
        again = client()
        assert again.log_model(tmp_path / "new.bin", "victim", progress=False).seq == 1
        again.close()
    finally:
        stop(server)


def _gzip_bomb(inflated: int) -> bytes:
    """Gzip of gzip of ``inflated`` zero bytes: a few KB that inflate to ``inflated``."""
    import gzip
    import io

    inner = io.BytesIO()
    with gzip.GzipFile(fileobj=inner, mode="wb", compresslevel=9) as handle:
        block = bytes(1 << 20)
        for _ in range(inflated >> 20):
            handle.write(block)
    return gzip.compress(inner.getvalue(), compresslevel=9)


def test_a_compressed_answer_is_refused_before_it_inflates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx asked for gzip, brotli and zstd and inflated answers before any limit of
    Tether's saw them: 3 KB of gzip in gzip took the client to 4 GB (a review). Every
    client now asks for answers as they are, and refuses an encoded one unread."""
    import httpx

    monkeypatch.setattr(remote, "MAX_ANSWER", 8 << 20)
    bomb = _gzip_bomb(64 << 20)
    assert len(bomb) < 100_000

    async def bombing(request: Request) -> Response:
        return Response(bomb, media_type="application/json",
                        headers={"Content-Encoding": "gzip, gzip"})

    SEEN.clear()
    with _serving(bombing) as url:
        # The harm, the way httpx reads it: one piece far past the limit at once.
        with httpx.Client() as plain, plain.stream("GET", f"{url}/api/v1/models") as answer:
            assert max(len(piece) for piece in answer.iter_bytes()) > remote.MAX_ANSWER
        client = tether.connect(url, token="t" * 40)
        with pytest.raises(IntegrityError, match="Content-Encoding 'gzip, gzip'"):
            client.models()
    assert SEEN[-1].get("accept-encoding") == "identity"

    async def labelled(request: Request) -> Response:  # a label httpx never inflates
        return Response(b"[]", media_type="application/json",
                        headers={"Content-Encoding": "aws-chunked"})

    with _serving(labelled) as url:
        assert tether.connect(url, token="t" * 40).models() == []


def test_nested_json_a_bad_retry_date_and_odd_presigned_urls_are_clear_errors(
        tmp_path: Any) -> None:
    """JSON nested 100,000 deep (RecursionError), a Retry-After date of another era
    (OverflowError) and a presigned URL to file:///etc/passwd (httpx's own error)
    each ended a command in a traceback (a review)."""
    nested = b"[" * 100_000 + b"]" * 100_000

    async def deep(request: Request) -> Response:
        return Response(nested, media_type="application/json")

    with _serving(deep) as url, pytest.raises(IntegrityError, match="nested too deeply"):
        tether.connect(url, token="t" * 40).models()
    answer = remote.httpx.Response(
        503, headers={"Retry-After": "Mon, 01 Jan 2020 00:00:00 +99999999999999999"})
    assert remote.retry_after(answer) == 0.0
    from tether.remote_blobs import _presign_answer

    for bad in ({"url": "file:///etc/passwd"}, {"url": "relative/path"}, {"url": 5},
                {"url": "http://[::1"}, [1, 2]):
        with pytest.raises(IntegrityError, match=r"presigned URL for packs/x\.pack is malformed"):
            _presign_answer(bad, "packs/x.pack")
    assert _presign_answer({"url": "https://bucket.example/k?sig=1", "headers": {"a": 1}},
                           "k") == ("https://bucket.example/k?sig=1", {"a": "1"})


def test_a_gateways_503_on_an_upload_is_retried(tmp_path: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway's HTML 503 on a pack's upload was a plain error, never retried: one
    hiccup failed a whole log, though transfers promise to retry through a 503."""
    from tether._errors import Unavailable as Unavailable_

    client = remote.RemoteRegistry("http://127.0.0.1:9", token="t" * 40)
    answer = remote.httpx.Response(503, content=b"<html>busy</html>")
    with pytest.raises(Unavailable_, match="unavailable: HTTP 503"):
        client._answer(answer, answer.content, "http://x/api/v1/blobs/packs/p.pack", raw=False)
    answer = remote.httpx.Response(503, json={"error": "conflict", "message": "m"})
    with pytest.raises(tether.TetherError) as refused:
        client._answer(answer, answer.content, "http://x", raw=False)
    assert not isinstance(refused.value, Unavailable_)  # the server's own word stands


def test_a_listing_paged_slowly_is_given_up_on() -> None:
    """Each page within its own timeout, a server answering one version a page (and
    always a next page) kept a client paging for days: the whole listing keeps pace."""
    from tether._metadata.repository import NEXT_PAGE

    async def slow_pages(request: Request) -> Response:
        after = int(request.query_params.get("after", "0"))
        await asyncio.sleep(0.4)
        return JSONResponse([{"seq": after + 1}], headers={NEXT_PAGE: str(after + 1)})

    with _serving(slow_pages) as url:
        client = remote.RemoteRegistry(url, token="t" * 40, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(remote.TooSlow, match="came too slowly"):
            client._paged("/models/m/versions", lambda row: row)
        assert time.monotonic() - started < 10


def test_index_files_are_read_no_further_than_listed_and_a_batch_at_a_time(
        tmp_path: Any) -> None:
    """A server listing index files and answering each with far more than listed (and
    more than the range asked) had the client read up to 512 MB of each, all of a
    listing at once: 8 such files took it to 1.7 GB (a review). Each is now read no
    further than its listing says (a longer one claims nothing), and a file under
    index/ that is not named like one is never asked for."""
    import json as json_

    from tether._store.chunk_index import ChunkIndex
    from tether.remote_blobs import RemoteBlobs

    honest = json_.dumps({"pack": "a" * 32, "size": 10, "chunks": [["b" * 64, 0, 10, 10, 0]]})
    asked: list[str] = []

    async def blobs(request: Request) -> Response:
        key = request.path_params["rest"].removeprefix("blobs/")
        if key == "presign":
            return JSONResponse({"url": None})  # the server streams objects itself
        if request.url.path.endswith("/blobs"):
            return JSONResponse([
                {"key": f"index/{'a' * 32}.idx", "size": len(honest), "mtime": 1.0},
                *({"key": f"index/{i:032x}.idx", "size": 100, "mtime": 1.0}
                  for i in range(1, 9)),
                {"key": "index/junk.idx", "size": 100, "mtime": 1.0}])
        asked.append(key)
        if key == f"index/{'a' * 32}.idx":
            return Response(honest.encode())
        return Response(b"x" * (8 << 20))  # whatever the range asked

    with _serving(blobs) as url:
        client = remote.RemoteRegistry(url, token="t" * 40)
        store_blobs = RemoteBlobs(client)
        with pytest.raises(IntegrityError, match="more bytes than were asked for"):
            store_blobs.get_range(f"index/{1:032x}.idx", 0, 100)
        index = ChunkIndex(store_blobs, cache_dir=None,
                           scratch_file=lambda kind: (0, tmp_path / kind))
        index.refresh()
        assert index.known_all(["b" * 64]) == [True]
        assert "index/junk.idx" not in asked

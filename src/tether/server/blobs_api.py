"""The artifact gateway: clients run the chunk store themselves, the server
authorises each object and either streams it (local store) or hands out a
presigned URL (S3), so bytes go straight between client and bucket.

Clients may read packs, indexes and pins, and write new ones under fresh
random names; they can never overwrite or delete stored data (only their own
ingest lease). Index files are checked against their pack before they count.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .._errors import Conflict, InvalidInput, NotFound, PermissionDenied

_READABLE = re.compile(
    r"^(packs/[0-9a-f]{32}\.pack|index/[0-9a-f]{32}\.idx|pins/[0-9a-f]{32}\.json)$"
)
_WRITABLE = re.compile(
    r"^(packs/[0-9a-f]{32}\.pack|index/[0-9a-f]{32}\.idx|pins/[0-9a-f]{32}\.json"
    r"|locks/ingest-[0-9a-f]{32})$"
)
_LISTABLE = ("index/", "pins/", "locks/")
MAX_OBJECT = 256 * 1024 * 1024


def check_key(key: str, *, write: bool) -> str:
    pattern = _WRITABLE if write else _READABLE
    if not pattern.match(key):
        error = InvalidInput(
            f"store key {key!r} is not one a client may {'write' if write else 'read'}",
            hint="keys look like packs/<32 hex>.pack, index/<32 hex>.idx, pins/<32 hex>.json",
        )
        error.code = "invalid_path"
        raise error
    return key


def _exists(blobs: Any, key: str) -> bool:
    folder = key.rpartition("/")[0]
    return any(i.key == key for i in blobs.list(folder + "/"))


def _check_index(blobs: Any, data: bytes) -> None:
    try:
        index = json.loads(data)
        pack, size, chunks = index["pack"], int(index["size"]), index["chunks"]
        entries = [(str(d), int(o), int(n)) for d, o, n, _raw, _codec in chunks]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInput(f"index file is malformed: {error}") from error
    actual = {i.key: i.size for i in blobs.list("packs/")}.get(f"packs/{pack}.pack")
    if actual is None:
        raise InvalidInput(
            f"index names pack {pack}, which is not uploaded",
            hint="upload the pack first, then its index",
        )
    if actual != size or any(o < 0 or n <= 0 or o + n > size for _, o, n in entries):
        raise InvalidInput(f"index does not fit pack {pack} ({actual} bytes)")


class BlobGateway:
    def __init__(self, api: Any) -> None:
        self.api = api

    @property
    def blobs(self) -> Any:
        return self.api.registry.store.blobs

    def _caller(self, request: Request, role: str, action: str) -> None:
        reg, who = self.api.as_caller(request)
        self.api.need(reg, who, role, None, action)

    async def listing(self, request: Request) -> Any:
        self._caller(request, "reader", "reading the store")
        prefix = request.query_params.get("prefix", "")
        if prefix not in _LISTABLE:
            raise InvalidInput(f"cannot list {prefix!r}", hint=f"prefixes: {', '.join(_LISTABLE)}")
        infos = await run_in_threadpool(self.blobs.list, prefix)
        return [{"key": i.key, "size": i.size, "mtime": i.mtime} for i in infos]

    async def presign(self, request: Request) -> Any:
        body = await self.api.read_json(request, {"key", "method"}, {"key", "method"})
        method = body["method"]
        if method not in ("GET", "PUT"):
            raise InvalidInput("method must be GET or PUT")
        key = check_key(str(body["key"]), write=method == "PUT")
        self._caller(
            request,
            "contributor" if method == "PUT" else "reader",
            "uploading artifacts" if method == "PUT" else "downloading artifacts",
        )
        if method == "PUT" and not key.startswith("locks/") and _exists(self.blobs, key):
            raise Conflict(f"{key} already exists; stored objects are never overwritten")
        presign = getattr(self.blobs, "presign", None)
        if presign is None or key.startswith("index/"):
            return {"url": None}  # stream through the API (and validate indexes there)
        return {"url": await run_in_threadpool(presign, key, method), "expires_in": 3600}

    async def get(self, request: Request) -> Response:
        key = check_key(request.path_params["key"], write=False)
        self._caller(request, "reader", "downloading artifacts")
        header = request.headers.get("range")
        if header:
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", header.strip())
            if not match:
                raise InvalidInput(f"unsupported Range {header!r}", hint="bytes=START-END")
            start, end = int(match[1]), int(match[2])
            if end < start:
                raise InvalidInput("Range end is before its start")
            data = await run_in_threadpool(self.blobs.get_range, key, start, end - start + 1)
            return Response(data, status_code=206, media_type="application/octet-stream")
        path = self.blobs.local_path(key)
        if path is not None:
            if not path.is_file():
                raise NotFound(f"store object {key} does not exist")

            def chunks() -> Any:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        yield block

            return StreamingResponse(chunks(), media_type="application/octet-stream")
        data = await run_in_threadpool(self.blobs.get_bytes, key)
        return Response(data, media_type="application/octet-stream")

    async def put(self, request: Request) -> Any:
        key = check_key(request.path_params["key"], write=True)
        self._caller(request, "contributor", "uploading artifacts")
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_OBJECT:
            raise InvalidInput(f"object of {length} bytes is over the {MAX_OBJECT} byte limit")
        if not key.startswith("locks/") and await run_in_threadpool(_exists, self.blobs, key):
            raise Conflict(f"{key} already exists; stored objects are never overwritten")
        fd, tmp = self.blobs.temp_file()
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                async for block in request.stream():
                    size += len(block)
                    if size > MAX_OBJECT:
                        raise InvalidInput(f"object is over the {MAX_OBJECT} byte limit")
                    handle.write(block)
            if key.startswith("index/"):
                _check_index(self.blobs, tmp.read_bytes())
            await run_in_threadpool(self.blobs.put_file, key, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        return JSONResponse({"key": key, "size": size}, status_code=201)

    async def delete(self, request: Request) -> Any:
        key = request.path_params["key"]
        if not re.fullmatch(r"locks/ingest-[0-9a-f]{32}", key):
            raise PermissionDenied(
                "clients may only delete their own ingest lease",
                hint="stored data is removed by `tether gc` on the server",
            )
        self._caller(request, "contributor", "uploading artifacts")
        await run_in_threadpool(self.blobs.delete, key)
        return {"deleted": key}

    def routes(self) -> list[Route]:
        w = self.api.wrap
        return [
            Route("/blobs", w(self.listing), methods=["GET"]),
            Route("/blobs/presign", w(self.presign), methods=["POST"]),
            Route("/blobs/{key:path}", w(self.get), methods=["GET"]),
            Route("/blobs/{key:path}", w(self.put), methods=["PUT"]),
            Route("/blobs/{key:path}", w(self.delete), methods=["DELETE"]),
        ]

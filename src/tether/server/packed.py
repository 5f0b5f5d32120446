"""The REST API's packed form on the server: a version's chunk lists apart from its JSON.

A client sends a new version with ``Content-Type: application/x-tether-packed``
(see _packed_manifest.py) and asks for one with that type in ``Accept``. The
body is spooled to a scratch file as it comes and its lists are read from there
into lists kept in scratch files; the answer streams them from the version's
own. A million chunks no longer pass through the server as a 53 MB base64
string, its JSON document and the decoded copy (378 bytes a chunk in the
server's peak, measured; see bench/bench_server_chunks.py).
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .._errors import InvalidInput, UnknownField
from .._packed_manifest import (
    MAX_RECORDS,
    MEDIA_TYPE,
    PackedBody,
    files_from_entries,
    finish,
    read_packed,
    too_many_records,
)
from .._records import ModelVersion
from .._registry.datasets import DatasetVersion
from .._store.base import FileEntry
from .._store.blobs import scratch_root
from .bodies import MAX_VERSION_BODY, parse_json, receive_body

#: Largest packed body: its head is held to MAX_VERSION_BODY, its records (spooled to
#: disk, never held) to what a row can store (``MAX_RECORDS``).
MAX_PACKED_BODY = MAX_VERSION_BODY + MAX_RECORDS
#: A body this small stays in memory while it is read.
_SPOOL_IN_MEMORY = 1 << 20


def is_packed(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == MEDIA_TYPE


def wants_packed(request: Request) -> bool:
    return MEDIA_TYPE in request.headers.get("accept", "")


class RecordResponse(JSONResponse):
    """JSON of records as Python writes it: a version may hold infinity or NaN (params
    logged so, a missing value in an input example), which the strict JSON of
    ``JSONResponse`` refused with a 500 (a review of the UI found it; the REST API did
    the same). Written as Python's JSON reads them back, so a client re-hashing the
    version to its digest gets the same values."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate stored in the database: a 500 was
            # all a replica got of a deployment (a review); escaped, it is JSON again
            return json.dumps(content, separators=(",", ":")).encode()


def version_answer(request: Request, version: ModelVersion | DatasetVersion, *,
                   status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A model's or a dataset's ``version`` as JSON, or packed if the client asked."""
    extra = {"id": version.id} if isinstance(version, ModelVersion) else {}
    if not wants_packed(request):
        return RecordResponse({**version.to_dict(), **extra}, status_code=status,
                              headers=headers)
    body = PackedBody({**version.to_dict(with_files=False), **extra}, version.files,
                      key="files")
    return StreamingResponse(
        iter(body), status_code=status, media_type=MEDIA_TYPE,
        headers={**(headers or {}), "content-length": str(body.length)})


async def spooled(request: Request, limit: int) -> IO[bytes]:
    """The request's body in a scratch file (memory while small), refused (413) past
    ``limit``."""
    folder = scratch_root()
    folder.mkdir(parents=True, exist_ok=True)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by the caller
        max_size=_SPOOL_IN_MEMORY, mode="w+b", dir=str(folder))
    pending = bytearray()

    async def collect(piece: bytes) -> None:
        # Written a few MB at a time on a worker thread, not on the event loop.
        pending.extend(piece)
        if len(pending) >= _SPOOL_IN_MEMORY:
            await run_in_threadpool(spool.write, bytes(pending))
            pending.clear()

    try:
        await receive_body(request, limit, collect)
        await run_in_threadpool(spool.write, bytes(pending))
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


async def read_packed_commit(request: Request,
                             ) -> tuple[dict[str, Any], tuple[FileEntry, ...], str | None]:
    """A packed commit's values (without their manifest), files and ``bump``, the body's
    layout checked (InvalidInput naming what is wrong); the values are the caller's to
    check."""
    spool = await spooled(request, MAX_PACKED_BODY)
    try:
        return await run_in_threadpool(_commit_parts, spool)
    finally:
        spool.close()


def _commit_parts(spool: IO[bytes]) -> tuple[dict[str, Any], tuple[FileEntry, ...], str | None]:
    try:
        head, records = read_packed(spool, MAX_VERSION_BODY, parse_json)
    except ValueError as error:
        raise InvalidInput(f"the packed body is malformed: {error}",
                           hint=f"{MEDIA_TYPE}: a line of JSON, then the chunk records "
                           "it names") from None
    if len(records) > MAX_RECORDS:
        raise too_many_records(len(records))
    unknown = set(head) - {"values", "bump", "manifest"}
    if unknown:
        raise UnknownField(f"unknown field(s): {', '.join(sorted(unknown))}",
                           hint="fields: values, bump, manifest, records")
    values, bump = head.get("values"), head.get("bump")
    if not isinstance(values, dict) or "manifest" in values:
        raise InvalidInput("values must be a JSON object without its manifest "
                           "(the packed body carries that apart)")
    if bump is not None and not isinstance(bump, str):
        raise InvalidInput("bump must be a string or null")
    try:
        files = files_from_entries(head.get("manifest"), records, in_file=True)
        finish(spool, records)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        raise InvalidInput(f"the packed manifest is malformed: {error}",
                           hint="each large file names its records with stored_chunks: "
                           "[first, count], in order, each record used once") from None
    return values, files, bump


"""The REST API (``/api/v1``): thin handlers over the registry use cases.

Every handler authenticates, calls the registry as the caller (whose use
cases decide what the caller may do), and renders the result; errors become JSON with a
machine-readable code and the HTTP status their class carries, never a 500
for bad input.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from .. import __version__
from .._envflags import ON
from .._errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    TetherError,
    Unavailable,
    UnknownField,
)
from .._metadata.audit_log import AUDIT_PAGE
from .._metadata.repository import NEXT_PAGE
from .._packed_manifest import MEDIA_TYPE
from .._records import AliasMove
from .._reference import parse_reference, validate_alias_name, validate_model_name
from .._registry.log_version import checked_values
from .._registry.registry import Registry
from .._same_site import cross_site
from .._store.base import FileEntry
from . import auth
from .blobs_api import MAX_OBJECT, MAX_PIN, BlobGateway
from .bodies import MAX_BODY, MAX_VERSION_BODY, BodyLimit, describe, read_json_body
from .checks import check_call, check_field, parse_limit
from .faults import disconnected, readiness, unavailable, unavailable_response
from .openapi import openapi_document
from .packed import (
    MAX_PACKED_BODY,
    RecordResponse,
    is_packed,
    read_packed_commit,
    version_answer,
)

#: Settings any caller with a role on some model may read one at a time: what a load,
#: a move or a client's cache reads. Others (server.store names the bucket) need reader.
_PUBLIC_SETTINGS = frozenset(
    {"env_policy", "protected_aliases", "trust.load_signers", "cache.max_bytes"})


def _flag(request: Request, name: str) -> bool:
    """A query flag: ``?deleted=1`` (or true/yes/on); anything else is off."""
    return request.query_params.get(name, "").strip().lower() in ON  # as switches are


#: Registry methods callable through /api/v1/call. Each checks who may call it
#: itself (see _registry/access.py); the server only authenticates the caller.
RPC_METHODS: frozenset[str] = frozenset(
    {
        "set_setting",
        "set_policy",
        "get_policy",
        "approve",
        "grant",
        "revoke",
        "grants",
        "trust_key",
        "remove_key",
        "keys",
        "signatures",
        "record_signature",
        "deprecate",
        "store_stats",
        "gc",
        "create_token",
        "revoke_token",
        "tokens",
        "delete_version",
        "model",
        "create_model",
        "update_model",
        "delete_model",
        "update_version",
        "record_route_rollback",
        "apply_deployment",
        "deployment",
        "deployments",
        "deployment_history",
        "set_deployment_weights",
        "pause_routes",
        "rollback_deployment",
        "rollback_route",
        "replica_heartbeat",
        "leave_deployment",
        "deployment_status",
        "record_deployment_signature",
        "list_datasets",
        "get_dataset",
        "promote_dataset",
    }
)



def to_json(value: Any) -> Any:
    """Results of use cases as JSON: records by to_dict, containers recursively."""
    if hasattr(value, "to_dict"):
        return to_json(value.to_dict())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_json(asdict(value))
    return value


log = logging.getLogger("tether.server")

Handler = Callable[[Request], Awaitable[Response]]


def _after(request: Request) -> int:
    """A listing's ``?after=SEQ`` (0: from the first)."""
    raw = request.query_params.get("after")
    # Sequence numbers are 32-bit integers in the database (PostgreSQL refused a larger
    # one with a 500: a review).
    return 0 if raw is None else parse_limit(raw, "after", maximum=2**31 - 1)


def _page(items: list[Any], next_after: int | None) -> Response:
    headers = {} if next_after is None else {NEXT_PAGE: str(next_after)}
    return RecordResponse(items, headers=headers)


def error_response(error: TetherError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.http_status)


async def read_json(
    request: Request,
    allowed: set[str],
    required: frozenset[str] | set[str] = frozenset(),
    types: dict[str, Any] | None = None,
    limit: int = MAX_BODY,
) -> dict[str, Any]:
    """The body as a JSON object with only known fields of the right types; 4xx otherwise.

    ``types`` maps a field to the type hint its value must fit.
    Size and depth limits are the shared body reader's (``bodies``).
    """
    data = await read_json_body(request, limit)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput(f"body must be a JSON object, not {describe(data)}")
    unknown = set(data) - allowed
    if unknown:
        raise UnknownField(
            f"unknown field(s): {', '.join(sorted(unknown))}",
            hint=f"fields: {', '.join(sorted(allowed)) or 'none'}",
        )
    missing = required - set(data)
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(sorted(missing))}")
    for field, hint in (types or {}).items():
        if field in data:
            check_field(field, data[field], hint)
    return data


def move_json(move: AliasMove) -> dict[str, Any]:
    return move.to_dict()


class Api:
    """Holds the registry and builds the routes."""

    def __init__(self, registry: Registry, *, open_access: bool = False) -> None:
        self.registry = registry
        self.open_access = open_access

    def as_seen(self, request: Request, error: TetherError) -> TetherError:
        """``error`` as the caller may see it (``access.redacted``)."""
        from .._errors import UnknownName
        from .._registry.access import redacted

        if not isinstance(error, UnknownName):
            return error  # the only refusal that lists names
        try:
            reg, _ = self.as_caller(request)
        except TetherError:
            return error.only(set())
        return redacted(reg, error)

    def as_caller(self, request: Request) -> tuple[Registry, str]:
        """The registry acting for the authenticated caller: the server only
        authenticates; the use cases decide what the caller may do."""
        principal = auth.principal_for(self.registry, request, open_access=self.open_access)
        registry = self.registry.as_actor(principal, enforce_roles=not self.open_access)
        return registry, principal

    # -- handlers (run in a thread: the registry is synchronous) ---------------

    def wrap(self, func: Callable[[Request], Any]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                result = await func(request)
            except Unavailable as error:
                return unavailable_response(error)
            except TetherError as error:
                down = unavailable(error, self.registry)  # a StoreError caused by an outage
                return unavailable_response(down) if down else error_response(
                    self.as_seen(request, error))
            except Exception as error:
                down = unavailable(error, self.registry)
                if down is not None:
                    log.warning("%s %s: %s", request.method, request.url.path[:200], down.message)
                    return unavailable_response(down)
                gone = disconnected(request, error)
                if gone is not None:
                    return gone
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return JSONResponse(
                    {
                        "error": "internal",
                        "message": "internal error; see the server log",
                        "hint": None,
                    },
                    status_code=500,
                )
            if isinstance(result, Response):
                return result
            return RecordResponse(result)

        return endpoint

    async def health(self, request: Request) -> Any:
        """Liveness: the process answers (dependencies are /ready's business)."""
        return {"status": "ok", "version": __version__}

    async def ready(self, request: Request) -> Any:
        """Readiness: 200 while the database and the store answer, 503 naming what is down."""
        return await readiness(self.registry)

    async def models(self, request: Request) -> Any:
        reg, _who = self.as_caller(request)
        listing = reg.deleted_models if _flag(request, "deleted") else reg.models
        return [m.to_dict() for m in await run_in_threadpool(listing)]

    async def versions(self, request: Request) -> Any:
        """A model's versions, a page at a time (``?after=SEQ``; ``NEXT_PAGE`` says
        where the next starts), large chunk lists as their lengths: each is one
        version's, asked for by itself."""
        name = request.path_params["name"]
        reg, _who = self.as_caller(request)
        after = _after(request)
        found, next_after = await run_in_threadpool(
            lambda: reg.versions_page(name, after=after, deleted=_flag(request, "deleted")))
        return _page([v.to_dict(with_environment=False, brief_lists=True) for v in found],
                     next_after)

    async def dataset_versions(self, request: Request) -> Any:
        """A dataset's versions, paged and with large chunk lists as their lengths (as a
        model's)."""
        name = request.path_params["name"]
        reg, _who = self.as_caller(request)
        after = _after(request)
        found, next_after = await run_in_threadpool(
            lambda: reg.dataset_versions_page(name, after=after))
        return _page([to_json(v.to_dict(brief_lists=True)) for v in found], next_after)

    async def version(self, request: Request) -> Any:
        return await self._one_version(request, lambda reg: reg.get)

    async def _one_version(self, request: Request, getter: Callable[[Registry], Any]) -> Any:
        """The version ``{name}@{selector}`` that ``getter(registry)`` finds, as JSON or
        packed (server/packed.py)."""
        name = request.path_params["name"]
        selector = unquote(request.path_params["selector"])
        reg, _who = self.as_caller(request)
        version = await run_in_threadpool(getter(reg), f"{name}@{selector}")
        return version_answer(request, version)

    async def _commit_body(self, request: Request,
                           ) -> tuple[dict[str, Any], tuple[FileEntry, ...] | None, str | None]:
        """A new version's values, its files when a packed body carries them apart (else
        None: they are in the values), and its bump."""
        if is_packed(request):
            return await read_packed_commit(request)
        body = await read_json(
            request, {"values", "bump"}, {"values"}, {"values": dict, "bump": str | None},
            limit=MAX_VERSION_BODY,
        )
        return body["values"], None, body.get("bump")

    async def create_version(self, request: Request) -> Any:
        """A version a client chunked and uploaded, as JSON or packed (server/packed.py)."""
        name = request.path_params["name"]
        validate_model_name(name)
        # Who asks, before a byte of the body is read: a packed one may be 1 GB.
        reg, _who = self.as_caller(request)
        await run_in_threadpool(reg.require, "contributor", name, action="logging a version")
        fields, files, bump = await self._commit_body(request)
        values: Any = fields
        if files is not None:  # checked as from_dict checks JSON, with the files read
            checked = checked_values({**fields, "manifest": []})
            values = replace(checked, manifest=files).checked()
        key = request.headers.get("idempotency-key")
        version, replayed = await run_in_threadpool(
            lambda: reg.commit_once(name, values, bump, key=key)
        )
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return version_answer(request, version, status=201, headers=headers)  # as the first

    async def create_dataset_version(self, request: Request) -> Any:
        """A dataset version a client chunked and uploaded: validated, re-sealed, numbered."""
        name = request.path_params["name"]
        validate_model_name(name)
        reg, _who = self.as_caller(request)  # before the body, as for a model
        await run_in_threadpool(reg.require, "contributor", name,
                                action="adding a dataset version")
        values, files, bump = await self._commit_body(request)
        if files is not None:
            values = {**values, "manifest": list(files)}
        version = await run_in_threadpool(reg.commit_dataset, name, values, bump)
        return version_answer(request, version, status=201)

    async def dataset_version(self, request: Request) -> Any:
        """One dataset version by any selector, as JSON or packed (server/packed.py)."""
        return await self._one_version(request, lambda reg: reg.get_dataset)

    async def alias(self, request: Request) -> Any:
        name, alias = request.path_params["name"], request.path_params["alias"]
        reg, _who = self.as_caller(request)
        state = await run_in_threadpool(reg.alias, name, alias)
        etag = f'"{state["generation"]}-{state["digest"][4:20]}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse(state, headers={"ETag": etag, "Cache-Control": "no-cache"})

    async def set_alias(self, request: Request) -> Any:
        name, alias = request.path_params["name"], request.path_params["alias"]
        validate_alias_name(alias)
        body = await read_json(
            request,
            {"version", "reason", "create"},
            {"version"},
            {"version": str | int, "reason": str, "create": bool},
        )
        # Who may move which alias is decided by the use case (aliases.role_to_move).
        reg, _who = self.as_caller(request)
        ref = f"{name}@{body['version']}"
        parse_reference(ref)
        move = await run_in_threadpool(
            lambda: reg.promote(
                ref, alias, reason=body.get("reason", ""), create=body.get("create", False)
            )
        )
        return move_json(move)

    async def rollback(self, request: Request) -> Any:
        name, alias = request.path_params["name"], request.path_params["alias"]
        body = await read_json(request, {"reason", "from_digest", "from_generation"},
                               types={"reason": str, "from_digest": str | None,
                                      "from_generation": int | None})
        reg, _who = self.as_caller(request)
        move = await run_in_threadpool(
            lambda: reg.rollback(name, alias, reason=str(body.get("reason", "")),
                                 from_digest=body.get("from_digest"),
                                 from_generation=body.get("from_generation"))
        )
        return move_json(move)

    async def delete_alias(self, request: Request) -> Any:
        name, alias = request.path_params["name"], request.path_params["alias"]
        reg, _who = self.as_caller(request)
        return move_json(await run_in_threadpool(reg.delete_alias, name, alias))

    async def alias_history(self, request: Request) -> Any:
        name, alias = request.path_params["name"], request.path_params["alias"]
        reg, _who = self.as_caller(request)
        return [m.to_dict() for m in await run_in_threadpool(reg.alias_history, name, alias)]

    async def audit(self, request: Request) -> Any:
        """Events newest first, at most AUDIT_PAGE at a time (a reader of one model asked
        for all of its events, however many, in one answer: a review); ``before=ID``
        gives the next page."""
        reg, _who = self.as_caller(request)
        q = request.query_params
        asked = parse_limit(q["limit"]) if "limit" in q else 0  # 0: all there are
        limit = min(asked or AUDIT_PAGE, AUDIT_PAGE)
        # Up to the largest event id a database holds (an INTEGER): past a million events
        # the client's second page was refused (a review).
        before = parse_limit(q["before"], "before", 2**31 - 1) if "before" in q else None
        events = await run_in_threadpool(
            lambda: reg.audit_log(model=q.get("model"), action=q.get("action"), limit=limit,
                                  before=before)
        )
        return [e.to_dict() for e in events]

    async def audit_verify(self, request: Request) -> Any:
        reg, _who = self.as_caller(request)
        count, problems = await run_in_threadpool(reg.verify_audit)
        return {"events": count, "ok": not problems, "problems": problems}

    async def settings(self, request: Request) -> Any:
        """Every setting (a reader's), or ``?key=K``: one of those a load or a move reads,
        to any caller with a role somewhere (a reader of one model loads it)."""
        reg, _who = self.as_caller(request)
        key = request.query_params.get("key")
        if key is not None:
            if key not in _PUBLIC_SETTINGS:
                await run_in_threadpool(lambda: reg.require("reader", action="reading settings"))
            else:
                await run_in_threadpool(
                    lambda: reg.require_somewhere("reader", action="reading settings"))
            value = await run_in_threadpool(reg.get_setting, key)
            return {} if value is None else {key: value}
        return await run_in_threadpool(reg.settings)

    async def whoami(self, request: Request) -> Any:
        reg, who = self.as_caller(request)
        roles = await run_in_threadpool(reg.roles, who, None)
        return {"principal": who, "roles": list(roles)}

    async def roles(self, request: Request) -> Any:
        """The roles of a principal (anyone may ask about themselves; readers about anyone)."""
        reg, who = self.as_caller(request)
        principal = request.query_params.get("principal") or who
        model = request.query_params.get("model") or None
        roles = await run_in_threadpool(reg.roles, principal, model)
        return {"principal": principal, "model": model, "roles": list(roles)}

    async def audit_head(self, request: Request) -> Any:
        reg, _who = self.as_caller(request)
        return await run_in_threadpool(reg.audit_head)

    async def not_found(self, request: Request) -> Any:
        raise NotFound(
            f"no API route {request.method} {request.url.path}", hint="see /api/v1/openapi.json"
        )

    read_json = staticmethod(read_json)

    async def trust(self, request: Request) -> Any:
        name = request.path_params["name"]
        selector = unquote(request.path_params["selector"])
        reg, _who = self.as_caller(request)
        version = await run_in_threadpool(reg.get, f"{name}@{selector}")
        return await run_in_threadpool(reg.trust_facts, version)

    async def rpc(self, request: Request) -> Any:
        """The long tail of use cases (governance, admin) by name, with their permissions."""
        method = request.path_params["method"]
        if method not in RPC_METHODS:
            raise NotFound(
                f"no remote method {method!r}", hint=f"methods: {', '.join(sorted(RPC_METHODS))}"
            )
        body = await read_json(
            request, {"args", "kwargs"}, types={"args": list | None, "kwargs": dict | None}
        )
        args, kwargs = body.get("args") or [], body.get("kwargs") or {}
        reg, _who = self.as_caller(request)
        check_call(method, getattr(reg, method), args, kwargs)
        result = await run_in_threadpool(lambda: getattr(reg, method)(*args, **kwargs))
        return to_json(result)

    def routes(self) -> list[Route | Mount]:
        w = self.wrap
        v1 = [
            Route("/health", w(self.health)),
            Route("/ready", w(self.ready)),
            Route("/openapi.json", lambda r: JSONResponse(openapi_document())),
            Route("/whoami", w(self.whoami)),
            Route("/roles", w(self.roles)),
            Route("/models", w(self.models)),
            Route("/models/{name}/versions", w(self.versions), methods=["GET"]),
            Route("/models/{name}/versions", w(self.create_version), methods=["POST"]),
            Route("/models/{name}/versions/{selector:path}", w(self.version)),
            Route("/models/{name}/aliases/{alias}", w(self.alias), methods=["GET"]),
            Route("/models/{name}/aliases/{alias}", w(self.set_alias), methods=["PUT"]),
            Route("/models/{name}/aliases/{alias}", w(self.delete_alias), methods=["DELETE"]),
            Route("/models/{name}/aliases/{alias}/rollback", w(self.rollback), methods=["POST"]),
            Route("/models/{name}/aliases/{alias}/history", w(self.alias_history)),
            Route("/audit", w(self.audit)),
            Route("/audit/verify", w(self.audit_verify)),
            Route("/audit/head", w(self.audit_head)),
            Route("/settings", w(self.settings)),
            Route("/models/{name}/trust/{selector:path}", w(self.trust)),
            Route("/call/{method}", w(self.rpc), methods=["POST"]),
            Route("/datasets/{name}/versions", w(self.dataset_versions), methods=["GET"]),
            Route("/datasets/{name}/versions", w(self.create_dataset_version), methods=["POST"]),
            Route("/datasets/{name}/versions/{selector}", w(self.dataset_version)),
            *BlobGateway(self).routes(),
        ]
        return [Mount("/api/v1", routes=v1)]


def create_app(registry: Registry, *, open_access: bool = False) -> Starlette:
    # Index files clients upload are merged after the commit that names them has been
    # answered (ChunkStore.tidy_index), not while the client waits.
    registry.store.tidy_in_background = True
    api = Api(registry, open_access=open_access)
    routes: list[Any] = api.routes()
    from .mlflow_api import mlflow_routes

    routes.append(Mount("/api/2.0/mlflow", routes=mlflow_routes(api)))
    # The web UI at /, over the same registry use cases (after the APIs, so /api wins).
    from ..ui import create_ui_app

    routes.append(Mount("/", app=create_ui_app(lambda: api.registry)))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SameSiteWrites),
                    Middleware(BodyLimit, limit_for=_body_limit, render=_render_refusal)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.api = api
    return app


class SameSiteWrites:
    """ASGI middleware: a write a browser sends from another site's page is refused (403).

    The API reads a JSON body whatever its Content-Type, so another site's page could
    POST one as text/plain (no CORS preflight) with the browser's credentials, or to an
    ``--open-access`` server with none at all: a page on another port deprecated a
    version that way. Browsers say where a request comes from (``Origin``,
    ``Sec-Fetch-Site``); clients that are not browsers send neither and are unaffected.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = {k.decode("latin-1"): v.decode("latin-1")
                       for k, v in scope.get("headers") or []}
            origin = headers.get("origin")
            if cross_site(headers):
                refusal = PermissionDenied(
                    f"a {scope['method']} from another site's page ({origin or 'cross-site'}) "
                    "is refused", hint="call the API from a client, or use the UI on this site")
                response = JSONResponse(
                    {"error": refusal.code, "message": refusal.message, "hint": refusal.hint},
                    status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """No route or no such method: JSON under /api, in the format of the API asked."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    what = {404: "no route", 405: "method not allowed:"}.get(exc.status_code, exc.detail)
    message = f"{what} {request.method} {path[:200]}"
    if path.startswith("/api/2.0/mlflow"):
        code = "ENDPOINT_NOT_FOUND" if exc.status_code in (404, 405) else "BAD_REQUEST"
        return JSONResponse(
            {"error_code": code, "message": message},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    if path.startswith("/api/"):
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            {"error": error, "message": message, "hint": "see /api/v1/openapi.json"},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def _body_limit(scope: Any) -> int:
    """Every route takes JSON up to MAX_BODY; a store object upload and a new version's
    values (a manifest of every chunk) may be larger."""
    path = str(scope.get("path", ""))
    if scope.get("method") == "PUT" and path.startswith("/api/v1/blobs/pins/"):
        return MAX_PIN
    if scope.get("method") == "PUT" and path.startswith("/api/v1/blobs/"):
        return MAX_OBJECT
    if scope.get("method") == "POST" and _NEW_VERSION.match(path):
        packed = (b"content-type", MEDIA_TYPE.encode()) in [
            (key, value.split(b";")[0].strip()) for key, value in scope.get("headers") or []]
        return MAX_PACKED_BODY if packed else MAX_VERSION_BODY
    return MAX_BODY


_NEW_VERSION = re.compile(r"^/api/v1/(models|datasets)/[^/]+/versions\Z")


def _render_refusal(scope: Any, error: InvalidInput) -> tuple[int, bytes]:
    """A body refused before routing, in the error format of the API it was sent to."""
    from .mlflow_api import mlflow_refusal

    if str(scope.get("path", "")).startswith("/api/2.0/mlflow"):
        code, message = mlflow_refusal(error)
        return error.http_status, json.dumps({"error_code": code, "message": message}).encode()
    return error.http_status, json.dumps(error.to_dict()).encode()

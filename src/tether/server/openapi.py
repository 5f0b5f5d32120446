"""The OpenAPI document of ``/api/v1`` (hand-written: the API is small and stable)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .._metadata.audit_log import AUDIT_PAGE
from .._metadata.repository import NEXT_PAGE, VERSION_PAGE, VERSION_PAGE_BYTES

_ERROR = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


_UNAVAILABLE = {
    **_ERROR,
    "description": "The database or the object store is down; retry after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}


_AFTER = {"name": "after", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 0},
          "description": f"Versions after this sequence number (the value of {NEXT_PAGE})"}
_PAGED = (f"; a page at a time: at most {VERSION_PAGE:,} versions and "
          f"{VERSION_PAGE_BYTES >> 20} MiB of their stored text, the header {NEXT_PAGE} "
          "naming the after= of the next page while one follows")
_DELETED = {"name": "deleted", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["1", "0"]},
            "description": "1: the deleted ones (their records stay)"}


def _op(
    summary: str,
    *,
    params: list[str] | None = None,
    body: str | None = None,
    body_required: bool = True,
    limit: str = "8 MiB",
    ok: str = "200",
    responses: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params or []
        ],
        "responses": {ok: {"description": "OK"}, "4XX": _ERROR, "503": _UNAVAILABLE},
        "security": [{"bearer": []}],
    }
    if body:
        op["responses"]["413"] = {**_ERROR, "description": f"Body over {limit}"}
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    if responses:
        op["responses"].update(responses)
    if extra:
        op.update(extra)
    return op


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string"}}


_BLOB_KEY = {
    "name": "key", "in": "path", "required": True,
    "description": "A store key, slashes included: packs/<32 hex>.pack, index/<32 hex>.idx, "
    "pins/<32 hex>.json (and locks/ingest-<32 hex> to write or delete)",
    "schema": {"type": "string"},
}


_PACKED_NOTE = (
    "A version's large chunk lists (more than 4,096 chunks) can travel apart from its "
    "JSON, as packed 40-byte records (32-byte BLAKE3, size as 8 bytes little-endian): "
    "Content-Type (a commit) or Accept (an answer) application/x-tether-packed. The body "
    "is one line of JSON, whose files name their records as stored_chunks: [first, "
    "count] and whose 'records' says how many bytes of them follow the line. A commit "
    "naming chunks the store lacks is refused with 409 (missing_chunks)."
)


def openapi_document() -> dict[str, Any]:
    from .app import RPC_METHODS  # app imports this module

    model = ["name"]
    alias = ["name", "alias"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tether registry API",
            "version": __version__,
            "description": "Versioned REST API over the Tether registry use cases.",
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "hint": {"type": ["string", "null"]},
                    },
                },
                "NewVersion": {
                    "type": "object",
                    "required": ["values"],
                    "additionalProperties": False,
                    "properties": {
                        "values": {"type": "object"},
                        "bump": {"type": ["string", "null"]},
                    },
                },
                "AliasMove": {
                    "type": "object",
                    "required": ["version"],
                    "additionalProperties": False,
                    "properties": {
                        "version": {"type": ["string", "integer"]},
                        "reason": {"type": "string"},
                        "create": {"type": "boolean", "default": False},
                    },
                },
                "Rollback": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"reason": {"type": "string"},
                                   "from_digest": {"type": ["string", "null"]},
                                   "from_generation": {"type": ["integer", "null"]}},
                },
                "Call": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "args": {"type": ["array", "null"]},
                        "kwargs": {"type": ["object", "null"]},
                    },
                },
                "Presign": {
                    "type": "object",
                    "required": ["key", "method"],
                    "additionalProperties": False,
                    "properties": {
                        "key": {"type": "string"},
                        "method": {"enum": ["GET", "PUT"]},
                    },
                },
            },
        },
        "paths": {
            "/health": {
                "get": _op("Liveness and server version (no authentication)",
                           extra={"security": []})
            },
            "/ready": {
                "get": _op(
                    "Readiness: the database and the store answer (503 naming what is down)",
                    extra={"security": [], "responses": {"200": {"description": "Ready"},
                                                         "503": _UNAVAILABLE}},
                )
            },
            "/openapi.json": {
                "get": _op("This document", extra={"security": [], "responses": {
                    "200": {"description": "OK"}}}),
            },
            "/whoami": {"get": _op("The caller's principal and roles")},
            "/roles": {
                "get": _op(
                    "A principal's roles (default the caller; readers may ask about anyone), "
                    "globally or on one model",
                    extra={"parameters": [
                        _query("principal", "Whose roles (default: the caller)"),
                        _query("model", "Roles on this model (default: global)"),
                    ]},
                )
            },
            "/models": {"get": _op("List models (?deleted=1: the deleted ones)",
                                   extra={"parameters": [_DELETED]})},
            "/models/{name}/versions": {
                "get": _op("List a model's versions (large chunk lists as chunk_count; "
                           "?deleted=1: deleted ones too)" + _PAGED, params=model,
                           extra={"parameters": [
                               {"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}, _DELETED, _AFTER]}),
                "post": _op(
                    "Register a version whose chunks are uploaded",
                    params=model,
                    body="NewVersion",
                    limit="96 MiB (JSON)",
                    ok="201",
                    extra={"parameters": [
                        {"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string"}},
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "Sent again with a retry, answers the version the "
                         "first attempt registered (Idempotent-Replayed: true)",
                         "schema": {"type": "string", "minLength": 8, "maxLength": 128}},
                    ], "description": _PACKED_NOTE},
                ),
            },
            "/models/{name}/versions/{selector}": {
                "get": _op(
                    "One version by any selector (1.2.0, ~1.2, 7, sha:ab12, an alias, latest)",
                    params=["name", "selector"],
                    extra={"description": _PACKED_NOTE},
                )
            },
            "/models/{name}/trust/{selector}": {
                "get": _op(
                    "A version's policy standing: required, trusted and valid signers, "
                    "signature problems, deprecation",
                    params=["name", "selector"],
                )
            },
            "/datasets/{name}/versions": {
                "get": _op("List a dataset's versions (large chunk lists as chunk_count)"
                           + _PAGED, extra={"parameters": [
                               {"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}, _AFTER]}),
                "post": _op(
                    "Register a dataset version whose chunks are uploaded (the server "
                    "checks every field and recomputes every digest)",
                    params=model, body="NewVersion", limit="96 MiB (JSON)", ok="201",
                    extra={"description": _PACKED_NOTE},
                ),
            },
            "/datasets/{name}/versions/{selector}": {
                "get": _op("One dataset version by any selector", params=["name", "selector"],
                           extra={"description": _PACKED_NOTE}),
            },
            "/models/{name}/aliases/{alias}": {
                "get": _op("Where an alias points; ETag / If-None-Match give 304", params=alias),
                "put": _op("Move an alias (policy checks apply)", params=alias, body="AliasMove"),
                "delete": _op("Delete an alias", params=alias),
            },
            "/models/{name}/aliases/{alias}/rollback": {
                "post": _op(
                    "Move an alias back to its previous target (with from_digest: only if "
                    "it points at that version now, else 409)", params=alias, body="Rollback",
                    body_required=False,
                )
            },
            "/models/{name}/aliases/{alias}/history": {
                "get": _op("Every move of an alias", params=alias)
            },
            "/audit": {
                "get": _op(
                    f"Audit events, newest first, at most {AUDIT_PAGE:,} in an answer: ask "
                    "for the next page with before=<the last event's id>",
                    extra={"parameters": [
                        _query("model", "Only this model's events"),
                        _query("action", "Only events of this action"),
                        _query("limit", "At most this many events (0: a whole page)"),
                        _query("before", "Only events with a smaller id (the next page)"),
                    ]},
                )
            },
            "/audit/verify": {"get": _op("Verify the audit log's hash chain")},
            "/audit/head": {
                "get": _op("The newest signed audit head with the public key that checks it "
                           "(404 before any change)")
            },
            "/settings": {"get": _op("Registry settings")},
            "/call/{method}": {
                "post": _op(
                    "Call a registry use case by name (governance, admin); the use case "
                    "checks the caller's roles",
                    body="Call",
                    body_required=False,
                    extra={"parameters": [
                        {"name": "method", "in": "path", "required": True,
                         "schema": {"enum": sorted(RPC_METHODS)}},
                    ]},
                )
            },
            "/blobs": {
                "get": _op(
                    "List store objects under a prefix: key, size, mtime",
                    extra={"parameters": [
                        {"name": "prefix", "in": "query", "required": True,
                         "schema": {"enum": ["index/", "pins/", "locks/"]}},
                    ]},
                )
            },
            "/blobs/presign": {
                "post": _op(
                    "A presigned URL to GET or PUT a store object directly (url null: "
                    "go through /blobs/{key}; 409 when a PUT's key exists)",
                    body="Presign",
                )
            },
            "/blobs/{key}": {
                "get": _op(
                    "A store object, or one Range of it (206; 416 past its end), streamed",
                    responses={"206": {"description": "Partial content"}},
                    extra={"parameters": [_BLOB_KEY]},
                ),
                "put": _op(
                    "Upload a new store object (never overwrites: 409); an index is checked "
                    "against its pack, a lying pack refused (422) and quarantined; a pin "
                    "must be one (400); a lease has one holder at a time (409)",
                    ok="201",
                    responses={"413": {**_ERROR, "description": "Body over 1 GiB"}},
                    extra={
                        "parameters": [_BLOB_KEY],
                        "requestBody": {"required": True, "content": {
                            "application/octet-stream": {"schema": {"type": "string",
                                                                    "format": "binary"}}}},
                    },
                ),
                "delete": _op("Delete the caller's own ingest lease (locks/ingest-<32 hex>); "
                              "stored data is only removed by gc",
                              extra={"parameters": [_BLOB_KEY]}),
            },
        },
    }
